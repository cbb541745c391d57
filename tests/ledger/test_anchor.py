"""Anchoring signed tree heads on an Ethereum-compatible chain (a real in-process py-evm chain)."""

from __future__ import annotations

import builtins
import dataclasses
import hashlib
import json
import random
import socket
import subprocess
import sys
import textwrap

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sealedml.errors import ConfigError, InputError, LedgerError, SealedMLError
from sealedml.ledger.anchor import (
    MAGIC,
    PAYLOAD_SIZE,
    VERSION,
    Anchor,
    AnchorPayload,
    ChainAnchor,
    assert_no_fork,
    calldata_gas,
    decode_payload,
    detect_fork,
    encode_payload,
)

FAST = settings(max_examples=200, deadline=None)
TS = 1_767_225_600_000  # 2026-01-01T00:00:00Z in ms


def log_id(label: str) -> str:
    return hashlib.sha256(b"log public key " + label.encode()).hexdigest()


def root(label: str) -> bytes:
    return hashlib.sha256(b"root " + label.encode()).digest()


def expect(code: str, fn, *args, **kwargs) -> SealedMLError:
    with pytest.raises(SealedMLError) as info:
        fn(*args, **kwargs)
    assert info.value.code == code, info.value
    return info.value


def expected_gas(data: bytes) -> int:
    """Gas of a code-free transaction on a Prague chain, written out independently of the module."""
    zeros = sum(1 for b in data if b == 0)
    nonzeros = len(data) - zeros
    standard = 21000 + 4 * zeros + 16 * nonzeros
    floor = 21000 + 10 * (zeros + 4 * nonzeros)  # EIP-7623: tokens = zeros + 4 * nonzeros
    return max(standard, floor)


@pytest.fixture(scope="module")
def chain() -> ChainAnchor:
    return ChainAnchor.embedded()


@pytest.fixture(scope="module")
def other(chain: ChainAnchor) -> ChainAnchor:
    """A second anchoring account on the same chain that signs locally (the real-chain code path)."""
    key = hashlib.sha256(b"sealedml test: second anchoring account").digest()
    probe = ChainAnchor.from_web3(chain.web3, private_key=key)
    w3 = chain.web3
    tx = w3.eth.send_transaction({"from": chain.address, "to": probe.address, "value": 10**18})
    assert w3.eth.wait_for_transaction_receipt(tx)["status"] == 1
    return probe


def head(chain: ChainAnchor) -> int:
    return int(chain.web3.eth.block_number)


def send_raw_calldata(chain: ChainAnchor, data: bytes, *, value: int = 0) -> None:
    w3 = chain.web3
    tx = w3.eth.send_transaction({"from": chain.address, "to": chain.address, "value": value, "data": data})
    assert w3.eth.wait_for_transaction_receipt(tx)["status"] == 1


# ---- the calldata payload -------------------------------------------------------------------------


def test_payload_layout_is_fixed_and_round_trips() -> None:
    lid, r = log_id("layout"), root("layout")
    data = encode_payload(lid, 0x0102030405060708, r, TS)
    assert len(data) == PAYLOAD_SIZE == 90
    assert data[:9] == b"SMLANCHOR" == MAGIC
    assert data[9] == VERSION == 1
    assert data[10:42] == bytes.fromhex(lid)
    assert data[42:50] == bytes([1, 2, 3, 4, 5, 6, 7, 8])
    assert data[50:82] == r
    assert int.from_bytes(data[82:90], "big") == TS
    assert decode_payload(data) == AnchorPayload(lid, 0x0102030405060708, r, TS)
    # log ids are normalised to lowercase
    assert decode_payload(encode_payload(lid.upper(), 1, r, TS)).log_id == lid


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: b"SMLANCHOX" + d[9:],  # other magic
        lambda d: b"smlanchor" + d[9:],
        lambda d: d[:9] + b"\x00" + d[10:],  # version 0
        lambda d: d[:9] + b"\x02" + d[10:],  # version 2
        lambda d: d[:-1],  # truncated
        lambda d: d + b"\x00",  # trailing byte
        lambda d: d[:10],
        lambda d: MAGIC,
        lambda d: b"",
        lambda d: b"\x00" * 90,
    ],
)
def test_lookalike_calldata_is_not_an_anchor(mutate) -> None:
    data = encode_payload(log_id("lookalike"), 7, root("lookalike"), TS)
    expect("ledger.malformed", decode_payload, mutate(data))


