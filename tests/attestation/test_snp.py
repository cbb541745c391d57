"""AMD SEV-SNP verifier: four real-hardware vectors, tampered copies of them, and an AMD-shaped PKI.

The real vectors (../shared/attestation-vectors/sev-snp) cover parsing, the RSA-PSS chain, the
report signature and every refusal reachable without AMD's keys. The paths that need a
certificate AMD never issued (a VCEK whose TCB or hwID disagrees with a report it signed, a
CPUID from another product, Turin) use a PKI built here with `cryptography`, shaped like AMD's
(RSA-PSS SHA-384 salt 48, same names and extensions), whose ARK the test pins explicitly.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import NameOID

from attestation_vectors import at, expected_fields, read_vector
from sealedml.attestation.evidence.snp import (
    AMD_ARK_FINGERPRINTS,
    load_certificates,
    parse_snp_report,
    verify_snp,
)
from sealedml.attestation.evidence.snp_report import decode_tcb
from sealedml.errors import AttestationError

SNP = "sev-snp"
PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)


@dataclass(frozen=True)
class Vector:
    report: str
    leaf: str
    chain: str
    now: str
    product: str
    kind: str


# "now" is pinned inside each leaf's validity window (README: VCEKs 2022-09-24..2029-09-24,
# 2023-01-24..2030-01-24, 2025-01-24..2032-01-24; the VLEK 2024-12-10..2025-12-10).
VECTORS = {
    "gosevguest-milan-v2": Vector(
        report="gosevguest_milan_v2_report.bin",
        leaf="gosevguest_milan_v2_vcek.der",
        chain="ask_ark_milan.pem",
        now="2024-03-01T00:00:00Z",
        product="Milan",
        kind="vcek",
    ),
    "trustee-milan-v2-idblock": Vector(
        report="trustee_milan_v2_idblock_report.bin",
        leaf="trustee_milan_v2_idblock_vcek.der",
        chain="ask_ark_milan.pem",
        now="2024-09-01T00:00:00Z",
        product="Milan",
        kind="vcek",
    ),
    "trustee-milan-v3-vlek": Vector(
        report="trustee_milan_v3_vlek_aws_report.bin",
        leaf="trustee_milan_v3_vlek_aws_vlek.der",
        chain="milan_ask_ark_asvk.pem",
        now="2025-06-01T00:00:00Z",
        product="Milan",
        kind="vlek",
    ),
    "azure-genoa-v3": Vector(
        report="trustee_azure_genoa_v3_report.bin",
        leaf="trustee_azure_genoa_v3_vcek.pem",
        chain="ask_ark_genoa.pem",
        now="2025-06-01T00:00:00Z",
        product="Genoa",
        kind="vcek",
    ),
}
ALL = pytest.mark.parametrize("name", sorted(VECTORS))


def report_of(name: str) -> bytes:
    return read_vector(SNP, VECTORS[name].report)


def leaf_of(name: str) -> bytes:
    (leaf,) = load_certificates(read_vector(SNP, VECTORS[name].leaf))
    return leaf


def chain_of(name: str) -> list[bytes]:
    """[leaf, ASK or ASVK, ARK]: the KDS cert_chain is ASK, ARK; trustee's file appends the ASVK."""
    vector = VECTORS[name]
    certs = load_certificates(read_vector(SNP, vector.chain))
    intermediate = certs[2] if vector.kind == "vlek" else certs[0]
    return [leaf_of(name), intermediate, certs[1]]


def load_leaf_cert(name: str) -> x509.Certificate:
    with warnings.catch_warnings():  # AMD's VCEK/VLEK serial number 0: see snp.py
        warnings.filterwarnings("ignore", "Parsed a serial number", CryptographyDeprecationWarning)
        return x509.load_der_x509_certificate(leaf_of(name))


def now_of(name: str) -> datetime:
    return at(VECTORS[name].now)


def verify(name: str, report: bytes | None = None, **kwargs: object):
    kwargs.setdefault("certificates", chain_of(name))
    kwargs.setdefault("now", now_of(name))
    return verify_snp(report_of(name) if report is None else report, **kwargs)  # type: ignore[arg-type]


def rejected(code: str, name: str, report: bytes | None = None, **kwargs: object) -> AttestationError:
    with pytest.raises(AttestationError) as caught:
        verify(name, report, **kwargs)
    assert caught.value.code == code, caught.value.message
    return caught.value


