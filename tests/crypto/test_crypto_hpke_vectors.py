"""RFC 9180 conformance: our request suite constant is DHKEM(X25519,HKDF-SHA256)/HKDF-SHA256/AES-128-GCM.

The vectors are the RFC's own (``HPKE/test-vectors.json`` in the ``cryptography-vectors`` package,
which must match the installed ``cryptography`` version). Only the base mode (mode 0) of our exact
suite (kem 0x0020, kdf 0x0001, aead 0x0001) is used, and only the first encryption (sequence 0),
which is what a single-shot ``Suite.encrypt`` / ``Suite.decrypt`` computes.

``Suite.decrypt`` in cryptography 50 has no public ``aad`` argument (it always uses empty AAD),
while every RFC encryption has ``aad = "Count-<i>"``. So:

- ``test_key_schedule_matches_rfc`` uses the public API only: it seals the vector's plaintext with
  the RFC's published ``key`` and ``base_nonce`` and empty AAD, and requires ``_SUITE.decrypt`` (with
  the RFC's ``skRm``, ``enc`` and ``info``) to open it. That holds only if our suite's KEM, KDF and
  AEAD all derive exactly the RFC's key schedule.
- ``test_rfc_ciphertext_decrypts`` opens the RFC's own ciphertext through cryptography's private
  ``_decrypt_with_aad`` binding, and is skipped if a future release drops it.
"""

from __future__ import annotations

import json
import os

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hpke import AEAD, KDF, KEM, Suite

from sealedml.crypto.request import _SUITE, SUITE_NAME

cryptography_vectors = pytest.importorskip("cryptography_vectors")

BASE_MODE = 0
KEM_X25519_HKDF_SHA256 = 0x0020
KDF_HKDF_SHA256 = 0x0001
AEAD_AES_128_GCM = 0x0001


def _vectors() -> list[dict]:
    try:
        with cryptography_vectors.open_vector_file(os.path.join("HPKE", "test-vectors.json"), "r") as f:
            every = json.load(f)
    except FileNotFoundError:
        pytest.skip("this cryptography-vectors release ships no HPKE vectors", allow_module_level=True)
    return [
        v
        for v in every
        if (v["mode"], v["kem_id"], v["kdf_id"], v["aead_id"])
        == (BASE_MODE, KEM_X25519_HKDF_SHA256, KDF_HKDF_SHA256, AEAD_AES_128_GCM)
    ]


VECTORS = _vectors()


def _ids(vectors: list[dict]) -> list[str]:
    return [f"info={v['info'][:16]}" for v in vectors]


def test_the_rfc_vectors_for_our_suite_are_present() -> None:
    assert len(VECTORS) >= 1
    assert SUITE_NAME == "DHKEM(X25519,HKDF-SHA256)/HKDF-SHA256/AES-128-GCM"


def _recipient(vector: dict) -> x25519.X25519PrivateKey:
    private = x25519.X25519PrivateKey.from_private_bytes(bytes.fromhex(vector["skRm"]))
    assert private.public_key().public_bytes_raw() == bytes.fromhex(vector["pkRm"])
    return private


def _sealed_at_sequence_zero(vector: dict) -> tuple[bytes, bytes]:
    """Return (enc || AES-128-GCM(key, base_nonce, pt, aad=""), pt) from the RFC key schedule."""
    key, nonce = bytes.fromhex(vector["key"]), bytes.fromhex(vector["base_nonce"])
    assert len(key) == 16 and len(nonce) == 12  # AES-128-GCM, Nk = 16, Nn = 12
    plaintext = bytes.fromhex(vector["encryptions"][0]["pt"])
    return bytes.fromhex(vector["enc"]) + AESGCM(key).encrypt(nonce, plaintext, b""), plaintext


@pytest.mark.parametrize("vector", VECTORS, ids=_ids(VECTORS))
def test_key_schedule_matches_rfc(vector: dict) -> None:
    ciphertext, plaintext = _sealed_at_sequence_zero(vector)
    info = bytes.fromhex(vector["info"])
    assert _SUITE.decrypt(ciphertext, _recipient(vector), info=info) == plaintext
    with pytest.raises(InvalidTag):  # the info is bound into the key schedule
        _SUITE.decrypt(ciphertext, _recipient(vector), info=info + b"!")


@pytest.mark.parametrize("aead", [AEAD.AES_256_GCM, AEAD.CHACHA20_POLY1305])
@pytest.mark.parametrize("vector", VECTORS, ids=_ids(VECTORS))
def test_another_suite_does_not_match_the_rfc_key_schedule(vector: dict, aead: AEAD) -> None:
    """Control: the check above tells suites apart, so it would catch a mis-configured _SUITE."""
    ciphertext, _ = _sealed_at_sequence_zero(vector)
    with pytest.raises(InvalidTag):
        Suite(KEM.X25519, KDF.HKDF_SHA256, aead).decrypt(
            ciphertext, _recipient(vector), info=bytes.fromhex(vector["info"])
        )


@pytest.mark.parametrize("vector", VECTORS, ids=_ids(VECTORS))
def test_rfc_ciphertext_decrypts(vector: dict) -> None:
    from cryptography.hazmat.bindings._rust import openssl as rust_openssl

    decrypt_with_aad = getattr(rust_openssl.hpke, "_decrypt_with_aad", None)
    if decrypt_with_aad is None:
        pytest.skip("this cryptography release has no HPKE decryption with AAD")
    first = vector["encryptions"][0]
    plaintext = decrypt_with_aad(
        _SUITE,
        bytes.fromhex(vector["enc"]) + bytes.fromhex(first["ct"]),
        _recipient(vector),
        info=bytes.fromhex(vector["info"]),
        aad=bytes.fromhex(first["aad"]),
    )
    assert plaintext == bytes.fromhex(first["pt"])
    assert bytes.fromhex(first["nonce"]) == bytes.fromhex(vector["base_nonce"])  # sequence 0


@pytest.mark.parametrize("vector", VECTORS, ids=_ids(VECTORS))
def test_our_ciphertext_layout_is_enc_then_aead(vector: dict) -> None:
    recipient = _recipient(vector)
    sealed = _SUITE.encrypt(b"hello", recipient.public_key(), info=b"i")
    assert len(sealed) == KEM.X25519.enc_length() + len(b"hello") + 16
    assert _SUITE.decrypt(sealed, recipient, info=b"i") == b"hello"
