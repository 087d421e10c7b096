"""When a failed attempt is tried again, and after how long."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from ..model.errors import CommandTimeout, ConnectError
from ..model.state import JobOutcome, JobState
from ..spec.policy import RetryPolicy

if TYPE_CHECKING:  # the ledger imports the sweep record, which imports this module
    from ..ledger.store import SweepStore
    from .runstate import RunState


def unreachable(exc: BaseException) -> bool:
    """A submission that failed because its source could not be contacted (a refused, dropped or
    never made connection: nothing was sent, nothing can have run).  The source's fault: the task
    waits for it and spends no attempt."""
    return isinstance(exc, (ConnectError, ConnectionRefusedError)) and not isinstance(exc, CommandTimeout)


class Retries:
    """The engine's retry decisions: after an attempt's end is recorded, queue the task again when
    the policy says so.  Uses the ledger, the run state's cancels and the policy; owns when the
    earliest backoff ends (``next_at``), so the loop never scans the ledger for it."""

    def __init__(self, policy: RetryPolicy, store: SweepStore, run: RunState) -> None:
        self.policy, self.store, self.run = policy, store, run
        self.next_at: float | None = None

    def reload(self) -> None:
        """Ask the ledger when the earliest backoff ends (after tasks were queued or cancelled)."""
        self.next_at = self.store.next_retry()

    def due(self, now: float | None = None) -> bool:
        return self.next_at is not None and self.next_at <= (time.time() if now is None else now)

    def conclude(self, tid: str, attempt: int, outcome: JobOutcome, meaning: str) -> None:
        """After an attempt's end is recorded (``meaning``: the ledger's ``finish()``): queue a retry
        if the policy wants one; a cancel that was asked for is done once the task has ended."""
        if meaning == "current" and outcome.state in (JobState.LOST, JobState.FAILED) and tid not in self.run.cancels:
            delay = self.policy.delay(outcome.state, attempt)
            if delay is not None:
                due = time.time() + delay
                self.store.requeue(tid, f"retry {attempt + 1}/{self.policy.max_attempts} in {delay:.0f} s after "
                                        f"{outcome.state.value}", due)
                self.next_at = due if self.next_at is None else min(self.next_at, due)
                return
        if meaning in ("current", "won"):
            self.run.cancels.discard(tid)
            self.run.prunes.pop(tid, None)

    def fail_over(self, tid: str, attempt: int, why: str) -> None:
        """The attempt's source is gone (disabled, or unusable at recovery): record it LOST; only the
        task's current attempt sends it back to the queue (a task that already has its result, an
        earlier attempt having won, must never run again)."""
        meaning = self.store.finish(tid, attempt, JobOutcome(JobState.LOST, error=why))
        retried = self.policy.delay(JobState.LOST, attempt) is not None
        if meaning == "current" and tid not in self.run.cancels and retried:
            self.store.requeue(tid, f"queued again: {why}")
