"""Widget logic in pytest: fill the fields, click the buttons, read what the panel shows."""

from __future__ import annotations

import html
import json

import pytest

from hsm_notebook import LocalComputeSource, ParameterSpace, Sweep
from hsm_notebook.core.model.errors import ConfigError
from hsm_notebook.ui import SweepPanel
from hsm_notebook.ui.magic import open_panel
from hsm_notebook.ui.values import parse_values, rows_to_space
from tests.helpers import until as _until


def _msg(panel):
    return html.unescape(panel.message.value)


def _fill(panel, rows):
    for (name, values, kind), (n, v, k) in zip(rows, panel.editor.rows, strict=False):  # rows may be fewer
        n.value, v.value, k.value = name, values, kind


@pytest.mark.parametrize("text, values", [
    ("0.1, 0.01", [0.1, 0.01]), ("range(1, 4)", [1, 2, 3]), ("range(3)", [0, 1, 2]),
    ("range(0, 10, 5)", [0, 5]), ("[a, 'b c']", ["a", "b c"]), ("64", [64]),
    ("relu, tanh", ["relu", "tanh"]), ("true, null", [True, None]), ("1e-3", [0.001]),
])
def test_values_are_typed_the_quick_way(text, values):
    assert parse_values(text) == values


def test_rows_make_a_space_with_paired_groups_and_fixed_values():
    space = rows_to_space([("lr", "0.1, 0.01", "grid"), ("seed", "1, 2, 3", "paired A"),
                           ("split", "a, b, c", "paired A"), ("epochs", "5", "fixed"), ("", "", "grid")])
    assert len(space) == 6 and space[0] == {"lr": 0.1, "seed": 1, "split": "a", "epochs": 5}


def test_launch_from_the_form_runs_a_real_sweep(workdir, panels, tmp_path):
    panel = SweepPanel(sources=[LocalComputeSource(max_parallel_jobs=3)], refresh_interval=0.1,
                       directory=tmp_path / "s")
    panels.append(panel)
    panel.editor.command.value = "python job.py"
    panel.editor.workdir.value = str(workdir)
    _fill(panel, [("x", "range(1, 6)", "grid"), ("exit", "0, 3", "grid")])
    assert "<b>10</b> combinations" in panel.editor.count.value
    assert not panel.launch_button.disabled and panel.cancel_button.disabled
    panel.launch_button.click()
    assert panel.sweep is not None and "Launched 10 tasks" in _msg(panel)
    panel.launch()  # a double click: nothing more, and no wrong count
    assert "Already running" in _msg(panel) or panel.sweep.done
    panel.sweep.wait(timeout=60)
    _until(lambda: "hsm-done'>10<" in panel.status_view.summary.value and panel.cancel_button.disabled)
    assert panel.status_view.progress.value == 10 and panel.status_view.progress.max == 10
    assert "COMPLETED 5" in panel.status_view.summary.value and "FAILED 5" in panel.status_view.summary.value
    grid = panel.status_view.grid
    assert [r.value.count("data-state='COMPLETED'") > 0 for r in grid.rows].count(True) == 5
    assert not panel.retry_button.disabled and panel.launch_button.disabled and panel.cancel_button.disabled
    # filter by state, sort by a parameter (a click on its header, again for the other way)
    panel.status_view.state_filter.value = "FAILED"
    assert len(grid.rows) == 5 and all("data-state='FAILED'" in r.value for r in grid.rows)
    assert "data-state='COMPLETED'" not in panel.status_view.table.value
    grid.headers[grid.columns.index("x")].click()
    grid.headers[grid.columns.index("x")].click()
    assert list(panel.status_view.rows["x"]) == [5, 4, 3, 2, 1]
    # job detail of a failed task
    failed = panel.status_view.rows["task_id"].iloc[0]
    panel.tabs.selected_index = 3
    panel.detail_view.task.value = failed
    assert "something went wrong in task 5" in panel.detail_view.body.value
    assert "SUBMITTING" in panel.detail_view.body.value and "exit code 3" in panel.detail_view.body.value
    # results and the plot
    panel.tabs.selected_index = 4
    assert len(panel.results_view.rows) == 10  # every task, the completed 5 with metrics
    assert "<b>10</b> tasks, <b>5</b> completed" in panel.results_view.page_label.value
    view = panel.results_view
    x_of = panel.sweep.status().set_index("task_id")["x"]
    next(b for b in view.header.children if b.description.startswith("x")).click()  # a column header
    assert [x_of[t] for t in view._page_ids] == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    next(b for b in view.header.children if b.description.startswith("x")).click()  # again: the other way
    assert view.descending.value and "x ▼" in [b.description for b in view.header.children]
    assert [x_of[t] for t in view._page_ids] == [5, 5, 4, 4, 3, 3, 2, 2, 1, 1]
    view.openers[0].click()  # the first row: x=5
    assert panel.tabs.selected_index == 3 and panel.detail_view.task.value == view._page_ids[0]
    assert panel.results_view.metric.value == "score" and panel.results_view.param.value == "x"
    view.view.value = "slice"  # the metric against each parameter, one point per completed task
    assert [len(t["x"]) for t in view.chart.traces] == [5, 5]  # x and exit, each against the score
    assert view.chart.layout["xaxis"]["title"]["text"] == "x"


