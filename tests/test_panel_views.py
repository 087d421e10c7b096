"""The panel as a daily results tool: honest progress, a steady time left, per-source bars
against the whole sweep, empty cells that stay empty, and parameter rows that refuse bad
input beside the field.  Sweeps are real (jobs on this machine) wherever one is needed."""

from __future__ import annotations

import html
import itertools
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import hsm_notebook
from hsm_notebook import LocalComputeSource, ParameterSpace, Sweep
from hsm_notebook.ui.detail_view import DetailView
from hsm_notebook.ui.html import CSS, table
from hsm_notebook.ui.params_editor import ParamsEditor
from hsm_notebook.ui.status_view import StatusView
from tests.helpers import until

_SEGMENT = re.compile(r"data-state='(\w+)' data-count='(\d+)'[^>]*flex:0 0 ([\d.]+)%")


def _text(markup: str) -> str:
    """What a person reads: tags dropped, entities decoded."""
    return html.unescape(re.sub(r"<[^>]+>", "", markup.replace("<br>", "\n")))


def _segments(markup: str) -> dict[str, tuple[int, float]]:
    """``{state: (count, width %)}`` of the first state bar in ``markup``."""
    bar = markup.split("</div></div>")[0]
    return {s: (int(n), float(pct)) for s, n, pct in _SEGMENT.findall(bar)}


def _view(sweep) -> StatusView:
    view = StatusView(on_query_change=lambda: None)
    view.set_choices([s.name for s in sweep.sources], list(sweep.param_names))
    view.show(sweep)
    return view


def _no_empty_words(markup: str) -> None:
    for word in ("nan", "NaT", "<NA>", "None"):
        assert f">{word}<" not in markup and f">{html.escape(word)}<" not in markup, f"{word!r} in {markup}"


# -- progress -------------------------------------------------------------------------------------
def test_progress_says_how_tasks_ended_and_never_calls_cancelled_work_done(workdir, sweeps, panels):
    space = ParameterSpace(combinations=[{"x": 1}, {"x": 2, "exit": 3}, {"x": 3, "sleep": 30},
                                         {"x": 4, "sleep": 30}, {"x": 5, "sleep": 30}])
    sweep = Sweep(space, ["python", "job.py"], [LocalComputeSource(max_parallel_jobs=2)], workdir=workdir,
                  poll_interval=0.1)
    sweeps.append(sweep)
    sweep.start()
    until(lambda: sweep.counts() == {"COMPLETED": 1, "FAILED": 1, "RUNNING": 2, "PENDING": 1}, 60, "2 ended, 2 running")
    view = _view(sweep)
    assert "2 of 5 ended: 1 completed, 1 failed · 2 running · 1 waiting" in _text(view.summary.value)
    assert "once a few tasks have ended" in _text(view.summary.value)  # 2 ended at once: no rate claimed yet
    assert _segments(view.bar.value) == {"COMPLETED": (1, 20.0), "FAILED": (1, 20.0), "RUNNING": (2, 40.0),
                                         "PENDING": (1, 20.0)}
    _no_empty_words(view.table.value)  # running and pending rows: no exit code, no duration yet

    sweep.cancel()
    sweep.wait(timeout=60)
    assert sweep.counts() == {"COMPLETED": 1, "FAILED": 1, "CANCELLED": 3}
    panel = sweep.panel()
    panels.append(panel)
    summary = _text(panel.status_view.summary.value)
    assert "5 of 5 ended: 1 completed, 1 failed, 3 cancelled" in summary
    assert "done" not in summary and "100%" not in summary and "running" not in summary
    assert _segments(panel.status_view.bar.value) == {"COMPLETED": (1, 20.0), "FAILED": (1, 20.0),
                                                      "CANCELLED": (3, 60.0)}
    assert "left" not in summary  # nothing is running: no time left is claimed
    _no_empty_words(panel.status_view.table.value)


def test_one_failure_in_many_is_one_red_segment_not_a_red_bar(workdir):
    space = ParameterSpace(combinations=[{"x": i} for i in range(1, 10)] + [{"x": 10, "exit": 2}])
    sweep = Sweep(space, ["python", "job.py"], workdir=workdir, poll_interval=0.1).run()
    view = _view(sweep)
    assert _segments(view.bar.value) == {"COMPLETED": (9, 90.0), "FAILED": (1, 10.0)}
    assert "10 of 10 ended: 9 completed, 1 failed" in _text(view.summary.value)
    assert "COMPLETED 9" in view.summary.value and "FAILED 1" in view.summary.value  # the legend


# -- time left ------------------------------------------------------------------------------------
def _simulated_completions(tasks: int, slots: int, seed: int = 1) -> list[float]:
    """When each task of a sweep ends: ``slots`` parallel, 8-12 s each, in order."""
    rng = random.Random(seed)
    free = [0.0] * slots
    ends = []
    for _ in range(tasks):
        slot = min(range(slots), key=free.__getitem__)
        free[slot] += rng.uniform(8, 12)
        ends.append(free[slot])
    return sorted(ends)


