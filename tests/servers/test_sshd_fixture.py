"""Tests of the sshd test fixture itself (tests/servers/sshd.py), with asyncssh
directly.  Each fault test gets its own host, so a failure cannot leave a hung or
stopped server behind for the next test."""

from __future__ import annotations

import asyncio
import errno
import os
import shlex
import subprocess
import time
from pathlib import Path

import asyncssh
import pytest

from .sshd import (
    HEAVY_BASHRC,
    SSHHost,
    SSHServer,
    empty_known_hosts,
    missing_requirements,
    other_host_key_known_hosts,
    small_tmpfs,
)


@pytest.fixture(scope="module")
def server():
    problem = missing_requirements()
    if problem:
        pytest.fail(problem, pytrace=False)
    s = SSHServer()
    yield s
    s.close()


@pytest.fixture()
def host(server: SSHServer):
    """A fresh host on 127.0.0.2 for one test, torn down (and checked) afterwards."""
    h = server.start("127.0.0.2")
    yield h
    server.stop(h)
    _assert_gone(h)


def _assert_gone(h: SSHHost) -> None:
    assert subprocess.run(["getent", "passwd", h.user], capture_output=True).returncode == 2
    assert not h.home.exists()
    assert h.dir is not None and not h.dir.exists()
    st = _proc_state(h.sshd_pid)
    assert st in (None, "Z"), f"listener {h.sshd_pid} still there: {st}"
    for pid in _all_pids():
        try:
            uids = Path(f"/proc/{pid}/status").read_text().split("Uid:")[1].split()[:2]
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, IndexError):
            continue
        if _proc_state(pid) == "Z":
            continue
        assert str(h.uid) not in uids, f"process {pid} of {h.user} left: {cmd!r}"
        assert not cmd.startswith(f"sshd: {h.user}".encode()), f"connection {pid} left"


def _all_pids():
    return [int(n) for n in os.listdir("/proc") if n.isdigit()]


def _proc_state(pid: int):
    try:
        return Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0].decode()
    except (OSError, IndexError):
        return None


def connect(h: SSHHost, **kw):
    return asyncssh.connect(
        h.host, h.port, username=h.user, client_keys=[str(h.client_key)],
        known_hosts=str(h.known_hosts), **kw,
    )


def run(coro, timeout: float = 20.0):
    # On the package's loop thread: Playwright's sync API (the browser tests, session-scoped)
    # keeps a loop running in the main thread, where asyncio.run() would refuse to start.
    from hsm_notebook.core._loop import run_sync

    return run_sync(asyncio.wait_for(coro, timeout))


# --------------------------------------------------------------------------- basics


def test_whoami_sftp_rsync(host: SSHHost, tmp_path: Path) -> None:
    async def go():
        async with connect(host) as conn:
            r = await conn.run("whoami; echo $HOME; echo $0", check=True)
            assert r.stdout.split() == [host.user, str(host.home), "bash"]
            async with conn.start_sftp_client() as sftp:
                await sftp.put(str(tmp_path / "a.txt"), "a.txt")
                assert await sftp.listdir(".") and "a.txt" in await sftp.listdir(".")

    (tmp_path / "a.txt").write_text("hello")
    run(go())
    # the OpenSSH client with h.ssh_command() (rsync -e) also verifies the host key
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "b.txt").write_text("world")
    subprocess.run(
        ["rsync", "-a", "-e", shlex.join(host.ssh_command()),
         f"{tmp_path / 'd'}/", f"{host.destination}:d/"],
        check=True, capture_output=True, timeout=20,
    )
    assert (host.home / "d" / "b.txt").read_text() == "world"
    assert (host.home / "a.txt").read_text() == "hello"


