"""Preparing a provider's model for publication: ONNX validation and scikit-learn conversion."""

from __future__ import annotations

import json
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sealedml.errors import InputError, ModelError

COLUMNS_METADATA_KEY = "sealedml.input_columns"
MAX_MODEL_FILE = 1024 * 1024 * 1024


@dataclass(frozen=True)
class PreparedModel:
    """A validated ONNX model and the input columns it expects, ready to encrypt."""

    onnx_bytes: bytes
    input_columns: tuple[str, ...]


def _validate_onnx(data: bytes) -> Any:
    import onnx

    try:
        model = onnx.load_from_string(data)
        onnx.checker.check_model(model)
    except Exception as exc:  # onnx raises DecodeError, ValidationError and others
        raise ModelError("model.invalid_onnx", f"not a valid ONNX model: {type(exc).__name__}") from exc
    if len(model.graph.input) != 1:
        raise ModelError("model.invalid_onnx", "the model must take exactly one input tensor")
    return model


def _width(model: Any) -> int | None:
    dims = model.graph.input[0].type.tensor_type.shape.dim
    if len(dims) == 2 and dims[1].HasField("dim_value"):
        return int(dims[1].dim_value)
    return None


def from_estimator(estimator: Any, columns: Sequence[str] | None = None) -> PreparedModel:
    """Convert a fitted scikit-learn estimator (or pipeline) to ONNX with skl2onnx.

    Classifiers are exported with a plain probability tensor (no ZipMap). Column names come from
    ``columns`` or the estimator's ``feature_names_in_``.
    """
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.base import is_classifier

    names = list(columns) if columns else [str(c) for c in getattr(estimator, "feature_names_in_", [])]
    width = int(getattr(estimator, "n_features_in_", len(names) or 0))
    if not width:
        raise InputError("input.malformed", "the estimator is not fitted (no n_features_in_)")
    if not names:
        names = [f"x{i}" for i in range(width)]
    if len(names) != width:
        raise InputError(
            "input.schema_mismatch", f"estimator takes {width} features, {len(names)} columns given"
        )
    options = {"zipmap": False} if is_classifier(estimator) else None
    try:
        onnx_model = to_onnx(
            estimator, initial_types=[("input", FloatTensorType([None, width]))], options=options
        )
    except Exception as exc:  # skl2onnx raises many types for unsupported estimators
        raise ModelError("model.invalid_onnx", f"skl2onnx cannot convert this estimator: {exc}") from exc
    entry = onnx_model.metadata_props.add()
    entry.key, entry.value = COLUMNS_METADATA_KEY, json.dumps(names)
    return PreparedModel(onnx_model.SerializeToString(), tuple(names))


def prepare_model_file(path: Path, columns: Sequence[str] | None = None) -> PreparedModel:
    """Load ``path`` (``.onnx``, or a pickled scikit-learn estimator ``.pkl``/``.pickle``/``.joblib``).

    Pickles execute code when loaded: only load your own. Column names come from ``columns``, the
    model's ``sealedml.input_columns`` metadata, the estimator, or ``x0..xN`` as a last resort.
    """
    if not path.is_file():
        raise InputError("input.malformed", f"no such model file: {path}")
    if path.stat().st_size > MAX_MODEL_FILE:
        raise InputError("input.too_large", "model file is larger than 1 GiB")
    suffix = path.suffix.lower()
    if suffix in (".pkl", ".pickle", ".joblib"):
        try:
            if suffix == ".joblib":
                import joblib

                estimator = joblib.load(path)
            else:
                with path.open("rb") as handle:
                    estimator = pickle.load(handle)  # noqa: S301 - the provider's own model file
        except Exception as exc:
            raise InputError("input.malformed", f"cannot unpickle {path.name}: {type(exc).__name__}") from exc
        return from_estimator(estimator, columns)
    return prepare_onnx(path.read_bytes(), columns)


def prepare_onnx(data: bytes, columns: Sequence[str] | None = None) -> PreparedModel:
    """Validate ONNX bytes and settle the input column names (see :func:`prepare_model_file`)."""
    model = _validate_onnx(data)
    names = list(columns or [])
    if not names:
        for prop in model.metadata_props:
            if prop.key == COLUMNS_METADATA_KEY:
                try:
                    names = [str(c) for c in json.loads(prop.value)]
                except ValueError:
                    names = []
    width = _width(model)
    if not names:
        if width is None:
            raise InputError("input.malformed", "the model has no fixed input width: pass the column names")
        names = [f"x{i}" for i in range(width)]
    if width is not None and len(names) != width:
        raise InputError("input.schema_mismatch", f"model takes {width} features, {len(names)} columns given")
    if len(set(names)) != len(names):
        raise InputError("input.malformed", "column names must be distinct")
    return PreparedModel(data, tuple(names))
