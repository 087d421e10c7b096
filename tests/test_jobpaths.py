"""JobPaths: one object for a job's folder and files (here, on a remote host, in a shell script),
the wrapper and every remote snippet rendered from its names, and one exit-code reader.

The snippets run here under /bin/sh (the shell they are written for on a remote host): the names
they use are checked by what they do, not only by their text.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import subprocess
from pathlib import Path, PurePosixPath

import pytest

from hsm_notebook.core.base.shell import LocalShell
from hsm_notebook.core.base.source import read_outcome
from hsm_notebook.core.model.errors import ConfigError
from hsm_notebook.core.model.state import JobState
from hsm_notebook.core.spec.job import WRAPPER, claim, render_wrapper
from hsm_notebook.core.spec.jobpaths import (
    NAMES,
    NEVER,
    JobFiles,
    JobPaths,
    exit_code_of,
    read_exit_code,
    sh,
    sh_read_exit_code,
)
from hsm_notebook.sources.local_jobs import LocalJobManager
from hsm_notebook.sources.slurm_login import LocalLogin, read_script
from hsm_notebook.sources.ssh_jobs import RemoteJobManager, poll_script, stop_script
from hsm_notebook.sources.ssh_remote import exit_codes_script

#: Every name changed: a snippet rendered with these holds none of the usual names.
RENAMED = JobFiles(**{f.name: f"zz_{getattr(NAMES, f.name)}" for f in dataclasses.fields(JobFiles)})
#: Names a snippet must never spell by hand, as they appear after a folder variable.
SPELLED = ["params.json", "metrics.json", "metrics.jsonl", "stdout.log", "stderr.log", "exit_code", "pid",
           "cancelled", "signalled", "launch", "slurm.out", "result.pkl"]


def run_sh(script: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["/bin/sh", "-c", script, "sh", *args], capture_output=True, text=True, timeout=30,
                          env={**os.environ, **(env or {})})


# ---- the object ----------------------------------------------------------------------------------

def test_local_paths_are_the_job_folder_and_its_files(tmp_path):
    p = JobPaths.local(tmp_path, "0123456789ab-1")
    assert p.folder == tmp_path / "tasks" / "0123456789ab-1" and isinstance(p.folder, Path)
    assert p.name == "0123456789ab-1"
    expected = {"params": "params.json", "metrics": "metrics.json", "steps": "metrics.jsonl",
                "result": "result.pkl", "stdout": "stdout.log", "stderr": "stderr.log", "scheduler": "slurm.out",
                "exit_code": "exit_code", "pid": "pid", "cancelled": "cancelled", "signalled": "signalled",
                "launch": "launch", "gpus": "gpus", "run_script": "run.sh", "scheduler_id": "slurm_id"}
    for attr, name in expected.items():
        assert getattr(p, attr) == p.folder / name, attr
    assert p.run(2) == p.folder / "run2"
    assert JobPaths.tasks_dir(tmp_path) == tmp_path / "tasks"


def test_remote_paths_are_posix_whatever_the_controller():
    p = JobPaths.remote("/home/u/hsm/sweeps/s1", "j-1")
    assert isinstance(p.folder, PurePosixPath) and not isinstance(p.folder, Path)
    assert str(p.exit_code) == "/home/u/hsm/sweeps/s1/tasks/j-1/exit_code"
    assert str(p.run("$n")) == "/home/u/hsm/sweeps/s1/tasks/j-1/run$n"


@pytest.mark.parametrize("bad", ["", "../x", "a/b", "-x", "a b", "x" * 200])
def test_a_job_name_that_is_not_a_folder_name_is_refused(tmp_path, bad):
    with pytest.raises(ConfigError, match="folder name"):
        JobPaths.local(tmp_path, bad)
    with pytest.raises(ConfigError, match="folder name"):
        JobPaths.remote("/r", bad)


def test_shell_paths_quote_a_variable_folder():
    p = JobPaths.shell("j")
    assert sh(p.exit_code) == '"$j/exit_code"'
    assert sh(JobPaths.shell("2").pid) == '"$2/pid"'
    assert sh_read_exit_code(p) == 'rc=""; [ -f "$j/exit_code" ] && read rc < "$j/exit_code"'


def test_product_files_and_run_folders_come_from_the_names():
    assert NAMES.product == NAMES.product
    assert {"params.json", "metrics.json", "metrics.jsonl", "result.pkl", "stdout.log", "stderr.log", "slurm.out",
            "exit_code", "pid", "cancelled", "signalled"} == set(NAMES.product)
    assert NAMES.run_index("run12") == 12
    assert NAMES.run_index("run") is None and NAMES.run_index("runs") is None and NAMES.run_index("x1") is None


# ---- one exit-code reader -------------------------------------------------------------------------

@pytest.mark.parametrize("text, code", [("0\n", 0), ("137", 137), ("  7 \n", 7), ("-1", -1), ("", None),
                                        ("\n", None), ("-", None), ("abc", None), (None, None)])
def test_read_exit_code(text, code):
    assert read_exit_code(text) == code


def test_every_python_reader_reads_an_exit_code_the_same_way(tmp_path):
    """The outcome, the local source's state, and the Slurm login side all go through read_exit_code."""
    for text, code, state in (("  7\n", 7, JobState.FAILED), ("0\n", 0, JobState.COMPLETED)):
        p = JobPaths.local(tmp_path, f"j-{code}")
        p.folder.mkdir(parents=True)
        p.pid.write_text("1\n")
        p.exit_code.write_text(text)
        assert exit_code_of(p) == code
        assert read_outcome(p.folder, state).exit_code == code
        assert LocalJobManager().state(p.folder) == state
        files = asyncio.run(LocalLogin("s", {}).read_tasks({"1_0": str(p.folder)}))
        assert files["1_0"].code == code
    empty = JobPaths.local(tmp_path, "j-empty")
    empty.folder.mkdir(parents=True)
    empty.exit_code.write_text("")  # being written
    assert exit_code_of(empty) is None and read_outcome(empty.folder, JobState.LOST).exit_code is None
    assert exit_code_of(JobPaths.local(tmp_path, "j-none")) is None


