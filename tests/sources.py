"""The compute sources the tests share: one home, imported by the modules that use them.

Two kinds.  Sources written the way users write them (``ReferenceStyleSource``, ``ThreadSource``,
``HostSource``) implement every method of the ABC themselves and run real processes: they show
that a user's own source plugs in.  Fakes (named ``Fake...``) stand in where no real server can
be had (a host that never answers, health that flaps at random); they and ``UserSource`` build on
``StubSource``, whose methods do nothing and say so.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import subprocess
import sys
from typing import Any

from hsm_notebook import ComputeSource, ConnectError, JobInfo, JobOutcome, JobState, LocalComputeSource


class StubSource(ComputeSource):
    """The ABC's seven methods as no-ops (set up, every job ``COMPLETED`` at once, healthy); a
    test's source overrides only what it is about."""

    def __init__(self, name: str = "stub", source_type: str = "fake", max_parallel_jobs: int = 2) -> None:
        super().__init__(name, source_type, max_parallel_jobs)

    async def setup(self, sweep_dir: Any, sweep_id: str) -> bool:
        return True

    async def submit_job(self, params: dict, job_name: str, sweep_id: str, wandb_group: str | None = None) -> str:
        return job_name

    async def get_job_status(self, job_id: str) -> Any:
        return "COMPLETED"

    async def cancel_job(self, job_id: str) -> bool:
        return False

    async def collect_results(self, job_ids: Any = None) -> bool:
        return True

    async def health_check(self) -> Any:
        return {"status": "healthy"}

    async def cleanup(self) -> None:
        return None


# -- written as users write them: every method of their own, real processes ----------------------

class ReferenceStyleSource(ComputeSource):
    """A source as the reference HSM's users write them: Popen'd jobs, plain-string states,
    and its own ``active_jobs``/``completed_jobs`` bookkeeping.  ``quirk`` picks one habit:

    - ``string_updates``: ``self.update_job_status(job_id, "COMPLETED")`` with a string;
    - ``moves_jobs``: ``get_job_status`` moves a finished job out of ``active_jobs`` itself;
    - ``unknown``: "UNKNOWN" forever for the jobs of task x=0;
    - ``odd_word``: a state word nobody defined for the jobs of task x=0;
    - ``outcome_raises``: ``outcome()`` raises.
    """

    def __init__(self, name="ref", max_parallel_jobs=2, *, quirk=None, health: Any = None):
        super().__init__(name, "reference-style", max_parallel_jobs)
        self.quirk, self.health = quirk, health if health is not None else {"status": "healthy"}
        self.procs: dict[str, subprocess.Popen] = {}
        self.x: dict[str, Any] = {}

    async def setup(self, sweep_dir, sweep_id):
        return True

    async def submit_job(self, params, job_name, sweep_id, wandb_group=None):
        job_dir = self.job_dir(job_name)
        job_dir.mkdir(parents=True, exist_ok=True)
        argv, env = self.job_command(params, job_name, sweep_id, wandb_group, str(job_dir))
        argv[0] = sys.executable
        with open(job_dir / "stdout.log", "w") as out, open(job_dir / "stderr.log", "w") as err:
            self.procs[job_name] = subprocess.Popen(argv, cwd=self.template.workdir, env={**os.environ, **env},
                                                    stdout=out, stderr=err)
        self.x[job_name] = params.get("x")
        self.active_jobs[job_name] = JobInfo(job_name, job_name, params, self.name, JobState.RUNNING)
        return job_name

    async def get_job_status(self, job_id):
        if self.quirk == "unknown" and self.x[job_id] == 0:
            return "UNKNOWN"
        if self.quirk == "odd_word" and self.x[job_id] == 0:
            return "HALF_DONE"
        rc = self.procs[job_id].poll()
        if rc is None:
            return "RUNNING"
        state = "COMPLETED" if rc == 0 else "FAILED"
        if self.quirk == "string_updates":
            self.update_job_status(job_id, state)
        if self.quirk == "moves_jobs" and job_id in self.active_jobs:
            self.completed_jobs[job_id] = self.active_jobs.pop(job_id)
        return state

    async def outcome(self, job_id, state):
        if self.quirk == "outcome_raises":
            raise RuntimeError("the results folder is not where I expected")
        return await super().outcome(job_id, state)

    async def cancel_job(self, job_id):
        self.procs[job_id].terminate()
        return True

    async def collect_results(self, job_ids=None):
        return True

    async def health_check(self):
        return self.health

    async def cleanup(self):
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()


