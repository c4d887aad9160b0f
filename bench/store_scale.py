"""How the SQLite store behaves at a million mapped posts: file size and the lookups the relay makes.

The rows are written straight into the real schema (a `Store` is opened first so that its migrations
create the tables), with `executemany` in a handful of transactions: building them through the relay
would take hours and would measure the networks, not the store. Every mapped post leaves what a real
delivery leaves: a `seen` row for its source event, a `deliveries` row with its JSON payload, a `parts`
row, a `mappings` row and a `copies` row. Half the rows are mirrored from a Mastodon account to Bluesky,
half to Telegram, so the indexes see realistic key shapes.

Lookups are then timed one call at a time through the `Store` methods the relay calls on its hot paths:
`mapping()` (every reply and edit), `echo_origin()` and `is_copy()` (every event from a stream),
`holders()` (every echo), `was_relayed()` (every edit or delete) and `next_delivery()` (every worker
turn). The page cache is warm, as it is on a running relay.

    python bench/store_scale.py                 # 1,000,000 mapped posts
    python bench/store_scale.py --rows 200000   # quicker
    python bench/store_scale.py --keep          # leave the database file for a look
    python bench/store_scale.py --after-retention   # payloads slimmed, seen events pruned
"""

from __future__ import annotations

import argparse
import math
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from relaybird.model import Author, Post, Span, SpanKind
from relaybird.store import Store

SOURCE = "news_masto"
TARGETS = ("news_bsky", "news_tg")
BATCH = 50_000
DID = "did:plc:3jpt2mvvsumj2r7eqk4gzzjz"


def payload_template() -> str:
    """A typical text post as the outbox stores it (a link, a hashtag, an author), with a hole.

    Serialising a million `Post`s would time Python, not SQLite: one is serialised and the post
    number is filled into its text.
    """
    link = "https://example.org/story/NUMBER"
    text = f"Post number NUMBER: read {link} #news"
    start = text.index(link)
    post = Post(
        id="1100000000NUMBER",
        text=text,
        spans=[
            Span(start, start + len(link), SpanKind.LINK, url=link),
            Span(len(text) - 5, len(text), SpanKind.HASHTAG, tag="news"),
        ],
        permalink="https://mastodon.example/@news/1100000000NUMBER",
        author=Author("mastodon", "news@mastodon.example", "The News"),
        created_at="2026-01-01T00:00:00Z",
        language="en",
    )
    return post.to_json()


PAYLOAD = payload_template()


def payload(number: int) -> str:
    return PAYLOAD.replace("NUMBER", f"{number:09d}")


def target_id(target: str, number: int) -> tuple[str, str, str]:
    """The id, URL and CID a copy of post `number` gets on `target`, shaped like the real ones."""
    if target == "news_bsky":
        rkey = f"3l{number:011d}"
        return (
            f"at://{DID}/app.bsky.feed.post/{rkey}",
            f"https://bsky.app/profile/news.example/post/{rkey}",
            f"bafyreie{number:052d}",
        )
    return f"-1001234567890:{number}", f"https://t.me/news/{number}", ""


def source_id(number: int) -> str:
    return str(110_000_000_000_000_000 + number)


def mapped(rows: int) -> Iterator[tuple[int, int, str]]:
    """(delivery id, source number, target) for each of `rows` mapped posts."""
    for index in range(rows):
        yield index + 1, index // len(TARGETS), TARGETS[index % len(TARGETS)]


