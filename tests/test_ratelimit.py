"""Self-imposed rate limits: each network's defaults drain a 500-post burst inside its documented
limits, a server's hold stops every call of the account, and a low remaining budget slows it down.

Time is simulated: the limiter's clock and sleep are a virtual clock, so hours of pacing run in
milliseconds and every window of every documented limit can be checked exactly.
"""

from __future__ import annotations

import asyncio
from bisect import bisect_left
from collections.abc import Iterable
from pathlib import Path

import pytest

from relaybird.config import (
    BlueskyRateLimit,
    MastodonRateLimit,
    TelegramRateLimit,
    load_config,
)
from relaybird.ratelimit import AccountLimiter, Limits, Operation, Rate, ServerBudget

HOUR = 3600.0


class VirtualClock:
    """Wall time that only moves when the limiter sleeps."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start
        self.slept = 0.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += max(0.0, seconds)
        self.slept += max(0.0, seconds)


def limiter_for(limits: Limits, clock: VirtualClock) -> AccountLimiter:
    return AccountLimiter("acct", limits, clock=clock, sleep=clock.sleep)


def most_in_any_window(times: list[float], weights: list[float], window: float) -> float:
    """The largest total weight of events falling in any half-open window of `window` seconds."""
    prefix = [0.0]
    for weight in weights:
        prefix.append(prefix[-1] + weight)
    best = 0.0
    for end_index, end in enumerate(times):
        start_index = bisect_left(times, end - window + 1e-9)
        best = max(best, prefix[end_index + 1] - prefix[start_index])
    return best


async def post_burst(limiter: AccountLimiter, clock: VirtualClock, count: int) -> list[float]:
    """When each post was let through, in seconds from the start of the burst."""
    start = clock()
    times = []
    for _ in range(count):
        await limiter.acquire(Operation.POST)
        times.append(clock() - start)
    return times


def windows(times: list[float], checks: Iterable[tuple[float, float, float]]) -> None:
    """Each check is (weight per post, window seconds, documented limit)."""
    for weight, window, limit in checks:
        used = most_in_any_window(times, [weight] * len(times), window)
        assert used <= limit, f"{used} in {window} s exceeds the documented {limit}"


async def test_mastodon_defaults_drain_500_posts_within_its_limits() -> None:
    clock = VirtualClock()
    limiter = limiter_for(MastodonRateLimit().limits(), clock)
    times = await post_burst(limiter, clock, 500)
    # 300 statuses per 3 hours, 300 calls per 5 minutes.
    windows(times, [(1, 3 * HOUR, 300), (1, 300, 300)])
    # ... while using the budget: the first 30 go at once and the rest at 80 an hour.
    assert times[29] == times[0]
    assert times[-1] - times[0] == pytest.approx(470 / 80 * HOUR, rel=0.01)


async def test_bluesky_defaults_drain_500_posts_in_under_two_minutes_within_write_points() -> None:
    clock = VirtualClock()
    limiter = limiter_for(BlueskyRateLimit().limits(), clock)
    times = await post_burst(limiter, clock, 500)
    # createRecord costs 3 points: 5,000 an hour and 35,000 a day; 3,000 calls per 5 minutes.
    windows(times, [(3, HOUR, 5000), (3, 24 * HOUR, 35000), (1, 300, 3000)])
    assert times[-1] - times[0] < 120


async def test_bluesky_defaults_hold_a_whole_day_of_posting_under_the_daily_points() -> None:
    clock = VirtualClock()
    limiter = limiter_for(BlueskyRateLimit().limits(), clock)
    times = await post_burst(limiter, clock, 9000)
    assert times[-1] - times[0] < 24 * HOUR
    windows(times, [(3, HOUR, 5000), (3, 24 * HOUR, 35000)])


async def test_telegram_defaults_stay_under_20_a_minute_and_about_one_a_second() -> None:
    clock = VirtualClock()
    limiter = limiter_for(TelegramRateLimit().limits(), clock)
    times = await post_burst(limiter, clock, 500)
    windows(times, [(1, 60, 20), (1, 1, 30)])
    assert most_in_any_window(times, [1] * len(times), 1.0) <= 3
    assert times[-1] - times[0] == pytest.approx(492 / 600 * HOUR, rel=0.01)


async def test_telegram_album_photos_count_as_messages() -> None:
    clock = VirtualClock()
    limiter = limiter_for(TelegramRateLimit().limits(), clock)
    start = clock()
    await limiter.acquire(Operation.POST, media=10)
    assert clock() == start
    # The album took the whole burst and more: the next message waits for the debt to refill.
    await limiter.acquire(Operation.POST)
    assert clock() - start == pytest.approx(3 / (600 / HOUR), rel=0.01)


async def test_mastodon_media_uploads_are_paced_by_their_own_limit() -> None:
    clock = VirtualClock()
    limiter = limiter_for(MastodonRateLimit().limits(), clock)
    times = []
    for _ in range(20):
        await limiter.acquire(Operation.POST, media=4)
        times.append(clock())
    # 30 uploads per 30 minutes, four a post.
    windows(times, [(4, 1800, 30)])


async def test_deletes_are_paced_by_their_own_bucket() -> None:
    clock = VirtualClock()
    limiter = limiter_for(MastodonRateLimit().limits(), clock)
    times = []
    for _ in range(40):
        await limiter.acquire(Operation.DELETE)
        times.append(clock())
    windows(times, [(1, 1800, 30)])


async def test_a_server_hold_stops_every_operation_until_its_time() -> None:
    clock = VirtualClock()
    limiter = limiter_for(Limits(), clock)
    limiter.hold_until(clock() + 42)
    assert limiter.held_for() == pytest.approx(42)
    for operation in Operation:
        assert limiter.delay(operation) == pytest.approx(42)
    waited = await limiter.ready()
    assert waited == pytest.approx(42)
    assert limiter.delay(Operation.POST) == 0


async def test_an_earlier_hold_does_not_shorten_a_later_one() -> None:
    clock = VirtualClock()
    limiter = limiter_for(Limits(), clock)
    limiter.hold_until(clock() + 60)
    limiter.hold_until(clock() + 5)
    assert limiter.held_for() == pytest.approx(60)


async def test_low_server_budget_spreads_the_remaining_calls_until_the_reset() -> None:
    clock = VirtualClock()
    limiter = limiter_for(Limits(), clock)
    reset = clock() + 100
    limiter.observe(ServerBudget(remaining=300, reset_at=reset, limit=300))
    assert limiter.delay(Operation.POST) == 0
    # 22 left, 15 kept in reserve (5% of 300): 7 calls spread over 100 s.
    limiter.observe(ServerBudget(remaining=22, reset_at=reset, limit=300))
    assert limiter.delay(Operation.POST) == pytest.approx(100 / 7)


async def test_budget_at_the_reserve_waits_for_the_reset() -> None:
    clock = VirtualClock()
    limiter = limiter_for(Limits(), clock)
    reset = clock() + 250
    limiter.observe(ServerBudget(remaining=2, reset_at=reset, limit=None))
    assert limiter.held_for() == pytest.approx(250)


async def test_stale_or_missing_budget_is_ignored() -> None:
    clock = VirtualClock()
    limiter = limiter_for(Limits(), clock)
    limiter.observe(None)
    limiter.observe(ServerBudget(remaining=0, reset_at=clock() - 1, limit=300))
    assert limiter.delay(Operation.POST) == 0


async def test_waiting_callers_go_in_order() -> None:
    clock = VirtualClock()
    limiter = limiter_for(Limits(posts=Rate(1.0, 1)), clock)
    order: list[int] = []

    async def take(index: int) -> None:
        await limiter.acquire(Operation.POST)
        order.append(index)

    await asyncio.gather(*(take(i) for i in range(5)))
    assert order == [0, 1, 2, 3, 4]
    assert clock.slept == pytest.approx(4.0)


async def test_unlimited_limiter_never_waits() -> None:
    clock = VirtualClock()
    limiter = limiter_for(Limits(), clock)
    for _ in range(1000):
        await limiter.acquire(Operation.POST, media=4)
    assert clock.slept == 0


def test_rate_limits_are_configurable_per_account(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(
        """
