"""pytest fixtures for real OpenSSH test hosts on loopback (see tests/servers/sshd.py).

Load them from tests/conftest.py with::

    pytest_plugins = ["tests.servers.fixtures"]

Hosts are started lazily, the first time a test asks for one, and torn down (user,
processes, sshd, temp files) when the session ends.  A missing sshd FAILS the test
that needs it; nothing is skipped.

- ``ssh_server``: the session's :class:`SSHServer` (start more hosts with
  ``ssh_server.start("127.0.0.5", bashrc=...)``; it tears them down at session end).
- ``ssh_host``: 127.0.0.2, clean ~/.bashrc (Debian's skeleton).
- ``ssh_host2``: 127.0.0.3, clean ~/.bashrc, another user.
- ``ssh_host_heavy_rc``: 127.0.0.4, ~/.bashrc costing ~200 ms of CPU per channel.
- ``ssh_host_fresh``: function scope, 127.0.0.5, a new user and sshd for one test
  (for fault injection: kill_connections / hang / stop_listener), removed after it.

Session hosts are shared: a test that injects a fault into one of them must undo it
(``resume``, ``restart_listener``) and kill the detached jobs it leaves behind
(``ssh_server.kill_user_processes(h)``), or use ``ssh_host_fresh``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .sshd import HEAVY_BASHRC, SSHHost, SSHServer, missing_requirements

__all__ = ["ssh_server", "ssh_host", "ssh_host2", "ssh_host_heavy_rc", "ssh_host_fresh"]


def _start(server: SSHServer, host: str, **kw) -> SSHHost:
    try:
        return server.start(host, **kw)
    except Exception as e:  # noqa: BLE001 - a broken server must fail loudly
        pytest.fail(f"could not start test sshd on {host}: {e}", pytrace=False)


@pytest.fixture(scope="session")
def ssh_server() -> Iterator[SSHServer]:
    problem = missing_requirements()
    if problem:
        pytest.fail(problem, pytrace=False)
    server = SSHServer()
    yield server
    server.close()


@pytest.fixture(scope="session")
def ssh_host(ssh_server: SSHServer) -> SSHHost:
    return _start(ssh_server, "127.0.0.2")


@pytest.fixture(scope="session")
def ssh_host2(ssh_server: SSHServer) -> SSHHost:
    return _start(ssh_server, "127.0.0.3")


@pytest.fixture(scope="session")
def ssh_host_heavy_rc(ssh_server: SSHServer) -> SSHHost:
    return _start(ssh_server, "127.0.0.4", bashrc=HEAVY_BASHRC)


@pytest.fixture()
def ssh_host_fresh(ssh_server: SSHServer) -> Iterator[SSHHost]:
    h = _start(ssh_server, "127.0.0.5")
    yield h
    ssh_server.stop(h)
