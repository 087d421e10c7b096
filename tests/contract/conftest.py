"""One fixture, every source: the contract suite runs against each kind in ``KINDS``.

Each kind is a factory ``(name, max_parallel_jobs, **constructor_kwargs) -> ComputeSource``; kinds backed by a
real server (sshd, Slurm, Grid Engine) get it from a session fixture and fail loudly without it.
"""

from __future__ import annotations

import pytest

from hsm_notebook import LocalComputeSource, SSHComputeSource

KINDS = ["local", "ssh", "slurm", "sge"]


def ssh_source(host, name="src", slots=4, **kwargs) -> SSHComputeSource:  # noqa: D401
    """An SSH source for a test host (tests.servers.sshd.SSHHost)."""
    return SSHComputeSource(host.host, name, slots, port=host.port, username=host.user,
                            client_keys=[str(host.client_key)], known_hosts=str(host.known_hosts),
                            cancel_grace=2.0, keepalive_interval=1.0, **kwargs)


@pytest.fixture(params=KINDS)
def make_source(request):
    kind = request.param
    if kind == "local":
        return lambda name="src", slots=4, **kw: LocalComputeSource(name, slots, cancel_grace=2.0, **kw)
    if kind == "ssh":
        host = request.getfixturevalue("ssh_host")
        return lambda name="src", slots=4, **kw: ssh_source(host, name, slots, **kw)
    if kind == "slurm":
        from hsm_notebook import SlurmComputeSource

        cluster = request.getfixturevalue("slurm_cluster")
        return lambda name="src", slots=4, **kw: SlurmComputeSource(name, slots, partition=cluster.partition,
                                                                    slurm_env=dict(cluster.env), poll_interval=0.3,
                                                                    **kw)
    if kind == "sge":
        from hsm_notebook import SGEComputeSource

        cluster = request.getfixturevalue("sge_cluster")
        return lambda name="src", slots=4, **kw: SGEComputeSource(name, slots, queue=cluster.queue,
                                                                  sge_env=cluster.sge_env, poll_interval=0.3, **kw)
    raise AssertionError(f"no factory for source kind {kind!r}")
