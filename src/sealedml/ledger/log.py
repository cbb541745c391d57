"""The transparency log of signed execution receipts, and the checks a client runs against it.

The platform (an untrusted host) runs a :class:`TransparencyLog`: a :class:`~sealedml.ledger.store.
LedgerStore` plus the log's Ed25519 key. Every append returns a signed tree head (STH) that covers the
new entry; proofs come back as JSON-friendly dicts whose fields follow RFC 9162's
``InclusionProofDataV2`` (``log_id``, ``tree_size``, ``leaf_index``, ``inclusion_path``) and
``ConsistencyProofDataV2`` (``log_id``, ``tree_size_1``, ``tree_size_2``, ``consistency_path``), hashes
in hex.

Clients trust nothing the host says: :func:`check_inclusion` and :func:`check_consistency` are pure
functions of the bytes they were given and the log public key they pinned, and raise typed
``ledger.*`` errors. A host that drops, edits or reorders a logged receipt can no longer prove it is
included under a tree head it signed earlier, nor that its new tree extends the old one.
"""

from __future__ import annotations

import base64
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine

from sealedml.crypto.envelope import canonical_json
from sealedml.crypto.signing import SigningKey
from sealedml.errors import LedgerError, NotFoundError
from sealedml.ledger.merkle import HASH_SIZE, MAX_TREE_SIZE, leaf_hash, verify_consistency, verify_inclusion
from sealedml.ledger.sth import SignedTreeHead, log_id_of, sign_tree_head
from sealedml.ledger.store import LedgerStore, LogEntry

__all__ = [
    "ConsistencyProof",
    "InclusionProof",
    "TransparencyLog",
    "check_consistency",
    "check_inclusion",
    "check_sth",
    "receipt_entry",
]

_HEX_HASH = re.compile(r"[0-9a-f]{64}")
_MAX_PATH = 128
_INCLUSION_FIELDS = frozenset({"log_id", "tree_size", "leaf_index", "inclusion_path"})
_CONSISTENCY_FIELDS = frozenset({"log_id", "tree_size_1", "tree_size_2", "consistency_path"})


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def receipt_entry(receipt: Mapping[str, Any], signature: str) -> bytes:
    """Return the bytes logged for a receipt: canonical JSON of ``{"receipt": ..., "signature": ...}``.

    Guarantees: the same receipt and signature always give the same bytes, so a client holding its
    receipt can recompute the leaf without asking the host.
    """
    if not isinstance(receipt, Mapping) or not isinstance(signature, str):
        raise LedgerError(
            "ledger.malformed", "a receipt entry needs the receipt object and its hex signature"
        )
    try:
        return canonical_json({"receipt": dict(receipt), "signature": signature})
    except (TypeError, ValueError) as exc:
        raise LedgerError("ledger.malformed", f"receipt is not JSON-serialisable: {exc}") from None


# --------------------------------------------------------------------------------------------------
# Proof wire forms


def _field_int(data: Mapping[str, Any], name: str, what: str) -> int:
    value = data[name]
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_TREE_SIZE:
        raise LedgerError("ledger.malformed", f"{what}: {name} must be an integer in [0, 2**63-1]")
    return value


def _field_path(data: Mapping[str, Any], name: str, what: str) -> tuple[bytes, ...]:
    value = data[name]
    if not isinstance(value, list) or len(value) > _MAX_PATH:
        raise LedgerError("ledger.malformed", f"{what}: {name} must be a list of at most {_MAX_PATH} hashes")
    for item in value:
        if not isinstance(item, str) or not _HEX_HASH.fullmatch(item):
            raise LedgerError(
                "ledger.malformed", f"{what}: every {name} element must be {2 * HASH_SIZE} lowercase hex"
            )
    return tuple(bytes.fromhex(item) for item in value)


def _fields(data: object, expected: frozenset[str], what: str) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise LedgerError("ledger.malformed", f"{what} must be a JSON object, got {type(data).__name__}")
    keys = set(data)
    if keys != expected:
        missing, extra = sorted(expected - keys), sorted(map(str, keys - expected))
        raise LedgerError("ledger.malformed", f"{what} fields: missing {missing}, unknown {extra}")
    log_id = data["log_id"]
    if not isinstance(log_id, str) or not _HEX_HASH.fullmatch(log_id):
        raise LedgerError("ledger.malformed", f"{what}: log_id must be 64 lowercase hex characters")
    return data


