"""Models: registration, visibility, encrypted uploads, key provisioning and deletion."""

from __future__ import annotations

import base64
import hashlib

import httpx
import pytest

from sealedml.crypto.stream import encrypt_bytes, new_data_key
from sealedml.errors import CryptoError
from sealedml.platform.db import Model


def _row(env, model_id: str) -> dict:
    with env.service.catalog.db.session() as session:
        row = session.get(Model, model_id)
        assert row is not None
        return {c.name: getattr(row, c.name) for c in Model.__table__.columns}


def _error(response: httpx.Response) -> str:
    return response.json()["error"]["code"]


# -- registration -----------------------------------------------------------------------------------


def test_provider_registers_a_model(env, provider: httpx.Client) -> None:
    response = provider.post(
        "/v1/models",
        json={
            "name": "cancer.screen-v1_0",
            "description": "logistic regression",
            "input_columns": ["radius", "texture"],
            "output_policy": {"mode": "rounded", "decimals": 3},
        },
    )
    assert response.status_code == 201, response.text
    model = response.json()
    assert model["status"] == "created"
    assert model["input_columns"] == ["radius", "texture"]
    assert model["output_policy"] == {"mode": "rounded", "decimals": 3}
    assert model["blob_sha256"] is None and model["model_sha256"] is None
    assert "sealed_key" not in model and "blob_path" not in model
    assert provider.get(f"/v1/models/{model['id']}").json() == model


def test_only_providers_register_models(env, owner: httpx.Client) -> None:
    response = owner.post("/v1/models", json={"name": "m", "input_columns": ["a"]})
    assert response.status_code == 403
    assert _error(response) == "auth.forbidden"


@pytest.mark.parametrize(
    "body",
    [
        {"name": "bad name", "input_columns": ["a"]},
        {"name": "", "input_columns": ["a"]},
        {"name": "x" * 129, "input_columns": ["a"]},
        {"name": "m", "input_columns": []},
        {"name": "m", "input_columns": ["a", "a"]},
        {"name": "m", "input_columns": [""]},
        {"name": "m", "input_columns": ["a"], "output_policy": {"mode": "raw"}},
        {"name": "m", "input_columns": ["a"], "output_policy": {"mode": "rounded", "decimals": 9}},
        {"name": "m"},
    ],
)
def test_model_registration_is_validated(env, provider: httpx.Client, body: dict) -> None:
    response = provider.post("/v1/models", json=body)
    assert response.status_code == 422, response.text
    assert _error(response) == "input.malformed"


def test_column_limit(env, provider: httpx.Client) -> None:
    response = provider.post(
        "/v1/models", json={"name": "wide", "input_columns": [f"c{i}" for i in range(100_001)]}
    )
    assert response.status_code == 422
    assert _error(response) == "input.malformed"


def test_model_names_are_unique(env, provider: httpx.Client) -> None:
    env.create_model(provider, "same")
    other = env.account("provider-b", "provider")
    response = other.post("/v1/models", json={"name": "same", "input_columns": ["a"]})
    assert response.status_code == 409
    assert _error(response) == "input.conflict"


# -- visibility and ownership -----------------------------------------------------------------------


def test_unready_models_are_invisible_to_others(env, provider: httpx.Client, owner: httpx.Client) -> None:
    model = env.create_model(provider)
    other = env.account("provider-b", "provider")
    for client in (other, owner):
        assert client.get("/v1/models").json() == []
        response = client.get(f"/v1/models/{model['id']}")
        assert response.status_code == 404
        assert _error(response) == "not_found.model"
    blob = env.encrypted_model()
    for method, path, content in (
        ("PUT", f"/v1/models/{model['id']}/blob", blob),
        ("POST", f"/v1/models/{model['id']}/provision", env.seal("provision", model["id"])),
        ("DELETE", f"/v1/models/{model['id']}", None),
    ):
        response = other.request(method, path, content=content)
        assert response.status_code == 404, (method, path)
        assert _error(response) == "not_found.model"
    assert _row(env, model["id"])["status"] == "created"
    assert [m["id"] for m in provider.get("/v1/models").json()] == [model["id"]]


