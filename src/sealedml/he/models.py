"""Models the server evaluates on ciphertexts: plaintext weights, column-packed encrypted inputs.

An :class:`HEModel` is one or two affine layers, with a polynomial activation (degree <= 2)
between them, and a final non-linearity (sigmoid/softmax) that only the client applies, after
decryption. The provider publishes it as JSON (:meth:`HEModel.to_json`); the weights are in
plaintext on the platform in this mode (the data owner never sees them).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sealedml import safejson
from sealedml.errors import HEError
from sealedml.he.polymlp import PolyMLPClassifier

__all__ = [
    "MAX_COLUMNS",
    "MAX_OUTPUTS",
    "MAX_WEIGHT",
    "HELayer",
    "HEModel",
    "PolyMLPClassifier",
    "he_model_from_sklearn",
]

FORMAT = "sealedml-he-model"
KINDS = ("linear", "logistic", "poly_mlp")
OUTPUTS = ("identity", "sigmoid", "softmax")
MAX_COLUMNS = 4096
MAX_HIDDEN = 256
MAX_OUTPUTS = 256
#: Bound on every weight/bias magnitude: keeps products inside the CKKS precision budget.
MAX_WEIGHT = 1e6


@dataclass(frozen=True, eq=False)
class HELayer:
    """An affine layer ``x -> weights @ x + bias`` with ``weights`` of shape (outputs, inputs)."""

    weights: np.ndarray
    bias: np.ndarray


@dataclass(frozen=True, eq=False)
class HEModel:
    """A model evaluable under CKKS: affine layers, optional quadratic activation, client-side output.

    Guarantees (checked by :meth:`validate`, run by the constructor helpers and :meth:`from_json`):
    1 or 2 layers whose shapes chain, finite weights bounded by ``MAX_WEIGHT``, an activation of
    degree <= 2 exactly when there are 2 layers, ``classes`` present for classifiers and sized to
    the output.
    """

    kind: str
    input_columns: tuple[str, ...]
    layers: tuple[HELayer, ...]
    output: str
    activation: tuple[float, ...] | None = None
    classes: tuple[Any, ...] | None = None

    def __post_init__(self) -> None:
        self.validate()

    @property
    def preset(self) -> str:
        """The :data:`sealedml.he.params.PRESETS` entry a client must generate keys with."""
        return "linear" if len(self.layers) == 1 else "mlp"

    @property
    def depth(self) -> int:
        """Multiplicative levels one evaluation consumes."""
        return len(self.layers) + (len(self.layers) - 1)

    def depth_for(self, layout: str) -> int:
        """Multiplicative levels one evaluation consumes in ``layout`` ("columns" or "rows").

        The rows layout spends one more level on a 1-layer model (the 0/1 mask after the rotations);
        a 2-layer model folds the mask into its last layer, as in the columns layout.
        """
        if layout == "rows" and len(self.layers) == 1:
            return 2
        return self.depth

    @property
    def needs_relin_keys(self) -> bool:
        """Whether evaluation multiplies ciphertexts (and so needs relinearization keys)."""
        return len(self.layers) > 1

    @property
    def outputs(self) -> int:
        """Scores per row the server returns."""
        return int(self.layers[-1].weights.shape[0])

    def validate(self) -> None:
        """Raise ``he.model_invalid`` naming the first violated bound."""
        if self.kind not in KINDS:
            raise HEError("he.model_invalid", f"unknown HE model kind {self.kind!r}")
        if self.output not in OUTPUTS:
            raise HEError("he.model_invalid", f"unknown output {self.output!r}")
        columns = self.input_columns
        if not 0 < len(columns) <= MAX_COLUMNS or len(set(columns)) != len(columns):
            raise HEError("he.model_invalid", f"input_columns must be 1..{MAX_COLUMNS} unique names")
        if not all(isinstance(c, str) and 0 < len(c) <= 256 for c in columns):
            raise HEError("he.model_invalid", "every input column name must be a 1..256 character string")
        if not 1 <= len(self.layers) <= 2:
            raise HEError("he.model_invalid", "an HE model has 1 or 2 layers")
        width = len(columns)
        for index, layer in enumerate(self.layers):
            w, b = layer.weights, layer.bias
            if (
                not isinstance(w, np.ndarray)
                or not isinstance(b, np.ndarray)
                or w.ndim != 2
                or b.shape != (w.shape[0],)
                or w.shape[1] != width
            ):
                raise HEError("he.model_invalid", f"layer {index} has inconsistent shapes")
            if not 0 < w.shape[0] <= (MAX_OUTPUTS if index == len(self.layers) - 1 else MAX_HIDDEN):
                raise HEError("he.model_invalid", f"layer {index} has {w.shape[0]} units (too many)")
            if not (np.all(np.isfinite(w)) and np.all(np.isfinite(b))):
                raise HEError("he.model_invalid", f"layer {index} has NaN or infinite weights")
            if np.abs(w).max() > MAX_WEIGHT or (b.size and np.abs(b).max() > MAX_WEIGHT):
                raise HEError("he.model_invalid", f"layer {index} has a weight beyond ±{MAX_WEIGHT:g}")
            width = w.shape[0]
        if (len(self.layers) == 2) != (self.activation is not None):
            raise HEError("he.model_invalid", "a 2-layer model needs an activation, a 1-layer model none")
        if self.activation is not None and (
            len(self.activation) != 3
            or not all(math.isfinite(c) and abs(c) <= MAX_WEIGHT for c in self.activation)
        ):
            raise HEError("he.model_invalid", "activation must be 3 finite coefficients (c0, c1, c2)")
        if self.output == "identity":
            if self.classes is not None:
                raise HEError("he.model_invalid", "a regression model has no classes")
        else:
            expected = 2 if self.output == "sigmoid" else self.outputs
            if self.output == "sigmoid" and self.outputs != 1:
                raise HEError("he.model_invalid", "a sigmoid output has exactly one score")
            if self.output == "softmax" and self.outputs < 2:
                raise HEError("he.model_invalid", "a softmax output has at least two scores")
            if self.classes is None or len(self.classes) != expected:
                raise HEError("he.model_invalid", f"a classifier needs {expected} classes")
            if not all(isinstance(c, str | int | float) and not isinstance(c, bool) for c in self.classes):
                raise HEError("he.model_invalid", "classes must be strings or numbers")

    def to_json(self) -> bytes:
        """Return the canonical JSON form (:meth:`from_json` reads it back to an equal model)."""
        return json.dumps(
            {
                "format": FORMAT,
                "version": 1,
                "kind": self.kind,
                "input_columns": list(self.input_columns),
                "layers": [
                    {"weights": layer.weights.tolist(), "bias": layer.bias.tolist()} for layer in self.layers
                ],
                "activation": list(self.activation) if self.activation is not None else None,
                "output": self.output,
                "classes": list(self.classes) if self.classes is not None else None,
            },
            sort_keys=True,
            separators=(",", ":"),
            allow_nan=False,
        ).encode()

    @classmethod
    def from_json(cls, data: bytes, *, max_bytes: int = 16 * 2**20) -> HEModel:
        """Parse and validate a model; raises only ``he.model_invalid`` for bad input."""
        if len(data) > max_bytes:
            raise HEError("he.model_invalid", f"HE model JSON is {len(data)} bytes (max {max_bytes})")
        try:
            doc = safejson.loads(data)
        except (ValueError, RecursionError) as exc:
            raise HEError("he.model_invalid", "HE model is not JSON") from exc
        if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("version") != 1:
            raise HEError("he.model_invalid", f"not a {FORMAT} version 1 document")
        try:
            layers = tuple(
                HELayer(_array(layer["weights"], 2), _array(layer["bias"], 1)) for layer in doc["layers"]
            )
            activation = doc.get("activation")
            classes = doc.get("classes")
            columns = doc["input_columns"]
            if not isinstance(columns, list) or not isinstance(doc["layers"], list):
                raise TypeError("bad list")
            return cls(
                kind=doc["kind"],
                input_columns=tuple(columns),
                layers=layers,
                output=doc["output"],
                activation=tuple(float(c) for c in activation) if activation is not None else None,
                classes=tuple(classes) if classes is not None else None,
            )
        except HEError:
            raise
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise HEError("he.model_invalid", "HE model JSON has missing or mistyped fields") from exc

    def clear_scores(self, features: np.ndarray) -> np.ndarray:
        """Return, in plaintext, the scores (rows x outputs) the server computes on ciphertexts."""
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != len(self.input_columns):
            raise HEError(
                "he.shape_mismatch",
                f"features have shape {x.shape}, expected (rows, {len(self.input_columns)})",
            )
        first = self.layers[0]
        h = x @ first.weights.T + first.bias
        if len(self.layers) == 1:
            return h
        c0, c1, c2 = self.activation or (0.0, 0.0, 0.0)
        act = c0 + c1 * h + c2 * h * h
        last = self.layers[1]
        return act @ last.weights.T + last.bias

    def finalize(self, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Apply the client-side output: (labels, probabilities) for classifiers, (values, None) else."""
        s = np.asarray(scores, dtype=np.float64)
        if s.ndim == 1:
            s = s.reshape(-1, 1)
        if s.shape[1] != self.outputs:
            raise HEError("he.shape_mismatch", f"{s.shape[1]} scores per row, the model has {self.outputs}")
        if self.output == "identity":
            return (s[:, 0] if self.outputs == 1 else s), None
        classes = np.asarray(self.classes, dtype=object)
        if self.output == "sigmoid":
            p = 1.0 / (1.0 + np.exp(-np.clip(s[:, 0], -500, 500)))
            return classes[(s[:, 0] > 0).astype(int)], np.column_stack([1.0 - p, p])
        shifted = np.exp(s - s.max(axis=1, keepdims=True))
        probs = shifted / shifted.sum(axis=1, keepdims=True)
        return classes[np.argmax(s, axis=1)], probs


