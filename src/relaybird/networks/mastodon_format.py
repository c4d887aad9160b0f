"""Mastodon statuses to and from the neutral model.

Mastodon hands out rendered HTML and takes plain text back (it links URLs, hashtags and
`@user@domain` itself), so the two directions are asymmetric: inbound walks the HTML into text and
spans, outbound flattens spans into text that Mastodon's own linkifier will read correctly.
"""

from __future__ import annotations

import mimetypes
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from bs4 import BeautifulSoup
from bs4.element import Comment, NavigableString, Tag

from relaybird import richtext
from relaybird.model import Author, Media, Post, Span, SpanKind, Visibility

NETWORK = "mastodon"

_BLOCKS = frozenset(
    {"p", "div", "blockquote", "pre", "ul", "ol", "h1", "h2", "h3", "h4", "h5", "h6"}
)
_FORMATTING = {
    "strong": SpanKind.BOLD,
    "b": SpanKind.BOLD,
    "em": SpanKind.ITALIC,
    "i": SpanKind.ITALIC,
    "code": SpanKind.CODE,
}
_HTML_SPACE = " \t\n\r\f"

_MIME_BY_EXTENSION = {
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "png": "image/png",
    "gif": "image/gif",
    "webp": "image/webp",
    "avif": "image/avif",
    "heic": "image/heic",
    "mp4": "video/mp4",
    "m4v": "video/mp4",
    "webm": "video/webm",
    "mov": "video/quicktime",
    "mp3": "audio/mpeg",
    "m4a": "audio/mp4",
    "ogg": "audio/ogg",
    "oga": "audio/ogg",
    "opus": "audio/ogg",
    "wav": "audio/wav",
    "flac": "audio/flac",
}
_MIME_BY_TYPE = {
    "image": "image/jpeg",
    "gifv": "video/mp4",
    "video": "video/mp4",
    "audio": "audio/mpeg",
}


# --------------------------------------------------------------------------------------------------
# outbound


def post_to_status_text(post: Post) -> str:
    """The `status` text to POST: links, tags and fediverse handles as Mastodon will link them.

    Formatting (bold, spoilers, ...) has no plain-text form and is dropped; see
    `richtext.render_plain` for how links and foreign mentions are spelled out. Measure for
    splitting with `richtext.count_mastodon`, which counts this rendering, and reserve the content
    warning's length: Mastodon counts it against the same limit.
    """
    return richtext.render_plain(post.text, post.spans)


# --------------------------------------------------------------------------------------------------
# inbound


@dataclass
class _Builder:
    """Accumulates text and spans while the HTML is walked, collapsing whitespace like a browser."""

    mentions: list[dict[str, Any]]
    local_domain: str | None
    text: str = ""
    spans: list[Span] = field(default_factory=list)
    pending_newlines: int = 0
    in_pre: int = 0

    def write(self, chunk: str) -> None:
        if not self.in_pre:
            chunk = _collapse(chunk)
            if chunk.startswith(" ") and (self.pending_newlines or self._at_line_start()):
                chunk = chunk[1:]
        if not chunk:
            return
        self._flush_newlines()
        self.text += chunk

    def line_break(self) -> None:
        self._trim_trailing_spaces()
        self.text += "\n"

    def block_break(self, newlines: int) -> None:
        self.pending_newlines = max(self.pending_newlines, newlines)

    def add_span(self, start: int, kind: SpanKind, **fields: str) -> None:
        if start < len(self.text):
            self.spans.append(Span(start, len(self.text), kind, **fields))

    def _at_line_start(self) -> bool:
        return not self.text or self.text[-1] in _HTML_SPACE

    def _flush_newlines(self) -> None:
        if self.pending_newlines and self.text:
            self._trim_trailing_spaces()
            trailing = len(self.text) - len(self.text.rstrip("\n"))
            self.text += "\n" * max(0, self.pending_newlines - trailing)
        self.pending_newlines = 0

    def _trim_trailing_spaces(self) -> None:
        trimmed = self.text.rstrip(" ")
        if all(span.end <= len(trimmed) for span in self.spans):
            self.text = trimmed


