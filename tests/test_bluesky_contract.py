"""The Bluesky sandbox answers as the reference PDS does.

Every test here runs twice, against `BlueskySandbox` and against the real PDS from `tests/pds`, with
the unmodified atproto SDK for the writes, and asserts the same expectations on both: status codes,
error names, record values and CIDs. A CID is also checked against `libipld`'s own DAG-CBOR encoder,
which is independent of the sandbox's, so "same CID" means "the CID the network would compute".
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import io
import itertools
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import libipld
import pytest
from atproto import AsyncClient, models
from atproto_client.client.session import Session
from atproto_client.exceptions import RequestErrorBase
from atproto_client.models.utils import get_model_as_json
from PIL import Image

from relaybird.sandbox.bluesky import BlueskySandbox
from tests.realpds import RealPds, RealPdsError, real_pds_fixture

real_pds_rate_limited = pytest.fixture(scope="module", name="real_pds_rate_limited")(
    real_pds_fixture(rate_limits=True)
)

POST = "app.bsky.feed.post"
CREATED_AT = "2024-05-01T12:00:00.000Z"
# Someone on another server: a mention of them is the same record wherever it is written.
FOREIGN_DID = "did:plc:ewvi7nxzyoun6zhxrhs64oiz"
# dev-env signs session tokens with this fixed test secret (@atproto/dev-env const JWT_SECRET).
DEV_ENV_JWT_SECRET = b"jwt-secret"


class FakeClock:
    """Wall-clock time that a test can push forward."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


@dataclass(frozen=True)
class Account:
    did: str
    handle: str
    password: str


@dataclass
class Target:
    """One server under contract: where it is, and how to make accounts and stale tokens there."""

    name: str
    url: str
    pds_endpoint: str
    new_account: Callable[[str], Account]
    expired_token: Callable[[Account], Awaitable[str]]
    tokens: Callable[[Account], Awaitable[dict[str, Any]]]


def _sandbox_target(sandbox: BlueskySandbox, clock: FakeClock) -> Target:
    numbers = itertools.count(1)

    def new_account(prefix: str) -> Account:
        made = sandbox.create_account(f"{prefix}-{next(numbers)}.test", "sandbox-pw")
        return Account(made.did, made.handle, made.password)

    async def expired_token(account: Account) -> str:
        session = await _raw_login(sandbox.base_url, account)
        clock.advance(3 * 3600)
        return str(session["accessJwt"])

    async def tokens(account: Account) -> dict[str, Any]:
        return await _raw_login(sandbox.base_url, account)

    return Target("sandbox", sandbox.base_url, sandbox.base_url, new_account, expired_token, tokens)


def _pds_target(pds: RealPds) -> Target:
    def new_account(prefix: str) -> Account:
        return Account(*pds.create_account(prefix))

    async def expired_token(account: Account) -> str:
        async with httpx.AsyncClient() as http:
            server = (await http.get(f"{pds.url}/xrpc/com.atproto.server.describeServer")).json()
        now = int(time.time())
        payload = {
            "scope": "com.atproto.access",
            "aud": server["did"],
            "sub": account.did,
            "iat": now - 8000,
            "exp": now - 800,
        }
        return _hs256({"typ": "at+jwt", "alg": "HS256"}, payload, DEV_ENV_JWT_SECRET)

    async def tokens(account: Account) -> dict[str, Any]:
        # The ones createAccount gave: every login on the PDS takes at least 350 ms.
        return pds.sessions[account.did]

    return Target("pds", pds.url, pds.url, new_account, expired_token, tokens)


@pytest.fixture(params=["sandbox", pytest.param("pds", marks=pytest.mark.pds)])
async def target(request: pytest.FixtureRequest) -> AsyncIterator[Target]:
    if request.param == "pds":
        yield _pds_target(request.getfixturevalue("real_pds"))
        return
    clock = FakeClock()
    sandbox = BlueskySandbox(clock=clock)
    await sandbox.start()
    try:
        yield _sandbox_target(sandbox, clock)
    finally:
        await sandbox.stop()


