"""What the Telegram sandbox remembers: users, bots, chats, messages, files and update queues.

Everything here is plain synchronous bookkeeping so that both the HTTP handlers and the test-side
helpers (``post_as_user`` and friends) can change the world without awaiting anything; the only
asynchronous piece, waking long-polling ``getUpdates`` requests, is a set of futures resolved
from here.
"""

from __future__ import annotations

import asyncio
import base64
import io
import itertools
import math
import secrets
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from PIL import Image, UnidentifiedImageError

# Update kinds a bot gets when it never said which it wants (the Bot API default).
DEFAULT_EXCLUDED_UPDATES = frozenset({"chat_member", "message_reaction", "message_reaction_count"})
GROUP_ANONYMOUS_BOT = {
    "id": 1087968824,
    "is_bot": True,
    "first_name": "Group",
    "username": "GroupAnonymousBot",
}
# Longest side of each size Telegram keeps of a photo ("s", "m", "x", "y", "w").
PHOTO_SIDES = (90, 320, 800, 1280, 2560)


@dataclass
class SandboxUser:
    """A human account; tests create them and post on their behalf."""

    id: int
    first_name: str
    username: str | None = None


@dataclass
class SandboxBot:
    """A bot account with the token a client authenticates with."""

    id: int
    username: str
    token: str
    first_name: str = ""


@dataclass
class SandboxChat:
    """A channel or supergroup; ``admins`` are user or bot ids, always also members."""

    id: int
    type: str
    title: str
    username: str | None = None
    members: list[int] = field(default_factory=list)
    admins: list[int] = field(default_factory=list)


@dataclass
class StoredFile:
    """File content behind one file_id; ``kind`` says which send method it may be reused with."""

    file_id: str
    file_unique_id: str
    kind: str
    data: bytes
    file_path: str
    mime_type: str | None = None
    file_name: str | None = None
    width: int = 0
    height: int = 0
    group: str = ""


@dataclass
class StoredMessage:
    """One message as the server keeps it; rendered to the Bot API shape on demand."""

    chat_id: int
    message_id: int
    date: int
    author_id: int | None
    from_user: dict[str, Any] | None
    sender_chat_id: int | None
    text: str | None = None
    entities: list[dict[str, Any]] = field(default_factory=list)
    caption: str | None = None
    caption_entities: list[dict[str, Any]] = field(default_factory=list)
    media_kind: str | None = None
    media: Any = None
    media_group_id: str | None = None
    reply_to: int | None = None
    thread_id: int | None = None
    edit_date: int | None = None
    link_preview_options: dict[str, Any] | None = None
    show_caption_above_media: bool = False
    has_media_spoiler: bool = False
    deleted: bool = False


@dataclass
class UpdateQueue:
    """Pending updates of one bot and the long-polling requests waiting for them."""

    next_update_id: int
    pending: deque[dict[str, Any]] = field(default_factory=deque)
    allowed: list[str] | None = None
    waiters: set[asyncio.Future[None]] = field(default_factory=set)
    generation: int = 0

    def wants(self, kind: str) -> bool:
        if self.allowed:
            return kind in self.allowed
        return kind not in DEFAULT_EXCLUDED_UPDATES

    def wake(self) -> None:
        for waiter in self.waiters:
            if not waiter.done():
                waiter.set_result(None)
        self.waiters.clear()


class PhotoError(Exception):
    """An image Telegram's servers refuse; ``str()`` is the description after "Bad Request: "."""


class SlidingWindow:
    """Counts events per key over a sliding window; answers how long until one more fits."""

    def __init__(self, limit: int, window: float, clock: Callable[[], float]) -> None:
        self.limit = limit
        self.window = window
        self.clock = clock
        self.events: dict[Any, deque[float]] = {}

    def retry_after(self, key: Any, count: int = 1) -> int | None:
        """Whole seconds to wait before ``count`` more events fit, or None if they fit now."""
        now = self.clock()
        events = self.events.setdefault(key, deque())
        while events and events[0] <= now - self.window:
            events.popleft()
        if len(events) + count <= self.limit:
            return None
        if count > self.limit:
            return max(1, math.ceil(self.window))
        blocking = events[len(events) + count - self.limit - 1]
        return max(1, math.ceil(blocking + self.window - now))

    def record(self, key: Any, count: int = 1) -> None:
        self.events.setdefault(key, deque()).extend([self.clock()] * count)


def _new_file_id(prefix: str, counter: int) -> str:
    raw = counter.to_bytes(6, "big") + secrets.token_bytes(18)
    return prefix + base64.urlsafe_b64encode(raw).decode().rstrip("=")


