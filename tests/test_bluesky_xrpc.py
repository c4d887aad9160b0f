"""The Bluesky adapter's own XRPC client against the sandbox PDS: sessions and error mapping.

The sandbox answers as the reference PDS does (400 `ExpiredToken` for an expired token, rotating
refresh tokens, `RateLimit-*` headers); its clock is moved forward to expire tokens, and its
interceptors stand in for a server that fails. What is checked is what the worker sees: which
error comes out, when a rate-limited account may come back, how many logins a start costs, and
that no token or password ever appears in an error.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web
from PIL import Image
from pydantic import SecretStr

import relaybird
from relaybird.config import BlueskyAccount
from relaybird.model import Media, Post, TargetRef
from relaybird.networks.base import PermanentError, RateLimited, TemporaryError
from relaybird.networks.bluesky import BlueskyNetwork
from relaybird.networks.xrpc import Session, XrpcClient
from relaybird.sandbox.bluesky import BlueskySandbox
from relaybird.store import Store

PASSWORD = "sandbox-app-password-xrpc"
HANDLE = "xrpc.test"
FORBIDDEN = {
    "atproto",
    "atproto_client",
    "atproto_firehose",
    "atproto_identity",
    "atproto_server",
    "httpx",
    "websockets",
}


@dataclass
class Clock:
    """The sandbox's time, moved by hand to expire tokens."""

    offset: float = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@dataclass
class Rig:
    sandbox: BlueskySandbox
    clock: Clock
    store: Store
    networks: list[BlueskyNetwork] = field(default_factory=list)

    def network(self, password: str = PASSWORD) -> BlueskyNetwork:
        account = BlueskyAccount(
            name="news_bsky",
            network="bluesky",
            base_url=self.sandbox.base_url,
            handle=HANDLE,
            app_password=SecretStr(password),
        )
        network = BlueskyNetwork(account, self.store)
        self.networks.append(network)
        return network

    def calls(self, nsid: str) -> list[int]:
        """The statuses of the calls of `nsid` so far."""
        return [r.status for r in self.sandbox.requests_log if r.nsid.endswith(nsid)]

    def answer(self, nsid: str, response: web.StreamResponse, times: int = 1) -> None:
        """Answer the next `times` calls of `nsid` with `response` instead of the handler."""
        left = [times]

        async def interceptor(request: web.Request, called: str) -> web.StreamResponse | None:
            if called != nsid or left[0] <= 0:
                return None
            left[0] -= 1
            return response

        self.sandbox.interceptors.append(interceptor)


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    clock = Clock()
    sandbox = BlueskySandbox(clock=clock, rate_limits=False)
    await sandbox.start()
    sandbox.create_account(HANDLE, PASSWORD)
    made = Rig(sandbox, clock, Store(tmp_path / "state.sqlite3"))
    try:
        yield made
    finally:
        for network in made.networks:
            await network.close()
        await sandbox.stop()


def text_post(text: str) -> Post:
    return Post(id="src-1", text=text)


def assert_no_secret(error: BaseException, rig: Rig) -> None:
    """Neither the password nor any token of the stored session shows in the error."""
    message = f"{error} {error!r} {error.__cause__}"
    assert PASSWORD not in message
    saved = rig.store.session("news_bsky")
    session = Session.parse(saved) if saved else None
    if session is not None:
        assert session.access_jwt not in message
        assert session.refresh_jwt not in message


# --- sessions ----------------------------------------------------------------------------------


async def test_a_first_start_logs_in_once_and_a_restart_resumes_the_stored_session(
    rig: Rig,
) -> None:
    first = rig.network()
    await first.open()
    assert first.did.startswith("did:plc:")
    assert rig.calls("createSession") == [200]
    await first.close()

    again = rig.network()
    await again.open()
    ref = await again.publish(text_post("after a restart"), None, again.new_key(), False)
    assert ref.id.startswith(f"at://{again.did}/app.bsky.feed.post/")
    assert rig.calls("createSession") == [200], "the stored session is reused"
    assert rig.calls("getSession") == [200]


async def test_a_session_stored_by_the_atproto_sdk_is_resumed_without_a_login(rig: Rig) -> None:
    """The SDK's session string (`handle:::did:::access:::refresh:::pds/xrpc`) still works."""
    client = XrpcClient(rig.sandbox.base_url)
    try:
        session = await client.login(HANDLE, PASSWORD)
    finally:
        await client.close()
    fields = [session.handle, session.did, session.access_jwt, session.refresh_jwt]
    rig.store.set_session("news_bsky", ":::".join([*fields, f"{rig.sandbox.base_url}/xrpc"]))

    network = rig.network()
    await network.open()
    await network.publish(text_post("resumed"), None, network.new_key(), False)
    assert rig.calls("createSession") == [200], "only the login that made the stored session"
    assert network.pds_url() == rig.sandbox.base_url


