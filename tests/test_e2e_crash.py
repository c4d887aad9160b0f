"""A kill -9 after a create reached the target but before the daemon heard back.

Each target server gets a hook that lets the first create land and then never answers, which is the
moment a crash hurts most. After the kill and a restart, idempotent networks must hold exactly one
copy; Telegram, which has no idempotency key, must not post again and must dead-letter the delivery.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator

import aiohttp
import pytest
from aiohttp import web
from conftest import Networks
from harness import wait_for


@pytest.fixture
def release(networks: Networks) -> Iterator[asyncio.Event]:
    """Hung requests are let go before the sandboxes stop, so that shutdown does not wait on them."""
    event = asyncio.Event()
    yield event
    networks.loop.call(event.set)


def hang_after_landing_mastodon(
    networks: Networks, token: str, release: asyncio.Event
) -> dict[str, int]:
    """The first status create with `token` is replayed to the sandbox itself (so it lands), then hangs."""
    seen = {"hung": 0}

    async def hook(request: web.Request) -> web.StreamResponse | None:
        if request.method != "POST" or request.path != "/api/v1/statuses":
            return None
        if request.headers.get("Authorization") != f"Bearer {token}":
            return None
        if request.headers.get("X-Replay") or seen["hung"]:
            return None
        seen["hung"] += 1
        headers = {
            k: v
            for k, v in request.headers.items()
            if k.lower() in ("authorization", "idempotency-key", "content-type")
        }
        headers["X-Replay"] = "1"
        body = await request.read()
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                networks.masto.base_url + request.path, data=body, headers=headers
            ) as answer,
        ):
            assert answer.status == 200, await answer.text()
        await release.wait()
        return None

    networks.masto.hooks.append(hook)
    return seen


def test_mastodon_target_never_doubles_a_post_after_kill_mid_create(
    networks: Networks, release: asyncio.Event
) -> None:
    archive = networks.loop.call(networks.masto.create_account, "archive")
    networks.env["ARCHIVE_TOKEN"] = archive.token
    config = networks.write_config(
        extra=f"""
[accounts.archive]
network = "mastodon"
base_url = "{networks.masto.base_url}"
access_token = "${{ARCHIVE_TOKEN}}"

[[routes]]
name = "archive"
from = ["news_masto"]
to = ["archive"]
"""
    )
    daemon = networks.daemon(config).start()
    seen = hang_after_landing_mastodon(networks, archive.token, release)
    networks.editor().status_post("kept exactly once")
    wait_for(
        lambda: networks.loop.call(networks.masto.statuses_of, "archive"), what="the copy landing"
    )
    wait_for(lambda: seen["hung"], what="the create to hang")
    daemon.kill()
    networks.masto.hooks.clear()
    daemon.start()
    try:
        wait_for(
            lambda: (
                sqlite3.connect(networks.folder / "state.sqlite3")
                .execute("SELECT COUNT(*) FROM mappings WHERE target_account='archive'")
                .fetchone()[0]
            ),
            what="the archive mapping after restart",
        )
    finally:
        daemon.stop()
    copies = networks.loop.call(networks.masto.statuses_of, "archive")
    assert [networks.loop.call(networks.masto.source_text, c["id"]) for c in copies] == [
        "kept exactly once"
    ]


def test_telegram_send_interrupted_by_kill_is_dead_lettered_not_repeated(
    networks: Networks, release: asyncio.Event
) -> None:
    from relaybird.sandbox.telegram import ApiCall

    hung = {"n": 0}

    async def hook(call: ApiCall) -> web.StreamResponse | None:
        if call.method != "sendMessage" or hung["n"]:
            return None
        hung["n"] += 1
        await networks.tg._dispatch(call.method, call.bot, call.params)
        await release.wait()
        return None

    daemon = networks.daemon().start()
    networks.tg.hooks.append(hook)
    networks.editor().status_post("at most once on Telegram")
    wait_for(lambda: networks.tg_messages(), what="the Telegram copy landing")
    wait_for(lambda: len(networks.bsky_posts()) == 1, what="the Bluesky copy")
    daemon.kill()
    networks.tg.hooks.clear()
    daemon.start()
    try:
        state = networks.folder / "state.sqlite3"
        wait_for(
            lambda: (
                sqlite3.connect(state)
                .execute("SELECT state FROM deliveries WHERE target_account='news_tg'")
                .fetchone()[0]
                == "dead"
            ),
            what="the interrupted Telegram delivery to be dead-lettered",
        )
        networks.editor().status_post("the next post still flows")
        wait_for(lambda: len(networks.tg_messages()) == 2, what="the next Telegram copy")
    finally:
        daemon.stop()
    texts = [m["text"] for m in networks.tg_messages()]
    assert texts == ["at most once on Telegram", "the next post still flows"]
    error = (
        sqlite3.connect(state)
        .execute(
            "SELECT last_error FROM deliveries WHERE target_account='news_tg' AND state='dead'"
        )
        .fetchone()[0]
    )
    assert "cannot tell whether it landed" in error
    assert len(networks.bsky_posts()) == 2


def test_bluesky_target_never_doubles_a_post_after_kill_mid_create(
    networks: Networks, release: asyncio.Event
) -> None:
    """The record key was stored before the call; after the restart getRecord finds the copy."""
    hung = {"n": 0}

    async def interceptor(request: web.Request, nsid: str) -> web.StreamResponse | None:
        if nsid != "com.atproto.repo.createRecord" or request.headers.get("X-Replay") or hung["n"]:
            return None
        hung["n"] += 1
        headers = {
            k: v
            for k, v in request.headers.items()
            if k.lower() in ("authorization", "content-type")
        }
        headers["X-Replay"] = "1"
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                networks.bsky.base_url + request.path, data=await request.read(), headers=headers
            ) as answer,
        ):
            assert answer.status == 200, await answer.text()
        await release.wait()
        return None

    daemon = networks.daemon().start()
    networks.bsky.interceptors.append(interceptor)
    networks.editor().status_post("one copy on Bluesky, whatever happens")
    wait_for(lambda: networks.bsky_posts(), what="the Bluesky copy landing")
    wait_for(lambda: hung["n"], what="the create to hang")
    daemon.kill()
    networks.bsky.interceptors.clear()
    daemon.start()
    try:
        wait_for(
            lambda: (
                sqlite3.connect(networks.folder / "state.sqlite3")
                .execute("SELECT COUNT(*) FROM mappings WHERE target_account='news_bsky'")
                .fetchone()[0]
            ),
            what="the Bluesky mapping after restart",
        )
    finally:
        daemon.stop()
    posts = networks.bsky_posts()
    assert [p.value["text"] for p in posts] == ["one copy on Bluesky, whatever happens"]
    mapping = (
        sqlite3.connect(networks.folder / "state.sqlite3")
        .execute("SELECT first_id FROM mappings WHERE target_account='news_bsky'")
        .fetchone()
    )
    assert mapping[0] == posts[0].uri
