"""Text measures, offset conversions and splitting, shared by every network.

Networks count text differently (Bluesky in grapheme clusters and UTF-8 bytes, Mastodon in
grapheme clusters with every URL weighted, Telegram in UTF-16 code units) and address ranges
differently. The neutral model keeps Python string indices; this module is where the other units are
computed, so that each network module only says which unit it needs.
"""

from __future__ import annotations

import bisect
import itertools
import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from enum import IntEnum
from typing import Any
from urllib.parse import urlsplit

import regex

from relaybird.model import Author, LinkCard, Media, Post, Span, SpanKind

Measure = Callable[[str, list[Span]], int]

#: Spans that stop being useful when cut in two: a half URL, half hashtag or half handle.
ATOMIC_KINDS = frozenset({SpanKind.LINK, SpanKind.MENTION, SpanKind.HASHTAG})

_GRAPHEME = regex.compile(r"\X")

# --------------------------------------------------------------------------------------------------
# grapheme clusters and offsets


def graphemes(text: str) -> int:
    """Number of user-perceived characters, as Bluesky and Mastodon count them."""
    return len(_GRAPHEME.findall(text))


def grapheme_boundaries(text: str) -> list[int]:
    """Every index where a cut leaves each grapheme cluster whole, `0` and `len(text)` included."""
    return [0, *(match.end() for match in _GRAPHEME.finditer(text))]


def _utf8_width(char: str) -> int:
    code = ord(char)
    if code < 0x80:
        return 1
    if code < 0x800:
        return 2
    return 3 if code < 0x10000 else 4


def _utf16_width(char: str) -> int:
    return 2 if ord(char) > 0xFFFF else 1


def utf8_offset(text: str, index: int) -> int:
    """UTF-8 byte offset of the Python index `index` (Bluesky facets count bytes)."""
    _check_index(text, index)
    return sum(_utf8_width(char) for char in text[:index])


def utf16_offset(text: str, index: int) -> int:
    """UTF-16 code-unit offset of the Python index `index` (Telegram entities count code units)."""
    _check_index(text, index)
    return sum(_utf16_width(char) for char in text[:index])


def utf8_index(text: str, offset: int) -> int:
    """Python index of a UTF-8 byte offset; `ValueError` when it falls inside a character."""
    return _index_of(text, offset, _utf8_width, "UTF-8 byte")


def utf16_index(text: str, offset: int) -> int:
    """Python index of a UTF-16 offset; `ValueError` when it falls between two surrogate halves."""
    return _index_of(text, offset, _utf16_width, "UTF-16")


def utf8_length(text: str) -> int:
    return sum(_utf8_width(char) for char in text)


def utf16_length(text: str) -> int:
    return sum(_utf16_width(char) for char in text)


class OffsetTable:
    """Offsets of one text in another unit, for the many lookups of a post's facets or entities.

    `utf8_index` and friends walk the text on each call, which is fine for one offset but
    quadratic for thousands of facets on a long text; this table is built once (in one pass) and
    answers each lookup by bisection. ASCII text, the common case, needs no table at all.
    """

    def __init__(self, text: str, width: Callable[[str], int], unit: str) -> None:
        self.length = len(text)
        self.unit = unit
        self.prefix: list[int] | None = None
        if not text.isascii():
            self.prefix = list(itertools.accumulate(map(width, text), initial=0))

    @classmethod
    def utf8(cls, text: str) -> OffsetTable:
        return cls(text, _utf8_width, "UTF-8 byte")

    @classmethod
    def utf16(cls, text: str) -> OffsetTable:
        return cls(text, _utf16_width, "UTF-16")

    def offset(self, index: int) -> int:
        """The offset in this unit of the Python index `index`."""
        if not 0 <= index <= self.length:
            raise ValueError(f"index {index} is outside a text of {self.length} characters")
        return index if self.prefix is None else self.prefix[index]

    def index(self, offset: int) -> int:
        """The Python index of `offset`; `ValueError` when it is outside or inside a character."""
        if self.prefix is None:
            if not 0 <= offset <= self.length:
                raise ValueError(f"{self.unit} offset {offset} is outside the text")
            return offset
        found = bisect.bisect_left(self.prefix, offset)
        if found > self.length or self.prefix[found] != offset or offset < 0:
            raise ValueError(f"{self.unit} offset {offset} is not on a character boundary")
        return found


