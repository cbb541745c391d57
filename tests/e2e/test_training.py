"""Confidential training from the command line against the real server, and both showcases."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pandas as pd
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from sealedml.cli import app
from sealedml.datasets.genomics import LABEL as GENOMICS_LABEL
from sealedml.datasets.genomics import CohortParameters, generate_cohort
from sealedml.datasets.heart import FEATURES, LABEL, load_cleveland

runner = CliRunner()


def party(platform, tmp_path: Path, name: str, role: str = "data_owner") -> dict[str, str]:
    """One CLI user: its own keys dir and token, the shared platform and policy file."""
    return {
        "SEALEDML_URL": platform.url,
        "SEALEDML_POLICY": str(tmp_path / "policy.toml"),
        "SEALEDML_KEYS_DIR": str(tmp_path / f"keys-{name}"),
        "SEALEDML_TOKEN": platform.account(name, role),
    }


def cli(args: list[str], env: dict[str, str], ok: bool = True):
    result = runner.invoke(app, args, env=env)
    if ok:
        assert result.exit_code == 0, result.output
    return result


def said(result) -> str:
    """What the command told the person on stderr, with the console's line wrapping undone."""
    return " ".join(result.stderr.split())


@pytest.fixture
def heart_files(tmp_path: Path) -> tuple[Path, pd.DataFrame]:
    heart = load_cleveland()
    frame = pd.DataFrame(heart.features, columns=list(FEATURES))
    frame[LABEL] = heart.target
    path = tmp_path / "clinic.csv"
    frame.iloc[20:].to_csv(path, index=False)
    return path, frame.iloc[:20]


def test_upload_train_publish_show_fetch_and_predict(platform, tmp_path: Path, unique, heart_files) -> None:
    data, new_patients = heart_files
    clinic = party(platform, tmp_path, unique("cli-clinic"))
    doctor = party(platform, tmp_path, unique("cli-doctor"))
    cli(["policy", "init", "--allow-simulated"], clinic)

    name, model = unique("clinic-data"), unique("clinic-model")
    result = cli(
        ["dataset", "upload", str(data), "--name", name, "--offer", "--price", "3", "--json"], clinic
    )
    uploaded = json.loads(result.stdout)
    assert uploaded["rows"] == len(load_cleveland().target) - 20 and uploaded["columns"] == 14
    assert uploaded["listing_id"] and Path(uploaded["key_file"]).is_file()
    assert "encrypting" in said(result) and "the enclave decrypted" in said(result)
    listed = json.loads(cli(["dataset", "list", "--json"], clinic).stdout)
    assert [d["name"] for d in listed] == [name] and listed[0]["status"] == "ready"

    result = cli(
        [
            "train",
            "--dataset",
            name,
            "--label",
            LABEL,
            "--algorithm",
            "random_forest",
            "--param",
            "n_estimators=25",
            "--param",
            "max_depth=6",
            "--publish",
            model,
            "--json",
        ],
        clinic,
    )
    summary = json.loads(result.stdout)
    assert summary["status"] == "done" and 0.5 < summary["metrics"]["accuracy"] <= 1.0
    assert "submitted training job" in said(result) and "approved it for your dataset" in said(result)
    assert "done (done, 100%)" in said(result)
    assert "receipt verified" in said(result) and "published" in said(result)
    job = summary["job"]

    result = cli(["jobs"], clinic)
    assert job[:8] in said(result) and "train" in said(result)
    chart = tmp_path / "metrics.png"
    result = cli(["jobs", "show", job, "--chart", str(chart)], clinic)
    assert "validation accuracy" in said(result) and "approved" in said(result)
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    onnx_file = tmp_path / "model.onnx"
    fetched = json.loads(cli(["model", "fetch", job, "--output", str(onnx_file), "--json"], clinic).stdout)
    assert hashlib.sha256(onnx_file.read_bytes()).hexdigest() == summary["receipt"]["model_sha256"]
    assert fetched["input_columns"] == list(FEATURES)

    # The doctor scores new patients with the published model, and gets what the clinic's copy says.
    patients = tmp_path / "patients.csv"
    new_patients[list(FEATURES)].to_csv(patients, index=False)
    cli(["policy", "init", "--allow-simulated", "--force"], doctor)
    scored = tmp_path / "scored.csv"
    cli(["predict", str(patients), "--model", model, "--output", str(scored)], doctor)
    session = ort.InferenceSession(onnx_file.read_bytes(), providers=["CPUExecutionProvider"])
    labels, _ = session.run(None, {"input": new_patients[list(FEATURES)].to_numpy(np.float32)})
    assert pd.read_csv(scored)["prediction"].tolist() == [int(v) for v in labels]
    # The doctor is no party of the job: it sees neither the job nor the dataset.
    result = cli(["jobs", "show", job], doctor, ok=False)
    assert result.exit_code == 1 and "not_found.job" in said(result)


