"""Bluesky as a source: the listener turns the account's own records into events, in every mode.

The records are written to the real reference PDS with the unmodified SDK; the listener reads them
back through the PDS's firehose, through the local Jetstream fed by that firehose, or by polling
`listRecords`. A recording sink stands in for the relay.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from relaybird.model import Event, EventKind, SpanKind
from relaybird.networks.bluesky_inbound import BlueskyListener, Mode, tid_for
from relaybird.networks.xrpc import Session, XrpcClient
from relaybird.sandbox.jetstream import JetstreamServer
from relaybird.store import StoreUnavailable
from tests.realpds import RealPds
from tests.test_jetstream import Writer, Written, has_commit, new_writer, png, wait_until

ACCOUNT = "bsky_source"


@dataclass
class RecordingSink:
    """An EventSink that keeps everything, and notes any cursor that would move backwards."""

    events: list[Event] = field(default_factory=list)
    saved: list[str] = field(default_factory=list)
    health: list[tuple[bool, str]] = field(default_factory=list)
    cursor: str | None = None
    numeric: bool = True
    backwards: list[tuple[str, str]] = field(default_factory=list)

    async def accept(self, event: Event) -> None:
        assert event.account == ACCOUNT
        self._move(event.cursor)
        self.events.append(event)

    def save_cursor(self, account: str, cursor: str) -> None:
        assert account == ACCOUNT
        self._move(cursor)
        self.saved.append(cursor)

    def set_connected(self, account: str, connected: bool, detail: str = "") -> None:
        assert account == ACCOUNT
        self.health.append((connected, detail))

    @property
    def connected(self) -> bool:
        return bool(self.health) and self.health[-1][0]

    def _move(self, cursor: str | None) -> None:
        if cursor is None:
            return
        if self.cursor is not None and self._order(cursor) < self._order(self.cursor):
            self.backwards.append((self.cursor, cursor))
        self.cursor = cursor

    def _order(self, cursor: str) -> tuple[int, str]:
        """Seqs and times compare as numbers, record keys (all 13 characters) as text."""
        return (int(cursor), "") if self.numeric else (0, cursor)

    def by_id(self, post_id: str) -> list[Event]:
        return [e for e in self.events if e.post.id == post_id]


@dataclass
class Rig:
    """The real PDS, a Jetstream in front of it, and listeners in one mode.

    The Jetstream also serves as a probe in every mode: once it has an event, the PDS has
    published that write, so a listener started afterwards cannot see it live.
    """

    pds: RealPds
    jetstream: JetstreamServer
    mode: Mode
    clients: list[XrpcClient] = field(default_factory=list)

    def reader(self, me: Writer) -> XrpcClient:
        """An XRPC client on the writer's session, as the adapter hands its listener one."""
        tokens = self.pds.sessions[me.did]
        session = Session(me.handle, me.did, tokens["accessJwt"], tokens["refreshJwt"])
        client = XrpcClient(self.pds.url, session=session)
        self.clients.append(client)
        return client

    def listener(self, me: Writer, **options: Any) -> BlueskyListener:
        settings: dict[str, Any] = {"poll_interval": 0.1, "reconnect_base": 0.05, **options}
        return BlueskyListener(
            ACCOUNT,
            self.reader(me),
            me.did,
            me.handle,
            mode=self.mode,
            pds_url=self.pds.url,
            jetstream_url=self.jetstream.url,
            **settings,
        )

    def sink(self, cursor: str | None = None) -> RecordingSink:
        return RecordingSink(cursor=cursor, numeric=self.mode != "poll")

    async def published(self, author: Writer, written: Written) -> None:
        await wait_until(
            lambda: has_commit(self.jetstream.buffered(), author.did, written.rkey),
            "the PDS to publish the write",
        )


@pytest.fixture
async def rig(request: pytest.FixtureRequest, real_pds: RealPds) -> AsyncIterator[Rig]:
    server = JetstreamServer(real_pds.url)
    await server.start()
    rig = Rig(real_pds, server, request.param)
    try:
        yield rig
    finally:
        await server.stop()
        for client in rig.clients:
            await client.close()


def modes(*names: Mode) -> pytest.MarkDecorator:
    return pytest.mark.parametrize("rig", names, indirect=True)


ALL_MODES = modes("firehose", "jetstream", "poll")
STREAMS = modes("firehose", "jetstream")
pytestmark = pytest.mark.pds


@contextlib.asynccontextmanager
async def listening(
    listener: BlueskyListener, cursor: str | None, sink: RecordingSink
) -> AsyncIterator[None]:
    task = asyncio.create_task(listener.run(cursor, sink))
    try:
        await wait_until(lambda: sink.connected or task.done(), "the listener to connect")
        if task.done():
            task.result()
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert sink.health[-1] == (False, "stopped")


