"""Self-imposed rate limits: each target account paces its own calls below what its network allows.

A request answered with 429 has already been counted against the account, and some limits (Mastodon's
300 statuses per 3 hours, Bluesky's daily write points) punish a burst for hours. So each account
draws from token buckets sized below the documented limits: a burst goes out at once up to the
bucket's size, then at the steady rate, and over any window of the network's length the total stays
under its limit (burst + rate x window <= limit). What the server says itself tightens the pace
further: a remaining budget running low spreads the calls left until the window resets, and a 429's
reset time holds every call of the account until then. Other accounts have limiters of their own and
keep flowing.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from enum import StrEnum
from typing import Protocol, runtime_checkable

#: When the server's remaining budget falls to this share of its limit, calls are spread out.
PACE_BELOW_SHARE = 0.2
#: Calls kept in hand at the end of a server window, for the stream and for a person's own app.
RESERVE_SHARE = 0.05
MIN_RESERVE = 2
#: Waits shorter than this are not worth a sleep (and wall-clock floats cannot resolve them).
EPSILON_SECONDS = 0.001
#: How long an account is held after a 429 that says nothing usable about when to come back.
DEFAULT_HOLD_SECONDS = 60.0


def retry_after_seconds(value: str | None, now: float) -> float | None:
    """An HTTP `Retry-After` (seconds, or an HTTP date) as seconds from `now`; None when absent
    or unreadable, so that the caller can look at the network's own headers instead."""
    if not value:
        return None
    try:
        delay = float(value)
    except ValueError:
        try:
            moment = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        return max(moment.timestamp() - now, 0.0)
    return max(delay, 0.0) if math.isfinite(delay) else None


@dataclass(frozen=True)
class Rate:
    """A token bucket's shape: `per_second` refill, `burst` tokens when full."""

    per_second: float
    burst: float

    @classmethod
    def per_hour(cls, count: float, burst: float) -> Rate:
        return cls(count / 3600.0, burst)

    @classmethod
    def per_minute(cls, count: float, burst: float) -> Rate:
        return cls(count / 60.0, burst)

    def most_in(self, seconds: float) -> float:
        """The most this bucket lets through in any window of `seconds`."""
        return self.burst + self.per_second * seconds


UNLIMITED_RATE = Rate(math.inf, math.inf)


@dataclass(frozen=True)
class Limits:
    """One account's buckets. `media_are_posts`: each attachment is a message of its own (Telegram
    albums), so it is charged to the posts bucket too."""

    posts: Rate = UNLIMITED_RATE
    uploads: Rate = UNLIMITED_RATE
    deletes: Rate = UNLIMITED_RATE
    calls: Rate = UNLIMITED_RATE
    media_are_posts: bool = False


UNLIMITED = Limits()


class Operation(StrEnum):
    POST = "post"
    EDIT = "edit"
    DELETE = "delete"


@dataclass(frozen=True)
class ServerBudget:
    """What the server said about the account's budget in its last answer (X-RateLimit-* headers).

    `reset_at` is a Unix time; `limit` is the window's size when the server says it.
    """

    remaining: int
    reset_at: float
    limit: int | None = None


@runtime_checkable
class ReportsBudget(Protocol):
    """An adapter whose client reads the server's remaining budget from its answers."""

    def rate_budget(self) -> ServerBudget | None: ...


class TokenBucket:
    def __init__(self, rate: Rate, now: float) -> None:
        self.rate = rate
        self.tokens = rate.burst
        self.updated = now

    def _refill(self, now: float) -> None:
        elapsed = max(0.0, now - self.updated)
        if math.isinf(self.rate.per_second):
            self.tokens = self.rate.burst
        else:
            self.tokens = min(self.rate.burst, self.tokens + elapsed * self.rate.per_second)
        self.updated = now

    def wait(self, cost: float, now: float) -> float:
        """Seconds until `cost` can be taken. A cost above the burst waits for a full bucket and
        leaves it in debt, so an album larger than the burst still goes, and what follows waits."""
        self._refill(now)
        needed = min(cost, self.rate.burst) - self.tokens
        if needed <= 0 or math.isinf(self.rate.per_second):
            return 0.0
        return needed / self.rate.per_second

    def take(self, cost: float, now: float) -> None:
        self._refill(now)
        if not math.isinf(self.tokens):
            self.tokens -= cost


