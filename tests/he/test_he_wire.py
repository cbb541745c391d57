"""The HE wire decoder is strict and raises only typed errors on arbitrary bytes."""

from __future__ import annotations

import hashlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sealedml.errors import HEError, InputError
from sealedml.he.wire import MAGIC, decode_message, encode_message

FP = hashlib.sha256(b"context").hexdigest()
GOOD = encode_message("he-batch", {"context": FP, "rows": 2, "columns": ["a"]}, [b"abc", b"defg"])


def test_roundtrip():
    message = decode_message(GOOD, expected_kind="he-batch", max_bytes=10_000)
    assert message.kind == "he-batch" and message.context == FP and message.rows == 2
    assert message.ciphertexts == (b"abc", b"defg")
    assert message.header["columns"] == ["a"] and message.header["layout"] == "columns"


def _code(data: bytes, **kwargs) -> str:
    with pytest.raises((HEError, InputError)) as err:
        decode_message(data, max_bytes=kwargs.pop("max_bytes", 10_000), **kwargs)
    return err.value.code


def _frame(header: bytes, body: bytes = b"") -> bytes:
    return MAGIC + bytes([1]) + struct.pack(">I", len(header)) + header + body


def test_rejections():
    assert _code(GOOD, expected_kind="he-scores") == "he.wire_malformed"
    assert _code(GOOD[:-1]) == "he.wire_malformed"
    assert _code(GOOD + b"x") == "he.wire_malformed"
    assert _code(b"XMLHE" + GOOD[5:]) == "he.wire_malformed"
    assert _code(GOOD[:5] + b"\x02" + GOOD[6:]) == "he.wire_malformed"
    assert _code(GOOD, max_bytes=10) == "input.too_large"
    assert _code(GOOD, max_ciphertexts=1) == "input.too_large"
    assert _code(GOOD[:-1] + b"X") == "he.ciphertext_invalid"
    assert _code(_frame(b'{"kind": "he-batch"}')) == "he.wire_malformed"  # not canonical
    assert _code(_frame(b"[" * 5000)) == "he.wire_malformed"
    assert _code(_frame(b"\xff\xfe")) == "he.wire_malformed"
    bad_rows = encode_message("he-batch", {"context": FP, "rows": 1}, [b"a"]).replace(
        b'"rows":1', b'"rows":0'
    )
    assert _code(bad_rows) == "he.wire_malformed"
    bad_ctx = encode_message("he-batch", {"context": "x" * 64, "rows": 1}, [b"a"])
    assert _code(bad_ctx) == "he.wire_malformed"
    with pytest.raises(HEError):
        encode_message("nope", {"context": FP, "rows": 1}, [])


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_fuzz_arbitrary_bytes(data):
    try:
        decode_message(data, max_bytes=10_000)
    except (HEError, InputError):
        pass


@settings(max_examples=300, deadline=None)
@given(
    st.integers(min_value=0, max_value=len(GOOD) - 1), st.integers(min_value=1, max_value=255), st.booleans()
)
def test_fuzz_mutations(position, flip, truncate):
    data = bytearray(GOOD)
    data[position] ^= flip
    if truncate:
        data = data[:position]
    try:
        decode_message(bytes(data), max_bytes=10_000)
    except (HEError, InputError):
        pass
