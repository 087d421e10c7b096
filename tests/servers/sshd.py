"""Real OpenSSH servers on loopback addresses (127.0.0.2, 127.0.0.3, ...) for tests.

A plain module (no pytest import): ``SSHServer().start()`` creates a fresh Unix user
with a random name, an ed25519 client key and host key, an absolute-path sshd_config
in a temp dir, and runs ``/usr/sbin/sshd -D -e -f CONFIG`` as a child process.  It
also injects faults the way /work/shared/RECIPES.md describes them ("OpenSSH server",
"asyncssh facts"):

- ``kill_connections(h)``: SIGKILL the per-connection sshd processes of the user
  (every live connection drops; asyncssh returns ``exit_status`` None, no exception);
- ``hang(h)`` / ``resume(h)``: SIGSTOP / SIGCONT the listener and the per-connection
  sshd processes (a hung host: only keepalive notices it);
- ``stop_listener(h)`` / ``restart_listener(h)``: new connections are refused /
  accepted again on the same address, port and host key.

Everything stays on 127.0.0.0/8.  Processes are only ever signalled by PID, found by
walking /proc and matched on the exact user name or uid of a user this module made.
Exited processes may linger as zombies here, so liveness is read from
/proc/PID/stat, never from ``kill -0``.

Requires root, openssh-server (/usr/sbin/sshd, ssh-keygen), useradd/userdel.
"""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import os
import re
import secrets
import shutil
import signal
import socket
import string
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .proc import _alive, _signal, _wait_gone

__all__ = [
    "SSHD",
    "HEAVY_BASHRC",
    "INSTALL_HINT",
    "SSHHost",
    "SSHServer",
    "SSHServerUnavailable",
    "empty_known_hosts",
    "missing_requirements",
    "other_host_key_known_hosts",
    "small_tmpfs",
]

SSHD = "/usr/sbin/sshd"
SSH_KEYGEN = shutil.which("ssh-keygen") or "/usr/bin/ssh-keygen"
INSTALL_HINT = "install it with: apt-get install -y openssh-server openssh-client rsync"

#: A ~/.bashrc that burns about 200 ms of CPU in every SSH channel, like a
#: ``conda init`` / ``pyenv init`` block on a real host.  It prints nothing (output
#: from an rc file would corrupt SFTP and rsync).  Uses /usr/bin/python3 (~20 ms
#: start) and spins on process time, so the cost is CPU, as in the real thing.
HEAVY_BASHRC = (
    "# heavy rc file for tests: ~200 ms of CPU per channel, like conda/pyenv init\n"
    "/usr/bin/python3 -c 'import time\n"
    "t = time.process_time() + 0.2\n"
    "while time.process_time() < t: pass'\n"
)

_READY_TIMEOUT = 10.0
_STOP_TIMEOUT = 5.0


class SSHServerUnavailable(RuntimeError):
    """sshd or a tool it needs is missing, or we are not root."""


def missing_requirements() -> str | None:
    """Why SSH test servers cannot run here, or None if they can."""
    problems = []
    if not os.path.isfile(SSHD) or not os.access(SSHD, os.X_OK):
        problems.append(f"{SSHD} not found")
    if not os.path.isfile(SSH_KEYGEN):
        problems.append("ssh-keygen not found")
    for tool in ("useradd", "userdel"):
        if shutil.which(tool) is None and not os.path.exists(f"/usr/sbin/{tool}"):
            problems.append(f"{tool} not found")
    if os.geteuid() != 0:
        problems.append("the tests must run as root (they create users and run sshd)")
    if not problems:
        return None
    return "SSH test servers unavailable: " + "; ".join(problems) + f"; {INSTALL_HINT}"


