"""What the benchmarks share: sandboxes with their limits relaxed, accounts on them, a config, the
daemon as a real `relaybird run` process measured through /proc, and server-side clocks.

Times are taken inside the sandbox servers, at the moment each one stores a post: the Mastodon
sandbox's `status_created`, the Telegram sandbox's `world.add_message` and the Bluesky sandbox's
`firehose.commit` are wrapped on the instance to note `time.perf_counter()`. That is the server's own
"accepted"/"stored" moment, free of any polling delay, and the servers and the benchmark share one
clock because they run in this process (the daemon runs in another).
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from relaybird import config as relay_config  # noqa: E402
from relaybird.sandbox.bluesky import BlueskySandbox  # noqa: E402
from relaybird.sandbox.mastodon import MastodonSandbox  # noqa: E402
from relaybird.sandbox.telegram import TelegramSandbox  # noqa: E402
from tests.harness import LoopThread, free_port  # noqa: E402

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
BSKY_PASSWORD = "bench-app-password-1234"

# Far above anything a benchmark sends: the relay's own pacing must not be what is measured.
UNPACED = {
    "posts_per_hour": 1e9,
    "post_burst": 1_000_000,
    "uploads_per_hour": 1e9,
    "upload_burst": 1_000_000,
    "deletes_per_hour": 1e9,
    "delete_burst": 1_000_000,
    "calls_per_minute": 1e9,
    "call_burst": 1_000_000,
}


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile: with 100 samples p99 is the 99th smallest, not an interpolation."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-fraction * len(ordered) // 1))))
    return ordered[rank - 1]


def summary(values: list[float]) -> str:
    if not values:
        return "no samples"
    return (
        f"p50 {percentile(values, 0.5):7.1f} ms   p99 {percentile(values, 0.99):7.1f} ms"
        f"   mean {statistics.fmean(values):7.1f} ms   max {max(values):7.1f} ms"
        f"   (n={len(values)})"
    )


@dataclass(frozen=True)
class Stored:
    """One post a sandbox stored: when (perf_counter seconds), where, and its id."""

    at: float
    network: str
    account: str
    post_id: str
    text: str | None


class Observer:
    """Every post the three sandboxes store, with the server-side moment it was stored."""

    def __init__(self, masto: MastodonSandbox, bsky: BlueskySandbox, tg: TelegramSandbox) -> None:
        self.stored: list[Stored] = []
        self.changed = threading.Condition()
        self._wrap_mastodon(masto)
        self._wrap_telegram(tg)
        self._wrap_bluesky(bsky)

    def _note(self, item: Stored) -> None:
        with self.changed:
            self.stored.append(item)
            self.changed.notify_all()

    def _wrap_mastodon(self, masto: MastodonSandbox) -> None:
        original = masto.status_created

        def status_created(status: Any) -> None:
            self._note(
                Stored(time.perf_counter(), "mastodon", status.account_id, status.id, status.text)
            )
            original(status)

        masto.status_created = status_created  # type: ignore[method-assign]

    def _wrap_telegram(self, tg: TelegramSandbox) -> None:
        original = tg.world.add_message

        def add_message(chat: Any, **fields: Any) -> Any:
            message = original(chat, **fields)
            text = message.text if message.text is not None else message.caption
            self._note(
                Stored(time.perf_counter(), "telegram", str(chat.id), str(message.message_id), text)
            )
            return message

        tg.world.add_message = add_message  # type: ignore[method-assign]

    def _wrap_bluesky(self, bsky: BlueskySandbox) -> None:
        original = bsky.firehose.commit

        def commit(did: str, applied: Any) -> Any:
            event = original(did, applied)
            now = time.perf_counter()
            for op in applied.ops:
                if op.action == "create" and op.path.startswith("app.bsky.feed.post/"):
                    self._note(Stored(now, "bluesky", did, f"at://{did}/{op.path}", None))
            return event

        bsky.firehose.commit = commit  # type: ignore[method-assign,assignment]

    def count(self) -> int:
        with self.changed:
            return len(self.stored)

    def wait_count(self, count: int, timeout: float) -> bool:
        """Wait until at least `count` posts are stored in all; False on timeout."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while len(self.stored) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.changed.wait(left)
        return True

    def since(self, index: int) -> list[Stored]:
        with self.changed:
            return list(self.stored[index:])


