"""The CLI against the real server: policy init, publish, predict with receipts, receipt verify."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from e2e_support import invoke_cli
from sealedml.attestation.measurement import compute_measurement
from sealedml.cli import app

runner = CliRunner()


@pytest.fixture
def env(platform, tmp_path: Path, unique) -> dict[str, str]:
    return {
        "SEALEDML_URL": platform.url,
        "SEALEDML_POLICY": str(tmp_path / "policy.toml"),
        "SEALEDML_KEYS_DIR": str(tmp_path / "keys"),
        "PROVIDER": platform.account(unique("cli-provider"), "provider"),
        "OWNER": platform.account(unique("cli-owner"), "data_owner"),
        "NAME": unique("cli-model"),
    }




def test_measure_is_reproducible() -> None:
    first = runner.invoke(app, ["measure"])
    second = subprocess.run([sys.executable, "-m", "sealedml.cli", "measure"], capture_output=True, text=True)
    assert first.exit_code == 0
    assert first.stdout.strip() == second.stdout.strip() == compute_measurement()


def test_publish_predict_and_verify_receipts(env, cancer, tmp_path: Path) -> None:
    result = invoke_cli(["policy", "init", "--allow-simulated"], env)
    assert result.exit_code == 0, result.output
    policy = Path(env["SEALEDML_POLICY"]).read_text()
    assert "allow_simulated = true" in policy and compute_measurement() in policy

    # A pickled scikit-learn estimator is converted with skl2onnx; columns come from a CSV header.
    from sklearn.ensemble import GradientBoostingClassifier

    model = GradientBoostingClassifier(n_estimators=20, random_state=0)
    model.fit(cancer.train[cancer.features].to_numpy(), cancer.train["target"])
    pickled = tmp_path / "gbt.pkl"
    pickled.write_bytes(pickle.dumps(model))
    data = tmp_path / "patients.csv"
    cancer.test.to_csv(data, index=False)

    result = invoke_cli(
        [
            "model",
            "publish",
            str(pickled),
            "--name",
            env["NAME"],
            "--columns-from",
            str(data),
            "--label-column",
            "target",
            "--output-policy",
            "label",
            "--json",
        ],
        env,
        env["PROVIDER"],
    )
    assert result.exit_code == 0, result.output
    published = json.loads(result.stdout)
    assert published["input_columns"] == cancer.features
    assert Path(published["key_file"]).stat().st_mode & 0o077 == 0

    receipts = tmp_path / "receipts"
    out = tmp_path / "predictions.csv"
    result = invoke_cli(
        [
            "predict",
            str(data),
            "--model",
            env["NAME"],
            "--output",
            str(out),
            "--receipts",
            str(receipts),
            "--batch-rows",
            "50",
        ],
        env,
        env["OWNER"],
    )
    assert result.exit_code == 0, result.output
    predictions = pd.read_csv(out)
    assert len(predictions) == len(cancer.test)
    assert list(predictions.columns) == ["prediction"]  # label-only policy: no scores
    assert (predictions["prediction"].to_numpy() == cancer.test["target"].to_numpy()).mean() > 0.85
    files = sorted(receipts.glob("*.receipt.json"))
    assert len(files) == 3  # 114 rows in batches of 50

    result = invoke_cli(["receipt", "verify", str(files[0])], env)
    assert result.exit_code == 0, result.output
    assert "SIMULATED" in result.output

    # the transparency log: the saved proof, the log now, and consistency with a saved head
    result = invoke_cli(["ledger", "verify", str(files[1])], env, env["OWNER"])
    assert result.exit_code == 0, result.output
    assert "included" in result.output
    head = tmp_path / "sth.json"
    assert invoke_cli(["ledger", "sth", "--save", str(head)], env).exit_code == 0
    result = invoke_cli(["ledger", "verify", "--old-sth", str(head), "--json"], env)
    assert result.exit_code == 0 and json.loads(result.stdout)["consistency"]["old_tree_size"] >= 3
    forged = json.loads(files[1].read_text())
    forged["receipt"]["rows"] += 1
    (tmp_path / "forged.json").write_text(json.dumps(forged))
    result = invoke_cli(["ledger", "verify", str(tmp_path / "forged.json")], env, env["OWNER"])
    assert result.exit_code == 1 and "ledger.inclusion_invalid" in result.output

    tampered = json.loads(files[0].read_text())
    tampered["receipt"]["rows"] += 1
    files[0].write_text(json.dumps(tampered))
    result = invoke_cli(["receipt", "verify", str(files[0])], env)
    assert result.exit_code == 1
    assert "crypto.signature_invalid" in result.output


def test_rejections_exit_1_with_code(env, tmp_path: Path) -> None:
    strict = tmp_path / "strict.toml"
    strict.write_text(
        f'[attestation]\nallow_simulated = false\nreference_measurements = ["{compute_measurement()}"]\n'
    )
    result = invoke_cli(["attest", "--policy", str(strict)], env)
    assert result.exit_code == 1
    assert "attestation.simulated_not_allowed" in result.output

    result = invoke_cli(["attest", "--policy", str(tmp_path / "missing.toml")], env)
    assert result.exit_code == 1 and "config.invalid" in result.output

    result = invoke_cli(["model", "list"], env, "sml_wrong")
    assert result.exit_code == 1 and "auth.invalid_token" in result.output

    result = invoke_cli(["predict", str(tmp_path / "none.csv"), "--model", "x"], env, env["OWNER"])
    assert result.exit_code == 1
