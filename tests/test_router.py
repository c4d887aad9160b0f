"""Routing decisions: who gets a copy of what, what never leaves its network, and why loops cannot
happen when copies are forwarded along chains of routes."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relaybird.config import Route as ConfigRoute
from relaybird.model import Author, Event, EventKind, Post, Span, SpanKind, Visibility
from relaybird.router import Echo, Rules, hashtags, kind_of, plan


@dataclass
class Route:
    """A route as a plain object: the router reads attributes and defaults the ones missing."""

    name: str
    sources: list[str]
    targets: list[str] = field(default_factory=list)


@dataclass
class Options(Route):
    """A plain route carrying every option, with the config's defaults."""

    kinds: list[str] = field(default_factory=lambda: ["post", "reply", "edit", "delete"])
    visibility: list[str] = field(default_factory=lambda: ["public", "unlisted"])
    include_tags: list[str] = field(default_factory=list)
    exclude_tags: list[str] = field(default_factory=lambda: ["nobridge"])
    include_regex: str = ""
    exclude_regex: str = ""
    languages: list[str] = field(default_factory=list)
    skip_replies_to_others: bool = True
    skip_reposts: bool = True
    on_delete: str = "delete"
    chain: bool = False


ROUTES = [Route("mirror", ["masto"], ["bsky", "tg"]), Route("extra", ["masto"], ["tg", "masto2"])]
ME = Author(network="mastodon", handle="me@example", id="1")


def event(kind: EventKind = EventKind.POST, account: str = "masto", **post: Any) -> Event:
    fields: dict[str, Any] = {"id": "100", "text": "hello", "author": ME}
    fields.update(post)
    return Event(kind=kind, account=account, post=Post(**fields))


def targets(decision_event: Event, routes: list[Route], echo: Echo | None = None) -> list[str]:
    return [p.target_account for p in plan(decision_event, routes, echo).planned]


def one(**options: object) -> list[Route]:
    return [Options("r", ["masto"], ["bsky"], **options)]  # type: ignore[arg-type]


def tagged(text: str, *tags: str) -> Event:
    spans = []
    for tag in tags:
        start = text.index("#" + tag)
        spans.append(Span(start, start + len(tag) + 1, SpanKind.HASHTAG, tag=tag))
    return event(text=text, spans=spans)


# ------------------------------------------------------------------------------------------------
# Sources, targets, overlap


def test_public_post_goes_to_every_target_once_even_when_routes_overlap() -> None:
    decision = plan(event(), ROUTES)
    assert [(p.route, p.target_account) for p in decision.planned] == [
        ("mirror", "bsky"),
        ("mirror", "tg"),
        ("extra", "masto2"),
    ]
    assert decision.reason == ""


def test_a_later_route_delivers_to_a_shared_target_when_the_first_refuses_the_post() -> None:
    routes: list[Route] = [
        Options("tagged", ["masto"], ["bsky"], include_tags=["news"]),
        Options("all", ["masto"], ["bsky", "tg"]),
    ]
    assert [(p.route, p.target_account) for p in plan(event(), routes).planned] == [
        ("all", "bsky"),
        ("all", "tg"),
    ]
    assert [p.route for p in plan(tagged("big #news", "news"), routes).planned] == [
        "tagged",
        "all",
    ]


def test_an_account_not_in_any_route_gets_nothing_and_a_source_never_targets_itself() -> None:
    decision = plan(Event(EventKind.POST, "tg", Post(id="1", text="x")), ROUTES)
    assert decision.planned == []
    assert decision.reason == "no route reads from tg"
    looping = [Route("self", ["masto"], ["masto", "bsky"])]
    assert targets(event(), looping) == ["bsky"]
    only_self = plan(event(), [Route("self", ["masto"], ["masto"])])
    assert only_self.planned == []
    assert only_self.reason == "route self: its only target is masto itself"


def test_a_route_with_several_sources_takes_each_of_them() -> None:
    routes = [Route("both", ["masto", "tg"], ["bsky"])]
    assert targets(event(account="tg"), routes) == ["bsky"]
    assert targets(event(account="masto"), routes) == ["bsky"]


def test_config_routes_are_accepted_as_they_are() -> None:
    routes = [
        ConfigRoute(name="news", sources=["masto"], targets=["bsky"], include_tags=["#News"]),
        ConfigRoute(name="rest", sources=["masto"], targets=["tg"], exclude_regex="(?i)draft"),
    ]
    decision = plan(tagged("Today's #NEWS", "NEWS"), routes)
    assert [(p.route, p.target_account) for p in decision.planned] == [
        ("news", "bsky"),
        ("rest", "tg"),
    ]
    assert plan(event(text="a DRAFT"), routes).planned == []


