"""The marketplace: model, dataset and TEE-resource listings, live attestation status, usage report.

Listings hold public metadata only: a dataset listing is a schema and a size, never a row. Each
enclave worker is a TEE resource whose evidence the platform re-verifies (with a fresh nonce, under
the platform's appraisal policy) at most every ``ttl`` seconds; a model listing *passes* only if
its enclave passes and runs a measurement the provider allowed. The platform's verdict is a
convenience for browsing: clients still verify the enclave themselves before sending anything.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from sealedml.attestation.evidence.bundle import EvidenceBundle
from sealedml.attestation.policy import AppraisalPolicy
from sealedml.attestation.verifier import verify_evidence
from sealedml.errors import AttestationError, InputError, NotFoundError, SealedMLError
from sealedml.platform.billing import check_amount
from sealedml.platform.db import (
    Account,
    Charge,
    Database,
    DatasetListing,
    Job,
    Model,
    TeeResource,
    new_id,
    utcnow,
)
from sealedml.platform.enclave_manager import EnclaveSupervisor

__all__ = ["DatasetRecord", "Market", "ModelListing", "ResourceRecord"]

log = logging.getLogger(__name__)

COLUMN_TYPES = ("float", "int", "bool", "string", "category", "datetime")
MAX_DATASET_COLUMNS = 100_000


def _aware(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


@dataclass(frozen=True)
class ResourceRecord:
    """A TEE resource and the outcome of its last attestation check."""

    id: str
    name: str
    tee: str
    simulated: bool
    measurement: str
    instance_id: str
    price_per_hour: int
    passing: bool
    claims: dict[str, Any] | None
    error_code: str | None
    error_message: str | None
    verified_at: datetime | None

    @classmethod
    def of(cls, row: TeeResource) -> ResourceRecord:
        """Copy an ORM row."""
        return cls(
            id=row.id,
            name=row.name,
            tee=row.tee,
            simulated=row.simulated,
            measurement=row.measurement,
            instance_id=row.instance_id,
            price_per_hour=int(row.price_per_hour),
            passing=row.passing,
            claims=dict(row.claims) if row.claims else None,
            error_code=row.error_code,
            error_message=row.error_message,
            verified_at=_aware(row.verified_at),
        )


@dataclass(frozen=True)
class ModelListing:
    """A ready model as the catalog shows it, with its enclave's attestation verdict."""

    id: str
    name: str
    version: str
    description: str
    owner: str
    input_columns: list[str]
    output_policy: dict[str, Any] | None
    price_per_row: int
    allowed_measurements: list[str]
    measurement: str | None
    tee: str | None
    attestation_passing: bool
    attestation_reason: str
    uses: int
    rows: int


@dataclass(frozen=True)
class DatasetRecord:
    """A dataset offered for training collaborations: schema and size only."""

    id: str
    name: str
    owner: str
    description: str
    columns: list[dict[str, str]]
    rows: int
    size_bytes: int
    price: int
    created_at: datetime


