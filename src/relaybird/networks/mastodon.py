"""Mastodon: the account's own statuses from the streaming API, and posting through the REST API.

Both directions speak the REST API's JSON with aiohttp, on the daemon's event loop. Mastodon.py was
the outbound client at first; it is synchronous (a thread hop per call), turns every answer into
typed objects field by field, and costs ~18 MB to import: together that was the largest share of the
relay's CPU per copy. The handful of calls a relay makes (verify the token, read the instance, create,
read, edit and delete a status, upload media) need none of that: the converter wants the raw JSON.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from relaybird import richtext
from relaybird.config import MastodonAccount
from relaybird.media import MediaFetcher, MediaPolicy
from relaybird.model import Event, EventKind, LinkCard, Media, Post, Span, SpanKind, TargetRef
from relaybird.networks.base import (
    Capabilities,
    DeliveryError,
    EventSink,
    MentionSink,
    PermanentError,
    RateLimited,
    ReplyTarget,
    TemporaryError,
)
from relaybird.networks.mastodon_format import post_to_status_text, status_to_post
from relaybird.ratelimit import DEFAULT_HOLD_SECONDS, ServerBudget, retry_after_seconds
from relaybird.richtext import (
    PayloadError,
    as_dict,
    as_dicts,
    as_id,
    as_int,
    as_text,
    parse_json,
    required_id,
)

log = logging.getLogger(__name__)

HEARTBEAT_TIMEOUT_SECONDS = 90.0
MAX_RECONNECT_SECONDS = 300.0
CATCH_UP_PAGE = 40
#: Mastodon fetches a link's preview card in a background job after the status is created, so the
#: status streamed at creation usually has none yet: a new status with a link is read again for up
#: to this long to carry its card (a Bluesky copy cannot get one later: it cannot be edited).
CARD_WAIT_SECONDS = 3.0
#: Only statuses this recent are waited for; one read in a catch-up has had its card fetched.
CARD_WAIT_MAX_AGE_SECONDS = 60.0
#: A create, edit or upload that takes longer than this is given up and retried (same key).
REQUEST_TIMEOUT_SECONDS = 30.0
#: How long an uploaded image may stay in processing before the upload counts as failed.
MEDIA_PROCESSING_SECONDS = 60.0


def id_order(status_id: str) -> tuple[int, str]:
    """Mastodon ids are snowflakes: numeric strings that sort by length, then lexically."""
    return (len(status_id), status_id)


#: An event bigger than this is dropped unread: no status comes near it.
MAX_SSE_EVENT_BYTES = 8 * 1024 * 1024
_LINE_END = re.compile(rb"\r\n|\r|\n")


@dataclass(frozen=True)
class SseMessage:
    """One server-sent event; `oversized` when it went over the size limit and was dropped."""

    event: str
    data: str
    oversized: bool = False


class _SseLines:
    """Splits a byte stream into lines (CRLF, LF or CR), whatever the chunking.

    A line longer than the limit is not kept: its bytes are dropped as they come and the line is
    reported as `None`, so that one huge event costs no more memory than the limit.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.buffer = bytearray()
        self.dropping = False

    def feed(self, chunk: bytes) -> list[bytes | None]:
        self.buffer += chunk
        lines: list[bytes | None] = []
        start = 0
        while (found := _LINE_END.search(self.buffer, start)) is not None:
            if found.group() == b"\r" and found.end() == len(self.buffer):
                break  # maybe the first half of a CRLF split between chunks
            lines.append(None if self.dropping else bytes(self.buffer[start : found.start()]))
            self.dropping = False
            start = found.end()
        del self.buffer[:start]
        if len(self.buffer) > self.limit:
            self.buffer.clear()
            self.dropping = True
        return lines


@dataclass
class _SseEvent:
    limit: int
    event: str = "message"
    data: list[str] = field(default_factory=list)
    size: int = 0
    oversized: bool = False

    def add(self, line: bytes | None) -> None:
        if line is None:
            self.oversized = True
            return
        text = line.decode("utf-8", errors="replace")
        if text.startswith(":"):
            return
        name, _, value = text.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self.event = value
        elif name == "data" and not self.oversized:
            self.size += len(line)
            self.data.append(value)
            if self.size > self.limit:
                self.data, self.oversized = [], True

    def message(self) -> SseMessage | None:
        if self.oversized:
            return SseMessage(self.event, "", oversized=True)
        return SseMessage(self.event, "\n".join(self.data)) if self.data else None


