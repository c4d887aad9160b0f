"""Each sandbox account's repository: its Merkle Search Tree, signed commits and CAR files.

A firehose consumer reads a record out of the CAR file of the commit that wrote it, and a careful one
checks that the commit is signed and that the tree links up. The tree here is built as the reference
PDS builds it (`@atproto/repo`): the same record keys and record CIDs give the same root CID there and
here, and a commit carries the same tree blocks (the new nodes and the proofs around each changed key),
so the contract test can compare them. Only the signature differs: each account has its own key,
derived from its DID, whose public half its DID document names.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from relaybird.sandbox.bluesky_ipld import (
    CODEC_DAG_CBOR,
    Link,
    cid_bytes,
    encode_dag_cbor,
    make_cid,
    record_cid,
)

REPO_VERSION = 3
# The order of secp256k1's group: signatures use the lower of s and n - s, as atproto requires.
_SECP256K1_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
_SECP256K1_MULTICODEC = b"\xe7\x01"
_BASE58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"

Action = Literal["create", "update", "delete"]


# --- the Merkle Search Tree -------------------------------------------------------------------


@functools.lru_cache(maxsize=65536)
def key_layer(key: str) -> int:
    """The tree layer of a key: leading zero bits of its SHA-256, counted two at a time."""
    zeros = 0
    for byte in hashlib.sha256(key.encode("ascii")).digest():
        zeros += (byte < 64) + (byte < 16) + (byte < 4)
        if byte != 0:
            return zeros
        zeros += 1
    return zeros


@dataclass(frozen=True)
class MstLeaf:
    key: str
    value: str


@dataclass(frozen=True)
class MstNode:
    """One tree node: subtrees and leaves in key order, and its encoded block."""

    entries: tuple[MstNode | MstLeaf, ...]
    cid: str
    data: bytes

    def at(self, index: int) -> MstNode | MstLeaf | None:
        """The entry at `index`, or None outside the node (a negative index is outside too)."""
        return self.entries[index] if 0 <= index < len(self.entries) else None

    def first_at_or_after(self, key: str) -> int:
        """Where a leaf for `key` is or would go: the first leaf whose key is not below it."""
        for index, entry in enumerate(self.entries):
            if isinstance(entry, MstLeaf) and entry.key >= key:
                return index
        return len(self.entries)


def _node(entries: list[MstNode | MstLeaf]) -> MstNode:
    """Encode a node as `{l, e: [{p, k, v, t}]}`, each key written as the suffix after its prefix."""
    left: Link | None = None
    index = 0
    if entries and isinstance(entries[0], MstNode):
        left = Link(entries[0].cid)
        index = 1
    encoded: list[dict[str, Any]] = []
    last_key = ""
    while index < len(entries):
        leaf = entries[index]
        if not isinstance(leaf, MstLeaf):
            raise ValueError("two subtrees side by side in an MST node")
        following = entries[index + 1] if index + 1 < len(entries) else None
        subtree = Link(following.cid) if isinstance(following, MstNode) else None
        index += 2 if subtree is not None else 1
        prefix = _common_prefix(last_key, leaf.key)
        encoded.append(
            {
                "p": prefix,
                "k": leaf.key[prefix:].encode("ascii"),
                "v": Link(leaf.value),
                "t": subtree,
            }
        )
        last_key = leaf.key
    data = encode_dag_cbor({"l": left, "e": encoded})
    return MstNode(tuple(entries), make_cid(CODEC_DAG_CBOR, data), data)


def _common_prefix(a: str, b: str) -> int:
    length = 0
    for left, right in zip(a, b, strict=False):
        if left != right:
            break
        length += 1
    return length


_Segment = tuple[int, tuple[tuple[str, str], ...]]


def build_tree(items: Mapping[str, str], reuse: dict[_Segment, MstNode] | None = None) -> MstNode:
    """The canonical tree of `path -> record CID`: its shape depends on the keys alone.

    `reuse` holds the nodes of an earlier build by the keys and values under them; the subtrees a
    change did not touch come from there instead of being encoded again, and afterwards it holds
    this tree's nodes only.
    """
    ordered = tuple(sorted(items.items()))
    if not ordered:
        return _node([])
    seen = dict(reuse or {})
    used: dict[_Segment, MstNode] = {}
    root = _build(ordered, max(key_layer(key) for key, _ in ordered), seen, used)
    if reuse is not None:
        reuse.clear()
        reuse.update(used)
    return root


def _build(
    items: tuple[tuple[str, str], ...],
    layer: int,
    seen: dict[_Segment, MstNode],
    used: dict[_Segment, MstNode],
) -> MstNode:
    segment = (layer, items)
    node = seen.get(segment)
    if node is None:
        entries: list[MstNode | MstLeaf] = []
        start = 0
        for index, (key, value) in enumerate(items):
            if key_layer(key) < layer:
                continue
            if index > start:
                entries.append(_build(items[start:index], layer - 1, seen, used))
            entries.append(MstLeaf(key, value))
            start = index + 1
        if start < len(items):
            entries.append(_build(items[start:], layer - 1, seen, used))
        node = _node(entries)
    used[segment] = node
    return node


def tree_blocks(root: MstNode) -> dict[str, bytes]:
    """Every node block of a tree, root first, then each subtree left to right."""
    blocks = {root.cid: root.data}
    for entry in root.entries:
        if isinstance(entry, MstNode):
            blocks.update(tree_blocks(entry))
    return blocks


def covering_proof(root: MstNode, key: str) -> dict[str, bytes]:
    """The nodes that prove a key's value (or absence) and its neighbours', as the PDS sends them."""
    blocks = _proof_for_key(root, key)
    blocks.update(_proof_for_left_sibling(root, key))
    blocks.update(_proof_for_right_sibling(root, key))
    return blocks


def _proof_for_key(node: MstNode, key: str) -> dict[str, bytes]:
    index = node.first_at_or_after(key)
    found = node.at(index)
    if isinstance(found, MstLeaf) and found.key == key:
        blocks: dict[str, bytes] = {}
    else:
        previous = node.at(index - 1)
        if not isinstance(previous, MstNode):
            return {}
        blocks = _proof_for_key(previous, key)
    blocks[node.cid] = node.data
    return blocks


def _proof_for_left_sibling(node: MstNode, key: str) -> dict[str, bytes]:
    previous = node.at(node.first_at_or_after(key) - 1)
    blocks = _proof_for_left_sibling(previous, key) if isinstance(previous, MstNode) else {}
    blocks[node.cid] = node.data
    return blocks


def _proof_for_right_sibling(node: MstNode, key: str) -> dict[str, bytes]:
    index = node.first_at_or_after(key)
    found = node.at(index)
    if found is None:
        found = node.at(index - 1)
    blocks: dict[str, bytes] = {}
    if isinstance(found, MstNode):
        blocks = _proof_for_right_sibling(found, key)
    elif isinstance(found, MstLeaf):
        neighbour = node.at(index + 1) if found.key == key else node.at(index - 1)
        if isinstance(neighbour, MstNode):
            blocks = _proof_for_right_sibling(neighbour, key)
    blocks[node.cid] = node.data
    return blocks


# --- CAR files ----------------------------------------------------------------------------------


def _varint(number: int) -> bytes:
    out = bytearray()
    while True:
        low = number & 0x7F
        number >>= 7
        if not number:
            out.append(low)
            return bytes(out)
        out.append(low | 0x80)


def car_file(root: str, blocks: Iterable[tuple[str, bytes]]) -> bytes:
    """A CAR v1 file: a header naming `root`, then each block as its CID and bytes."""
    header = encode_dag_cbor({"version": 1, "roots": [Link(root)]})
    out = bytearray(_varint(len(header)) + header)
    for cid, data in blocks:
        raw = cid_bytes(cid)
        out += _varint(len(raw) + len(data)) + raw + data
    return bytes(out)


# --- signing ------------------------------------------------------------------------------------


class SigningKey:
    """An account's secp256k1 repo key, the same on every run because it is derived from the DID."""

    def __init__(self, did: str) -> None:
        seed = hashlib.sha256(b"relaybird sandbox repo key\x00" + did.encode()).digest()
        secret = int.from_bytes(seed, "big") % (_SECP256K1_ORDER - 1) + 1
        self._key = ec.derive_private_key(secret, ec.SECP256K1())

    @property
    def multibase(self) -> str:
        """The public key as the PDS's DID documents write it for `EcdsaSecp256k1VerificationKey2019`:
        the uncompressed point in base58btc, without a multicodec prefix."""
        point = self._key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        return "z" + _base58(point)

    @property
    def did_key(self) -> str:
        """The same key as a `did:key` (compressed, multicodec-prefixed), as verifiers take it."""
        point = self._key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint
        )
        return "did:key:z" + _base58(_SECP256K1_MULTICODEC + point)

    def sign(self, data: bytes) -> bytes:
        """A compact 64-byte signature (r, then low s) over the SHA-256 of `data`."""
        r, s = decode_dss_signature(self._key.sign(data, ec.ECDSA(hashes.SHA256())))
        s = min(s, _SECP256K1_ORDER - s)
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def _base58(data: bytes) -> str:
    number = int.from_bytes(data, "big")
    digits = ""
    while number:
        number, remainder = divmod(number, 58)
        digits = _BASE58[remainder] + digits
    leading = len(data) - len(data.lstrip(b"\x00"))
    return "1" * leading + digits


