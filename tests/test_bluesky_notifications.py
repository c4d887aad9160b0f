"""Bluesky mentions from notifications, against the real PDS + AppView test network.

Other accounts write real records with the unmodified SDK; the AppView indexes them from the PDS's
firehose and lists them in our account's notifications, which the listener polls through the PDS.
A recording sink stands in for the relay.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from atproto import AsyncClient

from relaybird.model import Event, EventKind, SpanKind
from relaybird.networks.bluesky_notifications import BlueskyNotifications, parse_time
from relaybird.networks.xrpc import Session, XrpcClient
from tests.appview import AppViewNetwork
from tests.appview import wait_until as wait_sync

pytestmark = pytest.mark.pds

ACCOUNT = "bsky_news"
WAIT_SECONDS = 10.0
# A one-pixel PNG: small enough for any blob limit, real enough for the PDS to accept.
PIXEL = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)


async def wait_until(
    predicate: Callable[[], bool], what: str, timeout: float = WAIT_SECONDS
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(0.02)


@dataclass
class RecordingSink:
    """Keeps events, saved cursors and health; every cursor must be of the mentions stream."""

    events: list[Event] = field(default_factory=list)
    saved: list[str] = field(default_factory=list)
    health: list[tuple[bool, str]] = field(default_factory=list)

    async def accept(self, event: Event) -> None:
        assert (event.account, event.scope) == (ACCOUNT, "mentions")
        self.events.append(event)

    def save_cursor(self, account: str, cursor: str, scope: str = "") -> None:
        assert (account, scope) == (ACCOUNT, "mentions")
        self.saved.append(cursor)

    def set_connected(self, account: str, connected: bool, detail: str = "") -> None:
        assert account == ACCOUNT
        self.health.append((connected, detail))

    def ids(self) -> list[str]:
        return [e.post.id for e in self.events]


def now_iso(offset: float = 0.0) -> str:
    moment = datetime.now(UTC) + timedelta(seconds=offset)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def facet(text: str, shown: str, feature: dict[str, Any]) -> dict[str, Any]:
    start = text.encode().index(shown.encode())
    return {
        "index": {"byteStart": start, "byteEnd": start + len(shown.encode())},
        "features": [feature],
    }


@dataclass
class Person:
    """An account on the test network writing raw records, so every field is ours to choose."""

    did: str
    handle: str
    client: AsyncClient
    #: The same session as relaybird's adapter reads with: what the listener is given.
    reader: XrpcClient

    async def write(self, collection: str, record: dict[str, Any]) -> tuple[str, str]:
        answer = await self.client.com.atproto.repo.create_record(
            {"repo": self.did, "collection": collection, "record": {"$type": collection, **record}}
        )
        return str(answer.uri), str(answer.cid)

    async def post(
        self, text: str, created_at: str | None = None, **fields: Any
    ) -> tuple[str, str]:
        return await self.write(
            "app.bsky.feed.post", {"text": text, "createdAt": created_at or now_iso(), **fields}
        )

    async def mention(self, other: Person, text: str, **fields: Any) -> tuple[str, str]:
        """A post naming `other` with a real mention facet, as the app writes it."""
        full = f"@{other.handle} {text}"
        facets = [facet(full, f"@{other.handle}", {"$type": "app.bsky.richtext.facet#mention",
                                                    "did": other.did})]  # fmt: skip
        return await self.post(full, facets=facets, **fields)


def strong(ref: tuple[str, str]) -> dict[str, str]:
    return {"uri": ref[0], "cid": ref[1]}


@dataclass
class Rig:
    network: AppViewNetwork
    me: Person
    bob: Person
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def listener(self, **options: Any) -> BlueskyNotifications:
        settings: dict[str, Any] = {"poll_interval": 0.1, "reconnect_base": 0.05, **options}
        return BlueskyNotifications(
            ACCOUNT, self.me.reader, self.me.did, self.me.handle, **settings
        )

    async def start(self, cursor: str | None = None, **options: Any) -> RecordingSink:
        """Run a listener until it has polled once; on a first start, until it stored "now"."""
        sink = RecordingSink()
        self.tasks.append(asyncio.create_task(self.listener(**options).run(cursor, sink)))
        await wait_until(lambda: (True, "mentions polling") in sink.health, "the first poll")
        if cursor is None:
            assert sink.saved, "a first start stores its cursor"
        return sink

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.tasks.clear()

    def wait_notified(self, uris: set[str]) -> None:
        """Block until the AppView lists all of `uris` for us (no listener may be running)."""
        self.network.wait_for_notifications(
            self.me.did, lambda found: uris <= {n["uri"] for n in found}, timeout=WAIT_SECONDS
        )


@dataclass(frozen=True)
class Account:
    did: str
    handle: str
    password: str

    async def login(self, network: AppViewNetwork) -> Person:
        """Resume the session `createAccount` gave: a password login costs the PDS a slow hash."""
        tokens = network.sessions[self.did]
        session = ":::".join(
            [self.handle, self.did, tokens["accessJwt"], tokens["refreshJwt"], network.url]
        )
        client = AsyncClient(base_url=f"{network.url}/xrpc")
        await client.login(session_string=session, fetch_bsky_profile=False)
        reader = XrpcClient(network.url, session=Session.parse(session))
        return Person(self.did, self.handle, client, reader)


def new_account(network: AppViewNetwork, prefix: str, display_name: str = "") -> Account:
    did, handle, password = network.create_account(prefix)
    if display_name:
        network.xrpc(
            "com.atproto.repo.putRecord",
            {"repo": did, "collection": "app.bsky.actor.profile", "rkey": "self",
             "record": {"$type": "app.bsky.actor.profile", "displayName": display_name}},
            token=network.sessions[did]["accessJwt"],
        )  # fmt: skip
        wait_sync(
            lambda: network.wait_for_profile(did).get("displayName") == display_name or None,
            timeout=WAIT_SECONDS,
            what="the AppView to index the display name",
        )
    return Account(did, handle, password)


@pytest.fixture(scope="module")
def accounts(appview_network: AppViewNetwork) -> tuple[Account, Account]:
    """Our account and a reader, shared by the tests: each listener starts after what came
    before it (a first start skips the past), or from a cursor of its own test."""
    return (
        new_account(appview_network, "newsroom"),
        new_account(appview_network, "reader", display_name="Bob Reader 📰"),
    )


@pytest.fixture
async def rig(
    appview_network: AppViewNetwork, accounts: tuple[Account, Account]
) -> AsyncIterator[Rig]:
    me, bob = accounts
    made = Rig(appview_network, await me.login(appview_network), await bob.login(appview_network))
    try:
        yield made
    finally:
        await made.stop()
        await made.me.reader.close()
        await made.bob.reader.close()


# --------------------------------------------------------------------------------------------------


async def test_mention_reply_and_quote_become_mention_events(rig: Rig) -> None:
    me, bob = rig.me, rig.bob
    original = await me.post("Our election coverage starts tonight")
    sink = await rig.start()

    text_after = "👋 read https://example.org/live #vote"
    mention = await bob.mention(me, text_after, langs=["en"])
    reply = await bob.post(
        "Thank you, watching!", reply={"root": strong(original), "parent": strong(original)}
    )
    quote = await bob.post(
        "Worth reading", embed={"$type": "app.bsky.embed.record", "record": strong(original)}
    )
    await wait_until(lambda: len(sink.events) == 3, "the mention, reply and quote")

    assert sink.ids() == [mention[0], reply[0], quote[0]]
    assert all(e.kind is EventKind.MENTION and e.scope == "mentions" for e in sink.events)
    first, answer, quoted = sink.events

    post = first.post
    assert post.text == f"@{me.handle} {text_after}"
    assert post.author is not None
    assert (post.author.network, post.author.handle, post.author.id) == (
        "bluesky",
        bob.handle,
        bob.did,
    )
    assert post.author.display_name == "Bob Reader 📰"
    assert post.author.url == f"https://bsky.app/profile/{bob.handle}"
    rkey = mention[0].rsplit("/", 1)[1]
    assert post.permalink == f"https://bsky.app/profile/{bob.handle}/post/{rkey}"
    assert post.reply_to is None
    assert post.language == "en"
    (span,) = [s for s in post.spans if s.kind is SpanKind.MENTION]
    assert post.text[span.start : span.end] == f"@{me.handle}"
    assert (span.did, span.handle) == (me.did, me.handle)

    assert answer.post.text == "Thank you, watching!"
    assert (answer.post.reply_to, answer.post.thread_root) == (original[0], original[0])
    assert answer.post.reply_to_author_id == me.did
    assert quoted.post.text == "Worth reading"
    assert quoted.post.reply_to is None

    times = [parse_time(e.cursor or "") for e in sink.events]
    assert all(t is not None and abs(t - datetime.now(UTC)) < timedelta(minutes=1) for t in times)
    assert times == sorted(times)  # type: ignore[type-var]


async def test_first_start_records_now_and_emits_nothing(rig: Rig) -> None:
    me, bob = rig.me, rig.bob
    old = await bob.mention(me, "from before relaybird ran")
    rig.wait_notified({old[0]})
    listed = rig.network.wait_for_notifications(me.did, lambda found: bool(found))

    sink = await rig.start()
    await asyncio.sleep(0.4)  # several polls
    assert sink.events == []
    assert sink.saved == [listed[0]["indexedAt"]]


async def test_first_start_without_notifications_records_the_current_time(rig: Rig) -> None:
    rig.me = await new_account(rig.network, "quiet").login(rig.network)
    sink = await rig.start()
    saved = parse_time(sink.saved[0])
    assert saved is not None and abs(saved - datetime.now(UTC)) < timedelta(seconds=5)
    assert sink.events == []


async def test_restart_from_the_cursor_neither_repeats_nor_loses(rig: Rig) -> None:
    """What came while the daemon was down is caught up once, and nothing listed at or before the
    cursor is taken again, even a post whose app backdated it behind the cursor."""
    me, bob = rig.me, rig.bob
    sink = await rig.start()
    first = await bob.mention(me, "one")
    await wait_until(lambda: len(sink.events) == 1, "the first mention")
    await rig.stop()
    cursor = sink.events[0].cursor
    assert cursor is not None

    # Written while the daemon is down; the two new ones share one moment, as the AppView lists
    # a post at its `createdAt` when that comes before its indexing.
    behind = await bob.mention(me, "backdated", created_at=now_iso(-30.0))
    moment = now_iso()
    two = await bob.mention(me, "two", created_at=moment)
    three = await bob.mention(me, "three", created_at=moment)
    rig.wait_notified({behind[0], two[0], three[0]})

    again = await rig.start(cursor)
    await wait_until(lambda: len(again.events) >= 2, "the missed mentions")
    await asyncio.sleep(0.3)
    assert again.ids() == sorted([two[0], three[0]])  # one moment: in URI order
    assert first[0] not in again.ids() and behind[0] not in again.ids()
    assert again.saved == []
    # Only the last of a moment moves the cursor: a crash between the two replays both (the
    # store keeps the first once) instead of losing the second.
    assert [e.cursor for e in again.events] == [cursor, moment]
    await rig.stop()

    replayed = await rig.start(cursor)
    await wait_until(lambda: len(replayed.events) >= 2, "the replayed moment")
    await rig.stop()
    assert replayed.ids() == again.ids()


async def test_own_posts_likes_follows_and_reposts_produce_nothing(rig: Rig) -> None:
    me, bob = rig.me, rig.bob
    sink = await rig.start()
    mine = await me.post("our own post")
    await me.mention(me, "mentioning ourselves")
    await me.post("answering ourselves", reply={"root": strong(mine), "parent": strong(mine)})
    like = await bob.write("app.bsky.feed.like", {"subject": strong(mine), "createdAt": now_iso()})
    repost = await bob.write(
        "app.bsky.feed.repost", {"subject": strong(mine), "createdAt": now_iso()}
    )
    follow = await bob.write("app.bsky.graph.follow", {"subject": me.did, "createdAt": now_iso()})
    network = rig.network
    token = network.sessions[me.did]["accessJwt"]

    def listed_all() -> bool:
        found = network.query("app.bsky.notification.listNotifications", token=token)
        return {like[0], repost[0], follow[0]} <= {n["uri"] for n in found["notifications"]}

    await wait_until(listed_all, "the like, repost and follow to be listed")
    sentinel = await bob.mention(me, "the one that counts")
    await wait_until(lambda: bool(sink.events), "the sentinel mention")
    await asyncio.sleep(0.3)
    assert sink.ids() == [sentinel[0]]


async def test_a_mention_listed_behind_the_cursor_is_still_caught_while_running(rig: Rig) -> None:
    """The AppView lists a post at the earlier of its `createdAt` and its indexing: an app with
    a slow network can land a post behind one already handled."""
    me, bob = rig.me, rig.bob
    sink = await rig.start()
    fresh = await bob.mention(me, "quick")
    await wait_until(lambda: len(sink.events) == 1, "the first mention")
    late = await bob.mention(me, "slow", created_at=now_iso(-20.0))
    await wait_until(lambda: len(sink.events) == 2, "the late mention")
    await asyncio.sleep(0.3)

    assert sink.ids() == [fresh[0], late[0]]
    # The cursor never goes back.
    assert sink.events[1].cursor == sink.events[0].cursor


async def test_images_of_a_mention_are_downloaded_from_the_pds_url_given(rig: Rig) -> None:
    me, bob = rig.me, rig.bob
    with_pds = await rig.start(pds_url=rig.network.url)
    without = await rig.start()
    blob = await bob.client.upload_blob(PIXEL)
    image = {"image": blob.blob.model_dump(by_alias=True, exclude_none=True), "alt": "one pixel"}
    await bob.mention(me, "look", embed={"$type": "app.bsky.embed.images", "images": [image]})
    await wait_until(lambda: bool(with_pds.events and without.events), "the mention with an image")

    (media,) = with_pds.events[0].post.media
    assert (media.mime, media.alt, media.data) == ("image/png", "one pixel", PIXEL)
    # Without a PDS to fetch from, the image is left out rather than pointing nowhere.
    assert without.events[0].post.media == []


async def test_failures_are_reported_and_retried_with_backoff(
    appview_network: AppViewNetwork,
) -> None:
    # A client that never logged in: the PDS refuses every call.
    client = XrpcClient(appview_network.url)
    listener = BlueskyNotifications(ACCOUNT, client, "did:plc:nobody", "nobody.test",
                                    poll_interval=0.05, reconnect_base=0.01, reconnect_max=0.05)  # fmt: skip
    sink = RecordingSink()
    task = asyncio.create_task(listener.run(None, sink))
    try:
        await wait_until(lambda: len(sink.health) >= 3, "repeated attempts")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await client.close()
    failures = sink.health[:-1]
    assert all(not up and detail.startswith("mentions: ") for up, detail in failures)
    assert sink.health[-1] == (False, "mentions stopped")
    assert sink.events == [] and sink.saved == []
