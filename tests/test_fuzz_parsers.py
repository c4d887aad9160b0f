"""Every parser of network payloads, fed hostile input: a sane Post or a PayloadError, quickly.

"Hostile" is what a buggy fork, a proxy or an attacker can send: unknown and missing fields, wrong
types, lone surrogates and NUL, huge texts, thousands of facets or entities with overlapping or
out-of-range offsets, deep nesting. A sane Post is one every later stage can take: text and spans
that fit together, strings that encode as UTF-8 (so SQLite stores them), links that are links,
and a shape that every outbound converter turns into valid facets, entities or status text.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
import regex
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relaybird import richtext
from relaybird.media import MediaFetcher, MediaPolicy
from relaybird.model import Event, Post, Span, SpanKind, Visibility
from relaybird.networks.bluesky_format import (
    ipld_to_json,
    measure_bluesky,
    post_to_record_text,
    record_to_post,
)
from relaybird.networks.bluesky_inbound import Context, JetstreamSource
from relaybird.networks.mastodon import SseMessage, read_sse
from relaybird.networks.mastodon_format import post_to_status_text, status_to_post
from relaybird.networks.telegram_format import message_to_post, post_to_entities
from relaybird.richtext import MAX_SPANS, MAX_TEXT_CHARS, PayloadError, parse_json

FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
DID = "did:plc:fuzzfuzzfuzzfuzzfuzzfuzz"
URI = f"at://{DID}/app.bsky.feed.post/3kfuzz2222222"

# --------------------------------------------------------------------------------------------------
# hostile building blocks

surrogates = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF, exclude_categories=())
odd_pieces = st.sampled_from(
    ["\x00", "\u200d", "\ufeff", "e\u0301", "😀", "👩‍👩‍👧", "\r\n", "\u2028", "é", " ", "#", "@"]
)
texts = st.lists(st.one_of(st.characters(), surrogates, odd_pieces), max_size=40).map("".join)
ints = st.one_of(st.integers(-3, 300), st.integers(), st.sampled_from([2**63, -(2**63), 0]))
scalars = st.one_of(st.none(), st.booleans(), ints, st.floats(), texts)
garbage = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
urls = st.one_of(
    st.sampled_from(
        [
            "https://example.org/a",
            "http://127.0.0.1:9/x.png",
            "javascript:alert(1)",
            "https://[::1",
            "mailto:someone@example.org",
            "/relative/path",
            "",
        ]
    ),
    texts,
)
ids = st.one_of(st.integers(0, 2**64), st.text("0123456789", min_size=1, max_size=20), texts)


def maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """The right type most of the time, anything at all otherwise."""
    return st.one_of(strategy, strategy, garbage)


def payload(
    known: dict[str, st.SearchStrategy[Any]], required: Iterable[str] = ()
) -> st.SearchStrategy[dict[str, Any]]:
    """An object with some of the known fields (each maybe wrong) plus unknown ones."""
    needed = {key: maybe(known[key]) for key in required}
    optional = {key: maybe(value) for key, value in known.items() if key not in needed}
    base = st.fixed_dictionaries(needed, optional=optional)
    extra = st.dictionaries(st.text(max_size=10), garbage, max_size=2)
    return st.builds(lambda a, b: {**b, **a}, base, extra)


# --------------------------------------------------------------------------------------------------
# what a sane Post is


def strings_of(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for item in dataclasses.fields(value):
            yield from strings_of(getattr(value, item.name))
    elif isinstance(value, list | tuple):
        for item in value:
            yield from strings_of(item)


def assert_sane(post: Post) -> None:
    assert isinstance(post, Post) and isinstance(post.text, str)
    assert len(post.text) <= MAX_TEXT_CHARS
    for text in strings_of(post):
        text.encode("utf-8")  # no lone surrogate anywhere
        assert "\x00" not in text
    assert len(post.spans) <= MAX_SPANS
    for span in post.spans:
        assert isinstance(span.kind, SpanKind)
        assert 0 <= span.start < span.end <= len(post.text)
        if span.url:
            assert span.url.split(":", 1)[0].lower() in ("http", "https", "mailto")
    assert isinstance(post.visibility, Visibility)
    for item in post.media:
        assert item.data is None and "/" in item.mime
    assert Post.from_json(post.to_json()) == post
    with sqlite3.connect(":memory:") as db:
        assert db.execute("select ?", (post.to_json(),)).fetchone()[0] == post.to_json()
    assert_outbound_valid(post)


def assert_outbound_valid(post: Post) -> None:
    """Each network's converter makes something its server would take from this post."""
    text, facets = post_to_record_text(post)
    data = text.encode("utf-8")
    for facet in facets:
        start, end = facet["index"]["byteStart"], facet["index"]["byteEnd"]
        assert 0 <= start < end <= len(data)
        data[start:end].decode("utf-8")  # on character boundaries
    text, entities = post_to_entities(post)
    units = text.encode("utf-16-le")
    for entity in entities:
        start, end = entity["offset"], entity["offset"] + entity["length"]
        assert 0 <= start < end <= len(units) // 2
        units[2 * start : 2 * end].decode("utf-16-le")  # never half a surrogate pair
    post_to_status_text(post).encode("utf-8")


