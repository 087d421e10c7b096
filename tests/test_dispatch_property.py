"""A property-based test of the manager's dispatch, failover and retries.

Real servers cannot be made to fail and recover at random hundreds of times in a few
seconds, so this test drives the real DistributedJobManager and ledger with fake
sources (named ``Fake...``): each job ends after a random number of polls, may be lost,
and each source's health flaps on a random schedule.
"""

from __future__ import annotations

import random
import sqlite3

from hypothesis import given, settings
from hypothesis import strategies as st

from hsm_notebook import ComputeSource, JobState, JobTemplate, ParameterSpace, RetryPolicy
from hsm_notebook.core._loop import run_sync
from hsm_notebook.core.engine.manager import DistributedJobManager
from hsm_notebook.core.ledger.store import SweepStore
from hsm_notebook.core.spec.space import task_id
from tests.sources import FakeFlakySource


@settings(max_examples=int(__import__("os").environ.get("HSM_PROP_EXAMPLES", "60")), deadline=None)
@given(
    seed=st.integers(0, 2**31),
    slots=st.lists(st.integers(1, 4), min_size=1, max_size=3),
    tasks=st.integers(1, 25),
    lose=st.floats(0, 0.3),
    down=st.floats(0, 0.4),
    strategy=st.sampled_from(["least_loaded", "round_robin", "weighted"]),
)
def test_every_task_ends_once_and_no_source_exceeds_its_slots(tmp_path_factory, seed, slots, tasks, lose, down,
                                                               strategy):
    rng = random.Random(seed)
    directory = tmp_path_factory.mktemp("prop") / "sweep"
    space = ParameterSpace(grid={"i": list(range(tasks))})
    store = SweepStore.create(directory, {"sweep_id": "prop"}, space.with_ids())
    sources: list[ComputeSource] = [FakeFlakySource(f"s{i}", n, rng, lose, down) for i, n in enumerate(slots)]
    sources[0].down = 0  # one source stays up, so every task can end
    manager = DistributedJobManager(sources, store, JobTemplate(("true",)), "prop", poll_interval=0.001,
                                    strategy=strategy, retry=RetryPolicy(max_attempts=4, backoff=0.0),
                                    health_interval=0.002, max_failures=1, health_timeout=1)
    run_sync(manager.run(), timeout=120)
    db = sqlite3.connect(directory / "ledger.sqlite")
    states = dict(db.execute("SELECT task_id, state FROM tasks"))
    assert set(states) == {task_id(p) for p in space}
    assert all(JobState(s).is_terminal for s in states.values()), states
    results = db.execute("SELECT task_id, COUNT(*) FROM attempts WHERE state='COMPLETED' AND "
                         "(error IS NULL OR error NOT LIKE 'surplus run%') GROUP BY task_id").fetchall()
    assert all(n == 1 for _, n in results), results  # at most one result per task
    for tid, state in states.items():
        if state == "COMPLETED":
            assert (tid, 1) in results
    for s in sources:
        assert s.peak <= s.max_parallel_jobs
