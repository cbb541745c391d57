"""Enclave-to-enclave mutual attestation, and the transfer of the cluster identity between them.

A cluster of enclave workers serves one identity: one HPKE key clients seal to and one Ed25519
key that signs every receipt. The first attested worker's identity becomes the cluster's; every
later worker takes it over from a member, after both enclaves verified each other's evidence:

1. ``peer_challenge`` on the holder A: a fresh nonce, kept by A (single use, 60 s);
2. ``peer_request`` on the joiner B with A's nonce: B's evidence binding its *instance* keys and
   A's nonce, plus B's own nonce (kept by B, single use, 60 s);
3. ``peer_export`` on A with B's evidence: A verifies it (below); then HPKE-seals the cluster
   identity and the model configs to B's instance key, and returns that transfer with its own
   evidence (binding A's instance keys and B's nonce) and its instance signature over
   ``SHA-256(transfer) || B's nonce``;
4. ``peer_import`` on B: B verifies A's evidence the same way and the signature, opens the
   transfer and installs the identity.

Every decision is made here, inside the enclaves, with a policy each enclave builds from its OWN
evidence: same TEE type, same measurement, not debug unless itself debug, fresh (at most
:data:`PEER_EVIDENCE_MAX_AGE_SECONDS` old), answering the pending nonce, and a signature chain to
the root its own platform chains to (simulated) or to the vendor roots pinned in code (SEV-SNP:
AMD's ARKs; SGX/TDX: Intel's SGX root CA). Nothing the host supplies decides what is trusted. The
verifier of the peer's TEE type is imported on first use only, so an enclave loads just the code
its own TEE needs. Instance keys never leave their enclave, so a transfer captured by the host is
useless anywhere else, and a transfer answers one nonce only.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519
from cryptography.hazmat.primitives.hpke import AEAD, KDF, KEM, Suite

from sealedml import safejson
from sealedml.attestation.evidence.bundle import EvidenceBundle
from sealedml.attestation.report_data import bind_report_data
from sealedml.crypto.request import RecipientKey
from sealedml.crypto.signing import SigningKey, verify_signature
from sealedml.errors import AttestationError, ClusterError, CryptoError, InputError, SealedMLError

if TYPE_CHECKING:
    from sealedml.attestation.claims import Claims

__all__ = [
    "CHALLENGE_TTL_SECONDS",
    "PEER_EVIDENCE_MAX_AGE_SECONDS",
    "Challenges",
    "Identity",
    "OwnClaims",
    "Transfer",
    "open_transfer",
    "own_claims",
    "seal_transfer",
    "transfer_message",
    "verify_peer",
]

CHALLENGE_TTL_SECONDS = 60
"""A peer nonce is accepted once, within this many seconds of being issued."""
MAX_PENDING_CHALLENGES = 1024
PEER_EVIDENCE_MAX_AGE_SECONDS = 120
"""Simulated reports carry a signed time; a peer's may be at most this old (or 60 s in the future)."""
FUTURE_SKEW_SECONDS = 60
NONCE_SIZE = 32
MAX_TRANSFER_BYTES = 64 * 1024 * 1024
MAX_TRANSFER_MODELS = 10_000
TRANSFER_VERSION = 1
_CONTEXT = b"sealedml-peer-transfer-v1"
_SUITE = Suite(KEM.X25519, KDF.HKDF_SHA256, AEAD.AES_128_GCM)


def _rejected(message: str) -> ClusterError:
    return ClusterError("cluster.peer_rejected", message)


# -- identities ------------------------------------------------------------------------------------


