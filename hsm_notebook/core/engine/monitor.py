"""Health monitoring: periodic ``health_check`` of every source, off the dispatch path.

The monitor only asks and reads the answers: each check runs in its own (supervised) task,
its report is read into a :class:`SourceHealth` (healthy, degraded, unhealthy) with a reason, and
the manager is told.  The monitor is the only writer of a source's health (``Health.status`` and
the reference's ``source.stats.health_status``); a setup that failed is reported to it
(:meth:`HealthMonitor.setup_failed`).  What follows from it (disable after ``max_failures`` unhealthy checks in a
row, enable on recovery) is the manager's decision, kept in its gates.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Collection, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..base.source import ComputeSource
from ..model.errors import describe_error
from ..model.state import SourceHealth
from .supervisor import untrack

#: Words sources use for their health (the reference's, and common others) -> ours.
HEALTH_WORDS: dict[str, SourceHealth] = {
    **dict.fromkeys(("healthy", "ok", "good", "up", "online", "available", "ready", "idle", "active"),
                    SourceHealth.HEALTHY),
    **dict.fromkeys(("degraded", "overloaded", "busy", "warning", "warn", "slow", "full", "limited"),
                    SourceHealth.DEGRADED),
    **dict.fromkeys(("unhealthy", "error", "down", "offline", "unavailable", "unreachable", "failed", "fail",
                     "dead", "critical"), SourceHealth.UNHEALTHY),
}


def read_health(report: Any) -> tuple[SourceHealth, str | None, dict[str, Any]]:
    """``(status, reason, report)`` from what a ``health_check()`` returned: a dict with a
    ``status`` (any word of ``HEALTH_WORDS``, any case), or just such a word."""
    if isinstance(report, Mapping):
        raw = report.get("status")
        reason = report.get("reason") or report.get("message") or report.get("error")
        report = dict(report)
    else:
        raw, reason, report = report, None, {"status": report}
    word = str(raw).strip().lower()
    status = HEALTH_WORDS.get(word)
    if status is None:
        return SourceHealth.DEGRADED, (f"health_check() said {raw!r}, which is none of healthy, degraded, unhealthy "
                            "(or ok, overloaded, error, ...): taken as degraded"), report
    if status != SourceHealth.HEALTHY and not reason and word != status:
        reason = word  # "overloaded" says more than "degraded"
    return status, (str(reason) if reason else None), report


@dataclass
class Health:
    """What the monitor knows of one source's health (it alone writes it)."""

    status: SourceHealth = SourceHealth.UNKNOWN
    reason: str | None = None
    failures: int = 0  # unhealthy checks in a row
    checked_at: float | None = None
    report: dict[str, Any] = field(default_factory=dict)


