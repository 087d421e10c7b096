"""Which source gets the next task: pure functions of the sources' state.

Strategies:
- ``least_loaded``: the free source with the lowest utilisation;
- ``round_robin``: free sources in turn;
- ``weighted``: the free source with the highest measured speed per slot (1 / average
  duration in this run, from the run state; 1 until measured) times its free fraction, so
  faster sources get more work.

A task may carry requirements (``{"gpus": 1, "tags": ["a100"], "sources": ["gpu1"]}``);
only sources that meet them are considered.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..base.source import ComputeSource

STRATEGIES = ("least_loaded", "round_robin", "weighted")


def capabilities(source: ComputeSource) -> dict[str, Any]:
    gpus = getattr(source, "gpus", None) or []
    return {"gpus": len(gpus), "tags": set(getattr(source, "tags", ()) or ())}


def meets(source: ComputeSource, requires: Mapping[str, Any] | None) -> bool:
    """Could ``source`` ever run a task with these requirements (ignoring load and health)?"""
    if not requires:
        return True
    caps = capabilities(source)
    if requires.get("sources") and source.name not in requires["sources"]:
        return False
    if int(requires.get("gpus") or 0) > caps["gpus"]:
        return False
    return set(requires.get("tags") or ()) <= caps["tags"]


def choose(
    sources: Sequence[ComputeSource],
    load: Callable[[str], int],
    strategy: str = "least_loaded",
    turn: int = 0,
    requires: Mapping[str, Any] | None = None,
    duration: Callable[[str], float | None] = lambda name: None,
) -> ComputeSource | None:
    """A source with a free slot that meets ``requires``, or None.

    ``sources`` are those that take work (the manager's gates decide which); ``load(name)``
    counts the slots in use on a source (its live jobs and submissions in flight);
    ``duration(name)`` is a source's average job duration in this run (None until measured)."""
    free = [s for s in sources if load(s.name) < s.capacity and meets(s, requires)]
    if not free:
        return None
    if strategy == "round_robin":
        return free[turn % len(free)]
    if strategy == "weighted":
        def score(s: ComputeSource) -> float:
            avg = duration(s.name)
            speed = 1.0 / avg if avg else 1.0
            return speed * (s.max_parallel_jobs - load(s.name)) / s.max_parallel_jobs
        return max(free, key=score)
    return min(free, key=lambda s: load(s.name) / s.max_parallel_jobs)
