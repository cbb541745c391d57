"""Intel SGX / TDX DCAP verification against real-hardware quotes and Intel collateral.

The vectors are in ../shared/attestation-vectors/{sgx,tdx} (see their READMEs for sources, pinned
times and expected outcomes). Every tamper case starts from a real quote and changes one thing.
The only synthetic material is a self-made P-256 root (with a PCK chain, a TCB signing certificate,
CRLs and TCB info under it), spliced into real quotes: it shows that the pinned root decides, and
reaches what Intel's real collateral never gives for these quotes (a revoked certificate, a TCB
level rated Revoked or OutOfDate, a debug enclave with collateral).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache

import dcap_qvl
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from attestation_vectors import at, expected_fields, read_vector
from sealedml.attestation.evidence import dcap_collateral
from sealedml.attestation.evidence.dcap import (
    INTEL_SGX_ROOT_CA_FINGERPRINT,
    collateral_from_pcs,
    parse_quote,
    verify_dcap,
)
from sealedml.attestation.evidence.dcap_quote import DcapQuote
from sealedml.errors import AttestationError


@dataclass(frozen=True)
class Vector:
    folder: str
    file: str
    now: datetime
    collateral: str | None  # file name in the folder, "pcs" for go-tdx-guest's raw PCS responses
    donor: str  # a vector whose (real, valid at `now`) PCK chain is spliced in for the swap test


VECTORS = {
    "dcapqvl_sgx": Vector(
        "sgx",
        "dcapqvl_sgx_v3_quote.bin",
        at("2025-07-19T10:01:17Z"),
        "dcapqvl_sgx_v3_collateral.json",
        "cosmian",
    ),
    "cosmian": Vector("sgx", "cosmian_sgx_v3_quote.dat", at("2025-07-19T10:01:17Z"), None, "occlum"),
    "occlum": Vector("sgx", "trustee_occlum_sgx_v3_quote.dat", at("2025-07-19T10:01:17Z"), None, "cosmian"),
    "dcapqvl_tdx_v4": Vector(
        "tdx",
        "dcapqvl_tdx_v4_quote.bin",
        at("2025-07-19T10:00:34Z"),
        "dcapqvl_tdx_v4_collateral.json",
        "gotdx_v4",
    ),
    "dcapqvl_tdx_v5": Vector(
        "tdx",
        "dcapqvl_tdx_v5_quote_nomatch.bin",
        at("2026-03-20T10:41:14Z"),
        "dcapqvl_tdx_v5_nomatch_collateral.json",
        "gotdx_v5",
    ),
    "gotdx_v4": Vector(
        "tdx", "gotdxguest_tdx_v4_quote_spr.dat", at("2023-07-01T01:00:00Z"), "pcs", "cosmian"
    ),
    "gotdx_v5": Vector(
        "tdx", "gotdxguest_tdx_v5_quote.dat", at("2026-03-20T10:41:14Z"), None, "dcapqvl_tdx_v5"
    ),
}
ALL = sorted(VECTORS)
WITH_COLLATERAL = sorted(name for name, vector in VECTORS.items() if vector.collateral)
WITHOUT_COLLATERAL = sorted(name for name, vector in VECTORS.items() if not vector.collateral)
SGX_OID = "1.2.840.113741.1.13.1"


@cache
def quote_bytes(name: str) -> bytes:
    vector = VECTORS[name]
    return read_vector(vector.folder, vector.file)


@cache
def collateral(name: str) -> bytes | None:
    vector = VECTORS[name]
    if vector.collateral is None:
        return None
    if vector.collateral != "pcs":
        return read_vector(vector.folder, vector.collateral)
    return collateral_from_pcs(
        tcb_info_response=read_vector("tdx", "gotdxguest_tcbinfo_fmspc50806f000000.json"),
        qe_identity_response=read_vector("tdx", "gotdxguest_td_qe_identity.json"),
        tcb_info_issuer_chain=read_vector("tdx", "gotdxguest_tcb_signing_chain.pem"),
        pck_crl=read_vector("tdx", "gotdxguest_pck_platform_crl.der"),
        root_ca_crl=read_vector("tdx", "gotdxguest_root_ca_crl.der"),
        pck_crl_issuer_chain=read_vector("tdx", "gotdxguest_pck_crl_issuer_chain.pem"),
    )


def code_of(
    quote: bytes, now: datetime, *, collateral: bytes | None = None, **kwargs: str
) -> AttestationError:
    with pytest.raises(AttestationError) as caught:
        verify_dcap(quote, collateral=collateral, now=now, **kwargs)
    return caught.value


def flip(data: bytes, offset: int, mask: int = 0x01) -> bytes:
    changed = bytearray(data)
    changed[offset] ^= mask
    return bytes(changed)


def rebuild(
    quote: DcapQuote,
    *,
    cert_data: bytes | None = None,
    cert_type: int | None = None,
    qe_report: bytes | None = None,
    qe_report_signature: bytes | None = None,
) -> bytes:
    """Serialize a parsed quote again (Intel layout), optionally replacing parts of the QE block."""
    qe = quote.qe
    cert = qe.cert_data if cert_data is None else cert_data
    block = (
        (qe.qe_report_raw if qe_report is None else qe_report)
        + (qe.qe_report_signature if qe_report_signature is None else qe_report_signature)
        + len(qe.qe_auth_data).to_bytes(2, "little")
        + qe.qe_auth_data
        + (qe.cert_data_type if cert_type is None else cert_type).to_bytes(2, "little")
        + len(cert).to_bytes(4, "little")
        + cert
    )
    if quote.tee == "tdx":
        block = (6).to_bytes(2, "little") + len(block).to_bytes(4, "little") + block
    signature_data = quote.quote_signature + quote.attestation_key + block
    return quote.signed + len(signature_data).to_bytes(4, "little") + signature_data


# -- a self-made P-256 chain, with an Intel-style SGX extension on the leaf ---------------------------


def _der(tag: int, content: bytes) -> bytes:
    size = len(content)
    length = bytes([size]) if size < 0x80 else bytes([0x82]) + size.to_bytes(2, "big")
    return bytes([tag]) + length + content


def _oid(dotted: str) -> bytes:
    first, second, *rest = (int(part) for part in dotted.split("."))
    body = bytearray([40 * first + second])
    for number in rest:
        chunk = [number & 0x7F]
        while number := number >> 7:
            chunk.append(0x80 | (number & 0x7F))
        body += bytes(reversed(chunk))
    return _der(0x06, bytes(body))


def _entry(suffix: str, value: bytes) -> bytes:
    return _der(0x30, _oid(f"{SGX_OID}.{suffix}") + value)


FAKE_FMSPC = bytes.fromhex("f0f1f2f3f4f5")


def _sgx_extension() -> x509.UnrecognizedExtension:
    tcb = b"".join(_entry(f"2.{index}", _der(0x02, b"\x01")) for index in range(1, 17))
    tcb += _entry("2.17", _der(0x02, b"\x0d")) + _entry("2.18", _der(0x04, bytes([1] * 16)))
    value = _der(
        0x30,
        _entry("1", _der(0x04, bytes(16)))
        + _entry("2", _der(0x30, tcb))
        + _entry("3", _der(0x04, b"\x00\x00"))
        + _entry("4", _der(0x04, FAKE_FMSPC))
        + _entry("5", _der(0x0A, b"\x00")),
    )
    return x509.UnrecognizedExtension(x509.ObjectIdentifier(SGX_OID), value)


@dataclass(frozen=True)
class FakeChain:
    """A self-made [PCK, CA, root] chain (P-256), plus a TCB signing certificate under the same root."""

    pem: bytes
    keys: dict[str, ec.EllipticCurvePrivateKey]
    certs: dict[str, x509.Certificate]
    root_fingerprint: str


def _certificate(
    name: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    signer: ec.EllipticCurvePrivateKey,
    ca: bool,
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(datetime(2020, 1, 1, tzinfo=UTC))
        .not_valid_after(datetime(2040, 1, 1, tzinfo=UTC))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=not ca,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )
    if name.endswith("PCK Certificate"):
        builder = builder.add_extension(_sgx_extension(), critical=False)
    return builder.sign(signer, hashes.SHA256())


@cache
def fake_chain() -> FakeChain:
    keys = {role: ec.generate_private_key(ec.SECP256R1()) for role in ("leaf", "ca", "root", "tcb")}
    root_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Not Intel Root CA")])
    root = _certificate("Not Intel Root CA", keys["root"], root_name, keys["root"], ca=True)
    ca = _certificate("Not Intel PCK CA", keys["ca"], root.subject, keys["root"], ca=True)
    leaf = _certificate("Not Intel PCK Certificate", keys["leaf"], ca.subject, keys["ca"], ca=False)
    tcb = _certificate("Not Intel TCB Signing", keys["tcb"], root.subject, keys["root"], ca=False)
    pem = b"".join(cert.public_bytes(serialization.Encoding.PEM) for cert in (leaf, ca, root))
    fingerprint = hashlib.sha256(root.public_bytes(serialization.Encoding.DER)).hexdigest()
    return FakeChain(pem, keys, {"leaf": leaf, "ca": ca, "root": root, "tcb": tcb}, fingerprint)


def raw_signature(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def pck_chain(quote: bytes) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(parse_quote(quote).qe.cert_data.rstrip(b"\0"))


# -- the vectors verify, and every claim equals the expected fields --------------------------------------


@pytest.mark.parametrize("name", WITHOUT_COLLATERAL)
def test_quotes_without_collateral_verify_with_every_expected_field(name: str) -> None:
    vector = VECTORS[name]
    expected = expected_fields(vector.folder)[vector.file]
    data = quote_bytes(name)
    claims = verify_dcap(data, collateral=None, now=vector.now)
    assert hashlib.sha256(data).hexdigest() == expected["sha256"] and len(data) == expected["size"]
    assert claims.tee == vector.folder and claims.simulated is False
    assert claims.tcb_status is None and claims.advisories == () and claims.collateral_issued_at is None
    assert claims.issued_at == vector.now and claims.root_fingerprint == INTEL_SGX_ROOT_CA_FINGERPRINT
    assert claims.report_data.hex() == expected["report_data"] and claims.platform_id == expected["pck_fmspc"]
    raw = claims.raw
    assert raw["version"] == expected["version"] and raw["att_key_type"] == expected["att_key_type"]
    assert hex(raw["tee_type"]) == expected["tee_type"] and raw["fmspc"] == expected["pck_fmspc"]
    assert raw["qe_svn"] == expected["qe_svn"] and raw["pce_svn"] == expected["pce_svn"]
    assert raw["qe_vendor_id"] == expected["qe_vendor_id"]
    assert raw["trailing_bytes"] == expected["trailing_bytes_after_signature_data"]
    offset = expected["signature_data_len_offset"]
    assert len(parse_quote(data).signed) == offset
    assert int.from_bytes(data[offset : offset + 4], "little") == expected["signature_data_len"]
    if vector.folder == "sgx":
        for key in (
            "cpu_svn",
            "miscselect",
            "attributes",
            "mr_enclave",
            "mr_signer",
            "isv_prod_id",
            "isv_svn",
        ):
            assert raw[key] == expected[key], key
        assert claims.measurement == expected["mr_enclave"] and claims.svn == expected["isv_svn"]
        assert claims.debug == bool(bytes.fromhex(expected["attributes"])[0] & 0x02)
    else:
        for key in ("tee_tcb_svn", "mr_seam", "mr_signer_seam", "seam_attributes", "td_attributes", "xfam"):
            assert raw[key] == expected[key], key
        for key in ("mr_td", "mr_config_id", "mr_owner", "mr_owner_config"):
            assert raw[key] == expected[key], key
        assert [raw[f"rtmr{index}"] for index in range(4)] == expected["rtmr"]
        assert raw["body_type"] == expected.get("v5_body_type", 2)
        if "tee_tcb_svn2" in expected:
            assert raw["tee_tcb_svn2"] == expected["tee_tcb_svn2"]
            assert raw["mr_servicetd"] == expected["mr_service_td"]
        assert claims.measurement == expected["mr_td"]
        assert claims.svn == bytes.fromhex(expected["tee_tcb_svn"])[0]
        assert claims.debug == bool(bytes.fromhex(expected["td_attributes"])[0] & 0x01)
    chain = pck_chain(data)
    assert [cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value for cert in chain] == expected[
        "pck_chain_cn"
    ]
    assert [str(chain[0].not_valid_before_utc), str(chain[0].not_valid_after_utc)] == expected[
        "pck_leaf_validity"
    ]
    json.dumps(claims.to_dict())  # raw is JSON-friendly


def test_known_values_from_upstream_tests() -> None:
    cosmian = verify_dcap(quote_bytes("cosmian"), collateral=None, now=VECTORS["cosmian"].now)
    assert cosmian.raw["mr_signer"] == "ac2c9fa87e4c91768b1d0c47169466c50d5a98c790639fbaefe7352a59919980"
    assert len(pck_chain(quote_bytes("cosmian"))) == 3
    occlum = verify_dcap(quote_bytes("occlum"), collateral=None, now=VECTORS["occlum"].now)
    assert occlum.debug is True and occlum.report_data.rstrip(b"\0") == b"test"


def test_dcapqvl_sgx_with_collateral_is_configuration_and_sw_hardening_needed() -> None:
    vector = VECTORS["dcapqvl_sgx"]
    claims = verify_dcap(quote_bytes("dcapqvl_sgx"), collateral=collateral("dcapqvl_sgx"), now=vector.now)
    assert claims.tcb_status == "ConfigurationAndSWHardeningNeeded"
    assert claims.advisories == ("INTEL-SA-00289", "INTEL-SA-00615")
    assert claims.report_data.rstrip(b"\0") == b"Hello, world!" and claims.debug is False
    assert claims.measurement.startswith("33d8736d") and claims.platform_id == "00a067110000"
    # the oldest of TCB info (2025-06-19T10:56:11Z) and QE identity (2025-06-19T10:01:18Z)
    assert claims.collateral_issued_at == at("2025-06-19T10:01:18Z")
    assert claims.raw["tcb_status"] == claims.tcb_status
    assert claims.raw["advisories"] == list(claims.advisories)
    assert claims.raw["collateral_next_update"] == "2025-07-19T10:01:18Z"
    expected = expected_fields("sgx")[vector.file]
    assert all(
        claims.raw[key] == expected[key] for key in ("mr_enclave", "mr_signer", "cpu_svn", "attributes")
    )


def test_dcapqvl_tdx_v4_with_collateral_is_up_to_date() -> None:
    vector = VECTORS["dcapqvl_tdx_v4"]
    claims = verify_dcap(
        quote_bytes("dcapqvl_tdx_v4"), collateral=collateral("dcapqvl_tdx_v4"), now=vector.now
    )
    assert claims.tcb_status == "UpToDate" and claims.advisories == ()
    assert claims.tee == "tdx" and claims.measurement == expected_fields("tdx")[vector.file]["mr_td"]
    assert claims.svn == 6 and claims.platform_id == "b0c06f000000"
    assert claims.collateral_issued_at == at("2025-06-19T10:16:03Z")
    assert claims.raw["collateral_next_update"] == "2025-07-19T10:00:35Z"  # the PCK CRL's nextUpdate


def test_dcapqvl_tdx_v5_matches_no_tcb_level() -> None:
    vector = VECTORS["dcapqvl_tdx_v5"]
    error = code_of(quote_bytes("dcapqvl_tdx_v5"), vector.now, collateral=collateral("dcapqvl_tdx_v5"))
    assert error.code == "attestation.tcb_mismatch"
    assert "No matching TCB level" in error.message


def test_gotdxguest_v4_with_collateral_built_from_pcs_responses_matches_no_tcb_level() -> None:
    error = code_of(quote_bytes("gotdx_v4"), VECTORS["gotdx_v4"].now, collateral=collateral("gotdx_v4"))
    assert error.code == "attestation.tcb_mismatch"
    assert "No matching TCB level" in error.message


def test_collateral_from_pcs_keeps_the_exact_signed_text() -> None:
    built = json.loads(collateral("gotdx_v4") or b"")
    tcb_response = read_vector("tdx", "gotdxguest_tcbinfo_fmspc50806f000000.json").decode()
    qe_response = read_vector("tdx", "gotdxguest_td_qe_identity.json").decode()
    assert tcb_response.startswith('{"tcbInfo":' + built["tcb_info"] + ',"signature":')
    assert qe_response.startswith('{"enclaveIdentity":' + built["qe_identity"] + ',"signature":')
    assert built["tcb_info_signature"] == json.loads(tcb_response)["signature"]
    assert built["qe_identity_issuer_chain"] == built["tcb_info_issuer_chain"]
    assert bytes.fromhex(built["pck_crl"]) == read_vector("tdx", "gotdxguest_pck_platform_crl.der")
    dcap_qvl.QuoteCollateralV3.from_json(json.dumps(built))  # dcap-qvl reads it too


def test_collateral_from_pcs_accepts_url_encoded_chains_and_pem_crls() -> None:
    from urllib.parse import quote

    chain = read_vector("tdx", "gotdxguest_tcb_signing_chain.pem")
    crl = x509.load_der_x509_crl(read_vector("tdx", "gotdxguest_root_ca_crl.der"))
    built = collateral_from_pcs(
        tcb_info_response=read_vector("tdx", "gotdxguest_tcbinfo_fmspc50806f000000.json"),
        qe_identity_response=read_vector("tdx", "gotdxguest_td_qe_identity.json"),
        tcb_info_issuer_chain=quote(chain.decode()).encode(),
        pck_crl=read_vector("tdx", "gotdxguest_pck_platform_crl.der"),
        root_ca_crl=crl.public_bytes(serialization.Encoding.PEM),
        pck_crl_issuer_chain=read_vector("tdx", "gotdxguest_pck_crl_issuer_chain.pem"),
    )
    assert built == collateral("gotdx_v4")


@pytest.mark.parametrize(
    "field",
    ["tcb_info_response", "qe_identity_response", "tcb_info_issuer_chain", "pck_crl", "root_ca_crl"],
)
@pytest.mark.parametrize("junk", [b"", b"{}", b'{"tcbInfo":{}}', b"\xff\xfe", b"[1, 2]", b'{"a":1} x'])
def test_collateral_from_pcs_refuses_junk(field: str, junk: bytes) -> None:
    inputs = {
        "tcb_info_response": read_vector("tdx", "gotdxguest_tcbinfo_fmspc50806f000000.json"),
        "qe_identity_response": read_vector("tdx", "gotdxguest_td_qe_identity.json"),
        "tcb_info_issuer_chain": read_vector("tdx", "gotdxguest_tcb_signing_chain.pem"),
        "pck_crl": read_vector("tdx", "gotdxguest_pck_platform_crl.der"),
        "root_ca_crl": read_vector("tdx", "gotdxguest_root_ca_crl.der"),
        "pck_crl_issuer_chain": read_vector("tdx", "gotdxguest_pck_crl_issuer_chain.pem"),
    }
    with pytest.raises(AttestationError) as caught:
        collateral_from_pcs(**{**inputs, field: junk})
    assert caught.value.code == "attestation.collateral_invalid"


def test_gotdxguest_v5_verifies_with_the_dcapqvl_2026_collateral_of_the_same_fmspc() -> None:
    # Not in the README: both quotes come from FMSPC 90c06f000000 platforms, and dcap-qvl's 2026 sample
    # collateral (TCB info, TD_QE identity, CRLs) is complete, so this quote gets a full TCB verdict.
    claims = verify_dcap(
        quote_bytes("gotdx_v5"), collateral=collateral("dcapqvl_tdx_v5"), now=VECTORS["gotdx_v5"].now
    )
    assert claims.tcb_status == "UpToDate" and claims.advisories == ()
    assert claims.raw["body_type"] == 3 and claims.svn == 11


def test_every_quote_serializes_back_to_its_bytes() -> None:
    for name in ALL:
        data = quote_bytes(name)
        parsed = parse_quote(data)
        assert rebuild(parsed) == data[: len(data) - parsed.trailing], name


# -- the parser ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("offset", "value", "needle"),
    [
        (0, 2, "unsupported version 2"),
        (0, 6, "unsupported version 6"),
        (2, 3, "attestation key type 3"),
        (4, 0x81, "TEE type 0x81"),
    ],
)
def test_the_parser_refuses_unknown_header_values(offset: int, value: int, needle: str) -> None:
    data = bytearray(quote_bytes("dcapqvl_sgx"))
    data[offset : offset + 2] = value.to_bytes(2, "little")
    error = code_of(bytes(data), VECTORS["dcapqvl_sgx"].now)
    assert error.code == "attestation.malformed" and needle in error.message


@pytest.mark.parametrize(("body_type", "size"), [(1, 384), (4, 648), (3, 584), (2, 648)])
def test_the_parser_refuses_unknown_v5_bodies(body_type: int, size: int) -> None:
    data = bytearray(quote_bytes("gotdx_v5"))
    data[48:54] = body_type.to_bytes(2, "little") + size.to_bytes(4, "little")
    with pytest.raises(AttestationError) as caught:
        parse_quote(bytes(data))
    assert caught.value.code == "attestation.malformed" and "v5 body type" in caught.value.message


def test_the_parser_refuses_a_sgx_header_on_a_tdx_quote() -> None:
    data = bytearray(quote_bytes("dcapqvl_tdx_v4"))
    data[4:8] = bytes(4)
    error = code_of(bytes(data), VECTORS["dcapqvl_tdx_v4"].now)
    assert error.code == "attestation.malformed" and "TEE type 0x0" in error.message


def test_trailing_bytes_are_ignored_and_unexplained_bytes_inside_are_not() -> None:
    data = quote_bytes("cosmian")
    claims = verify_dcap(data + b"\0" * 100 + b"junk", collateral=None, now=VECTORS["cosmian"].now)
    assert claims.raw["trailing_bytes"] == 104
    grown = bytearray(data + b"\0")
    grown[432:436] = (int.from_bytes(data[432:436], "little") + 1).to_bytes(4, "little")
    error = code_of(bytes(grown), VECTORS["cosmian"].now)
    assert error.code == "attestation.malformed" and "unexplained" in error.message


def test_only_pem_pck_chains_are_supported() -> None:
    parsed = parse_quote(quote_bytes("dcapqvl_tdx_v4"))
    error = code_of(rebuild(parsed, cert_type=3), VECTORS["dcapqvl_tdx_v4"].now)
    assert error.code == "attestation.malformed" and "type 3" in error.message


def test_a_chain_of_two_certificates_is_refused() -> None:
    parsed = parse_quote(quote_bytes("cosmian"))
    two = b"".join(
        cert.public_bytes(serialization.Encoding.PEM) for cert in pck_chain(quote_bytes("cosmian"))[:2]
    )
    error = code_of(rebuild(parsed, cert_data=two), VECTORS["cosmian"].now)
    assert error.code == "attestation.chain_invalid" and "got 2" in error.message


def test_time_must_be_aware_and_the_root_a_fingerprint() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        verify_dcap(quote_bytes("cosmian"), collateral=None, now=datetime(2025, 7, 19))
    with pytest.raises(ValueError, match="trusted_root"):
        verify_dcap(quote_bytes("cosmian"), collateral=None, now=VECTORS["cosmian"].now, trusted_root="44a0")


# -- tampered quotes, every vector -----------------------------------------------------------------------


def _report_data_offset(parsed: DcapQuote) -> int:
    return len(parsed.signed) - 64


@pytest.mark.parametrize("name", ALL)
def test_a_bit_flip_in_the_signed_body_breaks_the_quote_signature(name: str) -> None:
    data = quote_bytes(name)
    measurement_offset = (
        48 + 64 if VECTORS[name].folder == "sgx" else len(parse_quote(data).signed) - 584 + 136
    )
    for offset in (measurement_offset, 10, _report_data_offset(parse_quote(data))):  # MR, header, report_data
        error = code_of(flip(data, offset), VECTORS[name].now, collateral=collateral(name))
        assert error.code == "attestation.signature_invalid", offset
        assert "quote signature" in error.message


@pytest.mark.parametrize("name", ALL)
def test_a_bit_flip_in_the_quote_signature_is_refused(name: str) -> None:
    data = quote_bytes(name)
    signed = len(parse_quote(data).signed)
    for offset in (signed + 4, signed + 4 + 63):  # first byte of r, last byte of s
        error = code_of(flip(data, offset), VECTORS[name].now, collateral=collateral(name))
        assert error.code == "attestation.signature_invalid" and "quote signature" in error.message


@pytest.mark.parametrize("name", ALL)
def test_a_bit_flip_in_the_qe_report_or_its_binding_is_refused(name: str) -> None:
    data = quote_bytes(name)
    parsed = parse_quote(data)
    report_offset = data.index(parsed.qe.qe_report_raw)
    for offset, needle in (
        (report_offset + 64, "QE report signature"),  # the QE's MRENCLAVE
        (report_offset + 320, "QE report signature"),  # the QE's report_data
        (report_offset + 384, "QE report signature"),  # the QE report signature itself
        (report_offset + 384 + 64 + 2, "does not bind"),  # the QE auth data
        (len(parsed.signed) + 4 + 64, "does not bind"),  # the attestation key
    ):
        error = code_of(flip(data, offset), VECTORS[name].now, collateral=collateral(name))
        assert error.code == "attestation.signature_invalid", offset
        assert needle in error.message, (offset, error.message)


@pytest.mark.parametrize("name", ALL)
def test_a_pck_chain_from_another_quote_does_not_sign_the_qe_report(name: str) -> None:
    vector = VECTORS[name]
    donor = parse_quote(quote_bytes(vector.donor)).qe.cert_data
    donor_leaf = pck_chain(quote_bytes(vector.donor))[0]
    assert donor_leaf.not_valid_before_utc <= vector.now <= donor_leaf.not_valid_after_utc  # a valid chain
    swapped = rebuild(parse_quote(quote_bytes(name)), cert_data=donor)
    error = code_of(swapped, vector.now, collateral=collateral(name))
    assert error.code == "attestation.signature_invalid" and "QE report signature" in error.message


@pytest.mark.parametrize("name", ALL)
def test_a_self_made_root_is_untrusted_unless_pinned(name: str) -> None:
    vector, fake = VECTORS[name], fake_chain()
    parsed = parse_quote(quote_bytes(name))
    spliced = rebuild(parsed, cert_data=fake.pem)
    error = code_of(spliced, vector.now, collateral=collateral(name))
    assert error.code == "attestation.untrusted_root" and fake.root_fingerprint in error.message
    # Re-signed by the self-made PCK, the quote verifies only when its root is the one pinned ...
    resigned = rebuild(
        parsed,
        cert_data=fake.pem,
        qe_report_signature=raw_signature(fake.keys["leaf"], parsed.qe.qe_report_raw),
    )
    assert code_of(resigned, vector.now).code == "attestation.untrusted_root"
    claims = verify_dcap(resigned, collateral=None, now=vector.now, trusted_root=fake.root_fingerprint)
    assert claims.root_fingerprint == fake.root_fingerprint and claims.platform_id == FAKE_FMSPC.hex()
    assert claims.measurement == verify_dcap(quote_bytes(name), collateral=None, now=vector.now).measurement
    # ... and Intel's collateral is not signed under that root.
    if vector.collateral:
        error = code_of(resigned, vector.now, collateral=collateral(name), trusted_root=fake.root_fingerprint)
        assert error.code == "attestation.collateral_invalid" and "pinned root" in error.message


@pytest.mark.parametrize("name", ALL)
def test_expired_and_not_yet_valid_pck_certificates(name: str) -> None:
    leaf = pck_chain(quote_bytes(name))[0]
    for now, needle in (
        (leaf.not_valid_after_utc + timedelta(days=1), "expired at"),
        (leaf.not_valid_before_utc - timedelta(days=1), "is not valid before"),
    ):
        error = code_of(quote_bytes(name), now)
        assert error.code == "attestation.certificate_expired", now
        assert "PCK certificate" in error.message and needle in error.message


# -- collateral, every vector that has some --------------------------------------------------------------


@pytest.mark.parametrize("name", WITH_COLLATERAL)
def test_collateral_expires(name: str) -> None:
    vector = VECTORS[name]
    later = code_of(quote_bytes(name), vector.now + timedelta(days=40), collateral=collateral(name))
    assert later.code == "attestation.collateral_expired" and "expired at" in later.message
    issued = json.loads(json.loads(collateral(name) or b"")["tcb_info"])["issueDate"]
    earlier = code_of(quote_bytes(name), at(issued) - timedelta(seconds=1), collateral=collateral(name))
    assert earlier.code == "attestation.collateral_expired" and "not valid before" in earlier.message


def test_collateral_is_checked_to_the_second() -> None:
    vector = VECTORS["dcapqvl_tdx_v4"]  # the PCK CRL's nextUpdate, 2025-07-19T10:00:35Z, comes first
    data, bundle = quote_bytes("dcapqvl_tdx_v4"), collateral("dcapqvl_tdx_v4")
    assert verify_dcap(data, collateral=bundle, now=vector.now).tcb_status == "UpToDate"
    error = code_of(
        data, vector.now + timedelta(seconds=1), collateral=bundle
    )  # a CRL is stale at nextUpdate
    assert (
        error.code == "attestation.collateral_expired"
        and "PCK CRL expired at 2025-07-19T10:00:35Z" in error.message
    )


@pytest.mark.parametrize(
    ("name", "other", "needle"),
    [
        ("dcapqvl_sgx", "dcapqvl_tdx_v4", "SGX quotes need 'SGX'"),
        ("dcapqvl_tdx_v4", "dcapqvl_tdx_v5", "another platform"),
        ("dcapqvl_tdx_v5", "dcapqvl_tdx_v4", "another platform"),
        ("gotdx_v4", "dcapqvl_tdx_v4", "another platform"),
        ("dcapqvl_tdx_v4", "dcapqvl_sgx", "TDX quotes need 'TDX'"),
    ],
)
def test_collateral_of_another_quote_is_invalid(name: str, other: str, needle: str) -> None:
    error = code_of(quote_bytes(name), VECTORS[name].now, collateral=collateral(other))
    assert error.code == "attestation.collateral_invalid" and needle in error.message


def _with(name: str, **changes: object) -> bytes:
    document = json.loads(collateral(name) or b"")
    document.update(changes)
    return json.dumps({key: value for key, value in document.items() if value is not ...}).encode()


@pytest.mark.parametrize("name", WITH_COLLATERAL)
@pytest.mark.parametrize(
    ("field", "what"), [("tcb_info_signature", "TCB info"), ("qe_identity_signature", "QE identity")]
)
def test_a_tampered_collateral_signature_is_invalid(name: str, field: str, what: str) -> None:
    signature = json.loads(collateral(name) or b"")[field]
    tampered = ("0" if signature[0] != "0" else "1") + signature[1:]
    error = code_of(quote_bytes(name), VECTORS[name].now, collateral=_with(name, **{field: tampered}))
    assert error.code == "attestation.collateral_invalid" and f"{what} signature" in error.message


@pytest.mark.parametrize("name", WITH_COLLATERAL)
def test_tampered_signed_collateral_text_is_invalid(name: str) -> None:
    tcb_info = json.loads(collateral(name) or b"")["tcb_info"]
    raised = tcb_info.replace('"tcbEvaluationDataNumber":', '"tcbEvaluationDataNumber":1', 1)
    assert raised != tcb_info
    error = code_of(quote_bytes(name), VECTORS[name].now, collateral=_with(name, tcb_info=raised))
    assert error.code == "attestation.collateral_invalid" and "TCB info signature" in error.message


@pytest.mark.parametrize(
    "changes",
    [
        {"pck_crl": ...},
        {"extra": "x"},
        {"pck_certificate_chain": "-----BEGIN CERTIFICATE-----"},
        {"root_ca_crl": "zz"},
        {"pck_crl": "3082"},
        {"tcb_info_signature": "00" * 63},
        {"tcb_info_issuer_chain": "not pem"},
        {"qe_identity": 5},
    ],
)
def test_malformed_collateral_is_invalid(changes: dict[str, object]) -> None:
    error = code_of(
        quote_bytes("dcapqvl_sgx"), VECTORS["dcapqvl_sgx"].now, collateral=_with("dcapqvl_sgx", **changes)
    )
    assert error.code == "attestation.collateral_invalid"


def test_a_null_pck_certificate_chain_key_is_tolerated() -> None:
    bundle = _with("dcapqvl_sgx", pck_certificate_chain=None)
    claims = verify_dcap(quote_bytes("dcapqvl_sgx"), collateral=bundle, now=VECTORS["dcapqvl_sgx"].now)
    assert claims.tcb_status == "ConfigurationAndSWHardeningNeeded"


def test_a_crl_from_another_ca_is_invalid() -> None:
    # dcap-qvl's SGX collateral carries the Processor CA's CRL; the TDX quote's PCK is from the Platform CA.
    sgx = json.loads(collateral("dcapqvl_sgx") or b"")
    bundle = _with("dcapqvl_tdx_v4", pck_crl=sgx["pck_crl"])
    error = code_of(quote_bytes("dcapqvl_tdx_v4"), VECTORS["dcapqvl_tdx_v4"].now, collateral=bundle)
    assert error.code == "attestation.collateral_invalid" and "PCK CRL is not signed by" in error.message


# -- dcap-qvl's verdicts, by meaning ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "code"),
    [
        ("Verification failed: No matching TCB level found", "attestation.tcb_mismatch"),
        ("Verification failed: TCB status is invalid: Revoked", "attestation.revoked"),
        ("Verification failed: TCBInfo expired", "attestation.collateral_expired"),
        ("Verification failed: QE Identity issue date is in the future", "attestation.collateral_expired"),
        (
            "Verification failed: CrlExpired { time: UnixTime(1775779200), next_update: UnixTime(17752) }",
            "attestation.collateral_expired",
        ),
        (
            "Verification failed: Signature is invalid for tcb_info in quote_collateral",
            "attestation.collateral_invalid",
        ),
        ("Verification failed: Fmspc mismatch", "attestation.collateral_invalid"),
        ("Verification failed: Debug mode is enabled", "attestation.debug_not_allowed"),
        ("Verification failed: SEPT_VE_DISABLE is not enabled", "attestation.td_attributes_not_allowed"),
        (
            "Verification failed: QE report validation failed\n\nCaused by:\n    Debug mode is enabled",
            "attestation.chain_invalid",
        ),
        ("Verification failed: TDX module identity check", "attestation.tcb_mismatch"),
        ("Verification failed: Unknown QE vendor ID", "attestation.malformed"),
        ("Verification failed: something new", "attestation.collateral_invalid"),
    ],
)
def test_dcap_qvl_messages_map_to_codes_by_meaning(message: str, code: str) -> None:
    error = dcap_collateral._from_dcap_qvl(message)
    assert error.code == code and message.removeprefix("Verification failed: ") in error.message


# -- our own collateral checks under a self-made root (Intel never revokes on demand) --------------------


def _fake_collateral(*, revoked: str | None, name: str = "cosmian", status: str = "") -> bytes:
    """Collateral signed under the self-made root, with CRLs that revoke ``revoked`` (``"leaf"``,
    ``"ca"`` or nothing), and a QE identity matching ``name``'s real QE. Without ``status`` the TCB
    info is minimal; with it, it has one TCB level (the fake PCK's SVNs) of that status."""
    fake = fake_chain()

    def crl(issuer: str, serials: list[int]) -> str:
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(fake.certs[issuer].subject)
            .last_update(datetime(2024, 1, 1, tzinfo=UTC))
            .next_update(datetime(2030, 1, 1, tzinfo=UTC))
            .add_extension(x509.CRLNumber(1), critical=False)
        )
        for serial in serials:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(serial)
                .revocation_date(datetime(2024, 6, 1, tzinfo=UTC))
                .build()
            )
        return builder.sign(fake.keys[issuer], hashes.SHA256()).public_bytes(serialization.Encoding.DER).hex()

    def serials(role: str) -> list[int]:
        return [fake.certs[role].serial_number] if revoked == role else []

    dates = {"issueDate": "2025-01-01T00:00:00Z", "nextUpdate": "2026-12-31T00:00:00Z"}
    level = {"tcbDate": "2024-01-01T00:00:00Z", "tcbStatus": status, "advisoryIDs": ["INTEL-SA-00999"]}
    components = {"sgxtcbcomponents": [{"svn": 1}] * 16, "pcesvn": 13}
    tcb_info = json.dumps(
        {"id": "SGX", "version": 3, **dates, "fmspc": FAKE_FMSPC.hex().upper()}
        | ({"pceId": "0000", "tcbType": 0, "tcbEvaluationDataNumber": 17} if status else {})
        | ({"tcbLevels": [{"tcb": components, **level}]} if status else {}),
        separators=(",", ":"),
    )
    qe = parse_quote(quote_bytes(name)).qe.qe_report
    qe_identity = json.dumps(
        {"id": "QE", "version": 2, **dates, "tcbEvaluationDataNumber": 17}
        | {"miscselect": "00000000", "miscselectMask": "FFFFFFFF"}
        | {"attributes": qe.attributes.hex().upper(), "attributesMask": "FBFFFFFFFFFFFFFF0000000000000000"}
        | {"mrsigner": qe.mr_signer.hex().upper(), "isvprodid": qe.isv_prod_id}
        | {
            "tcbLevels": [
                {"tcb": {"isvsvn": qe.isv_svn}, "tcbDate": "2024-01-01T00:00:00Z", "tcbStatus": "UpToDate"}
            ]
        },
        separators=(",", ":"),
    )
    chain = b"".join(fake.certs[role].public_bytes(serialization.Encoding.PEM) for role in ("tcb", "root"))
    return json.dumps(
        {
            "pck_crl_issuer_chain": b"".join(
                fake.certs[role].public_bytes(serialization.Encoding.PEM) for role in ("ca", "root")
            ).decode(),
            "root_ca_crl": crl("root", serials("ca")),
            "pck_crl": crl("ca", serials("leaf")),
            "tcb_info_issuer_chain": chain.decode(),
            "tcb_info": tcb_info,
            "tcb_info_signature": raw_signature(fake.keys["tcb"], tcb_info.encode()).hex(),
            "qe_identity_issuer_chain": chain.decode(),
            "qe_identity": qe_identity,
            "qe_identity_signature": raw_signature(fake.keys["tcb"], qe_identity.encode()).hex(),
        }
    ).encode()


