"""Telegram: posting to a channel or group through the Bot API (`telegram_api`).

The Bot API has no idempotency key, so a send whose outcome is unknown (a timeout after the request
left) is never retried automatically: Telegram delivery is at most once, and such a delivery is
dead-lettered for the operator to check. Sends that the server clearly refused or never received are
retried as usual.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from relaybird import richtext
from relaybird.config import TelegramAccount
from relaybird.model import Media, Post, TargetRef
from relaybird.networks.base import (
    Capabilities,
    EventSink,
    MentionSink,
    PermanentError,
    RateLimited,
    ReplyTarget,
    TemporaryError,
)
from relaybird.networks.telegram_api import (
    ApiError,
    ChatMigrated,
    FloodWait,
    InDoubt,
    NotSent,
    Refused,
    TelegramApi,
    Unreadable,
    Upload,
)
from relaybird.networks.telegram_format import post_to_entities

log = logging.getLogger(__name__)

CAPABILITIES = Capabilities(
    max_text=4096,
    max_text_with_media=1024,
    measure=lambda text, spans: richtext.count_utf16(text),
    max_media=10,
    max_image_bytes=10 * 1024 * 1024,
    alt_text=False,
    idempotent_create=False,
)

#: Refusals that say the edit or delete itself cannot work; others are waited out.
_REFUSING = frozenset({400, 403})


def message_id_of(result: Any) -> int:
    """The id of the Message a send answered with; Unreadable when the answer is not one."""
    message = result[0] if isinstance(result, list) and result else result
    found = message.get("message_id") if isinstance(message, dict) else None
    if not isinstance(found, int) or isinstance(found, bool):
        raise Unreadable("answer is not a message")
    return found


class TelegramNetwork:
    network = "telegram"
    capabilities = CAPABILITIES

    def __init__(self, account: TelegramAccount) -> None:
        self.account = account
        self.name = account.name
        root = str(account.base_url).rstrip("/")
        self.chat_ref: str | int = account.chat
        self.api = TelegramApi(
            account.bot_token.get_secret_value(),
            base_url=f"{root}/bot",
            base_file_url=f"{root}/file/bot",
        )
        self.chat_id: int = 0
        self.chat_username: str | None = None
        #: The bot's own username (without @), known once `open` has asked getMe.
        self.username: str = ""

    async def open(self) -> None:
        try:
            me = await self.api.call("getMe")
            chat = await self.api.call("getChat", {"chat_id": self.chat_ref})
            if not isinstance(me, dict):
                raise Unreadable("getMe answered no user")
            chat_id, chat_username = self._chat_of(chat)
            username = me.get("username")
        except Refused as error:
            if error.token_refused:
                raise PermanentError(f"{self.name}: Telegram refused the bot token") from None
            if error.code in _REFUSING:
                raise PermanentError(
                    f"{self.name}: cannot use chat {self.chat_ref}: {error.description}"
                ) from None
            raise TemporaryError(f"{self.name}: Telegram unreachable: {error}") from None
        except Unreadable as error:
            raise TemporaryError(
                f"{self.name}: unreadable answer from Telegram ({error})"
            ) from None
        except ApiError as error:
            raise TemporaryError(f"{self.name}: Telegram unreachable: {error}") from None
        self.chat_id = chat_id
        self.chat_username = chat_username
        self.username = username if isinstance(username, str) else ""

    @staticmethod
    def _chat_of(chat: Any) -> tuple[int, str | None]:
        found = chat.get("id") if isinstance(chat, dict) else None
        if not isinstance(found, int) or isinstance(found, bool):
            raise Unreadable("answer is not a chat")
        username = chat.get("username")
        return found, username if isinstance(username, str) and username else None

    async def close(self) -> None:
        await self.api.close()

    async def listen(self, cursor: str | None, sink: EventSink) -> None:
        from relaybird.networks.telegram_inbound import TelegramListener

        listener = TelegramListener(
            self.name,
            self.api,
            self.chat_id,
            self.chat_username,
            poll_timeout=int(self.account.poll_timeout),
            media_hosts=tuple(self.account.media_hosts),
        )
        await listener.run(cursor, sink)

    @staticmethod
    def _message_id(ref: TargetRef) -> int:
        return int(ref.id.rsplit(":", 1)[1])

    async def edit(self, ref: TargetRef, post: Post) -> TargetRef:
        """Edit the text, or the caption when the copy is a photo or album."""
        text, entities = post_to_entities(post)
        target = {"chat_id": self.chat_id, "message_id": self._message_id(ref)}
        try:
            try:
                await self.api.call(
                    "editMessageText", {**target, "text": text, "entities": entities or None}
                )
            except Refused as error:
                if error.code != 400 or "no text in the message" not in error.description.lower():
                    raise
                await self.api.call(
                    "editMessageCaption",
                    {**target, "caption": text, "caption_entities": entities or None},
                )
        except Refused as error:
            if error.code not in _REFUSING:
                raise TemporaryError(f"{self.name}: {error}") from None
            if "not modified" in error.description.lower():
                return ref
            raise PermanentError(f"{self.name}: Telegram refused the edit: {error}") from None
        except ApiError as error:
            raise self._retryable(error) from None
        return ref

    async def delete(self, ref: TargetRef) -> None:
        params = {"chat_id": self.chat_id, "message_id": self._message_id(ref)}
        try:
            await self.api.call("deleteMessage", params)
        except Refused as error:
            if error.code != 400:
                raise TemporaryError(f"{self.name}: {error}") from None
            if "not found" not in error.description.lower():
                raise PermanentError(f"{self.name}: Telegram refused the delete: {error}") from None
        except ApiError as error:
            raise self._retryable(error) from None

    def _retryable(self, error: ApiError) -> TemporaryError:
        """The error of an edit or delete that may be made again: repeating them is harmless."""
        if isinstance(error, FloodWait):
            return RateLimited(f"{self.name}: flood control", error.retry_at)
        if isinstance(error, Unreadable):
            return TemporaryError(f"{self.name}: unreadable answer from Telegram ({error})")
        if isinstance(error, NotSent | InDoubt):
            return TemporaryError(f"{self.name}: network error: {error}")
        return TemporaryError(f"{self.name}: {error}")

    # other people's posts

    def mention_names(self) -> list[str]:
        return [self.username] if self.username else []

    async def reply_target(self, post_id: str) -> ReplyTarget:
        ref = TargetRef(id=post_id)
        return ReplyTarget(parent=ref, root=ref)

    async def fetch_post(self, post_id: str) -> Post | None:
        """Bots cannot read a message by id: such posts are known only from the updates the
        listener already passed on (the desk remembers recent ones)."""
        return None

    async def listen_mentions(self, cursor: str | None, sink: MentionSink) -> None:
        """Mentions of a bot arrive on its ordinary stream, in the chats it is in."""
        return

    def new_key(self) -> str:
        return uuid.uuid4().hex

    def _ref(self, message_id: int) -> TargetRef:
        url = f"https://t.me/{self.chat_username}/{message_id}" if self.chat_username else ""
        return TargetRef(id=f"{self.chat_id}:{message_id}", url=url)

    async def publish(
        self, post: Post, reply_to: ReplyTarget | None, key: str, retrying: bool
    ) -> TargetRef:
        """Send one part. There is no idempotency key: a send whose outcome cannot be known (a
        timeout, a success answer that cannot be read) is dead-lettered, never retried blindly."""
        text, entities = post_to_entities(post)
        reply = None
        if reply_to is not None:
            reply = {
                "message_id": int(reply_to.parent.id.rsplit(":", 1)[1]),
                "allow_sending_without_reply": True,
            }
        try:
            return self._ref(message_id_of(await self._send(post, text, entities, reply)))
        except ApiError as error:
            raise self._send_failure(error) from None

    def _send_failure(self, error: ApiError) -> Exception:
        """What a failed send means for the worker: retried only when it certainly did not post."""
        if isinstance(error, FloodWait):
            return RateLimited(f"{self.name}: {error}", error.retry_at)
        if isinstance(error, NotSent):
            return TemporaryError(f"{self.name}: network error: {error}")
        if isinstance(error, Refused):
            return PermanentError(f"{self.name}: Telegram refused the message: {error}")
        if isinstance(error, ChatMigrated):
            return PermanentError(
                f"{self.name}: the group became supergroup {error.new_chat_id}; set `chat` to it"
            )
        if isinstance(error, InDoubt) and error.timed_out:
            return PermanentError(
                f"{self.name}: timed out; Telegram cannot tell whether the message landed, so it is"
                " not retried automatically (check the chat, then `relaybird retry`)"
            )
        if isinstance(error, InDoubt):
            return PermanentError(
                f"{self.name}: the connection broke after the message was sent ({error}); it may"
                " have landed, so it is not retried automatically (check the chat, then"
                " `relaybird retry`)"
            )
        return PermanentError(
            f"{self.name}: Telegram accepted the message but its answer could not be read"
            f" ({error}); it may have landed, so it is not retried automatically (check the chat,"
            " then `relaybird retry`)"
        )

    async def _send(
        self,
        post: Post,
        text: str,
        entities: list[dict[str, Any]],
        reply: dict[str, Any] | None,
    ) -> Any:
        """The raw answer of the send: one Message, or the Messages of an album."""
        common: dict[str, Any] = {"chat_id": self.chat_id, "reply_parameters": reply}
        photos = [item for item in post.media if item.data is not None]
        spoiler = post.sensitive or any(item.sensitive for item in post.media)
        if not photos:
            params = {**common, "text": text, "entities": entities or None}
            return await self.api.call("sendMessage", params)
        if len(photos) == 1:
            params = {
                **common,
                "caption": text or None,
                "caption_entities": entities or None,
                "has_spoiler": spoiler,
            }
            return await self.api.call("sendPhoto", params, {"photo": _upload(photos[0], 0)})
        album = [
            {
                "type": "photo",
                "media": f"attach://photo{index}",
                "caption": text if index == 0 and text else None,
                "caption_entities": entities if index == 0 and entities else None,
                "has_spoiler": spoiler,
            }
            for index in range(len(photos))
        ]
        media = [{key: value for key, value in item.items() if value is not None} for item in album]
        files = {f"photo{index}": _upload(item, index) for index, item in enumerate(photos)}
        return await self.api.call("sendMediaGroup", {**common, "media": media}, files)


def _upload(item: Media, index: int) -> Upload:
    return Upload(item.data or b"", item.mime or "image/jpeg", f"photo{index}")
