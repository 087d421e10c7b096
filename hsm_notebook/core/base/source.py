"""The ``ComputeSource`` ABC: the one seam between the manager and a place that runs jobs.

The seven abstract coroutines are the reference API, unchanged, so users' own
sources written for it plug in.  Everything else here is shared machinery that a
subclass gets for free: slot bookkeeping, stats, the job contract (argv and
environment for a job), where a job's files live; reading a finished job's outcome
is ``outcome.py``, the reference's state words ``states.py``.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from ..model.errors import ConfigError, SourceError
from ..model.state import ComputeSourceStats, JobInfo, JobOutcome, JobState
from ..spec import jobpaths
from ..spec.job import (
    JobTemplate,
    reference_template,
)
from ..spec.jobpaths import JobPaths
from ..spec.options import PYTHON_NAMES, JobOptions
from . import registry
from .outcome import read_outcome
from .states import SOURCE_STATES, reported_state, split_job_name, to_state  # noqa: F401 - the ABC's vocabulary

#: Finished jobs a source driven by hand keeps in ``completed_jobs`` (the oldest go first).
REFERENCE_KEEP = 1000


class RecentJobs(dict[str, JobInfo]):
    """A dict that keeps its last ``maxlen`` entries (the reference bookkeeping, bounded)."""

    def __init__(self, maxlen: int) -> None:
        super().__init__()
        self.maxlen = maxlen

    def __setitem__(self, key: str, value: JobInfo) -> None:
        super().__setitem__(key, value)
        while len(self) > self.maxlen:
            del self[next(iter(self))]


class ComputeSource(ABC):
    """A place that runs jobs: this machine, an SSH host, a Slurm cluster, your own.

    Subclasses implement the seven coroutines.  The manager calls :meth:`bind`
    before :meth:`setup`, so ``self.sweep_dir``, ``self.sweep_id`` and
    ``self.template`` are set when ``setup`` runs; :meth:`job_command` turns
    ``params`` into the argv and environment of a job.  Driven without the manager (the
    reference's style), ``setup`` binds the source itself (:meth:`bind_self`) to the job
    given to its constructor (:meth:`own_job`).
    """

    #: Seconds between status polls when the source cannot signal changes itself; None: the
    #: sweep's ``poll_interval``.  A source's own interval is honoured both ways (a busy Slurm
    #: cluster asks to be polled no more than every 30-60 s).
    poll_interval: float | None = None
    #: The job to run when no manager binds this source (see :meth:`own_job`), and the
    #: constructor arguments it came from (recorded by :meth:`describe`).
    own_template: JobTemplate | None = None
    job_args: Mapping[str, Any] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Every subclass, users' own included, is registered so ``Sweep.attach`` can rebuild it
        from its ``describe()`` record (see ``core.registry``)."""
        super().__init_subclass__(**kwargs)
        registry.register(cls)

    #: The :class:`~hsm_notebook.core.spec.options.JobOptions` fields this class's constructor takes (in
    #: ``**options``); recorded by :meth:`describe` under the same names.
    job_options: tuple[str, ...] = ()

    def __init__(self, name: str, source_type: str, max_parallel_jobs: int, *, options: JobOptions | None = None):
        if not isinstance(max_parallel_jobs, int) or isinstance(max_parallel_jobs, bool) or max_parallel_jobs < 1:
            raise ConfigError(f"must be a whole number >= 1, got {max_parallel_jobs!r}", "max_parallel_jobs")
        if not name or not isinstance(name, str):
            hint = (f"; the first argument is the source's name: did you mean "
                    f"{type(self).__name__}(max_parallel_jobs={name})?" if type(name) is int else "")
            raise ConfigError(f"must be a non-empty string, got {name!r}{hint}", "name")
        self.name = name
        self.source_type = source_type
        self.max_parallel_jobs = max_parallel_jobs
        #: The reference API's own bookkeeping, kept only where a user drives the source by hand
        #: (``track`` and ``update_job_status`` maintain it; of finished jobs the last
        #: ``REFERENCE_KEEP``).  Under a manager it stays empty: its run state holds those facts.
        self.active_jobs: dict[str, JobInfo] = {}
        self.completed_jobs: dict[str, JobInfo] = RecentJobs(REFERENCE_KEEP)
        #: job id -> job name, how a source finds a job's folder from its id: its own map when driven
        #: by hand (``track`` writes it); under a manager, a read-only view of the manager's run state.
        self._own_names: dict[str, str] = {}
        self.job_names: Mapping[str, str] = self._own_names
        self.managed = False  # bound by a manager (``bind``)
        self.stats = ComputeSourceStats(name, source_type, max_parallel_jobs)
        self.sweep_dir: Path | None = None
        self.sweep_id: str | None = None
        self.template: JobTemplate | None = None
        #: Extra environment for every job on this source (over the sweep's ``env``).
        self.env: dict[str, str] = {}
        self._on_change: Callable[[], None] = lambda: None
        #: The shared job options (``core.options``): env, tags, environment, python, the own job.
        self.options = options or JobOptions()
        self.environment = self.options.environment
        self.tags = set(self.options.tags)
        self._python = self.options.python
        #: The environment script every job runs through (written at setup), or None.
        self._env_script: str | None = None
        if options is not None:
            self.env = dict(options.env)
            o = options
            self.own_job(o.command, python_path=o.python_path, script_path=o.script_path,
                         project_dir=o.project_dir, arg_style=o.arg_style)

    # -- the reference API ----------------------------------------------------------
    @abstractmethod
    async def setup(self, sweep_dir: Path, sweep_id: str) -> bool:
        """Prepare to run jobs of the sweep stored in ``sweep_dir``."""

    @abstractmethod
    async def submit_job(
        self, params: dict[str, Any], job_name: str, sweep_id: str, wandb_group: str | None = None
    ) -> str:
        """Start one job; return its id.  Must not wait for the job to finish."""

    @abstractmethod
    async def get_job_status(self, job_id: str) -> str:
        """The job's state (a :class:`JobState`; plain strings are accepted)."""

    @abstractmethod
    async def cancel_job(self, job_id: str) -> bool:
        """Stop a job; True when the source accepted the request."""

    @abstractmethod
    async def collect_results(self, job_ids: list[str] | None = None) -> bool:
        """Bring finished jobs' files into their local job dirs (a no-op where they already are)."""

    @abstractmethod
    async def health_check(self) -> dict[str, Any]:
        """``{"status": "healthy" | "degraded" | "unhealthy", ...}`` with the reason when not healthy."""

    @abstractmethod
    async def cleanup(self):
        """Release connections and other resources; safe to call twice."""

    # -- hooks with defaults (override for speed or for recovery) --------------------
    async def poll(self, job_ids: list[str]) -> dict[str, Any]:
        """States of many jobs at once.  Override with one batched query per round.

        A job may be left out, or answered "UNKNOWN": the manager asks again next round.  The
        default asks ``get_job_status`` for each job; one job's error does not hide the others'
        answers (it comes back as the exception, and the manager reports it)."""
        answers: dict[str, Any] = {}
        for job_id in job_ids:  # one at a time, as the reference's manager asks
            try:
                answers[job_id] = await self.get_job_status(job_id)
            except Exception as exc:  # noqa: BLE001 - handed to the manager, which reports it
                answers[job_id] = exc
        return answers

    def job_detail(self, job_id: str) -> str | None:
        """A word on a waiting job for ``status()`` (Slurm: the pending reason), or None."""
        return None

    async def recover_job(self, job_name: str) -> str | None:
        """After a controller crash between "submitting" and "submitted": the job's id if it
        was in fact started, else None (the manager then starts it again)."""
        return None

    def adopt(self, job_id: str, job_name: str) -> None:  # noqa: B027 - optional hook
        """Called by the manager (after ``setup`` and ``recover_job``) for every job a previous
        controller left running that this one re-adopts: take back what the job holds (e.g.
        its pinned GPUs, recorded with its attempt in ``job_dir(job_name)``)."""

    async def outcome(self, job_id: str, state: JobState) -> JobOutcome:
        """What a finished job left behind, read from its (collected) job dir."""
        name = self.job_names.get(job_id)
        if name is None or self.sweep_dir is None:
            return JobOutcome(state)
        return read_outcome(self.job_dir(name), state)

    def validate(self, template: JobTemplate) -> None:  # noqa: B027 - optional hook
        """Reject a template this source cannot run, before any job starts (``ConfigError``)."""

    def describe(self) -> dict[str, Any]:
        """How to rebuild this source (``Sweep.attach``): its type, its class's import path and
        its constructor's arguments (the job options it takes included).  Extend it with your
        constructor's other arguments."""
        return {"type": self.source_type, "class": registry.class_path(type(self)), "name": self.name,
                "max_parallel_jobs": self.max_parallel_jobs, **self.job_args, **self._described_options()}

    def _described_options(self) -> dict[str, Any]:
        """The job options of :attr:`job_options` as they stand (reference job arguments: ``job_args``)."""
        out: dict[str, Any] = {}
        for name in self.job_options:
            if name in ("command", "python_path", "script_path", "project_dir", "arg_style"):
                continue
            value = getattr(self, name)
            out[name] = (sorted(value) if name == "tags" else value.to_dict() if name == "environment"
                         else dict(value) if name == "env" else value)
        return out

    # -- the interpreter --------------------------------------------------------------
    @property
    def python(self) -> str:
        """The interpreter for a command starting with ``python``: as given, else the environment's
        ``python`` when it activates one, else the source's default (:meth:`default_python`)."""
        if self._python:
            return self._python
        return "python" if self.environment.provides_python else self.default_python()

    @python.setter
    def python(self, value: str | None) -> None:
        self._python = value

    def default_python(self) -> str:
        """The interpreter when none is given and the environment activates none."""
        return "python3"

    def substitute(self, argv: Sequence[str]) -> list[str]:
        """``argv`` with a leading ``python``/``python3`` replaced by :attr:`python`."""
        argv = list(argv)
        return [self.python, *argv[1:]] if argv and argv[0] in PYTHON_NAMES else argv

    @classmethod
    def from_description(cls, description: Mapping[str, Any]) -> ComputeSource:
        """The inverse of :meth:`describe`: ``cls(**description)`` less ``type`` and ``class``.
        Override it when the constructor does not take what ``describe()`` records."""
        return cls(**{k: v for k, v in description.items() if k not in registry.BOOKKEEPING})

    async def read_steps(self, offsets: dict[str, int]) -> dict[str, bytes]:
        """The new bytes of running jobs' ``metrics.jsonl`` (intermediate metrics, see
        ``core.steps``), each from its offset: ``{job id: bytes}``.  Called once per poll for all the
        source's running jobs.  This default reads the job folders here (this machine, a cluster's
        shared filesystem); a source whose jobs run elsewhere reads them there in one request."""
        return jobpaths.read_local({j: (self.job_dir(self.job_names[j]), offset)
                                 for j, offset in offsets.items() if j in self.job_names})

    @property
    def capacity(self) -> int:
        """How many tasks the manager may hand this source at once (running or queued there):
        ``max_parallel_jobs``, unless the source queues work itself (Slurm)."""
        return self.max_parallel_jobs

    # -- shared machinery -------------------------------------------------------------
    def own_job(
        self, command: Sequence[str] | str | None = None, *, python_path: str | None = None,
        script_path: str | None = None, project_dir: str | None = None, arg_style: str = "hydra",
    ) -> None:
        """Keep the reference's constructor arguments: what ``setup()`` binds this source to when
        the manager did not (``command``, or ``python_path`` + ``script_path``, in ``project_dir``)."""
        self.own_template = reference_template(command, python_path=python_path, script_path=script_path,
                                               project_dir=project_dir, arg_style=arg_style)
        args = {"command": list(command) if isinstance(command, (list, tuple)) else command,
                "python_path": python_path, "script_path": script_path,
                "project_dir": self.own_template.workdir if self.own_template else project_dir}
        self.job_args = {k: v for k, v in args.items() if v is not None}
        if self.job_args and arg_style != "hydra":
            self.job_args["arg_style"] = arg_style

    def bind_self(self, sweep_dir: Path, sweep_id: str) -> None:
        """Called first in ``setup``: a source set up without the manager's :meth:`bind` (the
        reference's driving style: setup, submit_job, get_job_status, ...) binds itself to
        ``sweep_dir`` and to the job given to its constructor."""
        if self.sweep_dir is not None and Path(sweep_dir) == self.sweep_dir and sweep_id == self.sweep_id:
            return  # bound by the manager
        template = self.own_template or self.template
        if template is not None:
            self.validate(template)
        self.template, self.sweep_dir, self.sweep_id = template, Path(sweep_dir), sweep_id

    def bind(self, template: JobTemplate, sweep_dir: Path, sweep_id: str, on_change: Callable[[], None],
             names: Mapping[str, str] | None = None) -> None:
        """Called by the manager before ``setup``; ``names`` is its read-only job id -> job name view."""
        self.template, self.sweep_dir, self.sweep_id, self._on_change = template, Path(sweep_dir), sweep_id, on_change
        if names is not None:
            self.job_names, self.managed = names, True

    def notify(self) -> None:
        """Tell the manager that some job changed state (so it polls now, not at the next tick)."""
        self._on_change()

    def job_dir(self, job_name: str) -> Path:
        """The job's folder: ``<sweep dir>/tasks/<job name>``."""
        if self.sweep_dir is None:
            raise SourceError("not set up for a sweep; call setup(sweep_dir, sweep_id) first", self.name)
        return JobPaths.local(self.sweep_dir, job_name).folder

    def job_command(
        self, params: dict[str, Any], job_name: str, sweep_id: str, wandb_group: str | None, job_dir: str
    ) -> tuple[list[str], dict[str, str]]:
        """The argv and the extra environment of one job, per the sweep's template."""
        if self.template is None:
            raise SourceError("no command to run: pass command=... (or python_path=..., script_path=...) "
                              "to the source, or run it in a Sweep", self.name)
        task, _ = split_job_name(job_name)
        env = self.template.environ(
            job_dir=job_dir, job_name=job_name, sweep_id=sweep_id, task_id=task, wandb_group=wandb_group
        )
        env.update(self.env)
        return self.template.argv(params, task_dir=job_dir, group=wandb_group or sweep_id), env

    def track(self, job_id: str, job_name: str, params: dict[str, Any], task_dir: Path | str | None = None) -> JobInfo:
        """Record a started (or re-adopted) job as active (driven by hand only: under a manager its
        run state holds the job and its name)."""
        info = JobInfo(job_id, job_name, dict(params), self.name, JobState.QUEUED, datetime.now(),
                       task_dir=str(task_dir) if task_dir is not None else None)
        if self.managed:
            return info
        self.active_jobs[job_id] = info
        self._own_names[job_id] = job_name
        self.stats.total_submitted += 1
        return info

    def update_job_status(self, job_id: str, new_status: JobState | str) -> None:
        """Move a job between active and completed, keeping the stats (the reference API's
        bookkeeping; the reference's strings are accepted)."""
        info = self.active_jobs.get(job_id)
        if info is None:
            return
        new_status = reported_state(new_status) or info.status
        info.status = new_status
        if new_status == JobState.RUNNING and info.start_time is None:
            info.start_time = datetime.now()
        if new_status.is_terminal:
            info.complete_time = datetime.now()
            self.completed_jobs[job_id] = self.active_jobs.pop(job_id)
            if new_status == JobState.COMPLETED:
                self.stats.completed_jobs += 1
            else:
                self.stats.failed_jobs += 1
            started = info.start_time or info.submit_time
            if started:
                d = (info.complete_time - started).total_seconds()
                n = self.stats.completed_jobs + self.stats.failed_jobs
                avg = self.stats.average_job_duration
                self.stats.average_job_duration = d if avg is None else avg + (d - avg) / n

    # The reference API's views of its own bookkeeping (the manager counts slots itself).
    @property
    def current_job_count(self) -> int:
        """Jobs started and not finished, as the source's own records say."""
        return len(self.active_jobs)

    @property
    def available_slots(self) -> int:
        """Free slots (``max_parallel_jobs`` minus active jobs), as the source's own records say."""
        return max(0, self.max_parallel_jobs - len(self.active_jobs))

    @property
    def is_available(self) -> bool:
        """A free slot and not unhealthy, as the source's own records say."""
        return self.available_slots > 0 and self.stats.health_status in ("healthy", "degraded", "unknown")

    @property
    def utilization(self) -> float:
        """Active jobs over slots, 0 to 1."""
        return len(self.active_jobs) / self.max_parallel_jobs

    def get_stats(self) -> ComputeSourceStats:
        """The source's counters, with the active count brought up to date."""
        self.stats.active_jobs = len(self.active_jobs)
        return self.stats

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}: {len(self.active_jobs)}/{self.max_parallel_jobs} jobs>"


def now() -> float:
    return time.time()
