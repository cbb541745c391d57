"""Read-only queries the dashboard needs beyond the service's: job metadata with names, usage series.

Every function returns plain records of public metadata (ids, names, states, row counts, times):
never ciphertext, where a result blob is stored, a sealed key or a token hash.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select

from sealedml.platform.db import Account, Database, Job, Model

__all__ = ["JobRow", "job_rows", "model_names", "model_usage"]

_JOB_STATES = {
    "awaiting_approval": ("Awaiting approval", "state-waiting", None),
    "queued": ("Queued", "state-waiting", None),
    "running": ("Running", "state-running", None),
    "done": ("Done", "state-done", 100),
    "failed": ("Failed", "state-failed", None),
    "cancelled": ("Cancelled", "state-failed", None),
}


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


@dataclass(frozen=True)
class JobRow:
    """A job as the dashboard lists it.

    ``kind`` is ``predict`` (or another kind such as ``train`` where the table records one);
    ``state`` is the stored status; ``state_label`` and ``state_class`` say how to show it (any
    status renders: unknown ones get a neutral style); ``progress`` is a percentage or None when
    unknown.
    """

    id: str
    kind: str
    owner: str
    model_id: str
    model: str
    state: str
    state_label: str
    state_class: str
    progress: int | None
    rows: int
    created_at: datetime


def describe_state(status: str, progress: object = None) -> tuple[str, str, int | None]:
    """Return ``(label, css class, progress %)`` for a job status; unknown statuses render neutrally.

    A stored ``progress`` (0..100) wins over the status default (done = 100).
    """
    label, css, default = _JOB_STATES.get(
        status, (status.replace("_", " ").capitalize(), "state-other", None)
    )
    if isinstance(progress, int | float) and not isinstance(progress, bool) and 0 <= progress <= 100:
        return label, css, int(progress)
    return label, css, default


def job_rows(
    db: Database, *, owner_id: str | None, job_id: str | None = None, limit: int = 200
) -> list[JobRow]:
    """Return jobs newest first: one owner's (``owner_id``), or everyone's when ``owner_id`` is None.

    With ``job_id`` only that job (if it matches the owner filter) is returned.
    """
    statement = (
        select(Job, Account.name, Model.name)
        .join(Account, Account.id == Job.owner_id)
        .outerjoin(Model, Model.id == Job.model_id)
        .order_by(Job.created_at.desc(), Job.id)
        .limit(limit)
    )
    if owner_id is not None:
        statement = statement.where(Job.owner_id == owner_id)
    if job_id is not None:
        statement = statement.where(Job.id == job_id)
    rows: list[JobRow] = []
    with db.session() as session:
        for job, owner, model in session.execute(statement):
            label, css, progress = describe_state(job.status, getattr(job, "progress", None))
            kind = str(getattr(job, "kind", None) or "predict")
            if model:
                shown = model
            elif kind == "train":
                shown = f"(training job {job.id[:8]}: model not published)"
            else:
                shown = f"(deleted model {job.model_id[:8]})"
            rows.append(
                JobRow(
                    id=job.id,
                    kind=kind,
                    owner=owner,
                    model_id=job.model_id,
                    model=shown,
                    state=job.status,
                    state_label=label,
                    state_class=css,
                    progress=progress,
                    rows=int(job.rows),
                    created_at=_aware(job.created_at),
                )
            )
    return rows


def model_usage(db: Database, model_id: str) -> list[tuple[datetime, int]]:
    """Return ``(time, rows)`` of every job run on the model, oldest first (no client named)."""
    statement = (
        select(Job.created_at, Job.rows)
        .where((Job.model_id == model_id) & (Job.kind == "predict"))
        .order_by(Job.created_at)
    )
    with db.engine.connect() as conn:
        return [(_aware(created), int(rows)) for created, rows in conn.execute(statement)]


def model_names(db: Database) -> dict[str, str]:
    """Return every model's id and name (public catalog metadata)."""
    with db.engine.connect() as conn:
        return {row.id: row.name for row in conn.execute(select(Model.id, Model.name))}
