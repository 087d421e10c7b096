"""One background event loop per process, and sync twins built on it.

Why a thread and not the caller's loop: in a Jupyter kernel the caller's loop is
busy running the cell; ``nest_asyncio`` re-enters it but breaks JupyterLab's
"Run All" under ipykernel 7 (see ARCHITECTURE.md), and an asyncio task on the
kernel's loop freezes whenever a cell runs blocking code.  A dedicated daemon
thread keeps the manager polling, lets widgets update while cells run, and gives
every coroutine a blocking twin that works the same in a script, in pytest and
inside a running kernel.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import threading
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

from .model.errors import HsmError

T = TypeVar("T")
P = ParamSpec("P")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_thread: threading.Thread | None = None


def get_loop() -> asyncio.AbstractEventLoop:
    """The package's loop, started on first use in a daemon thread named ``hsm-loop``."""
    global _loop, _thread
    with _lock:
        if _loop is None or _thread is None or not _thread.is_alive():
            loop = asyncio.new_event_loop()
            ready = threading.Event()

            def serve() -> None:
                asyncio.set_event_loop(loop)
                loop.call_soon(ready.set)
                loop.run_forever()

            _thread = threading.Thread(target=serve, name="hsm-loop", daemon=True)
            _thread.start()
            ready.wait()
            _loop = loop
        return _loop


def in_loop_thread() -> bool:
    return _thread is not None and threading.current_thread() is _thread


def spawn(coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
    """Run ``coro`` on the package loop; returns at once."""
    return asyncio.run_coroutine_threadsafe(coro, get_loop())


def refuse_in_loop(call: str) -> None:
    """A blocking call on the package's own loop thread would wait for that very thread forever
    (an ``on_event`` callback runs there): refuse it in words instead."""
    if in_loop_thread():
        raise HsmError(
            f"{call} blocks, and it was called on hsm_notebook's own loop thread (from an on_event callback?), "
            "where it would wait for itself forever; from a callback, only look at the event, or start a "
            "thread (threading.Thread(target=...).start()) that makes the call, or await the *_async twin")


class LoopTimeout(HsmError, TimeoutError):
    """A blocking call got no answer from the package loop in the time it was given (it was cancelled)."""


def run_sync(coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
    """The blocking twin of a coroutine: works in scripts, pytest and Jupyter cells.

    After ``timeout`` seconds the coroutine is cancelled (nothing of it goes on behind the caller's
    back) and :class:`LoopTimeout` (a ``TimeoutError``) says so."""
    name = getattr(coro, "__qualname__", "a blocking call")
    if in_loop_thread():
        coro.close()
        refuse_in_loop(name)
    future = spawn(coro)
    try:
        return future.result(timeout)
    except concurrent.futures.TimeoutError:
        if not future.cancel():  # it ended just now, or raised a TimeoutError of its own: that answer
            return future.result()
        raise LoopTimeout(f"{name} did not finish in {timeout} s and was cancelled; call it again with a longer "
                          "timeout, or await its *_async twin where waiting is not a problem") from None


async def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Await ``coro`` from any loop (the kernel's, or the package's own)."""
    if in_loop_thread():
        return await coro
    return await asyncio.wrap_future(spawn(coro))


def twins(body: Callable[P, Coroutine[Any, Any, T]]) -> tuple[Callable[P, T], Callable[P, Coroutine[Any, Any, T]]]:
    """The blocking and the awaitable twin of a coroutine function (a method, usually) whose ``body``
    runs on the package loop, so that each control call is written once::

        async def _drain(self, name): ...        # runs on the package loop
        drain, drain_async = twins(_drain)

    ``drain(...)`` blocks the calling thread (refused, in words, on the loop thread itself);
    ``await drain_async(...)`` works from any loop (the kernel's or the package's own)."""
    public = body.__name__.lstrip("_")

    @functools.wraps(body)
    def blocking(*args: P.args, **kwargs: P.kwargs) -> T:
        if in_loop_thread():
            refuse_in_loop(f"{public}()")
        return run_sync(body(*args, **kwargs))

    @functools.wraps(body)
    async def awaitable(*args: P.args, **kwargs: P.kwargs) -> T:
        return await run_async(body(*args, **kwargs))

    owner = body.__qualname__.rpartition(".")[0]
    for twin, name in ((blocking, public), (awaitable, f"{public}_async")):
        twin.__name__, twin.__qualname__ = name, f"{owner}.{name}" if owner else name
    awaitable.__doc__ = f"The awaitable twin of ``{public}()``: " + (body.__doc__ or "")
    return blocking, awaitable