def test_ready_models_are_public_but_only_the_owner_changes_them(
    env, provider: httpx.Client, owner: httpx.Client
) -> None:
    model = env.ready_model(provider)
    other = env.account("provider-b", "provider")
    for client in (other, owner):
        assert [m["id"] for m in client.get("/v1/models").json()] == [model["id"]]
        assert client.get(f"/v1/models/{model['id']}").json()["status"] == "ready"
    for method, path, content in (
        ("PUT", f"/v1/models/{model['id']}/blob", env.encrypted_model()),
        ("POST", f"/v1/models/{model['id']}/provision", env.seal("provision", model["id"])),
        ("DELETE", f"/v1/models/{model['id']}", None),
    ):
        response = other.request(method, path, content=content)
        assert response.status_code == 403, (method, path)
        assert _error(response) == "auth.forbidden"
    assert owner.delete(f"/v1/models/{model['id']}").status_code == 403
    row = _row(env, model["id"])
    assert row["status"] == "ready" and row["sealed_key"] is not None


def test_unknown_model(env, provider: httpx.Client) -> None:
    response = provider.get("/v1/models/does-not-exist")
    assert response.status_code == 404
    assert _error(response) == "not_found.model"


# -- uploads ----------------------------------------------------------------------------------------


def test_upload_stores_the_ciphertext(env, provider: httpx.Client) -> None:
    model = env.create_model(provider)
    blob = env.encrypted_model()
    response = provider.put(
        f"/v1/models/{model['id']}/blob", content=blob, headers={"content-type": "application/octet-stream"}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "uploaded"
    assert body["blob_sha256"] == hashlib.sha256(blob).hexdigest()
    assert body["blob_size"] == len(blob)
    row = _row(env, model["id"])
    stored = env.settings.blob_dir / row["blob_path"]
    assert stored.read_bytes() == blob
    assert env.blob_files() == [row["blob_path"]]


def test_upload_can_be_chunked_without_content_length(env, provider: httpx.Client) -> None:
    model = env.create_model(provider)
    blob = env.encrypted_model(b"x" * 20_000)

    def pieces():
        for i in range(0, len(blob), 7):  # split inside the envelope header too
            yield blob[i : i + 7]

    response = provider.put(f"/v1/models/{model['id']}/blob", content=pieces())
    assert response.status_code == 200, response.text
    assert response.json()["blob_sha256"] == hashlib.sha256(blob).hexdigest()


def test_oversized_upload_is_refused_and_nothing_is_stored(env, provider: httpx.Client) -> None:
    model = env.create_model(provider)
    before_row, before_files = _row(env, model["id"]), env.blob_files()
    big = env.encrypted_model(b"y" * (env.settings.max_model_bytes + 1))
    response = provider.put(f"/v1/models/{model['id']}/blob", content=big)
    assert response.status_code == 413
    assert _error(response) == "input.too_large"

    def stream():  # no Content-Length: the limit is enforced while streaming
        for i in range(0, len(big), 4096):
            yield big[i : i + 4096]

    response = provider.put(f"/v1/models/{model['id']}/blob", content=stream())
    assert response.status_code == 413
    assert _error(response) == "input.too_large"
    assert _row(env, model["id"]) == before_row
    assert env.blob_files() == before_files == []
    assert not [p for p in env.settings.blob_dir.rglob("*") if p.name.startswith(".tmp")]


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"PK\x03\x04 definitely a plaintext onnx or zip file",
        b"SML",
        encrypt_bytes(new_data_key(), b"a,b\n1,2\n", content_type="text/csv"),
    ],
)
def test_non_envelope_upload_is_malformed(env, provider: httpx.Client, content: bytes) -> None:
    model = env.create_model(provider)
    response = provider.put(f"/v1/models/{model['id']}/blob", content=content)
    assert response.status_code == 400, response.text
    assert _error(response) == "crypto.malformed"
    assert _row(env, model["id"])["status"] == "created"
    assert env.blob_files() == []


