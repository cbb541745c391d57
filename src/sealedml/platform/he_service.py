"""The platform's rules for encrypted-ML mode (CKKS, TenSEAL): public contexts, HE models, predictions
and encrypted training data.

In this mode there is no enclave: the host evaluates the provider's weights (which it holds in clear)
on the client's ciphertexts, under the client's *public* context. No secret key ever reaches this
module: :func:`sealedml.he.context.load_public_context` refuses a context that carries one before
anything is stored. Every operation either completes or leaves the catalog, the balances and the blob
folder unchanged; every check a request can fail runs before any credit is held. CPU-heavy work
(context loading, homomorphic evaluation) runs in worker threads.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from sealedml.errors import (
    HEError,
    InputError,
    ModelError,
    NotFoundError,
    RequestError,
    SealedMLError,
)
from sealedml.platform.auth import Principal
from sealedml.platform.catalog import JobRecord, ModelRecord
from sealedml.platform.db import HEContext, HEDataset, new_id
from sealedml.platform.service import PlatformService, require_role, run_sync
from sealedml.platform.storage import Area

if TYPE_CHECKING:
    from sealedml.he.context import PublicContext
    from sealedml.he.models import HEModel

__all__ = [
    "HEContextRecord",
    "HEDatasetRecord",
    "HEPredictOutcome",
    "HEService",
]

log = logging.getLogger(__name__)

MAX_CONTEXT_BYTES = 64 * 2**20
"""Largest public context accepted (the evaluation keys of the biggest preset fit well inside)."""
MAX_MODEL_JSON_BYTES = 16 * 2**20
MAX_PREDICT_ROWS = 1_000_000
"""Most rows one HE prediction may declare (each costs its price; slots cap what one ciphertext holds)."""
MAX_CIPHERTEXTS = 100_000
HE_BLOB_AREA = Area.HE
"""HE contexts and training data are blobs named ``he-context-*``/``he-dataset-*`` in this area."""
_CACHE_SIZE = 8


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


@dataclass(frozen=True)
class HEContextRecord:
    """An account's uploaded public context: fingerprint, parameters, blob."""

    id: str
    owner_id: str
    fingerprint: str
    params: dict[str, Any]
    blob_path: str
    size: int
    created_at: datetime

    @classmethod
    def of(cls, row: Any) -> HEContextRecord:
        """Copy a ``he_contexts`` row."""
        return cls(
            id=row.id,
            owner_id=row.owner_id,
            fingerprint=row.fingerprint,
            params=dict(row.params),
            blob_path=row.blob_path,
            size=int(row.size),
            created_at=_aware(row.created_at),
        )


@dataclass(frozen=True)
class HEDatasetRecord:
    """An account's encrypted training data: public sizes and where the ciphertext is."""

    id: str
    owner_id: str
    context_id: str
    fingerprint: str
    rows: int
    features: int
    blob_path: str
    blob_sha256: str
    size: int
    created_at: datetime


@dataclass(frozen=True)
class HEPredictOutcome:
    """A recorded ``he-predict`` job and the ``he-scores`` message only the client can decrypt."""

    job: JobRecord
    scores: bytes
    rows: int


class _LRU:
    """A small thread-safe least-recently-used map (parsed contexts and models are costly to load)."""

    def __init__(self, size: int) -> None:
        self._items: OrderedDict[Any, Any] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def get(self, key: Any) -> Any:
        """Return the cached value or ``None``."""
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: Any, value: Any) -> None:
        """Remember ``value``, evicting the oldest entry past the size."""
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self._size:
                self._items.popitem(last=False)

    def drop(self, key: Any) -> None:
        """Forget ``key``."""
        with self._lock:
            self._items.pop(key, None)


