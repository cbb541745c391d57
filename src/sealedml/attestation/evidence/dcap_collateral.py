"""Intel DCAP collateral: its format, our own checks, dcap-qvl's appraisal, and PCS responses to JSON.

The collateral is dcap-qvl's ``QuoteCollateralV3`` JSON: ``tcb_info`` and ``qe_identity`` hold the
exact signed JSON text, ``*_signature`` raw r||s hex (ECDSA P-256 / SHA-256 by "Intel SGX TCB
Signing"), ``*_issuer_chain`` PEM, and ``root_ca_crl`` / ``pck_crl`` hex DER.
:func:`appraise_collateral` checks, before dcap-qvl sees anything, in this order:

1. the JSON has exactly those string fields, well encoded (``attestation.collateral_invalid``);
2. TCB info and QE identity are signed by a certificate issued by the pinned root the quote's
   chain ended at, and the PCK CRL issuer chain ends there too (``attestation.collateral_invalid``);
3. they are for the quote's TEE type (``SGX``/``QE`` or ``TDX``/``TD_QE``) and the TCB info for the
   PCK's FMSPC (``attestation.collateral_invalid``: collateral of another platform);
4. TCB info, QE identity, both CRLs and every collateral certificate are valid at ``now``
   (``attestation.collateral_expired``, naming the item and its window);
5. the root CA CRL is signed by the root and the PCK CRL by the PCK's CA
   (``attestation.collateral_invalid``), and neither lists the PCK CA or the PCK
   (``attestation.revoked``);
6. ``dcap_qvl.verify_with_root_ca``, with the same pinned root, re-checks all of the above and
   evaluates the TCB (TCB levels, TDX module identities, QE identity and its TCB). Its failures
   are mapped by meaning (:data:`_DCAP_QVL_ERRORS`), unknown ones to
   ``attestation.collateral_invalid`` with dcap-qvl's message kept. Note that dcap-qvl 0.7.0's
   Python binding always refuses debug enclaves and TDs, and TDs whose attributes weaken
   isolation (SEPT_VE_DISABLE clear, migratable, ...): it offers no switch. Those become
   ``attestation.debug_not_allowed`` and ``attestation.td_attributes_not_allowed``, so a debug
   enclave can only be verified without collateral;
7. a TCB status of ``Revoked`` fails (``attestation.revoked``); others are returned.

It also holds the P-256 certificate helpers the quote verifier (:mod:`.dcap`) shares.
Time is a parameter; this module never reads the clock.
"""

from __future__ import annotations

import itertools
import json
import re
import urllib.parse
from dataclasses import dataclass
from datetime import UTC, datetime

import dcap_qvl
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.x509.oid import NameOID, SignatureAlgorithmOID

from sealedml.errors import AttestationError

__all__ = ["Appraisal", "PckChain", "appraise_collateral", "collateral_from_pcs"]

PARSE_ERRORS = (
    ValueError,
    TypeError,
    UnsupportedAlgorithm,
    x509.InvalidVersion,
    x509.DuplicateExtension,
    x509.UnsupportedGeneralNameType,
    UserWarning,
)
"""What decoding a hostile certificate raises (warnings arrive as exceptions when they are errors)."""


def dcap_error(code: str, message: str) -> AttestationError:
    """Return ``AttestationError("attestation.<code>", message)``."""
    return AttestationError(f"attestation.{code}", message)


def iso(moment: datetime) -> str:
    """Format ``moment`` as ``YYYY-MM-DDTHH:MM:SSZ``."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def common_name(cert: x509.Certificate) -> str:
    """The subject CN, or ``"(no common name)"``."""
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    value = names[0].value if names else None
    return value if isinstance(value, str) else "(no common name)"


@dataclass(frozen=True)
class PckChain:
    """The quote's PCK chain, leaf first, decoded; ``ders`` keeps each certificate's DER."""

    leaf: x509.Certificate
    ca: x509.Certificate
    root: x509.Certificate
    ders: tuple[bytes, bytes, bytes]

    @property
    def certificates(self) -> tuple[tuple[str, x509.Certificate], ...]:
        """(role, certificate) pairs, leaf first."""
        return tuple(zip(("PCK", "PCK CA", "root CA"), (self.leaf, self.ca, self.root), strict=True))


def p256_key(cert: x509.Certificate, role: str) -> ec.EllipticCurvePublicKey:
    """Return the certificate's key if it is ECDSA P-256, else raise ``attestation.chain_invalid``."""
    try:
        key = cert.public_key()
    except PARSE_ERRORS:
        key = None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise dcap_error(
            "chain_invalid", f"the {role} certificate ({common_name(cert)}) does not hold an ECDSA P-256 key"
        )
    return key


