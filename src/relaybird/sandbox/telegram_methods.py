"""The Bot API methods the sandbox answers, each a small function of (bot, parameters).

Handlers either return the ``result`` of a successful call or raise ``ApiError`` with the status
code and description the real server uses, so that clients see the same exceptions they would
see against api.telegram.org. Long polling (``getUpdates``) lives in the server module because it
is the only method that waits.
"""

from __future__ import annotations

import json
import mimetypes
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from relaybird.sandbox.telegram_state import (
    PhotoError,
    SandboxBot,
    SandboxChat,
    SlidingWindow,
    StoredFile,
    StoredMessage,
    TelegramWorld,
)
from relaybird.sandbox.telegram_text import EntityError, FormattedText, format_text, utf16_len

MB = 1024 * 1024
NOT_MODIFIED = (
    "message is not modified: specified new message content and reply markup are exactly the "
    "same as a current content and reply markup of the message"
)
MEDIA_KINDS = {"photo": "Photo", "document": "Document", "video": "Video"}


class ApiError(Exception):
    """A refusal as the Bot API words it: HTTP status, description and optional parameters."""

    def __init__(self, code: int, description: str, parameters: dict[str, Any] | None = None):
        super().__init__(description)
        self.code = code
        self.description = description
        self.parameters = parameters


def bad_request(message: str) -> ApiError:
    """A 400 with the server's casing rule: the first letter is lowered unless it starts a CODE."""
    if len(message) >= 2 and not (message[1] == "_" or message[1].isupper()):
        message = message[0].lower() + message[1:]
    return ApiError(400, f"Bad Request: {message}")


@dataclass(frozen=True)
class Upload:
    """One uploaded multipart part."""

    data: bytes
    filename: str | None = None
    content_type: str | None = None


@dataclass(frozen=True)
class SandboxLimits:
    """The server-side limits the sandbox enforces; defaults are Telegram's."""

    max_text: int = 4096
    max_caption: int = 1024
    max_photo_bytes: int = 10 * MB
    max_document_bytes: int = 50 * MB
    max_download_bytes: int = 20 * MB
    max_album: int = 10


class Params:
    """Request parameters from a query string, a JSON body or a form, read the lenient way.

    Form and query values are strings; the server parses numbers leniently (garbage reads as 0)
    and JSON-typed parameters (entities, reply_parameters, ...) from their string form.
    """

    def __init__(self, values: dict[str, Any], uploads: dict[str, Upload]) -> None:
        self.values = values
        self.uploads = uploads

    def has(self, name: str) -> bool:
        return self.values.get(name) not in (None, "")

    def text(self, name: str) -> str | None:
        value = self.values.get(name)
        if value is None:
            return None
        return value if isinstance(value, str) else json.dumps(value)

    def integer(self, name: str, default: int = 0) -> int:
        value = self.values.get(name)
        if value is None or value == "":
            return default
        if isinstance(value, bool):
            return int(value)
        if isinstance(value, int):
            return value
        if isinstance(value, float):
            return int(value)
        match = re.match(r"\s*[-+]?\d+", str(value))
        return int(match.group(0)) if match else 0

    def flag(self, name: str) -> bool:
        value = self.values.get(name)
        if isinstance(value, str):
            return value.strip().lower() in ("true", "1")
        return bool(value)

    def json(self, name: str, label: str) -> Any:
        value = self.values.get(name)
        if value is None or value == "":
            return None
        if isinstance(value, str):
            try:
                return json.loads(value)
            except ValueError:
                raise bad_request(f"can't parse {label} JSON object") from None
        return value

    def chat_ref(self) -> int | str:
        value = self.values.get("chat_id")
        if value is None or value == "":
            raise bad_request("chat_id is empty")
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        text = str(value).strip()
        return int(text) if re.fullmatch(r"-?\d+", text) else text

    def upload(self, name: str) -> Upload | str | None:
        """The part a file parameter names: its own part, ``attach://x``, or the string given."""
        value = self.values.get(name)
        if isinstance(value, str) and value.startswith("attach://"):
            return self.uploads.get(value[len("attach://") :])
        if name in self.uploads:
            return self.uploads[name]
        return value if isinstance(value, str) and value else None


