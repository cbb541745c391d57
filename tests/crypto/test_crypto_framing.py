"""Host <-> enclave frames: round trips, truncation, and malformed frames as enclave.protocol only."""

from __future__ import annotations

import io
import json
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sealedml.enclave.framing import (
    MAGIC,
    MAX_FRAME,
    MAX_HEADER,
    PROTOCOL_VERSION,
    decode_frame,
    encode_frame,
    read_frame,
)
from sealedml.errors import EnclaveError

FAST = settings(max_examples=100, deadline=None)


def _payload(
    header: bytes, parts: bytes = b"", *, magic: bytes = MAGIC, version: int = PROTOCOL_VERSION
) -> bytes:
    return struct.pack(">3sBI", magic, version, len(header)) + header + parts


def _expect(fn, *args) -> None:
    with pytest.raises(EnclaveError) as info:
        fn(*args)
    assert type(info.value) is EnclaveError
    assert info.value.code == "enclave.protocol", info.value


@pytest.mark.parametrize(
    "parts", [[], [b""], [b"abc"], [b"", b"x", b""], [b"\x00" * 1000, b"y" * 3], [bytes(range(256))] * 4]
)
def test_round_trip(parts: list[bytes]) -> None:
    header = {"id": 7, "op": "infer", "nested": {"k": [1, "two"]}}
    wire = encode_frame(header, parts)
    (size,) = struct.unpack(">I", wire[:4])
    assert size == len(wire) - 4
    decoded_header, decoded_parts = decode_frame(wire[4:])
    assert decoded_parts == parts
    assert decoded_header == {**header, "parts": [len(p) for p in parts]}
    assert read_frame(io.BytesIO(wire)) == (decoded_header, decoded_parts)


def test_tuple_parts_and_caller_header_untouched() -> None:
    header = {"id": 1, "ok": True, "parts": "ignored"}
    wire = encode_frame(header, (b"a", b"bc"))
    assert header == {"id": 1, "ok": True, "parts": "ignored"}
    assert decode_frame(wire[4:]) == ({"id": 1, "ok": True, "parts": [1, 2]}, [b"a", b"bc"])


def test_several_frames_then_clean_eof() -> None:
    frames = [encode_frame({"id": i}, [bytes([i]) * i]) for i in range(5)]
    stream = io.BytesIO(b"".join(frames))
    for i in range(5):
        assert read_frame(stream) == ({"id": i, "parts": [i]}, [bytes([i]) * i])
    assert read_frame(stream) is None
    assert read_frame(stream) is None


def test_empty_stream_is_clean_eof() -> None:
    assert read_frame(io.BytesIO(b"")) is None


class _Trickle(io.RawIOBase):
    """A stream that returns at most one byte per read, like a slow pipe."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        return self._data.read(min(size, 1) if size and size > 0 else 1)


def test_short_reads_are_reassembled() -> None:
    wire = encode_frame({"id": 1}, [b"hello", b"world"])
    stream = _Trickle(wire + wire)
    assert read_frame(stream) == ({"id": 1, "parts": [5, 5]}, [b"hello", b"world"])
    assert read_frame(stream) == ({"id": 1, "parts": [5, 5]}, [b"hello", b"world"])
    assert read_frame(stream) is None


def test_truncated_inside_a_frame_is_protocol_error() -> None:
    wire = encode_frame({"id": 1, "op": "x"}, [b"abc", b"defg"])
    for cut in range(4, len(wire)):
        _expect(read_frame, io.BytesIO(wire[:cut]))
    # also after a complete first frame
    for cut in range(4, len(wire)):
        stream = io.BytesIO(wire + wire[:cut])
        assert read_frame(stream) is not None
        _expect(read_frame, stream)


# BUG (src/sealedml/enclave/framing.py:84-86 with _read_exact at 44-53): a stream that ends after
# 1-3 bytes of the 4-byte length field is reported as a *clean* end of stream (None), although it
# ended inside a frame; the docstring promises enclave.protocol for anything but a clean EOF. A peer
# that dies (or is cut) mid-write then looks like an orderly shutdown.
# Fix: in read_frame, read the first byte on its own (empty -> None), then _read_exact the other 3
# and raise EnclaveError("enclave.protocol", "stream ended inside a frame") if they are missing; or
# make _read_exact tell "nothing read" apart from "partially read".
@pytest.mark.parametrize("cut", [1, 2, 3])
def test_truncated_inside_the_length_field_is_protocol_error(cut: int) -> None:
    wire = encode_frame({"id": 1}, [b"abc"])
    _expect(read_frame, io.BytesIO(wire[:cut]))


class _Recorder(io.BytesIO):
    """Remembers how many bytes each read asked for."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.requests: list[int] = []

    def read(self, size: int | None = -1) -> bytes:
        self.requests.append(-1 if size is None else size)
        return super().read(size)


@pytest.mark.parametrize("size", [MAX_FRAME + 1, 2**32 - 1])
def test_length_above_maximum_is_rejected_before_reading(size: int) -> None:
    stream = _Recorder(struct.pack(">I", size) + encode_frame({"id": 1})[4:])
    _expect(read_frame, stream)
    assert sum(stream.requests) <= 4  # only the length field was read, never the body


