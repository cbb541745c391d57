"""Usage over time: bucketing of (time, amount) points and a server-drawn SVG bar chart (matplotlib).

Charts are drawn on the server so the page needs no script to show them; every number in a chart
is also in a table next to it. No caller-supplied text is drawn: titles and axis labels are fixed
strings and tick labels are dates, so nothing a tenant typed reaches the SVG.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

__all__ = ["Bucket", "bucket_series", "render_bars_svg"]

HOURLY_SPAN = timedelta(hours=48)
MAX_HOURLY = 48
MAX_DAILY = 90
MIN_HOURLY = 12
MIN_DAILY = 7
_BAR_COLOUR = "#1d4ed8"
_render_lock = threading.Lock()  # matplotlib's rc settings are process-global


@dataclass(frozen=True)
class Bucket:
    """One bar: the start of the hour or day (UTC), its label, how many events and their total."""

    start: datetime
    label: str
    events: int
    total: int


def _floor(moment: datetime, step: timedelta) -> datetime:
    moment = moment.astimezone(UTC)
    if step == timedelta(hours=1):
        return moment.replace(minute=0, second=0, microsecond=0)
    return moment.replace(hour=0, minute=0, second=0, microsecond=0)


def bucket_series(points: Iterable[tuple[datetime, int]], *, now: datetime) -> tuple[str, list[Bucket]]:
    """Group ``(time, amount)`` points into consecutive hours (if they span at most 48 hours) or
    days, from the first point to ``now``; return the granularity (``"hour"``/``"day"``) and buckets.

    Guarantees: buckets are consecutive and oldest first, empty periods included (as zeros); at
    least 12 hourly or 7 daily buckets (so one busy hour is seen against the quiet ones before it)
    and at most 48 hourly or 90 daily, the most recent ones (older points are left out of the
    chart only); no points gives no buckets.
    """
    ordered = sorted(points, key=lambda point: point[0])
    if not ordered:
        return "hour", []
    now = now.astimezone(UTC)
    first = ordered[0][0].astimezone(UTC)
    hourly = now - first <= HOURLY_SPAN
    step = timedelta(hours=1) if hourly else timedelta(days=1)
    limit = MAX_HOURLY if hourly else MAX_DAILY
    end = _floor(max(now, ordered[-1][0]), step)
    shortest = MIN_HOURLY if hourly else MIN_DAILY
    start = max(min(_floor(first, step), end - step * (shortest - 1)), end - step * (limit - 1))
    count = int((end - start) / step) + 1
    events = [0] * count
    totals = [0] * count
    for moment, amount in ordered:
        slot = int((_floor(moment, step) - start) / step)
        if 0 <= slot < count:
            events[slot] += 1
            totals[slot] += amount
    fmt = "%Y-%m-%d %H:00" if hourly else "%Y-%m-%d"
    buckets = [
        Bucket(start + step * i, (start + step * i).strftime(fmt), events[i], totals[i]) for i in range(count)
    ]
    return ("hour" if hourly else "day"), buckets


def _tick_labels(buckets: list[Bucket]) -> list[str]:
    """Short labels: the hour (or day), with the date (or year) where it changes."""
    labels: list[str] = []
    previous: datetime | None = None
    for bucket in buckets:
        start = bucket.start
        hourly = " " in bucket.label  # bucket_series labels hours "YYYY-MM-DD HH:00", days "YYYY-MM-DD"
        if hourly:
            new_day = previous is None or previous.date() != start.date()
            labels.append(start.strftime("%b %d %H:00" if new_day else "%H:00"))
        else:
            new_year = previous is None or previous.year != start.year
            labels.append(start.strftime("%Y %b %d" if new_year else "%b %d"))
        previous = start
    return labels


def render_bars_svg(buckets: list[Bucket], *, title: str, ylabel: str) -> bytes:
    """Return an SVG bar chart of the buckets' totals (``title``/``ylabel`` are fixed strings).

    Guarantees: a standalone SVG document without script, the same bytes for the same input; an
    empty series draws an empty chart saying there is no usage yet.
    """
    import matplotlib
    from matplotlib.backends.backend_svg import FigureCanvasSVG
    from matplotlib.figure import Figure

    with _render_lock, matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "sealedml"}):
        figure = Figure(figsize=(7.5, 2.8), dpi=100, layout="constrained")
        FigureCanvasSVG(figure)
        axes = figure.add_subplot()
        axes.set_title(title, fontsize=11, loc="left")
        axes.set_ylabel(ylabel)
        axes.spines[["top", "right"]].set_visible(False)
        if buckets:
            positions = list(range(len(buckets)))
            axes.bar(positions, [b.total for b in buckets], color=_BAR_COLOUR, width=0.7)
            stride = -(-len(buckets) // 6)  # at most six labels
            ticks = positions[::stride]
            axes.set_xticks(ticks, _tick_labels([buckets[i] for i in ticks]), fontsize=8)
            axes.set_xlim(-0.6, len(buckets) - 0.4)
        else:
            axes.set_xticks([])
            axes.text(0.5, 0.5, "No usage yet", ha="center", va="center", transform=axes.transAxes)
        axes.set_ylim(bottom=0)
        axes.yaxis.get_major_locator().set_params(integer=True)
        out = io.BytesIO()
        figure.savefig(out, format="svg", metadata={"Date": None})
    return out.getvalue()
