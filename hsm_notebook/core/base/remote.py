"""``RemoteHost``: what a source that works through another machine needs from it.

A batch scheduler's login node reached over SSH (``sources/slurm_login.SSHLogin``) uses the SSH
source (``SSHComputeSource`` implements this protocol) for everything it does there: run a
command in its persistent shell, know the remote home, interpreter, tasks folder, working
directory (the project copy) and the job-side helpers' folder, bring finished jobs' folders home,
and be set up and closed.  Typed here so that the login side reads no private attribute of the
SSH source (no ``.conn``, ``.jobs``, ``.facts``), and any other transport could take its place.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from ..spec.job import JobTemplate
from .shell import CommandResult


@runtime_checkable
class RemoteHost(Protocol):
    """A machine reached over a connection, set up for a sweep by :meth:`setup`."""

    name: str

    @property
    def python(self) -> str:
        """The interpreter a ``python`` command runs there."""

    @property
    def home(self) -> str:
        """The remote user's home folder (after setup)."""

    @property
    def tasks_dir(self) -> str:
        """The sweep's tasks folder there (after setup)."""

    @property
    def workdir(self) -> str:
        """Where jobs run there: the project copy, or the sweep folder (after setup)."""

    @property
    def pythonpath(self) -> str:
        """The folder of the job-side helpers there (``hsm_notebook.metrics``, the runner), for PYTHONPATH."""

    def describe(self) -> dict[str, Any]: ...

    def bind(self, template: JobTemplate, sweep_dir: Path, sweep_id: str, on_change: Callable[[], None]) -> None: ...

    async def setup(self, sweep_dir: Path, sweep_id: str) -> bool: ...

    async def run(self, script: str, *, check: bool = True, timeout: float | None = None) -> CommandResult:
        """One shell script there (its persistent shell); CommandError on failure when ``check``."""

    async def fetch(self, job_names: Sequence[str], local_dirs: Sequence[Path]) -> None:
        """Bring the named jobs' folders home into ``local_dirs``."""

    async def close(self) -> None:
        """Release the connection; what is on the remote stays (the caller knows whether its jobs ended)."""
