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


def _column_type(dtype: Any) -> str:
    if pd.api.types.is_bool_dtype(dtype):
        return "bool"
    if pd.api.types.is_integer_dtype(dtype):
        return "int"
    if pd.api.types.is_float_dtype(dtype):
        return "float"
    if pd.api.types.is_datetime64_any_dtype(dtype):
        return "datetime"
    if isinstance(dtype, pd.CategoricalDtype):
        return "category"
    return "string"


def table_schema(path: Path, *, batch_rows: int = 65_536) -> tuple[list[tuple[str, str]], int]:
    """Return ``([(column, type), ...], rows)`` of a CSV or Parquet file, streaming it batch by batch.

    Types are ``float``, ``int``, ``bool``, ``datetime``, ``category`` or ``string``; a column that
    is integer in one batch and float in another is ``float``.
    """
    rows, types = 0, {}
    order: list[str] = []
    for frame in iter_table(path, batch_rows):
        rows += len(frame)
        for column in frame.columns:
            kind = _column_type(frame[column].dtype)
            if column not in types:
                order.append(str(column))
                types[str(column)] = kind
            elif types[str(column)] != kind:
                types[str(column)] = "float" if {types[str(column)], kind} == {"int", "float"} else "string"
    if not order:
        raise InputError("input.malformed", f"{path.name} has no columns")
    return [(column, types[column]) for column in order], rows
