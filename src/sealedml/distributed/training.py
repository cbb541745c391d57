"""Data-parallel training on an :class:`~sealedml.distributed.cluster.EnclaveCluster` (host side).

The host only relays: a coordinator enclave opens the sealed job and cuts it into shard tasks
(``ptrain_begin``), every round each shard's worker trains on its rows (``ptrain_round``), and the
coordinator checks and averages the round's updates (``ptrain_aggregate``), returning the same
:class:`~sealedml.tee.client.TrainResult` as single-enclave training after the last round. All
this code handles is ciphertext under keys only attested enclaves hold, plus public numbers
(round, shard index, how many rounds); see ``docs/distributed-training.md``.

Fault tolerance: when a worker is lost mid-round (its actor or enclave died), the cluster
replaces it (a new actor, attested and joined, in the same slot) and that shard of that round is
redone there; the other shards' updates of the round are kept. A lost *coordinator* fails the job
(``cluster.coordinator_lost``): its in-enclave state (approvals, round key, averaged weights) is
gone with it, and the platform may resubmit. This function runs once per job, so the platform
bills a job once however many shards were redone.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from sealedml.enclave.parallel_training import MAX_SHARDS, supports_data_parallel
from sealedml.errors import ClusterError, EnclaveError, InputError, RequestError, SealedMLError
from sealedml.tee.client import TrainResult, _train_result

if TYPE_CHECKING:
    from sealedml.distributed.cluster import EnclaveCluster, WorkerHandle

__all__ = ["RoundProgress", "supports_data_parallel", "train_data_parallel"]

log = logging.getLogger("sealedml.distributed")

LOST_CODES = frozenset({"cluster.worker_lost", "enclave.unavailable"})
"""Codes meaning a worker (its actor or its enclave process) is gone and must be replaced."""

RoundProgress = Callable[[int, int], Awaitable[None] | None]
"""Called with ``(round finished, rounds)`` after each aggregation; may be sync or async."""


class _Run:
    """One job's host-side bookkeeping: where each shard runs and which workers hold its rows."""

    def __init__(
        self,
        cluster: EnclaveCluster,
        coordinator: WorkerHandle,
        slots: list[int],
        max_replacements: int,
    ) -> None:
        self.cluster = cluster
        self.coordinator = coordinator
        self.slots = slots
        self.max_replacements = max_replacements
        self.replacements = 0
        self.loaded: set[tuple[int, int]] = set()
        """(id of the worker handle, shard) pairs whose worker has decrypted the shard's rows."""
        self.redone: list[tuple[int, int]] = []
        """(round, shard) pairs redone on a replacement worker."""

    def worker_for(self, shard: int) -> WorkerHandle:
        slot = self.slots[shard % len(self.slots)]
        for worker in self.cluster.workers:
            if worker.slot == slot:
                return worker
        raise ClusterError("cluster.worker_lost", f"no worker is left in slot {slot}")

    async def coordinate(
        self, op: str, header: dict[str, Any], parts: Sequence[bytes]
    ) -> tuple[dict[str, Any], list[bytes]]:
        try:
            return await self.coordinator.call(op, header, parts)
        except SealedMLError as exc:
            if exc.code in LOST_CODES:
                raise ClusterError(
                    "cluster.coordinator_lost",
                    f"the coordinator {self.coordinator.name} was lost during {op}: its in-enclave job "
                    "state is gone; submit the job again",
                ) from exc
            raise

    async def replace(self, worker: WorkerHandle, round_no: int, shard: int) -> None:
        if worker is self.coordinator or worker.slot == self.coordinator.slot:
            raise ClusterError(
                "cluster.coordinator_lost",
                f"the coordinator {worker.name} was lost in round {round_no}: submit the job again",
            )
        self.replacements += 1
        if self.replacements > self.max_replacements:
            raise ClusterError(
                "cluster.worker_lost",
                f"{self.replacements} workers were lost during this job (limit {self.max_replacements})",
            )
        log.warning("round %d shard %d: %s lost, replacing it", round_no, shard, worker.name)
        await self.cluster.replace(worker)
        self.redone.append((round_no, shard))

    async def shard(
        self, token: str, shard: int, round_no: int, task: bytes, weights: bytes, blobs: Sequence[bytes]
    ) -> bytes:
        while True:
            worker = self.worker_for(shard)
            key = (id(worker), shard)
            parts = [task, weights] if key in self.loaded else [task, weights, *blobs]
            header = {"ptrain": token, "shard": shard, "round": round_no}
            try:
                _head, out = await worker.call("ptrain_round", header, parts)
            except RequestError as exc:
                if exc.code != "request.shard_not_loaded" or key not in self.loaded:
                    raise
                self.loaded.discard(key)  # the worker evicted the shard: hand it the blobs again
                continue
            except SealedMLError as exc:
                if exc.code not in LOST_CODES:
                    raise
                self.loaded = {k for k in self.loaded if k[0] != id(worker)}
                await self.replace(worker, round_no, shard)
                continue
            if len(out) != 1:
                raise EnclaveError("enclave.protocol", "a ptrain_round reply must carry one update")
            self.loaded.add(key)
            return out[0]


