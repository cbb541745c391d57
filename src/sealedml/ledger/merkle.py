"""RFC 9162 Merkle tree algorithms: hashing, proof generation from a node store, proof verification.

Everything here follows RFC 9162 (Certificate Transparency v2), which keeps the hashing of RFC 6962:

* ``leaf_hash(d) = SHA-256(0x00 || d)`` and ``node_hash(l, r) = SHA-256(0x01 || l || r)`` (§2.1.1);
* the Merkle Tree Hash of ``n`` leaves splits at ``k``, the largest power of two smaller than ``n``;
* an inclusion proof is the RFC's ``PATH(m, D[n])`` (§2.1.3.1) and is checked by the algorithm of
  §2.1.3.2; a consistency proof is ``PROOF(m, D[n])`` (§2.1.4.1), checked by §2.1.4.2.

Proofs are plain lists of 32-byte hashes in the RFC's order, so any RFC 9162 / RFC 6962 verifier
(transparency-dev/merkle, Trillian, sigsum, ...) can check the proofs we produce, and ours checks theirs.

Why this is written here rather than taken from a library: pymerkle 7.0 (the maintained Python Merkle
log) serialises proofs in its own format (a ``rule`` bit list and a path that starts with the proved
leaf), counts leaves from one, and its SQLite backend stores only leaves, so a cold proof over 10^6
leaves recomputes subtree roots from up to n leaves; it does not speak SQLAlchemy/PostgreSQL. No other
maintained Python package offers RFC 9162 proofs over a persistent node store. The algorithms are
short, SHA-256 comes from :mod:`hashlib`, and the module is checked against the transparency-dev/merkle
known-answer vectors and exhaustively on small trees (``tests/ledger/``).

Proof generation reads only hashes of *complete* subtrees ("nodes", addressed by ``(level, index)``:
level 0 holds the leaf hashes, node ``(l, i)`` covers leaves ``[i * 2**l, (i + 1) * 2**l)``) through a
:class:`NodeReader`, in one batched read of O(log n) nodes; a persistent store only has to keep the
nodes of complete subtrees, each written once when its last leaf arrives.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

from sealedml.errors import LedgerError

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "MAX_TREE_SIZE",
    "MemoryTree",
    "NodeId",
    "NodeReader",
    "consistency_proof",
    "consistency_proof_nodes",
    "frontier_nodes",
    "inclusion_proof",
    "inclusion_proof_nodes",
    "leaf_hash",
    "node_hash",
    "root_from_nodes",
    "root_hash",
    "root_of_leaf_hashes",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()
MAX_TREE_SIZE = 2**63 - 1  # a tree size must fit the u64 (and signed BIGINT) fields it is stored in
_MAX_PROOF_LENGTH = 2 * 64  # no valid proof over a u64-sized tree is longer; bounds work on hostile input

NodeId = tuple[int, int]
"""``(level, index)`` of a complete subtree: level 0 is a leaf, ``(l, i)`` covers ``2**l`` leaves."""


class NodeReader(Protocol):
    """Anything that returns stored hashes of complete subtrees (a database, a list in memory)."""

    def read_nodes(self, ids: Sequence[NodeId]) -> Mapping[NodeId, bytes]:
        """Return the hash of every requested node; a node that is not stored is simply absent."""
        ...


# --------------------------------------------------------------------------------------------------
# Hashing (RFC 9162 §2.1.1)


def leaf_hash(data: bytes) -> bytes:
    """Return ``SHA-256(0x00 || data)``, the RFC 9162 hash of a leaf whose input is ``data``."""
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Return ``SHA-256(0x01 || left || right)``, the RFC 9162 hash of an interior node."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """Largest power of two strictly smaller than ``n`` (``n >= 2``)."""
    return 1 << ((n - 1).bit_length() - 1)


def root_of_leaf_hashes(hashes: Iterable[bytes]) -> bytes:
    """Return the Merkle Tree Hash of the leaves whose *hashes* are given, in order.

    Guarantees: equals RFC 9162's ``MTH`` of the underlying leaves (``EMPTY_ROOT`` for none), in O(n)
    hashing and O(log n) memory, so it can stream over a log of any size.
    """
    stack: list[tuple[int, bytes]] = []  # (level, hash) of complete subtrees, strictly decreasing levels
    for value in hashes:
        level, current = 0, value
        while stack and stack[-1][0] == level:
            current = node_hash(stack.pop()[1], current)
            level += 1
        stack.append((level, current))
    if not stack:
        return EMPTY_ROOT
    result = stack[-1][1]
    for _level, left in reversed(stack[:-1]):
        result = node_hash(left, result)
    return result


def root_hash(leaves: Iterable[bytes]) -> bytes:
    """Return RFC 9162's Merkle Tree Hash ``MTH(D[n])`` of the leaf inputs ``leaves``, in order."""
    return root_of_leaf_hashes(leaf_hash(leaf) for leaf in leaves)


