"""The command line as a user meets it: `check`, `run` with a bad config, `status`, `retry`."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import Networks
from harness import wait_for

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_ENV = {
    "MASTODON_TOKEN": "masto-secret-token-value",
    "BSKY_APP_PASSWORD": "bsky-secret-app-password",
    "TELEGRAM_BOT_TOKEN": "123456:telegram-secret-token",
}


def relaybird(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relaybird.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
        cwd=cwd,
        timeout=60,
    )


class ConnectionCounter:
    """A TCP listener that only counts who connects: proof that nothing touched the network."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.sock.settimeout(0.2)
        self.connections = 0
        self.running = True
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _serve(self) -> None:
        while self.running:
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self.running = False
        self.thread.join()
        self.sock.close()


def test_check_accepts_the_example_config_and_lists_accounts_and_routes() -> None:
    result = relaybird("check", "-c", str(ROOT / "config.example.toml"), env=EXAMPLE_ENV)
    assert result.returncode == 0, result.stderr
    for name in ("news_masto", "news_bsky", "news_tg", "mirror", "mastodon", "bluesky", "telegram"):
        assert name in result.stdout
    for secret in EXAMPLE_ENV.values():
        assert secret not in result.stdout + result.stderr


def test_run_with_a_bad_config_exits_2_naming_the_key_and_connects_to_nothing(
    tmp_path: Path,
) -> None:
    counter = ConnectionCounter()
    try:
        config = tmp_path / "bad.toml"
        config.write_text(
            f"""[relaybird]
state = "s.sqlite3"

[accounts.m]
network = "mastodon"
base_url = "{counter.url}"
access_token = "${{MASTODON_TOKEN}}"

[accounts.t]
network = "telegram"
base_url = "{counter.url}"
bot_token = "${{TELEGRAM_BOT_TOKEN}}"
chat = "@c"

[[routes]]
name = "r"
from = ["m"]
to = ["t", "nobody"]
"""
        )
        result = relaybird("run", "-c", str(config), env=EXAMPLE_ENV)
    finally:
        counter.close()
    assert result.returncode == 2
    assert (
        "bad.toml" in result.stderr
        and "routes[0].to" in result.stderr
        and "nobody" in result.stderr
    )
    assert counter.connections == 0
    assert not (tmp_path / "s.sqlite3").exists()
    for secret in EXAMPLE_ENV.values():
        assert secret not in result.stdout + result.stderr


def test_check_reports_an_unset_environment_variable(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "MASTODON_TOKEN"}
    config = ROOT / "config.example.toml"
    result = subprocess.run(
        [sys.executable, "-m", "relaybird.cli", "check", "-c", str(config)],
        capture_output=True,
        text=True,
        env={**env, "BSKY_APP_PASSWORD": "x", "TELEGRAM_BOT_TOKEN": "y"},
        timeout=60,
    )
    assert result.returncode == 2
    assert "MASTODON_TOKEN" in result.stderr


def test_status_and_retry_show_and_requeue_dead_letters(tmp_path: Path) -> None:
    from relaybird.model import Event, EventKind, Post
    from relaybird.store import Planned, Store

    config = tmp_path / "c.toml"
    config.write_text((ROOT / "config.example.toml").read_text())
    state = tmp_path / "relaybird.sqlite3"
    store = Store(state)
    (delivery_id,) = store.accept(
        Event(EventKind.POST, "news_masto", Post(id="7", text="x")),
        [Planned("mirror", "news_bsky")],
    )
    store.dead_letter(store.delivery(delivery_id), "Bluesky refused the post (InvalidRecord)")
    store.close()
    shown = relaybird("status", "-c", str(config), "--json", env=EXAMPLE_ENV)
    assert shown.returncode == 0, shown.stderr
    assert "InvalidRecord" in shown.stdout and '"dead": 1' in shown.stdout
    retried = relaybird("retry", "-c", str(config), "--all", env=EXAMPLE_ENV)
    assert retried.returncode == 0 and "re-queued 1" in retried.stdout
    assert Store(state).delivery(delivery_id).state == "retry"


