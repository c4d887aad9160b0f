"""Mastodon: the account's own statuses from the streaming API, and posting through Mastodon.py.

Inbound reads raw JSON (the SSE stream and the catch-up call) with aiohttp, so that the converter sees
exactly what the server sent; outbound uses Mastodon.py, which is synchronous and therefore runs in a
thread here and nowhere else.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import random
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import aiohttp
from mastodon import Mastodon
from mastodon.errors import (
    MastodonAPIError,
    MastodonError,
    MastodonNetworkError,
    MastodonNotFoundError,
    MastodonRatelimitError,
    MastodonServerError,
    MastodonUnauthorizedError,
)
from PIL import Image

from relaybird import richtext
from relaybird.config import MastodonAccount
from relaybird.media import MediaError, download
from relaybird.model import Event, EventKind, LinkCard, Media, Post, Span, TargetRef
from relaybird.networks.base import (
    Capabilities,
    EventSink,
    PermanentError,
    RateLimited,
    ReplyTarget,
    TemporaryError,
)
from relaybird.networks.mastodon_format import post_to_status_text, status_to_post

log = logging.getLogger(__name__)

T = TypeVar("T")

HEARTBEAT_TIMEOUT_SECONDS = 90.0
MAX_RECONNECT_SECONDS = 300.0
CATCH_UP_PAGE = 40


def id_order(status_id: str) -> tuple[int, str]:
    """Mastodon ids are snowflakes: numeric strings that sort by length, then lexically."""
    return (len(status_id), status_id)


@dataclass(frozen=True)
class SseMessage:
    event: str
    data: str


async def read_sse(lines: AsyncIterable[bytes]) -> AsyncIterator[SseMessage]:
    """Server-sent events: `event:`/`data:` fields up to a blank line; `:` lines are heartbeats."""
    event, data = "message", list[str]()
    async for raw in lines:
        line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
        if not line:
            if data:
                yield SseMessage(event, "\n".join(data))
            event, data = "message", []
        elif line.startswith(":"):
            continue
        else:
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "event":
                event = value
            elif field == "data":
                data.append(value)


class MastodonNetwork:
    network = "mastodon"

    def __init__(
        self, account: MastodonAccount, *, heartbeat_timeout: float = HEARTBEAT_TIMEOUT_SECONDS
    ) -> None:
        self.name = account.name
        self.base_url = str(account.base_url).rstrip("/")
        self._token = account.access_token.get_secret_value()
        self.heartbeat_timeout = heartbeat_timeout
        self.client = Mastodon(
            api_base_url=self.base_url,
            access_token=self._token,
            version_check_mode="none",
            ratelimit_method="throw",
            request_timeout=30,
        )
        self.capabilities = self._capabilities({})
        self.me: dict[str, Any] = {}
        self.streaming_base = self.base_url
        self._http: aiohttp.ClientSession | None = None

    # lifecycle

    @staticmethod
    def _capabilities(configuration: dict[str, Any]) -> Capabilities:
        statuses = configuration.get("statuses", {})
        media = configuration.get("media_attachments", {})
        url_weight = int(statuses.get("characters_reserved_per_url", 23))

        def measure(text: str, spans: list[Span]) -> int:
            return richtext.count_mastodon(text, spans, url_weight=url_weight)

        return Capabilities(
            max_text=int(statuses.get("max_characters", 500)),
            measure=measure,
            max_media=int(statuses.get("max_media_attachments", 4)),
            max_image_bytes=int(media.get("image_size_limit", 16 * 1024 * 1024)),
            content_warning_field=True,
        )

    async def open(self) -> None:
        self._http = aiohttp.ClientSession(headers={"Authorization": f"Bearer {self._token}"})
        self.me = dict(await self._call(self.client.account_verify_credentials))
        instance = await self._get_json("/api/v2/instance")
        configuration = instance.get("configuration", {})
        self.capabilities = self._capabilities(configuration)
        streaming = configuration.get("urls", {}).get("streaming")
        if streaming:
            self.streaming_base = (
                str(streaming).rstrip("/").replace("wss://", "https://").replace("ws://", "http://")
            )

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()

    @property
    def http(self) -> aiohttp.ClientSession:
        if self._http is None:
            raise RuntimeError("the Mastodon adapter was not opened")
        return self._http

    async def _get_json(self, path: str, params: dict[str, str] | None = None) -> Any:
        async with self.http.get(self.base_url + path, params=params) as response:
            if response.status in (401, 403):
                raise PermanentError(
                    f"{self.name}: the access token was refused ({response.status})"
                )
            if response.status == 429:
                raise RateLimited(f"{self.name}: rate limited", time.time() + 60)
            if response.status >= 400:
                raise TemporaryError(f"{self.name}: GET {path} answered {response.status}")
            return await response.json(content_type=None)

    # inbound

    async def listen(self, cursor: str | None, sink: EventSink) -> None:
        failures = 0
        while True:
            try:
                await self._stream_once(cursor, sink)
                failures = 0
            except asyncio.CancelledError:
                sink.set_connected(self.name, False, "stopped")
                raise
            except (aiohttp.ClientError, TimeoutError, TemporaryError) as error:
                failures += 1
                sink.set_connected(self.name, False, f"stream lost: {type(error).__name__}")
            cursor = self._cursor or cursor
            delay = min(MAX_RECONNECT_SECONDS, 2.0 ** min(failures, 10)) * random.uniform(0.5, 1.0)
            log.warning("%s: streaming stopped; reconnecting in %.1f s", self.name, delay)
            await asyncio.sleep(delay)

    _cursor: str | None = None

    async def _stream_once(self, cursor: str | None, sink: EventSink) -> None:
        """Open the stream first, then catch up, then read it: nothing falls between the two."""
        url = f"{self.streaming_base}/api/v1/streaming/user"
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=30, sock_read=self.heartbeat_timeout
        )
        async with self.http.get(url, timeout=timeout) as response:
            if response.status in (401, 403):
                raise PermanentError(f"{self.name}: the streaming API refused the access token")
            if response.status != 200:
                raise TemporaryError(f"{self.name}: streaming answered HTTP {response.status}")
            self._cursor = cursor
            if cursor is None:
                await self._set_baseline(sink)
            else:
                await self._catch_up(sink)
            sink.set_connected(self.name, True, "streaming")
            async for message in read_sse(response.content):
                await self._on_stream_message(message, sink)

    async def _set_baseline(self, sink: EventSink) -> None:
        """On the very first start nothing from the past is mirrored: remember where now is."""
        latest = await self._get_json(f"/api/v1/accounts/{self.me['id']}/statuses", {"limit": "1"})
        self._cursor = str(latest[0]["id"]) if latest else "0"
        sink.save_cursor(self.name, self._cursor)
        log.info("%s: first start; mirroring posts from now on", self.name)

    async def _catch_up(self, sink: EventSink) -> None:
        """Mirror what was published while the daemon was down, oldest first."""
        while True:
            assert self._cursor is not None
            page = await self._get_json(
                f"/api/v1/accounts/{self.me['id']}/statuses",
                {"min_id": self._cursor, "limit": str(CATCH_UP_PAGE)},
            )
            if not page:
                return
            for status in sorted(page, key=lambda s: id_order(str(s["id"]))):
                await self._emit(status, sink)
            if len(page) < CATCH_UP_PAGE:
                return

    async def _on_stream_message(self, message: SseMessage, sink: EventSink) -> None:
        if message.event == "delete":
            deleted = Post(id=message.data.strip().strip('"'), text="")
            await sink.accept(Event(kind=EventKind.DELETE, account=self.name, post=deleted))
            return
        if message.event not in ("update", "status.update"):
            return
        try:
            status = json.loads(message.data)
        except json.JSONDecodeError:
            log.warning("%s: unreadable stream payload skipped", self.name)
            return
        if not isinstance(status, dict):
            return
        if str(status.get("account", {}).get("id")) != str(self.me["id"]):
            return
        await self._emit(status, sink, edit=message.event == "status.update")

    async def _emit(self, status: dict[str, Any], sink: EventSink, edit: bool = False) -> None:
        status_id = str(status["id"])
        if not edit and (self._cursor is None or id_order(status_id) > id_order(self._cursor)):
            self._cursor = status_id
        try:
            post = status_to_post(status)
        except (KeyError, TypeError, ValueError) as error:
            log.warning(
                "%s: status %s could not be read (%s); skipped", self.name, status_id, error
            )
            if self._cursor is not None:
                sink.save_cursor(self.name, self._cursor)
            return
        post = replace(post, media=[await self._fetch(item) for item in post.media])
        post.card = await self._card(status.get("card"))
        if edit:
            version = str(status.get("edited_at") or "")
            await sink.accept(Event(EventKind.EDIT, self.name, post, version=version))
            return
        kind = EventKind.REPLY if post.reply_to else EventKind.POST
        await sink.accept(Event(kind=kind, account=self.name, post=post, cursor=self._cursor))

    async def _card(self, card: Any) -> LinkCard | None:
        """Mastodon's link preview, with its image, for targets that show cards."""
        if not isinstance(card, dict) or not card.get("url"):
            return None
        thumb = None
        if card.get("image"):
            thumb = await self._fetch(Media(mime="image/jpeg", url=str(card["image"])))
            if thumb.data is None:
                thumb = None
            else:
                kind = Image.open(io.BytesIO(thumb.data)).format if thumb.data else None
                thumb.mime = f"image/{(kind or 'jpeg').lower()}"
        return LinkCard(
            url=str(card["url"]),
            title=str(card.get("title") or ""),
            description=str(card.get("description") or ""),
            thumb=thumb,
        )

    async def _fetch(self, item: Media) -> Media:
        try:
            return replace(item, data=await download(self.http, item.url))
        except MediaError as error:
            log.warning("%s: %s", self.name, error)
            return item

    # outbound

    def new_key(self) -> str:
        return uuid.uuid4().hex

    async def publish(
        self, post: Post, reply_to: ReplyTarget | None, key: str, retrying: bool
    ) -> TargetRef:
        media_ids = [await self._upload(item) for item in post.media]
        text = post_to_status_text(post)
        status = await self._call(
            self.client.status_post,
            text,
            in_reply_to_id=reply_to.parent.id if reply_to else None,
            media_ids=media_ids or None,
            sensitive=post.sensitive or any(item.sensitive for item in post.media) or None,
            spoiler_text=post.content_warning or None,
            visibility=post.visibility.value,
            language=post.language,
            idempotency_key=key,
        )
        return TargetRef(id=str(status["id"]), url=str(status.get("url") or ""))

    async def edit(self, ref: TargetRef, post: Post) -> TargetRef:
        """Edit in place, keeping the attachments the copy already has."""
        current = await self._call(self.client.status, ref.id)
        media_ids = [str(m["id"]) for m in current.get("media_attachments") or []]
        status = await self._call(
            self.client.status_update,
            ref.id,
            post_to_status_text(post),
            spoiler_text=post.content_warning or None,
            sensitive=post.sensitive or None,
            media_ids=media_ids or None,
        )
        return TargetRef(id=str(status["id"]), url=str(status.get("url") or ref.url))

    async def delete(self, ref: TargetRef) -> None:
        try:
            await self._call(self.client.status_delete, ref.id)
        except PermanentError as error:
            if "not found" not in str(error):
                raise

    async def _upload(self, item: Media) -> str:
        assert item.data is not None
        attachment = await self._call(
            self.client.media_post,
            io.BytesIO(item.data),
            mime_type=item.mime,
            description=item.alt or None,
            synchronous=True,
        )
        return str(attachment["id"])

    async def _call(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a Mastodon.py call in a thread and turn its errors into ones the worker understands."""
        try:
            return await asyncio.to_thread(function, *args, **kwargs)
        except MastodonRatelimitError as error:
            reset = self.client.ratelimit_reset or 0
            raise RateLimited(f"{self.name}: rate limited by the server", float(reset)) from error
        except MastodonUnauthorizedError as error:
            raise PermanentError(f"{self.name}: the access token was refused") from error
        except MastodonServerError as error:
            raise TemporaryError(f"{self.name}: server error {error.args[1:3]}") from error
        except MastodonNotFoundError as error:
            raise PermanentError(f"{self.name}: not found: {error.args[-1]}") from error
        except MastodonAPIError as error:
            raise PermanentError(f"{self.name}: refused: {error.args[-1]}") from error
        except MastodonNetworkError as error:
            raise TemporaryError(f"{self.name}: network error: {type(error).__name__}") from error
        except MastodonError as error:
            raise TemporaryError(f"{self.name}: {type(error).__name__}") from error
