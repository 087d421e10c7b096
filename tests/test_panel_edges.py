"""Issue 19, the panel's edges (items 18 and 20), with widgets driven in Python: ranges typed as
in numpy, and a Results view that never calls a task "best" in a direction nobody chose."""

from __future__ import annotations

import html
import re
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hsm_notebook import LocalComputeSource
from hsm_notebook.core.model.errors import ConfigError
from hsm_notebook.ui.panel import SweepPanel
from hsm_notebook.ui.params_editor import ParamsEditor
from hsm_notebook.ui.values import parse_values
from tests.helpers import until


def _text(markup: str) -> str:
    """What a person reads: tags dropped, entities decoded."""
    return html.unescape(re.sub(r"<[^>]+>", "", markup))


# -- item 18: linspace, logspace, range, arange --------------------------------------------------
@pytest.mark.parametrize("text, expected", [
    ("linspace(0, 1, 5)", np.linspace(0, 1, 5).tolist()),
    ("linspace(0,1,5)", [0.0, 0.25, 0.5, 0.75, 1.0]),
    ("np.linspace(0, 1, 11)", np.linspace(0, 1, 11).tolist()),
    ("numpy.linspace(1, 0, 3)", [1.0, 0.5, 0.0]),
    ("linspace(0, 1, 4, endpoint=False)", [0.0, 0.25, 0.5, 0.75]),
    ("linspace(-1e-3, 1e-3, num=3)", [-0.001, 0.0, 0.001]),
    ("linspace(2, 3)", np.linspace(2, 3).tolist()),  # numpy's default num: 50
    ("linspace(5, 5, 1)", [5.0]),
    ("logspace(-5, -1, 5)", np.logspace(-5, -1, 5).tolist()),
    ("logspace(0, 3, 4, base=2)", [1.0, 2.0, 4.0, 8.0]),
    ("range(1, 4)", [1, 2, 3]),
    ("range(3)", [0, 1, 2]),
    ("range(10, 0, -4)", [10, 6, 2]),
    ("arange(3)", [0, 1, 2]),
    ("arange(0, 1, 0.25)", [0.0, 0.25, 0.5, 0.75]),
    ("np.arange(1, 10, 3)", [1, 4, 7]),
    ("arange(0.5, 2)", [0.5, 1.5]),
    ("'linspace(0, 1, 5)'", ["linspace(0, 1, 5)"]),  # quoted: the text itself
    ("0.1, 0.01", [0.1, 0.01]),
])
def test_ranges_typed_as_in_numpy_give_numpys_values_as_python_numbers(text: str, expected: list[Any]) -> None:
    values = parse_values(text, "lr")
    assert values == expected
    assert [type(v) for v in values] == [type(v) for v in expected]
    assert all(type(v) in (int, float, str) for v in values)  # Python numbers, not numpy scalars