# --------------------------------------------------------------------------------------------------
# Which subtrees a proof is made of


def _check_size(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_TREE_SIZE:
        raise LedgerError("ledger.malformed", f"{name} must be an integer in [0, 2**63-1], got {value!r}")
    return value


def _inclusion_ranges(index: int, size: int) -> list[tuple[int, int]]:
    """Leaf ranges ``[lo, hi)`` whose Merkle Tree Hashes form ``PATH(index, D[size])``, in RFC order."""
    ranges: list[tuple[int, int]] = []
    lo, hi = 0, size
    while hi - lo > 1:
        k = _split(hi - lo)
        if index - lo < k:
            ranges.append((lo + k, hi))
            hi = lo + k
        else:
            ranges.append((lo, lo + k))
            lo += k
    ranges.reverse()  # PATH appends the sibling after the sub-path: leaf side first
    return ranges


def _consistency_ranges(first: int, second: int) -> list[tuple[int, int]]:
    """Leaf ranges whose hashes form ``PROOF(first, D[second])`` (RFC 9162 §2.1.4.1), in RFC order."""
    ranges: list[tuple[int, int]] = []
    lo, hi, m, complete = 0, second, first, True
    while m != hi - lo:
        k = _split(hi - lo)
        if m <= k:
            ranges.append((lo + k, hi))
            hi = lo + k
        else:
            ranges.append((lo, lo + k))
            lo, m, complete = lo + k, m - k, False
    if not complete:
        ranges.append((lo, hi))  # SUBPROOF(m, D[m], false) = MTH(D[m])
    ranges.reverse()
    return ranges


def _range_nodes(lo: int, hi: int, out: list[NodeId]) -> None:
    """Append the complete subtrees whose hashes make up ``MTH(D[lo:hi])``, as the MTH recursion splits."""
    n = hi - lo
    if n & (n - 1) == 0 and lo % n == 0:
        level = n.bit_length() - 1
        out.append((level, lo >> level))
        return
    k = _split(n)
    _range_nodes(lo, lo + k, out)
    _range_nodes(lo + k, hi, out)


def _range_hash(lo: int, hi: int, nodes: Mapping[NodeId, bytes]) -> bytes:
    """``MTH(D[lo:hi])`` from the node hashes :func:`_range_nodes` listed (same recursion)."""
    n = hi - lo
    if n & (n - 1) == 0 and lo % n == 0:
        level = n.bit_length() - 1
        return nodes[(level, lo >> level)]
    k = _split(n)
    return node_hash(_range_hash(lo, lo + k, nodes), _range_hash(lo + k, hi, nodes))


def frontier_nodes(size: int) -> list[NodeId]:
    """Return the complete subtrees that make up a tree of ``size`` leaves, largest (leftmost) first.

    Guarantees: at most ``log2(size) + 1`` nodes, one per set bit of ``size``; the tree's root is
    their right-to-left fold with :func:`node_hash` (see :func:`root_from_nodes`).
    """
    size = _check_size(size, "tree size")
    out: list[NodeId] = []
    if size:
        _range_nodes(0, size, out)
    return out


def inclusion_proof_nodes(index: int, size: int) -> list[NodeId]:
    """Return every node an inclusion proof of leaf ``index`` in a tree of ``size`` leaves reads.

    Raises ``ledger.index_out_of_range`` unless ``0 <= index < size``.
    """
    size = _check_size(size, "tree size")
    index = _check_size(index, "leaf index")
    if index >= size:
        raise LedgerError(
            "ledger.index_out_of_range", f"leaf index {index} is not in a tree of {size} entries", status=404
        )
    out: list[NodeId] = []
    for lo, hi in _inclusion_ranges(index, size):
        _range_nodes(lo, hi, out)
    return out


def consistency_proof_nodes(first: int, second: int) -> list[NodeId]:
    """Return every node a consistency proof between tree sizes ``first`` and ``second`` reads.

    Raises ``ledger.index_out_of_range`` unless ``0 <= first <= second``.
    """
    first = _check_size(first, "first tree size")
    second = _check_size(second, "second tree size")
    if first > second:
        raise LedgerError(
            "ledger.index_out_of_range",
            f"cannot prove that a tree of {first} entries is a prefix of a smaller tree of {second}",
            status=404,
        )
    out: list[NodeId] = []
    if 0 < first < second:
        for lo, hi in _consistency_ranges(first, second):
            _range_nodes(lo, hi, out)
    return out


def _read_all(reader: NodeReader, ids: Sequence[NodeId]) -> Mapping[NodeId, bytes]:
    nodes = reader.read_nodes(ids) if ids else {}
    missing = [node for node in ids if node not in nodes]
    if missing:
        raise LedgerError(
            "ledger.node_missing",
            f"the node store has no hash for complete subtree(s) {missing[:4]} (level, index): "
            "the log is truncated or corrupt; run verify_log()",
            status=500,
        )
    for node in ids:
        value = nodes[node]
        if not isinstance(value, bytes) or len(value) != HASH_SIZE:
            raise LedgerError(
                "ledger.node_missing", f"the node store holds a malformed hash for {node}", status=500
            )
    return nodes


def inclusion_proof(index: int, size: int, reader: NodeReader) -> list[bytes]:
    """Return RFC 9162 ``PATH(index, D[size])``: the audit path of leaf ``index``, leaf side first.

    Guarantees: reads O(log size) nodes in one :meth:`NodeReader.read_nodes` call; the result verifies
    with :func:`verify_inclusion` (and any RFC 9162 verifier) against the root of the first ``size``
    leaves. Raises ``ledger.index_out_of_range`` for a bad index and ``ledger.node_missing`` if the
    store lacks a node it must have.
    """
    needed = inclusion_proof_nodes(index, size)
    nodes = _read_all(reader, needed)
    return [_range_hash(lo, hi, nodes) for lo, hi in _inclusion_ranges(index, size)]


def consistency_proof(first: int, second: int, reader: NodeReader) -> list[bytes]:
    """Return RFC 9162 ``PROOF(first, D[second])``: the consistency proof between two tree sizes.

    Guarantees: empty when ``first`` is 0 or equal to ``second``; otherwise reads O(log second) nodes in
    one call, and verifies with :func:`verify_consistency` against the two roots. Raises
    ``ledger.index_out_of_range`` unless ``0 <= first <= second``.
    """
    needed = consistency_proof_nodes(first, second)
    if not needed:
        return []
    nodes = _read_all(reader, needed)
    return [_range_hash(lo, hi, nodes) for lo, hi in _consistency_ranges(first, second)]


def root_from_nodes(size: int, reader: NodeReader) -> bytes:
    """Return the Merkle Tree Hash of the first ``size`` leaves from O(log size) stored nodes."""
    needed = frontier_nodes(size)
    if not needed:
        return EMPTY_ROOT
    return _range_hash(0, size, _read_all(reader, needed))


# --------------------------------------------------------------------------------------------------
# Verification (RFC 9162 §2.1.3.2 and §2.1.4.2, step by step)


def _check_hash(value: object, name: str) -> bytes:
    if not isinstance(value, bytes) or len(value) != HASH_SIZE:
        shape = f"{len(value)} bytes" if isinstance(value, bytes) else type(value).__name__
        raise LedgerError("ledger.malformed", f"{name} must be a {HASH_SIZE}-byte hash, got {shape}")
    return value


def _check_path(proof: object, name: str) -> list[bytes]:
    if isinstance(proof, (bytes, str)) or not isinstance(proof, Sequence):
        raise LedgerError("ledger.malformed", f"{name} must be a list of hashes, got {type(proof).__name__}")
    if len(proof) > _MAX_PROOF_LENGTH:
        raise LedgerError(
            "ledger.malformed", f"{name} has {len(proof)} hashes; no valid proof has more than 128"
        )
    return [_check_hash(value, f"{name}[{i}]") for i, value in enumerate(proof)]


def verify_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes) -> None:
    """Return only if ``proof`` proves that ``leaf`` (a leaf *hash*) is leaf ``index`` of the tree of
    ``size`` leaves whose root is ``root`` (RFC 9162 §2.1.3.2).

    Raises ``ledger.inclusion_invalid`` when the proof does not verify (wrong hash, index, size, a
    missing, extra or reordered element) and ``ledger.malformed`` for arguments of the wrong shape.
    """
    leaf = _check_hash(leaf, "leaf hash")
    root = _check_hash(root, "root hash")
    index = _check_size(index, "leaf index")
    size = _check_size(size, "tree size")
    path = _check_path(proof, "inclusion path")
    # 1. The index must be inside the tree.
    if index >= size:
        raise LedgerError(
            "ledger.inclusion_invalid", f"leaf index {index} is not in a tree of {size} entries"
        )
    # 2.-3.
    fn, sn, r = index, size - 1, leaf
    # 4.
    for p in path:
        if sn == 0:  # a.
            raise LedgerError(
                "ledger.inclusion_invalid",
                f"inclusion path for leaf {index} of {size} has more hashes than the tree has levels",
            )
        if fn & 1 or fn == sn:  # b.
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1  # c.
        sn >>= 1
    # 5.
    if sn != 0:
        raise LedgerError(
            "ledger.inclusion_invalid",
            f"inclusion path for leaf {index} of {size} is too short ({len(path)} hashes)",
        )
    if r != root:
        raise LedgerError(
            "ledger.inclusion_invalid",
            f"leaf {index} with this path gives root {r.hex()}, but the tree head says {root.hex()}",
        )


