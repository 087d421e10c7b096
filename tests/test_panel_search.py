"""Issue 21, the panel's side of a search: the Parameters form builds a ``Search`` (and says what is
wrong in words), Results show the optimization history, pruned curves, parameter importances and
the Pareto front (Plotly figures since issue 22), and every count includes PRUNED.  Unit tests use
no job; one local test runs a small real search with a median pruner."""

from __future__ import annotations

import html
import math

import pandas as pd
import pytest

from hsm_notebook import Categorical, Float, Int, JobState, LocalComputeSource, Search, Sweep
from hsm_notebook.ui import SweepPanel
from hsm_notebook.ui.charts import figures
from hsm_notebook.ui.charts import importance as ranking
from hsm_notebook.ui.charts.axes import GREY
from hsm_notebook.ui.html import BAR_ORDER, STATE_COLORS, state_bar
from hsm_notebook.ui.params_editor import ParamsEditor, parse_objective
from hsm_notebook.ui.results_view import prune_mark
from hsm_notebook.ui.search_form import Settings, build_search, check_search_rows, parse_duration
from hsm_notebook.ui.search_view import Trial, best_trial, varying
from hsm_notebook.ui.status_view import StatusView, progress_sentence
from tests.helpers import until


def _text(value: str) -> str:
    return html.unescape(value)


def _fill(editor: ParamsEditor, rows: list[tuple[str, str, str, str, str]], **settings: str) -> None:
    """Search mode, the rows (name, distribution, low, high, choices), then the settings given."""
    editor.kind.value = "search"
    form = editor.search_form
    while len(form.rows) < len(rows):
        form.add_row()
    for values, fields in zip(rows, form.rows, strict=False):
        name, kind, low, high, choices = fields
        name.value, kind.value, low.value, high.value, choices.value = values
    for key, value in settings.items():
        getattr(form, key).value = value


ROWS = [("lr", "log-float", "1e-4", "0.1", ""), ("layers", "int", "1", "4", ""),
        ("opt", "categorical", "", "", "adam, sgd"), ("epochs", "fixed", "", "", "5")]


# -- the form ---------------------------------------------------------------------------------
def test_the_form_builds_the_search_its_rows_and_settings_describe():
    editor = ParamsEditor()
    _fill(editor, ROWS, sampler="random", pruner="median", n_trials="12", timeout="10m", max_failed="3", seed="7")
    editor.objective_metric.value = "val_loss"
    search = editor.check()
    assert isinstance(search, Search)
    assert search.space == {"lr": Float(1e-4, 0.1, log=True), "layers": Int(1, 4), "opt": Categorical(["adam", "sgd"])}
    assert search.fixed == {"epochs": 5}
    assert search.sampler == {"type": "random"} and search.pruner == {"type": "median"}
    assert (search.n_trials, search.timeout, search.max_failed, search.seed) == (12, 600.0, 3, 7)
    assert editor.objective() == {"val_loss": "min"} and editor.launch_label() == "Launch search of 12 trials"
    assert "a search of lr, layers, opt: 12 trials and at most 10 min, sampler random, pruner median" in \
        _text(editor.count.value)
    # each good row previews what it is; the choices field only shows for categorical and fixed rows
    notes = [_text(n.value) for n in editor.search_form.notes]
    assert "float in [0.0001, 0.1], log scale" in notes[0] and "int in [1, 4]" in notes[1]
    assert "one of 2 values: adam, sgd" in notes[2] and "fixed: 5" in notes[3]
    low, choices = editor.search_form.rows[0][2], editor.search_form.rows[0][4]
    assert low.layout.display == "" and choices.layout.display == "none"
    editor.kind.value = "grid"  # back to today's form: the grid rows are what Launch makes
    assert editor.body.children[0] is editor.rows_box


