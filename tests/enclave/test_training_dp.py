"""Differentially private training (diffprivlib) and the per-dataset privacy budget."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from enclave.test_training_kit import (
    CANCER_LABEL,
    Owner,
    Recipient,
    approve_and_train,
    breast_cancer_table,
    declared_bounds,
    digest_of,
    job_spec,
    new_enclave,
    onnx_labels,
    recipient_model,
    train,
    verify_receipt,
)
from sealedml.crypto.sealing import unseal
from sealedml.enclave.platforms import SimulatedTEE
from sealedml.errors import InputError, RequestError


@pytest.fixture(scope="module")
def cancer_owner() -> tuple[Owner, dict[str, list[float]]]:
    table = breast_cancer_table()
    return Owner.create("wisconsin", table), declared_bounds(table, CANCER_LABEL)


def dp_spec(
    owner: Owner,
    bounds: dict[str, list[float]],
    epsilon: float,
    recipient: Recipient | None = None,
    **fields: object,
) -> dict[str, object]:
    return job_spec(
        [owner.dataset_id],
        [recipient or Recipient()],
        dp_epsilon=epsilon,
        feature_bounds=bounds,
        classes=[0, 1],
        **fields,
    )


def sealed_state(tmp_path: Path, blob: bytes, dataset_id: str) -> dict[str, object]:
    platform = SimulatedTEE.open(tmp_path)
    raw = unseal(
        platform_secret=platform.sealing_secret,
        measurement="ab" * 48,
        label=f"dataset:{dataset_id}",
        blob=blob,
    )
    return json.loads(raw)


def test_dp_training_gives_a_model_noised_metrics_and_a_receipt_with_epsilon(
    tmp_path: Path, cancer_owner: tuple[Owner, dict[str, list[float]]]
) -> None:
    owner, bounds = cancer_owner
    enclave = new_enclave(tmp_path)
    owner.provision(enclave, epsilon_total=3.0)
    alice = Recipient()
    spec = dp_spec(owner, bounds, 1.0, alice)
    trained = approve_and_train(enclave, [owner], spec)

    metrics = trained.answer["metrics"]
    assert metrics["noised"] is True and metrics["roc_auc"] is None
    assert metrics["dp"] == {
        "epsilon": 1.0,
        "training_epsilon": pytest.approx(0.8),
        "metrics_epsilon": pytest.approx(0.2),
        "accounted_epsilon": pytest.approx(1.0),
    }
    assert 0.0 <= metrics["accuracy"] <= 1.0 and metrics["log_loss"] >= 0.0
    assert metrics["rows_used"] == metrics["rows_train"] + metrics["rows_validation"]
    assert all(c["count"] >= 0 for c in metrics["class_balance"])

    onnx_bytes = recipient_model(trained, alice)  # a real model the recipient can run
    table = breast_cancer_table()
    x = np.column_stack([table.column(n).to_numpy() for n in table.column_names if n != CANCER_LABEL])
    labels, probabilities = onnx_labels(onnx_bytes, x)
    assert set(np.unique(labels)) <= {0, 1} and np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)

    receipt = verify_receipt(enclave, trained.reply)
    assert receipt["epsilon_spent"] == 1.0
    assert receipt["datasets"] == [
        {
            "dataset": owner.dataset_id,
            "generation": 1,
            "epsilon_spent": 1.0,
            "epsilon_total": 3.0,
            "epsilon_remaining": 2.0,
            "blob_sha256": owner.dataset.blob_sha256,
        }
    ]
    assert trained.reply.header["layout"] == ["model_blob", "response", f"dataset_state:{owner.dataset_id}"]
    state = sealed_state(tmp_path, trained.part(f"dataset_state:{owner.dataset_id}"), owner.dataset_id)
    assert state["epsilon_spent"] == 1.0 and state["generation"] == 1


@pytest.mark.parametrize(
    ("algorithm", "params"), [("random_forest", {"n_estimators": 10}), ("naive_bayes", {})]
)
def test_other_private_algorithms_export_and_spend_exactly_their_epsilon(
    tmp_path: Path, cancer_owner: tuple[Owner, dict[str, list[float]]], algorithm: str, params: dict
) -> None:
    owner, bounds = cancer_owner
    enclave = new_enclave(tmp_path)
    owner.provision(enclave)
    trained = approve_and_train(
        enclave, [owner], dp_spec(owner, bounds, 2.0, algorithm=algorithm, params=params)
    )
    assert trained.answer["metrics"]["dp"]["accounted_epsilon"] == pytest.approx(2.0)
    assert trained.answer["datasets"][0]["epsilon_spent"] == 2.0
    assert trained.answer["datasets"][0]["epsilon_remaining"] is None  # no budget declared


def test_the_budget_refuses_an_overspending_job_and_the_refusal_changes_nothing(
    tmp_path: Path, cancer_owner: tuple[Owner, dict[str, list[float]]]
) -> None:
    owner, bounds = cancer_owner
    enclave = new_enclave(tmp_path)
    provisioned, _ = owner.provision(enclave, epsilon_total=1.5)
    first = approve_and_train(enclave, [owner], dp_spec(owner, bounds, 1.0))
    after_first = first.part(f"dataset_state:{owner.dataset_id}")

    greedy = dp_spec(owner, bounds, 1.0)
    owner.approve(enclave, digest_of(greedy))
    with pytest.raises(InputError) as caught:
        train(enclave, greedy, [owner.dataset.blob])
    assert caught.value.code == "input.privacy_budget_exhausted"
    assert "0.5 of 1.5 left" in caught.value.message

    # Nothing moved: the enclave still holds exactly the state sealed after the first job...
    loaded = enclave.handle("load_dataset", {"dataset": owner.dataset_id}, [after_first, owner.dataset.blob])
    assert loaded.header["generation"] == 1 and loaded.header["epsilon_remaining"] == pytest.approx(0.5)
    # ...an older sealed state is refused as a rollback...
    with pytest.raises(RequestError) as stale:
        enclave.handle(
            "load_dataset", {"dataset": owner.dataset_id}, [provisioned.parts[0], owner.dataset.blob]
        )
    assert stale.value.code == "request.stale_state"
    # ...and the refused job's approval was not consumed: resubmitted, it meets the budget again.
    with pytest.raises(InputError) as again:
        train(enclave, greedy, [owner.dataset.blob])
    assert again.value.code == "input.privacy_budget_exhausted"
    fitting = dp_spec(owner, bounds, 0.5)
    second = approve_and_train(enclave, [owner], fitting)
    assert second.answer["datasets"][0]["epsilon_remaining"] == pytest.approx(0.0)
    with pytest.raises(InputError) as empty:
        approve_and_train(enclave, [owner], dp_spec(owner, bounds, 0.01))
    assert empty.value.code == "input.privacy_budget_exhausted"


def test_a_budgeted_dataset_accepts_only_dp_jobs(
    tmp_path: Path, cancer_owner: tuple[Owner, dict[str, list[float]]]
) -> None:
    owner, _bounds = cancer_owner
    enclave = new_enclave(tmp_path)
    owner.provision(enclave, epsilon_total=5.0)
    with pytest.raises(InputError) as caught:
        approve_and_train(enclave, [owner], job_spec([owner.dataset_id], [Recipient()]))
    assert caught.value.code == "input.dp_required"


def test_the_spent_budget_survives_a_restart_through_the_sealed_state(
    tmp_path: Path, cancer_owner: tuple[Owner, dict[str, list[float]]]
) -> None:
    owner, bounds = cancer_owner
    enclave = new_enclave(tmp_path)
    owner.provision(enclave, epsilon_total=1.0)
    done = approve_and_train(enclave, [owner], dp_spec(owner, bounds, 0.75))
    latest = done.part(f"dataset_state:{owner.dataset_id}")

    restarted = new_enclave(tmp_path)
    reply = restarted.handle("load_dataset", {"dataset": owner.dataset_id}, [latest, owner.dataset.blob])
    assert reply.header["epsilon_spent"] == 0.75
    with pytest.raises(InputError) as caught:
        approve_and_train(restarted, [owner], dp_spec(owner, bounds, 0.5))
    assert caught.value.code == "input.privacy_budget_exhausted"
    approve_and_train(restarted, [owner], dp_spec(owner, bounds, 0.25))
