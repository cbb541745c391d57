"""Streaming batch predictions: a CSV or Parquet file in, a file of predictions out, in order.

The file is read ``shard_rows`` rows at a time; each shard is sealed to the attested enclave (the
cluster identity when the platform runs workers on Ray) as a normal ``predict`` request and
streamed to ``POST /v1/models/{id}/batch`` as it is made. The answer streams back in shard order;
each sealed response is opened here, its receipt checked (signed by the attested key, covering
exactly the bytes sent and received, logged in the transparency log) and its rows appended to the
output file. Memory holds one shard of input and one of output, plus 80 bytes per shard.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sealedml.client._data import count_rows, iter_table, select_features
from sealedml.client._receipts import verify_receipt
from sealedml.crypto.request import open_response, seal_request
from sealedml.enclave import payload
from sealedml.enclave.framing import decode_frame, encode_frame
from sealedml.errors import InputError, NetworkError, ReceiptError, error_from_dict

if TYPE_CHECKING:
    from sealedml.client._sdk import SealedMLClient

__all__ = ["BatchResult", "predict_batch"]

BATCH_MEDIA_TYPE = "application/x-sealedml-frames"
DEFAULT_SHARD_ROWS = 10_000
DEFAULT_WINDOW = 4
BATCH_TIMEOUT = 600.0

Progress = Callable[[int, int | None], None]
"""Called with ``(rows done, total rows or None)`` after each shard's predictions are written."""


@dataclass(frozen=True)
class _Pending:
    request_id: str
    response_key: bytes
    rows: int
    input_sha256: str


@dataclass
class BatchResult:
    """What a batch produced: rows and shards written, and each shard's job id (in order)."""

    rows: int = 0
    shards: int = 0
    job_ids: list[str] = field(default_factory=list)
    output: Path | None = None


