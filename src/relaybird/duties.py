"""Who does what: whose stream is read, whose notifications, who is posted to, who is a bot.

All of it follows from the config alone, and it is asked in three places: the relay deciding what to
start, the desk deciding what an event is, and `relaybird status` describing accounts whether or not
the daemon runs. One answer for all three keeps them from drifting apart.
"""

from __future__ import annotations

from dataclasses import dataclass

from relaybird.config import Config, Route


@dataclass(frozen=True)
class Duties:
    config: Config

    def mention_routes(self) -> list[Route]:
        return [route for route in self.config.routes if route.routes_mentions()]

    def bots(self) -> set[str]:
        return {command.bot for command in self.config.commands}

    def mentioned_accounts(self) -> set[str]:
        """Accounts whose mentions matter: sources of mention routes, and the bots."""
        return {name for r in self.mention_routes() for name in r.sources} | self.bots()

    def inboxes_answering(self) -> set[str]:
        """Inbox accounts whose chat is read for answers (`reply_back`)."""
        return {name for r in self.mention_routes() if r.reply_back for name in r.targets}

    def answering_accounts(self) -> set[str]:
        """Accounts that post answers: bots, and the mentioned accounts of reply_back routes."""
        back = {name for r in self.mention_routes() if r.reply_back for name in r.sources}
        return back | self.bots()

    def is_chat_network(self, name: str) -> bool:
        """Whether mentions of the account come on its ordinary stream (Telegram chats)."""
        return self.config.accounts[name].network == "telegram"

    def stream_readers(self) -> set[str]:
        """Accounts whose own stream is read: sources of post routes, and chats where mentions,
        requests and inbox answers arrive among the ordinary messages."""
        posts = {
            name
            for route in self.config.routes
            if not route.routes_mentions()
            for name in route.sources
        }
        chats = {
            name
            for name in self.mentioned_accounts() | self.inboxes_answering()
            if self.is_chat_network(name)
        }
        return posts | chats

    def notification_readers(self) -> set[str]:
        """Accounts whose notifications are read (networks that have them)."""
        return {name for name in self.mentioned_accounts() if not self.is_chat_network(name)}

    def targets(self) -> set[str]:
        """Accounts posted to: targets of routes, and the accounts that post answers."""
        routed = {name for route in self.config.routes for name in route.targets}
        return routed | self.answering_accounts()

    def role(self, name: str) -> str:
        """The account's part in the routes, as operators read it: `source+target`, `bot`, …"""
        parts = [
            label
            for label, found in (
                ("source", any(name in route.sources for route in self.config.routes)),
                ("target", any(name in route.targets for route in self.config.routes)),
                ("bot", name in self.bots()),
            )
            if found
        ]
        return "+".join(parts) or "unused"
