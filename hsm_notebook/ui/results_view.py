"""The Results section: live learning curves, the views of a sweep's results (the objective over
time with the best so far, slice, contour, parallel coordinates, parameter importance, a timeline,
a search's Pareto front), and a sortable, paged grid of every task with its metrics.

Charts are Plotly figures (``charts/``) shown in two ``FigureWidget``\\s made when the tab is first
drawn: one for the curves, one for the view chosen above it.  Each refresh sends what changed (the
curves that grew, a view's traces when tasks ended, throttled to one redraw every ``VIEW_EVERY``
seconds while the sweep runs), never a figure rebuilt per refresh.  A click on a point or a curve
opens its task in Job detail; brushing an axis of the parallel coordinates filters the grid.  The
objective (``Sweep(objective={"val_loss": "min"})``) sets the metric and its direction; both can be
changed here.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import ipywidgets as w
import pandas as pd

from ..core.ledger import steps
from ..core.model.errors import HsmError
from ..core.model.state import JobState
from .charts import axes, figures
from .charts import importance as ranking
from .charts.live import LiveFigure
from .html import duration, esc, grid_rows

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
        ".hsm-chart > .js-plotly-plot, .hsm-curves > .js-plotly-plot {width: 100%; min-width: 0}"
        "</style>")
LIVE_CURVES = 16  # running tasks whose curves are drawn (highlighted)
BEST_CURVES = 3  # and the best finished ones
PRUNED_CURVES = 5  # and a search's most recently pruned trials, greyed, their prune step marked
FAILED_CURVES = 3  # and the most recently failed tasks that logged steps, greyed
PICK_LIMIT = 10  # curves one pick adds at most
VIEW_EVERY = 2.0  # seconds between two redraws of a view while tasks end (always redrawn at the end)
#: The views under the curves; "Pareto front" is added for a search of several objective metrics.
VIEWS = ("over time", "slice", "contour", "parallel", "importance", "timeline")
PARETO = "Pareto front"
TERMINAL = [s.value for s in JobState if s.is_terminal]
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
                                         value=True, style={"button_width": "auto"})
        self.view = w.ToggleButtons(options=list(VIEWS), value=VIEWS[0], style={"button_width": "auto"})
        self.view.add_class("hsm-views")
        self.param = w.Dropdown(options=[], description="parameter", layout=w.Layout(width="240px"))
        self.param2 = w.Dropdown(options=[], description="and", layout=w.Layout(width="200px"))
        #: the axis of the parameter ``param`` names: auto (log for values spanning decades), log or linear
        self.scale = w.Dropdown(options=[("auto", "auto"), ("log", axes.LOG), ("linear", axes.LINEAR)],
                                value="auto", description="axis", layout=w.Layout(width="170px"))
        self.scales: dict[str, str] = {}  # the user's choices, by parameter
        self.show_fixed = w.Checkbox(value=False, description="fixed parameters", indent=False,
                                     layout=w.Layout(width="160px"))
        #: any task's curve: type part of its parameters (``alpha=1e-05``) or its id, then Enter
        self.pick = w.Text(placeholder="add curves: alpha=1e-05 or a task id, Enter", continuous_update=False,
                           layout=w.Layout(width="320px"))
        self.pick.add_class("hsm-pick")
        self.unpick = w.Button(description="clear picked", layout=w.Layout(width="auto"))
        self.picked: list[str] = []
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
        self.note = w.HTML()  # what the curves show, in words
        self.note.add_class("hsm-curves-note")
        self.view_note = w.HTML()  # what the view shows, or why it cannot yet
        self.view_note.add_class("hsm-view-note")
        self.filter_note = w.HTML()  # the grid's rows filtered by a brush on the parallel coordinates
        self.filter_note.add_class("hsm-filter-note")
        self.unbrush = w.Button(description="show all tasks", layout=w.Layout(width="auto", display="none"))
        self.unbrush.add_class("hsm-unbrush")
        #: the two figures, made when the tab is first drawn (each carries Plotly's JavaScript)
        self.curves: LiveFigure | None = None
        self.chart: LiveFigure | None = None
        self._curves_box = w.VBox(layout=w.Layout(width="100%"))
        self._curves_box.add_class("hsm-curves")
        self._chart_box = w.VBox(layout=w.Layout(width="100%"))
        self._chart_box.add_class("hsm-chart")
        self._colors: dict[str, str] = {}  # a curve's colour, kept while it is shown
        self.head = w.HTML()
        self.head.add_class("hsm-grid-row")
        self.table = w.GridBox([self.head], layout=w.Layout(grid_template_columns="28px"))
        for css in ("hsm-results", "hsm-results-table", "hsm-openers"):
            self.table.add_class(css)
        self.page = 0
        self.sweep: Any = None
        self._lock = threading.RLock()
        self._grid: pd.DataFrame | None = None  # every task + final metrics, read when a task changed
        self._grid_version: Any = None
        self._facts: dict[tuple, Any] = {}  # what is read from the grid, once per reading (see _memo)
        self._final: list[str] = []  # final metric names (numeric columns of results())
        self._step_names: set[str] = set()  # intermediate metric names seen so far
        self._steps_seen = 0  # the last steps row read for names
        self._curves: dict[str, tuple[list[float], list[float]]] = {}  # task -> (steps, values) of the metric
        self._curves_metric: str | None = None
        self._curves_row = 0  # the last steps row in them
        self._curve_order: list[str] = []  # tasks in the order their curves were first drawn (traces stay put)
        #: a search's ``{trial number: step}`` where each pruned trial was stopped (the panel sets it
        #: from ``SearchView.prune_steps``): marked on the pruned curves
        self.prune_steps: Mapping[int, float] = {}
        self._drawn: Any = None  # what the view and the table of finished tasks were drawn for
        self._view_key: Any = None
        self._view_at = -1e9
        self._parallel: figures.ParallelData | None = None
        self.brush: dict[str, Any] = {}  # {axis label: range} brushed on the parallel coordinates
        self.brushed: set[str] | None = None  # the tasks inside every brushed range (None: no brush)
        self.importances: list[tuple[str, float]] = []  # the last computed, most important first
        self.importance_runs = 0  # how many times they were computed (for tests and benches)
        self._importance_key: Any = None
        self._importance_worker: threading.Thread | None = None
        self._user_direction = False
        self.direction.observe(self._direction_changed, "value")
        self.metric.observe(lambda _: self._metric_changed(), "value")
        self._user_sort = False
        self.sort.observe(self._sort_changed, "value")
        for widget in (self.param2, self.show_fixed, self.descending, self.view):
            widget.observe(lambda _: self.redraw(), "value")
        self.param.observe(self._param_changed, "value")
        self.scale.observe(self._scale_changed, "value")
        self.pick.observe(self._picked, "value")
        self.unpick.on_click(lambda _: self.clear_picked())
        self.unbrush.on_click(lambda _: self.clear_brush())
        self.prev.on_click(lambda _: self._turn(-1))
        self.next.on_click(lambda _: self._turn(+1))
        self.controls = w.HBox([self.param, self.param2, self.scale], layout=w.Layout(flex_flow="row wrap"))
        self.widget = w.VBox([
            w.HBox([self.metric, self.direction], layout=w.Layout(flex_flow="row wrap")), self.note,
            self._curves_box, w.HBox([self.pick, self.unpick]), self.view, self.controls, self.view_note,
            self._chart_box, w.HBox([self.sort, self.descending, self.show_fixed]),
            w.HBox([self.filter_note, self.unbrush]), self.header, self.table,
            w.HBox([self.prev, self.page_label, self.next]), w.HTML(_CSS),
        ], layout=w.Layout(width="100%"))

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

    def _param_changed(self, _change: Any) -> None:
        self._adjusting = True
        try:
            self.scale.value = self.scales.get(self.param.value, "auto")
        finally:
            self._adjusting = False
        self.redraw()

    def _scale_changed(self, change: Any) -> None:
        if self._adjusting or not self.param.value:
            return
        if change["new"] == "auto":
            self.scales.pop(self.param.value, None)
        else:
            self.scales[self.param.value] = change["new"]
        self.redraw()

    def set_scale(self, param: str, scale: str | None) -> None:
        """Draw ``param`` on a ``"log"`` or ``"linear"`` axis in every view (None: chosen from its values)."""
        if scale is None or scale == "auto":
            self.scales.pop(param, None)
        else:
            self.scales[param] = scale
        if self.param.value == param:
            self._adjusting = True
            try:
                self.scale.value = scale or "auto"
            finally:
                self._adjusting = False
        self.redraw()

    def _picked(self, change: Any) -> None:
        text = str(change["new"]).strip()
        if text:
            self.pick_curves(text)
            self.pick.value = ""

    def pick_curves(self, text: str) -> list[str]:
        """Add the curves of the tasks whose id or parameters (``alpha=1e-05, eta0=0.1``) contain
        ``text`` (at most ``PICK_LIMIT``); returns their ids."""
        grid = self._grid
        if grid is None or grid.empty:
            return []
        params = [p for p in self.sweep.param_names if p in grid.columns] if self.sweep is not None else []
        names = axes.labels(grid, params)
        wanted = text.lower().replace(" ", "")
        found = [tid for tid, label in names.items()
                 if wanted in tid.lower() or wanted in label.lower().replace(" ", "")][:PICK_LIMIT]
        self.picked = list(dict.fromkeys(self.picked + found))
        self.redraw()
        return found

    def clear_picked(self) -> None:
        self.picked = []
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
    def _make_figures(self) -> tuple[LiveFigure, LiveFigure]:
        """The curves' and the view's figures, made once (each FigureWidget carries plotly.js)."""
        if self.curves is None or self.chart is None:
            self.curves = LiveFigure("hsm-curves-figure", on_click=self._open)
            self.chart = LiveFigure("hsm-chart-figure", on_click=self._open, on_brush=self._brushed)
            self._curves_box.children = (self.curves.widget,)
            self._chart_box.children = (self.chart.widget,)
        return self.curves, self.chart

    def _open(self, task_id: str) -> None:
        self.on_open(task_id)

    def show(self, sweep: Any) -> None:
        """Read the sweep and redraw (the panel calls it when the ledger or the steps changed).
        The task grid is read again only when a task changed; new steps cost one query for the
        new metric names and one for the curves shown."""
        with self._lock:
            if sweep is not self.sweep:
                self._grid_version, self._step_names, self._steps_seen = None, set(), 0
                self._curves, self._curves_metric, self._curve_order, self.picked = {}, None, [], []
                self.brush, self.brushed, self.importances, self._importance_key = {}, None, [], None
            self.sweep = sweep
            version = sweep.store_version()[:2]
            if version != self._grid_version:
                self._grid, self._final = self._read_grid(sweep)
                self._grid_version, self._facts = version, {}
            names, self._steps_seen = sweep.metric_names(self._steps_seen)
            self._step_names |= names
            self._make_figures()
            self._redraw()

    def redraw(self) -> None:
        with self._lock:
            self._redraw()

    def _redraw(self) -> None:
        sweep, grid = self.sweep, self._grid
        if sweep is None or grid is None:
            return
        params = self._memo(("params",), lambda: [p for p in sweep.param_names if p in grid.columns])
        varying = self._memo(("varying",), lambda: [p for p in params if grid[p].astype(str).nunique() > 1])
        metrics = self._final + sorted(self._step_names - set(self._final))
        self._options(self.metric, metrics, preferred=(sweep.objective or (None,))[0])
        self._options(self.param, varying or params)
        self._options(self.param2, varying or params, preferred=(varying or params or [None])[-1])
        views = list(VIEWS) + ([PARETO] if len(sweep.objectives) > 1 else [])
        if list(self.view.options) != views:
            self.view.options = views
        self.controls.layout.display = "" if self.view.value in ("slice", "contour", "parallel") else "none"
        self.param2.layout.display = "" if self.view.value == "contour" else "none"
        self._follow_objective()
        metric, minimize = self.metric.value, bool(self.direction.value)
        if self.curves is not None and self.chart is not None:
            self._draw_curves(sweep, grid, metric, minimize, varying or params)
            self._draw_view(sweep, grid, varying or params, metric, minimize)
        drawn = (self._grid_version, metric, minimize, self.show_fixed.value, self.sort.value, self.descending.value,
                 self.page, self._user_sort, self._user_direction, frozenset(self.brushed or ()), self.brushed is None)
        if drawn != self._drawn:
            self._drawn = drawn
            shown = ["trial"] + FIRST + [p for p in params if self.show_fixed.value or p in varying] + metrics + \
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
        ended = self._memo(("ended",), lambda: bool(grid["state"].astype(str).isin(TERMINAL).all()))
        if ended and not sweep.running:
            for figure in (self.curves, self.chart):
                if figure is not None:
                    figure.settle()  # the sweep has ended: its last state is what a saved notebook keeps

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
        if status.empty:  # nothing yet (a search before its first trial; results() may have seen one since)
            return status, []
        extra = [c for c in results.columns if c not in status.columns]
        if extra:
            status = status.merge(results[["task_id", *extra]], on="task_id", how="left")
        final = [c for c in extra if pd.api.types.is_numeric_dtype(status[c]) and c not in sweep.param_names]
        return status, final

    # -- the curves -------------------------------------------------------------------------------
    def _draw_curves(self, sweep: Any, grid: pd.DataFrame, metric: str | None, minimize: bool,
                     params: list[str]) -> None:
        assert self.curves is not None
        if not metric:
            self.note.value = "<i>Curves and results appear as tasks report metrics (log_metrics).</i>"
            self.curves.show(figures.message("Curves appear as tasks log steps (log_metrics(step=..., ...)).",
                                             "learning curves"))
            return
        role = self._roles(grid, metric, minimize)
        self._curve_order = [t for t in self._curve_order if t in role] + [t for t in role
                                                                            if t not in self._curve_order]
        data = self._grow_curves(sweep, metric, self._curve_order)
        self._colors = {t: c for t, c in self._colors.items() if t in role}
        for tid in self._curve_order:
            if tid not in self._colors:  # the first colour no curve shown has (the others keep theirs)
                used = list(self._colors.values())
                self._colors[tid] = min(axes.PALETTE, key=lambda c: (used.count(c), axes.PALETTE.index(c)))
        shown = grid[grid["task_id"].isin(role)]
        names = axes.labels(shown, params)
        trial_of = trial_numbers(grid, [t for t, r in role.items() if r == "pruned"])
        items = []
        for tid in self._curve_order:
            xs, ys = data.get(tid, ([], []))
            if not xs:
                continue
            mark = None
            if role[tid] == "pruned":
                mark = prune_mark(list(zip(xs, ys, strict=True)), self.prune_steps.get(trial_of.get(tid, -1)))
            items.append(figures.Curve(tid, names.get(tid) or tid, role[tid], xs, ys, mark, self._colors[tid]))
        counts = {r: sum(1 for c in items if c.role == r) for r in figures.ROLE_TITLE}
        words = ", ".join(f"{n} {figures.ROLE_TITLE[r].split(' (')[0]}" for r, n in counts.items() if n)
        arrow = "lower is better" if minimize else "higher is better"
        self.note.value = (f"<b>{esc(metric)}</b> ({arrow}, <span class='hsm-direction-source'>"
                           f"{esc(self.direction_source())}</span>): curves of {esc(words or 'no task yet')}"
                           + (" (pruned and failed in grey, × where a trial was stopped)"
                              if counts["pruned"] or counts["failed"] else "")
                           + "; click a curve to open its task, type below to add any task's")
        self.curves.show(figures.curves(items, metric, minimize))

    def _roles(self, grid: pd.DataFrame, metric: str, minimize: bool) -> dict[str, str]:
        """The tasks whose curves are drawn and how: running ones highlighted, a search's pruned
        and the latest failed ones grey, those picked, the best finished (the lists from the grid are
        made once per grid read)."""
        def lists() -> tuple[list[str], ...]:
            state = grid["state"].astype(str)
            best: list[str] = []
            if metric in grid.columns:
                ranked = grid.dropna(subset=[metric]).sort_values(metric, ascending=minimize, kind="stable")
                best = list(ranked["task_id"])[:BEST_CURVES]
            failed = grid[state == "FAILED"]
            if "end_time" in failed.columns:
                failed = failed.sort_values("end_time", ascending=False, na_position="last", kind="stable")
            running = list(grid.loc[state == "RUNNING", "task_id"])[:LIVE_CURVES]
            return best, list(failed["task_id"])[:FAILED_CURVES], pruned_tasks(grid, PRUNED_CURVES), running

        best, failed, pruned, running = self._memo(("roles", metric, minimize), lists)
        ids = self._memo(("ids",), lambda: set(grid["task_id"]))
        role = dict.fromkeys(best, "best")
        role.update({tid: "picked" for tid in self.picked if tid in ids})
        role.update(dict.fromkeys(failed, "failed"))
        role.update(dict.fromkeys(pruned, "pruned"))
        role.update(dict.fromkeys(running, "running"))
        return role

    def _memo(self, key: tuple, make: Callable[[], Any]) -> Any:
        """``make()``, computed once per reading of the grid (what every refresh would read again)."""
        if key not in self._facts:
            self._facts[key] = make()
        return self._facts[key]

    def _grow_curves(self, sweep: Any, metric: str, tasks: list[str]) -> dict[str, tuple[list[float], list[float]]]:
        """The curves of ``tasks``: a task's whole curve when it is first shown, then only the rows
        logged since the last refresh."""
        if metric != self._curves_metric:
            self._curves_metric, self._curves_row, self._curves = metric, 0, {}
        for tid in [t for t in self._curves if t not in tasks]:
            del self._curves[tid]
        new = [t for t in tasks if t not in self._curves]
        with contextlib.closing(sweep.store.reader()) as conn:
            first = steps.rows_after(conn, new, metric, 0) if new and self._curves_row else []
            later = steps.rows_after(conn, tasks, metric, self._curves_row)
        for tid in new:
            self._curves[tid] = ([], [])
        for row, tid, step, value in first:
            if row <= self._curves_row:
                self._curves[tid][0].append(step)
                self._curves[tid][1].append(value)
        for row, tid, step, value in later:
            self._curves[tid][0].append(step)
            self._curves[tid][1].append(value)
            self._curves_row = max(self._curves_row, row)
        return self._curves

    # -- the view ---------------------------------------------------------------------------------
    def _draw_view(self, sweep: Any, grid: pd.DataFrame, params: list[str], metric: str | None,
                   minimize: bool) -> None:
        assert self.chart is not None
        view = self.view.value
        rest = (view, metric, minimize, self.param.value, self.param2.value, tuple(sorted(self.scales.items())),
                tuple(params), self.importance_runs, tuple(sorted(self.prune_steps.items())), self._user_direction)
        key = (self._grid_version, rest)
        if key == self._view_key:
            return
        if (self._view_key is not None and self._view_key[1] == rest and sweep.running
                and time.monotonic() - self._view_at < VIEW_EVERY):
            return  # tasks ended since the last drawing: drawn again on a refresh to come (the panel's, each second)
        self._view_key, self._view_at = key, time.monotonic()
        self.view_note.value = f"<span class='hsm-preview'>{esc(HINTS.get(view, ''))}</span>"
        if self.brush and view != "parallel" and metric:
            self._parallel = figures.parallel_data(grid, params, metric, scales=self.scales)
            self.brushed = figures.brushed(self._parallel, self.brush)
        if not metric:
            spec = figures.message("The views appear as tasks report metrics (log_metrics).", view)
        else:
            try:
                spec = self._view_spec(view, sweep, grid, params, metric, minimize)
            except HsmError as exc:  # a Pareto front before any task reported every metric, and the like
                spec = figures.message(str(exc), view)
        self.chart.show(spec)

    def _view_spec(self, view: str, sweep: Any, grid: pd.DataFrame, params: list[str], metric: str,
                   minimize: bool) -> dict[str, Any]:
        if view == "slice":
            return figures.slice_plot(grid, params, metric, scales=self.scales, label_params=params)
        if view == "contour":
            return figures.contour(grid, self.param.value, self.param2.value, metric, minimize, scales=self.scales,
                                   label_params=params)
        if view == "parallel":
            self._parallel = figures.parallel_data(grid, params, metric, scales=self.scales)
            self.brush = {k: v for k, v in self.brush.items() if k in self._parallel.labels}
            self.brushed = figures.brushed(self._parallel, self.brush)
            return figures.parallel(self._parallel, minimize, self.brush)
        if view == "importance":
            return self._importance_spec(sweep, grid, params, metric, minimize)
        if view == "timeline":
            return figures.timeline(grid, params)
        if view == PARETO:
            front = sweep.pareto_front()
            return figures.pareto(sweep.results(), set(front["task_id"]), sweep.objectives, params)
        by_trial = "trial" in grid.columns
        why = self.direction_source()
        return figures.history(grid, metric, minimize, params, by_trial=by_trial,
                               stopped=self._stopped(sweep, grid, metric) if by_trial else None,
                               why="assumed" if why.startswith("assumed") else why)

    @staticmethod
    def _stopped(sweep: Any, grid: pd.DataFrame, metric: str) -> dict[str, float]:
        """Each pruned trial's last value of ``metric`` (where it was stopped)."""
        pruned = list(grid.loc[grid["state"].astype(str) == "PRUNED", "task_id"])
        if not pruned:
            return {}
        with contextlib.closing(sweep.store.reader()) as conn:
            latest = steps.latest(conn, pruned, metric)
        return {tid: value for tid, (_, value) in latest.items() if value is not None}

    # -- importances, in a thread of their own ------------------------------------------------------
    def _importance_spec(self, sweep: Any, grid: pd.DataFrame, params: list[str], metric: str,
                         minimize: bool) -> dict[str, Any]:
        title = f"parameter importance for {metric}"
        why = ranking.problem(grid, params, metric)
        if why:
            return figures.message(why, title)
        done = ranking.finished(grid, metric)
        key = (metric, minimize, tuple(params), len(done))
        if key != self._importance_key:
            self._importance_key, self._importance_error = key, ""
            self._start_importances(sweep, grid, params, metric, minimize, key)
        if self._importance_error:
            return figures.message(self._importance_error, title)
        if not self.importances:
            return figures.message(f"Computing importances over {len(done)} completed tasks…", title)
        search = " (the search's study)" if self._uses_study(sweep, metric) else " (the results copied into an " \
                                                                                   "in-memory study)"
        return figures.importance_bars(self.importances, f"{title}: Optuna's get_param_importances over "
                                                         f"{self._importance_n} completed tasks{search}")

    _importance_n = 0
    _importance_error = ""

    @staticmethod
    def _uses_study(sweep: Any, metric: str) -> bool:
        return sweep.search is not None and list(sweep.objectives) == [metric]

    def _start_importances(self, sweep: Any, grid: pd.DataFrame, params: list[str], metric: str, minimize: bool,
                           key: Any) -> None:
        def work() -> None:
            try:
                study = sweep.study if self._uses_study(sweep, metric) else None
                rows = ranking.importances(grid, params, metric, minimize, study=study)
            except HsmError as exc:  # Optuna is not installed: said how to install it
                rows, error = [], str(exc)
            except Exception as exc:  # noqa: BLE001 - the view says it, the panel goes on
                rows = []
                error = f"Parameter importances could not be computed: {type(exc).__name__}: {exc}"
            else:
                error = ""
            with self._lock:
                if key != self._importance_key:
                    return  # asked again meanwhile: that computation's answer counts
                self.importances, self._importance_n, self._importance_error = rows, key[3], error
                self.importance_runs += 1
                self._view_key = None
                self._redraw()

        self._importance_worker = threading.Thread(target=work, name="hsm-importances", daemon=True)
        self._importance_worker.start()

    # -- brushing ---------------------------------------------------------------------------------
    def _brushed(self, ranges: Mapping[str, Any]) -> None:
        """A range brushed on an axis of the parallel coordinates (in the page): the grid shows the
        tasks inside every brushed range."""
        with self._lock:
            brush = {k: _lists(v) for k, v in ranges.items() if v}
            if brush == self.brush:
                return
            self.brush = brush
            self.brushed = figures.brushed(self._parallel, brush) if self._parallel is not None else None
            self.page = 0
            self._redraw()

    def clear_brush(self) -> None:
        """Show every task in the grid again (and clear the brushes on the chart)."""
        with self._lock:
            self.brush, self.brushed, self._view_key = {}, None, None
            self._redraw()

    def _draw_table(self, grid: pd.DataFrame, minimize: bool) -> None:
        total = len(grid)
        if self.brushed is not None:
            grid = grid[grid["task_id"].isin(self.brushed)]
            data = self._parallel
            ranges = "; ".join(data.describe(k, v) if data is not None else k for k, v in self.brush.items())
            self.filter_note.value = (f"<span class='hsm-filtered' data-shown='{len(grid)}'>Showing <b>{len(grid):,}"
                                      f"</b> of {total:,} tasks: those with {esc(ranges)} (brushed on the parallel "
                                      "coordinates)</span>")
            self.unbrush.layout.display = ""
        elif self.filter_note.value:
            self.filter_note.value = ""
            self.unbrush.layout.display = "none"
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


