"""Remote attestation: evidence formats, verifiers and appraisal policy.

Producing evidence (imported by the enclave; standard library and ``cryptography`` only, and
part of the measured trusted computing base):

- :mod:`.report_data`: ``REPORT_DATA_CONTEXT``, ``bind_report_data(hpke_pk, sign_pk, nonce)``;
- :mod:`.measurement`: ``compute_measurement(package_dir=None)``, ``tcb_manifest(package_dir=None)``;
- :mod:`.producers`: ``SimulatedPlatform`` (``open``, ``issue_report``, ``attest``), ``SimulatedReport``;
- :mod:`.evidence.bundle`: ``EvidenceBundle`` (``to_json``, ``from_json``).

Verifying evidence (relying parties: client, key broker):

- :mod:`.verifier`: ``verify_evidence(bundle, *, nonce, policy, now) -> AttestationResult``;
- :mod:`.policy`: ``AppraisalPolicy`` (``load``, ``from_toml``, ``to_toml``, ``verify``);
- :mod:`.claims`: ``Claims``, ``AttestationResult``;
- :mod:`.evidence.simulated`: ``verify_simulated(bundle, *, trusted_roots, now) -> Claims``.

The names above are importable from this package, lazily: this ``__init__`` runs inside the
enclave (and is measured), so it imports nothing until a name is asked for.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sealedml.attestation.claims import AttestationResult, Claims
    from sealedml.attestation.evidence.bundle import EvidenceBundle
    from sealedml.attestation.evidence.simulated import verify_simulated
    from sealedml.attestation.measurement import compute_measurement, tcb_manifest
    from sealedml.attestation.policy import AppraisalPolicy
    from sealedml.attestation.producers.simulated import SimulatedPlatform, SimulatedReport
    from sealedml.attestation.report_data import REPORT_DATA_CONTEXT, bind_report_data
    from sealedml.attestation.verifier import verify_evidence

_LAZY: dict[str, str] = {
    "AppraisalPolicy": "sealedml.attestation.policy",
    "AttestationResult": "sealedml.attestation.claims",
    "Claims": "sealedml.attestation.claims",
    "EvidenceBundle": "sealedml.attestation.evidence.bundle",
    "REPORT_DATA_CONTEXT": "sealedml.attestation.report_data",
    "SimulatedPlatform": "sealedml.attestation.producers.simulated",
    "SimulatedReport": "sealedml.attestation.producers.simulated",
    "bind_report_data": "sealedml.attestation.report_data",
    "compute_measurement": "sealedml.attestation.measurement",
    "tcb_manifest": "sealedml.attestation.measurement",
    "verify_evidence": "sealedml.attestation.verifier",
    "verify_simulated": "sealedml.attestation.evidence.simulated",
}

__all__ = [
    "REPORT_DATA_CONTEXT",
    "AppraisalPolicy",
    "AttestationResult",
    "Claims",
    "EvidenceBundle",
    "SimulatedPlatform",
    "SimulatedReport",
    "bind_report_data",
    "compute_measurement",
    "tcb_manifest",
    "verify_evidence",
    "verify_simulated",
]


def __getattr__(name: str) -> Any:
    """Import a public name on first use, so importing this package costs nothing."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    """List the public names (they are imported lazily)."""
    return sorted(set(globals()) | set(_LAZY))