def test_reupload_replaces_atomically_and_resets_the_key(env, provider: httpx.Client) -> None:
    model = env.ready_model(provider)
    old = _row(env, model["id"])
    assert old["status"] == "ready" and old["sealed_key"] is not None
    new_blob = env.encrypted_model(b"a better model" * 50)
    response = provider.put(f"/v1/models/{model['id']}/blob", content=new_blob)
    assert response.status_code == 200
    assert response.json()["status"] == "uploaded"
    row = _row(env, model["id"])
    assert row["sealed_key"] is None and row["model_sha256"] is None and row["measurement"] is None
    assert row["blob_sha256"] == hashlib.sha256(new_blob).hexdigest()
    assert env.blob_files() == [row["blob_path"]]  # the old ciphertext is gone
    assert ("unload", model["id"]) in env.fake.calls
    assert model["id"] not in env.fake.loaded


def test_data_owner_cannot_upload(env, provider: httpx.Client, owner: httpx.Client) -> None:
    model = env.create_model(provider)
    response = owner.put(f"/v1/models/{model['id']}/blob", content=env.encrypted_model())
    assert response.status_code == 403


# -- provisioning -----------------------------------------------------------------------------------


def test_provision_stores_the_sealed_key(env, provider: httpx.Client) -> None:
    model = env.create_model(provider)
    provider.put(f"/v1/models/{model['id']}/blob", content=env.encrypted_model())
    response = provider.post(
        f"/v1/models/{model['id']}/provision", content=env.seal("provision", model["id"])
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"model", "response", "receipt", "signature", "ledger"}
    assert base64.b64decode(body["response"]) == b"provision-response"
    assert body["model"]["status"] == "ready"
    assert body["model"]["model_sha256"] == "cd" * 32
    assert body["model"]["measurement"] == "ab" * 48
    row = _row(env, model["id"])
    assert row["sealed_key"] == env.fake.loaded[model["id"]]


def test_provision_request_must_match_op_and_model(env, provider: httpx.Client) -> None:
    model = env.create_model(provider)
    other = env.create_model(provider, "other")
    provider.put(f"/v1/models/{model['id']}/blob", content=env.encrypted_model())
    for envelope in (env.seal("predict", model["id"]), env.seal("provision", other["id"])):
        response = provider.post(f"/v1/models/{model['id']}/provision", content=envelope)
        assert response.status_code == 400
        assert _error(response) == "request.invalid"
    garbage = provider.post(f"/v1/models/{model['id']}/provision", content=b"not an envelope")
    assert garbage.status_code == 400
    assert _error(garbage) == "crypto.malformed"
    assert env.fake.ops("provision") == 0
    assert _row(env, model["id"])["status"] == "uploaded"


def test_provision_needs_an_uploaded_blob(env, provider: httpx.Client) -> None:
    model = env.create_model(provider)
    response = provider.post(
        f"/v1/models/{model['id']}/provision", content=env.seal("provision", model["id"])
    )
    assert response.status_code == 409
    assert _error(response) == "model.not_uploaded"


def test_failed_provision_changes_nothing(env, provider: httpx.Client) -> None:
    model = env.create_model(provider)
    provider.put(f"/v1/models/{model['id']}/blob", content=env.encrypted_model())
    before = _row(env, model["id"])
    env.fake.fail_next["provision"] = CryptoError("crypto.auth_failed", "request failed authentication")
    response = provider.post(
        f"/v1/models/{model['id']}/provision", content=env.seal("provision", model["id"])
    )
    assert response.status_code == 400
    assert _error(response) == "crypto.auth_failed"
    assert _row(env, model["id"]) == before


def test_provision_request_size_is_limited(env, provider: httpx.Client) -> None:
    model = env.create_model(provider)
    response = provider.post(
        f"/v1/models/{model['id']}/provision", content=b"\0" * (env.settings.max_request_bytes + 1)
    )
    assert response.status_code == 413
    assert _error(response) == "input.too_large"


# -- deletion ---------------------------------------------------------------------------------------


def test_owner_deletes_model_blob_and_enclave_copy(env, provider: httpx.Client) -> None:
    model = env.ready_model(provider)
    response = provider.delete(f"/v1/models/{model['id']}")
    assert response.status_code == 204
    assert response.content == b""
    assert provider.get(f"/v1/models/{model['id']}").status_code == 404
    assert env.blob_files() == []
    assert ("unload", model["id"]) in env.fake.calls
    assert model["id"] not in env.fake.loaded
    assert (
        provider.post("/v1/models", json={"name": model["name"], "input_columns": ["a"]}).status_code == 201
    )
