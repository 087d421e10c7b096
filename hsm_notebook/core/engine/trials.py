"""A search inside the engine: trials asked for as slots free, their curves shown to the pruner,
their ends told, and the budget kept, across restarts.

The search machinery is a small protocol, :class:`Searcher` (Optuna's study is the built-in one,
``hsm_notebook.search``); :class:`Trials` is the engine's side of it.  Each trial is one task of
the ledger (the ``trials`` table says which), so dispatch, exactly-once, retries, cancel and
re-adoption are those of every task.  The order of writes makes every crash recoverable:

- *ask*: the study records the trial, then the ledger its task; a trial the study holds as
  running with no task (the controller died in between) becomes a task at the next start;
- *prune*: the ledger records the prune (reason, step), then the job is stopped; a restart
  stops it again, and its end is PRUNED whatever the kill looked like;
- *tell*: the ledger's task ended, then the study is told, then the ledger marks it told; a
  restart tells what was not marked (the searcher ignores a trial it already finished).

Budget (``n_trials``, ``timeout``, ``max_failed``) is counted here from the ledger, the one
place that survives restarts, so ``n_trials`` is never exceeded.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from ..ledger import steps, trials
from ..ledger.store import SweepStore
from ..model.errors import HsmError, describe_error
from ..model.state import JobState
from ..spec.search import trial_task_id
from ..spec.space import flatten
from .runstate import Live, RunState

log = logging.getLogger("hsm_notebook")

@runtime_checkable
class Searcher(Protocol):
    """What a search library gives the engine (all calls on the engine's loop thread; keep them short).

    ``running()``: trials asked for and not told, ``{number: params}`` (read at every start).
    ``suggest()``: a new trial, ``(number, params)``, or None when it has none to give now.
    ``observe(number, step, value)``: an intermediate value of the objective; returns why the
    trial should stop (prune), or None.  ``complete(number, state, values, note)``: the trial's end
    (COMPLETED with one value per objective metric; PRUNED; FAILED for every other end, with the
    reason).  ``exhausted()``: why no trial will ever come again (a grid done), or None.  A searcher
    whose tasks are added by someone else (an executor's calls) sets ``proposes = False``: the run
    stays open until it is exhausted, and an idle wait is not a stall.
    """

    def running(self) -> Mapping[int, Mapping[str, Any]]: ...

    def suggest(self) -> tuple[int, Mapping[str, Any]] | None: ...

    def observe(self, number: int, step: int, value: float) -> str | None: ...

    def complete(self, number: int, state: JobState, values: Sequence[float] | None, note: str | None) -> None: ...

    def exhausted(self) -> str | None: ...


class Trials:
    """Uses: the searcher, the ledger, the run state (live attempts, cancels, prunes), the search's
    budget and objective; from the engine: ``stop_job`` (stop a task's running attempts) and
    ``notify`` (wake the loop)."""

    def __init__(self, searcher: Searcher, store: SweepStore, run: RunState, objective: Mapping[str, str],
                 budget: Mapping[str, Any], *, stop_job: Callable[[str], None], notify: Callable[..., None]) -> None:
        self.searcher, self.store, self.run = searcher, store, run
        self.metrics = list(objective)
        self.n_trials = budget.get("n_trials")
        self.timeout = budget.get("timeout")
        self.max_failed = budget.get("max_failed")
        self.stop_job, self.notify = stop_job, notify
        self.proposes = bool(getattr(searcher, "proposes", True))
        self.ended: str | None = None  # why no new trial is asked for (budget spent, sampler done)
        self.failure: HsmError | None = None  # the search stopped for its failures: the run says so
        self._count = 0  # trials in the ledger
        self._failed = 0  # of those, ended in failure
        self._started: float | None = None
        self._ask_exhausted = True  # whether the searcher's own exhausted() may have changed

    # -- at every start ---------------------------------------------------------------------
    def recover(self) -> None:
        """Reconcile the study and the ledger (see the module's docstring), and finish prunes that a
        previous controller asked for."""
        with self.store.transaction() as conn:
            trials.reopen(conn)
            known = trials.numbers(conn)
            self._count = len(known)
            self._failed = sum(1 for _, state in known.values() if state in _FAILED)
            started = trials.meta(conn, trials.STARTED)
            self._started = float(started) if started else None
            prunes = trials.pruned(conn)
        for number, params in sorted(self.searcher.running().items()):
            if number not in known:
                tid = trial_task_id(number, params)
                self.store.add_task(tid, params, f"trial {number}: asked before the controller stopped, "
                                                 "queued now", trial=number)
                self._count += 1
        for tid, prune in prunes.items():
            self.run.prunes[tid] = prune
            self.run.cancels.add(tid)
            self.stop_job(tid)
        self.settle()

    def reopen(self) -> None:
        """Tasks were queued again by the user (``complete()``, ``retry_failed()``): their trials are
        told again when they end (a searcher adds a finished trial's new result as a new trial)."""
        with self.store.transaction() as conn:
            trials.reopen(conn)

    # -- as the run goes ------------------------------------------------------------------
    def feed(self, free: int) -> int:
        """Ask for up to ``free`` new trials (slots are free and no task waits); returns how many
        became tasks."""
        added = 0
        while added < free and self._budget_left():
            try:
                suggestion = self.searcher.suggest()
            except Exception as exc:  # noqa: BLE001 - a sampler or a space function failing: in words
                raise HsmError(f"the search could not propose a trial: {describe_error(exc, 300)}; fix the "
                               "search space (or sampler), then Sweep.attach(dir) goes on") from exc
            if suggestion is None:
                break
            number, params = suggestion
            if self._started is None:
                self._started = time.time()
                with self.store.transaction() as conn:
                    trials.set_meta(conn, trials.STARTED, str(self._started))
            self._ask_exhausted = True
            if self.store.add_task(trial_task_id(number, params), params, f"trial {number}", trial=number):
                self._count += 1
                added += 1
        return added

    def _budget_left(self) -> bool:
        if self.ended is not None:
            return False
        why = None
        if self.n_trials is not None and self._count >= self.n_trials:
            why = f"n_trials={self.n_trials} reached"
        elif self.timeout is not None and self._started is not None and time.time() - self._started >= self.timeout:
            why = f"timeout={self.timeout:g} s reached"
        elif self.max_failed is not None and self._failed >= self.max_failed:
            why = f"max_failed={self.max_failed} reached"
            self.failure = HsmError(f"the search stopped: {self._failed} trials failed (max_failed={self.max_failed});"
                                    " see status(state='FAILED') for their errors; fix the cause, then give a larger "
                                    "max_failed or start a new search")
        elif self._ask_exhausted or not self.proposes:  # a proposer is asked again only after a trial was
            self._ask_exhausted = False                   # asked for or told (it may read its whole study)
            why = self.searcher.exhausted()
        if why is not None:
            self.ended = why
            log.info("search: no new trials: %s", why)
        return why is None

    def exhausted(self) -> bool:
        """No trial will be asked for again in this run."""
        return not self._budget_left()

    def steps(self, new: list[tuple[Live, list[steps.Row]]]) -> None:
        """New intermediate values of running trials (one poll's): the objective's go to the searcher,
        and a trial it prunes is recorded as pruned, then stopped."""
        if len(self.metrics) != 1:
            return  # several objectives: no pruning (refused when the search was made)
        metric = self.metrics[0]
        pruned: list[str] = []
        with self.store.transaction() as conn:
            for live, rows in new:
                values = [(step, value) for _, step, name, value, _ in rows if name == metric and math.isfinite(step)]
                if not values or live.tid in self.run.prunes:
                    continue
                number = trials.of_task(conn, live.tid)
                if number is None:
                    continue
                why = None
                for step, value in values:
                    try:
                        why = self.searcher.observe(number, int(step), value) or why
                    except Exception as exc:  # noqa: BLE001 - the curve is kept; pruning this trial is off
                        log.warning("search: trial %s: its value at step %g was not taken: %s", number, step,
                                    describe_error(exc))
                        break
                if why:
                    step = values[-1][0]
                    trials.mark_pruned(conn, live.tid, why, step)
                    self.run.prunes[live.tid] = (why, step)
                    self.run.cancels.add(live.tid)
                    pruned.append(live.tid)
        for tid in pruned:  # the prune is in the ledger: now the job is stopped
            self.stop_job(tid)

    def settle(self) -> None:
        """Tell the searcher about every trial whose task ended and that it was not told of."""
        rows = trials.ended_untold(self.store.conn)  # a read: no write lock each loop turn
        for row in rows:
            number, tid, state = row["number"], row["task_id"], JobState(row["state"])
            values, note = None, row["error"]
            if state == JobState.COMPLETED:
                values, note = self._values(tid, row["metrics"])
                if values is None:
                    state = JobState.FAILED
            elif state == JobState.PRUNED:
                note = note or f"pruned at step {row['prune_step']:g}: {row['pruned']}"
            else:
                note = f"{state.value}: {note}" if note else state.value
                state = JobState.FAILED
            self.searcher.complete(number, state, values, note)
            with self.store.transaction() as conn:
                trials.mark_told(conn, tid)
        if rows:
            self._ask_exhausted = True
            with self.store.transaction() as conn:
                self._failed = sum(1 for _, state in trials.numbers(conn).values() if state in _FAILED)
            self.notify()

    def _values(self, tid: str, metrics_json: str | None) -> tuple[list[float] | None, str | None]:
        """The objective's values of a completed trial (its final metrics, else its last step), or
        None and why not."""
        final = flatten(json.loads(metrics_json)) if metrics_json else {}
        values = []
        for metric in self.metrics:
            value = final.get(metric)
            if value is None:
                value = steps.last_value(self.store.conn, tid, metric)
            number, why = steps.number(value) if value is not None else (None, "never reported")
            if number is None or not math.isfinite(number):
                shown = why or repr(number)
                return None, (f"completed, but the objective {metric!r} is {shown}: report it with "
                              f"log_metrics({metric}=...) or return it")
            values.append(number)
        return values, None

    def finish(self) -> None:
        """The run ended with every task ended: record why the search is over (``Sweep.done``)."""
        with self.store.transaction() as conn:
            trials.set_meta(conn, trials.ENDED, self.ended or "ended")


_FAILED = {s.value for s in (JobState.FAILED, JobState.LOST)}