class FailingSubmitSource(ReferenceStyleSource):
    """Submissions always raise ``exc``."""

    def __init__(self, exc: BaseException, **kwargs):
        super().__init__(**kwargs)
        self.exc, self.calls = exc, 0

    async def submit_job(self, params, job_name, sweep_id, wandb_group=None):
        self.calls += 1
        raise self.exc


class SlowSubmitSource(LocalComputeSource):
    """The real local source whose submissions take ``delay`` seconds to return (a busy
    scheduler or a slow link): cancel() arrives while they are in flight."""

    def __init__(self, *args, delay: float = 1.5, **kwargs):
        super().__init__(*args, **kwargs)
        self.delay = delay

    async def submit_job(self, params, job_name, sweep_id, wandb_group=None):
        job_id = await super().submit_job(params, job_name, sweep_id, wandb_group)
        await asyncio.sleep(self.delay)
        return job_id


class ThreadSource(ComputeSource):
    """What a user might write: each job runs with subprocess.run in a worker thread,
    and states are the reference API's plain strings."""

    def __init__(self, name: str = "threads", max_parallel_jobs: int = 2):
        super().__init__(name, "threads", max_parallel_jobs)
        self.futures: dict[str, asyncio.Future] = {}

    async def setup(self, sweep_dir, sweep_id):
        return True

    async def submit_job(self, params, job_name, sweep_id, wandb_group=None):
        job_dir = self.job_dir(job_name)
        job_dir.mkdir(parents=True, exist_ok=True)
        argv, env = self.job_command(params, job_name, sweep_id, wandb_group, str(job_dir))
        argv[0] = sys.executable

        def run() -> int:
            with open(job_dir / "stdout.log", "w") as out, open(job_dir / "stderr.log", "w") as err:
                return subprocess.run(argv, cwd=self.template.workdir, env={**os.environ, **env},
                                      stdout=out, stderr=err).returncode

        self.futures[job_name] = asyncio.get_running_loop().run_in_executor(None, run)
        return job_name

    async def get_job_status(self, job_id):
        future = self.futures[job_id]
        if not future.done():
            return "running"
        return "COMPLETED" if future.result() == 0 else "FAILED"

    async def cancel_job(self, job_id):
        return False

    async def collect_results(self, job_ids=None):
        return True

    async def health_check(self):
        return {"status": "healthy"}

    async def cleanup(self):
        self.futures.clear()


class HostSource(ThreadSource):
    """Its constructor takes what ``describe()`` does not record, and it does not extend describe()."""

    def __init__(self, host: str):
        super().__init__(host, 1)


# -- fakes, where no real server can be had -----------------------------------------------------
class FakeUnreachableSource(StubSource):
    """A fake: a host whose every submission meets a refused connection, and whose health checks fail."""

    def __init__(self, name: str = "away") -> None:
        super().__init__(name, "fake", 2)
        self.tries = 0

    async def submit_job(self, params: dict, job_name: str, sweep_id: str, wandb_group: Any = None) -> str:
        self.tries += 1
        raise ConnectError("connection refused by away:22: is sshd running and the port right?", self.name)

    async def get_job_status(self, job_id: str) -> str:
        raise AssertionError("nothing was ever submitted")

    async def health_check(self) -> dict:
        return {"status": "unhealthy", "reason": "connection refused"}


class FakeLyingHealthSource(FakeUnreachableSource):
    """A fake: submissions meet a refused connection, yet its health check says healthy."""

    async def health_check(self) -> dict:
        return {"status": "healthy"}


class FakeFlakySource(StubSource):
    """A fake: jobs live only in memory; ``rng`` decides durations, losses and health."""

    poll_interval = 0.001

    def __init__(self, name: str, slots: int, rng: random.Random, lose: float, down: float):
        super().__init__(name, "fake", slots)
        self.rng, self.lose, self.down = rng, lose, down
        self.left: dict[str, int] = {}
        self.fate: dict[str, JobState] = {}
        self.peak = 0
        self.healthy = True
        self.running: set = set()

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

    async def outcome(self, job_id, state):
        done = state == JobState.COMPLETED
        return JobOutcome(state, 0 if done else None, None, {"ok": 1} if done else None)

    async def health_check(self) -> dict[str, Any]:
        if self.rng.random() < self.down:
            self.healthy = not self.healthy
        return {"status": "healthy" if self.healthy else "unhealthy", "reason": None if self.healthy else "flapping"}


class UserSource(StubSource):
    """A source as a user writes it: its own constructor arguments, recorded by ``describe()``."""

    source_type = "user"

    def __init__(self, name: str = "mine", max_parallel_jobs: int = 2, *, flavour: str = "plain"):
        super().__init__(name, "user", max_parallel_jobs)
        self.flavour = flavour

    def describe(self):
        return {**super().describe(), "flavour": self.flavour}
