"""Switchable faults in the three sandboxes, seen through the real client libraries.

Each fault is switched on at run time and observed the way relaybird will meet it: Mastodon.py,
python-telegram-bot and the atproto SDK raise their own errors; streams are read with raw SSE and
WebSocket clients. The sandboxes run on the test's loop, so the synchronous Mastodon.py goes
through `asyncio.to_thread`, and switching faults from that thread exercises the thread-safe path.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dtm
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
import telegram
import websockets
from atproto import AsyncClient
from atproto_client.exceptions import (
    InvokeTimeoutError,
    NetworkError,
    RateLimitExceededError,
    RequestException,
)
from atproto_client.request import AsyncRequest
from mastodon import (
    Mastodon,
    MastodonAPIError,
    MastodonBadGatewayError,
    MastodonInternalServerError,
    MastodonNetworkError,
    MastodonRatelimitError,
    MastodonServerError,
    MastodonServiceUnavailableError,
)
from telegram.error import NetworkError as TelegramNetworkError
from telegram.error import RetryAfter, TelegramError, TimedOut

from relaybird.sandbox.bluesky import BlueskySandbox, LoggedRequest, SandboxAccount
from relaybird.sandbox.faults import NO_ANSWER, Faults, Target
from relaybird.sandbox.jetstream import JetstreamServer
from relaybird.sandbox.mastodon import MastodonSandbox
from relaybird.sandbox.mastodon import SandboxAccount as MastodonAccount
from relaybird.sandbox.telegram import LoggedRequest as TgLogged
from relaybird.sandbox.telegram import TelegramSandbox
from relaybird.sandbox.telegram_state import SandboxBot, SandboxChat

pytestmark = [
    pytest.mark.filterwarnings("ignore::telegram.warnings.PTBDeprecationWarning"),
]

call = asyncio.to_thread
POST = "app.bsky.feed.post"


async def wait_until(predicate: Callable[[], object], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


# --- Mastodon -----------------------------------------------------------------------------------


@pytest.fixture
async def masto() -> AsyncIterator[MastodonSandbox]:
    sandbox = MastodonSandbox(heartbeat_seconds=0.1)
    await sandbox.start()
    try:
        yield sandbox
    finally:
        await sandbox.stop()


@pytest.fixture
def alice(masto: MastodonSandbox) -> MastodonAccount:
    return masto.create_account("alice", "Alice")


def mastodon_client(box: MastodonSandbox, account: MastodonAccount, **options: Any) -> Mastodon:
    settings: dict[str, Any] = {"ratelimit_method": "throw", "request_timeout": 5, **options}
    return Mastodon(
        api_base_url=box.base_url,
        access_token=account.token,
        version_check_mode="none",
        **settings,
    )


def texts(box: MastodonSandbox, username: str) -> list[str]:
    return [box.source_text(s["id"]) for s in box.statuses_of(username)]


async def test_mastodon_429_is_a_ratelimit_error_with_rack_headers_for_n_requests(
    masto: MastodonSandbox, alice: MastodonAccount
) -> None:
    api = mastodon_client(masto, alice)
    masto.faults.fail(429, times=2, match="POST /api/v1/statuses", retry_after=7)

    for _ in range(2):
        with pytest.raises(MastodonRatelimitError):
            await call(api.status_post, "refused")
    await call(api.status_post, "third time lucky")
    headers = {"Authorization": f"Bearer {alice.token}"}
    async with (
        aiohttp.ClientSession() as http,
        http.get(masto.base_url + "/api/v1/accounts/verify_credentials", headers=headers) as ok,
    ):
        assert ok.status == 200

    masto.faults.fail(429, times=1, retry_after=7)
    async with (
        aiohttp.ClientSession() as http,
        http.post(masto.base_url + "/api/v1/statuses", headers=headers, data={"status": "x"}) as r,
    ):
        body = await r.json()
        reset = dtm.datetime.strptime(r.headers["X-RateLimit-Reset"], "%Y-%m-%dT%H:%M:%S.%fZ")
    assert r.status == 429
    assert body == {"error": "Too many requests"}
    assert r.headers["Retry-After"] == "7"
    assert r.headers["X-RateLimit-Remaining"] == "0"
    assert r.headers["X-RateLimit-Limit"] == "300"
    until_reset = reset.replace(tzinfo=dtm.UTC) - dtm.datetime.now(dtm.UTC)
    assert 5 < until_reset.total_seconds() <= 7
    assert texts(masto, "alice") == ["third time lucky"]


async def test_mastodon_py_waiting_on_a_429_sleeps_until_the_announced_reset(
    masto: MastodonSandbox, alice: MastodonAccount
) -> None:
    api = mastodon_client(masto, alice, ratelimit_method="wait")
    masto.faults.fail(429, times=1, match="POST /api/v1/statuses", retry_after=0.3)

    started = time.monotonic()
    await call(api.status_post, "after the wait")

    assert time.monotonic() - started >= 0.25
    assert texts(masto, "alice") == ["after the wait"]
    assert [r.status for r in masto.requests_log if r.path == "/api/v1/statuses"] == [429, 200]


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (500, MastodonInternalServerError),
        (502, MastodonBadGatewayError),
        (503, MastodonServiceUnavailableError),
    ],
)
async def test_mastodon_5xx_are_server_errors_and_nothing_is_created(
    masto: MastodonSandbox, alice: MastodonAccount, status: int, error: type[Exception]
) -> None:
    api = mastodon_client(masto, alice)
    fault = masto.faults.fail(status, match="POST /api/v1/statuses")

    with pytest.raises(error) as caught:
        await call(api.status_post, "lost")

    assert isinstance(caught.value, MastodonServerError)
    assert texts(masto, "alice") == []
    assert fault.fired_count == 1 and fault.active
    fault.cancel()
    await call(api.status_post, "through")
    assert texts(masto, "alice") == ["through"]


async def test_mastodon_fault_for_t_seconds_ends_by_itself(
    masto: MastodonSandbox, alice: MastodonAccount
) -> None:
    api = mastodon_client(masto, alice)
    fault = masto.faults.fail(503, seconds=0.3)

    with pytest.raises(MastodonServerError):
        await call(api.account_verify_credentials)
    await asyncio.sleep(0.35)

    assert (await call(api.account_verify_credentials))["username"] == "alice"
    assert not fault.active


async def test_mastodon_faults_pick_requests_by_path_and_account(
    masto: MastodonSandbox, alice: MastodonAccount
) -> None:
    bob = masto.create_account("bob", "Bob")
    as_alice, as_bob = mastodon_client(masto, alice), mastodon_client(masto, bob)
    masto.faults.fail(500, match=r"^POST /api/v1/statuses$", account="bob")

    await call(as_alice.status_post, "alice is fine")
    assert (await call(as_bob.account_verify_credentials))["username"] == "bob"
    with pytest.raises(MastodonServerError):
        await call(as_bob.status_post, "bob is not")

    assert texts(masto, "alice") == ["alice is fine"]
    assert [(f.kind, f.target) for f in masto.faults.fired] == [("fail", "POST /api/v1/statuses")]


async def test_mastodon_delay_slows_answers_and_times_out_impatient_clients(
    masto: MastodonSandbox, alice: MastodonAccount
) -> None:
    masto.faults.delay(0.3, times=2, match="statuses")

    started = time.monotonic()
    await call(mastodon_client(masto, alice).status_post, "slow")
    assert time.monotonic() - started >= 0.3
    with pytest.raises(MastodonNetworkError):
        await call(mastodon_client(masto, alice, request_timeout=0.1).status_post, "slower")
    started = time.monotonic()
    await call(mastodon_client(masto, alice).status_post, "quick again")

    assert time.monotonic() - started < 0.3
    await wait_until(lambda: len(masto.statuses_of("alice")) == 3)


async def test_mastodon_reset_drops_the_connection_before_or_after_landing(
    masto: MastodonSandbox, alice: MastodonAccount
) -> None:
    api = mastodon_client(masto, alice)
    masto.faults.reset(times=1, match="POST /api/v1/statuses")
    with pytest.raises(MastodonNetworkError):
        await call(api.status_post, "never landed")
    masto.faults.reset(times=1, match="POST /api/v1/statuses", land=True)
    with pytest.raises(MastodonNetworkError):
        await call(api.status_post, "landed unheard")

    assert texts(masto, "alice") == ["landed unheard"]
    posts = [r.status for r in masto.requests_log if r.path == "/api/v1/statuses"]
    assert posts == [NO_ANSWER, NO_ANSWER]


async def test_mastodon_malformed_json_is_an_api_error(
    masto: MastodonSandbox, alice: MastodonAccount
) -> None:
    masto.faults.malformed(times=1)

    with pytest.raises(MastodonAPIError, match="Could not parse response as JSON"):
        await call(mastodon_client(masto, alice).status_post, "garbled")

    assert texts(masto, "alice") == []


async def test_mastodon_land_then_hang_creates_the_status_but_never_answers_until_cleared(
    masto: MastodonSandbox, alice: MastodonAccount
) -> None:
    masto.faults.land_then_hang(match="POST /api/v1/statuses", account="alice")
    impatient = mastodon_client(masto, alice, request_timeout=0.3)

    with pytest.raises(MastodonNetworkError):
        await call(impatient.status_post, "posted, not recorded", idempotency_key="k1")
    assert texts(masto, "alice") == ["posted, not recorded"]
    await call(masto.faults.clear)
    await wait_until(lambda: masto.count_requests("POST", "/api/v1/statuses") == 1)

    again = await call(
        mastodon_client(masto, alice).status_post, "posted, not recorded", idempotency_key="k1"
    )
    assert texts(masto, "alice") == ["posted, not recorded"]
    assert again["id"] == masto.statuses_of("alice")[0]["id"]
    assert [r.status for r in masto.requests_log if r.path == "/api/v1/statuses"] == [200, 200]


async def sse_line(response: aiohttp.ClientResponse, timeout: float = 2.0) -> bytes:
    return await asyncio.wait_for(response.content.readline(), timeout)


@contextlib.asynccontextmanager
async def raw_sse(box: MastodonSandbox, token: str) -> AsyncIterator[asyncio.StreamReader]:
    """An SSE request over a bare socket: every byte the server sent stays readable after a cut,
    which an HTTP client library would discard on seeing the broken chunked body.
    """
    host, port = box.base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        f"GET /api/v1/streaming/user HTTP/1.1\r\nHost: {host}\r\n"
        f"Authorization: Bearer {token}\r\n\r\n".encode()
    )
    try:
        yield reader
    finally:
        writer.close()


async def received_until_eof(reader: asyncio.StreamReader, timeout: float = 2.0) -> bytes:
    received = b""
    while chunk := await asyncio.wait_for(reader.read(65536), timeout):
        received += chunk
    return received


async def test_mastodon_sse_stream_is_cut_after_n_events(
    masto: MastodonSandbox, alice: MastodonAccount
) -> None:
    api = mastodon_client(masto, alice)
    url = f"{masto.base_url}/api/v1/streaming/user?access_token={alice.token}"
    async with raw_sse(masto, alice.token) as stream:
        await wait_until(lambda: masto.faults.stream_count == 1)
        masto.faults.drop_streams(after_events=2)
        for text in ("one", "two", "three"):
            await call(api.status_post, text)
        received = await received_until_eof(stream)

    assert received.startswith(b"HTTP/1.1 200 OK\r\n")
    assert received.count(b"event: update\n") == 2
    assert b"<p>one</p>" in received and b"<p>two</p>" in received
    assert b"<p>three</p>" not in received
    assert not received.endswith(b"0\r\n\r\n"), "a cut stream has no closing chunk"
    assert [(f.kind, f.target) for f in masto.faults.fired] == [("drop_streams", "1 streams")]
    async with aiohttp.ClientSession() as http, http.get(url) as stream:
        assert await sse_line(stream) == b":)\n"
        await call(api.status_post, "four")
        while not (line := await sse_line(stream)).startswith(b"event:"):
            pass
        assert line == b"event: update\n"


async def test_mastodon_websocket_is_dropped_now_from_another_thread(
    masto: MastodonSandbox, alice: MastodonAccount
) -> None:
    url = f"{masto.base_url}/api/v1/streaming?stream=user&access_token={alice.token}"
    async with aiohttp.ClientSession() as http, http.ws_connect(url) as socket:
        await wait_until(lambda: masto.faults.stream_count == 1)
        fault = await call(masto.faults.drop_streams)
        message = await socket.receive(timeout=2)

    assert message.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSE)
    assert socket.close_code == aiohttp.WSCloseCode.ABNORMAL_CLOSURE
    assert fault.fired_count == 1 and not fault.active
    assert masto.hub.connection_count == 0


async def test_mastodon_stalled_sse_sends_no_heartbeat_then_delivers_what_it_held(
    masto: MastodonSandbox, alice: MastodonAccount
) -> None:
    url = f"{masto.base_url}/api/v1/streaming/user?access_token={alice.token}"
    async with aiohttp.ClientSession() as http, http.get(url) as stream:
        assert await sse_line(stream) == b":)\n"
        assert await sse_line(stream) == b":thump\n"
        masto.faults.stall_streams(0.8)
        await call(mastodon_client(masto, alice).status_post, "held back")
        with pytest.raises(TimeoutError):
            await sse_line(stream, timeout=0.4)
        while not (line := await sse_line(stream)).startswith(b"event:"):
            pass

    assert line == b"event: update\n"
    assert not masto.faults.streams_stalled


async def drain(socket: aiohttp.ClientWebSocketResponse) -> None:
    """Take what was already on its way when a stall began."""
    with contextlib.suppress(TimeoutError):
        while True:
            await socket.receive(timeout=0.15)


async def test_mastodon_stalled_websocket_leaves_pings_unanswered(
    masto: MastodonSandbox, alice: MastodonAccount
) -> None:
    url = f"{masto.base_url}/api/v1/streaming?stream=user&access_token={alice.token}"
    async with aiohttp.ClientSession() as http, http.ws_connect(url, autoping=False) as socket:
        assert (await socket.receive(timeout=1)).type is aiohttp.WSMsgType.PING
        masto.faults.stall_streams(0.8)
        await drain(socket)
        await socket.ping()
        with pytest.raises(TimeoutError):
            await socket.receive(timeout=0.4)
        await asyncio.sleep(0.3)
        await socket.ping()
        kinds = {(await socket.receive(timeout=1)).type for _ in range(2)}

    assert aiohttp.WSMsgType.PONG in kinds


async def test_mastodon_refused_streams_answer_503_then_open_again(
    masto: MastodonSandbox, alice: MastodonAccount
) -> None:
    masto.faults.refuse_streams(times=2)
    sse = f"{masto.base_url}/api/v1/streaming/user?access_token={alice.token}"
    ws = f"{masto.base_url}/api/v1/streaming?stream=user&access_token={alice.token}"
    async with aiohttp.ClientSession() as http:
        async with http.get(sse) as refused:
            assert (refused.status, await refused.json()) == (
                503,
                {"error": "Service Unavailable"},
            )
        with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
            await http.ws_connect(ws)
        assert caught.value.status == 503
        async with http.get(sse) as opened:
            assert opened.status == 200
            assert await sse_line(opened) == b":)\n"


# --- Telegram -----------------------------------------------------------------------------------


@dataclass
class Tg:
    sandbox: TelegramSandbox
    account: SandboxBot
    bot: telegram.Bot
    channel: SandboxChat


@pytest.fixture
async def tg() -> AsyncIterator[Tg]:
    sandbox = TelegramSandbox()
    root = await sandbox.start()
    account = sandbox.create_bot("relay_bot", "Relay")
    channel = sandbox.create_channel("news_channel", "News", admins=[account.id])
    bot = telegram.Bot(account.token, base_url=f"{root}/bot", base_file_url=f"{root}/file/bot")
    try:
        async with bot:
            yield Tg(sandbox, account, bot, channel)
    finally:
        await sandbox.stop()


def sent(tg: Tg) -> list[str]:
    return [m["text"] for m in tg.sandbox.messages_in(tg.channel.id)]


async def test_telegram_429_is_retry_after_with_whole_seconds(tg: Tg) -> None:
    tg.sandbox.faults.fail(429, times=1, match="sendMessage", retry_after=2.2)

    with pytest.raises(RetryAfter) as caught:
        await tg.bot.send_message(tg.channel.id, "flooded")
    await tg.bot.send_message(tg.channel.id, "after the flood")

    waited = caught.value.retry_after
    assert (waited.total_seconds() if isinstance(waited, dtm.timedelta) else waited) == 3
    assert sent(tg) == ["after the flood"]
    assert tg.sandbox.requests_log[-2:] == [
        ("sendMessage", False, 429),
        ("sendMessage", True, None),
    ]


async def test_telegram_429_answer_has_the_bot_api_shape(tg: Tg) -> None:
    tg.sandbox.faults.fail(429, seconds=5)
    url = f"{tg.sandbox.root_url}/bot{tg.account.token}/getMe"
    async with aiohttp.ClientSession() as http, http.post(url) as answer:
        body = await answer.json()

    assert answer.status == 429
    assert body == {
        "ok": False,
        "error_code": 429,
        "description": "Too Many Requests: retry after 5",
        "parameters": {"retry_after": 5},
    }


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_telegram_5xx_are_network_errors_for_n_requests(tg: Tg, status: int) -> None:
    tg.sandbox.faults.fail(status, times=2, match="^sendMessage$")

    for _ in range(2):
        with pytest.raises(TelegramNetworkError):
            await tg.bot.send_message(tg.channel.id, "lost")
    await tg.bot.send_message(tg.channel.id, "delivered")

    assert sent(tg) == ["delivered"]


async def test_telegram_faults_aim_at_one_bot(tg: Tg) -> None:
    other = tg.sandbox.create_bot("other_bot")
    root = tg.sandbox.root_url
    tg.sandbox.faults.fail(500, account="other_bot")

    other_bot = telegram.Bot(other.token, base_url=f"{root}/bot")
    with pytest.raises(TelegramNetworkError):
        await other_bot.get_me()
    assert (await tg.bot.get_me()).username == "relay_bot"
    assert tg.sandbox.requests_log[-2:] == [("getMe", False, 500), ("getMe", True, None)]


async def test_telegram_delay_times_out_the_bot_then_clear_restores_it(tg: Tg) -> None:
    tg.sandbox.faults.delay(0.5, match="sendMessage")

    with pytest.raises(TimedOut):
        await tg.bot.send_message(tg.channel.id, "slow", read_timeout=0.1)
    tg.sandbox.faults.clear()
    started = time.monotonic()
    await tg.bot.send_message(tg.channel.id, "fast", read_timeout=0.3)

    assert time.monotonic() - started < 0.3
    await wait_until(lambda: sent(tg) == ["slow", "fast"])


async def test_telegram_reset_is_a_network_error(tg: Tg) -> None:
    tg.sandbox.faults.reset(times=1, match="sendMessage")

    with pytest.raises(TelegramNetworkError) as caught:
        await tg.bot.send_message(tg.channel.id, "reset")

    assert not isinstance(caught.value, TimedOut)
    assert sent(tg) == []
    assert tg.sandbox.requests_log[-1] == ("sendMessage", False, NO_ANSWER)


async def test_telegram_malformed_json_is_an_invalid_server_response(tg: Tg) -> None:
    tg.sandbox.faults.malformed(times=1, land=True)

    with pytest.raises(TelegramError, match="Invalid server response"):
        await tg.bot.send_message(tg.channel.id, "sent, answer garbled")

    assert sent(tg) == ["sent, answer garbled"]


async def test_telegram_land_then_hang_sends_the_message_but_never_answers(tg: Tg) -> None:
    fault = tg.sandbox.faults.land_then_hang(match="sendMessage")

    with pytest.raises(TimedOut):
        await tg.bot.send_message(tg.channel.id, "at most once", read_timeout=0.3)
    assert sent(tg) == ["at most once"]
    await tg.bot.send_message(tg.channel.id, "the next one answers", read_timeout=2)

    assert not fault.active
    fault.cancel()
    await wait_until(
        lambda: tg.sandbox.requests_log.count(TgLogged("sendMessage", True, None)) == 2
    )
    assert sent(tg) == ["at most once", "the next one answers"]


# --- Bluesky ------------------------------------------------------------------------------------


@pytest.fixture
async def bsky() -> AsyncIterator[BlueskySandbox]:
    sandbox = BlueskySandbox()
    await sandbox.start()
    try:
        yield sandbox
    finally:
        await sandbox.stop()


@pytest.fixture
def carol(bsky: BlueskySandbox) -> SandboxAccount:
    return bsky.create_account("carol.test", "pw")


async def logged_in(bsky: BlueskySandbox, account: SandboxAccount, **request: Any) -> AsyncClient:
    client = AsyncClient(base_url=bsky.base_url, request=AsyncRequest(**request))
    await client.login(account.handle, account.password, fetch_bsky_profile=False)
    return client


async def create_post(client: AsyncClient, did: str, text: str) -> Any:
    record = {"$type": POST, "text": text, "createdAt": "2025-01-01T00:00:00.000Z"}
    return await client.com.atproto.repo.create_record(
        {"repo": did, "collection": POST, "record": record}
    )


def posts(bsky: BlueskySandbox, account: SandboxAccount) -> list[str]:
    return [r.value["text"] for r in bsky.records(account.did)]


async def test_bluesky_429_is_rate_limit_exceeded_with_ratelimit_headers(
    bsky: BlueskySandbox, carol: SandboxAccount
) -> None:
    client = await logged_in(bsky, carol)
    bsky.faults.fail(429, times=1, match="createRecord", retry_after=30)

    with pytest.raises(RateLimitExceededError) as caught:
        await create_post(client, carol.did, "limited")
    await create_post(client, carol.did, "allowed")

    response = caught.value.response
    assert response is not None
    assert response.content.error == "RateLimitExceeded"
    assert response.content.message == "Rate Limit Exceeded"
    assert response.headers["ratelimit-remaining"] == "0"
    assert 28 <= int(response.headers["ratelimit-reset"]) - time.time() <= 31
    assert response.headers["ratelimit-policy"] == "3000;w=300"
    assert posts(bsky, carol) == ["allowed"]


@pytest.mark.parametrize(
    ("status", "error", "name"),
    [
        (500, RequestException, "InternalServerError"),
        (502, NetworkError, "UpstreamFailure"),
        (503, RequestException, "NotEnoughResources"),
    ],
)
async def test_bluesky_5xx_carry_xrpc_error_names(
    bsky: BlueskySandbox, carol: SandboxAccount, status: int, error: type[Exception], name: str
) -> None:
    client = await logged_in(bsky, carol)
    bsky.faults.fail(status, match="com.atproto.repo.createRecord", account="carol.test")

    with pytest.raises(error) as caught:
        await create_post(client, carol.did, "refused")

    response = caught.value.response  # type: ignore[attr-defined]
    assert (response.status_code, response.content.error) == (status, name)
    assert posts(bsky, carol) == []
    assert bsky.requests_log[-1] == LoggedRequest("com.atproto.repo.createRecord", status)


async def test_bluesky_faults_aim_at_one_account(
    bsky: BlueskySandbox, carol: SandboxAccount
) -> None:
    dave = bsky.create_account("dave.test", "pw")
    as_carol, as_dave = await logged_in(bsky, carol), await logged_in(bsky, dave)
    bsky.faults.fail(500, account=dave.did)

    await create_post(as_carol, carol.did, "carol posts")
    with pytest.raises(RequestException):
        await create_post(as_dave, dave.did, "dave does not")

    assert (posts(bsky, carol), posts(bsky, dave)) == (["carol posts"], [])


async def test_bluesky_reset_is_a_network_error_and_may_land(
    bsky: BlueskySandbox, carol: SandboxAccount
) -> None:
    client = await logged_in(bsky, carol)
    bsky.faults.reset(times=1, match="createRecord", land=True)

    with pytest.raises(NetworkError):
        await create_post(client, carol.did, "landed, connection reset")

    assert posts(bsky, carol) == ["landed, connection reset"]


async def test_bluesky_delay_past_the_sdk_timeout_is_an_invoke_timeout(
    bsky: BlueskySandbox, carol: SandboxAccount
) -> None:
    client = await logged_in(bsky, carol, timeout=0.2)
    bsky.faults.delay(0.5, times=1, match="createRecord")

    with pytest.raises(InvokeTimeoutError):
        await create_post(client, carol.did, "too slow to hear about")

    await wait_until(lambda: posts(bsky, carol) == ["too slow to hear about"])


async def test_bluesky_malformed_json_fails_the_sdk(
    bsky: BlueskySandbox, carol: SandboxAccount
) -> None:
    client = await logged_in(bsky, carol)
    bsky.faults.malformed(duration=5, match="createRecord")

    with pytest.raises(ValueError):
        await create_post(client, carol.did, "unreadable answer")

    assert posts(bsky, carol) == []


async def test_bluesky_land_then_hang_creates_the_record_and_waits_for_clear(
    bsky: BlueskySandbox, carol: SandboxAccount
) -> None:
    client = await logged_in(bsky, carol)
    bsky.faults.land_then_hang(match="createRecord")

    pending = asyncio.create_task(create_post(client, carol.did, "in the crash window"))
    await wait_until(lambda: posts(bsky, carol) == ["in the crash window"])
    await asyncio.sleep(0.2)
    assert not pending.done()
    bsky.faults.clear()
    answer = await asyncio.wait_for(pending, 2)

    assert answer.uri == bsky.records(carol.did)[0].uri


def firehose_url(bsky: BlueskySandbox, cursor: str = "") -> str:
    query = f"?cursor={cursor}" if cursor else ""
    return bsky.base_url.replace("http", "ws") + "/xrpc/com.atproto.sync.subscribeRepos" + query


async def test_firehose_is_cut_without_a_close_frame_after_n_events(
    bsky: BlueskySandbox, carol: SandboxAccount
) -> None:
    bsky.faults.drop_streams(after_events=3)
    frames = []
    async with websockets.connect(firehose_url(bsky, "0")) as socket:
        with pytest.raises(websockets.ConnectionClosedError) as caught:
            while True:
                frames.append(await asyncio.wait_for(socket.recv(), 2))

    assert len(frames) == 3
    assert caught.value.rcvd is None
    async with websockets.connect(firehose_url(bsky, "3")) as socket:
        assert await asyncio.wait_for(socket.recv(), 2)


async def test_firehose_stall_leaves_pings_unanswered_and_holds_events(
    bsky: BlueskySandbox, carol: SandboxAccount
) -> None:
    async with websockets.connect(firehose_url(bsky)) as socket:
        await wait_until(lambda: bsky.faults.stream_count == 1)
        bsky.faults.stall_streams(0.6)
        bsky.create_account("erin.test", "pw")
        unanswered = await socket.ping()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.shield(unanswered), 0.3)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(socket.recv(), 0.05)
        first = await asyncio.wait_for(socket.recv(), 2)
        await asyncio.wait_for(await socket.ping(), 1)

    assert first


async def test_firehose_refusal_is_an_http_error_on_the_handshake(bsky: BlueskySandbox) -> None:
    bsky.faults.refuse_streams(duration=5)

    with pytest.raises(websockets.InvalidStatus) as caught:
        await websockets.connect(firehose_url(bsky))
    bsky.faults.clear()
    async with websockets.connect(firehose_url(bsky)):
        pass

    assert caught.value.response.status_code == 503
    assert bsky.requests_log[-2:] == [
        LoggedRequest("com.atproto.sync.subscribeRepos", 503),
        LoggedRequest("com.atproto.sync.subscribeRepos", 101),
    ]


# --- Jetstream over the sandbox firehose ---------------------------------------------------------


@pytest.fixture
async def jetstream(bsky: BlueskySandbox) -> AsyncIterator[JetstreamServer]:
    server = JetstreamServer(bsky.base_url, ping_interval=0.1)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def test_jetstream_subscribers_are_refused_dropped_and_stalled(
    bsky: BlueskySandbox, jetstream: JetstreamServer
) -> None:
    jetstream.faults.refuse_streams(times=1)
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
            await http.ws_connect(jetstream.url)
        assert caught.value.status == 503

        async with http.ws_connect(jetstream.url, autoping=False) as socket:
            assert (await socket.receive(timeout=1)).type is aiohttp.WSMsgType.PING
            jetstream.faults.stall_streams(0.8)
            await drain(socket)
            bsky.create_account("frank.test", "pw")
            with pytest.raises(TimeoutError):
                await socket.receive(timeout=0.3)
            kinds = set()
            while aiohttp.WSMsgType.TEXT not in kinds:
                kinds.add((await socket.receive(timeout=2)).type)
            await call(jetstream.faults.drop_streams)
            while (await socket.receive(timeout=2)).type not in (
                aiohttp.WSMsgType.CLOSED,
                aiohttp.WSMsgType.CLOSE,
            ):
                pass

    assert socket.close_code == aiohttp.WSCloseCode.ABNORMAL_CLOSURE
    assert [f.kind for f in jetstream.faults.fired] == [
        "refuse_streams",
        "stall_streams",
        "drop_streams",
    ]


# --- the fault model itself ---------------------------------------------------------------------


def test_a_seed_draws_the_same_faults() -> None:
    def campaign(seed: int) -> list[str]:
        faults, rng = Faults(), random.Random(seed)
        return [faults.random(rng, max_events=3).describe() for _ in range(12)]

    assert campaign(7) == campaign(7)
    assert campaign(7) != campaign(8)


def test_the_oldest_matching_fault_decides_and_counts_run_out() -> None:
    faults = Faults()
    first = faults.fail(500, times=1, match="create")
    second = faults.fail(502, times=1)

    taken = [faults._take(("fail",), Target(key)) for key in ("x.create", "x.get", "x.create")]

    assert taken == [first, second, None]
    assert [(f.fault.status, f.target) for f in faults.fired] == [
        (500, "x.create"),
        (502, "x.get"),
    ]
    assert faults.active == []