def link_facet(text: str, link: str) -> list[dict[str, Any]]:
    start = text.encode().index(link.encode())
    return [
        {
            "index": {"byteStart": start, "byteEnd": start + len(link.encode())},
            "features": [{"$type": "app.bsky.richtext.facet#link", "uri": link}],
        }
    ]


@dataclass
class Story:
    """A person's day of posting: a linked post, a self-reply, a photo, a labelled link card."""

    root: Written
    reply: Written
    photo: Written
    card: Written
    photo_bytes: bytes
    thumb_bytes: bytes


LINK = "https://example.org/story"
ROOT_TEXT = f"Our story is out: {LINK}"


async def write_story(me: Writer, stranger: Writer) -> Story:
    root = await me.post(ROOT_TEXT, facets=link_facet(ROOT_TEXT, LINK), langs=["en"])
    await stranger.post("a stranger's post on the same PDS")
    reply = await me.post("More in the thread", reply={"root": root.ref(), "parent": root.ref()})
    photo_bytes, thumb_bytes = png((10, 120, 200)), png((250, 250, 0))
    photo = await me.post(
        "A photo",
        embed={
            "$type": "app.bsky.embed.images",
            "images": [{"image": await me.blob(photo_bytes), "alt": "A blue square"}],
        },
    )
    card = await me.post(
        "Careful with this link",
        labels={"$type": "com.atproto.label.defs#selfLabels", "values": [{"val": "graphic-media"}]},
        embed={
            "$type": "app.bsky.embed.external",
            "external": {
                "uri": "https://example.org/card",
                "title": "The card",
                "description": "What the link is about",
                "thumb": await me.blob(thumb_bytes),
            },
        },
    )
    return Story(root, reply, photo, card, photo_bytes, thumb_bytes)


def check_story(sink: RecordingSink, me: Writer, story: Story) -> None:
    """The four creations arrived as the right events, converted in full."""
    root, reply, photo, card = (
        sink.by_id(w.uri)[0] for w in (story.root, story.reply, story.photo, story.card)
    )
    assert root.kind is EventKind.POST
    assert root.post.text == ROOT_TEXT
    assert root.post.author is not None
    assert (root.post.author.id, root.post.author.handle) == (me.did, me.handle)
    assert [(s.kind, s.url) for s in root.post.spans] == [(SpanKind.LINK, LINK)]
    assert ROOT_TEXT[root.post.spans[0].start : root.post.spans[0].end] == LINK
    assert root.post.language == "en"
    assert reply.kind is EventKind.REPLY
    assert reply.post.reply_to == story.root.uri
    assert reply.post.reply_to_author_id == me.did
    assert reply.post.thread_root == story.root.uri
    assert [(m.mime, m.alt, m.data) for m in photo.post.media] == [
        ("image/png", "A blue square", story.photo_bytes)
    ]
    assert card.post.sensitive
    assert card.post.card is not None and card.post.card.thumb is not None
    assert (card.post.card.url, card.post.card.title, card.post.card.description) == (
        "https://example.org/card",
        "The card",
        "What the link is about",
    )
    assert card.post.card.thumb.data == story.thumb_bytes


# --- what becomes an event ----------------------------------------------------------------------


@STREAMS
async def test_own_posts_replies_photos_cards_edits_and_deletes_become_events(rig: Rig) -> None:
    me, stranger = await new_writer(rig.pds, "story"), await new_writer(rig.pds, "stranger")
    sink = rig.sink()
    async with listening(rig.listener(me), None, sink):
        story = await write_story(me, stranger)
        edited_record = {
            "$type": "app.bsky.feed.post",
            "text": f"{ROOT_TEXT} (updated)",
            "facets": link_facet(ROOT_TEXT, LINK),
            "createdAt": "2025-01-01T12:00:00.000Z",
        }
        edit = await me.put(story.root.rkey, edited_record)
        await me.delete(story.reply.rkey)
        await wait_until(lambda: len(sink.events) >= 6, "six events")

    assert [(e.kind, e.post.id) for e in sink.events] == [
        (EventKind.POST, story.root.uri),
        (EventKind.REPLY, story.reply.uri),
        (EventKind.POST, story.photo.uri),
        (EventKind.POST, story.card.uri),
        (EventKind.EDIT, story.root.uri),
        (EventKind.DELETE, story.reply.uri),
    ]
    check_story(sink, me, story)
    edited, deleted = sink.events[4], sink.events[5]
    assert edited.version == edit.rev
    assert edited.post.text == f"{ROOT_TEXT} (updated)"
    assert [s.url for s in edited.post.spans] == [LINK]
    assert deleted.post.text == "" and deleted.post.media == []
    assert all(e.post.author is not None and e.post.author.id == me.did for e in sink.events)
    assert not sink.backwards


