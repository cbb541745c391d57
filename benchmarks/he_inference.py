"""HE inference cost: logistic regression on breast cancer under CKKS vs clear text vs the TEE path.

One run measures, for batch sizes 1, 8, 64 and 4096 rows (rows tiled from the test split):
  * HE (TenSEAL CKKS, preset "linear", N=8192) in both slot layouts -- "columns" (one ciphertext
    per feature, no Galois keys) and "rows" (whole rows per ciphertext, rotations, Galois keys):
    client encrypt / server evaluate / client decrypt, ciphertext bytes per batch and per row,
    public-context (key) sizes with and without Galois keys, agreement with the clear model, and
    the layout the SDK's ``choose_layout`` picks;
  * clear text: scikit-learn ``predict_proba`` and onnxruntime on the same pipeline;
  * the TEE path: the platform in the background with the simulated enclave, SDK ``predict``
    (HPKE-sealed request, attested enclave, signed receipt);
and one encrypted-training epoch (preset "train") on the breast-cancer training split.
Ratios are per-row latency relative to the scikit-learn baseline.

    python benchmarks/he_inference.py [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np


def best_of(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one repetition, skip the 4096-row TEE run")
    parser.add_argument("--no-tee", action="store_true", help="skip the TEE path")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=UserWarning)
    repeat = 1 if args.quick else 3

    import onnxruntime as ort
    from sklearn.linear_model import LogisticRegression  # noqa: F401  (the demo's estimator)

    from sealedml.client import from_estimator
    from sealedml.demo import _train_provider_model
    from sealedml.he import HEKeys, evaluate_batch, he_model_from_sklearn, load_public_context
    from sealedml.he.packing import choose_layout
    from sealedml.he.training import EncryptedLogisticRegression, encrypt_training_data, gradient_step
    from sealedml.he.wire import decode_message

    estimator, test_x, _ = _train_provider_model()
    columns = list(test_x.columns)
    base = test_x.to_numpy(dtype=np.float64)
    model = he_model_from_sklearn(estimator, columns)
    prepared = from_estimator(estimator)
    session = ort.InferenceSession(prepared.onnx_bytes, providers=["CPUExecutionProvider"])
    onnx_input = session.get_inputs()[0].name

    keys = HEKeys.generate(model.preset)
    keygen = best_of(lambda: HEKeys.generate(model.preset), 1)
    public = keys.public_context()
    context = load_public_context(public)
    galois_keys = HEKeys.generate(model.preset, galois=True)
    galois_keygen = best_of(lambda: HEKeys.generate(model.preset, galois=True), 1)
    galois_public = galois_keys.public_context()
    galois_context = load_public_context(galois_public)
    layouts = {"columns": (keys, context), "rows": (galois_keys, galois_context)}
    sizes = [1, 8, 64, 4096]
    results: dict[str, object] = {
        "params": keys.params.to_dict(),
        "public_context_bytes": len(public),
        "keygen_seconds": keygen,
        "galois_public_context_bytes": len(galois_public),
        "galois_keygen_seconds": galois_keygen,
        "batches": {},
    }
    tee: dict[int, float] = {}
    if not args.no_tee:
        tee = run_tee(estimator, prepared, base, sizes, repeat, quick=args.quick)

    for rows in sizes:
        x = np.resize(base, (rows, base.shape[1]))
        frame = test_x.iloc[np.arange(rows) % len(base)]
        measured: dict[str, dict[str, float]] = {}
        for layout, (lkeys, lctx) in layouts.items():
            enc = best_of(lambda x=x, k=lkeys, la=layout: k.encrypt_batch(x, columns, layout=la), repeat)
            message = lkeys.encrypt_batch(x, columns, layout=layout)
            ev = best_of(
                lambda m=message, c=lctx: evaluate_batch(model, c, m, max_bytes=2**31, max_rows=100_000),
                repeat,
            )
            scores_message, _ = evaluate_batch(model, lctx, message, max_bytes=2**31, max_rows=100_000)
            dec = best_of(lambda s=scores_message, k=lkeys: k.decrypt_scores(s), repeat)
            labels, _ = model.finalize(lkeys.decrypt_scores(scores_message))
            measured[layout] = {
                "encrypt_s": enc,
                "evaluate_s": ev,
                "decrypt_s": dec,
                "he_total_s": enc + ev + dec,
                "batch_bytes": len(message),
                "scores_bytes": len(scores_message),
                "ciphertexts": len(decode_message(message, max_bytes=2**31).ciphertexts),
                "agreement": float(np.mean(labels == estimator.predict(frame))),
            }
        skl = best_of(lambda f=frame: estimator.predict_proba(f), max(repeat, 3))
        x32 = x.astype(np.float32)
        onnx = best_of(lambda a=x32: session.run(None, {onnx_input: a}), max(repeat, 3))
        results["batches"][rows] = {
            **measured["columns"],
            "rows_layout": measured["rows"],
            "auto_layout": choose_layout(
                rows, len(columns), model.outputs, keys.params.slots, preset=model.preset
            ),
            "sklearn_s": skl,
            "onnxruntime_s": onnx,
            "tee_s": tee.get(rows),
        }

    # one epoch of encrypted training on the breast-cancer training split
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    data = load_breast_cancer()
    x_train, _, y_train, _ = train_test_split(
        data.data, data.target, test_size=0.2, random_state=7, stratify=data.target
    )
    train_keys = HEKeys.generate("train")
    train_ctx = load_public_context(train_keys.public_context())
    start = time.perf_counter()
    train_data = encrypt_training_data(train_keys, x_train, y_train)
    encrypt_data_s = time.perf_counter() - start
    server: list[float] = []
    traffic: list[int] = []

    def step(weights: bytes) -> bytes:
        t = time.perf_counter()
        answer = gradient_step(train_ctx, train_data, weights, max_bytes=2**31)
        server.append(time.perf_counter() - t)
        traffic.append(len(weights) + len(answer))
        return answer

    start = time.perf_counter()
    EncryptedLogisticRegression(train_keys, epochs=1).fit(x_train, y_train, step)
    epoch_s = time.perf_counter() - start
    results["training"] = {
        "rows": int(x_train.shape[0]),
        "features": int(x_train.shape[1]),
        "encrypt_data_s": encrypt_data_s,
        "data_bytes": len(train_data),
        "epoch_s": epoch_s,
        "epoch_server_s": server[0],
        "epoch_traffic_bytes": traffic[0],
        "public_context_bytes": len(train_keys.public_context()),
    }
    print_report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))


def run_tee(
    estimator, prepared, base: np.ndarray, sizes: list[int], repeat: int, *, quick: bool
) -> dict[int, float]:
    """Per-batch latency of SDK predict through the simulated-TEE platform (best of ``repeat``)."""
    from sealedml.attestation.measurement import compute_measurement
    from sealedml.attestation.policy import AppraisalPolicy
    from sealedml.client import SealedMLClient
    from sealedml.platform.launch import platform_in_background
    from sealedml.platform.settings import Settings

    out: dict[int, float] = {}
    workdir = Path(tempfile.mkdtemp(prefix="sealedml-he-bench-"))
    settings = Settings(data_dir=workdir, anchor="none")
    with platform_in_background(settings) as server:
        admin_token = settings.admin_token_path.read_text().strip()
        suffix = os.urandom(3).hex()
        with SealedMLClient(server.url, admin_token) as admin:
            provider = admin.create_account(f"bench-provider-{suffix}", "provider")
            owner = admin.create_account(f"bench-owner-{suffix}", "data_owner")
        with SealedMLClient(server.url) as anon:
            root = hashlib.sha256(anon.fetch_evidence(os.urandom(32)).certificates[-1]).hexdigest()
        policy = AppraisalPolicy(
            allow_simulated=True,
            reference_measurements=(compute_measurement(),),
            max_evidence_age_seconds=3600,
            allow_debug=False,
            simulated_roots=(root,),
        )
        with SealedMLClient(server.url, provider["token"], policy=policy) as prov:
            model_id = prov.publish_model(f"bench-he-{suffix}", prepared).model.id
        with SealedMLClient(server.url, owner["token"], policy=policy) as client:
            client.attest()
            for rows in sizes:
                if (quick and rows > 64) or rows not in (1, 64, 4096):
                    continue
                x = np.resize(base, (rows, base.shape[1])).astype(np.float32)
                out[rows] = best_of(lambda x=x: client.predict(model_id, x), repeat)
    return out


def _fmt_ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:10.3f}"


def print_report(results: dict) -> None:
    params = results["params"]
    print(
        f"\nCKKS N={params['poly_modulus_degree']} moduli={params['coeff_mod_bit_sizes']} "
        f"scale=2^{params['scale_bits']} slots={params['slots']}; public context (public + relin keys) "
        f"{results['public_context_bytes'] / 2**20:.2f} MiB, "
        f"keygen {results['keygen_seconds'] * 1e3:.0f} ms; "
        f"with Galois keys (rows layout) {results['galois_public_context_bytes'] / 2**20:.2f} MiB, "
        f"keygen {results['galois_keygen_seconds'] * 1e3:.0f} ms\n"
    )
    header = (
        f"{'rows':>5} | {'path':<22} | {'batch ms':>10} | {'per-row ms':>10} | {'rows/s':>10} | "
        f"{'x sklearn':>9}"
    )
    print(header)
    print("-" * len(header))
    for rows, b in results["batches"].items():
        base = b["sklearn_s"]
        lines = [
            ("sklearn predict_proba", b["sklearn_s"]),
            ("onnxruntime", b["onnxruntime_s"]),
            ("TEE (simulated) SDK", b["tee_s"]),
            ("HE columns encrypt", b["encrypt_s"]),
            ("HE columns evaluate", b["evaluate_s"]),
            ("HE columns decrypt", b["decrypt_s"]),
            ("HE columns total", b["he_total_s"]),
            ("HE rows encrypt", b["rows_layout"]["encrypt_s"]),
            ("HE rows evaluate", b["rows_layout"]["evaluate_s"]),
            ("HE rows decrypt", b["rows_layout"]["decrypt_s"]),
            ("HE rows total", b["rows_layout"]["he_total_s"]),
        ]
        for name, seconds in lines:
            if seconds is None:
                print(f"{rows:>5} | {name:<22} | {'-':>10} | {'-':>10} | {'-':>10} | {'-':>9}")
                continue
            print(
                f"{rows:>5} | {name:<22} | {_fmt_ms(seconds)} | {_fmt_ms(seconds / rows)} | "
                f"{rows / seconds:10.0f} | {seconds / base:9.2f}"
            )
        for name, layout in (("columns", b), ("rows", b["rows_layout"])):
            print(
                f"{rows:>5} | {name}: {layout['ciphertexts']} ciphertext(s) in "
                f"{layout['batch_bytes'] / 2**20:.2f} MiB "
                f"({layout['batch_bytes'] / rows / 1024:.1f} KiB/row), "
                f"out {layout['scores_bytes'] / 2**10:.0f} KiB; HE/clear label agreement "
                f"{layout['agreement']:.4f}"
            )
        print(f"{rows:>5} | SDK auto layout: {b['auto_layout']}")
        print("-" * len(header))
    t = results["training"]
    print(
        f"encrypted training ({t['rows']} rows x {t['features']} features, preset 'train', context "
        f"{t['public_context_bytes'] / 2**20:.2f} MiB): encrypt data {t['encrypt_data_s']:.2f} s "
        f"({t['data_bytes'] / 2**20:.1f} MiB, once); one epoch {t['epoch_s']:.2f} s "
        f"(server {t['epoch_server_s']:.2f} s), "
        f"{t['epoch_traffic_bytes'] / 2**20:.1f} MiB on the wire per epoch"
    )


if __name__ == "__main__":
    main()