def build(store: Store, rows: int, after_retention: bool = False) -> float:
    """Fill the tables; returns the seconds it took.

    `after_retention` builds what is left once the posts are older than `retention_days`: the
    mapped deliveries keep their row but not their payload, and the seen events are gone.
    """
    started = time.perf_counter()
    now = time.time()
    db = store.db
    pending: list[tuple[int, int, str]] = []

    def flush() -> None:
        with store.transaction():
            seen = [
                (SOURCE, source_id(n), "post", now)
                for _, n, t in pending
                if t == TARGETS[0] and not after_retention
            ]
            db.executemany(
                "INSERT OR IGNORE INTO seen (account, source_id, kind, at) VALUES (?, ?, ?, ?)",
                seen,
            )
            db.executemany(
                "INSERT INTO deliveries (id, route, kind, source_account, source_id,"
                " parent_source_id, target_account, version, payload, state, attempts, next_at,"
                " last_error, created_at, done_at)"
                " VALUES (?, 'mirror', 'post', ?, ?, NULL, ?, '', ?, 'done', 1, 0, '', ?, ?)",
                [
                    (d, SOURCE, source_id(n), t, "" if after_retention else payload(n), now, now)
                    for d, n, t in pending
                ],
            )
            refs = [(d, n, t, *target_id(t, n)) for d, n, t in pending]
            db.executemany(
                "INSERT INTO parts (delivery_id, idx, key, state, target_id, target_cid,"
                " target_url) VALUES (?, 0, ?, 'sent', ?, ?, ?)",
                [(d, f"key{d:012d}", tid, cid, url) for d, _, _, tid, url, cid in refs],
            )
            db.executemany(
                "INSERT INTO mappings (source_account, source_id, target_account, first_id,"
                " first_url, last_id, last_cid, root_id, root_cid, delivery_id, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (SOURCE, source_id(n), t, tid, url, tid, cid, tid, cid, d, now)
                    for d, n, t, tid, url, cid in refs
                ],
            )
            db.executemany(
                "INSERT INTO copies (target_account, target_id, source_account, source_id)"
                " VALUES (?, ?, ?, ?)",
                [(t, tid, SOURCE, source_id(n)) for _, n, t, tid, _, _ in refs],
            )
        pending.clear()

    for row in mapped(rows):
        pending.append(row)
        if len(pending) >= BATCH:
            flush()
            if sys.stdout.isatty():
                print(f"\r  {row[0]:,} / {rows:,} rows", end="", flush=True)
    if pending:
        flush()
    if sys.stdout.isatty():
        print()
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return time.perf_counter() - started


def timed(
    calls: int,
    sample: Callable[[random.Random], tuple[Callable[..., Any], tuple[Any, ...]]],
    seed: int,
) -> list[float]:
    """Milliseconds per call, one call at a time, arguments drawn before the clock starts."""
    rng = random.Random(seed)
    out = []
    for _ in range(calls):
        function, args = sample(rng)
        started = time.perf_counter_ns()
        function(*args)
        out.append((time.perf_counter_ns() - started) / 1e6)
    return out