def _check_index(text: str, index: int) -> None:
    if not 0 <= index <= len(text):
        raise ValueError(f"index {index} is outside a text of {len(text)} characters")


def _index_of(text: str, offset: int, width: Callable[[str], int], unit: str) -> int:
    if offset < 0:
        raise ValueError(f"negative {unit} offset {offset}")
    position = 0
    for index, char in enumerate(text):
        if position == offset:
            return index
        if position > offset:
            break
        position += width(char)
    if position == offset:
        return len(text)
    raise ValueError(f"{unit} offset {offset} is not on a character boundary of this text")


# --------------------------------------------------------------------------------------------------
# URLs and mentions as a plain-text network (Mastodon) finds them

_URL = regex.compile(
    r"""(?<![\w@#$/.:-])
        https?://
        (?:[\w-]+\.)+\p{L}[\w-]*\.?      # host with a letter TLD: IPs and localhost are not linked
        (?::\d{1,5})?
        (?:[/?\#][^\s<>"]*)?
    """,
    regex.VERBOSE | regex.IGNORECASE,
)
_URL_TRAILING = ".,:;!?'\"\u00bb\u201d\u2019\u2026)]}>*_"
_PAIRS = {")": "(", "]": "[", "}": "{"}

# Possessive, like Mastodon's scan: a handle followed by another `@` is no mention at all, rather
# than a shorter one.
_FEDI_MENTION = regex.compile(
    r"(?<![=/\w])@([a-z0-9_]++(?:[.-]+[a-z0-9_]+)*+)(@\w++(?:[.-]+\w+)*+)?+(?![@\uff20]|://)",
    regex.IGNORECASE,
)


def find_urls(text: str) -> list[tuple[int, int]]:
    """Ranges of `http(s)://` URLs written in plain text, trailing punctuation left out.

    Punctuation that closes a sentence or an unbalanced bracket is not part of the URL, as in the
    linkifiers of Mastodon and Bluesky's apps, so that "(see https://x.org/a)." links `/a`.
    """
    found: list[tuple[int, int]] = []
    for match in _URL.finditer(text):
        start, end = match.span()
        while end > start and text[end - 1] in _URL_TRAILING:
            closing = text[end - 1]
            opening = _PAIRS.get(closing)
            if opening and text[start:end].count(opening) >= text[start:end].count(closing):
                break
            end -= 1
        if urlsplit(text[start:end]).hostname:
            found.append((start, end))
    return found


# --------------------------------------------------------------------------------------------------
# measures: each has the `Measure` signature so that `split_post` can take any of them


def count_graphemes(text: str, spans: Sequence[Span] = ()) -> int:
    """Grapheme clusters, Bluesky's unit (its limit of 3000 UTF-8 bytes is checked separately)."""
    return graphemes(text)


def count_utf8(text: str, spans: Sequence[Span] = ()) -> int:
    return utf8_length(text)


def count_utf16(text: str, spans: Sequence[Span] = ()) -> int:
    """UTF-16 code units, Telegram's unit for its 4096 (text) and 1024 (caption) limits."""
    return utf16_length(text)


def count_mastodon(text: str, spans: Sequence[Span] = (), url_weight: int = 23) -> int:
    """Length as Mastodon's validator counts the status `render_plain(text, spans)` will send.

    Mastodon counts grapheme clusters after replacing every URL it links by `url_weight` characters
    (`characters_reserved_per_url`) and every `@user@domain` by `@user`. Spans are rendered first
    because a link whose text is not its URL, or a mention of a non-fediverse account, is sent
    longer than it shows in the neutral text. The instance's `max_characters` also covers the
    content warning: pass `reserve=graphemes(post.content_warning)` to `split_post`.
    """
    plain = render_plain(text, spans) if spans else text
    return graphemes(_mastodon_countable(plain, url_weight))


def _mastodon_countable(text: str, url_weight: int) -> str:
    """Text with URLs and remote mentions replaced as Mastodon does before counting."""
    urls = find_urls(text)
    entities: list[tuple[int, int, str]] = [(s, e, "x" * url_weight) for s, e in urls]
    for match in _FEDI_MENTION.finditer(text):
        start, end = match.span()
        if not overlaps_any(urls, start, end):
            entities.append((start, end, "@" + match.group(1)))
    entities.sort()
    pieces: list[str] = []
    cursor = 0
    for start, end, replacement in entities:
        pieces += [text[cursor:start], replacement]
        cursor = end
    pieces.append(text[cursor:])
    return "".join(pieces)


