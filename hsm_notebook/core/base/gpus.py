"""``GpuPool``: which of a source's GPUs each of its jobs holds (``CUDA_VISIBLE_DEVICES``).

One pool per source that pins GPUs itself (local, SSH).  A job's pins are written with
its attempt (``gpus`` in its local job dir), so a controller that attaches to running jobs
takes their GPUs back out of the free list instead of handing them out a second time.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..model.errors import SubmitError
from ..spec.jobpaths import NAMES


class GpuPool:
    """A free list of GPU ids; ``per_job`` of them are pinned to each job until it ends."""

    def __init__(self, gpus: Sequence[int] | None, per_job: int = 1, source: str | None = None):
        self.per_job, self.source = per_job, source
        self.pinned: dict[str, list[int]] = {}
        self.free: list[int] = []
        self.reset(gpus)

    def reset(self, gpus: Sequence[int] | None) -> None:
        """The GPUs to hand out (known only after ``setup`` on a remote host); pins are kept."""
        self.gpus = list(gpus) if gpus is not None else None
        held = {g for pins in self.pinned.values() for g in pins}
        self.free = [g for g in self.gpus or [] if g not in held]

    @property
    def enabled(self) -> bool:
        return bool(self.gpus)

    def take(self, job_id: str, job_dir: Path) -> list[int]:
        """Pin ``per_job`` free GPUs to the job and record them in its job dir."""
        if len(self.free) < self.per_job:
            raise SubmitError("no free GPU (all pinned to running jobs)", self.source)
        mine, self.free = self.free[: self.per_job], self.free[self.per_job:]
        self.pinned[job_id] = mine
        try:
            (job_dir / NAMES.gpus).write_text(",".join(map(str, mine)) + "\n")
        except OSError:
            self.release(job_id)
            raise
        return mine

    def adopt(self, job_id: str, job_dir: Path) -> list[int]:
        """A re-adopted job keeps the GPUs recorded with its attempt (those still in the pool)."""
        if job_id in self.pinned or not self.enabled:
            return self.pinned.get(job_id, [])
        try:
            recorded = [int(g) for g in (job_dir / NAMES.gpus).read_text().split(",") if g.strip()]
        except (FileNotFoundError, ValueError):
            return []
        mine = [g for g in recorded if g in self.free]
        self.free = [g for g in self.free if g not in mine]
        if mine:
            self.pinned[job_id] = mine
        return mine

    def release(self, job_id: str) -> None:
        """The job ended: its GPUs are free again."""
        for g in self.pinned.pop(job_id, []):
            if g not in self.free and g in (self.gpus or []):
                self.free.append(g)

    @staticmethod
    def env(pins: Sequence[int]) -> dict[str, str]:
        return {"CUDA_VISIBLE_DEVICES": ",".join(map(str, pins))}
