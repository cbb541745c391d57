"""The platform against the REAL simulated enclave process (``launch_simulated``), not the fake."""

from __future__ import annotations

import base64
import hashlib
import os
import signal
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from sealedml.attestation.evidence.bundle import EvidenceBundle
from sealedml.attestation.measurement import compute_measurement
from sealedml.attestation.policy import AppraisalPolicy
from sealedml.client import SealedMLClient, from_estimator
from sealedml.crypto.request import open_response, seal_request
from sealedml.enclave import payload
from sealedml.platform.app import create_app
from sealedml.platform.db import Job
from sealedml.platform.launch import platform_in_background
from sealedml.platform.server import BackgroundServer
from sealedml.platform.settings import Settings
from sealedml.tee.simulated import launch_simulated

COLUMNS = ["f0", "f1", "f2", "f3"]


def _policy(url: str) -> AppraisalPolicy:
    with SealedMLClient(url) as anonymous:
        root = hashlib.sha256(anonymous.fetch_evidence(os.urandom(32)).certificates[-1]).hexdigest()
    return AppraisalPolicy(
        allow_simulated=True,
        reference_measurements=(compute_measurement(),),
        max_evidence_age_seconds=300,
        simulated_roots=(root,),
    )


def _publish(url: str, admin_token: str) -> tuple[str, str, AppraisalPolicy]:
    import pandas as pd
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = pd.DataFrame(rng.normal(size=(200, 4)).astype(np.float32), columns=COLUMNS)
    y = (x["f0"] + x["f1"] > 0).astype(int)
    prepared = from_estimator(LogisticRegression().fit(x, y))
    with SealedMLClient(url, admin_token) as admin:
        provider = admin.create_account("sim-provider", "provider")["token"]
        owner = admin.create_account("sim-hospital", "data_owner")["token"]
    policy = _policy(url)
    with SealedMLClient(url, provider, policy=policy) as client:
        model_id = client.publish_model("sim-model", prepared).model.id
    return model_id, owner, policy


@pytest.fixture
def real(tmp_path: Path):
    settings = Settings(data_dir=tmp_path / "data", max_request_bytes=1024 * 1024)
    enclave = launch_simulated(tmp_path / "data" / "platform", workers=2)
    try:
        app = create_app(settings, enclave)
        with BackgroundServer(app) as server:
            yield server, settings
    finally:
        enclave.close()


def test_real_enclave_identity_and_evidence(real) -> None:
    server, _settings = real
    with httpx.Client(base_url=server.url) as http:
        info = http.get("/v1/enclave").json()
        assert info["simulated"] is True and info["tee"] == "simulated"
        assert info["measurement"] == compute_measurement()
        assert len(bytes.fromhex(info["hpke_public_key"])) == 32
        assert len(bytes.fromhex(info["signing_public_key"])) == 32
        nonce = os.urandom(32)
        response = http.get("/v1/attestation", params={"nonce": nonce.hex()})
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        bundle = EvidenceBundle.from_json(response.content)
        assert bundle.certificates  # a chain to the simulated root


def test_real_enclave_predict_replay_and_rejection(real) -> None:
    server, settings = real
    admin_token = settings.admin_token_path.read_text().strip()
    model_id, owner_token, _ = _publish(server.url, admin_token)
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {owner_token}"}) as http:
        info = http.get("/v1/enclave").json()
        features = np.array([[1.0, 1.0, 0.0, 0.0], [-1.0, -1.0, 0.0, 0.0]], dtype=np.float32)
        body = payload.pack({"columns": COLUMNS}, {"features": features})
        sealed = seal_request(
            enclave_public_key=bytes.fromhex(info["hpke_public_key"]),
            op="predict",
            model=model_id,
            payload=body,
            rows=2,
        )
        response = http.post(f"/v1/models/{model_id}/predict", content=sealed.envelope)
        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer["rows"] == 2 and answer["receipt"]["job"] == answer["job_id"]
        plain = open_response(
            base64.b64decode(answer["response"]),
            response_key=sealed.response_key,
            request_id=sealed.header.request_id,
        )
        _meta, outputs = payload.unpack(plain)
        assert list(np.asarray(next(iter(outputs.values()))).ravel()) == [1, 0]
        stored = http.get(f"/v1/jobs/{answer['job_id']}/result").json()
        assert stored["response"] == answer["response"]

        replay = http.post(f"/v1/models/{model_id}/predict", content=sealed.envelope)
        assert replay.status_code == 409
        assert replay.json()["error"]["code"] == "request.replayed"

        wrong_columns = seal_request(
            enclave_public_key=bytes.fromhex(info["hpke_public_key"]),
            op="predict",
            model=model_id,
            payload=payload.pack({"columns": ["x", "y", "z", "w"]}, {"features": features}),
            rows=2,
        )
        rejected = http.post(f"/v1/models/{model_id}/predict", content=wrong_columns.envelope)
        assert rejected.status_code == 422
        assert rejected.json()["error"]["code"] == "input.schema_mismatch"
    service = server.app.state.service
    with service.catalog.db.session() as session:
        assert session.query(Job).count() == 1
    assert len(list((settings.blob_dir / "results").iterdir())) == 1


def test_dead_enclave_is_relaunched_and_models_reload(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    with platform_in_background(settings, workers=1) as server:
        model_id, owner_token, policy = _publish(server.url, settings.admin_token_path.read_text().strip())
        supervisor = server.app.state.service.enclave
        with httpx.Client(base_url=server.url) as http:
            before = http.get("/v1/enclave").json()
            os.kill(supervisor.client.channel.pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while supervisor.client.channel.alive and time.monotonic() < deadline:
                time.sleep(0.05)
            after = http.get("/v1/enclave").json()
        assert after["instance_id"] != before["instance_id"]
        assert after["measurement"] == before["measurement"]
        with SealedMLClient(server.url, owner_token, policy=policy) as client:
            prediction = client.predict(model_id, np.zeros((3, 4), dtype=np.float32))
        assert len(prediction.labels) == 3
        assert supervisor.is_loaded(model_id)  # re-loaded from the stored sealed key