# ------------------------------------------------------------------------------------------------
# Kinds


@pytest.mark.parametrize(
    ("kind", "post"),
    [
        (EventKind.POST, {}),
        (EventKind.REPLY, {"reply_to": "99", "reply_to_author_id": "1"}),
        (EventKind.EDIT, {}),
        (EventKind.DELETE, {"text": ""}),
    ],
)
def test_default_kinds_take_posts_self_replies_edits_and_deletes(
    kind: EventKind, post: dict[str, Any]
) -> None:
    assert targets(event(kind, **post), one()) == ["bsky"]


@pytest.mark.parametrize(
    ("kind", "post", "word"),
    [
        (EventKind.REPLY, {"reply_to": "99", "reply_to_author_id": "1"}, "replies"),
        (EventKind.EDIT, {}, "edits"),
        (EventKind.DELETE, {}, "deletes"),
    ],
)
def test_a_kind_left_out_of_kinds_is_not_followed(
    kind: EventKind, post: dict[str, Any], word: str
) -> None:
    decision = plan(event(kind, **post), one(kinds=["post"]))
    assert decision.planned == []
    assert decision.reason == f"route r: {word} are not in its kinds"


def test_a_post_event_carrying_a_parent_counts_as_a_reply() -> None:
    reply = event(EventKind.POST, reply_to="99", reply_to_author_id="1")
    assert kind_of(reply) == "reply"
    assert targets(reply, one(kinds=["post"])) == []
    assert targets(reply, one(kinds=["reply"])) == ["bsky"]


def test_mentions_go_only_through_mention_routes() -> None:
    mention = event(EventKind.MENTION, author=Author("mastodon", "alice@else.example", id="7"))
    assert targets(mention, one(kinds=["mention"])) == ["bsky"]
    decision = plan(mention, one())
    assert decision.planned == []
    assert decision.reason == "route r: mentions are not in its kinds"
    assert targets(event(), one(kinds=["mention"])) == []


def test_a_direct_mention_still_reaches_the_inbox() -> None:
    """The inbox is the staff's own place: what people wrote to us privately belongs there."""
    mention = event(EventKind.MENTION, visibility=Visibility.DIRECT)
    assert targets(mention, one(kinds=["mention"])) == ["bsky"]


def test_kinds_compare_case_insensitively_on_hand_built_routes() -> None:
    assert targets(event(), one(kinds=["POST"])) == ["bsky"]


# ------------------------------------------------------------------------------------------------
# Reposts


@pytest.mark.parametrize(
    ("kinds", "skip_reposts", "mirrored"),
    [
        (["post", "repost"], False, True),
        (["post", "repost"], True, False),
        (["post"], False, False),
        (["post"], True, False),
    ],
)
def test_reposts_need_repost_in_kinds_and_skip_reposts_off(
    kinds: list[str], skip_reposts: bool, mirrored: bool
) -> None:
    routes = one(kinds=kinds, skip_reposts=skip_reposts)
    for repost in (event(EventKind.REPOST, is_repost=True), event(EventKind.POST, is_repost=True)):
        assert kind_of(repost) == "repost"
        assert targets(repost, routes) == (["bsky"] if mirrored else [])


def test_boosts_are_not_mirrored_by_default() -> None:
    decision = plan(event(is_repost=True), ROUTES)
    assert decision.planned == []
    assert "reposts are not in its kinds" in decision.reason


def test_a_repost_event_of_a_reply_is_still_a_repost() -> None:
    boost = event(EventKind.REPOST, is_repost=True, reply_to="5", reply_to_author_id="9")
    assert kind_of(boost) == "repost"
    assert targets(boost, one(kinds=["repost"], skip_reposts=False)) == ["bsky"]


# ------------------------------------------------------------------------------------------------
# Visibility and replies


def test_unlisted_posts_are_mirrored_but_private_and_direct_never_leave() -> None:
    assert plan(event(visibility=Visibility.UNLISTED), ROUTES).planned
    for hidden in (Visibility.PRIVATE, Visibility.DIRECT):
        decision = plan(event(visibility=hidden), ROUTES)
        assert decision.planned == []
        assert "never leave" in decision.reason


def test_private_and_direct_posts_leave_only_when_a_route_lists_them() -> None:
    private = event(visibility=Visibility.PRIVATE)
    assert targets(private, one(visibility=["public", "private"])) == ["bsky"]
    assert targets(event(visibility=Visibility.DIRECT), one(visibility=["public", "private"])) == []
    assert targets(event(visibility=Visibility.DIRECT), one(visibility=["direct"])) == ["bsky"]


