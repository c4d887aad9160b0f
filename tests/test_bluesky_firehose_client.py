"""The Bluesky listener's own firehose client: frames decoded with libipld, read over aiohttp.

The records it takes out of a commit's CAR blocks are compared with what the atproto SDK reads
from the same frames, so that posts off the firehose stay exactly what they were. A small
WebSocket server on 127.0.0.1 stands in for a PDS that sends what a real one rarely does: bytes
that are no frame, error frames, unknown types.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import libipld
import pytest
from aiohttp import web
from atproto import CAR, parse_subscribe_repos_message
from atproto_subscription.frames import Frame as SdkFrame
from PIL import Image
from pydantic import SecretStr

from relaybird.config import BlueskyAccount
from relaybird.model import Event, Media, Post, Span, SpanKind
from relaybird.networks.bluesky import BlueskyNetwork
from relaybird.networks.bluesky_format import ipld_to_json
from relaybird.networks.bluesky_inbound import BlueskyListener, Commit, Frame, decode_frame
from relaybird.sandbox.bluesky import BlueskySandbox
from relaybird.sandbox.bluesky_ipld import encode_dag_cbor, make_cid
from relaybird.sandbox.bluesky_repo import car_file
from relaybird.store import Store

ACCOUNT = "bsky_firehose"
HANDLE = "firehose.test"
PASSWORD = "sandbox-app-password-fh"
DID = "did:plc:fakefirehosefakefirehose"
WAIT = 10.0


async def wait_until(condition: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


@dataclass
class Sink:
    events: list[Event] = field(default_factory=list)
    saved: list[str] = field(default_factory=list)
    health: list[tuple[bool, str]] = field(default_factory=list)

    async def accept(self, event: Event) -> None:
        self.events.append(event)

    def save_cursor(self, account: str, cursor: str) -> None:
        self.saved.append(cursor)

    def set_connected(self, account: str, connected: bool, detail: str = "") -> None:
        self.health.append((connected, detail))


@pytest.fixture
async def sandbox() -> AsyncIterator[BlueskySandbox]:
    server = BlueskySandbox(rate_limits=False)
    await server.start()
    server.create_account(HANDLE, PASSWORD)
    try:
        yield server
    finally:
        await server.stop()


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 3), (1, 2, 3)).save(buffer, "PNG")
    return buffer.getvalue()


async def raw_frames(url: str, cursor: int, count: int) -> list[bytes]:
    """The first `count` binary messages of the sandbox's firehose from `cursor`."""
    frames: list[bytes] = []
    subscribe = url.replace("http://", "ws://") + "/xrpc/com.atproto.sync.subscribeRepos"
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(f"{subscribe}?cursor={cursor}") as socket,
    ):
        while len(frames) < count:
            message = await socket.receive(timeout=WAIT)
            assert message.type == aiohttp.WSMsgType.BINARY
            frames.append(message.data)
    return frames


def sdk_records(data: bytes) -> dict[str, Any]:
    """What the atproto SDK reads from a `#commit` frame: each post op's CID and record."""
    message = parse_subscribe_repos_message(SdkFrame.from_bytes(data))
    blocks = CAR.from_bytes(message.blocks).blocks
    return {str(op.cid): ipld_to_json(blocks[op.cid]) for op in message.ops if op.cid is not None}


def own_records(data: bytes) -> dict[str, Any]:
    frame = decode_frame(data)
    assert isinstance(frame, Frame)
    commit = Commit.of(frame.body)
    blocks = commit.records()
    return {op.cid: ipld_to_json(blocks[op.cid]) for op in commit.ops if op.cid is not None}


async def test_records_off_the_firehose_are_those_the_sdk_reads(
    sandbox: BlueskySandbox, tmp_path: Path
) -> None:
    account = BlueskyAccount(
        name=ACCOUNT,
        network="bluesky",
        base_url=sandbox.base_url,
        handle=HANDLE,
        app_password=SecretStr(PASSWORD),
    )
    network = BlueskyNetwork(account, Store(tmp_path / "state.sqlite3"))
    await network.open()
    try:
        text = "Ünïcode 🎉 see https://example.org #tag"
        start = text.index("https")
        link = Span(start, start + 19, SpanKind.LINK, url="https://example.org")
        image = Media(mime="image/png", alt="alt ✓", data=png())
        await network.publish(
            Post(id="1", text=text, spans=[link], media=[image], language="de"),
            None,
            network.new_key(),
            False,
        )
    finally:
        await network.close()
    frames = await raw_frames(sandbox.base_url, 0, 5)

    commits = [f for f in frames if getattr(decode_frame(f), "type", "") == "#commit"]
    assert len(commits) == 2  # the empty repo's first commit, then the post
    ours, theirs = own_records(commits[-1]), sdk_records(commits[-1])
    assert ours == theirs
    (record,) = ours.values()
    assert record["text"] == text
    assert record["embed"]["images"][0]["image"]["ref"]["$link"].startswith("bafkrei")


