"""Encrypted logistic-regression training, client-aided (as in TenSEAL's tutorial) but column-packed.

The data owner encrypts its (scaled) feature columns, a ones column for the bias, and the labels
once (``he-train-data``). Each epoch the owner sends weights encrypted, each weight divided by
``SIGMOID_RANGE`` and broadcast to every slot (``he-train-weights``); the server computes, on
ciphertexts only, ``u = Σ_j v_j ⊙ X_j`` (``u = z / SIGMOID_RANGE``), the degree-7 sigmoid
approximation ``sigma~(z) = p(u)`` with ``p`` = :data:`SIGMOID_POLY` (least squares on
``z ∈ [-20, 20]``), ``e = sigma~ - y`` and ``g_j = e ⊙ X_j``, summed over row groups
(``he-train-gradient``, 5 levels). The owner decrypts, sums over rows, takes a Nesterov step in the
clear and re-encrypts. The server sees only ciphertexts and their sizes; the owner sees its own
per-row gradient terms and weights (its own data).

Numerical honesty: sigma~ is only a sigmoid on [-20, 20] (within 0.144 of it there) and diverges
outside. The owner therefore (a) standardizes its features with its own statistics, clips them at
±3 standard deviations and divides by 3 (so every value is in [-1, 1]) and (b) rescales every
point it sends (and every iterate) so that no logit of its own rows leaves [-20, 20] (computed on
its plaintext rows; rescaling never changes a predicted label).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sealedml.errors import HEError, InputError
from sealedml.he.context import PublicContext, load_vector
from sealedml.he.keys import HEKeys
from sealedml.he.models import HELayer, HEModel
from sealedml.he.wire import HEMessage, decode_message, encode_message

__all__ = [
    "SIGMOID_POLY",
    "SIGMOID_RANGE",
    "TRAIN_LIMITS",
    "EncryptedLogisticRegression",
    "TrainingScaler",
    "encrypt_training_data",
    "gradient_step",
]

#: Limits of one encrypted training set (documented in docs/he.md).
TRAIN_LIMITS: dict[str, int] = {"rows": 16384, "features": 64}
#: The logit range on which the sigmoid approximation holds; the owner keeps every logit inside.
SIGMOID_RANGE = 20.0
#: sigma(z) ≈ p(z / SIGMOID_RANGE): coefficients of u^0..u^7 (low to high, even terms zero but
#: the constant), the odd least-squares fit of sigma(20 u) - 1/2 on 4001 even-spaced u in [-1, 1].
#: Max error 0.144 on [-20, 20]. In the unit variable every power stays in [-1, 1].
SIGMOID_POLY: tuple[float, ...] = (0.5, 2.453019, 0.0, -8.324958, 0.0, 12.556943, 0.0, -6.287048)
#: Multiplicative levels one gradient step consumes (x·v, u², u⁴, u³·u⁴ with the constant, e·x).
TRAIN_DEPTH = 5
_CLIP = 3.0


@dataclass(frozen=True)
class TrainingScaler:
    """The owner-side map raw features -> [-1, 1]: standardize, clip at ±3sigma, divide by 3."""

    mean: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, features: np.ndarray) -> TrainingScaler:
        """Return the scaler for ``features`` (deterministic: mean and 3·std per column, std 0 -> 1)."""
        std = features.std(axis=0)
        std = np.where(std > 0, std, 1.0)
        return cls(features.mean(axis=0), _CLIP * std)

    def transform(self, features: np.ndarray) -> np.ndarray:
        """Return the scaled features, every value in [-1, 1]."""
        return np.clip((features - self.mean) / self.scale, -1.0, 1.0)


def _check_training_set(features: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    if x.ndim != 2 or x.shape[0] != y.shape[0] or x.shape[0] == 0 or x.shape[1] == 0:
        raise InputError("input.schema_mismatch", f"features {x.shape} and labels {y.shape} do not match")
    rows, width = x.shape
    if rows > TRAIN_LIMITS["rows"] or width > TRAIN_LIMITS["features"]:
        raise InputError(
            "input.too_large",
            f"{rows} rows x {width} features exceeds the encrypted-training limits "
            f"({TRAIN_LIMITS['rows']} rows, {TRAIN_LIMITS['features']} features)",
        )
    if not (np.all(np.isfinite(x)) and np.all(np.isin(y, (0.0, 1.0)))):
        raise InputError("input.malformed", "features must be finite and labels 0 or 1")
    return x, y


def _layout(rows: int, slots: int) -> tuple[int, int]:
    """Return (vector size, groups): every vector holds min(rows, slots) values; the last group is padded."""
    size = min(rows, slots)
    return size, math.ceil(rows / size)


def encrypt_training_data(keys: HEKeys, features: np.ndarray, labels: np.ndarray) -> bytes:
    """Scale and encrypt a training set as an ``he-train-data`` message.

    Per group of ``min(rows, slots)`` rows: one vector per scaled feature, a ones vector (bias),
    and the labels; padding rows of the last group are all zero (ones column included), so they
    contribute nothing to any gradient. Needs keys of depth >= 4 (preset ``train``).
    """
    x, y = _check_training_set(features, labels)
    if keys.params.depth < TRAIN_DEPTH:
        raise HEError("he.depth_exceeded", f"training needs {TRAIN_DEPTH} levels: use preset 'train'")
    scaled = TrainingScaler.fit(x).transform(x)
    rows, width = scaled.shape
    size, groups = _layout(rows, keys.params.slots)
    padded = np.zeros((groups * size, width + 2))
    padded[:rows, :width] = scaled
    padded[:rows, width] = 1.0
    padded[:rows, width + 1] = y
    ciphertexts = [
        keys.encrypt_vector(padded[g * size : (g + 1) * size, j])
        for g in range(groups)
        for j in range(width + 2)
    ]
    header = {"context": keys.fingerprint, "rows": rows, "features": width, "groups": groups, "size": size}
    return encode_message("he-train-data", header, ciphertexts)


def _check_shape(message: HEMessage, *, count: int, what: str) -> None:
    if len(message.ciphertexts) != count:
        raise HEError(
            "he.shape_mismatch", f"{what} holds {len(message.ciphertexts)} ciphertexts, expected {count}"
        )


def _sigmoid_poly(u: Any) -> Any:
    """Evaluate SIGMOID_POLY at the CKKS vector ``u`` (level l) using 3 more levels (result at l+3)."""
    _, a1, _, a3, _, a5, _, a7 = SIGMOID_POLY
    u2 = u.square()
    u4 = u2.square()
    odd = (u * a7) * u2 * u4 + (u * a5) * u4 + (u * a3) * u2 + u * a1
    return odd + SIGMOID_POLY[0]


def gradient_step(context: PublicContext, data: bytes, weights: bytes, *, max_bytes: int) -> bytes:
    """Server side of one epoch: encrypted data and weights in, encrypted per-slot gradients out.

    Guarantees: only ciphertext operations with the public context; the result holds ``features+1``
    vectors whose slot sums are ``Σ_rows (p(x·v) - y) x_j`` (the bias last), where ``v`` are the
    sent weights and ``p`` is :data:`SIGMOID_POLY`. Errors:
    ``he.context_mismatch``, ``he.shape_mismatch``, ``he.depth_exceeded``, ``he.ciphertext_invalid``,
    wire errors and ``input.too_large``.
    """
    limit = TRAIN_LIMITS["features"] + 2
    train = decode_message(
        data, expected_kind="he-train-data", max_bytes=max_bytes, max_ciphertexts=64 * limit
    )
    step = decode_message(
        weights, expected_kind="he-train-weights", max_bytes=max_bytes, max_ciphertexts=limit
    )
    for message in (train, step):
        if message.context != context.fingerprint:
            raise HEError(
                "he.context_mismatch",
                f"{message.kind} is under context {message.context[:16]}…, not {context.fingerprint[:16]}…",
            )
    rows = train.rows
    width = train.int_field("features", minimum=1, maximum=TRAIN_LIMITS["features"])
    if rows > TRAIN_LIMITS["rows"]:
        raise InputError("input.too_large", f"{rows} training rows (max {TRAIN_LIMITS['rows']})")
    size, groups = _layout(rows, context.params.slots)
    if train.int_field("size", minimum=1) != size or train.int_field("groups", minimum=1) != groups:
        raise HEError("he.shape_mismatch", "the training data's groups do not match its rows and the context")
    _check_shape(train, count=groups * (width + 2), what="the training data")
    if step.rows != rows or step.int_field("features", minimum=1, maximum=TRAIN_LIMITS["features"]) != width:
        raise HEError("he.shape_mismatch", "the weights were made for another training set shape")
    _check_shape(step, count=width + 1, what="the weights message")
    if context.params.depth < TRAIN_DEPTH:
        raise HEError(
            "he.depth_exceeded",
            f"a gradient step needs {TRAIN_DEPTH} levels, the context has {context.params.depth}",
        )
    if not context.has_relin_keys:
        raise HEError("he.context_invalid", "encrypted training needs relinearization keys")
    w = [load_vector(context, ct, size=size, index=i) for i, ct in enumerate(step.ciphertexts)]
    total: list[Any] = []
    try:
        for g in range(groups):
            base = g * (width + 2)
            cols = [
                load_vector(context, train.ciphertexts[base + j], size=size, index=base + j)
                for j in range(width + 2)
            ]
            x, y = cols[: width + 1], cols[width + 1]
            u = x[0] * w[0]
            for j in range(1, width + 1):
                u = u + x[j] * w[j]
            error = _sigmoid_poly(u) - y
            grads = [error * xj for xj in x]
            total = grads if not total else [a + b for a, b in zip(total, grads, strict=True)]
    except (ValueError, RuntimeError) as exc:
        if "scale out of bounds" in str(exc) or "end of modulus switching chain" in str(exc):
            raise HEError(
                "he.depth_exceeded", "the ciphertexts ran out of levels during the gradient step"
            ) from exc
        raise HEError("he.ciphertext_invalid", "the training ciphertexts could not be evaluated") from exc
    header = {"context": context.fingerprint, "rows": rows, "features": width, "groups": groups, "size": size}
    return encode_message("he-train-gradient", header, [v.serialize() for v in total])


class EncryptedLogisticRegression:
    """Client side of encrypted training: holds the keys and the weights, never sends them in clear.

    Optimizer: Nesterov accelerated gradient on the owner's side (``momentum`` 0 gives plain
    gradient descent); the server evaluates every gradient at the look-ahead point. Every point sent
    and every iterate keeps all logits of the owner's rows within ``SIGMOID_RANGE``.

    Guarantees after :meth:`fit`: ``coef_`` and ``intercept_`` are in the RAW feature space (the
    owner-side scaling is folded in), so ``features @ coef_ + intercept_ > 0`` predicts class 1.
    Raises ``input.malformed`` at construction for a non-positive ``epochs`` or ``learning_rate``,
    a ``momentum`` outside [0, 1) or a negative ``l2``.
    """

    def __init__(
        self,
        keys: HEKeys,
        *,
        epochs: int = 10,
        learning_rate: float = 10.0,
        l2: float = 0.0,
        momentum: float = 0.8,
    ) -> None:
        if not (
            int(epochs) >= 1
            and math.isfinite(learning_rate)
            and learning_rate > 0
            and 0.0 <= momentum < 1.0
            and math.isfinite(l2)
            and l2 >= 0
        ):
            raise InputError(
                "input.malformed",
                f"training options epochs={epochs}, learning_rate={learning_rate}, momentum={momentum}, "
                f"l2={l2}: need epochs >= 1, learning_rate > 0, 0 <= momentum < 1 and l2 >= 0",
            )
        self.keys = keys
        self.epochs = int(epochs)
        self.learning_rate = float(learning_rate)
        self.l2 = float(l2)
        self.momentum = float(momentum)
        self.coef_: np.ndarray = np.zeros(0)
        self.intercept_: float = 0.0
        self.history_: list[float] = []

    def fit(
        self,
        features: np.ndarray,
        labels: np.ndarray,
        step: Callable[[bytes], bytes],
        *,
        data_id: str | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> EncryptedLogisticRegression:
        """Run ``epochs`` rounds of encrypted gradient descent through ``step`` (the server round trip).

        ``features``/``labels`` are the owner's own plaintext rows (the same ones it encrypted with
        :func:`encrypt_training_data`); they fix the shapes, the scaling, and the logit bound.
        Exactly one ``step`` call per epoch.
        """
        x, _ = _check_training_set(features, labels)
        scaler = TrainingScaler.fit(x)
        design = np.column_stack([scaler.transform(x), np.ones(x.shape[0])])
        rows, width = x.shape
        size, _ = _layout(rows, self.keys.params.slots)

        def bounded(weights: np.ndarray) -> np.ndarray:
            largest = float(np.abs(design @ weights).max())
            return weights * (SIGMOID_RANGE / largest) if largest > SIGMOID_RANGE else weights

        w = np.zeros(width + 1)
        previous = w
        self.history_ = []
        for epoch in range(self.epochs):
            look = bounded(w + self.momentum * (w - previous))
            header: dict[str, Any] = {"context": self.keys.fingerprint, "rows": rows, "features": width}
            if data_id is not None:
                header["data"] = data_id
            sent = [self.keys.encrypt_vector(np.full(size, v / SIGMOID_RANGE)) for v in look]
            message = encode_message("he-train-weights", header, sent)
            answer = decode_message(step(message), expected_kind="he-train-gradient", max_bytes=2**31)
            if answer.context != self.keys.fingerprint:
                raise HEError("he.context_mismatch", "the gradient is under another context")
            _check_shape(answer, count=width + 1, what="the gradient message")
            gradient = (
                np.array(
                    [self.keys.decrypt_vector(ct, index=i).sum() for i, ct in enumerate(answer.ciphertexts)]
                )
                / rows
            )
            penalty = self.l2 * np.append(look[:width], 0.0)
            previous, w = w, bounded(look - self.learning_rate * (gradient + penalty))
            self.history_.append(float(np.linalg.norm(gradient)))
            if progress is not None:
                progress(epoch + 1, self.epochs)
        self.coef_ = w[:width] / scaler.scale
        self.intercept_ = float(w[width] - self.coef_ @ scaler.mean)
        return self

    def decision_function(self, features: np.ndarray) -> np.ndarray:
        """Return the logits of raw ``features`` (rows x features)."""
        return np.asarray(features, dtype=np.float64) @ self.coef_ + self.intercept_

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Return 0/1 labels of raw ``features``."""
        return (self.decision_function(features) > 0).astype(int)

    def to_he_model(self, input_columns: Sequence[str]) -> HEModel:
        """Return the trained model as a logistic :class:`HEModel` (classes 0 and 1)."""
        if self.coef_.size == 0:
            raise HEError("he.model_invalid", "the model is not trained")
        return HEModel(
            kind="logistic",
            input_columns=tuple(input_columns),
            layers=(HELayer(self.coef_.reshape(1, -1).copy(), np.array([self.intercept_])),),
            output="sigmoid",
            classes=(0, 1),
        )