def test_a_route_can_keep_unlisted_posts_home() -> None:
    decision = plan(event(visibility=Visibility.UNLISTED), one(visibility=["public"]))
    assert decision.planned == []
    assert decision.reason == "route r: unlisted posts are not in its visibility list"
    assert targets(event(), one(visibility=["public"])) == ["bsky"]


def test_self_reply_is_mirrored_and_reply_to_others_is_not() -> None:
    own = event(EventKind.REPLY, reply_to="99", reply_to_author_id="1")
    assert len(plan(own, ROUTES).planned) == 3
    other = event(EventKind.REPLY, reply_to="99", reply_to_author_id="2")
    decision = plan(other, ROUTES)
    assert decision.planned == []
    assert "replies to other people are skipped" in decision.reason


def test_reply_with_unknown_parent_author_counts_as_a_reply_to_others() -> None:
    assert targets(event(EventKind.REPLY, reply_to="99"), one()) == []


def test_replies_to_others_are_mirrored_when_the_route_allows_them() -> None:
    other = event(EventKind.REPLY, reply_to="99", reply_to_author_id="2")
    assert targets(other, one(skip_replies_to_others=False)) == ["bsky"]


# ------------------------------------------------------------------------------------------------
# Hashtags


def test_hashtags_come_from_spans_and_from_the_text() -> None:
    post = Post(
        id="1",
        text="Spring #Release notes #Tech and café#not, see https://x.example/#anchor &#39;",
        spans=[
            Span(7, 15, SpanKind.HASHTAG, tag="Release"),
            Span(46, 71, SpanKind.LINK, url="https://x.example/#anchor"),
        ],
    )
    assert hashtags(post) == {"release", "tech"}


def test_hashtags_in_link_text_are_not_tags() -> None:
    text = "read example.org #frag now"
    post = Post(id="1", text=text, spans=[Span(5, 22, SpanKind.LINK, url="https://example.org")])
    assert hashtags(post) == set()


def test_hashtag_span_without_hash_in_text_still_counts() -> None:
    post = Post(id="1", text="topic: Cats", spans=[Span(7, 11, SpanKind.HASHTAG, tag="Cats")])
    assert hashtags(post) == {"cats"}


def test_unicode_hashtags_are_found_and_case_folded() -> None:
    assert hashtags(Post(id="1", text="Bonjour #Été and #Straße")) == {"été", "strasse"}


def test_nobridge_keeps_a_post_home_by_default() -> None:
    for post in (tagged("private #NoBridge", "NoBridge"), event(text="private #nobridge")):
        decision = plan(post, [Route("plain", ["masto"], ["bsky"])])
        assert decision.planned == []
        assert (
            decision.reason
            == "route plain: the post carries #nobridge, which exclude_tags keeps out"
        )


def test_exclude_tags_can_be_emptied() -> None:
    assert targets(event(text="#nobridge"), one(exclude_tags=[])) == ["bsky"]


def test_include_tags_need_at_least_one_tag_case_insensitively() -> None:
    routes = one(include_tags=["#News", "tech"])
    assert targets(event(text="plain"), routes) == []
    assert targets(event(text="latest #NEWS"), routes) == ["bsky"]
    assert targets(tagged("about #Tech", "Tech"), routes) == ["bsky"]
    assert "none of the include_tags" in plan(event(), routes).reason


def test_an_excluded_tag_wins_over_an_included_one() -> None:
    routes = one(include_tags=["news"], exclude_tags=["draft"])
    assert targets(event(text="#news #draft"), routes) == []


# ------------------------------------------------------------------------------------------------
# Patterns and languages


def test_include_regex_must_match_somewhere_in_the_text() -> None:
    routes = one(include_regex=r"(?i)\brelease\b")
    assert targets(event(text="New RELEASE today"), routes) == ["bsky"]
    assert targets(event(text="releases"), routes) == []
    assert plan(event(text="x"), routes).reason == "route r: the text does not match include_regex"


def test_exclude_regex_keeps_matching_posts_home() -> None:
    routes = one(exclude_regex="^RT ")
    assert targets(event(text="RT something"), routes) == []
    assert targets(event(text="not RT "), routes) == ["bsky"]
    assert plan(event(text="RT x"), routes).reason == "route r: the text matches exclude_regex"


def test_regex_reads_the_plain_text_not_the_content_warning() -> None:
    routes = one(exclude_regex="spoiler")
    assert targets(event(text="fine", content_warning="spoiler"), routes) == ["bsky"]


