"""The Telegram adapter's own Bot API client against the Telegram sandbox: what each kind of failure
means for a send (retried, refused, or in doubt and dead-lettered), for an edit, and at start-up.

Telegram has no idempotency key, so the line between "certainly not sent" (retried) and "may have
landed" (dead-lettered, at most once) is what these tests pin down, with faults staged by the
sandbox on a real connection.
"""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web
from PIL import Image

from relaybird.config import TelegramAccount
from relaybird.model import Media, Post, TargetRef
from relaybird.networks.base import (
    PermanentError,
    RateLimited,
    ReplyTarget,
    TemporaryError,
)
from relaybird.networks.telegram import TelegramNetwork
from relaybird.networks.telegram_api import InDoubt, NotSent, TelegramApi, Unreadable
from relaybird.sandbox.telegram import ApiCall, TelegramSandbox
from relaybird.sandbox.telegram_state import SandboxBot, SandboxChat

SRC = Path(__file__).resolve().parents[1] / "src"


@dataclass
class Tg:
    sandbox: TelegramSandbox
    root: str
    bot: SandboxBot
    channel: SandboxChat
    network: TelegramNetwork

    def texts(self) -> list[str]:
        return [m.get("text") or m.get("caption") or "" for m in self.sandbox.messages_in("@news")]

    def answer(self, method: str, status: int, body: object, *, times: int = 1) -> None:
        """Answer the next `times` calls of `method` with `body` (JSON, or bytes as HTML)."""
        left = [times]

        async def hook(call: ApiCall) -> web.StreamResponse | None:
            if call.method != method or left[0] == 0:
                return None
            left[0] -= 1
            if isinstance(body, bytes):
                return web.Response(status=status, body=body, content_type="text/html")
            return web.json_response(body, status=status)

        self.sandbox.hooks.append(hook)


def account(root: str, token: str, chat: str = "@news") -> TelegramAccount:
    return TelegramAccount(
        name="news_tg", network="telegram", base_url=root, bot_token=token, chat=chat
    )


@pytest.fixture
async def tg() -> AsyncIterator[Tg]:
    sandbox = TelegramSandbox()
    root = await sandbox.start()
    bot = sandbox.create_bot("relay_bot", "Relay")
    channel = sandbox.create_channel("news", "News", admins=[bot.id])
    network = TelegramNetwork(account(root, bot.token))
    try:
        await network.open()
        yield Tg(sandbox, root, bot, channel, network)
    finally:
        await network.close()
        await sandbox.stop()


def text_post(text: str) -> Post:
    return Post(id="src-1", text=text)


def png(color: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (32, 24), color).save(out, "PNG")
    return out.getvalue()


def assert_no_secret(error: BaseException, token: str) -> None:
    message = str(error)
    assert token not in message and "<html" not in message.lower() and len(message) < 400
    assert error.__cause__ is None


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# ------------------------------------------------------------------------------------ imports


