"""Bluesky post records (`app.bsky.feed.post`) to and from the neutral model.

Bluesky links nothing by itself: a URL, tag or mention is clickable only through a facet that the
client computes, in UTF-8 byte offsets. Converting spans to facets here, and facets back to spans,
keeps byte arithmetic out of the rest of the code.
"""

from __future__ import annotations

import base64
import re
from typing import Any
from urllib.parse import quote

import libipld

from relaybird import richtext
from relaybird.model import Author, LinkCard, Media, Post, Span, SpanKind, Visibility
from relaybird.richtext import PayloadError, as_dict, as_dicts, as_int, as_text, bounded_text

__all__ = [
    "PayloadError",
    "ipld_to_json",
    "measure_bluesky",
    "post_to_record_text",
    "profile_url",
    "record_to_post",
]

NETWORK = "bluesky"
BLUESKY_MAX_GRAPHEMES = 300
BLUESKY_MAX_BYTES = 3000
BLUESKY_MAX_TAG_GRAPHEMES = 64
BLUESKY_MAX_TAG_LENGTH = 640

FACET = "app.bsky.richtext.facet"
LINK = f"{FACET}#link"
MENTION = f"{FACET}#mention"
TAG = f"{FACET}#tag"

#: Self-labels that Bluesky uses as content warnings; any of them marks the post sensitive.
SENSITIVE_LABELS = frozenset({"sexual", "nudity", "porn", "graphic-media"})

APP_URL = "https://bsky.app"

measure_bluesky = richtext.scaled_max(
    BLUESKY_MAX_GRAPHEMES,
    (richtext.count_graphemes, BLUESKY_MAX_GRAPHEMES),
    (richtext.count_utf8, BLUESKY_MAX_BYTES),
)
"""Bluesky's two limits as one measure, in graphemes: use it with `BLUESKY_MAX_GRAPHEMES`.

The byte count is scaled so that a text within 3000 UTF-8 bytes never measures over 300, which lets
`split_post` honour both rules with a single limit.
"""


def profile_url(actor: str) -> str:
    """Bluesky's web profile of a handle or DID, which is what a mention links to elsewhere."""
    return f"{APP_URL}/profile/{quote(actor, safe=':.')}"


# --------------------------------------------------------------------------------------------------
# outbound


def _feature(text: str, span: Span) -> dict[str, Any] | None:
    """The facet feature for one span, or None when Bluesky cannot express it."""
    if span.kind is SpanKind.LINK and span.url:
        return {"$type": LINK, "uri": span.url}
    if span.kind is SpanKind.MENTION:
        if span.did:
            return {"$type": MENTION, "did": span.did}
        if span.url:
            return {"$type": LINK, "uri": span.url}
    if span.kind is SpanKind.HASHTAG:
        tag = span.tag or text[span.start : span.end].lstrip("#")
        if _valid_tag(tag):
            return {"$type": TAG, "tag": tag}
    return None


def _valid_tag(tag: str) -> bool:
    return (
        bool(tag)
        and not any(char.isspace() for char in tag)
        and len(tag) <= BLUESKY_MAX_TAG_LENGTH
        and richtext.graphemes(tag) <= BLUESKY_MAX_TAG_GRAPHEMES
    )


def _facet(
    offsets: richtext.OffsetTable, start: int, end: int, feature: dict[str, Any]
) -> dict[str, Any]:
    return {
        "$type": FACET,
        "index": {"byteStart": offsets.offset(start), "byteEnd": offsets.offset(end)},
        "features": [feature],
    }


