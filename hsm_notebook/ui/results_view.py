"""The Results section: live curves, the best so far, a metric against a parameter, and a
sortable, paged grid of every task with its metrics.

Charts are SVG text (see ``svg.py``): a few KB per refresh whatever the number of tasks or
steps.  The objective (``Sweep(objective={"val_loss": "min"})``) sets the metric and its
direction; both can be changed here.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable
from typing import Any

import ipywidgets as w
import pandas as pd

from ..core.ledger import steps
from ..core.ledger.steps import best_so_far
from . import svg
from .html import duration, esc, grid_rows, table

PAGE_SIZE = 25
#: The grid is one CSS grid: a row's opener and its cells are items of the same grid row (each
#: row's HTML widget is ``display: contents``, so its cells join the grid), so an opener stays
#: beside its row whatever the rows hold, and the columns line up across rows.
_CSS = ("<style>"
        ".hsm-results-table {display: grid; align-items: stretch; font-size: 12px; overflow-x: auto}"
        ".hsm-results-table > .hsm-grid-row, .hsm-results-table > .hsm-grid-row > .widget-html-content"
        " {display: contents !important}"
        ".hsm-results-table .hsm-cell {padding: 1px 8px; border-bottom: 1px solid #ddd; white-space: nowrap;"
        " line-height: 22px}"
        ".hsm-results-table .hsm-th {font-weight: 600}"
        ".hsm-results-table .hsm-err {max-width: 420px; min-width: 160px; overflow: hidden; text-overflow: ellipsis}"
        ".hsm-results-table > .hsm-opener {margin: 0 !important; padding: 0 !important; min-width: 0 !important;"
        " width: 28px; height: auto !important; min-height: 0 !important; line-height: 1 !important;"
        " align-self: stretch; border-bottom: 1px solid #ddd}"
        "</style>")
LIVE_CURVES = 8  # running tasks whose curves are drawn
BEST_CURVES = 3  # and the best finished ones
FIRST = ["state", "error", "exit_code"]
#: words in a metric's name that say higher is better (an accuracy), and those that say lower is
#: (a loss, which wins when both appear: ``acc_loss``); used only when no objective names the metric
_HIGHER = {"acc", "accuracy", "auc", "auroc", "auprc", "f1", "precision", "recall", "score", "reward", "return",
           "bleu", "rouge", "iou", "miou", "dice", "r2", "map", "ap", "ndcg", "psnr", "ssim", "top1", "top5",
           "sharpe", "fitness", "likelihood", "correct", "success", "win"}
_LOWER = {"loss", "error", "err", "mse", "mae", "rmse", "nll", "perplexity", "ppl", "cost", "regret", "wer", "cer",
          "time", "latency", "fid", "bpd", "distance"}


def assumed_minimize(metric: str) -> bool:
    """The direction assumed for ``metric`` when no objective names it: higher is better when a
    word of its name says so (``val_acc``, ``f1``, ``mean_reward``), else lower (a loss)."""
    words = set(re.findall(r"[a-z]+\d*", re.sub(r"([a-z])([A-Z])", r"\1_\2", metric).lower()))
    return not (words & _HIGHER) or bool(words & _LOWER)


class ResultsView:
    def __init__(self) -> None:
        self.metric = w.Dropdown(options=[], description="Metric", layout=w.Layout(width="240px"))
        self.direction = w.ToggleButtons(options=[("lower is better", True), ("higher is better", False)],
                                         value=True, style={"button_width": "110px"})
        self.param = w.Dropdown(options=[], description="against", layout=w.Layout(width="240px"))
        self.show_fixed = w.Checkbox(value=False, description="fixed parameters", indent=False,
                                     layout=w.Layout(width="160px"))
        self.sort = w.Dropdown(options=[], description="Sort by", layout=w.Layout(width="240px"))
        self.descending = w.ToggleButton(value=False, description="desc", layout=w.Layout(width="60px"))
        #: one button per column: a click sorts by it, a second click turns the order round
        self.header = w.HBox(layout=w.Layout(flex_flow="row wrap"))
        self.header.add_class("hsm-results-header")
        #: the page's rows: per row an opener (›, a click opens the task's Job detail) and the
        #: row's cells, side by side in one grid row of ``self.table`` (see ``_CSS``)
        self.openers: list[w.Button] = []
        self.rows: list[w.HTML] = []
        self.on_open: Callable[[str], None] = lambda task_id: None
        self._page_ids: list[str] = []
        self._header_columns: list[str] = []
        self.prev = w.Button(description="◀", layout=w.Layout(width="40px"))
        self.next = w.Button(description="▶", layout=w.Layout(width="40px"))
        self.page_label = w.HTML()
        self.curves, self.best_line, self.scatter, self.parallel = w.HTML(), w.HTML(), w.HTML(), w.HTML()
        self.parallel.add_class("hsm-parallel-box")
        self.curves.add_class("hsm-curves")
        self.best_line.add_class("hsm-best-so-far")
        self.note = w.HTML()
        self.head = w.HTML()
        self.head.add_class("hsm-grid-row")
        self.table = w.GridBox([self.head], layout=w.Layout(grid_template_columns="28px"))
        for css in ("hsm-results", "hsm-results-table", "hsm-openers"):
            self.table.add_class(css)
        self.page = 0
        self.sweep: Any = None
        self._grid: pd.DataFrame | None = None  # every task + final metrics, read when a task changed
        self._grid_version: Any = None
        self._final: list[str] = []  # final metric names (numeric columns of results())
        self._step_names: set[str] = set()  # intermediate metric names seen so far
        self._steps_seen = 0  # the last steps row read for names
        self._curves: dict[str, list[tuple[float, float]]] = {}  # task -> (step, value) of the metric shown
        self._curves_key: Any = None  # (metric, tasks) the curves are of
        self._curves_row = 0  # the last steps row in them
        self._drawn: Any = None  # what the charts and the table of finished tasks were drawn for
        self._user_direction = False
        self.direction.observe(self._direction_changed, "value")
        self.metric.observe(lambda _: self._metric_changed(), "value")
        self._user_sort = False
        self.sort.observe(self._sort_changed, "value")
        for widget in (self.param, self.show_fixed, self.descending):
            widget.observe(lambda _: self.redraw(), "value")
        self.prev.on_click(lambda _: self._turn(-1))
        self.next.on_click(lambda _: self._turn(+1))
        self.widget = w.VBox([
            w.HBox([self.metric, self.direction]), self.note, self.curves, self.best_line,
            w.HBox([self.param]), self.scatter, self.parallel,
            w.HBox([self.sort, self.descending, self.show_fixed]), self.header,
            self.table, w.HBox([self.prev, self.page_label, self.next]), w.HTML(_CSS),
        ])

    # -- inputs -------------------------------------------------------------------------------
    def _direction_changed(self, change: Any) -> None:
        if change.get("new") is not None and self._adjusting is False:
            self._user_direction = True
        self.redraw()

    _adjusting = False

    def _sort_changed(self, change: Any) -> None:
        if not self._adjusting:
            self._user_sort = True
            self.redraw()

    def _metric_changed(self) -> None:
        self._user_direction = False
        self._follow_objective()
        self.page = 0
        self.redraw()

    def _follow_objective(self) -> None:
        """Until the user flips it, the direction is the objective's for its metric, else the one
        ``assumed_minimize`` reads from the metric's name (and the note says it was assumed)."""
        metric = self.metric.value
        if self._user_direction or not metric:
            return
        declared = self.sweep.objective if self.sweep is not None else None
        self._set_direction(declared[1] if declared and declared[0] == metric else assumed_minimize(metric))

    def direction_source(self) -> str:
        """Why the shown metric is ranked the way it is: the user's choice, the objective, or an
        assumption (said in words wherever the view calls a task best)."""
        declared = self.sweep.objective if self.sweep is not None else None
        if self._user_direction:
            return "your choice"
        if declared and declared[0] == self.metric.value:
            return "the sweep's objective"
        return (f"assumed, as no objective names {self.metric.value}"
                + (f" (the objective is {declared[0]})" if declared else "") + "; flip it above if wrong")

    def _set_direction(self, minimize: bool) -> None:
        self._adjusting = True
        try:
            self.direction.value = minimize
        finally:
            self._adjusting = False

    def click_header(self, column: str) -> None:
        """Sort by ``column``; clicking the sorted column again turns the order round."""
        if self.sort.value == column:
            self.descending.value = not self.descending.value
        else:
            self.sort.value = column
            self.descending.value = False

    def open_row(self, row: int) -> None:
        """Open the Job detail of the page's ``row``-th task."""
        self.on_open(self._page_ids[row])

    def _show_rows(self, head: str, rows: list[str], task_ids: list[str], columns: int) -> None:
        """Put the page in the grid: the header, then per row its opener and its cells, made in
        one step from one list so the i-th opener opens the task whose cells follow it."""
        while len(self.rows) < len(rows):
            i = len(self.rows)
            button = w.Button(description="›", layout=w.Layout(width="28px"))
            button.add_class("hsm-opener")
            button.on_click(lambda _, i=i: self.open_row(i))
            row = w.HTML()
            row.add_class("hsm-grid-row")
            self.openers.append(button)
            self.rows.append(row)
        del self.openers[len(rows):], self.rows[len(rows):]
        self._page_ids = task_ids
        if self.head.value != head:
            self.head.value = head
        for button, row, markup, tid in zip(self.openers, self.rows, rows, task_ids, strict=False):
            if row.value != markup:
                row.value = markup
            button.tooltip = f"open {tid} in Job detail"
        template = f"28px repeat({columns}, auto)"
        if self.table.layout.grid_template_columns != template:
            self.table.layout.grid_template_columns = template
        children = (self.head, *(x for pair in zip(self.openers, self.rows, strict=False) for x in pair))
        if self.table.children != children:
            self.table.children = children

    def _headers(self, columns: list[str]) -> None:
        arrow = " ▼" if self.descending.value else " ▲"
        labels = [c + (arrow if c == self.sort.value else "") for c in columns]
        if self._header_columns != labels:
            self._header_columns = labels
            buttons = []
            for column, label in zip(columns, labels, strict=False):
                button = w.Button(description=label, layout=w.Layout(width="auto"), tooltip=f"sort by {column}")
                button.on_click(lambda _, c=column: self.click_header(c))
                buttons.append(button)
            self.header.children = buttons

    def _turn(self, step: int) -> None:
        self.page = max(0, self.page + step)
        self.redraw()

    # -- drawing ------------------------------------------------------------------------------
    def show(self, sweep: Any) -> None:
        """Read the sweep and redraw (the panel calls it when the ledger or the steps changed).
        The task grid is read again only when a task changed; new steps cost one query for the
        new metric names and one for the curves shown."""
        if sweep is not self.sweep:
            self._grid_version, self._step_names, self._steps_seen = None, set(), 0
        self.sweep = sweep
        version = sweep.store_version()[:2]
        if version != self._grid_version:
            self._grid, self._final = self._read_grid(sweep)
            self._grid_version = version
        names, self._steps_seen = sweep.metric_names(self._steps_seen)
        self._step_names |= names
        self.redraw()

    def redraw(self) -> None:
        sweep, grid = self.sweep, self._grid
        if sweep is None or grid is None:
            return
        params = [p for p in sweep.param_names if p in grid.columns]
        varying = [p for p in params if grid[p].astype(str).nunique() > 1]
        metrics = self._final + sorted(self._step_names - set(self._final))
        self._options(self.metric, metrics, preferred=(sweep.objective or (None,))[0])
        self._options(self.param, varying or params)
        self._follow_objective()
        metric, minimize = self.metric.value, bool(self.direction.value)
        self._draw_curves(sweep, grid, metric, minimize)
        drawn = (self._grid_version, metric, minimize, self.param.value, self.show_fixed.value, self.sort.value,
                 self.descending.value, self.page, self._user_sort, self._user_direction)
        if drawn == self._drawn:
            return  # only the live curves changed: the finished tasks' charts and table stand
        self._drawn = drawn
        self.best_line.value = self._best_so_far(grid, metric, minimize, self.direction_source()) if metric else ""
        self._draw_scatter(grid, metric)
        self._draw_parallel(grid, varying, metric, minimize)
        shown = FIRST + [p for p in params if self.show_fixed.value or p in varying] + metrics + \
            ["attempt", "duration", "source", "task_id"]
        shown = [c for c in dict.fromkeys(shown) if c in grid.columns]
        self._adjusting = True
        try:
            self._options(self.sort, shown, preferred=metric)
            if not self._user_sort and metric in shown:
                self.sort.value = metric  # the best first, until the user sorts by something else
        finally:
            self._adjusting = False
        self._draw_table(grid[shown], minimize)

    @staticmethod
    def _options(widget: w.Dropdown, options: list[str], preferred: str | None = None) -> None:
        if list(widget.options) != options:
            current = widget.value
            widget.options = options
            widget.value = current if current in options else (preferred if preferred in options else
                                                               (options[0] if options else None))
        elif widget.value is None and options:
            widget.value = preferred if preferred in options else options[0]

    @staticmethod
    def _read_grid(sweep: Any) -> tuple[pd.DataFrame, list[str]]:
        """Every task with its final metrics (the status table joined with ``results()``), and the
        names of those metrics."""
        status = sweep.status()
        results = sweep.results()
        extra = [c for c in results.columns if c not in status.columns]
        if extra:
            status = status.merge(results[["task_id", *extra]], on="task_id", how="left")
        final = [c for c in extra if pd.api.types.is_numeric_dtype(status[c]) and c not in sweep.param_names]
        return status, final

    def _draw_curves(self, sweep: Any, grid: pd.DataFrame, metric: str | None, minimize: bool) -> None:
        if not metric:
            self.note.value = "<i>Curves and results appear as tasks report metrics (log_metrics).</i>"
            self.curves.value = ""
            return
        running = list(grid.loc[grid["state"] == "RUNNING", "task_id"])[:LIVE_CURVES]
        best = []
        if metric in grid.columns:
            best = list(grid.dropna(subset=[metric]).sort_values(metric, ascending=minimize)["task_id"])[:BEST_CURVES]
        chosen = list(dict.fromkeys(running + best))
        series = [(f"{tid} ({'running' if tid in running else 'best'})", points)
                  for tid, points in self._grow_curves(sweep, metric, chosen).items() if points]
        arrow = "lower is better" if minimize else "higher is better"
        self.note.value = (f"<b>{esc(metric)}</b> ({arrow}, <span class='hsm-direction-source'>"
                           f"{esc(self.direction_source())}</span>): {len(running)} running, {len(best)} best shown"
                           + (f" · {svg.legend([n for n, _ in series])}" if series else ""))
        self.curves.value = svg.chart(series, x_label="step", y_label=metric, log_x=False) if series else ""

    def _grow_curves(self, sweep: Any, metric: str, tasks: list[str]) -> dict[str, list[tuple[float, float]]]:
        """The curves of ``tasks``: read whole when the metric or the tasks change, else only the
        rows logged since the last refresh."""
        key = (metric, tuple(tasks))
        if key != self._curves_key:
            self._curves_key, self._curves_row = key, 0
            self._curves = {tid: [] for tid in tasks}
        with contextlib.closing(sweep.store.reader()) as conn:
            rows = steps.rows_after(conn, tasks, metric, self._curves_row)
        for row, tid, step, value in rows:
            self._curves[tid].append((step, value))
            self._curves_row = row
        return self._curves

    @staticmethod
    def _best_so_far(grid: pd.DataFrame, metric: str, minimize: bool, why: str) -> str:
        if metric not in grid.columns:
            return ""
        done = grid.dropna(subset=[metric, "end_time"])
        if done.empty:
            return ""
        start = grid["submit_time"].min()
        minutes = (done["end_time"] - start).dt.total_seconds() / 60
        line = best_so_far(zip(minutes, done[metric], strict=False), minimize)
        line.append((float(minutes.max()), line[-1][1]))  # flat to the latest result
        better = "lower" if minimize else "higher"
        why = "assumed" if why.startswith("assumed") else why
        return svg.chart([(f"best {metric} so far ({better} is better: {why})", line)],
                         x_label="minutes since the first submission", y_label=f"best {metric}", log_x=False)

    def _draw_scatter(self, grid: pd.DataFrame, metric: str | None) -> None:
        param = self.param.value
        if not metric or not param or metric not in grid.columns:
            self.scatter.value = ""
            return
        data = grid[[param, metric]].dropna()
        if data.empty or not pd.api.types.is_numeric_dtype(data[param]):
            means = data.groupby(data[param].astype(str))[metric].mean() if not data.empty else pd.Series(dtype=float)
            self.scatter.value = table(means.rename(f"mean {metric}").reset_index(), "hsm-means", state_column=None)
            return
        self.scatter.value = svg.chart([(f"{metric} by {param}", list(zip(data[param], data[metric], strict=False)))],
                                       x_label=param, y_label=metric, scatter=True)

    def _draw_parallel(self, grid: pd.DataFrame, varying: list[str], metric: str | None, minimize: bool) -> None:
        """The varying parameters against the metric, one line per finished task (the best on top)."""
        if not metric or metric not in grid.columns or not varying:
            self.parallel.value = ""
            return
        done = grid.dropna(subset=[metric])
        axes = [*varying, metric]
        rows = [[_plain(v) for v in row] for row in done[axes].itertuples(index=False)]
        self.parallel.value = svg.parallel(axes, rows, list(done[metric]), minimize)

    def _draw_table(self, grid: pd.DataFrame, minimize: bool) -> None:
        key = self.sort.value
        if key in grid.columns:
            ascending = not self.descending.value
            if key == self.metric.value and not self.descending.value:
                ascending = minimize  # the best first unless asked otherwise
            grid = grid.sort_values(key, ascending=ascending, na_position="last", kind="stable")
        pages = max(1, -(-len(grid) // PAGE_SIZE))
        self.page = min(self.page, pages - 1)
        page = grid.iloc[self.page * PAGE_SIZE:(self.page + 1) * PAGE_SIZE]
        if "duration" in page.columns:
            shown = [duration(d.total_seconds()) if pd.notna(d) else None for d in page["duration"]]
            page = page.assign(duration=shown)
        self.note_table = (f"<b>{len(grid):,}</b> tasks, <b>{int((grid['state'] == 'COMPLETED').sum()):,}</b> "
                           "completed")
        self.page_label.value = f"{self.note_table} · page {self.page + 1} of {pages}"
        self._headers(list(grid.columns))
        head, rows = grid_rows(page)
        self._show_rows(head, rows, list(page["task_id"]) if "task_id" in page.columns else [""] * len(rows),
                        len(page.columns))


def _plain(value: Any) -> Any:
    """numpy scalars as Python numbers (a value shown on an axis)."""
    return value.item() if hasattr(value, "item") and not isinstance(value, (list, dict, str)) else value
