"""A fault campaign: a scripted stream of posts on all three networks, with two-way routes between
them, while the sandboxes misbehave at seeded random moments and the daemon is killed with SIGKILL and
restarted; then every target server is compared with what the sources posted.

Shared by the short campaign that runs in CI (tests/test_fault_campaign.py) and the long one
(bench/fault_campaign.py). Everything random is drawn from one `random.Random(seed)` in a fixed
order, so a seed replays the same script, the same faults and the same kill points (what the
faults then hit depends on timing, which is the point of running many seeds).

What is checked at the end, once faults are cleared and the outbox has drained:

* every post is held exactly once by every account: the original on its own network, one copy on
  each of the two others (none missing, none doubled, nothing mirrored back);
* threads are intact: on every network, the post or copy of a reply answers the post or copy of its
  parent;
* Telegram is at most once (it has no idempotency key): there a copy may be missing, but only when
  its delivery is dead-lettered in the store (a send interrupted mid-way, which the operator checks
  and retries), or when it is a reply skipped because its parent's delivery was dead-lettered.

The person posting uses the networks' own clients, which meet the same faults: Mastodon.py retries
with one `Idempotency-Key`, atproto retries with one record key, and the Telegram sandbox takes a
channel post in-process (a person's app is not behind the bot API), so posting never doubles either.
"""

from __future__ import annotations

import random
import re
import sqlite3
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from atproto import Client
from mastodon import Mastodon
from pydantic import BaseModel

from relaybird import config as relay_config
from relaybird.sandbox.bluesky import BlueskySandbox
from relaybird.sandbox.faults import Fault, Faults
from relaybird.sandbox.mastodon import MastodonSandbox
from relaybird.sandbox.telegram import TelegramSandbox
from tests.harness import Daemon, LoopThread, free_port

NETWORKS = ("mastodon", "bluesky", "telegram")
ACCOUNT = {"mastodon": "camp_masto", "bluesky": "camp_bsky", "telegram": "camp_tg"}
PASSWORD = "campaign-app-password-1234"
CHANNEL = "campaign_channel"
OPEN_STATES = ("pending", "retry", "sending")

# The calls that create posts, as each sandbox names requests for its faults.
WRITES = {
    "mastodon": r"^POST /api/v1/statuses$",
    "bluesky": r"createRecord|applyWrites|putRecord",
    "telegram": r"^send(Message|Photo|MediaGroup)$",
}
# Faults a campaign draws from. `land_then_hang` is drawn apart: it is always followed by a kill.
FAULT_KINDS = (
    "fail",
    "fail",
    "delay",
    "reset",
    "malformed",
    "drop_streams",
    "stall_streams",
    "refuse_streams",
)
STREAM_STAND_INS = {"drop_streams": "reset", "stall_streams": "delay", "refuse_streams": "fail"}
TASK_STOPPED = re.compile(r"ERROR relaybird\.relay: ((?:listen|worker):\S+) stopped: (.*)")
START_REFUSED = re.compile(r"ERROR relaybird: cannot start: (.*)")
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


@dataclass
class Settings:
    """The shape of a campaign. `fault_chance` is drawn before each post; `hang_chance` is the share
    of kills that come right after a create landed but was never answered (the worst moment)."""

    seed: int = 1
    posts: int = 30
    kills: int = 2
    fault_chance: float = 0.35
    hang_chance: float = 0.5
    reply_chance: float = 0.4
    pace: float = 0.15
    max_fault_times: int = 2
    max_fault_seconds: float = 1.0
    down_posts: int = 2
    drain_timeout: float = 90.0
    say: Callable[[str], None] = print


@dataclass
class Step:
    index: int
    network: str
    parent: int | None
    fault: tuple[str, str] | None = None  # (network, kind)
    hang: str | None = None  # network whose next create lands and is never answered
    kill: bool = False
    restart_after: int = 0  # posts made while the daemon is down


@dataclass
class Posted:
    index: int
    network: str
    source_id: str
    text: str
    parent: int | None


@dataclass(frozen=True)
class Held:
    """A post as a server holds it: its id there, its text, and the id it answers."""

    id: str
    text: str
    reply_to: str | None


@dataclass
class TargetCount:
    expected: int = 0
    present: int = 0
    missing: int = 0
    doubled: int = 0
    broken_threads: int = 0
    dead_lettered: int = 0
    skipped_after_dead_parent: int = 0


