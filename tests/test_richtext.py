"""Grapheme counting, offset conversions, measures and splitting shared by all networks.

The strategies at the top build posts from hostile Unicode (ZWJ emoji, flags, combining marks,
prepended marks, right-to-left scripts, astral letters) with links, hashtags and mentions glued to
punctuation; the format tests reuse them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import pytest
import regex
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relaybird import richtext
from relaybird.model import Media, Post, Span, SpanKind
from relaybird.richtext import (
    count_graphemes,
    count_mastodon,
    count_utf8,
    count_utf16,
    find_urls,
    graphemes,
    render_plain,
    scaled_max,
    split_post,
    utf8_index,
    utf8_offset,
    utf16_index,
    utf16_offset,
)

PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --------------------------------------------------------------------------------------------------
# strategies

HOSTILE = [
    "👩\u200d👩\u200d👧\u200d👦",  # ZWJ family
    "🏳\ufe0f\u200d🌈",  # flag made with ZWJ
    "🇺🇦",
    "🇵🇸🇩🇪",  # two flags in a row
    "👋🏽",  # skin tone modifier
    "1\ufe0f\u20e3",  # keycap
    "e\u0301",
    "a\u0308\u0323\u0301",  # stacked combining marks
    "\u0301",  # a lone combining mark
    "مرحبا بالعالم",
    "שָׁלוֹם",
    "नमस्ते",
    "\u1100\u1161\u11a8",  # Hangul jamo forming one syllable
    "กำ",
    "你好。世界！再见",
    "\u0600\u0661",  # Arabic number sign: a prepended mark
    "𝐛𝐨𝐥𝐝 𝔣𝔯𝔞𝔨",
    "\u200d",
    "\u00a0",
    "\r\n",
    "...",
    "Dr. Who? Yes! ",
]
WORDS = st.text(alphabet="abcdefghijklmnopqrstuvwxyzéß", min_size=1, max_size=9)
CHUNK = st.one_of(
    st.text(min_size=1, max_size=10),
    st.sampled_from(HOSTILE),
    st.lists(WORDS, min_size=1, max_size=6).map(" ".join),
)
SEPARATORS = [
    " ",
    "\n",
    "\n\n",
    ", ",
    ". ",
    " (",
    ") ",
    " «",
    "» ",
    "! ",
    "? ",
    "،",
    "、",
    " — ",
    ".",
]
PATH_CHARS = "abcxyz0123456789-_/?=&%~"


@st.composite
def urls(draw: st.DrawFn) -> str:
    host = draw(st.sampled_from(["example.com", "bücher.example", "xn--80ak6aa92e.com", "a.b.co"]))
    path = draw(st.text(alphabet=PATH_CHARS, max_size=40))
    return f"https://{host}/{path}"


@st.composite
def tokens(draw: st.DrawFn) -> tuple[str, Span]:
    """A link, hashtag or mention, with the span that says what it is (offsets from 0)."""
    kind = draw(st.sampled_from(["url", "label", "tag", "bsky", "fedi", "telegram"]))
    if kind == "url":
        url = draw(urls())
        return url, Span(0, len(url), SpanKind.LINK, url=url)
    if kind == "label":
        label = draw(st.sampled_from(["the docs", "changelog", "ссылка", "الرابط", "📎"]))
        return label, Span(0, len(label), SpanKind.LINK, url=draw(urls()))
    if kind == "tag":
        tag = draw(st.text(alphabet="abcXYZ09_日本語éأ", min_size=1, max_size=15))
        return "#" + tag, Span(0, len(tag) + 1, SpanKind.HASHTAG, tag=tag)
    if kind == "bsky":
        handle = draw(st.sampled_from(["alice.bsky.social", "дмитрий.example", "x.y.z"]))
        did = draw(st.sampled_from(["", "did:plc:ewvi7nxzyoun6zhxrhs64oiz"]))
        text = "@" + handle
        url = f"https://bsky.app/profile/{handle}"
        return text, Span(0, len(text), SpanKind.MENTION, url=url, handle=handle, did=did)
    if kind == "fedi":
        user = draw(st.sampled_from(["bob", "Ana_1"]))
        text = "@" + user
        url = f"https://social.example/@{user}"
        return text, Span(0, len(text), SpanKind.MENTION, url=url, handle=f"{user}@social.example")
    text = "@" + draw(st.sampled_from(["carol", "dana_ng"]))
    return text, Span(
        0, len(text), SpanKind.MENTION, url=f"https://t.me/{text[1:]}", handle=text[1:]
    )


@st.composite
def rich_posts(draw: st.DrawFn, max_items: int = 12) -> Post:
    """A post of hostile text and tokens; every token span sits on grapheme boundaries.

    Tokens are always separated from free text by a separator that starts and ends a grapheme
    cluster of its own, so that the intended substring of each span is unambiguous. Formatting
    spans are laid over whole free-text chunks, which may start inside a cluster.
    """
    pieces: list[str] = [draw(st.sampled_from(["", " ", "\n  "]))]
    spans: list[Span] = []
    length = len(pieces[0])
    for _ in range(draw(st.integers(1, max_items))):
        if draw(st.booleans()):
            text, span = draw(tokens())
            spans.append(span.shifted(length))
        else:
            text = draw(CHUNK)
            formatting = draw(st.sampled_from([None, None, *richtext_formatting()]))
            if formatting is not None:
                spans.append(Span(length, length + len(text), formatting))
        separator = draw(st.sampled_from(SEPARATORS))
        pieces += [text, separator]
        length += len(text) + len(separator)
    pieces.append(draw(st.sampled_from(["", " ", "  \n"])))
    return Post(id="1", text="".join(pieces), spans=spans)


def richtext_formatting() -> list[SpanKind]:
    return [SpanKind.BOLD, SpanKind.ITALIC, SpanKind.CODE, SpanKind.SPOILER]


def boundaries(text: str) -> set[int]:
    """Grapheme boundaries computed straight from `regex`, as an oracle independent of richtext."""
    return {0, *(m.end() for m in regex.finditer(r"\X", text))}


def widened(text: str, start: int, end: int) -> tuple[int, int]:
    """The smallest range of whole grapheme clusters containing [start, end)."""
    bounds = sorted(boundaries(text))
    return max(b for b in bounds if b <= start), min(b for b in bounds if b >= end)


# --------------------------------------------------------------------------------------------------
# graphemes and offsets


def test_graphemes_count_user_perceived_characters() -> None:
    assert graphemes("👩\u200d👩\u200d👧\u200d👦") == 1
    assert graphemes("🇺🇦🇵🇸") == 2
    assert graphemes("e\u0301") == 1
    assert graphemes("\r\n") == 1
    assert graphemes("नमस्ते") == 3
    assert graphemes("") == 0


def test_offsets_in_each_unit() -> None:
    text = "aé😀b"
    assert [utf8_offset(text, i) for i in range(5)] == [0, 1, 3, 7, 8]
    assert [utf16_offset(text, i) for i in range(5)] == [0, 1, 2, 4, 5]
    assert [utf8_index(text, o) for o in (0, 1, 3, 7, 8)] == [0, 1, 2, 3, 4]
    assert [utf16_index(text, o) for o in (0, 1, 2, 4, 5)] == [0, 1, 2, 3, 4]


@pytest.mark.parametrize(
    ("convert", "offset"),
    [(utf8_index, 2), (utf8_index, 5), (utf8_index, 9), (utf16_index, 3), (utf16_index, 6)],
)
def test_offset_inside_a_character_is_refused(
    convert: Callable[[str, int], int], offset: int
) -> None:
    with pytest.raises(ValueError):
        convert("aé😀b", offset)


def test_index_outside_the_text_is_refused() -> None:
    with pytest.raises(ValueError):
        utf8_offset("abc", 4)


@PROPERTY
@given(st.text(), st.data())
def test_offset_conversions_invert_each_other(text: str, data: st.DataObject) -> None:
    index = data.draw(st.integers(0, len(text)))
    assert utf8_index(text, utf8_offset(text, index)) == index
    assert utf16_index(text, utf16_offset(text, index)) == index
    assert utf8_offset(text, index) == len(text[:index].encode("utf-8"))
    assert utf16_offset(text, index) == len(text[:index].encode("utf-16-le")) // 2


# --------------------------------------------------------------------------------------------------
# URLs and measures


def test_find_urls_leaves_out_closing_punctuation() -> None:
    text = "see (https://x.org/a_(b)), https://ex.com/p?q=1. and «https://ex.com/»"
    assert [text[s:e] for s, e in find_urls(text)] == [
        "https://x.org/a_(b)",
        "https://ex.com/p?q=1",
        "https://ex.com/",
    ]


def test_find_urls_ignores_hosts_mastodon_would_not_link() -> None:
    assert find_urls("http://localhost:3000/x http://127.0.0.1/ xhttps://ex.com/") == []


def test_mastodon_counts_every_url_as_23_and_remote_mentions_as_local() -> None:
    long_url = "https://example.com/" + "a" * 200
    assert count_mastodon(f"hi {long_url}") == 3 + 23
    assert count_mastodon("https://a.co") == 23
    assert count_mastodon("hey @bob@social.example!") == len("hey @bob!")
    assert count_mastodon("👩\u200d👩\u200d👧 ok") == 4
    assert count_mastodon(f"x {long_url}", url_weight=10) == 12


def test_mastodon_counts_links_and_foreign_mentions_as_they_will_be_sent() -> None:
    text = "read the docs, thanks @alice.bsky.social"
    spans = [
        _at(text, "the docs", SpanKind.LINK, url="https://docs.example.org/guide"),
        _at(text, "@alice.bsky.social", SpanKind.MENTION, url="https://bsky.app/profile/a.bsky"),
    ]
    sent = "read the docs (https://docs.example.org/guide), thanks https://bsky.app/profile/a.bsky"
    assert render_plain(text, spans) == sent
    assert count_mastodon(text, spans) == len("read the docs (") + 23 + len("), thanks ") + 23


def _at(text: str, sub: str, kind: SpanKind, **fields: str) -> Span:
    start = text.index(sub)
    return Span(start, start + len(sub), kind, **fields)


def test_render_plain_spells_out_what_a_plain_text_network_must_see() -> None:
    text = "@bob and @carol: example.com/long/pa\u2026 #tag **x**"
    spans = [
        _at(
            text,
            "@bob",
            SpanKind.MENTION,
            url="https://social.example/@bob",
            handle="bob@social.example",
        ),
        _at(text, "@carol", SpanKind.MENTION, url="https://t.me/carol", handle="carol"),
        _at(text, "example.com/long/pa\u2026", SpanKind.LINK, url="https://example.com/long/path"),
        _at(text, "#tag", SpanKind.HASHTAG, tag="tag"),
        _at(text, "**x**", SpanKind.BOLD),
    ]
    assert render_plain(text, spans) == (
        "@bob@social.example and https://t.me/carol: https://example.com/long/path #tag **x**"
    )


def test_mention_without_profile_or_fediverse_handle_stays_as_written() -> None:
    assert render_plain("hi @x", [Span(3, 5, SpanKind.MENTION, handle="x")]) == "hi @x"


def test_scaled_max_enforces_every_limit_at_once() -> None:
    measure = scaled_max(300, (count_graphemes, 300), (count_utf8, 3000))
    assert measure("a" * 300, []) == 300
    assert measure("a" * 301, []) == 301
    family = "👩\u200d👩\u200d👧\u200d👦"  # 25 bytes, 1 grapheme
    assert measure(family * 120, []) == 300  # 3000 bytes exactly
    assert measure(family * 121, []) == 303  # 3025 bytes: over


def test_utf16_measure_counts_surrogate_pairs_twice() -> None:
    assert count_utf16("a😀") == 3
    assert count_utf16("𝐛𝐨𝐥𝐝") == 8


# --------------------------------------------------------------------------------------------------
# splitting: examples


def _texts(parts: list[Post]) -> list[str]:
    return [part.text for part in parts]


def test_post_that_fits_is_returned_unchanged() -> None:
    post = Post(id="1", text="short", spans=[Span(0, 5, SpanKind.BOLD)])
    assert split_post(post, 10, count_graphemes)[0] is post


def test_splits_at_paragraphs_first() -> None:
    first = "First paragraph has some words. And a second sentence."
    second = "Second paragraph, also fairly long. It ends here."
    post = Post(id="1", text=f"{first}\n\n{second}")
    assert _texts(split_post(post, 60, count_graphemes)) == [first, second]


def test_splits_at_sentences_before_words() -> None:
    text = "One sentence that is long enough. Another one follows it and then more words come"
    parts = split_post(Post(id="1", text=text), 50, count_graphemes)
    assert parts[0].text == "One sentence that is long enough."


def test_a_short_first_paragraph_does_not_make_a_tiny_part() -> None:
    text = "Hi.\n\n" + "word " * 30
    parts = split_post(Post(id="1", text=text.strip()), 40, count_graphemes)
    assert parts[0].text.startswith("Hi.\n\nword")
    assert all(graphemes(p.text) <= 40 for p in parts)


def test_cjk_sentences_split_without_spaces() -> None:
    text = "今日は晴れです。明日は雨が降るでしょう。その後は曇りです。"
    parts = split_post(Post(id="1", text=text), 12, count_graphemes)
    assert _texts(parts) == ["今日は晴れです。", "明日は雨が降るでしょう。", "その後は曇りです。"]


def test_never_cuts_inside_a_link() -> None:
    url = "https://example.com/a/b/c"
    text = f"look at this {url} now"
    span = Span(13, 13 + len(url), SpanKind.LINK, url=url)
    parts = split_post(Post(id="1", text=text, spans=[span]), 30, count_graphemes)
    assert _texts(parts) == ["look at this", f"{url} now"]
    assert parts[1].spans == [Span(0, len(url), SpanKind.LINK, url=url)]


def test_a_long_word_is_cut_between_grapheme_clusters() -> None:
    family = "👩\u200d👩\u200d👧"
    post = Post(id="1", text=family * 7)
    assert _texts(split_post(post, 3, count_graphemes)) == [family * 3, family * 3, family]


def test_a_link_longer_than_the_limit_is_cut_and_loses_its_span() -> None:
    url = "https://example.com/" + "x" * 40
    post = Post(id="1", text=url, spans=[Span(0, len(url), SpanKind.LINK, url=url)])
    parts = split_post(post, 25, count_graphemes)
    assert "".join(_texts(parts)) == url
    assert all(part.spans == [] for part in parts)


def test_formatting_spans_are_clipped_to_each_part() -> None:
    text = "alpha beta gamma delta"
    post = Post(id="1", text=text, spans=[Span(0, len(text), SpanKind.BOLD)])
    parts = split_post(post, 11, count_graphemes)
    assert _texts(parts) == ["alpha beta", "gamma delta"]
    assert [p.spans for p in parts] == [[Span(0, 10, SpanKind.BOLD)], [Span(0, 11, SpanKind.BOLD)]]


def test_media_stay_on_the_first_part_and_metadata_on_all() -> None:
    media = [Media(mime="image/png", alt="a cat")]
    post = Post(id="9", text="one two three four", media=media, content_warning="cw", reply_to="8")
    parts = split_post(post, 9, count_graphemes)
    assert [p.media for p in parts] == [media, [], []]
    assert {(p.id, p.content_warning, p.reply_to) for p in parts} == {("9", "cw", "8")}


def test_reserve_leaves_room_for_text_added_later() -> None:
    post = Post(id="1", text="aaaa bbbb cccc")
    assert _texts(split_post(post, 10, count_graphemes, reserve=1)) == ["aaaa bbbb", "cccc"]
    assert _texts(split_post(post, 10, count_graphemes, reserve=5)) == ["aaaa", "bbbb", "cccc"]


def test_mastodon_measure_lets_long_urls_share_a_part() -> None:
    urls_ = [f"https://example.com/{c * 60}" for c in "abc"]
    text = " ".join(urls_)
    spans = [Span(i * 81, i * 81 + 80, SpanKind.LINK, url=u) for i, u in enumerate(urls_)]
    post = Post(id="1", text=text, spans=spans)
    assert split_post(post, 100, count_mastodon) == [post]
    assert len(split_post(post, 100, count_graphemes)) == 3


def test_labelled_link_too_long_once_spelled_out_loses_its_span_not_its_text() -> None:
    url = "https://example.com/" + "x" * 30
    post = Post(id="1", text="see \U0001f4ce now", spans=[Span(4, 5, SpanKind.LINK, url=url)])
    parts = split_post(post, 10, count_mastodon)
    assert _texts(parts) == ["see", "\U0001f4ce now"]
    assert all(part.spans == [] for part in parts)


def test_long_post_splits_into_many_fitting_parts() -> None:
    words: list[str] = []
    spans: list[Span] = []
    position = 0
    for index in range(1500):
        if index % 10 == 0:
            word = f"https://example.com/{index}/{'p' * (index % 37)}"
            spans.append(Span(position, position + len(word), SpanKind.LINK, url=word))
        else:
            word = ["Mots", "et", "phrases.", "Zeilen\n", "\u00e9t\u00e9", "👋🏽", "#tag"][
                index % 7
            ]
        words.append(word)
        position += len(word) + 1
    post = Post(id="1", text=" ".join(words), spans=spans)
    for measure, limit in ((count_graphemes, 300), (count_mastodon, 500), (count_utf16, 1024)):
        parts = split_post(post, limit, measure)
        assert len(parts) > 5
        check_split(post, parts, limit, measure)


def test_limit_too_small_for_one_character_is_an_error() -> None:
    with pytest.raises(ValueError):
        split_post(Post(id="1", text="😀😀"), 1, count_utf16)
    with pytest.raises(ValueError):
        split_post(Post(id="1", text="abc"), 3, count_graphemes, reserve=3)


# --------------------------------------------------------------------------------------------------
# splitting: properties


@dataclass(frozen=True)
class _Placed:
    part: Post
    start: int
    gap: str  # the text dropped before this part


def _place(text: str, parts: list[Post]) -> list[_Placed]:
    """Find each part in the original text, in order, across the whitespace dropped at each cut."""
    placed: list[_Placed] = []
    cursor = 0
    for part in parts:
        position = cursor
        while not text.startswith(part.text, position):
            assert position < len(text) and text[position].isspace(), "only whitespace is dropped"
            position += 1
        placed.append(_Placed(part, position, text[cursor:position]))
        cursor = position + len(part.text)
    assert text[cursor:].strip() == ""
    return placed


def _is_break_space(cluster: str) -> bool:
    return cluster.isspace() and not set(cluster) & {"\u00a0", "\u2007", "\u202f"}


def _unit_around(post: Post, index: int) -> tuple[int, int]:
    """What cannot be cut at a space: the run between breakable spaces containing `index`,
    widened over any link, tag or mention (whose own spaces do not count)."""
    text = post.text
    clusters = [(m.start(), m.end()) for m in regex.finditer(r"\X", text)]
    start, end = index, index
    while True:
        for a, b in reversed([c for c in clusters if c[1] <= start]):
            if _is_break_space(text[a:b]):
                break
            start = a
        for a, b in [c for c in clusters if c[0] >= end]:
            if _is_break_space(text[a:b]):
                break
            end = b
        spans = [s for s in post.spans if s.kind in richtext.ATOMIC_KINDS]
        covering = [s for s in spans if s.start < end and start < s.end]
        wider = (min([start, *(s.start for s in covering)]), max([end, *(s.end for s in covering)]))
        if wider == (start, end):
            return start, end
        start, end = wider


def _spans_within(post: Post, start: int, end: int) -> list[Span]:
    return [s.shifted(-start) for s in post.spans if start <= s.start and s.end <= end]


MEASURES: dict[str, Callable[[int], richtext.Measure]] = {
    "graphemes": lambda limit: count_graphemes,
    "utf16": lambda limit: count_utf16,
    "bluesky-like": lambda limit: scaled_max(
        limit, (count_graphemes, limit), (count_utf8, 4 * limit)
    ),
    "mastodon": lambda limit: partial(count_mastodon, url_weight=23),
}


def check_split(post: Post, parts: list[Post], limit: int, measure: richtext.Measure) -> None:
    text = post.text
    bounds = boundaries(text)
    atomic = [s for s in post.spans if s.kind in richtext.ATOMIC_KINDS]
    kept: list[Span] = []
    placed = _place(text, parts)
    for index, item in enumerate(placed):
        part, start = item.part, item.start
        end = start + len(part.text)
        assert measure(part.text, part.spans) <= limit
        assert start in bounds and end in bounds, "a grapheme cluster was cut"
        assert part.media == (post.media if index == 0 else [])
        for span in part.spans:
            assert 0 <= span.start < span.end <= len(part.text)
            original = span.shifted(start)
            if span.kind in richtext.ATOMIC_KINDS:
                assert original in atomic, "an atomic span was altered"
                kept.append(original)
            else:
                assert any(
                    o.kind is span.kind
                    and original.start == max(o.start, start)
                    and original.end == min(o.end, end)
                    for o in post.spans
                ), "a formatting span was not clipped from an original"
        if index and not item.gap:
            previous = placed[index - 1]
            if not previous.part.text.endswith(("\u3002", "\uff01", "\uff1f")):
                unit_start, unit_end = _unit_around(post, start)
                unit = text[unit_start:unit_end]
                assert measure(unit, _spans_within(post, unit_start, unit_end)) > limit, (
                    "cut inside a word that would have fitted"
                )
    for span in atomic:
        if span not in kept:
            alone = text[span.start : span.end]
            assert measure(alone, [span.shifted(-span.start)]) > limit, "a span was cut needlessly"
    rejoined = "".join((" " if item.gap else "") + item.part.text for item in placed)
    assert rejoined.split() == text.split(), "words were lost or reordered"


@PROPERTY
@given(rich_posts(max_items=16), st.sampled_from(sorted(MEASURES)), st.integers(4, 120))
def test_split_parts_fit_and_keep_every_word_and_span(post: Post, name: str, limit: int) -> None:
    measure = MEASURES[name](limit)
    widest = max((measure(c, []) for c in regex.findall(r"\X", post.text)), default=1)
    limit = max(limit, widest)
    post.media = [Media(mime="image/png")]
    parts = split_post(post, limit, measure)
    check_split(post, parts, limit, measure)


@PROPERTY
@given(st.text(min_size=1, max_size=300), st.integers(1, 40))
def test_split_of_arbitrary_text_never_cuts_a_cluster(text: str, limit: int) -> None:
    widest = max(count_utf16(c) for c in regex.findall(r"\X", text))
    limit = max(limit, widest)
    post = Post(id="1", text=text)
    check_split(post, split_post(post, limit, count_utf16), limit, count_utf16)


def test_whitespace_runs_are_dropped_only_at_cuts() -> None:
    text = "a  b\n\n\n c"
    parts = split_post(Post(id="1", text=text), 4, count_graphemes)
    assert _texts(parts) == ["a  b", "c"]
    assert re.sub(r"\s", "", "".join(_texts(parts))) == "abc"
