"""The enclave's request handlers: the only code that ever sees plaintext models, inputs or outputs.

``Enclave.handle(op, header, parts)`` is everything the host can ask. The host is untrusted, so
every field it supplies is checked against what the *sealed* request says: the operation and model
id are authenticated inside the HPKE envelope, request ids are accepted once within a freshness
window, and a model blob must have the digest its provider sealed to us.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from sealedml.attestation.evidence.bundle import EvidenceBundle
from sealedml.attestation.report_data import bind_report_data
from sealedml.crypto.request import OpenedRequest, RecipientKey, seal_response
from sealedml.crypto.sealing import seal, unseal
from sealedml.crypto.signing import SigningKey
from sealedml.crypto.stream import decrypt_bytes
from sealedml.enclave import payload
from sealedml.enclave.models import (
    LoadedModel,
    ModelConfig,
    check_features,
    load_model,
    run_model,
)
from sealedml.enclave.receipts import build_receipt
from sealedml.errors import EnclaveError, InputError, ModelError, RequestError

MODEL_CONTENT_TYPE = "model/onnx"
REQUEST_WINDOW_SECONDS = 600
CLOCK_SKEW_SECONDS = 60
DEFAULT_MAX_ROWS = 1_000_000


class Platform(Protocol):
    """What the enclave needs from its TEE platform: a sealing secret and signed reports."""

    tee: str
    simulated: bool

    @property
    def sealing_secret(self) -> bytes:
        """The platform-and-CPU-bound secret sealing keys derive from."""
        ...

    def evidence(
        self, *, measurement: str, report_data: bytes, now: float
    ) -> tuple[bytes, bytes, tuple[bytes, ...]]:
        """Return (report, signature, certificate chain DER leaf-first) binding ``report_data``."""
        ...


@dataclass(frozen=True)
class Reply:
    """A handler's answer: header fields and binary parts."""

    header: dict[str, Any]
    parts: tuple[bytes, ...] = ()


