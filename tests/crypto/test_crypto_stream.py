"""Chunked AES-256-GCM streams: round trips, and every way a host could cut, reorder or edit one."""

from __future__ import annotations

import io
import itertools
import json
import os

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given, settings
from hypothesis import strategies as st

from sealedml.crypto.envelope import Kind, encode_prefix
from sealedml.crypto.stream import (
    ALGORITHM,
    MAX_CHUNK_SIZE,
    MIN_CHUNK_SIZE,
    TAG_SIZE,
    StreamDecryptor,
    StreamEncryptor,
    decrypt_bytes,
    decrypt_file,
    encrypt_bytes,
    encrypt_file,
    iter_encrypt,
    new_data_key,
    read_stream_header,
)
from sealedml.errors import CryptoError

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
CHUNK = MIN_CHUNK_SIZE  # 256: small chunks make multi-chunk streams cheap
CT = "application/x-test"
SIZES = [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, 3 * CHUNK + 7, 9 * CHUNK + 1]
FAST = settings(max_examples=60, deadline=None)


def _data(size: int) -> bytes:
    return bytes((i * 7 + 3) % 251 for i in range(size))


def _flip(data: bytes, index: int, bit: int = 0) -> bytes:
    out = bytearray(data)
    out[index] ^= 1 << bit
    return bytes(out)


def _split(blob: bytes) -> tuple[bytes, list[bytes]]:
    """Split a stream into its prefix and its sealed chunks (each chunk + tag)."""
    header = read_stream_header(blob)
    prefix = header.prefix
    size = header.chunk_size + TAG_SIZE
    body = blob[len(prefix) :]
    return prefix, [body[i : i + size] for i in range(0, len(body), size)]


