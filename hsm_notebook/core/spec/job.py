"""The job contract: how one combination becomes a process, wherever it runs.

A job is ``command + parameter arguments``, started by a tiny POSIX ``sh`` wrapper
that records its pid, sends stdout/stderr to files and writes the exit code
atomically when the command ends.  Parameters are separate argv items: the
wrapper runs ``"$@"``, so no shell ever parses a value.  The same wrapper serves
every source that runs processes (local, SSH, Slurm's batch script calls it too).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..model.errors import ConfigError
from .environment import check_literal_env
from .jobpaths import NAMES, NEVER, TASKS_DIR, JobFiles, JobPaths, check_job_name, sh  # noqa: F401 - re-exported
from .overrides import hydra_value

ARG_STYLES = ("hydra", "argparse", "none", "json")  # json: all parameters as one JSON argument (function sweeps)

#: Signals the wrapper passes on to the program and notes in ``signalled``: TERM, INT, HUP and
#: XCPU end a run (a cancel, a requeue, a time limit); USR1 and USR2 are checkpoint signals
#: (Slurm's ``--signal=B:USR1@120``) after which a program may requeue itself.  A run that got
#: one did not end by itself, so a requeued copy of it runs again (and resumes).
FORWARDED_SIGNALS = ("TERM", "INT", "HUP", "XCPU", "USR1", "USR2")

#: ``sh -c WRAPPER hsm-job JOB_DIR CMD ARG...``.  All three streams are redirected so the
#: wrapper never holds the caller's pipes.  With ``HSM_EVENTS`` set, the wrapper appends the
#: job's name to that file when it ends: a remote watcher turns that into a wake-up.
#:
#: The wrapper first *claims* the job by creating the pid file exclusively (``set -C``: an
#: O_EXCL open in dash, bash and ash; ``true``, not ``:``, because a failed redirection on a
#: special builtin would exit the shell with an error).  So a pid file, even empty, means the
#: wrapper started; a controller that finds none may claim the job itself (:func:`claim`) and
#: then knows it can never start.  A second start of the same folder is a scheduler's requeue
#: (``SLURM_RESTART_COUNT``): it runs again unless a controller claimed the job, or the earlier
#: run ended by itself (an exit code and no signal from outside: a node that failed after the program
#: finished must not run it twice); the earlier run's logs, exit code and signals move to
#: ``runN/`` first (its final ``metrics.json`` too), and a marker line ``{"hsm_run": N+1}`` is
#: appended to ``metrics.jsonl`` (after a newline, ending a line the killed run left unfinished): the
#: steps after it are the new run's (see :mod:`.steps`).  A wrapper that cannot write its pid (a full
#: disk) runs nothing: its exit code could not be written either, and a retry would run the task twice.
#:
#: The program runs in the background so that the wrapper, which a batch system signals (the
#: batch shell), can pass signals on and still wait for the program's own exit code.
def render_wrapper(names: JobFiles = NAMES) -> str:
    """The wrapper's text, every file name taken from ``names`` (see :data:`WRAPPER`)."""
    d = JobPaths.shell("d", names)
    pid, rc, sig, out, err = sh(d.pid), sh(d.exit_code), sh(d.signalled), sh(d.stdout), sh(d.stderr)
    moved = " ".join(sh(d.folder / name) for name in names.moved_on_requeue)
    run = sh(d.run("$n"))
    return (
        f'd=$1; shift; set -C; {{ true > {pid}; }} 2>/dev/null || '
        f'{{ [ "${{SLURM_RESTART_COUNT:-0}}" != 0 ] && read p < {pid} && [ "$p" != {NEVER} ]; }} || exit 0; '
        f'set +C; [ ! -e {rc} ] || [ -e {sig} ] || exit 0; '
        f'if [ -e {out} ]; then n=1; while [ -e {run} ]; do n=$((n+1)); done; mkdir {run} && '
        f'mv -f {moved} "{d.run("$n")}/" 2>/dev/null; '
        f'printf \'\\n{{"hsm_run": %d}}\\n\' $((n+1)) >> {sh(d.steps)}; fi; '
        f'echo $$ > {pid} || exit 1; '
        f'"$@" > {out} 2> {err} < /dev/null & c=$!; '
        + "".join(f"trap 'echo {s} >> {sig}; kill -s {s} $c 2>/dev/null' {s}; " for s in FORWARDED_SIGNALS)
        + 'r=0; wait $c || r=$?; while kill -0 $c 2>/dev/null; do r=0; wait $c || r=$?; done; '
        f'echo $r > {rc}; '
        '[ -z "$HSM_EVENTS" ] || echo "${d##*/}" >> "$HSM_EVENTS"'
    )


WRAPPER = render_wrapper()
# pid and exit_code are written with one small write() each (no temp file + mv: that cost an
# extra process per file per job); readers treat an empty file as not written yet.


