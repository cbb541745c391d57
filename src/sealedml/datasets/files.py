"""The data owner's side of an encrypted dataset: file format, schema digest, encryption, config.

A dataset blob is a chunked AES-256-GCM stream (:mod:`sealedml.crypto.stream`) whose content type
is ``dataset/parquet`` (a Parquet file) or ``dataset/csv`` (UTF-8 CSV, header row). The schema —
column names and types — and the row count are inside the encrypted file; what the owner declares
to the enclave is only the schema's digest (:func:`sealedml.training_spec.schema_digest`), sealed
with the data key in its dataset config.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from sealedml.crypto.stream import DEFAULT_CHUNK_SIZE, encrypt_bytes, iter_encrypt, new_data_key
from sealedml.errors import InputError
from sealedml.training_spec import canonical_type, schema_digest

PARQUET = "dataset/parquet"
CSV = "dataset/csv"


def describe_schema(schema: pa.Schema) -> list[tuple[str, str]]:
    """Return the ordered ``(column name, canonical type)`` pairs the enclave will see."""
    return [(f.name, canonical_type(str(f.type))) for f in schema]


def schema_sha256(schema: pa.Schema) -> str:
    """Return the schema digest to declare in the dataset config for a file with this schema."""
    return schema_digest(describe_schema(schema))


def table_bytes(table: pa.Table, content_type: str = PARQUET) -> bytes:
    """Serialise ``table`` as the plaintext of a dataset stream (Parquet or CSV)."""
    sink = io.BytesIO()
    if content_type == PARQUET:
        pq.write_table(table, sink)
    elif content_type == CSV:
        pa_csv.write_csv(table, sink)
    else:
        raise InputError("input.malformed", f"unknown dataset content type {content_type!r}")
    return sink.getvalue()


def file_schema(path: Path, content_type: str) -> pa.Schema:
    """Read a dataset file's schema without loading its rows (Parquet footer, CSV first block)."""
    try:
        if content_type == PARQUET:
            return pq.read_schema(path)
        if content_type == CSV:
            with pa_csv.open_csv(path) as reader:
                return reader.schema
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise InputError("input.malformed", f"{path.name} is not a readable dataset file") from exc
    raise InputError("input.malformed", f"unknown dataset content type {content_type!r}")


@dataclass(frozen=True)
class EncryptedDataset:
    """An encrypted dataset and what its owner needs to provision it."""

    blob: bytes
    key: bytes
    blob_sha256: str
    schema_sha256: str
    content_type: str


def encrypt_table(
    table: pa.Table,
    *,
    content_type: str = PARQUET,
    key: bytes | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> EncryptedDataset:
    """Encrypt ``table`` as a dataset stream under ``key`` (fresh if None)."""
    data_key = key if key is not None else new_data_key()
    blob = encrypt_bytes(
        data_key, table_bytes(table, content_type), content_type=content_type, chunk_size=chunk_size
    )
    return EncryptedDataset(
        blob=blob,
        key=data_key,
        blob_sha256=hashlib.sha256(blob).hexdigest(),
        schema_sha256=schema_sha256(table.schema),
        content_type=content_type,
    )


def encrypt_dataset_file(
    src: Path, dst: Path, *, content_type: str, key: bytes | None = None
) -> EncryptedDataset:
    """Encrypt a dataset file chunk by chunk into ``dst`` (files larger than memory stream through).

    The returned ``blob`` is empty: the ciphertext is in ``dst``; its digest is computed while
    streaming.
    """
    data_key = key if key is not None else new_data_key()
    schema = file_schema(src, content_type)
    digest = hashlib.sha256()
    with src.open("rb") as source, dst.open("wb") as target:
        pieces = iter(lambda: source.read(DEFAULT_CHUNK_SIZE), b"")
        for out in iter_encrypt(data_key, pieces, content_type=content_type):
            digest.update(out)
            target.write(out)
    return EncryptedDataset(
        blob=b"",
        key=data_key,
        blob_sha256=digest.hexdigest(),
        schema_sha256=schema_digest(describe_schema(schema)),
        content_type=content_type,
    )


def dataset_config_json(
    dataset: EncryptedDataset, *, approval_public_key: bytes, epsilon_total: float | None = None
) -> bytes:
    """Return the dataset config a data owner seals to the enclave (op ``provision_dataset``).

    It contains the data key: seal it (HPKE request) and never store or send it in clear.
    """
    return json.dumps(
        {
            "dataset_key": dataset.key.hex(),
            "dataset_blob_sha256": dataset.blob_sha256,
            "approval_public_key": approval_public_key.hex(),
            "schema_sha256": dataset.schema_sha256,
            "epsilon_total": epsilon_total,
        },
        sort_keys=True,
    ).encode()


__all__ = [
    "CSV",
    "PARQUET",
    "EncryptedDataset",
    "dataset_config_json",
    "describe_schema",
    "encrypt_dataset_file",
    "encrypt_table",
    "file_schema",
    "schema_sha256",
    "table_bytes",
]
