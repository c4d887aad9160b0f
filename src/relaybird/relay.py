"""The daemon: owns adapters, listeners and workers, from start-up to a clean shutdown.

The relay is also the `EventSink` the inbound adapters feed: it drops echoes of our own copies, asks
the router, and writes the decision to the outbox in one transaction before any worker sees it. When
that write fails (disk full), nothing is kept, the cursor included, and the listener is told with a
`StoreUnavailable`, a temporary error: the event comes again once the stream catches up.
"""

from __future__ import annotations

import asyncio
import logging
import random
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from relaybird import router
from relaybird.config import Config
from relaybird.desk import Desk, compose_answer
from relaybird.fitting import extract_content_warning, fingerprint
from relaybird.metrics import Metrics
from relaybird.model import Event, EventKind, Post, TargetRef
from relaybird.networks.base import MENTIONS, DeliveryError, Network, PermanentError
from relaybird.networks.registry import build_network
from relaybird.ratelimit import AccountLimiter
from relaybird.store import Delivery, Planned, Pruned, Store, StoreUnavailable, cursor_key
from relaybird.worker import Worker

log = logging.getLogger(__name__)

SHUTDOWN_GRACE_SECONDS = 10.0
#: How often old rows are pruned after the pass at start.
PRUNE_INTERVAL_SECONDS = 3600.0
#: First pause before logging in again when a network could not be reached at start; it doubles.
OPEN_RETRY_SECONDS = 2.0
MAX_OPEN_RETRY_SECONDS = 300.0


@dataclass
class AccountHealth:
    network: str
    role: str
    connected: bool = False
    detail: str = "starting"
    #: Whether the stream was up at least once: a later "up" is a reconnect.
    was_connected: bool = False
    since: float = field(default_factory=time.time)


def mention_stream(account: str) -> str:
    """The health entry and cursor of an account's mentions, beside its own posts' stream."""
    return cursor_key(account, MENTIONS)


@dataclass
class MentionStream:
    """The relay as seen by a mention listener: what it reports about its connection goes to the
    mention stream's own health entry, so that a dead notifications poll is not hidden by a healthy
    post stream of the same account, nor the other way round."""

    relay: Relay

    async def accept(self, event: Event) -> None:
        await self.relay.accept(event)

    def save_cursor(self, account: str, cursor: str, scope: str = "") -> None:
        self.relay.save_cursor(account, cursor, scope)

    def set_connected(self, account: str, connected: bool, detail: str = "") -> None:
        self.relay.set_connected(mention_stream(account), connected, detail)


