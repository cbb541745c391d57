"""Real TEE platforms for the enclave: Gramine-SGX, and SEV-SNP / TDX confidential VMs.

Each class implements :class:`~sealedml.enclave.runtime.Platform` (``tee``, ``simulated``,
``sealing_secret``, ``evidence``) over a producer in :mod:`sealedml.attestation.producers`.
The hardware measures what it launched, so ``evidence`` ignores the software ``measurement`` it
is given; ``report_data`` (64 bytes) goes into the signed report as is.

Where the sealing secret comes from, and what protects it:

- **SGX (Gramine)**: derived from Gramine's ``_sgx_mrenclave`` key, which the CPU derives from
  its fused secret and MRENCLAVE. Only this enclave build on this CPU can obtain it.
- **SEV-SNP and TDX confidential VMs**: configfs-tsm gives no sealing key. The secret is 32
  random bytes in a file (mode 0600) in the platform directory, created on first use. It is
  protected only by the confidential VM itself: its memory encryption while it runs and the
  encryption of the disk the file is on (which must be the CVM's encrypted disk, with a key the
  cloud host cannot read). Anyone who can read that disk's plaintext (for example root inside the
  VM, or a host holding the disk key when the disk is not confidentially encrypted) can read the
  secret. A secret released by a key broker after attestation, or SEV-SNP's derived key
  (MSG_KEY_REQ), is the stronger option; neither is implemented here.

This module imports only the standard library, :mod:`sealedml.attestation.producers` and
:mod:`sealedml.errors` (the simulated platform is imported on demand).
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Self

from sealedml.attestation.producers.configfs_tsm import (
    MAX_CERTIFICATE_SIZE,
    SEV_GUEST_PROVIDER,
    TDX_GUEST_PROVIDER,
    TSM_REPORT_ROOT,
    ConfigfsTsm,
    check_snp_report,
    check_tdx_quote,
    parse_snp_cert_table,
    snp_signing_key,
)
from sealedml.attestation.producers.gramine import ATTESTATION_ROOT, GramineAttestation
from sealedml.errors import ConfigError, EnclaveError

if TYPE_CHECKING:
    from sealedml.enclave.platforms import SimulatedTEE

__all__ = [
    "CVM_SEALING_SECRET_FILE",
    "SNP_CERTIFICATE_DIR",
    "TEE_KINDS",
    "GramineSGX",
    "SevSnpGuest",
    "TdxGuest",
    "open_platform",
]

TEE_KINDS = ("simulated", "sgx", "sev-snp", "tdx")
CVM_SEALING_SECRET_FILE = "cvm-sealing-secret"  # noqa: S105 - a file name, not a secret
SNP_CERTIFICATE_DIR = "snp-certs"
"""Optional ``vcek.der``/``vlek.der``, ``ask.der``/``asvk.der``, ``ark.der`` used when the host
supplies no certificate table (fetch them from AMD KDS, e.g. with ``snpguest fetch``)."""
_SECRET_SIZE = 32
REPORT_DATA_SIZE = 64


def _check_report_data(report_data: bytes) -> None:
    if not isinstance(report_data, bytes) or len(report_data) != REPORT_DATA_SIZE:
        raise ValueError(f"report_data must be {REPORT_DATA_SIZE} bytes")


class GramineSGX:
    """Intel SGX under Gramine: DCAP quotes from ``/dev/attestation`` and the MRENCLAVE sealing key.

    Evidence is ``(quote, b"", ())``: the quote embeds its signature and the PCK chain.
    """

    tee = "sgx"
    simulated = False

    def __init__(self, attestation: GramineAttestation) -> None:
        """Wrap an opened Gramine attestation interface; use :meth:`open` instead."""
        self._attestation = attestation
        self._sealing_secret = attestation.sealing_secret()

    @classmethod
    def open(cls, root: Path = ATTESTATION_ROOT) -> GramineSGX:
        """Open Gramine's attestation interface at ``root`` and read the sealing key once.

        Raises ``enclave.platform_unavailable`` outside Gramine-SGX, without DCAP, or when the
        sealing key cannot be read.
        """
        return cls(GramineAttestation.open(root))

    @property
    def sealing_secret(self) -> bytes:
        """32 bytes derived from the ``_sgx_mrenclave`` key: only this MRENCLAVE on this CPU gets it."""
        return self._sealing_secret

    def evidence(
        self, *, measurement: str, report_data: bytes, now: float
    ) -> tuple[bytes, bytes, tuple[bytes, ...]]:
        """Return ``(quote, b"", ())`` for a fresh DCAP quote whose REPORTDATA is ``report_data``."""
        _check_report_data(report_data)
        return self._attestation.quote(report_data), b"", ()


def _cvm_sealing_secret(platform_dir: Path) -> bytes:
    """Return the 32-byte secret in ``platform_dir``, creating it (0600, atomically) on first use."""
    directory = Path(platform_dir)
    try:
        if not directory.is_dir():
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = directory / CVM_SEALING_SECRET_FILE
        if not path.exists():
            tmp = directory / f".{CVM_SEALING_SECRET_FILE}.{secrets.token_hex(8)}.part"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, secrets.token_bytes(_SECRET_SIZE))
                os.fsync(fd)
            finally:
                os.close(fd)
            try:
                os.link(tmp, path)  # fails if another process created it first: keep theirs
            except FileExistsError:
                pass
            finally:
                tmp.unlink()
        mode = path.stat().st_mode
        with open(path, "rb") as handle:
            secret = handle.read(_SECRET_SIZE + 1)
    except OSError as exc:
        raise ConfigError(
            "config.invalid",
            f"cannot use the sealing secret in {directory}: {exc.strerror or type(exc).__name__}",
        ) from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            "config.invalid",
            f"{path} is accessible to group or others (mode {stat.S_IMODE(mode):04o}): chmod 600 it",
        )
    if len(secret) != _SECRET_SIZE:
        raise ConfigError("config.invalid", f"{path} must hold exactly {_SECRET_SIZE} bytes")
    return secret


class _ConfigfsGuest:
    """Shared part of the configfs-tsm confidential VM platforms."""

    tee = ""
    simulated = False
    _provider = ""

    def __init__(self, tsm: ConfigfsTsm, platform_dir: Path) -> None:
        """Wrap a configfs-tsm interface whose provider was checked; use ``open`` or ``from_tsm``."""
        self._tsm = tsm
        self._platform_dir = Path(platform_dir)
        self._sealing_secret = _cvm_sealing_secret(self._platform_dir)

    @classmethod
    def from_tsm(cls, tsm: ConfigfsTsm, platform_dir: Path) -> Self:
        """Build on ``tsm`` once its provider is this TEE's; load (or create) the sealing secret.

        Raises ``enclave.platform_unavailable`` when the interface is missing or is another TEE's,
        and ``config.invalid`` when the sealing secret file is unusable.
        """
        provider = tsm.provider()
        if provider != cls._provider:
            raise EnclaveError(
                "enclave.platform_unavailable",
                f"this guest's TSM provider is {provider!r}, not {cls._provider!r}: "
                "start the enclave with the --tee that matches the hardware",
            )
        return cls(tsm, platform_dir)

    @property
    def sealing_secret(self) -> bytes:
        """32 random bytes kept in the platform directory on the CVM's disk (see the module docstring).

        Protected by the confidential VM's memory and disk encryption only: not bound to the
        launch measurement by hardware.
        """
        return self._sealing_secret


class SevSnpGuest(_ConfigfsGuest):
    """An AMD SEV-SNP confidential VM: ATTESTATION_REPORT through configfs-tsm (``sev_guest``).

    Evidence is ``(report, b"", certificates)``: the 1184-byte report (its signature is inside)
    and the VCEK/VLEK, ASK/ASVK, ARK chain from the host's certificate table, or from
    ``platform_dir/snp-certs`` when the host supplies none (``()`` when neither has them: the
    verifier must then fetch the chain from AMD KDS).
    """

    tee = "sev-snp"
    _provider = SEV_GUEST_PROVIDER

    @classmethod
    def open(
        cls, platform_dir: Path, *, root: Path = TSM_REPORT_ROOT, privlevel: int | None = None
    ) -> SevSnpGuest:
        """Check that configfs-tsm at ``root`` is an SEV guest and load (or create) the sealing secret.

        ``privlevel`` is the VMPL to request reports for (default: the kernel's floor). Raises
        ``enclave.platform_unavailable`` when the interface is missing or is another TEE's.
        """
        return cls.from_tsm(ConfigfsTsm(root, privlevel=privlevel), platform_dir)

    def _cached_chain(self, signing_key: str) -> tuple[bytes, ...]:
        directory = self._platform_dir / SNP_CERTIFICATE_DIR
        names = {"vcek": ("vcek.der", "ask.der"), "vlek": ("vlek.der", "asvk.der")}.get(signing_key)
        if names is None or not directory.is_dir():
            return ()
        chain = []
        for name in (*names, "ark.der"):
            path = directory / name
            try:
                with open(path, "rb") as handle:
                    der = handle.read(MAX_CERTIFICATE_SIZE + 1)
            except OSError:
                return ()
            if not der or len(der) > MAX_CERTIFICATE_SIZE:
                return ()
            chain.append(der)
        return tuple(chain)

    def evidence(
        self, *, measurement: str, report_data: bytes, now: float
    ) -> tuple[bytes, bytes, tuple[bytes, ...]]:
        """Return ``(report, b"", chain)`` for a fresh report whose REPORT_DATA is ``report_data``."""
        _check_report_data(report_data)
        answer = self._tsm.report(report_data, provider=SEV_GUEST_PROVIDER)
        report = check_snp_report(answer.outblob)
        signing_key = snp_signing_key(report)
        chain = parse_snp_cert_table(answer.auxblob).chain(signing_key)
        if len(chain) < 3:
            chain = self._cached_chain(signing_key) or chain
        return report, b"", chain


class TdxGuest(_ConfigfsGuest):
    """An Intel TDX trust domain: the DCAP TD quote through configfs-tsm (``tdx_guest``).

    Evidence is ``(quote, b"", ())``: the quote embeds its signature and the PCK chain. The
    kernel obtains the quote from the host's quoting service (QGS); the host can refuse, never forge.
    """

    tee = "tdx"
    _provider = TDX_GUEST_PROVIDER

    @classmethod
    def open(cls, platform_dir: Path, *, root: Path = TSM_REPORT_ROOT) -> TdxGuest:
        """Check that configfs-tsm at ``root`` is a TDX guest and load (or create) the sealing secret.

        Raises ``enclave.platform_unavailable`` when the interface is missing or is another TEE's.
        """
        return cls.from_tsm(ConfigfsTsm(root), platform_dir)

    def evidence(
        self, *, measurement: str, report_data: bytes, now: float
    ) -> tuple[bytes, bytes, tuple[bytes, ...]]:
        """Return ``(quote, b"", ())`` for a fresh TD quote whose REPORTDATA is ``report_data``."""
        _check_report_data(report_data)
        answer = self._tsm.report(report_data, provider=TDX_GUEST_PROVIDER)
        return check_tdx_quote(answer.outblob), b"", ()


def open_platform(
    kind: str, platform_dir: Path, *, root: Path | None = None
) -> SimulatedTEE | GramineSGX | SevSnpGuest | TdxGuest:
    """Open the enclave's platform of ``kind`` ("simulated", "sgx", "sev-snp" or "tdx").

    ``root`` replaces the hardware interface's location (``/dev/attestation`` for SGX,
    ``/sys/kernel/config/tsm/report`` for SNP/TDX); it exists for tests and is refused for the
    simulated platform. Raises ``ConfigError("config.invalid")`` for an unknown kind and
    ``EnclaveError("enclave.platform_unavailable")`` when the hardware interface is unusable.
    """
    if kind == "simulated":
        if root is not None:
            raise ConfigError("config.invalid", "--tee-root applies only to hardware TEEs")
        from sealedml.enclave.platforms import SimulatedTEE

        return SimulatedTEE.open(platform_dir)
    if kind == "sgx":
        return GramineSGX.open(root if root is not None else ATTESTATION_ROOT)
    if kind == "sev-snp":
        return SevSnpGuest.open(platform_dir, root=root if root is not None else TSM_REPORT_ROOT)
    if kind == "tdx":
        return TdxGuest.open(platform_dir, root=root if root is not None else TSM_REPORT_ROOT)
    raise ConfigError("config.invalid", f"unknown TEE {kind!r} (choose from {', '.join(TEE_KINDS)})")
