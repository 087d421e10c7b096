"""RetryPolicy: which failed attempts run again, how often, after how long (part of what a sweep
runs: recorded with it, read by the engine's ``Retries``)."""

from __future__ import annotations

from dataclasses import dataclass

from ..model.errors import ConfigError
from ..model.state import JobState


@dataclass(frozen=True)
class RetryPolicy:
    """``max_attempts`` per task in all.  Infrastructure failures (LOST: a vanished host,
    node failure, preemption) are retried by default; a job's own non-zero exit (FAILED)
    only with ``retry_failed=True``.  The wait doubles from ``backoff`` up to ``max_backoff``."""

    max_attempts: int = 3
    retry_failed: bool = False
    backoff: float = 1.0
    max_backoff: float = 300.0

    def __post_init__(self) -> None:
        if not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            raise ConfigError(f"must be a whole number >= 1, got {self.max_attempts!r}", "retry.max_attempts")
        if self.backoff < 0 or self.max_backoff < 0:
            raise ConfigError("backoff times must be >= 0 seconds", "retry.backoff")

    def delay(self, state: JobState, attempt: int) -> float | None:
        """Seconds to wait before attempt ``attempt + 1``, or None for no retry."""
        if attempt >= self.max_attempts:
            return None
        if state == JobState.LOST or (state == JobState.FAILED and self.retry_failed):
            return min(self.max_backoff, self.backoff * 2 ** (attempt - 1))
        return None

    def to_dict(self) -> dict:
        """As plain data, for the sweep record."""
        return {"max_attempts": self.max_attempts, "retry_failed": self.retry_failed,
                "backoff": self.backoff, "max_backoff": self.max_backoff}
