"""Mastodon's streaming API for the sandbox: server-sent events and the multiplexed WebSocket.

Events are fanned out through a `StreamHub` to per-connection queues, so the REST handlers only say
*who* should see an event and never touch connections. Every connection ends when the hub closes,
which lets the sandbox stop promptly even while clients are still listening. Every connection is
also registered with the sandbox's `Faults`, which may refuse, stall or cut it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus

from aiohttp import web

from relaybird.sandbox.faults import Faults, cut_transport, keep_alive, read_socket

log = logging.getLogger(__name__)

USER_STREAMS = ("user", "user:notification")
PUBLIC_STREAMS = ("public", "public:local")
KNOWN_STREAMS = frozenset(USER_STREAMS + PUBLIC_STREAMS)
SSE_PATHS = {
    "user": "user",
    "user/notification": "user:notification",
    "public": "public",
    "public/local": "public:local",
}


@dataclass(frozen=True)
class StreamMessage:
    """One event as it leaves the server: the stream it belongs to, its name and payload text."""

    stream: str
    event: str
    payload: str

    def websocket_text(self) -> str:
        return json.dumps({"stream": [self.stream], "event": self.event, "payload": self.payload})

    def sse_text(self) -> str:
        return f"event: {self.event}\ndata: {self.payload}\n\n"


@dataclass(eq=False)
class Subscription:
    """A connection's interest: whose user streams it reads and which stream names."""

    account_id: str
    streams: set[str] = field(default_factory=set)
    queue: asyncio.Queue[StreamMessage | None] = field(default_factory=asyncio.Queue)


class StreamHub:
    """Routes events to the subscriptions that should receive them."""

    def __init__(self) -> None:
        self._subscriptions: set[Subscription] = set()
        self.closed = False

    def open(self, account_id: str) -> Subscription:
        subscription = Subscription(account_id)
        self._subscriptions.add(subscription)
        if self.closed:
            subscription.queue.put_nowait(None)
        return subscription

    def release(self, subscription: Subscription) -> None:
        self._subscriptions.discard(subscription)

    def publish_user(self, account_ids: set[str], event: str, payload: str) -> None:
        """An event for the `user` stream of each account (home timeline, deletes, edits)."""
        self._publish(lambda sub: sub.account_id in account_ids, ("user",), event, payload)

    def publish_notification(self, account_id: str, payload: str) -> None:
        self._publish(
            lambda sub: sub.account_id == account_id, USER_STREAMS, "notification", payload
        )

    def publish_public(self, event: str, payload: str) -> None:
        self._publish(lambda sub: True, PUBLIC_STREAMS, event, payload)

    def _publish(
        self,
        wants: Callable[[Subscription], bool],
        streams: tuple[str, ...],
        event: str,
        payload: str,
    ) -> None:
        for subscription in list(self._subscriptions):
            if not wants(subscription):
                continue
            for stream in streams:
                if stream in subscription.streams:
                    subscription.queue.put_nowait(StreamMessage(stream, event, payload))

    @property
    def connection_count(self) -> int:
        return len(self._subscriptions)

    def reopen(self) -> None:
        """Accept connections again after `close` (the sandbox was restarted)."""
        self.closed = False

    def close(self) -> None:
        """End every open connection; new ones end at once."""
        self.closed = True
        for subscription in list(self._subscriptions):
            subscription.queue.put_nowait(None)


Authenticate = Callable[[web.Request], Awaitable[str | None]]
_KNOWN = frozenset(status.value for status in HTTPStatus)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


