"""The ``ComputeSource`` ABC: the one seam between the manager and a place that runs jobs.

The seven abstract coroutines are the reference API, unchanged, so users' own
sources written for it plug in.  Everything else here is shared machinery that a
subclass gets for free: slot bookkeeping, stats, the job contract (argv and
environment for a job), where a job's files live, and reading a finished job's
outcome (exit code, last stderr lines, metrics) from those files.
"""

from __future__ import annotations

import json
import re
import time
from abc import ABC, abstractmethod
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from .errors import ConfigError, SourceError
from .job import (
    CANCEL_FILE,
    EXIT_CODE_FILE,
    METRICS_FILE,
    PID_FILE,
    STDERR_FILE,
    JobTemplate,
    check_job_name,
    tail,
)
from .state import ComputeSourceStats, JobInfo, JobOutcome, JobState

_JOB_NAME = re.compile(r"^(?P<task>[0-9a-f]{12})-(?P<attempt>\d+)$")


def split_job_name(job_name: str) -> tuple[str | None, int | None]:
    """``"0123456789ab-2"`` -> ``("0123456789ab", 2)``; other names -> ``(None, None)``."""
    m = _JOB_NAME.match(job_name)
    return (m["task"], int(m["attempt"])) if m else (None, None)


def to_state(value: Any) -> JobState:
    """Accept a ``JobState`` or the reference API's plain strings (case-insensitive)."""
    if isinstance(value, JobState):
        return value
    try:
        return JobState(str(value).upper())
    except ValueError:
        raise SourceError(f"unknown job state {value!r}; return a JobState") from None


class ComputeSource(ABC):
    """A place that runs jobs: this machine, an SSH host, a Slurm cluster, your own.

    Subclasses implement the seven coroutines.  The manager calls :meth:`bind`
    before :meth:`setup`, so ``self.sweep_dir``, ``self.sweep_id`` and
    ``self.template`` are set when ``setup`` runs; :meth:`job_command` turns
    ``params`` into the argv and environment of a job.
    """

    #: Seconds between status polls when the source cannot signal changes itself.
    poll_interval: float = 1.0

    def __init__(self, name: str, source_type: str, max_parallel_jobs: int):
        if not isinstance(max_parallel_jobs, int) or isinstance(max_parallel_jobs, bool) or max_parallel_jobs < 1:
            raise ConfigError(f"must be a whole number >= 1, got {max_parallel_jobs!r}", "max_parallel_jobs")
        if not name or not isinstance(name, str):
            raise ConfigError(f"must be a non-empty string, got {name!r}", "name")
        self.name = name
        self.source_type = source_type
        self.max_parallel_jobs = max_parallel_jobs
        self.active_jobs: dict[str, JobInfo] = {}
        self.completed_jobs: dict[str, JobInfo] = {}
        self.stats = ComputeSourceStats(name, source_type, max_parallel_jobs)
        self.sweep_dir: Path | None = None
        self.sweep_id: str | None = None
        self.template: JobTemplate | None = None
        #: Extra environment for every job on this source (over the sweep's ``env``).
        self.env: Dict[str, str] = {}
        self._on_change: Callable[[], None] = lambda: None

    # -- the reference API ----------------------------------------------------------
    @abstractmethod
    async def setup(self, sweep_dir: Path, sweep_id: str) -> bool:
        """Prepare to run jobs of the sweep stored in ``sweep_dir``."""

    @abstractmethod
    async def submit_job(
        self, params: Dict[str, Any], job_name: str, sweep_id: str, wandb_group: Optional[str] = None
    ) -> str:
        """Start one job; return its id.  Must not wait for the job to finish."""

    @abstractmethod
    async def get_job_status(self, job_id: str) -> str:
        """The job's state (a :class:`JobState`; plain strings are accepted)."""

    @abstractmethod
    async def cancel_job(self, job_id: str) -> bool:
        """Stop a job; True when the source accepted the request."""

    @abstractmethod
    async def collect_results(self, job_ids: Optional[List[str]] = None) -> bool:
        """Bring finished jobs' files into their local job dirs (a no-op where they already are)."""

    @abstractmethod
    async def health_check(self) -> Dict[str, Any]:
        """``{"status": "healthy" | "degraded" | "unhealthy", ...}`` with the reason when not healthy."""

    @abstractmethod
    async def cleanup(self):
        """Release connections and other resources; safe to call twice."""

    # -- hooks with defaults (override for speed or for recovery) --------------------
    async def poll(self, job_ids: List[str]) -> Dict[str, JobState]:
        """States of many jobs at once.  Override with one batched query per round."""
        return {job_id: to_state(await self.get_job_status(job_id)) for job_id in job_ids}

    def job_detail(self, job_id: str) -> Optional[str]:
        """A word on a waiting job for ``status()`` (Slurm: the pending reason), or None."""
        return None

    async def recover_job(self, job_name: str) -> Optional[str]:
        """After a controller crash between "submitting" and "submitted": the job's id if it
        was in fact started, else None (the manager then starts it again)."""
        return None

    async def outcome(self, job_id: str, state: JobState) -> JobOutcome:
        """What a finished job left behind, read from its (collected) job dir."""
        info = self.active_jobs.get(job_id) or self.completed_jobs.get(job_id)
        if info is None or info.task_dir is None:
            return JobOutcome(state)
        return read_outcome(Path(info.task_dir), state)

    def validate(self, template: JobTemplate) -> None:
        """Reject a template this source cannot run, before any job starts (``ConfigError``)."""

    def describe(self) -> Dict[str, Any]:
        """How to rebuild this source on reattach (built-in sources only)."""
        return {"type": self.source_type, "name": self.name, "max_parallel_jobs": self.max_parallel_jobs}

    # -- shared machinery -------------------------------------------------------------
    def bind(self, template: JobTemplate, sweep_dir: Path, sweep_id: str, on_change: Callable[[], None]) -> None:
        """Called by the manager before ``setup``."""
        self.template, self.sweep_dir, self.sweep_id, self._on_change = template, Path(sweep_dir), sweep_id, on_change

    def notify(self) -> None:
        """Tell the manager that some job changed state (so it polls now, not at the next tick)."""
        self._on_change()

    def job_dir(self, job_name: str) -> Path:
        """The job's folder: ``<sweep dir>/tasks/<job name>``."""
        if self.sweep_dir is None:
            raise SourceError("not bound to a sweep; the manager calls bind() before setup()", self.name)
        return self.sweep_dir / "tasks" / check_job_name(job_name)

    def job_command(
        self, params: Dict[str, Any], job_name: str, sweep_id: str, wandb_group: Optional[str], job_dir: str
    ) -> tuple[list[str], dict[str, str]]:
        """The argv and the extra environment of one job, per the sweep's template."""
        if self.template is None:
            raise SourceError("no job template; the manager calls bind() before submitting", self.name)
        task, _ = split_job_name(job_name)
        env = self.template.environ(
            job_dir=job_dir, job_name=job_name, sweep_id=sweep_id, task_id=task, wandb_group=wandb_group
        )
        env.update(self.env)
        return self.template.argv(params), env

    def track(self, job_id: str, job_name: str, params: Dict[str, Any], task_dir: Path | str | None = None) -> JobInfo:
        """Record a started (or re-adopted) job as active."""
        info = JobInfo(job_id, job_name, dict(params), self.name, JobState.QUEUED, datetime.now(),
                       task_dir=str(task_dir) if task_dir is not None else None)
        self.active_jobs[job_id] = info
        self.stats.total_submitted += 1
        return info

    def update_job_status(self, job_id: str, new_status: JobState) -> None:
        """Move a job between active and completed, keeping the stats."""
        info = self.active_jobs.get(job_id)
        if info is None:
            return
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

    @property
    def current_job_count(self) -> int:
        """Jobs started and not finished."""
        return len(self.active_jobs)

    @property
    def available_slots(self) -> int:
        """Free slots (``max_parallel_jobs`` minus active jobs)."""
        return max(0, self.max_parallel_jobs - len(self.active_jobs))

    @property
    def is_available(self) -> bool:
        """A free slot and not unhealthy."""
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