def post_to_record_text(post: Post) -> tuple[str, list[dict[str, Any]]]:
    """The record's `text` and `facets`: links, tags and mentions made clickable on Bluesky.

    A mention without a DID cannot be a Bluesky mention; it links to the person's profile instead,
    keeping the `@handle` the reader sees, so it never points at a Bluesky stranger with that name.
    Formatting spans are dropped (Bluesky has none). A bare URL no span covers still gets a link
    facet, since nothing on Bluesky would make it clickable otherwise. Facets come sorted and never
    overlap.
    """
    post = richtext.clean_post(post)
    text = post.text
    spans = richtext.normalize_spans(text, post.spans)
    ranges: list[tuple[int, int, dict[str, Any]]] = []
    for span in spans:
        feature = _feature(text, span) if span.kind in richtext.ATOMIC_KINDS else None
        if feature is not None and (not ranges or span.start >= ranges[-1][1]):
            ranges.append((span.start, span.end, feature))
    taken = [(start, end) for start, end, _ in ranges]
    for start, end in richtext.find_urls(text):
        if not richtext.overlaps_any(taken, start, end):
            ranges.append((start, end, {"$type": LINK, "uri": text[start:end]}))
    ranges.sort(key=lambda item: item[0])
    offsets = richtext.OffsetTable.utf8(text)
    return text, [_facet(offsets, start, end, feature) for start, end, feature in ranges]


# --------------------------------------------------------------------------------------------------
# inbound


_CID = re.compile(r"[A-Za-z0-9]{8,128}")


def _did_of(at_uri: str) -> str:
    """The repository DID of an `at://did/collection/rkey` URI."""
    return at_uri.removeprefix("at://").split("/", 1)[0]


def at_uri(repo: str, collection: str, rkey: str) -> str:
    return f"at://{repo}/{collection}/{rkey}"


def split_at_uri(uri: str) -> tuple[str, str, str]:
    """A record's `at://repo/collection/rkey` in its three parts; PayloadError for anything else."""
    parts = uri.removeprefix("at://").split("/")
    if not uri.startswith("at://") or len(parts) != 3 or not all(parts):
        raise PayloadError(f"not a record's at-uri: {uri}")
    return parts[0], parts[1], parts[2]


def _facet_spans(text: str, facets: list[dict[str, Any]]) -> list[Span]:
    """Facets back to spans; a facet whose bytes fall inside a character of the text is ignored."""
    offsets = richtext.OffsetTable.utf8(text)
    spans: list[Span] = []
    for facet in facets:
        index = as_dict(facet.get("index"))
        byte_start, byte_end = as_int(index.get("byteStart")), as_int(index.get("byteEnd"))
        if byte_start is None or byte_end is None or byte_start >= byte_end:
            continue
        try:
            start, end = offsets.index(byte_start), offsets.index(byte_end)
        except ValueError:
            continue
        for feature in as_dicts(facet.get("features")):
            span = _feature_span(text[start:end], start, end, feature)
            if span is not None:
                spans.append(span)
    return sorted(spans, key=lambda s: (s.start, -s.end))


def _feature_span(shown: str, start: int, end: int, feature: dict[str, Any]) -> Span | None:
    kind = feature.get("$type")
    if kind == LINK and as_text(feature.get("uri")):
        return Span(start, end, SpanKind.LINK, url=as_text(feature.get("uri")))
    if kind == MENTION and as_text(feature.get("did")):
        did = as_text(feature.get("did"))
        handle = shown.lstrip("@") if shown.startswith("@") else ""
        return Span(
            start, end, SpanKind.MENTION, url=profile_url(handle or did), handle=handle, did=did
        )
    if kind == TAG and as_text(feature.get("tag")):
        return Span(start, end, SpanKind.HASHTAG, tag=as_text(feature.get("tag")))
    return None


def _blob_url(pds_url: str, did: str, blob: dict[str, Any]) -> str | None:
    """Where `getBlob` serves a blob, or None when the blob names no CID one could ask for."""
    ref = blob.get("ref")
    cid = as_text(ref.get("$link")) if isinstance(ref, dict) else as_text(blob.get("cid"))
    if not _CID.fullmatch(cid):
        return None
    query = f"did={quote(did, safe=':')}&cid={cid}"
    return f"{pds_url.rstrip('/')}/xrpc/com.atproto.sync.getBlob?{query}"