class RateLimiter:
    """Per-chat and per-bot windows on messages sent, answering 429 like Telegram's flood wait."""

    def __init__(
        self,
        clock: Callable[[], float],
        *,
        per_chat: int,
        per_chat_window: float,
        per_bot: int,
        per_bot_window: float,
    ) -> None:
        self.chat = SlidingWindow(per_chat, per_chat_window, clock)
        self.bot = SlidingWindow(per_bot, per_bot_window, clock)

    def check(self, bot_id: int, chat_id: int, count: int) -> None:
        waits = [
            self.chat.retry_after((bot_id, chat_id), count),
            self.bot.retry_after(bot_id, count),
        ]
        longest = max((w for w in waits if w is not None), default=None)
        if longest is not None:
            raise ApiError(
                429, f"Too Many Requests: retry after {longest}", {"retry_after": longest}
            )

    def record(self, bot_id: int, chat_id: int, count: int) -> None:
        self.chat.record((bot_id, chat_id), count)
        self.bot.record(bot_id, count)


@dataclass
class _Content:
    """What a send method puts into a message besides sender and reply."""

    text: FormattedText | None = None
    caption: FormattedText | None = None
    media_kind: str | None = None
    media: Any = None
    link_preview_options: dict[str, Any] | None = None
    show_caption_above_media: bool = False
    has_media_spoiler: bool = False