def percentile(values: list[float], fraction: float) -> float:
    """Nearest rank: of 100 samples, p99 is the 99th smallest."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered), math.ceil(fraction * len(ordered))) - 1)]


def table_sizes(store: Store) -> list[tuple[str, int]]:
    """Bytes per table and index, when this SQLite has the dbstat table."""
    try:
        rows = store.db.execute(
            "SELECT name, SUM(pgsize) AS bytes FROM dbstat GROUP BY name ORDER BY bytes DESC"
        ).fetchall()
    except Exception:
        return []
    return [(str(row[0]), int(row[1])) for row in rows]


def measure(store: Store, rows: int, calls: int) -> dict[str, list[float]]:
    posts = rows // len(TARGETS)

    def existing(rng: random.Random) -> int:
        return rng.randrange(posts)

    def a_target(rng: random.Random) -> str:
        return TARGETS[rng.randrange(len(TARGETS))]

    def copy_of(rng: random.Random) -> tuple[str, str]:
        target = a_target(rng)
        return target, target_id(target, existing(rng))[0]

    cases: dict[str, Callable[[random.Random], tuple[Callable[..., Any], tuple[Any, ...]]]] = {
        "mapping() hit": lambda r: (store.mapping, (SOURCE, source_id(existing(r)), a_target(r))),
        "mapping() miss": lambda r: (
            store.mapping,
            (SOURCE, source_id(posts + 1 + existing(r)), a_target(r)),
        ),
        "echo_origin() of a copy": lambda r: (store.echo_origin, copy_of(r)),
        "echo_origin() of a new post": lambda r: (
            store.echo_origin,
            (SOURCE, source_id(posts + existing(r))),
        ),
        "is_copy() of a copy": lambda r: (store.is_copy, copy_of(r)),
        "is_copy() of a new post": lambda r: (
            store.is_copy,
            (SOURCE, source_id(posts + existing(r))),
        ),
        "was_relayed()": lambda r: (store.was_relayed, (SOURCE, source_id(existing(r)))),
        "next_delivery() (queue empty)": lambda r: (
            store.next_delivery,
            (a_target(r), time.time()),
        ),
    }
    results = {
        name: timed(calls, sample, seed) for seed, (name, sample) in enumerate(cases.items())
    }
    few = calls if copies_indexed_by_source(store) else max(1, calls // 100)
    results["holders() of an origin"] = timed(
        few, lambda r: (store.holders, (SOURCE, source_id(existing(r)))), 99
    )
    return results


def copies_indexed_by_source(store: Store) -> bool:
    """Whether the schema has an index that finds copies by their source (holders() needs it)."""
    for index in store.db.execute("PRAGMA index_list(copies)").fetchall():
        columns = [c[2] for c in store.db.execute(f"PRAGMA index_info({index[1]!r})").fetchall()]
        if columns[:2] == ["source_account", "source_id"]:
            return True
    return False


PROPOSED_INDEX = "CREATE INDEX copies_by_source ON copies (source_account, source_id)"


def holders_with_proposed_index(store: Store, rows: int, calls: int) -> list[float]:
    """`holders()` again after adding the index it lacks, to show what the index would buy."""
    store.db.execute(PROPOSED_INDEX)
    posts = rows // len(TARGETS)
    return timed(calls, lambda r: (store.holders, (SOURCE, source_id(r.randrange(posts)))), 99)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="mapped posts (mapping rows)")
    parser.add_argument("--calls", type=int, default=20_000, help="timed calls per lookup")
    parser.add_argument("--keep", action="store_true", help="keep the database file")
    parser.add_argument(
        "--after-retention",
        action="store_true",
        help="posts older than retention_days: payloads slimmed, seen events pruned",
    )
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="relaybird-store-"))
    path = folder / "state.sqlite3"
    try:
        store = Store(path)
        shape = " (as left after retention)" if args.after_retention else ""
        print(f"building {args.rows:,} mapped posts{shape} in {path}")
        seconds = build(store, args.rows, args.after_retention)
        store.close()
        size = path.stat().st_size
        print(
            f"built in {seconds:.1f} s; file {size / 1e6:.1f} MB"
            f" ({size / args.rows:.0f} bytes per mapped post)"
        )
        store = Store(path)
        for name, nbytes in table_sizes(store)[:12]:
            print(f"  {name:<34} {nbytes / 1e6:8.1f} MB")
        results = measure(store, args.rows, args.calls)
        with_index = None
        if not copies_indexed_by_source(store):
            with_index = holders_with_proposed_index(store, args.rows, args.calls)
        store.close()
        print(f"\nlookups at {args.rows:,} mapped posts (ms per call, warm cache)")
        print(f"  {'call':<34} {'n':>6} {'p50':>8} {'p99':>8} {'mean':>8}")
        for name, values in results.items():
            print(
                f"  {name:<34} {len(values):>6} {percentile(values, 0.5):8.3f}"
                f" {percentile(values, 0.99):8.3f} {statistics.fmean(values):8.3f}"
            )
        if with_index is not None:
            print(
                f"  {'holders(), with copies_by_source':<34} {len(with_index):>6}"
                f" {percentile(with_index, 0.5):8.3f} {percentile(with_index, 0.99):8.3f}"
                f" {statistics.fmean(with_index):8.3f}"
            )
            print(
                "  (holders() scans `copies` by source: an index"
                f" `{PROPOSED_INDEX}` makes it a lookup; not in this schema)"
            )
        worst_name, worst = max(
            ((k, percentile(v, 0.99)) for k, v in results.items()), key=lambda kv: kv[1]
        )
        verdict = "met" if worst <= 1.0 else "MISSED"
        print(
            f"\ntarget: lookup <= 1 ms at {args.rows:,} rows -> {verdict}"
            f" (slowest p99: {worst_name} {worst:.3f} ms)"
        )
    finally:
        if args.keep:
            print(f"kept {path}")
        else:
            shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