class Identity:
    """An HPKE (X25519) key and an Ed25519 signing key that travel together.

    An enclave holds two: its *instance* identity, which never leaves it, and the identity it
    serves (its own at first, the cluster's after joining), which leaves only HPKE-sealed to a
    peer enclave's attested instance key.
    """

    def __init__(
        self, hpke_private: x25519.X25519PrivateKey, signing_private: ed25519.Ed25519PrivateKey
    ) -> None:
        self._hpke_private = hpke_private
        self._signing_private = signing_private
        self.hpke = RecipientKey(hpke_private)
        self.signer = SigningKey(signing_private)

    @classmethod
    def generate(cls) -> Identity:
        """Return a fresh identity."""
        return cls(x25519.X25519PrivateKey.generate(), ed25519.Ed25519PrivateKey.generate())

    @property
    def public(self) -> tuple[bytes, bytes]:
        """``(hpke public key, signing public key)``, raw 32 bytes each."""
        return self.hpke.public_bytes, self.signer.public_bytes

    def secret(self) -> dict[str, str]:
        """Return the private keys as hex (only ever placed inside a sealed transfer)."""
        return {
            "hpke_private": self._hpke_private.private_bytes_raw().hex(),
            "signing_private": self._signing_private.private_bytes_raw().hex(),
        }

    @classmethod
    def from_secret(cls, data: object) -> Identity:
        """Rebuild an identity from :meth:`secret`; raises ``crypto.malformed`` on a bad shape."""
        try:
            assert isinstance(data, dict)
            hpke = bytes.fromhex(data["hpke_private"])
            signing = bytes.fromhex(data["signing_private"])
            if len(hpke) != 32 or len(signing) != 32:
                raise ValueError("key size")
            return cls(
                x25519.X25519PrivateKey.from_private_bytes(hpke),
                ed25519.Ed25519PrivateKey.from_private_bytes(signing),
            )
        except (AssertionError, KeyError, TypeError, ValueError):
            raise CryptoError("crypto.malformed", "the transfer's cluster identity is malformed") from None


# -- nonces ----------------------------------------------------------------------------------------


class Challenges:
    """Nonces this enclave issued and still expects: each accepted once, within the TTL.

    Thread-safe. At most :data:`MAX_PENDING_CHALLENGES` are kept; beyond that the oldest go first.
    """

    def __init__(self, clock: Callable[[], float], ttl: float = CHALLENGE_TTL_SECONDS) -> None:
        self._clock = clock
        self._ttl = ttl
        self._pending: dict[bytes, float] = {}
        self._lock = threading.Lock()

    def issue(self) -> bytes:
        """Return a fresh random nonce and remember it."""
        nonce = os.urandom(NONCE_SIZE)
        now = self._clock()
        with self._lock:
            self._pending = {n: t for n, t in self._pending.items() if now - t <= self._ttl}
            while len(self._pending) >= MAX_PENDING_CHALLENGES:
                self._pending.pop(next(iter(self._pending)))
            self._pending[nonce] = now
        return nonce

    def take(self, nonce: bytes) -> None:
        """Consume ``nonce``; raises ``cluster.challenge_unknown`` unless it is pending and fresh.

        Guarantees: a nonce is accepted at most once, and only within the TTL of being issued.
        """
        now = self._clock()
        with self._lock:
            issued = self._pending.pop(nonce, None)
        if issued is None:
            raise ClusterError(
                "cluster.challenge_unknown",
                "the peer answers a nonce this enclave has not issued, or has already accepted",
            )
        if now - issued > self._ttl:
            raise ClusterError(
                "cluster.challenge_unknown",
                f"the peer answered after {now - issued:.0f} s; a peer nonce expires after {self._ttl:.0f} s",
            )


def parse_nonce(value: object) -> bytes:
    """Parse a hex nonce from a frame header; raises ``input.malformed`` unless 16..64 bytes."""
    try:
        nonce = bytes.fromhex(value) if isinstance(value, str) else b""
    except ValueError:
        nonce = b""
    if not 16 <= len(nonce) <= 64:
        raise InputError("input.malformed", "nonce must be 16..64 bytes of hex")
    return nonce


# -- the enclave's own claims, and the peer check --------------------------------------------------


@dataclass(frozen=True)
class OwnClaims:
    """What this enclave's own evidence says about it: the reference a peer must match."""

    tee: str
    measurement: str
    debug: bool
    root_fingerprint: str


