"""Routes and filters to delivery decisions. Pure: no I/O, so every rule can be tested exhaustively.

A route is read through its attributes only, so the config's `Route` and any object with `name`,
`sources` and `targets` work; options an object lacks take the config's defaults. That keeps the
router free of the config module and lets tests describe routes with plain dataclasses.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from relaybird.model import Event, EventKind, Post, SpanKind
from relaybird.store import Planned

CREATION_KINDS = frozenset({"post", "reply", "repost"})
DEFAULT_KINDS = frozenset({"post", "reply", "edit", "delete"})
DEFAULT_VISIBILITY = frozenset({"public", "unlisted"})
DEFAULT_EXCLUDE_TAGS = frozenset({"nobridge"})

# A `#word` in plain text, for posts whose network gave no hashtag spans. The look-behind keeps out
# URL fragments (`page#top`, `/#/x`) and HTML entities (`&#39;`).
_TEXT_HASHTAG = re.compile(r"(?<![\w&/#])#(\w+)")

_PLURAL = {
    "post": "posts",
    "reply": "replies",
    "repost": "reposts",
    "edit": "edits",
    "delete": "deletes",
    "mention": "mentions",
}


class RouteLike(Protocol):
    """What the router needs of a route; the optional settings are read with `getattr`."""

    @property
    def name(self) -> str: ...

    @property
    def sources(self) -> Sequence[str]: ...

    @property
    def targets(self) -> Sequence[str]: ...


@dataclass(frozen=True)
class Decision:
    """The deliveries to queue, and in plain words why there are none when `planned` is empty."""

    planned: list[Planned]
    reason: str


@dataclass(frozen=True)
class Echo:
    """The event is one of our own copies seen again on the network it was copied to."""

    origin_account: str  # where the original was posted
    origin_id: str
    holders: frozenset[str]  # accounts that already hold the original or a copy of it


@dataclass(frozen=True)
class Rules:
    """A route's options, normalised the way the config normalises them (lower case, tags
    without '#'), so that hand-built route objects behave exactly like loaded ones."""

    kinds: frozenset[str] = DEFAULT_KINDS
    visibility: frozenset[str] = DEFAULT_VISIBILITY
    include_tags: frozenset[str] = frozenset()
    exclude_tags: frozenset[str] = DEFAULT_EXCLUDE_TAGS
    include_regex: str = ""
    exclude_regex: str = ""
    languages: frozenset[str] = frozenset()
    skip_replies_to_others: bool = True
    skip_reposts: bool = True
    on_delete: str = "delete"
    chain: bool = False

    @classmethod
    def of(cls, route: object) -> Rules:
        default = cls()

        def words(key: str, fallback: frozenset[str]) -> frozenset[str]:
            values = getattr(route, key, None)
            return fallback if values is None else frozenset(str(v).lower() for v in values)

        def tags(key: str, fallback: frozenset[str]) -> frozenset[str]:
            values = getattr(route, key, None)
            return fallback if values is None else frozenset(_tag(str(v)) for v in values)

        return cls(
            kinds=words("kinds", default.kinds),
            visibility=words("visibility", default.visibility),
            include_tags=tags("include_tags", default.include_tags),
            exclude_tags=tags("exclude_tags", default.exclude_tags),
            include_regex=str(getattr(route, "include_regex", "") or ""),
            exclude_regex=str(getattr(route, "exclude_regex", "") or ""),
            languages=words("languages", default.languages),
            skip_replies_to_others=bool(getattr(route, "skip_replies_to_others", True)),
            skip_reposts=bool(getattr(route, "skip_reposts", True)),
            on_delete=str(getattr(route, "on_delete", "delete")).lower(),
            chain=bool(getattr(route, "chain", False)),
        )


def _tag(text: str) -> str:
    return text.strip().removeprefix("#").casefold()


# --------------------------------------------------------------------------------------------------
# What an event is


def kind_of(event: Event) -> str:
    """The route kind an event counts as.

    Adapters differ in whether a boost arrives as REPOST or as a POST flagged `is_repost`, and a
    reply as REPLY or a POST with `reply_to`; both forms are read the same way here so that a
    repost or a reply can never slip through a route as an ordinary post.
    """
    kind = event.kind
    if kind in (EventKind.POST, EventKind.REPLY, EventKind.REPOST):
        if kind is EventKind.REPOST or event.post.is_repost:
            return "repost"
        if kind is EventKind.REPLY or event.post.reply_to is not None:
            return "reply"
        return "post"
    return kind.value


def is_reply_to_others(event: Event) -> bool:
    """A reply whose parent is someone else's; self-replies (threads) are not."""
    post = event.post
    if post.reply_to is None:
        return False
    author_id = post.author.id if post.author else ""
    return post.reply_to_author_id != author_id


