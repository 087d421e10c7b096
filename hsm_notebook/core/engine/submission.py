"""Dispatch and submission: the queue of waiting tasks, free slots handed the next tasks, and each
submission recorded before it is made.

``Dispatcher.fill`` picks an open source with a free slot (``dispatch.choose``, a pure function
over the run state's load), reserves the slot in the run state, and starts the submission as a
supervised task; the intent (attempt *n*, ``SUBMITTING``) is committed to the ledger before
``submit_job`` is called.  A submission that reached nothing gives its attempt back and waits
for its source; any other failure is the attempt's end, LOST or FAILED, with the reason.
"""

from __future__ import annotations

import collections
import json
from collections.abc import Callable

from ..base.source import ComputeSource
from ..ledger.store import SweepStore
from ..model.errors import SourceError, describe_error, is_infrastructure
from ..model.state import JobOutcome, JobState
from . import dispatch
from .gate import Faults, Gate
from .polling import Poller
from .retry import Retries, unreachable
from .runstate import Live, RunState
from .supervisor import Supervisor
from .trials import Trials

_QUEUE_CHUNK = 1000
_LOOKAHEAD = 1000  # queued tasks examined per fill when requirements hold some back

QueueItem = tuple[str, str, str | None]  # (task id, params JSON, requirements JSON)