# --- commits ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RepoOp:
    """One change in a commit: the record's path, its new CID and block (none for a delete)."""

    action: Action
    path: str
    cid: str | None
    prev: str | None
    block: bytes | None = None


@dataclass(frozen=True)
class Commit:
    """A signed commit and what the firehose sends with it."""

    cid: str
    rev: str
    since: str | None
    data: str
    prev_data: str | None
    ops: tuple[RepoOp, ...]
    blocks: dict[str, bytes] = field(repr=False)
    commit_block: bytes = field(repr=False)


@dataclass
class Repo:
    """The tree and head of one account's repository; `apply` moves both forward."""

    did: str
    key: SigningKey
    tree: MstNode = field(default_factory=lambda: build_tree({}))
    head: Commit | None = None
    _nodes: dict[_Segment, MstNode] = field(default_factory=dict, init=False, repr=False)

    def apply(self, items: Mapping[str, str], ops: Iterable[RepoOp], rev: str) -> Commit:
        """Commit the repo's new contents `items` (path -> CID), reached from the last by `ops`."""
        ops = tuple(ops)
        new_tree = build_tree(items, self._nodes)
        unsigned: dict[str, Any] = {
            "did": self.did,
            "version": REPO_VERSION,
            "data": Link(new_tree.cid),
            "rev": rev,
            "prev": None,
        }
        signed = {**unsigned, "sig": self.key.sign(encode_dag_cbor(unsigned))}
        commit_block = encode_dag_cbor(signed)
        commit_cid = record_cid(signed)
        commit = Commit(
            cid=commit_cid,
            rev=rev,
            since=self.head.rev if self.head else None,
            data=new_tree.cid,
            prev_data=self.head.data if self.head else None,
            ops=ops,
            blocks=self._blocks(new_tree, ops, commit_cid, commit_block),
            commit_block=commit_block,
        )
        self.tree, self.head = new_tree, commit
        return commit

    def _blocks(
        self, new_tree: MstNode, ops: tuple[RepoOp, ...], commit_cid: str, commit_block: bytes
    ) -> dict[str, bytes]:
        """New tree nodes, new record blocks and the commit, then the proofs around each change."""
        old_nodes = set(tree_blocks(self.tree)) if self.head else set()
        blocks = {cid: data for cid, data in tree_blocks(new_tree).items() if cid not in old_nodes}
        removed = {op.prev for op in ops if op.prev is not None}
        for op in ops:
            if op.cid is not None and op.block is not None and op.cid not in removed:
                blocks.setdefault(op.cid, op.block)
        blocks[commit_cid] = commit_block
        for op in ops:
            for cid, data in covering_proof(new_tree, op.path).items():
                blocks.setdefault(cid, data)
        return blocks