def test_cancel_and_retry_buttons(workdir, panels):
    sweep = Sweep(ParameterSpace(grid={"x": list(range(6)), "sleep": [30]}), ["python", "job.py"],
                  [LocalComputeSource(max_parallel_jobs=2)], workdir=workdir, poll_interval=0.1)
    panel = sweep.panel()
    panels.append(panel)
    assert not panel.launch_button.disabled and panel.cancel_button.disabled
    panel.launch_button.click()
    _until(lambda: sweep.counts().get("RUNNING", 0) == 2)
    panel.refresh(True)
    assert not panel.cancel_button.disabled and panel.launch_button.disabled
    panel.cancel_button.click()
    sweep.wait(timeout=60)
    assert sweep.counts() == {"CANCELLED": 6} and "Cancelled" in _msg(panel)
    panel.refresh(True)
    assert not panel.complete_button.disabled and panel.retry_button.disabled


@pytest.mark.parametrize("rows, command, words", [
    ([("lr", "", "grid")], "python job.py", "no values"),
    ([("lr", "[1, 2", "grid")], "python job.py", "not a valid YAML list"),
    ([("lr", "1", "grid"), ("lr", "2", "grid")], "python job.py", "given twice"),
    ([("", "1, 2", "grid")], "python job.py", "no parameter name"),
    ([("a", "1, 2", "paired A"), ("b", "1", "paired A")], "python job.py", "same length"),
    ([("a", "1, 2", "fixed")], "python job.py", "takes one value"),
    ([("a", "1", "grid")], "", "non-empty list"),
    ([("a", "1", "grid")], "python 'unclosed", "cannot be split"),
])
def test_bad_input_is_shown_next_to_the_field_and_launch_is_disabled(workdir, panels, rows, command, words):
    panel = SweepPanel(refresh_interval=0.1)
    panels.append(panel)
    panel.editor.workdir.value = str(workdir)
    panel.editor.command.value = command
    _fill(panel, rows)
    assert words in html.unescape(panel.editor.count.value) and "hsm-error" in panel.editor.count.value
    assert panel.launch_button.disabled
    panel.launch_button.click()  # clicked anyway (click() ignores disabled): reported, not raised
    assert words in _msg(panel) and "hsm-error" in _msg(panel)
    assert panel.sweep is None


def test_errors_at_launch_and_in_sources_are_shown_in_words(workdir, panels, tmp_path):
    panel = SweepPanel(refresh_interval=0.1, directory=tmp_path / "d")
    panels.append(panel)
    panel.editor.workdir.value = str(workdir)
    panel.editor.command.value = "python missing_script.py"
    _fill(panel, [("x", "1, 2", "grid")])
    panel.launch_button.click()
    assert "script 'missing_script.py' not found" in _msg(panel) and panel.sweep is None
    form = panel.sources_view.form
    form.name.value = "local"
    panel.sources_view.add_button.click()
    assert "already in the list" in _msg(panel)
    form.name.value, form.gpus.value = "gpu-box", "0, x"
    panel.sources_view.add_button.click()
    assert "must be GPU numbers" in _msg(panel)
    form.gpus.value = "0, 1"
    panel.sources_view.add_button.click()
    assert [s.name for s in panel.sources_view.sources] == ["local", "gpu-box"]
    panel.check_health()
    _until(lambda: len(panel.sources_view.health) == 2)
    assert panel.sources_view.list_html.value.count("healthy") == 2


