"""Telegram as a source: long polling `getUpdates` for one channel or group.

Confirmation is the whole game here. Asking `getUpdates` with `offset = X` makes the server forget
every update below X, so the offset sent never goes beyond what is already in the sink (or was
deliberately ignored): a crash at any point leaves the unaccepted updates on the server, and the
next start fetches them again from the saved cursor (the last update_id accepted).

Albums reach a bot as separate messages sharing a `media_group_id`; they are held until no part
has come for `album_wait` seconds and then become one post. While one is held, nothing after it is
emitted or confirmed, so the server keeps re-sending the held updates: the listener then polls at
a short interval instead of long polling, and skips what it already holds.

What cannot be followed: bots get no update when a message is deleted, so deletions of
Telegram-sourced posts are never relayed. Update ids continue from the saved cursor; after a week
without any update Telegram may start them afresh at a random value, which a cursor cannot cover.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Any

from relaybird.media import MediaFetcher, MediaPolicy
from relaybird.model import Author, Event, EventKind, Media, Post
from relaybird.networks.base import EventSink, TemporaryError
from relaybird.networks.telegram_api import (
    ApiError,
    FloodWait,
    InDoubt,
    NotSent,
    Refused,
    TelegramApi,
    Unreadable,
)
from relaybird.networks.telegram_format import file_id_of, message_to_post
from relaybird.richtext import PayloadError, as_dict, as_id, as_int, as_text

log = logging.getLogger(__name__)

#: What the Bot API lets a bot download through getFile; bigger files stay links to the original.
MAX_GETFILE_BYTES = 20 * 1024 * 1024
#: Polls in a row in which one file's getFile may fail before its post goes on without the bytes
#: (with the backoff between polls, a couple of minutes): one file Telegram cannot serve must
#: not hold the chat for good, while an outage of a few seconds costs no media.
MAX_FILE_ATTEMPTS = 8
ALLOWED_UPDATES = ("channel_post", "edited_channel_post", "message", "edited_message")
_NEW = frozenset({"channel_post", "message"})
#: Albums remembered after they were emitted, so that editing one part edits the whole post.
_REMEMBERED_ALBUMS = 256
#: How often held updates are fetched again while an album is collected (see the module docstring).
_ALBUM_POLL_INTERVAL = 0.1
#: Seconds a long poll may take beyond its own `timeout` before the read counts as failed.
_READ_MARGIN = 10.0

_GROUPS = frozenset({"group", "supergroup"})


def sender_in_group(messages: list[dict[str, Any]]) -> Author | None:
    """The person who wrote a group message, kept apart from the chat that stands for the account.

    The post's author is the chat (its id), so that replies inside the chat are self-replies; who
    actually spoke is what the crosspost bot's allowlist, its author check and its per-person limit
    need. A message sent on behalf of a chat (`sender_chat`: a channel, or an anonymous admin as
    the group itself) is that chat's; `from` is then only a placeholder bot. Channels and private
    chats have no one else to name: None.
    """
    ordered = sorted(messages, key=lambda message: as_int(message.get("message_id")) or 0)
    message = ordered[0] if ordered else {}
    if as_dict(message.get("chat")).get("type") not in _GROUPS:
        return None
    sender_chat = as_dict(message.get("sender_chat"))
    if sender_chat:
        return _telegram_author(sender_chat, as_text(sender_chat.get("title")))
    user = as_dict(message.get("from"))
    names = (as_text(user.get(key)) for key in ("first_name", "last_name"))
    return _telegram_author(user, " ".join(name for name in names if name))


def _telegram_author(who: dict[str, Any], display_name: str) -> Author | None:
    found = as_id(who.get("id"))
    if found is None:
        return None
    username = as_text(who.get("username"))
    return Author(
        network="telegram",
        handle=username,
        display_name=display_name,
        url=f"https://t.me/{username}" if username else "",
        id=found,
    )


@dataclass
class _Held:
    """Updates fetched but not yet handed on: one plain update, or the parts of one album."""

    update_ids: list[int]
    kind: str = ""
    messages: list[dict[str, Any]] = field(default_factory=list)
    album: str | None = None
    last_part_at: float = 0.0


class TelegramListener:
    """Turns one chat's updates into events; `run` keeps going until it is cancelled."""

    def __init__(
        self,
        name: str,
        api: TelegramApi,
        chat_id: int,
        chat_username: str | None,
        *,
        poll_timeout: int = 30,
        album_wait: float = 1.0,
        retry_base: float = 1.0,
        retry_max: float = 60.0,
        media_hosts: tuple[str, ...] = (),
    ) -> None:
        """Media are fetched from the Bot API's file host only, plus any `media_hosts` entries."""
        self.name = name
        self.api = api
        self.chat_id = chat_id
        self.chat_username = chat_username
        self.poll_timeout = poll_timeout
        self.album_wait = album_wait
        self.retry_base = retry_base
        self.retry_max = retry_max
        #: The last update_id handed on or ignored with nothing unhandled below it: safe to confirm.
        self._confirmed: int | None = None
        self._saved: int | None = None
        #: The last update_id taken from the server (held ones included), to skip re-sent ones.
        self._fetched = 0
        self._held: list[_Held] = []
        self._open: set[int] = set()
        self._albums: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()
        #: How many polls in a row a file's getFile failed on the network, by file_id.
        self._file_failures: dict[str, int] = {}
        self.media_policy = replace(
            MediaPolicy.of(api.base_file_url, extra_hosts=media_hosts),
            max_bytes=MAX_GETFILE_BYTES,
        )
        self._media: MediaFetcher | None = None

    # ---------------------------------------------------------------------------------- the loop

    async def run(self, cursor: str | None, sink: EventSink) -> None:
        """Poll until cancelled; failures are waited out here, never raised to the caller."""
        self._media = MediaFetcher(self.api.session(), self.media_policy, self.name)
        await self._poll(cursor, sink)

    async def _poll(self, cursor: str | None, sink: EventSink) -> None:
        if cursor is not None:
            self._confirmed = self._saved = self._fetched = int(cursor)
        failures = 0
        while True:
            try:
                if self._confirmed is None:
                    await self._start_fresh(sink)
                await self._cycle(sink)
                failures = 0
            except FloodWait as error:
                log.warning(
                    "%s: Telegram asks to wait %.0f s before polling again",
                    self.name,
                    error.retry_after,
                )
                await asyncio.sleep(error.retry_after)
            except ApiError as error:
                failures += 1
                sink.set_connected(self.name, False, self._failure_detail(error))
                await self._back_off(failures, type(error).__name__)
            except TemporaryError as error:
                # The sink could not take an update (the store refused a write): it stays held
                # and unconfirmed, so the next cycle hands it on again.
                failures += 1
                sink.set_connected(self.name, False, "an update could not be handed on")
                await self._back_off(failures, type(error).__name__)

    @staticmethod
    def _failure_detail(error: ApiError) -> str:
        """What `relaybird status` shows while polling fails."""
        if isinstance(error, Refused) and error.code == 409:
            return (
                "another program is polling this bot's updates; stop it or give relaybird"
                " a bot of its own"
            )
        if isinstance(error, Refused) and (error.token_refused or error.code == 403):
            return f"Telegram refused the bot: {error.description}"
        return f"polling failed: {error}"

    async def _back_off(self, failures: int, reason: str) -> None:
        """Exponential, jittered so that restarted instances do not poll in step."""
        ceiling = min(self.retry_max, self.retry_base * 2 ** min(failures - 1, 16))
        delay = random.uniform(ceiling / 2, ceiling)
        log.warning("%s: polling stopped (%s); retrying in %.1f s", self.name, reason, delay)
        await asyncio.sleep(delay)

    async def _start_fresh(self, sink: EventSink) -> None:
        """First start: remember where now is without relaying the backlog.

        `offset=-1` returns only the newest pending update (the server forgets the others); its id
        is the starting point. With nothing pending, "0" says that whatever comes next is new.
        """
        updates = await self._get_updates(-1, 0)
        sink.set_connected(self.name, True)
        ids = (as_int(update.get("update_id")) for update in updates)
        start = max((found for found in ids if found is not None), default=0)
        self._confirmed = self._fetched = start
        self._save(sink, start)
        log.info("%s: first start; relaying Telegram updates after %d", self.name, start)

    async def _cycle(self, sink: EventSink) -> None:
        album = self._waiting_album()
        if album is not None:
            # Held updates are re-sent at once, so a long poll would spin: look again shortly.
            due = album.last_part_at + self.album_wait - time.monotonic()
            await asyncio.sleep(min(max(due, 0.0), _ALBUM_POLL_INTERVAL))
        updates = await self._get_updates(
            (self._confirmed or 0) + 1, 0 if self._held else self.poll_timeout
        )
        sink.set_connected(self.name, True)
        for update in updates:
            self._take(update)
        await self._flush(sink)

    async def _get_updates(self, offset: int, timeout: int) -> list[dict[str, Any]]:
        """The updates as the Bot API sent them (JSON objects), each to be read on its own.

        An answer that is not a list of updates is a failed poll (`Unreadable`), waited out
        like any other; the offset does not move, so nothing is lost.
        """
        result = await self.api.call(
            "getUpdates",
            {"offset": offset, "timeout": timeout, "allowed_updates": list(ALLOWED_UPDATES)},
            read_timeout=timeout + _READ_MARGIN,
        )
        if not isinstance(result, list):
            raise Unreadable("getUpdates answered something other than a list")
        updates = [update if isinstance(update, dict) else {} for update in result]
        if updates and all(as_int(update.get("update_id")) is None for update in updates):
            # Nothing to confirm them by: polling again at once would get them again at once.
            raise Unreadable("getUpdates answered updates without an update_id")
        return updates

    # ---------------------------------------------------------------------------------- holding

    def _waiting_album(self) -> _Held | None:
        return self._held[0] if self._held and self._held[0].album is not None else None

    def _take(self, update: dict[str, Any]) -> None:
        """Hold one raw update. One without a readable `update_id` cannot be confirmed by itself;
        it is skipped, and the confirmation of any later update lets the server forget it."""
        update_id = as_int(update.get("update_id"))
        if update_id is None:
            log.warning("%s: update without an update_id skipped", self.name)
            return
        if update_id <= self._fetched:
            return
        self._fetched = update_id
        self._open.add(update_id)
        kind, message = self._content(update)
        group = as_id(message.get("media_group_id")) if message and kind in _NEW else None
        if group is not None:
            for held in self._held:
                if held.album == group:
                    held.update_ids.append(update_id)
                    held.messages.append(message or {})
                    held.last_part_at = time.monotonic()
                    return
        self._held.append(
            _Held([update_id], kind, [message] if message else [], group, time.monotonic())
        )

    def _content(self, update: dict[str, Any]) -> tuple[str, dict[str, Any] | None]:
        """The kind and message of an update about the configured chat; ("", None) otherwise."""
        for kind in ALLOWED_UPDATES:
            message = update.get(kind)
            if isinstance(message, dict) and as_dict(message.get("chat")).get("id") == self.chat_id:
                return kind, message
        return "", None

    async def _flush(self, sink: EventSink) -> None:
        """Hand on what is ready, in order; an album still collecting holds back all after it."""
        while self._held:
            held = self._held[0]
            if held.album is not None and time.monotonic() < held.last_part_at + self.album_wait:
                break
            event = await self._event(held)
            still_open = self._open.difference(held.update_ids)
            confirmed = min(still_open) - 1 if still_open else self._fetched
            if event is not None:
                event.cursor = str(confirmed)
                await sink.accept(event)
                self._saved = confirmed
            self._held.pop(0)
            self._open = still_open
            self._confirmed = confirmed
        if self._confirmed is not None and self._confirmed != self._saved:
            self._save(sink, self._confirmed)

    def _save(self, sink: EventSink, cursor: int) -> None:
        sink.save_cursor(self.name, str(cursor))
        self._saved = cursor

    # ---------------------------------------------------------------------------------- events

    async def _event(self, held: _Held) -> Event | None:
        """The event for held updates, or None: nothing to relay, or a message that cannot be
        read (logged; it is confirmed all the same, so that it never blocks the chat)."""
        if not held.messages:
            return None
        try:
            if held.kind in _NEW:
                post = self._post(held.messages)
                if held.album is not None:
                    self._remember(held.album, held.messages)
                kind = EventKind.REPLY if post.reply_to else EventKind.POST
                version = ""
            else:
                post = self._edited(held.messages[0])
                kind = EventKind.EDIT
                version = str(as_int(held.messages[0].get("edit_date")) or "")
        except PayloadError as error:
            log.warning("%s: update %d skipped: %s", self.name, held.update_ids[0], error)
            return None
        if not post.text and not post.media and not post.content_warning:
            log.debug("%s: %s has nothing to relay (service message?)", self.name, post.id)
            return None
        post.media = [await self._download(item) for item in post.media]
        return Event(kind, self.name, post, version=version, by=sender_in_group(held.messages))

    def _post(self, messages: list[dict[str, Any]]) -> Post:
        """One post from a message, or from all parts of an album (first id, the one caption)."""
        ordered = sorted(messages, key=lambda message: as_int(message.get("message_id")) or 0)
        parts = [
            message_to_post(message, self.chat_username, chat_is_author=True) for message in ordered
        ]
        first = parts[0]
        worded = next((part for part in parts if part.text or part.content_warning), first)
        return replace(
            first,
            text=worded.text,
            spans=worded.spans,
            content_warning=worded.content_warning,
            media=[item for part in parts for item in part.media],
            sensitive=any(part.sensitive for part in parts),
        )

    def _edited(self, message: dict[str, Any]) -> Post:
        """The new version of an edited post; an edited album part brings the whole album."""
        group = as_id(message.get("media_group_id"))
        album = self._albums.get(group) if group is not None else None
        if group is None or album is None:
            return self._post([message])
        parts = [m for m in album if m.get("message_id") != message.get("message_id")] + [message]
        self._remember(group, parts)
        return self._post(parts)

    def _remember(self, group: str, messages: list[dict[str, Any]]) -> None:
        self._albums[group] = list(messages)
        self._albums.move_to_end(group)
        while len(self._albums) > _REMEMBERED_ALBUMS:
            self._albums.popitem(last=False)

    async def _download(self, item: Media) -> Media:
        """The medium with its bytes; a file that cannot be had keeps only its reference.

        Network failures of `getFile` propagate: the update is then not confirmed and is fetched
        again later, up to `MAX_FILE_ATTEMPTS` polls. Anything about the file itself (refused,
        too big, not what it claims to be, an answer that cannot be read) leaves the medium as a
        link, so one file never blocks the chat. The download URL holds the bot token: it is
        never logged.
        """
        file_id = file_id_of(item)
        if file_id is None or self._media is None:
            return item
        try:
            found = await self.api.call("getFile", {"file_id": file_id})
        except FloodWait:
            raise
        except (NotSent, InDoubt) as error:
            failures = self._file_failures.get(file_id, 0) + 1
            if failures < MAX_FILE_ATTEMPTS:
                self._file_failures[file_id] = failures
                raise
            self._file_failures.pop(file_id, None)
            log.warning(
                "%s: getFile of a %s failed %d times in a row (%s); linking to it",
                self.name,
                item.mime,
                failures,
                error,
            )
            return item
        except ApiError as error:
            log.warning("%s: cannot fetch %s (%s); linking to it", self.name, item.mime, error)
            return item
        self._file_failures.pop(file_id, None)
        size = found.get("file_size") if isinstance(found, dict) else None
        if isinstance(size, int) and size > MAX_GETFILE_BYTES:
            log.warning(
                "%s: %s of %d bytes is over Telegram's %d-byte download limit; linking to it",
                self.name,
                item.mime,
                size,
                MAX_GETFILE_BYTES,
            )
            return item
        path = found.get("file_path") if isinstance(found, dict) else None
        if not isinstance(path, str) or not path:
            log.warning("%s: %s has no file URL to fetch; linking to it", self.name, item.mime)
            return item
        url = self.api.file_url(path)
        return await self._media.fetch(item, url=url, label=f"Telegram {item.mime} file")