@dataclass
class Relay:
    config: Config
    store: Store
    on_delivered: Callable[[Delivery, TargetRef], None] | None = None
    networks: dict[str, Network] = field(default_factory=dict)
    health: dict[str, AccountHealth] = field(default_factory=dict)
    workers: dict[str, Worker] = field(default_factory=dict)
    writing: dict[str, asyncio.Lock] = field(default_factory=dict)
    metrics: Metrics = field(default_factory=Metrics)
    limiters: dict[str, AccountLimiter] = field(default_factory=dict)
    #: Why the state database last refused a write; empty while it works.
    store_error: str = ""
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    desk: Desk = field(init=False)

    def __post_init__(self) -> None:
        self.metrics.watch_queues(self.store.queue_depth)
        self.desk = Desk(self.config, self.store, self.networks)

    def sources(self) -> set[str]:
        return self.desk.duties.stream_readers()

    def mention_sources(self) -> set[str]:
        return self.desk.duties.notification_readers()

    def targets(self) -> set[str]:
        return self.desk.duties.targets()

    # EventSink

    async def accept(self, event: Event) -> None:
        """Route one event; our own copy arriving back must be recognised, never relayed again.

        A network may stream our copy before the call that created it has returned, so an event
        of an account waits while that account's worker is between "posted" and "recorded".
        Raises `StoreUnavailable` when the decision could not be written.
        """
        self.metrics.events.labels(event.account, event.kind.value).inc()
        lock = self.writing.get(event.account)
        try:
            if lock is None:
                taken = await self.desk.intake(event)
            else:
                async with lock:
                    taken = await self.desk.intake(event)
            if taken is None:
                self._wake_all()
                return
            event = taken
            if lock is None:
                self._accept(event)
            else:
                async with lock:
                    self._accept(event)
        except sqlite3.Error as error:
            raise self._store_failed("accept", error, event) from error
        self._store_recovered()

    def _wake_all(self) -> None:
        for worker in self.workers.values():
            worker.wake.set()

    def _store_failed(
        self, operation: str, error: sqlite3.Error, event: Event | None = None
    ) -> StoreUnavailable:
        self.metrics.store_errors.labels(operation).inc()
        self.store_error = f"{type(error).__name__}: {error}"
        where = f" {event.kind.value} {event.account}:{event.post.id}" if event else ""
        log.error(
            "the state database refused%s (%s); it will come again from the network",
            where,
            error,
            extra={"source_account": event.account, "source_id": event.post.id} if event else {},
        )
        return StoreUnavailable(f"the state database refused the write: {error}")

    def _store_recovered(self) -> None:
        if self.store_error:
            log.info("the state database accepts writes again")
            self.store_error = ""

    def _accept(self, event: Event) -> None:
        network = self.networks.get(event.account)
        if network is not None and not network.capabilities.content_warning_field:
            event.post = extract_content_warning(event.post)
        post = event.post
        changes = event.kind in (EventKind.EDIT, EventKind.DELETE)
        if event.kind is EventKind.MENTION:
            decision = router.plan(event, self.config.routes)
            ids = self.store.accept(event, decision.planned)
            if decision.planned and ids:
                self._queued(event, decision.planned)
            else:
                self._skipped(event, "mention", decision.reason or "already seen")
            return
        if changes and not self.store.was_relayed(event.account, post.id):
            self._skipped(event, "never_relayed", "the original was never relayed")
            if event.cursor is not None:
                self.store.set_cursor(event.account, event.cursor)
            return
        echo = None
        if not changes and self.store.echo_origin(event.account, post.id) is None:
            shown = f"CW: {post.content_warning} {post.text}" if post.content_warning else post.text
            self.store.claim_unconfirmed(event.account, post.id, fingerprint(shown))
        origin = self.store.echo_origin(event.account, post.id)
        if origin is not None:
            holders = frozenset(self.store.holders(*origin))
            echo = router.Echo(origin_account=origin[0], origin_id=origin[1], holders=holders)
        decision = router.plan(event, self.config.routes, echo)
        ids = self.store.accept(event, decision.planned)
        if decision.planned and ids:
            self._queued(event, decision.planned)
        elif decision.planned:
            self._skipped(event, "duplicate", "already seen")
        else:
            self._skipped(event, self._skip_class(event, echo), decision.reason)

    def _queued(self, event: Event, planned: list[Planned]) -> None:
        for plan in planned:
            log.info(
                "route=%s %s %s:%s -> %s queued",
                plan.route,
                event.kind.value,
                event.account,
                event.post.id,
                plan.target_account,
                extra={
                    "route": plan.route,
                    "kind": event.kind.value,
                    "source_account": event.account,
                    "source_id": event.post.id,
                    "target_account": plan.target_account,
                    "decision": "queued",
                },
            )
            worker = self.workers.get(plan.target_account)
            if worker is not None:
                worker.wake.set()

    def _skip_class(self, event: Event, echo: router.Echo | None) -> str:
        if not any(event.account in route.sources for route in self.config.routes):
            return "no_route"
        return "echo" if echo is not None else "filtered"

    def _skipped(self, event: Event, reason_class: str, reason: str) -> None:
        self.metrics.events_skipped.labels(event.account, reason_class).inc()
        log.info(
            "%s %s:%s skipped (%s): %s",
            event.kind.value,
            event.account,
            event.post.id,
            reason_class,
            reason,
            extra={
                "kind": event.kind.value,
                "source_account": event.account,
                "source_id": event.post.id,
                "decision": "skipped",
                "reason_class": reason_class,
                "reason": reason,
            },
        )

    def save_cursor(self, account: str, cursor: str, scope: str = "") -> None:
        try:
            self.store.set_cursor(cursor_key(account, scope), cursor)
        except sqlite3.Error as error:
            raise self._store_failed("cursor", error) from error

    def set_connected(self, account: str, connected: bool, detail: str = "") -> None:
        health = self.health.get(account)
        if health is None:
            return
        if health.connected != connected:
            log.info(
                "%s stream %s %s",
                account,
                "up" if connected else "down",
                detail,
                extra={"account": account, "connected": connected, "detail": detail},
            )
            health.since = time.time()
            if connected and health.was_connected:
                self.metrics.reconnects.labels(account).inc()
        health.was_connected = health.was_connected or connected
        health.connected = connected
        health.detail = detail
        self.metrics.connected.labels(account).set(1 if connected else 0)

    def healthy(self) -> bool:
        return not self.store_error and all(h.connected for h in self.health.values())

    # lifecycle

    async def start(self) -> None:
        """Log every account in and start its worker and listener.

        A refusal of credentials at start is the operator's to fix: it is raised. An account whose
        network is merely unreachable is retried in the background, unhealthy meanwhile, while the
        others start: one network having a bad day does not keep the rest from flowing.
        """
        posting, mentioned, targets = self.sources(), self.mention_sources(), self.targets()
        for name, account in self.config.accounts.items():
            if name not in posting | mentioned | targets:
                continue
            network = build_network(account, self.store)
            self.networks[name] = network
            role = self.desk.duties.role(name)
            self.health[name] = AccountHealth(network=network.network, role=role)
            self.metrics.connected.labels(name).set(0)
            if name in mentioned:
                stream = mention_stream(name)
                self.health[stream] = AccountHealth(network=network.network, role="mentions")
                self.metrics.connected.labels(stream).set(0)
        names = list(self.networks)
        results = await asyncio.gather(
            *(self.networks[name].open() for name in names), return_exceptions=True
        )
        for result in results:
            if isinstance(result, PermanentError):
                raise result
            if isinstance(result, BaseException) and not isinstance(result, Exception):
                raise result
        for name, result in zip(names, results, strict=True):
            if isinstance(result, Exception):
                self._open_failed(name, result, OPEN_RETRY_SECONDS)
                self._spawn(self._open_later(name), f"opening:{name}")
            else:
                self._launch(name)
        self._spawn(self._keep_pruning(), "housekeeping:retention")

    def _open_failed(self, name: str, error: Exception, delay: float) -> None:
        detail = (
            f"cannot log in ({error if isinstance(error, DeliveryError) else type(error).__name__})"
        )
        self.set_connected(name, False, f"{detail}; retrying in {delay:.0f} s")
        log.warning("%s: %s; retrying in %.0f s", name, detail, delay, extra={"account": name})

    async def _open_later(self, name: str) -> None:
        """Keep trying to log in with growing pauses; start the account once it works."""
        failures = 1
        while True:
            delay = min(MAX_OPEN_RETRY_SECONDS, OPEN_RETRY_SECONDS * 2 ** (failures - 1))
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            try:
                await self.networks[name].open()
            except Exception as error:
                failures += 1
                next_delay = min(MAX_OPEN_RETRY_SECONDS, OPEN_RETRY_SECONDS * 2 ** (failures - 1))
                self._open_failed(name, error, next_delay)
                continue
            log.info("%s: logged in", name, extra={"account": name})
            self._launch(name)
            return

    def _launch(self, name: str) -> None:
        network = self.networks[name]
        if name in self.targets():
            routes = {route.name: route for route in self.config.routes}
            limits = self.config.accounts[name].rate_limit.limits()
            self.limiters[name] = AccountLimiter(name, limits)
            self.writing[name] = asyncio.Lock()
            worker = Worker(
                network,
                self.store,
                routes,
                self.on_delivered,
                self.writing[name],
                limiter=self.limiters[name],
                metrics=self.metrics,
                composer=self._compose,
            )
            self.workers[name] = worker
            self._spawn(worker.run(), f"worker:{name}")
        if name in self.sources():
            self._spawn(network.listen(self.store.cursor(name), self), f"listen:{name}")
        else:
            self.set_connected(name, True, "no post stream to read")
        if name in self.mention_sources():
            self._spawn(self._listen_mentions(name), f"mentions:{name}")

    def _compose(self, delivery: Delivery) -> Post | None:
        return compose_answer(self.store, self.config, delivery.source_account, delivery.payload)

    async def _listen_mentions(self, name: str) -> None:
        """Mentions of the account from its network's notifications, with a cursor of their own."""
        network = self.networks[name]
        cursor = self.store.cursor(mention_stream(name))
        await network.listen_mentions(cursor, MentionStream(self))

    # retention

    def prune(self, now: float | None = None) -> Pruned:
        """Remove what the retention settings no longer keep, in small transactions."""
        finished_age, mapping_age = self.config.relaybird.retention_seconds()
        now = time.time() if now is None else now
        finished_before = None if finished_age is None else now - finished_age
        mapped_before = None if mapping_age is None else now - mapping_age
        total = Pruned()
        while True:
            batch = self.store.prune(finished_before, mapped_before)
            total.add(batch)
            if not batch.total():
                break
        for kind, count in vars(total).items():
            if count:
                self.metrics.pruned.labels(kind).inc(count)
        return total

    async def _keep_pruning(self) -> None:
        """Prune at start and then periodically; a failing database only delays the next pass."""
        while True:
            try:
                pruned = self.prune()
                if pruned.total():
                    log.info(
                        "retention: pruned %d deliveries, %d mappings, %d copies, %d seen events;"
                        " slimmed %d",
                        pruned.deliveries,
                        pruned.mappings,
                        pruned.copies,
                        pruned.seen,
                        pruned.slimmed,
                    )
            except sqlite3.Error as error:
                self.metrics.store_errors.labels("prune").inc()
                log.error("retention: pruning failed (%s); trying again later", error)
            await asyncio.sleep(PRUNE_INTERVAL_SECONDS)

    def _spawn(self, coroutine: object, name: str) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coroutine, name=name)  # type: ignore[arg-type]
        task.add_done_callback(self._task_ended)
        self._tasks.append(task)

    def _task_ended(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            log.error("%s stopped: %r", task.get_name(), error, exc_info=error)
            account = task.get_name().split(":", 1)[1]
            self.set_connected(account, False, f"stopped: {type(error).__name__}")

    async def _let_sends_finish(self) -> None:
        """Wait (briefly) for creates already on the wire, then hold every worker before its next.

        A create cut off mid-flight is in doubt afterwards, and on Telegram a doubtful send is
        dead-lettered rather than risked twice; a clean shutdown should leave nothing in doubt.
        """

        async def hold(lock: asyncio.Lock) -> None:
            await lock.acquire()

        holds = [asyncio.create_task(hold(lock)) for lock in self.writing.values()]
        if holds:
            _, pending = await asyncio.wait(holds, timeout=SHUTDOWN_GRACE_SECONDS)
            for task in pending:
                task.cancel()
                log.warning(
                    "a send did not finish within %.0f s of shutdown", SHUTDOWN_GRACE_SECONDS
                )

    async def stop(self) -> None:
        listeners = [t for t in self._tasks if not t.get_name().startswith("worker:")]
        for task in listeners:
            task.cancel()
        await asyncio.gather(*listeners, return_exceptions=True)
        workers = [t for t in self._tasks if t.get_name().startswith("worker:")]
        await self._let_sends_finish()
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        for lock in self.writing.values():
            if lock.locked():
                lock.release()
        await asyncio.gather(
            *(network.close() for network in self.networks.values()), return_exceptions=True
        )
        self._tasks.clear()