async def read_sse(
    chunks: AsyncIterable[bytes], max_event_bytes: int = MAX_SSE_EVENT_BYTES
) -> AsyncIterator[SseMessage]:
    """Server-sent events: `event:`/`data:` fields up to a blank line; `:` lines are heartbeats.

    Reads any chunking of the stream (a line may span chunks); invalid UTF-8 becomes U+FFFD. An
    event over `max_event_bytes` is yielded as `oversized` without its data, and never held in
    memory, so that the caller can log it and move on. An event the stream ends in the middle of
    is not dispatched (as the SSE standard says). Never raises for what the server sends.
    """
    lines = _SseLines(max_event_bytes)
    event = _SseEvent(max_event_bytes)
    async for chunk in chunks:
        for line in lines.feed(chunk):
            if line == b"":
                found = event.message()
                if found is not None:
                    yield found
                event = _SseEvent(max_event_bytes)
            else:
                event.add(line)


def _short(text: str, limit: int = 160) -> str:
    """One line of an error for logs and the dead-letter reason, never a whole response body."""
    line = text.splitlines()[0] if text else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _status_ref(status: Any, fallback_url: str = "") -> TargetRef:
    """Where a created or edited status landed; a 200 without a status in it is retried."""
    status_id = as_id(status.get("id")) if isinstance(status, dict) else None
    if status_id is None:
        raise TemporaryError("Mastodon answered without a status id")
    return TargetRef(id=status_id, url=as_text(status.get("url")) or fallback_url)


