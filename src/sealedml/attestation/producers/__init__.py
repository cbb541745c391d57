"""The evidence-*producing* half of attestation: what runs next to (or inside) the enclave.

- :class:`~sealedml.attestation.producers.simulated.SimulatedPlatform`: a stand-in for the CPU
  vendor's hardware that signs reports with a local key. It protects NOTHING from the host.
- :class:`~sealedml.attestation.producers.simulated.SimulatedReport`: one signed report and its chain.

The enclave imports this package, so it uses only the standard library and ``cryptography`` and
is part of the measured trusted computing base.
"""

from __future__ import annotations

from sealedml.attestation.producers.simulated import SimulatedPlatform, SimulatedReport

__all__ = ["SimulatedPlatform", "SimulatedReport"]