def verify_issued(cert: x509.Certificate, issuer: x509.Certificate, role: str, issuer_role: str) -> None:
    """Return only if ``issuer`` issued ``cert`` by name and ECDSA P-256 / SHA-256 signature; else raise
    ``attestation.chain_invalid`` naming both."""
    if cert.signature_algorithm_oid != SignatureAlgorithmOID.ECDSA_WITH_SHA256:
        raise dcap_error("chain_invalid", f"the {role} certificate is not signed with ECDSA / SHA-256")
    p256_key(issuer, issuer_role)
    if cert.issuer != issuer.subject:
        raise dcap_error(
            "chain_invalid",
            f"the {role} certificate ({common_name(cert)}) is not issued by {common_name(issuer)}",
        )
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        raise dcap_error(
            "chain_invalid",
            f"the {role} certificate's signature does not verify under the {issuer_role} key "
            f"({common_name(issuer)})",
        ) from None


def ecdsa_signature(signature: bytes) -> bytes:
    """DER-encode a raw 64-byte r||s ECDSA P-256 signature, as Intel formats them."""
    return encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big"))


_MAX_COLLATERAL_SIZE = 1 << 22
_CHAIN_KEYS = ("pck_crl_issuer_chain", "tcb_info_issuer_chain", "qe_identity_issuer_chain")
_HEX_KEYS = ("root_ca_crl", "pck_crl", "tcb_info_signature", "qe_identity_signature")
_COLLATERAL_KEYS = frozenset({*_CHAIN_KEYS, *_HEX_KEYS, "tcb_info", "qe_identity"})
_COLLATERAL_IDS = {"sgx": ("SGX", "QE"), "tdx": ("TDX", "TD_QE")}
_TCB_STATUSES = frozenset(
    "UpToDate SWHardeningNeeded ConfigurationNeeded ConfigurationAndSWHardeningNeeded OutOfDate "
    "OutOfDateConfigurationNeeded TDRelaunchAdvised TDRelaunchAdvisedConfigurationNeeded".split()
)
"""The statuses dcap-qvl 0.7.0 returns besides ``Revoked`` (which it raises as an error)."""
_DCAP_QVL_ERRORS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    (
        "chain_invalid",
        ("QE MRSIGNER", "QE ISVPRODID", "QE MISCSELECT", "QE ATTRIBUTES", "QE report validation"),
        "the quoting enclave is not the one Intel's QE identity names",
    ),
    ("revoked", ("Revoked", "revoked"), "a certificate or the platform's TCB is revoked"),
    (
        "debug_not_allowed",
        ("Debug mode is enabled", "TD profiling is enabled"),
        "dcap-qvl appraises the TCB of production enclaves only (verify a debug one without collateral)",
    ),
    (
        "td_attributes_not_allowed",
        ("SEPT_VE_DISABLE", "TD migration", "SERVTD_EXT", "Reserved bits in TD attributes", "MR service TD"),
        "dcap-qvl refuses TD attributes that weaken the TD's isolation",
    ),
    (
        "collateral_expired",
        ("expired", "Expired", "in the future", "not valid yet", "NotValidYet", "not valid before"),
        "the collateral is outside its validity window",
    ),
    (
        "tcb_mismatch",
        ("No matching TCB level", "TCB level mismatch", "TDX module", "current TDX TCB", "below minimum"),
        "the platform's TCB matches no level of the TCB info",
    ),
    (
        "signature_invalid",
        ("qe_report in quote", "QE report hash", "ISV enclave report signature"),
        "dcap-qvl rejects a quote signature",
    ),
    (
        "malformed",
        ("quote version", "must have version", "key type", "QE vendor ID", "TEE type", "decode quote"),
        "dcap-qvl rejects the quote's format",
    ),
)
"""dcap-qvl 0.7.0 failure texts by meaning, first match wins; anything else is ``collateral_invalid``."""


@dataclass(frozen=True)
class Appraisal:
    """What verified collateral says: dcap-qvl's TCB status (never ``Revoked``) and advisories
    (sorted), the oldest issue date of TCB info and QE identity, and the earliest next update of
    TCB info, QE identity and CRLs."""

    status: str
    advisories: tuple[str, ...]
    issued_at: datetime
    next_update: datetime


def _bad(message: str) -> AttestationError:
    return dcap_error("collateral_invalid", f"collateral: {message}")


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    result: dict[str, object] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _json_object(text: str | bytes, what: str) -> dict[str, object]:
    try:
        value = json.loads(text, object_pairs_hook=_no_duplicates)
    except (ValueError, RecursionError):
        raise _bad(f"{what} is not valid JSON") from None
    if not isinstance(value, dict):
        raise _bad(f"{what} is not a JSON object")
    return value