def frame(header: dict[str, Any], body: Any) -> bytes:
    return bytes(libipld.encode_dag_cbor(header)) + bytes(libipld.encode_dag_cbor(body))


@dataclass
class FakeFirehose:
    """Sends the same scripted messages on every connection, then stays open and silent."""

    messages: list[bytes]
    cursors: list[str | None] = field(default_factory=list)
    runner: web.AppRunner | None = None

    async def start(self) -> str:
        app = web.Application()
        app.router.add_get("/xrpc/com.atproto.sync.subscribeRepos", self._subscribe)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        return f"http://127.0.0.1:{self.runner.addresses[0][1]}"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def _subscribe(self, request: web.Request) -> web.StreamResponse:
        self.cursors.append(request.query.get("cursor"))
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        for message in self.messages:
            await socket.send_bytes(message)
        async for _ in socket:
            pass
        return socket


def listener(url: str) -> BlueskyListener:
    return BlueskyListener(
        ACCOUNT,
        client=None,  # type: ignore[arg-type]  # the firehose never calls the API
        did=DID,
        handle="old.test",
        mode="firehose",
        pds_url=url,
        jetstream_url="",
        reconnect_base=0.05,
        stall_timeout=5,
    )


@contextlib.asynccontextmanager
async def listening(
    messages: list[bytes], cursor: str | None
) -> AsyncIterator[tuple[FakeFirehose, Sink]]:
    """The listener on a fake firehose, once it has connected."""
    server = FakeFirehose(messages)
    url = await server.start()
    sink = Sink()
    task = asyncio.create_task(listener(url).run(cursor, sink))
    try:
        await wait_until(lambda: bool(sink.health) or task.done(), "the listener to connect")
        yield server, sink
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await server.stop()


async def test_unreadable_frames_and_unknown_types_are_skipped_on_the_same_connection() -> None:
    rkey = "3kabcdefghij2"
    commit_block = encode_dag_cbor({"did": DID, "rev": "3kabcdefghij3", "version": 3})
    root = make_cid(0x71, commit_block)
    messages = [
        b"\xff not cbor",
        b"",
        frame({"op": 1, "t": "#info"}, {"name": "OutdatedCursor"}),
        frame({"op": 1, "t": "#identity"}, {"seq": 7, "did": DID, "handle": "new.test"}),
        frame({"op": 2, "t": "#commit"}, {"seq": 8}),
        frame({"op": 1}, "not a map"),
        frame({"op": 1, "t": "#mystery"}, {"seq": 7, "repo": DID}),
        frame(
            {"op": 1, "t": "#commit"},
            {
                "seq": 8,
                "repo": DID,
                "rev": "3kabcdefghij3",
                "ops": [{"action": "delete", "path": f"app.bsky.feed.post/{rkey}", "cid": None}],
                "blocks": car_file(root, [(root, commit_block)]),
                "tooBig": False,
            },
        ),
    ]
    async with listening(messages, None) as (server, sink):
        await wait_until(lambda: bool(sink.events), "the delete")
        await asyncio.sleep(0.1)
    (event,) = sink.events
    assert event.post.id == f"at://{DID}/app.bsky.feed.post/{rkey}"
    assert event.post.author is not None and event.post.author.handle == "new.test"
    assert (event.kind.value, event.cursor) == ("delete", "8")
    assert sink.saved[0] == "7"
    assert server.cursors == [None], "nothing of it dropped the connection"
    assert sink.health[0] == (True, "firehose open")


@pytest.mark.parametrize(
    ("error", "next_cursor"), [("FutureCursor", None), ("ConsumerTooSlow", "500")]
)
async def test_an_error_frame_ends_the_connection(error: str, next_cursor: str | None) -> None:
    """A cursor the PDS does not have yet (it was reset) is dropped: the next connection
    follows it from now. Any other error keeps the cursor for the next attempt."""
    messages = [frame({"op": -1}, {"error": error, "message": "see you"})]
    async with listening(messages, "500") as (server, sink):
        await wait_until(lambda: len(server.cursors) >= 2, "a second connection")
    assert server.cursors[:2] == ["500", next_cursor]
    assert (False, f"firehose lost: {error}") in sink.health
