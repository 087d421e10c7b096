"""A real single-node Grid Engine (Son of Grid Engine 8.1.9, Debian's ``gridengine-*`` packages) for tests.

A plain module (no pytest import).  Grid Engine keeps one cell per machine (``$SGE_ROOT``
``/var/lib/gridengine``, cell ``default``, ports 6444/6445 from /etc/services): unlike the Slurm
test cluster it cannot live in a temp dir.  ``scripts/test.sh`` installs the packages (master host
name preseeded; the postinst creates the cell, its spool and the ``sgeadmin`` manager).
:func:`start_cluster` then

1. maps this machine's name to the name its address resolves back to (``host_aliases``): here
   ``vm`` -> 127.0.0.1 -> ``localhost``, and without the alias every client is refused ("client IP
   resolved to host name localhost. This is not identical to clients host name vm");
2. starts ``sge_qmaster`` unless it runs (it daemonizes; pid in its spool), waiting first for one
   that is still shutting down (a second one started meanwhile hangs);
3. configures the cell, idempotently: root may submit (``min_uid``/``min_gid`` 0), no mail, load
   reports and accounting flushed every second, the scheduler every second; this host a submit and
   execution host offering ``gpu=2`` (a consumable complex added for the tests); a parallel
   environment ``smp``; queue ``all.q`` with 8 slots, ``smp``, no load thresholds (a busy 2-core
   machine would put it in alarm) and Grid Engine's default ``posix_compliant`` shell start;
4. starts ``sge_execd`` unless it runs, waits until the queue instance reports a load, and runs a
   probe job to its end.

:meth:`SGECluster.close` deletes the tests' jobs (names ``hsm*``) and stops, by PID, only the
daemons :func:`start_cluster` started: qmaster first (with the execd still connected it exits in
3-5 s, alone it takes ~10 s), then the execd.  Exited daemons linger as zombies here, so liveness is
read from /proc/PID/stat.

Requires: gridengine-master, gridengine-exec, gridengine-client; root.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import signal
import socket
import subprocess
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from .proc import _alive, _signal, _wait_gone

__all__ = ["INSTALL_HINT", "SGECluster", "SGEUnavailable", "missing_requirements", "start_cluster"]

INSTALL_HINT = "run scripts/test.sh (it preseeds and installs gridengine-master gridengine-exec gridengine-client)"
SGE_ROOT, SGE_CELL = "/var/lib/gridengine", "default"
SPOOL = Path("/var/spool/gridengine")
QMASTER, EXECD = Path("/usr/sbin/sge_qmaster"), Path("/usr/sbin/sge_execd")
CLIENTS = ("qsub", "qstat", "qdel", "qconf", "qacct", "qmod")
QUEUE, SLOTS, GPUS = "all.q", 8, 2
_TIMEOUT = 60.0


class SGEUnavailable(RuntimeError):
    """Grid Engine is not installed, or we are not root."""


def missing_requirements() -> str | None:
    """Why a test Grid Engine cannot run here, or None if it can."""
    problems = []
    missing = [p.name for p in (QMASTER, EXECD) if not os.access(p, os.X_OK)]
    missing += [c for c in CLIENTS if not any(os.access(f"{d}/{c}", os.X_OK) for d in ("/usr/bin", "/usr/sbin"))]
    if missing:
        problems.append("missing " + ", ".join(missing))
    elif not Path(SGE_ROOT, SGE_CELL, "common", "bootstrap").exists():
        problems.append(f"no cell in {SGE_ROOT}/{SGE_CELL} (the gridengine-master postinst makes it)")
    if os.geteuid() != 0:
        problems.append("the tests must run as root (the daemons do, and jobs run as the submitting user)")
    return f"Grid Engine test cluster unavailable: {'; '.join(problems)}; {INSTALL_HINT}" if problems else None


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _daemon(pidfile: Path, comm: str) -> int | None:
    """The daemon's pid from its pid file if that process is alive and is the daemon."""
    try:
        pid = int(pidfile.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if _alive(pid) and _comm(pid) == comm else None


def _running(comm: str) -> list[int]:
    """Live processes named ``comm`` (to wait for one still shutting down; never signalled here)."""
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and _comm(int(p)) == comm and _alive(int(p))]