def _resigned(name: str = "cosmian") -> bytes:
    fake, parsed = fake_chain(), parse_quote(quote_bytes(name))
    signature = raw_signature(fake.keys["leaf"], parsed.qe.qe_report_raw)
    return rebuild(parsed, cert_data=fake.pem, qe_report_signature=signature)


@pytest.mark.parametrize(
    ("role", "needle"), [("leaf", "the PCK certificate"), ("ca", "the PCK CA certificate")]
)
def test_a_certificate_listed_in_a_crl_is_revoked(role: str, needle: str) -> None:
    fake, now = fake_chain(), at("2025-07-19T10:01:17Z")
    error = code_of(
        _resigned("cosmian"),
        now,
        collateral=_fake_collateral(revoked=role),
        trusted_root=fake.root_fingerprint,
    )
    assert (
        error.code == "attestation.revoked"
        and needle in error.message
        and "since 2024-06-01" in error.message
    )


def test_self_made_collateral_passes_our_checks_and_reaches_dcap_qvl() -> None:
    # Nothing is revoked, every signature and date holds: dcap-qvl then refuses the minimal TCB info
    # (it has no pceId), an unknown failure kept in dcap-qvl's own words.
    fake, now = fake_chain(), at("2025-07-19T10:01:17Z")
    error = code_of(
        _resigned("cosmian"),
        now,
        collateral=_fake_collateral(revoked=None),
        trusted_root=fake.root_fingerprint,
    )
    assert (
        error.code == "attestation.collateral_invalid"
        and "dcap-qvl: Failed to decode TcbInfo" in error.message
    )


