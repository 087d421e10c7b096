"""A real single-node Slurm cluster on loopback for tests.

A plain module (no pytest import): :func:`start_cluster` makes a temp dir, a munge
key, and starts ``munged -F``, ``slurmctld -D`` and ``slurmd -D -N NODE`` as child
processes of this Python process, with a slurm.conf whose every path lives in the
temp dir and whose ports are free ports on 127.0.0.1 (settings and pitfalls:
/work/shared/RECIPES.md, "Slurm").  The cluster is ready when a probe job (name
``hsmt-probe``; it stays listed in ``squeue -t all``) has COMPLETED: ``sinfo``
alone is not enough.

Beyond RECIPES.md: ``SchedulerParameters`` also has ``bf_interval=1``, so the
backfill scheduler starts jobs within ~1 s where the main scheduler's first pass
comes ~3 s after slurmctld starts (cluster start 1.1 s instead of 3.2 s, and a
requeued job is picked up within 1 s of becoming eligible instead of up to 30 s).

Client commands must see ``SLURM_CONF``: use :meth:`SlurmCluster.run` or pass
``cluster.env`` (os.environ without SLURM_*/SBATCH_*/... plus SLURM_CONF) to
``subprocess``.  :meth:`SlurmCluster.run` runs in the cluster's temp dir by
default, so ``slurm-N.out`` files of ``sbatch`` land there rather than in the
caller's working directory (sbatch's default output is ``$PWD/slurm-%j.out``).

Jobs run as the submitting user (root here), with the submitter's environment
(``--export=ALL``, so SLURM_CONF too) and working directory; they can write
anywhere under /tmp (no PrivateTmp, no cgroup/namespace plugins).

Teardown (:meth:`SlurmCluster.close`): cancel every job first (``slurmstepd``
outlives slurmd by design), then stop slurmd, SIGKILL job processes left over
that belong to THIS cluster (:meth:`SlurmCluster.job_pids`), stop slurmctld and
munged by PID, and remove the temp dir.  Exited processes may linger as zombies
here, so liveness is read from /proc/PID/stat.

Requires: slurm-wlm (slurmctld, slurmd, sbatch, squeue, scontrol, scancel, sinfo)
and munge (munged, mungekey); root.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .proc import _alive, _signal, _wait_gone

__all__ = [
    "INSTALL_HINT",
    "SlurmCluster",
    "SlurmUnavailable",
    "missing_requirements",
    "start_cluster",
]

INSTALL_HINT = "install it with: apt-get install -y slurm-wlm munge"

CLIENTS = ("sbatch", "squeue", "scontrol", "scancel", "sinfo")
DAEMONS = ("slurmctld", "slurmd", "munged", "mungekey")

_READY_TIMEOUT = 30.0
_STOP_TIMEOUT = 10.0
_CMD_TIMEOUT = 30.0

#: Finished states a job can end in (``squeue -t all`` keeps them for MinJobAge).
FINAL_STATES = frozenset({
    "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED",
    "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "SPECIAL_EXIT", "REVOKED",
})


class SlurmUnavailable(RuntimeError):
    """Slurm or munge is not installed, or we are not root."""


class _BindFailed(RuntimeError):
    """slurmctld could not bind its port."""


def _which(name: str) -> str | None:
    return shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}", f"/sbin/{name}") if os.access(p, os.X_OK)),
        None,
    )


def missing_requirements() -> str | None:
    """Why a test Slurm cluster cannot run here, or None if it can."""
    missing = [n for n in DAEMONS + CLIENTS if _which(n) is None]
    problems = []
    if missing:
        problems.append("missing " + ", ".join(missing))
    if os.geteuid() != 0:
        problems.append("the tests must run as root (SlurmUser=root, jobs run as root)")
    if not problems:
        return None
    return "Slurm test cluster unavailable: " + "; ".join(problems) + f"; {INSTALL_HINT}"


# --------------------------------------------------------------------------- /proc










def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def _mentions(pid: int, needle: str) -> bool:
    """True if the process's environment, cwd or an open file mentions ``needle``."""
    with contextlib.suppress(OSError):
        with open(f"/proc/{pid}/environ", "rb") as f:
            if needle.encode() in f.read():
                return True
    with contextlib.suppress(OSError):
        if os.readlink(f"/proc/{pid}/cwd").startswith(needle):
            return True
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{pid}/fd/{fd}").startswith(needle):
                    return True
    return False


