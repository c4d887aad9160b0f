"""The SQLite store: dedupe, outbox order, parts, mappings and recovery after a crash."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import Networks
from harness import wait_for

from relaybird.config import Config, load_config
from relaybird.model import Author, Event, EventKind, Media, Post, Span, SpanKind, TargetRef
from relaybird.networks.base import TemporaryError
from relaybird.relay import Relay
from relaybird.store import PARENT_WITHOUT_COPY, Planned, Store, StoreUnavailable


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "state.sqlite3")


def event(post_id: str, reply_to: str | None = None, cursor: str | None = None) -> Event:
    kind = EventKind.REPLY if reply_to else EventKind.POST
    post = Post(id=post_id, text=f"post {post_id}", reply_to=reply_to)
    return Event(kind=kind, account="masto", post=post, cursor=cursor)


TARGETS = [Planned("mirror", "bsky"), Planned("mirror", "tg")]


def test_an_event_seen_twice_creates_its_deliveries_once(store: Store) -> None:
    assert len(store.accept(event("1"), TARGETS)) == 2
    assert store.accept(event("1"), TARGETS) == []
    assert len(store.deliveries()) == 2


def test_accepting_an_event_advances_the_cursor_in_the_same_transaction(store: Store) -> None:
    store.accept(event("5", cursor="5"), TARGETS)
    assert store.cursor("masto") == "5"


def test_database_is_in_wal_mode_and_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    first = Store(path)
    first.accept(event("1"), TARGETS)
    first.close()
    again = Store(path)
    assert len(again.deliveries()) == 2
    mode = sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_a_reply_waits_until_its_parent_is_delivered_to_the_same_target(store: Store) -> None:
    store.accept(event("1"), [Planned("mirror", "bsky")])
    store.accept(event("2", reply_to="1"), [Planned("mirror", "bsky")])
    first = store.next_delivery("bsky", now=1e12)
    assert first is not None and first.source_id == "1"
    store.retry_later(first, "boom", at=1e13)
    assert store.next_delivery("bsky", now=1e12) is None
    first = store.delivery(first.id)
    ref = TargetRef("at://x/1", cid="c1")
    store.complete(first, ref, ref, ref)
    reply = store.next_delivery("bsky", now=1e12)
    assert reply is not None and reply.source_id == "2"


def test_parts_and_mappings_record_where_each_copy_landed(store: Store) -> None:
    (delivery_id,) = store.accept(event("1"), [Planned("mirror", "bsky")])
    delivery = store.delivery(delivery_id)
    store.begin_part(delivery_id, 0, "key0")
    assert store.interrupted()[0].id == delivery_id
    first = TargetRef("at://x/a", "https://bsky.app/a", "ca")
    store.finish_part(delivery, 0, first)
    assert store.is_copy("bsky", "at://x/a")
    store.complete(delivery, first, first, first)
    mapping = store.mapping("masto", "1", "bsky")
    assert mapping is not None and mapping.first.url == "https://bsky.app/a"
    assert mapping.last.cid == "ca"
    assert store.delivery(delivery_id).state == "done"


def test_dead_letters_can_be_requeued(store: Store) -> None:
    ids = store.accept(event("1"), TARGETS)
    store.dead_letter(store.delivery(ids[0]), "refused: too long")
    assert [d.last_error for d in store.deliveries("dead")] == ["refused: too long"]
    assert store.requeue() == 1
    assert store.delivery(ids[0]).state == "retry"


def test_requeue_brings_back_only_the_replies_skipped_for_want_of_that_parent(
    store: Store,
) -> None:
    (parent,) = store.accept(event("1"), [Planned("mirror", "tg")])
    (reply,) = store.accept(event("2", reply_to="1"), [Planned("mirror", "tg")])
    (unrelated,) = store.accept(event("3", reply_to="9"), [Planned("mirror", "tg")])
    store.dead_letter(store.delivery(parent), "refused")
    store.skip(store.delivery(reply), f"{PARENT_WITHOUT_COPY} on tg (1)")
    store.skip(store.delivery(unrelated), f"{PARENT_WITHOUT_COPY} on tg (9)")
    assert store.requeue(parent) == 1
    assert [store.delivery(i).state for i in (parent, reply, unrelated)] == [
        "retry",
        "pending",
        "skipped",
    ]


def test_payload_round_trips_spans_and_media_bytes(store: Store) -> None:
    post = Post(
        id="9",
        text="see https://x.org",
        spans=[Span(4, 17, SpanKind.LINK, url="https://x.org")],
        media=[Media(mime="image/png", alt="a cat", data=b"\x89PNG\x00\xff")],
    )
    (delivery_id,) = store.accept(Event(EventKind.POST, "masto", post), [Planned("r", "bsky")])
    assert Post.from_json(store.delivery(delivery_id).payload) == post


# ------------------------------------------------------------------------------------------------
# Transactions, foreign keys, and a database that refuses writes


def test_foreign_keys_are_enforced(store: Store) -> None:
    with pytest.raises(sqlite3.IntegrityError):
        store.begin_part(12345, 0, "key")
    assert store.interrupted() == []


def test_a_full_disk_while_accepting_keeps_nothing_not_even_the_cursor(store: Store) -> None:
    store.accept(event("1", cursor="1"), TARGETS)
    pages = store.db.execute("PRAGMA page_count").fetchone()[0]
    store.db.execute(f"PRAGMA max_page_count = {pages}")
    big = Event(EventKind.POST, "masto", Post(id="2", text="x" * 20000), cursor="2")
    with pytest.raises(sqlite3.OperationalError, match="full"):
        store.accept(big, TARGETS)
    assert store.cursor("masto") == "1"
    assert [d.source_id for d in store.deliveries()] == ["1", "1"]
    store.db.execute("PRAGMA max_page_count = 1073741823")
    assert len(store.accept(big, TARGETS)) == 2
    assert store.cursor("masto") == "2"


def test_a_failed_write_leaves_the_connection_usable(store: Store) -> None:
    store.db.execute("PRAGMA query_only = ON")
    with pytest.raises(sqlite3.OperationalError):
        store.set_cursor("masto", "9")
    assert not store.db.in_transaction
    store.db.execute("PRAGMA query_only = OFF")
    store.set_cursor("masto", "9")
    assert store.cursor("masto") == "9"


def test_being_asked_to_wait_is_not_counted_as_an_attempt(store: Store) -> None:
    (delivery_id,) = store.accept(event("1"), [Planned("mirror", "bsky")])
    store.postpone(store.delivery(delivery_id), "429", at=1e12)
    postponed = store.delivery(delivery_id)
    assert (postponed.state, postponed.attempts, postponed.next_at) == ("retry", 0, 1e12)
    store.retry_later(postponed, "500", at=1e12)
    assert store.delivery(delivery_id).attempts == 1


def test_a_delete_forgets_the_mapping_and_closes_in_one_step(store: Store) -> None:
    (post_id,) = store.accept(event("1"), [Planned("mirror", "bsky")])
    ref = TargetRef("at://x/1", cid="c")
    store.complete(store.delivery(post_id), ref, ref, ref)
    removal = Event(EventKind.DELETE, "masto", Post(id="1", text=""))
    (delete_id,) = store.accept(removal, [Planned("mirror", "bsky")])
    store.finish_delete(store.delivery(delete_id))
    assert store.mapping("masto", "1", "bsky") is None
    assert store.delivery(delete_id).state == "done"


def test_requeue_of_one_id_touches_only_that_dead_letter(store: Store) -> None:
    first, second = store.accept(event("1"), TARGETS)
    for delivery_id in (first, second):
        store.dead_letter(store.delivery(delivery_id), "refused")
    assert store.requeue(first) == 1
    assert store.requeue(first) == 0
    assert (store.delivery(first).state, store.delivery(second).state) == ("retry", "dead")
    assert store.delivery(first).done_at is None


# ------------------------------------------------------------------------------------------------
# Retention

DAY = 86400.0


def age(store: Store, table: str, column: str, seconds: float) -> None:
    """Move every row of `table` `seconds` into the past, as if time had passed."""
    with store.transaction() as db:
        db.execute(f"UPDATE {table} SET {column} = {column} - ?", (seconds,))


def delivered(store: Store, post_id: str, target: str = "bsky") -> int:
    (delivery_id,) = store.accept(event(post_id), [Planned("mirror", target)])
    delivery = store.delivery(delivery_id)
    ref = TargetRef(f"at://x/{post_id}", cid=f"c{post_id}")
    store.begin_part(delivery_id, 0, f"key{post_id}")
    store.finish_part(delivery, 0, ref)
    store.complete(delivery, ref, ref, ref)
    return delivery_id


def prune_all(store: Store, finished: float | None, mapped: float | None) -> None:
    while store.prune(finished, mapped, batch=2).total():
        pass


def test_old_finished_deliveries_and_seen_events_are_pruned_but_not_open_ones(
    store: Store,
) -> None:
    skipped_id, dead_id, pending_id = (
        store.accept(event(i), [Planned("mirror", "bsky")])[0] for i in "123"
    )
    store.skip(store.delivery(skipped_id), "nothing to do")
    store.dead_letter(store.delivery(dead_id), "refused")
    age(store, "deliveries", "done_at", 100 * DAY)
    age(store, "deliveries", "created_at", 100 * DAY)
    age(store, "seen", "at", 100 * DAY)
    fresh = store.accept(event("4"), [Planned("mirror", "bsky")])
    prune_all(store, time.time() - 90 * DAY, None)
    assert [d.id for d in store.deliveries()] == [pending_id, *fresh]
    # The recent event is still known as seen; the old ones are forgotten.
    assert store.accept(event("4"), [Planned("mirror", "bsky")]) == []
    seen = {row[0] for row in store.db.execute("SELECT source_id FROM seen")}
    assert seen == {"4"}


def test_a_mapped_delivery_stays_with_its_parts_but_loses_its_content(store: Store) -> None:
    delivery_id = delivered(store, "1")
    age(store, "deliveries", "done_at", 100 * DAY)
    age(store, "copies", "at", 100 * DAY)
    prune_all(store, time.time() - 90 * DAY, None)
    kept = store.delivery(delivery_id)
    assert kept.payload == ""
    assert [p.ref for p in store.parts(delivery_id)] == [TargetRef("at://x/1", cid="c1")]
    assert store.mapping("masto", "1", "bsky") is not None
    assert store.is_copy("bsky", "at://x/1")
    assert store.was_relayed("masto", "1")


def test_mappings_go_after_their_own_retention_and_take_their_delivery_along(
    store: Store,
) -> None:
    old, recent = delivered(store, "1"), delivered(store, "2")
    with store.transaction() as db:
        db.execute("UPDATE deliveries SET done_at = done_at - ? WHERE id = ?", (400 * DAY, old))
        db.execute(
            "UPDATE mappings SET created_at = created_at - ? WHERE source_id = '1'", (400 * DAY,)
        )
        db.execute("UPDATE copies SET at = at - ? WHERE source_id = '1'", (400 * DAY,))
    now = time.time()
    prune_all(store, now - 90 * DAY, now - 365 * DAY)
    assert store.mapping("masto", "1", "bsky") is None
    assert store.find(old) is None and store.parts(old) == []
    assert not store.is_copy("bsky", "at://x/1")
    assert store.mapping("masto", "2", "bsky") is not None
    assert store.find(recent) is not None


def test_copies_of_a_deleted_post_are_forgotten_after_retention(store: Store) -> None:
    delivered(store, "1")
    store.forget_mapping("masto", "1", "bsky")
    prune_all(store, time.time() - 90 * DAY, None)
    assert store.is_copy("bsky", "at://x/1")
    age(store, "copies", "at", 100 * DAY)
    prune_all(store, time.time() - 90 * DAY, None)
    assert not store.is_copy("bsky", "at://x/1")


def test_retention_off_keeps_everything(store: Store) -> None:
    delivered(store, "1")
    store.skip(store.delivery(store.accept(event("2"), [Planned("m", "bsky")])[0]), "x")
    age(store, "deliveries", "done_at", 10_000 * DAY)
    assert store.prune(None, None).total() == 0
    assert len(store.deliveries()) == 2


def test_an_old_database_is_migrated_with_ages_for_its_rows(tmp_path: Path) -> None:
    from relaybird.store import MIGRATIONS

    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path)
    db.executescript(MIGRATIONS[0])
    db.execute("PRAGMA user_version = 1")
    db.execute("INSERT INTO copies VALUES ('bsky', 'at://x/1', 'masto', '1')")
    db.execute(
        "INSERT INTO deliveries (route, kind, source_account, source_id, target_account, payload,"
        " state, created_at) VALUES ('r', 'post', 'masto', '1', 'bsky', '{}', 'dead', 5.0)"
    )
    db.commit()
    db.close()
    store = Store(path)
    (at,) = store.db.execute("SELECT at FROM copies").fetchone()
    assert at > time.time() - 60
    assert store.deliveries("dead")[0].done_at == 5.0


# ------------------------------------------------------------------------------------------------
# The relay's intake when the database refuses a write


def relay_config(tmp_path: Path, extra: str = "") -> Config:
    path = tmp_path / "relaybird.toml"
    path.write_text(
        f"""[relaybird]
