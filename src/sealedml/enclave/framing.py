"""The one narrow, versioned message protocol between the host and the enclave.

Each message is a *frame*::

    length  4 bytes  big-endian length of everything after this field (<= MAX_FRAME)
    magic   3 bytes  b"SEF"
    version 1 byte   PROTOCOL_VERSION
    hlen    4 bytes  length of the JSON header
    header  hlen     JSON object: "id" (correlation), "op" (requests) or "ok" (replies), fields
    parts   rest     binary parts, their lengths listed in header["parts"]

Requests and replies are matched by ``id`` so several requests can be in flight at once. The same
frames run over a pipe to a simulated enclave process, a socket into a confidential VM, or
Gramine's standard streams: the host cannot tell which, and neither can this code.
"""

from __future__ import annotations

import json
import struct
from typing import Any, BinaryIO

from sealedml import safejson
from sealedml.errors import EnclaveError

PROTOCOL_VERSION = 1
MAGIC = b"SEF"
MAX_FRAME = 1024 * 1024 * 1024
MAX_HEADER = 1024 * 1024
_LEN = struct.Struct(">I")
_HEAD = struct.Struct(">3sBI")


def encode_frame(header: dict[str, Any], parts: list[bytes] | tuple[bytes, ...] = ()) -> bytes:
    """Return the wire bytes of one frame."""
    head = dict(header)
    head["parts"] = [len(p) for p in parts]
    raw = json.dumps(head, separators=(",", ":")).encode()
    size = _HEAD.size + len(raw) + sum(len(p) for p in parts)
    if size > MAX_FRAME or len(raw) > MAX_HEADER:
        raise EnclaveError("enclave.protocol", "frame too large")
    return b"".join([_LEN.pack(size), _HEAD.pack(MAGIC, PROTOCOL_VERSION, len(raw)), raw, *parts])


def _read_exact(stream: BinaryIO, size: int) -> bytes | None:
    chunks = []
    remaining = size
    while remaining:
        chunk = stream.read(remaining)
        if not chunk:
            return None
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def decode_frame(payload: bytes) -> tuple[dict[str, Any], list[bytes]]:
    """Parse a frame's payload (without its length field); raises ``enclave.protocol``."""
    if len(payload) < _HEAD.size:
        raise EnclaveError("enclave.protocol", "frame shorter than its header")
    magic, version, hlen = _HEAD.unpack_from(payload)
    if magic != MAGIC or version != PROTOCOL_VERSION:
        raise EnclaveError("enclave.protocol", f"unsupported frame (magic {magic!r}, v{version})")
    if hlen > MAX_HEADER or _HEAD.size + hlen > len(payload):
        raise EnclaveError("enclave.protocol", "frame header length out of bounds")
    try:
        header = safejson.loads(payload[_HEAD.size : _HEAD.size + hlen])
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise EnclaveError("enclave.protocol", "frame header is not JSON") from exc
    sizes = header.get("parts") if isinstance(header, dict) else None
    if not isinstance(sizes, list) or not all(
        isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in sizes
    ):
        raise EnclaveError("enclave.protocol", "frame header lacks a valid parts list")
    offset = _HEAD.size + hlen
    if offset + sum(sizes) != len(payload):
        raise EnclaveError("enclave.protocol", "frame parts do not add up to its length")
    parts = []
    for size in sizes:
        parts.append(payload[offset : offset + size])
        offset += size
    return header, parts


def read_frame(stream: BinaryIO) -> tuple[dict[str, Any], list[bytes]] | None:
    """Read one frame; return None on a clean end of stream, raise ``enclave.protocol`` otherwise."""
    first = stream.read(1)
    if not first:
        return None
    rest = _read_exact(stream, _LEN.size - 1)
    if rest is None:
        raise EnclaveError("enclave.protocol", "stream ended inside a frame length")
    raw_len = first + rest
    (size,) = _LEN.unpack(raw_len)
    if size > MAX_FRAME:
        raise EnclaveError("enclave.protocol", "frame exceeds the maximum size")
    payload = _read_exact(stream, size)
    if payload is None:
        raise EnclaveError("enclave.protocol", "stream ended inside a frame")
    return decode_frame(payload)