@pytest.mark.parametrize("row, settings, objective, field, words", [
    (("x", "float", "3", "1", ""), {}, "loss", "low", "low 3 is above high 1; swap them"),
    (("x", "log-float", "0", "1", ""), {}, "loss", "low", "a log scale needs low > 0"),
    (("x", "int", "1.5", "4", ""), {}, "loss", "low", "an int parameter takes whole numbers"),
    (("x", "float", "", "1", ""), {}, "loss", "low", "low is empty"),
    (("x", "float", "0", "big", ""), {}, "loss", "high", "high must be one number"),
    (("x", "categorical", "", "", "a, a"), {}, "loss", "choices", "a choice is given twice"),
    (("x", "fixed", "", "", "1, 2"), {}, "loss", "choices", "a fixed parameter takes one value"),
    (("x", "float", "0", "1", ""), {"n_trials": ""}, "loss", None, "a search needs a budget"),
    (("x", "float", "0", "1", ""), {"n_trials": "many"}, "loss", None, "must be a whole number above 0"),
    (("x", "float", "0", "1", ""), {"timeout": "soon"}, "loss", None, "a number with s, m or h"),
    (("x", "float", "0", "1", ""), {"pruner": "median"}, "loss, latency", None, "pruning needs one metric"),
    (("x", "float", "0", "1", ""), {}, "", None, "a search needs an objective"),
    (("x", "float", "0", "1", ""), {"sampler": "cmaes"}, "loss, latency", None, "CMA-ES takes one objective"),
    (("", "float", "", "", ""), {}, "loss", None, "add at least one parameter to search"),
])
def test_a_bad_search_is_said_in_words_beside_it_under_the_form_and_at_launch(panels, row, settings, objective,
                                                                            field, words):
    panel = SweepPanel(refresh_interval=30)
    panels.append(panel)
    editor = panel.editor
    editor.command.value = "python job.py"
    editor.objective_metric.value = objective
    _fill(editor, [row], **settings)
    if field is not None:  # the field is marked and the problem is said beside its row
        name, _, low, high, choices = editor.search_form.rows[0]
        marked = {"low": low, "high": high, "choices": choices}[field]
        assert "hsm-bad" in marked._dom_classes and "hsm-bad" not in name._dom_classes
        assert words in _text(editor.search_form.notes[0].value)
    assert words in _text(editor.count.value) and "hsm-error" in editor.count.value
    assert panel.launch_button.disabled and panel.launch_button.description == "Launch"
    panel.launch_button.click()  # clicked anyway: the panel's message line says it, in words
    message = _text(panel.message.value)
    assert words in message and "hsm-error" in message and "Traceback" not in message
    assert panel.sweep is None


def test_search_rows_and_durations_are_read_as_pure_functions():
    checks = check_search_rows([("x", "float", "0", "1", ""), ("x", "int", "1", "2", ""), ("", "", "", "", "")])
    assert checks[0].distribution == Float(0.0, 1.0) and "given twice" in (checks[1].error or "") and checks[2].blank
    assert [parse_duration(t) for t in ("600", "90s", "10m", "1.5h", "")] == [600.0, 90.0, 600.0, 5400.0, None]
    search = build_search([("x", "int", "1", "3", "")], Settings(n_trials="", timeout="2h"))
    assert search.space == {"x": Int(1, 3)} and search.n_trials is None and search.timeout == 7200.0


def test_the_objective_takes_several_metrics_and_set_objective_shows_them():
    editor = ParamsEditor()
    # before: set_objective unpacked exactly one metric and raised ValueError on several
    editor.set_objective({"val_loss": "min", "latency": "max"})
    assert editor.objective_metric.value == "val_loss, latency:max" and editor.objective_direction.value == "min"
    assert editor.objective() == {"val_loss": "min", "latency": "max"}
    assert "latency: higher is better" in _text(editor.objective_note.value)
    editor.objective_metric.value = "val_loss, accuracy"  # no direction given: the name's (an accuracy: higher)
    assert editor.objective() == {"val_loss": "min", "accuracy": "max"}
    assert "assumed from its name" in _text(editor.objective_note.value)
    assert parse_objective("acc:min, loss", "max") == {"acc": "min", "loss": "min"}
    for bad, words in (("val acc", "is not one metric name"), ("loss,,acc", "an empty metric"),
                       ("loss:low", "comes min or max"), ("loss, loss", "named twice")):
        editor.objective_metric.value = bad
        assert words in _text(editor.objective_note.value) and "hsm-bad" in editor.objective_metric._dom_classes


