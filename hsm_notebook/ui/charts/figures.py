"""Figures of a sweep's results, as Plotly figure dictionaries built from DataFrames.

Each builder is a pure function: a frame in (``status()`` joined with the final metrics, or
``results()``), a figure out (``{"data": [...], "layout": {...}}``, what ``go.Figure(spec)`` and
``FigureWidget`` take).  No widget, no sweep: the panel's views, ``compare()`` and the tests use
the same functions.  Every trace has a ``uid`` naming what it shows, so a live figure can update
the traces that changed and leave the others (``live.py``).  Points carry their task id in
``customdata`` (a line: in ``meta``), which a click turns into the task's Job detail.

Axes follow the values (``axes.scale_of``): a parameter spanning decades gets a log axis, text a
category axis; the caller may force one (``scales``).  Hovers name the task, its parameters and the
value; legends name parameters (``alpha=1e-05, eta0=0.1``), never task hashes.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ...core.ledger.steps import best_so_far
from . import axes
from .axes import CATEGORY, GREY, LOG, PALETTE, fmt

Figure = dict[str, Any]
HEIGHT = 360
#: Colours of a timeline's states (the panel's state colours).
STATE_COLORS = {"COMPLETED": "#2ca02c", "RUNNING": "#1f77b4", "FAILED": "#d62728", "PRUNED": "#9467bd",
                "CANCELLED": "#7f7f7f", "LOST": "#ff7f0e", "QUEUED": "#bcbd22", "SUBMITTING": "#bcbd22"}
_FONT = {"size": 11}


def layout(title: str, *, height: int = HEIGHT, revision: str = "", **extra: Any) -> dict[str, Any]:
    """The layout every chart shares: the title at the left, the container's width (autosize), a
    hover per point; ``revision`` keeps the user's zoom across updates of the same view."""
    out: dict[str, Any] = {"title": {"text": title, "x": 0.01, "xanchor": "left", "font": {"size": 13}},
                           "height": height, "autosize": True, "hovermode": "closest",
                           "margin": {"l": 64, "r": 24, "t": 44, "b": 48}, "font": _FONT, "uirevision": revision}
    out.update(extra)
    return out


def message(text: str, title: str = "") -> Figure:
    """A chart that says, in words, why there is nothing to draw yet."""
    return {"data": [], "layout": layout(title, height=160, revision="message", xaxis={"visible": False},
                                         yaxis={"visible": False},
                                         annotations=[{"text": text, "showarrow": False, "x": 0.5, "y": 0.5,
                                                       "xref": "paper", "yref": "paper", "font": {"size": 12}}])}


def axis(scale: str, title: str, **extra: Any) -> dict[str, Any]:
    """An axis of ``scale``; log axes tick at powers of ten written ``10^-5``."""
    out: dict[str, Any] = {"type": scale, "title": {"text": title}, "automargin": True}
    if scale == LOG:
        out.update(exponentformat="power", dtick=1)
    out.update(extra)
    return out


def _values(frame: pd.DataFrame, column: str) -> list[Any]:
    return [axes.plain(v) for v in frame[column].tolist()]


def _numbers(values: Sequence[Any]) -> np.ndarray:
    return pd.to_numeric(pd.Series(list(values), dtype=object), errors="coerce").to_numpy(dtype=float)


def _custom(frame: pd.DataFrame, names: Sequence[str]) -> np.ndarray:
    """Each row's ``[task id, parameters]`` (an object array: Plotly copies it whole, where it would
    walk a list of lists value by value)."""
    text = axes.labels(frame, names)
    out = np.empty((len(frame), 2), dtype=object)
    if len(frame):
        ids = list(frame["task_id"])
        out[:, 0] = ids
        out[:, 1] = [text[tid] for tid in ids]
    return out


# -- learning curves ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Curve:
    """One task's curve of a metric: ``role`` is how it is drawn (``running`` highlighted,
    ``best`` / ``picked`` / ``done`` plain, ``pruned`` / ``failed`` grey), ``mark`` a point marked
    with a cross (where a pruned trial was stopped)."""

    task_id: str
    label: str
    role: str
    steps: Sequence[float]
    values: Sequence[float]
    mark: tuple[float, float] | None = None
    color: str | None = None  # None: one chosen from the task's id


ROLE_TITLE = {"running": "running", "best": "best finished", "picked": "picked", "done": "finished",
              "pruned": "pruned (grey)", "failed": "failed (grey)"}


