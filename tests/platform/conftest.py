"""Platform test fixtures: a real HTTP server (BackgroundServer) over a FakeEnclave.

``FakeEnclave`` is a TEST-ONLY stand-in for ``EnclaveClient`` used by routing and permission
tests: it implements the same async methods and returns the real result dataclasses, but opens
nothing and computes nothing (responses are fixed opaque bytes). Tests that need the real enclave
use ``launch_simulated`` (test_platform_simulated.py). Everything is reached through fixtures
because the suite runs with ``--import-mode=importlib``.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from sealedml.crypto.request import peek_request, seal_request
from sealedml.crypto.stream import encrypt_bytes, new_data_key
from sealedml.errors import ModelError, RequestError
from sealedml.platform.app import create_app
from sealedml.platform.server import BackgroundServer
from sealedml.platform.settings import Settings
from sealedml.tee.client import EnclaveInfo, PredictResult, ProvisionResult

MEASUREMENT = "ab" * 48


@dataclass
class FakeEnclave:
    """Records every call; ``fail_next[op]`` makes the next call of ``op`` raise that error."""

    hpke_public_key: bytes = field(default_factory=lambda: os.urandom(32))
    signing_public_key: bytes = field(default_factory=lambda: os.urandom(32))
    instance_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    loaded: dict[str, bytes] = field(default_factory=dict)
    usage: dict[tuple[str, str], int] = field(default_factory=dict)
    seen_requests: set[str] = field(default_factory=set)
    calls: list[tuple[str, str]] = field(default_factory=list)
    load_calls: list[tuple[str, bytes, dict[str, int]]] = field(default_factory=list)
    fail_next: dict[str, BaseException] = field(default_factory=dict)
    closed: bool = False

    def restart(self) -> None:
        """Simulate an enclave restart: new instance, nothing loaded, replay memory lost."""
        self.instance_id = uuid.uuid4().hex
        self.loaded.clear()
        self.seen_requests.clear()

    def _enter(self, op: str, model: str = "") -> None:
        self.calls.append((op, model))
        error = self.fail_next.pop(op, None)
        if error is not None:
            raise error

    def ops(self, op: str) -> int:
        return sum(1 for name, _ in self.calls if name == op)

    async def hello(self) -> EnclaveInfo:
        self._enter("hello")
        return EnclaveInfo(
            tee="simulated",
            simulated=True,
            measurement=MEASUREMENT,
            hpke_public_key=self.hpke_public_key,
            signing_public_key=self.signing_public_key,
            instance_id=self.instance_id,
            protocol=1,
        )

    async def evidence(self, nonce: bytes) -> bytes:
        self._enter("evidence")
        return json.dumps({"fake": True, "nonce": nonce.hex()}).encode()

    async def provision(self, model_id: str, client: str, request: bytes, blob: bytes) -> ProvisionResult:
        self._enter("provision", model_id)
        header = peek_request(request)
        sealed = b"SEALED-" + hashlib.sha256(blob).digest()
        self.loaded[model_id] = sealed
        receipt = {
            "kind": "provision",
            "model": model_id,
            "request_id": header.request_id,
            "measurement": MEASUREMENT,
        }
        return ProvisionResult(
            sealed_key=sealed,
            response=b"provision-response",
            model_sha256="cd" * 32,
            receipt=receipt,
            signature="ee" * 64,
        )

    async def load(self, model_id: str, sealed_key: bytes, blob: bytes, usage: dict[str, int]) -> None:
        self._enter("load", model_id)
        self.load_calls.append((model_id, sealed_key, dict(usage)))
        if sealed_key != b"SEALED-" + hashlib.sha256(blob).digest():
            raise ModelError("model.key_mismatch", "sealed key does not match the blob")
        self.loaded[model_id] = sealed_key
        for client, rows in usage.items():
            self.usage[(model_id, client)] = rows

    async def predict(self, model_id: str, client: str, job_id: str, request: bytes) -> PredictResult:
        self._enter("predict", model_id)
        if model_id not in self.loaded:
            raise ModelError("model.not_provisioned", "model is not loaded in this enclave")
        header = peek_request(request)
        if header.request_id in self.seen_requests:
            raise RequestError("request.replayed", "seen before")
        self.seen_requests.add(header.request_id)
        rows = header.rows if header.rows is not None else 3
        total = self.usage.get((model_id, client), 0) + rows
        self.usage[(model_id, client)] = total
        receipt = {"kind": "predict", "job": job_id, "model": model_id, "rows": rows, "client": client}
        return PredictResult(
            response=b"SML-opaque-response-" + job_id.encode(),
            receipt=receipt,
            signature="ff" * 64,
            rows=rows,
            usage=total,
        )

    async def unload(self, model_id: str) -> None:
        self._enter("unload", model_id)
        if self.loaded.pop(model_id, None) is None:
            raise ModelError("model.not_provisioned", "not loaded")

    def close(self) -> None:
        self.closed = True


MODEL_PLAINTEXT = b"pretend-onnx-model-bytes" * 100


@dataclass
class Env:
    settings: Settings
    fake: FakeEnclave
    server: BackgroundServer
    admin_token: str
    _clients: list[httpx.Client] = field(default_factory=list)

    @property
    def service(self):
        return self.server.app.state.service

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        client = httpx.Client(base_url=self.server.url, headers=headers, timeout=30)
        self._clients.append(client)
        return client

    def account(self, name: str, role: str) -> httpx.Client:
        response = self.client(self.admin_token).post("/v1/accounts", json={"name": name, "role": role})
        assert response.status_code == 201, response.text
        return self.client(response.json()["token"])

    def seal(self, op: str, model: str, request_id: str | None = None) -> bytes:
        return seal_request(
            enclave_public_key=self.fake.hpke_public_key,
            op=op,
            model=model,
            payload=b"opaque payload",
            request_id=request_id,
            rows=3 if op == "predict" else None,
        ).envelope

    def blob_files(self) -> list[str]:
        root = self.settings.blob_dir
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())

    def close(self) -> None:
        for client in self._clients:
            client.close()

    def create_model(
        self, client: httpx.Client, name: str = "cancer-screen", columns: list[str] | None = None
    ) -> dict:
        return create_model(client, name, columns)

    def ready_model(self, client: httpx.Client, name: str = "cancer-screen") -> dict:
        return ready_model(self, client, name)

    @staticmethod
    def encrypted_model(plaintext: bytes = MODEL_PLAINTEXT, *, content_type: str = "model/onnx") -> bytes:
        return encrypted_model(plaintext, content_type=content_type)


def encrypted_model(plaintext: bytes = MODEL_PLAINTEXT, *, content_type: str = "model/onnx") -> bytes:
    return encrypt_bytes(new_data_key(), plaintext, content_type=content_type, chunk_size=1024)


def make_settings(tmp_path: Path, **overrides: object) -> Settings:
    return Settings(data_dir=tmp_path / "data", **overrides)  # type: ignore[arg-type]


def create_model(client: httpx.Client, name: str = "cancer-screen", columns: list[str] | None = None) -> dict:
    response = client.post(
        "/v1/models",
        json={"name": name, "description": "test", "input_columns": columns or ["a", "b", "c"]},
    )
    assert response.status_code == 201, response.text
    return response.json()


def ready_model(env: Env, client: httpx.Client, name: str = "cancer-screen") -> dict:
    model = create_model(client, name)
    upload = client.put(f"/v1/models/{model['id']}/blob", content=encrypted_model())
    assert upload.status_code == 200, upload.text
    provision = client.post(f"/v1/models/{model['id']}/provision", content=env.seal("provision", model["id"]))
    assert provision.status_code == 200, provision.text
    return provision.json()["model"]


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    settings = make_settings(tmp_path, max_model_bytes=64 * 1024, max_request_bytes=16 * 1024)
    fake = FakeEnclave()
    app = create_app(settings, fake)  # type: ignore[arg-type]
    with BackgroundServer(app) as server:
        token = settings.admin_token_path.read_text().strip()
        environment = Env(settings=settings, fake=fake, server=server, admin_token=token)
        try:
            yield environment
        finally:
            environment.close()


@pytest.fixture
def provider(env: Env) -> httpx.Client:
    return env.account("provider-a", "provider")


@pytest.fixture
def owner(env: Env) -> httpx.Client:
    return env.account("hospital-a", "data_owner")
