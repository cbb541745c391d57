"""Verifier for Intel SGX and TDX DCAP quotes: PCK chain, QE and quote signatures, collateral, claims.

Checks, in Intel's order, each failure an ``AttestationError`` naming the check:

1. the quote parses (:func:`~sealedml.attestation.evidence.dcap_quote.parse_quote`;
   ``attestation.malformed``, also for certification data other than a PEM PCK chain);
2. our own checks, with ``cryptography``: the chain [PCK, PCK Platform/Processor CA, root] from the
   quote ends at a root whose SHA-256 DER fingerprint is ``trusted_root`` and which is self-signed
   (``attestation.untrusted_root``); each link is issued by the next, by name and ECDSA P-256 /
   SHA-256 signature, with CA constraints (``attestation.chain_invalid``); each certificate is
   valid at ``now`` (``attestation.certificate_expired``); the QE report signature verifies under
   the PCK key, the QE report binds the attestation key (report_data = SHA-256(attestation key ||
   QE auth data) || 32 zeros), and the quote signature verifies under the attestation key over
   exactly the signed bytes (``attestation.signature_invalid``, naming which);
3. with collateral only, :func:`~sealedml.attestation.evidence.dcap_collateral.appraise_collateral`:
   our own checks of the collateral's format, signatures (under the same pinned root), purpose
   (TEE type, FMSPC), dates and CRLs, then ``dcap_qvl.verify_with_root_ca`` for the full appraisal,
   its failures mapped to typed codes by meaning (``attestation.collateral_invalid``,
   ``collateral_expired``, ``tcb_mismatch``, ``revoked``, ...). A TCB status of ``Revoked`` fails
   (``attestation.revoked``); any other status is a claim (``tcb_status`` with ``advisories``) for
   the caller's policy to judge.

What we wrote and why: dcap-qvl (Phala's maintained Rust port of Intel's QVL) does the complete
DCAP appraisal, including TCB level matching (SGX and TDX components, TDX module identities, the
TDX 1.5 relaunch rules) and QE identity matching, which we do not re-implement. But it answers
every failure with one exception type and a free-text message, does not expose the parsed fields
we put in claims (ATTRIBUTES, ISV family id, TD 1.5 fields, ...), and needs collateral: quotes
verified without it (the platform's caller may not have any) get nothing from it. So the parser,
the PCK chain, the three signatures and the binding are checked here first, each failure with a
precise code, and the collateral's signatures, purpose, dates and CRLs before dcap-qvl sees it:
defence in depth (two independent implementations must agree), precise errors for what users can
act on (an expired PCK certificate is not a bad TCB), and a dcap-qvl that only sees collateral
whose signatures we checked. The PCK certificate's SGX extension (FMSPC, PCE-ID, PCK CPUSVN) is
read with dcap-qvl's parser, once the certificate is known to be issued under the pinned root.

Time is a parameter; this module never reads the clock.
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime
from types import MappingProxyType

import dcap_qvl
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sealedml.attestation.claims import Claims
from sealedml.attestation.evidence.dcap_collateral import (
    PARSE_ERRORS,
    Appraisal,
    PckChain,
    appraise_collateral,
    collateral_from_pcs,
    common_name,
    dcap_error,
    ecdsa_signature,
    iso,
    p256_key,
    verify_issued,
)
from sealedml.attestation.evidence.dcap_quote import (
    CERT_PCK_CHAIN,
    DcapQuote,
    TdReportBody,
    parse_quote,
)
from sealedml.errors import AttestationError

__all__ = [
    "INTEL_SGX_ROOT_CA_FINGERPRINT",
    "PckChain",
    "check_pck_chain",
    "check_signatures",
    "collateral_from_pcs",
    "parse_quote",
    "verify_dcap",
]

INTEL_SGX_ROOT_CA_FINGERPRINT = "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3"
"""SHA-256 of the Intel SGX Root CA certificate (DER), served at certificates.trustedservices.intel.com."""


def _load_pck_chain(quote: DcapQuote) -> PckChain:
    if quote.qe.cert_data_type != CERT_PCK_CHAIN:
        raise dcap_error(
            "malformed",
            f"DCAP quote: certification data type {quote.qe.cert_data_type} is not supported; only type 5 "
            "(the PCK certificate chain in PEM) can be verified offline",
        )
    try:
        certs = x509.load_pem_x509_certificates(quote.qe.cert_data.rstrip(b"\0"))
        for cert in certs:  # decode lazily parsed parts now, so corruption is "malformed" here
            _ = (cert.subject, cert.issuer, cert.not_valid_before_utc, cert.not_valid_after_utc)
            _ = (cert.extensions, cert.signature_algorithm_oid)
        ders = tuple(cert.public_bytes(serialization.Encoding.DER) for cert in certs)
    except PARSE_ERRORS:
        raise dcap_error(
            "malformed", "DCAP quote: the certification data is not a PEM certificate chain"
        ) from None
    if len(certs) != 3:
        raise dcap_error(
            "chain_invalid",
            f"the quote's PCK chain must be [PCK, PCK CA, root CA], got {len(certs)} certificates",
        )
    return PckChain(certs[0], certs[1], certs[2], (ders[0], ders[1], ders[2]))


def _check_ca(cert: x509.Certificate, role: str) -> None:
    try:
        basic = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        raise dcap_error(
            "chain_invalid", f"the {role} certificate lacks basicConstraints or keyUsage"
        ) from None
    if not basic.ca or not usage.key_cert_sign:
        raise dcap_error("chain_invalid", f"the {role} certificate is not a CA allowed to sign certificates")


def check_pck_chain(chain: PckChain, trusted_root: str, now: datetime) -> str:
    """Check the chain to the pinned root and its validity at ``now``; return the root fingerprint.

    Guarantees: returns only if the root's SHA-256 DER fingerprint equals ``trusted_root`` and the
    root is self-signed (else ``attestation.untrusted_root``), the CA and the PCK are issued by the
    next certificate by name and ECDSA P-256 / SHA-256 signature, both CAs may sign certificates
    and the PCK is no CA (``attestation.chain_invalid``), and all three are valid at ``now``
    (``attestation.certificate_expired``, naming the certificate and its window).
    """
    fingerprint = hashlib.sha256(chain.ders[2]).hexdigest()
    if fingerprint != trusted_root:
        raise dcap_error(
            "untrusted_root",
            f"the PCK chain ends at {common_name(chain.root)} with SHA-256 {fingerprint}, "
            f"which is not the pinned root {trusted_root}",
        )
    if chain.root.issuer != chain.root.subject:
        raise dcap_error("untrusted_root", f"the pinned root {common_name(chain.root)} is not self-issued")
    try:
        verify_issued(chain.root, chain.root, "root CA", "root CA")
    except AttestationError as error:
        raise dcap_error(
            "untrusted_root", f"the pinned root is not validly self-signed: {error.message}"
        ) from None
    _check_ca(chain.root, "root CA")
    _check_ca(chain.ca, "PCK CA")
    verify_issued(chain.ca, chain.root, "PCK CA", "root CA")
    verify_issued(chain.leaf, chain.ca, "PCK", "PCK CA")
    try:
        leaf_is_ca = chain.leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        leaf_is_ca = False
    if leaf_is_ca:
        raise dcap_error("chain_invalid", "the PCK certificate is a CA certificate")
    for role, cert in chain.certificates:
        start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
        if not start <= now <= end:
            state = f"is not valid before {iso(start)}" if now < start else f"expired at {iso(end)}"
            raise dcap_error(
                "certificate_expired",
                f"the {role} certificate ({common_name(cert)}) {state} "
                f"(valid {iso(start)} to {iso(end)}; now {iso(now)})",
            )
    return fingerprint


def check_signatures(quote: DcapQuote, pck: x509.Certificate) -> None:
    """Check the QE report signature, the attestation key binding and the quote signature.

    Guarantees: returns only if the PCK key signed the QE report, the QE report's report_data is
    SHA-256(attestation key || QE auth data) followed by 32 zero bytes, and the attestation key
    signed exactly ``quote.signed``; otherwise raises ``attestation.signature_invalid`` saying which.
    """
    try:
        p256_key(pck, "PCK").verify(
            ecdsa_signature(quote.qe.qe_report_signature), quote.qe.qe_report_raw, ec.ECDSA(hashes.SHA256())
        )
    except InvalidSignature:
        raise dcap_error(
            "signature_invalid", "the QE report signature does not verify under the PCK certificate key"
        ) from None
    binding = hashlib.sha256(quote.attestation_key + quote.qe.qe_auth_data).digest() + bytes(32)
    if quote.qe.qe_report.report_data != binding:
        raise dcap_error(
            "signature_invalid",
            "the QE report does not bind the attestation key: its report_data is not "
            "SHA-256(attestation key || QE auth data) || 32 zero bytes",
        )
    try:
        key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + quote.attestation_key)
    except ValueError:
        raise dcap_error("signature_invalid", "the attestation key is not a point on P-256") from None
    try:
        key.verify(ecdsa_signature(quote.quote_signature), quote.signed, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise dcap_error(
            "signature_invalid",
            "the quote signature does not verify under the attestation key over the signed bytes "
            f"[0, {len(quote.signed)})",
        ) from None


def _pck_identity(chain: PckChain) -> tuple[str, str, dict[str, object]]:
    """(FMSPC hex, PCE-ID hex, other fields) from the PCK's SGX extension (OID 1.2.840.113741.1.13.1)."""
    pem = chain.leaf.public_bytes(serialization.Encoding.PEM)
    try:
        extension = dcap_qvl.parse_pck_extension_from_pem(pem)
        fmspc, pce_id = bytes(extension.fmspc), bytes(extension.pce_id)
        extra: dict[str, object] = {
            "pck_cpu_svn": bytes(extension.cpu_svn).hex(),
            "pck_pce_svn": int(extension.pce_svn),
            "sgx_type": int(extension.sgx_type),
        }
    except (ValueError, TypeError):
        fmspc, pce_id, extra = b"", b"", {}
    if len(fmspc) != 6 or len(pce_id) != 2:
        raise dcap_error(
            "chain_invalid",
            "the PCK certificate has no well-formed Intel SGX extension (OID 1.2.840.113741.1.13.1) "
            "with a 6-byte FMSPC and a 2-byte PCE-ID",
        )
    return fmspc.hex(), pce_id.hex(), extra


