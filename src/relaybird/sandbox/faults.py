"""Switchable faults shared by the sandbox servers, so that tests can stage a bad day on demand.

Each sandbox owns one `Faults` (`sandbox.faults`) and routes every API request through
`Faults.serve` and every streaming connection through the stream methods below; the sandbox
supplies only how its network words an error (`ErrorShape`). Faults are switched on and off at run
time from any thread: the state sits behind a lock, and what has to touch connections runs on the
server's loop. Which moment a fault fires is the caller's choice (a campaign draws it from a seeded
`random.Random`); `Faults.random` only saves writing the same draw twice.

Request faults (`fail`, `delay`, `reset`, `malformed`, `land_then_hang`) select requests by a
regular expression searched in the request's key (Mastodon `"POST /api/v1/statuses"`, a Telegram
method name, a Bluesky NSID; case does not matter) and optionally by account (a Mastodon username,
a Telegram bot's username or id, a Bluesky DID or handle). The oldest active fault that matches
decides a request; at most one fires per request. Stream faults (`drop_streams`, `stall_streams`,
`refuse_streams`) act on streaming connections only, and request faults never do.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import math
import random as _random
import re
import socket
import struct
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from aiohttp import WSMsgType, web

__all__ = [
    "NO_ANSWER",
    "REQUEST_KINDS",
    "STREAM_KINDS",
    "ErrorShape",
    "Fault",
    "Faults",
    "Fired",
    "Target",
    "cut_transport",
    "keep_alive",
    "read_socket",
]

T = TypeVar("T")

REQUEST_KINDS = ("fail", "delay", "reset", "malformed", "land_then_hang")
STREAM_KINDS = ("drop_streams", "stall_streams", "refuse_streams")
NO_ANSWER = 0
"""The status a sandbox logs for a request whose connection was reset instead of answered."""

_POLL_SECONDS = 0.02
_LOOP_CALL_TIMEOUT = 10.0


@dataclass(frozen=True)
class Target:
    """What a request fault is matched against: the request's key and the accounts behind it."""

    key: str
    accounts: tuple[str, ...] = ()


@dataclass(frozen=True)
class ErrorShape:
    """How a network words a refusal, so a fault looks like the real thing to its client library.

    `error(status, retry_after)` builds the answer for `fail`; `retry_after` is in seconds and
    always given, so 429s can carry the network's own rate-limit headers. `malformed` is the body
    of a 200 that stops in the middle of its JSON.
    """

    error: Callable[[int, float], web.Response]
    malformed: bytes = b'{"id": "1'


@dataclass(eq=False)
class Fault:
    """One switched-on fault; `cancel()` switches it off, `fired_count` says how often it fired."""

    kind: str
    owner: Faults = field(repr=False)
    status: int | None = None
    seconds: float = 0.0
    retry_after: float | None = None
    match: str = ""
    account: str = ""
    land: bool = False
    after_events: int | None = None
    remaining: int | None = None
    deadline: float | None = None
    fired_count: int = 0
    events_seen: int = 0
    cancelled: bool = False
    _pattern: re.Pattern[str] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self._pattern = re.compile(self.match, re.IGNORECASE) if self.match else None

    @property
    def active(self) -> bool:
        """Still able to fire: not cancelled, not used up, not past its time."""
        if self.cancelled or (self.remaining is not None and self.remaining <= 0):
            return False
        return self.deadline is None or time.monotonic() < self.deadline

    def cancel(self) -> None:
        """Switch this fault off; requests it holds (`land_then_hang`) are answered."""
        self.owner.cancel(self)

    def matches(self, target: Target) -> bool:
        if self._pattern is not None and self._pattern.search(target.key) is None:
            return False
        return not self.account or self.account.lower() in (a.lower() for a in target.accounts)

    def describe(self) -> str:
        """A short label for logs and campaign reports."""
        if self.kind == "fail":
            return f"fail {self.status}"
        if self.kind in ("delay", "stall_streams"):
            return f"{self.kind} {self.seconds:g}s"
        if self.kind == "drop_streams" and self.after_events:
            return f"drop_streams after {self.after_events} events"
        if self.kind == "refuse_streams":
            return f"refuse_streams {self.status}"
        return self.kind + (" after landing" if self.land else "")

    def retry_after_now(self) -> float:
        """What a 429 tells the client: as asked, else until the fault's time runs out, else 1 s."""
        if self.retry_after is not None:
            return self.retry_after
        if self.deadline is not None:
            return max(0.0, self.deadline - time.monotonic())
        return 1.0


