"""``sealedml demo ray``: the platform scaled out on Ray, end to end on loopback.

A local Ray runtime runs enclave workers as actors (simulated TEE: no protection from this host);
the coordinator attests every worker before any key reaches it, and a worker running another
build of the enclave is rejected. A provider publishes a breast-cancer model; a data owner runs a
sealed batch prediction of 200,000 rows while one worker is killed: the batch completes, in order,
billed once per shard. Then a logistic regression trains data-parallel across the workers, round
by round, and the receipt is checked and found in the transparency log.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich import box
from rich.console import Console
from rich.panel import Panel
from rich.table import Table

SEED = 7
PRICE_PER_ROW = 1
TRAIN_PRICE = 7
HELD_OUT = 100
OWNER_CREDITS = 1_000_000
KILL_AFTER_SHARDS = 4


def _other_build(workdir: Path) -> Path:
    """A copy of the installed enclave code with one measured file changed: another build."""
    import sealedml

    target = workdir / "other-build"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(
        Path(sealedml.__file__).parent, target / "sealedml", ignore=shutil.ignore_patterns("__pycache__")
    )
    runtime = target / "sealedml" / "enclave" / "runtime.py"
    runtime.write_text(runtime.read_text() + "\n# another build of the enclave (demo)\n")
    return target


def _cancer() -> tuple[Any, list[str]]:
    from sklearn.datasets import load_breast_cancer

    frame = load_breast_cancer(as_frame=True).frame
    return frame, [c for c in frame.columns if c != "target"]


def run_ray_demo(
    console: Console,
    data_dir: Path | None = None,
    *,
    workers: int = 3,
    rows: int = 200_000,
    shard_rows: int = 5_000,
    reject_other_build: bool = True,
) -> dict[str, Any]:
    """Run the scale-out showcase, printing what each party saw; return its key results.

    Guarantees on return: every worker that serves passed attestation under the platform's policy
    (the other build, if shown, was rejected and never joined); the batch output has one prediction
    per input row, in input order, each shard billed exactly once; the training receipt was
    verified by the SDK and found in the transparency log. Raises any ``SealedMLError`` a step
    raises (the demo never hides a failure).
    """
    import pandas as pd
    import ray
    from cryptography.hazmat.primitives.asymmetric import ed25519, x25519
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from sealedml.attestation.measurement import compute_measurement
    from sealedml.attestation.producers.simulated import SimulatedPlatform
    from sealedml.client import SealedMLClient, from_estimator
    from sealedml.client._batch import predict_batch
    from sealedml.client._training import public_hex
    from sealedml.platform.launch import platform_in_background, simulated_platform_dir
    from sealedml.platform.settings import Settings

    started = time.perf_counter()
    workdir = data_dir or Path(tempfile.mkdtemp(prefix="sealedml-ray-"))
    workdir.mkdir(parents=True, exist_ok=True)
    suffix = os.urandom(3).hex()
    results: dict[str, Any] = {}
    console.rule("[bold]SealedML showcase: attested enclave workers on Ray")
    console.print(
        Panel(
            "[bold yellow]SIMULATED TEE[/] — every enclave worker here is an ordinary process on this "
            "machine. Its evidence says so, clients accept it only because they opt in "
            "(allow_simulated); it offers NO protection from this host. The same code path runs "
            "SEV-SNP/TDX/SGX enclaves.",
            border_style="yellow",
        )
    )
    settings = Settings(data_dir=workdir / "platform-data", anchor="none")
    # The platform created this simulated root itself, so it pins it (as `sealedml serve` does).
    root = SimulatedPlatform.open(simulated_platform_dir(settings)).root_fingerprint
    settings = dataclasses.replace(settings, simulated_roots=(root,))
    other = _other_build(workdir) if reject_other_build else None
    total = workers + (1 if other else 0)
    launched = time.perf_counter()
    # The last slot runs the other build, when there is one: its attestation must fail.
    worker_env = {f"worker-{total - 1}": {"PYTHONPATH": str(other)}} if other else None
    with platform_in_background(
        dataclasses.replace(settings, ray="local", ray_workers=total), workers=1, worker_env=worker_env
    ) as server:
        pool = server.app.state.service.enclave
        cluster = pool.cluster
        console.rule(f"1. the coordinator starts {total} workers on a local Ray runtime and attests each one")
        console.print(
            f"cluster ready in {time.perf_counter() - launched:.1f} s on Ray "
            f"{ray.__version__} ({int(ray.cluster_resources().get('CPU', 0))} CPU); platform on {server.url}",
            highlight=False,
        )
        expected = compute_measurement()
        verdicts = Table(title="Each worker's attestation (coordinator's view)", box=box.SIMPLE_HEAD)
        for column in ("worker", "machine", "verdict", "measurement", "serves cluster key"):
            verdicts.add_column(column, no_wrap=True)
        keys = set()
        for worker in cluster.workers:
            hello = ray.get(worker.actor.info.remote())
            keys.add(hello["hpke_public_key"])
            verdicts.add_row(
                worker.name,
                "platform" if worker.slot == 0 else f"machines/worker-{worker.slot}",
                "[green]passed[/]" + (" (seed)" if worker is cluster.seed else ", joined"),
                f"{worker.claims['measurement'][:16]}…",
                f"{hello['hpke_public_key'][:16]}…",
            )
        for name, code in cluster.rejected:
            other_measurement = compute_measurement(other / "sealedml") if other else "?"
            verdicts.add_row(
                name,
                f"machines/{name}",
                f"[red]REJECTED[/] {code}",
                f"{other_measurement[:16]}…",
                "no key given",
            )
        console.print(verdicts)
        console.print(
            f"policy: measurement {expected[:16]}… (the enclave code installed here), simulated root "
            f"{root[:16]}…; {len(cluster.workers)} worker(s) serve {len(keys)} cluster identity; "
            f"{len(cluster.rejected)} rejected",
            highlight=False,
        )
        results["workers"] = [w.name for w in cluster.workers]
        results["rejected"] = list(cluster.rejected)
        results["cluster_keys"] = len(keys)

        admin_token = settings.admin_token_path.read_text().strip()
        with SealedMLClient(server.url, admin_token) as admin:
            provider = admin.create_account(f"oncology-models-{suffix}", "provider")
            owner = admin.create_account(f"st-mary-hospital-{suffix}", "data_owner")
            registry = admin.create_account(f"tumour-registry-{suffix}", "data_owner")
            admin.market.grant(owner["id"], OWNER_CREDITS)

        # -- 2. the provider publishes ----------------------------------------------------------
        console.rule(
            "2. the provider attests the cluster and publishes its model (fanned out enclave to enclave)"
        )
        frame, features = _cancer()
        train, _ = train_test_split(frame, test_size=0.2, random_state=SEED, stratify=frame["target"])
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(
            train[features], train["target"]
        )
        from sealedml.attestation.policy import AppraisalPolicy

        policy = AppraisalPolicy(
            allow_simulated=True, reference_measurements=(expected,), simulated_roots=(root,)
        )
        with SealedMLClient(server.url, provider["token"], policy=policy) as client:
            attested = client.attest()
            published = client.publish_model(
                f"cancer-screen-{suffix}", from_estimator(model), price_per_row=PRICE_PER_ROW
            )
        model_id = published.model.id
        holders = [w.name for w in cluster.workers if model_id in w.models]
        console.print(
            f"attested: simulated={attested.claims.simulated}, "
            f"measurement {attested.claims.measurement[:16]}…, "
            f"cluster key {attested.hpke_public_key.hex()[:16]}…; published {published.model.name} "
            f"({PRICE_PER_ROW} credit/row); held by {', '.join(holders)}",
            highlight=False,
        )

        # -- 3. sharded batch with a killed worker ------------------------------------------------
        console.rule(f"3. the data owner scores {rows:,} sealed rows in shards; a worker is killed mid-batch")
        repeats = -(-rows // len(frame))
        tiled = pd.concat([frame] * repeats, ignore_index=True).iloc[:rows]
        noisy = tiled[features] + np.random.default_rng(SEED).normal(scale=0.01, size=(rows, len(features)))
        source, output = workdir / "patients.parquet", workdir / "predictions.parquet"
        noisy.to_parquet(source, index=False)
        killed: list[str] = []
        finished = threading.Event()

        def kill_a_worker() -> None:
            """Kill a non-primary worker once a few shards are done, preferring one that is busy."""
            while not finished.wait(0.002):
                if pool.completed < KILL_AFTER_SHARDS:
                    continue
                others = [w for w in cluster.workers if w.slot != cluster.seed.slot]
                if not others:
                    return
                busy = [w for w in others if pool.in_flight(w.slot)]
                victim = (busy or others)[0]
                killed.append(victim.name)
                ray.kill(victim.actor, no_restart=True)
                return

        killer = threading.Thread(target=kill_a_worker, daemon=True)
        batch_started = time.perf_counter()
        with (
            SealedMLClient(server.url, owner["token"], policy=policy) as client,
            Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=console,
            ) as bar,
        ):
            task = bar.add_task("sealing, scoring, verifying", total=rows)
            killer.start()
            try:
                batch = predict_batch(
                    client,
                    model_id,
                    source,
                    output,
                    shard_rows=shard_rows,
                    window=4,
                    progress=lambda done, _total: bar.update(task, completed=done),
                )
            finally:
                finished.set()
                killer.join()
            balance = client.me()["balance"]
        batch_seconds = time.perf_counter() - batch_started
        scored = pd.read_parquet(output)["prediction"].to_numpy()
        reference = model.predict(noisy.astype(np.float32))
        charges = server.app.state.service.billing.charges(account_id=owner["id"])
        shard_sizes = [min(shard_rows, rows - i) for i in range(0, rows, shard_rows)]
        billed_once = sorted((c.job_id, c.amount, c.status) for c in charges) == sorted(
            (job, PRICE_PER_ROW * size, "settled")
            for job, size in zip(batch.job_ids, shard_sizes, strict=True)
        )
        replacements = [w.name for w in cluster.workers if "." in w.name]
        accuracy = float(np.mean(scored == tiled["target"].to_numpy()))
        agreement = float(np.mean(scored == reference))
        table = Table(title="Batch as the data owner saw it", box=box.SIMPLE_HEAD)
        for column in ("rows", "shards", "seconds", "rows/s", "in order", "accuracy", "billed"):
            table.add_column(column, no_wrap=True)
        table.add_row(
            f"{batch.rows:,}",
            str(batch.shards),
            f"{batch_seconds:.1f}",
            f"{batch.rows / batch_seconds:,.0f}",
            "yes" if agreement == 1.0 else f"[red]{agreement:.4f}[/]",
            f"{accuracy:.3f}",
            f"{OWNER_CREDITS - balance:,} credits",
        )
        console.print(table)
        console.print(
            f"killed {', '.join(killed) or 'no worker (the batch ended first)'}; the coordinator replaced it "
            f"with {', '.join(replacements) or '-'} (attested, joined, model reloaded) and the platform "
            f"retried {pool.retries} shard(s) on a live worker. {len(charges)} charge(s) for "
            f"{batch.shards} shard(s), each settled once: "
            + ("[green]billed exactly once per shard[/]" if billed_once else "[red]BILLING MISMATCH[/]"),
            highlight=False,
        )
        console.print(
            f"every one of the {batch.shards} receipts was verified by the data owner's SDK (signature by "
            "the "
            "attested cluster key, request/response digests, row count, transparency log)",
            highlight=False,
        )
        results["batch"] = {
            "rows": batch.rows,
            "shards": batch.shards,
            "expected_shards": len(shard_sizes),
            "distinct_jobs": len(set(batch.job_ids)),
            "in_order": agreement == 1.0,
            "accuracy": accuracy,
            "billed_once": billed_once,
            "paid": OWNER_CREDITS - balance,
            "killed": killed,
            "replacements": replacements,
            "retries": pool.retries,
            "seconds": batch_seconds,
        }

        # -- 4. data-parallel training ------------------------------------------------------------
        console.rule(f"4. a logistic regression trains data-parallel on the {len(cluster.workers)} workers")
        import pyarrow as pa

        table_all = _arrow_table(frame, features)
        y = frame["target"].to_numpy()
        kept, held = train_test_split(np.arange(len(y)), test_size=HELD_OUT, random_state=11, stratify=y)
        uploaded = table_all.take(pa.array(np.sort(kept)))
        x_held = frame[features].to_numpy()[np.sort(held)].astype(np.float32)
        y_held = y[np.sort(held)]
        approval_key = ed25519.Ed25519PrivateKey.generate()
        recipient = x25519.X25519PrivateKey.generate()
        rounds_seen: list[tuple[str, str | None, int | None]] = []
        with (
            SealedMLClient(server.url, registry["token"], policy=policy) as reg,
            SealedMLClient(server.url, owner["token"], policy=policy) as researcher,
        ):
            dataset = reg.training.upload_table(uploaded, f"cancer-{suffix}", approval_key=approval_key)
            reg.training.offer(
                dataset.info.id, columns=[("mean radius", "float")], rows=len(kept), price=TRAIN_PRICE
            )
            console.print(
                f"the tumour registry uploaded {dataset.confirmation['rows']} encrypted rows and offered "
                "them "
                f"for {TRAIN_PRICE} credits per job",
                highlight=False,
            )
            before = researcher.me()["balance"]
            spec = researcher.training.build_spec(
                [dataset.info.id],
                label="target",
                algorithm="logistic_regression",
                params={"C": 1.0, "max_iter": 100},
                features=features,
                recipients=[public_hex(recipient)],
            )
            submission, job = researcher.training.submit(spec)
            reg.training.approve(job.id, {dataset.info.id: approval_key})
            with Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.percentage:>3.0f}%"),
                console=console,
            ) as bar:
                task = bar.add_task("training", total=100)

                def follow(update: Any) -> None:
                    rounds_seen.append((update.status, update.phase, update.progress))
                    bar.update(
                        task,
                        completed=update.progress or 0,
                        description=f"training: {update.status}/{update.phase or '-'}",
                    )

                final = researcher.training.wait(job.id, submission=submission, on_update=follow, timeout=600)
            outcome = researcher.training.outcome(submission, final)
            fetched = researcher.training.fetch_model(
                job.id, recipient, evidence=researcher.training.last_evidence
            )
            paid = before - researcher.me()["balance"]
            cluster_key = researcher.enclave_info()["signing_public_key"]
        labels = _onnx_labels(fetched.onnx_bytes, x_held)
        held_accuracy = float(np.mean(labels == y_held))
        parallel = outcome.metrics.get("parallel", {})
        between = sorted({p for _, _, p in rounds_seen if p is not None and 30 < p < 90})
        console.print(
            f"{parallel.get('method')}: {parallel.get('shards')} shards x {parallel.get('rounds')} rounds "
            f"({parallel.get('local_epochs')} local epoch(s) per round); the job's progress moved through "
            f"{len(between)} round step(s) between 30 % and 90 %",
            highlight=False,
        )
        receipt = outcome.receipt
        ledger = outcome.ledger or {}
        console.print(
            f"receipt for job {receipt.get('job')}: model sha256 {str(receipt.get('model_sha256'))[:16]}…, "
            f"signed by the cluster key {str(receipt.get('enclave_key'))[:16]}… "
            f"({'the one attested' if receipt.get('enclave_key') == cluster_key else 'ANOTHER KEY'}); "
            f"verified by the SDK and logged as entry {ledger.get('leaf_index')} of the transparency log",
            highlight=False,
        )
        console.print(
            f"the recipient opened the model and scored {HELD_OUT} held-out patients the platform never saw: "
            f"accuracy [bold]{held_accuracy:.3f}[/]; the researcher paid {paid} credits for the job (once)",
            highlight=False,
        )
        results["training"] = {
            "status": final.status,
            "accuracy": held_accuracy,
            "metrics": {k: v for k, v in outcome.metrics.items() if isinstance(v, int | float)},
            "parallel": parallel,
            "progress_steps": between,
            "paid": paid,
            "receipt_key_is_cluster_key": receipt.get("enclave_key") == cluster_key,
            "logged": outcome.ledger is not None and fetched.ledger is not None,
        }

    seen = Table(title="Who saw what")
    for column in ("party", "saw", "never saw"):
        seen.add_column(column)
    seen.add_row(
        "platform + Ray (host)",
        "sealed shards and results, receipts, evidence, which worker ran which shard, timing, "
        "encrypted round weights and updates, peer nonces and transfers (ciphertext)",
        "patients' features, predictions, model weights, dataset rows, gradients, keys",
    )
    seen.add_row(
        "coordinator",
        "each worker's evidence and verdict; relayed join steps (ciphertext)",
        "the cluster's private keys (they travel enclave to enclave, sealed)",
    )
    seen.add_row(
        "provider", "its model, the cluster's attestation, its revenue", "the rows or the predictions"
    )
    seen.add_row(
        "data owner / researcher",
        "its rows, its predictions, every receipt; the trained model (as recipient)",
        "the provider's weights, the registry's rows",
    )
    seen.add_row(
        "tumour registry",
        "its own rows, the spec it approved, its payment",
        "the trained model, the predictions",
    )
    console.print(seen)
    results["seconds"] = time.perf_counter() - started
    console.print(f"[bold green]done[/] in {results['seconds']:.1f} s", highlight=False)
    return results


def _arrow_table(frame: Any, features: list[str]) -> Any:
    """The cancer frame as an Arrow table (features and the 0/1 ``target``)."""
    import pyarrow as pa

    columns = {name: pa.array(frame[name].to_numpy(dtype=np.float64)) for name in features}
    columns["target"] = pa.array(frame["target"].to_numpy(dtype=np.int64))
    return pa.table(columns)


def _onnx_labels(onnx_bytes: bytes, features: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(onnx_bytes, sess_options=options, providers=["CPUExecutionProvider"])
    label = session.run(None, {session.get_inputs()[0].name: features.astype(np.float32)})[0]
    return np.asarray(label)
