"""Single-owner confidential training on real data, through ``Enclave.handle``."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from enclave.test_training_kit import (
    CANCER_LABEL,
    Owner,
    Recipient,
    approve_and_train,
    breast_cancer_table,
    job_spec,
    new_enclave,
    onnx_labels,
    recipient_model,
    validation_rows,
    verify_receipt,
)
from sealedml.crypto.request import open_response, seal_request
from sealedml.datasets.files import CSV
from sealedml.datasets.heart import LABEL as HEART_LABEL
from sealedml.datasets.heart import load_cleveland
from sealedml.enclave import payload
from sealedml.enclave.training import check_parity, export_onnx
from sealedml.errors import ModelError

ALGORITHMS = {
    "logistic_regression": {},
    "gradient_boosting": {"n_estimators": 50},
    "random_forest": {"n_estimators": 50},
    "mlp": {"hidden_layer_sizes": [16], "max_iter": 300},
    "naive_bayes": {},
}


@pytest.fixture(scope="module")
def cancer() -> tuple[np.ndarray, np.ndarray, Owner]:
    table = breast_cancer_table()
    x = np.column_stack([table.column(n).to_numpy() for n in table.column_names if n != CANCER_LABEL])
    y = table.column(CANCER_LABEL).to_numpy()
    return x, y, Owner.create("wisconsin", table)


@pytest.mark.parametrize("algorithm", list(ALGORITHMS))
def test_each_algorithm_trains_above_90_percent_and_the_recipient_reproduces_it(
    tmp_path: Path, cancer: tuple[np.ndarray, np.ndarray, Owner], algorithm: str
) -> None:
    x, y, owner = cancer
    enclave = new_enclave(tmp_path)
    _, provisioned = owner.provision(enclave)
    assert provisioned["rows"] == 569 and provisioned["columns"] == 31
    alice = Recipient()
    spec = job_spec([owner.dataset_id], [alice], algorithm=algorithm, params=ALGORITHMS[algorithm], seed=7)
    trained = approve_and_train(enclave, [owner], spec)

    metrics = trained.answer["metrics"]
    assert metrics["accuracy"] > 0.9, metrics
    assert metrics["roc_auc"] > 0.9 and metrics["log_loss"] > 0
    assert metrics["rows_used"] == 569 and metrics["rows_validation"] == 143
    assert [c["count"] for c in metrics["class_balance"]] == [212, 357]
    assert metrics["noised"] is False and metrics["dp"] is None
    assert [p["phase"] for p in trained.answer["phases"]] == [
        "decrypting",
        "preparing",
        "training",
        "exporting",
        "evaluating",
        "encrypting",
    ]

    onnx_bytes = recipient_model(trained, alice)
    x_val, y_val = validation_rows(x, y, seed=7)
    labels, probabilities = onnx_labels(onnx_bytes, x_val)
    assert float(np.mean(labels == y_val)) == pytest.approx(metrics["accuracy"], abs=1e-12)
    assert probabilities.shape == (143, 2)

    receipt = verify_receipt(enclave, trained.reply)
    assert receipt["kind"] == "train" and receipt["spec_sha256"] == trained.answer["spec_sha256"]
    assert receipt["model_sha256"] == hashlib.sha256(onnx_bytes).hexdigest()
    assert receipt["model_blob_sha256"] == hashlib.sha256(trained.part("model_blob")).hexdigest()
    assert receipt["datasets"][0]["blob_sha256"] == owner.dataset.blob_sha256
    assert receipt["recipients"] == [alice.public_hex] and receipt["epsilon_spent"] is None
    assert (
        receipt["metrics_sha256"]
        == hashlib.sha256(
            json.dumps(metrics, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        ).hexdigest()
    )
    assert receipt["output_sha256"] == hashlib.sha256(trained.part("response")).hexdigest()


def test_published_model_serves_predictions_and_survives_a_restart(
    tmp_path: Path, cancer: tuple[np.ndarray, np.ndarray, Owner]
) -> None:
    x, _y, owner = cancer
    enclave = new_enclave(tmp_path)
    owner.provision(enclave)
    spec = job_spec(
        [owner.dataset_id],
        [Recipient()],
        algorithm="random_forest",
        params={"n_estimators": 20},
        publish=True,
        serving={"output_policy": {"mode": "label", "decimals": 2}, "query_budget": 100},
    )
    trained = approve_and_train(enclave, [owner], spec)
    assert trained.reply.header["layout"] == ["model_blob", "response", "model_config"]
    columns = trained.answer["feature_columns"]

    def predict(target, rows: np.ndarray) -> dict[str, np.ndarray]:
        request = seal_request(
            enclave_public_key=bytes.fromhex(target.info()["hpke_public_key"]),
            op="predict",
            model=spec["model"],
            payload=payload.pack({"columns": columns}, {"features": rows.astype(np.float32)}),
            rows=len(rows),
        )
        reply = target.handle(
            "predict", {"model": spec["model"], "client": "c", "job": "p"}, [request.envelope]
        )
        _meta, outputs = payload.unpack(
            open_response(
                reply.parts[0], response_key=request.response_key, request_id=request.header.request_id
            )
        )
        return outputs

    first = predict(enclave, x[:10])
    assert set(first) == {"label"}  # the serving policy from the spec applies

    restarted = new_enclave(tmp_path)  # same platform: the sealed model config unseals
    restarted.handle(
        "load",
        {"model": spec["model"], "usage": {}},
        [trained.part("model_config"), trained.part("model_blob")],
    )
    again = predict(restarted, x[:10])
    assert np.array_equal(first["label"], again["label"])


def test_csv_datasets_train_like_parquet(tmp_path: Path) -> None:
    owner = Owner.create("wisconsin-csv", breast_cancer_table(), content_type=CSV)
    enclave = new_enclave(tmp_path)
    _, provisioned = owner.provision(enclave)
    assert provisioned["content_type"] == "dataset/csv" and provisioned["rows"] == 569
    trained = approve_and_train(enclave, [owner], job_spec([owner.dataset_id], [Recipient()]))
    assert trained.answer["metrics"]["accuracy"] > 0.9


def test_real_heart_disease_data_trains_in_the_enclave(tmp_path: Path) -> None:
    heart = load_cleveland()
    owner = Owner.create("cleveland", heart.to_table())
    enclave = new_enclave(tmp_path)
    _, provisioned = owner.provision(enclave)
    assert provisioned["rows"] == 302  # deduplicated before encryption
    trained = approve_and_train(
        enclave,
        [owner],
        job_spec([owner.dataset_id], [Recipient()], label=HEART_LABEL, algorithm="logistic_regression"),
    )
    metrics = trained.answer["metrics"]
    assert metrics["rows_used"] == 302 and metrics["classes"] == [0, 1]
    assert metrics["accuracy"] > 0.7 and metrics["roc_auc"] > 0.75


def test_parity_check_refuses_an_onnx_model_that_disagrees(
    cancer: tuple[np.ndarray, np.ndarray, Owner],
) -> None:
    x, y, _owner = cancer
    x32 = x.astype(np.float32)
    columns = [f"f{i}" for i in range(x.shape[1])]
    strong = LogisticRegression(max_iter=5000).fit(x32, y)
    weak = LogisticRegression(C=1e-4, max_iter=5000).fit(x32[:100], y[:100])
    labels, probabilities = check_parity(export_onnx(strong, columns, [0, 1]), strong, x32)
    assert probabilities.shape == (len(y), 2) and set(np.unique(labels)) == {0, 1}
    with pytest.raises(ModelError) as caught:
        check_parity(export_onnx(weak, columns, [0, 1]), strong, x32)
    assert caught.value.code == "model.export_mismatch"
