"""Plaintext payloads inside sealed requests and responses: named numeric arrays plus metadata.

Layout: ``u32 meta_len || meta (JSON) || array bytes...`` where ``meta["arrays"]`` lists each
array's name, dtype (little-endian numpy code) and shape in order. Only numeric dtypes are
accepted, and sizes are checked against the bytes present, so a malformed payload is rejected
before anything is allocated from it.
"""

from __future__ import annotations

import json
import math
import struct
from typing import Any

import numpy as np

from sealedml import safejson
from sealedml.errors import InputError

ALLOWED_DTYPES = frozenset({"<f4", "<f8", "<i8", "<i4", "|b1"})
_LEN = struct.Struct(">I")
MAX_META = 4 * 1024 * 1024
MAX_DIMS = 4
MAX_DIM_SIZE = 2**40


def pack(meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> bytes:
    """Encode ``meta`` and ``arrays`` (order preserved); the inverse of :func:`unpack`."""
    listing = []
    blobs = []
    for name, array in arrays.items():
        arr = np.asarray(array, order="C")
        if arr.ndim > MAX_DIMS:
            raise ValueError(f"array {name!r} has more than {MAX_DIMS} dimensions")
        dtype = arr.dtype.newbyteorder("<") if arr.dtype.byteorder == ">" else arr.dtype
        code = dtype.str
        if code not in ALLOWED_DTYPES:
            raise ValueError(f"array {name!r} has unsupported dtype {arr.dtype}")
        listing.append({"name": name, "dtype": code, "shape": list(arr.shape)})
        blobs.append(arr.astype(dtype, copy=False).tobytes())
    head = dict(meta)
    head["arrays"] = listing
    raw = json.dumps(head, separators=(",", ":")).encode()
    return b"".join([_LEN.pack(len(raw)), raw, *blobs])


def unpack(data: bytes) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Decode a payload; raises ``input.malformed`` on anything inconsistent."""
    if len(data) < _LEN.size:
        raise InputError("input.malformed", "payload is too short")
    (size,) = _LEN.unpack_from(data)
    if size > MAX_META or _LEN.size + size > len(data):
        raise InputError("input.malformed", "payload metadata length is out of bounds")
    try:
        meta = safejson.loads(data[_LEN.size : _LEN.size + size])
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise InputError("input.malformed", "payload metadata is not JSON") from exc
    listing = meta.get("arrays") if isinstance(meta, dict) else None
    if not isinstance(listing, list):
        raise InputError("input.malformed", "payload metadata lacks its array list")
    offset = _LEN.size + size
    arrays: dict[str, np.ndarray] = {}
    for item in listing:
        if not isinstance(item, dict):
            raise InputError("input.malformed", "payload array entry is not an object")
        name, code, shape = item.get("name"), item.get("dtype"), item.get("shape")
        if (
            not isinstance(name, str)
            or not isinstance(code, str)
            or code not in ALLOWED_DTYPES
            or not isinstance(shape, list)
            or len(shape) > MAX_DIMS
            or not all(
                isinstance(d, int) and not isinstance(d, bool) and 0 <= d < MAX_DIM_SIZE for d in shape
            )
        ):
            raise InputError("input.malformed", "payload array entry is invalid")
        dtype = np.dtype(code)
        count = math.prod(shape)  # Python integers: no wrap-around
        nbytes = count * dtype.itemsize
        if offset + nbytes > len(data):
            raise InputError("input.malformed", f"payload array {name!r} is truncated")
        arrays[name] = np.frombuffer(data, dtype=dtype, count=count, offset=offset).reshape(shape)
        offset += nbytes
    if offset != len(data):
        raise InputError("input.malformed", "payload has trailing bytes")
    return meta, arrays
