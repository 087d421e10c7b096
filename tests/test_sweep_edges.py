"""Edges a user meets with a sweep on this machine (issue 19, items 14, 17, 21, 22, 23): cancel
then complete, refused sweeps, the README as written, re-running a cell after a kernel restart,
opening a sweep from ``%hsm``'s list.  Real processes, the real ledger, no fakes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hsm_notebook import ConfigError, LocalComputeSource, ParameterSpace, Sweep
from tests.helpers import job_sweep, until

ROOT = Path(__file__).resolve().parents[1]


def _state(sweep: Sweep, tid: str, column: str = "state"):
    return sweep.status().set_index("task_id").loc[tid, column]


# -- item 14: cancel(task_id), then status() and complete() right after ----------------------
def test_a_cancel_is_recorded_when_it_returns_and_complete_right_after_reruns_it(workdir):
    sweep = job_sweep(workdir, 2, ParameterSpace(grid={"x": [1, 2], "sleep": [30]})).start()
    try:
        until(lambda: sweep.counts().get("RUNNING", 0) == 2, timeout=30, what="2 running")
        tid = sweep.status().query("state == 'RUNNING'")["task_id"].iloc[0]
        assert sweep.cancel(tid) == 1
        assert _state(sweep, tid) == "CANCELLED"  # what status() says as soon as cancel() returns
        sweep.complete()  # right after: the cancelled task runs again
        until(lambda: _state(sweep, tid, "attempt") == 2, timeout=30, what="the cancelled task's second attempt")
        assert _state(sweep, tid) in ("SUBMITTING", "QUEUED", "RUNNING")
    finally:
        sweep.cancel()
        sweep.wait(timeout=60)
    assert sweep.counts() == {"CANCELLED": 2}


# -- item 17: a refused sweep creates nothing --------------------------------------------------
def _not_json(params: dict) -> dict:
    return {"gpus": {1}}


@pytest.mark.parametrize("space, kwargs, words", [
    (ParameterSpace(grid={"x": [1]}, filter=lambda p: False), {}, "the parameter space is empty"),
    (ParameterSpace(combinations=[{"x": 1}, {"x": 1}]), {}, "appears twice"),
    (ParameterSpace(grid={"x": [1]}), {"requires": _not_json}, "is not JSON"),
], ids=["empty", "duplicates", "requires-not-json"])
def test_a_refused_sweep_creates_no_sweeps_folder(workdir, space, kwargs, words):
    sweeps = workdir / "sweeps"
    assert not sweeps.exists()
    with pytest.raises(ConfigError, match=words):
        Sweep(space, ["python", "job.py"], workdir=workdir, **kwargs)
    assert not sweeps.exists(), list(sweeps.rglob("*"))


def test_a_refused_sweep_keeps_a_sweeps_folder_that_was_there(workdir):
    (workdir / "sweeps").mkdir()
    with pytest.raises(ConfigError):
        Sweep(ParameterSpace(combinations=[{"x": 1}, {"x": 1}]), ["python", "job.py"], workdir=workdir)
    assert (workdir / "sweeps").is_dir() and not any((workdir / "sweeps").iterdir())


# -- item 21: the README as written ---------------------------------------------------------
def test_a_count_given_as_the_name_says_what_was_meant():
    with pytest.raises(ConfigError) as err:
        LocalComputeSource(4)
    assert "did you mean LocalComputeSource(max_parallel_jobs=4)?" in str(err.value)


def test_the_readme_never_writes_a_count_as_a_source_name():
    readme = (ROOT / "README.md").read_text()
    assert not re.search(r"LocalComputeSource\(\d", readme)


def test_the_readme_after_a_kernel_restart_runs_in_a_new_process(tmp_path):
    """The first API block up to the restart in one process, the rest in another (as a restarted
    kernel runs it): nothing from the first process may be needed."""
    readme = (ROOT / "README.md").read_text()
    block = re.findall(r"<!-- runs in CI[^>]*-->\s*```python\n(.*?)```", readme, re.DOTALL)[0]
    before, marker, after = block.partition("# after a kernel restart")
    assert marker, "the block no longer shows what to do after a kernel restart"
    env = {**os.environ, "HSM_SWEEPS_DIR": str(tmp_path / "sweeps")}
    for part in (before, marker + after):
        out = subprocess.run([sys.executable, "-c", part], check=False, cwd=tmp_path, env=env, capture_output=True,
                             text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
    assert len(list((tmp_path / "sweeps").iterdir())) == 1


# -- item 22: re-running the cell that creates a named sweep -------------------------------
KILLED_KERNEL = textwrap.dedent("""
    import os, sys, time
    from hsm_notebook import LocalComputeSource, ParameterSpace, Sweep
    sweep = Sweep(ParameterSpace(grid={"x": [1, 2, 3], "sleep": [1]}), ["python", "job.py"],
                  [LocalComputeSource(max_parallel_jobs=1)], workdir=sys.argv[1], poll_interval=0.2, name="again")
    sweep.start()
    deadline = time.monotonic() + 60
    while sweep.counts().get("RUNNING", 0) == 0:
        if time.monotonic() > deadline:
            sys.exit("no task running after 60 s: the kernel could not die mid-sweep")
        time.sleep(0.05)
    os._exit(0)  # the kernel dies with tasks still pending (1 slot: only this controller starts them)