class StreamingEndpoints:
    """The aiohttp handlers of the streaming API, bound to a hub and an authenticator."""

    def __init__(
        self,
        hub: StreamHub,
        authenticate: Authenticate,
        heartbeat_seconds: float,
        faults: Faults | None = None,
    ):
        self.hub = hub
        self.authenticate = authenticate
        self.heartbeat_seconds = heartbeat_seconds
        self.faults = faults if faults is not None else Faults()

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(text="OK", content_type="text/plain")

    async def sse(self, request: web.Request) -> web.StreamResponse:
        """`GET /api/v1/streaming/:stream`, one stream per connection."""
        stream = SSE_PATHS.get(request.match_info.get("stream", "").strip("/"))
        return await self._serve_sse(request, stream)

    async def root(self, request: web.Request) -> web.StreamResponse:
        """`GET /api/v1/streaming`: a WebSocket upgrade, or SSE picked by `?stream=`."""
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await self._serve_websocket(request)
        stream = request.query.get("stream")
        return await self._serve_sse(request, stream if stream in KNOWN_STREAMS else None)

    def _refusal(self) -> web.Response | None:
        refused = self.faults.refused_stream()
        if refused is None:
            return None
        status = refused.status or 503
        return _error(status, HTTPStatus(status).phrase if status in _KNOWN else "Refused")

    def _register(self, request: web.Request, subscription: Subscription) -> int:
        """Let the faults cut this connection: the socket goes, and so does its pump."""

        def cut() -> None:
            cut_transport(request.transport)
            subscription.queue.put_nowait(None)

        return self.faults.stream_opened(cut)

    async def _serve_sse(self, request: web.Request, stream: str | None) -> web.StreamResponse:
        refused = self._refusal()
        if refused is not None:
            return refused
        account_id = await self.authenticate(request)
        if account_id is None:
            return _error(401, "The access token is invalid")
        if stream is None:
            return _error(404, "Unknown stream type")
        subscription = self.hub.open(account_id)
        subscription.streams.add(stream)
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "private, no-store",
                "X-Accel-Buffering": "no",
            }
        )
        handle = self._register(request, subscription)
        try:
            await response.prepare(request)
            await response.write(b":)\n")
            await self._pump_sse(response, subscription)
        except (ConnectionResetError, asyncio.CancelledError):
            log.debug("SSE client of account %s went away", account_id)
        finally:
            self.faults.stream_closed(handle)
            self.hub.release(subscription)
        return response

    async def _pump_sse(self, response: web.StreamResponse, subscription: Subscription) -> None:
        while True:
            try:
                message = await asyncio.wait_for(
                    subscription.queue.get(), timeout=self.heartbeat_seconds
                )
            except TimeoutError:
                if not self.faults.streams_stalled:
                    await response.write(b":thump\n")
                continue
            if message is None:
                return
            await self.faults.unstalled()
            await response.write(message.sse_text().encode("utf-8"))
            self.faults.event_sent()

    async def _serve_websocket(self, request: web.Request) -> web.StreamResponse:
        refused = self._refusal()
        if refused is not None:
            return refused
        account_id = await self.authenticate(request)
        if account_id is None:
            return _error(401, "The access token is invalid")
        socket = web.WebSocketResponse(autoping=False)
        await socket.prepare(request)
        subscription = self.hub.open(account_id)
        handle = self._register(request, subscription)
        initial = request.query.get("stream")
        if initial:
            await self._change_subscription(socket, subscription, "subscribe", initial)
        tasks = [
            asyncio.create_task(self._pump_websocket(socket, subscription)),
            asyncio.create_task(keep_alive(socket, self.heartbeat_seconds, self.faults)),
        ]

        async def on_text(data: str) -> None:
            await self._handle_command(socket, subscription, data)

        try:
            await read_socket(socket, self.faults, on_text)
        finally:
            self.faults.stream_closed(handle)
            self.hub.release(subscription)
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        return socket

    async def _pump_websocket(
        self, socket: web.WebSocketResponse, subscription: Subscription
    ) -> None:
        while True:
            message = await subscription.queue.get()
            if message is None:
                await socket.close()
                return
            await self.faults.unstalled()
            try:
                await socket.send_str(message.websocket_text())
            except ConnectionResetError:
                return
            self.faults.event_sent()

    async def _handle_command(
        self, socket: web.WebSocketResponse, subscription: Subscription, raw: str
    ) -> None:
        try:
            command = json.loads(raw)
        except ValueError:
            await socket.send_str(json.dumps({"error": "Invalid JSON", "status": 400}))
            return
        if not isinstance(command, dict):
            await socket.send_str(json.dumps({"error": "Invalid JSON", "status": 400}))
            return
        kind = command.get("type")
        stream = command.get("stream")
        if kind not in ("subscribe", "unsubscribe") or not isinstance(stream, str):
            await socket.send_str(json.dumps({"error": "Unknown message type", "status": 400}))
            return
        await self._change_subscription(socket, subscription, kind, stream)

    async def _change_subscription(
        self, socket: web.WebSocketResponse, subscription: Subscription, kind: str, stream: str
    ) -> None:
        if stream not in KNOWN_STREAMS:
            await socket.send_str(
                json.dumps({"error": "Unknown stream type", "status": 400, "stream": [stream]})
            )
            return
        if kind == "subscribe":
            subscription.streams.add(stream)
        else:
            subscription.streams.discard(stream)
