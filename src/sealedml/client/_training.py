"""Confidential training from the client's side: encrypted datasets, job specs, approvals, models.

Everything secret stays with its owner: a dataset is encrypted here (chunk by chunk, so files
larger than memory stream through) under a fresh data key that travels only sealed to the
attested enclave, together with the public half of the owner's Ed25519 *approval key*. A job spec
is validated here with the same :mod:`sealedml.training_spec` the host and the enclave run, sealed
to the enclave and submitted; each owner approves the exact spec digest by signing it; the
recipients named in the spec open their model-key grant with their X25519 key and decrypt the
model locally. Every answer that matters is checked: the enclave's sealed confirmations, the
signed ``train`` receipt (bound to the attested enclave and to this job's spec, model and
metrics), and its inclusion in the transparency log.

:class:`KeyStore` keeps the owner's and recipient's keys in a folder (the CLI's keys dir, files
mode 0600); the SDK itself takes keys as arguments.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric import ed25519, x25519

from sealedml.attestation.claims import AttestationResult
from sealedml.attestation.evidence.bundle import EvidenceBundle
from sealedml.attestation.verifier import verify_evidence
from sealedml.client._receipts import verify_receipt
from sealedml.crypto.envelope import canonical_json
from sealedml.crypto.request import open_response
from sealedml.crypto.stream import decrypt_bytes
from sealedml.datasets.files import (
    CSV,
    PARQUET,
    EncryptedDataset,
    dataset_config_json,
    encrypt_dataset_file,
    encrypt_table,
)
from sealedml.errors import (
    CryptoError,
    InputError,
    NetworkError,
    NotFoundError,
    ReceiptError,
    SealedMLError,
    error_from_dict,
)
from sealedml.secretfile import write_secret_file
from sealedml.training_spec import approval_message, parse_job_spec, spec_digest

if TYPE_CHECKING:
    import pyarrow as pa

    from sealedml.attestation.policy import AppraisalPolicy
    from sealedml.client._sdk import SealedMLClient
    from sealedml.enclave.training import ModelGrant

__all__ = [
    "Approval",
    "DatasetInfo",
    "FetchedModel",
    "KeyStore",
    "Submission",
    "TrainingAPI",
    "TrainingJob",
    "TrainingOutcome",
    "UploadedDataset",
    "content_type_for",
    "public_hex",
    "verify_evidence_at",
]

UPLOAD_CHUNK = 1024 * 1024
FINAL_STATUSES = ("done", "failed", "cancelled")
REFRESH_AFTER_SECONDS = 240
"""The SDK re-seals a waiting job's request after this long (the enclave accepts 600 s)."""
MIN_REFRESH_SECONDS = 5.0
"""...and at most this often when the platform reports the request stale (e.g. the enclave is down)."""


def content_type_for(path: Path) -> str:
    """Return the dataset content type of a file by its suffix (``.parquet``/``.pq`` or ``.csv``)."""
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return PARQUET
    if suffix == ".csv":
        return CSV
    raise InputError("input.malformed", f"unsupported dataset format {suffix!r}: use CSV or Parquet")


def public_hex(key: x25519.X25519PrivateKey) -> str:
    """Return the X25519 public key of ``key`` as the spec names recipients (64 hex characters)."""
    return key.public_key().public_bytes_raw().hex()


# -- records --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetInfo:
    """A dataset as the platform describes it: digests, sizes and the public budget."""

    id: str
    name: str
    status: str
    blob_sha256: str | None
    blob_size: int | None
    epsilon_total: float | None
    epsilon_spent: float
    epsilon_remaining: float | None
    generation: int
    listing_id: str | None
    raw: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_api(cls, data: object) -> DatasetInfo:
        """Build from the platform's JSON; ``network.bad_response`` if it is not a dataset."""
        try:
            return cls._parse(data)
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
            raise NetworkError("network.bad_response", "the platform sent a malformed dataset") from exc

    @classmethod
    def _parse(cls, data: Any) -> DatasetInfo:
        return cls(
            id=str(data["id"]),
            name=str(data["name"]),
            status=str(data.get("status", "")),
            blob_sha256=data.get("blob_sha256"),
            blob_size=data.get("blob_size"),
            epsilon_total=data.get("epsilon_total"),
            epsilon_spent=float(data.get("epsilon_spent") or 0.0),
            epsilon_remaining=data.get("epsilon_remaining"),
            generation=int(data.get("generation") or 0),
            listing_id=data.get("listing_id"),
            raw=dict(data),
        )


@dataclass(frozen=True)
class UploadedDataset:
    """A dataset uploaded and provisioned: what the enclave confirmed, and the owner's secrets."""

    info: DatasetInfo
    data_key: bytes
    approval_key: ed25519.Ed25519PrivateKey
    schema_sha256: str
    columns: tuple[str, ...]
    confirmation: dict[str, Any]
    """The enclave's sealed answer: rows, column count, schema digest, measurement (only the
    owner reads it)."""