def _text(data: bytes | str, what: str) -> str:
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogatepass")
    if not isinstance(data, bytes | bytearray | memoryview) or len(data) > _MAX_COLLATERAL_SIZE:
        raise _bad(f"{what} must be bytes of at most {_MAX_COLLATERAL_SIZE}")
    try:
        return bytes(data).decode("utf-8")
    except UnicodeDecodeError:
        raise _bad(f"{what} is not UTF-8") from None


def _pem_chain(text: str, what: str) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(text.encode())
        for cert in certs:
            _ = (
                cert.subject,
                cert.issuer,
                cert.not_valid_before_utc,
                cert.not_valid_after_utc,
                cert.extensions,
            )
    except PARSE_ERRORS:
        raise _bad(f"{what} is not a PEM certificate chain") from None
    return certs


def _crl(der: bytes, what: str) -> x509.CertificateRevocationList:
    try:
        crl = x509.load_der_x509_crl(der)
        _ = (crl.issuer, crl.last_update_utc, crl.next_update_utc, crl.signature_algorithm_oid, list(crl))
    except PARSE_ERRORS:
        raise _bad(f"the {what} is not a DER X.509 CRL") from None
    if crl.next_update_utc is None:
        raise _bad(f"the {what} has no nextUpdate")
    return crl


def _date(document: dict[str, object], key: str, what: str) -> datetime:
    value = document.get(key)
    try:
        moment = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise _bad(f"the {what} {key} {value!r} is not an RFC 3339 UTC time")
    return moment.astimezone(UTC)


