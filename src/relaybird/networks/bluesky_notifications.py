"""Bluesky mentions, replies and quotes of an account, from its notifications.

Nothing in a repo says that someone else mentioned us: only an AppView knows, and tells through
`app.bsky.notification.listNotifications` (asked of our PDS, which proxies it with our identity).
There is no push for it, so the listener polls every `poll_interval` seconds and turns each new
mention, reply or quote into a MENTION event whose post is the other person's post.

**Cursor.** The stored cursor is the `indexedAt` of the newest notification handled. The AppView
sorts and pages notifications by that time, which for a post is the *earlier* of its `createdAt`
and the moment it was indexed, so a post can be listed behind one already seen (its app set
`createdAt` a little before a quicker one was indexed). While running, the listener therefore
looks `lookback` seconds behind its cursor at every poll and recognises what it already handled
by notification URI; after a restart it takes everything after the stored cursor and nothing at
or before it. Notifications sharing one timestamp are emitted in URI order, all but the last
carrying the previous cursor, so that a crash between them replays the moment instead of losing
its rest (the store drops what it already has).

**First start** emits nothing: the newest notification's `indexedAt` (or the current time, when
there is none) becomes the cursor.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp

from relaybird.media import MediaError, download
from relaybird.model import Event, EventKind, LinkCard, Media, Post
from relaybird.networks.base import MENTIONS, DeliveryError, MentionSink
from relaybird.networks.bluesky_format import PayloadError, profile_url, record_to_post
from relaybird.networks.bluesky_inbound import backoff_delay
from relaybird.networks.xrpc import XrpcClient
from relaybird.richtext import as_dict, as_text

log = logging.getLogger(__name__)

#: The cursor scope of this stream, beside the account's own posts ("").
REASONS = ("mention", "reply", "quote")
PAGE_LIMIT = 100
#: After a long downtime, catch up at most this many pages (newest first) and say so.
MAX_PAGES = 50


def parse_time(value: str) -> datetime | None:
    """An AT Protocol datetime as an aware datetime; None for anything else."""
    try:
        parsed = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def format_time(moment: datetime) -> str:
    """The form the AppView writes (`2024-05-01T12:00:00.123Z`), for a cursor of our own."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _error_detail(error: BaseException) -> str:
    """A one-line reason without URLs or tokens: the type, and the server's error name if any."""
    name = getattr(error, "error", None)
    return f"{type(error).__name__}: {name}" if name else type(error).__name__


#: One notification as the AppView lists it: a JSON object with at least a URI and a time.
Notification = dict[str, Any]


def _uri(notification: Notification) -> str:
    return as_text(notification.get("uri"))


def _indexed_at(notification: Notification) -> str:
    return as_text(notification.get("indexedAt"))


