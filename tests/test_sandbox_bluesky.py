"""What the Bluesky sandbox does beyond the contract with the real PDS.

Session expiry and rate-limit windows need a clock a test can move, the inspection helpers
(`records`, `blob`, `requests_log`) and the interceptor hook exist only here, and the data-model code
is checked against `libipld` and against what the reference PDS was seen to accept or refuse.
"""

from __future__ import annotations

import io
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import libipld
import pytest
from aiohttp import web
from atproto import AsyncClient, SessionEvent
from atproto_client.client.session import Session
from atproto_client.exceptions import BadRequestError, RateLimitExceededError, RequestErrorBase
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from relaybird.sandbox import bluesky_lexicon as lexicon
from relaybird.sandbox.bluesky import BlueskySandbox, LoggedRequest
from relaybird.sandbox.bluesky_ipld import (
    TidClock,
    encode_dag_cbor,
    json_to_ipld,
    record_cid,
)
from tests.specs import load_spec

POST = "app.bsky.feed.post"
CREATED_AT = "2024-05-01T12:00:00.000Z"


class FakeClock:
    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def sandbox(clock: FakeClock) -> AsyncIterator[BlueskySandbox]:
    server = BlueskySandbox(clock=clock)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def _client(sandbox: BlueskySandbox, handle: str, password: str) -> AsyncClient:
    client = AsyncClient(base_url=sandbox.base_url)
    await client.login(handle, password, fetch_bsky_profile=False)
    return client


def _post(text: str, **extra: Any) -> dict[str, Any]:
    return {"$type": POST, "text": text, "createdAt": CREATED_AT, **extra}


async def _create(client: AsyncClient, did: str, record: dict[str, Any]) -> Any:
    return await client.com.atproto.repo.create_record(
        {"repo": did, "collection": POST, "record": record}
    )


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (2, 2), (1, 2, 3)).save(buffer, "PNG")
    return buffer.getvalue()


# --- sessions through the SDK -----------------------------------------------------------------


async def test_the_31st_login_within_five_minutes_is_refused_until_the_window_ends(
    sandbox: BlueskySandbox, clock: FakeClock
) -> None:
    account = sandbox.create_account("busy.test", "pw")
    for _ in range(30):
        await _client(sandbox, account.handle, account.password)

    with pytest.raises(RateLimitExceededError) as caught:
        await _client(sandbox, account.handle, account.password)
    clock.advance(301)
    again = await _client(sandbox, account.handle, account.password)

    assert caught.value.limit == 30 and caught.value.remaining == 0
    assert caught.value.policy == "30;w=300"
    assert caught.value.reset_at is not None
    assert 0 < caught.value.reset_at.timestamp() - time.time() <= 300
    assert Session.decode(again.export_session_string()).did == account.did


async def test_the_sdk_refreshes_a_session_that_is_close_to_expiry() -> None:
    # Under 15 minutes of validity left, the SDK refreshes before the call it was asked to make.
    server = BlueskySandbox(access_ttl=600)
    await server.start()
    try:
        account = server.create_account("fresh.test", "pw")
        client = await _client(server, account.handle, account.password)
        events: list[SessionEvent] = []
        client.on_session_change(lambda event, session: events.append(event))
        before = Session.decode(client.export_session_string())

        await _create(client, account.did, _post("after a refresh"))

        after = Session.decode(client.export_session_string())
        assert [entry.nsid for entry in server.requests_log] == [
            "com.atproto.server.createSession",
            "com.atproto.server.refreshSession",
            "com.atproto.repo.createRecord",
        ]
        assert events == [SessionEvent.REFRESH]
        assert after.refresh_jwt != before.refresh_jwt
        assert len(server.records(account.did)) == 1
    finally:
        await server.stop()