@dataclass
class SGECluster:
    """The machine's Grid Engine cell, configured for the tests.  ``env`` (os.environ with SGE_ROOT
    and SGE_CELL) is for subprocesses; ``sge_env`` for a source's ``sge_env=``."""

    host: str
    env: dict[str, str] = field(repr=False)
    queue: str = QUEUE
    slots: int = SLOTS
    qmaster_pid: int = -1
    execd_pid: int = -1
    started: list[str] = field(default_factory=list)  # the daemons start_cluster started (stopped by close)
    start_seconds: float = 0.0
    _closed: bool = field(default=False, repr=False)

    @property
    def sge_env(self) -> dict[str, str]:
        return {"SGE_ROOT": SGE_ROOT, "SGE_CELL": SGE_CELL}

    # ------------------------------------------------------------------ clients
    def run(self, *argv: str, check: bool = False, timeout: float = 30.0, input: str | None = None,
            cwd: str | None = None) -> subprocess.CompletedProcess:
        """A Grid Engine client command with SGE_ROOT/SGE_CELL set, text output captured."""
        r = subprocess.run(list(argv), capture_output=True, text=True, env=self.env, timeout=timeout, cwd=cwd or "/tmp",
                           stdin=subprocess.DEVNULL if input is None else None, input=input)
        if check and r.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed with rc={r.returncode}: {(r.stderr or r.stdout).strip()}")
        return r

    def jobs(self, prefix: str = "hsm") -> dict[str, list[tuple[str, str]]]:
        """``{job number: [(state, tasks), ...]}`` of the user's jobs whose name starts with ``prefix``."""
        out = self.run("qstat", "-xml", check=True).stdout
        jobs: dict[str, list[tuple[str, str]]] = {}
        for record in ET.fromstring(out).iter("job_list"):
            if (record.findtext("JB_name") or "").startswith(prefix):
                jobs.setdefault(record.findtext("JB_job_number") or "", []).append(
                    (record.findtext("state") or "", record.findtext("tasks") or ""))
        return jobs

    def active_jobs(self) -> list[str]:
        """Numbers of the tests' jobs Grid Engine still holds (names ``hsm*``)."""
        return sorted(self.jobs())

    def cancel_all(self, timeout: float = 30.0) -> None:
        """qdel every job of the tests (names ``hsm*``: sweeps and probes), wait until none is left."""
        deadline = time.monotonic() + timeout
        while jobs := self.active_jobs():
            self.run("qdel", "-f", *jobs)
            if time.monotonic() > deadline:
                raise TimeoutError(f"jobs still held after qdel: {jobs}\n{self.log_tails()}")
            time.sleep(0.2)

    def probe(self, timeout: float = _TIMEOUT) -> str:
        """Run ``/bin/true`` to its end (job name ``hsmt-probe``): the scheduler really starts jobs."""
        job = self.run("qsub", "-b", "y", "-terse", "-N", "hsmt-probe", "-o", "/dev/null", "-j", "y", "/bin/true",
                       check=True).stdout.strip()
        deadline = time.monotonic() + timeout
        while self.run("qstat", "-j", job).returncode == 0:
            if time.monotonic() > deadline:
                raise TimeoutError(f"probe job {job} not done after {timeout:.0f} s:\n"
                                   f"{self.run('qstat', '-f').stdout}\n{self.log_tails()}")
            time.sleep(0.1)
        return job

    def log_tails(self, lines: int = 15) -> str:
        parts = []
        for path in (SPOOL / "qmaster" / "messages", *SPOOL.glob("execd/*/messages")):
            with contextlib.suppress(OSError):
                parts.append(f"---- {path}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(parts)

    # ------------------------------------------------------------------ daemons
    def start_qmaster(self, timeout: float = _TIMEOUT) -> None:
        pid = _daemon(SPOOL / "qmaster" / "qmaster.pid", "sge_qmaster")
        if pid is None:
            # a qmaster still shutting down makes a new one hang: wait for it to go
            left = _wait_gone(_running("sge_qmaster"), 20)
            if left:
                raise RuntimeError(f"sge_qmaster {left} is running without its pid file; stop it first")
            subprocess.run([str(QMASTER)], env=self.env, check=True, timeout=30, capture_output=True)
            self.started.append("qmaster")
            deadline = time.monotonic() + 10
            while (pid := _daemon(SPOOL / "qmaster" / "qmaster.pid", "sge_qmaster")) is None:
                if time.monotonic() > deadline:
                    raise RuntimeError("sge_qmaster did not start\n" + self.log_tails())
                time.sleep(0.05)
        self.qmaster_pid = pid
        deadline = time.monotonic() + timeout
        while self.run("qconf", "-sh").returncode != 0:
            if time.monotonic() > deadline:
                raise TimeoutError("sge_qmaster does not answer qconf\n" + self.log_tails())
            time.sleep(0.1)

    def start_execd(self, timeout: float = _TIMEOUT) -> None:
        pid = next((p for f in SPOOL.glob("execd/*/execd.pid") if (p := _daemon(f, "sge_execd"))), None)
        if pid is None:
            subprocess.run([str(EXECD)], env=self.env, check=True, timeout=30, capture_output=True)
            self.started.append("execd")
            deadline = time.monotonic() + 10
            while (pid := next((p for f in SPOOL.glob("execd/*/execd.pid") if (p := _daemon(f, "sge_execd"))),
                               None)) is None:
                if time.monotonic() > deadline:
                    raise RuntimeError("sge_execd did not start\n" + self.log_tails())
                time.sleep(0.05)
        self.execd_pid = pid
        deadline = time.monotonic() + timeout
        while True:  # the queue instance has a load value and no state (u: its execd not in yet)
            line = next((ln.split() for ln in self.run("qstat", "-f", "-q", self.queue).stdout.splitlines()
                         if ln.startswith(f"{self.queue}@")), [])
            if len(line) == 5 and line[3] != "-NA-":
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"queue instance not up: {line}\n" + self.log_tails())
            time.sleep(0.1)
        self.run("qmod", "-cq", self.queue)  # a left-over error state

    def _stop(self, what: str, pid: int, timeout: float) -> None:
        if what not in self.started or pid <= 1:
            return
        _signal(pid, signal.SIGTERM)
        if _wait_gone([pid], timeout):
            _signal(pid, signal.SIGKILL)
            if _wait_gone([pid], 5):
                raise RuntimeError(f"sge_{what} {pid} still alive after SIGKILL")
        self.started.remove(what)

    def close(self) -> None:
        """Delete the tests' jobs, stop the daemons this module started (qmaster, then execd) by PID.
        Idempotent; raises after trying everything if a step failed."""
        if self._closed:
            return
        self._closed = True
        errors = []
        for what, step in (("cancel jobs", self.cancel_all),
                           ("stop qmaster", lambda: self._stop("qmaster", self.qmaster_pid, 30)),
                           ("stop execd", lambda: self._stop("execd", self.execd_pid, 15))):
            try:
                step()
            except Exception as e:  # noqa: BLE001 - collect, go on, report
                errors.append(f"{what}: {e}")
        with contextlib.suppress(Exception):
            atexit.unregister(self.close)
        if errors:
            raise RuntimeError("teardown of the Grid Engine test cluster: " + "; ".join(errors))

    # ---------------------------------------------------------------- configure
    def _apply(self, show: list[str], modify: str, add: str | None, name: str, edit) -> None:
        """Show a configuration object, change it with ``edit(text)``, write it back (``add`` when
        it does not exist yet; the file's name is the object's name for ``qconf -Mconf``)."""
        shown = self.run("qconf", *show)
        text = edit(shown.stdout if shown.returncode == 0 else "")
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / name
            path.write_text(text)
            flag = modify if shown.returncode == 0 or add is None else add
            r = self.run("qconf", flag, str(path))
            if r.returncode != 0 and "changed nothing" not in (r.stdout + r.stderr) \
                    and "does not exist" not in (r.stdout + r.stderr):
                raise RuntimeError(f"qconf {flag} {name}: {(r.stderr or r.stdout).strip()}\n{text}")

    def configure(self) -> None:
        def setting(text: str, key: str, value: str) -> str:
            new, n = re.subn(rf"(?m)^{key}( +).*$", lambda m: f"{key}{m[1]}{value}", text)
            return new if n else f"{text.rstrip()}\n{key} {value}\n"

        def conf(text: str) -> str:
            text = re.sub(r"(?m)^#global:$\n?", "", text)
            for key, value in (("min_uid", "0"), ("min_gid", "0"), ("mailer", "/bin/true"),
                               ("load_report_time", "00:00:01")):
                text = setting(text, key, value)
            return re.sub(r"flush_time=[0-9:]+", "flush_time=00:00:01", text)

        def sched(text: str) -> str:
            for key, value in (("schedule_interval", "0:0:1"), ("flush_submit_sec", "1"), ("flush_finish_sec", "1"),
                               ("schedd_job_info", "true")):
                text = setting(text, key, value)
            return text

        def complexes(text: str) -> str:
            if re.search(r"(?m)^gpu\s", text):
                return text
            return text.rstrip() + "\ngpu gpu INT <= YES YES 0 0\n"  # a consumable the exec host offers

        def pe(_: str) -> str:
            return ("pe_name smp\nslots 999\nuser_lists NONE\nxuser_lists NONE\nstart_proc_args NONE\n"
                    "stop_proc_args NONE\nallocation_rule $pe_slots\ncontrol_slaves FALSE\njob_is_first_task TRUE\n"
                    "urgency_slots min\naccounting_summary FALSE\nqsort_args NONE\n")

        def exechost(_: str) -> str:
            return (f"hostname {self.host}\nload_scaling NONE\ncomplex_values gpu={GPUS}\nuser_lists NONE\n"
                    "xuser_lists NONE\nprojects NONE\nxprojects NONE\nusage_scaling NONE\nreport_variables NONE\n")

        def queue(text: str) -> str:
            text = text or self.run("qconf", "-sq", check=True).stdout  # the template
            for key, value in (("qname", self.queue), ("hostlist", self.host), ("slots", str(self.slots)),
                               ("pe_list", "smp"), ("load_thresholds", "NONE"), ("shell", "/bin/sh"),
                               ("shell_start_mode", "posix_compliant")):
                text = setting(text, key, value)
            return text

        self._apply(["-sconf", "global"], "-Mconf", None, "global", conf)
        self._apply(["-ssconf"], "-Msconf", None, "sched", sched)
        self._apply(["-sc"], "-Mc", None, "complexes", complexes)
        if self.host not in self.run("qconf", "-ss").stdout.split():
            self.run("qconf", "-as", self.host, check=True)
        self._apply(["-sp", "smp"], "-Mp", "-Ap", "smp", pe)
        self._apply(["-se", self.host], "-Me", "-Ae", "exechost", exechost)
        self._apply(["-sq", self.queue], "-Mq", "-Aq", "queue", queue)