def flipped(data: bytes, offset: int, bit: int = 0) -> bytes:
    out = bytearray(data)
    out[offset] ^= 1 << bit
    return bytes(out)


def fields_as_expected(raw: dict) -> dict[str, object]:
    """Project claims.raw onto the names expected_fields.json uses."""
    view: dict[str, object] = {
        key: raw[key]
        for key in (
            "version",
            "guest_svn",
            "policy",
            "family_id",
            "image_id",
            "vmpl",
            "signature_algo",
            "platform_info",
            "report_data",
            "measurement",
            "host_data",
            "id_key_digest",
            "author_key_digest",
            "report_id",
            "chip_id",
        )
    }
    for tcb in ("current_tcb", "reported_tcb", "committed_tcb", "launch_tcb"):
        view[tcb] = raw[tcb]["raw"]
    view["signer_info_0x48"] = raw["signer_info"]
    view["current_fw_build_minor_major"] = [raw["current_build"], raw["current_minor"], raw["current_major"]]
    if "cpuid" in raw:
        view["cpuid_fam_mod_step"] = [raw["cpuid"][k] for k in ("family", "model", "stepping")]
    return view


# --- real vectors -------------------------------------------------------------------------------


@ALL
def test_real_vector_verifies_and_every_field_matches(name: str) -> None:
    vector = VECTORS[name]
    expected = expected_fields(SNP)[vector.report]
    assert hashlib.sha256(report_of(name)).hexdigest() == expected["sha256"]
    claims = verify(name)
    assert claims.tee == SNP and claims.simulated is False
    assert claims.measurement == expected["measurement"]
    assert claims.report_data.hex() == expected["report_data"]
    assert claims.platform_id == expected["chip_id"]
    assert claims.svn == expected["guest_svn"]
    assert claims.issued_at == now_of(name)
    assert claims.root_fingerprint == AMD_ARK_FINGERPRINTS[vector.product]
    assert claims.tcb_status is None
    raw = dict(claims.raw)
    assert raw["product"] == vector.product and raw["signing_key"] == vector.kind
    view = fields_as_expected(raw)
    compared = {key: value for key, value in expected.items() if key not in ("file", "sha256", "size")}
    assert set(compared) <= set(view), f"fields not projected: {set(compared) - set(view)}"
    for key, value in compared.items():
        assert view[key] == value, key
    assert claims.debug is raw["policy_flags"]["debug"]
    assert claims.debug is bool(int(expected["policy"], 16) >> 19 & 1)


def test_gosevguest_vector_is_a_debug_guest() -> None:
    claims = verify("gosevguest-milan-v2")
    assert claims.debug is True
    assert claims.raw["policy_flags"] == {
        "abi_minor": 0,
        "abi_major": 0,
        "smt": True,
        "migrate_ma": False,
        "debug": True,
        "single_socket": False,
        "cxl_allow": False,
        "mem_aes_256_xts": False,
        "rapl_dis": False,
        "ciphertext_hiding": False,
    }
    assert verify("trustee-milan-v2-idblock").debug is False


def test_vlek_vector_fields_and_json() -> None:
    claims = verify("trustee-milan-v3-vlek")
    assert claims.raw["vmpl"] == 1 and claims.raw["signing_key"] == "vlek"
    assert claims.raw["cpuid"] == {"family": 25, "model": 1, "stepping": 1}
    assert claims.raw["reported_tcb"] == {
        "raw": "04000000000018d9",
        "bootloader": 4,
        "tee": 0,
        "snp": 24,
        "microcode": 217,
    }
    assert claims.to_dict()["raw"]["platform_info_flags"]["alias_check_complete"] is True
    assert "launch_mit_vector" not in claims.raw
    assert "cpuid" not in verify("gosevguest-milan-v2").raw


def test_pinned_ark_fingerprints_are_the_shipped_arks() -> None:
    for product, chain in (
        ("Milan", "ask_ark_milan.pem"),
        ("Genoa", "ask_ark_genoa.pem"),
        ("Turin", "ask_ark_turin.pem"),
    ):
        ark = load_certificates(read_vector(SNP, chain))[1]
        assert hashlib.sha256(ark).hexdigest() == AMD_ARK_FINGERPRINTS[product]


# --- tampered copies of the real vectors --------------------------------------------------------

SIGNED_FIELD_OFFSETS = {
    "guest_svn": 0x04,
    "family_id": 0x10,
    "current_tcb": 0x38,
    "report_data": 0x50,
    "report_data_end": 0x8F,
    "measurement": 0x90,
    "host_data": 0xC0,
    "report_id": 0x140,
    "chip_id": 0x1A0,
    "committed_tcb": 0x1E0,
    "current_build": 0x1E8,
    "launch_tcb": 0x1F0,
}


