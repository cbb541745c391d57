"""The envelope prefix: magic, version, kind, bounded canonical JSON header."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sealedml.crypto.envelope import (
    MAGIC,
    MAX_HEADER,
    VERSION,
    Envelope,
    Kind,
    canonical_json,
    encode_prefix,
    field,
    hex_field,
    parse,
    parse_prefix,
)
from sealedml.errors import CryptoError

FAST = settings(max_examples=100, deadline=None)


def _raw(
    header: bytes, *, magic: bytes = MAGIC, version: int = VERSION, kind: int = 1, hlen: int | None = None
) -> bytes:
    size = len(header) if hlen is None else hlen
    return struct.pack(">3sBBI", magic, version, kind, size) + header


def _expect(code: str, fn, *args) -> None:
    with pytest.raises(CryptoError) as info:
        fn(*args)
    assert type(info.value) is CryptoError
    assert info.value.code == code, info.value


def test_round_trip_every_kind() -> None:
    header = {"b": [1, 2], "a": "é", "c": {"z": None, "y": True}}
    for kind in Kind:
        prefix = encode_prefix(kind, header)
        assert prefix[:5] == MAGIC + bytes([VERSION, int(kind)])
        assert struct.unpack(">I", prefix[5:9])[0] == len(prefix) - 9
        assert parse_prefix(prefix + b"body", kind) == (header, len(prefix))
        assert parse(prefix + b"body", kind) == Envelope(kind, header, prefix, b"body")


def test_canonical_json_is_sorted_and_compact() -> None:
    assert canonical_json({"b": 1, "a": [1, {"d": 2, "c": 3}]}) == b'{"a":[1,{"c":3,"d":2}],"b":1}'
    assert canonical_json({"k": "é"}) == '{"k":"é"}'.encode()


def test_header_size_bounds() -> None:
    at_limit = {"a": "x" * (MAX_HEADER - len(b'{"a":""}'))}
    prefix = encode_prefix(Kind.STREAM, at_limit)
    assert parse_prefix(prefix, Kind.STREAM)[0] == at_limit
    with pytest.raises(ValueError):
        encode_prefix(Kind.STREAM, {"a": "x" * (MAX_HEADER - len(b'{"a":""}') + 1)})


@pytest.mark.parametrize("magic", [b"SMM", b"sml", b"\x00\x00\x00", b"SEF"])
def test_bad_magic(magic: bytes) -> None:
    _expect("crypto.malformed", parse_prefix, _raw(b"{}", magic=magic), Kind.STREAM)


@pytest.mark.parametrize("version", [0, 2, 255])
def test_unsupported_version(version: int) -> None:
    _expect("crypto.unsupported_version", parse_prefix, _raw(b"{}", version=version), Kind.STREAM)
    _expect("crypto.unsupported_version", parse, _raw(b"{}", version=version, kind=3), Kind.RESPONSE)


@pytest.mark.parametrize("kind", [0, 2, 3, 4, 5, 255])
def test_wrong_kind(kind: int) -> None:
    _expect("crypto.malformed", parse_prefix, _raw(b"{}", kind=kind), Kind.STREAM)


def test_short_input() -> None:
    prefix = encode_prefix(Kind.SEALED, {"a": 1})
    for cut in range(len(prefix)):
        _expect("crypto.malformed", parse_prefix, prefix[:cut], Kind.SEALED)


@pytest.mark.parametrize("hlen", [MAX_HEADER + 1, 2**32 - 1, 3])
def test_header_length_out_of_bounds(hlen: int) -> None:
    _expect("crypto.malformed", parse_prefix, _raw(b"{}", hlen=hlen), Kind.STREAM)


def test_oversized_header_even_if_present() -> None:
    header = b'{"a":"' + b"x" * MAX_HEADER + b'"}'
    _expect("crypto.malformed", parse_prefix, _raw(header), Kind.STREAM)


@pytest.mark.parametrize(
    "header",
    [
        b'{"a": 1}',
        b'{ "a":1}',
        b'{"a":1} ',
        b'\n{"a":1}',
        b'{"b":1,"a":2}',
        b'{"a":1,"a":1}',
        b'{"a":"\\u00e9"}',
        b'{"a":1.50}',
        b'{"a":1e2}',
        b'\xef\xbb\xbf{"a":1}',
    ],
)
def test_non_canonical_header(header: bytes) -> None:
    _expect("crypto.malformed", parse_prefix, _raw(header), Kind.STREAM)


@pytest.mark.parametrize("header", [b"[]", b"[1]", b'"s"', b"1", b"null", b"true"])
def test_header_that_is_not_an_object(header: bytes) -> None:
    _expect("crypto.malformed", parse_prefix, _raw(header), Kind.STREAM)


@pytest.mark.parametrize("header", [b"", b"{", b"{'a':1}", b"\xff\xfe", b'{"a":"\xff"}'])
def test_header_that_is_not_json(header: bytes) -> None:
    _expect("crypto.malformed", parse_prefix, _raw(header), Kind.STREAM)


# BUG (src/sealedml/crypto/envelope.py:87): json.loads accepts the escape "\ud800" (a lone UTF-16
# surrogate), and canonical_json(header) then raises UnicodeEncodeError in .encode(), *outside* the
# try block, so parse_prefix leaks a bare UnicodeEncodeError instead of crypto.malformed. Any
# receiver (enclave, SDK) gets an unexpected exception from 20 attacker-chosen bytes.
# Fix: compute `canonical_json(header)` inside the try (or catch UnicodeEncodeError around line 87)
# and raise CryptoError("crypto.malformed", ...).
def test_lone_surrogate_in_header_is_malformed() -> None:
    _expect("crypto.malformed", parse_prefix, _raw(b'{"a":"\\ud800"}'), Kind.STREAM)


# BUG (src/sealedml/crypto/envelope.py:84-85): json.loads raises RecursionError (not a ValueError)
# on deeply nested input, which fits easily in MAX_HEADER (16 KiB), so parse_prefix leaks
# RecursionError. Fix: also catch RecursionError at line 85 and raise crypto.malformed (or reject
# headers nested deeper than a small bound before/while parsing).
def test_deeply_nested_header_is_malformed() -> None:
    _expect("crypto.malformed", parse_prefix, _raw(b"[" * 5000 + b"]" * 5000), Kind.STREAM)


@FAST
@given(st.binary(max_size=200))
def test_random_bytes_raise_only_crypto_error(data: bytes) -> None:
    for kind in Kind:
        try:
            header, end = parse_prefix(data, kind)
        except CryptoError as exc:
            assert exc.code in {"crypto.malformed", "crypto.unsupported_version"}
        else:
            assert isinstance(header, dict) and end <= len(data)


@FAST
@given(header=st.binary(max_size=120), kind=st.sampled_from(list(Kind)), extra=st.binary(max_size=8))
def test_random_header_bytes_raise_only_crypto_error(header: bytes, kind: Kind, extra: bytes) -> None:
    try:
        parsed, end = parse_prefix(_raw(header, kind=int(kind)) + extra, kind)
    except CryptoError as exc:
        assert exc.code == "crypto.malformed"
    else:
        assert canonical_json(parsed) == header and end == 9 + len(header)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=10,
)


@FAST
@given(header=st.dictionaries(st.text(max_size=8), json_values, max_size=5), kind=st.sampled_from(list(Kind)))
def test_any_header_round_trips(header: dict, kind: Kind) -> None:
    prefix = encode_prefix(kind, header)
    assert parse_prefix(prefix + b"tail", kind) == (header, len(prefix))


def test_field_helpers() -> None:
    header = {"s": "x", "i": 3, "b": True, "h": "00ff", "bad": "zz"}
    assert field(header, "s", str) == "x"
    assert field(header, "i", int) == 3
    assert field(header, "b", bool) is True
    assert hex_field(header, "h", 2) == b"\x00\xff"
    for name, kind in (("missing", str), ("s", int), ("b", int), ("i", str)):
        _expect("crypto.malformed", field, header, name, kind)
    _expect("crypto.malformed", hex_field, header, "h", 3)
    _expect("crypto.malformed", hex_field, header, "bad", 1)
    _expect("crypto.malformed", hex_field, header, "i", 1)
