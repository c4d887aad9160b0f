"""Telegram: posting to a channel or group through python-telegram-bot's `Bot`.

The Bot API has no idempotency key, so a send whose outcome is unknown (a timeout after the request
left) is never retried automatically: Telegram delivery is at most once, and such a delivery is
dead-lettered for the operator to check. Sends that the server clearly refused or never received are
retried as usual.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
import uuid
from typing import Any

import httpx
from telegram import Bot, InputMediaPhoto, Message, MessageEntity, ReplyParameters
from telegram.error import (
    BadRequest,
    ChatMigrated,
    Forbidden,
    InvalidToken,
    NetworkError,
    RetryAfter,
    TelegramError,
    TimedOut,
)

from relaybird import richtext
from relaybird.config import TelegramAccount
from relaybird.model import Post, TargetRef
from relaybird.networks.base import (
    Capabilities,
    EventSink,
    PermanentError,
    RateLimited,
    ReplyTarget,
    TemporaryError,
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


#: What python-telegram-bot raises when a 200 carries JSON it cannot read as the promised object
#: (no `result`, a list instead of a message, a field of the wrong type).
UNREADABLE_RESULT: tuple[type[Exception], ...] = (KeyError, TypeError, ValueError, AttributeError)


#: After these on a send, the message may or may not be in the chat.
OUTCOME_UNKNOWN: tuple[type[Exception], ...] = (TelegramError, *UNREADABLE_RESULT)


def short(message: str, limit: int = 160) -> str:
    """One line of a Telegram error: PTB puts whole response bodies (HTML pages) in messages."""
    line = message.split(". Parsing the server response", 1)[0].splitlines()[0] if message else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


def never_sent(error: NetworkError) -> bool:
    """Whether a failed send certainly did not post: refused with an HTTP error status (a 5xx
    from the server or its gateway), or the connection was never made.

    A transport failure after connecting (a reset, a broken answer) leaves the outcome unknown,
    and Telegram has no idempotency key, so such a send is not repeated.
    """
    cause = error.__cause__
    if not isinstance(cause, httpx.HTTPError):
        return True
    return isinstance(cause, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)


def retry_seconds(error: RetryAfter) -> float:
    value = error.retry_after
    return value.total_seconds() if isinstance(value, dt.timedelta) else float(value)


class TelegramNetwork:
    network = "telegram"
    capabilities = CAPABILITIES

    def __init__(self, account: TelegramAccount) -> None:
        self.account = account
        self.name = account.name
        root = str(account.base_url).rstrip("/")
        self.chat_ref: str | int = account.chat
        self.bot = Bot(
            account.bot_token.get_secret_value(),
            base_url=f"{root}/bot",
            base_file_url=f"{root}/file/bot",
        )
        self.chat_id: int = 0
        self.chat_username: str | None = None

    async def open(self) -> None:
        try:
            await self.bot.initialize()
            chat = await self.bot.get_chat(self.chat_ref)
        except InvalidToken as error:
            raise PermanentError(f"{self.name}: Telegram refused the bot token") from error
        except (BadRequest, Forbidden) as error:
            raise PermanentError(
                f"{self.name}: cannot use chat {self.chat_ref}: {error.message}"
            ) from error
        except TelegramError as error:
            raise TemporaryError(
                f"{self.name}: Telegram unreachable: {type(error).__name__}"
            ) from error
        except UNREADABLE_RESULT as error:
            raise TemporaryError(
                f"{self.name}: unreadable answer from Telegram ({type(error).__name__})"
            ) from None
        self.chat_id = chat.id
        self.chat_username = chat.username

    async def close(self) -> None:
        await self.bot.shutdown()

    async def listen(self, cursor: str | None, sink: EventSink) -> None:
        from relaybird.networks.telegram_inbound import TelegramListener

        listener = TelegramListener(
            self.name,
            self.bot,
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
        message_entities = [MessageEntity(**entity) for entity in entities] or None
        message_id = self._message_id(ref)
        try:
            try:
                await self.bot.edit_message_text(
                    text=text,
                    entities=message_entities,
                    chat_id=self.chat_id,
                    message_id=message_id,
                )
            except BadRequest as error:
                if "no text in the message" not in error.message.lower():
                    raise
                await self.bot.edit_message_caption(
                    caption=text,
                    caption_entities=message_entities,
                    chat_id=self.chat_id,
                    message_id=message_id,
                )
        except RetryAfter as error:
            raise RateLimited(
                f"{self.name}: flood control", time.time() + retry_seconds(error)
            ) from error
        except (BadRequest, Forbidden) as error:
            if "not modified" in error.message.lower():
                return ref
            raise PermanentError(
                f"{self.name}: Telegram refused the edit: {short(error.message)}"
            ) from error
        except NetworkError as error:
            raise TemporaryError(f"{self.name}: network error: {short(error.message)}") from error
        except TelegramError as error:
            raise TemporaryError(f"{self.name}: {short(error.message)}") from error
        except UNREADABLE_RESULT as error:
            raise self._unreadable(error) from None
        return ref

    async def delete(self, ref: TargetRef) -> None:
        try:
            await self.bot.delete_message(chat_id=self.chat_id, message_id=self._message_id(ref))
        except RetryAfter as error:
            raise RateLimited(
                f"{self.name}: flood control", time.time() + retry_seconds(error)
            ) from error
        except BadRequest as error:
            if "not found" not in error.message.lower():
                raise PermanentError(
                    f"{self.name}: Telegram refused the delete: {short(error.message)}"
                ) from error
        except NetworkError as error:
            raise TemporaryError(f"{self.name}: network error: {short(error.message)}") from error
        except TelegramError as error:
            raise TemporaryError(f"{self.name}: {short(error.message)}") from error
        except UNREADABLE_RESULT as error:
            raise self._unreadable(error) from None

    def _unreadable(self, error: Exception) -> TemporaryError:
        return TemporaryError(
            f"{self.name}: unreadable answer from Telegram ({type(error).__name__})"
        )

    def new_key(self) -> str:
        return uuid.uuid4().hex

    def _ref(self, message: Message) -> TargetRef:
        url = (
            f"https://t.me/{self.chat_username}/{message.message_id}" if self.chat_username else ""
        )
        return TargetRef(id=f"{self.chat_id}:{message.message_id}", url=url)

    async def publish(
        self, post: Post, reply_to: ReplyTarget | None, key: str, retrying: bool
    ) -> TargetRef:
        """Send one part. There is no idempotency key: a send whose outcome cannot be known (a
        timeout, a success answer that cannot be read) is dead-lettered, never retried blindly."""
        text, entities = post_to_entities(post)
        message_entities = [MessageEntity(**entity) for entity in entities]
        reply = None
        if reply_to is not None:
            reply = ReplyParameters(
                message_id=int(reply_to.parent.id.rsplit(":", 1)[1]),
                allow_sending_without_reply=True,
            )
        try:
            return self._ref(await self._send(post, text, message_entities, reply))
        except RetryAfter as error:
            retry_at = time.time() + retry_seconds(error)
            raise RateLimited(
                f"{self.name}: flood control, retry in {retry_seconds(error):.0f} s", retry_at
            ) from error
        except TimedOut as error:
            raise PermanentError(
                f"{self.name}: timed out; Telegram cannot tell whether the message landed, so it is"
                " not retried automatically (check the chat, then `relaybird retry`)"
            ) from error
        except (BadRequest, Forbidden, InvalidToken) as error:
            raise PermanentError(
                f"{self.name}: Telegram refused the message: {short(error.message)}"
            ) from error
        except NetworkError as error:
            if never_sent(error):
                raise TemporaryError(
                    f"{self.name}: network error: {short(error.message)}"
                ) from error
            raise PermanentError(
                f"{self.name}: the connection broke after the message was sent"
                f" ({short(error.message)}); it may have landed, so it is not retried"
                " automatically (check the chat, then `relaybird retry`)"
            ) from error
        except ChatMigrated as error:
            raise PermanentError(
                f"{self.name}: the group became supergroup {error.new_chat_id}; set `chat` to it"
            ) from error
        except OUTCOME_UNKNOWN as error:
            raise PermanentError(
                f"{self.name}: Telegram accepted the message but its answer could not be read"
                f" ({type(error).__name__}); it may have landed, so it is not retried"
                " automatically (check the chat, then `relaybird retry`)"
            ) from None

    async def _send(
        self,
        post: Post,
        text: str,
        entities: list[MessageEntity],
        reply: ReplyParameters | None,
    ) -> Message:
        common: dict[str, Any] = {"chat_id": self.chat_id, "reply_parameters": reply}
        photos = [item.data for item in post.media if item.data is not None]
        spoiler = post.sensitive or any(item.sensitive for item in post.media)
        if not photos:
            return await self.bot.send_message(text=text, entities=entities or None, **common)
        if len(photos) == 1:
            return await self.bot.send_photo(
                photo=photos[0],
                caption=text or None,
                caption_entities=entities or None,
                has_spoiler=spoiler,
                **common,
            )
        album = [
            InputMediaPhoto(
                media=data,
                caption=text if index == 0 and text else None,
                caption_entities=entities if index == 0 and entities else None,
                has_spoiler=spoiler,
            )
            for index, data in enumerate(photos)
        ]
        messages = await self.bot.send_media_group(media=album, **common)
        return messages[0]