async def test_an_expired_refresh_token_means_logging_in_again(clock: FakeClock) -> None:
    server = BlueskySandbox(clock=clock, access_ttl=600, refresh_ttl=3600)
    await server.start()
    try:
        account = server.create_account("stale.test", "pw")
        client = await _client(server, account.handle, account.password)
        clock.advance(3601)

        with pytest.raises(BadRequestError) as caught:
            await _create(client, account.did, _post("too late"))
        await client.login(account.handle, account.password, fetch_bsky_profile=False)
        await _create(client, account.did, _post("logged in again"))

        assert caught.value.response is not None
        assert caught.value.response.content.error == "ExpiredToken"
        assert [r.value["text"] for r in server.records(account.did)] == ["logged in again"]
    finally:
        await server.stop()


async def test_an_expired_access_token_is_refused_with_400_expired_token(
    sandbox: BlueskySandbox, clock: FakeClock
) -> None:
    account = sandbox.create_account("late.test", "pw")
    client = await _client(sandbox, account.handle, account.password)
    clock.advance(2 * 3600 + 1)

    with pytest.raises(BadRequestError) as caught:
        await _create(client, account.did, _post("expired"))

    assert caught.value.response is not None
    assert caught.value.response.status_code == 400
    assert caught.value.response.content.error == "ExpiredToken"


async def test_a_reused_refresh_token_counts_as_revoked_after_the_grace_period(
    sandbox: BlueskySandbox, clock: FakeClock
) -> None:
    account = sandbox.create_account("rotate.test", "pw")
    async with httpx.AsyncClient(base_url=f"{sandbox.base_url}/xrpc") as http:
        login = await http.post(
            "com.atproto.server.createSession",
            json={"identifier": account.handle, "password": account.password},
        )
        old = {"Authorization": f"Bearer {login.json()['refreshJwt']}"}
        first = await http.post("com.atproto.server.refreshSession", headers=old)
        clock.advance(2 * 3600 + 1)
        late = await http.post("com.atproto.server.refreshSession", headers=old)
        successor = {"Authorization": f"Bearer {first.json()['refreshJwt']}"}
        next_one = await http.post("com.atproto.server.refreshSession", headers=successor)

    assert first.status_code == 200
    assert (late.status_code, late.json()) == (
        400,
        {"error": "ExpiredToken", "message": "Token has been revoked"},
    )
    assert next_one.status_code == 200


async def test_the_sdk_follows_the_did_document_to_the_pds_it_names(
    sandbox: BlueskySandbox,
) -> None:
    account = sandbox.create_account("moved.test", "pw")
    sandbox.pds_endpoint = sandbox.base_url.replace("127.0.0.1", "localhost")
    hosts: list[tuple[str, str]] = []

    async def note_host(request: web.Request, nsid: str) -> None:
        hosts.append((nsid, request.host.split(":")[0]))

    sandbox.interceptors.append(note_host)
    client = await _client(sandbox, account.handle, account.password)
    await _create(client, account.did, _post("sent to the named host"))

    assert Session.decode(client.export_session_string()).pds_endpoint == sandbox.pds_endpoint
    assert hosts == [
        ("com.atproto.server.createSession", "127.0.0.1"),
        ("com.atproto.repo.createRecord", "localhost"),
    ]


async def test_a_stored_session_resumes_without_logging_in(sandbox: BlueskySandbox) -> None:
    account = sandbox.create_account("resume.test", "pw")
    first = await _client(sandbox, account.handle, account.password)
    stored = first.export_session_string()
    sandbox.requests_log.clear()

    resumed = AsyncClient(base_url=sandbox.base_url)
    await resumed.login(session_string=stored, fetch_bsky_profile=False)
    await _create(resumed, account.did, _post("no new login"))

    assert [entry.nsid for entry in sandbox.requests_log] == ["com.atproto.repo.createRecord"]


# --- inspection and hooks ---------------------------------------------------------------------