def _ppid(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as e:
        return f"(no log: {e})"


def _clean_env(conf: Path) -> dict[str, str]:
    """os.environ without SLURM_* / SBATCH_* / SQUEUE_* etc. (a test run inside a
    real Slurm job would otherwise leak its job's settings), plus SLURM_CONF."""
    prefixes = ("SLURM_", "SBATCH_", "SQUEUE_", "SINFO_", "SCONTROL_", "SALLOC_", "SRUN_", "SCANCEL_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    env["SLURM_CONF"] = str(conf)
    return env


_CONF = """\
# written by tests/servers/slurm.py: a single-node test cluster on loopback
ClusterName={cluster}
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}{auth_extra}
StateSaveLocation={dir}/state
SlurmdSpoolDir={dir}/spool/%n
SlurmctldPidFile={dir}/slurmctld.pid
SlurmdPidFile={dir}/slurmd.pid
SlurmctldLogFile={dir}/slurmctld.log
SlurmdLogFile={dir}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
PlugStackConfig={dir}/plugstack.conf
MailProg=/bin/true
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={dir}/jobcomp.txt
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0,bf_interval=1
SlurmdParameters=config_overrides
ReturnToService=2
MinJobAge=3600
KillWait=5
SlurmdTimeout=10
MaxArraySize={max_array_size}
NodeName={node} NodeAddr=127.0.0.1 CPUs=8 RealMemory={mem} State=UNKNOWN
PartitionName={partition} Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""


# --------------------------------------------------------------------------- cluster


@dataclass
class SlurmCluster:
    """One running test cluster.  ``env`` is for subprocesses (has SLURM_CONF)."""

    dir: Path
    conf: Path
    env: dict[str, str]
    partition: str
    node: str
    ctld_port: int
    slurmd_port: int
    munge_socket: Path
    munge_key: Path
    munged_log: Path
    slurmctld_log: Path
    slurmd_log: Path
    munged_pid: int = -1
    slurmctld_pid: int = -1
    slurmd_pid: int = -1
    max_array_size: int = 1001
    start_seconds: float = 0.0
    _procs: dict[str, subprocess.Popen] = field(default_factory=dict, repr=False)
    _closed: bool = field(default=False, repr=False)

    # ------------------------------------------------------------------ clients

    def run(self, *argv: str, check: bool = False, timeout: float = _CMD_TIMEOUT,
            cwd: str | os.PathLike | None = None, env: dict | None = None,
            input: str | None = None) -> subprocess.CompletedProcess:
        """Run a Slurm client command (``run("squeue", "-h")``) with SLURM_CONF set,
        text output captured; cwd defaults to the cluster's temp dir."""
        e = dict(self.env)
        if env:
            e.update(env)
        r = subprocess.run(
            list(argv), capture_output=True, text=True, env=e, timeout=timeout,
            cwd=str(cwd) if cwd is not None else str(self.dir),
            stdin=subprocess.DEVNULL if input is None else None, input=input,
        )
        if check and r.returncode != 0:
            raise RuntimeError(
                f"{' '.join(argv)} failed with rc={r.returncode}: {(r.stderr or r.stdout).strip()}"
            )
        return r

    def sbatch(self, *argv: str, **kw) -> str:
        """``sbatch --parsable ARGV``; returns the job id (an array's id for arrays)."""
        r = self.run("sbatch", "--parsable", *argv, check=True, **kw)
        return r.stdout.strip().split(";")[0]

    def job_state(self, job_id: str) -> str | None:
        """``squeue -h -j ID -t all -o %T`` (first line; None if unknown)."""
        r = self.run("squeue", "-h", "-j", str(job_id), "-t", "all", "-o", "%T")
        lines = r.stdout.split()
        return lines[0] if r.returncode == 0 and lines else None

    def wait_job(self, job_id: str, timeout: float = 30.0, states=FINAL_STATES) -> str:
        """Wait until every task of ``job_id`` is in ``states``; returns the state of
        the first line.  Raises TimeoutError with the squeue output and log tails."""
        deadline = time.monotonic() + timeout
        last = ""
        while True:
            r = self.run("squeue", "-h", "-r", "-j", str(job_id), "-t", "all", "-o", "%T")
            last = r.stdout.strip() or r.stderr.strip()
            got = r.stdout.split()
            if r.returncode == 0 and got and all(s in states for s in got):
                return got[0]
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"job {job_id} not in {sorted(states)} after {timeout:.0f} s (squeue: {last!r})\n"
                    + self.log_tails()
                )
            time.sleep(0.1)

    def show_job(self, job_id: str) -> dict[str, str]:
        """``scontrol -o show job ID`` of a (non-array) job as a dict; values may
        contain ``:``, ``/`` and ``=`` (e.g. ``Command=``), keys never contain spaces."""
        r = self.run("scontrol", "-o", "show", "job", str(job_id), check=True)
        return _parse_kv(r.stdout.splitlines()[0])

    def node_state(self) -> str:
        """``sinfo -h -n NODE -o %t`` (short: ``idle``, ``alloc``, ``down*``...)."""
        r = self.run("sinfo", "-h", "-n", self.node, "-o", "%t")
        return r.stdout.strip()

    def probe(self, timeout: float = _READY_TIMEOUT) -> str:
        """Submit ``true`` (job name ``hsmt-probe``, output to /dev/null) and wait
        until it is COMPLETED: the scheduler really runs jobs.  Returns its id."""
        t0 = time.monotonic()
        job = None
        while job is None:
            self._check_running("slurmctld")
            r = self.run("sbatch", "--parsable", "-o", "/dev/null", "-J", "hsmt-probe", "--wrap", "true")
            if r.returncode == 0:
                job = r.stdout.strip()
            elif time.monotonic() - t0 > timeout:
                raise TimeoutError(f"sbatch of the probe job failed: {r.stderr.strip()}\n" + self.log_tails())
            else:
                time.sleep(0.1)
        while True:
            self._check_running("slurmctld")
            self._check_running("slurmd")
            st = self.job_state(job)
            if st == "COMPLETED":
                return job
            if st in FINAL_STATES:
                raise RuntimeError(f"probe job {job} ended {st}\n" + self.log_tails())
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(
                    f"probe job {job} still {st} after {timeout:.0f} s; "
                    f"node: {self.node_state()!r}\n" + self.log_tails()
                )
            time.sleep(0.05)

    def log_tails(self, lines: int = 25) -> str:
        """The last lines of each daemon's log file and of its stderr file."""
        parts = []
        for name, path in (("slurmctld", self.slurmctld_log), ("slurmd", self.slurmd_log),
                           ("munged", self.munged_log)):
            for p in dict.fromkeys((path, path.with_suffix(".stderr"))):
                if p.exists() and p.stat().st_size:
                    parts.append(f"---- {name}: {p}\n{_tail(p, lines)}")
        return "\n".join(parts) or f"(no daemon logs in {self.dir})"

    # ------------------------------------------------------------------ daemons

    def _spawn(self, name: str, argv: list[str], log: Path) -> subprocess.Popen:
        with open(log.with_suffix(".stderr"), "ab") as errf:
            errf.write(f"---- {time.strftime('%H:%M:%S')} {' '.join(argv)}\n".encode())
            errf.flush()
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=errf, stderr=errf, env=self.env,
                cwd=str(self.dir), start_new_session=True, close_fds=True,
            )
        self._procs[name] = proc
        setattr(self, f"{name}_pid", proc.pid)
        return proc

    def _check_running(self, name: str) -> None:
        proc = self._procs.get(name)
        if proc is None or proc.poll() is not None:
            rc = None if proc is None else proc.returncode
            raise RuntimeError(f"{name} {'not started' if proc is None else 'exited'} (rc={rc})\n"
                               + self.log_tails())

    def _terminate(self, name: str, timeout: float = _STOP_TIMEOUT) -> None:
        proc = self._procs.pop(name, None)
        if proc is None:
            return
        if proc.poll() is None:
            _signal(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                _signal(proc.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(5)
        if _wait_gone([proc.pid], 5):
            raise RuntimeError(f"{name} (pid {proc.pid}) still alive after SIGKILL")

    def slurmd_running(self) -> bool:
        proc = self._procs.get("slurmd")
        return proc is not None and proc.poll() is None and _alive(proc.pid)

    def start_slurmd(self, wait: bool = True, timeout: float = _READY_TIMEOUT) -> None:
        """Start slurmd (a no-op if running); with ``wait``, until the node is
        responding and not down (``sinfo`` state without ``*``, not ``down``)."""
        if self._closed:
            raise RuntimeError("cluster is closed")
        if not self.slurmd_running():
            (self.dir / "spool" / self.node).mkdir(parents=True, exist_ok=True)
            self._spawn("slurmd", ["slurmd", "-D", "-N", self.node, "-f", str(self.conf)],
                        self.slurmd_log)
        if not wait:
            return
        deadline = time.monotonic() + timeout
        while True:
            self._check_running("slurmd")
            st = self.node_state()
            if st and not st.endswith(("*", "~", "#", "!", "%", "$", "@", "^", "-")) and not st.startswith(
                ("down", "drain", "fail", "unk", "inval")
            ):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"node {self.node} not up {timeout:.0f} s after starting slurmd (sinfo: {st!r})\n"
                    + self.log_tails()
                )
            time.sleep(0.1)

    def stop_slurmd(self) -> None:
        """SIGTERM slurmd and wait until it is gone.  Running jobs' slurmstepd keep
        running; slurmctld marks the node ``idle*``/``mix*`` (not responding), then
        ``down*`` after about SlurmdTimeout + a ping cycle (RECIPES: ~27 s)."""
        self._terminate("slurmd")

    # ------------------------------------------------------------------- config

    def set_max_array_size(self, n: int, timeout: float = _READY_TIMEOUT, probe: bool = True) -> None:
        """Rewrite MaxArraySize in slurm.conf and apply it; wait until ``scontrol
        show config`` reports it.

        ``scontrol reconfigure`` is NOT enough in 22.05: slurmctld caches
        MaxArraySize in a static variable the first time it handles an array job
        (src/slurmctld/job_mgr.c ``max_array_size``), so after any array job a
        reconfigure changes ``show config`` but sbatch keeps accepting the old
        size.  So this restarts slurmctld (state is saved and recovered; slurmd,
        running jobs and job ids carry on) and waits for a probe job: ~1.2 s.
        """
        text = self.conf.read_text()
        new, count = re.subn(r"(?m)^MaxArraySize=\d+$", f"MaxArraySize={int(n)}", text)
        if count != 1:
            raise RuntimeError(f"MaxArraySize line not found in {self.conf}")
        self.conf.write_text(new)
        self.restart_slurmctld(timeout=timeout, probe=probe)
        deadline = time.monotonic() + timeout
        while True:
            r = self.run("scontrol", "show", "config")
            m = re.search(r"(?m)^MaxArraySize\s*=\s*(\d+)", r.stdout)
            if m and int(m.group(1)) == int(n):
                self.max_array_size = int(n)
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"MaxArraySize still {m.group(1) if m else '?'} (want {n}) after restart\n"
                    + self.log_tails()
                )
            time.sleep(0.1)

    def start_slurmctld(self, timeout: float = 15.0) -> None:
        """Start slurmctld (a no-op if running) and wait until ``scontrol ping``
        says UP.  Raises _BindFailed if its port is taken."""
        if self._closed:
            raise RuntimeError("cluster is closed")
        proc = self._procs.get("slurmctld")
        if proc is not None and proc.poll() is None:
            return
        self._procs.pop("slurmctld", None)
        proc = self._spawn("slurmctld", ["slurmctld", "-D", "-f", str(self.conf)], self.slurmctld_log)
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                text = _tail(self.slurmctld_log) + _tail(self.slurmctld_log.with_suffix(".stderr"))
                self._procs.pop("slurmctld", None)
                err = _BindFailed if "Address already in use" in text else RuntimeError
                raise err(f"slurmctld exited (rc={proc.returncode}) on port {self.ctld_port}\n"
                          + self.log_tails())
            r = self.run("scontrol", "ping", timeout=10)
            if "is UP" in r.stdout:
                return
            if time.monotonic() > deadline:
                self._terminate("slurmctld")
                raise TimeoutError(f"slurmctld not answering after {timeout:.0f} s\n" + self.log_tails())
            time.sleep(0.05)

    def stop_slurmctld(self) -> None:
        """SIGTERM slurmctld (it saves its state) and wait until it is gone.
        Client commands then fail (``Unable to contact slurm controller``)."""
        self._terminate("slurmctld")

    def restart_slurmctld(self, timeout: float = _READY_TIMEOUT, probe: bool = True) -> None:
        """Stop and start slurmctld on the same port and state; return when it
        answers, the node is responding and (``probe``) a probe job has run: the
        first scheduling pass comes ~3 s after slurmctld starts, or within
        ``bf_interval`` (1 s here) from the backfill scheduler.  About 1.2 s.
        (The probe queues behind other jobs: on a full node pass probe=False.)"""
        self.stop_slurmctld()
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.start_slurmctld(timeout=max(1.0, deadline - time.monotonic()))
                break
            except _BindFailed:  # the old listener's port not yet free
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        if self.slurmd_running():
            # The recovered node stays UNKNOWN until slurmd re-registers, which it
            # only does on slurmctld's first ping, ~4 s later; a reconfigure makes
            # slurmd re-register at once.
            self.run("scontrol", "reconfigure")
            self.start_slurmd(wait=True, timeout=max(1.0, deadline - time.monotonic()))
            if probe:  # the first scheduling pass runs ~3 s after slurmctld starts
                self.probe(timeout=max(1.0, deadline - time.monotonic()))

    # --------------------------------------------------------------------- jobs

    def active_jobs(self) -> list[str]:
        """Ids of jobs not yet finished (squeue's default states; array tasks
        expanded, e.g. ``7_3``; pending array remainders as ``7_[4-9]``)."""
        r = self.run("squeue", "-h", "-o", "%i")
        if r.returncode != 0:
            raise RuntimeError(f"squeue failed: {r.stderr.strip()}")
        return r.stdout.split()

    def _scancel_active(self) -> None:
        jobs = self.active_jobs()
        if jobs:
            self.run("scancel", *sorted({j.split("_")[0] for j in jobs}))

    def cancel_all(self, timeout: float = 20.0) -> None:
        """scancel every unfinished job of this cluster; wait until squeue (default
        states: pending, running, completing...) lists none."""
        deadline = time.monotonic() + timeout
        jobs = self.active_jobs()
        while jobs:
            base = sorted({j.split("_")[0] for j in jobs})
            self.run("scancel", *base)
            time.sleep(0.1)
            jobs = self.active_jobs()
            if jobs and time.monotonic() > deadline:
                raise TimeoutError(f"jobs still active after scancel: {jobs}\n" + self.log_tails())

    # ----------------------------------------------------------------- teardown

    def job_pids(self) -> list[int]:
        """Live processes of THIS cluster's jobs: ``slurmstepd`` processes that
        mention its temp dir (open log/output files, cwd, environment), all their
        descendants, and any process whose environment holds both
        ``SLURM_CONF=<this conf>`` and ``SLURM_JOB_ID`` (job processes orphaned by
        a killed slurmstepd).  Never this process."""
        me = os.getpid()
        conf_tag = f"SLURM_CONF={self.conf}\0".encode()
        parents: dict[int, int] = {}
        found: set[int] = set()
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            pid = int(name)
            if pid == me or not _alive(pid):
                continue
            parents[pid] = _ppid(pid)
            if _comm(pid).startswith("slurmstepd"):
                if _mentions(pid, str(self.dir)):
                    found.add(pid)
                continue
            with contextlib.suppress(OSError):
                with open(f"/proc/{pid}/environ", "rb") as f:
                    env = f.read() + b"\0"
                if conf_tag in env and b"\0SLURM_JOB_ID=" in b"\0" + env:
                    found.add(pid)
        grew = True
        while grew:
            grew = False
            for pid, ppid in parents.items():
                if ppid in found and pid not in found and pid != me:
                    found.add(pid)
                    grew = True
        return sorted(found)

    def kill_job_processes(self, timeout: float = 5.0) -> list[int]:
        """SIGKILL every process of :meth:`job_pids` (for teardown after slurmd is
        gone; with slurmd up, prefer :meth:`cancel_all`)."""
        killed: list[int] = []
        deadline = time.monotonic() + timeout
        while True:
            pids = self.job_pids()
            if not pids:
                return killed
            for pid in pids:
                _signal(pid, signal.SIGKILL)
            killed += pids
            _wait_gone(pids, 0.5)
            if time.monotonic() > deadline:
                left = self.job_pids()
                if left:
                    raise RuntimeError(f"job processes still alive: {left}")
                return killed

    def close(self) -> None:
        """Cancel all jobs (waiting for them if slurmd is up), stop slurmd, SIGKILL
        leftover job processes of this cluster (:meth:`job_pids`), stop slurmctld
        and munged (by PID), remove the temp dir.  Idempotent; raises after
        trying everything if a step failed."""
        if self._closed:
            return
        errors: list[str] = []

        def step(what, fn, *args):
            try:
                fn(*args)
            except Exception as e:  # noqa: BLE001 - collect, go on, report
                errors.append(f"{what}: {e}")

        if "slurmctld" in self._procs and self._procs["slurmctld"].poll() is None:
            if self.slurmd_running():
                step("cancel jobs", self.cancel_all)
            else:  # without slurmd nothing completes: cancel, don't wait
                step("cancel jobs", self._scancel_active)
        self._closed = True
        step("stop slurmd", self._terminate, "slurmd")
        step("kill job processes", self.kill_job_processes)
        step("stop slurmctld", self._terminate, "slurmctld")
        step("stop munged", self._terminate, "munged")
        with contextlib.suppress(Exception):
            atexit.unregister(self.close)
        shutil.rmtree(self.dir, ignore_errors=True)
        if errors:
            raise RuntimeError(f"teardown of Slurm test cluster {self.dir}: " + "; ".join(errors))

    def __enter__(self) -> SlurmCluster:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _parse_kv(line: str) -> dict[str, str]:
    """Parse ``scontrol -o`` output: ``Key=value Key2=va=lue with/stuff ...``.
    A new pair starts at `` Word=``; values may contain spaces only where Slurm
    prints them (e.g. ``Reason=...``), which this keeps attached to the key before."""
    out: dict[str, str] = {}
    key = None
    for tok in line.strip().split(" "):
        m = re.match(r"^([A-Za-z][A-Za-z0-9_:/.]*)=(.*)$", tok)
        if m and (key is None or not tok.startswith("=")):
            key = m.group(1)
            out[key] = m.group(2)
        elif key is not None:
            out[key] += " " + tok
    return out


