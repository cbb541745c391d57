"""Datasets inside the enclave: the owner's sealed configuration, the budget state, and decryption.

A dataset travels as one chunked AES-256-GCM stream (:mod:`sealedml.crypto.stream`) whose content
type is ``dataset/parquet`` (a Parquet file) or ``dataset/csv`` (UTF-8 CSV with a header row).
Everything about the data — column names, types, row count — is inside the ciphertext; the host
sees only the blob's size and digest. The owner releases the data key to the attested enclave in
a sealed request carrying a :class:`DatasetConfig`; the enclave keeps it as a :class:`DatasetState`
(config plus privacy budget spent), sealed to its platform for the host to store.

Only this module and :mod:`sealedml.enclave.training` ever hold decrypted rows, and only for the
duration of one job. Error messages never include column names, values or row counts: they
cross the host in clear.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, replace
from typing import Any

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from sealedml.crypto.stream import StreamDecryptor
from sealedml.errors import CryptoError, InputError
from sealedml.training_spec import MAX_DP_EPSILON, canonical_type, loads_json, schema_digest

PARQUET = "dataset/parquet"
CSV = "dataset/csv"
DATASET_CONTENT_TYPES = (PARQUET, CSV)
STATE_VERSION = 1
MAX_EPSILON_TOTAL = 1000.0
EPSILON_TOLERANCE = 1e-9
_FEED = 1024 * 1024


def _is_digest(value: object) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


@dataclass(frozen=True)
class DatasetConfig:
    """What a data owner seals to the enclave with its dataset key (the host never sees it).

    ``schema_sha256`` is :func:`sealedml.training_spec.schema_digest` of the file's columns;
    ``approval_public_key`` (Ed25519) verifies the owner's approval of each job; ``epsilon_total``,
    if set, is the privacy budget of the dataset: then only differentially private jobs may use it.
    """

    dataset_key: bytes
    dataset_blob_sha256: str
    approval_public_key: bytes
    schema_sha256: str
    epsilon_total: float | None = None

    @classmethod
    def from_dict(cls, data: object) -> DatasetConfig:
        """Validate and build a config; raises ``input.malformed`` naming the bad field."""
        if not isinstance(data, dict):
            raise InputError("input.malformed", "dataset config must be a JSON object")
        allowed = {
            "dataset_key",
            "dataset_blob_sha256",
            "approval_public_key",
            "schema_sha256",
            "epsilon_total",
        }
        if set(data) - allowed:
            raise InputError(
                "input.malformed", f"dataset config has unknown fields {sorted(set(data) - allowed)}"
            )
        try:
            key = bytes.fromhex(data["dataset_key"])
            approval = bytes.fromhex(data["approval_public_key"])
            blob = data["dataset_blob_sha256"]
            schema = data["schema_sha256"]
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError("input.malformed", "dataset config lacks a key, digest or approval key") from exc
        if len(key) != 32:
            raise InputError("input.malformed", "dataset_key must be 32 bytes")
        if len(approval) != 32:
            raise InputError("input.malformed", "approval_public_key must be a 32-byte Ed25519 public key")
        if not _is_digest(blob) or not _is_digest(schema):
            raise InputError(
                "input.malformed", "dataset_blob_sha256 and schema_sha256 must be SHA-256 hex digests"
            )
        total = data.get("epsilon_total")
        if total is not None and (
            not isinstance(total, int | float)
            or isinstance(total, bool)
            or not math.isfinite(total)
            or not 0 < total <= MAX_EPSILON_TOTAL
        ):
            raise InputError("input.malformed", f"epsilon_total must be a number in (0, {MAX_EPSILON_TOTAL}]")
        return cls(
            dataset_key=key,
            dataset_blob_sha256=blob,
            approval_public_key=approval,
            schema_sha256=schema,
            epsilon_total=None if total is None else float(total),
        )

    @classmethod
    def from_json(cls, raw: bytes) -> DatasetConfig:
        """Parse the owner's provisioning message; raises ``input.malformed``."""
        try:
            data = loads_json(raw)
        except (ValueError, RecursionError) as exc:
            raise InputError("input.malformed", "dataset config is not JSON") from exc
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON form (contains the dataset key: only ever sealed or sent encrypted)."""
        return {
            "dataset_key": self.dataset_key.hex(),
            "dataset_blob_sha256": self.dataset_blob_sha256,
            "approval_public_key": self.approval_public_key.hex(),
            "schema_sha256": self.schema_sha256,
            "epsilon_total": self.epsilon_total,
        }

    def to_json(self) -> bytes:
        """Return the canonical JSON bytes of :meth:`to_dict`."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True)
