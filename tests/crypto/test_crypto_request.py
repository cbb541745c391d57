"""HPKE-sealed requests and AES-GCM responses: round trips, tampering, wrong keys, forged headers."""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from sealedml.crypto.envelope import Kind, encode_prefix, parse
from sealedml.crypto.request import (
    _SUITE,
    RESPONSE_ALG,
    RESPONSE_KEY_SIZE,
    SUITE_NAME,
    OpenedRequest,
    RecipientKey,
    key_id,
    open_response,
    peek_request,
    seal_request,
    seal_response,
)
from sealedml.errors import CryptoError, RequestError

FAST = settings(max_examples=60, deadline=None)
NOW = 1_767_225_600
ANY_CRYPTO = {"crypto.auth_failed", "crypto.malformed", "crypto.unsupported_version"}


@pytest.fixture(scope="module")
def enclave() -> RecipientKey:
    return RecipientKey.generate()


@pytest.fixture(scope="module")
def other() -> RecipientKey:
    return RecipientKey.generate()


def _flip(data: bytes, index: int, bit: int = 0) -> bytes:
    out = bytearray(data)
    out[index] ^= 1 << bit
    return bytes(out)


def _expect(cls: type, code: str, fn, *args, **kwargs) -> None:
    with pytest.raises(cls) as info:
        fn(*args, **kwargs)
    assert type(info.value) is cls
    assert info.value.code == code, info.value


def _seal(enclave: RecipientKey, payload: bytes = b"features", **kw: object):
    args = {"op": "predict", "model": "model-1", "request_id": "req-1", "now": NOW, **kw}
    return seal_request(enclave_public_key=enclave.public_bytes, payload=payload, **args)


def _reencode(envelope: bytes, **changes: object) -> bytes:
    """Rebuild the request with header fields changed, canonically, keeping the original body."""
    env = parse(envelope, Kind.REQUEST)
    return encode_prefix(Kind.REQUEST, {**env.header, **changes}) + env.body


# --- requests: round trip ----------------------------------------------------------------------


@pytest.mark.parametrize("payload", [b"", b"\x00", b"x" * 10_000])
def test_request_round_trip(enclave: RecipientKey, payload: bytes) -> None:
    sealed = _seal(enclave, payload)
    opened = enclave.open_request(sealed.envelope)
    assert isinstance(opened, OpenedRequest)
    assert opened.payload == payload
    assert opened.response_key == sealed.response_key
    assert len(sealed.response_key) == RESPONSE_KEY_SIZE
    assert opened.header == sealed.header == peek_request(sealed.envelope)
    assert (opened.header.op, opened.header.model, opened.header.request_id) == (
        "predict",
        "model-1",
        "req-1",
    )
    assert opened.header.issued_at == NOW
    assert opened.header.recipient == enclave.key_id == key_id(enclave.public_bytes)
    assert parse(sealed.envelope, Kind.REQUEST).header["suite"] == SUITE_NAME


def test_wire_format_matches_the_documented_construction() -> None:
    """Body = HPKE.Seal(pk, info=prefix, response_key || payload); response = AES-256-GCM, AD = prefix."""
    private = x25519.X25519PrivateKey.generate()
    sealed = _seal(RecipientKey(private), b"payload")
    env = parse(sealed.envelope, Kind.REQUEST)
    assert _SUITE.decrypt(env.body, private, info=env.prefix) == sealed.response_key + b"payload"

    answer = parse(
        seal_response(response_key=sealed.response_key, request_id="req-1", payload=b"ok"), Kind.RESPONSE
    )
    nonce = bytes.fromhex(answer.header["nonce"])
    assert AESGCM(sealed.response_key).decrypt(nonce, answer.body, answer.prefix) == b"ok"


def test_each_request_gets_a_fresh_id_and_response_key(enclave: RecipientKey) -> None:
    first = seal_request(enclave_public_key=enclave.public_bytes, op="predict", model="m", payload=b"p")
    second = seal_request(enclave_public_key=enclave.public_bytes, op="predict", model="m", payload=b"p")
    assert first.header.request_id != second.header.request_id
    assert first.response_key != second.response_key
    assert first.envelope != second.envelope


