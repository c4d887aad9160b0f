"""A local Jetstream: an upstream `subscribeRepos` firehose turned into Jetstream's JSON events.

Jetstream (github.com/bluesky-social/jetstream) reads a relay's or PDS's CBOR firehose and serves
each record operation as one small JSON object on `GET /subscribe`, filtered by the subscriber's
`wantedDids` and `wantedCollections` and replayable from a `cursor` (the `time_us` Jetstream stamped
on the event). This server does the same against any firehose, e.g. the reference PDS in tests, so
that the Jetstream client code is exercised against what a real Jetstream would send:

    {"did": ..., "time_us": ..., "kind": "commit",
     "commit": {"rev": ..., "operation": "create", "collection": ..., "rkey": ...,
                "record": {...}, "cid": ...}}

Deletes carry no `record` or `cid`; `identity` and `account` events pass the collection filter (they
belong to no collection) but not the DID filter. Events are kept in memory only (`buffer_size` of
them), and `compress`/`requireHello` are not offered: asking for compression is refused with a 400
rather than answered with frames the client could not read. Its `faults` can refuse, stall or cut
subscriber connections (pass the Bluesky sandbox's `faults` to share one switchboard).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
from aiohttp import web
from atproto import CAR, firehose_models, parse_subscribe_repos_message

from relaybird.networks.bluesky_format import ipld_to_json
from relaybird.sandbox.faults import Faults, cut_transport, keep_alive, read_socket

log = logging.getLogger(__name__)

SUBSCRIBE_REPOS = "com.atproto.sync.subscribeRepos"
MAX_WANTED_DIDS = 10_000
MAX_WANTED_COLLECTIONS = 100
SUBSCRIBER_QUEUE = 10_000
UPSTREAM_OPEN_TIMEOUT = 15.0
UPSTREAM_RETRY_SECONDS = 0.25

_DID = re.compile(r"^did:[a-z]+:[a-zA-Z0-9._:%-]*[a-zA-Z0-9._-]$")
_NSID = re.compile(r"^[a-zA-Z][a-zA-Z0-9-]*(\.[a-zA-Z0-9-]+)+$")


def firehose_endpoint(url: str) -> str:
    """The WebSocket URL of `subscribeRepos` for a PDS or relay given as http(s), ws(s) or in full."""
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    path = parts.path.rstrip("/")
    if not path.endswith(f"/xrpc/{SUBSCRIBE_REPOS}"):
        path = (
            f"{path}/{SUBSCRIBE_REPOS}"
            if path.endswith("/xrpc")
            else f"{path}/xrpc/{SUBSCRIBE_REPOS}"
        )
    return urlunsplit((scheme, parts.netloc, path, "", ""))


def _sorted_keys(value: Any) -> Any:
    """Jetstream is written in Go, whose JSON encoder writes the keys of a record's maps sorted."""
    if isinstance(value, dict):
        return {key: _sorted_keys(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [_sorted_keys(item) for item in value]
    return value


class MicrosecondClock:
    """Jetstream's cursor: wall-clock microseconds, strictly increasing so no two events share one."""

    def __init__(self) -> None:
        self.last = 0

    def now(self) -> int:
        self.last = max(time.time_ns() // 1000, self.last + 1)
        return self.last


@dataclass(frozen=True)
class Buffered:
    """One event as sent, with what the filters look at."""

    time_us: int
    did: str
    collection: str
    text: str


@dataclass(frozen=True)
class Options:
    """A subscriber's query parameters, validated as Jetstream validates them."""

    dids: frozenset[str]
    collections: frozenset[str]
    prefixes: tuple[str, ...]
    cursor: int | None
    max_size: int

    @classmethod
    def parse(cls, query: Any, now_us: int) -> Options:
        """Raise ValueError with Jetstream's wording for what it would answer 400 to."""
        raw_cursor = query.get("cursor", "")
        cursor: int | None = None
        if raw_cursor:
            try:
                cursor = int(raw_cursor)
            except ValueError:
                raise ValueError(f"invalid cursor: {raw_cursor}") from None
            if cursor > now_us:
                cursor = None
        dids = frozenset(query.getall("wantedDids", []))
        if any(not _DID.match(did) for did in dids):
            raise ValueError("invalid subscriber options")
        if len(dids) > MAX_WANTED_DIDS:
            raise ValueError("invalid subscriber options: too many wanted DIDs")
        collections_: set[str] = set()
        prefixes: list[str] = []
        for wanted in query.getall("wantedCollections", []):
            if wanted.endswith(".*"):
                prefixes.append(wanted[:-1])
            elif _NSID.match(wanted):
                collections_.add(wanted)
            else:
                raise ValueError(f"invalid subscriber options: invalid collection: {wanted}")
        if len(collections_) + len(prefixes) > MAX_WANTED_COLLECTIONS:
            raise ValueError("invalid subscriber options: too many wanted collections")
        try:
            max_size = max(0, int(query.get("maxMessageSizeBytes", "") or 0))
        except ValueError:
            max_size = 0
        return cls(dids, frozenset(collections_), tuple(prefixes), cursor, max_size)

    def wants(self, event: Buffered) -> bool:
        if self.dids and event.did not in self.dids:
            return False
        if self.max_size and len(event.text.encode()) > self.max_size:
            return False
        if not (self.collections or self.prefixes) or not event.collection:
            return True
        return event.collection in self.collections or event.collection.startswith(self.prefixes)


@dataclass(eq=False)
class Subscriber:
    options: Options
    socket: web.WebSocketResponse
    queue: asyncio.Queue[Buffered] = field(
        default_factory=lambda: asyncio.Queue(maxsize=SUBSCRIBER_QUEUE)
    )


def commit_events(message: Any) -> list[dict[str, Any]]:
    """The Jetstream events (without `time_us`) of one firehose commit: one per record operation."""
    if message.too_big:
        log.warning(
            "commit %s of %s too big to carry its records; skipped", message.rev, message.repo
        )
        return []
    blocks = CAR.from_bytes(message.blocks).blocks
    events: list[dict[str, Any]] = []
    for op in message.ops:
        collection, _, rkey = str(op.path).partition("/")
        commit: dict[str, Any] = {
            "rev": message.rev,
            "operation": op.action,
            "collection": collection,
            "rkey": rkey,
        }
        if op.action in ("create", "update"):
            block = blocks.get(op.cid) if op.cid is not None else None
            if block is None:
                log.warning("record %s of %s missing from its commit", op.path, message.repo)
                continue
            commit["record"] = _sorted_keys(ipld_to_json(block))
            commit["cid"] = str(op.cid)
        elif op.action != "delete":
            continue
        events.append({"did": message.repo, "kind": "commit", "commit": commit})
    return events


def identity_event(message: Any) -> dict[str, Any]:
    identity: dict[str, Any] = {"did": message.did}
    if message.handle:
        identity["handle"] = message.handle
    identity.update(seq=message.seq, time=message.time)
    return {"did": message.did, "kind": "identity", "identity": identity}


def account_event(message: Any) -> dict[str, Any]:
    account: dict[str, Any] = {"active": message.active, "did": message.did, "seq": message.seq}
    if message.status:
        account["status"] = message.status
    account["time"] = message.time
    return {"did": message.did, "kind": "account", "account": account}


class JetstreamServer:
    """Serves `/subscribe` on 127.0.0.1 for one upstream firehose; `start()` returns its ws URL."""

    def __init__(
        self,
        firehose_url: str,
        *,
        buffer_size: int = 100_000,
        ping_interval: float = 30.0,
        faults: Faults | None = None,
    ) -> None:
        self.firehose_url = firehose_endpoint(firehose_url)
        self.ping_interval = ping_interval
        self.faults = faults if faults is not None else Faults()
        self.url = ""
        self._buffer: collections.deque[Buffered] = collections.deque(maxlen=buffer_size)
        self._subscribers: set[Subscriber] = set()
        self._clock = MicrosecondClock()
        self._seq: int | None = None
        self._upstream_open = asyncio.Event()
        self._upstream: asyncio.Task[None] | None = None
        self._http: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen, and return once the upstream firehose is open: later writes are all seen."""
        app = web.Application()
        app.router.add_get("/subscribe", self._subscribe)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        bound_port = self._runner.addresses[0][1]
        shown_host = f"[{host}]" if ":" in host else host
        self.url = f"ws://{shown_host}:{bound_port}/subscribe"
        self.faults.bind(asyncio.get_running_loop())
        self._http = aiohttp.ClientSession()
        self._upstream = asyncio.create_task(self._follow_upstream())
        try:
            await asyncio.wait_for(self._upstream_open.wait(), UPSTREAM_OPEN_TIMEOUT)
        except TimeoutError:
            await self.stop()
            raise RuntimeError(f"the firehose at {self.firehose_url} did not open") from None
        return self.url

    async def stop(self) -> None:
        if self._upstream is not None:
            self._upstream.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._upstream
            self._upstream = None
        await self.disconnect_subscribers()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._http is not None:
            await self._http.close()
            self._http = None

    def buffered(self) -> list[dict[str, Any]]:
        """Every event kept for replay, oldest first, as subscribers receive them."""
        parsed: list[dict[str, Any]] = [json.loads(event.text) for event in self._buffer]
        return parsed

    async def disconnect_subscribers(self) -> None:
        """Close every subscriber's socket, as a Jetstream restart or a network cut would."""
        for subscriber in list(self._subscribers):
            await subscriber.socket.close(code=aiohttp.WSCloseCode.GOING_AWAY)

    # upstream

    async def _follow_upstream(self) -> None:
        """Read the firehose for good, resuming from the last seq after a drop."""
        assert self._http is not None
        while True:
            params = {"cursor": str(self._seq)} if self._seq is not None else {}
            try:
                async with self._http.ws_connect(
                    self.firehose_url, params=params, heartbeat=self.ping_interval
                ) as socket:
                    self._upstream_open.set()
                    async for message in socket:
                        if message.type == aiohttp.WSMsgType.BINARY:
                            self._on_frame(message.data)
                        elif message.type == aiohttp.WSMsgType.ERROR:
                            break
            except (aiohttp.ClientError, OSError, TimeoutError) as error:
                log.info("jetstream: upstream firehose unavailable (%s)", type(error).__name__)
            await asyncio.sleep(UPSTREAM_RETRY_SECONDS)

    def _on_frame(self, data: bytes) -> None:
        try:
            events = self._events(data)
        except Exception as error:  # one frame this server cannot read must not end the stream
            log.warning("jetstream: unreadable firehose frame skipped (%r)", error)
            return
        for event in events:
            self._publish(event)

    def _events(self, data: bytes) -> list[dict[str, Any]]:
        """The Jetstream events (without `time_us`) of one firehose frame."""
        frame = firehose_models.Frame.from_bytes(data)
        if frame.is_error:
            log.warning("jetstream: firehose error %s: %s", frame.body.error, frame.body.message)
            return []
        if frame.type not in ("#commit", "#identity", "#account"):
            return []
        message = parse_subscribe_repos_message(frame)
        self._seq = int(message.seq)
        if frame.type == "#commit":
            return commit_events(message)
        if frame.type == "#identity":
            return [identity_event(message)]
        return [account_event(message)]

    def _publish(self, event: dict[str, Any]) -> None:
        time_us = self._clock.now()
        ordered = {"did": event["did"], "time_us": time_us, **event}
        buffered = Buffered(
            time_us=time_us,
            did=str(event["did"]),
            collection=str(event.get("commit", {}).get("collection", "")),
            text=json.dumps(ordered, ensure_ascii=False, separators=(",", ":")),
        )
        self._buffer.append(buffered)
        for subscriber in list(self._subscribers):
            if not subscriber.options.wants(buffered):
                continue
            try:
                subscriber.queue.put_nowait(buffered)
            except asyncio.QueueFull:
                log.warning("jetstream: a subscriber fell too far behind; dropping it")
                self._subscribers.discard(subscriber)
                asyncio.get_running_loop().create_task(subscriber.socket.close())

    # subscribers

    async def _subscribe(self, request: web.Request) -> web.StreamResponse:
        refused = self.faults.refused_stream()
        if refused is not None:
            return web.Response(status=refused.status or 503, text="service unavailable")
        query = request.query
        if query.get("compress") == "true" or "zstd" in request.headers.get("Socket-Encoding", ""):
            return web.Response(status=400, text="compression is not supported by this server")
        try:
            options = Options.parse(query, time.time_ns() // 1000)
        except ValueError as error:
            return web.Response(status=400, text=str(error))
        socket = web.WebSocketResponse(autoping=False)
        await socket.prepare(request)
        subscriber = Subscriber(options, socket)
        transport = request.transport
        # No await between the snapshot and the registration: each event is in exactly one.
        replay = (
            [event for event in self._buffer if event.time_us >= options.cursor]
            if options.cursor is not None
            else []
        )
        self._subscribers.add(subscriber)
        handle = self.faults.stream_opened(lambda: cut_transport(transport))
        tasks = [
            asyncio.create_task(self._send(subscriber, replay)),
            asyncio.create_task(keep_alive(socket, self.ping_interval, self.faults)),
        ]
        try:
            await read_socket(socket, self.faults)
        finally:
            self.faults.stream_closed(handle)
            self._subscribers.discard(subscriber)
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        return socket

    async def _send(self, subscriber: Subscriber, replay: list[Buffered]) -> None:
        """Replayed events first, then live ones, never one twice."""
        last = 0
        try:
            for event in replay:
                if subscriber.options.wants(event):
                    await self._send_one(subscriber, event)
                    last = event.time_us
            while True:
                event = await subscriber.queue.get()
                if event.time_us > last:
                    await self._send_one(subscriber, event)
                    last = event.time_us
        except (ConnectionResetError, aiohttp.ClientError):
            await subscriber.socket.close()

    async def _send_one(self, subscriber: Subscriber, event: Buffered) -> None:
        await self.faults.unstalled()
        await subscriber.socket.send_str(event.text)
        self.faults.event_sent()
