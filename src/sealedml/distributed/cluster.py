"""The coordinator: start enclave workers on Ray, attest each one, and let the attested ones join.

The coordinator is host code and is not trusted by the enclaves: it attests every worker with
the platform's :class:`~sealedml.attestation.policy.AppraisalPolicy` (fresh nonce,
:func:`~sealedml.attestation.verifier.verify_evidence`) so that a worker that fails is never
asked to join, and it relays the four join steps between enclaves (:mod:`sealedml.enclave.peers`),
which decide for themselves. The first worker that passes becomes the *seed*: its identity is the
cluster's. Later workers join from any member, in rounds (each member serves one joiner per round,
so ``n`` workers join in ``ceil(log2 n)`` rounds).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sealedml.attestation.evidence.bundle import EvidenceBundle
from sealedml.attestation.verifier import verify_evidence
from sealedml.distributed.worker import EnclaveWorker, machine_dir
from sealedml.errors import ClusterError, ConfigError, EnclaveError, SealedMLError, error_from_dict

if TYPE_CHECKING:
    from sealedml.attestation.policy import AppraisalPolicy

__all__ = ["ClusterStats", "EnclaveCluster", "ModelSource", "WorkerHandle"]

log = logging.getLogger("sealedml.distributed")

ModelSource = Callable[[str], Awaitable[tuple[bytes, dict[str, int]] | None]]
"""Returns a model's encrypted blob and usage counters by id (``None`` if it no longer exists)."""

LOST_CODES = frozenset({"cluster.worker_lost", "enclave.unavailable"})
"""Error codes meaning the worker (actor or enclave process) is gone and must be replaced."""

CONNECT_TIMEOUT = 10.0
"""Seconds to wait for a Ray cluster's GCS port to accept a connection before giving up."""


def connect_ray(address: str) -> None:
    """Connect this process to the running Ray cluster at ``address`` (``host:port`` or ``auto``).

    Guarantees: returns connected, or raises within about ``CONNECT_TIMEOUT`` seconds for an
    address nothing listens on (``cluster.unreachable``; Ray itself would wait for minutes) and
    after Ray's own retries for a cluster that refuses this process (``cluster.unreachable``,
    naming token authentication when that is the cause); ``config.invalid`` for a malformed address.
    """
    import ray
    import ray.exceptions

    host, sep, port = address.rpartition(":")
    if sep and "://" not in address:
        if not port.isdigit() or not host:
            raise ConfigError("config.invalid", f"--ray {address!r} is not 'local', 'auto' or host:port")
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT):
                pass
        except OSError as exc:
            raise ClusterError(
                "cluster.unreachable",
                f"no Ray cluster answers at {address} ({exc.strerror or type(exc).__name__}): check the "
                f"address, or start one there with `ray start --head --port {port}`",
            ) from None
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    except ValueError as exc:
        raise ConfigError("config.invalid", f"--ray {address!r} is not a Ray address: {exc}") from None
    except (ConnectionError, ray.exceptions.RayError) as exc:
        chain: list[BaseException] = [exc]
        while len(chain) < 16 and (chain[-1].__cause__ or chain[-1].__context__) is not None:
            chain.append(chain[-1].__cause__ or chain[-1].__context__)  # type: ignore[arg-type]
        # Ray reports a refused token as an AuthenticationError, or as its text inside a RuntimeError.
        if any(
            isinstance(link, ray.exceptions.AuthenticationError) or "InvalidAuthToken" in str(link)
            for link in chain
        ):
            raise ClusterError(
                "cluster.unreachable",
                f"the Ray cluster at {address} requires token authentication: set RAY_AUTH_MODE=token and "
                "its token (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token) in the environment "
                "of this process before it starts",
            ) from None
        raise ClusterError(
            "cluster.unreachable", f"could not join the Ray cluster at {address}: {exc}"
        ) from None


