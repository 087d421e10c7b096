"""``SlurmComputeSource``: a sweep's tasks as Slurm array jobs, with real sbatch/squeue/scancel.

Submissions made in the same loop turn become one ``sbatch --array`` per chunk (chunks
no larger than the cluster's ``MaxArraySize``); task ``i`` of an array runs the ``run.sh``
of the job on line ``i + 1`` of the chunk's manifest, under the same wrapper as every
other source, so the exit-code file stays the ground truth.  Status is one ``squeue``
per polling round for all jobs; finished tasks that ``squeue`` no longer lists are
read from their exit-code files.  Commands run on this machine (the login node, with a
filesystem shared with the compute nodes).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import posixpath
import sys
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

from ..core import registry
from ..core.environment import (Environment, check_literal_env, environment_script, expand_home, job_argv,
                                probe_command, probe_problem, script_name)
from ..core.errors import CommandError, ConfigError, SourceError, SubmitError
from ..core.functions import LIB_DIR, RUNNER_CHECK_CODE, pythonpath, runner_problem, write_job_side
from ..core.job import WRAPPER, write_params
from ..core.source import ComputeSource
from ..core.state import JobOutcome, JobState, ResourceSpec
from .slurm_login import login_side
from .slurm_script import array_script, run_script, sbatch_lines, sbatch_options
from .slurm_tasks import SLURM_STATES, SQUEUE_FORMAT, SlurmTasks, parse_squeue, state_of  # noqa: F401 - SLURM_STATES re-exported

class SlurmComputeSource(ComputeSource):
    """A Slurm cluster, driven from its login node (this machine).

    ``resources`` is rendered to ``#SBATCH`` lines (checked before any submission).  Tasks
    go to Slurm as array jobs, one per ``MaxArraySize`` chunk, each throttled to
    ``max_parallel_jobs`` running at once (``--array=0-199%50``): Slurm paces them, not the
    controller.  ``max_queued`` caps how many tasks are handed to Slurm at once (default: one
    ``MaxArraySize`` chunk; lower it to leave tasks for the other sources of a sweep);
    ``array_throttle`` lowers the throttle further; ``array=False`` submits one job per task
    (then ``max_parallel_jobs`` is also the number submitted).  ``poll_interval`` is how often
    ``squeue`` runs for this cluster, whatever the sweep's interval (busy clusters ask for 30-60 s).
    ``slurm_env`` is added to the environment of the Slurm commands (e.g. ``SLURM_CONF``).
    ``resources.srun`` starts the program with ``srun`` (one copy per task of ``--ntasks``).

    ``environment`` (an :class:`~hsm_notebook.core.environment.Environment` or its dict) is set up
    in each task before its command, after the ``modules`` and ``pre_script`` of ``resources``;
    setup checks it once on the login node.

    Driven without a ``Sweep`` (the reference's style), each task runs ``command``, or
    ``python_path script_path``, in ``project_dir`` with the parameters as ``arg_style``
    arguments (``key=value`` by default).
    """

    source_type = "slurm"
    poll_interval = 2.0

    def __init__(
        self,
        name: str = "slurm",
        max_parallel_jobs: int = 500,
        *,
        partition: Optional[str] = None,
        resources: Optional[ResourceSpec] = None,
        array: bool = True,
        array_throttle: Optional[int] = None,
        python: Optional[str] = None,
        slurm_env: Optional[Dict[str, str]] = None,
        env: Optional[Dict[str, str]] = None,
        tags: Sequence[str] = (),
        poll_interval: float = 2.0,
        max_queued: Optional[int] = None,
        login: Optional[Any] = None,
        command: Sequence[str] | str | None = None,
        python_path: Optional[str] = None,
        script_path: Optional[str] = None,
        project_dir: Optional[str] = None,
        arg_style: str = "hydra",
        environment: Environment | Dict[str, Any] | None = None,
    ):
        super().__init__(name, "slurm", max_parallel_jobs)
        spec = resources or ResourceSpec()
        self.resources = dataclasses.replace(spec, partition=partition) if partition else spec
        sbatch_lines(self.resources)  # a bad field is a ConfigError now, before any job
        if array_throttle is not None and (not isinstance(array_throttle, int) or array_throttle < 1):
            raise ConfigError(f"must be a whole number >= 1, got {array_throttle!r}", "array_throttle")
        if max_queued is not None and (not isinstance(max_queued, int) or max_queued < 1):
            raise ConfigError(f"must be a whole number >= 1, got {max_queued!r}", "max_queued")
        self.array, self.array_throttle, self.max_queued = array, array_throttle, max_queued
        self.environment = Environment.from_dict(environment)
        self._env_script: Optional[str] = None
        self._lib: Optional[str] = None  # the job-side files, for a function run by another Python
        self.python = python
        self.slurm_env = dict(slurm_env or {})
        self.env, self.tags = dict(env or {}), set(tags)
        check_literal_env(self.env)
        self.poll_interval = poll_interval
        self.login = login  # an SSHComputeSource for a login node reached over SSH, or None: this machine
        self.side = login_side(name, self.slurm_env, login)
        self.tasks_dir = self.slurm_dir = self.workdir = ""
        self.max_array_size = 1001
        self.gpus = list(range(spec.gpus)) if spec.gpus else None  # what a task may ask for
        self.commands: Dict[str, int] = {"sbatch": 0, "squeue": 0, "scancel": 0, "other": 0}
        self.tasks = SlurmTasks()
        self._cancels: list = []
        self._canceller: Optional[asyncio.Task] = None
        self._starts: list = []
        self._flusher: Optional[asyncio.Task] = None
        self._batch = 0
        self.own_job(command, python_path=python_path, script_path=script_path, project_dir=project_dir,
                     arg_style=arg_style)

    def describe(self) -> Dict[str, Any]:
        r = dataclasses.asdict(self.resources)
        r["modules"] = list(r["modules"])
        r["extra"] = dict(r["extra"])
        return {**super().describe(), "resources": r, "array": self.array, "array_throttle": self.array_throttle,
                "python": self.python, "slurm_env": self.slurm_env, "env": self.env, "tags": sorted(self.tags),
                "poll_interval": self.poll_interval, "max_queued": self.max_queued,
                "login": self.login.describe() if self.login else None,
                "environment": self.environment.to_dict()}

    @property
    def capacity(self) -> int:
        """Tasks handed to Slurm at once: a whole array chunk (Slurm runs ``max_parallel_jobs`` of them)."""
        if not self.array:
            return self.max_parallel_jobs
        return self.max_queued or max(self.max_array_size, self.max_parallel_jobs)

    @property
    def python(self) -> str:
        """The interpreter for a command starting with ``python``: as given, else the environment's
        ``python`` when it activates one, else the login node's (over SSH) or this kernel's."""
        if self._python:
            return self._python
        if self.environment.provides_python:
            return "python"
        return self.login.python if self.login is not None else sys.executable

    @python.setter
    def python(self, value: Optional[str]) -> None:
        self._python = value

    @property
    def job_environment(self) -> Environment:
        """What runs before each task's command: the resources' modules and pre_script, then ``environment``."""
        return self.environment.with_resources(self.resources.modules, self.resources.pre_script)

    @classmethod
    def from_description(cls, description: Mapping[str, Any]) -> "SlurmComputeSource":
        """Rebuild from ``describe()`` (used by ``Sweep.attach``): the resources and the login
        node's SSH source are records of their own."""
        d = {k: v for k, v in description.items() if k not in registry.BOOKKEEPING}
        r = dict(d.pop("resources", None) or {})
        if d.get("login"):
            d["login"] = registry.rebuild(d["login"])
        r["modules"] = tuple(r.get("modules") or ())
        r["extra"] = dict(r.get("extra") or {})
        return cls(resources=ResourceSpec(**r), **d)

    async def _run(self, kind: str, argv: Sequence[str], check: bool = True):
        self.commands[kind if kind in self.commands else "other"] += 1
        return await self.side.run(argv, check)

    def _command(self, argv: List[str]) -> List[str]:
        """``python`` replaced by the source's interpreter; a leading ``~`` of the program is the login node's home."""
        argv = [self.python, *argv[1:]] if argv and argv[0] in ("python", "python3") else list(argv)
        home = self.login.facts.get("home", "") if self.login is not None else os.path.expanduser("~")
        return [expand_home(argv[0], home), *argv[1:]] if argv else argv

    def _argv(self, argv: List[str]) -> List[str]:
        """The environment script, then the program (under ``srun`` when the resources ask for it)."""
        command = self._command(argv)
        return job_argv(self._env_script, ["srun", *command] if self.resources.srun else command)

    async def _setup_environment(self) -> None:
        """One command on the login node: write the tasks' environment script (named by its content,
        replaced whole) and run the command's program through it once, the interpreter for a python
        command.  A broken environment is refused now rather than in every task."""
        environment, self._env_script = self.job_environment, None
        if not environment:
            return
        text = environment_script(environment)
        self._env_script = posixpath.join(self.slurm_dir, script_name(text))
        template = self.template
        command = self._command(list(template.command if template else ["true"]))
        program = command[0]
        python = program if template and template.command[0] in ("python", "python3") else None
        env = {**(template.env if template else {}), **self.env}
        probe = probe_command(self._env_script, self.workdir, self.slurm_dir, program, python, env)
        script = f'printf %s "$1" > "$2.$$" && mv -f "$2.$$" "$2" && {probe}'
        out = (await self._run("other", ["sh", "-c", script, "hsm-env", text, self._env_script], check=False)).stdout
        problem = probe_problem(out, program=program, python=python, where="the Slurm login node",
                                environment=environment)
        if problem:
            raise SourceError(problem, self.name)

    # -- setup and health -------------------------------------------------------------
    async def setup(self, sweep_dir: Path, sweep_id: str) -> bool:
        self.bind_self(sweep_dir, sweep_id)
        self.tasks_dir, self.slurm_dir, self.workdir = await self.side.setup(self, sweep_dir, sweep_id)
        try:
            config = (await self._run("other", ["scontrol", "show", "config"])).stdout
        except (CommandError, OSError) as exc:
            raise SourceError(f"cannot talk to Slurm here ({exc}); is this a login node with sbatch on PATH?",
                              self.name) from None
        for line in config.splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "MaxArraySize" and value.strip().isdigit():
                self.max_array_size = int(value.strip())
        # every resource option is checked by Slurm itself before any job: --test-only queues nothing
        test = await self._run("other", ["sbatch", "--test-only", *sbatch_options(self.resources), "--wrap", "true"],
                               check=False)
        if test.exit_code != 0:
            message = " ".join((test.stderr or test.stdout).split())
            raise SourceError(f"Slurm refuses these resources: {message}", self.name)
        await self._setup_environment()
        await self._check_python()
        self.stats.health_status = "healthy"
        return True

    async def _check_python(self) -> None:
        """A function sweep: the tasks' interpreter must be the Python that pickled the function and
        import the runner and cloudpickle.  They travel (the sweep's ``lib`` folder, on the filesystem
        the nodes share, first on the tasks' PYTHONPATH) unless the tasks run this kernel's Python;
        over SSH the login side uploaded them."""
        wanted = self.template.python_version if self.template else None
        self._lib = None
        if not wanted:
            return
        command = self._command(["python", "-c", RUNNER_CHECK_CODE])
        if self.login is not None:
            self._lib = self.login.jobs.pythonpath
        elif command[0] != sys.executable:
            assert self.sweep_dir is not None
            self._lib = write_job_side(Path(self.sweep_dir) / LIB_DIR, function=True)
        argv = job_argv(self._env_script, command)
        if self._lib:
            argv = ["env", f"PYTHONPATH={self._pythonpath()}", *argv]
        out = (await self._run("other", argv, check=False)).stdout
        problem = runner_problem(out, wanted, "the Slurm login node", self._lib)
        if problem:
            raise SourceError(problem, self.name)

    def _pythonpath(self) -> str:
        """The tasks' PYTHONPATH: the job-side files first (alone over SSH: the login node's own is unknown here)."""
        assert self._lib is not None
        if self.login is not None:
            return self._lib
        env = {**(self.template.env if self.template else {}), **self.env}
        return pythonpath(self._lib, env.get("PYTHONPATH", os.environ.get("PYTHONPATH")))

    async def health_check(self) -> Dict[str, Any]:
        part = ["-p", self.resources.partition] if self.resources.partition else []
        try:
            nodes = (await self._run("other", ["sinfo", "-h", *part, "-o", "%a|%D|%t"])).stdout.splitlines()
            queue = (await self._run("squeue", ["squeue", "-h", *part, "-o", "%i"])).stdout.split()
        except CommandError as exc:
            self.stats.health_status = "unhealthy"
            return {"status": "unhealthy", "reason": f"Slurm does not answer: {exc}", "slots": self.max_parallel_jobs}
        counts: Dict[str, int] = {}
        up = True
        for line in nodes:
            avail, n, state = (line.split("|") + ["", "", ""])[:3]
            counts[state] = counts.get(state, 0) + int(n or 0)
            up = up and avail == "up"
        down = sum(n for s, n in counts.items() if s.startswith(("down", "drain", "fail")) or s.endswith("*"))
        usable = sum(counts.values()) - down
        status, reason = "healthy", None
        if not up or usable == 0:
            status, reason = "unhealthy", f"partition {'down' if not up else 'has no usable node'}: {counts}"
        elif down:
            status, reason = "degraded", f"{down} node(s) down: {counts}"
        self.stats.health_status = status
        return {"status": status, "reason": reason, "slots": self.max_parallel_jobs, "nodes": counts,
                "queue_length": len(queue), "max_array_size": self.max_array_size}

    # -- submission ---------------------------------------------------------------------
    async def submit_job(self, params: Dict[str, Any], job_name: str, sweep_id: str,
                         wandb_group: Optional[str] = None) -> str:
        job_dir = self.job_dir(job_name)  # here: params, and the collected files
        job_dir.mkdir(parents=True, exist_ok=True)
        write_params(job_dir, params)
        remote_dir = posixpath.join(self.tasks_dir, job_name)  # on the login node (the same, locally)
        argv, env = self.job_command(params, job_name, sweep_id, wandb_group, remote_dir)
        if self.login is not None:  # the uploaded hsm_notebook.metrics, as on the SSH source
            env["PYTHONPATH"] = self.login.jobs.pythonpath
        elif self._lib:  # the runner and cloudpickle, for a Python that may have neither
            env["PYTHONPATH"] = self._pythonpath()
        run_sh = run_script(self.workdir, env, self._argv(argv), remote_dir, WRAPPER)
        future = asyncio.get_running_loop().create_future()
        self._starts.append((job_name, future, run_sh))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush())
        job_id = await future
        self.track(job_id, job_name, params, job_dir)
        return job_id

    async def _flush(self) -> None:
        await asyncio.sleep(0)  # let every submission of this loop turn join the batch
        while self._starts:
            size = self.max_array_size if self.array else 1
            batch, self._starts = self._starts[:size], self._starts[size:]
            try:
                ids = await self._sbatch([(name, run_sh) for name, _, run_sh in batch])
            except Exception as exc:  # noqa: BLE001 - handed to every submitter of the batch
                for _, future, _ in batch:
                    future.set_exception(exc)
            else:
                for (_, future, _), job_id in zip(batch, ids):
                    future.set_result(job_id)

    async def _sbatch(self, jobs: List[tuple[str, str]]) -> List[str]:
        """One array for ``jobs`` ((name, run.sh text), ...): all files in one write, one sbatch."""
        assert self.sweep_id is not None
        self._batch += 1
        base = posixpath.join(self.slurm_dir, f"chunk-{os.getpid()}-{self._batch}")
        manifest, script = f"{base}.jobs", f"{base}.sh"
        names = [name for name, _ in jobs]
        await self.side.write([
            *((posixpath.join(self.tasks_dir, name, "run.sh"), text) for name, text in jobs),
            (manifest, "".join(f"{n}\n" for n in names)),
            (script, array_script(self.resources, f"hsm-{self.sweep_id}"[:60], manifest, self.tasks_dir,
                                  self.slurm_dir)),
        ])
        limit = min(self.max_parallel_jobs, self.array_throttle or self.max_parallel_jobs)
        throttle = f"%{limit}" if limit < len(names) else ""
        argv = ["sbatch", "--parsable", f"--array=0-{len(names) - 1}{throttle}", script]
        result = await self._run("sbatch", argv, check=False)
        if result.exit_code != 0:
            message = (result.stderr or result.stdout).strip()
            raise SubmitError(f"sbatch refused the job: {message}", self.name)
        array_id = result.stdout.strip().split(";")[0]
        return self.tasks.submitted(array_id, len(names))

    # -- status -------------------------------------------------------------------------
    async def _squeue(self, job_ids: List[str]) -> Dict[str, tuple[str, str]]:
        """Slurm's view of the arrays of ``job_ids`` (see :func:`parse_squeue`).  A failed squeue
        raises (the manager asks again): an empty answer must never read as "all gone"."""
        arrays = sorted({j.split("_")[0] for j in job_ids})
        result = await self._run("squeue", ["squeue", "-h", "-r", "-t", "all", "-o", SQUEUE_FORMAT,
                                            "-j", ",".join(arrays)], check=False)
        if result.exit_code != 0:
            message = " ".join((result.stderr or result.stdout).split())
            if "Invalid job id" not in message:  # ids purged after MinJobAge: none listed
                raise CommandError(["squeue"], result.exit_code, result.stdout, message, self.name)
            return {}
        return parse_squeue(result.stdout)

    async def poll(self, job_ids: List[str]) -> Dict[str, JobState]:
        """One squeue for all; the folders of only those tasks that may have ended (not listed,
        listed past pending, or pending again after running) are read, in one call."""
        seen = await self._squeue(job_ids)
        listed: Dict[str, Optional[tuple[str, str]]] = {}
        for job_id in job_ids:
            array = job_id.split("_")[0]
            listed[job_id] = seen.get(job_id) or seen.get(f"{array}_*") or seen.get(array)
        maybe = [j for j in job_ids if j in self.job_names and self.tasks.may_have_ended(j, listed[j])]
        files = await self.side.read_tasks({j: posixpath.join(self.tasks_dir, self.job_names[j]) for j in maybe},
                                           claim_ids={j for j in maybe if listed[j] is None})
        states = {j: self.tasks.decide(j, listed[j], files.get(j)) for j in job_ids}
        stale = [j for j, state in states.items() if state.is_terminal and listed[j]
                 and state_of(listed[j]) == JobState.QUEUED]
        if stale:  # requeued after it ended by itself: the queued copy would only exit at once
            await self.cancel_jobs(stale)
        self.tasks.ended.update(j for j, state in states.items() if state.is_terminal)
        return states

    async def get_job_status(self, job_id: str) -> str:
        return (await self.poll([job_id]))[job_id]

    def job_detail(self, job_id: str) -> Optional[str]:
        return self.tasks.detail(job_id)

    async def outcome(self, job_id: str, state: JobState) -> JobOutcome:
        outcome = await super().outcome(job_id, state)
        note = self.tasks.note(job_id, state)
        return dataclasses.replace(outcome, error="; ".join(filter(None, [note, outcome.error]))) if note else outcome

    async def recover_job(self, job_name: str) -> Optional[str]:
        """After a crash between "submitting" and "submitted": claim the job's folder.  Claimed:
        it never started and never will (its array task, if sbatch went through, exits at
        once).  Not claimed: its wrapper started, and the array script wrote its Slurm id first."""
        job_dir = posixpath.join(self.tasks_dir, job_name)
        script = ('mkdir -p "$1"; set -C; if { echo never > "$1/pid"; } 2>/dev/null; then echo claimed; '
                  'else cat "$1/slurm_id" 2>/dev/null; fi')
        out = (await self._run("other", ["sh", "-c", script, "hsm-claim", job_dir], check=False)).stdout.strip()
        if out == "claimed":
            return None
        if not out:
            raise SourceError(f"{job_name} started but left no Slurm id in its folder; cannot follow it", self.name)
        return out.split()[0]

    async def read_steps(self, offsets: Dict[str, int]) -> Dict[str, bytes]:
        """Running tasks' new intermediate metrics, read on the login node in one call."""
        return await self.side.read_steps({j: (posixpath.join(self.tasks_dir, self.job_names[j]), offset)
                                           for j, offset in offsets.items() if j in self.job_names})

    async def cancel_job(self, job_id: str) -> bool:
        """Cancels asked for at the same moment (a whole sweep's) go out as one ``scancel``."""
        future = asyncio.get_running_loop().create_future()
        self._cancels.append((job_id, future))
        if self._canceller is None or self._canceller.done():
            self._canceller = asyncio.get_running_loop().create_task(self._flush_cancels())
        return await future

    async def _flush_cancels(self) -> None:
        await asyncio.sleep(0.05)  # every cancel of this moment (and of submissions returning now) joins
        while self._cancels:
            batch, self._cancels = self._cancels, []
            try:
                ok = await self.cancel_jobs([job_id for job_id, _ in batch])
            except Exception as exc:  # noqa: BLE001 - handed to every caller of the batch
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
            else:
                for job_id, future in batch:
                    if not future.done():
                        future.set_result(ok[job_id])

    async def cancel_jobs(self, job_ids: List[str]) -> Dict[str, bool]:
        """One ``scancel``: an array whose unfinished tasks are all cancelled is named by its id (its
        pending tasks then never start), the other tasks one by one."""
        result = await self._run("scancel", ["scancel", *self.tasks.cancel_names(job_ids)], check=False)
        return {job_id: result.exit_code == 0 for job_id in job_ids}

    async def collect_results(self, job_ids: Optional[List[str]] = None) -> bool:
        """Locally a no-op (shared filesystem); through a login node, the folders come home."""
        names = [self.job_names[j] for j in (job_ids or []) if j in self.job_names]
        await self.side.fetch(names, [self.job_dir(n) for n in names])
        return True

    async def cleanup(self):
        await self.side.close()
