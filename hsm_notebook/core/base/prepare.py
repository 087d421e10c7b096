"""One preparation of a source's interpreter and environment, for every source.

At setup a source (1) substitutes its interpreter for a leading ``python`` of the command
(``ComputeSource.substitute``, then its own ``~`` expansion), (2) writes the jobs' environment
script where its jobs run (named by its content, replaced whole) and runs the command's program,
the interpreter for a python command, through it once (the probe of ``core.environment``), and
(3) for a function sweep checks that the interpreter is the Python that pickled the function.
The steps are the same everywhere; only *where* a command runs differs, so a source hands in a
runner: ``run(script, *args)`` runs ``sh -c script hsm-env args...`` there (this machine, an SSH
host, a Slurm login node) and returns its :class:`~hsm_notebook.core.base.shell.CommandResult`.
"""

from __future__ import annotations

import posixpath
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, NamedTuple

from ..model.errors import SourceError
from ..spec.environment import (
    Environment,
    environment_script,
    job_argv,
    probe_command,
    probe_problem,
    probe_version,
    script_name,
)
from ..spec.functions import runner_problem, version_problem
from ..spec.options import PYTHON_NAMES
from .shell import CommandResult

if TYPE_CHECKING:
    from .source import ComputeSource

#: ``run(script, *args)``: ``sh -c script hsm-env args...`` where the source's jobs run.
Runner = Callable[..., Awaitable[CommandResult]]

#: Writes $1 to the file $2 whole (a job starting now never reads half a script).
WRITE = 'printf %s "$1" > "$2.$$" && mv -f "$2.$$" "$2"'


def program_of(source: ComputeSource, command: list[str]) -> tuple[str, str | None]:
    """The program the command runs and, for a python command, the interpreter (the same word)."""
    template = source.template
    python = command[0] if template is not None and template.command[0] in PYTHON_NAMES else None
    return command[0], python


class Prepared(NamedTuple):
    """What :func:`prepare_environment` made and saw."""

    script: str | None  # the environment script's path where the jobs run, or None without an environment
    output: str  # what the probe printed ("" when there was no probe): the interpreter's version, etc.


def _unwrapped(probe: str) -> str:
    return probe


async def prepare_environment(source: ComputeSource, environment: Environment, run: Runner, *, folder: str,
                              workdir: str, where: str, command: list[str], always: bool = False,
                              wrap: Callable[[str], str] = _unwrapped) -> Prepared:
    """Write the environment script into ``folder`` and probe it (one command): the script's path
    (None without an environment) and the probe's output.  A broken environment or a missing
    program is a SourceError naming the failing line, now rather than in every job.  ``command`` is
    the job's argv after the source's substitution.  ``always``: probe even without an environment
    (the program and the interpreter's version are checked all the same; an SSH host's Python is
    known only so).  ``wrap`` turns the probe command into the one that runs (an SSH host traces it,
    to name a line that hangs); the write of the script is never wrapped."""
    if not environment and not always:
        return Prepared(None, "")
    text = environment_script(environment) if environment else None
    path = posixpath.join(folder, script_name(text)) if text is not None else None
    template = source.template
    program, python = program_of(source, command)
    env = {**(template.env if template else {}), **source.env}
    probe = wrap(probe_command(path, workdir, folder, program, python, env))
    if text is not None and path is not None:
        out = (await run(f"{WRITE} && {probe}", text, path)).stdout
    else:
        out = (await run(probe)).stdout
    problem = probe_problem(out, program=program, python=python, where=where, environment=environment)
    if problem:
        raise SourceError(problem, source.name)
    return Prepared(path, out)


def check_version(source: ComputeSource, probe_output: str, where: str) -> str:
    """The interpreter version the probe saw, after checking it against a function sweep's pickling
    Python (SourceError in words on a mismatch)."""
    found = probe_version(probe_output) or ""
    wanted = source.template.python_version if source.template else None
    problem = version_problem(found, wanted, where)
    if problem:
        raise SourceError(problem, source.name)
    return found


async def check_runner(source: ComputeSource, run: Callable[[list[str]], Awaitable[str]], *, command: list[str],
                       lib: str | None, env: Mapping[str, str], where: str) -> None:
    """A function sweep: the jobs' interpreter (``command``: it, running ``RUNNER_CHECK_CODE``) must be
    the Python that pickled the function and import the runner and cloudpickle.  ``run(argv)`` runs
    an argv where the jobs run and returns its output; ``env`` (with the job-side ``lib`` first on
    PYTHONPATH) is set for it.  SourceError in words when it cannot run the function."""
    wanted = source.template.python_version if source.template else None
    if not wanted:
        return
    argv = job_argv(source._env_script, command)
    if env:
        argv = ["env", *(f"{k}={v}" for k, v in env.items()), *argv]
    problem = runner_problem(await run(argv), wanted, where, lib)
    if problem:
        raise SourceError(problem, source.name)
