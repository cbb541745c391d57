"""Models inside the enclave: configuration from the provider, ONNX loading, inference, output policy.

Only this module holds decrypted model bytes, and only long enough to build an onnxruntime session.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnxruntime as ort

from sealedml import safejson
from sealedml.errors import InputError, ModelError

OUTPUT_MODES = ("probabilities", "rounded", "label")
MAX_COLUMNS = 100_000
BATCH_ROWS = 8192


@dataclass(frozen=True)
class OutputPolicy:
    """What the provider lets clients see: full probabilities, rounded ones, or the label only."""

    mode: str = "probabilities"
    decimals: int = 2

    @classmethod
    def from_dict(cls, data: object) -> OutputPolicy:
        """Validate and build a policy; raises ``input.malformed`` on a bad shape."""
        if data is None:
            return cls()
        if not isinstance(data, dict) or set(data) - {"mode", "decimals"}:
            raise InputError("input.malformed", "output policy must be {mode, decimals}")
        mode = data.get("mode", "probabilities")
        decimals = data.get("decimals", 2)
        if mode not in OUTPUT_MODES:
            raise InputError("input.malformed", f"output policy mode must be one of {OUTPUT_MODES}")
        if not isinstance(decimals, int) or isinstance(decimals, bool) or not 0 <= decimals <= 6:
            raise InputError("input.malformed", "output policy decimals must be 0..6")
        return cls(mode=mode, decimals=decimals)

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON form."""
        return {"mode": self.mode, "decimals": self.decimals}


@dataclass(frozen=True)
class ModelConfig:
    """What the provider seals to the enclave with the model key (the host never sees it)."""

    model_key: bytes
    model_blob_sha256: str
    input_columns: tuple[str, ...]
    output_policy: OutputPolicy
    query_budget: int | None

    @classmethod
    def from_json(cls, raw: bytes) -> ModelConfig:
        """Parse and validate the provider's provisioning message; raises ``input.malformed``."""
        try:
            data = safejson.loads(raw)
            key = bytes.fromhex(data["model_key"])
            blob = data["model_blob_sha256"]
            columns = data["input_columns"]
            budget = data.get("query_budget")
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
            raise InputError("input.malformed", "provisioning message is malformed") from exc
        if len(key) != 32:
            raise InputError("input.malformed", "model key must be 32 bytes")
        if not isinstance(blob, str) or len(blob) != 64:
            raise InputError("input.malformed", "model_blob_sha256 must be a SHA-256 hex digest")
        if (
            not isinstance(columns, list)
            or not 0 < len(columns) <= MAX_COLUMNS
            or not all(isinstance(c, str) and c for c in columns)
            or len(set(columns)) != len(columns)
        ):
            raise InputError("input.malformed", "input_columns must be distinct non-empty names")
        if budget is not None and (not isinstance(budget, int) or isinstance(budget, bool) or budget < 0):
            raise InputError("input.malformed", "query_budget must be a non-negative integer")
        return cls(
            model_key=key,
            model_blob_sha256=blob,
            input_columns=tuple(columns),
            output_policy=OutputPolicy.from_dict(data.get("output_policy")),
            query_budget=budget,
        )

    def to_json(self) -> bytes:
        """Return the JSON form (contains the model key: only ever sealed or sent encrypted)."""
        return json.dumps(
            {
                "model_key": self.model_key.hex(),
                "model_blob_sha256": self.model_blob_sha256,
                "input_columns": list(self.input_columns),
                "output_policy": self.output_policy.to_dict(),
                "query_budget": self.query_budget,
            },
            sort_keys=True,
        ).encode()


@dataclass
class LoadedModel:
    """A decrypted model ready to run, with its per-client usage counters."""

    model_id: str
    config: ModelConfig
    model_sha256: str
    session: ort.InferenceSession
    input_name: str
    usage: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def reserve(self, client: str, rows: int) -> int:
        """Count ``rows`` against ``client``'s budget; raises ``model.budget_exhausted`` if over."""
        with self.lock:
            used = self.usage.get(client, 0)
            budget = self.config.query_budget
            if budget is not None and used + rows > budget:
                raise ModelError(
                    "model.budget_exhausted",
                    f"query budget exhausted: {used} of {budget} rows used, {rows} requested",
                )
            self.usage[client] = used + rows
            return used + rows


