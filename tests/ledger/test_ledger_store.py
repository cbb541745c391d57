"""The persistent Merkle log: same answers as the in-memory tree, atomic appends, reopen, threads."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from sqlalchemy import create_engine, event, text

from sealedml.errors import ConfigError, SealedMLError
from sealedml.ledger.merkle import (
    EMPTY_ROOT,
    MemoryTree,
    leaf_hash,
    verify_consistency,
    verify_inclusion,
)
from sealedml.ledger.sth import TreeHead
from sealedml.ledger.store import MAX_ENTRY_BYTES, LedgerStore, LogEntry

h = bytes.fromhex
REFERENCE_LEAVES = [
    h(""),
    h("00"),
    h("10"),
    h("2021"),
    h("3031"),
    h("40414243"),
    h("5051525354555657"),
    h("606162636465666768696a6b6c6d6e6f"),
]
REFERENCE_ROOT = h("5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328")
REFERENCE_PATH_5_OF_8 = [
    h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
    h("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
    h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
]


def code_of(fn, *args, **kwargs) -> str:
    with pytest.raises(SealedMLError) as info:
        fn(*args, **kwargs)
    return info.value.code


def entry(i: int) -> bytes:
    return b'{"job":"job-%06d","rows":%d}' % (i, i % 97)


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'ledger' / 'log.db'}"


@pytest.fixture
def store(url: str):
    s = LedgerStore(url)
    yield s
    s.dispose()


def test_empty_log(store: LedgerStore) -> None:
    assert store.size() == 0
    assert store.tree_head() == TreeHead(0, EMPTY_ROOT)
    assert store.verify_log() == TreeHead(0, EMPTY_ROOT)
    assert store.consistency_proof(0, 0) == []
    assert code_of(store.inclusion_proof, 0) == "ledger.index_out_of_range"
    assert code_of(store.get_entry, 0) == "ledger.index_out_of_range"
    assert store.find_by_id("nothing") is None


def test_reference_vectors_through_the_store(store: LedgerStore) -> None:
    for i, leaf in enumerate(REFERENCE_LEAVES):
        assert store.append(f"ref-{i}", leaf).first_index == i
    assert store.tree_head().root_hash == REFERENCE_ROOT
    assert store.inclusion_proof(5, 8) == REFERENCE_PATH_5_OF_8


def test_every_head_and_proof_matches_the_in_memory_tree(store: LedgerStore) -> None:
    tree = MemoryTree()
    for i in range(70):
        result = store.append(f"job-{i}", entry(i))
        tree.append(entry(i))
        assert result.indexes == range(i, i + 1)
        assert result.head == TreeHead(i + 1, tree.root())
    for size in (1, 2, 3, 7, 8, 9, 33, 64, 70):
        assert store.tree_head(size).root_hash == tree.root(size)
        for index in range(size):
            proof = store.inclusion_proof(index, size)
            assert proof == tree.inclusion_proof(index, size)
            verify_inclusion(leaf_hash(entry(index)), index, size, proof, tree.root(size))
        for first in range(size + 1):
            proof = store.consistency_proof(first, size)
            assert proof == tree.consistency_proof(first, size)
            verify_consistency(first, size, tree.root(first), tree.root(size), proof)
    assert store.verify_log() == TreeHead(70, tree.root())
    got = store.get_entry(17)
    assert got == LogEntry(17, "job-17", leaf_hash(entry(17)), entry(17))
    assert store.find_by_id("job-17") == got
    assert [e.index for e in store.get_entries(60, 100)] == list(range(60, 70))


def test_a_batch_is_the_same_log_as_single_appends(store: LedgerStore, tmp_path: Path) -> None:
    store.append_many([(f"job-{i}", entry(i)) for i in range(3)])
    # Larger than one insert chunk (4096 rows), in one transaction.
    result = store.append_many((f"job-{i}", entry(i)) for i in range(3, 9000))
    assert result.indexes == range(3, 9000)
    tree = MemoryTree(entry(i) for i in range(9000))
    assert result.head == TreeHead(9000, tree.root())
    assert store.verify_log() == result.head
    for index in (0, 4095, 4096, 8191, 8192, 8999):
        assert store.inclusion_proof(index) == tree.inclusion_proof(index)
    assert store.consistency_proof(4097) == tree.consistency_proof(4097)
    assert store.append_many([]).head == result.head


def test_the_log_survives_a_reopen(url: str) -> None:
    first = LedgerStore(url)
    first.append_many((f"job-{i}", entry(i)) for i in range(37))
    old_head = first.tree_head()
    first.dispose()

    again = LedgerStore(url)
    assert again.tree_head() == old_head
    assert again.get_entry(36).entry == entry(36)
    again.append("job-37", entry(37))
    tree = MemoryTree(entry(i) for i in range(38))
    assert again.tree_head().root_hash == tree.root()
    verify_consistency(37, 38, old_head.root_hash, tree.root(), again.consistency_proof(37))
    assert again.verify_log([old_head]) == TreeHead(38, tree.root())
    again.dispose()


def test_a_duplicate_entry_id_is_rejected_and_nothing_changes(store: LedgerStore) -> None:
    store.append_many((f"job-{i}", entry(i)) for i in range(10))
    before = store.tree_head()
    assert code_of(store.append, "job-3", b"another receipt") == "ledger.duplicate_entry"
    # An already-logged id late in a large batch: the whole batch is refused.
    batch = [(f"new-{i}", entry(1000 + i)) for i in range(5000)] + [("job-9", b"x")]
    with pytest.raises(SealedMLError) as info:
        store.append_many(batch)
    assert info.value.code == "ledger.duplicate_entry" and info.value.status == 409
    assert "job-9" in info.value.message
    # The same id twice in one batch.
    assert code_of(store.append_many, [("a", b"1"), ("b", b"2"), ("a", b"3")]) == "ledger.duplicate_entry"
    assert store.tree_head() == before
    assert store.find_by_id("new-0") is None and store.find_by_id("a") is None
    assert store.verify_log() == before


def test_bad_arguments_raise_typed_errors(store: LedgerStore) -> None:
    store.append("job-0", entry(0))
    for entry_id, data in [
        ("", b"x"),
        ("x" * 256, b"x"),
        (7, b"x"),
        ("id", "not bytes"),
        ("id", bytearray(b"x")),
        ("id", b"\0" * (MAX_ENTRY_BYTES + 1)),
    ]:
        assert code_of(store.append, entry_id, data) == "ledger.malformed"
    for bad_batch in (["job-x"], [("job-x",)], [("a", b"1", "extra")], [None]):
        assert code_of(store.append_many, bad_batch) == "ledger.malformed"
    assert code_of(store.inclusion_proof, 1) == "ledger.index_out_of_range"
    assert code_of(store.inclusion_proof, 0, 2) == "ledger.index_out_of_range"
    assert code_of(store.inclusion_proof, 0, -1) == "ledger.malformed"
    assert code_of(store.consistency_proof, 2, 1) == "ledger.index_out_of_range"
    assert code_of(store.tree_head, 5) == "ledger.index_out_of_range"
    assert code_of(store.get_entry, "0") == "ledger.malformed"
    assert code_of(store.find_by_id, 0) == "ledger.malformed"
    assert store.size() == 1


def test_proofs_cost_a_constant_number_of_queries(store: LedgerStore) -> None:
    statements: list[str] = []
    event.listen(store.engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    counts = []
    for target in (1000, 20000):
        store.append_many((f"job-{i}", entry(i)) for i in range(store.size(), target))
        for fn, args in ((store.inclusion_proof, (333,)), (store.consistency_proof, (777,))):
            statements.clear()
            fn(*args)
            counts.append(len(statements))
    # size + leaf hashes + subtree hashes, whatever the size of the log.
    assert counts[:2] == counts[2:] and max(counts) <= 3


def test_concurrent_appends_from_threads_give_one_consistent_log(store: LedgerStore) -> None:
    results: list = []
    errors: list = []

    def worker(w: int) -> None:
        try:
            for i in range(40):
                if i % 10 == 0:
                    r = store.append_many([(f"w{w}-{i}-{j}", b"w%d-%d-%d" % (w, i, j)) for j in range(3)])
                else:
                    r = store.append(f"w{w}-{i}", b"w%d-%d" % (w, i))
                results.append(r)
        except Exception as exc:  # collected, the test fails below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    total = 6 * (36 + 4 * 3)
    head = store.verify_log()
    assert head.tree_size == total
    indexes = sorted(i for r in results for i in r.indexes)
    assert indexes == list(range(total))
    # Every head returned to a worker is a prefix of the final log, and covers its own entries.
    for r in results:
        assert r.head.tree_size == r.first_index + r.count
        verify_consistency(
            r.head.tree_size,
            total,
            r.head.root_hash,
            head.root_hash,
            store.consistency_proof(r.head.tree_size),
        )
        last = r.first_index + r.count - 1
        verify_inclusion(
            store.get_entry(last).leaf_hash,
            last,
            r.head.tree_size,
            store.inclusion_proof(last, r.head.tree_size),
            r.head.root_hash,
        )


def test_two_writers_with_their_own_connections_share_one_log(url: str) -> None:
    """Two stores on one file (like two worker processes): racing appends are retried, not lost."""
    stores = [LedgerStore(url), LedgerStore(url)]
    errors: list = []

    def worker(s: LedgerStore, w: int) -> None:
        try:
            for i in range(60):
                s.append(f"p{w}-{i}", b"p%d-%d" % (w, i))
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(stores[w % 2], w)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    head = stores[0].verify_log()
    assert head.tree_size == 240 and stores[1].tree_head() == head
    for s in stores:
        s.dispose()


WRITER = """
import sys
from sealedml.ledger.store import LedgerStore
store = LedgerStore(sys.argv[1])
for i in range(int(sys.argv[3])):
    store.append(f"{sys.argv[2]}-{i}", f"{sys.argv[2]} entry {i}".encode())
