"""Two-way routes between all three networks: a burst of posts, and no copy ever mirrored back."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator

import pytest
from harness import Daemon, free_port, serving, wait_for
from realpds import RealPds
from sides import BlueskySide, MastodonSide, Side, TelegramSide

from relaybird.sandbox.mastodon import MastodonSandbox
from relaybird.sandbox.telegram import TelegramSandbox

pytestmark = pytest.mark.pds

BURST = 4


@pytest.fixture
def sides(real_pds: RealPds) -> Iterator[list[Side]]:
    masto, tg = MastodonSandbox(), TelegramSandbox(per_chat_limit=1000)
    with serving(masto, tg) as loop:
        yield [
            MastodonSide(loop, masto, "masto", "twoway"),
            BlueskySide(real_pds, "bsky", "twoway"),
            TelegramSide(loop, tg, "tg", "twoway_channel"),
        ]


def test_burst_on_every_network_reaches_the_others_and_never_echoes(
    sides: list[Side], tmp_path: pytest.TempPathFactory
) -> None:
    port = free_port()
    routes = "".join(
        f'[[routes]]\nname = "from_{s.name}"\nfrom = ["{s.name}"]\n'
        f"to = [{', '.join(repr(o.name).replace(chr(39), chr(34)) for o in sides if o is not s)}]\n\n"
        for s in sides
    )
    config = tmp_path / "relaybird.toml"  # type: ignore[operator]
    config.write_text(
        f'[relaybird]\nstate = "state.sqlite3"\nlisten = "127.0.0.1:{port}"\n\n'
        + "\n".join(s.account_toml() for s in sides)
        + "\n"
        + routes
    )
    env = {k: v for s in sides for k, v in s.env().items()}
    daemon = Daemon(config, port, env).start()
    try:
        for round_number in range(BURST):
            for side in sides:
                side.post(f"{side.network} post {round_number}")
        expected = len(sides) * BURST
        for side in sides:
            wait_for(
                lambda side=side: len(side.copies()) >= expected,
                timeout=60,
                what=f"{expected} posts on {side.network}; log:\n{daemon.log()[-3000:]}",
            )
        time.sleep(3)
        for side in sides:
            texts = sorted(c.text for c in side.copies())
            assert texts == sorted(f"{s.network} post {n}" for s in sides for n in range(BURST)), (
                side.network
            )
    finally:
        daemon.stop()
    db = sqlite3.connect(tmp_path / "state.sqlite3")  # type: ignore[operator]
    echoed = db.execute(
        "SELECT COUNT(*) FROM deliveries d JOIN copies c"
        " ON c.target_account = d.source_account AND c.target_id = d.source_id"
    ).fetchone()[0]
    assert echoed == 0
    assert db.execute("SELECT COUNT(*) FROM deliveries WHERE state != 'done'").fetchone()[0] == 0