def curve_trace(curve: Curve, metric: str) -> dict[str, Any]:
    """One curve as a trace, thinned to ``axes.MAX_POINTS`` points (float32 arrays: sent as binary)."""
    keep = axes.thin(len(curve.steps))
    x = np.asarray(curve.steps, dtype=np.float32)[keep]
    y = np.asarray(curve.values, dtype=np.float32)[keep]
    grey = curve.role in ("pruned", "failed")
    running = curve.role == "running"
    trace: dict[str, Any] = {
        "type": "scatter", "uid": f"curve-{curve.task_id}", "x": x, "y": y, "name": curve.label,
        "legendgroup": curve.role, "legendgrouptitle": {"text": ROLE_TITLE.get(curve.role, curve.role)},
        "mode": "lines+markers" if len(x) < 30 else "lines",
        "line": {"color": GREY if grey else curve.color or axes.color(curve.task_id), "width": 3 if running else 1.5,
                 "dash": "dot" if grey else "solid"},
        "marker": {"size": 4}, "opacity": 1.0 if running else 0.75 if not grey else 0.6,
        "meta": {"task": curve.task_id},
        "hovertemplate": (f"<b>{_html(curve.label)}</b><br>task {curve.task_id} ({curve.role})<br>"
                          f"step %{{x}}: {_html(metric)} = %{{y:.5g}}<extra></extra>"),
    }
    return trace


def curves(items: Sequence[Curve], metric: str, minimize: bool, note: str = "") -> Figure:
    """Learning curves of ``metric`` by step, one trace per task (legend: its parameters), plus a
    cross where each pruned curve was stopped."""
    if not items:
        return message("Curves appear as tasks log steps (log_metrics(step=..., ...)).", f"{metric} by step")
    data = [curve_trace(c, metric) for c in items]
    marks = [c for c in items if c.mark is not None]
    if marks:
        data.append({"type": "scatter", "uid": "curve-marks", "mode": "markers", "showlegend": False,
                     "x": [c.mark[0] for c in marks if c.mark], "y": [c.mark[1] for c in marks if c.mark],
                     "marker": {"symbol": "x", "size": 9, "color": "#777"},
                     "customdata": [[c.task_id, c.label] for c in marks],
                     "hovertemplate": "<b>%{customdata[1]}</b><br>task %{customdata[0]} pruned at step %{x}"
                                      "<extra></extra>"})
    better = "lower" if minimize else "higher"
    title = f"{metric} by step ({better} is better)" + (f" · {note}" if note else "")
    return {"data": data, "layout": layout(title, revision=f"curves-{metric}", xaxis=axis("linear", "step"),
                                           yaxis=axis("linear", metric), legend={"groupclick": "toggleitem"})}


