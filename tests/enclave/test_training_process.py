"""Training through a real simulated enclave *process*, over the framed host/enclave protocol."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from enclave.test_training_kit import (
    Owner,
    Recipient,
    digest_of,
    onnx_labels,
    open_model,
)
from sealedml.crypto.request import open_response, seal_request
from sealedml.datasets.genomics import LABEL, CohortParameters, generate_cohort
from sealedml.enclave import payload
from sealedml.errors import RequestError
from sealedml.tee.client import EnclaveClient
from sealedml.tee.simulated import launch_simulated

TIMEOUT = 120


class Host:
    """The untrusted host's view: it relays opaque bytes to the enclave process and stores replies."""

    def __init__(self, client: EnclaveClient) -> None:
        self.client = client
        info, _ = self.call("hello", {})
        self.enclave_key = bytes.fromhex(info["hpke_public_key"])

    def call(self, op: str, header: dict, parts: tuple[bytes, ...] = ()) -> tuple[dict, list[bytes]]:
        return self.client.channel.call(op, header, parts).result(timeout=TIMEOUT)


@pytest.fixture
def host(tmp_path: Path):
    client = launch_simulated(tmp_path / "platform", workers=2)
    try:
        yield Host(client)
    finally:
        client.close()


def test_provision_approve_train_publish_and_predict_across_the_process_boundary(host: Host) -> None:
    cohort = generate_cohort(CohortParameters(n_genes=200, n_patients=200, n_informative=10, seed=5))
    owners = [Owner.create(f"site-{i}", h.to_table()) for i, h in enumerate(cohort.hospitals)]
    for owner in owners:
        request = seal_request(
            enclave_public_key=host.enclave_key,
            op="provision_dataset",
            model=owner.dataset_id,
            payload=owner.config(),
        )
        header, parts = host.call(
            "provision_dataset",
            {"dataset": owner.dataset_id, "client": "owner"},
            (request.envelope, owner.dataset.blob),
        )
        answer = json.loads(
            open_response(parts[1], response_key=request.response_key, request_id=request.header.request_id)
        )
        assert answer["schema_sha256"] == owner.dataset.schema_sha256 and header["generation"] == 0

    recipient = Recipient()
    spec = {
        "job": "joint-1",
        "model": "response-model",
        "datasets": [o.dataset_id for o in owners],
        "label": LABEL,
        "algorithm": "random_forest",
        "params": {"n_estimators": 30},
        "recipients": [recipient.public_hex],
        "publish": True,
    }
    job = seal_request(
        enclave_public_key=host.enclave_key,
        op="train",
        model=spec["model"],
        payload=json.dumps(spec).encode(),
    )
    train_header = {
        "model": spec["model"],
        "client": "researcher",
        "job": spec["job"],
        "datasets": spec["datasets"],
    }
    blobs = tuple(o.dataset.blob for o in owners)

    with pytest.raises(RequestError) as missing:
        host.call("train", train_header, (job.envelope, *blobs))
    assert missing.value.code == "request.approvals_missing"  # the code crosses the process boundary

    digest = digest_of(spec)
    for owner in owners:
        approval = owner.approval_request(host.enclave_key, digest)
        header, _ = host.call("approve", {"dataset": owner.dataset_id}, (approval.envelope,))
        assert header["spec_sha256"] == digest

    retry = seal_request(
        enclave_public_key=host.enclave_key,
        op="train",
        model=spec["model"],
        payload=json.dumps(spec).encode(),
    )
    header, parts = host.call("train", train_header, (retry.envelope, *blobs))
    assert header["layout"] == ["model_blob", "response", "model_config"]
    assert [p["phase"] for p in header["phases"]] == [
        "decrypting",
        "preparing",
        "training",
        "exporting",
        "evaluating",
        "encrypting",
    ]
    answer = json.loads(
        open_response(parts[1], response_key=retry.response_key, request_id=retry.header.request_id)
    )
    assert answer["metrics"]["rows_used"] == 200

    onnx_bytes = open_model(header, parts, recipient)

    # The published model answers predictions in the enclave, with the same labels the recipient gets.
    rows = cohort.hospitals[0].expression[:8]
    predict = seal_request(
        enclave_public_key=host.enclave_key,
        op="predict",
        model=spec["model"],
        payload=payload.pack({"columns": answer["feature_columns"]}, {"features": rows}),
        rows=8,
    )
    _, predicted = host.call(
        "predict", {"model": spec["model"], "client": "c", "job": "p1"}, (predict.envelope,)
    )
    _meta, outputs = payload.unpack(
        open_response(predicted[0], response_key=predict.response_key, request_id=predict.header.request_id)
    )
    local_labels, _ = onnx_labels(onnx_bytes, rows)
    assert np.array_equal(outputs["label"], local_labels)
