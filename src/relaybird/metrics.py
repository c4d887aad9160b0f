"""Prometheus metrics for `/metrics`: what came in, what went out, how long it took, what is queued.

Each relay owns a `Metrics` with a registry of its own rather than prometheus_client's global one,
so that several relays (tests, the demo) never share or reset counters. Queue depths are read from
the store at scrape time, which keeps them right across restarts.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

#: Seconds; loopback deliveries take milliseconds, a rate-limited backlog hours.
LATENCY_BUCKETS = (
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    1800.0,
    3600.0,
    21600.0,
)

QueueReader = Callable[[], Mapping[tuple[str, str], int]]


class QueueCollector(Collector):
    """`relaybird_queue_depth{target,state}` from the store, read when Prometheus scrapes."""

    def __init__(self, read: QueueReader) -> None:
        self.read = read

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "relaybird_queue_depth",
            "Deliveries not done with, per target account and state (pending, retry, sending, dead)",
            labels=["target", "state"],
        )
        try:
            depths = self.read()
        except sqlite3.Error as error:
            log.warning("queue depth not available: %s", error)
            depths = {}
        for (target, state), count in sorted(depths.items()):
            family.add_metric([target, state], float(count))
        yield family


def published_at(created_at: str) -> float | None:
    """A post's publication time as a Unix time, when its network gave one we can read."""
    if not created_at:
        return None
    try:
        moment = datetime.fromisoformat(created_at)
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None
    return moment.timestamp()


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.events = Counter(
            "relaybird_events",
            "Events received from source accounts",
            ["account", "kind"],
            registry=r,
        )
        self.events_skipped = Counter(
            "relaybird_events_skipped",
            "Events that created no delivery, by reason (duplicate, echo, filtered, no_route,"
            " never_relayed)",
            ["account", "reason"],
            registry=r,
        )
        self.deliveries = Counter(
            "relaybird_deliveries",
            "Delivery attempts by outcome (done, retried, dead, skipped)",
            ["route", "target", "outcome"],
            registry=r,
        )
        self.retries = Counter(
            "relaybird_retries",
            "Deliveries put back to try again, by cause (error, rate_limited, interrupted)",
            ["target", "cause"],
            registry=r,
        )
        self.dead_letters = Counter(
            "relaybird_dead_letters",
            "Deliveries given up and left for the operator",
            ["route", "target"],
            registry=r,
        )
        self.latency = Histogram(
            "relaybird_delivery_latency_seconds",
            "From the event being accepted to its delivery being done",
            ["target"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.source_latency = Histogram(
            "relaybird_source_latency_seconds",
            "From the source post's publication time (when the network gives one) to its copy",
            ["target"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.reconnects = Counter(
            "relaybird_stream_reconnects",
            "Times a source stream came back after being down",
            ["account"],
            registry=r,
        )
        self.connected = Gauge(
            "relaybird_stream_connected",
            "1 while the account's stream (or login, for targets) is up",
            ["account"],
            registry=r,
        )
        self.rate_limited = Counter(
            "relaybird_rate_limited",
            "Answers from a network asking us to wait (429, retry_after)",
            ["account"],
            registry=r,
        )
        self.rate_wait = Counter(
            "relaybird_rate_limit_wait_seconds",
            "Seconds spent waiting on the self-imposed and server rate limits",
            ["account"],
            registry=r,
        )
        self.store_errors = Counter(
            "relaybird_store_errors",
            "Writes the state database refused (disk full, I/O error)",
            ["operation"],
            registry=r,
        )
        self.pruned = Counter(
            "relaybird_pruned_rows",
            "Rows removed or slimmed by the retention setting",
            ["kind"],
            registry=r,
        )

    def watch_queues(self, read: QueueReader) -> None:
        self.registry.register(QueueCollector(read))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    # the events the relay and the workers report

    def delivered(self, route: str, target: str, accepted_at: float, created_at: str = "") -> None:
        now = time.time()
        self.deliveries.labels(route, target, "done").inc()
        self.latency.labels(target).observe(max(0.0, now - accepted_at))
        published = published_at(created_at)
        if published is not None:
            self.source_latency.labels(target).observe(max(0.0, now - published))

    def retried(self, route: str, target: str, cause: str) -> None:
        self.deliveries.labels(route, target, "retried").inc()
        self.retries.labels(target, cause).inc()

    def dead(self, route: str, target: str) -> None:
        self.deliveries.labels(route, target, "dead").inc()
        self.dead_letters.labels(route, target).inc()

    def skipped(self, route: str, target: str) -> None:
        self.deliveries.labels(route, target, "skipped").inc()
