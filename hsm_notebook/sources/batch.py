"""``BatchSchedulerSource``: the mechanics of a batch scheduler (Slurm, PBS, LSF, SGE...), once.

A scheduler is declared by a subclass (see ``sources/slurm.py``): its three commands (submit,
status, cancel), its state words (a table of word -> JobState), how its status output reads, and
its script renderer (directive lines).  This base owns the rest: submissions of one loop turn
become one array per chunk (no larger than ``max_array_size``, throttled to
``max_parallel_jobs``), one status command per poll for every job, one cancel command per
moment, the task folders (``run.sh`` per job, a manifest per chunk) on this machine or on a
login node over SSH (``slurm_login``), the tasks' environment and interpreter checked once at
setup, exit-code files deciding over the scheduler's word (``SchedulerTasks``).

Job ids are ``<array id>_<index>`` (a scheduler may name them its own way: :meth:`task_id`); task
``i`` of an array runs the ``run.sh`` of the job on line ``i + 1 - first_task`` of its chunk's manifest,
under the same wrapper as every other source.
"""

from __future__ import annotations

import dataclasses
import os
import posixpath
import re
import shlex
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from ..core.base import registry
from ..core.base.batching import Batcher
from ..core.base.prepare import check_runner, prepare_environment
from ..core.base.shell import CommandResult
from ..core.base.source import ComputeSource
from ..core.model.errors import CommandError, ConfigError, SourceError, SubmitError
from ..core.model.state import JobOutcome, JobState, ResourceSpec
from ..core.spec.environment import Environment, expand_home, job_argv
from ..core.spec.functions import LIB_DIR, RUNNER_CHECK_CODE, pythonpath, write_job_side
from ..core.spec.job import WRAPPER, write_params
from ..core.spec.jobpaths import NAMES, JobPaths, sh, sh_claim
from ..core.spec.options import JobOptions
from .slurm_login import login_side
from .slurm_tasks import SchedulerTasks

#: The file in each task folder where the array script writes the task's scheduler id, before
#: the wrapper starts: a controller re-adopting the task after a crash reads it there (named by
#: ``core.spec.jobpaths.NAMES``, like every file of a job's folder).
ID_FILE = NAMES.scheduler_id


def array_script(directives: Sequence[str], manifest: str, tasks_dir: str, job_id: str, index: str,
                 before: Sequence[str] = (), first: int = 0) -> str:
    """One array chunk's batch script: the scheduler's ``directives``, then task ``$index`` runs the
    ``run.sh`` of the job named on line ``index + 1 - first`` of ``manifest`` (``first``: the
    scheduler's first task index).  ``job_id`` (a shell expression, e.g.
    ``${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}``) is written to the task's :data:`ID_FILE` first;
    ``before`` lines run once ``$job`` is known."""
    tasks = shlex.quote(tasks_dir)
    line = f"${{{index}}}" if first == 1 else f"$(({index} + {1 - first}))"
    return "\n".join([
        "#!/bin/bash",
        *directives,
        f'job=$(sed -n "{line}p" {shlex.quote(manifest)})',
        *before,
        # before the wrapper claims the job: a controller re-adopting it finds its id here
        f'echo "{job_id}" > {tasks}/"$job"/{NAMES.scheduler_id}',
        f"exec /bin/sh {tasks}/\"$job\"/{NAMES.run_script}",
        "",
    ])


# ``ResourceSpec`` means the same on every scheduler: its walltime and mem are written as Slurm
# writes them (``90`` is 90 minutes, ``1-12:00`` a day and a half; ``4G``, ``500M``, a bare number in
# MB), and read here for schedulers that count otherwise.
_TIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")
_MEMORY = re.compile(r"^(\d+)([KMGT])?B?$", re.I)
_MIB = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 ** 2}


def walltime_seconds(value: object, field: str = "walltime") -> int | None:
    """``ResourceSpec.walltime`` in seconds (None: UNLIMITED); ConfigError names a bad value."""
    text = str(value).strip() if isinstance(value, (str, int)) and not isinstance(value, bool) else ""
    if text.lower() in ("unlimited", "infinite"):
        return None
    m = _TIME.match(text)
    if not m:
        raise ConfigError(f"{value!r} is not a time: use MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS "
                          "(e.g. '90' for 90 minutes, '2:00:00', '1-00:00') or UNLIMITED", field)
    days, a, b, c = (int(g) if g else None for g in m.groups())
    assert a is not None
    if days is None:  # M, M:S, H:M:S
        h, mi, s = (0, a, b or 0) if c is None else (a, b or 0, c)
    else:  # D-H, D-H:M, D-H:M:S
        h, mi, s = a, b or 0, c or 0
    return ((days or 0) * 24 * 3600) + h * 3600 + mi * 60 + s


