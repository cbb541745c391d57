"""Ed25519 receipt signatures: anything but the right key, message and signature is signature_invalid."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from hypothesis import given, settings
from hypothesis import strategies as st

from sealedml.crypto.signing import SigningKey, verify_signature
from sealedml.errors import CryptoError

MESSAGE = b'{"job":"j-1","output_sha256":"00"}'


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return SigningKey.generate()


def _expect_invalid(public_key: bytes, message: bytes, signature: bytes) -> None:
    with pytest.raises(CryptoError) as info:
        verify_signature(public_key, message, signature)
    assert type(info.value) is CryptoError
    assert info.value.code == "crypto.signature_invalid", info.value


def _flip(data: bytes, index: int, bit: int = 0) -> bytes:
    out = bytearray(data)
    out[index] ^= 1 << bit
    return bytes(out)


def test_sign_and_verify(key: SigningKey) -> None:
    signature = key.sign(MESSAGE)
    assert len(signature) == 64 and len(key.public_bytes) == 32
    assert verify_signature(key.public_bytes, MESSAGE, signature) is None
    assert verify_signature(key.public_bytes, b"", key.sign(b"")) is None


def test_signing_key_wraps_a_given_private_key() -> None:
    private = ed25519.Ed25519PrivateKey.from_private_bytes(bytes(32))
    key = SigningKey(private)
    assert key.public_bytes == private.public_key().public_bytes_raw()
    private.public_key().verify(key.sign(MESSAGE), MESSAGE)


def test_wrong_key(key: SigningKey) -> None:
    _expect_invalid(SigningKey.generate().public_bytes, MESSAGE, key.sign(MESSAGE))


def test_signature_of_another_message(key: SigningKey) -> None:
    _expect_invalid(key.public_bytes, MESSAGE, key.sign(MESSAGE + b" "))


@pytest.mark.parametrize("message", [b"", MESSAGE[:-1], MESSAGE + b"\x00", MESSAGE.upper()])
def test_tampered_message(key: SigningKey, message: bytes) -> None:
    _expect_invalid(key.public_bytes, message, key.sign(MESSAGE))


@settings(max_examples=60, deadline=None)
@given(where=st.floats(0, 1, exclude_max=True), bit=st.integers(0, 7), target=st.sampled_from(["msg", "sig"]))
def test_any_flipped_bit_in_message_or_signature(
    key: SigningKey, where: float, bit: int, target: str
) -> None:
    signature = key.sign(MESSAGE)
    if target == "msg":
        _expect_invalid(key.public_bytes, _flip(MESSAGE, int(where * len(MESSAGE)), bit), signature)
    else:
        _expect_invalid(key.public_bytes, MESSAGE, _flip(signature, int(where * 64), bit))


@pytest.mark.parametrize("signature", [b"", b"\x00" * 63, b"\x00" * 64, b"\xff" * 64, b"\x00" * 65])
def test_malformed_signature(key: SigningKey, signature: bytes) -> None:
    _expect_invalid(key.public_bytes, MESSAGE, signature)


def test_signature_with_trailing_byte(key: SigningKey) -> None:
    _expect_invalid(key.public_bytes, MESSAGE, key.sign(MESSAGE) + b"\x00")


@pytest.mark.parametrize("public_key", [b"", b"\x01" * 31, b"\x01" * 33, b"\x00" * 32, b"\xff" * 32])
def test_malformed_public_key(key: SigningKey, public_key: bytes) -> None:
    _expect_invalid(public_key, MESSAGE, key.sign(MESSAGE))


def test_public_key_with_flipped_bit(key: SigningKey) -> None:
    signature = key.sign(MESSAGE)
    for index in range(32):
        _expect_invalid(_flip(key.public_bytes, index, index % 8), MESSAGE, signature)
