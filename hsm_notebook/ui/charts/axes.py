"""What an axis should be for a column of values, and the words a chart shows about a task.

Pure functions of values: which scale fits (log for positive values spanning decades, a category
axis for text), how a parameter value is written (``1e-05``, ``0.1``, ``relu``), the label naming
a task by its parameters (``alpha=1e-05, eta0=0.1``), and thinning a long curve without moving
the points already drawn.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

LOG, LINEAR, CATEGORY = "log", "linear", "category"
SCALES = (LOG, LINEAR, CATEGORY)
#: Values spanning at least this ratio (two decades), all positive, are drawn on a log axis.
LOG_RATIO = 100.0
#: A curve keeps at most this many points on screen (every k-th step, k a power of two).
MAX_POINTS = 120
#: Qualitative palette (Plotly's default), one colour per task chosen from its id: stable
#: across refreshes, so adding a curve never recolours (and resends) the others.
PALETTE = ("#636efa", "#ef553b", "#00cc96", "#ab63fa", "#ffa15a", "#19d3f3", "#ff6692", "#b6e880", "#ff97ff",
           "#fecb52")
GREY = "#b4b4b4"


def is_number(value: Any) -> bool:
    """A real number that is not a bool (a bool is a category: on/off, not 0/1)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def auto_scale(values: Iterable[Any]) -> str:
    """The axis that fits ``values``: ``"category"`` when any value is not a number (text, a bool,
    a list), ``"log"`` when all are positive and the largest is at least ``LOG_RATIO`` times the
    smallest (alpha in 1e-5 ... 1e-2), else ``"linear"``.  Missing values are left out."""
    present = [v for v in values if not _missing(v)]
    if not present:
        return LINEAR
    if not all(is_number(v) for v in present):
        return CATEGORY
    finite = [float(v) for v in present if math.isfinite(float(v))]
    if finite and min(finite) > 0 and max(finite) / min(finite) >= LOG_RATIO:
        return LOG
    return LINEAR


def scale_of(values: Iterable[Any], chosen: str | None = None) -> str:
    """``chosen`` (the user's switch) when it can draw ``values``, else :func:`auto_scale`'s: a log
    axis asked for values that are not all positive falls back to linear, text stays categorical."""
    present = list(values)
    auto = auto_scale(present)
    if chosen is None or chosen == auto or auto == CATEGORY:
        return auto
    if chosen == LOG and not all(is_number(v) and float(v) > 0 for v in present if not _missing(v)):
        return LINEAR
    return chosen if chosen in SCALES else auto


def _missing(value: Any) -> bool:
    if value is None:
        return True
    try:
        return bool(value != value)  # NaN, NaT
    except (TypeError, ValueError):
        return False


def plain(value: Any) -> Any:
    """A numpy scalar as the Python value it holds (JSON-able; ``fmt`` and Optuna read it)."""
    return value.item() if isinstance(value, np.generic) else value


def fmt(value: Any) -> str:
    """A parameter or metric value as written in a label: ``1e-05``, ``0.1``, ``64``, ``relu``."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        return f"{float(value):.4g}"
    return str(value)


def params_label(params: Mapping[str, Any], names: Sequence[str] | None = None) -> str:
    """``alpha=1e-05, eta0=0.1``: the task named by its (varying) parameters."""
    keys = list(names) if names is not None else list(params)
    return ", ".join(f"{k}={fmt(params[k])}" for k in keys if k in params)


def labels(frame: Any, names: Sequence[str]) -> dict[str, str]:
    """``{task_id: params_label}`` of every row of ``frame`` (a status or results frame)."""
    names = [n for n in names if n in frame.columns]
    if not names:
        return {tid: tid for tid in frame["task_id"]}
    columns = [frame[n].tolist() for n in names]
    out = {}
    for i, tid in enumerate(frame["task_id"]):
        out[tid] = ", ".join(f"{n}={fmt(col[i])}" for n, col in zip(names, columns, strict=True)
                             if not _missing(col[i]))
    return out


def color(task_id: str) -> str:
    """A task's colour, the same on every refresh and in every chart."""
    try:
        key = int(str(task_id)[:8], 16)
    except ValueError:
        key = sum(map(ord, str(task_id)))
    return PALETTE[key % len(PALETTE)]


def thin(n: int, limit: int = MAX_POINTS) -> np.ndarray:
    """Indices of the points of an ``n``-point curve to draw: every k-th (k the smallest power of
    two keeping at most ``limit``) and the last, so a new step adds a point at the end rather than
    shifting the points already drawn (k doubles rarely: log2 times in a curve's life)."""
    if n <= limit:
        return np.arange(n)
    stride = 1
    while -(-n // stride) > limit - 1:
        stride *= 2
    picked = np.arange(0, n, stride)
    return picked if picked[-1] == n - 1 else np.append(picked, n - 1)


def decade_ticks(low: float, high: float) -> tuple[list[float], list[str]]:
    """Tick positions (log10) and labels (``1e-05``) at whole decades between ``low`` and ``high``
    (positive values): for axes drawn in log10 space by hand (parallel coordinates)."""
    first, last = math.floor(math.log10(low)), math.ceil(math.log10(high))
    exps = list(range(first, last + 1))
    return [float(e) for e in exps], [fmt(10.0 ** e) for e in exps]