def test_host_key_checks(host: SSHHost) -> None:
    assert host.known_hosts.read_text() == f"[{host.host}]:{host.port} {host.host_key_pub}\n"
    other = other_host_key_known_hosts(host)
    assert other.read_text().startswith(f"[{host.host}]:{host.port} ssh-ed25519 ")
    assert other.read_text().split()[2] != host.host_key_pub.split()[1]

    async def go(known_hosts, client_keys=None):
        async with asyncssh.connect(
            host.host, host.port, username=host.user,
            client_keys=client_keys or [str(host.client_key)], known_hosts=str(known_hosts),
        ) as conn:
            return (await conn.run("whoami")).stdout.strip()

    with pytest.raises(asyncssh.HostKeyNotVerifiable):
        run(go(other))
    with pytest.raises(asyncssh.HostKeyNotVerifiable):
        run(go(empty_known_hosts()))
    with pytest.raises(asyncssh.PermissionDenied):
        run(go(host.known_hosts, [asyncssh.generate_private_key("ssh-ed25519")]))
    assert run(go(host.known_hosts)) == host.user


# --------------------------------------------------------------------------- faults


def test_kill_connections_drops_running_command(server: SSHServer, host: SSHHost) -> None:
    async def go():
        async with connect(host) as conn:
            task = asyncio.ensure_future(conn.run("sleep 30"))
            deadline = time.monotonic() + 5
            while not any(
                Path(f"/proc/{p}/cmdline").read_bytes().startswith(b"sleep")
                for p in server.user_pids(host)
            ):
                assert time.monotonic() < deadline, "remote sleep never started"
                await asyncio.sleep(0.05)
            assert len(server.connection_pids(host)) >= 2  # [priv] and @notty
            killed = await asyncio.to_thread(server.kill_connections, host)
            assert killed
            r = await asyncio.wait_for(task, 5)  # bounded: a connection not dropped times out here
            # RECIPES: a dropped connection does NOT raise; exit_status is None
            assert r.exit_status is None and r.returncode is None
            with pytest.raises((asyncssh.ChannelOpenError, asyncssh.ConnectionLost, OSError)):
                await conn.run("true")
        assert server.connection_pids(host) == []
        # the remote `sleep 30` (no pty) outlived its connection; teardown kills it
        assert server.user_pids(host)
        server.kill_user_processes(host)
        assert server.user_pids(host) == []
        # the listener was not touched: new connections work
        async with connect(host) as conn:
            assert (await conn.run("whoami")).stdout.strip() == host.user

    run(go())


def test_hang_and_keepalive_then_resume(server: SSHServer, host: SSHHost) -> None:
    """Only keepalive notices a hung host.  What surfaces (asyncssh 2.24): stream reads
    and SFTP calls raise ConnectionLost('Server not responding to keepalive'); an
    in-flight conn.run() returns exit_status None; a later run() raises ChannelOpenError."""

    async def go():
        async with connect(host, keepalive_interval=1, keepalive_count_max=3) as conn:
            proc = await conn.create_process("sleep 30")
            pending_run = asyncio.ensure_future(conn.run("sleep 30"))
            deadline = time.monotonic() + 10
            while sum(Path(f"/proc/{p}/cmdline").read_bytes().startswith(b"sleep")
                      for p in server.user_pids(host)) < 2:  # both channels' sleeps run before the hang
                assert time.monotonic() < deadline, "the two remote sleeps never started"
                await asyncio.sleep(0.05)
            stopped = server.hang(host)
            assert host.sshd_pid in stopped and len(stopped) >= 3
            t0 = time.monotonic()
            try:  # noticed by keepalive (within the wait_for's 10 s, or it would time out instead)
                with pytest.raises(asyncssh.ConnectionLost, match="keepalive"):
                    await asyncio.wait_for(proc.stdout.readline(), 10)
                took = time.monotonic() - t0  # printed, not asserted: timings belong in bench/
                r = await asyncio.wait_for(pending_run, 2)
                assert r.exit_status is None
                with pytest.raises(asyncssh.ChannelOpenError):
                    await conn.run("true")
                # a new connection to a hung host gets no banner: it times out
                with pytest.raises((asyncio.TimeoutError, TimeoutError)):
                    await asyncio.wait_for(asyncssh.connect(**host.connect_kwargs()), 1.0)
            finally:
                server.resume(host)
        async with connect(host) as conn:
            assert (await conn.run("whoami")).stdout.strip() == host.user
        return took

    took = run(go(), timeout=30)
    print(f"hung host noticed after {took:.1f} s")


