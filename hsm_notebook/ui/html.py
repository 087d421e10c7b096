"""Small HTML helpers for the panel: escaped tables, state bars and the panel's CSS.

Everything here is a pure function of its arguments, so it is tested without widgets.
"""

from __future__ import annotations

import html
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

STATE_COLORS = {
    "PENDING": "#888", "SUBMITTING": "#c80", "QUEUED": "#a60", "RUNNING": "#06c",
    "COMPLETED": "#080", "PRUNED": "#97c", "FAILED": "#c00", "CANCELLED": "#666", "LOST": "#c60",
}

#: Bar segments, left to right: what has ended first (good, then stopped on purpose by a
#: search's pruner, then bad), then what is under way, then what waits.  On a bar PENDING is
#: pale: "not started", never read as CANCELLED's dark grey.
BAR_ORDER = ("COMPLETED", "PRUNED", "FAILED", "CANCELLED", "LOST", "RUNNING", "QUEUED", "SUBMITTING", "PENDING")
BAR_COLORS = {**STATE_COLORS, "PENDING": "#d4d4d4"}

CSS = """<style>
.hsm-panel table { border-collapse: collapse; font-size: 12px; }
.hsm-panel th, .hsm-panel td { padding: 2px 8px; border-bottom: 1px solid #ddd; text-align: left; white-space: nowrap; }
.hsm-panel td.hsm-err { max-width: 420px; overflow: hidden; text-overflow: ellipsis; }
.hsm-panel pre { font-size: 11px; max-height: 240px; overflow: auto; background: #f7f7f7; padding: 4px; }
.hsm-panel .jupyter-widget-button, .hsm-panel .widget-button { width: auto; min-width: 72px; }
.hsm-panel button.jupyter-button { width: auto !important; min-width: max-content; overflow: visible;
  text-overflow: clip; }
.hsm-panel .widget-toggle-buttons .widget-toggle-button { width: auto !important; padding: 0 10px; }
.hsm-panel .widget-label { min-width: max-content; }
.hsm-panel .hsm-grid { display: grid; align-items: stretch; font-size: 12px; overflow-x: auto; margin: 4px 0; }
.hsm-panel .hsm-grid > .hsm-grid-row, .hsm-panel .hsm-grid > .hsm-grid-row > .widget-html-content {
  display: contents !important; }
.hsm-panel .hsm-grid .hsm-cell { padding: 1px 8px; border-bottom: 1px solid #ddd; white-space: nowrap;
  line-height: 22px; }
.hsm-panel .hsm-grid .hsm-th { font-weight: 600; border-bottom: 1px solid #999; }
.hsm-panel .hsm-grid .hsm-err, .hsm-panel .hsm-grid .hsm-note { max-width: 360px; overflow: hidden;
  text-overflow: ellipsis; }
.hsm-panel .hsm-grid > button.hsm-sort { margin: 0 !important; height: auto !important; min-width: 0 !important;
  padding: 1px 8px; font-weight: 600; text-align: left; background: #f3f3f3; border: none;
  border-bottom: 1px solid #999; border-radius: 0; box-shadow: none; line-height: 22px; }
.hsm-panel .hsm-grid > button.hsm-sort:hover { background: #e4ecf7; }
.hsm-panel .hsm-grid > button.hsm-opener { margin: 0 !important; padding: 0 !important; min-width: 0 !important;
  width: 28px !important; height: auto !important; min-height: 0 !important; line-height: 1 !important;
  align-self: stretch; border: none; border-bottom: 1px solid #ddd; border-radius: 0; background: #fafafa; }
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
    if isinstance(value, (str, int)):  # the common cells first: a refresh draws hundreds (bool is an int)
        return False
    if isinstance(value, float):
        return value != value
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
    if col in ("error", "note"):
        text = esc(value)
        return f"hsm-{'err' if col == 'error' else 'note'}", text, text[:max_cell]
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


def short_path(path: str | Path, cwd: str | Path | None = None) -> str:
    """``path`` as a person reads it: relative to the working directory when it is inside it
    (``sweeps/lr-scan-1f2e``), under ``~`` when it is in the home folder, else its last two parts
    after ``…/`` (a long temporary folder).  The full path belongs in a tooltip beside it."""
    full = Path(path).absolute()
    here = Path(cwd).absolute() if cwd is not None else Path.cwd()
    if full == here:
        return "."
    if full.is_relative_to(here):
        return str(full.relative_to(here))
    home = Path.home()
    if full.is_relative_to(home) and home != Path("/"):
        return "~" + os.sep + str(full.relative_to(home))
    return str(full) if len(full.parts) <= 3 else "…" + os.sep + os.sep.join(full.parts[-2:])


def path_html(path: str | Path, cwd: str | Path | None = None) -> str:
    """``short_path`` in a ``code`` element whose tooltip is the full path."""
    return (f"<code class='hsm-path' title='{esc(str(Path(path).absolute()))}'>"
            f"{esc(short_path(path, cwd))}</code>")