def _collapse(chunk: str) -> str:
    out: list[str] = []
    for char in chunk:
        if char in _HTML_SPACE:
            if not out or out[-1] != " ":
                out.append(" ")
        else:
            out.append(char)
    return "".join(out)


def _walk(node: Tag, builder: _Builder) -> None:
    for child in node.children:
        if isinstance(child, Comment):
            continue
        if isinstance(child, NavigableString):
            builder.write(str(child))
        elif isinstance(child, Tag):
            _element(child, builder)


def _element(tag: Tag, builder: _Builder) -> None:
    name = tag.name.lower()
    if name == "br":
        builder.line_break()
    elif name == "a" and tag.get("href"):
        _link(tag, builder)
    elif name == "li":
        builder.block_break(1)
        builder.write("- ")
        _walk(tag, builder)
        builder.block_break(1)
    elif name in _BLOCKS:
        builder.block_break(2)
        builder.in_pre += name == "pre"
        start = len(builder.text)
        _walk(tag, builder)
        builder.in_pre -= name == "pre"
        if name == "pre":
            builder.add_span(_span_start(builder, start), SpanKind.CODE)
        builder.block_break(2)
    elif name in _FORMATTING:
        start = len(builder.text)
        _walk(tag, builder)
        builder.add_span(_span_start(builder, start), _FORMATTING[name])
    else:
        _walk(tag, builder)


def _span_start(builder: _Builder, start: int) -> int:
    """Where text written since `start` began, past newlines a pending block break added."""
    while start < len(builder.text) and builder.text[start] == "\n":
        start += 1
    return start


def _words(tag: Tag, attribute: str = "class") -> set[str]:
    value = tag.get(attribute)
    if value is None:
        return set()
    if isinstance(value, str):
        return set(value.split())
    return {str(word) for word in value}


def _link(tag: Tag, builder: _Builder) -> None:
    href = str(tag.get("href"))
    shown = _collapse(tag.get_text()).strip()
    classes = _words(tag)
    is_tag = "hashtag" in classes or "tag" in _words(tag, "rel")
    before = len(builder.text)
    if is_tag and shown.startswith("#") and len(shown) > 1:
        builder.write(shown)
        builder.add_span(_span_start(builder, before), SpanKind.HASHTAG, tag=shown[1:])
    elif "mention" in classes and shown.startswith("@") and len(shown) > 1:
        builder.write(shown)
        handle = _mention_handle(href, shown, builder)
        builder.add_span(_span_start(builder, before), SpanKind.MENTION, url=href, handle=handle)
    else:
        builder.write(_link_text(tag, shown, href))
        builder.add_span(_span_start(builder, before), SpanKind.LINK, url=href)


def _link_text(tag: Tag, shown: str, href: str) -> str:
    """Mastodon shortens long URLs with hidden `invisible` parts and an `ellipsis`; show the URL."""
    shortened = any(
        _words(part) & {"invisible", "ellipsis"}
        for part in tag.find_all("span")
        if isinstance(part, Tag)
    )
    if shortened or not shown or richtext.shows_url(shown, href):
        return href
    return shown


def _mention_handle(href: str, shown: str, builder: _Builder) -> str:
    """The full `user@domain` of a mention, from the status's `mentions`: the HTML shows `@user`."""
    username = shown[1:].split("@", 1)[0].lower()
    by_url = [m for m in builder.mentions if m.get("url") == href]
    by_name = [m for m in builder.mentions if str(m.get("username", "")).lower() == username]
    found = by_url or (by_name if len(by_name) == 1 else [])
    if found:
        return _full_acct(str(found[0]["acct"]), str(found[0].get("url") or href), builder)
    if "@" in shown[1:]:
        return shown[1:]
    host = urlsplit(href).hostname or builder.local_domain or ""
    return f"{shown[1:]}@{host}" if host else shown[1:]


