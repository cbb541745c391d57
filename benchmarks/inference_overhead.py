"""Inference overhead: SealedML against a plain FastAPI + onnxruntime endpoint, in one run.

Both servers run as separate processes on loopback and serve the same ONNX model (a scikit-learn
pipeline trained on the breast-cancer data). The load generator measures, end to end as a client
sees it (SealedML's client side seals each request with HPKE, opens the response and verifies the
receipt), p50/p99 latency and requests per second at 1 and 16 concurrent clients, then rows/s for
one 10,000-row batch against plain in-process onnxruntime. Ratios are SealedML / plain.

    python benchmarks/inference_overhead.py [--requests 400] [--json results.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import uvicorn
from fastapi import FastAPI, Request, Response
from starlette.concurrency import run_in_threadpool


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_ready(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/healthz", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"server at {url} did not start")


# -- the plain baseline server ---------------------------------------------------------------------


def serve_plain(model_path: Path, port: int) -> None:
    """A minimal FastAPI + onnxruntime endpoint: float32 rows in, labels and scores out."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(model_path), sess_options=options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    width = session.get_inputs()[0].shape[1]
    app = FastAPI()

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/predict")
    async def predict(request: Request) -> Response:
        body = await request.body()
        rows = np.frombuffer(body, dtype=np.float32).reshape(-1, width)
        label, scores = await run_in_threadpool(session.run, None, {name: rows})
        return Response(
            label.astype(np.int64).tobytes() + scores.astype(np.float32).tobytes(),
            media_type="application/octet-stream",
        )

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


# -- load generation -------------------------------------------------------------------------------


