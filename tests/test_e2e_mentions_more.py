"""The inbox and the crosspost bot end to end on the networks the other files leave out.

Bluesky mentions come from the real PDS + AppView test network (the AppView writes the
notifications the daemon polls); Telegram and Mastodon are the sandboxes. Each scenario group has a
daemon of its own, run as `relaybird run`; people post through the PDS's XRPC, the Telegram
sandbox's user actions and Mastodon's API.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from harness import Daemon, LoopThread, free_port, serving, wait_for
from harness import telegram_links as links

from relaybird.sandbox.mastodon import MastodonSandbox
from relaybird.sandbox.telegram import TelegramSandbox
from tests.appview import AppViewNetwork

WAIT = 30.0


def telegram_text(loop: LoopThread, tg: TelegramSandbox, chat: int | str) -> list[str]:
    return [m.get("text") or "" for m in loop.call(tg.messages_in, chat)]


@dataclass
class Person:
    """A Bluesky account writing raw records through the PDS, as an app would."""

    network: AppViewNetwork
    did: str
    handle: str

    @property
    def token(self) -> str:
        return str(self.network.sessions[self.did]["accessJwt"])

    def post(self, text: str, *, mention: Person | None = None, reply_to: str | None = None) -> str:
        record: dict[str, Any] = {
            "$type": "app.bsky.feed.post",
            "text": text,
            "createdAt": datetime.now(UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
        }
        if mention is not None:
            shown = f"@{mention.handle}".encode()
            start = text.encode().index(shown)
            record["facets"] = [
                {
                    "index": {"byteStart": start, "byteEnd": start + len(shown)},
                    "features": [{"$type": "app.bsky.richtext.facet#mention", "did": mention.did}],
                }
            ]
        if reply_to is not None:
            parent = self.network.query(
                "com.atproto.repo.getRecord",
                dict(zip(("repo", "collection", "rkey"), at_parts(reply_to), strict=True)),
            )
            ref = {"uri": parent["uri"], "cid": parent["cid"]}
            root = parent["value"].get("reply", {}).get("root", ref)
            record["reply"] = {"root": root, "parent": ref}
        answer = self.network.xrpc(
            "com.atproto.repo.createRecord",
            {"repo": self.did, "collection": "app.bsky.feed.post", "record": record},
            token=self.token,
        )
        return str(answer["uri"])

    def posts(self) -> list[dict[str, Any]]:
        answer = self.network.query(
            "com.atproto.repo.listRecords",
            {"repo": self.did, "collection": "app.bsky.feed.post", "limit": "100"},
        )
        return list(answer.get("records", []))


def at_parts(uri: str) -> tuple[str, str, str]:
    repo, collection, rkey = uri.removeprefix("at://").split("/")
    return repo, collection, rkey


def new_person(network: AppViewNetwork, prefix: str, display_name: str = "") -> Person:
    did, handle, _ = network.create_account(prefix)
    person = Person(network, did, handle)
    if display_name:
        network.xrpc(
            "com.atproto.repo.putRecord",
            {"repo": did, "collection": "app.bsky.actor.profile", "rkey": "self",
             "record": {"$type": "app.bsky.actor.profile", "displayName": display_name}},
            token=person.token,
        )  # fmt: skip
        wait_for(
            lambda: network.wait_for_profile(did).get("displayName") == display_name,
            timeout=WAIT,
            what="the AppView to index the display name",
        )
    return person


def bluesky_account_toml(name: str, network: AppViewNetwork, person: Person) -> str:
    password_var = f"{name.upper()}_PASSWORD"
    return (
        f'[accounts.{name}]\nnetwork = "bluesky"\nbase_url = "{network.url}"\n'
        f'handle = "{person.handle}"\napp_password = "${{{password_var}}}"\n'
        "notifications_poll_interval = 1\n"
        # Its own posts from the PDS's firehose: the default, Bluesky's public Jetstream, is
        # not reachable from a test.
        'stream = "firehose"\n'
    )


def bluesky_password(network: AppViewNetwork, person: Person) -> str:
    """An app password for the daemon, so the test keeps the account's own session."""
    answer = network.xrpc(
        "com.atproto.server.createAppPassword", {"name": "relaybird"}, token=person.token
    )
    return str(answer["password"])


def write_config(folder: Path, port: int, body: str) -> Path:
    config = folder / "relaybird.toml"
    config.write_text(
        f'[relaybird]\nstate = "state.sqlite3"\nlisten = "127.0.0.1:{port}"\n\n{body}',
        encoding="utf-8",
    )
    return config


def wait_log(daemon: Daemon) -> Callable[[str], str]:
    return lambda what: f"{what}; log:\n{daemon.log()[-4000:]}"