class _Writer:
    """Appends prediction columns to a Parquet (pyarrow, one row group per shard) or CSV file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.parquet = path.suffix.lower() in (".parquet", ".pq")
        self._writer: Any = None
        self._started = False

    def write(self, labels: np.ndarray, probabilities: np.ndarray | None) -> None:
        import pyarrow as pa

        columns: dict[str, Any] = {"prediction": labels}
        if probabilities is not None:
            for j in range(probabilities.shape[1]):
                columns[f"p_{j}"] = probabilities[:, j]
        table = pa.table(columns)
        if self.parquet:
            import pyarrow.parquet as pq

            if self._writer is None:
                self._writer = pq.ParquetWriter(self.path, table.schema)
            self._writer.write_table(table)
        else:
            import pyarrow.csv as pcsv

            with self.path.open("ab" if self._started else "wb") as handle:
                pcsv.write_csv(table, handle, pcsv.WriteOptions(include_header=not self._started))
        self._started = True

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        elif not self._started and not self.parquet:
            self.path.write_text("prediction\n")


def _frames(chunks: Iterator[bytes]) -> Iterator[tuple[dict[str, Any], list[bytes]]]:
    buffer = bytearray()
    for chunk in chunks:
        buffer += chunk
        while len(buffer) >= 4:
            size = int.from_bytes(buffer[:4], "big")
            if len(buffer) < 4 + size:
                break
            payload_bytes = bytes(buffer[4 : 4 + size])
            del buffer[: 4 + size]
            yield decode_frame(payload_bytes)
    if buffer:
        raise NetworkError("network.bad_response", "the batch answer ends inside a frame")


def predict_batch(
    client: SealedMLClient,
    model: str,
    source: Path,
    output: Path,
    *,
    shard_rows: int = DEFAULT_SHARD_ROWS,
    window: int = DEFAULT_WINDOW,
    progress: Progress | None = None,
    sent: Progress | None = None,
) -> BatchResult:
    """Predict on every row of ``source`` (CSV or Parquet) and write the predictions to ``output``.

    Guarantees on return: ``output`` (Parquet for ``.parquet``/``.pq``, else CSV) holds one row per
    input row, in input order; every shard was readable only by the attested enclave, every answer
    only by this client, and every receipt was checked (signature by the attested key, request and
    response digests, job, row count, and the transparency log unless ``verify_ledger`` is off).
    A failed shard raises its error after the shards before it were written. ``sent(rows,
    total)`` follows the rows sealed and uploaded, ``progress(rows, total)`` the rows whose
    answers were verified and written (over HTTP/1.1 the answers start once the upload is done).
    """
    if shard_rows < 1 or window < 1:
        raise InputError("input.malformed", "shard_rows and window must be positive")
    info = client.get_model(model)
    attestation = client._attestation()
    pending: list[_Pending | None] = []
    total = count_rows(source)

    def shards() -> Iterator[bytes]:
        uploaded = 0
        for index, frame in enumerate(iter_table(source, shard_rows)):
            features = select_features(frame, info.input_columns)
            body = payload.pack({"columns": list(info.input_columns)}, {"features": features})
            sealed = seal_request(
                enclave_public_key=attestation.hpke_public_key,
                op="predict",
                model=info.id,
                payload=body,
                rows=int(features.shape[0]),
            )
            pending.append(
                _Pending(
                    sealed.header.request_id,
                    sealed.response_key,
                    int(features.shape[0]),
                    hashlib.sha256(sealed.envelope).hexdigest(),
                )
            )
            yield encode_frame({"shard": index}, (sealed.envelope,))
            uploaded += int(features.shape[0])
            if sent is not None:
                sent(uploaded, total)

    result = BatchResult(output=output)
    writer = _Writer(output)
    try:
        with client._http.stream(
            "POST",
            f"/v1/models/{info.id}/batch",
            params={"window": window},
            content=shards(),
            headers={"Content-Type": BATCH_MEDIA_TYPE},
            timeout=BATCH_TIMEOUT,
        ) as response:
            if response.status_code >= 400:
                response.read()
                try:
                    body = response.json()
                except ValueError:
                    body = None
                error = body.get("error") if isinstance(body, dict) else None
                if isinstance(error, dict):
                    raise error_from_dict(error, status=response.status_code)
                raise NetworkError("network.bad_response", f"batch failed with HTTP {response.status_code}")
            ended = False
            for header, parts in _frames(response.iter_bytes()):
                if header.get("end") is True:
                    ended = True
                    break
                index = header.get("shard")
                if index != result.shards or not isinstance(index, int) or index >= len(pending):
                    raise ReceiptError(
                        "receipt.mismatch", f"the batch answer is out of order at shard {index}"
                    )
                if "error" in header:
                    raise error_from_dict(header["error"])
                if header.get("skipped"):
                    raise ReceiptError("receipt.mismatch", f"shard {index} was skipped without an error")
                shard = pending[index]
                if shard is None:
                    raise ReceiptError("receipt.mismatch", f"shard {index} was answered twice")
                _accept(client, attestation, info.id, shard, header, parts, writer, result)
                pending[index] = None  # answered: only its slot is kept
                if progress is not None:
                    progress(result.rows, total)
            if not ended or result.shards != len(pending):
                raise NetworkError(
                    "network.bad_response",
                    f"the batch answer stopped after {result.shards} of {len(pending)} shards",
                )
    finally:
        writer.close()
    return result


def _accept(
    client: SealedMLClient,
    attestation: Any,
    model_id: str,
    shard: _Pending,
    header: dict[str, Any],
    parts: list[bytes],
    writer: _Writer,
    result: BatchResult,
) -> None:
    """Check one shard's answer and append its rows to the output."""
    if len(parts) != 1:
        raise ReceiptError("receipt.mismatch", "a shard's answer must carry one sealed response")
    response = parts[0]
    receipt, signature, job_id = header.get("receipt"), header.get("signature"), header.get("job_id")
    if not isinstance(receipt, dict) or not isinstance(signature, str) or not isinstance(job_id, str):
        raise ReceiptError("receipt.malformed", "a shard's answer lacks its receipt")
    verify_receipt(receipt, signature, attestation)
    expected = {
        "input_sha256": shard.input_sha256,
        "output_sha256": hashlib.sha256(response).hexdigest(),
        "request_id": shard.request_id,
        "model": model_id,
        "job": job_id,
        "rows": shard.rows,
    }
    for name, value in expected.items():
        if receipt.get(name) != value:
            raise ReceiptError("receipt.mismatch", f"receipt field {name!r} does not describe this shard")
    if client.verify_ledger:
        client.ledger.check_receipt(receipt, signature, header.get("ledger"))
    plain = open_response(response, response_key=shard.response_key, request_id=shard.request_id)
    meta, arrays = payload.unpack(plain)
    labels = arrays.get("label")
    if meta.get("job") != job_id or labels is None or labels.shape[0] != shard.rows:
        raise ReceiptError("receipt.mismatch", "a shard's answer does not describe its rows")
    writer.write(
        np.asarray(labels), np.asarray(arrays["probabilities"]) if "probabilities" in arrays else None
    )
    result.rows += shard.rows
    result.shards += 1
    result.job_ids.append(job_id)
