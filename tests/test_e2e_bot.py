"""The crosspost bot end to end: people mention the newsroom's Mastodon account to crosspost.

One daemon serves the file. The bot is the Mastodon account `news`; its command's route posts to a
Telegram channel. Alice is on the allowlist, Mallory is not. People act through Mastodon.py; the
daemon runs as `relaybird run`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from harness import Daemon, LoopThread, free_port, serving, wait_for
from mastodon import Mastodon

from relaybird.sandbox.mastodon import MastodonSandbox
from relaybird.sandbox.telegram import TelegramSandbox


@dataclass
class World:
    loop: LoopThread
    masto: MastodonSandbox
    tg: TelegramSandbox
    daemon: Daemon
    alice: Mastodon
    mallory: Mastodon

    def channel(self) -> list[str]:
        return [m.get("text") or "" for m in self.loop.call(self.tg.messages_in, "@news_channel")]

    def answer_to(self, status_id: str) -> dict[str, Any]:
        def find() -> dict[str, Any] | None:
            statuses = self.loop.call(self.masto.statuses_of, "news")
            return next((s for s in statuses if s["in_reply_to_id"] == status_id), None)

        found: dict[str, Any] = wait_for(
            find, timeout=20, what=f"the bot's answer; log:\n{self.daemon.log()[-4000:]}"
        )
        return found


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    folder: Path = tmp_path_factory.mktemp("bot")
    masto, tg = MastodonSandbox(defer_image_processing=False), TelegramSandbox()
    with serving(masto, tg) as loop:
        news = loop.call(masto.create_account, "news", "The News")
        alice = loop.call(masto.create_account, "alice", "Alice Example")
        mallory = loop.call(masto.create_account, "mallory", "Mallory")
        bot = loop.call(tg.create_bot, "channel_bot", "Channel")
        loop.call(tg.create_channel, "news_channel", "News", [bot.id])
        host = masto.base_url.split("//", 1)[1].split(":", 1)[0]
        port = free_port()
        config = folder / "relaybird.toml"
        config.write_text(
            f"""[relaybird]
state = "state.sqlite3"
listen = "127.0.0.1:{port}"

[accounts.news_masto]
network = "mastodon"
base_url = "{masto.base_url}"
access_token = "${{NEWS_TOKEN}}"

[accounts.news_tg]
network = "telegram"
base_url = "{tg.root_url}"
bot_token = "${{TG_TOKEN}}"
chat = "@news_channel"

[[routes]]
name = "crosspost"
from = ["news_masto"]
to = ["news_tg"]
kinds = ["edit", "delete"]

[[commands]]
name = "crosspost"
bot = "news_masto"
route = "crosspost"
allow = ["alice@{host}"]
""",
            encoding="utf-8",
        )
        daemon = Daemon(config, port, {"NEWS_TOKEN": news.token, "TG_TOKEN": bot.token}).start()

        def client(token: str) -> Mastodon:
            return Mastodon(
                api_base_url=masto.base_url, access_token=token, version_check_mode="none"
            )

        try:
            yield World(loop, masto, tg, daemon, client(alice.token), client(mallory.token))
        finally:
            daemon.stop()


def test_reply_request_crossposts_the_parent_and_links_the_copy(world: World) -> None:
    parent = world.alice.status_post("Our volunteers planted 300 trees today")
    request = world.alice.status_post("@news crosspost", in_reply_to_id=parent["id"])
    answer = world.answer_to(request["id"])
    assert world.channel().count("Our volunteers planted 300 trees today") == 1
    assert "Crossposted:" in answer["content"]
    assert "https://t.me/news_channel/" in answer["content"]


def test_standalone_request_crossposts_the_rest_of_the_post(world: World) -> None:
    request = world.alice.status_post("@news crosspost The library opens late on Friday")
    world.answer_to(request["id"])
    assert "The library opens late on Friday" in world.channel()


def test_asking_twice_posts_once_and_says_so(world: World) -> None:
    parent = world.alice.status_post("Bake sale on Saturday")
    first = world.alice.status_post("@news crosspost", in_reply_to_id=parent["id"])
    world.answer_to(first["id"])
    second = world.alice.status_post("@news crosspost", in_reply_to_id=parent["id"])
    answer = world.answer_to(second["id"])
    assert "Already crossposted:" in answer["content"]
    assert world.channel().count("Bake sale on Saturday") == 1


def test_unauthorized_request_posts_nothing_and_is_refused_politely(world: World) -> None:
    request = world.mallory.status_post("@news crosspost Buy cheap watches")
    answer = world.answer_to(request["id"])
    assert "Sorry, I only crosspost for the people who run this account." in answer["content"]
    assert not any("watches" in text for text in world.channel())


def test_allowed_person_cannot_crosspost_someone_elses_post(world: World) -> None:
    parent = world.mallory.status_post("Mallory's spam")
    request = world.alice.status_post("@news crosspost", in_reply_to_id=parent["id"])
    answer = world.answer_to(request["id"])
    assert "only crosspost posts written by you" in answer["content"]
    assert not any("spam" in text for text in world.channel())
