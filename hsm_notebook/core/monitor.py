"""Health monitoring: periodic ``health_check`` of every source, off the dispatch path.

The monitor only asks and reads the answers: each check runs in its own (supervised) task,
its report is read into ``healthy`` / ``degraded`` / ``unhealthy`` with a reason, and the
manager is told.  What follows from it (disable after ``max_failures`` unhealthy checks in a
row, enable on recovery) is the manager's decision, kept in its gates.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from dataclasses import dataclass, field
from typing import Any, Callable, Collection, Dict, Mapping, Optional

from .errors import describe_error
from .source import ComputeSource

#: Words sources use for their health (the reference's, and common others) -> ours.
HEALTH_WORDS: Dict[str, str] = {
    **dict.fromkeys(("healthy", "ok", "good", "up", "online", "available", "ready", "idle", "active"), "healthy"),
    **dict.fromkeys(("degraded", "overloaded", "busy", "warning", "warn", "slow", "full", "limited"), "degraded"),
    **dict.fromkeys(("unhealthy", "error", "down", "offline", "unavailable", "unreachable", "failed", "fail",
                     "dead", "critical"), "unhealthy"),
}


def read_health(report: Any) -> tuple[str, Optional[str], dict]:
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
        return "degraded", (f"health_check() said {raw!r}, which is none of healthy, degraded, unhealthy "
                            "(or ok, overloaded, error, ...): taken as degraded"), report
    if status != "healthy" and not reason and word != status:
        reason = word  # "overloaded" says more than "degraded"
    return status, (str(reason) if reason else None), report


@dataclass
class Health:
    status: str = "unknown"
    reason: Optional[str] = None
    failures: int = 0  # unhealthy checks in a row
    checked_at: Optional[float] = None
    report: dict = field(default_factory=dict)


class HealthMonitor:
    def __init__(
        self,
        interval: float,
        timeout: float,
        spawn: Callable[..., asyncio.Task],
        on_result: Callable[[ComputeSource, Health], Any],
    ):
        self.interval, self.timeout, self.spawn, self.on_result = interval, timeout, spawn, on_result
        self.health: Dict[str, Health] = {}
        self._checking: Dict[str, asyncio.Task] = {}
        self._last: Dict[str, float] = {}
        self._counted: Dict[str, float] = {}  # when each source's last counted check started
        #: Seconds between the extra checks of a source that could not be reached: they only look for
        #: its return, so a failure of theirs never counts towards disabling it.
        self.hurry_interval = min(interval, 1.0)

    def watch(self, source: ComputeSource) -> None:
        self.health.setdefault(source.name, Health())

    def tick(self, sources: Dict[str, ComputeSource], hurry: Collection[str] = ()) -> None:
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
            task.add_done_callback(lambda _t, n=name: self._checking.pop(n, None))

    async def _check(self, source: ComputeSource, counted: bool = True) -> None:
        h = self.health.setdefault(source.name, Health())
        try:
            status, reason, report = read_health(await asyncio.wait_for(source.health_check(), self.timeout))
        except asyncio.TimeoutError:
            status, reason, report = "unhealthy", f"no answer to a health check in {self.timeout:.0f} s", {}
        except Exception as exc:  # noqa: BLE001 - any failure of a check is a failed check
            status, reason, report = "unhealthy", describe_error(exc), {}
        if status == "unhealthy" and not counted:
            return  # still away: the counted checks say so
        h.report, h.status, h.reason, h.checked_at = report, status, reason, time.time()
        h.failures = h.failures + 1 if status == "unhealthy" else 0
        source.stats.health_status, source.stats.last_health_check = status, datetime.now()
        await self.on_result(source, h)

    def checking(self) -> set[asyncio.Task]:
        """The checks in flight."""
        return set(self._checking.values())

    def cancel(self) -> None:
        for task in list(self._checking.values()):
            task.cancel()
        self._checking.clear()
