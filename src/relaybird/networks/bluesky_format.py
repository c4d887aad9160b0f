"""Bluesky post records (`app.bsky.feed.post`) to and from the neutral model.

Bluesky links nothing by itself: a URL, tag or mention is clickable only through a facet that the
client computes, in UTF-8 byte offsets. Converting spans to facets here, and facets back to spans,
keeps byte arithmetic out of the rest of the code.
"""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import quote

import libipld

from relaybird import richtext
from relaybird.model import Author, LinkCard, Media, Post, Span, SpanKind, Visibility

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


def _facet(text: str, start: int, end: int, feature: dict[str, Any]) -> dict[str, Any]:
    return {
        "$type": FACET,
        "index": {
            "byteStart": richtext.utf8_offset(text, start),
            "byteEnd": richtext.utf8_offset(text, end),
        },
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
    text = post.text
    spans = richtext.normalize_spans(text, post.spans)
    ranges: list[tuple[int, int, dict[str, Any]]] = []
    for span in spans:
        feature = _feature(text, span) if span.kind in richtext.ATOMIC_KINDS else None
        if feature is not None and (not ranges or span.start >= ranges[-1][1]):
            ranges.append((span.start, span.end, feature))
    for start, end in richtext.find_urls(text):
        if not any(s < end and start < e for s, e, _ in ranges):
            ranges.append((start, end, {"$type": LINK, "uri": text[start:end]}))
    ranges.sort(key=lambda item: item[0])
    return text, [_facet(text, start, end, feature) for start, end, feature in ranges]


# --------------------------------------------------------------------------------------------------
# inbound


def _did_of(at_uri: str) -> str:
    """The repository DID of an `at://did/collection/rkey` URI."""
    return at_uri.removeprefix("at://").split("/", 1)[0]


def _facet_spans(text: str, facets: list[dict[str, Any]]) -> list[Span]:
    """Facets back to spans; a facet whose bytes fall inside a character of the text is ignored."""
    spans: list[Span] = []
    for facet in facets:
        index = facet.get("index") or {}
        try:
            start = richtext.utf8_index(text, int(index["byteStart"]))
            end = richtext.utf8_index(text, int(index["byteEnd"]))
        except (KeyError, TypeError, ValueError):
            continue
        if start >= end:
            continue
        for feature in facet.get("features") or []:
            span = _feature_span(text[start:end], start, end, feature)
            if span is not None:
                spans.append(span)
    return sorted(spans, key=lambda s: (s.start, -s.end))


def _feature_span(shown: str, start: int, end: int, feature: dict[str, Any]) -> Span | None:
    kind = feature.get("$type")
    if kind == LINK and feature.get("uri"):
        return Span(start, end, SpanKind.LINK, url=str(feature["uri"]))
    if kind == MENTION and feature.get("did"):
        did = str(feature["did"])
        handle = shown.lstrip("@") if shown.startswith("@") else ""
        return Span(
            start, end, SpanKind.MENTION, url=profile_url(handle or did), handle=handle, did=did
        )
    if kind == TAG and feature.get("tag"):
        return Span(start, end, SpanKind.HASHTAG, tag=str(feature["tag"]))
    return None


def _blob_url(pds_url: str, did: str, blob: dict[str, Any]) -> str:
    ref = blob.get("ref")
    cid = ref.get("$link") if isinstance(ref, dict) else blob.get("cid")
    return f"{pds_url.rstrip('/')}/xrpc/com.atproto.sync.getBlob?did={did}&cid={cid}"


def _embedded_media(embed: dict[str, Any] | None) -> list[tuple[dict[str, Any], str]]:
    """Every (blob, alt) of an embed, looking inside a quote-with-media."""
    if not embed:
        return []
    kind = embed.get("$type")
    if kind == "app.bsky.embed.images":
        return [(item["image"], str(item.get("alt") or "")) for item in embed.get("images") or []]
    if kind == "app.bsky.embed.gallery":
        return [(item["image"], str(item.get("alt") or "")) for item in embed.get("items") or []]
    if kind == "app.bsky.embed.video" and embed.get("video"):
        return [(embed["video"], str(embed.get("alt") or ""))]
    if kind == "app.bsky.embed.recordWithMedia":
        return _embedded_media(embed.get("media"))
    return []


def _external_card(
    embed: dict[str, Any] | None, pds_url: str, did: str, sensitive: bool
) -> LinkCard | None:
    """The link preview of an external embed (also inside a quote-with-media), if there is one."""
    if not embed:
        return None
    if embed.get("$type") == "app.bsky.embed.recordWithMedia":
        return _external_card(embed.get("media"), pds_url, did, sensitive)
    if embed.get("$type") != "app.bsky.embed.external":
        return None
    external = embed.get("external") or {}
    if not external.get("uri"):
        return None
    thumb = external.get("thumb")
    return LinkCard(
        url=str(external["uri"]),
        title=str(external.get("title") or ""),
        description=str(external.get("description") or ""),
        thumb=Media(
            mime=str(thumb.get("mimeType") or "application/octet-stream"),
            url=_blob_url(pds_url, did, thumb),
            sensitive=sensitive,
        )
        if isinstance(thumb, dict)
        else None,
    )


def _labels(record: dict[str, Any]) -> set[str]:
    labels = record.get("labels") or {}
    return {str(item.get("val")) for item in labels.get("values") or [] if isinstance(item, dict)}


def record_to_post(
    uri: str, cid: str, record: dict[str, Any], author_handle: str, *, pds_url: str = ""
) -> Post:
    """A post record as a neutral Post; `uri` is its at-uri and becomes the Post's id.

    `cid` is taken to match the strong ref callers hold, but the neutral Post has no field for it.
    Media URLs (and a link card's thumbnail) point at `com.atproto.sync.getBlob` on `pds_url`, the
    author's PDS, which the caller knows from the session or the DID document; fetching the bytes
    is the caller's job. Bluesky's self-labels mark the post sensitive; Bluesky has no
    content-warning text.
    """
    del cid
    did = _did_of(uri)
    text = str(record.get("text") or "")
    sensitive = bool(_labels(record) & SENSITIVE_LABELS)
    reply = record.get("reply") or {}
    parent = str((reply.get("parent") or {}).get("uri") or "") or None
    root = str((reply.get("root") or {}).get("uri") or "") or None
    langs = record.get("langs") or []
    rkey = uri.rstrip("/").rsplit("/", 1)[-1]
    return Post(
        id=uri,
        text=text,
        spans=_facet_spans(text, list(record.get("facets") or [])),
        media=[
            Media(
                mime=str(blob.get("mimeType") or "application/octet-stream"),
                alt=alt,
                url=_blob_url(pds_url, did, blob),
                sensitive=sensitive,
            )
            for blob, alt in _embedded_media(record.get("embed"))
        ],
        reply_to=parent,
        reply_to_author_id=_did_of(parent) if parent else None,
        thread_root=root,
        sensitive=sensitive,
        language=str(langs[0]) if langs else None,
        visibility=Visibility.PUBLIC,
        permalink=f"{profile_url(author_handle or did)}/post/{rkey}",
        author=Author(
            network=NETWORK,
            handle=author_handle,
            url=profile_url(author_handle or did),
            id=did,
        ),
        created_at=str(record.get("createdAt") or ""),
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


def ipld_to_json(value: Any) -> Any:
    """A record decoded from a repo's DAG-CBOR block, in the JSON form the XRPC API answers with.

    Links become `{"$link": cid}` and byte strings `{"$bytes": base64}` (no padding), so a record
    taken off the firehose looks exactly like the one `getRecord` or Jetstream gives, blobs included.
    """
    if isinstance(value, dict):
        return {str(key): ipld_to_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [ipld_to_json(item) for item in value]
    if isinstance(value, bytes | bytearray):
        link = _cid_string(bytes(value))
        if link is not None:
            return {"$link": link}
        return {"$bytes": base64.b64encode(value).decode("ascii").rstrip("=")}
    return value
