"""The local Jetstream serves the reference PDS's firehose the way the real Jetstream does.

Its events are checked against what the PDS itself says about the same writes (`getRecord`, the
commit rev and CID returned by the write), its filters against subscribers with different
`wantedDids`/`wantedCollections`, and its cursor against replays from its buffer.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from atproto import AsyncClient
from atproto_client.client.session import Session
from PIL import Image

from relaybird.sandbox.jetstream import JetstreamServer
from tests.realpds import RealPds

pytestmark = pytest.mark.pds

POST = "app.bsky.feed.post"
PROFILE = "app.bsky.actor.profile"
WAIT_SECONDS = 10.0


# --- helpers shared with test_bluesky_inbound -----------------------------------------------------


async def wait_until(
    predicate: Callable[[], bool], what: str, timeout: float = WAIT_SECONDS
) -> None:
    """Poll every 20 ms; fail with `what` when it does not come true in time."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(0.02)


def png(color: tuple[int, int, int] = (200, 30, 60)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (6, 4), color).save(buffer, "PNG")
    return buffer.getvalue()


@dataclass(frozen=True)
class Written:
    uri: str
    cid: str
    rev: str

    @property
    def rkey(self) -> str:
        return self.uri.rsplit("/", 1)[-1]

    def ref(self) -> dict[str, str]:
        return {"uri": self.uri, "cid": self.cid}


@dataclass
class Writer:
    """An account on the real PDS, writing through the unmodified SDK."""

    did: str
    handle: str
    client: AsyncClient

    async def create(self, record: dict[str, Any], collection: str = POST, **data: Any) -> Written:
        answer = await self.client.com.atproto.repo.create_record(
            {"repo": self.did, "collection": collection, "record": record, **data}
        )
        return Written(answer.uri, answer.cid, answer.commit.rev)

    async def post(self, text: str, **extra: Any) -> Written:
        return await self.create(
            {"$type": POST, "text": text, "createdAt": "2025-01-01T12:00:00.000Z", **extra}
        )

    async def put(self, rkey: str, record: dict[str, Any]) -> Written:
        answer = await self.client.com.atproto.repo.put_record(
            {"repo": self.did, "collection": POST, "rkey": rkey, "record": record}
        )
        return Written(answer.uri, answer.cid, answer.commit.rev)

    async def delete(self, rkey: str) -> str:
        answer = await self.client.com.atproto.repo.delete_record(
            {"repo": self.did, "collection": POST, "rkey": rkey}
        )
        return str(answer.commit.rev)

    async def blob(self, data: bytes) -> dict[str, Any]:
        uploaded = (await self.client.upload_blob(data)).blob
        return {
            "$type": "blob",
            "ref": {"$link": uploaded.ref.link},
            "mimeType": uploaded.mime_type,
            "size": uploaded.size,
        }


async def new_writer(pds: RealPds, prefix: str) -> Writer:
    """A fresh account, on the session createAccount gave (a login costs the PDS 350 ms)."""
    did, handle, _ = pds.create_account(prefix)
    tokens = pds.sessions[did]
    session = Session(
        handle=handle,
        did=did,
        access_jwt=tokens["accessJwt"],
        refresh_jwt=tokens["refreshJwt"],
        pds_endpoint=pds.url,
    )
    client = AsyncClient(base_url=pds.url)
    await client.login(session_string=session.export(), fetch_bsky_profile=False)
    return Writer(did, handle, client)


def has_commit(
    events: list[dict[str, Any]], did: str, rkey: str, operation: str = "create"
) -> bool:
    return any(
        e.get("did") == did
        and e.get("commit", {}).get("rkey") == rkey
        and e["commit"].get("operation") == operation
        for e in events
    )


@pytest.fixture
async def jetstream(real_pds: RealPds) -> AsyncIterator[JetstreamServer]:
    server = JetstreamServer(real_pds.url)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


# --- a subscriber -------------------------------------------------------------------------------