def _aliases(host: str) -> None:
    """``host_aliases`` naming this machine and the name its address resolves back to, when they differ."""
    try:
        back = socket.gethostbyaddr(socket.gethostbyname(host))[0]
    except OSError:
        return
    if back.split(".")[0] == host:
        return
    path = Path(SGE_ROOT, SGE_CELL, "common", "host_aliases")
    line = f"{host} {back}"
    with contextlib.suppress(OSError):
        if line in path.read_text().splitlines():
            return
    path.write_text(line + "\n")


def start_cluster(timeout: float = _TIMEOUT) -> SGECluster:
    """Configure the cell and start whichever daemon is not running; return once a probe job has run
    (~5 s from stopped daemons).  Raises SGEUnavailable / RuntimeError / TimeoutError with the
    daemons' message tails; the daemons started here are stopped on failure."""
    problem = missing_requirements()
    if problem:
        raise SGEUnavailable(problem)
    t0 = time.monotonic()
    host = socket.gethostname().split(".")[0]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SGE_", "JOB_", "SGE_TASK"))}
    env.update(SGE_ROOT=SGE_ROOT, SGE_CELL=SGE_CELL)
    cluster = SGECluster(host=host, env=env)
    atexit.register(cluster.close)
    try:
        _aliases(host)
        cluster.start_qmaster(timeout)
        cluster.configure()
        cluster.start_execd(timeout)
        cluster.probe(timeout)
        cluster.start_seconds = time.monotonic() - t0
        return cluster
    except BaseException:
        with contextlib.suppress(Exception):
            cluster.close()
        raise
