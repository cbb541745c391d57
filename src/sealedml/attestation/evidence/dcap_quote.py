"""Intel DCAP ECDSA quotes (SGX v3, TDX v4 and v5): the byte layout and a strict parser (no cryptography).

Layouts: Intel ``sgx_quote_3.h``, ``sgx_quote_4.h`` and ``sgx_quote_5.h`` (*Intel SGX ECDSA Quote
Library API* and *Intel TDX DCAP Quoting Library API*, appendix "Quote Format"); offsets were
verified against the real quotes in ``../shared/attestation-vectors/{sgx,tdx}``. All integers are
little-endian.

- header (48 bytes): version, attestation key type (2 = ECDSA P-256), TEE type (0 SGX, 0x81 TDX),
  QE/PCE SVN, QE vendor id, user data;
- body: SGX v3 ``sgx_report_body_t`` (384 bytes) at 48; TDX v4 ``sgx_report2_body_t`` (584 bytes)
  at 48; TDX v5 a ``body_type`` u16 (2 = TDX 1.0, 3 = TDX 1.5) and ``body_size`` u32 at 48, then
  the body (584 or 648 bytes) at 54;
- ``signature_data_len`` u32 right after the signed bytes, then the signature data: the quote
  signature (r||s), the attestation key (x||y), and the QE report certification data (QE report,
  its signature by the PCK, QE auth data, certification data). TDX wraps the latter in a type-6
  certification data block.

The parser rejects, with ``attestation.malformed``, anything it cannot account for: an unknown
version, attestation key type, TEE type or v5 body type, a length that overruns its container,
or unexplained bytes inside the signature data. Bytes *after* the signature data are tolerated and
ignored, as dcap-qvl and go-tdx-guest do: no signature covers them and no field reads
them. Quote generators pad quotes into fixed-size buffers (the dcap-qvl TDX v4 sample ends with 70
zero bytes), and go-tdx-guest's SPR sample ends with the 39 ASCII bytes "extra bytes(only for
testing purpose)" and a newline. It verifies nothing: :mod:`~sealedml.attestation.evidence.dcap` does.
"""

from __future__ import annotations

from dataclasses import dataclass

from sealedml.errors import AttestationError

__all__ = [
    "ATT_KEY_ECDSA_P256",
    "BODY_SGX",
    "BODY_TDX10",
    "BODY_TDX15",
    "CERT_PCK_CHAIN",
    "CERT_QE_REPORT",
    "MAX_QUOTE_SIZE",
    "TEE_SGX",
    "TEE_TDX",
    "DcapQuote",
    "QeCertification",
    "QuoteHeader",
    "SgxReportBody",
    "TdReportBody",
    "parse_quote",
    "parse_sgx_report_body",
]

MAX_QUOTE_SIZE = 1 << 16
"""Real quotes are about 5 KB (most of it the PEM PCK chain); anything over 64 KiB is refused."""
ATT_KEY_ECDSA_P256 = 2
TEE_SGX, TEE_TDX = 0x00000000, 0x00000081
BODY_SGX, BODY_TDX10, BODY_TDX15 = 1, 2, 3
"""Body types as numbered by ``sgx_quote_5.h``; v3 bodies are SGX and v4 bodies TDX 1.0."""
CERT_PCK_CHAIN, CERT_QE_REPORT = 5, 6
HEADER_SIZE, SGX_BODY_SIZE = 48, 384
_TD_BODY_SIZES = {BODY_TDX10: 584, BODY_TDX15: 648}
_ECDSA_SIZE = 64


def _malformed(message: str) -> AttestationError:
    return AttestationError("attestation.malformed", f"DCAP quote: {message}")


class _Reader:
    """Bounded little-endian reader: every read past ``end`` is a typed error, never IndexError."""

    def __init__(self, data: bytes, start: int, end: int, what: str) -> None:
        self.data, self.offset, self.end, self.what = data, start, end, what

    def take(self, size: int, field: str) -> bytes:
        if size < 0 or self.offset + size > self.end:
            raise _malformed(
                f"{self.what}: {field} needs {size} bytes at offset {self.offset}, "
                f"but only {max(self.end - self.offset, 0)} remain"
            )
        chunk = self.data[self.offset : self.offset + size]
        self.offset += size
        return chunk

    def uint(self, size: int, field: str) -> int:
        return int.from_bytes(self.take(size, field), "little")

    def sub(self, size: int, field: str) -> _Reader:
        """Take ``size`` bytes and return a reader confined to them."""
        start = self.offset
        self.take(size, field)
        return _Reader(self.data, start, self.offset, field)

    def finish(self) -> None:
        if self.offset != self.end:
            raise _malformed(f"{self.what} has {self.end - self.offset} unexplained bytes at its end")


