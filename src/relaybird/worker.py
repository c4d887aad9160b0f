"""A worker per target account: takes deliveries from the outbox in order and publishes them.

Each part of a split post is a separate create with its own key, written to the store before the
network call; a restart therefore resumes a half-posted thread at the first part that did not land.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable

from relaybird.fitting import fit_post
from relaybird.model import Post, TargetRef
from relaybird.networks.base import (
    DeliveryError,
    Network,
    PermanentError,
    RateLimited,
    ReplyTarget,
)
from relaybird.store import Delivery, Store

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 12
MAX_BACKOFF_SECONDS = 600.0


def backoff_seconds(attempts: int) -> float:
    """Exponential backoff with full jitter, so that many failed deliveries do not retry in step."""
    ceiling = min(MAX_BACKOFF_SECONDS, 2.0 ** min(attempts, 20))
    return random.uniform(ceiling / 2, ceiling)


class Worker:
    def __init__(
        self,
        adapter: Network,
        store: Store,
        on_delivered: Callable[[Delivery, TargetRef], None] | None = None,
    ) -> None:
        self.adapter = adapter
        self.store = store
        self.wake = asyncio.Event()
        self.on_delivered = on_delivered

    def recover_interrupted(self) -> None:
        """Decide, after a crash, what to do with deliveries that were being sent.

        Networks that honour a create key are simply retried with the same key. On the others the
        post may or may not have landed, so it is dead-lettered for the operator rather than risking
        a duplicate: at most once.
        """
        for delivery in self.store.interrupted():
            if delivery.target_account != self.adapter.name:
                continue
            if self.adapter.capabilities.idempotent_create:
                self.store.resume(delivery)
            else:
                unknown = [p for p in self.store.parts(delivery.id) if p.state == "sending"]
                if unknown:
                    self.store.dead_letter(
                        delivery,
                        f"interrupted while posting part {unknown[0].idx + 1}; {self.adapter.network}"
                        " cannot tell whether it landed, so it is not retried automatically: check"
                        " the chat, then run `relaybird retry` if it is missing",
                    )
                else:
                    self.store.resume(delivery)

    async def run(self) -> None:
        self.recover_interrupted()
        while True:
            delivery = self.store.next_delivery(self.adapter.name, time.time())
            if delivery is None:
                await self._sleep()
                continue
            await self.deliver(delivery)

    async def _sleep(self) -> None:
        wakeup = self.store.next_wakeup(self.adapter.name)
        timeout = None if wakeup is None else max(0.05, wakeup - time.time())
        self.wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.wake.wait(), timeout)

    def _reply_target(self, delivery: Delivery, post: Post) -> ReplyTarget | None:
        if post.reply_to is None:
            return None
        mapping = self.store.mapping(
            delivery.source_account, post.reply_to, delivery.target_account
        )
        if mapping is None:
            log.info(
                "delivery %s: parent %s has no copy on %s; posting standalone",
                delivery.id,
                post.reply_to,
                delivery.target_account,
            )
            return None
        return ReplyTarget(parent=mapping.last, root=mapping.root)

    async def deliver(self, delivery: Delivery) -> None:
        post = Post.from_json(delivery.payload)
        try:
            first, last, root = await self._publish_parts(delivery, post)
        except RateLimited as error:
            log.warning("delivery %s to %s rate limited: %s", delivery.id, self.adapter.name, error)
            self.store.retry_later(delivery, str(error), error.retry_at)
            return
        except PermanentError as error:
            log.error("delivery %s to %s refused: %s", delivery.id, self.adapter.name, error)
            self.store.dead_letter(delivery, str(error))
            return
        except DeliveryError as error:
            self._retry_or_give_up(delivery, str(error))
            return
        self.store.complete(delivery, first, last, root)
        log.info(
            "route=%s %s:%s -> %s:%s delivered",
            delivery.route,
            delivery.source_account,
            delivery.source_id,
            delivery.target_account,
            first.id,
        )
        if self.on_delivered is not None:
            self.on_delivered(delivery, first)

    def _retry_or_give_up(self, delivery: Delivery, error: str) -> None:
        if delivery.attempts + 1 >= MAX_ATTEMPTS:
            log.error("delivery %s gave up after %s attempts: %s", delivery.id, MAX_ATTEMPTS, error)
            self.store.dead_letter(delivery, f"gave up after {MAX_ATTEMPTS} attempts: {error}")
            return
        delay = backoff_seconds(delivery.attempts + 1)
        log.warning("delivery %s failed (%s); retrying in %.0f s", delivery.id, error, delay)
        self.store.retry_later(delivery, error, time.time() + delay)

    async def _publish_parts(
        self, delivery: Delivery, post: Post
    ) -> tuple[TargetRef, TargetRef, TargetRef]:
        reply_to = self._reply_target(delivery, post)
        parts = fit_post(post, self.adapter.capabilities)
        started = {part.idx: part for part in self.store.parts(delivery.id)}
        refs: list[TargetRef] = []
        for index, part in enumerate(parts):
            earlier = started.get(index)
            if earlier is not None and earlier.ref is not None:
                refs.append(earlier.ref)
                continue
            key = earlier.key if earlier is not None else self.adapter.new_key()
            self.store.begin_part(delivery.id, index, key)
            answer = reply_to
            if refs:
                answer = ReplyTarget(parent=refs[-1], root=reply_to.root if reply_to else refs[0])
            ref = await self.adapter.publish(part, answer, key, retrying=earlier is not None)
            self.store.finish_part(delivery, index, ref)
            refs.append(ref)
        root = reply_to.root if reply_to is not None else refs[0]
        return refs[0], refs[-1], root
