"""The crosspost bot's grammar, who may use it, and how often.

People ask the bot in the words their network gives them: on Mastodon and Bluesky by mentioning
the bot's account (`@relaybird crosspost`, `@relaybird@mastodon.example crosspost bluesky`), on
Telegram also with a command (`/crosspost`, `/crosspost@relaybird_bot bluesky`). Everything here
is pure: the relay decides what a parsed command leads to.

A mention is recognised from the post's MENTION spans first (the network resolved it: a Bluesky
facet names the bot's DID, Mastodon's HTML its full handle), and from `@name` written in plain
text only when it spells a bot handle in full, so that a mention of another `@relaybird` on
another server never counts.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from relaybird import richtext
from relaybird.model import Author, Post, Span, SpanKind

# --------------------------------------------------------------------------------------------------
# parsing


@dataclass(frozen=True)
class Command:
    """A request to crosspost, as parsed from the post that carried it.

    `targets_narrowed_to` holds the network or account names the request named after the
    trigger (empty: every target of the command's route). A request that answers a post asks for
    *that* post (`crosspost_of`); a standalone request asks for itself minus the command:
    `standalone_rest`, whose text, spans and media are what remains to be posted.
    """

    request: Post
    targets_narrowed_to: frozenset[str]
    standalone_rest: Post | None

    @property
    def crosspost_of(self) -> str | None:
        """The id of the post to crosspost when the request is a reply to it."""
        return self.request.reply_to if self.standalone_rest is None else None

    @property
    def nothing_to_post(self) -> bool:
        """A standalone request that carried only the command: no text and no media remain."""
        rest = self.standalone_rest
        return rest is not None and not rest.text.strip() and not rest.media


# A handle written in text: `@user`, `@user@host`, `@name.bsky.social`; not the `@` of a URL path
# (`https://host/@user`) or of an e-mail address.
_TEXT_HANDLE = re.compile(r"(?<![\w@/.:])@([A-Za-z0-9_][\w.\-]*(?:@[A-Za-z0-9][\w.\-]*)?)")
_SEPARATOR = re.compile(r"[\s,:;]*")
_WORD = re.compile(r"(?:[^\S\n]|,)*(?:(?:and|&|\+)(?:[^\S\n]|,)+)?([^\s,]+)", re.IGNORECASE)
_WORD_PUNCTUATION = ".,:;!?"
_TAIL = re.compile(r"[^\S\n]*[:\u2013\u2014-](?=\s|$)")
_HORIZONTAL_SPACE = " \t\u00a0\u3000"


def _norm(name: str) -> str:
    return name.strip().lstrip("@").casefold()


def _bot_mentions(post: Post, bots: frozenset[str]) -> list[tuple[int, int]]:
    """Where the post mentions the bot, in text order: resolved mentions, then exact handles."""
    text = post.text
    found: list[tuple[int, int]] = []
    for span in post.spans:
        if span.kind is not SpanKind.MENTION or not 0 <= span.start < span.end <= len(text):
            continue
        if (span.handle and _norm(span.handle) in bots) or (span.did and _norm(span.did) in bots):
            found.append((span.start, span.end))
    for match in _TEXT_HANDLE.finditer(text):
        handle = match.group(1).rstrip(".-")
        end = match.start() + 1 + len(handle)
        if _norm(handle) in bots and not any(s < end and match.start() < e for s, e in found):
            found.append((match.start(), end))
    return sorted(found)


def _slash_command(text: str, trigger: str, bots: frozenset[str]) -> tuple[int, int] | None:
    """`/trigger` or `/trigger@bot` opening the text, as Telegram writes commands.

    A command addressed to another bot (`/crosspost@otherbot`) is not ours.
    """
    pattern = rf"\s*(/{re.escape(trigger)})(?:@([A-Za-z0-9_]+))?(?![\w@/])"
    match = re.match(pattern, text, re.IGNORECASE)
    if match is None or (match.group(2) and _norm(match.group(2)) not in bots):
        return None
    return match.start(1), match.end()


def _trigger_after(text: str, position: int, trigger: str) -> int | None:
    """The end of the trigger word when it follows `position` (after spaces or a comma)."""
    start = _SEPARATOR.match(text, position)
    at = start.end() if start else position
    match = re.compile(rf"{re.escape(trigger)}(?!\w)", re.IGNORECASE).match(text, at)
    return match.end() if match else None


def _narrowing(text: str, position: int, words: Mapping[str, str]) -> tuple[frozenset[str], int]:
    """The network or account words right after the trigger, and where they end.

    Words are taken while they name a target (`bluesky telegram`, `bluesky, telegram`,
    `bluesky and telegram`); the first other word starts the rest of the post.
    """
    names: set[str] = set()
    while True:
        match = _WORD.match(text, position)
        if match is None:
            break
        name = words.get(match.group(1).rstrip(_WORD_PUNCTUATION).casefold())
        if name is None:
            break
        names.add(name)
        position = match.end()
    tail = _TAIL.match(text, position)
    return frozenset(names), tail.end() if tail else position


def _command_range(
    post: Post, bots: frozenset[str], trigger: str, words: Mapping[str, str]
) -> tuple[int, int, frozenset[str]] | None:
    text = post.text
    slash = _slash_command(text, trigger, bots)
    if slash is not None:
        names, end = _narrowing(text, slash[1], words)
        return slash[0], end, names
    for start, end in _bot_mentions(post, bots):
        after = _trigger_after(text, end, trigger)
        if after is not None:
            names, stop = _narrowing(text, after, words)
            return start, stop, names
    return None


def parse_command(
    post: Post,
    *,
    bot_handles: Collection[str],
    trigger: str = "crosspost",
    network_words: Mapping[str, str],
) -> Command | None:
    """The crosspost request `post` makes, or None when it makes none.

    `bot_handles` are every name the bot answers to: full fediverse handles
    (`relaybird@mastodon.example`), Bluesky handles and DIDs, Telegram bot usernames; compared
    without a leading `@` and case-insensitively. `network_words` maps the words a person may
    write after the trigger (`bluesky`, `bsky`, `tg`, an account name) to the network or account
    names they stand for. A word that happens to name a target right after the trigger is read as
    narrowing ("@relaybird crosspost Bluesky is ..."): the grammar has no way to tell.
    """
    bots = frozenset(_norm(name) for name in bot_handles if _norm(name))
    trigger = trigger.strip()
    if not bots or not trigger:
        return None
    words = {word.casefold(): name for word, name in network_words.items()}
    found = _command_range(post, bots, trigger, words)
    if found is None:
        return None
    start, end, names = found
    rest = None if post.reply_to is not None else _without(post, start, end)
    return Command(request=post, targets_narrowed_to=names, standalone_rest=rest)


# --------------------------------------------------------------------------------------------------
# cutting the command out of a standalone request


def _without(post: Post, start: int, end: int) -> Post:
    """The post minus `text[start:end]` and the blank it leaves, spans moved with their text.

    Spans touching the command (the bot's mention) go with it. The two sides are joined by one
    space within a line; a command on a line of its own takes its line break along, so that the
    paragraphs around it stay as they were.
    """
    text = post.text
    left = text[:start].rstrip(_HORIZONTAL_SPACE)
    right = text[end:].lstrip(_HORIZONTAL_SPACE)
    # The line breaks either side of a command on its own line(s) are one separation, not two.
    before_breaks = len(left) - len(left.rstrip("\n"))
    after_breaks = len(right) - len(right.lstrip("\n"))
    right = right[min(before_breaks, after_breaks) :]
    joiner = (
        " " if left and right and not left.endswith("\n") and not right.startswith("\n") else ""
    )
    joined = left + joiner + right
    shift = len(left) + len(joiner) - (len(text) - len(right))
    right_from = len(text) - len(right)
    spans = []
    for span in post.spans:
        if span.start < end and start < span.end:
            continue
        if span.end <= start:
            spans.append(replace(span, end=min(span.end, len(left))))
        else:
            spans.append(
                replace(span, start=max(span.start, right_from) + shift, end=span.end + shift)
            )
    stripped = joined.strip()
    lead = len(joined) - len(joined.lstrip())
    moved = [
        replace(span, start=max(0, span.start - lead), end=min(len(stripped), span.end - lead))
        for span in spans
    ]
    return richtext.clean_post(
        replace(
            post,
            text=stripped,
            spans=[span for span in moved if span.start < span.end],
            reply_to=None,
            reply_to_author_id=None,
            thread_root=None,
        )
    )


# --------------------------------------------------------------------------------------------------
# who may ask

EntryKind = Literal["did", "telegram_id", "fediverse", "bluesky", "telegram_user"]
_TELEGRAM_ID = re.compile(r"-?\d+")


def classify_entry(entry: str) -> tuple[EntryKind, str]:
    """What an allowlist entry names, and the value it is compared by.

    Precedence, first rule that applies:

    1. `did:...` is an AT Protocol DID, matched against a Bluesky author's DID (exact).
    2. digits (optionally `-`) are a Telegram user id, or a chat's id for posts a channel or group
       signs as itself; matched only against Telegram authors (Mastodon ids are digits too).
    3. `user@host` or `@user@host` is a fediverse handle, matched against Mastodon authors' full
       handles, case-insensitively.
    4. a name with a dot (`alice.bsky.social`, `@alice.bsky.social`) is a Bluesky handle, matched
       case-insensitively against Bluesky authors. A handle can change hands: prefer the DID.
    5. anything else (`@alice`, `alice`) is a Telegram username, case-insensitively. Telegram
       users can change usernames too: prefer the numeric id.

    An empty entry, or one with spaces, raises ValueError (a config mistake, not a rule).
    """
    value = entry.strip()
    if not value or any(char.isspace() for char in value):
        raise ValueError(f"allowlist entry {entry!r} is empty or has spaces")
    if value.startswith("did:"):
        if len(value.split(":", 2)) < 3 or not value.split(":", 2)[2]:
            raise ValueError(f"allowlist entry {entry!r} is not a DID (did:method:id)")
        return "did", value
    if _TELEGRAM_ID.fullmatch(value):
        return "telegram_id", value
    bare = value.removeprefix("@")
    if not bare:
        raise ValueError(f"allowlist entry {entry!r} names nobody")
    if "@" in bare:
        user, _, host = bare.partition("@")
        if not user or not host or "@" in host:
            raise ValueError(f"allowlist entry {entry!r} is not a handle like user@host")
        return "fediverse", bare.casefold()
    if "." in bare:
        return "bluesky", bare.casefold()
    return "telegram_user", bare.casefold()


class Allowlist:
    """The people who may trigger a command; see `classify_entry` for how entries are read."""

    def __init__(self, entries: Iterable[str]) -> None:
        self._by_kind: dict[EntryKind, set[str]] = {}
        for entry in entries:
            kind, value = classify_entry(entry)
            self._by_kind.setdefault(kind, set()).add(value)

    def __bool__(self) -> bool:
        return bool(self._by_kind)

    def _has(self, kind: EntryKind, value: str) -> bool:
        return bool(value) and value in self._by_kind.get(kind, ())

    def allows(self, author: Author | None) -> bool:
        """Whether `author` is on the list; an author we know nothing about never is."""
        if author is None:
            return False
        handle = author.handle.strip().lstrip("@").casefold()
        if author.id.startswith("did:") and self._has("did", author.id):
            return True
        if author.network == "telegram":
            return self._has("telegram_id", author.id) or self._has("telegram_user", handle)
        if author.network == "bluesky":
            return self._has("bluesky", handle)
        return "@" in handle and self._has("fediverse", handle)


def person_key(author: Author) -> str:
    """One string per person for rate limits: the stable id where the network has one."""
    return f"{author.network}:{author.id or author.handle.casefold()}"


class PersonLimiter:
    """At most `max_requests` accepted requests per person in any `per_seconds` window.

    Refused requests do not count, so that someone who waits is served again; times are given by
    the caller (`time.monotonic()` in the daemon, plain numbers in tests).
    """

    _SWEEP_EVERY = 256

    def __init__(self, max_requests: int, per_seconds: float) -> None:
        if max_requests < 1 or per_seconds <= 0:
            raise ValueError("a rate limit needs at least one request in a positive time")
        self.max_requests = max_requests
        self.per_seconds = per_seconds
        self._accepted: dict[str, deque[float]] = {}
        self._calls = 0

    def allow(self, person_key: str, now: float) -> bool:
        self._calls += 1
        if self._calls % self._SWEEP_EVERY == 0:
            self._sweep(now)
        times = self._accepted.setdefault(person_key, deque())
        while times and times[0] <= now - self.per_seconds:
            times.popleft()
        if len(times) >= self.max_requests:
            return False
        times.append(now)
        return True

    def _sweep(self, now: float) -> None:
        """Forget people whose requests are all out of the window, so memory stays bounded."""
        stale = [
            key
            for key, times in self._accepted.items()
            if not times or times[-1] <= now - self.per_seconds
        ]
        for key in stale:
            del self._accepted[key]

    def __len__(self) -> int:
        return len(self._accepted)


# --------------------------------------------------------------------------------------------------
# answers

Refusal = Literal["not_allowed", "not_author", "rate_limited", "nothing_to_post", "no_target"]

REFUSALS: Mapping[Refusal, str] = {
    "not_allowed": "Sorry, I only crosspost for the people who run this account.",
    "not_author": "Sorry, I can only crosspost posts written by you or by our own accounts.",
    "rate_limited": "Sorry, that is more requests than I take at once. Please try again later.",
    "nothing_to_post": "There is nothing to crosspost: write the text after the command, "
    "or reply to the post you mean.",
    "no_target": "None of the networks you named is one I post to.",
}


@dataclass(frozen=True)
class CopyLink:
    """Where one copy landed, for the answer: `where` is how people call it ("Bluesky")."""

    where: str
    url: str


def render_answer(
    post_id: str,
    copies: Sequence[CopyLink],
    failures: Sequence[tuple[str, str]] = (),
    *,
    already: bool = False,
) -> Post:
    """The bot's reply: a link to every copy, then each target that failed and why.

    `already` says the post had been crossposted before (asking twice posts once); its copies
    are listed all the same, so the answer is useful either way.
    """
    lines: list[tuple[str, str]] = []
    if copies:
        head = "Already crossposted:" if already else "Crossposted:"
        lines.append((head, ""))
        lines.extend((f"{copy.where}: ", copy.url) for copy in copies)
    elif not failures:
        lines.append(("Nothing was crossposted: no target took this post.", ""))
    if failures:
        lines.append(("Could not crosspost to:" if not copies else "Failed:", ""))
        lines.extend((f"{where}: {reason}", "") for where, reason in failures)
    text = ""
    spans: list[Span] = []
    for index, (label, url) in enumerate(lines):
        text += ("\n" if index else "") + label
        if url:
            spans.append(Span(len(text), len(text) + len(url), SpanKind.LINK, url=url))
            text += url
    return richtext.clean_post(Post(id=post_id, text=text, spans=spans))
