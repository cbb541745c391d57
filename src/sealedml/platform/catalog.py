"""Synchronous data access for models, jobs and usage: each function is one short transaction.

Functions return frozen records, never live ORM objects, so callers can use them from any thread
after the session closed. Nothing here decides who may do what; :mod:`sealedml.platform.service`
does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, case, delete, exists, insert, select, update
from sqlalchemy.exc import IntegrityError

from sealedml.errors import InputError, ModelError, RequestError
from sealedml.platform.db import Database, Job, JobDataset, Model, ModelUsage, new_id, utcnow
from sealedml.platform.storage import StoredBlob


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


@dataclass(frozen=True)
class ModelRecord:
    """A model row. ``sealed_key`` is opaque: only the enclave that sealed it can open it."""

    id: str
    owner_id: str
    name: str
    description: str
    input_columns: list[str]
    output_policy: dict[str, Any] | None
    status: str
    blob_path: str | None
    blob_sha256: str | None
    blob_size: int | None
    sealed_key: bytes | None
    model_sha256: str | None
    measurement: str | None
    created_at: datetime
    version: str = "1"
    price_per_row: int = 0
    allowed_measurements: tuple[str, ...] = ()
    mode: str = "tee"
    he_preset: str | None = None
    he_query_budget: int | None = None

    @classmethod
    def of(cls, row: Model) -> ModelRecord:
        """Copy an ORM row into a detached record."""
        return cls(
            id=row.id,
            owner_id=row.owner_id,
            name=row.name,
            description=row.description,
            input_columns=list(row.input_columns),
            output_policy=dict(row.output_policy) if row.output_policy is not None else None,
            status=row.status,
            blob_path=row.blob_path,
            blob_sha256=row.blob_sha256,
            blob_size=row.blob_size,
            sealed_key=row.sealed_key,
            model_sha256=row.model_sha256,
            measurement=row.measurement,
            created_at=_aware(row.created_at),
            version=row.version,
            price_per_row=int(row.price_per_row),
            allowed_measurements=tuple(row.allowed_measurements or ()),
            mode=row.mode or "tee",
            he_preset=row.he_preset,
            he_query_budget=None if row.he_query_budget is None else int(row.he_query_budget),
        )

    def visible_to(self, account_id: str) -> bool:
        """Ready models are public; others are visible to their owner only."""
        return self.status == "ready" or self.owner_id == account_id


@dataclass(frozen=True)
class PredictTarget:
    """The few model fields a prediction needs; ``sealed_key`` stays opaque."""

    id: str
    owner_id: str
    status: str
    blob_path: str | None
    sealed_key: bytes | None
    price_per_row: int = 0


@dataclass(frozen=True)
class JobRecord:
    """A job row: a finished prediction, or a training job in any state (``kind``).

    A training job that is not done yet has an empty receipt, signature and result path.
    """

    id: str
    owner_id: str
    model_id: str
    request_id: str
    status: str
    rows: int
    receipt: dict[str, Any]
    signature: str
    result_path: str
    created_at: datetime
    kind: str = "predict"
    phase: str | None = None
    progress: int | None = None
    error_code: str | None = None
    error_message: str | None = None
    updated_at: datetime | None = None

    @classmethod
    def of(cls, row: Job) -> JobRecord:
        """Copy an ORM row into a detached record."""
        return cls(
            id=row.id,
            owner_id=row.owner_id,
            model_id=row.model_id,
            request_id=row.request_id,
            status=row.status,
            rows=row.rows,
            receipt=dict(row.receipt or {}),
            signature=row.signature,
            result_path=row.result_path,
            created_at=_aware(row.created_at),
            kind=row.kind or "predict",
            phase=row.phase,
            progress=row.progress,
            error_code=row.error_code,
            error_message=row.error_message,
            updated_at=_aware(row.updated_at) if row.updated_at is not None else None,
        )


class Catalog:
    """Blocking catalog operations over one :class:`Database`."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # -- models -------------------------------------------------------------------------------
    def create_model(
        self,
        *,
        owner_id: str,
        name: str,
        description: str,
        input_columns: list[str],
        output_policy: dict[str, Any] | None,
        version: str = "1",
        price_per_row: int = 0,
        allowed_measurements: tuple[str, ...] = (),
        model_id: str | None = None,
        mode: str = "tee",
    ) -> ModelRecord:
        """Insert a model in status ``created``; raises ``input.conflict`` if the name is taken.

        ``model_id`` reserves a given id (a training job names its model before it exists);
        ``input.conflict`` too if that id is taken. ``mode`` is ``tee`` (encrypted ONNX for the
        enclave) or ``he`` (weights for encrypted-ML mode, uploaded with :meth:`set_he_model`).
        """
        if mode not in ("tee", "he"):
            raise InputError("input.malformed", f"mode must be 'tee' or 'he', got {mode!r}")
        try:
            with self.db.session() as session:
                if session.scalar(select(Model.id).where(Model.name == name)) is not None:
                    raise InputError("input.conflict", f"a model named {name!r} already exists")
                if model_id is not None and session.get(Model, model_id) is not None:
                    raise InputError("input.conflict", f"a model with id {model_id!r} already exists")
                row = Model(
                    id=model_id or new_id(),
                    owner_id=owner_id,
                    name=name,
                    description=description,
                    input_columns=input_columns,
                    output_policy=output_policy,
                    status="created",
                    version=version,
                    price_per_row=price_per_row,
                    allowed_measurements=list(allowed_measurements),
                    mode=mode,
                )
                session.add(row)
                session.flush()
                return ModelRecord.of(row)
        except IntegrityError as exc:
            raise InputError("input.conflict", f"a model named {name!r} already exists") from exc

    def get_model(self, model_id: str) -> ModelRecord | None:
        """Return the model with ``model_id``, or ``None``."""
        with self.db.session() as session:
            row = session.get(Model, model_id)
            return None if row is None else ModelRecord.of(row)

    def list_models(self, viewer_id: str) -> list[ModelRecord]:
        """Return ready models and the viewer's own models, by name."""
        with self.db.session() as session:
            rows = session.scalars(
                select(Model)
                .where((Model.status == "ready") | (Model.owner_id == viewer_id))
                .order_by(Model.name)
            )
            return [ModelRecord.of(row) for row in rows]

    def update_listing(self, model_id: str, owner_id: str, changes: dict[str, Any]) -> ModelRecord | None:
        """Change a model's public listing (description, version, price, allowed measurements).

        Returns the updated record, or ``None`` if the model does not exist for this owner.
        """
        allowed = {"description", "version", "price_per_row", "allowed_measurements"}
        unknown = set(changes) - allowed
        if unknown:
            raise ValueError(f"not a listing field: {sorted(unknown)}")
        with self.db.session() as session:
            row = session.get(Model, model_id)
            if row is None or row.owner_id != owner_id:
                return None
            for key, value in changes.items():
                setattr(row, key, list(value) if key == "allowed_measurements" else value)
            session.flush()
            return ModelRecord.of(row)

    def set_blob(
        self, model_id: str, owner_id: str, blob: StoredBlob
    ) -> tuple[ModelRecord, str | None] | None:
        """Point the model at a newly stored blob, status ``uploaded``, sealed key cleared.

        Returns the updated record and the previous blob path (for the caller to delete), or
        ``None`` if the model no longer exists for this owner. An encrypted-ML (``he``) model never
        takes an enclave blob: ``request.invalid``, nothing changes.
        """
        with self.db.session() as session:
            row = session.get(Model, model_id)
            if row is None or row.owner_id != owner_id:
                return None
            if row.mode == "he":
                raise RequestError(
                    "request.invalid",
                    "this is an encrypted-ML (HE) model: upload its weights with "
                    "PUT /v1/models/{id}/he-model",
                )
            old = row.blob_path
            row.blob_path, row.blob_sha256, row.blob_size = blob.path, blob.sha256, blob.size
            row.status = "uploaded"
            row.sealed_key = row.model_sha256 = row.measurement = None
            session.flush()
            return ModelRecord.of(row), old

    def mark_ready(
        self,
        model_id: str,
        *,
        expected_blob_sha256: str,
        sealed_key: bytes,
        model_sha256: str,
        measurement: str,
    ) -> ModelRecord | None:
        """Store the sealed key and mark the model ``ready``, only if its blob is still the one
        that was provisioned (compare-and-set on ``blob_sha256``). Returns ``None`` otherwise.
        """
        with self.db.session() as session:
            result = session.execute(
                update(Model)
                .where(Model.id == model_id, Model.blob_sha256 == expected_blob_sha256, Model.mode == "tee")
                .values(
                    sealed_key=sealed_key,
                    model_sha256=model_sha256,
                    measurement=measurement,
                    status="ready",
                )
                .execution_options(synchronize_session=False)
            )
            if result.rowcount != 1:  # type: ignore[attr-defined]
                return None
            row = session.get(Model, model_id)
            assert row is not None
            session.refresh(row)
            return ModelRecord.of(row)

    def set_he_model(
        self,
        model_id: str,
        owner_id: str,
        *,
        model_json: str,
        model_sha256: str,
        preset: str,
        query_budget: int | None,
    ) -> ModelRecord | None:
        """Store an encrypted-ML model's weights (``HEModel`` JSON) and mark it ``ready``, mode ``he``.

        A model registered as ``tee`` may become ``he`` only while no enclave blob was uploaded
        (status ``created``); otherwise ``request.invalid`` and nothing changes. Returns ``None`` if
        the model does not exist for this owner. ``model_sha256`` is the digest of the JSON.
        """
        with self.db.session() as session:
            row = session.get(Model, model_id)
            if row is None or row.owner_id != owner_id:
                return None
            if row.mode != "he" and (row.status != "created" or row.blob_path is not None):
                raise RequestError(
                    "request.invalid",
                    "this model already holds an encrypted ONNX blob for the enclave (mode tee); "
                    "register a new model for encrypted-ML mode",
                )
            row.mode = "he"
            row.he_model = model_json
            row.he_preset = preset
            row.he_query_budget = query_budget
            row.model_sha256 = model_sha256
            row.blob_path = row.blob_sha256 = row.blob_size = None
            row.sealed_key = row.measurement = None
            row.status = "ready"
            session.flush()
            return ModelRecord.of(row)

    def get_he_model(self, model_id: str) -> tuple[ModelRecord, str] | None:
        """Return an ``he`` model and its weights JSON, or ``None`` if it has none (or no such model)."""
        with self.db.session() as session:
            row = session.get(Model, model_id)
            if row is None or row.mode != "he" or row.he_model is None:
                return None
            return ModelRecord.of(row), row.he_model

    def usage_of(self, model_id: str, client_id: str) -> int:
        """Rows ``client_id`` has run through ``model_id`` so far (0 if none)."""
        table = ModelUsage.__table__
        with self.db.engine.connect() as conn:
            value = conn.scalar(
                select(table.c.rows).where((table.c.model_id == model_id) & (table.c.client_id == client_id))
            )
        return int(value or 0)

    def record_he_job(
        self,
        *,
        job_id: str,
        owner_id: str,
        model_id: str,
        rows: int,
        receipt: dict[str, Any],
        result_path: str,
        query_budget: int | None,
        in_transaction: Callable[[Connection], None] | None = None,
    ) -> JobRecord:
        """Record a finished encrypted-ML prediction (kind ``he-predict``) and add its rows to the
        client's usage, in one transaction (``in_transaction`` settles the charge there too).

        The host counts the rows itself (there is no enclave in this mode). With a ``query_budget``
        the usage may not pass it: ``model.budget_exhausted`` and nothing is recorded.
        """
        job = JobRecord(
            id=job_id,
            owner_id=owner_id,
            model_id=model_id,
            request_id=f"he-{job_id}",
            status="done",
            rows=rows,
            receipt=receipt,
            signature="",
            result_path=result_path,
            created_at=utcnow(),
            kind="he-predict",
        )
        table = ModelUsage.__table__
        key = (table.c.model_id == model_id) & (table.c.client_id == owner_id)
        with self.db.begin() as conn:
            used = conn.scalar(select(table.c.rows).where(key))
            total = int(used or 0) + rows
            if query_budget is not None and total > query_budget:
                raise ModelError(
                    "model.budget_exhausted",
                    f"this model allows {query_budget} rows per client; {int(used or 0)} were used",
                )
            if used is None:
                conn.execute(insert(table).values(model_id=model_id, client_id=owner_id, rows=total))
            else:
                conn.execute(update(table).where(key).values(rows=total))
            conn.execute(insert(Job.__table__).values(**asdict(job)))
            if in_transaction is not None:
                in_transaction(conn)
        return job

    def delete_model(self, model_id: str) -> ModelRecord | None:
        """Delete a model and its usage counters; return what was deleted (jobs are kept)."""
        with self.db.session() as session:
            row = session.get(Model, model_id)
            if row is None:
                return None
            record = ModelRecord.of(row)
            session.execute(delete(ModelUsage).where(ModelUsage.model_id == model_id))
            session.delete(row)
            return record

    def usage(self, model_id: str) -> dict[str, int]:
        """Return ``{client_id: rows}`` for one model."""
        with self.db.session() as session:
            rows = session.execute(
                select(ModelUsage.client_id, ModelUsage.rows).where(ModelUsage.model_id == model_id)
            )
            return {client: count for client, count in rows}

    # -- predictions (hot path: SQLAlchemy Core, one short statement or transaction each) ---------
    def prediction_context(self, model_id: str, request_id: str) -> tuple[PredictTarget | None, bool]:
        """Return what a prediction needs of the model (or ``None``) and whether ``request_id`` was
        already used, in one statement.
        """
        models, jobs = Model.__table__, Job.__table__
        seen = exists().where(jobs.c.request_id == request_id).label("seen")
        with self.db.engine.connect() as conn:
            row = conn.execute(
                select(
                    models.c.id,
                    models.c.owner_id,
                    models.c.status,
                    models.c.blob_path,
                    models.c.sealed_key,
                    models.c.price_per_row,
                    models.c.mode,
                    seen,
                ).where(models.c.id == model_id)
            ).one_or_none()
            if row is None:
                return None, bool(conn.execute(select(seen)).scalar())
        if row.mode == "he":
            raise RequestError(
                "request.invalid",
                "this is an encrypted-ML (HE) model: predict with POST /v1/models/{id}/he/predict",
            )
        target = PredictTarget(
            id=row.id,
            owner_id=row.owner_id,
            status=row.status,
            blob_path=row.blob_path,
            sealed_key=row.sealed_key,
            price_per_row=int(row.price_per_row),
        )
        return target, bool(row.seen)

    def record_job(
        self,
        *,
        job_id: str,
        owner_id: str,
        model_id: str,
        request_id: str,
        rows: int,
        receipt: dict[str, Any],
        signature: str,
        result_path: str,
        usage: int,
        in_transaction: Callable[[Connection], None] | None = None,
    ) -> JobRecord:
        """Insert a finished job and raise the client's usage counter, in one transaction.

        Raises ``request.replayed`` if another job already used ``request_id``. The usage counter
        only moves up (the enclave's total is authoritative, and answers may arrive out of order).
        ``in_transaction`` runs inside the same transaction (billing settles the job's charge there).
        """
        job = JobRecord(
            id=job_id,
            owner_id=owner_id,
            model_id=model_id,
            request_id=request_id,
            status="done",
            rows=rows,
            receipt=receipt,
            signature=signature,
            result_path=result_path,
            created_at=utcnow(),
        )
        try:
            with self.db.begin() as conn:
                conn.execute(insert(Job.__table__).values(**asdict(job)))
                self._raise_usage(conn, model_id, owner_id, usage)
                if in_transaction is not None:
                    in_transaction(conn)
        except IntegrityError as exc:
            raise RequestError("request.replayed", "this request id was already used") from exc
        return job

    def _raise_usage(self, conn: Connection, model_id: str, client_id: str, total: int) -> None:
        table = ModelUsage.__table__
        keep_max = case((table.c.rows < total, total), else_=table.c.rows)
        if self.db.dialect in ("sqlite", "postgresql"):
            if self.db.dialect == "sqlite":
                from sqlalchemy.dialects.sqlite import insert as upsert
            else:
                from sqlalchemy.dialects.postgresql import insert as upsert
            stmt = upsert(table).values(model_id=model_id, client_id=client_id, rows=total)
            conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=[table.c.model_id, table.c.client_id], set_={"rows": keep_max}
                )
            )
            return
        key = (table.c.model_id == model_id) & (table.c.client_id == client_id)
        if conn.execute(update(table).where(key).values(rows=keep_max)).rowcount == 0:
            conn.execute(insert(table).values(model_id=model_id, client_id=client_id, rows=total))

    def done_job_ids(self) -> list[str]:
        """Return the ids of every finished job with an enclave receipt, oldest first (to reconcile
        the log); encrypted-ML jobs have no receipt to log."""
        jobs = Job.__table__
        with self.db.engine.connect() as conn:
            return list(
                conn.scalars(
                    select(jobs.c.id)
                    .where((jobs.c.status == "done") & (jobs.c.kind != "he-predict"))
                    .order_by(jobs.c.created_at, jobs.c.id)
                )
            )

    def receipts_of(self, job_ids: list[str]) -> list[tuple[dict[str, Any], str]]:
        """Return the (receipt, signature) of the given jobs, in the order given."""
        jobs = Job.__table__
        found: dict[str, tuple[dict[str, Any], str]] = {}
        with self.db.engine.connect() as conn:
            for start in range(0, len(job_ids), 500):
                part = job_ids[start : start + 500]
                for row in conn.execute(
                    select(jobs.c.id, jobs.c.receipt, jobs.c.signature).where(jobs.c.id.in_(part))
                ):
                    found[row.id] = (dict(row.receipt), row.signature)
        return [found[job_id] for job_id in job_ids if job_id in found]

    def get_job(self, job_id: str) -> JobRecord | None:
        """Return the job with ``job_id``, or ``None``."""
        with self.db.session() as session:
            row = session.get(Job, job_id)
            return None if row is None else JobRecord.of(row)

    def list_jobs(self, owner_id: str, *, limit: int = 100) -> list[JobRecord]:
        """Return the account's most recent jobs, newest first: those it submitted, and the
        training jobs that use one of its datasets (it approves those)."""
        involved = select(JobDataset.job_id).where(JobDataset.owner_id == owner_id)
        with self.db.session() as session:
            rows = session.scalars(
                select(Job)
                .where((Job.owner_id == owner_id) | Job.id.in_(involved))
                .order_by(Job.created_at.desc(), Job.id)
                .limit(limit)
            )
            return [JobRecord.of(row) for row in rows]

    def is_job_party(self, job_id: str, account_id: str) -> bool:
        """Whether ``account_id`` owns a dataset used by training job ``job_id``."""
        parties = JobDataset.__table__
        with self.db.engine.connect() as conn:
            match = (parties.c.job_id == job_id) & (parties.c.owner_id == account_id)
            found = conn.execute(select(parties.c.job_id).where(match)).first()
            return found is not None
