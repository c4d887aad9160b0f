"""The AT Protocol data model for the Bluesky sandbox: JSON <-> IPLD, DAG-CBOR, CIDs and TIDs.

A record's CID is the sha-256 of its DAG-CBOR encoding, so the sandbox must encode exactly as the
reference PDS does for the same record to get the same CID there and here. The encoder is written
out here rather than taken from `libipld`, whose encoder guesses that any byte string shaped like a
CID is a link; the JSON form (`{"$link": ...}`, `{"$bytes": ...}`) says which is which, and that is
the distinction kept here.
"""

from __future__ import annotations

import base64
import hashlib
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import libipld

CODEC_DAG_CBOR = 0x71
CODEC_RAW = 0x55
_SHA2_256 = 0x12
_CID_TAG = 42
# Numbers the JavaScript PDS can hold exactly; it answers 500 beyond them.
MAX_SAFE_INTEGER = 2**53 - 1
_TID_ALPHABET = "234567abcdefghijklmnopqrstuvwxyz"


@dataclass(frozen=True)
class Link:
    """An IPLD link: a CID in a record, written `{"$link": cid}` in JSON."""

    cid: str


class NotIpldError(ValueError):
    """A JSON value the data model cannot hold (a fraction); the PDS answers 400."""

    def __init__(self, path: str, value: Any) -> None:
        super().__init__(
            "Expected one of null, boolean, integer, string, cid, bytes, array or object "
            f"value type (got {value}) at {path}"
        )


class UnsafeIntegerError(ValueError):
    """An integer beyond what the JavaScript PDS represents; it fails with a 500."""