@pytest.mark.parametrize(
    ("args", "field"),
    [
        ((log_id("x")[:-1], 1, root("x"), TS), "log_id"),
        (("z" * 64, 1, root("x"), TS), "log_id"),
        ((log_id("x") + "\n", 1, root("x"), TS), "log_id"),
        ((log_id("x"), -1, root("x"), TS), "tree_size"),
        ((log_id("x"), 2**64, root("x"), TS), "tree_size"),
        ((log_id("x"), True, root("x"), TS), "tree_size"),
        ((log_id("x"), 1, root("x")[:31], TS), "root_hash"),
        ((log_id("x"), 1, root("x").hex(), TS), "root_hash"),
        ((log_id("x"), 1, root("x"), -5), "timestamp_ms"),
    ],
)
def test_payload_fields_out_of_range(args, field) -> None:
    err = expect("ledger.malformed", encode_payload, *args)
    assert field in err.message


@FAST
@given(st.binary(max_size=200))
def test_decode_arbitrary_bytes_raises_only_typed_errors(data: bytes) -> None:
    try:
        payload = decode_payload(data)
    except LedgerError as err:
        assert err.code == "ledger.malformed"
    else:
        assert payload.encode() == data


@FAST
@given(st.integers(0, PAYLOAD_SIZE - 1), st.integers(1, 255))
def test_decode_single_byte_flips(position: int, flip: int) -> None:
    data = bytearray(encode_payload(log_id("flip"), 42, root("flip"), TS))
    data[position] ^= flip
    try:
        payload = decode_payload(bytes(data))
    except LedgerError as err:
        assert err.code == "ledger.malformed"
        assert position < 10  # only magic/version bytes make it unreadable
    else:
        assert position >= 10
        assert payload != AnchorPayload(log_id("flip"), 42, root("flip"), TS)


# ---- anchoring and verifying on the embedded chain ------------------------------------------------


def test_anchor_verify_and_json_round_trip(chain: ChainAnchor) -> None:
    lid, r = log_id("basic"), root("basic-5")
    anchor = chain.anchor(lid, 5, r, TS)
    assert anchor.chain_id == chain.chain_id == chain.web3.eth.chain_id
    assert anchor.sender == chain.address
    assert (anchor.log_id, anchor.tree_size, anchor.root_hash, anchor.timestamp_ms) == (lid, 5, r, TS)
    tx = chain.web3.eth.get_transaction(anchor.tx_hash)
    assert bytes(tx["input"]) == encode_payload(lid, 5, r, TS)
    assert tx["value"] == 0
    assert tx["blockNumber"] == anchor.block_number
    chain.verify_anchor(anchor, log_id=lid, tree_size=5, root_hash=r)
    chain.verify_anchor(anchor, log_id=lid, tree_size=5, root_hash=r, timestamp_ms=TS)

    text = anchor.to_json()
    again = Anchor.from_json(text)
    assert again == anchor
    assert json.loads(text)["tx_hash"] == "0x" + anchor.tx_hash.hex()
    assert Anchor.from_dict(anchor.to_dict()) == anchor
    chain.verify_anchor(again, log_id=lid, tree_size=5, root_hash=r)