@ALL
@pytest.mark.parametrize("field", sorted(SIGNED_FIELD_OFFSETS))
def test_flipped_bit_in_signed_body_breaks_the_signature(name: str, field: str) -> None:
    rejected("attestation.signature_invalid", name, flipped(report_of(name), SIGNED_FIELD_OFFSETS[field], 3))


@ALL
@pytest.mark.parametrize("offset", [0x2A0, 0x2A0 + 47, 0x2E8, 0x2E8 + 20], ids=["R0", "R47", "S0", "S20"])
def test_flipped_bit_in_signature_r_or_s(name: str, offset: int) -> None:
    rejected("attestation.signature_invalid", name, flipped(report_of(name), offset, 5))


@ALL
@pytest.mark.parametrize("byte", [0, 1, 6, 7])
def test_tampered_reported_tcb_is_caught_by_the_signature_first(name: str, byte: int) -> None:
    # reported_tcb is inside the signed body: the signature check (step 3) runs before the
    # VCEK TCB comparison (step 4), so a changed TCB surfaces as signature_invalid.
    rejected("attestation.signature_invalid", name, flipped(report_of(name), 0x180 + byte, 0))


@ALL
@pytest.mark.parametrize(
    ("offset", "what"),
    [
        (0x4C, "reserved 0x04C"),
        (0x18B, "reserved after cpuid"),
        (0x1EB, "reserved 0x1EB"),
        (0x1F8, "reserved tail"),
        (0x29F, "reserved tail end"),
        (0x2A0 + 144, "signature padding"),
        (0x49F, "last byte"),
    ],
)
def test_reserved_bytes_must_be_zero(name: str, offset: int, what: str) -> None:
    error = rejected("attestation.malformed", name, flipped(report_of(name), offset, 0))
    assert "reserved" in error.message, what


@ALL
@pytest.mark.parametrize("size", [0, 1183, 1185, 2368])
def test_truncated_or_oversized_report(name: str, size: int) -> None:
    data = (report_of(name) * 2)[:size]
    error = rejected("attestation.malformed", name, data)
    assert "1184" in error.message


@pytest.mark.parametrize(
    ("offset", "value", "words"),
    [(0x00, 1, "version 1"), (0x00, 6, "version 6"), (0x34, 2, "signature_algo is 2")],
)
def test_unknown_version_or_algorithm(offset: int, value: int, words: str) -> None:
    data = bytearray(report_of("azure-genoa-v3"))
    data[offset : offset + 4] = value.to_bytes(4, "little")
    assert words in rejected("attestation.malformed", "azure-genoa-v3", bytes(data)).message


@pytest.mark.parametrize(
    ("offset", "bit", "words"),
    [
        (0x0A, 1, "bit 17"),  # policy bit 17 must be one
        (0x48, 5, "31:5"),  # signer info bits 31:5 are reserved
        (0x48, 3, "SIGNING_KEY 2"),  # SIGNING_KEY 2..6 are reserved
    ],
)
def test_reserved_policy_and_signer_info_bits(offset: int, bit: int, words: str) -> None:
    tampered = flipped(report_of("gosevguest-milan-v2"), offset, bit)
    assert words in rejected("attestation.malformed", "gosevguest-milan-v2", tampered).message


@ALL
def test_expired_and_not_yet_valid_leaf(name: str) -> None:
    certs = load_leaf_cert(name)
    after = rejected(
        "attestation.certificate_expired", name, now=certs.not_valid_after_utc + timedelta(seconds=1)
    )
    assert certs.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ") in after.message
    assert VECTORS[name].kind.upper() in after.message and "expired" in after.message
    before = rejected(
        "attestation.certificate_expired", name, now=certs.not_valid_before_utc - timedelta(seconds=1)
    )
    assert certs.not_valid_before_utc.strftime("%Y-%m-%dT%H:%M:%SZ") in before.message
    assert "not valid before" in before.message


def test_vlek_expired_on_2025_12_10() -> None:
    error = rejected(
        "attestation.certificate_expired", "trustee-milan-v3-vlek", now=at("2026-01-01T00:00:00Z")
    )
    assert error.message == (
        "the VLEK certificate expired at 2025-12-10T22:14:21Z (now 2026-01-01T00:00:00Z)"
    )