HINTS = {
    "over time": "Each ended task's value when it ended, and the best so far. Click a point to open its task.",
    "slice": "The metric against each parameter (a parameter spanning decades on a log axis: switch it with "
             "'axis'). Click a point to open its task.",
    "contour": "The best value at each pair of the two parameters chosen, over the others.",
    "parallel": "One line per finished task, coloured by the metric. Drag along an axis to keep only the tasks "
                "in that range in the table below; click the axis to clear.",
    "importance": "How much each parameter explains the metric (Optuna's importance evaluator).",
    "timeline": "When each task ran and on which source (one line per slot in use), coloured by state.",
    PARETO: "The trade-off between the first two objective metrics: the front and what it dominates.",
}


def _lists(value: Any) -> Any:
    """A constraint range as lists of floats (the page sends tuples or lists, nested or not)."""
    if isinstance(value, (list, tuple)):
        return [_lists(v) for v in value]
    return float(value)


def pruned_tasks(grid: pd.DataFrame, limit: int) -> list[str]:
    """The ``limit`` most recently ended PRUNED tasks of a search (none for a grid, which has no
    ``trial`` column: its grid is not even filtered)."""
    if "trial" not in grid.columns or "state" not in grid.columns:
        return []
    rows = grid[grid["state"] == "PRUNED"]
    if rows.empty:
        return []
    if "end_time" in rows.columns:
        rows = rows.sort_values("end_time", ascending=False, na_position="last", kind="stable")
    return list(rows["task_id"])[:limit]


def trial_numbers(grid: pd.DataFrame, tasks: list[str]) -> dict[str, int]:
    """``{task id: trial number}`` of ``tasks`` (a search's status has a ``trial`` column)."""
    if "trial" not in grid.columns or not tasks:
        return {}
    rows = grid[grid["task_id"].isin(tasks)]
    return {tid: int(n) for tid, n in zip(rows["task_id"], rows["trial"], strict=False) if not pd.isna(n)}


def prune_mark(points: list[tuple[float, float]], step: float | None) -> tuple[float, float] | None:
    """The point of a pruned curve where it was stopped: at ``step`` (the last point at or before
    it); None when the step is unknown (the curve then ends with its usual dot)."""
    if step is None or not points:
        return None
    before = [p for p in points if p[0] <= step]
    return before[-1] if before else points[0]