@pytest.fixture(params=["sandbox", pytest.param("pds", marks=pytest.mark.pds)])
async def limited_target(request: pytest.FixtureRequest) -> AsyncIterator[Target]:
    """A target whose rate limits are on (dev-env turns the PDS's off unless asked)."""
    if request.param == "pds":
        yield _pds_target(request.getfixturevalue("real_pds_rate_limited"))
        return
    clock = FakeClock()
    sandbox = BlueskySandbox(clock=clock, rate_limits=True)
    await sandbox.start()
    try:
        yield _sandbox_target(sandbox, clock)
    finally:
        await sandbox.stop()


# --- helpers ----------------------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _hs256(header: dict[str, str], payload: dict[str, Any], secret: bytes) -> str:
    signing_input = (
        f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(payload).encode())}"
    )
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64url(signature)}"


async def _raw_login(url: str, account: Account) -> dict[str, Any]:
    async with httpx.AsyncClient() as http:
        answer = await http.post(
            f"{url}/xrpc/com.atproto.server.createSession",
            json={"identifier": account.handle, "password": account.password},
        )
    result: dict[str, Any] = answer.json()
    return result


async def _login(target: Target, account: Account) -> AsyncClient:
    """An SDK client on a stored session, the way a daemon resumes without logging in again."""
    tokens = await target.tokens(account)
    session = Session(
        handle=account.handle,
        did=account.did,
        access_jwt=tokens["accessJwt"],
        refresh_jwt=tokens["refreshJwt"],
        pds_endpoint=target.pds_endpoint,
    )
    client = AsyncClient(base_url=target.url)
    await client.login(session_string=session.export(), fetch_bsky_profile=False)
    return client


def _independent_cid(record: dict[str, Any]) -> str:
    """The record's CID by libipld's encoder (not the sandbox's): links written as CID bytes."""

    def to_ipld(value: Any) -> Any:
        if isinstance(value, dict):
            if set(value) == {"$link"}:
                return _cid_bytes(value["$link"])
            return {key: to_ipld(item) for key, item in value.items()}
        if isinstance(value, list):
            return [to_ipld(item) for item in value]
        return value

    encoded = libipld.encode_dag_cbor(to_ipld(record))
    raw = bytes((1, 0x71, 0x12, 0x20)) + hashlib.sha256(encoded).digest()
    return "b" + base64.b32encode(raw).decode().lower().rstrip("=")


def _cid_bytes(cid: str) -> bytes:
    body = cid[1:].upper()
    return base64.b32decode(body + "=" * (-len(body) % 8))


def _error(exc: BaseException) -> tuple[int, str]:
    assert isinstance(exc, RequestErrorBase) and exc.response is not None
    content = exc.response.content
    return exc.response.status_code, getattr(content, "error", repr(content))


async def _create(
    client: AsyncClient, did: str, record: dict[str, Any], rkey: str | None = None
) -> Any:
    data: dict[str, Any] = {"repo": did, "collection": POST, "record": record}
    if rkey is not None:
        data["rkey"] = rkey
    return await client.com.atproto.repo.create_record(data)


async def _create_error(
    client: AsyncClient, did: str, record: dict[str, Any], rkey: str | None = None
) -> tuple[int, str]:
    with pytest.raises(RequestErrorBase) as caught:
        await _create(client, did, record, rkey)
    return _error(caught.value)


async def _raw_get(target: Target, path: str, **params: str) -> httpx.Response:
    async with httpx.AsyncClient() as http:
        return await http.get(f"{target.url}/xrpc/{path}", params=params)


async def _record_value(target: Target, uri: str) -> tuple[int, dict[str, Any]]:
    did, collection, rkey = uri.removeprefix("at://").split("/")
    answer = await _raw_get(
        target, "com.atproto.repo.getRecord", repo=did, collection=collection, rkey=rkey
    )
    body: dict[str, Any] = answer.json()
    return answer.status_code, body


def _post(text: str, **extra: Any) -> dict[str, Any]:
    return {"$type": POST, "text": text, "createdAt": CREATED_AT, **extra}


def _as_sent(record: dict[str, Any]) -> dict[str, Any]:
    """The record as the SDK puts it on the wire: it adds `$type` to every nested object it knows.

    That is what the server stores and hashes, so it is what the values and CIDs are compared with.
    """
    data = models.ComAtprotoRepoCreateRecord.Data(repo=FOREIGN_DID, collection=POST, record=record)
    sent: dict[str, Any] = json.loads(get_model_as_json(data))["record"]
    return sent


