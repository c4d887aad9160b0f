"""The worker on a bad day: retries keep thread order, one failing target or rate-limited account
does not hold up the others, refusals are dead-lettered, and a failing database pauses it without
losing or doubling anything.

The target is a small in-test implementation of our own `Network` interface (networks/base.py), so
that failures can be scripted exactly; the store, the limiter and the worker are the real ones.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from relaybird.metrics import Metrics
from relaybird.model import Event, EventKind, Post, Span, TargetRef
from relaybird.networks.base import (
    Capabilities,
    EventSink,
    MentionSink,
    PermanentError,
    RateLimited,
    ReplyTarget,
    TemporaryError,
)
from relaybird.ratelimit import AccountLimiter, Limits, Rate, ServerBudget
from relaybird.store import Planned, Store
from relaybird.worker import MIN_RATE_LIMIT_WAIT_SECONDS, Worker


def measure(text: str, spans: list[Span]) -> int:
    return len(text)


@dataclass
class Call:
    what: str
    text: str
    at: float
    retrying: bool = False


@dataclass
class FakeNetwork:
    """A target whose answers the test scripts: `failures[text]` is raised, in order, for `text`."""

    name: str
    idempotent: bool = True
    network: str = "fake"
    failures: dict[str, list[BaseException]] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    posts: dict[str, tuple[str, str | None]] = field(default_factory=dict)
    by_key: dict[str, TargetRef] = field(default_factory=dict)
    budget: ServerBudget | None = None
    on_publish: Callable[[str], None] | None = None

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(
            max_text=500,
            measure=measure,
            max_media=4,
            max_image_bytes=1_000_000,
            idempotent_create=self.idempotent,
        )

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def listen(self, cursor: str | None, sink: EventSink) -> None:
        await asyncio.Event().wait()

    def new_key(self) -> str:
        return uuid.uuid4().hex

    def rate_budget(self) -> ServerBudget | None:
        return self.budget

    async def publish(
        self, post: Post, reply_to: ReplyTarget | None, key: str, retrying: bool
    ) -> TargetRef:
        self.calls.append(Call("publish", post.text, time.time(), retrying))
        if retrying and self.idempotent and key in self.by_key:
            return self.by_key[key]
        pending = self.failures.get(post.text)
        if pending:
            raise pending.pop(0)
        ref = TargetRef(f"{self.name}/{len(self.posts) + 1}")
        self.posts[ref.id] = (post.text, reply_to.parent.id if reply_to else None)
        self.by_key[key] = ref
        if self.on_publish is not None:
            self.on_publish(post.text)
        return ref

    async def edit(self, ref: TargetRef, post: Post) -> TargetRef:
        self.calls.append(Call("edit", post.text, time.time()))
        return ref

    async def delete(self, ref: TargetRef) -> None:
        self.calls.append(Call("delete", ref.id, time.time()))
        self.posts.pop(ref.id, None)

    def mention_names(self) -> list[str]:
        return [self.name]

    async def reply_target(self, post_id: str) -> ReplyTarget:
        return ReplyTarget(parent=TargetRef(post_id), root=TargetRef(f"root-of-{post_id}"))

    async def fetch_post(self, post_id: str) -> Post | None:
        return None

    async def listen_mentions(self, cursor: str | None, sink: MentionSink) -> None:
        return None

    def texts(self) -> list[str]:
        return [text for text, _ in self.posts.values()]

    def published_at(self, text: str) -> list[float]:
        return [c.at for c in self.calls if c.what == "publish" and c.text == text]


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "state.sqlite3")


class Running:
    """Workers running as tasks, cancelled at the end of the test."""

    def __init__(self) -> None:
        self.tasks: list[asyncio.Task[None]] = []

    def start(self, worker: Worker) -> Worker:
        self.tasks.append(asyncio.create_task(worker.run()))
        return worker


@pytest.fixture
async def running() -> AsyncIterator[Running]:
    runner = Running()
    yield runner
    for task in runner.tasks:
        task.cancel()
    await asyncio.gather(*runner.tasks, return_exceptions=True)


def queue(
    store: Store, post_id: str, targets: list[str], reply_to: str | None = None, text: str = ""
) -> list[int]:
    kind = EventKind.REPLY if reply_to else EventKind.POST
    post = Post(id=post_id, text=text or f"post {post_id}", reply_to=reply_to)
    return store.accept(Event(kind, "source", post), [Planned("mirror", t) for t in targets])


async def until(predicate: Callable[[], object], timeout: float = 5.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        await asyncio.sleep(0.01)


def wake(*workers: Worker) -> None:
    for worker in workers:
        worker.wake.set()


async def test_a_reply_waits_for_its_parent_while_the_parent_retries(
    store: Store, running: Running
) -> None:
    target = FakeNetwork("bsky", failures={"post 1": [TemporaryError("503 from the server")]})
    worker = running.start(Worker(target, store))
    (parent_id,) = queue(store, "1", ["bsky"])
    (reply_id,) = queue(store, "2", ["bsky"], reply_to="1")
    wake(worker)
    await until(lambda: store.delivery(parent_id).state == "retry", what="the parent to fail")
    await asyncio.sleep(0.3)
    assert [c.text for c in target.calls] == ["post 1"], "the reply went before its parent"
    await until(lambda: store.delivery(reply_id).state == "done", timeout=5, what="the reply")
    assert [c.text for c in target.calls] == ["post 1", "post 1", "post 2"]
    parent_copy = store.mapping("source", "1", "bsky")
    assert parent_copy is not None
    assert target.posts["bsky/2"] == ("post 2", parent_copy.first.id)
    assert store.delivery(parent_id).attempts == 1


async def test_one_failing_target_does_not_stall_the_others(store: Store, running: Running) -> None:
    broken = FakeNetwork(
        "masto", failures={f"post {i}": [TemporaryError("500")] * 5 for i in "123"}
    )
    healthy = FakeNetwork("tg")
    workers = [running.start(Worker(broken, store)), running.start(Worker(healthy, store))]
    for post_id in "123":
        queue(store, post_id, ["masto", "tg"])
    wake(*workers)
    await until(lambda: len(healthy.posts) == 3, timeout=2, what="the healthy target")
    assert healthy.texts() == ["post 1", "post 2", "post 3"]
    assert broken.posts == {}
    states = {d.source_id: d.state for d in store.deliveries() if d.target_account == "masto"}
    assert states == {"1": "retry", "2": "retry", "3": "retry"}


async def test_a_rate_limited_account_holds_all_its_deliveries_while_others_flow(
    store: Store, running: Running
) -> None:
    retry_at = time.time() + 1.0
    limited = FakeNetwork("masto", failures={"post 1": [RateLimited("429", retry_at)]})
    other = FakeNetwork("bsky")
    limiter = AccountLimiter("masto")
    workers = [
        running.start(Worker(limited, store, limiter=limiter)),
        running.start(Worker(other, store)),
    ]
    ids = [queue(store, post_id, ["masto", "bsky"])[0] for post_id in "123"]
    wake(*workers)
    await until(lambda: len(other.posts) == 3, timeout=0.8, what="the other account")
    assert [c.text for c in limited.calls] == ["post 1"]
    assert limiter.held_for() > 0
    await until(lambda: len(limited.posts) == 3, timeout=5, what="the limited account")
    assert limited.texts() == ["post 1", "post 2", "post 3"]
    assert min(c.at for c in limited.calls[1:]) >= retry_at - 0.01
    # Being asked to wait is not a failed attempt.
    assert store.delivery(ids[0]).attempts == 0


async def test_a_rate_limit_without_a_usable_reset_time_still_waits(
    store: Store, running: Running
) -> None:
    limited = FakeNetwork("masto", failures={"post 1": [RateLimited("429", 0.0)]})
    limiter = AccountLimiter("masto")
    worker = running.start(Worker(limited, store, limiter=limiter))
    (delivery_id,) = queue(store, "1", ["masto"])
    wake(worker)
    await until(lambda: store.delivery(delivery_id).state == "retry", what="the 429")
    assert limiter.held_for() > MIN_RATE_LIMIT_WAIT_SECONDS - 1
    assert store.delivery(delivery_id).next_at >= time.time() + MIN_RATE_LIMIT_WAIT_SECONDS - 1


async def test_a_refusal_is_dead_lettered_with_its_reason_and_the_queue_moves_on(
    store: Store, running: Running
) -> None:
    target = FakeNetwork("bsky", failures={"post 1": [PermanentError("InvalidRecord: too long")]})
    metrics = Metrics()
    worker = running.start(Worker(target, store, metrics=metrics))
    first, second = (queue(store, i, ["bsky"])[0] for i in "12")
    wake(worker)
    await until(lambda: store.delivery(second).state == "done", what="the second post")
    dead = store.delivery(first)
    assert (dead.state, dead.last_error) == ("dead", "InvalidRecord: too long")
    value = metrics.registry.get_sample_value(
        "relaybird_dead_letters_total", {"route": "mirror", "target": "bsky"}
    )
    assert value == 1


async def test_an_unexpected_error_is_retried_and_the_worker_keeps_running(
    store: Store, running: Running
) -> None:
    target = FakeNetwork("bsky", failures={"post 1": [KeyError("surprise")]})
    worker = running.start(Worker(target, store))
    (delivery_id,) = queue(store, "1", ["bsky"])
    wake(worker)
    await until(lambda: store.delivery(delivery_id).state == "retry", what="the retry")
    assert "KeyError" in store.delivery(delivery_id).last_error
    await until(lambda: store.delivery(delivery_id).state == "done", timeout=5, what="delivery")
    assert target.texts() == ["post 1"]


async def test_an_unexpected_error_mid_create_without_idempotency_is_not_repeated(
    store: Store, running: Running
) -> None:
    target = FakeNetwork("tg", idempotent=False, failures={"post 1": [RuntimeError("reset")]})
    worker = running.start(Worker(target, store))
    (delivery_id,) = queue(store, "1", ["tg"])
    wake(worker)
    await until(lambda: store.delivery(delivery_id).state == "dead", what="the dead letter")
    assert "cannot tell whether it landed" in store.delivery(delivery_id).last_error
    await asyncio.sleep(0.2)
    assert len(target.calls) == 1


async def test_nothing_is_marked_sending_while_waiting_for_the_rate_limit(
    store: Store, running: Running
) -> None:
    target = FakeNetwork("tg", idempotent=False)
    limiter = AccountLimiter("tg", Limits(posts=Rate(per_second=1 / 3600, burst=1)))
    worker = running.start(Worker(target, store, limiter=limiter))
    first, second = (queue(store, i, ["tg"])[0] for i in "12")
    wake(worker)
    await until(lambda: store.delivery(first).state == "done", what="the first post")
    await asyncio.sleep(0.2)
    # The second waits its turn: a kill now must leave nothing in doubt.
    assert store.delivery(second).state == "pending"
    assert store.parts(second) == []
    assert store.interrupted() == []
    assert target.texts() == ["post 1"]


async def test_a_low_server_budget_slows_the_account_before_a_429(
    store: Store, running: Running
) -> None:
    target = FakeNetwork("masto")
    reset = time.time() + 0.7
    target.budget = ServerBudget(remaining=3, reset_at=reset, limit=300)
    worker = running.start(Worker(target, store))
    queue(store, "1", ["masto"])
    queue(store, "2", ["masto"])
    wake(worker)
    await until(lambda: len(target.posts) == 2, timeout=3, what="both posts")
    first, second = target.published_at("post 1")[0], target.published_at("post 2")[0]
    assert second >= reset - 0.01
    assert second - first > 0.3


async def test_a_failing_database_pauses_the_worker_and_nothing_is_lost_or_doubled(
    store: Store, running: Running
) -> None:
    """The database starts refusing writes right after a post landed (the disk filled up)."""

    def disk_fills(text: str) -> None:
        store.db.execute("PRAGMA query_only = ON")
        asyncio.get_running_loop().call_later(
            0.5, lambda: store.db.execute("PRAGMA query_only = OFF")
        )

    target = FakeNetwork("masto", on_publish=disk_fills)
    metrics = Metrics()
    worker = running.start(Worker(target, store, metrics=metrics))
    (delivery_id,) = queue(store, "1", ["masto"])
    wake(worker)
    await until(lambda: store.delivery(delivery_id).state == "done", timeout=5, what="delivery")
    assert target.texts() == ["post 1"]
    assert [c.retrying for c in target.calls] == [False, True]
    assert metrics.registry.get_sample_value(
        "relaybird_store_errors_total", {"operation": "deliver"}
    )
    assert not running.tasks[0].done()


async def test_a_failing_database_without_idempotency_dead_letters_rather_than_repeats(
    store: Store, running: Running
) -> None:
    def disk_fills(text: str) -> None:
        store.db.execute("PRAGMA query_only = ON")
        asyncio.get_running_loop().call_later(
            0.5, lambda: store.db.execute("PRAGMA query_only = OFF")
        )

    target = FakeNetwork("tg", idempotent=False, on_publish=disk_fills)
    worker = running.start(Worker(target, store))
    (delivery_id,) = queue(store, "1", ["tg"])
    wake(worker)
    await until(lambda: store.delivery(delivery_id).state == "dead", timeout=5, what="dead")
    assert target.texts() == ["post 1"]
    assert len(target.calls) == 1


async def test_a_requeued_dead_letter_is_picked_up_without_a_wake(
    store: Store, running: Running
) -> None:
    target = FakeNetwork("bsky", failures={"post 1": [PermanentError("refused")]})
    worker = running.start(Worker(target, store, idle_check=0.2))
    (delivery_id,) = queue(store, "1", ["bsky"])
    wake(worker)
    await until(lambda: store.delivery(delivery_id).state == "dead", what="the dead letter")
    await asyncio.sleep(0.1)
    # As `relaybird retry` does from another process: no event wakes the worker.
    other = Store(store.path)
    assert other.requeue(delivery_id) == 1
    other.close()
    await until(lambda: store.delivery(delivery_id).state == "done", timeout=2, what="retry")
    assert target.texts() == ["post 1"]


async def test_retrying_a_dead_parent_brings_back_the_thread_its_replies_were_skipped_from(
    store: Store, running: Running
) -> None:
    target = FakeNetwork("tg", failures={"post 1": [PermanentError("chat not found")]})
    worker = running.start(Worker(target, store))
    (parent_id,) = queue(store, "1", ["tg"])
    (reply_id,) = queue(store, "2", ["tg"], reply_to="1")
    (grandchild_id,) = queue(store, "3", ["tg"], reply_to="2")
    (other_id,) = queue(store, "4", ["tg"])
    wake(worker)
    await until(lambda: store.delivery(grandchild_id).state == "skipped", what="the thread skipped")
    await until(lambda: store.delivery(other_id).state == "done", what="the unrelated post")
    assert store.delivery(parent_id).state == "dead"
    assert store.delivery(reply_id).last_error.startswith("its parent has no copy on tg")
    # The operator fixes the chat and runs `relaybird retry ID`.
    assert store.requeue(parent_id) == 1
    wake(worker)
    await until(lambda: store.delivery(grandchild_id).state == "done", what="the thread restored")
    by_text = {text: parent for text, parent in target.posts.values()}
    copies = {n: store.mapping("source", n, "tg") for n in "123"}
    assert all(copies.values())
    assert by_text["post 2"] == copies["1"].first.id  # type: ignore[union-attr]
    assert by_text["post 3"] == copies["2"].first.id  # type: ignore[union-attr]
    assert target.texts().count("post 4") == 1


async def test_deliveries_record_metrics_by_route_target_and_outcome(
    store: Store, running: Running
) -> None:
    target = FakeNetwork("bsky", failures={"post 1": [TemporaryError("500")]})
    metrics = Metrics()
    worker = running.start(Worker(target, store, metrics=metrics))
    post = Post(id="1", text="post 1", created_at="2020-01-01T00:00:00+00:00")
    (delivery_id,) = store.accept(Event(EventKind.POST, "source", post), [Planned("r", "bsky")])
    wake(worker)
    await until(lambda: store.delivery(delivery_id).state == "done", timeout=5, what="delivery")
    sample = metrics.registry.get_sample_value
    assert (
        sample("relaybird_deliveries_total", {"route": "r", "target": "bsky", "outcome": "retried"})
        == 1
    )
    assert (
        sample("relaybird_deliveries_total", {"route": "r", "target": "bsky", "outcome": "done"})
        == 1
    )
    assert sample("relaybird_retries_total", {"target": "bsky", "cause": "error"}) == 1
    assert sample("relaybird_delivery_latency_seconds_count", {"target": "bsky"}) == 1
    # Published in 2020: the source latency is years, and is recorded as such.
    assert sample("relaybird_source_latency_seconds_sum", {"target": "bsky"}) > 3600 * 24 * 365


async def test_an_answer_asks_the_target_network_what_a_reply_to_that_post_needs(
    store: Store, running: Running
) -> None:
    """Someone's post has no mapping: the adapter is asked, and the copy hangs where it said."""
    target = FakeNetwork("bsky")
    worker = running.start(Worker(target, store))
    answer = Post(id="note-1", text="thanks, on it", reply_to="their-post")
    delivery_id = store.enqueue(Planned("inbox", "bsky"), "answer", "tg", answer)
    assert delivery_id is not None
    wake(worker)
    await until(lambda: store.delivery(delivery_id).state == "done", what="the answer")
    assert list(target.posts.values()) == [("thanks, on it", "their-post")]
    copy = store.mapping("tg", "note-1", "bsky")
    assert copy is not None and copy.root.id == "root-of-their-post"