@pytest.mark.parametrize(
    "kwargs",
    [{"op": ""}, {"op": "x" * 129}, {"model": "a\nb"}, {"model": ""}, {"request_id": "id\x00"}],
)
def test_seal_request_rejects_bad_ids(enclave: RecipientKey, kwargs: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        _seal(enclave, **kwargs)


def test_seal_request_rejects_a_malformed_public_key() -> None:
    with pytest.raises(ValueError):
        seal_request(enclave_public_key=b"\x01" * 31, op="predict", model="m", payload=b"")


# --- requests: tampering -----------------------------------------------------------------------


def _to_value_span(envelope: bytes) -> range:
    start = envelope.index(b'"to":"') + len(b'"to":"')
    return range(start, start + 32)


def test_every_bit_flip_in_a_request_is_rejected(enclave: RecipientKey) -> None:
    envelope = _seal(enclave, b"0123456789abcdef").envelope
    prefix_len = len(parse(envelope, Kind.REQUEST).prefix)
    to_span = _to_value_span(envelope)
    seen = set()
    for index in range(len(envelope)):
        for bit in range(8):
            tampered = _flip(envelope, index, bit)
            try:
                enclave.open_request(tampered)
            except RequestError as exc:
                # only a change of the recipient id can make the request look addressed elsewhere
                assert index in to_span and exc.code == "request.wrong_recipient", (index, bit, exc)
                seen.add(exc.code)
            except CryptoError as exc:
                assert exc.code in ANY_CRYPTO, (index, bit, exc)
                if index >= prefix_len:
                    assert exc.code == "crypto.auth_failed", (index, bit, exc)
                seen.add(exc.code)
            else:
                pytest.fail(f"request with bit {bit} of byte {index} flipped was opened")
    assert {"crypto.auth_failed", "crypto.malformed", "request.wrong_recipient"} <= seen


@pytest.mark.parametrize("cut", [0, 4, 9, -49, -48, -17, -16, -1])
def test_truncated_request_is_rejected(enclave: RecipientKey, cut: int) -> None:
    envelope = _seal(enclave).envelope
    prefix_len = len(parse(envelope, Kind.REQUEST).prefix)
    truncated = envelope[:cut]
    code = "crypto.auth_failed" if len(truncated) >= prefix_len else "crypto.malformed"
    _expect(CryptoError, code, enclave.open_request, truncated)


def test_every_truncation_of_the_body_is_auth_failed(enclave: RecipientKey) -> None:
    envelope = _seal(enclave, b"abc").envelope
    prefix_len = len(parse(envelope, Kind.REQUEST).prefix)
    for cut in range(prefix_len, len(envelope)):
        _expect(CryptoError, "crypto.auth_failed", enclave.open_request, envelope[:cut])


def test_appended_bytes_are_auth_failed(enclave: RecipientKey) -> None:
    envelope = _seal(enclave).envelope
    for tail in (b"\x00", os.urandom(16), envelope[-16:]):
        _expect(CryptoError, "crypto.auth_failed", enclave.open_request, envelope + tail)


def test_another_recipient_key_is_wrong_recipient(enclave: RecipientKey, other: RecipientKey) -> None:
    envelope = _seal(enclave).envelope
    _expect(RequestError, "request.wrong_recipient", other.open_request, envelope)


def test_forged_recipient_to_match_another_key_is_auth_failed(
    enclave: RecipientKey, other: RecipientKey
) -> None:
    envelope = _seal(enclave).envelope
    forged = _reencode(envelope, to=other.key_id)
    assert peek_request(forged).recipient == other.key_id
    _expect(CryptoError, "crypto.auth_failed", other.open_request, forged)
    _expect(RequestError, "request.wrong_recipient", enclave.open_request, forged)


@pytest.mark.parametrize(
    "change",
    [{"op": "train"}, {"model": "model-2"}, {"rid": "req-2"}, {"iat": NOW + 1}, {"iat": NOW - 3600}],
)
def test_changed_header_fields_are_auth_failed(enclave: RecipientKey, change: dict[str, object]) -> None:
    envelope = _seal(enclave).envelope
    assert _reencode(envelope) == envelope  # sanity: re-encoding without change is the identity
    _expect(CryptoError, "crypto.auth_failed", enclave.open_request, _reencode(envelope, **change))


def test_uppercase_recipient_hex_still_fails_authentication(enclave: RecipientKey) -> None:
    envelope = _seal(enclave).envelope
    forged = _reencode(envelope, to=enclave.key_id.upper())
    assert peek_request(forged).recipient == enclave.key_id  # routing accepts it ...
    _expect(CryptoError, "crypto.auth_failed", enclave.open_request, forged)  # ... opening does not


def test_body_of_one_request_under_header_of_another_is_auth_failed(enclave: RecipientKey) -> None:
    first = _seal(enclave, b"one", request_id="a")
    second = _seal(enclave, b"two", request_id="b")
    prefix = parse(second.envelope, Kind.REQUEST).prefix
    _expect(
        CryptoError,
        "crypto.auth_failed",
        enclave.open_request,
        prefix + parse(first.envelope, Kind.REQUEST).body,
    )


def test_plaintext_shorter_than_a_response_key_is_malformed(enclave: RecipientKey) -> None:
    prefix = encode_prefix(
        Kind.REQUEST,
        {"iat": NOW, "model": "m", "op": "predict", "rid": "r", "suite": SUITE_NAME, "to": enclave.key_id},
    )
    public = x25519.X25519PublicKey.from_public_bytes(enclave.public_bytes)
    body = _SUITE.encrypt(b"k" * (RESPONSE_KEY_SIZE - 1), public, info=prefix)
    _expect(CryptoError, "crypto.malformed", enclave.open_request, prefix + body)
    # exactly a response key and no payload is fine
    body = _SUITE.encrypt(b"k" * RESPONSE_KEY_SIZE, public, info=prefix)
    assert enclave.open_request(prefix + body).payload == b""


def test_declared_rows_are_public_and_authenticated(enclave: RecipientKey) -> None:
    key = enclave.public_bytes
    sealed = seal_request(enclave_public_key=key, op="predict", model="m", payload=b"p", rows=7)
    assert sealed.header.rows == 7
    assert peek_request(sealed.envelope).rows == 7
    assert enclave.open_request(sealed.envelope).header.rows == 7
    _expect(CryptoError, "crypto.auth_failed", enclave.open_request, _reencode(sealed.envelope, rows=70))
    without = seal_request(enclave_public_key=enclave.public_bytes, op="predict", model="m", payload=b"p")
    assert peek_request(without.envelope).rows is None
    with pytest.raises(ValueError):
        seal_request(enclave_public_key=enclave.public_bytes, op="predict", model="m", payload=b"p", rows=-1)


# --- peek_request --------------------------------------------------------------------------------


def _header(enclave: RecipientKey, **overrides: object) -> dict[str, object]:
    base = {"iat": NOW, "model": "m", "op": "predict", "rid": "r", "suite": SUITE_NAME, "to": enclave.key_id}
    return {**base, **overrides}


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        ({"suite": "DHKEM(X25519,HKDF-SHA256)/HKDF-SHA256/AES-256-GCM"}, "crypto.unsupported_version"),
        ({"op": ""}, "crypto.malformed"),
        ({"op": "a\nb"}, "crypto.malformed"),
        ({"model": "m" * 129}, "crypto.malformed"),
        ({"rid": 5}, "crypto.malformed"),
        ({"iat": True}, "crypto.malformed"),
        ({"iat": "0"}, "crypto.malformed"),
        ({"to": "zz" * 16}, "crypto.malformed"),
        ({"to": "ab" * 15}, "crypto.malformed"),
        ({"suite": None}, "crypto.malformed"),
        ({"rows": -1}, "crypto.malformed"),
        ({"rows": True}, "crypto.malformed"),
        ({"rows": "3"}, "crypto.malformed"),
        ({"rows": 2**40 + 1}, "crypto.malformed"),
    ],
)
def test_peek_request_rejects_bad_headers(
    enclave: RecipientKey, overrides: dict[str, object], code: str
) -> None:
    envelope = encode_prefix(Kind.REQUEST, _header(enclave, **overrides)) + b"\x00" * 64
    _expect(CryptoError, code, peek_request, envelope)
    _expect(CryptoError, code, enclave.open_request, envelope)