@pytest.mark.parametrize(("tree_size", "root_label"), [(0, "empty"), (1, "one"), (2**64 - 1, "max")])
def test_gas_used_is_exactly_the_calldata_formula(
    chain: ChainAnchor, tree_size: int, root_label: str
) -> None:
    lid, r = log_id("gas"), root(root_label)
    anchor = chain.anchor(lid, tree_size, r, TS)
    receipt = chain.web3.eth.get_transaction_receipt(anchor.tx_hash)
    data = encode_payload(lid, tree_size, r, TS)
    assert receipt["gasUsed"] == expected_gas(data) == calldata_gas(data)
    # the floor (EIP-7623) is what a code-free 90-byte transaction pays, not the EIP-2028 price
    zeros = data.count(0)
    assert receipt["gasUsed"] > 21000 + 4 * zeros + 16 * (len(data) - zeros)


def test_verify_rejects_other_expected_values(chain: ChainAnchor) -> None:
    lid, r = log_id("expect"), root("expect")
    anchor = chain.anchor(lid, 9, r, TS)
    expect(
        "ledger.anchor_mismatch", chain.verify_anchor, anchor, log_id=lid, tree_size=9, root_hash=root("x")
    )
    expect("ledger.anchor_mismatch", chain.verify_anchor, anchor, log_id=lid, tree_size=10, root_hash=r)
    expect(
        "ledger.anchor_mismatch", chain.verify_anchor, anchor, log_id=log_id("y"), tree_size=9, root_hash=r
    )
    expect(
        "ledger.anchor_mismatch",
        chain.verify_anchor,
        anchor,
        log_id=lid,
        tree_size=9,
        root_hash=r,
        timestamp_ms=TS + 1,
    )


@pytest.fixture(scope="module")
def genuine(chain: ChainAnchor) -> Anchor:
    return chain.anchor(log_id("tamper"), 100, root("tamper-100"), TS)


@pytest.fixture(scope="module")
def neighbour(chain: ChainAnchor) -> Anchor:
    return chain.anchor(log_id("tamper"), 101, root("tamper-101"), TS + 1)


@pytest.mark.parametrize(
    ("change", "code"),
    [
        # The record is edited *and* the verifier is asked about the edited values: only the chain can tell.
        (lambda a, n: {"root_hash": root("forged")}, "ledger.anchor_mismatch"),
        (lambda a, n: {"tree_size": 200}, "ledger.anchor_mismatch"),
        (lambda a, n: {"log_id": log_id("forged")}, "ledger.anchor_mismatch"),
        (lambda a, n: {"timestamp_ms": TS + 5}, "ledger.anchor_mismatch"),
        (lambda a, n: {"tx_hash": hashlib.sha256(b"no such tx").digest()}, "ledger.anchor_not_found"),
        (lambda a, n: {"tx_hash": n.tx_hash}, "ledger.anchor_mismatch"),
        (lambda a, n: {"block_number": n.block_number}, "ledger.anchor_mismatch"),
        (lambda a, n: {"block_hash": n.block_hash}, "ledger.anchor_mismatch"),
        (lambda a, n: {"block_number": n.block_number, "block_hash": n.block_hash}, "ledger.anchor_mismatch"),
        (lambda a, n: {"tx_index": 1}, "ledger.anchor_mismatch"),
        (lambda a, n: {"chain_id": a.chain_id + 1}, "ledger.anchor_mismatch"),
        (lambda a, n: {"sender": "0x" + "11" * 20}, "ledger.anchor_mismatch"),
    ],
)
def test_tampered_record_fails_with_exact_code(chain, genuine, neighbour, change, code) -> None:
    chain.verify_anchor(genuine, log_id=genuine.log_id, tree_size=100, root_hash=genuine.root_hash)
    forged = dataclasses.replace(genuine, **change(genuine, neighbour))
    expect(
        code,
        chain.verify_anchor,
        forged,
        log_id=forged.log_id,
        tree_size=forged.tree_size,
        root_hash=forged.root_hash,
        timestamp_ms=forged.timestamp_ms,
    )