def hashtags(post: Post) -> frozenset[str]:
    """The post's hashtags, case-folded and without '#'.

    Hashtag spans are what the network itself marked; `#word` in the text is added as well because
    not every network marks them (Telegram only sometimes, a Bluesky post may lack facets), and a
    post must not escape an exclude filter because its tag was not linked. Text inside a link is
    not searched, so `example.com/#top` is not a tag.
    """
    tags = {_tag(span.tag) for span in post.spans if span.kind is SpanKind.HASHTAG and span.tag}
    links = [(s.start, s.end) for s in post.spans if s.kind is SpanKind.LINK]
    for match in _TEXT_HASHTAG.finditer(post.text):
        if not any(start <= match.start() < end for start, end in links):
            tags.add(_tag(match[1]))
    return frozenset(tags)


@functools.lru_cache(maxsize=256)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def _language_matches(language: str | None, wanted: frozenset[str]) -> bool:
    """A listed "en" takes "en-GB" too; a post without a language passes only if "und" is listed."""
    code = (language or "").strip().lower().replace("_", "-") or "und"
    return any(code == item or code.startswith(item + "-") for item in wanted)


# --------------------------------------------------------------------------------------------------
# Filters


def _visibility_refusal(post: Post, rules: Rules) -> str:
    visibility = post.visibility.value
    if visibility in rules.visibility:
        return ""
    if visibility in DEFAULT_VISIBILITY:
        return f"{visibility} posts are not in its visibility list"
    return f"{visibility} posts never leave their network unless visibility lists {visibility}"


def _content_refusal(post: Post, rules: Rules) -> str:
    """Tags, patterns and language: what the post says, checked only when a copy is created."""
    if rules.exclude_tags or rules.include_tags:
        tags = hashtags(post)
        excluded = sorted(tags & rules.exclude_tags)
        if excluded:
            return f"the post carries #{excluded[0]}, which exclude_tags keeps out"
        if rules.include_tags and not tags & rules.include_tags:
            return "the post carries none of the include_tags"
    if rules.include_regex and not _compiled(rules.include_regex).search(post.text):
        return "the text does not match include_regex"
    if rules.exclude_regex and _compiled(rules.exclude_regex).search(post.text):
        return "the text matches exclude_regex"
    if rules.languages and not _language_matches(post.language, rules.languages):
        language = post.language or "no language"
        return f"the post's language ({language}) is not in its languages"
    return ""


def _creation_refusal(event: Event, kind: str, rules: Rules) -> str:
    post = event.post
    if kind == "repost" and rules.skip_reposts:
        return "reposts are skipped (skip_reposts = true)"
    refusal = _visibility_refusal(post, rules)
    if refusal:
        return refusal
    if kind == "reply" and rules.skip_replies_to_others and is_reply_to_others(event):
        return "replies to other people are skipped (skip_replies_to_others = true)"
    return _content_refusal(post, rules)


def refusal(event: Event, rules: Rules, echo: Echo | None = None) -> str:
    """Why a route that reads `event.account` does not take this event, or "" when it does.

    Edits and deletes are not filtered by content: whether the original was mirrored is known
    from the mapping when they are delivered, and an edit that changes a tag must still reach the
    copy that exists.
    """
    if echo is not None and not rules.chain:
        return (
            f"this is relaybird's copy of {echo.origin_account}:{echo.origin_id}, and the route"
            " does not forward copies (chain = false)"
        )
    kind = kind_of(event)
    if kind not in rules.kinds:
        return f"{_PLURAL.get(kind, kind)} are not in its kinds"
    if kind == "delete" and rules.on_delete == "ignore":
        return "deletes are ignored (on_delete = ignore)"
    if kind in CREATION_KINDS:
        return _creation_refusal(event, kind, rules)
    return ""


# --------------------------------------------------------------------------------------------------
# The decision


def plan(event: Event, routes: Iterable[RouteLike], echo: Echo | None = None) -> Decision:
    """Which targets get `event`: one delivery per target even when routes overlap, the first
    route in file order that takes it naming the delivery.

    With `echo`, only chaining routes forward it and never to an account that already holds the
    post; since every hop adds its target to the holders, a chain can never come back round.
    """
    planned: list[Planned] = []
    taken: set[str] = {event.account} | (echo.holders if echo is not None else frozenset())
    reasons: list[str] = []
    for route in routes:
        if event.account not in route.sources:
            continue
        why = refusal(event, Rules.of(route), echo)
        if not why:
            fresh = [target for target in route.targets if target not in taken]
            taken.update(fresh)
            planned += [Planned(route=route.name, target_account=target) for target in fresh]
            why = "" if fresh else _no_new_target(event, echo)
        if why:
            reasons.append(f"route {route.name}: {why}")
    if planned:
        return Decision(planned, "")
    if not reasons:
        return Decision([], f"no route reads from {event.account}")
    return Decision([], "; ".join(dict.fromkeys(reasons)))


def _no_new_target(event: Event, echo: Echo | None) -> str:
    if echo is not None:
        return "every target already holds this post or a copy of it"
    return f"its only target is {event.account} itself"
