"""Every ordered pair of networks, end to end: the daemon as a process, real client libraries, and
what each target server stored checked after each scenario. Bluesky is the real reference PDS.

Telegram cannot be the source of a delete: the Bot API tells bots nothing when a message is deleted,
so that one cell does not exist (see the README).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import regex
from harness import Daemon, LoopThread, free_port, serving, wait_for
from realpds import RealPds
from sides import BlueskySide, Copy, MastodonSide, Side, TelegramSide, small_png

from relaybird.sandbox.mastodon import MastodonSandbox
from relaybird.sandbox.telegram import TelegramSandbox

pytestmark = pytest.mark.pds

NETWORKS = ("mastodon", "bluesky", "telegram")
PAIRS = [(s, t) for s in NETWORKS for t in NETWORKS if s != t]
COUNTER = itertools.count(1)


@dataclass
class World:
    loop: LoopThread
    masto: MastodonSandbox
    tg: TelegramSandbox
    pds: RealPds


@dataclass
class Pair:
    source: Side
    target: Side
    daemon: Daemon

    def new_copies(self, before: int, count: int, timeout: float = 30) -> list[Copy]:
        found = wait_for(
            lambda: (c := self.target.copies()) and len(c) >= before + count and c,
            timeout=timeout,
            what=f"{count} new copies on {self.target.network}; log:\n{self.daemon.log()[-3000:]}",
        )
        return found[before:]


@pytest.fixture(scope="module")
def world(real_pds: RealPds) -> Iterator[World]:
    masto = MastodonSandbox(defer_image_processing=False)
    tg = TelegramSandbox(per_chat_limit=1000)
    with serving(masto, tg) as loop:
        yield World(loop, masto, tg, real_pds)


def make_side(world: World, network: str, role: str) -> Side:
    n = next(COUNTER)
    name = f"{role}_{network}"
    if network == "mastodon":
        return MastodonSide(world.loop, world.masto, name, f"{role}{n}")
    if network == "bluesky":
        return BlueskySide(world.pds, name, f"{role[:3]}{n}")
    return TelegramSide(world.loop, world.tg, name, f"{role}_channel_{n}")


@pytest.fixture(scope="module", params=PAIRS, ids=[f"{s}-to-{t}" for s, t in PAIRS])
def pair(
    request: pytest.FixtureRequest, world: World, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Pair]:
    source_network, target_network = request.param
    source = make_side(world, source_network, "src")
    target = make_side(world, target_network, "dst")
    folder: Path = tmp_path_factory.mktemp(f"{source_network}-{target_network}")
    port = free_port()
    config = folder / "relaybird.toml"
    config.write_text(
        f'[relaybird]\nstate = "state.sqlite3"\nlisten = "127.0.0.1:{port}"\n\n'
        f"{source.account_toml()}\n{target.account_toml()}\n"
        f'[[routes]]\nname = "matrix"\nfrom = ["{source.name}"]\nto = ["{target.name}"]\n'
        f'on_edit = "repost"\n',
        encoding="utf-8",
    )
    daemon = Daemon(config, port, {**source.env(), **target.env()}).start()
    try:
        yield Pair(source, target, daemon)
    finally:
        daemon.stop()


def test_link_hashtag_and_mention_stay_rich_text(pair: Pair) -> None:
    mention, name = pair.source.mention_text()
    link = "https://example.org/matrix/page?x=1"
    text = f"Read {link} #Matrix with {mention} today"
    before = len(pair.target.copies())
    pair.source.post(text, link=link, tag="Matrix")
    (copy,) = pair.new_copies(before, 1)
    assert link in copy.text
    assert any(item.target.rstrip("/") == link for item in copy.links), copy
    assert "matrix" in copy.tags, copy
    assert any(name in item.target for item in copy.links), f"{name} not linked in {copy}"


def test_three_post_thread_stays_a_thread(pair: Pair) -> None:
    before = len(pair.target.copies())
    first = pair.source.post("Matrix thread, part one")
    second = pair.source.post("Matrix thread, part two", reply_to=first)
    pair.source.post("Matrix thread, part three", reply_to=second)
    copies = {c.text: c for c in pair.new_copies(before, 3)}
    one, two, three = (copies[f"Matrix thread, part {n}"] for n in ("one", "two", "three"))
    assert one.reply_to is None
    assert two.reply_to == one.id
    assert three.reply_to == two.id


def test_long_post_is_split_within_the_target_limit(pair: Pair) -> None:
    length = pair.source.limit - 20 if pair.source.limit < 1000 else 1200
    words: list[str] = []
    while len(" ".join(words)) < length - 8:
        words.append(f"w{len(words)}")
    text = " ".join(words)
    before = len(pair.target.copies())
    pair.source.post(text)
    needed = -(-len(text) // pair.target.limit)
    copies = pair.new_copies(before, needed)
    wait_for(
        lambda: sum(len(c.text.split()) for c in pair.target.copies()[before:]) >= len(words),
        what="all words",
    )
    copies = pair.target.copies()[before:]
    assert " ".join(c.text for c in copies).split() == words
    for copy in copies:
        assert len(regex.findall(r"\X", copy.text)) <= pair.target.limit
    for earlier, later in itertools.pairwise(copies):
        assert later.reply_to == earlier.id


def test_two_images_keep_their_alt_text(pair: Pair) -> None:
    before = len(pair.target.copies())
    images = [(small_png(1), "A red square"), (small_png(2), "A blue square")]
    pair.source.post("Two pictures", images=images)
    (copy,) = pair.new_copies(before, 1)
    assert copy.text == "Two pictures"
    assert len(copy.alts) == 2
    carries_alt = pair.source.network != "telegram" and pair.target.network != "telegram"
    if carries_alt:
        assert copy.alts == ["A red square", "A blue square"]


def test_content_warning_is_kept(pair: Pair) -> None:
    before = len(pair.target.copies())
    pair.source.post("The ending is revealed here", cw="Spoilers")
    (copy,) = pair.new_copies(before, 1)
    if pair.target.network == "mastodon":
        assert copy.spoiler_text == "Spoilers"
        assert copy.text == "The ending is revealed here"
    else:
        assert copy.text == "CW: Spoilers\n\nThe ending is revealed here"
    if pair.target.network == "telegram":
        assert copy.spoiler_ranges == ["The ending is revealed here"]


def test_edit_reaches_the_copy(pair: Pair) -> None:
    before = len(pair.target.copies())
    post_id = pair.source.post("Before the edit")
    pair.new_copies(before, 1)
    pair.source.edit(post_id, "After the edit")
    wait_for(
        lambda: [c.text for c in pair.target.copies()[before:]] == ["After the edit"],
        timeout=30,
        what=f"the edit on {pair.target.network}; log:\n{pair.daemon.log()[-3000:]}",
    )


def test_delete_reaches_the_copy(pair: Pair) -> None:
    before = len(pair.target.copies())
    post_id = pair.source.post("Soon deleted")
    pair.new_copies(before, 1)
    pair.source.delete(post_id)
    wait_for(
        lambda: all(c.text != "Soon deleted" for c in pair.target.copies()),
        timeout=30,
        what=f"the delete on {pair.target.network}",
    )
