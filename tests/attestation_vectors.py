"""Locate the real-hardware attestation vectors shipped beside the repository (never copied into it)."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

VECTORS_DIR = Path(
    os.environ.get(
        "SEALEDML_ATTESTATION_VECTORS", Path(__file__).resolve().parents[2] / "shared" / "attestation-vectors"
    )
)


def vector_path(*parts: str) -> Path:
    """Return the path of a vector file; fail the test loudly if the vectors are not installed."""
    path = VECTORS_DIR.joinpath(*parts)
    if not path.is_file():
        pytest.fail(
            f"attestation vector {path} is missing: put ../shared/attestation-vectors beside the repository "
            "or set SEALEDML_ATTESTATION_VECTORS"
        )
    return path


def read_vector(*parts: str) -> bytes:
    """Return the bytes of a vector file."""
    return vector_path(*parts).read_bytes()


def expected_fields(tee_dir: str) -> dict[str, dict[str, object]]:
    """Return the folder's expected_fields.json keyed by file name."""
    entries = json.loads(read_vector(tee_dir, "expected_fields.json"))
    return {entry["file"]: entry for entry in entries}


def at(text: str) -> datetime:
    """Parse an ISO 8601 UTC time used to pin 'now' for an expiring vector."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)
