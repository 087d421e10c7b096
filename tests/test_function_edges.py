"""Function sweeps at their edges (issue 19, items 1-4), on this machine: the notebook's own
modules travel with the function, ``async def`` and generators have a meaning, every return value
has a documented place, and an environment without hsm_notebook still runs the function."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest

from hsm_notebook import ConfigError, LocalComputeSource, ParameterSpace, Sweep


def _run(fn: Any, workdir: Path, grid: dict[str, list[Any]] | None = None, source: Any = None,
         **kwargs: Any) -> Sweep:
    space = ParameterSpace(grid=grid or {"x": [1, 2]})
    return Sweep(space, fn, [source or LocalComputeSource("fn", 2)], workdir=workdir, poll_interval=0.2,
                 **kwargs).run()


# -- item 1: the kernel's module is the one that runs ----------------------------------------------
def test_a_notebook_module_runs_as_the_kernel_imported_it_not_the_workdirs(notebook_module):
    helpers, project = notebook_module
    score = helpers.score

    def uses_global(x):  # `from helpers import score` at the top of the notebook
        return {"s": score(x)}

    sweep = _run(uses_global, project)
    assert sweep.counts() == {"COMPLETED": 2}
    assert sorted(sweep.results()["s"]) == [10, 20]  # not the project's helpers.py (-1)


def test_a_notebook_module_imported_inside_the_function_is_the_kernels(notebook_module):
    _, project = notebook_module

    def imports_inside(x):
        import helpers

        return {"s": helpers.score(x)}

    sweep = _run(imports_inside, project)
    assert sweep.counts() == {"COMPLETED": 2}
    assert sorted(sweep.results()["s"]) == [10, 20]


def test_a_notebook_module_that_cannot_travel_is_named_before_anything_is_written(notebook_module, workdir):
    helpers, _ = notebook_module
    helpers.LOCK = threading.Lock()
    exec("def locked(x):\n    with LOCK:\n        return x\n", vars(helpers))
    locked = helpers.locked

    with pytest.raises(ConfigError) as err:
        Sweep(ParameterSpace(grid={"x": [1]}), lambda x: locked(x), workdir=workdir)
    assert "helpers" in str(err.value) and "pip install -e" in str(err.value), str(err.value)
    assert not (workdir / "sweeps").exists() or not any((workdir / "sweeps").iterdir())


# -- item 2: async def and generators ---------------------------------------------------------------
def test_an_async_function_is_awaited_in_the_job(workdir):
    async def train(x):
        import asyncio

        await asyncio.sleep(0)
        return {"loss": x / 10}

    sweep = _run(train, workdir)
    assert sweep.counts() == {"COMPLETED": 2}, sweep.status()[["state", "error"]]
    assert sorted(sweep.results()["loss"]) == [0.1, 0.2]


def test_a_generators_yields_are_steps_and_its_return_the_result(workdir):
    def train(x):
        for epoch in range(3):
            yield {"loss": x / (epoch + 1)}
        return {"final": x * 100}

    sweep = _run(train, workdir)
    assert sweep.counts() == {"COMPLETED": 2}, sweep.status()[["state", "error"]]
    task = sweep.status().set_index("x").loc[2, "task_id"]
    steps = sweep.metrics(task, "loss")
    assert list(steps["step"]) == [0.0, 1.0, 2.0] and list(steps["value"]) == [2.0, 1.0, 2 / 3]
    assert sorted(sweep.results()["final"]) == [100, 200]
    assert sweep.result(task) == {"final": 200}


def test_a_generator_without_a_return_keeps_its_last_yield_and_its_own_steps(workdir):
    def train(x):
        for epoch in (5, 10):
            yield {"step": epoch, "acc": x + epoch}

    sweep = _run(train, workdir, grid={"x": [1]})
    task = sweep.status()["task_id"].iloc[0]
    assert list(sweep.metrics(task, "acc")["step"]) == [5.0, 10.0]
    assert sweep.result(task) == {"step": 10, "acc": 11}
    assert list(sweep.results()["acc"]) == [11]


# -- item 3: return values --------------------------------------------------------------------------
def test_a_number_returned_is_the_objectives_value(workdir):
    sweep = _run(lambda x: x * 0.5, workdir, objective={"loss": "min"})
    assert sorted(sweep.results()["loss"]) == [0.5, 1.0]
    assert sweep.best(1)["x"].iloc[0] == 1


def test_a_number_returned_without_an_objective_is_the_value_column(workdir):
    sweep = _run(lambda x: x + 0.25, workdir)
    assert sorted(sweep.results()["value"]) == [1.25, 2.25]


def test_a_nested_dict_returned_flattens_as_log_metrics_does(workdir):
    sweep = _run(lambda x: {"val": {"loss": x / 4, "acc": {"top1": 0.9}}, "train": {"tags": [1, 2]}}, workdir)
    results = sweep.results()
    assert sorted(results["val.loss"]) == [0.25, 0.5]
    assert list(results["val.acc.top1"]) == [0.9, 0.9]


def test_numbers_are_kept_when_another_item_cannot_be_pickled_and_it_is_named(workdir):
    def train(x):
        return {"loss": x / 2, "lock": threading.Lock(), "nested": {"ok": 1, "gen": (i for i in range(2))}}

    sweep = _run(train, workdir)
    assert sweep.counts() == {"COMPLETED": 2}, sweep.status()[["state", "error"]]
    assert sorted(sweep.results()["loss"]) == [0.5, 1.0]
    assert list(sweep.results()["nested.ok"]) == [1, 1]
    task = sweep.status().set_index("x").loc[1, "task_id"]
    value = sweep.result(task)
    assert value["loss"] == 0.5 and value["nested"]["ok"] == 1
    assert "cannot be pickled" in value["lock"] and "lock" in value["lock"]
    stderr = sweep.logs(task, "stderr", 20)
    assert "'lock'" in stderr and "'nested.gen'" in stderr, stderr


def test_an_unpicklable_return_completes_and_is_named(workdir):
    sweep = _run(lambda x: threading.Lock(), workdir, grid={"x": [1]})
    assert sweep.counts() == {"COMPLETED": 1}, sweep.status()[["state", "error"]]
    task = sweep.status()["task_id"].iloc[0]
    assert "cannot be pickled" in sweep.result(task)
    assert "cannot be pickled" in sweep.logs(task, "stderr", 20)


# -- item 4: an environment without hsm_notebook --------------------------------------------------
@pytest.fixture(scope="module")
def bare_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A plain venv (no pip, no hsm_notebook, no cloudpickle) of this Python."""
    path = tmp_path_factory.mktemp("venv") / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    probe = subprocess.run([str(path / "bin" / "python"), "-c", "import hsm_notebook"], check=False,
                           capture_output=True, cwd=path)
    assert probe.returncode != 0, "the bare venv must not see hsm_notebook"
    return path


