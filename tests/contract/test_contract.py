"""The ComputeSource contract, run against every source through ``make_source``."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from hsm_notebook import JobState, JobTemplate, ParameterSpace, Sweep
from hsm_notebook.core._loop import run_sync
from hsm_notebook.core.base.source import to_state
from hsm_notebook.core.spec.overrides import hydra_value
from tests.helpers import until

HOSTILE = ['"; touch pwned #', "$(id)", "it's", "a b  c", "line1\nline2", "`uname`", "*", "-x", "back\\slash", "é ✓"]


async def _wait_for(source, job_ids, timeout=60.0):
    deadline = time.monotonic() + timeout
    states = {}
    while time.monotonic() < deadline:
        states = {j: to_state(s) for j, s in (await source.poll(list(job_ids))).items()}
        if all(s.is_terminal for s in states.values()):
            return states
        await __import__("asyncio").sleep(0.1)
    raise AssertionError(f"jobs not finished after {timeout} s: {states}")


@pytest.fixture()
def bound(make_source, workdir):
    """A source bound to a fresh sweep dir with ``python job.py`` as its command, set up."""
    source = make_source()
    sweep_dir = workdir / "sweeps" / "contract"
    sweep_dir.mkdir(parents=True)
    source.bind(JobTemplate(("python", "job.py"), workdir=str(workdir)), sweep_dir, "contract", lambda: None)
    assert run_sync(source.setup(sweep_dir, "contract")) is True
    yield source
    run_sync(source.cleanup())


def _submit(source, name, **params):
    async def go():
        job_id = await source.submit_job(params, name, "contract", wandb_group="grp")
        if job_id not in source.active_jobs:
            source.track(job_id, name, params, source.job_dir(name))
        return job_id
    return run_sync(go())


def _finish(source, job_ids, timeout=60.0):
    async def go():
        states = await _wait_for(source, job_ids, timeout)
        assert await source.collect_results(list(job_ids)) is True
        return {j: await source.outcome(j, s) for j, s in states.items()}
    return run_sync(go())


def test_health_check_reports_a_status_and_slots(bound):
    health = run_sync(bound.health_check())
    assert health["status"] == "healthy", health
    assert health["slots"] == bound.max_parallel_jobs


def test_a_job_completes_and_its_metrics_come_back(bound):
    job = _submit(bound, "ok-1", x=21)
    outcome = _finish(bound, [job])[job]
    assert outcome.state == JobState.COMPLETED and outcome.exit_code == 0
    assert outcome.metrics == {"score": 42.0, "name": "t21"}
    job_dir = bound.job_dir("ok-1")
    assert json.loads((job_dir / "params.json").read_text()) == {"x": 21}
    assert (job_dir / "stdout.log").exists() and (job_dir / "stderr.log").exists()


def test_a_failing_job_is_failed_with_its_exit_code_and_stderr(bound):
    job = _submit(bound, "bad-1", x=7, exit=3)
    outcome = _finish(bound, [job])[job]
    assert outcome.state == JobState.FAILED and outcome.exit_code == 3
    assert "something went wrong in task 7" in outcome.error


def test_parameter_values_arrive_literally_and_the_environment_is_set(bound, workdir):
    params = {f"v{i}": value for i, value in enumerate(HOSTILE)}
    job = _submit(bound, "hostile-1", argv_out="yes", **params)
    outcome = _finish(bound, [job])[job]
    assert outcome.state == JobState.COMPLETED, outcome
    seen = json.loads((bound.job_dir("hostile-1") / "argv.json").read_text())
    # arrive as rendered (Hydra's grammar: tests/test_hydra_values.py), one argv item each, no shell
    assert seen["argv"] == ["argv_out=yes"] + [f"v{i}={hydra_value(v)}" for i, v in enumerate(HOSTILE)]
    assert seen["env"]["HSM_TASK_DIR"].endswith("hostile-1")
    assert seen["env"]["HSM_JOB_NAME"] == "hostile-1" and seen["env"]["HSM_SWEEP_ID"] == "contract"
    assert seen["env"]["WANDB_RUN_GROUP"] == "grp"
    assert not (workdir / "pwned").exists() and not Path("pwned").exists()


def test_cancel_stops_a_running_job(bound):
    job = _submit(bound, "slow-1", sleep=120)
    until(lambda: to_state(run_sync(bound.get_job_status(job))) == JobState.RUNNING, 30, "the job running")
    assert run_sync(bound.cancel_job(job)) is True
    # stopped, not waited out: its end is seen within 30 s of a 120 s job, and the job never reached
    # the metrics it writes when its sleep is over
    outcome = _finish(bound, [job], timeout=30)[job]
    assert outcome.state == JobState.CANCELLED and outcome.metrics is None, outcome
    assert not (bound.job_dir("slow-1") / "metrics.json").exists()


def test_poll_answers_for_every_job_at_once(bound):
    jobs = [_submit(bound, f"many-{i}", x=i) for i in range(6)]
    outcomes = _finish(bound, jobs)
    assert set(outcomes) == set(jobs)
    assert sorted(o.metrics["score"] for o in outcomes.values()) == [0.0, 2.0, 4.0, 6.0, 8.0, 10.0]


def test_cleanup_can_be_called_twice(bound):
    run_sync(bound.cleanup())
    run_sync(bound.cleanup())
    assert run_sync(bound.health_check())["status"] in ("healthy", "degraded", "unhealthy")


def test_a_whole_sweep_runs_on_the_source(make_source, workdir):
    space = ParameterSpace(grid={"x": [1, 2, 3]}, paired=[{"exit": [0, 0], "sleep": [0, 0.1]}])
    sweep = Sweep(space, ["python", "job.py"], [make_source("contract-src", 3)], workdir=workdir, poll_interval=0.2)
    sweep.run()
    status = sweep.status()
    assert (status["state"] == "COMPLETED").all() and set(status["source"]) == {"contract-src"}
    results = sweep.results()
    assert sorted(results["score"]) == [2.0, 2.0, 4.0, 4.0, 6.0, 6.0]
    assert os.path.isdir(sweep.directory / "tasks")
