"""Encrypted-ML mode in the SDK: CKKS contexts, HE models, encrypted predictions and training.

The client's :class:`~sealedml.he.keys.HEKeys` never leave this process: only the public context
(evaluation keys) is uploaded, once per key set, and every feature is encrypted here before it is
sent. The platform computes on ciphertexts and answers ciphertexts only these keys decrypt; the final
non-linearity (sigmoid, softmax) is applied here, after decryption.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from sealedml.client._data import iter_table, select_features
from sealedml.errors import HEError, InputError, SealedMLError

if TYPE_CHECKING:
    from sealedml.client._sdk import ModelInfo, SealedMLClient
    from sealedml.he.keys import HEKeyring, HEKeys
    from sealedml.he.models import HEModel

__all__ = ["HEAPI", "HEBatch", "HEModelSpec", "HEPrediction", "HETraining", "finalize_scores"]

OCTET = {"Content-Type": "application/octet-stream"}
#: ``layout=`` values of the prediction calls: "auto" picks the cheaper of "columns" and "rows"
#: per batch with :func:`sealedml.he.packing.choose_layout` (its cost constants are measured there).
LAYOUT_CHOICES = ("auto", "columns", "rows")


@dataclass(frozen=True)
class HEModelSpec:
    """The public side of an HE model: what a client needs to encrypt for it and read its scores."""

    id: str
    name: str
    kind: str
    preset: str
    params: dict[str, Any]
    input_columns: tuple[str, ...]
    outputs: int
    output: str
    classes: tuple[Any, ...] | None
    price_per_row: int
    query_budget: int | None
    raw: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_api(cls, data: dict[str, Any]) -> HEModelSpec:
        """Build from ``GET /v1/models/{id}/he``."""
        model = data["model"]
        classes = data.get("classes")
        return cls(
            id=str(model["id"]),
            name=str(model["name"]),
            kind=str(data["kind"]),
            preset=str(data["preset"]),
            params=dict(data.get("params") or {}),
            input_columns=tuple(data["input_columns"]),
            outputs=int(data["outputs"]),
            output=str(data["output"]),
            classes=None if classes is None else tuple(classes),
            price_per_row=int(model.get("price_per_row") or 0),
            query_budget=data.get("query_budget"),
            raw=data,
        )


@dataclass(frozen=True)
class HEBatch:
    """One encrypted request: its job, decrypted outputs, sizes and where the time went."""

    job_id: str
    rows: int
    labels: np.ndarray
    probabilities: np.ndarray | None
    scores: np.ndarray
    request_bytes: int
    response_bytes: int
    encrypt_seconds: float
    server_seconds: float
    decrypt_seconds: float
    layout: str = "columns"

    @property
    def seconds(self) -> float:
        """Wall time of the whole round trip (encryption, network and evaluation, decryption)."""
        return self.encrypt_seconds + self.server_seconds + self.decrypt_seconds


@dataclass(frozen=True)
class HEPrediction:
    """Decrypted predictions of a whole table, with the batches that produced them."""

    labels: np.ndarray
    probabilities: np.ndarray | None
    scores: np.ndarray
    batches: tuple[HEBatch, ...]
    model: HEModelSpec

    @property
    def rows(self) -> int:
        """Rows predicted."""
        return int(self.labels.shape[0])

    @property
    def seconds(self) -> float:
        """Total wall time of every batch."""
        return sum(batch.seconds for batch in self.batches)

    @property
    def request_bytes(self) -> int:
        """Ciphertext bytes sent."""
        return sum(batch.request_bytes for batch in self.batches)

    @property
    def response_bytes(self) -> int:
        """Ciphertext bytes received."""
        return sum(batch.response_bytes for batch in self.batches)

    def frame(self) -> pd.DataFrame:
        """Return ``prediction`` and, for classifiers, ``p_<class>`` columns (one row per input row)."""
        frame = pd.DataFrame({"prediction": self.labels})
        if self.probabilities is not None:
            names = self.model.classes or tuple(range(self.probabilities.shape[1]))
            for j, name in enumerate(names):
                frame[f"p_{name}"] = self.probabilities[:, j]
        return frame


@dataclass(frozen=True)
class HETraining:
    """An encrypted-training run: the fitted model (weights decrypted here only) and its dataset."""

    estimator: Any
    dataset_id: str
    rows: int
    features: tuple[str, ...]
    data_bytes: int
    seconds: float
    steps: int

    def to_he_model(self) -> HEModel:
        """The trained logistic model as an :class:`HEModel` (publishable in HE mode)."""
        return self.estimator.to_he_model(list(self.features))  # type: ignore[no-any-return]


def finalize_scores(
    output: str, classes: Sequence[Any] | None, scores: np.ndarray
) -> tuple[np.ndarray, np.ndarray | None]:
    """Apply an HE model's final non-linearity to decrypted scores (rows x outputs).

    Guarantees: ``identity`` returns the scores as values (a vector for one output) and no
    probabilities; ``sigmoid`` returns labels ``classes[score > 0]`` and probabilities
    ``[1 - p, p]``; ``softmax`` the arg-max class and normalised probabilities. ``he.shape_mismatch``
    if the scores do not fit the classes.
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim == 1:
        s = s.reshape(-1, 1)
    if output == "identity":
        return (s[:, 0] if s.shape[1] == 1 else s), None
    names = np.asarray(list(classes or ()), dtype=object)
    if output == "sigmoid":
        if s.shape[1] != 1 or names.shape[0] != 2:
            raise HEError("he.shape_mismatch", "a sigmoid output needs one score per row and two classes")
        p = 1.0 / (1.0 + np.exp(-np.clip(s[:, 0], -500, 500)))
        return names[(s[:, 0] > 0).astype(int)], np.column_stack([1.0 - p, p])
    if output == "softmax":
        if s.shape[1] != names.shape[0]:
            raise HEError("he.shape_mismatch", f"{s.shape[1]} scores per row for {names.shape[0]} classes")
        shifted = np.exp(s - s.max(axis=1, keepdims=True))
        return names[np.argmax(s, axis=1)], shifted / shifted.sum(axis=1, keepdims=True)
    raise HEError("he.model_invalid", f"unknown output {output!r}")


