"""Which source gets the next task.  Pure functions of the sources' slot counts."""

from __future__ import annotations

from typing import Mapping, Sequence

from .source import ComputeSource

STRATEGIES = ("least_loaded", "round_robin")


def choose(
    sources: Sequence[ComputeSource], reserved: Mapping[str, int], strategy: str = "least_loaded", turn: int = 0
) -> ComputeSource | None:
    """A source with a free slot (counting ``reserved`` submissions in flight), or None."""
    free = [s for s in sources if s.is_available and s.available_slots - reserved.get(s.name, 0) > 0]
    if not free:
        return None
    if strategy == "round_robin":
        return free[turn % len(free)]
    return min(free, key=lambda s: (len(s.active_jobs) + reserved.get(s.name, 0)) / s.max_parallel_jobs)
