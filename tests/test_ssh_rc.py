"""A login rc file (``conda init``, ``pyenv init``: often hundreds of ms) runs once per host per sweep.

sshd starts every channel's command through the user's login shell, and Debian's bash reads
``~/.bashrc`` for commands sent over SSH.  The persistent shell is the only channel that starts one:
starts, polls, step reads and every collection batch go through it (the fixture's sshd serves SFTP
in-process, so the project sync starts no shell).  Counted by an rc file that appends a line each
time it runs, read from this machine's disk (reading it over SSH would run it once more).
"""

from __future__ import annotations

import pytest

from hsm_notebook import ParameterSpace, Sweep
from tests.contract.conftest import ssh_source

#: Appends a line each time a login shell reads it.
RC = "echo run >> ~/rc_runs\n"


@pytest.fixture(scope="module")
def counted_hosts(ssh_server):
    hosts = [ssh_server.start(f"127.0.0.{n}", bashrc=RC) for n in (46, 47)]
    yield hosts
    for h in hosts:
        ssh_server.stop(h)


def _runs(h) -> int:
    path = h.home / "rc_runs"
    return len(path.read_text().split()) if path.exists() else 0


def _count_batches(source, batches: dict[str, int]) -> None:
    collect = source.collect_results

    async def counted(job_ids=None):
        batches[source.name] += 1
        return await collect(job_ids)

    batches[source.name] = 0
    source.collect_results = counted


def test_the_rc_file_runs_once_per_host_whatever_the_tasks_and_collection_batches(workdir, counted_hosts):
    before = [_runs(h) for h in counted_hosts]
    sources = [ssh_source(h, f"rc{i}", 2) for i, h in enumerate(counted_hosts)]
    batches: dict[str, int] = {}
    for source in sources:
        _count_batches(source, batches)
    sweep = Sweep(ParameterSpace(grid={"x": list(range(24))}, fixed={"sleep": 0.05}), ["python", "job.py"],
                  sources, workdir=workdir, poll_interval=0.1).run()
    assert sweep.counts() == {"COMPLETED": 24}, sweep.status()[["state", "error"]]
    assert all(n >= 2 for n in batches.values()), batches  # several collection batches on each host
    assert [_runs(h) - b for h, b in zip(counted_hosts, before, strict=True)] == [1, 1]
    assert [s.conn.streams_opened for s in sources] == [0, 0]


def test_a_function_sweep_runs_the_rc_file_once_per_host(workdir, counted_hosts):
    def work(x):
        return {"y": x * 2}

    before = _runs(counted_hosts[0])
    sweep = Sweep(ParameterSpace(grid={"x": list(range(12))}), work, [ssh_source(counted_hosts[0], "rcfn", 3)],
                  workdir=workdir, poll_interval=0.1).run()
    assert sweep.counts() == {"COMPLETED": 12}, sweep.status()[["state", "error"]]
    assert sorted(sweep.results()["y"]) == [2 * x for x in range(12)]
    assert _runs(counted_hosts[0]) - before == 1
