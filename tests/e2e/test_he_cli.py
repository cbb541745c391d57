"""The CLI in encrypted-ML mode against the real server: publish --mode he, predict --mode he, demo he."""

from __future__ import annotations

import json
import pickle
import stat
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from e2e_support import invoke_cli
from sealedml.cli import app
from sealedml.client import SealedMLClient

runner = CliRunner()


@pytest.fixture
def env(platform, tmp_path: Path, unique) -> dict[str, str]:
    return {
        "SEALEDML_URL": platform.url,
        "SEALEDML_KEYS_DIR": str(tmp_path / "keys"),
        "PROVIDER": platform.account(unique("he-cli-provider"), "provider"),
        "OWNER": platform.account(unique("he-cli-owner"), "data_owner"),
        "NAME": unique("he-cli-model"),
    }




def test_publish_and_predict_in_he_mode(env, platform, cancer, tmp_path: Path) -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    model.fit(cancer.train[cancer.features].to_numpy(), cancer.train["target"])
    pickled = tmp_path / "logistic.pkl"
    pickled.write_bytes(pickle.dumps(model))
    data = tmp_path / "patients.csv"
    cancer.test.to_csv(data, index=False)

    result = invoke_cli(
        [
            "model",
            "publish",
            str(pickled),
            "--mode",
            "he",
            "--name",
            env["NAME"],
            "--columns-from",
            str(data),
            "--label-column",
            "target",
            "--json",
        ],
        env,
        env["PROVIDER"],
    )
    assert result.exit_code == 0, result.output
    assert "plaintext" in result.stderr
    published = json.loads(result.stdout)
    assert (published["mode"], published["preset"], published["status"]) == ("he", "linear", "ready")

    out = tmp_path / "out.csv"
    result = invoke_cli(
        ["predict", str(data), "--model", env["NAME"], "--mode", "he", "-o", str(out)], env, env["OWNER"]
    )
    assert result.exit_code == 0, result.output
    assert "ms/row" in result.stderr and "MiB" in result.stderr
    # 114 rows are a small batch: the client packs them row-wise, which needs Galois keys.
    assert "rows layout" in result.stderr
    keys_file = Path(env["SEALEDML_KEYS_DIR"]) / "he" / "linear-galois.hekeys"
    assert stat.S_IMODE(keys_file.stat().st_mode) == 0o600
    assert not (keys_file.parent / "linear.hekeys").exists()
    predictions = pd.read_csv(out)
    clear = model.predict(cancer.test[cancer.features].to_numpy())
    assert float(np.mean(predictions["prediction"].to_numpy() == clear)) >= 0.995
    assert np.allclose(
        predictions[["p_0", "p_1"]].to_numpy(),
        model.predict_proba(cancer.test[cancer.features].to_numpy()),
        atol=1e-3,
    )

    # A second run reuses the keys and the uploaded context; JSON output goes to stdout.
    result = invoke_cli(
        ["predict", str(data), "--model", env["NAME"], "--mode", "he", "--batch-rows", "50"],
        env,
        env["OWNER"],
    )
    assert result.exit_code == 0, result.output
    records = json.loads(result.stdout)
    assert [r["prediction"] for r in records] == clear.tolist()
    assert "3 encrypted request(s)" in result.stderr
    with SealedMLClient(platform.url, env["OWNER"]) as owner:
        assert len(owner.he.contexts()) == 1
        jobs = [job for job in owner.list_jobs() if job["kind"] == "he-predict"]
    assert sorted(job["rows"] for job in jobs) == sorted([len(cancer.test), 50, 50, len(cancer.test) - 100])

    listed = invoke_cli(["he", "keys", "list", "--json"], env)
    assert listed.exit_code == 0, listed.output
    assert [entry["preset"] for entry in json.loads(listed.stdout)] == ["linear"]


def test_a_bad_he_model_file_is_refused(env, tmp_path: Path) -> None:
    bogus = tmp_path / "model.he.json"
    bogus.write_text('{"format": "something else"}')
    result = invoke_cli(
        ["model", "publish", str(bogus), "--mode", "he", "--name", env["NAME"]], env, env["PROVIDER"]
    )
    assert result.exit_code == 1
    assert "he.model_invalid" in result.stderr


def test_demo_he_runs_end_to_end(tmp_path: Path) -> None:
    import io

    from rich.console import Console

    from sealedml.demo_he import run_he_demo

    assert runner.invoke(app, ["demo", "he", "--help"]).exit_code == 0
    out = io.StringIO()
    results = run_he_demo(Console(file=out, width=160), tmp_path / "demo")
    assert set(results["models"]) == {"logistic/rows", "logistic/columns", "poly-mlp/columns"}
    for model in results["models"].values():
        assert model["agreement"] >= 0.995
        assert model["request_bytes"] > model["response_bytes"] > 0
    # 114 patients fit one rows-layout ciphertext: far fewer bytes than one ciphertext per feature.
    rows, columns = results["models"]["logistic/rows"], results["models"]["logistic/columns"]
    assert rows["request_bytes"] * 10 < columns["request_bytes"]
    assert results["one_patient_ms"] > 0
    assert results["training"]["accuracy"] >= results["training"]["sklearn_accuracy"] - 0.02
    text = out.getvalue()
    assert "agree" in text and "encrypted training" in text and "ms/row" in text and "one patient" in text