@dataclass(frozen=True)
class InclusionProof:
    """RFC 9162 ``InclusionProofDataV2``: entry ``leaf_index`` is in the tree of ``tree_size`` entries."""

    log_id: str
    tree_size: int
    leaf_index: int
    inclusion_path: tuple[bytes, ...]

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-friendly form (hashes in hex)."""
        return {
            "log_id": self.log_id,
            "tree_size": self.tree_size,
            "leaf_index": self.leaf_index,
            "inclusion_path": [value.hex() for value in self.inclusion_path],
        }

    @classmethod
    def from_dict(cls, data: object) -> InclusionProof:
        """Parse :meth:`to_dict` output; anything else raises ``ledger.malformed`` and nothing else."""
        what = "inclusion proof"
        fields = _fields(data, _INCLUSION_FIELDS, what)
        return cls(
            fields["log_id"],
            _field_int(fields, "tree_size", what),
            _field_int(fields, "leaf_index", what),
            _field_path(fields, "inclusion_path", what),
        )


@dataclass(frozen=True)
class ConsistencyProof:
    """RFC 9162 ``ConsistencyProofDataV2``: the first ``tree_size_1`` entries prefix ``tree_size_2``."""

    log_id: str
    tree_size_1: int
    tree_size_2: int
    consistency_path: tuple[bytes, ...]

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-friendly form (hashes in hex)."""
        return {
            "log_id": self.log_id,
            "tree_size_1": self.tree_size_1,
            "tree_size_2": self.tree_size_2,
            "consistency_path": [value.hex() for value in self.consistency_path],
        }

    @classmethod
    def from_dict(cls, data: object) -> ConsistencyProof:
        """Parse :meth:`to_dict` output; anything else raises ``ledger.malformed`` and nothing else."""
        what = "consistency proof"
        fields = _fields(data, _CONSISTENCY_FIELDS, what)
        return cls(
            fields["log_id"],
            _field_int(fields, "tree_size_1", what),
            _field_int(fields, "tree_size_2", what),
            _field_path(fields, "consistency_path", what),
        )


# --------------------------------------------------------------------------------------------------
# The log (host side)


class TransparencyLog:
    """An append-only log of entries (receipts) that signs a tree head after every change.

    Guarantees: every STH it returns is signed by ``key`` and covers exactly the entries appended up
    to that point; STH timestamps never decrease within this object; appends from many threads are
    serialised; a database is never reused under a different log key (``config.invalid``).
    """

    def __init__(
        self, store: LedgerStore, key: SigningKey, *, clock: Callable[[], int] | None = None
    ) -> None:
        self.store = store
        self._key = key
        self.public_key: bytes = key.public_bytes
        self.log_id: str = log_id_of(key.public_bytes)
        self._clock = clock or _now_ms
        self._last_ms = 0
        self._lock = threading.RLock()
        store.bind_log_id(self.log_id)

    @classmethod
    def open(
        cls, database: str | Engine, key: SigningKey, *, clock: Callable[[], int] | None = None
    ) -> TransparencyLog:
        """Open (creating if needed) the log stored at ``database`` (a URL or an Engine)."""
        return cls(LedgerStore(database), key, clock=clock)

    def _sign(self, tree_size: int, root_hash: bytes) -> SignedTreeHead:
        timestamp = max(self._clock(), self._last_ms)
        self._last_ms = timestamp
        return sign_tree_head(self._key, tree_size, root_hash, timestamp)

    def append(self, entry_id: str, entry: bytes) -> tuple[int, SignedTreeHead]:
        """Append one entry; return its leaf index and the STH of the tree that ends with it.

        Raises ``ledger.duplicate_entry`` (nothing changes) if ``entry_id`` was logged before.
        """
        with self._lock:
            result = self.store.append(entry_id, entry)
            return result.first_index, self._sign(result.head.tree_size, result.head.root_hash)

    def append_many(self, items: Iterable[tuple[str, bytes]]) -> tuple[range, SignedTreeHead]:
        """Append entries atomically (all or none); return their indexes and one STH covering them."""
        with self._lock:
            result = self.store.append_many(items)
            return result.indexes, self._sign(result.head.tree_size, result.head.root_hash)

    def append_receipt(self, receipt: Mapping[str, Any], signature: str) -> tuple[int, SignedTreeHead]:
        """Log a signed receipt under its job id (so one job is logged once); see :func:`receipt_entry`."""
        job = receipt.get("job") if isinstance(receipt, Mapping) else None
        if not isinstance(job, str) or not job:
            raise LedgerError("ledger.malformed", "a receipt must name its job to be logged")
        return self.append(job, receipt_entry(receipt, signature))

    def sth(self) -> SignedTreeHead:
        """Return a freshly signed tree head of the whole log."""
        with self._lock:
            head = self.store.tree_head()
            return self._sign(head.tree_size, head.root_hash)

    def inclusion(self, index: int, tree_size: int | None = None) -> dict[str, Any]:
        """Return the inclusion proof of entry ``index`` in the first ``tree_size`` entries, as a dict.

        ``tree_size`` defaults to the current size; pass a client's STH size to prove against it.
        """
        size = self.store.size() if tree_size is None else tree_size
        path = self.store.inclusion_proof(index, size)
        return InclusionProof(self.log_id, size, index, tuple(path)).to_dict()

    def inclusion_by_id(self, entry_id: str, tree_size: int | None = None) -> dict[str, Any]:
        """Return the inclusion proof of the entry logged under ``entry_id``.

        Raises ``not_found.entry`` (404) if there is none.
        """
        found = self.store.find_by_id(entry_id)
        if found is None:
            raise NotFoundError("not_found.entry", f"no entry is logged under id {entry_id!r}")
        return self.inclusion(found.index, tree_size)

    def consistency(self, first: int, second: int | None = None) -> dict[str, Any]:
        """Return the consistency proof from the first ``first`` to the first ``second`` entries."""
        size = self.store.size() if second is None else second
        path = self.store.consistency_proof(first, size)
        return ConsistencyProof(self.log_id, first, size, tuple(path)).to_dict()

    def entry(self, index: int) -> dict[str, Any]:
        """Return entry ``index`` as ``{"leaf_index", "entry_id", "entry"}`` (entry bytes in base64)."""
        found: LogEntry = self.store.get_entry(index)
        return {
            "leaf_index": found.index,
            "entry_id": found.entry_id,
            "entry": base64.b64encode(found.entry).decode(),
        }