def _check_signed(
    text: str, signature: bytes, signers: list[x509.Certificate], chain: PckChain, what: str
) -> None:
    """The signing chain ends at the pinned root; its leaf signed ``text`` (raw r||s, SHA-256)."""
    _check_chain_to_root(signers, chain, f"{what} issuer chain")
    try:
        key = p256_key(signers[0], f"{what} signing")
    except AttestationError as error:
        raise _bad(error.message) from None
    try:
        if len(signature) != 64:
            raise InvalidSignature
        key.verify(ecdsa_signature(signature), text.encode(), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise _bad(f"the {what} signature does not verify under {common_name(signers[0])}") from None


def _check_chain_to_root(certs: list[x509.Certificate], chain: PckChain, what: str) -> None:
    """``certs`` is a chain, each certificate issued by the next, ending at the pinned root."""
    if not certs or certs[-1].public_bytes(serialization.Encoding.DER) != chain.ders[2]:
        raise _bad(f"the {what} does not end at the pinned root")
    try:
        for cert, issuer in itertools.pairwise(certs):
            verify_issued(cert, issuer, f"{what} {common_name(cert)}", common_name(issuer))
    except AttestationError as error:
        raise _bad(error.message) from None


def _check_crls(
    root_crl: x509.CertificateRevocationList, pck_crl: x509.CertificateRevocationList, chain: PckChain
) -> None:
    for crl, issuer, name in ((root_crl, chain.root, "root CA CRL"), (pck_crl, chain.ca, "PCK CRL")):
        key = p256_key(issuer, name)
        if crl.issuer != issuer.subject or not crl.is_signature_valid(key):
            raise _bad(f"the {name} is not signed by {common_name(issuer)}, which issued the quote's chain")
    for crl, cert, role in ((root_crl, chain.ca, "PCK CA"), (pck_crl, chain.leaf, "PCK")):
        entry = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
        if entry is not None:
            raise dcap_error(
                "revoked",
                f"the {role} certificate ({common_name(cert)}, serial {cert.serial_number:x}) is revoked "
                f"since {iso(entry.revocation_date_utc)}",
            )


def _from_dcap_qvl(message: str) -> AttestationError:
    message = message.removeprefix("Verification failed: ")
    for code, needles, meaning in _DCAP_QVL_ERRORS:
        if any(needle in message for needle in needles):
            return dcap_error(code, f"{meaning}: dcap-qvl: {message}")
    return _bad(f"dcap-qvl: {message}")


def appraise_collateral(
    quote: bytes, tee: str, collateral: bytes, *, chain: PckChain, fmspc: str, now: datetime
) -> Appraisal:
    """Check ``collateral`` for a quote whose chain and signatures were verified; evaluate its TCB.

    Guarantees: returns only if every collateral check of the module docstring passed and
    dcap-qvl accepted the quote with it at ``now`` with a status other than ``Revoked``;
    otherwise raises ``AttestationError`` with the check's code.
    """
    fields = _json_object(_text(collateral, "collateral"), "the collateral")
    if fields.get("pck_certificate_chain") is None:
        fields.pop("pck_certificate_chain", None)  # dcap-qvl's optional key; only the quote's chain counts
    if set(fields) != _COLLATERAL_KEYS or not all(isinstance(value, str) for value in fields.values()):
        raise _bad(f"expected exactly the string fields {', '.join(sorted(_COLLATERAL_KEYS))}")
    texts: dict[str, str] = {key: str(value) for key, value in fields.items()}
    try:
        decoded = {key: bytes.fromhex(texts[key]) for key in _HEX_KEYS}
    except ValueError:
        raise _bad(f"{', '.join(_HEX_KEYS)} must be hex") from None
    chains = {key: _pem_chain(texts[key], key) for key in _CHAIN_KEYS}
    root_crl, pck_crl = _crl(decoded["root_ca_crl"], "root CA CRL"), _crl(decoded["pck_crl"], "PCK CRL")
    windows: list[tuple[str, datetime, datetime, bool]] = []  # (item, start, end, valid at end)
    for key, what, expected in zip(
        ("tcb_info", "qe_identity"), ("TCB info", "QE identity"), _COLLATERAL_IDS[tee], strict=True
    ):
        _check_signed(texts[key], decoded[f"{key}_signature"], chains[f"{key}_issuer_chain"], chain, what)
        document = _json_object(texts[key], f"the {what}")
        if document.get("id") != expected:
            raise _bad(f"the {what} is for {document.get('id')!r}; {tee.upper()} quotes need {expected!r}")
        windows.append((what, _date(document, "issueDate", what), _date(document, "nextUpdate", what), True))
        if key == "tcb_info" and str(document.get("fmspc", "")).lower() != fmspc:
            raise _bad(
                f"the TCB info is for FMSPC {document.get('fmspc')!r}, but the PCK certificate names FMSPC "
                f"{fmspc}: this collateral belongs to another platform"
            )
    _check_chain_to_root(chains["pck_crl_issuer_chain"], chain, "PCK CRL issuer chain")
    issued_at, next_update = min(w[1] for w in windows), min(w[2] for w in windows)
    for name, crl in (("root CA CRL", root_crl), ("PCK CRL", pck_crl)):
        # A CRL is stale from its nextUpdate on (as dcap-qvl and webpki judge); the rest is valid through it.
        windows.append((name, crl.last_update_utc, crl.next_update_utc or crl.last_update_utc, False))
        next_update = min(next_update, crl.next_update_utc or next_update)
    for key in _CHAIN_KEYS:
        windows += [
            (f"{common_name(c)} certificate ({key})", c.not_valid_before_utc, c.not_valid_after_utc, True)
            for c in chains[key]
        ]
    for what, start, end, valid_at_end in windows:
        if now < start or now > end or (now == end and not valid_at_end):
            state = f"is not valid before {iso(start)}" if now < start else f"expired at {iso(end)}"
            raise dcap_error(
                "collateral_expired",
                f"the {what} {state} (valid {iso(start)} to {iso(end)}; now {iso(now)}): "
                "fetch fresh collateral",
            )
    _check_crls(root_crl, pck_crl, chain)
    library_collateral = dcap_qvl.QuoteCollateralV3(
        texts["pck_crl_issuer_chain"],
        decoded["root_ca_crl"],
        decoded["pck_crl"],
        texts["tcb_info_issuer_chain"],
        texts["tcb_info"],
        decoded["tcb_info_signature"],
        texts["qe_identity_issuer_chain"],
        texts["qe_identity"],
        decoded["qe_identity_signature"],
    )
    try:
        report = dcap_qvl.verify_with_root_ca(quote, library_collateral, chain.ders[2], int(now.timestamp()))
        status, advisories = str(report.status), tuple(sorted({str(a) for a in report.advisory_ids}))
    except (ValueError, TypeError, RuntimeError, OverflowError) as error:
        raise _from_dcap_qvl(str(error)) from None
    if status == "Revoked":
        raise dcap_error(
            "revoked", f"Intel rates this platform's TCB Revoked (advisories: {', '.join(advisories)})"
        )
    if status not in _TCB_STATUSES:
        raise _bad(f"dcap-qvl returned the unknown TCB status {status!r}")
    return Appraisal(status, advisories, issued_at, next_update)


def _top_level_members(text: str, what: str) -> dict[str, str]:
    """Map each key of a top-level JSON object to the exact text of its value."""
    decoder, members, index = json.JSONDecoder(), {}, 0

    def skip(position: int) -> int:
        while position < len(text) and text[position] in " \t\r\n":
            position += 1
        return position

    try:
        index = skip(index)
        if text[index] != "{":
            raise ValueError("not an object")
        index = skip(index + 1)
        while text[index] != "}":
            key, index = decoder.raw_decode(text, index)
            index = skip(index)
            if not isinstance(key, str) or key in members or text[index] != ":":
                raise ValueError("bad key")
            start = skip(index + 1)
            _, index = decoder.raw_decode(text, start)
            members[key] = text[start:index]
            index = skip(index)
            if text[index] == ",":
                index = skip(index + 1)
            elif text[index] != "}":
                raise ValueError("expected , or }")
        if skip(index + 1) != len(text):
            raise ValueError("trailing data")
    except (ValueError, IndexError, RecursionError):
        raise _bad(f"the {what} is not a JSON object") from None
    return members


def _signed_member(response: bytes, key: str, what: str) -> tuple[str, str]:
    members = _top_level_members(_text(response, what), what)
    signature = members.get("signature", "")
    try:
        signature_hex = json.loads(signature) if signature else None
    except (ValueError, RecursionError):
        signature_hex = None
    if (
        key not in members
        or not isinstance(signature_hex, str)
        or not re.fullmatch(r"[0-9a-fA-F]{128}", signature_hex)
    ):
        raise _bad(f'the {what} must be {{"{key}": {{...}}, "signature": "<128 hex digits>"}}')
    return members[key], signature_hex.lower()


def _pem_text(data: bytes, what: str) -> str:
    text = _text(data, what)
    if "-----BEGIN CERTIFICATE-----" not in text:
        text = urllib.parse.unquote(text)  # PCS sends issuer chains URL-encoded in response headers
    _pem_chain(text, what)
    return text


def _crl_der(data: bytes, what: str) -> bytes:
    if not isinstance(data, bytes | bytearray | memoryview) or len(data) > _MAX_COLLATERAL_SIZE:
        raise _bad(f"the {what} must be bytes of at most {_MAX_COLLATERAL_SIZE}")
    data = bytes(data)
    if data.lstrip().startswith(b"-----BEGIN"):
        try:
            data = x509.load_pem_x509_crl(data).public_bytes(serialization.Encoding.DER)
        except PARSE_ERRORS:
            raise _bad(f"the {what} is not a PEM X.509 CRL") from None
    _crl(data, what)
    return data


def collateral_from_pcs(
    *,
    tcb_info_response: bytes,
    qe_identity_response: bytes,
    tcb_info_issuer_chain: bytes,
    pck_crl: bytes,
    root_ca_crl: bytes,
    pck_crl_issuer_chain: bytes,
) -> bytes:
    """Build dcap-qvl ``QuoteCollateralV3`` JSON from raw Intel PCS/PCCS responses.

    ``tcb_info_response`` is ``{"tcbInfo": {...}, "signature": "..."}`` and ``qe_identity_response``
    ``{"enclaveIdentity": {...}, "signature": "..."}``, byte for byte as served; the issuer chains
    are PEM (or URL-encoded PEM, as in the PCS ``*-Issuer-Chain`` headers); the CRLs DER or PEM. The
    QE identity is signed by the same TCB Signing chain as the TCB info.

    Guarantees: the result carries the exact text of the signed ``tcbInfo`` / ``enclaveIdentity``
    values (their signatures cover those bytes), the signatures as hex, the CRLs as hex DER and
    the chains as PEM; every input was well formed, else ``attestation.collateral_invalid``. It
    verifies no signature: :func:`verify_dcap` does.
    """
    tcb_info, tcb_signature = _signed_member(tcb_info_response, "tcbInfo", "TCB info response")
    qe_identity, qe_signature = _signed_member(
        qe_identity_response, "enclaveIdentity", "QE identity response"
    )
    signing_chain = _pem_text(tcb_info_issuer_chain, "TCB info issuer chain")
    document = {
        "pck_crl_issuer_chain": _pem_text(pck_crl_issuer_chain, "PCK CRL issuer chain"),
        "root_ca_crl": _crl_der(root_ca_crl, "root CA CRL").hex(),
        "pck_crl": _crl_der(pck_crl, "PCK CRL").hex(),
        "tcb_info_issuer_chain": signing_chain,
        "tcb_info": tcb_info,
        "tcb_info_signature": tcb_signature,
        "qe_identity_issuer_chain": signing_chain,
        "qe_identity": qe_identity,
        "qe_identity_signature": qe_signature,
    }
    return json.dumps(document).encode()
