"""Making one source post fit a target: split long text into a thread, shrink images, spread media.

This is the one shared place that reads a target's `Capabilities`; network modules only say what
their network accepts.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from relaybird.media import MediaError, fit_image
from relaybird.model import Media, Post
from relaybird.networks.base import Capabilities
from relaybird.richtext import split_post

log = logging.getLogger(__name__)


def fit_media(media: list[Media], caps: Capabilities) -> list[Media]:
    """Shrink images over the target's byte limit; media that cannot be made to fit are left out.

    What is left out is logged, and the caller links to the original post, so nothing disappears
    without a trace.
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
                    "media %s (%s) is over the target's limit; leaving it out", item.url, item.mime
                )
            continue
        try:
            data, mime = fit_image(item.data, item.mime, caps.max_image_bytes)
        except MediaError as error:
            log.warning("media %s cannot be shrunk: %s", item.url, error)
            continue
        fitted.append(replace(item, data=data, mime=mime))
    return fitted


def fit_post(post: Post, caps: Capabilities) -> list[Post]:
    """The parts to publish on the target, in order; each part after the first answers the one before."""
    media = fit_media(post.media, caps)
    limit = caps.max_text
    if media and caps.max_text_with_media is not None:
        limit = min(limit, caps.max_text_with_media)
    text_only = replace(post, media=[])
    parts = split_post(text_only, limit, caps.measure) if text_only.text else [text_only]
    groups = [media[i : i + caps.max_media] for i in range(0, len(media), max(caps.max_media, 1))]
    while len(parts) < len(groups):
        parts.append(replace(text_only, text="", spans=[]))
    return [
        replace(part, media=groups[index] if index < len(groups) else [])
        for index, part in enumerate(parts)
    ]
