"""Where a Slurm source runs its commands and keeps its files: this machine, or a login
node over SSH (reusing an ``SSHComputeSource``'s connection, project sync and fetch).

Both sides offer the same five calls; every one is a single command on the login node
whatever the number of jobs.
"""

from __future__ import annotations

import os
import posixpath
import shlex
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from ..core.errors import CommandError
from ..core.job import EXIT_CODE_FILE
from ..core.shell import CommandResult, LocalShell


class LocalLogin:
    """This machine is the login node; the sweep dir is on the filesystem the nodes share."""

    def __init__(self, source: str, slurm_env: Dict[str, str]):
        self.shell = LocalShell(source, {**os.environ, **slurm_env})

    async def setup(self, source, sweep_dir: Path, sweep_id: str) -> tuple[str, str, str]:
        (Path(sweep_dir) / "tasks").mkdir(parents=True, exist_ok=True)
        (Path(sweep_dir) / "slurm").mkdir(exist_ok=True)
        workdir = (source.template.workdir if source.template else None) or str(sweep_dir)
        return str(Path(sweep_dir) / "tasks"), str(Path(sweep_dir) / "slurm"), workdir

    async def run(self, argv: Sequence[str], check: bool) -> CommandResult:
        return await self.shell.run(shlex.join(argv), check=check, timeout=120)

    async def write(self, files: List[tuple[str, str]]) -> None:
        for path, text in files:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(text)

    async def exit_codes(self, job_dirs: Dict[str, str]) -> Dict[str, int]:
        codes = {}
        for job_id, d in job_dirs.items():
            try:
                codes[job_id] = int((Path(d) / EXIT_CODE_FILE).read_text().strip())
            except (FileNotFoundError, ValueError):
                pass
        return codes

    async def fetch(self, names: List[str], local_dirs: List[Path]) -> None:
        return None

    async def close(self) -> None:
        return None


class SSHLogin:
    """A login node reached over SSH: commands go through the SSH source's persistent shell,
    the project is synced by it, finished jobs' folders come home through its fetch."""

    def __init__(self, login, slurm_env: Dict[str, str]):
        self.login = login  # an SSHComputeSource, bound and set up by us
        self.prefix = ["env", *(f"{k}={v}" for k, v in slurm_env.items())] if slurm_env else []

    async def setup(self, source, sweep_dir: Path, sweep_id: str) -> tuple[str, str, str]:
        assert source.template is not None
        self.login.bind(source.template, Path(sweep_dir), sweep_id, source.notify)
        await self.login.setup(Path(sweep_dir), sweep_id)
        tasks = self.login.jobs.tasks_dir
        slurm = posixpath.join(posixpath.dirname(tasks), "slurm")
        await self.login.conn.run(f"mkdir -p {shlex.quote(slurm)}")
        return tasks, slurm, self.login.jobs.workdir

    async def run(self, argv: Sequence[str], check: bool) -> CommandResult:
        result = await self.login.conn.run(shlex.join([*self.prefix, *argv]), check=False, timeout=120)
        if check and result.exit_code != 0:
            raise CommandError(list(argv), result.exit_code, result.stdout, "", self.login.name)
        return result

    async def write(self, files: List[tuple[str, str]]) -> None:
        script = "".join(f"mkdir -p {shlex.quote(posixpath.dirname(p))} && printf '%s' {shlex.quote(t)} > "
                         f"{shlex.quote(p)}\n" for p, t in files)
        await self.login.conn.run(script)

    async def exit_codes(self, job_dirs: Dict[str, str]) -> Dict[str, int]:
        script = "".join(f"rc=''; [ -f {shlex.quote(d)}/exit_code ] && read rc < {shlex.quote(d)}/exit_code; "
                         f"echo {shlex.quote(j)} \"$rc\"\n" for j, d in job_dirs.items())
        codes = {}
        for line in (await self.login.conn.run(script)).stdout.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1].lstrip("-").isdigit():
                codes[parts[0]] = int(parts[1])
        return codes

    async def fetch(self, names: List[str], local_dirs: List[Path]) -> None:
        await self.login.jobs.fetch(names, local_dirs)

    async def close(self) -> None:
        await self.login.cleanup(remove_remote=False)  # the Slurm source knows whether its jobs are done


def login_side(source: str, slurm_env: Dict[str, str], login: Optional[object]):
    return LocalLogin(source, slurm_env) if login is None else SSHLogin(login, slurm_env)
