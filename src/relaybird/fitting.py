"""Making one source post fit a target: template, content warning, split or truncate, media.

This is the one shared place that reads a target's `Capabilities`; network modules only say what
their network accepts, and routes say how the copy should read.
"""

from __future__ import annotations

import logging
import string
from dataclasses import dataclass, replace

from relaybird.media import MediaError, fit_image
from relaybird.model import Media, Post, Span, SpanKind
from relaybird.networks.base import Capabilities
from relaybird.richtext import split_post

log = logging.getLogger(__name__)

ELLIPSIS = " … "
REPLY_CONTEXT = "\n\n↩ "
MEDIA_LEFT_OUT = "\n\n📎 media: "
#: Room kept for the text when a content warning that counts against the limit is very long:
#: the network may still refuse the copy, which is then dead-lettered with its reason.
MIN_TEXT_BESIDE_WARNING = 100


@dataclass
class FitOptions:
    """How a route wants its copies to read (see the route keys in config.example.toml)."""

    template: str = "{text}"
    overflow: str = "thread"
    numbering: bool = False
    standalone_reply: bool = False


def _append(text: str, spans: list[Span], addition: str, link: str = "") -> tuple[str, list[Span]]:
    """Append text, making `link` (when given and present in `addition`) a link span."""
    start = len(text)
    spans = list(spans)
    if link and link in addition:
        at = start + addition.index(link)
        spans.append(Span(at, at + len(link), SpanKind.LINK, url=link))
    return text + addition, spans


def apply_template(post: Post, template: str) -> Post:
    """Render the route's template; `{text}` keeps its spans and `{permalink}` becomes a link."""
    if template == "{text}":
        return post
    author = post.author
    values = {
        "author": (author.display_name or author.handle) if author else "",
        "handle": author.handle if author else "",
        "network": author.network if author else "",
    }
    text, spans = "", []
    for literal, field, _, _ in string.Formatter().parse(template):
        text += literal
        if field == "text":
            spans += [span.shifted(len(text)) for span in post.spans]
            text += post.text
        elif field == "permalink":
            text, spans = _append(text, spans, post.permalink, post.permalink)
        elif field:
            text += values.get(field, "")
    text = text.rstrip()
    return replace(post, text=text, spans=[s for s in spans if s.end <= len(text)])


def apply_content_warning(post: Post, caps: Capabilities) -> Post:
    """Networks without a warning field get `CW: …` above the text, the text itself as a spoiler.

    Telegram shows the spoiler span hidden until tapped; Bluesky has no spoilers, so there the prefix
    alone warns the reader (its self-labels are only for sexual and graphic content).
    """
    if not post.content_warning or caps.content_warning_field:
        return post
    prefix = f"CW: {post.content_warning}\n\n"
    spans = [span.shifted(len(prefix)) for span in post.spans]
    if post.text:
        spans.append(Span(len(prefix), len(prefix) + len(post.text), SpanKind.SPOILER))
    return replace(post, text=prefix + post.text, spans=spans)


def fingerprint(text: str) -> str:
    """What survives every network's rendering of a text: its letters and digits, lower-cased.

    Networks rewrite links, mentions, whitespace and markup on the way in and out, so only this
    core is compared; short texts give no fingerprint, because they are too easily alike.
    """
    core = "".join(char for char in text.casefold() if char.isalnum())
    return core[:120] if len(core) >= 12 else ""


def extract_content_warning(post: Post) -> Post:
    """Read back the `CW: …` form that `apply_content_warning` writes, so round trips keep the field."""
    if post.content_warning or not post.text.startswith("CW: "):
        return post
    head, separator, body = post.text.partition("\n\n")
    warning = head.removeprefix("CW: ").strip()
    if not separator or not warning or "\n" in warning:
        return post
    cut = len(head) + len(separator)
    spans = [
        span.shifted(-cut)
        for span in post.spans
        if span.start >= cut
        and not (span.kind == SpanKind.SPOILER and span.end - span.start == len(body))
    ]
    return replace(post, text=body, spans=spans, content_warning=warning)


def fit_media(media: list[Media], caps: Capabilities) -> list[Media]:
    """Shrink images over the target's byte limit; media that cannot be made to fit are left out.

    What is left out is logged, and the copy keeps the permalink of the original in reach.
    """
    fitted: list[Media] = []
    for item in media:
        if item.data is None:
            log.warning("media %s was never downloaded; leaving it out", item.url)
            continue
        if not item.mime.startswith("image/"):
            if item.size <= caps.max_image_bytes:
                fitted.append(item)
            else:
                log.warning(
                    "media %s (%s) is over the target's limit; left out", item.url, item.mime
                )
            continue
        try:
            data, mime = fit_image(item.data, item.mime, caps.max_image_bytes)
        except MediaError as error:
            log.warning("media %s cannot be shrunk: %s", item.url, error)
            continue
        fitted.append(replace(item, data=data, mime=mime))
    return fitted


def _truncate(post: Post, limit: int, caps: Capabilities) -> list[Post]:
    if caps.measure(post.text, post.spans) <= limit:
        return [post]
    suffix = ELLIPSIS + post.permalink if post.permalink else ELLIPSIS.rstrip()
    reserve = caps.measure(suffix, [])
    first = split_post(post, limit, caps.measure, reserve=reserve)[0]
    text, spans = _append(first.text, first.spans, suffix, post.permalink)
    return [replace(first, text=text, spans=spans)]


def _number(parts: list[Post]) -> list[Post]:
    if len(parts) < 2:
        return parts
    return [
        replace(part, text=f"{part.text} ({index}/{len(parts)})")
        for index, part in enumerate(parts, start=1)
    ]


def fit_post(post: Post, caps: Capabilities, options: FitOptions | None = None) -> list[Post]:
    """The parts to publish on the target, in order; each part after the first answers the one before."""
    options = options or FitOptions()
    media = fit_media(post.media, caps)
    card = post.card
    if card is not None and card.thumb is not None:
        thumbs = fit_media([card.thumb], caps)
        card = replace(card, thumb=thumbs[0] if thumbs else None)
    shaped = apply_content_warning(apply_template(post, options.template), caps)
    left_out = len(media) < len(post.media)
    if (options.standalone_reply or left_out) and post.permalink:
        lead = REPLY_CONTEXT if options.standalone_reply else MEDIA_LEFT_OUT
        text, spans = _append(shaped.text, shaped.spans, lead + post.permalink, post.permalink)
        shaped = replace(shaped, text=text, spans=spans)
    limit = caps.max_text
    if media and caps.max_text_with_media is not None:
        limit = min(limit, caps.max_text_with_media)
    if caps.warning_counts and shaped.content_warning:
        limit = max(limit - caps.measure(shaped.content_warning, []), MIN_TEXT_BESIDE_WARNING)
    text_only = replace(shaped, media=[], card=None)
    if not text_only.text:
        parts = [text_only]
    elif options.overflow == "truncate":
        parts = _truncate(text_only, limit, caps)
    elif options.numbering:
        reserve = caps.measure(" (99/99)", [])
        parts = _number(split_post(text_only, limit, caps.measure, reserve=reserve))
    else:
        parts = split_post(text_only, limit, caps.measure)
    groups = [media[i : i + caps.max_media] for i in range(0, len(media), max(caps.max_media, 1))]
    while len(parts) < len(groups):
        parts.append(replace(text_only, text="", spans=[]))
    return [
        replace(
            part,
            media=groups[index] if index < len(groups) else [],
            card=card if index == 0 and not media else None,
        )
        for index, part in enumerate(parts)
    ]
