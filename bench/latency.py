"""End-to-end propagation latency: a source post accepted -> every target copy stored.

The daemon is a real `relaybird run` process; the three sandbox servers run in this process on
127.0.0.1 with their rate limits relaxed, and the relay's own pacing (`[accounts.X.rate_limit]`) is
lifted in the generated config, so that what is measured is the relay's path: stream in, route,
outbox, worker, create call. Both ends are timed inside the servers (see `common.Observer`): the
moment the source server stored the post, and the moment each target server stored its copy.

For N routes there is one source account and N target accounts (one route each), cycling through
Bluesky, Telegram and Mastodon; a post's latency is until its last copy is stored. Posts are sent
one at a time, each after the previous one's copies all landed (latency, not throughput).

    python bench/latency.py                           # 1, 10, 100 routes from Mastodon; 1 route from each
    python bench/latency.py --routes 1 10 --posts 300
    python bench/latency.py --source bluesky --routes 1 10 100
    python bench/latency.py --profile                  # cProfile the daemon too
"""

from __future__ import annotations

import argparse
import random
import resource
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from datetime import UTC, datetime

from common import (
    BSKY_PASSWORD,
    Account,
    RelayProcess,
    Route,
    Sampler,
    Stored,
    World,
    by_text,
    percentile,
    print_profile,
    summary,
    world,
)

TARGET_NETWORKS = ("bluesky", "telegram", "mastodon")
P50_TARGET_MS = 50.0
P99_TARGET_MS = 250.0


def poster(w: World, source: Account) -> Callable[[str], object]:
    """How a person posts on the source network, through that network's own client or app."""
    if source.network == "mastodon":
        from mastodon import Mastodon

        client = Mastodon(
            api_base_url=w.masto.base_url, access_token=source.token, version_check_mode="none"
        )
        return lambda text: client.status_post(text)
    if source.network == "bluesky":
        from atproto import Client

        bsky = Client(base_url=w.bsky.base_url)
        bsky.login(source.username, BSKY_PASSWORD, fetch_bsky_profile=False)

        def post_bluesky(text: str) -> None:
            now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
            bsky.com.atproto.repo.create_record(
                {
                    "repo": source.key,
                    "collection": "app.bsky.feed.post",
                    "record": {"$type": "app.bsky.feed.post", "text": text, "createdAt": now},
                }
            )

        return post_bluesky
    channel = f"@{source.username}"
    return lambda text: w.loop.call(lambda: w.tg.post_as_user(channel, None, text))


def make_account(w: World, network: str, name: str) -> Account:
    if network == "mastodon":
        return w.mastodon(name)
    if network == "bluesky":
        return w.bluesky(name)
    return w.telegram(name)


def run_case(
    source_network: str, routes: int, posts: int, gap: float, profile: bool, keep: bool
) -> dict[str, list[float]]:
    """One daemon with `routes` routes; returns per-post and per-copy latencies in ms."""
    with world(keep=keep) as w:
        source = make_account(w, source_network, "src")
        targets = [
            make_account(w, TARGET_NETWORKS[i % len(TARGET_NETWORKS)], f"t{i}")
            for i in range(routes)
        ]
        config = w.write_config([Route(f"r{i}", "src", (t.name,)) for i, t in enumerate(targets)])
        spy = profile and Sampler.available()
        profile_path = w.folder / "daemon.prof" if profile and not spy else None
        relay = RelayProcess(config, w.env(), profile=profile_path)
        started = time.perf_counter()
        relay.start()
        print(
            f"  {routes} route(s) from {source_network}: daemon healthy in"
            f" {time.perf_counter() - started:.1f} s (pid {relay.pid})",
            flush=True,
        )
        sampling = None
        try:
            post = poster(w, source)
            for warm in range(3):
                before = w.observer.count()
                post(f"warm-up {warm}")
                if not w.observer.wait_count(before + 1 + routes, 60):
                    raise RuntimeError(f"warm-up copies missing; log:\n{relay.log()[-3000:]}")
            per_post: list[float] = []
            per_copy: list[float] = []
            first = w.observer.count()
            sampling = Sampler(relay.pid, w.folder / "samples.txt") if spy else None
            relay_cpu, servers_cpu = relay.cpu_seconds(), own_cpu()
            with sampling or nullcontext():
                measure(w, relay, source, routes, posts, gap, post, per_post, per_copy)
            relay_cpu = relay.cpu_seconds() - relay_cpu
            servers_cpu = own_cpu() - servers_cpu
            print(
                f"    CPU per post: relay {relay_cpu / posts * 1000:.1f} ms"
                f" ({relay_cpu / posts / routes * 1000:.2f} ms per copy), sandbox servers and"
                f" the posting client {servers_cpu / posts * 1000:.1f} ms",
                flush=True,
            )
            check_texts(w, w.observer.since(first), posts, routes)
        finally:
            relay.stop()
        if profile_path is not None:
            print_profile(profile_path)
        if sampling is not None:
            sampling.report()
    return {"post": per_post, "copy": per_copy}