# --------------------------------------------------------------------------- start


def _make_munge_key(path: Path) -> None:
    r = subprocess.run(["mungekey", "-c", "-k", str(path)], capture_output=True, text=True,
                       stdin=subprocess.DEVNULL)
    if r.returncode != 0 or not path.exists() or path.stat().st_size < 32:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        path.write_bytes(os.urandom(1024))
    path.chmod(0o600)


def _mem_mb() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return max(100, min(4000, int(line.split()[1]) // 1024 // 2))
    except OSError:
        pass
    return 1000


def start_cluster(max_array_size: int = 1001, partition: str = "debug",
                  node: str = "hsmtnode", timeout: float = _READY_TIMEOUT,
                  fast_requeue: bool = False) -> SlurmCluster:
    """Start munged, slurmctld and slurmd in a fresh temp dir; return once a probe
    job has COMPLETED (~3.2 s).  Raises SlurmUnavailable / RuntimeError /
    TimeoutError with the daemons' log tails; everything started is torn down on
    failure.

    ``fast_requeue``: a job requeued because its node went down is eligible again
    after ``cred_expire`` + 1 s (Slurm default 120 s; here 10 s) and is started by
    the backfill scheduler every ``bf_interval`` (default 30 s; here 1 s).  With
    it, a requeued job runs again ~12 s after slurmd comes back instead of ~2 min.
    """
    problem = missing_requirements()
    if problem:
        raise SlurmUnavailable(problem)
    t0 = time.monotonic()
    d = Path(tempfile.mkdtemp(prefix="hsmt-slurm-"))
    d.chmod(0o755)  # munged insists that no one else can write here; o+x for its socket
    for sub in ("state", "spool", f"spool/{node}", "munge"):
        (d / sub).mkdir(mode=0o755, exist_ok=True)  # munged: socket dir must be o+x
    conf = d / "slurm.conf"
    c = SlurmCluster(
        dir=d, conf=conf, env=_clean_env(conf), partition=partition, node=node,
        ctld_port=0, slurmd_port=0,
        munge_socket=d / "munge" / "munge.socket", munge_key=d / "munge" / "munge.key",
        munged_log=d / "munged.stderr", slurmctld_log=d / "slurmctld.log", slurmd_log=d / "slurmd.log",
        max_array_size=max_array_size,
    )
    atexit.register(c.close)
    try:
        (d / "plugstack.conf").write_text("")
        _make_munge_key(c.munge_key)
        c._spawn("munged", [
            "munged", "-F", "--force",
            f"--key-file={c.munge_key}", f"--socket={c.munge_socket}",
            # with -F munged logs to stderr (munged.stderr); --log-file is unused
            f"--pid-file={d / 'munge' / 'munged.pid'}", f"--log-file={d / 'munged.log'}",
            f"--seed-file={d / 'munge' / 'munged.seed'}",
        ], c.munged_log)
        deadline = time.monotonic() + 10
        while not c.munge_socket.exists():
            c._check_running("munged")
            if time.monotonic() > deadline:
                raise TimeoutError(f"munged socket {c.munge_socket} missing after 10 s\n" + c.log_tails())
            time.sleep(0.02)

        host = socket.gethostname().split(".")[0]
        for attempt in range(5):
            c.ctld_port, c.slurmd_port = _free_port(), _free_port()
            if c.ctld_port == c.slurmd_port or not (_port_free(c.ctld_port) and _port_free(c.slurmd_port)):
                continue
            conf.write_text(_CONF.format(
                cluster="hsmt" + d.name.rsplit("-", 1)[-1].lower().replace("_", "")[:20],
                host=host, ctld_port=c.ctld_port, slurmd_port=c.slurmd_port,
                munge_socket=c.munge_socket, dir=d, max_array_size=int(max_array_size),
                node=node, partition=partition, mem=_mem_mb(),
                auth_extra=",cred_expire=10" if fast_requeue else "",
            ))
            try:
                c.start_slurmctld()
                break
            except _BindFailed:
                if attempt == 4:
                    raise
        c.start_slurmd(wait=False)
        c.probe(timeout=max(1.0, timeout - (time.monotonic() - t0)))
        c.start_seconds = time.monotonic() - t0
        return c
    except BaseException:
        with contextlib.suppress(Exception):
            c.close()
        raise