@pytest.mark.parametrize(
    ("languages", "language", "passes"),
    [
        (["en"], "en", True),
        (["en"], "en-GB", True),
        (["en"], "EN_us", True),
        (["EN"], "en", True),
        (["en-gb"], "en", False),
        (["en-gb"], "en-GB", True),
        (["en"], "eng", False),
        (["en"], "fr", False),
        (["en"], None, False),
        (["en", "und"], None, True),
        (["en", "und"], "", True),
        (["und"], "de", False),
        ([], None, True),
        ([], "de", True),
    ],
)
def test_languages_filter(languages: list[str], language: str | None, passes: bool) -> None:
    decision = plan(event(language=language), one(languages=languages))
    assert [p.target_account for p in decision.planned] == (["bsky"] if passes else [])
    if not passes:
        assert "is not in its languages" in decision.reason


# ------------------------------------------------------------------------------------------------
# Edits and deletes


def test_edits_and_deletes_skip_content_filters() -> None:
    routes = one(
        include_tags=["news"],
        exclude_regex="secret",
        languages=["fr"],
        visibility=["public"],
    )
    for kind in (EventKind.EDIT, EventKind.DELETE):
        changed = event(kind, text="secret now #nobridge", visibility=Visibility.PRIVATE)
        assert targets(changed, routes) == ["bsky"]
    assert targets(event(text="secret now #nobridge"), routes) == []


def test_edits_of_replies_to_others_pass_the_router() -> None:
    edit = event(EventKind.EDIT, reply_to="99", reply_to_author_id="2")
    assert kind_of(edit) == "edit"
    assert targets(edit, one()) == ["bsky"]


def test_on_delete_ignore_drops_deletes_but_not_edits() -> None:
    routes = one(on_delete="ignore")
    decision = plan(event(EventKind.DELETE), routes)
    assert decision.planned == []
    assert decision.reason == "route r: deletes are ignored (on_delete = ignore)"
    assert targets(event(EventKind.EDIT), routes) == ["bsky"]


# ------------------------------------------------------------------------------------------------
# Echoes and chains


def echo_of(origin: str, *holders: str) -> Echo:
    return Echo(origin_account=origin, origin_id="o1", holders=frozenset({origin, *holders}))


def test_an_echo_is_never_taken_by_a_route_without_chain() -> None:
    routes: list[Route] = [Options("back", ["bsky"], ["masto", "tg"])]
    decision = plan(event(account="bsky"), routes, echo_of("masto", "bsky"))
    assert decision.planned == []
    assert decision.reason == (
        "route back: this is relaybird's copy of masto:o1, and the route does not forward copies"
        " (chain = false)"
    )


def test_a_chain_route_forwards_a_copy_onward_but_never_back_to_its_holders() -> None:
    routes: list[Route] = [Options("onward", ["bsky"], ["masto", "tg", "bsky2"], chain=True)]
    assert targets(event(account="bsky"), routes, echo_of("masto", "bsky")) == ["tg", "bsky2"]
    assert targets(event(account="bsky"), routes, echo_of("masto", "bsky", "tg")) == ["bsky2"]


def test_a_chain_route_with_only_holders_as_targets_plans_nothing_and_says_why() -> None:
    routes: list[Route] = [Options("onward", ["bsky"], ["masto"], chain=True)]
    decision = plan(event(account="bsky"), routes, echo_of("masto", "bsky"))
    assert decision.planned == []
    assert decision.reason == "route onward: every target already holds this post or a copy of it"


def test_chain_routes_still_apply_their_filters_to_echoes() -> None:
    routes: list[Route] = [Options("onward", ["bsky"], ["tg"], chain=True, include_tags=["x"])]
    assert targets(event(account="bsky"), routes, echo_of("masto", "bsky")) == []
    assert targets(event(account="bsky", text="#x"), routes, echo_of("masto", "bsky")) == ["tg"]


def test_chain_routes_follow_edits_and_deletes_of_copies() -> None:
    routes: list[Route] = [Options("onward", ["bsky"], ["tg"], chain=True)]
    for kind in (EventKind.EDIT, EventKind.DELETE):
        assert targets(event(kind, account="bsky"), routes, echo_of("masto", "bsky")) == ["tg"]


def test_a_chain_route_still_takes_original_posts() -> None:
    routes: list[Route] = [Options("onward", ["bsky"], ["tg"], chain=True)]
    assert targets(event(account="bsky"), routes) == ["tg"]