def test_length_field_disagreeing_with_the_frame() -> None:
    wire = encode_frame({"id": 1}, [b"abc"])
    (size,) = struct.unpack(">I", wire[:4])
    _expect(read_frame, io.BytesIO(struct.pack(">I", size - 1) + wire[4:]))  # parts no longer add up
    _expect(read_frame, io.BytesIO(struct.pack(">I", size + 1) + wire[4:]))  # stream ends inside the frame
    _expect(read_frame, io.BytesIO(struct.pack(">I", size + 1) + wire[4:] + b"\x00"))


@pytest.mark.parametrize(
    ("magic", "version"), [(b"SEG", 1), (b"SML", 1), (b"\x00\x00\x00", 1), (MAGIC, 0), (MAGIC, 2)]
)
def test_bad_magic_or_version(magic: bytes, version: int) -> None:
    _expect(decode_frame, _payload(b'{"parts":[]}', magic=magic, version=version))


@pytest.mark.parametrize(
    ("header", "parts"),
    [
        (b'{"parts":[3]}', b"ab"),
        (b'{"parts":[3]}', b"abcd"),
        (b'{"parts":[]}', b"x"),
        (b'{"parts":[1,1]}', b"x"),
        (b'{"parts":[0]}', b"x"),
        (b'{"parts":[-1,2]}', b"x"),
        (b'{"parts":[1.0]}', b"x"),
        (b'{"parts":["1"]}', b"x"),
        (b'{"parts":[null]}', b""),
        (b'{"parts":{"0":1}}', b"x"),
        (b'{"parts":1}', b"x"),
        (b'{"id":1}', b""),
        (b"[]", b""),
        (b'"parts"', b""),
        (b"", b""),
        (b"{", b""),
        (b"\xff\xfe\xfd", b""),
    ],
)
def test_malformed_header_or_parts(header: bytes, parts: bytes) -> None:
    _expect(decode_frame, _payload(header, parts))


def test_header_length_out_of_bounds() -> None:
    body = b'{"parts":[]}'
    _expect(decode_frame, struct.pack(">3sBI", MAGIC, PROTOCOL_VERSION, len(body) + 1) + body)
    _expect(decode_frame, struct.pack(">3sBI", MAGIC, PROTOCOL_VERSION, MAX_HEADER + 1) + body)
    for cut in range(8):
        _expect(decode_frame, _payload(body)[:cut])


def test_encode_rejects_oversized_header() -> None:
    with pytest.raises(EnclaveError) as info:
        encode_frame({"blob": "x" * MAX_HEADER})
    assert info.value.code == "enclave.protocol"


# BUG (src/sealedml/enclave/framing.py:65-68): json.loads raises RecursionError on deeply nested
# JSON, which fits easily in MAX_HEADER (1 MiB); decode_frame leaks RecursionError instead of
# enclave.protocol, so a hostile host can crash the enclave's frame loop with one frame.
# Fix: catch RecursionError alongside ValueError at line 67.
def test_deeply_nested_header_is_protocol_error() -> None:
    _expect(decode_frame, _payload(b"[" * 100_000 + b"]" * 100_000))


@FAST
@given(st.binary(max_size=200))
def test_random_payload_raises_only_enclave_error(payload: bytes) -> None:
    try:
        header, parts = decode_frame(payload)
    except EnclaveError as exc:
        assert exc.code == "enclave.protocol"
    else:
        assert isinstance(header, dict) and isinstance(parts, list)


@FAST
@given(header=st.binary(max_size=60), rest=st.binary(max_size=40))
def test_random_header_after_valid_magic_raises_only_enclave_error(header: bytes, rest: bytes) -> None:
    try:
        decode_frame(_payload(header, rest))
    except EnclaveError as exc:
        assert exc.code == "enclave.protocol"


@FAST
@given(sizes=st.lists(st.integers(-3, 40), max_size=4), rest=st.binary(max_size=60))
def test_random_part_lists_raise_only_enclave_error(sizes: list[int], rest: bytes) -> None:
    try:
        _, parts = decode_frame(_payload(json.dumps({"parts": sizes}).encode(), rest))
    except EnclaveError as exc:
        assert exc.code == "enclave.protocol"
    else:
        assert [len(p) for p in parts] == sizes and b"".join(parts) == rest


@FAST
@given(st.binary(max_size=300))
def test_read_frame_on_random_stream_raises_only_enclave_error(data: bytes) -> None:
    stream = io.BytesIO(data)
    for _ in range(4):
        try:
            if read_frame(stream) is None:
                break
        except EnclaveError as exc:
            assert exc.code == "enclave.protocol"
            break


@FAST
@given(parts=st.lists(st.binary(max_size=50), max_size=5), ident=st.integers(0, 2**31))
def test_round_trip_any_parts(parts: list[bytes], ident: int) -> None:
    wire = encode_frame({"id": ident}, parts)
    assert read_frame(io.BytesIO(wire)) == ({"id": ident, "parts": [len(p) for p in parts]}, parts)