def verify_consistency(
    first: int, second: int, first_root: bytes, second_root: bytes, proof: Sequence[bytes]
) -> None:
    """Return only if ``proof`` proves the tree of ``first`` leaves with root ``first_root`` is a prefix
    of the tree of ``second`` leaves with root ``second_root`` (RFC 9162 §2.1.4.2).

    Edge cases the RFC leaves to the caller: equal sizes need an empty proof and equal roots; a first
    size of 0 needs an empty proof and ``first_root`` equal to the empty-tree hash. Raises
    ``ledger.consistency_invalid`` otherwise, and ``ledger.malformed`` for arguments of the wrong shape.
    """
    first_root = _check_hash(first_root, "first root hash")
    second_root = _check_hash(second_root, "second root hash")
    first = _check_size(first, "first tree size")
    second = _check_size(second, "second tree size")
    path = _check_path(proof, "consistency path")
    if first > second:
        raise LedgerError(
            "ledger.consistency_invalid",
            f"the log shrank from {first} to {second} entries: an append-only log never does",
        )
    if first == second or first == 0:
        if path:
            raise LedgerError(
                "ledger.consistency_invalid",
                f"a consistency proof from {first} to {second} entries must be empty, got {len(path)} hashes",
            )
        expected = second_root if first == second else EMPTY_ROOT
        if first_root != expected:
            raise LedgerError(
                "ledger.consistency_invalid",
                f"two tree heads of {first} entries have different roots "
                f"{first_root.hex()} and {expected.hex()}: the log forked",
            )
        return
    # 1.
    if not path:
        raise LedgerError(
            "ledger.consistency_invalid", f"empty consistency proof from {first} to {second} entries"
        )
    # 2.
    if first & (first - 1) == 0:
        path = [first_root, *path]
    # 3.-4.
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    # 5.
    fr = sr = path[0]
    # 6.
    for c in path[1:]:
        if sn == 0:  # a.
            raise LedgerError(
                "ledger.consistency_invalid",
                f"consistency proof from {first} to {second} entries has too many hashes",
            )
        if fn & 1 or fn == sn:  # b.
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1  # c.
        sn >>= 1
    # 7.
    if sn != 0:
        raise LedgerError(
            "ledger.consistency_invalid",
            f"consistency proof from {first} to {second} entries is too short ({len(proof)} hashes)",
        )
    if fr != first_root:
        raise LedgerError(
            "ledger.consistency_invalid",
            f"the proof does not rebuild the old root of {first} entries (got {fr.hex()}, "
            f"tree head says {first_root.hex()}): the log rewrote its history",
        )
    if sr != second_root:
        raise LedgerError(
            "ledger.consistency_invalid",
            f"the proof does not rebuild the new root of {second} entries (got {sr.hex()}, "
            f"tree head says {second_root.hex()})",
        )


