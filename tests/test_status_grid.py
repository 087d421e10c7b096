"""Issue 22, item 4 and part of 6: the Status tab's task grid reads at a glance.  One header row
whose cells sort (a click; again to reverse) with no separate "Sort by" control, filters by state
and by parameter value, each row's opener inside its row, each running task's latest step and
objective value, the sweep folder shown short with the full path on hover, and a Sources "Add"
form that reads as a new source, not as an editor of the row above it."""

from __future__ import annotations

import html
import re
import sys
from pathlib import Path
from typing import Any

import ipywidgets as w
import pandas as pd
import pytest

from hsm_notebook import JobOutcome, JobState, ParameterSpace, Sweep
from hsm_notebook.core.ledger import steps
from hsm_notebook.core.model.errors import ConfigError
from hsm_notebook.ui.html import path_html, short_path
from hsm_notebook.ui.panel import SweepPanel
from hsm_notebook.ui.status_view import TaskGrid, parse_filter
from tests.helpers import until


def _text(markup: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", markup))


def ledger_sweep(root: Path, grid: dict[str, list[Any]], plan: dict[int, tuple[str, dict | None]],
                 curves: dict[int, list[tuple[float, str, float]]] | None = None, **kwargs: Any) -> Sweep:
    """A sweep whose ledger is written by hand, no job run: task ``i`` of the space ends as
    ``plan[i] = (state, final metrics)`` (RUNNING stays running; tasks not in the plan stay
    PENDING), with ``curves[i]`` = ``[(step, metric, value), ...]`` in its steps."""
    space = ParameterSpace(grid=grid)
    root.mkdir(parents=True, exist_ok=True)
    sweep = Sweep(space, [sys.executable, "-c", "pass"], directory=root / "sweep", workdir=root, **kwargs)
    store = sweep.store
    with store.transaction() as conn:
        for i, (tid, _) in enumerate(space.with_ids()):
            if i not in plan:
                continue
            state, metrics = plan[i]
            attempt, _ = store.begin_attempt(tid, "local")
            store.set_state(tid, attempt, JobState.RUNNING, job_id=f"j{i}")
            rows = (curves or {}).get(i, [])
            steps.insert(conn, tid, attempt, [(1, step, metric, value, 1.7e9 + step) for step, metric, value in rows])
            if state != "RUNNING":
                store.finish(tid, attempt, JobOutcome(JobState(state), 0 if state == "COMPLETED" else 1,
                                                      None if state == "COMPLETED" else "boom", metrics))
    store.close()
    return sweep


# -- the filter typed above the grid ------------------------------------------------------------
@pytest.mark.parametrize("text, expected", [
    ("lr<1e-3", [("lr", "<", 0.001)]),
    ("opt=adam, lr >= 0.01", [("opt", "=", "adam"), ("lr", ">=", 0.01)]),
    ("opt == 'a, b'", [("opt", "=", "a, b")]),
    ("x!=3", [("x", "!=", 3)]),
    ("flag=true", [("flag", "=", True)]),
    ("  ", []),
])
def test_a_filter_is_read_as_conditions(text: str, expected: list) -> None:
    assert parse_filter(text) == expected


@pytest.mark.parametrize("text, words", [
    ("lr", "is not a condition"),
    ("lr<", "is not a condition"),
    ("depth=3", "no column 'depth'; filter on one of lr, opt"),
    ("lr=1, 2", "is not a condition"),
])
def test_a_filter_that_cannot_be_read_says_why(text: str, words: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(words)) as caught:
        parse_filter(text, ["lr", "opt"])
    assert caught.value.field == "filter"


# -- the grid widget ----------------------------------------------------------------------------
def test_the_grid_has_one_header_row_whose_cells_sort_and_openers_inside_their_rows() -> None:
    asked: list[tuple[str, bool]] = []
    opened: list[str] = []
    grid = TaskGrid(on_sort=lambda c, a: asked.append((c, a)), on_open=opened.append)
    page = pd.DataFrame({"task_id": ["a1", "b2", "c3"], "state": ["COMPLETED", "FAILED", "RUNNING"],
                         "lr": [0.1, 0.01, 0.001], "error": [None, "x" * 500, None]})
    grid.show(page)
    children = grid.widget.children
    # the header: a corner above the openers, then one button per column, in the same grid
    assert children[0] is grid.corner and list(children[1:5]) == grid.headers
    assert [b.description for b in grid.headers] == ["task_id", "state", "lr", "error"]
    assert grid.widget.layout.grid_template_columns == "28px repeat(4, auto)"
    # then per row: its opener, then its cells
    for i, (opener, row) in enumerate(zip(grid.openers, grid.rows, strict=True)):
        assert children[5 + 2 * i] is opener and children[6 + 2 * i] is row
        assert row.value.count("hsm-cell") == 4 and f">{page['task_id'][i]}<" in row.value
    grid.openers[1].click()
    assert opened == ["b2"]
    grid.headers[2].click()  # lr
    grid.headers[2].click()  # lr again: the other way
    assert asked == [("lr", True), ("lr", False)]
    assert grid.headers[2].description == "lr ▼" and "click to turn round" in grid.headers[2].tooltip
    grid.headers[1].click()
    assert asked[-1] == ("state", True) and grid.headers[1].description == "state ▲"
    assert grid.headers[2].description == "lr"
    # a shorter page: the extra openers and rows are gone, not left behind
    grid.show(page.iloc[:1])
    assert len(grid.openers) == len(grid.rows) == 1 and len(grid.widget.children) == 1 + 4 + 2


def test_the_status_tab_has_no_separate_sort_control(tmp_path: Path, panels: list) -> None:
    sweep = ledger_sweep(tmp_path, {"lr": [0.1, 0.01]}, {0: ("COMPLETED", {"loss": 1.0})})
    panel = SweepPanel(sweep, refresh_interval=3600)
    panels.append(panel)

    def described(widget: Any) -> list[str]:
        out = [getattr(widget, "description", "") or ""]
        for child in getattr(widget, "children", ()):
            out += described(child)
        return out

    labels = described(panel.status_view.widget)
    assert not any(label.startswith("Sort") or label == "desc" for label in labels), labels
    assert not any(isinstance(c, w.Dropdown) and c.description.startswith("Sort")
                   for c in panel.status_view.widget.children)


# -- the grid on a sweep --------------------------------------------------------------------------
def test_running_tasks_show_their_latest_step_and_objective_value(tmp_path: Path, panels: list) -> None:
    sweep = ledger_sweep(
        tmp_path, {"lr": [0.1, 0.01, 0.001], "opt": ["sgd", "adam"]},
        {0: ("COMPLETED", {"val_acc": 0.9}), 1: ("RUNNING", None), 2: ("RUNNING", None), 3: ("FAILED", None)},
        curves={0: [(0, "val_acc", 0.5), (1, "val_acc", 0.8)],
                1: [(0, "val_acc", 0.4), (1, "val_acc", 0.6), (2, "val_acc", 0.7), (2, "loss", 0.3)],
                2: [(0, "loss", 1.0)]},
        objective={"val_acc": "max"})
    panel = SweepPanel(sweep, refresh_interval=3600)
    panels.append(panel)
    view = panel.status_view
    rows = view.rows.set_index("task_id")
    ids = list(sweep.status()["task_id"])
    assert list(view.rows.columns[:6]) == ["task_id", "source", "state", "lr", "opt", "step"]
    assert str(rows["step"].dtype) == "Int64"  # logged as whole numbers: shown as such, not 2.0
    assert rows.loc[ids[1], "step"] == 2 and rows.loc[ids[1], "val_acc"] == 0.7  # running: its latest
    assert rows.loc[ids[0], "val_acc"] == 0.9  # completed: its final value
    assert rows.loc[ids[2], "step"] == 0 and pd.isna(rows.loc[ids[2], "val_acc"])  # no val_acc logged yet
    row = view.grid.rows[1].value
    assert ">2<" in row and ">0.7<" in row
    # the best first: a click on the objective's header, twice for highest first
    header = view.grid.headers[view.grid.columns.index("val_acc")]
    header.click()
    header.click()
    assert list(view.rows["val_acc"].dropna()) == [0.9, 0.7] and view.rows["state"].iloc[-1] in ("PENDING", "FAILED")
    # more steps come in: the next refresh shows them
    with sweep.store.transaction() as conn:
        steps.insert(conn, ids[1], 1, [(1, 3, "val_acc", 0.95, 1.7e9)])
    sweep.store.close()
    panel.refresh()
    assert view.rows.set_index("task_id").loc[ids[1], "val_acc"] == 0.95
    assert list(view.rows["task_id"][:2]) == [ids[1], ids[0]]  # still sorted by the value, now 0.95 first


def test_filters_by_state_and_by_parameter_value(tmp_path: Path, panels: list) -> None:
    sweep = ledger_sweep(tmp_path, {"lr": [0.1, 0.01, 0.001], "opt": ["sgd", "adam"]},
                         {i: ("COMPLETED", {"loss": i / 10}) for i in range(5)}, objective={"loss": "min"})
    panel = SweepPanel(sweep, refresh_interval=3600)
    panels.append(panel)
    view = panel.status_view
    view.where.value = "opt=adam"
    assert sorted(view.rows["opt"]) == ["adam"] * 3 and "3 tasks" in view.page_label.value
    view.where.value = "opt=adam, lr<0.05"
    assert sorted(view.rows["lr"]) == [0.001, 0.01]
    view.where.value = "loss>=0.3"  # the shown metric is a column too
    assert sorted(view.rows["loss"]) == [0.3, 0.4]
    view.state_filter.value = "PENDING"
    view.where.value = "opt=adam"
    assert list(view.rows["state"]) == ["PENDING"] and list(view.rows["opt"]) == ["adam"]
    # a filter that cannot be read: said in the message line, the field marked, the grid unfiltered
    view.where.value = "depth=3"
    assert "no column 'depth'" in _text(panel.message.value) and "hsm-bad" in view.where._dom_classes
    assert list(view.rows["state"]) == ["PENDING"]
    view.where.value = ""
    assert "hsm-bad" not in view.where._dom_classes


def test_an_opener_in_the_status_grid_opens_its_task_in_job_detail(tmp_path: Path, panels: list) -> None:
    sweep = ledger_sweep(tmp_path, {"x": [1, 2, 3]}, {0: ("COMPLETED", {"loss": 1}), 1: ("FAILED", None)})
    panel = SweepPanel(sweep, refresh_interval=3600)
    panels.append(panel)
    grid = panel.status_view.grid
    second = grid.task_ids[1]
    assert second in grid.openers[1].tooltip and f">{second}<" in grid.rows[1].value
    grid.openers[1].click()
    assert panel.tabs.selected_index == 3 and panel.detail_view.task.value == second
    assert "boom" in panel.detail_view.body.value


def test_sorting_by_any_column_and_by_an_unknown_one(tmp_path: Path) -> None:
    sweep = ledger_sweep(tmp_path, {"x": [3, 1, 2]}, {0: ("FAILED", None), 1: ("COMPLETED", {"loss": 2.0}),
                                                      2: ("COMPLETED", {"loss": 1.0})}, objective={"loss": "min"})
    by_loss, _ = sweep.page(sort="loss")
    assert list(by_loss["x"]) == [2, 1, 3]  # no value last
    by_loss, _ = sweep.page(sort="loss", ascending=False)
    assert list(by_loss["x"]) == [1, 2, 3]  # no value last either way
    assert list(sweep.page(sort="x", ascending=False)[0]["x"]) == [3, 2, 1]
    assert list(sweep.page(sort="error")[0]["x"]) == [3, 1, 2]
    with pytest.raises(ConfigError, match="no column 'depth' to sort by; one of task_id"):
        sweep.page(sort="depth")
    with pytest.raises(ConfigError, match="is not a condition"):
        sweep.page(where=[("x", "~", 1)])


# -- the header -------------------------------------------------------------------------------------
def test_the_sweep_folder_is_shown_short_with_the_full_path_on_hover(tmp_path: Path, monkeypatch, panels) -> None:
    assert short_path(tmp_path / "sweeps" / "a", cwd=tmp_path) == "sweeps/a"
    assert short_path("/tmp/pytest-of-root/pytest-7/test_x0/sweeps/lr-scan-1f2e", cwd="/home/u/project") == \
        "…/sweeps/lr-scan-1f2e"
    assert short_path(Path.home() / "runs" / "s", cwd="/srv") == "~/runs/s"
    assert "title='/srv/a/b/c'" in path_html("/srv/a/b/c", cwd="/")
    monkeypatch.chdir(tmp_path)
    sweep = ledger_sweep(tmp_path, {"x": [1]}, {})
    panel = SweepPanel(sweep, refresh_interval=3600)
    panels.append(panel)
    assert "<code class='hsm-path' title='" + str(sweep.directory) + "'>sweep</code>" in panel.header.value


# -- the Sources form ------------------------------------------------------------------------------
def test_the_add_form_is_a_new_source_not_an_editor_of_the_row_above(panels: list) -> None:
    panel = SweepPanel(refresh_interval=3600)
    panels.append(panel)
    view = panel.sources_view
    assert [s.name for s in view.sources] == ["local"]
    assert view.add_form.layout.display == "none" and view.open_add.description == "Add a source…"
    view.open_add.value = True
    assert view.add_form.layout.display == "" and "New source" in view.add_form.children[0].value
    assert view.form.name.value == "local-2"  # a free name, not the listed source's
    view.add_button.click()
    assert [s.name for s in view.sources] == ["local", "local-2"]
    assert view.add_form.layout.display == "none" and view.form.name.value == "local-3"


def test_a_running_job_shows_its_step_and_value_in_the_grid(workdir: Path, panels: list) -> None:
    """A real job: its step and value appear in the Status grid while it runs."""
    (workdir / "slow.py").write_text(
        "import time\nfrom hsm_notebook.metrics import log_metrics\n"
        "for i in range(3):\n    log_metrics(step=i, val_acc=i / 4)\n"
        "time.sleep(30)\n")
    sweep = Sweep(ParameterSpace(grid={"x": [1]}), ["python", "slow.py"], workdir=workdir, poll_interval=0.1,
                  objective={"val_acc": "max"})
    panel = sweep.panel()
    panels.append(panel)
    sweep.start()
    try:
        until(lambda: panel.status_view.rows is not None and not panel.status_view.rows.empty
              and list(panel.status_view.rows["step"].fillna(-1)) == [2], 60, "the running task's step 2 in the grid")
        assert panel.status_view.rows["val_acc"].iloc[0] == 0.5 and panel.status_view.rows["state"].iloc[0] == "RUNNING"
    finally:
        sweep.cancel()
        sweep.wait(timeout=30)