class HealthMonitor:
    def __init__(
        self,
        interval: float,
        timeout: float,
        spawn: Callable[[Coroutine[Any, Any, Any], ComputeSource | None, str], asyncio.Task[Any]],
        on_result: Callable[[ComputeSource, Health], Any],
    ) -> None:
        self.interval, self.timeout, self.spawn, self.on_result = interval, timeout, spawn, on_result
        self.health: dict[str, Health] = {}
        self._checking: dict[str, asyncio.Task[Any]] = {}
        self._last: dict[str, float] = {}
        self._counted: dict[str, float] = {}  # when each source's last counted check started
        #: Seconds between the extra checks of a source that could not be reached: they only look for
        #: its return, so a failure of theirs never counts towards disabling it.
        self.hurry_interval = min(interval, 1.0)

    def watch(self, source: ComputeSource) -> None:
        self.health.setdefault(source.name, Health())

    def status(self, name: str) -> Health:
        """The source's health (``unknown`` until its first check)."""
        return self.health.get(name) or Health()

    def setup_failed(self, source: ComputeSource, reason: str) -> None:
        """The source's setup failed: unhealthy until a check says otherwise (the check sets it up again)."""
        h = self.health.setdefault(source.name, Health())
        self._write(source, h, SourceHealth.UNHEALTHY, reason, {}, count=False)

    def tick(self, sources: dict[str, ComputeSource], hurry: Collection[str] = ()) -> None:
        """Start the checks that are due (each in its own task: a hung host blocks nothing).  Sources
        in ``hurry`` (unreachable ones that tasks wait for) are also checked every ``hurry_interval``
        seconds, uncounted: those checks look for their return only."""
        now = time.monotonic()
        for name, source in sources.items():
            if name in self._checking:
                continue
            counted = now - self._counted.get(name, -self.interval) >= self.interval
            if not counted and (name not in hurry or now - self._last.get(name, 0.0) < self.hurry_interval):
                continue
            self._last[name] = now
            if counted:
                self._counted[name] = now
            task = self.spawn(self._check(source, counted), source, "health check")
            self._checking[name] = task
            task.add_done_callback(untrack(self._checking, name))

    async def _check(self, source: ComputeSource, counted: bool = True) -> None:
        h = self.health.setdefault(source.name, Health())
        try:
            status, reason, report = read_health(await asyncio.wait_for(source.health_check(), self.timeout))
        except TimeoutError:
            status, reason, report = SourceHealth.UNHEALTHY, f"no answer to a health check in {self.timeout:.0f} s", {}
        except Exception as exc:  # noqa: BLE001 - any failure of a check is a failed check
            status, reason, report = SourceHealth.UNHEALTHY, describe_error(exc), {}
        if status == SourceHealth.UNHEALTHY and not counted:
            return  # still away: the counted checks say so
        self._write(source, h, status, reason, report)
        await self.on_result(source, h)

    @staticmethod
    def _write(source: ComputeSource, h: Health, status: SourceHealth, reason: str | None,
               report: dict[str, Any], count: bool = True) -> None:
        """The one place a source's health is written."""
        h.report, h.status, h.reason, h.checked_at = report, status, reason, time.time()
        if count:
            h.failures = h.failures + 1 if status == SourceHealth.UNHEALTHY else 0
        source.stats.health_status, source.stats.last_health_check = status, datetime.now()

    def checking(self) -> set[asyncio.Task[Any]]:
        """The checks in flight."""
        return set(self._checking.values())

    def cancel(self) -> None:
        for task in list(self._checking.values()):
            task.cancel()
        self._checking.clear()


# -- asked by hand (check_health(), the panel's button): only asks, decides nothing ------------
#: How long a health check asked for by hand (``check_health()``, the panel's button) may take
#: before its source counts as unhealthy.
HEALTH_TIMEOUT = 30.0


def _answer(answer: object, timeout: float) -> dict[str, Any]:
    """A source's answer to ``health_check()`` as ``{"status": word, "reason": ...}``: a dict as it
    is, a bare word (the reference's ``"ok"``) wrapped, an error or a timeout as ``unhealthy``."""
    if isinstance(answer, TimeoutError):
        return {"status": "unhealthy", "reason": f"no answer to the health check in {timeout} s"}
    if isinstance(answer, BaseException):
        return {"status": "unhealthy", "reason": describe_error(answer)}
    if isinstance(answer, Mapping):
        return dict(answer)
    return {"status": str(answer)}


async def ask_health(
    sources: Sequence[ComputeSource], timeout: float = HEALTH_TIMEOUT,
) -> dict[str, dict[str, Any]]:
    """Ask each source for its health now, all at once, each within ``timeout`` s:
    ``{source name: {"status": ..., "reason": ...}}``; a check that raises or does not answer in
    time makes its source ``unhealthy``, with the reason in words."""
    sources = list(sources)
    answers = await asyncio.gather(*(asyncio.wait_for(s.health_check(), timeout) for s in sources),
                                   return_exceptions=True)
    return {s.name: _answer(a, timeout) for s, a in zip(sources, answers, strict=False)}
