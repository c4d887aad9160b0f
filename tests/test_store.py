"""The SQLite store: dedupe, outbox order, parts, mappings and recovery after a crash."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from relaybird.model import Event, EventKind, Media, Post, Span, SpanKind, TargetRef
from relaybird.store import Planned, Store


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


def test_payload_round_trips_spans_and_media_bytes(store: Store) -> None:
    post = Post(
        id="9",
        text="see https://x.org",
        spans=[Span(4, 17, SpanKind.LINK, url="https://x.org")],
        media=[Media(mime="image/png", alt="a cat", data=b"\x89PNG\x00\xff")],
    )
    (delivery_id,) = store.accept(Event(EventKind.POST, "masto", post), [Planned("r", "bsky")])
    assert Post.from_json(store.delivery(delivery_id).payload) == post
