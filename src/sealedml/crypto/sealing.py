"""Sealing: encrypt secrets so that only the same enclave code on the same platform can read them.

The sealing key is ``HKDF-SHA256(platform_secret, salt="sealedml-seal-v1",
info=measurement || 0x00 || label)``: the platform secret stands for the CPU's fused sealing key
(SGX ``EGETKEY``, SNP ``MSG_KEY_REQ``), and mixing in the measurement means an enclave with other
code derives another key and cannot unseal. The label separates purposes (``model-key:<id>``).
The sealed blob is an envelope of kind ``SEALED`` (AES-256-GCM, header authenticated).

With the *simulated* TEE the platform secret is a file the host can read: sealing then protects
nothing from the host. It is still exercised for real so the same code path runs on hardware.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from sealedml.crypto.envelope import Kind, encode_prefix, field, hex_field, parse
from sealedml.errors import CryptoError

ALGORITHM = "A256GCM-HKDF-SHA256-v1"


def _sealing_key(platform_secret: bytes, measurement: str, label: str) -> AESGCM:
    if len(platform_secret) < 32:
        raise ValueError("platform secret must be at least 32 bytes")
    info = measurement.encode() + b"\x00" + label.encode()
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"sealedml-seal-v1", info=info).derive(
        platform_secret
    )
    return AESGCM(key)


def seal(*, platform_secret: bytes, measurement: str, label: str, plaintext: bytes) -> bytes:
    """Seal ``plaintext`` to (platform, measurement, label)."""
    nonce = os.urandom(12)
    prefix = encode_prefix(
        Kind.SEALED,
        {"alg": ALGORITHM, "label": label, "measurement": measurement, "nonce": nonce.hex()},
    )
    return prefix + _sealing_key(platform_secret, measurement, label).encrypt(nonce, plaintext, prefix)


def unseal(*, platform_secret: bytes, measurement: str, label: str, blob: bytes) -> bytes:
    """Unseal a blob sealed to the same (platform, measurement, label).

    Any other measurement, label or platform, and any altered byte, raises ``crypto.auth_failed``.
    """
    env = parse(blob, Kind.SEALED)
    if field(env.header, "alg", str) != ALGORITHM:
        raise CryptoError("crypto.unsupported_version", "unknown sealing algorithm")
    nonce = hex_field(env.header, "nonce", 12)
    if field(env.header, "measurement", str) != measurement or field(env.header, "label", str) != label:
        raise CryptoError(
            "crypto.auth_failed", "sealed blob belongs to another enclave measurement or purpose"
        )
    try:
        return _sealing_key(platform_secret, measurement, label).decrypt(nonce, env.body, env.prefix)
    except InvalidTag:
        raise CryptoError("crypto.auth_failed", "sealed blob failed authentication") from None
