"""Record validation for the Bluesky sandbox, following the lexicons the reference PDS enforces.

The rules are the ones of `app.bsky.feed.post` and the defs it uses (facets, embeds, strong refs,
self-labels), plus likes and reposts, written as a small schema tree. Where the current lexicons and
the pinned reference PDS (`tests/pds`) differ, the PDS wins, because the sandbox must answer as it
does: image blobs up to 1,000,000 bytes, video up to 100,000,000, no gallery embed (an unknown embed
type passes, as in any open union). The messages copy the PDS's wording and `$.record...` paths, so
that a log line reads the same whichever server produced it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import regex

from relaybird.sandbox.bluesky_ipld import Link, is_valid_cid

# Limits that the relaybird adapter and the sandbox share with the reference PDS.
POST_MAX_GRAPHEMES = 300
POST_MAX_BYTES = 3000
POST_MAX_LANGS = 3
POST_MAX_TAGS = 8
TAG_MAX_GRAPHEMES = 64
TAG_MAX_BYTES = 640
MAX_IMAGES = 4
IMAGE_MAX_SIZE = 1_000_000
VIDEO_MAX_SIZE = 100_000_000
SELF_LABELS_MAX = 10
SELF_LABEL_MAX_BYTES = 128
VIDEO_ALT_MAX_GRAPHEMES = 1000
VIDEO_ALT_MAX_BYTES = 10000
VIDEO_MAX_CAPTIONS = 20
CAPTION_MAX_SIZE = 20000
_PREVIEW_MAX = 48


class LexiconError(ValueError):
    """A value breaks its schema; the message is the PDS's, ending in ` at $.path`."""


# --- string formats -------------------------------------------------------------------------

_BCP47 = re.compile(
    r"^((?P<grandfathered>(en-GB-oed|i-ami|i-bnn|i-default|i-enochian|i-hak|i-klingon|i-lux|"
    r"i-mingo|i-navajo|i-pwn|i-tao|i-tay|i-tsu|sgn-BE-FR|sgn-BE-NL|sgn-CH-DE)|(art-lojban|"
    r"cel-gaulish|no-bok|no-nyn|zh-guoyu|zh-hakka|zh-min|zh-min-nan|zh-xiang))|((?P<language>"
    r"([A-Za-z]{2,3}(-(?P<extlang>[A-Za-z]{3}(-[A-Za-z]{3}){0,2}))?)|[A-Za-z]{4}|[A-Za-z]{5,8})"
    r"(-(?P<script>[A-Za-z]{4}))?(-(?P<region>[A-Za-z]{2}|[0-9]{3}))?(-(?P<variant>"
    r"[A-Za-z0-9]{5,8}|[0-9][A-Za-z0-9]{3}))*(-(?P<extension>[0-9A-WY-Za-wy-z]"
    r"(-[A-Za-z0-9]{2,8})+))*(-(?P<privateUseA>x(-[A-Za-z0-9]{1,8})+))?)|(?P<privateUseB>"
    r"x(-[A-Za-z0-9]{1,8})+))\Z"
)
_URI = re.compile(r"^[A-Za-z0-9_]+:(?://)?[^\s/]\S*\Z")
_DID = re.compile(r"^did:[a-z]+:[a-zA-Z0-9._:%-]*[a-zA-Z0-9._-]\Z")
_HANDLE = re.compile(
    r"^([a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?\.)+[a-zA-Z]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?\Z"
)
_NSID = re.compile(
    r"^[a-zA-Z]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?(\.[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)+"
    r"(\.[a-zA-Z]([a-zA-Z0-9]{0,62})?)\Z"
)
_TID = re.compile(r"^[234567abcdefghij][234567abcdefghijklmnopqrstuvwxyz]{12}\Z")
_RECORD_KEY = re.compile(r"^[a-zA-Z0-9_~.:-]{1,512}\Z")
_AT_URI_CHARS = re.compile(r"[^a-zA-Z0-9._~:@!$&'()*+,;=%/\\\[\]#?-]")
_AT_URI = re.compile(
    r"^at://(?P<authority>[^/?#\s]+)(?:/(?P<collection>[^/?#\s]+)(?:/(?P<rkey>[^/?#\s]+))?)?/?"
    r"(?:\?[^#\s]*)?(?:#(?P<hash>\S*))?\Z"
)
_DATETIME = re.compile(
    r"^(?P<year>[0-9]{4})-(?P<month>0[1-9]|1[012])-(?P<day>[0-2][0-9]|3[01])T"
    r"(?P<hour>[0-1][0-9]|2[0-3]):(?P<minute>[0-5][0-9]):(?P<second>[0-5][0-9]|60)"
    r"(?P<fraction>\.[0-9]+)?(?P<offset>Z|(?P<sign>[+-])(?P<oh>[0-1][0-9]|2[0-3]):(?P<om>[0-5][0-9]))"
    r"\Z"
)


