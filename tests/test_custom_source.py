"""A user-written ComputeSource plugs into Sweep without touching the package."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest

from hsm_notebook import ComputeSource, ConfigError, ParameterSpace, Sweep


class ThreadSource(ComputeSource):
    """What a user might write: each job runs with subprocess.run in a worker thread,
    and states are the reference API's plain strings."""

    def __init__(self, name: str = "threads", max_parallel_jobs: int = 2):
        super().__init__(name, "threads", max_parallel_jobs)
        self.futures: dict[str, asyncio.Future] = {}

    async def setup(self, sweep_dir, sweep_id):
        return True

    async def submit_job(self, params, job_name, sweep_id, wandb_group=None):
        job_dir = self.job_dir(job_name)
        job_dir.mkdir(parents=True, exist_ok=True)
        argv, env = self.job_command(params, job_name, sweep_id, wandb_group, str(job_dir))
        argv[0] = sys.executable

        def run() -> int:
            with open(job_dir / "stdout.log", "w") as out, open(job_dir / "stderr.log", "w") as err:
                return subprocess.run(argv, cwd=self.template.workdir, env={**os.environ, **env},
                                      stdout=out, stderr=err).returncode

        self.futures[job_name] = asyncio.get_running_loop().run_in_executor(None, run)
        return job_name

    async def get_job_status(self, job_id):
        future = self.futures[job_id]
        if not future.done():
            return "running"
        return "COMPLETED" if future.result() == 0 else "FAILED"

    async def cancel_job(self, job_id):
        return False

    async def collect_results(self, job_ids=None):
        return True

    async def health_check(self):
        return {"status": "healthy"}

    async def cleanup(self):
        self.futures.clear()


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


class HostSource(ThreadSource):
    """Its constructor takes what ``describe()`` does not record, and it does not extend describe()."""

    def __init__(self, host: str):
        super().__init__(host, 1)


def test_attach_asks_for_a_user_source_it_cannot_rebuild(workdir):
    sweep = Sweep(ParameterSpace(grid={"x": [1]}), ["python", "job.py"], [HostSource("box")], workdir=workdir)
    with pytest.raises(ConfigError, match="'threads' source named 'box'.*pass it again"):
        Sweep.attach(sweep.directory)
    again = Sweep.attach(sweep.directory, sources=[HostSource("box")])
    assert again.wait(timeout=60).counts() == {"COMPLETED": 1}