def overlaps_any(ranges: Sequence[tuple[int, int]], start: int, end: int) -> bool:
    """Whether [start, end) meets one of `ranges`, which are sorted and do not overlap."""
    found = bisect.bisect_right(ranges, start, key=lambda item: item[0])
    for index in (found - 1, found):
        if 0 <= index < len(ranges) and ranges[index][0] < end and start < ranges[index][1]:
            return True
    return False


def scaled_max(limit: int, *measures: tuple[Measure, int]) -> Measure:
    """One measure out of several limits at once, expressed in the units of `limit`.

    Each measure is rescaled so that `value <= limit` exactly when it is within its own limit: e.g.
    `scaled_max(300, (count_graphemes, 300), (count_utf8, 3000))` is Bluesky's double rule.
    """

    def measure(text: str, spans: list[Span]) -> int:
        scaled = (-(-own(text, spans) * limit // own_limit) for own, own_limit in measures)
        return max(scaled, default=0)

    return measure


# --------------------------------------------------------------------------------------------------
# spans as plain text, for networks that link URLs and handles themselves


def is_fediverse_handle(handle: str) -> bool:
    """`user@host`, a handle Mastodon resolves itself (Bluesky and Telegram handles have no `@`)."""
    user, _, host = handle.lstrip("@").partition("@")
    return bool(user) and "." in host


def shows_url(text: str, url: str) -> bool:
    """Whether a link's visible text is its URL, possibly without scheme or shortened with "…".

    Bluesky's app shows `example.com/long/pa...` for `https://example.com/long/path`; such text
    carries no information beyond the URL, so plain-text targets can show the URL alone.
    """
    shown = text.strip()
    if not shown:
        return False
    if shown == url:
        return True
    bare_url = url.split("://", 1)[-1]
    bare_shown = shown.split("://", 1)[-1].removesuffix("…").removesuffix("...")
    if not bare_shown or not bare_url.lower().startswith(bare_shown.lower()):
        return False
    shown_host = bare_shown.split("/", 1)[0].split("?", 1)[0]
    return "." in shown_host and bare_url[: len(shown_host)].lower() == shown_host.lower()


def render_plain(text: str, spans: Sequence[Span]) -> str:
    """The text a plain-text target should receive so that its own linkifier gets every link right.

    A link whose text is not its URL becomes `text (url)`; a mention of a fediverse account becomes
    `@user@host` so the target resolves the right person; any other mention (a Bluesky or Telegram
    handle) becomes the profile URL, because `@alice` would point at a stranger on the target. A
    hashtag is written `#tag` (Telegram's `#tag@chat` loses its chat). Formatting spans are dropped.
    """
    pieces: list[str] = []
    cursor = 0
    for span in non_overlapping(s for s in normalize_spans(text, spans) if s.kind in ATOMIC_KINDS):
        pieces += [text[cursor : span.start], _plain_span(text[span.start : span.end], span)]
        cursor = span.end
    pieces.append(text[cursor:])
    return "".join(pieces)


def _plain_span(shown: str, span: Span) -> str:
    if span.kind is SpanKind.LINK and span.url:
        if shows_url(shown, span.url):
            return span.url
        return f"{shown} ({span.url})" if shown.strip() else span.url
    if span.kind is SpanKind.MENTION:
        if is_fediverse_handle(span.handle):
            return "@" + span.handle.lstrip("@")
        if span.url:
            return span.url
    if span.kind is SpanKind.HASHTAG and span.tag:
        return "#" + span.tag
    return shown


# --------------------------------------------------------------------------------------------------
# span hygiene shared by the converters


def normalize_spans(text: str, spans: Iterable[Span]) -> list[Span]:
    """Spans clipped to the text and widened to whole grapheme clusters, empty ones dropped.

    A span ending between a letter and its combining accent would make a facet or entity that cuts
    a character in two on the other side; widening to the cluster keeps what the reader sees whole.
    """
    bounds = grapheme_boundaries(text)
    result: list[Span] = []
    for span in spans:
        start = max(0, min(span.start, len(text)))
        end = max(0, min(span.end, len(text)))
        if start >= end:
            continue
        start = bounds[bisect.bisect_right(bounds, start) - 1]
        end = bounds[bisect.bisect_left(bounds, end)]
        result.append(replace(span, start=start, end=end))
    return sorted(result, key=lambda s: (s.start, -s.end))


def non_overlapping(spans: Iterable[Span]) -> list[Span]:
    """The spans, by position, keeping the first (and longest) of any that overlap."""
    kept: list[Span] = []
    for span in sorted(spans, key=lambda s: (s.start, -s.end)):
        if not kept or span.start >= kept[-1].end:
            kept.append(span)
    return kept


# --------------------------------------------------------------------------------------------------
# splitting


class _Level(IntEnum):
    WORD = 1
    SENTENCE = 2
    PARAGRAPH = 3


@dataclass(frozen=True)
class _Break:
    """A place to cut: a part ends at `end`, the next starts at `next`; between is whitespace."""

    end: int
    next: int
    level: _Level


_NO_BREAK_SPACES = frozenset("\u00a0\u2007\u202f")
_CJK_SENTENCE_END = frozenset("\u3002\uff01\uff1f")
_SENTENCE_END = _CJK_SENTENCE_END | frozenset(
    ".!?\u2026\u203c\u2047\u2048\u2049\u061f\u06d4\u0964\u0965"
)
_CLOSERS = frozenset("\"')]}\u00bb\u201d\u2019\u203a\u300d\u300f")

#: The first distance (in characters) `_Splitter.horizon` looks ahead of a part's start.
_HORIZON_STEP = 256

#: A part cut at a paragraph (or sentence) end is preferred while it fills at least this share of
#: the limit; below it, a further cut at a weaker boundary is taken so threads do not grow long.
_MIN_FILL = 0.5


def _is_break_space(cluster: str) -> bool:
    return cluster.isspace() and not _NO_BREAK_SPACES.intersection(cluster)


def _level_of(run: str, before: str) -> _Level:
    newlines = run.count("\n") + run.count("\r") - run.count("\r\n") + run.count("\u2028")
    if newlines >= 2 or "\u2029" in run:
        return _Level.PARAGRAPH
    stripped = before.rstrip("".join(_CLOSERS))
    if newlines == 1 or (stripped and stripped[-1] in _SENTENCE_END):
        return _Level.SENTENCE
    return _Level.WORD


class _Splitter:
    """State of one split: the text's clusters, its breaks, and which atomic spans still hold.

    Searches gallop from the start of the part, so each measure call reads about one part's worth
    of text and a long post splits in time proportional to its length.
    """

    def __init__(self, post: Post, limit: int, measure: Measure) -> None:
        self.post = post
        self.text = post.text
        self.limit = limit
        self.measure = measure
        self.bounds = grapheme_boundaries(self.text)
        self.clusters = [self.text[a:b] for a, b in zip(self.bounds, self.bounds[1:], strict=False)]
        self.atomic = sorted(
            (s for s in post.spans if s.kind in ATOMIC_KINDS), key=lambda s: (s.start, s.end)
        )
        self.atomic_starts = [span.start for span in self.atomic]
        # Measures may break ties between equal ranges by order: hand them spans in post order.
        self.order = {id(span): index for index, span in enumerate(post.spans)}
        self.broken: set[Span] = set()
        self.stop = self.content_end()
        self.breaks = self._find_breaks()
        self.break_ends = [b.end for b in self.breaks]
        # Changes to the blocker counts, kept as differences so that a span over thousands of
        # breaks costs two updates; `blockers` adds them up when next read.
        self.changes = [0] * (len(self.breaks) + 2)
        self.counted: list[int] | None = None
        for span in self.atomic:
            self._count_blocker(span, 1)
        # The end of the text, as a break, lets one search both pack and finish the last part.
        self.breaks.append(_Break(self.stop, self.stop, _Level.PARAGRAPH))
        self.break_ends.append(self.stop)
        self.horizon_at = (-1, 0)

    @property
    def blockers(self) -> list[int]:
        """How many unbroken atomic spans each break would cut (zero: the break is usable)."""
        if self.counted is None:
            self.counted = list(itertools.accumulate(self.changes))[: len(self.breaks)]
        return self.counted

    def _find_breaks(self) -> list[_Break]:
        breaks: list[_Break] = []
        count = len(self.clusters)
        index = 0
        while index < count:
            if not _is_break_space(self.clusters[index]):
                ends_sentence = self.clusters[index] in _CJK_SENTENCE_END
                followed = index + 1 < count and not _is_break_space(self.clusters[index + 1])
                if ends_sentence and followed:
                    here = self.bounds[index + 1]
                    breaks.append(_Break(here, here, _Level.SENTENCE))
                index += 1
                continue
            first = index
            while index < count and _is_break_space(self.clusters[index]):
                index += 1
            if first > 0 and index < count:
                run = "".join(self.clusters[first:index])
                here = self.bounds[first]
                level = _level_of(run, self.text[max(0, here - 8) : here])
                breaks.append(_Break(here, self.bounds[index], level))
        return breaks

    def _count_blocker(self, span: Span, delta: int) -> None:
        """Add `delta` to every break that would cut `span` (one whose gap meets its inside).

        Only the breaks the span starts in or next to need a look of their own (the span may sit
        inside a gap of whitespace); every later break before its end cuts it.
        """
        index = max(0, bisect.bisect_left(self.break_ends, span.start) - 1)
        last = bisect.bisect_left(self.break_ends, span.end, lo=index)
        while index < last and self.breaks[index].end <= span.start:
            item = self.breaks[index]
            inside_gap = span.end <= item.next
            if item.next > span.start and not inside_gap:
                self.changes[index] += delta
                self.changes[index + 1] -= delta
            index += 1
        if index < last:
            self.changes[index] += delta
            self.changes[last] -= delta
        self.counted = None

    def _break_span(self, span: Span) -> None:
        if span not in self.broken:
            self.broken.add(span)
            self._count_blocker(span, -1)
            self.horizon_at = (-1, 0)

    def part(self, start: int, end: int) -> tuple[str, list[Span]]:
        """Text and re-based spans of [start, end): atomic spans only whole, formatting clipped."""
        spans: list[Span] = []
        for span in self.post.spans:
            if span.kind in ATOMIC_KINDS:
                if start <= span.start and span.end <= end and span not in self.broken:
                    spans.append(span.shifted(-start))
            else:
                clipped_start, clipped_end = max(span.start, start), min(span.end, end)
                if clipped_start < clipped_end:
                    spans.append(
                        replace(span, start=clipped_start - start, end=clipped_end - start)
                    )
        return self.text[start:end], spans

    def fits(self, start: int, end: int) -> bool:
        return self.value(start, end) <= self.limit

    def value(self, start: int, end: int) -> int:
        """The measure of [start, end) as `part` would cut it.

        Only the atomic spans are handed to the measure: formatting never changes how long a
        text counts, and leaving it out keeps each of the many trial measures small.
        """
        low = bisect.bisect_left(self.atomic_starts, start)
        high = bisect.bisect_left(self.atomic_starts, end, lo=low)
        inside = [
            span for span in self.atomic[low:high] if span.end <= end and span not in self.broken
        ]
        inside.sort(key=lambda span: self.order[id(span)])
        return self.measure(self.text[start:end], [span.shifted(-start) for span in inside])

    def furthest(self, start: int, ends: Sequence[int]) -> int | None:
        """Index in `ends` of the furthest end that fits (measures grow with text).

        Gallops 1, 2, 4, ... ends ahead before bisecting, so that only about one part of text is
        measured at a time however long the post is.
        """
        if not ends or not self.fits(start, ends[0]):
            return None
        good, step = 0, 1
        while good + step < len(ends) and self.fits(start, ends[good + step]):
            good, step = good + step, step * 2
        low, high = good + 1, min(good + step, len(ends)) - 1
        while low <= high:
            middle = (low + high) // 2
            if self.fits(start, ends[middle]):
                good, low = middle, middle + 1
            else:
                high = middle - 1
        return good

    def horizon(self, start: int) -> int:
        """An index that no part starting at `start` reaches: the text up to it is over the limit.

        Found by doubling a distance from `start`, then doubled once more as a margin (measures
        grow with text, but not strictly: a URL cut short counts like a whole one). Candidates
        beyond it are never measured, so that a long post does not measure all that follows
        each part once per level: the cost of a part stays about that of its own text.
        """
        if self.horizon_at[0] == start:
            return self.horizon_at[1]
        distance = _HORIZON_STEP
        while True:
            position = bisect.bisect_left(self.bounds, min(start + distance, len(self.text)))
            end = self.bounds[position]
            if end >= self.stop:
                found = len(self.text)
                break
            if not self.fits(start, end):
                found = min(len(self.text), start + 2 * (end - start))
                break
            distance *= 2
        self.horizon_at = (start, found)
        return found

    def choose_break(self, start: int) -> _Break | None:
        """The cut for a part starting at `start`: strongest boundary that fills the part enough."""
        first = bisect.bisect_right(self.break_ends, start)
        last = bisect.bisect_right(self.break_ends, self.horizon(start), lo=first)
        blockers = self.blockers
        candidates = [self.breaks[i] for i in range(first, last) if not blockers[i]]
        for level in (_Level.PARAGRAPH, _Level.SENTENCE, _Level.WORD):
            usable = [b for b in candidates if b.level >= level]
            found = self.furthest(start, [b.end for b in usable])
            if found is None:
                continue
            chosen = usable[found]
            if level is _Level.WORD or self.value(start, chosen.end) >= self.limit * _MIN_FILL:
                return chosen
        return None

    def hard_cut(self, start: int, stop: int) -> int | None:
        """Furthest grapheme boundary that fits, for a word longer than the limit.

        Boundaries inside an atomic span are used only when the span alone is over the limit; that
        span is then dropped from both parts, since half a URL or handle is not worth linking.
        """
        next_break = bisect.bisect_right(self.break_ends, start)
        while next_break < len(self.breaks) and self.blockers[next_break]:
            next_break += 1
        if next_break < len(self.breaks):
            stop = min(stop, self.breaks[next_break].end)
        low = bisect.bisect_right(self.bounds, start)
        inside = self.bounds[low : bisect.bisect_left(self.bounds, stop, lo=low)]
        holding = [
            s for s in self.atomic if s not in self.broken and s.start < stop and start < s.end
        ]
        whole = _outside_spans(inside, holding)
        found = self.furthest(start, whole)
        if found is not None:
            return whole[found]
        found = self.furthest(start, inside)
        if found is None:
            return None
        cut = inside[found]
        for span in holding:
            if span.start < cut < span.end:
                self._break_span(span)
        return cut

    def drop_first_span(self, start: int) -> None:
        """Give up the link at `start` whose rendering alone is over the limit (a labelled link
        that a plain-text target spells out with its URL), keeping its text."""
        pending = [s for s in self.atomic if s.end > start and s not in self.broken]
        if not pending:
            raise ValueError(f"a limit of {self.limit} cannot hold a single character here")
        self._break_span(min(pending, key=lambda s: (s.start, s.end)))

    def skip_space(self, index: int) -> int:
        position = bisect.bisect_left(self.bounds, index)
        while position < len(self.clusters) and _is_break_space(self.clusters[position]):
            position += 1
        return self.bounds[position] if position < len(self.clusters) else len(self.text)

    def content_end(self) -> int:
        position = len(self.clusters)
        while position > 0 and _is_break_space(self.clusters[position - 1]):
            position -= 1
        return self.bounds[position]

    def ranges(self) -> list[tuple[int, int]]:
        stop = self.stop
        start = self.skip_space(0)
        result: list[tuple[int, int]] = []
        while start < stop:
            chosen = self.choose_break(start)
            if chosen is not None:
                result.append((start, chosen.end))
                start = chosen.next
                continue
            cut = self.hard_cut(start, min(stop, self.horizon(start)))
            if cut is None:
                self.drop_first_span(start)
                continue
            result.append((start, cut))
            start = self.skip_space(cut)
        return result


def _outside_spans(bounds: list[int], spans: Iterable[Span]) -> list[int]:
    """The sorted `bounds` that fall strictly inside none of `spans`, in one sweep."""
    depth = [0] * (len(bounds) + 1)
    for span in spans:
        depth[bisect.bisect_right(bounds, span.start)] += 1
        depth[bisect.bisect_left(bounds, span.end)] -= 1
    inside = itertools.accumulate(depth)
    return [bound for bound, covered in zip(bounds, inside, strict=False) if not covered]


def split_post(post: Post, limit: int, measure: Measure, *, reserve: int = 0) -> list[Post]:
    """Split a post too long for a target into parts that each measure at most `limit - reserve`.

    Parts are cut at the strongest boundary that still fills a part reasonably: paragraph, then
    sentence (or line), then word; never inside a link, mention or hashtag, nor inside a grapheme
    cluster. Whitespace at a cut is dropped. Only a single word longer than the limit is cut
    mid-word, at a grapheme boundary; if that word is itself a link, mention or hashtag, its span is
    dropped from both halves (its text stays). The same happens to a span that alone measures over
    the limit, such as a labelled link a plain-text target must spell out with its URL. Formatting
    spans (bold, ...) are clipped to each part.

    A post that already fits is returned as is. Every part keeps the post's metadata (id, reply,
    content warning, ...); media stay on the first part and the caller may move them. `reserve`
    keeps room for text the caller adds to each part, such as "1/3" or a content warning that the
    target counts with the text.
    """
    budget = limit - reserve
    if budget < 1:
        raise ValueError(f"nothing fits in a limit of {limit} with {reserve} reserved")
    if measure(post.text, list(post.spans)) <= budget:
        return [post]
    splitter = _Splitter(post, budget, measure)
    parts: list[Post] = []
    for number, (start, end) in enumerate(splitter.ranges()):
        text, spans = splitter.part(start, end)
        parts.append(replace(post, text=text, spans=spans, media=post.media if number == 0 else []))
    return parts or [replace(post, text="", spans=[])]


# --------------------------------------------------------------------------------------------------
# payloads at the model boundary: one error type, and text every store and network accepts


class PayloadError(ValueError):
    """A payload from a network that cannot become a Post (or an event) as it stands.

    This is the only error the inbound converters raise for bad input, whatever is wrong with it:
    a missing id, a wrong type, a text over `MAX_TEXT_CHARS`, JSON that does not parse. Listeners
    catch it per payload, log one line and move their cursor past it, so that one poisoned payload
    never stops a stream. Its message names what is wrong, never the payload itself.
    """


#: Longer texts are refused: no network we mirror to could carry them, even as a thread.
MAX_TEXT_CHARS = 100_000
#: More spans than this on one post are hostile; the first ones (by position) are kept.
MAX_SPANS = 4096
#: Ids, handles and such are short; anything longer is not what it claims to be.
MAX_ID_LENGTH = 512

_UNSAFE_CHARS = re.compile("[\x00\ud800-\udfff]")
_LANGUAGE = re.compile(r"[A-Za-z]{2,3}(?:-[A-Za-z0-9]{1,8}){0,4}")
_MIME = re.compile(r"[A-Za-z0-9][\w.+-]{0,63}/[A-Za-z0-9][\w.+-]{0,127}")
LINK_SCHEMES = frozenset({"http", "https", "mailto"})
PAGE_SCHEMES = frozenset({"http", "https"})


def clean_text(text: str) -> str:
    """The text with lone surrogates and NUL replaced by U+FFFD, one character for one.

    A lone surrogate (JSON can carry one as `\\ud800`) cannot be encoded as UTF-8, so SQLite and
    every network refuse it; NUL is refused by most servers. Replacing each by one U+FFFD keeps the
    length, and the width in UTF-8 bytes (3) and UTF-16 units (1) of a surrogate, so spans computed
    before cleaning stay valid.
    """
    if text.isascii():
        return text.replace("\x00", "\ufffd") if "\x00" in text else text
    return _UNSAFE_CHARS.sub("\ufffd", text)


def safe_url(url: str, schemes: frozenset[str] = PAGE_SCHEMES) -> str:
    """`url` when it is an absolute URL of one of `schemes`, else "" (no `javascript:` links)."""
    url = clean_text(url).strip()
    try:
        parts = urlsplit(url)
    except ValueError:
        return ""
    if parts.scheme.lower() not in schemes or any(char.isspace() for char in url):
        return ""
    if parts.scheme.lower() in PAGE_SCHEMES and not parts.hostname:
        return ""
    return url


def clean_spans(text: str, spans: Iterable[Span]) -> list[Span]:
    """Spans that fit the text, with safe fields, without duplicates, in order, at most MAX_SPANS.

    A link whose target is not a web or mail URL is dropped (its text stays), and a mention keeps
    its text but loses such a URL: a copy must never carry a `javascript:` link.
    """
    seen: set[Span] = set()
    kept: list[Span] = []
    for span in spans:
        if not 0 <= span.start < span.end <= len(text):
            continue
        url = safe_url(span.url, LINK_SCHEMES) if span.url else ""
        if span.kind is SpanKind.LINK and not url:
            continue
        cleaned = replace(
            span,
            url=url,
            tag=clean_text(span.tag),
            handle=clean_text(span.handle),
            did=clean_text(span.did),
        )
        if cleaned not in seen:
            seen.add(cleaned)
            kept.append(cleaned)
    kept.sort(key=lambda s: (s.start, -s.end))
    return kept[:MAX_SPANS]


def clean_media(media: Media) -> Media:
    mime = media.mime if _MIME.fullmatch(media.mime) else "application/octet-stream"
    return replace(
        media,
        mime=mime.lower(),
        alt=clean_text(media.alt),
        url=clean_text(media.url),
        width=_dimension(media.width),
        height=_dimension(media.height),
    )


def _dimension(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _clean_author(author: Author | None) -> Author | None:
    if author is None:
        return None
    return Author(
        network=clean_text(author.network),
        handle=clean_text(author.handle),
        display_name=clean_text(author.display_name),
        url=safe_url(author.url),
        id=clean_text(author.id),
    )


def _clean_card(card: LinkCard | None) -> LinkCard | None:
    url = safe_url(card.url) if card is not None else ""
    if card is None or not url:
        return None
    return LinkCard(
        url=url,
        title=clean_text(card.title),
        description=clean_text(card.description),
        thumb=clean_media(card.thumb) if card.thumb is not None else None,
    )


def _clean_optional(value: str | None) -> str | None:
    return clean_text(value) if value else None


def clean_post(post: Post) -> Post:
    """The post with every field in a shape the store and every network accept.

    The one place where text from a network is made safe: inbound converters apply it to what
    they build, outbound converters to what they are given (a post may come from an older outbox
    row). See `clean_text`, `clean_spans` and `safe_url`; a language that is not a BCP 47 tag is
    dropped, so that no target refuses the post for it.
    """
    text = clean_text(post.text)
    language = post.language if post.language and _LANGUAGE.fullmatch(post.language) else None
    return replace(
        post,
        id=clean_text(post.id),
        text=text,
        spans=clean_spans(text, post.spans),
        media=[clean_media(item) for item in post.media],
        reply_to=_clean_optional(post.reply_to),
        reply_to_author_id=_clean_optional(post.reply_to_author_id),
        thread_root=_clean_optional(post.thread_root),
        content_warning=clean_text(post.content_warning),
        language=language,
        permalink=safe_url(post.permalink),
        author=_clean_author(post.author),
        created_at=clean_text(post.created_at),
        card=_clean_card(post.card),
    )


# reading JSON payloads: optional fields of the wrong type read as absent, required ones raise


def parse_json(data: str | bytes) -> Any:
    """JSON text as Python values; `PayloadError` for anything that is not JSON (or too deep)."""
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as error:
        raise PayloadError(f"not JSON ({type(error).__name__})") from None


def as_dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def as_dicts(value: object) -> list[dict[str, Any]]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def as_text(value: object) -> str:
    return value if isinstance(value, str) else ""


def as_int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def as_id(value: object) -> str | None:
    """An id as networks write them (a number, or a short string of visible characters without
    spaces), or None for anything else: an id is compared and stored, never cleaned."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if (
        isinstance(value, str)
        and 0 < len(value) <= MAX_ID_LENGTH
        and value.isprintable()
        and " " not in value
    ):
        return value
    return None


def required_id(value: object, what: str) -> str:
    found = as_id(value)
    if found is None:
        raise PayloadError(f"{what} is missing or not an id")
    return found


def bounded_text(text: str, what: str = "text") -> str:
    if len(text) > MAX_TEXT_CHARS:
        raise PayloadError(f"{what} of {len(text)} characters is over {MAX_TEXT_CHARS}")
    return text
