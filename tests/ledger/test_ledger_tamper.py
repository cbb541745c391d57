"""A dishonest host edits, drops or reorders logged receipts with plain SQL: the audit and clients notice.

Two kinds of host are played here. A careless one changes rows and leaves the tree hashes as they
were: ``verify_log()`` finds the mismatch. A careful one also recomputes every tree hash, so the
database is self-consistent again and signs fresh tree heads over it: ``verify_log()`` against the
heads it issued before, and every client holding such a head (inclusion and consistency checks),
still catch it.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from sealedml.crypto.signing import SigningKey
from sealedml.enclave.receipts import build_receipt
from sealedml.errors import SealedMLError
from sealedml.ledger import TransparencyLog, check_consistency, check_inclusion, receipt_entry
from sealedml.ledger.merkle import MemoryTree, leaf_hash
from sealedml.ledger.store import LedgerStore

TS = 1_767_225_600_000
N = 40


def code_of(fn, *args, **kwargs) -> str:
    with pytest.raises(SealedMLError) as info:
        fn(*args, **kwargs)
    return info.value.code


class Host:
    """The log's database, as its operator can change it behind the log's back."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def sql(self, statement: str, params: tuple = ()) -> None:
        con = sqlite3.connect(self.path)
        try:
            with con:
                con.execute(statement, params)
        finally:
            con.close()

    def rows(self) -> list[tuple[int, str, bytes]]:
        con = sqlite3.connect(self.path)
        try:
            return con.execute("SELECT idx, entry_id, entry FROM ledger_entries ORDER BY idx").fetchall()
        finally:
            con.close()

    def recompute_tree(self) -> None:
        """What a careful forger does: make every leaf hash and subtree hash match the rows again."""
        rows = self.rows()
        tree = MemoryTree(entry for _, _, entry in rows)
        size = len(rows)
        ids = [(level, i) for level in range(1, size.bit_length()) for i in range(size >> level)]
        nodes = tree.read_nodes(ids)
        con = sqlite3.connect(self.path)
        try:
            with con:
                for idx, _, entry in rows:
                    con.execute(
                        "UPDATE ledger_entries SET leaf_hash = ? WHERE idx = ?", (leaf_hash(entry), idx)
                    )
                con.execute("DELETE FROM ledger_nodes")
                con.executemany(
                    "INSERT INTO ledger_nodes (level, idx, hash) VALUES (?, ?, ?)",
                    [(level, i, nodes[(level, i)]) for level, i in ids],
                )
        finally:
            con.close()


@pytest.fixture
def world(tmp_path: Path):
    """A log of N real receipts, and what the clients kept: receipt bytes, index, and the STH."""
    path = tmp_path / "ledger.db"
    log_key, enclave = SigningKey.generate(), SigningKey.generate()
    log = TransparencyLog.open(f"sqlite:///{path}", log_key)
    kept = []
    for i in range(N):
        receipt, signature = build_receipt(
            enclave,
            kind="predict",
            job=f"job-{i:04d}",
            request_id=f"req-{i}",
            model_id="m-1",
            model_sha256="ab" * 32,
            model_blob_sha256="cd" * 32,
            request=b"request %d" % i,
            response=b"response %d" % i,
            client="acct-7",
            rows=i + 1,
            measurement="ee" * 48,
            tee="simulated",
            issued_at=TS // 1000 + i,
        )
        index, sth = log.append_receipt(receipt, signature)
        kept.append((receipt_entry(receipt, signature), index, sth))
    old = log.sth()
    log.store.verify_log([old.head])
    yield log, Host(path), kept, old, log_key.public_bytes
    log.store.dispose()


def audit_code(log: TransparencyLog, *heads) -> str:
    return code_of(log.store.verify_log, [h.head for h in heads])


def test_an_honest_log_passes_every_check(world) -> None:
    log, _host, kept, old, key = world
    assert log.store.verify_log([sth.head for _, _, sth in kept]).tree_size == N
    for entry, index, sth in kept:
        check_inclusion(entry, log.inclusion(index, sth.tree_size), sth, key)
        check_inclusion(entry, log.inclusion(index, old.tree_size), old, key)
        check_consistency(sth, old, log.consistency(sth.tree_size, old.tree_size), key)