@dataclass
class Report:
    settings: Settings
    posted: list[Posted] = field(default_factory=list)
    targets: dict[str, TargetCount] = field(default_factory=dict)
    faults: dict[str, Counter[str]] = field(default_factory=dict)
    kills: int = 0
    hang_kills: int = 0
    hangs_caught: int = 0
    self_exits: int = 0
    start_failures: list[str] = field(default_factory=list)
    stray: int = 0
    drain_seconds: float = 0.0
    total_seconds: float = 0.0
    states: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    log_path: Path | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def render(self) -> str:
        s = self.settings
        per_network = Counter(p.network for p in self.posted)
        replies = sum(1 for p in self.posted if p.parent is not None)
        lines = [
            f"fault campaign: seed {s.seed}, {len(self.posted)} posts"
            f" ({', '.join(f'{n} {per_network[n]}' for n in NETWORKS)}; {replies} replies),"
            f" two-way routes between all three",
            f"  daemon killed with SIGKILL {self.kills} times ({self.hang_kills} right after a"
            f" create landed unanswered, {self.hangs_caught} of those caught mid-create);"
            f" exited by itself {self.self_exits} times (restarted, as a supervisor would)",
        ]
        for reason in sorted(set(self.start_failures)):
            lines.append(f"    exited at start-up: {reason}")
        for network in NETWORKS:
            fired = self.faults.get(network, Counter())
            shown = ", ".join(f"{kind} x{n}" for kind, n in sorted(fired.items())) or "none"
            lines.append(f"  faults fired on {network}: {sum(fired.values())} ({shown})")
        lines.append(
            f"  drained {self.drain_seconds:.1f} s after the faults were cleared;"
            f" campaign took {self.total_seconds:.1f} s"
        )
        lines.append(
            "  deliveries by state: "
            + ", ".join(f"{k} {v}" for k, v in sorted(self.states.items()))
        )
        header = (
            f"  {'target':<9} {'expected':>8} {'present':>8} {'missing':>8} {'doubled':>8}"
            f" {'threads broken':>15} {'dead-lettered':>14} {'skipped (parent dead)':>22}"
        )
        lines.append(header)
        for network, count in self.targets.items():
            lines.append(
                f"  {network:<9} {count.expected:>8} {count.present:>8} {count.missing:>8}"
                f" {count.doubled:>8} {count.broken_threads:>15} {count.dead_lettered:>14}"
                f" {count.skipped_after_dead_parent:>22}"
            )
        lines.append(f"  posts held that nobody posted: {self.stray}")
        if self.problems:
            lines.append(f"  PROBLEMS ({len(self.problems)}):")
            lines += [f"    - {problem}" for problem in self.problems[:40]]
            if self.log_path is not None:
                lines.append(f"  daemon log: {self.log_path}")
        else:
            lines.append("  no post missing, none doubled, every thread intact")
        return "\n".join(lines)


def plan(settings: Settings, rng: random.Random) -> list[Step]:
    """The script: who posts what, answering whom, and when faults and kills come."""
    steps: list[Step] = []
    by_network: dict[str, list[int]] = defaultdict(list)
    kill_points = kill_moments(settings, rng)
    for index in range(settings.posts):
        hang = None
        kill = index in kill_points
        if kill and rng.random() < settings.hang_chance:
            hang = rng.choice(NETWORKS)
        choices = [n for n in NETWORKS if n != hang]
        network = rng.choice(choices)
        parent = None
        earlier = by_network[network]
        if earlier and rng.random() < settings.reply_chance:
            parent = rng.choice(earlier[-3:])
        fault = None
        if rng.random() < settings.fault_chance:
            fault = (rng.choice(NETWORKS), rng.choice(FAULT_KINDS))
        restart_after = rng.randint(0, settings.down_posts) if kill else 0
        steps.append(Step(index, network, parent, fault, hang, kill, restart_after))
        by_network[network].append(index)
    return steps


def kill_moments(settings: Settings, rng: random.Random) -> set[int]:
    """Posts after which the daemon is killed, spaced so that it is up again before the next."""
    spacing = settings.down_posts + 1
    slots = max(0, settings.posts - 3) // spacing
    if settings.kills > slots:
        raise ValueError(f"{settings.posts} posts leave room for at most {slots} kills")
    chosen = sorted(rng.sample(range(slots), settings.kills))
    return {2 + slot * spacing for slot in chosen}


