"""Verifier for AMD SEV-SNP evidence: report, VCEK/VLEK chain to a pinned AMD ARK, claims.

Checks, in AMD's order, each failure an ``AttestationError`` naming the check:

1. the report parses (:func:`~sealedml.attestation.evidence.snp_report.parse_snp_report`,
   ``attestation.malformed``);
2. the chain [VCEK or VLEK, ASK or ASVK, ARK]: the ARK's SHA-256 DER fingerprint is pinned in
   ``trusted_arks`` (``attestation.untrusted_root``); the ARK is self-signed, the ASK/ASVK is
   issued by it and the VCEK/VLEK by the ASK/ASVK, by name and by RSA-PSS signature, with product
   names consistent with the pinned ARK ("ARK-Milan", "SEV-Milan", "SEV-VLEK-Milan") and the
   report's ``SIGNING_KEY`` matching the leaf kind (``attestation.chain_invalid``); every
   certificate is valid at ``now`` (``attestation.certificate_expired``);
3. the ECDSA P-384 / SHA-384 report signature over bytes [0, 0x2A0) verifies under the leaf key
   (``attestation.signature_invalid``);
4. the leaf's TCB extensions equal the report's ``reported_tcb`` (``attestation.tcb_mismatch``);
   a VCEK's hwID equals ``chip_id`` unless the host masked it (MASK_CHIP_ID: all-zero
   ``chip_id``), and a version 3+ report's CPUID names the ARK's product
   (``attestation.platform_mismatch``).

Sources: AMD *SEV-SNP Firmware ABI Specification* (pub. 56860) and *VCEK Certificate and KDS
Interface Specification* (pub. 57230). AMD CRLs are not checked (none are shipped offline).
Time is a parameter; this module never reads the clock.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from types import MappingProxyType

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import NameOID, SignatureAlgorithmOID

from sealedml.attestation.claims import Claims
from sealedml.attestation.evidence.snp_report import (
    SIGNED_SIZE,
    SIGNING_KEY_NONE,
    SIGNING_KEY_VCEK,
    SnpReport,
    decode_tcb,
    parse_snp_report,
)
from sealedml.errors import AttestationError

__all__ = ["AMD_ARK_FINGERPRINTS", "SNP_TEE", "load_certificates", "parse_snp_report", "verify_snp"]

SNP_TEE = "sev-snp"
AMD_ARK_FINGERPRINTS: Mapping[str, str] = MappingProxyType(
    {
        "Milan": "69d063b45344d26a2e94e1f4210de49ef555308287d4c174445c95639a540bcd",
        "Genoa": "4c6598d19c18719c5dfd4a7d335f674e5bfe1d8f800cea2cf270c10d103db2f1",
        "Turin": "1f084161a44bb6d93778a904877d4819cafa5d05ef4193b2ded9dd9c73dd3f6a",
    }
)
"""SHA-256 of AMD's ARK certificates (DER), as served by ``kdsintf.amd.com/vcek/v1/<product>/cert_chain``."""

_PRODUCTS = frozenset(AMD_ARK_FINGERPRINTS)
_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)
_AMD_OID = "1.3.6.1.4.1.3704.1."
_OID_PRODUCT_NAME = x509.ObjectIdentifier(_AMD_OID + "2")
_OID_HWID = x509.ObjectIdentifier(_AMD_OID + "4")
_TCB_OIDS = {
    "bootloader": x509.ObjectIdentifier(_AMD_OID + "3.1"),
    "tee": x509.ObjectIdentifier(_AMD_OID + "3.2"),
    "snp": x509.ObjectIdentifier(_AMD_OID + "3.3"),
    "microcode": x509.ObjectIdentifier(_AMD_OID + "3.8"),
    "fmc": x509.ObjectIdentifier(_AMD_OID + "3.9"),  # Turin only
}
_HWID_SIZE = {"Milan": 64, "Genoa": 64, "Turin": 8}  # go-sev-guest kds.TurinHWIDSize
# CPUID family -> (first model, last model, product), from virtee/snpguest src/fetch.rs
# get_processor_model (the same table is in virtee/sev): Genoa's row includes 0xA0-0xAF
# (Bergamo, Siena), which AMD certifies under the Genoa ARK/KDS endpoint.
_CPUID_PRODUCTS = (
    (0x19, 0x00, 0x0F, "Milan"),
    (0x19, 0x10, 0x1F, "Genoa"),
    (0x19, 0xA0, 0xAF, "Genoa"),
    (0x1A, 0x00, 0x11, "Turin"),
)
# AMD's KDS issues VCEK/VLEK certificates with serial number 0, which RFC 5280 forbids; cryptography
# warns about it (CryptographyDeprecationWarning) when loading them and when reading serial_number,
# which this module never does. It is AMD's known encoding, not tampering: the issuer's signature
# still authenticates the certificate. So that one warning, matched by message, is ignored around
# certificate loading only (warnings.catch_warnings is process-wide while active); any other
# warning still reaches the caller's filters.
_SERIAL_WARNING = r"Parsed a serial number which wasn't positive"


