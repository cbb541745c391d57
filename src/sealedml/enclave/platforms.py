"""TEE platforms as the enclave sees them: where its sealing secret and signed reports come from.

Only the simulated platform exists so far. On SGX (Gramine ``/dev/attestation``) and SEV-SNP/TDX
(configfs-tsm) the same :class:`~sealedml.enclave.runtime.Platform` interface is fed by hardware.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from sealedml.attestation.producers.simulated import SimulatedPlatform


class SimulatedTEE:
    """The simulated platform: a key pair on disk the host can read. It protects NOTHING."""

    tee = "simulated"
    simulated = True

    def __init__(self, platform: SimulatedPlatform) -> None:
        self._platform = platform

    @classmethod
    def open(cls, directory: Path) -> SimulatedTEE:
        """Open (creating on first use) the simulated platform state in ``directory``."""
        return cls(SimulatedPlatform.open(directory))

    @property
    def sealing_secret(self) -> bytes:
        """The simulated platform's sealing secret (readable by the host: simulation only)."""
        return self._platform.sealing_secret

    def evidence(
        self, *, measurement: str, report_data: bytes, now: float
    ) -> tuple[bytes, bytes, tuple[bytes, ...]]:
        """Return a report signed by the simulated platform chain, binding ``report_data``."""
        signed = self._platform.issue_report(
            measurement=measurement, report_data=report_data, now=datetime.fromtimestamp(now, tz=UTC)
        )
        return signed.report, signed.signature, tuple(signed.certificates)
