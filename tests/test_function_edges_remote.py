"""Function sweeps at their edges on the loopback sshd and the single-node Slurm (issue 19, items
1 and 4): the kernel's own module runs there, not the synced project's; a task in a plain venv
without hsm_notebook runs the function."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from hsm_notebook import ParameterSpace, SlurmComputeSource, Sweep
from tests.contract.conftest import ssh_source

pytestmark = pytest.mark.slurm  # the SSH test adds its own marker


def _slurm(cluster: Any, name: str, **kwargs: Any) -> SlurmComputeSource:
    return SlurmComputeSource(name, 2, partition=cluster.partition, slurm_env=dict(cluster.env), poll_interval=0.3,
                              **kwargs)


@pytest.mark.ssh
def test_on_an_ssh_host_the_kernels_module_runs_not_the_synced_projects(notebook_module, ssh_host):
    helpers, project = notebook_module
    score = helpers.score

    def train(x):
        return {"s": score(x)}

    source = ssh_source(ssh_host, "fn-mod", 2, remote_root="~/hsm-fn-edges")
    sweep = Sweep(ParameterSpace(grid={"x": [1, 2]}), train, [source], workdir=project, poll_interval=0.2).run()
    assert sweep.counts() == {"COMPLETED": 2}, sweep.status()[["state", "error"]]
    assert sorted(sweep.results()["s"]) == [10, 20]


@pytest.mark.slurm
def test_on_slurm_the_kernels_module_runs_not_the_workdirs(notebook_module, slurm):
    _, project = notebook_module

    def train(x):
        import helpers

        return {"s": helpers.score(x)}

    sweep = Sweep(ParameterSpace(grid={"x": [1, 2]}), train, [_slurm(slurm, "fn-mod")], workdir=project,
                  poll_interval=0.2).run()
    assert sweep.counts() == {"COMPLETED": 2}, sweep.status()[["state", "error"]]
    assert sorted(sweep.results()["s"]) == [10, 20]


@pytest.mark.slurm
def test_on_slurm_a_function_runs_in_a_venv_without_hsm_notebook(slurm, workdir, tmp_path):
    venv = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    probe = subprocess.run([str(venv / "bin" / "python"), "-c", "import hsm_notebook"], check=False,
                           capture_output=True, cwd=venv)
    assert probe.returncode != 0, "the bare venv must not see hsm_notebook"

    def train(x):
        from hsm_notebook.metrics import log_metrics

        log_metrics(step=0, loss=x)
        return {"loss": x, "prefix": sys.prefix}

    source = _slurm(slurm, "fn-venv", environment={"venv": str(venv)})
    sweep = Sweep(ParameterSpace(grid={"x": [1, 2]}), train, [source], workdir=workdir, poll_interval=0.2).run()
    assert sweep.counts() == {"COMPLETED": 2}, sweep.status()[["state", "error"]]
    assert set(sweep.results()["prefix"]) == {str(venv)}
    task = sweep.status()["task_id"].iloc[0]
    assert list(sweep.metrics(task, "loss")["step"]) == [0.0]