# -- the results' data, as pure functions -----------------------------------------------------
def _trials() -> list[Trial]:
    return [Trial(0, "COMPLETE", (3.0,), {"x": 0.3, "k": 1}, 7), Trial(1, "COMPLETE", (1.0,), {"x": 0.1, "k": 2}, 7),
            Trial(2, "PRUNED", (5.0,), {"x": 0.5, "k": 1}, 2), Trial(3, "FAIL", None, {"x": 0.2, "k": 3}, None),
            Trial(4, "COMPLETE", (2.0,), {"x": 0.2, "k": 1}, 7), Trial(5, "RUNNING", None, {"x": 0.9, "k": 2}, 1)]


_STATES = {"COMPLETE": "COMPLETED", "PRUNED": "PRUNED", "FAIL": "FAILED", "RUNNING": "RUNNING"}


def _grid(trials: list[Trial], metric: str = "loss") -> pd.DataFrame:
    """The results view's grid of ``trials`` (a pruned trial's value is not a final metric)."""
    return pd.DataFrame([{"task_id": f"t{t.number}", "trial": t.number, "state": _STATES[t.state], **t.params,
                          metric: t.values[0] if t.values and t.state == "COMPLETE" else None} for t in trials])


def _traces(spec: dict) -> dict[str, dict]:
    return {t["uid"]: t for t in spec["data"]}


def test_the_history_has_one_point_per_ended_trial_and_the_best_so_far_as_steps():
    trials = _trials()
    stopped = {f"t{t.number}": t.values[0] for t in trials if t.state == "PRUNED"}  # the value where it stopped
    traces = _traces(figures.history(_grid(trials), "loss", True, ["x", "k"], by_trial=True, stopped=stopped))
    ended = [t for t in trials if t.finished]
    assert sum(len(traces[f"history-{r}"]["x"]) for r in ("completed", "pruned", "failed")) == len(ended)
    assert list(traces["history-pruned"]["x"]) == [t.number for t in trials if t.state == "PRUNED"]
    assert list(traces["history-pruned"]["y"]) == [5.0]
    assert list(traces["history-failed"]["x"]) == [t.number for t in trials if t.state == "FAIL"]
    assert "pruned" in traces["history-pruned"]["hovertemplate"]
    best = list(zip(traces["history-best"]["x"], traces["history-best"]["y"], strict=True))  # to the last ended
    assert traces["history-best"]["line"]["shape"] == "hv" and best[-1][0] == max(t.number for t in ended)
    assert all(b[1] <= a[1] for a, b in zip(best, best[1:], strict=False))
    assert best_trial(trials, minimize=True)[0].number == min(
        (t for t in trials if t.state == "COMPLETE"), key=lambda t: t.values[0]).number
    grid = _grid(trials, "acc")
    maximize = _traces(figures.history(grid, "acc", False, ["x"], by_trial=True))["history-best"]["y"]
    assert all(b >= a for a, b in zip(maximize, maximize[1:], strict=False))


def test_importances_say_why_not_yet_and_name_what_did_not_vary():
    trials = _trials()
    grid = _grid(trials)
    assert "at least 2 completed tasks with loss; 1 so far" in ranking.problem(grid.iloc[:1], ["x", "k"], "loss")
    same = _grid([Trial(n, "COMPLETE", (float(n),), {"x": 1}, None) for n in range(3)])
    assert "No parameter took more than one value across the 3 completed tasks" in ranking.problem(same, ["x"], "loss")
    assert ranking.problem(grid, ["x", "k"], "loss") is None
    assert varying([t for t in trials if t.state == "COMPLETE"]) == ["x", "k"]
    rows = ranking.rows({"k": 0.2, "x": 0.7, "c": 0.1}, ["x", "k"])
    assert [name for name, _ in rows] == ["x", "k", "c (did not vary)"]


def test_the_pareto_front_is_apart_from_what_it_dominates():
    results = pd.DataFrame({"task_id": ["a", "b", "c", "d"], "loss": [1.0, 2.0, 3.0, 3.0],
                            "latency": [3.0, 1.0, 0.5, 2.0]})
    traces = _traces(figures.pareto(results, {"a", "b", "c"}, {"loss": "min", "latency": "min"}, []))
    dominated, front = traces["pareto-dominated"], traces["pareto-front"]
    assert list(zip(dominated["x"], dominated["y"], strict=True)) == [(3.0, 2.0)] and len(front["x"]) == 3
    assert list(front["x"]) == sorted(front["x"]) and [c[0] for c in front["customdata"]] == ["a", "b", "c"]


