"""Data-parallel training on a local Ray runtime: attested workers, real data, a worker killed mid-job."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import ray

from enclave.test_training_kit import (
    CANCER_LABEL,
    Owner,
    Recipient,
    breast_cancer_table,
    digest_of,
    job_spec,
    onnx_labels,
    validation_rows,
)
from sealedml.attestation.measurement import compute_measurement
from sealedml.attestation.policy import AppraisalPolicy
from sealedml.attestation.producers.simulated import SimulatedPlatform
from sealedml.crypto.envelope import canonical_json
from sealedml.crypto.request import SealedRequest, open_response, seal_request
from sealedml.crypto.signing import verify_signature
from sealedml.crypto.stream import decrypt_bytes
from sealedml.distributed.cluster import EnclaveCluster, WorkerHandle
from sealedml.distributed.training import train_data_parallel
from sealedml.enclave.training import open_model_grant
from sealedml.tee.client import TrainResult

pytestmark = pytest.mark.ray_heavy


@pytest.fixture(scope="module", autouse=True)
def ray_runtime() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def cancer() -> tuple[np.ndarray, np.ndarray, Owner]:
    table = breast_cancer_table()
    x = np.column_stack([table.column(n).to_numpy() for n in table.column_names if n != CANCER_LABEL])
    y = table.column(CANCER_LABEL).to_numpy()
    return x, y, Owner.create("wisconsin", table)


def policy_for(platform_dir: Path) -> AppraisalPolicy:
    root = SimulatedPlatform.open(platform_dir).root_fingerprint
    return AppraisalPolicy(
        allow_simulated=True, reference_measurements=(compute_measurement(),), simulated_roots=(root,)
    )


async def cluster_key(worker: WorkerHandle) -> tuple[bytes, bytes]:
    head, _ = await worker.call("hello", {})
    return bytes.fromhex(head["hpke_public_key"]), bytes.fromhex(head["signing_public_key"])


async def prepare(
    coordinator: WorkerHandle, owner: Owner, spec: dict[str, Any]
) -> tuple[bytes, SealedRequest]:
    """What the platform does before a job: provision the dataset key and deliver the approval,
    both sealed to the cluster key, in the coordinator enclave; returns the sealed train request."""
    key, _ = await cluster_key(coordinator)
    provision = seal_request(
        enclave_public_key=key, op="provision_dataset", model=owner.dataset_id, payload=owner.config()
    )
    await coordinator.call(
        "provision_dataset",
        {"dataset": owner.dataset_id, "client": "owner"},
        (provision.envelope, owner.dataset.blob),
    )
    approval = owner.approval_request(key, digest_of(spec))
    await coordinator.call("approve", {"dataset": owner.dataset_id}, (approval.envelope,))
    sealed = seal_request(
        enclave_public_key=key, op="train", model=spec["model"], payload=json.dumps(spec).encode()
    )
    return sealed.envelope, sealed


def check_result(
    result: TrainResult, alice: Recipient, signing_key: bytes, x: np.ndarray, y: np.ndarray, seed: int
) -> dict[str, Any]:
    """The recipient's and the auditor's view: the grant opens, the model runs, the receipt verifies."""
    verify_signature(signing_key, canonical_json(result.receipt), bytes.fromhex(result.signature))
    assert result.receipt["enclave_key"] == signing_key.hex()
    grant = open_model_grant(dict(result.grants)[alice.public_hex], alice.key)
    assert (
        hashlib.sha256(result.model_blob).hexdigest() == grant.model_blob_sha256 == result.model_blob_sha256
    )
    onnx_bytes = decrypt_bytes(grant.model_key, result.model_blob, expected_content_type="model/onnx")
    assert hashlib.sha256(onnx_bytes).hexdigest() == result.receipt["model_sha256"]
    x_val, y_val = validation_rows(x, y, seed=seed)
    labels, _ = onnx_labels(onnx_bytes, x_val)
    accuracy = float(np.mean(labels == y_val))
    assert accuracy == pytest.approx(grant.metrics["accuracy"], abs=1e-12)
    return grant.metrics


def test_two_workers_train_and_a_worker_killed_mid_training_is_replaced(
    tmp_path: Path, cancer: tuple[np.ndarray, np.ndarray, Owner]
) -> None:
    x, y, owner = cancer
    platform_dir = tmp_path / "platform"
    policy = policy_for(platform_dir)

    async def scenario() -> None:
        cluster = await EnclaveCluster.start(
            workers=2, platform_dir=platform_dir, policy=policy, enclave_workers=2
        )
        try:
            assert [w.slot for w in cluster.workers] == [0, 1]
            hpke, signing = await cluster_key(cluster.seed)
            assert await cluster_key(cluster.workers[1]) == (hpke, signing)

            # 1. Two workers, one shard each.
            alice = Recipient()
            spec = job_spec(
                [owner.dataset_id],
                [alice],
                algorithm="mlp",
                params={"hidden_layer_sizes": [16], "max_iter": 60},
                seed=3,
            )
            request, sealed = await prepare(cluster.seed, owner, spec)
            seen: list[tuple[int, int]] = []
            result = await train_data_parallel(
                cluster,
                model_id=spec["model"],
                client="requester",
                job_id=spec["job"],
                datasets=spec["datasets"],
                request=request,
                blobs=[owner.dataset.blob],
                progress=lambda r, n: seen.append((r, n)),
            )
            metrics = check_result(result, alice, signing, x, y, seed=3)
            assert metrics["accuracy"] >= 0.9 and metrics["parallel"]["shards"] == 2
            rounds = metrics["parallel"]["rounds"]
            assert seen == [(r, rounds) for r in range(1, rounds + 1)]
            answer = json.loads(
                open_response(
                    result.response, response_key=sealed.response_key, request_id=sealed.header.request_id
                )
            )
            assert answer["model_sha256"] == result.model_sha256

            # 2. Kill worker-1's actor after round 2: its shard of round 3 is redone on a replacement.
            bob = Recipient()
            spec = job_spec([owner.dataset_id], [bob], params={"max_iter": 12}, seed=5)
            request, _ = await prepare(cluster.seed, owner, spec)
            victim = cluster.workers[1]
            progress: list[int] = []

            async def kill_after_round_two(round_no: int, _rounds: int) -> None:
                progress.append(round_no)
                if round_no == 2:
                    ray.kill(victim.actor, no_restart=True)

            result = await train_data_parallel(
                cluster,
                model_id=spec["model"],
                client="requester",
                job_id=spec["job"],
                datasets=spec["datasets"],
                request=request,
                blobs=[owner.dataset.blob],
                progress=kill_after_round_two,
            )
            replacement = cluster.workers[1]
            assert replacement.slot == 1 and replacement is not victim and replacement.name != victim.name
            metrics = check_result(result, bob, signing, x, y, seed=5)
            assert metrics["accuracy"] >= 0.9
            rounds = metrics["parallel"]["rounds"]
            assert progress == list(range(1, rounds + 1))  # each round aggregated once: one job, one result
            assert result.receipt["spec_sha256"] == digest_of(spec)
        finally:
            await cluster.close()

    asyncio.run(scenario())


def test_a_lost_coordinator_fails_the_job_and_nothing_is_returned(
    tmp_path: Path, cancer: tuple[np.ndarray, np.ndarray, Owner]
) -> None:
    _x, _y, owner = cancer
    platform_dir = tmp_path / "platform"
    policy = policy_for(platform_dir)

    async def scenario() -> None:
        cluster = await EnclaveCluster.start(
            workers=2, platform_dir=platform_dir, policy=policy, enclave_workers=1
        )
        try:
            spec = job_spec([owner.dataset_id], [Recipient()], params={"max_iter": 10})
            coordinator = cluster.seed
            request, _ = await prepare(coordinator, owner, spec)

            def kill_coordinator(round_no: int, _rounds: int) -> None:
                if round_no == 1:
                    ray.kill(coordinator.actor, no_restart=True)

            with pytest.raises(Exception) as caught:
                await train_data_parallel(
                    cluster,
                    model_id=spec["model"],
                    client="requester",
                    job_id=spec["job"],
                    datasets=spec["datasets"],
                    request=request,
                    blobs=[owner.dataset.blob],
                    progress=kill_coordinator,
                )
            assert getattr(caught.value, "code", None) == "cluster.coordinator_lost"
        finally:
            await cluster.close()

    asyncio.run(scenario())