def test_swapped_leaf_of_the_same_product_fails_the_signature() -> None:
    chain = chain_of("gosevguest-milan-v2")
    chain[0] = leaf_of("trustee-milan-v2-idblock")
    rejected("attestation.signature_invalid", "gosevguest-milan-v2", certificates=chain)


def test_swapped_leaf_of_another_product_breaks_the_chain() -> None:
    chain = chain_of("azure-genoa-v3")
    chain[0] = leaf_of("gosevguest-milan-v2")
    error = rejected("attestation.chain_invalid", "azure-genoa-v3", certificates=chain)
    assert "SEV-Milan" in error.message and "SEV-Genoa" in error.message


def test_vlek_report_with_a_vcek_chain() -> None:
    error = rejected(
        "attestation.chain_invalid", "trustee-milan-v3-vlek", certificates=chain_of("gosevguest-milan-v2")
    )
    assert "SIGNING_KEY says a VLEK" in error.message and "ends at a VCEK" in error.message


def test_vcek_report_with_a_vlek_chain() -> None:
    error = rejected(
        "attestation.chain_invalid",
        "gosevguest-milan-v2",
        certificates=chain_of("trustee-milan-v3-vlek"),
        now=now_of("trustee-milan-v3-vlek"),  # validity is checked before the leaf kind
    )
    assert "SIGNING_KEY says a VCEK" in error.message


def test_vlek_under_an_ask_instead_of_the_asvk() -> None:
    chain = chain_of("trustee-milan-v3-vlek")
    chain[1] = chain_of("gosevguest-milan-v2")[1]
    error = rejected("attestation.chain_invalid", "trustee-milan-v3-vlek", certificates=chain)
    assert "not a VCEK" in error.message


def test_genoa_ark_under_a_milan_chain() -> None:
    chain = chain_of("gosevguest-milan-v2")
    chain[2] = chain_of("azure-genoa-v3")[2]
    error = rejected("attestation.chain_invalid", "gosevguest-milan-v2", certificates=chain)
    assert "'SEV-Milan' is neither SEV-Genoa (ASK) nor SEV-VLEK-Genoa (ASVK)" in error.message


def test_ark_not_in_trusted_arks() -> None:
    error = rejected(
        "attestation.untrusted_root",
        "gosevguest-milan-v2",
        trusted_arks={"Genoa": AMD_ARK_FINGERPRINTS["Genoa"]},
    )
    assert AMD_ARK_FINGERPRINTS["Milan"] in error.message and "ARK-Milan" in error.message
    rejected("attestation.untrusted_root", "azure-genoa-v3", trusted_arks={})


def test_ark_pinned_under_another_product_name() -> None:
    error = rejected(
        "attestation.chain_invalid",
        "gosevguest-milan-v2",
        trusted_arks={"Genoa": AMD_ARK_FINGERPRINTS["Milan"]},
    )
    assert "ARK-Genoa" in error.message


@pytest.mark.parametrize("count", [0, 2, 4])
def test_chain_must_have_three_certificates(count: int) -> None:
    certs = (chain_of("gosevguest-milan-v2") * 2)[:count]
    rejected("attestation.chain_invalid", "gosevguest-milan-v2", certificates=certs)


def test_chain_in_the_wrong_order() -> None:
    rejected(
        "attestation.untrusted_root",
        "gosevguest-milan-v2",
        certificates=list(reversed(chain_of("gosevguest-milan-v2"))),
    )


def test_unsigned_parts_of_a_certificate_are_pinned() -> None:
    chain = chain_of("gosevguest-milan-v2")
    ask = chain[1]
    outer = len(x509.load_der_x509_certificate(ask).tbs_certificate_bytes) + 4
    salt_48 = b"\xa2\x03\x02\x01\x30"
    assert ask[outer:].count(salt_48) == 1
    declared_salt_32 = ask[:outer] + ask[outer:].replace(salt_48, b"\xa2\x03\x02\x01\x20")
    unused_bits = bytearray(ask)
    unused_bits[len(ask) - 513] = 1  # the BIT STRING's unused-bits count before the 512-byte signature
    for tampered in (declared_salt_32, bytes(unused_bits)):
        error = rejected(
            "attestation.chain_invalid", "gosevguest-milan-v2", certificates=[chain[0], tampered, chain[2]]
        )
        assert "unsigned" in error.message


def test_garbage_certificate() -> None:
    chain = chain_of("gosevguest-milan-v2")
    chain[1] = b"\x30\x03\x02\x01\x00"
    rejected("attestation.malformed", "gosevguest-milan-v2", certificates=chain)


