"""Test servers for the notebooks under nbval.

``02_remote_machines.ipynb`` reads its hosts from environment variables (a reader puts
their own host names there instead).  When pytest collects it, this starts the same
loopback sshd and single-node Slurm the test suite uses and exports their details; the
kernel nbval starts inherits them.  Everything is stopped at the end of the session.
"""

from __future__ import annotations

import os

import pytest

_started: list = []


def pytest_collect_file(file_path, parent):
    if file_path.name == "02_remote_machines.ipynb" and not _started:
        from tests.servers.slurm import start_cluster
        from tests.servers.sshd import SSHServer

        server = SSHServer()
        _started.append(server)
        try:
            a, b = server.start("127.0.0.12"), server.start("127.0.0.13")
            cluster = start_cluster()
        except Exception as exc:  # noqa: BLE001 - a missing server fails loudly
            pytest.fail(f"could not start the notebook's test servers: {exc}", pytrace=False)
        _started.append(cluster)
        for i, h in enumerate((a, b), start=1):
            os.environ[f"HSM_DEMO_HOST{i}"] = h.host
            os.environ[f"HSM_DEMO_PORT{i}"] = str(h.port)
            os.environ[f"HSM_DEMO_USER{i}"] = h.user
            os.environ[f"HSM_DEMO_KEY{i}"] = str(h.client_key)
            os.environ[f"HSM_DEMO_KNOWN_HOSTS{i}"] = str(h.known_hosts)
        os.environ["HSM_DEMO_SLURM_CONF"] = str(cluster.conf)
        os.environ["HSM_DEMO_PARTITION"] = cluster.partition
    return None


def pytest_sessionfinish(session, exitstatus):
    while _started:
        thing = _started.pop()
        try:
            thing.close()
        except Exception:  # noqa: BLE001 - best effort at the very end
            pass
