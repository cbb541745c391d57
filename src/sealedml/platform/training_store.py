"""Synchronous data access for datasets and training jobs: each function is one short transaction.

Functions return frozen records, never live ORM objects. Everything stored is ciphertext or public
metadata: dataset blobs' digests and sizes, sealed dataset states, job specs, sealed requests,
model-key grants, signed receipts. Nothing here decides who may do what;
:mod:`sealedml.platform.training` does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from sealedml.errors import InputError
from sealedml.platform.catalog import JobRecord
from sealedml.platform.db import (
    FINAL_JOB_STATUSES,
    Database,
    Dataset,
    Job,
    JobDataset,
    Model,
    TrainingJob,
    new_id,
    utcnow,
)
from sealedml.platform.storage import StoredBlob

__all__ = [
    "DatasetUpdate",
    "JobParty",
    "StoredDataset",
    "TrainingJobRecord",
    "TrainingStore",
]


def _aware(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


@dataclass(frozen=True)
class StoredDataset:
    """A dataset row. ``sealed_state`` is opaque: only the enclave that sealed it can open it."""

    id: str
    owner_id: str
    name: str
    description: str
    status: str
    blob_path: str | None
    blob_sha256: str | None
    blob_size: int | None
    sealed_state: bytes | None
    generation: int
    epsilon_total: float | None
    epsilon_spent: float
    measurement: str | None
    listing_id: str | None
    created_at: datetime

    @classmethod
    def of(cls, row: Dataset) -> StoredDataset:
        """Copy an ORM row into a detached record."""
        return cls(
            id=row.id,
            owner_id=row.owner_id,
            name=row.name,
            description=row.description,
            status=row.status,
            blob_path=row.blob_path,
            blob_sha256=row.blob_sha256,
            blob_size=row.blob_size,
            sealed_state=row.sealed_state,
            generation=int(row.generation or 0),
            epsilon_total=row.epsilon_total,
            epsilon_spent=float(row.epsilon_spent or 0.0),
            measurement=row.measurement,
            listing_id=row.listing_id,
            created_at=_aware(row.created_at) or utcnow(),
        )

    @property
    def epsilon_remaining(self) -> float | None:
        """The privacy budget left as the enclave last reported it (``None``: no budget)."""
        if self.epsilon_total is None:
            return None
        return max(self.epsilon_total - self.epsilon_spent, 0.0)


@dataclass(frozen=True)
class DatasetUpdate:
    """A dataset's new sealed state and public budget after a differentially private job."""

    dataset_id: str
    sealed_state: bytes
    generation: int
    epsilon_spent: float
    epsilon_total: float | None


@dataclass(frozen=True)
class JobParty:
    """One dataset of a training job, its owner, and whether (and where) the owner approved."""

    dataset_id: str
    position: int
    owner_id: str
    approved_at: datetime | None
    approved_instance: str | None


@dataclass(frozen=True)
class TrainingJobRecord:
    """A training job: its generic job row plus spec, sealed request, parties and results."""

    job: JobRecord
    spec: dict[str, Any]
    spec_sha256: str
    request: bytes
    parties: tuple[JobParty, ...]
    publish_model_id: str | None
    model_blob_path: str | None
    model_blob_sha256: str | None
    model_sha256: str | None
    grants: tuple[dict[str, str], ...]
    phases: tuple[dict[str, Any], ...]
    budgets: tuple[dict[str, Any], ...]
    charge_ids: tuple[str, ...]
    started_at: datetime | None
    finished_at: datetime | None

    @property
    def dataset_ids(self) -> list[str]:
        """The job's datasets in spec order."""
        return [party.dataset_id for party in self.parties]

    def waiting_for(self, instance_id: str | None) -> list[str]:
        """Datasets whose owner has not approved on enclave instance ``instance_id`` (any if None)."""
        return [
            party.dataset_id
            for party in self.parties
            if party.approved_at is None
            or (instance_id is not None and party.approved_instance != instance_id)
        ]

    def involves(self, account_id: str) -> bool:
        """Whether ``account_id`` submitted the job or owns one of its datasets."""
        return self.job.owner_id == account_id or any(p.owner_id == account_id for p in self.parties)


