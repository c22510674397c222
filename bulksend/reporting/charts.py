"""Small SVG charts: a time series of several lines and areas, horizontal bars, a histogram.

The geometry (scales, ticks, paths) is computed here; small Jinja2 templates (``templates/*.svg.j2``,
autoescaped as every label may come from data) lay it out. Jinja2 is already a dependency, the
output is a few kilobytes of plain SVG with its text as text (searchable, selectable, readable by
tests and screen readers), no script, no embedded font, and it follows the page's colours
(``currentColor``) in light and dark. A charting library that writes SVG would add a dependency
for three chart shapes and bring its own defaults: scripts for tooltips, per-chart stylesheets,
text drawn as paths (see docs/report.md, "Charts").
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, NamedTuple

import jinja2
from markupsafe import Markup

__all__ = [
    "PALETTE",
    "Bar",
    "Marker",
    "Series",
    "bars",
    "compact_number",
    "histogram",
    "nice_ticks",
    "time_series",
]

PALETTE: Final = {
    # Okabe–Ito: told apart with any colour vision.
    "blue": "#0072B2",
    "green": "#009E73",
    "vermillion": "#D55E00",
    "orange": "#E69F00",
    "sky": "#56B4E9",
    "purple": "#CC79A7",
    "yellow": "#F0E442",
    "grey": "#888888",
}


@functools.cache
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("bulksend.reporting", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
    )


def render_template(name: str, **context: Any) -> Markup:
    """Render one of this package's templates (autoescaped) as markup to embed."""
    return Markup(_environment().get_template(name).render(**context))


@dataclass(frozen=True)
class _Frame:
    """A chart's size and its plot area (the room left for axes and labels around it)."""

    width: float
    height: float
    left: float
    right: float
    top: float = 0.0
    bottom: float = 0.0


def _svg(template: str, title: str, chart_id: str | None, frame: _Frame, **context: Any) -> Markup:
    """One chart: ``template`` with its id, title and frame (``f`` in the template)."""
    return render_template(template, id=_chart_id(title, chart_id), title=title, f=frame, **context)


@dataclass(frozen=True)
class Series:
    """One line of a time series: ``(unix time, value)`` points; a ``None`` value breaks the line."""

    label: str
    points: Sequence[tuple[float, float | None]]
    color: str = PALETTE["blue"]
    area: bool = False
    dashed: bool = False


class Marker(NamedTuple):
    """A moment to point at: a vertical dashed line with a short label, and a title on hover."""

    t: float
    label: str
    title: str


@dataclass(frozen=True)
class Bar:
    """One horizontal bar: ``value`` drawn, ``text`` written after it."""

    label: str
    value: float
    text: str
    color: str = PALETTE["blue"]


def compact_number(value: float) -> str:
    """``1234`` → ``1.2k``, ``2500000`` → ``2.5M``, ``0.25`` → ``0.25``: for axis labels."""
    magnitude = abs(value)
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if magnitude >= limit:
            text = f"{value / limit:.1f}".rstrip("0").rstrip(".")
            return text + suffix
    if magnitude and magnitude < 10 and value != int(value):
        return f"{value:.2f}".rstrip("0").rstrip(".")
    return f"{value:,.0f}"


def nice_ticks(high: float, count: int = 5, *, whole: bool = False) -> list[float]:
    """Round tick values from 0 to at least ``high`` (steps of 1, 2 or 5 × a power of ten; with
    ``whole``, steps of at least 1, for counts)."""
    if high <= 0 or not math.isfinite(high):
        return [0.0, 1.0]
    raw = max(high / count, 1.0) if whole else high / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    n = math.ceil(high / step - 1e-9)
    return [round(i * step, 10) for i in range(n + 1)]


_TIME_STEPS: Final = (
    1,
    2,
    5,
    10,
    15,
    30,
    60,
    120,
    300,
    600,
    900,
    1800,
    3600,
    7200,
    10800,
    21600,
    43200,
    86400,
)


def _time_ticks(low: float, high: float, most: int) -> tuple[list[float], str]:
    span = max(high - low, 1.0)
    step = next((s for s in _TIME_STEPS if span / s <= most), None)
    if step is None:
        step = 86400 * math.ceil(span / most / 86400)
    first = math.ceil(low / step) * step
    ticks = [float(t) for t in range(int(first), int(high) + 1, int(step))]
    if span >= 86400:
        fmt = "%m-%d %H:%M"
    elif step >= 60:
        fmt = "%H:%M"
    else:
        fmt = "%H:%M:%S"
    return ticks, fmt


def _chart_id(title: str, given: str | None) -> str:
    if given:
        return given
    return "bs-" + (re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")[:40] or "chart")


def _fmt(value: float) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".")


def _paths(
    points: Sequence[tuple[float, float | None]], x: Callable[[float], float], y: Callable[[float], float]
) -> tuple[str, str]:
    """The line's path and the area under it, both broken where a value is None."""
    line: list[str] = []
    area: list[str] = []
    run: list[tuple[str, str]] = []

    def close() -> None:
        if run:
            line.append("M" + "L".join(f"{px},{py}" for px, py in run))
            base = _fmt(y(0))
            area.append(
                f"M{run[0][0]},{base}L" + "L".join(f"{px},{py}" for px, py in run) + f"L{run[-1][0]},{base}Z"
            )
            run.clear()

    for t, value in points:
        if value is None:
            close()
        else:
            run.append((_fmt(x(t)), _fmt(y(value))))
    close()
    return "".join(line), "".join(area)