def hms(seconds: int) -> str:
    """``seconds`` as ``H:MM:SS`` (hours may pass 24: what SGE and PBS read)."""
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def memory_mib(value: object, field: str = "mem") -> int:
    """``ResourceSpec.mem`` in MiB, rounded up; ConfigError names a bad value."""
    text = str(value).strip() if isinstance(value, (str, int)) and not isinstance(value, bool) else ""
    m = _MEMORY.match(text)
    if not m:
        raise ConfigError(f"{value!r} is not a memory size: use a whole number with K, M, G or T (e.g. '500M', "
                          "'4G'; megabytes without a unit)", field)
    mib = int(m[1]) * _MIB[(m[2] or "M").upper()]
    return max(1, -int(-mib // 1))


def run_script(workdir: str, env: Mapping[str, str], argv: Sequence[str], job_dir: str, wrapper: str) -> str:
    """One job's launcher: its environment, its folder, the contract's wrapper around its argv."""
    exports = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items())
    return (f"cd {shlex.quote(workdir)} || exit 1\n{exports}"
            f"exec /bin/sh -c {shlex.quote(wrapper)} hsm-job {shlex.quote(job_dir)} {shlex.join(list(argv))}\n")


class BatchSchedulerSource(ComputeSource):
    """A batch scheduler driven from its login node (this machine, or ``login``: an SSH source).

    A subclass declares the scheduler: the class attributes below, and :meth:`directives`,
    :meth:`render_array`, :meth:`submit_argv`, :meth:`parse_submitted`, :meth:`status_argv`,
    :meth:`parse_status`, :meth:`probe` and :meth:`health_check`."""

    #: The scheduler's name in messages ("Slurm").
    scheduler: ClassVar[str] = "the scheduler"
    #: Its three commands (counted per kind in ``commands``).
    submit_command: ClassVar[str] = "submit"
    status_command: ClassVar[str] = "status"
    cancel_command: ClassVar[str] = "cancel"
    #: Its state words -> JobState (status records carry one of these).
    states: ClassVar[Mapping[str, JobState]] = {}
    #: Status errors that mean "no such job any more" (ids purged): an empty answer, not a failure.
    purged_words: ClassVar[Sequence[str]] = ()
    #: The largest array until :meth:`probe` reads the cluster's own limit.
    default_array_size: ClassVar[int] = 1000
    #: How the scheduler names an array's tasks (``<array><task_separator><index>``: Slurm's ``12_3``,
    #: SGE's ``12.3``) and the index of its first task (SGE counts from 1); see :meth:`task_id`.
    task_separator: ClassVar[str] = "_"
    first_task: ClassVar[int] = 0
    #: What follows the tasks' lives: a scheduler with ways of its own gives a subclass.
    task_tracker: ClassVar[type[SchedulerTasks]] = SchedulerTasks

    def __init__(self, name: str, source_type: str, max_parallel_jobs: int, *,
                 resources: ResourceSpec | None = None, array: bool = True,
                 array_throttle: int | None = None, max_queued: int | None = None,
                 scheduler_env: dict[str, str] | None = None, poll_interval: float = 2.0,
                 login: Any | None = None, options: JobOptions | None = None):
        super().__init__(name, source_type, max_parallel_jobs, options=options)
        self.resources = resources or ResourceSpec()
        self.directives(self.resources)  # a bad field is a ConfigError now, before any job
        for field, value in (("array_throttle", array_throttle), ("max_queued", max_queued)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ConfigError(f"must be a whole number >= 1, got {value!r}", field)
        self.array, self.array_throttle, self.max_queued = array, array_throttle, max_queued
        self._lib: str | None = None  # the job-side files, for a function run by another Python
        self.scheduler_env = dict(scheduler_env or {})
        self.poll_interval = poll_interval
        self.login = login  # an SSHComputeSource (a RemoteHost) for a login node over SSH, or None: here
        self.side = login_side(name, self.scheduler_env, login)
        self.tasks_dir = self.slurm_dir = self.workdir = ""
        self.max_array_size = self.default_array_size
        self.gpus = list(range(self.resources.gpus)) if self.resources.gpus else None  # what a task may ask for
        self.commands: dict[str, int] = {self.submit_command: 0, self.status_command: 0, self.cancel_command: 0,
                                         "other": 0}
        self.tasks = self.task_tracker(self.states, self.scheduler, self.cancel_command)
        self._starts: Batcher[tuple[str, str], str] = Batcher(
            lambda jobs: self._submit_array(jobs), size=lambda: self.max_array_size if self.array else 1)
        # every cancel of this moment (and of submissions returning now) joins one cancel command
        self._cancels: Batcher[str, bool] = Batcher(self._cancel_batch, size=None, delay=0.05)
        self._batch = 0

    def describe(self) -> dict[str, Any]:
        """The job options, the resources (a record of their own), the array settings and the login
        node's SSH source; a scheduler adds its own arguments (its commands' environment...)."""
        r = dataclasses.asdict(self.resources)
        r["modules"] = list(r["modules"])
        r["extra"] = dict(r["extra"])
        return {**super().describe(), "resources": r, "array": self.array, "array_throttle": self.array_throttle,
                "poll_interval": self.poll_interval, "max_queued": self.max_queued,
                "login": self.login.describe() if self.login else None}

    @classmethod
    def from_description(cls, description: Mapping[str, Any]) -> BatchSchedulerSource:
        """Rebuild from ``describe()`` (``Sweep.attach``): the resources and the login node's SSH
        source are records of their own."""
        d = {k: v for k, v in description.items() if k not in registry.BOOKKEEPING}
        r = dict(d.pop("resources", None) or {})
        if d.get("login"):
            d["login"] = registry.rebuild(d["login"])
        r["modules"] = tuple(r.get("modules") or ())
        r["extra"] = dict(r.get("extra") or {})
        return cls(resources=ResourceSpec(**r), **d)

    # -- what a scheduler declares ---------------------------------------------------------
    def directives(self, spec: ResourceSpec) -> list[str]:
        """``spec`` as the script's directive lines (``#SBATCH ...``); ConfigError names a bad field."""
        raise NotImplementedError

    def render_array(self, name: str, manifest: str) -> str:
        """The batch script of one array chunk (see :func:`array_script`)."""
        raise NotImplementedError

    def submit_argv(self, script: str, n: int, throttle: int | None) -> list[str]:
        """The command that submits ``script`` as an array of ``n`` tasks, at most ``throttle`` at once."""
        raise NotImplementedError

    def parse_submitted(self, stdout: str) -> str:
        """The array's id from the submit command's output."""
        return stdout.strip().split(";")[0]

    def status_argv(self, arrays: list[str]) -> list[str]:
        """One status command for the given arrays' tasks."""
        raise NotImplementedError

    def parse_status(self, stdout: str) -> dict[str, tuple[str, str]]:
        """``{task id: (state word, pending reason)}``; the key ``task_id(ARRAY, "*")`` for a record that
        stands for every task of the array not listed on its own."""
        raise NotImplementedError

    def task_id(self, array: str, index: int | str) -> str:
        """The id of task ``index`` of ``array``, as the scheduler's commands name it."""
        return f"{array}{self.task_separator}{index}"

    def array_of(self, job_id: str) -> str:
        """The array a task id belongs to (the inverse of :meth:`task_id`)."""
        return job_id.split(self.task_separator)[0]

    async def vanished(self, job_ids: list[str]) -> dict[str, tuple[str, str]]:
        """Tasks the scheduler lists no more that started and left no exit code (killed: a cancel, a
        limit, a node): what the scheduler's records say of them, as status records.  None here: they
        are LOST (or CANCELLED when this controller cancelled them)."""
        return {}

    async def probe(self) -> None:
        """At setup, after the login side is ready: talk to the scheduler (read ``max_array_size``,
        check the resources); SourceError in words when it refuses."""

    # -- the mechanics -----------------------------------------------------------------------
    @property
    def capacity(self) -> int:
        """Tasks handed to the scheduler at once: a whole array chunk (it runs ``max_parallel_jobs`` of them)."""
        if not self.array:
            return self.max_parallel_jobs
        return self.max_queued or max(self.max_array_size, self.max_parallel_jobs)

    def default_python(self) -> str:
        """The login node's interpreter (over SSH) or this kernel's."""
        return self.login.python if self.login is not None else sys.executable

    @property
    def job_environment(self) -> Environment:
        """What runs before each task's command: the resources' modules and pre_script, then ``environment``."""
        return self.environment.with_resources(self.resources.modules, self.resources.pre_script)

    @property
    def home(self) -> str:
        return self.login.home if self.login is not None else os.path.expanduser("~")

    async def _run(self, kind: str, argv: Sequence[str], check: bool = True) -> CommandResult:
        self.commands[kind if kind in self.commands else "other"] += 1
        return await self.side.run(argv, check)

    def _command(self, argv: list[str]) -> list[str]:
        """``python`` replaced by the source's interpreter; a leading ``~`` of the program is the login node's home."""
        argv = self.substitute(argv)
        return [expand_home(argv[0], self.home), *argv[1:]] if argv else argv

    def _argv(self, argv: list[str]) -> list[str]:
        """The environment script, then the program (under ``srun`` when the resources ask for it)."""
        command = self._command(argv)
        return job_argv(self._env_script, ["srun", *command] if self.resources.srun else command)

    async def _shell(self, script: str, *args: str) -> CommandResult:
        return await self._run("other", ["sh", "-c", script, "hsm-env", *args], check=False)

    async def setup(self, sweep_dir: Path, sweep_id: str) -> bool:
        self.bind_self(sweep_dir, sweep_id)
        self.tasks_dir, self.slurm_dir, self.workdir = await self.side.setup(self, sweep_dir, sweep_id)
        await self.probe()
        template = self.template
        command = self._command(list(template.command if template else ["true"]))
        prepared = await prepare_environment(
            self, self.job_environment, self._shell, folder=self.slurm_dir, workdir=self.workdir,
            where=f"the {self.scheduler} login node", command=command)
        self._env_script = prepared.script
        await self._check_python()
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
            self._lib = self.login.pythonpath
        elif command[0] != sys.executable:
            assert self.sweep_dir is not None
            self._lib = write_job_side(Path(self.sweep_dir) / LIB_DIR, function=True)

        async def run(argv: list[str]) -> str:
            return (await self._run("other", argv, check=False)).stdout

        await check_runner(self, run, command=command, lib=self._lib,
                           env={"PYTHONPATH": self._pythonpath()} if self._lib else {},
                           where=f"the {self.scheduler} login node")

    def _pythonpath(self) -> str:
        """The tasks' PYTHONPATH: the job-side files first (alone over SSH: the login node's own is unknown here)."""
        assert self._lib is not None
        if self.login is not None:
            return self._lib
        env = {**(self.template.env if self.template else {}), **self.env}
        return pythonpath(self._lib, env.get("PYTHONPATH", os.environ.get("PYTHONPATH")))

    async def submit_job(self, params: dict[str, Any], job_name: str, sweep_id: str,
                         wandb_group: str | None = None) -> str:
        job_dir = self.job_dir(job_name)  # here: params, and the collected files
        job_dir.mkdir(parents=True, exist_ok=True)
        write_params(job_dir, params)
        remote_dir = posixpath.join(self.tasks_dir, job_name)  # on the login node (the same, locally)
        argv, env = self.job_command(params, job_name, sweep_id, wandb_group, remote_dir)
        if self.login is not None:  # the uploaded hsm_notebook.metrics, as on the SSH source
            env["PYTHONPATH"] = self.login.pythonpath
        elif self._lib:  # the runner and cloudpickle, for a Python that may have neither
            env["PYTHONPATH"] = self._pythonpath()
        job_id = await self._starts.submit((job_name, run_script(self.workdir, env, self._argv(argv), remote_dir,
                                                                 WRAPPER)))
        self.track(job_id, job_name, params, job_dir)
        return job_id

    async def _submit_array(self, jobs: list[tuple[str, str]]) -> list[str]:
        """One array for ``jobs`` ((name, run.sh text), ...): all files in one write, one submit command."""
        assert self.sweep_id is not None
        self._batch += 1
        base = posixpath.join(self.slurm_dir, f"chunk-{os.getpid()}-{self._batch}")
        manifest, script = f"{base}.jobs", f"{base}.sh"
        names = [name for name, _ in jobs]
        await self.side.write([
            *((posixpath.join(self.tasks_dir, name, NAMES.run_script), text) for name, text in jobs),
            (manifest, "".join(f"{n}\n" for n in names)),
            (script, self.render_array(f"hsm-{self.sweep_id}"[:60], manifest)),
        ])
        limit = min(self.max_parallel_jobs, self.array_throttle or self.max_parallel_jobs)
        result = await self._run(self.submit_command, self.submit_argv(script, len(names),
                                                                       limit if limit < len(names) else None),
                                 check=False)
        if result.exit_code != 0:
            message = (result.stderr or result.stdout).strip()
            raise SubmitError(f"{self.submit_command} refused the job: {message}", self.name)
        return self.tasks.submitted(self.parse_submitted(result.stdout), len(names))

    async def _status(self, job_ids: list[str]) -> dict[str, tuple[str, str]]:
        """The scheduler's view of the arrays of ``job_ids``.  A failed status command raises (the
        manager asks again): an empty answer must never read as "all gone"."""
        arrays = sorted({self.array_of(j) for j in job_ids})
        result = await self._run(self.status_command, self.status_argv(arrays), check=False)
        if result.exit_code != 0:
            message = " ".join((result.stderr or result.stdout).split())
            if not any(word in message for word in self.purged_words):
                raise CommandError([self.status_command], result.exit_code, result.stdout, message, self.name)
            # ids purged: what it printed of the others still counts
        return self.parse_status(result.stdout)

    async def poll(self, job_ids: list[str]) -> dict[str, JobState]:
        """One status command for all; the folders of only those tasks that may have ended (not listed,
        listed past pending, or pending again after running) are read, in one call."""
        seen = await self._status(job_ids)
        listed: dict[str, tuple[str, str] | None] = {}
        for job_id in job_ids:
            array = self.array_of(job_id)
            listed[job_id] = seen.get(job_id) or seen.get(self.task_id(array, "*")) or seen.get(array)
        maybe = [j for j in job_ids if j in self.job_names and self.tasks.may_have_ended(j, listed[j])]
        files = await self.side.read_tasks({j: posixpath.join(self.tasks_dir, self.job_names[j]) for j in maybe},
                                           claim_ids={j for j in maybe if listed[j] is None})
        gone = [j for j in maybe if listed[j] is None and j in files and files[j].code is None and not files[j].claimed]
        if gone:
            listed.update(await self.vanished(gone))
        states = {j: self.tasks.decide(j, listed[j], files.get(j)) for j in job_ids}
        stale = [j for j, state in states.items() if state.is_terminal and self.tasks.listed_as(listed[j])
                 == JobState.QUEUED]
        if stale:  # requeued after it ended by itself: the queued copy would only exit at once
            await self.cancel_jobs(stale)
        self.tasks.ended.update(j for j, state in states.items() if state.is_terminal)
        return states

    async def get_job_status(self, job_id: str) -> str:
        return (await self.poll([job_id]))[job_id]

    def job_detail(self, job_id: str) -> str | None:
        return self.tasks.detail(job_id)

    async def outcome(self, job_id: str, state: JobState) -> JobOutcome:
        outcome = await super().outcome(job_id, state)
        note = self.tasks.note(job_id, state)
        return dataclasses.replace(outcome, error="; ".join(filter(None, [note, outcome.error]))) if note else outcome

    async def recover_job(self, job_name: str) -> str | None:
        """After a crash between "submitting" and "submitted": claim the job's folder.  Claimed:
        it never started and never will (its array task, if the submission went through, exits at
        once).  Not claimed: its wrapper started, and the array script wrote its id first."""
        job_dir = posixpath.join(self.tasks_dir, job_name)
        paths = JobPaths.shell("1")
        script = (f'mkdir -p "$1"; if {sh_claim(paths)}; then echo claimed; '
                  f'else cat {sh(paths.scheduler_id)} 2>/dev/null; fi')
        out = (await self._run("other", ["sh", "-c", script, "hsm-claim", job_dir], check=False)).stdout.strip()
        if out == "claimed":
            return None
        if not out:
            raise SourceError(f"{job_name} started but left no {self.scheduler} id in its folder; cannot follow it",
                              self.name)
        return out.split()[0]

    async def read_steps(self, offsets: dict[str, int]) -> dict[str, bytes]:
        """Running tasks' new intermediate metrics, read on the login node in one call."""
        return await self.side.read_steps({j: (posixpath.join(self.tasks_dir, self.job_names[j]), offset)
                                           for j, offset in offsets.items() if j in self.job_names})

    async def cancel_job(self, job_id: str) -> bool:
        """Cancels asked for at the same moment (a whole sweep's) go out as one cancel command."""
        return await self._cancels.submit(job_id)

    async def _cancel_batch(self, job_ids: list[str]) -> list[bool]:
        ok = await self.cancel_jobs(job_ids)
        return [ok[j] for j in job_ids]

    async def cancel_jobs(self, job_ids: list[str]) -> dict[str, bool]:
        """One cancel command: an array whose unfinished tasks are all cancelled is named by its id (its
        pending tasks then never start), the other tasks one by one."""
        result = await self._run(self.cancel_command, [self.cancel_command, *self.tasks.cancel_names(job_ids)],
                                 check=False)
        return {job_id: result.exit_code == 0 for job_id in job_ids}

    async def collect_results(self, job_ids: list[str] | None = None) -> bool:
        """Locally a no-op (shared filesystem); through a login node, the folders come home."""
        names = [self.job_names[j] for j in (job_ids or []) if j in self.job_names]
        await self.side.fetch(names, [self.job_dir(n) for n in names])
        return True

    async def cleanup(self) -> None:
        await self.side.close()