def test_a_pck_crl_issuer_chain_not_ending_at_the_pinned_root_is_invalid() -> None:
    intermediate_only = pck_chain(quote_bytes("dcapqvl_sgx"))[1].public_bytes(serialization.Encoding.PEM)
    bundle = _with("dcapqvl_sgx", pck_crl_issuer_chain=intermediate_only.decode())
    error = code_of(quote_bytes("dcapqvl_sgx"), VECTORS["dcapqvl_sgx"].now, collateral=bundle)
    assert error.code == "attestation.collateral_invalid" and "PCK CRL issuer chain" in error.message


@pytest.mark.parametrize(
    ("name", "status", "code", "needle"),
    [
        ("cosmian", "OutOfDate", None, ""),
        ("cosmian", "SWHardeningNeeded", None, ""),
        ("cosmian", "Revoked", "attestation.revoked", "TCB status is invalid: Revoked"),
        ("occlum", "UpToDate", "attestation.debug_not_allowed", "Debug mode is enabled"),  # a debug enclave
    ],
)
def test_dcap_qvl_evaluates_a_self_made_tcb_level(
    name: str, status: str, code: str | None, needle: str
) -> None:
    # Intel signs no "Revoked" level for these quotes: a self-made root lets dcap-qvl's real evaluation
    # give each status, and shows how its refusals arrive.
    fake, now = fake_chain(), at("2025-07-19T10:01:17Z")
    bundle = _fake_collateral(revoked=None, name=name, status=status)
    if code is None:
        claims = verify_dcap(_resigned(name), collateral=bundle, now=now, trusted_root=fake.root_fingerprint)
        assert claims.tcb_status == status and claims.advisories == ("INTEL-SA-00999",)
        assert claims.collateral_issued_at == at("2025-01-01T00:00:00Z")
        assert claims.raw["collateral_next_update"] == "2026-12-31T00:00:00Z"
    else:
        error = code_of(_resigned(name), now, collateral=bundle, trusted_root=fake.root_fingerprint)
        assert error.code == code and f"dcap-qvl: {needle}" in error.message