def test_a_pruned_curve_is_marked_where_it_stopped():
    points = [(0.0, 5.0), (1.0, 4.0), (2.0, 3.5), (3.0, 3.4)]  # the job logged a step after the prune
    assert prune_mark(points, 2.0) == (2.0, 3.5) and prune_mark(points, None) is None
    curve = figures.Curve("t1", "x=0.5, k=1", "pruned", [p[0] for p in points], [p[1] for p in points], (2.0, 3.5))
    traces = _traces(figures.curves([curve], "loss", True))
    assert traces["curve-t1"]["line"]["color"] == GREY and traces["curve-t1"]["name"] == "x=0.5, k=1"
    assert list(zip(traces["curve-marks"]["x"], traces["curve-marks"]["y"], strict=True)) == [(2.0, 3.5)]


def test_results_of_a_search_before_its_first_trial_are_empty_not_an_error(tmp_path):
    """The status is read before results(): a first trial asked for in between left results() with
    columns that an empty status could not be merged with (ValueError shown in the panel)."""
    from hsm_notebook.ui.results_view import ResultsView

    sweep = Sweep(Search({"x": Float(0.0, 1.0)}, n_trials=2), ["python", "-c", "pass"], objective={"loss": "min"},
                  directory=tmp_path / "s", workdir=tmp_path)

    class FirstTrialInBetween:
        """The sweep as the results view reads it, with a trial asked for between its two reads."""

        objective, param_names = sweep.objective, ["x"]

        def status(self) -> pd.DataFrame:
            return sweep.status()

        def results(self) -> pd.DataFrame:
            return pd.DataFrame(columns=["task_id", "x"])

    grid, final = ResultsView._read_grid(FirstTrialInBetween())
    assert grid.empty and final == []


# -- counts include PRUNED --------------------------------------------------------------------
def test_counts_bars_words_and_the_state_filter_include_pruned():
    assert set(BAR_ORDER) == {s.value for s in JobState} and "PRUNED" in STATE_COLORS
    counts = {"COMPLETED": 3, "PRUNED": 2, "RUNNING": 1}
    assert "5</span> of <span class='hsm-total'>6</span> ended: 3 completed, 2 pruned · 1 running" in \
        progress_sentence(counts)
    assert "data-state='PRUNED' data-count='2'" in state_bar(counts, 6)
    view = StatusView(on_query_change=lambda: None)
    assert "PRUNED" in [value for _, value in view.state_filter.options]


# -- a real search in the panel ---------------------------------------------------------------
def train(x: float, k: int) -> None:
    """A trial: its loss grows with x and k and falls with the steps (a median pruner stops the
    high ones early)."""
    import time

    from hsm_notebook import log_metrics

    for step in range(8):
        log_metrics(step=step, loss=10 * x + k + 1 / (step + 1))
        time.sleep(0.15)