def test_record_pointing_at_a_lookalike_transaction_is_rejected(chain: ChainAnchor) -> None:
    lid, r = log_id("pointer"), root("pointer")
    real = encode_payload(lid, 3, r, TS)
    for data in (real[:9] + b"\x02" + real[10:], b"SMLANCHOX" + real[9:], real + b"\x00", b"hello"):
        w3 = chain.web3
        tx_hash = w3.eth.send_transaction(
            {"from": chain.address, "to": chain.address, "value": 0, "data": data}
        )
        receipt = w3.eth.wait_for_transaction_receipt(tx_hash)
        record = Anchor(
            chain_id=chain.chain_id,
            tx_hash=bytes(tx_hash),
            block_number=receipt["blockNumber"],
            block_hash=bytes(receipt["blockHash"]),
            tx_index=receipt["transactionIndex"],
            sender=chain.address,
            log_id=lid,
            tree_size=3,
            root_hash=r,
            timestamp_ms=TS,
        )
        err = expect(
            "ledger.anchor_mismatch", chain.verify_anchor, record, log_id=lid, tree_size=3, root_hash=r
        )
        assert "carries no anchor" in err.message


def test_confirmations_are_counted(chain: ChainAnchor) -> None:
    deep = ChainAnchor.from_web3(chain.web3, confirmations=2)
    lid, r = log_id("depth"), root("depth")
    start = head(chain) + 1
    anchor = deep.anchor(lid, 1, r, TS)
    expect("ledger.anchor_unconfirmed", deep.verify_anchor, anchor, log_id=lid, tree_size=1, root_hash=r)
    assert deep.anchors_for(lid, from_block=start) == []  # not deep enough to be listed yet
    chain.verify_anchor(anchor, log_id=lid, tree_size=1, root_hash=r)  # one confirmation suffices here
    chain.web3.provider.ethereum_tester.mine_blocks(1)
    deep.verify_anchor(anchor, log_id=lid, tree_size=1, root_hash=r)
    assert deep.anchors_for(lid, from_block=start) == [anchor]


# ---- scanning --------------------------------------------------------------------------------------


def test_anchors_for_finds_exactly_this_logs_anchors(chain: ChainAnchor, other: ChainAnchor) -> None:
    mine, theirs = log_id("scan-mine"), log_id("scan-theirs")
    start = head(chain) + 1
    first = chain.anchor(mine, 1, root("m1"), TS)
    chain.anchor(theirs, 1, root("t1"), TS)
    send_raw_calldata(chain, b"", value=12345)  # unrelated transfer
    send_raw_calldata(chain, random.Random(7).randbytes(90))  # unrelated calldata of the same length
    good = encode_payload(mine, 3, root("m3-fake"), TS)
    for lookalike in (
        b"SMLANCHOR",
        b"SMLANCHOR\x01" + b"\xff" * 10,  # right magic and version, truncated
        good[:9] + b"\x02" + good[10:],  # other version
        b"SMLANCHOX" + good[9:],  # other magic
        good + b"\x00",  # too long
        good[:-1],  # too short
    ):
        send_raw_calldata(chain, lookalike)
    impostor = other.anchor(mine, 2, root("impostor"), TS)  # the right payload from an untrusted account
    second = chain.anchor(mine, 2, root("m2"), TS + 1000)

    assert chain.anchors_for(mine, from_block=start) == [first, second]
    assert chain.anchors_for(mine, from_block=start, trusted_senders=[chain.address, other.address]) == [
        first,
        impostor,
        second,
    ]
    assert [a.root_hash for a in chain.anchors_for(theirs, from_block=start)] == [root("t1")]
    assert chain.anchors_for(log_id("nobody"), from_block=start) == []
    for found in chain.anchors_for(mine, from_block=start):
        chain.verify_anchor(found, log_id=mine, tree_size=found.tree_size, root_hash=found.root_hash)


