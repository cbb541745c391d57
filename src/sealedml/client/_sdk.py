"""The SealedML client SDK: attest, publish, provision, predict, and check every receipt.

Everything secret is encrypted here, before it leaves the caller's process, to an enclave this
client has attested itself under its own policy. The platform is treated as a relay of opaque
bytes: nothing it returns is trusted until it authenticates.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd

from sealedml.attestation.claims import AttestationResult
from sealedml.attestation.evidence.bundle import EvidenceBundle
from sealedml.attestation.policy import AppraisalPolicy
from sealedml.attestation.verifier import verify_evidence
from sealedml.client import _batch
from sealedml.client._data import iter_table, select_features
from sealedml.client._he import HEAPI
from sealedml.client._ledger import LedgerWatcher
from sealedml.client._market import MarketAPI
from sealedml.client._models import PreparedModel
from sealedml.client._receipts import ReceiptBundle, check_job, verify_receipt
from sealedml.client._training import TrainingAPI
from sealedml.crypto.request import SealedRequest, open_response, seal_request
from sealedml.crypto.stream import encrypt_bytes, new_data_key
from sealedml.enclave import payload
from sealedml.errors import (
    CryptoError,
    InputError,
    NetworkError,
    NotFoundError,
    ReceiptError,
    RequestError,
    SealedMLError,
    error_from_dict,
)

DEFAULT_TIMEOUT = 60.0
DEFAULT_BATCH_ROWS = 10_000
MODEL_CONTENT_TYPE = "model/onnx"


@dataclass(frozen=True)
class ModelInfo:
    """A model as the catalog lists it: public metadata only."""

    id: str
    name: str
    owner_id: str
    status: str
    input_columns: tuple[str, ...]
    description: str = ""
    output_policy: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_api(cls, data: dict[str, Any]) -> ModelInfo:
        """Build from the platform's JSON."""
        return cls(
            id=str(data["id"]),
            name=str(data["name"]),
            owner_id=str(data.get("owner_id", "")),
            status=str(data.get("status", "")),
            input_columns=tuple(data.get("input_columns") or ()),
            description=str(data.get("description") or ""),
            output_policy=dict(data.get("output_policy") or {}),
            raw=data,
        )


@dataclass(frozen=True)
class PublishedModel:
    """The result of publishing: the catalog entry and the model key (keep it secret)."""

    model: ModelInfo
    model_key: bytes
    model_sha256: str
    receipt: ReceiptBundle


@dataclass(frozen=True)
class Prediction:
    """Decrypted predictions for one request, with the verified receipt that covers them."""

    job_id: str
    labels: np.ndarray
    probabilities: np.ndarray | None
    output_policy: dict[str, Any]
    receipt: ReceiptBundle


