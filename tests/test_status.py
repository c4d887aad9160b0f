"""`relaybird status` and `relaybird retry` as an operator uses them next to a running daemon.

Stream states come from the daemon's `/healthz`; counts, cursors and errors from the store. The
dead letter is real: the Telegram sandbox refuses the message, then is let to accept it again.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from conftest import Networks
from harness import wait_for

from relaybird.sandbox.telegram import ApiCall


def relaybird(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relaybird.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "250", **env},
        timeout=60,
    )


def status(config: Path, env: dict[str, str]) -> dict[str, Any]:
    shown = relaybird("status", "-c", str(config), "--json", env=env)
    assert shown.returncode == 0, shown.stderr
    report: dict[str, Any] = json.loads(shown.stdout)
    return report


@pytest.fixture
def refusing(networks: Networks) -> Iterator[dict[str, bool]]:
    state = {"on": True}

    async def hook(call: ApiCall) -> web.StreamResponse | None:
        if call.method != "sendMessage" or not state["on"]:
            return None
        body = {"ok": False, "error_code": 400, "description": "Bad Request: chat not found"}
        return web.json_response(body, status=400)

    networks.tg.hooks.append(hook)
    yield state
    networks.tg.hooks.clear()


def test_status_shows_streams_counts_and_errors_and_retry_requeues_through_the_cli(
    networks: Networks, refusing: dict[str, bool]
) -> None:
    config = networks.write_config()
    env = networks.env
    daemon = networks.daemon(config).start()
    try:
        networks.editor().status_post("first news of the day")
        wait_for(
            lambda: status(config, env)["routes"]["mirror"]["dead"] == 1,
            what="the Telegram dead letter",
        )
        report = status(config, env)
        assert report["daemon"] == {
            "running": True,
            "listen": f"127.0.0.1:{networks.listen_port}",
            "status": "ok",
            "store_ok": True,
            "store_detail": "",
        }
        masto = report["accounts"]["news_masto"]
        assert (masto["network"], masto["role"], masto["stream"]) == (
            "mastodon",
            "source",
            "connected",
        )
        assert masto["cursor"] is not None and 0 <= masto["cursor_age_seconds"] < 60
        assert report["accounts"]["news_tg"]["role"] == "target"
        assert report["routes"]["mirror"] == {
            "mirrored": 1,
            "pending": 0,
            "retrying": 0,
            "dead": 1,
            "skipped": 0,
        }
        (error,) = report["errors"]
        assert (error["target"], error["state"], error["route"]) == ("news_tg", "dead", "mirror")
        assert "Chat not found" in error["error"]
        assert error["source"].startswith("news_masto:")

        table = relaybird("status", "-c", str(config), env=env)
        assert table.returncode == 0, table.stderr
        for shown in ("news_masto", "connected", "mirror", "mirrored", "Chat not found"):
            assert shown in table.stdout
        assert str(error["id"]) in table.stdout

        refusing["on"] = False
        retried = relaybird("retry", "-c", str(config), str(error["id"]), env=env)
        assert retried.returncode == 0, retried.stderr
        assert "re-queued 1 dead-lettered delivery" in retried.stdout
        wait_for(lambda: networks.tg_messages(), what="the retried Telegram copy")
        wait_for(
            lambda: status(config, env)["routes"]["mirror"]["mirrored"] == 2,
            what="the retried delivery counted",
        )
        assert status(config, env)["errors"] == []
    finally:
        daemon.stop()
    stopped = status(config, env)
    assert stopped["daemon"]["running"] is False
    assert stopped["accounts"]["news_masto"]["stream"] == "daemon not running"
    assert stopped["routes"]["mirror"]["mirrored"] == 2
    table = relaybird("status", "-c", str(config), env=env)
    assert "daemon not running" in table.stdout


def test_status_of_a_config_that_never_ran_reports_zeros(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parent.parent
    config = tmp_path / "relaybird.toml"
    config.write_text(
        (root / "config.example.toml")
        .read_text()
        .replace('listen = "127.0.0.1:9810"', 'listen = "127.0.0.1:9"')
    )
    env = {"MASTODON_TOKEN": "t" * 12, "BSKY_APP_PASSWORD": "p" * 12, "TELEGRAM_BOT_TOKEN": "1:x"}
    report = status(config, env)
    assert report["daemon"]["running"] is False
    assert report["routes"] == {
        "mirror": {"mirrored": 0, "pending": 0, "retrying": 0, "dead": 0, "skipped": 0}
    }
    assert report["errors"] == []
    # The crosspost bot reads news_masto's notifications: a stream of its own, shown apart.
    assert set(report["accounts"]) == {"news_masto", "news_masto#mentions", "news_bsky", "news_tg"}
    assert report["accounts"]["news_masto"]["role"] == "source+bot"
    assert report["accounts"]["news_masto#mentions"]["role"] == "mentions"
    assert not (tmp_path / "relaybird.sqlite3").exists()


def test_status_shows_an_account_held_by_the_networks_retry_after(networks: Networks) -> None:
    calls = {"n": 0}

    async def flood(call: ApiCall) -> web.StreamResponse | None:
        if call.method != "sendMessage":
            return None
        calls["n"] += 1
        body = {
            "ok": False,
            "error_code": 429,
            "description": "Too Many Requests: retry after 40",
            "parameters": {"retry_after": 40},
        }
        return web.json_response(body, status=429)

    networks.tg.hooks.append(flood)
    config = networks.write_config()
    daemon = networks.daemon(config).start()
    try:
        networks.editor().status_post("one")
        networks.editor().status_post("two")
        wait_for(lambda: networks.bsky_posts() and calls["n"], what="the 429")
        wait_for(lambda: len(networks.bsky_posts()) == 2, what="Bluesky keeps flowing")
        report = status(config, networks.env)
    finally:
        daemon.stop()
    held = report["accounts"]["news_tg"]["rate_limited_for_seconds"]
    assert 30 < held <= 40
    assert report["accounts"]["news_bsky"]["rate_limited_for_seconds"] == 0
    assert report["routes"]["mirror"]["retrying"] == 1
    assert report["routes"]["mirror"]["pending"] == 1
    (error,) = report["errors"]
    assert error["state"] == "retry" and 30 < error["next_attempt_in_seconds"] <= 40
    # The second message waited with the first: Telegram was asked once.
    assert calls["n"] == 1


def test_a_network_down_at_start_does_not_keep_the_others_from_flowing(
    networks: Networks,
) -> None:
    down = {"on": True, "refused": 0}

    async def unreachable(call: ApiCall) -> web.StreamResponse | None:
        if not down["on"]:
            return None
        down["refused"] += 1
        body = {"ok": False, "error_code": 502, "description": "Bad Gateway"}
        return web.json_response(body, status=502)

    networks.tg.hooks.append(unreachable)
    config = networks.write_config()
    daemon = networks.daemon(config).start(wait_healthy=False)
    try:
        wait_for(
            lambda: (
                "cannot log in" in status(config, networks.env)["accounts"]["news_tg"]["detail"]
            ),
            what="Telegram reported as unreachable",
        )
        health = daemon.health()
        assert health is not None and health[0] == 503
        networks.editor().status_post("news while Telegram is down")
        wait_for(lambda: networks.bsky_posts(), what="the Bluesky copy")
        assert networks.tg_messages() == []
        down["on"] = False
        wait_for(daemon.healthy, what="Telegram logged in again")
        wait_for(lambda: networks.tg_messages(), what="the Telegram copy")
    finally:
        daemon.stop()
    assert down["refused"] >= 1
    assert [m["text"] for m in networks.tg_messages()] == ["news while Telegram is down"]