def test_an_edited_receipt_is_caught(world) -> None:
    log, host, kept, old, key = world
    entry, index, _ = kept[17]
    edited = entry.replace(b'"rows":18', b'"rows":1')
    assert edited != entry
    host.sql("UPDATE ledger_entries SET entry = ? WHERE idx = ?", (edited, index))

    # Careless host: the audit sees bytes that do not hash to their leaf.
    assert audit_code(log) == "ledger.audit_failed"
    # A client fetching the receipt from the host cannot get it proven under the head it holds.
    served = log.store.get_entry(index).entry
    assert served == edited
    assert code_of(check_inclusion, served, log.inclusion(index, N), old, key) == "ledger.inclusion_invalid"
    # The client's own copy is still provably in the log: the host cannot disown it.
    check_inclusion(entry, log.inclusion(index, N), old, key)

    # Careful host: recomputes the whole tree and signs a new head over it.
    host.recompute_tree()
    log.store.verify_log()  # self-consistent again...
    assert audit_code(log, old) == "ledger.audit_failed"  # ...but not the log it used to be
    forged = log.sth()
    assert forged.tree_size == N and forged.root_hash != old.root_hash
    # The client's receipt is not in the forged head, and the forged head does not extend the old one.
    assert code_of(check_inclusion, entry, log.inclusion(index, N), forged, key) == "ledger.inclusion_invalid"
    assert code_of(check_consistency, old, forged, log.consistency(N, N), key) == "ledger.consistency_invalid"
    # The old head still proves the original receipt (its audit path never contains the entry itself).
    check_inclusion(entry, log.inclusion(index, N), old, key)
    log.append("later", b"a later entry")
    later = log.sth()
    assert (
        code_of(check_consistency, old, later, log.consistency(N, N + 1), key) == "ledger.consistency_invalid"
    )
    # Heads issued before the edited entry still extend into the forged log: nothing before it changed.
    _, _, early = kept[10]
    check_consistency(early, later, log.consistency(early.tree_size, N + 1), key)


def test_a_dropped_receipt_is_caught(world) -> None:
    log, host, kept, old, key = world
    entry, index, sth_then = kept[17]
    host.sql("DELETE FROM ledger_entries WHERE idx = ?", (index,))

    # Careless host: a gap in the indexes, and the entry cannot be served.
    assert audit_code(log) == "ledger.audit_failed"
    assert code_of(log.store.get_entry, index) == "ledger.index_out_of_range"

    # Careful host: closes the gap (shifts later entries down) and recomputes the tree.
    host.sql("UPDATE ledger_entries SET idx = -idx - 1 WHERE idx > ?", (index,))
    host.sql("UPDATE ledger_entries SET idx = -idx - 2 WHERE idx < 0")
    host.recompute_tree()
    assert log.store.verify_log().tree_size == N - 1
    assert audit_code(log, old) == "ledger.audit_failed"
    assert audit_code(log, sth_then) == "ledger.audit_failed"
    shrunk = log.sth()
    assert (
        code_of(check_consistency, old, shrunk, log.consistency(N - 1), key) == "ledger.consistency_invalid"
    )
    assert code_of(log.consistency, N) == "ledger.index_out_of_range"  # no proof to a larger head exists
    # Refilling to the old size or beyond does not help.
    log.append("filler-1", b"filler 1")
    log.append("filler-2", b"filler 2")
    grown = log.sth()
    assert (
        code_of(check_consistency, old, grown, log.consistency(N, N + 1), key) == "ledger.consistency_invalid"
    )
    # The client holding receipt 17 (or any later one) cannot get it proven under its head any more.
    assert code_of(check_inclusion, entry, log.inclusion(index, N), old, key) == "ledger.inclusion_invalid"
    later_entry, later_index, _ = kept[30]
    assert (
        code_of(check_inclusion, later_entry, log.inclusion(later_index, N), old, key)
        == "ledger.inclusion_invalid"
    )


