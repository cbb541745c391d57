"""verify_evidence: the happy path, and one test per rejection with its stable code."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Callable
from datetime import datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sealedml.attestation import verify_evidence
from sealedml.attestation.evidence.bundle import EvidenceBundle
from sealedml.attestation.evidence.simulated import verify_simulated
from sealedml.attestation.policy import AppraisalPolicy
from sealedml.attestation.producers.simulated import SimulatedPlatform, canonical_report
from sealedml.attestation.report_data import bind_report_data
from sealedml.errors import AttestationError

OTHER_MEASUREMENT = "b2" * 48


def rejects(code: str, call: Callable[[], object]) -> AttestationError:
    with pytest.raises(AttestationError) as info:
        call()
    assert info.value.code == code, info.value.diagnostics()
    return info.value


def flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


# -- the happy path -------------------------------------------------------------------------------


def test_round_trip_claims_equal_inputs(platform, bundle, nonce, keys, policy, now, measurement, caplog):
    wire = EvidenceBundle.from_json(bundle.to_json())
    with caplog.at_level(logging.WARNING, logger="sealedml.attestation"):
        result = verify_evidence(wire, nonce=nonce, policy=policy, now=now)
    claims = result.claims
    assert claims.tee == "simulated" and claims.simulated is True
    assert claims.measurement == measurement
    assert claims.report_data == bind_report_data(keys[0], keys[1], nonce)
    assert claims.debug is False
    assert claims.issued_at == now
    assert claims.svn == 1
    assert claims.root_fingerprint == platform.root_fingerprint
    assert claims.platform_id == platform.platform_id
    assert claims.raw["measurement"] == measurement
    assert (result.hpke_public_key, result.signing_public_key) == keys
    assert result.evidence == wire
    json.dumps(result.to_dict())  # printable as is
    assert result.to_dict()["claims"]["measurement"] == measurement
    assert any("SIMULATED" in record.getMessage() for record in caplog.records)


def test_issue_report_is_canonical_and_signed_by_leaf(platform, measurement, now):
    report = platform.issue_report(measurement=measurement, report_data=bytes(64), now=now, debug=True)
    fields = json.loads(report.report)
    assert canonical_report(fields) == report.report
    assert fields == {
        "version": 1,
        "tee": "simulated",
        "measurement": measurement,
        "report_data": "00" * 64,
        "debug": True,
        "platform_id": platform.platform_id,
        "issued_at": int(now.timestamp()),
        "svn": 1,
    }
    leaf, platform_ca, root = (x509.load_der_x509_certificate(der) for der in report.certificates)
    leaf.public_key().verify(report.signature, report.report, ec.ECDSA(hashes.SHA384()))
    spki = platform_ca.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert platform.platform_id == hashlib.sha256(spki).hexdigest()
    assert platform.root_fingerprint == hashlib.sha256(report.certificates[2]).hexdigest()
    assert "NO HARDWARE PROTECTION" in root.subject.rfc4514_string()


def test_debug_report_accepted_when_policy_allows(platform, keys, nonce, policy, now, measurement):
    debug_bundle = platform.attest(
        measurement=measurement,
        hpke_public_key=keys[0],
        signing_public_key=keys[1],
        nonce=nonce,
        now=now,
        debug=True,
    )
    lenient = dataclasses.replace(policy, allow_debug=True)
    assert verify_evidence(debug_bundle, nonce=nonce, policy=lenient, now=now).claims.debug is True


@pytest.mark.parametrize("age", [0, 300])
def test_evidence_within_max_age_passes(bundle, nonce, policy, now, age):
    verify_evidence(bundle, nonce=nonce, policy=policy, now=now + timedelta(seconds=age))


def test_evidence_slightly_in_the_future_passes(bundle, nonce, policy, now):
    verify_evidence(bundle, nonce=nonce, policy=policy, now=now - timedelta(seconds=60))


# -- (1) format, (2) simulated gate ---------------------------------------------------------------


def test_unknown_tee_rejected(bundle, nonce, policy, now):
    snp = dataclasses.replace(bundle, tee="keystone")
    rejects("attestation.unsupported_tee", lambda: verify_evidence(snp, nonce=nonce, policy=policy, now=now))


def test_simulated_rejected_under_strict_policy(bundle, nonce, policy, now):
    strict = dataclasses.replace(policy, allow_simulated=False)
    rejects(
        "attestation.simulated_not_allowed",
        lambda: verify_evidence(bundle, nonce=nonce, policy=strict, now=now),
    )


def test_default_policy_rejects_simulated(bundle, nonce, now, measurement):
    default = AppraisalPolicy(reference_measurements=(measurement,))
    rejects(
        "attestation.simulated_not_allowed",
        lambda: verify_evidence(bundle, nonce=nonce, policy=default, now=now),
    )


def test_simulated_gate_runs_before_any_chain_work(bundle, nonce, policy, now):
    garbage = dataclasses.replace(bundle, certificates=(b"not a certificate",), signature=b"x")
    strict = dataclasses.replace(policy, allow_simulated=False)
    rejects(
        "attestation.simulated_not_allowed",
        lambda: verify_evidence(garbage, nonce=nonce, policy=strict, now=now),
    )


# -- (3) chain and signature ----------------------------------------------------------------------


@pytest.mark.parametrize("where", [0, 40, -2])
def test_tampered_report_byte_rejected(bundle, nonce, policy, now, where):
    tampered = dataclasses.replace(bundle, report=flip(bundle.report, where % len(bundle.report)))
    rejects(
        "attestation.signature_invalid",
        lambda: verify_evidence(tampered, nonce=nonce, policy=policy, now=now),
    )


@pytest.mark.parametrize("where", [-1, 10])
def test_tampered_signature_rejected(bundle, nonce, policy, now, where):
    tampered = dataclasses.replace(bundle, signature=flip(bundle.signature, where % len(bundle.signature)))
    rejects(
        "attestation.signature_invalid",
        lambda: verify_evidence(tampered, nonce=nonce, policy=policy, now=now),
    )


def test_signature_from_another_platform_rejected(
    bundle, other_platform, nonce, policy, now, measurement, keys
):
    foreign = other_platform.attest(
        measurement=measurement, hpke_public_key=keys[0], signing_public_key=keys[1], nonce=nonce, now=now
    )
    forged = dataclasses.replace(bundle, report=foreign.report, signature=foreign.signature)
    rejects(
        "attestation.signature_invalid", lambda: verify_evidence(forged, nonce=nonce, policy=policy, now=now)
    )


def test_swapped_leaf_from_another_platform_rejected(
    bundle, other_platform, nonce, policy, now, measurement, keys
):
    foreign = other_platform.attest(
        measurement=measurement, hpke_public_key=keys[0], signing_public_key=keys[1], nonce=nonce, now=now
    )
    swapped = dataclasses.replace(foreign, certificates=(foreign.certificates[0], *bundle.certificates[1:]))
    rejects(
        "attestation.chain_invalid", lambda: verify_evidence(swapped, nonce=nonce, policy=policy, now=now)
    )


def test_whole_chain_from_unpinned_platform_rejected(other_platform, nonce, policy, now, measurement, keys):
    foreign = other_platform.attest(
        measurement=measurement, hpke_public_key=keys[0], signing_public_key=keys[1], nonce=nonce, now=now
    )
    rejects(
        "attestation.untrusted_root", lambda: verify_evidence(foreign, nonce=nonce, policy=policy, now=now)
    )


def test_root_not_pinned_rejected(bundle, other_platform, nonce, policy, now):
    pinned_elsewhere = dataclasses.replace(policy, simulated_roots=(other_platform.root_fingerprint,))
    error = rejects(
        "attestation.untrusted_root",
        lambda: verify_evidence(bundle, nonce=nonce, policy=pinned_elsewhere, now=now),
    )
    assert "simulated_roots" in error.message


def test_empty_trusted_roots_rejected(bundle, nonce, policy, now):
    rejects("attestation.untrusted_root", lambda: verify_simulated(bundle, trusted_roots=[], now=now))
    unpinned = dataclasses.replace(policy, simulated_roots=())
    rejects(
        "attestation.untrusted_root", lambda: verify_evidence(bundle, nonce=nonce, policy=unpinned, now=now)
    )


def test_verify_simulated_alone_checks_the_pin(bundle, other_platform, now):
    """verify_simulated is usable without a policy: it enforces the trust set by itself."""
    error = rejects(
        "attestation.untrusted_root",
        lambda: verify_simulated(bundle, trusted_roots={other_platform.root_fingerprint}, now=now),
    )
    assert "not pinned" in error.message
    error = rejects("attestation.untrusted_root", lambda: verify_simulated(bundle, trusted_roots=(), now=now))
    assert "empty" in error.message


def test_verify_simulated_alone_refuses_other_formats(bundle, platform, now):
    rejects(
        "attestation.unsupported_tee",
        lambda: verify_simulated(
            dataclasses.replace(bundle, tee="tdx"), trusted_roots={platform.root_fingerprint}, now=now
        ),
    )


def test_unknown_tee_rejected_before_policy(bundle, nonce, policy, now):
    """Step (1) answers even when the policy would refuse simulated evidence."""
    strict = dataclasses.replace(policy, allow_simulated=False)
    snp = dataclasses.replace(bundle, tee="keystone")
    rejects("attestation.unsupported_tee", lambda: verify_evidence(snp, nonce=nonce, policy=strict, now=now))


def test_verify_simulated_accepts_uppercase_pins(bundle, platform, now):
    claims = verify_simulated(bundle, trusted_roots={platform.root_fingerprint.upper()}, now=now)
    assert claims.root_fingerprint == platform.root_fingerprint


@pytest.mark.parametrize(
    ("shift", "expected"),
    [
        (timedelta(days=400), "expired"),
        (timedelta(days=4000), "expired"),
        (-timedelta(days=1), "not valid before"),
    ],
)
def test_certificate_outside_validity_rejected(bundle, nonce, policy, now, shift, expected):
    error = rejects(
        "attestation.certificate_expired",
        lambda: verify_evidence(bundle, nonce=nonce, policy=policy, now=now + shift),
    )
    assert expected in error.message
    rejects(
        "attestation.certificate_expired",
        lambda: verify_simulated(bundle, trusted_roots=policy.simulated_roots, now=now + shift),
    )


def test_chain_of_wrong_length_rejected(bundle, nonce, policy, now):
    short = dataclasses.replace(bundle, certificates=bundle.certificates[1:])
    rejects("attestation.chain_invalid", lambda: verify_evidence(short, nonce=nonce, policy=policy, now=now))


def test_chain_in_wrong_order_rejected(bundle, nonce, policy, now):
    leaf, platform_ca, root = bundle.certificates
    reordered = dataclasses.replace(bundle, certificates=(platform_ca, leaf, root))
    rejects(
        "attestation.chain_invalid", lambda: verify_evidence(reordered, nonce=nonce, policy=policy, now=now)
    )


def test_garbage_leaf_certificate_rejected(bundle, nonce, policy, now):
    garbage = dataclasses.replace(bundle, certificates=(b"\x30\x03\x02\x01\x00", *bundle.certificates[1:]))
    rejects("attestation.malformed", lambda: verify_evidence(garbage, nonce=nonce, policy=policy, now=now))


@pytest.mark.parametrize("position", [0, 1])
@pytest.mark.parametrize(
    ("offset", "mask"), [(12, 0x01), (15, 0x80)], ids=["x509-version-3", "negative-serial"]
)
def test_certificate_with_unparseable_fields_is_malformed(bundle, nonce, policy, now, position, offset, mask):
    """Regressions found by fuzzing: these raised InvalidVersion / a deprecation warning, not our error."""
    der = bundle.certificates[position]
    assert der[:2] == b"\x30\x82" and der[4:6] == b"\x30\x82" and der[8:13] == b"\xa0\x03\x02\x01\x02"
    assert der[13:15] == b"\x02\x14"  # a 20-byte serial follows
    certs = list(bundle.certificates)
    certs[position] = flip_bits(der, offset, mask)
    damaged = dataclasses.replace(bundle, certificates=tuple(certs))
    rejects("attestation.malformed", lambda: verify_evidence(damaged, nonce=nonce, policy=policy, now=now))


def flip_bits(data: bytes, index: int, mask: int) -> bytes:
    return data[:index] + bytes([data[index] ^ mask]) + data[index + 1 :]


def _leaf(
    platform: SimulatedPlatform,
    platform_ca_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool = False,
    digital_signature: bool = True,
    algorithm: hashes.HashAlgorithm | None = None,
    extra_critical: bool = False,
) -> tuple[bytes, ec.EllipticCurvePrivateKey]:
    issuer = x509.load_der_x509_certificate(platform.certificate_chain[1])
    key = ec.generate_private_key(ec.SECP384R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name.from_rfc4514_string("CN=test leaf"))
        .issuer_name(issuer.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(issuer.not_valid_before_utc)
        .not_valid_after(issuer.not_valid_after_utc)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=digital_signature,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )
    if extra_critical:
        builder = builder.add_extension(
            x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.55555.1"), b"\x05\x00"),
            critical=True,
        )
    cert = builder.sign(platform_ca_key, algorithm or hashes.SHA384())
    return cert.public_bytes(serialization.Encoding.DER), key


@pytest.mark.parametrize(
    "variant",
    [
        {"ca": True},
        {"digital_signature": False},
        {"algorithm": hashes.SHA256()},
        {"extra_critical": True},
    ],
    ids=["leaf-is-ca", "leaf-no-digital-signature", "sha256-signature", "unknown-critical-extension"],
)
def test_leaf_with_wrong_profile_rejected(bundle, platform, platform_ca_key, nonce, policy, now, variant):
    leaf_der, leaf_key = _leaf(platform, platform_ca_key, **variant)
    # Control: the same construction with the right profile is accepted.
    good_der, good_key = _leaf(platform, platform_ca_key)
    good = dataclasses.replace(
        bundle,
        certificates=(good_der, *bundle.certificates[1:]),
        signature=good_key.sign(bundle.report, ec.ECDSA(hashes.SHA384())),
    )
    verify_evidence(good, nonce=nonce, policy=policy, now=now)
    bad = dataclasses.replace(
        bundle,
        certificates=(leaf_der, *bundle.certificates[1:]),
        signature=leaf_key.sign(bundle.report, ec.ECDSA(hashes.SHA384())),
    )
    rejects("attestation.chain_invalid", lambda: verify_evidence(bad, nonce=nonce, policy=policy, now=now))


def test_report_naming_another_platform_rejected(bundle, resign, nonce, policy, now):
    fields = json.loads(bundle.report)
    fields["platform_id"] = "00" * 32
    forged = resign(canonical_report(fields))
    rejects("attestation.chain_invalid", lambda: verify_evidence(forged, nonce=nonce, policy=policy, now=now))


def test_signed_report_control(bundle, resign, nonce, policy, now):
    """The resign fixture itself produces acceptable evidence (so the malformed cases test the report)."""
    verify_evidence(resign(bundle.report), nonce=nonce, policy=policy, now=now)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda f: f.pop("svn"),
        lambda f: f.update(extra=1),
        lambda f: f.update(version=2),
        lambda f: f.update(version=True),
        lambda f: f.update(tee="sev-snp"),
        lambda f: f.update(measurement="A1" * 48),
        lambda f: f.update(measurement="a1" * 47),
        lambda f: f.update(report_data="00" * 63),
        lambda f: f.update(debug=0),
        lambda f: f.update(issued_at=-1),
        lambda f: f.update(issued_at=1.5),
        lambda f: f.update(svn="1"),
        lambda f: f.update(platform_id=123),
    ],
)
def test_signed_but_malformed_report_rejected(bundle, resign, nonce, policy, now, mutate):
    fields = json.loads(bundle.report)
    mutate(fields)
    forged = resign(canonical_report(fields))
    rejects("attestation.malformed", lambda: verify_evidence(forged, nonce=nonce, policy=policy, now=now))


@pytest.mark.parametrize(
    "encode",
    [
        lambda f: json.dumps(f).encode(),  # not canonical (spaces, order)
        lambda f: canonical_report(f).replace(b'"svn":1', b'"svn":1,"svn":1'),  # duplicate key
        lambda f: b"\xff" + canonical_report(f),  # not UTF-8
        lambda f: b"[]",
    ],
    ids=["non-canonical", "duplicate-key", "not-utf8", "not-object"],
)
def test_signed_but_non_canonical_report_rejected(bundle, resign, nonce, policy, now, encode):
    forged = resign(encode(json.loads(bundle.report)))
    rejects("attestation.malformed", lambda: verify_evidence(forged, nonce=nonce, policy=policy, now=now))


# -- (4) policy -----------------------------------------------------------------------------------


def test_wrong_measurement_rejected(bundle, nonce, policy, now, measurement):
    other = dataclasses.replace(policy, reference_measurements=(OTHER_MEASUREMENT,))
    error = rejects(
        "attestation.measurement_mismatch",
        lambda: verify_evidence(bundle, nonce=nonce, policy=other, now=now),
    )
    assert measurement[:16] in error.message and OTHER_MEASUREMENT[:16] in error.message


def test_debug_report_rejected_by_default(platform, keys, nonce, policy, now, measurement):
    debug_bundle = platform.attest(
        measurement=measurement,
        hpke_public_key=keys[0],
        signing_public_key=keys[1],
        nonce=nonce,
        now=now,
        debug=True,
    )
    rejects(
        "attestation.debug_not_allowed",
        lambda: verify_evidence(debug_bundle, nonce=nonce, policy=policy, now=now),
    )


def test_evidence_too_old_rejected(bundle, nonce, policy, now):
    later = now + timedelta(seconds=301)
    rejects("attestation.expired", lambda: verify_evidence(bundle, nonce=nonce, policy=policy, now=later))


def test_evidence_too_old_for_tighter_policy_rejected(bundle, nonce, policy, now):
    tight = dataclasses.replace(policy, max_evidence_age_seconds=10)
    later = now + timedelta(seconds=11)
    rejects("attestation.expired", lambda: verify_evidence(bundle, nonce=nonce, policy=tight, now=later))


def test_evidence_from_the_future_rejected(bundle, nonce, policy, now):
    earlier = now - timedelta(seconds=61)
    rejects(
        "attestation.not_yet_valid", lambda: verify_evidence(bundle, nonce=nonce, policy=policy, now=earlier)
    )


# -- (5) nonce, (6) report_data -------------------------------------------------------------------


def test_stale_nonce_rejected(bundle, policy, now):
    fresh = bytes(32)
    rejects(
        "attestation.nonce_mismatch", lambda: verify_evidence(bundle, nonce=fresh, policy=policy, now=now)
    )


def test_replayed_evidence_with_forged_nonce_echo_rejected(bundle, policy, now):
    fresh = bytes(32)
    replayed = dataclasses.replace(bundle, nonce=fresh)  # the echo is not signed; report_data is
    rejects(
        "attestation.report_data_mismatch",
        lambda: verify_evidence(replayed, nonce=fresh, policy=policy, now=now),
    )


@pytest.mark.parametrize("field", ["hpke_public_key", "signing_public_key"])
def test_report_data_bound_to_other_keys_rejected(bundle, nonce, policy, now, field):
    swapped = dataclasses.replace(bundle, **{field: bytes(32)})
    rejects(
        "attestation.report_data_mismatch",
        lambda: verify_evidence(swapped, nonce=nonce, policy=policy, now=now),
    )


# -- caller errors --------------------------------------------------------------------------------


@pytest.mark.parametrize("bad_nonce", [b"", b"x" * 15, b"x" * 65])
def test_bad_nonce_argument_is_a_caller_error(bundle, policy, now, bad_nonce):
    with pytest.raises(ValueError, match="nonce"):
        verify_evidence(bundle, nonce=bad_nonce, policy=policy, now=now)


def test_naive_time_is_a_caller_error(bundle, nonce, policy):
    with pytest.raises(ValueError, match="timezone"):
        verify_evidence(bundle, nonce=nonce, policy=policy, now=datetime(2026, 3, 1))