# ------------------------------------------------------------------ a Bluesky mention in the inbox


@dataclass
class InboxWorld:
    loop: LoopThread
    tg: TelegramSandbox
    daemon: Daemon
    news: Person
    bob: Person
    staff_group: int

    def notice_containing(self, fragment: str) -> dict[str, Any]:
        def find() -> dict[str, Any] | None:
            messages = self.loop.call(self.tg.messages_in, self.staff_group)
            return next((m for m in messages if fragment in (m.get("text") or "")), None)

        found: dict[str, Any] = wait_for(
            find, timeout=WAIT, what=wait_log(self.daemon)(f"a notice with {fragment!r}")
        )
        return found


@pytest.fixture(scope="module")
def inbox_world(
    appview_network: AppViewNetwork, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[InboxWorld]:
    folder = tmp_path_factory.mktemp("bsky_inbox")
    news = new_person(appview_network, "newsdesk", "The News Desk")
    bob = new_person(appview_network, "bobreader", "Bob Reader")
    tg = TelegramSandbox()
    with serving(tg) as loop:
        inbox_bot = loop.call(tg.create_bot, "inbox_bot", "Inbox")
        sam = loop.call(tg.create_user, "Sam", "sam_staff")
        staff = loop.call(tg.create_group, "Staff", [inbox_bot.id, sam.id])
        port = free_port()
        config = write_config(
            folder,
            port,
            bluesky_account_toml("news_bsky", appview_network, news)
            + f"""
[accounts.staff]
network = "telegram"
base_url = "{tg.root_url}"
bot_token = "${{INBOX_TOKEN}}"
chat = {staff.id}
poll_timeout = 1

[[routes]]
name = "inbox"
from = ["news_bsky"]
to = ["staff"]
kinds = ["mention"]
""",
        )
        env = {
            "NEWS_BSKY_PASSWORD": bluesky_password(appview_network, news),
            "INBOX_TOKEN": inbox_bot.token,
        }
        daemon = Daemon(config, port, env).start()
        try:
            yield InboxWorld(loop, tg, daemon, news, bob, staff.id)
        finally:
            daemon.stop()


def bsky_permalink(person: Person, uri: str) -> str:
    return f"https://bsky.app/profile/{person.handle}/post/{at_parts(uri)[2]}"


@pytest.mark.pds
def test_bluesky_mention_reaches_the_telegram_inbox(inbox_world: InboxWorld) -> None:
    world = inbox_world
    uri = world.bob.post(f"@{world.news.handle} is the bridge closed today?", mention=world.news)
    notice = world.notice_containing("is the bridge closed today?")
    text = notice["text"]
    assert text.startswith(
        f"Bob Reader (@{world.bob.handle}, Bluesky) mentioned @{world.news.handle}\n\n"
    ), text
    assert bsky_permalink(world.bob, uri) in links(notice)
    assert f"https://bsky.app/profile/{world.bob.handle}" in links(notice)


@pytest.mark.pds
def test_reply_to_our_bluesky_post_reaches_the_inbox_against_it(inbox_world: InboxWorld) -> None:
    world = inbox_world
    ours = world.news.post("Road works on Main Street start Monday")
    world.news.network.wait_for_post(ours, timeout=WAIT)
    reply = world.bob.post("How long will they last?", reply_to=ours)
    notice = world.notice_containing("How long will they last?")
    text = notice["text"]
    header = f"Bob Reader (@{world.bob.handle}, Bluesky) replied to our post"
    assert text.startswith(header + "\n\nHow long will they last?"), text
    assert bsky_permalink(world.bob, reply) in links(notice)
    assert f"https://bsky.app/profile/{world.bob.handle}" in links(notice)


# ------------------------------------------------------------------ the bot on Bluesky


@dataclass
class BskyBotWorld:
    loop: LoopThread
    tg: TelegramSandbox
    daemon: Daemon
    bot: Person
    alice: Person
    mallory: Person

    def channel(self) -> list[str]:
        return telegram_text(self.loop, self.tg, "@bot_channel")

    def answer_to(self, request: str) -> dict[str, Any]:
        def find() -> dict[str, Any] | None:
            return next(
                (
                    r["value"]
                    for r in self.bot.posts()
                    if r["value"].get("reply", {}).get("parent", {}).get("uri") == request
                ),
                None,
            )

        found: dict[str, Any] = wait_for(
            find, timeout=WAIT, what=wait_log(self.daemon)("the bot's answer")
        )
        return found


@pytest.fixture(scope="module")
def bsky_bot_world(
    appview_network: AppViewNetwork, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BskyBotWorld]:
    folder = tmp_path_factory.mktemp("bsky_bot")
    bot = new_person(appview_network, "crossbot")
    alice = new_person(appview_network, "alice", "Alice")
    mallory = new_person(appview_network, "mallory", "Mallory")
    tg = TelegramSandbox()
    with serving(tg) as loop:
        channel_bot = loop.call(tg.create_bot, "channel_bot", "Channel")
        loop.call(tg.create_channel, "bot_channel", "Channel", [channel_bot.id])
        port = free_port()
        config = write_config(
            folder,
            port,
            bluesky_account_toml("bot_bsky", appview_network, bot)
            + f"""
[accounts.channel_tg]
network = "telegram"
base_url = "{tg.root_url}"
bot_token = "${{CHANNEL_TOKEN}}"
chat = "@bot_channel"
poll_timeout = 1

[[routes]]
name = "crosspost"
from = ["bot_bsky"]
to = ["channel_tg"]
kinds = ["edit", "delete"]

[[commands]]
name = "crosspost"
bot = "bot_bsky"
route = "crosspost"
allow = ["{alice.did}"]
""",
        )
        env = {
            "BOT_BSKY_PASSWORD": bluesky_password(appview_network, bot),
            "CHANNEL_TOKEN": channel_bot.token,
        }
        daemon = Daemon(config, port, env).start()
        try:
            yield BskyBotWorld(loop, tg, daemon, bot, alice, mallory)
        finally:
            daemon.stop()


@pytest.mark.pds
def test_bluesky_reply_request_crossposts_the_parent_to_telegram(
    bsky_bot_world: BskyBotWorld,
) -> None:
    world = bsky_bot_world
    parent = world.alice.post("The choir sings at noon in the park")
    request = world.alice.post(f"@{world.bot.handle} crosspost", mention=world.bot, reply_to=parent)
    answer = world.answer_to(request)
    (copy,) = [
        m
        for m in world.loop.call(world.tg.messages_in, "@bot_channel")
        if m.get("text") == "The choir sings at noon in the park"
    ]
    link = f"https://t.me/bot_channel/{copy['message_id']}"
    assert answer["text"] == f"Crossposted:\nTelegram: {link}"
    assert facet_links(answer) == [link]
    again = world.alice.post(f"@{world.bot.handle} crosspost", mention=world.bot, reply_to=parent)
    second = world.answer_to(again)
    assert second["text"] == f"Already crossposted:\nTelegram: {link}"
    assert facet_links(second) == [link]
    assert world.channel().count("The choir sings at noon in the park") == 1


def facet_links(record: dict[str, Any]) -> list[str]:
    """The link targets of a Bluesky post's facets."""
    return [f["uri"] for facet in record.get("facets", []) for f in facet["features"] if "uri" in f]


@pytest.mark.pds
def test_bluesky_standalone_request_crossposts_the_rest_of_the_post(
    bsky_bot_world: BskyBotWorld,
) -> None:
    world = bsky_bot_world
    request = world.alice.post(
        f"@{world.bot.handle} crosspost Our new report is out", mention=world.bot
    )
    answer = world.answer_to(request)
    (copy,) = [
        m
        for m in world.loop.call(world.tg.messages_in, "@bot_channel")
        if "Our new report is out" in (m.get("text") or "")
    ]
    assert copy["text"] == "Our new report is out"
    link = f"https://t.me/bot_channel/{copy['message_id']}"
    assert answer["text"] == f"Crossposted:\nTelegram: {link}"
    assert facet_links(answer) == [link]


@pytest.mark.pds
def test_bluesky_unauthorized_request_posts_nothing(bsky_bot_world: BskyBotWorld) -> None:
    world = bsky_bot_world
    request = world.mallory.post(
        f"@{world.bot.handle} crosspost Buy cheap watches", mention=world.bot
    )
    answer = world.answer_to(request)
    assert answer["text"] == "Sorry, I only crosspost for the people who run this account."
    assert not any("watches" in text for text in world.channel())


# ------------------------------------------------------------------ the bot on Telegram


@dataclass
class TgBotWorld:
    loop: LoopThread
    tg: TelegramSandbox
    masto: MastodonSandbox
    daemon: Daemon
    group: int
    sam: int
    bob: int

    def say(self, user: int, text: str, reply_to: int | None = None) -> dict[str, Any]:
        message: dict[str, Any] = self.loop.call(
            lambda: self.tg.post_as_user(self.group, user, text, reply_to=reply_to)
        )
        return message

    def statuses(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self.loop.call(self.masto.statuses_of, "news")
        return found

    def answer_to(self, message_id: int) -> dict[str, Any]:
        def find() -> dict[str, Any] | None:
            messages = self.loop.call(self.tg.messages_in, self.group)
            return next(
                (
                    m
                    for m in messages
                    if (m.get("reply_to_message") or {}).get("message_id") == message_id
                    and m.get("from", {}).get("is_bot")
                ),
                None,
            )

        found: dict[str, Any] = wait_for(
            find, timeout=WAIT, what=wait_log(self.daemon)("the bot's answer in the group")
        )
        return found


@pytest.fixture(scope="module")
def tg_bot_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TgBotWorld]:
    folder = tmp_path_factory.mktemp("tg_bot")
    masto, tg = MastodonSandbox(defer_image_processing=False), TelegramSandbox()
    with serving(masto, tg) as loop:
        news = loop.call(masto.create_account, "news", "The News")
        bot = loop.call(tg.create_bot, "group_bot", "Group")
        sam = loop.call(tg.create_user, "Sam", "sam_staff")
        bob = loop.call(tg.create_user, "Bob", "bob_reader")
        group = loop.call(tg.create_group, "Volunteers", [bot.id, sam.id, bob.id])
        port = free_port()
        config = write_config(
            folder,
            port,
            f"""[accounts.news_masto]
network = "mastodon"
base_url = "{masto.base_url}"
access_token = "${{NEWS_TOKEN}}"

[accounts.group_tg]
network = "telegram"
base_url = "{tg.root_url}"
bot_token = "${{GROUP_TOKEN}}"
chat = {group.id}
poll_timeout = 1

[[routes]]
name = "crosspost"
from = ["group_tg"]
to = ["news_masto"]
kinds = ["edit", "delete"]

[[commands]]
name = "crosspost"
bot = "group_tg"
route = "crosspost"
allow = ["{sam.id}"]
""",
        )
        daemon = Daemon(config, port, {"NEWS_TOKEN": news.token, "GROUP_TOKEN": bot.token}).start()
        try:
            yield TgBotWorld(loop, tg, masto, daemon, group.id, sam.id, bob.id)
        finally:
            daemon.stop()


def test_telegram_slash_crosspost_reply_crossposts_to_mastodon(tg_bot_world: TgBotWorld) -> None:
    world = tg_bot_world
    parent = world.say(world.sam, "Litter pick on the beach this Saturday at 9")
    request = world.say(world.sam, "/crosspost", reply_to=parent["message_id"])
    answer = world.answer_to(request["message_id"])
    copies = [s for s in world.statuses() if "Litter pick on the beach" in s["content"]]
    assert len(copies) == 1
    assert answer["text"] == f"Crossposted:\nMastodon: {copies[0]['url']}"
    assert links(answer) == [copies[0]["url"]]


def test_telegram_standalone_slash_crosspost_posts_the_rest(tg_bot_world: TgBotWorld) -> None:
    world = tg_bot_world
    request = world.say(world.sam, "/crosspost Some news from the group")
    answer = world.answer_to(request["message_id"])
    copies = [s for s in world.statuses() if "Some news from the group" in s["content"]]
    assert len(copies) == 1
    assert copies[0]["content"] == "<p>Some news from the group</p>"
    assert answer["text"] == f"Crossposted:\nMastodon: {copies[0]['url']}"
    assert links(answer) == [copies[0]["url"]]


def test_telegram_unauthorized_request_posts_nothing(tg_bot_world: TgBotWorld) -> None:
    world = tg_bot_world
    parent = world.say(world.bob, "Cheap watches for sale")
    request = world.say(world.bob, "/crosspost", reply_to=parent["message_id"])
    answer = world.answer_to(request["message_id"])
    assert answer["text"] == "Sorry, I only crosspost for the people who run this account."
    assert not any("watches" in s["content"] for s in world.statuses())


def test_telegram_request_after_a_restart_still_finds_the_post_it_answers(
    tg_bot_world: TgBotWorld,
) -> None:
    """Bots cannot read a Telegram message by id: the chat's recent posts are kept in the state
    database, so a request made after a restart can still crosspost what it answers."""
    world = tg_bot_world
    parent = world.say(world.sam, "Bake sale moved to the town hall")
    state = world.daemon.config.parent / "state.sqlite3"

    def kept() -> bool:
        with contextlib.closing(sqlite3.connect(f"file:{state}?mode=ro", uri=True)) as db:
            query = "SELECT 1 FROM chat_posts WHERE post_id = ?"
            row = db.execute(query, (f"{world.group}:{parent['message_id']}",)).fetchone()
            return row is not None

    wait_for(kept, timeout=WAIT, what="the post kept in the state database")
    world.daemon.stop()
    world.daemon.start()
    request = world.say(world.sam, "/crosspost", reply_to=parent["message_id"])
    answer = world.answer_to(request["message_id"])
    copies = [s for s in world.statuses() if "Bake sale moved" in s["content"]]
    assert len(copies) == 1
    assert answer["text"] == f"Crossposted:\nMastodon: {copies[0]['url']}"