def test_anchors_for_is_bounded_and_pages(chain: ChainAnchor) -> None:
    lid = log_id("paging")
    start = head(chain) + 1
    made = [chain.anchor(lid, size, root(f"p{size}"), TS + size) for size in range(1, 6)]
    end = head(chain)
    assert end - start + 1 == 5
    err = expect("input.too_large", chain.anchors_for, lid, from_block=start, max_blocks=4)
    assert isinstance(err, InputError)
    paged = []
    for page_start in range(start, end + 1, 2):
        paged += chain.anchors_for(
            lid, from_block=page_start, to_block=min(page_start + 1, end), max_blocks=2
        )
    assert paged == made == chain.anchors_for(lid, from_block=start, max_blocks=5)
    assert chain.anchors_for(lid, from_block=end + 100) == []
    expect("ledger.malformed", chain.anchors_for, "not-a-log-id")
    expect("ledger.malformed", chain.anchors_for, lid, from_block=-1)
    expect("config.invalid", chain.anchors_for, lid, max_blocks=0)
    expect("config.invalid", chain.anchors_for, lid, trusted_senders="0x" + "11" * 20)


# ---- forks -----------------------------------------------------------------------------------------


def test_two_roots_for_one_size_are_a_fork(chain: ChainAnchor) -> None:
    lid = log_id("fork")
    start = head(chain) + 1
    a = chain.anchor(lid, 8, root("history-A"), TS)
    b = chain.anchor(lid, 8, root("history-B"), TS + 10)
    # each anchor is individually valid: only seen together do they show the fork
    chain.verify_anchor(a, log_id=lid, tree_size=8, root_hash=root("history-A"))
    chain.verify_anchor(b, log_id=lid, tree_size=8, root_hash=root("history-B"))
    found = chain.anchors_for(lid, from_block=start)
    fork = detect_fork(found)
    assert fork is not None
    assert (fork.kind, fork.log_id, fork.first, fork.second) == ("conflicting_roots", lid, a, b)
    assert detect_fork(reversed(found)) == fork
    err = expect("ledger.fork_detected", assert_no_fork, found)
    assert isinstance(err, LedgerError)
    assert root("history-A").hex() in err.message and root("history-B").hex() in err.message


def test_timestamps_going_backwards_with_growing_size_are_a_fork(chain: ChainAnchor) -> None:
    lid = log_id("clock")
    start = head(chain) + 1
    small = chain.anchor(lid, 10, root("c10"), TS + 5000)
    big = chain.anchor(lid, 20, root("c20"), TS + 1000)
    fork = detect_fork(chain.anchors_for(lid, from_block=start))
    assert fork is not None
    assert (fork.kind, fork.first, fork.second) == ("timestamp_regression", small, big)
    expect("ledger.fork_detected", assert_no_fork, [big, small])


def test_consistent_history_is_not_a_fork(chain: ChainAnchor) -> None:
    lid, other_log = log_id("honest"), log_id("honest-other")
    start = head(chain) + 1
    chain.anchor(lid, 1, root("h1"), TS)
    chain.anchor(lid, 2, root("h2"), TS + 10)
    chain.anchor(lid, 2, root("h2"), TS + 20)  # the same head anchored again later
    chain.anchor(lid, 4, root("h4"), TS + 20)  # equal timestamps are allowed
    chain.anchor(other_log, 2, root("other-log-2"), TS)  # another log may have other roots
    found = chain.anchors_for(lid, from_block=start) + chain.anchors_for(other_log, from_block=start)
    assert len(found) == 5
    assert detect_fork(found) is None
    assert detect_fork(reversed(found)) is None
    assert_no_fork(found)
    assert detect_fork([]) is None
    expect("ledger.malformed", detect_fork, [found[0], "not an anchor"])


# ---- signing locally (the path a real chain uses) ---------------------------------------------------