def json_to_ipld(value: Any, path: str = "$") -> Any:
    """Read the JSON form of a record into the data model (links, bytes, integers)."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        if abs(value) > MAX_SAFE_INTEGER:
            raise UnsafeIntegerError(path)
        return value
    if isinstance(value, float):
        # JSON has one number type: 1.0 and 1 are the same integer to the PDS.
        if value.is_integer():
            return json_to_ipld(int(value), path)
        raise NotIpldError(path, _js_number(value))
    if isinstance(value, list):
        return [json_to_ipld(item, f"{path}[{index}]") for index, item in enumerate(value)]
    if isinstance(value, dict):
        special = _special_object(value)
        if special is not None:
            return special
        return {key: json_to_ipld(item, f"{path}.{key}") for key, item in value.items()}
    raise NotIpldError(path, repr(value))


def _js_number(value: float) -> str:
    return repr(value).removesuffix(".0")


def _special_object(value: dict[str, Any]) -> Link | bytes | None:
    """`{"$link": cid}` and `{"$bytes": base64}` are the JSON spellings of links and bytes."""
    if len(value) != 1:
        return None
    if isinstance(value.get("$link"), str) and is_valid_cid(value["$link"]):
        return Link(value["$link"])
    if isinstance(value.get("$bytes"), str):
        encoded = value["$bytes"]
        try:
            return base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
        except ValueError:
            return None
    return None


def ipld_to_json(value: Any) -> Any:
    """Write the data model back as JSON, keys in DAG-CBOR order as the PDS returns them."""
    if isinstance(value, Link):
        return {"$link": value.cid}
    if isinstance(value, bytes):
        return {"$bytes": base64.b64encode(value).decode("ascii").rstrip("=")}
    if isinstance(value, list):
        return [ipld_to_json(item) for item in value]
    if isinstance(value, dict):
        return {key: ipld_to_json(value[key]) for key in sorted(value, key=_key_order)}
    return value


def _key_order(key: str) -> tuple[int, bytes]:
    encoded = key.encode("utf-8", "surrogatepass")
    return (len(encoded), encoded)


def encode_dag_cbor(value: Any) -> bytes:
    """Encode a data-model value as canonical DAG-CBOR (shortest heads, length-first key order)."""
    out = bytearray()
    _encode(value, out)
    return bytes(out)


def _head(major: int, argument: int, out: bytearray) -> None:
    if argument < 24:
        out.append(major << 5 | argument)
    elif argument < 0x100:
        out += bytes((major << 5 | 24, argument))
    elif argument < 0x10000:
        out.append(major << 5 | 25)
        out += struct.pack(">H", argument)
    elif argument < 0x100000000:
        out.append(major << 5 | 26)
        out += struct.pack(">I", argument)
    else:
        out.append(major << 5 | 27)
        out += struct.pack(">Q", argument)


def _encode(value: Any, out: bytearray) -> None:
    if value is None:
        out.append(0xF6)
    elif value is True:
        out.append(0xF5)
    elif value is False:
        out.append(0xF4)
    elif isinstance(value, int):
        if value >= 0:
            _head(0, value, out)
        else:
            _head(1, -1 - value, out)
    elif isinstance(value, str):
        encoded = value.encode("utf-8", "replace")
        _head(3, len(encoded), out)
        out += encoded
    elif isinstance(value, bytes):
        _head(2, len(value), out)
        out += value
    elif isinstance(value, Link):
        raw = b"\x00" + cid_bytes(value.cid)
        _head(6, _CID_TAG, out)
        _head(2, len(raw), out)
        out += raw
    elif isinstance(value, list):
        _head(4, len(value), out)
        for item in value:
            _encode(item, out)
    elif isinstance(value, dict):
        _head(5, len(value), out)
        for key in sorted(value, key=_key_order):
            _encode(key, out)
            _encode(value[key], out)
    else:
        raise TypeError(f"not in the IPLD data model: {type(value).__name__}")


def _varint(number: int) -> bytes:
    out = bytearray()
    while True:
        low = number & 0x7F
        number >>= 7
        if number:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def cid_bytes(cid: str) -> bytes:
    """The binary form of a CID string, as DAG-CBOR links carry it."""
    parsed = libipld.decode_cid(cid)
    digest: bytes = parsed["hash"]["digest"]
    multihash = _varint(parsed["hash"]["code"]) + _varint(parsed["hash"]["size"]) + digest
    if parsed["version"] == 0:
        return multihash
    return _varint(parsed["version"]) + _varint(parsed["codec"]) + multihash


def make_cid(codec: int, data: bytes) -> str:
    """A CIDv1 with a sha-256 multihash, in base32 (the form the PDS prints)."""
    raw = bytes((0x01, codec, _SHA2_256, 0x20)) + hashlib.sha256(data).digest()
    return "b" + base64.b32encode(raw).decode("ascii").lower().rstrip("=")


def record_cid(value: Any) -> str:
    return make_cid(CODEC_DAG_CBOR, encode_dag_cbor(value))


def blob_cid(data: bytes) -> str:
    return make_cid(CODEC_RAW, data)


def is_valid_cid(text: str) -> bool:
    """Whether `text` is a CID in its canonical spelling, as the PDS's check requires."""
    try:
        parsed = libipld.decode_cid(text)
    except ValueError:
        return False
    if parsed["version"] == 0:
        return text.startswith("Qm")
    canonical = "b" + base64.b32encode(cid_bytes(text)).decode("ascii").lower().rstrip("=")
    return canonical == text


def find_blob_refs(value: Any) -> list[dict[str, Any]]:
    """Every blob reference (`{"$type": "blob", "ref": link, ...}`) anywhere in a record."""
    found: list[dict[str, Any]] = []
    if isinstance(value, dict):
        if value.get("$type") == "blob" and isinstance(value.get("ref"), Link):
            found.append(value)
        else:
            for item in value.values():
                found.extend(find_blob_refs(item))
    elif isinstance(value, list):
        for item in value:
            found.extend(find_blob_refs(item))
    return found


def tid_from_micros(micros: int, clock_id: int = 0) -> str:
    """A TID: 53 bits of microseconds and 10 of clock id, in sortable base32 (13 characters)."""
    number = (micros << 10) | (clock_id & 0x3FF)
    chars = []
    for shift in range(60, -1, -5):
        chars.append(_TID_ALPHABET[(number >> shift) & 0x1F])
    return "".join(chars)


class TidClock:
    """Hands out strictly increasing TIDs, as a repo needs for record keys and revisions."""

    def __init__(self, clock: Callable[[], float] = time.time, clock_id: int = 0) -> None:
        self._clock = clock
        self._clock_id = clock_id
        self._last = 0

    def next(self) -> str:
        micros = max(int(self._clock() * 1_000_000), self._last + 1)
        self._last = micros
        return tid_from_micros(micros, self._clock_id)
