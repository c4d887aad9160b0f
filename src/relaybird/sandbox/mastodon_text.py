"""Plain text -> Mastodon status HTML, and the character count Mastodon's validator applies.

The sandbox must hand out exactly the markup a real Mastodon server produces, because the relaybird
converters are written against that markup. Mastodon finds entities (links, hashtags, mentions) with
twitter-text style rules, rewrites them into anchors, HTML-escapes the rest and finally runs Rails'
`simple_format`. Counting for the length limit uses the same entity extraction, so that a link is
replaced by 23 characters and a remote mention only counts its username.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

import regex

URL_PLACEHOLDER_LENGTH = 23
LINK_DISPLAY_LENGTH = 30
LINK_REL = "nofollow noopener"

_URL_CANDIDATE = regex.compile(
    r"(?<![A-Za-z0-9@\uFF20$#\uFF03])https?://[^\s<>\"]+", regex.IGNORECASE
)
_URL_HOST = regex.compile(
    r"\Ahttps?://(?:[^\s/?#@]+@)?"
    r"(?P<host>(?:[\p{L}\p{N}](?:[\p{L}\p{N}-]*[\p{L}\p{N}])?\.)+\p{L}{2,}|localhost"
    r"|\d{1,3}(?:\.\d{1,3}){3}|\[[0-9a-fA-F:]+\])(?::\d{1,5})?(?=[/?#]|\Z)",
    regex.IGNORECASE,
)
_URL_TRAILING = ".,:;!?'\"*"
_URL_BRACKETS = {")": "(", "]": "[", "}": "{"}
_URL_PREFIX = regex.compile(r"\A(https?://(www\.)?|xmpp:)")

_HASHTAG_SEPARATORS = "_\u00b7\u30fb\u200c"
_HASHTAG_NAME = (
    rf"([[:word:]_][[:word:]{_HASHTAG_SEPARATORS}]*[[:alpha:]{_HASHTAG_SEPARATORS}]"
    rf"[[:word:]{_HASHTAG_SEPARATORS}]*[[:word:]_])"
    r"|([[:word:]_]*[[:alpha:]][[:word:]_]*)"
)
_HASHTAG = regex.compile(rf"(?:^|[^/)\w])#(?P<name>{_HASHTAG_NAME})", regex.IGNORECASE)

_USERNAME = r"[a-z0-9_]+(?:[a-z0-9_.-]+[a-z0-9_]+)?"
_MENTION = regex.compile(
    rf"(?<![=/\w])@(?P<handle>(?P<username>{_USERNAME})(?:@(?P<domain>[\w.-]+\w+))?)",
    regex.IGNORECASE,
)
_MAX_DOMAIN_LENGTH = 253


class EntityKind(StrEnum):
    URL = "url"
    HASHTAG = "hashtag"
    MENTION = "mention"


@dataclass(frozen=True)
class Entity:
    """A range of the posted text (code point indices, end exclusive) that becomes markup.

    `value` is the URL, the hashtag without `#`, or the handle without the leading `@`.
    """

    kind: EntityKind
    start: int
    end: int
    value: str

    @property
    def username(self) -> str:
        return self.value.split("@", 1)[0]

    @property
    def domain(self) -> str | None:
        parts = self.value.split("@", 1)
        return parts[1] if len(parts) == 2 else None


@dataclass(frozen=True)
class MentionTarget:
    """What a mention resolved to: where the anchor points and which name it shows."""

    url: str
    username: str
    acct: str
    domain: str | None


def _trim_url(candidate: str) -> str:
    """Drop trailing punctuation and unbalanced closing brackets, as twitter-text does."""
    url = candidate
    while url and (url[-1] in _URL_TRAILING or _unbalanced_close(url)):
        url = url[:-1]
    return url


def _unbalanced_close(url: str) -> bool:
    opening = _URL_BRACKETS.get(url[-1])
    return opening is not None and url.count(opening) < url.count(url[-1])


def extract_urls(text: str) -> list[Entity]:
    entities = []
    for match in _URL_CANDIDATE.finditer(text):
        url = _trim_url(match.group(0))
        if _URL_HOST.match(url):
            entities.append(Entity(EntityKind.URL, match.start(), match.start() + len(url), url))
    return entities


def extract_hashtags(text: str) -> list[Entity]:
    entities = []
    for match in _HASHTAG.finditer(text):
        name = match.group("name")
        start = match.start("name") - 1
        end = match.end("name")
        if text.startswith("://", end) and (trimmed := regex.match(r"(.+)(https?)\Z", name)):
            name = trimmed.group(1)
            end -= len(trimmed.group(2))
        entities.append(Entity(EntityKind.HASHTAG, start, end, name))
    return entities


def extract_mentions(text: str) -> list[Entity]:
    entities = []
    for match in _MENTION.finditer(text):
        after = text[match.end() :]
        if after.startswith(("@", "\uff20", "://")):
            continue
        domain = match.group("domain")
        if domain is not None and len(domain) > _MAX_DOMAIN_LENGTH:
            continue
        entities.append(
            Entity(EntityKind.MENTION, match.start(), match.end(), match.group("handle"))
        )
    return entities


def remove_overlapping(entities: list[Entity]) -> list[Entity]:
    """Keep the earliest entity where two overlap; a hashtag inside a URL stays part of the URL."""
    kept: list[Entity] = []
    for entity in sorted(entities, key=lambda item: item.start):
        if kept and entity.start < kept[-1].end:
            continue
        kept.append(entity)
    return kept


def extract_entities(text: str) -> list[Entity]:
    return remove_overlapping(extract_urls(text) + extract_hashtags(text) + extract_mentions(text))


def count_graphemes(text: str) -> int:
    return len(regex.findall(r"\X", text))


def countable_length(text: str, spoiler_text: str = "") -> int:
    """The length Mastodon compares with `max_characters`.

    Every URL counts as `URL_PLACEHOLDER_LENGTH` characters and `@user@domain` counts as `@user`;
    the content warning counts in full. Hashtags are not shortened.
    """
    entities = remove_overlapping(extract_urls(text) + extract_mentions(text))
    pieces: list[str] = []
    cursor = 0
    for entity in entities:
        pieces.append(text[cursor : entity.start])
        if entity.kind is EntityKind.URL:
            pieces.append("x" * URL_PLACEHOLDER_LENGTH)
        else:
            pieces.append("@" + entity.username)
        cursor = entity.end
    pieces.append(text[cursor:])
    return count_graphemes(spoiler_text + "".join(pieces))


def escape(text: str) -> str:
    """ERB::Util.html_escape, which writes the apostrophe as `&#39;`."""
    return (
        text.replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace('"', "&quot;")
        .replace("'", "&#39;")
    )


def link_html(url: str) -> str:
    """The shortened link anchor: scheme hidden, 30 characters shown, the rest hidden."""
    prefix_match = _URL_PREFIX.match(url)
    prefix = prefix_match.group(0) if prefix_match else ""
    rest = url[len(prefix) :]
    shown = rest[:LINK_DISPLAY_LENGTH]
    hidden = rest[LINK_DISPLAY_LENGTH:]
    css = "ellipsis" if len(rest) > LINK_DISPLAY_LENGTH else ""
    return (
        f'<a href="{escape(url)}" target="_blank" rel="{LINK_REL}" translate="no">'
        f'<span class="invisible">{escape(prefix)}</span>'
        f'<span class="{css}">{escape(shown)}</span>'
        f'<span class="invisible">{escape(hidden)}</span></a>'
    )


def hashtag_html(name: str, url: str) -> str:
    return (
        f'<a href="{escape(url)}" class="mention hashtag" rel="tag">'
        f"#<span>{escape(name)}</span></a>"
    )


def mention_html(target: MentionTarget, shown_name: str) -> str:
    return (
        f'<span class="h-card" translate="no"><a href="{escape(target.url)}" class="u-url mention">'
        f"@<span>{escape(shown_name)}</span></a></span>"
    )


def simple_format(html: str) -> str:
    """Rails' `simple_format` followed by Mastodon's removal of newlines.

    Blank-line separated blocks become `<p>` paragraphs, single newlines become `<br />`. Like
    Ruby's `String#split`, empty trailing blocks are dropped but a leading empty block is kept.
    """
    normalized = html.replace("\r\n", "\n").replace("\r", "\n")
    paragraphs = regex.split(r"\n\n+", normalized)
    while paragraphs and paragraphs[-1] == "":
        paragraphs.pop()
    if not paragraphs:
        return "<p></p>"
    rendered = [regex.sub(r"([^\n]\n)(?=[^\n])", r"\1<br />", part) for part in paragraphs]
    return "".join(f"<p>{part}</p>" for part in rendered).replace("\n", "")


def shown_mention_name(target: MentionTarget, others: list[MentionTarget]) -> str:
    """The username alone, or the full `user@domain` when another mentioned account shares it."""
    clash = any(
        other.username.lower() == target.username.lower() and other.domain != target.domain
        for other in others
    )
    return target.acct if clash else target.username


def render_html(
    text: str,
    resolve_mention: Callable[[Entity], MentionTarget | None],
    tag_url: Callable[[str], str],
) -> tuple[str, list[MentionTarget], list[str]]:
    """Render posted text as Mastodon does; return the HTML, the mentioned targets and hashtags.

    A mention that resolves to no account stays plain text, as on a real server.
    """
    if not text.strip():
        return "", [], []
    entities = extract_entities(text)
    resolved = {
        id(entity): resolve_mention(entity) for entity in entities if entity.kind == "mention"
    }
    targets = [target for target in resolved.values() if target is not None]
    hashtags: list[str] = []
    pieces: list[str] = []
    cursor = 0
    for entity in entities:
        pieces.append(escape(text[cursor : entity.start]))
        cursor = entity.end
        if entity.kind is EntityKind.URL:
            pieces.append(link_html(entity.value))
        elif entity.kind is EntityKind.HASHTAG:
            hashtags.append(entity.value)
            pieces.append(hashtag_html(entity.value, tag_url(entity.value)))
        elif (target := resolved[id(entity)]) is not None:
            pieces.append(mention_html(target, shown_mention_name(target, targets)))
        else:
            pieces.append(escape(text[entity.start : entity.end]))
    pieces.append(escape(text[cursor:]))
    unique_targets = list({target.url: target for target in targets}.values())
    return simple_format("".join(pieces)), unique_targets, hashtags