class TrainingStore:
    """Blocking dataset and training-job operations over one :class:`Database`."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # -- datasets -------------------------------------------------------------------------------
    def create_dataset(self, *, owner_id: str, name: str, description: str) -> StoredDataset:
        """Insert a dataset in status ``created``; raises ``input.conflict`` if the name is taken."""
        try:
            with self.db.session() as session:
                if session.scalar(select(Dataset.id).where(Dataset.name == name)) is not None:
                    raise InputError("input.conflict", f"a dataset named {name!r} already exists")
                row = Dataset(id=new_id(), owner_id=owner_id, name=name, description=description)
                row.status, row.generation, row.epsilon_spent = "created", 0, 0.0
                session.add(row)
                session.flush()
                return StoredDataset.of(row)
        except IntegrityError as exc:
            raise InputError("input.conflict", f"a dataset named {name!r} already exists") from exc

    def get_dataset(self, dataset_id: str) -> StoredDataset | None:
        """Return the dataset with ``dataset_id``, or ``None``."""
        with self.db.session() as session:
            row = session.get(Dataset, dataset_id)
            return None if row is None else StoredDataset.of(row)

    def dataset_by_name(self, name: str) -> StoredDataset | None:
        """Return the dataset called ``name``, or ``None``."""
        with self.db.session() as session:
            row = session.scalar(select(Dataset).where(Dataset.name == name))
            return None if row is None else StoredDataset.of(row)

    def list_datasets(self, owner_id: str) -> list[StoredDataset]:
        """Return the owner's datasets, by name."""
        with self.db.session() as session:
            rows = session.scalars(select(Dataset).where(Dataset.owner_id == owner_id).order_by(Dataset.name))
            return [StoredDataset.of(row) for row in rows]

    def set_dataset_blob(
        self, dataset_id: str, owner_id: str, blob: StoredBlob
    ) -> tuple[StoredDataset, str | None] | None:
        """Point the dataset at a newly stored blob: status ``uploaded``, sealed state and budget
        cleared (the owner provisions again). Returns the record and the previous blob path, or
        ``None`` if the dataset no longer exists for this owner.
        """
        with self.db.session() as session:
            row = session.get(Dataset, dataset_id)
            if row is None or row.owner_id != owner_id:
                return None
            old = row.blob_path
            row.blob_path, row.blob_sha256, row.blob_size = blob.path, blob.sha256, blob.size
            row.status = "uploaded"
            row.sealed_state = row.measurement = None
            row.generation, row.epsilon_spent, row.epsilon_total = 0, 0.0, None
            session.flush()
            return StoredDataset.of(row), old

    def mark_dataset_ready(
        self,
        dataset_id: str,
        *,
        expected_blob_sha256: str,
        sealed_state: bytes,
        generation: int,
        epsilon_total: float | None,
        epsilon_spent: float,
        measurement: str,
    ) -> StoredDataset | None:
        """Store the sealed state and mark the dataset ``ready``, only if its blob is still the one
        that was provisioned (compare-and-set on ``blob_sha256``). Returns ``None`` otherwise.
        """
        with self.db.session() as session:
            result = session.execute(
                update(Dataset)
                .where(Dataset.id == dataset_id, Dataset.blob_sha256 == expected_blob_sha256)
                .values(
                    sealed_state=sealed_state,
                    generation=generation,
                    epsilon_total=epsilon_total,
                    epsilon_spent=epsilon_spent,
                    measurement=measurement,
                    status="ready",
                )
                .execution_options(synchronize_session=False)
            )
            if result.rowcount != 1:  # type: ignore[attr-defined]
                return None
            row = session.get(Dataset, dataset_id)
            assert row is not None
            session.refresh(row)
            return StoredDataset.of(row)

    def set_listing(self, dataset_id: str, owner_id: str, listing_id: str) -> StoredDataset | None:
        """Link the dataset to its market listing (whose price training jobs pay)."""
        with self.db.session() as session:
            row = session.get(Dataset, dataset_id)
            if row is None or row.owner_id != owner_id:
                return None
            row.listing_id = listing_id
            session.flush()
            return StoredDataset.of(row)

    def delete_dataset(self, dataset_id: str) -> StoredDataset | None:
        """Delete a dataset that no unfinished job uses; return what was deleted.

        Raises ``input.conflict`` if a training job that is not finished lists it.
        """
        with self.db.session() as session:
            row = session.get(Dataset, dataset_id)
            if row is None:
                return None
            busy = session.scalar(
                select(Job.id)
                .join(JobDataset, JobDataset.job_id == Job.id)
                .where(JobDataset.dataset_id == dataset_id, Job.status.not_in(FINAL_JOB_STATUSES))
            )
            if busy is not None:
                raise InputError("input.conflict", f"training job {busy} still uses this dataset")
            record = StoredDataset.of(row)
            session.delete(row)
            return record

    # -- training jobs --------------------------------------------------------------------------
    def create_job(
        self,
        *,
        job_id: str,
        owner_id: str,
        model_id: str,
        request_id: str,
        spec: dict[str, Any],
        spec_sha256: str,
        request: bytes,
        parties: Sequence[tuple[str, str]],
        charge_ids: Sequence[str],
        publish_model_id: str | None,
    ) -> TrainingJobRecord:
        """Insert a training job awaiting its owners' approvals, with its datasets, in one transaction.

        Raises ``input.conflict`` if the job id is taken.
        """
        now = utcnow()
        try:
            with self.db.session() as session:
                if session.get(Job, job_id) is not None:
                    raise InputError("input.conflict", f"a job with id {job_id!r} already exists")
                session.add(
                    Job(
                        id=job_id,
                        owner_id=owner_id,
                        model_id=model_id,
                        request_id=request_id,
                        status="awaiting_approval",
                        rows=0,
                        receipt={},
                        signature="",
                        result_path="",
                        created_at=now,
                        kind="train",
                        phase="awaiting_approval",
                        progress=0,
                        error_code="request.approvals_missing",
                        error_message="waiting for every dataset owner to approve this job",
                        updated_at=now,
                    )
                )
                session.flush()
                session.add(
                    TrainingJob(
                        job_id=job_id,
                        spec=spec,
                        spec_sha256=spec_sha256,
                        request=request,
                        publish_model_id=publish_model_id,
                        charge_ids=list(charge_ids),
                    )
                )
                for position, (dataset_id, dataset_owner) in enumerate(parties):
                    session.add(
                        JobDataset(
                            job_id=job_id, dataset_id=dataset_id, position=position, owner_id=dataset_owner
                        )
                    )
                session.flush()
                return self._record(session, job_id)
        except IntegrityError as exc:
            raise InputError("input.conflict", f"a job with id {job_id!r} already exists") from exc

    def _record(self, session: Session, job_id: str) -> TrainingJobRecord:
        job = session.get(Job, job_id)
        training = session.get(TrainingJob, job_id)
        assert job is not None and training is not None
        parties = session.scalars(
            select(JobDataset).where(JobDataset.job_id == job_id).order_by(JobDataset.position)
        )
        return TrainingJobRecord(
            job=JobRecord.of(job),
            spec=dict(training.spec),
            spec_sha256=training.spec_sha256,
            request=training.request,
            parties=tuple(
                JobParty(
                    dataset_id=p.dataset_id,
                    position=p.position,
                    owner_id=p.owner_id,
                    approved_at=_aware(p.approved_at),
                    approved_instance=p.approved_instance,
                )
                for p in parties
            ),
            publish_model_id=training.publish_model_id,
            model_blob_path=training.model_blob_path,
            model_blob_sha256=training.model_blob_sha256,
            model_sha256=training.model_sha256,
            grants=tuple(dict(g) for g in training.grants or ()),
            phases=tuple(dict(p) for p in training.phases or ()),
            budgets=tuple(dict(b) for b in training.budgets or ()),
            charge_ids=tuple(training.charge_ids or ()),
            started_at=_aware(training.started_at),
            finished_at=_aware(training.finished_at),
        )

    def get_job(self, job_id: str) -> TrainingJobRecord | None:
        """Return the training job ``job_id``, or ``None`` (also for a prediction's id)."""
        with self.db.session() as session:
            if session.get(TrainingJob, job_id) is None:
                return None
            return self._record(session, job_id)

    def jobs_in(self, statuses: Sequence[str]) -> list[str]:
        """Return the ids of training jobs in one of ``statuses``, oldest first."""
        with self.db.engine.connect() as conn:
            jobs = Job.__table__
            rows = conn.execute(
                select(jobs.c.id)
                .where(jobs.c.kind == "train", jobs.c.status.in_(list(statuses)))
                .order_by(jobs.c.created_at, jobs.c.id)
            )
            return [row.id for row in rows]

    def set_state(
        self,
        job_id: str,
        *,
        status: str,
        phase: str | None,
        progress: int | None,
        error: tuple[str, str] | None = None,
        expected: Sequence[str] | None = None,
        started: bool = False,
    ) -> bool:
        """Move a job to ``status``/``phase``/``progress`` (with an error code and message or none),
        only if it is in one of ``expected`` (any state if None). Returns whether it moved.
        """
        now = utcnow()
        values: dict[str, Any] = {
            "status": status,
            "phase": phase,
            "progress": progress,
            "error_code": error[0] if error else None,
            "error_message": error[1] if error else None,
            "updated_at": now,
        }
        with self.db.session() as session:
            statement = update(Job).where(Job.id == job_id)
            if expected is not None:
                statement = statement.where(Job.status.in_(list(expected)))
            moved = session.execute(statement.values(**values).execution_options(synchronize_session=False))
            if moved.rowcount != 1:  # type: ignore[attr-defined]
                return False
            if started:
                session.execute(
                    update(TrainingJob)
                    .where(TrainingJob.job_id == job_id)
                    .values(started_at=now)
                    .execution_options(synchronize_session=False)
                )
            return True

    def record_approval(self, job_id: str, dataset_id: str, instance_id: str) -> TrainingJobRecord:
        """Note that the owner of ``dataset_id`` approved job ``job_id`` on enclave ``instance_id``."""
        with self.db.session() as session:
            session.execute(
                update(JobDataset)
                .where(JobDataset.job_id == job_id, JobDataset.dataset_id == dataset_id)
                .values(approved_at=utcnow(), approved_instance=instance_id)
                .execution_options(synchronize_session=False)
            )
            return self._record(session, job_id)

    def forget_approvals(self, job_id: str, dataset_ids: Sequence[str]) -> None:
        """Clear the approvals of ``dataset_ids`` (given to an enclave instance that is gone)."""
        with self.db.session() as session:
            session.execute(
                update(JobDataset)
                .where(JobDataset.job_id == job_id, JobDataset.dataset_id.in_(list(dataset_ids)))
                .values(approved_at=None, approved_instance=None)
                .execution_options(synchronize_session=False)
            )

    def replace_request(self, job_id: str, request: bytes, request_id: str, statuses: Sequence[str]) -> bool:
        """Swap the job's sealed request for a fresh one while the job is in one of ``statuses``."""
        with self.db.session() as session:
            job = session.get(Job, job_id)
            training = session.get(TrainingJob, job_id)
            if job is None or training is None or job.status not in statuses:
                return False
            job.request_id, job.updated_at = request_id, utcnow()
            training.request = request
            return True

    def finish_job(
        self,
        job_id: str,
        *,
        receipt: dict[str, Any],
        signature: str,
        result_path: str,
        model_blob: StoredBlob,
        model_sha256: str,
        grants: list[dict[str, str]],
        phases: list[dict[str, Any]],
        budgets: list[dict[str, Any]],
        datasets: Sequence[DatasetUpdate],
        published: tuple[bytes, str] | None,
        in_transaction: Callable[[Connection], None] | None = None,
    ) -> TrainingJobRecord | None:
        """Record a finished job and everything it changed, in one transaction.

        Guarantees: the job becomes ``done`` with its receipt, grants and model blob; each DP
        dataset takes its new sealed state only if that state is newer than the stored one (never
        backwards); a published model (``(sealed config, measurement)``) becomes ``ready`` with the
        model blob; ``in_transaction`` (billing settles the charges) runs in the same transaction.
        Returns ``None`` (nothing changed) if the job was no longer running.
        """
        now = utcnow()
        with self.db.session() as session:
            job = session.get(Job, job_id)
            training = session.get(TrainingJob, job_id)
            if job is None or training is None or job.status != "running":
                return None
            job.status, job.phase, job.progress = "done", "done", 100
            job.error_code = job.error_message = None
            job.receipt, job.signature, job.result_path = receipt, signature, result_path
            job.updated_at = now
            training.model_blob_path, training.model_blob_sha256 = model_blob.path, model_blob.sha256
            training.model_sha256 = model_sha256
            training.grants, training.phases, training.budgets = grants, phases, budgets
            training.finished_at = now
            for change in datasets:
                session.execute(
                    update(Dataset)
                    .where(Dataset.id == change.dataset_id, Dataset.generation < change.generation)
                    .values(
                        sealed_state=change.sealed_state,
                        generation=change.generation,
                        epsilon_spent=change.epsilon_spent,
                        epsilon_total=change.epsilon_total,
                    )
                    .execution_options(synchronize_session=False)
                )
            if published is not None and training.publish_model_id is not None:
                model = session.get(Model, training.publish_model_id)
                if model is not None:
                    model.sealed_key, model.measurement = published
                    model.blob_path, model.blob_sha256 = model_blob.path, model_blob.sha256
                    model.blob_size, model.model_sha256 = model_blob.size, model_sha256
                    model.status = "ready"
            session.flush()
            if in_transaction is not None:
                in_transaction(session.connection())
            return self._record(session, job_id)

    def end_job(self, job_id: str, status: str, error: tuple[str, str] | None) -> TrainingJobRecord | None:
        """Close an unfinished job as ``failed`` or ``cancelled`` and drop the model it reserved.

        Returns the record, or ``None`` if the job was already finished.
        """
        now = utcnow()
        with self.db.session() as session:
            job = session.get(Job, job_id)
            training = session.get(TrainingJob, job_id)
            if job is None or training is None or job.status in FINAL_JOB_STATUSES:
                return None
            job.status, job.phase, job.progress = status, status, job.progress
            job.error_code, job.error_message = error if error else (None, None)
            job.updated_at = now
            training.finished_at = now
            if training.publish_model_id is not None:
                model = session.get(Model, training.publish_model_id)
                if model is not None and model.status != "ready":
                    session.delete(model)
            session.flush()
            return self._record(session, job_id)