def test_retry_says_what_is_wrong_with_its_arguments(tmp_path: Path) -> None:
    from relaybird.model import Event, EventKind, Post
    from relaybird.store import Planned, Store

    config = tmp_path / "c.toml"
    config.write_text((ROOT / "config.example.toml").read_text())
    neither = relaybird("retry", "-c", str(config), env=EXAMPLE_ENV)
    both = relaybird("retry", "-c", str(config), "3", "--all", env=EXAMPLE_ENV)
    assert (neither.returncode, both.returncode) == (2, 2)
    never_ran = relaybird("retry", "-c", str(config), "3", env=EXAMPLE_ENV)
    assert never_ran.returncode == 1 and "no state" in never_ran.stderr
    assert not (tmp_path / "relaybird.sqlite3").exists()
    store = Store(tmp_path / "relaybird.sqlite3")
    (pending_id,) = store.accept(
        Event(EventKind.POST, "news_masto", Post(id="7", text="x")),
        [Planned("mirror", "news_bsky")],
    )
    store.close()
    unknown = relaybird("retry", "-c", str(config), "999", env=EXAMPLE_ENV)
    assert unknown.returncode == 1 and "no delivery 999" in unknown.stderr
    alive = relaybird("retry", "-c", str(config), str(pending_id), env=EXAMPLE_ENV)
    assert alive.returncode == 1 and "not dead-lettered (it is pending)" in alive.stderr


def json_log_config(networks: Networks) -> Path:
    config = networks.write_config()
    text = config.read_text().replace(
        'log_level = "debug"', 'log_level = "debug"\nlog_format = "json"'
    )
    config.write_text(text)
    return config


def test_json_log_has_one_object_per_line_with_the_ids_of_each_decision(
    networks: Networks,
) -> None:
    daemon = networks.daemon(json_log_config(networks)).start()
    try:
        status = networks.editor().status_post("logged as JSON")
        networks.editor().status_post("kept home #nobridge")
        wait_for(lambda: networks.bsky_posts() and networks.tg_messages(), what="both copies")
        wait_for(lambda: '"decision": "done"' in daemon.log(), what="the done lines")
    finally:
        daemon.stop()
    lines = [json.loads(line) for line in daemon.log().splitlines() if line.strip()]
    assert all({"time", "level", "logger", "message"} <= entry.keys() for entry in lines)
    post_id = str(status["id"])
    queued = [e for e in lines if e.get("decision") == "queued"]
    assert {
        (e["route"], e["source_account"], e["source_id"], e["target_account"]) for e in queued
    } == {
        ("mirror", "news_masto", post_id, "news_bsky"),
        ("mirror", "news_masto", post_id, "news_tg"),
    }
    done = [e for e in lines if e.get("decision") == "done"]
    assert {e["target_account"] for e in done} == {"news_bsky", "news_tg"}
    assert all(e["source_id"] == post_id and e["delivery_id"] and e["target_id"] for e in done)
    skipped = [e for e in lines if e.get("decision") == "skipped"]
    assert [(e["source_account"], e["reason_class"]) for e in skipped] == [
        ("news_masto", "filtered")
    ]
    assert "nobridge" in skipped[0]["reason"]


def test_no_secret_reaches_the_log_even_at_debug_level_and_on_errors(
    networks: Networks,
) -> None:
    from aiohttp import web

    from relaybird.sandbox.telegram import ApiCall

    async def refuse(call: ApiCall) -> web.StreamResponse | None:
        if call.method != "sendMessage":
            return None
        body = {"ok": False, "error_code": 500, "description": "Internal Server Error"}
        return web.json_response(body, status=500)

    async def fail(request: web.Request, nsid: str) -> web.StreamResponse | None:
        if nsid != "com.atproto.repo.createRecord":
            return None
        return web.json_response({"error": "InternalServerError", "message": "x"}, status=500)

    networks.tg.hooks.append(refuse)
    networks.bsky.interceptors.append(fail)
    for config in (networks.write_config(), json_log_config(networks)):
        daemon = networks.daemon(config)
        before = daemon.log().count("retrying in")
        daemon.start()
        try:
            networks.editor().status_post("a post on a bad day")
            wait_for(
                lambda d=daemon, n=before: d.log().count("retrying in") >= n + 2,
                what="both failures logged",
            )
        finally:
            daemon.stop()
    log = daemon.log()
    secrets = [value for value in networks.env.values() if value]
    assert len(secrets) == 3
    for secret in secrets:
        assert secret not in log
    assert "eyJ" not in log, "a session token (JWT) was logged"


def test_log_lines_mask_the_configured_secrets_in_both_formats(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import logging

    from relaybird.logsetup import setup_logging

    token = "123456:telegram-secret-token"
    for fmt in ("text", "json"):
        setup_logging("info", fmt, secrets=[token])
        logger = logging.getLogger("relaybird.test")
        logger.info("POST https://api.telegram.org/bot%s/sendMessage", token, extra={"url": token})
        try:
            raise RuntimeError(f"failed at /bot{token}/getMe")
        except RuntimeError:
            logger.exception("request failed")
        err = capsys.readouterr().err
        assert token not in err
        assert "/bot***/sendMessage" in err
    logging.getLogger().handlers.clear()
