"""The sandbox's firehose (`com.atproto.sync.subscribeRepos`) streams what the reference PDS streams.

One scenario (an account, then creates, updates, no-op writes, deletes and a like) runs once per
server, against `BlueskySandbox` and against the real PDS from `tests/pds`; the unmodified atproto
SDK reads both firehoses (`AsyncFirehoseSubscribeReposClient`, `parse_subscribe_repos_message`,
`CAR.from_bytes`), and the same expectations are asserted on both. A last contract test compares the
two traces event by event. Record keys are chosen by the test, so both repositories hold the same
records and the same tree: tree roots and blocks are compared too. The rest of the file is what only
the sandbox can show (a movable clock for outdated cursors, subscriber counts, dropped connections).
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
import libipld
import pytest
import websockets
from aiohttp import web
from atproto import (
    CAR,
    AsyncClient,
    AsyncFirehoseSubscribeReposClient,
    models,
    parse_subscribe_repos_message,
)
from atproto_client.client.session import Session
from atproto_client.models.com.atproto.sync.subscribe_repos import Commit
from atproto_core.did_doc import DidDocument
from atproto_crypto.verify import verify_signature
from atproto_subscription.exceptions import SubscriptionError
from hypothesis import given, settings
from hypothesis import strategies as st

from relaybird.sandbox.bluesky import BlueskySandbox, LoggedRequest, SandboxAccount
from relaybird.sandbox.bluesky_ipld import make_cid, tid_from_micros
from relaybird.sandbox.bluesky_repo import build_tree, covering_proof, key_layer
from tests.realpds import RealPds

POST = "app.bsky.feed.post"
LIKE = "app.bsky.feed.like"
CREATED_AT = "2024-05-01T12:00:00.000Z"
# Chosen record keys (TIDs of a fixed moment), so both servers build the same tree.
_BASE_MICROS = 1_714_564_800_000_000
RKEY_ONE, RKEY_TWO, RKEY_LIKE = (tid_from_micros(_BASE_MICROS + n, 7) for n in (1, 2, 3))
WAIT = 15.0
# Someone on another server: liking their post writes the same record on both servers.
FOREIGN_DID = "did:plc:ewvi7nxzyoun6zhxrhs64oiz"

Message = Any  # one of the SDK's ComAtprotoSyncSubscribeRepos models


class FakeClock:
    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


# --- reading the firehose through the SDK -----------------------------------------------------


def _ws_base(url: str) -> str:
    return url.replace("http://", "ws://", 1) + "/xrpc"


async def _wait_until(condition: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    """Poll briefly: the PDS sends a write's event 0-900 ms after the write returns."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


class Reader:
    """An SDK firehose client running in a task, keeping each message it parses."""

    def __init__(self, url: str, cursor: int | None) -> None:
        params = {"cursor": cursor} if cursor is not None else None
        self.client = AsyncFirehoseSubscribeReposClient(params, base_uri=_ws_base(url))
        self.messages: list[Message] = []
        self.error: SubscriptionError | None = None
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Reader:
        self.task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.stop()
        if self.task is not None:
            await asyncio.wait_for(self.task, WAIT)

    async def _run(self) -> None:
        try:
            await self.client.start(self._on_message)
        except SubscriptionError as error:
            self.error = error

    async def _on_message(self, frame: Any) -> None:
        self.messages.append(parse_subscribe_repos_message(frame))

    def of(self, did: str) -> list[Message]:
        return [m for m in self.messages if _did_of(m) == did]

    async def wait_for(self, did: str, count: int) -> list[Message]:
        await _wait_until(lambda: len(self.of(did)) >= count, f"{count} events of {did}")
        return self.of(did)

    async def wait_closed(self) -> None:
        assert self.task is not None
        await asyncio.wait_for(asyncio.shield(self.task), WAIT)


def _did_of(message: Message) -> str | None:
    return getattr(message, "repo", None) or getattr(message, "did", None)


def _type(message: Message) -> str:
    return str(message.py_type).split("#")[1]


def _commit_block(commit: Commit) -> dict[str, Any]:
    car = CAR.from_bytes(commit.blocks)
    block: dict[str, Any] = car.blocks[car.root]
    return block


def _cid_from_bytes(raw: bytes) -> str:
    """A link as libipld decodes it (CID bytes), in the usual base32 spelling."""
    return "b" + base64.b32encode(raw).decode("ascii").lower().rstrip("=")