def test_locally_signed_anchor_and_trusted_senders(chain: ChainAnchor, other: ChainAnchor) -> None:
    lid, r = log_id("local-key"), root("local-key")
    anchor = other.anchor(lid, 4, r, TS)
    tx = chain.web3.eth.get_transaction(anchor.tx_hash)
    assert tx["from"] == other.address == anchor.sender
    assert tx["type"] == 2  # EIP-1559, signed here and sent raw
    receipt = chain.web3.eth.get_transaction_receipt(anchor.tx_hash)
    assert receipt["gasUsed"] == expected_gas(encode_payload(lid, 4, r, TS))
    other.verify_anchor(anchor, log_id=lid, tree_size=4, root_hash=r)
    # the embedded account does not trust the other account unless told to
    err = expect("ledger.untrusted_sender", chain.verify_anchor, anchor, log_id=lid, tree_size=4, root_hash=r)
    assert other.address in err.message
    chain.verify_anchor(anchor, log_id=lid, tree_size=4, root_hash=r, trusted_senders=[other.address.lower()])


def test_anchor_to_a_fixed_anchor_address(chain: ChainAnchor, other: ChainAnchor) -> None:
    sink = "0x" + hashlib.sha256(b"anchor sink").hexdigest()[:40]
    to_sink = ChainAnchor.from_web3(chain.web3, anchor_address=sink)
    lid, r = log_id("sink"), root("sink")
    anchor = to_sink.anchor(lid, 1, r, TS)
    tx = chain.web3.eth.get_transaction(anchor.tx_hash)
    assert tx["to"].lower() == sink
    chain.verify_anchor(anchor, log_id=lid, tree_size=1, root_hash=r)


def test_unfunded_account_is_rejected(chain: ChainAnchor) -> None:
    poor = ChainAnchor.from_web3(chain.web3, private_key=hashlib.sha256(b"no ether here").digest())
    expect("ledger.anchor_rejected", poor.anchor, log_id("poor"), 1, root("poor"), TS)


def test_unmined_anchor_times_out_then_lands(chain: ChainAnchor) -> None:
    tester = chain.web3.provider.ethereum_tester
    impatient = ChainAnchor.from_web3(chain.web3, receipt_timeout=0.2)
    lid, r = log_id("timeout"), root("timeout")
    start = head(chain) + 1
    tester.disable_auto_mine_transactions()
    try:
        err = expect("ledger.anchor_timeout", impatient.anchor, lid, 1, r, TS)
    finally:
        tester.enable_auto_mine_transactions()  # mines what is pending
    found = chain.anchors_for(lid, from_block=start)
    assert len(found) == 1
    assert "0x" + found[0].tx_hash.hex() in err.message
    chain.verify_anchor(found[0], log_id=lid, tree_size=1, root_hash=r)


def record_for(chain: ChainAnchor, tx_hash: bytes, payload: AnchorPayload) -> Anchor:
    """An anchor record that claims the transaction ``tx_hash`` anchors ``payload``."""
    receipt = chain.web3.eth.get_transaction_receipt(tx_hash)
    return Anchor(
        chain_id=chain.chain_id,
        tx_hash=bytes(tx_hash),
        block_number=receipt["blockNumber"],
        block_hash=bytes(receipt["blockHash"]),
        tx_index=receipt["transactionIndex"],
        sender=chain.address,
        log_id=payload.log_id,
        tree_size=payload.tree_size,
        root_hash=payload.root_hash,
        timestamp_ms=payload.timestamp_ms,
    )


# A hand-assembled contract whose code always reverts: init code PUSH5 <60006000fd> PUSH1 0 MSTORE
# PUSH1 5 PUSH1 27 RETURN deploys the runtime PUSH1 0 PUSH1 0 REVERT.
REVERTING_INIT_CODE = bytes.fromhex("6460006000fd6000526005601bf3")


