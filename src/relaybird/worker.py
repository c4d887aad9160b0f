"""A worker per target account: takes deliveries from the outbox in order and carries them out.

Each part of a split post is a separate create with its own key, written to the store before the
network call; a restart therefore resumes a half-posted thread at the first part that did not land.
Edits and deletes wait behind the post they change, and act on the parts recorded for it.

Every network call first waits its turn at the account's rate limiter, before anything is marked as
being sent (so a kill while waiting leaves nothing in doubt). A network asking us to wait holds the
whole account, not just one delivery; any other failure backs off that delivery alone, so the rest of
the queue keeps moving, and a reply still waits for its parent's copy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import sqlite3
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from relaybird.fitting import FitOptions, fingerprint, fit_post
from relaybird.metrics import Metrics
from relaybird.model import Post, TargetRef
from relaybird.networks.base import (
    DeliveryError,
    Network,
    PermanentError,
    RateLimited,
    ReplyTarget,
)
from relaybird.ratelimit import AccountLimiter, Operation, ReportsBudget
from relaybird.store import PARENT_WITHOUT_COPY, Delivery, Part, Store
from relaybird.store import Mapping as CopyMapping

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 12
MAX_BACKOFF_SECONDS = 600.0
#: A 429 without a usable reset time (none, or one already past) still waits this long.
MIN_RATE_LIMIT_WAIT_SECONDS = 5.0
#: Pause after the state database failed, doubling up to the cap while it keeps failing.
STORE_PAUSE_SECONDS = 1.0
MAX_STORE_PAUSE_SECONDS = 60.0
CREATE_KINDS = ("post", "reply", "repost")
#: The longest an idle worker waits before looking at the queue again.
IDLE_CHECK_SECONDS = 5.0


class Skip(Exception):
    """Nothing is to be done for this delivery; the reason is recorded."""


class Wait(Exception):
    """The delivery depends on others still under way: look again shortly, without a failure."""

    def __init__(self, reason: str, seconds: float) -> None:
        super().__init__(reason)
        self.seconds = seconds


#: What the bot's answer becomes once its copies are done (None while one is still pending).
Composer = Callable[[Delivery], Post | None]


def backoff_seconds(attempts: int) -> float:
    """Exponential backoff with full jitter, so that many failed deliveries do not retry in step."""
    ceiling = min(MAX_BACKOFF_SECONDS, 2.0 ** min(attempts, 20))
    return random.uniform(ceiling / 2, ceiling)


def route_option(route: Any, name: str, default: Any) -> Any:
    return getattr(route, name, default) if route is not None else default


def delivery_fields(delivery: Delivery, **more: object) -> dict[str, object]:
    """The ids a log line about a delivery carries as keys of their own (for `--log-format json`)."""
    return {
        "route": delivery.route,
        "kind": delivery.kind,
        "source_account": delivery.source_account,
        "source_id": delivery.source_id,
        "target_account": delivery.target_account,
        "delivery_id": delivery.id,
        **more,
    }


class Worker:
    def __init__(
        self,
        adapter: Network,
        store: Store,
        routes: Mapping[str, Any] | None = None,
        on_delivered: Callable[[Delivery, TargetRef], None] | None = None,
        writing: asyncio.Lock | None = None,
        *,
        limiter: AccountLimiter | None = None,
        metrics: Metrics | None = None,
        idle_check: float = IDLE_CHECK_SECONDS,
        composer: Composer | None = None,
    ) -> None:
        self.adapter = adapter
        self.writing = writing or asyncio.Lock()
        self.store = store
        self.routes = routes or {}
        self.wake = asyncio.Event()
        self.on_delivered = on_delivered
        self.limiter = limiter or AccountLimiter(adapter.name)
        self.metrics = metrics or Metrics()
        self.idle_check = idle_check
        self.composer = composer
        self._store_failures = 0
        #: A create was sent and its answer not yet recorded: its outcome is unknown if it fails.
        self._in_flight = False

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
                self.metrics.retried(delivery.route, delivery.target_account, "interrupted")
                log.info(
                    "route=%s delivery %s to %s was interrupted; resuming it",
                    delivery.route,
                    delivery.id,
                    delivery.target_account,
                    extra=delivery_fields(delivery, decision="resume"),
                )
            else:
                self._dead_letter(
                    delivery,
                    f"interrupted while posting part {unknown[0].idx + 1}; {self.adapter.network}"
                    " cannot tell whether it landed, so it is not retried automatically: check"
                    " the chat, then run `relaybird retry` if it is missing",
                )

    async def run(self) -> None:
        """Deliver until cancelled. A failing state database pauses deliveries rather than ending
        them; afterwards, what was being sent is resolved as after a crash."""
        while True:
            try:
                self.recover_interrupted()
                await self._drain()
            except sqlite3.Error as error:
                self._store_failures += 1
                pause = min(
                    MAX_STORE_PAUSE_SECONDS, STORE_PAUSE_SECONDS * 2 ** (self._store_failures - 1)
                )
                self.metrics.store_errors.labels("deliver").inc()
                log.error(
                    "%s: the state database failed (%s); deliveries pause for %.0f s",
                    self.adapter.name,
                    error,
                    pause,
                    extra={"target_account": self.adapter.name},
                )
                await asyncio.sleep(pause)

    async def _drain(self) -> None:
        while True:
            held = await self.limiter.ready()
            if held:
                self.metrics.rate_wait.labels(self.adapter.name).inc(held)
            delivery = self.store.next_delivery(self.adapter.name, time.time())
            if delivery is None:
                await self._sleep()
                continue
            await self.deliver(delivery)
            self._store_failures = 0

    async def _sleep(self) -> None:
        """Until the next retry is due or something is queued; never longer than a few seconds,
        so that deliveries re-queued from outside (`relaybird retry`) are noticed."""
        wakeup = self.store.next_wakeup(self.adapter.name)
        due = self.idle_check if wakeup is None else wakeup - time.time()
        timeout = min(self.idle_check, max(0.05, due))
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
        """Carry out one delivery and record the outcome; only a store failure escapes."""
        try:
            post = Post.from_json(delivery.payload)
        except (ValueError, KeyError, TypeError) as error:
            self._dead_letter(delivery, f"the queued post cannot be read ({type(error).__name__})")
            return
        handlers = {
            "edit": self._edit,
            "delete": self._delete,
            "answer": self._answer,
            "bot_answer": self._bot_answer,
        }
        handler = handlers.get(delivery.kind, self._create)
        self._in_flight = False
        try:
            done = await handler(delivery, post)
        except Skip as reason:
            self._skip(delivery, str(reason))
            return
        except Wait as waiting:
            self.store.postpone(delivery, str(waiting), time.time() + waiting.seconds)
            return
        except RateLimited as error:
            self._rate_limited(delivery, error)
            return
        except PermanentError as error:
            self._dead_letter(delivery, str(error))
            return
        except DeliveryError as error:
            self._retry_or_give_up(delivery, str(error))
            return
        except sqlite3.Error:
            raise
        except Exception as error:
            self._unexpected(delivery, error)
            return
        self._done(delivery, post, done)

    def _done(self, delivery: Delivery, post: Post, done: TargetRef) -> None:
        log.info(
            "route=%s %s %s:%s -> %s:%s done (delivery %s)",
            delivery.route,
            delivery.kind,
            delivery.source_account,
            delivery.source_id,
            delivery.target_account,
            done.id,
            delivery.id,
            extra=delivery_fields(delivery, decision="done", target_id=done.id),
        )
        created = post.created_at if delivery.kind in CREATE_KINDS else ""
        self.metrics.delivered(
            delivery.route, delivery.target_account, delivery.created_at, created
        )
        if self.on_delivered is not None:
            self.on_delivered(delivery, done)

    def _skip(self, delivery: Delivery, reason: str) -> None:
        log.info(
            "route=%s %s %s:%s -> %s skipped (delivery %s): %s",
            delivery.route,
            delivery.kind,
            delivery.source_account,
            delivery.source_id,
            delivery.target_account,
            delivery.id,
            reason,
            extra=delivery_fields(delivery, decision="skipped", reason=reason),
        )
        self.store.skip(delivery, reason)
        self.metrics.skipped(delivery.route, delivery.target_account)

    def _rate_limited(self, delivery: Delivery, error: RateLimited) -> None:
        """Hold every call of this account until the network's time, and this delivery with it,
        without counting it as a failed attempt."""
        now = time.time()
        retry_at = error.retry_at if error.retry_at > now else now + MIN_RATE_LIMIT_WAIT_SECONDS
        self.limiter.hold_until(retry_at)
        wait = retry_at - time.time()
        log.warning(
            "route=%s delivery %s to %s rate limited: %s; holding %s for %.0f s",
            delivery.route,
            delivery.id,
            delivery.target_account,
            error,
            delivery.target_account,
            wait,
            extra=delivery_fields(delivery, decision="rate_limited", retry_in=round(wait, 1)),
        )
        self.store.postpone(delivery, str(error), retry_at)
        self.metrics.rate_limited.labels(delivery.target_account).inc()
        self.metrics.retried(delivery.route, delivery.target_account, "rate_limited")

    def _dead_letter(self, delivery: Delivery, error: str) -> None:
        log.error(
            "route=%s %s %s:%s -> %s dead-lettered (delivery %s): %s",
            delivery.route,
            delivery.kind,
            delivery.source_account,
            delivery.source_id,
            delivery.target_account,
            delivery.id,
            error,
            extra=delivery_fields(delivery, decision="dead", reason=error),
        )
        self.store.dead_letter(delivery, error)
        self.metrics.dead(delivery.route, delivery.target_account)

    def _unexpected(self, delivery: Delivery, error: Exception) -> None:
        """A bug or a library's surprise must not stop the worker. A create whose request may
        have left is not repeated on a network without idempotency (at most once)."""
        log.exception(
            "delivery %s to %s failed unexpectedly",
            delivery.id,
            delivery.target_account,
            extra=delivery_fields(delivery, decision="error"),
        )
        reason = f"unexpected error: {type(error).__name__}"
        if self._in_flight and not self.adapter.capabilities.idempotent_create:
            self._dead_letter(
                delivery,
                f"{reason} while posting; {self.adapter.network} cannot tell whether it landed:"
                " check, then run `relaybird retry` if it is missing",
            )
            return
        self._retry_or_give_up(delivery, reason)

    def _retry_or_give_up(self, delivery: Delivery, error: str) -> None:
        if delivery.attempts + 1 >= MAX_ATTEMPTS:
            self._dead_letter(delivery, f"gave up after {MAX_ATTEMPTS} attempts: {error}")
            return
        delay = backoff_seconds(delivery.attempts + 1)
        log.warning(
            "route=%s delivery %s to %s failed (%s); retrying in %.0f s",
            delivery.route,
            delivery.id,
            delivery.target_account,
            error,
            delay,
            extra=delivery_fields(
                delivery, decision="retry", reason=error, retry_in=round(delay, 1)
            ),
        )
        self.store.retry_later(delivery, error, time.time() + delay)
        self.metrics.retried(delivery.route, delivery.target_account, "error")

    async def _turn(self, operation: Operation, media: int = 0) -> None:
        """Wait for this account's rate limits to allow one more call."""
        waited = await self.limiter.acquire(operation, media)
        if waited > 0:
            self.metrics.rate_wait.labels(self.adapter.name).inc(waited)
            log.debug("%s: waited %.2f s for its rate limit", self.adapter.name, waited)

    def _learn_budget(self) -> None:
        """Take in what the server said about the remaining budget, when the adapter knows it."""
        if not isinstance(self.adapter, ReportsBudget):
            return
        try:
            self.limiter.observe(self.adapter.rate_budget())
        except Exception:
            log.warning("%s: its rate budget could not be read", self.adapter.name, exc_info=True)

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
            raise Skip(f"{PARENT_WITHOUT_COPY} on {delivery.target_account} ({post.reply_to})")
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

    async def _answer(self, delivery: Delivery, post: Post) -> TargetRef:
        """A post of ours answering someone's post on this network (`post.reply_to`), which no
        mapping knows: the network is asked what a reply to it needs."""
        if post.reply_to is None:
            raise Skip("the answer names no post to answer")
        answered = await self.adapter.reply_target(post.reply_to)
        post = replace(post, reply_to=None, reply_to_author_id=None, thread_root=None)
        parts = fit_post(post, self.adapter.capabilities, self._options(delivery))
        refs = await self._publish_parts(delivery, parts, answered)
        self.store.complete(delivery, refs[0], refs[-1], answered.root)
        return refs[0]

    async def _bot_answer(self, delivery: Delivery, post: Post) -> TargetRef:
        """The bot's reply with links to the copies, once they are all done or failed."""
        if self.composer is None:
            raise Skip("nothing composes the bot's answers here")
        answer = self.composer(delivery)
        if answer is None:
            raise Wait("waiting for the copies to be done", 0.5)
        return await self._answer(delivery, answer)

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
            await self._turn(Operation.POST, media=len(part.media))
            key = earlier.key if earlier is not None else self.adapter.new_key()
            self.store.begin_part(delivery.id, index, key, fingerprint(part.text))
            answer = reply_to
            if refs:
                answer = ReplyTarget(parent=refs[-1], root=reply_to.root if reply_to else refs[0])
            async with self.writing:
                self._in_flight = True
                try:
                    ref = await self.adapter.publish(
                        part, answer, key, retrying=earlier is not None
                    )
                finally:
                    self._learn_budget()
                self.store.finish_part(delivery, index, ref)
                self._in_flight = False
            refs.append(ref)
        return refs

    async def _delete_part(self, ref: TargetRef) -> None:
        await self._turn(Operation.DELETE)
        try:
            await self.adapter.delete(ref)
        finally:
            self._learn_budget()

    async def _edit_part(self, ref: TargetRef, post: Post) -> TargetRef:
        await self._turn(Operation.EDIT)
        try:
            return await self.adapter.edit(ref, post)
        finally:
            self._learn_budget()

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
            await self._delete_part(part.ref)
        self.store.finish_delete(delivery)
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
            changed = await self._edit_part(old.ref, new)
            self.store.replace_part(old.delivery_id, old.idx, changed)
        for surplus in parts[len(new_parts) :]:
            assert surplus.ref is not None
            await self._delete_part(surplus.ref)
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
            await self._delete_part(part.ref)
        reply_to, post = self._reply_target(delivery, post)
        options = self._options(delivery)
        parts_new = fit_post(post, self.adapter.capabilities, options)
        refs = await self._publish_parts(delivery, parts_new, reply_to)
        root = reply_to.root if reply_to is not None else refs[0]
        self.store.complete(delivery, refs[0], refs[-1], root)
        return refs[0]
