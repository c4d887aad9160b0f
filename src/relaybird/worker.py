"""A worker per target account: takes deliveries from the outbox in order and carries them out.

Each part of a split post is a separate create with its own key, written to the store before the
network call; a restart therefore resumes a half-posted thread at the first part that did not land.
Edits and deletes wait behind the post they change, and act on the parts recorded for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Mapping
from typing import Any

from relaybird.fitting import FitOptions, fit_post
from relaybird.model import Post, TargetRef
from relaybird.networks.base import (
    DeliveryError,
    Network,
    PermanentError,
    RateLimited,
    ReplyTarget,
)
from relaybird.store import Delivery, Part, Store
from relaybird.store import Mapping as CopyMapping

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 12
MAX_BACKOFF_SECONDS = 600.0


class Skip(Exception):
    """Nothing is to be done for this delivery; the reason is recorded."""


def backoff_seconds(attempts: int) -> float:
    """Exponential backoff with full jitter, so that many failed deliveries do not retry in step."""
    ceiling = min(MAX_BACKOFF_SECONDS, 2.0 ** min(attempts, 20))
    return random.uniform(ceiling / 2, ceiling)


def route_option(route: Any, name: str, default: Any) -> Any:
    return getattr(route, name, default) if route is not None else default


class Worker:
    def __init__(
        self,
        adapter: Network,
        store: Store,
        routes: Mapping[str, Any] | None = None,
        on_delivered: Callable[[Delivery, TargetRef], None] | None = None,
        writing: asyncio.Lock | None = None,
    ) -> None:
        self.adapter = adapter
        self.writing = writing or asyncio.Lock()
        self.store = store
        self.routes = routes or {}
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
            unknown = [p for p in self.store.parts(delivery.id) if p.state == "sending"]
            if self.adapter.capabilities.idempotent_create or not unknown:
                self.store.resume(delivery)
            else:
                self.store.dead_letter(
                    delivery,
                    f"interrupted while posting part {unknown[0].idx + 1}; {self.adapter.network}"
                    " cannot tell whether it landed, so it is not retried automatically: check"
                    " the chat, then run `relaybird retry` if it is missing",
                )

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

    def _options(self, delivery: Delivery) -> FitOptions:
        route = self.routes.get(delivery.route)
        return FitOptions(
            template=route_option(route, "template", "{text}"),
            overflow=route_option(route, "overflow", "thread"),
            numbering=route_option(route, "numbering", False),
        )

    async def deliver(self, delivery: Delivery) -> None:
        post = Post.from_json(delivery.payload)
        handlers = {"edit": self._edit, "delete": self._delete}
        handler = handlers.get(delivery.kind, self._create)
        try:
            done = await handler(delivery, post)
        except Skip as reason:
            log.info("route=%s delivery %s skipped: %s", delivery.route, delivery.id, reason)
            self.store.skip(delivery, str(reason))
            return
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
        log.info(
            "route=%s %s %s:%s -> %s:%s done",
            delivery.route,
            delivery.kind,
            delivery.source_account,
            delivery.source_id,
            delivery.target_account,
            done.id,
        )
        if self.on_delivered is not None:
            self.on_delivered(delivery, done)

    def _retry_or_give_up(self, delivery: Delivery, error: str) -> None:
        if delivery.attempts + 1 >= MAX_ATTEMPTS:
            log.error("delivery %s gave up after %s attempts: %s", delivery.id, MAX_ATTEMPTS, error)
            self.store.dead_letter(delivery, f"gave up after {MAX_ATTEMPTS} attempts: {error}")
            return
        delay = backoff_seconds(delivery.attempts + 1)
        log.warning("delivery %s failed (%s); retrying in %.0f s", delivery.id, error, delay)
        self.store.retry_later(delivery, error, time.time() + delay)

    # creating

    def _reply_target(self, delivery: Delivery, post: Post) -> tuple[ReplyTarget | None, Post]:
        """Where the copy hangs in its thread, and the post to publish (maybe with a context link)."""
        if post.reply_to is None:
            return None, post
        mapping = self.store.mapping(
            delivery.source_account, post.reply_to, delivery.target_account
        )
        if mapping is not None:
            return ReplyTarget(parent=mapping.last, root=mapping.root), post
        route = self.routes.get(delivery.route)
        if route_option(route, "unmapped_parent", "skip") == "skip":
            raise Skip(f"its parent {post.reply_to} has no copy on {delivery.target_account}")
        return None, post

    async def _create(self, delivery: Delivery, post: Post) -> TargetRef:
        reply_to, post = self._reply_target(delivery, post)
        options = self._options(delivery)
        options.standalone_reply = post.reply_to is not None and reply_to is None
        parts = fit_post(post, self.adapter.capabilities, options)
        refs = await self._publish_parts(delivery, parts, reply_to)
        root = reply_to.root if reply_to is not None else refs[0]
        self.store.complete(delivery, refs[0], refs[-1], root)
        return refs[0]

    async def _publish_parts(
        self,
        delivery: Delivery,
        parts: list[Post],
        reply_to: ReplyTarget | None,
        first_idx: int = 0,
    ) -> list[TargetRef]:
        started = {part.idx: part for part in self.store.parts(delivery.id)}
        refs: list[TargetRef] = []
        for index, part in enumerate(parts, start=first_idx):
            earlier = started.get(index)
            if earlier is not None and earlier.ref is not None:
                refs.append(earlier.ref)
                continue
            key = earlier.key if earlier is not None else self.adapter.new_key()
            self.store.begin_part(delivery.id, index, key)
            answer = reply_to
            if refs:
                answer = ReplyTarget(parent=refs[-1], root=reply_to.root if reply_to else refs[0])
            async with self.writing:
                ref = await self.adapter.publish(part, answer, key, retrying=earlier is not None)
                self.store.finish_part(delivery, index, ref)
            refs.append(ref)
        return refs

    # editing and deleting

    def _current_copy(self, delivery: Delivery) -> tuple[CopyMapping, list[Part]]:
        mapping = self.store.mapping(
            delivery.source_account, delivery.source_id, delivery.target_account
        )
        if mapping is None:
            raise Skip(f"the original has no copy on {delivery.target_account}")
        parts = [p for p in self.store.parts(mapping.delivery_id) if p.ref is not None]
        return mapping, parts

    async def _delete(self, delivery: Delivery, post: Post) -> TargetRef:
        mapping, parts = self._current_copy(delivery)
        for part in reversed(parts):
            assert part.ref is not None
            await self.adapter.delete(part.ref)
        self.store.forget_mapping(
            delivery.source_account, delivery.source_id, delivery.target_account
        )
        self.store.mark_done(delivery)
        return mapping.first

    async def _edit(self, delivery: Delivery, post: Post) -> TargetRef:
        mapping, parts = self._current_copy(delivery)
        options = self._options(delivery)
        if not self.adapter.capabilities.edits:
            route = self.routes.get(delivery.route)
            if route_option(route, "on_edit", "ignore") != "repost":
                raise Skip(f"{self.adapter.network} cannot edit posts and the route ignores edits")
            return await self._repost(delivery, post, mapping, parts)
        new_parts = fit_post(post, self.adapter.capabilities, options)
        for old, new in zip(parts, new_parts, strict=False):
            assert old.ref is not None
            changed = await self.adapter.edit(old.ref, new)
            self.store.replace_part(old.delivery_id, old.idx, changed)
        for surplus in parts[len(new_parts) :]:
            assert surplus.ref is not None
            await self.adapter.delete(surplus.ref)
            self.store.drop_part(surplus.delivery_id, surplus.idx)
        if len(new_parts) > len(parts):
            last = parts[-1].ref
            assert last is not None
            extra = await self._publish_parts(
                self.store.delivery(mapping.delivery_id),
                new_parts[len(parts) :],
                ReplyTarget(parent=last, root=mapping.root),
                first_idx=parts[-1].idx + 1,
            )
            original = self.store.delivery(mapping.delivery_id)
            self.store.complete(original, mapping.first, extra[-1], mapping.root)
        self.store.mark_done(delivery)
        return mapping.first

    async def _repost(
        self, delivery: Delivery, post: Post, mapping: CopyMapping, parts: list[Part]
    ) -> TargetRef:
        """For networks without edits: take the old copy down and publish the new version."""
        for part in reversed(parts):
            assert part.ref is not None
            await self.adapter.delete(part.ref)
        reply_to, post = self._reply_target(delivery, post)
        options = self._options(delivery)
        parts_new = fit_post(post, self.adapter.capabilities, options)
        refs = await self._publish_parts(delivery, parts_new, reply_to)
        root = reply_to.root if reply_to is not None else refs[0]
        self.store.complete(delivery, refs[0], refs[-1], root)
        return refs[0]
