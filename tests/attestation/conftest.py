"""Shared fixtures for the attestation tests: a simulated platform, enclave keys, a nonce, a policy."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from sealedml.attestation.evidence.bundle import EvidenceBundle
from sealedml.attestation.policy import AppraisalPolicy
from sealedml.attestation.producers.simulated import STATE_FILE, SimulatedPlatform

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
MEASUREMENT = "a1" * 48


def raw_public(key: X25519PrivateKey | Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def state_key(platform_dir: Path, name: str) -> ec.EllipticCurvePrivateKey:
    """Load a private key from a simulated platform's state file (test-only access)."""
    state = json.loads((platform_dir / STATE_FILE).read_text())
    key = serialization.load_pem_private_key(state[name].encode(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


@pytest.fixture
def now() -> datetime:
    """The fixed time every fixture issues evidence at."""
    return NOW


@pytest.fixture
def measurement() -> str:
    """The measurement the fixture evidence carries and the fixture policy pins."""
    return MEASUREMENT


@pytest.fixture
def platform_ca_key(platform: SimulatedPlatform, platform_dir: Path) -> ec.EllipticCurvePrivateKey:
    return state_key(platform_dir, "platform_key")


@pytest.fixture
def platform_dir(tmp_path: Path) -> Path:
    return tmp_path / "platform"


@pytest.fixture
def platform(platform_dir: Path) -> SimulatedPlatform:
    return SimulatedPlatform.open(platform_dir, now=NOW)


@pytest.fixture
def other_platform(tmp_path: Path) -> SimulatedPlatform:
    return SimulatedPlatform.open(tmp_path / "other-platform", now=NOW)


@pytest.fixture
def keys() -> tuple[bytes, bytes]:
    return raw_public(X25519PrivateKey.generate()), raw_public(Ed25519PrivateKey.generate())


@pytest.fixture
def nonce() -> bytes:
    return os.urandom(32)


@pytest.fixture
def policy(platform: SimulatedPlatform) -> AppraisalPolicy:
    return AppraisalPolicy(
        reference_measurements=(MEASUREMENT,),
        allow_simulated=True,
        simulated_roots=(platform.root_fingerprint,),
    )


@pytest.fixture
def bundle(platform: SimulatedPlatform, keys: tuple[bytes, bytes], nonce: bytes) -> EvidenceBundle:
    return platform.attest(
        measurement=MEASUREMENT, hpke_public_key=keys[0], signing_public_key=keys[1], nonce=nonce, now=NOW
    )


@pytest.fixture
def resign(platform_dir: Path, bundle: EvidenceBundle) -> Callable[[bytes], EvidenceBundle]:
    """Return a function that replaces the bundle's report with arbitrary bytes, validly signed."""
    leaf_key = state_key(platform_dir, "report_key")  # the bundle fixture opened the platform

    def make(report: bytes) -> EvidenceBundle:
        signature = leaf_key.sign(report, ec.ECDSA(hashes.SHA384()))
        return EvidenceBundle(
            tee=bundle.tee,
            report=report,
            signature=signature,
            certificates=bundle.certificates,
            hpke_public_key=bundle.hpke_public_key,
            signing_public_key=bundle.signing_public_key,
            nonce=bundle.nonce,
        )

    return make