def _full_acct(acct: str, profile_url: str, builder: _Builder) -> str:
    """Local accounts appear as bare `user`; the domain tells other networks where they are."""
    if "@" in acct:
        return acct
    domain = builder.local_domain or urlsplit(profile_url).hostname
    return f"{acct}@{domain}" if domain else acct


def html_to_text(
    html: str, mentions: list[dict[str, Any]] | None = None, local_domain: str | None = None
) -> tuple[str, list[Span]]:
    """Mastodon's rendered HTML as plain text with spans: paragraphs apart by a blank line."""
    builder = _Builder(mentions or [], local_domain)
    _walk(BeautifulSoup(html, "html.parser"), builder)
    text = builder.text.rstrip()
    spans = [s for s in builder.spans if s.end <= len(text)]
    return text, sorted(spans, key=lambda s: (s.start, -s.end))


def _guess_mime(kind: str, url: str) -> str:
    extension = urlsplit(url).path.rsplit(".", 1)[-1].lower() if "." in url else ""
    if kind == "gifv":
        return "video/mp4"
    if extension in _MIME_BY_EXTENSION:
        return _MIME_BY_EXTENSION[extension]
    guessed, _ = mimetypes.guess_type(urlsplit(url).path)
    return guessed or _MIME_BY_TYPE.get(kind, "application/octet-stream")


def _media(attachment: dict[str, Any], sensitive: bool) -> Media:
    url = str(attachment.get("url") or attachment.get("remote_url") or "")
    original = (attachment.get("meta") or {}).get("original") or {}
    return Media(
        mime=_guess_mime(str(attachment.get("type", "unknown")), url),
        alt=str(attachment.get("description") or ""),
        url=url,
        sensitive=sensitive,
        width=original.get("width"),
        height=original.get("height"),
    )


def _author(account: dict[str, Any], local_domain: str | None) -> Author:
    url = str(account.get("url") or "")
    builder = _Builder([], local_domain)
    return Author(
        network=NETWORK,
        handle=_full_acct(str(account.get("acct", "")), url, builder),
        display_name=str(account.get("display_name") or ""),
        url=url,
        id=str(account.get("id", "")),
    )


def _visibility(value: Any) -> Visibility:
    """Forks add their own levels (`local`, `limited`, ...): treat those as followers-only, the
    safe reading, rather than mirroring them publicly."""
    try:
        return Visibility(value or "public")
    except ValueError:
        return Visibility.PRIVATE


def status_to_post(status: dict[str, Any], *, local_domain: str | None = None) -> Post:
    """A Mastodon Status entity (API JSON) as a neutral Post.

    `local_domain` is the instance's account domain; without it, a local account's domain is taken
    from its profile URL. A boost becomes a post with `is_repost` whose content is the boosted
    status's, authored by the booster, with the permalink of the original.
    """
    shown = status.get("reblog") or status
    sensitive = bool(shown.get("sensitive"))
    text, spans = html_to_text(
        str(shown.get("content") or ""), list(shown.get("mentions") or []), local_domain
    )
    if not text and not shown.get("content") and shown.get("text"):
        text = str(shown["text"])
    reply_to = status.get("in_reply_to_id")
    reply_author = status.get("in_reply_to_account_id")
    account = status.get("account")
    return Post(
        id=str(status["id"]),
        text=text,
        spans=spans,
        media=[_media(item, sensitive) for item in shown.get("media_attachments") or []],
        reply_to=str(reply_to) if reply_to else None,
        reply_to_author_id=str(reply_author) if reply_author else None,
        content_warning=str(shown.get("spoiler_text") or ""),
        sensitive=sensitive,
        language=shown.get("language") or None,
        visibility=_visibility(status.get("visibility")),
        permalink=str(shown.get("url") or shown.get("uri") or ""),
        author=_author(account, local_domain) if isinstance(account, dict) else None,
        created_at=str(status.get("created_at") or ""),
        is_repost=status.get("reblog") is not None,
    )