def text_of(seed: int, index: int, network: str, parent: int | None) -> str:
    answer = f", answering {seed}.{parent}" if parent is not None else ""
    return f"Campaign {seed}.{index}: a {network} post{answer}"


class TidClock:
    """Record keys for the person's own Bluesky posts, chosen before the call so a retry is safe."""

    alphabet = "234567abcdefghijklmnopqrstuvwxyz"

    def __init__(self, clock_id: int) -> None:
        self.clock_id = clock_id & 1023
        self.last = 0

    def next(self) -> str:
        micros = max(time.time_ns() // 1000, self.last + 1)
        self.last = micros
        value = (micros << 10) | self.clock_id
        return "".join(self.alphabet[(value >> (5 * i)) & 31] for i in reversed(range(13)))


def rate_limit_table(name: str, network: str) -> str:
    """Lift the relay's own pacing when this version of the config has it: the sandboxes' limits
    are lifted too, and the 429s of a campaign come from its faults, at moments it chooses."""
    models: dict[str, type[BaseModel]] = {
        "mastodon": relay_config.MastodonAccount,
        "bluesky": relay_config.BlueskyAccount,
        "telegram": relay_config.TelegramAccount,
    }
    if "rate_limit" not in models[network].model_fields:
        return ""
    body = "".join(f"{key} = {value!r}\n" for key, value in UNPACED.items())
    return f"\n[accounts.{name}.rate_limit]\n{body}"


class Campaign:
    """Sandboxes, accounts, the daemon and the person posting; `run()` returns the `Report`."""

    def __init__(self, settings: Settings, folder: Path) -> None:
        self.settings = settings
        self.folder = folder
        self.say = settings.say
        self.rng = random.Random(settings.seed)
        self.loop = LoopThread()
        self.masto = MastodonSandbox(
            rate_limit=10**9, defer_image_processing=False, heartbeat_seconds=1.0
        )
        self.bsky = BlueskySandbox(rate_limits=False)
        self.tg = TelegramSandbox(per_chat_limit=10**9, global_limit=10**9)
        self.sandboxes: dict[str, Any] = {
            "mastodon": self.masto,
            "bluesky": self.bsky,
            "telegram": self.tg,
        }
        self.report = Report(settings)
        self.posted: dict[int, Posted] = {}
        self.bsky_refs: dict[int, tuple[str, str]] = {}
        self.daemon: Daemon | None = None

    # --- set-up -------------------------------------------------------------------------------

    def _faults(self, network: str) -> Faults:
        faults: Faults = self.sandboxes[network].faults
        return faults

    def start(self) -> None:
        for sandbox in self.sandboxes.values():
            self.loop.run(sandbox.start())
        masto_account = self.loop.call(self.masto.create_account, "campaign", "Campaign")
        self.masto_username = masto_account.username
        self.masto_token = masto_account.token
        bsky_account = self.loop.call(self.bsky.create_account, "campaign.test", PASSWORD)
        self.bsky_did, self.bsky_handle = bsky_account.did, bsky_account.handle
        bot = self.loop.call(self.tg.create_bot, "campaign_bot", "Campaign bot")
        chat = self.loop.call(self.tg.create_channel, CHANNEL, "Campaign", [bot.id])
        self.tg_chat_id = chat.id
        self.tg_token = bot.token
        self.mastodon_client = Mastodon(
            api_base_url=self.masto.base_url,
            access_token=self.masto_token,
            version_check_mode="none",
            request_timeout=5,
            ratelimit_method="throw",
        )
        self.bsky_client = Client(base_url=self.bsky.base_url)
        self.bsky_client.login(self.bsky_handle, PASSWORD, fetch_bsky_profile=False)
        self.tids = TidClock(self.settings.seed)
        port = free_port()
        config = self.folder / "relaybird.toml"
        config.write_text(self._config(port), encoding="utf-8")
        env = {
            "CAMP_MASTO_TOKEN": self.masto_token,
            "CAMP_BSKY_PASSWORD": PASSWORD,
            "CAMP_TG_TOKEN": self.tg_token,
        }
        self.daemon = Daemon(config, port, env)
        self.report.log_path = self.daemon.log_path

    def _config(self, port: int) -> str:
        accounts = (
            f'[accounts.camp_masto]\nnetwork = "mastodon"\nbase_url = "{self.masto.base_url}"\n'
            'access_token = "${CAMP_MASTO_TOKEN}"\n'
            + rate_limit_table("camp_masto", "mastodon")
            + f'\n[accounts.camp_bsky]\nnetwork = "bluesky"\nbase_url = "{self.bsky.base_url}"\n'
            f'handle = "{self.bsky_handle}"\napp_password = "${{CAMP_BSKY_PASSWORD}}"\n'
            'stream = "firehose"\n'
            + rate_limit_table("camp_bsky", "bluesky")
            + f'\n[accounts.camp_tg]\nnetwork = "telegram"\nbase_url = "{self.tg.root_url}"\n'
            f'bot_token = "${{CAMP_TG_TOKEN}}"\nchat = "@{CHANNEL}"\npoll_timeout = 1\n'
            + rate_limit_table("camp_tg", "telegram")
        )
        routes = "".join(
            f'\n[[routes]]\nname = "from_{network}"\nfrom = ["{ACCOUNT[network]}"]\n'
            f"to = [{', '.join(f'{chr(34)}{ACCOUNT[o]}{chr(34)}' for o in NETWORKS if o != network)}]\n"
            for network in NETWORKS
        )
        return (
            f'[relaybird]\nstate = "state.sqlite3"\nlisten = "127.0.0.1:{port}"\n'
            f'log_level = "debug"\n\n{accounts}{routes}'
        )

    def stop(self) -> None:
        if self.daemon is not None and self.daemon.process is not None:
            if self.daemon.process.poll() is None:
                self.daemon.process.kill()
            self.daemon.process.wait(10)
            self.daemon.process = None
        for network in NETWORKS:
            self._faults(network).clear()
        for sandbox in self.sandboxes.values():
            self.loop.run(sandbox.stop())
        self.loop.stop()

    # --- the daemon, supervised -----------------------------------------------------------------

    def _launch(self) -> None:
        assert self.daemon is not None
        self.daemon.start(wait_healthy=False)

    def _running(self) -> bool:
        """Whether the daemon runs; one that exited by itself is counted and started again."""
        assert self.daemon is not None
        process = self.daemon.process
        if process is None:
            return False
        if process.poll() is None:
            return True
        self.report.self_exits += 1
        self.say(f"  daemon exited by itself with {process.returncode}; starting it again")
        self.daemon.process = None
        self._launch()
        return True

    def _kill(self) -> None:
        assert self.daemon is not None
        if self.daemon.process is not None and self.daemon.process.poll() is None:
            self.daemon.kill()
        else:
            self.daemon.process = None
        self.report.kills += 1

    def _wait_healthy(self, timeout: float) -> bool:
        assert self.daemon is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._running()
            try:
                if self.daemon.healthy():
                    return True
            except AssertionError:
                pass
            time.sleep(0.05)
        return False

    # --- the person posting -----------------------------------------------------------------------

    def _post(self, step: Step) -> Posted:
        parent = self.posted[step.parent] if step.parent is not None else None
        text = text_of(self.settings.seed, step.index, step.network, step.parent)
        if step.network == "mastodon":
            source_id = self._post_mastodon(step, text, parent)
        elif step.network == "bluesky":
            source_id = self._post_bluesky(step, text, parent)
        else:
            source_id = self._post_telegram(text, parent)
        posted = Posted(step.index, step.network, source_id, text, step.parent)
        self.posted[step.index] = posted
        return posted

    def _persist(self, attempt: Callable[[], str], what: str) -> str:
        """A person retries until the post is up (the retries themselves cannot double it)."""
        deadline = time.monotonic() + 60
        while True:
            try:
                return attempt()
            except Exception as error:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"could not post {what}: {error!r}") from error
                time.sleep(0.2)

    def _post_mastodon(self, step: Step, text: str, parent: Posted | None) -> str:
        key = f"campaign-{self.settings.seed}-{step.index}"

        def attempt() -> str:
            status = self.mastodon_client.status_post(
                text,
                in_reply_to_id=parent.source_id if parent else None,
                idempotency_key=key,
            )
            return str(status["id"])

        return self._persist(attempt, text)

    def _post_bluesky(self, step: Step, text: str, parent: Posted | None) -> str:
        rkey = self.tids.next()
        record: dict[str, Any] = {
            "$type": "app.bsky.feed.post",
            "text": text,
            "createdAt": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        }
        if parent is not None:
            root_index = parent.index
            while self.posted[root_index].parent is not None:
                root_index = self.posted[root_index].parent  # type: ignore[assignment]
            root, above = self.bsky_refs[root_index], self.bsky_refs[parent.index]
            record["reply"] = {
                "root": {"uri": root[0], "cid": root[1]},
                "parent": {"uri": above[0], "cid": above[1]},
            }

        def attempt() -> str:
            landed = self._bsky_record(rkey)
            if landed is None:
                try:
                    self.bsky_client.com.atproto.repo.create_record(
                        {
                            "repo": self.bsky_did,
                            "collection": "app.bsky.feed.post",
                            "rkey": rkey,
                            "record": record,
                        }
                    )
                except Exception:
                    if self._bsky_record(rkey) is None:
                        raise
                landed = self._bsky_record(rkey)
                if landed is None:
                    raise RuntimeError("the record did not land")
            self.bsky_refs[step.index] = landed
            return landed[0]

        return self._persist(attempt, text)

    def _bsky_record(self, rkey: str) -> tuple[str, str] | None:
        """Whether the record landed, asked of the server directly (not through its faults)."""
        for record in self.loop.call(self.bsky.records, self.bsky_did):
            if record.rkey == rkey:
                return str(record.uri), str(record.cid)
        return None

    def _post_telegram(self, text: str, parent: Posted | None) -> str:
        reply = int(parent.source_id.rsplit(":", 1)[1]) if parent else None
        message = self.loop.call(
            lambda: self.tg.post_as_user(f"@{CHANNEL}", None, text, reply_to=reply)
        )
        return f"{message['chat']['id']}:{message['message_id']}"

    # --- faults ---------------------------------------------------------------------------------

    def _switch_on(self, network: str, kind: str) -> Fault:
        """One fault on `network`, drawn from the campaign's generator, aimed at any call or at
        the creates (which the person's own posting also meets)."""
        match = WRITES[network] if self.rng.random() < 0.5 else ""
        if kind in STREAM_STAND_INS and network == "telegram":
            # The bot's "stream" is long polling: it drops, stalls and is refused as requests do.
            kind, match = STREAM_STAND_INS[kind], "^getUpdates$"
        elif kind in STREAM_STAND_INS:
            match = ""
        return self._faults(network).random(
            self.rng,
            kinds=(kind,),
            match=match,
            max_times=self.settings.max_fault_times,
            max_seconds=self.settings.max_fault_seconds,
        )

    def _fired(self) -> dict[str, Counter[str]]:
        counts: dict[str, Counter[str]] = {}
        for network in NETWORKS:
            counts[network] = Counter(
                fired.fault.describe() for fired in self._faults(network).fired
            )
        return counts

    # --- the script -----------------------------------------------------------------------------

    def run(self) -> Report:
        started = time.monotonic()
        self.start()
        try:
            self._launch()
            if not self._wait_healthy(60):
                raise RuntimeError(f"the daemon never became healthy:\n{self._log_tail()}")
            steps = plan(self.settings, self.rng)
            restart_at: int | None = None
            for step in steps:
                self._step(step)
                if restart_at is not None and step.index >= restart_at:
                    self._launch()
                    restart_at = None
                if step.kill:
                    restart_at = step.index + step.restart_after
                    if step.restart_after == 0:
                        self._launch()
                        restart_at = None
                time.sleep(self.rng.uniform(0, 2 * self.settings.pace))
            if restart_at is not None or self.daemon is None or self.daemon.process is None:
                self._launch()
            self._finish()
        finally:
            self.report.faults = self._fired()
            self.stop()
            self.report.total_seconds = time.monotonic() - started
        return self.report

    def _step(self, step: Step) -> None:
        if step.fault is not None:
            network, kind = step.fault
            fault = self._switch_on(network, kind)
            self.say(f"  #{step.index}: {fault.describe()} on {network}")
        hang = None
        up = self.daemon is not None and self.daemon.process is not None
        if up:
            self._running()
        if step.hang is not None and up:
            hang = self._faults(step.hang).land_then_hang(times=1, match=WRITES[step.hang])
        posted = self._post(step)
        self.say(
            f"  #{step.index}: posted on {step.network}"
            + (f" answering #{posted.parent}" if posted.parent is not None else "")
        )
        if step.kill and up:
            if hang is not None:
                self.report.hang_kills += 1
                deadline = time.monotonic() + 8
                while hang.fired_count == 0 and time.monotonic() < deadline:
                    time.sleep(0.02)
                if hang.fired_count:
                    self.report.hangs_caught += 1
            else:
                time.sleep(self.rng.uniform(0, 0.3))
            self._kill()
            self.say(
                f"  #{step.index}: SIGKILL"
                + (f" while a create on {step.hang} hung" if hang and hang.fired_count else "")
            )
            if hang is not None:
                hang.cancel()

    # --- the end --------------------------------------------------------------------------------

    def _finish(self) -> None:
        for network in NETWORKS:
            self._faults(network).clear()
        cleared = time.monotonic()
        self._wait_healthy(60)
        self._drain(cleared)
        assert self.daemon is not None
        if self.daemon.process is not None:
            self.daemon.stop()
        self._compare()
        self._read_log()

    def _store(self) -> sqlite3.Connection:
        path = self.folder / "state.sqlite3"
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
        db.row_factory = sqlite3.Row
        return db

    def _expected(self) -> set[tuple[str, str, str]]:
        return {
            (ACCOUNT[p.network], p.source_id, ACCOUNT[other])
            for p in self.posted.values()
            for other in NETWORKS
            if other != p.network
        }

    def _outbox(self) -> tuple[set[tuple[str, str, str]], int]:
        """(source account, source id, target account) of every planned create, and how many
        deliveries are still open."""
        db = self._store()
        try:
            planned = {
                (row["source_account"], row["source_id"], row["target_account"])
                for row in db.execute(
                    "SELECT source_account, source_id, target_account FROM deliveries"
                    " WHERE kind IN ('post', 'reply')"
                )
            }
            open_count = db.execute(
                "SELECT COUNT(*) FROM deliveries WHERE state IN ('pending', 'retry', 'sending')"
            ).fetchone()[0]
        finally:
            db.close()
        return planned, int(open_count)

    def _drain(self, cleared: float) -> None:
        """Wait until the relay has planned every copy and finished every delivery, and the
        servers have stopped changing."""
        expected = self._expected()
        deadline = cleared + self.settings.drain_timeout
        quiet_since: float | None = None
        last: tuple[int, int, int] | None = None
        while time.monotonic() < deadline:
            self._running()
            try:
                planned, open_count = self._outbox()
            except sqlite3.Error:
                time.sleep(0.2)
                continue
            done = expected <= planned and open_count == 0
            snapshot = self._sizes()
            if done and snapshot == last:
                quiet_since = quiet_since or time.monotonic()
                if time.monotonic() - quiet_since >= 1.0:
                    self.report.drain_seconds = time.monotonic() - cleared
                    return
            else:
                quiet_since = None
            last = snapshot
            time.sleep(0.2)
        planned, open_count = self._outbox()
        unseen = len(expected - planned)
        self.report.drain_seconds = time.monotonic() - cleared
        self.report.problems.append(
            f"not drained {self.settings.drain_timeout:.0f} s after the faults cleared:"
            f" {unseen} copies never planned, {open_count} deliveries still open"
        )

    def _sizes(self) -> tuple[int, int, int]:
        return (
            len(self.loop.call(self.masto.statuses_of, self.masto_username)),
            len(self.loop.call(self.bsky.records, self.bsky_did)),
            len(self.loop.call(self.tg.messages_in, f"@{CHANNEL}")),
        )

    def _log_tail(self) -> str:
        return self.daemon.log()[-4000:] if self.daemon is not None else ""

    def _read_log(self) -> None:
        """A listener or worker that died is a problem even when a later kill happened to revive
        it: without that restart its account would have stayed deaf or mute. Start-up failures
        are noted with their reason."""
        assert self.daemon is not None
        for line in self.daemon.log().splitlines():
            stopped = TASK_STOPPED.search(line)
            if stopped:
                self.report.problems.append(
                    f"the daemon's {stopped[1]} task stopped for good: {stopped[2]}"
                )
            refused = START_REFUSED.search(line)
            if refused:
                self.report.start_failures.append(refused[1])

    # --- comparing what the servers hold with what was posted -----------------------------------

    def holdings(self) -> dict[str, list[Held]]:
        held: dict[str, list[Held]] = {}
        statuses = self.loop.call(self.masto.statuses_of, self.masto_username)
        held["mastodon"] = [
            Held(
                str(s["id"]),
                self.loop.call(self.masto.source_text, s["id"]),
                s["in_reply_to_id"],
            )
            for s in statuses
        ]
        held["bluesky"] = [
            Held(
                str(r.uri),
                str(r.value.get("text", "")),
                (r.value.get("reply") or {}).get("parent", {}).get("uri"),
            )
            for r in self.loop.call(self.bsky.records, self.bsky_did)
        ]
        held["telegram"] = [
            Held(
                f"{m['chat']['id']}:{m['message_id']}",
                m.get("text") or m.get("caption") or "",
                f"{m['chat']['id']}:{m['reply_to_message']['message_id']}"
                if m.get("reply_to_message")
                else None,
            )
            for m in self.loop.call(self.tg.messages_in, f"@{CHANNEL}")
        ]
        return held

    def _deliveries(self) -> dict[tuple[str, str, str], sqlite3.Row]:
        db = self._store()
        try:
            rows = db.execute(
                "SELECT * FROM deliveries WHERE kind IN ('post', 'reply') ORDER BY id"
            ).fetchall()
            self.report.states = Counter(
                row[0] for row in db.execute("SELECT state FROM deliveries").fetchall()
            )
        finally:
            db.close()
        return {(r["source_account"], r["source_id"], r["target_account"]): r for r in rows}

    def _compare(self) -> None:
        report = self.report
        report.posted = [self.posted[i] for i in sorted(self.posted)]
        held = self.holdings()
        deliveries = self._deliveries()
        texts = {p.text for p in report.posted}
        for network in NETWORKS:
            count = TargetCount()
            report.targets[network] = count
            by_text: dict[str, list[Held]] = defaultdict(list)
            for item in held[network]:
                by_text[item.text].append(item)
            report.stray += sum(len(v) for t, v in by_text.items() if t not in texts)
            for post in report.posted:
                if post.network != network:
                    count.expected += 1
                found = by_text.get(post.text, [])
                if len(found) > 1:
                    count.doubled += 1
                    report.problems.append(
                        f"{network} holds {len(found)} of #{post.index} ({post.network})"
                    )
                if found and post.network != network:
                    count.present += 1
                if not found:
                    self._missing(network, post, deliveries, count)
            self._threads(network, by_text, count)

    def _missing(
        self,
        network: str,
        post: Posted,
        deliveries: dict[tuple[str, str, str], sqlite3.Row],
        count: TargetCount,
    ) -> None:
        if post.network == network:
            self.report.problems.append(f"the original #{post.index} is gone from {network}")
            return
        count.missing += 1
        row = deliveries.get((ACCOUNT[post.network], post.source_id, ACCOUNT[network]))
        state = row["state"] if row is not None else "never planned"
        if network == "telegram" and state == "dead":
            count.dead_lettered += 1
            return
        if network == "telegram" and state == "skipped" and self._parent_dead(post, deliveries):
            count.skipped_after_dead_parent += 1
            return
        error = f": {row['last_error']}" if row is not None and row["last_error"] else ""
        self.report.problems.append(
            f"#{post.index} ({post.network}) missing on {network}; delivery {state}{error}"
        )

    def _parent_dead(self, post: Posted, deliveries: dict[tuple[str, str, str], Any]) -> bool:
        """Whether a Telegram copy of an ancestor was dead-lettered: then the reply has nothing
        to answer there, and skipping it is the documented at-most-once outcome."""
        current = post
        while current.parent is not None:
            current = self.posted[current.parent]
            row = deliveries.get((ACCOUNT[current.network], current.source_id, ACCOUNT["telegram"]))
            if row is not None and row["state"] == "dead":
                return True
            if row is not None and row["state"] != "skipped":
                return False
        return False

    def _threads(self, network: str, by_text: dict[str, list[Held]], count: TargetCount) -> None:
        for post in self.report.posted:
            if post.parent is None:
                continue
            parent = self.posted[post.parent]
            child_copies, parent_copies = by_text.get(post.text, []), by_text.get(parent.text, [])
            if len(child_copies) != 1 or len(parent_copies) != 1:
                continue
            if child_copies[0].reply_to != parent_copies[0].id:
                count.broken_threads += 1
                self.report.problems.append(
                    f"on {network}, #{post.index} answers {child_copies[0].reply_to}, not the"
                    f" copy of #{parent.index} ({parent_copies[0].id})"
                )


def run_campaign(settings: Settings, folder: Path) -> Report:
    """Run one campaign in `folder` (config, state and daemon log stay there)."""
    folder.mkdir(parents=True, exist_ok=True)
    return Campaign(settings, folder).run()


__all__ = ["Campaign", "Report", "Settings", "TargetCount", "plan", "run_campaign"]
