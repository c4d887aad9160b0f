"""A local Telegram Bot API server for tests and ``relaybird demo``.

Point an unmodified python-telegram-bot at it::

    sandbox = TelegramSandbox()
    root = await sandbox.start()
    bot_account = sandbox.create_bot("relay_bot")
    bot = telegram.Bot(bot_account.token, base_url=f"{root}/bot",
                       base_file_url=f"{root}/file/bot")

Requests arrive as ``POST /bot<token>/<method>`` with a JSON body, a urlencoded form (what
python-telegram-bot sends when nothing is uploaded) or multipart/form-data (when it uploads), and
query-string parameters are read too. Answers are ``{"ok": true, "result": ...}`` or
``{"ok": false, "error_code": N, "description": "..."}`` with the real server's wording; see
``telegram_methods`` for the methods, ``telegram_text`` for how texts and entities are treated
and ``telegram_state`` for what is stored.

Every request passes through ``hooks`` after it is authenticated and parsed and before it is
answered: a hook may return its own response (a 429, a 500, a delay, broken JSON) and so stands
in for a fault injector without the handlers knowing. Before all that, the switchable ``faults``
may answer in the server's place (429 with ``retry_after``, 5xx, delays, resets, broken JSON,
answers held back after the call took effect), matched by method name and bot.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, NamedTuple

from aiohttp import BodyPartReader, web

from relaybird.sandbox.faults import ErrorShape, Faults, Target, ceil_seconds
from relaybird.sandbox.telegram_methods import (
    MB,
    ApiError,
    BotMethods,
    Params,
    RateLimiter,
    SandboxLimits,
    Upload,
    bad_request,
)
from relaybird.sandbox.telegram_state import (
    GROUP_ANONYMOUS_BOT,
    PhotoError,
    SandboxBot,
    SandboxChat,
    SandboxUser,
    StoredMessage,
    TelegramWorld,
    UpdateQueue,
)
from relaybird.sandbox.telegram_text import EntityError, FormattedText, format_text, utf16_len

__all__ = [
    "ApiCall",
    "LoggedRequest",
    "RequestHook",
    "SandboxBot",
    "SandboxChat",
    "SandboxLimits",
    "SandboxUser",
    "TelegramSandbox",
]

CONFLICT = (
    "Conflict: terminated by other getUpdates request; "
    "make sure that only one bot instance is running"
)


class LoggedRequest(NamedTuple):
    """One answered API call; compares equal to a plain ``(method, ok, error_code)`` tuple."""

    method: str
    ok: bool
    error_code: int | None


@dataclass
class ApiCall:
    """What a hook sees of a request: the method as named in the URL, the bot and parameters."""

    method: str
    bot: SandboxBot
    params: Params
    request: web.Request


RequestHook = Callable[[ApiCall], Awaitable[web.StreamResponse | None]]


def fault_error(status: int, retry_after: float) -> web.Response:
    """A fault's refusal in the Bot API's envelope; a 429 names whole seconds to wait."""
    if status == 429:
        seconds = ceil_seconds(retry_after)
        return _failure(
            ApiError(429, f"Too Many Requests: retry after {seconds}", {"retry_after": seconds})
        )
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    return _failure(ApiError(status, phrase))


FAULT_SHAPE = ErrorShape(fault_error, b'{"ok":true,"result":{"message_id":1')


def _envelope(result: Any) -> web.Response:
    return web.json_response({"ok": True, "result": result})


def _failure(error: ApiError) -> web.Response:
    body: dict[str, Any] = {
        "ok": False,
        "error_code": error.code,
        "description": error.description,
    }
    if error.parameters:
        body["parameters"] = error.parameters
    return web.json_response(body, status=error.code)


class TelegramSandbox:
    """An in-process Bot API server with its own users, bots, channels and supergroups.

    Rate limits default to Telegram's shape but looser (20 messages per chat per minute, 30 per
    bot per second) so that a demo of a dozen posts never waits; pass tighter numbers to test a
    client's handling of 429. ``clock`` drives message dates and rate windows, so tests can move
    time instead of sleeping.

    The helpers that change the world (``post_as_user``, ``edit_as_user``, ...) are synchronous
    and wake waiting long polls directly, so call them on the event loop the server runs on.
    """

    def __init__(
        self,
        *,
        per_chat_limit: int = 20,
        per_chat_window: float = 60.0,
        global_limit: int = 30,
        global_window: float = 1.0,
        limits: SandboxLimits | None = None,
        clock: Callable[[], float] = time.time,
        hooks: Sequence[RequestHook] = (),
    ) -> None:
        self.limits = limits or SandboxLimits()
        self.world = TelegramWorld(clock)
        self.limiter = RateLimiter(
            clock,
            per_chat=per_chat_limit,
            per_chat_window=per_chat_window,
            per_bot=global_limit,
            per_bot_window=global_window,
        )
        self.methods = BotMethods(self.world, self.limits, self.limiter)
        self.hooks: list[RequestHook] = list(hooks)
        self.faults = Faults()
        self.requests_log: list[LoggedRequest] = []
        self.root_url = ""
        self._runner: web.AppRunner | None = None
        self._closing = False
        self._body_limit = max(self.limits.max_document_bytes, self.limits.max_photo_bytes) + MB

    # ------------------------------------------------------------------ lifecycle

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on ``host:port`` (0 = a free port) and return the root URL."""
        app = web.Application(client_max_size=self._body_limit)
        app.router.add_route("*", "/bot{token}/{method}", self._handle_api)
        app.router.add_get("/file/bot{token}/{path:.+}", self._handle_file)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound_port = self._runner.addresses[0][1]
        self._closing = False
        self.faults.bind(asyncio.get_running_loop())
        self.root_url = f"http://{host}:{bound_port}"
        return self.root_url

    async def stop(self) -> None:
        """Release waiting long polls and shut the server down."""
        self._closing = True
        self.faults.release()
        for queue in self.world.updates.values():
            queue.wake()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # ------------------------------------------------------------------ world building

    def create_bot(self, username: str, first_name: str = "") -> SandboxBot:
        return self.world.add_bot(username, first_name)

    def create_user(self, first_name: str, username: str | None = None) -> SandboxUser:
        return self.world.add_user(first_name, username)

    def create_channel(self, username: str, title: str, admins: list[int]) -> SandboxChat:
        """A public channel ``@username``; only its admins (users or bots) may post."""
        return self.world.add_chat("channel", title, username, list(admins), list(admins))

    def create_group(
        self,
        title: str,
        members: list[int],
        username: str | None = None,
        *,
        admins: list[int] | None = None,
    ) -> SandboxChat:
        """A supergroup; bots among ``members`` see every message (privacy mode off)."""
        return self.world.add_chat("supergroup", title, username, list(members), list(admins or []))

    # ------------------------------------------------------------------ inspection

    def _chat(self, chat: int | str) -> SandboxChat:
        found = self.world.lookup_chat(chat)
        if found is None:
            raise KeyError(f"no chat {chat!r}")
        return found

    def messages_in(self, chat: int | str) -> list[dict[str, Any]]:
        """Messages of a chat as the API shows them now: oldest first, edits applied."""
        found = self._chat(chat)
        stored = self.world.messages[found.id]
        return [self.world.render(m) for _, m in sorted(stored.items()) if not m.deleted]

    def file_bytes(self, file_id: str) -> bytes:
        return self.world.files[file_id].data

    def message_link(self, chat: int | str, message_id: int) -> str:
        """The t.me link Telegram gives a message: public by username, else the ``/c/`` form."""
        found = self._chat(chat)
        if found.username:
            return f"https://t.me/{found.username}/{message_id}"
        return f"https://t.me/c/{str(found.id)[4:]}/{message_id}"

    def pending_updates(self, bot: SandboxBot) -> list[dict[str, Any]]:
        """Updates queued for ``bot`` and not yet confirmed, oldest first."""
        return list(self.world.updates[bot.id].pending)

    # ------------------------------------------------------------------ humans acting

    def post_as_user(
        self,
        chat: int | str,
        user_id: int | None,
        text: str = "",
        *,
        entities: list[dict[str, Any]] | None = None,
        photo: bytes | None = None,
        caption: str = "",
        reply_to: int | None = None,
        media_group_id: str | None = None,
    ) -> dict[str, Any]:
        """A person posting (``user_id`` None: anonymously as the chat) and the updates it makes.

        The message goes through the same text handling as a bot's (trimming, entity checks,
        link detection); a refusal raises ValueError with the server's description.
        """
        found = self._chat(chat)
        sender = self._human_sender(found, user_id)
        fields: dict[str, Any] = {}
        if photo is not None:
            formatted = self._human_text(caption, entities)
            if utf16_len(formatted.text) > self.limits.max_caption:
                raise ValueError("message caption is too long")
            try:
                sizes = self.world.store_photo(photo, self.limits.max_photo_bytes)
            except PhotoError as exc:
                raise ValueError(str(exc)) from None
            fields.update(
                media_kind="photo",
                media=sizes,
                caption=formatted.text or None,
                caption_entities=formatted.entities,
            )
        else:
            formatted = self._human_text(text, entities)
            if not formatted.text:
                raise ValueError("message must be non-empty")
            if utf16_len(formatted.text) > self.limits.max_text:
                raise ValueError("message is too long")
            fields.update(text=formatted.text, entities=formatted.entities)
        if reply_to is not None and self.world.live_message(found.id, reply_to) is None:
            raise ValueError("message to be replied not found")
        message = self.world.add_message(
            found, **sender, reply_to=reply_to, media_group_id=media_group_id, **fields
        )
        self.world.deliver(found, "channel_post" if found.type == "channel" else "message", message)
        return self.world.render(message)

    def _human_sender(self, chat: SandboxChat, user_id: int | None) -> dict[str, Any]:
        if user_id is not None and user_id not in self.world.users:
            raise ValueError(f"unknown user {user_id}")
        if chat.type == "channel":
            if user_id is not None and user_id not in chat.admins:
                raise ValueError(f"user {user_id} is not an admin of the channel")
            return {"author_id": user_id, "from_user": None, "sender_chat_id": chat.id}
        if user_id is None:
            return {
                "author_id": None,
                "from_user": dict(GROUP_ANONYMOUS_BOT),
                "sender_chat_id": chat.id,
            }
        if user_id not in chat.members:
            raise ValueError(f"user {user_id} is not a member of the group")
        return {
            "author_id": user_id,
            "from_user": self.world.user_json(user_id),
            "sender_chat_id": None,
        }

    def _human_text(self, text: str, entities: list[dict[str, Any]] | None) -> FormattedText:
        try:
            return format_text(
                text, parse_mode=None, entities=entities, user_lookup=self.world.user_json
            )
        except EntityError as exc:
            raise ValueError(str(exc)) from None

    def edit_as_user(self, chat: int | str, message_id: int, text: str) -> dict[str, Any]:
        """A person editing a message (its text, or its caption if it has media)."""
        found = self._chat(chat)
        message = self.world.live_message(found.id, message_id)
        if message is None:
            raise ValueError("message to edit not found")
        formatted = self._human_text(text, None)
        if message.media_kind is not None:
            message.caption, message.caption_entities = formatted.text or None, formatted.entities
        else:
            if not formatted.text:
                raise ValueError("message must be non-empty")
            message.text, message.entities = formatted.text, formatted.entities
        return self.methods.announce_edit(found, message)

    def delete_as_user(self, chat: int | str, message_id: int) -> None:
        """A person deleting a message; bots are not told, as on Telegram."""
        found = self._chat(chat)
        message: StoredMessage | None = self.world.live_message(found.id, message_id)
        if message is None:
            raise ValueError("message to delete not found")
        message.deleted = True

    # ------------------------------------------------------------------ HTTP

    async def _handle_api(self, request: web.Request) -> web.StreamResponse:
        method = request.match_info["method"]
        bot = self.world.bots_by_token.get(request.match_info["token"])
        accounts = (bot.username, str(bot.id)) if bot is not None else ()
        handled = False

        async def proceed() -> web.StreamResponse:
            nonlocal handled
            handled = True
            return await self._answer_api(request, method, bot)

        answer = await self.faults.serve(request, Target(method, accounts), proceed, FAULT_SHAPE)
        if not handled:
            self._log(method, answer.status)
        return answer

    async def _answer_api(
        self, request: web.Request, method: str, bot: SandboxBot | None
    ) -> web.StreamResponse:
        try:
            if bot is None:
                raise ApiError(401, "Unauthorized")
            params = await self._read_params(request)
            call = ApiCall(method, bot, params, request)
            for hook in self.hooks:
                override = await hook(call)
                if override is not None:
                    self._log(method, override.status)
                    return override
            result = await self._dispatch(method, bot, params)
        except ApiError as error:
            self.requests_log.append(LoggedRequest(method, False, error.code))
            return _failure(error)
        self.requests_log.append(LoggedRequest(method, True, None))
        return _envelope(result)

    def _log(self, method: str, status: int) -> None:
        ok = 200 <= status < 300
        self.requests_log.append(LoggedRequest(method, ok, None if ok else status))

    async def _dispatch(self, method: str, bot: SandboxBot, params: Params) -> Any:
        name = method.lower()
        if name == "getupdates":
            return await self._get_updates(bot, params)
        handler = self.methods.handlers.get(name)
        if handler is None:
            raise ApiError(404, "Not Found")
        return handler(bot, params)

    async def _read_params(self, request: web.Request) -> Params:
        values: dict[str, Any] = dict(request.query)
        uploads: dict[str, Upload] = {}
        try:
            if request.content_type == "application/json":
                body = await request.json() if request.can_read_body else {}
                if not isinstance(body, dict):
                    raise bad_request("JSON object expected")
                values.update(body)
            elif request.content_type == "multipart/form-data":
                await self._read_multipart(request, values, uploads)
            elif request.can_read_body:
                values.update(await request.post())
        except web.HTTPRequestEntityTooLarge:
            raise ApiError(413, "Request Entity Too Large") from None
        except ValueError:
            raise bad_request("can't parse JSON object") from None
        return Params(values, uploads)

    async def _read_multipart(
        self, request: web.Request, values: dict[str, Any], uploads: dict[str, Upload]
    ) -> None:
        reader = await request.multipart()
        limit = self._body_limit
        total = 0
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader) or part.name is None:
                continue
            data = await part.read(decode=True)
            total += len(data)
            if total > limit:
                raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=total)
            if part.filename is not None:
                content_type = part.headers.get("Content-Type")
                uploads[part.name] = Upload(bytes(data), part.filename, content_type)
            else:
                values[part.name] = data.decode(part.get_charset("utf-8"))

    async def _handle_file(self, request: web.Request) -> web.StreamResponse:
        bot = self.world.bots_by_token.get(request.match_info["token"])
        path = request.match_info["path"]
        stored = next((f for f in self.world.files.values() if f.file_path == path), None)
        if bot is None or stored is None or len(stored.data) > self.limits.max_download_bytes:
            return web.json_response(
                {"ok": False, "error_code": 404, "description": "Not Found"}, status=404
            )
        return web.Response(
            body=stored.data, content_type=stored.mime_type or "application/octet-stream"
        )

    # ------------------------------------------------------------------ long polling

    async def _get_updates(self, bot: SandboxBot, params: Params) -> list[dict[str, Any]]:
        """Long polling: confirm by offset, answer at once if anything is pending, else wait.

        A newer getUpdates of the same bot ends an older waiting one with 409 Conflict, as the
        real server does when two instances of a bot poll at once.
        """
        queue = self.world.updates[bot.id]
        allowed = params.json("allowed_updates", "allowed updates")
        if isinstance(allowed, list):
            queue.allowed = [str(kind) for kind in allowed] or None
        queue.generation += 1
        generation = queue.generation
        queue.wake()
        self._confirm(queue, params.integer("offset"))
        limit = min(max(params.integer("limit", 100), 1), 100)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(params.integer("timeout"), 0)
        while not queue.pending and not self._closing:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            waiter: asyncio.Future[None] = loop.create_future()
            queue.waiters.add(waiter)
            try:
                await asyncio.wait({waiter}, timeout=remaining)
            finally:
                queue.waiters.discard(waiter)
            if queue.generation != generation:
                raise ApiError(409, CONFLICT)
        return [dict(update) for update in list(queue.pending)[:limit]]

    @staticmethod
    def _confirm(queue: UpdateQueue, offset: int) -> None:
        if offset > 0:
            while queue.pending and queue.pending[0]["update_id"] < offset:
                queue.pending.popleft()
        elif offset < 0:
            while len(queue.pending) > -offset:
                queue.pending.popleft()
