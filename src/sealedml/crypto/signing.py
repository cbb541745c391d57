"""Ed25519 signatures for receipts: the enclave signs, anyone verifies with the attested key."""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519

from sealedml.errors import CryptoError


class SigningKey:
    """An Ed25519 signing key whose private half never leaves this object."""

    def __init__(self, private_key: ed25519.Ed25519PrivateKey) -> None:
        self._private = private_key
        self.public_bytes: bytes = private_key.public_key().public_bytes_raw()

    @classmethod
    def generate(cls) -> SigningKey:
        """Return a fresh signing key."""
        return cls(ed25519.Ed25519PrivateKey.generate())

    def sign(self, message: bytes) -> bytes:
        """Return the 64-byte signature of ``message``."""
        return self._private.sign(message)


def verify_signature(public_key: bytes, message: bytes, signature: bytes) -> None:
    """Return only if ``signature`` is ``public_key``'s signature of ``message``.

    Raises ``crypto.signature_invalid`` otherwise (including malformed keys or signatures).
    """
    try:
        ed25519.Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        raise CryptoError("crypto.signature_invalid", "signature does not verify") from None