def sane_or_refused(convert: Callable[[], Post]) -> Post | None:
    try:
        post = convert()
    except PayloadError:
        return None
    assert_sane(post)
    return post


# --------------------------------------------------------------------------------------------------
# Mastodon statuses

html_pieces = st.one_of(
    st.sampled_from(
        [
            "<p>",
            "</p>",
            "<br>",
            "<br />",
            '<a href="https://example.org/a">',
            '<a href="javascript:alert(1)">',
            "<a href>",
            "</a>",
            '<span class="h-card"><a class="u-url mention" href="https://h.example/@bob">'
            "@<span>bob</span></a></span>",
            '<a class="mention hashtag" rel="tag" href="https://h.example/tags/x">#<span>x</span></a>',
            '<a href="https://example.org/long"><span class="invisible">https://</span>'
            '<span class="ellipsis">example.org/lo</span></a>',
            "<pre>",
            "</pre>",
            "<b>",
            "</b>",
            "<ul><li>",
            "</li></ul>",
            "<!-- note -->",
            "<",
            "&",
            "&#xD800;",
            "&#0;",
            "<script>x</script>",
        ]
    ),
    texts,
)
html = st.lists(html_pieces, max_size=25).map("".join)
mention = payload({"url": urls, "acct": texts, "username": texts, "id": ids})
attachment = payload(
    {
        "type": st.sampled_from(["image", "gifv", "video", "audio", "unknown"]),
        "url": urls,
        "remote_url": urls,
        "description": texts,
        "meta": payload({"original": payload({"width": ints, "height": ints})}),
    }
)
account = payload({"id": ids, "acct": texts, "url": urls, "display_name": texts})
STATUS_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "id": ids,
    "content": html,
    "text": texts,
    "mentions": st.lists(mention, max_size=3),
    "media_attachments": st.lists(attachment, max_size=3),
    "spoiler_text": texts,
    "sensitive": st.booleans(),
    "language": st.sampled_from(["en", "pt-BR", "xx-garbage-123456789", ""]),
    "visibility": st.sampled_from(["public", "unlisted", "private", "direct", "local", ""]),
    "url": urls,
    "uri": urls,
    "account": account,
    "in_reply_to_id": ids,
    "in_reply_to_account_id": ids,
    "created_at": texts,
    "card": payload({"url": urls, "image": urls, "title": texts}),
}
statuses = payload(
    {**STATUS_FIELDS, "reblog": payload(STATUS_FIELDS, required=["id"])}, required=["id"]
)


@FUZZ
@given(st.one_of(statuses, garbage))
def test_any_status_becomes_a_sane_post_or_a_payload_error(status: Any) -> None:
    post = sane_or_refused(lambda: status_to_post(status, local_domain="h.example"))
    if post is not None:
        assert post.id == str(status["id"])


@FUZZ
@given(html)
def test_any_html_content_keeps_its_spans_inside_its_text(content: str) -> None:
    post = sane_or_refused(lambda: status_to_post({"id": "1", "content": content}))
    assert post is not None


# --------------------------------------------------------------------------------------------------
# Bluesky records