def test_reordered_receipts_are_caught(world) -> None:
    log, host, kept, old, key = world
    # Swap entries 5 and 6 wholesale (bytes, ids and leaf hashes), going through a free index.
    host.sql("UPDATE ledger_entries SET idx = -1 WHERE idx = 5")
    host.sql("UPDATE ledger_entries SET idx = 5 WHERE idx = 6")
    host.sql("UPDATE ledger_entries SET idx = 6 WHERE idx = -1")
    assert [row[1] for row in host.rows()[4:8]] == ["job-0004", "job-0006", "job-0005", "job-0007"]

    assert audit_code(log) == "ledger.audit_failed"  # the subtree over 4..7 no longer matches
    host.recompute_tree()
    log.store.verify_log()
    assert audit_code(log, old) == "ledger.audit_failed"
    new = log.sth()
    assert code_of(check_consistency, old, new, log.consistency(N), key) == "ledger.consistency_invalid"
    for k in (5, 6):
        entry, index, _ = kept[k]
        assert (
            code_of(check_inclusion, entry, log.inclusion(index, N), old, key) == "ledger.inclusion_invalid"
        )
        # Even at the position the receipt now sits in, the old head does not contain it there.
        assert (
            code_of(check_inclusion, entry, log.inclusion(11 - index, N), old, key)
            == "ledger.inclusion_invalid"
        )


def test_a_truncated_log_is_caught(world) -> None:
    log, host, _kept, old, key = world
    host.sql("DELETE FROM ledger_entries WHERE idx >= 35")
    host.recompute_tree()
    assert log.store.verify_log().tree_size == 35  # a perfectly consistent, shorter log...
    assert audit_code(log, old) == "ledger.audit_failed"  # ...shorter than a head it issued
    shorter = log.sth()
    assert (
        code_of(check_consistency, old, shorter, log.consistency(35, 35), key) == "ledger.consistency_invalid"
    )


def test_edited_tree_hashes_are_caught(world) -> None:
    log, host, kept, old, key = world
    host.sql("UPDATE ledger_nodes SET hash = ? WHERE level = 2 AND idx = 1", (b"\x11" * 32,))
    assert audit_code(log) == "ledger.audit_failed"
    entry, index, _ = kept[2]  # its audit path uses subtree (2, 1), i.e. entries 4..7
    assert code_of(check_inclusion, entry, log.inclusion(index, N), old, key) == "ledger.inclusion_invalid"

    host.recompute_tree()
    host.sql("UPDATE ledger_entries SET leaf_hash = ? WHERE idx = 3", (b"\x22" * 32,))
    assert audit_code(log) == "ledger.audit_failed"

    host.recompute_tree()
    host.sql("INSERT INTO ledger_nodes (level, idx, hash) VALUES (1, 20, ?)", (b"\x33" * 32,))
    assert audit_code(log) == "ledger.audit_failed"  # a hash for a subtree the log does not have
    host.sql("DELETE FROM ledger_nodes WHERE level = 1 AND idx = 20")
    log.store.verify_log([old.head])
    host.sql("DELETE FROM ledger_nodes WHERE level = 3 AND idx = 4")  # entries 32..39
    assert audit_code(log) == "ledger.audit_failed"
    # A restarted host cannot even extend the tree: a subtree it needs is gone.
    restarted = LedgerStore(log.store.engine)
    assert code_of(restarted.append, "next", b"next") == "ledger.node_missing"


def test_a_forked_log_is_caught(world, tmp_path: Path) -> None:
    """The host keeps a second database with another history under the same log key."""
    log, host, kept, old, key = world
    rows = host.rows()
    fork = TransparencyLog.open(f"sqlite:///{tmp_path / 'fork.db'}", log._key)
    fork.append_many([(entry_id, entry) for _, entry_id, entry in rows[:20]])
    fork.append_many([(f"other-{i}", b"another history %d" % i) for i in range(25)])
    fork_head = fork.sth()
    # The first 20 entries agree, so heads up to 20 extend into the fork...
    _, _, at20 = kept[19]
    check_consistency(at20, fork_head, fork.consistency(20), key)
    # ...but the head a client got at 40 does not.
    assert (
        code_of(check_consistency, old, fork_head, fork.consistency(N), key) == "ledger.consistency_invalid"
    )
    entry, index, sth = kept[25]
    assert code_of(check_inclusion, entry, fork.inclusion(index, sth.tree_size), sth, key) == (
        "ledger.inclusion_invalid"
    )
    fork.store.dispose()
