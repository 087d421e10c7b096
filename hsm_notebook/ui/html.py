"""Small HTML helpers for the panel: escaped tables, state bars and the panel's CSS.

Everything here is a pure function of its arguments, so it is tested without widgets.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd

STATE_COLORS = {
    "PENDING": "#888", "SUBMITTING": "#c80", "QUEUED": "#a60", "RUNNING": "#06c",
    "COMPLETED": "#080", "FAILED": "#c00", "CANCELLED": "#666", "LOST": "#c60",
}

#: Bar segments, left to right: what has ended first (good, then bad), then what is
#: under way, then what waits.  On a bar PENDING is pale: "not started", never read as
#: CANCELLED's dark grey.
BAR_ORDER = ("COMPLETED", "FAILED", "CANCELLED", "LOST", "RUNNING", "QUEUED", "SUBMITTING", "PENDING")
BAR_COLORS = {**STATE_COLORS, "PENDING": "#d4d4d4"}

CSS = """<style>
.hsm-panel table { border-collapse: collapse; font-size: 12px; }
.hsm-panel th, .hsm-panel td { padding: 2px 8px; border-bottom: 1px solid #ddd; text-align: left; white-space: nowrap; }
.hsm-panel td.hsm-err { max-width: 420px; overflow: hidden; text-overflow: ellipsis; }
.hsm-panel pre { font-size: 11px; max-height: 240px; overflow: auto; background: #f7f7f7; padding: 4px; }
.hsm-panel .jupyter-widget-button, .hsm-panel .widget-button { width: auto; min-width: 72px; }
.hsm-panel .hsm-bar { display: flex; height: 14px; background: #f0f0f0; border-radius: 3px; overflow: hidden; }
.hsm-panel .hsm-seg { height: 100%; }
.hsm-panel .hsm-legend { font-size: 11px; color: #444; margin-right: 10px; white-space: nowrap; }
.hsm-panel .hsm-swatch { display: inline-block; width: 9px; height: 9px; margin-right: 3px; border-radius: 2px; }
.hsm-panel .hsm-bad input, .hsm-panel .hsm-bad textarea { border-color: #c00; background: #fff5f5; }
.hsm-panel .hsm-row-note, .hsm-panel .hsm-row-note .widget-html-content {
  font-size: 11px; line-height: 1.3; white-space: normal; align-self: center; }
.hsm-panel .hsm-preview { color: #555; }
.hsm-panel .hsm-lines { line-height: 1.6; }
</style>"""


def is_missing(value: Any) -> bool:
    """None, NaN, NaT and ``pd.NA``: how pandas spells an empty cell (never shown as text)."""
    if value is None:
        return True
    if not pd.api.types.is_scalar(value):
        return False
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def esc(value: Any) -> str:
    """``value`` as escaped HTML text; an empty cell (see ``is_missing``) is the empty string."""
    if is_missing(value):
        return ""
    return html.escape(str(value))


def state_badge(state: str) -> str:
    return f"<span style='color:{STATE_COLORS.get(state, '#000')};font-weight:600'>{esc(state)}</span>"


def table(df: pd.DataFrame, css_class: str, state_column: str | None = "state", max_cell: int = 120) -> str:
    """``df`` as an HTML table; rows carry ``data-state`` so tests and styles can find them.
    Empty cells (None, NaN, NaT, pd.NA) stay empty rather than saying "nan"."""
    if df.empty:
        return f"<table class='{css_class}'><tr><td><i>nothing to show</i></td></tr></table>"
    cols = list(df.columns)
    head = "".join(f"<th>{esc(c)}</th>" for c in cols)
    body = []
    for row in df.itertuples(index=False):
        attr = ""
        if state_column in cols:
            value = row[cols.index(state_column)]
            attr = f" data-state='{esc(value)}'"
        cells = "".join(f"<td{_attrs(css, title)}>{inner}</td>" for css, title, inner in
                        (_cell(c, v, state_column, max_cell) for c, v in zip(cols, row, strict=False)))
        body.append(f"<tr{attr}>{cells}</tr>")
    return f"<table class='{css_class}'><tr>{head}</tr>{''.join(body)}</table>"


def _cell(col: str, value: Any, state_column: str | None, max_cell: int) -> tuple[str, str | None, str]:
    """One cell: its CSS class ("" for none), its title (None for none) and its escaped inner HTML."""
    if col == state_column:
        return "", None, state_badge("" if is_missing(value) else str(value))
    if col == "error":
        text = esc(value)
        return "hsm-err", text, text[:max_cell]
    return "", None, esc(_short(value))


def _attrs(css: str, title: str | None) -> str:
    return (f" class='{css}'" if css else "") + (f" title='{title}'" if title is not None else "")


def grid_rows(df: pd.DataFrame, state_column: str | None = "state", max_cell: int = 120) -> tuple[str, list[str]]:
    """``df`` as the cells of a CSS grid: the header row's markup (a blank corner cell for the
    openers' column, then one cell per column) and each row's markup (one ``div`` per cell,
    carrying ``data-state`` and ``data-row``).  A row's cells are laid out in the same grid row
    as whatever precedes them, so the caller puts a row's opener right before its cells."""
    cols = list(df.columns)
    head = "<div class='hsm-cell hsm-th hsm-corner'></div>" + "".join(
        f"<div class='hsm-cell hsm-th'>{esc(c)}</div>" for c in cols)
    rows = []
    for i, row in enumerate(df.itertuples(index=False)):
        state = f" data-state='{esc(row[cols.index(state_column)])}'" if state_column in cols else ""
        cells = (_cell(c, v, state_column, max_cell) for c, v in zip(cols, row, strict=False))
        rows.append("".join(f"<div{_attrs(f'hsm-cell {css}'.strip(), title)} data-row='{i}'{state}>{inner}</div>"
                            for css, title, inner in cells))
    return head, rows


def _short(value: Any) -> Any:
    if is_missing(value):
        return None
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


def kv(pairs: Iterable[tuple[str, Any]]) -> str:
    return "<table>" + "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in pairs) + "</table>"


def state_bar(counts: Mapping[str, int], total: int, css_class: str = "hsm-bar", width: str = "100%") -> str:
    """One flex bar with a segment per state, each ``n / total`` of the width.

    ``total`` may exceed the sum of ``counts`` (one source's tasks drawn against the whole
    sweep): the rest of the bar stays empty.  Segments carry ``data-state`` and ``data-count``.
    """
    segments = []
    for state in BAR_ORDER:
        n = counts.get(state, 0)
        if n and total:
            segments.append(f"<div class='hsm-seg' data-state='{state}' data-count='{n}' title='{state} {n}' "
                            f"style='flex:0 0 {100 * n / total:.3f}%;background:{BAR_COLORS[state]}'></div>")
    return (f"<div class='{css_class}' data-total='{total}' style='width:{width}' "
            f"title='{esc(counts_text(counts))}'>{''.join(segments)}</div>")


def legend(counts: Mapping[str, int]) -> str:
    """A colour key for a state bar: a swatch and "STATE n" for each state present."""
    items = []
    for state in BAR_ORDER:
        n = counts.get(state, 0)
        if n:
            items.append(f"<span class='hsm-legend' data-state='{state}'><span class='hsm-swatch' "
                         f"style='background:{BAR_COLORS[state]}'></span>{state} {n:,}</span>")
    return "".join(items)


def counts_text(counts: Mapping[str, int]) -> str:
    """``"COMPLETED 3 · RUNNING 2"`` in bar order (plain text, for tooltips)."""
    return " · ".join(f"{s} {counts[s]:,}" for s in BAR_ORDER if counts.get(s))


def duration(seconds: float | None) -> str:
    if seconds is None or seconds != seconds:
        return "–"
    if seconds < 10:
        return f"{seconds:.1f}s"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")
