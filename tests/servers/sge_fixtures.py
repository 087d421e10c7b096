"""pytest fixtures for the machine's Grid Engine cell as a single-node test cluster (see
tests/servers/sge.py).

Loaded from tests/conftest.py (``pytest_plugins``).

- ``sge_cluster``: session scope, the :class:`SGECluster` (queue ``all.q``, 8 slots, parallel
  environment ``smp``, consumable ``gpu=2``), started lazily the first time a test asks for it (~5 s
  from stopped daemons) and, at session end, the tests' jobs deleted and the daemons it started
  stopped by PID (~5 s).  Pass ``sge_cluster.sge_env`` to a source's ``sge_env=``, ``sge_cluster.env``
  to subprocesses, or use ``sge_cluster.run("qstat", ...)``.
- ``sge``: function scope, the same cluster, the test's jobs deleted after it.

Missing Grid Engine packages FAIL the test that needs the cluster, with the install hint; nothing
is skipped.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .sge import SGECluster, missing_requirements, start_cluster

__all__ = ["sge_cluster", "sge"]


@pytest.fixture(scope="session")
def sge_cluster() -> Iterator[SGECluster]:
    problem = missing_requirements()
    if problem:
        pytest.fail(problem, pytrace=False)
    try:
        cluster = start_cluster()
    except Exception as e:  # noqa: BLE001 - a broken cluster must fail loudly
        pytest.fail(f"could not start the Grid Engine test cluster: {e}", pytrace=False)
    yield cluster
    cluster.close()


@pytest.fixture()
def sge(sge_cluster: SGECluster) -> Iterator[SGECluster]:
    yield sge_cluster
    try:
        sge_cluster.cancel_all()
    except Exception as e:  # noqa: BLE001
        pytest.fail(f"restoring the Grid Engine test cluster: {e}", pytrace=False)
