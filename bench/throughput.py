"""Deliveries per second under a burst, the relay's CPU seconds per delivery, and its memory.

The daemon is a real `relaybird run` process (its CPU and RSS read from /proc); the sandboxes run in
this process with their rate limits relaxed, and the relay's own pacing is lifted in the config, so
the burst drains as fast as the relay can carry it. One Mastodon source account is routed to
`--targets` accounts (Bluesky, Telegram, Mastodon, then round again); the burst is `--posts` posts
published back to back through Mastodon.py, each becoming one delivery per target.

Figures:
  * deliveries/s: copies stored / (last copy stored - first source post stored), server clocks;
  * CPU s per delivery: the daemon's user+system CPU over the burst / deliveries, which is the
    relay's own overhead (the servers run elsewhere); its inverse is deliveries per CPU-second,
    i.e. per core;
  * RSS idle (after start-up and a warm-up, before the burst) and the peak under load.

    python bench/throughput.py                      # 500 posts -> 3 targets = 1,500 deliveries
    python bench/throughput.py --posts 2000 --targets 6
    python bench/throughput.py --profile             # sample the daemon during the burst
                                                     # (py-spy if installed, else cProfile)
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from contextlib import nullcontext

from common import (
    Account,
    RelayProcess,
    Route,
    RssSampler,
    Sampler,
    World,
    by_text,
    print_profile,
    world,
)
from mastodon import Mastodon

NETWORKS = ("bluesky", "telegram", "mastodon")
RATE_TARGET = 500.0
IDLE_RSS_TARGET_MB = 80.0


def make_target(w: World, index: int) -> Account:
    network = NETWORKS[index % len(NETWORKS)]
    name = f"t{index}"
    if network == "bluesky":
        return w.bluesky(name)
    if network == "telegram":
        return w.telegram(name)
    return w.mastodon(name)


def publish(client: Mastodon, texts: list[str], writers: int) -> None:
    """Post every text as fast as a few clients in parallel can (a newsroom's backlog at once)."""
    chunks = [texts[i::writers] for i in range(writers)]
    threads = [
        threading.Thread(target=lambda c=chunk: [client.status_post(t) for t in c])
        for chunk in chunks
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--posts", type=int, default=500)
    parser.add_argument("--targets", type=int, default=3)
    parser.add_argument("--writers", type=int, default=4, help="parallel posting clients")
    parser.add_argument("--idle", type=float, default=5.0, help="seconds of idle before the burst")
    parser.add_argument("--log-level", default="warning", choices=["debug", "info", "warning"])
    parser.add_argument("--profile", action="store_true", help="cProfile the daemon")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()

    with world(keep=args.keep) as w:
        source = w.mastodon("src")
        targets = [make_target(w, i) for i in range(args.targets)]
        config = w.write_config(
            [Route("burst", "src", tuple(t.name for t in targets))], log_level=args.log_level
        )
        spy = args.profile and Sampler.available()
        profile_path = w.folder / "daemon.prof" if args.profile and not spy else None
        relay = RelayProcess(config, w.env(), log_level=args.log_level, profile=profile_path)
        client = Mastodon(
            api_base_url=w.masto.base_url, access_token=source.token, version_check_mode="none"
        )
        per_post = 1 + len(targets)
        relay.start()
        try:
            for warm in range(5):
                before = w.observer.count()
                client.status_post(f"warm-up {warm}")
                w.observer.wait_count(before + per_post, 60)
            cpu_before_idle = relay.cpu_seconds()
            time.sleep(args.idle)
            idle_cpu = relay.cpu_seconds() - cpu_before_idle
            idle_rss = relay.rss()

            texts = [f"burst post {n}" for n in range(args.posts)]
            first = w.observer.count()
            cpu_before = relay.cpu_seconds()
            wall_before = time.perf_counter()
            sampling = Sampler(relay.pid, w.folder / "burst.txt") if spy else None
            with RssSampler(relay) as sampler, sampling or nullcontext():
                publish(client, texts, args.writers)
                posted = time.perf_counter()
                done = w.observer.wait_count(first + args.posts * per_post, 600)
                cpu_after = relay.cpu_seconds()
            if not done:
                raise RuntimeError(
                    f"only {w.observer.count() - first} of {args.posts * per_post} stored;"
                    f" log:\n{relay.log()[-3000:]}"
                )
            peak_rss = max(sampler.samples, default=0)
            high_water = relay.peak_rss()
            landed = w.observer.since(first)
        finally:
            relay.stop()
        grouped = by_text(w, landed)
        wrong = [t for t in texts if len(grouped.get(t, [])) != per_post]
        if wrong:
            raise RuntimeError(f"{len(wrong)} posts not copied exactly once, e.g. {wrong[:3]}")
        sources = [s for s in landed if s.network == "mastodon" and s.account == source.key]
        copies = [s for s in landed if s not in sources]
        start = min(s.at for s in sources)
        end = max(s.at for s in copies)
        deliveries = len(copies)
        cpu = cpu_after - cpu_before
        rate = deliveries / (end - start)
        per_cpu = deliveries / cpu if cpu else float("inf")

        print(f"burst: {args.posts} posts -> {len(targets)} targets = {deliveries} deliveries")
        print(f"  posting took                 {posted - wall_before:8.2f} s")
        print(f"  first post -> last copy      {end - start:8.2f} s")
        print(f"  deliveries per second        {rate:8.0f}")
        print(
            f"  relay CPU over the burst     {cpu:8.2f} s ({cpu / (end - start):.0%} of one core)"
        )
        print(f"  relay CPU per delivery       {cpu / deliveries * 1000:8.2f} ms")
        print(
            f"  deliveries per CPU-second    {per_cpu:8.0f}"
            f"   target >= {RATE_TARGET:g}: {'met' if per_cpu >= RATE_TARGET else 'MISSED'}"
        )
        print(
            f"  RSS idle                     {idle_rss / 1e6:8.1f} MB"
            f"   target <= {IDLE_RSS_TARGET_MB:g} MB:"
            f" {'met' if idle_rss / 1e6 <= IDLE_RSS_TARGET_MB else 'MISSED'}"
        )
        print(f"  idle CPU                     {idle_cpu / args.idle:8.1%} of one core")
        print(f"  RSS peak under load          {peak_rss / 1e6:8.1f} MB (sampled every 50 ms)")
        print(f"  RSS high-water mark          {high_water / 1e6:8.1f} MB (VmHWM)")
        if profile_path is not None:
            print_profile(profile_path)
        if sampling is not None:
            sampling.report()
    return 0


if __name__ == "__main__":
    sys.exit(main())
