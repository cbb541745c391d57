"""Confidential training on the untrusted host: datasets, job specs, approvals, the job runner.

The host stores and relays ciphertext and runs the parts of training that need no data (the
TwoFold split, see ``docs/architecture.md``): it validates job specs with the same
:mod:`sealedml.training_spec` the enclave runs again, tracks which owner approved which job, queues
and schedules jobs, charges their price, stores the encrypted model, the grants and the receipt,
and publishes a trained model to the catalog. Row data, dataset keys, the model key and the
metrics never pass through it in clear.

A training job moves through these states (``jobs.status``):

* ``awaiting_approval`` — submitted; some dataset owner has not approved the spec digest on the
  current enclave instance yet (approvals live in enclave memory: a restart forgets them);
* ``queued`` — every owner approved; the runner picks it up as soon as its sealed request is fresh
  (sealed to the current enclave key and younger than the enclave's freshness window — the
  submitter's SDK re-seals it while it waits);
* ``running`` — the enclave trains it (phases ``loading_datasets``, ``training``, ``storing``);
* ``done``, ``failed`` (with the error code and message) or ``cancelled``.

One job trains at a time, in a background task of the platform's event loop, never inside an HTTP
request. The price (the market price of each dataset the submitter does not own) is held at
submission, settled with the finished job, refunded if it fails or is cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from sealedml.crypto.request import key_id, peek_request
from sealedml.enclave.framing import MAX_FRAME
from sealedml.errors import (
    AuthError,
    EnclaveError,
    InputError,
    NotFoundError,
    RequestError,
    SealedMLError,
)
from sealedml.platform.auth import Principal
from sealedml.platform.db import new_id
from sealedml.platform.enclave_manager import DatasetLoader, DatasetMaterial
from sealedml.platform.service import PlatformService, check_request, checked_stream, run_sync
from sealedml.platform.storage import Area
from sealedml.platform.training_store import (
    DatasetUpdate,
    StoredDataset,
    TrainingJobRecord,
    TrainingStore,
)
from sealedml.training_spec import JobSpec, parse_job_spec, spec_digest

if TYPE_CHECKING:
    from sealedml.platform.market import DatasetRecord, Market
    from sealedml.tee.client import EnclaveInfo, ProvisionDatasetResult, TrainResult

__all__ = [
    "DATASET_CONTENT_TYPES",
    "PENDING_STATUSES",
    "TrainingService",
    "TrainingSettings",
]

log = logging.getLogger(__name__)

MIB = 1024 * 1024
DATASET_CONTENT_TYPES = ("dataset/parquet", "dataset/csv")
PENDING_STATUSES = ("awaiting_approval", "queued")
SUBMITTER_ROLES = ("data_owner", "provider")
HEX_ID = re.compile(r"^[0-9a-f]{32}$")
ENCLAVE_REQUEST_WINDOW = 600
"""Seconds a sealed request stays acceptable to the enclave after it was issued."""
FRAME_MARGIN = 16 * MIB
PROGRESS = {
    "awaiting_approval": 0,
    "queued": 5,
    "loading_datasets": 10,
    "training": 30,
    "storing": 90,
    "done": 100,
}
"""Progress (percent) when a job enters each host-side phase; the enclave's own phases and their
durations are recorded when the job finishes."""


@dataclass(frozen=True)
class TrainingSettings:
    """Limits and timings of the training service.

    ``request_fresh_seconds`` is how old a sealed ``train`` request may be when the runner starts
    it (below the enclave's 600 s window, leaving time to train); ``approval_wait_seconds`` how long
    a job may wait for approvals (the enclave forgets an approval after 24 h).
    """

    max_dataset_bytes: int = 512 * MIB
    request_fresh_seconds: float = ENCLAVE_REQUEST_WINDOW - 120
    approval_wait_seconds: float = 24 * 3600
    sweep_seconds: float = 30.0

    @classmethod
    def from_settings(cls, settings: Any) -> TrainingSettings:
        """Take the dataset upload limit from the platform settings when they define one."""
        limit = getattr(settings, "max_dataset_bytes", None)
        return cls(max_dataset_bytes=int(limit)) if isinstance(limit, int) and limit > 0 else cls()


def _dataset_not_found() -> NotFoundError:
    return NotFoundError("not_found.dataset", "no such dataset")


def _job_not_found() -> NotFoundError:
    return NotFoundError("not_found.job", "no such job")


class TrainingService:
    """The host's training operations over the platform's catalog, blob store, billing and enclave."""

    def __init__(
        self, service: PlatformService, market: Market | None = None, settings: TrainingSettings | None = None
    ) -> None:
        self.service = service
        self.market = market
        self.settings = settings or TrainingSettings()
        self.store = TrainingStore(service.catalog.db)
        self._queue: asyncio.Queue[str] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._running_job: str | None = None

    @property
    def enclave(self) -> Any:
        """The enclave supervisor (:class:`EnclaveSupervisor`)."""
        return self.service.enclave

    # -- datasets -------------------------------------------------------------------------------
    async def create_dataset(self, caller: Principal, *, name: str, description: str) -> StoredDataset:
        """Register a dataset owned by ``caller`` (data owners only), status ``created``."""
        if caller.role != "data_owner":
            raise AuthError("auth.forbidden", "only data owners upload datasets")
        return await run_sync(
            self.store.create_dataset, owner_id=caller.id, name=name, description=description
        )

    async def owned_dataset(self, caller: Principal, dataset_id: str) -> StoredDataset:
        """Return the caller's dataset; anyone else's (or none) is ``not_found.dataset``."""
        dataset = await run_sync(self.store.get_dataset, dataset_id)
        if dataset is None or dataset.owner_id != caller.id:
            raise _dataset_not_found()
        return dataset

    async def list_datasets(self, caller: Principal) -> list[StoredDataset]:
        """Return the caller's own datasets."""
        return await run_sync(self.store.list_datasets, caller.id)

    async def lookup_dataset(self, caller: Principal, ref: str) -> StoredDataset:
        """Resolve a dataset a job may name: the caller's own (by name or id), one its owner listed
        on the market (by name), or any provisioned dataset by its id (owners share ids with their
        partners out of band; the owner's approval still gates every job). Anything else is
        ``not_found.dataset``."""
        dataset = await run_sync(self.store.dataset_by_name, ref)
        if dataset is not None and dataset.owner_id != caller.id and dataset.listing_id is None:
            dataset = None
        if dataset is None and HEX_ID.match(ref):
            by_id = await run_sync(self.store.get_dataset, ref)
            if by_id is not None and (by_id.owner_id == caller.id or by_id.status == "ready"):
                dataset = by_id
        if dataset is None:
            raise _dataset_not_found()
        return dataset

    async def upload_dataset_blob(
        self, caller: Principal, dataset_id: str, chunks: AsyncIterator[bytes], *, declared_size: int | None
    ) -> StoredDataset:
        """Store an encrypted dataset upload (streamed), replacing any previous one atomically.

        Guarantees: the body is bounded by ``max_dataset_bytes`` (``input.too_large``, checked on
        the declared size first) and must start with a ``dataset/parquet`` or ``dataset/csv`` stream
        envelope (``crypto.malformed``); on any failure the catalog and blob folder are unchanged.
        On success the status is ``uploaded``: the owner provisions the key again.
        """
        previous = await self.owned_dataset(caller, dataset_id)
        limit = self.settings.max_dataset_bytes
        if declared_size is not None and declared_size > limit:
            raise InputError("input.too_large", f"the dataset exceeds the limit of {limit} bytes")
        name = f"dataset-{dataset_id}-{new_id()}.sml"
        checked = checked_stream(chunks, DATASET_CONTENT_TYPES, "a dataset upload")
        blob = await self.service.blobs.write_stream(Area.MODELS, name, checked, limit=limit)
        try:
            updated = await run_sync(self.store.set_dataset_blob, dataset_id, caller.id, blob)
        except BaseException:
            await run_sync(self.service.blobs.delete, blob.path)
            raise
        if updated is None:
            await run_sync(self.service.blobs.delete, blob.path)
            raise _dataset_not_found()
        dataset, old_path = updated
        if old_path is not None and old_path != blob.path:
            await run_sync(self.service.blobs.delete, old_path)
        if previous.status == "ready" or self.enclave.dataset_loaded(dataset_id):
            await self.enclave.unload_dataset(dataset_id)
        return dataset

    async def provision_dataset(
        self, caller: Principal, dataset_id: str, envelope: bytes
    ) -> tuple[StoredDataset, ProvisionDatasetResult]:
        """Relay the owner's sealed dataset config to the enclave; store the sealed state it returns.

        Guarantees: only the owner provisions; the request must be a ``provision_dataset`` request
        for this dataset; the catalog changes only if the enclave accepted it and the blob did not
        change meanwhile (``input.conflict`` otherwise).
        """
        check_request(envelope, op="provision_dataset", model_id=dataset_id)
        dataset = await self.owned_dataset(caller, dataset_id)
        if dataset.blob_path is None or dataset.blob_sha256 is None:
            raise InputError("input.dataset_not_provisioned", "upload the encrypted dataset before its key")
        blob = await run_sync(self.service.blobs.read_bytes, dataset.blob_path)
        result, budget = await self.enclave.provision_dataset(dataset_id, caller.id, envelope, blob)
        info = await self.enclave.info()
        updated = await run_sync(
            partial(
                self.store.mark_dataset_ready,
                dataset_id,
                expected_blob_sha256=dataset.blob_sha256,
                sealed_state=result.sealed_state,
                generation=budget.generation,
                epsilon_total=budget.epsilon_total,
                epsilon_spent=budget.epsilon_spent,
                measurement=info.measurement,
            )
        )
        if updated is None:
            await self.enclave.unload_dataset(dataset_id)
            raise InputError(
                "input.conflict", "the dataset changed while it was provisioned; provision again"
            )
        return updated, result

    async def offer_dataset(
        self,
        caller: Principal,
        dataset_id: str,
        *,
        description: str,
        columns: list[dict[str, str]],
        rows: int,
        price: int,
    ) -> tuple[StoredDataset, DatasetRecord]:
        """List the caller's dataset on the market (schema and size its owner chose to publish) at
        ``price`` credits per training job, and link the listing to the dataset."""
        dataset = await self.owned_dataset(caller, dataset_id)
        if self.market is None:
            raise InputError("input.malformed", "this platform has no market")
        listing = await run_sync(
            partial(
                self.market.offer_dataset,
                owner_id=caller.id,
                name=dataset.name,
                description=description or dataset.description,
                columns=columns,
                rows=rows,
                size_bytes=int(dataset.blob_size or 0),
                price=price,
            )
        )
        linked = await run_sync(self.store.set_listing, dataset_id, caller.id, listing.id)
        if linked is None:
            raise _dataset_not_found()
        return linked, listing

    async def delete_dataset(self, caller: Principal, dataset_id: str) -> None:
        """Delete the caller's dataset, its ciphertext and its copy in the enclave.

        ``input.conflict`` while an unfinished training job uses it.
        """
        await self.owned_dataset(caller, dataset_id)
        deleted = await run_sync(self.store.delete_dataset, dataset_id)
        if deleted is not None and deleted.blob_path is not None:
            await run_sync(self.service.blobs.delete, deleted.blob_path)
        await self.enclave.unload_dataset(dataset_id)

    def _dataset_loader(self, dataset_id: str) -> DatasetLoader:
        async def load() -> DatasetMaterial:
            """Read the latest sealed state and the ciphertext of one dataset (blocking I/O)."""

            def read() -> DatasetMaterial:
                dataset = self.store.get_dataset(dataset_id)
                if dataset is None or dataset.sealed_state is None or dataset.blob_path is None:
                    raise InputError(
                        "input.dataset_not_provisioned",
                        f"dataset {dataset_id} has no provisioned key: its owner provisions it again",
                    )
                try:
                    blob = self.service.blobs.read_bytes(dataset.blob_path)
                except FileNotFoundError:
                    raise InputError(
                        "input.dataset_not_provisioned", f"dataset {dataset_id} changed; try again"
                    ) from None
                return DatasetMaterial(dataset.sealed_state, blob)

            return await run_sync(read)

        return load

    # -- jobs -----------------------------------------------------------------------------------
    async def submit(
        self,
        caller: Principal,
        *,
        spec: object,
        envelope: bytes,
        publish_name: str | None = None,
        description: str = "",
    ) -> TrainingJobRecord:
        """Validate a job spec on the host and queue the job for its owners' approvals.

        Guarantees: the spec passes :func:`parse_job_spec` (``input.spec_invalid``) and the host's
        own rules (32-hex job and model ids; a published model names its feature columns and a
        free catalog name); the envelope is a ``train`` request for the spec's model; every dataset
        exists and is provisioned (``not_found.dataset`` / ``input.dataset_not_provisioned``); the
        public budgets allow the job (``input.dp_required`` / ``input.privacy_budget_exhausted``,
        re-checked by the enclave); the price of each other owner's listed dataset is held
        (``billing.insufficient_credit``). Nothing is stored or held if any check fails.
        """
        if caller.role not in SUBMITTER_ROLES:
            raise AuthError("auth.forbidden", "only data owners and providers submit training jobs")
        parsed = parse_job_spec(spec)
        self._host_rules(parsed, publish_name)
        header = check_request(envelope, op="train", model_id=parsed.model)
        datasets = [await run_sync(self.store.get_dataset, d) for d in parsed.datasets]
        for ref, dataset in zip(parsed.datasets, datasets, strict=True):
            if dataset is None:
                raise NotFoundError("not_found.dataset", f"no dataset {ref!r}")
            if dataset.status != "ready":
                raise InputError(
                    "input.dataset_not_provisioned", f"dataset {ref!r} has no provisioned key yet"
                )
            _check_budget(parsed, dataset)
        present = [d for d in datasets if d is not None]
        total = sum(int(d.blob_size or 0) for d in present) + len(envelope)
        if total > MAX_FRAME - FRAME_MARGIN:
            raise InputError(
                "input.too_large",
                f"the datasets of this job add up to {total} bytes; one job may hand the enclave at "
                f"most {MAX_FRAME - FRAME_MARGIN}",
            )
        digest = spec_digest(parsed)
        charges = await self._hold_charges(caller, parsed.job, present)
        reserved: str | None = None
        try:
            if parsed.publish:
                assert publish_name is not None and parsed.features is not None
                serving = parsed.serving.get("output_policy") or {"mode": "probabilities", "decimals": 2}
                model = await run_sync(
                    partial(
                        self.service.catalog.create_model,
                        owner_id=caller.id,
                        name=publish_name,
                        description=description or f"trained by job {parsed.job} ({parsed.algorithm})",
                        input_columns=list(parsed.features),
                        output_policy=serving,
                        model_id=parsed.model,
                    )
                )
                reserved = model.id
            record = await run_sync(
                partial(
                    self.store.create_job,
                    job_id=parsed.job,
                    owner_id=caller.id,
                    model_id=parsed.model,
                    request_id=header.request_id,
                    spec=parsed.to_dict(),
                    spec_sha256=digest,
                    request=envelope,
                    parties=[(d.id, d.owner_id) for d in present],
                    charge_ids=charges,
                    publish_model_id=reserved,
                )
            )
        except BaseException:
            await self._refund(charges, "job not created")
            if reserved is not None:
                await run_sync(self.service.catalog.delete_model, reserved)
            raise
        log.info("training job %s submitted by %s (%d datasets)", parsed.job, caller.id, len(present))
        return record

    @staticmethod
    def _host_rules(spec: JobSpec, publish_name: str | None) -> None:
        if not HEX_ID.match(spec.job) or not HEX_ID.match(spec.model):
            raise InputError(
                "input.spec_invalid", "job and model must be 32 lowercase hex characters (the SDK makes them)"
            )
        if spec.publish:
            if publish_name is None:
                raise InputError(
                    "input.spec_invalid", "a published model needs a catalog name (publish_name)"
                )
            if spec.features is None:
                raise InputError(
                    "input.spec_invalid",
                    "a published model must list its feature columns: they become its public input schema",
                )
        elif publish_name is not None:
            raise InputError("input.spec_invalid", "publish_name is only for a spec with publish: true")

    async def _hold_charges(self, caller: Principal, job_id: str, datasets: list[StoredDataset]) -> list[str]:
        """Hold the market price of every dataset the caller does not own; all or nothing."""
        held: list[str] = []
        try:
            for dataset in datasets:
                if dataset.owner_id == caller.id:
                    continue
                price = await self._price(dataset)
                if price <= 0:
                    continue
                charge_id = new_id()
                await run_sync(
                    partial(
                        self.service.billing.hold,
                        job_id=charge_id,
                        request_id=f"train:{job_id}:{dataset.id}",
                        payer_id=caller.id,
                        payee_id=dataset.owner_id,
                        model_id=dataset.id,
                        rows=1,
                        price_per_row=price,
                    )
                )
                held.append(charge_id)
        except BaseException:
            await self._refund(held, "job not created")
            raise
        return held

    async def _price(self, dataset: StoredDataset) -> int:
        if dataset.listing_id is None or self.market is None:
            return 0
        try:
            listing = await run_sync(self.market.dataset, dataset.listing_id)
        except NotFoundError:
            return 0
        return int(listing.price)

    async def _refund(self, charge_ids: list[str] | tuple[str, ...], reason: str) -> None:
        for charge_id in charge_ids:
            await run_sync(self.service.billing.refund, charge_id, reason)

    async def job(self, caller: Principal, job_id: str) -> TrainingJobRecord:
        """Return a training job the caller submitted or whose dataset it owns; else ``not_found.job``."""
        record = await run_sync(self.store.get_job, job_id)
        if record is None or not record.involves(caller.id):
            raise _job_not_found()
        return record

    async def approve(
        self, caller: Principal, job_id: str, dataset_id: str, envelope: bytes
    ) -> tuple[TrainingJobRecord, bytes]:
        """Relay a dataset owner's sealed approval of a job to the enclave and record it.

        Guarantees: only the owner of one of the job's datasets can relay it (``not_found``
        otherwise); the enclave checked the owner's signature (``request.approval_invalid``); the
        approval counts only if the enclave accepted it for this job's spec digest. When every
        owner has approved on the current enclave instance the job is queued. Returns the job and
        the enclave's sealed answer for the owner.
        """
        record = await self.job(caller, job_id)
        party = next((p for p in record.parties if p.dataset_id == dataset_id), None)
        if party is None or party.owner_id != caller.id:
            raise _dataset_not_found()
        if record.job.status not in PENDING_STATUSES:
            raise InputError("input.conflict", f"job {job_id} is {record.job.status}: it takes no approvals")
        check_request(envelope, op="approve", model_id=dataset_id)
        result = await self.enclave.approve(dataset_id, envelope, self._dataset_loader(dataset_id))
        if result.spec_sha256 != record.spec_sha256:
            raise RequestError(
                "request.invalid",
                f"the enclave accepted an approval of spec {result.spec_sha256}, but job {job_id} has "
                f"spec {record.spec_sha256}: approve this job's spec",
            )
        info = await self.enclave.info()
        record = await run_sync(self.store.record_approval, job_id, dataset_id, info.instance_id)
        await self._advance(record, info)
        return await run_sync(self._get, job_id), result.response

    def _get(self, job_id: str) -> TrainingJobRecord:
        record = self.store.get_job(job_id)
        assert record is not None
        return record

    async def _advance(self, record: TrainingJobRecord, info: EnclaveInfo) -> None:
        """Queue a job whose approvals are complete (or put it back to waiting when they are not)."""
        waiting = record.waiting_for(info.instance_id)
        if waiting:
            await run_sync(
                partial(
                    self.store.set_state,
                    record.job.id,
                    status="awaiting_approval",
                    phase="awaiting_approval",
                    progress=PROGRESS["awaiting_approval"],
                    error=(
                        "request.approvals_missing",
                        f"waiting for the owners of {waiting} to approve spec {record.spec_sha256}",
                    ),
                    expected=PENDING_STATUSES,
                )
            )
            return
        moved = await run_sync(
            partial(
                self.store.set_state,
                record.job.id,
                status="queued",
                phase="queued",
                progress=PROGRESS["queued"],
                expected=PENDING_STATUSES,
            )
        )
        if moved:
            self.enqueue(record.job.id)

    async def refresh_request(self, caller: Principal, job_id: str, envelope: bytes) -> TrainingJobRecord:
        """Replace the sealed ``train`` request of the caller's pending job with a fresh one.

        The enclave refuses requests older than its freshness window or sealed to an earlier
        instance; the submitter's SDK re-seals the same spec while the job waits.
        """
        record = await self.job(caller, job_id)
        if record.job.owner_id != caller.id:
            raise AuthError("auth.forbidden", "only the job's submitter seals its request")
        header = check_request(envelope, op="train", model_id=record.job.model_id)
        replaced = await run_sync(
            self.store.replace_request, job_id, envelope, header.request_id, PENDING_STATUSES
        )
        if not replaced:
            raise InputError("input.conflict", f"job {job_id} is {record.job.status}: its request is final")
        updated = self._get(job_id)
        if updated.job.status == "queued":
            self.enqueue(job_id)
        return updated

    async def cancel(self, caller: Principal, job_id: str) -> TrainingJobRecord:
        """Cancel the caller's job before it runs; its held price is refunded."""
        record = await self.job(caller, job_id)
        if record.job.owner_id != caller.id:
            raise AuthError("auth.forbidden", "only the job's submitter cancels it")
        if record.job.status not in PENDING_STATUSES:
            raise InputError("input.conflict", f"job {job_id} is {record.job.status}: it cannot be cancelled")
        ended = await run_sync(self.store.end_job, job_id, "cancelled", None)
        if ended is None:
            raise InputError("input.conflict", f"job {job_id} finished meanwhile")
        await self._refund(ended.charge_ids, "job cancelled")
        return ended

    async def model_blob(self, caller: Principal, job_id: str) -> tuple[TrainingJobRecord, bytes]:
        """Return a finished job's encrypted model (readable only with a grant's model key)."""
        record = await self.job(caller, job_id)
        if record.job.status != "done" or record.model_blob_path is None:
            raise NotFoundError("not_found.job", f"job {job_id} has no model: it is {record.job.status}")
        try:
            return record, await run_sync(self.service.blobs.read_bytes, record.model_blob_path)
        except FileNotFoundError:
            raise NotFoundError("not_found.job", "the job's model is no longer stored") from None

    async def request_fresh(self, record: TrainingJobRecord, info: EnclaveInfo | None = None) -> bool:
        """Whether the job's sealed request can still be opened by the current enclave instance,
        with enough of the freshness window left to train."""
        try:
            header = peek_request(record.request)
        except SealedMLError:
            return False
        info = info or await self.enclave.info()
        age = time.time() - header.issued_at
        return header.recipient == key_id(info.hpke_public_key) and age <= self.settings.request_fresh_seconds

    # -- the runner -----------------------------------------------------------------------------
    def enqueue(self, job_id: str) -> None:
        """Ask the runner to look at ``job_id`` (no-op before :meth:`start`)."""
        if self._queue is not None:
            self._queue.put_nowait(job_id)

    async def start(self) -> None:
        """Start the background runner on the current event loop."""
        if self._worker is None:
            self._queue = asyncio.Queue()
            self._worker = asyncio.create_task(self._work(), name="sealedml-training")

    async def stop(self) -> None:
        """Stop the runner (a job still running in the enclave is abandoned and failed at next start)."""
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker

    def fail_unfinished(self) -> int:
        """Fail every unfinished training job (call at start-up, before serving).

        A restart loses the enclave's memory — the owners' approvals and the key the requests were
        sealed to — so such a job can never run; its held charges are refunded.
        """
        ids = self.store.jobs_in(("awaiting_approval", "queued", "running"))
        for job_id in ids:
            ended = self.store.end_job(
                job_id,
                "failed",
                (
                    "request.expired",
                    "the platform restarted before this job finished: its sealed request and the "
                    "owners' approvals were lost with the enclave; submit the job again",
                ),
            )
            if ended is not None:
                for charge_id in ended.charge_ids:
                    self.service.billing.refund(charge_id, "platform restarted before the job finished")
        return len(ids)

    async def _work(self) -> None:
        assert self._queue is not None
        while True:
            try:
                job_id = await asyncio.wait_for(self._queue.get(), timeout=self.settings.sweep_seconds)
            except TimeoutError:
                await self._sweep()
                continue
            try:
                await self._run(job_id)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("the training runner failed on job %s", job_id)

    async def _sweep(self) -> None:
        """Fail jobs that waited too long for approvals; look again at queued ones."""
        try:
            now = time.time()
            for job_id in await run_sync(self.store.jobs_in, PENDING_STATUSES):
                record = await run_sync(self.store.get_job, job_id)
                if record is None:
                    continue
                if now - record.job.created_at.timestamp() > self.settings.approval_wait_seconds:
                    await self._fail(
                        record,
                        RequestError(
                            "request.approvals_missing",
                            f"the job waited more than {self.settings.approval_wait_seconds:.0f} s for "
                            f"approvals of {record.waiting_for(None) or record.dataset_ids}",
                        ),
                    )
                elif record.job.status == "queued":
                    self.enqueue(job_id)
        except SealedMLError as exc:
            log.warning("training sweep failed: %s", exc.code)

    async def _run(self, job_id: str) -> None:
        record = await run_sync(self.store.get_job, job_id)
        if record is None or record.job.status != "queued":
            return
        try:
            info = await self.enclave.info(refresh=True)
        except SealedMLError as exc:
            log.warning("job %s waits: the enclave is unavailable (%s)", job_id, exc.code)
            return
        stale = [p.dataset_id for p in record.parties if p.approved_instance != info.instance_id]
        if stale:
            await run_sync(self.store.forget_approvals, job_id, stale)
            await self._advance(self._get(job_id), info)
            return
        if not await self.request_fresh(record, info):
            await run_sync(
                partial(
                    self.store.set_state,
                    job_id,
                    status="queued",
                    phase="queued",
                    progress=PROGRESS["queued"],
                    error=(
                        "request.expired",
                        "the sealed training request expired or was sealed to an earlier enclave "
                        "instance: the submitter re-seals it (`sealedml jobs wait JOB`)",
                    ),
                    expected=("queued",),
                )
            )
            return
        started = await run_sync(
            partial(
                self.store.set_state,
                job_id,
                status="running",
                phase="loading_datasets",
                progress=PROGRESS["loading_datasets"],
                expected=("queued",),
                started=True,
            )
        )
        if not started:
            return
        self._running_job = job_id
        try:
            await self._train(record)
        except SealedMLError as exc:
            log.info("training job %s failed: %s", job_id, exc.code)
            await self._fail(record, exc)
        except Exception as exc:
            log.exception("training job %s failed unexpectedly", job_id)
            await self._fail(
                record, EnclaveError("enclave.internal", f"internal error ({type(exc).__name__})")
            )
        finally:
            self._running_job = None

    async def _phase(self, job_id: str, phase: str) -> None:
        await run_sync(
            partial(
                self.store.set_state,
                job_id,
                status="running",
                phase=phase,
                progress=PROGRESS[phase],
                expected=("running",),
            )
        )

    async def _train(self, record: TrainingJobRecord) -> None:
        job_id = record.job.id
        for dataset_id in record.dataset_ids:
            await self.enclave.ensure_dataset(dataset_id, self._dataset_loader(dataset_id))
        blobs = []
        for dataset_id in record.dataset_ids:
            material = await self._dataset_loader(dataset_id)()
            blobs.append(material.blob)
        await self._phase(job_id, "training")

        async def on_round(done: int, rounds: int) -> None:
            """Move the job's progress through the training share as data-parallel rounds finish."""
            span = PROGRESS["storing"] - PROGRESS["training"]
            await run_sync(
                partial(
                    self.store.set_state,
                    job_id,
                    status="running",
                    phase="training",
                    progress=PROGRESS["training"] + span * done // max(rounds, 1),
                    expected=("running",),
                )
            )

        result = await self.enclave.train(
            record.job.model_id,
            record.job.owner_id,
            job_id,
            record.dataset_ids,
            record.request,
            blobs,
            progress=on_round,
        )
        del blobs
        _check_result(record, result)
        await self._phase(job_id, "storing")
        info = await self.enclave.info()
        finished = await run_sync(self._store_result, record, result, info.measurement)
        await self.service.log_receipt(result.receipt, result.signature)
        log.info("training job %s done (model %s)", job_id, finished.job.model_id)

    def _store_result(
        self, record: TrainingJobRecord, result: TrainResult, measurement: str
    ) -> TrainingJobRecord:
        blobs = self.service.blobs
        model_blob = blobs.write_bytes(
            Area.MODELS, f"trained-{record.job.id}.sml", result.model_blob, durable=True
        )
        response = blobs.write_bytes(Area.RESULTS, f"{record.job.id}.sml", result.response, durable=True)
        budgets = {b.dataset: b for b in result.budgets}
        updates = []
        for dataset_id, sealed in result.dataset_states.items():
            budget = budgets.get(dataset_id)
            if budget is None:
                raise EnclaveError("enclave.protocol", "a dataset state came without its budget")
            updates.append(
                DatasetUpdate(
                    dataset_id=dataset_id,
                    sealed_state=sealed,
                    generation=budget.generation,
                    epsilon_spent=budget.epsilon_spent,
                    epsilon_total=budget.epsilon_total,
                )
            )
        billing = self.service.billing

        def settle(conn: Any) -> None:
            """Settle every held charge of the job inside the recording transaction."""
            for charge_id in record.charge_ids:
                billing.settle(conn, charge_id)

        try:
            finished = self.store.finish_job(
                record.job.id,
                receipt=result.receipt,
                signature=result.signature,
                result_path=response.path,
                model_blob=model_blob,
                model_sha256=result.model_sha256,
                grants=[{"recipient": r, "grant": g.hex()} for r, g in result.grants],
                phases=list(result.phases),
                budgets=[b.to_dict() for b in result.budgets],
                datasets=updates,
                published=(result.model_config, measurement) if result.model_config is not None else None,
                in_transaction=settle,
            )
        except BaseException:
            blobs.delete(model_blob.path)
            blobs.delete(response.path)
            raise
        if finished is None:
            blobs.delete(model_blob.path)
            blobs.delete(response.path)
            raise InputError("input.conflict", "the job was closed while it ran")
        return finished

    async def _fail(self, record: TrainingJobRecord, exc: SealedMLError) -> None:
        ended = await run_sync(self.store.end_job, record.job.id, "failed", (exc.code, exc.message))
        if ended is None:
            return
        await self._refund(ended.charge_ids, f"job failed: {exc.code}")
        if ended.publish_model_id is not None and self.enclave.is_loaded(ended.publish_model_id):
            await self.enclave.unload(ended.publish_model_id)


def _check_budget(spec: JobSpec, dataset: StoredDataset) -> None:
    """Refuse early what the enclave would refuse, from the public budget the enclave reported."""
    if dataset.epsilon_total is None:
        return
    if spec.dp_epsilon is None:
        raise InputError(
            "input.dp_required",
            f"dataset {dataset.name!r} has a privacy budget: only jobs with dp_epsilon may use it",
        )
    remaining = dataset.epsilon_remaining or 0.0
    if spec.dp_epsilon > remaining + 1e-9:
        raise InputError(
            "input.privacy_budget_exhausted",
            f"dataset {dataset.name!r} has epsilon {remaining:.6g} of {dataset.epsilon_total:.6g} left; "
            f"this job needs {spec.dp_epsilon:.6g}",
        )


def _check_result(record: TrainingJobRecord, result: TrainResult) -> None:
    """The enclave's answer must be about this job (a mismatch means a broken or hostile peer)."""
    receipt = result.receipt
    if (
        result.job != record.job.id
        or result.model != record.job.model_id
        or result.spec_sha256 != record.spec_sha256
        or receipt.get("kind") != "train"
        or receipt.get("job") != record.job.id
    ):
        raise EnclaveError("enclave.protocol", "the enclave answered about another job")
