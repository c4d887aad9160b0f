"""Telegram messages and entities to and from the neutral model: golden payloads and UTF-16 properties.

python-telegram-bot's own `parse_entities` (which decodes UTF-16 itself) serves as an independent
reader of the entities we produce.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from telegram import Message

from relaybird import richtext
from relaybird.model import Media, Post, Span, SpanKind, Visibility
from relaybird.networks.telegram_format import (
    file_id_of,
    message_to_post,
    post_to_entities,
)
from tests.specs import load_spec
from tests.test_richtext import boundaries, rich_posts, widened

DATA = Path(__file__).parent / "data" / "telegram"
PROPERTY = settings(max_examples=200, deadline=None)


def load(name: str) -> Any:
    return json.loads((DATA / f"{name}.json").read_text(encoding="utf-8"))


def as_message(text: str, entities: list[dict[str, Any]]) -> Message:
    data = {
        "message_id": 1,
        "date": 1732125851,
        "chat": {"id": -1001, "type": "channel", "username": "c"},
        "text": text,
        "entities": entities,
    }
    return Message.de_json(data, None)


def read_back(text: str, entities: list[dict[str, Any]]) -> list[tuple[str, str, str | None]]:
    """(type, covered text, url) of each entity, as python-telegram-bot decodes them."""
    message = as_message(text, entities)
    return [(e.type, covered, e.url) for e, covered in message.parse_entities().items()]


# --------------------------------------------------------------------------------------------------
# golden payloads


def test_golden_post_becomes_the_expected_text_and_entities() -> None:
    golden = load("outbound_formatted")
    text, entities = post_to_entities(Post.from_json(json.dumps(golden["post"])))
    assert text == golden["message"]["text"]
    assert entities == golden["message"]["entities"]


def test_golden_entities_read_back_as_the_intended_text() -> None:
    golden = load("outbound_formatted")
    text, entities = post_to_entities(Post.from_json(json.dumps(golden["post"])))
    assert sorted(read_back(text, entities)) == sorted(
        [
            ("bold", "Release day!", None),
            ("italic", "day", None),
            ("url", "https://example.com/r?x=1", None),
            ("text_link", "the changelog", "https://example.com/CHANGELOG.md"),
            ("text_link", "@bob", "https://social.example/@bob"),
            ("text_link", "@alice.bsky.social", "https://bsky.app/profile/alice.bsky.social"),
            ("hashtag", "#relaybird", None),
            ("spoiler", "ending", None),
            ("code", "rm -rf /", None),
        ]
    )


def test_entity_types_and_fields_are_the_bot_apis() -> None:
    api = load_spec("telegram-bot-api/api.json")
    entity_type = api["types"]["MessageEntity"]
    fields = {field["name"] for field in entity_type["fields"]}
    described = next(f["description"] for f in entity_type["fields"] if f["name"] == "type")
    documented = described if isinstance(described, str) else " ".join(described)
    _, entities = post_to_entities(Post.from_json(json.dumps(load("outbound_formatted")["post"])))
    for entity in entities:
        assert set(entity) <= fields
        assert f'"{entity["type"]}"' in documented


@pytest.mark.parametrize("name", ["inbound_channel_photo", "inbound_group_reply"])
def test_golden_message_converts_to_the_expected_post(name: str) -> None:
    golden = load(name)
    Message.de_json(golden["message"], None)  # a shape the Bot API library accepts
    post = message_to_post(golden["message"], golden["chat_username"])
    assert post == Post.from_json(json.dumps(golden["expected"]))


def test_photo_keeps_its_file_id_for_download() -> None:
    post = message_to_post(load("inbound_channel_photo")["message"])
    assert [file_id_of(m) for m in post.media] == ["AgACAgIAAxkBAAIBQ2c-large"]
    assert file_id_of(Media(mime="image/png", url="https://x.example/a.png")) is None


def test_private_chats_and_unnamed_groups_are_not_public() -> None:
    message = {
        "message_id": 3,
        "date": 0,
        "chat": {"id": 42, "type": "private"},
        "from": {"id": 42, "first_name": "A"},
        "text": "hi",
    }
    assert message_to_post(message).visibility is Visibility.DIRECT
    group = {**message, "chat": {"id": -5, "type": "group", "title": "g"}}
    assert message_to_post(group).visibility is Visibility.PRIVATE


def test_forwarded_message_is_a_repost_and_spoiler_media_sensitive() -> None:
    message = {
        "message_id": 9,
        "date": 0,
        "chat": {"id": -1002, "type": "channel", "username": "c", "title": "C"},
        "forward_origin": {"type": "hidden_user", "date": 0, "sender_user_name": "X"},
        "video": {"file_id": "V", "file_unique_id": "v", "width": 1, "height": 1, "duration": 1},
        "has_media_spoiler": True,
        "caption": "look",
    }
    post = message_to_post(message)
    assert post.is_repost
    assert post.sensitive and post.media[0].sensitive
    assert post.media[0].mime == "video/mp4"
    assert post.text == "look"


def test_chat_as_author_makes_every_reply_in_the_chat_a_self_reply() -> None:
    message = load("inbound_group_reply")["message"]
    post = message_to_post(message, "relaybird_chat", chat_is_author=True)
    assert post.author is not None
    assert (post.author.id, post.author.handle) == ("-1009876543210", "dana_ng")
    assert post.reply_to_author_id == "-1009876543210"
    assert message_to_post(message).reply_to_author_id == "5550002"


def test_forum_topic_start_is_not_a_parent() -> None:
    message = {
        "message_id": 12,
        "date": 0,
        "chat": {"id": -1004, "type": "supergroup", "title": "Forum", "is_forum": True},
        "from": {"id": 7, "first_name": "T"},
        "is_topic_message": True,
        "message_thread_id": 10,
        "reply_to_message": {
            "message_id": 10,
            "date": 0,
            "chat": {"id": -1004, "type": "supergroup", "title": "Forum", "is_forum": True},
            "forum_topic_created": {"name": "News", "icon_color": 7322096},
        },
        "text": "in a topic",
    }
    post = message_to_post(message)
    assert (post.reply_to, post.reply_to_author_id) == (None, None)


def cw_message(text: str, entities: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {
        "message_id": 4,
        "date": 0,
        "chat": {"id": -1005, "type": "channel", "username": "c", "title": "C"},
        "text": text,
        "entities": entities,
        **extra,
    }


def test_content_warning_form_is_read_back_with_the_spans_under_it() -> None:
    text = "CW: a warning\nover two lines\n\nhidden #tag"
    body = text.index("hidden")
    post = message_to_post(
        cw_message(
            text,
            [
                {"type": "bold", "offset": 0, "length": 2},
                {"type": "spoiler", "offset": body, "length": 11},
                {"type": "hashtag", "offset": body + 7, "length": 4},
            ],
        )
    )
    assert post.content_warning == "a warning\nover two lines"
    assert post.text == "hidden #tag"
    assert post.spans == [Span(7, 11, SpanKind.HASHTAG, tag="tag")]


@pytest.mark.parametrize(
    ("text", "entities"),
    [
        ("CW: x\n\nhidden and shown", [{"type": "spoiler", "offset": 7, "length": 6}]),
        ("CW: x hidden", [{"type": "spoiler", "offset": 6, "length": 6}]),
        ("CW:\n\nhidden", [{"type": "spoiler", "offset": 5, "length": 6}]),
        ("CW: no spoiler\n\nat all", []),
    ],
)
def test_text_merely_starting_with_cw_is_left_alone(
    text: str, entities: list[dict[str, Any]]
) -> None:
    post = message_to_post(cw_message(text, entities))
    assert (post.content_warning, post.text) == ("", text)


# --------------------------------------------------------------------------------------------------
# outbound details


def test_whitespace_telegram_would_trim_is_trimmed_first() -> None:
    post = Post(id="1", text="\n\n  #tag  ", spans=[Span(4, 8, SpanKind.HASHTAG, tag="tag")])
    assert post_to_entities(post) == ("#tag", [{"type": "hashtag", "offset": 0, "length": 4}])


def test_partial_overlaps_and_entities_inside_code_are_dropped() -> None:
    text = "abcdef https://x.example"
    spans = [
        Span(0, 4, SpanKind.BOLD),
        Span(2, 6, SpanKind.ITALIC),  # partial overlap with bold
        Span(7, 24, SpanKind.CODE),
        Span(7, 24, SpanKind.LINK, url="https://x.example"),  # inside code
    ]
    _, entities = post_to_entities(Post(id="1", text=text, spans=spans))
    assert entities == [
        {"type": "bold", "offset": 0, "length": 4},
        {"type": "code", "offset": 7, "length": 17},
    ]


# --------------------------------------------------------------------------------------------------
# properties


def expected_entity(text: str, span: Span) -> tuple[str, str, str | None]:
    covered = text[span.start : span.end]
    if span.kind is SpanKind.LINK:
        return ("url", covered, None) if covered == span.url else ("text_link", covered, span.url)
    if span.kind is SpanKind.MENTION:
        return "text_link", covered, span.url
    if span.kind is SpanKind.HASHTAG:
        return "hashtag", covered, None
    return str(span.kind), covered, None


def intended(post: Post, text: str) -> dict[tuple[int, int], tuple[str, str, str | None]]:
    """Each span of `post` moved into the trimmed `text`, on whole clusters, and its entity."""
    lead = len(post.text) - len(post.text.lstrip())
    result = {}
    for span in post.spans:
        start = min(max(span.start - lead, 0), len(text))
        end = min(max(span.end - lead, 0), len(text))
        if start < end:
            start, end = widened(text, start, end)
            moved = Span(start, end, span.kind, url=span.url)
            result[(start, end)] = expected_entity(text, moved)
    return result


@PROPERTY
@given(rich_posts())
def test_entities_cover_exactly_the_intended_utf16_ranges(post: Post) -> None:
    post = richtext.clean_post(post)
    text, entities = post_to_entities(post)
    assert text == post.text.strip()
    lead = len(post.text) - len(post.text.lstrip())
    units = text.encode("utf-16-le")
    cluster_units = {len(text[:b].encode("utf-16-le")) // 2 for b in boundaries(text)}
    wanted = intended(post, text)
    for entity in entities:
        start, end = entity["offset"], entity["offset"] + entity["length"]
        assert 0 <= start < end <= len(units) // 2
        assert start in cluster_units and end in cluster_units, "entity cuts a grapheme cluster"
        covered = units[2 * start : 2 * end].decode("utf-16-le")  # raises on a split pair
        first = richtext.utf16_index(text, start)
        key = (first, first + len(covered))
        assert wanted.get(key) == (entity["type"], covered, entity.get("url"))
    atomic = {(s.start - lead, s.end - lead) for s in post.spans if s.kind in richtext.ATOMIC_KINDS}
    produced = {
        (
            richtext.utf16_index(text, e["offset"]),
            richtext.utf16_index(text, e["offset"] + e["length"]),
        )
        for e in entities
    }
    assert atomic <= produced, "every link, tag and mention is sent"
    assert sorted(read_back(text, entities)) == sorted(
        (
            e["type"],
            units[2 * e["offset"] : 2 * (e["offset"] + e["length"])].decode("utf-16-le"),
            e.get("url"),
        )
        for e in entities
    )


@PROPERTY
@given(rich_posts())
def test_entities_nest_or_stay_apart(post: Post) -> None:
    _, entities = post_to_entities(post)
    ranges = [(e["offset"], e["offset"] + e["length"], e["type"]) for e in entities]
    for i, (a1, b1, t1) in enumerate(ranges):
        for a2, b2, t2 in ranges[i + 1 :]:
            if b1 <= a2 or b2 <= a1:
                continue
            assert (a1 <= a2 and b2 <= b1) or (a2 <= a1 and b1 <= b2), "partial overlap"
            assert "code" not in (t1, t2)


@st.composite
def arbitrary_spans(draw: st.DrawFn) -> Post:
    text = draw(st.text(min_size=1, max_size=40).filter(lambda t: t.strip() == t))
    start = draw(st.integers(0, len(text)))
    end = draw(st.integers(start, len(text)))
    return Post(id="1", text=text, spans=[Span(start, end, SpanKind.BOLD)])


@PROPERTY
@given(arbitrary_spans())
def test_misplaced_spans_become_entities_on_whole_clusters(post: Post) -> None:
    text, entities = post_to_entities(post)
    span = post.spans[0]
    if span.start == span.end:
        assert entities == []
        return
    start, end = widened(text, span.start, span.end)
    assert entities == [
        {
            "type": "bold",
            "offset": len(text[:start].encode("utf-16-le")) // 2,
            "length": len(text[start:end].encode("utf-16-le")) // 2,
        }
    ]


@PROPERTY
@given(rich_posts())
def test_message_round_trip_keeps_every_range_and_target(post: Post) -> None:
    text, entities = post_to_entities(post)
    message = {
        "message_id": 5,
        "date": 0,
        "chat": {"id": -1003, "type": "channel", "username": "c"},
        "text": text,
        "entities": entities,
    }
    back = message_to_post(message)
    assert back.text == text
    sent = {(e["offset"], e["length"]) for e in entities}
    got = {
        (
            richtext.utf16_offset(text, s.start),
            richtext.utf16_offset(text, s.end) - richtext.utf16_offset(text, s.start),
        )
        for s in back.spans
    }
    assert got == sent
    urls = {e["url"] for e in entities if "url" in e}
    assert urls <= {s.url for s in back.spans}