def test_reverted_transaction_anchors_nothing(chain: ChainAnchor) -> None:
    w3 = chain.web3
    deploy = w3.eth.send_transaction({"from": chain.address, "data": REVERTING_INIT_CODE, "gas": 100_000})
    contract = w3.eth.wait_for_transaction_receipt(deploy)["contractAddress"]
    assert bytes(w3.eth.get_code(contract)) == bytes.fromhex("60006000fd")
    payload = AnchorPayload(log_id("reverted"), 1, root("reverted"), TS)
    start = head(chain) + 1
    tx_hash = w3.eth.send_transaction(
        {"from": chain.address, "to": contract, "value": 0, "data": payload.encode(), "gas": 100_000}
    )
    assert w3.eth.wait_for_transaction_receipt(tx_hash)["status"] == 0  # mined, calldata public, but failed
    assert chain.anchors_for(payload.log_id, from_block=start) == []
    err = expect(
        "ledger.anchor_mismatch",
        chain.verify_anchor,
        record_for(chain, tx_hash, payload),
        log_id=payload.log_id,
        tree_size=1,
        root_hash=payload.root_hash,
    )
    assert "reverted" in err.message
    # a record pointing at the contract creation is not an anchor either
    err = expect(
        "ledger.anchor_mismatch",
        chain.verify_anchor,
        record_for(chain, deploy, payload),
        log_id=payload.log_id,
        tree_size=1,
        root_hash=payload.root_hash,
    )
    # and anchoring through a contract that reverts is refused before anything is sent
    into_contract = ChainAnchor.from_web3(w3, anchor_address=contract)
    expect("ledger.anchor_rejected", into_contract.anchor, payload.log_id, 1, payload.root_hash, TS)


def test_anchor_reorganised_away_is_not_found(chain: ChainAnchor) -> None:
    tester = chain.web3.provider.ethereum_tester
    lid, r = log_id("reorg"), root("reorg")
    start = head(chain) + 1
    snapshot = tester.take_snapshot()
    orphan = chain.anchor(lid, 1, r, TS)
    chain.verify_anchor(orphan, log_id=lid, tree_size=1, root_hash=r)
    tester.revert_to_snapshot(snapshot)  # the chain forgets the block: a reorganisation
    for value in (1, 2):  # another branch grows past the orphaned height
        send_raw_calldata(chain, b"", value=value)
    assert head(chain) >= orphan.block_number
    expect("ledger.anchor_not_found", chain.verify_anchor, orphan, log_id=lid, tree_size=1, root_hash=r)
    assert chain.anchors_for(lid, from_block=start) == []


# ---- the anchor record -----------------------------------------------------------------------------


def test_anchor_record_parser_rejects_malformed(genuine: Anchor) -> None:
    good = genuine.to_dict()
    bad_values = [
        {**good, "format": "sealedml.anchor/2"},
        {k: v for k, v in good.items() if k != "root_hash"},
        {**good, "extra": 1},
        {**good, "tx_hash": genuine.tx_hash.hex()},  # missing 0x
        {**good, "tx_hash": good["tx_hash"].upper()},
        {**good, "root_hash": "0x" + genuine.root_hash.hex()},
        {**good, "log_id": genuine.log_id.upper()},
        {**good, "tree_size": -1},
        {**good, "tree_size": "100"},
        {**good, "tree_size": True},
        {**good, "block_number": 2**64},
        {**good, "sender": "0x1234"},
        {**good, "sender": 5},
        [],
        "anchor",
        None,
    ]
    for value in bad_values:
        expect("ledger.malformed", Anchor.from_dict, value)
    for text in ("", "{", "[1,2]", "null", '{"format": "sealedml.anchor/1"}', b"\xff\xfe"):
        expect("ledger.malformed", Anchor.from_json, text)


@FAST
@given(
    st.dictionaries(
        st.sampled_from(["format", "chain_id", "tx_hash", "tree_size", "x"]), st.from_type(object)
    )
)
def test_anchor_record_parser_on_arbitrary_objects(data: dict) -> None:
    expect("ledger.malformed", Anchor.from_dict, data)