def _expected_size(blob: bytes, size: int) -> int:
    """Prefix, one tag per chunk (at least one chunk), and the plaintext length."""
    return len(read_stream_header(blob).prefix) + max(1, -(-size // CHUNK)) * TAG_SIZE + size


def _expect(code: str, fn, *args, **kwargs) -> CryptoError:
    with pytest.raises(CryptoError) as info:
        fn(*args, **kwargs)
    assert type(info.value) is CryptoError
    assert info.value.code == code, info.value
    return info.value


def _assert_rejected(blob: bytes, codes: set[str], key: bytes = KEY) -> str:
    with pytest.raises(CryptoError) as info:
        decrypt_bytes(key, blob)
    assert type(info.value) is CryptoError
    assert info.value.code in codes, info.value
    return info.value.code


# --- round trips -------------------------------------------------------------------------------


@pytest.mark.parametrize("size", SIZES)
def test_round_trip_and_layout(size: int) -> None:
    data = _data(size)
    blob = encrypt_bytes(KEY, data, content_type=CT, chunk_size=CHUNK)
    assert decrypt_bytes(KEY, blob) == data
    assert decrypt_bytes(KEY, blob, expected_content_type=CT) == data
    prefix, chunks = _split(blob)
    # exactly ceil(size / chunk) chunks, and one (empty) chunk for empty data
    assert len(chunks) == max(1, -(-size // CHUNK))
    assert len(blob) == _expected_size(blob, size) == len(prefix) + len(chunks) * TAG_SIZE + size
    assert all(len(c) == CHUNK + TAG_SIZE for c in chunks[:-1])
    header = read_stream_header(blob)
    assert (header.content_type, header.chunk_size, len(header.stream_id)) == (CT, CHUNK, 16)


def test_default_chunk_size_round_trip() -> None:
    data = os.urandom(150_000)
    assert decrypt_bytes(KEY, encrypt_bytes(KEY, data, content_type=CT)) == data


def test_same_plaintext_twice_gives_different_streams() -> None:
    first = encrypt_bytes(KEY, b"x" * 300, content_type=CT, chunk_size=CHUNK)
    second = encrypt_bytes(KEY, b"x" * 300, content_type=CT, chunk_size=CHUNK)
    assert read_stream_header(first).stream_id != read_stream_header(second).stream_id
    assert _split(first)[1] != _split(second)[1]


def test_wire_format_matches_the_documented_construction() -> None:
    """Subkey = HKDF-SHA256(key, salt=sid, info="sealedml stream v1"); nonce 0*7||i||last; AD prefix."""
    data = _data(2 * CHUNK + 5)
    blob = encrypt_bytes(KEY, data, content_type=CT, chunk_size=CHUNK)
    header = read_stream_header(blob)
    subkey = HKDF(algorithm=hashes.SHA256(), length=32, salt=header.stream_id, info=b"sealedml stream v1")
    aead = AESGCM(subkey.derive(KEY))
    _, chunks = _split(blob)
    opened = b""
    for index, chunk in enumerate(chunks):
        last = index == len(chunks) - 1
        nonce = bytes(7) + index.to_bytes(4, "big") + (b"\x01" if last else b"\x00")
        opened += aead.decrypt(nonce, chunk, header.prefix)
    assert opened == data


def test_new_data_key() -> None:
    key = new_data_key()
    assert isinstance(key, bytes) and len(key) == 32
    assert key != new_data_key()


@FAST
@given(data=st.one_of(st.sampled_from(SIZES).map(_data), st.binary(max_size=6 * CHUNK + 3)))
def test_round_trip_any_data(data: bytes) -> None:
    blob = encrypt_bytes(KEY, data, content_type=CT, chunk_size=CHUNK)
    assert decrypt_bytes(KEY, blob, expected_content_type=CT) == data


def _cuts(draw: st.DrawFn, length: int) -> list[int]:
    points = draw(st.lists(st.integers(0, length), max_size=12))
    return sorted(points)


def _pieces(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


@st.composite
def _incremental_case(draw: st.DrawFn) -> tuple[bytes, list[int], list[int]]:
    size = draw(st.one_of(st.sampled_from(SIZES), st.integers(0, 5 * CHUNK + 9)))
    data = draw(st.binary(min_size=size, max_size=size))
    enc_cuts = _cuts(draw, len(data))
    # decryption cut points, as fractions of the (not yet known) ciphertext length
    dec_fracs = draw(st.lists(st.integers(0, 1000), max_size=12))
    return data, enc_cuts, dec_fracs


@FAST
@given(case=_incremental_case())
def test_incremental_update_at_arbitrary_split_points(case: tuple[bytes, list[int], list[int]]) -> None:
    data, enc_cuts, dec_fracs = case
    enc = StreamEncryptor(KEY, content_type=CT, chunk_size=CHUNK)
    blob = b"".join(enc.update(p) for p in _pieces(data, enc_cuts)) + enc.finalize()
    assert len(blob) == _expected_size(blob, len(data))

    dec = StreamDecryptor(KEY, expected_content_type=CT)
    released = b""
    for piece in _pieces(blob, sorted(f * len(blob) // 1000 for f in dec_fracs)):
        released += dec.update(piece)
        # only whole, authenticated chunks are released, and the last one is held back
        assert data.startswith(released)
        assert len(released) % CHUNK == 0
        assert len(released) < len(data) or len(data) == 0
    assert dec.header is not None and dec.header.content_type == CT
    assert released + dec.finalize() == data


def test_decryptor_holds_back_last_chunk_until_finalize() -> None:
    data = _data(3 * CHUNK)  # exactly three full chunks, the last one final
    blob = encrypt_bytes(KEY, data, content_type=CT, chunk_size=CHUNK)
    dec = StreamDecryptor(KEY)
    assert dec.header is None
    assert dec.update(blob) == data[: 2 * CHUNK]
    assert dec.finalize() == data[2 * CHUNK :]


def test_corrupt_last_chunk_fails_only_at_finalize() -> None:
    data = _data(3 * CHUNK + 5)
    blob = encrypt_bytes(KEY, data, content_type=CT, chunk_size=CHUNK)
    dec = StreamDecryptor(KEY)
    assert dec.update(_flip(blob, len(blob) - 1)) == data[: 3 * CHUNK]
    _expect("crypto.auth_failed", dec.finalize)


@pytest.mark.parametrize("size", SIZES)
def test_iter_encrypt_matches_stream_format(size: int) -> None:
    data = _data(size)
    pieces = [data[i : i + 100] for i in range(0, len(data), 100)]
    blob = b"".join(iter_encrypt(KEY, pieces, content_type=CT, chunk_size=CHUNK))
    assert decrypt_bytes(KEY, blob, expected_content_type=CT) == data


@pytest.mark.parametrize("size", [0, 1, CHUNK, 4 * CHUNK + 17])
@pytest.mark.parametrize("read_size", [1, 37, 1024 * 1024])
def test_file_round_trip(tmp_path, size: int, read_size: int) -> None:
    data = _data(size)
    plain, sealed, opened = tmp_path / "plain", tmp_path / "sealed", tmp_path / "opened"
    plain.write_bytes(data)
    progress: list[int] = []
    with plain.open("rb") as src, sealed.open("wb") as dst:
        written = encrypt_file(KEY, src, dst, content_type=CT, chunk_size=CHUNK, progress=progress.append)
    assert written == sealed.stat().st_size == sum(progress)
    with sealed.open("rb") as src, opened.open("wb") as dst:
        assert decrypt_file(KEY, src, dst, expected_content_type=CT, read_size=read_size) == size
    assert opened.read_bytes() == data


def test_file_wrong_content_type_and_tamper() -> None:
    sealed = io.BytesIO()
    encrypt_file(KEY, io.BytesIO(_data(700)), sealed, content_type=CT, chunk_size=CHUNK)
    blob = sealed.getvalue()
    _expect(
        "crypto.malformed", decrypt_file, KEY, io.BytesIO(blob), io.BytesIO(), expected_content_type="other"
    )
    _expect("crypto.auth_failed", decrypt_file, KEY, io.BytesIO(_flip(blob, len(blob) // 2)), io.BytesIO())
    _expect("crypto.auth_failed", decrypt_file, OTHER_KEY, io.BytesIO(blob), io.BytesIO())
    _expect("crypto.auth_failed", decrypt_file, KEY, io.BytesIO(blob[:-1]), io.BytesIO())


# --- misuse is a ValueError, not a crypto failure ----------------------------------------------


@pytest.mark.parametrize("chunk", [0, MIN_CHUNK_SIZE - 1, MAX_CHUNK_SIZE + 1])
def test_encryptor_rejects_bad_chunk_size(chunk: int) -> None:
    with pytest.raises(ValueError):
        StreamEncryptor(KEY, content_type=CT, chunk_size=chunk)


@pytest.mark.parametrize("key", [b"", b"k" * 16, b"k" * 31, b"k" * 33])
def test_bad_key_length_is_misuse(key: bytes) -> None:
    with pytest.raises(ValueError):
        encrypt_bytes(key, b"data", content_type=CT)
    blob = encrypt_bytes(KEY, b"data", content_type=CT, chunk_size=CHUNK)
    with pytest.raises(ValueError):
        decrypt_bytes(key, blob)


def test_encryptor_refuses_use_after_finalize() -> None:
    enc = StreamEncryptor(KEY, content_type=CT, chunk_size=CHUNK)
    enc.finalize()
    with pytest.raises(ValueError):
        enc.update(b"more")
    with pytest.raises(ValueError):
        enc.finalize()


# --- keys and content types --------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 3 * CHUNK + 1])
def test_wrong_key(size: int) -> None:
    blob = encrypt_bytes(KEY, _data(size), content_type=CT, chunk_size=CHUNK)
    _expect("crypto.auth_failed", decrypt_bytes, OTHER_KEY, blob)


def test_wrong_expected_content_type() -> None:
    blob = encrypt_bytes(KEY, _data(10), content_type=CT, chunk_size=CHUNK)
    _expect("crypto.malformed", decrypt_bytes, KEY, blob, expected_content_type="application/onnx")
    dec = StreamDecryptor(KEY, expected_content_type="")
    _expect("crypto.malformed", dec.update, blob)


# --- tampering ---------------------------------------------------------------------------------


def _alg_value_span(prefix: bytes) -> range:
    start = prefix.index(b'"alg":"') + len(b'"alg":"')
    return range(start, start + len(ALGORITHM))


def test_every_header_bit_flip_is_rejected() -> None:
    blob = encrypt_bytes(KEY, _data(2 * CHUNK + 3), content_type=CT, chunk_size=CHUNK)
    prefix, _ = _split(blob)
    may_be_unsupported = {3, *_alg_value_span(prefix)}  # the version byte and the algorithm name
    seen = set()
    for index in range(len(prefix)):
        for bit in range(8):
            allowed = {"crypto.auth_failed", "crypto.malformed"}
            if index in may_be_unsupported:
                allowed.add("crypto.unsupported_version")
            seen.add(_assert_rejected(_flip(blob, index, bit), allowed))
    assert seen == {"crypto.auth_failed", "crypto.malformed", "crypto.unsupported_version"}


def test_every_chunk_and_tag_byte_flip_is_auth_failed() -> None:
    blob = encrypt_bytes(KEY, _data(3 * CHUNK + 9), content_type=CT, chunk_size=CHUNK)
    prefix, _ = _split(blob)
    for index in range(len(prefix), len(blob)):
        _expect("crypto.auth_failed", decrypt_bytes, KEY, _flip(blob, index, index % 8))


@FAST
@given(data=st.binary(max_size=4 * CHUNK), where=st.floats(0, 1, exclude_max=True), bit=st.integers(0, 7))
def test_random_bit_flip_never_decrypts(data: bytes, where: float, bit: int) -> None:
    blob = encrypt_bytes(KEY, data, content_type=CT, chunk_size=CHUNK)
    index = int(where * len(blob))
    codes = {"crypto.auth_failed", "crypto.malformed", "crypto.unsupported_version"}
    code = _assert_rejected(_flip(blob, index, bit), codes)
    if index >= len(read_stream_header(blob).prefix):
        assert code == "crypto.auth_failed"


def test_header_edits_re_encoded_canonically_fail_authentication() -> None:
    blob = encrypt_bytes(KEY, _data(2 * CHUNK + 1), content_type=CT, chunk_size=CHUNK)
    prefix, chunks = _split(blob)
    header = read_stream_header(blob)
    body = b"".join(chunks)
    base = {"alg": ALGORITHM, "chunk": CHUNK, "content": CT, "sid": header.stream_id.hex()}
    assert encode_prefix(Kind.STREAM, base) == prefix  # sanity: we rebuild the real prefix
    for change in ({"content": "text/plain"}, {"chunk": CHUNK + 1}, {"sid": "00" * 16}, {"extra": 1}):
        forged = encode_prefix(Kind.STREAM, {**base, **change})
        _expect("crypto.auth_failed", decrypt_bytes, KEY, forged + body)


# --- truncation --------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, CHUNK, CHUNK + 1, 3 * CHUNK, 3 * CHUNK + 5])
def test_truncation_anywhere_after_header_is_auth_failed(size: int) -> None:
    blob = encrypt_bytes(KEY, _data(size), content_type=CT, chunk_size=CHUNK)
    prefix, chunks = _split(blob)
    boundaries = {len(prefix) + i * (CHUNK + TAG_SIZE) for i in range(len(chunks))}
    for cut in range(len(prefix), len(blob)):
        _expect("crypto.auth_failed", decrypt_bytes, KEY, blob[:cut])
    assert boundaries <= set(range(len(prefix), len(blob)))  # chunk boundaries were among the cuts


def test_truncation_inside_header_is_malformed() -> None:
    blob = encrypt_bytes(KEY, b"abc", content_type=CT, chunk_size=CHUNK)
    prefix, _ = _split(blob)
    for cut in range(len(prefix)):
        _expect("crypto.malformed", decrypt_bytes, KEY, blob[:cut])


# --- reordering, dropping, duplicating, appending, splicing ------------------------------------


def _stream(chunks: int = 4, extra: int = 5) -> tuple[bytes, list[bytes]]:
    return _split(encrypt_bytes(KEY, _data(chunks * CHUNK + extra), content_type=CT, chunk_size=CHUNK))


@pytest.mark.parametrize("drop", range(5))
def test_dropping_a_chunk(drop: int) -> None:
    prefix, chunks = _stream()
    rest = chunks[:drop] + chunks[drop + 1 :]
    _expect("crypto.auth_failed", decrypt_bytes, KEY, prefix + b"".join(rest))


@pytest.mark.parametrize(("i", "j"), [(0, 1), (1, 2), (0, 3), (3, 4), (0, 4)])
def test_swapping_two_chunks(i: int, j: int) -> None:
    prefix, chunks = _stream()
    chunks[i], chunks[j] = chunks[j], chunks[i]
    _expect("crypto.auth_failed", decrypt_bytes, KEY, prefix + b"".join(chunks))


@pytest.mark.parametrize("dup", range(5))
def test_duplicating_a_chunk(dup: int) -> None:
    prefix, chunks = _stream()
    chunks.insert(dup, chunks[dup])
    _expect("crypto.auth_failed", decrypt_bytes, KEY, prefix + b"".join(chunks))


@pytest.mark.parametrize("extra", [0, 5])
def test_appending_after_the_final_chunk(extra: int) -> None:
    prefix, chunks = _stream(extra=extra)
    blob = prefix + b"".join(chunks)
    for tail in (chunks[-1], chunks[0], os.urandom(CHUNK + TAG_SIZE), b"\x00", os.urandom(TAG_SIZE)):
        _expect("crypto.auth_failed", decrypt_bytes, KEY, blob + tail)


@FAST
@given(order=st.lists(st.integers(0, 4), max_size=8))
def test_any_rearrangement_of_chunks_fails(order: list[int]) -> None:
    prefix, chunks = _stream()
    if order == list(range(5)):
        order = [*order, 4]
    _expect("crypto.auth_failed", decrypt_bytes, KEY, prefix + b"".join(chunks[i] for i in order))


@pytest.mark.parametrize("index", range(4))
def test_splicing_a_chunk_from_another_stream_with_the_same_key(index: int) -> None:
    prefix_a, chunks_a = _stream()
    prefix_b, chunks_b = _stream()
    spliced = [*chunks_a]
    spliced[index] = chunks_b[index]
    _expect("crypto.auth_failed", decrypt_bytes, KEY, prefix_a + b"".join(spliced))
    # and the other way round: B's header over A's chunks
    _expect("crypto.auth_failed", decrypt_bytes, KEY, prefix_b + b"".join(chunks_a))


# --- read_stream_header and garbage ------------------------------------------------------------


def _header(**overrides: object) -> dict[str, object]:
    return {"alg": ALGORITHM, "chunk": CHUNK, "content": CT, "sid": "ab" * 16, **overrides}


@pytest.mark.parametrize(
    ("header", "code"),
    [
        (_header(alg="A128GCM-STREAM-v0"), "crypto.unsupported_version"),
        (_header(chunk=MIN_CHUNK_SIZE - 1), "crypto.malformed"),
        (_header(chunk=MAX_CHUNK_SIZE + 1), "crypto.malformed"),
        (_header(chunk=True), "crypto.malformed"),
        (_header(chunk="256"), "crypto.malformed"),
        (_header(chunk=256.0), "crypto.malformed"),
        (_header(content=5), "crypto.malformed"),
        (_header(sid="ab" * 15), "crypto.malformed"),
        (_header(sid="zz" * 16), "crypto.malformed"),
        ({k: v for k, v in _header().items() if k != "sid"}, "crypto.malformed"),
        ({k: v for k, v in _header().items() if k != "alg"}, "crypto.malformed"),
    ],
)
def test_read_stream_header_rejects_bad_headers(header: dict[str, object], code: str) -> None:
    blob = encode_prefix(Kind.STREAM, header) + b"\x00" * 40
    _expect(code, read_stream_header, blob)
    _expect(code, decrypt_bytes, KEY, blob)


@pytest.mark.parametrize(
    "garbage",
    [
        b"",
        b"S",
        b"SML",
        b"SML\x01\x01",
        b"SML\x01\x01\x00\x00\x00\x10{}",
        b"\x00" * 100,
        encode_prefix(Kind.REQUEST, _header()),
        encode_prefix(Kind.STREAM, {})[:-1],
    ],
)
def test_read_stream_header_on_garbage_is_malformed(garbage: bytes) -> None:
    _expect("crypto.malformed", read_stream_header, garbage)
    _expect("crypto.malformed", decrypt_bytes, KEY, garbage)


def test_read_stream_header_accepts_a_partial_stream() -> None:
    blob = encrypt_bytes(KEY, _data(600), content_type=CT, chunk_size=CHUNK)
    header = read_stream_header(blob)
    assert read_stream_header(header.prefix) == header
    assert read_stream_header(header.prefix + b"\x01") == header
    assert json.loads(header.prefix[9:])["content"] == CT


@FAST
@given(st.binary(max_size=600))
def test_read_stream_header_on_random_bytes_raises_only_crypto_error(garbage: bytes) -> None:
    try:
        read_stream_header(garbage)
    except CryptoError as exc:
        assert exc.code in {"crypto.malformed", "crypto.unsupported_version"}


@FAST
@given(st.one_of(st.binary(max_size=2000), st.binary(max_size=40).map(lambda b: b"SML\x01\x01" + b)))
def test_decrypt_random_bytes_raises_only_crypto_error(garbage: bytes) -> None:
    with pytest.raises(CryptoError):
        decrypt_bytes(KEY, garbage)


@FAST
@given(body=st.binary(max_size=3 * (CHUNK + TAG_SIZE)))
def test_valid_header_with_random_body_is_auth_failed(body: bytes) -> None:
    prefix = encode_prefix(Kind.STREAM, _header())
    _expect("crypto.auth_failed", decrypt_bytes, KEY, prefix + body)