class DatasetState:
    """A dataset as the enclave keeps it: the owner's config and the privacy budget spent so far.

    ``generation`` increases by one with every job that spends budget, so the enclave can refuse an
    older sealed state than the one it holds (rollback detection within one enclave instance).
    """

    dataset_id: str
    config: DatasetConfig
    epsilon_spent: float = 0.0
    generation: int = 0

    @property
    def epsilon_remaining(self) -> float | None:
        """Budget left, or None when the owner set no budget."""
        total = self.config.epsilon_total
        return None if total is None else max(0.0, total - self.epsilon_spent)

    def can_spend(self, epsilon: float, reserved: float = 0.0) -> bool:
        """Whether ``epsilon`` more (on top of ``reserved`` held by running jobs) fits the budget."""
        total = self.config.epsilon_total
        return total is None or self.epsilon_spent + reserved + epsilon <= total + EPSILON_TOLERANCE

    def spend(self, epsilon: float) -> DatasetState:
        """Return the state after a job that spent ``epsilon`` (the generation advances)."""
        return replace(self, epsilon_spent=self.epsilon_spent + epsilon, generation=self.generation + 1)

    def to_json(self) -> bytes:
        """Return the JSON that is sealed to the platform (contains the dataset key)."""
        return json.dumps(
            {
                "v": STATE_VERSION,
                "dataset": self.dataset_id,
                "config": self.config.to_dict(),
                "epsilon_spent": self.epsilon_spent,
                "generation": self.generation,
            },
            sort_keys=True,
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_json(cls, raw: bytes, dataset_id: str) -> DatasetState:
        """Parse an unsealed state and check it belongs to ``dataset_id``; raises ``input.malformed``."""
        try:
            data = loads_json(raw)
            version, owner = data["v"], data["dataset"]
            spent, generation = data["epsilon_spent"], data["generation"]
            config = DatasetConfig.from_dict(data["config"])
        except (UnicodeDecodeError, ValueError, RecursionError, KeyError, TypeError) as exc:
            raise InputError("input.malformed", "sealed dataset state is malformed") from exc
        if version != STATE_VERSION or owner != dataset_id:
            raise InputError("input.malformed", "sealed dataset state belongs to another dataset or version")
        if (
            not isinstance(spent, int | float)
            or isinstance(spent, bool)
            or not 0 <= spent <= MAX_EPSILON_TOTAL + MAX_DP_EPSILON
            or not isinstance(generation, int)
            or isinstance(generation, bool)
            or generation < 0
        ):
            raise InputError("input.malformed", "sealed dataset state has an invalid budget")
        return cls(dataset_id=dataset_id, config=config, epsilon_spent=float(spent), generation=generation)


@dataclass(frozen=True)
class TrainingLimits:
    """What one job may load into enclave memory; above it the job fails with ``input.too_large``."""

    max_plaintext_bytes: int = 512 * 1024 * 1024
    max_rows: int = 1_000_000
    max_columns: int = 20_001
    max_cells: int = 50_000_000


@dataclass(frozen=True)
class DatasetTable:
    """A decrypted dataset: its columns with canonical types and the Arrow table of its rows."""

    columns: tuple[str, ...]
    types: dict[str, str]
    table: pa.Table
    schema_sha256: str
    content_type: str

    @property
    def rows(self) -> int:
        """Number of rows."""
        return int(self.table.num_rows)


def describe_arrow_schema(schema: pa.Schema) -> list[tuple[str, str]]:
    """Return the ordered ``(name, canonical type)`` pairs of an Arrow schema."""
    return [(f.name, canonical_type(str(f.type))) for f in schema]


def _too_large(what: str, limit: int) -> InputError:
    return InputError("input.too_large", f"the dataset exceeds the enclave's limit of {limit} {what}")


def _decrypt(key: bytes, blob: bytes, limits: TrainingLimits) -> tuple[bytes, str]:
    """Decrypt a dataset stream chunk by chunk, refusing to hold more than the plaintext limit."""
    decryptor = StreamDecryptor(key)
    plain = bytearray()
    view = memoryview(blob)
    for start in range(0, len(view), _FEED):
        plain += decryptor.update(view[start : start + _FEED])
        if decryptor.header is not None and decryptor.header.content_type not in DATASET_CONTENT_TYPES:
            raise CryptoError(
                "crypto.malformed", f"stream holds {decryptor.header.content_type!r}, not a dataset"
            )
        if len(plain) > limits.max_plaintext_bytes:
            raise _too_large("bytes", limits.max_plaintext_bytes)
    plain += decryptor.finalize()
    if len(plain) > limits.max_plaintext_bytes:
        raise _too_large("bytes", limits.max_plaintext_bytes)
    header = decryptor.header
    assert header is not None  # finalize() raised otherwise
    if header.content_type not in DATASET_CONTENT_TYPES:
        raise CryptoError("crypto.malformed", f"stream holds {header.content_type!r}, not a dataset")
    return bytes(plain), header.content_type


def _parse(plain: bytes, content_type: str, limits: TrainingLimits) -> pa.Table:
    try:
        if content_type == PARQUET:
            meta = pq.ParquetFile(pa.BufferReader(plain)).metadata
            if meta.num_rows > limits.max_rows:
                raise _too_large("rows", limits.max_rows)
            if meta.num_columns > limits.max_columns:
                raise _too_large("columns", limits.max_columns)
            return pq.read_table(pa.BufferReader(plain))
        return pa_csv.read_csv(pa.BufferReader(plain))
    except (pa.ArrowException, ValueError, OSError, TypeError, KeyError, IndexError) as exc:
        kind = "Parquet" if content_type == PARQUET else "CSV"
        raise InputError("input.malformed", f"the decrypted dataset is not a readable {kind} file") from exc


def decrypt_dataset(config: DatasetConfig, blob: bytes, limits: TrainingLimits) -> DatasetTable:
    """Authenticate, decrypt and parse a dataset blob within ``limits``.

    Guarantees: the blob is the one the owner provisioned (``input.blob_mismatch`` otherwise),
    every chunk authenticates under the owner's key (``crypto.auth_failed``), the plaintext is a
    Parquet or CSV file within the byte, row, column and cell limits (``input.too_large``), and its
    schema hashes to the declared ``schema_sha256`` (``input.schema_mismatch``).
    """
    if hashlib.sha256(blob).hexdigest() != config.dataset_blob_sha256:
        raise InputError(
            "input.blob_mismatch", "the stored dataset blob is not the one its owner provisioned"
        )
    plain, content_type = _decrypt(config.dataset_key, blob, limits)
    table = _parse(plain, content_type, limits)
    del plain
    if table.num_rows > limits.max_rows:
        raise _too_large("rows", limits.max_rows)
    if table.num_columns > limits.max_columns:
        raise _too_large("columns", limits.max_columns)
    if table.num_rows * table.num_columns > limits.max_cells:
        raise _too_large("cells (rows x columns)", limits.max_cells)
    described = describe_arrow_schema(table.schema)
    names = tuple(name for name, _ in described)
    if len(set(names)) != len(names) or not all(names):
        raise InputError("input.malformed", "the dataset's column names must be distinct and non-empty")
    digest = schema_digest(described)
    if digest != config.schema_sha256:
        raise InputError(
            "input.schema_mismatch",
            "the decrypted dataset's schema does not hash to the declared schema_sha256: recompute it "
            "from the same file (sealedml.datasets.files.describe_schema)",
        )
    return DatasetTable(
        columns=names,
        types=dict(described),
        table=table,
        schema_sha256=digest,
        content_type=content_type,
    )


__all__ = [
    "CSV",
    "DATASET_CONTENT_TYPES",
    "PARQUET",
    "DatasetConfig",
    "DatasetState",
    "DatasetTable",
    "TrainingLimits",
    "decrypt_dataset",
    "describe_arrow_schema",
]
