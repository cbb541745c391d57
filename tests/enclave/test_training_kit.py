"""Shared parties for the training tests (data owners, recipients, a requester) and the grant tests.

The other ``test_training_*`` modules import the helpers from here (``enclave.test_training_kit``);
everything is real: real datasets, real stream encryption, real HPKE, real Ed25519 approvals.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519
from cryptography.hazmat.primitives.hpke import AEAD, KDF, KEM, Suite
from sklearn.datasets import load_breast_cancer
from sklearn.model_selection import train_test_split

from sealedml.crypto.envelope import Kind, canonical_json, parse
from sealedml.crypto.request import SealedRequest, open_response, seal_request
from sealedml.crypto.signing import verify_signature
from sealedml.crypto.stream import decrypt_bytes
from sealedml.datasets.files import PARQUET, EncryptedDataset, dataset_config_json, encrypt_table
from sealedml.enclave.datasets import TrainingLimits
from sealedml.enclave.platforms import SimulatedTEE
from sealedml.enclave.runtime import Enclave, Reply
from sealedml.enclave.training import open_model_grant, seal_model_grant
from sealedml.errors import CryptoError, InputError, RequestError
from sealedml.training_spec import approval_message, parse_job_spec, spec_digest

MEASUREMENT = "ab" * 48
CANCER_LABEL = "diagnosis"


def new_enclave(platform_dir: Path, limits: TrainingLimits | None = None, **options: Any) -> Enclave:
    """A real in-process enclave on the simulated platform stored in ``platform_dir``."""
    return Enclave(
        platform=SimulatedTEE.open(platform_dir), measurement=MEASUREMENT, training_limits=limits, **options
    )


def breast_cancer_table() -> pa.Table:
    """The Wisconsin breast cancer data (569 rows, 30 float features, 0/1 ``diagnosis``)."""
    data = load_breast_cancer()
    columns = {name: pa.array(data.data[:, j]) for j, name in enumerate(data.feature_names)}
    columns[CANCER_LABEL] = pa.array(data.target.astype(np.int64))
    return pa.table(columns)


def declared_bounds(table: pa.Table, label: str) -> dict[str, list[float]]:
    """Public per-feature ranges, as a data owner would declare them (widened to whole numbers)."""
    bounds = {}
    for name in table.column_names:
        if name != label:
            values = table.column(name).to_numpy()
            bounds[name] = [float(np.floor(values.min())), float(np.ceil(values.max()) + 1)]
    return bounds


@dataclass
class Recipient:
    """Someone who may receive a model key: an X25519 key pair."""

    key: x25519.X25519PrivateKey = field(default_factory=x25519.X25519PrivateKey.generate)

    @property
    def public_hex(self) -> str:
        return self.key.public_key().public_bytes_raw().hex()


@dataclass
class Owner:
    """A data owner: its encrypted dataset and its Ed25519 approval key."""

    dataset_id: str
    dataset: EncryptedDataset
    approval_key: ed25519.Ed25519PrivateKey = field(default_factory=ed25519.Ed25519PrivateKey.generate)

    @classmethod
    def create(cls, dataset_id: str, table: pa.Table, content_type: str = PARQUET) -> Owner:
        return cls(dataset_id, encrypt_table(table, content_type=content_type, chunk_size=4096))

    @property
    def approval_public(self) -> bytes:
        return self.approval_key.public_key().public_bytes_raw()

    def config(self, epsilon_total: float | None = None) -> bytes:
        return dataset_config_json(
            self.dataset, approval_public_key=self.approval_public, epsilon_total=epsilon_total
        )

    def provision(
        self,
        enclave: Enclave,
        *,
        epsilon_total: float | None = None,
        config: bytes | None = None,
        blob: bytes | None = None,
    ) -> tuple[Reply, dict[str, Any]]:
        """Seal the dataset config to the enclave and hand it the blob; return reply and answer."""
        request = seal_request(
            enclave_public_key=enclave_key(enclave),
            op="provision_dataset",
            model=self.dataset_id,
            payload=config if config is not None else self.config(epsilon_total),
        )
        reply = enclave.handle(
            "provision_dataset",
            {"dataset": self.dataset_id, "client": f"owner-{self.dataset_id}"},
            [request.envelope, self.dataset.blob if blob is None else blob],
        )
        answer = json.loads(
            open_response(
                reply.parts[1], response_key=request.response_key, request_id=request.header.request_id
            )
        )
        return reply, answer

    def approval_request(
        self,
        enclave_public_key: bytes,
        digest: str,
        signer: ed25519.Ed25519PrivateKey | None = None,
        now: int | None = None,
    ) -> SealedRequest:
        """The owner's sealed approval of spec ``digest`` for its dataset."""
        signature = (signer or self.approval_key).sign(approval_message(self.dataset_id, digest))
        return seal_request(
            enclave_public_key=enclave_public_key,
            op="approve",
            model=self.dataset_id,
            payload=json.dumps({"spec_sha256": digest, "signature": signature.hex()}).encode(),
            now=now,
        )

    def approve(
        self,
        enclave: Enclave,
        digest: str,
        signer: ed25519.Ed25519PrivateKey | None = None,
        now: int | None = None,
    ) -> Reply:
        request = self.approval_request(enclave_key(enclave), digest, signer, now)
        return enclave.handle("approve", {"dataset": self.dataset_id}, [request.envelope])