def propagate(
    routes: list[Route], origin: str, order: random.Random | None = None
) -> list[tuple[str, str]]:
    """Follow one post through the routes as the relay would: every copy is seen again on its
    account as an echo, in any order, carrying every account that holds the post or has a copy
    of it planned at the time the echo is handled (as the store knows them)."""
    holders = {origin}
    deliveries: list[tuple[str, str]] = []
    decision = plan(event(account=origin), routes)
    waiting = [p.target_account for p in decision.planned]
    deliveries += [(origin, target) for target in waiting]
    holders.update(waiting)
    while waiting:
        account = waiting.pop(order.randrange(len(waiting)) if order else 0)
        decision = plan(event(account=account), routes, Echo(origin, "100", frozenset(holders)))
        for planned in decision.planned:
            deliveries.append((account, planned.target_account))
            holders.add(planned.target_account)
            waiting.append(planned.target_account)
        assert len(deliveries) < 100, "copies keep travelling: a loop"
    return deliveries


def test_a_cycle_of_chain_routes_delivers_once_per_account_and_stops() -> None:
    routes: list[Route] = [
        Options("a-b", ["a"], ["b"], chain=True),
        Options("b-c", ["b"], ["c"], chain=True),
        Options("c-a", ["c"], ["a"], chain=True),
    ]
    assert propagate(routes, "a") == [("a", "b"), ("b", "c")]


def test_two_way_mirrors_without_chain_never_send_a_copy_back() -> None:
    routes: list[Route] = [Options("there", ["a"], ["b"]), Options("back", ["b"], ["a"])]
    assert propagate(routes, "a") == [("a", "b")]


ACCOUNTS = ["a", "b", "c", "d", "e"]


@st.composite
def route_graphs(draw: st.DrawFn) -> list[Route]:
    count = draw(st.integers(1, 6))
    routes: list[Route] = []
    for index in range(count):
        sources = draw(st.lists(st.sampled_from(ACCOUNTS), min_size=1, max_size=2, unique=True))
        choices = [a for a in ACCOUNTS if a not in sources]
        chosen = draw(st.lists(st.sampled_from(choices), min_size=1, max_size=3, unique=True))
        routes.append(Options(f"r{index}", sources, chosen, chain=draw(st.booleans())))
    return routes


@settings(max_examples=200, deadline=None)
@given(routes=route_graphs(), origin=st.sampled_from(ACCOUNTS), order=st.randoms())
def test_any_route_graph_gives_each_account_at_most_one_copy_and_none_to_the_origin(
    routes: list[Route], origin: str, order: random.Random
) -> None:
    received = [target for _, target in propagate(routes, origin, order)]
    assert len(received) == len(set(received))
    assert origin not in received


@settings(max_examples=200, deadline=None)
@given(
    routes=route_graphs(),
    account=st.sampled_from(ACCOUNTS),
    holders=st.frozensets(st.sampled_from(ACCOUNTS)),
    is_echo=st.booleans(),
)
def test_plans_respect_sources_targets_holders_and_file_order(
    routes: list[Route], account: str, holders: frozenset[str], is_echo: bool
) -> None:
    echo = Echo("a", "1", holders | {"a"}) if is_echo else None
    decision = plan(event(account=account), routes, echo)
    chosen = [p.target_account for p in decision.planned]
    assert len(chosen) == len(set(chosen))
    assert account not in chosen
    assert (decision.reason == "") == bool(decision.planned)
    by_name = {route.name: route for route in routes}
    for planned in decision.planned:
        route = by_name[planned.route]
        assert account in route.sources and planned.target_account in route.targets
        assert echo is None or (Rules.of(route).chain and planned.target_account not in holders)
        first = next(
            r
            for r in routes
            if account in r.sources
            and planned.target_account in r.targets
            and (echo is None or Rules.of(r).chain)
        )
        assert first.name == planned.route


# ------------------------------------------------------------------------------------------------
# Reasons


def test_reasons_name_each_route_once_when_nothing_is_planned() -> None:
    routes: list[Route] = [
        Options("a", ["masto"], ["bsky"], include_tags=["x"]),
        Options("b", ["masto"], ["tg"], include_tags=["x"]),
        Options("c", ["masto"], ["tg"], kinds=["reply"]),
    ]
    assert plan(event(), routes).reason == (
        "route a: the post carries none of the include_tags; "
        "route b: the post carries none of the include_tags; "
        "route c: posts are not in its kinds"
    )


def test_rules_of_a_bare_object_are_the_config_defaults() -> None:
    assert Rules.of(Route("r", ["a"], ["b"])) == Rules.of(
        ConfigRoute(name="r", sources=["a"], targets=["b"])
    )