def read_outcome(job_dir: Path, state: JobState) -> JobOutcome:
    """Exit code, error line and metrics from a job dir laid out by the job contract."""
    exit_code: int | None = None
    try:
        exit_code = int((job_dir / EXIT_CODE_FILE).read_text().strip())
    except (FileNotFoundError, ValueError):  # absent, or empty while being written
        pass
    errors: list[str] = []
    if state in (JobState.FAILED, JobState.LOST):
        last = tail(job_dir / STDERR_FILE, 5).strip()
        if exit_code is not None:
            errors.append(f"exit code {exit_code}" + (f": {last.splitlines()[-1]}" if last else ""))
        elif state == JobState.LOST:
            errors.append("the job's process vanished without an exit code")
    metrics = None
    path = job_dir / METRICS_FILE
    if path.exists():
        try:
            metrics = json.loads(path.read_text() or "null")
            if not isinstance(metrics, dict):
                errors.append(f"{METRICS_FILE} must hold a JSON object, found {type(metrics).__name__}")
                metrics = None
        except (ValueError, UnicodeDecodeError) as exc:
            errors.append(f"{METRICS_FILE} is not valid JSON ({exc})")
    timing = {}
    for key, name in (("start_time", PID_FILE), ("end_time", EXIT_CODE_FILE)):
        try:
            timing[key] = (job_dir / name).stat().st_mtime
        except FileNotFoundError:
            pass
    if (job_dir / CANCEL_FILE).exists() and state != JobState.COMPLETED:
        state = JobState.CANCELLED
    return JobOutcome(state, exit_code, "; ".join(errors) or None, metrics, **timing)


def now() -> float:
    return time.time()
