"""Appraise an evidence file offline: what ``sealedml attest verify EVIDENCE`` runs.

Accepts the four evidence types as they come off the wire or out of a device:

- an evidence bundle (JSON, any TEE type, with the enclave keys it binds);
- a raw AMD SEV-SNP ATTESTATION_REPORT (1184 bytes), with its VCEK/VLEK + ASK/ASVK + ARK chain;
- a raw Intel TDX (v4/v5) or SGX (v3) DCAP quote, with optional collateral JSON.

The result keeps the verified claims even when the policy refuses them, so a person can see *why*.
"""

from __future__ import annotations

import hmac
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sealedml.attestation.claims import Claims
from sealedml.attestation.evidence.bundle import EvidenceBundle
from sealedml.attestation.policy import AppraisalPolicy
from sealedml.attestation.report_data import bind_report_data
from sealedml.attestation.verifier import verify_claims, verify_evidence
from sealedml.errors import AttestationError

__all__ = ["Appraisal", "appraise", "detect_format"]

SNP_REPORT_SIZE = 0x4A0
_DCAP_TEE_TYPES = {0x00000000: "sgx", 0x00000081: "tdx"}


@dataclass(frozen=True)
class Appraisal:
    """The outcome of an offline appraisal.

    - ``format``: ``"bundle"``, ``"sev-snp"``, ``"tdx"`` or ``"sgx"``;
    - ``claims``: the verified claims, or None when the evidence itself did not verify;
    - ``error``: None when accepted, else the first failed check;
    - ``binding``: what report_data was checked against (``"enclave keys and nonce"``,
      ``"expected report_data"``, or ``"not checked"``).
    """

    format: str
    claims: Claims | None
    error: AttestationError | None
    binding: str

    @property
    def accepted(self) -> bool:
        """True only if the evidence verified and the policy accepted it."""
        return self.error is None and self.claims is not None


def detect_format(data: bytes) -> str:
    """Name the evidence type of ``data`` from its structure, or raise ``attestation.malformed``."""
    if data[:1] == b"{":
        return "bundle"
    if len(data) >= 8:
        version, key_type, tee_type = struct.unpack_from("<HHI", data, 0)
        if version in (3, 4, 5) and key_type == 2 and tee_type in _DCAP_TEE_TYPES:
            return _DCAP_TEE_TYPES[tee_type]
    if len(data) == SNP_REPORT_SIZE and int.from_bytes(data[:4], "little") in (2, 3, 4, 5):
        return "sev-snp"
    raise AttestationError(
        "attestation.malformed",
        "cannot tell the evidence type: expected an evidence bundle (JSON), a 1184-byte SEV-SNP "
        "report, or a DCAP quote (SGX v3, TDX v4/v5)",
    )


def appraise(
    evidence: bytes,
    *,
    policy: AppraisalPolicy,
    now: datetime,
    certificates: Sequence[bytes] = (),
    collateral: bytes | None = None,
    nonce: bytes | None = None,
    expected_report_data: bytes | None = None,
) -> Appraisal:
    """Verify ``evidence`` at ``now`` and appraise it under ``policy``; never raises for a refusal.

    Guarantees: ``accepted`` is True only if the signature chain ends at a pinned vendor root, the
    vendor collateral (if any) holds, the policy's reference values accept the claims, and the
    report_data matches whatever was available to check it against (the bundle's keys and
    ``nonce``, else ``expected_report_data``). Malformed input gives ``attestation.malformed``.
    ``certificates`` (DER) and ``collateral`` apply to raw reports and quotes only.
    """
    kind = detect_format(evidence)
    if kind == "bundle":
        return _appraise_bundle(EvidenceBundle.from_json(evidence), policy=policy, now=now, nonce=nonce)
    claims: Claims | None = None
    try:
        if kind == "sev-snp":
            from sealedml.attestation.evidence.snp import verify_snp

            claims = verify_snp(evidence, certificates=list(certificates), now=now)
        else:
            from sealedml.attestation.evidence.dcap import verify_dcap

            claims = verify_dcap(evidence, collateral=collateral, now=now)
        policy.verify(claims, now=now)
        binding = "not checked"
        if expected_report_data is not None:
            binding = "expected report_data"
            if not hmac.compare_digest(claims.report_data, expected_report_data.ljust(64, b"\0")):
                raise AttestationError(
                    "attestation.report_data_mismatch",
                    f"report_data {claims.report_data.hex()[:16]}… is not the expected "
                    f"{expected_report_data.hex()[:16]}…",
                )
    except AttestationError as exc:
        return Appraisal(kind, claims, exc, "expected report_data" if expected_report_data else "not checked")
    return Appraisal(kind, claims, None, binding)


def _appraise_bundle(
    bundle: EvidenceBundle, *, policy: AppraisalPolicy, now: datetime, nonce: bytes | None
) -> Appraisal:
    claims: Claims | None = None
    try:
        if nonce is not None:
            result = verify_evidence(bundle, nonce=nonce, policy=policy, now=now)
            return Appraisal("bundle", result.claims, None, "enclave keys and nonce")
        claims = verify_claims(bundle, policy=policy, now=now)
        policy.verify(claims, now=now)
        expected = bind_report_data(bundle.hpke_public_key, bundle.signing_public_key, bundle.nonce)
        if not hmac.compare_digest(claims.report_data, expected):
            raise AttestationError(
                "attestation.report_data_mismatch",
                "the evidence does not bind the public keys the bundle carries",
            )
    except AttestationError as exc:
        if claims is None and nonce is not None:
            try:
                claims = verify_claims(bundle, policy=policy, now=now)
            except AttestationError:
                claims = None
        return Appraisal("bundle", claims, exc, "enclave keys and nonce" if nonce else "enclave keys")
    return Appraisal("bundle", claims, None, "enclave keys (nonce not given: freshness unproven)")
