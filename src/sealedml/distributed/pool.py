"""A pool of attested enclave workers with the interface of :class:`EnclaveSupervisor`.

The platform serves from it exactly as from one enclave: ``info``/``evidence`` answer for the
cluster identity (every worker serves the same keys), predictions go to the least busy worker,
and a model reaches a worker only by enclave-to-enclave transfer from a worker that holds it (or,
the first time after a restart, from its sealed key on the machine that sealed it), never through
the host in clear. A worker that dies is replaced (attested, joined, models reloaded) and the
prediction it was running is retried on another worker: the request was never answered, the
platform billed it once (the hold is keyed by the job), and its request id is still single-use
on the platform.

Datasets, approvals and training jobs go to the *primary* worker (the lowest live slot), whose
``instance_id`` the pool reports, so approvals are tied to the enclave that holds them. Training
algorithms that support it (non-DP logistic regression and MLP) run data-parallel on the cluster
(:func:`sealedml.distributed.training.train_data_parallel`).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from sealedml.distributed.cluster import LOST_CODES, EnclaveCluster, ModelSource, WorkerHandle
from sealedml.distributed.training import RoundProgress, supports_data_parallel, train_data_parallel
from sealedml.errors import ClusterError, EnclaveError, ModelError, SealedMLError
from sealedml.platform.enclave_manager import DatasetLoader, Loader
from sealedml.tee.client import (
    ApproveResult,
    DatasetBudget,
    EnclaveInfo,
    PredictResult,
    ProvisionDatasetResult,
    ProvisionResult,
    TrainResult,
    _train_result,
)

__all__ = ["RayEnclavePool"]

log = logging.getLogger("sealedml.distributed")

SpecLookup = Callable[[str], dict[str, Any] | None]
"""Returns the public job spec of a training job by job id (``None`` if unknown)."""


class RayEnclavePool:
    """An :class:`EnclaveSupervisor` look-alike over an :class:`EnclaveCluster`.

    Guarantees: every call reaches an attested, joined worker; a lost worker is replaced before
    the call is retried elsewhere (at most ``max_attempts`` tries per prediction); errors of the
    enclaves keep their codes. Safe for concurrent use from one event loop.
    """

    def __init__(
        self,
        cluster: EnclaveCluster,
        *,
        hello_ttl: float = 5.0,
        max_attempts: int = 3,
        spec_lookup: SpecLookup | None = None,
    ) -> None:
        self.cluster = cluster
        self.spec_lookup = spec_lookup
        self._hello_ttl = hello_ttl
        self._max_attempts = max(1, max_attempts)
        self._info: EnclaveInfo | None = None
        self._info_at = 0.0
        self._info_lock = asyncio.Lock()
        self._loaders: dict[str, Loader] = {}
        self._locks: dict[tuple[int, str], asyncio.Lock] = {}
        self._datasets: set[str] = set()
        self._dataset_locks: dict[str, asyncio.Lock] = {}
        self._busy: dict[int, int] = {}
        self._turn = itertools.count()
        self.retries = 0
        """Predictions retried on another worker after their worker was lost (for tests and stats)."""
        self.completed = 0
        """Predictions answered."""
        cluster.model_source = self._model_source

    # -- workers ----------------------------------------------------------------------------------

    def in_flight(self, slot: int) -> int:
        """How many requests the worker in ``slot`` is running now (0 for an idle or unknown slot)."""
        return self._busy.get(slot, 0)

    @property
    def primary(self) -> WorkerHandle:
        """The worker that holds datasets and approvals (the lowest live slot)."""
        return self.cluster.seed

    def _pick(self) -> WorkerHandle:
        workers = self.cluster.workers
        if not workers:
            raise ClusterError("cluster.no_workers", "no attested worker is left in the cluster")
        turn = next(self._turn)
        ordered = workers[turn % len(workers) :] + workers[: turn % len(workers)]
        return min(ordered, key=lambda w: self._busy.get(w.slot, 0))

    async def _replace(self, worker: WorkerHandle) -> None:
        self._info_at = 0.0
        try:
            await self.cluster.replace(worker)
        except SealedMLError as exc:
            log.error("could not replace %s: %s", worker.name, exc.code)

    async def replace_dead(self) -> list[str]:
        """Ping every worker and replace those that do not answer; returns their names."""
        workers = list(self.cluster.workers)
        answers = await asyncio.gather(*(w.call("hello", {}) for w in workers), return_exceptions=True)
        dead = [
            w
            for w, answer in zip(workers, answers, strict=True)
            if isinstance(answer, SealedMLError) and answer.code in LOST_CODES
        ]
        for worker in dead:
            await self._replace(worker)
        return [w.name for w in dead]

    async def _model_source(self, model_id: str) -> tuple[bytes, dict[str, int]] | None:
        loader = self._loaders.get(model_id)
        if loader is None:
            return None
        material = await loader()
        return material.blob, material.usage

    def close(self) -> None:
        """Nothing to close synchronously: the cluster's owner closes it (``await cluster.close()``)."""

    # -- identity ---------------------------------------------------------------------------------

    async def info(self, *, refresh: bool = False) -> EnclaveInfo:
        """The cluster identity as the primary worker serves it, cached for ``hello_ttl`` seconds.

        ``instance_id`` is the primary's: it changes when the primary is replaced, so whatever the
        platform tied to it (approvals, loaded datasets) is redone.
        """
        if not refresh and self._info is not None and time.monotonic() - self._info_at < self._hello_ttl:
            return self._info
        async with self._info_lock:
            primary = self.primary
            try:
                head, _ = await primary.call("hello", {})
            except SealedMLError as exc:
                if exc.code in LOST_CODES:
                    await self._replace(primary)
                    head, _ = await self.primary.call("hello", {})
                else:
                    raise
            fresh = EnclaveInfo.from_hello(head)
            if self._info is not None and fresh.instance_id != self._info.instance_id:
                self._datasets.clear()
            self._info, self._info_at = fresh, time.monotonic()
            return fresh

    def invalidate(self) -> None:
        """Forget the cached identity's freshness."""
        self._info_at = 0.0

    async def evidence(self, nonce: bytes) -> bytes:
        """Evidence from the primary worker binding the cluster keys to ``nonce``."""
        _, parts = await self._on_primary("evidence", {"nonce": nonce.hex()})
        if len(parts) != 1:
            raise EnclaveError("enclave.protocol", "expected exactly one binary part")
        return parts[0]

    async def _on_primary(
        self, op: str, header: dict[str, Any], parts: Sequence[bytes] = ()
    ) -> tuple[dict[str, Any], list[bytes]]:
        """Call the primary; if it is lost, replace it and try the new primary once (no replays)."""
        primary = self.primary
        try:
            return await primary.call(op, header, parts)
        except SealedMLError as exc:
            if exc.code not in LOST_CODES:
                raise
            await self._replace(primary)
            raise

    # -- models -----------------------------------------------------------------------------------

    def is_loaded(self, model_id: str) -> bool:
        """Whether some worker holds ``model_id``."""
        return any(model_id in w.models for w in self.cluster.workers)

    async def provision(self, model_id: str, client: str, request: bytes, blob: bytes) -> ProvisionResult:
        """Relay a provider's sealed key request to the primary, then fan the model out to every worker.

        The sealed key returned is sealed to the primary's machine; other workers receive the
        model by peer transfer. A worker that cannot take it now gets it on first use.
        """
        primary = self.primary
        head, parts = await primary.call("provision", {"model": model_id, "client": client}, (request, blob))
        if len(parts) != 2:
            raise EnclaveError("enclave.protocol", "malformed provision reply")
        primary.models.add(model_id)

        async def source(wanted: str) -> tuple[bytes, dict[str, int]] | None:
            return (blob, {}) if wanted == model_id else None

        await self._fan_out(primary, model_id, source)
        return ProvisionResult(
            sealed_key=parts[0],
            response=parts[1],
            model_sha256=str(head.get("model_sha256")),
            receipt=dict(head.get("receipt") or {}),
            signature=str(head.get("signature")),
        )

    async def _fan_out(self, donor: WorkerHandle, model_id: str, source: ModelSource) -> None:
        targets = [w for w in self.cluster.workers if w is not donor and model_id not in w.models]
        outcomes = await asyncio.gather(
            *(self.cluster.join(donor, target, [model_id], source=source) for target in targets),
            return_exceptions=True,
        )
        for target, outcome in zip(targets, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                code = outcome.code if isinstance(outcome, SealedMLError) else type(outcome).__name__
                log.warning(
                    "model %s not sent to %s now (%s); it gets it on first use", model_id, target.name, code
                )

    async def _ensure(self, worker: WorkerHandle, model_id: str, loader: Loader) -> None:
        """Make ``worker`` hold ``model_id``: by transfer from a holder, else from its sealed key."""
        if model_id in worker.models:
            return
        key = (worker.slot, model_id)
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            if model_id in worker.models:
                return
            donor = next((w for w in self.cluster.workers if w is not worker and model_id in w.models), None)
            if donor is None:
                donor = await self._load_sealed(model_id, loader, prefer=worker)
                if donor is worker:
                    return
            await self.cluster.join(donor, worker, [model_id])
            if model_id not in worker.models:
                raise ModelError(
                    "model.not_provisioned",
                    f"model {model_id} could not reach {worker.name}: its donor no longer holds it",
                )

    async def _load_sealed(self, model_id: str, loader: Loader, *, prefer: WorkerHandle) -> WorkerHandle:
        """Load the model from its stored sealed key on the machine that sealed it; return that worker."""
        material = await loader()
        candidates = [prefer, *[w for w in self.cluster.workers if w is not prefer]]
        last: SealedMLError | None = None
        for worker in candidates:
            try:
                await worker.call(
                    "load", {"model": model_id, "usage": material.usage}, (material.sealed_key, material.blob)
                )
            except SealedMLError as exc:
                if exc.code in LOST_CODES:
                    raise
                last = exc  # sealed on another machine: try the next one
                continue
            worker.models.add(model_id)
            return worker
        assert last is not None
        raise last

    async def predict(
        self, model_id: str, client: str, job_id: str, request: bytes, loader: Loader
    ) -> PredictResult:
        """Run a sealed prediction on the least busy worker; retry on another if its worker is lost.

        Guarantees: the request runs to completion on at most one live worker as far as the
        platform is concerned (a lost worker's answer never arrived); ``model.not_provisioned``
        reloads the model on that worker and retries; other errors propagate unchanged.
        """
        self._loaders[model_id] = loader
        last: SealedMLError | None = None
        for _attempt in range(self._max_attempts):
            worker = self._pick()
            self._busy[worker.slot] = self._busy.get(worker.slot, 0) + 1
            try:
                await self._ensure(worker, model_id, loader)
                head, parts = await worker.call(
                    "predict", {"model": model_id, "client": client, "job": job_id}, (request,)
                )
            except SealedMLError as exc:
                last = exc
                if exc.code in LOST_CODES:
                    log.warning("a worker was lost during job %s; retrying elsewhere", job_id)
                    self.retries += 1
                    await self.replace_dead()
                    continue
                if exc.code == "model.not_provisioned":
                    worker.models.discard(model_id)
                    continue
                raise
            finally:
                self._busy[worker.slot] = max(self._busy.get(worker.slot, 1) - 1, 0)
            if len(parts) != 1:
                raise EnclaveError("enclave.protocol", "expected exactly one binary part")
            self.completed += 1
            return PredictResult(
                response=parts[0],
                receipt=dict(head.get("receipt") or {}),
                signature=str(head.get("signature")),
                rows=int(head.get("rows", 0)),
                usage=int(head.get("usage", 0)),
            )
        assert last is not None
        raise last

    async def unload(self, model_id: str) -> None:
        """Drop ``model_id`` from every worker. Never raises."""
        for worker in list(self.cluster.workers):
            worker.models.discard(model_id)
            try:
                await worker.call("unload", {"model": model_id})
            except SealedMLError as exc:
                log.warning("could not unload model %s from %s: %s", model_id, worker.name, exc.code)
        self._loaders.pop(model_id, None)

    # -- datasets and training (on the primary) -----------------------------------------------------

    def dataset_loaded(self, dataset_id: str) -> bool:
        """Whether the primary is believed to hold ``dataset_id``."""
        return dataset_id in self._datasets

    def _dataset_lock(self, dataset_id: str) -> asyncio.Lock:
        return self._dataset_locks.setdefault(dataset_id, asyncio.Lock())

    async def provision_dataset(
        self, dataset_id: str, client: str, request: bytes, blob: bytes
    ) -> tuple[ProvisionDatasetResult, DatasetBudget]:
        """Relay an owner's sealed dataset config to the primary (see EnclaveSupervisor)."""
        async with self._dataset_lock(dataset_id):
            await self.info()
            head, parts = await self._on_primary(
                "provision_dataset", {"dataset": dataset_id, "client": client}, (request, blob)
            )
            if len(parts) != 2:
                raise EnclaveError("enclave.protocol", "malformed provision_dataset reply")
            result = ProvisionDatasetResult(
                sealed_state=parts[0], response=parts[1], generation=int(head.get("generation", 0))
            )
            budget_head, _ = await self._on_primary("load_dataset", {"dataset": dataset_id}, (parts[0], blob))
            self._datasets.add(dataset_id)
            return result, DatasetBudget.from_header(budget_head)

    async def ensure_dataset(self, dataset_id: str, loader: DatasetLoader) -> DatasetBudget | None:
        """Load ``dataset_id`` into the primary from its sealed state unless it holds it already."""
        if dataset_id in self._datasets:
            return None
        async with self._dataset_lock(dataset_id):
            if dataset_id in self._datasets:
                return None
            await self.info()
            material = await loader()
            head, _ = await self._on_primary(
                "load_dataset", {"dataset": dataset_id}, (material.sealed_state, material.blob)
            )
            self._datasets.add(dataset_id)
            return DatasetBudget.from_header(head)

    async def unload_dataset(self, dataset_id: str) -> None:
        """Drop ``dataset_id`` from the primary. Never raises."""
        self._datasets.discard(dataset_id)
        try:
            await self._on_primary("unload_dataset", {"dataset": dataset_id})
        except SealedMLError as exc:
            log.warning("could not unload dataset %s: %s", dataset_id, exc.code)

    async def approve(self, dataset_id: str, request: bytes, loader: DatasetLoader) -> ApproveResult:
        """Relay an owner's sealed approval to the primary (loading the dataset first if needed)."""
        await self.ensure_dataset(dataset_id, loader)
        try:
            head, parts = await self._on_primary("approve", {"dataset": dataset_id}, (request,))
        except SealedMLError as exc:
            if exc.code != "input.dataset_not_provisioned":
                raise
            self._datasets.discard(dataset_id)
            await self.info(refresh=True)
            await self.ensure_dataset(dataset_id, loader)
            head, parts = await self._on_primary("approve", {"dataset": dataset_id}, (request,))
        digest = head.get("spec_sha256")
        if not isinstance(digest, str) or len(parts) != 1:
            raise EnclaveError("enclave.protocol", "malformed approve reply")
        return ApproveResult(dataset=str(head.get("dataset")), spec_sha256=digest, response=parts[0])

    async def train(
        self,
        model_id: str,
        client: str,
        job_id: str,
        datasets: list[str],
        request: bytes,
        blobs: list[bytes],
        *,
        progress: RoundProgress | None = None,
    ) -> TrainResult:
        """Run a sealed training job: data-parallel on the cluster when the algorithm supports it,
        otherwise on the primary. Never retried. ``progress(round, rounds)`` follows the rounds of
        a data-parallel job (a job on one enclave reports none).
        """
        spec = await asyncio.to_thread(self.spec_lookup, job_id) if self.spec_lookup is not None else None
        if spec is not None and len(self.cluster.workers) > 1:
            # DP jobs must train in one enclave: the enclave refuses them data-parallel.
            dp_epsilon = spec.get("dp_epsilon")
            if supports_data_parallel(
                str(spec.get("algorithm")),
                dict(spec.get("params") or {}),
                dp_epsilon=None if dp_epsilon is None else float(dp_epsilon),
            ):
                log.info(
                    "training job %s runs data-parallel on %d workers", job_id, len(self.cluster.workers)
                )
                result: TrainResult = await train_data_parallel(
                    self.cluster,
                    model_id=model_id,
                    client=client,
                    job_id=job_id,
                    datasets=datasets,
                    request=request,
                    blobs=blobs,
                    progress=progress,
                )
                if result.published:
                    self.primary.models.add(model_id)
                return result
        head, parts = await self._on_primary(
            "train",
            {"model": model_id, "client": client, "job": job_id, "datasets": list(datasets)},
            (request, *blobs),
        )
        result = _train_result(head, parts)
        if result.published:
            self.primary.models.add(model_id)
        return result
