"""Real users' hosts: rc files that print or break, known_hosts as OpenSSH writes it, ~/.ssh/config aliases.

Hosts here run Debian's external ``sftp-server`` (``Subsystem sftp /usr/lib/openssh/sftp-server``),
which, unlike ``internal-sftp``, starts the login shell and its rc files.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import asyncssh
import pytest

from hsm_notebook import ConnectError, ParameterSpace, Sweep
from hsm_notebook.core._loop import run_sync
from hsm_notebook.sources.ssh_connection import SSHConnection, SSHTarget
from tests.contract.conftest import ssh_source
from tests.helpers import job_sweep
from tests.servers.sshd import SSH_KEYGEN, _keygen

SFTP_SERVER = "/usr/lib/openssh/sftp-server"
BANNER = 'echo "Welcome to the cluster, $USER!"\necho "quota: 12 GB used" >&2\n'
FIX = '[ -z "$PS1" ] && return'


@pytest.fixture(scope="module")
def banner_host(ssh_server):
    h = ssh_server.start("127.0.0.41", bashrc=BANNER, sftp_server=SFTP_SERVER)
    yield h
    ssh_server.stop(h)


@pytest.fixture(scope="module")
def slow_rc_host(ssh_server):
    # 300 ms per login shell, counted in ~/rc_runs (read here from the local disk: reading it over
    # SSH would run the rc file once more)
    h = ssh_server.start("127.0.0.42", bashrc="echo run >> ~/rc_runs\nsleep 0.3\n", sftp_server=SFTP_SERVER)
    yield h
    ssh_server.stop(h)


@pytest.fixture(scope="module")
def plain_host(ssh_server):
    h = ssh_server.start("127.0.0.43", sftp_server=SFTP_SERVER)
    yield h
    ssh_server.stop(h)


def _connect(h, **kw) -> SSHConnection:
    conn = SSHConnection(SSHTarget(h.host, h.port, h.user, [str(h.client_key)], str(h.known_hosts), **kw), "t")
    run_sync(conn.connect())
    return conn


# -- rc files -------------------------------------------------------------------------------------

def test_a_banner_is_detected_at_connect_and_named(banner_host, plain_host):
    conn = _connect(banner_host)
    try:
        assert conn.clean_channels is False
        assert "~/.bashrc" in conn.rc_note and "Welcome to the cluster" in conn.rc_note and FIX in conn.rc_note
        assert run_sync(conn.run("echo hi")).stdout == "hi\n"  # the persistent shell skips the banner
    finally:
        run_sync(conn.close())
    conn = _connect(plain_host)
    try:
        assert conn.clean_channels is True and conn.rc_note is None
    finally:
        run_sync(conn.close())


def test_sftp_works_despite_a_banner(banner_host, tmp_path):
    """Both SFTP users (project sync and job collection without tar) go through conn.sftp()."""
    conn = _connect(banner_host)
    try:
        async def go():
            sftp = await conn.sftp()
            (tmp_path / "up.txt").write_text("hello")
            await sftp.put(str(tmp_path / "up.txt"), "up.txt")
            await sftp.get("up.txt", str(tmp_path / "down.txt"))
            return await sftp.listdir(".")
        assert "up.txt" in run_sync(go())
        assert (tmp_path / "down.txt").read_text() == "hello"
    finally:
        run_sync(conn.close())


def test_a_sweep_runs_on_a_host_whose_bashrc_prints_a_banner(workdir, banner_host):
    source = ssh_source(banner_host, "b", 1)
    assert job_sweep(workdir, [source]).run().counts() == {"COMPLETED": 1}
    assert source.facts["sync"]["method"] == "sftp"


def test_a_large_project_skips_rsync_when_the_bashrc_prints(workdir, banner_host):
    for i in range(250):  # rsync's threshold: rsync's own ssh would read the banner as its protocol
        (workdir / f"m{i}.txt").write_text(str(i))
    source = ssh_source(banner_host, "b", 1)
    assert job_sweep(workdir, [source]).run().counts() == {"COMPLETED": 1}
    assert source.facts["sync"]["method"] == "sftp" and source.facts["sync"]["sent"] == 251


@pytest.mark.parametrize("rc", ["exit 0\n", "set -e\ngrep -q conda /nonexistent/file\n"])
def test_an_rc_file_that_ends_the_shell_is_named_with_the_fix(ssh_server, rc):
    h = ssh_server.start("127.0.0.44", bashrc=rc)
    try:
        with pytest.raises(ConnectError) as err:
            _connect(h)
        msg = str(err.value)
        assert "~/.bashrc" in msg and FIX in msg and "case $- in *i*) ;; *) return;; esac" in msg
        assert "0 bytes read" not in msg
    finally:
        ssh_server.stop(h)


def _rc_runs(h) -> int:
    path = h.home / "rc_runs"
    return len(path.read_text().split()) if path.exists() else 0


def test_a_slow_rc_file_runs_once_per_channel_and_channels_are_few(workdir, slow_rc_host):
    """Setup opens the persistent shell and, for the project sync, one SFTP channel (Debian's external
    sftp-server starts the login shell): nothing else starts one (the wake-up watcher and every
    collection batch run in the persistent shell)."""
    h = slow_rc_host
    before = _rc_runs(h)
    source = ssh_source(h, "slow", 1)
    assert job_sweep(workdir, [source]).run().counts() == {"COMPLETED": 1}
    assert source.conn.channels_opened == 2 and source.conn.streams_opened == 0
    assert _rc_runs(h) - before == 2
    before = _rc_runs(h)
    source = ssh_source(h, "slow", 1, sync=False)  # no project: the job runs without job.py
    sweep = Sweep(ParameterSpace(grid={"x": [2]}), ["python", "-c", "pass"], [source], workdir=workdir,
                  poll_interval=0.2)
    assert sweep.run().counts() == {"COMPLETED": 1}
    assert source.conn.channels_opened == 1 and source.conn.streams_opened == 0
    assert _rc_runs(h) - before == 1


# -- host keys ------------------------------------------------------------------------------------

def _fingerprint(h) -> str:
    return asyncssh.import_public_key(h.host_key_pub).get_fingerprint("sha256")


def _changed_known_hosts(h, tmp_path, names: str, hashed: bool) -> Path:
    """known_hosts naming ``names`` with a key that is NOT the host's (a reinstalled host or an attack)."""
    pub = _keygen(tmp_path / "other_key", "other")
    kh = tmp_path / "known_hosts"
    kh.write_text(f"{names} {pub}\nother.example {pub}\n")  # another host's entry stays
    if hashed:  # Debian's ssh_config: HashKnownHosts yes
        subprocess.run([SSH_KEYGEN, "-H", "-f", str(kh)], check=True, capture_output=True)
        Path(str(kh) + ".old").unlink()
        assert kh.read_text().startswith("|1|")
    return kh