def _jpeg(total_size: int | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 6), (200, 30, 60)).save(buffer, "JPEG")
    data = buffer.getvalue()
    if total_size is not None:
        # Bytes after the end-of-image marker keep it a JPEG to any sniffer, at the size we need.
        data += b"\0" * (total_size - len(data))
    return data


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 3), (10, 120, 200)).save(buffer, "PNG")
    return buffer.getvalue()


def _tid(micros: int) -> str:
    alphabet = "234567abcdefghijklmnopqrstuvwxyz"
    number = micros << 10
    return "".join(alphabet[(number >> shift) & 31] for shift in range(60, -1, -5))


_rkeys = itertools.count(int(time.time() * 1_000_000) - 10_000_000_000)


def _fresh_rkey() -> str:
    return _tid(next(_rkeys))


# --- sessions ---------------------------------------------------------------------------------


async def test_login_moves_the_sdk_to_the_pds_named_by_the_did_document(target: Target) -> None:
    account = target.new_account("login")
    client = AsyncClient(base_url=target.url)

    profile = await client.login(account.handle, account.password, fetch_bsky_profile=False)

    assert profile is None
    session = Session.decode(client.export_session_string())
    assert session.did == account.did
    assert session.handle == account.handle
    assert session.pds_endpoint == target.pds_endpoint
    assert session.access_jwt_payload.scope == "com.atproto.access"
    assert session.access_jwt_payload.exp - session.access_jwt_payload.iat == 7200


async def test_login_with_the_default_profile_lookup_fails_without_an_appview(
    target: Target,
) -> None:
    account = target.new_account("profile")
    client = AsyncClient(base_url=target.url)

    with pytest.raises(RequestErrorBase) as caught:
        await client.login(account.handle, account.password)

    assert _error(caught.value) == (502, "UpstreamFailure")


async def test_login_refusals(target: Target) -> None:
    account = target.new_account("refusal")
    async with httpx.AsyncClient(base_url=f"{target.url}/xrpc") as http:

        async def attempt(body: dict[str, str]) -> httpx.Response:
            return await http.post("com.atproto.server.createSession", json=body)

        wrong, by_did, shouting, missing = await asyncio.gather(
            attempt({"identifier": account.handle, "password": "not-it"}),
            attempt({"identifier": account.did, "password": account.password}),
            attempt({"identifier": account.handle.upper(), "password": account.password}),
            attempt({"identifier": account.handle}),
        )

    assert (wrong.status_code, wrong.json()["error"]) == (401, "AuthenticationRequired")
    assert by_did.status_code == 200 and by_did.json()["did"] == account.did
    assert shouting.status_code == 200 and shouting.json()["handle"] == account.handle
    assert (missing.status_code, missing.json()["error"]) == (400, "InvalidRequest")


async def test_bad_and_expired_tokens_are_refused_with_400(target: Target) -> None:
    account = target.new_account("tokens")
    session = await target.tokens(account)
    expired = await target.expired_token(account)
    async with httpx.AsyncClient(base_url=f"{target.url}/xrpc") as http:
        answers = {
            name: await http.get("com.atproto.server.getSession", headers=headers)
            for name, headers in {
                "none": {},
                "garbage": {"Authorization": "Bearer not.a.token"},
                "refresh-as-access": {"Authorization": f"Bearer {session['refreshJwt']}"},
                "expired": {"Authorization": f"Bearer {expired}"},
                "basic": {"Authorization": "Basic YTpi"},
            }.items()
        }

    seen = {name: (a.status_code, a.json()["error"]) for name, a in answers.items()}
    assert seen == {
        "none": (401, "AuthMissing"),
        "garbage": (400, "InvalidToken"),
        "refresh-as-access": (400, "InvalidToken"),
        "expired": (400, "ExpiredToken"),
        "basic": (400, "InvalidToken"),
    }