@contextmanager
def _amd_serial_numbers_tolerated() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_SERIAL_WARNING, category=CryptographyDeprecationWarning)
        yield


def _error(code: str, message: str) -> AttestationError:
    return AttestationError(f"attestation.{code}", message)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _short(data: bytes) -> str:
    return data.hex()[:16] + "…"


_PARSE_ERRORS = (
    ValueError,
    TypeError,
    x509.InvalidVersion,
    x509.DuplicateExtension,
    x509.UnsupportedGeneralNameType,
    UserWarning,
)
"""What decoding a bad certificate raises: TypeError for a name attribute of an impossible type
(a BIT STRING under another OID than uniqueIdentifier), and warnings for defects cryptography
only warns about (a country name that is not 2 letters, a negative serial number), which arrive
as exceptions when warnings are errors."""


def _decoded(cert: x509.Certificate) -> x509.Certificate:
    # cryptography decodes names, validity and extensions on first access (and caches them):
    # decode them now, so that a corrupt certificate fails here as malformed, never later in the
    # middle of a chain check, and an AMD serial-number warning from an extension is tolerated too.
    _ = (cert.subject, cert.issuer, cert.not_valid_before_utc, cert.not_valid_after_utc, cert.extensions)
    return cert


def load_certificates(data: bytes) -> list[bytes]:
    """Turn PEM (one or several certificates) or one DER certificate into a list of DER certificates.

    Guarantees: every returned item parses as an X.509 certificate with well-formed names and
    validity, in input order; anything else (junk, an empty PEM, a non-certificate PEM block
    only) raises ``AttestationError("attestation.malformed")`` and nothing else.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise _error("malformed", f"certificates must be bytes, got {type(data).__name__}")
    data = bytes(data)
    with _amd_serial_numbers_tolerated():
        try:
            if b"-----BEGIN" in data:
                certs = x509.load_pem_x509_certificates(data)
            else:
                certs = [x509.load_der_x509_certificate(data)]
            return [_decoded(cert).public_bytes(serialization.Encoding.DER) for cert in certs]
        except _PARSE_ERRORS:
            raise _error("malformed", "not a PEM or DER X.509 certificate") from None


def _load_chain(certificates: Sequence[bytes]) -> tuple[x509.Certificate, x509.Certificate, x509.Certificate]:
    if isinstance(certificates, bytes | str) or len(certificates) != 3:
        count = "one blob" if isinstance(certificates, bytes | str) else f"{len(certificates)} certificates"
        raise _error("chain_invalid", f"SEV-SNP evidence needs [VCEK or VLEK, ASK or ASVK, ARK], got {count}")
    loaded = []
    for role, der in zip(("leaf (VCEK/VLEK)", "ASK/ASVK", "ARK"), certificates, strict=True):
        if not isinstance(der, bytes | bytearray | memoryview):
            raise _error("malformed", f"the {role} certificate must be DER bytes")
        with _amd_serial_numbers_tolerated():
            try:
                loaded.append(_decoded(x509.load_der_x509_certificate(bytes(der))))
            except _PARSE_ERRORS:
                raise _error("malformed", f"the {role} certificate is not valid DER") from None
    return loaded[0], loaded[1], loaded[2]


def _common_name(cert: x509.Certificate, which: str = "subject") -> str:
    names = (cert.issuer if which == "issuer" else cert.subject).get_attributes_for_oid(NameOID.COMMON_NAME)
    value = names[0].value if len(names) == 1 else None
    return value if isinstance(value, str) else ""


def _amd_extension(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> bytes | None:
    try:
        value = cert.extensions.get_extension_for_oid(oid).value
    except x509.ExtensionNotFound:
        return None
    return value.value if isinstance(value, x509.UnrecognizedExtension) else None


def _check_root(ark: x509.Certificate, ark_der: bytes, trusted_arks: Mapping[str, str]) -> tuple[str, str]:
    fingerprint = hashlib.sha256(ark_der).hexdigest()
    pinned = {fp.lower(): product for product, fp in trusted_arks.items()}
    product = pinned.get(fingerprint)
    if product is None:
        claimed = _common_name(ark) or "an unnamed certificate"
        raise _error(
            "untrusted_root",
            f"the chain ends at {claimed} with SHA-256 {fingerprint}, which is not a pinned AMD ARK "
            f"(pinned: {', '.join(sorted(trusted_arks)) or 'none'})",
        )
    if _common_name(ark) != f"ARK-{product}" or ark.issuer != ark.subject:
        raise _error("chain_invalid", f"the pinned {product} ARK is not a self-issued ARK-{product}")
    _verify_issued(ark, ark, "ARK", "ARK")
    return product, fingerprint


def _der_end(data: bytes, offset: int) -> tuple[int, int]:
    """Return (content start, element end) of the DER element at ``offset`` (single-byte tags)."""
    length, start = data[offset + 1], offset + 2
    if length & 0x80:
        count = length & 0x7F
        length, start = int.from_bytes(data[start : start + count], "big"), start + count
    if start + length > len(data):
        raise ValueError("DER element overruns its container")
    return start, start + length


def _unsigned_fields_canonical(cert: x509.Certificate) -> bool:
    """Pin the bytes the issuer's signature does not cover: the outer signatureAlgorithm must equal
    the signed one in the TBS (RFC 5280 4.1.1.2) and the signature BIT STRING has no unused bits."""
    der, tbs = cert.public_bytes(serialization.Encoding.DER), cert.tbs_certificate_bytes
    try:
        tbs_end = _der_end(der, _der_end(der, 0)[0])[1]
        algorithm_end = _der_end(der, tbs_end)[1]
        outer = der[tbs_end:algorithm_end]
        no_unused_bits = der[_der_end(der, algorithm_end)[0]] == 0
        offset = _der_end(tbs, 0)[0]
        if tbs[offset] == 0xA0:  # [0] version
            offset = _der_end(tbs, offset)[1]
        offset = _der_end(tbs, offset)[1]  # serialNumber
        return no_unused_bits and outer == tbs[offset : _der_end(tbs, offset)[1]]
    except (IndexError, ValueError):
        return False


def _verify_issued(cert: x509.Certificate, issuer: x509.Certificate, role: str, issuer_role: str) -> None:
    try:
        hash_algorithm = cert.signature_hash_algorithm
        key = issuer.public_key()
    except (ValueError, UnsupportedAlgorithm):
        hash_algorithm, key = None, None
    if cert.signature_algorithm_oid != SignatureAlgorithmOID.RSASSA_PSS or not isinstance(
        hash_algorithm, hashes.SHA384
    ):
        raise _error("chain_invalid", f"the {role} certificate is not signed with RSA-PSS / SHA-384")
    if not _unsigned_fields_canonical(cert):
        raise _error(
            "chain_invalid",
            f"the {role} certificate's unsigned signature algorithm or signature encoding was altered",
        )
    if not isinstance(key, rsa.RSAPublicKey):
        raise _error("chain_invalid", f"the {issuer_role} certificate does not hold an RSA key")
    try:
        key.verify(cert.signature, cert.tbs_certificate_bytes, _PSS, hashes.SHA384())
    except InvalidSignature:
        raise _error(
            "chain_invalid", f"the {role} certificate's signature does not verify under the {issuer_role} key"
        ) from None


def _check_ca(cert: x509.Certificate, role: str) -> None:
    extensions = cert.extensions
    try:
        basic = extensions.get_extension_for_class(x509.BasicConstraints).value
        usage = extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        raise _error("chain_invalid", f"the {role} certificate lacks basicConstraints or keyUsage") from None
    if not basic.ca or not usage.key_cert_sign:
        raise _error("chain_invalid", f"the {role} certificate is not a CA allowed to sign certificates")


def _check_chain(
    leaf: x509.Certificate, ask: x509.Certificate, ark: x509.Certificate, product: str
) -> tuple[str, str]:
    """Check names, CA flags and signatures below the pinned ARK; return (leaf kind, ASK role)."""
    ask_name = _common_name(ask)
    if ask_name == f"SEV-{product}":
        kind, ask_role = "VCEK", "ASK"
    elif ask_name == f"SEV-VLEK-{product}":
        kind, ask_role = "VLEK", "ASVK"
    else:
        raise _error(
            "chain_invalid",
            f"the intermediate certificate {ask_name!r} is neither SEV-{product} (ASK) nor "
            f"SEV-VLEK-{product} (ASVK) under the pinned ARK-{product}",
        )
    if ask.issuer != ark.subject:
        raise _error("chain_invalid", f"the {ask_role} {ask_name} is not issued by ARK-{product}")
    _check_ca(ark, "ARK")
    _check_ca(ask, ask_role)
    _verify_issued(ask, ark, ask_role, "ARK")
    if _common_name(leaf) != f"SEV-{kind}":
        raise _error(
            "chain_invalid",
            f"the leaf certificate {_common_name(leaf)!r} is not a {kind}, yet its chain goes "
            f"through the {ask_role} {ask_name}",
        )
    if leaf.issuer != ask.subject:
        raise _error(
            "chain_invalid",
            f"the {kind} is issued by {_common_name(leaf, 'issuer')!r}, not by the {ask_role} {ask_name}",
        )
    _verify_issued(leaf, ask, kind, ask_role)
    for role, cert in ((kind, leaf), (ask_role, ask), ("ARK", ark)):
        if any(ext.critical and not ext.oid.dotted_string.startswith("2.5.29.") for ext in cert.extensions):
            raise _error("chain_invalid", f"the {role} certificate has an unknown critical extension")
    name = _amd_extension(leaf, _OID_PRODUCT_NAME)
    ia5 = name is not None and name[:1] == b"\x16" and name[1:2] == bytes([len(name) - 2])
    if name is not None and not (ia5 and name[2:].split(b"-")[0] == product.encode()):
        raise _error("chain_invalid", f"the {kind}'s productName extension does not name {product}")
    return kind, ask_role


def _check_validity(chain: Sequence[tuple[str, x509.Certificate]], now: datetime) -> None:
    for role, cert in chain:
        if now < cert.not_valid_before_utc:
            raise _error(
                "certificate_expired",
                f"the {role} certificate is not valid before {_iso(cert.not_valid_before_utc)} "
                f"(now {_iso(now)})",
            )
        if now > cert.not_valid_after_utc:
            raise _error(
                "certificate_expired",
                f"the {role} certificate expired at {_iso(cert.not_valid_after_utc)} (now {_iso(now)})",
            )


def _check_signing_key(report: SnpReport, kind: str) -> None:
    if report.mask_chip_key or report.signing_key == SIGNING_KEY_NONE:
        raise _error(
            "signature_invalid",
            "the report is unsigned: the firmware masked its signing key (MASK_CHIP_KEY or SIGNING_KEY 7)",
        )
    claimed = "VCEK" if report.signing_key == SIGNING_KEY_VCEK else "VLEK"
    if claimed != kind:
        raise _error(
            "chain_invalid",
            f"the report's SIGNING_KEY says a {claimed} signed it, "
            f"but the certificate chain ends at a {kind}",
        )


def _check_signature(report: SnpReport, data: bytes, leaf: x509.Certificate, kind: str) -> None:
    try:
        key = leaf.public_key()
    except (ValueError, UnsupportedAlgorithm):
        key = None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP384R1):
        raise _error("chain_invalid", f"the {kind} does not hold an ECDSA P-384 key")
    signature = encode_dss_signature(
        int.from_bytes(report.signature_r, "little"), int.from_bytes(report.signature_s, "little")
    )
    try:
        key.verify(signature, data[:SIGNED_SIZE], ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        raise _error(
            "signature_invalid", f"the report signature does not verify under the {kind} in the chain"
        ) from None


def _der_uint8(value: bytes) -> int | None:
    """Decode a DER INTEGER (short form, at most 8 content bytes) holding 0..255, else None."""
    if len(value) < 3 or value[0] != 0x02 or value[1] != len(value) - 2 or value[1] > 8:
        return None
    number = int.from_bytes(value[2:], "big", signed=True)
    return number if 0 <= number <= 255 else None


def _check_tcb(report: SnpReport, leaf: x509.Certificate, kind: str, product: str) -> None:
    for part, value in decode_tcb(report.reported_tcb, product).items():
        encoded = _amd_extension(leaf, _TCB_OIDS[part])
        if encoded is None:
            raise _error(
                "tcb_mismatch", f"the {kind} has no {part} SPL extension ({_TCB_OIDS[part].dotted_string})"
            )
        certified = _der_uint8(encoded)
        if certified is None:
            raise _error("chain_invalid", f"the {kind}'s {part} SPL extension is not a DER INTEGER 0..255")
        if certified != value:
            raise _error(
                "tcb_mismatch",
                f"reported_tcb {part} is {value} but the {kind} certifies {part} {certified}: "
                f"the certificate was issued for another TCB",
            )


def _hwid(encoded: bytes, size: int) -> bytes | None:
    # The KDS encodes hwID as the raw octets (no tag); also accept a DER OCTET STRING in case
    # AMD adds the tag (go-sev-guest kds.asn1OctetString does the same).
    if len(encoded) == size:
        return encoded
    if len(encoded) == size + 2 and encoded[0] == 0x04 and encoded[1] == size:
        return encoded[2:]
    return None


def _check_platform(report: SnpReport, leaf: x509.Certificate, kind: str, product: str) -> None:
    if kind == "VCEK" and any(report.chip_id):  # all-zero chip_id: the host set MASK_CHIP_ID
        size = _HWID_SIZE[product]
        encoded = _amd_extension(leaf, _OID_HWID)
        hwid = _hwid(encoded, size) if encoded is not None else None
        if hwid is None:
            raise _error("chain_invalid", f"the VCEK has no well-formed {size}-byte hwID extension")
        if report.chip_id[:size] != hwid or any(report.chip_id[size:]):
            raise _error(
                "platform_mismatch",
                f"the report's chip_id {_short(report.chip_id)} is not the chip the VCEK was issued for "
                f"(hwID {_short(hwid)})",
            )
    if report.cpuid_family is not None and report.cpuid_model is not None:
        family, model = report.cpuid_family, report.cpuid_model
        found = next((p for f, lo, hi, p in _CPUID_PRODUCTS if f == family and lo <= model <= hi), None)
        if found != product:
            raise _error(
                "platform_mismatch",
                f"the report's CPUID family 0x{family:02X} model 0x{model:02X} is "
                f"{found or 'no known SEV-SNP product'}, but the chain is rooted at ARK-{product}",
            )


def verify_snp(
    report: bytes,
    *,
    certificates: Sequence[bytes],
    now: datetime,
    trusted_arks: Mapping[str, str] = AMD_ARK_FINGERPRINTS,
) -> Claims:
    """Verify an SEV-SNP attestation report against its certificate chain and return its claims.

    ``certificates`` is DER, leaf first: [VCEK or VLEK, ASK or ASVK, ARK]; ``trusted_arks`` maps a
    product ("Milan", "Genoa", "Turin") to the SHA-256 hex of its ARK (DER).

    Guarantees: returns only if every check of the module docstring passed, in that order;
    otherwise raises ``AttestationError`` with that check's code and a message naming the
    certificate, field or values involved. It does NOT appraise measurement, debug, policy,
    VMPL, TCB floors or report_data binding (the policy and the caller do), nor AMD revocation.
    The report carries no timestamp: ``issued_at`` is ``now``, and freshness rests on the
    caller's nonce in ``report_data``. ``raw`` holds every parsed field (JSON-friendly) plus
    ``product``. Raises ``ValueError`` if ``now`` is naive or ``trusted_arks`` names an unknown
    product.
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be a timezone-aware datetime")
    if not set(trusted_arks) <= _PRODUCTS or not all(isinstance(v, str) for v in trusted_arks.values()):
        raise ValueError(f"trusted_arks must map products among {sorted(_PRODUCTS)} to SHA-256 hex strings")
    now = now.astimezone(UTC)
    parsed = parse_snp_report(report)
    data = bytes(report)
    leaf, ask, ark = _load_chain(certificates)
    product, fingerprint = _check_root(ark, bytes(certificates[2]), trusted_arks)
    kind, ask_role = _check_chain(leaf, ask, ark, product)
    _check_validity(((kind, leaf), (ask_role, ask), ("ARK", ark)), now)
    _check_signing_key(parsed, kind)
    _check_signature(parsed, data, leaf, kind)
    _check_tcb(parsed, leaf, kind, product)
    _check_platform(parsed, leaf, kind, product)
    return Claims(
        tee=SNP_TEE,
        simulated=False,
        measurement=parsed.measurement.hex(),
        report_data=parsed.report_data,
        debug=parsed.debug,
        platform_id=parsed.chip_id.hex(),
        issued_at=now,
        svn=parsed.guest_svn,
        root_fingerprint=fingerprint,
        raw=MappingProxyType(parsed.fields(product)),
    )
