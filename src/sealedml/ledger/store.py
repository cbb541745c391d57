"""The persistent, append-only Merkle log: entries and complete-subtree hashes in SQL (SQLAlchemy Core).

Three tables, on their own ``MetaData`` so they can live in the platform's database or in a file of
their own (SQLite by default, PostgreSQL or any SQLAlchemy dialect by URL):

* ``ledger_entries``: ``idx`` (leaf index, from 0), ``entry_id`` (unique: the same receipt cannot be
  logged twice), ``leaf_hash`` (``SHA-256(0x00 || entry)``) and ``entry`` (the logged bytes);
* ``ledger_nodes``: ``(level, idx) -> hash`` for every *complete* subtree of level >= 1, written once,
  in the same transaction as the entry that completes it (level 0 is ``ledger_entries.leaf_hash``);
* ``ledger_meta``: which log (key) the data belongs to.

An append reads the O(log n) "frontier" nodes, writes the entry and the nodes it completes, and
commits: all or nothing. A proof reads O(log n) nodes in two queries. Appends are serialised by a
lock inside the process; across processes the primary keys make a racing append fail, and it is
retried. :meth:`LedgerStore.verify_log` recomputes every hash from the stored entry bytes.

The store holds no key and signs nothing: :class:`sealedml.ledger.log.TransparencyLog` does.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Engine,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Table,
    and_,
    create_engine,
    event,
    func,
    insert,
    or_,
    select,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.pool import StaticPool

from sealedml.errors import ConfigError, LedgerError
from sealedml.ledger.merkle import (
    EMPTY_ROOT,
    HASH_SIZE,
    NodeId,
    consistency_proof,
    frontier_nodes,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root_from_nodes,
)
from sealedml.ledger.sth import TreeHead

__all__ = ["MAX_ENTRY_BYTES", "MAX_ENTRY_ID_LENGTH", "AppendResult", "LedgerStore", "LogEntry", "metadata"]

MAX_ENTRY_BYTES = 1 << 20
MAX_ENTRY_ID_LENGTH = 255
_CHUNK = 4096  # rows per INSERT batch and per audit query
_RETRIES = 5
_LOCK_ROW = "append_lock"

metadata = MetaData()
"""The ledger's own schema; ``metadata.create_all(engine)`` is what :class:`LedgerStore` runs."""

# INTEGER PRIMARY KEY makes SQLite use the rowid (64-bit there); other dialects get BIGINT.
_Index = BigInteger().with_variant(Integer(), "sqlite")

entries_table = Table(
    "ledger_entries",
    metadata,
    Column("idx", _Index, primary_key=True, autoincrement=False),
    Column("entry_id", String(MAX_ENTRY_ID_LENGTH), nullable=False, unique=True),
    Column("leaf_hash", LargeBinary(HASH_SIZE), nullable=False),
    Column("entry", LargeBinary, nullable=False),
)

nodes_table = Table(
    "ledger_nodes",
    metadata,
    Column("level", SmallInteger, primary_key=True, autoincrement=False),
    Column("idx", BigInteger, primary_key=True, autoincrement=False),
    Column("hash", LargeBinary(HASH_SIZE), nullable=False),
    sqlite_with_rowid=False,
)

meta_table = Table(
    "ledger_meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", String(255), nullable=False),
)


@dataclass(frozen=True)
class LogEntry:
    """One stored entry: its leaf index, id, leaf hash and bytes, exactly as the store returned them."""

    index: int
    entry_id: str
    leaf_hash: bytes
    entry: bytes


@dataclass(frozen=True)
class AppendResult:
    """What an append did: entries ``first_index .. first_index + count - 1`` and the head after it.

    Guarantees: ``head`` is the tree head whose size is exactly ``first_index + count``, computed in
    the same transaction, so it includes these entries and nothing appended later.
    """

    first_index: int
    count: int
    head: TreeHead

    @property
    def indexes(self) -> range:
        """The leaf indexes given to the appended entries."""
        return range(self.first_index, self.first_index + self.count)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        # FULL, not NORMAL: a tree head the log signed must never outlive the entries it covers.
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA busy_timeout=10000")
    finally:
        cursor.close()