def _array(value: Any, ndim: int) -> np.ndarray:
    if not isinstance(value, list):
        raise TypeError("not a list")
    array = np.asarray(value, dtype=np.float64)
    if array.ndim != ndim:
        raise ValueError("wrong rank")
    return array


def _classes(values: Any) -> tuple[Any, ...]:
    return tuple(v.item() if hasattr(v, "item") else v for v in values)


def _fold_scaler(scaler: Any, layer: HELayer) -> HELayer:
    """Fold ``x -> (x - mean) / scale`` into ``layer`` so the model takes raw features."""
    mean = getattr(scaler, "mean_", None)
    scale = getattr(scaler, "scale_", None)
    n = layer.weights.shape[1]
    mean = np.zeros(n) if mean is None else np.asarray(mean, dtype=np.float64)
    scale = np.ones(n) if scale is None else np.asarray(scale, dtype=np.float64)
    weights = layer.weights / scale
    return HELayer(weights, layer.bias - weights @ mean)


def he_model_from_sklearn(estimator: Any, input_columns: Sequence[str]) -> HEModel:
    """Convert a fitted scikit-learn estimator into an :class:`HEModel` computing the same scores.

    Accepts LogisticRegression (binary, multinomial), LinearRegression, Ridge, SGDClassifier
    (log_loss, binary), SGDRegressor, :class:`PolyMLPClassifier`, and a ``Pipeline`` of a fitted
    ``StandardScaler`` followed by one of those (the scaler is folded into the first layer).
    Raises ``he.model_unsupported`` for anything else and ``he.model_invalid`` if the estimator's
    feature count differs from ``input_columns``.
    """
    from sklearn.linear_model import LinearRegression, LogisticRegression, Ridge, SGDClassifier, SGDRegressor
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    columns = tuple(input_columns)
    scaler = None
    if isinstance(estimator, Pipeline):
        steps = [step for _, step in estimator.steps if step not in (None, "passthrough")]
        if len(steps) == 2 and isinstance(steps[0], StandardScaler):
            scaler, estimator = steps
        elif len(steps) != 1:
            raise HEError(
                "he.model_unsupported",
                "only Pipeline(StandardScaler, estimator) can be folded into an HE model",
            )
        else:
            estimator = steps[0]
    name = type(estimator).__name__
    if isinstance(estimator, PolyMLPClassifier):
        _check_fitted(estimator, "coefs_")
        layers = [
            HELayer(np.asarray(w, float), np.asarray(b, float))
            for w, b in zip(estimator.coefs_, estimator.intercepts_, strict=True)
        ]
        classes = _classes(estimator.classes_)
        output = "sigmoid" if len(classes) == 2 else "softmax"
        kind, activation = "poly_mlp", tuple(float(c) for c in estimator.activation)
    elif isinstance(estimator, LogisticRegression | SGDClassifier):
        if isinstance(estimator, SGDClassifier) and estimator.loss != "log_loss":
            raise HEError(
                "he.model_unsupported",
                f"SGDClassifier(loss={estimator.loss!r}) has no probabilities; use log_loss",
            )
        _check_fitted(estimator, "coef_")
        classes = _classes(estimator.classes_)
        coef = np.asarray(estimator.coef_, float)
        if len(classes) > 2 and (
            isinstance(estimator, SGDClassifier) or getattr(estimator, "multi_class", "auto") == "ovr"
        ):
            raise HEError(
                "he.model_unsupported",
                f"{name} is one-vs-rest for {len(classes)} classes; use a multinomial LogisticRegression",
            )
        layers = [HELayer(coef, np.asarray(estimator.intercept_, float).reshape(coef.shape[0]))]
        output = "sigmoid" if len(classes) == 2 else "softmax"
        kind, activation = "logistic", None
    elif isinstance(estimator, LinearRegression | Ridge | SGDRegressor):
        _check_fitted(estimator, "coef_")
        coef = np.atleast_2d(np.asarray(estimator.coef_, float))
        bias = np.atleast_1d(np.asarray(estimator.intercept_, float))
        if bias.shape[0] != coef.shape[0]:
            bias = np.full(coef.shape[0], float(bias[0]))
        layers = [HELayer(coef, bias)]
        kind, output, activation, classes = "linear", "identity", None, None
    else:
        raise HEError(
            "he.model_unsupported",
            f"{name} cannot be evaluated under HE (linear, logistic and PolyMLPClassifier only)",
        )
    if layers[0].weights.shape[1] != len(columns):
        raise HEError(
            "he.model_invalid",
            f"the estimator takes {layers[0].weights.shape[1]} features, {len(columns)} columns given",
        )
    if scaler is not None:
        layers[0] = _fold_scaler(scaler, layers[0])
    return HEModel(
        kind=kind,
        input_columns=columns,
        layers=tuple(layers),
        output=output,
        activation=activation,
        classes=classes if output != "identity" else None,
    )


def _check_fitted(estimator: Any, attribute: str) -> None:
    if not hasattr(estimator, attribute):
        raise HEError("he.model_invalid", f"{type(estimator).__name__} is not fitted")