@pytest.mark.parametrize(
    "garbage",
    [b"", b"SML", b"SML\x01\x02\x00\x00\x00\x02{}", encode_prefix(Kind.RESPONSE, {"rid": "r"}), b"\xff" * 64],
)
def test_peek_request_on_garbage_is_malformed(garbage: bytes) -> None:
    _expect(CryptoError, "crypto.malformed", peek_request, garbage)


@FAST
@given(st.one_of(st.binary(max_size=400), st.binary(max_size=200).map(lambda b: b"SML\x01\x02" + b)))
def test_open_request_on_random_bytes_raises_only_crypto_error(enclave: RecipientKey, garbage: bytes) -> None:
    with pytest.raises(CryptoError):
        enclave.open_request(garbage)


@FAST
@given(body=st.binary(max_size=200))
def test_valid_header_with_random_body_is_auth_failed(enclave: RecipientKey, body: bytes) -> None:
    envelope = encode_prefix(Kind.REQUEST, _header(enclave)) + body
    _expect(CryptoError, "crypto.auth_failed", enclave.open_request, envelope)


# --- responses ---------------------------------------------------------------------------------


@pytest.mark.parametrize("payload", [b"", b"y", b"z" * 5000])
def test_response_round_trip(payload: bytes) -> None:
    key = os.urandom(32)
    envelope = seal_response(response_key=key, request_id="req-1", payload=payload)
    assert open_response(envelope, response_key=key, request_id="req-1") == payload
    assert parse(envelope, Kind.RESPONSE).header["alg"] == RESPONSE_ALG


