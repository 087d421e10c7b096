"""Small helpers shared by the tests: waiting for a condition, and the sweep of the tests' job.

Sources the tests share are in ``tests/sources.py``; the job script (``JOB``) and the
``workdir`` fixture holding it are in ``tests/conftest.py``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from hsm_notebook import ComputeSource, LocalComputeSource, ParameterSpace, Sweep


def until(cond: Callable[[], object], timeout: float = 60, what: str = "condition", every: float = 0.05) -> None:
    """Wait for ``cond()`` to be true; fail the test, naming ``what``, after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"{what} not reached in {timeout} s"
        time.sleep(every)


def job_sweep(
    workdir: Path,
    sources: Sequence[ComputeSource] | int | None = None,
    space: ParameterSpace | Mapping[str, Any] | Iterable[Any] | None = None,
    **kwargs: Any,
) -> Sweep:
    """A sweep of the tests' ``job.py`` (``python job.py x=...``) in ``workdir``, polled every 0.2 s
    unless ``poll_interval=`` says otherwise.

    ``sources``: the sources, or a number of slots on one ``LocalComputeSource`` (None: the sweep's
    default source).  ``space``: a ``ParameterSpace``, a grid (``{"x": [1, 2], "sleep": [30]}``), or
    the values of ``x`` (default ``[1]``).  Other keywords go to ``Sweep``."""
    if isinstance(sources, int):
        sources = [LocalComputeSource(max_parallel_jobs=sources)]
    if space is None:
        space = [1]
    if not isinstance(space, ParameterSpace):
        space = ParameterSpace(grid=dict(space) if isinstance(space, Mapping) else {"x": list(space)})
    kwargs.setdefault("poll_interval", 0.2)
    return Sweep(space, ["python", "job.py"], sources, workdir=workdir, **kwargs)