def _make_engine(url: str) -> tuple[Engine, bool]:
    """Return an engine for ``url`` and whether it is a private in-memory SQLite database."""
    try:
        parsed = make_url(url)
    except SQLAlchemyError as exc:
        raise ConfigError("config.invalid", f"ledger database URL is not valid: {exc}") from exc
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True), False
    memory = parsed.database in (None, "", ":memory:")
    if memory:
        engine = create_engine(url, connect_args={"check_same_thread": False}, poolclass=StaticPool)
    else:
        Path(str(parsed.database)).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine, memory


@contextmanager
def _storage_errors(action: str) -> Iterator[None]:
    try:
        yield
    except SQLAlchemyError as exc:
        raise LedgerError(
            "ledger.storage_unavailable",
            f"ledger database failed while {action}: {type(exc).__name__}",
            status=503,
        ) from exc


def _check_entry(entry_id: object, entry: object) -> tuple[str, bytes]:
    if not isinstance(entry_id, str) or not 0 < len(entry_id) <= MAX_ENTRY_ID_LENGTH:
        raise LedgerError(
            "ledger.malformed", f"entry id must be a string of 1 to {MAX_ENTRY_ID_LENGTH} characters"
        )
    if not isinstance(entry, bytes):
        raise LedgerError("ledger.malformed", f"entry must be bytes, got {type(entry).__name__}")
    if len(entry) > MAX_ENTRY_BYTES:
        raise LedgerError(
            "ledger.malformed", f"entry {entry_id!r} is {len(entry)} bytes; the limit is {MAX_ENTRY_BYTES}"
        )
    return entry_id, entry


def _duplicate(entry_id: str, index: int | None) -> LedgerError:
    where = f" at index {index}" if index is not None else " twice in this batch"
    return LedgerError(
        "ledger.duplicate_entry",
        f"entry id {entry_id!r} is already in the log{where}; nothing was appended",
        status=409,
    )