def _independent_cid(record: dict[str, Any]) -> str:
    """A record's CID by libipld's encoder, not the sandbox's."""
    return make_cid(0x71, libipld.encode_dag_cbor(record))


# --- the scenario -------------------------------------------------------------------------------


@dataclass
class Trace:
    """What one server did in the scenario, as the SDK saw it."""

    did: str
    handle: str
    signing_key: str
    answers: list[Any]
    records: dict[str, dict[str, Any]]
    events: list[Message]
    all_seqs: list[int]
    replay_from: int
    replay: list[Message]
    future_error: Any
    malformed: tuple[dict[str, Any], dict[str, Any], int | None, str | None]
    plain_get: tuple[int, str]


@dataclass
class Server:
    url: str
    create_account: Callable[[], Awaitable[tuple[str, str, dict[str, str]]]]


def _post(text: str) -> dict[str, Any]:
    return {"$type": POST, "text": text, "createdAt": CREATED_AT}


async def _sdk_client(server: Server, did: str, handle: str, tokens: dict[str, str]) -> AsyncClient:
    session = Session(
        handle=handle,
        did=did,
        access_jwt=tokens["accessJwt"],
        refresh_jwt=tokens["refreshJwt"],
        pds_endpoint=server.url,
    )
    client = AsyncClient(base_url=server.url)
    await client.login(session_string=session.export(), fetch_bsky_profile=False)
    return client


async def _writes(client: AsyncClient, did: str) -> tuple[list[Any], dict[str, dict[str, Any]]]:
    """Create two posts, edit one, repeat the edit, delete the other twice, like someone's post."""
    repo = client.com.atproto.repo
    first, second, edited = _post("first"), _post("second"), _post("first, edited")

    def create(collection: str, rkey: str, record: dict[str, Any]) -> Any:
        data = models.ComAtprotoRepoCreateRecord.Data(
            repo=did, collection=collection, rkey=rkey, record=record
        )
        return repo.create_record(data)

    def put(rkey: str, record: dict[str, Any]) -> Any:
        data = models.ComAtprotoRepoPutRecord.Data(
            repo=did, collection=POST, rkey=rkey, record=record
        )
        return repo.put_record(data)

    def delete(rkey: str) -> Any:
        data = models.ComAtprotoRepoDeleteRecord.Data(repo=did, collection=POST, rkey=rkey)
        return repo.delete_record(data)

    answers = [await create(POST, RKEY_ONE, first), await create(POST, RKEY_TWO, second)]
    answers += [await put(RKEY_ONE, edited), await put(RKEY_ONE, edited)]
    answers += [await delete(RKEY_TWO), await delete(RKEY_TWO)]
    like = {
        "$type": LIKE,
        "subject": {
            "$type": "com.atproto.repo.strongRef",
            "uri": f"at://{FOREIGN_DID}/{POST}/{RKEY_ONE}",
            "cid": answers[2].cid,
        },
        "createdAt": CREATED_AT,
    }
    answers.append(await create(LIKE, RKEY_LIKE, like))
    records = {
        f"{POST}/{RKEY_ONE}#1": first,
        f"{POST}/{RKEY_TWO}": second,
        f"{POST}/{RKEY_ONE}": edited,
        f"{LIKE}/{RKEY_LIKE}": like,
    }
    return answers, records


# The account's events: identity, account, first commit, sync; then one commit per real change.
EXPECTED_TYPES = ["identity", "account", "commit", "sync"] + ["commit"] * 5
EXPECTED_OPS = [
    [],
    [("create", f"{POST}/{RKEY_ONE}")],
    [("create", f"{POST}/{RKEY_TWO}")],
    [("update", f"{POST}/{RKEY_ONE}")],
    [("delete", f"{POST}/{RKEY_TWO}")],
    [("create", f"{LIKE}/{RKEY_LIKE}")],
]


async def _raw_frames(url: str, query: str) -> tuple[list[list[Any]], int | None, str | None]:
    """Frames as bytes decode, and the close code and reason, for what the SDK cannot send."""
    frames: list[list[Any]] = []
    target = f"{_ws_base(url)}/com.atproto.sync.subscribeRepos{query}"
    async with websockets.connect(target) as socket:
        try:
            while True:
                raw = await asyncio.wait_for(socket.recv(), WAIT)
                assert isinstance(raw, bytes)
                frames.append(libipld.decode_dag_cbor_multi(raw))
        except websockets.ConnectionClosed as closed:
            code = closed.rcvd.code if closed.rcvd else None
            reason = closed.rcvd.reason if closed.rcvd else None
            return frames, code, reason


