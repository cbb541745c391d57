"""Predictions and jobs: routing, replay, tenant isolation, enclave restarts, all-or-nothing storage."""

from __future__ import annotations

import base64

import httpx
import pytest

from sealedml.errors import InputError
from sealedml.platform.db import Job, ModelUsage


def _error(response: httpx.Response) -> str:
    return response.json()["error"]["code"]


def _count(env, table: type) -> int:
    with env.service.catalog.db.session() as session:
        return session.query(table).count()


def _results(env) -> list[str]:
    return [f for f in env.blob_files() if f.startswith("results/")]


@pytest.fixture
def model(env, provider: httpx.Client) -> dict:
    return env.ready_model(provider)


def test_predict_relays_and_records_the_job(env, owner: httpx.Client, model: dict) -> None:
    envelope = env.seal("predict", model["id"])
    response = owner.post(f"/v1/models/{model['id']}/predict", content=envelope)
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"job_id", "response", "receipt", "signature", "rows", "ledger"}
    assert base64.b64decode(body["response"]) == b"SML-opaque-response-" + body["job_id"].encode()
    assert body["rows"] == 3 and body["receipt"]["job"] == body["job_id"]

    job = owner.get(f"/v1/jobs/{body['job_id']}").json()
    assert job["status"] == "done" and job["model_id"] == model["id"] and job["rows"] == 3
    assert job["receipt"] == body["receipt"] and job["signature"] == body["signature"]
    assert [j["id"] for j in owner.get("/v1/jobs").json()] == [body["job_id"]]
    result = owner.get(f"/v1/jobs/{body['job_id']}/result").json()
    assert result == {"job_id": body["job_id"], "response": body["response"]}
    assert _results(env) == [f"results/{body['job_id']}.sml"]
    with env.service.catalog.db.session() as session:
        usage = session.query(ModelUsage).one()
        assert (usage.model_id, usage.rows) == (model["id"], 3)


def test_usage_accumulates(env, owner: httpx.Client, model: dict) -> None:
    for _ in range(3):
        assert owner.post(
            f"/v1/models/{model['id']}/predict", content=env.seal("predict", model["id"])
        ).is_success
    assert env.service.catalog.usage(model["id"]) == {owner.get("/v1/me").json()["id"]: 9}


def test_only_data_owners_predict(env, provider: httpx.Client, model: dict) -> None:
    response = provider.post(f"/v1/models/{model['id']}/predict", content=env.seal("predict", model["id"]))
    assert response.status_code == 403
    assert _error(response) == "auth.forbidden"


def test_request_must_match_op_and_model(
    env, provider: httpx.Client, owner: httpx.Client, model: dict
) -> None:
    other = env.ready_model(provider, "other-model")
    for envelope in (env.seal("provision", model["id"]), env.seal("predict", other["id"])):
        response = owner.post(f"/v1/models/{model['id']}/predict", content=envelope)
        assert response.status_code == 400
        assert _error(response) == "request.invalid"
    for garbage in (b"", b"hello", b"SML\x01\x01\x00\x00\x00\x02{}"):
        response = owner.post(f"/v1/models/{model['id']}/predict", content=garbage)
        assert response.status_code == 400
        assert _error(response).startswith("crypto.")
    assert env.fake.ops("predict") == 0
    assert _count(env, Job) == 0


def test_replayed_request_id_is_refused_before_the_enclave(env, owner: httpx.Client, model: dict) -> None:
    envelope = env.seal("predict", model["id"], request_id="fixed-request-id")
    assert owner.post(f"/v1/models/{model['id']}/predict", content=envelope).status_code == 200
    env.fake.restart()  # the enclave forgot what it saw: the platform still remembers
    again = owner.post(f"/v1/models/{model['id']}/predict", content=envelope)
    assert again.status_code == 409
    assert _error(again) == "request.replayed"
    assert env.fake.ops("predict") == 1
    assert _count(env, Job) == 1


def test_unprovisioned_model(env, provider: httpx.Client, owner: httpx.Client) -> None:
    model = env.create_model(provider)
    provider.put(f"/v1/models/{model['id']}/blob", content=env.encrypted_model())
    response = owner.post(f"/v1/models/{model['id']}/predict", content=env.seal("predict", model["id"]))
    assert response.status_code == 409
    assert _error(response) == "model.not_provisioned"
    missing = owner.post("/v1/models/nope/predict", content=env.seal("predict", "nope"))
    assert missing.status_code == 404
    assert _error(missing) == "not_found.model"