def test_the_time_left_counts_down_steadily_instead_of_jumping():
    from hsm_notebook.ui.status_view import EtaEstimator

    ends = _simulated_completions(tasks=80, slots=4)
    estimator = EtaEstimator()
    shown, naive = [], []
    t = 0.0
    while t < ends[-1]:
        ended = sum(e <= t for e in ends)
        estimator.observe(t, ended, len(ends) - ended)
        if estimator.eta is not None and ended < len(ends):
            shown.append((t, estimator.eta, ends[-1] - t))
        if ended:
            naive.append(t / ended * (len(ends) - ended))  # what the panel showed before
        t += 1.0
    assert len(shown) > 150
    # Between two refreshes a second apart, the shown time left moves by the second that
    # passed plus at most 5 % (the old estimate jumped by 20-30 % on every refresh).
    for (t0, eta0, _), (t1, eta1, _) in itertools.pairwise(shown):
        expected = max(0.0, eta0 - (t1 - t0))
        assert abs(eta1 - expected) <= 0.05 * eta0 + 0.5, (t1, eta0, eta1)
    jumps = [abs(b - a) / a for a, b in itertools.pairwise(naive) if a > 20]
    assert max(jumps) > 0.05  # the bound above is one the old estimate breaks
    # ... and it is about right: within 25 % of the true time left from a quarter of the way in
    for t1, eta1, truth in shown:
        if t1 > ends[-1] / 4 and truth > 30:
            assert abs(eta1 - truth) <= 0.25 * truth, (t1, eta1, truth)
    assert 19 <= estimator.per_minute <= 29  # 4 slots, 10 s a task: 24 a minute


def test_the_estimator_starts_over_when_tasks_are_queued_again_and_says_when_overdue():
    from hsm_notebook.ui.status_view import EtaEstimator

    estimator = EtaEstimator()
    for t, ended in [(0, 0), (10, 2), (20, 4), (30, 6)]:
        estimator.observe(t, ended, 10 - ended)
    assert estimator.eta == pytest.approx(20, abs=2) and estimator.per_minute == pytest.approx(12)
    estimator.observe(100, 6, 4)  # nothing ended for 70 s: the estimate ran out
    assert estimator.eta == 0 and estimator.idle == 70
    estimator.observe(101, 3, 7)  # retry_failed(): fewer ended than before
    assert estimator.eta is None and estimator.per_minute is None


# -- per-source bars --------------------------------------------------------------------------------
def test_per_source_bars_are_drawn_against_the_whole_sweep(workdir, sweeps):
    sweep = Sweep(ParameterSpace(grid={"x": [1, 2, 3, 4]}, fixed={"sleep": 30}), ["python", "job.py"],
                  [LocalComputeSource("one", 1), LocalComputeSource("two", 1)], workdir=workdir, poll_interval=0.1)
    sweeps.append(sweep)
    sweep.start()
    until(lambda: sweep.counts() == {"RUNNING": 2, "PENDING": 2}, 60, "one task running on each source")
    view = _view(sweep)
    rows = re.findall(r"<tr class='hsm-source-row' data-source='([^']+)'>(.*?)</tr>", view.per_source.value)
    assert [name for name, _ in rows] == ["one", "two", "(no source yet)"]
    by_name = dict(rows)
    for name in ("one", "two"):
        assert _segments(by_name[name]) == {"RUNNING": (1, 25.0)}  # 1 of 4 fills a quarter
        assert "1 of 4 tasks" in _text(by_name[name])
    assert _segments(by_name["(no source yet)"]) == {"PENDING": (2, 50.0)}
    assert "0 of 4 ended · 2 running · 2 waiting" in _text(view.summary.value)
    _no_empty_words(view.table.value)


# -- empty cells ------------------------------------------------------------------------------------
def test_empty_cells_stay_empty_in_the_history_and_any_table(workdir):
    sweep = Sweep(ParameterSpace(grid={"x": [1]}, fixed={"exit": 3}), ["python", "job.py"], workdir=workdir,
                  poll_interval=0.1).run()
    detail = DetailView()
    detail.task.value = sweep.status()["task_id"][0]
    detail.show(sweep)
    assert "data-state='FAILED'" in detail.body.value and "data-state='SUBMITTING'" in detail.body.value
    _no_empty_words(detail.body.value)
    frame = pd.DataFrame({"a": [1.5, float("nan")], "b": pd.array([1, None], dtype="Int64"),
                          "c": [pd.Timestamp("2024-01-01"), pd.NaT], "d": ["x", None]}).convert_dtypes()
    out = table(frame, "t", state_column=None)
    _no_empty_words(out)
    assert "<td>1.5</td>" in out and "<td>x</td>" in out and out.count("<td></td>") == 4


