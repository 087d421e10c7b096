"""Small HTML helpers for the panel's tables (escaped, compact, with stable classes)."""

from __future__ import annotations

import html
import math
from typing import Any, Iterable

import pandas as pd

STATE_COLORS = {
    "PENDING": "#888", "SUBMITTING": "#888", "QUEUED": "#a60", "RUNNING": "#06c",
    "COMPLETED": "#080", "FAILED": "#c00", "CANCELLED": "#666", "LOST": "#c60",
}

CSS = """<style>
.hsm-panel table { border-collapse: collapse; font-size: 12px; }
.hsm-panel th, .hsm-panel td { padding: 2px 8px; border-bottom: 1px solid #ddd; text-align: left; white-space: nowrap; }
.hsm-panel td.hsm-err { max-width: 420px; overflow: hidden; text-overflow: ellipsis; }
.hsm-panel pre { font-size: 11px; max-height: 240px; overflow: auto; background: #f7f7f7; padding: 4px; }
</style>"""


def esc(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return ""
    return html.escape(str(value))


def state_badge(state: str) -> str:
    return f"<span style='color:{STATE_COLORS.get(state, '#000')};font-weight:600'>{esc(state)}</span>"


def table(df: pd.DataFrame, css_class: str, state_column: str | None = "state", max_cell: int = 120) -> str:
    """``df`` as an HTML table; rows carry ``data-state`` so tests and styles can find them."""
    if df.empty:
        return f"<table class='{css_class}'><tr><td><i>nothing to show</i></td></tr></table>"
    cols = list(df.columns)
    head = "".join(f"<th>{esc(c)}</th>" for c in cols)
    body = []
    for row in df.itertuples(index=False):
        cells = []
        attr = ""
        for col, value in zip(cols, row):
            if col == state_column:
                attr = f" data-state='{esc(value)}'"
                cells.append(f"<td>{state_badge(str(value))}</td>")
            elif col == "error":
                text = esc(value)
                cells.append(f"<td class='hsm-err' title='{text}'>{text[:max_cell]}</td>")
            else:
                cells.append(f"<td>{esc(_short(value))}</td>")
        body.append(f"<tr{attr}>{''.join(cells)}</tr>")
    return f"<table class='{css_class}'><tr>{head}</tr>{''.join(body)}</table>"


def _short(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


def kv(pairs: Iterable[tuple[str, Any]]) -> str:
    return "<table>" + "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in pairs) + "</table>"


def duration(seconds: float | None) -> str:
    if seconds is None or seconds != seconds:
        return "–"
    if seconds < 10:
        return f"{seconds:.1f}s"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")