@pytest.mark.parametrize("form", ["hashed", "host,ip"])
def test_trust_new_host_never_records_a_changed_key(workdir, plain_host, tmp_path, form):
    h = plain_host
    names = h.host_key_alias if form == "hashed" else f"{h.host_key_alias},[localhost]:{h.port}"
    kh = _changed_known_hosts(h, tmp_path, names, hashed=form == "hashed")
    before = kh.read_text()
    from hsm_notebook import SSHComputeSource
    source = SSHComputeSource(h.host, "k", 1, port=h.port, username=h.user, client_keys=[str(h.client_key)],
                          known_hosts=str(kh), trust_new_host=True)
    sweep = job_sweep(workdir, [source])
    with pytest.raises(ConnectError) as err:
        sweep.run()
    assert kh.read_text() == before
    msg = str(err.value)
    assert "CHANGED" in msg and _fingerprint(h) in msg
    assert f"ssh-keygen -R '[{h.host}]:{h.port}' -f {kh}" in msg
    assert sweep.counts() == {"PENDING": 1}


def test_a_host_ip_entry_with_the_right_key_is_accepted(workdir, plain_host, tmp_path):
    h = plain_host
    kh = tmp_path / "known_hosts"
    kh.write_text(f"[localhost]:{h.port},{h.host_key_alias} {h.host_key_pub}\n")
    conn = SSHConnection(SSHTarget(h.host, h.port, h.user, [str(h.client_key)], str(kh)), "t")
    run_sync(conn.connect())
    run_sync(conn.close())


def test_an_unknown_key_message_shows_the_fingerprint_and_the_exact_keyscan(plain_host, tmp_path):
    h = plain_host
    kh = tmp_path / "known_hosts"
    kh.write_text("")
    with pytest.raises(ConnectError) as err:
        _connect_kh(h, kh)
    msg = str(err.value)
    assert "unknown" in msg and "CHANGED" not in msg and _fingerprint(h) in msg
    assert f"ssh-keyscan -p {h.port} {h.host} >> {kh}" in msg
    _advised(msg)  # and the advice works
    _connect_kh(h, kh)


