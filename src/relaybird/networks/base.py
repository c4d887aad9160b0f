"""The small interface every network implements, and the errors workers understand.

Shared code asks an adapter what it can do (`Capabilities`) instead of branching on network names, so
that adding a network means adding one module here and nothing in the router, store or relay.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from relaybird.model import Event, Post, Span, TargetRef


class DeliveryError(Exception):
    """Base of the errors a worker can act on. The message is shown to operators: no secrets in it."""


class TemporaryError(DeliveryError):
    """Worth retrying later: 5xx, timeouts, connection resets."""


class RateLimited(TemporaryError):
    """The network asked us to wait; `retry_at` is a Unix time."""

    def __init__(self, message: str, retry_at: float) -> None:
        super().__init__(message)
        self.retry_at = retry_at


class PermanentError(DeliveryError):
    """Retrying cannot help until a human changes something: the delivery is dead-lettered."""


@dataclass(frozen=True)
class Capabilities:
    """What a target network accepts, in its own units.

    `measure` counts a text the way the network counts it (graphemes, characters with URLs weighted,
    UTF-16 units); `max_text_with_media` is the limit when the part carries media (Telegram captions).
    `idempotent_create` says whether a create retried with the same key can never double a post; when
    it is false, a create whose outcome is unknown after a crash is not retried (at most once).
    `edits` says whether a published post can be changed in place; `content_warning_field` whether
    the network has a field of its own for a content warning (otherwise it becomes a text prefix),
    and `warning_counts` whether that field's length counts against `max_text` (Mastodon's does).
    """

    max_text: int
    measure: Callable[[str, list[Span]], int]
    max_media: int
    max_image_bytes: int
    max_text_with_media: int | None = None
    alt_text: bool = True
    idempotent_create: bool = True
    edits: bool = True
    content_warning_field: bool = False
    warning_counts: bool = False


@dataclass(frozen=True)
class ReplyTarget:
    """The copy being answered on the target network, and the first post of its thread there."""

    parent: TargetRef
    root: TargetRef


class EventSink(Protocol):
    """Where an inbound adapter hands what it receives; implemented by the relay."""

    async def accept(self, event: Event) -> None: ...

    def save_cursor(self, account: str, cursor: str) -> None: ...

    def set_connected(self, account: str, connected: bool, detail: str = "") -> None: ...


#: The scope (see `MentionSink.save_cursor`) of an account's mentions, beside its own posts ("").
MENTIONS = "mentions"


class MentionSink(EventSink, Protocol):
    """A sink that keeps a mention listener's cursor apart from the account's own posts'."""

    def save_cursor(self, account: str, cursor: str, scope: str = "") -> None: ...


class Network(Protocol):
    """One configured account on one network, both as a source and as a target."""

    name: str
    network: str
    capabilities: Capabilities

    async def open(self) -> None:
        """Log in and read the server's limits; raise PermanentError for bad credentials."""

    async def close(self) -> None: ...

    async def listen(self, cursor: str | None, sink: EventSink) -> None:
        """Stream the account's events into `sink` until cancelled, reconnecting on failures.

        With no cursor (first start) nothing from the past is emitted: the adapter only records where
        now is. With a cursor, what was published since then is caught up first.
        """

    def new_key(self) -> str:
        """An idempotency key chosen before a create call and stored with the attempt."""

    async def publish(
        self, post: Post, reply_to: ReplyTarget | None, key: str, retrying: bool
    ) -> TargetRef:
        """Create one post (one part of a split) and say where it landed.

        `retrying` is true when an earlier attempt with the same key may have reached the network;
        idempotent networks must then make sure the post is not created twice.
        """

    async def edit(self, ref: TargetRef, post: Post) -> TargetRef:
        """Replace the text (and caption) of one published part; only when `capabilities.edits`."""

    async def delete(self, ref: TargetRef) -> None:
        """Remove one published part; deleting what is already gone is not an error."""

    # Other people's posts: the inbox, answers and the crosspost bot.

    def mention_names(self) -> list[str]:
        """Every name people use to mention the account (full handles, DIDs, a bot's username);
        known once the network is opened."""

    async def reply_target(self, post_id: str) -> ReplyTarget:
        """What `publish` needs to answer `post_id`, someone's post on this network that no
        mapping knows (Bluesky a strong reference to it and to its thread's root)."""

    async def fetch_post(self, post_id: str) -> Post | None:
        """Someone's post read from the network, with its media where they can be carried;
        None when it cannot be read (logged), or when the network lets no one read by id."""

    async def listen_mentions(self, cursor: str | None, sink: MentionSink) -> None:
        """Mentions of the account from its notifications until cancelled, with their own
        cursor; networks whose mentions come on the ordinary stream return at once."""
