"""`com.atproto.sync.subscribeRepos` for the Bluesky sandbox: the PDS's event log over WebSocket.

Every repo write and account creation is sequenced here as the reference PDS sequences it (same
event types, fields and order), kept for replay, and sent to each subscriber as a binary frame of two
DAG-CBOR objects, a header `{op: 1, t: "#commit"}` and the body. A cursor replays from the log;
a cursor past the last event, or one that is not a whole number, gets the PDS's error frame and a
1008 close. A cursor whose next event is older than the backfill window gets `#info OutdatedCursor`,
then the events still inside the window.

Unlike the PDS, which batches when idle, events go out as soon as they are written: the same frames,
sooner. Stopping the server drops the connections without a close frame, as the PDS's shutdown does,
so that clients reconnect rather than treat it as the end of the stream. The sandbox's `Faults` can
stall every subscription (no frames, no pongs) or cut it, now or after some events.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiohttp import WSCloseCode, web

from relaybird.sandbox.bluesky_ipld import MAX_SAFE_INTEGER, Link, encode_dag_cbor
from relaybird.sandbox.bluesky_repo import Commit, car_file
from relaybird.sandbox.faults import Faults, cut_transport, read_socket

logger = logging.getLogger(__name__)

SUBSCRIBE_REPOS = "com.atproto.sync.subscribeRepos"
# How far back a cursor may reach before the PDS calls it outdated (its default: one day).
BACKFILL_WINDOW = 24 * 3600.0
_MESSAGE_OP = 1
_ERROR_OP = -1
_CURSOR = re.compile(r"-?[0-9]+")


@dataclass(frozen=True)
class FirehoseEvent:
    """One sequenced event as it sits in the log: its type (`#commit`, ...) and encoded frame."""

    seq: int
    type: str
    did: str
    sequenced_at: float
    body: dict[str, Any]
    frame: bytes


class CursorRefused(Exception):
    """A cursor the PDS answers with an error frame (and no events)."""

    def __init__(self, error: str, message: str) -> None:
        super().__init__(f"{error}: {message}")
        self.error = error
        self.message = message


def message_frame(event_type: str, body: Mapping[str, Any]) -> bytes:
    return encode_dag_cbor({"op": _MESSAGE_OP, "t": event_type}) + encode_dag_cbor(dict(body))


def error_frame(error: str, message: str) -> bytes:
    return encode_dag_cbor({"op": _ERROR_OP}) + encode_dag_cbor(
        {"error": error, "message": message}
    )


def iso_time(seconds: float) -> str:
    """A timestamp as the PDS writes `time`: UTC, milliseconds, `Z`."""
    moment = datetime.fromtimestamp(seconds, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Firehose:
    """The sequencer and the subscriptions of one sandbox: `seq` is shared by all its accounts."""

    def __init__(
        self,
        clock: Callable[[], float],
        *,
        backfill_window: float = BACKFILL_WINDOW,
        faults: Faults | None = None,
    ) -> None:
        self._clock = clock
        self.backfill_window = backfill_window
        self.faults = faults if faults is not None else Faults()
        self._events: list[FirehoseEvent] = []
        self._wakeups: set[asyncio.Event] = set()
        self._connections: set[asyncio.Transport] = set()

    # --- sequencing -----------------------------------------------------------------------------

    @property
    def last_seq(self) -> int:
        return self._events[-1].seq if self._events else 0

    @property
    def subscriber_count(self) -> int:
        return len(self._wakeups)

    def events(self) -> list[FirehoseEvent]:
        return list(self._events)

    def identity(self, did: str, handle: str | None) -> FirehoseEvent:
        body: dict[str, Any] = {"did": did}
        if handle is not None:
            body["handle"] = handle
        return self._append("#identity", did, body)

    def account(self, did: str, active: bool, status: str | None = None) -> FirehoseEvent:
        body: dict[str, Any] = {"did": did, "active": active}
        if status is not None:
            body["status"] = status
        return self._append("#account", did, body)

    def commit(self, did: str, commit: Commit) -> FirehoseEvent:
        """A `#commit`: the ops, and a CAR of the blocks that show them (commit block first root)."""
        body: dict[str, Any] = {
            "repo": did,
            "commit": Link(commit.cid),
            "rev": commit.rev,
            "since": commit.since,
            "blocks": car_file(commit.cid, commit.blocks.items()),
            "ops": [_op_body(op.action, op.path, op.cid, op.prev) for op in commit.ops],
            "rebase": False,
            "tooBig": False,
            "blobs": [],
        }
        if commit.prev_data is not None:
            body["prevData"] = Link(commit.prev_data)
        return self._append("#commit", did, body)

    def sync(self, did: str, commit: Commit) -> FirehoseEvent:
        """A `#sync`: the repo's current commit alone, as the PDS sends it for a new account."""
        blocks = car_file(commit.cid, [(commit.cid, commit.commit_block)])
        return self._append("#sync", did, {"did": did, "rev": commit.rev, "blocks": blocks})

    def _append(self, event_type: str, did: str, fields: dict[str, Any]) -> FirehoseEvent:
        now = self._clock()
        seq = self.last_seq + 1
        body = {**fields, "seq": seq, "time": iso_time(now)}
        event = FirehoseEvent(seq, event_type, did, now, body, message_frame(event_type, body))
        self._events.append(event)
        for wakeup in self._wakeups:
            wakeup.set()
        return event

    def _after(self, seq: int) -> list[FirehoseEvent]:
        start = bisect.bisect_right(self._events, seq, key=lambda event: event.seq)
        return self._events[start:]

    # --- cursors --------------------------------------------------------------------------------

    def start_point(self, raw_cursor: str | None) -> tuple[int | None, bool]:
        """Where a subscription starts (None: only what comes next) and whether it is outdated.

        Mirrors the PDS: an empty cursor is no cursor, a future one is refused, and one whose next
        event is past the backfill window restarts at the oldest event inside it.
        """
        if raw_cursor is None or raw_cursor == "":
            return None, False
        if not _CURSOR.fullmatch(raw_cursor) or abs(int(raw_cursor)) > MAX_SAFE_INTEGER:
            raise CursorRefused("InternalServerError", "Internal Server Error")
        cursor = int(raw_cursor)
        if cursor > self.last_seq:
            raise CursorRefused("FutureCursor", "Cursor in the future.")
        following = self._after(cursor)
        oldest_allowed = self._clock() - self.backfill_window
        if not following or following[0].sequenced_at >= oldest_allowed:
            return cursor, False
        inside = next((e for e in self._events if e.sequenced_at >= oldest_allowed), None)
        return (inside.seq - 1 if inside is not None else None), True

    # --- serving --------------------------------------------------------------------------------

    async def serve(self, request: web.Request) -> web.StreamResponse:
        """Upgrade to WebSocket and stream from the requested cursor until either side goes."""
        socket = web.WebSocketResponse(autoping=False)
        await socket.prepare(request)
        try:
            start, outdated = self.start_point(request.query.get("cursor"))
        except CursorRefused as refused:
            await socket.send_bytes(error_frame(refused.error, refused.message))
            await socket.close(code=WSCloseCode.POLICY_VIOLATION, message=refused.error.encode())
            return socket
        # "Now" is fixed here, with the subscription registered, so no event falls in between.
        after = self.last_seq if start is None else start
        transport = request.transport
        if transport is not None:
            self._connections.add(transport)
        wakeup = asyncio.Event()
        self._wakeups.add(wakeup)
        handle = self.faults.stream_opened(lambda: cut_transport(transport))
        sender = asyncio.create_task(self._send(socket, after, outdated, wakeup))
        sender.add_done_callback(lambda task: _abort_on_failure(task, transport))
        try:
            # Subscribers have nothing to say; this answers their pings and notices when they go.
            await read_socket(socket, self.faults)
        finally:
            self.faults.stream_closed(handle)
            self._wakeups.discard(wakeup)
            if transport is not None:
                self._connections.discard(transport)
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await sender
        return socket

    async def _send(
        self,
        socket: web.WebSocketResponse,
        last: int,
        outdated: bool,
        wakeup: asyncio.Event,
    ) -> None:
        if outdated:
            info = {
                "name": "OutdatedCursor",
                "message": "Requested cursor exceeded limit. Possibly missing events",
            }
            await socket.send_bytes(message_frame("#info", info))
        while True:
            wakeup.clear()
            for event in self._after(last):
                await self.faults.unstalled()
                await socket.send_bytes(event.frame)
                last = event.seq
                self.faults.event_sent()
            await wakeup.wait()

    def drop_connections(self) -> int:
        """Cut every subscriber off without a close frame, as a crash or a network fault would."""
        dropped = list(self._connections)
        for transport in dropped:
            transport.abort()
        return len(dropped)


def _abort_on_failure(task: asyncio.Task[None], transport: asyncio.Transport | None) -> None:
    """A send that failed leaves a broken socket: drop it, so the reading side ends too."""
    if not task.cancelled() and task.exception() is not None and transport is not None:
        transport.abort()


def _op_body(action: str, path: str, cid: str | None, prev: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"action": action, "path": path, "cid": Link(cid) if cid else None}
    if prev is not None:
        body["prev"] = Link(prev)
    return body
