"""The enclave's training engine: decrypted rows in, an encrypted ONNX model and released metrics out.

Everything here runs inside the enclave because it touches plaintext rows or the fresh model key:
assembling the datasets into one matrix, the train/validation split, fitting (scikit-learn, or
diffprivlib for DP jobs), ONNX export with skl2onnx and its parity check against the fitted model,
validation metrics (noised for DP jobs), and encrypting the model and sealing its key to each
recipient. Job-spec validation that needs no data lives in :mod:`sealedml.training_spec`, which
the host runs too.

A model-key *grant* reuses the sealed-request envelope (:mod:`sealedml.crypto.request`): an
HPKE-sealed envelope of op ``model_key`` addressed to the recipient's X25519 key, whose payload
holds the model key and the released metrics. Only that recipient opens it
(:func:`open_model_grant`); the host relays it without being able to read it.
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnxruntime as ort
import pyarrow as pa
from cryptography.hazmat.primitives.asymmetric import x25519
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType
from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss, roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.naive_bayes import GaussianNB
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from sealedml.crypto.request import RecipientKey, seal_request
from sealedml.crypto.stream import encrypt_bytes, new_data_key
from sealedml.enclave import dp
from sealedml.enclave.datasets import (
    DatasetConfig,
    DatasetState,
    DatasetTable,
    TrainingLimits,
    decrypt_dataset,
)
from sealedml.errors import InputError, ModelError
from sealedml.training_spec import MAX_CLASSES, JobSpec, feature_order, loads_json

MODEL_CONTENT_TYPE = "model/onnx"
GRANT_OP = "model_key"
COLUMNS_METADATA_KEY = "sealedml.input_columns"
CLASSES_METADATA_KEY = "sealedml.classes"
PARITY_TOLERANCE = 1e-4
MIN_ROWS = 10
INPUT_NAME = "input"

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Phase:
    """One step of a job and how long it took (wall-clock seconds)."""

    name: str
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON form."""
        return {"phase": self.name, "seconds": round(self.seconds, 6)}


@dataclass
class PhaseLog:
    """Records phases in order and reports each start to an optional progress callback."""

    progress: Progress | None = None
    phases: list[Phase] = field(default_factory=list)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the enclosed block as phase ``name``."""
        if self.progress is not None:
            self.progress(name)
        start = time.perf_counter()
        try:
            yield
        finally:
            self.phases.append(Phase(name, time.perf_counter() - start))


@dataclass(frozen=True)
class TrainedModel:
    """A trained, exported and checked model, with the metrics the job releases."""

    onnx_bytes: bytes
    model_sha256: str
    feature_columns: tuple[str, ...]
    classes: tuple[Any, ...]
    metrics: dict[str, Any]
    epsilon_spent: float | None


@dataclass(frozen=True)
class PackagedModel:
    """A trained model encrypted under a fresh key, with that key sealed to each recipient."""

    blob: bytes
    model_key: bytes
    model_blob_sha256: str
    grants: tuple[tuple[str, bytes], ...]
    """``(recipient public key hex, grant envelope)`` for every recipient of the spec."""


@dataclass(frozen=True)
class ModelGrant:
    """What a recipient learns from its grant: the model key and the job's released metrics."""

    model: str
    job: str
    model_key: bytes
    model_blob_sha256: str
    model_sha256: str
    spec_sha256: str
    metrics: dict[str, Any]


# -- assembling the rows ----------------------------------------------------------------------------


def _label_values(column: pa.ChunkedArray, kind: str) -> list[Any]:
    if column.null_count:
        raise InputError("input.malformed", "the label column has missing values")
    values = column.to_pylist()
    if kind == "boolean":
        return [int(v) for v in values]
    return values


