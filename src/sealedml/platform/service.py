"""The platform's rules: who may do what, in which order, and what is stored when.

Every operation here handles ciphertext only. Request envelopes are *peeked* (their public header
parsed for routing), never opened; model uploads are checked to start like a stream envelope,
never decrypted. Each operation either completes or leaves the catalog and blob folder unchanged.
Blocking database and file work runs in worker threads.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import anyio.to_thread

from sealedml.crypto.envelope import MAX_HEADER
from sealedml.crypto.request import RequestHeader, peek_request
from sealedml.crypto.stream import read_stream_header
from sealedml.errors import (
    AuthError,
    CryptoError,
    EnclaveError,
    InputError,
    ModelError,
    NotFoundError,
    RequestError,
    SealedMLError,
)
from sealedml.platform.auth import Authenticator, Principal
from sealedml.platform.billing import Billing, check_amount
from sealedml.platform.catalog import Catalog, JobRecord, ModelRecord, PredictTarget
from sealedml.platform.db import new_id
from sealedml.platform.enclave_manager import EnclaveSupervisor, LoadMaterial
from sealedml.platform.ledger_service import PlatformLedger
from sealedml.platform.settings import Settings
from sealedml.platform.storage import Area, BlobStore

if TYPE_CHECKING:
    from sealedml.tee.client import PredictResult, ProvisionResult

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

MODEL_CONTENT_TYPE = "model/onnx"
_ENVELOPE_FIXED = 9  # magic(3) version(1) kind(1) header length(4)


async def run_sync(func: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run blocking ``func`` in a worker thread and return its result."""
    return await anyio.to_thread.run_sync(partial(func, *args, **kwargs))


@dataclass(frozen=True)
class ProvisionOutcome:
    """A provisioned model with the enclave's answer for the provider."""

    model: ModelRecord
    result: ProvisionResult
    ledger: dict[str, Any] | None = None


@dataclass(frozen=True)
class PredictOutcome:
    """A recorded job with the enclave's answer for the data owner."""

    job: JobRecord
    result: PredictResult
    ledger: dict[str, Any] | None = None


def require_role(principal: Principal, *roles: str) -> None:
    """Raise ``auth.forbidden`` unless ``principal`` has one of ``roles``."""
    if principal.role not in roles:
        raise AuthError("auth.forbidden", f"this action needs the role {' or '.join(roles)}")


def check_request(envelope: bytes, *, op: str, model_id: str) -> RequestHeader:
    """Peek at a sealed request and check that it is an ``op`` request for ``model_id``.

    Raises ``crypto.*`` if it is not a request envelope and ``request.invalid`` if it is meant for
    another operation or model. The header is not authenticated here; the enclave checks it again.
    """
    header = peek_request(envelope)
    if header.op != op:
        raise RequestError("request.invalid", f"this endpoint takes {op!r} requests, got {header.op!r}")
    if header.model != model_id:
        raise RequestError("request.invalid", "the request was sealed for another model")
    return header