# --------------------------------------------------------------------------------------------------
# The client's checks (pure functions of what it holds)


def _as_sth(value: object) -> SignedTreeHead:
    return value if isinstance(value, SignedTreeHead) else SignedTreeHead.from_dict(value)


def check_sth(sth: SignedTreeHead | Mapping[str, Any], log_public_key: bytes) -> SignedTreeHead:
    """Return the tree head once it is verified as signed by the pinned ``log_public_key``.

    Raises ``ledger.malformed`` for a malformed head and ``ledger.sth_signature_invalid`` otherwise.
    """
    head = _as_sth(sth)
    head.verify(log_public_key)
    return head


def check_inclusion(
    entry: bytes,
    proof: InclusionProof | Mapping[str, Any],
    sth: SignedTreeHead | Mapping[str, Any],
    log_public_key: bytes,
) -> int:
    """Return the leaf index of ``entry`` once the log has proven it holds exactly these bytes.

    Steps: (1) the STH is signed by the pinned key; (2) the proof is for that log and that tree
    size; (3) the RFC 9162 §2.1.3.2 check of ``leaf_hash(entry)`` against the STH's root.
    Raises ``ledger.sth_signature_invalid``, ``ledger.inclusion_invalid`` or ``ledger.malformed``.
    """
    if not isinstance(entry, bytes):
        raise LedgerError("ledger.malformed", "the entry to check must be bytes")
    head = check_sth(sth, log_public_key)
    parsed = proof if isinstance(proof, InclusionProof) else InclusionProof.from_dict(proof)
    if parsed.log_id != head.log_id:
        raise LedgerError(
            "ledger.inclusion_invalid",
            f"the proof is from log {parsed.log_id}, the tree head from {head.log_id}",
        )
    if parsed.tree_size != head.tree_size:
        raise LedgerError(
            "ledger.inclusion_invalid",
            f"the proof is for a tree of {parsed.tree_size} entries, the signed head has {head.tree_size}",
        )
    verify_inclusion(
        leaf_hash(entry), parsed.leaf_index, parsed.tree_size, parsed.inclusion_path, head.root_hash
    )
    return parsed.leaf_index


def check_consistency(
    old_sth: SignedTreeHead | Mapping[str, Any],
    new_sth: SignedTreeHead | Mapping[str, Any],
    proof: ConsistencyProof | Mapping[str, Any],
    log_public_key: bytes,
) -> None:
    """Return only if the log proves that ``new_sth``'s tree extends ``old_sth``'s (it only grew).

    Steps: (1) both STHs are signed by the pinned key; (2) the proof is for that log and those two
    sizes; (3) the RFC 9162 §2.1.4.2 check. A smaller new tree, or equal sizes with different roots,
    is a fork. Raises ``ledger.sth_signature_invalid``, ``ledger.consistency_invalid`` or
    ``ledger.malformed``.
    """
    old = check_sth(old_sth, log_public_key)
    new = check_sth(new_sth, log_public_key)
    parsed = proof if isinstance(proof, ConsistencyProof) else ConsistencyProof.from_dict(proof)
    if parsed.log_id != old.log_id:
        raise LedgerError(
            "ledger.consistency_invalid",
            f"the proof is from log {parsed.log_id}, the tree heads from {old.log_id}",
        )
    if (parsed.tree_size_1, parsed.tree_size_2) != (old.tree_size, new.tree_size):
        raise LedgerError(
            "ledger.consistency_invalid",
            f"the proof links sizes {parsed.tree_size_1} -> {parsed.tree_size_2}, the signed heads "
            f"{old.tree_size} -> {new.tree_size}",
        )
    verify_consistency(old.tree_size, new.tree_size, old.root_hash, new.root_hash, parsed.consistency_path)