@dataclass(frozen=True)
class Fired:
    """One firing: when (wall clock), which fault, and what it hit."""

    at: float
    kind: str
    target: str
    fault: Fault


def _expiry(seconds: float | None) -> float | None:
    return None if seconds is None else time.monotonic() + seconds


def cut_transport(transport: asyncio.BaseTransport | None, *, reset: bool = False) -> None:
    """Close a connection without a word; with `reset`, as a TCP reset (RST) rather than a FIN.

    A reset makes clients fail with "connection reset by peer"; streams are cut with a FIN so that
    the events already written still reach the client before the end of the stream.
    """
    if transport is None:
        return
    if reset:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    if isinstance(transport, asyncio.Transport):
        transport.abort()
    else:
        transport.close()


class Faults:
    """The faults of one sandbox, and the record of when they fired (`fired`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self._streams: dict[int, Callable[[], None]] = {}
        self._stream_ids = itertools.count(1)
        self._release_generation = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self.fired: list[Fired] = []

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """The loop the server runs on; cutting connections from other threads is done there."""
        self._loop = loop

    # --- switching faults on and off ------------------------------------------------------------

    def fail(
        self,
        status: int,
        *,
        times: int | None = None,
        seconds: float | None = None,
        match: str = "",
        account: str = "",
        retry_after: float | None = None,
    ) -> Fault:
        """Answer matching requests with `status` in the network's own error shape.

        Without `times` or `seconds` it lasts until `clear()`; with both, until the first runs out.
        A 429 carries `retry_after` (default: what is left of `seconds`, else 1 s).
        """
        return self._add(
            Fault(
                "fail",
                self,
                status=status,
                retry_after=retry_after,
                match=match,
                account=account,
                remaining=times,
                deadline=_expiry(seconds),
            )
        )

    def delay(
        self,
        seconds: float,
        *,
        times: int | None = None,
        duration: float | None = None,
        match: str = "",
        account: str = "",
    ) -> Fault:
        """Answer matching requests `seconds` late.

        The request takes effect at once and only its answer waits, as on a server that is slow to
        respond: a client that gives up first has still made its change (and must find out).
        """
        return self._add(
            Fault(
                "delay",
                self,
                seconds=seconds,
                match=match,
                account=account,
                remaining=times,
                deadline=_expiry(duration),
            )
        )

    def reset(
        self,
        *,
        times: int | None = None,
        duration: float | None = None,
        match: str = "",
        account: str = "",
        land: bool = False,
    ) -> Fault:
        """Reset the connection instead of answering; with `land`, after the request took effect."""
        return self._add(
            Fault(
                "reset",
                self,
                match=match,
                account=account,
                land=land,
                remaining=times,
                deadline=_expiry(duration),
            )
        )

    def malformed(
        self,
        *,
        times: int | None = None,
        duration: float | None = None,
        match: str = "",
        account: str = "",
        land: bool = False,
    ) -> Fault:
        """Answer 200 with JSON cut short; with `land`, after the request took effect."""
        return self._add(
            Fault(
                "malformed",
                self,
                match=match,
                account=account,
                land=land,
                remaining=times,
                deadline=_expiry(duration),
            )
        )

    def land_then_hang(self, *, times: int | None = 1, match: str = "", account: str = "") -> Fault:
        """Let matching requests take effect, then hold their answers until `clear()`/`release()`.

        This is the window between "posted" and "recorded" that a crash makes dangerous: the
        object exists on the server while the client has heard nothing. Once released, the held
        answers are sent (to whoever is still listening).
        """
        return self._add(
            Fault("land_then_hang", self, match=match, account=account, remaining=times)
        )

    def drop_streams(self, *, after_events: int | None = None) -> Fault:
        """Cut every streaming connection without a close frame: now, or once `after_events`
        more events have been sent on this server's streams (counted over all connections).

        It fires once; connections opened afterwards are left alone.
        """
        fault = Fault("drop_streams", self, after_events=after_events or None, remaining=1)
        self._add(fault)
        if fault.after_events is None:
            self._on_loop(lambda: self._drop_all(fault))
        return fault

    def stall_streams(self, seconds: float) -> Fault:
        """Keep stream connections open but silent for `seconds`: no events, no heartbeats, no
        answers to pings. Events held back are sent once the stall ends, if the client stayed.
        """
        fault = Fault("stall_streams", self, seconds=seconds, deadline=_expiry(seconds))
        self._add(fault)
        self._record(fault, "streams")
        return fault

    def refuse_streams(
        self, *, times: int | None = None, duration: float | None = None, status: int = 503
    ) -> Fault:
        """Refuse new stream connections with `status` (in the network's error shape)."""
        return self._add(
            Fault(
                "refuse_streams",
                self,
                status=status,
                remaining=times,
                deadline=_expiry(duration),
            )
        )

    def random(
        self,
        rng: _random.Random,
        *,
        kinds: Sequence[str] = ("fail", "delay", "reset", "malformed", *STREAM_KINDS),
        statuses: Sequence[int] = (429, 500, 502, 503),
        match: str = "",
        account: str = "",
        max_times: int = 3,
        max_seconds: float = 1.0,
        max_events: int = 5,
    ) -> Fault:
        """Switch on one fault drawn from `rng`: its kind, status, count and length.

        Everything random comes from `rng`, so a seed replays the same campaign.
        """
        kind = rng.choice(list(kinds))
        times = rng.randint(1, max_times)
        seconds = round(rng.uniform(0.05, max_seconds), 3)
        if kind == "fail":
            return self.fail(rng.choice(list(statuses)), times=times, match=match, account=account)
        if kind == "delay":
            return self.delay(seconds, times=times, match=match, account=account)
        if kind == "reset":
            return self.reset(times=times, match=match, account=account, land=rng.random() < 0.5)
        if kind == "malformed":
            land = rng.random() < 0.5
            return self.malformed(times=times, match=match, account=account, land=land)
        if kind == "land_then_hang":
            return self.land_then_hang(times=1, match=match, account=account)
        if kind == "drop_streams":
            return self.drop_streams(after_events=rng.randint(0, max_events))
        if kind == "stall_streams":
            return self.stall_streams(seconds)
        if kind == "refuse_streams":
            return self.refuse_streams(times=times)
        raise ValueError(f"unknown fault kind {kind!r}")

    def cancel(self, fault: Fault) -> None:
        with self._lock:
            fault.cancelled = True
            if fault in self._faults:
                self._faults.remove(fault)

    def clear(self) -> None:
        """Switch every fault off and answer every held request; `fired` is kept."""
        with self._lock:
            for fault in self._faults:
                fault.cancelled = True
            self._faults.clear()
            self._release_generation += 1

    def release(self) -> None:
        """Answer the requests held by `land_then_hang`, leaving the faults on (used on stop)."""
        with self._lock:
            self._release_generation += 1

    @property
    def active(self) -> list[Fault]:
        with self._lock:
            return [fault for fault in self._faults if fault.active]

    def _add(self, fault: Fault) -> Fault:
        with self._lock:
            self._faults = [f for f in self._faults if f.active]
            self._faults.append(fault)
        return fault

    def _record(self, fault: Fault, target: str) -> None:
        self.fired.append(Fired(time.time(), fault.kind, target, fault))

    def _take(self, kinds: Sequence[str], target: Target | None) -> Fault | None:
        """The oldest active fault of `kinds` matching `target`, with one use counted."""
        with self._lock:
            for fault in self._faults:
                if fault.kind not in kinds or not fault.active:
                    continue
                if target is not None and not fault.matches(target):
                    continue
                if fault.remaining is not None:
                    fault.remaining -= 1
                fault.fired_count += 1
                self._record(fault, target.key if target is not None else "stream")
                return fault
        return None

    # --- requests -------------------------------------------------------------------------------

    async def serve(
        self,
        request: web.Request,
        target: Target,
        proceed: Callable[[], Awaitable[web.StreamResponse]],
        shape: ErrorShape,
    ) -> web.StreamResponse:
        """Answer a request: through `proceed` (the sandbox's own handling), or as a fault says."""
        fault = self._take(REQUEST_KINDS, target)
        if fault is None:
            return await proceed()
        if fault.kind == "fail":
            return shape.error(fault.status or 500, fault.retry_after_now())
        if fault.kind == "delay":
            answer = await proceed()
            await asyncio.sleep(fault.seconds)
            return answer
        if fault.kind == "land_then_hang":
            generation = self._release_generation
            answer = await proceed()
            await self._held(fault, generation)
            return answer
        if fault.land:
            await proceed()
        if fault.kind == "malformed":
            return web.Response(body=shape.malformed, content_type="application/json")
        cut_transport(request.transport, reset=True)
        return web.Response(status=NO_ANSWER)

    async def _held(self, fault: Fault, generation: int) -> None:
        while self._release_generation == generation and not fault.cancelled:
            await asyncio.sleep(_POLL_SECONDS)

    # --- streams --------------------------------------------------------------------------------

    def refused_stream(self) -> Fault | None:
        """The fault refusing this stream connection attempt, if one is on (counted as fired)."""
        return self._take(("refuse_streams",), None)

    def stream_opened(self, cut: Callable[[], None]) -> int:
        """Register a live stream connection and how to cut it; returns its handle."""
        handle = next(self._stream_ids)
        with self._lock:
            self._streams[handle] = cut
        return handle

    def stream_closed(self, handle: int) -> None:
        with self._lock:
            self._streams.pop(handle, None)

    @property
    def stream_count(self) -> int:
        with self._lock:
            return len(self._streams)

    def event_sent(self) -> None:
        """Count one event sent on a stream; a `drop_streams(after_events=N)` may fire on it."""
        due: list[Fault] = []
        with self._lock:
            for fault in self._faults:
                if fault.kind != "drop_streams" or not fault.active or fault.after_events is None:
                    continue
                fault.events_seen += 1
                if fault.events_seen >= fault.after_events:
                    due.append(fault)
        for fault in due:
            self._drop_all(fault)

    def _drop_all(self, fault: Fault) -> None:
        with self._lock:
            if not fault.active:
                return
            fault.remaining = 0
            fault.fired_count += 1
            cuts = list(self._streams.values())
            self._streams.clear()
        self._record(fault, f"{len(cuts)} streams")
        for cut in cuts:
            cut()

    @property
    def streams_stalled(self) -> bool:
        with self._lock:
            return any(f.kind == "stall_streams" and f.active for f in self._faults)

    async def unstalled(self) -> None:
        """Return once no stall is on; a stream sender awaits this before each write."""
        while self.streams_stalled:
            await asyncio.sleep(_POLL_SECONDS)

    # --- threads --------------------------------------------------------------------------------

    def _on_loop(self, work: Callable[[], T]) -> T:
        """Run `work` on the server's loop, waiting for it, when called from another thread."""
        loop = self._loop
        if loop is None or loop.is_closed() or not loop.is_running():
            return work()
        try:
            current: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        if current is loop:
            return work()
        done: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                done.set_result(work())
            except BaseException as error:  # handed to the calling thread
                done.set_exception(error)

        loop.call_soon_threadsafe(run)
        return done.result(timeout=_LOOP_CALL_TIMEOUT)


# --- helpers for the sandboxes' WebSocket and SSE handlers ---------------------------------------


async def read_socket(
    socket_: web.WebSocketResponse,
    faults: Faults,
    on_text: Callable[[str], Awaitable[None]] | None = None,
) -> None:
    """Read a server-side WebSocket (opened with `autoping=False`) until it closes.

    Pings are answered here rather than by aiohttp, so that a stall can leave them unanswered,
    which is how a client learns that a silent stream is dead.
    """
    async for message in socket_:
        if message.type is WSMsgType.PING:
            if not faults.streams_stalled:
                with contextlib.suppress(ConnectionError):
                    await socket_.pong(message.data)
        elif message.type is WSMsgType.TEXT and on_text is not None:
            await on_text(message.data)
        elif message.type is WSMsgType.ERROR:
            return


async def keep_alive(socket_: web.WebSocketResponse, interval: float, faults: Faults) -> None:
    """Ping the client every `interval` seconds, except while streams are stalled.

    Used in place of aiohttp's own heartbeat, which a stall could not silence.
    """
    while not socket_.closed:
        await asyncio.sleep(interval)
        if not faults.streams_stalled and not socket_.closed:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await socket_.ping()


def ceil_seconds(seconds: float) -> int:
    """Whole seconds to wait, never 0, as networks that count in seconds announce them."""
    return max(1, math.ceil(seconds))
