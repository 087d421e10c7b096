"""Extending a sweep: adding values to its space runs only the new combinations; the earlier results
(the same task ids) stay and show with them."""

from __future__ import annotations

import pytest

from hsm_notebook import ConfigError, LocalComputeSource, ParameterSpace, Sweep


def test_values_added_to_a_finished_sweep_run_only_the_new_tasks(workdir):
    log = workdir / "runs.txt"

    def train(lr, width):
        with open(log, "a") as f:
            f.write(f"{lr}-{width}\n")
        return {"loss": lr * width}

    sources = [LocalComputeSource(max_parallel_jobs=2)]
    first = Sweep(ParameterSpace(grid={"lr": [0.1, 0.2], "width": [1]}), train, sources, workdir=workdir,
                  name="grow", sweeps_root=workdir / "sweeps", poll_interval=0.1).run()
    before = first.results().set_index("task_id")
    wider = ParameterSpace(grid={"lr": [0.1, 0.2, 0.3], "width": [1, 2]})
    with pytest.raises(ConfigError, match=r"extend=True"):  # the cell re-run with a new value: the way is named
        Sweep(wider, train, sources, workdir=workdir, name="grow", sweeps_root=workdir / "sweeps")
    again = Sweep(wider, train, sources, workdir=workdir, name="grow", sweeps_root=workdir / "sweeps",
                  extend=True, poll_interval=0.1)
    assert again.directory == first.directory and len(again.status()) == 6
    again.run()
    runs = log.read_text().split()
    assert sorted(runs) == sorted(["0.1-1", "0.2-1", "0.1-2", "0.2-2", "0.3-1", "0.3-2"])  # each once
    results = again.results().set_index("task_id")
    assert len(results) == 6
    for tid in before.index:  # the earlier results, unchanged, beside the new ones
        assert results.loc[tid, "loss"] == before.loc[tid, "loss"]
    assert again.param_names == ["lr", "width"]
    # the same cell again: it is that sweep, nothing to add
    same = Sweep(wider, train, sources, workdir=workdir, name="grow", sweeps_root=workdir / "sweeps")
    assert same.directory == first.directory and same.extend(wider) == 0


def test_extend_refuses_what_the_command_cannot_carry_and_a_search(workdir, tmp_path):
    sweep = Sweep(ParameterSpace(grid={"x": [1]}), ["python", "job.py"], [LocalComputeSource()], workdir=workdir,
                  directory=tmp_path / "s")
    with pytest.raises(ConfigError, match="NUL"):
        sweep.extend(ParameterSpace(grid={"x": ["a\0b"]}))
    assert len(sweep.status()) == 1  # refused before anything was written
