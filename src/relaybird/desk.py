"""The front desk: what the relay does with mentions, answers from the inbox and bot requests.

Events reach the desk before the router. A mention becomes a notice for the inbox (the router then
sends it along the mention routes, through the outbox, like any copy); a staff member's reply in a
Telegram inbox to a notice becomes an answer on the mention's own network (`reply_back`); a
request to the crosspost bot becomes deliveries of the post on the command's route plus the bot's
answer. Everything it decides is queued in the outbox, so dedupe, retries and rate limits hold as
for every copy, and asking twice posts once.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, replace

from relaybird.commands import (
    REFUSALS,
    Allowlist,
    Command,
    CopyLink,
    PersonLimiter,
    Refusal,
    parse_command,
    person_key,
    render_answer,
)
from relaybird.config import CommandSettings, Config, Route
from relaybird.duties import Duties
from relaybird.inbox import OriginalRef, Reason, network_name, render_notification
from relaybird.model import Author, Event, EventKind, Post, SpanKind
from relaybird.networks.base import Network
from relaybird.store import Planned, Store

log = logging.getLogger(__name__)

#: Posts remembered from bots' chats, for requests that answer them (Telegram cannot be asked).
REMEMBERED_POSTS = 256
#: How long a bot's answer waits between looks at whether its copies are done.
ANSWER_WAIT_SECONDS = 0.5
ANSWER_KIND = "answer"
BOT_ANSWER_KIND = "bot_answer"
_SHORT_WORDS = {"bsky": "bluesky", "masto": "mastodon", "tg": "telegram"}


@dataclass(frozen=True)
class Seen:
    post: Post
    by: Author | None


class Desk:
    def __init__(self, config: Config, store: Store, networks: dict[str, Network]) -> None:
        self.config = config
        self.store = store
        self.networks = networks
        self.routes = {route.name: route for route in config.routes}
        self.commands = {command.bot: command for command in config.commands}
        self.duties = Duties(config)
        self.limiters = {
            command.bot: PersonLimiter(command.per_person_per_hour, 3600.0)
            for command in config.commands
        }

    # intake

    def remember(self, event: Event) -> None:
        self.store.remember_chat_post(event.account, event.post, event.by, REMEMBERED_POSTS)

    async def intake(self, event: Event) -> Event | None:
        """The event the router should see next, or None when the desk has dealt with it."""
        if event.kind not in (EventKind.POST, EventKind.REPLY, EventKind.MENTION):
            return event
        if event.account in self.commands and self.duties.is_chat_network(event.account):
            self.remember(event)
        if event.kind is not EventKind.MENTION:
            if not self.duties.is_chat_network(event.account):
                return event
            if self._reply_back(event):
                return None
        if await self._request(event):
            return None
        if event.kind is EventKind.MENTION:
            return self._noticed(event)
        if event.account in self.duties.mentioned_accounts() and self._mentions_us(event):
            return self._noticed(replace(event, kind=EventKind.MENTION))
        return event

    def _finish(self, event: Event) -> None:
        """Record the event as seen and move its cursor: it created deliveries of its own."""
        self.store.accept(event, [])

    def _mentions_us(self, event: Event) -> bool:
        """A chat message that names the bot or answers one of our messages."""
        post = event.post
        if post.reply_to is not None and self.store.copy_origin(event.account, post.reply_to):
            return True
        network = self.networks.get(event.account)
        names = {n.casefold() for n in network.mention_names()} if network else set()
        for span in post.spans:
            if span.kind is SpanKind.MENTION:
                shown = post.text[span.start : span.end].lstrip("@").casefold()
                if shown in names or span.handle.lstrip("@").casefold() in names:
                    return True
        return any(f"@{name}" in post.text.casefold() for name in names)

    # the inbox

    def _noticed(self, event: Event) -> Event:
        post = event.post
        reason: Reason = "reply" if post.reply_to else "mention"
        if event.reason in ("mention", "reply", "quote"):
            reason = event.reason  # type: ignore[assignment]
        network = self.networks.get(event.account)
        account = shown_name(network) if network is not None else event.account
        shown = post if event.by is None else replace(post, author=event.by)
        notice = render_notification(
            shown, reason=reason, original=self._original(event), account=account
        )
        return replace(event, kind=EventKind.MENTION, post=notice)

    def _original(self, event: Event) -> OriginalRef | None:
        """Our post the mention answers: the original when it answers one of our copies."""
        parent = event.post.reply_to
        if parent is None:
            return None
        origin = self.store.copy_origin(event.account, parent) or (event.account, parent)
        original = self.store.original_post(*origin)
        if original is None or not original.permalink:
            return None
        return OriginalRef(
            permalink=original.permalink,
            network=self.config.accounts[origin[0]].network,
        )

    def _reply_back(self, event: Event) -> bool:
        """A reply in an inbox to a notice, on a reply_back route: answer the mention."""
        post = event.post
        if post.reply_to is None or event.account not in self.duties.inboxes_answering():
            return False
        origin = self.store.copy_origin(event.account, post.reply_to)
        if origin is None:
            return False
        notice = self.store.find_delivery("mention", origin[0], origin[1], event.account)
        route = self.routes.get(notice.route) if notice is not None else None
        if route is None or not route.reply_back:
            return False
        answer = replace(post, id=post.id, reply_to=origin[1], reply_to_author_id=None, author=None)
        self.store.enqueue(
            Planned(route=route.name, target_account=origin[0]), ANSWER_KIND, event.account, answer
        )
        log.info(
            "route=%s answer %s:%s -> %s as a reply to %s queued",
            route.name,
            event.account,
            post.id,
            origin[0],
            origin[1],
        )
        self._finish(event)
        return True

    # the bot

    def _words(self, route: Route) -> dict[str, str]:
        words = dict(_SHORT_WORDS)
        for target in route.targets:
            words[target] = target
            words[self.config.accounts[target].network] = self.config.accounts[target].network
        return words

    def _parse(self, event: Event) -> tuple[CommandSettings, Command] | None:
        settings = self.commands.get(event.account)
        network = self.networks.get(event.account)
        if settings is None or network is None:
            return None
        route = self.routes[settings.route]
        command = parse_command(
            event.post,
            bot_handles=network.mention_names(),
            trigger=settings.trigger,
            network_words=self._words(route),
        )
        return None if command is None else (settings, command)

    async def _request(self, event: Event) -> bool:
        parsed = self._parse(event)
        if parsed is None:
            return False
        if self.store.was_seen(event.account, event.post.id, EventKind.MENTION.value):
            self._finish(replace(event, kind=EventKind.MENTION))
            return True
        settings, command = parsed
        refusal = await self._serve(event, settings, command)
        if refusal is not None:
            log.info("%s: request %s refused: %s", event.account, event.post.id, refusal)
            if settings.refusal == "reply":
                self._answer(event, settings, REFUSALS[refusal])
        self._finish(replace(event, kind=EventKind.MENTION))
        return True

    def _answer(self, event: Event, settings: CommandSettings, text: str) -> None:
        answer = Post(id=event.post.id, text=text, reply_to=event.post.id)
        self.store.enqueue(
            Planned(route=settings.route, target_account=event.account),
            ANSWER_KIND,
            event.account,
            answer,
        )

    async def _serve(
        self, event: Event, settings: CommandSettings, command: Command
    ) -> Refusal | None:
        requester = event.by or event.post.author
        allowed = Allowlist(settings.allow)
        if not allowed.allows(requester):
            return "not_allowed"
        assert requester is not None
        if not self.limiters[event.account].allow(person_key(requester), time.monotonic()):
            return "rate_limited"
        if command.standalone_rest is not None:
            if command.nothing_to_post:
                return "nothing_to_post"
            post = command.standalone_rest
        else:
            assert command.crosspost_of is not None
            found = await self._parent(event.account, command.crosspost_of)
            if found is None:
                self._answer(event, settings, "Sorry, I could not read that post.")
                return None
            if not self._may_crosspost(event.account, found, requester, allowed):
                return "not_author"
            post = replace(found.post, reply_to=None, reply_to_author_id=None, thread_root=None)
        route = self.routes[settings.route]
        targets = [
            target
            for target in route.targets
            if target != event.account
            and (
                not command.targets_narrowed_to
                or target in command.targets_narrowed_to
                or self.config.accounts[target].network in command.targets_narrowed_to
            )
        ]
        if not targets:
            return "no_target"
        self._crosspost(event, settings, post, targets)
        return None

    async def _parent(self, account: str, post_id: str) -> Seen | None:
        found = self.store.chat_post(account, post_id)
        if found is not None:
            return Seen(*found)
        network = self.networks.get(account)
        post = await network.fetch_post(post_id) if network is not None else None
        return None if post is None else Seen(post, None)

    def _may_crosspost(
        self, account: str, found: Seen, requester: Author, allowed: Allowlist
    ) -> bool:
        """Only the requester's own posts, an allowed person's, or our account's."""
        author = found.by or found.post.author
        if author is None:
            return False
        if author.network == requester.network and author.id and author.id == requester.id:
            return True
        network = self.networks.get(account)
        ours = {name.casefold() for name in network.mention_names()} if network else set()
        if author.handle.lstrip("@").casefold() in ours or author.id.casefold() in ours:
            return True
        return allowed.allows(author)

    def _crosspost(
        self, event: Event, settings: CommandSettings, post: Post, targets: list[str]
    ) -> None:
        held = self.store.holders(event.account, post.id)
        fresh = [target for target in targets if target not in held]
        for target in fresh:
            self.store.enqueue(
                Planned(route=settings.route, target_account=target), "post", event.account, post
            )
            log.info(
                "route=%s post %s:%s -> %s queued (requested by %s)",
                settings.route,
                event.account,
                post.id,
                target,
                event.post.id,
            )
        payload = {
            "request": event.post.id,
            "post": post.id,
            "targets": targets,
            "already": not fresh,
        }
        self.store.enqueue(
            Planned(route=settings.route, target_account=event.account),
            BOT_ANSWER_KIND,
            event.account,
            Post(id=event.post.id, text=json.dumps(payload)),
        )


