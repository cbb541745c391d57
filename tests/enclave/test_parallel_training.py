"""Data-parallel training through ``Enclave.handle`` (no Ray): one enclave plays coordinator and workers.

That is faithful to the cluster: workers share the cluster identity, so a task sealed to the
cluster key opens in any of them. A second enclave (another identity) stands in for a stranger.
Everything is real: real data, stream encryption, HPKE, approvals and the ONNX parity check.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from enclave.test_training_kit import (
    Owner,
    Recipient,
    breast_cancer_table,
    declared_bounds,
    digest_of,
    job_spec,
    new_enclave,
    onnx_labels,
    open_model,
    seal_job,
    validation_rows,
    verify_receipt,
)
from sealedml.crypto.request import SealedRequest, open_response
from sealedml.enclave.parallel_training import (
    MAX_ROUNDS,
    Schedule,
    open_round,
    peek_round,
    seal_round,
    supports_data_parallel,
)
from sealedml.enclave.runtime import Enclave, Reply
from sealedml.errors import CryptoError, EnclaveError, InputError, SealedMLError
from sealedml.training_spec import parse_job_spec

CANCER_LABEL = "diagnosis"
LR: dict[str, Any] = {}
MLP = {"hidden_layer_sizes": [16], "max_iter": 100}


@dataclass
class Started:
    """A begun parallel job as the host sees it: opaque weights and tasks."""

    spec: dict[str, Any]
    sealed: SealedRequest
    token: str
    rounds: int
    weights: bytes
    tasks: list[bytes]
    blobs: list[bytes]
    loaded: set[int] = field(default_factory=set)


@pytest.fixture(scope="module")
def cancer() -> tuple[np.ndarray, np.ndarray, Owner]:
    table = breast_cancer_table()
    x = np.column_stack([table.column(n).to_numpy() for n in table.column_names if n != CANCER_LABEL])
    y = table.column(CANCER_LABEL).to_numpy()
    return x, y, Owner.create("wisconsin", table)


def begin(
    enclave: Enclave, owners: list[Owner], spec: dict[str, Any], shards: int, approve: bool = True
) -> Started:
    if approve:
        digest = digest_of(spec)
        for owner in owners:
            owner.approve(enclave, digest)
    sealed = seal_job(enclave, spec)
    blobs = [o.dataset.blob for o in owners]
    reply = enclave.handle(
        "ptrain_begin",
        {
            "model": spec["model"],
            "client": "requester",
            "job": spec["job"],
            "datasets": spec["datasets"],
            "shards": shards,
        },
        [sealed.envelope, *blobs],
    )
    head = reply.header
    assert head["shards"] == shards and head["round"] == 1 and len(reply.parts) == 1 + shards
    return Started(spec, sealed, head["ptrain"], head["rounds"], reply.parts[0], list(reply.parts[1:]), blobs)


def run_round(
    enclave: Enclave, job: Started, shard: int, round_no: int, weights: bytes | None = None
) -> bytes:
    blobs = [] if shard in job.loaded else job.blobs
    reply = enclave.handle(
        "ptrain_round",
        {"ptrain": job.token, "shard": shard, "round": round_no},
        [job.tasks[shard], weights or job.weights, *blobs],
    )
    job.loaded.add(shard)
    assert reply.header == {"ptrain": job.token, "round": round_no, "shard": shard}
    return reply.parts[0]


def aggregate(enclave: Enclave, job: Started, round_no: int, updates: list[bytes]) -> Reply:
    return enclave.handle("ptrain_aggregate", {"ptrain": job.token, "round": round_no}, updates)


def finish(enclave: Enclave, job: Started, start_round: int = 1) -> tuple[Reply, dict[str, Any]]:
    shards = len(job.tasks)
    for round_no in range(start_round, job.rounds + 1):
        updates = [run_round(enclave, job, s, round_no) for s in range(shards)]
        reply = aggregate(enclave, job, round_no, updates)
        if round_no < job.rounds:
            assert reply.header["round"] == round_no + 1 and not reply.header["done"]
            job.weights = reply.parts[0]
    assert reply.header["done"] is True
    answer = json.loads(
        open_response(
            reply.parts[1], response_key=job.sealed.response_key, request_id=job.sealed.header.request_id
        )
    )
    return reply, answer


def code_of(call: Any) -> str:
    with pytest.raises(SealedMLError) as caught:
        call()
    return caught.value.code


# -- it trains ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("algorithm", "params"), [("logistic_regression", LR), ("mlp", MLP)])
def test_two_shards_train_as_well_as_one_enclave_and_the_recipient_reproduces_it(
    tmp_path: Path, cancer: tuple[np.ndarray, np.ndarray, Owner], algorithm: str, params: dict[str, Any]
) -> None:
    x, y, owner = cancer
    enclave = new_enclave(tmp_path)
    owner.provision(enclave)
    alice = Recipient()
    spec = job_spec([owner.dataset_id], [alice], algorithm=algorithm, params=params, seed=7)
    job = begin(enclave, [owner], spec, shards=2)
    assert job.rounds == Schedule.of(parse_job_spec(spec)).rounds <= MAX_ROUNDS
    reply, answer = finish(enclave, job)

    metrics = answer["metrics"]
    assert metrics["accuracy"] >= 0.93, metrics
    assert metrics["roc_auc"] > 0.95
    assert metrics["rows_used"] == 569 and metrics["rows_validation"] == 143 and metrics["rows_train"] == 426
    assert metrics["parallel"]["shards"] == 2 and metrics["parallel"]["rounds"] == job.rounds
    assert metrics["algorithm"] == algorithm and metrics["dp"] is None
    assert [p["phase"] for p in answer["phases"]] == [
        "decrypting",
        "preparing",
        "training",
        "exporting",
        "evaluating",
        "encrypting",
    ]

    onnx_bytes = open_model(reply.header, list(reply.parts), alice)
    x_val, y_val = validation_rows(x, y, seed=7)
    labels, probabilities = onnx_labels(onnx_bytes, x_val)
    assert float(np.mean(labels == y_val)) == pytest.approx(metrics["accuracy"], abs=1e-12)
    assert probabilities.shape == (143, 2)

    receipt = verify_receipt(enclave, reply)
    assert receipt["kind"] == "train" and receipt["spec_sha256"] == digest_of(spec)
    assert receipt["model_sha256"] == hashlib.sha256(onnx_bytes).hexdigest()
    assert receipt["datasets"][0]["blob_sha256"] == owner.dataset.blob_sha256
    assert receipt["input_sha256"] == hashlib.sha256(job.sealed.envelope).hexdigest()
    assert receipt["output_sha256"] == hashlib.sha256(reply.parts[1]).hexdigest()
    # The job is committed: the same spec cannot run again, parallel or not.
    assert code_of(lambda: begin(enclave, [owner], spec, shards=2)) == "request.replayed"


def test_joint_job_with_two_owners_and_a_published_model(tmp_path: Path) -> None:
    table = breast_cancer_table()
    first = Owner.create("wisconsin-a", table.slice(0, 300))
    second = Owner.create("wisconsin-b", table.slice(300))
    enclave = new_enclave(tmp_path)
    first.provision(enclave)
    second.provision(enclave)
    spec = job_spec(
        [first.dataset_id, second.dataset_id],
        [Recipient()],
        params={"class_weight": "balanced"},
        publish=True,
    )
    job = begin(enclave, [first, second], spec, shards=3)
    reply, answer = finish(enclave, job)
    assert answer["metrics"]["rows_used"] == 569 and answer["metrics"]["accuracy"] >= 0.93
    assert reply.header["layout"] == ["model_blob", "response", "model_config"]
    assert answer["published"] is True
    assert code_of(
        lambda: begin(
            enclave,
            [first],
            job_spec([first.dataset_id], [Recipient()], model=spec["model"], publish=True),
            2,
        )
    ) in ("input.conflict",)


def test_a_replaced_worker_redoes_its_shard_from_the_blobs(
    tmp_path: Path, cancer: tuple[np.ndarray, np.ndarray, Owner]
) -> None:
    """A fresh worker enclave (same cluster identity is simulated by the same object) without the shard
    in memory asks for the blobs; given them, it redoes the shard and the job completes."""
    _x, _y, owner = cancer
    enclave = new_enclave(tmp_path)
    owner.provision(enclave)
    spec = job_spec(
        [owner.dataset_id], [Recipient()], algorithm="mlp", params={"hidden_layer_sizes": [8], "max_iter": 20}
    )
    job = begin(enclave, [owner], spec, shards=2)
    updates = [run_round(enclave, job, s, 1) for s in range(2)]
    job.weights = aggregate(enclave, job, 1, updates).parts[0]
    # Drop the worker-side memory of shard 1, as a replacement worker would lack it.
    from sealedml.enclave import parallel_training

    state = parallel_training._state(enclave)
    with state.lock:
        state.shards.pop((job.token, 1))
    no_blobs = lambda: enclave.handle(  # noqa: E731
        "ptrain_round", {"ptrain": job.token, "shard": 1, "round": 2}, [job.tasks[1], job.weights]
    )
    assert code_of(no_blobs) == "request.shard_not_loaded"
    job.loaded.discard(1)
    _reply, answer = finish(enclave, job, start_round=2)
    assert answer["metrics"]["accuracy"] > 0.8


# -- refusals ------------------------------------------------------------------------------------------


@pytest.fixture
def started(tmp_path: Path, cancer: tuple[np.ndarray, np.ndarray, Owner]) -> tuple[Enclave, Started]:
    _x, _y, owner = cancer
    enclave = new_enclave(tmp_path)
    owner.provision(enclave)
    spec = job_spec([owner.dataset_id], [Recipient()], params={"max_iter": 10})
    return enclave, begin(enclave, [owner], spec, shards=2)


def test_a_replayed_round_update_is_refused(started: tuple[Enclave, Started]) -> None:
    enclave, job = started
    first = [run_round(enclave, job, s, 1) for s in range(2)]
    job.weights = aggregate(enclave, job, 1, first).parts[0]
    fresh = run_round(enclave, job, 0, 2)
    assert code_of(lambda: aggregate(enclave, job, 2, [fresh, first[1]])) == "request.replayed"
    assert code_of(lambda: aggregate(enclave, job, 1, first)) == "request.round_mismatch"
    # Relabelling the old update as round 2 breaks its authentication.
    assert (
        code_of(lambda: aggregate(enclave, job, 2, [fresh, relabel(first[1], round=2)]))
        == "crypto.auth_failed"
    )
    # The refusals changed nothing: the right set is still accepted.
    reply = aggregate(enclave, job, 2, [fresh, run_round(enclave, job, 1, 2)])
    assert reply.header["round"] == 3


def test_an_update_of_another_job_is_refused(
    tmp_path: Path, cancer: tuple[np.ndarray, np.ndarray, Owner], started: tuple[Enclave, Started]
) -> None:
    enclave, job = started
    _x, _y, owner = cancer
    other = begin(enclave, [owner], job_spec([owner.dataset_id], [Recipient()], params={"max_iter": 10}), 2)
    mine = run_round(enclave, job, 0, 1)
    theirs = run_round(enclave, other, 1, 1)
    assert code_of(lambda: aggregate(enclave, job, 1, [mine, theirs])) == "request.update_foreign"
    # Claiming the foreign update is ours does not authenticate (another round key, another binding).
    assert (
        code_of(lambda: aggregate(enclave, job, 1, [mine, relabel(theirs, job=job.token)]))
        == "crypto.auth_failed"
    )
    # Tasks cannot be swapped between jobs either.
    swapped = lambda: enclave.handle(  # noqa: E731
        "ptrain_round",
        {"ptrain": job.token, "shard": 1, "round": 1},
        [other.tasks[1], job.weights, *job.blobs],
    )
    assert code_of(swapped) == "request.update_foreign"
    weights_of_other = lambda: enclave.handle(  # noqa: E731
        "ptrain_round",
        {"ptrain": job.token, "shard": 1, "round": 1},
        [job.tasks[1], other.weights, *job.blobs],
    )
    assert code_of(weights_of_other) == "request.update_foreign"


def test_a_missing_or_duplicated_shard_is_refused(started: tuple[Enclave, Started]) -> None:
    enclave, job = started
    zero, one = run_round(enclave, job, 0, 1), run_round(enclave, job, 1, 1)
    assert code_of(lambda: aggregate(enclave, job, 1, [zero])) == "request.shards_incomplete"
    assert code_of(lambda: aggregate(enclave, job, 1, [zero, zero])) == "request.shard_duplicated"
    assert code_of(lambda: aggregate(enclave, job, 1, [zero, one, one])) == "request.shard_duplicated"
    assert code_of(lambda: aggregate(enclave, job, 1, [])) == "request.shards_incomplete"
    assert aggregate(enclave, job, 1, [one, zero]).header["round"] == 2  # order does not matter


def test_a_tampered_update_or_weights_fail_authentication(started: tuple[Enclave, Started]) -> None:
    enclave, job = started
    zero, one = run_round(enclave, job, 0, 1), run_round(enclave, job, 1, 1)
    flipped = bytearray(one)
    flipped[-3] ^= 0x01
    assert code_of(lambda: aggregate(enclave, job, 1, [zero, bytes(flipped)])) == "crypto.auth_failed"
    # An update claiming to be the other shard does not authenticate.
    assert code_of(lambda: aggregate(enclave, job, 1, [zero, relabel(zero, shard=1)])) == "crypto.auth_failed"
    bad_weights = bytearray(job.weights)
    bad_weights[-1] ^= 0x80
    assert code_of(lambda: run_round(enclave, job, 0, 1, bytes(bad_weights))) == "crypto.auth_failed"
    with pytest.raises(CryptoError):
        peek_round(b"not an envelope", "update")


def test_a_task_routed_as_another_shard_is_refused(started: tuple[Enclave, Started]) -> None:
    enclave, job = started
    wrong = lambda: enclave.handle(  # noqa: E731
        "ptrain_round", {"ptrain": job.token, "shard": 1, "round": 1}, [job.tasks[0], job.weights, *job.blobs]
    )
    assert code_of(wrong) == "request.task_mismatch"
    weights_as_round_2 = lambda: enclave.handle(  # noqa: E731
        "ptrain_round", {"ptrain": job.token, "shard": 0, "round": 2}, [job.tasks[0], job.weights, *job.blobs]
    )
    assert code_of(weights_as_round_2) == "request.round_mismatch"


def test_a_task_does_not_open_outside_the_cluster(tmp_path: Path, started: tuple[Enclave, Started]) -> None:
    _enclave, job = started
    stranger = new_enclave(tmp_path)  # same code and platform, but another identity: not joined
    call = lambda: stranger.handle(  # noqa: E731
        "ptrain_round", {"ptrain": job.token, "shard": 0, "round": 1}, [job.tasks[0], job.weights, *job.blobs]
    )
    assert code_of(call) == "request.wrong_recipient"
    assert code_of(lambda: aggregate(stranger, job, 1, [])) == "request.ptrain_unknown"


def test_abort_releases_the_spec_and_forgets_the_job(
    cancer: tuple[np.ndarray, np.ndarray, Owner], started: tuple[Enclave, Started]
) -> None:
    enclave, job = started
    _x, _y, owner = cancer
    reply = enclave.handle("ptrain_abort", {"ptrain": job.token}, [])
    assert reply.header["aborted"] is True
    assert code_of(lambda: aggregate(enclave, job, 1, [])) == "request.ptrain_unknown"
    # The approvals were not consumed: the same spec starts again with a fresh sealed request.
    again = begin(enclave, [owner], job.spec, shards=2, approve=False)
    assert again.token != job.token


def test_dp_specs_and_other_algorithms_are_refused(tmp_path: Path) -> None:
    table = breast_cancer_table()
    owner = Owner.create("wisconsin-dp", table)
    enclave = new_enclave(tmp_path)
    owner.provision(enclave, epsilon_total=5.0)
    dp = job_spec(
        [owner.dataset_id],
        [Recipient()],
        dp_epsilon=1.0,
        feature_bounds=declared_bounds(table, CANCER_LABEL),
        classes=[0, 1],
    )
    assert code_of(lambda: begin(enclave, [owner], dp, 2)) == "input.parallel_unsupported"
    forest = job_spec([owner.dataset_id], [Recipient()], algorithm="random_forest")
    assert code_of(lambda: begin(enclave, [owner], forest, 2)) == "input.parallel_unsupported"
    assert not supports_data_parallel("logistic_regression", {}, dp_epsilon=1.0)
    assert not supports_data_parallel("logistic_regression", {"fit_intercept": False})
    assert not supports_data_parallel("gradient_boosting", {})
    assert supports_data_parallel("mlp", {}) and supports_data_parallel("logistic_regression", {})


def test_missing_approvals_and_bad_framing_are_refused(
    tmp_path: Path, cancer: tuple[np.ndarray, np.ndarray, Owner]
) -> None:
    _x, _y, owner = cancer
    enclave = new_enclave(tmp_path)
    owner.provision(enclave)
    spec = job_spec([owner.dataset_id], [Recipient()])
    assert code_of(lambda: begin(enclave, [owner], spec, 2, approve=False)) == "request.approvals_missing"
    with pytest.raises(InputError) as caught:
        begin(enclave, [owner], job_spec([owner.dataset_id], [Recipient()]), shards=64)
    assert caught.value.code == "input.insufficient_data"
    with pytest.raises(EnclaveError):
        enclave.handle(
            "ptrain_begin", {"model": "m", "client": "c", "job": "j", "datasets": ["d"]}, [b"", b""]
        )
    garbage = lambda: enclave.handle(  # noqa: E731
        "ptrain_round", {"ptrain": "00" * 16, "shard": 0, "round": 1}, [b"x", b"y"]
    )
    assert code_of(garbage) == "crypto.malformed"
    no_weights = lambda: enclave.handle(  # noqa: E731
        "ptrain_round", {"ptrain": "00" * 16, "shard": 0, "round": 1}, [b"x"]
    )
    assert code_of(no_weights) == "enclave.protocol"


def relabel(blob: bytes, **changes: Any) -> bytes:
    """Rewrite the public binding of a round message without its key (what a hostile host can do)."""
    from sealedml.crypto.envelope import Kind, encode_prefix, parse

    envelope = parse(blob, Kind.SEALED)
    return encode_prefix(Kind.SEALED, {**envelope.header, **changes}) + envelope.body


def test_round_messages_open_only_under_their_key_and_binding() -> None:
    key = bytes(range(32))
    sealed = seal_round(key, kind="update", job="j1", round_no=3, shard=1, body=b"weights")
    assert peek_round(sealed, "update") == ("j1", 3, 1)
    assert open_round(key, sealed, "update").body == b"weights"
    with pytest.raises(CryptoError) as caught:
        open_round(bytes(32), sealed, "update")
    assert caught.value.code == "crypto.auth_failed"
    with pytest.raises(CryptoError):
        open_round(key, sealed, "weights")
    with pytest.raises(CryptoError):
        open_round(key, relabel(sealed, round=4), "update")


def test_the_enclave_client_drives_a_parallel_job_in_an_enclave_process(
    tmp_path: Path, cancer: tuple[np.ndarray, np.ndarray, Owner]
) -> None:
    import asyncio

    from sealedml.crypto.request import seal_request
    from sealedml.tee.simulated import launch_simulated

    _x, _y, owner = cancer
    alice = Recipient()
    spec = job_spec([owner.dataset_id], [alice], params={"max_iter": 10})

    async def scenario() -> None:
        client = launch_simulated(tmp_path, workers=2)
        try:
            key = (await client.hello()).hpke_public_key
            provision = seal_request(
                enclave_public_key=key, op="provision_dataset", model=owner.dataset_id, payload=owner.config()
            )
            await client.provision_dataset(owner.dataset_id, "owner", provision.envelope, owner.dataset.blob)
            await client.approve(owner.dataset_id, owner.approval_request(key, digest_of(spec)).envelope)
            sealed = seal_request(
                enclave_public_key=key, op="train", model=spec["model"], payload=json.dumps(spec).encode()
            )
            blobs = [owner.dataset.blob]
            token, rounds, weights, tasks = await client.ptrain_begin(
                spec["model"], "requester", spec["job"], spec["datasets"], sealed.envelope, blobs, shards=2
            )
            assert rounds == 10 and len(tasks) == 2
            result = None
            for round_no in range(1, rounds + 1):
                updates = await asyncio.gather(
                    *(
                        client.ptrain_round(
                            token, s, round_no, tasks[s], weights, blobs if round_no == 1 else ()
                        )
                        for s in range(2)
                    )
                )
                following, result = await client.ptrain_aggregate(token, round_no, updates)
                if following is not None:
                    weights = following
            assert result is not None and result.spec_sha256 == digest_of(spec)
            assert alice.public_hex in dict(result.grants)
            assert await client.ptrain_abort(token) is False  # finished jobs are gone
        finally:
            client.close()

    asyncio.run(scenario())
