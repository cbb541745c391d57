"""Signed tree heads (STHs): the log's Ed25519 signature over its size, root hash and time.

The signature covers a fixed-size, domain-separated encoding (no JSON ambiguity)::

    b"SealedML-STH/1\\x00" | log_id (32) | timestamp_ms (u64 BE) | tree_size (u64 BE) | root_hash (32)

``log_id`` is the SHA-256 of the log's raw 32-byte Ed25519 public key: RFC 6962 §3.2 names a log by
the SHA-256 of its key (there of the DER SubjectPublicKeyInfo; we hash the raw key, the form the rest
of SealedML pins), where RFC 9162 §4.4 uses an OID. The fields and their order otherwise follow
RFC 9162's ``TreeHeadDataV2`` (timestamp, tree size, root hash). The domain prefix keeps a tree-head
signature from ever verifying as a receipt or any other signed message.

The JSON form (``to_dict``/``to_json``) carries every field in hex; parsing it raises only
``ledger.malformed``, never a bare ``ValueError``/``KeyError``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import struct
from dataclasses import dataclass
from typing import Any

from sealedml.crypto.envelope import canonical_json
from sealedml.crypto.signing import SigningKey, verify_signature
from sealedml.errors import CryptoError, LedgerError
from sealedml.ledger.merkle import HASH_SIZE, MAX_TREE_SIZE

__all__ = [
    "DOMAIN",
    "STH_FORMAT",
    "SignedTreeHead",
    "TreeHead",
    "log_id_of",
    "sign_tree_head",
    "tree_head_bytes",
]

DOMAIN = b"SealedML-STH/1\x00"
STH_FORMAT = "sealedml.sth/1"
_LAYOUT = struct.Struct(">32sQQ32s")
_SIGNATURE_SIZE = 64
_MAX_TIMESTAMP_MS = 2**64 - 1
_HEX = re.compile(r"[0-9a-f]*")
_FIELDS = frozenset({"format", "log_id", "tree_size", "root_hash", "timestamp_ms", "signature"})


def log_id_of(public_key: bytes) -> str:
    """Return the log id of an Ed25519 public key: the lowercase hex SHA-256 of its 32 raw bytes."""
    if not isinstance(public_key, bytes) or len(public_key) != 32:
        raise LedgerError("ledger.malformed", "a log public key is 32 raw Ed25519 bytes")
    return hashlib.sha256(public_key).hexdigest()


def _check_int(value: object, name: str, top: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= top:
        raise LedgerError(
            "ledger.malformed", f"tree head: {name} must be an integer in [0, {top}], got {value!r}"
        )
    return value


def _check_bytes(value: object, name: str, size: int) -> bytes:
    if not isinstance(value, bytes) or len(value) != size:
        got = f"{len(value)} bytes" if isinstance(value, bytes) else type(value).__name__
        raise LedgerError("ledger.malformed", f"tree head: {name} must be {size} bytes, got {got}")
    return value


def _check_log_id(value: object) -> str:
    if not isinstance(value, str) or len(value) != 64 or not _HEX.fullmatch(value):
        raise LedgerError(
            "ledger.malformed",
            "tree head: log_id must be 64 lowercase hex characters (SHA-256 of the log key)",
        )
    return value


def tree_head_bytes(log_id: str, tree_size: int, root_hash: bytes, timestamp_ms: int) -> bytes:
    """Return the exact bytes a log signs for this tree head (domain prefix included).

    Guarantees: a fixed 95-byte encoding, different for any difference in any field.
    """
    return DOMAIN + _LAYOUT.pack(
        bytes.fromhex(_check_log_id(log_id)),
        _check_int(timestamp_ms, "timestamp_ms", _MAX_TIMESTAMP_MS),
        _check_int(tree_size, "tree_size", MAX_TREE_SIZE),
        _check_bytes(root_hash, "root_hash", HASH_SIZE),
    )


@dataclass(frozen=True)
class TreeHead:
    """An unsigned tree head: the size of the log and the Merkle Tree Hash of its entries."""

    tree_size: int
    root_hash: bytes

    def __post_init__(self) -> None:
        _check_int(self.tree_size, "tree_size", MAX_TREE_SIZE)
        _check_bytes(self.root_hash, "root_hash", HASH_SIZE)


@dataclass(frozen=True)
class SignedTreeHead:
    """A tree head signed by a log's Ed25519 key.

    Guarantees: every instance is well-formed (checked on construction); it is *authentic* only after
    :meth:`verify` with the log key you pinned returns.
    """

    log_id: str
    tree_size: int
    root_hash: bytes
    timestamp_ms: int
    signature: bytes

    def __post_init__(self) -> None:
        _check_log_id(self.log_id)
        _check_int(self.tree_size, "tree_size", MAX_TREE_SIZE)
        _check_bytes(self.root_hash, "root_hash", HASH_SIZE)
        _check_int(self.timestamp_ms, "timestamp_ms", _MAX_TIMESTAMP_MS)
        _check_bytes(self.signature, "signature", _SIGNATURE_SIZE)

    @property
    def head(self) -> TreeHead:
        """The unsigned part: size and root."""
        return TreeHead(self.tree_size, self.root_hash)

    def signed_bytes(self) -> bytes:
        """Return the bytes the signature covers (see :func:`tree_head_bytes`)."""
        return tree_head_bytes(self.log_id, self.tree_size, self.root_hash, self.timestamp_ms)

    def verify(self, log_public_key: bytes) -> None:
        """Return only if this head names the log of ``log_public_key`` and that key signed it.

        Raises ``ledger.sth_signature_invalid`` otherwise (another log's head, any altered field, a
        malformed key).
        """
        try:
            expected = log_id_of(log_public_key)
        except LedgerError:
            raise LedgerError(
                "ledger.sth_signature_invalid", "the pinned log key is not a 32-byte Ed25519 public key"
            ) from None
        if not hmac.compare_digest(expected, self.log_id):
            raise LedgerError(
                "ledger.sth_signature_invalid",
                f"tree head is from log {self.log_id}, but the pinned log key is log {expected}",
            )
        try:
            verify_signature(log_public_key, self.signed_bytes(), self.signature)
        except CryptoError:
            raise LedgerError(
                "ledger.sth_signature_invalid",
                f"tree head of log {self.log_id} (size {self.tree_size}, timestamp_ms {self.timestamp_ms}) "
                "does not carry a valid signature by the pinned log key",
            ) from None

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-friendly form (hex for bytes); :meth:`from_dict` reads it back exactly."""
        return {
            "format": STH_FORMAT,
            "log_id": self.log_id,
            "tree_size": self.tree_size,
            "root_hash": self.root_hash.hex(),
            "timestamp_ms": self.timestamp_ms,
            "signature": self.signature.hex(),
        }

    def to_json(self) -> str:
        """Return the canonical JSON text of :meth:`to_dict`."""
        return canonical_json(self.to_dict()).decode()

    @classmethod
    def from_dict(cls, data: object) -> SignedTreeHead:
        """Parse :meth:`to_dict` output; anything else raises ``ledger.malformed`` (and nothing else).

        Parsing does not verify the signature: call :meth:`verify`.
        """
        if not isinstance(data, dict):
            raise LedgerError(
                "ledger.malformed", f"tree head must be a JSON object, got {type(data).__name__}"
            )
        keys = set(data)
        if keys != _FIELDS:
            missing, extra = sorted(_FIELDS - keys), sorted(map(str, keys - _FIELDS))
            raise LedgerError("ledger.malformed", f"tree head fields: missing {missing}, unknown {extra}")
        if data["format"] != STH_FORMAT:
            raise LedgerError("ledger.malformed", f"tree head format must be {STH_FORMAT!r}")
        return cls(
            log_id=_check_log_id(data["log_id"]),
            tree_size=_check_int(data["tree_size"], "tree_size", MAX_TREE_SIZE),
            root_hash=_hex_bytes(data["root_hash"], "root_hash", HASH_SIZE),
            timestamp_ms=_check_int(data["timestamp_ms"], "timestamp_ms", _MAX_TIMESTAMP_MS),
            signature=_hex_bytes(data["signature"], "signature", _SIGNATURE_SIZE),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> SignedTreeHead:
        """Parse :meth:`to_json` output; invalid JSON or fields raise ``ledger.malformed`` only."""
        try:
            data = json.loads(text)
        except (ValueError, TypeError, RecursionError) as exc:
            raise LedgerError("ledger.malformed", f"tree head is not valid JSON: {exc}") from None
        return cls.from_dict(data)


def _hex_bytes(value: object, name: str, size: int) -> bytes:
    if not isinstance(value, str) or len(value) != 2 * size or not _HEX.fullmatch(value):
        raise LedgerError(
            "ledger.malformed", f"tree head: {name} must be {2 * size} lowercase hex characters"
        )
    return bytes.fromhex(value)


def sign_tree_head(key: SigningKey, tree_size: int, root_hash: bytes, timestamp_ms: int) -> SignedTreeHead:
    """Return the tree head ``(tree_size, root_hash, timestamp_ms)`` signed by the log key ``key``."""
    log_id = log_id_of(key.public_bytes)
    signature = key.sign(tree_head_bytes(log_id, tree_size, root_hash, timestamp_ms))
    return SignedTreeHead(log_id, tree_size, root_hash, timestamp_ms, signature)