class BotMethods:
    """Method handlers over one world; ``handlers`` maps lower-cased method names to them."""

    def __init__(self, world: TelegramWorld, limits: SandboxLimits, limiter: RateLimiter) -> None:
        self.world = world
        self.limits = limits
        self.limiter = limiter
        self.handlers: dict[str, Callable[[SandboxBot, Params], Any]] = {
            "getme": self.get_me,
            "getchat": self.get_chat,
            "getchatmember": self.get_chat_member,
            "sendmessage": self.send_message,
            "sendphoto": self.send_photo,
            "senddocument": self.send_document,
            "sendvideo": self.send_video,
            "sendmediagroup": self.send_media_group,
            "sendchataction": self.send_chat_action,
            "editmessagetext": self.edit_message_text,
            "editmessagecaption": self.edit_message_caption,
            "deletemessage": self.delete_message,
            "getfile": self.get_file,
            "deletewebhook": self.delete_webhook,
            "getwebhookinfo": self.get_webhook_info,
            "setmycommands": self.set_my_commands,
            "getmycommands": self.get_my_commands,
            "deletemycommands": self.delete_my_commands,
        }

    # ------------------------------------------------------------------ chats and accounts

    def get_me(self, bot: SandboxBot, params: Params) -> dict[str, Any]:
        data = self.world.user_json(bot.id) or {}
        data.update(
            can_join_groups=True,
            can_read_all_group_messages=True,
            supports_inline_queries=False,
            can_connect_to_business=False,
            has_main_web_app=False,
        )
        return data

    def target_chat(
        self, bot: SandboxBot, params: Params, *, readable: bool = False
    ) -> SandboxChat:
        """The chat a call addresses, refused the way Telegram refuses unknown or foreign chats."""
        ref = params.chat_ref()
        chat = self.world.lookup_chat(ref)
        if chat is None:
            if isinstance(ref, int) and ref in self.world.users:
                raise ApiError(403, "Forbidden: bot can't initiate conversation with a user")
            if isinstance(ref, int) and ref in self.world.bots:
                raise ApiError(403, "Forbidden: bot can't send messages to bots")
            raise bad_request("chat not found")
        if bot.id in chat.members or (readable and chat.username):
            return chat
        if chat.username is None:
            raise bad_request("chat not found")
        kind = "channel" if chat.type == "channel" else "supergroup"
        raise ApiError(403, f"Forbidden: bot is not a member of the {kind} chat")

    def get_chat(self, bot: SandboxBot, params: Params) -> dict[str, Any]:
        chat = self.target_chat(bot, params, readable=True)
        data = self.world.chat_json(chat)
        if chat.username:
            data["active_usernames"] = [chat.username]
        data.update(
            accent_color_id=abs(chat.id) % 7,
            max_reaction_count=11,
            accepted_gift_types={
                "unlimited_gifts": False,
                "limited_gifts": False,
                "unique_gifts": False,
                "premium_subscription": False,
                "gifts_from_channels": False,
            },
        )
        if chat.type == "supergroup":
            data["permissions"] = {
                "can_send_messages": True,
                "can_send_photos": True,
                "can_send_videos": True,
                "can_send_documents": True,
            }
        return data

    def get_chat_member(self, bot: SandboxBot, params: Params) -> dict[str, Any]:
        chat = self.target_chat(bot, params)
        user_id = params.integer("user_id")
        user = self.world.user_json(user_id)
        if user is None:
            raise bad_request("user not found")
        if user_id in chat.admins:
            return _administrator(user, chat)
        if user_id in chat.members:
            return {"status": "member", "user": user}
        return {"status": "left", "user": user}

    def send_chat_action(self, bot: SandboxBot, params: Params) -> bool:
        self.target_chat(bot, params)
        return True

    # ------------------------------------------------------------------ text helpers

    def formatted(
        self, params: Params, text_name: str, entities_name: str, mode_name: str
    ) -> FormattedText:
        return self.format(
            params.text(text_name) or "",
            params.text(mode_name),
            params.json(entities_name, "entities"),
        )

    def format(self, text: str, parse_mode: str | None, entities: Any) -> FormattedText:
        try:
            return format_text(
                text, parse_mode=parse_mode, entities=entities, user_lookup=self.world.user_json
            )
        except EntityError as exc:
            raise bad_request(str(exc)) from None

    def message_text(self, params: Params) -> FormattedText:
        if not params.has("text"):
            raise bad_request("message text is empty")
        text = self.formatted(params, "text", "entities", "parse_mode")
        if not text.text:
            raise bad_request("message must be non-empty")
        if utf16_len(text.text) > self.limits.max_text:
            raise bad_request("message is too long")
        return text

    def caption(self, params: Params) -> FormattedText:
        caption = self.formatted(params, "caption", "caption_entities", "parse_mode")
        self.check_caption(caption)
        return caption

    def check_caption(self, caption: FormattedText) -> None:
        if utf16_len(caption.text) > self.limits.max_caption:
            raise bad_request("message caption is too long")

    # ------------------------------------------------------------------ sending

    def reply_target(self, chat: SandboxChat, params: Params) -> int | None:
        """The message a send replies to; replies into other chats are not simulated."""
        reply = params.json("reply_parameters", "reply parameters")
        allow_without = params.flag("allow_sending_without_reply")
        if isinstance(reply, dict):
            message_id = reply.get("message_id")
            if not isinstance(message_id, int):
                raise bad_request("can't parse reply parameters JSON object")
            allow_without = bool(reply.get("allow_sending_without_reply", allow_without))
            other = reply.get("chat_id")
            if other is not None and self.world.lookup_chat(other) is not chat:
                raise bad_request("message to be replied not found")
        elif reply is not None:
            raise bad_request("can't parse reply parameters JSON object")
        else:
            message_id = params.integer("reply_to_message_id") or None
        if message_id is None:
            return None
        if self.world.live_message(chat.id, message_id) is None:
            if allow_without:
                return None
            raise bad_request("message to be replied not found")
        return int(message_id)

    def sender(self, bot: SandboxBot, chat: SandboxChat) -> dict[str, Any]:
        if chat.type == "channel":
            return {"author_id": bot.id, "from_user": None, "sender_chat_id": chat.id}
        return {
            "author_id": bot.id,
            "from_user": self.world.user_json(bot.id),
            "sender_chat_id": None,
        }

    def post(
        self,
        bot: SandboxBot,
        chat: SandboxChat,
        content: _Content,
        reply_to: int | None,
        media_group_id: str | None = None,
    ) -> StoredMessage:
        """Store a bot's message and queue it for the other bots in the chat."""
        message = self.world.add_message(
            chat,
            **self.sender(bot, chat),
            text=content.text.text if content.text else None,
            entities=content.text.entities if content.text else [],
            caption=content.caption.text if content.caption and content.caption.text else None,
            caption_entities=content.caption.entities if content.caption else [],
            media_kind=content.media_kind,
            media=content.media,
            media_group_id=media_group_id,
            reply_to=reply_to,
            link_preview_options=content.link_preview_options,
            show_caption_above_media=content.show_caption_above_media,
            has_media_spoiler=content.has_media_spoiler,
        )
        self.world.deliver(chat, "channel_post" if chat.type == "channel" else "message", message)
        return message

    def send_message(self, bot: SandboxBot, params: Params) -> dict[str, Any]:
        text = self.message_text(params)
        chat = self.target_chat(bot, params)
        reply_to = self.reply_target(chat, params)
        content = _Content(text=text, link_preview_options=self.link_preview(params))
        self.limiter.check(bot.id, chat.id, 1)
        message = self.post(bot, chat, content, reply_to)
        self.limiter.record(bot.id, chat.id, 1)
        return self.world.render(message)

    @staticmethod
    def link_preview(params: Params) -> dict[str, Any] | None:
        options = params.json("link_preview_options", "link preview options")
        if params.flag("disable_web_page_preview"):
            options = {"is_disabled": True}
        if not isinstance(options, dict):
            return None
        known = (
            "is_disabled",
            "url",
            "prefer_small_media",
            "prefer_large_media",
            "show_above_text",
        )
        kept = {key: options[key] for key in known if options.get(key)}
        return kept or None

    def send_photo(self, bot: SandboxBot, params: Params) -> dict[str, Any]:
        return self.send_media(bot, params, "photo")

    def send_document(self, bot: SandboxBot, params: Params) -> dict[str, Any]:
        return self.send_media(bot, params, "document")

    def send_video(self, bot: SandboxBot, params: Params) -> dict[str, Any]:
        return self.send_media(bot, params, "video")

    def send_media(self, bot: SandboxBot, params: Params, kind: str) -> dict[str, Any]:
        caption = self.caption(params)
        chat = self.target_chat(bot, params)
        reply_to = self.reply_target(chat, params)
        self.limiter.check(bot.id, chat.id, 1)
        media = self.media(kind, params.upload(kind), params)
        content = _Content(
            caption=caption,
            media_kind=kind,
            media=media,
            show_caption_above_media=params.flag("show_caption_above_media"),
            has_media_spoiler=params.flag("has_spoiler") and kind != "document",
        )
        message = self.post(bot, chat, content, reply_to)
        self.limiter.record(bot.id, chat.id, 1)
        return self.world.render(message)

    # ------------------------------------------------------------------ files

    def media(self, kind: str, source: Upload | str | None, params: Params) -> Any:
        """The PhotoSize list, Document or Video a send stores, from an upload or a file_id."""
        if source is None:
            raise bad_request(f"there is no {kind} in the request")
        if isinstance(source, str):
            return self.reused_media(kind, source)
        if kind == "photo":
            try:
                return self.world.store_photo(source.data, self.limits.max_photo_bytes)
            except PhotoError as exc:
                raise bad_request(str(exc)) from None
        if not source.data:
            raise bad_request("file must be non-empty")
        if len(source.data) > self.limits.max_document_bytes:
            raise ApiError(413, "Request Entity Too Large")
        return self.store_file(kind, source, params)

    def store_file(self, kind: str, upload: Upload, params: Params) -> dict[str, Any]:
        name = upload.filename or ("video.mp4" if kind == "video" else "document")
        mime = upload.content_type
        if not mime or mime == "application/octet-stream":
            mime = mimetypes.guess_type(name)[0] or (
                "video/mp4" if kind == "video" else "application/octet-stream"
            )
        extension = (
            name.rsplit(".", 1)[-1] if "." in name else ("mp4" if kind == "video" else "bin")
        )
        folder = "videos" if kind == "video" else "documents"
        extra: dict[str, Any] = {"mime_type": mime, "file_name": name}
        if kind == "video":
            extra.update(
                width=min(max(params.integer("width"), 0), 10_000),
                height=min(max(params.integer("height"), 0), 10_000),
            )
        stored = self.world.add_file(kind, upload.data, folder, extension, **extra)
        return self.file_json(stored, params)

    def file_json(self, stored: StoredFile, params: Params | None = None) -> dict[str, Any]:
        data: dict[str, Any] = {}
        if stored.kind == "video":
            duration = params.integer("duration") if params is not None else 0
            data.update(
                duration=min(max(duration, 0), 86_400), width=stored.width, height=stored.height
            )
        if stored.file_name:
            data["file_name"] = stored.file_name
        if stored.mime_type:
            data["mime_type"] = stored.mime_type
        data.update(
            file_id=stored.file_id,
            file_unique_id=stored.file_unique_id,
            file_size=len(stored.data),
        )
        return data

    def reused_media(self, kind: str, file_id: str) -> Any:
        stored = self.world.files.get(file_id.strip())
        if stored is None:
            if re.match(r"(?i)^(https?|ftp)://", file_id.strip()):
                raise bad_request("failed to get HTTP URL content")
            raise bad_request("wrong file identifier/HTTP URL specified")
        if stored.kind != kind:
            raise bad_request(
                f"can't use file of type {MEDIA_KINDS[stored.kind]} as {MEDIA_KINDS[kind]}"
            )
        if kind == "photo":
            return self.world.photo_sizes_of(stored)
        return self.file_json(stored)

    def get_file(self, bot: SandboxBot, params: Params) -> dict[str, Any]:
        file_id = (params.text("file_id") or "").strip()
        if not file_id:
            raise bad_request("file_id not specified")
        stored = self.world.files.get(file_id)
        if stored is None:
            raise bad_request("invalid file_id")
        if len(stored.data) > self.limits.max_download_bytes:
            raise bad_request("file is too big")
        return {
            "file_id": stored.file_id,
            "file_unique_id": stored.file_unique_id,
            "file_size": len(stored.data),
            "file_path": stored.file_path,
        }

    # ------------------------------------------------------------------ albums

    def send_media_group(self, bot: SandboxBot, params: Params) -> list[dict[str, Any]]:
        items = params.json("media", "media")
        if not isinstance(items, list) or not items:
            raise bad_request("there are no messages to send")
        if len(items) > self.limits.max_album:
            raise bad_request("too many messages to send as an album")
        kinds = [self.album_kind(item) for item in items]
        self.check_album_mix(kinds)
        captions = [self.album_caption(item) for item in items]
        chat = self.target_chat(bot, params)
        reply_to = self.reply_target(chat, params)
        self.limiter.check(bot.id, chat.id, len(items))
        contents = [
            _Content(
                caption=caption,
                media_kind=kind,
                media=self.media(kind, self.album_source(item, params), Params(item, {})),
                show_caption_above_media=bool(item.get("show_caption_above_media")),
                has_media_spoiler=bool(item.get("has_spoiler")) and kind != "document",
            )
            for item, kind, caption in zip(items, kinds, captions, strict=True)
        ]
        group_id = self.world.new_media_group_id() if len(items) > 1 else None
        messages = [self.post(bot, chat, content, reply_to, group_id) for content in contents]
        self.limiter.record(bot.id, chat.id, len(items))
        return [self.world.render(message) for message in messages]

    @staticmethod
    def album_kind(item: Any) -> str:
        if not isinstance(item, dict) or not isinstance(item.get("type"), str):
            raise bad_request("can't parse InputMedia: Can't find field \"type\"")
        kind = str(item["type"])
        if kind == "animation":
            raise bad_request(
                "can't parse InputMedia: type \"animation\" can't be used in sendMediaGroup"
            )
        if kind == "audio":
            raise bad_request('InputMedia of type "audio" is not supported by this sandbox')
        if kind not in MEDIA_KINDS:
            raise bad_request(f'can\'t parse InputMedia: type "{kind}" is unsupported')
        if not isinstance(item.get("media"), str) or not item["media"]:
            raise bad_request("can't parse InputMedia: Can't find field \"media\"")
        return kind

    @staticmethod
    def check_album_mix(kinds: list[str]) -> None:
        if "document" in kinds and any(kind != "document" for kind in kinds):
            raise bad_request("document can't be mixed with other media types")

    def album_caption(self, item: dict[str, Any]) -> FormattedText:
        caption = self.format(
            str(item.get("caption") or ""), item.get("parse_mode"), item.get("caption_entities")
        )
        self.check_caption(caption)
        return caption

    @staticmethod
    def album_source(item: dict[str, Any], params: Params) -> Upload | str:
        media = str(item["media"])
        if media.startswith("attach://"):
            upload = params.uploads.get(media[len("attach://") :])
            if upload is None:
                raise bad_request("can't parse InputMedia: media not found")
            return upload
        return media

    # ------------------------------------------------------------------ editing and deleting

    def editable(self, bot: SandboxBot, params: Params) -> tuple[SandboxChat, StoredMessage]:
        if params.has("inline_message_id"):
            raise bad_request("message to edit not found")
        chat = self.target_chat(bot, params)
        message = self.world.live_message(chat.id, params.integer("message_id"))
        if message is None:
            raise bad_request("message to edit not found")
        return chat, message

    def can_edit(self, bot: SandboxBot, chat: SandboxChat, message: StoredMessage) -> bool:
        if message.author_id == bot.id:
            return True
        return (
            chat.type == "channel" and bot.id in chat.admins and message.sender_chat_id == chat.id
        )

    def announce_edit(self, chat: SandboxChat, message: StoredMessage) -> dict[str, Any]:
        message.edit_date = self.world.now()
        kind = "edited_channel_post" if chat.type == "channel" else "edited_message"
        self.world.deliver(chat, kind, message)
        return self.world.render(message)

    def edit_message_text(self, bot: SandboxBot, params: Params) -> dict[str, Any]:
        text = self.message_text(params)
        chat, message = self.editable(bot, params)
        if message.text is None:
            raise bad_request("there is no text in the message to edit")
        if not self.can_edit(bot, chat, message):
            raise bad_request("message can't be edited")
        preview = self.link_preview(params)
        if (text.text, text.entities, preview) == (
            message.text,
            message.entities,
            message.link_preview_options,
        ):
            raise bad_request(NOT_MODIFIED)
        message.text, message.entities = text.text, text.entities
        message.link_preview_options = preview
        return self.announce_edit(chat, message)

    def edit_message_caption(self, bot: SandboxBot, params: Params) -> dict[str, Any]:
        caption = self.caption(params)
        chat, message = self.editable(bot, params)
        if message.media_kind is None:
            raise bad_request("there is no caption in the message to edit")
        if not self.can_edit(bot, chat, message):
            raise bad_request("message can't be edited")
        new_caption = caption.text or None
        if (new_caption, caption.entities) == (message.caption, message.caption_entities):
            raise bad_request(NOT_MODIFIED)
        message.caption, message.caption_entities = new_caption, caption.entities
        if params.has("show_caption_above_media"):
            message.show_caption_above_media = params.flag("show_caption_above_media")
        return self.announce_edit(chat, message)

    def delete_message(self, bot: SandboxBot, params: Params) -> bool:
        chat = self.target_chat(bot, params)
        message = self.world.live_message(chat.id, params.integer("message_id"))
        if message is None:
            raise bad_request("message to delete not found")
        if message.author_id != bot.id and bot.id not in chat.admins:
            raise bad_request("message can't be deleted")
        message.deleted = True
        return True

    # ------------------------------------------------------------------ bot settings

    def delete_webhook(self, bot: SandboxBot, params: Params) -> bool:
        if params.flag("drop_pending_updates"):
            self.world.updates[bot.id].pending.clear()
        return True

    def get_webhook_info(self, bot: SandboxBot, params: Params) -> dict[str, Any]:
        queue = self.world.updates[bot.id]
        return {
            "url": "",
            "has_custom_certificate": False,
            "pending_update_count": len(queue.pending),
        }

    def set_my_commands(self, bot: SandboxBot, params: Params) -> bool:
        commands = params.json("commands", "commands")
        if not isinstance(commands, list):
            raise bad_request("can't parse commands JSON object")
        if len(commands) > 100:
            raise bad_request("too many commands specified")
        cleaned = []
        for command in commands:
            if not isinstance(command, dict):
                raise bad_request("can't parse BotCommand: expected an Object")
            name = str(command.get("command", "")).lstrip("/")
            description = str(command.get("description", "")).strip()
            if not re.fullmatch(r"[a-z0-9_]{1,32}", name):
                raise bad_request("BOT_COMMAND_INVALID")
            if not 1 <= len(description) <= 256:
                raise bad_request("BOT_COMMAND_DESCRIPTION_INVALID")
            cleaned.append({"command": name, "description": description})
        self.world.commands[bot.id] = cleaned
        return True

    def get_my_commands(self, bot: SandboxBot, params: Params) -> list[dict[str, str]]:
        return [dict(command) for command in self.world.commands.get(bot.id, [])]

    def delete_my_commands(self, bot: SandboxBot, params: Params) -> bool:
        self.world.commands.pop(bot.id, None)
        return True


def _administrator(user: dict[str, Any], chat: SandboxChat) -> dict[str, Any]:
    rights = dict.fromkeys(
        (
            "can_manage_chat",
            "can_delete_messages",
            "can_manage_video_chats",
            "can_restrict_members",
            "can_change_info",
            "can_invite_users",
            "can_post_stories",
            "can_edit_stories",
            "can_delete_stories",
        ),
        True,
    )
    data: dict[str, Any] = {
        "status": "administrator",
        "user": user,
        "can_be_edited": False,
        "is_anonymous": False,
        "can_promote_members": False,
        **rights,
    }
    if chat.type == "channel":
        data.update(can_post_messages=True, can_edit_messages=True)
    else:
        data.update(can_pin_messages=True, can_manage_topics=False)
    return data
