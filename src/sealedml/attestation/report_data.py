"""The ``report_data`` binding between an enclave's evidence and its public keys.

The enclave places ``SHA-512("sealedml-v1" || hpke_pk || sign_pk || nonce)`` in the 64-byte
report_data field of its evidence. A verifier recomputes it from the keys the enclave serves and
the nonce the verifier chose, so evidence proves that *these* keys belong to *this* attested
enclave and that the evidence was produced after the challenge was issued.

This module uses only the standard library; the enclave imports it.
"""

from __future__ import annotations

import hashlib

__all__ = [
    "KEY_LENGTH",
    "NONCE_MAX_LENGTH",
    "NONCE_MIN_LENGTH",
    "REPORT_DATA_CONTEXT",
    "REPORT_DATA_LENGTH",
    "bind_report_data",
]

REPORT_DATA_CONTEXT = b"sealedml-v1"
"""Domain-separation prefix; a new binding format gets a new context."""

KEY_LENGTH = 32
"""Length of a raw X25519 (HPKE) or Ed25519 (signing) public key."""

NONCE_MIN_LENGTH = 16
NONCE_MAX_LENGTH = 64
REPORT_DATA_LENGTH = 64


def bind_report_data(hpke_public_key: bytes, signing_public_key: bytes, nonce: bytes) -> bytes:
    """Return the 64-byte report_data binding both enclave public keys to ``nonce``.

    Guarantees: the result is ``SHA-512(REPORT_DATA_CONTEXT || hpke_public_key ||
    signing_public_key || nonce)``. The encoding is unambiguous because both keys have a fixed
    length (32 bytes) and the nonce is last. Raises ``ValueError`` if a key is not 32 raw bytes or
    the nonce is not 16..64 bytes, so a caller bug never yields a weak binding.
    """
    for name, key in (("hpke_public_key", hpke_public_key), ("signing_public_key", signing_public_key)):
        if not isinstance(key, bytes) or len(key) != KEY_LENGTH:
            raise ValueError(f"{name} must be {KEY_LENGTH} raw bytes")
    if not isinstance(nonce, bytes) or not NONCE_MIN_LENGTH <= len(nonce) <= NONCE_MAX_LENGTH:
        raise ValueError(f"nonce must be {NONCE_MIN_LENGTH}..{NONCE_MAX_LENGTH} bytes")
    return hashlib.sha512(REPORT_DATA_CONTEXT + hpke_public_key + signing_public_key + nonce).digest()
