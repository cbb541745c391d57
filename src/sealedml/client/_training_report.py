"""Showing a training job's released metrics: tables and a PNG chart, made on the client.

The enclave releases numbers only (noised ones for DP jobs); formatting and plotting them needs no
data, so it happens here, outside the trusted computing base (the TwoFold split in
``docs/architecture.md``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sealedml.errors import InputError

__all__ = ["metric_rows", "write_metrics_chart"]


def _number(value: object, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def metric_rows(metrics: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Return ``(name, value)`` rows of the released metrics, in reading order.

    Under DP the row counts, accuracy and log loss are noised and ROC AUC is not released; the
    rows say so.
    """
    noised = bool(metrics.get("noised"))
    suffix = " (noised)" if noised else ""
    rows = [
        ("algorithm", str(metrics.get("algorithm", ""))),
        ("validation accuracy" + suffix, _number(metrics.get("accuracy"))),
        ("ROC AUC", _number(metrics.get("roc_auc")) if not noised else "not released under DP"),
        ("log loss" + suffix, _number(metrics.get("log_loss"))),
        ("rows used" + suffix, _number(metrics.get("rows_used"))),
        (
            "training / validation rows" + suffix,
            f"{metrics.get('rows_train')} / {metrics.get('rows_validation')}",
        ),
        ("features", _number(metrics.get("features"))),
    ]
    for entry in metrics.get("class_balance") or []:
        rows.append(
            (
                f"class {entry.get('class')!r}" + suffix,
                f"{entry.get('count')} ({entry.get('fraction', 0):.1%})",
            )
        )
    dp = metrics.get("dp")
    if isinstance(dp, Mapping):
        rows.append(("privacy (epsilon)", f"{_number(dp.get('epsilon'), 3)} total"))
        rows.append(
            (
                "epsilon split",
                f"training {_number(dp.get('training_epsilon'), 3)}, "
                f"metrics {_number(dp.get('metrics_epsilon'), 3)}",
            )
        )
        rows.append(("epsilon accounted", _number(dp.get("accounted_epsilon"), 4)))
    for note in metrics.get("notes") or []:
        rows.append(("note", str(note)))
    return rows


def write_metrics_chart(
    metrics: Mapping[str, Any], phases: Sequence[Mapping[str, Any]], path: Path, *, title: str = ""
) -> None:
    """Draw the released metrics, the class balance and the enclave's phase timings as a PNG.

    Raises ``input.malformed`` unless ``path`` ends in ``.png``.
    """
    if Path(path).suffix.lower() != ".png":
        raise InputError("input.malformed", f"the chart is written as PNG: {path} should end in .png")
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    noised = bool(metrics.get("noised"))
    figure, axes = plt.subplots(1, 3, figsize=(13, 4.0), constrained_layout=True)
    names, values = [], []
    for key, label in (("accuracy", "accuracy"), ("roc_auc", "ROC AUC"), ("log_loss", "log loss")):
        value = metrics.get(key)
        if isinstance(value, int | float):
            names.append(label)
            values.append(float(value))
    axis = axes[0]
    bars = axis.bar(
        names or ["(none)"], values or [0.0], color=["#3b6ea5", "#5a9e6f", "#c0504d"][: len(values) or 1]
    )
    axis.set_ylim(0, max([1.0, *values]) * 1.1)
    axis.set_title("Validation metrics" + (" (noised, DP)" if noised else ""))
    for bar, value in zip(bars, values, strict=False):
        axis.annotate(f"{value:.3f}", (bar.get_x() + bar.get_width() / 2, value), ha="center", va="bottom")

    balance = list(metrics.get("class_balance") or [])
    axis = axes[1]
    axis.bar(
        [str(b.get("class")) for b in balance] or ["(none)"], [b.get("count", 0) for b in balance] or [0]
    )
    axis.set_title("Rows per class" + (" (noised)" if noised else ""))
    axis.set_xlabel("class")

    axis = axes[2]
    labels = [str(p.get("phase")) for p in phases]
    seconds = [float(p.get("seconds") or 0.0) for p in phases]
    axis.barh(labels or ["(none)"], seconds or [0.0], color="#8064a2")
    axis.invert_yaxis()
    axis.set_title("Enclave phases")
    axis.set_xlabel("seconds")
    if title:
        figure.suptitle(title)
    figure.savefig(path, dpi=110)
    plt.close(figure)
