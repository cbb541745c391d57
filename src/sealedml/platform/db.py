"""The platform's catalog: accounts, models, jobs and usage, in SQLAlchemy 2.0 ORM.

Everything stored here is public metadata or ciphertext: names, digests, sizes, opaque sealed
keys, signed receipts. The schema is dialect-neutral (SQLite by default, PostgreSQL by URL); only
the connection setup differs. Sessions are synchronous; the API calls them from worker threads.
"""

from __future__ import annotations

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
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    create_engine,
    event,
    text,
)
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

ROLES = ("admin", "provider", "data_owner")
MODEL_STATUSES = ("created", "uploaded", "ready")
JOB_STATUSES = ("done",)
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


class Job(Base):
    """One finished prediction: the signed receipt and where its response envelope is.

    ``model_id`` is deliberately not a foreign key: a job's receipt outlives its model.
    """

    __tablename__ = "jobs"
    __table_args__ = (CheckConstraint(_in("status", JOB_STATUSES), name="ck_jobs_status"),)

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