def compose_answer(store: Store, config: Config, account: str, payload: str) -> Post | None:
    """The bot's reply once every copy it asked for is done or failed; None while one is pending.

    `payload` is the queued answer's post, whose text says what was asked (see `Desk._crosspost`).
    """
    asked = json.loads(Post.from_json(payload).text)
    copies: list[CopyLink] = []
    failures: list[tuple[str, str]] = []
    for target in asked["targets"]:
        where = network_name(config.accounts[target].network)
        mapping = store.mapping(account, asked["post"], target)
        if mapping is not None:
            copies.append(CopyLink(where, mapping.first.url or mapping.first.id))
            continue
        delivery = next(
            (
                d
                for d in store.deliveries_of(account, asked["post"], target)
                if d.kind in ("post", "reply", "repost")
            ),
            None,
        )
        if delivery is None or delivery.state in ("pending", "retry", "sending"):
            return None
        failures.append((where, delivery.last_error or delivery.state))
    answer = render_answer(asked["request"], copies, failures, already=bool(asked["already"]))
    return replace(answer, reply_to=asked["request"])


def shown_name(network: Network) -> str:
    """How people see the account: `@news@mastodon.example`, `@news.bsky.social`, `@news_bot`."""
    names = [name for name in network.mention_names() if not name.startswith("did:")]
    best = max(names, key=len, default=network.name)
    return f"@{best}"
