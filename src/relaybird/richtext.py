"""Text measures, offset conversions and splitting, shared by every network.

Networks count text differently (Bluesky in grapheme clusters and UTF-8 bytes, Mastodon in
grapheme clusters with every URL weighted, Telegram in UTF-16 code units) and address ranges
differently. The neutral model keeps Python string indices; this module is where the other units are
computed, so that each network module only says which unit it needs.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from enum import IntEnum
from urllib.parse import urlsplit

import regex

from relaybird.model import Post, Span, SpanKind

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
    entities: list[tuple[int, int, str]] = [(s, e, "x" * url_weight) for s, e in find_urls(text)]
    for match in _FEDI_MENTION.finditer(text):
        start, end = match.span()
        if not any(s < end and start < e for s, e, _ in entities):
            entities.append((start, end, "@" + match.group(1)))
    entities.sort()
    pieces: list[str] = []
    cursor = 0
    for start, end, replacement in entities:
        pieces += [text[cursor:start], replacement]
        cursor = end
    pieces.append(text[cursor:])
    return "".join(pieces)


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
        self.broken: set[Span] = set()
        self.stop = self.content_end()
        self.breaks = self._find_breaks()
        self.break_ends = [b.end for b in self.breaks]
        self.blockers = [0] * len(self.breaks)
        for span in self.atomic:
            self._count_blocker(span, 1)
        # The end of the text, as a break, lets one search both pack and finish the last part.
        self.breaks.append(_Break(self.stop, self.stop, _Level.PARAGRAPH))
        self.break_ends.append(self.stop)
        self.blockers.append(0)

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
        """Add `delta` to every break that would cut `span` (one whose gap meets its inside)."""
        index = max(0, bisect.bisect_left(self.break_ends, span.start) - 1)
        while index < len(self.break_ends) and self.breaks[index].end < span.end:
            item = self.breaks[index]
            inside_gap = item.end <= span.start and span.end <= item.next
            if item.next > span.start and not inside_gap:
                self.blockers[index] += delta
            index += 1

    def _break_span(self, span: Span) -> None:
        if span not in self.broken:
            self.broken.add(span)
            self._count_blocker(span, -1)

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
        return self.measure(*self.part(start, end)) <= self.limit

    def value(self, start: int, end: int) -> int:
        return self.measure(*self.part(start, end))

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

    def choose_break(self, start: int) -> _Break | None:
        """The cut for a part starting at `start`: strongest boundary that fills the part enough."""
        first = bisect.bisect_right(self.break_ends, start)
        candidates = [
            self.breaks[i] for i in range(first, len(self.breaks)) if not self.blockers[i]
        ]
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
        whole = [b for b in inside if not any(s.start < b < s.end for s in holding)]
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
            cut = self.hard_cut(start, stop)
            if cut is None:
                self.drop_first_span(start)
                continue
            result.append((start, cut))
            start = self.skip_space(cut)
        return result


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
