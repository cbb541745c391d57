"""The platform's catalog: accounts, models, datasets, jobs and usage, in SQLAlchemy 2.0 ORM.

Everything stored here is public metadata or ciphertext: names, digests, sizes, opaque sealed
keys and dataset states, job specs, signed receipts. The schema is dialect-neutral (SQLite by
default, PostgreSQL by URL); only the connection setup differs. Sessions are synchronous; the API
calls them from worker threads. A database made before training jobs existed is upgraded in place
when it is opened (:func:`upgrade_schema`).
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Engine,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    inspect,
    text,
)
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

log = logging.getLogger(__name__)

ROLES = ("admin", "provider", "data_owner")
MODEL_STATUSES = ("created", "uploaded", "ready")
JOB_KINDS = ("predict", "train", "he-predict")
MODEL_MODES = ("tee", "he")
"""``tee``: encrypted ONNX run inside the attested enclave; ``he``: weights the host evaluates on the
client's CKKS ciphertexts (encrypted-ML mode, :mod:`sealedml.platform.he_service`)."""
JOB_STATUSES = ("awaiting_approval", "queued", "running", "done", "failed", "cancelled")
"""Predictions are recorded ``done``; training jobs move awaiting_approval → queued → running →
done or failed (or cancelled by their submitter before they run)."""
FINAL_JOB_STATUSES = ("done", "failed", "cancelled")
DATASET_STATUSES = ("created", "uploaded", "ready")
CHARGE_STATUSES = ("held", "settled", "refunded")


def new_id() -> str:
    """Return a fresh random identifier (UUID4, 32 hex characters)."""
    return uuid.uuid4().hex


def utcnow() -> datetime:
    """Return the current time, timezone-aware, in UTC."""
    return datetime.now(UTC)


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Base(DeclarativeBase):
    """Declarative base of every platform table."""

    type_annotation_map = {datetime: DateTime(timezone=True)}  # noqa: RUF012


