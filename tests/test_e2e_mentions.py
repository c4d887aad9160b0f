"""The shared inbox end to end: mentions on Mastodon and Telegram reach a private Telegram group.

One daemon serves the whole file: the newsroom's Mastodon account (`news`), a Telegram community
group watched by its bot, a Telegram channel mirrored to Mastodon (so that people can answer our
copies there), and the staff's private Telegram group as the inbox, with reply_back on. People act
through Mastodon.py and the Telegram sandbox's user actions; the daemon runs as `relaybird run`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from harness import Daemon, LoopThread, free_port, serving, wait_for
from harness import telegram_links as links
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
    staff_group: int
    community: int
    staff_user: int
    bob: int

    def inbox(self) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = self.loop.call(self.tg.messages_in, self.staff_group)
        return messages

    def notice_containing(self, fragment: str) -> dict[str, Any]:
        found: dict[str, Any] = wait_for(
            lambda: next((m for m in self.inbox() if fragment in (m.get("text") or "")), None),
            timeout=20,
            what=f"a notice containing {fragment!r}; log:\n{self.daemon.log()[-4000:]}",
        )
        return found

    def statuses_of(self, username: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self.loop.call(self.masto.statuses_of, username)
        return found


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    folder: Path = tmp_path_factory.mktemp("mentions")
    masto, tg = MastodonSandbox(defer_image_processing=False), TelegramSandbox()
    with serving(masto, tg) as loop:
        news = loop.call(masto.create_account, "news", "The News")
        alice = loop.call(masto.create_account, "alice", "Alice Example")
        inbox_bot = loop.call(tg.create_bot, "inbox_bot", "Inbox")
        community_bot = loop.call(tg.create_bot, "community_bot", "Community")
        channel_bot = loop.call(tg.create_bot, "channel_bot", "Channel")
        staff_user = loop.call(tg.create_user, "Sam", "sam_staff")
        bob = loop.call(tg.create_user, "Bob", "bob_reader")
        staff = loop.call(tg.create_group, "Staff", [inbox_bot.id, staff_user.id])
        community = loop.call(
            tg.create_group, "Community", [community_bot.id, bob.id], "community_chat"
        )
        loop.call(tg.create_channel, "news_channel", "News", [channel_bot.id])
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

[accounts.news_channel]
network = "telegram"
base_url = "{tg.root_url}"
bot_token = "${{CHANNEL_TOKEN}}"
chat = "@news_channel"
poll_timeout = 1

[accounts.community]
network = "telegram"
base_url = "{tg.root_url}"
bot_token = "${{COMMUNITY_TOKEN}}"
chat = "@community_chat"
poll_timeout = 1

[accounts.staff]
network = "telegram"
base_url = "{tg.root_url}"
bot_token = "${{INBOX_TOKEN}}"
chat = {staff.id}
poll_timeout = 1

[[routes]]
name = "channel_to_masto"
from = ["news_channel"]
to = ["news_masto"]

[[routes]]
name = "inbox"
from = ["news_masto", "community"]
to = ["staff"]
kinds = ["mention"]
reply_back = true
""",
            encoding="utf-8",
        )
        env = {
            "NEWS_TOKEN": news.token,
            "CHANNEL_TOKEN": channel_bot.token,
            "COMMUNITY_TOKEN": community_bot.token,
            "INBOX_TOKEN": inbox_bot.token,
        }
        daemon = Daemon(config, port, env).start()
        client = Mastodon(
            api_base_url=masto.base_url, access_token=alice.token, version_check_mode="none"
        )
        try:
            yield World(
                loop, masto, tg, daemon, client, staff.id, community.id, staff_user.id, bob.id
            )
        finally:
            daemon.stop()


def test_mastodon_mention_reaches_the_inbox_with_author_and_link(world: World) -> None:
    status = world.alice.status_post("@news when is the next issue out?")
    notice = world.notice_containing("when is the next issue out?")
    text = notice["text"]
    assert text.startswith("Alice Example (@alice@")
    assert "Mastodon) mentioned @news@" in text
    assert status["url"] in links(notice)
    assert any(link.endswith("/@alice") for link in links(notice))