@dataclass(frozen=True)
class Submission:
    """What the submitter keeps about a sealed job: the key that opens the enclave's answer, and
    the evidence of the enclave it was sealed to (to check the receipt later)."""

    job_id: str
    spec: dict[str, Any]
    spec_sha256: str
    request_id: str
    request_sha256: str
    response_key: bytes
    evidence: str
    attested_at: float

    def to_dict(self) -> dict[str, Any]:
        """JSON form (contains the response key: keep it private)."""
        return {
            "role": "submitter",
            "job_id": self.job_id,
            "spec": self.spec,
            "spec_sha256": self.spec_sha256,
            "request_id": self.request_id,
            "request_sha256": self.request_sha256,
            "response_key": self.response_key.hex(),
            "evidence": self.evidence,
            "attested_at": self.attested_at,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Submission:
        """Parse :meth:`to_dict`; raises ``input.malformed``."""
        try:
            return cls(
                job_id=str(data["job_id"]),
                spec=dict(data["spec"]),
                spec_sha256=str(data["spec_sha256"]),
                request_id=str(data["request_id"]),
                request_sha256=str(data["request_sha256"]),
                response_key=bytes.fromhex(data["response_key"]),
                evidence=str(data["evidence"]),
                attested_at=float(data["attested_at"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError("input.malformed", "not a saved training submission") from exc


@dataclass(frozen=True)
class TrainingJob:
    """A training job as the platform reports it (state, approvals, grants, receipt)."""

    id: str
    status: str
    phase: str | None
    progress: int | None
    error_code: str | None
    error_message: str | None
    model_id: str
    spec: dict[str, Any]
    spec_sha256: str
    datasets: tuple[dict[str, Any], ...]
    waiting_for: tuple[str, ...]
    request_fresh: bool | None
    grants: dict[str, str]
    phases: tuple[dict[str, Any], ...]
    budgets: tuple[dict[str, Any], ...]
    receipt: dict[str, Any]
    signature: str
    raw: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_api(cls, data: object) -> TrainingJob:
        """Build from the platform's JSON: ``input.malformed`` if it is not a training job,
        ``network.bad_response`` if it is not a job at all."""
        if not isinstance(data, dict):
            raise NetworkError("network.bad_response", "the platform sent a malformed job")
        training = data.get("training")
        if data.get("kind") != "train" or not isinstance(training, dict):
            raise InputError("input.malformed", f"job {data.get('id')} is not a training job")
        try:
            return cls._parse(data, training)
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
            raise NetworkError("network.bad_response", "the platform sent a malformed job") from exc

    @classmethod
    def _parse(cls, data: dict[str, Any], training: dict[str, Any]) -> TrainingJob:
        return cls(
            id=str(data["id"]),
            status=str(data["status"]),
            phase=data.get("phase"),
            progress=data.get("progress"),
            error_code=data.get("error_code"),
            error_message=data.get("error_message"),
            model_id=str(data.get("model_id")),
            spec=dict(training.get("spec") or {}),
            spec_sha256=str(training.get("spec_sha256")),
            datasets=tuple(dict(d) for d in training.get("datasets") or ()),
            waiting_for=tuple(training.get("waiting_for") or ()),
            request_fresh=training.get("request_fresh"),
            grants={str(g["recipient"]): str(g["grant"]) for g in training.get("grants") or ()},
            phases=tuple(dict(p) for p in training.get("phases") or ()),
            budgets=tuple(dict(b) for b in training.get("budgets") or ()),
            receipt=dict(data.get("receipt") or {}),
            signature=str(data.get("signature") or ""),
            raw=dict(data),
        )

    @property
    def finished(self) -> bool:
        """Whether the job reached a final state."""
        return self.status in FINAL_STATUSES

    def error(self) -> SealedMLError:
        """The job's failure as a typed error (the enclave's or the platform's code)."""
        return error_from_dict(
            {"code": self.error_code or "enclave.internal", "message": self.error_message or ""}
        )


@dataclass(frozen=True)
class Approval:
    """An approval the enclave confirmed (sealed to the owner) for one dataset of a job."""

    job_id: str
    dataset: str
    spec_sha256: str
    expires_at: int
    status: str


@dataclass(frozen=True)
class TrainingOutcome:
    """A finished job as its submitter sees it: the released metrics and the checked receipt."""

    job: TrainingJob
    metrics: dict[str, Any]
    feature_columns: tuple[str, ...]
    phases: tuple[dict[str, Any], ...]
    budgets: tuple[dict[str, Any], ...]
    receipt: dict[str, Any]
    signature: str
    ledger: dict[str, Any] | None


@dataclass(frozen=True)
class FetchedModel:
    """A recipient's decrypted model with the released metrics and the checked receipt."""

    job_id: str
    model_id: str
    onnx_bytes: bytes
    model_sha256: str
    metrics: dict[str, Any]
    input_columns: tuple[str, ...]
    receipt: dict[str, Any]
    signature: str
    ledger: dict[str, Any] | None


# -- the local key store --------------------------------------------------------------------------


def _write_private(path: Path, data: Mapping[str, Any]) -> None:
    write_secret_file(path, json.dumps(data, indent=2, sort_keys=True).encode("utf-8"))


def _read(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError("input.malformed", f"cannot read the {what} {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise InputError("input.malformed", f"the {what} {path} is not JSON") from exc
    if not isinstance(data, dict):
        raise InputError("input.malformed", f"the {what} {path} is not a JSON object")
    return data


class KeyStore:
    """A folder of private keys and job records (files mode 0600, folders 0700).

    Layout: ``recipient.x25519.json`` (this user's recipient key), ``datasets/{id}.json`` (a
    dataset's data key, approval key and column names), ``jobs/{id}.json`` (the submitter's
    response key, or an owner's approval, with the evidence of the enclave used).
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def recipient_key(self, *, create: bool = True) -> x25519.X25519PrivateKey:
        """Return this user's X25519 recipient key, generating it on first use when ``create``."""
        path = self.root / "recipient.x25519.json"
        if path.is_file():
            data = _read(path, "recipient key")
            try:
                return x25519.X25519PrivateKey.from_private_bytes(bytes.fromhex(data["private_key"]))
            except (KeyError, TypeError, ValueError) as exc:
                raise InputError("input.malformed", f"{path} holds no valid X25519 key") from exc
        if not create:
            raise InputError("input.malformed", f"no recipient key in {self.root}")
        key = x25519.X25519PrivateKey.generate()
        _write_private(path, {"private_key": key.private_bytes_raw().hex(), "public_key": public_hex(key)})
        return key

    def save_dataset(self, uploaded: UploadedDataset, *, content_type: str) -> Path:
        """Keep a dataset's data key, approval key and column names; returns the file."""
        path = self.root / "datasets" / f"{uploaded.info.id}.json"
        _write_private(
            path,
            {
                "dataset_id": uploaded.info.id,
                "name": uploaded.info.name,
                "data_key": uploaded.data_key.hex(),
                "approval_key": uploaded.approval_key.private_bytes_raw().hex(),
                "schema_sha256": uploaded.schema_sha256,
                "columns": list(uploaded.columns),
                "content_type": content_type,
            },
        )
        return path

    def dataset(self, dataset_id: str) -> dict[str, Any] | None:
        """Return the saved record of a dataset this user owns, or ``None``."""
        path = self.root / "datasets" / f"{dataset_id}.json"
        return _read(path, "dataset key file") if path.is_file() else None

    def approval_keys(self) -> dict[str, ed25519.Ed25519PrivateKey]:
        """Return ``{dataset id: approval key}`` for every dataset saved here."""
        keys: dict[str, ed25519.Ed25519PrivateKey] = {}
        folder = self.root / "datasets"
        for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            data = _read(path, "dataset key file")
            try:
                keys[str(data["dataset_id"])] = ed25519.Ed25519PrivateKey.from_private_bytes(
                    bytes.fromhex(data["approval_key"])
                )
            except (KeyError, TypeError, ValueError) as exc:
                raise InputError("input.malformed", f"{path} holds no valid approval key") from exc
        return keys

    def save_job(self, job_id: str, record: Mapping[str, Any]) -> Path:
        """Keep what this user needs later about a job (a submission or an approval)."""
        path = self.root / "jobs" / f"{job_id}.json"
        _write_private(path, dict(record))
        return path

    def job(self, job_id: str) -> dict[str, Any] | None:
        """Return the saved record of a job, or ``None``."""
        path = self.root / "jobs" / f"{job_id}.json"
        return _read(path, "job record") if path.is_file() else None


# -- the API --------------------------------------------------------------------------------------


class TrainingAPI:
    """Training calls of one :class:`SealedMLClient` (``client.training``)."""

    def __init__(self, client: SealedMLClient) -> None:
        self._client = client
        self.last_evidence: tuple[str, float] | None = None
        """Evidence (JSON) of the enclave the last sealed call went to, and when it was verified:
        keep it to check the job's receipt later (see :func:`verify_evidence_at`)."""

    # -- datasets -----------------------------------------------------------------------------
    def list_datasets(self) -> list[DatasetInfo]:
        """Return this account's datasets."""
        listing = self._client._json("GET", "/v1/datasets")
        if not isinstance(listing, list):
            raise NetworkError("network.bad_response", "the platform sent a malformed dataset list")
        return [DatasetInfo.from_api(d) for d in listing]

    def dataset(self, ref: str) -> DatasetInfo:
        """Return one of this account's datasets by id or name; ``not_found.dataset`` otherwise."""
        for dataset in self.list_datasets():
            if ref in (dataset.id, dataset.name):
                return dataset
        raise NotFoundError("not_found.dataset", f"no dataset {ref!r} owned by this account")

    def resolve(self, ref: str) -> dict[str, Any]:
        """Resolve a dataset a job may name (own, or listed on the market) to ``{id, name, ...}``."""
        return dict(self._client._json("GET", f"/v1/dataset-refs/{ref}"))

    def upload_file(
        self,
        path: Path,
        name: str,
        *,
        approval_key: ed25519.Ed25519PrivateKey,
        epsilon_total: float | None = None,
        description: str = "",
        progress: Callable[[int, int], None] | None = None,
    ) -> UploadedDataset:
        """Encrypt a CSV or Parquet file chunk by chunk to a temporary file, stream the ciphertext
        up, and provision its key to the attested enclave.

        Guarantees: the plaintext is never held whole in memory and never leaves this process; the
        data key and schema travel only sealed to an enclave this client attested; the enclave
        confirmed it decrypted a file with exactly this schema. All or nothing: if a step is
        refused, the dataset registered for it is deleted again. ``progress(sent, total)`` is
        called as ciphertext bytes go out.
        """
        content_type = content_type_for(path)
        if not path.is_file():
            raise InputError("input.malformed", f"no such file: {path}")
        with tempfile.TemporaryDirectory(prefix="sealedml-upload-") as tmp:
            sealed_file = Path(tmp) / "dataset.sml"
            encrypted = encrypt_dataset_file(path, sealed_file, content_type=content_type)
            size = sealed_file.stat().st_size

            def body() -> Iterator[bytes]:
                sent = 0
                with sealed_file.open("rb") as handle:
                    for chunk in iter(lambda: handle.read(UPLOAD_CHUNK), b""):
                        sent += len(chunk)
                        yield chunk
                        if progress is not None:
                            progress(sent, size)

            from sealedml.datasets.files import describe_schema, file_schema

            columns = tuple(name for name, _ in describe_schema(file_schema(path, content_type)))
            return self._upload(
                name,
                encrypted,
                body,
                size,
                columns=columns,
                approval_key=approval_key,
                epsilon_total=epsilon_total,
                description=description,
            )

    def upload_table(
        self,
        table: pa.Table,
        name: str,
        *,
        approval_key: ed25519.Ed25519PrivateKey,
        epsilon_total: float | None = None,
        description: str = "",
        content_type: str = PARQUET,
    ) -> UploadedDataset:
        """Encrypt an in-memory Arrow table and upload and provision it (see :meth:`upload_file`)."""
        encrypted = encrypt_table(table, content_type=content_type)
        blob = encrypted.blob

        def body() -> Iterator[bytes]:
            for start in range(0, len(blob), UPLOAD_CHUNK):
                yield blob[start : start + UPLOAD_CHUNK]

        return self._upload(
            name,
            encrypted,
            body,
            len(blob),
            columns=tuple(table.column_names),
            approval_key=approval_key,
            epsilon_total=epsilon_total,
            description=description,
        )

    def _upload(
        self,
        name: str,
        encrypted: EncryptedDataset,
        body: Callable[[], Iterator[bytes]],
        size: int,
        *,
        columns: tuple[str, ...],
        approval_key: ed25519.Ed25519PrivateKey,
        epsilon_total: float | None,
        description: str,
    ) -> UploadedDataset:
        created = self._client._json("POST", "/v1/datasets", json={"name": name, "description": description})
        dataset_id = str(created["id"])
        try:
            uploaded = self._client._json(
                "PUT",
                f"/v1/datasets/{dataset_id}/blob",
                content=body(),
                headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
            )
            if not isinstance(uploaded, dict) or uploaded.get("blob_sha256") != encrypted.blob_sha256:
                raise ReceiptError(
                    "receipt.mismatch", "the platform stored other bytes than the ciphertext sent"
                )
            config = dataset_config_json(
                encrypted,
                approval_public_key=approval_key.public_key().public_bytes_raw(),
                epsilon_total=epsilon_total,
            )
            attestation, _sealed, answer, plain = self._client._sealed_send(
                op="provision_dataset",
                model_id=dataset_id,
                body=config,
                send=lambda envelope: self._client._json(
                    "POST",
                    f"/v1/datasets/{dataset_id}/provision",
                    content=envelope,
                    headers={"Content-Type": "application/octet-stream"},
                ),
            )
        except SealedMLError:
            with contextlib.suppress(SealedMLError):
                self._client._request("DELETE", f"/v1/datasets/{dataset_id}")
            raise
        confirmation = json.loads(plain)
        if (
            confirmation.get("dataset") != dataset_id
            or confirmation.get("schema_sha256") != encrypted.schema_sha256
            or confirmation.get("measurement") != attestation.claims.measurement
        ):
            raise ReceiptError(
                "receipt.mismatch", "the enclave did not confirm this dataset with this schema"
            )
        return UploadedDataset(
            info=DatasetInfo.from_api(answer.get("dataset") if isinstance(answer, dict) else None),
            data_key=encrypted.key,
            approval_key=approval_key,
            schema_sha256=encrypted.schema_sha256,
            columns=columns,
            confirmation=confirmation,
        )

    def offer(
        self,
        dataset_id: str,
        *,
        columns: Sequence[tuple[str, str]],
        rows: int,
        price: int,
        description: str = "",
    ) -> DatasetInfo:
        """List the dataset on the market: the schema and size given here (public), and the price
        per training job that other accounts pay to use it."""
        body = {
            "description": description,
            "columns": [{"name": n, "type": t} for n, t in columns],
            "rows": rows,
            "price": price,
        }
        return DatasetInfo.from_api(self._client._json("POST", f"/v1/datasets/{dataset_id}/offer", json=body))

    def delete_dataset(self, dataset_id: str) -> None:
        """Delete this account's dataset (ciphertext, sealed state, enclave copy)."""
        self._client._request("DELETE", f"/v1/datasets/{dataset_id}")

    # -- jobs -----------------------------------------------------------------------------------
    @staticmethod
    def build_spec(
        datasets: Sequence[str],
        *,
        label: str,
        algorithm: str,
        recipients: Sequence[str],
        params: Mapping[str, Any] | None = None,
        features: Sequence[str] | None = None,
        dp_epsilon: float | None = None,
        feature_bounds: Mapping[str, Sequence[float]] | None = None,
        classes: Sequence[int | str] | None = None,
        publish: bool = False,
        serving: Mapping[str, Any] | None = None,
        validation_fraction: float | None = None,
        seed: int | None = None,
        dp_metrics_fraction: float | None = None,
    ) -> dict[str, Any]:
        """Return a validated, normalised job spec with fresh job and model ids.

        Raises ``input.spec_invalid`` naming the field at fault (checked here, again by the host,
        and again by the enclave).
        """
        spec: dict[str, Any] = {
            "job": uuid.uuid4().hex,
            "model": uuid.uuid4().hex,
            "datasets": list(datasets),
            "label": label,
            "algorithm": algorithm,
            "params": dict(params or {}),
            "recipients": list(recipients),
            "publish": publish,
        }
        optional = {
            "features": list(features) if features is not None else None,
            "dp_epsilon": dp_epsilon,
            "feature_bounds": {k: list(v) for k, v in feature_bounds.items()} if feature_bounds else None,
            "classes": list(classes) if classes is not None else None,
            "serving": dict(serving) if serving else None,
            "validation_fraction": validation_fraction,
            "seed": seed,
            "dp_metrics_fraction": dp_metrics_fraction,
        }
        spec.update({k: v for k, v in optional.items() if v is not None})
        return parse_job_spec(spec).to_dict()

    def submit(
        self, spec: Mapping[str, Any], *, publish_name: str | None = None, description: str = ""
    ) -> tuple[Submission, TrainingJob]:
        """Validate ``spec``, seal it to the attested enclave and submit the job.

        Returns what the submitter must keep (:class:`Submission`: the response key) and the job as
        queued. The job runs once every dataset owner approved (:meth:`approve`).
        """
        parsed = parse_job_spec(dict(spec))
        normalised = parsed.to_dict()
        digest = spec_digest(parsed)
        body = canonical_json(normalised)

        def send(envelope: bytes) -> Any:
            return self._client._json(
                "POST",
                "/v1/train",
                json={
                    "spec": normalised,
                    "request": base64.b64encode(envelope).decode("ascii"),
                    "publish_name": publish_name,
                    "description": description,
                },
            )

        attestation, sealed, answer, _ = self._client._sealed_send(
            op="train", model_id=parsed.model, body=body, send=send, opens=False
        )
        self.last_evidence = (attestation.evidence.to_json(), self._client._attested_at)
        job = TrainingJob.from_api(answer)
        if job.spec_sha256 != digest or job.id != parsed.job:
            raise ReceiptError("receipt.mismatch", "the platform registered another spec than the one sent")
        submission = Submission(
            job_id=parsed.job,
            spec=normalised,
            spec_sha256=digest,
            request_id=sealed.header.request_id,
            request_sha256=hashlib.sha256(sealed.envelope).hexdigest(),
            response_key=sealed.response_key,
            evidence=attestation.evidence.to_json(),
            attested_at=self._client._attested_at,
        )
        return submission, job

    def job(self, job_id: str) -> TrainingJob:
        """Return a training job this account submitted or whose dataset it owns."""
        return TrainingJob.from_api(self._client._json("GET", f"/v1/jobs/{job_id}"))

    def find_job(self, ref: str) -> TrainingJob:
        """Return a visible training job by id, or by its spec digest (``SPEC_DIGEST``)."""
        if len(ref) == 64:
            for entry in self._client.list_jobs():
                if entry.get("kind") == "train":
                    job = self.job(str(entry["id"]))
                    if job.spec_sha256 == ref:
                        return job
            raise NotFoundError("not_found.job", f"no training job with spec digest {ref}")
        return self.job(ref)

    def approve(
        self,
        job: str | TrainingJob,
        approval_keys: Mapping[str, ed25519.Ed25519PrivateKey],
        *,
        expected_sha256: str | None = None,
    ) -> list[Approval]:
        """Approve a job on every dataset of it that has a key in ``approval_keys``.

        Guarantees: the spec digest is recomputed here from the spec the platform shows, so the
        signature covers exactly that spec (``receipt.mismatch`` if the platform's digest differs,
        or ``expected_sha256`` is given and differs); each approval is confirmed by the enclave in
        a response only this owner can open. Raises ``not_found.dataset`` if no key fits the job.
        """
        record = job if isinstance(job, TrainingJob) else self.find_job(job)
        digest = spec_digest(parse_job_spec(record.spec))
        if digest != record.spec_sha256 or (expected_sha256 is not None and expected_sha256 != digest):
            raise ReceiptError(
                "receipt.mismatch", "the job's spec does not hash to the digest shown: refusing to sign it"
            )
        mine = [d for d in record.spec.get("datasets", []) if d in approval_keys]
        if not mine:
            raise NotFoundError(
                "not_found.dataset", f"none of the datasets of job {record.id} has a key here"
            )
        approvals = []
        for dataset_id in mine:
            signature = approval_keys[dataset_id].sign(approval_message(dataset_id, digest))
            payload = json.dumps({"spec_sha256": digest, "signature": signature.hex()}).encode()
            attestation, _sealed, answer, plain = self._client._sealed_send(
                op="approve",
                model_id=dataset_id,
                body=payload,
                send=lambda envelope, d=dataset_id: self._client._json(
                    "POST",
                    f"/v1/jobs/{record.id}/approvals/{d}",
                    content=envelope,
                    headers={"Content-Type": "application/octet-stream"},
                ),
            )
            confirmed = json.loads(plain)
            if confirmed.get("spec_sha256") != digest or confirmed.get("dataset") != dataset_id:
                raise ReceiptError("receipt.mismatch", "the enclave confirmed another approval")
            approvals.append(
                Approval(
                    job_id=record.id,
                    dataset=dataset_id,
                    spec_sha256=digest,
                    expires_at=int(confirmed.get("expires_at") or 0),
                    status=str(
                        TrainingJob.from_api(answer.get("job") if isinstance(answer, dict) else None).status
                    ),
                )
            )
            self.last_evidence = (attestation.evidence.to_json(), self._client._attested_at)
        return approvals

    def refresh(self, submission: Submission) -> Submission:
        """Re-seal the submission's spec to the enclave attested now and replace the job's request
        (while it waits); returns the new submission to keep."""
        body = canonical_json(submission.spec)
        self._client._attested = None  # the enclave may have restarted: seal to the one attested now
        attestation, sealed, _answer, _ = self._client._sealed_send(
            op="train",
            model_id=str(submission.spec["model"]),
            body=body,
            send=lambda envelope: self._client._json(
                "PUT",
                f"/v1/jobs/{submission.job_id}/request",
                content=envelope,
                headers={"Content-Type": "application/octet-stream"},
            ),
            opens=False,
        )
        self.last_evidence = (attestation.evidence.to_json(), self._client._attested_at)
        return Submission(
            job_id=submission.job_id,
            spec=submission.spec,
            spec_sha256=submission.spec_sha256,
            request_id=sealed.header.request_id,
            request_sha256=hashlib.sha256(sealed.envelope).hexdigest(),
            response_key=sealed.response_key,
            evidence=attestation.evidence.to_json(),
            attested_at=self._client._attested_at,
        )

    def cancel(self, job_id: str) -> TrainingJob:
        """Cancel a job this account submitted, before it runs."""
        return TrainingJob.from_api(self._client._json("POST", f"/v1/jobs/{job_id}/cancel"))

    def wait(
        self,
        job_id: str,
        *,
        submission: Submission | None = None,
        on_update: Callable[[TrainingJob], None] | None = None,
        on_refresh: Callable[[Submission], None] | None = None,
        timeout: float = 600.0,
        poll: float = 0.2,
        raise_on_failure: bool = True,
    ) -> TrainingJob:
        """Poll the job until it is done, failed or cancelled, reporting each change of state.

        With the ``submission`` (the submitter's), a request that went stale while approvals were
        pending is re-sealed (``on_refresh`` receives the new submission to keep). Raises the job's
        error when it failed (unless ``raise_on_failure`` is false) and ``network.timeout`` after
        ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        last: tuple[Any, ...] | None = None
        sealed_at = time.monotonic() - MIN_REFRESH_SECONDS
        while True:
            job = self.job(job_id)
            state = (job.status, job.phase, job.progress, tuple(job.waiting_for), job.error_code)
            if state != last and on_update is not None:
                on_update(job)
            last = state
            if job.finished:
                if job.status == "failed" and raise_on_failure:
                    raise job.error()
                return job
            age = time.monotonic() - sealed_at
            stale = (job.request_fresh is False and age > MIN_REFRESH_SECONDS) or age > REFRESH_AFTER_SECONDS
            if submission is not None and job.status in ("awaiting_approval", "queued") and stale:
                submission = self.refresh(submission)
                sealed_at = time.monotonic()
                if on_refresh is not None:
                    on_refresh(submission)
            if time.monotonic() > deadline:
                raise NetworkError(
                    "network.timeout", f"job {job_id} is still {job.status} after {timeout:.0f} s"
                )
            time.sleep(poll)

    # -- results --------------------------------------------------------------------------------
    def outcome(self, submission: Submission, job: TrainingJob | None = None) -> TrainingOutcome:
        """Open the enclave's sealed answer to the submitter and check the receipt.

        Guarantees: the metrics come from the enclave (only this submitter's response key opens the
        answer); the receipt is signed by the enclave the request was sealed to (verified under
        this client's policy as of then), covers exactly the request sent and the answer received,
        names this job's spec digest and these metrics, and is in the transparency log.
        """
        job = job or self.job(submission.job_id)
        if job.status != "done":
            raise InputError("input.malformed", f"job {job.id} is {job.status}, not done")
        answer = self._client._json("GET", f"/v1/jobs/{job.id}/result")
        try:
            response = base64.b64decode(answer["response"], validate=True)
        except (KeyError, TypeError, ValueError) as exc:
            raise CryptoError("crypto.malformed", "the platform returned no valid response envelope") from exc
        plain = json.loads(
            open_response(response, response_key=submission.response_key, request_id=submission.request_id)
        )
        receipt, signature = job.receipt, job.signature
        self._check_receipt(
            receipt,
            signature,
            evidence=(submission.evidence, submission.attested_at),
            expected={
                "job": job.id,
                "spec_sha256": submission.spec_sha256,
                "model": submission.spec["model"],
                "input_sha256": submission.request_sha256,
                "output_sha256": hashlib.sha256(response).hexdigest(),
                "metrics_sha256": hashlib.sha256(canonical_json(plain["metrics"])).hexdigest(),
                "model_blob_sha256": plain.get("model_blob_sha256"),
            },
        )
        ledger = self._ledger(receipt, signature)
        return TrainingOutcome(
            job=job,
            metrics=dict(plain["metrics"]),
            feature_columns=tuple(plain.get("feature_columns") or ()),
            phases=tuple(plain.get("phases") or ()),
            budgets=tuple(plain.get("datasets") or ()),
            receipt=receipt,
            signature=signature,
            ledger=ledger,
        )

    def open_grant(self, job: TrainingJob, recipient_key: x25519.X25519PrivateKey) -> ModelGrant:
        """Open this recipient's model-key grant of a finished job (``not_found.job`` if the spec
        names another key)."""
        from sealedml.enclave.training import open_model_grant

        grant_hex = job.grants.get(public_hex(recipient_key))
        if grant_hex is None:
            raise NotFoundError(
                "not_found.job", f"job {job.id} grants its model key to other recipients, not to this key"
            )
        grant = open_model_grant(bytes.fromhex(grant_hex), recipient_key)
        if grant.job != job.id or grant.spec_sha256 != job.spec_sha256:
            raise ReceiptError("receipt.mismatch", "the grant belongs to another job")
        return grant

    def grant_outcome(
        self,
        job: TrainingJob,
        recipient_key: x25519.X25519PrivateKey,
        *,
        evidence: tuple[str, float] | None = None,
    ) -> TrainingOutcome:
        """The released metrics as a recipient reads them from its grant, with the receipt checked
        (signed by the attested enclave, naming this job, spec and metrics, in the log)."""
        grant = self.open_grant(job, recipient_key)
        self._check_receipt(
            job.receipt,
            job.signature,
            evidence=evidence,
            expected={
                "job": job.id,
                "spec_sha256": job.spec_sha256,
                "model": grant.model,
                "model_sha256": grant.model_sha256,
                "model_blob_sha256": grant.model_blob_sha256,
                "metrics_sha256": hashlib.sha256(canonical_json(grant.metrics)).hexdigest(),
            },
        )
        return TrainingOutcome(
            job=job,
            metrics=dict(grant.metrics),
            feature_columns=(),
            phases=job.phases,
            budgets=job.budgets,
            receipt=job.receipt,
            signature=job.signature,
            ledger=self._ledger(job.receipt, job.signature),
        )

    def fetch_model(
        self,
        job_id: str,
        recipient_key: x25519.X25519PrivateKey,
        *,
        evidence: tuple[str, float] | None = None,
    ) -> FetchedModel:
        """Download a finished job's encrypted model, open this recipient's grant, decrypt it here.

        Guarantees: the ciphertext, the plaintext ONNX and the metrics are exactly those the
        enclave's signed receipt names; the receipt is signed by an attested enclave (the one whose
        ``evidence`` is given — kept from submitting or approving — or the one attested now) and is
        in the transparency log.
        """
        job = self.job(job_id)
        if job.status != "done":
            raise InputError("input.malformed", f"job {job_id} is {job.status}: it has no model yet")
        grant = self.open_grant(job, recipient_key)
        blob = self._client._request("GET", f"/v1/jobs/{job_id}/model").content
        if hashlib.sha256(blob).hexdigest() != grant.model_blob_sha256:
            raise ReceiptError(
                "receipt.mismatch", "the platform returned another model blob than the grant names"
            )
        onnx_bytes = decrypt_bytes(grant.model_key, blob, expected_content_type="model/onnx")
        model_sha256 = hashlib.sha256(onnx_bytes).hexdigest()
        if model_sha256 != grant.model_sha256:
            raise ReceiptError("receipt.mismatch", "the decrypted model is not the one the enclave trained")
        self._check_receipt(
            job.receipt,
            job.signature,
            evidence=evidence,
            expected={
                "job": job.id,
                "spec_sha256": job.spec_sha256,
                "model": grant.model,
                "model_sha256": model_sha256,
                "model_blob_sha256": grant.model_blob_sha256,
                "metrics_sha256": hashlib.sha256(canonical_json(grant.metrics)).hexdigest(),
            },
        )
        if public_hex(recipient_key) not in job.receipt.get("recipients", []):
            raise ReceiptError("receipt.mismatch", "the receipt does not name this recipient")
        ledger = self._ledger(job.receipt, job.signature)
        return FetchedModel(
            job_id=job.id,
            model_id=grant.model,
            onnx_bytes=onnx_bytes,
            model_sha256=model_sha256,
            metrics=dict(grant.metrics),
            input_columns=_onnx_columns(onnx_bytes),
            receipt=job.receipt,
            signature=job.signature,
            ledger=ledger,
        )

    def _check_receipt(
        self,
        receipt: dict[str, Any],
        signature: str,
        *,
        evidence: tuple[str, float] | None,
        expected: Mapping[str, object],
    ) -> AttestationResult:
        """Verify a ``train`` receipt's signature against attested evidence and its fields."""
        if not receipt or receipt.get("kind") != "train":
            raise ReceiptError("receipt.malformed", "the job has no train receipt")
        if evidence is not None:
            attestation = verify_evidence_at(evidence[0], evidence[1], self._policy())
        else:
            attestation = self._client._attestation()
        if receipt.get("enclave_key") != attestation.signing_public_key.hex():
            raise ReceiptError(
                "receipt.mismatch",
                "the receipt was signed by another enclave instance than the one attested: pass the "
                "evidence kept when the job was submitted or approved",
            )
        verify_receipt(receipt, signature, attestation)
        for name, value in expected.items():
            if value is not None and receipt.get(name) != value:
                raise ReceiptError("receipt.mismatch", f"receipt field {name!r} does not describe this job")
        return attestation

    def _ledger(self, receipt: dict[str, Any], signature: str) -> dict[str, Any] | None:
        if not self._client.verify_ledger:
            return None
        return self._client.ledger.recheck(receipt, signature).to_dict()

    def _policy(self) -> AppraisalPolicy:
        if self._client.policy is None:
            raise InputError("input.malformed", "an appraisal policy is required to check receipts")
        return self._client.policy


def verify_evidence_at(evidence_json: str, attested_at: float, policy: AppraisalPolicy) -> AttestationResult:
    """Verify saved evidence under ``policy`` as of the time it was first verified.

    A training receipt may be signed long after the request was sealed (approvals take time);
    the enclave's signing key is fixed for its whole life, so evidence that was valid when it was
    used proves every later receipt signed with the key it binds.
    """
    bundle = EvidenceBundle.from_json(evidence_json)
    return verify_evidence(
        bundle, nonce=bundle.nonce, policy=policy, now=datetime.fromtimestamp(attested_at, tz=UTC)
    )


def _onnx_columns(onnx_bytes: bytes) -> tuple[str, ...]:
    """The input column names the enclave stored in the ONNX model's metadata (empty if none)."""
    import onnx

    try:
        model = onnx.load_from_string(onnx_bytes)
    except Exception as exc:  # onnx raises DecodeError and others
        raise CryptoError("crypto.malformed", "the decrypted model is not ONNX") from exc
    for prop in model.metadata_props:
        if prop.key == "sealedml.input_columns":
            with contextlib.suppress(ValueError):
                return tuple(str(c) for c in json.loads(prop.value))
    return ()