def test_oversized_request_is_refused(env, owner: httpx.Client, model: dict) -> None:
    big = b"\0" * (env.settings.max_request_bytes + 1)
    response = owner.post(f"/v1/models/{model['id']}/predict", content=big)
    assert response.status_code == 413
    assert _error(response) == "input.too_large"

    def stream():
        yield from (big[i : i + 1000] for i in range(0, len(big), 1000))

    response = owner.post(f"/v1/models/{model['id']}/predict", content=stream())
    assert response.status_code == 413
    assert env.fake.ops("predict") == 0


def test_enclave_rejection_stores_nothing(env, owner: httpx.Client, model: dict) -> None:
    env.fake.fail_next["predict"] = InputError("input.schema_mismatch", "columns do not match")
    response = owner.post(f"/v1/models/{model['id']}/predict", content=env.seal("predict", model["id"]))
    assert response.status_code == 422
    assert _error(response) == "input.schema_mismatch"
    assert _count(env, Job) == 0 and _count(env, ModelUsage) == 0
    assert _results(env) == []


def test_failed_job_commit_removes_the_result_file(
    env, owner: httpx.Client, model: dict, monkeypatch
) -> None:
    def broken(**_kwargs: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(env.service.catalog, "record_job", broken)
    response = owner.post(f"/v1/models/{model['id']}/predict", content=env.seal("predict", model["id"]))
    assert response.status_code == 500
    assert response.json() == {"error": {"code": "internal", "message": "internal server error"}}
    assert _results(env) == []


def test_enclave_restart_reloads_from_the_sealed_key(env, owner: httpx.Client, model: dict) -> None:
    owner_id = owner.get("/v1/me").json()["id"]
    assert owner.post(
        f"/v1/models/{model['id']}/predict", content=env.seal("predict", model["id"])
    ).is_success
    env.fake.restart()  # the platform has not noticed: the first predict gets model.not_provisioned
    response = owner.post(f"/v1/models/{model['id']}/predict", content=env.seal("predict", model["id"]))
    assert response.status_code == 200, response.text
    sealed_key = env.fake.loaded[model["id"]]
    assert env.fake.load_calls == [(model["id"], sealed_key, {owner_id: 3})]
    assert env.fake.ops("predict") == 3  # 1 + (failed + retried)
    assert response.json()["receipt"]["client"] == owner_id
    assert env.service.catalog.usage(model["id"]) == {owner_id: 6}


def test_new_enclave_instance_is_noticed_through_hello(env, owner: httpx.Client, model: dict) -> None:
    env.fake.restart()
    info = env.client().get("/v1/enclave")  # cached hello is still fresh...
    supervisor = env.service.enclave
    supervisor.invalidate()  # ...until it expires
    info = env.client().get("/v1/enclave").json()
    assert info["instance_id"] == env.fake.instance_id
    assert not supervisor.is_loaded(model["id"])
    response = owner.post(f"/v1/models/{model['id']}/predict", content=env.seal("predict", model["id"]))
    assert response.status_code == 200
    assert env.fake.ops("predict") == 1  # loaded first, no failed attempt
    assert len(env.fake.load_calls) == 1


def test_jobs_are_private(env, owner: httpx.Client, model: dict) -> None:
    job_id = owner.post(f"/v1/models/{model['id']}/predict", content=env.seal("predict", model["id"])).json()[
        "job_id"
    ]
    intruders = [env.account("hospital-b", "data_owner"), env.account("provider-b", "provider")]
    for client in intruders:
        assert client.get("/v1/jobs").json() == []
        for path in (f"/v1/jobs/{job_id}", f"/v1/jobs/{job_id}/result"):
            response = client.get(path)
            assert response.status_code == 404, path
            assert _error(response) == "not_found.job"
    assert owner.get("/v1/jobs/unknown").status_code == 404


def test_jobs_survive_model_deletion(env, provider: httpx.Client, owner: httpx.Client, model: dict) -> None:
    job_id = owner.post(f"/v1/models/{model['id']}/predict", content=env.seal("predict", model["id"])).json()[
        "job_id"
    ]
    assert provider.delete(f"/v1/models/{model['id']}").status_code == 204
    assert owner.get(f"/v1/jobs/{job_id}/result").status_code == 200
    assert env.service.catalog.usage(model["id"]) == {}


def test_job_listing_limit(env, owner: httpx.Client, model: dict) -> None:
    for _ in range(3):
        owner.post(f"/v1/models/{model['id']}/predict", content=env.seal("predict", model["id"]))
    assert len(owner.get("/v1/jobs", params={"limit": 2}).json()) == 2
    bad = owner.get("/v1/jobs", params={"limit": 0})
    assert bad.status_code == 422 and _error(bad) == "input.malformed"
