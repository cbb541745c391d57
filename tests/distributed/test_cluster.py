"""The coordinator on a local Ray runtime: attestation before keys, rejection, joins, replacement."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import ray

import sealedml
from sealedml.attestation.evidence.bundle import EvidenceBundle
from sealedml.attestation.measurement import compute_measurement
from sealedml.attestation.policy import AppraisalPolicy
from sealedml.attestation.producers.simulated import SimulatedPlatform
from sealedml.attestation.verifier import verify_evidence
from sealedml.distributed.cluster import EnclaveCluster
from sealedml.errors import SealedMLError


@pytest.fixture(scope="module", autouse=True)
def ray_runtime() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def policy_for(platform_dir: Path) -> AppraisalPolicy:
    root = SimulatedPlatform.open(platform_dir).root_fingerprint
    return AppraisalPolicy(
        allow_simulated=True, reference_measurements=(compute_measurement(),), simulated_roots=(root,)
    )


def other_build(tmp_path: Path) -> Path:
    """A copy of the enclave code with one measured file changed: another build of the enclave."""
    target = tmp_path / "other-build"
    shutil.copytree(
        Path(sealedml.__file__).parent, target / "sealedml", ignore=shutil.ignore_patterns("__pycache__")
    )
    runtime = target / "sealedml" / "enclave" / "runtime.py"
    runtime.write_text(runtime.read_text() + "\n# another build of the enclave\n")
    return target


def test_only_attested_workers_join_and_all_serve_the_cluster_identity(tmp_path):
    platform_dir = tmp_path / "platform"
    policy = policy_for(platform_dir)
    env = {"worker-1": {"PYTHONPATH": str(other_build(tmp_path))}}

    async def scenario() -> None:
        cluster = await EnclaveCluster.start(
            workers=3, platform_dir=platform_dir, policy=policy, worker_env=env, enclave_workers=1
        )
        try:
            assert cluster.rejected == [("worker-1", "attestation.measurement_mismatch")]
            assert [w.name for w in cluster.workers] == ["worker-0", "worker-2"]
            assert cluster.seed.name == "worker-0"
            keys = set()
            for worker in cluster.workers:
                nonce = os.urandom(32)
                _, (raw,) = await worker.call("evidence", {"nonce": nonce.hex()})
                result = verify_evidence(
                    EvidenceBundle.from_json(raw), nonce=nonce, policy=policy, now=datetime.now(UTC)
                )
                keys.add((result.hpke_public_key, result.signing_public_key))
                assert worker.claims["measurement"] == compute_measurement()
            assert len(keys) == 1  # one cluster identity, attested on every worker
            # Separate machines: each worker seals with its own secret under the shared root.
            assert {m.name for m in (platform_dir / "machines").iterdir()} == {"worker-1", "worker-2"}
            assert (
                SimulatedPlatform.open(platform_dir / "machines" / "worker-2").sealing_secret
                != SimulatedPlatform.open(platform_dir).sealing_secret
            )
            assert cluster.stats.join_rounds == 1 and len(cluster.stats.joins) == 1
        finally:
            await cluster.close()

    asyncio.run(scenario())


def test_a_killed_worker_is_lost_then_replaced_in_its_slot(tmp_path):
    platform_dir = tmp_path / "platform"
    policy = policy_for(platform_dir)

    async def scenario() -> None:
        cluster = await EnclaveCluster.start(
            workers=2, platform_dir=platform_dir, policy=policy, enclave_workers=1
        )
        try:
            cluster_key = (await cluster.seed.call("hello", {}))[0]["hpke_public_key"]
            victim = cluster.workers[1]
            ray.kill(victim.actor, no_restart=True)
            # The kill is asynchronous: a call racing it may still be answered, never afterwards.
            deadline = time.monotonic() + 30
            while True:
                try:
                    await victim.call("hello", {})
                except SealedMLError as exc:
                    assert exc.code == "cluster.worker_lost"
                    break
                assert time.monotonic() < deadline, "the killed worker kept answering"
                await asyncio.sleep(0.05)
            fresh = await cluster.replace(victim)
            assert fresh.slot == victim.slot and fresh.name != victim.name
            assert [w.slot for w in cluster.workers] == [0, 1]
            head, _ = await fresh.call("hello", {})
            assert head["hpke_public_key"] == cluster_key and head["joined"] is True
            assert head["instance_id"] != victim.instance_id
        finally:
            await cluster.close()

    asyncio.run(scenario())
