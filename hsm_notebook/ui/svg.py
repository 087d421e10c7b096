"""Small SVG charts for the panel, drawn as text in the kernel.

Why SVG text in an HTML widget rather than a PNG or a plotting widget: a chart of a few
polylines is a few kilobytes (a PNG of the same plot was ~40 KB, redrawn on every change),
it scales and prints crisply, each point carries a hover title, and nothing needs a
JavaScript extension (so Lab, Notebook 7, Voila and a saved notebook all show it).  Every
series is thinned to at most ``MAX_POINTS`` points, so the bytes sent per refresh depend on
the number of curves shown, not on the number of steps or tasks.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence
from typing import Any, cast

MAX_POINTS = 120
WIDTH, HEIGHT = 560, 240
_PAD = (48, 12, 14, 30)  # left, right, top, bottom
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
          "#17becf")

Point = tuple[float, float]


def thin(points: Sequence[Point], limit: int = MAX_POINTS) -> list[Point]:
    """At most ``limit`` points, evenly spread, always keeping the last one."""
    if len(points) <= limit:
        return list(points)
    step = (len(points) - 1) / (limit - 1)
    return [points[round(i * step)] for i in range(limit)]


def _fmt(value: float) -> str:
    if value == 0 or 1e-3 <= abs(value) < 1e5:
        return f"{value:.4g}"
    return f"{value:.2e}"


def _scale(lo: float, hi: float, log: bool) -> tuple[float, float]:
    if log:
        lo, hi = math.log10(lo), math.log10(hi)
    if hi == lo:
        lo, hi = lo - 0.5, hi + 0.5
    return lo, hi


def chart(series: Iterable[tuple[str, Sequence[Point]]], *, x_label: str = "", y_label: str = "",
          scatter: bool = False, log_x: bool | None = None, title: str = "") -> str:
    """An SVG line (or scatter) chart of named series of ``(x, y)`` points.  ``log_x=None`` picks
    a log x axis when every x is positive and they span more than 50x (fixed per call's data)."""
    data = [(name, thin([(float(x), float(y)) for x, y in pts if math.isfinite(x) and math.isfinite(y)]))
            for name, pts in series]
    data = [(name, pts) for name, pts in data if pts]
    if not data:
        return ""
    xs = [x for _, pts in data for x, _ in pts]
    ys = [y for _, pts in data for _, y in pts]
    if log_x is None:
        log_x = min(xs) > 0 and max(xs) / min(xs) > 50
    x0, x1 = _scale(min(xs), max(xs), log_x)
    y0, y1 = _scale(min(ys), max(ys), False)
    left, right, top, bottom = _PAD
    w, h = WIDTH - left - right, HEIGHT - top - bottom

    def px(x: float) -> float:
        return left + ((math.log10(x) if log_x else x) - x0) / (x1 - x0) * w

    def py(y: float) -> float:
        return top + h - (y - y0) / (y1 - y0) * h

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="hsm-chart" width="{WIDTH}" height="{HEIGHT}" '
             f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="10">']
    if title:
        parts.append(f"<title>{html.escape(title)}</title>")
    parts.append(f'<rect x="{left}" y="{top}" width="{w}" height="{h}" fill="none" stroke="#ccc"/>')
    for i in range(5):  # y ticks
        v = y0 + (y1 - y0) * i / 4
        parts.append(f'<text x="{left - 4}" y="{py(v) + 3:.1f}" text-anchor="end">{_fmt(v)}</text>')
    for i in range(5):  # x ticks
        t = x0 + (x1 - x0) * i / 4
        v = 10 ** t if log_x else t
        parts.append(f'<text x="{left + w * i / 4:.1f}" y="{HEIGHT - bottom + 12}" '
                     f'text-anchor="middle">{_fmt(v)}</text>')
    parts.append(f'<text x="{left + w / 2}" y="{HEIGHT - 3}" text-anchor="middle">{html.escape(x_label)}'
                 f'{" (log)" if log_x else ""}</text>')
    parts.append(f'<text x="10" y="{top + h / 2}" text-anchor="middle" transform="rotate(-90 10 {top + h / 2})">'
                 f'{html.escape(y_label)}</text>')
    for k, (name, pts) in enumerate(data):
        color = COLORS[k % len(COLORS)]
        label = html.escape(name)
        if scatter:
            parts.extend(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="2.5" fill="{color}" fill-opacity="0.6">'
                         f'<title>{label}: {_fmt(x)}, {_fmt(y)}</title></circle>' for x, y in pts)
        else:
            path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)
            parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{path}">'
                         f'<title>{label}</title></polyline>')
            x, y = pts[-1]
            parts.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="2" fill="{color}">'
                         f'<title>{label}: {_fmt(x)}, {_fmt(y)}</title></circle>')
    parts.append("</svg>")
    return "".join(parts)


def legend(names: Sequence[str]) -> str:
    """A one-line HTML legend matching :func:`chart`'s colours."""
    return " ".join(f'<span style="color:{COLORS[k % len(COLORS)]}">&#9632;</span> {html.escape(n)}'
                    for k, n in enumerate(names))


MAX_LINES = 200


def parallel(axes: Sequence[str], rows: Sequence[Sequence[object]], scores: Sequence[float], minimize: bool) -> str:
    """Parallel coordinates: one vertical axis per column (numbers scaled, text values spread
    evenly), one line per row coloured from worst (grey) to best (blue) by ``scores``.  Only the
    ``MAX_LINES`` best rows are drawn, so the size does not grow with the number of tasks."""
    order = sorted(range(len(rows)), key=lambda i: scores[i], reverse=not minimize)[:MAX_LINES]
    if len(axes) < 2 or not order:
        return ""
    left, right, top, bottom = 30, 30, 18, 20
    w, h = WIDTH - left - right, HEIGHT - top - bottom
    positions: list[dict[Any, float]] = []
    for k in range(len(axes)):
        column = [rows[i][k] for i in order]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in column):
            numbers = cast(list[float], column)
            lo, hi = min(numbers), max(numbers)
            span = (hi - lo) or 1.0
            positions.append({v: (v - lo) / span for v in numbers})
        else:
            labels = sorted({str(v) for v in column})
            spread = {label: (j + 0.5) / len(labels) for j, label in enumerate(labels)}
            positions.append({v: spread[str(v)] for v in column})
    xs = [left + w * k / (len(axes) - 1) for k in range(len(axes))]
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="hsm-parallel" width="{WIDTH}" height="{HEIGHT}" '
             f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="10">']
    for x, name in zip(xs, axes, strict=False):
        parts.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + h}" stroke="#999"/>'
                     f'<text x="{x:.1f}" y="{top - 5}" text-anchor="middle">{html.escape(str(name))}</text>')
    n = len(order)
    for rank, i in reversed(list(enumerate(order))):  # the best drawn last, on top
        shade = 1 - rank / max(1, n - 1)
        color = f"rgb({int(180 - 150 * shade)},{int(180 - 100 * shade)},{int(180 + 60 * shade)})"
        path = " ".join(f"{x:.1f},{top + h - positions[k][rows[i][k]] * h:.1f}" for k, x in enumerate(xs))
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-opacity="0.7" points="{path}">'
                     f'<title>{html.escape(", ".join(f"{a}={rows[i][k]}" for k, a in enumerate(axes)))}</title>'
                     f'</polyline>')
    parts.append("</svg>")
    return "".join(parts)