def test_full_exchange(enclave: RecipientKey) -> None:
    sealed = _seal(enclave, b"question")
    opened = enclave.open_request(sealed.envelope)
    answer = seal_response(
        response_key=opened.response_key, request_id=opened.header.request_id, payload=b"42"
    )
    assert (
        open_response(answer, response_key=sealed.response_key, request_id=sealed.header.request_id) == b"42"
    )


def test_response_wrong_key() -> None:
    envelope = seal_response(response_key=b"k" * 32, request_id="r", payload=b"secret")
    _expect(
        CryptoError, "crypto.auth_failed", open_response, envelope, response_key=b"K" * 32, request_id="r"
    )
    # a 16-byte key is a valid AES key too: still only an authentication failure
    _expect(
        CryptoError, "crypto.auth_failed", open_response, envelope, response_key=b"k" * 16, request_id="r"
    )


def test_response_wrong_request_id() -> None:
    envelope = seal_response(response_key=b"k" * 32, request_id="r1", payload=b"secret")
    _expect(
        CryptoError, "crypto.auth_failed", open_response, envelope, response_key=b"k" * 32, request_id="r2"
    )


def test_response_with_forged_request_id_is_auth_failed() -> None:
    envelope = seal_response(response_key=b"k" * 32, request_id="r1", payload=b"secret")
    env = parse(envelope, Kind.RESPONSE)
    forged = encode_prefix(Kind.RESPONSE, {**env.header, "rid": "r2"}) + env.body
    _expect(CryptoError, "crypto.auth_failed", open_response, forged, response_key=b"k" * 32, request_id="r2")


def test_every_bit_flip_in_a_response_is_rejected() -> None:
    key = b"k" * 32
    envelope = seal_response(response_key=key, request_id="req-1", payload=b"the answer")
    prefix_len = len(parse(envelope, Kind.RESPONSE).prefix)
    for index in range(len(envelope)):
        for bit in range(8):
            with pytest.raises(CryptoError) as info:
                open_response(_flip(envelope, index, bit), response_key=key, request_id="req-1")
            expected = {"crypto.auth_failed"} if index >= prefix_len else ANY_CRYPTO
            assert info.value.code in expected, (index, bit, info.value)


def test_truncated_or_extended_response_is_auth_failed() -> None:
    key = b"k" * 32
    envelope = seal_response(response_key=key, request_id="r", payload=b"abc")
    prefix_len = len(parse(envelope, Kind.RESPONSE).prefix)
    for cut in range(prefix_len, len(envelope)):
        _expect(
            CryptoError, "crypto.auth_failed", open_response, envelope[:cut], response_key=key, request_id="r"
        )
    _expect(
        CryptoError, "crypto.auth_failed", open_response, envelope + b"\x00", response_key=key, request_id="r"
    )


def test_response_and_request_envelopes_are_not_interchangeable(enclave: RecipientKey) -> None:
    sealed = _seal(enclave)
    _expect(
        CryptoError,
        "crypto.malformed",
        open_response,
        sealed.envelope,
        response_key=sealed.response_key,
        request_id="req-1",
    )
    answer = seal_response(response_key=sealed.response_key, request_id="req-1", payload=b"")
    _expect(CryptoError, "crypto.malformed", enclave.open_request, answer)


@pytest.mark.parametrize(
    ("header", "code"),
    [
        ({"alg": "A128GCM", "nonce": "00" * 12, "rid": "r"}, "crypto.unsupported_version"),
        ({"alg": RESPONSE_ALG, "nonce": "00" * 11, "rid": "r"}, "crypto.malformed"),
        ({"alg": RESPONSE_ALG, "nonce": "00" * 12}, "crypto.malformed"),
        ({"alg": RESPONSE_ALG, "nonce": "00" * 12, "rid": "r"}, "crypto.auth_failed"),
    ],
)
def test_open_response_rejects_bad_headers(header: dict[str, str], code: str) -> None:
    envelope = encode_prefix(Kind.RESPONSE, header) + b"\x00" * 32
    _expect(CryptoError, code, open_response, envelope, response_key=b"k" * 32, request_id="r")


@FAST
@given(st.binary(max_size=300))
def test_open_response_on_random_bytes_raises_only_crypto_error(garbage: bytes) -> None:
    with pytest.raises(CryptoError):
        open_response(garbage, response_key=b"k" * 32, request_id="r")