def test_a_real_search_is_shown_with_its_history_pruned_curves_importances_and_counts(workdir, panels, sweeps):
    search = Search({"x": Float(0.0, 1.0), "k": Int(1, 3)}, n_trials=8, sampler="random", seed=3,
                    pruner={"type": "median", "n_startup_trials": 2})
    sweep = Sweep(search, train, [LocalComputeSource(max_parallel_jobs=3)], objective={"loss": "min"},
                  workdir=workdir, poll_interval=0.1)
    panel = SweepPanel(sweep, refresh_interval=0.1)
    panels.append(panel)
    panel.tabs.selected_index = 4
    sweeps.append(sweep.start())
    sweep.wait(timeout=120)
    counts = sweep.counts()
    ended = sum(counts.values())
    assert ended == 8 and counts.get("PRUNED", 0) >= 1, counts  # the median pruner stopped something
    view = panel.search_view
    results = panel.results_view
    results.view.value = "over time"  # the history by trial, the best so far

    def points() -> dict[str, int]:
        traces = {t["uid"]: t for t in results.chart.traces}
        return {role: len(traces[f"history-{role}"]["x"]) if f"history-{role}" in traces else 0
                for role in ("completed", "pruned", "failed", "best")}

    # the study is told of each end just after the ledger records it: the view catches up by itself
    until(lambda: sum(v for k, v in points().items() if k != "best") == ended, 30,
          "one point per ended trial in the history")
    marks = points()
    assert marks["pruned"] == counts["PRUNED"] and marks["completed"] == counts.get("COMPLETED", 0)
    assert marks["best"] >= 1 and results.chart.layout["xaxis"]["title"]["text"] == "trial"
    summary = _text(view.summary.value)
    assert f"{counts['PRUNED']} pruned" in summary and "best loss" in summary

    # curves: the pruned ones grey, each marked where it was stopped
    def pruned_curves() -> tuple[int, int]:
        traces = results.curves.traces
        marks = next((len(t["x"]) for t in traces if t["uid"] == "curve-marks"), 0)
        return sum(1 for t in traces if t.get("legendgroup") == "pruned"), marks

    until(lambda: pruned_curves()[0] >= 1 and pruned_curves()[0] == pruned_curves()[1], 30,
          "pruned curves, each marked where it stopped")
    # importances: every parameter that varied among the completed trials is ranked (the search's study)
    results.view.value = "importance"
    completed = [t for t in view.trials if t.state == "COMPLETE"]
    until(lambda: results.importance_runs >= 1 and {n for n, _ in results.importances} >= set(varying(completed)),
          60, "importances of every varying parameter")
    assert set(varying(completed)) == {"x", "k"} and all(0 <= v <= 1 for _, v in results.importances)
    until(lambda: results.chart.traces and results.chart.traces[0]["uid"] == "importance", 30, "the bars drawn")
    assert set(results.chart.traces[0]["y"]) >= set(varying(completed))
    assert "the search's study" in results.chart.layout["title"]["text"]
    # status: the words, the bar and the filter count PRUNED; the table shows each task's trial
    status = panel.status_view
    until(lambda: "pruned" in status.summary.value, 30, "the status summary")
    assert f"{ended}</span> of <span class='hsm-total'>{ended}</span> ended" in status.summary.value
    assert f"{counts['PRUNED']} pruned" in status.summary.value and "data-state='PRUNED'" in status.bar.value
    assert list(status.rows.columns[:2]) == ["task_id", "trial"]
    numbers = sweep.status().set_index("task_id")["trial"]
    assert all(numbers[tid] == n for tid, n in zip(status.rows["task_id"], status.rows["trial"], strict=False))
    status.state_filter.value = "PRUNED"
    assert len(status.rows) == counts["PRUNED"] and set(status.rows["state"]) == {"PRUNED"}
    assert f"{counts['PRUNED']} pruned" in panel.summary()
    assert panel.launch_button.disabled  # the search is over: nothing to launch or resume
    editor = panel.editor  # Parameters show the search as recorded, read-only, without a problem
    assert editor.kind.value == "search" and "pruner:" in editor.yaml.value and "hsm-error" not in editor.count.value
    assert not math.isnan(best_trial(view.trials, minimize=True)[1])


def test_launch_from_the_form_makes_a_search(workdir, panels, monkeypatch):
    monkeypatch.setattr("hsm_notebook.ui.panel._user_namespace", lambda: {"train": train})
    panel = SweepPanel(sources=[LocalComputeSource(max_parallel_jobs=2)], refresh_interval=0.1)
    panels.append(panel)
    editor = panel.editor
    editor.command.value = "train"
    editor.workdir.value = str(workdir)
    editor.objective_metric.value = "loss"
    _fill(editor, [("x", "float", "0", "1", ""), ("k", "int", "1", "3", "")], n_trials="3")
    assert not panel.launch_button.disabled and panel.launch_button.description == "Launch search of 3 trials"
    panel.launch_button.click()
    assert panel.sweep is not None and "Launched a search of x, k: 3 trials" in _text(panel.message.value)
    sweep = panel.sweep
    assert sweep.search is not None and sweep.search.space == {"x": Float(0.0, 1.0), "k": Int(1, 3)}
    assert sweep.objectives == {"loss": "min"}
    sweep.wait(timeout=120)
    assert sum(sweep.counts().values()) == 3
    assert editor.kind.value == "search" and "n_trials: 3" in editor.yaml.value and editor.yaml.disabled
    assert "hsm-error" not in editor.count.value and "hsm-error" not in editor.objective_note.value