""")


def _again(workdir: Path, **changes) -> Sweep:
    args = {"space": ParameterSpace(grid={"x": [1, 2, 3], "sleep": [1]}), "command": ["python", "job.py"],
            "sources": [LocalComputeSource(max_parallel_jobs=1)], **changes}
    return Sweep(args.pop("space"), args.pop("command"), args.pop("sources"), workdir=workdir, poll_interval=0.2,
                 name="again", **args)


def test_rerunning_a_named_sweeps_cell_after_a_restart_reattaches_and_finishes_it(workdir):
    out = subprocess.run([sys.executable, "-c", KILLED_KERNEL, str(workdir)], check=False, cwd=workdir,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    first = list((workdir / "sweeps").iterdir())
    assert len(first) == 1
    sweep = _again(workdir)  # Run All in the restarted kernel
    assert sweep.directory == first[0].absolute() and sweep.counts().get("PENDING", 0) >= 1
    sweep.run()
    assert sweep.counts() == {"COMPLETED": 3}
    assert list((workdir / "sweeps").iterdir()) == first  # no second sweep


@pytest.mark.parametrize("changes, words", [
    ({"space": ParameterSpace(grid={"x": [1, 2], "sleep": [1]})}, "its space"),
    ({"command": ["python3", "job.py"]}, "its command"),
    ({"sources": [LocalComputeSource(max_parallel_jobs=3)]}, "its sources"),
], ids=["space", "command", "sources"])
def test_rerunning_a_named_sweeps_cell_with_something_changed_is_refused_in_words(workdir, changes, words):
    first = _again(workdir)
    with pytest.raises(ConfigError) as err:
        _again(workdir, **changes)
    text = str(err.value)
    assert words in text and "again" in text and str(first.directory) in text
    assert "name=" in text and "Sweep.attach" in text  # the two ways out
    assert len(list((workdir / "sweeps").iterdir())) == 1


def test_rerunning_the_cell_while_this_kernel_drives_the_sweep_gives_the_live_sweep(workdir):
    first = _again(workdir).start()
    try:
        again = _again(workdir)
        assert again.running and again.directory == first.directory
        again.wait(timeout=60)
        assert first.counts() == {"COMPLETED": 3}
    finally:
        first.cancel()


def _square(x):
    return {"y": x * x}


def _cube(x):
    return {"y": x * x * x}


def test_a_named_function_sweep_is_found_again_and_an_edited_function_is_refused(workdir):
    space = ParameterSpace(grid={"x": [1, 2]})
    first = Sweep(space, _square, workdir=workdir, name="fn")
    assert Sweep(space, _square, workdir=workdir, name="fn").directory == first.directory
    with pytest.raises(ConfigError, match="its function differs"):
        Sweep(space, _cube, workdir=workdir, name="fn")


def test_reattach_false_always_makes_a_new_sweep(workdir):
    first = _again(workdir)
    second = _again(workdir, reattach=False, sources=[LocalComputeSource(max_parallel_jobs=3)])
    assert second.directory != first.directory and len(list((workdir / "sweeps").iterdir())) == 2


def test_attach_by_name_finds_the_newest_sweep_of_that_name(workdir):
    first = _again(workdir)
    assert Sweep.attach("again", resume=False).directory == first.directory
    with pytest.raises(ConfigError, match="no sweep named 'other'"):
        Sweep.attach("other", resume=False)


def test_a_saved_panel_says_how_to_reattach(workdir):
    from hsm_notebook.ui.panel import SweepPanel

    panel = SweepPanel(_again(workdir))
    try:
        assert "%hsm" in panel.summary() and "%load_ext hsm_notebook" in panel.summary()
    finally:
        panel.close()


# -- item 23: opening a sweep from %hsm's list shows it; Launch launches it -------------------
def test_opening_a_never_launched_sweep_from_the_list_does_not_launch_it(workdir):
    from hsm_notebook.ui.magic import open_panel

    sweep = _again(workdir)
    panel = open_panel("")
    try:
        rows = [row for row in panel.recent.children[1:]]
        assert len(rows) == 1
        rows[0].children[0].click()  # Open
        assert panel.sweep is not None and panel.sweep.directory == sweep.directory
        assert not panel.sweep.running and panel.sweep.counts() == {"PENDING": 3}
        assert not panel.launch_button.disabled
        panel.launch_button.click()  # launching is its own, explicit click
        assert panel.sweep.running
        panel.sweep.wait(timeout=60)
        assert panel.sweep.counts() == {"COMPLETED": 3}
    finally:
        panel.close()


def test_hsm_with_a_never_launched_sweeps_folder_shows_it(workdir):
    from hsm_notebook.ui.magic import open_panel

    sweep = _again(workdir)
    panel = open_panel(str(sweep.directory))
    try:
        assert not panel.sweep.running and panel.sweep.counts() == {"PENDING": 3}
    finally:
        panel.close()
