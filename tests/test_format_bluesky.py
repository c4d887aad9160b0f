"""Bluesky records and facets to and from the neutral model: golden payloads and byte-level properties."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import libipld
import pytest
import regex
from atproto_client import models
from atproto_client.models.utils import get_or_create
from hypothesis import given, settings
from hypothesis import strategies as st

from relaybird import richtext
from relaybird.model import LinkCard, Media, Post, Span, SpanKind
from relaybird.networks.bluesky_format import (
    BLUESKY_MAX_BYTES,
    BLUESKY_MAX_GRAPHEMES,
    ipld_to_json,
    measure_bluesky,
    post_to_record_text,
    record_to_post,
)
from tests.specs import load_spec
from tests.test_richtext import boundaries, check_split, rich_posts, widened

DATA = Path(__file__).parent / "data" / "bluesky"
PROPERTY = settings(max_examples=200, deadline=None)
FACET = "app.bsky.richtext.facet"


def load(name: str) -> Any:
    return json.loads((DATA / f"{name}.json").read_text(encoding="utf-8"))


def as_record(text: str, facets: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "$type": "app.bsky.feed.post",
        "text": text,
        "facets": facets,
        "createdAt": "2024-11-20T18:04:11.123Z",
    }


def validate(record: dict[str, Any]) -> None:
    """The atproto SDK's own models of the lexicon accept the record (strict: no unknown fields)."""
    get_or_create(record, models.AppBskyFeedPost.Record, strict=True)


# --------------------------------------------------------------------------------------------------
# golden payloads


def test_golden_post_becomes_the_expected_text_and_facets() -> None:
    golden = load("outbound_mixed")
    text, facets = post_to_record_text(Post.from_json(json.dumps(golden["post"])))
    assert text == golden["record"]["text"]
    assert facets == golden["record"]["facets"]
    validate(as_record(text, facets))


def test_facet_features_are_the_ones_the_lexicon_defines() -> None:
    lexicon = load_spec("atproto-lexicons/lexicons/app/bsky/richtext/facet.json")
    defs = lexicon["defs"]
    allowed = {f"{FACET}{ref}" for ref in defs["main"]["properties"]["features"]["items"]["refs"]}
    _, facets = post_to_record_text(Post.from_json(json.dumps(load("outbound_mixed")["post"])))
    for facet in facets:
        assert set(facet["index"]) == set(defs["byteSlice"]["required"])
        for feature in facet["features"]:
            assert feature["$type"] in allowed
            name = feature["$type"].split("#", 1)[1]
            assert set(defs[name]["required"]) <= set(feature)


@pytest.mark.parametrize("name", ["inbound_reply_images", "inbound_quote_labelled"])
def test_golden_record_converts_to_the_expected_post(name: str) -> None:
    golden = load(name)
    validate(golden["record"])
    post = record_to_post(
        golden["uri"],
        golden["cid"],
        golden["record"],
        golden["author_handle"],
        pds_url=golden["pds_url"],
    )
    assert post == Post.from_json(json.dumps(golden["expected"]))


# --------------------------------------------------------------------------------------------------
# outbound details


def test_mention_without_did_links_to_the_profile_and_keeps_the_handle_text() -> None:
    text = "hi @bob@social.example"
    span = Span(
        3, 22, SpanKind.MENTION, url="https://social.example/@bob", handle="bob@social.example"
    )
    out, facets = post_to_record_text(Post(id="1", text=text, spans=[span]))
    assert out == text
    assert facets == [
        {
            "$type": FACET,
            "index": {"byteStart": 3, "byteEnd": 22},
            "features": [{"$type": f"{FACET}#link", "uri": "https://social.example/@bob"}],
        }
    ]


def test_spans_bluesky_cannot_express_make_no_facet() -> None:
    text = "@nobody **bold** #" + "x" * 65
    spans = [
        Span(0, 7, SpanKind.MENTION, handle="nobody"),
        Span(8, 16, SpanKind.BOLD),
        Span(17, len(text), SpanKind.HASHTAG, tag="x" * 65),
    ]
    assert post_to_record_text(Post(id="1", text=text, spans=spans))[1] == []


def test_overlapping_spans_keep_the_first_and_longest() -> None:
    text = "see https://a.example/x"
    spans = [
        Span(4, 14, SpanKind.LINK, url="https://inner.example"),
        Span(4, 23, SpanKind.LINK, url="https://a.example/x"),
    ]
    _, facets = post_to_record_text(Post(id="1", text=text, spans=spans))
    assert [f["features"][0]["uri"] for f in facets] == ["https://a.example/x"]


def test_span_inside_a_grapheme_cluster_is_widened_to_the_whole_cluster() -> None:
    text = "e\u0301#x"
    span = Span(1, 4, SpanKind.HASHTAG, tag="x")
    _, facets = post_to_record_text(Post(id="1", text=text, spans=[span]))
    assert facets[0]["index"] == {"byteStart": 0, "byteEnd": len(text.encode())}


