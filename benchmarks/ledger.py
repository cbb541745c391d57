"""Transparency log cost: appends, signed tree heads and RFC 9162 proofs at 10^3 .. 10^6 entries.

One SQLite file in a temporary folder (WAL, synchronous=FULL, as the store configures it) grows to
each size in ``--sizes``; at each size the run measures, on the real store:

* appends per second, batched (``append_many`` in batches of ``--batch``) and single (one entry and
  one committed transaction per call), against a same-run baseline that inserts the same rows into
  a plain table without any tree (raw sqlite3, and SQLAlchemy Core on the same engine settings);
* inclusion and consistency proof sizes (hashes and bytes, next to log2(n)), generation time from
  the store and verification time (RFC 9162 §2.1.3.2 / §2.1.4.2), over ``--samples`` random indexes;
* the cost of signing and verifying a tree head, of SHA-256 over an entry alone, and of a full
  ``verify_log()`` audit.

Entries are real execution receipts (``build_receipt``, Ed25519-signed) wrapped by ``receipt_entry``.

    python benchmarks/ledger.py [--sizes 1000,100000,1000000] [--json results.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import Column, Integer, LargeBinary, MetaData, String, Table, create_engine, event, insert

from sealedml.crypto.signing import SigningKey
from sealedml.enclave.receipts import build_receipt
from sealedml.ledger.log import receipt_entry
from sealedml.ledger.merkle import leaf_hash, verify_consistency, verify_inclusion
from sealedml.ledger.sth import sign_tree_head
from sealedml.ledger.store import LedgerStore

TS = 1_767_225_600


class Entries:
    """Real signed receipts, made on demand: entry ``i`` is job ``job-{i:09d}``."""

    def __init__(self) -> None:
        self.enclave = SigningKey.generate()

    def make(self, i: int) -> tuple[str, bytes]:
        receipt, signature = build_receipt(
            self.enclave,
            kind="predict",
            job=f"job-{i:09d}",
            request_id=f"req-{i:09d}",
            model_id="m-credit-scoring",
            model_sha256=hashlib.sha256(b"model").hexdigest(),
            model_blob_sha256=hashlib.sha256(b"blob").hexdigest(),
            request=b"sealed request %d" % i,
            response=b"sealed response %d" % i,
            client="acct-0001",
            rows=1 + i % 100,
            measurement=hashlib.sha384(b"enclave").hexdigest(),
            tee="simulated",
            issued_at=TS + i,
        )
        return receipt["job"], receipt_entry(receipt, signature)

    def batch(self, start: int, stop: int) -> list[tuple[str, bytes]]:
        return [self.make(i) for i in range(start, stop)]


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def median_us(samples: list[float]) -> float:
    return statistics.median(samples) * 1e6


def sqlite_pragmas(con: sqlite3.Connection) -> None:
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=FULL")


class PlainBaselines:
    """The same rows into plain tables without a tree: raw sqlite3 and SQLAlchemy Core."""

    def __init__(self, folder: Path) -> None:
        self.raw = sqlite3.connect(folder / "plain.db", isolation_level=None)
        sqlite_pragmas(self.raw)
        self.raw.execute(
            "CREATE TABLE plain (idx INTEGER PRIMARY KEY, entry_id TEXT UNIQUE NOT NULL, entry BLOB NOT NULL)"
        )
        self.engine = create_engine(f"sqlite:///{folder / 'plain_sa.db'}")
        event.listen(self.engine, "connect", lambda con, _rec: sqlite_pragmas(con))
        meta = MetaData()
        self.table = Table(
            "plain",
            meta,
            Column("idx", Integer, primary_key=True, autoincrement=False),
            Column("entry_id", String(255), unique=True, nullable=False),
            Column("entry", LargeBinary, nullable=False),
        )
        meta.create_all(self.engine)
        self.size = 0

    def raw_batch(self, rows: list[tuple[str, bytes]]) -> None:
        self.raw.execute("BEGIN")
        self.raw.executemany(
            "INSERT INTO plain (idx, entry_id, entry) VALUES (?, ?, ?)",
            [(self.size + k, entry_id, entry) for k, (entry_id, entry) in enumerate(rows)],
        )
        self.raw.execute("COMMIT")

    def sa_batch(self, rows: list[tuple[str, bytes]]) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                insert(self.table),
                [{"idx": self.size + k, "entry_id": e, "entry": b} for k, (e, b) in enumerate(rows)],
            )

    def advance(self, count: int) -> None:
        self.size += count

    def raw_single(self, entry_id: str, entry: bytes) -> None:
        self.raw.execute("BEGIN")
        self.raw.execute(
            "INSERT INTO plain (idx, entry_id, entry) VALUES (?, ?, ?)", (self.size, entry_id, entry)
        )
        self.raw.execute("COMMIT")
        self.size += 1

    def sa_single(self, entry_id: str, entry: bytes) -> None:
        with self.engine.begin() as conn:
            conn.execute(insert(self.table).values(idx=self.size, entry_id=entry_id, entry=entry))
        self.size += 1

    def close(self) -> None:
        self.raw.close()
        self.engine.dispose()


def grow(
    store: LedgerStore,
    plain: PlainBaselines,
    entries: Entries,
    target: int,
    batch: int,
    totals: dict[str, float],
) -> None:
    """Bring the log (and the plain baseline) to ``target`` entries in batches, timing only the writes."""
    while store.size() < target:
        start = store.size()
        rows = entries.batch(start, min(start + batch, target))
        totals["ledger"] += timed(lambda rows=rows: store.append_many(rows))
        plain.size = start
        totals["raw"] += timed(lambda rows=rows: plain.raw_batch(rows))
        totals["sa"] += timed(lambda rows=rows: plain.sa_batch(rows))
        plain.advance(len(rows))
        totals["count"] += len(rows)


def proof_stats(store: LedgerStore, size: int, samples: int, rng: random.Random) -> dict[str, float]:
    head = store.tree_head(size)
    inc_len, inc_gen, inc_ver = [], [], []
    con_len, con_gen, con_ver = [], [], []
    for _ in range(samples):
        index = rng.randrange(size)
        t0 = time.perf_counter()
        proof = store.inclusion_proof(index, size)
        t1 = time.perf_counter()
        leaf = store.get_entry(index).leaf_hash
        t2 = time.perf_counter()
        verify_inclusion(leaf, index, size, proof, head.root_hash)
        t3 = time.perf_counter()
        inc_len.append(len(proof))
        inc_gen.append(t1 - t0)
        inc_ver.append(t3 - t2)

        first = rng.randrange(1, size) if size > 1 else 1
        old_root = store.tree_head(first).root_hash
        t0 = time.perf_counter()
        proof = store.consistency_proof(first, size)
        t1 = time.perf_counter()
        verify_consistency(first, size, old_root, head.root_hash, proof)
        t2 = time.perf_counter()
        con_len.append(len(proof))
        con_gen.append(t1 - t0)
        con_ver.append(t2 - t1)
    return {
        "log2_n": math.log2(size),
        "inclusion_hashes_mean": statistics.fmean(inc_len),
        "inclusion_hashes_max": max(inc_len),
        "inclusion_bytes_mean": 32 * statistics.fmean(inc_len),
        "inclusion_gen_us": median_us(inc_gen),
        "inclusion_verify_us": median_us(inc_ver),
        "consistency_hashes_mean": statistics.fmean(con_len),
        "consistency_hashes_max": max(con_len),
        "consistency_bytes_mean": 32 * statistics.fmean(con_len),
        "consistency_gen_us": median_us(con_gen),
        "consistency_verify_us": median_us(con_ver),
    }


def single_appends(
    store: LedgerStore, plain: PlainBaselines, entries: Entries, count: int
) -> dict[str, float]:
    start = store.size()
    rows = entries.batch(start, start + count)
    ledger = timed(lambda: [store.append(e, b) for e, b in rows])
    plain.size = start
    raw = timed(lambda: [plain.raw_single(e, b) for e, b in rows])
    plain.size = start
    sa = timed(lambda: [plain.sa_single(e, b) for e, b in rows])
    return {"ledger_per_s": count / ledger, "raw_per_s": count / raw, "sa_per_s": count / sa}


def micro(entries: Entries, repeat: int) -> dict[str, float]:
    _, entry = entries.make(0)
    key = SigningKey.generate()
    root = hashlib.sha256(b"root").digest()
    sth = sign_tree_head(key, 10**6, root, TS * 1000)

    def each(fn: Callable[[], object]) -> float:
        runs = []
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(repeat):
                fn()
            runs.append((time.perf_counter() - t0) / repeat)
        return min(runs) * 1e6

    return {
        "entry_bytes": len(entry),
        "sha256_entry_us": each(lambda: hashlib.sha256(entry).digest()),
        "leaf_hash_us": each(lambda: leaf_hash(entry)),
        "sth_sign_us": each(lambda: sign_tree_head(key, 10**6, root, TS * 1000)),
        "sth_verify_us": each(lambda: sth.verify(key.public_bytes)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000,100000,1000000", help="comma-separated log sizes")
    parser.add_argument("--batch", type=int, default=10_000, help="entries per append_many batch")
    parser.add_argument("--singles", type=int, default=300, help="single appends measured per size")
    parser.add_argument("--samples", type=int, default=300, help="proofs generated and verified per size")
    parser.add_argument("--no-audit", action="store_true", help="skip the verify_log() timing")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    sizes = sorted({int(s) for s in args.sizes.split(",") if s.strip()})
    if not sizes or sizes[0] < 2:
        parser.error("sizes must be integers >= 2")

    entries = Entries()
    rng = random.Random(9162)
    results: dict[str, object] = {
        "python": sys.version.split()[0],
        "sqlite": sqlite3.sqlite_version,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "micro": micro(entries, 2000),
        "sizes": [],
    }
    with tempfile.TemporaryDirectory(prefix="sealedml-ledger-bench-") as tmp:
        folder = Path(tmp)
        store = LedgerStore(f"sqlite:///{folder / 'ledger.db'}")
        plain = PlainBaselines(folder)
        totals = {"ledger": 0.0, "raw": 0.0, "sa": 0.0, "count": 0}
        wall = time.perf_counter()
        for size in sizes:
            before = dict(totals)
            grow(store, plain, entries, size, args.batch, totals)
            grown = totals["count"] - before["count"]
            row: dict[str, float] = {"n": size}
            if grown:
                row["batched_per_s"] = grown / (totals["ledger"] - before["ledger"])
                row["raw_batched_per_s"] = grown / (totals["raw"] - before["raw"])
                row["sa_batched_per_s"] = grown / (totals["sa"] - before["sa"])
            row.update(proof_stats(store, size, args.samples, rng))
            if not args.no_audit:
                row["verify_log_s"] = timed(store.verify_log)
            singles = single_appends(store, plain, entries, args.singles)
            row.update({f"single_{k}": v for k, v in singles.items()})
            with store.engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
            db_bytes = (folder / "ledger.db").stat().st_size
            row["db_bytes_per_entry"] = db_bytes / store.size()
            results["sizes"].append(row)  # type: ignore[union-attr]
            print(
                f"  n={size:>9,}: done ({time.perf_counter() - wall:.0f} s so far)",
                file=sys.stderr,
                flush=True,
            )
        store.dispose()
        plain.close()
    report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


def proof_columns(r: dict, kind: str) -> str:
    return (
        f"{r[kind + '_hashes_mean']:>5.1f} {r[kind + '_hashes_max']:>4} {r[kind + '_bytes_mean']:>6.0f} "
        f"{r[kind + '_gen_us']:>7.0f} {r[kind + '_verify_us']:>9.1f}"
    )


def report(results: dict) -> None:
    m = results["micro"]
    print(
        f"\nSealedML transparency log (RFC 9162) - Python {results['python']}, SQLite {results['sqlite']}, "
        f"{results['machine']}"
    )
    print(f"entry: a signed receipt, {m['entry_bytes']} bytes of canonical JSON\n")
    print("Per-operation costs (best of 5)")
    print(f"  SHA-256 of the entry alone     {m['sha256_entry_us']:8.2f} us")
    print(f"  RFC 9162 leaf hash             {m['leaf_hash_us']:8.2f} us")
    print(f"  sign a tree head (Ed25519)     {m['sth_sign_us']:8.2f} us")
    print(f"  verify a tree head             {m['sth_verify_us']:8.2f} us\n")

    rows = results["sizes"]
    print("Appends per second (SQLite WAL, synchronous=FULL; 'plain' = same rows, no tree)")
    header = (
        f"{'n':>10} | {'ledger batch':>12} {'plain SA':>10} {'plain raw':>10} {'ratio':>6} | "
        f"{'ledger single':>13} {'plain SA':>9} {'plain raw':>9} {'ratio':>6}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        batch = (
            f"{r['batched_per_s']:>12,.0f} {r['sa_batched_per_s']:>10,.0f} {r['raw_batched_per_s']:>10,.0f} "
            f"{r['batched_per_s'] / r['raw_batched_per_s']:>6.2f}"
            if "batched_per_s" in r
            else f"{'-':>12} {'-':>10} {'-':>10} {'-':>6}"
        )
        print(
            f"{r['n']:>10,} | {batch} | {r['single_ledger_per_s']:>13,.0f} {r['single_sa_per_s']:>9,.0f} "
            f"{r['single_raw_per_s']:>9,.0f} {r['single_ledger_per_s'] / r['single_raw_per_s']:>6.2f}"
        )
    print("  ratio = ledger / plain raw sqlite3 (1.00 = no cost for the tree)\n")

    print("Proofs (mean over random indexes; size in hashes of 32 bytes; times are medians)")
    header = (
        f"{'n':>10} {'log2(n)':>7} | {'incl':>5} {'max':>4} {'bytes':>6} {'gen us':>7} {'verify us':>9} | "
        f"{'cons':>5} {'max':>4} {'bytes':>6} {'gen us':>7} {'verify us':>9} | {'audit s':>8} {'B/entry':>8}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        audit = f"{r['verify_log_s']:>8.2f}" if "verify_log_s" in r else f"{'-':>8}"
        inclusion, consistency = proof_columns(r, "inclusion"), proof_columns(r, "consistency")
        print(
            f"{r['n']:>10,} {r['log2_n']:>7.2f} | {inclusion} | {consistency} | {audit} "
            f"{r['db_bytes_per_entry']:>8.0f}"
        )
    print("  incl/cons = proof length in hashes (32 bytes each): an RFC 9162 inclusion proof has at most")
    print("  ceil(log2 n) hashes, a consistency proof at most ceil(log2 n) + 1; 'audit' = verify_log() s;")
    print("  B/entry = database file size per entry (after a WAL checkpoint), tree hashes included")


if __name__ == "__main__":
    raise SystemExit(main())