@dataclass
class WorkerHandle:
    """One attested, joined worker: its Ray actor and the verified claims of its evidence."""

    name: str
    actor: Any
    claims: dict[str, Any]
    slot: int = 0
    instance_id: str = ""
    models: set[str] = field(default_factory=set)
    """Models loaded in this worker's enclave (host bookkeeping)."""

    async def call(
        self, op: str, header: dict[str, Any], parts: Sequence[bytes] = ()
    ) -> tuple[dict[str, Any], list[bytes]]:
        """Forward one raw enclave-protocol request to this worker's enclave.

        Guarantees: a dead or unreachable actor raises ``ClusterError("cluster.worker_lost")``;
        the enclave's own errors keep their ``SealedMLError`` code.
        """
        import ray.exceptions

        try:
            status, head, out = await self.actor.call.remote(op, header, list(parts))
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as exc:
            raise ClusterError("cluster.worker_lost", f"{self.name} is gone ({type(exc).__name__})") from None
        except ray.exceptions.RayError as exc:
            raise EnclaveError("enclave.internal", f"{self.name} failed ({type(exc).__name__})") from None
        if status != "ok":
            raise error_from_dict(head)
        return head, out


@dataclass
class ClusterStats:
    """What starting and growing the cluster cost (for the benchmark's cost model)."""

    attestations: list[float] = field(default_factory=list)
    """Seconds per host-side attestation (evidence request + verify_evidence)."""
    joins: list[float] = field(default_factory=list)
    """Seconds per four-step join (two in-enclave verifications + transfer)."""
    join_rounds: int = 0
    launches: list[float] = field(default_factory=list)
    """Seconds to start an actor and its enclave process."""


