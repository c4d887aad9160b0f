"""The reference AT Protocol PDS from npm (`tests/pds`), run as a child process for the tests.

`RealPds().start()` runs `node tests/pds/start.mjs`, which starts `@atproto/dev-env`'s PDS with an
in-memory PLC on 127.0.0.1. The PDS is the ground truth the Bluesky sandbox is checked against, so its
absence is a failure, never a skip: install it with `npm ci` in tests/pds.
"""

from __future__ import annotations

import collections
import itertools
import json
import os
import queue
import secrets
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

PDS_DIR = Path(__file__).resolve().parent / "pds"
START_TIMEOUT = 60.0
# Handles on the dev PDS must end with one of its service domains.
HANDLE_DOMAIN = ".test"


class RealPdsError(RuntimeError):
    """The reference PDS could not be started or refused a set-up call."""


class RealPds:
    """One running reference PDS; `url` is its base URL as its own DID documents name it."""

    def __init__(self, *, rate_limits: bool = False, pds_dir: Path = PDS_DIR) -> None:
        self.rate_limits = rate_limits
        self.pds_dir = pds_dir
        self.url = ""
        self.plc_url = ""
        self._process: subprocess.Popen[str] | None = None
        self._stderr_lines: collections.deque[str] = collections.deque(maxlen=200)
        self._counter = itertools.count(1)
        # The tokens createAccount returns, by DID: a session without the 350 ms of a login.
        self.sessions: dict[str, dict[str, str]] = {}
        # Keeps handles unique across PDS restarts within one test run, for readable logs.
        self._run_tag = secrets.token_hex(2)

    def start(self) -> RealPds:
        """Spawn node and wait for the line announcing the URLs."""
        node = shutil.which("node")
        if node is None:
            raise RealPdsError("node is not installed; the real-PDS tests need Node.js 20")
        if not (self.pds_dir / "node_modules" / "@atproto" / "dev-env").is_dir():
            raise RealPdsError(
                f"{self.pds_dir / 'node_modules'} is missing: run `npm ci` in tests/pds"
            )
        args = [node, str(self.pds_dir / "start.mjs")]
        if self.rate_limits:
            args.append("--rate-limits")
        self._process = subprocess.Popen(
            args,
            cwd=self.pds_dir,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "NODE_ENV": "test", "LOG_ENABLED": "false"},
        )
        info = self._read_announcement(self._process)
        self.url = str(info["pds"])
        self.plc_url = str(info["plc"])
        return self

    def _read_announcement(self, process: subprocess.Popen[str]) -> dict[str, Any]:
        """Read the JSON line from a reader thread, so that a hung start-up times out cleanly."""
        lines: queue.Queue[str | None] = queue.Queue()
        assert process.stdout is not None and process.stderr is not None

        def pump_stdout() -> None:
            assert process.stdout is not None
            for line in process.stdout:
                lines.put(line)
            lines.put(None)

        def pump_stderr() -> None:
            assert process.stderr is not None
            for line in process.stderr:
                self._stderr_lines.append(line)

        threading.Thread(target=pump_stdout, daemon=True).start()
        threading.Thread(target=pump_stderr, daemon=True).start()
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            remaining = deadline - time.monotonic()
            try:
                line = lines.get(timeout=max(remaining, 0.01))
            except queue.Empty:
                self.stop()
                raise RealPdsError(f"the PDS did not start within {START_TIMEOUT:.0f} s") from None
            if line is None:
                process.wait(timeout=5)
                raise RealPdsError(
                    f"the PDS exited with code {process.returncode}:\n"
                    + "".join(list(self._stderr_lines)[-40:])
                )
            if line.startswith("{"):
                parsed: dict[str, Any] = json.loads(line)
                return parsed

    def stop(self) -> None:
        """Close stdin (the script's signal to shut down) and wait; kill only if it hangs."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.stdin is not None:
            process.stdin.close()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)

    def xrpc(
        self,
        nsid: str,
        body: dict[str, Any] | None = None,
        *,
        token: str | None = None,
    ) -> dict[str, Any]:
        """POST a procedure directly, for set-up steps that must not depend on the SDK under test."""
        request = urllib.request.Request(
            f"{self.url}/xrpc/{nsid}",
            data=json.dumps(body or {}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                result: dict[str, Any] = json.loads(response.read() or b"{}")
                return result
        except urllib.error.HTTPError as error:
            raise RealPdsError(
                f"{nsid} answered {error.code}: {error.read().decode(errors='replace')}"
            ) from error

    def create_account(self, handle_prefix: str) -> tuple[str, str, str]:
        """Create an account and return (did, handle, password); see `register_account`."""
        handle_tag = f"{self._run_tag}{next(self._counter)}"
        return register_account(self.xrpc, handle_prefix, handle_tag, self.sessions)


def register_account(
    xrpc: Callable[[str, dict[str, Any]], dict[str, Any]],
    handle_prefix: str,
    tag: str,
    sessions: dict[str, dict[str, str]],
) -> tuple[str, str, str]:
    """Create an account on a dev PDS and return (did, handle, password).

    The dev PDS needs no invite code and no e-mail check, but a handle is `<front>.test` with a
    front of 3 to 18 characters, no dots, unique, and not one of its reserved words (`news`,
    `other`, ...): the prefix is cut to 9 characters and given the unique `tag`.
    """
    handle = f"{handle_prefix[:9]}-{tag}".lower() + HANDLE_DOMAIN
    password = f"pw-{secrets.token_hex(8)}"
    answer = xrpc(
        "com.atproto.server.createAccount",
        {"handle": handle, "email": f"{handle_prefix}{tag}@relaybird.test", "password": password},
    )
    did = str(answer["did"])
    sessions[did] = {"accessJwt": str(answer["accessJwt"]), "refreshJwt": str(answer["refreshJwt"])}
    return did, str(answer["handle"]), password


def real_pds_fixture(*, rate_limits: bool = False) -> Callable[[], Iterator[RealPds]]:
    """Build a generator for a session-scoped fixture; wrap it with `pytest.fixture(scope=...)`."""

    def fixture() -> Iterator[RealPds]:
        pds = RealPds(rate_limits=rate_limits)
        try:
            pds.start()
        except RealPdsError as error:
            pytest.fail(str(error), pytrace=False)
        try:
            yield pds
        finally:
            pds.stop()

    return fixture
