"""What a 429 says is what the worker waits for: the adapters read the servers' own words.

The sandboxes answer with the headers their real servers send (Mastodon's X-RateLimit-* from
Rack, Bluesky's RateLimit-* and Retry-After); the unmodified clients read them, and the adapters
must turn them into the time the account is held until, and the budget the worker paces by.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from aiohttp import web
from conftest import Networks

from relaybird.model import Post, TargetRef
from relaybird.networks.base import RateLimited
from relaybird.networks.bluesky import BlueskyNetwork
from relaybird.networks.mastodon import MastodonNetwork, retry_at_of
from relaybird.ratelimit import ReportsBudget, ServerBudget


def text_post(text: str) -> Post:
    return Post(id="src-1", text=text)


def bare_429(path: str, headers: dict[str, str] | None = None) -> Any:
    """A 429 on `path` carrying only `headers`: a proxy's refusal, or a server that says little."""

    async def hook(request: web.Request) -> web.StreamResponse | None:
        if request.path == path:
            return web.json_response({"error": "Too many requests"}, status=429, headers=headers)
        return None

    return hook


# --------------------------------------------------------------------------------------------------
# Mastodon


async def test_mastodon_429_holds_until_the_announced_reset(networks: Networks) -> None:
    network = MastodonNetwork(networks.accounts()["news_masto"])
    await network.open()
    networks.loop.call(
        lambda: networks.masto.faults.fail(
            429, times=1, match="POST /api/v1/statuses", retry_after=7
        )
    )
    try:
        with pytest.raises(RateLimited) as raised:
            await network.publish(text_post("limited"), None, "key-1", False)
    finally:
        await network.close()
    assert 4 < raised.value.retry_at - time.time() <= 8


async def test_mastodon_429_without_a_usable_reset_holds_for_a_minute(networks: Networks) -> None:
    """The very first answer is a bare 429: Mastodon.py knows no reset time, and 0 is no answer."""
    network = MastodonNetwork(networks.accounts()["news_masto"])
    hook = bare_429("/api/v1/accounts/verify_credentials")
    networks.loop.call(networks.masto.hooks.append, hook)
    try:
        with pytest.raises(RateLimited) as raised:
            await network.open()
    finally:
        await network.close()
    assert 55 < raised.value.retry_at - time.time() <= 61


async def test_mastodon_raw_get_honours_the_rate_limit_reset(networks: Networks) -> None:
    """The instance is read with aiohttp, not Mastodon.py: its 429 must be read all the same."""
    reset = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(time.time() + 9))
    headers = {"X-RateLimit-Reset": reset, "X-RateLimit-Remaining": "0"}
    networks.loop.call(networks.masto.hooks.append, bare_429("/api/v2/instance", headers))
    network = MastodonNetwork(networks.accounts()["news_masto"])
    try:
        with pytest.raises(RateLimited) as raised:
            await network.open()
    finally:
        await network.close()
    assert 6 < raised.value.retry_at - time.time() <= 10


def test_a_mastodon_429_is_read_in_every_form_servers_send() -> None:
    now = 1_000_000.0
    assert retry_at_of({"X-RateLimit-Reset": "1000030"}, now) == 1_000_030.0
    assert retry_at_of({"X-RateLimit-Reset": "1970-01-12T13:47:10Z"}, now) == 1_000_030.0
    assert retry_at_of({"X-RateLimit-Reset": "1970-01-01T00:00:00Z", "Retry-After": "5"}, now) == (
        now + 5
    )
    assert retry_at_of({"X-RateLimit-Reset": "soon", "Retry-After": "later"}, now) == now + 60
    assert retry_at_of({}, now) == now + 60


async def test_mastodon_reports_the_budget_the_server_announced(networks: Networks) -> None:
    network = MastodonNetwork(networks.accounts()["news_masto"])
    assert isinstance(network, ReportsBudget)
    assert network.rate_budget() is None  # nothing heard from the server yet
    await network.open()
    try:
        await network.publish(text_post("counted"), None, "key-1", False)
        budget = network.rate_budget()
    finally:
        await network.close()
    limit = networks.masto.rate_limiter.limit
    assert isinstance(budget, ServerBudget)
    assert budget.limit == limit
    assert 0 <= budget.remaining < limit
    assert budget.reset_at > time.time()


# --------------------------------------------------------------------------------------------------
# Bluesky


async def test_bluesky_publish_429_holds_until_the_window_resets(
    networks: Networks, bsky: BlueskyNetwork
) -> None:
    network = bsky
    await network.open()
    networks.loop.call(
        lambda: networks.bsky.faults.fail(429, times=1, match="createRecord", retry_after=20)
    )
    with pytest.raises(RateLimited) as raised:
        await network.publish(text_post("limited"), None, network.new_key(), False)
    assert 17 < raised.value.retry_at - time.time() <= 22


async def test_bluesky_delete_429_holds_until_the_window_resets(
    networks: Networks, bsky: BlueskyNetwork
) -> None:
    network = bsky
    await network.open()
    ref = await network.publish(text_post("to delete"), None, network.new_key(), False)
    networks.loop.call(
        lambda: networks.bsky.faults.fail(429, times=1, match="deleteRecord", retry_after=20)
    )
    with pytest.raises(RateLimited) as raised:
        await network.delete(TargetRef(id=ref.id, url=ref.url, cid=ref.cid))
    assert 17 < raised.value.retry_at - time.time() <= 22


async def test_bluesky_429_with_retry_after_waits_that_long(
    networks: Networks, bsky: BlueskyNetwork
) -> None:
    network = bsky
    await network.open()

    async def interceptor(request: web.Request, nsid: str) -> web.StreamResponse | None:
        if nsid != "com.atproto.repo.createRecord":
            return None
        body = {"error": "RateLimitExceeded", "message": "Rate Limit Exceeded"}
        return web.json_response(body, status=429, headers={"Retry-After": "5"})

    networks.loop.call(networks.bsky.interceptors.append, interceptor)
    with pytest.raises(RateLimited) as raised:
        await network.publish(text_post("limited"), None, network.new_key(), False)
    assert 3 < raised.value.retry_at - time.time() <= 6
