"""The host's handle on the enclave: cached identity, and which models and datasets the current
instance holds.

An enclave keeps provisioned models and datasets only in memory. When it restarts (new
``instance_id``) the host must give every model back its *sealed* key before the first
prediction. :class:`EnclaveSupervisor` remembers which models were loaded into which instance,
loads lazily from the stored sealed key, and retries a prediction once if the enclave says
``model.not_provisioned`` anyway (it restarted without the host noticing). Datasets work the same
way: they are reloaded from their sealed state (``load_dataset``) before an approval or a training
job needs them. It never sees a plaintext key or input: everything it passes is opaque.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from sealedml.errors import EnclaveError, SealedMLError

if TYPE_CHECKING:
    from sealedml.tee.client import (
        ApproveResult,
        DatasetBudget,
        EnclaveClient,
        EnclaveInfo,
        PredictResult,
        ProvisionDatasetResult,
        ProvisionResult,
        TrainResult,
    )

log = logging.getLogger(__name__)

T = TypeVar("T")

# Errors after which the cached identity of the enclave may be stale.
_RESTART_HINTS = frozenset({"model.not_provisioned", "request.wrong_recipient", "enclave.unavailable"})


@dataclass(frozen=True)
class LoadMaterial:
    """What ``load()`` needs to bring a model back after a restart (all opaque to the host)."""

    sealed_key: bytes
    blob: bytes
    usage: dict[str, int]


@dataclass(frozen=True)
class DatasetMaterial:
    """What ``load_dataset`` needs to bring a dataset back after a restart (opaque to the host)."""

    sealed_state: bytes
    blob: bytes


Loader = Callable[[], Awaitable[LoadMaterial]]
DatasetLoader = Callable[[], Awaitable[DatasetMaterial]]
Relauncher = Callable[[], "EnclaveClient"]

_RELAUNCH_INTERVAL = 1.0


class EnclaveSupervisor:
    """Owns an ``EnclaveClient``; caches ``hello()`` and tracks the models loaded in this instance.

    Safe for concurrent use from one event loop. Transport failures (``OSError``, ``EOFError``)
    surface as ``enclave.unavailable``; every other error keeps the enclave's code.

    With a ``relauncher``, a dead enclave (its channel reports ``alive == False``) is replaced by a
    fresh instance before the next call, at most once per second; the dead client is closed. The
    call that found it dead still fails with ``enclave.unavailable``: requests sealed to the old
    instance's key cannot be retried, clients must attest the new one. Without a relauncher the
    supervisor never closes the client: whoever launched it does.
    """

    def __init__(
        self, client: EnclaveClient, *, hello_ttl: float = 5.0, relauncher: Relauncher | None = None
    ) -> None:
        self.client = client
        self._relauncher = relauncher
        self._relaunch_lock = asyncio.Lock()
        self._relaunched_at = 0.0
        self._hello_ttl = hello_ttl
        self._info: EnclaveInfo | None = None
        self._info_at = 0.0
        self._info_lock = asyncio.Lock()
        self._loaded: set[str] = set()
        self._locks: dict[str, asyncio.Lock] = {}
        self._datasets: set[str] = set()
        self._dataset_locks: dict[str, asyncio.Lock] = {}

    def _client_alive(self) -> bool:
        alive = getattr(getattr(self.client, "channel", None), "alive", True)
        return bool(alive)

    async def _current(self) -> EnclaveClient:
        """Return the client to use, relaunching a dead enclave first when that is allowed."""
        if self._relauncher is None or self._client_alive():
            return self.client
        async with self._relaunch_lock:
            if self._client_alive() or time.monotonic() - self._relaunched_at < _RELAUNCH_INTERVAL:
                return self.client
            self._relaunched_at = time.monotonic()
            log.warning("the enclave stopped; launching a new instance")
            dead, relauncher = self.client, self._relauncher
            fresh = await asyncio.to_thread(relauncher)
            self.replace_client(fresh)
            await asyncio.to_thread(dead.close)
            return fresh

    def replace_client(self, client: EnclaveClient) -> None:
        """Switch to another enclave instance: no model counts as loaded, identity is re-read."""
        self.client = client
        self._loaded.clear()
        self._datasets.clear()
        self._info = None
        self._info_at = 0.0

    def close(self) -> None:
        """Close the current client (for owners that let the supervisor relaunch enclaves)."""
        self.client.close()

    async def _call(self, call: Callable[[EnclaveClient], Awaitable[T]]) -> T:
        client = await self._current()
        try:
            return await call(client)
        except SealedMLError as exc:
            if exc.code in _RESTART_HINTS:
                self.invalidate()
            raise
        except (OSError, EOFError) as exc:
            self.invalidate()
            raise EnclaveError("enclave.unavailable", "the enclave cannot be reached") from exc

    def _fresh(self) -> EnclaveInfo | None:
        if not self._client_alive():
            return None  # a dead enclave's identity is stale: relaunch (or fail) on the next call
        if self._info is not None and time.monotonic() - self._info_at < self._hello_ttl:
            return self._info
        return None

    async def info(self, *, refresh: bool = False) -> EnclaveInfo:
        """Return the enclave's identity, re-asking it at most every ``hello_ttl`` seconds.

        Guarantees: if the enclave's ``instance_id`` changed since the last answer, every model is
        marked as not loaded, so the next prediction loads it again from its sealed key.
        """
        cached = None if refresh else self._fresh()
        if cached is not None:
            return cached
        async with self._info_lock:
            cached = None if refresh else self._fresh()
            if cached is not None:
                return cached
            fresh = await self._call(lambda c: c.hello())
            if self._info is not None and fresh.instance_id != self._info.instance_id:
                log.warning("enclave instance changed; models will be re-loaded from sealed keys")
                self._loaded.clear()
                self._datasets.clear()
            self._info, self._info_at = fresh, time.monotonic()
            return fresh

    def invalidate(self) -> None:
        """Forget the cached identity's freshness (the next :meth:`info` asks the enclave again)."""
        self._info_at = 0.0

    def is_loaded(self, model_id: str) -> bool:
        """Whether ``model_id`` is believed to be loaded in the current enclave instance."""
        return model_id in self._loaded

    async def evidence(self, nonce: bytes) -> bytes:
        """Return the enclave's EvidenceBundle JSON for ``nonce`` (opaque bytes)."""
        return await self._call(lambda c: c.evidence(nonce))

    async def provision(self, model_id: str, client: str, request: bytes, blob: bytes) -> ProvisionResult:
        """Relay a provider's sealed key request; on success the model counts as loaded."""
        async with self._lock_for(model_id):
            await self.info()  # tie the loaded set to a known instance
            result = await self._call(lambda c: c.provision(model_id, client, request, blob))
            self._loaded.add(model_id)
            return result

    async def predict(
        self, model_id: str, client: str, job_id: str, request: bytes, loader: Loader
    ) -> PredictResult:
        """Relay a sealed prediction request, loading the model from its sealed key when needed.

        Guarantees: at most one ``load`` per model runs at a time; a ``model.not_provisioned``
        answer triggers exactly one reload and one retry; every other error propagates unchanged.
        """
        await self._ensure_loaded(model_id, loader)
        try:
            return await self._call(lambda c: c.predict(model_id, client, job_id, request))
        except SealedMLError as exc:
            if exc.code != "model.not_provisioned":
                raise
            log.info("enclave lost model %s; re-loading it from its sealed key", model_id)
        self._loaded.discard(model_id)
        await self.info(refresh=True)  # a restart lost every model, not just this one
        await self._ensure_loaded(model_id, loader)
        return await self._call(lambda c: c.predict(model_id, client, job_id, request))

    async def unload(self, model_id: str) -> None:
        """Drop ``model_id`` from the enclave. Never raises: an unreachable enclave holds nothing."""
        async with self._lock_for(model_id):
            self._loaded.discard(model_id)
            try:
                await self._call(lambda c: c.unload(model_id))
            except SealedMLError as exc:
                if exc.code != "model.not_provisioned":
                    log.warning("could not unload model %s from the enclave: %s", model_id, exc.code)
        self._locks.pop(model_id, None)

    def _lock_for(self, model_id: str) -> asyncio.Lock:
        lock = self._locks.get(model_id)
        if lock is None:
            lock = self._locks[model_id] = asyncio.Lock()
        return lock

    async def _ensure_loaded(self, model_id: str, loader: Loader) -> None:
        if model_id in self._loaded:
            return
        async with self._lock_for(model_id):
            if model_id in self._loaded:
                return
            await self.info()  # tie the loaded set to a known instance
            material = await loader()
            await self._call(lambda c: c.load(model_id, material.sealed_key, material.blob, material.usage))
            self._loaded.add(model_id)

    # -- datasets and training ----------------------------------------------------------------------

    def dataset_loaded(self, dataset_id: str) -> bool:
        """Whether ``dataset_id`` is believed to be loaded in the current enclave instance."""
        return dataset_id in self._datasets

    def _dataset_lock(self, dataset_id: str) -> asyncio.Lock:
        lock = self._dataset_locks.get(dataset_id)
        if lock is None:
            lock = self._dataset_locks[dataset_id] = asyncio.Lock()
        return lock

    async def provision_dataset(
        self, dataset_id: str, client: str, request: bytes, blob: bytes
    ) -> tuple[ProvisionDatasetResult, DatasetBudget]:
        """Relay an owner's sealed dataset config; on success the dataset counts as loaded.

        Also returns the dataset's public budget, read back from the enclave with the state it just
        sealed (``load_dataset`` of an identical state changes nothing).
        """
        async with self._dataset_lock(dataset_id):
            await self.info()
            result = await self._call(lambda c: c.provision_dataset(dataset_id, client, request, blob))
            budget = await self._call(lambda c: c.load_dataset(dataset_id, result.sealed_state, blob))
            self._datasets.add(dataset_id)
            return result, budget

    async def ensure_dataset(self, dataset_id: str, loader: DatasetLoader) -> DatasetBudget | None:
        """Load ``dataset_id`` from its sealed state unless the current instance holds it already.

        Returns the budget the enclave reported when it loaded the dataset now, ``None`` if it was
        loaded before. Errors (``input.blob_mismatch``, ``request.stale_state``...) propagate.
        """
        if dataset_id in self._datasets:
            return None
        async with self._dataset_lock(dataset_id):
            if dataset_id in self._datasets:
                return None
            await self.info()
            material = await loader()
            budget = await self._call(
                lambda c: c.load_dataset(dataset_id, material.sealed_state, material.blob)
            )
            self._datasets.add(dataset_id)
            return budget

    async def unload_dataset(self, dataset_id: str) -> None:
        """Drop ``dataset_id`` from the enclave. Never raises: an unreachable enclave holds nothing."""
        async with self._dataset_lock(dataset_id):
            self._datasets.discard(dataset_id)
            try:
                await self._call(lambda c: c.unload_dataset(dataset_id))
            except SealedMLError as exc:
                log.warning("could not unload dataset %s from the enclave: %s", dataset_id, exc.code)
        self._dataset_locks.pop(dataset_id, None)

    async def approve(self, dataset_id: str, request: bytes, loader: DatasetLoader) -> ApproveResult:
        """Relay an owner's sealed approval, loading the dataset from its sealed state when needed.

        Guarantees: an ``input.dataset_not_provisioned`` answer triggers exactly one reload and one
        retry (the enclave refused before it opened the request, so the retry is not a replay).
        """
        await self.ensure_dataset(dataset_id, loader)
        try:
            return await self._call(lambda c: c.approve(dataset_id, request))
        except SealedMLError as exc:
            if exc.code != "input.dataset_not_provisioned":
                raise
        self._datasets.discard(dataset_id)
        await self.info(refresh=True)
        await self.ensure_dataset(dataset_id, loader)
        return await self._call(lambda c: c.approve(dataset_id, request))

    async def train(
        self,
        model_id: str,
        client: str,
        job_id: str,
        datasets: list[str],
        request: bytes,
        blobs: list[bytes],
        *,
        progress: Callable[[int, int], Awaitable[None] | None] | None = None,
    ) -> TrainResult:
        """Relay a sealed training job; the caller loaded its datasets first (:meth:`ensure_dataset`).

        A sealed ``train`` request is consumed when the enclave opens it, so it is never retried.
        A published model counts as loaded in this instance afterwards. One enclave trains in one
        call, so ``progress`` (rounds of a data-parallel job, see the Ray pool) is never called.
        """
        result = await self._call(lambda c: c.train(model_id, client, job_id, datasets, request, blobs))
        if result.published:
            self._loaded.add(model_id)
        return result