@dataclass
class Subscription:
    events: list[dict[str, Any]] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)

    def commits(self) -> list[tuple[str, str, str]]:
        return [
            (e["did"], e["commit"]["collection"], e["commit"]["rkey"])
            for e in self.events
            if e["kind"] == "commit"
        ]


@contextlib.asynccontextmanager
async def subscribed(url: str, query: list[tuple[str, str]]) -> AsyncIterator[Subscription]:
    subscription = Subscription()
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(url, params=query) as socket,
    ):

        async def read() -> None:
            async for message in socket:
                if message.type == aiohttp.WSMsgType.TEXT:
                    subscription.texts.append(message.data)
                    subscription.events.append(json.loads(message.data))

        reader = asyncio.create_task(read())
        try:
            yield subscription
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader


async def raw_record(pds: RealPds, uri: str) -> dict[str, Any]:
    did, collection, rkey = uri.removeprefix("at://").split("/")
    async with aiohttp.ClientSession() as http:
        answer = await http.get(
            f"{pds.url}/xrpc/com.atproto.repo.getRecord",
            params={"repo": did, "collection": collection, "rkey": rkey},
        )
        body: dict[str, Any] = await answer.json()
    return body


# --- tests --------------------------------------------------------------------------------------


async def test_commits_become_events_shaped_like_jetstreams(
    real_pds: RealPds, jetstream: JetstreamServer
) -> None:
    me = await new_writer(real_pds, "shape")
    link = "https://example.org/shape"
    text = f"Shape check {link}"
    start = text.encode().index(link.encode())
    facets = [
        {
            "index": {"byteStart": start, "byteEnd": start + len(link.encode())},
            "features": [{"$type": "app.bsky.richtext.facet#link", "uri": link}],
        }
    ]
    async with subscribed(jetstream.url, [("wantedDids", me.did)]) as sub:
        image = await me.blob(png())
        created = await me.post(
            text,
            facets=facets,
            embed={"$type": "app.bsky.embed.images", "images": [{"image": image, "alt": "Red"}]},
        )
        stored = await raw_record(real_pds, created.uri)
        updated = await me.put(created.rkey, {**stored["value"], "text": "Shape check, edited"})
        deleted_rev = await me.delete(created.rkey)
        await wait_until(lambda: len(sub.commits()) == 3, "three commit events")

    create, update, delete = [e for e in sub.events if e["kind"] == "commit"]
    assert set(create) == {"did", "time_us", "kind", "commit"}
    assert create["did"] == me.did
    assert create["commit"] == {
        "rev": created.rev,
        "operation": "create",
        "collection": POST,
        "rkey": created.rkey,
        "record": stored["value"],
        "cid": created.cid,
    }
    assert create["commit"]["record"]["embed"]["images"][0]["image"] == image
    assert update["commit"]["operation"] == "update"
    assert (update["commit"]["rev"], update["commit"]["cid"]) == (updated.rev, updated.cid)
    assert update["commit"]["record"]["text"] == "Shape check, edited"
    assert delete["commit"] == {
        "rev": deleted_rev,
        "operation": "delete",
        "collection": POST,
        "rkey": created.rkey,
    }
    times = [e["time_us"] for e in (create, update, delete)]
    assert times == sorted(set(times))
    assert abs(times[0] / 1e6 - time.time()) < 60
    raw = next(t for t in sub.texts if f'"rkey":"{created.rkey}"' in t)
    assert raw.startswith('{"did":') and ", " not in raw[:40]


