"""A kill -9 after a create reached the target but before the daemon heard back.

Each target server lets the first create land and then holds its answer (`land_then_hang`), which is
the moment a crash hurts most. After the kill and a restart, idempotent networks must hold exactly
one copy; Telegram, which has no idempotency key, must not post again and must dead-letter it.
"""

from __future__ import annotations

import sqlite3

from conftest import Networks
from harness import wait_for


def state_rows(networks: Networks, query: str) -> list[tuple[object, ...]]:
    return sqlite3.connect(networks.folder / "state.sqlite3").execute(query).fetchall()


def test_mastodon_target_never_doubles_a_post_after_kill_mid_create(networks: Networks) -> None:
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
    hang = networks.masto.faults.land_then_hang(match="POST /api/v1/statuses", account="archive")
    networks.editor().status_post("kept exactly once")
    wait_for(lambda: networks.loop.call(networks.masto.statuses_of, "archive"), what="the copy")
    wait_for(lambda: hang.fired_count, what="the create to hang")
    daemon.kill()
    networks.masto.faults.clear()
    daemon.start()
    try:
        wait_for(
            lambda: state_rows(networks, "SELECT 1 FROM mappings WHERE target_account='archive'"),
            what="the archive mapping after restart",
        )
    finally:
        daemon.stop()
    copies = networks.loop.call(networks.masto.statuses_of, "archive")
    texts = [networks.loop.call(networks.masto.source_text, c["id"]) for c in copies]
    assert texts == ["kept exactly once"]


def test_telegram_send_interrupted_by_kill_is_dead_lettered_not_repeated(
    networks: Networks,
) -> None:
    daemon = networks.daemon().start()
    hang = networks.tg.faults.land_then_hang(match="^sendMessage$")
    networks.editor().status_post("at most once on Telegram")
    wait_for(lambda: networks.tg_messages(), what="the Telegram copy landing")
    wait_for(lambda: len(networks.bsky_posts()) == 1, what="the Bluesky copy")
    wait_for(lambda: hang.fired_count, what="the send to hang")
    daemon.kill()
    networks.tg.faults.clear()
    daemon.start()
    try:
        wait_for(
            lambda: state_rows(
                networks, "SELECT 1 FROM deliveries WHERE target_account='news_tg' AND state='dead'"
            ),
            what="the interrupted Telegram delivery to be dead-lettered",
        )
        networks.editor().status_post("the next post still flows")
        wait_for(lambda: len(networks.tg_messages()) == 2, what="the next Telegram copy")
    finally:
        daemon.stop()
    texts = [m["text"] for m in networks.tg_messages()]
    assert texts == ["at most once on Telegram", "the next post still flows"]
    ((error,),) = state_rows(
        networks,
        "SELECT last_error FROM deliveries WHERE target_account='news_tg' AND state='dead'",
    )
    assert "cannot tell whether it landed" in str(error)
    assert len(networks.bsky_posts()) == 2


def test_bluesky_target_never_doubles_a_post_after_kill_mid_create(networks: Networks) -> None:
    """The record key was stored before the call; after the restart getRecord finds the copy."""
    daemon = networks.daemon().start()
    hang = networks.bsky.faults.land_then_hang(match="createRecord")
    networks.editor().status_post("one copy on Bluesky, whatever happens")
    wait_for(lambda: networks.bsky_posts(), what="the Bluesky copy landing")
    wait_for(lambda: hang.fired_count, what="the create to hang")
    daemon.kill()
    networks.bsky.faults.clear()
    daemon.start()
    try:
        wait_for(
            lambda: state_rows(networks, "SELECT 1 FROM mappings WHERE target_account='news_bsky'"),
            what="the Bluesky mapping after restart",
        )
    finally:
        daemon.stop()
    posts = networks.bsky_posts()
    assert [p.value["text"] for p in posts] == ["one copy on Bluesky, whatever happens"]
    ((first_id,),) = state_rows(
        networks, "SELECT first_id FROM mappings WHERE target_account='news_bsky'"
    )
    assert first_id == posts[0].uri


def test_telegram_send_cut_off_after_landing_is_not_sent_twice(networks: Networks) -> None:
    daemon = networks.daemon().start()
    networks.tg.faults.reset(land=True, times=1, match="^sendMessage$")
    try:
        networks.editor().status_post("the connection breaks after this lands")
        wait_for(
            lambda: state_rows(
                networks, "SELECT 1 FROM deliveries WHERE target_account='news_tg' AND state='dead'"
            ),
            what="the doubtful Telegram send to be dead-lettered",
        )
        networks.editor().status_post("and the next one still flows")
        wait_for(lambda: len(networks.tg_messages()) == 2, what="the next Telegram copy")
    finally:
        daemon.stop()
    texts = [m["text"] for m in networks.tg_messages()]
    assert texts == ["the connection breaks after this lands", "and the next one still flows"]
