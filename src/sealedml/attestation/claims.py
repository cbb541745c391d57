"""Claims: what a verifier established about an enclave, and the result handed to relying parties.

A :class:`Claims` object only exists after an evidence verifier checked the signature chain to a
pinned root; it says what the evidence *asserts* (measurement, debug, freshness) and decides
nothing. :class:`~sealedml.attestation.policy.AppraisalPolicy` turns claims into a verdict, and
:class:`AttestationResult` is what :func:`~sealedml.attestation.verifier.verify_evidence` returns
once every check passed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sealedml.attestation.evidence.bundle import EvidenceBundle

__all__ = ["AttestationResult", "Claims"]


@dataclass(frozen=True)
class Claims:
    """Signed assertions extracted from verified evidence.

    - ``tee``: evidence format (``"simulated"``, ``"sev-snp"``, ``"tdx"`` or ``"sgx"``);
    - ``simulated``: True when no hardware protects the enclave (always True for ``"simulated"``);
    - ``measurement``: lowercase hex digest of the enclave code;
    - ``report_data``: the 64 bytes the enclave bound into its evidence;
    - ``debug``: whether the enclave runs in debug mode (memory readable by the host);
    - ``platform_id``: lowercase hex identifier of the platform (CPU) that signed;
    - ``issued_at``: when the evidence was produced (timezone-aware, UTC);
    - ``svn``: the platform's security version number;
    - ``root_fingerprint``: SHA-256 hex of the pinned root certificate the chain ended at;
    - ``raw``: every field of the parsed report, read-only (JSON-friendly: hex strings, ints);
    - ``tcb_status``: the vendor's TCB verdict from collateral (DCAP: ``"UpToDate"``,
      ``"SWHardeningNeeded"``, ...); ``None`` when no collateral was evaluated (simulated, SNP);
    - ``advisories``: the security advisories (e.g. ``"INTEL-SA-00615"``) that status names;
    - ``collateral_issued_at``: the oldest issue date of the collateral used (DCAP), else ``None``.

    Real TEEs sign no timestamp: their verifiers set ``issued_at`` to the verification time, and
    freshness rests on the caller's nonce bound into ``report_data``.
    """

    tee: str
    simulated: bool
    measurement: str
    report_data: bytes
    debug: bool
    platform_id: str
    issued_at: datetime
    svn: int
    root_fingerprint: str
    raw: Mapping[str, object]
    tcb_status: str | None = None
    advisories: tuple[str, ...] = ()
    collateral_issued_at: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-friendly dict (bytes as hex, time as ISO 8601 UTC)."""
        return {
            "tee": self.tee,
            "simulated": self.simulated,
            "measurement": self.measurement,
            "report_data": self.report_data.hex(),
            "debug": self.debug,
            "platform_id": self.platform_id,
            "issued_at": self.issued_at.isoformat(),
            "svn": self.svn,
            "root_fingerprint": self.root_fingerprint,
            "raw": dict(self.raw),
            "tcb_status": self.tcb_status,
            "advisories": list(self.advisories),
            "collateral_issued_at": (
                self.collateral_issued_at.isoformat() if self.collateral_issued_at else None
            ),
        }


@dataclass(frozen=True)
class AttestationResult:
    """A successful appraisal: the verified claims and the enclave keys they bind.

    ``hpke_public_key`` and ``signing_public_key`` are safe to use: the evidence's report_data
    was checked to bind them to the caller's nonce. ``evidence`` is kept for audit and display.
    """

    claims: Claims
    hpke_public_key: bytes
    signing_public_key: bytes
    evidence: EvidenceBundle

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-friendly summary for printing (``json.dumps`` accepts it as is)."""
        return {
            "claims": self.claims.to_dict(),
            "hpke_public_key": self.hpke_public_key.hex(),
            "signing_public_key": self.signing_public_key.hex(),
            "nonce": self.evidence.nonce.hex(),
            "certificates": len(self.evidence.certificates),
        }