def claim(job_dir: Path) -> bool:
    """Claim a job that has not started for the controller: create its pid file exclusively,
    holding :data:`NEVER`.  True: the job never started and now never will.  False: its wrapper
    claimed it first (it started)."""
    job_dir.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(JobPaths(job_dir).pid, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        f.write(NEVER + "\n")
    return True


def read_pid(job_dir: Path) -> str | None:
    """The pid file's text, stripped: None if absent, "" while the wrapper writes it (or could
    not: a full disk), :data:`NEVER` if a controller claimed the job, else the wrapper's pid."""
    try:
        return JobPaths(job_dir).pid.read_text().strip()
    except FileNotFoundError:
        return None


_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
def format_value(value: Any) -> str:
    """A parameter value as one literal command-line string for ``arg_style="argparse"``:
    text as it is, ``true``/``false``/``null``, lists and dicts as JSON."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (list, dict)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


@dataclass(frozen=True)
class JobTemplate:
    """What every job of a sweep runs, and how parameters are passed to it."""

    command: tuple[str, ...]
    arg_style: str = "hydra"
    workdir: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    #: Also pass ``wandb.group=<group> output.dir=<task dir>`` after the parameters, as the
    #: reference HSM does (scripts written for it save there).
    reference_args: bool = False
    #: A function sweep: the Python major.minor that pickled the function (each source's
    #: interpreter must match it); None for a command.
    python_version: str | None = None

    def __post_init__(self) -> None:
        for key in self.env:
            if not _ENV_NAME.match(key):
                raise ConfigError(f"{key!r} is not a valid environment variable name (letters, digits, _)", "env")
        check_literal_env(self.env)
        if self.arg_style not in ARG_STYLES:
            raise ConfigError(f"must be one of {ARG_STYLES}, got {self.arg_style!r}", "arg_style")

    def args(self, params: Mapping[str, Any]) -> list[str]:
        """``{"lr": 0.1}`` -> ``["lr=0.1"]`` (hydra: in Hydra's override grammar, see
        :mod:`.overrides`) or ``["--lr=0.1"]`` (argparse: the text as it is)."""
        if self.arg_style == "none":
            return []
        if self.arg_style == "hydra":
            return [f"{k}={hydra_value(v, k)}" for k, v in params.items()]
        if self.arg_style == "json":
            return [json.dumps(dict(params), separators=(",", ":"))] if params else []
        return [f"--{k}={format_value(v)}" for k, v in params.items()]

    def check(self, values: Iterable[tuple[str, Any]]) -> None:
        """Raise :class:`ConfigError` for the first ``(name, value)`` its arg style cannot pass."""
        if self.arg_style == "hydra":
            for name, value in values:
                hydra_value(value, name)

    def argv(self, params: Mapping[str, Any], *, task_dir: str | None = None, group: str | None = None) -> list[str]:
        """The command followed by the parameter arguments (and, with ``reference_args``, the
        group and the task's folder where the job runs)."""
        extra = {"wandb.group": group, "output.dir": task_dir} if self.reference_args and task_dir else {}
        if self.arg_style == "json":
            return [*self.command, *self.args({**params, **extra})] if params or extra else [*self.command, "{}"]
        return [*self.command, *self.args(params), *self.args(extra)]

    def environ(
        self, *, job_dir: str, job_name: str, sweep_id: str, task_id: str | None, wandb_group: str | None
    ) -> dict[str, str]:
        """Variables every job sees, on top of the user's ``env``."""
        env = dict(self.env)
        env.update(HSM_TASK_DIR=job_dir, HSM_JOB_NAME=job_name, HSM_SWEEP_ID=sweep_id)
        if task_id:
            env["HSM_TASK_ID"] = task_id
        if wandb_group:
            env["WANDB_RUN_GROUP"] = wandb_group
        return env

    def to_dict(self) -> dict[str, Any]:
        """As plain data, for the sweep record."""
        return {"command": list(self.command), "arg_style": self.arg_style, "workdir": self.workdir,
                "env": dict(self.env), "reference_args": self.reference_args, "python_version": self.python_version}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> JobTemplate:
        return cls(tuple(data["command"]), data.get("arg_style", "hydra"), data.get("workdir"),
                   dict(data.get("env") or {}), bool(data.get("reference_args", False)), data.get("python_version"))


def reference_template(
    command: Sequence[str] | str | None = None, *, python_path: str | None = None, script_path: str | None = None,
    project_dir: str | Path | None = None, arg_style: str = "hydra",
) -> JobTemplate | None:
    """The job of a source driven without a ``Sweep``, from the reference's constructor
    arguments: ``command`` (a list, or a string split like a shell), or ``python_path``
    (default ``python``; may be ``"conda run -n env python"``) followed by ``script_path``; run
    in ``project_dir`` (default: the current directory).  None when none of them is given."""
    from .config import parse_command

    if command is None and not script_path:
        if python_path is not None:
            raise ConfigError("python_path needs script_path (the script to run)", "script_path")
        return None
    if command is not None and (script_path or python_path is not None):
        raise ConfigError("give command, or python_path and script_path, not both", "command")
    if command is None:
        command = [*parse_command(python_path or "python", "python_path"), str(script_path)]
    workdir = Path(project_dir or ".").expanduser().absolute()
    if not workdir.is_dir():
        raise ConfigError(f"{workdir} is not a directory", "project_dir")
    return JobTemplate(parse_command(command), arg_style, str(workdir), {})


def write_params(job_dir: Path, params: Mapping[str, Any]) -> None:
    JobPaths(job_dir).params.write_text(json.dumps(params, indent=1))


def tail(path: Path, lines: int = 20, max_bytes: int = 64 * 1024) -> str:
    """The last ``lines`` lines of a text file, reading at most ``max_bytes`` from its end."""
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except FileNotFoundError:
        return ""
    return "\n".join(data.decode(errors="replace").splitlines()[-lines:])