@dataclass
class Account:
    """One account the daemon uses, as config TOML and the secret it reads from the environment."""

    name: str
    network: str
    toml: str
    env: dict[str, str]
    key: str  # how the Observer names it: Mastodon account id, Telegram chat id, Bluesky DID
    token: str = ""
    username: str = ""


def rate_limit_table(name: str, network: str) -> str:
    """The relay's own pacing lifted for `name`, when this version of the config has the key."""
    models: dict[str, type[BaseModel]] = {
        "mastodon": relay_config.MastodonAccount,
        "bluesky": relay_config.BlueskyAccount,
        "telegram": relay_config.TelegramAccount,
    }
    if "rate_limit" not in models[network].model_fields:
        return ""
    body = "".join(f"{key} = {value!r}\n" for key, value in UNPACED.items())
    return f"\n[accounts.{name}.rate_limit]\n{body}"


@dataclass(frozen=True)
class Route:
    name: str
    source: str
    targets: tuple[str, ...]

    def toml(self) -> str:
        targets = ", ".join(f'"{t}"' for t in self.targets)
        return f'[[routes]]\nname = "{self.name}"\nfrom = ["{self.source}"]\nto = [{targets}]\n\n'


@dataclass
class World:
    """The three sandboxes on a background loop, limits relaxed, and a folder for the daemon."""

    loop: LoopThread
    masto: MastodonSandbox
    bsky: BlueskySandbox
    tg: TelegramSandbox
    observer: Observer
    folder: Path
    accounts: list[Account] = field(default_factory=list)
    _counter: int = 0

    def _next(self) -> int:
        self._counter += 1
        return self._counter

    def mastodon(self, name: str) -> Account:
        username = f"{name}{self._next()}"
        made = self.loop.call(self.masto.create_account, username)
        env = f"{name.upper()}_TOKEN"
        account = Account(
            name,
            "mastodon",
            f'[accounts.{name}]\nnetwork = "mastodon"\nbase_url = "{self.masto.base_url}"\n'
            f'access_token = "${{{env}}}"\n' + rate_limit_table(name, "mastodon"),
            {env: made.token},
            key=made.id,
            token=made.token,
            username=username,
        )
        self.accounts.append(account)
        return account

    def bluesky(self, name: str, stream: str = "firehose") -> Account:
        handle = f"{name.replace('_', '-')}{self._next()}.test"
        made = self.loop.call(self.bsky.create_account, handle, BSKY_PASSWORD)
        env = f"{name.upper()}_PASSWORD"
        account = Account(
            name,
            "bluesky",
            f'[accounts.{name}]\nnetwork = "bluesky"\nbase_url = "{self.bsky.base_url}"\n'
            f'handle = "{made.handle}"\napp_password = "${{{env}}}"\nstream = "{stream}"\n'
            + rate_limit_table(name, "bluesky"),
            {env: BSKY_PASSWORD},
            key=made.did,
            username=made.handle,
        )
        self.accounts.append(account)
        return account

    def telegram(self, name: str) -> Account:
        number = self._next()
        bot = self.loop.call(self.tg.create_bot, f"{name}_{number}_bot")
        channel = f"{name}_{number}_channel"
        chat = self.loop.call(self.tg.create_channel, channel, channel, [bot.id])
        env = f"{name.upper()}_TOKEN"
        account = Account(
            name,
            "telegram",
            f'[accounts.{name}]\nnetwork = "telegram"\nbase_url = "{self.tg.root_url}"\n'
            f'bot_token = "${{{env}}}"\nchat = "@{channel}"\npoll_timeout = 1\n'
            + rate_limit_table(name, "telegram"),
            {env: bot.token},
            key=str(chat.id),
            token=bot.token,
            username=channel,
        )
        self.accounts.append(account)
        return account

    def write_config(self, routes: list[Route], log_level: str = "warning") -> Path:
        port = free_port()
        text = (
            f'[relaybird]\nstate = "state.sqlite3"\nlisten = "127.0.0.1:{port}"\n'
            f'log_level = "{log_level}"\n\n'
            + "\n".join(a.toml for a in self.accounts)
            + "\n"
            + "".join(route.toml() for route in routes)
        )
        path = self.folder / "relaybird.toml"
        path.write_text(text, encoding="utf-8")
        return path

    def env(self) -> dict[str, str]:
        return {k: v for a in self.accounts for k, v in a.env.items()}


