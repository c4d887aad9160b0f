"""Telegram messages and their entities to and from the neutral model.

Telegram sends text as plain text plus `MessageEntity` ranges counted in UTF-16 code units, and it
has real formatting (bold, italic, code, spoilers), so spans map almost one to one; the work is in
the unit conversion and in keeping entities in the nesting Telegram accepts.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from relaybird import richtext
from relaybird.model import Author, Media, Post, Span, SpanKind, Visibility
from relaybird.richtext import (
    PayloadError,
    as_dict,
    as_dicts,
    as_id,
    as_int,
    as_text,
    bounded_text,
    required_id,
)

__all__ = [
    "PayloadError",
    "entities_to_spans",
    "file_id_of",
    "message_to_post",
    "post_to_entities",
    "split_content_warning",
]

NETWORK = "telegram"
#: Limits in UTF-16 code units: measure with `richtext.count_utf16`.
TELEGRAM_MAX_TEXT = 4096
TELEGRAM_MAX_CAPTION = 1024

#: Media from Telegram have no URL until `getFile` is called; this prefix carries the `file_id`.
FILE_URL_PREFIX = "tg-file:"

_FORMATTING_OUT = {
    SpanKind.BOLD: "bold",
    SpanKind.ITALIC: "italic",
    SpanKind.CODE: "code",
    SpanKind.SPOILER: "spoiler",
}
_FORMATTING_IN = {
    "bold": SpanKind.BOLD,
    "italic": SpanKind.ITALIC,
    "code": SpanKind.CODE,
    "pre": SpanKind.CODE,
    "spoiler": SpanKind.SPOILER,
}
_LINK_TYPES = frozenset({"url", "text_link"})
#: How a content warning reads on Telegram, which has no field for one (`split_content_warning`).
CW_PREFIX = "CW: "


def file_id_of(media: Media) -> str | None:
    """The `file_id` of a medium read from Telegram, to download it with `getFile`."""
    if not media.url.startswith(FILE_URL_PREFIX):
        return None
    return media.url.removeprefix(FILE_URL_PREFIX)


# --------------------------------------------------------------------------------------------------
# outbound


def _strip(text: str, spans: list[Span]) -> tuple[str, list[Span]]:
    """Telegram trims whitespace around a message; trim first so entity offsets stay true."""
    lead = len(text) - len(text.lstrip())
    stripped = text.strip()
    moved = [span.shifted(-lead) for span in spans]
    clipped = [replace(s, start=max(s.start, 0), end=min(s.end, len(stripped))) for s in moved]
    return stripped, [s for s in clipped if s.start < s.end]


def _entity_type(shown: str, span: Span) -> tuple[str, str] | None:
    """(type, url) for a span, or None when Telegram has nothing for it."""
    if span.kind is SpanKind.LINK and span.url:
        return ("url", "") if shown == span.url else ("text_link", span.url)
    if span.kind is SpanKind.MENTION and span.url:
        return "text_link", span.url
    if span.kind is SpanKind.HASHTAG and shown.startswith("#") and len(shown) > 1:
        return "hashtag", ""
    if span.kind in _FORMATTING_OUT:
        return _FORMATTING_OUT[span.kind], ""
    return None


@dataclass
class _Nesting:
    """The entities kept so far that are still open at the current position, outermost first.

    Spans arrive sorted by (start, -end), so every kept entity that could overlap a new one is
    open at its start; Telegram's rule that entities only nest makes those a chain, which keeps
    each check to the innermost one instead of all the entities kept before.
    """

    open: list[tuple[Span, str]] = field(default_factory=list)
    atomic: int = 0
    code: int = 0

    def accepts(self, span: Span, kind: str) -> bool:
        """Telegram nests entities but rejects partial overlaps, links in links, anything in code."""
        while self.open and self.open[-1][0].end <= span.start:
            self._pop()
        if not self.open:
            return True
        inner = self.open[-1][0]
        if span.end > inner.end or self.code or kind == "code":
            return False
        return not (self.atomic and span.kind in richtext.ATOMIC_KINDS)

    def push(self, span: Span, kind: str) -> None:
        self.open.append((span, kind))
        self.atomic += span.kind in richtext.ATOMIC_KINDS
        self.code += kind == "code"

    def _pop(self) -> None:
        span, kind = self.open.pop()
        self.atomic -= span.kind in richtext.ATOMIC_KINDS
        self.code -= kind == "code"


def post_to_entities(post: Post) -> tuple[str, list[dict[str, Any]]]:
    """Text and `MessageEntity` dicts (UTF-16 offsets) for `sendMessage` / captions.

    A mention becomes a `text_link` to the person's profile: Telegram's own `@name` would point at
    whoever owns that name on Telegram.
    """
    post = richtext.clean_post(post)
    text, spans = _strip(post.text, list(post.spans))
    offsets = richtext.OffsetTable.utf16(text)
    nesting = _Nesting()
    entities: list[dict[str, Any]] = []
    for span in richtext.normalize_spans(text, spans):
        found = _entity_type(text[span.start : span.end], span)
        if found is None or not nesting.accepts(span, found[0]):
            continue
        nesting.push(span, found[0])
        offset = offsets.offset(span.start)
        entity: dict[str, Any] = {
            "type": found[0],
            "offset": offset,
            "length": offsets.offset(span.end) - offset,
        }
        if found[1]:
            entity["url"] = found[1]
        entities.append(entity)
    return text, entities


# --------------------------------------------------------------------------------------------------
# inbound


def _entity_span(shown: str, start: int, end: int, entity: dict[str, Any]) -> Span | None:
    kind = as_text(entity.get("type"))
    if kind in _LINK_TYPES:
        url = as_text(entity.get("url")) or shown
        if "://" not in url and kind == "url":
            url = "http://" + url
        return Span(start, end, SpanKind.LINK, url=url)
    if kind == "email":
        return Span(start, end, SpanKind.LINK, url="mailto:" + shown)
    if kind == "mention" and shown.startswith("@"):
        username = shown[1:]
        return Span(start, end, SpanKind.MENTION, url=f"https://t.me/{username}", handle=username)
    if kind == "text_mention":
        username = as_text(as_dict(entity.get("user")).get("username"))
        url = f"https://t.me/{username}" if username else ""
        return Span(start, end, SpanKind.MENTION, url=url, handle=username)
    if kind == "hashtag" and shown.startswith("#"):
        return Span(start, end, SpanKind.HASHTAG, tag=shown[1:].split("@", 1)[0])
    if kind in _FORMATTING_IN:
        return Span(start, end, _FORMATTING_IN[kind])
    return None


def entities_to_spans(text: str, entities: list[dict[str, Any]]) -> list[Span]:
    """Entities (UTF-16) as spans (Python indices); an entity that splits a character is ignored."""
    offsets = richtext.OffsetTable.utf16(text)
    spans: list[Span] = []
    for entity in entities:
        offset, length = as_int(entity.get("offset")), as_int(entity.get("length"))
        if offset is None or length is None or length <= 0:
            continue
        try:
            start, end = offsets.index(offset), offsets.index(offset + length)
        except ValueError:
            continue
        span = _entity_span(text[start:end], start, end, entity)
        if span is not None:
            spans.append(span)
    return sorted(spans, key=lambda s: (s.start, -s.end))


def _area(photo: dict[str, Any]) -> tuple[int, int]:
    width, height = as_int(photo.get("width")) or 0, as_int(photo.get("height")) or 0
    return width * height, as_int(photo.get("file_size")) or 0


def _file_media(item: dict[str, Any], mime: str, spoiler: bool) -> list[Media]:
    file_id = as_id(item.get("file_id"))
    if file_id is None:
        return []
    return [
        Media(
            mime=mime,
            url=FILE_URL_PREFIX + file_id,
            sensitive=spoiler,
            width=as_int(item.get("width")),
            height=as_int(item.get("height")),
        )
    ]


def _media(message: dict[str, Any]) -> list[Media]:
    spoiler = message.get("has_media_spoiler") is True
    sizes = as_dicts(message.get("photo"))
    if sizes:
        return _file_media(max(sizes, key=_area), "image/jpeg", spoiler)
    for key, default in (
        ("animation", "video/mp4"),
        ("video", "video/mp4"),
        ("audio", "audio/mpeg"),
        ("voice", "audio/ogg"),
        ("document", "application/octet-stream"),
    ):
        item = message.get(key)
        if isinstance(item, dict) and item:
            return _file_media(item, as_text(item.get("mime_type")) or default, spoiler)
    return []


def _author(message: dict[str, Any]) -> Author | None:
    user = as_dict(message.get("from"))
    chat = as_dict(message.get("chat"))
    sender = as_dict(message.get("sender_chat")) or (chat if chat.get("type") == "channel" else {})
    if sender:
        username = as_text(sender.get("username"))
        return Author(
            network=NETWORK,
            handle=username,
            display_name=as_text(sender.get("title")),
            url=f"https://t.me/{username}" if username else "",
            id=as_id(sender.get("id")) or "",
        )
    if user:
        username = as_text(user.get("username"))
        names = (as_text(user.get(key)) for key in ("first_name", "last_name"))
        return Author(
            network=NETWORK,
            handle=username,
            display_name=" ".join(name for name in names if name),
            url=f"https://t.me/{username}" if username else "",
            id=as_id(user.get("id")) or "",
        )
    return None


def _sender_id(message: dict[str, Any]) -> str | None:
    sender = as_dict(message.get("sender_chat")) or as_dict(message.get("from"))
    return as_id(sender.get("id"))


def _parent(message: dict[str, Any]) -> dict[str, Any] | None:
    """The message answered, if any; in a forum every topic message "answers" the topic's start."""
    parent = message.get("reply_to_message")
    if not isinstance(parent, dict) or "forum_topic_created" in parent:
        return None
    if as_int(parent.get("message_id")) is None:
        return None
    return parent