class MastodonNetwork:
    network = "mastodon"

    def __init__(
        self, account: MastodonAccount, *, heartbeat_timeout: float = HEARTBEAT_TIMEOUT_SECONDS
    ) -> None:
        self.name = account.name
        self.base_url = str(account.base_url).rstrip("/")
        self._token = account.access_token.get_secret_value()
        self.heartbeat_timeout = heartbeat_timeout
        self.capabilities = self._capabilities({})
        self.me: dict[str, Any] = {}
        self.streaming_base = self.base_url
        # `media_hosts` (a list of host entries, see MediaPolicy) once the config has the key.
        self.media_policy = MediaPolicy.of(
            self.base_url, extra_hosts=getattr(account, "media_hosts", None) or ()
        )
        self._http: aiohttp.ClientSession | None = None
        self._media: MediaFetcher | None = None
        self._budget: ServerBudget | None = None

    # lifecycle

    @staticmethod
    def _capabilities(configuration: dict[str, Any]) -> Capabilities:
        statuses = as_dict(configuration.get("statuses"))
        media = as_dict(configuration.get("media_attachments"))
        url_weight = _positive(statuses.get("characters_reserved_per_url"), 23)

        def measure(text: str, spans: list[Span]) -> int:
            return richtext.count_mastodon(text, spans, url_weight=url_weight)

        return Capabilities(
            max_text=_positive(statuses.get("max_characters"), 500),
            measure=measure,
            max_media=_positive(statuses.get("max_media_attachments"), 4),
            max_image_bytes=_positive(media.get("image_size_limit"), 16 * 1024 * 1024),
            content_warning_field=True,
            warning_counts=True,
        )

    async def open(self) -> None:
        self._http = aiohttp.ClientSession(headers={"Authorization": f"Bearer {self._token}"})
        me = await self._get_json("/api/v1/accounts/verify_credentials")
        if not isinstance(me, dict) or as_id(me.get("id")) is None:
            raise TemporaryError(f"{self.name}: verify_credentials answered without an account")
        self.me = dict(me)
        instance = as_dict(await self._get_json("/api/v2/instance"))
        configuration = as_dict(instance.get("configuration"))
        self.capabilities = self._capabilities(configuration)
        streaming = as_text(as_dict(configuration.get("urls")).get("streaming"))
        if streaming:
            self.streaming_base = (
                streaming.rstrip("/").replace("wss://", "https://").replace("ws://", "http://")
            )
        self.media_policy = self.media_policy.with_hosts(*self._media_hosts(instance))
        # Media hosts (a CDN) get no access token: a session of their own, without it.
        self._media = MediaFetcher(aiohttp.ClientSession(), self.media_policy, self.name)

    def _media_hosts(self, instance: dict[str, Any]) -> list[str]:
        """Where this server keeps its media: the hosts of its own thumbnail and our avatar.

        A server with a CDN (S3_ALIAS_HOST) serves every attachment from that host; the instance
        thumbnail and the account's own avatar and header live there too, which is how it is
        learnt without trusting any URL a status carries.
        """
        thumbnail = as_dict(instance.get("thumbnail"))
        urls = [as_text(thumbnail.get("url"))]
        urls += [as_text(self.me.get(key)) for key in ("avatar", "avatar_static", "header")]
        return [url for url in urls if url]

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
        if self._media is not None:
            await self._media.session.close()

    @property
    def http(self) -> aiohttp.ClientSession:
        if self._http is None:
            raise RuntimeError("the Mastodon adapter was not opened")
        return self._http

    @property
    def media(self) -> MediaFetcher:
        if self._media is None:
            raise RuntimeError("the Mastodon adapter was not opened")
        return self._media

    async def _get_json(self, path: str, params: dict[str, str] | None = None) -> Any:
        """GET an API path; a refusal or an answer that is not JSON is an error the caller knows."""
        async with self.http.get(self.base_url + path, params=params) as response:
            if response.status in (401, 403):
                raise PermanentError(
                    f"{self.name}: the access token was refused ({response.status})"
                )
            if response.status == 429:
                raise RateLimited(f"{self.name}: rate limited", retry_at_of(response.headers))
            if response.status >= 400:
                raise TemporaryError(f"{self.name}: GET {path} answered {response.status}")
            try:
                return parse_json(await response.read())
            except PayloadError as error:
                raise TemporaryError(f"{self.name}: GET {path} answered {error}") from None

    def rate_budget(self) -> ServerBudget | None:
        """What the server's X-RateLimit-* headers said in the last answer that had them.

        Nothing is known before the first such answer: the limiter then goes by its own rates.
        """
        return self._budget

    def _note_budget(self, headers: Mapping[str, str]) -> None:
        remaining = _header_int(headers.get("X-RateLimit-Remaining"))
        reset = _parse_reset(headers.get("X-RateLimit-Reset", ""))
        if remaining is None or reset is None:
            return
        limit = _header_int(headers.get("X-RateLimit-Limit"))
        self._budget = ServerBudget(
            remaining=remaining, reset_at=reset, limit=limit if limit and limit > 0 else None
        )

    # inbound

    async def listen(self, cursor: str | None, sink: EventSink) -> None:
        """Stream until cancelled; a refusal by the sink (the store) is a reconnect like any
        other temporary failure, and the catch-up brings the refused status again."""
        failures = 0
        held_until = 0.0
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
                if isinstance(error, RateLimited):
                    held_until = error.retry_at
            cursor = self._cursor or cursor
            delay = min(MAX_RECONNECT_SECONDS, 2.0 ** min(failures, 10)) * random.uniform(0.5, 1.0)
            delay = max(delay, min(MAX_RECONNECT_SECONDS, held_until - time.time()))
            held_until = 0.0
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
            async for message in read_sse(response.content.iter_any()):
                await self._on_stream_message(message, sink)

    async def _set_baseline(self, sink: EventSink) -> None:
        """On the very first start nothing from the past is mirrored: remember where now is."""
        latest = await self._get_json(f"/api/v1/accounts/{self.me['id']}/statuses", {"limit": "1"})
        if not isinstance(latest, list):
            raise TemporaryError(f"{self.name}: the statuses of the account are not a list")
        ids = [as_id(status.get("id")) for status in as_dicts(latest)]
        self._cursor = next((found for found in ids if found), "0")
        sink.save_cursor(self.name, self._cursor)
        log.info("%s: first start; mirroring posts from now on", self.name)

    async def _catch_up(self, sink: EventSink) -> None:
        """Mirror what was published while the daemon was down, oldest first.

        A status without a readable id cannot be placed nor skipped past by id; the next one is.
        A page of nothing but such statuses ends the catch-up (the stream carries on).
        """
        while True:
            assert self._cursor is not None
            page = await self._get_json(
                f"/api/v1/accounts/{self.me['id']}/statuses",
                {"min_id": self._cursor, "limit": str(CATCH_UP_PAGE)},
            )
            if not isinstance(page, list):
                raise TemporaryError(f"{self.name}: catch-up answered something not a list")
            readable = [(as_id(status.get("id")), status) for status in as_dicts(page)]
            placed = [(found, status) for found, status in readable if found is not None]
            if not placed:
                return
            for _, status in sorted(placed, key=lambda item: id_order(item[0])):
                await self._emit_safely(status, sink)
            if len(page) < CATCH_UP_PAGE:
                return

    async def _on_stream_message(self, message: SseMessage, sink: EventSink) -> None:
        """One stream event; a malformed one is logged and skipped, and the stream goes on."""
        if message.oversized:
            log.warning("%s: oversized %s event on the stream skipped", self.name, message.event)
            return
        try:
            await self._handle_stream_message(message, sink)
        except PayloadError as error:
            log.warning("%s: %s event skipped: %s", self.name, message.event, error)

    async def _handle_stream_message(self, message: SseMessage, sink: EventSink) -> None:
        if message.event == "delete":
            deleted = required_id(message.data.strip().strip('"'), "deleted status id")
            if any(char.isspace() for char in deleted):
                raise PayloadError("deleted status id is not an id")
            post = Post(id=deleted, text="")
            await sink.accept(Event(kind=EventKind.DELETE, account=self.name, post=post))
            return
        if message.event not in ("update", "status.update"):
            return
        status = parse_json(message.data)
        if not isinstance(status, dict):
            raise PayloadError("the status is not a JSON object")
        if as_id(as_dict(status.get("account")).get("id")) != str(self.me["id"]):
            return
        await self._emit(status, sink, edit=message.event == "status.update")

    async def _emit_safely(self, status: dict[str, Any], sink: EventSink) -> None:
        try:
            await self._emit(status, sink)
        except PayloadError as error:
            log.warning("%s: status skipped: %s", self.name, error)

    async def _emit(self, status: dict[str, Any], sink: EventSink, edit: bool = False) -> None:
        """Hand one status on; the cursor passes it only once the sink has taken it.

        If the sink refuses (the store cannot write), the cursor goes back to where it was, so
        the catch-up after reconnecting reads the status again instead of starting after it.
        """
        status_id = required_id(status.get("id"), "status id")
        previous = self._cursor
        if not edit and (self._cursor is None or id_order(status_id) > id_order(self._cursor)):
            self._cursor = status_id
        try:
            await self._hand_on(status, status_id, sink, edit)
        except BaseException:
            self._cursor = previous
            raise

    async def _hand_on(
        self, status: dict[str, Any], status_id: str, sink: EventSink, edit: bool
    ) -> None:
        """One that cannot be read moves the cursor past it all the same."""
        try:
            post = status_to_post(status)
        except PayloadError as error:
            log.warning(
                "%s: status %s could not be read (%s); skipped", self.name, status_id, error
            )
            if self._cursor is not None:
                sink.save_cursor(self.name, self._cursor)
            return
        post = replace(post, media=[await self.media.fetch(item) for item in post.media])
        card = status.get("card") if edit else await self._card_of_new(status, post)
        post.card = await self._card(card)
        if edit:
            version = as_text(status.get("edited_at"))
            await sink.accept(Event(EventKind.EDIT, self.name, post, version=version))
            return
        kind = EventKind.REPLY if post.reply_to else EventKind.POST
        await sink.accept(Event(kind=kind, account=self.name, post=post, cursor=self._cursor))

    async def _card_of_new(self, status: dict[str, Any], post: Post) -> Any:
        """The status's card, read again while the server may still be fetching it."""
        card = status.get("card")
        if card or post.media or not any(span.kind is SpanKind.LINK for span in post.spans):
            return card
        if not _recent(post.created_at, CARD_WAIT_MAX_AGE_SECONDS):
            return card
        deadline = time.monotonic() + CARD_WAIT_SECONDS
        pause = 0.25
        while time.monotonic() + pause <= deadline:
            await asyncio.sleep(pause)
            pause = min(pause * 2, 1.0)
            try:
                fresh = await self._get_json(f"/api/v1/statuses/{post.id}")
            except DeliveryError as error:
                log.info("%s: no card for %s (%s)", self.name, post.id, error)
                return None
            card = as_dict(fresh).get("card")
            if card:
                return card
        return None

    async def _card(self, card: Any) -> LinkCard | None:
        """Mastodon's link preview, with its image, for targets that show cards."""
        card = as_dict(card)
        url = richtext.safe_url(as_text(card.get("url")))
        if not url:
            return None
        thumb = None
        if as_text(card.get("image")):
            fetched = await self.media.fetch(Media(mime="image/jpeg", url=card["image"]))
            thumb = fetched if fetched.data is not None else None
        return LinkCard(
            url=url,
            title=richtext.clean_text(as_text(card.get("title"))),
            description=richtext.clean_text(as_text(card.get("description"))),
            thumb=thumb,
        )

    # other people's posts

    def mention_names(self) -> list[str]:
        """`acct` as the server gives it, and `user@host` as remote servers write it."""
        host = _hostname(as_text(self.me.get("url")) or self.base_url)
        username = as_text(self.me.get("username"))
        acct = as_text(self.me.get("acct"))
        return [name for name in {acct, f"{username}@{host}" if username else ""} if name]

    async def reply_target(self, post_id: str) -> ReplyTarget:
        ref = TargetRef(id=post_id)
        return ReplyTarget(parent=ref, root=ref)

    async def fetch_post(self, post_id: str) -> Post | None:
        try:
            post = status_to_post(await self._get_json(f"/api/v1/statuses/{post_id}"))
            return replace(post, media=[await self.media.fetch(item) for item in post.media])
        except (DeliveryError, PayloadError) as error:
            log.warning("%s: cannot read %s (%s)", self.name, post_id, error)
            return None

    async def listen_mentions(self, cursor: str | None, sink: MentionSink) -> None:
        from relaybird.networks.mastodon_mentions import MastodonMentions

        await MastodonMentions(self).run(cursor, sink)

    # outbound

    def new_key(self) -> str:
        return uuid.uuid4().hex

    async def publish(
        self, post: Post, reply_to: ReplyTarget | None, key: str, retrying: bool
    ) -> TargetRef:
        """Create the status with the delivery's Idempotency-Key: a retry after an answer that
        never came finds the status the first try made instead of making a second one."""
        post = richtext.clean_post(post)
        media_ids = [await self._upload(item) for item in post.media]
        body: dict[str, Any] = {
            "status": post_to_status_text(post),
            "visibility": post.visibility.value,
        }
        if reply_to:
            body["in_reply_to_id"] = reply_to.parent.id
        if media_ids:
            body["media_ids"] = media_ids
        if post.sensitive or any(item.sensitive for item in post.media):
            body["sensitive"] = True
        if post.content_warning:
            body["spoiler_text"] = post.content_warning
        if post.language:
            body["language"] = post.language
        status = await self._send("POST", "/api/v1/statuses", json=body, key=key)
        return _status_ref(status)

    async def edit(self, ref: TargetRef, post: Post) -> TargetRef:
        """Edit in place, keeping the attachments the copy already has."""
        post = richtext.clean_post(post)
        current = as_dict(await self._send("GET", f"/api/v1/statuses/{ref.id}"))
        media_ids = [
            found
            for found in (as_id(m.get("id")) for m in as_dicts(current.get("media_attachments")))
            if found
        ]
        body: dict[str, Any] = {"status": post_to_status_text(post)}
        if post.content_warning:
            body["spoiler_text"] = post.content_warning
        if post.sensitive:
            body["sensitive"] = True
        if media_ids:
            body["media_ids"] = media_ids
        status = await self._send("PUT", f"/api/v1/statuses/{ref.id}", json=body)
        return _status_ref(status, ref.url)

    async def delete(self, ref: TargetRef) -> None:
        try:
            await self._send("DELETE", f"/api/v1/statuses/{ref.id}")
        except PermanentError as error:
            if "not found" not in str(error):
                raise

    async def _upload(self, item: Media) -> str:
        """Upload, then wait for the server to finish processing: a status may only attach
        media that are ready (202 and 206 mean "still processing")."""
        assert item.data is not None
        form = aiohttp.FormData()
        form.add_field("file", item.data, content_type=item.mime, filename=_file_name(item.mime))
        if item.alt:
            form.add_field("description", item.alt)
        attachment = as_dict(await self._send("POST", "/api/v2/media", data=form))
        media_id = as_id(attachment.get("id"))
        if media_id is None:
            raise TemporaryError(f"{self.name}: the media upload answered without an id")
        deadline = time.monotonic() + MEDIA_PROCESSING_SECONDS
        delay = 0.05
        while not as_text(attachment.get("url")):
            if time.monotonic() > deadline:
                raise TemporaryError(f"{self.name}: media {media_id} still processing; given up")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)
            attachment = as_dict(await self._send("GET", f"/api/v1/media/{media_id}"))
        return media_id

    async def _send(
        self,
        method: str,
        path: str,
        *,
        json: dict[str, Any] | None = None,
        data: aiohttp.FormData | None = None,
        key: str | None = None,
    ) -> Any:
        """One REST call, its answer as JSON, and its failures as errors the worker understands.

        An answer that is not what the API promises (HTML on a 200, a truncated body, JSON of
        another shape) is temporary: a proxy or an overloaded server, and every create carries
        an idempotency key, so trying again cannot double a post.
        """
        headers = {"Idempotency-Key": key} if key else None
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_SECONDS)
        try:
            async with self.http.request(
                method, self.base_url + path, json=json, data=data, headers=headers, timeout=timeout
            ) as response:
                self._note_budget(response.headers)
                body = await response.read()
                status, response_headers = response.status, response.headers
        except (aiohttp.ClientError, TimeoutError) as error:
            raise TemporaryError(f"{self.name}: network error: {type(error).__name__}") from error
        if status >= 400:
            raise self._refusal(status, response_headers, body)
        try:
            return parse_json(body)
        except PayloadError:
            raise TemporaryError(f"{self.name}: the server's answer is not JSON") from None

    def _refusal(self, status: int, headers: Mapping[str, str], body: bytes) -> Exception:
        """The error for a 4xx/5xx answer, with the server's own `error` text when it has one."""
        if status == 429:
            return RateLimited(f"{self.name}: rate limited by the server", retry_at_of(headers))
        if status == 401:
            return PermanentError(f"{self.name}: the access token was refused")
        if status >= 500:
            return TemporaryError(f"{self.name}: server error ({status})")
        reason = _error_text(body) or f"HTTP {status}"
        if status == 404:
            return PermanentError(f"{self.name}: not found: {_short(reason)}")
        return PermanentError(f"{self.name}: refused: {_short(reason)}")