def _encode_labels(spec: JobSpec, values: list[Any], kind: str) -> tuple[np.ndarray, np.ndarray, tuple]:
    """Map label values to class indices; return (indices, kept-row mask, classes)."""
    if kind not in ("integer", "boolean", "string"):
        raise InputError(
            "input.schema_mismatch",
            f"the label column has type {kind}: classification needs integer, boolean or string labels",
        )
    if spec.classes is not None:
        declared_ints = isinstance(spec.classes[0], int)
        if declared_ints != (kind != "string"):
            raise InputError(
                "input.schema_mismatch", "the spec's classes and the label column have different types"
            )
        classes = tuple(spec.classes)
    else:
        classes = tuple(sorted(set(values)))
        if len(classes) > MAX_CLASSES:
            raise InputError("input.schema_mismatch", f"the label has more than {MAX_CLASSES} classes")
    index = {c: i for i, c in enumerate(classes)}
    encoded = np.fromiter((index.get(v, -1) for v in values), dtype=np.int64, count=len(values))
    keep = encoded >= 0
    if not keep.all() and not spec.dp:
        raise InputError("input.schema_mismatch", "some rows have a label outside the spec's classes")
    return encoded, keep, classes


def _feature_matrix(tables: Sequence[DatasetTable], features: Sequence[str]) -> np.ndarray:
    rows = sum(t.rows for t in tables)
    matrix = np.empty((rows, len(features)), dtype=np.float32)
    offset = 0
    for table in tables:
        for j, name in enumerate(features):
            column = table.table.column(name)
            if column.null_count:
                raise InputError("input.malformed", f"feature position {j} has missing values")
            matrix[offset : offset + table.rows, j] = column.to_numpy().astype(np.float32)
        offset += table.rows
    if not np.isfinite(matrix).all():
        raise InputError("input.malformed", "features contain NaN or infinite values (or exceed float32)")
    return matrix


def assemble(spec: JobSpec, tables: Sequence[DatasetTable]) -> tuple[np.ndarray, np.ndarray, tuple, tuple]:
    """Concatenate the datasets' rows into a float32 feature matrix and class indices.

    Guarantees: every dataset has exactly the first one's schema (names, order, canonical types),
    the label and features fit the spec, values are finite. Returns
    ``(features, labels, feature_columns, classes)``. DP jobs silently drop rows whose label is not
    a declared class (an error would reveal that such a row exists).
    """
    first = tables[0]
    for number, table in enumerate(tables[1:], start=1):
        if table.columns != first.columns or table.types != first.types:
            differing = [
                i
                for i, (a, b) in enumerate(zip(table.columns, first.columns, strict=False))
                if a != b or table.types[a] != first.types[b]
            ]
            where = (
                f"first difference at column position {differing[0]}" if differing else "column counts differ"
            )
            raise InputError(
                "input.schema_mismatch",
                f"dataset {spec.datasets[number]!r} does not have the same schema as "
                f"{spec.datasets[0]!r} ({where}): joint jobs need identical schemas",
            )
    features = feature_order(spec, first.columns, first.types)
    kind = first.types[spec.label]
    values: list[Any] = []
    for table in tables:
        values.extend(_label_values(table.table.column(spec.label), kind))
    labels, keep, classes = _encode_labels(spec, values, kind)
    matrix = _feature_matrix(tables, features)
    if not keep.all():
        matrix, labels = matrix[keep], labels[keep]
    return matrix, labels, features, classes


def _insufficient(message: str) -> InputError:
    return InputError("input.insufficient_data", message)


