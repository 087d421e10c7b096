"""Supervised background work: the rule that no task the engine starts fails unseen.

Every task goes through :meth:`Supervisor.spawn`; when one fails, the failure is either a
source's (counted in ``faults``; machine and network faults are left to the health checks, any
other kind ``max_failures`` times in a row disables the source with the reason) or the sweep's (a
ledger that cannot be written, a bug): the run stops and ``wait()`` raises it.  The run also
stops, in words, when work waits that no source can take, and it checks at the end that no task
was left unfinished.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Coroutine
from typing import Any

from ..base.source import ComputeSource
from ..ledger.store import SweepStore
from ..model.errors import HsmError, StoreError, describe_error, is_infrastructure
from ..model.state import JobState
from .gate import By, Faults, Gate, log
from .runstate import RunState

Disable = Callable[[ComputeSource, By, str], None]


def untrack(table: dict[str, asyncio.Task[Any]], key: str) -> Callable[[asyncio.Task[Any]], None]:
    """A done-callback that removes ``key`` from ``table`` (the one task in flight per source)."""
    def done(_: asyncio.Task[Any]) -> None:
        table.pop(key, None)
    return done


class Supervisor:
    """Uses: the run state (are only orphans left?), the ledger (counts, for the words), the gates
    and faults, and from the engine: ``checks`` (the health checks in flight: not the engine's own
    work), ``notify`` (wake the loop), ``disable`` (fail a source over), ``pending`` (does work wait?)."""

    def __init__(self, run: RunState, store: SweepStore, gates: dict[str, Gate], faults: Faults, *,
                 max_failures: int, stall_timeout: float, checks: Callable[[], set[asyncio.Task[Any]]],
                 notify: Callable[..., None], disable: Disable, pending: Callable[[], bool]) -> None:
        self.run, self.store, self.gates, self.faults = run, store, gates, faults
        self.max_failures, self.stall_timeout = max_failures, stall_timeout
        self.checks, self.notify, self.disable, self.pending = checks, notify, disable, pending
        self.tasks: set[asyncio.Task[Any]] = set()  # every task the engine started
        self.fatal: BaseException | None = None
        self._stalled_since: float | None = None

    def spawn(self, coro: Coroutine[Any, Any, Any], source: ComputeSource | None, what: str) -> asyncio.Task[Any]:
        """Start ``coro`` as a supervised task: if it fails, the failure is ``source``'s (counted,
        and a source that keeps failing is disabled) or, with no source or for a ledger
        error, the sweep's (the run stops and says why)."""
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(lambda t: self._reap(t, source, what))
        return task

    def _reap(self, task: asyncio.Task[Any], source: ComputeSource | None, what: str) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            if source is None or isinstance(exc, (StoreError, sqlite3.Error)):
                self.stop(exc, what)
            else:
                try:
                    self.fault(source, what, exc)
                except Exception as err:  # noqa: BLE001 - e.g. the ledger failing during the failover
                    self.stop(err, f"handling a failure of {what}")
        self.notify()

    def cancel_all(self) -> None:
        for task in list(self.tasks):
            task.cancel()

    def stop(self, exc: BaseException, what: str) -> None:
        """The sweep cannot go on: remember why; the loop raises it."""
        if self.fatal is None:
            if isinstance(exc, HsmError):
                self.fatal = exc
            else:
                self.fatal = HsmError(f"the sweep stopped: {what} failed with {describe_error(exc)} "
                                      "(a bug: please report it); Sweep.attach(dir) carries on from here")
                self.fatal.__cause__ = exc
        self.notify()

    def raise_if_stopped(self) -> None:
        if self.fatal is not None:
            raise self.fatal

    def busy(self) -> bool:
        """Work of the engine's own in flight (health checks do not count)."""
        return bool(self.tasks.difference(self.checks()))

    # -- a source's faults and reachability ------------------------------------------------
    def fault(self, source: ComputeSource, what: str, exc: BaseException) -> int:
        """A source's operation failed; returns how many times in a row it failed for a reason of
        the source's own.  Faults of the machine or network are only counted (0: the health checks
        decide about those); any other kind, ``max_failures`` times in a row, disables the source."""
        self.faults.report(source.name, what, exc)
        if is_infrastructure(exc):
            self.faults.ok(source.name, what)
            return 0
        streak = self.faults.streaks[(source.name, what)]
        gate = self.gates.get(source.name)
        if gate is not None and streak >= self.max_failures and gate.by != By.FAULTS:
            self.disable(source, By.FAULTS, f"{what} failed {streak} times in a row: {describe_error(exc, 200)}; "
                                            f"fix the source, then enable({source.name!r})")
        return int(streak)

    def wait_for(self, source: ComputeSource, why: str) -> None:
        """``source`` could not be contacted: no new work until a poll or a health check reaches it."""
        gate = self.gates[source.name]
        if gate.unreachable is None:
            log.warning("source %s cannot be reached (%s): its tasks wait for it, spending no attempt",
                        source.name, why)
        gate.unreachable = why
        gate.unreachable_since = gate.unreachable_since or time.monotonic()

    def reached(self, source: ComputeSource, proven: bool = True) -> None:
        """A health check (``proven=False``) or real work (a poll, a submission) reached ``source``."""
        gate = self.gates[source.name]
        if proven:
            gate.unreachable_since = None
        if gate.unreachable is not None:
            gate.unreachable = None
            log.info("source %s is reachable again", source.name)
            self.notify(source.name)

    # -- the run's end, in words -----------------------------------------------------------
    def check_away(self) -> None:
        """Every source that could take the waiting tasks has been unreachable for ``stall_timeout``
        (whatever its health checks said): stop in words; the tasks spent no attempt on it."""
        now = time.monotonic()
        open_ = {n: g for n, g in self.gates.items() if g.may_open}
        if not open_ or any(g.unreachable_since is None or now - g.unreachable_since <= self.stall_timeout
                            for g in open_.values()) or not self.pending():
            return
        why = "; ".join(f"{n}: {g.unreachable or self.faults.summary(n) or 'unreachable'}" for n, g in open_.items())
        raise HsmError(f"{', '.join(open_)} could not be reached for {self.stall_timeout:.0f} s ({why}); "
                       f"{self.store.counts().get(JobState.PENDING.value, 0)} task(s) wait for it and spent no attempt "
                       "on it. Check the host (is sshd running? the network? the credentials?), then Sweep.attach(dir) "
                       "(or complete()) finishes the sweep")

    def check_stall(self) -> None:
        """Work is due and nothing runs or is being started: no open source can take it (all are
        closed, or the open ones do not meet the tasks' requirements).  Stop with the reasons
        rather than hang: at once if no source may open again, else after ``stall_timeout``."""
        self.check_away()
        waiting = self.pending() and self.run.only_orphans() and not self.busy()
        if not waiting:
            self._stalled_since = None
            return
        reasons = "; ".join(f"{n}: {g.describe()}{' - ' + g.reason if g.reason else ''}" for n, g in self.gates.items())
        what = f"{self.store.counts().get(JobState.PENDING.value, 0)} task(s) wait and no open source can run them"
        now = time.monotonic()
        self._stalled_since = self._stalled_since or now
        if not any(g.may_open for g in self.gates.values()):
            raise HsmError(f"no source can take the remaining tasks: {what} ({reasons}); fix them and "
                           "Sweep.attach(dir) (or complete()) to finish the sweep")
        if now - self._stalled_since > self.stall_timeout:
            raise HsmError(f"no source has taken the remaining tasks for {self.stall_timeout:.0f} s: {what} "
                           f"({reasons}); the sweep stopped with tasks pending: Sweep.attach(dir) (or complete()) "
                           "finishes it once a source can run them")

    def check_all_ended(self) -> None:
        left = {s: n for s, n in self.store.counts().items() if not JobState(s).is_terminal}
        if left:
            raise HsmError(f"the manager ended with tasks unfinished ({left}): a bug, please report it; "
                           "Sweep.attach(dir) finishes them")
