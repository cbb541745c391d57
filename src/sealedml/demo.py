"""``sealedml demo``: confidential inference end to end on the Wisconsin breast-cancer data.

A real platform server runs on loopback with the simulated enclave; a model provider trains and
publishes an encrypted classifier; a hospital (data owner) attests the enclave under its own
policy, sends held-out patient rows sealed to it, and reads predictions only it can decrypt, each
covered by a receipt it verifies.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from sealedml.errors import AttestationError

SEED = 7


def _train_provider_model() -> tuple[object, object, object]:
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    data = load_breast_cancer(as_frame=True)
    frame = data.frame
    train, test = train_test_split(frame, test_size=0.2, random_state=SEED, stratify=frame["target"])
    features = [c for c in frame.columns if c != "target"]
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=SEED))
    model.fit(train[features], train["target"])
    return model, test[features], test["target"]


def run_demo(console: Console, data_dir: Path | None = None) -> None:
    """Run the demo, printing claims, predictions with accuracy, and a verified receipt.

    Raises ``SealedMLError`` if any step is rejected (the demo never hides a failure).
    """
    from sealedml.attestation.measurement import compute_measurement
    from sealedml.attestation.policy import AppraisalPolicy
    from sealedml.cli import claims_table, receipt_table, warn_if_simulated
    from sealedml.client import SealedMLClient, from_estimator
    from sealedml.platform.launch import platform_in_background
    from sealedml.platform.settings import Settings

    started = time.perf_counter()
    workdir = data_dir or Path(tempfile.mkdtemp(prefix="sealedml-demo-"))
    console.rule("[bold]SealedML demo: confidential inference on breast-cancer screening data")
    settings = Settings(data_dir=workdir, anchor="embedded", anchor_interval_seconds=0)
    with platform_in_background(settings) as server:
        console.print(f"platform listening on {server.url} (data in {workdir})")
        admin_token = (workdir / "admin-token").read_text().strip()
        with SealedMLClient(server.url, admin_token) as admin:
            provider = admin.create_account(f"oncology-models-{os.getpid()}", "provider")
            hospital = admin.create_account(f"st-mary-hospital-{os.getpid()}", "data_owner")

        # 1. Each party writes its own policy: the measurement of the enclave code it reviewed
        #    (computed locally), and — only because this is a development demo — the simulated root.
        with SealedMLClient(server.url) as anonymous:
            bundle = anonymous.fetch_evidence(os.urandom(32))
        simulated_root = hashlib.sha256(bundle.certificates[-1]).hexdigest()
        policy = AppraisalPolicy(
            allow_simulated=True,
            reference_measurements=(compute_measurement(),),
            max_evidence_age_seconds=300,
            allow_debug=False,
            simulated_roots=(simulated_root,),
        )

        # 2. The provider trains, converts to ONNX, encrypts, uploads, provisions the key.
        console.rule("provider: train, encrypt, publish")
        estimator, test_x, test_y = _train_provider_model()
        prepared = from_estimator(estimator)
        with SealedMLClient(server.url, provider["token"], policy=policy) as prov:
            published = prov.publish_model(
                "breast-cancer-screen",
                prepared,
                description="Logistic regression on the Wisconsin diagnostic breast-cancer data",
                output_policy={"mode": "rounded", "decimals": 3},
                query_budget=10_000,
                price_per_row=2,
                version="1.0",
            )
        console.print(
            f"published [bold]{published.model.name}[/] ({len(prepared.onnx_bytes):,} bytes of ONNX, "
            f"sha256 {published.model_sha256[:16]}…); the platform holds only its ciphertext"
        )

        # 3. The marketplace: the listing (with its live attestation verdict) and credits.
        console.rule("marketplace: listing and credits")
        with SealedMLClient(server.url, admin_token) as admin:
            admin.market.grant(hospital["id"], 1_000)
        with SealedMLClient(server.url, hospital["token"]) as browse:
            listing = browse.market.model(published.model.id)
        badge = "[green]passes[/]" if listing["attestation_passing"] else "[red]FAILS[/]"
        console.print(
            f"listing {listing['name']} v{listing['version']} by {listing['owner']}: "
            f"{listing['price_per_row']} credits/row, {len(listing['input_columns'])} inputs, "
            f"enclave {badge} attestation ({listing['attestation_reason']})"
        )
        console.print("the platform granted the hospital 1000 credits")

        # 4. The hospital attests the enclave under its own policy.
        console.rule("data owner: attest the enclave")
        with SealedMLClient(server.url, hospital["token"], policy=policy) as client:
            result = client.attest()
            warn_if_simulated(result)
            console.print(claims_table(result))
            strict = AppraisalPolicy(
                allow_simulated=False,
                reference_measurements=policy.reference_measurements,
                max_evidence_age_seconds=300,
                allow_debug=False,
                simulated_roots=(),
            )
            try:
                client.attest(strict)
            except AttestationError as exc:
                console.print(f"under a production policy the same evidence is rejected: [red]{exc.code}[/]")
            else:  # pragma: no cover - would be a security bug
                raise AssertionError("a strict policy accepted simulated evidence")
            client.attest()

            # 5. Predict on held-out patients.
            console.rule("data owner: sealed prediction on held-out patients")
            prediction = client.predict(published.model.id, test_x)
            receipt = prediction.receipt
            verified = receipt.verify(policy)
            balance = client.me()["balance"]
            log_key = client.ledger.public_key

        # 6. The receipt is in the transparency log, whose tree head is anchored on a chain.
        with SealedMLClient(server.url, admin_token) as admin:
            anchored = admin._json("POST", "/v1/ledger/anchor")
        with SealedMLClient(server.url, provider["token"]) as prov:
            revenue = prov.me()["balance"]

        labels = np.asarray(prediction.labels)
        truth = np.asarray(test_y)
        accuracy = float((labels == truth).mean())
        names = {0: "malignant", 1: "benign"}
        table = Table(title=f"Predictions for {len(labels)} held-out patients (first 12 shown)")
        for col in ("row", "truth", "prediction", "p(malignant)", "p(benign)", ""):
            table.add_column(col)
        probs = prediction.probabilities
        for i in range(min(12, len(labels))):
            p = probs[i] if probs is not None else (float("nan"), float("nan"))
            ok = "[green]✓[/]" if labels[i] == truth[i] else "[red]✗[/]"
            table.add_row(
                str(test_x.index[i]),
                names[int(truth[i])],
                names[int(labels[i])],
                f"{p[0]:.3f}",
                f"{p[1]:.3f}",
                ok,
            )
        console.print(table)
        console.print(
            f"accuracy on {len(labels)} held-out rows: [bold]{accuracy:.3f}[/] "
            f"(output policy: {prediction.output_policy.get('mode')}, "
            f"{prediction.output_policy.get('decimals')} decimals)"
        )
        console.print(receipt_table(receipt.receipt))
        console.print(
            f"receipt verified: signed by enclave key {verified.signing_public_key.hex()[:16]}… bound to "
            f"measurement {verified.claims.measurement[:16]}…"
        )
        console.rule("marketplace and transparency log")
        ledger = receipt.ledger or {}
        path = ledger.get("inclusion", {}).get("inclusion_path", [])
        console.print(
            f"billed {len(labels)} rows x 2 credits: the hospital has {balance} credits left, "
            f"the provider earned {revenue}"
        )
        console.print(
            f"receipt logged as entry {ledger.get('leaf_index')} "
            f"of {ledger.get('sth', {}).get('tree_size')}; "
            f"inclusion proof ({len(path)} hashes) verified against a tree head signed by log key "
            f"{log_key.hex()[:16]}…"
        )
        if anchored:
            anchor = anchored["anchor"]
            console.print(
                f"tree head of {anchor['tree_size']} entries anchored on the embedded chain "
                f"(chain id {anchor['chain_id']}, block {anchor['block_number']}, "
                f"tx {anchor['tx_hash'][:18]}…)"
            )
    console.print(
        Panel(
            f"done in {time.perf_counter() - started:.1f} s — "
            "the platform stored and relayed only ciphertext",
            border_style="green",
        )
    )