class BlueskyNotifications:
    """Polls one account's notifications and emits mentions, replies and quotes by others.

    `lookback` is how far behind its cursor a running listener still accepts a notification it
    has not seen (see the module's note on the cursor). `pds_url` is where blobs of the
    mentioning posts are fetched (`getBlob`), which works for authors on the same PDS; without
    it media are left out of the events and the post's permalink stays the way to see them.
    """

    def __init__(
        self,
        name: str,
        client: XrpcClient,
        did: str,
        handle: str,
        *,
        poll_interval: float = 30.0,
        lookback: float = 120.0,
        pds_url: str = "",
        reconnect_base: float = 1.0,
        reconnect_max: float = 300.0,
    ) -> None:
        self.name = name
        self.client = client
        self.did = did
        self.handle = handle
        self.poll_interval = poll_interval
        self.lookback = timedelta(seconds=lookback)
        self.pds_url = pds_url.rstrip("/")
        self.reconnect_base = reconnect_base
        self.reconnect_max = reconnect_max
        # `floor`: the stored cursor at start, at or before which nothing is emitted;
        # `cursor`: the newest handled, as the AppView wrote it; `recent`: URIs handled (or
        # already there at the first start) within `lookback` of the cursor.
        self.floor: datetime | None = None
        self.cursor: str | None = None
        self.cursor_time = datetime.min.replace(tzinfo=UTC)
        self.recent: dict[str, datetime] = {}

    def _start_from(self, cursor: str | None) -> None:
        moment = parse_time(cursor) if cursor is not None else None
        if cursor is not None and moment is None:
            log.warning(
                "%s: stored mentions cursor %r is not a time; starting from now", self.name, cursor
            )
        self.floor = moment
        self.cursor = cursor if moment is not None else None
        self.cursor_time = moment or datetime.min.replace(tzinfo=UTC)
        self.recent = {}

    async def run(self, cursor: str | None, sink: MentionSink) -> None:
        """Poll until cancelled; errors are retried with backoff and reported as health."""
        self._start_from(cursor)
        try:
            async with aiohttp.ClientSession() as http:
                await self._loop(sink, http)
        except asyncio.CancelledError:
            sink.set_connected(self.name, False, "mentions stopped")
            raise

    async def _loop(self, sink: MentionSink, http: aiohttp.ClientSession) -> None:
        failures = 0
        connected = False
        while True:
            try:
                await self.poll(sink, http)
            except (DeliveryError, aiohttp.ClientError, OSError) as error:
                detail = _error_detail(error)
            except Exception as error:
                log.exception("%s: unexpected error while polling mentions", self.name)
                detail = f"unexpected error: {type(error).__name__}"
            else:
                if not connected:
                    sink.set_connected(self.name, True, "mentions polling")
                connected, failures = True, 0
                await asyncio.sleep(self.poll_interval)
                continue
            failures += 1
            connected = False
            sink.set_connected(self.name, False, f"mentions: {detail}")
            delay = backoff_delay(failures, self.reconnect_base, self.reconnect_max)
            log.warning("%s: mentions: %s; retrying in %.1f s", self.name, detail, delay)
            await asyncio.sleep(delay)

    async def poll(self, sink: MentionSink, http: aiohttp.ClientSession) -> None:
        """One round: list what is new and hand it to `sink`, oldest first."""
        listed = await self._list()
        if self.cursor is None:
            self._first_start(listed, sink)
            return
        fresh = self._fresh(listed)
        for index, (moment, notification) in enumerate(fresh):
            last_of_moment = index + 1 == len(fresh) or fresh[index + 1][0] != moment
            await self._emit(notification, moment, last_of_moment, sink, http)
        self._forget_old()

    # listing

    async def _list(self) -> list[tuple[datetime, Notification]]:
        """Notifications newest first, down to `lookback` behind the cursor (or the newest one).

        An entry that is not an object with a URI and a time is left out: there is nothing in it
        to relay, nor a position to remember.
        """
        found: list[tuple[datetime, Notification]] = []
        stop = self.cursor_time - self.lookback if self.cursor is not None else None
        page_cursor: str | None = None
        for _ in range(MAX_PAGES):
            params: dict[str, Any] = {"limit": PAGE_LIMIT, "reasons": list(REASONS)}
            if page_cursor:
                params["cursor"] = page_cursor
            page = await self.client.query("app.bsky.notification.listNotifications", params)
            listed = page.get("notifications")
            entries = [n for n in listed if isinstance(n, dict)] if isinstance(listed, list) else []
            timed = [(parse_time(_indexed_at(n)), n) for n in entries if _uri(n)]
            found.extend((moment, n) for moment, n in timed if moment is not None)
            moments = [moment for moment, _ in timed if moment is not None]
            if stop is None:
                stop = max(moments, default=datetime.now(UTC)) - self.lookback
            next_cursor = as_text(page.get("cursor"))
            if not next_cursor or not moments or min(moments) < stop:
                return found
            page_cursor = next_cursor
        log.warning(
            "%s: more than %d pages of mentions since the cursor; older ones are skipped",
            self.name,
            MAX_PAGES,
        )
        return found

    def _wanted(self, notification: Notification) -> bool:
        """Mentions, replies and quotes by someone else; the server may ignore `reasons`."""
        author = as_dict(notification.get("author"))
        return notification.get("reason") in REASONS and author.get("did") != self.did

    def _first_start(self, listed: list[tuple[datetime, Notification]], sink: MentionSink) -> None:
        newest = max(listed, key=lambda item: item[0], default=None)
        if newest is None:
            self.cursor_time = datetime.now(UTC)
            self.cursor = format_time(self.cursor_time)
        else:
            self.cursor_time, self.cursor = newest[0], _indexed_at(newest[1])
        self.recent = {_uri(n): moment for moment, n in listed if self._wanted(n)}
        self._forget_old()
        sink.save_cursor(self.name, self.cursor, scope=MENTIONS)
        log.info("%s: first start; relaying mentions from now on", self.name)

    def _fresh(
        self, listed: list[tuple[datetime, Notification]]
    ) -> list[tuple[datetime, Notification]]:
        """What is new, oldest first (by time, then URI), each URI once."""
        window = self.cursor_time - self.lookback
        fresh: dict[str, tuple[datetime, Notification]] = {}
        for moment, notification in listed:
            uri = _uri(notification)
            if (
                not self._wanted(notification)
                or uri in self.recent
                or uri in fresh
                or (self.floor is not None and moment <= self.floor)
                or moment < window
            ):
                continue
            fresh[uri] = (moment, notification)
        return sorted(fresh.values(), key=lambda item: (item[0], _uri(item[1])))

    def _forget_old(self) -> None:
        window = self.cursor_time - self.lookback
        self.recent = {uri: moment for uri, moment in self.recent.items() if moment >= window}

    # emitting

    async def _emit(
        self,
        notification: Notification,
        moment: datetime,
        last_of_moment: bool,
        sink: MentionSink,
        http: aiohttp.ClientSession,
    ) -> None:
        """Hand one notification on; the cursor moves only past the last one of its moment."""
        assert self.cursor is not None
        moves = last_of_moment and moment > self.cursor_time
        cursor = _indexed_at(notification) if moves else self.cursor
        uri = _uri(notification)
        post = self._post(notification)
        if post is None:
            sink.save_cursor(self.name, cursor, scope=MENTIONS)
        else:
            post = await self._with_media(post, http)
            event = Event(EventKind.MENTION, self.name, post, cursor=cursor, scope=MENTIONS)
            await sink.accept(event)
            reason = notification.get("reason")
            log.debug("%s: %s by %s: %s", self.name, reason, post.author, uri)
        self.recent[uri] = moment
        if moves:
            self.cursor, self.cursor_time = cursor, moment

    def _post(self, notification: Notification) -> Post | None:
        """The mentioning post in neutral form, its author as the AppView names them."""
        uri = _uri(notification)
        author = as_dict(notification.get("author"))
        handle, did = as_text(author.get("handle")), as_text(author.get("did"))
        try:
            record = notification.get("record")
            if not isinstance(record, dict):
                raise PayloadError("the notification carries no record")
            post = record_to_post(
                uri, as_text(notification.get("cid")), record, handle, pds_url=self.pds_url
            )
        except (PayloadError, AttributeError, TypeError, ValueError) as error:
            log.warning("%s: mention %s could not be read (%s); skipped", self.name, uri, error)
            return None
        assert post.author is not None
        who = replace(
            post.author,
            display_name=as_text(author.get("displayName")),
            url=profile_url(handle or did),
            id=did,
        )
        return replace(post, author=who)

    async def _with_media(self, post: Post, http: aiohttp.ClientSession) -> Post:
        """Media with their bytes, so the outbox holds what a target needs; none without a PDS."""
        if not self.pds_url:
            card = replace(post.card, thumb=None) if post.card is not None else None
            return replace(post, media=[], card=card)
        media = [await self._fetch(item, http) for item in post.media]
        card = post.card
        if card is not None and card.thumb is not None:
            card = LinkCard(
                card.url, card.title, card.description, await self._fetch(card.thumb, http)
            )
        return replace(post, media=media, card=card)

    async def _fetch(self, item: Media, http: aiohttp.ClientSession) -> Media:
        try:
            return replace(item, data=await download(http, item.url))
        except MediaError as error:
            log.warning("%s: %s", self.name, error)
            return item
