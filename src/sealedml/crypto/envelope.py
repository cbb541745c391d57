"""The versioned, self-describing binary envelope every SealedML ciphertext travels in.

Layout (all integers big-endian)::

    magic   3 bytes  b"SML"
    version 1 byte   1
    kind    1 byte   1 = stream, 2 = request, 3 = response, 4 = sealed
    hlen    4 bytes  length of the header, at most MAX_HEADER
    header  hlen     canonical JSON object (sorted keys, no spaces, UTF-8)
    body    rest     kind-specific ciphertext

The *prefix* (magic through header) is authenticated by every kind: it is the AEAD associated data
of streams, responses and sealed blobs, and the HPKE ``info`` of requests. Changing any header
field therefore makes decryption fail. See ``docs/protocol.md``.
"""

from __future__ import annotations

import enum
import json
import struct
from dataclasses import dataclass
from typing import Any

from sealedml import safejson
from sealedml.errors import CryptoError

MAGIC = b"SML"
VERSION = 1
MAX_HEADER = 16 * 1024
_FIXED = struct.Struct(">3sBBI")


class Kind(enum.IntEnum):
    """What an envelope holds; fixes which header fields exist and how the body is read."""

    STREAM = 1
    REQUEST = 2
    RESPONSE = 3
    SEALED = 4


def canonical_json(obj: Any) -> bytes:
    """Encode ``obj`` as canonical JSON: the same object always gives the same bytes."""
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode()


@dataclass(frozen=True)
class Envelope:
    """A parsed envelope: its kind, its header fields, the authenticated prefix and the body."""

    kind: Kind
    header: dict[str, Any]
    prefix: bytes
    body: bytes


def encode_prefix(kind: Kind, header: dict[str, Any]) -> bytes:
    """Return the authenticated prefix for ``kind`` and ``header``."""
    raw = canonical_json(header)
    if len(raw) > MAX_HEADER:
        raise ValueError("envelope header too large")
    return _FIXED.pack(MAGIC, VERSION, int(kind), len(raw)) + raw


def parse_prefix(data: bytes, expected: Kind) -> tuple[dict[str, Any], int]:
    """Parse and check the prefix at the start of ``data``; return the header and prefix length.

    Raises ``crypto.malformed`` for anything that is not a well-formed envelope of kind
    ``expected`` and ``crypto.unsupported_version`` for a version this code does not speak.
    """
    if len(data) < _FIXED.size:
        raise CryptoError("crypto.malformed", "envelope is shorter than its fixed header")
    magic, version, kind, hlen = _FIXED.unpack_from(data)
    if magic != MAGIC:
        raise CryptoError("crypto.malformed", "not a SealedML envelope (bad magic)")
    if version != VERSION:
        raise CryptoError("crypto.unsupported_version", f"envelope version {version} is not supported")
    if kind != expected:
        raise CryptoError("crypto.malformed", f"expected a {expected.name.lower()} envelope, got kind {kind}")
    if hlen > MAX_HEADER or len(data) < _FIXED.size + hlen:
        raise CryptoError("crypto.malformed", "envelope header length is out of bounds")
    raw = data[_FIXED.size : _FIXED.size + hlen]
    try:
        header = safejson.loads(raw)
        canonical = isinstance(header, dict) and canonical_json(header) == bytes(raw)
    except (UnicodeError, ValueError, RecursionError) as exc:
        raise CryptoError("crypto.malformed", "envelope header is not JSON") from exc
    if not canonical:
        raise CryptoError("crypto.malformed", "envelope header is not a canonical JSON object")
    return header, _FIXED.size + hlen


def parse(data: bytes, expected: Kind) -> Envelope:
    """Parse a whole envelope of kind ``expected``; the body is returned unauthenticated."""
    header, end = parse_prefix(data, expected)
    return Envelope(Kind(expected), header, bytes(data[:end]), bytes(data[end:]))


def field(header: dict[str, Any], name: str, kind: type) -> Any:
    """Return ``header[name]`` if present with type ``kind``; otherwise raise ``crypto.malformed``."""
    value = header.get(name)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise CryptoError("crypto.malformed", f"envelope header field {name!r} is missing or bad")
    return value


def hex_field(header: dict[str, Any], name: str, size: int) -> bytes:
    """Return the ``size``-byte value hex-encoded in ``header[name]``, or raise ``crypto.malformed``."""
    text = field(header, name, str)
    try:
        value = bytes.fromhex(text)
    except ValueError as exc:
        raise CryptoError("crypto.malformed", f"envelope header field {name!r} is not hex") from exc
    if len(value) != size:
        raise CryptoError("crypto.malformed", f"envelope header field {name!r} has a bad length")
    return value
