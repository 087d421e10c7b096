"""``LocalComputeSource``: jobs as detached processes on this machine.

Each job runs under the contract's ``sh`` wrapper in its own session (process
group), so it outlives the controller (a restarted kernel re-adopts it through
the pid and exit-code files in its job dir) and can be stopped as a group.
Completion is event driven where Linux offers ``pidfd_open``: the loop is woken
the moment a job exits, so no slot idles until the next poll.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shlex
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..core.base.gpus import GpuPool
from ..core.base.prepare import check_runner, prepare_environment
from ..core.base.shell import CommandResult, LocalShell
from ..core.base.source import ComputeSource
from ..core.model.errors import ConfigError
from ..core.model.state import JobOutcome, JobState
from ..core.spec.environment import job_argv
from ..core.spec.functions import LIB_DIR, RUNNER, RUNNER_CHECK_CODE, pythonpath, write_job_side
from ..core.spec.job import JobTemplate, write_params
from ..core.spec.jobpaths import JobPaths
from ..core.spec.options import PYTHON_NAMES, JobOptions, with_options
from .local_jobs import LocalJobManager, ProcessTable
from .warm import ForkServer, unsuitable


@with_options
class LocalComputeSource(ComputeSource):
    """This machine.  ``max_parallel_jobs`` defaults to the number of cores.

    ``gpus`` (ids such as ``[0, 1]``) with ``gpus_per_job`` pins each job to its own
    GPUs through ``CUDA_VISIBLE_DEVICES``; then at most ``len(gpus) // gpus_per_job``
    jobs run at once.  A command starting with ``python``/``python3`` runs with
    ``python`` (default: this kernel's own interpreter, ``sys.executable``; with an
    ``environment`` that activates conda or a venv, that environment's ``python``).
    ``environment`` (an :class:`~hsm_notebook.core.spec.environment.Environment` or its dict) is set
    up before each job's command; setup checks once that it works.

    ``warm`` (default True): a function sweep's tasks are forked from one warm interpreter that has
    loaded the function and the modules it imports (``sources/warm.py``), each still its own process
    and job (claim, files, exit code, cancel, re-adoption); ``warm=False`` starts each as a new
    interpreter.  Where forking would change what a task sees, tasks start new interpreters anyway.

    Driven without a ``Sweep`` (the reference's style: ``setup``, ``submit_job``, ...), it runs
    ``command``, or ``python_path script_path``, in ``project_dir`` with the parameters as
    ``arg_style`` arguments (``key=value`` by default).
    """

    source_type = "local"
    job_options = ("gpus", "gpus_per_job", "python", "env", "tags", "environment", "command", "python_path",
                   "script_path", "project_dir", "arg_style")

    def __init__(self, name: str = "local", max_parallel_jobs: int | None = None, *, cancel_grace: float = 5.0,
                 warm: bool = True, **options: Any):
        opts = JobOptions.from_kwargs(type(self), self.job_options, options)
        slots = max_parallel_jobs if max_parallel_jobs is not None else (os.cpu_count() or 1)
        if opts.gpus is not None and isinstance(slots, int):
            slots = min(slots, len(opts.gpus) // opts.gpus_per_job)
        super().__init__(name, "local", slots, options=opts)
        self.gpus, self.gpus_per_job = opts.gpus, opts.gpus_per_job
        self._lib: str | None = None  # the job-side files, for a function run by another Python
        self.jobs = LocalJobManager(cancel_grace)
        self.pool = GpuPool(self.gpus, self.gpus_per_job, name)
        self._loop: asyncio.AbstractEventLoop | None = None
        self.warm = bool(warm)
        self._server: ForkServer | None = None
        self._warm_off: str | None = None

    def describe(self) -> dict[str, Any]:  # warm only when off: records made before it existed stay equal
        return {**super().describe(), "cancel_grace": self.jobs.cancel_grace, **({} if self.warm else {"warm": False})}

    @property
    def fork_servers(self) -> list[int]:
        """The pids of the fork servers that served this run (the last one may still serve)."""
        return list(self._server.pids) if self._server is not None else []

    @property
    def warm_state(self) -> str:
        """How this run's function tasks start: from the fork server (its pid and what it imported),
        or as new interpreters, and why."""
        server = self._server
        if server is None:
            return f"tasks start as new interpreters: {self._warm_off}" if self._warm_off else "not set up yet"
        if server.off is not None:
            return server.off
        if server.ready is None:
            return f"tasks forked from warm interpreters (pids {server.pids}); none serves now" if server.pids else \
                "the fork server is loading the function"
        return f"tasks fork from a warm interpreter (pid {server.ready['pid']}; imported: " \
               f"{', '.join(server.ready['imported']) or 'nothing more'})"

    def default_python(self) -> str:
        """This kernel's interpreter."""
        return sys.executable

    def validate(self, template: JobTemplate) -> None:
        cmd = self._argv0(template.command)
        workdir = Path(template.workdir or ".")
        if os.sep in cmd[0]:
            path = Path(cmd[0]) if os.path.isabs(cmd[0]) else workdir / cmd[0]
            if not os.access(path, os.X_OK):
                raise ConfigError(f"{cmd[0]!r} is not an executable file (seen from {workdir})", "command")
        elif not self.environment and shutil.which(  # with an environment, setup's probe looks in it
                cmd[0], path=template.env.get("PATH", os.environ.get("PATH"))) is None:
            raise ConfigError(f"program {cmd[0]!r} not found on PATH; give its full path", "command")
        if template.command[0] in PYTHON_NAMES and len(cmd) > 1 and cmd[1].endswith(".py"):
            script = Path(cmd[1]) if os.path.isabs(cmd[1]) else workdir / cmd[1]
            if not script.is_file():
                raise ConfigError(f"script {cmd[1]!r} not found in {workdir}; check workdir or the path", "command")

    def _argv0(self, argv: Sequence[str]) -> list[str]:
        argv = self.substitute(argv)
        if argv:
            argv[0] = os.path.expanduser(argv[0])
        return argv

    async def _shell(self, script: str, *args: str) -> CommandResult:
        return await LocalShell(self.name).run(shlex.join(["sh", "-c", script, "hsm-env", *args]), check=False,
                                               timeout=120)

    async def _setup_environment(self, sweep_dir: Path) -> None:
        """The environment script in the sweep folder, probed once (``core.prepare``)."""
        template = self.template
        self._env_script = (await prepare_environment(
            self, self.environment, self._shell, folder=str(sweep_dir),
            workdir=(template.workdir if template else None) or str(sweep_dir), where="this machine",
            command=self._argv0(template.command if template else ["true"]))).script

    async def setup(self, sweep_dir: Path, sweep_id: str) -> bool:
        self.bind_self(sweep_dir, sweep_id)
        self._loop = asyncio.get_running_loop()
        JobPaths.tasks_dir(Path(sweep_dir)).mkdir(parents=True, exist_ok=True)
        await self._setup_environment(Path(sweep_dir))
        await self._check_python()
        await self._start_warm(Path(sweep_dir))
        return True

    async def _start_warm(self, sweep_dir: Path) -> None:
        """This run's fork server, when the tasks are a function's and nothing forbids it."""
        if self._server is not None:
            await self._server.close()
            self._server = None
        template = self.template
        self._warm_off = "warm=False" if not self.warm else unsuitable(
            function=template is not None and template.python_version is not None and tuple(template.command) == RUNNER,
            env_script=self._env_script, gpus=self.pool.enabled)
        if self._warm_off is not None or template is None:
            return
        env = {**template.env, **self.env}
        if self._lib:
            env["PYTHONPATH"] = self._pythonpath()
        self._server = ForkServer(self.name, self._argv0(["python"]), env, template.workdir, sweep_dir)
        self._server.start()

    async def _check_python(self) -> None:
        """A function sweep run by another interpreter than this kernel's (``python=``, or one an
        environment provides): it must be the Python that pickled the function, and it gets the
        runner and cloudpickle (the sweep's ``lib`` folder, first on the jobs' PYTHONPATH) whether or
        not hsm_notebook is installed there; setup checks it can import them."""
        wanted = self.template.python_version if self.template else None
        argv = self._argv0(["python", "-c", RUNNER_CHECK_CODE])
        self._lib = None
        if not wanted or (argv[0] == sys.executable and not self._env_script):
            return
        env: dict[str, str] = {}
        if argv[0] != sys.executable:
            assert self.sweep_dir is not None
            self._lib = write_job_side(Path(self.sweep_dir) / LIB_DIR, function=True)
            env = {**(self.template.env if self.template else {}), **self.env, "PYTHONPATH": self._pythonpath()}
        cwd = (self.template.workdir if self.template else None) or str(self.sweep_dir)

        async def run(argv: list[str]) -> str:
            script = f"cd {shlex.quote(cwd)} && exec {shlex.join(argv)} 2>&1"
            return (await LocalShell(self.name).run(script, check=False, timeout=120)).stdout

        await check_runner(self, run, command=argv, lib=self._lib, env=env, where="this machine")

    def _pythonpath(self) -> str:
        assert self._lib is not None
        env = {**(self.template.env if self.template else {}), **self.env}
        return pythonpath(self._lib, env.get("PYTHONPATH", os.environ.get("PYTHONPATH")))

    async def submit_job(
        self, params: dict[str, Any], job_name: str, sweep_id: str, wandb_group: str | None = None
    ) -> str:
        job_dir = self.job_dir(job_name)
        job_dir.mkdir(parents=True, exist_ok=True)
        write_params(job_dir, params)
        argv, env = self.job_command(params, job_name, sweep_id, wandb_group, str(job_dir))
        if self._lib:  # the runner and cloudpickle, for a Python that may have neither
            env["PYTHONPATH"] = self._pythonpath()
        workdir = self.template.workdir if self.template else None
        if self._server is not None:
            pid = await self._server.job(job_dir, argv[-1], env, workdir)
            if pid is not None:
                self.track(job_name, job_name, params, job_dir)
                if self._loop is not None:
                    self.jobs.watch(job_dir, self._loop, self.notify, pid=pid)
                return job_name
        if self.pool.enabled:
            env.update(self.pool.env(self.pool.take(job_name, job_dir)))
        try:
            self.jobs.start(job_dir, job_argv(self._env_script, self._argv0(argv)), env, workdir)
        except BaseException:
            self.pool.release(job_name)
            raise
        self.track(job_name, job_name, params, job_dir)
        if self._loop is not None:
            self.jobs.watch(job_dir, self._loop, self.notify)
        return job_name

    async def recover_job(self, job_name: str) -> str | None:
        # no waiting: a job without a pid file whose launcher is gone is claimed, so it never starts
        return job_name if self.jobs.started(self.job_dir(job_name)) else None

    def adopt(self, job_id: str, job_name: str) -> None:
        self.pool.adopt(job_id, self.job_dir(job_name))

    async def get_job_status(self, job_id: str) -> str:
        return self.jobs.state(self.job_dir(job_id))

    async def poll(self, job_ids: list[str]) -> dict[str, JobState]:
        table = ProcessTable()  # read once per round, and only if a job has no pid yet
        states = {j: self.jobs.state(self.job_dir(j), table) for j in job_ids}
        for job_id, state in states.items():
            if state.is_terminal:
                self.pool.release(job_id)
        return states

    async def outcome(self, job_id: str, state: JobState) -> JobOutcome:
        outcome = await super().outcome(job_id, state)
        reason = self.jobs.lost_reason(self.job_dir(job_id)) if outcome.state == JobState.LOST else None
        return dataclasses.replace(outcome, error=reason, start_time=None) if reason else outcome

    async def cancel_job(self, job_id: str) -> bool:
        return await self.jobs.stop(self.job_dir(job_id))

    async def collect_results(self, job_ids: list[str] | None = None) -> bool:
        return True  # the job dirs are already here

    async def health_check(self) -> dict[str, Any]:
        load1, _, _ = os.getloadavg()
        disk = shutil.disk_usage(self.sweep_dir or ".")
        free_gb = disk.free / 1e9
        status, reason = "healthy", None
        if free_gb < 1:
            status, reason = "degraded", f"only {free_gb:.2f} GB free on the sweep's disk"
        return {
            "status": status, "reason": reason, "slots": self.max_parallel_jobs,
            "load_1m": load1, "cpus": os.cpu_count(),
            "disk_free_gb": round(free_gb, 2), "gpus": self.gpus, "warm": self.warm_state,
        }

    async def cleanup(self):
        if self._server is not None:  # its jobs go on: they are sessions of their own
            await self._server.close()
        return None