def enclave_key(enclave: Enclave) -> bytes:
    return bytes.fromhex(enclave.info()["hpke_public_key"])


def job_spec(datasets: list[str], recipients: list[Recipient], **fields: Any) -> dict[str, Any]:
    """A job spec with a fresh job id; ``fields`` override the defaults."""
    spec: dict[str, Any] = {
        "job": uuid.uuid4().hex,
        "model": f"model-{uuid.uuid4().hex[:8]}",
        "datasets": datasets,
        "label": CANCER_LABEL,
        "algorithm": "logistic_regression",
        "recipients": [r.public_hex for r in recipients],
    }
    spec.update(fields)
    return spec


def digest_of(spec: dict[str, Any]) -> str:
    return spec_digest(parse_job_spec(spec))


@dataclass
class Trained:
    """A finished job as the requester and the host see it."""

    reply: Reply
    answer: dict[str, Any]
    request: SealedRequest

    def part(self, name: str) -> bytes:
        return self.reply.parts[self.reply.header["layout"].index(name)]


def seal_job(enclave: Enclave, spec: dict[str, Any], now: int | None = None) -> SealedRequest:
    return seal_request(
        enclave_public_key=enclave_key(enclave),
        op="train",
        model=spec["model"],
        payload=json.dumps(spec).encode(),
        now=now,
    )


def train(
    enclave: Enclave,
    spec: dict[str, Any],
    blobs: list[bytes],
    request: SealedRequest | None = None,
) -> Trained:
    """Submit a sealed job spec with the dataset blobs; open the requester's response."""
    sealed = request or seal_job(enclave, spec)
    reply = enclave.handle(
        "train",
        {"model": spec["model"], "client": "requester", "job": spec["job"], "datasets": spec["datasets"]},
        [sealed.envelope, *blobs],
    )
    answer = json.loads(
        open_response(reply.parts[1], response_key=sealed.response_key, request_id=sealed.header.request_id)
    )
    return Trained(reply, answer, sealed)


def approve_and_train(enclave: Enclave, owners: list[Owner], spec: dict[str, Any]) -> Trained:
    digest = digest_of(spec)
    for owner in owners:
        owner.approve(enclave, digest)
    return train(enclave, spec, [o.dataset.blob for o in owners])


def recipient_model(trained: Trained, recipient: Recipient) -> bytes:
    """What a recipient does with a finished job: see :func:`open_model`."""
    return open_model(trained.reply.header, list(trained.reply.parts), recipient)


def open_model(header: dict[str, Any], parts: list[bytes], recipient: Recipient) -> bytes:
    """Open the recipient's grant, check the blob's digest, decrypt the ONNX model."""
    grants = {g["recipient"]: bytes.fromhex(g["grant"]) for g in header["grants"]}
    grant = open_model_grant(grants[recipient.public_hex], recipient.key)
    blob = parts[header["layout"].index("model_blob")]
    assert hashlib.sha256(blob).hexdigest() == grant.model_blob_sha256 == header["model_blob_sha256"]
    onnx_bytes = decrypt_bytes(grant.model_key, blob, expected_content_type="model/onnx")
    assert hashlib.sha256(onnx_bytes).hexdigest() == grant.model_sha256 == header["model_sha256"]
    return onnx_bytes


