"""Fuzzing the SEV-SNP parser, verifier and certificate loader: only typed errors, never a crash.

Seeds are the real reports in ../shared/attestation-vectors/sev-snp. Every single-bit flip of a
real report must be refused (by the parser, the chain or the signature), never accepted.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import cache

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from attestation_vectors import read_vector
from sealedml.attestation.evidence.snp import load_certificates, parse_snp_report, verify_snp
from sealedml.attestation.evidence.snp_report import REPORT_SIZE, SnpReport
from sealedml.errors import AttestationError

SNP = "sev-snp"
NOW = datetime(2025, 6, 1, tzinfo=UTC)
FUZZ = settings(max_examples=150, deadline=None)


def _chain(leaf: str, chain: str, *, vlek: bool = False) -> list[bytes]:
    certs = load_certificates(read_vector(SNP, chain))
    return [*load_certificates(read_vector(SNP, leaf)), certs[2] if vlek else certs[0], certs[1]]


CASES = {
    "gosevguest_milan_v2_report.bin": ("gosevguest_milan_v2_vcek.der", "ask_ark_milan.pem", False),
    "trustee_milan_v2_idblock_report.bin": ("trustee_milan_v2_idblock_vcek.der", "ask_ark_milan.pem", False),
    "trustee_milan_v3_vlek_aws_report.bin": (
        "trustee_milan_v3_vlek_aws_vlek.der",
        "milan_ask_ark_asvk.pem",
        True,
    ),
    "trustee_azure_genoa_v3_report.bin": ("trustee_azure_genoa_v3_vcek.pem", "ask_ark_genoa.pem", False),
}
REPORTS = sorted(CASES)


@cache
def vector(name: str) -> tuple[bytes, list[bytes]]:
    """The real report and its [leaf, ASK or ASVK, ARK] chain (a function, not a fixture, so that
    hypothesis reports a failing example by name rather than by kilobytes)."""
    leaf, chain, vlek = CASES[name]
    return read_vector(SNP, name), _chain(leaf, chain, vlek=vlek)


def _parse_or_typed_error(data: bytes) -> SnpReport | None:
    try:
        return parse_snp_report(data)
    except AttestationError as error:
        assert error.code == "attestation.malformed"
        return None


@FUZZ
@given(st.binary(max_size=2 * REPORT_SIZE))
def test_random_bytes_into_the_parser(data: bytes) -> None:
    report = _parse_or_typed_error(data)
    assert report is None or len(data) == REPORT_SIZE


@FUZZ
@given(st.binary(min_size=REPORT_SIZE, max_size=REPORT_SIZE))
def test_random_well_sized_reports_into_the_verifier(data: bytes) -> None:
    chain = vector(REPORTS[0])[1]
    with pytest.raises(AttestationError):
        verify_snp(data, certificates=chain, now=NOW)


@FUZZ
@given(st.sampled_from(REPORTS), st.integers(0, REPORT_SIZE - 1), st.booleans())
def test_truncations_are_malformed(name: str, size: int, from_front: bool) -> None:
    report, chain = vector(name)
    cut = report[REPORT_SIZE - size :] if from_front else report[:size]
    assert _parse_or_typed_error(cut) is None
    with pytest.raises(AttestationError) as caught:
        verify_snp(cut, certificates=chain, now=NOW)
    assert caught.value.code == "attestation.malformed"


@FUZZ
@given(st.sampled_from(REPORTS), st.integers(0, REPORT_SIZE * 8 - 1))
def test_every_bit_flip_is_refused(name: str, bit: int) -> None:
    report, chain = vector(name)
    data = bytearray(report)
    data[bit // 8] ^= 1 << (bit % 8)
    _parse_or_typed_error(bytes(data))
    with pytest.raises(AttestationError) as caught:
        verify_snp(bytes(data), certificates=chain, now=NOW)
    # chain_invalid: a flipped SIGNING_KEY bit names the other leaf kind (VCEK <-> VLEK).
    assert caught.value.code in {
        "attestation.malformed",
        "attestation.signature_invalid",
        "attestation.chain_invalid",
    }


@FUZZ
@given(
    st.sampled_from(REPORTS),
    st.lists(st.tuples(st.integers(0, REPORT_SIZE - 1), st.binary(min_size=1, max_size=8)), max_size=4),
)
def test_overwritten_spans_never_crash(name: str, patches: list[tuple[int, bytes]]) -> None:
    report, chain = vector(name)
    data = bytearray(report)
    for offset, chunk in patches:
        data[offset : offset + len(chunk)] = chunk
    data = data[:REPORT_SIZE] + bytes(max(0, REPORT_SIZE - len(data)))
    _parse_or_typed_error(bytes(data))
    try:
        verify_snp(bytes(data), certificates=chain, now=NOW)
    except AttestationError:
        return
    assert bytes(data) == report  # only an unchanged report may verify


@FUZZ
@given(
    st.one_of(
        st.binary(max_size=2048),
        st.binary(max_size=512).map(
            lambda b: b"-----BEGIN CERTIFICATE-----\n" + b + b"\n-----END CERTIFICATE-----\n"
        ),
        st.binary(max_size=600).map(lambda b: b"\x30\x82" + len(b).to_bytes(2, "big") + b),
    )
)
def test_random_bytes_into_load_certificates(data: bytes) -> None:
    try:
        certs = load_certificates(data)
    except AttestationError as error:
        assert error.code == "attestation.malformed"
    else:
        assert certs and all(isinstance(cert, bytes) for cert in certs)


@FUZZ
@given(st.integers(0, 2), st.integers(0, 1359), st.integers(0, 7))
# Found by this test: a corrupt subject (ValueError, then a UserWarning for a 3-letter country),
# a changed MGF1 hash in the ASK's unsigned outer signatureAlgorithm, and a non-zero unused-bits
# count in its signature BIT STRING; all four once escaped or were accepted.
@example(position=0, offset=134, bit=0)
@example(position=0, offset=133, bit=0)
@example(position=1, offset=1138, bit=1)
@example(position=1, offset=1164, bit=0)
def test_bit_flips_in_the_certificate_chain(position: int, offset: int, bit: int) -> None:
    report, chain = vector("gosevguest_milan_v2_report.bin")
    tampered = list(chain)
    cert = bytearray(tampered[position])
    cert[offset % len(cert)] ^= 1 << bit
    tampered[position] = bytes(cert)
    with pytest.raises(AttestationError):
        verify_snp(report, certificates=tampered, now=NOW)


@FUZZ
@given(st.lists(st.binary(max_size=64), min_size=3, max_size=3))
def test_random_certificates_into_the_verifier(certs: list[bytes]) -> None:
    report = vector(REPORTS[1])[0]
    with pytest.raises(AttestationError):
        verify_snp(report, certificates=certs, now=NOW)
