"""Differentially private training and metrics inside the enclave, with IBM diffprivlib.

A DP job spends ``dp_epsilon`` in total, split publicly between training and released metrics
(``dp_metrics_fraction``, default 0.2 for metrics). Every mechanism is diffprivlib's and every
spend goes through one ``diffprivlib.BudgetAccountant`` per job, capped at ``dp_epsilon``:

- training: ``diffprivlib.models.LogisticRegression`` (objective perturbation; features mapped to
  [0, 1] with the *declared* bounds, ``data_norm = sqrt(d)``), ``RandomForestClassifier`` or
  ``GaussianNB`` (with the declared bounds and classes). Data is clipped to the declared bounds
  first; bounds and classes are never computed from the private rows.
- metrics: one histogram over disjoint cells ``(split, class, correct)`` — each row is in
  exactly one cell — noised cell by cell with ``diffprivlib.mechanisms.Geometric``, for row
  counts, class balance and validation accuracy, and one ``diffprivlib.mechanisms.Laplace``
  release of the summed, clipped validation log loss. Both mechanisms draw from ``secrets``
  (diffprivlib does so when no random state is given). ROC AUC is not released under DP.

Under add/remove-one-row neighbours, a training row influences the model and the histogram and a
validation row the histogram and the loss sum, so the job is
``(eps_train + eps_metrics / 2)``-DP, which is within the ``dp_epsilon`` charged to every dataset.
The train/validation split of a DP job uses fresh secret randomness (never the public seed), so
the split itself does not depend on the other rows.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from diffprivlib import BudgetAccountant
from diffprivlib import models as dp_models
from diffprivlib.mechanisms import Geometric, Laplace
from diffprivlib.utils import BudgetError, DiffprivlibCompatibilityWarning, PrivacyLeakWarning
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.naive_bayes import GaussianNB
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import MinMaxScaler

from sealedml.errors import ModelError

P_MIN = 1e-3
"""Probabilities are clipped to at least this before the log loss, bounding one row's loss."""
LOSS_BOUND = -math.log(P_MIN)
ACCOUNTING_SLACK = 1e-9


@dataclass(frozen=True)
class PrivacySplit:
    """How a job's epsilon is divided between training and released metrics."""

    total: float
    training: float
    metrics: float

    @classmethod
    def of(cls, epsilon: float, metrics_fraction: float) -> PrivacySplit:
        """Split ``epsilon`` with ``metrics_fraction`` going to the metrics."""
        metrics = epsilon * metrics_fraction
        return cls(total=epsilon, training=epsilon - metrics, metrics=metrics)

    def to_dict(self) -> dict[str, float]:
        """Return the JSON form."""
        return {"epsilon": self.total, "training_epsilon": self.training, "metrics_epsilon": self.metrics}


def new_accountant(split: PrivacySplit) -> BudgetAccountant:
    """Return a diffprivlib accountant that refuses to spend more than the job's epsilon."""
    return BudgetAccountant(epsilon=split.total * (1 + ACCOUNTING_SLACK), delta=0.0)


def _register_forest_converter() -> None:
    """Let skl2onnx export diffprivlib's forest (its trees are scikit-learn trees)."""
    from skl2onnx import update_registered_converter
    from skl2onnx.operator_converters.random_forest import convert_sklearn_random_forest_classifier
    from skl2onnx.shape_calculators.ensemble_shapes import calculate_tree_classifier_output_shapes

    update_registered_converter(
        dp_models.RandomForestClassifier,
        "SealedMLDiffprivlibRandomForestClassifier",
        calculate_tree_classifier_output_shapes,
        convert_sklearn_random_forest_classifier,
        options={
            "zipmap": [True, False, "columns"],
            "raw_scores": [True, False],
            "decision_path": [True, False],
            "decision_leaf": [True, False],
            "nocl": [True, False],
            "output_class_labels": [False, True],
        },
    )


_register_forest_converter()


def _guarded(fit: Callable[[], Any]) -> tuple[Any, list[str]]:
    """Run a diffprivlib fit: privacy warnings become errors, convergence becomes a note."""
    notes: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = fit()
        except BudgetError as exc:
            raise ModelError("model.training_failed", "the job would exceed its privacy budget") from exc
    for item in caught:
        if issubclass(item.category, PrivacyLeakWarning | DiffprivlibCompatibilityWarning):
            raise ModelError(
                "model.training_failed", "diffprivlib reported a privacy leak: the job was stopped"
            )
        if issubclass(item.category, ConvergenceWarning) and "did not converge" not in notes:
            notes.append("did not converge")
    return result, notes


