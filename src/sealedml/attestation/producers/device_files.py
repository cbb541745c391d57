"""Reading the pseudo-files TEE interfaces expose (Gramine's ``/dev/attestation``, configfs-tsm).

Standard library only: the enclave imports it.
"""

from __future__ import annotations

from pathlib import Path

from sealedml.errors import AttestationError, EnclaveError

__all__ = ["malformed", "read_bounded", "unavailable"]


def unavailable(message: str) -> EnclaveError:
    """The TEE interface is missing or unusable (``enclave.platform_unavailable``)."""
    return EnclaveError("enclave.platform_unavailable", message)


def malformed(message: str) -> AttestationError:
    """The interface returned something that is not well-formed evidence (``attestation.malformed``)."""
    return AttestationError("attestation.malformed", message)


def read_bounded(path: Path, limit: int, what: str) -> bytes:
    """Return the bytes of ``path``, reading at most ``limit`` of them.

    Raises ``enclave.platform_unavailable`` if the file is missing or unreadable and
    ``attestation.malformed`` if it holds more than ``limit`` bytes.
    """
    try:
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)
    except FileNotFoundError:
        raise unavailable(f"{path} does not exist: the TEE interface does not offer {what}") from None
    except OSError as exc:
        raise unavailable(f"reading {path} failed: {exc.strerror or type(exc).__name__}") from None
    if len(data) > limit:
        raise malformed(f"{what} is larger than {limit} bytes")
    return data