class EnclaveCluster:
    """Attested enclave workers on Ray that share one cluster identity.

    Guarantees: every worker in :attr:`workers` passed ``verify_evidence`` under the policy with a
    fresh nonce before any join step reached it, then joined by mutual attestation; every worker
    that failed is in :attr:`rejected` with its error code, was never given a key, and its actor
    was stopped. Use :meth:`start`.
    """

    def __init__(
        self,
        *,
        policy: AppraisalPolicy,
        platform_dir: Path,
        tee: str,
        enclave_workers: int,
        command: Sequence[str] | None,
        worker_cpus: float | None,
        owns_ray: bool,
    ) -> None:
        self.policy = policy
        self.platform_dir = Path(platform_dir)
        self.tee = tee
        self.workers: list[WorkerHandle] = []
        self.rejected: list[tuple[str, str]] = []
        self.stats = ClusterStats()
        self.model_source: ModelSource | None = None
        self._enclave_workers = enclave_workers
        self._command = list(command) if command else None
        self._worker_cpus = worker_cpus
        self._owns_ray = owns_ray
        self._generation = 0
        self._replace_lock = asyncio.Lock()

    @property
    def seed(self) -> WorkerHandle:
        """A member holding the cluster identity (the first live worker; the seed while it lives)."""
        if not self.workers:
            raise ClusterError("cluster.no_workers", "no attested worker is left in the cluster")
        return self.workers[0]

    # -- starting ---------------------------------------------------------------------------------

    @classmethod
    async def start(
        cls,
        *,
        workers: int,
        address: str = "local",
        tee: str = "simulated",
        platform_dir: Path,
        policy: AppraisalPolicy,
        num_cpus: int | None = None,
        enclave_workers: int = 2,
        command: Sequence[str] | None = None,
        worker_env: Mapping[str, Mapping[str, str]] | None = None,
        worker_cpus: float | None = None,
    ) -> EnclaveCluster:
        """Start ``workers`` enclave workers, attest them, and join the ones that pass.

        ``address`` is ``"local"`` (start a local Ray runtime with ``num_cpus`` unless one is
        running) or a Ray address to connect to. ``worker_env`` maps a worker name
        (``"worker-2"``) to environment variables for its enclave process (another build or
        configuration on that machine). Raises ``cluster.no_workers`` if no worker passes.
        """
        if workers < 1:
            raise ClusterError("cluster.no_workers", "a cluster needs at least one worker")
        import ray

        owns = False
        if not ray.is_initialized():
            if address == "local":
                ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
            else:
                connect_ray(address)
            owns = True
        cluster = cls(
            policy=policy,
            platform_dir=platform_dir,
            tee=tee,
            enclave_workers=enclave_workers,
            command=command,
            worker_cpus=worker_cpus,
            owns_ray=owns,
        )
        try:
            names = [f"worker-{slot}" for slot in range(workers)]
            envs = worker_env or {}
            handles = await asyncio.gather(
                *(
                    cluster._launch(slot, names[slot], dict(envs.get(names[slot], {})))
                    for slot in range(workers)
                )
            )
            attested = await asyncio.gather(*(cluster._attest(handle) for handle in handles))
            passing = [handle for handle in attested if handle is not None]
            if not passing:
                raise ClusterError(
                    "cluster.no_workers",
                    f"no worker passed attestation: {', '.join(f'{n} ({c})' for n, c in cluster.rejected)}",
                )
            cluster.workers = [passing[0]]
            await cluster._join_all(passing[1:])
        except BaseException:
            await cluster.close()
            raise
        log.info(
            "cluster ready: %d worker(s), %d rejected, seed %s",
            len(cluster.workers),
            len(cluster.rejected),
            cluster.seed.name,
        )
        return cluster

    async def _launch(self, slot: int, name: str, env: dict[str, str]) -> WorkerHandle:
        import ray

        started = time.perf_counter()
        options: dict[str, Any] = {"scheduling_strategy": "SPREAD"}
        if self._worker_cpus is not None:
            options["num_cpus"] = self._worker_cpus
        actor_class = ray.remote(EnclaveWorker)
        actor = actor_class.options(**options).remote(
            str(machine_dir(self.platform_dir, slot)),
            tee=self.tee,
            root_dir=str(self.platform_dir),
            enclave_workers=self._enclave_workers,
            command=self._command,
            env=env or None,
        )
        handle = WorkerHandle(name=name, actor=actor, claims={}, slot=slot)
        try:
            await actor.pid.remote()  # the constructor (enclave launch) has finished
        except Exception as exc:
            log.warning("%s did not start: %s", name, type(exc).__name__)
        self.stats.launches.append(time.perf_counter() - started)
        return handle

    async def _attest(self, handle: WorkerHandle) -> WorkerHandle | None:
        """Attest ``handle`` under the policy; on failure record it, stop it, return None."""
        started = time.perf_counter()
        try:
            nonce = os.urandom(32)
            _, parts = await handle.call("evidence", {"nonce": nonce.hex()})
            if len(parts) != 1:
                raise EnclaveError("enclave.protocol", "evidence reply without a bundle")
            bundle = EvidenceBundle.from_json(parts[0])
            result = verify_evidence(bundle, nonce=nonce, policy=self.policy, now=datetime.now(UTC))
            info, _ = await handle.call("hello", {})
            if bytes.fromhex(str(info.get("hpke_public_key"))) != result.hpke_public_key:
                raise ClusterError("cluster.peer_rejected", "the worker serves other keys than it attested")
        except SealedMLError as exc:
            await self._reject(handle, exc)
            return None
        finally:
            self.stats.attestations.append(time.perf_counter() - started)
        handle.claims = result.claims.to_dict()
        handle.instance_id = str(info.get("instance_id", ""))
        return handle

    async def _reject(self, handle: WorkerHandle, exc: SealedMLError) -> None:
        log.warning("worker %s rejected, no key given: [%s] %s", handle.name, exc.code, exc.message)
        self.rejected.append((handle.name, exc.code))
        await self._stop(handle)

    async def _stop(self, handle: WorkerHandle) -> None:
        import ray

        try:
            await asyncio.wait_for(handle.actor.close.remote(), timeout=10)
        except Exception:  # noqa: S110 - a dead actor cannot close; it is killed below
            pass
        try:
            ray.kill(handle.actor, no_restart=True)
        except Exception:  # noqa: S110 - already gone
            pass

    # -- joining ----------------------------------------------------------------------------------

    async def join(
        self,
        member: WorkerHandle,
        joiner: WorkerHandle,
        models: Sequence[str] | None = None,
        *,
        source: ModelSource | None = None,
    ) -> list[str]:
        """Relay the four join steps from ``member`` to ``joiner``; load the transferred models.

        ``models`` limits the transfer (default: every model the member holds); their blobs come
        from ``source`` (default :attr:`model_source`). Returns the ids of the models the joiner
        loaded. Errors keep their codes
        (``cluster.peer_rejected``, ``cluster.challenge_unknown``, ``attestation.*``,
        ``crypto.auth_failed``, ``cluster.worker_lost``).
        """
        started = time.perf_counter()
        head, _ = await member.call("peer_challenge", {})
        request, evidence = await joiner.call("peer_request", {"nonce": head["nonce"]})
        header: dict[str, Any] = {"nonce": request["nonce"]}
        if models is not None:
            header["models"] = list(models)
        export, parts = await member.call("peer_export", header, evidence)
        imported, sealed = await joiner.call("peer_import", {"signature": export["signature"]}, parts)
        self.stats.joins.append(time.perf_counter() - started)
        loaded = []
        for model_id, config in zip(imported.get("models") or [], sealed, strict=True):
            blobs = source or self.model_source
            material = await blobs(model_id) if blobs is not None else None
            if material is None:
                continue
            blob, usage = material
            await joiner.call("load", {"model": model_id, "usage": usage}, (config, blob))
            joiner.models.add(model_id)
            loaded.append(model_id)
        return loaded

    async def _join_all(self, pending: list[WorkerHandle]) -> None:
        """Join ``pending`` in rounds: every member serves one joiner per round."""
        while pending:
            members = list(self.workers)
            batch, pending = pending[: len(members)], pending[len(members) :]
            outcomes = await asyncio.gather(
                *(self.join(member, joiner) for member, joiner in zip(members, batch, strict=False)),
                return_exceptions=True,
            )
            self.stats.join_rounds += 1
            for joiner, outcome in zip(batch, outcomes, strict=True):
                if isinstance(outcome, SealedMLError):
                    await self._reject(joiner, outcome)
                elif isinstance(outcome, BaseException):
                    raise outcome
                else:
                    self.workers.append(joiner)
        self.workers.sort(key=lambda w: w.slot)

    # -- failures ---------------------------------------------------------------------------------

    async def replace(self, worker: WorkerHandle) -> WorkerHandle:
        """Replace a lost worker: a new actor in the same slot (same machine), attested and joined.

        Guarantees: the old actor is stopped; the new one is in :attr:`workers` only if it passed
        attestation and joined (it then holds the cluster identity and every model a member
        holds, reloaded from the transfer and the blobs of :attr:`model_source`). Raises
        ``cluster.no_workers`` when no member is left to join from, or the new worker's error.
        """
        async with self._replace_lock:
            if worker not in self.workers:
                current = next((w for w in self.workers if w.slot == worker.slot), None)
                if current is not None:
                    return current  # someone else replaced it already
            else:
                self.workers.remove(worker)
            await self._stop(worker)
            if not self.workers:
                raise ClusterError(
                    "cluster.no_workers", "every worker was lost: the cluster identity is gone; restart it"
                )
            self._generation += 1
            log.warning("replacing lost worker %s", worker.name)
            fresh = await self._launch(worker.slot, f"worker-{worker.slot}.{self._generation}", {})
            if await self._attest(fresh) is None:
                raise ClusterError(
                    "cluster.worker_lost", f"the replacement of {worker.name} failed attestation"
                )
            member = self.seed
            try:
                await self.join(member, fresh)
            except SealedMLError as exc:
                await self._reject(fresh, exc)
                raise
            self.workers.append(fresh)
            self.workers.sort(key=lambda w: w.slot)
            return fresh

    async def close(self) -> None:
        """Stop every worker (and the local Ray runtime if this cluster started it)."""
        workers, self.workers = list(self.workers), []
        await asyncio.gather(*(self._stop(worker) for worker in workers), return_exceptions=True)
        if self._owns_ray:
            import ray

            ray.shutdown()