async def test_wanted_dids_and_collections_filter_what_each_subscriber_gets(
    real_pds: RealPds, jetstream: JetstreamServer
) -> None:
    a, b, c = [await new_writer(real_pds, name) for name in ("filta", "filtb", "filtc")]
    url = jetstream.url
    queries = {
        "only a": [("wantedDids", a.did)],
        "posts": [("wantedCollections", POST)],
        "feed prefix": [("wantedCollections", "app.bsky.feed.*")],
        "a and b, posts and profiles": [
            ("wantedDids", a.did),
            ("wantedDids", b.did),
            ("wantedCollections", PROFILE),
            ("wantedCollections", POST),
        ],
    }
    async with contextlib.AsyncExitStack() as stack:
        subs = {
            name: await stack.enter_async_context(subscribed(url, q)) for name, q in queries.items()
        }
        from_c = await c.post("c posts")
        from_b = await b.post("b posts")
        profile = await a.create(
            {"$type": PROFILE, "displayName": "A"}, collection=PROFILE, rkey="self"
        )
        last = await a.post("a posts last")
        # Every subscriber wants the last write, and events arrive in order: once it is there,
        # anything a filter let through by mistake would be there too.
        for name, sub in subs.items():
            await wait_until(
                lambda sub=sub: (a.did, POST, last.rkey) in sub.commits(), f"{name}: a's post"
            )

    ours = {a.did, b.did, c.did}
    seen = {
        name: [commit for commit in sub.commits() if commit[0] in ours]
        for name, sub in subs.items()
    }
    c_post, b_post = (c.did, POST, from_c.rkey), (b.did, POST, from_b.rkey)
    a_profile, a_post = (a.did, PROFILE, profile.rkey), (a.did, POST, last.rkey)
    assert seen == {
        "only a": [a_profile, a_post],
        "posts": [c_post, b_post, a_post],
        "feed prefix": [c_post, b_post, a_post],
        "a and b, posts and profiles": [b_post, a_profile, a_post],
    }
    assert all(e["did"] == a.did for e in subs["only a"].events)


async def test_cursor_replays_the_buffer_inclusively_then_follows_live(
    real_pds: RealPds, jetstream: JetstreamServer
) -> None:
    me = await new_writer(real_pds, "replay")
    first, second, third = [await me.post(f"replay {n}") for n in (1, 2, 3)]
    await wait_until(
        lambda: has_commit(jetstream.buffered(), me.did, third.rkey), "the third post buffered"
    )
    second_time = next(
        e["time_us"] for e in jetstream.buffered() if e.get("commit", {}).get("rkey") == second.rkey
    )
    future = str(time.time_ns() // 1000 + 3_600_000_000)
    mine = [("wantedDids", me.did)]
    async with (
        subscribed(jetstream.url, [*mine, ("cursor", str(second_time))]) as from_second,
        subscribed(jetstream.url, [*mine, ("cursor", "0")]) as from_start,
        subscribed(jetstream.url, [*mine, ("cursor", future)]) as from_future,
    ):
        fourth = await me.post("replay 4")
        for sub in (from_second, from_start, from_future):
            await wait_until(lambda sub=sub: has_commit(sub.events, me.did, fourth.rkey), "live")

    def rkeys(sub: Subscription) -> list[str]:
        return [rkey for _, _, rkey in sub.commits()]

    assert rkeys(from_second) == [second.rkey, third.rkey, fourth.rkey]
    assert rkeys(from_start) == [first.rkey, second.rkey, third.rkey, fourth.rkey]
    assert rkeys(from_future) == [fourth.rkey]


async def test_bad_subscriber_options_are_refused_with_400(jetstream: JetstreamServer) -> None:
    http_url = jetstream.url.replace("ws://", "http://")
    async with aiohttp.ClientSession() as http:
        answers = {}
        for name, query in {
            "cursor": {"cursor": "yesterday"},
            "did": {"wantedDids": "alice"},
            "collection": {"wantedCollections": "not a collection"},
            "compress": {"compress": "true"},
        }.items():
            async with http.get(http_url, params=query) as answer:
                answers[name] = (answer.status, await answer.text())

    assert answers["cursor"] == (400, "invalid cursor: yesterday")
    assert answers["did"][0] == 400 and "invalid subscriber options" in answers["did"][1]
    assert answers["collection"][0] == 400 and "not a collection" in answers["collection"][1]
    assert answers["compress"][0] == 400
