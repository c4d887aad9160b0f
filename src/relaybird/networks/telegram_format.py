"""Telegram messages and their entities to and from the neutral model.

Telegram sends text as plain text plus `MessageEntity` ranges counted in UTF-16 code units, and it
has real formatting (bold, italic, code, spoilers), so spans map almost one to one; the work is in
the unit conversion and in keeping entities in the nesting Telegram accepts.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from relaybird import richtext
from relaybird.model import Author, Media, Post, Span, SpanKind, Visibility

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


def _compatible(span: Span, kind: str, kept: list[tuple[Span, str]]) -> bool:
    """Telegram nests entities but rejects partial overlaps, links in links and anything in code."""
    for other, other_kind in kept:
        if span.end <= other.start or other.end <= span.start:
            continue
        nested = (other.start <= span.start and span.end <= other.end) or (
            span.start <= other.start and other.end <= span.end
        )
        both_atomic = span.kind in richtext.ATOMIC_KINDS and other.kind in richtext.ATOMIC_KINDS
        if not nested or both_atomic or "code" in (kind, other_kind):
            return False
    return True


def post_to_entities(post: Post) -> tuple[str, list[dict[str, Any]]]:
    """Text and `MessageEntity` dicts (UTF-16 offsets) for `sendMessage` / captions.

    A mention becomes a `text_link` to the person's profile: Telegram's own `@name` would point at
    whoever owns that name on Telegram.
    """
    text, spans = _strip(post.text, list(post.spans))
    kept: list[tuple[Span, str]] = []
    entities: list[dict[str, Any]] = []
    for span in richtext.normalize_spans(text, spans):
        found = _entity_type(text[span.start : span.end], span)
        if found is None or not _compatible(span, found[0], kept):
            continue
        kept.append((span, found[0]))
        offset = richtext.utf16_offset(text, span.start)
        entity: dict[str, Any] = {
            "type": found[0],
            "offset": offset,
            "length": richtext.utf16_offset(text, span.end) - offset,
        }
        if found[1]:
            entity["url"] = found[1]
        entities.append(entity)
    return text, entities


# --------------------------------------------------------------------------------------------------
# inbound


def _entity_span(shown: str, start: int, end: int, entity: dict[str, Any]) -> Span | None:
    kind = str(entity.get("type"))
    if kind in _LINK_TYPES:
        url = str(entity.get("url") or shown)
        if "://" not in url and kind == "url":
            url = "http://" + url
        return Span(start, end, SpanKind.LINK, url=url)
    if kind == "email":
        return Span(start, end, SpanKind.LINK, url="mailto:" + shown)
    if kind == "mention" and shown.startswith("@"):
        username = shown[1:]
        return Span(start, end, SpanKind.MENTION, url=f"https://t.me/{username}", handle=username)
    if kind == "text_mention":
        username = str((entity.get("user") or {}).get("username") or "")
        url = f"https://t.me/{username}" if username else ""
        return Span(start, end, SpanKind.MENTION, url=url, handle=username)
    if kind == "hashtag" and shown.startswith("#"):
        return Span(start, end, SpanKind.HASHTAG, tag=shown[1:].split("@", 1)[0])
    if kind in _FORMATTING_IN:
        return Span(start, end, _FORMATTING_IN[kind])
    return None


def entities_to_spans(text: str, entities: list[dict[str, Any]]) -> list[Span]:
    """Entities (UTF-16) as spans (Python indices); an entity that splits a character is ignored."""
    spans: list[Span] = []
    for entity in entities:
        try:
            start = richtext.utf16_index(text, int(entity["offset"]))
            end = richtext.utf16_index(text, int(entity["offset"]) + int(entity["length"]))
        except (KeyError, TypeError, ValueError):
            continue
        span = _entity_span(text[start:end], start, end, entity) if start < end else None
        if span is not None:
            spans.append(span)
    return sorted(spans, key=lambda s: (s.start, -s.end))


def _largest_photo(sizes: list[dict[str, Any]]) -> dict[str, Any]:
    return max(sizes, key=lambda p: (p.get("width", 0) * p.get("height", 0), p.get("file_size", 0)))


def _media(message: dict[str, Any]) -> list[Media]:
    spoiler = bool(message.get("has_media_spoiler"))
    if message.get("photo"):
        photo = _largest_photo(list(message["photo"]))
        return [
            Media(
                mime="image/jpeg",
                url=FILE_URL_PREFIX + str(photo["file_id"]),
                sensitive=spoiler,
                width=photo.get("width"),
                height=photo.get("height"),
            )
        ]
    for key, default in (
        ("animation", "video/mp4"),
        ("video", "video/mp4"),
        ("audio", "audio/mpeg"),
        ("voice", "audio/ogg"),
        ("document", "application/octet-stream"),
    ):
        item = message.get(key)
        if item:
            return [
                Media(
                    mime=str(item.get("mime_type") or default),
                    url=FILE_URL_PREFIX + str(item["file_id"]),
                    sensitive=spoiler,
                    width=item.get("width"),
                    height=item.get("height"),
                )
            ]
    return []


def _author(message: dict[str, Any]) -> Author | None:
    user = message.get("from")
    chat = message.get("sender_chat") or (
        message.get("chat") if (message.get("chat") or {}).get("type") == "channel" else None
    )
    if chat:
        username = str(chat.get("username") or "")
        return Author(
            network=NETWORK,
            handle=username,
            display_name=str(chat.get("title") or ""),
            url=f"https://t.me/{username}" if username else "",
            id=str(chat.get("id", "")),
        )
    if user:
        username = str(user.get("username") or "")
        name = " ".join(str(user[k]) for k in ("first_name", "last_name") if user.get(k))
        return Author(
            network=NETWORK,
            handle=username,
            display_name=name,
            url=f"https://t.me/{username}" if username else "",
            id=str(user.get("id", "")),
        )
    return None


def _sender_id(message: dict[str, Any]) -> str | None:
    sender = message.get("sender_chat") or message.get("from")
    return str(sender["id"]) if sender and "id" in sender else None


def _parent(message: dict[str, Any]) -> dict[str, Any] | None:
    """The message answered, if any; in a forum every topic message "answers" the topic's start."""
    parent = message.get("reply_to_message")
    if not parent or "forum_topic_created" in parent:
        return None
    return dict(parent)