def test_a_broken_metrics_file_does_not_break_the_panel(workdir, panels):
    sweep = Sweep(ParameterSpace(grid={"x": [1, 2]}, fixed={"bad_metrics": "true"}), ["python", "job.py"],
                  workdir=workdir, poll_interval=0.1).run()
    panel = sweep.panel()
    panels.append(panel)
    panel.tabs.selected_index = 4
    assert "hsm-error" not in _msg(panel) and "2</b> completed" in panel.results_view.page_label.value
    panel.tabs.selected_index = 3
    panel.detail_view.task.value = "nonexistent"
    assert "no task 'nonexistent'" in html.unescape(panel.detail_view.body.value)


def test_attach_and_the_magic_show_an_existing_sweep(workdir, panels, tmp_path):
    sweep = Sweep(ParameterSpace(grid={"x": [1, 2, 3]}), ["python", "job.py"], workdir=workdir, poll_interval=0.1).run()
    panel = open_panel(str(sweep.directory))
    panels.append(panel)
    assert panel.sweep.id == sweep.id and "hsm-done'>3<" in panel.status_view.summary.value
    assert panel.editor.yaml.disabled and "x:" in panel.editor.yaml.value
    (tmp_path / "s.yaml").write_text("command: [python, job.py]\nsweep:\n  grid:\n    x: [1, 2]\n")
    from_file = open_panel(str(tmp_path / "s.yaml"))
    panels.append(from_file)
    assert "<b>2</b> combinations" in from_file.editor.count.value and from_file.sweep is None
    empty = open_panel("")
    panels.append(empty)
    assert empty.sweep is None and empty.launch_button.disabled
    with pytest.raises(ConfigError):
        open_panel(str(tmp_path / "nope.yaml"))


def test_the_magic_on_a_reference_project_launches_with_the_file_and_project_settings(tmp_path, panels,
                                                                                     monkeypatch):
    """``%hsm sweeps/sweep.yaml`` in a project with ``.hsm/config.yaml``: the command, the
    sources and the environment come from the project; arg_style, env and name from the file."""
    root = tmp_path / "proj"
    (root / ".hsm").mkdir(parents=True)
    (root / "sweeps").mkdir()
    (root / "job.py").write_text("import json, os, sys\n"
                                 "open(os.path.join(os.environ['HSM_TASK_DIR'], 'argv.json'), 'w').write("
                                 "json.dumps([sys.argv[1:], os.environ.get('WANDB_PROJECT'), "
                                 "os.environ.get('MODE')]))\n")
    (root / ".hsm" / "config.yaml").write_text("paths: {train_script: job.py}\nwandb: {project: wp}\n"
                                               "distributed: {enabled: true, local_max_jobs: 3}\n")
    (root / "sweeps" / "sweep.yaml").write_text(
        "name: lr-scan\narg_style: argparse\nenv: {MODE: fast}\nmetadata: {description: scanning lr}\n"
        "sweep:\n  grid:\n    lr: [0.1]\n")
    monkeypatch.chdir(root)
    panel = open_panel("sweeps/sweep.yaml")
    panels.append(panel)
    assert panel.editor.command.value == "python job.py" and panel.editor.workdir.value == str(root)
    assert [(s.name, s.max_parallel_jobs) for s in panel.sources_view.sources] == [("local", 3)]
    assert "scanning lr" in panel.header.value
    panel.launch()
    panel.sweep.wait(timeout=60)
    (job,) = panel.sweep.status()["job_name"]
    argv, wandb_project, mode = json.loads((panel.sweep.directory / "tasks" / job / "argv.json").read_text())
    assert argv == ["--lr=0.1", f"--wandb.group={panel.sweep.id}",
                    f"--output.dir={panel.sweep.directory / 'tasks' / job}"]
    assert (wandb_project, mode) == ("wp", "fast") and panel.sweep.id.startswith("lr-scan-")
    assert panel.sweep.directory.parent == root / "sweeps" / "outputs"