async def _run_scenario(server: Server) -> Trace:
    did, handle, tokens = await server.create_account()
    client = await _sdk_client(server, did, handle, tokens)
    async with Reader(server.url, 0) as reader:
        await reader.wait_for(did, 4)
        answers, records = await _writes(client, did)
        events = await reader.wait_for(did, len(EXPECTED_TYPES))
        all_seqs = [m.seq for m in reader.messages]
    replay_from = events[2].seq
    async with Reader(server.url, replay_from) as replayer:
        replay = await replayer.wait_for(did, len(events) - 3)
    async with Reader(server.url, max(all_seqs) + 1000) as future:
        await future.wait_closed()
    frames, code, reason = await _raw_frames(server.url, "?cursor=abc")
    async with httpx.AsyncClient() as http:
        described = await http.get(
            f"{server.url}/xrpc/com.atproto.repo.describeRepo", params={"repo": did}
        )
        plain = await http.get(f"{server.url}/xrpc/com.atproto.sync.subscribeRepos")
    signing_key = DidDocument.from_dict(described.json()["didDoc"]).get_did_key()
    assert future.error is not None
    return Trace(
        did=did,
        handle=handle,
        signing_key=str(signing_key),
        answers=answers,
        records=records,
        events=events,
        all_seqs=all_seqs,
        replay_from=replay_from,
        replay=replay,
        future_error=future.error.args[0],
        malformed=(frames[0][0], frames[0][1], code, reason),
        plain_get=(plain.status_code, plain.json()["error"]),
    )


def _sandbox_trace() -> Trace:
    async def run() -> Trace:
        sandbox = BlueskySandbox()
        await sandbox.start()
        numbers = itertools.count(1)

        async def create_account() -> tuple[str, str, dict[str, str]]:
            made = sandbox.create_account(f"firehose-{next(numbers)}.test", "sandbox-pw")
            async with httpx.AsyncClient() as http:
                answer = await http.post(
                    f"{sandbox.base_url}/xrpc/com.atproto.server.createSession",
                    json={"identifier": made.handle, "password": made.password},
                )
            return made.did, made.handle, answer.json()

        try:
            return await _run_scenario(Server(sandbox.base_url, create_account))
        finally:
            await sandbox.stop()

    return asyncio.run(run())


def _pds_trace(pds: RealPds) -> Trace:
    async def create_account() -> tuple[str, str, dict[str, str]]:
        did, handle, _ = pds.create_account("firehose")
        return did, handle, pds.sessions[did]

    return asyncio.run(_run_scenario(Server(pds.url, create_account)))


@pytest.fixture(scope="module")
def sandbox_trace() -> Trace:
    return _sandbox_trace()


@pytest.fixture(scope="module")
def pds_trace(real_pds: RealPds) -> Trace:
    return _pds_trace(real_pds)


@pytest.fixture(params=["sandbox", pytest.param("pds", marks=pytest.mark.pds)])
def trace(request: pytest.FixtureRequest) -> Trace:
    result: Trace = request.getfixturevalue(f"{request.param}_trace")
    return result


def _commits(trace: Trace) -> list[Commit]:
    return [m for m in trace.events if _type(m) == "commit"]


# --- the contract: the same on both servers -----------------------------------------------------


def test_account_creation_announces_identity_account_first_commit_and_sync(trace: Trace) -> None:
    identity, account, first, sync = trace.events[:4]
    assert [_type(m) for m in trace.events] == EXPECTED_TYPES
    assert identity.handle == trace.handle
    assert account.active is True and account.status is None
    assert first.ops == [] and first.since is None and first.prev_data is None
    assert sync.rev == first.rev
    sync_car = CAR.from_bytes(sync.blocks)
    assert str(sync_car.root) == str(first.commit)
    assert list(map(str, sync_car.blocks)) == [str(first.commit)]


def test_every_change_is_one_commit_and_no_op_writes_are_silent(trace: Trace) -> None:
    ops = [[(op.action, op.path) for op in commit.ops] for commit in _commits(trace)]
    assert ops == EXPECTED_OPS
    for commit in _commits(trace):
        assert (commit.rebase, commit.too_big, commit.blobs) == (False, False, [])


