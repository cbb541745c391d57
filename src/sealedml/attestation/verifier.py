"""The one entry point relying parties call to appraise an enclave's evidence."""

from __future__ import annotations

import hmac
import logging
from datetime import datetime

from sealedml.attestation.claims import AttestationResult, Claims
from sealedml.attestation.evidence.bundle import EvidenceBundle
from sealedml.attestation.evidence.simulated import verify_simulated
from sealedml.attestation.policy import AppraisalPolicy
from sealedml.attestation.report_data import NONCE_MAX_LENGTH, NONCE_MIN_LENGTH, bind_report_data
from sealedml.errors import AttestationError

__all__ = ["SUPPORTED_TEES", "verify_claims", "verify_evidence"]

logger = logging.getLogger("sealedml.attestation")

SUPPORTED_TEES = frozenset({"simulated", "sev-snp", "tdx", "sgx"})
"""Evidence formats this verifier understands."""


def verify_claims(bundle: EvidenceBundle, *, policy: AppraisalPolicy, now: datetime) -> Claims:
    """Check the evidence cryptographically (format, chain to a pinned root, signature, vendor TCB
    collateral) and return what it asserts. The policy's reference values are NOT applied here.

    Guarantees: returns only claims whose signature chain ends at a pinned root (the policy's
    ``simulated_roots`` for the simulated TEE; AMD's ARKs and Intel's SGX root CA, pinned in code,
    for real TEEs), valid at ``now``. Raises ``AttestationError`` naming the failed check.
    """
    if bundle.tee not in SUPPORTED_TEES:
        raise AttestationError(
            "attestation.unsupported_tee",
            f"evidence format {bundle.tee!r} is not supported "
            f"(supported: {', '.join(sorted(SUPPORTED_TEES))})",
        )
    if bundle.tee == "simulated":
        return verify_simulated(bundle, trusted_roots=policy.simulated_roots, now=now)
    if bundle.signature:
        raise AttestationError(
            "attestation.malformed",
            f"{bundle.tee} evidence embeds its signature: the signature field must be empty",
        )
    if bundle.tee == "sev-snp":
        from sealedml.attestation.evidence.snp import verify_snp

        return verify_snp(bundle.report, certificates=bundle.certificates, now=now)
    from sealedml.attestation.evidence.dcap import verify_dcap

    claims = verify_dcap(bundle.report, collateral=bundle.collateral or None, now=now)
    if claims.tee != bundle.tee:
        raise AttestationError(
            "attestation.malformed", f"the bundle says {bundle.tee} but carries a {claims.tee} quote"
        )
    return claims


def verify_evidence(
    bundle: EvidenceBundle, *, nonce: bytes, policy: AppraisalPolicy, now: datetime
) -> AttestationResult:
    """Appraise ``bundle`` against ``policy`` for the challenge ``nonce`` at time ``now``.

    Steps, in order; each failure raises ``AttestationError`` with its own code:

    1. the evidence format is known (``attestation.unsupported_tee``);
    2. simulated evidence is refused unless ``policy.allow_simulated``, before any work
       (``attestation.simulated_not_allowed``);
    3. the certificate chain to a pinned root and the report signature hold, and for DCAP quotes
       the vendor collateral (``attestation.untrusted_root``, ``attestation.chain_invalid``,
       ``attestation.certificate_expired``, ``attestation.signature_invalid``,
       ``attestation.tcb_mismatch``, ``attestation.collateral_*``, ``attestation.malformed``);
    4. the policy accepts the claims: measurement and other reference values, debug flag, TCB
       status and advisories, age (``attestation.measurement_mismatch``,
       ``attestation.no_reference_values``, ``attestation.policy_mismatch``,
       ``attestation.debug_not_allowed``, ``attestation.tcb_status_not_allowed``,
       ``attestation.tcb_too_low``, ``attestation.expired``, ``attestation.not_yet_valid``);
    5. the bundle echoes ``nonce`` (``attestation.nonce_mismatch``: stale or replayed evidence);
    6. the signed report_data equals ``bind_report_data(hpke_pk, signing_pk, nonce)``
       (``attestation.report_data_mismatch``: the served keys are not the attested ones).

    Guarantees: returns only when every step passed, so the result's public keys belong to an
    enclave with a reference measurement that answered this very nonce. Never reads the clock.
    Raises ``ValueError`` for caller errors (a nonce outside 16..64 bytes, a naive ``now``).
    Accepting simulated evidence logs a WARNING on the ``sealedml.attestation`` logger.
    """
    if not isinstance(nonce, bytes) or not NONCE_MIN_LENGTH <= len(nonce) <= NONCE_MAX_LENGTH:
        raise ValueError(f"nonce must be {NONCE_MIN_LENGTH}..{NONCE_MAX_LENGTH} bytes")
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be a timezone-aware datetime")

    # (1) Known evidence format.
    if bundle.tee not in SUPPORTED_TEES:
        raise AttestationError(
            "attestation.unsupported_tee",
            f"evidence format {bundle.tee!r} is not supported "
            f"(supported: {', '.join(sorted(SUPPORTED_TEES))})",
        )

    # (2) Simulated evidence protects nothing: refuse it before spending any effort.
    if bundle.tee == "simulated" and not policy.allow_simulated:
        raise AttestationError(
            "attestation.simulated_not_allowed",
            "the evidence comes from the SIMULATED TEE, which protects nothing from the host",
        )

    # (3) Chain to a pinned root, the report signature, and (DCAP) the vendor's TCB collateral.
    claims = verify_claims(bundle, policy=policy, now=now)

    # (4) Reference values: measurement, debug, freshness of the report.
    policy.verify(claims, now=now)

    # (5) The echoed nonce answers our challenge (a precise message; step 6 is the real check).
    if not hmac.compare_digest(bundle.nonce, nonce):
        raise AttestationError(
            "attestation.nonce_mismatch", "the evidence answers another challenge than this one"
        )

    # (6) The signed report_data binds the served keys to our nonce.
    expected = bind_report_data(bundle.hpke_public_key, bundle.signing_public_key, nonce)
    if not hmac.compare_digest(claims.report_data, expected):
        raise AttestationError(
            "attestation.report_data_mismatch",
            "the evidence does not bind the public keys the enclave served to this nonce",
        )

    if claims.simulated:
        logger.warning(
            "accepted SIMULATED TEE evidence (measurement %s…): it protects nothing from the host",
            claims.measurement[:16],
        )
    return AttestationResult(
        claims=claims,
        hpke_public_key=bundle.hpke_public_key,
        signing_public_key=bundle.signing_public_key,
        evidence=bundle,
    )