@contextmanager
def world(keep: bool = False) -> Iterator[World]:
    """Sandboxes with every server-side rate limit relaxed: the relay is what is measured."""
    loop = LoopThread()
    masto = MastodonSandbox(rate_limit=10**9, defer_image_processing=False)
    bsky = BlueskySandbox(rate_limits=False)
    tg = TelegramSandbox(per_chat_limit=10**9, global_limit=10**9)
    for sandbox in (masto, bsky, tg):
        loop.run(sandbox.start())
    folder = Path(tempfile.mkdtemp(prefix="relaybird-bench-"))
    try:
        yield World(loop, masto, bsky, tg, loop.run(_observer(masto, bsky, tg)), folder)
    finally:
        for sandbox in (masto, bsky, tg):
            loop.run(sandbox.stop())
        loop.stop()
        if keep:
            print(f"kept {folder}")
        else:
            import shutil

            shutil.rmtree(folder, ignore_errors=True)


async def _observer(masto: MastodonSandbox, bsky: BlueskySandbox, tg: TelegramSandbox) -> Observer:
    """Wrapped on the servers' loop, so that no handler runs half-way through the swap."""
    return Observer(masto, bsky, tg)


class RelayProcess:
    """`relaybird run` in a process of its own, with its CPU time and memory read from /proc.

    `profile` runs it under cProfile; the profile is written when the process stops on SIGTERM.
    """

    def __init__(
        self,
        config: Path,
        env: dict[str, str],
        log_level: str = "warning",
        profile: Path | None = None,
    ) -> None:
        self.config = config
        self.env = {**os.environ, **env}
        self.log_level = log_level
        self.profile = profile
        self.log_path = config.parent / "daemon.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.port = int(self._listen().rsplit(":", 1)[1])

    def _listen(self) -> str:
        for line in self.config.read_text().splitlines():
            if line.startswith("listen"):
                return line.split("=", 1)[1].strip().strip('"')
        raise ValueError("the config has no listen address")

    def start(self, timeout: float = 120) -> RelayProcess:
        command = [sys.executable]
        if self.profile is not None:
            command += ["-m", "cProfile", "-o", str(self.profile)]
        command += [
            "-m",
            "relaybird.cli",
            "run",
            "-c",
            str(self.config),
            "--log-level",
            self.log_level,
        ]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=self.env
            )
        deadline = time.monotonic() + timeout
        while not self.healthy():
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"relaybird exited with {self.process.returncode}:\n{self.log()}"
                )
            if time.monotonic() > deadline:
                self.process.kill()
                self.process.wait(10)
                raise RuntimeError(
                    f"relaybird not healthy after {timeout} s:\n{self.log()[-3000:]}"
                )
            time.sleep(0.05)
        return self

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.port}/healthz", timeout=2
            ) as answer:
                return bool(answer.status == 200)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def cpu_seconds(self) -> float:
        """User + system CPU of the daemon so far (its threads included)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def _status(self, key: str) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
        return 0

    def rss(self) -> int:
        """Resident memory now, in bytes."""
        return self._status("VmRSS")

    def peak_rss(self) -> int:
        """The most resident memory the process has had, in bytes."""
        return self._status("VmHWM")

    def stop(self, timeout: float = 30) -> int:
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout)
        self.process = None
        return code

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class RssSampler:
    """Samples a process's RSS in the background while a load runs."""

    def __init__(self, relay: RelayProcess, interval: float = 0.05) -> None:
        self.relay = relay
        self.interval = interval
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append(self.relay.rss())
            except (FileNotFoundError, ProcessLookupError):
                return
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class Sampler:
    """py-spy attached to the running daemon for a window (all threads, only while on the GIL).

    Sampling rather than cProfile: the adapters run Mastodon.py in threads that cProfile does not
    see, and cProfile's own overhead skews a profile of many small calls.
    """

    def __init__(self, pid: int, out: Path, rate: int = 250) -> None:
        self.out = out
        self.command = [
            str(Path(sys.executable).parent / "py-spy"),
            "record",
            "--pid",
            str(pid),
            "--format",
            "raw",
            "--rate",
            str(rate),
            "--gil",
            "--nonblocking",
            "--output",
            str(out),
        ]
        self.process: subprocess.Popen[bytes] | None = None

    @staticmethod
    def available() -> bool:
        return (Path(sys.executable).parent / "py-spy").exists()

    def __enter__(self) -> Sampler:
        self.process = subprocess.Popen(
            self.command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        time.sleep(0.5)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGINT)
        self.process.wait(30)

    def report(self, limit: int = 20) -> None:
        print_samples(self.out, limit)