def test_op_cids_are_the_records_cids_and_the_records_are_in_the_blocks(trace: Trace) -> None:
    created_one, created_two, updated, deleted, liked = _commits(trace)[1:]
    answers = trace.answers
    expected = [
        (created_one, answers[0], trace.records[f"{POST}/{RKEY_ONE}#1"], None),
        (created_two, answers[1], trace.records[f"{POST}/{RKEY_TWO}"], None),
        (updated, answers[2], trace.records[f"{POST}/{RKEY_ONE}"], answers[0].cid),
        (liked, answers[6], trace.records[f"{LIKE}/{RKEY_LIKE}"], None),
    ]
    for commit, answer, record, previous in expected:
        (op,) = commit.ops
        assert str(op.cid) == answer.cid == _independent_cid(record)
        assert CAR.from_bytes(commit.blocks).blocks[op.cid] == record
        assert (str(op.prev) if op.prev else None) == previous
    (delete_op,) = deleted.ops
    assert delete_op.cid is None and str(delete_op.prev) == answers[1].cid


def test_commits_chain_up_and_are_signed_by_the_repo_key(trace: Trace) -> None:
    commits = _commits(trace)
    answered = [a.commit for a in trace.answers if a.commit is not None]
    assert [(str(c.commit), c.rev) for c in commits[1:]] == [(a.cid, a.rev) for a in answered]
    for previous, commit in itertools.pairwise(commits):
        assert commit.since == previous.rev and commit.rev > previous.rev
        assert str(commit.prev_data) == _cid_from_bytes(_commit_block(previous)["data"])
    for commit in commits:
        block = _commit_block(commit)
        assert str(CAR.from_bytes(commit.blocks).root) == str(commit.commit)
        assert (block["did"], block["rev"], block["version"], block["prev"]) == (
            trace.did,
            commit.rev,
            3,
            None,
        )
        unsigned = libipld.encode_dag_cbor({k: v for k, v in block.items() if k != "sig"})
        assert len(block["sig"]) == 64
        assert verify_signature(trace.signing_key, unsigned, block["sig"])


def test_each_commit_points_at_the_canonical_tree_of_the_repo(trace: Trace) -> None:
    """The tree root depends only on the records: the sandbox's tree is checked against the PDS's."""
    items: dict[str, str] = {}
    for commit in _commits(trace):
        for op in commit.ops:
            if op.cid is None:
                del items[op.path]
            else:
                items[op.path] = str(op.cid)
        tree = build_tree(items)
        blocks = CAR.from_bytes(commit.blocks).blocks
        assert _cid_from_bytes(_commit_block(commit)["data"]) == tree.cid
        assert tree.cid in {str(cid) for cid in blocks}
        for op in commit.ops:
            proof = covering_proof(tree, op.path)
            assert set(proof) <= {str(cid) for cid in blocks}


def test_seq_increases_and_time_is_an_iso_timestamp(trace: Trace) -> None:
    assert trace.all_seqs == sorted(set(trace.all_seqs))
    times = [datetime.fromisoformat(m.time.replace("Z", "+00:00")) for m in trace.events]
    assert times == sorted(times)
    assert all(m.time.endswith("Z") and len(m.time) == 24 for m in trace.events)


def test_a_cursor_replays_the_stored_events_after_it(trace: Trace) -> None:
    assert trace.replay == [m for m in trace.events if m.seq > trace.replay_from]


def test_a_cursor_in_the_future_is_refused_with_an_error_frame(trace: Trace) -> None:
    assert (trace.future_error.error, trace.future_error.message) == (
        "FutureCursor",
        "Cursor in the future.",
    )


def test_a_malformed_cursor_gets_an_error_frame_and_a_policy_close(trace: Trace) -> None:
    header, body, code, reason = trace.malformed
    assert header == {"op": -1}
    assert body == {"error": "InternalServerError", "message": "Internal Server Error"}
    assert (code, reason) == (1008, "InternalServerError")


def test_a_plain_get_of_the_stream_asks_for_authentication(trace: Trace) -> None:
    assert trace.plain_get == (401, "AuthMissing")