@st.composite
def records(draw: st.DrawFn) -> dict[str, Any]:
    text = draw(maybe(texts))
    size = len(text.encode("utf-8", "surrogatepass")) if isinstance(text, str) else 20
    offsets = st.one_of(st.integers(-2, size + 2), ints)
    feature = payload(
        {
            "$type": st.sampled_from(
                [
                    "app.bsky.richtext.facet#link",
                    "app.bsky.richtext.facet#mention",
                    "app.bsky.richtext.facet#tag",
                    "app.bsky.richtext.facet#unknown",
                ]
            ),
            "uri": urls,
            "did": texts,
            "tag": texts,
        }
    )
    facet = payload(
        {
            "index": payload({"byteStart": offsets, "byteEnd": offsets}),
            "features": st.lists(feature, max_size=2),
        }
    )
    blob = payload(
        {
            "$type": st.just("blob"),
            "ref": payload({"$link": st.sampled_from(["bafkreibme22gw2h7y2h7tg2f", "x y"])}),
            "mimeType": st.sampled_from(["image/png", "text/html", "nonsense"]),
            "cid": texts,
        }
    )
    image = payload({"image": blob, "alt": texts})
    embed = st.one_of(
        payload({"$type": st.just("app.bsky.embed.images"), "images": st.lists(image)}),
        payload({"$type": st.just("app.bsky.embed.video"), "video": blob, "alt": texts}),
        payload(
            {
                "$type": st.just("app.bsky.embed.external"),
                "external": payload({"uri": urls, "title": texts, "thumb": blob}),
            }
        ),
        payload(
            {
                "$type": st.just("app.bsky.embed.recordWithMedia"),
                "media": payload(
                    {"$type": st.just("app.bsky.embed.images"), "images": st.lists(image)}
                ),
            }
        ),
    )
    ref = payload({"uri": st.sampled_from([URI, "at://did:plc:other/app.bsky.feed.post/1", "x"])})
    fields = {
        "$type": st.just("app.bsky.feed.post"),
        "facets": st.lists(facet, max_size=6),
        "embed": embed,
        "reply": payload({"root": ref, "parent": ref}),
        "langs": st.lists(st.sampled_from(["en", "ja", "not a language"]), max_size=3),
        "labels": payload({"values": st.lists(payload({"val": texts}), max_size=2)}),
        "createdAt": texts,
    }
    record: dict[str, Any] = draw(payload(fields))
    if draw(st.booleans()):
        record["text"] = text
    return record


@FUZZ
@given(st.one_of(records(), garbage), st.sampled_from(["alice.example", "", "\ud800"]))
def test_any_record_becomes_a_sane_post_or_a_payload_error(record: Any, handle: str) -> None:
    post = sane_or_refused(
        lambda: record_to_post(URI, "cid", record, handle, pds_url="http://127.0.0.1:9")
    )
    if post is not None:
        assert post.id == URI
        assert all(item.url.startswith("http://127.0.0.1:9/xrpc/") for item in post.media)


@FUZZ
@given(garbage | st.recursive(st.binary(max_size=40) | scalars, st.lists, max_leaves=6))
def test_ipld_values_become_json_or_a_payload_error(value: Any) -> None:
    try:
        converted = ipld_to_json(value)
    except PayloadError:
        return
    json.dumps(converted)


def test_deeply_nested_ipld_is_refused() -> None:
    value: Any = "leaf"
    for _ in range(5000):
        value = {"a": [value]}
    with pytest.raises(PayloadError):
        ipld_to_json(value)


# --------------------------------------------------------------------------------------------------
# Telegram messages