def _placed(markers: Sequence[Marker], x: Callable[[float], float]) -> list[dict[str, Any]]:
    """Markers with their x; a label only where it does not run into the previous one (each
    keeps its title, shown on hover)."""
    placed: list[dict[str, Any]] = []
    free_from = -math.inf
    for m in sorted(markers, key=lambda m: m.t):
        at = round(x(m.t), 1)
        label = m.label if at >= free_from else ""
        if label:
            free_from = at + 8 + 6.5 * len(label)
        placed.append({"x": at, "label": label, "title": m.title})
    return placed


def time_series(
    series: Sequence[Series],
    *,
    title: str,
    y_unit: str = "",
    x_note: str = "UTC",
    markers: Sequence[Marker] = (),
    marker_color: str = PALETTE["vermillion"],
    chart_id: str | None = None,
    width: int = 760,
    height: int = 250,
    empty: str = "nothing to draw yet",
    whole: bool = False,
) -> Markup:
    """Several series over a shared time axis and a y axis from 0 (lines, or areas under them);
    ``whole`` when the values are counts (no tick between two whole numbers)."""
    frame = _Frame(width, height, left=52, right=width - 12, top=40, bottom=height - 36)
    left, right, top, bottom = frame.left, frame.right, frame.top, frame.bottom
    times = [t for s in series for t, v in s.points if v is not None] + [m.t for m in markers]
    values = [v for s in series for _, v in s.points if v is not None]
    low, high = (min(times), max(times)) if times else (0.0, 1.0)
    if high <= low:
        low, high = low - 0.5, high + 0.5
    y_ticks = nice_ticks(max(values, default=0.0), whole=whole)
    y_top = y_ticks[-1] or 1.0

    def x(t: float) -> float:
        return left + (t - low) / (high - low) * (right - left)

    def y(v: float) -> float:
        return bottom - v / y_top * (bottom - top)

    x_ticks, fmt = _time_ticks(low, high, max(2, int((right - left) // 90)))
    drawn = []
    legend_x = float(left)
    for s in series:
        line, area = _paths(s.points, x, y)
        drawn.append(
            {
                "label": s.label,
                "color": s.color,
                "line": line,
                "area": area if s.area else "",
                "dashed": s.dashed,
                "legend_x": legend_x,
            }
        )
        legend_x += 28 + 6.5 * len(s.label)
    return _svg(
        "timeseries.svg.j2",
        title,
        chart_id,
        frame,
        y_unit=y_unit,
        x_note=x_note,
        y_ticks=[{"y": round(y(v), 1), "label": compact_number(v)} for v in y_ticks],
        x_ticks=[{"x": _fmt(x(t)), "label": datetime.fromtimestamp(t, UTC).strftime(fmt)} for t in x_ticks],
        series=drawn,
        markers=_placed(markers, x),
        marker_color=marker_color,
        empty="" if values else empty,
    )


def bars(
    items: Sequence[Bar], *, title: str, chart_id: str | None = None, width: int = 760, label_width: int = 200
) -> Markup:
    """Horizontal bars, one per item, scaled to the largest value, with their text after them."""
    bar_height, gap = 16, 6
    room = width - label_width - 130  # the widest text after a bar: '1,000,000 (100.0 %)'
    biggest = max((b.value for b in items), default=0.0) or 1.0
    drawn = []
    for i, b in enumerate(items):
        short = b.label if len(b.label) <= 30 else b.label[:29] + "…"
        drawn.append(
            {
                "label": b.label,
                "short": short,
                "y": 4 + i * (bar_height + gap),
                "width": round(max(1.0 if b.value else 0.0, b.value / biggest * room), 1),
                "text": b.text,
                "color": b.color,
            }
        )
    height = 8 + len(items) * (bar_height + gap)
    return _svg(
        "bars.svg.j2",
        title,
        chart_id,
        _Frame(width, height, label_width, width),
        bar_height=bar_height,
        bars=drawn,
    )


def histogram(
    bins: Sequence[tuple[str, int]],
    *,
    title: str,
    x_label: str,
    color: str = PALETTE["blue"],
    chart_id: str | None = None,
    width: int = 760,
    height: int = 180,
) -> Markup:
    """Vertical bars, one per ``(label, count)``, each with its count above it."""
    frame = _Frame(width, height, left=12, right=width - 12, top=20, bottom=height - 40)
    left, right, top, bottom = frame.left, frame.right, frame.top, frame.bottom
    biggest = max((n for _, n in bins), default=0) or 1
    slot = (right - left) / max(1, len(bins))
    bar = min(slot * 0.8, 96.0)
    drawn = []
    for i, (label, n) in enumerate(bins):
        drawn.append(
            {
                "label": label,
                "text": f"{n:,}",
                "x": round(left + i * slot + (slot - bar) / 2, 1),
                "width": round(bar, 1),
                "y": round(bottom - n / biggest * (bottom - top), 1),
            }
        )
    return _svg("histogram.svg.j2", title, chart_id, frame, x_label=x_label, color=color, bins=drawn)
