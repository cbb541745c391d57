"""Sealing to (platform secret, measurement, label): only the same triple unseals, untampered."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given, settings
from hypothesis import strategies as st

from sealedml.crypto.envelope import Kind, encode_prefix, parse
from sealedml.crypto.sealing import ALGORITHM, seal, unseal
from sealedml.errors import CryptoError

SECRET = bytes(range(32))
MEASUREMENT = "a1" * 48
LABEL = "model-key:m-1"
ANY_CRYPTO = {"crypto.auth_failed", "crypto.malformed", "crypto.unsupported_version"}


def _flip(data: bytes, index: int, bit: int = 0) -> bytes:
    out = bytearray(data)
    out[index] ^= 1 << bit
    return bytes(out)


def _expect(code: str, **kwargs: object) -> None:
    args = {"platform_secret": SECRET, "measurement": MEASUREMENT, "label": LABEL, **kwargs}
    with pytest.raises(CryptoError) as info:
        unseal(**args)
    assert type(info.value) is CryptoError
    assert info.value.code == code, info.value


def _blob(plaintext: bytes = b"model key material") -> bytes:
    return seal(platform_secret=SECRET, measurement=MEASUREMENT, label=LABEL, plaintext=plaintext)


@pytest.mark.parametrize("plaintext", [b"", b"k", b"k" * 4096])
def test_round_trip(plaintext: bytes) -> None:
    blob = _blob(plaintext)
    assert unseal(platform_secret=SECRET, measurement=MEASUREMENT, label=LABEL, blob=blob) == plaintext
    header = parse(blob, Kind.SEALED).header
    assert (header["alg"], header["measurement"], header["label"]) == (ALGORITHM, MEASUREMENT, LABEL)


def test_wire_format_matches_the_documented_key_derivation() -> None:
    """Key = HKDF-SHA256(secret, salt="sealedml-seal-v1", info=measurement || 0x00 || label); AD = prefix."""
    env = parse(_blob(b"plain"), Kind.SEALED)
    info = MEASUREMENT.encode() + b"\x00" + LABEL.encode()
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"sealedml-seal-v1", info=info).derive(SECRET)
    nonce = bytes.fromhex(env.header["nonce"])
    assert AESGCM(key).decrypt(nonce, env.body, env.prefix) == b"plain"


def test_longer_platform_secret_round_trip() -> None:
    secret = b"s" * 64
    blob = seal(platform_secret=secret, measurement=MEASUREMENT, label=LABEL, plaintext=b"x")
    assert unseal(platform_secret=secret, measurement=MEASUREMENT, label=LABEL, blob=blob) == b"x"


def test_sealing_twice_gives_different_blobs() -> None:
    assert _blob() != _blob()


def test_another_measurement() -> None:
    _expect("crypto.auth_failed", measurement="b2" * 48, blob=_blob())


def test_another_label() -> None:
    _expect("crypto.auth_failed", label="model-key:m-2", blob=_blob())


def test_another_platform_secret() -> None:
    _expect("crypto.auth_failed", platform_secret=bytes(32), blob=_blob())


@pytest.mark.parametrize(
    "change", [{"measurement": "b2" * 48}, {"label": "model-key:m-2"}, {"extra": "x"}, {"nonce": "00" * 12}]
)
def test_re_encoded_header_with_original_body_is_auth_failed(change: dict[str, str]) -> None:
    env = parse(_blob(), Kind.SEALED)
    forged = encode_prefix(Kind.SEALED, {**env.header, **change}) + env.body
    _expect(
        "crypto.auth_failed",
        measurement=change.get("measurement", MEASUREMENT),
        label=change.get("label", LABEL),
        blob=forged,
    )


def test_colliding_key_derivation_inputs_still_fail() -> None:
    """measurement || 0x00 || label is ambiguous if a field holds 0x00; the authenticated header is not."""
    blob = seal(platform_secret=SECRET, measurement="m", label="x\x00y", plaintext=b"p")
    env = parse(blob, Kind.SEALED)
    forged = encode_prefix(Kind.SEALED, {**env.header, "measurement": "m\x00x", "label": "y"}) + env.body
    _expect("crypto.auth_failed", measurement="m\x00x", label="y", blob=forged)


def test_every_bit_flip_is_rejected() -> None:
    blob = _blob(b"0123456789")
    prefix_len = len(parse(blob, Kind.SEALED).prefix)
    for index in range(len(blob)):
        for bit in range(8):
            with pytest.raises(CryptoError) as info:
                unseal(
                    platform_secret=SECRET, measurement=MEASUREMENT, label=LABEL, blob=_flip(blob, index, bit)
                )
            expected = {"crypto.auth_failed"} if index >= prefix_len else ANY_CRYPTO
            assert info.value.code in expected, (index, bit, info.value)


def test_truncation_and_extension() -> None:
    blob = _blob(b"abc")
    prefix_len = len(parse(blob, Kind.SEALED).prefix)
    for cut in range(prefix_len, len(blob)):
        _expect("crypto.auth_failed", blob=blob[:cut])
    for cut in range(prefix_len):
        _expect("crypto.malformed", blob=blob[:cut])
    _expect("crypto.auth_failed", blob=blob + b"\x00")


@pytest.mark.parametrize(
    ("header", "code"),
    [
        (
            {"alg": "A128GCM-v0", "label": LABEL, "measurement": MEASUREMENT, "nonce": "00" * 12},
            "crypto.unsupported_version",
        ),
        (
            {"alg": ALGORITHM, "label": LABEL, "measurement": MEASUREMENT, "nonce": "00" * 13},
            "crypto.malformed",
        ),
        ({"alg": ALGORITHM, "label": LABEL, "measurement": MEASUREMENT}, "crypto.malformed"),
        ({"alg": ALGORITHM, "label": LABEL, "nonce": "00" * 12}, "crypto.malformed"),
        ({"alg": ALGORITHM, "label": 1, "measurement": MEASUREMENT, "nonce": "00" * 12}, "crypto.malformed"),
    ],
)
def test_bad_headers(header: dict[str, object], code: str) -> None:
    _expect(code, blob=encode_prefix(Kind.SEALED, header) + b"\x00" * 32)


def test_other_envelope_kinds_are_malformed() -> None:
    env = parse(_blob(), Kind.SEALED)
    for kind in (Kind.STREAM, Kind.REQUEST, Kind.RESPONSE):
        _expect("crypto.malformed", blob=encode_prefix(kind, env.header) + env.body)


def test_short_platform_secret_is_misuse() -> None:
    with pytest.raises(ValueError):
        seal(platform_secret=b"s" * 31, measurement=MEASUREMENT, label=LABEL, plaintext=b"")
    with pytest.raises(ValueError):
        unseal(platform_secret=b"s" * 31, measurement=MEASUREMENT, label=LABEL, blob=_blob())


@settings(max_examples=60, deadline=None)
@given(st.one_of(st.binary(max_size=300), st.binary(max_size=200).map(lambda b: b"SML\x01\x04" + b)))
def test_random_bytes_raise_only_crypto_error(garbage: bytes) -> None:
    with pytest.raises(CryptoError):
        unseal(platform_secret=SECRET, measurement=MEASUREMENT, label=LABEL, blob=garbage)