@pytest.mark.pds
def test_sandbox_and_pds_send_the_same_events_and_blocks(
    sandbox_trace: Trace, pds_trace: Trace
) -> None:
    """Same records, same keys: apart from DIDs, revs and signatures, the streams are the same."""
    assert [_type(m) for m in sandbox_trace.events] == [_type(m) for m in pds_trace.events]
    for ours, theirs in zip(_commits(sandbox_trace), _commits(pds_trace), strict=True):
        assert ours.ops == theirs.ops
        assert ours.prev_data == theirs.prev_data
        assert _commit_block(ours)["data"] == _commit_block(theirs)["data"]
        assert _non_commit_blocks(ours) == _non_commit_blocks(theirs)
        assert (ours.since is None) == (theirs.since is None)


def _non_commit_blocks(commit: Commit) -> dict[str, Any]:
    car = CAR.from_bytes(commit.blocks)
    return {str(cid): block for cid, block in car.blocks.items() if cid != car.root}


# --- only the sandbox: live streams, clocks, faults -------------------------------------------


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


async def _post_as(sandbox: BlueskySandbox, account: SandboxAccount, text: str) -> Any:
    client = AsyncClient(base_url=sandbox.base_url)
    await client.login(account.handle, account.password, fetch_bsky_profile=False)
    data = models.ComAtprotoRepoCreateRecord.Data(
        repo=account.did, collection=POST, record=_post(text)
    )
    return await client.com.atproto.repo.create_record(data)


async def test_without_a_cursor_only_new_events_arrive(sandbox: BlueskySandbox) -> None:
    old = sandbox.create_account("old.test", "pw")
    async with Reader(sandbox.base_url, None) as reader:
        await _wait_until(lambda: sandbox.firehose.subscriber_count == 1, "the subscription")
        new = sandbox.create_account("new.test", "pw")
        answer = await _post_as(sandbox, new, "hello")
        events = await reader.wait_for(new.did, 5)
    assert reader.of(old.did) == []
    assert [_type(m) for m in events] == ["identity", "account", "commit", "sync", "commit"]
    assert str(events[-1].ops[0].cid) == answer.cid
    await _wait_until(lambda: sandbox.firehose.subscriber_count == 0, "the unsubscription")


async def test_every_subscriber_gets_every_event(sandbox: BlueskySandbox) -> None:
    account = sandbox.create_account("many.test", "pw")
    async with Reader(sandbox.base_url, 0) as one, Reader(sandbox.base_url, 0) as two:
        await _wait_until(lambda: sandbox.firehose.subscriber_count == 2, "two subscriptions")
        await _post_as(sandbox, account, "to all")
        first = await one.wait_for(account.did, 5)
        second = await two.wait_for(account.did, 5)
    assert first == second


async def test_an_outdated_cursor_gets_info_then_the_events_inside_the_window(
    sandbox: BlueskySandbox, clock: FakeClock
) -> None:
    account = sandbox.create_account("late.test", "pw")
    clock.advance(2 * 86400)
    answer = await _post_as(sandbox, account, "after a long time")
    async with Reader(sandbox.base_url, 1) as reader:
        await _wait_until(lambda: len(reader.messages) >= 2, "info and the commit")
    info, commit = reader.messages
    assert (_type(info), info.name) == ("info", "OutdatedCursor")
    assert info.message == "Requested cursor exceeded limit. Possibly missing events"
    assert (_did_of(commit), str(commit.ops[0].cid)) == (account.did, answer.cid)


async def test_an_outdated_cursor_with_nothing_recent_streams_from_now(
    sandbox: BlueskySandbox, clock: FakeClock
) -> None:
    sandbox.create_account("quiet.test", "pw")
    clock.advance(2 * 86400)
    async with Reader(sandbox.base_url, 0) as reader:
        await _wait_until(lambda: len(reader.messages) >= 1, "the info frame")
        await _wait_until(lambda: sandbox.firehose.subscriber_count == 1, "the subscription")
        fresh = sandbox.create_account("fresh.test", "pw")
        await reader.wait_for(fresh.did, 4)
    assert [_type(m) for m in reader.messages] == ["info", "identity", "account", "commit", "sync"]


async def test_stopping_drops_subscribers_without_a_close_frame(sandbox: BlueskySandbox) -> None:
    """A clean close would make the SDK stop for good; a dropped connection makes it reconnect."""
    sandbox.create_account("drop.test", "pw")
    target = f"{_ws_base(sandbox.base_url)}/com.atproto.sync.subscribeRepos?cursor=0"
    async with websockets.connect(target) as socket:
        for _ in range(4):
            await asyncio.wait_for(socket.recv(), WAIT)
        assert sandbox.firehose.drop_connections() == 1
        with pytest.raises(websockets.ConnectionClosedError) as closed:
            await asyncio.wait_for(socket.recv(), WAIT)
    assert closed.value.rcvd is None


