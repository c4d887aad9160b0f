"""A long fault campaign: posts on Mastodon, Bluesky and Telegram with two-way routes between them,
faults at seeded random moments (429s, 5xx, delays, resets, malformed answers, dropped, stalled and
refused streams, creates that land and are never answered), the daemon killed with SIGKILL and
restarted; then what every server holds is compared with what was posted. Prints the counts and
exits 1 if anything is missing (beyond Telegram's documented at-most-once), doubled, or out of
its thread. The campaign itself lives in tests/campaign.py, shared with the short one CI runs.

    python bench/fault_campaign.py                                  # seed 1, 200 posts, 8 kills
    python bench/fault_campaign.py --seed 7 --posts 1000 --kills 30
    python bench/fault_campaign.py --seeds 1 2 3 4 5 --posts 100   # several seeds in a row
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.campaign import Settings, run_campaign


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--seeds", type=int, nargs="+", help="run one campaign per seed")
    parser.add_argument("--posts", type=int, default=200)
    parser.add_argument("--kills", type=int, default=8)
    parser.add_argument("--fault-chance", type=float, default=0.35, help="per post")
    parser.add_argument("--hang-chance", type=float, default=0.5, help="share of kills mid-create")
    parser.add_argument("--reply-chance", type=float, default=0.4)
    parser.add_argument("--pace", type=float, default=0.15, help="mean seconds between posts")
    parser.add_argument("--max-fault-times", type=int, default=3)
    parser.add_argument("--max-fault-seconds", type=float, default=2.0)
    parser.add_argument("--drain-timeout", type=float, default=300.0)
    parser.add_argument("--quiet", action="store_true", help="print only the counts")
    parser.add_argument("--keep", action="store_true", help="keep config, state and daemon log")
    args = parser.parse_args()

    failed = 0
    for seed in args.seeds or [args.seed]:
        settings = Settings(
            seed=seed,
            posts=args.posts,
            kills=args.kills,
            fault_chance=args.fault_chance,
            hang_chance=args.hang_chance,
            reply_chance=args.reply_chance,
            pace=args.pace,
            max_fault_times=args.max_fault_times,
            max_fault_seconds=args.max_fault_seconds,
            drain_timeout=args.drain_timeout,
            say=(lambda _: None) if args.quiet else (lambda line: print(line, flush=True)),
        )
        folder = Path(tempfile.mkdtemp(prefix=f"relaybird-campaign-{seed}-"))
        report = run_campaign(settings, folder)
        print(report.render(), flush=True)
        failed += not report.ok
        if args.keep or not report.ok:
            print(f"  kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