class SealedMLClient:
    """A client of one SealedML platform, acting as one account.

    ``policy`` is the caller's appraisal policy: no key or data is ever sent to an enclave whose
    evidence it rejects. Every receipt is checked to be in the platform's transparency log, under
    a tree head signed by ``log_public_key`` (pinned on first use if not given) and consistent with
    every head seen before (kept in ``ledger_state`` between runs when given); ``verify_ledger=False``
    turns that off. ``transport`` lets tests plug an httpx transport in.
    """

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        policy: AppraisalPolicy | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
        clock: Callable[[], float] = time.time,
        log_public_key: bytes | None = None,
        ledger_state: Path | None = None,
        verify_ledger: bool = True,
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=url, headers=headers, timeout=timeout, transport=transport)
        self.policy = policy
        self._clock = clock
        self._attested: AttestationResult | None = None
        self._attested_at = 0.0
        self._models: dict[str, ModelInfo] = {}
        self.verify_ledger = verify_ledger
        self.ledger = LedgerWatcher(self._json, public_key=log_public_key, state_path=ledger_state)
        self._training: TrainingAPI | None = None
        self._he: HEAPI | None = None

    @property
    def market(self) -> MarketAPI:
        """Marketplace calls: listings, prices, credits, the usage report."""
        return MarketAPI(self._json)

    @property
    def training(self) -> TrainingAPI:
        """Confidential training: encrypted datasets, job specs, approvals, models and metrics."""
        if self._training is None:
            self._training = TrainingAPI(self)
        return self._training

    @property
    def he(self) -> HEAPI:
        """Encrypted-ML mode (CKKS): public contexts, HE models, encrypted predictions and training."""
        if self._he is None:
            self._he = HEAPI(self)
        return self._he

    def __enter__(self) -> SealedMLClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._http.close()

    # -- HTTP plumbing ----------------------------------------------------------------------------

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TimeoutException as exc:
            raise NetworkError(
                "network.timeout", f"the platform did not answer {method} {path} in time"
            ) from exc
        except httpx.TransportError as exc:
            raise NetworkError("network.unreachable", f"cannot reach the platform: {exc}") from exc
        if response.status_code >= 400:
            try:
                body = response.json()
            except ValueError:
                body = None
            error = body.get("error") if isinstance(body, dict) else None
            if isinstance(error, dict) and isinstance(error.get("code"), str) and "." in error["code"]:
                raise error_from_dict(error, status=response.status_code)
            raise NetworkError(
                "network.bad_response", f"{method} {path} failed with HTTP {response.status_code}"
            )
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._request(method, path, **kwargs)
        return response.json() if response.content else None

    # -- accounts ---------------------------------------------------------------------------------

    def me(self) -> dict[str, Any]:
        """Return this account's id, name and role."""
        return dict(self._json("GET", "/v1/me"))

    def create_account(self, name: str, role: str) -> dict[str, Any]:
        """Create an account (admin only); the returned token is shown once."""
        return dict(self._json("POST", "/v1/accounts", json={"name": name, "role": role}))

    # -- attestation ------------------------------------------------------------------------------

    def enclave_info(self) -> dict[str, Any]:
        """Return the enclave's self-description (unverified; use :meth:`attest`)."""
        return dict(self._json("GET", "/v1/enclave"))

    def fetch_evidence(self, nonce: bytes) -> EvidenceBundle:
        """Ask the platform for evidence answering ``nonce`` (unverified)."""
        response = self._request("GET", "/v1/attestation", params={"nonce": nonce.hex()})
        return EvidenceBundle.from_json(response.content)

    def attest(self, policy: AppraisalPolicy | None = None) -> AttestationResult:
        """Verify the platform's enclave under ``policy`` (or the client's) with a fresh nonce.

        Guarantees, on return, that the enclave keys used for the next requests are bound to
        evidence that passed every check of the policy. Raises ``AttestationError`` naming the
        failed check otherwise.
        """
        chosen = policy or self.policy
        if chosen is None:
            raise InputError("input.malformed", "an appraisal policy is required to attest")
        nonce = os.urandom(32)
        bundle = self.fetch_evidence(nonce)
        now = self._clock()
        result = verify_evidence(bundle, nonce=nonce, policy=chosen, now=datetime.fromtimestamp(now, tz=UTC))
        self._attested, self._attested_at = result, now
        return result

    def _attestation(self) -> AttestationResult:
        max_age = self.policy.max_evidence_age_seconds if self.policy else 300
        if self._attested is None or self._clock() - self._attested_at > max_age * 0.8:
            self.attest()
        assert self._attested is not None
        return self._attested

    def _sealed_call(
        self, path: str, *, op: str, model_id: str, body: bytes, rows: int | None = None
    ) -> tuple[AttestationResult, Any, bytes, dict[str, Any]]:
        """Seal ``body`` to the attested enclave, POST it, and open the answer.

        Re-attests and retries once if the enclave restarted (its key changed); the first request
        was then never processed, so nothing runs twice.
        """
        for attempt in (0, 1):
            attestation = self._attestation()
            sealed = seal_request(
                enclave_public_key=attestation.hpke_public_key, op=op, model=model_id, payload=body, rows=rows
            )
            try:
                answer = self._json(
                    "POST",
                    path,
                    content=sealed.envelope,
                    headers={"Content-Type": "application/octet-stream"},
                )
            except RequestError as exc:
                if exc.code == "request.wrong_recipient" and attempt == 0:
                    self._attested = None
                    continue
                raise
            try:
                response = base64.b64decode(answer["response"], validate=True)
            except (KeyError, TypeError, ValueError) as exc:
                raise CryptoError(
                    "crypto.malformed", "the platform returned no valid response envelope"
                ) from exc
            plain = open_response(
                response, response_key=sealed.response_key, request_id=sealed.header.request_id
            )
            receipt, signature = answer.get("receipt"), answer.get("signature")
            if not isinstance(receipt, dict) or not isinstance(signature, str):
                raise CryptoError("crypto.malformed", "the platform returned no receipt")
            verify_receipt(receipt, signature, attestation)
            check_job(
                receipt,
                request=sealed.envelope,
                response=response,
                request_id=sealed.header.request_id,
                model=model_id,
            )
            proof = (
                self.ledger.check_receipt(receipt, signature, answer.get("ledger")).to_dict()
                if self.verify_ledger
                else None
            )
            answer["_receipt_bundle"] = ReceiptBundle(receipt, signature, attestation.evidence, ledger=proof)
            return attestation, answer, plain, receipt
        raise AssertionError("unreachable")

    def _sealed_send(
        self,
        *,
        op: str,
        model_id: str,
        body: bytes,
        send: Callable[[bytes], Any],
        opens: bool = True,
    ) -> tuple[AttestationResult, SealedRequest, Any, bytes | None]:
        """Seal ``body`` to the attested enclave and hand the envelope to ``send`` (which posts it).

        Re-attests and retries once if the enclave restarted (its key changed): the first envelope
        was then never opened, so nothing runs twice. With ``opens`` the answer must carry the
        enclave's sealed ``response``, which is opened here (only this client can). Returns the
        attestation used, the sealed request, the platform's answer and the opened response.
        """
        for attempt in (0, 1):
            attestation = self._attestation()
            sealed = seal_request(
                enclave_public_key=attestation.hpke_public_key, op=op, model=model_id, payload=body
            )
            try:
                answer = send(sealed.envelope)
            except RequestError as exc:
                if exc.code == "request.wrong_recipient" and attempt == 0:
                    self._attested = None
                    continue
                raise
            if not opens:
                return attestation, sealed, answer, None
            try:
                response = base64.b64decode(answer["response"], validate=True)
            except (KeyError, TypeError, ValueError) as exc:
                raise CryptoError(
                    "crypto.malformed", "the platform returned no valid response envelope"
                ) from exc
            plain = open_response(
                response, response_key=sealed.response_key, request_id=sealed.header.request_id
            )
            return attestation, sealed, answer, plain
        raise AssertionError("unreachable")

    # -- models -----------------------------------------------------------------------------------

    def list_models(self) -> list[ModelInfo]:
        """Return the catalog as this account sees it."""
        return [ModelInfo.from_api(m) for m in self._json("GET", "/v1/models")]

    def get_model(self, ref: str) -> ModelInfo:
        """Return a model by id or name; raises ``not_found.model``."""
        if ref in self._models:
            return self._models[ref]
        for model in self.list_models():
            if ref in (model.id, model.name):
                self._models[model.id] = self._models[model.name] = model
                return model
        raise NotFoundError("not_found.model", f"no model {ref!r} visible to this account")

    def publish_model(
        self,
        name: str,
        prepared: PreparedModel,
        *,
        description: str = "",
        output_policy: dict[str, Any] | None = None,
        query_budget: int | None = None,
        price_per_row: int = 0,
        version: str = "1",
        allowed_measurements: Sequence[str] = (),
    ) -> PublishedModel:
        """Encrypt a model under a fresh key, upload it, and provision the key to the attested enclave.

        The platform only ever receives the ciphertext; the key travels sealed to the enclave. All
        or nothing: if any step is rejected, the catalog entry made for it is deleted again.
        """
        model_key = new_data_key()
        blob = encrypt_bytes(model_key, prepared.onnx_bytes, content_type=MODEL_CONTENT_TYPE)
        created = self._json(
            "POST",
            "/v1/models",
            json={
                "name": name,
                "description": description,
                "input_columns": list(prepared.input_columns),
                "output_policy": output_policy or {"mode": "probabilities", "decimals": 2},
                "price_per_row": price_per_row,
                "version": version,
                "allowed_measurements": list(allowed_measurements),
            },
        )
        model_id = str(created["id"])
        try:
            self._request(
                "PUT",
                f"/v1/models/{model_id}/blob",
                content=blob,
                headers={"Content-Type": "application/octet-stream"},
            )
            return self.provision_model(
                model_id,
                model_key,
                blob_sha256=hashlib.sha256(blob).hexdigest(),
                model_sha256=hashlib.sha256(prepared.onnx_bytes).hexdigest(),
                input_columns=prepared.input_columns,
                output_policy=output_policy,
                query_budget=query_budget,
            )
        except SealedMLError:
            # Publishing is all or nothing: remove the half-made catalog entry, keep the cause.
            with contextlib.suppress(SealedMLError):
                self._request("DELETE", f"/v1/models/{model_id}")
            raise

    def provision_model(
        self,
        model_id: str,
        model_key: bytes,
        *,
        blob_sha256: str,
        model_sha256: str,
        input_columns: Sequence[str],
        output_policy: dict[str, Any] | None = None,
        query_budget: int | None = None,
    ) -> PublishedModel:
        """Release ``model_key`` to the attested enclave; check it loaded exactly our model."""
        config = json.dumps(
            {
                "model_key": model_key.hex(),
                "model_blob_sha256": blob_sha256,
                "input_columns": list(input_columns),
                "output_policy": output_policy or {"mode": "probabilities", "decimals": 2},
                "query_budget": query_budget,
            }
        ).encode()
        _, answer, plain, receipt = self._sealed_call(
            f"/v1/models/{model_id}/provision", op="provision", model_id=model_id, body=config
        )
        confirmation = json.loads(plain)
        if confirmation.get("model_sha256") != model_sha256 or receipt.get("model_sha256") != model_sha256:
            raise ReceiptError(
                "receipt.mismatch", "the enclave loaded a different model than the one published"
            )
        info = ModelInfo.from_api(answer["model"])
        self._models[info.id] = self._models[info.name] = info
        return PublishedModel(info, model_key, model_sha256, answer["_receipt_bundle"])

    # -- predictions ------------------------------------------------------------------------------

    def predict(
        self, model: str, data: pd.DataFrame | np.ndarray, *, columns: Sequence[str] | None = None
    ) -> Prediction:
        """Predict on ``data`` (a frame with the model's columns, or a matrix in their order).

        Guarantees on return: the inputs were only readable by the attested enclave, the outputs
        only by this client, and the receipt is signed by that enclave and covers exactly the
        bytes sent and received.
        """
        info = self.get_model(model)
        if isinstance(data, pd.DataFrame):
            features = select_features(data, info.input_columns)
        else:
            features = np.asarray(data, dtype=np.float32)
            if features.ndim != 2 or features.shape[1] != len(info.input_columns):
                raise InputError(
                    "input.schema_mismatch",
                    f"expected a rows x {len(info.input_columns)} matrix, got shape {features.shape}",
                )
            if columns is not None and list(columns) != list(info.input_columns):
                raise InputError("input.schema_mismatch", "columns do not match the model's input schema")
        body = payload.pack({"columns": list(info.input_columns)}, {"features": features})
        _, answer, plain, receipt = self._sealed_call(
            f"/v1/models/{info.id}/predict",
            op="predict",
            model_id=info.id,
            body=body,
            rows=int(features.shape[0]),
        )
        meta, arrays = payload.unpack(plain)
        job_id = str(answer.get("job_id"))
        if (
            receipt.get("job") != job_id
            or meta.get("job") != job_id
            or receipt.get("rows") != features.shape[0]
        ):
            raise ReceiptError("receipt.mismatch", "the receipt does not describe this job")
        labels = arrays.get("label")
        if labels is None or labels.shape[0] != features.shape[0]:
            raise InputError("input.malformed", "the enclave's answer has the wrong number of rows")
        return Prediction(
            job_id=job_id,
            labels=np.array(labels),
            probabilities=np.array(arrays["probabilities"]) if "probabilities" in arrays else None,
            output_policy=dict(meta.get("output_policy") or {}),
            receipt=answer["_receipt_bundle"],
        )

    def predict_file(
        self,
        model: str,
        path: Path,
        *,
        batch_rows: int = DEFAULT_BATCH_ROWS,
        progress: Callable[[int], None] | None = None,
    ) -> Iterator[Prediction]:
        """Predict on a CSV or Parquet file batch by batch, never loading it whole."""
        info = self.get_model(model)
        for frame in iter_table(path, batch_rows):
            prediction = self.predict(info.id, frame)
            if progress is not None:
                progress(len(frame))
            yield prediction

    def predict_batch(
        self,
        model: str,
        source: Path,
        output: Path,
        *,
        shard_rows: int = _batch.DEFAULT_SHARD_ROWS,
        window: int = _batch.DEFAULT_WINDOW,
        progress: _batch.Progress | None = None,
        sent: _batch.Progress | None = None,
    ) -> _batch.BatchResult:
        """Predict on every row of a CSV or Parquet file through the streaming batch endpoint.

        Guarantees on return: ``output`` (Parquet for ``.parquet``/``.pq``, else CSV) holds one
        prediction row per input row, in input order, whether one enclave or a cluster of attested
        workers scored the shards; every shard was sealed to the attested enclave (or cluster key)
        and every shard's receipt was verified, ledger included. A failed shard raises its error
        after the shards before it were written. ``progress(rows_done, total)`` follows the verified
        answers, ``sent(rows_sent, total)`` the sealed upload.
        """
        return _batch.predict_batch(
            self, model, source, output, shard_rows=shard_rows, window=window, progress=progress, sent=sent
        )

    # -- jobs -------------------------------------------------------------------------------------

    def list_jobs(self) -> list[dict[str, Any]]:
        """Return this account's jobs (newest first)."""
        return list(self._json("GET", "/v1/jobs"))

    def get_job(self, job_id: str) -> dict[str, Any]:
        """Return one of this account's jobs; raises ``not_found.job`` for anyone else's."""
        return dict(self._json("GET", f"/v1/jobs/{job_id}"))
