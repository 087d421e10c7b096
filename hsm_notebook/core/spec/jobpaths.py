"""``JobPaths``: one object that knows a job's folder and its files, here or on a remote host.

The names a job's folder holds are spelled once, in :data:`NAMES` (a :class:`JobFiles`).  A
:class:`JobPaths` joins them to a folder: ``JobPaths.local(sweep_dir, job)`` on this machine (a
``Path``), ``JobPaths.remote(sweep_root, job)`` on a remote host (a ``PurePosixPath``), and
``JobPaths.shell("j")`` for a folder a shell script holds in ``$j`` (render with :func:`sh`).  The
job wrapper (``core.job.WRAPPER``) and every remote snippet (the SSH poll, stop and cleanup, the
Slurm login read) are rendered from that last form, so a name changed here changes them all.

An exit code has one reader: :func:`read_exit_code` (the text of an ``exit_code`` file, or what a
remote listing printed of it); in shell, :func:`sh_read_exit_code` is the one way a script reads it.
"""

from __future__ import annotations

import posixpath
import re
import shlex
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path, PurePath, PurePosixPath
from typing import Generic, TypeVar

from ...metrics import METRICS_FILE, STEPS_FILE
from ..model.errors import ConfigError
from .functions import RESULT_FILE

#: A sweep folder's (or a remote sweep root's) folder of job folders.
TASKS_DIR = "tasks"
#: A pid file holding this was created by a controller, not by the wrapper: the job never started
#: and never will (the wrapper's exclusive create fails, so it exits without running anything).
NEVER = "never"

_JOB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_job_name(job_name: str) -> str:
    """A job name usable as a folder name (and as a word in a shell script), or ConfigError."""
    if not isinstance(job_name, str) or not _JOB_NAME.match(job_name):
        raise ConfigError(
            f"{job_name!r} is not usable as a folder name; use letters, digits, '.', '_' and '-'",
            "job_name",
        )
    return job_name


@dataclass(frozen=True)
class JobFiles:
    """The names of the files in a job's folder: the one place they are spelled."""

    params: str = "params.json"
    metrics: str = METRICS_FILE  # the final metrics (log_metrics without step)
    steps: str = STEPS_FILE  # one JSON line per step (log_metrics with step)
    result: str = RESULT_FILE  # a function's return value
    stdout: str = "stdout.log"
    stderr: str = "stderr.log"
    scheduler: str = "slurm.out"  # the batch system's own messages (time limit, out of memory)
    exit_code: str = "exit_code"
    pid: str = "pid"
    cancelled: str = "cancelled"
    signalled: str = "signalled"  # the signals a run received from outside (a cancel, a requeue, a time limit)
    launch: str = "launch"  # SSH: "PID STARTTIME" of the launched wrapper, written by the start script
    gpus: str = "gpus"  # local: the GPU ids pinned to the job ("0,1"), restored on attach
    run_script: str = "run.sh"  # Slurm: the job's environment and argv, run by the array script
    scheduler_id: str = "slurm_id"  # Slurm: "ARRAY_TASK", written before the wrapper starts
    run_prefix: str = "run"  # earlier runs of a requeued job: run1/, run2/, ...

    @cached_property
    def product(self) -> tuple[str, ...]:
        """The files the product itself reads (exit code, logs, metrics, steps, a function's return
        value, the batch system's output): they always come home from a remote host, whatever
        ``collect=`` says (also inside an earlier run's ``runN/``)."""
        return (self.params, self.metrics, self.steps, self.result, self.stdout, self.stderr, self.scheduler,
                self.exit_code, self.pid, self.cancelled, self.signalled)

    @cached_property
    def moved_on_requeue(self) -> tuple[str, ...]:
        """What the wrapper moves into ``runN/`` before a requeued run starts."""
        return (self.stdout, self.stderr, self.exit_code, self.signalled, self.metrics)

    def run_index(self, name: str) -> int | None:
        """``"run3"`` -> 3; None for any other name."""
        digits = name[len(self.run_prefix):]
        return int(digits) if name.startswith(self.run_prefix) and digits.isdigit() else None


NAMES = JobFiles()

P = TypeVar("P", bound=PurePath)