def _permalink(chat: dict[str, Any], message_id: int, username: str | None) -> str:
    if username:
        return f"https://t.me/{username}/{message_id}"
    chat_id = as_id(chat.get("id")) or ""
    if chat_id.startswith("-100"):
        return f"https://t.me/c/{chat_id.removeprefix('-100')}/{message_id}"
    return ""


def _visibility(chat: dict[str, Any], username: str | None) -> Visibility:
    """A public channel or group is public; a private chat is direct; other chats members-only."""
    if chat.get("type") == "private":
        return Visibility.DIRECT
    return Visibility.PUBLIC if username else Visibility.PRIVATE


def _date(value: Any) -> str:
    seconds = as_int(value)
    if seconds is None:
        return ""
    try:
        return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")
    except (OverflowError, OSError, ValueError):
        return ""


def split_content_warning(post: Post) -> Post:
    """Read back the form `fitting.apply_content_warning` gives a warning where there is no field.

    That form is ``CW: <warning>`` on its own line(s), then the text under one spoiler to the end.
    A media-only post has no text to hide, so there ``CW: <warning>`` alone counts when the media
    are hidden behind a spoiler. Anything else starting with "CW:" is left as the person wrote it.
    """
    if not post.text.startswith(CW_PREFIX):
        return post
    body_end = len(post.text.rstrip())
    for cover in post.spans:
        head = post.text[: cover.start]
        if (
            cover.kind is SpanKind.SPOILER
            and cover.end >= body_end
            and head.rstrip(" \t").endswith("\n")
            and head[len(CW_PREFIX) :].strip()
        ):
            spans = [
                span.shifted(-cover.start)
                for span in post.spans
                if span is not cover and span.start >= cover.start
            ]
            return replace(
                post,
                text=post.text[cover.start :],
                spans=spans,
                content_warning=head[len(CW_PREFIX) :].strip(),
            )
    warning = post.text[len(CW_PREFIX) :].strip()
    if warning and "\n" not in warning and post.media and post.sensitive:
        return replace(post, text="", spans=[], content_warning=warning)
    return post