async def test_refresh_rotates_and_the_old_token_still_works_for_a_while(target: Target) -> None:
    account = target.new_account("refresh")
    session = await target.tokens(account)
    async with httpx.AsyncClient(base_url=f"{target.url}/xrpc") as http:
        old = {"Authorization": f"Bearer {session['refreshJwt']}"}
        first = await http.post("com.atproto.server.refreshSession", headers=old)
        again = await http.post("com.atproto.server.refreshSession", headers=old)
        new = {"Authorization": f"Bearer {first.json()['refreshJwt']}"}
        ended = await http.post("com.atproto.server.deleteSession", headers=new)
        after_end = await http.post("com.atproto.server.refreshSession", headers=new)

    assert first.status_code == 200 and again.status_code == 200
    assert first.json()["refreshJwt"] != session["refreshJwt"]
    assert _jwt_claim(again.json()["refreshJwt"], "jti") == _jwt_claim(
        first.json()["refreshJwt"], "jti"
    )
    assert first.json()["didDoc"]["service"][0]["serviceEndpoint"] == target.pds_endpoint
    assert ended.status_code == 200
    assert (after_end.status_code, after_end.json()["error"]) == (400, "ExpiredToken")


def _jwt_claim(token: str, claim: str) -> Any:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))[claim]


async def test_create_session_is_limited_to_30_per_five_minutes_per_identifier(
    limited_target: Target,
) -> None:
    account = limited_target.new_account("ratelimit")
    async with httpx.AsyncClient(base_url=f"{limited_target.url}/xrpc") as http:

        async def attempt(identifier: str, password: str) -> httpx.Response:
            return await http.post(
                "com.atproto.server.createSession",
                json={"identifier": identifier, "password": password},
            )

        wrong = await attempt(account.handle, "wrong")
        # The PDS makes every login last 350 ms; side by side they still count one by one.
        allowed = await asyncio.gather(
            *(attempt(account.handle, account.password) for _ in range(29))
        )
        refused = await attempt(account.handle, account.password)
        other_spelling = await attempt(account.did, account.password)

    assert wrong.status_code == 401 and wrong.headers["RateLimit-Remaining"] == "29"
    assert [a.status_code for a in allowed] == [200] * 29
    assert sorted(int(a.headers["RateLimit-Remaining"]) for a in allowed) == list(range(29))
    assert (refused.status_code, refused.json()["error"]) == (429, "RateLimitExceeded")
    assert refused.headers["RateLimit-Limit"] == "30"
    assert refused.headers["RateLimit-Remaining"] == "0"
    assert refused.headers["RateLimit-Policy"] == "30;w=300"
    assert 0 < int(refused.headers["RateLimit-Reset"]) - time.time() <= 300
    assert other_spelling.status_code == 200


# --- records ----------------------------------------------------------------------------------


async def test_post_with_link_mention_and_tag_facets(target: Target) -> None:
    account = target.new_account("facets")
    client = await _login(target, account)
    text = "Read https://example.com/a?b=1 with @friend.bsky.social #relaybird ✨"
    encoded = text.encode()

    def span(part: str) -> dict[str, int]:
        start = encoded.index(part.encode())
        return {"byteStart": start, "byteEnd": start + len(part.encode())}

    record = _post(
        text,
        langs=["en", "fr"],
        facets=[
            {
                "index": span("https://example.com/a?b=1"),
                "features": [
                    {"$type": "app.bsky.richtext.facet#link", "uri": "https://example.com/a?b=1"}
                ],
            },
            {
                "index": span("@friend.bsky.social"),
                "features": [{"$type": "app.bsky.richtext.facet#mention", "did": FOREIGN_DID}],
            },
            {
                "index": span("#relaybird"),
                "features": [{"$type": "app.bsky.richtext.facet#tag", "tag": "relaybird"}],
            },
        ],
    )

    created = await _create(client, account.did, record)

    sent = _as_sent(record)
    assert sent["facets"][0]["$type"] == "app.bsky.richtext.facet"
    assert created.cid == _independent_cid(sent)
    assert created.uri.startswith(f"at://{account.did}/{POST}/")
    assert created.validation_status == "valid"
    assert created.commit is not None
    status, stored = await _record_value(target, created.uri)
    assert status == 200
    assert stored == {"uri": created.uri, "cid": created.cid, "value": sent}