@dataclass
class SSHHost:
    """One running sshd with its own user.  Connect with :meth:`connect_kwargs`."""

    host: str
    port: int
    user: str
    home: Path
    client_key: Path
    known_hosts: Path
    host_key_pub: str
    sshd_pid: int
    config: Path
    log: Path
    uid: int = -1
    dir: Path | None = None

    @property
    def host_key_alias(self) -> str:
        """The name sshd's key is filed under in known_hosts: ``[host]:port``."""
        return _known_hosts_name(self.host, self.port)

    def connect_kwargs(self, **extra) -> dict:
        """Keyword arguments for ``asyncssh.connect(**h.connect_kwargs())``."""
        kw = dict(
            host=self.host,
            port=self.port,
            username=self.user,
            client_keys=[str(self.client_key)],
            known_hosts=str(self.known_hosts),
        )
        kw.update(extra)
        return kw

    def ssh_command(self) -> list[str]:
        """An OpenSSH client command line (without the destination), e.g. for
        ``rsync -e``: ``rsync -e "$(shlex.join(h.ssh_command()))" src USER@HOST:dst``."""
        return [
            "ssh",
            "-p", str(self.port),
            "-i", str(self.client_key),
            "-o", "IdentitiesOnly=yes",
            "-o", f"UserKnownHostsFile={self.known_hosts}",
            "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "StrictHostKeyChecking=yes",
            "-o", "BatchMode=yes",
            "-F", "/dev/null",
        ]

    @property
    def destination(self) -> str:
        return f"{self.user}@{self.host}"


def _known_hosts_name(host: str, port: int) -> str:
    return host if port == 22 else f"[{host}]:{port}"


# --------------------------------------------------------------------------- /proc


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]






