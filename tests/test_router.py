"""Routing decisions: who gets a copy of what, and what never leaves its network."""

from __future__ import annotations

from dataclasses import dataclass, field

from relaybird.model import Author, Event, EventKind, Post, Visibility
from relaybird.router import plan


@dataclass
class Route:
    name: str
    sources: list[str]
    targets: list[str] = field(default_factory=list)


ROUTES = [Route("mirror", ["masto"], ["bsky", "tg"]), Route("extra", ["masto"], ["tg", "masto2"])]
ME = Author(network="mastodon", handle="me@example", id="1")


def event(kind: EventKind = EventKind.POST, **post: object) -> Event:
    fields: dict[str, object] = {"id": "100", "text": "hello", "author": ME}
    fields.update(post)
    return Event(kind=kind, account="masto", post=Post(**fields))  # type: ignore[arg-type]


def test_public_post_goes_to_every_target_once_even_when_routes_overlap() -> None:
    decision = plan(event(), ROUTES)
    assert [(p.route, p.target_account) for p in decision.planned] == [
        ("mirror", "bsky"),
        ("mirror", "tg"),
        ("extra", "masto2"),
    ]


def test_unlisted_posts_are_mirrored_but_private_and_direct_never_leave() -> None:
    assert plan(event(visibility=Visibility.UNLISTED), ROUTES).planned
    for hidden in (Visibility.PRIVATE, Visibility.DIRECT):
        decision = plan(event(visibility=hidden), ROUTES)
        assert decision.planned == []
        assert "never leave" in decision.reason


def test_self_reply_is_mirrored_and_reply_to_others_is_not() -> None:
    own = event(EventKind.REPLY, reply_to="99", reply_to_author_id="1")
    assert len(plan(own, ROUTES).planned) == 3
    other = event(EventKind.REPLY, reply_to="99", reply_to_author_id="2")
    assert plan(other, ROUTES).planned == []


def test_boosts_are_not_mirrored() -> None:
    assert plan(event(is_repost=True), ROUTES).planned == []


def test_an_account_not_in_any_route_gets_nothing_and_a_source_never_targets_itself() -> None:
    assert plan(Event(EventKind.POST, "tg", Post(id="1", text="x")), ROUTES).planned == []
    looping = [Route("self", ["masto"], ["masto", "bsky"])]
    assert [p.target_account for p in plan(event(), looping).planned] == ["bsky"]
