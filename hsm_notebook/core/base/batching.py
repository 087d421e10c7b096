"""Queue a future, flush once per loop turn: the one batching helper of every source.

Submissions (and cancels) made at the same moment go out as one command: ``await
batcher.submit(item)`` queues the item with a future; the first item of a turn starts a flush
task, which waits one loop turn (or ``delay`` seconds) so that every caller of this moment joins,
then hands the items to ``flush`` in chunks of at most ``size`` and answers each future with its
result.  The SSH source starts jobs with it, a batch scheduler submits arrays and cancels with it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

#: ``flush`` of one chunk: one result per item, in order.
Flush = Callable[[list[T]], Awaitable[Sequence[R]]]
#: What a failed chunk answers instead of the error: one result per item, or None (every caller
#: of the chunk gets the error).
OnError = Callable[[BaseException, list[T]], Sequence[R] | None]


class Batcher(Generic[T, R]):
    """Items queued in the same loop turn (or within ``delay`` s) are flushed together.

    ``size`` (a number, or a callable read at each flush: a cluster's array limit known only
    after setup) caps one chunk; None: everything queued goes at once.  A caller that is
    cancelled while waiting leaves its item in the chunk (it may already be on its way); only its
    answer is dropped."""

    def __init__(self, flush: Flush[T, R], *, size: int | Callable[[], int] | None = 256, delay: float = 0.0,
                 on_error: OnError[T, R] | None = None) -> None:
        self._flush_chunk, self._size, self.delay, self._on_error = flush, size, delay, on_error
        self._queue: list[tuple[T, asyncio.Future[R]]] = []
        self._task: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        """Items queued and not yet handed to ``flush``."""
        return len(self._queue)

    def __bool__(self) -> bool:
        return bool(self._queue)

    @property
    def items(self) -> list[T]:
        """The queued items (not yet flushed), oldest first."""
        return [item for item, _ in self._queue]

    async def submit(self, item: T) -> R:
        """Queue ``item``; its result once its chunk is flushed (or the chunk's error)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._queue.append((item, future))
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._run())
        return await future

    def _chunk_size(self) -> int | None:
        size = self._size() if callable(self._size) else self._size
        return max(1, size) if size is not None else None

    async def _run(self) -> None:
        await asyncio.sleep(self.delay)  # every caller of this moment joins the batch
        while self._queue:
            size = self._chunk_size()
            n = len(self._queue) if size is None else size
            chunk, self._queue = self._queue[:n], self._queue[n:]
            items = [item for item, _ in chunk]
            try:
                results: Sequence[R] | None = await self._flush_chunk(items)
                error: BaseException | None = None
            except asyncio.CancelledError:  # the loop is closing: nobody is left waiting forever
                for _, future in chunk + self._queue:
                    future.cancel()
                self._queue = []
                raise
            except Exception as exc:  # noqa: BLE001 - handed to every caller of the chunk
                error = exc
                results = self._on_error(exc, items) if self._on_error is not None else None
            for i, (_, future) in enumerate(chunk):
                if future.done():  # its caller was cancelled: nobody waits for the answer
                    continue
                if results is not None and i < len(results):
                    future.set_result(results[i])
                else:
                    future.set_exception(error or RuntimeError("the batch returned fewer results than items"))
