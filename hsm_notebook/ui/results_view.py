"""The Results section: the ``results()`` table and a quick plot of a metric against a parameter.

The plot is drawn with matplotlib's object API into PNG bytes shown by an Image
widget: no pyplot state, so it is safe from the refresh thread and in Voila.  matplotlib
is the ``panel`` extra, imported only to draw; without it the section says how to install it.
"""

from __future__ import annotations

import io

import ipywidgets as w
import pandas as pd

from .html import esc, table

MAX_ROWS = 50
MISSING_MATPLOTLIB = ("The plot needs matplotlib, which is not installed: "
                      "pip install 'hsm_notebook[panel]' (or pip install matplotlib), then restart the kernel.")


class ResultsView:
    def __init__(self) -> None:
        self.metric = w.Dropdown(options=[], description="Metric", layout=w.Layout(width="240px"))
        self.param = w.Dropdown(options=[], description="against", layout=w.Layout(width="240px"))
        self.table = w.HTML()
        self.table.add_class("hsm-results")
        self.image = w.Image(format="png", layout=w.Layout(max_width="560px"))
        self.note = w.HTML()
        self.frame: pd.DataFrame | None = None
        self.params: list[str] = []
        self.metric.observe(lambda _: self.plot(), "value")
        self.param.observe(lambda _: self.plot(), "value")
        self.widget = w.VBox([w.HBox([self.metric, self.param]), self.note, self.image, self.table])

    def show(self, results: pd.DataFrame, params: list[str]) -> None:
        self.frame, self.params = results, params
        metrics = [c for c in results.columns
                   if c not in params and c != "task_id" and pd.api.types.is_numeric_dtype(results[c])]
        if list(self.metric.options) != metrics:
            self.metric.options = metrics
        if list(self.param.options) != params:
            self.param.options = params
        if self.metric.value is None and metrics:
            self.metric.value = metrics[0]
        if self.param.value is None and params:
            varying = [p for p in params if results[p].nunique() > 1] if not results.empty else []
            self.param.value = (varying or params)[0]
        shown = results.drop(columns=["task_id"], errors="ignore")
        if self.metric.value in shown.columns:
            shown = shown.sort_values(self.metric.value)
        self.table.value = (f"<b>{len(results):,}</b> completed"
                            + (f" (best {MAX_ROWS} by {esc(self.metric.value)})" if len(results) > MAX_ROWS and self.metric.value else "")
                            + table(shown.head(MAX_ROWS), "hsm-results-table", state_column=None))
        self.plot()

    def plot(self) -> None:
        df, metric, param = self.frame, self.metric.value, self.param.value
        if df is None or df.empty or not metric or not param:
            self.note.value = "<i>The plot appears when tasks complete.</i>"
            return
        try:
            from matplotlib.figure import Figure
        except ImportError:  # an optional extra: the table works without it
            self.image.value = b""
            self.note.value = f"<i>{esc(MISSING_MATPLOTLIB)}</i>"
            return
        fig = Figure(figsize=(5.5, 3.2), dpi=90)
        ax = fig.add_subplot()
        data = df[[param, metric]].dropna()
        if pd.api.types.is_numeric_dtype(data[param]):
            ax.scatter(data[param], data[metric], alpha=0.5, s=18, label="tasks")
            mean = data.groupby(param)[metric].mean()
            ax.plot(mean.index, mean.values, color="C1", marker="o", label="mean")
            if data[param].min() > 0 and data[param].max() / data[param].min() > 50:
                ax.set_xscale("log")
            ax.legend(fontsize=8)
        else:
            mean = data.groupby(param)[metric].mean()
            ax.bar([str(i) for i in mean.index], mean.values)
        ax.set_xlabel(param)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        self.image.value = buf.getvalue()
        self.note.value = f"{esc(metric)} against {esc(param)} over {len(data):,} tasks"