@pytest.mark.parametrize("text, words", [
    ("linspace(0, 1, 0)", "num must be a whole number of at least 1"),
    ("linspace(0, 1, -2)", "num must be a whole number of at least 1"),
    ("linspace(0, 1, 2.5)", "num must be a whole number of at least 1"),
    ("linspace(0, 1, 5", "'(' at character 9 is never closed"),
    ("linspace(a, 1, 5)", "not a valid linspace: write linspace(start, stop, num)"),
    ("linspace(0, 1, 5), 7", "alone in the field"),
    ("7, linspace(0, 1, 5)", "alone in the field"),
    ("linspace(0, 1, 5, dtype=int)", "dtype"),
    ("linspace(0, 1, 10**9)", "at most 100,000"),
    ("logspace(0, 400, 3)", "too large"),
    ("linspce(0, 1, 5)", "quote it"),
    ("range(0, 1.5)", "the stop must be a whole number, got 1.5; for fractional steps write arange"),
    ("range(1, 4", "'(' at character 6 is never closed; add ')'"),
    ("range(0, 10, 0)", "step cannot be 0"),
    ("range(0, stop=3)", "range takes no keywords"),
    ("linspace(0, 0, 3)", "more than once"),
    ("range(5, 1)", "is empty"),
    ("arange(0, 1, 0)", "step cannot be 0"),
    ("arange(3, 1)", "is empty: it gives no values"),
    ("arange(0, 1e9, 1)", "at most 100,000"),
])
def test_ranges_that_numpy_would_refuse_or_that_are_typos_are_refused_with_the_reason(text: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_values(text, "lr")
    assert words in str(info.value)
    assert str(info.value).startswith("lr: ")


def test_a_linspace_row_previews_its_numbers_and_a_bad_one_is_refused_beside_the_field() -> None:
    editor = ParamsEditor()
    name, values, _ = editor.rows[0]
    name.value, values.value = "lr", "linspace(0, 1, 5)"
    assert "5 values: 0.0, 0.25, 0.5, 0.75, 1.0" in _text(editor.notes[0].value)
    assert editor.task_count() == 5
    assert [combo["lr"] for combo in editor.space()] == [0.0, 0.25, 0.5, 0.75, 1.0]
    values.value = "linspace(0, 1)x"
    assert "hsm-bad" in values._dom_classes and "hsm-error" in editor.notes[0].value
    assert editor.task_count() is None


# -- item 20: the form's objective, and no "best" in a direction nobody chose -----------------------
ACC_JOB = textwrap.dedent("""
    import sys
    from hsm_notebook.metrics import log_metrics
    x = int(sys.argv[1].split("=")[1])
    log_metrics(val_acc=x / 10)
""")


def _form_sweep(tmp_path: Path, panels: list, objective: tuple[str, str] | None) -> SweepPanel:
    """A sweep of val_acc = x / 10 for x in 1..5, launched from the ``SweepPanel()`` form."""
    (tmp_path / "acc.py").write_text(ACC_JOB)
    panel = SweepPanel(sources=[LocalComputeSource(max_parallel_jobs=3)], refresh_interval=0.1,
                       directory=tmp_path / "s")
    panels.append(panel)
    editor = panel.editor
    editor.command.value = "python acc.py"
    editor.workdir.value = str(tmp_path)
    editor.rows[0][0].value, editor.rows[0][1].value = "x", "range(1, 6)"
    if objective is not None:
        editor.objective_metric.value = objective[0]
        editor.objective_direction.value = objective[1]
    panel.launch_button.click()
    assert panel.sweep is not None, panel.message.value
    panel.sweep.wait(timeout=60)
    until(lambda: panel.sweep.counts().get("COMPLETED") == 5, 60, "five tasks completed")
    panel.tabs.selected_index = 4
    panel.refresh(True)
    return panel


def _first_row_acc(panel: SweepPanel) -> str:
    """val_acc of the results grid's first row (the one shown as best)."""
    view = panel.results_view
    columns = re.findall(r"<div class='hsm-cell hsm-th'>([^<]*)</div>", view.head.value)
    return re.findall(r"<div[^>]*>(.*?)</div>", view.rows[0].value)[columns.index("val_acc")]


def test_the_launch_form_has_an_objective_and_results_rank_by_it(tmp_path: Path, panels: list) -> None:
    panel = _form_sweep(tmp_path, panels, ("val_acc", "max"))
    assert panel.sweep.objective == ("val_acc", False)
    view = panel.results_view
    until(lambda: view.metric.value == "val_acc" and _first_row_acc(panel) == "0.5", 30, "the best (0.5) first")
    assert view.direction.value is False
    assert "higher is better" in _text(view.note.value) and "objective" in _text(view.note.value)
    assert "assum" not in _text(view.note.value)


def test_a_form_objective_that_is_not_a_metric_name_is_refused_beside_it() -> None:
    editor = ParamsEditor()
    editor.rows[0][0].value, editor.rows[0][1].value = "x", "1, 2"
    editor.objective_metric.value = "val acc"
    assert "hsm-bad" in editor.objective_metric._dom_classes and editor.task_count() is None
    editor.objective_metric.value = "val_acc"
    assert editor.objective() == {"val_acc": "max"}  # an accuracy: higher is better, until the user says
    editor.objective_direction.value = "min"
    editor.objective_metric.value = "val_accuracy"
    assert editor.objective() == {"val_accuracy": "min"}  # the user's choice stays
    editor.objective_metric.value = ""
    assert editor.objective() is None and editor.task_count() == 2


def test_without_an_objective_results_say_which_direction_they_assumed_and_let_it_be_flipped(
        tmp_path: Path, panels: list) -> None:
    panel = _form_sweep(tmp_path, panels, None)
    assert panel.sweep.objective is None
    view = panel.results_view
    until(lambda: view.metric.value == "val_acc", 30, "val_acc shown")
    note = _text(view.note.value)
    # never "the three worst are the best" without a word: the direction is named as assumed
    assert "assumed" in note and "no objective" in note, note
    assert view.direction.value is False and "higher is better" in note  # an accuracy: higher is better
    until(lambda: "higher is better: assumed" in view.chart.layout["title"]["text"], 30,
          "the best-so-far chart says it")
    until(lambda: _first_row_acc(panel) == "0.5", 30, "the highest first")
    view.direction.value = True  # the user flips it
    until(lambda: _first_row_acc(panel) == "0.1", 30, "the lowest first once flipped")
    note = _text(view.note.value)
    assert "lower is better" in note and "assumed" not in note and "your choice" in note


# -- item 19: an opener belongs to its row --------------------------------------------------------
def test_each_opener_sits_in_its_rows_grid_row_and_opens_that_rows_task(tmp_path: Path, panels: list) -> None:
    panel = _form_sweep(tmp_path, panels, ("val_acc", "max"))
    view = panel.results_view
    until(lambda: len(view.rows) == 5, 30, "five rows")
    children = view.table.children
    assert children[0] is view.head and len(children) == 1 + 2 * len(view.rows)
    for i, (opener, row) in enumerate(zip(view.openers, view.rows, strict=True)):
        assert children[1 + 2 * i] is opener and children[2 + 2 * i] is row  # the row's cells follow its opener
        task = view._page_ids[i]
        assert f">{task}<" in row.value and task in opener.tooltip
        opener.click()
        assert panel.detail_view.task.value == task and panel.tabs.selected_index == 3
        panel.tabs.selected_index = 4
    columns = view.head.value.count("hsm-th") - 1  # the corner cell is the openers' column
    assert view.table.layout.grid_template_columns == f"28px repeat({columns}, auto)"
    assert all(row.value.count("hsm-cell") == columns for row in view.rows)
