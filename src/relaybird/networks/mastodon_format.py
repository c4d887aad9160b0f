"""Mastodon statuses to and from the neutral model.

Mastodon hands out rendered HTML and takes plain text back (it links URLs, hashtags and
`@user@domain` itself), so the two directions are asymmetric: inbound walks the HTML into text and
spans, outbound flattens spans into text that Mastodon's own linkifier will read correctly.
"""

from __future__ import annotations

import bisect
import mimetypes
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from relaybird import richtext
from relaybird.model import Author, Media, Post, Span, SpanKind, Visibility
from relaybird.networks.html_tree import Element, parse_html
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

__all__ = ["PayloadError", "html_to_text", "post_to_status_text", "status_to_post"]

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
_HTML_SPACES = re.compile("[ \t\n\r\f]+")

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
    post = richtext.clean_post(post)
    return richtext.render_plain(post.text, post.spans)


# --------------------------------------------------------------------------------------------------
# inbound


#: Deeper markup is read as plain text: Mastodon never nests this far, and recursion has a limit.
MAX_HTML_DEPTH = 64
#: Content over this many characters of HTML is refused before it is parsed.
MAX_HTML_CHARS = 1_000_000


@dataclass
class _Builder:
    """Accumulates text and spans while the HTML is walked, collapsing whitespace like a browser.

    The text is kept as a list of chunks, and only its tail is ever looked at again, so that a long
    status with thousands of links or paragraphs is read in time proportional to its length.
    """

    mentions: list[dict[str, Any]]
    local_domain: str | None
    chunks: list[str] = field(default_factory=list)
    length: int = 0
    spans: list[Span] = field(default_factory=list)
    #: Where each written run of text has its first character that is not a newline.
    starts: list[int] = field(default_factory=list)
    span_end: int = 0
    pending_newlines: int = 0
    in_pre: int = 0

    by_url: dict[str, list[dict[str, Any]]] | None = None
    by_name: dict[str, list[dict[str, Any]]] | None = None

    @property
    def text(self) -> str:
        return "".join(self.chunks)

    def mentions_by_url(self) -> dict[str, list[dict[str, Any]]]:
        """The status's mentions by profile URL, indexed once for all the mentions in its HTML."""
        if self.by_url is None:
            self.by_url = {}
            for mention in self.mentions:
                self.by_url.setdefault(as_text(mention.get("url")), []).append(mention)
        return self.by_url

    def mentions_by_name(self) -> dict[str, list[dict[str, Any]]]:
        if self.by_name is None:
            self.by_name = {}
            for mention in self.mentions:
                name = as_text(mention.get("username")).lower()
                self.by_name.setdefault(name, []).append(mention)
        return self.by_name

    def write(self, chunk: str) -> None:
        if not self.in_pre:
            chunk = _collapse(chunk)
            if chunk.startswith(" ") and (self.pending_newlines or self._at_line_start()):
                chunk = chunk[1:]
        if not chunk:
            return
        self._flush_newlines()
        lead = len(chunk) - len(chunk.lstrip("\n"))
        if lead < len(chunk):
            self.starts.append(self.length + lead)
        self._append(chunk)

    def line_break(self) -> None:
        self._trim_trailing_spaces()
        self._append("\n")

    def block_break(self, newlines: int) -> None:
        self.pending_newlines = max(self.pending_newlines, newlines)

    def add_span(self, start: int, kind: SpanKind, **fields: str) -> None:
        if start < self.length:
            self.spans.append(Span(start, self.length, kind, **fields))
            self.span_end = self.length

    def content_start(self, start: int) -> int:
        """Where text written since `start` began, past newlines a pending block break added."""
        found = bisect.bisect_left(self.starts, start)
        return self.starts[found] if found < len(self.starts) else self.length

    def _append(self, chunk: str) -> None:
        self.chunks.append(chunk)
        self.length += len(chunk)

    def _at_line_start(self) -> bool:
        return not self.chunks or self.chunks[-1][-1] in _HTML_SPACE

    def _trailing(self, char: str) -> int:
        count = 0
        for chunk in reversed(self.chunks):
            index = len(chunk)
            while index and chunk[index - 1] == char:
                index -= 1
            count += len(chunk) - index
            if index:
                break
        return count

    def _drop_tail(self, count: int) -> None:
        self.length -= count
        while count:
            last = self.chunks.pop()
            if len(last) > count:
                self.chunks.append(last[: len(last) - count])
                break
            count -= len(last)
        while self.starts and self.starts[-1] >= self.length:
            self.starts.pop()

    def _flush_newlines(self) -> None:
        if self.pending_newlines and self.length:
            self._trim_trailing_spaces()
            missing = self.pending_newlines - self._trailing("\n")
            if missing > 0:
                self._append("\n" * missing)
        self.pending_newlines = 0

    def _trim_trailing_spaces(self) -> None:
        spaces = self._trailing(" ")
        if spaces and self.span_end <= self.length - spaces:
            self._drop_tail(spaces)


