"""A local server that speaks Mastodon's REST and streaming API, for `relaybird demo` and tests.

The unmodified Mastodon.py client works against it by base URL. Requests pass one middleware that
logs them, gives registered hooks the first word, then the switchable `faults` (429s, 5xx, delays,
resets, broken JSON, answers held back), checks the access token, applies the per-token rate limit
and turns refusals into Mastodon's JSON errors.
The rules about statuses and media live in `mastodon_store`, the JSON shapes in
`mastodon_entities`, the markup in `mastodon_text` and the streams in `mastodon_streaming`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from typing import Any, NamedTuple, TypeVar
from urllib.parse import urlencode

from aiohttp import web
from PIL import Image

from relaybird.sandbox.faults import ErrorShape, Faults, Target, ceil_seconds
from relaybird.sandbox.mastodon_entities import STATIC_IMAGES, Entities, Json
from relaybird.sandbox.mastodon_store import (
    ApiError,
    Limits,
    SandboxAccount,
    SandboxStore,
    Site,
    StatusInput,
    StoredNotification,
    StoredStatus,
    paginate,
)
from relaybird.sandbox.mastodon_streaming import StreamHub, StreamingEndpoints

__all__ = ["LoggedRequest", "MastodonSandbox", "RateLimiter", "RequestHook", "SandboxAccount"]

log = logging.getLogger(__name__)

RequestHook = Callable[[web.Request], Awaitable[web.StreamResponse | None]]
"""Runs before a request is handled; returning a response answers the request with it."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
T = TypeVar("T")
_ACCOUNT_KEY = web.RequestKey("account", object)
_FALSE_VALUES = {"0", "f", "false", "off"}
_STREAMING = "/api/v1/streaming"
_FAULT_MESSAGES = {
    429: "Too many requests",
    500: "We're sorry, but something went wrong on our end.",
    503: "The page could not be served due to a temporary server failure.",
}


class LoggedRequest(NamedTuple):
    method: str
    path: str
    status: int


class RateState(NamedTuple):
    allowed: bool
    limit: int
    remaining: int
    reset: datetime


class RateLimiter:
    """Fixed windows aligned on the period, as Rack::Attack counts them for Mastodon."""

    def __init__(self, limit: int, period_seconds: float) -> None:
        self.limit = limit
        self.period = period_seconds
        self._counts: dict[tuple[str, int], int] = {}

    def hit(self, key: str) -> RateState:
        now = time.time()
        window = math.floor(now / self.period)
        count = self._counts.get((key, window), 0) + 1
        self._counts = {k: v for k, v in self._counts.items() if k[1] == window}
        self._counts[(key, window)] = count
        reset = datetime.fromtimestamp((window + 1) * self.period, UTC)
        return RateState(count <= self.limit, self.limit, max(0, self.limit - count), reset)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _reset_stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _is_stream(request: web.Request) -> bool:
    """Stream connections answer to the stream faults, not to the request faults."""
    path = request.path.rstrip("/")
    return path.startswith(_STREAMING) and path != _STREAMING + "/health"


def _int(value: Any) -> str | None:
    """An id or cursor as a decimal string; anything else is ignored, like Rails' casting."""
    text = str(value).strip() if value is not None else ""
    return text if text.isdigit() else None


def _flag(values: Mapping[str, Any], key: str) -> bool | None:
    if key not in values:
        return None
    value = values[key]
    if isinstance(value, bool):
        return value
    text = "" if value is None else str(value).strip().lower()
    return None if text == "" else text not in _FALSE_VALUES


def _text(values: Mapping[str, Any], key: str) -> str | None:
    value = values.get(key)
    if value is None or isinstance(value, (list, dict)):
        return None
    return str(value)


def _strings(values: Mapping[str, Any], key: str) -> list[str] | None:
    value = values.get(key)
    if value is None:
        return None
    if isinstance(value, list):
        return [str(item) for item in value]
    return [str(value)]


def _limit(values: Mapping[str, Any], default: int, maximum: int) -> int:
    given = _int(values.get("limit"))
    return default if given is None else max(1, min(int(given), maximum))


