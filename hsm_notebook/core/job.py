"""The job contract: how one combination becomes a process, wherever it runs.

A job is ``command + parameter arguments``, started by a tiny POSIX ``sh`` wrapper
that records its pid, sends stdout/stderr to files and writes the exit code
atomically when the command ends.  Parameters are separate argv items: the
wrapper runs ``"$@"``, so no shell ever parses a value.  The same wrapper serves
every source that runs processes (local, SSH, Slurm's batch script calls it too).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .errors import ConfigError

ARG_STYLES = ("hydra", "argparse", "none")

#: Files inside a job's directory.
PARAMS_FILE = "params.json"
METRICS_FILE = "metrics.json"
STDOUT_FILE = "stdout.log"
STDERR_FILE = "stderr.log"
EXIT_CODE_FILE = "exit_code"
PID_FILE = "pid"
CANCEL_FILE = "cancelled"

#: ``sh -c WRAPPER hsm-job JOB_DIR CMD ARG...``.  All three streams are redirected so the
#: wrapper never holds the caller's pipes.  With ``HSM_EVENTS`` set, the wrapper appends the
#: job's name to that file when it ends: a remote watcher turns that into a wake-up.
WRAPPER = (
    'd=$1; shift; echo $$ > "$d/pid"; '
    '"$@" > "$d/stdout.log" 2> "$d/stderr.log" < /dev/null; '
    'echo $? > "$d/exit_code"; '
    '[ -z "$HSM_EVENTS" ] || echo "${d##*/}" >> "$HSM_EVENTS"'
)
# pid and exit_code are written with one small write() each (no temp file + mv: that cost an
# extra process per file per job); readers treat an empty file as not written yet.


_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_JOB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_job_name(job_name: str) -> str:
    if not isinstance(job_name, str) or not _JOB_NAME.match(job_name):
        raise ConfigError(
            f"{job_name!r} is not usable as a folder name; use letters, digits, '.', '_' and '-'",
            "job_name",
        )
    return job_name


def format_value(value: Any) -> str:
    """A parameter value as one command-line string (YAML/Hydra spelling for bool and None)."""
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

    def __post_init__(self) -> None:
        for key in self.env:
            if not _ENV_NAME.match(key):
                raise ConfigError(f"{key!r} is not a valid environment variable name (letters, digits, _)", "env")
        if self.arg_style not in ARG_STYLES:
            raise ConfigError(f"must be one of {ARG_STYLES}, got {self.arg_style!r}", "arg_style")

    def args(self, params: Mapping[str, Any]) -> list[str]:
        """``{"lr": 0.1}`` -> ``["lr=0.1"]`` (hydra) or ``["--lr=0.1"]`` (argparse)."""
        if self.arg_style == "none":
            return []
        prefix = "--" if self.arg_style == "argparse" else ""
        return [f"{prefix}{k}={format_value(v)}" for k, v in params.items()]

    def argv(self, params: Mapping[str, Any]) -> list[str]:
        """The command followed by the parameter arguments."""
        return [*self.command, *self.args(params)]

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
        return {"command": list(self.command), "arg_style": self.arg_style, "workdir": self.workdir, "env": dict(self.env)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "JobTemplate":
        return cls(tuple(data["command"]), data.get("arg_style", "hydra"), data.get("workdir"), dict(data.get("env") or {}))


def write_params(job_dir: Path, params: Mapping[str, Any]) -> None:
    (job_dir / PARAMS_FILE).write_text(json.dumps(params, indent=1))


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
