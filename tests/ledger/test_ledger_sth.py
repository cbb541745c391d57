"""Signed tree heads: the exact signed bytes, signature checks, and a strict JSON form."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import struct

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from hypothesis import given, settings
from hypothesis import strategies as st

from sealedml.crypto.signing import SigningKey
from sealedml.errors import LedgerError, SealedMLError
from sealedml.ledger.sth import (
    DOMAIN,
    SignedTreeHead,
    TreeHead,
    log_id_of,
    sign_tree_head,
    tree_head_bytes,
)

ROOT = bytes.fromhex("5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328")
TS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def key_from_seed(seed: int) -> SigningKey:
    return SigningKey(ed25519.Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32))


def code_of(fn, *args, **kwargs) -> str:
    with pytest.raises(SealedMLError) as info:
        fn(*args, **kwargs)
    return info.value.code


def test_log_id_is_the_sha256_of_the_raw_public_key() -> None:
    key = key_from_seed(1)
    assert log_id_of(key.public_bytes) == hashlib.sha256(key.public_bytes).hexdigest()
    for bad in (b"", b"\0" * 31, "00" * 32, None):
        assert code_of(log_id_of, bad) == "ledger.malformed"


def test_signed_bytes_are_the_documented_layout() -> None:
    log_id = "ab" * 32
    expected = b"SealedML-STH/1\x00" + bytes.fromhex(log_id) + struct.pack(">QQ", TS, 8) + ROOT
    assert tree_head_bytes(log_id, 8, ROOT, TS) == expected
    assert len(expected) == 95 and expected.startswith(DOMAIN)
    # Every field changes the bytes.
    variants = {
        tree_head_bytes(log_id, 8, ROOT, TS),
        tree_head_bytes("ac" * 32, 8, ROOT, TS),
        tree_head_bytes(log_id, 9, ROOT, TS),
        tree_head_bytes(log_id, 8, bytes(32), TS),
        tree_head_bytes(log_id, 8, ROOT, TS + 1),
    }
    assert len(variants) == 5


def test_sign_and_verify() -> None:
    key = key_from_seed(2)
    sth = sign_tree_head(key, 8, ROOT, TS)
    assert sth.log_id == log_id_of(key.public_bytes)
    assert sth.head == TreeHead(8, ROOT)
    sth.verify(key.public_bytes)
    # The signature is Ed25519 over exactly the documented bytes.
    ed25519.Ed25519PublicKey.from_public_bytes(key.public_bytes).verify(sth.signature, sth.signed_bytes())


def test_a_head_signed_by_another_key_is_rejected() -> None:
    log_key, other = key_from_seed(3), key_from_seed(4)
    sth = sign_tree_head(log_key, 8, ROOT, TS)
    assert code_of(sth.verify, other.public_bytes) == "ledger.sth_signature_invalid"
    # Even when the forger claims the pinned log's id.
    forged = dataclasses.replace(sign_tree_head(other, 8, ROOT, TS), log_id=log_id_of(log_key.public_bytes))
    assert code_of(forged.verify, log_key.public_bytes) == "ledger.sth_signature_invalid"
    assert code_of(sth.verify, b"\0" * 31) == "ledger.sth_signature_invalid"


def test_every_altered_field_breaks_the_signature() -> None:
    key = key_from_seed(5)
    sth = sign_tree_head(key, 8, ROOT, TS)
    flipped = bytes([sth.signature[0] ^ 1]) + sth.signature[1:]
    for changed in (
        dataclasses.replace(sth, tree_size=9),
        dataclasses.replace(sth, root_hash=bytes([ROOT[0] ^ 1]) + ROOT[1:]),
        dataclasses.replace(sth, timestamp_ms=TS + 1),
        dataclasses.replace(sth, signature=flipped),
    ):
        assert code_of(changed.verify, key.public_bytes) == "ledger.sth_signature_invalid"


def test_a_signature_over_the_bare_fields_is_not_a_tree_head_signature() -> None:
    key = key_from_seed(6)
    sth = sign_tree_head(key, 8, ROOT, TS)
    no_domain = sth.signed_bytes()[len(DOMAIN) :]
    other_use = dataclasses.replace(sth, signature=key.sign(no_domain))
    assert code_of(other_use.verify, key.public_bytes) == "ledger.sth_signature_invalid"


def test_json_round_trip() -> None:
    sth = sign_tree_head(key_from_seed(7), 123, ROOT, TS)
    assert SignedTreeHead.from_json(sth.to_json()) == sth
    assert SignedTreeHead.from_dict(json.loads(json.dumps(sth.to_dict()))) == sth
    assert json.loads(sth.to_json())["format"] == "sealedml.sth/1"


def test_constructor_and_parser_reject_malformed_heads() -> None:
    sth = sign_tree_head(key_from_seed(8), 8, ROOT, TS)
    good = sth.to_dict()
    bad_dicts = [
        {**good, "format": "sealedml.sth/2"},
        {**good, "extra": 1},
        {k: v for k, v in good.items() if k != "signature"},
        {**good, "log_id": good["log_id"].upper()},
        {**good, "log_id": good["log_id"][:-2]},
        {**good, "tree_size": -1},
        {**good, "tree_size": 2**63},
        {**good, "tree_size": "8"},
        {**good, "tree_size": True},
        {**good, "tree_size": 8.0},
        {**good, "root_hash": good["root_hash"][:-2]},
        {**good, "root_hash": "zz" * 32},
        {**good, "timestamp_ms": 2**64},
        {**good, "signature": good["signature"] + "00"},
        [],
        "sth",
        None,
    ]
    for bad in bad_dicts:
        assert code_of(SignedTreeHead.from_dict, bad) == "ledger.malformed", bad
    for text in ("", "{", "[1,", "null", '{"a":1}', b"\xff\xfe", "1e999999"):
        assert code_of(SignedTreeHead.from_json, text) == "ledger.malformed"
    with pytest.raises(LedgerError):
        SignedTreeHead(sth.log_id, 8, ROOT[:31], TS, sth.signature)
    with pytest.raises(LedgerError):
        SignedTreeHead(sth.log_id, 8, ROOT, TS, sth.signature[:63])
    with pytest.raises(LedgerError):
        TreeHead(-1, ROOT)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=80),
    lambda children: (
        st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=12), children, max_size=8)
    ),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        json_values,
        st.fixed_dictionaries(
            {},
            optional={
                k: json_values
                for k in ("format", "log_id", "tree_size", "root_hash", "timestamp_ms", "signature")
            },
        ),
    )
)
def test_parsing_arbitrary_json_raises_only_typed_errors(value: object) -> None:
    try:
        SignedTreeHead.from_json(json.dumps(value))
    except LedgerError as exc:
        assert exc.code == "ledger.malformed"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_parsing_arbitrary_bytes_raises_only_typed_errors(data: bytes) -> None:
    with pytest.raises(LedgerError):
        SignedTreeHead.from_json(data)
