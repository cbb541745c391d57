"""System endpoints, error shapes, OpenAPI, settings, storage and the background server."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
from pathlib import Path

import httpx
import pytest

from sealedml.errors import EnclaveError, InputError
from sealedml.platform.server import BackgroundServer
from sealedml.platform.settings import Settings
from sealedml.platform.storage import Area, BlobStore


def _error(response: httpx.Response) -> str:
    return response.json()["error"]["code"]


# -- enclave identity and evidence -----------------------------------------------------------------


def test_enclave_info_is_public_and_cached(env) -> None:
    client = env.client()
    first = client.get("/v1/enclave")
    assert first.status_code == 200
    info = first.json()
    assert info == {
        "tee": "simulated",
        "simulated": True,
        "measurement": "ab" * 48,
        "hpke_public_key": env.fake.hpke_public_key.hex(),
        "signing_public_key": env.fake.signing_public_key.hex(),
        "instance_id": env.fake.instance_id,
        "protocol": 1,
    }
    assert client.get("/v1/enclave").json() == info
    assert env.fake.ops("hello") == 1


def test_attestation_relays_evidence_for_the_nonce(env) -> None:
    nonce = os.urandom(32).hex()
    response = env.client().get("/v1/attestation", params={"nonce": nonce})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert json.loads(response.content) == {"fake": True, "nonce": nonce}


@pytest.mark.parametrize("nonce", [None, "", "zz" * 16, "ab" * 15, "ab" * 65, "abc"])
def test_attestation_rejects_bad_nonces(env, nonce: str | None) -> None:
    params = {} if nonce is None else {"nonce": nonce}
    response = env.client().get("/v1/attestation", params=params)
    assert response.status_code == 400
    assert _error(response) == "input.malformed"
    assert env.fake.ops("evidence") == 0


def test_enclave_errors_keep_their_code(env) -> None:
    env.fake.fail_next["hello"] = EnclaveError("enclave.unavailable", "the enclave is not running")
    response = env.client().get("/v1/enclave")
    assert response.status_code == 503
    assert response.json() == {
        "error": {"code": "enclave.unavailable", "message": "the enclave is not running"}
    }
    assert env.client().get("/v1/enclave").status_code == 200  # next call asks again


def test_transport_failures_become_enclave_unavailable(env) -> None:
    env.fake.fail_next["evidence"] = BrokenPipeError("pipe closed")
    response = env.client().get("/v1/attestation", params={"nonce": "00" * 16})
    assert response.status_code == 503
    assert _error(response) == "enclave.unavailable"


def test_unexpected_errors_are_bare_500s(env, caplog: pytest.LogCaptureFixture) -> None:
    env.fake.fail_next["hello"] = RuntimeError("secret detail")
    response = env.client().get("/v1/enclave")
    assert response.status_code == 500
    assert response.json() == {"error": {"code": "internal", "message": "internal server error"}}
    assert "secret detail" not in response.text
    assert "unhandled error in GET /v1/enclave" in caplog.text


# -- HTTP surface ------------------------------------------------------------------------------------


def test_unknown_routes_and_methods_use_the_error_shape(env) -> None:
    missing = env.client().get("/v2/nothing")
    assert missing.status_code == 404 and _error(missing) == "not_found.route"
    wrong = env.client().delete("/healthz")
    assert wrong.status_code == 405 and _error(wrong) == "input.method_not_allowed"


def test_openapi_documents_the_api(env) -> None:
    spec = env.client().get("/openapi.json").json()
    assert spec["info"]["title"] == "SealedML platform"
    expected = {
        "/healthz": {"get"},
        "/v1/enclave": {"get"},
        "/v1/attestation": {"get"},
        "/v1/accounts": {"post"},
        "/v1/accounts/{account_id}/credits": {"post"},
        "/v1/me": {"get"},
        "/v1/models": {"get", "post"},
        "/v1/models/{model_id}": {"get", "delete", "patch"},
        "/v1/models/{model_id}/blob": {"put"},
        "/v1/models/{model_id}/provision": {"post"},
        "/v1/models/{model_id}/predict": {"post"},
        "/v1/jobs": {"get"},
        "/v1/jobs/{job_id}": {"get"},
        "/v1/jobs/{job_id}/result": {"get"},
        "/v1/market/models": {"get"},
        "/v1/market/models/{model_id}": {"get"},
        "/v1/market/datasets": {"get", "post"},
        "/v1/market/datasets/{dataset_id}": {"get"},
        "/v1/market/resources": {"get"},
        "/v1/market/report": {"get"},
        "/v1/ledger/public-key": {"get"},
        "/v1/ledger/sth": {"get"},
        "/v1/ledger/consistency": {"get"},
        "/v1/ledger/inclusion": {"get"},
        "/v1/ledger/entries/{index}": {"get"},
        "/v1/ledger/anchors": {"get"},
        "/v1/ledger/anchor": {"post"},
        "/v1/datasets": {"get", "post"},
        "/v1/datasets/{dataset_id}": {"get", "delete"},
        "/v1/datasets/{dataset_id}/blob": {"put"},
        "/v1/datasets/{dataset_id}/provision": {"post"},
        "/v1/datasets/{dataset_id}/offer": {"post"},
        "/v1/dataset-refs/{ref}": {"get"},
        "/v1/train": {"post"},
        "/v1/jobs/{job_id}/approvals/{dataset_id}": {"post"},
        "/v1/jobs/{job_id}/request": {"put"},
        "/v1/jobs/{job_id}/cancel": {"post"},
        "/v1/jobs/{job_id}/model": {"get"},
        "/v1/models/{model_id}/batch": {"post"},
        "/v1/he/context": {"put"},
        "/v1/he/contexts": {"get"},
        "/v1/he/contexts/{fingerprint}": {"get"},
        "/v1/models/{model_id}/he-model": {"put"},
        "/v1/models/{model_id}/he": {"get"},
        "/v1/models/{model_id}/he/predict": {"post"},
        "/v1/he/datasets": {"get", "put"},
        "/v1/he/datasets/{dataset_id}": {"delete"},
        "/v1/he/datasets/{dataset_id}/gradient": {"post"},
    }
    assert {path: set(ops) for path, ops in spec["paths"].items()} == expected
    predict = spec["paths"]["/v1/models/{model_id}/predict"]["post"]
    assert "application/octet-stream" in predict["requestBody"]["content"]
    assert predict["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("PredictOut")
    assert "ErrorBody" in spec["components"]["schemas"]
    assert {tag["name"] for tag in spec["tags"]} >= {
        "system",
        "accounts",
        "models",
        "predictions",
        "jobs",
        "market",
        "ledger",
    }
    assert env.client().get("/docs").status_code == 200


# -- settings ---------------------------------------------------------------------------------------


def test_settings_defaults(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    assert settings.db_url == f"sqlite:///{tmp_path}/sealedml.db"
    assert settings.max_model_bytes == 256 * 1024 * 1024
    assert settings.max_request_bytes == 64 * 1024 * 1024
    assert (settings.host, settings.port) == ("127.0.0.1", 8000)
    explicit = Settings(data_dir=tmp_path, db_url="postgresql+psycopg://u@db/sealedml")
    assert explicit.database_url == "postgresql+psycopg://u@db/sealedml"


def test_settings_from_env(tmp_path: Path) -> None:
    settings = Settings.from_env({"SEALEDML_DATA_DIR": str(tmp_path), "SEALEDML_PORT": "9001"})
    assert settings.data_dir == tmp_path and settings.port == 9001
    with pytest.raises(Exception, match="SEALEDML"):
        Settings.from_env({"SEALEDML_PORT": "eighty"})


# -- storage ----------------------------------------------------------------------------------------


async def _chunks(*parts: bytes):
    for part in parts:
        yield part


async def _failing_chunks():
    yield b"some ciphertext"
    raise InputError("input.malformed", "client went away")


def test_storage_streams_with_hash_and_limit(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    blob = asyncio.run(store.write_stream(Area.MODELS, "m1.sml", _chunks(b"abc", b"", b"def"), limit=6))
    assert blob.path == "models/m1.sml" and blob.size == 6
    assert blob.sha256 == hashlib.sha256(b"abcdef").hexdigest()
    assert store.read_bytes(blob.path) == b"abcdef"

    with pytest.raises(InputError) as excinfo:
        asyncio.run(store.write_stream(Area.MODELS, "m2.sml", _chunks(b"abc", b"defg"), limit=6))
    assert excinfo.value.code == "input.too_large"
    with pytest.raises(InputError):
        asyncio.run(store.write_stream(Area.MODELS, "m1.sml", _failing_chunks(), limit=100))
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["m1.sml"]
    assert store.read_bytes("models/m1.sml") == b"abcdef"  # the failed rewrite left it intact


def test_storage_write_bytes_replaces_and_cleans_up(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    store.write_bytes(Area.RESULTS, "j.sml", b"one")
    stored = store.write_bytes(Area.RESULTS, "j.sml", b"two", durable=True)
    assert store.read_bytes(stored.path) == b"two"
    (tmp_path / "results" / ".tmp-leftover").write_bytes(b"partial")
    BlobStore(tmp_path)  # a restart removes temporary files left by a crash
    assert [p.name for p in (tmp_path / "results").iterdir()] == ["j.sml"]
    store.delete(stored.path)
    store.delete(stored.path)
    assert not (tmp_path / "results" / "j.sml").exists()


@pytest.mark.parametrize("path", ["models/../x", "../etc/passwd", "other/x", "models/", "models/.hidden"])
def test_storage_refuses_paths_outside_the_store(tmp_path: Path, path: str) -> None:
    with pytest.raises(ValueError):
        BlobStore(tmp_path).resolve(path)


# -- background server ------------------------------------------------------------------------------


def test_background_server_binds_loopback_and_stops(env) -> None:
    url = env.server.url
    assert url.startswith("http://127.0.0.1:")
    from fastapi import FastAPI

    app = FastAPI()
    with BackgroundServer(app) as server:
        port = server.port
        assert httpx.get(server.url + "/openapi.json").status_code == 200
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0


def test_deeply_nested_or_huge_json_bodies_are_refused_before_parsing(env) -> None:
    """A JSON body nested 200,000 deep would overflow the decoder's C stack in a process whose
    recursion limit a library raised; the guard refuses it before any decoder runs."""
    import sys

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 100_000))  # as the chain libraries do on import
    try:
        admin = env.client(env.admin_token)
        deep = "[" * 200_000 + "]" * 200_000
        response = admin.post("/v1/accounts", content=deep, headers={"Content-Type": "application/json"})
        assert (response.status_code, response.json()["error"]["code"]) == (400, "input.malformed")
        assert "nests deeper" in response.json()["error"]["message"]
        huge = '{"name": "' + "a" * (1024 * 1024) + '", "role": "provider"}'
        response = admin.post("/v1/accounts", content=huge, headers={"Content-Type": "application/json"})
        assert (response.status_code, response.json()["error"]["code"]) == (413, "input.too_large")
        ok = admin.post("/v1/accounts", json={"name": "still-works", "role": "provider"})
        assert ok.status_code == 201
    finally:
        sys.setrecursionlimit(limit)