async def test_records_lists_live_records_oldest_first(sandbox: BlueskySandbox) -> None:
    account = sandbox.create_account("inspect.test", "pw")
    client = await _client(sandbox, account.handle, account.password)
    first = await _create(client, account.did, _post("one"))
    second = await _create(client, account.did, _post("two"))
    third = await _create(client, account.did, _post("three"))
    first_rkey = first.uri.rsplit("/", 1)[1]
    await client.com.atproto.repo.put_record(
        {
            "repo": account.did,
            "collection": POST,
            "rkey": first_rkey,
            "record": _post("one, edited"),
        }
    )
    await client.com.atproto.repo.delete_record(
        {"repo": account.did, "collection": POST, "rkey": second.uri.rsplit("/", 1)[1]}
    )

    records = sandbox.records(account.did)

    assert [(r.uri, r.rkey) for r in records] == [
        (first.uri, first_rkey),
        (third.uri, third.uri.rsplit("/", 1)[1]),
    ]
    assert [r.value["text"] for r in records] == ["one, edited", "three"]
    assert records[1].cid == third.cid == record_cid(json_to_ipld(_post("three")))
    assert sandbox.records(account.did, "app.bsky.feed.like") == []
    with pytest.raises(KeyError):
        sandbox.records("did:plc:nobodyhere")


async def test_blob_returns_uploaded_bytes(sandbox: BlueskySandbox) -> None:
    account = sandbox.create_account("blobs.test", "pw")
    client = await _client(sandbox, account.handle, account.password)
    png = _png()

    uploaded = await client.upload_blob(png)

    assert sandbox.blob(account.did, uploaded.blob.ref.link) == png
    with pytest.raises(KeyError):
        sandbox.blob(account.did, record_cid({"not": "a blob"}))


async def test_requests_log_has_every_call_with_its_status(sandbox: BlueskySandbox) -> None:
    account = sandbox.create_account("logged.test", "pw")
    async with httpx.AsyncClient(base_url=f"{sandbox.base_url}/xrpc") as http:
        await http.get("com.atproto.server.describeServer")
        await http.get(
            "com.atproto.repo.getRecord",
            params={"repo": account.did, "collection": POST, "rkey": "3kabcdefghij2"},
        )
        await http.get("app.bsky.feed.getTimeline")
        await http.post(
            "com.atproto.server.createSession",
            json={"identifier": account.handle, "password": "wrong"},
        )

    assert sandbox.requests_log == [
        LoggedRequest("com.atproto.server.describeServer", 200),
        LoggedRequest("com.atproto.repo.getRecord", 400),
        LoggedRequest("app.bsky.feed.getTimeline", 401),
        LoggedRequest("com.atproto.server.createSession", 401),
    ]


async def test_an_interceptor_answers_in_place_of_the_handler(sandbox: BlueskySandbox) -> None:
    account = sandbox.create_account("hooked.test", "pw")
    client = await _client(sandbox, account.handle, account.password)

    async def unavailable(request: web.Request, nsid: str) -> web.StreamResponse | None:
        if nsid != "com.atproto.repo.createRecord":
            return None
        return web.json_response(
            {"error": "NotEnoughResources", "message": "try later"}, status=503
        )

    sandbox.interceptors.append(unavailable)
    with pytest.raises(RequestErrorBase) as caught:
        await _create(client, account.did, _post("refused"))
    sandbox.interceptors.remove(unavailable)
    await _create(client, account.did, _post("accepted"))

    assert caught.value.response is not None and caught.value.response.status_code == 503
    assert sandbox.requests_log[-2:] == [
        LoggedRequest("com.atproto.repo.createRecord", 503),
        LoggedRequest("com.atproto.repo.createRecord", 200),
    ]
    assert [r.value["text"] for r in sandbox.records(account.did)] == ["accepted"]


