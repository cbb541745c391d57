"""The simulated TEE platform: a local stand-in for the CPU vendor's attestation hardware.

THIS PROTECTS NOTHING FROM THE HOST. The platform keys and the sealing secret are files the host
can read, so anyone with the directory can forge reports. It exists so that the whole attestation
path (reports, certificate chains, report_data binding, policies) runs for real in development
and tests; verifiers reject it unless a policy sets ``allow_simulated = true``.

The directory holds one state file, ``platform.json`` (mode 0600, directory 0700), with a
three-level PKI like the vendors' (ECDSA P-384, SHA-384)::

    root CA (self-signed, 10 years) -> platform CA (pathlen 0, 10 years) -> report signer (1 year)

plus a 32-byte sealing secret, and a copy of the root certificate in ``root-ca.pem`` for pinning.
The state file is created atomically on first use, so concurrent first opens agree on one root.
A report signer that has expired (or expires within 30 days) is renewed on open under the same
platform CA, so the root fingerprint never changes.

Report format (version 1): canonical JSON, ``sort_keys``, separators ``(",", ":")``, UTF-8::

    {"debug":false,"issued_at":<unix s>,"measurement":<sha384 hex>,"platform_id":<sha256 hex of
     the platform CA public key DER>,"report_data":<128 hex>,"svn":1,"tee":"simulated","version":1}

signed with ECDSA P-384 / SHA-384 by the report-signing key (DER signature).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sealedml.attestation.evidence.bundle import EvidenceBundle
from sealedml.attestation.report_data import REPORT_DATA_LENGTH, bind_report_data
from sealedml.errors import ConfigError

__all__ = [
    "CA_VALIDITY",
    "LEAF_VALIDITY",
    "REPORT_VERSION",
    "SIMULATED_SVN",
    "SIMULATED_TEE",
    "SimulatedPlatform",
    "SimulatedReport",
    "canonical_report",
]

SIMULATED_TEE = "simulated"
REPORT_VERSION = 1
SIMULATED_SVN = 1
CA_VALIDITY = timedelta(days=3650)
LEAF_VALIDITY = timedelta(days=365)
CLOCK_SKEW = timedelta(minutes=5)
"""Certificates start this long before creation, so a verifier whose clock is slightly behind accepts."""
LEAF_RENEW_MARGIN = timedelta(days=30)

ROOT_CN = "SealedML SIMULATED TEE root (NO HARDWARE PROTECTION)"
PLATFORM_CN = "SealedML SIMULATED TEE platform CA (NO HARDWARE PROTECTION)"
LEAF_CN = "SealedML SIMULATED TEE report signer (NO HARDWARE PROTECTION)"
_ORGANIZATION = "SealedML simulated TEE - protects nothing from the host"

STATE_FILE = "platform.json"
ROOT_FILE = "root-ca.pem"
_STATE_VERSION = 1
_MEASUREMENT_RE = re.compile(r"[0-9a-f]{96}")


@dataclass(frozen=True)
class SimulatedReport:
    """One signed simulated report: the exact signed bytes, the DER signature, and the chain.

    ``certificates`` is ``(leaf_der, platform_der, root_der)``.
    """

    report: bytes
    signature: bytes
    certificates: tuple[bytes, ...]


def canonical_report(fields: dict[str, object]) -> bytes:
    """Return the canonical JSON encoding used for simulated reports (sorted keys, compact, UTF-8)."""
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _issue(
    *,
    subject_cn: str,
    public_key: ec.EllipticCurvePublicKey,
    issuer: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey,
    ca: bool,
    path_length: int | None,
    start: datetime,
    validity: timedelta,
) -> x509.Certificate:
    subject = _name(subject_cn)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.subject if issuer is not None else subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + validity)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length), critical=True)
        .add_extension(_key_usage(cert_sign=ca), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False
        )
    )
    return builder.sign(issuer_key, hashes.SHA384())


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode("ascii")


def _cert_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def _write_private(directory: Path, data: bytes) -> Path:
    """Write ``data`` to a fresh 0600 temporary file in ``directory`` and return its path."""
    fd, name = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".part")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(name)
        raise
    return Path(name)


class SimulatedPlatform:
    """A simulated TEE platform (root CA, platform CA, report signer, sealing secret) in a directory.

    Construct with :meth:`open`. Instances are immutable after opening and safe to share.
    """

    tee: ClassVar[str] = SIMULATED_TEE
    simulated: ClassVar[bool] = True

    def __init__(
        self,
        *,
        root_certificate: x509.Certificate,
        platform_certificate: x509.Certificate,
        platform_key: ec.EllipticCurvePrivateKey,
        report_certificate: x509.Certificate,
        report_key: ec.EllipticCurvePrivateKey,
        sealing_secret: bytes,
    ) -> None:
        """Hold already-validated platform material; use :meth:`open` instead of calling this."""
        self._root = root_certificate
        self._platform = platform_certificate
        self._platform_key = platform_key
        self._leaf = report_certificate
        self._leaf_key = report_key
        self._sealing_secret = sealing_secret
        self._chain = tuple(
            cert.public_bytes(serialization.Encoding.DER) for cert in (self._leaf, self._platform, self._root)
        )
        platform_spki = self._platform.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self._platform_id = hashlib.sha256(platform_spki).hexdigest()

    # -- opening ----------------------------------------------------------------------------------

    @classmethod
    def open(cls, directory: Path, *, now: datetime | None = None) -> SimulatedPlatform:
        """Open the platform in ``directory``, creating it on first use.

        Guarantees: the directory exists with mode 0700 if this call created it; the state file
        is created atomically with mode 0600, so every later open (in any process) loads the same
        root CA, platform CA and sealing secret. A report signer expiring within 30 days of
        ``now`` (default: the wall clock) is renewed under the same platform CA. A corrupt or
        inconsistent state file raises ``ConfigError("config.invalid")``.
        """
        now = _aware(now) if now is not None else datetime.now(UTC)
        directory = Path(directory)
        if not directory.is_dir():
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(directory, 0o700)
        state_path = directory / STATE_FILE
        if not state_path.exists():
            cls._create_state(state_path, now)
        platform = cls._load_state(state_path)
        if platform._leaf.not_valid_after_utc - LEAF_RENEW_MARGIN <= now:
            platform = platform._renew_leaf(state_path, now)
        root_path = directory / ROOT_FILE
        if not root_path.exists():
            tmp = _write_private(directory, _cert_pem(platform._root).encode("ascii"))
            os.replace(tmp, root_path)
        return platform

    @classmethod
    def open_machine(
        cls, directory: Path, *, root_dir: Path, now: datetime | None = None
    ) -> SimulatedPlatform:
        """Open (creating on first use) another simulated *machine* under ``root_dir``'s root CA.

        Guarantees: the machine's chain ends at the same root certificate as the simulated platform
        in ``root_dir`` (created there if absent), so verifiers pinning that root accept its
        evidence; its platform CA key, report signer and 32-byte sealing secret are its own and
        fixed once created (what one machine seals, another cannot unseal; a reopened machine is
        unchanged). The root's private key is not copied into the machine. Raises
        ``config.invalid`` if either state file is unreadable or inconsistent.
        """
        now = _aware(now) if now is not None else datetime.now(UTC)
        cls.open(root_dir, now=now)
        directory = Path(directory)
        state_path = directory / STATE_FILE
        if not state_path.exists():
            root_state = Path(root_dir) / STATE_FILE
            try:
                state = json.loads(root_state.read_bytes())
                root = x509.load_pem_x509_certificate(state["root_certificate"].encode("ascii"))
                root_key = serialization.load_pem_private_key(
                    state["root_key"].encode("ascii"), password=None
                )
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
                raise ConfigError(
                    "config.invalid", f"cannot read the simulated root in {root_state}: {type(exc).__name__}"
                ) from None
            if not isinstance(root_key, ec.EllipticCurvePrivateKey):
                raise ConfigError("config.invalid", "the simulated root key is not ECDSA P-384")
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            cls._create_state(state_path, now, root=(root, root_key))
        return cls.open(directory, now=now)

    @staticmethod
    def _create_state(
        state_path: Path,
        now: datetime,
        *,
        root: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None,
    ) -> None:
        """Write a new platform state: with a fresh root CA (kept in the state), or under ``root``
        (a machine of an existing simulated vendor; the root's private key is not written)."""
        start = now.replace(microsecond=0) - CLOCK_SKEW
        platform_key, leaf_key = _new_key(), _new_key()
        if root is None:
            root_key = _new_key()
            root_certificate = _issue(
                subject_cn=ROOT_CN,
                public_key=root_key.public_key(),
                issuer=None,
                issuer_key=root_key,
                ca=True,
                path_length=None,
                start=start,
                validity=CA_VALIDITY,
            )
        else:
            root_certificate, root_key = root
        platform = _issue(
            subject_cn=PLATFORM_CN,
            public_key=platform_key.public_key(),
            issuer=root_certificate,
            issuer_key=root_key,
            ca=True,
            path_length=0,
            start=start,
            validity=CA_VALIDITY,
        )
        leaf = _issue(
            subject_cn=LEAF_CN,
            public_key=leaf_key.public_key(),
            issuer=platform,
            issuer_key=platform_key,
            ca=False,
            path_length=None,
            start=start,
            validity=LEAF_VALIDITY,
        )
        state: dict[str, Any] = {
            "version": _STATE_VERSION,
            "warning": "SIMULATED TEE: these keys protect nothing from whoever can read this file",
            "root_certificate": _cert_pem(root_certificate),
        }
        if root is None:
            state["root_key"] = _key_pem(root_key)
        state |= {
            "platform_certificate": _cert_pem(platform),
            "platform_key": _key_pem(platform_key),
            "report_certificate": _cert_pem(leaf),
            "report_key": _key_pem(leaf_key),
            "sealing_secret": secrets.token_bytes(32).hex(),
        }
        tmp = _write_private(state_path.parent, json.dumps(state, indent=2).encode("utf-8"))
        try:
            os.link(tmp, state_path)  # atomic, and fails if another process created it first
        except FileExistsError:
            pass
        finally:
            tmp.unlink()

    @classmethod
    def _load_state(cls, state_path: Path) -> SimulatedPlatform:
        def corrupt(reason: str) -> ConfigError:
            return ConfigError(
                "config.invalid", f"simulated platform state {state_path} is corrupt: {reason}"
            )

        try:
            state = json.loads(state_path.read_bytes())
        except (OSError, ValueError) as exc:
            raise corrupt(type(exc).__name__) from None
        if not isinstance(state, dict) or state.get("version") != _STATE_VERSION:
            raise corrupt("unknown state version")
        try:
            pems = {
                key: state[key].encode("ascii") for key in state if key.endswith(("_certificate", "_key"))
            }
            root = x509.load_pem_x509_certificate(pems["root_certificate"])
            platform = x509.load_pem_x509_certificate(pems["platform_certificate"])
            leaf = x509.load_pem_x509_certificate(pems["report_certificate"])
            platform_key = serialization.load_pem_private_key(pems["platform_key"], password=None)
            leaf_key = serialization.load_pem_private_key(pems["report_key"], password=None)
            sealing_secret = bytes.fromhex(state["sealing_secret"])
        except (KeyError, AttributeError, TypeError, ValueError) as exc:
            raise corrupt(type(exc).__name__) from None
        if not isinstance(platform_key, ec.EllipticCurvePrivateKey) or not isinstance(
            leaf_key, ec.EllipticCurvePrivateKey
        ):
            raise corrupt("keys must be ECDSA P-384")
        if platform_key.public_key() != platform.public_key() or leaf_key.public_key() != leaf.public_key():
            raise corrupt("a private key does not match its certificate")
        if len(sealing_secret) != 32:
            raise corrupt("sealing secret must be 32 bytes")
        try:
            platform.verify_directly_issued_by(root)
            leaf.verify_directly_issued_by(platform)
        except (ValueError, TypeError, InvalidSignature):
            raise corrupt("the certificate chain does not link root -> platform -> report signer") from None
        return cls(
            root_certificate=root,
            platform_certificate=platform,
            platform_key=platform_key,
            report_certificate=leaf,
            report_key=leaf_key,
            sealing_secret=sealing_secret,
        )

    def _renew_leaf(self, state_path: Path, now: datetime) -> SimulatedPlatform:
        leaf_key = _new_key()
        leaf = _issue(
            subject_cn=LEAF_CN,
            public_key=leaf_key.public_key(),
            issuer=self._platform,
            issuer_key=self._platform_key,
            ca=False,
            path_length=None,
            start=now.replace(microsecond=0) - CLOCK_SKEW,
            validity=LEAF_VALIDITY,
        )
        state = json.loads(state_path.read_bytes())
        state["report_certificate"] = _cert_pem(leaf)
        state["report_key"] = _key_pem(leaf_key)
        tmp = _write_private(state_path.parent, json.dumps(state, indent=2).encode("utf-8"))
        os.replace(tmp, state_path)
        return SimulatedPlatform(
            root_certificate=self._root,
            platform_certificate=self._platform,
            platform_key=self._platform_key,
            report_certificate=leaf,
            report_key=leaf_key,
            sealing_secret=self._sealing_secret,
        )

    # -- public material --------------------------------------------------------------------------

    @property
    def root_certificate_der(self) -> bytes:
        """The DER of the simulated root CA certificate (the value a client pins)."""
        return self._chain[2]

    @property
    def root_fingerprint(self) -> str:
        """SHA-256 hex (lowercase) of :attr:`root_certificate_der`: put it in ``simulated_roots``."""
        return hashlib.sha256(self._chain[2]).hexdigest()

    @property
    def platform_id(self) -> str:
        """SHA-256 hex of the platform CA's public key (SubjectPublicKeyInfo DER), as reports carry it."""
        return self._platform_id

    @property
    def certificate_chain(self) -> tuple[bytes, ...]:
        """The DER chain ``(leaf, platform CA, root)`` every report is served with."""
        return self._chain

    @property
    def sealing_secret(self) -> bytes:
        """The 32-byte secret sealing keys derive from (stands in for the CPU's fused key).

        Simulated: the host can read it from the state file.
        """
        return self._sealing_secret

    # -- reports ----------------------------------------------------------------------------------

    def issue_report(
        self, *, measurement: str, report_data: bytes, now: datetime, debug: bool = False
    ) -> SimulatedReport:
        """Sign a report binding ``measurement``, ``report_data`` (64 bytes) and ``debug`` at ``now``.

        Guarantees: the returned ``report`` is the canonical JSON documented in this module and
        ``signature`` is ECDSA P-384 / SHA-384 over exactly those bytes by the report-signing key
        whose certificate is ``certificates[0]``. Raises ``ValueError`` on a measurement that is
        not 96 lowercase hex characters, report_data that is not 64 bytes, or a naive ``now``.
        """
        if not isinstance(measurement, str) or not _MEASUREMENT_RE.fullmatch(measurement):
            raise ValueError("measurement must be 96 lowercase hex characters (SHA-384)")
        if not isinstance(report_data, bytes) or len(report_data) != REPORT_DATA_LENGTH:
            raise ValueError(f"report_data must be {REPORT_DATA_LENGTH} bytes")
        if not isinstance(debug, bool):
            raise ValueError("debug must be a bool")
        report = canonical_report(
            {
                "version": REPORT_VERSION,
                "tee": SIMULATED_TEE,
                "measurement": measurement,
                "report_data": report_data.hex(),
                "debug": debug,
                "platform_id": self._platform_id,
                "issued_at": int(_aware(now).timestamp()),
                "svn": SIMULATED_SVN,
            }
        )
        signature = self._leaf_key.sign(report, ec.ECDSA(hashes.SHA384()))
        return SimulatedReport(report=report, signature=signature, certificates=self._chain)

    def attest(
        self,
        *,
        measurement: str,
        hpke_public_key: bytes,
        signing_public_key: bytes,
        nonce: bytes,
        now: datetime,
        debug: bool = False,
    ) -> EvidenceBundle:
        """Return an :class:`EvidenceBundle` binding the enclave keys to ``nonce`` (producer convenience).

        Guarantees: the report's report_data is ``bind_report_data(hpke_public_key,
        signing_public_key, nonce)``; the bundle echoes ``nonce``. Raises ``ValueError`` on
        ill-sized keys or nonce.
        """
        signed = self.issue_report(
            measurement=measurement,
            report_data=bind_report_data(hpke_public_key, signing_public_key, nonce),
            now=now,
            debug=debug,
        )
        return EvidenceBundle(
            tee=SIMULATED_TEE,
            report=signed.report,
            signature=signed.signature,
            certificates=signed.certificates,
            hpke_public_key=hpke_public_key,
            signing_public_key=signing_public_key,
            nonce=nonce,
        )


def _aware(moment: datetime) -> datetime:
    if not isinstance(moment, datetime) or moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("time must be a timezone-aware datetime")
    return moment.astimezone(UTC)