[accounts.m]
network = "mastodon"
base_url = "https://m.example"
access_token = "token-value"

[accounts.m.rate_limit]
posts_per_hour = 10
call_burst = 5

[accounts.t]
network = "telegram"
bot_token = "123:abc"
chat = "@c"

[[routes]]
name = "r"
from = ["t"]
to = ["m"]
"""
    )
    loaded = load_config(config, {})
    mastodon = loaded.accounts["m"].rate_limit.limits()
    assert mastodon.posts == Rate(10 / 3600, 30)
    assert mastodon.calls == Rate(40 / 60, 5)
    assert loaded.accounts["t"].rate_limit.limits() == TelegramRateLimit().limits()
    assert loaded.accounts["t"].rate_limit.limits().media_are_posts


def test_a_burst_drains_through_the_daemon_without_a_single_429(tmp_path: Path) -> None:
    """The daemon against a Mastodon sandbox that answers 429 past 15 calls in 2 seconds: the
    account's rate_limit keeps every call under it, and every post arrives once, in order."""
    from datetime import datetime

    from harness import Daemon, free_port, serving, wait_for

    from relaybird.sandbox.mastodon import MastodonSandbox
    from relaybird.sandbox.telegram import TelegramSandbox

    masto = MastodonSandbox(defer_image_processing=False, rate_limit=15, rate_limit_period=2.0)
    tg = TelegramSandbox()
    with serving(masto, tg) as loop:
        archive = loop.call(masto.create_account, "archive")
        bot = loop.call(tg.create_bot, "news_bot")
        loop.call(tg.create_channel, "news", "News", [bot.id])
        port = free_port()
        config = tmp_path / "relaybird.toml"
        config.write_text(
            f"""[relaybird]
state = "state.sqlite3"
listen = "127.0.0.1:{port}"

[accounts.news]
network = "telegram"
base_url = "{tg.root_url}"
bot_token = "${{NEWS_TOKEN}}"
chat = "@news"
poll_timeout = 1

[accounts.archive]
network = "mastodon"
base_url = "{masto.base_url}"
access_token = "${{ARCHIVE_TOKEN}}"

[accounts.archive.rate_limit]
posts_per_hour = 36000
post_burst = 30
calls_per_minute = 240
call_burst = 3

[[routes]]
name = "archive"
from = ["news"]
to = ["archive"]
"""
        )
        daemon = Daemon(config, port, {"NEWS_TOKEN": bot.token, "ARCHIVE_TOKEN": archive.token})
        daemon.start()
        count = 24
        try:
            for index in range(count):
                loop.call(lambda i=index: tg.post_as_user("@news", None, f"burst {i:02d}"))
            wait_for(
                lambda: len(loop.call(masto.statuses_of, "archive")) >= count,
                timeout=30,
                what="every post of the burst",
            )
        finally:
            daemon.stop()
        copies = loop.call(masto.statuses_of, "archive")
        texts = sorted(loop.call(masto.source_text, c["id"]) for c in copies)
        refused = [r for r in masto.requests_log if r.status == 429]
    assert texts == [f"burst {i:02d}" for i in range(count)]
    assert refused == []
    created = sorted(datetime.fromisoformat(c["created_at"]).timestamp() for c in copies)
    # Three at once, then four a second: the limiter, not luck, kept the server happy.
    assert created[-1] - created[0] >= (count - 3) / 4 * 0.9


def test_retry_after_is_read_as_seconds_or_as_an_http_date() -> None:
    from relaybird.ratelimit import retry_after_seconds

    now = 1_000_000.0
    assert retry_after_seconds("7", now) == 7.0
    assert retry_after_seconds("Mon, 12 Jan 1970 13:47:10 GMT", now) == 30.0
    assert retry_after_seconds("Thu, 01 Jan 1970 00:00:00 GMT", now) == 0.0  # already past
    assert retry_after_seconds("later", now) is None
    assert retry_after_seconds("nan", now) is None
    assert retry_after_seconds(None, now) is None