def load_model(model_id: str, config: ModelConfig, onnx_bytes: bytes) -> LoadedModel:
    """Build an onnxruntime session from decrypted ONNX bytes and check it fits the config.

    Raises ``model.invalid_onnx`` when the bytes are not a runnable ONNX model and
    ``input.schema_mismatch`` when its input width differs from the declared columns.
    """
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    try:
        session = ort.InferenceSession(onnx_bytes, sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises several unrelated types for a bad model
        raise ModelError("model.invalid_onnx", "the model is not a valid ONNX model") from exc
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise ModelError("model.invalid_onnx", "the model must take exactly one input tensor")
    shape = inputs[0].shape
    width = shape[-1] if len(shape) == 2 else None
    if isinstance(width, int) and width != len(config.input_columns):
        raise InputError(
            "input.schema_mismatch",
            f"model takes {width} features but {len(config.input_columns)} columns were declared",
        )
    return LoadedModel(
        model_id=model_id,
        config=config,
        model_sha256=hashlib.sha256(onnx_bytes).hexdigest(),
        session=session,
        input_name=inputs[0].name,
    )


def _as_matrix(value: Any, rows: int) -> np.ndarray | None:
    """Turn an ONNX output (tensor, or ZipMap's list of dicts) into a float matrix."""
    if isinstance(value, np.ndarray):
        return value.astype(np.float32, copy=False).reshape(rows, -1)
    if isinstance(value, list) and value and isinstance(value[0], dict):
        keys = sorted(value[0])
        return np.array([[row[k] for k in keys] for row in value], dtype=np.float32)
    return None


def run_model(model: LoadedModel, features: np.ndarray) -> dict[str, np.ndarray]:
    """Run ``features`` (rows x columns, float32) in batches and apply the output policy.

    Returns ``{"label": ...}`` plus ``"probabilities"`` unless the policy is label-only. The
    first model output is the label (or regression value); a second one, if any, the scores.
    """
    rows = features.shape[0]
    labels: list[np.ndarray] = []
    scores: list[np.ndarray] = []
    for start in range(0, max(rows, 1), BATCH_ROWS):
        batch = features[start : start + BATCH_ROWS]
        if batch.shape[0] == 0:
            break
        try:
            outputs = model.session.run(None, {model.input_name: batch})
        except Exception as exc:  # onnxruntime errors are not a stable hierarchy
            raise InputError("input.malformed", "the model rejected the input") from exc
        first = np.asarray(outputs[0])
        labels.append(
            first.reshape(batch.shape[0], -1)[:, 0] if first.ndim > 1 and first.shape[-1] == 1 else first
        )
        if len(outputs) > 1:
            matrix = _as_matrix(outputs[1], batch.shape[0])
            if matrix is not None:
                scores.append(matrix)
    label = np.concatenate(labels) if labels else np.zeros((0,), dtype=np.float32)
    if label.dtype.kind not in "biuf":
        raise ModelError("model.invalid_onnx", "the model's first output is not numeric")
    if label.dtype.kind == "u":
        label = label.astype(np.int64)
    policy = model.config.output_policy
    result: dict[str, np.ndarray] = {}
    if label.dtype.kind == "f" and policy.mode == "rounded":
        label = np.round(label, policy.decimals)
    result["label"] = label
    if scores and policy.mode != "label":
        probs = np.concatenate(scores)
        if policy.mode == "rounded":
            probs = np.round(probs, policy.decimals)
        result["probabilities"] = probs
    return result


def check_features(
    model: LoadedModel, columns: object, features: np.ndarray | None, max_rows: int
) -> np.ndarray:
    """Validate a client's feature matrix against the model's declared columns and limits."""
    expected = list(model.config.input_columns)
    if columns != expected:
        given = columns if isinstance(columns, list) else []
        missing = [c for c in expected if c not in given][:5]
        extra = [c for c in given if c not in expected][:5]
        detail = f"missing {missing}, unexpected {extra}" if missing or extra else "order differs"
        raise InputError("input.schema_mismatch", f"columns do not match the model's input schema: {detail}")
    if features is None or features.ndim != 2 or features.shape[1] != len(expected):
        raise InputError("input.malformed", "features must be a rows x columns matrix")
    if features.shape[0] > max_rows:
        raise InputError("input.too_large", f"at most {max_rows} rows per request")
    if features.dtype != np.float32:
        features = features.astype(np.float32)
    if np.isinf(features).any():
        raise InputError("input.malformed", "features contain infinite values")
    return features