def _error_text(body: bytes) -> str:
    """Mastodon's `{"error": "..."}`; empty when the body is something else (a proxy's page)."""
    try:
        found = parse_json(body)
    except PayloadError:
        return ""
    return as_text(found.get("error")) if isinstance(found, dict) else ""


def _file_name(mime: str) -> str:
    """A file name whose extension matches the type: servers look at both."""
    extension = mime.rpartition("/")[2].split("+")[0] or "bin"
    return f"upload.{'jpg' if extension == 'jpeg' else extension}"


def _header_int(value: str | None) -> int | None:
    try:
        return int(float(value)) if value else None
    except ValueError:
        return None


def retry_at_of(headers: Mapping[str, str], now: float | None = None) -> float:
    """When a 429 lets us back in: X-RateLimit-Reset (an ISO time, or Unix seconds as some
    servers send), else Retry-After, else a minute from now."""
    now = time.time() if now is None else now
    reset = _parse_reset(headers.get("X-RateLimit-Reset", ""))
    if reset is not None and reset > now:
        return reset
    seconds = retry_after_seconds(headers.get("Retry-After"), now)
    return now + (DEFAULT_HOLD_SECONDS if seconds is None else seconds)


def _parse_reset(value: str) -> float | None:
    value = value.strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _positive(value: Any, default: int) -> int:
    """A limit from the instance's configuration, or the default when it is not a positive int."""
    found = as_int(value)
    return found if found is not None and found > 0 else default


def _hostname(url: str) -> str:
    try:
        return urlsplit(url).hostname or ""
    except ValueError:
        return ""


def _recent(created_at: str, seconds: float) -> bool:
    """Whether an ISO time is within `seconds` of now (a time that cannot be read is not)."""
    try:
        moment = datetime.fromisoformat(created_at.replace("Z", "+00:00"))
    except ValueError:
        return False
    if moment.tzinfo is None:
        return False
    return abs(datetime.now(UTC).timestamp() - moment.timestamp()) <= seconds
