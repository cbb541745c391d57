"""The transparency log of receipts end to end: host appends, client checks inclusion and consistency."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from hypothesis import given, settings
from hypothesis import strategies as st

from sealedml.crypto.envelope import canonical_json
from sealedml.crypto.signing import SigningKey, verify_signature
from sealedml.enclave.receipts import build_receipt
from sealedml.errors import ConfigError, LedgerError, NotFoundError, SealedMLError
from sealedml.ledger import (
    ConsistencyProof,
    InclusionProof,
    SignedTreeHead,
    TransparencyLog,
    check_consistency,
    check_inclusion,
    check_sth,
    receipt_entry,
)
from sealedml.ledger.merkle import leaf_hash
from sealedml.ledger.sth import sign_tree_head

TS = 1_767_225_600_000


def code_of(fn, *args, **kwargs) -> str:
    with pytest.raises(SealedMLError) as info:
        fn(*args, **kwargs)
    return info.value.code


def make_receipt(enclave: SigningKey, i: int) -> tuple[dict, str]:
    return build_receipt(
        enclave,
        kind="predict",
        job=f"job-{i:05d}",
        request_id=f"req-{i}",
        model_id="m-credit",
        model_sha256="ab" * 32,
        model_blob_sha256="cd" * 32,
        request=b"sealed request %d" % i,
        response=b"sealed response %d" % i,
        client="acct-1",
        rows=i % 50 + 1,
        measurement="ef" * 48,
        tee="simulated",
        issued_at=TS // 1000 + i,
    )


class Clock:
    def __init__(self, start: int = TS) -> None:
        self.now = start

    def __call__(self) -> int:
        return self.now


@pytest.fixture
def log_key() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture
def enclave() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture
def log(tmp_path: Path, log_key: SigningKey):
    t = TransparencyLog.open(f"sqlite:///{tmp_path / 'log.db'}", log_key, clock=Clock())
    yield t
    t.store.dispose()


def test_a_logged_receipt_is_provably_included(
    log: TransparencyLog, log_key: SigningKey, enclave: SigningKey
) -> None:
    held = []
    for i in range(25):
        receipt, signature = make_receipt(enclave, i)
        index, sth = log.append_receipt(receipt, signature)
        assert index == i and sth.tree_size == i + 1
        held.append((receipt, signature, index, sth))
    # A client keeps its receipt and the STH it got; later it asks for a proof against that STH.
    for receipt, signature, index, sth in held:
        verify_signature(enclave.public_bytes, canonical_json(receipt), bytes.fromhex(signature))
        proof = json.loads(json.dumps(log.inclusion(index, sth.tree_size)))  # over the wire
        assert (
            check_inclusion(receipt_entry(receipt, signature), proof, sth.to_dict(), log_key.public_bytes)
            == index
        )
        by_id = log.inclusion_by_id(receipt["job"], sth.tree_size)
        assert by_id == proof
        # And against the newest head too.
        latest = log.sth()
        check_inclusion(receipt_entry(receipt, signature), log.inclusion(index), latest, log_key.public_bytes)
    # What the log serves is exactly what was logged.
    served = log.entry(7)
    assert served["entry_id"] == "job-00007"
    assert base64.b64decode(served["entry"]) == receipt_entry(held[7][0], held[7][1])


def test_the_log_only_grows_and_proves_it(log: TransparencyLog, log_key: SigningKey) -> None:
    heads = []
    for batch in range(6):
        _indexes, sth = log.append_many(
            [(f"b{batch}-{j}", b"entry %d %d" % (batch, j)) for j in range(batch * 3 + 1)]
        )
        heads.append(sth)
    for i, old in enumerate(heads):
        for new in heads[i:]:
            proof = json.loads(json.dumps(log.consistency(old.tree_size, new.tree_size)))
            check_consistency(old, new, proof, log_key.public_bytes)
            check_consistency(
                old.to_dict(), new.to_dict(), ConsistencyProof.from_dict(proof), log_key.public_bytes
            )


def test_sth_timestamps_never_go_back(tmp_path: Path, log_key: SigningKey) -> None:
    clock = Clock(TS)
    log = TransparencyLog.open(f"sqlite:///{tmp_path / 'log.db'}", log_key, clock=clock)
    _, first = log.append("a", b"a")
    clock.now = TS - 60_000  # the host clock steps back
    _, second = log.append("b", b"b")
    assert second.timestamp_ms == first.timestamp_ms == TS
    clock.now = TS + 5
    assert log.sth().timestamp_ms == TS + 5
    log.store.dispose()


def test_a_receipt_cannot_be_logged_twice(log: TransparencyLog, enclave: SigningKey) -> None:
    receipt, signature = make_receipt(enclave, 1)
    log.append_receipt(receipt, signature)
    before = log.sth()
    with pytest.raises(LedgerError) as info:
        log.append_receipt(receipt, signature)
    assert info.value.code == "ledger.duplicate_entry" and info.value.status == 409
    assert log.sth().head == before.head
    assert code_of(log.append_receipt, {"kind": "predict"}, signature) == "ledger.malformed"
    assert code_of(log.append_receipt, receipt, 5) == "ledger.malformed"


def test_heads_signed_by_another_key_are_rejected(log: TransparencyLog, log_key: SigningKey) -> None:
    log.append_many([(f"e{i}", b"%d" % i) for i in range(9)])
    sth = log.sth()
    proof = log.inclusion(4)
    impostor = SigningKey.generate()
    # A client that pinned another key rejects the genuine head...
    assert code_of(check_inclusion, b"4", proof, sth, impostor.public_bytes) == "ledger.sth_signature_invalid"
    # ...and the pinned key rejects a head the impostor signed over the same tree.
    forged = sign_tree_head(impostor, sth.tree_size, sth.root_hash, sth.timestamp_ms)
    assert (
        code_of(check_inclusion, b"4", proof, forged, log_key.public_bytes) == "ledger.sth_signature_invalid"
    )
    assert code_of(check_sth, forged.to_dict(), log_key.public_bytes) == "ledger.sth_signature_invalid"
    old = log.sth()
    assert code_of(check_consistency, old, forged, log.consistency(9), log_key.public_bytes) == (
        "ledger.sth_signature_invalid"
    )


def test_proofs_must_match_the_head_they_are_checked_against(
    log: TransparencyLog, log_key: SigningKey
) -> None:
    log.append_many([(f"e{i}", b"%d" % i) for i in range(12)])
    sth = log.sth()
    key = log_key.public_bytes
    # A proof for another tree size, another index, another entry, another log.
    assert code_of(check_inclusion, b"4", log.inclusion(4, 11), sth, key) == "ledger.inclusion_invalid"
    assert code_of(check_inclusion, b"4", log.inclusion(5), sth, key) == "ledger.inclusion_invalid"
    assert code_of(check_inclusion, b"5", log.inclusion(4), sth, key) == "ledger.inclusion_invalid"
    other_log = {**log.inclusion(4), "log_id": "00" * 32}
    assert code_of(check_inclusion, b"4", other_log, sth, key) == "ledger.inclusion_invalid"
    # A consistency proof for other sizes.
    old = sth
    log.append("e12", b"12")
    new = log.sth()
    assert code_of(check_consistency, old, new, log.consistency(11, 13), key) == "ledger.consistency_invalid"
    assert code_of(check_consistency, old, new, {**log.consistency(12), "log_id": "00" * 32}, key) == (
        "ledger.consistency_invalid"
    )
    # Old and new swapped: the log would have shrunk.
    assert code_of(check_consistency, new, old, log.consistency(12), key) == "ledger.consistency_invalid"
    # The host cannot even produce a proof to a smaller tree.
    assert code_of(log.consistency, 13, 12) == "ledger.index_out_of_range"


def test_unknown_entries_and_sizes(log: TransparencyLog) -> None:
    log.append("e0", b"0")
    with pytest.raises(NotFoundError) as info:
        log.inclusion_by_id("missing")
    assert info.value.code == "not_found.entry" and info.value.status == 404
    assert code_of(log.inclusion, 1) == "ledger.index_out_of_range"
    assert code_of(log.inclusion, 0, 2) == "ledger.index_out_of_range"
    assert code_of(log.entry, 3) == "ledger.index_out_of_range"


def test_a_database_cannot_be_reopened_under_another_log_key(tmp_path: Path, log_key: SigningKey) -> None:
    url = f"sqlite:///{tmp_path / 'log.db'}"
    first = TransparencyLog.open(url, log_key)
    first.append("e0", b"0")
    first.store.dispose()
    with pytest.raises(ConfigError):
        TransparencyLog.open(url, SigningKey.generate())
    again = TransparencyLog.open(url, log_key)
    assert again.sth().tree_size == 1
    again.store.dispose()


def test_proof_wire_forms_round_trip_and_reject_malformed(log: TransparencyLog) -> None:
    log.append_many([(f"e{i}", b"%d" % i) for i in range(5)])
    inc, con = log.inclusion(2), log.consistency(3)
    assert InclusionProof.from_dict(inc).to_dict() == inc
    assert ConsistencyProof.from_dict(con).to_dict() == con
    bad_inclusions = [
        {**inc, "extra": 1},
        {k: v for k, v in inc.items() if k != "leaf_index"},
        {**inc, "leaf_index": -1},
        {**inc, "leaf_index": "2"},
        {**inc, "tree_size": True},
        {**inc, "inclusion_path": "ab"},
        {**inc, "inclusion_path": [inc["inclusion_path"][0][:-2]]},
        {**inc, "inclusion_path": [inc["inclusion_path"][0].upper()]},
        {**inc, "inclusion_path": ["00" * 32] * 129},
        {**inc, "log_id": "xyz"},
        None,
        [],
    ]
    for bad in bad_inclusions:
        assert code_of(InclusionProof.from_dict, bad) == "ledger.malformed", bad
    for bad in ({**con, "tree_size_1": None}, {**con, "consistency_path": [1]}, "proof"):
        assert code_of(ConsistencyProof.from_dict, bad) == "ledger.malformed"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=70),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=16), children, max_size=6)
    ),
    max_leaves=25,
)
inclusion_like = st.fixed_dictionaries(
    {},
    optional={
        "log_id": json_values | st.just("ab" * 32),
        "tree_size": json_values,
        "leaf_index": json_values,
        "inclusion_path": json_values | st.lists(st.just("cd" * 32), max_size=4),
    },
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(json_values, inclusion_like), st.binary(max_size=64))
def test_arbitrary_proofs_raise_only_typed_errors(proof: object, entry: bytes) -> None:
    key = SigningKey(ed25519.Ed25519PrivateKey.from_private_bytes(b"\x07" * 32))
    sth = sign_tree_head(key, 1, leaf_hash(b"only"), TS)
    with pytest.raises(LedgerError) as info:
        check_inclusion(entry if entry != b"only" else b"other", proof, sth, key.public_bytes)
    assert info.value.code in {"ledger.malformed", "ledger.inclusion_invalid"}
    with pytest.raises(LedgerError):
        check_consistency(sth, sth, proof, key.public_bytes)


def test_signed_tree_head_json_survives_the_wire(log: TransparencyLog, log_key: SigningKey) -> None:
    _, sth = log.append("e0", b"0")
    back = SignedTreeHead.from_json(sth.to_json())
    assert back == sth
    check_sth(json.loads(sth.to_json()), log_key.public_bytes)
