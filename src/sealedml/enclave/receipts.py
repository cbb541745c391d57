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
