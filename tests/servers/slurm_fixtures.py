"""pytest fixtures for a real single-node Slurm cluster on loopback (see
tests/servers/slurm.py).

Load them from tests/conftest.py with::

    pytest_plugins = ["tests.servers.fixtures", "tests.servers.slurm_fixtures"]

- ``slurm_cluster``: session scope, the :class:`SlurmCluster` (partition
  ``debug``, node ``hsmtnode``, 8 CPUs), started lazily the first time a test asks
  for it (~3 s) and torn down at session end (jobs cancelled, slurmd, slurmctld,
  munged stopped by PID, temp dir removed).  Pass ``slurm_cluster.env`` to
  subprocesses (it holds SLURM_CONF) or use ``slurm_cluster.run("squeue", ...)``.
- ``slurm``: function scope, the same cluster, put back after the test: jobs
  cancelled, slurmd running again, MaxArraySize back to the session's value.  Use
  it for tests that stop slurmd or change MaxArraySize.

Missing Slurm/munge binaries FAIL the test that needs the cluster, with an install
hint; nothing is skipped.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .slurm import SlurmCluster, missing_requirements, start_cluster

__all__ = ["slurm_cluster", "slurm"]


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    problem = missing_requirements()
    if problem:
        pytest.fail(problem, pytrace=False)
    try:
        cluster = start_cluster()
    except Exception as e:  # noqa: BLE001 - a broken cluster must fail loudly
        pytest.fail(f"could not start the Slurm test cluster: {e}", pytrace=False)
    yield cluster
    cluster.close()


@pytest.fixture()
def slurm(slurm_cluster: SlurmCluster) -> Iterator[SlurmCluster]:
    size = slurm_cluster.max_array_size
    yield slurm_cluster
    errors = []
    for what, fn in (
        ("start slurmd", slurm_cluster.start_slurmd),
        ("cancel jobs", slurm_cluster.cancel_all),
    ):
        try:
            fn()
        except Exception as e:  # noqa: BLE001
            errors.append(f"{what}: {e}")
    if slurm_cluster.max_array_size != size:
        try:
            slurm_cluster.set_max_array_size(size)
        except Exception as e:  # noqa: BLE001
            errors.append(f"restore MaxArraySize={size}: {e}")
    if errors:
        pytest.fail("restoring the Slurm test cluster: " + "; ".join(errors), pytrace=False)