def split(spec: JobSpec, labels: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Return (train indices, validation indices).

    Non-DP jobs: stratified by class with the spec's seed (reproducible). DP jobs: each row goes
    to validation independently with probability ``validation_fraction`` using fresh secret
    randomness, so one row's presence does not move the others.
    """
    rows = labels.shape[0]
    if rows < MIN_ROWS:
        raise _insufficient(f"a job needs at least {MIN_ROWS} labelled rows")
    indices = np.arange(rows)
    if spec.dp:
        in_validation = np.random.default_rng().random(rows) < spec.validation_fraction
        train, validation = indices[~in_validation], indices[in_validation]
    else:
        counts = np.bincount(labels, minlength=n_classes)
        present = counts[counts > 0]
        if present.size < 2:
            raise _insufficient("the label has a single class: there is nothing to classify")
        if present.min() < 2:
            raise _insufficient("every class needs at least two rows for a stratified split")
        try:
            train, validation = train_test_split(
                indices, test_size=spec.validation_fraction, random_state=spec.seed, stratify=labels
            )
        except ValueError as exc:
            raise _insufficient("too few rows per class for the requested validation fraction") from exc
    if train.size == 0 or validation.size == 0:
        raise _insufficient("the split left the training or validation part empty")
    if np.unique(labels[train]).size < 2:
        raise _insufficient("the training part has a single class")
    return np.sort(train), np.sort(validation)


# -- fitting ----------------------------------------------------------------------------------------


def build_estimator(spec: JobSpec) -> Any:
    """Return the unfitted scikit-learn estimator (a Pipeline with scaling where it helps).

    Only allow-listed, validated parameters are passed; every other setting is fixed here.
    """
    p = spec.params
    if spec.algorithm == "logistic_regression":
        classifier: Any = LogisticRegression(
            C=p["C"], max_iter=p["max_iter"], fit_intercept=p["fit_intercept"], class_weight=p["class_weight"]
        )
        return Pipeline([("scale", StandardScaler()), ("classifier", classifier)])
    if spec.algorithm == "gradient_boosting":
        return GradientBoostingClassifier(
            n_estimators=p["n_estimators"],
            learning_rate=p["learning_rate"],
            max_depth=p["max_depth"],
            subsample=p["subsample"],
            min_samples_leaf=p["min_samples_leaf"],
            random_state=spec.seed,
        )
    if spec.algorithm == "random_forest":
        return RandomForestClassifier(
            n_estimators=p["n_estimators"],
            max_depth=p["max_depth"],
            min_samples_leaf=p["min_samples_leaf"],
            max_features=None if p["max_features"] == "all" else p["max_features"],
            class_weight=p["class_weight"],
            random_state=spec.seed,
            n_jobs=1,
        )
    if spec.algorithm == "mlp":
        classifier = MLPClassifier(
            hidden_layer_sizes=tuple(p["hidden_layer_sizes"]),
            activation=p["activation"],
            alpha=p["alpha"],
            learning_rate_init=p["learning_rate_init"],
            max_iter=p["max_iter"],
            random_state=spec.seed,
        )
        return Pipeline([("scale", StandardScaler()), ("classifier", classifier)])
    if spec.algorithm == "naive_bayes":
        return GaussianNB(var_smoothing=p["var_smoothing"])
    raise InputError("input.spec_invalid", f"unknown algorithm {spec.algorithm!r}")


def _fit_plain(spec: JobSpec, x: np.ndarray, y: np.ndarray) -> tuple[Any, list[str]]:
    estimator = build_estimator(spec)
    notes: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            estimator.fit(x, y)
        except (ValueError, FloatingPointError, np.linalg.LinAlgError) as exc:
            raise ModelError("model.training_failed", f"{spec.algorithm} could not be fitted") from exc
    if any(issubclass(w.category, ConvergenceWarning) for w in caught):
        notes.append("did not converge: consider raising max_iter")
    return estimator, notes


def _final_step(estimator: Any) -> Any:
    return estimator.steps[-1][1] if isinstance(estimator, Pipeline) else estimator


# -- export and parity ------------------------------------------------------------------------------


def export_onnx(estimator: Any, features: Sequence[str], classes: Sequence[Any]) -> bytes:
    """Convert a fitted classifier to ONNX (float32 input ``input``, no ZipMap).

    Raises ``model.export_failed`` if skl2onnx cannot convert it. The input column names and the
    class values are stored as model metadata.
    """
    try:
        model = to_onnx(
            estimator,
            initial_types=[(INPUT_NAME, FloatTensorType([None, len(features)]))],
            options={id(_final_step(estimator)): {"zipmap": False}},
        )
    except Exception as exc:  # skl2onnx raises many unrelated types
        raise ModelError(
            "model.export_failed", f"skl2onnx could not convert the model ({type(exc).__name__})"
        ) from exc
    for key, value in ((COLUMNS_METADATA_KEY, list(features)), (CLASSES_METADATA_KEY, list(classes))):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    return bytes(model.SerializeToString())


def onnx_predict(onnx_bytes: bytes, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Run an exported classifier with onnxruntime; return (labels, probabilities).

    Raises ``model.invalid_onnx`` if onnxruntime cannot load or run it.
    """
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    try:
        session = ort.InferenceSession(onnx_bytes, sess_options=options, providers=["CPUExecutionProvider"])
        outputs = session.run(None, {session.get_inputs()[0].name: np.asarray(x, dtype=np.float32)})
    except Exception as exc:  # onnxruntime errors are not a stable hierarchy
        raise ModelError("model.invalid_onnx", "the exported model does not load in onnxruntime") from exc
    if len(outputs) < 2:
        raise ModelError("model.invalid_onnx", "the exported classifier has no probability output")
    return np.asarray(outputs[0]).reshape(-1), np.asarray(outputs[1], dtype=np.float32)


def check_parity(onnx_bytes: bytes, estimator: Any, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Guarantee the ONNX model's probabilities match ``estimator`` on ``x`` within 1e-4.

    ``x`` holds float32-representable values (what the ONNX model receives). Returns the ONNX
    (labels, probabilities); raises ``model.export_mismatch`` when any probability differs more.
    """
    labels, probabilities = onnx_predict(onnx_bytes, x)
    expected = np.asarray(estimator.predict_proba(np.asarray(x, dtype=np.float64)), dtype=np.float64)
    if probabilities.shape != expected.shape:
        raise ModelError(
            "model.export_mismatch",
            f"the ONNX model returns {probabilities.shape[1:]} probabilities, "
            f"scikit-learn {expected.shape[1:]}",
        )
    worst = float(np.max(np.abs(probabilities.astype(np.float64) - expected))) if expected.size else 0.0
    if not worst <= PARITY_TOLERANCE:
        raise ModelError(
            "model.export_mismatch",
            f"ONNX and scikit-learn probabilities differ by up to {worst:.2e} (tolerance {PARITY_TOLERANCE})",
        )
    return labels, probabilities


# -- metrics ----------------------------------------------------------------------------------------


def _full_probabilities(probabilities: np.ndarray, estimator: Any, n_classes: int) -> np.ndarray:
    """Expand probabilities to one column per declared class (absent classes get 0)."""
    present = np.asarray(_final_step(estimator).classes_, dtype=np.int64)
    full = np.zeros((probabilities.shape[0], n_classes), dtype=np.float64)
    full[:, present] = probabilities
    sums = full.sum(axis=1, keepdims=True)
    return full / np.where(sums > 0, sums, 1.0)


def exact_metrics(
    *,
    y_train: np.ndarray,
    y_val: np.ndarray,
    predicted_val: np.ndarray,
    proba_val: np.ndarray,
    classes: tuple[Any, ...],
) -> dict[str, Any]:
    """Validation accuracy, ROC AUC (one-vs-rest macro when multiclass), log loss, counts, balance.

    ROC AUC is None when the validation part lacks a class. Computed from the ONNX model's outputs:
    exactly what a recipient will get.
    """
    k = len(classes)
    labels = list(range(k))
    accuracy = float(np.mean(predicted_val == y_val))
    roc: float | None = None
    if np.unique(y_val).size == k:
        if k == 2:
            roc = float(roc_auc_score(y_val, proba_val[:, 1]))
        else:
            roc = float(roc_auc_score(y_val, proba_val, multi_class="ovr", labels=labels))
    loss = float(log_loss(y_val, np.clip(proba_val, 1e-15, 1.0), labels=labels))
    counts = np.bincount(np.concatenate([y_train, y_val]), minlength=k)
    total = int(counts.sum())
    return {
        "accuracy": accuracy,
        "roc_auc": roc,
        "log_loss": loss,
        "rows_used": total,
        "rows_train": int(y_train.size),
        "rows_validation": int(y_val.size),
        "class_balance": [
            {"class": c, "count": int(n), "fraction": float(n / total)}
            for c, n in zip(classes, counts, strict=True)
        ],
        "noised": False,
    }


# -- the job ----------------------------------------------------------------------------------------


def _bounds(spec: JobSpec, features: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    assert spec.feature_bounds is not None
    low = np.array([spec.feature_bounds[f][0] for f in features], dtype=np.float64)
    high = np.array([spec.feature_bounds[f][1] for f in features], dtype=np.float64)
    return low, high


def train_tables(spec: JobSpec, tables: Sequence[DatasetTable], log: PhaseLog) -> TrainedModel:
    """Train, export, check and evaluate a model on already decrypted datasets.

    Guarantees on return: the ONNX model loads in onnxruntime and its probabilities match the
    fitted model on the validation rows within 1e-4; metrics were computed from the ONNX outputs
    (noised with the metrics share of epsilon for DP jobs, which spent exactly ``dp_epsilon``).
    """
    with log.phase("preparing"):
        matrix, labels, features, classes = assemble(spec, tables)
        train, validation = split(spec, labels, len(classes))
        x_train, y_train = matrix[train].astype(np.float64), labels[train]
        x_val, y_val = matrix[validation], labels[validation]
        del matrix
    split_eps = dp.PrivacySplit.of(spec.dp_epsilon, spec.dp_metrics_fraction) if spec.dp_epsilon else None
    accountant = dp.new_accountant(split_eps) if split_eps else None
    with log.phase("training"):
        if split_eps is not None and accountant is not None:
            low, high = _bounds(spec, features)
            estimator, notes = dp.fit_private(
                spec.algorithm,
                spec.params,
                x_train,
                y_train,
                low=low,
                high=high,
                n_classes=len(classes),
                epsilon=split_eps.training,
                accountant=accountant,
            )
        else:
            estimator, notes = _fit_plain(spec, x_train, y_train)
        del x_train
    with log.phase("exporting"):
        onnx_bytes = export_onnx(estimator, features, classes)
        predicted, probabilities = check_parity(onnx_bytes, estimator, x_val)
    with log.phase("evaluating"):
        full = _full_probabilities(probabilities, estimator, len(classes))
        predicted = predicted.astype(np.int64)
        if split_eps is not None and accountant is not None:
            metrics = dp.private_metrics(
                y_train=y_train,
                y_val=y_val,
                predicted_val=predicted,
                proba_val=full,
                classes=classes,
                epsilon=split_eps.metrics,
                accountant=accountant,
            )
            spent = float(accountant.total()[0])
            if spent > split_eps.total * (1 + dp.ACCOUNTING_SLACK):
                raise ModelError("model.training_failed", "the job spent more than its privacy budget")
            metrics["dp"] = {**split_eps.to_dict(), "accounted_epsilon": spent}
        else:
            metrics = exact_metrics(
                y_train=y_train, y_val=y_val, predicted_val=predicted, proba_val=full, classes=classes
            )
            metrics["dp"] = None
    metrics["classes"] = list(classes)
    metrics["features"] = len(features)
    metrics["algorithm"] = spec.algorithm
    metrics["notes"] = notes
    return TrainedModel(
        onnx_bytes=onnx_bytes,
        model_sha256=hashlib.sha256(onnx_bytes).hexdigest(),
        feature_columns=tuple(features),
        classes=tuple(classes),
        metrics=metrics,
        epsilon_spent=spec.dp_epsilon,
    )


def train_job(
    spec: JobSpec,
    states: Sequence[DatasetState],
    blobs: Sequence[bytes],
    limits: TrainingLimits,
    log: PhaseLog,
) -> TrainedModel:
    """Decrypt each dataset (chunk by chunk, within ``limits``) and train on their rows.

    The total row and cell limits apply to the concatenation, not only to each dataset.
    """
    with log.phase("decrypting"):
        tables = decrypt_tables([state.config for state in states], blobs, limits)
    return train_tables(spec, tables, log)


def decrypt_tables(
    configs: Sequence[DatasetConfig], blobs: Sequence[bytes], limits: TrainingLimits
) -> list[DatasetTable]:
    """Decrypt each dataset blob with its config (chunk by chunk, within ``limits``).

    Guarantees: the tables come back in the given order, and the total row and cell limits hold
    for their concatenation, not only for each one (``input.too_large`` otherwise).
    """
    tables = [decrypt_dataset(config, blob, limits) for config, blob in zip(configs, blobs, strict=True)]
    rows = sum(t.rows for t in tables)
    if rows > limits.max_rows:
        raise InputError(
            "input.too_large", f"the datasets together exceed the limit of {limits.max_rows} rows"
        )
    if rows * len(tables[0].columns) > limits.max_cells:
        raise InputError(
            "input.too_large", f"the datasets together exceed the limit of {limits.max_cells} cells"
        )
    return tables


# -- packaging: encryption and key grants -----------------------------------------------------------


def seal_model_grant(
    recipient_public_key: bytes,
    *,
    model_id: str,
    job: str,
    model_key: bytes,
    model_blob_sha256: str,
    model_sha256: str,
    spec_sha256: str,
    metrics: dict[str, Any],
) -> bytes:
    """Seal the model key and released metrics to one recipient's X25519 public key (HPKE).

    Guarantees: only the holder of the matching private key can open it; the model id and job
    are authenticated with it.
    """
    body = json.dumps(
        {
            "job": job,
            "metrics": metrics,
            "model": model_id,
            "model_blob_sha256": model_blob_sha256,
            "model_key": model_key.hex(),
            "model_sha256": model_sha256,
            "spec_sha256": spec_sha256,
        },
        sort_keys=True,
        separators=(",", ":"),
        allow_nan=False,
    ).encode()
    return seal_request(
        enclave_public_key=recipient_public_key, op=GRANT_OP, model=model_id, payload=body, request_id=job
    ).envelope


def open_model_grant(grant: bytes, private_key: x25519.X25519PrivateKey) -> ModelGrant:
    """Open a grant with the recipient's private key; the recipient-side inverse of sealing.

    Raises ``request.wrong_recipient`` for a grant sealed to another key, ``crypto.*`` for a
    tampered or malformed one, and ``input.malformed`` for a payload that is not a grant.
    """
    opened = RecipientKey(private_key).open_request(grant)
    if opened.header.op != GRANT_OP:
        raise InputError("input.malformed", "this envelope is not a model-key grant")
    try:
        data = loads_json(opened.payload)
        key = bytes.fromhex(data["model_key"])
        grant_obj = ModelGrant(
            model=str(data["model"]),
            job=str(data["job"]),
            model_key=key,
            model_blob_sha256=str(data["model_blob_sha256"]),
            model_sha256=str(data["model_sha256"]),
            spec_sha256=str(data["spec_sha256"]),
            metrics=dict(data["metrics"]),
        )
    except (UnicodeDecodeError, ValueError, KeyError, TypeError, RecursionError) as exc:
        raise InputError("input.malformed", "the grant payload is malformed") from exc
    if len(key) != 32 or grant_obj.model != opened.header.model:
        raise InputError("input.malformed", "the grant payload is inconsistent with its envelope")
    return grant_obj


def package_model(trained: TrainedModel, spec: JobSpec, spec_sha256: str, log: PhaseLog) -> PackagedModel:
    """Encrypt the ONNX model under a fresh key (stream format) and seal the key to each recipient."""
    with log.phase("encrypting"):
        model_key = new_data_key()
        blob = encrypt_bytes(model_key, trained.onnx_bytes, content_type=MODEL_CONTENT_TYPE)
        blob_sha256 = hashlib.sha256(blob).hexdigest()
        grants = tuple(
            (
                recipient,
                seal_model_grant(
                    bytes.fromhex(recipient),
                    model_id=spec.model,
                    job=spec.job,
                    model_key=model_key,
                    model_blob_sha256=blob_sha256,
                    model_sha256=trained.model_sha256,
                    spec_sha256=spec_sha256,
                    metrics=trained.metrics,
                ),
            )
            for recipient in spec.recipients
        )
    return PackagedModel(blob=blob, model_key=model_key, model_blob_sha256=blob_sha256, grants=grants)


__all__ = [
    "MODEL_CONTENT_TYPE",
    "ModelGrant",
    "PackagedModel",
    "Phase",
    "PhaseLog",
    "TrainedModel",
    "assemble",
    "build_estimator",
    "check_parity",
    "exact_metrics",
    "export_onnx",
    "onnx_predict",
    "open_model_grant",
    "package_model",
    "seal_model_grant",
    "split",
    "train_job",
    "train_tables",
]
