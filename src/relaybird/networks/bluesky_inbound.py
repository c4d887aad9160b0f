"""Bluesky as a source: the account's own posts from the firehose, from Jetstream, or by polling.

Three ways to learn about new records, for three kinds of setups:

- **jetstream** (the lightest, for accounts on bsky.social): Jetstream's JSON stream, filtered by
  the server to our DID and `app.bsky.feed.post`, so almost nothing crosses the wire. The cursor is
  Jetstream's `time_us`.
- **firehose**: the PDS's own `com.atproto.sync.subscribeRepos` (CBOR), for a self-hosted PDS with no
  Jetstream in front of it. It carries every account of that PDS; all but ours are skipped unread.
  The cursor is the stream's `seq`.
- **poll**: `com.atproto.repo.listRecords` of our repo every `poll_interval` seconds, which any PDS
  answers, even one whose firehose is unreachable. The cursor is the newest record key seen (record
  keys of posts are TIDs, which sort by creation time). Polling sees only what exists: **deletes and
  edits are invisible to it**, and a post whose record key was backdated below the cursor (an import
  from elsewhere) is never seen.

Every mode emits POST or REPLY for a new post, the streams also EDIT (an `update` of the record; the
version is the commit's `rev`) and DELETE. Images and a link card's thumbnail are downloaded from the
PDS before the event is handed on, so the outbox holds everything a target needs.

The first start mirrors nothing from the past: firehose and Jetstream connect live, polling records
the newest existing key. Jetstream also stores "now" as its first cursor, so that posts written
while the daemon is stopped right after a quiet first run are still caught up; the firehose has no
such clock and saves the first `seq` it sees (any account's). Cursors only move forward: an event at
or before the stored cursor is dropped as already handled.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
from dataclasses import dataclass, replace
from typing import Any, Literal
from urllib.parse import urlencode, urlsplit, urlunsplit

import aiohttp
import libipld

from relaybird.media import MediaFetcher, MediaPolicy
from relaybird.model import Author, Event, EventKind, LinkCard, Media, Post
from relaybird.networks.base import DeliveryError, EventSink
from relaybird.networks.bluesky_format import NETWORK, at_uri, ipld_to_json, record_to_post
from relaybird.networks.xrpc import XrpcClient
from relaybird.richtext import PayloadError, as_dict, as_dicts, as_int, as_text, parse_json

log = logging.getLogger(__name__)

Mode = Literal["jetstream", "firehose", "poll"]
MODES: tuple[Mode, ...] = ("jetstream", "firehose", "poll")

POST_COLLECTION = "app.bsky.feed.post"
SUBSCRIBE_REPOS = "com.atproto.sync.subscribeRepos"
#: The largest firehose message read (the SDK's limit); a larger one ends the connection.
MAX_FRAME_BYTES = 5 * 1024 * 1024
#: A connection that stayed up this long resets the backoff to its first step.
HEALTHY_SECONDS = 30.0
#: Other accounts' firehose frames move the cursor too, but are saved at most this often.
FOREIGN_CURSOR_SAVE_SECONDS = 5.0
#: Microseconds since 1970 passed 10**14 in 1973: below it a number is a firehose seq, not a time.
TIME_US_FLOOR = 10**14
LIST_PAGE = 100
TID_ALPHABET = "234567abcdefghijklmnopqrstuvwxyz"
#: The smallest TID: the cursor of an empty repo, so that its first post counts as new.
TID_ZERO = "2222222222222"
_TID = re.compile(r"^[234567abcdefghij][234567abcdefghijklmnopqrstuvwxyz]{12}$")
#: Record keys as the AT Protocol allows them (`.` and `..` excepted).
_RKEY = re.compile(r"(?!\.{1,2}$)[A-Za-z0-9._:~-]{1,512}")


class StreamLost(Exception):
    """The stream ended; the message says why in words fit for `relaybird status`."""


def backoff_delay(failures: int, base: float, cap: float) -> float:
    """Exponential backoff with jitter, so that many clients cut off at once do not return at once."""
    return float(min(cap, base * 2.0 ** min(failures, 20)) * random.uniform(0.5, 1.0))


def firehose_base(pds_url: str) -> str:
    """`ws(s)://host/xrpc` for a PDS given as `http(s)://host` (or a relay's `wss://host/xrpc`):
    where `subscribeRepos` lives."""
    parts = urlsplit(pds_url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    path = parts.path.rstrip("/")
    path = path if path.endswith("/xrpc") else f"{path}/xrpc"
    return urlunsplit((scheme, parts.netloc, path, "", ""))


def _digits(cursor: str | None) -> int | None:
    return int(cursor) if cursor is not None and cursor.isdigit() else None


def _error_detail(error: BaseException) -> str:
    """A one-line reason without URLs or tokens: the type, and the server's error name if any."""
    if isinstance(error, StreamLost):
        return str(error)
    name = getattr(error, "error", None)
    return f"{type(error).__name__}: {name}" if name else type(error).__name__


@dataclass
class Context:
    """What every mode shares: who we are, where events go, and how to report health."""

    name: str
    did: str
    handle: str
    pds_url: str
    sink: EventSink
    http: aiohttp.ClientSession
    media: MediaFetcher
    firehose_url: str = ""
    opened_at: float | None = None
    delivered: bool = False

    def opened(self, detail: str) -> None:
        self.opened_at = time.monotonic()
        self.sink.set_connected(self.name, True, detail)

    def healthy(self) -> bool:
        """Whether the last connection earned a reset of the backoff."""
        if self.delivered:
            return True
        return self.opened_at is not None and time.monotonic() - self.opened_at >= HEALTHY_SECONDS


class Emitter:
    """Turns records into events: conversion, media downloads, and the hand-over to the sink."""

    def __init__(self, context: Context) -> None:
        self.context = context

    async def record(
        self,
        operation: str,
        rkey: str,
        cid: str,
        record: dict[str, Any],
        cursor: str,
        version: str = "",
    ) -> None:
        """Emit a created (POST/REPLY) or updated (EDIT) post."""
        context = self.context
        uri = at_uri(context.did, POST_COLLECTION, rkey)
        try:
            post = record_to_post(uri, cid, record, context.handle, pds_url=context.pds_url)
        except PayloadError as error:
            log.warning("%s: record %s could not be read (%s); skipped", context.name, uri, error)
            context.sink.save_cursor(context.name, cursor)
            return
        post = await self._fetch_media(post)
        if operation == "update":
            kind = EventKind.EDIT
        else:
            kind = EventKind.REPLY if post.reply_to else EventKind.POST
        await self._accept(Event(kind, context.name, post, cursor=cursor, version=version))

    async def delete(self, rkey: str, cursor: str) -> None:
        context = self.context
        post = Post(
            id=at_uri(context.did, POST_COLLECTION, rkey),
            text="",
            author=Author(network=NETWORK, handle=context.handle, id=context.did),
        )
        await self._accept(Event(EventKind.DELETE, context.name, post, cursor=cursor))

    async def _accept(self, event: Event) -> None:
        await self.context.sink.accept(event)
        self.context.delivered = True
        log.debug("%s: %s %s", self.context.name, event.kind.value, event.post.id)

    async def _fetch_media(self, post: Post) -> Post:
        media = [await self._fetch(item) for item in post.media]
        card = post.card
        if card is not None and card.thumb is not None:
            card = LinkCard(card.url, card.title, card.description, await self._fetch(card.thumb))
        return replace(post, media=media, card=card)

    async def _fetch(self, item: Media) -> Media:
        """The blob's bytes; a blob that cannot be fetched leaves its URL for the target to link."""
        return await self.context.media.fetch(item)


# --------------------------------------------------------------------------------------------------
# firehose


@dataclass(frozen=True)
class Frame:
    """One message of `subscribeRepos`: its type (`#commit`, `#identity`, ...) and its body."""

    type: str
    body: dict[str, Any]


@dataclass(frozen=True)
class ErrorFrame:
    """The stream's last word before it closes (`FutureCursor`, `ConsumerTooSlow`, ...)."""

    error: str
    message: str = ""


class FrameUnreadable(ValueError):
    """A binary message that is not a header and a body in DAG-CBOR."""


def decode_frame(data: bytes) -> Frame | ErrorFrame:
    """A firehose message: two DAG-CBOR objects back to back, the header `{op, t}` then the body.

    `op` 1 is a message of type `t`, `op` -1 an error whose body names it. Anything else raises
    `FrameUnreadable`.
    """
    try:
        parts = libipld.decode_dag_cbor_multi(data)
    except (ValueError, TypeError, OverflowError, RecursionError) as error:
        raise FrameUnreadable(f"not DAG-CBOR ({type(error).__name__})") from None
    if len(parts) != 2 or not isinstance(parts[0], dict):
        raise FrameUnreadable("not a header and a body")
    header, body = parts
    op = header.get("op")
    if op == -1:
        fields = body if isinstance(body, dict) else {}
        return ErrorFrame(as_text(fields.get("error")), as_text(fields.get("message")))
    if op != 1:
        raise FrameUnreadable(f"unknown frame op {op!r}")
    return Frame(as_text(header.get("t")), body if isinstance(body, dict) else {})


@dataclass(frozen=True)
class RepoOp:
    """One operation of a commit: `create`, `update` or `delete` of the record at `path`."""

    action: str
    path: str
    cid: str | None


@dataclass(frozen=True)
class Commit:
    """The parts of a `#commit` body that relaybird reads."""

    rev: str
    ops: list[RepoOp]
    blocks: bytes
    too_big: bool

    @classmethod
    def of(cls, body: dict[str, Any]) -> Commit:
        """Read a commit's body; one whose fields have other types raises PayloadError."""
        rev, blocks, too_big = body.get("rev"), body.get("blocks"), body.get("tooBig", False)
        ops = body.get("ops")
        if not isinstance(rev, str) or not isinstance(ops, list):
            raise PayloadError("the commit has no rev or no list of operations")
        if not isinstance(blocks, bytes) or not isinstance(too_big, bool):
            raise PayloadError("the commit's blocks or tooBig are not what they should be")
        return cls(rev, [_repo_op(op) for op in ops], blocks, too_big)

    def records(self) -> dict[str, Any]:
        """The blocks of the commit's CAR file by CID, as `{cid string: decoded block}`."""
        try:
            _, blocks = libipld.decode_car(self.blocks)
            return {str(libipld.encode_cid(cid)): block for cid, block in blocks.items()}
        except (ValueError, TypeError, OverflowError, RecursionError) as error:
            raise PayloadError(f"the commit's blocks are no CAR file ({error})") from None


def _repo_op(op: object) -> RepoOp:
    if not isinstance(op, dict):
        raise PayloadError("a commit operation is not an object")
    action, path, cid = op.get("action"), op.get("path"), op.get("cid")
    if not isinstance(action, str) or not isinstance(path, str):
        raise PayloadError("a commit operation has no action or path")
    if cid is not None and not isinstance(cid, bytes):
        raise PayloadError("a commit operation's cid is no link")
    return RepoOp(action, path, _cid_text(cid) if cid is not None else None)


def _cid_text(cid: bytes) -> str:
    try:
        return str(libipld.encode_cid(cid))
    except (ValueError, TypeError) as error:
        raise PayloadError(f"a commit operation's cid is unreadable ({error})") from None


class FirehoseSource:
    """The PDS's `subscribeRepos`, keeping only our commits to `app.bsky.feed.post`.

    A PDS is silent while nobody writes, so liveness is judged by WebSocket ping/pong
    (`keepalive` seconds at most), not by silence. One connection per `once()`: the listener's
    loop owns backoff, health reports and the cursor of the next attempt.
    """

    def __init__(self, context: Context, cursor: str | None, keepalive: float) -> None:
        self.context = context
        self.emitter = Emitter(context)
        self.keepalive = keepalive
        self.seq = self._parse(cursor)
        self.saved_at = 0.0

    def _parse(self, cursor: str | None) -> int | None:
        seq = _digits(cursor)
        if cursor is not None and (seq is None or seq >= TIME_US_FLOOR):
            log.warning(
                "%s: stored cursor %r is not a firehose seq (was another mode used?); "
                "starting from now",
                self.context.name,
                cursor,
            )
            return None
        return seq

    def _subscribe_url(self) -> str:
        base = firehose_base(self.context.firehose_url or self.context.pds_url)
        query = f"?{urlencode({'cursor': self.seq})}" if self.seq is not None else ""
        return f"{base}/{SUBSCRIBE_REPOS}{query}"

    async def once(self) -> None:
        try:
            async with self.context.http.ws_connect(
                self._subscribe_url(), heartbeat=self.keepalive / 2, max_msg_size=MAX_FRAME_BYTES
            ) as socket:
                self.context.opened("firehose open")
                ended = await self._read(socket)
                error = socket.exception()
        except (TimeoutError, aiohttp.ClientError, OSError) as lost:
            raise StreamLost(f"firehose lost: {type(lost).__name__}") from None
        if ended is not None:
            self._on_error_frame(ended)
        if error is not None:
            raise StreamLost(f"firehose lost: {type(error).__name__}")
        raise StreamLost("firehose closed by the server")

    async def _read(self, socket: aiohttp.ClientWebSocketResponse) -> ErrorFrame | None:
        """Handle messages until the stream ends; an error frame ends it too, and is returned."""
        async for message in socket:
            if message.type == aiohttp.WSMsgType.BINARY:
                try:
                    frame = decode_frame(message.data)
                except FrameUnreadable as error:
                    log.warning(
                        "%s: unreadable firehose frame skipped (%s)", self.context.name, error
                    )
                    continue
                if isinstance(frame, ErrorFrame):
                    return frame
                await self._on_frame(frame)
            elif message.type == aiohttp.WSMsgType.ERROR:
                break
        return None

    def _on_error_frame(self, frame: ErrorFrame) -> None:
        if frame.error == "FutureCursor":
            log.warning(
                "%s: the PDS has no event %s yet (was it reset?); following it from now",
                self.context.name,
                self.seq,
            )
            self.seq = None
        raise StreamLost(f"firehose lost: {frame.error or 'error frame'}")

    async def _on_frame(self, frame: Frame) -> None:
        body = frame.body
        if frame.type == "#info":
            log.warning("%s: firehose says %s", self.context.name, body.get("name"))
            return
        seq = body.get("seq")
        if not isinstance(seq, int) or (self.seq is not None and seq <= self.seq):
            return
        ours = body.get("repo", body.get("did")) == self.context.did
        if ours and frame.type == "#commit":
            await self._on_commit(body, seq)
        elif ours and frame.type == "#identity" and body.get("handle"):
            self.context.handle = str(body["handle"])
        self._advance(seq)

    def _advance(self, seq: int) -> None:
        """Move past a frame; saved when it is the first, then now and then rather than each time."""
        first = self.seq is None
        self.seq = seq
        now = time.monotonic()
        if first or now - self.saved_at >= FOREIGN_CURSOR_SAVE_SECONDS:
            self.saved_at = now
            self.context.sink.save_cursor(self.context.name, str(seq))

    async def _on_commit(self, body: dict[str, Any], seq: int) -> None:
        """Emit each post operation of one of our commits.

        One commit can hold several posts (the app writes a whole thread in one `applyWrites`).
        All but the last carry the previous seq as their cursor, so that a crash in the middle
        replays the commit; the store drops the operations it already has.
        """
        try:
            commit = Commit.of(body)
            ops = [op for op in commit.ops if op.path.startswith(f"{POST_COLLECTION}/")]
            blocks = commit.records() if ops and not commit.too_big else {}
        except PayloadError as error:
            log.warning(
                "%s: unreadable commit at seq %s skipped (%s)", self.context.name, seq, error
            )
            self.context.sink.save_cursor(self.context.name, str(seq))
            return
        if ops and commit.too_big:
            log.warning("%s: commit %s too big to carry its records", self.context.name, commit.rev)
            return
        for index, op in enumerate(ops):
            cursor = str(seq if index == len(ops) - 1 else seq - 1)
            await self._on_op(op, commit, blocks, cursor)

    async def _on_op(self, op: RepoOp, commit: Commit, blocks: dict[str, Any], cursor: str) -> None:
        rkey = op.path.split("/", 1)[1]
        if not _RKEY.fullmatch(rkey):
            log.warning(
                "%s: commit %s has an invalid record key; skipped", self.context.name, commit.rev
            )
            self.context.sink.save_cursor(self.context.name, cursor)
            return
        if op.action == "delete":
            await self.emitter.delete(rkey, cursor)
            return
        block = blocks.get(op.cid) if op.cid is not None else None
        if op.action not in ("create", "update") or not isinstance(block, dict):
            log.warning("%s: %s of %s has no record; skipped", self.context.name, op.action, rkey)
            return
        version = commit.rev if op.action == "update" else ""
        try:
            record = ipld_to_json(block)
        except PayloadError as error:
            log.warning("%s: record %s skipped: %s", self.context.name, rkey, error)
            self.context.sink.save_cursor(self.context.name, cursor)
            return
        await self.emitter.record(op.action, rkey, str(op.cid), record, cursor, version)


# --------------------------------------------------------------------------------------------------
# jetstream


class JetstreamSource:
    """Jetstream's JSON events for our DID and `app.bsky.feed.post` only.

    After a drop or a restart it asks for a replay from `margin` seconds before the cursor, as
    Jetstream advises; the events of that margin that are not newer than the cursor were already
    handled (an instance stamps `time_us` strictly increasing) and are dropped. Should the URL lead
    to another instance whose clock runs behind, an event of those few seconds could be taken for
    an old one: the price of never repeating one.
    """

    def __init__(
        self, context: Context, cursor: str | None, url: str, margin: float, keepalive: float
    ) -> None:
        self.context = context
        self.emitter = Emitter(context)
        self.url = url
        self.margin_us = int(margin * 1_000_000)
        self.keepalive = keepalive
        # `time_us` is the newest event handled (None while a first start has seen none);
        # `floor` the stored cursor, below which no cursor we hand out may go.
        self.time_us = self._parse(cursor)
        self.floor = self.time_us

    def _parse(self, cursor: str | None) -> int | None:
        time_us = _digits(cursor)
        if cursor is not None and (time_us is None or time_us < TIME_US_FLOOR):
            log.warning(
                "%s: stored cursor %r is not a Jetstream time (was another mode used?); "
                "starting from now",
                self.context.name,
                cursor,
            )
            return None
        return time_us

    def _subscribe_url(self) -> str:
        query = [("wantedCollections", POST_COLLECTION), ("wantedDids", self.context.did)]
        if self.time_us is not None:
            query.append(("cursor", str(max(0, self.time_us - self.margin_us))))
        glue = "&" if urlsplit(self.url).query else "?"
        return f"{self.url}{glue}{urlencode(query)}"

    async def once(self) -> None:
        if self.time_us is None:
            self.time_us = self.floor
        async with self.context.http.ws_connect(
            self._subscribe_url(), heartbeat=self.keepalive / 2, max_msg_size=8 * 1024 * 1024
        ) as socket:
            self.context.opened("jetstream open")
            if self.floor is None:
                self._first_start()
            async for message in socket:
                if message.type == aiohttp.WSMsgType.TEXT:
                    await self._on_text(message.data)
                elif message.type == aiohttp.WSMsgType.ERROR:
                    break
            error = socket.exception()
            code = socket.close_code
        if error is not None:
            raise StreamLost(f"jetstream lost: {type(error).__name__}")
        raise StreamLost(f"jetstream closed by the server (code {code})")

    def _first_start(self) -> None:
        """Store "now" as the cursor, so a restart after a quiet first run still catches up.

        Events of this first connection are all live, so they are not compared with that local
        clock reading (Jetstream's clock may differ from ours by a little).
        """
        self.floor = time.time_ns() // 1000
        self.context.sink.save_cursor(self.context.name, str(self.floor))
        log.info("%s: first start; mirroring posts from now on", self.context.name)

    async def _on_text(self, data: str) -> None:
        """One Jetstream event; a malformed one is skipped, and the cursor moves past it.

        Only an event whose `time_us` cannot be read is skipped without moving the cursor: there
        is nothing to move it to, and the replay after a reconnect skips it again.
        """
        try:
            event = parse_json(data)
            if not isinstance(event, dict):
                raise PayloadError("the event is not a JSON object")
            time_us = as_int(event.get("time_us"))
            if time_us is None or time_us <= 0:
                raise PayloadError("the event has no time_us")
        except PayloadError as error:
            log.warning("%s: unreadable Jetstream event skipped (%s)", self.context.name, error)
            return
        if self.time_us is not None and time_us <= self.time_us:
            return
        if event.get("did") != self.context.did:
            return
        cursor = str(max(time_us, self.floor or 0))
        try:
            await self._on_event(event, cursor)
        except PayloadError as error:
            log.warning("%s: Jetstream event %s skipped: %s", self.context.name, time_us, error)
            self.context.sink.save_cursor(self.context.name, cursor)
        self.time_us = time_us

    async def _on_event(self, event: dict[str, Any], cursor: str) -> None:
        kind = event.get("kind")
        if kind == "identity":
            handle = as_text(as_dict(event.get("identity")).get("handle"))
            if handle:
                self.context.handle = handle
        commit = event.get("commit")
        if kind == "commit" and isinstance(commit, dict):
            await self._on_commit(commit, cursor)

    async def _on_commit(self, commit: dict[str, Any], cursor: str) -> None:
        if commit.get("collection") != POST_COLLECTION:
            return
        rkey = as_text(commit.get("rkey"))
        if not _RKEY.fullmatch(rkey):
            raise PayloadError("the commit has no valid record key")
        operation = commit.get("operation")
        if operation == "delete":
            await self.emitter.delete(rkey, cursor)
            return
        if operation not in ("create", "update"):
            raise PayloadError("the commit's operation is not create, update or delete")
        record = commit.get("record")
        if not isinstance(record, dict):
            raise PayloadError(f"the {operation} of {rkey} carries no record")
        version = as_text(commit.get("rev")) if operation == "update" else ""
        await self.emitter.record(
            str(operation), rkey, as_text(commit.get("cid")), record, cursor, version
        )


# --------------------------------------------------------------------------------------------------
# poll


def tid_for(micros: int, clock_id: int = 0) -> str:
    """The record key (TID) of a moment in microseconds: 13 base32 characters that sort by time."""
    value = (micros << 10) | clock_id
    return "".join(TID_ALPHABET[(value >> shift) & 31] for shift in range(60, -1, -5))


def _record_value(record: dict[str, Any]) -> dict[str, Any] | None:
    """A listed record's value, when it is an object."""
    value = record.get("value")
    return value if isinstance(value, dict) else None


class PollSource:
    """`listRecords` of our own repo; new record keys are emitted oldest first."""

    def __init__(
        self, context: Context, cursor: str | None, client: XrpcClient, interval: float
    ) -> None:
        self.context = context
        self.emitter = Emitter(context)
        self.client = client
        self.interval = interval
        self.rkey = self._parse(cursor)

    def _parse(self, cursor: str | None) -> str | None:
        if cursor is not None and not _TID.match(cursor):
            log.warning(
                "%s: stored cursor %r is not a record key (was another mode used?); "
                "starting from now",
                self.context.name,
                cursor,
            )
            return None
        return cursor

    async def once(self) -> None:
        """Poll until a call fails; each successful call counts as being connected."""
        while True:
            newer = await self._newer_records()
            self.context.opened("polling")
            if self.rkey is None:
                self.rkey = max((rkey for rkey, _ in newer), default=TID_ZERO)
                self.context.sink.save_cursor(self.context.name, self.rkey)
                log.info("%s: first start; mirroring posts from now on", self.context.name)
            else:
                for rkey, record in sorted(newer, key=lambda item: item[0]):
                    value = _record_value(record)
                    if value is None:
                        log.warning("%s: record %s is no object; skipped", self.context.name, rkey)
                        self.context.sink.save_cursor(self.context.name, rkey)
                    else:
                        cid = as_text(record.get("cid"))
                        await self.emitter.record("create", rkey, cid, value, rkey)
                    self.rkey = rkey
            await asyncio.sleep(self.interval)

    async def _newer_records(self) -> list[tuple[str, dict[str, Any]]]:
        """Records with a key above the cursor; on a first start only the newest one.

        Pages come newest first, so paging stops at the first page that reaches the cursor.
        """
        found: list[tuple[str, dict[str, Any]]] = []
        page_cursor: str | None = None
        while True:
            params: dict[str, Any] = {
                "repo": self.context.did,
                "collection": POST_COLLECTION,
                "limit": 1 if self.rkey is None else LIST_PAGE,
            }
            if page_cursor:
                params["cursor"] = page_cursor
            page = await self.client.query("com.atproto.repo.listRecords", params)
            keyed = [
                (as_text(r.get("uri")).rsplit("/", 1)[-1], r) for r in as_dicts(page.get("records"))
            ]
            newer = [
                (rkey, record)
                for rkey, record in keyed
                if _TID.match(rkey) and (self.rkey is None or rkey > self.rkey)
            ]
            found.extend(newer)
            page_cursor = as_text(page.get("cursor"))
            if self.rkey is None or len(newer) < len(keyed) or not keyed or not page_cursor:
                return found


# --------------------------------------------------------------------------------------------------


class BlueskyListener:
    """Streams one Bluesky account's own posts into an EventSink until cancelled."""

    def __init__(
        self,
        name: str,
        client: XrpcClient,
        did: str,
        handle: str,
        *,
        mode: Mode,
        pds_url: str,
        jetstream_url: str,
        poll_interval: float = 60.0,
        stall_timeout: float = 60.0,
        jetstream_margin: float = 2.0,
        reconnect_base: float = 1.0,
        reconnect_max: float = 300.0,
        firehose_url: str = "",
        media_policy: MediaPolicy | None = None,
    ) -> None:
        """`pds_url` is where the account's blobs are fetched (and, without a `firehose_url`,
        its firehose); media come from that host only unless `media_policy` says otherwise."""
        if mode not in MODES:
            raise ValueError(f"unknown Bluesky listening mode {mode!r}; use one of {MODES}")
        self.name = name
        self.client = client
        self.did = did
        self.handle = handle
        self.mode = mode
        self.pds_url = pds_url.rstrip("/")
        self.jetstream_url = jetstream_url
        self.poll_interval = poll_interval
        self.stall_timeout = stall_timeout
        self.jetstream_margin = jetstream_margin
        self.reconnect_base = reconnect_base
        self.reconnect_max = reconnect_max
        self.firehose_url = firehose_url
        self.media_policy = media_policy or MediaPolicy.of(self.pds_url)

    def _source(
        self, context: Context, cursor: str | None
    ) -> FirehoseSource | JetstreamSource | PollSource:
        if self.mode == "firehose":
            return FirehoseSource(context, cursor, self.stall_timeout)
        if self.mode == "jetstream":
            return JetstreamSource(
                context, cursor, self.jetstream_url, self.jetstream_margin, self.stall_timeout
            )
        return PollSource(context, cursor, self.client, self.poll_interval)

    async def run(self, cursor: str | None, sink: EventSink) -> None:
        """Listen until cancelled, reconnecting with backoff; health goes to `sink.set_connected`."""
        try:
            async with aiohttp.ClientSession() as http:
                context = Context(
                    self.name,
                    self.did,
                    self.handle,
                    self.pds_url,
                    sink,
                    http,
                    MediaFetcher(http, self.media_policy, self.name),
                    self.firehose_url,
                )
                await self._loop(self._source(context, cursor), context)
        except asyncio.CancelledError:
            sink.set_connected(self.name, False, "stopped")
            raise

    async def _loop(
        self, source: FirehoseSource | JetstreamSource | PollSource, context: Context
    ) -> None:
        failures = 0
        while True:
            context.opened_at, context.delivered = None, False
            try:
                await source.once()
                detail = "stream ended"
            except (
                StreamLost,
                aiohttp.ClientError,
                OSError,
                DeliveryError,
            ) as error:
                detail = _error_detail(error)
            except Exception as error:
                log.exception("%s: unexpected error while listening", self.name)
                detail = f"unexpected error: {type(error).__name__}"
            failures = 0 if context.healthy() else failures + 1
            context.sink.set_connected(self.name, False, detail)
            delay = backoff_delay(failures, self.reconnect_base, self.reconnect_max)
            log.warning("%s: %s; reconnecting in %.1f s", self.name, detail, delay)
            await asyncio.sleep(delay)