class Enclave:
    """The enclave's state: its attested keys, loaded models and the replay window."""

    def __init__(
        self,
        *,
        platform: Platform,
        measurement: str,
        clock: Callable[[], float] = time.time,
        max_rows: int = DEFAULT_MAX_ROWS,
    ) -> None:
        self._platform = platform
        self.measurement = measurement
        self._clock = clock
        self._max_rows = max_rows
        self._hpke = RecipientKey.generate()
        self._signer = SigningKey.generate()
        self.instance_id = uuid.uuid4().hex
        self._models: dict[str, LoadedModel] = {}
        self._models_lock = threading.Lock()
        self._seen: dict[str, int] = {}
        self._seen_lock = threading.Lock()

    # -- dispatch ---------------------------------------------------------------------------------

    def handle(self, op: str, header: dict[str, Any], parts: list[bytes]) -> Reply:
        """Run one host request; raises a ``SealedMLError`` with a stable code on rejection."""
        handler = self._HANDLERS.get(op)
        if handler is None:
            raise EnclaveError("enclave.protocol", f"unknown operation {op!r}")
        return handler(self, header, parts)

    # -- identity ---------------------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """Return the enclave's public identity (the same fields its evidence binds)."""
        return {
            "tee": self._platform.tee,
            "simulated": self._platform.simulated,
            "measurement": self.measurement,
            "hpke_public_key": self._hpke.public_bytes.hex(),
            "signing_public_key": self._signer.public_bytes.hex(),
            "instance_id": self.instance_id,
        }

    def _hello(self, header: dict[str, Any], parts: list[bytes]) -> Reply:
        return Reply(self.info())

    def _evidence(self, header: dict[str, Any], parts: list[bytes]) -> Reply:
        nonce_hex = header.get("nonce")
        try:
            nonce = bytes.fromhex(nonce_hex) if isinstance(nonce_hex, str) else b""
        except ValueError:
            nonce = b""
        if not 16 <= len(nonce) <= 64:
            raise InputError("input.malformed", "nonce must be 16..64 bytes of hex")
        report_data = bind_report_data(self._hpke.public_bytes, self._signer.public_bytes, nonce)
        report, signature, chain = self._platform.evidence(
            measurement=self.measurement, report_data=report_data, now=self._clock()
        )
        bundle = EvidenceBundle(
            tee=self._platform.tee,
            report=report,
            signature=signature,
            certificates=tuple(chain),
            hpke_public_key=self._hpke.public_bytes,
            signing_public_key=self._signer.public_bytes,
            nonce=nonce,
        )
        return Reply({}, (bundle.to_json().encode(),))

    # -- requests ---------------------------------------------------------------------------------

    def _open(self, envelope: bytes, *, op: str, model_id: str) -> OpenedRequest:
        """Open a sealed request and enforce op, model, freshness and single use."""
        opened = self._hpke.open_request(envelope)
        head = opened.header
        if head.op != op or head.model != model_id:
            raise RequestError(
                "request.invalid", f"request is for {head.op} on another model, not {op} on this one"
            )
        now = int(self._clock())
        if head.issued_at < now - REQUEST_WINDOW_SECONDS or head.issued_at > now + CLOCK_SKEW_SECONDS:
            raise RequestError("request.expired", "request is outside the freshness window")
        with self._seen_lock:
            if head.request_id in self._seen:
                raise RequestError("request.replayed", "this request was already processed")
            horizon = now - REQUEST_WINDOW_SECONDS
            if len(self._seen) > 10_000:
                self._seen = {k: v for k, v in self._seen.items() if v >= horizon}
            self._seen[head.request_id] = head.issued_at
        return opened

    def _decrypt_model(self, model_id: str, config: ModelConfig, blob: bytes) -> LoadedModel:
        if hashlib.sha256(blob).hexdigest() != config.model_blob_sha256:
            raise ModelError(
                "model.key_mismatch", "the stored model blob is not the one its provider provisioned"
            )
        onnx_bytes = decrypt_bytes(config.model_key, blob, expected_content_type=MODEL_CONTENT_TYPE)
        return load_model(model_id, config, onnx_bytes)

    def _provision(self, header: dict[str, Any], parts: list[bytes]) -> Reply:
        model_id, client = _str(header, "model"), _str(header, "client")
        request, blob = _parts(parts, 2)
        opened = self._open(request, op="provision", model_id=model_id)
        config = ModelConfig.from_json(opened.payload)
        loaded = self._decrypt_model(model_id, config, blob)
        sealed = seal(
            platform_secret=self._platform.sealing_secret,
            measurement=self.measurement,
            label=f"model:{model_id}",
            plaintext=config.to_json(),
        )
        with self._models_lock:
            self._models[model_id] = loaded
        answer = json.dumps(
            {
                "model": model_id,
                "model_sha256": loaded.model_sha256,
                "measurement": self.measurement,
                "input_columns": list(config.input_columns),
                "output_policy": config.output_policy.to_dict(),
            }
        ).encode()
        response = seal_response(
            response_key=opened.response_key, request_id=opened.header.request_id, payload=answer
        )
        receipt, signature = self._receipt(
            kind="provision",
            job=opened.header.request_id,
            model=loaded,
            request=request,
            response=response,
            client=client,
            rows=0,
            request_id=opened.header.request_id,
        )
        return Reply(
            {"model_sha256": loaded.model_sha256, "receipt": receipt, "signature": signature},
            (sealed, response),
        )

    def _load(self, header: dict[str, Any], parts: list[bytes]) -> Reply:
        model_id = _str(header, "model")
        sealed, blob = _parts(parts, 2)
        usage = header.get("usage") or {}
        if not isinstance(usage, dict) or not all(
            isinstance(k, str) and isinstance(v, int) and v >= 0 for k, v in usage.items()
        ):
            raise EnclaveError("enclave.protocol", "usage must map client ids to row counts")
        config = ModelConfig.from_json(
            unseal(
                platform_secret=self._platform.sealing_secret,
                measurement=self.measurement,
                label=f"model:{model_id}",
                blob=sealed,
            )
        )
        loaded = self._decrypt_model(model_id, config, blob)
        loaded.usage.update(usage)
        with self._models_lock:
            self._models[model_id] = loaded
        return Reply({"model_sha256": loaded.model_sha256})

    def _unload(self, header: dict[str, Any], parts: list[bytes]) -> Reply:
        with self._models_lock:
            self._models.pop(_str(header, "model"), None)
        return Reply({})

    def _predict(self, header: dict[str, Any], parts: list[bytes]) -> Reply:
        model_id, client, job = _str(header, "model"), _str(header, "client"), _str(header, "job")
        (request,) = _parts(parts, 1)
        with self._models_lock:
            model = self._models.get(model_id)
        if model is None:
            raise ModelError("model.not_provisioned", "the model is not loaded in this enclave")
        opened = self._open(request, op="predict", model_id=model_id)
        meta, arrays = payload.unpack(opened.payload)
        features = check_features(model, meta.get("columns"), arrays.get("features"), self._max_rows)
        rows = int(features.shape[0])
        if opened.header.rows != rows:
            raise RequestError(
                "request.invalid",
                f"the request declares {opened.header.rows} rows but carries {rows}: "
                "the declared count is what the platform meters",
            )
        usage = model.reserve(client, rows)
        try:
            outputs = run_model(model, features)
        except BaseException:
            model.reserve(client, -rows)
            raise
        body = payload.pack(
            {
                "job": job,
                "model": model_id,
                "rows": rows,
                "output_policy": model.config.output_policy.to_dict(),
            },
            outputs,
        )
        response = seal_response(
            response_key=opened.response_key, request_id=opened.header.request_id, payload=body
        )
        receipt, signature = self._receipt(
            kind="predict",
            job=job,
            model=model,
            request=request,
            response=response,
            client=client,
            rows=rows,
            request_id=opened.header.request_id,
        )
        return Reply({"receipt": receipt, "signature": signature, "rows": rows, "usage": usage}, (response,))

    def _receipt(
        self,
        *,
        kind: str,
        job: str,
        model: LoadedModel,
        request: bytes,
        response: bytes,
        client: str,
        rows: int,
        request_id: str,
    ) -> tuple[dict[str, Any], str]:
        return build_receipt(
            self._signer,
            kind=kind,
            job=job,
            request_id=request_id,
            model_id=model.model_id,
            model_sha256=model.model_sha256,
            model_blob_sha256=model.config.model_blob_sha256,
            request=request,
            response=response,
            client=client,
            rows=rows,
            measurement=self.measurement,
            tee=self._platform.tee,
            issued_at=int(self._clock()),
        )

    _HANDLERS: ClassVar[dict[str, Callable[[Enclave, dict[str, Any], list[bytes]], Reply]]] = {
        "hello": _hello,
        "evidence": _evidence,
        "provision": _provision,
        "load": _load,
        "unload": _unload,
        "predict": _predict,
    }


def _str(header: dict[str, Any], name: str) -> str:
    value = header.get(name)
    if not isinstance(value, str) or not value or len(value) > 128:
        raise EnclaveError("enclave.protocol", f"frame field {name!r} is missing or invalid")
    return value


def _parts(parts: list[bytes], count: int) -> list[bytes]:
    if len(parts) != count:
        raise EnclaveError("enclave.protocol", f"expected {count} binary parts, got {len(parts)}")
    return parts


__all__ = ["Enclave", "Platform", "Reply"]