state = "state.sqlite3"
{extra}

[accounts.masto]
network = "mastodon"
base_url = "http://127.0.0.1:9"
access_token = "token-value"

[accounts.bsky]
network = "bluesky"
base_url = "http://127.0.0.1:9"
handle = "news.example.org"
app_password = "app-password"

[[routes]]
name = "mirror"
from = ["masto"]
to = ["bsky"]
"""
    )
    return load_config(path, {})


async def test_relay_accept_on_a_full_disk_raises_a_temporary_error_and_keeps_nothing(
    tmp_path: Path,
) -> None:
    config = relay_config(tmp_path)
    store = Store(config.state_path())
    relay = Relay(config, store)
    pages = store.db.execute("PRAGMA page_count").fetchone()[0]
    store.db.execute(f"PRAGMA max_page_count = {pages}")
    big = Event(EventKind.POST, "masto", Post(id="2", text="x" * 20000), cursor="2")
    with pytest.raises(StoreUnavailable, match="full") as caught:
        await relay.accept(big)
    assert isinstance(caught.value, TemporaryError)
    assert store.cursor("masto") is None and store.deliveries() == []
    assert not relay.healthy()
    assert relay.metrics.registry.get_sample_value(
        "relaybird_store_errors_total", {"operation": "accept"}
    )
    # Space is freed; the listener's catch-up hands the same event again.
    store.db.execute("PRAGMA max_page_count = 1073741823")
    await relay.accept(big)
    assert [d.target_account for d in store.deliveries()] == ["bsky"]
    assert store.cursor("masto") == "2"
    assert relay.healthy()


async def test_relay_save_cursor_on_a_failing_database_raises_a_temporary_error(
    tmp_path: Path,
) -> None:
    config = relay_config(tmp_path)
    store = Store(config.state_path())
    relay = Relay(config, store)
    store.db.execute("PRAGMA query_only = ON")
    with pytest.raises(StoreUnavailable):
        relay.save_cursor("masto", "5")
    store.db.execute("PRAGMA query_only = OFF")
    assert store.cursor("masto") is None


async def test_relay_prunes_by_the_configured_retention(tmp_path: Path) -> None:
    config = relay_config(tmp_path, "retention_days = 30\nmapping_retention_days = 60")
    store = Store(config.state_path())
    relay = Relay(config, store)
    delivered(store, "1")
    store.skip(store.delivery(store.accept(event("2"), [Planned("mirror", "bsky")])[0]), "x")
    now = time.time()
    assert relay.prune(now + 29 * DAY).total() == 0
    pruned = relay.prune(now + 31 * DAY)
    assert (pruned.deliveries, pruned.slimmed, pruned.mappings) == (1, 1, 0)
    pruned = relay.prune(now + 61 * DAY)
    assert (pruned.deliveries, pruned.mappings, pruned.copies) == (1, 1, 1)
    assert store.deliveries() == []
    assert (
        relay.metrics.registry.get_sample_value("relaybird_pruned_rows_total", {"kind": "mappings"})
        == 1
    )


@dataclass
class Source:
    """A source account on a sandbox, and how a person posts there."""

    toml: str
    post: Callable[[str], Awaitable[object]]
    stop: Callable[[], Awaitable[None]]


async def mastodon_source() -> Source:
    from mastodon import Mastodon

    from relaybird.sandbox.mastodon import MastodonSandbox

    sandbox = MastodonSandbox(defer_image_processing=False)
    await sandbox.start()
    editor = sandbox.create_account("newsroom")
    client = Mastodon(
        api_base_url=sandbox.base_url, access_token=editor.token, version_check_mode="none"
    )
    toml = f'network = "mastodon"\nbase_url = "{sandbox.base_url}"\naccess_token = "{editor.token}"'
    return Source(toml, lambda text: asyncio.to_thread(client.status_post, text), sandbox.stop)


async def telegram_source() -> Source:
    from relaybird.sandbox.telegram import TelegramSandbox

    sandbox = TelegramSandbox()
    await sandbox.start()
    bot = sandbox.create_bot("news_bot")
    sandbox.create_channel("news", "News", [bot.id])

    async def post(text: str) -> object:
        return sandbox.post_as_user("@news", None, text)

    toml = (
        f'network = "telegram"\nbase_url = "{sandbox.root_url}"\nbot_token = "{bot.token}"\n'
        'chat = "@news"\npoll_timeout = 1'
    )
    return Source(toml, post, sandbox.stop)


async def bluesky_source() -> Source:
    from atproto import Client

    from relaybird.sandbox.bluesky import BlueskySandbox

    sandbox = BlueskySandbox()
    await sandbox.start()
    account = sandbox.create_account("news.bsky.sandbox", "app-password-1234")
    client = Client(base_url=sandbox.base_url)
    await asyncio.to_thread(client.login, account.handle, "app-password-1234", None, None, False)

    def post(text: str) -> object:
        record = {"$type": "app.bsky.feed.post", "text": text, "createdAt": "2026-01-01T00:00:00Z"}
        return client.com.atproto.repo.create_record(
            {"repo": account.did, "collection": "app.bsky.feed.post", "record": record}
        )

    toml = (
        f'network = "bluesky"\nbase_url = "{sandbox.base_url}"\nhandle = "{account.handle}"\n'
        'app_password = "app-password-1234"\nstream = "firehose"'
    )
    return Source(toml, lambda text: asyncio.to_thread(post, text), sandbox.stop)


@pytest.mark.parametrize(
    "make_source",
    [
        pytest.param(mastodon_source, id="mastodon"),
        pytest.param(telegram_source, id="telegram"),
        pytest.param(bluesky_source, id="bluesky"),
    ],
)
async def test_a_post_refused_by_a_failing_database_comes_again_from_the_stream(
    tmp_path: Path, make_source: Callable[[], Awaitable[Source]]
) -> None:
    """The real listeners against the sandboxes: the write fails, nothing is lost or doubled."""
    from relaybird.sandbox.mastodon import MastodonSandbox

    source = await make_source()
    targets = MastodonSandbox(defer_image_processing=False)
    await targets.start()
    archive = targets.create_account("archive")
    path = tmp_path / "relaybird.toml"
    path.write_text(
        f"""[relaybird]