# ---- configuration and availability ----------------------------------------------------------------


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


KEY = "0x" + hashlib.sha256(b"sealedml test: config key").hexdigest()


def test_unreachable_rpc_is_chain_unavailable() -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    err = expect("ledger.chain_unavailable", ChainAnchor.connect, url, KEY, timeout=0.5)
    assert isinstance(err, LedgerError)
    assert err.status == 503
    assert KEY[2:] not in err.message


def test_rpc_url_secrets_stay_out_of_errors() -> None:
    url = f"http://user:pa55word@127.0.0.1:{closed_port()}/v3/s3cr3t-api-key?token=t0ken-value"
    err = expect("ledger.chain_unavailable", ChainAnchor.connect, url, KEY, timeout=0.5)
    for secret in ("pa55word", "s3cr3t-api-key", "t0ken-value"):
        assert secret not in err.message
    assert "127.0.0.1" in err.message


@pytest.mark.parametrize(
    "url",
    ["", "localhost:8545", "ftp://127.0.0.1:21", "ws://127.0.0.1:8546", "http://", "file:///etc/passwd"],
)
def test_bad_rpc_url_is_config_invalid(url: str) -> None:
    err = expect("config.invalid", ChainAnchor.connect, url, KEY)
    assert isinstance(err, ConfigError)


@pytest.mark.parametrize(
    "key", ["zz", "00", "0x" + "00" * 32, "0x" + "ff" * 32, "0x" + "11" * 31, b"\x01" * 31, 12345]
)
def test_bad_private_key_is_config_invalid(key) -> None:
    err = expect("config.invalid", ChainAnchor.connect, f"http://127.0.0.1:{closed_port()}", key)
    if isinstance(key, str) and len(key) > 4:
        assert key[2:] not in err.message  # never echo key material


@pytest.mark.parametrize(
    "kwargs",
    [
        {"anchor_address": "0x1234"},
        {"anchor_address": "0x7E5F4552091A69125d5DfCb7b8C2659029395BDF"},  # bad EIP-55 checksum
        {"confirmations": 0},
        {"confirmations": True},
        {"timeout": 0},
        {"receipt_timeout": -1},
    ],
)
def test_bad_options_are_config_invalid(kwargs) -> None:
    expect("config.invalid", ChainAnchor.connect, f"http://127.0.0.1:{closed_port()}", KEY, **kwargs)


def test_missing_web3_is_a_clean_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__
    blocked = {"web3", "eth_account", "eth_tester"}

    def fake_import(name, globals=None, locals=None, fromlist=(), level=0):
        if level == 0 and name.split(".")[0] in blocked:
            raise ImportError(f"No module named {name!r}")
        return real_import(name, globals, locals, fromlist, level)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    for call in (
        ChainAnchor.embedded,
        lambda: ChainAnchor.connect("http://127.0.0.1:8545", KEY),
    ):
        err = expect("config.invalid", call)
        assert "sealedml[chain]" in err.message
    # the pure parts keep working without web3
    data = encode_payload(log_id("offline"), 1, root("offline"), TS)
    assert decode_payload(data).tree_size == 1


def test_module_imports_without_web3() -> None:
    code = textwrap.dedent(
        """
        import sys

        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {"web3", "eth_account", "eth_tester"}:
                    raise ImportError("blocked " + name)
                return None

        sys.meta_path.insert(0, Block())
        from sealedml.errors import ConfigError
        from sealedml.ledger import anchor

        payload = anchor.encode_payload("ab" * 32, 3, bytes(32), 5)
        assert anchor.decode_payload(payload).tree_size == 3
        try:
            anchor.ChainAnchor.embedded()
        except ConfigError as err:
            print(err.code, "sealedml[chain]" in err.message)
        assert "web3" not in sys.modules
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["config.invalid", "True"]
