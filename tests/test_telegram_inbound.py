"""Telegram as a source: the listener long-polls the Telegram sandbox through relaybird's Bot API
client.

People act through the sandbox's helpers (`post_as_user`, `edit_as_user`); a second bot, driven by
an unmodified python-telegram-bot, posts what people cannot (documents, spoilered photos). The listener hands events to a recording sink that
also checks that cursors only move forward.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest
import telegram
from aiohttp import web
from PIL import Image

from relaybird.fitting import apply_content_warning
from relaybird.model import Author, Event, EventKind, Post, Span, SpanKind, Visibility
from relaybird.networks.telegram import CAPABILITIES
from relaybird.networks.telegram_api import TelegramApi
from relaybird.networks.telegram_format import post_to_entities
from relaybird.networks.telegram_inbound import MAX_FILE_ATTEMPTS, TelegramListener
from relaybird.sandbox.telegram import ApiCall, SandboxLimits, TelegramSandbox
from relaybird.sandbox.telegram_state import SandboxBot, SandboxChat, SandboxUser
from relaybird.store import StoreUnavailable

pytestmark = [pytest.mark.filterwarnings("ignore::telegram.warnings.PTBDeprecationWarning")]

ACCOUNT = "tg"
#: Lowered so that a document over the download limit stays small in the test.
DOWNLOAD_LIMIT = 64 * 1024


def image_bytes(color: tuple[int, int, int], size: tuple[int, int] = (64, 48)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, "PNG")
    return out.getvalue()


@dataclass
class RecordingSink:
    """An EventSink that keeps everything and refuses a cursor moving backwards."""

    events: list[Event] = field(default_factory=list)
    cursor: str | None = None
    connected: list[tuple[bool, str]] = field(default_factory=list)

    def _advance(self, cursor: str) -> None:
        if self.cursor is not None:
            assert int(cursor) >= int(self.cursor), "cursor moved backwards"
        self.cursor = cursor

    async def accept(self, event: Event) -> None:
        assert event.account == ACCOUNT
        self.events.append(event)
        if event.cursor is not None:
            self._advance(event.cursor)

    def save_cursor(self, account: str, cursor: str) -> None:
        assert account == ACCOUNT
        self._advance(cursor)

    def set_connected(self, account: str, connected: bool, detail: str = "") -> None:
        if not self.connected or self.connected[-1] != (connected, detail):
            self.connected.append((connected, detail))


@dataclass
class World:
    sandbox: TelegramSandbox
    account: SandboxBot
    api: TelegramApi
    poster: telegram.Bot
    alice: SandboxUser
    bob: SandboxUser
    channel: SandboxChat
    group: SandboxChat

    def listener(self, chat: SandboxChat, album_wait: float = 0.2) -> TelegramListener:
        return TelegramListener(
            ACCOUNT,
            self.api,
            chat.id,
            chat.username,
            poll_timeout=1,
            album_wait=album_wait,
            retry_base=0.05,
            retry_max=0.2,
        )

    def hook(self, hook: Callable[[ApiCall], Awaitable[web.StreamResponse | None]]) -> None:
        self.sandbox.hooks.append(hook)

    def get_updates_calls(self) -> int:
        return sum(1 for entry in self.sandbox.requests_log if entry.method == "getUpdates")


@pytest.fixture
async def world() -> AsyncIterator[World]:
    sandbox = TelegramSandbox(limits=SandboxLimits(max_download_bytes=DOWNLOAD_LIMIT))
    root = await sandbox.start()
    account = sandbox.create_bot("relay_bot", "Relay")
    poster_account = sandbox.create_bot("poster_bot", "Poster")
    alice = sandbox.create_user("Alice", "alice")
    bob = sandbox.create_user("Bob", "bob")
    channel = sandbox.create_channel(
        "news_channel", "News", admins=[alice.id, account.id, poster_account.id]
    )
    group = sandbox.create_group(
        "Chatter", members=[alice.id, bob.id, account.id], username="chatter"
    )
    api = TelegramApi(account.token, base_url=f"{root}/bot", base_file_url=f"{root}/file/bot")
    poster = telegram.Bot(
        poster_account.token, base_url=f"{root}/bot", base_file_url=f"{root}/file/bot"
    )
    try:
        async with poster:
            yield World(sandbox, account, api, poster, alice, bob, channel, group)
    finally:
        await api.close()
        await sandbox.stop()


@contextlib.asynccontextmanager
async def listening(
    listener: TelegramListener, sink: RecordingSink, *, fresh: bool = False
) -> AsyncIterator[None]:
    """Run the listener from the sink's cursor; on a fresh start wait until it has found "now"."""
    task = asyncio.create_task(listener.run(sink.cursor, sink))
    try:
        if fresh:
            await until(lambda: sink.cursor is not None, "the first cursor")
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def until(predicate: Callable[[], object], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def events_count(sink: RecordingSink, count: int) -> list[Event]:
    await until(lambda: len(sink.events) >= count, f"{count} events")
    await asyncio.sleep(0.1)  # nothing more may follow
    assert len(sink.events) == count, [e.post.id for e in sink.events]
    return sink.events


# ------------------------------------------------------------------------------------ starting


async def test_first_start_relays_nothing_from_the_backlog(world: World) -> None:
    world.sandbox.post_as_user(world.channel.id, world.alice.id, "old news")
    world.sandbox.post_as_user(world.channel.id, world.alice.id, "older news")
    backlog = world.sandbox.pending_updates(world.account)
    sink = RecordingSink()
    async with listening(world.listener(world.channel), sink, fresh=True):
        assert sink.cursor == str(backlog[-1]["update_id"])
        fresh = world.sandbox.post_as_user(world.channel.id, world.alice.id, "fresh news")
        [event] = await events_count(sink, 1)
    assert event.post.id == f"{world.channel.id}:{fresh['message_id']}"
    assert event.post.text == "fresh news"


async def test_first_start_with_nothing_pending_relays_what_comes_next(world: World) -> None:
    sink = RecordingSink()
    async with listening(world.listener(world.channel), sink, fresh=True):
        pass
    world.sandbox.post_as_user(world.channel.id, world.alice.id, "while stopped")
    async with listening(world.listener(world.channel), sink):
        [event] = await events_count(sink, 1)
    assert event.post.text == "while stopped"


# ------------------------------------------------------------------------------------ posts


async def test_channel_post_with_entities_becomes_the_expected_post(world: World) -> None:
    text = "🎉 Launch of 👩‍👩‍👧 club: details at https://example.com/x #relay, ask @alice"
    entities = [  # UTF-16 offsets: 🎉 and each person in the family count as two units
        {"type": "bold", "offset": 3, "length": 6},
        {"type": "italic", "offset": 22, "length": 4},
        {"type": "text_link", "offset": 28, "length": 7, "url": "https://example.com/notes"},
    ]
    sink = RecordingSink()
    async with listening(world.listener(world.channel), sink, fresh=True):
        sent = world.sandbox.post_as_user(world.channel.id, None, text, entities=entities)
        [event] = await events_count(sink, 1)
    message_id = sent["message_id"]
    assert event.kind is EventKind.POST
    assert event.cursor == sink.cursor
    assert event.post == Post(
        id=f"{world.channel.id}:{message_id}",
        text=text,
        spans=[
            Span(2, 8, SpanKind.BOLD),
            Span(18, 22, SpanKind.ITALIC),
            Span(24, 31, SpanKind.LINK, url="https://example.com/notes"),
            Span(35, 56, SpanKind.LINK, url="https://example.com/x"),
            Span(57, 63, SpanKind.HASHTAG, tag="relay"),
            Span(69, 75, SpanKind.MENTION, url="https://t.me/alice", handle="alice"),
        ],
        visibility=Visibility.PUBLIC,
        permalink=f"https://t.me/news_channel/{message_id}",
        author=Author(
            network="telegram",
            handle="news_channel",
            display_name="News",
            url="https://t.me/news_channel",
            id=str(world.channel.id),
        ),
        created_at=event.post.created_at,
    )
    assert event.post.created_at.endswith("Z")


async def test_group_message_names_its_sender_but_belongs_to_the_chat(world: World) -> None:
    sink = RecordingSink()
    async with listening(world.listener(world.group), sink, fresh=True):
        sent = world.sandbox.post_as_user(world.group.id, world.bob.id, "hello group")
        [event] = await events_count(sink, 1)
    post = event.post
    assert (event.kind, post.text) == (EventKind.POST, "hello group")
    assert post.author == Author(
        network="telegram",
        handle="bob",
        display_name="Bob",
        url="https://t.me/bob",
        id=str(world.group.id),
    )
    assert post.permalink == f"https://t.me/chatter/{sent['message_id']}"


async def test_group_message_carries_the_person_who_wrote_it(world: World) -> None:
    """The chat stands for the account; `by` is who spoke, for the bot's allowlist and limits."""
    sink = RecordingSink()
    async with listening(world.listener(world.group), sink, fresh=True):
        world.sandbox.post_as_user(world.group.id, world.bob.id, "from bob")
        world.sandbox.post_as_user(world.group.id, world.alice.id, "from alice")
        from_bob, from_alice = await events_count(sink, 2)
    assert from_bob.by == Author(
        network="telegram",
        handle="bob",
        display_name="Bob",
        url="https://t.me/bob",
        id=str(world.bob.id),
    )
    assert from_alice.by is not None and from_alice.by.id == str(world.alice.id)
    assert from_bob.post.author is not None
    assert from_bob.post.author.id == str(world.group.id)


async def test_channel_post_names_no_one_but_the_channel(world: World) -> None:
    sink = RecordingSink()
    async with listening(world.listener(world.channel), sink, fresh=True):
        world.sandbox.post_as_user(world.channel.id, world.alice.id, "news")
        [event] = await events_count(sink, 1)
    assert event.by is None


async def test_reply_inside_the_chat_is_a_self_reply(world: World) -> None:
    sink = RecordingSink()
    async with listening(world.listener(world.group), sink, fresh=True):
        parent = world.sandbox.post_as_user(world.group.id, world.alice.id, "question?")
        answer = world.sandbox.post_as_user(
            world.group.id, world.bob.id, "answer!", reply_to=parent["message_id"]
        )
        first, second = await events_count(sink, 2)
    assert first.kind is EventKind.POST
    assert second.kind is EventKind.REPLY
    reply = second.post
    assert reply.id == f"{world.group.id}:{answer['message_id']}"
    assert reply.reply_to == f"{world.group.id}:{parent['message_id']}" == first.post.id
    assert reply.author is not None
    assert reply.reply_to_author_id == reply.author.id == str(world.group.id)


async def test_update_from_another_chat_is_confirmed_and_ignored(world: World) -> None:
    sink = RecordingSink()
    async with listening(world.listener(world.channel), sink, fresh=True):
        world.sandbox.post_as_user(world.group.id, world.alice.id, "not for the channel")
        mine = world.sandbox.post_as_user(world.channel.id, world.alice.id, "for the channel")
        [event] = await events_count(sink, 1)
        await until(lambda: not world.sandbox.pending_updates(world.account), "confirmation")
        world.sandbox.post_as_user(world.group.id, world.alice.id, "again not")
        await until(lambda: not world.sandbox.pending_updates(world.account), "confirmation")
        await until(lambda: sink.cursor != event.cursor, "the cursor to pass the ignored one")
    assert event.post.id == f"{world.channel.id}:{mine['message_id']}"
    assert len(sink.events) == 1


# ------------------------------------------------------------------------------------ media


async def test_album_is_one_post_with_every_photo_in_order(world: World) -> None:
    photos = [image_bytes((200, 0, 0)), image_bytes((0, 200, 0)), image_bytes((0, 0, 200))]
    sink = RecordingSink()
    async with listening(world.listener(world.channel), sink, fresh=True):
        parts = [
            world.sandbox.post_as_user(
                world.channel.id,
                None,
                photo=data,
                caption="three shots" if index == 1 else "",
                media_group_id="album-1",
            )
            for index, data in enumerate(photos)
        ]
        after = world.sandbox.post_as_user(world.channel.id, None, "after the album")
        album, text = await events_count(sink, 2)
    assert album.kind is EventKind.POST
    assert album.post.id == f"{world.channel.id}:{parts[0]['message_id']}"
    assert album.post.text == "three shots"
    assert [item.data for item in album.post.media] == photos
    # Telegram calls every photo a JPEG; the bytes (PNG here) decide what is recorded.
    assert [item.mime for item in album.post.media] == ["image/png"] * 3
    assert text.post.id == f"{world.channel.id}:{after['message_id']}"
    assert album.cursor is not None and text.cursor is not None
    assert int(album.cursor) < int(text.cursor)


async def test_album_being_collected_is_not_confirmed_so_a_crash_loses_nothing(
    world: World,
) -> None:
    sink = RecordingSink()
    async with listening(world.listener(world.channel, album_wait=30), sink, fresh=True):
        for color in ((1, 2, 3), (4, 5, 6)):
            world.sandbox.post_as_user(
                world.channel.id, None, photo=image_bytes(color), media_group_id="album-2"
            )
        world.sandbox.post_as_user(world.channel.id, None, "behind the album")
        polls = world.get_updates_calls()
        await until(lambda: world.get_updates_calls() >= polls + 3, "a few polls")
        assert sink.events == []
        assert len(world.sandbox.pending_updates(world.account)) == 3
    async with listening(world.listener(world.channel), sink):
        album, text = await events_count(sink, 2)
    assert len(album.post.media) == 2
    assert text.post.text == "behind the album"


async def test_media_from_a_bot_keep_their_type_spoiler_and_size_limit(world: World) -> None:
    photo = image_bytes((9, 9, 9))
    small = b"%PDF-1.4 small document"
    large = b"x" * (DOWNLOAD_LIMIT + 1)
    sink = RecordingSink()
    async with listening(world.listener(world.channel), sink, fresh=True):
        await world.poster.send_photo(world.channel.id, photo, caption="hidden", has_spoiler=True)
        await world.poster.send_document(world.channel.id, small, filename="notes.pdf")
        await world.poster.send_document(world.channel.id, large, filename="big.bin")
        spoiled, document, too_big = await events_count(sink, 3)
    assert spoiled.post.sensitive and spoiled.post.media[0].sensitive
    assert spoiled.post.media[0].data == photo
    assert (document.post.media[0].mime, document.post.media[0].data) == (
        "application/pdf",
        small,
    )
    assert too_big.post.media[0].data is None
    assert too_big.post.media[0].url.startswith("tg-file:")


async def test_a_file_telegram_keeps_failing_to_serve_holds_the_chat_only_for_a_while(
    world: World,
) -> None:
    """getFile failing on the network is retried on the next polls (nothing confirmed meanwhile),
    but not for ever: the post then goes on with its photo as a link, and the chat moves on."""
    calls = {"getFile": 0}

    async def failing(call: ApiCall) -> web.StreamResponse | None:
        if call.method != "getFile":
            return None
        calls["getFile"] += 1
        body = {"ok": False, "error_code": 500, "description": "Internal Server Error"}
        return web.json_response(body, status=500)

    world.hook(failing)
    sink = RecordingSink()
    async with listening(world.listener(world.channel), sink, fresh=True):
        await world.poster.send_photo(world.channel.id, image_bytes((1, 2, 3)), caption="photo")
        world.sandbox.post_as_user(world.channel.id, None, "after it")
        photo, after = await events_count(sink, 2)
    assert calls["getFile"] == MAX_FILE_ATTEMPTS
    assert photo.post.text == "photo" and photo.post.media[0].data is None
    assert photo.post.media[0].url.startswith("tg-file:")
    assert after.post.text == "after it"
    assert any(not connected for connected, _ in sink.connected)


# ------------------------------------------------------------------------------------ warnings


async def test_content_warning_form_becomes_a_content_warning(world: World) -> None:
    text = "CW: finale spoilers\n\nThe butler 🎩 did it"
    body_start = len("CW: finale spoilers\n\n")
    entities = [{"type": "spoiler", "offset": body_start, "length": 20}]  # 🎩 is two units
    sink = RecordingSink()
    async with listening(world.listener(world.channel), sink, fresh=True):
        world.sandbox.post_as_user(world.channel.id, None, text, entities=entities)
        world.sandbox.post_as_user(world.channel.id, None, "CW: this is just a text")
        warned, plain = await events_count(sink, 2)
    assert warned.post.content_warning == "finale spoilers"
    assert (warned.post.text, warned.post.spans) == ("The butler 🎩 did it", [])
    assert plain.post.content_warning == ""
    assert plain.post.text == "CW: this is just a text"


async def test_content_warning_survives_the_round_trip_through_telegram(world: World) -> None:
    original = Post(
        id="1",
        text="the plot twist is huge",
        spans=[Span(4, 14, SpanKind.BOLD)],
        content_warning="plot details",
    )
    text, entities = post_to_entities(apply_content_warning(original, CAPABILITIES))
    sink = RecordingSink()
    async with listening(world.listener(world.channel), sink, fresh=True):
        world.sandbox.post_as_user(world.channel.id, None, text, entities=entities)
        [event] = await events_count(sink, 1)
    back = event.post
    assert (back.text, back.spans, back.content_warning) == (
        original.text,
        original.spans,
        original.content_warning,
    )


async def test_media_only_warning_with_hidden_media_is_a_content_warning(world: World) -> None:
    sink = RecordingSink()
    async with listening(world.listener(world.channel), sink, fresh=True):
        await world.poster.send_photo(
            world.channel.id, image_bytes((5, 5, 5)), caption="CW: flash", has_spoiler=True
        )
        [event] = await events_count(sink, 1)
    assert (event.post.content_warning, event.post.text, event.post.sensitive) == (
        "flash",
        "",
        True,
    )


# ------------------------------------------------------------------------------------ edits


async def test_edit_becomes_an_edit_event_with_the_edit_date_as_version(world: World) -> None:
    sink = RecordingSink()
    async with listening(world.listener(world.channel), sink, fresh=True):
        sent = world.sandbox.post_as_user(world.channel.id, None, "frist post")
        await events_count(sink, 1)
        edited = world.sandbox.edit_as_user(world.channel.id, sent["message_id"], "first post")
        _, edit = await events_count(sink, 2)
    assert edit.kind is EventKind.EDIT
    assert edit.version == str(edited["edit_date"])
    assert edit.post.id == f"{world.channel.id}:{sent['message_id']}"
    assert edit.post.text == "first post"


async def test_editing_an_album_caption_edits_the_whole_album(world: World) -> None:
    photos = [image_bytes((10, 20, 30)), image_bytes((30, 20, 10))]
    sink = RecordingSink()
    async with listening(world.listener(world.channel), sink, fresh=True):
        parts = [
            world.sandbox.post_as_user(
                world.channel.id,
                None,
                photo=data,
                caption="tpyo" if index == 0 else "",
                media_group_id="album-3",
            )
            for index, data in enumerate(photos)
        ]
        await events_count(sink, 1)
        world.sandbox.edit_as_user(world.channel.id, parts[0]["message_id"], "typo")
        album, edit = await events_count(sink, 2)
    assert edit.kind is EventKind.EDIT
    assert edit.post.id == album.post.id
    assert edit.post.text == "typo"
    assert [item.data for item in edit.post.media] == photos


# ------------------------------------------------------------------------------------ restarts


async def test_restart_from_the_saved_cursor_neither_repeats_nor_loses(world: World) -> None:
    sink = RecordingSink()
    async with listening(world.listener(world.channel), sink, fresh=True):
        world.sandbox.post_as_user(world.channel.id, None, "one")
        await events_count(sink, 1)
    world.sandbox.post_as_user(world.channel.id, None, "two")
    world.sandbox.post_as_user(world.channel.id, None, "three")
    async with listening(world.listener(world.channel), sink):
        await events_count(sink, 3)
        world.sandbox.post_as_user(world.channel.id, None, "four")
        await events_count(sink, 4)
    assert [event.post.text for event in sink.events] == ["one", "two", "three", "four"]
    async with listening(world.listener(world.channel), sink):
        await asyncio.sleep(0.3)
    assert len(sink.events) == 4


# ------------------------------------------------------------------------------------ failures


async def test_flood_wait_on_polling_is_waited_out(world: World) -> None:
    polls: list[float] = []
    refused: list[float] = []

    async def flood_once(call: ApiCall) -> web.StreamResponse | None:
        if call.method != "getUpdates":
            return None
        polls.append(time.monotonic())
        if refused:
            return None
        refused.append(polls[-1])
        body = {
            "ok": False,
            "error_code": 429,
            "description": "Too Many Requests: retry after 1",
            "parameters": {"retry_after": 1},
        }
        return web.json_response(body, status=429)

    world.hook(flood_once)
    sink = RecordingSink()
    async with listening(world.listener(world.channel), sink, fresh=True):
        world.sandbox.post_as_user(world.channel.id, None, "after the flood")
        [event] = await events_count(sink, 1)
    assert event.post.text == "after the flood"
    following = [at for at in polls if at > refused[0]]
    assert following and following[0] - refused[0] >= 0.95


@pytest.mark.parametrize(
    ("status", "description", "detail"),
    [
        (409, "Conflict: terminated by other getUpdates request", "another program is polling"),
        (502, "Bad Gateway", "polling failed"),
    ],
)
async def test_polling_failures_are_reported_and_recovered_from(
    world: World, status: int, description: str, detail: str
) -> None:
    failures = [2]

    async def failing(call: ApiCall) -> web.StreamResponse | None:
        if call.method != "getUpdates" or failures[0] == 0:
            return None
        failures[0] -= 1
        body = {"ok": False, "error_code": status, "description": description}
        return web.json_response(body, status=status)

    world.hook(failing)
    sink = RecordingSink()
    async with listening(world.listener(world.channel), sink, fresh=True):
        world.sandbox.post_as_user(world.channel.id, None, "still relayed")
        [event] = await events_count(sink, 1)
    assert event.post.text == "still relayed"
    down = [state for state in sink.connected if not state[0]]
    assert down and detail in down[0][1]
    assert sink.connected[-1] == (True, "")


@dataclass
class RefusingOnce(RecordingSink):
    """Refuses the first hand-over the way the relay does when its database cannot write."""

    refused: int = 0

    async def accept(self, event: Event) -> None:
        if not self.refused:
            self.refused += 1
            raise StoreUnavailable("the state database refused the write: disk full")
        await super().accept(event)


async def test_a_refused_hand_over_is_waited_out_and_the_update_comes_again(
    world: World,
) -> None:
    sink = RefusingOnce()
    async with listening(world.listener(world.channel), sink, fresh=True):
        world.sandbox.post_as_user(world.channel.id, None, "kept while the disk was full")
        [event] = await events_count(sink, 1)
    assert sink.refused == 1
    assert event.post.text == "kept while the disk was full"
    assert (False, "an update could not be handed on") in sink.connected
    assert sink.connected[-1] == (True, "")