async def train_data_parallel(
    cluster: EnclaveCluster,
    *,
    model_id: str,
    client: str,
    job_id: str,
    datasets: list[str],
    request: bytes,
    blobs: list[bytes],
    shards: int | None = None,
    coordinator: WorkerHandle | None = None,
    progress: RoundProgress | None = None,
    max_replacements: int | None = None,
) -> TrainResult:
    """Run one sealed training job data-parallel across the cluster's workers.

    Takes the inputs of ``EnclaveClient.train`` (the requester's sealed ``train`` request and the
    encrypted dataset blobs in the spec's order) and returns its result: the encrypted model, the
    grants and the receipt signed with the cluster key. The datasets must be loaded and every
    owner's approval delivered in the *coordinator* enclave (default: ``cluster.seed``).

    ``shards`` defaults to one per worker; shard ``i`` runs on worker ``i mod len(workers)``, all
    shards of a round in parallel. Guarantees: a worker lost mid-round is replaced and only its
    shard of that round is redone (at most ``max_replacements`` times, default twice the number
    of workers, else ``cluster.worker_lost``); a lost coordinator raises
    ``cluster.coordinator_lost``. On any failure the coordinator is asked to abort the job, so the
    same spec may run again. ``progress(round, rounds)`` is called after every aggregation.
    """
    if not cluster.workers:
        raise ClusterError("cluster.no_workers", "the cluster has no attested worker")
    chief = coordinator or cluster.seed
    count = shards if shards is not None else len(cluster.workers)
    if not 1 <= count <= MAX_SHARDS:
        raise InputError("input.malformed", f"shards must be 1..{MAX_SHARDS}, got {count}")
    run = _Run(
        cluster,
        chief,
        [w.slot for w in cluster.workers],
        2 * len(cluster.workers) if max_replacements is None else max_replacements,
    )
    head, parts = await run.coordinate(
        "ptrain_begin",
        {"model": model_id, "client": client, "job": job_id, "datasets": list(datasets), "shards": count},
        (request, *blobs),
    )
    try:
        token, rounds = str(head["ptrain"]), int(head["rounds"])
    except (KeyError, TypeError, ValueError) as exc:
        raise EnclaveError("enclave.protocol", "malformed ptrain_begin reply") from exc
    if len(parts) != 1 + count:
        raise EnclaveError("enclave.protocol", "the ptrain_begin reply lacks weights or tasks")
    weights, tasks = parts[0], parts[1:]
    try:
        for round_no in range(1, rounds + 1):
            updates = await asyncio.gather(
                *(run.shard(token, i, round_no, tasks[i], weights, blobs) for i in range(count))
            )
            head, out = await run.coordinate(
                "ptrain_aggregate", {"ptrain": token, "round": round_no}, updates
            )
            if progress is not None:
                maybe = progress(round_no, rounds)
                if inspect.isawaitable(maybe):
                    await maybe
            if head.get("done"):
                if round_no != rounds:
                    raise EnclaveError("enclave.protocol", "the coordinator finished before the last round")
                if run.redone:
                    log.info("job %s completed; shards redone after worker loss: %s", job_id, run.redone)
                return _train_result(head, out)
            if len(out) != 1:
                raise EnclaveError("enclave.protocol", "a ptrain_aggregate reply must carry the next weights")
            weights = out[0]
        raise EnclaveError("enclave.protocol", "the coordinator did not finish after the last round")
    except BaseException:
        await _abort(run, token)
        raise


async def _abort(run: _Run, token: str) -> None:
    """Best effort: release the job in the coordinator (it may be the part that failed)."""
    try:
        await asyncio.shield(run.coordinator.call("ptrain_abort", {"ptrain": token}))
    except (SealedMLError, asyncio.CancelledError) as exc:
        log.info("could not abort parallel job %s: %s", token[:16], getattr(exc, "code", type(exc).__name__))