class AccountLimiter:
    """The pace of one account's calls, shared by everything that calls its network as a target.

    `acquire` is awaited before each call; `hold_until` and `observe` take in what the server said.
    The clock is wall time because servers give reset times as Unix times.
    """

    def __init__(
        self,
        account: str,
        limits: Limits = UNLIMITED,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.account = account
        self.limits = limits
        self.clock = clock
        self.sleep = sleep
        now = clock()
        self.posts = TokenBucket(limits.posts, now)
        self.uploads = TokenBucket(limits.uploads, now)
        self.deletes = TokenBucket(limits.deletes, now)
        self.calls = TokenBucket(limits.calls, now)
        #: No call before this Unix time: a server's Retry-After, or pacing by its budget.
        self.not_before = 0.0
        self._lock = asyncio.Lock()

    def _charges(self, operation: Operation, media: int) -> list[tuple[TokenBucket, float]]:
        if operation is Operation.POST:
            # Where attachments are messages, they travel in the post's own request; elsewhere
            # each is uploaded by a call of its own.
            inline = self.limits.media_are_posts
            posts = 1 + (max(0, media - 1) if inline else 0)
            calls = 1 if inline else 1 + media
            charges = [(self.posts, float(posts)), (self.calls, float(calls))]
            if media:
                charges.append((self.uploads, float(media)))
            return charges
        if operation is Operation.DELETE:
            return [(self.deletes, 1.0), (self.calls, 1.0)]
        return [(self.calls, 1.0)]

    def delay(self, operation: Operation, media: int = 0) -> float:
        """Seconds before `operation` may start; 0 when it may start now."""
        now = self.clock()
        waits = [bucket.wait(cost, now) for bucket, cost in self._charges(operation, media)]
        return max([self.not_before - now, *waits, 0.0])

    async def acquire(self, operation: Operation, media: int = 0) -> float:
        """Wait until `operation` (with `media` attachments) fits the limits, then spend its cost.

        Returns the seconds waited. Callers queue in order, so a thread's parts keep theirs.
        """
        waited = 0.0
        async with self._lock:
            while True:
                wait = self.delay(operation, media)
                if wait <= EPSILON_SECONDS:
                    now = self.clock()
                    for bucket, cost in self._charges(operation, media):
                        bucket.take(cost, now)
                    return waited
                await self.sleep(wait)
                waited += wait

    def held_for(self) -> float:
        """Seconds the server asked every call of this account to wait; 0 when none."""
        return max(0.0, self.not_before - self.clock())

    async def ready(self) -> float:
        """Wait out a hold without spending anything, so a worker does not pick a delivery early."""
        waited = 0.0
        while (wait := self.held_for()) > EPSILON_SECONDS:
            await self.sleep(wait)
            waited += wait
        return waited

    def hold_until(self, at: float) -> None:
        """The server refused us until `at` (Retry-After, retry_after, X-RateLimit-Reset)."""
        self.not_before = max(self.not_before, at)

    def observe(self, budget: ServerBudget | None) -> None:
        """Slow down before the server's budget runs out rather than after a 429.

        With little left, the calls that remain (less a reserve) are spread evenly until the
        window resets; at the reserve, calls wait for the reset itself.
        """
        now = self.clock()
        if budget is None or budget.reset_at <= now:
            return
        limit = budget.limit if budget.limit and budget.limit > 0 else None
        reserve = max(MIN_RESERVE, math.ceil(RESERVE_SHARE * (limit or 0)))
        if budget.remaining <= reserve:
            self.hold_until(budget.reset_at)
            return
        threshold = PACE_BELOW_SHARE * limit if limit else 4 * reserve
        if budget.remaining <= threshold:
            spacing = (budget.reset_at - now) / (budget.remaining - reserve)
            self.not_before = max(self.not_before, now + spacing)
