"""Verifier for simulated evidence: signature chain to a pinned root, report signature, claims.

It turns an :class:`EvidenceBundle` into :class:`Claims` and decides nothing else: whether a
simulated TEE, this measurement or debug mode is acceptable is the policy's job. Checks, in order,
each with its own code:

1. the trust set is non-empty and the chain's root fingerprint is in it (``attestation.untrusted_root``);
2. the chain leaf -> platform CA -> root links by name and signature, uses ECDSA P-384 / SHA-384,
   and has CA constraints and key usages in the right places (``attestation.chain_invalid``);
3. every certificate is valid at ``now`` (``attestation.certificate_expired``);
4. the report signature by the leaf key covers exactly the report bytes (``attestation.signature_invalid``);
5. the signed report is canonical version-1 JSON with well-typed fields (``attestation.malformed``),
   issued by the platform that certified the signer (``attestation.chain_invalid``).

Time is a parameter; this module never reads the clock.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Collection
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import ExtensionOID, SignatureAlgorithmOID

from sealedml.attestation.claims import Claims
from sealedml.attestation.evidence.bundle import EvidenceBundle
from sealedml.attestation.producers.simulated import REPORT_VERSION, SIMULATED_TEE, canonical_report
from sealedml.errors import AttestationError

__all__ = ["verify_simulated"]

_REPORT_FIELDS = frozenset(
    {"version", "tee", "measurement", "report_data", "debug", "platform_id", "issued_at", "svn"}
)
_KNOWN_CRITICAL = frozenset({ExtensionOID.BASIC_CONSTRAINTS, ExtensionOID.KEY_USAGE})
_ROLES = ("report signer", "platform CA", "root CA")
_MAX_ISSUED_AT = 2**40
_MAX_SVN = 2**32


def _hex_re(length: int) -> re.Pattern[str]:
    return re.compile(f"[0-9a-f]{{{length}}}")


_MEASUREMENT_RE, _REPORT_DATA_RE, _SHA256_RE = _hex_re(96), _hex_re(128), _hex_re(64)


def _short(hex_text: str) -> str:
    return hex_text[:16] + "…" if len(hex_text) > 16 else hex_text


def verify_simulated(bundle: EvidenceBundle, *, trusted_roots: Collection[str], now: datetime) -> Claims:
    """Check simulated evidence cryptographically and return its claims.

    Guarantees: returns only if the bundle's chain ends at a root whose SHA-256 DER fingerprint is
    in ``trusted_roots`` (an empty collection rejects everything), every link and constraint of
    the chain holds, every certificate is valid at ``now``, and the leaf key signed exactly
    ``bundle.report``. Otherwise raises ``AttestationError`` naming the failed check (see the
    module docstring). It does NOT check measurement, debug, freshness, nonce or report_data
    binding: :func:`sealedml.attestation.verifier.verify_evidence` does. Raises ``ValueError`` if
    ``now`` is naive.
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be a timezone-aware datetime")
    if bundle.tee != SIMULATED_TEE:
        raise AttestationError("attestation.unsupported_tee", f"not simulated evidence: {bundle.tee!r}")
    pinned = {root.lower() for root in trusted_roots if isinstance(root, str)}
    if not pinned:
        raise AttestationError(
            "attestation.untrusted_root", "no simulated root is pinned: an empty trust set accepts nothing"
        )
    if len(bundle.certificates) != 3:
        raise AttestationError(
            "attestation.chain_invalid",
            f"simulated evidence must carry (report signer, platform CA, root), "
            f"got {len(bundle.certificates)} certificates",
        )
    root_fingerprint = hashlib.sha256(bundle.certificates[2]).hexdigest()
    if root_fingerprint not in pinned:
        raise AttestationError(
            "attestation.untrusted_root",
            f"the evidence chains to root {_short(root_fingerprint)}, which is not pinned in simulated_roots",
        )
    leaf, platform, root = _parse_chain(bundle.certificates)
    _check_chain(leaf, platform, root)
    _check_validity((leaf, platform, root), now.astimezone(UTC))
    public_key = leaf.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey):  # already ensured by _check_chain
        raise _chain_invalid("the report signer key is not ECDSA P-384")
    try:
        public_key.verify(bundle.signature, bundle.report, ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        raise AttestationError(
            "attestation.signature_invalid", "the report signature does not verify under the report signer"
        ) from None
    fields = _parse_report(bundle.report)
    platform_spki = platform.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if fields["platform_id"] != hashlib.sha256(platform_spki).hexdigest():
        raise AttestationError(
            "attestation.chain_invalid",
            "the report names another platform than the one that certified its signer",
        )
    return Claims(
        tee=SIMULATED_TEE,
        simulated=True,
        measurement=fields["measurement"],
        report_data=bytes.fromhex(fields["report_data"]),
        debug=fields["debug"],
        platform_id=fields["platform_id"],
        issued_at=datetime.fromtimestamp(fields["issued_at"], UTC),
        svn=fields["svn"],
        root_fingerprint=root_fingerprint,
        raw=MappingProxyType(dict(fields)),
    )


def _parse_chain(ders: tuple[bytes, ...]) -> tuple[x509.Certificate, x509.Certificate, x509.Certificate]:
    certs = []
    for role, der in zip(_ROLES, ders, strict=True):
        try:
            certs.append(x509.load_der_x509_certificate(der))
        except (ValueError, x509.InvalidVersion, CryptographyDeprecationWarning):
            # The warning is raised as an exception when warnings are errors (e.g. negative serial).
            raise AttestationError(
                "attestation.malformed", f"the {role} certificate is not valid DER"
            ) from None
    return certs[0], certs[1], certs[2]


def _chain_invalid(message: str) -> AttestationError:
    return AttestationError("attestation.chain_invalid", message)


def _extensions(cert: x509.Certificate, role: str) -> x509.Extensions:
    try:
        return cert.extensions
    except (
        ValueError,
        x509.DuplicateExtension,
        x509.UnsupportedGeneralNameType,
        CryptographyDeprecationWarning,
    ):
        raise _chain_invalid(f"the {role} certificate has malformed extensions") from None


def _check_chain(leaf: x509.Certificate, platform: x509.Certificate, root: x509.Certificate) -> None:
    for role, cert in zip(_ROLES, (leaf, platform, root), strict=True):
        if cert.signature_algorithm_oid != SignatureAlgorithmOID.ECDSA_WITH_SHA384:
            raise _chain_invalid(f"the {role} certificate is not signed with ECDSA / SHA-384")
        try:
            key = cert.public_key()
        except (ValueError, UnsupportedAlgorithm):
            raise _chain_invalid(f"the {role} certificate has an unsupported public key") from None
        if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP384R1):
            raise _chain_invalid(f"the {role} certificate key is not ECDSA P-384")
        extensions = _extensions(cert, role)
        for extension in extensions:
            if extension.critical and extension.oid not in _KNOWN_CRITICAL:
                raise _chain_invalid(f"the {role} certificate has an unknown critical extension")
        is_ca = role != _ROLES[0]
        _check_constraints(extensions, role, is_ca=is_ca, max_path=0 if role == _ROLES[1] else None)
    for role, cert, issuer in (
        (_ROLES[0], leaf, platform),
        (_ROLES[1], platform, root),
        (_ROLES[2], root, root),
    ):
        try:
            cert.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
            raise _chain_invalid(
                f"the {role} certificate is not issued by the next certificate in the chain"
            ) from None