# ---- the wrapper ----------------------------------------------------------------------------------

def test_the_wrapper_is_rendered_from_the_names():
    assert render_wrapper() == WRAPPER
    d = JobPaths.shell("d")
    for path in (d.pid, d.exit_code, d.signalled, d.stdout, d.stderr, d.steps, d.run("$n")):
        assert sh(path) in WRAPPER, path
    renamed = render_wrapper(RENAMED)
    for name in SPELLED:
        assert f'"$d/{name}"' not in renamed, name
    assert '"$d/zz_exit_code"' in renamed and '"$d/zz_pid"' in renamed


def test_a_wrapper_with_other_names_writes_those_files(tmp_path):
    job = tmp_path / "abc-1"
    job.mkdir()
    done = run_sh(render_wrapper(RENAMED), str(job), "sh", "-c", "echo out; echo err >&2; exit 3")
    assert done.returncode == 0, done.stderr
    p = JobPaths(job, RENAMED)
    assert read_exit_code(p.exit_code.read_text()) == 3
    assert p.stdout.read_text() == "out\n" and p.stderr.read_text() == "err\n"
    assert p.pid.read_text().strip().isdigit()
    assert sorted(os.listdir(job)) == sorted(["zz_exit_code", "zz_pid", "zz_stdout.log", "zz_stderr.log"])


def test_a_requeued_run_moves_its_files_into_a_run_folder_named_by_the_names(tmp_path):
    job = tmp_path / "abc-1"
    job.mkdir()
    p = JobPaths(job)
    run_sh(WRAPPER, str(job), "sh", "-c", "kill -TERM $PPID; sleep 5", env={"SLURM_RESTART_COUNT": "0"})
    assert p.signalled.read_text().split() == ["TERM"]
    run_sh(WRAPPER, str(job), "true", env={"SLURM_RESTART_COUNT": "1"})
    assert (p.run(1) / NAMES.signalled).exists() and (p.run(1) / NAMES.stdout).exists()
    assert exit_code_of(p) == 0
    assert json.loads(p.steps.read_text().strip()) == {"hsm_run": 2}


# ---- the remote snippets --------------------------------------------------------------------------