def _raw(
    quote: DcapQuote, fmspc: str, pce_id: str, extra: dict[str, object], appraisal: Appraisal | None
) -> dict[str, object]:
    header = quote.header
    raw: dict[str, object] = {
        "version": header.version,
        "att_key_type": header.att_key_type,
        "tee_type": header.tee_type,
        "qe_svn": header.qe_svn,
        "pce_svn": header.pce_svn,
        "qe_vendor_id": header.qe_vendor_id.hex(),
        "user_data": header.user_data.hex(),
        "body_type": quote.body_type,
        **quote.body.fields(),
        "fmspc": fmspc,
        "pce_id": pce_id,
        **extra,
        "qe_report": quote.qe.qe_report.fields(),
        "trailing_bytes": quote.trailing,
        "tcb_status": appraisal.status if appraisal else None,
        "advisories": list(appraisal.advisories) if appraisal else [],
        "collateral_next_update": iso(appraisal.next_update) if appraisal else None,
    }
    return raw


def verify_dcap(
    quote: bytes,
    *,
    collateral: bytes | None,
    now: datetime,
    trusted_root: str = INTEL_SGX_ROOT_CA_FINGERPRINT,
) -> Claims:
    """Verify an SGX v3 or TDX v4/v5 DCAP quote and, given collateral, its platform's TCB.

    ``collateral`` is dcap-qvl ``QuoteCollateralV3`` JSON (see :func:`collateral_from_pcs`), or
    ``None`` to check the quote's own chain and signatures only (then ``tcb_status`` is ``None``
    and policies refuse the claims unless told otherwise).

    Guarantees: returns only if every check of the module docstring passed, in that order;
    otherwise raises ``AttestationError`` with that check's code and a message naming the
    certificate, signature, collateral item or dcap-qvl verdict involved. ``tcb_status`` is never
    ``"Revoked"``. It does NOT appraise measurement, debug, report_data binding or TCB status
    (the policy and the caller do). Quotes carry no timestamp: ``issued_at`` is ``now``.
    ``raw`` holds every parsed field (JSON-friendly). Raises ``ValueError`` if ``now`` is naive
    or ``trusted_root`` is not 64 hex characters.
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be a timezone-aware datetime")
    if not isinstance(trusted_root, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", trusted_root):
        raise ValueError("trusted_root must be the SHA-256 hex fingerprint of a root certificate (DER)")
    now, trusted_root = now.astimezone(UTC), trusted_root.lower()
    parsed = parse_quote(quote)
    chain = _load_pck_chain(parsed)
    fingerprint = check_pck_chain(chain, trusted_root, now)
    check_signatures(parsed, chain.leaf)
    fmspc, pce_id, extra = _pck_identity(chain)
    appraisal = None
    if collateral is not None:
        appraisal = appraise_collateral(
            bytes(quote), parsed.tee, collateral, chain=chain, fmspc=fmspc, now=now
        )
    body = parsed.body
    if isinstance(body, TdReportBody):
        measurement, svn = body.mr_td.hex(), body.tee_tcb_svn[0]
    else:
        measurement, svn = body.mr_enclave.hex(), body.isv_svn
    return Claims(
        tee=parsed.tee,
        simulated=False,
        measurement=measurement,
        report_data=body.report_data,
        debug=body.debug,
        platform_id=fmspc,
        issued_at=now,
        svn=svn,
        root_fingerprint=fingerprint,
        raw=MappingProxyType(_raw(parsed, fmspc, pce_id, extra, appraisal)),
        tcb_status=appraisal.status if appraisal else None,
        advisories=appraisal.advisories if appraisal else (),
        collateral_issued_at=appraisal.issued_at if appraisal else None,
    )