def _verify_chain(bundle: EvidenceBundle, *, simulated_root: str | None, now: datetime) -> Claims:
    """Verify the evidence's chain and signature with the verifier of its TEE type, imported lazily.

    Simulated evidence must chain to ``simulated_root`` (this enclave's own platform root; ``None``
    only when reading the enclave's own evidence); real TEEs to the vendor roots pinned in code.
    """
    if bundle.tee == "simulated":
        from sealedml.attestation.evidence.simulated import verify_simulated

        root = (
            simulated_root
            if simulated_root is not None
            else hashlib.sha256(bundle.certificates[-1]).hexdigest()
        )
        return verify_simulated(bundle, trusted_roots=(root,), now=now)
    if bundle.tee == "sev-snp":
        from sealedml.attestation.evidence.snp import verify_snp

        return verify_snp(bundle.report, certificates=bundle.certificates, now=now)
    if bundle.tee in ("sgx", "tdx"):
        from sealedml.attestation.evidence.dcap import verify_dcap

        claims = verify_dcap(bundle.report, collateral=bundle.collateral or None, now=now)
        if claims.tee != bundle.tee:
            raise AttestationError(
                "attestation.malformed", f"the bundle says {bundle.tee} but carries a {claims.tee} quote"
            )
        return claims
    raise AttestationError("attestation.unsupported_tee", f"evidence format {bundle.tee!r} is not supported")


def own_claims(bundle: EvidenceBundle, *, now: float) -> OwnClaims:
    """Read this enclave's own freshly produced evidence into the reference its peers must match.

    Guarantees: the values come from evidence the enclave's platform just signed (the hardware's
    measurement on real TEEs), checked by the same verifier as a peer's, never from the host.
    """
    if not bundle.certificates and bundle.tee == "simulated":
        raise AttestationError("attestation.chain_invalid", "the simulated platform served no chain")
    claims = _verify_chain(bundle, simulated_root=None, now=datetime.fromtimestamp(now, UTC))
    return OwnClaims(
        tee=claims.tee,
        measurement=claims.measurement,
        debug=claims.debug,
        root_fingerprint=claims.root_fingerprint,
    )


def verify_peer(bundle: EvidenceBundle, *, nonce: bytes, own: OwnClaims, now: float) -> Claims:
    """Return the claims of a peer's evidence only if it is an enclave like this one, answering ``nonce``.

    Checks, each with its own code: same TEE type (``cluster.peer_rejected``); chain to this
    enclave's own root for simulated evidence (``cluster.peer_rejected``), to the pinned vendor roots
    otherwise, and the report signature (``attestation.*``); same measurement and no debug mode
    unless this enclave is itself debug (``cluster.peer_rejected``); age (``attestation.expired``,
    ``attestation.not_yet_valid``); the echoed nonce (``attestation.nonce_mismatch``) and the
    report_data binding of the bundle's keys to ``nonce`` (``attestation.report_data_mismatch``).
    """
    if bundle.tee != own.tee:
        raise _rejected(f"the peer runs on {bundle.tee}, this enclave on {own.tee}")
    moment = datetime.fromtimestamp(now, UTC)
    try:
        claims = _verify_chain(
            bundle, simulated_root=own.root_fingerprint if own.tee == "simulated" else None, now=moment
        )
    except AttestationError as exc:
        if exc.code == "attestation.untrusted_root":
            raise _rejected(
                f"the peer's evidence chains to another root than this enclave's platform: {exc.message}"
            ) from None
        raise
    if not hmac.compare_digest(claims.measurement, own.measurement):
        raise _rejected(
            f"the peer runs other code (measurement {claims.measurement[:16]}…, "
            f"this enclave {own.measurement[:16]}…)"
        )
    if claims.debug and not own.debug:
        raise _rejected("the peer is a debug enclave, whose memory its host can read")
    age = (moment - claims.issued_at).total_seconds()
    if age > PEER_EVIDENCE_MAX_AGE_SECONDS:
        raise AttestationError(
            "attestation.expired",
            f"the peer's evidence is {int(age)} s old; "
            f"peers accept at most {PEER_EVIDENCE_MAX_AGE_SECONDS} s",
        )
    if age < -FUTURE_SKEW_SECONDS:
        raise AttestationError("attestation.not_yet_valid", "the peer's evidence is dated in the future")
    if not hmac.compare_digest(bundle.nonce, nonce):
        raise AttestationError("attestation.nonce_mismatch", "the peer's evidence answers another challenge")
    expected = bind_report_data(bundle.hpke_public_key, bundle.signing_public_key, nonce)
    if not hmac.compare_digest(claims.report_data, expected):
        raise AttestationError(
            "attestation.report_data_mismatch", "the peer's evidence does not bind its keys to this nonce"
        )
    return claims