class Dispatcher:
    """Uses: the run state (slots, submissions in flight, cancels, live attempts), the ledger, the
    sources and their gates (open?), faults, the supervisor (tasks, faults, reachability), the poller
    (to stop a job whose cancel came during its submission) and the retry decisions.  Owns the
    queue: the ledger's PENDING tasks read in chunks, in order."""

    def __init__(self, run: RunState, store: SweepStore, sources: dict[str, ComputeSource], gates: dict[str, Gate],
                 faults: Faults, supervisor: Supervisor, poller: Poller, retries: Retries, *, strategy: str,
                 sweep_id: str, wandb_group: str | None, notify: Callable[..., None]) -> None:
        self.run, self.store, self.sources, self.gates, self.faults = run, store, sources, gates, faults
        self.supervisor, self.poller, self.retries = supervisor, poller, retries
        self.strategy, self.sweep_id, self.wandb_group, self.notify = strategy, sweep_id, wandb_group, notify
        self.queue: collections.deque[QueueItem] = collections.deque()
        self._cursor, self._exhausted = -1, False
        self._turn = 0
        self.trials: Trials | None = None  # a search: new trials are asked for as slots free

    # -- the queue -----------------------------------------------------------------------
    def pending(self) -> bool:
        """Does a task wait (read from the ledger as the queue runs dry; a backoff that ended counts)?"""
        if not self.queue and not self._exhausted:
            rows = self.store.pending(_QUEUE_CHUNK, self._cursor)
            self.queue.extend((r["task_id"], r["params"], r["requires"]) for r in rows)
            if rows:
                self._cursor = rows[-1]["idx"]
            else:
                self._exhausted = True
        if not self.queue and self._exhausted and self.retries.due():
            self.retries.reload()  # the ledger's answer, asked only when one falls due
            if self.retries.due():
                self.requeue()
                return self.pending()
        return bool(self.queue)

    def waiting(self) -> bool:
        """Is work due: a task in the queue, or a search that will propose more trials?  (What the
        stall check asks: work due that no source takes.)"""
        return self.pending() or (self.trials is not None and self.trials.proposes and not self.trials.exhausted())

    def open(self) -> bool:
        """Does the run stay open: work due, or a searcher that may still add tasks (an executor
        waiting for calls)?"""
        return self.pending() or (self.trials is not None and not self.trials.exhausted())

    def requeue(self) -> None:
        """Tasks were put back to PENDING in the ledger: read the queue again from the start."""
        self.queue.clear()
        self._cursor, self._exhausted = -1, False
        self.retries.reload()
        self.notify()

    def drop(self, wanted: set[str] | None) -> None:
        """Cancelled in the ledger: forget these waiting tasks (all with None)."""
        self.queue = collections.deque(q for q in self.queue if wanted is not None and q[0] not in wanted)
        if wanted is None:
            self._exhausted = True
        self.retries.reload()  # cancelled tasks no longer wait out a backoff

    # -- dispatch and submission -----------------------------------------------------------
    def fill(self) -> None:
        sources = list(self.sources.values())
        open_ = [s for name, s in self.sources.items() if self.gates[name].takes_work]
        load, speed = self.run.load, self.run.average_duration
        if self.trials is not None and not self.pending():  # no barrier: a trial for each free slot
            free = sum(max(0, s.capacity - load(s.name)) for s in open_)
            if free and self.trials.feed(free):
                self._exhausted = False  # the new trials' tasks are read from the ledger
        deferred: list[QueueItem] = []
        while self.pending() and len(deferred) < _LOOKAHEAD:
            if dispatch.choose(open_, load, "least_loaded", 0, None) is None:
                break  # every open source is full (or none is open)
            item = self.queue.popleft()
            requires = json.loads(item[2]) if item[2] else None
            source = dispatch.choose(open_, load, self.strategy, self._turn, requires, duration=speed)
            if source is None:
                if not any(dispatch.meets(s, requires) for s in sources):
                    self.store.finish_unrunnable(item[0], f"no source can run it: it needs {requires}; "
                                                          f"sources: {[s.name for s in sources]}")
                else:
                    deferred.append(item)
                continue
            self._turn += 1
            self.run.reserve(source.name)
            self.supervisor.spawn(self._submit(source, item[0], item[1]), None, f"submitting to {source.name}")
        self.queue.extendleft(reversed(deferred))

    async def _submit(self, source: ComputeSource, tid: str, params_json: str) -> None:
        params = json.loads(params_json)
        try:
            began = self.store.begin_attempt(tid, source.name)
            if began is None:
                return  # no longer pending: an earlier attempt won, or it was cancelled
            attempt, job_name = began
            self.run.submitting[tid] = (source.name, attempt)
            try:
                job_id = await source.submit_job(params, job_name, self.sweep_id, self.wandb_group)
                if not isinstance(job_id, str) or not job_id:
                    raise SourceError(f"submit_job() returned {job_id!r}; it must return the job's id (a string)",
                                      source.name)
            except Exception as exc:  # noqa: BLE001 - every failure of a submission is the task's, in words
                self.run.submitting.pop(tid, None)
                self._submit_failed(source, tid, attempt, exc)
                return
            self.run.submitting.pop(tid, None)
            self.faults.ok(source.name, "submitting")
            self.gates[source.name].unreachable_since = None
            self.store.set_state(tid, attempt, JobState.QUEUED, job_id=job_id)
            self.run.add((source.name, job_id), Live(tid, attempt, job_name))
            if tid in self.run.cancels:  # cancelled while the submission was in flight: stop it now
                self.poller.cancel(source, job_id, "cancelling")
        finally:
            self.run.release(source.name)

    def _submit_failed(self, source: ComputeSource, tid: str, attempt: int, exc: BaseException) -> None:
        """A submission failed: infrastructure faults are LOST (retried by the policy, with
        backoff), anything else FAILED; a cancelled task is CANCELLED.  Errors stay short."""
        self.supervisor.fault(source, "submitting", exc)
        why = describe_error(exc)
        cancelled = tid in self.run.cancels
        if not cancelled and unreachable(exc):  # the source's fault, not the task's: it waits
            self.supervisor.wait_for(source, why)
            if self.store.withdraw(tid, attempt, f"waiting for {source.name} to be reachable again: {why}"):
                self.requeue()
                return
        if cancelled:
            outcome = JobOutcome(JobState.CANCELLED, error=f"cancelled while it was being submitted ({why})")
        elif is_infrastructure(exc):
            outcome = JobOutcome(JobState.LOST, error=f"could not be submitted to {source.name}: {why}")
        else:
            outcome = JobOutcome(JobState.FAILED, error=f"submission to {source.name} failed: {why}")
        self.retries.conclude(tid, attempt, outcome, self.store.finish(tid, attempt, outcome))