@modes("poll")
async def test_polling_sees_new_posts_oldest_first_but_not_edits_or_deletes(rig: Rig) -> None:
    me, stranger = await new_writer(rig.pds, "poller"), await new_writer(rig.pds, "stranger")
    sink = rig.sink()
    async with listening(rig.listener(me), None, sink):
        story = await write_story(me, stranger)
        await wait_until(lambda: len(sink.events) >= 4, "four posts")
        await me.put(
            story.root.rkey,
            {
                "$type": "app.bsky.feed.post",
                "text": "changed",
                "createdAt": "2025-01-01T12:00:00.000Z",
            },
        )
        await me.delete(story.reply.rkey)
        later = await me.post("posted after the edit and the delete")
        await wait_until(lambda: bool(sink.by_id(later.uri)), "the later post")

    assert [(e.kind, e.post.id) for e in sink.events] == [
        (EventKind.POST, story.root.uri),
        (EventKind.REPLY, story.reply.uri),
        (EventKind.POST, story.photo.uri),
        (EventKind.POST, story.card.uri),
        (EventKind.POST, later.uri),
    ]
    check_story(sink, me, story)
    assert sink.cursor == later.rkey
    assert not sink.backwards


# --- cursors ------------------------------------------------------------------------------------


@ALL_MODES
async def test_first_start_emits_nothing_from_the_past_and_records_a_cursor(rig: Rig) -> None:
    me = await new_writer(rig.pds, "first")
    old = await me.post("written before relaybird ever ran")
    await rig.published(me, old)
    sink = rig.sink()
    async with listening(rig.listener(me), None, sink):
        new = await me.post("written once it listens")
        await wait_until(lambda: bool(sink.events), "an event")

    assert [(e.kind, e.post.id) for e in sink.events] == [(EventKind.POST, new.uri)]
    assert sink.cursor is not None
    if rig.mode == "poll":
        assert sink.saved == [old.rkey]
    if rig.mode == "jetstream":
        assert len(sink.saved) == 1


@ALL_MODES
async def test_restart_from_the_stored_cursor_catches_up_without_repeats(rig: Rig) -> None:
    me = await new_writer(rig.pds, "restart")
    sink = rig.sink()
    async with listening(rig.listener(me), None, sink):
        before = await me.post("before the stop")
        await wait_until(lambda: bool(sink.events), "the first post")
    stored = sink.cursor
    assert stored is not None

    while_stopped = [await me.post(f"while stopped {n}") for n in (1, 2)]
    await rig.published(me, while_stopped[-1])
    again = rig.sink(stored)
    async with listening(rig.listener(me), stored, again):
        await wait_until(lambda: len(again.events) >= 2, "the two missed posts")
        after = await me.post("after the restart")
        await wait_until(lambda: len(again.events) >= 3, "the post after the restart")

    assert [e.post.id for e in sink.events] == [before.uri]
    assert [e.post.id for e in again.events] == [w.uri for w in (*while_stopped, after)]
    assert not again.backwards


@ALL_MODES
async def test_quiet_first_run_still_leaves_a_cursor_to_catch_up_from(rig: Rig) -> None:
    """Jetstream and polling know where "now" is without any event; the firehose needs a frame."""
    me = await new_writer(rig.pds, "quiet")
    sink = rig.sink()
    async with listening(rig.listener(me), None, sink):
        if rig.mode == "firehose":
            other = await new_writer(rig.pds, "somebody")
            await other.post("any frame on this PDS moves the cursor")
            await wait_until(lambda: bool(sink.saved), "a saved cursor")
    assert sink.events == [] and sink.cursor is not None

    missed = await me.post("written while stopped")
    again = rig.sink(sink.cursor)
    async with listening(rig.listener(me), sink.cursor, again):
        await wait_until(lambda: bool(again.events), "the missed post")
    assert [e.post.id for e in again.events] == [missed.uri]


# --- connection health --------------------------------------------------------------------------


@modes("jetstream")
async def test_jetstream_drop_reconnects_from_the_cursor_without_repeats(rig: Rig) -> None:
    me = await new_writer(rig.pds, "dropped")
    sink = rig.sink()
    async with listening(rig.listener(me, jetstream_margin=5.0), None, sink):
        first = await me.post("before the drop")
        await wait_until(lambda: bool(sink.events), "the first post")
        await rig.jetstream.disconnect_subscribers()
        await wait_until(lambda: not sink.connected, "the drop to be noticed")
        await wait_until(lambda: sink.connected, "the reconnection")
        second = await me.post("after the drop")
        await wait_until(lambda: len(sink.events) >= 2, "the second post")

    assert [e.post.id for e in sink.events] == [first.uri, second.uri]
    assert (False, "jetstream closed by the server (code 1001)") in sink.health
    assert [h[0] for h in sink.health] == [True, False, True, False]