def test_now_must_be_timezone_aware() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        verify("gosevguest-milan-v2", now=datetime(2025, 6, 1))


def test_trusted_arks_must_name_known_products() -> None:
    with pytest.raises(ValueError, match="trusted_arks"):
        verify("gosevguest-milan-v2", trusted_arks={"Rome": AMD_ARK_FINGERPRINTS["Milan"]})


def test_issued_at_is_now_in_utc() -> None:
    local = datetime(2025, 6, 1, 2, 0, tzinfo=timezone(timedelta(hours=2)))
    claims = verify("azure-genoa-v3", now=local)
    assert claims.issued_at == datetime(2025, 6, 1, tzinfo=UTC) and claims.issued_at.tzinfo is UTC


# --- load_certificates ----------------------------------------------------------------------------


def x509_name(der: bytes) -> str:
    (name,) = x509.load_der_x509_certificate(der).subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(name.value)


def test_load_certificates_pem_bundle_and_der() -> None:
    pem = read_vector(SNP, "milan_ask_ark_asvk.pem")
    ask, ark, asvk = load_certificates(pem)
    assert {x509_name(ask), x509_name(asvk)} == {"SEV-Milan", "SEV-VLEK-Milan"}
    assert hashlib.sha256(ark).hexdigest() == AMD_ARK_FINGERPRINTS["Milan"]
    der = read_vector(SNP, "gosevguest_milan_v2_vcek.der")
    assert load_certificates(der) == [der]  # serial number 0 loads without a warning escaping
    assert load_certificates(bytearray(der)) == [der]


@pytest.mark.parametrize(
    "junk",
    [
        b"",
        b"junk",
        b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
        b"\x30\x82\x01\x00",
    ],
)
def test_load_certificates_rejects_junk(junk: bytes) -> None:
    with pytest.raises(AttestationError) as caught:
        load_certificates(junk)
    assert caught.value.code == "attestation.malformed"


def test_load_certificates_rejects_non_bytes() -> None:
    with pytest.raises(AttestationError):
        load_certificates("-----BEGIN CERTIFICATE-----")  # type: ignore[arg-type]


# --- parser -----------------------------------------------------------------------------------------


def test_parse_exposes_raw_tcb_and_signature() -> None:
    report = parse_snp_report(report_of("gosevguest-milan-v2"))
    assert report.reported_tcb.hex() == "0200000000000544"
    assert report.signing_key == 0 and not report.mask_chip_key and not report.author_key_en
    assert report.cpuid_family is None and report.launch_mit_vector is None
    assert report.signature_r == report_of("gosevguest-milan-v2")[0x2A0:0x2E8]


def test_decode_tcb_layouts() -> None:
    raw = bytes([3, 9, 2, 11, 0, 0, 0, 72])
    assert decode_tcb(raw, "Turin") == {"fmc": 3, "bootloader": 9, "tee": 2, "snp": 11, "microcode": 72}
    assert decode_tcb(raw, "Genoa") == {"bootloader": 3, "tee": 9, "snp": 0, "microcode": 72}


def test_parse_v5_exposes_mitigation_vectors() -> None:
    data = bytearray(report_of("azure-genoa-v3"))
    data[0:4] = (5).to_bytes(4, "little")
    data[0x1F8:0x200] = (0x5).to_bytes(8, "little")
    data[0x200:0x208] = (0x7).to_bytes(8, "little")
    report = parse_snp_report(bytes(data))
    fields = report.fields("Genoa")
    assert (fields["launch_mit_vector"], fields["current_mit_vector"]) == ("0x5", "0x7")
    data[0:4] = (4).to_bytes(4, "little")  # version 4 reserves those bytes
    with pytest.raises(AttestationError, match="reserved bytes 0x1F8"):
        parse_snp_report(bytes(data))


# --- an AMD-shaped PKI built here, for the checks AMD's own keys cannot reach ------------------------

AMD_NAME = [
    (NameOID.ORGANIZATIONAL_UNIT_NAME, "Engineering"),
    (NameOID.COUNTRY_NAME, "US"),
    (NameOID.LOCALITY_NAME, "Santa Clara"),
    (NameOID.STATE_OR_PROVINCE_NAME, "CA"),
    (NameOID.ORGANIZATION_NAME, "Advanced Micro Devices"),
]
OID = "1.3.6.1.4.1.3704.1."
TCB_OIDS = {"bootloader": "3.1", "tee": "3.2", "snp": "3.3", "microcode": "3.8", "fmc": "3.9"}


