"""Scaling on Ray: sharded inference with 1, 2 and 4 enclave workers against one enclave without Ray.

One run measures, on the same pre-sealed shards (breast-cancer logistic regression, rows tiled
with noise, HPKE-sealed ``predict`` requests):
  * the single-process path: one enclave process, no Ray (the platform's EnclaveSupervisor);
  * the Ray pool with 1, 2 and 4 workers (each a Ray actor with its own simulated enclave on its
    own simulated machine), same dispatch (ordered, window = 2 x workers);
rows/s and scaling efficiency (rows/s with n workers / (n x rows/s with 1 worker)); the cost of
growing the cluster as measured here (worker launch, host-side attestation, four-step join);
data-parallel training (``sealedml.distributed.training.train_data_parallel``) with 1, 2 and 4
workers against the single-enclave ``train`` path, on the same encrypted dataset and the same job
spec (the cancer rows tiled with noise; an MLP), with each run's accuracy, rounds, and the
measured time of the coordinator's ``ptrain_aggregate`` per round and per update; and a cost
model for 10, 100 and 1000 nodes whose inputs are the unit costs measured in this run.

    python benchmarks/scaling.py [--quick] [--rows N] [--shard-rows N] [--train-rows N] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def build_model() -> tuple[Any, list[str], np.ndarray]:
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from sealedml.client import from_estimator

    frame = load_breast_cancer(as_frame=True).frame
    features = [c for c in frame.columns if c != "target"]
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(
        frame[features], frame["target"]
    )
    return from_estimator(model), features, frame[features].to_numpy(dtype=np.float32)


def shards_for(
    public_key: bytes, model_id: str, features: list[str], base: np.ndarray, rows: int, shard_rows: int
):
    from sealedml.crypto.request import seal_request
    from sealedml.enclave import payload

    rng = np.random.default_rng(0)
    out = []
    for start in range(0, rows, shard_rows):
        n = min(shard_rows, rows - start)
        block = base[rng.integers(0, len(base), n)] + rng.normal(scale=0.01, size=(n, base.shape[1])).astype(
            np.float32
        )
        body = payload.pack({"columns": features}, {"features": block.astype(np.float32)})
        sealed = seal_request(
            enclave_public_key=public_key, op="predict", model=model_id, payload=body, rows=n
        )
        out.append(sealed.envelope)
    return out


def provision_request(public_key: bytes, model_id: str, prepared: Any) -> tuple[bytes, bytes]:
    from sealedml.crypto.request import seal_request
    from sealedml.crypto.stream import encrypt_bytes, new_data_key

    key = new_data_key()
    blob = encrypt_bytes(key, prepared.onnx_bytes, content_type="model/onnx")
    config = json.dumps(
        {
            "model_key": key.hex(),
            "model_blob_sha256": hashlib.sha256(blob).hexdigest(),
            "input_columns": list(prepared.input_columns),
            "output_policy": {"mode": "probabilities", "decimals": 2},
            "query_budget": None,
        }
    ).encode()
    request = seal_request(enclave_public_key=public_key, op="provision", model=model_id, payload=config)
    return request.envelope, blob


async def run_batch(supervisor: Any, model_id: str, loader: Any, shards: list[bytes], window: int) -> float:
    """Run every shard through ``supervisor.predict`` in order; return the seconds it took."""
    from sealedml.distributed.inference import ordered_map

    async def source():
        for envelope in shards:
            yield envelope

    async def run(index: int, envelope: bytes) -> int:
        result = await supervisor.predict(model_id, "bench", f"job-{index}", envelope, loader)
        return result.rows

    start = time.perf_counter()
    rows = 0
    async for outcome in ordered_map(source(), run, window=window):
        if outcome.error is not None:
            raise outcome.error
        rows += outcome.value or 0
    return time.perf_counter() - start


async def measure_single(
    platform_dir: Path, prepared: Any, features: list[str], base: np.ndarray, args: Any
) -> dict:
    from sealedml.platform.enclave_manager import EnclaveSupervisor, LoadMaterial
    from sealedml.tee.launcher import launch_enclave

    client = launch_enclave(platform_dir, workers=2)
    try:
        supervisor = EnclaveSupervisor(client)
        info = await supervisor.info()
        request, blob = provision_request(info.hpke_public_key, "m", prepared)
        provisioned = await supervisor.provision("m", "bench", request, blob)

        async def loader() -> LoadMaterial:
            return LoadMaterial(provisioned.sealed_key, blob, {})

        shards = shards_for(info.hpke_public_key, "m", features, base, args.rows, args.shard_rows)
        await run_batch(supervisor, "m", loader, shards[:2], 2)  # warm up
        shards = shards_for(info.hpke_public_key, "m", features, base, args.rows, args.shard_rows)
        seconds = await run_batch(supervisor, "m", loader, shards, 2)
        return {
            "workers": 0,
            "path": "one enclave, no Ray",
            "seconds": seconds,
            "rows_per_s": args.rows / seconds,
        }
    finally:
        client.close()


async def measure_ray(
    workers: int,
    platform_dir: Path,
    policy: Any,
    prepared: Any,
    features: list[str],
    base: np.ndarray,
    args: Any,
) -> dict:
    from sealedml.distributed.cluster import EnclaveCluster
    from sealedml.distributed.pool import RayEnclavePool
    from sealedml.platform.enclave_manager import LoadMaterial

    start = time.perf_counter()
    cluster = await EnclaveCluster.start(
        workers=workers, platform_dir=platform_dir, policy=policy, enclave_workers=2, worker_cpus=0.5
    )
    startup = time.perf_counter() - start
    try:
        pool = RayEnclavePool(cluster)
        info = await pool.info()
        request, blob = provision_request(info.hpke_public_key, "m", prepared)
        t0 = time.perf_counter()
        provisioned = await pool.provision("m", "bench", request, blob)
        fan_out = time.perf_counter() - t0

        async def loader() -> LoadMaterial:
            return LoadMaterial(provisioned.sealed_key, blob, {})

        warm = shards_for(
            info.hpke_public_key,
            "m",
            features,
            base,
            min(args.rows, 2 * workers * args.shard_rows),
            args.shard_rows,
        )
        await run_batch(pool, "m", loader, warm, 2 * workers)
        shards = shards_for(info.hpke_public_key, "m", features, base, args.rows, args.shard_rows)
        seconds = await run_batch(pool, "m", loader, shards, 2 * workers)
        stats = cluster.stats
        return {
            "workers": workers,
            "path": f"Ray pool, {workers} worker(s)",
            "seconds": seconds,
            "rows_per_s": args.rows / seconds,
            "startup_s": startup,
            "launch_s": float(np.mean(stats.launches)),
            "attest_s": float(np.mean(stats.attestations)),
            "join_s": float(np.mean(stats.joins)) if stats.joins else None,
            "join_rounds": stats.join_rounds,
            "model_fan_out_s": fan_out,
        }
    finally:
        await cluster.close()


# -- data-parallel training against single-enclave training -----------------------------------------

TRAIN_LABEL = "diagnosis"


def training_table(rows: int) -> Any:
    """The cancer rows tiled to ``rows`` with small noise on the features (label kept), as Arrow."""
    import pyarrow as pa
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    rng = np.random.default_rng(1)
    pick = rng.integers(0, len(data.target), rows)
    x = data.data[pick] * (1.0 + rng.normal(scale=0.01, size=(rows, data.data.shape[1])))
    columns = {name: pa.array(x[:, j]) for j, name in enumerate(data.feature_names)}
    columns[TRAIN_LABEL] = pa.array(data.target[pick].astype(np.int64))
    return pa.table(columns)


class TrainingParty:
    """A data owner (its encrypted dataset and approval key) and a requester (a recipient key)."""

    def __init__(self, table: Any) -> None:
        from cryptography.hazmat.primitives.asymmetric import ed25519, x25519

        from sealedml.datasets.files import PARQUET, encrypt_table

        self.dataset_id = "bench-data"
        self.dataset = encrypt_table(table, content_type=PARQUET)
        self.approval_key = ed25519.Ed25519PrivateKey.generate()
        self.recipient = x25519.X25519PrivateKey.generate()

    def spec(self, params: dict[str, Any], algorithm: str) -> dict[str, Any]:
        """The job spec every run trains (a fresh job and model id; same data, params and seed)."""
        import uuid

        recipient = self.recipient.public_key().public_bytes_raw().hex()
        return {
            "job": uuid.uuid4().hex,
            "model": f"model-{uuid.uuid4().hex[:8]}",
            "datasets": [self.dataset_id],
            "label": TRAIN_LABEL,
            "algorithm": algorithm,
            "params": dict(params),
            "recipients": [recipient],
            "seed": 7,
        }

    async def prepare(self, call: Any, spec: dict[str, Any]) -> tuple[bytes, Any]:
        """What the platform relays before a job (dataset key, owner's approval, both sealed to the
        enclave's key); returns the requester's sealed ``train`` request."""
        from sealedml.crypto.request import seal_request
        from sealedml.datasets.files import dataset_config_json
        from sealedml.training_spec import approval_message, parse_job_spec, spec_digest

        head, _ = await call("hello", {})
        key = bytes.fromhex(head["hpke_public_key"])
        config = dataset_config_json(
            self.dataset, approval_public_key=self.approval_key.public_key().public_bytes_raw()
        )
        provision = seal_request(
            enclave_public_key=key, op="provision_dataset", model=self.dataset_id, payload=config
        )
        await call(
            "provision_dataset",
            {"dataset": self.dataset_id, "client": "owner"},
            (provision.envelope, self.dataset.blob),
        )
        digest = spec_digest(parse_job_spec(spec))
        signature = self.approval_key.sign(approval_message(self.dataset_id, digest))
        approval = seal_request(
            enclave_public_key=key,
            op="approve",
            model=self.dataset_id,
            payload=json.dumps({"spec_sha256": digest, "signature": signature.hex()}).encode(),
        )
        await call("approve", {"dataset": self.dataset_id}, (approval.envelope,))
        sealed = seal_request(
            enclave_public_key=key, op="train", model=spec["model"], payload=json.dumps(spec).encode()
        )
        return sealed.envelope, sealed

    def metrics(self, response: bytes, sealed: Any) -> dict[str, Any]:
        """The released metrics, as the requester opens them from the sealed answer."""
        from sealedml.crypto.request import open_response

        answer = json.loads(
            open_response(response, response_key=sealed.response_key, request_id=sealed.header.request_id)
        )
        return dict(answer["metrics"])


async def train_single(platform_dir: Path, party: TrainingParty, spec: dict[str, Any]) -> dict:
    """The single-enclave path: one enclave process (no Ray), one ``train`` call."""
    from sealedml.tee.client import _train_result
    from sealedml.tee.launcher import launch_enclave

    client = launch_enclave(platform_dir, workers=2)
    try:
        request, sealed = await party.prepare(client.call, spec)
        start = time.perf_counter()
        head, parts = await client.call(
            "train",
            {"model": spec["model"], "client": "bench", "job": spec["job"], "datasets": spec["datasets"]},
            (request, party.dataset.blob),
        )
        seconds = time.perf_counter() - start
        result = _train_result(head, parts)
        metrics = party.metrics(result.response, sealed)
        return {
            "workers": 0,
            "path": "single enclave, no Ray",
            "seconds": seconds,
            "accuracy": metrics["accuracy"],
            "rounds": None,
        }
    finally:
        client.close()


async def train_parallel(
    workers: int, platform_dir: Path, policy: Any, party: TrainingParty, spec: dict[str, Any]
) -> dict:
    """``train_data_parallel`` on a fresh cluster of ``workers`` workers, one shard each; every enclave
    call is timed by op (``ptrain_begin``, ``ptrain_round`` per shard, ``ptrain_aggregate``)."""
    from sealedml.distributed.cluster import EnclaveCluster
    from sealedml.distributed.training import train_data_parallel

    cluster = await EnclaveCluster.start(
        workers=workers, platform_dir=platform_dir, policy=policy, enclave_workers=1, worker_cpus=0.5
    )
    timings: dict[str, list[float]] = {}
    update_bytes: list[int] = []

    def timed(worker: Any) -> None:
        plain = worker.call

        async def call(op: str, header: dict[str, Any], parts: Any = ()) -> Any:
            started = time.perf_counter()
            head, out = await plain(op, header, parts)
            first = op == "ptrain_round" and header.get("round") == 1
            timings.setdefault(f"{op}_1" if first else op, []).append(time.perf_counter() - started)
            if op == "ptrain_round":
                update_bytes.extend(len(p) for p in out)
            return head, out

        worker.call = call

    try:
        for worker in cluster.workers:
            timed(worker)
        request, sealed = await party.prepare(cluster.seed.call, spec)
        timings.clear()
        start = time.perf_counter()
        result = await train_data_parallel(
            cluster,
            model_id=spec["model"],
            client="bench",
            job_id=spec["job"],
            datasets=spec["datasets"],
            request=request,
            blobs=[party.dataset.blob],
            shards=workers,
        )
        seconds = time.perf_counter() - start
        metrics = party.metrics(result.response, sealed)
        rounds = int(metrics["parallel"]["rounds"])
        aggregate = timings.get("ptrain_aggregate", [])
        return {
            "workers": workers,
            "path": f"data-parallel, {workers} worker(s)",
            "seconds": seconds,
            "accuracy": metrics["accuracy"],
            "rounds": rounds,
            "shards": int(metrics["parallel"]["shards"]),
            "begin_s": float(sum(timings.get("ptrain_begin", [0.0]))),
            # Round 1 also hands each worker the whole encrypted dataset, which it decrypts and
            # splits itself (to keep only its shard): kept apart from the later rounds.
            "load_round_s": float(np.mean(timings.get("ptrain_round_1", [float("nan")]))),
            "shard_round_s": float(np.mean(timings.get("ptrain_round", [float("nan")]))),
            "dataset_bytes": len(party.dataset.blob),
            # The last aggregation also exports, evaluates and encrypts the model: kept apart.
            "aggregate_s": float(np.mean(aggregate[:-1])) if len(aggregate) > 1 else float("nan"),
            "finish_s": float(aggregate[-1]) if aggregate else float("nan"),
            "update_bytes": int(np.mean(update_bytes)) if update_bytes else 0,
        }
    finally:
        await cluster.close()


def cost_model(
    att_s: float, join_s: float, launch_s: float, transfer_s: float, train: dict[str, float] | None = None
) -> list[dict]:
    """Unit costs measured in this run, extrapolated to N nodes (what grows, and how).

    ``train`` holds the measured training unit costs: ``rounds`` per job, ``aggregate_per_update_s``
    (the coordinator opening and averaging one sealed update), ``update_bytes`` and ``shard_round_s``
    (one shard's local epochs at the benchmark's shard size).
    """
    rows = []
    for n in (10, 100, 1000):
        depth = math.ceil(math.log2(n))
        row: dict[str, Any] = {
            "nodes": n,
            "host_attestations": n,
            "in_enclave_verifications": 2 * (n - 1),
            "join_transfers": n - 1,
            "join_time_serial_s": (n - 1) * join_s,
            "join_time_tree_s": depth * join_s,
            "attest_time_parallel_s": att_s,
            "launch_time_parallel_s": launch_s,
            "model_fan_out_transfers": n - 1,
            "model_fan_out_serial_s": (n - 1) * transfer_s,
            "model_fan_out_tree_depth": depth,
            "model_fan_out_tree_s": depth * transfer_s,
            "allreduce_rounds_tree_per_step": 2 * depth,
            "allreduce_steps_ring_per_step": 2 * (n - 1),
        }
        if train:
            per_update = train["aggregate_per_update_s"]
            rounds = train["rounds"]
            row.update(
                {
                    "task_fan_out_per_job": n,
                    "aggregation_rounds_per_job": rounds,
                    "star_aggregate_per_round_s": n * per_update,
                    "star_aggregate_per_job_s": rounds * n * per_update,
                    "star_bytes_into_coordinator_per_round": n * train["update_bytes"],
                    "tree_aggregate_per_round_s": depth * 2 * per_update,
                    "tree_aggregate_per_job_s": rounds * depth * 2 * per_update,
                    "dataset_bytes_to_workers_per_job": n * train["dataset_bytes"],
                    "worker_load_s": train["load_round_s"],
                }
            )
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="100,000 rows and workers 1, 2 (CI-sized)")
    parser.add_argument("--rows", type=int, default=None)
    parser.add_argument("--shard-rows", type=int, default=10_000)
    parser.add_argument("--train-rows", type=int, default=None, help="rows of the training dataset")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    args.rows = args.rows or (100_000 if args.quick else 1_000_000)
    args.train_rows = args.train_rows or (20_000 if args.quick else 100_000)
    counts = (1, 2) if args.quick else (1, 2, 4)
    train_counts = (1, 2, 4)
    train_params = {"hidden_layer_sizes": [32], "max_iter": 20, "learning_rate_init": 0.01}
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")

    import ray

    from sealedml.attestation.measurement import compute_measurement
    from sealedml.attestation.policy import AppraisalPolicy
    from sealedml.attestation.producers.simulated import SimulatedPlatform

    prepared, features, base = build_model()
    party = TrainingParty(training_table(args.train_rows))
    results: list[dict] = []
    trainings: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        platform_dir = Path(tmp) / "platform"
        root = SimulatedPlatform.open(platform_dir).root_fingerprint
        policy = AppraisalPolicy(
            allow_simulated=True, reference_measurements=(compute_measurement(),), simulated_roots=(root,)
        )
        results.append(asyncio.run(measure_single(platform_dir, prepared, features, base, args)))
        trainings.append(asyncio.run(train_single(platform_dir, party, party.spec(train_params, "mlp"))))
        ray.init(num_cpus=os.cpu_count() or 2, include_dashboard=False, log_to_driver=False)
        try:
            for n in counts:
                results.append(
                    asyncio.run(measure_ray(n, platform_dir, policy, prepared, features, base, args))
                )
            for n in train_counts:
                spec = party.spec(train_params, "mlp")
                trainings.append(asyncio.run(train_parallel(n, platform_dir, policy, party, spec)))
        finally:
            ray.shutdown()

    one = next(r for r in results if r["workers"] == 1)
    print(f"sharded inference: {args.rows} rows in shards of {args.shard_rows}, {os.cpu_count()} CPU core(s)")
    print(f"{'path':28} {'seconds':>9} {'rows/s':>11} {'vs 1 worker':>12} {'efficiency':>11}")
    for r in results:
        speedup = r["rows_per_s"] / one["rows_per_s"]
        eff = speedup / r["workers"] if r["workers"] else float("nan")
        r["speedup_vs_1"] = speedup
        r["efficiency"] = eff
        print(f"{r['path']:28} {r['seconds']:9.2f} {r['rows_per_s']:11.0f} {speedup:12.2f} {eff:11.2f}")
    ray_runs = [r for r in results if r["workers"]]
    att = float(np.mean([r["attest_s"] for r in ray_runs]))
    joins = [r["join_s"] for r in ray_runs if r["join_s"]]
    join = float(np.mean(joins)) if joins else float("nan")
    launch = float(np.mean([r["launch_s"] for r in ray_runs]))
    fan = [r["model_fan_out_s"] / max(r["workers"] - 1, 1) for r in ray_runs if r["workers"] > 1]
    transfer = float(np.mean(fan)) if fan else join
    print(
        f"\ncluster growth (measured): launch {launch:.2f} s/worker, host attestation {att * 1000:.1f} ms, "
        f"four-step join {join * 1000:.1f} ms, model fan-out {transfer * 1000:.1f} ms/worker"
    )
    print(
        f"\ndata-parallel training: MLP {train_params['hidden_layer_sizes']}, max_iter "
        f"{train_params['max_iter']}, {args.train_rows} encrypted rows (same dataset and spec in every run)"
    )
    print(
        f"{'path':28} {'seconds':>8} {'vs single':>10} {'vs 1 worker':>12} {'efficiency':>11} "
        f"{'rounds':>7} {'round 1 s':>9} {'round/shard s':>14} {'aggregate s':>12} {'accuracy':>9}"
    )
    single = trainings[0]
    one_worker = next(t for t in trainings if t["workers"] == 1)
    for t in trainings:
        t["speedup_vs_single"] = single["seconds"] / t["seconds"]
        t["speedup_vs_1"] = one_worker["seconds"] / t["seconds"] if t["workers"] else float("nan")
        t["efficiency"] = t["speedup_vs_1"] / t["workers"] if t["workers"] else float("nan")
        rounds = "-" if t["rounds"] is None else str(t["rounds"])
        shard_round = f"{t['shard_round_s']:.3f}" if t["workers"] else "-"
        load = f"{t['load_round_s']:.2f}" if t["workers"] else "-"
        aggregate = f"{t['aggregate_s']:.3f}" if t["workers"] else "-"
        print(
            f"{t['path']:28} {t['seconds']:8.2f} {t['speedup_vs_single']:10.2f} {t['speedup_vs_1']:12.2f} "
            f"{t['efficiency']:11.2f} {rounds:>7} {load:>9} {shard_round:>14} {aggregate:>12} "
            f"{t['accuracy']:9.3f}"
        )
    parallel_runs = [t for t in trainings if t["workers"]]
    per_update = float(np.mean([t["aggregate_s"] / t["shards"] for t in parallel_runs]))
    train_units = {
        "rounds": float(parallel_runs[0]["rounds"]),
        "aggregate_per_update_s": per_update,
        "update_bytes": float(np.mean([t["update_bytes"] for t in parallel_runs])),
        "shard_round_s": float(np.mean([t["shard_round_s"] for t in parallel_runs])),
        "load_round_s": float(np.mean([t["load_round_s"] for t in parallel_runs])),
        "dataset_bytes": float(parallel_runs[0]["dataset_bytes"]),
    }
    print(
        f"training unit costs (measured): coordinator aggregation {per_update * 1000:.2f} ms per sealed "
        f"update "
        f"of {train_units['update_bytes'] / 1024:.1f} KiB, {int(train_units['rounds'])} rounds per job, "
        f"ptrain_begin {parallel_runs[-1]['begin_s']:.2f} s, final aggregation (export, evaluate, encrypt) "
        f"{parallel_runs[-1]['finish_s']:.2f} s; every worker receives the whole encrypted dataset "
        f"({train_units['dataset_bytes'] / 2**20:.2f} MiB) and decrypts it in round 1"
    )
    model = cost_model(att, join, launch, transfer, train_units)
    print("\ncost model (unit costs above; launches and host attestations run in parallel):")
    print(
        f"{'nodes':>6} {'attest':>7} {'verif.':>7} {'joins':>6} {'join serial s':>14} {'join tree s':>12} "
        f"{'fan-out depth':>14} {'tree all-reduce rounds':>23} {'ring steps':>11}"
    )
    for row in model:
        print(
            f"{row['nodes']:>6} {row['host_attestations']:>7} {row['in_enclave_verifications']:>7} "
            f"{row['join_transfers']:>6} {row['join_time_serial_s']:>14.2f} {row['join_time_tree_s']:>12.2f} "
            f"{row['model_fan_out_tree_depth']:>14} {row['allreduce_rounds_tree_per_step']:>23} "
            f"{row['allreduce_steps_ring_per_step']:>11}"
        )
    print(
        f"\n{'nodes':>6} {'aggregation rounds/job':>23} {'star agg. s/round':>18} {'star agg. s/job':>16} "
        f"{'MiB into coordinator/round':>27} {'tree agg. s/job':>16} {'dataset MiB to workers/job':>27}"
    )
    for row in model:
        print(
            f"{row['nodes']:>6} {row['aggregation_rounds_per_job']:>23.0f} "
            f"{row['star_aggregate_per_round_s']:>18.3f} {row['star_aggregate_per_job_s']:>16.2f} "
            f"{row['star_bytes_into_coordinator_per_round'] / 2**20:>27.2f} "
            f"{row['tree_aggregate_per_job_s']:>16.2f} "
            f"{row['dataset_bytes_to_workers_per_job'] / 2**20:>27.1f}"
        )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "inference": results,
                    "training": trainings,
                    "training_units": train_units,
                    "cost_model": model,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