def message_to_post(
    message: Any, chat_username: str | None = None, *, chat_is_author: bool = False
) -> Post:
    """A Bot API Message (channel post or group message) as a neutral Post.

    The id is `chat_id:message_id`, the form the Telegram adapter uses for its own copies. Telegram
    does not say which message starts a thread, so `thread_root` stays empty for the store to fill.
    A forwarded message counts as a repost. Media carry their `file_id` (see `file_id_of`).

    With `chat_is_author` the chat itself is the account: the author keeps the sender's name but
    takes the chat's id, and a reply to any message of the chat is a reply to the same author, so
    that conversations inside a mirrored chat count as self-threads.

    Unknown fields are ignored, optional ones of the wrong type read as absent, and entities that
    fall outside the text or inside a character are dropped. A message that is not an object, has
    no integer `message_id` or chat id, or a text over `richtext.MAX_TEXT_CHARS` raises
    `PayloadError`, the only error this raises.
    """
    if not isinstance(message, dict):
        raise PayloadError("a message must be a JSON object")
    try:
        post = _message_to_post(message, chat_username, chat_is_author)
        return richtext.clean_post(split_content_warning(post))
    except PayloadError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, RecursionError) as error:
        raise PayloadError(f"message could not be read ({type(error).__name__})") from None


def _message_to_post(
    message: dict[str, Any], chat_username: str | None, chat_is_author: bool
) -> Post:
    chat = as_dict(message.get("chat"))
    chat_id = required_id(chat.get("id"), "chat id")
    message_id = as_int(message.get("message_id"))
    if message_id is None:
        raise PayloadError("message_id is missing or not a number")
    username = chat_username or as_text(chat.get("username")) or None
    has_text = isinstance(message.get("text"), str)
    text = as_text(message.get("text") if has_text else message.get("caption"))
    bounded_text(text, f"message {chat_id}:{message_id}")
    entities = as_dicts(message.get("entities" if has_text else "caption_entities"))
    parent = _parent(message)
    parent_author = _sender_id(parent) if parent else None
    author = _author(message)
    if chat_is_author:
        parent_author = chat_id if parent else None
        author = replace(author or Author(network=NETWORK, handle=""), id=chat_id)
    return Post(
        id=f"{chat_id}:{message_id}",
        text=text,
        spans=entities_to_spans(text, entities),
        media=_media(message),
        reply_to=f"{chat_id}:{parent['message_id']}" if parent else None,
        reply_to_author_id=parent_author,
        sensitive=message.get("has_media_spoiler") is True,
        visibility=_visibility(chat, username),
        permalink=_permalink(chat, message_id, username),
        author=author,
        created_at=_date(message.get("date")),
        is_repost="forward_origin" in message,
    )