def _merge(values: dict[str, Any], pairs: Any) -> None:
    """Fold form or query pairs into one mapping; `key[]` collects a list, as Rails does."""
    for key, value in pairs.items():
        if key.endswith("[]"):
            existing = values.get(key[:-2])
            bucket = existing if isinstance(existing, list) else []
            bucket.append(value)
            values[key[:-2]] = bucket
        else:
            values[key] = value


async def read_params(request: web.Request) -> dict[str, Any]:
    """Query string and body (JSON, urlencoded or multipart) merged, as Rails merges `params`."""
    values: dict[str, Any] = {}
    _merge(values, request.query)
    if not request.body_exists:
        return values
    if request.content_type == "application/json":
        try:
            body = await request.json()
        except ValueError as error:
            raise ApiError(400, "Error occurred while parsing request parameters") from error
        if isinstance(body, dict):
            values.update(body)
    elif request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        _merge(values, await request.post())
    return values


def _status_input(values: Mapping[str, Any]) -> StatusInput:
    attributes = values.get("media_attributes")
    return StatusInput(
        text=_text(values, "status") or "",
        spoiler_text=_text(values, "spoiler_text") or "",
        sensitive=_flag(values, "sensitive"),
        visibility=_text(values, "visibility") or None,
        language=_text(values, "language") or None,
        in_reply_to_id=_text(values, "in_reply_to_id") or None,
        media_ids=_strings(values, "media_ids"),
        media_attributes=[a for a in attributes if isinstance(a, dict)]
        if isinstance(attributes, list)
        else [],
    )


def _placeholder_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (1, 1), (99, 100, 255)).save(buffer, format="PNG")
    return buffer.getvalue()


