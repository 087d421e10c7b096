"""One fixture, every source: the contract suite runs against each kind in ``KINDS``.

Each kind is a factory ``(name, max_parallel_jobs) -> ComputeSource``; kinds backed by a
real server (sshd, Slurm) get it from a session fixture and fail loudly without it.
"""

from __future__ import annotations

import pytest

from hsm_notebook import LocalComputeSource

KINDS = ["local"]


@pytest.fixture(params=KINDS)
def make_source(request):
    kind = request.param
    if kind == "local":
        return lambda name="src", slots=4: LocalComputeSource(name, slots, cancel_grace=2.0)
    raise AssertionError(f"no factory for source kind {kind!r}")