def _collapse(chunk: str) -> str:
    return _HTML_SPACES.sub(" ", chunk)


def _walk(node: Element, builder: _Builder, depth: int = 0) -> None:
    if depth > MAX_HTML_DEPTH:
        builder.write(node.get_text())
        return
    for child in node.children:
        if isinstance(child, str):
            builder.write(child)
        else:
            _element(child, builder, depth + 1)


def _element(tag: Element, builder: _Builder, depth: int) -> None:
    name = tag.name
    if name == "br":
        builder.line_break()
    elif name == "a" and tag.get("href"):
        _link(tag, builder)
    elif name == "li":
        builder.block_break(1)
        builder.write("- ")
        _walk(tag, builder, depth)
        builder.block_break(1)
    elif name in _BLOCKS:
        builder.block_break(2)
        builder.in_pre += name == "pre"
        start = builder.length
        _walk(tag, builder, depth)
        builder.in_pre -= name == "pre"
        if name == "pre":
            builder.add_span(builder.content_start(start), SpanKind.CODE)
        builder.block_break(2)
    elif name in _FORMATTING:
        start = builder.length
        _walk(tag, builder, depth)
        builder.add_span(builder.content_start(start), _FORMATTING[name])
    else:
        _walk(tag, builder, depth)


def _words(tag: Element, attribute: str = "class") -> set[str]:
    return set((tag.get(attribute) or "").split())


def _link(tag: Element, builder: _Builder) -> None:
    href = str(tag.get("href"))
    shown = _collapse(tag.get_text()).strip()
    classes = _words(tag)
    is_tag = "hashtag" in classes or "tag" in _words(tag, "rel")
    before = builder.length
    if is_tag and shown.startswith("#") and len(shown) > 1:
        builder.write(shown)
        builder.add_span(builder.content_start(before), SpanKind.HASHTAG, tag=shown[1:])
    elif "mention" in classes and shown.startswith("@") and len(shown) > 1:
        builder.write(shown)
        handle = _mention_handle(href, shown, builder)
        builder.add_span(builder.content_start(before), SpanKind.MENTION, url=href, handle=handle)
    else:
        builder.write(_link_text(tag, shown, href))
        builder.add_span(builder.content_start(before), SpanKind.LINK, url=href)


def _link_text(tag: Element, shown: str, href: str) -> str:
    """Mastodon shortens long URLs with hidden `invisible` parts and an `ellipsis`; show the URL."""
    shortened = any(_words(part) & {"invisible", "ellipsis"} for part in tag.find_all("span"))
    if shortened or not shown or richtext.shows_url(shown, href):
        return href
    return shown


def _mention_handle(href: str, shown: str, builder: _Builder) -> str:
    """The full `user@domain` of a mention, from the status's `mentions`: the HTML shows `@user`."""
    username = shown[1:].split("@", 1)[0].lower()
    by_url = builder.mentions_by_url().get(href, [])
    by_name = builder.mentions_by_name().get(username, [])
    found = by_url or (by_name if len(by_name) == 1 else [])
    acct = as_text(found[0].get("acct")) if found else ""
    if acct:
        return _full_acct(acct, as_text(found[0].get("url")) or href, builder.local_domain)
    if "@" in shown[1:]:
        return shown[1:]
    host = _hostname(href) or builder.local_domain or ""
    return f"{shown[1:]}@{host}" if host else shown[1:]


def _hostname(url: str) -> str | None:
    try:
        return urlsplit(url).hostname
    except ValueError:
        return None


def _full_acct(acct: str, profile_url: str, local_domain: str | None) -> str:
    """Local accounts appear as bare `user`; the domain tells other networks where they are."""
    if "@" in acct:
        return acct
    domain = local_domain or _hostname(profile_url)
    return f"{acct}@{domain}" if domain else acct


def html_to_text(
    html: str, mentions: list[dict[str, Any]] | None = None, local_domain: str | None = None
) -> tuple[str, list[Span]]:
    """Mastodon's rendered HTML as plain text with spans: paragraphs apart by a blank line."""
    builder = _Builder(mentions or [], local_domain)
    _walk(parse_html(html), builder)
    text = builder.text.rstrip()
    spans = [s for s in builder.spans if s.end <= len(text)]
    return text, sorted(spans, key=lambda s: (s.start, -s.end))