@dataclass(frozen=True)
class QuoteHeader:
    """The 48-byte quote header, as signed."""

    version: int
    att_key_type: int
    tee_type: int
    qe_svn: int
    pce_svn: int
    qe_vendor_id: bytes
    user_data: bytes


@dataclass(frozen=True)
class SgxReportBody:
    """An SGX enclave report body (``sgx_report_body_t``, 384 bytes): the enclave's or the QE's."""

    cpu_svn: bytes
    miscselect: int
    isv_ext_prod_id: bytes
    attributes: bytes
    mr_enclave: bytes
    mr_signer: bytes
    config_id: bytes
    isv_prod_id: int
    isv_svn: int
    config_svn: int
    isv_family_id: bytes
    report_data: bytes

    @property
    def debug(self) -> bool:
        """``ATTRIBUTES.DEBUG`` (flags bit 1): the enclave's memory is readable by a debugger."""
        return bool(self.attributes[0] & 0x02)

    def fields(self) -> dict[str, object]:
        """Return every field as JSON-friendly values (hex strings and ints)."""
        return {
            "cpu_svn": self.cpu_svn.hex(),
            "miscselect": self.miscselect.to_bytes(4, "little").hex(),
            "isv_ext_prod_id": self.isv_ext_prod_id.hex(),
            "attributes": self.attributes.hex(),
            "mr_enclave": self.mr_enclave.hex(),
            "mr_signer": self.mr_signer.hex(),
            "config_id": self.config_id.hex(),
            "isv_prod_id": self.isv_prod_id,
            "isv_svn": self.isv_svn,
            "config_svn": self.config_svn,
            "isv_family_id": self.isv_family_id.hex(),
            "report_data": self.report_data.hex(),
        }


@dataclass(frozen=True)
class TdReportBody:
    """A TD quote body: TDX 1.0 (584 bytes) or TDX 1.5 (648 bytes, with ``tee_tcb_svn2`` and
    ``mr_servicetd``, else ``None``)."""

    tee_tcb_svn: bytes
    mr_seam: bytes
    mr_signer_seam: bytes
    seam_attributes: bytes
    td_attributes: bytes
    xfam: bytes
    mr_td: bytes
    mr_config_id: bytes
    mr_owner: bytes
    mr_owner_config: bytes
    rtmrs: tuple[bytes, bytes, bytes, bytes]
    report_data: bytes
    tee_tcb_svn2: bytes | None
    mr_servicetd: bytes | None

    @property
    def debug(self) -> bool:
        """``TD_ATTRIBUTES.DEBUG`` (bit 0): the host VMM may read and write the TD's state."""
        return bool(self.td_attributes[0] & 0x01)

    def fields(self) -> dict[str, object]:
        """Return every field as JSON-friendly values (hex strings); 1.5 fields only when present."""
        result: dict[str, object] = {
            "tee_tcb_svn": self.tee_tcb_svn.hex(),
            "mr_seam": self.mr_seam.hex(),
            "mr_signer_seam": self.mr_signer_seam.hex(),
            "seam_attributes": self.seam_attributes.hex(),
            "td_attributes": self.td_attributes.hex(),
            "xfam": self.xfam.hex(),
            "mr_td": self.mr_td.hex(),
            "mr_config_id": self.mr_config_id.hex(),
            "mr_owner": self.mr_owner.hex(),
            "mr_owner_config": self.mr_owner_config.hex(),
            **{f"rtmr{index}": rtmr.hex() for index, rtmr in enumerate(self.rtmrs)},
            "report_data": self.report_data.hex(),
        }
        if self.tee_tcb_svn2 is not None and self.mr_servicetd is not None:
            result["tee_tcb_svn2"] = self.tee_tcb_svn2.hex()
            result["mr_servicetd"] = self.mr_servicetd.hex()
        return result