@st.composite
def messages(draw: st.DrawFn, depth: int = 1) -> dict[str, Any]:
    text = draw(maybe(texts))
    units = len(text.encode("utf-16-le", "surrogatepass")) // 2 if isinstance(text, str) else 20
    offsets = st.one_of(st.integers(-2, units + 2), ints)
    entity = payload(
        {
            "type": st.sampled_from(
                [
                    "url",
                    "text_link",
                    "email",
                    "mention",
                    "text_mention",
                    "hashtag",
                    "bold",
                    "pre",
                    "spoiler",
                    "custom_emoji",
                    "bank_card",
                ]
            ),
            "offset": offsets,
            "length": st.integers(-1, units + 2),
            "url": urls,
            "user": payload({"id": ids, "username": texts}),
        }
    )
    size = payload({"file_id": texts, "width": ints, "height": ints, "file_size": ints})
    chat = payload(
        {
            "id": st.sampled_from([-1001234567890, 42]),
            "type": st.sampled_from(["channel", "supergroup", "private"]),
            "username": texts,
            "title": texts,
        }
    )
    fields: dict[str, st.SearchStrategy[Any]] = {
        "message_id": st.integers(1, 10**6),
        "chat": chat,
        "entities": st.lists(entity, max_size=6),
        "caption": texts,
        "caption_entities": st.lists(entity, max_size=4),
        "photo": st.lists(size, max_size=3),
        "document": payload({"file_id": texts, "mime_type": texts}),
        "video": size,
        "has_media_spoiler": st.booleans(),
        "from": payload({"id": ids, "username": texts, "first_name": texts}),
        "sender_chat": chat,
        "date": ints,
        "forward_origin": garbage,
        "media_group_id": texts,
    }
    if depth:
        fields["reply_to_message"] = messages(depth=0)
    message: dict[str, Any] = draw(payload(fields, required=["message_id", "chat"]))
    if draw(st.booleans()):
        message["text"] = text
    return message


@FUZZ
@given(st.one_of(messages(), garbage), st.booleans())
def test_any_message_becomes_a_sane_post_or_a_payload_error(message: Any, chat: bool) -> None:
    post = sane_or_refused(lambda: message_to_post(message, "news", chat_is_author=chat))
    if post is not None:
        assert post.id.endswith(f":{message['message_id']}")


# --------------------------------------------------------------------------------------------------
# hostile posts on the way out


@st.composite
def hostile_posts(draw: st.DrawFn) -> Post:
    text = draw(texts)
    bound = st.integers(-3, len(text) + 3)
    span = st.builds(
        Span,
        start=bound,
        end=bound,
        kind=st.sampled_from(list(SpanKind)),
        url=urls,
        tag=texts,
        handle=st.one_of(texts, st.just("bob@h.example")),
        did=texts,
    )
    return Post(
        id=draw(texts),
        text=text,
        spans=draw(st.lists(span, max_size=12)),
        content_warning=draw(texts),
        language=draw(st.one_of(st.none(), texts)),
        permalink=draw(urls),
    )


@FUZZ
@given(hostile_posts())
def test_outbound_converters_survive_hostile_posts(post: Post) -> None:
    assert_outbound_valid(post)
    assert_sane(richtext.clean_post(post))


@FUZZ
@given(hostile_posts(), st.integers(20, 300))
def test_splitting_a_cleaned_hostile_post_keeps_every_part_within_the_limit(
    post: Post, limit: int
) -> None:
    post = richtext.clean_post(post)
    widest = max((richtext.count_utf8(c) for c in regex.findall(r"\X", post.text)), default=1)
    limit = max(limit, widest)
    for part in richtext.split_post(post, limit, richtext.count_utf8):
        assert richtext.count_utf8(part.text) <= limit
        assert all(0 <= s.start < s.end <= len(part.text) for s in part.spans)


# --------------------------------------------------------------------------------------------------
# the Mastodon stream reader


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


async def chunks(pieces: Iterable[bytes]) -> AsyncIterator[bytes]:
    for piece in pieces:
        yield piece


async def collect(pieces: Iterable[bytes], limit: int = 1 << 20) -> list[SseMessage]:
    return [message async for message in read_sse(chunks(pieces), limit)]


def cut(data: bytes, points: list[int]) -> list[bytes]:
    marks = sorted({0, len(data), *(p % (len(data) + 1) for p in points)})
    return [data[a:b] for a, b in itertools.pairwise(marks)]


sse_lines = st.lists(
    st.one_of(
        st.sampled_from(
            [
                b"event: update",
                b"event: delete",
                b'data: {"id": "1"}',
                b": thump",
                b"",
                b"data:x",
                b"data",
                b"id: 5",
                b"retry: 10",
                b"\xff\xfe\xc3",
                b"event:",
            ]
        ),
        st.binary(max_size=30),
    ),
    max_size=30,
)
line_ends = st.sampled_from([b"\n", b"\r\n", b"\r"])