@dataclass(frozen=True)
class JobPaths(Generic[P]):
    """A job's folder and its files.  ``P`` is ``Path`` here, ``PurePosixPath`` on a remote host."""

    folder: P
    names: JobFiles = field(default=NAMES, compare=False)

    @staticmethod
    def tasks_dir(root: P) -> P:
        """The folder of job folders under a sweep folder (or a remote sweep root)."""
        return root / TASKS_DIR

    @classmethod
    def local(cls, sweep_dir: Path | str, job_name: str) -> JobPaths[Path]:
        """A job's folder on this machine: ``<sweep dir>/tasks/<job name>`` (made once per job:
        polls ask for it every turn)."""
        return _local(str(sweep_dir), job_name)

    @classmethod
    def remote(cls, sweep_root: PurePosixPath | str, job_name: str) -> JobPaths[PurePosixPath]:
        """A job's folder on a remote host: ``<sweep root>/tasks/<job name>`` (POSIX paths)."""
        return JobPaths(PurePosixPath(sweep_root) / TASKS_DIR / check_job_name(job_name))

    @classmethod
    def shell(cls, var: str, names: JobFiles = NAMES) -> JobPaths[PurePosixPath]:
        """The same paths for a folder a shell script holds in ``$var``: ``sh(JobPaths.shell("j").pid)``
        is ``"$j/pid"``."""
        return JobPaths(PurePosixPath(f"${var}"), names)

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def params(self) -> P:
        return self.folder / self.names.params

    @property
    def metrics(self) -> P:
        return self.folder / self.names.metrics

    @property
    def steps(self) -> P:
        return self.folder / self.names.steps

    @property
    def result(self) -> P:
        return self.folder / self.names.result

    @property
    def stdout(self) -> P:
        return self.folder / self.names.stdout

    @property
    def stderr(self) -> P:
        return self.folder / self.names.stderr

    @property
    def scheduler(self) -> P:
        return self.folder / self.names.scheduler

    @property
    def exit_code(self) -> P:
        return self.folder / self.names.exit_code

    @property
    def pid(self) -> P:
        return self.folder / self.names.pid

    @property
    def cancelled(self) -> P:
        return self.folder / self.names.cancelled

    @property
    def signalled(self) -> P:
        return self.folder / self.names.signalled

    @property
    def launch(self) -> P:
        return self.folder / self.names.launch

    @property
    def gpus(self) -> P:
        return self.folder / self.names.gpus

    @property
    def run_script(self) -> P:
        return self.folder / self.names.run_script

    @property
    def scheduler_id(self) -> P:
        return self.folder / self.names.scheduler_id

    def run(self, n: int | str) -> P:
        """The folder of an earlier run, ``runN/`` (``n`` may be a shell expression: ``run("$n")``)."""
        return self.folder / f"{self.names.run_prefix}{n}"


def read_exit_code(text: str | None) -> int | None:
    """The one reader of an exit code: an ``exit_code`` file's text (or what a remote listing printed
    of it) -> the code.  None when there is none yet: no file (None), an empty one (the wrapper is
    writing it) or anything but an integer (a listing's "-"; the wrapper writes only integers)."""
    text = (text or "").strip()
    try:
        return int(text)
    except ValueError:
        return None


def exit_code_of(paths: JobPaths[Path]) -> int | None:
    """A local job's exit code (see :func:`read_exit_code`)."""
    try:
        return read_exit_code(paths.exit_code.read_text())
    except FileNotFoundError:
        return None


def sh(path: PurePath) -> str:
    """A path as one double-quoted shell word, its variables expanded: ``"$j/exit_code"``."""
    return f'"{path}"'


def sh_read_exit_code(paths: JobPaths[PurePosixPath], into: str = "rc") -> str:
    """The one way a script reads an exit code: ``$into`` holds the file's text, or is empty."""
    f = sh(paths.exit_code)
    return f'{into}=""; [ -f {f} ] && read {into} < {f}'


def sh_claim(paths: JobPaths[PurePosixPath]) -> str:
    """A command that claims a job that has not started (its pid file created exclusively, holding
    :data:`NEVER`, in a subshell so ``set -C`` never outlives it): true if this claimed it."""
    return f"(set -C; echo {NEVER} > {sh(paths.pid)}) 2>/dev/null"


# -- the new bytes of metrics.jsonl: here, or for many jobs in one remote command ------------------
#: At most this many new bytes of one job are read per poll (a chatty job catches up over polls).
MAX_READ = 1 << 20


def read_local(paths: dict[str, tuple[Path | str, int]], limit: int = MAX_READ) -> dict[str, bytes]:
    """``{job_id: (folder, offset)}`` -> the new bytes of each folder's ``metrics.jsonl``."""
    out: dict[str, bytes] = {}
    for job_id, (folder, offset) in paths.items():
        try:
            with open(Path(folder) / STEPS_FILE, "rb") as f:
                f.seek(offset)
                data = f.read(limit)
        except FileNotFoundError:
            continue
        if data:
            out[job_id] = data
    return out


def remote_script(paths: dict[str, tuple[str, int]]) -> str:
    """One shell command printing the new bytes of each folder's ``metrics.jsonl`` (framed for
    :func:`parse_remote`): how SSH hosts and login nodes answer for all their running jobs at once."""
    parts = []
    for job_id, (folder, offset) in paths.items():
        f = shlex.quote(posixpath.join(folder, STEPS_FILE))
        parts.append(f"[ -f {f} ] && {{ printf '@@hsm %s\\n' {shlex.quote(job_id)}; "
                     f"tail -c +{int(offset) + 1} {f} | head -c {MAX_READ}; printf '\\n@@end\\n'; }}")
    return "\n".join([*parts, "true"])


def parse_remote(out: str) -> dict[str, bytes]:
    """What :func:`remote_script` printed -> ``{job_id: bytes}``."""
    found: dict[str, bytes] = {}
    pos = 0
    while (start := out.find("@@hsm ", pos)) >= 0:
        eol = out.find("\n", start)
        end = out.find("\n@@end\n", eol)
        if eol < 0 or end < 0:
            break
        found[out[start + 6:eol]] = out[eol + 1:end].encode()
        pos = end + 7
    return {job_id: data for job_id, data in found.items() if data}


@lru_cache(maxsize=8192)
def _local(sweep_dir: str, job_name: str) -> JobPaths[Path]:
    return JobPaths(Path(sweep_dir) / TASKS_DIR / check_job_name(job_name))
