"""State changes as a stream: every ledger transition becomes an ``Event``.

The store publishes each event as it records it; the bus hands it to subscribers
(callbacks, and async iterators living on any event loop).  The panel and users'
own code listen here instead of polling the ledger.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from ..model.state import JobState

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Event:
    time: float
    task_id: str
    attempt: int | None
    state: JobState
    source: str | None
    job_id: str | None
    detail: str | None


class EventBus:
    def __init__(self) -> None:
        self._subscribers: list[Callable[[Event | None], None]] = []
        self._lock = threading.Lock()
        #: (listener, error type) -> how many times it raised
        self.errors: dict[tuple[str, str], int] = {}

    def publish(self, event: Event | None) -> None:
        """Deliver ``event`` (None means: the sweep's run ended) to every subscriber."""
        with self._lock:
            subscribers = list(self._subscribers)
        for callback in subscribers:
            try:
                callback(event)
            except Exception as exc:  # noqa: BLE001 - one listener must not break the manager
                self._report(callback, exc)

    def _report(self, callback: Callable, exc: Exception) -> None:
        """A listener raised: say so once per listener and cause (then count), never every event."""
        key = (getattr(callback, "__qualname__", repr(callback)), type(exc).__name__)
        self.errors[key] = self.errors.get(key, 0) + 1
        if self.errors[key] == 1:
            log.warning("event listener %s raised %s: %s (further errors of this kind are counted, not logged; "
                        "listeners run on hsm_notebook's loop thread: keep them quick and non-blocking)",
                        key[0], key[1], exc)

    def subscribe(self, callback: Callable[[Event | None], None]) -> Callable[[], None]:
        with self._lock:
            self._subscribers.append(callback)

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._subscribers:
                    self._subscribers.remove(callback)

        return unsubscribe

    async def stream(self) -> AsyncIterator[Event]:
        """Events as they happen, on the caller's loop, until the run ends."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        def forward(ev: Event | None) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, ev)

        unsubscribe = self.subscribe(forward)
        try:
            while (event := await queue.get()) is not None:
                yield event
        finally:
            unsubscribe()