@pytest.mark.parametrize("stored", ["", "garbage", "a:::b:::c", "h:::not-a-did:::a:::r:::u"])
async def test_an_unreadable_stored_session_costs_one_login_and_no_crash(
    rig: Rig, stored: str
) -> None:
    rig.store.set_session("news_bsky", stored)
    network = rig.network()
    await network.open()
    await network.publish(text_post("logged in"), None, network.new_key(), False)
    assert rig.calls("createSession") == [200]
    saved = Session.parse(rig.store.session("news_bsky") or "")
    assert saved is not None and saved.did == network.did


async def test_an_expired_access_token_is_refreshed_once_and_the_new_session_kept(
    rig: Rig,
) -> None:
    network = rig.network()
    await network.open()
    before = Session.parse(rig.store.session("news_bsky") or "")
    assert before is not None
    rig.clock.offset += 3 * 3600  # the 2-hour access token is gone, the refresh token is not

    ref = await network.publish(text_post("after the break"), None, network.new_key(), False)
    assert ref.cid
    assert rig.calls("createRecord") == [400, 200]
    assert rig.calls("refreshSession") == [200]
    after = Session.parse(rig.store.session("news_bsky") or "")
    assert after is not None and after.did == before.did
    assert (after.access_jwt, after.refresh_jwt) != (before.access_jwt, before.refresh_jwt)

    await network.delete(TargetRef(id=ref.id, url=ref.url, cid=ref.cid))
    assert rig.calls("refreshSession") == [200], "the refreshed token serves the next calls"
    assert rig.calls("createSession") == [200]


async def test_a_restart_with_an_expired_access_token_refreshes_instead_of_logging_in(
    rig: Rig,
) -> None:
    await rig.network().open()
    rig.clock.offset += 3 * 3600
    network = rig.network()
    await network.open()
    assert rig.calls("getSession") == [400, 200]
    assert rig.calls("refreshSession") == [200]
    assert rig.calls("createSession") == [200]


async def test_a_refused_refresh_token_falls_back_to_a_login(rig: Rig) -> None:
    network = rig.network()
    await network.open()
    rig.clock.offset += 100 * 86400  # past the refresh token's 90 days too

    await network.publish(text_post("months later"), None, network.new_key(), False)
    assert rig.calls("refreshSession") == [400]
    assert rig.calls("createSession") == [200, 200]


async def test_a_wrong_app_password_is_a_permanent_error_that_does_not_quote_it(
    rig: Rig,
) -> None:
    network = rig.network(password="wrong-password-1234")
    with pytest.raises(PermanentError) as raised:
        await network.open()
    assert "handle or app password" in str(raised.value)
    assert "wrong-password-1234" not in f"{raised.value} {raised.value.__cause__}"


async def test_a_rate_limited_login_is_a_temporary_error(rig: Rig) -> None:
    body = {"error": "RateLimitExceeded", "message": "Rate Limit Exceeded"}
    rig.answer("com.atproto.server.createSession", web.json_response(body, status=429))
    with pytest.raises(TemporaryError) as raised:
        await rig.network().open()
    assert not isinstance(raised.value, RateLimited)
    assert "rate limited" in str(raised.value)


# --- errors of calls ---------------------------------------------------------------------------


async def test_a_429_holds_until_the_windows_reset_time(rig: Rig) -> None:
    network = rig.network()
    await network.open()
    reset = int(time.time()) + 120
    body = {"error": "RateLimitExceeded", "message": "Rate Limit Exceeded"}
    headers = {"RateLimit-Limit": "5000", "RateLimit-Remaining": "0", "RateLimit-Reset": str(reset)}
    rig.answer(
        "com.atproto.repo.createRecord", web.json_response(body, status=429, headers=headers)
    )
    with pytest.raises(RateLimited) as raised:
        await network.publish(text_post("limited"), None, network.new_key(), False)
    assert raised.value.retry_at == reset
    assert_no_secret(raised.value, rig)


async def test_a_429_that_names_no_time_waits_a_minute(rig: Rig) -> None:
    network = rig.network()
    await network.open()
    rig.answer("com.atproto.repo.deleteRecord", web.json_response({}, status=429))
    with pytest.raises(RateLimited) as raised:
        await network.delete(TargetRef(id=f"at://{network.did}/app.bsky.feed.post/3k"))
    assert 55 < raised.value.retry_at - time.time() <= 61