@FUZZ
@given(sse_lines, st.lists(line_ends, min_size=1, max_size=4), st.lists(st.integers(0, 10**6)))
def test_sse_reader_gives_the_same_events_however_the_stream_is_cut(
    lines: list[bytes], ends: list[bytes], points: list[int]
) -> None:
    data = b"".join(line + ends[i % len(ends)] for i, line in enumerate(lines))
    whole = run(collect([data]))
    assert run(collect(cut(data, points))) == whole
    assert run(collect([bytes([b]) for b in data])) == whole
    for message in whole:
        assert isinstance(message.event, str) and isinstance(message.data, str)


@FUZZ
@given(st.binary(max_size=3000), st.lists(st.integers(0, 10**6), max_size=6))
def test_sse_reader_never_fails_on_arbitrary_bytes(data: bytes, points: list[int]) -> None:
    assert run(collect(cut(data, points), limit=64)) == run(collect([data], limit=64))


def test_sse_event_over_the_limit_is_reported_without_its_data() -> None:
    big = b"event: update\ndata: " + b"x" * 5000 + b"\n\nevent: update\ndata: small\n\n"
    assert run(collect(cut(big, [7, 100, 4000]), limit=1000)) == [
        SseMessage("update", "", oversized=True),
        SseMessage("update", "small"),
    ]


# --------------------------------------------------------------------------------------------------
# Jetstream events


@dataclass
class RecordingSink:
    events: list[Event] = field(default_factory=list)
    cursors: list[str] = field(default_factory=list)

    async def accept(self, event: Event) -> None:
        self.events.append(event)
        if event.cursor is not None:
            self.cursors.append(event.cursor)

    def save_cursor(self, account: str, cursor: str) -> None:
        self.cursors.append(cursor)

    def set_connected(self, account: str, connected: bool, detail: str = "") -> None:
        pass


GOOD_RECORD = {"$type": "app.bsky.feed.post", "text": "hello", "createdAt": "2026-01-01T00:00:00Z"}
poison_commits = payload(
    {
        "collection": st.just("app.bsky.feed.post"),
        "operation": st.sampled_from(["create", "update", "delete", "bogus"]),
        "rkey": st.sampled_from(["3kfuzz2222222", "..", "a/b", "", "x" * 600]),
        "record": st.one_of(records(), garbage),
        "cid": texts,
        "rev": texts,
    },
    required=["collection"],
)
raw_events = st.one_of(
    st.tuples(st.just("text"), st.one_of(texts, st.sampled_from(["{", "[1,", "null", "1e999"]))),
    st.tuples(st.just("poison"), poison_commits),
    st.tuples(st.just("good"), st.just(GOOD_RECORD)),
    st.tuples(st.just("other"), garbage),
)


@FUZZ
@given(st.lists(raw_events, max_size=8))
def test_jetstream_skips_bad_events_moves_past_them_and_relays_good_ones(
    script: list[tuple[str, Any]],
) -> None:
    async def play() -> None:
        sink = RecordingSink()
        async with aiohttp.ClientSession() as http:
            media = MediaFetcher(http, MediaPolicy.of("http://127.0.0.1:9"), "fuzz")
            context = Context("fuzz", DID, "fuzz.example", "http://127.0.0.1:9", sink, http, media)
            source = JetstreamSource(context, None, "ws://127.0.0.1:9/subscribe", 2.0, 30.0)
            source.floor = 1
            time_us = 10**15
            for index, (kind, body) in enumerate(script):
                time_us += 1000
                if kind == "text" or kind == "other":
                    await source._on_text(body if kind == "text" else json.dumps(body))
                    continue
                commit = (
                    body
                    if kind == "poison"
                    else {
                        "collection": "app.bsky.feed.post",
                        "operation": "create",
                        "rkey": f"3kfuzz{index:07d}",
                        "record": body,
                        "cid": "bafyfuzz",
                    }
                )
                before = len(sink.events)
                event = {"did": DID, "time_us": time_us, "kind": "commit", "commit": commit}
                await source._on_text(json.dumps(event))
                if kind == "good":
                    assert len(sink.events) == before + 1
                    assert sink.events[-1].post.text == "hello"
                if commit.get("collection") == "app.bsky.feed.post":
                    assert sink.cursors and int(sink.cursors[-1]) >= time_us, "not moved past"
            assert [int(c) for c in sink.cursors] == sorted(int(c) for c in sink.cursors)

    run(play())