async def test_json_bodies_over_150_kib_are_refused_with_413(sandbox: BlueskySandbox) -> None:
    account = sandbox.create_account("bulky.test", "pw")
    async with httpx.AsyncClient(base_url=f"{sandbox.base_url}/xrpc") as http:
        login = await http.post(
            "com.atproto.server.createSession",
            json={"identifier": account.handle, "password": account.password},
        )
        answer = await http.post(
            "com.atproto.repo.createRecord",
            headers={"Authorization": f"Bearer {login.json()['accessJwt']}"},
            json={"repo": account.did, "collection": POST, "record": _post("x" * 200_000)},
        )

    assert (answer.status_code, answer.json()["error"]) == (413, "PayloadTooLargeError")


def test_accounts_need_a_valid_unused_handle(sandbox: BlueskySandbox) -> None:
    made = sandbox.create_account("Mixed.Case.test", "pw")

    assert made.handle == "mixed.case.test" and made.did.startswith("did:plc:")
    with pytest.raises(ValueError, match="already taken"):
        sandbox.create_account("mixed.case.test", "other")
    with pytest.raises(ValueError, match="not a valid handle"):
        sandbox.create_account("no spaces allowed", "pw")


# --- limits and the data model ------------------------------------------------------------------


def _lexicon_def(nsid: str, name: str = "main") -> dict[str, Any]:
    document = load_spec(f"atproto-lexicons/lexicons/{nsid.replace('.', '/')}.json")
    definition: dict[str, Any] = document["defs"][name]
    inner: dict[str, Any] = definition.get("record", definition)
    return inner


def test_post_limits_are_those_of_the_lexicons() -> None:
    post = _lexicon_def(POST)["properties"]
    tag = _lexicon_def("app.bsky.richtext.facet", "tag")["properties"]["tag"]
    images = _lexicon_def("app.bsky.embed.images")["properties"]["images"]
    labels = _lexicon_def("com.atproto.label.defs", "selfLabels")["properties"]["values"]

    assert (post["text"]["maxGraphemes"], post["text"]["maxLength"]) == (
        lexicon.POST_MAX_GRAPHEMES,
        lexicon.POST_MAX_BYTES,
    )
    assert post["langs"]["maxLength"] == lexicon.POST_MAX_LANGS
    assert post["tags"]["maxLength"] == lexicon.POST_MAX_TAGS
    assert (tag["maxGraphemes"], tag["maxLength"]) == (
        lexicon.TAG_MAX_GRAPHEMES,
        lexicon.TAG_MAX_BYTES,
    )
    assert images["maxLength"] == lexicon.MAX_IMAGES
    assert labels["maxLength"] == lexicon.SELF_LABELS_MAX


async def test_image_size_limit_follows_the_pinned_pds_and_can_take_the_newer_one() -> None:
    # The lexicons now allow larger images than the PDS pinned in tests/pds enforces; the sandbox
    # answers like that PDS unless told the newer figure.
    newer = _lexicon_def("app.bsky.embed.images", "image")["properties"]["image"]["maxSize"]
    assert lexicon.IMAGE_MAX_SIZE == 1_000_000 <= newer
    server = BlueskySandbox(image_max_size=newer)
    await server.start()
    try:
        account = server.create_account("roomy.test", "pw")
        client = await _client(server, account.handle, account.password)
        data = _png() + b"\0" * 1_500_000
        uploaded = await client.upload_blob(data)
        blob = {
            "$type": "blob",
            "ref": {"$link": uploaded.blob.ref.link},
            "mimeType": "image/png",
            "size": len(data),
        }
        embed = {"$type": "app.bsky.embed.images", "images": [{"image": blob, "alt": "big"}]}

        created = await _create(client, account.did, _post("roomy", embed=embed))

        assert created.validation_status == "valid"
    finally:
        await server.stop()


_json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1),
    st.text(max_size=20),
)
_json_value = st.recursive(
    _json_leaf,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=8).filter(lambda k: not k.startswith("$")), children)
    ),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None)
