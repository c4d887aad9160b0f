"""`/metrics` as Prometheus scrapes it from the running daemon, parsed with prometheus_client.

The daemon runs as a process against the sandboxes; failures are made by the sandboxes' own hooks
(a Bluesky create answered 500 once, Telegram refusing a message), never inside the daemon.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web
from conftest import Networks
from harness import wait_for
from prometheus_client.parser import text_string_to_metric_families

from relaybird.config import load_config
from relaybird.metrics import Metrics
from relaybird.relay import AccountHealth, Relay
from relaybird.sandbox.telegram import ApiCall
from relaybird.store import Store


@dataclass
class Scrape:
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float]
    content_type: str

    def value(self, name: str, **labels: str) -> float | None:
        return self.samples.get((name, frozenset(labels.items())))

    def named(self, name: str) -> dict[frozenset[tuple[str, str]], float]:
        return {labels: v for (n, labels), v in self.samples.items() if n == name}


def scrape(port: int) -> Scrape:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
        content_type = answer.headers["Content-Type"]
    samples = {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    return Scrape(samples, content_type)


@pytest.fixture
def refusing_telegram(networks: Networks) -> Iterator[dict[str, int]]:
    """Telegram refuses every message while `refusing["on"]` is set."""
    state = {"on": 1, "refused": 0}

    async def hook(call: ApiCall) -> web.StreamResponse | None:
        if call.method != "sendMessage" or not state["on"]:
            return None
        state["refused"] += 1
        body = {"ok": False, "error_code": 400, "description": "Bad Request: chat not found"}
        return web.json_response(body, status=400)

    networks.tg.hooks.append(hook)
    yield state
    networks.tg.hooks.clear()


def failing_bluesky_once(networks: Networks) -> dict[str, int]:
    state = {"failed": 0}

    async def interceptor(request: web.Request, nsid: str) -> web.StreamResponse | None:
        if nsid != "com.atproto.repo.createRecord" or state["failed"]:
            return None
        state["failed"] += 1
        return web.json_response({"error": "InternalServerError", "message": "boom"}, status=500)

    networks.bsky.interceptors.append(interceptor)
    return state


def test_a_mirrored_post_shows_in_the_scraped_metrics(networks: Networks) -> None:
    daemon = networks.daemon().start()
    try:
        editor = networks.editor()
        editor.status_post("kept home #nobridge")
        editor.status_post("goes everywhere")
        wait_for(lambda: networks.bsky_posts() and networks.tg_messages(), what="both copies")
        wait_for(
            lambda: scrape(networks.listen_port).value(
                "relaybird_deliveries_total", route="mirror", target="news_tg", outcome="done"
            ),
            what="the delivery counted",
        )
        metrics = scrape(networks.listen_port)
    finally:
        daemon.stop()
    assert metrics.content_type.startswith("text/plain")
    assert metrics.value("relaybird_events_total", account="news_masto", kind="post") == 2
    assert (
        metrics.value("relaybird_events_skipped_total", account="news_masto", reason="filtered")
        == 1
    )
    for target in ("news_bsky", "news_tg"):
        assert (
            metrics.value(
                "relaybird_deliveries_total", route="mirror", target=target, outcome="done"
            )
            == 1
        )
        assert metrics.value("relaybird_delivery_latency_seconds_count", target=target) == 1
        latency = metrics.value("relaybird_delivery_latency_seconds_sum", target=target)
        assert latency is not None and 0 < latency < 30
        # Mastodon gives each status's publication time: the end-to-end latency is known too.
        assert metrics.value("relaybird_source_latency_seconds_count", target=target) == 1
    for account in ("news_masto", "news_bsky", "news_tg"):
        assert metrics.value("relaybird_stream_connected", account=account) == 1
    assert not any(metrics.named("relaybird_queue_depth").values())
    assert metrics.named("relaybird_dead_letters_total") == {}


def test_retries_dead_letters_and_queue_depth_show_in_the_scraped_metrics(
    networks: Networks, refusing_telegram: dict[str, int]
) -> None:
    bluesky = failing_bluesky_once(networks)
    daemon = networks.daemon().start()
    try:
        networks.editor().status_post("a bad day")
        wait_for(lambda: networks.bsky_posts(), timeout=15, what="the Bluesky copy after a retry")
        wait_for(
            lambda: scrape(networks.listen_port).value(
                "relaybird_dead_letters_total", route="mirror", target="news_tg"
            ),
            what="the Telegram dead letter",
        )
        metrics = scrape(networks.listen_port)
    finally:
        daemon.stop()
    assert bluesky["failed"] == 1 and refusing_telegram["refused"] == 1
    outcome = {
        dict(labels)["outcome"]: value
        for labels, value in metrics.named("relaybird_deliveries_total").items()
        if dict(labels)["target"] == "news_bsky"
    }
    assert outcome == {"retried": 1, "done": 1}
    assert metrics.value("relaybird_retries_total", target="news_bsky", cause="error") == 1
    assert (
        metrics.value(
            "relaybird_deliveries_total", route="mirror", target="news_tg", outcome="dead"
        )
        == 1
    )
    assert metrics.value("relaybird_queue_depth", target="news_tg", state="dead") == 1


def test_stream_reconnects_and_the_connected_gauge_follow_the_listeners(tmp_path: Path) -> None:
    path = tmp_path / "relaybird.toml"
    path.write_text(
        """
[accounts.news_masto]
network = "mastodon"
base_url = "http://127.0.0.1:9"
access_token = "token-value"

[accounts.news_tg]
network = "telegram"
bot_token = "123:abc"
chat = "@news"

[[routes]]
name = "mirror"
from = ["news_masto"]
to = ["news_tg"]
"""
    )
    config = load_config(path, {})
    relay = Relay(config, Store(config.state_path()))
    relay.health["news_masto"] = AccountHealth(network="mastodon", role="source")
    sample = relay.metrics.registry.get_sample_value
    relay.set_connected("news_masto", True, "streaming")
    assert sample("relaybird_stream_connected", {"account": "news_masto"}) == 1
    assert sample("relaybird_stream_reconnects_total", {"account": "news_masto"}) is None
    for _ in range(2):
        relay.set_connected("news_masto", False, "stream lost")
        assert sample("relaybird_stream_connected", {"account": "news_masto"}) == 0
        relay.set_connected("news_masto", True, "streaming")
    assert sample("relaybird_stream_reconnects_total", {"account": "news_masto"}) == 2
    relay.store.close()


def test_every_relay_has_a_registry_of_its_own() -> None:
    first, second = Metrics(), Metrics()
    first.events.labels("a", "post").inc()
    assert (
        first.registry.get_sample_value("relaybird_events_total", {"account": "a", "kind": "post"})
        == 1
    )
    assert (
        second.registry.get_sample_value("relaybird_events_total", {"account": "a", "kind": "post"})
        is None
    )
