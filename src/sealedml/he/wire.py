"""Framing of every HE message: a canonical JSON header and a list of serialized CKKS vectors.

Layout (integers big-endian)::

    magic    5 bytes  b"SMLHE"
    version  1 byte   1
    hlen     4 bytes  header length, at most MAX_HEADER (64 KiB)
    header   hlen     canonical JSON object (sorted keys, no spaces, UTF-8)
    then ``header["count"]`` times:
    clen     4 bytes  ciphertext length (1..MAX_CIPHERTEXT)
    ct       clen     a serialized TenSEAL CKKSVector

The header names the kind, the context fingerprint the ciphertexts were made under, the number of
rows, the layout and the SHA-256 of every ciphertext. Nothing here is authenticated against a
malicious peer (CKKS is malleable); the digests catch transport corruption and truncation.
"""

from __future__ import annotations

import hashlib
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sealedml import safejson
from sealedml.crypto.envelope import canonical_json
from sealedml.errors import HEError, InputError

__all__ = [
    "KINDS",
    "LAYOUTS",
    "MAGIC",
    "MAX_CIPHERTEXT",
    "MAX_HEADER",
    "VERSION",
    "HEMessage",
    "decode_message",
    "encode_message",
]

MAGIC = b"SMLHE"
VERSION = 1
MAX_HEADER = 64 * 1024
MAX_CIPHERTEXT = 256 * 2**20
KINDS = ("he-batch", "he-scores", "he-train-data", "he-train-weights", "he-train-gradient")
_FIXED = struct.Struct(">5sBI")
_LEN = struct.Struct(">I")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_MAX_ROWS = 2**31
#: Slot layouts a message may declare (see :mod:`sealedml.he.packing`).
LAYOUTS = ("columns", "rows")
#: Kinds that may use the "rows" layout (inference); training messages are always column-packed.
ROWS_KINDS = ("he-batch", "he-scores")


@dataclass(frozen=True)
class HEMessage:
    """A decoded HE message whose framing, header fields and ciphertext digests have been checked."""

    kind: str
    header: dict[str, Any]
    ciphertexts: tuple[bytes, ...]

    @property
    def context(self) -> str:
        """Fingerprint (sha256 hex) of the public context the ciphertexts claim to be under."""
        return str(self.header["context"])

    @property
    def layout(self) -> str:
        """Slot layout of the ciphertexts: "columns" or "rows"."""
        return str(self.header["layout"])

    @property
    def rows(self) -> int:
        """Number of data rows the message declares."""
        return int(self.header["rows"])

    def int_field(self, name: str, *, minimum: int = 0, maximum: int = _MAX_ROWS) -> int:
        """Return integer header field ``name`` within bounds, or raise ``he.wire_malformed``."""
        value = self.header.get(name)
        if not isinstance(value, int) or isinstance(value, bool) or not minimum <= value <= maximum:
            raise HEError("he.wire_malformed", f"header field {name!r} is missing or out of bounds")
        return value

    def str_list(self, name: str, *, max_items: int = 100_000, max_len: int = 256) -> tuple[str, ...]:
        """Return header field ``name`` as a tuple of short strings, or raise ``he.wire_malformed``."""
        value = self.header.get(name)
        if (
            not isinstance(value, list)
            or len(value) > max_items
            or not all(isinstance(item, str) and len(item) <= max_len for item in value)
        ):
            raise HEError("he.wire_malformed", f"header field {name!r} must be a list of short strings")
        return tuple(value)


def encode_message(kind: str, header: Mapping[str, Any], ciphertexts: Sequence[bytes]) -> bytes:
    """Frame ``ciphertexts`` with ``header``; adds ``kind``, ``count``, ``layout`` (default
    "columns") and ``sha256``.

    ``header`` must hold ``context`` (fingerprint) and ``rows``. The result decodes with
    :func:`decode_message` to the same kind, header and ciphertexts.
    """
    if kind not in KINDS:
        raise HEError("he.wire_malformed", f"unknown HE message kind {kind!r}")
    full = dict(header)
    full.update(
        kind=kind,
        count=len(ciphertexts),
        sha256=[hashlib.sha256(ct).hexdigest() for ct in ciphertexts],
    )
    full.setdefault("layout", "columns")
    raw = canonical_json(full)
    if len(raw) > MAX_HEADER:
        raise InputError("input.too_large", f"HE message header is {len(raw)} bytes (max {MAX_HEADER})")
    parts = [_FIXED.pack(MAGIC, VERSION, len(raw)), raw]
    for ct in ciphertexts:
        if not 0 < len(ct) <= MAX_CIPHERTEXT:
            raise InputError("input.too_large", "a ciphertext is empty or larger than 256 MiB")
        parts += [_LEN.pack(len(ct)), bytes(ct)]
    return b"".join(parts)