@given(_json_value)
def test_dag_cbor_encoding_agrees_with_libipld(value: Any) -> None:
    assert encode_dag_cbor(json_to_ipld(value)) == libipld.encode_dag_cbor(value)


def test_record_cids_match_what_the_reference_pds_returned() -> None:
    # Both seen from the reference PDS for these exact records.
    hello = {"$type": POST, "text": "hello", "createdAt": "2024-01-01T00:00:00.000Z"}
    with_image = {
        "$type": POST,
        "text": "hello",
        "createdAt": "2024-01-01T00:00:00.000Z",
        "embed": {
            "$type": "app.bsky.embed.images",
            "images": [
                {
                    "alt": "a small image",
                    "image": {
                        "$type": "blob",
                        "ref": {
                            "$link": "bafkreiccgmm6rmfbxnqowkg5qvdavmsg4ugsimm754v5hclsj4wlphnu6a"
                        },
                        "mimeType": "image/png",
                        "size": 1000,
                    },
                }
            ],
        },
    }

    assert record_cid(json_to_ipld(hello)) == (
        "bafyreichmiecf7tjp652kfc5p3muegjhvadremxg7xw44pw7down4kn5qa"
    )
    assert record_cid(json_to_ipld(with_image)) == (
        "bafyreiai5jlphkktk5qye6sgrey3bl2jyd3y2m4t5exdtjpwljggl6jkry"
    )


def test_tids_are_valid_and_increase_even_when_the_clock_stands_still() -> None:
    tids = TidClock(clock=lambda: 1_700_000_000.0)

    keys = [tids.next() for _ in range(5)]

    assert keys == sorted(keys) and len(set(keys)) == 5
    assert all(lexicon.is_valid_tid(key) for key in keys)


# Each row was sent to the reference PDS as a post's createdAt, a language or a link facet's URI.
@pytest.mark.parametrize(
    ("fmt", "text", "accepted"),
    [
        ("datetime", "2024-01-01T00:00:00+01:00", True),
        ("datetime", "2024-01-01T00:00:00.123456789Z", True),
        ("datetime", "2024-02-30T00:00:00Z", True),
        ("datetime", "0000-01-01T00:00:00Z", True),
        ("datetime", "2024-01-01T00:00:00Z", True),
        ("datetime", "2024-01-01T00:00:00", False),
        ("datetime", "2024-01-01 00:00:00Z", False),
        ("datetime", "2024-01-01T00:00:00-00:00", False),
        ("datetime", "yesterday", False),
        ("language", "en", True),
        ("language", "en-US", True),
        ("language", "pt-BR", True),
        ("language", "zh-Hant", True),
        ("language", "english", True),
        ("language", "x-foo", True),
        ("language", "EN", True),
        ("language", "i-klingon", True),
        ("language", "e", False),
        ("language", "123", False),
        ("language", "not a lang!", False),
        ("uri", "https://example.com", True),
        ("uri", "mailto:x@y", True),
        ("uri", "ftp://x", True),
        ("uri", "foo:bar", True),
        ("uri", "at://did:plc:x", True),
        ("uri", "http://", False),
        ("uri", "https:// x", False),
        ("uri", "/relative", False),
        ("uri", "not a uri", False),
        ("did", "alice", False),
        ("cid", "nope", False),
        ("at-uri", "nope", False),
    ],
)
def test_string_formats_as_the_reference_pds_reads_them(
    fmt: str, text: str, accepted: bool
) -> None:
    assert lexicon.check_format(text, fmt) is accepted


@pytest.mark.parametrize(
    ("text", "graphemes"),
    [
        ("🇫🇷" * 3, 3),
        ("e\u0301" * 4, 4),
        ("\r\n" * 2, 2),
        ("\u1100\u1161\u11a8", 1),
        ("👨‍👩‍👧‍👦", 1),
    ],
)
def test_graphemes_are_counted_as_user_perceived_characters(text: str, graphemes: int) -> None:
    assert lexicon.grapheme_length(text) == graphemes