def test_telegram_mention_of_the_bot_reaches_the_inbox(world: World) -> None:
    message = world.loop.call(
        lambda: world.tg.post_as_user(
            world.community, world.bob, "@community_bot can you share the schedule?"
        )
    )
    notice = world.notice_containing("can you share the schedule?")
    assert notice["text"].startswith("Bob (@bob_reader, Telegram) mentioned @community_bot")
    permalink = f"https://t.me/community_chat/{message['message_id']}"
    assert permalink in links(notice)


def test_a_telegram_message_not_for_us_stays_out_of_the_inbox(world: World) -> None:
    world.loop.call(lambda: world.tg.post_as_user(world.community, world.bob, "just chatting"))
    world.loop.call(
        lambda: world.tg.post_as_user(world.community, world.bob, "@community_bot marker one")
    )
    world.notice_containing("marker one")
    assert not any("just chatting" in (m.get("text") or "") for m in world.inbox())


def test_reply_to_a_mirrored_copy_is_shown_against_the_original(world: World) -> None:
    original = world.loop.call(
        lambda: world.tg.post_as_user("@news_channel", None, "Our big story today")
    )
    copy = wait_for(
        lambda: next(
            (s for s in world.statuses_of("news") if "Our big story today" in s["content"]), None
        ),
        timeout=20,
        what=f"the story's copy on Mastodon; log:\n{world.daemon.log()[-3000:]}",
    )
    world.alice.status_post("@news great story, thanks!", in_reply_to_id=copy["id"])
    notice = world.notice_containing("great story, thanks!")
    permalink = f"https://t.me/news_channel/{original['message_id']}"
    assert "replied to our copy on Mastodon of " + permalink in notice["text"]
    assert permalink in links(notice)


def test_staff_reply_in_the_inbox_is_posted_as_a_reply_to_the_mention(world: World) -> None:
    status = world.alice.status_post("@news does the shop open on Sunday?")
    notice = world.notice_containing("does the shop open on Sunday?")
    world.loop.call(
        lambda: world.tg.post_as_user(
            world.staff_group,
            world.staff_user,
            "Yes, from 10 to 4!",
            reply_to=notice["message_id"],
        )
    )
    answer = wait_for(
        lambda: next(
            (s for s in world.statuses_of("news") if "Yes, from 10 to 4!" in s["content"]), None
        ),
        timeout=20,
        what=f"the answer on Mastodon; log:\n{world.daemon.log()[-3000:]}",
    )
    assert answer["in_reply_to_id"] == status["id"]
    # A chat message that answers nothing of ours is not posted anywhere.
    world.loop.call(
        lambda: world.tg.post_as_user(world.staff_group, world.staff_user, "coffee, anyone?")
    )
    world.alice.status_post("@news marker two")
    world.notice_containing("marker two")
    assert not any("coffee" in s["content"] for s in world.statuses_of("news"))


def test_the_mention_stream_is_reported_apart_from_the_post_stream(world: World) -> None:
    """news_masto has no post stream here, only mentions: a lost notifications stream must show
    as its own entry going down (and the daemon unhealthy), then coming back."""

    def accounts() -> dict[str, Any]:
        answer = world.daemon.health()
        assert answer is not None
        return dict(answer[1]["accounts"])

    before = accounts()
    assert before["news_masto#mentions"]["role"] == "mentions"
    assert before["news_masto#mentions"]["connected"] is True
    assert before["news_masto"]["detail"] == "no post stream to read"
    world.loop.call(lambda: world.masto.faults.refuse_streams(duration=4))
    world.loop.call(world.masto.faults.drop_streams)
    down = wait_for(
        lambda: (found := accounts())["news_masto#mentions"]["connected"] is False and found,
        timeout=15,
        what="the mention stream reported down",
    )
    assert down["news_masto"]["connected"] is True
    answer = world.daemon.health()
    assert answer is not None and answer[0] == 503
    wait_for(
        lambda: accounts()["news_masto#mentions"]["connected"],
        timeout=60,
        what=f"the mention stream back; log:\n{world.daemon.log()[-2000:]}",
    )