"""


def test_writer_processes_share_one_log(url: str) -> None:
    """Web workers may be processes: each has its own lock, the database serialises them."""
    LedgerStore(url).dispose()  # schema first, so the writers do not race to create it
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, url, f"proc{k}", "80"]) for k in range(3)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0]
    store = LedgerStore(url)
    head = store.verify_log()
    assert head.tree_size == 240
    ids = {e.entry_id for start in range(0, 240, 100) for e in store.get_entries(start, start + 100)}
    assert ids == {f"proc{k}-{i}" for k in range(3) for i in range(80)}
    store.dispose()


def test_an_existing_engine_is_used_as_is(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'platform.db'}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE accounts (id INTEGER PRIMARY KEY)"))
    store = LedgerStore(engine)
    store.append("job-0", entry(0))
    store.dispose()  # the caller's engine stays usable
    with engine.connect() as conn:
        tables = {row[0] for row in conn.execute(text("SELECT name FROM sqlite_master WHERE type='table'"))}
        assert conn.execute(text("SELECT count(*) FROM ledger_entries")).scalar() == 1
    assert {"accounts", "ledger_entries", "ledger_nodes", "ledger_meta"} <= tables
    engine.dispose()


def test_in_memory_sqlite_works_across_threads() -> None:
    store = LedgerStore("sqlite://")
    threads = [
        threading.Thread(target=lambda w=w: [store.append(f"m{w}-{i}", b"%d" % i) for i in range(25)])
        for w in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.verify_log().tree_size == 100


def test_a_database_belongs_to_one_log(store: LedgerStore) -> None:
    store.bind_log_id("aa" * 32)
    store.bind_log_id("aa" * 32)
    with pytest.raises(ConfigError):
        store.bind_log_id("bb" * 32)
    assert store.get_meta("log_id") == "aa" * 32


def test_database_failures_become_ledger_errors(store: LedgerStore) -> None:
    store.append("job-0", entry(0))
    with store.engine.begin() as conn:
        conn.execute(text("DROP TABLE ledger_nodes"))
    with pytest.raises(SealedMLError) as info:
        store.append("job-1", entry(1))
    assert info.value.code == "ledger.storage_unavailable" and info.value.status == 503
    assert info.value.__cause__ is not None
    assert code_of(LedgerStore, "not a url") == "config.invalid"


@pytest.mark.skipif(
    not os.environ.get("SEALEDML_TEST_POSTGRES_URL"),
    reason="set SEALEDML_TEST_POSTGRES_URL=postgresql+psycopg://... to run against PostgreSQL",
)
def test_postgresql_by_url() -> None:
    pg_url = os.environ["SEALEDML_TEST_POSTGRES_URL"]
    store = LedgerStore(pg_url)
    with store.engine.begin() as conn:
        for table in ("ledger_nodes", "ledger_entries", "ledger_meta"):
            conn.execute(text(f"DELETE FROM {table}"))
    tree = MemoryTree()
    for i in range(50):
        store.append(f"job-{i}", entry(i))
        tree.append(entry(i))
    store.append_many((f"job-{i}", entry(i)) for i in range(50, 5000))
    tree = MemoryTree(entry(i) for i in range(5000))
    assert store.verify_log() == TreeHead(5000, tree.root())
    assert store.inclusion_proof(1234) == tree.inclusion_proof(1234)
    assert store.consistency_proof(777) == tree.consistency_proof(777)
    assert code_of(store.append, "job-7", b"again") == "ledger.duplicate_entry"
    errors: list = []

    def worker(w: int) -> None:
        try:
            for i in range(30):
                store.append(f"pg{w}-{i}", b"%d-%d" % (w, i))
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and store.verify_log().tree_size == 5120
    store.dispose()