class Market:
    """Catalog queries and the attestation monitor of the platform's enclave workers."""

    def __init__(
        self,
        db: Database,
        supervisor: EnclaveSupervisor,
        policy: AppraisalPolicy,
        *,
        resource_name: str = "local-enclave",
        price_per_hour: int = 0,
        ttl_seconds: float = 60.0,
    ) -> None:
        self.db = db
        self.supervisor = supervisor
        self.policy = policy
        self.resource_name = resource_name
        self.price_per_hour = check_amount(price_per_hour, "price_per_hour")
        self.ttl_seconds = ttl_seconds
        self._checked_at = float("-inf")

    # -- TEE resources ------------------------------------------------------------------------
    async def check_enclave(self, *, force: bool = False) -> ResourceRecord:
        """Attest the local enclave with a fresh nonce (at most every ``ttl`` s unless ``force``)
        and record the verdict; returns the resource as stored.

        Guarantees: ``passing`` is True only if :func:`verify_evidence` accepted fresh evidence
        under the platform's policy at that moment; any failure is recorded with its code.
        """
        if not force and time.monotonic() - self._checked_at < self.ttl_seconds:
            existing = self._resource_by_name(self.resource_name)
            if existing is not None:
                return existing
        now = datetime.now(UTC)
        passing, claims, code, message = False, None, None, None
        tee, simulated, measurement, instance = "unknown", True, "", ""
        try:
            info = await self.supervisor.info(refresh=True)
            tee, simulated, measurement, instance = (
                info.tee,
                info.simulated,
                info.measurement,
                info.instance_id,
            )
            nonce = os.urandom(32)
            bundle = EvidenceBundle.from_json(await self.supervisor.evidence(nonce))
            result = verify_evidence(bundle, nonce=nonce, policy=self.policy, now=now)
            passing, claims = True, result.claims.to_dict()
        except SealedMLError as exc:
            code, message = exc.code, exc.message
            if not isinstance(exc, AttestationError):
                log.warning("attestation check of %s failed: %s", self.resource_name, exc.code)
        self._checked_at = time.monotonic()
        return self._store_resource(
            tee=tee,
            simulated=simulated,
            measurement=measurement,
            instance_id=instance,
            passing=passing,
            claims=claims,
            error_code=code,
            error_message=message,
            verified_at=now,
        )

    def _resource_by_name(self, name: str) -> ResourceRecord | None:
        with self.db.session() as session:
            row = session.scalar(select(TeeResource).where(TeeResource.name == name))
            return None if row is None else ResourceRecord.of(row)

    def _store_resource(self, **values: Any) -> ResourceRecord:
        with self.db.session() as session:
            row = session.scalar(select(TeeResource).where(TeeResource.name == self.resource_name))
            if row is None:
                row = TeeResource(id=new_id(), name=self.resource_name, price_per_hour=self.price_per_hour)
                session.add(row)
            for key, value in values.items():
                setattr(row, key, value)
            session.flush()
            return ResourceRecord.of(row)

    def resources(self, *, tee: str | None = None, passing: bool | None = None) -> list[ResourceRecord]:
        """Return the registered TEE resources, optionally filtered by TEE type and verdict."""
        query = select(TeeResource).order_by(TeeResource.name)
        if tee is not None:
            query = query.where(TeeResource.tee == tee)
        if passing is not None:
            query = query.where(TeeResource.passing == passing)
        with self.db.session() as session:
            return [ResourceRecord.of(row) for row in session.scalars(query)]

    # -- models -------------------------------------------------------------------------------
    def models(
        self,
        resource: ResourceRecord,
        *,
        query: str | None = None,
        max_price: int | None = None,
        tee: str | None = None,
        passing: bool | None = None,
    ) -> list[ModelListing]:
        """Return ready models matching the filters, each with its attestation verdict.

        ``query`` matches name or description (case-insensitive); ``max_price`` bounds the price
        per row; ``tee`` and ``passing`` filter on the enclave that serves the model.
        """
        jobs = Job.__table__
        usage = (
            select(jobs.c.model_id, func.count().label("uses"), func.sum(jobs.c.rows).label("rows"))
            .where(jobs.c.kind.in_(("predict", "he-predict")))
            .group_by(jobs.c.model_id)
            .subquery()
        )
        statement = (
            select(Model, Account.name, usage.c.uses, usage.c.rows)
            .join(Account, Account.id == Model.owner_id)
            .outerjoin(usage, usage.c.model_id == Model.id)
            .where(Model.status == "ready")
            .order_by(Model.name)
        )
        if query:
            like = f"%{query.lower()}%"
            statement = statement.where(
                func.lower(Model.name).like(like) | func.lower(Model.description).like(like)
            )
        if max_price is not None:
            statement = statement.where(Model.price_per_row <= max_price)
        listings: list[ModelListing] = []
        with self.db.session() as session:
            for model, owner, uses, rows in session.execute(statement):
                ok, reason = self._model_verdict(model, resource)
                if tee is not None and resource.tee != tee:
                    continue
                if passing is not None and ok != passing:
                    continue
                listings.append(
                    ModelListing(
                        id=model.id,
                        name=model.name,
                        version=model.version,
                        description=model.description,
                        owner=owner,
                        input_columns=list(model.input_columns),
                        output_policy=dict(model.output_policy) if model.output_policy else None,
                        price_per_row=int(model.price_per_row),
                        allowed_measurements=list(model.allowed_measurements or []),
                        measurement=model.measurement,
                        tee=resource.tee,
                        attestation_passing=ok,
                        attestation_reason=reason,
                        uses=int(uses or 0),
                        rows=int(rows or 0),
                    )
                )
        return listings

    @staticmethod
    def _model_verdict(model: Model, resource: ResourceRecord) -> tuple[bool, str]:
        if model.mode == "he":
            return True, "encrypted-ML mode: evaluated on the client's CKKS ciphertexts, no enclave involved"
        if not resource.passing:
            return False, f"the enclave fails attestation ({resource.error_code})"
        allowed = list(model.allowed_measurements or []) or [model.measurement]
        if resource.measurement not in allowed:
            return False, "the enclave's measurement is not one the provider allowed for this model"
        return True, "the enclave passes attestation and runs an allowed measurement"

    # -- datasets -----------------------------------------------------------------------------
    def offer_dataset(
        self,
        *,
        owner_id: str,
        name: str,
        description: str,
        columns: list[dict[str, str]],
        rows: int,
        size_bytes: int,
        price: int,
    ) -> DatasetRecord:
        """List a dataset's schema and size (never rows); ``input.conflict`` if the name is taken."""
        check_amount(price, "price")
        if type(rows) is not int or rows < 0 or type(size_bytes) is not int or size_bytes < 0:
            raise InputError("input.malformed", "rows and size_bytes must be non-negative integers")
        if not columns or len(columns) > MAX_DATASET_COLUMNS:
            raise InputError("input.malformed", f"a dataset has 1..{MAX_DATASET_COLUMNS} columns")
        names = [column.get("name") for column in columns]
        if len(set(names)) != len(names):
            raise InputError("input.malformed", "column names must be distinct")
        for column in columns:
            if column.get("type") not in COLUMN_TYPES:
                raise InputError(
                    "input.malformed",
                    f"column {column.get('name')!r} has type {column.get('type')!r}; "
                    f"use one of {', '.join(COLUMN_TYPES)}",
                )
        try:
            with self.db.session() as session:
                row = DatasetListing(
                    id=new_id(),
                    owner_id=owner_id,
                    name=name,
                    description=description,
                    columns=columns,
                    rows=rows,
                    size_bytes=size_bytes,
                    price=price,
                    created_at=utcnow(),
                )
                session.add(row)
                session.flush()
                owner = session.get(Account, owner_id)
                return self._dataset(row, owner.name if owner else "?")
        except IntegrityError as exc:
            raise InputError("input.conflict", f"a dataset named {name!r} is already listed") from exc

    def datasets(self, *, query: str | None = None, max_price: int | None = None) -> list[DatasetRecord]:
        """Return dataset listings matching the filters, by name."""
        statement = (
            select(DatasetListing, Account.name)
            .join(Account, Account.id == DatasetListing.owner_id)
            .order_by(DatasetListing.name)
        )
        if query:
            like = f"%{query.lower()}%"
            statement = statement.where(
                func.lower(DatasetListing.name).like(like) | func.lower(DatasetListing.description).like(like)
            )
        if max_price is not None:
            statement = statement.where(DatasetListing.price <= max_price)
        with self.db.session() as session:
            return [self._dataset(row, owner) for row, owner in session.execute(statement)]

    def dataset(self, dataset_id: str) -> DatasetRecord:
        """Return one dataset listing; ``not_found.listing`` if there is none."""
        with self.db.session() as session:
            row = session.get(DatasetListing, dataset_id)
            if row is None:
                raise NotFoundError("not_found.listing", f"no dataset listing {dataset_id!r}")
            owner = session.get(Account, row.owner_id)
            return self._dataset(row, owner.name if owner else "?")

    @staticmethod
    def _dataset(row: DatasetListing, owner: str) -> DatasetRecord:
        return DatasetRecord(
            id=row.id,
            name=row.name,
            owner=owner,
            description=row.description,
            columns=list(row.columns),
            rows=int(row.rows),
            size_bytes=int(row.size_bytes),
            price=int(row.price),
            created_at=_aware(row.created_at) or utcnow(),
        )

    # -- usage report -------------------------------------------------------------------------
    def report(self, *, account_id: str | None = None) -> list[dict[str, Any]]:
        """Return one row per settled charge: model, provider, payer, rows, amount, job, receipt time.

        With ``account_id`` only charges that account paid or earned are returned (tenants see
        their own business); ``None`` returns everything (admin).
        """
        charges = Charge.__table__
        payer = Account.__table__.alias("payer")
        payee = Account.__table__.alias("payee")
        models = Model.__table__
        statement = (
            select(
                charges.c.job_id,
                charges.c.model_id,
                models.c.name.label("model"),
                payee.c.name.label("provider"),
                payer.c.name.label("payer"),
                charges.c.rows,
                charges.c.amount,
                charges.c.closed_at,
            )
            .join(payer, payer.c.id == charges.c.payer_id)
            .join(payee, payee.c.id == charges.c.payee_id)
            .outerjoin(models, models.c.id == charges.c.model_id)
            .where(charges.c.status == "settled")
            .order_by(charges.c.closed_at, charges.c.job_id)
        )
        if account_id is not None:
            statement = statement.where(
                (charges.c.payer_id == account_id) | (charges.c.payee_id == account_id)
            )
        with self.db.engine.connect() as conn:
            return [
                {
                    "job_id": row.job_id,
                    "model_id": row.model_id,
                    "model": row.model or f"(training on {row.model_id[:8]})",
                    "provider": row.provider,
                    "payer": row.payer,
                    "rows": int(row.rows),
                    "amount": int(row.amount),
                    "settled_at": (_aware(row.closed_at) or utcnow()).isoformat(),
                }
                for row in conn.execute(statement)
            ]