# -- parameter entry --------------------------------------------------------------------------------
@pytest.mark.parametrize("name, text, words", [
    ("lr", "range(1, 4", "'(' at character 6 is never closed; add ')'"),
    ("lr", "range(", "not a complete range"),
    ("lr", "range(a, b)", "not a valid range: write range(stop)"),
    ("lr", "range(0, 10, 0)", "step cannot be 0"),
    ("lr", "range(5, 1)", "is empty"),
    ("lr", "", "no values; type them separated by commas"),
    ("lr", "1,, 2", "value 2 of 3 is empty"),
    ("lr", "(0.1, 0.2", "do not pair up: '(' at character 1 is never closed"),
    ("lr", "[0.1, 0.2)", "closes the '[' at character 1; use ']'"),
    ("lr", "'relu, tanh", "quote ' at character 1 is never closed"),
    ("lr", "1, 2", "given twice"),
    ("", "1, 2", "no parameter name"),
    ("my lr", "1, 2", "contains whitespace"),
])
def test_a_malformed_row_is_refused_beside_its_field(name, text, words):
    editor = ParamsEditor()
    (n0, v0, _), (n1, v1, _) = editor.rows[:2]
    n0.value, v0.value = "lr", "0.1, 0.01"
    n1.value, v1.value = name, text
    bad_field = n1 if words in ("given twice", "no parameter name", "contains whitespace") else v1
    good_field = v1 if bad_field is n1 else n1
    note = html.unescape(editor.notes[1].value)
    assert words in note and "hsm-error" in note
    assert "hsm-bad" in bad_field._dom_classes and "hsm-bad" not in good_field._dom_classes
    assert "hsm-bad" not in v0._dom_classes and "hsm-error" not in editor.notes[0].value
    assert "2 values: 0.1, 0.01" in editor.notes[0].value  # the good row keeps its preview
    assert editor.task_count() is None and editor.launch_label() == "Launch"
    assert "hsm-error" in editor.count.value
    n1.value, v1.value = "x", "range(1, 4)"  # fixed: the mark and the message go away
    assert "hsm-bad" not in bad_field._dom_classes and "hsm-error" not in editor.notes[1].value
    assert "3 values: 1, 2, 3" in editor.notes[1].value
    assert editor.task_count() == 6 and editor.launch_label() == "Launch 6 tasks"


def test_paired_rows_of_unequal_length_and_a_fixed_list_are_marked_on_their_rows():
    editor = ParamsEditor()
    rows = [("seed", "1, 2, 3", "paired A"), ("split", "a, b", "paired A"), ("epochs", "5, 10", "fixed")]
    for (name, text, kind), (n, v, k) in zip(rows, editor.rows, strict=False):  # the editor has a spare row
        n.value, v.value, k.value = name, text, kind
    for i in (0, 1):
        assert "same length" in editor.notes[i].value and "hsm-bad" in editor.rows[i][1]._dom_classes
    assert "takes one value, got 2" in editor.notes[2].value
    editor.rows[1][1].value, editor.rows[2][1].value = "a, b, c", "5"
    assert "3 values: a, b, c" in editor.notes[1].value and "fixed: 5" in editor.notes[2].value
    assert editor.task_count() == 3 and editor.launch_label() == "Launch 3 tasks"
    editor.command.value = "python 'unclosed"  # the command is checked beside it too
    assert "cannot be split" in editor.command_note.value and "hsm-bad" in editor.command._dom_classes
    assert editor.task_count() is None


def test_previews_show_what_the_job_will_get():
    from hsm_notebook.ui.values import preview

    assert preview([0.1, 0.01]) == "2 values: 0.1, 0.01"
    assert preview(list(range(100))) == "100 values: 0, 1, 2, 3, …, 99"
    assert preview([64], "fixed") == "fixed: 64"
    assert preview(["1", True, None, "b c"]) == '4 values: "1", true, null, b c'


# -- the package and the look -------------------------------------------------------------------------
def test_sweep_panel_is_exported_without_importing_widgets_up_front():
    root = Path(hsm_notebook.__file__).resolve().parents[1]
    code = ("import sys, hsm_notebook\n"
            "assert 'ipywidgets' not in sys.modules, 'imported at import hsm_notebook'\n"
            "from hsm_notebook import SweepPanel\n"
            "from hsm_notebook.ui import SweepPanel as same\n"
            "assert SweepPanel is same and 'SweepPanel' in hsm_notebook.__all__\n")
    env = {**os.environ, "PYTHONPATH": str(root)}
    done = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_buttons_are_as_wide_as_their_labels():
    rule = re.search(r"\.hsm-panel \.jupyter-widget-button[^{]*\{([^}]*)\}", CSS)
    assert rule and "width: auto" in rule.group(1) and "min-width" in rule.group(1)