def test_the_load_ext_magic_is_registered():
    from IPython.testing.globalipapp import start_ipython

    ip = start_ipython()
    ip.run_line_magic("load_ext", "hsm_notebook")
    assert "hsm" in ip.magics_manager.magics["line"]


def test_a_source_that_fails_setup_is_reported_in_the_panel(workdir, panels):
    class BrokenSetup(LocalComputeSource):
        async def setup(self, sweep_dir, sweep_id):
            raise RuntimeError("disk not mounted")

    sweep = Sweep(ParameterSpace(grid={"x": [1]}), ["python", "job.py"], [BrokenSetup("broken")], workdir=workdir)
    panel = sweep.panel()
    panels.append(panel)
    panel.launch_button.click()
    _until(lambda: "disk not mounted" in _msg(panel))
    assert "[broken] setup failed: disk not mounted" in _msg(panel)
    assert not panel.launch_button.disabled  # still usable: can try again


def test_a_sweep_stopped_by_a_failure_says_why_in_the_panel(workdir, panels):
    class BrokenPolls(LocalComputeSource):
        async def poll(self, job_ids):
            raise KeyError("job_info")

    sweep = Sweep(ParameterSpace(grid={"x": [1, 2]}), ["python", "job.py"], [BrokenPolls("broken", 1)],
                  workdir=workdir, poll_interval=0.05, max_failures=2)
    panel = sweep.panel()
    panels.append(panel)
    panel.launch_button.click()
    _until(lambda: "no source can take the remaining tasks" in _msg(panel), 60, "the reason in the panel")
    assert "polling failed 2 times in a row: KeyError: 'job_info'" in _msg(panel)
    assert not panel.complete_button.disabled  # still usable: complete() once the source is fixed


def test_the_sources_tab_shows_health_and_drains_a_source(workdir, panels):
    sweep = Sweep(ParameterSpace(grid={"x": list(range(6))}, fixed={"sleep": 0.3}), ["python", "job.py"],
                  [LocalComputeSource("one", 1), LocalComputeSource("two", 1)], workdir=workdir, poll_interval=0.1)
    panel = sweep.panel()
    panels.append(panel)
    panel.launch_button.click()
    panel.tabs.selected_index = 0
    sv = panel.sources_view
    sv.control.value = "two"
    sv.drain_button.click()
    assert "hsm-error" not in panel.message.value
    _until(lambda: "draining" in sv.list_html.value)
    sweep.wait(timeout=60)
    panel.refresh(True)
    assert "hsm-source-stats" in sv.list_html.value and "per_minute" in sv.list_html.value
    assert sweep.counts() == {"COMPLETED": 6}
    sv.control.value = "one"
    sv.disable_button.click()  # the sweep has ended: said in words, not raised
    assert "not running" in _msg(panel)