# --------------------------------------------------------------------------------------------------
# size: bounded time on huge and many-faceted payloads


def timed(call: Callable[[], Any], limit: float) -> Any:
    started = time.perf_counter()
    try:
        result = call()
    except PayloadError as error:
        result = error
    elapsed = time.perf_counter() - started
    assert elapsed < limit, f"took {elapsed:.2f} s"
    return result


NON_ASCII = "é" * 49_000 + " #tag 😀 " * 1000


def test_ten_thousand_facets_on_a_long_text_take_linear_time() -> None:
    data_length = len(NON_ASCII.encode())
    facets = [
        {
            "index": {
                "byteStart": (i * 7919) % data_length,
                "byteEnd": (i * 7919) % data_length + 4,
            },
            "features": [{"$type": "app.bsky.richtext.facet#tag", "tag": "x"}],
        }
        for i in range(10_000)
    ]
    record = {"text": NON_ASCII, "facets": facets}
    post = timed(lambda: record_to_post(URI, "c", record, "a.example"), 3)
    assert_sane(post)


def test_ten_thousand_overlapping_entities_take_linear_time() -> None:
    text = "😀 word " * 12_000
    entities = [
        {
            "type": ["bold", "url", "hashtag", "italic"][i % 4],
            "offset": (i * 31) % 90_000,
            "length": 3 + i % 400,
        }
        for i in range(10_000)
    ]
    message = {"message_id": 1, "chat": {"id": 5}, "text": text, "entities": entities}
    post = timed(lambda: message_to_post(message), 3)
    assert_sane(post)
    assert len(post.spans) <= MAX_SPANS


def test_ten_thousand_links_and_mentions_in_html_take_linear_time() -> None:
    links = "".join(
        f'<a href="https://example.org/{i}">l{i}</a> '
        f'<span class="h-card"><a class="u-url mention" href="https://h.example/@u{i}">'
        f"@<span>u{i}</span></a></span><br>"
        for i in range(5_000)
    )
    mentions = [
        {"url": f"https://h.example/@u{i}", "acct": f"u{i}", "username": f"u{i}"}
        for i in range(10_000)
    ]
    status = {"id": "1", "content": f"<p>{links}</p>", "mentions": mentions}
    post = timed(lambda: status_to_post(status), 6)
    assert_sane(post)
    assert len(post.spans) == MAX_SPANS, "the first spans are kept"
    assert post.spans[-1].handle.startswith("u") and post.spans[-1].handle.endswith("@h.example")


def test_hostile_post_with_thousands_of_spans_is_converted_and_split_quickly() -> None:
    text = " ".join(f"w{i}é" for i in range(20_000))[:99_000]
    spans = [
        Span((i * 37) % 98_000, (i * 37) % 98_000 + 1 + i % 900, kind, url="https://x.org/")
        for i, kind in zip(range(12_000), [*SpanKind] * 2000, strict=False)
    ]
    post = Post(id="1", text=text, spans=spans)
    timed(lambda: assert_outbound_valid(post), 5)
    cleaned = richtext.clean_post(post)
    parts = timed(lambda: richtext.split_post(cleaned, 300, measure_bluesky), 5)
    assert all(measure_bluesky(part.text, part.spans) <= 300 for part in parts)


@pytest.mark.parametrize("network", ["mastodon", "bluesky", "telegram"])
def test_a_megabyte_of_text_is_refused_quickly(network: str) -> None:
    text = "ab😀 " * 250_000
    convert: dict[str, Callable[[], Post]] = {
        "mastodon": lambda: status_to_post({"id": "1", "content": f"<p>{text}</p>"}),
        "bluesky": lambda: record_to_post(URI, "c", {"text": text}, "a.example"),
        "telegram": lambda: message_to_post({"message_id": 1, "chat": {"id": 1}, "text": text}),
    }
    assert isinstance(timed(convert[network], 2), PayloadError)


def test_deep_nesting_is_refused_or_read_flat() -> None:
    with pytest.raises(PayloadError):
        parse_json("[" * 100_000 + "]" * 100_000)
    nested = "<b><i>" * 5_000 + "deep" + "</i></b>" * 5_000
    post = timed(lambda: status_to_post({"id": "1", "content": nested}), 3)
    assert post.text == "deep"
    assert_sane(post)