def fit_private(
    algorithm: str,
    params: dict[str, Any],
    x: np.ndarray,
    y: np.ndarray,
    *,
    low: np.ndarray,
    high: np.ndarray,
    n_classes: int,
    epsilon: float,
    accountant: BudgetAccountant,
) -> tuple[Any, list[str]]:
    """Fit ``algorithm`` with ``epsilon``-DP on rows ``x`` (clipped to [low, high]) and labels ``y``.

    Returns an estimator that skl2onnx can export (a plain scikit-learn model holding the private
    parameters, or diffprivlib's forest) and notes. Raises ``model.training_failed`` if diffprivlib
    reports a privacy leak or the accountant refuses the spend.
    """
    clipped = np.clip(x, low, high)
    if algorithm == "logistic_regression":
        scaler = MinMaxScaler().fit(np.vstack([low, high]))  # fitted on the public bounds only
        unit = np.clip(scaler.transform(clipped), 0.0, 1.0)
        private = dp_models.LogisticRegression(
            epsilon=epsilon,
            data_norm=math.sqrt(x.shape[1]),
            C=params["C"],
            max_iter=params["max_iter"],
            fit_intercept=params["fit_intercept"],
            accountant=accountant,
        )
        fitted, notes = _guarded(lambda: private.fit(unit, y))
        plain = LogisticRegression(C=params["C"], fit_intercept=params["fit_intercept"])
        plain.coef_ = np.array(fitted.coef_, dtype=np.float64)
        plain.intercept_ = np.array(fitted.intercept_, dtype=np.float64)
        plain.classes_ = np.array(fitted.classes_)
        plain.n_features_in_ = x.shape[1]
        plain.n_iter_ = np.array(getattr(fitted, "n_iter_", [0]))
        return Pipeline([("bounds", scaler), ("classifier", plain)]), notes
    if algorithm == "random_forest":
        forest = dp_models.RandomForestClassifier(
            n_estimators=params["n_estimators"],
            max_depth=params["max_depth"] if params["max_depth"] is not None else 5,
            epsilon=epsilon,
            bounds=(low, high),
            classes=list(range(n_classes)),
            n_jobs=1,
            accountant=accountant,
        )
        return _guarded(lambda: forest.fit(clipped, y))
    if algorithm == "naive_bayes":
        bayes = dp_models.GaussianNB(epsilon=epsilon, bounds=(low, high), accountant=accountant)
        fitted, notes = _guarded(lambda: bayes.fit(clipped, y))
        plain_nb = GaussianNB()
        for name in (
            "theta_",
            "var_",
            "class_prior_",
            "classes_",
            "class_count_",
            "epsilon_",
            "n_features_in_",
        ):
            setattr(plain_nb, name, getattr(fitted, name))
        return plain_nb, notes
    raise ModelError("model.training_failed", f"no private implementation of {algorithm}")


def private_metrics(
    *,
    y_train: np.ndarray,
    y_val: np.ndarray,
    predicted_val: np.ndarray,
    proba_val: np.ndarray,
    classes: tuple[Any, ...],
    epsilon: float,
    accountant: BudgetAccountant,
) -> dict[str, Any]:
    """Release validation accuracy, log loss, row counts and class balance with ``epsilon``-DP.

    Half of ``epsilon`` goes to one geometric-noised histogram over disjoint cells (each row in
    one), half to the Laplace-noised sum of per-row log losses (each bounded by ``LOSS_BOUND``). Counts are
    non-negative integers; derived ratios are clipped to their valid ranges.
    """
    k = len(classes)
    correct = (predicted_val == y_val).astype(np.int64)
    cells = np.concatenate([y_train, k + 2 * y_val + correct])
    exact = np.bincount(cells, minlength=3 * k)
    try:
        # One histogram: each row is in exactly one cell, so epsilon / 2 covers every cell.
        accountant.check(epsilon, 0.0)
        cell_noise = Geometric(epsilon=epsilon / 2, sensitivity=1)
        counts = np.array([max(0, int(cell_noise.randomise(int(n)))) for n in exact], dtype=np.int64)
        accountant.spend(epsilon / 2, 0.0)
    except BudgetError as exc:
        raise ModelError(
            "model.training_failed", "the metrics would exceed the job's privacy budget"
        ) from exc
    train_counts = counts[:k]
    val_wrong = counts[k::2][:k]
    val_right = counts[k + 1 :: 2][:k]
    rows_train = int(train_counts.sum())
    rows_val = int(val_wrong.sum() + val_right.sum())
    rows_used = rows_train + rows_val

    probabilities = np.asarray(proba_val, dtype=np.float64)
    picked = probabilities[np.arange(len(y_val)), y_val] if len(y_val) else np.zeros(0)
    losses = -np.log(np.clip(picked, P_MIN, 1.0))
    noisy_loss = Laplace(epsilon=epsilon / 2, sensitivity=LOSS_BOUND).randomise(float(losses.sum()))
    accountant.spend(epsilon / 2, 0.0)

    per_class = train_counts + val_wrong + val_right
    return {
        "accuracy": float(min(1.0, max(0.0, val_right.sum() / max(rows_val, 1)))),
        "roc_auc": None,
        "log_loss": float(min(LOSS_BOUND, max(0.0, noisy_loss / max(rows_val, 1)))),
        "rows_used": rows_used,
        "rows_train": rows_train,
        "rows_validation": rows_val,
        "class_balance": [
            {"class": c, "count": int(n), "fraction": float(n / rows_used) if rows_used else 0.0}
            for c, n in zip(classes, per_class, strict=True)
        ],
        "noised": True,
    }


__all__ = ["LOSS_BOUND", "PrivacySplit", "fit_private", "new_accountant", "private_metrics"]
