"""A real Bluesky network with an AppView (PLC, PDS, AppView, Ozone from `tests/pds`) for the tests.

Notifications, profiles and threads (`app.bsky.*`) come from an AppView, which a bare PDS lacks.
`AppViewNetwork().start()` runs `node tests/pds/start-network.mjs` (dev-env's `TestNetwork`) on
private PostgreSQL and Redis servers that it starts itself in one temporary directory and removes
again: PostgreSQL is reached only through a unix socket in that directory, Redis and the node
services listen on 127.0.0.1. Missing programs are a failure, never a skip: `bash scripts/setup`
installs them all.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import itertools
import json
import os
import pwd
import queue
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.realpds import register_account

PDS_DIR = Path(__file__).resolve().parent / "pds"
START_TIMEOUT = 120.0
SETUP_HINT = "run `bash scripts/setup`"
# Handles on the dev PDS must end with one of its service domains.
# The AppView tables go to appview_<suffix>, Ozone's to ozone_<suffix>.
SCHEMA_SUFFIX = "relaybird"

T = TypeVar("T")


class AppViewNetworkError(RuntimeError):
    """The network or one of its servers could not be started, or refused a set-up call."""


def wait_until(
    probe: Callable[[], T | None], *, timeout: float, what: str, interval: float = 0.05
) -> T:
    """Poll `probe` until it returns something other than None; the AppView indexes asynchronously."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result is not None:
            return result
        if time.monotonic() >= deadline:
            raise AppViewNetworkError(f"timed out after {timeout:.1f} s waiting for {what}")
        time.sleep(interval)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _postgres_bindir() -> Path:
    """Where initdb and postgres live: Debian keeps them off PATH, in /usr/lib/postgresql/N/bin."""
    candidates: list[Path] = []
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    candidates.extend(versions)
    for bindir in candidates:
        if (bindir / "initdb").is_file() and (bindir / "postgres").is_file():
            return bindir
    raise AppViewNetworkError(f"PostgreSQL (initdb, postgres) is not installed: {SETUP_HINT}")


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# The servers outlive nothing: each runs under a shell that stops it (with the signal given) when its
# stdin, a pipe from this process, closes, which happens however the test run ends, even by SIGKILL;
# it then removes the server's data directory, if it was given one. The shell itself exits when the
# server does, so a server that dies is noticed at once.
_GUARD = (
    'sig=$1; data=$2; shift 2; exec 3<&0; "$@" </dev/null & server=$!; '
    '{ read -r _ <&3; kill -s "$sig" "$server" 2>/dev/null; } & '
    'wait "$server"; status=$?; [ -z "$data" ] || rm -rf "$data"; exit "$status"'
)


class GuardedServer:
    """A server process tied to this Python process's lifetime through its guard's stdin."""

    def __init__(
        self,
        argv: list[str],
        *,
        stop_signal: str,
        log: Path,
        data: Path | None = None,
        **popen: Any,
    ) -> None:
        with log.open("wb") as log_file:
            self._guard: subprocess.Popen[bytes] | None = subprocess.Popen(
                ["sh", "-c", _GUARD, "guard", stop_signal, str(data or ""), *argv],
                stdin=subprocess.PIPE,
                stdout=log_file,
                stderr=log_file,
                **popen,
            )

    @property
    def running(self) -> bool:
        return self._guard is not None and self._guard.poll() is None

    @property
    def pids(self) -> list[int]:
        """The server and its own children (PostgreSQL's backends), plus the guard's small reader."""
        if self._guard is None:
            return []
        servers = _children(self._guard.pid)
        return [*servers, *(pid for server in servers for pid in _children(server))]

    def stop(self, timeout: float = 15) -> None:
        """Close the pipe and wait; kill the server outright only if it hangs."""
        guard, self._guard = self._guard, None
        if guard is None:
            return
        assert guard.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            guard.stdin.close()
        try:
            guard.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            for pid in _children(guard.pid):
                os.kill(pid, signal.SIGKILL)
            guard.kill()
            guard.wait(timeout=5)