def _check_constraints(extensions: x509.Extensions, role: str, *, is_ca: bool, max_path: int | None) -> None:
    try:
        basic = extensions.get_extension_for_class(x509.BasicConstraints).value
        usage = extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        raise _chain_invalid(f"the {role} certificate lacks basicConstraints or keyUsage") from None
    if basic.ca != is_ca:
        raise _chain_invalid(f"the {role} certificate {'must' if is_ca else 'must not'} be a CA")
    if is_ca:
        if not usage.key_cert_sign:
            raise _chain_invalid(f"the {role} certificate may not sign certificates (keyUsage)")
        if max_path is not None and basic.path_length is not None and basic.path_length > max_path:
            raise _chain_invalid(f"the {role} certificate allows a longer path than expected")
    elif not usage.digital_signature:
        raise _chain_invalid(f"the {role} certificate may not sign reports (keyUsage)")


def _check_validity(chain: tuple[x509.Certificate, ...], now: datetime) -> None:
    for role, cert in zip(_ROLES, chain, strict=True):
        if now < cert.not_valid_before_utc:
            raise AttestationError(
                "attestation.certificate_expired",
                f"the {role} certificate is not valid before {cert.not_valid_before_utc.isoformat()}",
            )
        if now > cert.not_valid_after_utc:
            raise AttestationError(
                "attestation.certificate_expired",
                f"the {role} certificate expired at {cert.not_valid_after_utc.isoformat()}",
            )


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError("duplicate key")
        result[key] = value
    return result


def _parse_report(report: bytes) -> dict[str, Any]:
    def malformed(message: str) -> AttestationError:
        return AttestationError("attestation.malformed", f"signed report: {message}")

    try:
        fields = json.loads(report.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (ValueError, RecursionError):
        raise malformed("not valid JSON") from None
    if not isinstance(fields, dict) or set(fields) != _REPORT_FIELDS:
        raise malformed("fields do not match report version 1")
    if type(fields["version"]) is not int or fields["version"] != REPORT_VERSION:
        raise malformed(f"unsupported version {fields['version']!r}")
    if fields["tee"] != SIMULATED_TEE:
        raise malformed("tee is not 'simulated'")
    for name, pattern in (
        ("measurement", _MEASUREMENT_RE),
        ("report_data", _REPORT_DATA_RE),
        ("platform_id", _SHA256_RE),
    ):
        if not isinstance(fields[name], str) or not pattern.fullmatch(fields[name]):
            raise malformed(f"{name} is not lowercase hex of the right length")
    if not isinstance(fields["debug"], bool):
        raise malformed("debug is not a boolean")
    for name, limit in (("issued_at", _MAX_ISSUED_AT), ("svn", _MAX_SVN)):
        if type(fields[name]) is not int or not 0 <= fields[name] < limit:
            raise malformed(f"{name} is not a non-negative integer in range")
    if canonical_report(fields) != report:
        raise malformed("not in canonical form")
    return fields