def _guess_mime(kind: str, url: str) -> str:
    path = urlsplit(url).path
    extension = path.rsplit(".", 1)[-1].lower() if "." in path else ""
    if kind == "gifv":
        return "video/mp4"
    if extension in _MIME_BY_EXTENSION:
        return _MIME_BY_EXTENSION[extension]
    guessed, _ = mimetypes.guess_type(path)
    return guessed or _MIME_BY_TYPE.get(kind, "application/octet-stream")


def _media(attachment: dict[str, Any], sensitive: bool) -> Media | None:
    """One attachment, or None when it has no URL to fetch it from."""
    url = as_text(attachment.get("url")) or as_text(attachment.get("remote_url"))
    if not url:
        return None
    original = as_dict(as_dict(attachment.get("meta")).get("original"))
    return Media(
        mime=_guess_mime(as_text(attachment.get("type")) or "unknown", url),
        alt=as_text(attachment.get("description")),
        url=url,
        sensitive=sensitive,
        width=as_int(original.get("width")),
        height=as_int(original.get("height")),
    )


def _author(account: dict[str, Any], local_domain: str | None) -> Author:
    url = as_text(account.get("url"))
    return Author(
        network=NETWORK,
        handle=_full_acct(as_text(account.get("acct")), url, local_domain),
        display_name=as_text(account.get("display_name")),
        url=url,
        id=as_id(account.get("id")) or "",
    )


def _visibility(value: Any) -> Visibility:
    """Forks add their own levels (`local`, `limited`, ...): treat those as followers-only, the
    safe reading, rather than mirroring them publicly. A status that says nothing is public."""
    if value is None or value == "":
        return Visibility.PUBLIC
    try:
        return Visibility(value) if isinstance(value, str) else Visibility.PRIVATE
    except ValueError:
        return Visibility.PRIVATE


def status_to_post(status: Any, *, local_domain: str | None = None) -> Post:
    """A Mastodon Status entity (API JSON) as a neutral Post.

    `local_domain` is the instance's account domain; without it, a local account's domain is taken
    from its profile URL. A boost becomes a post with `is_repost` whose content is the boosted
    status's, authored by the booster, with the permalink of the original.

    Unknown fields are ignored and optional ones of the wrong type read as absent; a status without
    an id, with content over `MAX_HTML_CHARS` or text over `richtext.MAX_TEXT_CHARS`, or that is
    not a JSON object raises `PayloadError`, the only error this raises.
    """
    if not isinstance(status, dict):
        raise PayloadError("a status must be a JSON object")
    try:
        return richtext.clean_post(_status_to_post(status, local_domain))
    except PayloadError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, RecursionError) as error:
        raise PayloadError(f"status could not be read ({type(error).__name__})") from None


def _status_to_post(status: dict[str, Any], local_domain: str | None) -> Post:
    status_id = required_id(status.get("id"), "status id")
    reblog = status.get("reblog")
    shown = reblog if isinstance(reblog, dict) else status
    sensitive = shown.get("sensitive") is True
    content = richtext.clean_text(as_text(shown.get("content")))
    if len(content) > MAX_HTML_CHARS:
        raise PayloadError(f"status {status_id} has {len(content)} characters of HTML")
    text, spans = html_to_text(content, as_dicts(shown.get("mentions")), local_domain)
    if not text and not content:
        text = as_text(shown.get("text"))
    bounded_text(text, f"status {status_id}")
    reply_to = as_id(status.get("in_reply_to_id"))
    account = status.get("account")
    attachments = (_media(item, sensitive) for item in as_dicts(shown.get("media_attachments")))
    return Post(
        id=status_id,
        text=text,
        spans=spans,
        media=[item for item in attachments if item is not None],
        reply_to=reply_to,
        reply_to_author_id=as_id(status.get("in_reply_to_account_id")) if reply_to else None,
        content_warning=as_text(shown.get("spoiler_text")),
        sensitive=sensitive,
        language=as_text(shown.get("language")) or None,
        visibility=_visibility(status.get("visibility")),
        permalink=as_text(shown.get("url")) or as_text(shown.get("uri")),
        author=_author(account, local_domain) if isinstance(account, dict) else None,
        created_at=as_text(status.get("created_at")),
        is_repost=isinstance(reblog, dict),
    )