class HEService:
    """Encrypted-ML operations over the platform's catalog, blob store and billing."""

    def __init__(self, service: PlatformService) -> None:
        self.service = service
        self.catalog = service.catalog
        self.db = service.catalog.db
        self.blobs = service.blobs
        self.billing = service.billing
        settings = service.settings
        self.max_context_bytes = min(settings.max_request_bytes, MAX_CONTEXT_BYTES)
        self.max_batch_bytes = settings.max_request_bytes
        self.max_model_bytes = min(settings.max_model_bytes, MAX_MODEL_JSON_BYTES)
        self._contexts = _LRU(_CACHE_SIZE)
        self._models = _LRU(_CACHE_SIZE * 4)

    # -- contexts -------------------------------------------------------------------------------
    async def upload_context(self, caller: Principal, data: bytes) -> tuple[HEContextRecord, bool]:
        """Store the caller's public context once; returns it and whether it was new.

        Guarantees: the bytes are a TenSEAL CKKS context without a secret key, with accepted
        parameters (``he.context_invalid``, ``he.context_has_secret_key``, ``he.params_unsupported``,
        ``input.too_large``); a refused context leaves nothing behind. Uploading the same context
        again stores nothing and returns the existing record.
        """
        from sealedml.he.context import load_public_context

        context = await run_sync(load_public_context, data, max_bytes=self.max_context_bytes)
        existing = await run_sync(self._find_context, caller.id, context.fingerprint)
        if existing is not None:
            self._contexts.put(existing.id, context)
            return existing, False
        context_id = new_id()
        blob = await run_sync(
            self.blobs.write_bytes, HE_BLOB_AREA, f"he-context-{context_id}.bin", data, durable=True
        )
        try:
            record = await run_sync(self._insert_context, context_id, caller.id, context, blob.path)
        except BaseException:
            await run_sync(self.blobs.delete, blob.path)
            raise
        if record is None:  # the same context arrived concurrently: keep the first
            await run_sync(self.blobs.delete, blob.path)
            record = await run_sync(self._find_context, caller.id, context.fingerprint)
            if record is None:
                raise InputError("input.conflict", "the context changed while it was stored; upload it again")
            return record, False
        self._contexts.put(record.id, context)
        log.info(
            "account %s uploaded HE context %s (%d bytes)", caller.id, context.fingerprint[:16], len(data)
        )
        return record, True

    def _find_context(self, owner_id: str, fingerprint: str) -> HEContextRecord | None:
        with self.db.session() as session:
            row = session.scalars(
                select(HEContext).where(HEContext.owner_id == owner_id, HEContext.fingerprint == fingerprint)
            ).one_or_none()
            return None if row is None else HEContextRecord.of(row)

    def _insert_context(
        self, context_id: str, owner_id: str, context: PublicContext, blob_path: str
    ) -> HEContextRecord | None:
        try:
            with self.db.session() as session:
                row = HEContext(
                    id=context_id,
                    owner_id=owner_id,
                    fingerprint=context.fingerprint,
                    params=context.params.to_dict(),
                    blob_path=blob_path,
                    size=context.size,
                )
                session.add(row)
                session.flush()
                return HEContextRecord.of(row)
        except IntegrityError:
            return None

    async def context_of(self, caller: Principal, fingerprint: str) -> HEContextRecord:
        """Return the caller's context with ``fingerprint``; ``he.context_unknown`` for any other
        (including another account's: their existence is not revealed)."""
        record = await run_sync(self._find_context, caller.id, fingerprint)
        if record is None:
            raise HEError(
                "he.context_unknown", "this account has not uploaded a context with that fingerprint"
            )
        return record

    async def list_contexts(self, caller: Principal) -> list[HEContextRecord]:
        """Return the caller's contexts, oldest first."""

        def query() -> list[HEContextRecord]:
            with self.db.session() as session:
                rows = session.scalars(
                    select(HEContext).where(HEContext.owner_id == caller.id).order_by(HEContext.created_at)
                )
                return [HEContextRecord.of(row) for row in rows]

        return await run_sync(query)

    async def _load_context(self, record: HEContextRecord) -> PublicContext:
        cached = self._contexts.get(record.id)
        if cached is not None:
            return cached  # type: ignore[no-any-return]
        from sealedml.he.context import load_public_context

        def load() -> PublicContext:
            data = self.blobs.read_bytes(record.blob_path)
            return load_public_context(data, max_bytes=max(self.max_context_bytes, len(data)))

        context = await run_sync(load)
        self._contexts.put(record.id, context)
        return context

    # -- models -----------------------------------------------------------------------------------
    def _parse_model(self, digest: str, data: bytes) -> HEModel:
        cached = self._models.get(digest)
        if cached is not None:
            return cached  # type: ignore[no-any-return]
        from sealedml.he.models import HEModel

        model = HEModel.from_json(data, max_bytes=self.max_model_bytes)
        self._models.put(digest, model)
        return model

    async def upload_model(
        self, caller: Principal, model_id: str, data: bytes, *, query_budget: int | None = None
    ) -> ModelRecord:
        """Store the provider's HE model (``HEModel`` JSON) for ``model_id`` and make it ``ready``.

        Guarantees: only the owner (a provider) can; the JSON parses and passes ``HEModel.from_json``
        (``he.model_invalid``); its input columns are the model's registered ones
        (``input.schema_mismatch``); a model that already holds an enclave blob is refused
        (``request.invalid``). On any failure nothing changes. The platform holds these weights in
        clear: that is what this mode reveals to the host.
        """
        require_role(caller, "provider")
        if len(data) > self.max_model_bytes:
            raise InputError("input.too_large", f"the HE model exceeds {self.max_model_bytes} bytes")
        if query_budget is not None and not 0 <= query_budget <= 10**15:
            raise InputError("input.malformed", "query_budget must be 0..10^15 rows")
        model = await self.service.owned_model(caller, model_id)
        digest = hashlib.sha256(data).hexdigest()
        he_model = await run_sync(self._parse_model, digest, data)
        if list(he_model.input_columns) != list(model.input_columns):
            raise InputError(
                "input.schema_mismatch",
                f"the HE model takes columns {list(he_model.input_columns)[:5]}..., the registered model "
                f"{list(model.input_columns)[:5]}...",
            )
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise HEError("he.model_invalid", "the HE model JSON is not UTF-8") from None
        updated = await run_sync(
            self.catalog.set_he_model,
            model_id,
            caller.id,
            model_json=text,
            model_sha256=digest,
            preset=he_model.preset,
            query_budget=query_budget,
        )
        if updated is None:
            raise NotFoundError("not_found.model", "no such model")
        return updated

    async def he_model(self, caller: Principal, model_id: str) -> tuple[ModelRecord, HEModel]:
        """Return a visible HE model and its parsed weights (for the server's own use only).

        ``not_found.model`` if the caller may not see it, ``request.invalid`` for a TEE model,
        ``model.not_provisioned`` while its HE weights are not uploaded.
        """
        model = await self.service.visible_model(caller, model_id)
        if model.mode != "he":
            raise RequestError(
                "request.invalid",
                "this model runs in the enclave (mode tee): predict with POST /v1/models/{id}/predict",
            )
        found = await run_sync(self.catalog.get_he_model, model_id)
        if found is None or model.status != "ready":
            raise ModelError("model.not_provisioned", "the provider has not uploaded the HE model yet")
        record, text = found
        data = text.encode("utf-8")
        digest = record.model_sha256 or hashlib.sha256(data).hexdigest()
        return record, await run_sync(self._parse_model, digest, data)

    # -- predictions ------------------------------------------------------------------------------
    def _precheck_batch(
        self, model: ModelRecord, he_model: HEModel, context: PublicContext, body: bytes
    ) -> int:
        """Check a ``he-batch`` message completely without evaluating it; return its row count.

        Framing and digests, the context it names, the model it was made for, its columns, its
        layout ("columns" or "rows") and ciphertext counts, the context's depth and keys (a rows
        batch needs Galois keys: ``he.context_invalid``), and that every ciphertext is a fresh vector
        of exactly the size its layout prescribes under ``context`` (the evaluation itself can then
        only fail on our side).
        """
        from sealedml.he.evaluate import check_batch, check_vectors

        message = check_batch(
            he_model, context, body, max_bytes=self.max_batch_bytes, max_rows=MAX_PREDICT_ROWS
        )
        named = message.header.get("model")
        if named is not None and named not in (model.id, model.name):
            raise RequestError("request.invalid", "the batch was encrypted for another model")
        check_vectors(he_model, context, message)
        return message.rows

    async def predict(
        self, caller: Principal, model_id: str, fingerprint: str, body: bytes
    ) -> HEPredictOutcome:
        """Evaluate an HE model on the caller's encrypted batch and record the job.

        Guarantees: only data owners predict; every check a request can fail (model, context,
        framing, digests, columns, sizes, levels, query budget, credit) runs before credit is held,
        so a refused request changes nothing. Then ``rows x price_per_row`` is held, the batch is
        evaluated in a worker thread, and the job row (kind ``he-predict``), the client's usage,
        the stored scores and the settled charge are written together; if anything fails after the
        hold, the charge is refunded and nothing else is stored.
        """
        require_role(caller, "data_owner")
        model, he_model = await self.he_model(caller, model_id)
        record = await self.context_of(caller, fingerprint)
        context = await self._load_context(record)
        rows = await run_sync(self._precheck_batch, model, he_model, context, body)
        if model.he_query_budget is not None:
            used = await run_sync(self.catalog.usage_of, model_id, caller.id)
            if used + rows > model.he_query_budget:
                raise ModelError(
                    "model.budget_exhausted",
                    f"this model allows {model.he_query_budget} rows per client; {used} were used",
                )
        job_id = new_id()
        await run_sync(
            self.billing.hold,
            job_id=job_id,
            request_id=f"he-{job_id}",
            payer_id=caller.id,
            payee_id=model.owner_id,
            model_id=model_id,
            rows=rows,
            price_per_row=model.price_per_row,
        )
        try:
            from sealedml.he.evaluate import evaluate_batch

            scores, evaluated = await run_sync(
                evaluate_batch,
                he_model,
                context,
                body,
                max_bytes=self.max_batch_bytes,
                max_rows=MAX_PREDICT_ROWS,
            )
            if evaluated != rows:
                raise HEError("he.shape_mismatch", f"{evaluated} rows were evaluated, {rows} declared")
            receipt = {
                "mode": "he",
                "job": job_id,
                "model": model_id,
                "model_sha256": model.model_sha256,
                "context": fingerprint,
                "rows": rows,
                "request_sha256": hashlib.sha256(body).hexdigest(),
                "response_sha256": hashlib.sha256(scores).hexdigest(),
            }
            job = await run_sync(self._store_job, job_id, caller, model, rows, receipt, scores)
        except BaseException as exc:
            reason = exc.code if isinstance(exc, SealedMLError) else type(exc).__name__
            await run_sync(self.billing.refund, job_id, f"job failed: {reason}")
            raise
        return HEPredictOutcome(job=job, scores=scores, rows=rows)

    def _store_job(
        self,
        job_id: str,
        caller: Principal,
        model: ModelRecord,
        rows: int,
        receipt: dict[str, Any],
        scores: bytes,
    ) -> JobRecord:
        stored = self.blobs.write_bytes(Area.RESULTS, f"{job_id}.he", scores)
        try:
            return self.catalog.record_he_job(
                job_id=job_id,
                owner_id=caller.id,
                model_id=model.id,
                rows=rows,
                receipt=receipt,
                result_path=stored.path,
                query_budget=model.he_query_budget,
                in_transaction=lambda conn: self.billing.settle(conn, job_id),
            )
        except BaseException:
            self.blobs.delete(stored.path)
            raise

    # -- encrypted training data ------------------------------------------------------------------
    async def upload_dataset(self, caller: Principal, body: bytes) -> HEDatasetRecord:
        """Store encrypted training data (``he-train-data``) under one of the caller's contexts.

        Guarantees: the message is well framed, names a context the caller uploaded
        (``he.context_unknown``), is within the training limits (``input.too_large``) and every
        ciphertext loads under that context (``he.ciphertext_invalid``/``he.shape_mismatch``);
        otherwise nothing is stored. Only its owner can ever use or see it.
        """
        message = await run_sync(self._decode, body, "he-train-data")
        record = await self.context_of(caller, message.context)
        context = await self._load_context(record)
        rows, features = await run_sync(self._check_training_data, context, message)
        dataset_id = new_id()
        blob = await run_sync(
            self.blobs.write_bytes, HE_BLOB_AREA, f"he-dataset-{dataset_id}.bin", body, durable=True
        )

        def insert() -> HEDatasetRecord:
            with self.db.session() as session:
                row = HEDataset(
                    id=dataset_id,
                    owner_id=caller.id,
                    context_id=record.id,
                    rows=int(rows),
                    features=int(features),
                    blob_path=blob.path,
                    blob_sha256=blob.sha256,
                    size=blob.size,
                )
                session.add(row)
                session.flush()
                return self._dataset_record(row, record.fingerprint)

        try:
            return await run_sync(insert)
        except BaseException:
            await run_sync(self.blobs.delete, blob.path)
            raise

    @staticmethod
    def _check_training_data(context: PublicContext, message: Any) -> tuple[int, int]:
        """Check an ``he-train-data`` message against its context: limits, layout and every vector."""
        from sealedml.he.context import load_vector
        from sealedml.he.training import TRAIN_DEPTH, TRAIN_LIMITS

        rows = message.rows
        if rows > TRAIN_LIMITS["rows"]:
            raise InputError("input.too_large", f"{rows} training rows (max {TRAIN_LIMITS['rows']})")
        width = message.int_field("features", minimum=1, maximum=TRAIN_LIMITS["features"])
        size = min(rows, context.params.slots)
        groups = -(-rows // size)
        if message.int_field("size", minimum=1) != size or message.int_field("groups", minimum=1) != groups:
            raise HEError(
                "he.shape_mismatch", "the training data's groups do not match its rows and the context"
            )
        if len(message.ciphertexts) != groups * (width + 2):
            raise HEError(
                "he.shape_mismatch",
                f"{len(message.ciphertexts)} ciphertexts for {groups} group(s) x "
                f"({width} features + bias + label)",
            )
        if context.params.depth < TRAIN_DEPTH:
            raise HEError(
                "he.depth_exceeded",
                f"training needs {TRAIN_DEPTH} levels, the context has {context.params.depth} "
                "(use preset 'train')",
            )
        for index, ciphertext in enumerate(message.ciphertexts):
            load_vector(context, ciphertext, size=size, index=index)
        return rows, width

    def _decode(self, body: bytes, kind: str) -> Any:
        from sealedml.he.wire import decode_message

        return decode_message(
            body, expected_kind=kind, max_bytes=self.max_batch_bytes, max_ciphertexts=MAX_CIPHERTEXTS
        )

    @staticmethod
    def _dataset_record(row: Any, fingerprint: str) -> HEDatasetRecord:
        return HEDatasetRecord(
            id=row.id,
            owner_id=row.owner_id,
            context_id=row.context_id,
            fingerprint=fingerprint,
            rows=int(row.rows),
            features=int(row.features),
            blob_path=row.blob_path,
            blob_sha256=row.blob_sha256,
            size=int(row.size),
            created_at=_aware(row.created_at),
        )

    def _datasets(self, owner_id: str, dataset_id: str | None = None) -> list[HEDatasetRecord]:
        with self.db.session() as session:
            query = (
                select(HEDataset, HEContext.fingerprint)
                .join(HEContext, HEContext.id == HEDataset.context_id)
                .where(HEDataset.owner_id == owner_id)
                .order_by(HEDataset.created_at)
            )
            if dataset_id is not None:
                query = query.where(HEDataset.id == dataset_id)
            return [self._dataset_record(row, fingerprint) for row, fingerprint in session.execute(query)]

    async def list_datasets(self, caller: Principal) -> list[HEDatasetRecord]:
        """Return the caller's encrypted training datasets, oldest first."""
        return await run_sync(self._datasets, caller.id)

    async def dataset(self, caller: Principal, dataset_id: str) -> HEDatasetRecord:
        """Return one of the caller's datasets; ``not_found.dataset`` for anyone else's."""
        found = await run_sync(self._datasets, caller.id, dataset_id)
        if not found:
            raise NotFoundError("not_found.dataset", "no such encrypted dataset")
        return found[0]

    async def delete_dataset(self, caller: Principal, dataset_id: str) -> None:
        """Delete one of the caller's datasets and its ciphertext."""
        record = await self.dataset(caller, dataset_id)

        def remove() -> None:
            with self.db.session() as session:
                session.execute(delete(HEDataset).where(HEDataset.id == record.id))
            self.blobs.delete(record.blob_path)

        await run_sync(remove)

    async def gradient(self, caller: Principal, dataset_id: str, weights: bytes) -> bytes:
        """Compute one encrypted gradient of the caller's dataset at the caller's encrypted weights.

        Guarantees: owner only (``not_found.dataset`` otherwise); the weights are a ``he-train-weights``
        message under the dataset's context (``he.context_mismatch``); the answer is a
        ``he-train-gradient`` message only the owner can decrypt. Nothing is stored or charged.
        """
        record = await self.dataset(caller, dataset_id)
        message = await run_sync(self._decode, weights, "he-train-weights")
        if message.context != record.fingerprint:
            raise HEError(
                "he.context_mismatch",
                f"the weights are under context {message.context[:16]}, the dataset under "
                f"{record.fingerprint[:16]}",
            )
        context_record = HEContextRecord(
            id=record.context_id,
            owner_id=caller.id,
            fingerprint=record.fingerprint,
            params={},
            blob_path=await run_sync(self._context_path, record.context_id),
            size=0,
            created_at=record.created_at,
        )
        context = await self._load_context(context_record)
        from sealedml.he.training import gradient_step

        def step() -> bytes:
            data = self.blobs.read_bytes(record.blob_path)
            return gradient_step(context, data, weights, max_bytes=max(self.max_batch_bytes, len(data)))

        return await run_sync(step)

    def _context_path(self, context_id: str) -> str:
        with self.db.session() as session:
            row = session.get(HEContext, context_id)
            if row is None:
                raise HEError("he.context_unknown", "the dataset's context is no longer stored")
            return str(row.blob_path)