def _embedded_media(embed: Any) -> list[tuple[dict[str, Any], str]]:
    """Every (blob, alt) of an embed, looking inside a quote-with-media."""
    if not isinstance(embed, dict):
        return []
    kind = embed.get("$type")
    if kind == "app.bsky.embed.images":
        return _blobs(as_dicts(embed.get("images")))
    if kind == "app.bsky.embed.gallery":
        return _blobs(as_dicts(embed.get("items")))
    if kind == "app.bsky.embed.video" and isinstance(embed.get("video"), dict):
        return [(embed["video"], as_text(embed.get("alt")))]
    if kind == "app.bsky.embed.recordWithMedia":
        return _embedded_media(embed.get("media"))
    return []


def _blobs(items: list[dict[str, Any]]) -> list[tuple[dict[str, Any], str]]:
    return [
        (item["image"], as_text(item.get("alt")))
        for item in items
        if isinstance(item.get("image"), dict)
    ]


def _blob_media(
    blob: dict[str, Any], alt: str, pds_url: str, did: str, sensitive: bool
) -> Media | None:
    url = _blob_url(pds_url, did, blob)
    if url is None:
        return None
    return Media(
        mime=as_text(blob.get("mimeType")) or "application/octet-stream",
        alt=alt,
        url=url,
        sensitive=sensitive,
    )


def _external_card(embed: Any, pds_url: str, did: str, sensitive: bool) -> LinkCard | None:
    """The link preview of an external embed (also inside a quote-with-media), if there is one."""
    if not isinstance(embed, dict):
        return None
    if embed.get("$type") == "app.bsky.embed.recordWithMedia":
        return _external_card(embed.get("media"), pds_url, did, sensitive)
    if embed.get("$type") != "app.bsky.embed.external":
        return None
    external = as_dict(embed.get("external"))
    if not as_text(external.get("uri")):
        return None
    thumb = external.get("thumb")
    return LinkCard(
        url=as_text(external.get("uri")),
        title=as_text(external.get("title")),
        description=as_text(external.get("description")),
        thumb=_blob_media(thumb, "", pds_url, did, sensitive) if isinstance(thumb, dict) else None,
    )


def _labels(record: dict[str, Any]) -> set[str]:
    labels = as_dict(record.get("labels"))
    return {as_text(item.get("val")) for item in as_dicts(labels.get("values"))}


def _ref_uri(reply: dict[str, Any], which: str) -> str | None:
    uri = as_text(as_dict(reply.get(which)).get("uri"))
    return uri if uri.startswith("at://") and len(uri) <= richtext.MAX_ID_LENGTH else None


def record_to_post(
    uri: str, cid: str, record: Any, author_handle: str, *, pds_url: str = ""
) -> Post:
    """A post record as a neutral Post; `uri` is its at-uri and becomes the Post's id.

    `cid` is taken to match the strong ref callers hold, but the neutral Post has no field for it.
    Media URLs (and a link card's thumbnail) point at `com.atproto.sync.getBlob` on `pds_url`, the
    author's PDS, which the caller knows from the session or the DID document; fetching the bytes
    is the caller's job. Bluesky's self-labels mark the post sensitive; Bluesky has no
    content-warning text.

    Unknown fields are ignored, optional ones of the wrong type read as absent, and facets that do
    not fall on character boundaries of the text are dropped. A record that is not an object, whose
    `text` is not a string or is over `richtext.MAX_TEXT_CHARS`, or an `uri` that is no at-uri
    raises `PayloadError`, the only error this raises.
    """
    del cid
    if not isinstance(record, dict):
        raise PayloadError("a post record must be a JSON object")
    if not isinstance(uri, str) or not uri.startswith("at://did:") or len(uri) > 1024:
        raise PayloadError("the record's at-uri is not one")
    try:
        return richtext.clean_post(_record_to_post(uri, record, author_handle, pds_url))
    except PayloadError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, RecursionError) as error:
        raise PayloadError(f"record {uri} could not be read ({type(error).__name__})") from None