async def checked_model_stream(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Pass ``chunks`` through once their start is a valid ``model/onnx`` stream envelope header.

    Raises ``crypto.malformed`` (or ``crypto.unsupported_version``) as soon as the header is known
    to be bad; nothing is yielded before the header checked out.
    """
    async for chunk in checked_stream(chunks, (MODEL_CONTENT_TYPE,), "a model upload"):
        yield chunk


async def checked_stream(
    chunks: AsyncIterator[bytes], content_types: tuple[str, ...], what: str
) -> AsyncIterator[bytes]:
    """Pass ``chunks`` through once their start is a stream envelope of one of ``content_types``.

    Raises ``crypto.malformed`` (or ``crypto.unsupported_version``) as soon as the header is known
    to be bad; nothing is yielded before the header checked out. Only the public header is read.
    """
    buffer = bytearray()
    checked = False
    async for chunk in chunks:
        if checked:
            yield chunk
            continue
        buffer += chunk
        if len(buffer) < _ENVELOPE_FIXED:
            continue
        header_len = int.from_bytes(buffer[5:9], "big")
        if header_len <= MAX_HEADER and len(buffer) < _ENVELOPE_FIXED + header_len:
            continue
        _check_stream_header(bytes(buffer), content_types, what)
        checked = True
        yield bytes(buffer)
        buffer = bytearray()
    if not checked:
        _check_stream_header(bytes(buffer), content_types, what)
        if buffer:
            yield bytes(buffer)


def _check_stream_header(data: bytes, content_types: tuple[str, ...], what: str) -> None:
    header = read_stream_header(data)
    if header.content_type not in content_types:
        raise CryptoError(
            "crypto.malformed", f"{what} must be a stream envelope of type {' or '.join(content_types)}"
        )


class PlatformService:
    """The platform's operations, composed from the catalog, blob store, auth and enclave."""

    def __init__(
        self,
        settings: Settings,
        catalog: Catalog,
        blobs: BlobStore,
        auth: Authenticator,
        enclave: EnclaveSupervisor,
        ledger: PlatformLedger | None = None,
    ) -> None:
        self.settings = settings
        self.catalog = catalog
        self.blobs = blobs
        self.auth = auth
        self.enclave = enclave
        self.billing = Billing(catalog.db)
        self.ledger = ledger

    async def log_receipt(self, receipt: dict[str, Any], signature: str) -> dict[str, Any] | None:
        """Append an enclave-signed receipt to the transparency log; returns its proofs.

        A storage failure is logged and returns None: the receipt stays with its job and is logged
        at the next start (:meth:`PlatformLedger.reconcile`); clients that check inclusion notice.
        """
        if self.ledger is None:
            return None
        try:
            return await run_sync(self.ledger.log_receipt, receipt, signature)
        except SealedMLError as exc:
            log.error("could not log the receipt of job %s: %s", receipt.get("job"), exc.code)
            return None

    # -- accounts -----------------------------------------------------------------------------
    async def authenticate(self, token: str) -> Principal:
        """Resolve a bearer token (from memory when cached); raises ``auth.invalid_token``."""
        principal = self.auth.cached(token)
        return principal if principal is not None else await run_sync(self.auth.lookup, token)

    async def create_account(self, caller: Principal, name: str, role: str) -> tuple[Principal, str]:
        """Create an account (admin only); returns it with its one-time token."""
        require_role(caller, "admin")
        principal, token = await run_sync(self.auth.create_account, name, role)
        log.info("account %s (%s) created by %s", principal.id, role, caller.id)
        return principal, token

    async def grant_credits(self, caller: Principal, account_id: str, amount: int) -> int:
        """Add credits to an account (admin only); returns the new balance."""
        require_role(caller, "admin")
        balance = await run_sync(self.billing.grant, account_id, amount)
        log.info("granted %d credits to %s (by %s)", amount, account_id, caller.id)
        return balance

    async def balance(self, caller: Principal) -> int:
        """Return the caller's own balance."""
        return await run_sync(self.billing.balance, caller.id)

    # -- models -------------------------------------------------------------------------------
    async def create_model(
        self,
        caller: Principal,
        *,
        name: str,
        description: str,
        input_columns: list[str],
        output_policy: dict[str, Any] | None,
        version: str = "1",
        price_per_row: int = 0,
        allowed_measurements: tuple[str, ...] = (),
        mode: str = "tee",
    ) -> ModelRecord:
        """Register a model owned by ``caller`` (provider only), status ``created``.

        ``price_per_row`` must be 0..MAX_CREDIT credits (``billing.invalid_amount`` otherwise).
        ``mode`` is ``tee`` (encrypted ONNX run in the enclave) or ``he`` (weights evaluated on the
        client's CKKS ciphertexts).
        """
        require_role(caller, "provider")
        check_amount(price_per_row, "price_per_row")
        return await run_sync(
            self.catalog.create_model,
            owner_id=caller.id,
            name=name,
            description=description,
            input_columns=input_columns,
            output_policy=output_policy,
            version=version,
            price_per_row=price_per_row,
            allowed_measurements=allowed_measurements,
            mode=mode,
        )

    async def update_listing(self, caller: Principal, model_id: str, changes: dict[str, Any]) -> ModelRecord:
        """Change the caller's model listing; a price must be 0..MAX_CREDIT. Nothing else changes."""
        require_role(caller, "provider")
        if "price_per_row" in changes:
            check_amount(changes["price_per_row"], "price_per_row")
        await self.owned_model(caller, model_id)
        updated = await run_sync(self.catalog.update_listing, model_id, caller.id, changes)
        if updated is None:
            raise NotFoundError("not_found.model", "no such model")
        return updated

    async def visible_model(self, caller: Principal, model_id: str) -> ModelRecord:
        """Return the model if ``caller`` may see it; otherwise ``not_found.model``."""
        model = await run_sync(self.catalog.get_model, model_id)
        if model is None or not model.visible_to(caller.id):
            raise NotFoundError("not_found.model", "no such model")
        return model

    async def owned_model(self, caller: Principal, model_id: str) -> ModelRecord:
        """Return the model if ``caller`` owns it: ``auth.forbidden`` if it is merely visible,
        ``not_found.model`` if it is not even that.
        """
        model = await self.visible_model(caller, model_id)
        if model.owner_id != caller.id:
            raise AuthError("auth.forbidden", "only the model's owner may do this")
        return model

    async def list_models(self, caller: Principal) -> list[ModelRecord]:
        """Return ready models plus the caller's own models of any status."""
        return await run_sync(self.catalog.list_models, caller.id)

    async def upload_blob(
        self, caller: Principal, model_id: str, chunks: AsyncIterator[bytes], *, declared_size: int | None
    ) -> ModelRecord:
        """Store an encrypted model upload, replacing any previous one atomically.

        Guarantees: the body is bounded by ``max_model_bytes`` (``input.too_large``, checked on the
        declared size first) and must start with a ``model/onnx`` stream envelope
        (``crypto.malformed``); on any failure the catalog and blob folder are unchanged. On success
        the status is ``uploaded`` and any sealed key is cleared (the provider provisions again).
        """
        require_role(caller, "provider")
        previous = await self.owned_model(caller, model_id)
        limit = self.settings.max_model_bytes
        if declared_size is not None and declared_size > limit:
            raise InputError("input.too_large", f"the model exceeds the limit of {limit} bytes")
        name = f"{model_id}-{new_id()}.sml"
        blob = await self.blobs.write_stream(Area.MODELS, name, checked_model_stream(chunks), limit=limit)
        try:
            updated = await run_sync(self.catalog.set_blob, model_id, caller.id, blob)
        except BaseException:
            await run_sync(self.blobs.delete, blob.path)
            raise
        if updated is None:  # deleted while uploading
            await run_sync(self.blobs.delete, blob.path)
            raise NotFoundError("not_found.model", "no such model")
        model, old_path = updated
        if old_path is not None and old_path != blob.path:
            await run_sync(self.blobs.delete, old_path)
        if previous.status == "ready" or self.enclave.is_loaded(model_id):
            await self.enclave.unload(model_id)  # the old model must not stay usable
        return model

    async def provision(self, caller: Principal, model_id: str, envelope: bytes) -> ProvisionOutcome:
        """Relay the provider's sealed model key to the enclave and store the sealed key it returns.

        Guarantees: only the owner can provision; the request must be a ``provision`` request for
        this model; the catalog changes only if the enclave accepted it and the blob did not
        change meanwhile (``input.conflict`` otherwise).
        """
        require_role(caller, "provider")
        check_request(envelope, op="provision", model_id=model_id)
        model = await self.owned_model(caller, model_id)
        if model.mode != "tee":
            raise RequestError(
                "request.invalid", "this is an encrypted-ML (HE) model: it has no key for an enclave"
            )
        if model.status not in ("uploaded", "ready") or model.blob_path is None or model.blob_sha256 is None:
            raise ModelError("model.not_uploaded", "upload the encrypted model before provisioning its key")
        blob = await run_sync(self.blobs.read_bytes, model.blob_path)
        result = await self.enclave.provision(model_id, caller.id, envelope, blob)
        measurement = result.receipt.get("measurement")
        if not isinstance(measurement, str):
            measurement = (await self.enclave.info()).measurement
        updated = await run_sync(
            self.catalog.mark_ready,
            model_id,
            expected_blob_sha256=model.blob_sha256,
            sealed_key=result.sealed_key,
            model_sha256=result.model_sha256,
            measurement=measurement,
        )
        if updated is None:
            await self.enclave.unload(model_id)
            raise InputError("input.conflict", "the model changed while it was provisioned; provision again")
        ledger = await self.log_receipt(result.receipt, result.signature)
        return ProvisionOutcome(model=updated, result=result, ledger=ledger)

    async def delete_model(self, caller: Principal, model_id: str) -> None:
        """Delete the caller's model, its encrypted blob and its copy in the enclave."""
        model = await self.owned_model(caller, model_id)
        deleted = await run_sync(self.catalog.delete_model, model.id)
        if deleted is not None and deleted.blob_path is not None:
            await run_sync(self.blobs.delete, deleted.blob_path)
        await self.enclave.unload(model_id)

    # -- predictions and jobs -----------------------------------------------------------------
    async def predict(self, caller: Principal, model_id: str, envelope: bytes) -> PredictOutcome:
        """Relay a sealed prediction request and record the job.

        Guarantees: only data owners predict; the request must be a ``predict`` request for this
        model, whose status is ``ready`` (``model.not_provisioned``), with a request id never
        recorded before (``request.replayed``). Job row, usage counter, response envelope and the
        settled charge are stored together, or not at all. The price (declared rows x
        price_per_row) is held before the enclave runs (``billing.insufficient_credit`` if the
        balance does not cover it) and refunded if the job fails.
        """
        require_role(caller, "data_owner")
        header = check_request(envelope, op="predict", model_id=model_id)
        if header.rows is None:
            raise RequestError(
                "request.invalid", "a predict request must declare its row count (upgrade the client)"
            )
        model, replayed = await run_sync(self.catalog.prediction_context, model_id, header.request_id)
        if model is None:
            raise NotFoundError("not_found.model", "no such model")
        if model.status != "ready" or model.sealed_key is None or model.blob_path is None:
            raise ModelError("model.not_provisioned", "the model's key has not been provisioned yet")
        if replayed:
            raise RequestError("request.replayed", "this request id was already used")
        job_id = new_id()
        rows = header.rows
        assert rows is not None
        await run_sync(
            self.billing.hold,
            job_id=job_id,
            request_id=header.request_id,
            payer_id=caller.id,
            payee_id=model.owner_id,
            model_id=model_id,
            rows=rows,
            price_per_row=model.price_per_row,
        )
        try:
            result = await self.enclave.predict(
                model_id, caller.id, job_id, envelope, partial(self._load_material, model)
            )
            if result.rows != rows:  # the enclave enforces this; a mismatch means a broken peer
                raise EnclaveError("enclave.protocol", "the enclave reported another row count than declared")
            job = await run_sync(self._store_job, job_id, caller, model_id, header.request_id, result)
        except BaseException as exc:
            reason = exc.code if isinstance(exc, SealedMLError) else type(exc).__name__
            await run_sync(self.billing.refund, job_id, f"job failed: {reason}")
            raise
        ledger = await self.log_receipt(result.receipt, result.signature)
        return PredictOutcome(job=job, result=result, ledger=ledger)

    async def _load_material(self, model: PredictTarget) -> LoadMaterial:
        assert model.sealed_key is not None and model.blob_path is not None

        def read() -> LoadMaterial:
            """Read the sealed key, encrypted blob and usage counters (blocking)."""
            try:
                blob = self.blobs.read_bytes(model.blob_path)  # type: ignore[arg-type]
            except FileNotFoundError:  # replaced or deleted since this request looked it up
                raise ModelError("model.not_provisioned", "the model changed; try again") from None
            return LoadMaterial(model.sealed_key, blob, self.catalog.usage(model.id))  # type: ignore[arg-type]

        return await run_sync(read)

    def _store_job(
        self, job_id: str, caller: Principal, model_id: str, request_id: str, result: PredictResult
    ) -> JobRecord:
        stored = self.blobs.write_bytes(Area.RESULTS, f"{job_id}.sml", result.response)
        try:
            return self.catalog.record_job(
                job_id=job_id,
                owner_id=caller.id,
                model_id=model_id,
                request_id=request_id,
                rows=result.rows,
                receipt=result.receipt,
                signature=result.signature,
                result_path=stored.path,
                usage=result.usage,
                in_transaction=lambda conn: self.billing.settle(conn, job_id),
            )
        except BaseException:
            self.blobs.delete(stored.path)
            raise

    async def list_jobs(self, caller: Principal, *, limit: int) -> list[JobRecord]:
        """Return the caller's own jobs, newest first."""
        return await run_sync(self.catalog.list_jobs, caller.id, limit=limit)

    async def get_job(self, caller: Principal, job_id: str) -> JobRecord:
        """Return a job the caller submitted, or a training job that uses one of its datasets;
        every other job is ``not_found.job``."""
        job = await run_sync(self.catalog.get_job, job_id)
        if job is None:
            raise NotFoundError("not_found.job", "no such job")
        if job.owner_id != caller.id and not (
            job.kind == "train" and await run_sync(self.catalog.is_job_party, job_id, caller.id)
        ):
            raise NotFoundError("not_found.job", "no such job")
        return job

    async def job_result(self, caller: Principal, job_id: str) -> tuple[JobRecord, bytes]:
        """Return the caller's own job and its stored response envelope (only the submitter's key
        opens it; ``not_found.job`` for anyone else and for a job without a result yet)."""
        job = await self.get_job(caller, job_id)
        if job.owner_id != caller.id or not job.result_path:
            raise NotFoundError("not_found.job", "no result is stored for this job")
        try:
            data = await run_sync(self.blobs.read_bytes, job.result_path)
        except FileNotFoundError as exc:
            raise NotFoundError("not_found.job", "the job's result is no longer stored") from exc
        return job, data