def is_valid_did(text: str) -> bool:
    return len(text) <= 2048 and bool(_DID.match(text))


def is_valid_handle(text: str) -> bool:
    return len(text) <= 253 and bool(_HANDLE.match(text))


def is_valid_at_identifier(text: str) -> bool:
    return is_valid_did(text) if text.startswith("did:") else is_valid_handle(text)


def is_valid_nsid(text: str) -> bool:
    return len(text) <= 317 and bool(_NSID.match(text))


def is_valid_tid(text: str) -> bool:
    return len(text) == 13 and bool(_TID.match(text))


def is_valid_record_key(text: str) -> bool:
    return bool(_RECORD_KEY.match(text)) and text not in (".", "..")


def is_valid_uri(text: str) -> bool:
    return bool(_URI.match(text))


def is_valid_language(text: str) -> bool:
    return bool(_BCP47.match(text))


def is_valid_at_uri(text: str) -> bool:
    """The PDS's lenient at-uri check: an authority, at most collection and record key."""
    if len(text) > 8192 or _AT_URI_CHARS.search(text):
        return False
    match = _AT_URI.match(text)
    if match is None or not is_valid_at_identifier(match["authority"]):
        return False
    return match["collection"] is None or is_valid_nsid(match["collection"])


def is_valid_datetime(text: str) -> bool:
    """RFC 3339 with a time zone, as JavaScript's `Date` then reads it (days roll over)."""
    if len(text) > 64 or text.endswith("-00:00"):
        return False
    match = _DATETIME.match(text)
    if match is None or match["second"] == "60":
        return False
    offset = timedelta(0)
    if match["sign"]:
        offset = timedelta(hours=int(match["oh"]), minutes=int(match["om"]))
        if match["sign"] == "-":
            offset = -offset
    # The day may exceed the month's length; JavaScript rolls it over instead of refusing it.
    local = timedelta(
        days=int(match["day"]) - 1,
        hours=int(match["hour"]),
        minutes=int(match["minute"]),
        seconds=int(match["second"]),
    )
    year, month = int(match["year"]), int(match["month"])
    if year == 0:
        # Year 0 exists in JavaScript (1 BC); only an instant before it is refused.
        return month > 1 or local - offset >= timedelta(0)
    start = datetime(year, month, 1, tzinfo=UTC)
    try:
        instant = start + local - offset
    except OverflowError:
        return False
    return instant.year <= 9999


_FORMATS: dict[str, tuple[str, Callable[[str], bool]]] = {
    "did": ("DID", is_valid_did),
    "handle": ("handle", is_valid_handle),
    "at-identifier": ("AT identifier", is_valid_at_identifier),
    "nsid": ("NSID", is_valid_nsid),
    "tid": ("TID string", is_valid_tid),
    "record-key": ("record key", is_valid_record_key),
    "uri": ("uri", is_valid_uri),
    "language": ("language", is_valid_language),
    "at-uri": ("at-uri", is_valid_at_uri),
    "datetime": ("datetime", is_valid_datetime),
    "cid": ("CID string", is_valid_cid),
}


def check_format(text: str, fmt: str) -> bool:
    return _FORMATS[fmt][1](text)


