"""Mastodon mentions of an account, from its notifications.

Mentions (replies count: a reply names the account it answers) arrive on the streaming API's
`user:notification` stream as `notification` events; what came while the daemon was away is read
from `GET /api/v1/notifications?types[]=mention` after the stored notification id. The cursor is
kept in its own scope ("mentions"), beside the account's own posts.

**First start** emits nothing: the newest mention's id (or "0") becomes the cursor.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from dataclasses import replace
from typing import Any

import aiohttp

from relaybird.model import Event, EventKind
from relaybird.networks.base import MENTIONS, MentionSink, TemporaryError
from relaybird.networks.mastodon import MastodonNetwork, id_order, read_sse
from relaybird.networks.mastodon_format import status_to_post

log = logging.getLogger(__name__)

PAGE = 40
MAX_RECONNECT_SECONDS = 300.0


class MastodonMentions:
    """Streams one account's mention notifications as MENTION events."""

    def __init__(self, network: MastodonNetwork) -> None:
        self.network = network
        self.name = network.name
        self.cursor: str | None = None

    async def run(self, cursor: str | None, sink: MentionSink) -> None:
        """Stream until cancelled; a lost stream reconnects with backoff and catches up first."""
        self.cursor = cursor
        failures = 0
        while True:
            try:
                await self._stream_once(sink)
                failures = 0
            except asyncio.CancelledError:
                raise
            except (aiohttp.ClientError, TimeoutError, TemporaryError) as error:
                failures += 1
                sink.set_connected(self.name, False, f"mentions lost: {type(error).__name__}")
            delay = min(MAX_RECONNECT_SECONDS, 2.0 ** min(failures, 10)) * random.uniform(0.5, 1)
            log.warning("%s: mention stream stopped; reconnecting in %.1f s", self.name, delay)
            await asyncio.sleep(delay)

    async def _stream_once(self, sink: MentionSink) -> None:
        """Open the stream, then catch up, then read it: nothing falls between the two."""
        url = f"{self.network.streaming_base}/api/v1/streaming/user/notification"
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=30, sock_read=self.network.heartbeat_timeout
        )
        async with self.network.http.get(url, timeout=timeout) as response:
            if response.status != 200:
                raise TemporaryError(f"{self.name}: notification stream answered {response.status}")
            if self.cursor is None:
                await self._set_baseline(sink)
            else:
                await self._catch_up(sink)
            sink.set_connected(self.name, True, "mentions streaming")
            async for message in read_sse(response.content):
                if message.event != "notification":
                    continue
                try:
                    notification = json.loads(message.data)
                except json.JSONDecodeError:
                    log.warning("%s: unreadable notification skipped", self.name)
                    continue
                if isinstance(notification, dict):
                    await self._emit(notification, sink)

    async def _page(self, since: str | None) -> list[dict[str, Any]]:
        params: dict[str, str] = {"types[]": "mention", "limit": str(PAGE)}
        if since is not None:
            params["min_id"] = since
        found = await self.network._get_json("/api/v1/notifications", params)
        return [n for n in found if isinstance(n, dict)] if isinstance(found, list) else []

    async def _set_baseline(self, sink: MentionSink) -> None:
        latest = await self._page(None)
        newest = max((str(n.get("id")) for n in latest), key=id_order, default="0")
        self.cursor = newest
        sink.save_cursor(self.name, newest, scope=MENTIONS)
        log.info("%s: first start; relaying mentions from now on", self.name)

    async def _catch_up(self, sink: MentionSink) -> None:
        while True:
            page = await self._page(self.cursor)
            for notification in sorted(page, key=lambda n: id_order(str(n.get("id")))):
                await self._emit(notification, sink)
            if len(page) < PAGE:
                return

    async def _emit(self, notification: dict[str, Any], sink: MentionSink) -> None:
        notification_id = str(notification.get("id", ""))
        if self.cursor is not None and id_order(notification_id) <= id_order(self.cursor):
            return
        self.cursor = notification_id
        status = notification.get("status")
        if notification.get("type") != "mention" or not isinstance(status, dict):
            sink.save_cursor(self.name, notification_id, scope=MENTIONS)
            return
        try:
            post = status_to_post(status)
        except (KeyError, TypeError, ValueError) as error:
            log.warning("%s: mention %s could not be read (%s)", self.name, notification_id, error)
            sink.save_cursor(self.name, notification_id, scope=MENTIONS)
            return
        post = replace(post, media=[await self.network.media.fetch(item) for item in post.media])
        me = str(self.network.me.get("id", ""))
        reason = "reply" if post.reply_to and post.reply_to_author_id == me else "mention"
        event = Event(
            EventKind.MENTION,
            self.name,
            post,
            cursor=notification_id,
            scope=MENTIONS,
            reason=reason,
        )
        await sink.accept(event)