def _record_to_post(uri: str, record: dict[str, Any], author_handle: str, pds_url: str) -> Post:
    did = _did_of(uri)
    text = record.get("text", "")
    if not isinstance(text, str):
        raise PayloadError(f"record {uri} has a text that is not a string")
    bounded_text(text, f"record {uri}")
    sensitive = bool(_labels(record) & SENSITIVE_LABELS)
    reply = as_dict(record.get("reply"))
    parent = _ref_uri(reply, "parent")
    langs = record.get("langs")
    language = as_text(langs[0]) if isinstance(langs, list) and langs else ""
    rkey = uri.rstrip("/").rsplit("/", 1)[-1]
    author_handle = as_text(author_handle)
    embedded = (
        _blob_media(blob, alt, pds_url, did, sensitive)
        for blob, alt in _embedded_media(record.get("embed"))
    )
    return Post(
        id=uri,
        text=text,
        spans=_facet_spans(text, as_dicts(record.get("facets"))),
        media=[item for item in embedded if item is not None],
        reply_to=parent,
        reply_to_author_id=_did_of(parent) if parent else None,
        thread_root=_ref_uri(reply, "root") if parent else None,
        sensitive=sensitive,
        language=language or None,
        visibility=Visibility.PUBLIC,
        permalink=f"{profile_url(author_handle or did)}/post/{quote(rkey, safe='')}",
        author=Author(
            network=NETWORK,
            handle=author_handle,
            url=profile_url(author_handle or did),
            id=did,
        ),
        created_at=as_text(record.get("createdAt")),
        card=_external_card(record.get("embed"), pds_url, did, sensitive),
    )


# --------------------------------------------------------------------------------------------------
# records off the firehose

_CID_CODECS = (0x71, 0x55)  # dag-cbor (records, commits) and raw (blobs)
_SHA256_CID_LENGTH = 36


def _cid_string(data: bytes) -> str | None:
    """The string form of a binary CID as the AT Protocol writes links, or None for other bytes.

    A decoded DAG-CBOR block gives links and byte strings alike as `bytes`. Every link the
    protocol makes is a CIDv1 with the dag-cbor or raw codec and a 32-byte SHA-256, so bytes of
    exactly that shape are read as a link: a byte string that happens to look like one would need
    36 bytes starting with one of these four-byte prefixes.
    """
    if (
        len(data) == _SHA256_CID_LENGTH
        and data[0] == 1
        and data[1] in _CID_CODECS
        and data[2:4] == b"\x12\x20"
    ):
        try:
            return libipld.encode_cid(data)
        except ValueError:
            return None
    return None


#: Records are shallow; anything nested deeper is refused rather than followed to the stack's end.
MAX_IPLD_DEPTH = 128


def ipld_to_json(value: Any, depth: int = 0) -> Any:
    """A record decoded from a repo's DAG-CBOR block, in the JSON form the XRPC API answers with.

    Links become `{"$link": cid}` and byte strings `{"$bytes": base64}` (no padding), so a record
    taken off the firehose looks exactly like the one `getRecord` or Jetstream gives, blobs included.
    Nesting deeper than `MAX_IPLD_DEPTH` raises `PayloadError`.
    """
    if depth > MAX_IPLD_DEPTH:
        raise PayloadError(f"record nested deeper than {MAX_IPLD_DEPTH} levels")
    if isinstance(value, dict):
        return {str(key): ipld_to_json(item, depth + 1) for key, item in value.items()}
    if isinstance(value, list):
        return [ipld_to_json(item, depth + 1) for item in value]
    if isinstance(value, bytes | bytearray):
        link = _cid_string(bytes(value))
        if link is not None:
            return {"$link": link}
        return {"$bytes": base64.b64encode(value).decode("ascii").rstrip("=")}
    return value