class _Reader:
    """A :class:`~sealedml.ledger.merkle.NodeReader` over one connection."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def read_nodes(self, ids: Sequence[NodeId]) -> Mapping[NodeId, bytes]:
        out: dict[NodeId, bytes] = {}
        leaves = sorted({index for level, index in ids if level == 0})
        if leaves:
            e = entries_table.c
            for index, value in self.conn.execute(select(e.idx, e.leaf_hash).where(e.idx.in_(leaves))).all():
                out[(0, index)] = bytes(value)
        by_level: dict[int, set[int]] = {}
        for level, index in ids:
            if level > 0:
                by_level.setdefault(level, set()).add(index)
        if by_level:
            n = nodes_table.c
            where = or_(*(and_(n.level == lvl, n.idx.in_(sorted(idx))) for lvl, idx in by_level.items()))
            for level, index, value in self.conn.execute(select(n.level, n.idx, n.hash).where(where)).all():
                out[(level, index)] = bytes(value)
        return out


class LedgerStore:
    """A persistent RFC 9162 Merkle log over SQLAlchemy.

    Guarantees: entries are only ever appended, each with a unique id; an append commits the entry and
    every subtree hash it completes together or not at all; proofs and heads cost O(log n) reads; the
    schema is created if missing. Safe to share between threads (appends are serialised).

    ``database`` is a URL (``sqlite:///path/ledger.db``, ``postgresql+psycopg://...``) or an existing
    :class:`~sqlalchemy.Engine`, which is used as it is (its pragmas and pool are the caller's).
    """

    def __init__(self, database: str | Engine) -> None:
        if isinstance(database, Engine):
            self.engine, memory, self._owns_engine = database, False, False
        elif isinstance(database, str):
            self.engine, memory = _make_engine(database)
            self._owns_engine = True
        else:
            raise ConfigError("config.invalid", "ledger database must be a URL or a SQLAlchemy Engine")
        self._lock = threading.RLock()
        # (size, frontier) after this process's last committed append; re-read when the size differs.
        self._frontier: tuple[int, list[tuple[int, bytes]]] | None = None
        # One shared connection (in-memory SQLite) cannot run two threads' statements interleaved.
        self._read_lock: AbstractContextManager[object] = self._lock if memory else nullcontext()
        with _storage_errors("creating the ledger tables"):
            metadata.create_all(self.engine)
            self._ensure_lock_row()

    def _ensure_lock_row(self) -> None:
        """Create the metadata row that appends lock on dialects with row locks (see _lock_for_append)."""
        try:
            with self.engine.begin() as conn:
                query = select(meta_table.c.key).where(meta_table.c.key == _LOCK_ROW)
                if conn.execute(query).first() is None:
                    conn.execute(insert(meta_table).values(key=_LOCK_ROW, value="1"))
        except IntegrityError:
            pass  # another process created it first

    # -- reading -------------------------------------------------------------------------------------

    @contextmanager
    def _reading(self, action: str) -> Iterator[Connection]:
        with self._read_lock, _storage_errors(action), self.engine.connect() as conn:
            yield conn

    @staticmethod
    def _size(conn: Connection) -> int:
        top = conn.execute(select(func.max(entries_table.c.idx))).scalar()
        return 0 if top is None else int(top) + 1

    def size(self) -> int:
        """Return the number of entries in the log."""
        with self._reading("reading the tree size") as conn:
            return self._size(conn)

    def _bounded(self, conn: Connection, size: int | None) -> int:
        current = self._size(conn)
        if size is None:
            return current
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise LedgerError("ledger.malformed", f"tree size must be a non-negative integer, got {size!r}")
        if size > current:
            raise LedgerError(
                "ledger.index_out_of_range",
                f"tree size {size} is beyond the log's {current} entries",
                status=404,
            )
        return size

    def tree_head(self, size: int | None = None) -> TreeHead:
        """Return the (unsigned) head of the first ``size`` entries, by default of the whole log."""
        with self._reading("computing the tree head") as conn:
            size = self._bounded(conn, size)
            return TreeHead(size, root_from_nodes(size, _Reader(conn)))

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """Return the RFC 9162 inclusion proof of entry ``index`` in the first ``size`` entries.

        Raises ``ledger.index_out_of_range`` if ``index`` or ``size`` is not in the log.
        """
        with self._reading("building an inclusion proof") as conn:
            size = self._bounded(conn, size)
            return inclusion_proof(index, size, _Reader(conn))

    def consistency_proof(self, first: int, second: int | None = None) -> list[bytes]:
        """Return the RFC 9162 consistency proof from the first ``first`` to the first ``second`` entries.

        Raises ``ledger.index_out_of_range`` unless ``0 <= first <= second <= size``.
        """
        with self._reading("building a consistency proof") as conn:
            second = self._bounded(conn, second)
            return consistency_proof(first, second, _Reader(conn))

    @staticmethod
    def _row(row: Any) -> LogEntry:
        return LogEntry(int(row.idx), str(row.entry_id), bytes(row.leaf_hash), bytes(row.entry))

    def get_entry(self, index: int) -> LogEntry:
        """Return entry ``index``; raises ``ledger.index_out_of_range`` if the log has no such entry."""
        if isinstance(index, bool) or not isinstance(index, int):
            raise LedgerError("ledger.malformed", f"entry index must be an integer, got {index!r}")
        with self._reading("reading an entry") as conn:
            row = conn.execute(select(entries_table).where(entries_table.c.idx == index)).first()
        if row is None:
            raise LedgerError("ledger.index_out_of_range", f"the log has no entry {index}", status=404)
        return self._row(row)

    def get_entries(self, start: int, stop: int) -> list[LogEntry]:
        """Return the stored entries with ``start <= index < stop`` (at most 4096), in index order."""
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (start, stop)):
            raise LedgerError("ledger.malformed", "entry range bounds must be integers")
        stop = min(stop, start + _CHUNK)
        e = entries_table.c
        with self._reading("reading entries") as conn:
            rows = conn.execute(
                select(entries_table).where(e.idx >= start, e.idx < stop).order_by(e.idx)
            ).all()
        return [self._row(row) for row in rows]

    def find_by_id(self, entry_id: str) -> LogEntry | None:
        """Return the entry logged under ``entry_id``, or None if there is none."""
        if not isinstance(entry_id, str):
            raise LedgerError("ledger.malformed", "entry id must be a string")
        with self._reading("looking up an entry") as conn:
            row = conn.execute(select(entries_table).where(entries_table.c.entry_id == entry_id)).first()
        return None if row is None else self._row(row)

    def existing_ids(self, entry_ids: Iterable[str], *, chunk: int = 500) -> set[str]:
        """Return which of ``entry_ids`` are logged (a few queries, not one per id)."""
        wanted = [entry_id for entry_id in entry_ids if isinstance(entry_id, str)]
        found: set[str] = set()
        with self._reading("looking up entry ids") as conn:
            for start in range(0, len(wanted), chunk):
                part = wanted[start : start + chunk]
                found.update(
                    conn.scalars(select(entries_table.c.entry_id).where(entries_table.c.entry_id.in_(part)))
                )
        return found

    def get_meta(self, key: str) -> str | None:
        """Return the metadata value stored under ``key`` (e.g. ``log_id``), or None."""
        with self._reading("reading ledger metadata") as conn:
            return conn.execute(select(meta_table.c.value).where(meta_table.c.key == key)).scalar()

    def bind_log_id(self, log_id: str) -> None:
        """Record that this database belongs to log ``log_id``; raise if it belongs to another log.

        Guarantees: once bound, a database is never served under a second log key (which would make
        every earlier tree head unverifiable). Raises ``config.invalid`` on a mismatch.
        """
        with self._lock, _storage_errors("binding the log id"), self.engine.begin() as conn:
            stored = conn.execute(select(meta_table.c.value).where(meta_table.c.key == "log_id")).scalar()
            if stored is None:
                conn.execute(insert(meta_table).values(key="log_id", value=log_id))
            elif stored != log_id:
                raise ConfigError(
                    "config.invalid",
                    f"this ledger database belongs to log {stored}, but the signing key is log {log_id}: "
                    "use the log's own key, or a new database for a new log",
                )

    # -- appending -----------------------------------------------------------------------------------

    def append(self, entry_id: str, entry: bytes) -> AppendResult:
        """Append one entry and return its index and the new tree head.

        Raises ``ledger.duplicate_entry`` (and changes nothing) if ``entry_id`` is already logged, and
        ``ledger.malformed`` for a bad id or oversized entry.
        """
        return self.append_many([(entry_id, entry)])

    def append_many(self, items: Iterable[tuple[str, bytes]]) -> AppendResult:
        """Append entries in order, atomically: all of them get consecutive indexes, or none is stored.

        Raises ``ledger.duplicate_entry`` if any id is already logged or repeats within ``items``.
        """
        batch: list[tuple[str, bytes]] = []
        for item in items:
            if not isinstance(item, (tuple, list)) or len(item) != 2:
                raise LedgerError("ledger.malformed", "each item to append must be an (entry_id, entry) pair")
            batch.append(_check_entry(item[0], item[1]))
        seen: set[str] = set()
        for entry_id, _ in batch:
            if entry_id in seen:
                raise _duplicate(entry_id, None)
            seen.add(entry_id)
        with self._lock:
            for _attempt in range(_RETRIES):
                try:
                    with _storage_errors("appending"), self.engine.begin() as conn:
                        self._lock_for_append(conn)
                        result, stack = self._append_locked(conn, batch)
                except LedgerError as exc:
                    self._frontier = None
                    if not isinstance(exc.__cause__, IntegrityError):
                        raise
                except BaseException:
                    self._frontier = None
                    raise
                else:
                    self._frontier = (result.head.tree_size, stack)  # committed: reuse it next time
                    return result
                # A duplicate id, or another process appended at the same index: retry unless a dup.
                self._raise_if_logged(batch)
        raise LedgerError(
            "ledger.append_conflict",
            f"gave up appending after {_RETRIES} conflicting concurrent appends; retry later",
            status=503,
        )

    @staticmethod
    def _lock_for_append(conn: Connection) -> None:
        """Make this transaction the only appender across processes until it ends.

        SQLite: ``BEGIN IMMEDIATE`` takes the database write lock before the size is read (the
        driver would otherwise start the transaction only at the first INSERT). Other dialects: a
        row lock on the ``append_lock`` metadata row. The primary keys remain the last guard.
        """
        if conn.dialect.name == "sqlite":
            raw = conn.connection.dbapi_connection
            if raw is not None and not getattr(raw, "in_transaction", True):
                conn.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            conn.execute(select(meta_table.c.value).where(meta_table.c.key == _LOCK_ROW).with_for_update())

    def _raise_if_logged(self, batch: list[tuple[str, bytes]]) -> None:
        e = entries_table.c
        with self._reading("checking for duplicates") as conn:
            for start in range(0, len(batch), _CHUNK):
                ids = [entry_id for entry_id, _ in batch[start : start + _CHUNK]]
                hit = conn.execute(select(e.entry_id, e.idx).where(e.entry_id.in_(ids)).limit(1)).first()
                if hit is not None:
                    raise _duplicate(str(hit.entry_id), int(hit.idx))

    def _read_frontier(self, conn: Connection, size: int) -> list[tuple[int, bytes]]:
        """``(level, hash)`` of the complete subtrees of the tree of ``size`` entries, largest first."""
        if self._frontier is not None and self._frontier[0] == size:
            return list(self._frontier[1])  # this process wrote the last append: no need to read
        frontier = frontier_nodes(size)
        stored = _Reader(conn).read_nodes(frontier)
        missing = [node for node in frontier if node not in stored]
        if missing:
            raise LedgerError(
                "ledger.node_missing",
                f"cannot append: the subtree hashes {missing} of the current tree are missing "
                "(the log is corrupt; run verify_log())",
                status=500,
            )
        return [(level, stored[(level, index)]) for level, index in frontier]

    def _append_locked(
        self, conn: Connection, batch: list[tuple[str, bytes]]
    ) -> tuple[AppendResult, list[tuple[int, bytes]]]:
        first = self._size(conn)
        stack = self._read_frontier(conn, first)
        size = first
        # An id already logged makes an INSERT fail on the unique constraint; the caller rolls back and
        # reports which id it was.
        for start in range(0, len(batch), _CHUNK):
            chunk = batch[start : start + _CHUNK]
            entry_rows: list[dict[str, Any]] = []
            node_rows: list[dict[str, Any]] = []
            for entry_id, entry in chunk:
                current = leaf_hash(entry)
                entry_rows.append({"idx": size, "entry_id": entry_id, "leaf_hash": current, "entry": entry})
                level, index = 0, size
                while stack and stack[-1][0] == level:
                    current = node_hash(stack.pop()[1], current)
                    level, index = level + 1, index >> 1
                    node_rows.append({"level": level, "idx": index, "hash": current})
                stack.append((level, current))
                size += 1
            conn.execute(insert(entries_table), entry_rows)
            if node_rows:
                conn.execute(insert(nodes_table), node_rows)
        if not stack:
            return AppendResult(first, 0, TreeHead(0, EMPTY_ROOT)), stack
        root = stack[-1][1]
        for _level, left in reversed(stack[:-1]):
            root = node_hash(left, root)
        return AppendResult(first, size - first, TreeHead(size, root)), stack

    # -- auditing ------------------------------------------------------------------------------------

    def verify_log(self, heads: Iterable[TreeHead] = ()) -> TreeHead:
        """Recompute every hash from the stored entry bytes and return the verified head of the log.

        Guarantees, when it returns: indexes are contiguous from 0; every leaf hash is the hash of its
        entry's bytes; every stored subtree hash equals the one recomputed from its children, none is
        missing and none lies beyond the tree; and each of ``heads`` (tree heads the log issued
        earlier) is the root of a prefix of this log, so the log only grew. Raises
        ``ledger.audit_failed`` naming the first problem found otherwise. Appends may go on meanwhile
        (from any process): the audit covers the entries present when it started.
        """
        heads = list(heads)
        with self._reading("auditing the log") as conn:
            size = self._size(conn)
            self._audit_entries(conn, size)
            for level in range(1, size.bit_length()):
                self._audit_level(conn, size, level)
            self._audit_strays(conn)
            reader = _Reader(conn)
            head = TreeHead(size, root_from_nodes(size, reader))
            for earlier in heads:
                if earlier.tree_size > size:
                    raise LedgerError(
                        "ledger.audit_failed",
                        f"the log issued a head of {earlier.tree_size} entries but now holds {size}: "
                        "entries were removed",
                        status=500,
                    )
                root = root_from_nodes(earlier.tree_size, reader)
                if root != earlier.root_hash:
                    raise LedgerError(
                        "ledger.audit_failed",
                        f"the first {earlier.tree_size} entries now hash to {root.hex()}, but the log "
                        f"issued root {earlier.root_hash.hex()} for them: history was rewritten",
                        status=500,
                    )
        return head

    @staticmethod
    def _audit_failed(message: str) -> LedgerError:
        return LedgerError("ledger.audit_failed", message, status=500)

    def _audit_entries(self, conn: Connection, size: int) -> None:
        e = entries_table.c
        expected = 0
        for start in range(0, size, _CHUNK):
            rows = conn.execute(
                select(e.idx, e.entry_id, e.leaf_hash, e.entry)
                .where(e.idx >= start, e.idx < start + _CHUNK)
                .order_by(e.idx)
            ).all()  # fully read: a half-read cursor would pin SQLite's read snapshot after a raise
            for row in rows:
                if row.idx != expected:
                    raise self._audit_failed(
                        f"entry {expected} is missing (the next stored index is {row.idx})"
                    )
                if leaf_hash(bytes(row.entry)) != bytes(row.leaf_hash):
                    raise self._audit_failed(
                        f"entry {row.idx} ({row.entry_id!r}): its stored bytes do not hash to its leaf hash"
                    )
                expected += 1
            if expected != min(start + _CHUNK, size):
                raise self._audit_failed(f"entry {expected} is missing")
        below = conn.execute(select(func.count()).select_from(entries_table).where(e.idx < 0)).scalar()
        if below:
            raise self._audit_failed(f"{below} entries have a negative index")

    def _audit_level(self, conn: Connection, size: int, level: int) -> None:
        count = size >> level
        for start in range(0, count, _CHUNK):
            stop = min(start + _CHUNK, count)
            children = self._hashes(conn, level - 1, 2 * start, 2 * stop)
            parents = self._hashes(conn, level, start, stop)
            for offset in range(stop - start):
                index = start + offset
                if parents[offset] != node_hash(children[2 * offset], children[2 * offset + 1]):
                    raise self._audit_failed(
                        f"subtree hash ({level}, {index}) does not match its children "
                        f"({level - 1}, {2 * index}) and ({level - 1}, {2 * index + 1})"
                    )

    @staticmethod
    def _hashes(conn: Connection, level: int, start: int, stop: int) -> list[bytes]:
        """Stored hashes of ``level`` for indexes ``start..stop-1``, raising if any is missing."""
        if level == 0:
            c = entries_table.c
            query = select(c.idx, c.leaf_hash).where(c.idx >= start, c.idx < stop)
        else:
            n = nodes_table.c
            query = select(n.idx, n.hash).where(n.level == level, n.idx >= start, n.idx < stop)
        out: list[bytes] = []
        for index, value in conn.execute(query.order_by(query.selected_columns[0])).all():
            if index != start + len(out):
                raise LedgerError(
                    "ledger.audit_failed",
                    f"subtree hash ({level}, {start + len(out)}) is missing",
                    status=500,
                )
            out.append(bytes(value))
        if len(out) != stop - start:
            raise LedgerError(
                "ledger.audit_failed", f"subtree hash ({level}, {start + len(out)}) is missing", status=500
            )
        return out

    def _audit_strays(self, conn: Connection) -> None:
        # Re-read the size: entries appended by another process during the audit are not strays.
        size = self._size(conn)
        n = nodes_table.c
        beyond = [and_(n.level == lvl, n.idx >= size >> lvl) for lvl in range(1, max(size.bit_length(), 1))]
        stray = or_(n.level < 1, n.level >= max(size.bit_length(), 1), n.idx < 0, *beyond)
        found = conn.execute(select(n.level, n.idx).where(stray).limit(1)).first()
        if found is not None:
            raise self._audit_failed(
                f"a subtree hash ({found.level}, {found.idx}) is stored that no complete subtree of the "
                f"{size}-entry log has"
            )

    def dispose(self) -> None:
        """Close pooled connections if this store created its engine (a given engine is the caller's)."""
        if self._owns_engine:
            self.engine.dispose()