def _pss_kib(pid: int) -> int:
    """Proportional set size: shared pages (PostgreSQL's buffers) are split between processes."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


class PrivatePostgres:
    """A throwaway PostgreSQL cluster reachable only through a unix socket in its own directory.

    PostgreSQL refuses to run as root, so when the tests run as root (CI does) the cluster belongs
    to the `postgres` system user that Debian's package creates.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.bindir = _postgres_bindir()
        self._server: GuardedServer | None = None
        self._owner: pwd.struct_passwd | None = None
        if os.geteuid() == 0:
            try:
                self._owner = pwd.getpwnam("postgres")
            except KeyError:
                raise AppViewNetworkError(
                    f"PostgreSQL cannot run as root and there is no `postgres` user: {SETUP_HINT}"
                ) from None

    @property
    def url(self) -> str:
        """node-postgres takes the socket directory from the `host` parameter."""
        host = urllib.parse.quote(str(self.directory), safe="/")
        return f"postgresql://postgres@localhost/postgres?host={host}"

    @property
    def pids(self) -> list[int]:
        return self._server.pids if self._server else []

    def _run_as_owner(self) -> dict[str, Any]:
        if self._owner is None:
            return {}
        return {"user": self._owner.pw_uid, "group": self._owner.pw_gid, "extra_groups": []}

    def start(self) -> None:
        self.directory.mkdir(mode=0o700)
        if self._owner is not None:
            os.chown(self.directory, self._owner.pw_uid, self._owner.pw_gid)
        data = self.directory / "data"
        initdb = subprocess.run(
            [str(self.bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust",
             "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions"],
            cwd=self.directory, capture_output=True, text=True, check=False,
            **self._run_as_owner(),
        )  # fmt: skip
        if initdb.returncode != 0:
            raise AppViewNetworkError(f"initdb failed:\n{initdb.stdout}{initdb.stderr}")
        log = self.directory / "postgres.log"
        self._server = GuardedServer(
            [str(self.bindir / "postgres"), "-D", str(data),
             # No TCP at all: the socket in our own directory cannot clash with anything.
             "-c", "listen_addresses=", "-c", f"unix_socket_directories={self.directory}",
             # A test index that dies with the run needs no durability.
             "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
             "-c", "wal_level=minimal", "-c", "max_wal_senders=0",
             "-c", "shared_buffers=32MB", "-c", "max_connections=100"],
            # SIGINT is PostgreSQL's fast shutdown: open sessions are rolled back, not waited for.
            stop_signal="INT", log=log, data=data, cwd=self.directory, **self._run_as_owner(),
        )  # fmt: skip
        self._wait_ready(log)

    def _wait_ready(self, log: Path) -> None:
        def ready() -> bool | None:
            if self._server is None or not self._server.running:
                raise AppViewNetworkError(f"postgres exited:\n{_tail(log)}")
            text = log.read_text(errors="replace") if log.exists() else ""
            return True if "ready to accept connections" in text else None

        wait_until(ready, timeout=30, what="PostgreSQL to accept connections")

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.stop()


class PrivateRedis:
    """A Redis server on 127.0.0.1 keeping nothing on disk."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        binary = shutil.which("redis-server")
        if binary is None:
            raise AppViewNetworkError(f"redis-server is not installed: {SETUP_HINT}")
        self.binary = binary
        self.port = 0
        self._server: GuardedServer | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pids(self) -> list[int]:
        return self._server.pids if self._server else []

    def start(self) -> None:
        self.directory.mkdir(mode=0o700)
        # Another program may take the port between our probe and Redis's bind: try again then.
        for _attempt in range(3):
            self.port = _free_port()
            log = self.directory / f"redis-{self.port}.log"
            self._server = GuardedServer(
                [self.binary, "--bind", "127.0.0.1", "--port", str(self.port),
                 "--save", "", "--appendonly", "no", "--dir", str(self.directory),
                 "--protected-mode", "yes", "--daemonize", "no"],
                stop_signal="TERM", log=log, cwd=self.directory,
            )  # fmt: skip
            try:
                wait_until(self._pong, timeout=10, what="Redis to answer PING")
                return
            except AppViewNetworkError:
                self.stop()
        raise AppViewNetworkError(f"redis-server did not start:\n{_tail(log)}")

    def _pong(self) -> bool | None:
        if self._server is None or not self._server.running:
            raise AppViewNetworkError("redis-server exited")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as conn:
                conn.sendall(b"PING\r\n")
                return True if conn.recv(64).startswith(b"+PONG") else None
        except OSError:
            return None

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.stop()


class AppViewNetwork:
    """One running PLC + PDS + AppView; `url` is the PDS's base URL as its DID documents name it.

    Accounts live on the PDS; `app.bsky.*` calls made to the PDS are proxied to the AppView, which
    learns about records from the PDS's firehose a fraction of a second after they are written.
    """

    def __init__(self, *, network_dir: Path = PDS_DIR) -> None:
        self.network_dir = network_dir
        self.url = ""
        self.appview_url = ""
        self.plc_url = ""
        self.appview_did = ""
        self.start_seconds = 0.0
        self.root: Path | None = None
        self.postgres: PrivatePostgres | None = None
        self.redis: PrivateRedis | None = None
        self._process: subprocess.Popen[str] | None = None
        self._stderr_lines: collections.deque[str] = collections.deque(maxlen=200)
        self._stdout_lines: queue.Queue[str | None] = queue.Queue()
        self._stderr_pump: threading.Thread | None = None
        self._counter = itertools.count(1)
        # The tokens createAccount returns, by DID: a session without the cost of a login.
        self.sessions: dict[str, dict[str, str]] = {}
        self._run_tag = secrets.token_hex(2)

    def start(self) -> AppViewNetwork:
        """Start PostgreSQL, Redis and the node services; on any failure leave nothing behind."""
        began = time.monotonic()
        node = self._check_prerequisites()
        self.root = Path(tempfile.mkdtemp(prefix="relaybird-appview-"))
        # The postgres user must be able to reach its own directory inside ours.
        self.root.chmod(0o711)
        atexit.register(self.stop)
        try:
            self.postgres = PrivatePostgres(self.root / "pg")
            self.redis = PrivateRedis(self.root / "redis")
            self.redis.start()
            # Node spends seconds loading dev-env: let it do so while PostgreSQL starts.
            process = self._spawn_node(node)
            self.postgres.start()
            assert process.stdin is not None
            # A node that already died is reported, with its stderr, by _read_announcement.
            with contextlib.suppress(BrokenPipeError):
                process.stdin.write("start\n")
                process.stdin.flush()
            self._read_announcement()
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - began
        return self

    def _check_prerequisites(self) -> str:
        node = shutil.which("node")
        if node is None:
            raise AppViewNetworkError(f"node is not installed (Node.js 20): {SETUP_HINT}")
        if not (self.network_dir / "node_modules" / "@atproto" / "dev-env").is_dir():
            raise AppViewNetworkError(
                f"{self.network_dir / 'node_modules'} is missing: {SETUP_HINT}"
            )
        _postgres_bindir()
        if shutil.which("redis-server") is None:
            raise AppViewNetworkError(f"redis-server is not installed: {SETUP_HINT}")
        return node

    def _spawn_node(self, node: str) -> subprocess.Popen[str]:
        assert self.root is not None and self.postgres is not None and self.redis is not None
        process = self._process = subprocess.Popen(
            [node, str(self.network_dir / "start-network.mjs")],
            cwd=self.network_dir,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={
                **os.environ,
                "NODE_ENV": "test",
                "LOG_ENABLED": "false",
                "TMPDIR": str(self.root),
                "DB_POSTGRES_URL": self.postgres.url,
                "DB_POSTGRES_SCHEMA": SCHEMA_SUFFIX,
                "REDIS_HOST": self.redis.host,
            },
        )
        assert process.stdout is not None and process.stderr is not None
        stdout, stderr = process.stdout, process.stderr

        def pump_stdout() -> None:
            for line in stdout:
                self._stdout_lines.put(line)
            self._stdout_lines.put(None)

        def pump_stderr() -> None:
            for line in stderr:
                self._stderr_lines.append(line)

        threading.Thread(target=pump_stdout, daemon=True).start()
        self._stderr_pump = threading.Thread(target=pump_stderr, daemon=True)
        self._stderr_pump.start()
        return process

    def _read_announcement(self) -> None:
        """Wait for the JSON line with a timeout, so that a hung start-up fails cleanly."""
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                line = self._stdout_lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                raise AppViewNetworkError(
                    f"the network did not start within {START_TIMEOUT:.0f} s:\n{self._stderr()}"
                ) from None
            if line is None:
                code = self._process.wait(timeout=5) if self._process else None
                if self._stderr_pump is not None:
                    self._stderr_pump.join(timeout=2)
                raise AppViewNetworkError(f"the network exited with code {code}:\n{self._stderr()}")
            if line.startswith("{"):
                info = json.loads(line)
                self.url = str(info["pds"])
                self.appview_url = str(info["appview"])
                self.plc_url = str(info["plc"])
                self.appview_did = str(info["appviewDid"])
                return

    def _stderr(self) -> str:
        return "".join(list(self._stderr_lines)[-40:])

    def stop(self) -> None:
        """Node first (it closes its database pools), then the servers, then the directory."""
        process, self._process = self._process, None
        if process is not None:
            if process.stdin is not None:
                with contextlib.suppress(BrokenPipeError):
                    process.stdin.close()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
        if self.redis is not None:
            self.redis.stop()
        if self.postgres is not None:
            self.postgres.stop()
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None
        atexit.unregister(self.stop)

    def memory_kib(self) -> dict[str, int]:
        """Memory (PSS) of node, of all PostgreSQL processes together and of Redis, to keep an eye on
        what the suite costs a CI machine."""
        usage = {"node": 0, "postgres": 0, "redis": 0}
        if self._process is not None:
            usage["node"] = _pss_kib(self._process.pid)
        if self.postgres is not None:
            usage["postgres"] = sum(_pss_kib(pid) for pid in self.postgres.pids)
        if self.redis is not None:
            usage["redis"] = sum(_pss_kib(pid) for pid in self.redis.pids)
        return usage

    def _call(self, request: urllib.request.Request, nsid: str) -> dict[str, Any]:
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                result: dict[str, Any] = json.loads(response.read() or b"{}")
                return result
        except urllib.error.HTTPError as error:
            raise AppViewNetworkError(
                f"{nsid} answered {error.code}: {error.read().decode(errors='replace')}"
            ) from error

    def xrpc(
        self, nsid: str, body: dict[str, Any] | None = None, *, token: str | None = None
    ) -> dict[str, Any]:
        """POST a procedure to the PDS, for set-up steps that must not depend on the SDK under test."""
        request = urllib.request.Request(
            f"{self.url}/xrpc/{nsid}",
            data=json.dumps(body or {}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        return self._call(request, nsid)

    def query(
        self,
        nsid: str,
        params: dict[str, str | list[str]] | None = None,
        *,
        token: str | None = None,
        appview: bool = False,
    ) -> dict[str, Any]:
        """GET a query from the PDS (which proxies app.bsky.* with the caller's identity when
        `token` is given) or, with `appview=True`, anonymously from the AppView itself."""
        base = self.appview_url if appview else self.url
        query = urllib.parse.urlencode(params or {}, doseq=True)
        request = urllib.request.Request(f"{base}/xrpc/{nsid}?{query}")
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        return self._call(request, nsid)

    def create_account(self, handle_prefix: str, *, indexed: bool = True) -> tuple[str, str, str]:
        """Create an account (see `register_account`) and return (did, handle, password).

        With `indexed` this returns only once the AppView knows the account, so that a `login()`
        that fetches the profile succeeds at once.
        """
        handle_tag = f"{self._run_tag}{next(self._counter)}"
        did, handle, password = register_account(
            self.xrpc, handle_prefix, handle_tag, self.sessions
        )
        if indexed:
            self.wait_for_profile(did)
        return did, handle, password

    def _appview_or_none(self, nsid: str, params: dict[str, str | list[str]]) -> Any:
        try:
            return self.query(nsid, params, appview=True)
        except AppViewNetworkError:
            return None

    def wait_for_profile(self, did: str, timeout: float = 10) -> dict[str, Any]:
        """Wait until the AppView has indexed the account and return its profile view."""
        profile: dict[str, Any] = wait_until(
            lambda: self._appview_or_none("app.bsky.actor.getProfile", {"actor": did}),
            timeout=timeout,
            what=f"the AppView to index {did}",
        )
        return profile

    def wait_for_post(self, uri: str, timeout: float = 10) -> dict[str, Any]:
        """Wait until the AppView has indexed the post at `uri` and return its post view."""

        def probe() -> dict[str, Any] | None:
            answer = self._appview_or_none("app.bsky.feed.getPosts", {"uris": [uri]})
            posts = answer.get("posts") if answer else None
            return dict(posts[0]) if posts else None

        return wait_until(probe, timeout=timeout, what=f"the AppView to index {uri}")

    def wait_for_notifications(
        self,
        did: str,
        predicate: Callable[[list[dict[str, Any]]], bool],
        timeout: float = 10,
    ) -> list[dict[str, Any]]:
        """Poll `did`'s notifications (through the PDS, as a client would) until `predicate` holds
        for the list, newest first; uses the session from `create_account`."""
        token = self.sessions[did]["accessJwt"]

        def probe() -> list[dict[str, Any]] | None:
            answer = self.query("app.bsky.notification.listNotifications", token=token)
            notifications = list(answer.get("notifications", []))
            return notifications if predicate(notifications) else None

        return wait_until(probe, timeout=timeout, what=f"notifications for {did}")


def appview_network_fixture() -> Callable[[], Iterator[AppViewNetwork]]:
    """Build a generator for a session-scoped fixture; wrap it with `pytest.fixture(scope=...)`."""

    def fixture() -> Iterator[AppViewNetwork]:
        network = AppViewNetwork()
        try:
            network.start()
        except AppViewNetworkError as error:
            pytest.fail(str(error), pytrace=False)
        try:
            yield network
        finally:
            network.stop()

    return fixture