state = "state.sqlite3"
listen = ""

[accounts.news]
{source.toml}

[accounts.archive]
network = "mastodon"
base_url = "{targets.base_url}"
access_token = "{archive.token}"

[[routes]]
name = "archive"
from = ["news"]
to = ["archive"]
"""
    )
    config = load_config(path, {})
    store = Store(config.state_path())
    relay = Relay(config, store)

    async def until(predicate: Callable[[], object], what: str, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            await asyncio.sleep(0.05)

    try:
        await relay.start()
        await until(relay.healthy, "the stream")
        await source.post("written before")
        await until(lambda: targets.statuses_of("archive"), "the first copy")
        store.db.execute("PRAGMA query_only = ON")
        await source.post("written while the disk was full")
        await until(lambda: relay.store_error, "the refused write")
        store.db.execute("PRAGMA query_only = OFF")
        await until(lambda: len(targets.statuses_of("archive")) > 1, "the second copy", 5)
        await asyncio.sleep(0.5)
    finally:
        await relay.stop()
        store.close()
        await targets.stop()
        await source.stop()
    copies = targets.statuses_of("archive")
    assert sorted(targets.source_text(c["id"]) for c in copies) == [
        "written before",
        "written while the disk was full",
    ]


def test_the_daemon_prunes_old_rows_when_it_starts(networks: Networks) -> None:
    config = networks.write_config()
    store = Store(networks.folder / "state.sqlite3")
    old = store.accept(event("old"), [Planned("mirror", "news_bsky")])[0]
    store.skip(store.delivery(old), "nothing to do")
    age(store, "deliveries", "done_at", 91 * DAY)
    age(store, "seen", "at", 91 * DAY)
    recent = store.accept(event("recent"), [Planned("mirror", "news_tg")])[0]
    store.skip(store.delivery(recent), "nothing to do")
    store.close()
    daemon = networks.daemon(config).start()
    try:
        wait_for(lambda: "retention: pruned 1 deliveries" in daemon.log(), what="the pruning")
    finally:
        daemon.stop()
    store = Store(networks.folder / "state.sqlite3")
    assert [d.id for d in store.deliveries()] == [recent]
    store.close()


def test_a_reply_waiting_for_its_parent_does_not_wake_the_worker_early(store: Store) -> None:
    (parent,) = store.accept(event("1"), [Planned("mirror", "bsky")])
    store.accept(event("2", reply_to="1"), [Planned("mirror", "bsky")])
    store.retry_later(store.delivery(parent), "503", at=5000.0)
    assert store.next_wakeup("bsky") == 5000.0
    assert store.next_delivery("bsky", now=4999.0) is None


def test_a_chat_keeps_only_its_newest_posts_for_later_requests(store: Store) -> None:
    sam = Author("telegram", "sam_staff", "Sam", id="42")
    for n in range(5):
        store.remember_chat_post("group", Post(id=f"-100:{n}", text=f"post {n}"), sam, keep=3)
    store.remember_chat_post("other", Post(id="-200:1", text="elsewhere"), None, keep=3)
    assert store.chat_post("group", "-100:1") is None
    found = store.chat_post("group", "-100:4")
    assert found is not None and found[0].text == "post 4" and found[1] == sam
    assert store.chat_post("other", "-200:1") == (Post(id="-200:1", text="elsewhere"), None)
