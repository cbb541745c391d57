"""Execution receipts: what the enclave did, signed with its attested Ed25519 key.

A receipt is a JSON object; its signature covers the canonical JSON encoding (sorted keys, no
spaces). Anyone holding the enclave's evidence can check that the signing key is the one bound in
the attested ``report_data``, hence that the job ran on the measured code.
"""

from __future__ import annotations

import hashlib
from typing import Any

from sealedml.crypto.envelope import canonical_json
from sealedml.crypto.signing import SigningKey

RECEIPT_VERSION = 1


def build_receipt(
    signer: SigningKey,
    *,
    kind: str,
    job: str,
    request_id: str,
    model_id: str,
    model_sha256: str,
    model_blob_sha256: str,
    request: bytes,
    response: bytes,
    client: str,
    rows: int,
    measurement: str,
    tee: str,
    issued_at: int,
) -> tuple[dict[str, Any], str]:
    """Return ``(receipt, signature_hex)`` for one job; the signature covers every field."""
    receipt: dict[str, Any] = {
        "v": RECEIPT_VERSION,
        "kind": kind,
        "job": job,
        "request_id": request_id,
        "model": model_id,
        "model_sha256": model_sha256,
        "model_blob_sha256": model_blob_sha256,
        "input_sha256": hashlib.sha256(request).hexdigest(),
        "output_sha256": hashlib.sha256(response).hexdigest(),
        "client": client,
        "rows": rows,
        "measurement": measurement,
        "tee": tee,
        "enclave_key": signer.public_bytes.hex(),
        "issued_at": issued_at,
    }
    return receipt, signer.sign(canonical_json(receipt)).hex()


def build_train_receipt(
    signer: SigningKey,
    *,
    job: str,
    request_id: str,
    model_id: str,
    model_sha256: str,
    model_blob_sha256: str,
    spec_sha256: str,
    datasets: list[dict[str, Any]],
    recipients: list[str],
    published: bool,
    metrics: dict[str, Any],
    epsilon_spent: float | None,
    request: bytes,
    response: bytes,
    client: str,
    measurement: str,
    tee: str,
    issued_at: int,
) -> tuple[dict[str, Any], str]:
    """Return ``(receipt, signature_hex)`` for a training job; the signature covers every field.

    Guarantees the receipt binds: the exact job spec (``spec_sha256``, the digest every owner
    approved), each dataset blob used with its privacy budget spent and remaining after the job,
    the model produced (plaintext ONNX and encrypted blob digests), who received its key, the
    released metrics (``metrics_sha256`` of their canonical JSON) and the epsilon this job spent.
    Row counts and schemas are not in it: the host stores receipts.
    """
    receipt: dict[str, Any] = {
        "v": RECEIPT_VERSION,
        "kind": "train",
        "job": job,
        "request_id": request_id,
        "model": model_id,
        "model_sha256": model_sha256,
        "model_blob_sha256": model_blob_sha256,
        "spec_sha256": spec_sha256,
        "datasets": datasets,
        "recipients": recipients,
        "published": published,
        "metrics_sha256": hashlib.sha256(canonical_json(metrics)).hexdigest(),
        "epsilon_spent": epsilon_spent,
        "input_sha256": hashlib.sha256(request).hexdigest(),
        "output_sha256": hashlib.sha256(response).hexdigest(),
        "client": client,
        "measurement": measurement,
        "tee": tee,
        "enclave_key": signer.public_bytes.hex(),
        "issued_at": issued_at,
    }
    return receipt, signer.sign(canonical_json(receipt)).hex()