async def test_reply_with_root_and_parent_refs(target: Target) -> None:
    account = target.new_account("reply")
    client = await _login(target, account)
    root = await _create(client, account.did, _post("the root"))
    parent = await _create(client, account.did, _post("the parent"))
    record = _post(
        "the reply",
        reply={
            "root": {"uri": root.uri, "cid": root.cid},
            "parent": {"uri": parent.uri, "cid": parent.cid},
        },
    )

    reply = await _create(client, account.did, record)

    assert reply.cid == _independent_cid(_as_sent(record))
    assert (await _record_value(target, reply.uri))[1]["value"] == _as_sent(record)
    broken = _post("x", reply={"root": {"uri": root.uri, "cid": root.cid}})
    assert await _create_error(client, account.did, broken) == (400, "InvalidRequest")
    bad_cid = _post("x", reply={"root": {"uri": root.uri, "cid": "nope"}, "parent": record})
    assert await _create_error(client, account.did, bad_cid) == (400, "InvalidRequest")


async def test_uploaded_image_is_posted_with_alt_text(target: Target) -> None:
    account = target.new_account("images")
    client = await _login(target, account)
    png = _png()

    uploaded = await client.upload_blob(png)
    blob = {
        "$type": "blob",
        "ref": {"$link": uploaded.blob.ref.link},
        "mimeType": uploaded.blob.mime_type,
        "size": uploaded.blob.size,
    }
    record = _post(
        "a picture",
        embed={
            "$type": "app.bsky.embed.images",
            "images": [
                {"image": blob, "alt": "A blue square", "aspectRatio": {"width": 4, "height": 3}}
            ],
        },
    )
    before = await _raw_get(
        target, "com.atproto.sync.getBlob", did=account.did, cid=blob["ref"]["$link"]
    )
    created = await _create(client, account.did, record)
    fetched = await client.com.atproto.sync.get_blob(
        {"did": account.did, "cid": uploaded.blob.ref.link}
    )

    assert (uploaded.blob.mime_type, uploaded.blob.size) == ("image/png", len(png))
    assert uploaded.blob.ref.link == _raw_cid(png)
    assert (before.status_code, before.json()["error"]) == (400, "InvalidRequest")
    assert created.cid == _independent_cid(_as_sent(record))
    assert (await _record_value(target, created.uri))[1]["value"] == _as_sent(record)
    assert fetched == png


def _raw_cid(data: bytes) -> str:
    raw = bytes((1, 0x55, 0x12, 0x20)) + hashlib.sha256(data).digest()
    return "b" + base64.b32encode(raw).decode().lower().rstrip("=")


async def test_image_blob_limits(target: Target) -> None:
    account = target.new_account("bigblob")
    client = await _login(target, account)

    async def images_post(data: bytes, **override: Any) -> tuple[int, str] | str:
        uploaded = await client.upload_blob(data)
        blob = {
            "$type": "blob",
            "ref": {"$link": uploaded.blob.ref.link},
            "mimeType": uploaded.blob.mime_type,
            "size": uploaded.blob.size,
            **override,
        }
        embed = {"$type": "app.bsky.embed.images", "images": [{"image": blob, "alt": ""}]}
        try:
            return str((await _create(client, account.did, _post("big", embed=embed))).cid)
        except RequestErrorBase as error:
            return _error(error)

    assert isinstance(await images_post(_jpeg(1_000_000)), str)
    assert await images_post(_jpeg(1_000_001)) == (400, "InvalidRequest")
    assert await images_post(_jpeg(1_000_002), size=999) == (400, "InvalidSize")
    assert await images_post(_jpeg(2000), mimeType="image/png") == (400, "InvalidMimeType")
    assert await images_post(b"plain text, not an image") == (400, "InvalidRequest")
    with pytest.raises(RequestErrorBase) as caught:
        await client.upload_blob(b"\0" * (5 * 1024 * 1024 + 1))
    assert _error(caught.value) == (413, "PayloadTooLarge")