@pytest.mark.parametrize("status", [500, 502, 503, 504])
async def test_a_server_error_is_temporary_and_names_the_servers_error(
    rig: Rig, status: int
) -> None:
    network = rig.network()
    await network.open()
    body = {"error": "UpstreamFailure", "message": "the repo is busy"}
    rig.answer("com.atproto.repo.createRecord", web.json_response(body, status=status))
    with pytest.raises(TemporaryError) as raised:
        await network.publish(text_post("busy"), None, network.new_key(), False)
    assert not isinstance(raised.value, RateLimited)
    assert f"{status} UpstreamFailure" in str(raised.value)
    assert_no_secret(raised.value, rig)


async def test_a_refused_record_is_permanent_with_the_servers_reason(rig: Rig) -> None:
    network = rig.network()
    await network.open()
    body = {"error": "InvalidRecord", "message": "Record/text must not be longer than 3000"}
    rig.answer("com.atproto.repo.createRecord", web.json_response(body, status=400))
    with pytest.raises(PermanentError) as raised:
        await network.publish(text_post("too long"), None, network.new_key(), False)
    assert "refused the post (InvalidRecord: Record/text must not be longer" in str(raised.value)
    assert_no_secret(raised.value, rig)


async def test_a_refused_session_is_permanent_and_says_so(rig: Rig) -> None:
    network = rig.network()
    await network.open()
    body = {"error": "AccountTakedown", "message": "Account has been taken down"}
    rig.answer("com.atproto.repo.createRecord", web.json_response(body, status=401))
    with pytest.raises(PermanentError, match=r"refused our session \(AccountTakedown"):
        await network.publish(text_post("taken down"), None, network.new_key(), False)


async def test_a_refused_delete_is_permanent(rig: Rig) -> None:
    network = rig.network()
    await network.open()
    body = {"error": "InvalidRequest", "message": "Invalid rkey"}
    rig.answer("com.atproto.repo.deleteRecord", web.json_response(body, status=400))
    with pytest.raises(PermanentError, match=r"delete refused \(InvalidRequest: Invalid rkey"):
        await network.delete(TargetRef(id=f"at://{network.did}/app.bsky.feed.post/3k"))


async def test_a_server_that_is_gone_is_a_temporary_error(rig: Rig) -> None:
    network = rig.network()
    await network.open()
    await rig.sandbox.stop()
    with pytest.raises(TemporaryError, match="network error"):
        await network.publish(text_post("nobody home"), None, network.new_key(), False)


async def test_an_image_is_uploaded_as_a_blob_with_its_type(rig: Rig) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (3, 2), (10, 20, 30)).save(buffer, "PNG")
    data = buffer.getvalue()
    network = rig.network()
    await network.open()
    media = Media(mime="image/png", alt="a dot", data=data)
    post = Post(id="src-2", text="with a picture", media=[media])
    await network.publish(post, None, network.new_key(), False)
    (record,) = rig.sandbox.records(network.did)
    (image,) = record.value["embed"]["images"]
    assert image["alt"] == "a dot"
    assert image["aspectRatio"] == {"width": 3, "height": 2}
    assert image["image"]["mimeType"] == "image/png"
    assert rig.sandbox.blob(network.did, image["image"]["ref"]["$link"]) == data


async def test_a_record_read_by_another_account_comes_back_as_json(rig: Rig) -> None:
    network = rig.network()
    await network.open()
    ref = await network.publish(text_post("read me back"), None, network.new_key(), False)
    rkey = ref.id.rsplit("/", 1)[-1]
    found = await network.get_record(network.did, "app.bsky.feed.post", rkey)
    assert (found["uri"], found["cid"]) == (ref.id, ref.cid)
    assert found["value"]["text"] == "read me back"


# --- what the daemon imports -------------------------------------------------------------------


def test_the_bluesky_adapter_imports_no_sdk() -> None:
    """The adapter speaks XRPC itself: importing it must not bring back the atproto SDK (its
    lexicon models cost tens of MB of memory) nor httpx or websockets."""
    modules = [
        "relaybird.networks.bluesky",
        "relaybird.networks.bluesky_inbound",
        "relaybird.networks.bluesky_notifications",
        "relaybird.networks.bluesky_format",
        "relaybird.networks.xrpc",
    ]
    script = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {sorted(FORBIDDEN)!r}))\n"
    )
    source = str(Path(relaybird.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([source, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env=env,
    )
    assert done.stdout.strip() == "[]"