def test_joint_job_waits_for_the_second_owner_then_both_read_the_model(
    platform, tmp_path: Path, unique
) -> None:
    cohort = generate_cohort(CohortParameters(n_genes=40, n_patients=160, n_informative=6, seed=4))
    files = {}
    for key, hospital in zip(("a", "b"), cohort.hospitals, strict=True):
        files[key] = tmp_path / f"{key}.parquet"
        pq.write_table(hospital.to_table(), files[key])
    a = party(platform, tmp_path, unique("cli-hospital-a"))
    b = party(platform, tmp_path, unique("cli-hospital-b"))
    cli(["policy", "init", "--allow-simulated"], a)
    ids = {}
    for key, env in (("a", a), ("b", b)):
        out = cli(["dataset", "upload", str(files[key]), "--name", unique(f"genes-{key}"), "--json"], env)
        ids[key] = json.loads(out.stdout)["id"]
    b_key = cli(["recipient-key"], b).stdout.strip()
    assert len(b_key) == 64

    submitted = json.loads(
        cli(
            [
                "train",
                "--dataset",
                ids["a"],
                "--dataset",
                ids["b"],  # hospital B shared its dataset id with A
                "--label",
                GENOMICS_LABEL,
                "--algorithm",
                "logistic_regression",
                "--param",
                "C=0.1",
                "--recipient",
                "me",
                "--recipient",
                b_key,
                "--no-wait",
                "--json",
            ],
            a,
        ).stdout
    )
    job = submitted["job"]
    shown = said(cli(["jobs", "show", job], a))
    assert "awaiting_approval" in shown and "NOT approved yet" in shown

    approved = cli(["approve", submitted["spec_sha256"]], b)  # by digest: B approves what it reviewed
    assert "approved" in said(approved) and ids["b"] in said(approved)
    waited = cli(["jobs", "wait", job], a)
    assert "done (done, 100%)" in said(waited) and "validation accuracy" in said(waited)

    shown_b = said(cli(["jobs", "show", job], b))  # B reads the metrics from its own grant
    assert "validation accuracy" in shown_b and "receipt verified" in shown_b
    model_b = tmp_path / "b.onnx"
    cli(["model", "fetch", job, "--output", str(model_b)], b)
    model_a = tmp_path / "a.onnx"
    cli(["model", "fetch", job, "--output", str(model_a)], a)
    assert model_a.read_bytes() == model_b.read_bytes()


def test_showcases_run_end_to_end(tmp_path: Path) -> None:
    help_text = cli(["demo", "--help"], {}).stdout
    assert "genomics" in help_text and "heart" in help_text

    genomics = cli(
        ["demo", "genomics", "--data-dir", str(tmp_path / "g"), "--genes", "200", "--patients", "160"], {}
    )
    out = said(genomics)
    assert "both owners approved" in out and "not_found.job" in out
    assert "hospital B: decrypted" in out and "absent" in out and "done in" in out

    heart = cli(["demo", "heart", "--data-dir", str(tmp_path / "h")], {})
    out = said(heart)
    assert "input.privacy_budget_exhausted" in out and "new patients" in out and "done in" in out


def test_demo_without_a_showcase_is_still_the_inference_demo(tmp_path: Path) -> None:
    result = cli(["demo", "--data-dir", str(tmp_path / "inference")], {})
    assert "confidential inference" in said(result) and "receipt verified" in said(result)