class Account(Base):
    """A tenant: only the SHA-256 of its bearer token is stored."""

    __tablename__ = "accounts"
    __table_args__ = (
        CheckConstraint(_in("role", ROLES), name="ck_accounts_role"),
        CheckConstraint("balance >= 0", name="ck_accounts_balance"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    balance: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Model(Base):
    """A published model: public description plus pointers to its ciphertext."""

    __tablename__ = "models"
    __table_args__ = (
        CheckConstraint(_in("status", MODEL_STATUSES), name="ck_models_status"),
        CheckConstraint("price_per_row >= 0", name="ck_models_price"),
        CheckConstraint(_in("mode", MODEL_MODES), name="ck_models_mode"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    input_columns: Mapped[list[str]] = mapped_column(JSON)
    output_policy: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    status: Mapped[str] = mapped_column(String(16), default="created")
    blob_path: Mapped[str | None] = mapped_column(String(512), nullable=True)
    blob_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    blob_size: Mapped[int | None] = mapped_column(Integer, nullable=True)
    sealed_key: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    model_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    measurement: Mapped[str | None] = mapped_column(String(128), nullable=True)
    version: Mapped[str] = mapped_column(String(32), default="1")
    price_per_row: Mapped[int] = mapped_column(BigInteger, default=0)
    allowed_measurements: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    mode: Mapped[str] = mapped_column(String(8), default="tee", server_default="tee")
    he_preset: Mapped[str | None] = mapped_column(String(32), nullable=True)
    he_model: Mapped[str | None] = mapped_column(Text, nullable=True, deferred=True)
    he_query_budget: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class HEContext(Base):
    """A public CKKS context (evaluation keys, never a secret key) an account uploaded once.

    Identified per account by ``fingerprint`` (SHA-256 of the serialized context); the bytes are a
    blob. Another account naming the same fingerprint does not see this row.
    """

    __tablename__ = "he_contexts"
    __table_args__ = (UniqueConstraint("owner_id", "fingerprint", name="ux_he_contexts_owner_fingerprint"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    fingerprint: Mapped[str] = mapped_column(String(64))
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    blob_path: Mapped[str] = mapped_column(String(512))
    size: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class HEDataset(Base):
    """Encrypted training data (``he-train-data``) of one account, under one of its contexts.

    Only public sizes are stored next to the ciphertext blob: rows and features as the owner declared
    them in the message header.
    """

    __tablename__ = "he_datasets"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    context_id: Mapped[str] = mapped_column(ForeignKey("he_contexts.id"), index=True)
    rows: Mapped[int] = mapped_column(Integer)
    features: Mapped[int] = mapped_column(Integer)
    blob_path: Mapped[str] = mapped_column(String(512))
    blob_sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Job(Base):
    """One job: a finished prediction, or a training job in any state.

    A prediction is recorded when it is done, with its signed receipt and where its response
    envelope is. A training job is recorded when it is submitted (empty receipt and signature, no
    result yet, ``rows`` 0: the host never learns row counts) and moves through the states of
    :data:`JOB_STATUSES`; ``phase``/``progress`` say where it is, ``error_code``/``error_message``
    why it waits or failed. Its training details are in :class:`TrainingJob`.

    ``model_id`` is deliberately not a foreign key: a job's receipt outlives its model.
    """

    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint(_in("status", JOB_STATUSES), name="ck_jobs_status"),
        CheckConstraint(_in("kind", JOB_KINDS), name="ck_jobs_kind"),
        CheckConstraint("progress IS NULL OR (progress >= 0 AND progress <= 100)", name="ck_jobs_progress"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    model_id: Mapped[str] = mapped_column(String(32), index=True)
    request_id: Mapped[str] = mapped_column(String(128), unique=True)
    status: Mapped[str] = mapped_column(String(16))
    rows: Mapped[int] = mapped_column(Integer)
    receipt: Mapped[dict[str, Any]] = mapped_column(JSON)
    signature: Mapped[str] = mapped_column(String(256))
    result_path: Mapped[str] = mapped_column(String(512))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    kind: Mapped[str] = mapped_column(String(16), default="predict", server_default="predict")
    phase: Mapped[str | None] = mapped_column(String(32), nullable=True)
    progress: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    updated_at: Mapped[datetime | None] = mapped_column(nullable=True)


class Dataset(Base):
    """An encrypted training dataset: its ciphertext, its sealed state, its public budget.

    The id is the dataset id the enclave knows. ``sealed_state`` is opaque (sealed by the enclave to
    its platform and measurement); ``generation`` and the epsilon columns mirror the public budget
    the enclave reported last. The schema and row count are never stored: they are inside the
    ciphertext. ``listing_id`` points at the owner's market listing, whose price a job pays.
    """

    __tablename__ = "datasets"
    __table_args__ = (
        CheckConstraint(_in("status", DATASET_STATUSES), name="ck_datasets_status"),
        CheckConstraint("generation >= 0", name="ck_datasets_generation"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[str] = mapped_column(String(16), default="created")
    blob_path: Mapped[str | None] = mapped_column(String(512), nullable=True)
    blob_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    blob_size: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    sealed_state: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    generation: Mapped[int] = mapped_column(Integer, default=0)
    epsilon_total: Mapped[float | None] = mapped_column(Float, nullable=True)
    epsilon_spent: Mapped[float] = mapped_column(Float, default=0.0)
    measurement: Mapped[str | None] = mapped_column(String(128), nullable=True)
    listing_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class TrainingJob(Base):
    """The training side of a ``train`` job: its spec, sealed request and what the enclave returned.

    ``request`` is the submitter's sealed ``train`` envelope (opaque; replaced when the submitter
    refreshes it while approvals are pending). ``grants`` are the model-key grants, each readable
    only by its recipient; ``charge_ids`` the charges held for the datasets' prices.
    """

    __tablename__ = "training_jobs"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), primary_key=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    spec_sha256: Mapped[str] = mapped_column(String(64), index=True)
    request: Mapped[bytes] = mapped_column(LargeBinary)
    publish_model_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    model_blob_path: Mapped[str | None] = mapped_column(String(512), nullable=True)
    model_blob_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    model_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    grants: Mapped[list[dict[str, str]] | None] = mapped_column(JSON, nullable=True)
    phases: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, nullable=True)
    budgets: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, nullable=True)
    charge_ids: Mapped[list[str]] = mapped_column(JSON, default=list)
    started_at: Mapped[datetime | None] = mapped_column(nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(nullable=True)


class JobDataset(Base):
    """One dataset of a training job, its owner, and the owner's approval as the host saw it.

    ``approved_instance`` is the enclave instance that accepted the approval: approvals live in
    enclave memory, so one given to an earlier instance no longer counts.
    """

    __tablename__ = "job_datasets"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), primary_key=True)
    dataset_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    position: Mapped[int] = mapped_column(Integer)
    owner_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    approved_at: Mapped[datetime | None] = mapped_column(nullable=True)
    approved_instance: Mapped[str | None] = mapped_column(String(64), nullable=True)


class ModelUsage(Base):
    """Rows a client has run through a model, as last reported by the enclave."""

    __tablename__ = "model_usage"

    model_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    client_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    rows: Mapped[int] = mapped_column(Integer, default=0)


class Charge(Base):
    """What one job costs: held before the enclave runs, settled with the job, refunded if it fails.

    At most one held or settled charge exists per ``request_id`` (a partial unique index), so a
    retried request is never charged twice, while a request that failed and was refunded may be
    sent again.
    """

    __tablename__ = "charges"
    __table_args__ = (
        CheckConstraint(_in("status", CHARGE_STATUSES), name="ck_charges_status"),
        CheckConstraint("amount >= 0", name="ck_charges_amount"),
        Index(
            "ux_charges_live_request",
            "request_id",
            unique=True,
            sqlite_where=text("status != 'refunded'"),
            postgresql_where=text("status != 'refunded'"),
        ),
    )

    job_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    request_id: Mapped[str] = mapped_column(String(128), index=True)
    payer_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    payee_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    model_id: Mapped[str] = mapped_column(String(32), index=True)
    rows: Mapped[int] = mapped_column(BigInteger)
    amount: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(String(128), nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    closed_at: Mapped[datetime | None] = mapped_column(nullable=True)


class DatasetListing(Base):
    """A dataset offered for training collaborations: its schema and size, never its rows."""

    __tablename__ = "dataset_listings"
    __table_args__ = (CheckConstraint("price >= 0", name="ck_datasets_price"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    columns: Mapped[list[dict[str, str]]] = mapped_column(JSON)
    rows: Mapped[int] = mapped_column(BigInteger)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    price: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class TeeResource(Base):
    """An enclave worker offered as capacity, with the outcome of its last attestation check."""

    __tablename__ = "tee_resources"
    __table_args__ = (CheckConstraint("price_per_hour >= 0", name="ck_resources_price"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    tee: Mapped[str] = mapped_column(String(32))
    simulated: Mapped[bool] = mapped_column(Boolean)
    measurement: Mapped[str] = mapped_column(String(128))
    instance_id: Mapped[str] = mapped_column(String(64))
    price_per_hour: Mapped[int] = mapped_column(BigInteger, default=0)
    passing: Mapped[bool] = mapped_column(Boolean, default=False)
    claims: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    error_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    verified_at: Mapped[datetime | None] = mapped_column(nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=10000")
    finally:
        cursor.close()


class Database:
    """An engine and session factory over one database URL, with the schema created.

    Guarantees: for SQLite the file's folder exists, WAL and ``synchronous=NORMAL`` are on for every
    connection, and connections may be used from any thread; other dialects get defaults.
    """

    def __init__(self, url: str, *, echo: bool = False) -> None:
        parsed = make_url(url)
        connect_args: dict[str, Any] = {}
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        if self.is_sqlite:
            connect_args["check_same_thread"] = False
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        self.engine: Engine = create_engine(
            url, echo=echo, connect_args=connect_args, pool_pre_ping=not self.is_sqlite
        )
        if self.is_sqlite:
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._write_lock = threading.RLock() if self.engine.dialect.name == "sqlite" else None
        upgrade_schema(self.engine)
        Base.metadata.create_all(self.engine)

    @property
    def dialect(self) -> str:
        """The backend name (``sqlite``, ``postgresql``, ...)."""
        return self.engine.dialect.name

    @contextmanager
    def session(self) -> Iterator[Session]:
        """Yield a session in one transaction: committed if the block returns, rolled back if not."""
        with self._writer(), self._sessions.begin() as session:
            yield session

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        """Yield a Core connection in one transaction (committed on success, else rolled back)."""
        with self._writer(), self.engine.begin() as conn:
            yield conn

    def _writer(self) -> AbstractContextManager[object]:
        """SQLite has one writer at a time; queueing writers here instead of in SQLite's busy
        handler (which sleeps up to 100 ms between retries) keeps tail latency bounded."""
        return self._write_lock if self._write_lock is not None else nullcontext()

    def dispose(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()


_JOB_COLUMNS_V1 = (
    "id",
    "owner_id",
    "model_id",
    "request_id",
    "status",
    "rows",
    "receipt",
    "signature",
    "result_path",
    "created_at",
)


_ADDED_COLUMNS: dict[str, tuple[tuple[str, str], ...]] = {
    "accounts": (("balance", "BIGINT NOT NULL DEFAULT 0"),),
    "models": (
        ("version", "VARCHAR(32) NOT NULL DEFAULT '1'"),
        ("price_per_row", "BIGINT NOT NULL DEFAULT 0"),
        ("allowed_measurements", "JSON NOT NULL DEFAULT '[]'"),
        ("mode", "VARCHAR(8) NOT NULL DEFAULT 'tee'"),
        ("he_preset", "VARCHAR(32)"),
        ("he_model", "TEXT"),
        ("he_query_budget", "BIGINT"),
    ),
}
"""Columns added since the first release, with the defaults existing rows get."""


def _add_missing_columns(engine: Engine) -> bool:
    """Add the marketplace columns to ``accounts`` and ``models`` tables made before they existed.

    Existing accounts start with no credit and existing models are free; the new check
    constraints are not added to old tables (the charge path never relies on them: debits are
    conditional updates).
    """
    inspector = inspect(engine)
    tables = set(inspector.get_table_names())
    statements = []
    for table, columns in _ADDED_COLUMNS.items():
        if table not in tables:
            continue
        present = {column["name"] for column in inspector.get_columns(table)}
        statements += [
            f"ALTER TABLE {table} ADD COLUMN {name} {ddl}" for name, ddl in columns if name not in present
        ]
    if not statements:
        return False
    log.warning(
        "adding %d marketplace columns to an older database (existing rows are kept)", len(statements)
    )
    with engine.begin() as conn:
        for statement in statements:
            conn.execute(text(statement))
    return True


def upgrade_schema(engine: Engine) -> bool:
    """Bring tables made by earlier releases up to the current schema (see also
    :func:`_add_missing_columns`); this part upgrades a ``jobs`` table made before training jobs.

    Guarantees: every existing job is kept (as a ``predict`` job, its other new columns empty);
    the status check accepts the training states afterwards. SQLite cannot change a check
    constraint, so there the table is rebuilt and copied in one transaction; other dialects alter
    it in place. Returns whether anything was changed (nothing for a new or current database).
    """
    added = _add_missing_columns(engine)
    inspector = inspect(engine)
    if "jobs" not in inspector.get_table_names():
        return added
    if "kind" in {column["name"] for column in inspector.get_columns("jobs")}:
        return _widen_job_kinds(engine) or added
    log.warning("upgrading the jobs table for training jobs (existing jobs are kept)")
    if engine.dialect.name == "sqlite":
        indexes = [index["name"] for index in inspector.get_indexes("jobs") if index.get("name")]
        columns = ", ".join(_JOB_COLUMNS_V1)
        with engine.begin() as conn:
            for name in indexes:
                conn.execute(text(f'DROP INDEX IF EXISTS "{name}"'))
            conn.execute(text("ALTER TABLE jobs RENAME TO jobs_v1"))
            Job.__table__.create(conn)
            conn.execute(
                text(f"INSERT INTO jobs ({columns}, kind) SELECT {columns}, 'predict' FROM jobs_v1")  # noqa: S608
            )
            conn.execute(text("DROP TABLE jobs_v1"))
        return True
    statements = [
        "ALTER TABLE jobs ADD COLUMN kind VARCHAR(16) NOT NULL DEFAULT 'predict'",
        "ALTER TABLE jobs ADD COLUMN phase VARCHAR(32)",
        "ALTER TABLE jobs ADD COLUMN progress INTEGER",
        "ALTER TABLE jobs ADD COLUMN error_code VARCHAR(64)",
        "ALTER TABLE jobs ADD COLUMN error_message TEXT",
        "ALTER TABLE jobs ADD COLUMN updated_at TIMESTAMP WITH TIME ZONE",
        "ALTER TABLE jobs DROP CONSTRAINT ck_jobs_status",
    ]
    for constraint in Job.__table__.constraints:
        if isinstance(constraint, CheckConstraint):
            check = f"CHECK ({constraint.sqltext})"
            statements.append(f"ALTER TABLE jobs ADD CONSTRAINT {constraint.name} {check}")
    with engine.begin() as conn:
        for statement in statements:
            conn.execute(text(statement))
    return True


def _widen_job_kinds(engine: Engine) -> bool:
    """Let a ``jobs`` table whose kind check predates encrypted-ML mode accept every kind of
    :data:`JOB_KINDS`.

    Guarantees: every job row is kept unchanged and the foreign keys of other tables still point at
    ``jobs``. SQLite cannot alter a check constraint, so there the table is rebuilt (new table,
    copy, drop, rename, with foreign-key enforcement off meanwhile); other dialects replace the
    constraint in place. Returns whether anything changed.
    """
    checks = inspect(engine).get_check_constraints("jobs")
    kind_check = next((check for check in checks if check.get("name") == "ck_jobs_kind"), None)
    if kind_check is None or all(f"'{kind}'" in str(kind_check.get("sqltext", "")) for kind in JOB_KINDS):
        return False
    log.warning("widening the jobs table's kind check for encrypted-ML jobs (existing jobs are kept)")
    table = Job.__table__
    if engine.dialect.name != "sqlite":
        constraint = next(
            c for c in table.constraints if isinstance(c, CheckConstraint) and c.name == "ck_jobs_kind"
        )
        with engine.begin() as conn:
            conn.execute(text("ALTER TABLE jobs DROP CONSTRAINT ck_jobs_kind"))
            conn.execute(text(f"ALTER TABLE jobs ADD CONSTRAINT ck_jobs_kind CHECK ({constraint.sqltext})"))
        return True
    present = {column["name"] for column in inspect(engine).get_columns("jobs")}
    columns = ", ".join(column.name for column in table.columns if column.name in present)
    scratch = MetaData()
    Account.__table__.to_metadata(scratch)  # so the copy's foreign key resolves
    rebuilt = table.to_metadata(scratch, name="jobs_rebuilt")
    with engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
        conn.commit()
        try:
            with conn.begin():
                conn.execute(text("DROP TABLE IF EXISTS jobs_rebuilt"))
                for index in list(rebuilt.indexes):
                    rebuilt.indexes.discard(index)
                rebuilt.create(conn)
                conn.execute(text(f"INSERT INTO jobs_rebuilt ({columns}) SELECT {columns} FROM jobs"))  # noqa: S608
                conn.execute(text("DROP TABLE jobs"))
                conn.execute(text("ALTER TABLE jobs_rebuilt RENAME TO jobs"))
                for index in table.indexes:
                    index.create(conn)
        finally:
            conn.exec_driver_sql("PRAGMA foreign_keys=ON")
            conn.commit()
    return True