async def test_post_limits(target: Target) -> None:
    account = target.new_account("limits")
    client = await _login(target, account)

    assert (await _create(client, account.did, _post("é" * 300))).cid
    assert (await _create(client, account.did, _post("🇫🇷" * 300))).cid
    assert await _create_error(client, account.did, _post("x" * 301)) == (400, "InvalidRequest")
    assert await _create_error(client, account.did, _post("e\u0301" * 301)) == (
        400,
        "InvalidRequest",
    )
    assert await _create_error(client, account.did, _post("👨‍👩‍👧‍👦" * 140)) == (
        400,
        "InvalidRequest",
    )
    assert await _create_error(client, account.did, _post("x", langs=["en", "fr", "de", "it"])) == (
        400,
        "InvalidRequest",
    )
    assert await _create_error(client, account.did, _post("x", langs=["e"])) == (
        400,
        "InvalidRequest",
    )
    five = [{"image": {}, "alt": ""}] * 5
    assert await _create_error(
        client, account.did, _post("x", embed={"$type": "app.bsky.embed.images", "images": five})
    ) == (400, "InvalidRequest")
    assert await _create_error(client, account.did, {"$type": POST, "text": "no date"}) == (
        400,
        "InvalidRequest",
    )
    missing_blob = {
        "$type": "blob",
        "ref": {"$link": _raw_cid(b"never uploaded")},
        "mimeType": "image/png",
        "size": 14,
    }
    embed = {"$type": "app.bsky.embed.images", "images": [{"image": missing_blob, "alt": ""}]}
    assert await _create_error(client, account.did, _post("x", embed=embed)) == (
        400,
        "BlobNotFound",
    )


async def test_external_embed_and_open_unions(target: Target) -> None:
    account = target.new_account("external")
    client = await _login(target, account)
    external = {
        "$type": "app.bsky.embed.external",
        "external": {"uri": "https://example.com/", "title": "Example", "description": ""},
    }
    record = _post("a link card", embed=external)

    assert (await _create(client, account.did, record)).cid == _independent_cid(_as_sent(record))
    no_description = {**external, "external": {"uri": "https://example.com/", "title": "t"}}
    assert await _create_error(client, account.did, _post("x", embed=no_description)) == (
        400,
        "InvalidRequest",
    )
    untyped = {"external": external["external"]}
    assert await _create_error(client, account.did, _post("x", embed=untyped)) == (
        400,
        "InvalidRequest",
    )
    unknown = _post("x", embed={"$type": "app.bsky.embed.somethingNew", "anything": 1})
    assert (await _create(client, account.did, unknown)).cid == _independent_cid(unknown)


async def test_chosen_record_key_twice_fails_with_500_and_the_first_stays(
    target: Target,
) -> None:
    account = target.new_account("twice")
    client = await _login(target, account)
    rkey = _fresh_rkey()

    first = await _create(client, account.did, _post("first"), rkey)
    second = await _create_error(client, account.did, _post("second"), rkey)

    assert first.uri == f"at://{account.did}/{POST}/{rkey}"
    assert second == (500, "InternalServerError")
    assert (await _record_value(target, first.uri))[1]["value"]["text"] == "first"
    assert await _create_error(client, account.did, _post("x"), "not-a-tid") == (
        400,
        "InvalidRequest",
    )
    assert await _create_error(client, account.did, _post("x"), "bad key!") == (
        400,
        "InvalidRequest",
    )


async def test_missing_records(target: Target) -> None:
    account = target.new_account("missing")
    uri = f"at://{account.did}/{POST}/{_fresh_rkey()}"

    status, body = await _record_value(target, uri)
    foreign = await _record_value(target, f"at://{FOREIGN_DID}/{POST}/{_fresh_rkey()}")

    assert (status, body["error"]) == (400, "RecordNotFound")
    assert (foreign[0], foreign[1]["error"]) == (502, "UpstreamFailure")


async def test_put_record_updates_and_an_identical_put_commits_nothing(target: Target) -> None:
    account = target.new_account("put")
    client = await _login(target, account)
    rkey = _fresh_rkey()
    original = await _create(client, account.did, _post("before"), rkey)
    changed = _post("after")

    updated = await client.com.atproto.repo.put_record(
        {"repo": account.did, "collection": POST, "rkey": rkey, "record": changed}
    )
    repeated = await client.com.atproto.repo.put_record(
        {"repo": account.did, "collection": POST, "rkey": rkey, "record": changed}
    )
    with pytest.raises(RequestErrorBase) as caught:
        await client.com.atproto.repo.put_record(
            {
                "repo": account.did,
                "collection": POST,
                "rkey": rkey,
                "record": _post("third"),
                "swap_record": original.cid,
            }
        )

    assert updated.cid == _independent_cid(changed) != original.cid
    assert updated.commit is not None
    assert repeated.cid == updated.cid and repeated.commit is None
    assert _error(caught.value) == (400, "InvalidSwap")
    assert (await _record_value(target, updated.uri))[1]["value"] == changed