def test_results_show_live_curves_and_follow_the_objective(workdir, panels):
    """While a job runs its curve is drawn; the best table and the best-so-far line follow the
    declared objective (accuracy: higher is better)."""
    (workdir / "curve.py").write_text(
        "import sys, time\nfrom hsm_notebook.metrics import log_metrics\n"
        "x = int(sys.argv[1].split('=')[1])\n"
        "for i in range(4):\n    log_metrics(step=i, accuracy=x * i / 10)\n"
        "if x == 9:\n    time.sleep(60)\n"
        "log_metrics(accuracy=x / 10)\n")
    sweep = Sweep(ParameterSpace(grid={"x": [1, 5, 3, 9]}), ["python", "curve.py"],
                  [LocalComputeSource(max_parallel_jobs=4)], workdir=workdir, poll_interval=0.1,
                  objective={"accuracy": "max"})
    panel = sweep.panel()
    panels.append(panel)
    sweep.start()
    panel.tabs.selected_index = 4
    view = panel.results_view

    def roles() -> dict[str, str]:
        return {t["name"]: t["legendgroup"] for t in view.curves.traces if t["uid"].startswith("curve-")}

    _until(lambda: sweep.counts().get("COMPLETED") == 3 and roles().get("x=9") == "running",
           timeout=60, what="three done and the running curve drawn")
    assert view.metric.value == "accuracy" and view.direction.value is False  # higher is better
    assert roles() == {"x=9": "running", "x=5": "best", "x=3": "best", "x=1": "best"}  # legends name parameters
    _until(lambda: [t["uid"] for t in view.chart.traces] == ["history-completed", "history-best"],
           what="the accuracy of each ended task and the best so far")
    assert view.chart.layout["title"]["text"].startswith("accuracy over time, best so far (higher is better")
    assert list(next(t for t in view.chart.traces if t["uid"] == "history-best")["y"])[-1] == 0.5  # x=5's
    # the first row after the header: the best finished task (accuracy 0.5, x=5)
    _until(lambda: ">0.5<" in view.rows[0].value, what="the best task first")
    view.view.value = "parallel"
    _until(lambda: len(view.chart.traces[0]["dimensions"][0]["values"]) == 3,
           what="x against accuracy, a line per finished task")
    sweep.cancel()
    sweep.wait(timeout=30)


def test_getting_back_to_a_sweep(workdir, panels):
    """``%hsm`` lists recent sweeps with Open; a second panel on a sweep this kernel drives shows the
    live one (no lock error naming our own pid); a saved notebook shows a readable summary."""
    done = Sweep(ParameterSpace(grid={"x": [1, 2]}), ["python", "job.py"], workdir=workdir, poll_interval=0.1,
                 name="finished-one", objective={"score": "max"}).run()
    busy = Sweep(ParameterSpace(grid={"x": [1], "sleep": [30]}), ["python", "job.py"], workdir=workdir,
                 poll_interval=0.1, name="busy-one").start()
    listing = open_panel("")
    panels.append(listing)
    rows = listing.recent.children[1:]  # after the title: one (Open button, description) per sweep
    text = html.unescape(" ".join(row.children[1].value for row in rows))
    assert done.id in text and busy.id in text and "finished" in text and "running (pid" in text
    second = open_panel(str(busy.directory))
    panels.append(second)
    assert second.sweep is busy  # the live object, not a SweepLockedError
    [row] = [row for row in rows if done.id in row.children[1].value]
    row.children[0].click()  # Open
    assert listing.sweep is not None and listing.sweep.id == done.id and "hsm-error" not in _msg(listing)
    plain = listing._repr_mimebundle_()["text/plain"]
    assert plain.startswith(f"hsm_notebook sweep {done.id}: 2 tasks") and "best score (max): 4" in plain
    busy.cancel()
    busy.wait(timeout=30)


def test_the_form_launches_a_function_of_the_notebook(workdir, panels, tmp_path):
    """The command field takes the name of a function defined in the notebook as well as a command."""
    from IPython import get_ipython
    from IPython.testing.globalipapp import start_ipython

    start_ipython()  # once per process: a later call returns None
    ip = get_ipython()

    def double(x):
        return {"y": 2 * x}

    ip.user_ns["double"] = double
    panel = SweepPanel(sources=[LocalComputeSource(max_parallel_jobs=2)], refresh_interval=0.1,
                       directory=tmp_path / "fn")
    panels.append(panel)
    panel.editor.command.value = "double"
    panel.editor.workdir.value = str(workdir)
    _fill(panel, [("x", "1, 2, 3", "grid")])
    panel.launch_button.click()
    assert panel.sweep is not None and "hsm-error" not in _msg(panel), _msg(panel)
    panel.sweep.wait(timeout=60)
    assert sorted(panel.sweep.results()["y"]) == [2, 4, 6]
    other = SweepPanel(sources=[LocalComputeSource(max_parallel_jobs=2)], directory=tmp_path / "nofn")
    panels.append(other)
    other.editor.command.value = "no_such_function_here"
    _fill(other, [("x", "1", "grid")])
    other.launch_button.click()
    assert "neither a function defined in this notebook nor a program on PATH" in _msg(other)
