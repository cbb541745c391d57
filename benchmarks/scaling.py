"""Scaling on Ray: sharded inference with 1, 2 and 4 enclave workers against one enclave without Ray.

One run measures, on the same pre-sealed shards (breast-cancer logistic regression, rows tiled
with noise, HPKE-sealed ``predict`` requests):
  * the single-process path: one enclave process, no Ray (the platform's EnclaveSupervisor);
  * the Ray pool with 1, 2 and 4 workers (each a Ray actor with its own simulated enclave on its
    own simulated machine), same dispatch (ordered, window = 2 x workers);
rows/s and scaling efficiency (rows/s with n workers / (n x rows/s with 1 worker)); the cost of
growing the cluster as measured here (worker launch, host-side attestation, four-step join); a
data-parallel training time with 1/2/4 workers when ray-train's
``sealedml.distributed.training.train_data_parallel`` is installed (otherwise a note); and a
cost model for 10, 100 and 1000 nodes from the measured unit costs.

    python benchmarks/scaling.py [--quick] [--rows N] [--shard-rows N] [--json out.json]
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


def training_note() -> str | None:
    try:
        from sealedml.distributed import training  # noqa: F401
    except ImportError:
        return (
            "data-parallel training: sealedml.distributed.training (ray-train) is not installed here; "
            "training times with 1/2/4 workers are skipped"
        )
    return (
        "data-parallel training: sealedml.distributed.training is installed; its timing needs provisioned "
        "datasets and owners' approvals; ray-train measures it (docs/distributed-training.md)"
    )


def cost_model(att_s: float, join_s: float, launch_s: float, transfer_s: float) -> list[dict]:
    """Unit costs measured here, extrapolated to N nodes (what grows, and how)."""
    rows = []
    for n in (10, 100, 1000):
        depth = math.ceil(math.log2(n))
        rows.append(
            {
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
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="100,000 rows and workers 1, 2 (CI-sized)")
    parser.add_argument("--rows", type=int, default=None)
    parser.add_argument("--shard-rows", type=int, default=10_000)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    args.rows = args.rows or (100_000 if args.quick else 1_000_000)
    counts = (1, 2) if args.quick else (1, 2, 4)
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")

    import ray

    from sealedml.attestation.measurement import compute_measurement
    from sealedml.attestation.policy import AppraisalPolicy
    from sealedml.attestation.producers.simulated import SimulatedPlatform

    prepared, features, base = build_model()
    results: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        platform_dir = Path(tmp) / "platform"
        root = SimulatedPlatform.open(platform_dir).root_fingerprint
        policy = AppraisalPolicy(
            allow_simulated=True, reference_measurements=(compute_measurement(),), simulated_roots=(root,)
        )
        results.append(asyncio.run(measure_single(platform_dir, prepared, features, base, args)))
        ray.init(num_cpus=os.cpu_count() or 2, include_dashboard=False, log_to_driver=False)
        try:
            for n in counts:
                results.append(
                    asyncio.run(measure_ray(n, platform_dir, policy, prepared, features, base, args))
                )
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
    note = training_note()
    if note:
        print(note)
    model = cost_model(att, join, launch, transfer)
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
    if args.json:
        args.json.write_text(json.dumps({"results": results, "cost_model": model, "note": note}, indent=2))


if __name__ == "__main__":
    main()
