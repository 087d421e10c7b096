"""The reference's driving style: a built-in source built with the reference's constructor
arguments (python_path, script_path, project_dir) runs jobs through the seven reference
methods alone, with no manager and no ``bind()``."""

from __future__ import annotations

import json
import time

import pytest

from hsm_notebook import ConfigError, JobState
from hsm_notebook.core._loop import run_sync
from hsm_notebook.core.base.source import read_outcome

TERMINAL = ("COMPLETED", "FAILED", "CANCELLED", "LOST")


def wait_terminal(source, job_id: str, timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        status = run_sync(source.get_job_status(job_id))
        if str(status).upper() in TERMINAL:  # a JobState or one of the reference's strings
            return str(status).upper()
        assert time.monotonic() < deadline, f"{job_id} still {status} after {timeout} s"
        time.sleep(0.2)


def test_the_seven_reference_methods_run_jobs_without_a_manager(make_source, workdir):
    source = make_source("ref", 2, python_path="python", script_path="job.py", project_dir=str(workdir))
    source.bind = lambda *a, **k: pytest.fail("bind() is the manager's path; the reference never calls it")
    sweep_dir = workdir / "runs" / "ref-sweep"  # does not exist yet, as in the reference
    assert run_sync(source.setup(sweep_dir, "ref-sweep")) is True
    ok = run_sync(source.submit_job({"x": 21}, "task_001", "ref-sweep"))
    bad = run_sync(source.submit_job({"x": 7, "exit": 3}, "task_002", "ref-sweep", wandb_group="grp"))
    states = {job: wait_terminal(source, job) for job in (ok, bad)}
    assert states == {ok: "COMPLETED", bad: "FAILED"}
    assert run_sync(source.collect_results([ok, bad])) is True
    assert run_sync(source.health_check())["status"] == "healthy"
    run_sync(source.cleanup())

    done = read_outcome(sweep_dir / "tasks" / "task_001", JobState.COMPLETED)
    assert done.exit_code == 0 and done.metrics == {"score": 42.0, "name": "t21"}
    failed = read_outcome(sweep_dir / "tasks" / "task_002", JobState.FAILED)
    assert failed.exit_code == 3 and "something went wrong in task 7" in failed.error
    assert json.loads((sweep_dir / "tasks" / "task_001" / "params.json").read_text()) == {"x": 21}


def test_a_source_driven_without_a_command_says_what_to_pass(make_source, workdir):
    source = make_source("nocmd", 1)
    assert run_sync(source.setup(workdir / "runs" / "nocmd", "nocmd")) is True
    try:
        with pytest.raises(Exception, match=r"pass command=\.\.\. \(or python_path=\.\.\., script_path=\.\.\.\)"):
            run_sync(source.submit_job({"x": 1}, "task_001", "nocmd"))
    finally:
        run_sync(source.cleanup())


def test_reference_arguments_are_checked_when_the_source_is_made(make_source, workdir):
    with pytest.raises(ConfigError, match="script_path"):
        make_source("half", 1, python_path="python")
    with pytest.raises(ConfigError, match="not both"):
        make_source("both", 1, command=["python", "job.py"], script_path="job.py")
    with pytest.raises(ConfigError, match="project_dir"):
        make_source("nowhere", 1, script_path="job.py", project_dir=str(workdir / "missing"))