def grapheme_length(text: str) -> int:
    """Extended grapheme clusters, as the PDS counts them (Intl.Segmenter)."""
    return len(regex.findall(r"\X", text))


def utf8_length(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


# --- messages ---------------------------------------------------------------------------------


def describe(value: Any) -> str:
    """A short preview of a value, as the PDS prints it in its messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        shown = value if len(value) < _PREVIEW_MAX else value[: _PREVIEW_MAX - 1] + "…"
        return json.dumps(shown, ensure_ascii=False)
    if isinstance(value, Link):
        return "cid"
    if isinstance(value, bytes):
        return "object"
    if isinstance(value, list):
        return "[" + _first_two([describe(item) for item in value]) + "]"
    if isinstance(value, dict):
        return "{" + _first_two([f"{json.dumps(key)}: ..." for key in value]) + "}"
    return type(value).__name__


def _first_two(parts: list[str]) -> str:
    return ", ".join(parts[:2]) + (", ..." if len(parts) > 2 else "")


def _fail(message: str, path: str) -> LexiconError:
    return LexiconError(f"{message} at {path}")


def _expected(kind: str, value: Any, path: str) -> LexiconError:
    return _fail(f"Expected {kind} value type (got {describe(value)})", path)


# --- schema tree ------------------------------------------------------------------------------


class Schema:
    """One lexicon type; `check` raises `LexiconError` at the first problem, like the PDS."""

    def check(self, value: Any, path: str) -> None:
        raise NotImplementedError


@dataclass(frozen=True)
class Str(Schema):
    max_bytes: int | None = None
    max_graphemes: int | None = None
    fmt: str | None = None

    def check(self, value: Any, path: str) -> None:
        if not isinstance(value, str):
            raise _expected("string", value, path)
        # A code point takes at most 4 bytes: shorter strings cannot be over the byte limit.
        if self.max_bytes is not None and len(value) * 4 > self.max_bytes:
            size = utf8_length(value)
            if size > self.max_bytes:
                raise _fail(f"string too big (maximum {self.max_bytes}, got {size})", path)
        if self.max_graphemes is not None and len(value) > self.max_graphemes:
            count = grapheme_length(value)
            if count > self.max_graphemes:
                raise _fail(f"grapheme too big (maximum {self.max_graphemes}, got {count})", path)
        if self.fmt is not None and not check_format(value, self.fmt):
            raise _fail(f"Invalid {_FORMATS[self.fmt][0]} (got {describe(value)})", path)


@dataclass(frozen=True)
class Int(Schema):
    minimum: int | None = None
    maximum: int | None = None

    def check(self, value: Any, path: str) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _expected("integer", value, path)
        if self.minimum is not None and value < self.minimum:
            raise _fail(f"integer too small (minimum {self.minimum}, got {value})", path)
        if self.maximum is not None and value > self.maximum:
            raise _fail(f"integer too big (maximum {self.maximum}, got {value})", path)


@dataclass(frozen=True)
class Arr(Schema):
    items: Schema
    max_length: int | None = None

    def check(self, value: Any, path: str) -> None:
        if not isinstance(value, list):
            raise _expected("array", value, path)
        if self.max_length is not None and len(value) > self.max_length:
            raise _fail(f"array too big (maximum {self.max_length}, got {len(value)})", path)
        for index, item in enumerate(value):
            self.items.check(item, f"{path}[{index}]")


@dataclass(frozen=True)
class Blob(Schema):
    accept: tuple[str, ...]
    max_size: int

    def check(self, value: Any, path: str) -> None:
        if not (
            isinstance(value, dict)
            and value.get("$type") == "blob"
            and isinstance(value.get("ref"), Link)
            and isinstance(value.get("mimeType"), str)
            and isinstance(value.get("size"), int)
        ):
            raise _expected("blob", value, path)
        if value["size"] > self.max_size:
            raise _fail(f"blob too big (maximum {self.max_size}, got {value['size']})", path)
        if not any(_mime_matches(pattern, value["mimeType"]) for pattern in self.accept):
            wanted = " or ".join(json.dumps(pattern) for pattern in self.accept)
            raise _fail(
                f"Expected {wanted} (got {describe(value['mimeType'])})", f"{path}.mimeType"
            )


def _mime_matches(pattern: str, mime: str) -> bool:
    if pattern == "*/*":
        return True
    if pattern.endswith("/*"):
        return mime.startswith(pattern[:-1])
    return mime == pattern


@dataclass
class Obj(Schema):
    """A named lexicon object: an optional `$type` must name it; unknown keys pass."""

    type_name: str
    props: dict[str, Schema] = field(default_factory=dict)
    required: tuple[str, ...] = ()

    def check(self, value: Any, path: str) -> None:
        if not isinstance(value, dict):
            raise _expected("object", value, path)
        declared = value.get("$type")
        if declared is not None and declared != self.type_name:
            raise _fail(
                f"Expected {json.dumps(self.type_name)} (got {describe(declared)})", f"{path}.$type"
            )
        for key in self.required:
            if key not in value:
                raise _fail(f'Missing required key "{key}"', path)
        for key, schema in self.props.items():
            if key in value:
                schema.check(value[key], f"{path}.{key}")


@dataclass
class Union(Schema):
    """An open union: the member is chosen by `$type`, and unknown members pass unchecked."""

    members: list[Obj]

    def check(self, value: Any, path: str) -> None:
        if not isinstance(value, dict) or not isinstance(value.get("$type"), str):
            raise _expected('an object which includes the "$type" property', value, path)
        for member in self.members:
            if member.type_name == value["$type"]:
                member.check(value, path)
                return


# --- the lexicons ------------------------------------------------------------------------------

STRONG_REF = Obj(
    "com.atproto.repo.strongRef",
    {"uri": Str(fmt="at-uri"), "cid": Str(fmt="cid")},
    ("uri", "cid"),
)
ASPECT_RATIO = Obj(
    "app.bsky.embed.defs#aspectRatio",
    {"width": Int(minimum=1), "height": Int(minimum=1)},
    ("width", "height"),
)
SELF_LABELS = Obj(
    "com.atproto.label.defs#selfLabels",
    {
        "values": Arr(
            Obj(
                "com.atproto.label.defs#selfLabel",
                {"val": Str(max_bytes=SELF_LABEL_MAX_BYTES)},
                ("val",),
            ),
            max_length=SELF_LABELS_MAX,
        )
    },
    ("values",),
)
FACET = Obj(
    "app.bsky.richtext.facet",
    {
        "index": Obj(
            "app.bsky.richtext.facet#byteSlice",
            {"byteStart": Int(minimum=0), "byteEnd": Int(minimum=0)},
            ("byteStart", "byteEnd"),
        ),
        "features": Arr(
            Union(
                [
                    Obj("app.bsky.richtext.facet#mention", {"did": Str(fmt="did")}, ("did",)),
                    Obj("app.bsky.richtext.facet#link", {"uri": Str(fmt="uri")}, ("uri",)),
                    Obj(
                        "app.bsky.richtext.facet#tag",
                        {"tag": Str(max_bytes=TAG_MAX_BYTES, max_graphemes=TAG_MAX_GRAPHEMES)},
                        ("tag",),
                    ),
                ]
            )
        ),
    },
    ("index", "features"),
)


def _images(max_size: int) -> Obj:
    return Obj(
        "app.bsky.embed.images",
        {
            "images": Arr(
                Obj(
                    "app.bsky.embed.images#image",
                    {
                        "image": Blob(("image/*",), max_size),
                        "alt": Str(),
                        "aspectRatio": ASPECT_RATIO,
                    },
                    ("image", "alt"),
                ),
                max_length=MAX_IMAGES,
            )
        },
        ("images",),
    )


def _external(max_size: int) -> Obj:
    return Obj(
        "app.bsky.embed.external",
        {
            "external": Obj(
                "app.bsky.embed.external#external",
                {
                    "uri": Str(fmt="uri"),
                    "title": Str(),
                    "description": Str(),
                    "thumb": Blob(("image/*",), max_size),
                },
                ("uri", "title", "description"),
            )
        },
        ("external",),
    )


VIDEO = Obj(
    "app.bsky.embed.video",
    {
        "video": Blob(("video/mp4",), VIDEO_MAX_SIZE),
        "captions": Arr(
            Obj(
                "app.bsky.embed.video#caption",
                {"lang": Str(fmt="language"), "file": Blob(("text/vtt",), CAPTION_MAX_SIZE)},
                ("lang", "file"),
            ),
            max_length=VIDEO_MAX_CAPTIONS,
        ),
        "alt": Str(max_bytes=VIDEO_ALT_MAX_BYTES, max_graphemes=VIDEO_ALT_MAX_GRAPHEMES),
        "aspectRatio": ASPECT_RATIO,
    },
    ("video",),
)
EMBED_RECORD = Obj("app.bsky.embed.record", {"record": STRONG_REF}, ("record",))


def post_schema(image_max_size: int = IMAGE_MAX_SIZE) -> Obj:
    """`app.bsky.feed.post`, with the image size limit the sandbox was given."""
    images, external = _images(image_max_size), _external(image_max_size)
    return Obj(
        "app.bsky.feed.post",
        {
            "text": Str(max_bytes=POST_MAX_BYTES, max_graphemes=POST_MAX_GRAPHEMES),
            "entities": Arr(
                Obj(
                    "app.bsky.feed.post#entity",
                    {
                        "index": Obj(
                            "app.bsky.feed.post#textSlice",
                            {"start": Int(minimum=0), "end": Int(minimum=0)},
                            ("start", "end"),
                        ),
                        "type": Str(),
                        "value": Str(),
                    },
                    ("index", "type", "value"),
                )
            ),
            "facets": Arr(FACET),
            "reply": Obj(
                "app.bsky.feed.post#replyRef",
                {"root": STRONG_REF, "parent": STRONG_REF},
                ("root", "parent"),
            ),
            "embed": Union(
                [
                    images,
                    VIDEO,
                    external,
                    EMBED_RECORD,
                    Obj(
                        "app.bsky.embed.recordWithMedia",
                        {"record": EMBED_RECORD, "media": Union([images, VIDEO, external])},
                        ("record", "media"),
                    ),
                ]
            ),
            "langs": Arr(Str(fmt="language"), max_length=POST_MAX_LANGS),
            "labels": Union([SELF_LABELS]),
            "tags": Arr(
                Str(max_bytes=TAG_MAX_BYTES, max_graphemes=TAG_MAX_GRAPHEMES),
                max_length=POST_MAX_TAGS,
            ),
            "createdAt": Str(fmt="datetime"),
        },
        ("text", "createdAt"),
    )


def _subject_record(nsid: str) -> Obj:
    return Obj(
        nsid,
        {"subject": STRONG_REF, "createdAt": Str(fmt="datetime"), "via": STRONG_REF},
        ("subject", "createdAt"),
    )


@dataclass(frozen=True)
class RecordType:
    """A collection the sandbox knows: its record-key kind and its schema."""

    key: str
    schema: Obj


def known_records(image_max_size: int = IMAGE_MAX_SIZE) -> dict[str, RecordType]:
    return {
        "app.bsky.feed.post": RecordType("tid", post_schema(image_max_size)),
        "app.bsky.feed.like": RecordType("tid", _subject_record("app.bsky.feed.like")),
        "app.bsky.feed.repost": RecordType("tid", _subject_record("app.bsky.feed.repost")),
    }


def validate_record(record_type: RecordType, collection: str, rkey: str, value: Any) -> None:
    """Check the record key, then the record, raising the PDS's `InvalidRequest` message."""
    if record_type.key == "tid" and not is_valid_tid(rkey):
        raise LexiconError(
            f"Invalid record key for {collection}: Invalid TID string (got {describe(rkey)}) at $"
        )
    try:
        record_type.schema.check(value, "$.record")
    except LexiconError as error:
        raise LexiconError(f"Invalid {collection} record: {error}") from None
