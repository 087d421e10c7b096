"""Where a Slurm source runs its commands and keeps its files: this machine, or a login
node over SSH (reusing an ``SSHComputeSource``'s connection, project sync and fetch).

Both sides offer the same five calls; every one is a single command on the login node
whatever the number of jobs.
"""

from __future__ import annotations

import os
import posixpath
import shlex
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import NamedTuple

from ..core.base.remote import RemoteHost
from ..core.base.shell import CommandResult, LocalShell
from ..core.model.errors import CommandError
from ..core.spec import jobpaths
from ..core.spec.job import claim
from ..core.spec.jobpaths import (
    NAMES,
    JobFiles,
    JobPaths,
    exit_code_of,
    read_exit_code,
    sh,
    sh_claim,
    sh_read_exit_code,
)


class TaskFiles(NamedTuple):
    """What a task's folder says about its runs (see ``core.job.WRAPPER``)."""

    code: int | None  # the latest run's exit code; None while it has none
    signalled: bool  # the latest run got an ending signal (a cancel, a requeue, a time limit)
    runs: int  # earlier runs kept in run1/, run2/, ...: the times Slurm requeued it
    claimed: bool  # claimed for the controller just now: it never started and never will


#: One line per task: ``JOB_ID CODE|- SIGNALLED RUNS CLAIMED``; with $3 set, a task without an
#: exit code is claimed (``set -C``: the pid file is created only if the wrapper has not made it).
def read_script(names: JobFiles = NAMES) -> str:
    """The body of the shell function ``r JOB_ID DIR CLAIM`` printing that line, names from ``names``."""
    p = JobPaths.shell("2", names)
    return (f'{sh_read_exit_code(p)}; s=0; [ -e {sh(p.signalled)} ] && s=1; n=0; '
            f'while [ -e {sh(p.run("$((n+1))"))} ]; do n=$((n+1)); done; c=0; '
            f'if [ "$3" = 1 ] && [ -z "$rc" ]; then mkdir -p "$2"; {sh_claim(p)} && c=1; fi; '
            'echo "$1 ${rc:--} $s $n $c"')


_READ = read_script()


class LocalLogin:
    """This machine is the login node; the sweep dir is on the filesystem the nodes share."""

    def __init__(self, source: str, slurm_env: dict[str, str]):
        self.shell = LocalShell(source, {**os.environ, **slurm_env})

    async def setup(self, source, sweep_dir: Path, sweep_id: str) -> tuple[str, str, str]:
        tasks = JobPaths.tasks_dir(Path(sweep_dir))
        tasks.mkdir(parents=True, exist_ok=True)
        (Path(sweep_dir) / "slurm").mkdir(exist_ok=True)
        workdir = (source.template.workdir if source.template else None) or str(sweep_dir)
        return str(tasks), str(Path(sweep_dir) / "slurm"), workdir

    async def run(self, argv: Sequence[str], check: bool) -> CommandResult:
        return await self.shell.run(shlex.join(argv), check=check, timeout=120)

    async def write(self, files: list[tuple[str, str]]) -> None:
        for path, text in files:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(text)

    async def read_tasks(self, job_dirs: dict[str, str], claim_ids: Collection[str] = ()) -> dict[str, TaskFiles]:
        """The folders' exit codes, signals and earlier runs; tasks in ``claim_ids`` without an
        exit code are claimed (True: they never started)."""
        out = {}
        for job_id, d in job_dirs.items():
            paths = JobPaths(Path(d))
            code = exit_code_of(paths)
            runs = 0
            while paths.run(runs + 1).exists():
                runs += 1
            claimed = code is None and job_id in claim_ids and claim(paths.folder)
            out[job_id] = TaskFiles(code, paths.signalled.exists(), runs, claimed)
        return out

    async def read_steps(self, paths: dict[str, tuple[str, int]]) -> dict[str, bytes]:
        return jobpaths.read_local(dict(paths.items()))

    async def fetch(self, names: list[str], local_dirs: list[Path]) -> None:
        return None

    async def close(self) -> None:
        return None


class SSHLogin:
    """A login node reached over SSH: commands go through the SSH source's persistent shell,
    the project is synced by it, finished jobs' folders come home through its fetch."""

    def __init__(self, login: RemoteHost, slurm_env: dict[str, str]):
        self.login: RemoteHost = login  # an SSHComputeSource (or any RemoteHost), bound and set up by us
        self.prefix = ["env", *(f"{k}={v}" for k, v in slurm_env.items())] if slurm_env else []

    async def setup(self, source, sweep_dir: Path, sweep_id: str) -> tuple[str, str, str]:
        assert source.template is not None
        self.login.bind(source.template, Path(sweep_dir), sweep_id, source.notify)
        await self.login.setup(Path(sweep_dir), sweep_id)
        tasks = self.login.tasks_dir
        slurm = posixpath.join(posixpath.dirname(tasks), "slurm")
        await self.login.run(f"mkdir -p {shlex.quote(slurm)}")
        return tasks, slurm, self.login.workdir

    async def run(self, argv: Sequence[str], check: bool) -> CommandResult:
        result = await self.login.run(shlex.join([*self.prefix, *argv]), check=False, timeout=120)
        if check and result.exit_code != 0:
            raise CommandError(list(argv), result.exit_code, result.stdout, "", self.login.name)
        return result

    async def write(self, files: list[tuple[str, str]]) -> None:
        script = "".join(f"mkdir -p {shlex.quote(posixpath.dirname(p))} && printf '%s' {shlex.quote(t)} > "
                         f"{shlex.quote(p)}\n" for p, t in files)
        await self.login.run(script)

    async def read_tasks(self, job_dirs: dict[str, str], claim_ids: Collection[str] = ()) -> dict[str, TaskFiles]:
        """As :meth:`LocalLogin.read_tasks`, in one command on the login node."""
        if not job_dirs:
            return {}
        script = f"r() {{ {_READ}; }}\n" + "".join(
            f"r {shlex.quote(j)} {shlex.quote(d)} {int(j in claim_ids)}\n" for j, d in job_dirs.items())
        out = {}
        for line in (await self.login.run(script)).stdout.splitlines():
            parts = line.split()
            if len(parts) == 5 and parts[0] in job_dirs:
                code = read_exit_code(parts[1])
                out[parts[0]] = TaskFiles(code, parts[2] == "1", int(parts[3]), parts[4] == "1")
        return out

    async def read_steps(self, paths: dict[str, tuple[str, int]]) -> dict[str, bytes]:
        if not paths:
            return {}
        return jobpaths.parse_remote((await self.login.run(jobpaths.remote_script(paths))).stdout)

    async def fetch(self, names: list[str], local_dirs: list[Path]) -> None:
        await self.login.fetch(names, local_dirs)

    async def close(self) -> None:
        await self.login.close()  # the remote folder stays: the Slurm source knows whether its jobs are done


def login_side(source: str, slurm_env: dict[str, str], login: RemoteHost | None) -> LocalLogin | SSHLogin:
    return LocalLogin(source, slurm_env) if login is None else SSHLogin(login, slurm_env)
