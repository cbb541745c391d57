"""Hypothesis: hostile input reaches the parsers and the verifier and only typed errors come out."""

from __future__ import annotations

import base64
import dataclasses
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sealedml.attestation.evidence.bundle import EvidenceBundle
from sealedml.attestation.policy import AppraisalPolicy
from sealedml.attestation.producers.simulated import SimulatedPlatform
from sealedml.attestation.verifier import verify_evidence
from sealedml.errors import AttestationError, ConfigError

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
MEASUREMENT = "a1" * 48
NONCE = b"n" * 32

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
b64_values = st.binary(max_size=80).map(lambda data: base64.b64encode(data).decode())
FIELDS = [
    "version",
    "tee",
    "report",
    "signature",
    "certificates",
    "hpke_public_key",
    "signing_public_key",
    "nonce",
]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[EvidenceBundle, AppraisalPolicy]:
    platform = SimulatedPlatform.open(Path(tmp_path_factory.mktemp("fuzz")) / "platform", now=NOW)
    bundle = platform.attest(
        measurement=MEASUREMENT, hpke_public_key=b"h" * 32, signing_public_key=b"s" * 32, nonce=NONCE, now=NOW
    )
    policy = AppraisalPolicy(
        reference_measurements=(MEASUREMENT,),
        allow_simulated=True,
        simulated_roots=(platform.root_fingerprint,),
    )
    return bundle, policy


def parse_or_malformed(text: str | bytes) -> None:
    try:
        EvidenceBundle.from_json(text)
    except AttestationError as error:
        assert error.code == "attestation.malformed"


@given(st.binary(max_size=2048))
def test_bundle_from_random_bytes(data):
    parse_or_malformed(data)


@given(st.text(max_size=2048))
def test_bundle_from_random_text(text):
    parse_or_malformed(text)


@given(json_values)
def test_bundle_from_random_json(value):
    parse_or_malformed(json.dumps(value))


@given(st.fixed_dictionaries({}, optional={name: json_values | b64_values for name in FIELDS}))
def test_bundle_from_bundle_shaped_json(value):
    parse_or_malformed(json.dumps(value))


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_bundle_text_never_escapes(world, data):
    text = world[0].to_json()
    index = data.draw(st.integers(0, len(text) - 1))
    replacement = data.draw(st.text(max_size=3))
    parse_or_malformed(text[:index] + replacement + text[index + 1 :])


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    field=st.sampled_from(["report", "signature", "c0", "c1", "c2"]),
    index=st.integers(min_value=0),
    xor=st.integers(1, 255),
)
def test_any_byte_flip_in_signed_material_is_rejected(world, field, index, xor):
    bundle, policy = world

    def flip(data: bytes) -> bytes:
        i = index % len(data)
        return data[:i] + bytes([data[i] ^ xor]) + data[i + 1 :]

    if field.startswith("c"):
        position = int(field[1])
        certs = list(bundle.certificates)
        certs[position] = flip(certs[position])
        tampered = dataclasses.replace(bundle, certificates=tuple(certs))
    else:
        tampered = dataclasses.replace(bundle, **{field: flip(getattr(bundle, field))})
    try:
        verify_evidence(tampered, nonce=NONCE, policy=policy, now=NOW)
    except AttestationError:
        return
    # Accepted: only legal if no signed content changed. DER parsers tolerate a non-zero
    # "unused bits" count in a certificate's outer signature BIT STRING when those bits are zero;
    # the signed TBS and the signature value are then unchanged (malleable encoding, not a forgery).
    assert field in ("c0", "c1"), "a flip in the report, signature or pinned root was accepted"
    original = x509.load_der_x509_certificate(bundle.certificates[position])
    altered = x509.load_der_x509_certificate(tampered.certificates[position])
    assert altered.tbs_certificate_bytes == original.tbs_certificate_bytes
    assert altered.signature == original.signature


def test_fuzz_world_control(world):
    """The unmodified fuzz bundle is accepted, so the flip test rejects because of the flip."""
    bundle, policy = world
    verify_evidence(bundle, nonce=NONCE, policy=policy, now=NOW)


def load_or_config_error(text: str | bytes) -> None:
    try:
        AppraisalPolicy.from_toml(text)
    except ConfigError as error:
        assert error.code == "config.invalid"


@given(st.text(max_size=1024))
def test_policy_from_random_text(text):
    load_or_config_error(text)


@given(st.binary(max_size=1024))
def test_policy_from_random_bytes(data):
    load_or_config_error(data)


toml_scalars = st.one_of(
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.text("0123456789abcdefAF", max_size=100),
    st.floats(allow_nan=False, allow_infinity=False),
)


def toml_literal(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_literal(v) for v in value) + "]"
    return repr(value)


@given(
    st.dictionaries(
        st.sampled_from(
            [
                "allow_simulated",
                "reference_measurements",
                "max_evidence_age_seconds",
                "allow_debug",
                "simulated_roots",
            ]
        ),
        toml_scalars | st.lists(toml_scalars, max_size=3),
    )
)
def test_policy_from_policy_shaped_toml(table):
    body = "".join(f"{key} = {toml_literal(value)}\n" for key, value in table.items())
    load_or_config_error("[attestation]\n" + body)