@pytest.mark.parametrize("hashed", [False, True])
def test_a_changed_key_message_says_changed_and_how_to_remove_the_old_one(plain_host, tmp_path, hashed):
    h = plain_host
    kh = _changed_known_hosts(h, tmp_path, h.host_key_alias, hashed=hashed)
    with pytest.raises(ConnectError) as err:
        _connect_kh(h, kh)
    msg = str(err.value)
    assert "CHANGED" in msg and _fingerprint(h) in msg
    assert f"ssh-keygen -R '[{h.host}]:{h.port}' -f {kh}" in msg and "ssh-keyscan" not in msg
    _advised(msg)  # the old key is gone: now the host is unknown, and trusting it records a hashed entry
    conn = SSHConnection(SSHTarget(h.host, h.port, h.user, [str(h.client_key)], str(kh), trust_new_host=True), "t")
    run_sync(conn.connect())
    run_sync(conn.close())
    assert kh.read_text().startswith("|1|") == hashed and h.host_key_pub.split()[1] in kh.read_text()
    _connect_kh(h, kh)


def _advised(msg: str) -> None:
    """Run the command between backquotes that the message advises (ssh-keyscan or ssh-keygen -R)."""
    command = next(part for part in msg.split("`")[1::2] if part.startswith(("ssh-keyscan", "ssh-keygen -R")))
    subprocess.run(["sh", "-c", command], check=True, capture_output=True, timeout=30)


def _connect_kh(h, kh):
    conn = SSHConnection(SSHTarget(h.host, h.port, h.user, [str(h.client_key)], str(kh)), "t")
    run_sync(conn.connect())
    run_sync(conn.close())


@pytest.fixture()
def alias_home(plain_host, tmp_path, monkeypatch):
    """A HOME whose ~/.ssh/config names the test host ``hsmbox`` (HostName, Port, User, IdentityFile)
    and whose ~/.ssh/known_hosts is empty."""
    h = plain_host
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "config").write_text(
        f"Host hsmbox\n  HostName {h.host}\n  Port {h.port}\n  User {h.user}\n  IdentityFile {h.client_key}\n")
    (home / ".ssh" / "known_hosts").write_text("")
    monkeypatch.setenv("HOME", str(home))
    return home


def test_trust_new_host_resolves_an_ssh_config_alias(workdir, plain_host, alias_home):
    from hsm_notebook import SSHComputeSource
    h = plain_host
    source = SSHComputeSource("hsmbox", "alias", 1, trust_new_host=True)
    assert job_sweep(workdir, [source]).run().counts() == {"COMPLETED": 1}
    recorded = (alias_home / ".ssh" / "known_hosts").read_text()
    assert f"[{h.host}]:{h.port} " in recorded and h.host_key_pub.split()[1] in recorded
    # the recorded key is the one a later connection checks, without trust_new_host
    again = SSHComputeSource("hsmbox", "alias2", 1)
    assert job_sweep(workdir, [again], [2]).run().counts() == {"COMPLETED": 1}


def test_an_unknown_alias_key_message_names_the_real_host_and_port(plain_host, alias_home):
    h = plain_host
    conn = SSHConnection(SSHTarget("hsmbox"), "t")
    with pytest.raises(ConnectError) as err:
        run_sync(conn.connect())
    kh = alias_home / ".ssh" / "known_hosts"
    assert f"ssh-keyscan -p {h.port} {h.host} >> {kh}" in str(err.value)


def test_the_wake_up_watcher_needs_no_channel_of_its_own(workdir, ssh_server, plain_host, sweeps):
    """A finished job wakes the manager through the persistent shell's stderr stream, and the watcher
    ends with the connection.  Polls (and health checks) are an hour apart: only the wake-ups can
    end the sweep within the bounded wait (each job runs 1 s, so the poll after its submission
    sees it running)."""
    from tests.helpers import until

    def tails() -> list[int]:
        def cmdline(pid: int) -> bytes:
            try:
                return Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                return b""
        return [p for p in ssh_server.user_pids(plain_host) if cmdline(p).startswith(b"tail")]
    source = ssh_source(plain_host, "w", 1)
    sweep = Sweep(ParameterSpace(grid={"x": [1, 2], "sleep": [1]}), ["python", "job.py"], [source], workdir=workdir,
                  poll_interval=3600, health_interval=3600)
    sweeps.append(sweep)
    sweep.start().wait(timeout=120)  # raises TimeoutError, in words, if a job's end woke nothing
    assert sweep.counts() == {"COMPLETED": 2}
    # the shell and SFTP for the sync (collection runs in the shell)
    assert source.conn.channels_opened == 2
    until(lambda: not tails(), timeout=10, what="no watcher left on the host after the sweep")
