"""Reading tables (CSV, Parquet) into feature batches, and writing predictions out."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sealedml.errors import InputError

SUPPORTED_INPUTS = (".csv", ".parquet", ".pq")


def select_features(frame: pd.DataFrame, columns: Sequence[str]) -> np.ndarray:
    """Return the model's ``columns`` of ``frame`` as a float32 matrix, in the model's order.

    Raises ``input.schema_mismatch`` when a model column is missing and ``input.malformed`` when a
    value is not numeric. Extra columns (identifiers, labels) are ignored.
    """
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise InputError(
            "input.schema_mismatch",
            f"{len(missing)} column(s) the model needs are missing from the input: {shown}",
        )
    subset = frame.loc[:, list(columns)]
    for name in subset.columns:
        if not pd.api.types.is_numeric_dtype(subset[name]) and not pd.api.types.is_bool_dtype(subset[name]):
            converted = pd.to_numeric(subset[name], errors="coerce")
            bad = subset[name][converted.isna() & subset[name].notna()]
            if len(bad):
                raise InputError(
                    "input.malformed", f"column {name!r} has a non-numeric value at row {bad.index[0]}"
                )
            subset = subset.assign(**{name: converted})
    return subset.to_numpy(dtype=np.float32, copy=True)


def count_rows(path: Path) -> int | None:
    """Return the number of data rows in ``path`` cheaply if possible (for progress bars)."""
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        return int(pq.ParquetFile(path).metadata.num_rows)
    if suffix == ".csv":
        with path.open("rb") as handle:
            lines = sum(chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 20), b""))
        return max(lines - 1, 0)
    return None


def iter_table(path: Path, batch_rows: int) -> Iterator[pd.DataFrame]:
    """Yield ``path`` as data frames of at most ``batch_rows`` rows, never loading it whole."""
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_INPUTS:
        raise InputError("input.malformed", f"unsupported input format {suffix!r}: use CSV or Parquet")
    if not path.is_file():
        raise InputError("input.malformed", f"no such file: {path}")
    if suffix == ".csv":
        try:
            yield from pd.read_csv(path, chunksize=batch_rows)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            raise InputError("input.malformed", f"cannot parse {path.name} as CSV: {exc}") from exc
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows):
            yield batch.to_pandas()
    except (pa.ArrowException, OSError) as exc:
        raise InputError("input.malformed", f"cannot read {path.name} as Parquet: {exc}") from exc


def prediction_records(labels: np.ndarray, probabilities: np.ndarray | None) -> list[dict[str, Any]]:
    """Return one JSON-ready record per row: the label and, if released, the scores."""
    records: list[dict[str, Any]] = []
    for i, label in enumerate(labels.tolist()):
        record: dict[str, Any] = {"prediction": label}
        if probabilities is not None:
            record["probabilities"] = [float(p) for p in probabilities[i]]
        records.append(record)
    return records


def write_predictions(
    path: Path, labels: np.ndarray, probabilities: np.ndarray | None, *, append: bool = False
) -> None:
    """Write predictions as CSV (``prediction``, ``p_0``...) or JSON Lines, by file suffix."""
    if path.suffix.lower() in (".json", ".jsonl"):
        with path.open("a" if append else "w", encoding="utf-8") as handle:
            for record in prediction_records(labels, probabilities):
                handle.write(json.dumps(record) + "\n")
        return
    frame = pd.DataFrame({"prediction": labels})
    if probabilities is not None:
        for j in range(probabilities.shape[1]):
            frame[f"p_{j}"] = probabilities[:, j]
    frame.to_csv(path, mode="a" if append else "w", header=not append, index=False)
