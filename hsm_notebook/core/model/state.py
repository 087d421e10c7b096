"""The core data model: job states and the frozen records passed between layers."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


class JobState(enum.StrEnum):
    """The life of one job (one attempt of one task).

    ``PENDING`` waits in hsm_notebook's own queue; ``SUBMITTING`` is recorded in
    the ledger *before* a source is asked to start the job, so that a crash in
    between is visible on reattach; ``QUEUED`` waits in a source's queue (a
    scheduler's, or a free slot); ``LOST`` means the job's fate cannot be known
    (its host vanished, its wrapper was killed): it never counts as success.
    ``PRUNED`` is a search's trial stopped early by its pruner (its curve was
    not promising): ended on purpose, neither a failure nor a user's cancel.
    """

    PENDING = "PENDING"
    SUBMITTING = "SUBMITTING"
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    LOST = "LOST"
    PRUNED = "PRUNED"

    @property
    def is_terminal(self) -> bool:
        """COMPLETED, FAILED, CANCELLED, LOST or PRUNED: nothing more will happen to this job."""
        return self in _TERMINAL

    @property
    def is_active(self) -> bool:
        """Started on a source and not finished yet."""
        return self in _ACTIVE


_TERMINAL = frozenset({JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED, JobState.LOST, JobState.PRUNED})
_ACTIVE = frozenset({JobState.SUBMITTING, JobState.QUEUED, JobState.RUNNING})

#: States after which a task is worth running again by ``Sweep.complete()``.
RERUNNABLE = frozenset({JobState.PENDING, JobState.FAILED, JobState.CANCELLED, JobState.LOST})


@dataclass(frozen=True)
class ResourceSpec:
    """What one job needs.  Local and SSH sources read ``gpus``; Slurm renders all
    (``sources.slurm_script.sbatch_lines`` checks every field and names the bad one)."""

    walltime: str | None = None  # "MM", "HH:MM:SS" or "D-HH:MM:SS"
    cpus: int | None = None
    mem: str | None = None  # "4G", "500M"
    gpus: int | None = None
    gpu_type: str | None = None  # "a100" -> --gres=gpu:a100:N
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    extra: Mapping[str, str] = field(default_factory=dict)  # more #SBATCH options: {"exclusive": ""}
    modules: tuple[str, ...] = ()  # `module load`ed before each job (core/environment.py renders it)
    pre_script: str | None = None  # shell lines run before each job, after modules (same renderer)
    srun: bool = False  # Slurm: start the program with srun (one copy per task of --ntasks/--nodes)


@dataclass
class JobInfo:
    """One job as a source sees it (the reference API's record, with a typed state)."""

    job_id: str
    job_name: str
    params: dict[str, Any]
    source_name: str
    status: JobState = JobState.PENDING
    submit_time: datetime | None = None
    start_time: datetime | None = None
    complete_time: datetime | None = None
    task_dir: str | None = None


class SourceHealth(enum.StrEnum):
    """A source's health as the engine knows it: written only by the health monitor, from what the
    source's ``health_check()`` returned (``core.monitor.read_health``)."""

    UNKNOWN = "unknown"  # not checked yet
    HEALTHY = "healthy"
    DEGRADED = "degraded"  # works, with a reason (overloaded, slow, ...)
    UNHEALTHY = "unhealthy"  # counted towards disabling it


@dataclass
class ComputeSourceStats:
    """Counters a source keeps about itself (shown per source in the panel)."""

    name: str
    source_type: str
    max_parallel_jobs: int
    active_jobs: int = 0
    completed_jobs: int = 0
    failed_jobs: int = 0
    total_submitted: int = 0
    health_status: str = SourceHealth.UNKNOWN
    last_health_check: datetime | None = None
    average_job_duration: float | None = None  # seconds


@dataclass(frozen=True)
class JobOutcome:
    """What the manager learns about a job that reached a terminal state."""

    state: JobState
    exit_code: int | None = None
    error: str | None = None
    metrics: Mapping[str, Any] | None = None
    start_time: float | None = None  # epoch seconds, when the source knows them
    end_time: float | None = None