def _slots(spec: HEModelSpec) -> int:
    from sealedml.he.params import preset

    return int(spec.params.get("slots") or preset(spec.preset).slots)


class HEAPI:
    """Encrypted-ML calls of one :class:`SealedMLClient` (``client.he``)."""

    def __init__(self, client: SealedMLClient) -> None:
        self._client = client
        self._contexts: dict[str, dict[str, Any]] = {}
        self._specs: dict[str, HEModelSpec] = {}

    # -- contexts ---------------------------------------------------------------------------------
    def upload_context(self, keys: HEKeys) -> dict[str, Any]:
        """Make sure the platform holds ``keys``' public context; returns its record.

        Guarantees: the secret key is never sent (only ``keys.public_context()``); the context is
        uploaded at most once per key set: this client remembers it, and otherwise asks the platform
        first (a small GET) before sending megabytes.
        """
        known = self._contexts.get(keys.fingerprint)
        if known is not None:
            return known
        try:
            info = dict(self._client._json("GET", f"/v1/he/contexts/{keys.fingerprint}"))
        except HEError as exc:
            if exc.code != "he.context_unknown":
                raise
            info = dict(
                self._client._json("PUT", "/v1/he/context", content=keys.public_context(), headers=OCTET)
            )
        self._contexts[keys.fingerprint] = info
        return info

    def contexts(self) -> list[dict[str, Any]]:
        """Return the public contexts this account uploaded."""
        return list(self._client._json("GET", "/v1/he/contexts"))

    # -- models -----------------------------------------------------------------------------------
    def publish(
        self,
        name: str,
        model: HEModel | Any,
        *,
        input_columns: Sequence[str] | None = None,
        description: str = "",
        price_per_row: int = 0,
        version: str = "1",
        query_budget: int | None = None,
    ) -> ModelInfo:
        """Publish ``model`` (an :class:`HEModel`, or a fitted scikit-learn estimator it converts) in
        encrypted-ML mode and return its catalog entry (status ``ready``).

        The platform holds these weights in clear to compute on ciphertexts. All or nothing: if the
        upload is refused, the catalog entry made for it is deleted again.
        """
        from sealedml.client._sdk import ModelInfo
        from sealedml.he.models import HEModel, he_model_from_sklearn

        if not isinstance(model, HEModel):
            columns = list(input_columns or [str(c) for c in getattr(model, "feature_names_in_", [])])
            if not columns:
                width = int(getattr(model, "n_features_in_", 0))
                columns = [f"x{i}" for i in range(width)]
            model = he_model_from_sklearn(model, columns)
        elif input_columns is not None and list(input_columns) != list(model.input_columns):
            raise InputError("input.schema_mismatch", "input_columns differ from the HE model's columns")
        created = self._client._json(
            "POST",
            "/v1/models",
            json={
                "name": name,
                "description": description,
                "input_columns": list(model.input_columns),
                "price_per_row": price_per_row,
                "version": version,
                "mode": "he",
            },
        )
        model_id = str(created["id"])
        try:
            params = {} if query_budget is None else {"query_budget": query_budget}
            answer = self._client._json(
                "PUT",
                f"/v1/models/{model_id}/he-model",
                content=model.to_json(),
                params=params,
                headers={"Content-Type": "application/json"},
            )
        except SealedMLError:
            with contextlib.suppress(SealedMLError):
                self._client._request("DELETE", f"/v1/models/{model_id}")
            raise
        return ModelInfo.from_api(answer)

    def model(self, ref: str) -> HEModelSpec:
        """Return the public spec of an HE model by id or name (``request.invalid`` for a TEE model)."""
        cached = self._specs.get(ref)
        if cached is not None:
            return cached
        info = self._client.get_model(ref)
        spec = HEModelSpec.from_api(self._client._json("GET", f"/v1/models/{info.id}/he"))
        self._specs[spec.id] = self._specs[spec.name] = spec
        return spec

    # -- predictions ------------------------------------------------------------------------------
    def resolve_layout(
        self, spec: HEModelSpec, rows: int, *, keys: HEKeys | HEKeyring, layout: str = "auto"
    ) -> tuple[HEKeys, str]:
        """Decide the layout of a batch of ``rows`` rows and the key set to encrypt it with.

        Guarantees: ``layout="auto"`` gives ``"rows"`` only when :func:`~sealedml.he.packing.choose_layout`
        finds it cheaper and Galois keys are at hand (an :class:`~sealedml.he.keys.HEKeyring` makes
        them once, in ``<preset>-galois.hekeys``; a plain :class:`~sealedml.he.keys.HEKeys` without
        them means ``"columns"``). An explicit ``"rows"`` with a key set lacking Galois keys raises
        ``he.context_invalid``; an unknown layout ``input.malformed``.
        """
        from sealedml.he.keys import HEKeys
        from sealedml.he.packing import choose_layout

        if layout not in LAYOUT_CHOICES:
            raise InputError(
                "input.malformed", f"layout must be one of {list(LAYOUT_CHOICES)}, not {layout!r}"
            )
        if layout == "auto":
            layout = choose_layout(
                rows,
                len(spec.input_columns),
                spec.outputs,
                _slots(spec),
                preset=spec.preset,
                two_layers=spec.kind == "poly_mlp",
            )
            if layout == "rows" and isinstance(keys, HEKeys) and not keys.has_galois_keys:
                layout = "columns"
        if isinstance(keys, HEKeys):
            if layout == "rows" and not keys.has_galois_keys:
                raise HEError(
                    "he.context_invalid",
                    "the rows layout needs Galois keys and these keys have none: generate them with "
                    "HEKeys.generate(preset, galois=True) or pass an HEKeyring",
                )
            return keys, layout
        resolved, _ = keys.get(spec.preset, galois=layout == "rows")
        return resolved, layout

    def predict_batch(
        self,
        spec: HEModelSpec,
        features: np.ndarray,
        *,
        keys: HEKeys | HEKeyring,
        layout: str = "auto",
    ) -> HEBatch:
        """Encrypt one batch in the cheaper layout (or ``layout``), send it, decrypt the scores.

        Guarantees: the features are only ever sent encrypted under the (resolved) keys; each key
        set's public context is uploaded at most once; the answer is checked to be under the same
        context with one score per row and output.
        """
        keys, layout = self.resolve_layout(spec, int(np.shape(features)[0]), keys=keys, layout=layout)
        if keys.preset != spec.preset:
            raise HEError(
                "he.context_mismatch",
                f"model {spec.name} needs keys of the {spec.preset!r} preset; these are {keys.preset!r}",
            )
        context = self.upload_context(keys)
        started = time.perf_counter()
        message = keys.encrypt_batch(features, list(spec.input_columns), model=spec.id, layout=layout)
        encrypted = time.perf_counter()
        response = self._client._request(
            "POST",
            f"/v1/models/{spec.id}/he/predict",
            params={"context": context["context"]},
            content=message,
            headers=OCTET,
        )
        answered = time.perf_counter()
        scores = keys.decrypt_scores(response.content)
        if scores.shape != (features.shape[0], spec.outputs):
            raise HEError(
                "he.shape_mismatch",
                f"the platform returned {scores.shape} scores for {features.shape[0]} rows x {spec.outputs}",
            )
        labels, probabilities = finalize_scores(spec.output, spec.classes, scores)
        decrypted = time.perf_counter()
        return HEBatch(
            job_id=response.headers.get("X-SealedML-Job", ""),
            rows=int(features.shape[0]),
            labels=np.asarray(labels),
            probabilities=probabilities,
            scores=scores,
            request_bytes=len(message),
            response_bytes=len(response.content),
            encrypt_seconds=encrypted - started,
            server_seconds=answered - encrypted,
            decrypt_seconds=decrypted - answered,
            layout=layout,
        )

    def iter_predict(
        self,
        model: str,
        data: pd.DataFrame | np.ndarray,
        *,
        keys: HEKeys | HEKeyring,
        batch_rows: int | None = None,
        layout: str = "auto",
    ) -> Iterator[HEBatch]:
        """Predict ``data`` batch by batch (default: ``slots`` rows per request), each batch in the
        cheaper layout unless ``layout`` is "columns" or "rows"."""
        spec = self.model(model)
        if isinstance(data, pd.DataFrame):
            features = select_features(data, spec.input_columns).astype(np.float64)
        else:
            features = np.asarray(data, dtype=np.float64)
            if features.ndim != 2 or features.shape[1] != len(spec.input_columns):
                raise InputError(
                    "input.schema_mismatch",
                    f"expected a rows x {len(spec.input_columns)} matrix, got shape {features.shape}",
                )
        step = batch_rows or _slots(spec)
        if step <= 0:
            raise InputError("input.malformed", "batch_rows must be positive")
        for start in range(0, features.shape[0], step):
            yield self.predict_batch(spec, features[start : start + step], keys=keys, layout=layout)

    def predict_detailed(
        self,
        model: str,
        data: pd.DataFrame | np.ndarray,
        *,
        keys: HEKeys | HEKeyring,
        batch_rows: int | None = None,
        progress: Callable[[int], None] | None = None,
        layout: str = "auto",
    ) -> HEPrediction:
        """Predict a whole table; returns the decrypted outputs with per-batch sizes, timings and
        layouts (see :meth:`resolve_layout`)."""
        spec = self.model(model)
        batches: list[HEBatch] = []
        for batch in self.iter_predict(spec.id, data, keys=keys, batch_rows=batch_rows, layout=layout):
            batches.append(batch)
            if progress is not None:
                progress(batch.rows)
        if not batches:
            raise InputError("input.malformed", "no rows to predict")
        probabilities = (
            None if batches[0].probabilities is None else np.vstack([b.probabilities for b in batches])  # type: ignore[misc]
        )
        return HEPrediction(
            labels=np.concatenate([b.labels for b in batches]),
            probabilities=probabilities,
            scores=np.vstack([b.scores for b in batches]),
            batches=tuple(batches),
            model=spec,
        )

    def predict(
        self,
        model: str,
        data: pd.DataFrame | np.ndarray,
        *,
        keys: HEKeys | HEKeyring,
        batch_rows: int | None = None,
        layout: str = "auto",
    ) -> pd.DataFrame:
        """Predict a table in encrypted-ML mode; returns ``prediction`` (and ``p_<class>``) columns.

        ``layout="auto"`` sends small batches in the rows layout (one ciphertext for up to
        ``slots / next_pow2(features)`` rows; needs Galois keys, which an ``HEKeyring`` generates
        once) and large ones column-packed; "columns"/"rows" force one.
        """
        return self.predict_detailed(model, data, keys=keys, batch_rows=batch_rows, layout=layout).frame()

    def predict_file(
        self,
        model: str,
        path: Path,
        *,
        keys: HEKeys | HEKeyring,
        batch_rows: int | None = None,
        layout: str = "auto",
    ) -> Iterator[HEBatch]:
        """Predict a CSV or Parquet file batch by batch, never loading it whole."""
        spec = self.model(model)
        step = batch_rows or _slots(spec)
        for frame in iter_table(path, step):
            yield from self.iter_predict(spec.id, frame, keys=keys, batch_rows=step, layout=layout)

    # -- encrypted training -----------------------------------------------------------------------
    def upload_training_data(self, data: bytes) -> dict[str, Any]:
        """Store an ``he-train-data`` message (its context must be uploaded); returns its record."""
        return dict(self._client._json("PUT", "/v1/he/datasets", content=data, headers=OCTET))

    def datasets(self) -> list[dict[str, Any]]:
        """Return this account's encrypted training datasets."""
        return list(self._client._json("GET", "/v1/he/datasets"))

    def delete_dataset(self, dataset_id: str) -> None:
        """Delete one of this account's encrypted training datasets."""
        self._client._request("DELETE", f"/v1/he/datasets/{dataset_id}")

    def gradient(self, dataset_id: str, weights: bytes) -> bytes:
        """One round trip of encrypted training: ``he-train-weights`` in, ``he-train-gradient`` out."""
        response = self._client._request(
            "POST", f"/v1/he/datasets/{dataset_id}/gradient", content=weights, headers=OCTET
        )
        return response.content

    def train(
        self,
        frame: pd.DataFrame,
        label: str,
        *,
        keys: HEKeys,
        features: Sequence[str] | None = None,
        epochs: int = 10,
        learning_rate: float | None = None,
        l2: float = 0.0,
        progress: Callable[[int, int], None] | None = None,
    ) -> HETraining:
        """Train a logistic regression on encrypted data: the platform only ever sees ciphertexts.

        ``frame[label]`` must be 0/1. The data is encrypted here, uploaded once, and every gradient
        is computed by the platform on ciphertexts at weights it cannot read; only this client
        decrypts them. Returns the fitted estimator (``coef_``, ``intercept_``) and the dataset id.
        """
        from sealedml.he.training import EncryptedLogisticRegression, encrypt_training_data

        if label not in frame.columns:
            raise InputError("input.schema_mismatch", f"no label column {label!r} in the data")
        columns = list(features or [c for c in frame.columns if c != label])
        x = select_features(frame, columns).astype(np.float64)
        y = frame[label].to_numpy()
        self.upload_context(keys)
        started = time.perf_counter()
        data = encrypt_training_data(keys, x, y)
        stored = self.upload_training_data(data)
        dataset_id = str(stored["dataset"])
        steps = 0

        def step(weights: bytes) -> bytes:
            nonlocal steps
            steps += 1
            return self.gradient(dataset_id, weights)

        options: dict[str, Any] = {"epochs": epochs, "l2": l2}
        if learning_rate is not None:
            options["learning_rate"] = learning_rate
        model = EncryptedLogisticRegression(keys, **options)
        model.fit(x, y, step, data_id=dataset_id, progress=progress)
        return HETraining(
            estimator=model,
            dataset_id=dataset_id,
            rows=int(x.shape[0]),
            features=tuple(columns),
            data_bytes=len(data),
            seconds=time.perf_counter() - started,
            steps=steps,
        )
