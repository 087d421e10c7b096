"""A property-based test of the manager's dispatch, failover and retries.

Real servers cannot be made to fail and recover at random hundreds of times in a few
seconds, so this test drives the real DistributedJobManager and ledger with fake
sources (named ``Fake...``): each job ends after a random number of polls, may be lost,
and each source's health flaps on a random schedule.
"""

from __future__ import annotations

import random
import sqlite3
from typing import Any, Dict, List

from hypothesis import given, settings
from hypothesis import strategies as st

from hsm_notebook import ComputeSource, JobState, JobTemplate, ParameterSpace, RetryPolicy
from hsm_notebook.core._loop import run_sync
from hsm_notebook.core.manager import DistributedJobManager
from hsm_notebook.core.space import task_id
from hsm_notebook.core.store import SweepStore


class FakeFlakySource(ComputeSource):
    """A fake: jobs live only in memory; ``rng`` decides durations, losses and health."""

    poll_interval = 0.001

    def __init__(self, name: str, slots: int, rng: random.Random, lose: float, down: float):
        super().__init__(name, "fake", slots)
        self.rng, self.lose, self.down = rng, lose, down
        self.left: Dict[str, int] = {}
        self.fate: Dict[str, JobState] = {}
        self.peak = 0
        self.healthy = True
        self.running: set = set()

    async def setup(self, sweep_dir, sweep_id):
        return True

    async def submit_job(self, params, job_name, sweep_id, wandb_group=None):
        self.left[job_name] = self.rng.randint(0, 3)
        self.fate[job_name] = JobState.LOST if self.rng.random() < self.lose else JobState.COMPLETED
        self.running.add(job_name)  # from submission until it reports an end (orphans included)
        running = len(self.running)
        self.peak = max(self.peak, running)
        assert running <= self.max_parallel_jobs, f"{self.name}: {running} jobs on {self.max_parallel_jobs} slots"
        return job_name

    async def get_job_status(self, job_id):
        if self.left[job_id] > 0:
            self.left[job_id] -= 1
            return JobState.RUNNING
        self.running.discard(job_id)
        return self.fate[job_id]

    async def cancel_job(self, job_id):
        self.fate[job_id], self.left[job_id] = JobState.CANCELLED, 0
        return True

    async def collect_results(self, job_ids=None):
        return True

    async def outcome(self, job_id, state):
        from hsm_notebook import JobOutcome
        return JobOutcome(state, 0 if state == JobState.COMPLETED else None, None, {"ok": 1} if state == JobState.COMPLETED else None)

    async def health_check(self) -> Dict[str, Any]:
        if self.rng.random() < self.down:
            self.healthy = not self.healthy
        return {"status": "healthy" if self.healthy else "unhealthy", "reason": None if self.healthy else "flapping"}

    async def cleanup(self):
        pass


@settings(max_examples=int(__import__("os").environ.get("HSM_PROP_EXAMPLES", "60")), deadline=None)
@given(
    seed=st.integers(0, 2**31),
    slots=st.lists(st.integers(1, 4), min_size=1, max_size=3),
    tasks=st.integers(1, 25),
    lose=st.floats(0, 0.3),
    down=st.floats(0, 0.4),
    strategy=st.sampled_from(["least_loaded", "round_robin", "weighted"]),
)
def test_every_task_ends_once_and_no_source_exceeds_its_slots(tmp_path_factory, seed, slots, tasks, lose, down, strategy):
    rng = random.Random(seed)
    directory = tmp_path_factory.mktemp("prop") / "sweep"
    space = ParameterSpace(grid={"i": list(range(tasks))})
    store = SweepStore.create(directory, {"sweep_id": "prop"}, space.with_ids())
    sources: List[ComputeSource] = [FakeFlakySource(f"s{i}", n, rng, lose, down) for i, n in enumerate(slots)]
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
