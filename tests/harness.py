"""End-to-end harness: sandbox servers on a background event loop and the daemon as a real process.

The sandboxes run in a thread of their own so that tests can use the synchronous Mastodon.py client
as a person would, while the daemon under test runs as `relaybird run` in a separate process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


class LoopThread:
    """An asyncio loop in a daemon thread; tests hand it coroutines and read state through it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def call(self, function: Callable[..., T], *args: Any) -> T:
        async def wrapper() -> T:
            return function(*args)

        return self.run(wrapper())

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


class Server(Protocol):
    """A sandbox: started and stopped on the loop that serves it."""

    async def start(self) -> Any: ...

    async def stop(self) -> None: ...


@contextlib.contextmanager
def serving(*servers: Server) -> Iterator[LoopThread]:
    """The servers started on a loop thread of their own; stopped, with the loop, on the way out."""
    loop = LoopThread()
    started: list[Server] = []
    try:
        for server in servers:
            loop.run(server.start())
            started.append(server)
        yield loop
    finally:
        for server in reversed(started):
            loop.run(server.stop())
        loop.stop()


def telegram_links(message: dict[str, Any]) -> list[str]:
    """Every link target of a Telegram message: text links and bare URLs (UTF-16 offsets)."""
    text = message.get("text") or ""
    found = []
    for entity in message.get("entities") or []:
        if entity["type"] == "text_link":
            found.append(entity["url"])
        elif entity["type"] == "url":
            raw = text.encode("utf-16-le")[entity["offset"] * 2 :]
            found.append(raw[: entity["length"] * 2].decode("utf-16-le"))
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(
    predicate: Callable[[], T | None], timeout: float = 30, interval: float = 0.1, what: str = ""
) -> T:
    """Poll until `predicate` returns something truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")
        time.sleep(interval)


class Daemon:
    """`relaybird run -c CONFIG` in its own process, with its log kept for failure messages."""

    def __init__(self, config: Path, listen_port: int, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.port = listen_port
        self.env = {**os.environ, **(env or {})}
        self.log_path = config.parent / "daemon.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, wait_healthy: bool = True) -> Daemon:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "relaybird.cli",
                "run",
                "-c",
                str(self.config),
                "--log-level",
                "debug",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
        )
        if wait_healthy:
            try:
                wait_for(self.healthy, timeout=60, what="daemon health")
            except AssertionError as error:
                health = self.health()
                raise AssertionError(f"{error}; /healthz: {health}; log:\n{self.log()}") from None
        return self

    def health(self) -> tuple[int, dict[str, Any]] | None:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"daemon exited with {self.process.returncode}:\n{self.log()}")
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.port}/healthz", timeout=2
            ) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return None

    def healthy(self) -> bool:
        answer = self.health()
        return answer is not None and answer[0] == 200

    def stop(self, timeout: float = 20) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout)
        self.process = None
        return code

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)
        self.process = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