def test_a_function_runs_in_a_venv_without_hsm_notebook(workdir, bare_venv):
    def train(x):
        from hsm_notebook.metrics import log_metrics

        log_metrics(step=0, loss=x)
        return {"loss": x, "prefix": sys.prefix}

    source = LocalComputeSource("venv", 2, environment={"venv": str(bare_venv)})
    sweep = _run(train, workdir, source=source)
    assert sweep.counts() == {"COMPLETED": 2}, sweep.status()[["state", "error"]]
    assert set(sweep.results()["prefix"]) == {str(bare_venv)}  # it ran in the venv


def test_a_venv_whose_python_cannot_run_the_runner_is_refused_at_setup(workdir, bare_venv, tmp_path):
    # a sitecustomize that hides what travels: the runner cannot import, and setup says so
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(textwrap.dedent("""
        import sys
        class _Hide:
            def find_spec(self, name, path=None, target=None):
                if name == "cloudpickle":
                    raise ImportError("cloudpickle hidden by this test")
        sys.meta_path.insert(0, _Hide())
    """))
    source = LocalComputeSource("hidden", 1, environment={"venv": str(bare_venv),
                                                          "env": {"PYTHONPATH": f"{site}:$PYTHONPATH"}})
    sweep = Sweep(ParameterSpace(grid={"x": [1]}), lambda x: x, [source], workdir=workdir, poll_interval=0.2,
                  stall_timeout=1)
    with pytest.raises(Exception) as err:
        sweep.run()
    assert "cloudpickle" in str(err.value) and "cannot import" in str(err.value), str(err.value)
    assert sweep.counts() == {"PENDING": 1}