def _html(text: str) -> str:
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# -- the objective over time, with the best so far ----------------------------------------------
def history(frame: pd.DataFrame, metric: str, minimize: bool, params: Sequence[str], *,
            by_trial: bool = False, stopped: Mapping[str, float] | None = None, why: str = "") -> Figure:
    """Each ended task's ``metric`` when it ended (minutes since the first submission; a search: by
    trial number), completed and pruned apart (a pruned trial at its last value, from ``stopped``),
    failed ones as crosses along the bottom, and the best so far as a step line.  ``why``: where the
    direction comes from ("the sweep's objective", "assumed"), said in the title."""
    better = f"{'lower' if minimize else 'higher'} is better" + (f": {why}" if why else "")
    title = f"{metric} {'by trial' if by_trial else 'over time'}, best so far ({better})"
    if frame.empty or "state" not in frame.columns:
        return message("The history appears as tasks end.", title)
    ended = frame[frame["state"].astype(str).isin(["COMPLETED", "PRUNED", "FAILED", "LOST"])]
    if by_trial and "trial" in frame.columns:
        x_all = pd.to_numeric(ended["trial"], errors="coerce")
        x_title = "trial"
    elif "end_time" in frame.columns:
        start = frame["submit_time"].min() if "submit_time" in frame.columns else ended["end_time"].min()
        seconds = (ended["end_time"] - start).dt.total_seconds()
        unit, per = next((u, p) for u, p, upto in (("seconds", 1, 120), ("minutes", 60, 3 * 3600),
                                                   ("hours", 3600, math.inf)) if not seconds.max() > upto)
        x_all = seconds / per
        x_title = f"{unit} since the first submission"
    else:
        x_all = pd.Series(range(len(ended)), index=ended.index, dtype=float)
        x_title = "task"
    values = pd.to_numeric(ended[metric], errors="coerce") if metric in ended.columns else \
        pd.Series(np.nan, index=ended.index)
    if stopped:
        pruned_values = ended["task_id"].map(stopped)
        values = values.where(values.notna() | (ended["state"].astype(str) != "PRUNED"), pruned_values)
    ended = ended.assign(_x=x_all.to_numpy(), _y=values.to_numpy(dtype=float))
    ended = ended[ended["_x"].notna()]
    if ended.empty:
        return message("The history appears as tasks end.", title)
    state = ended["state"].astype(str)
    data = []
    completed = ended[(state == "COMPLETED") & ended["_y"].notna()]
    pruned = ended[(state == "PRUNED") & ended["_y"].notna()]
    failed = ended[~ended.index.isin(completed.index) & ~ended.index.isin(pruned.index)]
    for uid, rows, name, marker in (
            ("history-completed", completed, "completed", {"color": PALETTE[0], "size": 7}),
            ("history-pruned", pruned, "pruned (value where stopped)",
             {"color": GREY, "size": 8, "symbol": "circle-open"})):
        if not rows.empty:
            data.append({"type": "scatter", "mode": "markers", "uid": uid, "meta": {"role": uid.split("-")[1]},
                         "name": name, "x": rows["_x"].to_numpy(),
                         "y": rows["_y"].to_numpy(), "marker": marker, "customdata": _custom(rows, params),
                         "hovertemplate": f"<b>%{{customdata[1]}}</b><br>task %{{customdata[0]}} ({name})<br>"
                                          f"{_html(metric)} = %{{y:.5g}}<br>{x_title} %{{x:.4g}}<extra></extra>"})
    if not failed.empty:
        floor = float(np.nanmin(ended["_y"])) if ended["_y"].notna().any() else 0.0
        data.append({"type": "scatter", "mode": "markers", "uid": "history-failed", "meta": {"role": "failed"},
                     "name": "failed / no value",
                     "x": failed["_x"].to_numpy(), "y": np.full(len(failed), floor),
                     "marker": {"symbol": "x", "color": "#d62728", "size": 8}, "customdata": _custom(failed, params),
                     "hovertemplate": "<b>%{customdata[1]}</b><br>task %{customdata[0]}: no value (failed)"
                                      "<extra></extra>"})
    line = best_so_far(zip(completed["_x"], completed["_y"], strict=True), minimize)
    if line:
        last = float(ended["_x"].max())
        if last > line[-1][0]:
            line.append((last, line[-1][1]))
        data.append({"type": "scatter", "mode": "lines", "uid": "history-best", "meta": {"role": "best"},
                     "name": f"best {metric} so far",
                     "x": [p[0] for p in line], "y": [p[1] for p in line], "line": {"shape": "hv", "color": "#ef553b"},
                     "hovertemplate": f"best {_html(metric)} so far: %{{y:.5g}}<extra></extra>"})
    return {"data": data, "layout": layout(title, revision=f"history-{metric}", xaxis=axis("linear", x_title),
                                           yaxis=axis("linear", metric))}


