"""Bad input from the networks: the daemon skips or carries it safely, and never stops.

End to end, a sandbox (or a stand-in Jetstream) sends malformed events, updates and records, then
a good one; the daemon, a real process, must skip the bad ones in a line of log each, carry what
can be carried with its dangerous parts removed, relay the good one and stay healthy. In process,
the listeners must move their cursor past what they skip, and the adapters must turn answers that
cannot be read (an HTML page on a 200, a body cut short, JSON of another shape) into errors the
worker retries or, where a retry could double a post, dead-letters.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from conftest import Networks
from harness import LoopThread, wait_for

from relaybird.media import MediaFetcher, MediaPolicy
from relaybird.model import Event, Post, TargetRef
from relaybird.networks.base import PermanentError, TemporaryError
from relaybird.networks.bluesky import BlueskyNetwork
from relaybird.networks.bluesky_inbound import Context, FirehoseSource, Frame
from relaybird.networks.mastodon import MastodonNetwork
from relaybird.networks.telegram import TelegramNetwork
from relaybird.networks.telegram_inbound import TelegramListener
from relaybird.sandbox.telegram import ApiCall

HTML_PAGE = b"<!DOCTYPE html><html><head><title>502</title></head><body>nginx</body></html>"
HOSTILE_HTML = '<p>hostile \ud800 text <a href="javascript:alert(1)">click</a></p>'
#: A lone surrogate, as JSON's `\ud800` escape delivers it.
HOSTILE_TEXT = "hostile \ud800 text click"


# --------------------------------------------------------------------------------------------------
# helpers


@dataclass
class Stranger:
    """A host that no source names as its own: media pointing there must never be fetched."""

    url: str
    hits: list[str]


@contextlib.contextmanager
def stranger_host(loop: LoopThread) -> Iterator[Stranger]:
    hits: list[str] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        hits.append(request.path)
        return web.Response(body=b"\x89PNG\r\n\x1a\n", content_type="image/png")

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    loop.run(runner.setup())
    loop.run(web.TCPSite(runner, "127.0.0.1", 0).start())
    try:
        yield Stranger(f"http://127.0.0.1:{runner.addresses[0][1]}", hits)
    finally:
        loop.run(runner.cleanup())


def config(networks: Networks, routes: str, bluesky: str = "") -> Path:
    """The three sandbox accounts with `routes`; `bluesky` adds keys to the Bluesky account."""
    path = networks.folder / "relaybird.toml"
    path.write_text(
        f"""[relaybird]
state = "state.sqlite3"
listen = "127.0.0.1:{networks.listen_port}"
log_level = "debug"

[accounts.news_masto]
network = "mastodon"
base_url = "{networks.masto.base_url}"
access_token = "${{MASTODON_TOKEN}}"

[accounts.news_bsky]
network = "bluesky"
base_url = "{networks.bsky.base_url}"
handle = "{networks.bsky_handle}"
app_password = "${{BSKY_APP_PASSWORD}}"
{bluesky}
[accounts.news_tg]
network = "telegram"
base_url = "{networks.tg.root_url}"
bot_token = "${{TELEGRAM_BOT_TOKEN}}"
chat = "{networks.channel}"

