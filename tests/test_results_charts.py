"""Issue 22: the Results charts.  The figure builders are pure (a frame in, a Plotly figure out), so
their axes, hovers, legends, importances and brushing are checked here without a browser; the
views are checked on sweeps whose ledgers are written directly (no job runs).  What the page draws
from them is checked in tests/browser/test_charts_browser.py."""

from __future__ import annotations

import json
import sys
import time

import ipywidgets
import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from hsm_notebook import ConfigError, JobOutcome, JobState, ParameterSpace, Sweep, compare
from hsm_notebook.core.ledger import steps
from hsm_notebook.ui.charts import axes, figures
from hsm_notebook.ui.charts import importance as ranking
from hsm_notebook.ui.charts.live import LiveFigure, plan, task_of
from hsm_notebook.ui.compare import CompareView
from hsm_notebook.ui.magic import open_panel
from hsm_notebook.ui.results_view import ResultsView
from tests.helpers import until

ALPHAS = [1e-5, 1e-4, 1e-3, 1e-2]
ETAS = [0.01, 0.1, 1.0]


def _frame() -> pd.DataFrame:
    """Twelve finished tasks of alpha (log-spaced) x eta0, a text parameter and a fixed one."""
    rows = []
    start = pd.Timestamp("2024-05-01 10:00", tz="UTC")
    for i, (a, e) in enumerate((a, e) for a in ALPHAS for e in ETAS):
        rows.append({"task_id": f"{i:012x}", "state": "COMPLETED", "source": "gpu1" if i % 2 else "local",
                     "alpha": a, "eta0": e, "loss": "hinge" if i % 3 else "log_loss", "epochs": 5,
                     "val_acc": 0.95 - 0.02 * abs(np.log10(a) + 4) - 0.05 * (e == 1.0), "submit_time": start,
                     "start_time": start + pd.Timedelta(seconds=10 * (i // 4)),
                     "end_time": start + pd.Timedelta(seconds=10 * (i // 4) + 8)})
    return pd.DataFrame(rows)


def _validate(spec: dict) -> go.Figure:
    """The spec as Plotly reads it (raises on any property Plotly does not know)."""
    return go.Figure(spec)


# -- axes ----------------------------------------------------------------------------------------
def test_a_parameter_spanning_decades_gets_a_log_axis_and_can_be_switched():
    assert axes.auto_scale(ALPHAS) == "log" and axes.auto_scale([1, 100]) == "log"  # two decades
    assert axes.auto_scale([0.1, 0.5, 0.9]) == "linear" and axes.auto_scale([1, 99]) == "linear"
    assert axes.auto_scale([-1e-3, 10]) == "linear" and axes.auto_scale([0, 1e-5, 1e-2]) == "linear"
    frame = _frame()
    fig = _validate(figures.slice_plot(frame, ["alpha", "eta0", "loss"], "val_acc"))
    assert (fig.layout.xaxis.type, fig.layout.xaxis2.type, fig.layout.xaxis3.type) == ("log", "log", "category")
    assert fig.layout.xaxis.exponentformat == "power"  # ticks at 10^-5, 10^-4, ...
    switched = _validate(figures.slice_plot(frame, ["alpha", "eta0"], "val_acc", scales={"alpha": "linear"}))
    assert (switched.layout.xaxis.type, switched.layout.xaxis2.type) == ("linear", "log")
    assert axes.scale_of(["relu"], "log") == "category" and axes.scale_of([-1, 100], "log") == "linear"
    assert axes.scale_of([1, 2], "log") == "log"  # the user's choice, when the values allow it
    contour = _validate(figures.contour(frame, "alpha", "eta0", "val_acc", False))
    assert (contour.layout.xaxis.type, contour.layout.yaxis.type) == ("log", "log")
    assert contour.data[0].type == "contour"


def test_text_parameters_get_category_axes_everywhere():
    frame = _frame()
    heat = _validate(figures.contour(frame, "alpha", "loss", "val_acc", False))
    assert heat.data[0].type == "heatmap" and heat.layout.yaxis.type == "category"
    data = figures.parallel_data(frame, ["alpha", "loss"], "val_acc")
    fig = _validate(figures.parallel(data, minimize=False))
    alpha, loss, metric = fig.data[0].dimensions
    assert list(loss.ticktext) == ["hinge", "log_loss"] and set(loss["values"]) == {0.0, 1.0}
    assert list(alpha.ticktext) == ["1e-05", "0.0001", "0.001", "0.01"]  # a log axis drawn in log10 units
    assert metric.label == "val_acc" and fig.data[0].line.showscale
    assert fig.data[0].line.reversescale is False  # higher is better: the best brightest


def test_hovers_name_the_task_its_parameters_and_the_value():
    frame = _frame()
    fig = figures.slice_plot(frame, ["alpha", "eta0"], "val_acc", label_params=["alpha", "eta0"])
    trace = fig["data"][0]
    first = frame.iloc[0]
    assert list(trace["customdata"][0]) == [first["task_id"], "alpha=1e-05, eta0=0.01"]
    template = trace["hovertemplate"]
    assert "task %{customdata[0]}" in template and "%{customdata[1]}" in template and "val_acc = %{y" in template
    curve = figures.curves([figures.Curve("abc123", "alpha=1e-05, eta0=0.1", "running", [0, 1], [0.5, 0.7])],
                           "val_acc", False)["data"][0]
    assert curve["name"] == "alpha=1e-05, eta0=0.1" and "task abc123 (running)" in curve["hovertemplate"]
    assert "step %{x}: val_acc = %{y" in curve["hovertemplate"]
    for spec in (figures.history(frame, "val_acc", False, ["alpha", "eta0"]), figures.timeline(frame, ["alpha"]),
                 figures.pareto(frame.assign(t=1.0), set(frame["task_id"][:2]), {"val_acc": "max", "t": "min"},
                                ["alpha"])):
        for t in _validate(spec).data:
            if t.customdata is not None:
                assert "task %{customdata[0]}" in t.hovertemplate and "%{customdata[1]}" in t.hovertemplate
                assert task_of(t, 0) in set(frame["task_id"])  # what a click on the point opens


def test_labels_and_curve_points():
    assert axes.params_label({"alpha": 1e-05, "eta0": 0.1, "layers": 3, "act": "relu"}) == \
        "alpha=1e-05, eta0=0.1, layers=3, act=relu"
    kept = axes.thin(1000)
    assert len(kept) <= axes.MAX_POINTS and kept[-1] == 999
    grown = axes.thin(1001)
    assert list(grown[:-1]) == list(kept[:-1])  # a new step adds a point; the ones drawn stay put
    assert list(axes.thin(5)) == [0, 1, 2, 3, 4]


def test_the_timeline_puts_tasks_running_together_on_lanes_of_their_source():
    frame = _frame()
    fig = _validate(figures.timeline(frame, ["alpha", "eta0"], now=pd.Timestamp("2024-05-01 11:00", tz="UTC")))
    lanes = {y for t in fig.data for y in t.y}
    assert lanes == {"local #1", "local #2", "gpu1 #1", "gpu1 #2"}  # 4 at a time, 2 per source
    assert fig.layout.xaxis.type == "date" and [t.name for t in fig.data] == ["COMPLETED"]


def test_importance_ranks_every_varying_parameter_without_a_search():
    pytest.importorskip("optuna")
    frame = _frame()
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    assert ranking.distribution(ALPHAS) == FloatDistribution(1e-5, 1e-2, log=True)
    assert ranking.distribution([1, 2, 8]) == IntDistribution(1, 8)
    assert isinstance(ranking.distribution(["hinge", "log_loss"]), CategoricalDistribution)
    study = ranking.study_of(frame, ["alpha", "eta0", "loss", "epochs"], "val_acc", minimize=False)
    assert len(study.trials) == 12 and set(study.trials[0].params) == {"alpha", "eta0", "loss"}  # epochs is fixed
    rows = ranking.importances(frame, ["alpha", "eta0", "loss", "epochs"], "val_acc", minimize=False)
    assert {name for name, _ in rows} == {"alpha", "eta0", "loss"}
    assert abs(sum(v for _, v in rows) - 1) < 1e-6 and rows == sorted(rows, key=lambda r: -r[1])
    bars = _validate(figures.importance_bars(rows, "importance"))
    assert list(bars.data[0].y) == [name for name, _ in rows]
    assert "at least 2 completed tasks" in ranking.problem(frame.iloc[:1], ["alpha"], "val_acc")


# -- the live figure -------------------------------------------------------------------------------
class Sent:
    """Bytes of the widget messages sent while it is active (``Widget._send`` counted)."""

    def __init__(self, monkeypatch):
        self.messages: list[dict] = []
        original = ipywidgets.Widget._send

        def send(widget, msg, buffers=None):
            self.messages.append({"state": msg.get("state", {}), "bytes": len(json.dumps(msg, default=str))
                                  + sum(len(b) for b in buffers or [])})
            return original(widget, msg, buffers)

        monkeypatch.setattr(ipywidgets.Widget, "_send", send)

    def total(self) -> int:
        return sum(m["bytes"] for m in self.messages)


def _curve(tid: str, n: int) -> figures.Curve:
    return figures.Curve(tid, f"x={tid}", "running", list(range(n)), [1 / (s + 1) for s in range(n)])


def test_a_live_figure_sends_only_the_curves_that_grew(monkeypatch):
    figure = LiveFigure()
    sent = Sent(monkeypatch)
    figure.show(figures.curves([_curve(t, 1000) for t in ("a", "b", "c")], "loss", True))
    first = sent.total()
    sent.messages.clear()
    figure.show(figures.curves([_curve(t, 1000) for t in ("a", "b", "c")], "loss", True))
    assert sent.total() == 0  # nothing changed, nothing sent
    figure.show(figures.curves([_curve("a", 1000), _curve("b", 1001), _curve("c", 1000)], "loss", True))
    updates = [m["state"]["_py2js_update"] for m in sent.messages if m["state"].get("_py2js_update")]
    assert [u["style_traces"] for u in updates] == [[1]]  # the curve of b only
    assert sent.total() < first / 2 and sent.total() < 3000
    assert figure.widget.data[1].x[-1] == 1000 and len(figure.widget.data[1].x) <= axes.MAX_POINTS
    # a new curve is added at the end, one gone is deleted: the others stay as they are
    sent.messages.clear()
    figure.show(figures.curves([_curve("a", 1000), _curve("c", 1000), _curve("d", 3)], "loss", True))
    assert [t.name for t in figure.widget.data] == ["x=a", "x=c", "x=d"]
    assert [t["uid"] for t in figure.traces] == ["curve-a", "curve-c", "curve-d"]
    assert not any(m["state"].get("_py2js_update") for m in sent.messages)
    assert plan(["a", "b"], ["b", "a"]) is None and plan(["a", "b"], ["b", "c"]) == ([0], 1)


def test_the_kernels_copy_of_the_figure_holds_its_last_state_once_settled():
    """What a notebook saved from the kernel side (nbconvert, Voila) keeps: the widget's synchronised
    state, which FigureWidget fills only when made; ``settle`` copies the figure on screen into it."""
    figure = LiveFigure()
    figure.show(figures.curves([_curve("a", 10)], "loss", True))
    figure.show(figures.importance_bars([("alpha", 0.7), ("eta0", 0.3)], "importance"))
    assert figure.widget.get_state()["_widget_data"] == []  # as made: empty
    figure.settle()
    saved = figure.widget.get_state()
    assert [t["type"] for t in saved["_widget_data"]] == ["bar"] and list(saved["_widget_data"][0]["y"]) == \
        ["alpha", "eta0"]
    assert saved["_widget_layout"]["title"]["text"] == "importance"


def test_a_click_opens_the_task_of_the_point_or_the_curve():
    frame = _frame()
    opened: list[str] = []
    figure = LiveFigure(on_click=opened.append)
    figure.show(figures.slice_plot(frame, ["alpha"], "val_acc"))
    assert task_of(figure.widget.data[0], 3) == frame["task_id"][3]
    figure.show(figures.curves([_curve("abc", 4)], "loss", True))
    assert task_of(figure.widget.data[0], 2) == "abc"  # any point of a curve: its task


# -- the views on a sweep ----------------------------------------------------------------------------
def _ledger_sweep(tmp_path, name: str = "s", alphas=ALPHAS, running: int = 0, failed: int = 0) -> Sweep:
    """A sweep of alpha x eta0 whose ledger says each task completed with ``val_acc`` after five
    steps of it (the last ``running`` tasks still running, the ``failed`` before them failed); no job runs."""
    space = ParameterSpace(grid={"alpha": list(alphas), "eta0": ETAS})
    sweep = Sweep(space, [sys.executable, "-c", "pass"], directory=tmp_path / name, workdir=tmp_path,
                  objective={"val_acc": "max"})
    store = sweep.store
    items = list(space.with_ids())
    with store.transaction() as conn:
        for k, (tid, params) in enumerate(items):
            attempt, _ = store.begin_attempt(tid, "local")
            store.set_state(tid, attempt, JobState.RUNNING, job_id=f"j{k}")
            acc = 0.95 - 0.02 * abs(np.log10(params["alpha"]) + 4) - 0.05 * (params["eta0"] == 1.0)
            steps.insert(conn, tid, attempt, [(1, s, "val_acc", acc - 0.1 / (s + 1), time.time()) for s in range(5)])
            if k < len(items) - running - failed:
                store.finish(tid, attempt, JobOutcome(JobState.COMPLETED, 0, None, {"val_acc": acc}))
            elif k < len(items) - running:
                store.finish(tid, attempt, JobOutcome(JobState.FAILED, 1, "exit code 1: diverged"))
    store.close()
    return sweep


def _rows(view: ResultsView) -> int:
    return sum(1 for r in view.rows if r.value)


def test_legends_name_parameters_and_any_curve_can_be_picked(tmp_path):
    sweep = _ledger_sweep(tmp_path, running=2, failed=1)
    view = ResultsView()
    view.show(sweep)
    names = {t["name"]: t["legendgroup"] for t in view.curves.traces}
    assert all(name.startswith("alpha=") and ", eta0=" in name for name in names)
    assert list(names.values()).count("running") == 2 and list(names.values()).count("best") == 3
    [failed] = [t for t in view.curves.traces if t["legendgroup"] == "failed"]
    assert failed["line"]["color"] == axes.GREY and failed["line"]["dash"] == "dot"  # greyed
    width = {t["legendgroup"]: t["line"]["width"] for t in view.curves.traces}
    assert width["running"] > width["best"]  # running curves highlighted
    picked = view.pick_curves("alpha=1e-05,eta0=1")
    assert len(picked) == 1 and "alpha=1e-05, eta0=1" in {t["name"] for t in view.curves.traces}
    assert {t["legendgroup"] for t in view.curves.traces if t["name"] == "alpha=1e-05, eta0=1"} == {"picked"}
    view.clear_picked()
    assert "alpha=1e-05, eta0=1" not in {t["name"] for t in view.curves.traces}


def test_brushing_an_axis_of_the_parallel_coordinates_filters_the_grid(tmp_path):
    sweep = _ledger_sweep(tmp_path)
    view = ResultsView()
    view.show(sweep)
    view.view.value = "parallel"
    assert view.chart.widget.data[0].type == "parcoords" and _rows(view) == 12
    # what the page sends when alpha's axis is brushed over 1e-5 ... 1e-4 (log10 units)
    view.chart.widget.plotly_restyle({"dimensions[0].constraintrange": [[-5.2, -3.8]]}, [0])
    assert _rows(view) == 6 and view.brushed is not None and len(view.brushed) == 6
    assert "Showing <b>6</b> of 12 tasks" in view.filter_note.value and "alpha in [6.31e-06, 0.0001585]" in \
        view.filter_note.value
    shown = sweep.status().set_index("task_id").loc[view._page_ids, "alpha"]
    assert set(shown) == {1e-5, 1e-4}
    view.chart.widget.plotly_restyle({"dimensions[1].constraintrange": [[-2.5, -1.5]]}, [0])  # and eta0 = 0.01
    assert _rows(view) == 2
    view.view.value = "slice"  # the filter stays while another view is shown
    assert _rows(view) == 2
    view.clear_brush()
    assert _rows(view) == 12 and view.filter_note.value == ""


def test_every_view_draws_and_the_user_can_switch_an_axis(tmp_path):
    sweep = _ledger_sweep(tmp_path)
    view = ResultsView()
    view.show(sweep)
    for name in view.view.options:
        view.view.value = name
        _validate({"data": view.chart.traces, "layout": view.chart.layout})
        assert view.chart.traces or name == "importance", name  # importances: "computing..." at first
    view.view.value = "slice"
    assert view.chart.layout["xaxis"]["type"] == "log"
    view.param.value = "alpha"
    view.scale.value = "linear"
    assert view.chart.layout["xaxis"]["type"] == "linear" and view.scales == {"alpha": "linear"}
    view.set_scale("alpha", None)
    assert view.chart.layout["xaxis"]["type"] == "log" and view.scale.value == "auto"
    view.view.value = "importance"
    until(lambda: view.importance_runs >= 1 and view.chart.traces and view.chart.traces[0]["type"] == "bar",
          60, "the importances computed and drawn")
    assert set(view.chart.traces[0]["y"]) == {"alpha", "eta0"}


def test_without_optuna_the_importance_view_says_how_to_install_it(tmp_path, monkeypatch):
    sweep = _ledger_sweep(tmp_path)
    monkeypatch.setitem(sys.modules, "optuna", None)  # importing optuna now raises ImportError
    view = ResultsView()
    view.show(sweep)
    view.view.value = "importance"
    until(lambda: "pip install optuna" in str(view.chart.layout.get("annotations")), 30, "the words")
    assert view.chart.traces == []


def test_compare_puts_sweeps_side_by_side(tmp_path):
    first = _ledger_sweep(tmp_path, "first")
    second = _ledger_sweep(tmp_path, "second", alphas=[3e-5, 3e-3])
    frame = compare(first, str(second.directory))
    assert list(frame["sweep"].unique()) == ["first", "second"] and len(frame) == 12 + 6
    assert list(frame.columns[:3]) == ["sweep", "sweep_id", "task_id"] and "val_acc" in frame.attrs["metrics"]
    assert frame.groupby("sweep")["val_acc"].count().to_dict() == {"first": 12, "second": 6}
    view = CompareView(frame)
    uids = [t["uid"] for t in view.chart.traces]
    assert "slice-alpha-first" in uids and "slice-alpha-second" in uids  # same axes, a colour per sweep
    assert view.chart.layout["xaxis"]["type"] == "log" and "first" in view.best.value
    assert "2 sweeps on val_acc" in view.summary()
    assert isinstance(open_panel(f"compare {first.directory} {second.directory}"), CompareView)
    with pytest.raises(ConfigError, match="give the sweeps"):
        compare()
    with pytest.raises(Exception, match="two or more sweeps"):
        open_panel(f"compare {first.directory}")