def _frame_area(frame: str) -> str:
    """Which library or module a sampled frame belongs to, for a breakdown by area."""
    path = frame.rsplit("(", 1)[-1].split(":", 1)[0]
    if "relaybird/" in path:
        return "relaybird." + path.split("relaybird/", 1)[1].removesuffix(".py").replace("/", ".")
    for marker in ("site-packages/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1].lstrip("/0123456789.")
    return path.split("/", 1)[0].removesuffix(".py") or frame


def print_samples(path: Path, limit: int = 20) -> None:
    """Where the sampled time went: by area (leaf frame), by function (own), by function (total)."""
    own: dict[str, int] = defaultdict(int)
    total: dict[str, int] = defaultdict(int)
    areas: dict[str, int] = defaultdict(int)
    relay_total: dict[str, int] = defaultdict(int)
    count = 0
    if not path.exists():
        print(f"no samples were written at {path}")
        return
    for line in path.read_text(errors="replace").splitlines():
        stack, _, number = line.rpartition(" ")
        if not stack or not number.isdigit():
            continue
        samples = int(number)
        frames = stack.split(";")
        count += samples
        own[frames[-1]] += samples
        areas[_frame_area(frames[-1])] += samples
        for frame in set(frames):
            total[frame] += samples
        for frame in {f for f in frames if "relaybird/" in f}:
            relay_total[frame] += samples
    if not count:
        print("no samples")
        return

    def show(title: str, table: dict[str, int]) -> None:
        print(f"\n  {title}")
        for name, value in sorted(table.items(), key=lambda kv: -kv[1])[:limit]:
            print(f"    {value / count:6.1%}  {name}")

    print(f"\n--- daemon samples under load: {count} (py-spy, GIL holder only) ---")
    show("by area of the innermost frame", areas)
    show("by function, own time", own)
    show("relaybird functions, including what they call", relay_total)


def print_profile(path: Path, limit: int = 25) -> None:
    """The functions the daemon spent its time in, by cumulative and by own time."""
    import pstats

    if not path.exists():
        print(f"no profile was written at {path}")
        return
    stats = pstats.Stats(str(path))
    stats.strip_dirs()
    print("\n--- daemon profile, by cumulative time ---")
    stats.sort_stats("cumulative").print_stats(limit)
    print("--- by own time ---")
    stats.sort_stats("tottime").print_stats(limit)


def by_text(world_: World, items: list[Stored]) -> dict[str, list[Stored]]:
    """Stored posts grouped by their text (Bluesky texts are read from the repo afterwards)."""
    texts: dict[tuple[str, str], str] = {}
    dids = {item.account for item in items if item.network == "bluesky"}
    for did in dids:
        for record in world_.loop.call(world_.bsky.records, did):
            texts[(did, record.uri)] = record.value.get("text", "")
    grouped: dict[str, list[Stored]] = defaultdict(list)
    for item in items:
        text = item.text if item.text is not None else texts.get((item.account, item.post_id), "")
        grouped[text].append(item)
    return grouped