@dataclass(frozen=True)
class QeCertification:
    """The QE report certification data: the QE report (raw and parsed), its signature by the PCK
    key, the QE auth data, and the certification data (type 5 = PEM PCK chain, leaf first)."""

    qe_report_raw: bytes
    qe_report: SgxReportBody
    qe_report_signature: bytes
    qe_auth_data: bytes
    cert_data_type: int
    cert_data: bytes


@dataclass(frozen=True)
class DcapQuote:
    """A structurally valid DCAP quote, unverified.

    ``signed`` is exactly the bytes the attestation key signs; ``quote_signature`` is raw r||s and
    ``attestation_key`` raw x||y (P-256). ``body_type`` is :data:`BODY_SGX`, :data:`BODY_TDX10`
    or :data:`BODY_TDX15`; ``trailing`` counts the unsigned bytes ignored after the signature data.
    """

    header: QuoteHeader
    body_type: int
    body: SgxReportBody | TdReportBody
    signed: bytes
    quote_signature: bytes
    attestation_key: bytes
    qe: QeCertification
    trailing: int

    @property
    def tee(self) -> str:
        """``"sgx"`` or ``"tdx"``."""
        return "sgx" if self.header.tee_type == TEE_SGX else "tdx"


def parse_sgx_report_body(raw: bytes) -> SgxReportBody:
    """Split a 384-byte ``sgx_report_body_t`` into its fields.

    Guarantees: returns for exactly 384 bytes; raises ``AttestationError("attestation.malformed")``
    otherwise. Reserved bytes are not interpreted (the signature covers them).
    """
    if len(raw) != SGX_BODY_SIZE:
        raise _malformed(f"an SGX report body is {SGX_BODY_SIZE} bytes, got {len(raw)}")
    return SgxReportBody(
        cpu_svn=raw[0:16],
        miscselect=int.from_bytes(raw[16:20], "little"),
        isv_ext_prod_id=raw[32:48],
        attributes=raw[48:64],
        mr_enclave=raw[64:96],
        mr_signer=raw[128:160],
        config_id=raw[192:256],
        isv_prod_id=int.from_bytes(raw[256:258], "little"),
        isv_svn=int.from_bytes(raw[258:260], "little"),
        config_svn=int.from_bytes(raw[260:262], "little"),
        isv_family_id=raw[304:320],
        report_data=raw[320:384],
    )


def _td_body(raw: bytes, body_type: int) -> TdReportBody:
    def at(offset: int, size: int) -> bytes:
        return raw[offset : offset + size]

    is_15 = body_type == BODY_TDX15
    return TdReportBody(
        tee_tcb_svn=at(0, 16),
        mr_seam=at(16, 48),
        mr_signer_seam=at(64, 48),
        seam_attributes=at(112, 8),
        td_attributes=at(120, 8),
        xfam=at(128, 8),
        mr_td=at(136, 48),
        mr_config_id=at(184, 48),
        mr_owner=at(232, 48),
        mr_owner_config=at(280, 48),
        rtmrs=(at(328, 48), at(376, 48), at(424, 48), at(472, 48)),
        report_data=at(520, 64),
        tee_tcb_svn2=at(584, 16) if is_15 else None,
        mr_servicetd=at(600, 48) if is_15 else None,
    )


def _header(data: bytes) -> QuoteHeader:
    reader = _Reader(data, 0, len(data), "header")
    header = QuoteHeader(
        version=reader.uint(2, "version"),
        att_key_type=reader.uint(2, "attestation key type"),
        tee_type=reader.uint(4, "TEE type"),
        qe_svn=reader.uint(2, "QE SVN"),
        pce_svn=reader.uint(2, "PCE SVN"),
        qe_vendor_id=reader.take(16, "QE vendor id"),
        user_data=reader.take(20, "user data"),
    )
    if header.version not in (3, 4, 5):
        raise _malformed(f"unsupported version {header.version} (known: 3 for SGX, 4 and 5 for TDX)")
    if header.att_key_type != ATT_KEY_ECDSA_P256:
        raise _malformed(f"attestation key type {header.att_key_type} is not 2 (ECDSA P-256)")
    expected_tee = TEE_SGX if header.version == 3 else TEE_TDX
    if header.tee_type != expected_tee:
        raise _malformed(
            f"TEE type 0x{header.tee_type:x} in a version {header.version} quote "
            f"(this parser knows SGX v3 with 0x0 and TDX v4/v5 with 0x81)"
        )
    return header


