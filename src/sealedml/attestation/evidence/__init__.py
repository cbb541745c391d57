"""Evidence formats: the bundle a platform serves, and one verifier module per TEE.

- :mod:`~sealedml.attestation.evidence.bundle`: :class:`EvidenceBundle`, the wire container
  (standard library only; the enclave imports it);
- :mod:`~sealedml.attestation.evidence.simulated`: ``verify_simulated``, which turns simulated
  evidence into claims (imported on demand, never by the enclave).

This ``__init__`` runs inside the enclave and is measured, so it imports nothing else.
"""

from __future__ import annotations

from sealedml.attestation.evidence.bundle import EvidenceBundle

__all__ = ["EvidenceBundle"]
