"""This machine's job processes: start each under the job wrapper in its own session, watch it
end (a pidfd per job wakes the loop), read its state from its folder, stop it (TERM, then KILL
after a grace period), and tell a live launcher from a reused pid after a restart.  Jobs forked by a
fork server (``warm.py``) are read the same way; their command line is the server's, so their
``launch`` file ("PID STARTTIME") is what tells them alive.  The contract around them is
``LocalComputeSource`` (``local.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

from ..core.model.errors import SubmitError
from ..core.model.state import JobState
from ..core.spec.job import WRAPPER, claim, read_pid
from ..core.spec.jobpaths import NEVER, JobPaths, exit_code_of


def pid_alive(pid: int, marker: str | None = None) -> bool:
    """True if ``pid`` runs and is not a zombie (and, on Linux, has ``marker`` as one of its
    argv items: a reused pid is not the job's)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            if f.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                return False
        if marker is not None:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                return any(_same_dir(arg, marker) for arg in f.read().split(b"\0"))
        return True
    except FileNotFoundError:
        return False
    except OSError:  # no /proc (macOS): fall back to signal 0
        try:
            os.kill(pid, 0)
            return True
        except ProcessLookupError:
            return False
        except PermissionError:
            return True


def _same_dir(arg: bytes, job_dir: str) -> bool:
    """Is this argv item the job dir, maybe spelled through another path (a symlink)?"""
    if arg == os.fsencode(job_dir):
        return True
    tail = os.fsencode("/" + os.path.basename(job_dir))
    return arg.endswith(tail) and os.path.realpath(os.fsdecode(arg)) == os.path.realpath(job_dir)


def launched(job_dir: Path) -> int | None:
    """The pid a forked job (``sources/warm.py``) recorded in its ``launch`` file ("PID STARTTIME"),
    if that process still runs and started then (not a reused pid); None otherwise.  A forked job's
    command line is its fork server's, so its job dir cannot be found there."""
    try:
        pid, start = JobPaths(job_dir).launch.read_text().split()
        with open(f"/proc/{int(pid)}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except (OSError, ValueError):
        return None
    return int(pid) if fields[0] != b"Z" and fields[19].decode() == start else None


class ProcessTable:
    """Which live process has a given argv item (a job dir): one read of /proc, made the first
    time a poll round asks and shared by the round.  Empty where there is no /proc."""

    def __init__(self) -> None:
        self._items: dict[bytes, list[tuple[int, bytes]]] | None = None  # by last path component

    def find(self, item: str) -> int | None:
        if self._items is None:
            self._items = {}
            try:
                pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
            except OSError:
                pids = []
            for pid in pids:
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        argv = f.read()  # empty for zombies and kernel threads
                except OSError:
                    continue
                for arg in argv.split(b"\0"):
                    self._items.setdefault(arg.rsplit(b"/", 1)[-1], []).append((pid, arg))
        for pid, arg in self._items.get(os.fsencode(os.path.basename(item)), []):
            if _same_dir(arg, item) and pid_alive(pid, item):
                return pid
        return None


class LocalJobManager:
    """Starts, inspects and stops detached job processes; knows nothing of sweeps."""

    def __init__(self, cancel_grace: float = 5.0):
        self.cancel_grace = cancel_grace
        self._procs: dict[Path, subprocess.Popen] = {}

    def start(self, job_dir: Path, argv: list[str], env: dict[str, str], cwd: str | None) -> int:
        """Start the job's wrapper in its own session; returns the wrapper's pid."""
        job_dir.mkdir(parents=True, exist_ok=True)
        try:
            proc = subprocess.Popen(
                ["/bin/sh", "-c", WRAPPER, "hsm-job", str(job_dir), *argv],
                cwd=cwd, env={**os.environ, **env}, start_new_session=True,
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
        except OSError as exc:
            raise SubmitError(f"cannot start {argv[0]!r} in {cwd}: {exc}") from exc
        self._procs[job_dir] = proc
        return proc.pid

    def watch(self, job_dir: Path, loop: asyncio.AbstractEventLoop, on_exit, pid: int | None = None) -> bool:
        """Call ``on_exit()`` on the loop when the job's wrapper exits (Linux pidfd): the wrapper this
        manager started, or the process ``pid`` (a job forked by a fork server)."""
        proc = self._procs.get(job_dir) if pid is None else None
        if (proc is None and pid is None) or not hasattr(os, "pidfd_open"):
            return False
        try:
            fd = os.pidfd_open(proc.pid if proc is not None else pid)  # type: ignore[arg-type]
        except ProcessLookupError:  # ended (and reaped) already
            loop.call_soon(on_exit)
            return True
        except OSError:
            return False

        def ready() -> None:
            loop.remove_reader(fd)
            os.close(fd)
            if proc is not None:
                proc.poll()  # reap now: no zombie left behind
            on_exit()

        loop.add_reader(fd, ready)
        return True

    def state(self, job_dir: Path, table: ProcessTable | None = None) -> JobState:
        """The job's state from its files (exit code, pid) and, for the living, the process table.

        LOST only when that is certain: the wrapper's process is gone without an exit code, or
        the job never started and has been claimed so that it never will (see ``job.WRAPPER``).
        A job without a pid file whose launcher still runs (a slow start) is QUEUED."""
        paths = JobPaths(job_dir)
        rc = exit_code_of(paths)
        if rc is not None:
            proc = self._procs.pop(job_dir, None)
            if proc is not None:
                proc.poll()
            if rc == 0:
                return JobState.COMPLETED
            return JobState.CANCELLED if paths.cancelled.exists() else JobState.FAILED
        table = table or ProcessTable()
        text = read_pid(job_dir)
        if text is None:  # not started: still starting, or never to start
            if self.find(job_dir, table) is not None:
                return JobState.QUEUED
            if not claim(job_dir):  # its wrapper claimed it just now
                return self.state(job_dir, table)
            text = NEVER
        if text == NEVER:
            return JobState.CANCELLED if paths.cancelled.exists() else JobState.LOST
        proc = self._procs.get(job_dir)
        if proc is not None and proc.poll() is None:
            return JobState.RUNNING
        # a pid: is that process still the job's wrapper?  Empty: the wrapper claimed the job and is
        # writing its pid (or could not: a full disk, and then it ran nothing): is it still there?
        alive = ((pid_alive(int(text), str(job_dir)) or launched(job_dir) == int(text)) if text.isdigit()
                 else self.find(job_dir, table) is not None)
        if alive:
            return JobState.RUNNING
        if exit_code_of(paths) is not None:  # finished between the two checks
            return self.state(job_dir, table)
        if paths.cancelled.exists():
            return JobState.CANCELLED
        return JobState.LOST

    def find(self, job_dir: Path, table: ProcessTable | None = None) -> int | None:
        """The pid of a live process started for the job (its launcher or wrapper: the job dir is
        one of its argv items; Popen returns only after exec; or a forked job, by its launch file),
        or None."""
        proc = self._procs.get(job_dir)
        if proc is not None and proc.poll() is None:
            return proc.pid
        found = (table or ProcessTable()).find(str(job_dir))
        return found if found is not None else launched(job_dir)

    def started(self, job_dir: Path) -> bool:
        """Did the job start, or may it still (a launcher still starting)?  False only when it
        provably never will: then its pid file is claimed for the controller."""
        if not job_dir.is_dir():
            return False  # the launcher is started after the folder is made
        text = read_pid(job_dir)
        if text is None and self.find(job_dir) is None:
            if claim(job_dir):
                return False
            text = read_pid(job_dir)
        return text != NEVER

    @staticmethod
    def lost_reason(job_dir: Path) -> str | None:
        """Why a LOST job is lost, when its files say more than "vanished without an exit code"."""
        text = read_pid(job_dir)
        if text == NEVER:
            return "the job never started (its launcher is gone); it was claimed so it never will"
        if text == "":
            return "the job's wrapper could not write its pid (is the disk full?) and ran nothing"
        return None

    @staticmethod
    def _read_pid(job_dir: Path) -> int | None:
        text = read_pid(job_dir)
        return int(text) if text and text.isdigit() else None

    async def stop(self, job_dir: Path) -> bool:
        """TERM the job's process group, then KILL it after the grace period.  A job that has not
        started is claimed instead, so that it never does."""
        paths = JobPaths(job_dir)
        if paths.exit_code.exists():
            return False
        proc = self._procs.get(job_dir)
        if read_pid(job_dir) is None and job_dir.is_dir():
            paths.cancelled.touch()
            if claim(job_dir):
                if proc is not None and proc.poll() is None:  # our launcher, still starting: end it now
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGTERM)
                return True
        if read_pid(job_dir) == NEVER:
            return False
        pid = self._read_pid(job_dir)
        pid = pid if pid is not None else (proc.pid if proc else None)
        if pid is None or paths.exit_code.exists():
            return False
        paths.cancelled.touch()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + self.cancel_grace
            while time.monotonic() < deadline and pid_alive(pid):
                if proc is not None:
                    proc.poll()
                await asyncio.sleep(0.05)
            if not pid_alive(pid):
                break
        if proc is not None:
            proc.poll()
        return True


