"""Health monitoring: periodic ``health_check`` of every source, off the dispatch path.

A source is disabled after ``max_failures`` consecutive failed checks (an exception, a
timeout, or status "unhealthy") and enabled again on the next healthy one.  The manager
is told through two callbacks, and the reason is kept for ``status()`` and the panel.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Dict, Optional

from .source import ComputeSource


@dataclass
class Health:
    status: str = "unknown"
    reason: Optional[str] = None
    failures: int = 0
    checked_at: Optional[float] = None
    enabled: bool = True
    report: dict = field(default_factory=dict)


class HealthMonitor:
    def __init__(
        self,
        interval: float,
        max_failures: int,
        timeout: float,
        on_disable: Callable[[ComputeSource, str], Awaitable[None]],
        on_enable: Callable[[ComputeSource], Awaitable[None]],
    ):
        self.interval, self.max_failures, self.timeout = interval, max_failures, timeout
        self.on_disable, self.on_enable = on_disable, on_enable
        self.health: Dict[str, Health] = {}
        self._checking: Dict[str, asyncio.Task] = {}
        self._last: Dict[str, float] = {}

    def watch(self, source: ComputeSource) -> None:
        self.health.setdefault(source.name, Health())

    def tick(self, sources: Dict[str, ComputeSource]) -> None:
        """Start the checks that are due (each in its own task: a hung host blocks nothing)."""
        now = time.monotonic()
        for name, source in sources.items():
            if name in self._checking or now - self._last.get(name, 0.0) < self.interval:
                continue
            self._last[name] = now
            self._checking[name] = asyncio.get_running_loop().create_task(self._check(source))

    async def _check(self, source: ComputeSource) -> None:
        h = self.health.setdefault(source.name, Health())
        try:
            try:
                report = await asyncio.wait_for(source.health_check(), self.timeout)
                status, reason = report.get("status", "unknown"), report.get("reason")
            except asyncio.TimeoutError:
                report, status, reason = {}, "unhealthy", f"no answer to a health check in {self.timeout:.0f} s"
            except Exception as exc:  # noqa: BLE001 - any failure of a check is a failed check
                report, status, reason = {}, "unhealthy", f"{type(exc).__name__}: {exc}"
            h.report, h.status, h.reason, h.checked_at = report, status, reason, time.time()
            if status == "unhealthy":
                h.failures += 1
                if h.enabled and h.failures >= self.max_failures:
                    h.enabled = False
                    source.stats.health_status = "unhealthy"
                    await self.on_disable(source, reason or "unhealthy")
            else:
                h.failures = 0
                source.stats.health_status = status
                if not h.enabled:
                    h.enabled = True
                    await self.on_enable(source)
        finally:
            self._checking.pop(source.name, None)

    def disabled(self) -> set[str]:
        return {name for name, h in self.health.items() if not h.enabled}

    def cancel(self) -> None:
        for task in self._checking.values():
            task.cancel()
        self._checking.clear()