def amd_name(common_name: str) -> x509.Name:
    return x509.Name(
        [x509.NameAttribute(oid, value) for oid, value in AMD_NAME]
        + [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    )


def der_integer(value: int) -> bytes:
    body = value.to_bytes(1, "big") if value < 0x80 else b"\x00" + value.to_bytes(1, "big")
    return b"\x02" + len(body).to_bytes(1, "big") + body


def build(subject: str, issuer: str, public_key, signer, *, ca: bool, extensions=()) -> bytes:
    builder = (
        x509.CertificateBuilder()
        .subject_name(amd_name(subject))
        .issuer_name(amd_name(issuer))
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(datetime(2020, 1, 1, tzinfo=UTC))
        .not_valid_after(datetime(2040, 1, 1, tzinfo=UTC))
    )
    if ca:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    for oid, value in extensions:
        builder = builder.add_extension(
            x509.UnrecognizedExtension(x509.ObjectIdentifier(oid), value), critical=False
        )
    return builder.sign(signer, hashes.SHA384(), rsa_padding=PSS).public_bytes(serialization.Encoding.DER)


@dataclass
class Pki:
    product: str
    ark_key: rsa.RSAPrivateKey
    ask_key: rsa.RSAPrivateKey
    ark: bytes
    ask: bytes

    @property
    def trusted(self) -> dict[str, str]:
        return {self.product: hashlib.sha256(self.ark).hexdigest()}

    def vcek(
        self,
        key: ec.EllipticCurvePrivateKey,
        tcb: dict[str, int],
        hwid: bytes | None,
        *,
        overrides: dict[str, bytes | None] | None = None,
        common_name: str = "SEV-VCEK",
    ) -> bytes:
        values: dict[str, bytes | None] = {
            OID + "2": b"\x16" + bytes([len(self.product)]) + self.product.encode(),
            **{OID + TCB_OIDS[part]: der_integer(value) for part, value in tcb.items()},
            OID + "4": hwid,
        }
        values.update(overrides or {})
        extensions = [(oid, value) for oid, value in values.items() if value is not None]
        return build(
            common_name,
            f"SEV-{self.product}",
            key.public_key(),
            self.ask_key,
            ca=False,
            extensions=extensions,
        )


def make_pki(product: str) -> Pki:
    ark_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ask_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ark = build(f"ARK-{product}", f"ARK-{product}", ark_key.public_key(), ark_key, ca=True)
    ask = build(f"SEV-{product}", f"ARK-{product}", ask_key.public_key(), ark_key, ca=True)
    return Pki(product, ark_key, ask_key, ark, ask)


@pytest.fixture(scope="module")
def milan() -> Pki:
    return make_pki("Milan")


@pytest.fixture(scope="module")
def turin() -> Pki:
    return make_pki("Turin")


@pytest.fixture(scope="module")
def vcek_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


def signed(report: bytes | bytearray, key: ec.EllipticCurvePrivateKey) -> bytes:
    """Sign bytes [0, 0x2A0) as the AMD-SP does: R and S as 72-byte little-endian."""
    data = bytearray(report)
    r, s = decode_dss_signature(key.sign(bytes(data[:0x2A0]), ec.ECDSA(hashes.SHA384())))
    data[0x2A0:0x2E8] = r.to_bytes(72, "little")
    data[0x2E8:0x330] = s.to_bytes(72, "little")
    return bytes(data)


MILAN_REPORT = "gosevguest-milan-v2"
NOW = datetime(2025, 6, 1, tzinfo=UTC)


def milan_setup(
    milan: Pki, key: ec.EllipticCurvePrivateKey, **vcek_kwargs: object
) -> tuple[bytes, list[bytes]]:
    report = signed(report_of(MILAN_REPORT), key)
    parsed = parse_snp_report(report)
    tcb = decode_tcb(parsed.reported_tcb, "Milan")
    hwid = vcek_kwargs.pop("hwid", parsed.chip_id)
    leaf = milan.vcek(key, tcb, hwid, **vcek_kwargs)  # type: ignore[arg-type]
    return report, [leaf, milan.ask, milan.ark]


def forged_rejected(
    code: str, report: bytes, chain: list[bytes], trusted: dict[str, str]
) -> AttestationError:
    with pytest.raises(AttestationError) as caught:
        verify_snp(report, certificates=chain, now=NOW, trusted_arks=trusted)
    assert caught.value.code == code, caught.value.message
    return caught.value


def test_built_pki_verifies_when_its_ark_is_pinned(milan: Pki, vcek_key) -> None:
    report, chain = milan_setup(milan, vcek_key)
    claims = verify_snp(report, certificates=chain, now=NOW, trusted_arks=milan.trusted)
    assert claims.root_fingerprint == milan.trusted["Milan"] and claims.raw["product"] == "Milan"


def test_self_made_rsa_pss_root_is_untrusted_by_default(milan: Pki, vcek_key) -> None:
    report, chain = milan_setup(milan, vcek_key)
    error = forged_rejected("attestation.untrusted_root", report, chain, dict(AMD_ARK_FINGERPRINTS))
    assert milan.trusted["Milan"] in error.message and "ARK-Milan" in error.message


@pytest.mark.parametrize("part", ["bootloader", "tee", "snp", "microcode"])
def test_vcek_certifying_another_tcb(milan: Pki, vcek_key, part: str) -> None:
    report = signed(report_of(MILAN_REPORT), vcek_key)
    parsed = parse_snp_report(report)
    tcb = decode_tcb(parsed.reported_tcb, "Milan")
    reported = tcb[part]
    tcb[part] += 1
    chain = [milan.vcek(vcek_key, tcb, parsed.chip_id), milan.ask, milan.ark]
    error = forged_rejected("attestation.tcb_mismatch", report, chain, milan.trusted)
    assert f"reported_tcb {part} is {reported} but the VCEK certifies {part} {reported + 1}" in error.message


def test_vcek_without_a_tcb_extension(milan: Pki, vcek_key) -> None:
    report, chain = milan_setup(milan, vcek_key, overrides={OID + "3.3": None})
    assert (
        "no snp SPL extension"
        in forged_rejected("attestation.tcb_mismatch", report, chain, milan.trusted).message
    )


@pytest.mark.parametrize("value", [b"\x04\x01\x05", b"\x02\x01", b"\x02\x02\x01\x05", b"\x02\x01\xff", b""])
def test_tcb_extension_must_be_a_small_der_integer(milan: Pki, vcek_key, value: bytes) -> None:
    report, chain = milan_setup(milan, vcek_key, overrides={OID + "3.3": value})
    forged_rejected("attestation.chain_invalid", report, chain, milan.trusted)


def test_non_minimal_der_integer_is_decoded(milan: Pki, vcek_key) -> None:
    report, chain = milan_setup(milan, vcek_key, overrides={OID + "3.3": b"\x02\x02\x00\x05"})
    verify_snp(report, certificates=chain, now=NOW, trusted_arks=milan.trusted)


def test_vcek_for_another_chip(milan: Pki, vcek_key) -> None:
    report, chain = milan_setup(milan, vcek_key, hwid=bytes(range(64)))
    error = forged_rejected("attestation.platform_mismatch", report, chain, milan.trusted)
    assert "chip_id 3ac3fe21e13fb099" in error.message and "hwID 0001020304050607" in error.message


def test_hwid_as_der_octet_string_is_accepted(milan: Pki, vcek_key) -> None:
    chip = parse_snp_report(report_of(MILAN_REPORT)).chip_id
    report, chain = milan_setup(milan, vcek_key, hwid=b"\x04\x40" + chip)
    verify_snp(report, certificates=chain, now=NOW, trusted_arks=milan.trusted)


def test_vcek_without_hwid(milan: Pki, vcek_key) -> None:
    report, chain = milan_setup(milan, vcek_key, hwid=None)
    forged_rejected("attestation.chain_invalid", report, chain, milan.trusted)


def test_masked_chip_id_skips_the_hwid_comparison(milan: Pki, vcek_key) -> None:
    data = bytearray(report_of(MILAN_REPORT))
    data[0x1A0:0x1E0] = bytes(64)  # MASK_CHIP_ID: the firmware reports an all-zero chip_id
    report = signed(data, vcek_key)
    tcb = decode_tcb(parse_snp_report(report).reported_tcb, "Milan")
    chain = [milan.vcek(vcek_key, tcb, bytes(range(64))), milan.ask, milan.ark]
    claims = verify_snp(report, certificates=chain, now=NOW, trusted_arks=milan.trusted)
    assert claims.platform_id == "00" * 64


@pytest.mark.parametrize("signer_info", [0b010, 0b11100])
def test_unsigned_report_is_refused(milan: Pki, vcek_key, signer_info: int) -> None:
    data = bytearray(report_of(MILAN_REPORT))
    data[0x48:0x4C] = signer_info.to_bytes(4, "little")
    report, chain = milan_setup(milan, vcek_key)
    report = signed(data, vcek_key)
    assert (
        "unsigned" in forged_rejected("attestation.signature_invalid", report, chain, milan.trusted).message
    )


def test_cpuid_of_another_product(milan: Pki, vcek_key) -> None:
    # The Genoa v3 body (CPUID 25/17) re-signed under a Milan chain: everything else matches.
    report = signed(report_of("azure-genoa-v3"), vcek_key)
    parsed = parse_snp_report(report)
    chain = [
        milan.vcek(vcek_key, decode_tcb(parsed.reported_tcb, "Milan"), parsed.chip_id),
        milan.ask,
        milan.ark,
    ]
    error = forged_rejected("attestation.platform_mismatch", report, chain, milan.trusted)
    assert "family 0x19 model 0x11 is Genoa" in error.message and "ARK-Milan" in error.message


def test_leaf_named_vlek_under_an_ask(milan: Pki, vcek_key) -> None:
    report, chain = milan_setup(milan, vcek_key, common_name="SEV-VLEK")
    assert "not a VCEK" in forged_rejected("attestation.chain_invalid", report, chain, milan.trusted).message


def test_leaf_signed_by_the_ark_instead_of_the_ask(milan: Pki, vcek_key) -> None:
    report, chain = milan_setup(milan, vcek_key)
    tcb = decode_tcb(parse_snp_report(report).reported_tcb, "Milan")
    chain[0] = Pki("Milan", milan.ark_key, milan.ark_key, milan.ark, milan.ask).vcek(
        vcek_key, tcb, parse_snp_report(report).chip_id
    )
    error = forged_rejected("attestation.chain_invalid", report, chain, milan.trusted)
    assert "does not verify under the ASK key" in error.message


def test_ask_naming_another_issuer(milan: Pki, vcek_key) -> None:
    report, chain = milan_setup(milan, vcek_key)
    chain[1] = build("SEV-Milan", "ARK-Genoa", milan.ask_key.public_key(), milan.ark_key, ca=True)
    error = forged_rejected("attestation.chain_invalid", report, chain, milan.trusted)
    assert "is not issued by ARK-Milan" in error.message


def test_ark_that_is_not_self_signed(milan: Pki, vcek_key) -> None:
    report, chain = milan_setup(milan, vcek_key)
    chain[2] = build("ARK-Milan", "ARK-Milan", milan.ark_key.public_key(), milan.ask_key, ca=True)
    trusted = {"Milan": hashlib.sha256(chain[2]).hexdigest()}
    assert (
        "ARK certificate's signature"
        in forged_rejected("attestation.chain_invalid", report, chain, trusted).message
    )


def test_turin_report_uses_the_turin_tcb_layout_and_8_byte_hwid(turin: Pki, vcek_key) -> None:
    data = bytearray(report_of("azure-genoa-v3"))
    data[0x188:0x18B] = bytes([0x1A, 0x02, 0x01])  # CPUID family 0x1A model 0x02: Turin
    turin_tcb = bytes([3, 9, 2, 11, 0, 0, 0, 72])  # fmc, bl, tee, snp, -, -, -, ucode
    for offset in (0x38, 0x180, 0x1E0, 0x1F0):
        data[offset : offset + 8] = turin_tcb
    data[0x1A0:0x1E0] = bytes(range(1, 9)) + bytes(56)
    report = signed(data, vcek_key)
    tcb = {"fmc": 3, "bootloader": 9, "tee": 2, "snp": 11, "microcode": 72}
    chain = [turin.vcek(vcek_key, tcb, bytes(range(1, 9))), turin.ask, turin.ark]
    claims = verify_snp(report, certificates=chain, now=NOW, trusted_arks=turin.trusted)
    assert claims.raw["reported_tcb"] == {"raw": turin_tcb.hex(), **tcb}
    chain_bad_fmc = [turin.vcek(vcek_key, {**tcb, "fmc": 4}, bytes(range(1, 9))), turin.ask, turin.ark]
    assert "fmc" in forged_rejected("attestation.tcb_mismatch", report, chain_bad_fmc, turin.trusted).message
    data[0x1DF] = 1  # a chip_id beyond the 8 hwID bytes names another chip
    forged_rejected("attestation.platform_mismatch", signed(data, vcek_key), chain, turin.trusted)