class SilentServer:
    """Accepts WebSocket upgrades, then never says a word again, not even a pong."""

    def __init__(self) -> None:
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._streams: list[asyncio.StreamWriter] = []

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        for writer in self._streams:
            writer.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._streams.append(writer)
        request = await reader.readuntil(b"\r\n\r\n")
        key = next(
            line.split(b":", 1)[1].strip()
            for line in request.split(b"\r\n")
            if line.lower().startswith(b"sec-websocket-key:")
        )
        accept = base64.b64encode(
            hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest()
        )
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
        )
        await writer.drain()
        self.connections += 1
        with contextlib.suppress(ConnectionError):
            while await reader.read(65536):
                pass


@pytest.mark.parametrize("mode", ["firehose", "jetstream"])
async def test_a_silent_stream_is_declared_dead_by_ping_and_reconnected(mode: Mode) -> None:
    silent = SilentServer()
    base = await silent.start()
    sink = RecordingSink()
    listener = BlueskyListener(
        ACCOUNT,
        client=None,  # type: ignore[arg-type]  # streams never call the API
        did="did:plc:silentsilentsilent",
        handle="silent.test",
        mode=mode,
        pds_url=base,
        jetstream_url=base.replace("http://", "ws://") + "/subscribe",
        stall_timeout=0.4,
        reconnect_base=0.05,
    )
    try:
        async with listening(listener, None, sink):
            await wait_until(lambda: silent.connections >= 2, "a second connection", timeout=5)
            await wait_until(lambda: sink.connected, "connected again", timeout=5)
    finally:
        await silent.stop()

    up_down = [h for h in sink.health if h != (False, "stopped")]
    assert [h[0] for h in up_down[:3]] == [True, False, True]
    assert up_down[0][1] == f"{mode} open"
    assert up_down[1][1].startswith(f"{mode} lost")


# --- failures while handing events on -----------------------------------------------------------


@dataclass
class BrokenAfterFirst(RecordingSink):
    """Accepts one event, then fails every hand-over, like a relay whose disk just filled up."""

    async def accept(self, event: Event) -> None:
        if self.events:
            raise RuntimeError("disk full")
        await super().accept(event)


@STREAMS
async def test_a_thread_written_in_one_commit_survives_a_failure_between_its_posts(
    rig: Rig,
) -> None:
    """The app writes a thread with one `applyWrites`: a crash after its first post loses nothing."""
    me = await new_writer(rig.pds, "onecommit")
    now = time.time_ns() // 1000
    keys = [tid_for(now), tid_for(now + 1)]
    writes = [
        {
            "$type": "com.atproto.repo.applyWrites#create",
            "collection": "app.bsky.feed.post",
            "rkey": key,
            "value": {
                "$type": "app.bsky.feed.post",
                "text": f"thread part {n}",
                "createdAt": "2025-01-01T12:00:00.000Z",
            },
        }
        for n, key in enumerate(keys, 1)
    ]
    uris = [f"at://{me.did}/app.bsky.feed.post/{key}" for key in keys]
    broken = BrokenAfterFirst(numeric=True)
    async with listening(rig.listener(me), None, broken):
        await me.client.com.atproto.repo.apply_writes({"repo": me.did, "writes": writes})
        await wait_until(
            lambda: any(h[1] == "unexpected error: RuntimeError" for h in broken.health),
            "the failed hand-over",
        )
    assert [e.post.id for e in broken.events] == uris[:1]
    assert broken.cursor is not None

    again = rig.sink(broken.cursor)
    async with listening(rig.listener(me), broken.cursor, again):
        await wait_until(lambda: bool(again.by_id(uris[1])), "the second part")
    assert [e.post.id for e in again.events][-1] == uris[1]
    assert {e.post.id for e in again.events} <= set(uris)
    assert not broken.backwards and not again.backwards


@dataclass
class RefusingStore(RecordingSink):
    """Refuses every hand-over the way the relay does when its database cannot write."""

    async def accept(self, event: Event) -> None:
        raise StoreUnavailable("the state database refused the write: disk full")


@modes("firehose")
async def test_a_database_refusal_is_an_expected_failure_without_a_traceback(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    """A refused write is a temporary failure like a dropped stream: one line, no traceback."""
    me = await new_writer(rig.pds, "refused")
    refusing = RefusingStore(numeric=True)
    async with listening(rig.listener(me), None, refusing):
        await me.post("refused by the store")
        await wait_until(
            lambda: any(h[1] == "StoreUnavailable" for h in refusing.health),
            "the refused hand-over",
        )
    listener_records = [r for r in caplog.records if r.name.endswith("bluesky_inbound")]
    assert listener_records
    assert not [r for r in listener_records if r.exc_info]
    assert not [h for h in refusing.health if h[1].startswith("unexpected error")]
