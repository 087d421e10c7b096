"""A user-written ComputeSource plugs into Sweep without touching the package."""

from __future__ import annotations

import pytest

from hsm_notebook import ConfigError, ParameterSpace, Sweep
from tests.sources import HostSource, ThreadSource


def test_a_user_source_runs_a_sweep(workdir):
    space = ParameterSpace(grid={"x": [1, 2, 3, 4]}, paired=[{"exit": [0, 2]}])
    sweep = Sweep(space, ["python", "job.py"], [ThreadSource()], workdir=workdir, poll_interval=0.1).run()
    status = sweep.status()
    assert sorted(status["state"].astype(str)) == ["COMPLETED"] * 4 + ["FAILED"] * 4
    assert set(status["source"]) == {"threads"}
    assert sorted(sweep.results()["score"]) == [2.0, 4.0, 6.0, 8.0]


def test_attach_rebuilds_a_user_source_from_its_record(workdir):
    sweep = Sweep(ParameterSpace(grid={"x": [1]}), ["python", "job.py"], [ThreadSource("mine", 1)], workdir=workdir)
    again = Sweep.attach(sweep.directory)
    assert [(type(s), s.name, s.max_parallel_jobs) for s in again.sources] == [(ThreadSource, "mine", 1)]
    assert again.wait(timeout=60).counts() == {"COMPLETED": 1}


def test_attach_asks_for_a_user_source_it_cannot_rebuild(workdir):
    sweep = Sweep(ParameterSpace(grid={"x": [1]}), ["python", "job.py"], [HostSource("box")], workdir=workdir)
    with pytest.raises(ConfigError, match="'threads' source named 'box'.*pass it again"):
        Sweep.attach(sweep.directory)
    again = Sweep.attach(sweep.directory, sources=[HostSource("box")])
    assert again.wait(timeout=60).counts() == {"COMPLETED": 1}
