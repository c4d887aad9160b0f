"""The daemon: owns adapters, listeners and workers, from start-up to a clean shutdown.

The relay is also the `EventSink` the inbound adapters feed: it drops echoes of our own copies, asks
the router, and writes the decision to the outbox in one transaction before any worker sees it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from relaybird import router
from relaybird.config import Config
from relaybird.fitting import extract_content_warning
from relaybird.model import Event, EventKind, TargetRef
from relaybird.networks.base import Network
from relaybird.networks.registry import build_network
from relaybird.store import Delivery, Store
from relaybird.worker import Worker

log = logging.getLogger(__name__)

SHUTDOWN_GRACE_SECONDS = 10.0


@dataclass
class AccountHealth:
    network: str
    role: str
    connected: bool = False
    detail: str = "starting"


@dataclass
class Relay:
    config: Config
    store: Store
    on_delivered: Callable[[Delivery, TargetRef], None] | None = None
    networks: dict[str, Network] = field(default_factory=dict)
    health: dict[str, AccountHealth] = field(default_factory=dict)
    workers: dict[str, Worker] = field(default_factory=dict)
    writing: dict[str, asyncio.Lock] = field(default_factory=dict)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def sources(self) -> set[str]:
        return {name for route in self.config.routes for name in route.sources}

    def targets(self) -> set[str]:
        return {name for route in self.config.routes for name in route.targets}

    # EventSink

    async def accept(self, event: Event) -> None:
        """Route one event; our own copy arriving back must be recognised, never relayed again.

        A network may stream our copy before the call that created it has returned, so an event
        of an account waits while that account's worker is between "posted" and "recorded".
        """
        lock = self.writing.get(event.account)
        if lock is None:
            self._accept(event)
            return
        async with lock:
            self._accept(event)

    def _accept(self, event: Event) -> None:
        network = self.networks.get(event.account)
        if network is not None and not network.capabilities.content_warning_field:
            event.post = extract_content_warning(event.post)
        post = event.post
        changes = event.kind in (EventKind.EDIT, EventKind.DELETE)
        if changes and not self.store.was_relayed(event.account, post.id):
            log.debug("%s %s:%s ignored: never relayed", event.kind.value, event.account, post.id)
            return
        echo = None
        origin = self.store.echo_origin(event.account, post.id)
        if origin is not None:
            holders = frozenset(self.store.holders(*origin))
            echo = router.Echo(origin_account=origin[0], origin_id=origin[1], holders=holders)
        decision = router.plan(event, self.config.routes, echo)
        ids = self.store.accept(event, decision.planned)
        if decision.planned and ids:
            for plan in decision.planned:
                log.info(
                    "route=%s %s %s:%s -> %s queued",
                    plan.route,
                    event.kind.value,
                    event.account,
                    post.id,
                    plan.target_account,
                )
                worker = self.workers.get(plan.target_account)
                if worker is not None:
                    worker.wake.set()
        elif not decision.planned:
            log.info(
                "%s %s:%s skipped: %s", event.kind.value, event.account, post.id, decision.reason
            )

    def save_cursor(self, account: str, cursor: str) -> None:
        self.store.set_cursor(account, cursor)

    def set_connected(self, account: str, connected: bool, detail: str = "") -> None:
        health = self.health.get(account)
        if health is not None:
            if health.connected != connected:
                log.info("%s stream %s %s", account, "up" if connected else "down", detail)
            health.connected = connected
            health.detail = detail

    def healthy(self) -> bool:
        return all(h.connected for h in self.health.values())

    # lifecycle

    async def start(self) -> None:
        sources, targets = self.sources(), self.targets()
        for name, account in self.config.accounts.items():
            if name not in sources and name not in targets:
                continue
            network = build_network(account, self.store)
            self.networks[name] = network
            role = "source" if name in sources else "target"
            if name in sources and name in targets:
                role = "source+target"
            self.health[name] = AccountHealth(network=network.network, role=role)
        await asyncio.gather(*(network.open() for network in self.networks.values()))
        for name, network in self.networks.items():
            if name in targets:
                routes = {route.name: route for route in self.config.routes}
                self.writing[name] = asyncio.Lock()
                worker = Worker(network, self.store, routes, self.on_delivered, self.writing[name])
                self.workers[name] = worker
                self._spawn(worker.run(), f"worker:{name}")
            if name in sources:
                self._spawn(network.listen(self.store.cursor(name), self), f"listen:{name}")
            else:
                self.set_connected(name, True, "target only")

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

    async def stop(self) -> None:
        listeners = [t for t in self._tasks if t.get_name().startswith("listen:")]
        for task in listeners:
            task.cancel()
        await asyncio.gather(*listeners, return_exceptions=True)
        workers = [t for t in self._tasks if t.get_name().startswith("worker:")]
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        await asyncio.gather(
            *(network.close() for network in self.networks.values()), return_exceptions=True
        )
        self._tasks.clear()