def test_measure_holds_both_limits() -> None:
    assert measure_bluesky("a" * BLUESKY_MAX_GRAPHEMES, []) == BLUESKY_MAX_GRAPHEMES
    assert measure_bluesky("a" * (BLUESKY_MAX_GRAPHEMES + 1), []) > BLUESKY_MAX_GRAPHEMES
    family = "👩\u200d👩\u200d👧\u200d👦"  # one grapheme, 25 bytes
    assert measure_bluesky(family * 120, []) == BLUESKY_MAX_GRAPHEMES
    assert measure_bluesky(family * 121, []) > BLUESKY_MAX_GRAPHEMES


def test_long_emoji_text_splits_under_the_byte_limit() -> None:
    family = "👩\u200d👩\u200d👧\u200d👦"
    post = Post(id="1", text=" ".join([family * 10] * 30))  # 329 graphemes, 7,529 bytes
    parts = richtext.split_post(post, BLUESKY_MAX_GRAPHEMES, measure_bluesky)
    assert len(parts) == 3
    for part in parts:
        assert richtext.graphemes(part.text) <= BLUESKY_MAX_GRAPHEMES
        assert len(part.text.encode()) <= BLUESKY_MAX_BYTES


# --------------------------------------------------------------------------------------------------
# inbound details


def test_facet_that_splits_a_character_is_ignored() -> None:
    text = "📷 #x"
    record = {
        "text": text,
        "createdAt": "2024-01-01T00:00:00Z",
        "facets": [
            {
                "index": {"byteStart": 2, "byteEnd": 7},
                "features": [{"$type": f"{FACET}#tag", "tag": "x"}],
            },
            {
                "index": {"byteStart": 5, "byteEnd": 99},
                "features": [{"$type": f"{FACET}#tag", "tag": "x"}],
            },
            {
                "index": {"byteStart": 5, "byteEnd": 7},
                "features": [{"$type": f"{FACET}#tag", "tag": "x"}],
            },
        ],
    }
    post = record_to_post("at://did:plc:a/app.bsky.feed.post/1", "cid", record, "a.example")
    assert post.spans == [Span(2, 4, SpanKind.HASHTAG, tag="x")]


THUMB_CID = "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy"


def external_record(**embed_extra: Any) -> dict[str, Any]:
    return {
        "$type": "app.bsky.feed.post",
        "text": "Worth a read",
        "createdAt": "2024-11-21T08:00:00.000Z",
        "labels": {"$type": "com.atproto.label.defs#selfLabels", "values": [{"val": "nudity"}]},
        "embed": {
            "$type": "app.bsky.embed.external",
            "external": {
                "uri": "https://example.org/article",
                "title": "An article",
                "description": "What it says",
                **embed_extra,
            },
        },
    }


def test_external_embed_becomes_a_link_card_with_its_thumbnail_blob() -> None:
    thumb = {"$type": "blob", "ref": {"$link": THUMB_CID}, "mimeType": "image/jpeg", "size": 9}
    record = external_record(thumb=thumb)
    validate(record)

    post = record_to_post(
        "at://did:plc:a/app.bsky.feed.post/3l", "cid", record, "a.example", pds_url="https://pds.x"
    )

    assert post.card == LinkCard(
        url="https://example.org/article",
        title="An article",
        description="What it says",
        thumb=Media(
            mime="image/jpeg",
            url=f"https://pds.x/xrpc/com.atproto.sync.getBlob?did=did:plc:a&cid={THUMB_CID}",
            sensitive=True,
        ),
    )
    assert post.media == [] and post.sensitive


def test_external_embed_without_thumbnail_and_other_embeds() -> None:
    bare = record_to_post("at://did:plc:a/app.bsky.feed.post/3l", "c", external_record(), "a")
    quote = record_to_post(
        "at://did:plc:a/app.bsky.feed.post/3l",
        "c",
        {"text": "q", "embed": {"$type": "app.bsky.embed.record", "record": {"uri": "at://x"}}},
        "a",
    )

    assert bare.card is not None and bare.card.thumb is None
    assert quote.card is None


def test_decoded_cbor_links_and_bytes_take_their_json_forms() -> None:
    raw_cid = libipld.decode_multibase(THUMB_CID)[1]
    block = {
        "image": {"$type": "blob", "ref": raw_cid, "mimeType": "image/png", "size": 3},
        "list": [b"\x00\x01\x02", 7, None, "text"],
        "almost": raw_cid[:-1],
    }

    assert ipld_to_json(block) == {
        "image": {"$type": "blob", "ref": {"$link": THUMB_CID}, "mimeType": "image/png", "size": 3},
        "list": [{"$bytes": "AAEC"}, 7, None, "text"],
        "almost": {"$bytes": base64.b64encode(raw_cid[:-1]).decode().rstrip("=")},
    }


