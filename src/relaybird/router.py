"""Routes and filters to delivery decisions. Pure: no I/O, so every rule can be tested exhaustively."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from relaybird.model import Event, EventKind, Visibility
from relaybird.store import Planned

MIRRORED_KINDS = frozenset({EventKind.POST, EventKind.REPLY})
MIRRORED_VISIBILITY = frozenset({Visibility.PUBLIC, Visibility.UNLISTED})


class RouteLike(Protocol):
    name: str
    sources: list[str]
    targets: list[str]


@dataclass(frozen=True)
class Decision:
    planned: list[Planned]
    reason: str


def is_reply_to_others(event: Event) -> bool:
    post = event.post
    if post.reply_to is None:
        return False
    author_id = post.author.id if post.author else ""
    return post.reply_to_author_id != author_id


def skip_reason(event: Event) -> str:
    """Why an event never leaves its network whatever the routes say, or "" when it may."""
    post = event.post
    if event.kind not in MIRRORED_KINDS:
        return f"{event.kind.value} events are not mirrored"
    if post.visibility not in MIRRORED_VISIBILITY:
        return f"{post.visibility.value} posts never leave their network"
    if post.is_repost:
        return "reposts are not mirrored"
    if is_reply_to_others(event):
        return "replies to other people are not mirrored"
    return ""


def plan(event: Event, routes: Iterable[RouteLike]) -> Decision:
    """Which targets get a copy of `event`, one delivery per target even when routes overlap."""
    reason = skip_reason(event)
    if reason:
        return Decision([], reason)
    planned: list[Planned] = []
    taken: set[str] = set()
    for route in routes:
        if event.account not in route.sources:
            continue
        for target in route.targets:
            if target != event.account and target not in taken:
                taken.add(target)
                planned.append(Planned(route=route.name, target_account=target))
    return Decision(planned, "" if planned else "no route takes this account's posts")