@pytest.mark.parametrize("render", [
    lambda names: poll_script("", "/r/tasks", ["j-1"], names),
    lambda names: stop_script("/r/tasks/j-1", 5, names),
    lambda names: read_script(names),
    lambda names: exit_codes_script("/r/tasks", names),
], ids=["ssh-poll", "ssh-stop", "slurm-read", "ssh-cleanup"])
def test_remote_snippets_spell_no_file_name_by_hand(render):
    default, renamed = render(NAMES), render(RENAMED)
    assert default != renamed
    for name in SPELLED:
        for var in ("$j", "$d", "$2"):
            assert f'"{var}/{name}"' not in renamed, (name, var)
    assert any(f'"{var}/exit_code"' in default for var in ("$j", "$d", "$2"))


def _job(tasks: Path, name: str, **files: str) -> Path:
    d = tasks / name
    d.mkdir(parents=True)
    for attr, text in files.items():
        getattr(JobPaths(d), attr).write_text(text)
    return d


def test_the_ssh_poll_reads_the_folders_through_the_names(tmp_path):
    """RemoteJobManager.states over a local /bin/sh (the remote host's shell, run here)."""
    tasks = tmp_path / "tasks"
    _job(tasks, "done-1", pid="1\n", exit_code="3\n", cancelled="")
    _job(tasks, "claimed-1", pid=NEVER + "\n")
    (tasks / "unstarted-1").mkdir()
    jobs = RemoteJobManager(LocalShell("test"), str(tasks), str(tmp_path), "setsid", 1.0,  # type: ignore[arg-type]
                            str(tmp_path))
    states = asyncio.run(jobs.states(["done-1", "claimed-1", "unstarted-1"]))
    assert states == {"done-1": ("X", 3, True), "claimed-1": ("N", None, False), "unstarted-1": ("N", None, False)}
    assert (tasks / "unstarted-1" / NAMES.pid).read_text().strip() == NEVER  # claimed by the poll
    gone = RemoteJobManager(LocalShell("test"), str(tmp_path / "gone"), str(tmp_path), "setsid", 1.0,  # type: ignore[arg-type]
                            str(tmp_path))
    assert asyncio.run(gone.states(["x-1"])) == {"x-1": ("G", None, False)}


def test_the_ssh_stop_claims_a_job_that_has_not_started(tmp_path):
    d = tmp_path / "tasks" / "j-1"
    out = run_sh(stop_script(str(d), 0.1)).stdout
    assert out.strip() == "stopping"
    assert JobPaths(d).pid.read_text().strip() == NEVER and JobPaths(d).cancelled.exists()
    _job(tmp_path / "tasks", "k-1", exit_code="0\n")
    assert run_sh(stop_script(str(tmp_path / "tasks" / "k-1"), 0.1)).stdout.strip() == "finished"


def test_the_slurm_read_claims_and_counts_runs_through_the_names(tmp_path):
    tasks = tmp_path / "tasks"
    a = _job(tasks, "a-1", pid="1\n", exit_code="2\n", signalled="TERM\n")
    (a / "run1").mkdir()
    (a / "run2").mkdir()
    b = tasks / "b-1"
    script = f"r() {{ {read_script()}; }}\nr 1_0 {a} 1\nr 1_1 {b} 1\nr 1_2 {a} 0\n"
    assert run_sh(script).stdout.splitlines() == ["1_0 2 1 2 0", "1_1 - 0 0 1", "1_2 2 1 2 0"]
    assert JobPaths(b).pid.read_text().strip() == NEVER
    assert not claim(b)  # the snippet's claim is the same claim as the controller's


def test_the_cleanup_listing_reads_exit_codes_through_the_names(tmp_path):
    tasks = tmp_path / "tasks"
    _job(tasks, "ok-1", exit_code="0\n")
    _job(tasks, "bad-1", exit_code="1\n")
    _job(tasks, "running-1", pid="5\n")
    lines = sorted(run_sh(exit_codes_script(str(tasks))).stdout.splitlines())
    assert lines == ["bad-1 1", "ok-1 0", "running-1 -"]
    assert [read_exit_code(line.split()[1]) for line in lines] == [1, 0, None]