def test_stop_and_restart_listener(server: SSHServer, host: SSHHost) -> None:
    async def go():
        async with connect(host) as established:
            old_pid = host.sshd_pid
            server.stop_listener(host)
            assert not server.listener_alive(host)
            with pytest.raises(ConnectionRefusedError):
                await connect(host)
            # established connections keep their per-connection sshd
            assert (await established.run("echo still")).stdout.strip() == "still"
            server.restart_listener(host)
            assert server.listener_alive(host) and host.sshd_pid != old_pid
            async with connect(host) as conn:  # same known_hosts, same port
                assert (await conn.run("whoami")).stdout.strip() == host.user
            assert (await established.run("echo again")).stdout.strip() == "again"

    run(go())


# --------------------------------------------------------------------------- hosts


def test_two_hosts_at_once(server: SSHServer) -> None:
    a = server.start("127.0.0.2")
    b = server.start("127.0.0.3")
    try:
        assert a.user != b.user and a.host_key_pub != b.host_key_pub

        async def who(h):
            async with connect(h) as conn:
                r = await conn.run("whoami; echo $SSH_CONNECTION")
                return r.stdout.split()

        async def go():
            return await asyncio.gather(who(a), who(b))

        (ua, *ca), (ub, *cb) = run(go())
        assert (ua, ub) == (a.user, b.user)
        assert ca[2:] == [a.host, str(a.port)] and cb[2:] == [b.host, str(b.port)]
        # the second host's key is not valid for the first one
        with pytest.raises(asyncssh.HostKeyNotVerifiable):
            run(asyncssh.connect(**a.connect_kwargs(known_hosts=str(b.known_hosts))))
    finally:
        server.stop(a)
        server.stop(b)
    _assert_gone(a)
    _assert_gone(b)


def test_heavy_bashrc_costs_each_channel(server: SSHServer) -> None:
    heavy = server.start("127.0.0.4", bashrc=HEAVY_BASHRC)
    clean = server.start("127.0.0.2")
    try:
        async def timed(h):
            async with connect(h) as conn:
                await conn.run("true")  # warm up
                t0 = time.monotonic()
                r = await conn.run("true")
                assert r.exit_status == 0 and r.stdout == "" and r.stderr == ""
                return time.monotonic() - t0

        t_heavy = run(timed(heavy))
        t_clean = run(timed(clean))
        print(f"run('true'): heavy rc {t_heavy * 1000:.0f} ms, clean {t_clean * 1000:.0f} ms")
        assert t_heavy >= 0.2
        assert t_clean < t_heavy - 0.1
    finally:
        server.stop(heavy)
        server.stop(clean)


def test_refuses_non_loopback(server: SSHServer) -> None:
    with pytest.raises(ValueError):
        server.start("10.0.0.1")
    with pytest.raises(ValueError):
        server.start("0.0.0.0")


# --------------------------------------------------------------------------- disk


def test_small_tmpfs(tmp_path: Path) -> None:
    target = tmp_path / "small"
    with small_tmpfs(target, size="1m") as p:
        assert any(line.split()[1] == str(p) for line in Path("/proc/mounts").read_text().splitlines())
        assert oct(p.stat().st_mode & 0o777) == "0o777"
        (p / "ok").write_bytes(b"x" * 100_000)
        with pytest.raises(OSError) as e:
            (p / "big").write_bytes(b"x" * 2_000_000)
        assert e.value.errno == errno.ENOSPC
    assert not any(line.split()[1] == str(target) for line in Path("/proc/mounts").read_text().splitlines())
    assert not target.exists()