def _body(data: bytes, version: int) -> tuple[int, bytes, int]:
    """Return (body type, raw body, end of the signed bytes)."""
    if version in (3, 4):
        body_type, size = (
            (BODY_SGX, SGX_BODY_SIZE) if version == 3 else (BODY_TDX10, _TD_BODY_SIZES[BODY_TDX10])
        )
        body = _Reader(data, HEADER_SIZE, len(data), "body").take(size, "quote body")
        return body_type, body, HEADER_SIZE + size  # 432 (SGX) or 632 (TDX v4)
    reader = _Reader(data, HEADER_SIZE, len(data), "v5 body descriptor")
    body_type, body_size = reader.uint(2, "body type"), reader.uint(4, "body size")
    expected = _TD_BODY_SIZES.get(body_type)
    if expected is None:
        raise _malformed(f"v5 body type {body_type} is not 2 (TDX 1.0) or 3 (TDX 1.5)")
    if body_size != expected:
        raise _malformed(f"v5 body type {body_type} must be {expected} bytes, the quote says {body_size}")
    return body_type, reader.take(body_size, "TD body"), reader.offset


def _qe_certification(reader: _Reader) -> QeCertification:
    qe_report_raw = reader.take(SGX_BODY_SIZE, "QE report")
    qe_report_signature = reader.take(_ECDSA_SIZE, "QE report signature")
    qe_auth_data = reader.take(reader.uint(2, "QE auth data size"), "QE auth data")
    cert_data_type = reader.uint(2, "certification data type")
    cert_data = reader.take(reader.uint(4, "certification data size"), "certification data")
    reader.finish()
    return QeCertification(
        qe_report_raw=qe_report_raw,
        qe_report=parse_sgx_report_body(qe_report_raw),
        qe_report_signature=qe_report_signature,
        qe_auth_data=qe_auth_data,
        cert_data_type=cert_data_type,
        cert_data=cert_data,
    )


def parse_quote(data: bytes) -> DcapQuote:
    """Parse a raw SGX v3 or TDX v4/v5 ECDSA-P256 quote into a :class:`DcapQuote`.

    Guarantees: returns only if every length field fits its container, the signature data is
    fully accounted for (bytes after it are ignored, see the module docstring), the header names
    version 3 with TEE type 0 (SGX) or version 4/5 with TEE type 0x81 (TDX) and attestation key
    type 2, a v5 body is of type 2 or 3 with its exact size, and TDX certification data is of
    type 6. Otherwise raises ``AttestationError("attestation.malformed")`` naming the field, and
    nothing else, for any input (bytes-like or not) of any size. It checks no signature and no
    certificate.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise _malformed(f"expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) > MAX_QUOTE_SIZE:
        raise _malformed(f"{len(data)} bytes is more than the {MAX_QUOTE_SIZE} a quote may have")
    header = _header(data)
    body_type, raw_body, signed_end = _body(data, header.version)
    body = parse_sgx_report_body(raw_body) if body_type == BODY_SGX else _td_body(raw_body, body_type)
    outer = _Reader(data, signed_end, len(data), "quote")
    reader = outer.sub(outer.uint(4, "signature data size"), "signature data")
    quote_signature = reader.take(_ECDSA_SIZE, "quote signature")
    attestation_key = reader.take(_ECDSA_SIZE, "attestation key")
    if header.tee_type == TEE_TDX:
        certification_type = reader.uint(2, "certification data type")
        if certification_type != CERT_QE_REPORT:
            raise _malformed(
                f"TDX certification data type is {certification_type}, expected 6 (QE report certification)"
            )
        size = reader.uint(4, "QE report certification data size")
        qe = _qe_certification(reader.sub(size, "QE report certification data"))
    else:
        qe = _qe_certification(reader)
    reader.finish()
    return DcapQuote(
        header=header,
        body_type=body_type,
        body=body,
        signed=data[:signed_end],
        quote_signature=quote_signature,
        attestation_key=attestation_key,
        qe=qe,
        trailing=len(data) - outer.offset,
    )
