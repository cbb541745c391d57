"""Fuzzing the DCAP quote parser, verifier and collateral handling: only typed errors, never a crash.

Seeds are the real quotes and collateral in ../shared/attestation-vectors/{sgx,tdx}. A mutated quote
or collateral may only be accepted when it changes nothing that is signed: then its claims must be
exactly those of the original (e.g. a flipped bit in trailing padding or in PEM line breaks).
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import cache

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from attestation_vectors import at, read_vector
from sealedml.attestation.claims import Claims
from sealedml.attestation.evidence.dcap import collateral_from_pcs, parse_quote, verify_dcap
from sealedml.attestation.evidence.dcap_quote import DcapQuote
from sealedml.errors import AttestationError

FUZZ = settings(max_examples=500, deadline=None)

QUOTES = {
    "dcapqvl_sgx": (
        "sgx",
        "dcapqvl_sgx_v3_quote.bin",
        "2025-07-19T10:01:17Z",
        "dcapqvl_sgx_v3_collateral.json",
    ),
    "cosmian": ("sgx", "cosmian_sgx_v3_quote.dat", "2025-07-19T10:01:17Z", None),
    "occlum": ("sgx", "trustee_occlum_sgx_v3_quote.dat", "2025-07-19T10:01:17Z", None),
    "dcapqvl_tdx_v4": (
        "tdx",
        "dcapqvl_tdx_v4_quote.bin",
        "2025-07-19T10:00:34Z",
        "dcapqvl_tdx_v4_collateral.json",
    ),
    "gotdx_v4": ("tdx", "gotdxguest_tdx_v4_quote_spr.dat", "2023-07-01T01:00:00Z", None),
    "gotdx_v5": ("tdx", "gotdxguest_tdx_v5_quote.dat", "2026-03-20T10:41:14Z", None),
    "dcapqvl_tdx_v5": (
        "tdx",
        "dcapqvl_tdx_v5_quote_nomatch.bin",
        "2026-03-20T10:41:14Z",
        "dcapqvl_tdx_v5_nomatch_collateral.json",
    ),
}
NAMES = sorted(QUOTES)
ACCEPTED_WITH_COLLATERAL = ["dcapqvl_sgx", "dcapqvl_tdx_v4"]  # the v5 one is a "no matching TCB level" vector


@cache
def vector(name: str) -> tuple[bytes, datetime, bytes | None]:
    """The real quote, its pinned time and its collateral (a function, not a fixture, so that
    hypothesis reports a failing example by name rather than by kilobytes)."""
    folder, file, now, collateral = QUOTES[name]
    return read_vector(folder, file), at(now), read_vector(folder, collateral) if collateral else None


@cache
def original(name: str, *, with_collateral: bool = False) -> Claims:
    data, now, collateral = vector(name)
    return verify_dcap(data, collateral=collateral if with_collateral else None, now=now)


def _parse_or_typed_error(data: bytes) -> DcapQuote | None:
    try:
        return parse_quote(data)
    except AttestationError as error:
        assert error.code == "attestation.malformed"
        return None


def _verify_or_typed_error(data: bytes, name: str, collateral: bytes | None = None) -> Claims | None:
    try:
        return verify_dcap(data, collateral=collateral, now=vector(name)[1])
    except AttestationError as error:
        assert error.code.startswith("attestation.") and error.message
        return None


def _assert_unchanged(claims: Claims | None, name: str, *, with_collateral: bool = False) -> None:
    """A mutation that verifies must not have changed any claim (only unsigned bytes moved)."""
    if claims is not None:
        expected = original(name, with_collateral=with_collateral).to_dict()
        actual = claims.to_dict()
        expected["raw"].pop("trailing_bytes"), actual["raw"].pop("trailing_bytes")
        assert actual == expected


def _header(version: int, tee_type: int) -> bytes:
    return (
        version.to_bytes(2, "little") + (2).to_bytes(2, "little") + tee_type.to_bytes(4, "little") + bytes(40)
    )


@FUZZ
@given(
    st.one_of(
        st.binary(max_size=6000),
        st.tuples(st.sampled_from([(3, 0), (4, 0x81), (5, 0x81)]), st.binary(max_size=6000)).map(
            lambda pair: _header(*pair[0]) + pair[1]
        ),
    )
)
@example(b"")
@example(
    _header(5, 0x81) + (3).to_bytes(2, "little") + (648).to_bytes(4, "little") + bytes(648) + b"\xff" * 4
)
def test_random_bytes_into_the_parser_and_the_verifier(data: bytes) -> None:
    _parse_or_typed_error(data)
    assert _verify_or_typed_error(data, "cosmian") is None


@FUZZ
@given(st.sampled_from(NAMES), st.data())
def test_truncations_are_malformed_unless_only_trailing_bytes_go(name: str, draw: st.DataObject) -> None:
    data = vector(name)[0]
    parsed = parse_quote(data)
    size = draw.draw(st.integers(0, len(data) - 1))
    cut = data[:size]
    if size >= len(data) - parsed.trailing:
        assert _parse_or_typed_error(cut) is not None
        _assert_unchanged(_verify_or_typed_error(cut, name), name)
    else:
        assert _parse_or_typed_error(cut) is None
        with pytest.raises(AttestationError) as caught:
            verify_dcap(cut, collateral=None, now=vector(name)[1])
        assert caught.value.code == "attestation.malformed"


@FUZZ
@given(st.sampled_from(NAMES), st.data())
def test_bit_flips_never_change_what_verifies(name: str, draw: st.DataObject) -> None:
    data = bytearray(vector(name)[0])
    bit = draw.draw(st.integers(0, len(data) * 8 - 1))
    data[bit // 8] ^= 1 << (bit % 8)
    _parse_or_typed_error(bytes(data))
    claims = _verify_or_typed_error(bytes(data), name)
    if bit // 8 < len(parse_quote(vector(name)[0]).signed):
        assert claims is None  # every signed bit counts
    _assert_unchanged(claims, name)


@FUZZ
@given(
    st.sampled_from(NAMES),
    st.lists(st.tuples(st.integers(0, 6000), st.binary(min_size=1, max_size=16)), min_size=1, max_size=4),
)
def test_overwritten_spans_never_crash(name: str, patches: list[tuple[int, bytes]]) -> None:
    data = bytearray(vector(name)[0])
    for offset, chunk in patches:
        data[offset % len(data) : offset % len(data) + len(chunk)] = chunk
    _parse_or_typed_error(bytes(data))
    _assert_unchanged(_verify_or_typed_error(bytes(data), name), name)


@FUZZ
@given(st.sampled_from(ACCEPTED_WITH_COLLATERAL), st.data())
def test_bit_flips_in_quotes_with_collateral(name: str, draw: st.DataObject) -> None:
    data, _, collateral = vector(name)
    mutated = bytearray(data)
    bit = draw.draw(st.integers(0, len(data) * 8 - 1))
    mutated[bit // 8] ^= 1 << (bit % 8)
    claims = _verify_or_typed_error(bytes(mutated), name, collateral)
    _assert_unchanged(claims, name, with_collateral=True)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=20), children, max_size=5)
    ),
    max_leaves=20,
)
COLLATERAL_KEYS = [
    "pck_crl_issuer_chain",
    "root_ca_crl",
    "pck_crl",
    "tcb_info_issuer_chain",
    "tcb_info",
    "tcb_info_signature",
    "qe_identity_issuer_chain",
    "qe_identity",
    "qe_identity_signature",
]


@FUZZ
@given(
    st.sampled_from(ACCEPTED_WITH_COLLATERAL),
    st.one_of(
        st.binary(max_size=2000),
        json_values.map(lambda value: json.dumps(value).encode()),
        st.dictionaries(st.sampled_from(COLLATERAL_KEYS), json_values, max_size=9).map(
            lambda value: json.dumps(value).encode()
        ),
        st.fixed_dictionaries({key: st.text(max_size=80) for key in COLLATERAL_KEYS}).map(
            lambda value: json.dumps(value).encode()
        ),
    ),
)
@example("dcapqvl_sgx", b"[" * 100_000 + b"]" * 100_000)
@example("dcapqvl_sgx", b'{"tcb_info": "a", "tcb_info": "b"}')
def test_random_collateral_is_invalid(name: str, collateral: bytes) -> None:
    data, now, _ = vector(name)
    with pytest.raises(AttestationError) as caught:
        verify_dcap(data, collateral=collateral, now=now)
    assert caught.value.code == "attestation.collateral_invalid"


@FUZZ
@given(st.sampled_from(ACCEPTED_WITH_COLLATERAL), st.data())
def test_mangled_collateral_json_never_verifies_other_content(name: str, draw: st.DataObject) -> None:
    collateral = vector(name)[2]
    assert collateral is not None
    mutated = bytearray(collateral)
    for _ in range(draw.draw(st.integers(1, 3))):
        offset = draw.draw(st.integers(0, len(mutated) - 1))
        if draw.draw(st.booleans()):
            mutated[offset] ^= 1 << draw.draw(st.integers(0, 7))
        else:
            mutated[offset : offset + draw.draw(st.integers(0, 8))] = draw.draw(st.binary(max_size=8))
    _assert_unchanged(
        _verify_or_typed_error(bytes(mutated), name, bytes(mutated)), name, with_collateral=True
    )


@FUZZ
@given(
    st.sampled_from(ACCEPTED_WITH_COLLATERAL),
    st.sampled_from(COLLATERAL_KEYS),
    st.data(),
)
def test_mangled_collateral_fields_never_verify_other_content(
    name: str, key: str, draw: st.DataObject
) -> None:
    data, _, collateral = vector(name)
    document = json.loads(collateral or b"")
    value: str = document[key]
    offset = draw.draw(st.integers(0, len(value)))
    document[key] = (
        value[:offset] + draw.draw(st.text(max_size=4)) + value[offset + draw.draw(st.integers(0, 4)) :]
    )
    mutated = json.dumps(document).encode()
    _assert_unchanged(_verify_or_typed_error(data, name, mutated), name, with_collateral=True)


PCS_INPUTS = {
    "tcb_info_response": "gotdxguest_tcbinfo_fmspc50806f000000.json",
    "qe_identity_response": "gotdxguest_td_qe_identity.json",
    "tcb_info_issuer_chain": "gotdxguest_tcb_signing_chain.pem",
    "pck_crl": "gotdxguest_pck_platform_crl.der",
    "root_ca_crl": "gotdxguest_root_ca_crl.der",
    "pck_crl_issuer_chain": "gotdxguest_pck_crl_issuer_chain.pem",
}


@FUZZ
@given(st.sampled_from(sorted(PCS_INPUTS)), st.data())
def test_mangled_pcs_responses_raise_only_typed_errors(field: str, draw: st.DataObject) -> None:
    inputs = {key: read_vector("tdx", file) for key, file in PCS_INPUTS.items()}
    value = bytearray(inputs[field])
    if draw.draw(st.booleans()):
        value = bytearray(draw.draw(st.binary(max_size=400)))
    else:
        offset = draw.draw(st.integers(0, len(value) - 1))
        value[offset : offset + draw.draw(st.integers(0, 8))] = draw.draw(st.binary(max_size=8))
    try:
        built = collateral_from_pcs(**{**inputs, field: bytes(value)})
    except AttestationError as error:
        assert error.code == "attestation.collateral_invalid"
    else:
        assert set(json.loads(built)) == set(COLLATERAL_KEYS)
