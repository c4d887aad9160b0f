"""A short seeded fault campaign, end to end: posts on all three networks with two-way routes while
the sandboxes fail, stall and drop, and the daemon is killed with SIGKILL and restarted. Nothing may be
missing or doubled and every thread must hold together (Telegram: at most once, with whatever is
missing dead-lettered). The campaign itself is in tests/campaign.py; bench/fault_campaign.py runs
long ones."""

from __future__ import annotations

from pathlib import Path

import pytest
from campaign import Settings, run_campaign


@pytest.mark.parametrize("seed", [5, 2])
def test_seeded_fault_campaign_loses_nothing_and_doubles_nothing(tmp_path: Path, seed: int) -> None:
    said: list[str] = []
    settings = Settings(seed=seed, posts=24, kills=3, fault_chance=0.5, say=said.append)
    report = run_campaign(settings, tmp_path)
    summary = report.render() + "\n" + "\n".join(said)
    assert report.ok, summary
    assert report.kills == 3, summary
    assert sum(sum(fired.values()) for fired in report.faults.values()) >= 5, summary
    assert len(report.posted) == 24
    assert any(post.parent is not None for post in report.posted)
    for network, count in report.targets.items():
        assert count.expected == sum(1 for p in report.posted if p.network != network)
        assert count.doubled == 0 and count.broken_threads == 0, summary