def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def _uids(pid: int) -> tuple[int, ...]:
    """(real, effective, saved, fs) uid of a process; () if it is gone."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"Uid:"):
                    return tuple(int(x) for x in line.split()[1:])
    except OSError:
        pass
    return ()






# --------------------------------------------------------------------------- helpers


def _run(cmd: list[str], *, retries: int = 1, ok=(0,)) -> subprocess.CompletedProcess:
    """Run a command, retrying (e.g. useradd on a busy /etc/passwd lock)."""
    last = None
    for attempt in range(retries):
        last = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if last.returncode in ok:
            return last
        time.sleep(0.2 * (attempt + 1))
    assert last is not None
    raise RuntimeError(
        f"{' '.join(cmd)} failed with rc={last.returncode}: {last.stderr.strip() or last.stdout.strip()}"
    )


def _keygen(path: Path, comment: str) -> str:
    """A fresh ed25519 key without passphrase; returns the public key 'ssh-ed25519 AAAA...'."""
    for p in (path, path.with_name(path.name + ".pub")):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
    _run([SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)])
    kind, key = path.with_name(path.name + ".pub").read_text().split()[:2]
    return f"{kind} {key}"


def _check_loopback(host: str) -> None:
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"host must be a 127.x.y.z address, not {host!r}") from None
    if not (addr.version == 4 and addr.is_loopback):
        raise ValueError(f"test sshd may only listen on 127.0.0.0/8, not {host}")


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _read_banner(host: str, port: int, timeout: float = 1.0) -> bytes | None:
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            data = b""
            while b"\n" not in data and len(data) < 1024:
                chunk = s.recv(256)
                if not chunk:
                    break
                data += chunk
            return data
    except OSError:
        return None


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as e:
        return f"(no log: {e})"


def _random_user() -> str:
    return "hsmt" + "".join(secrets.choice(string.ascii_lowercase) for _ in range(6))


_SSHD_CONFIG = """\
# written by tests/servers/sshd.py for one test host
ListenAddress {host}
Port {port}
HostKey {host_key}
PidFile none
AuthorizedKeysFile {auth_dir}/%u
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PermitRootLogin prohibit-password
AllowUsers {user}
MaxSessions {max_sessions}
MaxStartups 100:30:200
Subsystem sftp {sftp_server}
PrintMotd no
X11Forwarding no
UseDNS no
LogLevel VERBOSE
{extra}
"""


# --------------------------------------------------------------------------- server


class SSHServer:
    """Starts and tears down test sshd hosts.  Not thread-safe; one per test session."""

    def __init__(self) -> None:
        self._root: Path | None = None
        self._hosts: dict[str, SSHHost] = {}  # by user name
        self._procs: dict[str, subprocess.Popen] = {}  # listener by user name
        self._stopped: dict[str, set[int]] = {}  # pids SIGSTOPped by hang()
        self._created_users: set[str] = set()  # only these are ever userdel'd
        self._closed = False
        atexit.register(self.close)

    # ----------------------------------------------------------------- lifecycle

    @property
    def hosts(self) -> list[SSHHost]:
        return list(self._hosts.values())

    def _root_dir(self) -> Path:
        if self._root is None:
            self._root = Path(tempfile.mkdtemp(prefix="hsmt-sshd-"))
            # sshd reads AuthorizedKeysFile as the target user: it must traverse this.
            self._root.chmod(0o711)
        return self._root

    def start(
        self,
        host: str = "127.0.0.2",
        port: int | None = None,
        user: str | None = None,
        bashrc: str | None = None,
        max_sessions: int = 64,
        extra_config: str = "",
        sftp_server: str = "internal-sftp",
    ) -> SSHHost:
        """Create a user and start sshd for it on ``host:port`` (free port if None).

        ``bashrc`` replaces the user's ~/.bashrc (None keeps Debian's skeleton, which
        returns at once for non-interactive shells).  ``extra_config`` is appended to
        sshd_config verbatim (e.g. ``"AcceptEnv HSM_*"``).  ``sftp_server`` is the
        ``Subsystem sftp`` command (sshd refuses a second Subsystem line, so extra_config
        cannot override it): ``"/usr/lib/openssh/sftp-server"`` is Debian's default,
        which runs the login shell and its rc files, unlike ``internal-sftp``.
        """
        problem = missing_requirements()
        if problem:
            raise SSHServerUnavailable(problem)
        if self._closed:
            raise RuntimeError("SSHServer is closed")
        _check_loopback(host)
        user = user or _random_user()
        if not re.fullmatch(r"[a-z_][a-z0-9_-]{0,30}", user):
            raise ValueError(f"bad user name {user!r}")
        if user in self._hosts:
            raise ValueError(f"user {user} already has a test host")

        hdir = self._root_dir() / user
        hdir.mkdir(mode=0o711)
        hdir.chmod(0o711)
        auth_dir = hdir / "authorized_keys"
        auth_dir.mkdir()
        auth_dir.chmod(0o711)
        config = hdir / "sshd_config"
        log = hdir / "sshd.log"

        # Register early so a failure below still gets cleaned up by stop()/close().
        h = SSHHost(
            host=host, port=port or 0, user=user, home=Path("/home") / user,
            client_key=hdir / "id_ed25519", known_hosts=hdir / "known_hosts",
            host_key_pub="", sshd_pid=-1, config=config, log=log, dir=hdir,
        )
        self._hosts[user] = h
        try:
            if _user_exists(user):
                raise ValueError(f"user {user} exists already; pass a new name or None")
            _run(["useradd", "-m", "-p", "*", "-s", "/bin/bash", user], retries=10)
            self._created_users.add(user)
            pw = _run(["getent", "passwd", user]).stdout.strip().split(":")
            h.uid, h.home = int(pw[2]), Path(pw[5])
            gid = int(pw[3])
            if bashrc is not None:
                rc = h.home / ".bashrc"
                rc.write_text(bashrc)
                os.chown(rc, h.uid, gid)
                rc.chmod(0o644)

            h.host_key_pub = _keygen(hdir / "ssh_host_ed25519_key", f"hsmt-host-{user}")
            client_pub = _keygen(h.client_key, f"hsmt-client-{user}")
            ak = auth_dir / user
            ak.write_text(client_pub + "\n")
            ak.chmod(0o644)

            Path("/run/sshd").mkdir(parents=True, exist_ok=True)
            attempts = 1 if port else 5
            for attempt in range(attempts):
                h.port = port or _free_port(host)
                config.write_text(_SSHD_CONFIG.format(
                    host=host, port=h.port, host_key=hdir / "ssh_host_ed25519_key",
                    auth_dir=auth_dir, user=user, max_sessions=max_sessions,
                    extra=extra_config, sftp_server=sftp_server,
                ))
                h.known_hosts.write_text(f"{h.host_key_alias} {h.host_key_pub}\n")
                try:
                    self._spawn(h)
                    break
                except _BindFailed:
                    if attempt == attempts - 1:
                        raise
        except BaseException:
            with contextlib.suppress(Exception):
                self.stop(h)
            raise
        return h

    def _spawn(self, h: SSHHost) -> None:
        """Start the listener for ``h`` and wait for its SSH banner."""
        with open(h.log, "ab") as logf:
            logf.write(f"---- {time.strftime('%H:%M:%S')} starting sshd on {h.host}:{h.port}\n".encode())
            logf.flush()
            proc = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", str(h.config)],
                stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                start_new_session=True, close_fds=True,
            )
        self._procs[h.user] = proc
        h.sshd_pid = proc.pid
        deadline = time.monotonic() + _READY_TIMEOUT
        while True:
            if proc.poll() is not None:
                tail = _tail(h.log)
                if "Address already in use" in tail or "Cannot bind any address" in tail:
                    raise _BindFailed(tail)
                raise RuntimeError(
                    f"sshd for {h.user} on {h.host}:{h.port} exited with rc={proc.returncode}; "
                    f"log {h.log}:\n{tail}"
                )
            banner = _read_banner(h.host, h.port)
            if banner and banner.startswith(b"SSH-2.0-"):
                return
            if time.monotonic() > deadline:
                self._terminate(proc)
                raise RuntimeError(
                    f"sshd for {h.user} on {h.host}:{h.port} not ready after {_READY_TIMEOUT:.0f} s "
                    f"(last read {banner!r}); log {h.log}:\n{_tail(h.log)}"
                )
            time.sleep(0.02)

    @staticmethod
    def _terminate(proc: subprocess.Popen) -> None:
        if proc.poll() is not None:
            return
        _signal(proc.pid, signal.SIGTERM)
        _signal(proc.pid, signal.SIGCONT)  # a hung (stopped) listener must see the TERM
        try:
            proc.wait(_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            _signal(proc.pid, signal.SIGKILL)
            proc.wait(_STOP_TIMEOUT)

    # ------------------------------------------------------------------- faults

    def listener_alive(self, h: SSHHost) -> bool:
        proc = self._procs.get(h.user)
        return proc is not None and proc.poll() is None and _alive(proc.pid)

    def stop_listener(self, h: SSHHost) -> None:
        """TERM the listening sshd: new connections are refused; established ones
        keep their own per-connection processes and go on working."""
        proc = self._procs.get(h.user)
        if proc is not None:
            self._terminate(proc)
            self._stopped.get(h.user, set()).discard(proc.pid)

    def restart_listener(self, h: SSHHost) -> SSHHost:
        """Start sshd again on the same address, port, config and host key (the
        known_hosts entry stays valid).  A no-op if it is running."""
        if self.listener_alive(h):
            return h
        self._spawn(h)
        return h

    def connection_pids(self, h: SSHHost) -> list[int]:
        """PIDs of the per-connection sshd processes serving ``h.user``
        (``sshd: USER [priv]``, ``sshd: USER@notty``, ``sshd: USER [preauth]``...)."""
        pat = re.compile(rb"^sshd: " + re.escape(h.user.encode()) + rb"(?:[ @\x00]|$)")
        me = os.getpid()
        return [
            pid for pid in _pids()
            if pid != me and pat.match(_cmdline(pid)) and _alive(pid)
        ]

    def kill_connections(self, h: SSHHost, timeout: float = 5.0) -> list[int]:
        """SIGKILL every per-connection sshd of ``h.user``: all its live connections
        drop (remote commands without a pty keep running; see kill_user_processes)."""
        killed: list[int] = []
        deadline = time.monotonic() + timeout
        while True:
            pids = self.connection_pids(h)
            if not pids:
                return killed
            for pid in pids:
                _signal(pid, signal.SIGKILL)
                _signal(pid, signal.SIGCONT)
            killed += pids
            _wait_gone(pids, max(0.1, deadline - time.monotonic()))
            if time.monotonic() > deadline:
                left = [p for p in self.connection_pids(h)]
                if left:
                    raise RuntimeError(f"per-connection sshd of {h.user} still alive: {left}")
                return killed

    def hang(self, h: SSHHost) -> list[int]:
        """SIGSTOP the listener and every per-connection sshd of ``h.user``: a hung
        host (TCP stays open, nothing answers).  Undo with :meth:`resume`."""
        pids = []
        if self.listener_alive(h):
            pids.append(h.sshd_pid)
        pids += self.connection_pids(h)
        stopped = self._stopped.setdefault(h.user, set())
        for pid in pids:
            _signal(pid, signal.SIGSTOP)
            stopped.add(pid)
        return pids

    def resume(self, h: SSHHost) -> None:
        """SIGCONT what :meth:`hang` stopped (and any per-connection sshd of the user)."""
        pids = set(self._stopped.pop(h.user, set()))
        pids.update(self.connection_pids(h))
        if self.listener_alive(h):
            pids.add(h.sshd_pid)
        for pid in pids:
            _signal(pid, signal.SIGCONT)

    def user_pids(self, h: SSHHost) -> list[int]:
        """Live processes running as ``h.user`` (real or effective uid)."""
        if h.uid < 0:
            return []
        me = os.getpid()
        return [
            pid for pid in _pids()
            if pid != me and h.uid in _uids(pid)[:2] and _alive(pid)
        ]

    def kill_user_processes(self, h: SSHHost, timeout: float = 5.0) -> list[int]:
        """SIGKILL every process owned by ``h.user`` (detached remote jobs too)."""
        if h.uid <= 0:  # never root (uid 0) nor an unknown uid
            return []
        killed: list[int] = []
        deadline = time.monotonic() + timeout
        while True:
            pids = self.user_pids(h)
            if not pids:
                return killed
            for pid in pids:
                _signal(pid, signal.SIGKILL)
            killed += pids
            _wait_gone(pids, 0.5)
            if time.monotonic() > deadline:
                left = self.user_pids(h)
                if left:
                    raise RuntimeError(f"processes of {h.user} still alive: {left}")
                return killed

    # ----------------------------------------------------------------- teardown

    def stop(self, h: SSHHost) -> None:
        """Full teardown of one host: its user's processes, connections, listener,
        the user (``userdel -r``) and the temp dir.  Raises after trying everything
        if some step failed."""
        errors: list[str] = []

        def step(what, fn, *args):
            try:
                fn(*args)
            except Exception as e:  # noqa: BLE001 - collect, go on, report
                errors.append(f"{what}: {e}")

        step("resume", self.resume, h)
        proc = self._procs.pop(h.user, None)
        if proc is not None:
            step("stop listener", self._terminate, proc)
        step("kill user processes", self.kill_user_processes, h)
        step("kill connections", self.kill_connections, h)
        step("kill user processes (again)", self.kill_user_processes, h)
        if h.user in self._created_users:
            step("userdel", _userdel, h.user)
            if h.home.name == h.user and h.home.exists():
                step("remove home", shutil.rmtree, h.home)
            self._created_users.discard(h.user)
        if h.dir is not None and self._root is not None and h.dir.parent == self._root:
            step("remove dir", shutil.rmtree, h.dir, True)
        self._hosts.pop(h.user, None)
        self._stopped.pop(h.user, None)
        if errors:
            raise RuntimeError(f"teardown of test host {h.user}@{h.host}:{h.port}: " + "; ".join(errors))

    def close(self) -> None:
        """Tear down every host this server started; idempotent."""
        if self._closed:
            return
        self._closed = True
        errors = []
        for h in list(self._hosts.values()):
            try:
                self.stop(h)
            except Exception as e:  # noqa: BLE001
                errors.append(str(e))
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)
        with contextlib.suppress(Exception):
            atexit.unregister(self.close)
        if errors:
            raise RuntimeError("; ".join(errors))

    def __enter__(self) -> SSHServer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _BindFailed(RuntimeError):
    pass


def _user_exists(user: str) -> bool:
    return subprocess.run(["getent", "passwd", user], capture_output=True).returncode == 0


def _userdel(user: str) -> None:
    if not _user_exists(user):
        return
    # -f: remove even if a zombie of the user lingers; 12 = home could not be removed
    # (we rmtree it ourselves).  Retries: another process may hold the passwd lock.
    _run(["userdel", "-r", "-f", user], retries=10, ok=(0, 12))
    if _user_exists(user):
        raise RuntimeError(f"user {user} still exists after userdel")


# --------------------------------------------------------------------------- known_hosts


def other_host_key_known_hosts(h: SSHHost) -> Path:
    """A known_hosts file naming ``h``'s ``[host]:port`` with a DIFFERENT, freshly
    generated ed25519 key (for the "host key changed" test).  Lives in h.dir."""
    tag = secrets.token_hex(4)
    pub = _keygen(h.dir / f"other_host_key_{tag}", f"hsmt-other-{tag}")
    path = h.dir / f"known_hosts_other_{tag}"
    path.write_text(f"{h.host_key_alias} {pub}\n")
    return path


_EMPTY_FILES: list[str] = []


def empty_known_hosts() -> Path:
    """An empty known_hosts file (removed at interpreter exit)."""
    fd, name = tempfile.mkstemp(prefix="hsmt-empty-known-hosts-")
    os.close(fd)
    if not _EMPTY_FILES:
        atexit.register(_remove_empty_files)
    _EMPTY_FILES.append(name)
    return Path(name)


def _remove_empty_files() -> None:
    for name in _EMPTY_FILES:
        with contextlib.suppress(OSError):
            os.unlink(name)
    _EMPTY_FILES.clear()


# --------------------------------------------------------------------------- small disk


@contextlib.contextmanager
def small_tmpfs(path, size: str = "1m") -> Iterator[Path]:
    """Mount a tmpfs of ``size`` (mode 0777) at ``path`` for the block, then unmount.

    Writes beyond ``size`` fail with ENOSPC ("No space left on device").  ``path`` is
    created if missing (and removed afterwards if we created it).  Raises
    RuntimeError("tmpfs mount not permitted: ...") where mounting is not allowed.
    """
    p = Path(path)
    created = not p.exists()
    p.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0777", "tmpfs", str(p)],
        capture_output=True, text=True, stdin=subprocess.DEVNULL,
    )
    if r.returncode != 0:
        if created:
            with contextlib.suppress(OSError):
                p.rmdir()
        raise RuntimeError(f"tmpfs mount not permitted: {(r.stderr or r.stdout).strip()} (rc={r.returncode})")
    try:
        yield p
    finally:
        u = subprocess.run(["umount", str(p)], capture_output=True, text=True)
        if u.returncode != 0:  # busy (a process still has a file open): detach lazily
            subprocess.run(["umount", "-l", str(p)], capture_output=True, text=True)
        if created:
            with contextlib.suppress(OSError):
                p.rmdir()
