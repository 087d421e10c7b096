"""End to end on the local machine: real processes, the real ledger, no mocks."""

from __future__ import annotations

import os

import pandas as pd
import pytest

from hsm_notebook import ConfigError, LocalComputeSource, ParameterSpace, Sweep
from tests.helpers import job_sweep, until


def test_fifty_tasks_with_some_failing(workdir):
    rows = [{"x": i, "exit": 3 if i % 7 == 0 else 0} for i in range(50)]
    sweep = job_sweep(workdir, 4, ParameterSpace(combinations=rows))
    assert sweep.start() is sweep  # returns at once
    sweep.wait(timeout=120)
    status = sweep.status()
    assert len(status) == 50 and list(status.columns[:4]) == ["task_id", "job_name", "source", "state"]
    failed = status[status["state"] == "FAILED"]
    assert sorted(failed["x"]) == [0, 7, 14, 21, 28, 35, 42, 49]
    assert (failed["exit_code"] == 3).all()
    assert failed.set_index("x").loc[14, "error"] == "exit code 3: something went wrong in task 14"
    done = status[status["state"] == "COMPLETED"]
    assert len(done) == 42 and (done["exit_code"] == 0).all()
    assert (done["duration"] > pd.Timedelta(0)).all() and done["end_time"].notna().all()
    results = sweep.results()
    assert len(results) == 42
    assert (results["score"] == results["x"] * 2).all()
    assert results["x"].dtype == "int64" and results["score"].dtype == "float64"
    assert sweep.counts() == {"COMPLETED": 42, "FAILED": 8} and sweep.done
    assert "something went wrong in task 21" in sweep.logs(failed["task_id"].iloc[3])


def test_invalid_metrics_json_completes_with_the_problem_recorded(workdir):
    sweep = job_sweep(workdir, 4, ParameterSpace(grid={"x": [1, 2]}, paired=[{"bad_metrics": [True]}])).run()
    status = sweep.status()
    assert (status["state"] == "COMPLETED").all()
    assert status["error"].str.contains("metrics.json is not valid JSON").all()
    results = sweep.results()
    assert list(results["x"]) == [1, 2] and "score" not in results.columns


def test_cancel_one_running_task_then_the_whole_sweep(workdir):
    sweep = job_sweep(workdir, 2, ParameterSpace(grid={"x": list(range(8)), "sleep": [30]})).start()
    until(lambda: (sweep.status()["state"] == "RUNNING").sum() >= 2, 30, "two tasks running")
    first = sweep.status().query("state == 'RUNNING'")["task_id"].iloc[0]
    assert sweep.cancel(first) == 1
    until(lambda: sweep.status().set_index("task_id").loc[first, "state"] == "CANCELLED", 20,
          "the first task cancelled")
    sweep.cancel()
    sweep.wait(timeout=60)
    assert set(sweep.status()["state"]) == {"CANCELLED"}
    for job in sweep.status()["job_name"].dropna():
        text = (sweep.directory / "tasks" / job / "pid").read_text().strip()
        if text == "never":  # cancelled while it was starting: claimed, so it never ran
            assert not (sweep.directory / "tasks" / job / "stdout.log").exists()
            continue
        pid = int(text)
        assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"


def test_complete_reruns_only_missing_and_failed(workdir):
    flag = workdir / "broken"
    flag.write_text("")
    rows = [{"x": i, "fail_flag": str(flag) if i % 2 else "/nonexistent"} for i in range(6)]
    sweep = job_sweep(workdir, 4, ParameterSpace(combinations=rows)).run()
    assert sweep.counts() == {"COMPLETED": 3, "FAILED": 3}
    flag.unlink()
    sweep.complete().wait(timeout=60)
    status = sweep.status().set_index("x")
    assert (status["state"] == "COMPLETED").all()
    assert list(status["attempt"]) == [1, 2, 1, 2, 1, 2]
    assert len(sweep.results()) == 6


def test_attach_resume_false_reads_a_finished_sweep(workdir):
    sweep = job_sweep(workdir, 4, ParameterSpace(grid={"x": [1, 2]})).run()
    again = Sweep.attach(sweep.directory, resume=False)
    assert not again.running and again.counts() == {"COMPLETED": 2}
    pd.testing.assert_frame_equal(again.results(), sweep.results())