def onnx_labels(onnx_bytes: bytes, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Run the model as the enclave evaluated it: onnxruntime on CPU with one intra-op thread.

    (With several threads a forest's vote can sum in another order, and an exact 50/50 tie
    may then break the other way.)
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(onnx_bytes, sess_options=options, providers=["CPUExecutionProvider"])
    label, probabilities = session.run(None, {session.get_inputs()[0].name: features.astype(np.float32)})
    return np.asarray(label), np.asarray(probabilities)


def validation_rows(
    x: np.ndarray, y: np.ndarray, *, seed: int = 0, fraction: float = 0.25
) -> tuple[np.ndarray, np.ndarray]:
    """The validation rows of a non-DP job, recomputed independently with scikit-learn."""
    _, validation = train_test_split(np.arange(len(y)), test_size=fraction, random_state=seed, stratify=y)
    validation = np.sort(validation)
    return x[validation], y[validation]


def verify_receipt(enclave: Enclave, reply: Reply) -> dict[str, Any]:
    receipt = reply.header["receipt"]
    assert receipt["enclave_key"] == enclave.info()["signing_public_key"]
    verify_signature(
        bytes.fromhex(receipt["enclave_key"]),
        canonical_json(receipt),
        bytes.fromhex(reply.header["signature"]),
    )
    return receipt


# -- tests of the model-key grant format ----------------------------------------------------------


def _grant(recipient: Recipient, **overrides: Any) -> bytes:
    fields: dict[str, Any] = {
        "model_id": "m1",
        "job": "job-1",
        "model_key": bytes(range(32)),
        "model_blob_sha256": "aa" * 32,
        "model_sha256": "bb" * 32,
        "spec_sha256": "cc" * 32,
        "metrics": {"accuracy": 0.9},
    }
    fields.update(overrides)
    return seal_model_grant(recipient.key.public_key().public_bytes_raw(), **fields)


def test_grant_opens_for_its_recipient_with_key_and_metrics() -> None:
    alice = Recipient()
    grant = open_model_grant(_grant(alice), alice.key)
    assert grant.model_key == bytes(range(32))
    assert (grant.model, grant.job, grant.spec_sha256) == ("m1", "job-1", "cc" * 32)
    assert grant.metrics == {"accuracy": 0.9}


def test_grant_does_not_open_for_anyone_else() -> None:
    alice, mallory = Recipient(), Recipient()
    sealed = _grant(alice)
    with pytest.raises(RequestError) as caught:
        open_model_grant(sealed, mallory.key)
    assert caught.value.code == "request.wrong_recipient"
    # Even ignoring the key id in the header, the HPKE body does not open under another key.
    envelope = parse(sealed, Kind.REQUEST)
    suite = Suite(KEM.X25519, KDF.HKDF_SHA256, AEAD.AES_128_GCM)
    with pytest.raises((InvalidTag, ValueError)):
        suite.decrypt(envelope.body, mallory.key, info=envelope.prefix)
    assert suite.decrypt(envelope.body, alice.key, info=envelope.prefix)  # the same call opens for alice


def test_tampered_grant_fails_authentication() -> None:
    alice = Recipient()
    sealed = bytearray(_grant(alice))
    sealed[-5] ^= 0x01
    with pytest.raises(CryptoError) as caught:
        open_model_grant(bytes(sealed), alice.key)
    assert caught.value.code == "crypto.auth_failed"


def test_a_sealed_request_of_another_op_is_not_a_grant() -> None:
    alice = Recipient()
    other = seal_request(
        enclave_public_key=alice.key.public_key().public_bytes_raw(), op="predict", model="m1", payload=b"{}"
    ).envelope
    with pytest.raises(InputError) as caught:
        open_model_grant(other, alice.key)
    assert caught.value.code == "input.malformed"