def _permalink(chat: dict[str, Any], message_id: int, username: str | None) -> str:
    if username:
        return f"https://t.me/{username}/{message_id}"
    chat_id = str(chat.get("id", ""))
    if chat_id.startswith("-100"):
        return f"https://t.me/c/{chat_id.removeprefix('-100')}/{message_id}"
    return ""


def _visibility(chat: dict[str, Any], username: str | None) -> Visibility:
    """A public channel or group is public; a private chat is direct; other chats members-only."""
    if chat.get("type") == "private":
        return Visibility.DIRECT
    return Visibility.PUBLIC if username else Visibility.PRIVATE


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
    message: dict[str, Any], chat_username: str | None = None, *, chat_is_author: bool = False
) -> Post:
    """A Bot API Message (channel post or group message) as a neutral Post.

    The id is `chat_id:message_id`, the form the Telegram adapter uses for its own copies. Telegram
    does not say which message starts a thread, so `thread_root` stays empty for the store to fill.
    A forwarded message counts as a repost. Media carry their `file_id` (see `file_id_of`).

    With `chat_is_author` the chat itself is the account: the author keeps the sender's name but
    takes the chat's id, and a reply to any message of the chat is a reply to the same author, so
    that conversations inside a mirrored chat count as self-threads.
    """
    chat = message.get("chat") or {}
    chat_id = chat.get("id")
    message_id = int(message["message_id"])
    username = chat_username or chat.get("username") or None
    has_text = message.get("text") is not None
    text = str(message.get("text") if has_text else message.get("caption") or "")
    entities = message.get("entities" if has_text else "caption_entities") or []
    parent = _parent(message)
    parent_author = _sender_id(parent) if parent else None
    author = _author(message)
    if chat_is_author:
        parent_author = str(chat_id) if parent else None
        author = replace(author or Author(network=NETWORK, handle=""), id=str(chat_id))
    date = message.get("date")
    post = Post(
        id=f"{chat_id}:{message_id}",
        text=text,
        spans=entities_to_spans(text, list(entities)),
        media=_media(message),
        reply_to=f"{chat_id}:{parent['message_id']}" if parent else None,
        reply_to_author_id=parent_author,
        sensitive=bool(message.get("has_media_spoiler")),
        visibility=_visibility(chat, username),
        permalink=_permalink(chat, message_id, username),
        author=author,
        created_at=(
            datetime.fromtimestamp(int(date), UTC).isoformat().replace("+00:00", "Z")
            if date is not None
            else ""
        ),
        is_repost="forward_origin" in message,
    )
    return split_content_warning(post)