async def test_delete_is_idempotent(target: Target) -> None:
    account = target.new_account("delete")
    client = await _login(target, account)
    created = await _create(client, account.did, _post("short-lived"))
    rkey = created.uri.rsplit("/", 1)[1]
    where = {"repo": account.did, "collection": POST, "rkey": rkey}

    first = await client.com.atproto.repo.delete_record(where)
    second = await client.com.atproto.repo.delete_record(where)

    assert first.commit is not None
    assert second.commit is None
    assert (await _record_value(target, created.uri))[0] == 400


async def test_writes_to_someone_elses_repo_are_refused(target: Target) -> None:
    account = target.new_account("owner")
    other = target.new_account("other")
    client = await _login(target, account)

    assert await _create_error(client, other.did, _post("not mine")) == (
        401,
        "AuthenticationRequired",
    )
    assert await _create_error(client, FOREIGN_DID, _post("nobody's")) == (403, "AccountNotFound")
    assert await _create_error(
        client, account.did, {**_post("x"), "$type": "app.bsky.feed.like"}
    ) == (
        400,
        "InvalidRequest",
    )


async def test_list_records_newest_first_with_a_cursor(target: Target) -> None:
    account = target.new_account("list")
    client = await _login(target, account)
    rkeys = [_fresh_rkey() for _ in range(3)]
    for number, rkey in enumerate(rkeys):
        await _create(client, account.did, _post(f"post {number}"), rkey)

    first = await _raw_get(
        target, "com.atproto.repo.listRecords", repo=account.did, collection=POST, limit="2"
    )
    rest = await _raw_get(
        target,
        "com.atproto.repo.listRecords",
        repo=account.did,
        collection=POST,
        limit="2",
        cursor=first.json()["cursor"],
    )
    oldest = await _raw_get(
        target,
        "com.atproto.repo.listRecords",
        repo=account.did,
        collection=POST,
        limit="1",
        reverse="true",
    )
    too_many = await _raw_get(
        target, "com.atproto.repo.listRecords", repo=account.did, collection=POST, limit="101"
    )

    def keys(answer: httpx.Response) -> list[str]:
        return [item["uri"].rsplit("/", 1)[1] for item in answer.json()["records"]]

    assert keys(first) == [rkeys[2], rkeys[1]] and first.json()["cursor"] == rkeys[1]
    assert keys(rest) == [rkeys[0]]
    assert keys(oldest) == [rkeys[0]]
    assert too_many.status_code == 500


async def test_identity_and_repo_description(target: Target) -> None:
    account = target.new_account("identity")
    client = await _login(target, account)
    await _create(client, account.did, _post("hello"))

    resolved = await _raw_get(target, "com.atproto.identity.resolveHandle", handle=account.handle)
    unknown = await _raw_get(target, "com.atproto.identity.resolveHandle", handle="nobody.test")
    described = await _raw_get(target, "com.atproto.repo.describeRepo", repo=account.did)
    server = await _raw_get(target, "com.atproto.server.describeServer")

    assert resolved.json() == {"did": account.did}
    assert (unknown.status_code, unknown.json()["error"]) == (400, "InvalidRequest")
    assert described.json()["collections"] == [POST]
    assert described.json()["handle"] == account.handle
    assert server.json()["inviteCodeRequired"] is False
    assert ".test" in server.json()["availableUserDomains"]


async def test_methods_it_does_not_serve_answer_as_without_an_appview(target: Target) -> None:
    account = target.new_account("appview")
    session = await target.tokens(account)
    async with httpx.AsyncClient(base_url=f"{target.url}/xrpc") as http:
        anonymous = await http.get("app.bsky.notification.listNotifications", params={"limit": "5"})
        signed_in = await http.get(
            "app.bsky.notification.listNotifications",
            params={"limit": "5"},
            headers={"Authorization": f"Bearer {session['accessJwt']}"},
        )

    assert (anonymous.status_code, anonymous.json()["error"]) == (401, "AuthMissing")
    assert (signed_in.status_code, signed_in.json()["error"]) == (502, "UpstreamFailure")


def test_a_missing_npm_install_fails_with_instructions(tmp_path: Path) -> None:
    """Without tests/pds/node_modules the harness fails with what to run, never skips."""
    with pytest.raises(RealPdsError, match=r"run `npm ci` in tests/pds"):
        RealPds(pds_dir=tmp_path).start()