async def test_an_interceptor_can_refuse_the_upgrade(sandbox: BlueskySandbox) -> None:
    async def refuse(request: web.Request, nsid: str) -> web.StreamResponse | None:
        return web.json_response({"error": "UpstreamFailure"}, status=502)

    sandbox.interceptors.append(refuse)
    target = f"{_ws_base(sandbox.base_url)}/com.atproto.sync.subscribeRepos"
    with pytest.raises(websockets.InvalidStatus) as refused:
        await websockets.connect(target)
    assert refused.value.response.status_code == 502
    assert sandbox.requests_log[-1] == LoggedRequest("com.atproto.sync.subscribeRepos", 502)
    assert sandbox.firehose.subscriber_count == 0


# --- the tree, against values computed by the reference implementation (@atproto/repo) --------


def test_key_layers_are_those_of_the_reference_tree() -> None:
    layers = {
        "2653ae71": 0,
        "blue": 1,
        "app.bsky.feed.post/454397e440ec": 4,
        "app.bsky.feed.post/9adeb165882c": 8,
    }
    assert {key: key_layer(key) for key in layers} == layers


def test_tree_roots_and_proofs_are_those_of_the_reference_tree() -> None:
    value = "bafyreie5cvv4h45feadgeuwhbcutmh6t2ceseocckahdoe6uat64zmz454"
    digits = str.maketrans("0123456789", "abcdefghij")
    keys = [f"{POST}/3k{str(n).rjust(11, 'a').translate(digits)}" for n in range(40)]
    expected_roots = {
        0: "bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm",
        1: "bafyreibsqvprgv766hdaxugcsvclnli5fgxab6322efi7duxkkyuq7bf2m",
        2: "bafyreiaxnry7ikzpkykqinnwi23f3abgusfetutg56zv2twoil22b3kd7e",
        5: "bafyreiao6gpr4dwiflqnwcvc7facdgqaikjqsbde4wcrvapv322y5ur56e",
        10: "bafyreic24pzzjbqpnu6nwvy2ats4bo5nvcq3crhott377jeg4kbfys6tju",
        40: "bafyreidzspjy4tkse56rq5js5k4l4uzbyqe5qf4ni2t3uq6iibs2cyftle",
    }
    for count, root in expected_roots.items():
        assert build_tree(dict.fromkeys(keys[:count], value)).cid == root
    tree = build_tree({key: value for key in keys if key != keys[3]})
    assert tree.cid == "bafyreig46ic5r6m7dj2jgz6626rzb3u2id4krf5p33zhtq3i5gn65uucuu"
    assert set(covering_proof(tree, keys[3])) == {
        "bafyreifbw4zhssfjtxffxfxmlqqatti2jzsrk2uavecwweerybiyi5uika",
        "bafyreig46ic5r6m7dj2jgz6626rzb3u2id4krf5p33zhtq3i5gn65uucuu",
        "bafyreih45cng5v2bsyg5gmbbgdqzx72zmnfhx34hqubk6umyrzdglpivei",
    }
    assert set(covering_proof(tree, keys[7])) == {
        "bafyreifbw4zhssfjtxffxfxmlqqatti2jzsrk2uavecwweerybiyi5uika",
        "bafyreig3zttjvqa7bmfulo4hwd5uzrhrlnhgiay47h5jezbgobcfjjdhvq",
        "bafyreig46ic5r6m7dj2jgz6626rzb3u2id4krf5p33zhtq3i5gn65uucuu",
    }


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 30), st.integers(0, 3)), max_size=40))
def test_a_tree_rebuilt_from_reused_nodes_is_the_tree_built_afresh(
    steps: list[tuple[bool, int, int]],
) -> None:
    """Each commit reuses the subtrees it did not touch; the result must not depend on that."""
    values = [make_cid(0x55, bytes([n])) for n in range(4)]
    items: dict[str, str] = {}
    reuse: dict[Any, Any] = {}
    for delete, number, value in steps:
        key = f"{POST}/{tid_from_micros(_BASE_MICROS + number)}"
        if delete:
            items.pop(key, None)
        else:
            items[key] = values[value]
        assert build_tree(items, reuse).cid == build_tree(items).cid