# --------------------------------------------------------------------------------------------------
# properties


def intended_facets(post: Post) -> dict[tuple[int, int], dict[str, Any]]:
    """What each token span of a generated post should become, keyed by its byte range."""
    expected: dict[tuple[int, int], dict[str, Any]] = {}
    text = post.text
    for span in post.spans:
        key = (len(text[: span.start].encode()), len(text[: span.end].encode()))
        if span.kind is SpanKind.LINK:
            expected[key] = {"$type": f"{FACET}#link", "uri": span.url}
        elif span.kind is SpanKind.MENTION and span.did:
            expected[key] = {"$type": f"{FACET}#mention", "did": span.did}
        elif span.kind is SpanKind.MENTION:
            expected[key] = {"$type": f"{FACET}#link", "uri": span.url}
        elif span.kind is SpanKind.HASHTAG:
            expected[key] = {"$type": f"{FACET}#tag", "tag": span.tag}
    return expected


@PROPERTY
@given(rich_posts())
def test_facets_cover_exactly_the_intended_bytes(post: Post) -> None:
    text, facets = post_to_record_text(post)
    post = richtext.clean_post(post)
    assert text == post.text
    data = text.encode("utf-8")
    cluster_bytes = {len(text[:b].encode()) for b in boundaries(text)}
    expected = intended_facets(post)
    found: dict[tuple[int, int], dict[str, Any]] = {}
    previous_end = 0
    for facet in facets:
        start, end = facet["index"]["byteStart"], facet["index"]["byteEnd"]
        assert previous_end <= start < end <= len(data), "facets sorted, inside, not overlapping"
        previous_end = end
        assert start in cluster_bytes and end in cluster_bytes, "facet cuts a grapheme cluster"
        covered = data[start:end].decode("utf-8")  # raises if not on code-point boundaries
        (feature,) = facet["features"]
        if (start, end) in expected:
            found[(start, end)] = feature
        else:
            assert feature == {"$type": f"{FACET}#link", "uri": covered}, "only bare URLs are extra"
    assert found == expected
    validate(as_record(text, facets))


@st.composite
def arbitrary_spans(draw: st.DrawFn) -> Post:
    text = draw(st.text(min_size=1, max_size=40))
    spans = []
    for _ in range(draw(st.integers(1, 4))):
        start = draw(st.integers(0, len(text)))
        end = draw(st.integers(start, len(text)))
        spans.append(Span(start, end, SpanKind.LINK, url=f"https://x.example/{start}-{end}"))
    return Post(id="1", text=text, spans=spans)


@PROPERTY
@given(arbitrary_spans())
def test_misplaced_spans_become_facets_on_whole_clusters(post: Post) -> None:
    text, facets = post_to_record_text(post)
    by_url = {s.url: s for s in post.spans}
    for facet in facets:
        uri = facet["features"][0]["uri"]
        if uri not in by_url:
            continue
        span = by_url[uri]
        assert span.start < span.end, "an empty span makes no facet"
        start, end = widened(text, span.start, span.end)
        assert facet["index"] == {
            "byteStart": len(text[:start].encode()),
            "byteEnd": len(text[:end].encode()),
        }


@PROPERTY
@given(rich_posts())
def test_record_round_trip_keeps_links_tags_and_mentions(post: Post) -> None:
    text, facets = post_to_record_text(post)
    back = record_to_post(
        "at://did:plc:me/app.bsky.feed.post/3k", "cid", as_record(text, facets), "me.example"
    )
    post = richtext.clean_post(post)
    assert back.text == post.text
    expected = set()
    for span in post.spans:
        if span.kind is SpanKind.HASHTAG:
            expected.add((span.start, span.end, SpanKind.HASHTAG, span.tag))
        elif span.kind is SpanKind.MENTION and span.did:
            expected.add((span.start, span.end, SpanKind.MENTION, span.did))
        elif span.kind in (SpanKind.LINK, SpanKind.MENTION):
            expected.add((span.start, span.end, SpanKind.LINK, span.url))
    got = {(s.start, s.end, s.kind, s.tag or s.did or s.url) for s in back.spans}
    assert expected <= got


@PROPERTY
@given(rich_posts(max_items=30), st.integers(8, 80))
def test_bluesky_split_parts_fit_both_limits(post: Post, limit: int) -> None:
    """Scaled down (limit graphemes, 10x limit bytes) so generated posts need several parts."""
    widest_bytes = max(len(c.encode()) for c in regex.findall(r"\X", post.text))
    limit = max(limit, -(-widest_bytes // 10))
    measure = richtext.scaled_max(
        limit, (richtext.count_graphemes, limit), (richtext.count_utf8, 10 * limit)
    )
    parts = richtext.split_post(post, limit, measure)
    check_split(post, parts, limit, measure)
    for part in parts:
        assert richtext.graphemes(part.text) <= limit
        assert len(part.text.encode()) <= 10 * limit