# --------------------------------------------------------------------------------------------------
# An in-memory node store


class MemoryTree:
    """An append-only Merkle tree held in memory, storing every complete subtree's hash.

    Guarantees: the same proofs and roots as a persistent store holding the same leaves; appends cost
    O(1) amortised hashing. Useful for clients that mirror a log, and for tests and benchmarks.
    """

    def __init__(self, leaves: Iterable[bytes] = ()) -> None:
        self._levels: list[list[bytes]] = [[]]
        for leaf in leaves:
            self.append(leaf)

    @property
    def size(self) -> int:
        """The number of leaves."""
        return len(self._levels[0])

    def append(self, data: bytes) -> int:
        """Append the leaf input ``data``; return its index."""
        return self.append_hash(leaf_hash(data))

    def append_hash(self, value: bytes) -> int:
        """Append a leaf by its hash; return its index."""
        index = len(self._levels[0])
        self._levels[0].append(_check_hash(value, "leaf hash"))
        level, i, current = 0, index, value
        while i & 1:
            current = node_hash(self._levels[level][i - 1], current)
            level, i = level + 1, i >> 1
            if len(self._levels) == level:
                self._levels.append([])
            self._levels[level].append(current)
        return index

    def read_nodes(self, ids: Sequence[NodeId]) -> Mapping[NodeId, bytes]:
        """Return the stored hash of each requested complete subtree (absent ones are left out)."""
        out: dict[NodeId, bytes] = {}
        for level, index in ids:
            if 0 <= level < len(self._levels) and 0 <= index < len(self._levels[level]):
                out[(level, index)] = self._levels[level][index]
        return out

    def root(self, size: int | None = None) -> bytes:
        """Return the root of the first ``size`` leaves (all of them by default)."""
        return root_from_nodes(self.size if size is None else self._bounded(size), self)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """Return the RFC 9162 inclusion proof of leaf ``index`` in the first ``size`` leaves."""
        return inclusion_proof(index, self.size if size is None else self._bounded(size), self)

    def consistency_proof(self, first: int, second: int | None = None) -> list[bytes]:
        """Return the RFC 9162 consistency proof between the first ``first`` and ``second`` leaves."""
        return consistency_proof(first, self.size if second is None else self._bounded(second), self)

    def _bounded(self, size: int) -> int:
        size = _check_size(size, "tree size")
        if size > self.size:
            raise LedgerError(
                "ledger.index_out_of_range",
                f"tree size {size} is beyond the {self.size} entries held",
                status=404,
            )
        return size
