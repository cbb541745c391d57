"""The whole confidential-inference path through the real HTTP server and enclave process."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from sealedml.client import ReceiptBundle, from_estimator
from sealedml.errors import ModelError


def test_full_flow_publish_attest_predict_verify(platform, cancer, unique) -> None:
    provider = platform.account(unique("provider"), "provider")
    owner = platform.account(unique("hospital"), "data_owner")
    with platform.client(provider) as prov:
        published = prov.publish_model(unique("cancer"), cancer.prepared)
    assert published.model.status == "ready"
    assert published.receipt.receipt["kind"] == "provision"

    with platform.client(owner) as client:
        result = client.attest()
        assert (
            result.claims.simulated and result.claims.measurement == platform.policy.reference_measurements[0]
        )
        prediction = client.predict(published.model.id, cancer.test)
        jobs = client.list_jobs()
    truth = cancer.test["target"].to_numpy()
    assert prediction.labels.shape == truth.shape
    assert (prediction.labels == truth).mean() > 0.9
    assert prediction.probabilities is not None and prediction.probabilities.shape == (len(truth), 2)
    assert np.allclose(prediction.probabilities.sum(axis=1), 1.0, atol=1e-3)
    assert [j["id"] for j in jobs] == [prediction.job_id]

    # The receipt stands on its own: re-verify it from its file form, as an auditor would.
    restored = ReceiptBundle.from_json(prediction.receipt.to_json())
    verified = restored.verify(platform.policy)
    assert restored.receipt["job"] == prediction.job_id
    assert restored.receipt["rows"] == len(truth)
    assert verified.signing_public_key.hex() == restored.receipt["enclave_key"]


def test_predictions_match_plain_onnxruntime(platform, cancer, unique) -> None:
    import onnxruntime as ort

    provider = platform.account(unique("provider"), "provider")
    owner = platform.account(unique("hospital"), "data_owner")
    with platform.client(provider) as prov:
        model_id = prov.publish_model(unique("cancer"), cancer.prepared).model.id
    with platform.client(owner) as client:
        prediction = client.predict(model_id, cancer.test)
    session = ort.InferenceSession(cancer.prepared.onnx_bytes, providers=["CPUExecutionProvider"])
    labels, probs = session.run(None, {"input": cancer.test[cancer.features].to_numpy(np.float32)})
    assert np.array_equal(prediction.labels, labels)
    assert np.allclose(prediction.probabilities, probs, atol=1e-6)


def test_output_policy_label_only_and_rounded(platform, cancer, unique) -> None:
    provider = platform.account(unique("provider"), "provider")
    owner = platform.account(unique("hospital"), "data_owner")
    with platform.client(provider) as prov:
        label_only = prov.publish_model(
            unique("lbl"), cancer.prepared, output_policy={"mode": "label"}
        ).model.id
        rounded = prov.publish_model(
            unique("rnd"), cancer.prepared, output_policy={"mode": "rounded", "decimals": 1}
        ).model.id
    with platform.client(owner) as client:
        only = client.predict(label_only, cancer.test)
        coarse = client.predict(rounded, cancer.test)
    assert only.probabilities is None
    assert coarse.probabilities is not None
    assert np.allclose(coarse.probabilities, np.round(coarse.probabilities, 1))


def test_query_budget_stops_extraction(platform, cancer, unique) -> None:
    provider = platform.account(unique("provider"), "provider")
    owner = platform.account(unique("hospital"), "data_owner")
    other = platform.account(unique("hospital"), "data_owner")
    with platform.client(provider) as prov:
        model_id = prov.publish_model(unique("budget"), cancer.prepared, query_budget=150).model.id
    rows = cancer.test.iloc[:100]
    with platform.client(owner) as client:
        client.predict(model_id, rows)
        with pytest.raises(ModelError) as info:
            client.predict(model_id, rows)
        assert info.value.code == "model.budget_exhausted"
        client.predict(model_id, rows.iloc[:50])  # exactly up to the budget is fine
    with platform.client(other) as client:  # budgets are per client
        client.predict(model_id, rows)


def _windows(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, max(len(data) - size + 1, 1), size)]


def test_platform_stores_no_plaintext(tmp_path: Path, cancer, new_platform) -> None:
    """Plant canaries in inputs, outputs and weights; after a full run, scan the DB and blobs."""
    for platform in new_platform(tmp_path / "data"):
        provider = platform.account("canary-provider", "provider")
        owner = platform.account("canary-hospital", "data_owner")
        with platform.client(provider) as prov:
            model_id = prov.publish_model("canary-model", cancer.prepared).model.id
        rows = cancer.test.copy()
        canary = 987654.3125  # exactly representable in float32
        rows[cancer.features[0]] = canary
        with platform.client(owner) as client:
            prediction = client.predict(model_id, rows)

    stored = b"".join(p.read_bytes() for p in sorted((tmp_path / "data").rglob("*")) if p.is_file())
    inputs = rows[cancer.features].to_numpy(np.float32).tobytes()
    outputs = (
        prediction.probabilities.astype(np.float32).tobytes() + prediction.labels.astype(np.int64).tobytes()
    )
    onnx_model = onnx.load_from_string(cancer.prepared.onnx_bytes)
    weights = b"".join(numpy_helper.to_array(t).tobytes() for t in onnx_model.graph.initializer)
    # skl2onnx keeps scaler and linear coefficients in node attributes.
    weights += b"".join(
        np.asarray(attr.floats, dtype=np.float32).tobytes()
        for node in onnx_model.graph.node
        for attr in node.attribute
        if len(attr.floats)
    )
    assert len(weights) > 200 and len(inputs) > 1000
    for name, secret in (("input", inputs), ("output", outputs), ("weights", weights)):
        leaked = [w for w in _windows(secret, 24) if len(set(w)) > 4 and w in stored]
        assert leaked == [], f"plaintext {name} bytes found in platform storage"
    assert np.float32(canary).tobytes() * 2 not in stored
    assert str(canary).encode() not in stored
    assert cancer.prepared.onnx_bytes[:64] not in stored


def test_sealed_keys_survive_enclave_restart(tmp_path: Path, cancer, new_platform) -> None:
    for platform in new_platform(tmp_path / "data"):
        provider = platform.account("restart-provider", "provider")
        owner = platform.account("restart-hospital", "data_owner")
        with platform.client(provider) as prov:
            model_id = prov.publish_model("restart-model", cancer.prepared).model.id
        with platform.client(owner) as client:
            before = client.attest()
            first = client.predict(model_id, cancer.test)
            supervisor = platform.server.app.state.service.enclave
            os.kill(supervisor.client.channel.pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while supervisor.client.channel.alive and time.monotonic() < deadline:
                time.sleep(0.05)
            # No re-provisioning: the platform reloads the sealed key into the new enclave, and
            # the SDK re-attests the new instance (new keys) before resending.
            second = client.predict(model_id, cancer.test)
            after = client.attest()
        assert after.hpke_public_key != before.hpke_public_key
        assert after.claims.measurement == before.claims.measurement
        assert np.array_equal(first.labels, second.labels)
        assert second.receipt.receipt["enclave_key"] == after.signing_public_key.hex()


def test_regression_model_and_numpy_input(platform, cancer, unique) -> None:
    from sklearn.datasets import load_diabetes
    from sklearn.linear_model import Ridge

    data = load_diabetes(as_frame=True)
    model = Ridge().fit(data.data, data.target)
    prepared = from_estimator(model)
    provider = platform.account(unique("provider"), "provider")
    owner = platform.account(unique("clinic"), "data_owner")
    with platform.client(provider) as prov:
        model_id = prov.publish_model(unique("diabetes"), prepared).model.id
    with platform.client(owner) as client:
        prediction = client.predict(model_id, data.data.to_numpy()[:20])
    assert np.allclose(prediction.labels, model.predict(data.data.iloc[:20]), rtol=1e-4, atol=1e-3)
