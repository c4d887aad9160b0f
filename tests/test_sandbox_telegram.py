"""The Telegram sandbox driven by the unmodified python-telegram-bot client, as relaybird will."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dtm
import io
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
import telegram
from aiohttp import web
from PIL import Image
from telegram import (
    InputMediaDocument,
    InputMediaPhoto,
    LinkPreviewOptions,
    MessageEntity,
    ReplyParameters,
)
from telegram.error import BadRequest, Conflict, Forbidden, InvalidToken, NetworkError, RetryAfter
from telegram.ext import Application

from relaybird.sandbox.telegram import ApiCall, SandboxLimits, TelegramSandbox
from relaybird.sandbox.telegram_state import SandboxBot, SandboxChat, SandboxUser

pytestmark = [
    # python-telegram-bot 22 announces that durations will become timedeltas; not our concern.
    pytest.mark.filterwarnings("ignore::telegram.warnings.PTBDeprecationWarning"),
    # The legacy reply_to_message_id is sent through do_api_request on purpose.
    pytest.mark.filterwarnings("ignore:Please use 'Bot.sendMessage'"),
]


def image_bytes(width: int = 640, height: int = 480, fmt: str = "PNG") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (30, 120, 200)).save(out, fmt)
    return out.getvalue()


def client_for(sandbox: TelegramSandbox, account: SandboxBot) -> telegram.Bot:
    root = sandbox.root_url
    return telegram.Bot(account.token, base_url=f"{root}/bot", base_file_url=f"{root}/file/bot")


@contextlib.contextmanager
def refused(kind: type[Exception], fragment: str) -> Iterator[None]:
    """Expect ``kind`` whose message contains ``fragment``, ignoring case.

    python-telegram-bot strips "Bad Request: " and capitalizes what is left, so descriptions are
    compared case-insensitively here; exact wording is checked over raw HTTP.
    """
    with pytest.raises(kind) as caught:
        yield
    assert fragment.lower() in str(caught.value).lower()


def seconds(value: int | dtm.timedelta) -> float:
    return value.total_seconds() if isinstance(value, dtm.timedelta) else float(value)


def retry_after_of(error: RetryAfter) -> float:
    return seconds(error.retry_after)


class FakeClock:
    """Wall-clock stand-in so rate windows can pass without sleeping."""

    def __init__(self) -> None:
        self.now = 1_750_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class World:
    sandbox: TelegramSandbox
    account: SandboxBot
    bot: telegram.Bot
    reader: SandboxBot
    alice: SandboxUser
    channel: SandboxChat
    group: SandboxChat


async def make_world(sandbox: TelegramSandbox) -> AsyncIterator[World]:
    await sandbox.start()
    account = sandbox.create_bot("relay_bot", "Relay")
    reader = sandbox.create_bot("reader_bot", "Reader")
    alice = sandbox.create_user("Alice", "alice")
    channel = sandbox.create_channel(
        "news_channel", "News", admins=[alice.id, account.id, reader.id]
    )
    group = sandbox.create_group("Chatter", members=[alice.id, account.id, reader.id])
    bot = client_for(sandbox, account)
    try:
        async with bot:
            yield World(sandbox, account, bot, reader, alice, channel, group)
    finally:
        await sandbox.stop()


@pytest.fixture
async def world() -> AsyncIterator[World]:
    async for built in make_world(TelegramSandbox()):
        yield built


# ---------------------------------------------------------------------------- identity


async def test_get_me_describes_the_bot_and_bad_tokens_are_unauthorized(world: World) -> None:
    me = await world.bot.get_me()
    assert (me.id, me.username, me.is_bot, me.first_name) == (
        world.account.id,
        "relay_bot",
        True,
        "Relay",
    )
    assert world.account.token.startswith(f"{world.account.id}:")

    stranger = telegram.Bot("123:nope", base_url=f"{world.sandbox.root_url}/bot")
    with pytest.raises(InvalidToken):
        await stranger.get_me()
    assert world.sandbox.requests_log[-1] == ("getMe", False, 401)


async def test_get_chat_by_username_and_by_id(world: World) -> None:
    by_name = await world.bot.get_chat("@news_channel")
    by_id = await world.bot.get_chat(world.channel.id)
    assert by_name.id == by_id.id == world.channel.id
    assert (by_name.type, by_name.title, by_name.username) == ("channel", "News", "news_channel")
    assert str(world.channel.id).startswith("-100")
    group = await world.bot.get_chat(world.group.id)
    assert group.type == "supergroup"
    with refused(BadRequest, "Chat not found"):
        await world.bot.get_chat("@nowhere")


# ---------------------------------------------------------------------------- text


async def test_entities_are_counted_in_utf16_code_units(world: World) -> None:
    text = "Hi 😀 \U0001d54f bold end"
    bold_at = 3 + 2 + 1 + 2 + 1  # "Hi " + surrogate pair + " " + surrogate pair + " "
    sent = await world.bot.send_message(
        world.channel.id, text, entities=[MessageEntity("bold", bold_at, 4)]
    )
    assert sent.text == text
    assert [(e.type, e.offset, e.length) for e in sent.entities] == [("bold", bold_at, 4)]
    assert sent.parse_entity(sent.entities[0]) == "bold"
    stored = world.sandbox.messages_in("@news_channel")[-1]
    assert stored["entities"] == [{"offset": bold_at, "length": 4, "type": "bold"}]


async def test_links_hashtags_and_mentions_are_detected_and_text_is_trimmed(world: World) -> None:
    sent = await world.bot.send_message(
        world.channel.id, "  see https://example.org/a?b=1. #news @alice  \n"
    )
    assert sent.text == "see https://example.org/a?b=1. #news @alice"
    found = {e.type: sent.parse_entity(e) for e in sent.entities}
    assert found == {"url": "https://example.org/a?b=1", "hashtag": "#news", "mention": "@alice"}


async def test_entity_running_past_the_text_is_refused(world: World) -> None:
    with pytest.raises(BadRequest) as caught:
        await world.bot.send_message(
            world.channel.id, "x😀", entities=[MessageEntity("bold", 1, 3)]
        )
    # python-telegram-bot capitalizes descriptions; the exact wording is checked over raw HTTP.
    assert caught.value.message.lower() == (
        "entity beginning at utf-16 offset 1 ends after the end of the text at utf-16 offset 4"
    )
    assert world.sandbox.messages_in(world.channel.id) == []


async def test_html_and_markdown_v2_are_stored_as_entities(world: World) -> None:
    html = await world.bot.send_message(
        world.channel.id,
        '<b>bold</b> <a href="https://example.com">link</a> &lt;3 <code>x</code>',
        parse_mode="HTML",
    )
    assert html.text == "bold link <3 x"
    assert [(e.type, e.offset, e.length, e.url) for e in html.entities] == [
        ("bold", 0, 4, None),
        ("text_link", 5, 4, "https://example.com/"),
        ("code", 13, 1, None),
    ]
    md = await world.bot.send_message(
        world.channel.id,
        "*b* _i_ ~s~ ||sp|| [t](https://example.com/x) v1\\.0",
        parse_mode="MarkdownV2",
    )
    assert md.text == "b i s sp t v1.0"
    assert [e.type for e in md.entities] == [
        "bold",
        "italic",
        "strikethrough",
        "spoiler",
        "text_link",
    ]

    with refused(
        BadRequest, "Can't parse entities: can't find end tag corresponding to start tag \"b\""
    ):
        await world.bot.send_message(world.channel.id, "<b>open", parse_mode="HTML")
    legacy = await world.bot.send_message(
        world.channel.id, "*b* _i_ [t](example.com) `c`", parse_mode="Markdown"
    )
    assert legacy.text == "b i t c"
    assert [(e.type, e.url) for e in legacy.entities] == [
        ("bold", None),
        ("italic", None),
        ("text_link", "http://example.com/"),
        ("code", None),
    ]
    with refused(BadRequest, "Character '.' is reserved"):
        await world.bot.send_message(world.channel.id, "v1.0", parse_mode="MarkdownV2")


async def test_text_length_limits(world: World) -> None:
    longest = "a" * 4095 + "é"
    assert len(longest) == 4096
    await world.bot.send_message(world.channel.id, longest)
    with refused(BadRequest, "Message is too long"):
        await world.bot.send_message(world.channel.id, "a" * 4097)
    with refused(BadRequest, "Message is too long"):
        await world.bot.send_message(world.channel.id, "a" * 4095 + "😀")  # 4097 UTF-16 units
    with refused(BadRequest, "Message text is empty"):
        await world.bot.send_message(world.channel.id, "")
    with refused(BadRequest, "Message must be non-empty"):
        await world.bot.send_message(world.channel.id, " \n ")
    assert [m["text"] for m in world.sandbox.messages_in(world.channel.id)] == [longest]


async def test_link_preview_options_are_kept(world: World) -> None:
    sent = await world.bot.send_message(
        world.channel.id,
        "https://example.com",
        link_preview_options=LinkPreviewOptions(is_disabled=True),
    )
    assert sent.link_preview_options is not None
    assert sent.link_preview_options.is_disabled is True


# ---------------------------------------------------------------------------- replies


async def test_replies_with_reply_parameters_and_the_legacy_field(world: World) -> None:
    first = await world.bot.send_message(world.group.id, "first")
    second = await world.bot.send_message(
        world.group.id, "second", reply_parameters=ReplyParameters(first.message_id)
    )
    assert second.reply_to_message is not None
    assert second.reply_to_message.message_id == first.message_id
    assert second.message_thread_id == first.message_id

    legacy = await world.bot.do_api_request(
        "sendMessage",
        api_kwargs={
            "chat_id": world.group.id,
            "text": "third",
            "reply_to_message_id": second.message_id,
        },
        return_type=telegram.Message,
    )
    assert legacy.reply_to_message is not None
    assert legacy.reply_to_message.message_id == second.message_id

    with refused(BadRequest, "Message to be replied not found"):
        await world.bot.send_message(
            world.group.id, "orphan", reply_parameters=ReplyParameters(999)
        )
    lenient = await world.bot.send_message(
        world.group.id,
        "orphan",
        reply_parameters=ReplyParameters(999, allow_sending_without_reply=True),
    )
    assert lenient.reply_to_message is None


# ---------------------------------------------------------------------------- media


async def test_photo_with_caption_is_stored_in_sizes_and_downloadable(world: World) -> None:
    upload = image_bytes(640, 480)
    sent = await world.bot.send_photo(
        world.channel.id, upload, caption="A <i>sky</i>", parse_mode="HTML"
    )
    assert sent.caption == "A sky"
    assert [(e.type, e.offset, e.length) for e in sent.caption_entities] == [("italic", 2, 3)]
    assert [(p.width, p.height) for p in sent.photo] == [(90, 68), (320, 240), (640, 480)]

    largest = sent.photo[-1]
    file = await world.bot.get_file(largest.file_id)
    assert file.file_path is not None and file.file_path.endswith(".jpg")
    assert bytes(await file.download_as_bytearray()) == upload
    assert world.sandbox.file_bytes(largest.file_id) == upload
    thumb = await (await world.bot.get_file(sent.photo[0].file_id)).download_as_bytearray()
    assert Image.open(io.BytesIO(bytes(thumb))).size == (90, 68)

    again = await world.bot.send_photo(world.group.id, largest.file_id)
    assert [p.file_id for p in again.photo] == [p.file_id for p in sent.photo]


async def test_photo_refusals(world: World) -> None:
    with refused(BadRequest, "Message caption is too long"):
        await world.bot.send_photo(world.channel.id, image_bytes(), caption="c" * 1025)
    with refused(BadRequest, "IMAGE_PROCESS_FAILED"):
        await world.bot.send_photo(world.channel.id, b"not an image at all")
    with refused(BadRequest, "PHOTO_INVALID_DIMENSIONS"):
        await world.bot.send_photo(world.channel.id, image_bytes(2100, 100))
    with refused(BadRequest, "Failed to get HTTP URL content"):
        await world.bot.send_photo(world.channel.id, "https://example.com/cat.jpg")
    with refused(BadRequest, "Wrong file identifier/HTTP URL specified"):
        await world.bot.send_photo(world.channel.id, "AgACnosuchfile")
    assert world.sandbox.messages_in(world.channel.id) == []


async def test_upload_size_limits() -> None:
    limits = SandboxLimits(max_photo_bytes=3000, max_document_bytes=4000, max_download_bytes=2000)
    async for world in make_world(TelegramSandbox(limits=limits)):
        big_photo = image_bytes(300, 300, "BMP")
        assert len(big_photo) > 3000
        with refused(BadRequest, f"File of size {len(big_photo)} bytes is too big"):
            await world.bot.send_photo(world.channel.id, big_photo)
        with refused(NetworkError, "Request Entity Too Large"):
            await world.bot.send_document(world.channel.id, b"x" * 4001, filename="big.bin")
        doc = await world.bot.send_document(world.channel.id, b"y" * 2500, filename="notes.txt")
        assert doc.document is not None
        assert (doc.document.file_name, doc.document.mime_type) == ("notes.txt", "text/plain")
        with refused(BadRequest, "File is too big"):
            await world.bot.get_file(doc.document.file_id)


async def test_document_and_video(world: World) -> None:
    doc = await world.bot.send_document(
        world.channel.id, b"%PDF-1.4 hello", filename="report.pdf", caption="report"
    )
    assert doc.document is not None and doc.caption == "report"
    assert (doc.document.file_name, doc.document.mime_type, doc.document.file_size) == (
        "report.pdf",
        "application/pdf",
        14,
    )
    video = await world.bot.send_video(
        world.channel.id, b"\x00\x00\x00\x18ftypmp42", width=320, height=240, duration=3
    )
    assert video.video is not None
    assert (video.video.width, video.video.height, seconds(video.video.duration)) == (320, 240, 3)
    with refused(BadRequest, "can't use file of type Document as Photo"):
        await world.bot.send_photo(world.channel.id, doc.document.file_id)


async def test_media_group_shares_an_id_and_keeps_each_caption(world: World) -> None:
    items = [
        InputMediaPhoto(
            image_bytes(100, 100),
            caption="one 😀 bold",
            caption_entities=[MessageEntity("bold", 7, 4)],
        ),
        InputMediaPhoto(image_bytes(120, 60), caption="<u>two</u>", parse_mode="HTML"),
        InputMediaPhoto(image_bytes(60, 120)),
    ]
    sent = await world.bot.send_media_group(world.channel.id, items)
    assert len(sent) == 3
    group_ids = {m.media_group_id for m in sent}
    assert len(group_ids) == 1 and None not in group_ids
    assert [m.caption for m in sent] == ["one 😀 bold", "two", None]
    assert [(e.type, e.offset, e.length) for e in sent[0].caption_entities] == [("bold", 7, 4)]
    assert [(e.type, e.offset) for e in sent[1].caption_entities] == [("underline", 0)]
    stored = world.sandbox.messages_in(world.channel.id)
    assert [m["message_id"] for m in stored] == [m.message_id for m in sent]
    assert [m["photo"][-1]["width"] for m in stored] == [100, 120, 60]

    with refused(BadRequest, "Too many messages to send as an album"):
        await world.bot.send_media_group(
            world.channel.id, [InputMediaPhoto(image_bytes(10, 10)) for _ in range(11)]
        )
    with refused(BadRequest, "Document can't be mixed with other media types"):
        await world.bot.send_media_group(
            world.channel.id,
            [InputMediaPhoto(image_bytes(10, 10)), InputMediaDocument(b"doc", filename="a.txt")],
        )
    assert len(world.sandbox.messages_in(world.channel.id)) == 3

    # A one-item "album" is sent as a plain message outside any album, as Telegram does.
    single = await world.bot.send_media_group(world.group.id, [InputMediaPhoto(image_bytes(9, 9))])
    assert len(single) == 1 and single[0].media_group_id is None


# ---------------------------------------------------------------------------- edit and delete


async def test_edit_text_and_caption(world: World) -> None:
    sent = await world.bot.send_message(world.channel.id, "draft")
    edited = await world.bot.edit_message_text(
        "final <b>copy</b>", chat_id=world.channel.id, message_id=sent.message_id, parse_mode="HTML"
    )
    assert isinstance(edited, telegram.Message)
    assert (edited.text, edited.edit_date is not None) == ("final copy", True)
    assert world.sandbox.messages_in(world.channel.id)[0]["text"] == "final copy"
    assert world.sandbox.messages_in(world.channel.id)[0]["entities"][0]["type"] == "bold"

    with refused(BadRequest, "Message is not modified"):
        await world.bot.edit_message_text(
            "final <b>copy</b>",
            chat_id=world.channel.id,
            message_id=sent.message_id,
            parse_mode="HTML",
        )
    with refused(BadRequest, "Message to edit not found"):
        await world.bot.edit_message_text("x", chat_id=world.channel.id, message_id=999)

    photo = await world.bot.send_photo(world.channel.id, image_bytes(50, 50), caption="old")
    recaptioned = await world.bot.edit_message_caption(
        chat_id=world.channel.id, message_id=photo.message_id, caption="new"
    )
    assert isinstance(recaptioned, telegram.Message) and recaptioned.caption == "new"
    with refused(BadRequest, "There is no text in the message to edit"):
        await world.bot.edit_message_text(
            "x", chat_id=world.channel.id, message_id=photo.message_id
        )
    with refused(BadRequest, "There is no caption in the message to edit"):
        await world.bot.edit_message_caption(
            chat_id=world.channel.id, message_id=sent.message_id, caption="x"
        )


async def test_bots_cannot_edit_other_peoples_group_messages(world: World) -> None:
    human = world.sandbox.post_as_user(world.group.id, world.alice.id, "mine")
    with refused(BadRequest, "Message can't be edited"):
        await world.bot.edit_message_text(
            "yours", chat_id=world.group.id, message_id=human["message_id"]
        )
    with refused(BadRequest, "Message can't be deleted"):
        await world.bot.delete_message(world.group.id, human["message_id"])


async def test_delete_removes_the_message(world: World) -> None:
    keep = await world.bot.send_message(world.channel.id, "keep")
    gone = await world.bot.send_message(world.channel.id, "gone")
    assert await world.bot.delete_message(world.channel.id, gone.message_id) is True
    assert [m["message_id"] for m in world.sandbox.messages_in(world.channel.id)] == [
        keep.message_id
    ]
    with refused(BadRequest, "Message to delete not found"):
        await world.bot.delete_message(world.channel.id, gone.message_id)


# ---------------------------------------------------------------------------- chats


async def test_channel_posts_and_group_messages_have_their_own_shape(world: World) -> None:
    post = await world.bot.send_message("@news_channel", "to the channel")
    raw = world.sandbox.messages_in(world.channel.id)[-1]
    assert raw["chat"]["type"] == "channel"
    assert raw["sender_chat"]["id"] == world.channel.id
    assert "from" not in raw and "author_signature" not in raw
    assert post.link == f"https://t.me/news_channel/{post.message_id}"
    assert world.sandbox.message_link("@news_channel", post.message_id) == post.link

    chat_message = await world.bot.send_message(world.group.id, "to the group")
    assert chat_message.from_user is not None and chat_message.from_user.id == world.account.id
    assert chat_message.sender_chat is None and chat_message.chat.type == "supergroup"


async def test_chats_the_bot_is_not_in_are_refused(world: World) -> None:
    outsider = world.sandbox.create_user("Olga")
    world.sandbox.create_channel("elsewhere", "Elsewhere", admins=[outsider.id])
    private = world.sandbox.create_group("Secret", members=[outsider.id])
    with refused(Forbidden, "bot is not a member of the channel chat"):
        await world.bot.send_message("@elsewhere", "hi")
    with refused(BadRequest, "Chat not found"):
        await world.bot.send_message(private.id, "hi")
    with refused(BadRequest, "Chat not found"):
        await world.bot.send_message(-1009999999999, "hi")
    with refused(Forbidden, "bot can't initiate conversation with a user"):
        await world.bot.send_message(outsider.id, "hi")


# ---------------------------------------------------------------------------- rate limits


async def test_per_chat_rate_limit_answers_retry_after_until_the_window_passes() -> None:
    clock = FakeClock()
    sandbox = TelegramSandbox(per_chat_limit=3, per_chat_window=60, clock=clock)
    async for world in make_world(sandbox):
        for n in range(3):
            await world.bot.send_message(world.channel.id, f"post {n}")
        with pytest.raises(RetryAfter) as caught:
            await world.bot.send_message(world.channel.id, "one too many")
        assert retry_after_of(caught.value) == 60
        assert world.sandbox.requests_log[-1] == ("sendMessage", False, 429)
        await world.bot.send_message(world.group.id, "another chat is fine")
        clock.now += 60
        await world.bot.send_message(world.channel.id, "after the window")
        assert len(world.sandbox.messages_in(world.channel.id)) == 4


async def test_global_rate_limit_counts_album_items() -> None:
    clock = FakeClock()
    async for world in make_world(TelegramSandbox(global_limit=4, global_window=1, clock=clock)):
        await world.bot.send_message(world.channel.id, "one")
        with pytest.raises(RetryAfter) as caught:
            await world.bot.send_media_group(
                world.group.id, [InputMediaPhoto(image_bytes(20, 20)) for _ in range(4)]
            )
        assert retry_after_of(caught.value) == 1
        assert world.sandbox.messages_in(world.group.id) == []
        clock.now += 1
        sent = await world.bot.send_media_group(
            world.group.id, [InputMediaPhoto(image_bytes(20, 20)) for _ in range(4)]
        )
        assert len(sent) == 4


# ---------------------------------------------------------------------------- updates


async def test_long_polling_returns_as_soon_as_a_channel_post_arrives(world: World) -> None:
    reader = client_for(world.sandbox, world.reader)
    async with reader:
        assert await reader.get_updates(timeout=0) == ()
        started = time.monotonic()
        poll = asyncio.create_task(reader.get_updates(timeout=5))
        await asyncio.sleep(0.2)
        assert not poll.done()
        post = world.sandbox.post_as_user(world.channel.id, world.alice.id, "breaking news")
        updates = await asyncio.wait_for(poll, 3)
        assert time.monotonic() - started < 2
    assert len(updates) == 1
    channel_post = updates[0].channel_post
    assert channel_post is not None
    assert (channel_post.message_id, channel_post.text) == (post["message_id"], "breaking news")
    assert channel_post.sender_chat is not None and channel_post.from_user is None


async def test_empty_long_poll_waits_for_its_timeout(world: World) -> None:
    reader = client_for(world.sandbox, world.reader)
    async with reader:
        started = time.monotonic()
        assert await reader.get_updates(timeout=1) == ()
        assert time.monotonic() - started >= 0.9


async def test_offsets_confirm_updates_and_group_messages_arrive_as_message(world: World) -> None:
    world.sandbox.post_as_user(world.channel.id, world.alice.id, "post")
    world.sandbox.post_as_user(world.group.id, world.alice.id, "hello group")
    world.sandbox.edit_as_user(world.group.id, 1, "hello group, edited")
    reader = client_for(world.sandbox, world.reader)
    async with reader:
        updates = await reader.get_updates(timeout=0)
        kinds = [next(k for k in u.to_dict() if k != "update_id") for u in updates]
        assert kinds == ["channel_post", "message", "edited_message"]
        ids = [u.update_id for u in updates]
        assert ids == list(range(ids[0], ids[0] + 3))
        group_message = updates[1].message
        assert group_message is not None and group_message.from_user is not None
        assert group_message.from_user.id == world.alice.id

        again = await reader.get_updates(offset=ids[1], timeout=0)
        assert [u.update_id for u in again] == ids[1:]
        confirmed = await reader.get_updates(offset=ids[-1] + 1, timeout=0)
        assert confirmed == ()
        assert await reader.get_updates(timeout=0) == ()


async def test_bots_get_other_bots_channel_posts_but_not_their_own(world: World) -> None:
    await world.bot.send_message(world.channel.id, "from relay")
    await world.bot.send_message(world.group.id, "bots do not see bots in groups")
    assert world.sandbox.pending_updates(world.account) == []
    pending = world.sandbox.pending_updates(world.reader)
    assert [list(u)[1] for u in pending] == ["channel_post"]
    assert pending[0]["channel_post"]["text"] == "from relay"


async def test_allowed_updates_filters_new_updates(world: World) -> None:
    reader = client_for(world.sandbox, world.reader)
    async with reader:
        assert await reader.get_updates(timeout=0, allowed_updates=["message"]) == ()
        world.sandbox.post_as_user(world.channel.id, world.alice.id, "ignored")
        world.sandbox.post_as_user(world.group.id, world.alice.id, "wanted")
        updates = await reader.get_updates(timeout=0)
    assert [u.message.text for u in updates if u.message] == ["wanted"]
    assert all(u.channel_post is None for u in updates)


async def test_a_second_poller_terminates_the_first_with_conflict(world: World) -> None:
    first = client_for(world.sandbox, world.reader)
    second = client_for(world.sandbox, world.reader)
    async with first, second:
        waiting = asyncio.create_task(first.get_updates(timeout=5))
        await asyncio.sleep(0.2)
        assert await second.get_updates(timeout=0) == ()
        with refused(Conflict, "terminated by other getUpdates request"):
            await asyncio.wait_for(waiting, 3)


async def test_ptb_application_polling_receives_posts_and_edits(world: World) -> None:
    root = world.sandbox.root_url
    app = (
        Application.builder()
        .token(world.reader.token)
        .base_url(f"{root}/bot")
        .base_file_url(f"{root}/file/bot")
        .build()
    )
    await app.initialize()
    assert app.updater is not None
    await app.updater.start_polling(poll_interval=0, timeout=1)
    try:
        post = world.sandbox.post_as_user(world.channel.id, world.alice.id, "first")
        world.sandbox.edit_as_user(world.channel.id, post["message_id"], "first, edited")
        first = await asyncio.wait_for(app.update_queue.get(), 5)
        second = await asyncio.wait_for(app.update_queue.get(), 5)
    finally:
        await app.updater.stop()
        await app.shutdown()
    assert first.channel_post is not None and first.channel_post.text == "first"
    assert second.edited_channel_post is not None
    assert second.edited_channel_post.text == "first, edited"
    assert second.edited_channel_post.edit_date is not None
    called = {entry.method for entry in world.sandbox.requests_log}
    assert {"deleteWebhook", "getUpdates"} <= called


async def test_webhook_info_and_commands(world: World) -> None:
    world.sandbox.post_as_user(world.group.id, world.alice.id, "pending")
    reader = client_for(world.sandbox, world.reader)
    async with reader:
        info = await reader.get_webhook_info()
        assert (info.url, info.pending_update_count) == ("", 1)
        assert await reader.delete_webhook(drop_pending_updates=True) is True
        assert (await reader.get_webhook_info()).pending_update_count == 0
        assert await reader.set_my_commands([("status", "Show relay status")]) is True
        commands = await reader.get_my_commands()
        assert [(c.command, c.description) for c in commands] == [("status", "Show relay status")]
        with refused(BadRequest, "BOT_COMMAND_INVALID"):
            await reader.set_my_commands([("Bad Command", "x")])


# ---------------------------------------------------------------------------- humans and hooks


async def test_post_as_user_in_album_and_reply(world: World) -> None:
    first = world.sandbox.post_as_user(
        world.channel.id,
        world.alice.id,
        photo=image_bytes(40, 40),
        caption="one",
        media_group_id="album-1",
    )
    second = world.sandbox.post_as_user(
        world.channel.id, world.alice.id, photo=image_bytes(40, 40), media_group_id="album-1"
    )
    reply = world.sandbox.post_as_user(world.group.id, None, "anonymous admin", reply_to=None)
    assert first["media_group_id"] == second["media_group_id"] == "album-1"
    assert first["caption"] == "one" and "caption" not in second
    assert reply["from"]["username"] == "GroupAnonymousBot"
    assert reply["sender_chat"]["id"] == world.group.id
    kinds = [list(u)[1] for u in world.sandbox.pending_updates(world.reader)]
    assert kinds == ["channel_post", "channel_post", "message"]
    with refused(ValueError, "not an admin"):
        outsider = world.sandbox.create_user("Outsider")
        world.sandbox.post_as_user(world.channel.id, outsider.id, "hi")


async def test_hooks_see_each_call_and_may_answer_instead(world: World) -> None:
    seen: list[str] = []

    async def refuse_sends(call: ApiCall) -> web.StreamResponse | None:
        seen.append(call.method)
        if call.method == "sendMessage" and call.params.text("text") == "blocked":
            return web.json_response(
                {"ok": False, "error_code": 500, "description": "Internal Server Error"},
                status=500,
            )
        return None

    world.sandbox.hooks.append(refuse_sends)
    with refused(NetworkError, "Internal Server Error"):
        await world.bot.send_message(world.channel.id, "blocked")
    await world.bot.send_message(world.channel.id, "allowed")
    assert seen == ["sendMessage", "sendMessage"]
    assert world.sandbox.requests_log[-2:] == [
        ("sendMessage", False, 500),
        ("sendMessage", True, None),
    ]
    assert [m["text"] for m in world.sandbox.messages_in(world.channel.id)] == ["allowed"]


async def test_json_and_query_string_requests_are_understood(world: World) -> None:
    root = f"{world.sandbox.root_url}/bot{world.account.token}"
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{root}/sendMessage",
            json={
                "chat_id": "@news_channel",
                "text": "json body",
                "entities": [{"type": "italic", "offset": 0, "length": 4}],
            },
        ) as response:
            body: dict[str, Any] = await response.json()
        assert body["ok"] is True and body["result"]["entities"][0]["type"] == "italic"
        async with http.get(f"{root}/getChat", params={"chat_id": "@news_channel"}) as response:
            assert (await response.json())["result"]["id"] == world.channel.id
        async with http.post(f"{root}/noSuchMethod") as response:
            assert response.status == 404
            assert await response.json() == {
                "ok": False,
                "error_code": 404,
                "description": "Not Found",
            }
        async with http.post(
            f"{root}/sendMessage",
            json={
                "chat_id": world.channel.id,
                "text": "x",
                "entities": [{"type": "bold", "offset": 0, "length": 5}],
            },
        ) as response:
            assert response.status == 400
            assert (await response.json())["description"] == (
                "Bad Request: entity beginning at UTF-16 offset 0 ends after the end of the "
                "text at UTF-16 offset 5"
            )
