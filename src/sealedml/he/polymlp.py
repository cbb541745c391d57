"""An HE-friendly neural network: one hidden layer with a quadratic activation, trained in the clear.

Under CKKS a ReLU or tanh cannot be evaluated exactly; a degree-2 polynomial costs one
multiplicative level. The provider trains this model on plaintext data like any scikit-learn
classifier and publishes it with :func:`sealedml.he.models.he_model_from_sklearn`.

Inputs are NOT standardized implicitly: scale them (e.g. ``Pipeline([("scale", StandardScaler()),
("mlp", PolyMLPClassifier())])``, which :func:`he_model_from_sklearn` folds into the first layer),
otherwise the quadratic activation overflows the CKKS precision budget.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

__all__ = ["PolyMLPClassifier"]


class PolyMLPClassifier(ClassifierMixin, BaseEstimator):
    """Two-layer perceptron ``softmax/sigmoid(W2 · act(W1 x + b1) + b2)`` with ``act(h) = c0 + c1 h + c2 h²``.

    Guarantees: deterministic for a given ``random_state`` and data; after :meth:`fit`,
    ``coefs_``/``intercepts_`` hold the two layers, ``classes_`` the sorted labels, and the binary
    case has one output unit (sigmoid), the multiclass case one per class (softmax). Trained with
    Adam on the cross-entropy plus ``alpha``·L2, full batch unless ``batch_size`` is given.
    """

    def __init__(
        self,
        hidden: int = 8,
        activation: tuple[float, float, float] = (0.0, 0.5, 0.125),
        *,
        alpha: float = 1e-3,
        learning_rate: float = 0.01,
        epochs: int = 400,
        batch_size: int | None = None,
        random_state: int = 0,
    ) -> None:
        self.hidden = hidden
        self.activation = activation
        self.alpha = alpha
        self.learning_rate = learning_rate
        self.epochs = epochs
        self.batch_size = batch_size
        self.random_state = random_state

    def _act(self, h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        c0, c1, c2 = (float(c) for c in self.activation)
        return c0 + c1 * h + c2 * h * h, c1 + 2.0 * c2 * h

    def fit(self, X: Any, y: Any) -> PolyMLPClassifier:
        """Train on ``X`` (rows x features, already scaled) and labels ``y`` (at least two classes)."""
        features = np.asarray(X, dtype=np.float64)
        labels = np.asarray(y)
        if features.ndim != 2 or labels.shape[0] != features.shape[0]:
            raise ValueError("X must be 2-D with one label per row")
        self.classes_, encoded = np.unique(labels, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError("need at least two classes")
        self.n_features_in_ = features.shape[1]
        outputs = 1 if len(self.classes_) == 2 else len(self.classes_)
        target = encoded.reshape(-1, 1).astype(np.float64) if outputs == 1 else np.eye(outputs)[encoded]
        rng = np.random.default_rng(self.random_state)
        d, h = features.shape[1], int(self.hidden)
        params = [
            rng.normal(0.0, 1.0 / np.sqrt(d), size=(d, h)),
            np.zeros(h),
            rng.normal(0.0, 1.0 / np.sqrt(h), size=(h, outputs)),
            np.zeros(outputs),
        ]
        moments = [np.zeros_like(p) for p in params]
        squares = [np.zeros_like(p) for p in params]
        beta1, beta2, eps = 0.9, 0.999, 1e-8
        n = features.shape[0]
        batch = n if self.batch_size is None else max(1, min(int(self.batch_size), n))
        step = 0
        for _ in range(int(self.epochs)):
            order = rng.permutation(n) if batch < n else np.arange(n)
            for start in range(0, n, batch):
                idx = order[start : start + batch]
                grads = self._gradients(params, features[idx], target[idx])
                step += 1
                for i, grad in enumerate(grads):
                    moments[i] = beta1 * moments[i] + (1 - beta1) * grad
                    squares[i] = beta2 * squares[i] + (1 - beta2) * grad * grad
                    m_hat = moments[i] / (1 - beta1**step)
                    v_hat = squares[i] / (1 - beta2**step)
                    params[i] = params[i] - self.learning_rate * m_hat / (np.sqrt(v_hat) + eps)
        self.coefs_ = [params[0].T.copy(), params[2].T.copy()]
        self.intercepts_ = [params[1].copy(), params[3].copy()]
        return self

    def _gradients(self, params: list[np.ndarray], x: np.ndarray, t: np.ndarray) -> list[np.ndarray]:
        w1, b1, w2, b2 = params
        pre = x @ w1 + b1
        hidden, dact = self._act(pre)
        logits = hidden @ w2 + b2
        probs = _sigmoid(logits) if logits.shape[1] == 1 else _softmax(logits)
        delta = (probs - t) / x.shape[0]
        g_w2 = hidden.T @ delta + self.alpha * w2
        g_b2 = delta.sum(axis=0)
        back = (delta @ w2.T) * dact
        g_w1 = x.T @ back + self.alpha * w1
        g_b1 = back.sum(axis=0)
        return [g_w1, g_b1, g_w2, g_b2]

    def decision_function(self, X: Any) -> np.ndarray:
        """Return the output-layer logits (1-D for binary, rows x classes otherwise)."""
        features = np.asarray(X, dtype=np.float64)
        hidden, _ = self._act(features @ self.coefs_[0].T + self.intercepts_[0])
        logits = hidden @ self.coefs_[1].T + self.intercepts_[1]
        return logits[:, 0] if logits.shape[1] == 1 else logits

    def predict_proba(self, X: Any) -> np.ndarray:
        """Return class probabilities (rows x classes), columns ordered like ``classes_``."""
        logits = self.decision_function(X)
        if logits.ndim == 1:
            p = _sigmoid(logits)
            return np.column_stack([1.0 - p, p])
        return _softmax(logits)

    def predict(self, X: Any) -> np.ndarray:
        """Return the most probable class of each row."""
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -500, 500)))


def _softmax(z: np.ndarray) -> np.ndarray:
    shifted = z - z.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=1, keepdims=True)