def test_gpu_pinning_sets_cuda_visible_devices(workdir):
    source = LocalComputeSource(max_parallel_jobs=8, gpus=[0, 1, 2, 3], gpus_per_job=2)
    assert source.max_parallel_jobs == 2
    sweep = Sweep(ParameterSpace(grid={"x": [1, 2, 3, 4]}), ["python", "job.py"], [source],
                  workdir=workdir, poll_interval=0.2, env={"HSM_TEST": "1"})
    (workdir / "job.py").write_text(
        "import os\nfrom hsm_notebook.metrics import log_metrics\n"
        "log_metrics(gpus=os.environ['CUDA_VISIBLE_DEVICES'], test=os.environ['HSM_TEST'])\n")
    results = sweep.run().results()
    assert set(results["gpus"]) <= {"0,1", "2,3"} and (results["test"] == "1").all()


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda w: Sweep(ParameterSpace(grid={"x": [1]}), ["no-such-program-xyz"], workdir=w), "not found on PATH"),
        (lambda w: Sweep(ParameterSpace(grid={"x": [1]}), ["python", "missing.py"], workdir=w),
         "script 'missing.py' not found"),
        (lambda w: Sweep(ParameterSpace(grid={"x": [1]}), [], workdir=w), "non-empty list"),
        (lambda w: LocalComputeSource(max_parallel_jobs=0), "max_parallel_jobs: must be a whole number >= 1"),
        (lambda w: Sweep(ParameterSpace(grid={"x": [1]}), ["python", "job.py"], workdir=w,
                         directory=w / "job.py" / "sub"), "not writable"),
        (lambda w: Sweep(ParameterSpace(grid={"x": [1]}), ["python", "job.py"], workdir=w,
                         sources=[LocalComputeSource("a"), LocalComputeSource("a")]), "its own name"),
        (lambda w: Sweep.attach(w), "is not a sweep directory"),
        (lambda w: Sweep(ParameterSpace(grid={"x": [1]}), ["python", "job.py"], workdir=w, arg_style="weird"),
         "arg_style"),
        (lambda w: Sweep(ParameterSpace(combinations=[{"x": 1}, {"x": 1}]), ["python", "job.py"], workdir=w),
         "appears twice"),
        (lambda w: Sweep(ParameterSpace(grid={"x": [1]}, filter=lambda p: False), ["python", "job.py"], workdir=w),
         "empty"),
    ],
)
def test_bad_input_is_a_config_error_before_any_job(workdir, make, words):
    with pytest.raises(ConfigError) as err:
        make(workdir)
    assert words in str(err.value)
    assert not list(workdir.glob("sweeps/*/tasks/*"))  # no job was started


def test_a_sweep_directory_is_never_reused(workdir):
    sweep = job_sweep(workdir, 4, ParameterSpace(grid={"x": [1]}))
    with pytest.raises(ConfigError, match="already holds a sweep"):
        job_sweep(workdir, 4, ParameterSpace(grid={"x": [2]}), directory=sweep.directory)
    assert sweep.counts() == {"PENDING": 1}


def test_the_objective_decides_what_best_means(workdir):
    """With accuracy-like metrics, "best" is the highest: the declared objective says so."""
    space = ParameterSpace(grid={"x": [1, 5, 3, 2]})
    sweep = job_sweep(workdir, 4, space, objective={"score": "max"}).run()
    assert sweep.objective == ("score", False)
    assert list(sweep.best(2)["x"]) == [5, 3]
    assert list(sweep.best(2, minimize=True)["x"]) == [1, 2]
    assert Sweep.attach(sweep.directory, resume=False).objective == ("score", False)  # recorded
    plain = job_sweep(workdir, 4, space).run()
    with pytest.raises(ConfigError, match="no objective"):
        plain.best()
    assert list(plain.best(1, metric="score")["x"]) == [1]
    with pytest.raises(ConfigError) as err:
        job_sweep(workdir, 4, space, objective={"score": "up"})
    assert err.value.field == "objective"


def test_a_sweep_file_declares_its_objective(workdir):
    (workdir / "s.yaml").write_text("command: [python, job.py]\nobjective: {score: maximize}\n"
                                    "sweep:\n  grid:\n    x: [1, 2]\n")
    sweep = Sweep.from_yaml(workdir / "s.yaml", [LocalComputeSource(max_parallel_jobs=2)], poll_interval=0.2).run()
    assert sweep.objective == ("score", False) and list(sweep.best(1)["x"]) == [2]