def parse_bundle(raw: bytes) -> EvidenceBundle:
    """Parse a peer's evidence; raises ``attestation.malformed``."""
    return EvidenceBundle.from_json(raw)


# -- the transfer ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Transfer:
    """What a transfer carries: the cluster identity and model configs (JSON, with keys) by id."""

    identity: Identity
    models: dict[str, bytes]


def _info(recipient: bytes, nonce: bytes) -> bytes:
    return _CONTEXT + b"\x00" + recipient + nonce


def transfer_message(transfer: bytes, nonce: bytes) -> bytes:
    """The bytes the exporter signs: ``SHA-256(transfer) || joiner's nonce``."""
    return hashlib.sha256(transfer).digest() + nonce


def seal_transfer(*, identity: Identity, models: dict[str, bytes], recipient: bytes, nonce: bytes) -> bytes:
    """HPKE-seal the identity and model configs to ``recipient`` (a peer's attested instance key).

    Guarantees: only the holder of that instance key can open it, and only as the answer to
    ``nonce``; any altered byte makes :func:`open_transfer` fail.
    """
    body = json.dumps(
        {
            "v": TRANSFER_VERSION,
            "cluster": identity.secret(),
            "models": {model_id: config.decode() for model_id, config in models.items()},
        },
        sort_keys=True,
    ).encode()
    public_key = x25519.X25519PublicKey.from_public_bytes(recipient)
    return _SUITE.encrypt(body, public_key, info=_info(recipient, nonce))


def open_transfer(sealed: bytes, *, instance: Identity, nonce: bytes) -> Transfer:
    """Open a transfer sealed to ``instance`` for ``nonce``.

    Raises ``crypto.auth_failed`` if it was sealed to another key or nonce or altered, and
    ``crypto.malformed`` if its content is not a version-1 transfer.
    """
    if len(sealed) > MAX_TRANSFER_BYTES:
        raise CryptoError("crypto.malformed", f"the transfer is larger than {MAX_TRANSFER_BYTES} bytes")
    recipient = instance.hpke.public_bytes
    try:
        plain = _SUITE.decrypt(sealed, instance._hpke_private, info=_info(recipient, nonce))
    except (InvalidTag, ValueError):
        raise CryptoError(
            "crypto.auth_failed", "the transfer does not open with this enclave's instance key and nonce"
        ) from None
    try:
        data = safejson.loads(plain)
        if not isinstance(data, dict) or data.get("v") != TRANSFER_VERSION:
            raise ValueError("version")
        models = data["models"]
        if not isinstance(models, dict) or len(models) > MAX_TRANSFER_MODELS:
            raise ValueError("models")
        configs = {}
        for model_id, config in models.items():
            if not isinstance(config, str) or not 0 < len(model_id) <= 128:
                raise ValueError("model")
            configs[model_id] = config.encode()
    except (UnicodeDecodeError, ValueError, KeyError, TypeError, RecursionError):
        raise CryptoError("crypto.malformed", "the transfer is not a version-1 cluster transfer") from None
    return Transfer(identity=Identity.from_secret(data.get("cluster")), models=configs)


def check_signature(public_key: bytes, transfer: bytes, nonce: bytes, signature_hex: object) -> None:
    """Return only if ``signature_hex`` is ``public_key``'s signature of :func:`transfer_message`.

    Raises ``crypto.auth_failed`` otherwise (the peer did not produce this transfer for this nonce).
    """
    try:
        signature = bytes.fromhex(signature_hex) if isinstance(signature_hex, str) else b""
        verify_signature(public_key, transfer_message(transfer, nonce), signature)
    except (ValueError, SealedMLError):
        raise CryptoError(
            "crypto.auth_failed", "the transfer is not signed by the attested peer for this nonce"
        ) from None


def header_dict(claims: Claims) -> dict[str, Any]:
    """The public summary of a verified peer for reply headers (no keys)."""
    return {"tee": claims.tee, "measurement": claims.measurement, "platform_id": claims.platform_id}