class TelegramWorld:
    """The whole simulated Telegram: accounts, chats, messages, files and update queues."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self._user_ids = itertools.count(100_000_001)
        self._bot_ids = itertools.count(7_000_000_001)
        self._channel_ids = itertools.count(1)
        self._file_counter = itertools.count(1)
        self._group_ids = itertools.count(int(clock()) * 1000)
        self.users: dict[int, SandboxUser] = {}
        self.bots: dict[int, SandboxBot] = {}
        self.bots_by_token: dict[str, SandboxBot] = {}
        self.chats: dict[int, SandboxChat] = {}
        self.messages: dict[int, dict[int, StoredMessage]] = {}
        self.next_message_id: dict[int, int] = {}
        self.files: dict[str, StoredFile] = {}
        self.updates: dict[int, UpdateQueue] = {}
        self.commands: dict[int, list[dict[str, str]]] = {}

    # ------------------------------------------------------------------ accounts and chats

    def now(self) -> int:
        return int(self.clock())

    def add_user(self, first_name: str, username: str | None) -> SandboxUser:
        user = SandboxUser(next(self._user_ids), first_name, username)
        self.users[user.id] = user
        return user

    def add_bot(self, username: str, first_name: str) -> SandboxBot:
        bot_id = next(self._bot_ids)
        secret = secrets.token_urlsafe(26)[:35]
        bot = SandboxBot(bot_id, username, f"{bot_id}:{secret}", first_name or username)
        self.bots[bot.id] = bot
        self.bots_by_token[bot.token] = bot
        self.updates[bot.id] = UpdateQueue(next_update_id=secrets.randbelow(10**8) + 10**8)
        return bot

    def add_chat(
        self, kind: str, title: str, username: str | None, members: list[int], admins: list[int]
    ) -> SandboxChat:
        for account in [*members, *admins]:
            if account not in self.users and account not in self.bots:
                raise ValueError(f"unknown user or bot id {account}")
        if username is not None and self.find_chat_by_username(username) is not None:
            raise ValueError(f"username @{username} is taken")
        chat_id = -(1_000_000_000_000 + next(self._channel_ids))
        everyone = list(dict.fromkeys([*admins, *members]))
        chat = SandboxChat(chat_id, kind, title, username, everyone, list(admins))
        self.chats[chat.id] = chat
        self.messages[chat.id] = {}
        self.next_message_id[chat.id] = 1
        return chat

    def find_chat_by_username(self, username: str) -> SandboxChat | None:
        wanted = username.lstrip("@").lower()
        for chat in self.chats.values():
            if chat.username is not None and chat.username.lower() == wanted:
                return chat
        return None

    def lookup_chat(self, chat: int | str) -> SandboxChat | None:
        if isinstance(chat, str):
            if chat.startswith("@"):
                return self.find_chat_by_username(chat)
            try:
                chat = int(chat)
            except ValueError:
                return None
        return self.chats.get(chat)

    # ------------------------------------------------------------------ rendering

    def user_json(self, account_id: int) -> dict[str, Any] | None:
        if account_id in self.bots:
            bot = self.bots[account_id]
            return {
                "id": bot.id,
                "is_bot": True,
                "first_name": bot.first_name,
                "username": bot.username,
            }
        user = self.users.get(account_id)
        if user is None:
            return None
        data: dict[str, Any] = {"id": user.id, "is_bot": False, "first_name": user.first_name}
        if user.username:
            data["username"] = user.username
        return data

    def chat_json(self, chat: SandboxChat) -> dict[str, Any]:
        data: dict[str, Any] = {"id": chat.id, "title": chat.title}
        if chat.username:
            data["username"] = chat.username
        data["type"] = chat.type
        return data

    def render(self, message: StoredMessage, *, with_reply: bool = True) -> dict[str, Any]:
        chat = self.chats[message.chat_id]
        data: dict[str, Any] = {"message_id": message.message_id}
        if message.thread_id is not None:
            data["message_thread_id"] = message.thread_id
        if message.from_user is not None:
            data["from"] = dict(message.from_user)
        if message.sender_chat_id is not None:
            data["sender_chat"] = self.chat_json(self.chats[message.sender_chat_id])
        data["chat"] = self.chat_json(chat)
        data["date"] = message.date
        if message.edit_date is not None:
            data["edit_date"] = message.edit_date
        if message.media_group_id is not None:
            data["media_group_id"] = message.media_group_id
        replied = self.live_message(chat.id, message.reply_to) if message.reply_to else None
        if with_reply and replied is not None:
            data["reply_to_message"] = self.render(replied, with_reply=False)
        self._render_content(message, data)
        return data

    @staticmethod
    def _render_content(message: StoredMessage, data: dict[str, Any]) -> None:
        if message.text is not None:
            data["text"] = message.text
            if message.entities:
                data["entities"] = [dict(e) for e in message.entities]
            if message.link_preview_options:
                data["link_preview_options"] = dict(message.link_preview_options)
        if message.media_kind is not None:
            media = message.media
            data[message.media_kind] = (
                [dict(size) for size in media] if isinstance(media, list) else dict(media)
            )
        if message.caption:
            data["caption"] = message.caption
            if message.caption_entities:
                data["caption_entities"] = [dict(e) for e in message.caption_entities]
            if message.show_caption_above_media:
                data["show_caption_above_media"] = True
        if message.has_media_spoiler:
            data["has_media_spoiler"] = True

    # ------------------------------------------------------------------ messages

    def live_message(self, chat_id: int, message_id: int | None) -> StoredMessage | None:
        if message_id is None:
            return None
        message = self.messages.get(chat_id, {}).get(message_id)
        return None if message is None or message.deleted else message

    def add_message(self, chat: SandboxChat, **fields: Any) -> StoredMessage:
        message_id = self.next_message_id[chat.id]
        self.next_message_id[chat.id] = message_id + 1
        message = StoredMessage(chat_id=chat.id, message_id=message_id, date=self.now(), **fields)
        replied = self.live_message(chat.id, message.reply_to)
        if chat.type == "supergroup" and replied is not None:
            # Replies in supergroups form threads named after the message that started them.
            message.thread_id = replied.thread_id or replied.message_id
        self.messages[chat.id][message_id] = message
        return message

    def new_media_group_id(self) -> str:
        return str(next(self._group_ids))

    # ------------------------------------------------------------------ updates

    def deliver(self, chat: SandboxChat, kind: str, message: StoredMessage) -> None:
        """Queue ``kind`` (message, channel_post, edited_...) for every bot that would see it.

        The author of a message never gets it back, and in groups bots never see other bots'
        messages, as Telegram keeps bots from talking to each other in a loop.
        """
        payload = self.render(message)
        author_is_bot = message.author_id in self.bots
        for member in chat.members:
            if member not in self.bots or member == message.author_id:
                continue
            if author_is_bot and chat.type != "channel":
                continue
            self.enqueue(member, kind, payload)

    def enqueue(self, bot_id: int, kind: str, payload: dict[str, Any]) -> None:
        queue = self.updates[bot_id]
        if not queue.wants(kind):
            return
        queue.pending.append({"update_id": queue.next_update_id, kind: payload})
        queue.next_update_id += 1
        queue.wake()

    # ------------------------------------------------------------------ files

    def add_file(
        self, kind: str, data: bytes, folder: str, extension: str, **extra: Any
    ) -> StoredFile:
        counter = next(self._file_counter)
        prefixes = {"photo": "AgACAgIAAxk", "document": "BQACAgIAAxk", "video": "BAACAgIAAxk"}
        stored = StoredFile(
            file_id=_new_file_id(prefixes.get(kind, "CAACAgIAAxk"), counter),
            file_unique_id=_new_file_id("AQAD", counter)[:20],
            kind=kind,
            data=data,
            file_path=f"{folder}/file_{counter}.{extension}",
            **extra,
        )
        self.files[stored.file_id] = stored
        return stored

    def store_photo(self, data: bytes, max_bytes: int) -> list[dict[str, Any]]:
        """Keep an uploaded photo the way Telegram does: a few sizes, each its own file.

        Smaller sizes are re-encoded JPEG thumbnails; the largest keeps the uploaded bytes when
        its longest side is within 2560 pixels (Telegram would re-encode it too, but keeping the
        bytes lets tests compare what came in with what goes out).
        """
        if not data:
            raise PhotoError("file must be non-empty")
        if len(data) > max_bytes:
            raise PhotoError(
                f"file of size {len(data)} bytes is too big for a photo; "
                f"the maximum size is {max_bytes} bytes"
            )
        try:
            image = Image.open(io.BytesIO(data))
            image.load()
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
            raise PhotoError("IMAGE_PROCESS_FAILED") from None
        width, height = image.size
        if width + height > 10_000 or max(width, height) > 20 * min(width, height):
            raise PhotoError("PHOTO_INVALID_DIMENSIONS")
        group = secrets.token_hex(8)
        sizes = []
        for side in (s for s in PHOTO_SIDES if s < max(width, height)):
            sizes.append(self._photo_size(_jpeg_within(image, side), group))
        if max(width, height) <= PHOTO_SIDES[-1]:
            sizes.append(self._photo_size((data, width, height), group))
        return sizes

    def _photo_size(self, encoded: tuple[bytes, int, int], group: str) -> dict[str, Any]:
        data, width, height = encoded
        stored = self.add_file(
            "photo",
            data,
            "photos",
            "jpg",
            mime_type="image/jpeg",
            width=width,
            height=height,
            group=group,
        )
        return {
            "file_id": stored.file_id,
            "file_unique_id": stored.file_unique_id,
            "file_size": len(data),
            "width": width,
            "height": height,
        }

    def photo_sizes_of(self, stored: StoredFile) -> list[dict[str, Any]]:
        """All sizes of the photo one of whose sizes is ``stored`` (resending by file_id)."""
        siblings = [f for f in self.files.values() if f.kind == "photo" and f.group == stored.group]
        siblings.sort(key=lambda f: f.width * f.height)
        return [
            {
                "file_id": f.file_id,
                "file_unique_id": f.file_unique_id,
                "file_size": len(f.data),
                "width": f.width,
                "height": f.height,
            }
            for f in siblings
        ]


def _jpeg_within(image: Image.Image, side: int) -> tuple[bytes, int, int]:
    copy = image.convert("RGB")
    copy.thumbnail((side, side))
    out = io.BytesIO()
    copy.save(out, format="JPEG", quality=85)
    return out.getvalue(), copy.width, copy.height
