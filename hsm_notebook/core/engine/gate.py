"""Whether a source gets work (one state per source), and the faults a source has shown.

The manager owns one :class:`Gate` per source: ``enabled`` (gets work), ``draining`` (no new
work; its jobs finish), ``disabled`` (no new work; its jobs were failed over) with the reason
and who decided it, or ``closed`` (the run is over).  Nothing else decides eligibility.

:class:`Faults` is where background failures go to be seen: each cause is logged once and
then counted, so a fault that repeats every polling round is one line with a number, shown
by ``sources_status()`` and the panel.
"""

from __future__ import annotations

import collections
import enum
import logging
from dataclasses import dataclass

from ..model.errors import describe_error

log = logging.getLogger("hsm_notebook")


class Mode(enum.StrEnum):
    ENABLED = "enabled"
    DRAINING = "draining"
    DISABLED = "disabled"
    CLOSED = "closed"


class By(enum.StrEnum):
    """Who closed a gate: it decides who may open it again."""

    USER = "user"        # drain()/disable(): only enable() opens it
    HEALTH = "health"    # failed health checks: a healthy check opens it
    SETUP = "setup"      # setup failed: a healthy check sets it up again
    FAULTS = "faults"    # the source kept raising: only enable() opens it


@dataclass
class Gate:
    mode: Mode = Mode.ENABLED
    by: By | None = None
    reason: str | None = None
    before: Mode = Mode.ENABLED  # what a health recovery returns to (draining stays draining)
    #: Set when the source could not be contacted to take work (a submission met a refused or dropped
    #: connection): no new work until a poll or a health check reaches it again.  A fault of the
    #: source, not of the tasks: they wait, spending no attempt.
    unreachable: str | None = None
    #: Since when (monotonic) no submission or poll reached it: a health check that says "healthy"
    #: reopens the gate but only work that reaches the source ends this (so a lying check cannot loop forever).
    unreachable_since: float | None = None

    @property
    def takes_work(self) -> bool:
        return self.mode == Mode.ENABLED and self.unreachable is None

    @property
    def reachable(self) -> bool:
        """Worth polling: its jobs can still be asked about."""
        return self.mode in (Mode.ENABLED, Mode.DRAINING) or self.by == By.USER

    @property
    def may_open(self) -> bool:
        """Could take work again later without this run ending (a health recovery or the user)."""
        return self.mode != Mode.CLOSED and self.by != By.FAULTS

    def close(self, mode: Mode, by: By | None, reason: str) -> None:
        if self.mode in (Mode.ENABLED, Mode.DRAINING):
            self.before = self.mode
        self.mode, self.by, self.reason = mode, by, reason

    def open(self, mode: Mode | None = None) -> None:
        self.mode, self.by, self.reason = mode or self.before, None, None

    def describe(self) -> str:
        words = self.mode.value if self.by is None else f"{self.mode.value} ({self.by.value})"
        if self.unreachable and self.mode in (Mode.ENABLED, Mode.DRAINING):
            words += f", waiting for it to be reachable again ({self.unreachable})"
        return words


class Faults:
    """Failures of background work per (source, operation): logged once per cause, then counted."""

    def __init__(self) -> None:
        self.counts: collections.Counter[tuple[str, str, str]] = collections.Counter()  # (source, what, message) -> n
        self.streaks: collections.Counter[tuple[str, str]] = collections.Counter()  # (source, what) -> in a row
        self.last: dict[str, tuple[str, str]] = {}  # source -> (what, message) of its latest fault

    def report(self, source: str, what: str, exc: BaseException) -> int:
        """Record one failure; returns how many times in a row ``what`` has failed on ``source``."""
        message = describe_error(exc, 200)
        key = (source, what, message)
        self.counts[key] += 1
        self.streaks[(source, what)] += 1
        self.last[source] = (what, message)
        if self.counts[key] == 1:
            log.warning("source %s: %s failed: %s (repeats are counted in sources_status(), not logged)",
                        source, what, message)
            log.debug("the first %s failure of %s", what, source, exc_info=exc)
        return self.streaks[(source, what)]

    def ok(self, source: str, what: str) -> None:
        """``what`` worked on ``source``: its streak ends."""
        self.streaks.pop((source, what), None)

    def forget_streaks(self, source: str) -> None:
        """The user enabled ``source`` again: its failures in a row start from zero (others' stay)."""
        for key in [k for k in self.streaks if k[0] == source]:
            del self.streaks[key]

    def summary(self, source: str) -> str | None:
        """The source's latest fault and how often it happened, for a person."""
        if source not in self.last:
            return None
        what, message = self.last[source]
        n = self.counts[(source, what, message)]
        return f"{what} failed: {message}" + (f" ({n} times)" if n > 1 else "")
