"""The command line as a user meets it: `check`, `run` with a bad config, `status`, `retry`."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

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
