"""The marketplace part of the SDK: listings, credits, prices and the usage report.

Everything here is public metadata; nothing secret is sent or received.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sealedml.errors import InputError

__all__ = ["MarketAPI", "report_summary", "write_report_chart", "write_report_csv"]

REPORT_FIELDS = ("job_id", "model", "model_id", "provider", "payer", "rows", "amount", "settled_at")


class MarketAPI:
    """Marketplace calls over an authenticated SDK client (``client.market``)."""

    def __init__(self, call: Callable[..., Any]) -> None:
        self._call = call

    def models(
        self,
        *,
        query: str | None = None,
        max_price: int | None = None,
        tee: str | None = None,
        passing: bool | None = None,
    ) -> list[dict[str, Any]]:
        """Return ready model listings matching the filters, each with its attestation verdict."""
        params = {"q": query, "max_price": max_price, "tee": tee, "passing": passing}
        return list(self._call("GET", "/v1/market/models", params=_drop_none(params)))

    def model(self, model_id: str) -> dict[str, Any]:
        """Return one model listing (``not_found.listing`` if it is not listed)."""
        return dict(self._call("GET", f"/v1/market/models/{model_id}"))

    def datasets(self, *, query: str | None = None, max_price: int | None = None) -> list[dict[str, Any]]:
        """Return dataset listings (schema and size only)."""
        params = {"q": query, "max_price": max_price}
        return list(self._call("GET", "/v1/market/datasets", params=_drop_none(params)))

    def offer_dataset(
        self,
        name: str,
        *,
        columns: Sequence[tuple[str, str]],
        rows: int,
        size_bytes: int,
        description: str = "",
        price: int = 0,
    ) -> dict[str, Any]:
        """List a dataset's schema and size for training collaborations (data owners only)."""
        body = {
            "name": name,
            "description": description,
            "columns": [{"name": n, "type": t} for n, t in columns],
            "rows": rows,
            "size_bytes": size_bytes,
            "price": price,
        }
        return dict(self._call("POST", "/v1/market/datasets", json=body))

    def resources(self, *, refresh: bool = False) -> list[dict[str, Any]]:
        """Return TEE resources with their last verified claims (``refresh`` re-attests now)."""
        return list(self._call("GET", "/v1/market/resources", params={"refresh": refresh}))

    def set_price(self, model_id: str, price_per_row: int) -> dict[str, Any]:
        """Change the price of one of the caller's models."""
        return dict(self._call("PATCH", f"/v1/models/{model_id}", json={"price_per_row": price_per_row}))

    def grant(self, account_id: str, amount: int) -> int:
        """Add credits to an account (admin only); returns the new balance."""
        answer = self._call("POST", f"/v1/accounts/{account_id}/credits", json={"amount": amount})
        return int(answer["balance"])

    def report(self) -> list[dict[str, Any]]:
        """Return settled charges visible to the caller (all for admins)."""
        return list(self._call("GET", "/v1/market/report"))


def _drop_none(params: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in params.items() if value is not None}


def report_summary(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, dict[str, int]]]:
    """Aggregate report rows into uses, rows and credits per model, per provider and per payer."""
    summary: dict[str, dict[str, dict[str, int]]] = {"model": {}, "provider": {}, "payer": {}}
    for row in rows:
        for key in summary:
            entry = summary[key].setdefault(str(row[key]), {"uses": 0, "rows": 0, "credits": 0})
            entry["uses"] += 1
            entry["rows"] += int(row["rows"])
            entry["credits"] += int(row["amount"])
    return summary


def write_report_csv(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Write one CSV line per settled charge (the receipts behind every total)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=REPORT_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    Path(path).write_text(buffer.getvalue(), encoding="utf-8")


def write_report_chart(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Draw credits per model and per payer as a PNG bar chart."""
    if Path(path).suffix.lower() != ".png":
        raise InputError("input.malformed", f"the chart is written as PNG: {path} should end in .png")
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    summary = report_summary(rows)
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    for axis, key, title in (
        (axes[0], "model", "Revenue per model"),
        (axes[1], "payer", "Spending per party"),
    ):
        names = sorted(summary[key])
        credits = [summary[key][name]["credits"] for name in names]
        axis.barh(names or ["(no usage)"], credits or [0], color="#3b6ea5")
        axis.set_title(title)
        axis.set_xlabel("credits")
        for index, name in enumerate(names):
            axis.annotate(
                f"{summary[key][name]['uses']} jobs",
                (credits[index], index),
                xytext=(4, 0),
                textcoords="offset points",
                va="center",
                fontsize=8,
            )
    figure.savefig(path, dpi=120)
    plt.close(figure)