def measure(
    w: World,
    relay: RelayProcess,
    source: Account,
    routes: int,
    posts: int,
    gap: float,
    post: Callable[[str], object],
    per_post: list[float],
    per_copy: list[float],
) -> None:
    """Post one at a time; each post's copies must all land before the next goes out."""
    rng = random.Random(routes)
    for number in range(posts):
        before = w.observer.count()
        post(f"latency {routes} routes, post {number}")
        if not w.observer.wait_count(before + 1 + routes, 60):
            raise RuntimeError(f"post {number}: copies missing; log:\n{relay.log()[-3000:]}")
        landed = w.observer.since(before)
        origin, copies = split_origin(landed, source)
        per_copy += [(c.at - origin.at) * 1000 for c in copies]
        per_post.append((max(c.at for c in copies) - origin.at) * 1000)
        time.sleep(rng.uniform(0, 2 * gap))


def own_cpu() -> float:
    """CPU seconds of this process: the three sandbox servers and the person's client."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def split_origin(landed: list[Stored], source: Account) -> tuple[Stored, list[Stored]]:
    origins = [s for s in landed if s.network == source.network and s.account == source.key]
    if len(origins) != 1:
        raise RuntimeError(f"expected one source post among {landed}")
    return origins[0], [s for s in landed if s is not origins[0]]


def check_texts(w: World, items: list[Stored], posts: int, routes: int) -> None:
    """Every measured post was copied once to every target, with its own text (no mix-ups)."""
    grouped = by_text(w, items)
    for number in range(posts):
        found = grouped.get(f"latency {routes} routes, post {number}", [])
        if len(found) != routes + 1:
            raise RuntimeError(f"post {number}: {len(found)} stored, expected {routes + 1}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--routes", type=int, nargs="+", default=[1, 10, 100])
    parser.add_argument(
        "--source",
        choices=["mastodon", "bluesky", "telegram"],
        default=None,
        help="source network for every case (default: Mastodon, plus 1 route from each other)",
    )
    parser.add_argument(
        "--posts", type=int, default=None, help="posts per case (default 100, 40 at 100 routes)"
    )
    parser.add_argument("--gap", type=float, default=0.05, help="mean pause between posts, s")
    parser.add_argument("--profile", action="store_true", help="cProfile the daemon")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folders")
    args = parser.parse_args()

    cases = [(args.source or "mastodon", n) for n in args.routes]
    if args.source is None and 1 in args.routes:
        cases += [("bluesky", 1), ("telegram", 1)]
    results = []
    for source, routes in cases:
        posts = args.posts or (40 if routes >= 100 else 100)
        print(f"{source} -> {routes} route(s), {posts} posts", flush=True)
        found = run_case(source, routes, posts, args.gap, args.profile, args.keep)
        results.append((source, routes, found))
        print(f"    all copies stored: {summary(found['post'])}")
        print(f"    each copy        : {summary(found['copy'])}", flush=True)

    print("\nend-to-end latency, source post stored -> all copies stored (loopback, ms)")
    print(f"  {'source':<9} {'routes':>6} {'posts':>6} {'p50':>8} {'p99':>8} {'max':>8}  target")
    for source, routes, found in results:
        p50, p99 = percentile(found["post"], 0.5), percentile(found["post"], 0.99)
        met = p50 <= P50_TARGET_MS and p99 <= P99_TARGET_MS
        print(
            f"  {source:<9} {routes:>6} {len(found['post']):>6} {p50:8.1f} {p99:8.1f}"
            f" {max(found['post']):8.1f}  {'met' if met else 'MISSED'}"
        )
    print(f"  (targets: p50 <= {P50_TARGET_MS:g} ms, p99 <= {P99_TARGET_MS:g} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