def run_load(call: Callable[[int], None], *, clients: int, requests: int) -> dict[str, float]:
    """Run ``requests`` calls from ``clients`` threads; return latency percentiles and rps."""
    latencies: list[float] = []
    lock = threading.Lock()
    counter = iter(range(requests))
    counter_lock = threading.Lock()

    def worker(worker_id: int) -> None:
        while True:
            with counter_lock:
                if next(counter, None) is None:
                    return
            start = time.perf_counter()
            call(worker_id)
            elapsed = time.perf_counter() - start
            with lock:
                latencies.append(elapsed)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    wall = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - wall
    latencies.sort()
    return {
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
        "rps": len(latencies) / wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=400, help="requests per load level")
    parser.add_argument("--batch-rows", type=int, default=10_000)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--serve-plain", nargs=2, metavar=("MODEL", "PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_plain:
        serve_plain(Path(args.serve_plain[0]), int(args.serve_plain[1]))
        return

    from sealedml.attestation.measurement import compute_measurement
    from sealedml.attestation.policy import AppraisalPolicy
    from sealedml.client import SealedMLClient, from_estimator
    from sealedml.demo import _train_provider_model

    workdir = Path(tempfile.mkdtemp(prefix="sealedml-bench-"))
    estimator, test_x, _ = _train_provider_model()
    prepared = from_estimator(estimator)
    model_path = workdir / "model.onnx"
    model_path.write_bytes(prepared.onnx_bytes)
    width = len(prepared.input_columns)
    rng = np.random.default_rng(0)
    base = test_x.to_numpy(dtype=np.float32)
    single = base[:1]
    batch = base[rng.integers(0, len(base), size=args.batch_rows)]

    env = dict(os.environ, OMP_NUM_THREADS="1")
    plain_port, sml_port = _free_port(), _free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--serve-plain", str(model_path), str(plain_port)], env=env
        ),
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "sealedml.cli",
                "serve",
                "--data-dir",
                str(workdir / "sml"),
                "--port",
                str(sml_port),
            ],
            env=env,
            stderr=subprocess.DEVNULL,
        ),
    ]
    plain_url, sml_url = f"http://127.0.0.1:{plain_port}", f"http://127.0.0.1:{sml_port}"
    try:
        _wait_ready(plain_url)
        _wait_ready(sml_url)
        admin_token = (workdir / "sml" / "admin-token").read_text().strip()
        with SealedMLClient(sml_url, admin_token) as admin:
            provider = admin.create_account("bench-provider", "provider")
            owner = admin.create_account("bench-owner", "data_owner")
        with SealedMLClient(sml_url) as anon:
            root = hashlib.sha256(anon.fetch_evidence(os.urandom(32)).certificates[-1]).hexdigest()
        policy = AppraisalPolicy(
            allow_simulated=True,
            reference_measurements=(compute_measurement(),),
            max_evidence_age_seconds=3600,
            allow_debug=False,
            simulated_roots=(root,),
        )
        with SealedMLClient(sml_url, provider["token"], policy=policy) as prov:
            model_id = prov.publish_model("bench-model", prepared).model.id

        plain_clients = [httpx.Client(base_url=plain_url, timeout=60) for _ in range(16)]
        sml_clients = [SealedMLClient(sml_url, owner["token"], policy=policy) for _ in range(16)]
        for c in sml_clients:
            c.attest()

        def plain_call(rows: np.ndarray) -> Callable[[int], None]:
            payload = rows.tobytes()

            def call(i: int) -> None:
                plain_clients[i].post("/predict", content=payload).raise_for_status()

            return call

        def sml_call(rows: np.ndarray) -> Callable[[int], None]:
            def call(i: int) -> None:
                sml_clients[i].predict(model_id, rows)

            return call

        results: dict[str, dict[str, float]] = {}
        for factory in (plain_call, sml_call):
            run_load(factory(single), clients=4, requests=50)  # warm-up
        for clients in (1, 16):
            for name, factory in (("plain", plain_call), ("sealedml", sml_call)):
                results[f"{name}_c{clients}"] = run_load(
                    factory(single), clients=clients, requests=args.requests
                )

        # 10,000-row batch: rows/s, best of 5.
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(
            prepared.onnx_bytes, sess_options=options, providers=["CPUExecutionProvider"]
        )
        iname = session.get_inputs()[0].name

        def best(fn: Callable[[], object], repeat: int = 5) -> float:
            times = []
            for _ in range(repeat):
                start = time.perf_counter()
                fn()
                times.append(time.perf_counter() - start)
            return min(times)

        batch_plain_ort = best(lambda: session.run(None, {iname: batch}))
        batch_plain_http = best(lambda: plain_call(batch)(0))
        batch_sml = best(lambda: sml_clients[0].predict(model_id, batch))
        for c in sml_clients:
            c.close()
        for c in plain_clients:
            c.close()
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=30)

    report = {
        "model_features": width,
        "requests_per_level": args.requests,
        "levels": results,
        "batch_rows": args.batch_rows,
        "batch_rows_per_s": {
            "onnxruntime": args.batch_rows / batch_plain_ort,
            "plain_http": args.batch_rows / batch_plain_http,
            "sealedml": args.batch_rows / batch_sml,
        },
    }
    print(f"{'clients':>7} {'server':>9} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8}")
    for clients in (1, 16):
        for name in ("plain", "sealedml"):
            r = results[f"{name}_c{clients}"]
            print(f"{clients:>7} {name:>9} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['rps']:>8.1f}")
        p, s = results[f"plain_c{clients}"], results[f"sealedml_c{clients}"]
        ratios = {
            "p50": s["p50_ms"] / p["p50_ms"],
            "p99": s["p99_ms"] / p["p99_ms"],
            "rps": s["rps"] / p["rps"],
        }
        report[f"ratios_c{clients}"] = ratios
        print(
            f"{clients:>7} {'ratio':>9} {ratios['p50']:>7.2f}x {ratios['p99']:>7.2f}x {ratios['rps']:>7.2f}x"
            "   (SealedML / plain)"
        )
    b = report["batch_rows_per_s"]
    print(
        f"\n{args.batch_rows}-row batch, rows/s: onnxruntime {b['onnxruntime']:,.0f}  plain HTTP "
        f"{b['plain_http']:,.0f}  SealedML {b['sealedml']:,.0f}  -> SealedML/onnxruntime "
        f"{b['sealedml'] / b['onnxruntime']:.2f}x, SealedML/plain HTTP {b['sealedml'] / b['plain_http']:.2f}x"
    )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