{routes}""",
        encoding="utf-8",
    )
    return path


def route(name: str, source: str, *targets: str) -> str:
    quoted = ", ".join(f'"{target}"' for target in targets)
    return f'[[routes]]\nname = "{name}"\nfrom = ["{source}"]\nto = [{quoted}]\n'


def bsky_texts(networks: Networks) -> list[str]:
    return [record.value["text"] for record in networks.bsky_posts()]


def tg_texts(networks: Networks) -> list[str]:
    return [message.get("text", "") for message in networks.tg_messages()]


def assert_clean_log(log: str, *secrets: str) -> None:
    assert "Traceback" not in log
    for secret in secrets:
        assert secret not in log


def skipped_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if "skipped" in line]


# --------------------------------------------------------------------------------------------------
# end to end: Mastodon's stream


def test_malformed_mastodon_stream_events_are_skipped_and_the_next_post_relayed(
    networks: Networks,
) -> None:
    editor = networks.editor()
    account_id = str(editor.account_verify_credentials()["id"])
    loop, masto = networks.loop, networks.masto

    def push(event: str, payload: str) -> None:
        loop.call(masto.hub.publish_user, {account_id}, event, payload)

    def status(**fields: Any) -> str:
        return json.dumps(
            {"id": loop.call(masto.store.ids.next), "account": {"id": account_id}, **fields}
        )

    with stranger_host(loop) as stranger:
        daemon = networks.daemon().start()
        try:
            push("update", "this is not JSON {")
            push("update", json.dumps([1, 2, 3]))
            push("update", json.dumps({"account": {"id": account_id}, "content": "<p>no id</p>"}))
            push("update", status(content="<p>" + "x" * 1_100_000 + "</p>"))
            push("delete", "not an id at all")
            hostile = status(
                content=HOSTILE_HTML,
                media_attachments=[{"type": "image", "url": f"{stranger.url}/pixel.png"}],
            )
            push("update", hostile)
            editor.status_post("after the poison")
            wait_for(
                lambda: len(networks.bsky_posts()) >= 2 and len(networks.tg_messages()) >= 2,
                timeout=30,
                what=f"two copies on each target; log:\n{daemon.log()[-3000:]}",
            )
            assert daemon.healthy()
        finally:
            daemon.stop()
        log = daemon.log()
    assert bsky_texts(networks) == ["hostile \ufffd text click", "after the poison"]
    assert tg_texts(networks) == ["hostile \ufffd text click", "after the poison"]
    record = networks.bsky_posts()[0].value
    assert "javascript" not in json.dumps(record)
    assert stranger.hits == [], "media on a host that is not the source's are never fetched"
    assert len(skipped_lines(log)) >= 4
    assert_clean_log(log, networks.masto_token)


# --------------------------------------------------------------------------------------------------
# end to end: Telegram's updates


def test_malformed_telegram_updates_are_skipped_and_the_next_message_relayed(
    networks: Networks,
) -> None:
    tg, loop = networks.tg, networks.loop
    bot = tg.world.bots_by_token[networks.env["TELEGRAM_BOT_TOKEN"]]
    channel = loop.call(tg.world.lookup_chat, networks.channel)
    assert channel is not None
    chat = {"id": channel.id, "type": "channel", "username": channel.username, "title": "News"}

    def inject(payload: dict[str, Any]) -> None:
        loop.call(tg.world.enqueue, bot.id, "channel_post", payload)

    path = config(networks, route("from_tg", "news_tg", "news_bsky"))
    daemon = networks.daemon(path).start()
    try:
        inject({"message_id": "NaN", "chat": chat, "date": 1, "text": "bad id"})
        inject({"chat": chat, "date": "yesterday", "text": ["not", "text"]})
        inject({"message_id": 1, "chat": "not a chat", "text": "x"})
        inject(
            {
                "message_id": 987_654,
                "chat": chat,
                "date": 1,
                "text": HOSTILE_TEXT,
                "entities": [
                    {"type": "bold", "offset": -5, "length": 10**9},
                    {"type": "text_link", "offset": 18, "length": 5, "url": "javascript:alert(1)"},
                    {"type": "mystery", "offset": 0, "length": 3},
                ],
            }
        )
        loop.call(tg.post_as_user, channel.id, None, "after the poison")
        wait_for(
            lambda: len(networks.bsky_posts()) >= 2,
            timeout=30,
            what=f"two copies on Bluesky; log:\n{daemon.log()[-3000:]}",
        )
        assert daemon.healthy()
    finally:
        daemon.stop()
    assert bsky_texts(networks) == ["hostile \ufffd text click", "after the poison"]
    assert "javascript" not in json.dumps(networks.bsky_posts()[0].value)
    log = daemon.log()
    assert len(skipped_lines(log)) >= 2
    assert_clean_log(log, networks.env["TELEGRAM_BOT_TOKEN"])


# --------------------------------------------------------------------------------------------------
# end to end: Jetstream, played by a stand-in server


@dataclass
class FakeJetstream:
    """`/subscribe` on the sandbox loop; `send` writes raw text to every subscriber."""

    loop: LoopThread
    url: str = ""
    sockets: list[web.WebSocketResponse] = field(default_factory=list)
    runner: web.AppRunner | None = None

    async def _subscribe(self, request: web.Request) -> web.StreamResponse:
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        self.sockets.append(socket)
        async for _ in socket:
            pass
        return socket

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_get("/subscribe", self._subscribe)
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.url = f"ws://127.0.0.1:{self.runner.addresses[0][1]}/subscribe"

    def start(self) -> FakeJetstream:
        self.loop.run(self._start())
        return self

    def send(self, text: str) -> None:
        async def send_all() -> None:
            for socket in self.sockets:
                await socket.send_str(text)

        self.loop.run(send_all())

    def stop(self) -> None:
        async def close() -> None:
            for socket in self.sockets:
                await socket.close()
            if self.runner is not None:
                await self.runner.cleanup()

        self.loop.run(close())


def test_malformed_jetstream_events_are_skipped_and_the_next_post_relayed(
    networks: Networks,
) -> None:
    jetstream = FakeJetstream(networks.loop).start()
    did = networks.bsky_did
    clock = [time.time_ns() // 1000]

    def commit(rkey: str, record: Any, operation: str = "create") -> str:
        clock[0] += 1000
        body = {"collection": "app.bsky.feed.post", "operation": operation, "rkey": rkey}
        event = {"did": did, "time_us": clock[0], "kind": "commit", "commit": body}
        body.update(record=record, cid="bafyreib2rxk3rh6kzwq", rev="3kbad")
        return json.dumps(event)

    def post(text: Any, **extra: Any) -> dict[str, Any]:
        return {
            "$type": "app.bsky.feed.post",
            "text": text,
            "createdAt": "2026-01-01T00:00:00Z",
            **extra,
        }

    bluesky = f'stream = "jetstream"\njetstream_url = "{jetstream.url}"\n'
    path = config(networks, route("from_bsky", "news_bsky", "news_tg"), bluesky)
    daemon = networks.daemon(path).start()
    try:
        wait_for(lambda: jetstream.sockets, what="the daemon to subscribe")
        jetstream.send("not JSON at all")
        jetstream.send(json.dumps([did, 1]))
        jetstream.send(json.dumps({"did": did, "time_us": "soon", "kind": "commit"}))
        jetstream.send(commit("../../etc", post("escaping rkey")))
        jetstream.send(commit("3kbad2222222a", post(12345)))
        jetstream.send(commit("3kbad2222222b", post("x" * 200_000)))
        jetstream.send(commit("3kbad2222222c", "not a record"))
        hostile = post(
            HOSTILE_TEXT,
            facets=[
                {"index": {"byteStart": -3, "byteEnd": 99999}, "features": [{"$type": "x"}]},
                {
                    "index": {"byteStart": 20, "byteEnd": 25},
                    "features": [{"$type": "app.bsky.richtext.facet#link", "uri": "javascript:x"}],
                },
            ],
            embed={"$type": "app.bsky.embed.images", "images": [{"image": "nope"}, 7]},
        )
        jetstream.send(commit("3kbad2222222d", hostile))
        jetstream.send(commit("3kbad2222222e", post("after the poison")))
        wait_for(
            lambda: len(networks.tg_messages()) >= 2,
            timeout=30,
            what=f"two copies on Telegram; log:\n{daemon.log()[-3000:]}",
        )
        assert daemon.healthy()
    finally:
        daemon.stop()
        jetstream.stop()
    messages = networks.tg_messages()
    assert [m["text"] for m in messages] == ["hostile \ufffd text click", "after the poison"]
    assert not any(
        e.get("url", "").startswith("javascript") for e in messages[0].get("entities", [])
    )
    log = daemon.log()
    assert len(skipped_lines(log)) >= 6
    assert_clean_log(log, networks.env["BSKY_APP_PASSWORD"])


# --------------------------------------------------------------------------------------------------
# in process: listeners move their cursor past what they skip


@dataclass
class RecordingSink:
    events: list[Event] = field(default_factory=list)
    cursors: list[str] = field(default_factory=list)
    health: list[bool] = field(default_factory=list)

    async def accept(self, event: Event) -> None:
        self.events.append(event)
        if event.cursor is not None:
            self.cursors.append(event.cursor)

    def save_cursor(self, account: str, cursor: str) -> None:
        self.cursors.append(cursor)

    def set_connected(self, account: str, connected: bool, detail: str = "") -> None:
        self.health.append(connected)


async def until(predicate: Callable[[], object], what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def running(coroutine: Awaitable[None]) -> AsyncIterator[None]:
    task = asyncio.ensure_future(coroutine)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert task.cancelled() or task.exception() is None


async def test_mastodon_listener_saves_the_cursor_past_an_unreadable_status(
    networks: Networks,
) -> None:
    network = MastodonNetwork(networks.accounts()["news_masto"])
    await network.open()
    account_id = str(network.me["id"])
    loop, masto = networks.loop, networks.masto
    sink = RecordingSink()
    try:
        async with running(network.listen(None, sink)):
            await until(lambda: sink.health and sink.health[-1], "the stream")
            poison = loop.call(masto.store.ids.next)
            huge = {"id": poison, "account": {"id": account_id}, "content": "x" * 1_100_000}
            loop.call(masto.hub.publish_user, {account_id}, "update", json.dumps(huge))
            await until(lambda: poison in sink.cursors, "the cursor to pass the poison")
            good = await asyncio.to_thread(networks.editor().status_post, "fine")
            await until(lambda: sink.events, "the good status")
            assert sink.health == [True], "the stream never dropped"
    finally:
        await network.close()
    assert [event.post.text for event in sink.events] == ["fine"]
    assert sink.events[0].cursor == str(good["id"])


async def test_telegram_listener_confirms_unreadable_updates_and_goes_on(
    networks: Networks,
) -> None:
    tg, loop = networks.tg, networks.loop
    bot_account = tg.world.bots_by_token[networks.env["TELEGRAM_BOT_TOKEN"]]
    network = TelegramNetwork(networks.accounts()["news_tg"])
    await network.open()
    listener = TelegramListener(
        "news_tg",
        network.api,
        network.chat_id,
        network.chat_username,
        poll_timeout=1,
        retry_base=0.05,
        retry_max=0.2,
    )
    chat = {"id": network.chat_id, "type": "channel"}
    sink = RecordingSink()
    try:
        async with running(listener.run(None, sink)):
            await until(lambda: sink.cursors, "the first cursor")
            queue = tg.world.updates[bot_account.id]
            poison_id = queue.next_update_id
            for payload in (
                {"chat": chat, "date": "x"},
                {"message_id": 3, "chat": chat, "photo": 5},
            ):
                loop.call(tg.world.enqueue, bot_account.id, "channel_post", payload)
            loop.call(tg.post_as_user, network.chat_id, None, "fine")
            await until(lambda: sink.events, "the good message")
    finally:
        await network.close()
    assert [event.post.text for event in sink.events] == ["fine"]
    assert int(sink.events[0].cursor or 0) > poison_id + 1, "the poison was confirmed"
    assert [int(c) for c in sink.cursors] == sorted(int(c) for c in sink.cursors)


async def test_firehose_skips_an_unreadable_commit_of_ours_and_saves_its_seq() -> None:
    did = "did:plc:firehosepoison00000000"
    sink = RecordingSink()
    async with aiohttp.ClientSession() as http:
        media = MediaFetcher(http, MediaPolicy.of("http://127.0.0.1:9"), "bsky")
        context = Context("bsky", did, "me.example", "http://127.0.0.1:9", sink, http, media)
        source = FirehoseSource(context, "4", keepalive=30)
        bodies = [
            {"seq": 5, "repo": did, "ops": "garbage", "blocks": b"nope"},
            {"seq": 6, "repo": did, "rev": 7, "commit": None, "ops": [{"path": 1}]},
        ]
        for body in bodies:
            await source._on_frame(Frame("#commit", body))
    assert sink.events == []
    assert sorted(set(sink.cursors)) == ["5", "6"], "each skipped commit's seq is saved"
    assert sink.cursors == sorted(sink.cursors)
    assert source.seq == 6


# --------------------------------------------------------------------------------------------------
# in process: adapters that get answers they cannot read

Answer = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def html_page(request: web.Request) -> web.StreamResponse:
    return web.Response(body=HTML_PAGE, content_type="text/html")


async def html_error(request: web.Request) -> web.StreamResponse:
    return web.Response(status=502, body=HTML_PAGE, content_type="text/html")


async def cut_json(request: web.Request) -> web.StreamResponse:
    return web.Response(body=b'{"id": "1', content_type="application/json")


async def wrong_shape(request: web.Request) -> web.StreamResponse:
    return web.json_response([{"unexpected": True}])


async def truncated_body(request: web.Request) -> web.StreamResponse:
    """Promises 500 bytes, sends 12 and hangs up: a proxy dying mid-answer."""
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    response.content_length = 500
    await response.prepare(request)
    await response.write(b'{"id": "1", "')
    assert request.transport is not None
    request.transport.close()
    return response


BAD_ANSWERS = {
    "html_page": html_page,
    "html_error": html_error,
    "cut_json": cut_json,
    "wrong_shape": wrong_shape,
    "truncated_body": truncated_body,
}


def assert_short_reason(error: BaseException) -> None:
    message = str(error)
    assert "<html" not in message.lower() and "nginx" not in message and len(message) < 300


def text_post(text: str) -> Post:
    return Post(id="src-1", text=text)


@pytest.mark.parametrize("answer", list(BAD_ANSWERS))
async def test_mastodon_publish_retries_on_an_unreadable_answer(
    networks: Networks, answer: str
) -> None:
    network = MastodonNetwork(networks.accounts()["news_masto"])
    await network.open()

    async def hook(request: web.Request) -> web.StreamResponse | None:
        if request.method == "POST" and request.path == "/api/v1/statuses":
            return await BAD_ANSWERS[answer](request)
        return None

    networks.loop.call(networks.masto.hooks.append, hook)
    try:
        with pytest.raises(TemporaryError) as raised:
            await network.publish(text_post("first try"), None, "key-1", False)
        assert_short_reason(raised.value)
        networks.loop.call(networks.masto.hooks.remove, hook)
        ref = await network.publish(text_post("second try"), None, "key-2", True)
        assert ref.id
    finally:
        await network.close()


async def test_mastodon_adapter_open_retries_on_an_html_instance_answer(networks: Networks) -> None:
    network = MastodonNetwork(networks.accounts()["news_masto"])

    async def hook(request: web.Request) -> web.StreamResponse | None:
        return await html_page(request) if request.path == "/api/v2/instance" else None

    networks.loop.call(networks.masto.hooks.append, hook)
    try:
        with pytest.raises(TemporaryError):
            await network.open()
    finally:
        await network.close()


@pytest.mark.parametrize("answer", ["html_page", "html_error", "cut_json", "wrong_shape"])
async def test_bluesky_publish_retries_on_an_unreadable_answer(
    networks: Networks, answer: str, bsky: BlueskyNetwork
) -> None:
    network = bsky
    await network.open()

    async def interceptor(request: web.Request, nsid: str) -> web.StreamResponse | None:
        if nsid == "com.atproto.repo.createRecord":
            return await BAD_ANSWERS[answer](request)
        return None

    networks.loop.call(networks.bsky.interceptors.append, interceptor)
    key = network.new_key()
    with pytest.raises(TemporaryError) as raised:
        await network.publish(text_post("first try"), None, key, False)
    assert_short_reason(raised.value)
    networks.loop.call(networks.bsky.interceptors.remove, interceptor)
    ref = await network.publish(text_post("second try"), None, key, True)
    assert ref.id.endswith(f"/{key}")
    assert [record.value["text"] for record in networks.bsky_posts()] == ["second try"]


def telegram_hook(
    method: str, answer: Answer
) -> Callable[[ApiCall], Awaitable[web.StreamResponse | None]]:
    async def hook(call: ApiCall) -> web.StreamResponse | None:
        return await answer(call.request) if call.method == method else None

    return hook


@pytest.mark.parametrize("answer", ["html_page", "cut_json", "wrong_shape"])
async def test_telegram_send_with_an_unreadable_success_is_dead_lettered_not_retried(
    networks: Networks, answer: str
) -> None:
    """No idempotency key on Telegram: a 200 that cannot be read may hide a sent message."""
    network = TelegramNetwork(networks.accounts()["news_tg"])
    await network.open()
    hook = telegram_hook("sendMessage", BAD_ANSWERS[answer])
    networks.loop.call(networks.tg.hooks.append, hook)
    try:
        with pytest.raises(PermanentError, match="may have landed") as raised:
            await network.publish(text_post("maybe sent"), None, network.new_key(), False)
        assert_short_reason(raised.value)
    finally:
        networks.loop.call(networks.tg.hooks.remove, hook)
        await network.close()


async def test_telegram_gateway_error_page_is_retried_with_a_short_reason(
    networks: Networks,
) -> None:
    network = TelegramNetwork(networks.accounts()["news_tg"])
    await network.open()
    hook = telegram_hook("sendMessage", html_error)
    networks.loop.call(networks.tg.hooks.append, hook)
    try:
        with pytest.raises(TemporaryError) as raised:
            await network.publish(text_post("not sent"), None, network.new_key(), False)
        assert_short_reason(raised.value)
        networks.loop.call(networks.tg.hooks.remove, hook)
        sent = await network.publish(text_post("sent"), None, network.new_key(), False)
    finally:
        await network.close()
    assert isinstance(sent, TargetRef)
    assert tg_texts(networks) == ["sent"]


@pytest.mark.parametrize("answer", ["html_page", "cut_json", "wrong_shape"])
async def test_telegram_edit_with_an_unreadable_answer_is_retried(
    networks: Networks, answer: str
) -> None:
    network = TelegramNetwork(networks.accounts()["news_tg"])
    await network.open()
    try:
        ref = await network.publish(text_post("before"), None, network.new_key(), False)
        hook = telegram_hook("editMessageText", BAD_ANSWERS[answer])
        networks.loop.call(networks.tg.hooks.append, hook)
        with pytest.raises(TemporaryError) as raised:
            await network.edit(ref, text_post("after"))
        assert_short_reason(raised.value)
    finally:
        await network.close()
