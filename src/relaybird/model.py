"""The network-neutral model every adapter converts to and from.

Offsets in spans are Python string indices (code points). Each network module converts them to its own
unit (UTF-8 bytes for Bluesky, UTF-16 code units for Telegram) at the edge, so that shared code never has
to think about encodings.
"""

from __future__ import annotations

import base64
import json
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from typing import Any


class SpanKind(StrEnum):
    LINK = "link"
    MENTION = "mention"
    HASHTAG = "hashtag"
    BOLD = "bold"
    ITALIC = "italic"
    CODE = "code"
    SPOILER = "spoiler"


@dataclass(frozen=True)
class Span:
    """A typed range of `Post.text`, `start` inclusive and `end` exclusive.

    `url` is the link target (LINK) or the profile page (MENTION); `tag` is the hashtag without `#`;
    `handle` is the full handle of a mentioned account (``user@host``, ``alice.bsky.social``) and
    `did` its AT Protocol DID when it is known, so that a Bluesky target can make a real mention.
    """

    start: int
    end: int
    kind: SpanKind
    url: str = ""
    tag: str = ""
    handle: str = ""
    did: str = ""

    def shifted(self, delta: int) -> Span:
        return replace(self, start=self.start + delta, end=self.end + delta)


class Visibility(StrEnum):
    PUBLIC = "public"
    UNLISTED = "unlisted"
    PRIVATE = "private"
    DIRECT = "direct"


@dataclass
class Media:
    """An attachment. `data` is filled once the bytes are downloaded; `url` says where they came from."""

    mime: str
    alt: str = ""
    url: str = ""
    data: bytes | None = None
    sensitive: bool = False
    width: int | None = None
    height: int | None = None

    @property
    def size(self) -> int:
        return len(self.data) if self.data is not None else 0


@dataclass
class LinkCard:
    """A link preview: Bluesky's external embed, Mastodon's card, Telegram's link preview."""

    url: str
    title: str = ""
    description: str = ""
    thumb: Media | None = None


@dataclass(frozen=True)
class Author:
    network: str
    handle: str
    display_name: str = ""
    url: str = ""
    id: str = ""


@dataclass
class Post:
    """One post as the source network published it, in neutral form.

    `id` is the source network's id (Mastodon status id, Bluesky at-uri, Telegram "chat:message").
    `reply_to` is the source id of the parent when the post answers one, `thread_root` the id of the
    first post of that thread.
    """

    id: str
    text: str
    spans: list[Span] = field(default_factory=list)
    media: list[Media] = field(default_factory=list)
    reply_to: str | None = None
    reply_to_author_id: str | None = None
    thread_root: str | None = None
    content_warning: str = ""
    sensitive: bool = False
    language: str | None = None
    visibility: Visibility = Visibility.PUBLIC
    permalink: str = ""
    author: Author | None = None
    created_at: str = ""
    is_repost: bool = False
    card: LinkCard | None = None

    def to_json(self) -> str:
        """Serialise for the outbox: a delivery must survive a restart with everything it needs."""
        raw = asdict(self)
        thumbs = [raw["card"]["thumb"]] if raw.get("card") and raw["card"]["thumb"] else []
        for item in raw["media"] + thumbs:
            if item["data"] is not None:
                item["data"] = base64.b64encode(item["data"]).decode("ascii")
        return json.dumps(raw, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> Post:
        raw: dict[str, Any] = json.loads(text)
        spans = [Span(**{**s, "kind": SpanKind(s["kind"])}) for s in raw.pop("spans")]
        media = []
        for item in raw.pop("media"):
            if item["data"] is not None:
                item["data"] = base64.b64decode(item["data"])
            media.append(Media(**item))
        author = raw.pop("author")
        card = raw.pop("card", None)
        if card is not None:
            thumb = card.pop("thumb")
            if thumb is not None and thumb["data"] is not None:
                thumb["data"] = base64.b64decode(thumb["data"])
            card = LinkCard(**card, thumb=Media(**thumb) if thumb else None)
        return cls(
            card=card,
            spans=spans,
            media=media,
            author=Author(**author) if author else None,
            visibility=Visibility(raw.pop("visibility")),
            **raw,
        )


class EventKind(StrEnum):
    POST = "post"
    REPLY = "reply"
    MENTION = "mention"
    EDIT = "edit"
    DELETE = "delete"
    REPOST = "repost"


@dataclass
class Event:
    """Something that happened on a source account, ready for the router.

    `cursor` is what the inbound adapter will store once the event is safely in the outbox, so that a
    restart resumes right after it. `version` tells successive edits of one post apart (the edit's
    timestamp), so that each edit is relayed once and a repeated one is not. `scope` names which of
    the account's streams the cursor belongs to ("" for its posts, "mentions" for its notifications),
    so that two streams of one account never overwrite each other's position.

    For a MENTION, `reason` says what the other person did ("mention", "reply" or "quote"; empty
    when the network does not say, and then it is read from the post). `by` is the person who wrote
    the post when the post's author stands for something else (a Telegram chat that counts as the
    account): who asked matters to the crosspost bot and to who may answer from an inbox.
    """

    kind: EventKind
    account: str
    post: Post
    cursor: str | None = None
    version: str = ""
    scope: str = ""
    reason: str = ""
    by: Author | None = None


@dataclass(frozen=True)
class TargetRef:
    """Where a copy landed on a target network.

    `id` is what the network needs to address the post again (Mastodon status id, Bluesky at-uri,
    Telegram "chat_id:message_id"); `cid` is Bluesky's content hash, needed for reply references.
    """

    id: str
    url: str = ""
    cid: str = ""
