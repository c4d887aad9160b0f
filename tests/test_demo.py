"""`relaybird demo`: the first thing a new user runs, with no accounts and no internet."""

from __future__ import annotations

import os
import subprocess
import sys


def test_demo_mirrors_the_whole_story_and_says_where_every_copy_landed() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "relaybird.cli", "demo"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for story in ("link, hashtag, Arabic", "thread 1/3", "thread 3/3", "long post", "image with"):
        assert story in out
    assert "thread of 2" in out  # the long post, split for Bluesky's 300 graphemes
    assert "Bluesky holds 7 posts; the Telegram channel holds 6 messages." in out
    assert out.rstrip().endswith("every copy arrived")