def test_the_adapter_imports_no_telegram_sdk_and_no_httpx() -> None:
    code = (
        "import sys, relaybird.networks.telegram, relaybird.networks.telegram_inbound,"
        " relaybird.networks.telegram_api;"
        " bad = [m for m in sys.modules if m.split('.')[0] in {'telegram', 'httpx'}];"
        " print(bad); assert not bad"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == "[]"


# ------------------------------------------------------------------------------------ sends


async def test_open_reads_the_bot_username_and_the_chat(tg: Tg) -> None:
    assert tg.network.username == "relay_bot"
    assert (tg.network.chat_id, tg.network.chat_username) == (tg.channel.id, "news")


async def test_text_photo_and_album_sends_land_with_their_replies(tg: Tg) -> None:
    first = await tg.network.publish(text_post("hello"), None, tg.network.new_key(), False)
    assert first.url == f"https://t.me/news/{first.id.split(':')[1]}"
    reply = ReplyTarget(parent=first, root=first)
    photo = Post(id="src-2", text="one photo", media=[Media(mime="image/png", data=png((1, 2, 3)))])
    album = Post(
        id="src-3",
        text="two photos",
        sensitive=True,
        media=[Media(mime="image/png", data=png((9, 9, 9))) for _ in range(2)],
    )
    await tg.network.publish(photo, reply, tg.network.new_key(), False)
    await tg.network.publish(album, reply, tg.network.new_key(), False)
    messages = tg.sandbox.messages_in("@news")
    assert [m.get("text") or m.get("caption") for m in messages] == [
        "hello",
        "one photo",
        "two photos",
        None,
    ]
    first_id = int(first.id.split(":")[1])
    assert all(m["reply_to_message"]["message_id"] == first_id for m in messages[1:])
    assert [bool(m.get("has_media_spoiler")) for m in messages[1:]] == [False, True, True]
    assert messages[2]["media_group_id"] == messages[3]["media_group_id"]


async def test_flood_control_is_rate_limited_until_the_server_says(tg: Tg) -> None:
    tg.sandbox.faults.fail(429, times=1, match="sendMessage", retry_after=3)
    before = time.time()
    with pytest.raises(RateLimited) as raised:
        await tg.network.publish(text_post("flooded"), None, tg.network.new_key(), False)
    assert before + 3 <= raised.value.retry_at <= time.time() + 3
    assert "flood control" in str(raised.value)
    assert tg.texts() == []


async def test_a_migrated_group_is_refused_with_the_new_chat_id(tg: Tg) -> None:
    body = {
        "ok": False,
        "error_code": 400,
        "description": "Bad Request: group chat was upgraded to a supergroup chat",
        "parameters": {"migrate_to_chat_id": -1001234567890},
    }
    tg.answer("sendMessage", 400, body)
    with pytest.raises(PermanentError, match="supergroup -1001234567890; set `chat`"):
        await tg.network.publish(text_post("moved"), None, tg.network.new_key(), False)


@pytest.mark.parametrize("status", [400, 403])
async def test_a_refusal_is_permanent_and_says_why(tg: Tg, status: int) -> None:
    description = {400: "Bad Request: message text is empty", 403: "Forbidden: bot was kicked"}
    shown = {400: "Message text is empty", 403: "Forbidden: bot was kicked"}
    tg.answer(
        "sendMessage",
        status,
        {"ok": False, "error_code": status, "description": description[status]},
    )
    with pytest.raises(PermanentError) as raised:
        await tg.network.publish(text_post("refused"), None, tg.network.new_key(), False)
    assert str(raised.value).endswith(f"Telegram refused the message: {shown[status]}")
    assert_no_secret(raised.value, tg.bot.token)


@pytest.mark.parametrize(
    "body", [{"ok": False, "error_code": 500, "description": "Internal Server Error"}, b"<html/>"]
)
async def test_a_server_error_status_means_not_sent_and_is_retried(tg: Tg, body: object) -> None:
    tg.answer("sendMessage", 502, body)
    with pytest.raises(TemporaryError) as raised:
        await tg.network.publish(text_post("not yet"), None, tg.network.new_key(), False)
    assert not isinstance(raised.value, PermanentError)
    assert_no_secret(raised.value, tg.bot.token)
    await tg.network.publish(text_post("sent once"), None, tg.network.new_key(), True)
    assert tg.texts() == ["sent once"]


async def test_no_connection_means_not_sent_and_is_retried(tg: Tg) -> None:
    network = TelegramNetwork(account(f"http://127.0.0.1:{closed_port()}", tg.bot.token))
    network.chat_id = tg.channel.id
    try:
        with pytest.raises(TemporaryError) as raised:
            await network.publish(text_post("nowhere"), None, network.new_key(), False)
    finally:
        await network.close()
    assert "network error" in str(raised.value)
    assert_no_secret(raised.value, tg.bot.token)


async def test_a_reset_after_the_send_landed_is_dead_lettered_not_retried(tg: Tg) -> None:
    tg.sandbox.faults.reset(times=1, match="sendMessage", land=True)
    with pytest.raises(PermanentError, match="may have landed") as raised:
        await tg.network.publish(text_post("landed"), None, tg.network.new_key(), False)
    assert_no_secret(raised.value, tg.bot.token)
    assert tg.texts() == ["landed"]


async def test_a_cut_answer_to_a_send_is_dead_lettered_not_retried(tg: Tg) -> None:
    tg.sandbox.faults.malformed(times=1, match="sendMessage", land=True)
    with pytest.raises(PermanentError, match="may have landed") as raised:
        await tg.network.publish(text_post("landed"), None, tg.network.new_key(), False)
    assert_no_secret(raised.value, tg.bot.token)
    assert tg.texts() == ["landed"]


async def test_a_send_timing_out_is_dead_lettered_not_retried(tg: Tg) -> None:
    tg.network.api = TelegramApi(
        tg.bot.token, f"{tg.root}/bot", f"{tg.root}/file/bot", read_timeout=0.3
    )
    tg.sandbox.faults.delay(1.0, times=1, match="sendMessage")
    with pytest.raises(PermanentError, match="timed out") as raised:
        await tg.network.publish(text_post("slow"), None, tg.network.new_key(), False)
    assert_no_secret(raised.value, tg.bot.token)


# ------------------------------------------------------------------------------------ the client


async def test_client_splits_not_sent_from_in_doubt(tg: Tg) -> None:
    api = TelegramApi(tg.bot.token, f"{tg.root}/bot", f"{tg.root}/file/bot", read_timeout=0.3)
    nowhere = TelegramApi(tg.bot.token, f"http://127.0.0.1:{closed_port()}/bot", "")
    params = {"chat_id": tg.channel.id, "text": "x"}
    try:
        with pytest.raises(NotSent):
            await nowhere.call("sendMessage", params)
        tg.sandbox.faults.delay(1.0, times=1, match="sendMessage")
        with pytest.raises(InDoubt) as slow:
            await api.call("sendMessage", params)
        assert slow.value.timed_out
        tg.sandbox.faults.reset(times=1, match="sendMessage")
        with pytest.raises(InDoubt) as reset:
            await api.call("sendMessage", params)
        assert not reset.value.timed_out
        tg.answer("sendMessage", 200, {"ok": True})
        with pytest.raises(Unreadable):
            await api.call("sendMessage", params)
    finally:
        await api.close()
        await nowhere.close()


# ------------------------------------------------------------------------------------ edits, start


async def test_an_edit_cut_off_is_retried_and_a_caption_is_edited(tg: Tg) -> None:
    photo = Post(id="src-2", text="before", media=[Media(mime="image/png", data=png((1, 2, 3)))])
    ref = await tg.network.publish(photo, None, tg.network.new_key(), False)
    tg.sandbox.faults.reset(times=1, match="editMessage")
    with pytest.raises(TemporaryError) as raised:
        await tg.network.edit(ref, text_post("after"))
    assert not isinstance(raised.value, PermanentError)
    assert await tg.network.edit(ref, text_post("after")) == ref
    assert tg.texts() == ["after"]


async def test_a_refused_token_stops_the_start(tg: Tg) -> None:
    network = TelegramNetwork(account(tg.root, "123:not-a-token"))
    try:
        with pytest.raises(PermanentError, match="refused the bot token") as raised:
            await network.open()
    finally:
        await network.close()
    assert_no_secret(raised.value, "123:not-a-token")


async def test_an_unknown_chat_stops_the_start_with_the_reason(tg: Tg) -> None:
    network = TelegramNetwork(account(tg.root, tg.bot.token, chat="@nowhere"))
    try:
        with pytest.raises(PermanentError, match="cannot use chat @nowhere: Chat not found"):
            await network.open()
    finally:
        await network.close()


async def test_deleting_what_is_gone_is_not_an_error(tg: Tg) -> None:
    ref = await tg.network.publish(text_post("short-lived"), None, tg.network.new_key(), False)
    await tg.network.delete(ref)
    await tg.network.delete(ref)
    await tg.network.delete(TargetRef(id=f"{tg.channel.id}:99999"))
    assert tg.texts() == []