# -- slice: the metric against each parameter ----------------------------------------------------
def _grid_domains(n: int, cols: int, gap: float = 0.04) -> list[tuple[list[float], list[float]]]:
    rows = -(-n // cols)
    out = []
    for i in range(n):
        r, c = divmod(i, cols)
        out.append(([c / cols + (gap if c else 0), (c + 1) / cols - (gap if c + 1 < cols else 0)],
                    [1 - (r + 1) / rows + (gap * 2 if r + 1 < rows else 0), 1 - r / rows]))
    return out


def slice_plot(frame: pd.DataFrame, params: Sequence[str], metric: str, *, scales: Mapping[str, str] | None = None,
               label_params: Sequence[str] | None = None, group: str | None = None, cols: int = 4) -> Figure:
    """``metric`` against each parameter, one panel per parameter sharing the y axis; each
    parameter's axis from :func:`axes.scale_of` (log for decades, categories for text) unless
    ``scales`` says otherwise.  ``group`` (a column: ``sweep``) colours the points by its value."""
    title = f"{metric} against each parameter"
    if metric not in frame.columns or not params:
        return message(f"No task reported {metric} yet." if params else "No parameter to plot against.", title)
    done = frame[pd.to_numeric(frame[metric], errors="coerce").notna()]
    if done.empty:
        return message(f"No task reported {metric} yet.", title)
    scales = scales or {}
    names = list(label_params if label_params is not None else params)
    custom = _custom(done, names)
    cols = min(cols, len(params))
    domains = _grid_domains(len(params), cols)
    groups = [(None, done)] if group is None else list(done.groupby(group, sort=False, observed=True))
    data: list[dict[str, Any]] = []
    lay = layout(title, height=max(HEIGHT, 300 * -(-len(params) // cols)), revision=f"slice-{metric}")
    index = {tid: i for i, tid in enumerate(done["task_id"])}
    for i, param in enumerate(params):
        suffix = "" if i == 0 else str(i + 1)
        scale = axes.scale_of(_values(done, param), scales.get(param))
        for g, (key, rows) in enumerate(groups):
            x = _values(rows, param)
            if scale == CATEGORY:
                x = [fmt(v) for v in x]
            data.append({"type": "scatter", "mode": "markers", "uid": f"slice-{param}-{key}",
                         "name": str(key) if key is not None else param, "showlegend": key is not None and i == 0,
                         "legendgroup": str(key), "xaxis": f"x{suffix}", "yaxis": f"y{suffix}", "x": x,
                         "y": pd.to_numeric(rows[metric], errors="coerce").to_numpy(dtype=float),
                         "marker": {"color": PALETTE[g % len(PALETTE)], "size": 7, "opacity": 0.8},
                         "customdata": custom[[index[t] for t in rows["task_id"]]],
                         "hovertemplate": ("<b>%{customdata[1]}</b><br>task %{customdata[0]}"
                                           + (f" ({_html(str(key))})" if key is not None else "")
                                           + f"<br>{_html(metric)} = %{{y:.5g}}<extra></extra>")})
        x_dom, y_dom = domains[i]
        lay[f"xaxis{suffix}"] = axis(scale, param, domain=x_dom, anchor=f"y{suffix}")
        extra = {"matches": "y", "showticklabels": i % cols == 0} if i else {}
        lay[f"yaxis{suffix}"] = axis("linear", metric if i % cols == 0 else "", domain=y_dom, anchor=f"x{suffix}",
                                     **extra)
    return {"data": data, "layout": lay}


# -- contour of two parameters ------------------------------------------------------------------
def contour(frame: pd.DataFrame, x: str, y: str, metric: str, minimize: bool, *,
            scales: Mapping[str, str] | None = None, label_params: Sequence[str] = ()) -> Figure:
    """The best ``metric`` (over the other parameters) at each pair of ``x`` and ``y`` values, as a
    contour (a heatmap when an axis is categorical), with the tasks on top as points."""
    title = f"best {metric} by {x} and {y} ({'lower' if minimize else 'higher'} is better)"
    if x == y:
        return message("Choose two different parameters.", title)
    if metric not in frame.columns or x not in frame.columns or y not in frame.columns:
        return message(f"No task reported {metric} yet.", title)
    done = frame[pd.to_numeric(frame[metric], errors="coerce").notna()]
    if done.empty:
        return message(f"No task reported {metric} yet.", title)
    scales = scales or {}
    sx = axes.scale_of(_values(done, x), scales.get(x))
    sy = axes.scale_of(_values(done, y), scales.get(y))
    keys = pd.DataFrame({"x": [fmt(v) if sx == CATEGORY else v for v in _values(done, x)],
                         "y": [fmt(v) if sy == CATEGORY else v for v in _values(done, y)],
                         "v": pd.to_numeric(done[metric], errors="coerce").to_numpy(dtype=float)})
    best = keys.groupby(["x", "y"], sort=True)["v"].agg("min" if minimize else "max").reset_index()
    data: list[dict[str, Any]] = []
    scale = {"colorscale": "Viridis", "reversescale": minimize,
             "colorbar": {"title": {"text": metric}, "thickness": 12}}
    if best["x"].nunique() >= 2 and best["y"].nunique() >= 2:
        kind = "heatmap" if CATEGORY in (sx, sy) else "contour"
        trace = {"type": kind, "uid": f"contour-{x}-{y}", "x": best["x"].tolist(), "y": best["y"].tolist(),
                 "z": best["v"].to_numpy(), "hovertemplate": f"{_html(x)}=%{{x}}<br>{_html(y)}=%{{y}}<br>best "
                                                            f"{_html(metric)} = %{{z:.5g}}<extra></extra>", **scale}
        if kind == "contour":
            trace.update(connectgaps=True, contours={"coloring": "heatmap", "showlabels": True},
                         line={"width": 0.5})
        data.append(trace)
    data.append({"type": "scatter", "mode": "markers", "uid": f"contour-points-{x}-{y}", "name": "tasks",
                 "x": keys["x"].tolist(), "y": keys["y"].tolist(), "showlegend": False,
                 "marker": {"color": "white", "size": 7, "line": {"color": "black", "width": 1}},
                 "customdata": _custom(done, list(label_params) or [x, y]),
                 "hovertemplate": "<b>%{customdata[1]}</b><br>task %{customdata[0]}<extra></extra>"})
    return {"data": data, "layout": layout(title, height=420, revision=f"contour-{x}-{y}-{metric}",
                                           xaxis=axis(sx, x), yaxis=axis(sy, y))}


# -- parallel coordinates, brushable ------------------------------------------------------------
@dataclass(frozen=True)
class ParallelData:
    """The rows of a parallel-coordinates chart: task ids and each axis's values as drawn (log10
    for a log axis, codes for categories), so a brushed range maps back to the tasks inside it."""

    task_ids: list[str]
    labels: list[str]  # axis labels: the parameters, then the metric
    columns: list[np.ndarray]
    ticks: list[tuple[list[float], list[str]] | None]
    scales: list[str] = field(default_factory=list)
    metric_values: np.ndarray = field(default_factory=lambda: np.empty(0))

    def describe(self, label: str, span: Any) -> str:
        """A brushed range in the axis's own words: ``alpha in [1e-05, 0.0003]``, ``loss in {hinge}``."""
        spans = span if span and isinstance(span[0], (list, tuple)) else [span]
        i = self.labels.index(label) if label in self.labels else -1
        scale = self.scales[i] if 0 <= i < len(self.scales) else axes.LINEAR
        if scale == CATEGORY and self.ticks[i] is not None:
            codes, names = self.ticks[i]  # type: ignore[misc]
            inside = [n for c, n in zip(codes, names, strict=True)
                      if any(min(a, b) <= c <= max(a, b) for a, b in spans)]
            return f"{label} in {{{', '.join(inside)}}}"
        if scale == LOG:
            spans = [(10 ** a, 10 ** b) for a, b in spans]
        return f"{label} in " + " or ".join(f"[{fmt(min(a, b))}, {fmt(max(a, b))}]" for a, b in spans)


def parallel_data(frame: pd.DataFrame, params: Sequence[str], metric: str, *,
                  scales: Mapping[str, str] | None = None) -> ParallelData:
    """The finished tasks with a value of ``metric``, on one axis per parameter and one for the metric."""
    scales = scales or {}
    done = frame[pd.to_numeric(frame[metric], errors="coerce").notna()] if metric in frame.columns else frame.iloc[:0]
    columns: list[np.ndarray] = []
    ticks: list[tuple[list[float], list[str]] | None] = []
    kinds: list[str] = []
    for param in params:
        values = _values(done, param)
        scale = axes.scale_of(values, scales.get(param))
        kinds.append(scale)
        if scale == CATEGORY:
            text = [fmt(v) for v in values]
            order = sorted(set(text), key=_natural)
            code = {t: i for i, t in enumerate(order)}
            columns.append(np.array([code[t] for t in text], dtype=float))
            ticks.append(([float(i) for i in range(len(order))], order))
        elif scale == LOG:
            numbers = _numbers(values)
            columns.append(np.log10(numbers))
            finite = numbers[np.isfinite(numbers)]
            ticks.append(axes.decade_ticks(float(finite.min()), float(finite.max())) if len(finite) else None)
        else:
            columns.append(_numbers(values))
            ticks.append(None)
    metric_values = pd.to_numeric(done[metric], errors="coerce").to_numpy(dtype=float) if len(done) else np.empty(0)
    return ParallelData(list(done["task_id"]), [*params, metric], [*columns, metric_values], [*ticks, None],
                        [*kinds, axes.LINEAR], metric_values)


def _natural(text: str) -> tuple[int, float, str]:
    try:
        return (0, float(text), text)
    except ValueError:
        return (1, 0.0, text)


def parallel(data: ParallelData, minimize: bool, ranges: Mapping[str, Any] | None = None) -> Figure:
    """Parallel coordinates coloured by the metric (the best brightest); ``ranges`` (``{axis label:
    constraint range}``) keeps the user's brushes across updates."""
    metric = data.labels[-1]
    title = f"{metric} and the parameters, one line per finished task (drag along an axis to filter the table)"
    if not data.task_ids:
        return message(f"No task reported {metric} yet.", title)
    if len(data.labels) < 2:
        return message("No parameter varies.", title)
    ranges = ranges or {}
    dims = []
    for label, column, tick in zip(data.labels, data.columns, data.ticks, strict=True):
        dim: dict[str, Any] = {"label": label, "values": column}
        if tick is not None:
            dim.update(tickvals=tick[0], ticktext=tick[1])
            if len(tick[0]) == 1:
                dim["range"] = [tick[0][0] - 0.5, tick[0][0] + 0.5]
        if ranges.get(label) is not None:
            dim["constraintrange"] = ranges[label]
        dims.append(dim)
    trace = {"type": "parcoords", "uid": "parallel", "dimensions": dims,
             "line": {"color": data.metric_values, "colorscale": "Viridis", "reversescale": minimize,
                      "showscale": True, "colorbar": {"title": {"text": metric}, "thickness": 12}},
             "labelangle": 0, "labelside": "top"}
    return {"data": [trace], "layout": layout(title, height=400, revision="parallel",
                                              margin={"l": 64, "r": 64, "t": 90, "b": 30})}


def brushed(data: ParallelData, ranges: Mapping[str, Any]) -> set[str] | None:
    """The task ids inside every brushed range (``{axis label: [lo, hi] or [[lo, hi], ...]}``, in
    the axis's drawn units), or None when nothing is brushed."""
    active = {k: v for k, v in ranges.items() if v}
    if not active:
        return None
    keep = np.ones(len(data.task_ids), dtype=bool)
    for label, column in zip(data.labels, data.columns, strict=True):
        spans = active.get(label)
        if not spans:
            continue
        spans = [spans] if not isinstance(spans[0], (list, tuple)) else spans
        inside = np.zeros(len(column), dtype=bool)
        for lo, hi in spans:
            inside |= (column >= min(lo, hi)) & (column <= max(lo, hi))
        keep &= inside
    return {tid for tid, k in zip(data.task_ids, keep, strict=True) if k}


# -- parameter importance -----------------------------------------------------------------------
def importance_bars(rows: Sequence[tuple[str, float]], title: str) -> Figure:
    """Importances as horizontal bars, the most important on top."""
    if not rows:
        return message("No importances yet.", title)
    names = [n for n, _ in rows]
    shares = [float(v) for _, v in rows]
    trace = {"type": "bar", "orientation": "h", "uid": "importance", "y": names, "x": shares,
             "text": [f"{v:.2f}" for v in shares], "textposition": "auto", "marker": {"color": PALETTE[0]},
             "customdata": names, "hovertemplate": "%{y}: %{x:.3f} of the importance<extra></extra>"}
    return {"data": [trace], "layout": layout(title, height=max(200, 60 + 34 * len(rows)), revision="importance",
                                              xaxis=axis("linear", "importance (share)", rangemode="tozero"),
                                              yaxis={"autorange": "reversed", "automargin": True,
                                                     "type": "category"})}


# -- timeline -----------------------------------------------------------------------------------
def lanes(frame: pd.DataFrame) -> list[str]:
    """Each row's lane: ``source #k``, the first of its source's lanes free when it started (so
    tasks running side by side on a source sit on lines of their own)."""
    out = [""] * len(frame)
    free: dict[str, list[pd.Timestamp]] = {}
    order = np.argsort(frame["_start"].to_numpy(), kind="stable")
    sources = frame["_source"].tolist()
    starts, ends = frame["_start"].tolist(), frame["_end"].tolist()
    for i in order:
        ends_of = free.setdefault(sources[i], [])
        lane = next((k for k, end in enumerate(ends_of) if end <= starts[i]), len(ends_of))
        if lane == len(ends_of):
            ends_of.append(ends[i])
        else:
            ends_of[lane] = ends[i]
        out[i] = f"{sources[i]} #{lane + 1}"
    return out


def timeline(frame: pd.DataFrame, params: Sequence[str], now: pd.Timestamp | None = None) -> Figure:
    """When each task ran and where: one bar per attempt that started, from its start to its end (a
    running one: to now) on a lane of its source, coloured by state; times in this machine's zone."""
    title = "tasks by source over time (one line per slot in use, coloured by state)"
    if frame.empty or "start_time" not in frame.columns:
        return message("The timeline appears as tasks start.", title)
    started = frame[frame["start_time"].notna()]
    if started.empty:
        return message("The timeline appears as tasks start.", title)
    now = now if now is not None else pd.Timestamp.now(tz="UTC")
    local = datetime.datetime.now().astimezone().tzinfo
    start = started["start_time"]
    end = started["end_time"].fillna(now) if "end_time" in started.columns else pd.Series(now, index=started.index)
    rows = started.assign(_start=start, _end=end.where(end >= start, start),
                          _source=started["source"].astype(str).fillna("?") if "source" in started.columns else "?")
    rows = rows.assign(_lane=lanes(rows))
    text = axes.labels(rows, params)
    data = []
    for state, group in rows.groupby(rows["state"].astype(str), sort=False, observed=True):
        ms = ((group["_end"] - group["_start"]).dt.total_seconds() * 1000).to_numpy()
        starts_local = group["_start"].dt.tz_convert(local).dt.tz_localize(None)
        data.append({"type": "bar", "orientation": "h", "uid": f"timeline-{state}", "name": state,
                     "base": [t.isoformat() for t in starts_local], "x": np.maximum(ms, 1.0),
                     "y": group["_lane"].tolist(), "marker": {"color": STATE_COLORS.get(state, GREY)},
                     "customdata": np.array([[tid, text[tid], f"{m / 1000:.1f} s"]
                                             for tid, m in zip(group["task_id"], ms, strict=True)], dtype=object),
                     "hovertemplate": (f"<b>%{{customdata[1]}}</b><br>task %{{customdata[0]}} {state}<br>"
                                       "%{y}, from %{base|%H:%M:%S} for %{customdata[2]}<extra></extra>")})
    n_lanes = rows["_lane"].nunique()
    order = sorted(rows["_lane"].unique(), key=lambda s: (s.rsplit(" #", 1)[0], int(s.rsplit(" #", 1)[1])))
    return {"data": data, "layout": layout(title, height=min(900, 120 + 22 * n_lanes), revision="timeline",
                                           barmode="overlay", xaxis={"type": "date", "title": {"text": "time"}},
                                           yaxis={"type": "category", "categoryorder": "array",
                                                  "categoryarray": order[::-1], "automargin": True})}


# -- Pareto front -------------------------------------------------------------------------------
def pareto(results: pd.DataFrame, front_ids: set[str], objectives: Mapping[str, str],
           params: Sequence[str]) -> Figure:
    """The first two objective metrics of each completed task: the front apart from (and joined
    through) the tasks it dominates."""
    x, y = list(objectives)[:2]
    title = f"Pareto front of {x} ({objectives[x]}) and {y} ({objectives[y]})"
    if results.empty or x not in results.columns or y not in results.columns:
        return message("The Pareto front appears once tasks complete with every objective metric.", title)
    vx, vy = pd.to_numeric(results[x], errors="coerce"), pd.to_numeric(results[y], errors="coerce")
    ok = results[vx.notna() & vy.notna()].assign(_x=vx, _y=vy)
    data = []
    for uid, rows, name, style in (
            ("pareto-dominated", ok[~ok["task_id"].isin(front_ids)], "dominated",
             {"mode": "markers", "marker": {"color": GREY, "size": 7}}),
            ("pareto-front", ok[ok["task_id"].isin(front_ids)].sort_values("_x"), "Pareto front",
             {"mode": "lines+markers", "marker": {"color": PALETTE[1], "size": 9}, "line": {"shape": "hv"}})):
        if rows.empty:
            continue
        data.append({"type": "scatter", "uid": uid, "name": name, "x": rows["_x"].to_numpy(dtype=float),
                     "y": rows["_y"].to_numpy(dtype=float), "customdata": _custom(rows, params),
                     "hovertemplate": (f"<b>%{{customdata[1]}}</b><br>task %{{customdata[0]}} ({name})<br>"
                                       f"{_html(x)} = %{{x:.5g}}, {_html(y)} = %{{y:.5g}}<extra></extra>"), **style})
    return {"data": data, "layout": layout(title, revision="pareto", xaxis=axis("linear", f"{x} ({objectives[x]})"),
                                           yaxis=axis("linear", f"{y} ({objectives[y]})"))}