class MastodonSandbox:
    """A Mastodon server in a box: accounts, statuses, media, notifications and streams."""

    def __init__(
        self,
        *,
        domain: str = "mastodon.sandbox",
        max_characters: int = 500,
        heartbeat_seconds: float = 10.0,
        max_media_attachments: int = 4,
        image_size_limit: int = 16 * 1024 * 1024,
        video_size_limit: int = 99 * 1024 * 1024,
        description_limit: int = 1500,
        rate_limit: int = 300,
        rate_limit_period: float = 300.0,
        media_polls_before_ready: int = 0,
        defer_image_processing: bool = True,
        title: str = "Mastodon sandbox",
    ) -> None:
        """Configure the server; nothing listens until `start`.

        Uploads answer 202 and become ready on the first `GET /api/v1/media/:id` (after
        `media_polls_before_ready` answers of 206), which exercises a client's polling. With
        `defer_image_processing=False` images are ready at once (200), as a real server does.
        """
        self.site = Site(domain)
        self.limits = Limits(
            max_characters=max_characters,
            max_media_attachments=max_media_attachments,
            image_size_limit=image_size_limit,
            video_size_limit=video_size_limit,
            description_limit=description_limit,
        )
        self.store = SandboxStore(
            self.site,
            self.limits,
            self,
            media_polls_before_ready=media_polls_before_ready,
            defer_image_processing=defer_image_processing,
        )
        self.entities = Entities(self.store, title)
        self._card_images: dict[str, bytes] = {}
        self._card_paths: dict[str, bytes] = {}
        self.hub = StreamHub()
        self.rate_limiter = RateLimiter(rate_limit, rate_limit_period)
        self.heartbeat_seconds = heartbeat_seconds
        self.hooks: list[RequestHook] = []
        self.faults = Faults()
        self._fault_shape = ErrorShape(self._fault_error, b'{"id": "1')
        self.requests_log: list[LoggedRequest] = []
        self._runner: web.AppRunner | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._placeholder = _placeholder_png()

    # lifecycle

    @property
    def base_url(self) -> str:
        if not self.site.base_url:
            raise RuntimeError("the Mastodon sandbox has not been started yet")
        return self.site.base_url

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        if self._runner is not None:
            return self.base_url
        self.hub.reopen()
        runner = web.AppRunner(self._build_app(), shutdown_timeout=2.0, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        self._runner = runner
        self._loop = asyncio.get_running_loop()
        self.faults.bind(self._loop)
        bound_port = runner.addresses[0][1]
        self.site.base_url = f"http://{host}:{bound_port}"
        log.info("Mastodon sandbox for %s listening on %s", self.site.domain, self.base_url)
        return self.base_url

    async def stop(self) -> None:
        """Close every stream, then the listener; safe to call twice.

        The data stays: `start` again (on the same port to keep URLs) brings the server back.
        """
        self.hub.close()
        self.faults.release()
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> MastodonSandbox:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # helpers for tests and the demo

    def _on_loop(self, work: Callable[[], T]) -> T:
        """Run `work` on the server's loop when called from another thread.

        Tests and the demo often drive the sandbox from a thread other than the one serving it;
        running their reads and writes on the loop keeps them from racing the handlers.
        """
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
        return done.result(timeout=30)

    def create_account(self, username: str, display_name: str = "") -> SandboxAccount:
        return self._on_loop(lambda: self.store.create_account(username, display_name))

    def account(self, username: str) -> SandboxAccount:
        found = self._on_loop(lambda: self.store.local_account(username))
        if found is None:
            raise KeyError(f"no sandbox account named {username!r}")
        return found

    def follow(self, follower: str | SandboxAccount, followed: str | SandboxAccount) -> None:
        """Make `follower` see `followed`'s statuses in its home timeline and user stream."""
        self._on_loop(
            lambda: self.store.follow(self._resolve(follower).id, self._resolve(followed).id)
        )

    def _resolve(self, who: str | SandboxAccount) -> SandboxAccount:
        return who if isinstance(who, SandboxAccount) else self.account(who)

    def register_card(
        self,
        url: str,
        title: str,
        description: str = "",
        image: bytes | None = None,
        fetched_after: float = 0.0,
    ) -> None:
        """What the server's link fetcher found at `url`; statuses linking to it show this card.

        Mastodon fetches a link's card in a background job after the status is created, so the
        status streamed at creation has none; `fetched_after` seconds later it has it.
        """
        self.entities.card_delays[url] = fetched_after
        image_url = None
        if image is not None:
            self._card_images[url] = image
            image_url = self.store.site.url(
                f"/system/cache/preview_cards/{len(self._card_images)}.png"
            )
            self._card_paths[image_url.rsplit("/", 1)[-1]] = image
        host = url.split("/")[2] if "//" in url else ""
        self.entities.cards[url] = {
            "url": url,
            "title": title,
            "description": description,
            "type": "link",
            "author_name": host,
            "author_url": f"https://{host}/",
            "authors": [],
            "provider_name": host,
            "provider_url": f"https://{host}" if host else "",
            "html": "",
            "width": 400 if image is not None else 0,
            "height": 300 if image is not None else 0,
            "image": image_url,
            "embed_url": url,
            "blurhash": None,
        }

    async def _card_image(self, request: web.Request) -> web.Response:
        found = self._card_paths.get(request.match_info["name"])
        if found is None:
            return _error(404, "Record not found")
        return web.Response(body=found, content_type="image/png")

    def statuses_of(self, username: str) -> list[Json]:
        return self._on_loop(lambda: self._statuses_of(username))

    def _statuses_of(self, username: str) -> list[Json]:
        account = self.account(username)
        statuses = sorted(self.store.live_statuses_of(account.id), key=lambda s: int(s.id))
        return [self.entities.status(status, account) for status in statuses]

    def status(self, status_id: str) -> Json | None:
        return self._on_loop(lambda: self._status(status_id))

    def _status(self, status_id: str) -> Json | None:
        found = self.store.statuses.get(str(status_id))
        if found is None or found.deleted:
            return None
        return self.entities.status(found, self.store.accounts[found.account_id])

    def source_text(self, status_id: str) -> str:
        found = self.store.statuses.get(str(status_id))
        if found is None:
            raise KeyError(f"no status {status_id}")
        return found.text

    def media_bytes(self, media_id: str) -> bytes:
        found = self.store.media.get(str(media_id))
        if found is None:
            raise KeyError(f"no media {media_id}")
        return found.data

    def notifications_of(self, username: str) -> list[Json]:
        return self._on_loop(lambda: self._notifications_of(username))

    def _notifications_of(self, username: str) -> list[Json]:
        account = self.account(username)
        return [
            self.entities.notification(n, account) for n in self.store.notifications_of(account.id)
        ]

    def count_requests(self, method: str, path: str) -> int:
        return sum(1 for r in self.requests_log if r.method == method and r.path == path)

    # events from the store, pushed to the streams

    def status_created(self, status: StoredStatus) -> None:
        self._push_status("update", status)

    def status_edited(self, status: StoredStatus) -> None:
        self._push_status("status.update", status)

    def status_deleted(self, status: StoredStatus, audience: set[str]) -> None:
        self.hub.publish_user(audience, "delete", status.id)
        if status.visibility == "public" and status.reblog_of_id is None:
            self.hub.publish_public("delete", status.id)

    def notified(self, notification: StoredNotification) -> None:
        viewer = self.store.accounts[notification.account_id]
        payload = json.dumps(self.entities.notification(notification, viewer))
        self.hub.publish_notification(viewer.id, payload)

    def _push_status(self, event: str, status: StoredStatus) -> None:
        for account_id in self.store.audience(status):
            viewer = self.store.accounts[account_id]
            self.hub.publish_user(
                {account_id}, event, json.dumps(self.entities.status(status, viewer))
            )
        if status.visibility == "public" and status.reblog_of_id is None:
            self.hub.publish_public(event, json.dumps(self.entities.status(status, None)))

    # request pipeline

    def _build_app(self) -> web.Application:
        largest = max(self.limits.image_size_limit, self.limits.video_size_limit)
        app = web.Application(middlewares=[self._middleware], client_max_size=largest + 2**20)
        streams = StreamingEndpoints(
            self.hub, self._stream_account, self.heartbeat_seconds, self.faults
        )
        routes: list[tuple[str, str, Handler]] = [
            ("GET", "/api/v1/instance", self._instance_v1),
            ("GET", "/api/v2/instance", self._instance_v2),
            ("GET", "/api/v1/accounts/verify_credentials", self._verify_credentials),
            ("GET", "/api/v1/accounts/lookup", self._lookup),
            ("GET", "/api/v1/accounts/relationships", self._relationships),
            ("GET", "/api/v1/accounts/{id}", self._get_account),
            ("GET", "/api/v1/accounts/{id}/statuses", self._account_statuses),
            ("POST", "/api/v1/accounts/{id}/follow", self._follow),
            ("POST", "/api/v1/accounts/{id}/unfollow", self._unfollow),
            ("POST", "/api/v1/statuses", self._post_status),
            ("GET", "/api/v1/statuses/{id}", self._get_status),
            ("PUT", "/api/v1/statuses/{id}", self._edit_status),
            ("DELETE", "/api/v1/statuses/{id}", self._delete_status),
            ("GET", "/api/v1/statuses/{id}/source", self._status_source),
            ("GET", "/api/v1/statuses/{id}/context", self._status_context),
            ("GET", "/api/v1/statuses/{id}/history", self._status_history),
            ("POST", "/api/v1/statuses/{id}/reblog", self._reblog),
            ("POST", "/api/v1/statuses/{id}/unreblog", self._unreblog),
            ("GET", "/api/v1/timelines/home", self._home),
            ("POST", "/api/v2/media", self._upload_v2),
            ("POST", "/api/v1/media", self._upload_v1),
            ("GET", "/api/v1/media/{id}", self._get_media),
            ("PUT", "/api/v1/media/{id}", self._update_media),
            ("GET", "/api/v1/notifications", self._notifications),
            ("GET", "/api/v1/notifications/{id}", self._notification),
            ("GET", "/api/v1/streaming/health", streams.health),
            ("GET", "/api/v1/streaming", streams.root),
            ("GET", "/api/v1/streaming/{stream:.+}", streams.sse),
            ("GET", "/system/media_attachments/files/{id}/{style}/{name}", self._media_file),
        ]
        for method, path, handler in routes:
            app.router.add_route(method, path, handler)
            app.router.add_route(method, path + "/", handler)
        for path in STATIC_IMAGES:
            app.router.add_get(path, self._static_image)
        app.router.add_get("/system/cache/preview_cards/{name}", self._card_image)
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        status = 500
        try:
            response = await self._answer(request, handler)
            status = response.status
            return response
        finally:
            self.requests_log.append(LoggedRequest(request.method, request.path, status))

    async def _answer(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        for hook in list(self.hooks):
            answered = await hook(request)
            if answered is not None:
                return answered
        if _is_stream(request):
            return await self._guarded(request, handler)
        return await self.faults.serve(
            request,
            Target(f"{request.method} {request.path}", self._account_names(request)),
            lambda: self._authorized(request, handler),
            self._fault_shape,
        )

    def _account_names(self, request: web.Request) -> tuple[str, ...]:
        account = self.store.account_by_token(self._token(request) or "")
        return (account.username,) if account is not None else ()

    def _fault_error(self, status: int, retry_after: float) -> web.Response:
        """A fault's refusal as Mastodon words it; a 429 says when to come back, as Rack does."""
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = "Error"
        response = _error(status, _FAULT_MESSAGES.get(status, phrase))
        if status == 429:
            reset = datetime.now(UTC) + timedelta(seconds=retry_after)
            response.headers["X-RateLimit-Limit"] = str(self.rate_limiter.limit)
            response.headers["X-RateLimit-Remaining"] = "0"
            response.headers["X-RateLimit-Reset"] = _reset_stamp(reset)
            response.headers["Retry-After"] = str(ceil_seconds(retry_after))
        return response

    async def _authorized(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith("/api/") or request.path.startswith(_STREAMING):
            return await self._guarded(request, handler)
        token = self._token(request)
        account = self.store.account_by_token(token) if token else None
        if token and account is None:
            return _error(401, "The access token is invalid")
        request[_ACCOUNT_KEY] = account
        if account is None:
            return await self._guarded(request, handler)
        rate = self.rate_limiter.hit(account.token)
        if not rate.allowed:
            response: web.StreamResponse = _error(429, "Too many requests")
        else:
            response = await self._guarded(request, handler)
        if not response.prepared:
            response.headers["X-RateLimit-Limit"] = str(rate.limit)
            response.headers["X-RateLimit-Remaining"] = str(rate.remaining)
            response.headers["X-RateLimit-Reset"] = _reset_stamp(rate.reset)
        return response

    async def _guarded(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as error:
            return _error(error.status, error.message)
        except web.HTTPException as error:
            if error.status == 404:
                return _error(404, "Record not found")
            return _error(error.status, error.reason)

    def _token(self, request: web.Request) -> str | None:
        header = request.headers.get("Authorization", "")
        if header.lower().startswith("bearer "):
            return header[7:].strip()
        return request.query.get("access_token") or None

    async def _stream_account(self, request: web.Request) -> str | None:
        account = self.store.account_by_token(self._token(request) or "")
        return account.id if account is not None else None

    def _viewer(self, request: web.Request) -> SandboxAccount | None:
        found = request.get(_ACCOUNT_KEY)
        return found if isinstance(found, SandboxAccount) else None

    def _require(self, request: web.Request) -> SandboxAccount:
        found = self._viewer(request)
        if found is None:
            raise ApiError(401, "The access token is invalid")
        return found

    def _link_header(
        self, request: web.Request, ids: list[str], full: bool, kept: Mapping[str, Any]
    ) -> dict[str, str]:
        """`Link` with `next` (older, only after a full page) and `prev` (newer) cursors."""
        if not ids:
            return {}
        base_pairs = [
            (key + "[]" if isinstance(value, list) else key, item)
            for key, value in kept.items()
            for item in (value if isinstance(value, list) else [value])
        ]
        url = self.base_url + request.path.rstrip("/")
        links = []
        if full:
            links.append(f'<{url}?{urlencode([*base_pairs, ("max_id", ids[-1])])}>; rel="next"')
        links.append(f'<{url}?{urlencode([*base_pairs, ("min_id", ids[0])])}>; rel="prev"')
        return {"Link": ", ".join(links)}

    # instance

    async def _instance_v1(self, request: web.Request) -> web.Response:
        return web.json_response(self.entities.instance_v1())

    async def _instance_v2(self, request: web.Request) -> web.Response:
        return web.json_response(self.entities.instance_v2())

    # accounts

    async def _verify_credentials(self, request: web.Request) -> web.Response:
        return web.json_response(self.entities.credential_account(self._require(request)))

    async def _lookup(self, request: web.Request) -> web.Response:
        acct = request.query.get("acct", "")
        return web.json_response(self.entities.account(self.store.lookup(acct)))

    async def _relationships(self, request: web.Request) -> web.Response:
        viewer = self._require(request)
        values = await read_params(request)
        ids = _strings(values, "id") or []
        found = [self.store.accounts[i] for i in ids if i in self.store.accounts]
        return web.json_response([self.entities.relationship(viewer, other) for other in found])

    async def _get_account(self, request: web.Request) -> web.Response:
        account = self.store.account(request.match_info["id"])
        return web.json_response(self.entities.account(account))

    async def _follow(self, request: web.Request) -> web.Response:
        viewer = self._require(request)
        other = self.store.account(request.match_info["id"])
        self.store.follow(viewer.id, other.id)
        return web.json_response(self.entities.relationship(viewer, other))

    async def _unfollow(self, request: web.Request) -> web.Response:
        viewer = self._require(request)
        other = self.store.account(request.match_info["id"])
        self.store.unfollow(viewer.id, other.id)
        return web.json_response(self.entities.relationship(viewer, other))

    async def _account_statuses(self, request: web.Request) -> web.Response:
        viewer = self._viewer(request)
        account = self.store.account(request.match_info["id"])
        values = await read_params(request)
        if _flag(values, "pinned"):
            return web.json_response([])
        filters = {
            "exclude_replies": bool(_flag(values, "exclude_replies")),
            "exclude_reblogs": bool(_flag(values, "exclude_reblogs")),
            "only_media": bool(_flag(values, "only_media")),
        }
        statuses = self.store.account_timeline(account.id, viewer, **filters)
        kept: dict[str, Any] = {key: "true" for key, on in filters.items() if on}
        return self._status_page(request, statuses, viewer, values, kept)

    async def _home(self, request: web.Request) -> web.Response:
        viewer = self._require(request)
        values = await read_params(request)
        return self._status_page(request, self.store.home_timeline(viewer), viewer, values, {})

    def _status_page(
        self,
        request: web.Request,
        statuses: list[StoredStatus],
        viewer: SandboxAccount | None,
        values: Mapping[str, Any],
        kept: dict[str, Any],
    ) -> web.Response:
        limit = _limit(values, 20, 40)
        if "limit" in values:
            kept["limit"] = str(limit)
        page = paginate(
            [s.id for s in statuses],
            max_id=_int(values.get("max_id")),
            since_id=_int(values.get("since_id")),
            min_id=_int(values.get("min_id")),
            limit=limit,
        )
        body = [self.entities.status(self.store.statuses[i], viewer) for i in page.items]
        headers = self._link_header(request, page.items, page.full, kept)
        return web.json_response(body, headers=headers)

    # statuses

    async def _post_status(self, request: web.Request) -> web.Response:
        author = self._require(request)
        values = await read_params(request)
        key = request.headers.get("Idempotency-Key") or None
        status = self.store.create_status(author, _status_input(values), key)
        return web.json_response(self.entities.status(status, author))

    async def _get_status(self, request: web.Request) -> web.Response:
        viewer = self._viewer(request)
        status = self.store.status(request.match_info["id"], viewer)
        return web.json_response(self.entities.status(status, viewer))

    async def _edit_status(self, request: web.Request) -> web.Response:
        editor = self._require(request)
        values = await read_params(request)
        status = self.store.edit_status(editor, request.match_info["id"], _status_input(values))
        return web.json_response(self.entities.status(status, editor))

    async def _delete_status(self, request: web.Request) -> web.Response:
        actor = self._require(request)
        status = self.store.delete_status(actor, request.match_info["id"])
        return web.json_response(self.entities.status(status, actor, with_source=True))

    async def _status_source(self, request: web.Request) -> web.Response:
        viewer = self._require(request)
        status = self.store.status(request.match_info["id"], viewer)
        if status.account_id != viewer.id:
            raise ApiError(403, "This action is not allowed")
        return web.json_response(self.entities.source(status))

    async def _status_context(self, request: web.Request) -> web.Response:
        viewer = self._viewer(request)
        status = self.store.status(request.match_info["id"], viewer)
        ancestors, descendants = self.store.context(status, viewer)
        return web.json_response(
            {
                "ancestors": [self.entities.status(s, viewer) for s in ancestors],
                "descendants": [self.entities.status(s, viewer) for s in descendants],
            }
        )

    async def _status_history(self, request: web.Request) -> web.Response:
        status = self.store.status(request.match_info["id"], self._viewer(request))
        return web.json_response(self.entities.history(status))

    async def _reblog(self, request: web.Request) -> web.Response:
        booster = self._require(request)
        values = await read_params(request)
        reblog = self.store.reblog(booster, request.match_info["id"], _text(values, "visibility"))
        return web.json_response(self.entities.status(reblog, booster))

    async def _unreblog(self, request: web.Request) -> web.Response:
        booster = self._require(request)
        original = self.store.unreblog(booster, request.match_info["id"])
        return web.json_response(self.entities.status(original, booster))

    # media

    async def _upload(self, request: web.Request) -> tuple[SandboxAccount, Json, bool]:
        owner = self._require(request)
        values = await read_params(request)
        upload = values.get("file")
        if not isinstance(upload, web.FileField):
            raise ApiError(422, "Validation failed: File can't be blank")
        item = self.store.upload_media(
            owner,
            upload.file.read(),
            upload.content_type,
            _text(values, "description"),
            _text(values, "focus"),
        )
        return owner, self.entities.media(item), item.ready

    async def _upload_v2(self, request: web.Request) -> web.Response:
        _, entity, ready = await self._upload(request)
        return web.json_response(entity, status=200 if ready else 202)

    async def _upload_v1(self, request: web.Request) -> web.Response:
        """The old endpoint waits for processing, so it always answers with a URL."""
        owner, entity, _ = await self._upload(request)
        item = self.store.own_media(owner, entity["id"])
        item.ready = True
        return web.json_response(self.entities.media(item))

    async def _get_media(self, request: web.Request) -> web.Response:
        item = self.store.poll_media(self._require(request), request.match_info["id"])
        return web.json_response(self.entities.media(item), status=200 if item.ready else 206)

    async def _update_media(self, request: web.Request) -> web.Response:
        owner = self._require(request)
        values = await read_params(request)
        item = self.store.update_media(
            owner, request.match_info["id"], _text(values, "description"), _text(values, "focus")
        )
        return web.json_response(self.entities.media(item))

    async def _media_file(self, request: web.Request) -> web.Response:
        item = self.store.media.get(request.match_info["id"])
        style = request.match_info["style"]
        if item is None or not item.ready or request.match_info["name"] != item.file_name:
            return _error(404, "Record not found")
        if style == "original":
            return web.Response(body=item.data, content_type=item.mime)
        if style == "small" and item.preview is not None:
            return web.Response(body=item.preview, content_type=item.preview_mime)
        return _error(404, "Record not found")

    async def _static_image(self, request: web.Request) -> web.Response:
        return web.Response(body=self._placeholder, content_type="image/png")

    # notifications

    async def _notifications(self, request: web.Request) -> web.Response:
        viewer = self._require(request)
        values = await read_params(request)
        types = _strings(values, "types")
        excluded = _strings(values, "exclude_types") or []
        from_account = _text(values, "account_id")
        chosen = [
            n
            for n in self.store.notifications_of(viewer.id)
            if (not types or n.type in types)
            and n.type not in excluded
            and (from_account is None or n.from_account_id == from_account)
        ]
        limit = _limit(values, 40, 80)
        page = paginate(
            [n.id for n in chosen],
            max_id=_int(values.get("max_id")),
            since_id=_int(values.get("since_id")),
            min_id=_int(values.get("min_id")),
            limit=limit,
        )
        kept: dict[str, Any] = {}
        if "limit" in values:
            kept["limit"] = str(limit)
        if types:
            kept["types"] = types
        if excluded:
            kept["exclude_types"] = excluded
        body = [self.entities.notification(self.store.notifications[i], viewer) for i in page.items]
        return web.json_response(
            body, headers=self._link_header(request, page.items, page.full, kept)
        )

    async def _notification(self, request: web.Request) -> web.Response:
        viewer = self._require(request)
        found = self.store.notifications.get(request.match_info["id"])
        if found is None or found.account_id != viewer.id:
            raise ApiError(404, "Record not found")
        return web.json_response(self.entities.notification(found, viewer))