def decode_message(
    data: bytes,
    *,
    expected_kind: str | None = None,
    max_bytes: int,
    max_ciphertexts: int = 100_000,
) -> HEMessage:
    """Parse an HE message strictly.

    Guarantees on return: the framing is exact (no trailing bytes), the header is a canonical JSON
    object with a known ``kind`` (equal to ``expected_kind`` if given), a 64-hex ``context``, a
    positive ``rows``, ``layout`` "columns" or "rows", ``count`` equal to the number of ciphertexts and a
    ``sha256`` list each ciphertext matches. Raises only ``he.wire_malformed``,
    ``he.ciphertext_invalid`` (digest mismatch) or ``input.too_large`` (size or count limits).
    """
    view = memoryview(bytes(data)) if not isinstance(data, bytes) else memoryview(data)
    if len(view) > max_bytes:
        raise InputError("input.too_large", f"HE message is {len(view)} bytes (max {max_bytes})")
    if len(view) < _FIXED.size:
        raise HEError("he.wire_malformed", "HE message is shorter than its fixed header")
    magic, version, hlen = _FIXED.unpack_from(view)
    if magic != MAGIC:
        raise HEError("he.wire_malformed", "not a SealedML HE message (bad magic)")
    if version != VERSION:
        raise HEError("he.wire_malformed", f"HE message version {version} is not supported")
    if hlen > MAX_HEADER or len(view) < _FIXED.size + hlen:
        raise HEError("he.wire_malformed", "HE message header length is out of bounds")
    raw = bytes(view[_FIXED.size : _FIXED.size + hlen])
    header = _parse_header(raw)
    kind = header["kind"]
    if expected_kind is not None and kind != expected_kind:
        raise HEError("he.wire_malformed", f"expected an {expected_kind!r} message, got {kind!r}")
    count = header["count"]
    if count > max_ciphertexts:
        raise InputError("input.too_large", f"HE message holds {count} ciphertexts (max {max_ciphertexts})")
    digests = header["sha256"]
    offset = _FIXED.size + hlen
    ciphertexts: list[bytes] = []
    for index in range(count):
        if len(view) - offset < _LEN.size:
            raise HEError("he.wire_malformed", f"HE message is truncated before ciphertext {index}")
        (length,) = _LEN.unpack_from(view, offset)
        offset += _LEN.size
        if length == 0 or length > len(view) - offset:
            raise HEError("he.wire_malformed", f"ciphertext {index} length is out of bounds (truncated?)")
        ct = bytes(view[offset : offset + length])
        offset += length
        if hashlib.sha256(ct).hexdigest() != digests[index]:
            raise HEError(
                "he.ciphertext_invalid",
                f"ciphertext {index} does not match its SHA-256 in the header (altered or corrupted)",
            )
        ciphertexts.append(ct)
    if offset != len(view):
        raise HEError("he.wire_malformed", f"{len(view) - offset} unexpected bytes after the last ciphertext")
    return HEMessage(kind=kind, header=header, ciphertexts=tuple(ciphertexts))


def _parse_header(raw: bytes) -> dict[str, Any]:
    try:
        header = safejson.loads(raw)
        canonical = isinstance(header, dict) and canonical_json(header) == raw
    except (UnicodeError, ValueError, RecursionError, TypeError) as exc:
        raise HEError("he.wire_malformed", "HE message header is not JSON") from exc
    if not canonical:
        raise HEError("he.wire_malformed", "HE message header is not a canonical JSON object")
    kind = header.get("kind")
    if kind not in KINDS:
        raise HEError("he.wire_malformed", f"unknown HE message kind {kind!r}"[:200])
    context = header.get("context")
    if not isinstance(context, str) or not _HEX64.fullmatch(context):
        raise HEError("he.wire_malformed", "header field 'context' must be a sha256 hex fingerprint")
    for name, minimum in (("rows", 1), ("count", 0)):
        value = header.get(name)
        if not isinstance(value, int) or isinstance(value, bool) or not minimum <= value <= _MAX_ROWS:
            raise HEError("he.wire_malformed", f"header field {name!r} is missing or out of bounds")
    layout = header.get("layout")
    if layout not in LAYOUTS:
        raise HEError("he.wire_malformed", f"header field 'layout' must be one of {list(LAYOUTS)}")
    if layout != "columns" and kind not in ROWS_KINDS:
        raise HEError(
            "he.wire_malformed", f"an {kind!r} message is column-packed: 'layout' must be 'columns'"
        )
    digests = header.get("sha256")
    if (
        not isinstance(digests, list)
        or len(digests) != header["count"]
        or not all(isinstance(d, str) and _HEX64.fullmatch(d) for d in digests)
    ):
        raise HEError("he.wire_malformed", "header field 'sha256' must list one sha256 hex per ciphertext")
    return header
