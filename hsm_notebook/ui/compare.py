"""Compare sweeps: the next sweep is usually the last one with one thing changed.

``hsm_notebook.compare(a, b, ...)`` returns one frame of their completed tasks (parameters, final
metrics) with a ``sweep`` column naming each one's folder, so pandas does the rest
(``compare(a, b).groupby("sweep")["val_acc"].max()``).  ``CompareView`` (what ``%hsm compare a b``
shows) draws them on the same axes, coloured by sweep: the metric against each parameter that
differs anywhere (within a sweep or between them), and each sweep's best.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ..core.model.errors import ConfigError
from ..core.sweep import Sweep
from .html import esc

#: Columns of the frame that are neither parameters nor metrics.
ABOUT = ("sweep", "sweep_id", "task_id")


def _open(item: Any) -> Sweep:
    if isinstance(item, Sweep):
        return item
    if isinstance(item, (str, Path)):
        return Sweep.attach(item, resume=False)
    raise ConfigError(f"cannot compare {type(item).__name__} {item!r}: give Sweep objects, sweep folders or "
                      "sweep names", "sweeps")


def _names(sweeps: Sequence[Sweep]) -> list[str]:
    """Each sweep's folder name, made unique (``name``, ``name #2``) where two folders share one."""
    out: list[str] = []
    for sweep in sweeps:
        name = Path(sweep.directory).name
        out.append(name if name not in out else f"{name} #{sum(1 for n in out if n.split(' #')[0] == name) + 1}")
    return out


def compare(*sweeps: Sweep | str | Path) -> pd.DataFrame:
    """The completed tasks of ``sweeps`` (``Sweep`` objects, folders or names) in one frame:
    ``sweep`` (its folder's name), ``sweep_id``, ``task_id``, every parameter any of them has (empty
    where a sweep has not got it) and the final metrics.  ``frame.attrs`` keeps ``params`` (the
    parameter names), ``metrics`` and ``objectives`` (the first sweep's that declares one)."""
    if not sweeps:
        raise ConfigError("give the sweeps to compare: compare(sweep_a, 'sweeps/<id>', ...)", "sweeps")
    opened = [_open(s) for s in sweeps]
    frames: list[pd.DataFrame] = []
    params: list[str] = []
    for sweep, name in zip(opened, _names(opened), strict=True):
        results = sweep.results()
        params.extend(p for p in sweep.param_names if p not in params)
        frames.append(results.assign(sweep=name, sweep_id=sweep.id))
    frame = pd.concat(frames, ignore_index=True, sort=False) if frames else pd.DataFrame()
    metrics = [c for c in frame.columns if c not in params and c not in ABOUT
               and pd.api.types.is_numeric_dtype(frame[c])]
    frame = frame[[*ABOUT, *[p for p in params if p in frame.columns], *metrics]]
    frame.attrs.update(params=[p for p in params if p in frame.columns], metrics=metrics,
                       objectives=next((s.objectives for s in opened if s.objectives), {}))
    return frame


class CompareView:
    """Sweeps side by side: a metric against each parameter that differs, coloured by sweep, and
    each sweep's best.  ``CompareView(compare(a, b))``, or ``%hsm compare a b``."""

    def __init__(self, frame: pd.DataFrame, metric: str | None = None) -> None:
        import ipywidgets as w

        from .charts import axes, figures
        from .charts.live import LiveFigure
        from .results_view import assumed_minimize

        self.frame = frame
        self._figures, self._axes, self._minimize = figures, axes, assumed_minimize
        metrics = list(frame.attrs.get("metrics") or [c for c in frame.columns if c not in ABOUT])
        objectives = frame.attrs.get("objectives") or {}
        first = next(iter(objectives), None)
        chosen = metric or (first if first in metrics else (metrics[0] if metrics else None))
        self.metric = w.Dropdown(options=metrics, value=chosen, description="Metric", layout=w.Layout(width="260px"))
        self.direction = w.ToggleButtons(options=[("lower is better", True), ("higher is better", False)],
                                         value=self._direction(chosen), style={"button_width": "auto"})
        self.best = w.HTML()
        self.best.add_class("hsm-compare-best")
        self.chart = LiveFigure()
        box = w.VBox([self.chart.widget], layout=w.Layout(width="100%"))
        box.add_class("hsm-chart")
        self.metric.observe(self._metric_changed, "value")
        self.direction.observe(lambda _: self.draw(), "value")
        self.widget = w.VBox([w.HBox([self.metric, self.direction]), self.best, box], layout=w.Layout(width="100%"))
        self.widget.add_class("hsm-compare")
        self.draw()

    def _direction(self, metric: str | None) -> bool:
        objectives = self.frame.attrs.get("objectives") or {}
        if metric in objectives:
            return objectives[metric] == "min"
        return self._minimize(metric) if metric else True

    def _metric_changed(self, change: Any) -> None:
        self.direction.value = self._direction(change["new"])
        self.draw()

    @property
    def params(self) -> list[str]:
        """The parameters that take more than one value across the sweeps compared."""
        frame = self.frame
        return [p for p in frame.attrs.get("params", []) if p in frame.columns and frame[p].map(repr).nunique() > 1]

    def draw(self) -> None:
        metric, minimize, frame = self.metric.value, bool(self.direction.value), self.frame
        if not metric:
            self.best.value = "<i>No completed task reported a metric.</i>"
            self.chart.show(self._figures.message("No metric to compare.", "compare"))
            return
        params = self.params
        self.chart.show(self._figures.slice_plot(frame, params, metric, label_params=params, group="sweep")
                        if params else self._figures.message("No parameter differs between these sweeps.", metric))
        rows = []
        for name, group in frame.groupby("sweep", sort=False):
            values = pd.to_numeric(group[metric], errors="coerce")
            if values.notna().any():
                best = group.loc[values.idxmin() if minimize else values.idxmax()]
                label = self._axes.params_label({p: best[p] for p in params if pd.notna(best[p])})
                value = values.min() if minimize else values.max()
                rows.append(f"<li><b>{esc(name)}</b>: best {esc(metric)} {value:.6g} ({esc(label)}), "
                            f"{int(values.notna().sum())} tasks</li>")
            else:
                rows.append(f"<li><b>{esc(name)}</b>: no {esc(metric)}</li>")
        self.best.value = f"<ul class='hsm-lines'>{''.join(rows)}</ul>"

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        bundle = self.widget._repr_mimebundle_(**kwargs)
        if isinstance(bundle, dict):
            bundle["text/plain"] = self.summary()
        return bundle

    def summary(self) -> str:
        """The comparison in plain lines (what a saved notebook shows)."""
        metric = self.metric.value
        lines = [f"hsm_notebook comparison of {self.frame['sweep'].nunique()} sweeps on {metric}"]
        for name, group in self.frame.groupby("sweep", sort=False):
            values = pd.to_numeric(group[metric], errors="coerce") if metric else pd.Series(dtype=float)
            best = (values.min() if self.direction.value else values.max()) if values.notna().any() else None
            lines.append(f"  {name}: {len(group)} tasks" + (f", best {metric} {best:.6g}" if best is not None else ""))
        return "\n".join(lines)
