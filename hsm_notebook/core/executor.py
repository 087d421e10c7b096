"""``SweepExecutor``: a :class:`concurrent.futures.Executor` whose calls run as the tasks of one sweep,
on its sources (this machine, SSH hosts, Slurm).

>>> with SweepExecutor([LocalComputeSource(max_parallel_jobs=4)]) as ex:      # doctest: +SKIP
...     print(list(ex.map(train, [0.1, 0.01])))

So a user's own loop, nevergrad's ``optimizer.minimize(f, executor=ex)`` or any ask/tell library
drives any source.  How it works:

- The sweep is an open-ended function sweep.  Its function is a fixed trampoline (made by
  :func:`_trampoline`, sent by value: a job needs only the job side of the package), and each call
  is one task whose parameters carry the call: ``fn`` with its arguments, packed as a function
  sweep packs its function (cloudpickle, the notebook's own modules by value), base64-encoded.
  The call travels in the job's command line like any parameter, so it reaches every source the
  way a function sweep's parameters do, with nothing to copy after setup; a call too large for one
  command-line argument (:data:`MAX_CALL_BYTES`) is refused in words.
- ``submit`` writes the call's task into the ledger before it returns (one transaction on the
  package loop; ``map`` writes all its calls in one), so a call the executor accepted is never lost:
  after a crash, :meth:`SweepExecutor.attach` finds it and nothing runs twice (the engine's
  exactly-once).  Each call is a trial of the ledger, numbered in submission order (``status()``'s
  ``trial`` column).
- The engine keeps the run open while the executor is: the executor is the engine's
  :class:`~hsm_notebook.core.engine.trials.Searcher` that never proposes (its calls are in the ledger
  already) and is exhausted once ``shutdown()`` was called; its ``complete()`` is told each call's
  end once the retry policy is done with it (a lost job run again elsewhere is not an end).
- Futures are resolved in a thread of their own, never on the engine's loop: a return value is
  unpickled from the task's ``result.pkl``; an exception ``fn`` raised comes back as itself (the
  job pickles it into the same file, which always comes home from a remote host) with the job's
  traceback as its ``__cause__``, as ``ProcessPoolExecutor`` does; a job that ended without one
  (killed, lost, never started) raises :class:`CallError` with the task's error and the end of its
  stderr.
"""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import functools
import json
import logging
import queue
import reprlib
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from . import _loop
from .base.source import ComputeSource
from .ledger import trials
from .ledger.events import Event
from .ledger.records import sweep_folder
from .model.errors import ConfigError, HsmError
from .model.state import JobState
from .spec import functions
from .spec.jobpaths import JobPaths
from .spec.policy import RetryPolicy
from .spec.search import trial_task_id
from .spec.space import ParameterSpace
from .sweep import Sweep

T = TypeVar("T")

log = logging.getLogger("hsm_notebook")

#: The largest call a job's command line carries: its parameters as the job's one JSON argument, in
#: bytes.  Linux refuses any single argument over 128 KiB (MAX_ARG_STRLEN), on every source.
MAX_CALL_BYTES = 120 * 1024

#: How an executor's sweep says where it came from (``sweep.record["origin"]["executor"]``).
ORIGIN = "SweepExecutor"

#: The key of what a call that raised leaves in its ``result.pkl`` (the task is FAILED all the same).
RAISED = "hsm_raised"

#: Executors open in this process, by sweep folder: ``attach`` gives back the live one.
_OPEN: weakref.WeakValueDictionary[str, SweepExecutor] = weakref.WeakValueDictionary()

#: ``functions.pack`` registers modules for pickling by value while it runs: one pack at a time.
_PACKING = threading.Lock()
#: A future's cancel is two steps (cancelled, then waiters told): one cancel at a time (re-entered
#: by a done-callback that cancels another future).
_CANCELLING = threading.RLock()


def _trampoline() -> Callable[..., Any]:
    """The function every task of an executor's sweep runs (``hsm_notebook.runner`` calls it with the
    task's parameters).  Made inside a function so that cloudpickle sends it by value: the job needs
    only the job side of the package (runner and cloudpickle), never ``hsm_notebook.core``."""

    def executor_call(fn: str, args: str, payload: str) -> Any:
        """Run one call.  ``payload`` is the call (``fn`` with its arguments, packed as a function
        sweep's function is), base64-encoded; ``fn`` and ``args`` only name it in ``status()``.
        What the call raises is pickled into ``result.pkl`` with its traceback, then raised again:
        the task is FAILED with it, and the controller re-raises it."""
        import base64
        import os
        import pickle
        import sys
        import traceback

        import cloudpickle

        from hsm_notebook import runner

        target, modules, number = runner._unpack(cloudpickle.loads(base64.b64decode(payload)))
        sys.modules.update(modules)  # the notebook's modules the call imports in its body
        try:
            return runner.call(target, {}, number)
        except BaseException as exc:
            raised: dict[str, Any] = {"hsm_raised": 1, "type": f"{type(exc).__module__}.{type(exc).__qualname__}",
                                      "message": str(exc)[:2000], "traceback": traceback.format_exc()[-20000:],
                                      "exception": None}
            try:
                raised["exception"] = cloudpickle.dumps(exc, protocol=pickle.HIGHEST_PROTOCOL)
            except Exception:  # noqa: BLE001 - the type, message and traceback still go back
                pass
            task_dir = os.environ.get("HSM_TASK_DIR", ".")
            tmp = os.path.join(task_dir, runner.RESULT_FILE + ".tmp")
            with open(tmp, "wb") as f:
                cloudpickle.dump(raised, f, protocol=pickle.HIGHEST_PROTOCOL)
            os.replace(tmp, os.path.join(task_dir, runner.RESULT_FILE))
            raise

    return executor_call


class RemoteTraceback(Exception):
    """The traceback of what a call raised in its job: the ``__cause__`` of the exception its future
    raises here (printed under it)."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return f'\n"""\n{self.tb.rstrip()}\n"""'


class CallError(HsmError):
    """A call that ended without a result or an exception of its own (its job was lost, killed or
    never started; the executor's run stopped), or whose exception could not be brought back.
    ``task_id`` names its task: ``executor.sweep.task(task_id)``, ``logs(task_id)``."""

    def __init__(self, message: str, task_id: str | None = None) -> None:
        super().__init__(message)
        self.task_id = task_id


class CallFuture(concurrent.futures.Future[T]):
    """The future of one call.  ``task_id`` is its task in the executor's sweep (``status()``,
    ``task(id)``, ``logs(id)``); ``number`` its place in submission order.  ``cancel()`` cancels the
    call whether it waits or runs (a running job is stopped); ``running()`` is true while its job
    runs."""

    def __init__(self, executor: SweepExecutor, number: int, task_id: str) -> None:
        super().__init__()
        self.number, self.task_id = number, task_id
        self._executor = executor
        self._job_running = False

    def running(self) -> bool:
        return self._job_running and not self.done()

    def cancel(self) -> bool:
        """Cancel the call: True unless it has ended already.  Its task is cancelled in the sweep (a
        waiting one never starts, a running job is stopped); a job that ended in the same moment
        keeps its end in the ledger, while this future stays cancelled."""
        if not self._mark_cancelled():
            return False
        self._executor._cancel_tasks([self.task_id])
        return True

    def _mark_cancelled(self) -> bool:
        """Cancelled here, and waiters told (as an executor does for a call it will not run)."""
        with _CANCELLING:
            if self.cancelled():
                return True
            if not super().cancel():
                return False
            self.set_running_or_notify_cancel()
            return True

    def __repr__(self) -> str:
        state = ("cancelled" if self.cancelled() else "finished" if self.done() else
                 "running" if self.running() else "pending")
        return f"<CallFuture call {self.number} (task {self.task_id}) {state}>"


class _Calls:
    """The executor as the engine sees it: a :class:`~hsm_notebook.core.engine.trials.Searcher` (its
    methods run on the package loop) that proposes nothing, keeps the run open until ``shutdown()``
    and hears each call's end."""

    proposes = False  # its tasks are the calls submitted: waiting for one is no stall

    def __init__(self, executor: SweepExecutor) -> None:
        self.executor = executor

    def running(self) -> Mapping[int, Mapping[str, Any]]:
        return {}  # every call is in the ledger from the moment it was submitted

    def suggest(self) -> tuple[int, Mapping[str, Any]] | None:
        return None

    def observe(self, number: int, step: int, value: float) -> str | None:
        return None

    def complete(self, number: int, state: JobState, values: Sequence[float] | None, note: str | None) -> None:
        self.executor._todo.put(("call", number))

    def exhausted(self) -> str | None:
        return "the executor was shut down" if self.executor._closed else None


class _CallSweep(Sweep):
    """An executor's sweep: its engine gets the executor as its searcher, and calls join its ledger
    while it runs."""

    calls: _Calls | None = None

    def _searcher(self) -> Any:
        return self.calls

    async def _add_calls(self, rows: Sequence[tuple[int, str, Mapping[str, Any], str]]) -> None:
        """New tasks ``(number, task id, params, detail)`` in one transaction, then the engine reads
        its queue again.  Runs on the package loop, as the engine does: the run started before any
        call can be submitted (``start()`` scheduled it first), so a run that is not running ended."""
        manager = self._manager
        if manager is None or not manager.running:
            raise HsmError(f"the executor's run has ended ({self.error or 'it stopped'}); "
                           f"SweepExecutor.attach({str(self.directory)!r}) goes on with its calls")
        with self.store.transaction():
            for number, tid, params, detail in rows:
                self.store.add_task(tid, params, detail, trial=number)
        manager.requeue()

    async def _wake(self) -> None:
        if self._manager is not None and self._manager.running:
            self._manager.notify()

    def cancel_later(self, task_ids: list[str]) -> None:
        """Cancel these tasks without waiting for it (a future's ``cancel()`` must not block)."""
        if self.running:
            _loop.spawn(self._cancel(task_ids)).add_done_callback(_report_cancel)


def _report_cancel(done: concurrent.futures.Future[int]) -> None:
    if not done.cancelled() and done.exception() is not None:
        log.warning("executor: a call's cancel failed: %s", done.exception())


class SweepExecutor(concurrent.futures.Executor):
    """Runs ``fn(*args, **kwargs)`` calls as the tasks of one sweep on ``sources`` (None: this
    machine's default source), each call a job: ``submit`` returns a :class:`CallFuture`, ``map``
    yields results in order, ``shutdown()`` lets the run end once its calls have; a context manager.

    The sweep (``executor.sweep``: ``status()``, ``panel()``, ``logs(task_id)``) stays in its folder, so
    after a kernel restart or a crash ``SweepExecutor.attach(folder or name)`` gives back a future for
    every call, finished or not.  The other keywords are the ``Sweep``'s (retries, polling, health,
    strategy, ...); an open executor without calls is idle, not stalled (``stall_timeout`` counts only
    while calls wait and no source takes them).  Calls are pickled with cloudpickle as a function
    sweep's function is (the notebook's own modules travel by value); one whose arguments pickle to
    more than about 90 KB (what one command-line argument carries) is refused: pass a path to the
    data instead.  The executor
    re-made by the same cell after a restart is a new one: ``attach`` is how calls are recovered.
    """

    def __init__(
        self,
        sources: Sequence[ComputeSource] | None = None,
        *,
        name: str | None = None,
        directory: str | Path | None = None,
        workdir: str | Path | None = None,
        env: Mapping[str, str] | None = None,
        poll_interval: float = 1.0,
        strategy: str = "least_loaded",
        retry: RetryPolicy | Mapping[str, Any] | None = None,
        health_interval: float = 30.0,
        max_failures: int = 3,
        unknown_timeout: float = 120.0,
        stall_timeout: float = 600.0,
        metadata: Mapping[str, Any] | None = None,
        sweeps_root: str | Path | None = None,
    ) -> None:
        sweep = _CallSweep(ParameterSpace(), _trampoline(), sources, directory=directory, name=name, workdir=workdir,
                           env=env, poll_interval=poll_interval, strategy=strategy, retry=retry,
                           health_interval=health_interval, max_failures=max_failures,
                           unknown_timeout=unknown_timeout, stall_timeout=stall_timeout, metadata=metadata,
                           sweeps_root=sweeps_root, origin={"executor": ORIGIN}, reattach=False)
        self._begin(sweep, [])

    @classmethod
    def attach(cls, directory: str | Path, sources: Sequence[ComputeSource] | None = None) -> SweepExecutor:
        """The executor of a sweep folder (or the newest sweep of that name), open again: a future for
        every call in ``futures`` (submission order), those that ended resolved from the ledger, the
        jobs still running re-adopted and their calls resolved as they end.  Nothing runs twice.
        ``shutdown()`` it once its calls are done (or submit more)."""
        folder = Path(sweep_folder(directory)).absolute()
        live = _OPEN.get(str(folder))
        if live is not None and live.sweep.running:  # this process drives it: the same executor
            return live
        sweep = _CallSweep.attach(folder, sources, resume=False)
        if sweep.running:  # a plain Sweep.attach in this process drives it
            raise HsmError(f"this process runs {folder} already, without its executor (Sweep.attach?): wait() for "
                           "it, then SweepExecutor.attach again")
        if not isinstance(sweep, _CallSweep) or (sweep.record.get("origin") or {}).get("executor") != ORIGIN:
            raise ConfigError(f"{folder} is a sweep, not an executor's: open it with Sweep.attach(...)", "directory")
        with contextlib.closing(sweep.store.reader()) as conn:
            known = sorted((number, tid) for number, (tid, _) in trials.numbers(conn).items())
        self = cls.__new__(cls)
        self._begin(sweep, known)
        return self

    def _begin(self, sweep: _CallSweep, known: list[tuple[int, str]]) -> None:
        self._sweep = sweep
        self._lock = threading.Lock()  # submission numbers, and submit against shutdown
        self._closed = False  # shutdown() was called: read by the engine, without the lock
        self._known = threading.Lock()  # the two maps below: held only to change or copy them
        self._futures: dict[str, CallFuture[Any]] = {}
        self._numbers: dict[int, CallFuture[Any]] = {}
        for number, tid in known:
            self._register(CallFuture(self, number, tid))
        self._next = known[-1][0] + 1 if known else 0
        self._todo: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name=f"hsm-executor-{sweep.id}", daemon=True)
        self._thread.start()
        self._unsubscribe = sweep.on_event(self._on_event)
        sweep.calls = _Calls(self)
        try:
            sweep.start()
        except BaseException:
            self._unsubscribe()
            self._todo.put(("stop", None))
            raise
        for number, _ in known:  # those that ended are resolved from the ledger; the others as they end
            self._todo.put(("call", number))
        _OPEN[str(sweep.directory.absolute())] = self

    # -- what users read -----------------------------------------------------------------
    @property
    def sweep(self) -> Sweep:
        """The sweep the calls run in: ``status()``, ``results()``, ``task(id)``, ``logs(id)``, ``panel()``."""
        return self._sweep

    @property
    def futures(self) -> dict[str, CallFuture[Any]]:
        """Every call's future by task id, in submission order (a copy)."""
        with self._known:
            return dict(self._futures)

    def __repr__(self) -> str:
        state = "shut down" if self._closed else "open"
        return f"<SweepExecutor {self._sweep.id}: {len(self._futures)} calls, {state}, in {self._sweep.directory}>"

    # -- the Executor API ------------------------------------------------------------------
    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> CallFuture[T]:
        """Run ``fn(*args, **kwargs)`` as a task of the sweep; returns its future once the call is in
        the ledger."""
        return self._submit([(fn, args, kwargs)])[0]

    def map(self, fn: Callable[..., T], *iterables: Iterable[Any], timeout: float | None = None,
            chunksize: int = 1) -> Iterator[T]:
        """``fn`` over the iterables' items (zipped), as the builtin ``map`` but each call a task:
        every call is in the ledger when this returns; the results come in order, a call's exception
        is raised when its turn comes; ``timeout`` counts from this call (then ``TimeoutError``, and
        the calls not yet returned are cancelled, as are those left when the iterator is closed).
        ``chunksize`` is accepted and ignored (each call is one task)."""
        end = None if timeout is None else time.monotonic() + timeout
        futures = self._submit([(fn, args, {}) for args in zip(*iterables, strict=False)])

        def results() -> Iterator[T]:
            try:
                futures.reverse()  # popped from the end: no reference kept to a result yielded
                while futures:
                    future = futures.pop()
                    try:
                        yield future.result(None if end is None else end - time.monotonic())
                    finally:
                        future.cancel()  # a no-op once it ended; after a timeout it stops the call
            finally:
                for future in futures:
                    future.cancel()

        return results()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No new calls; the run ends once every call has.  ``wait``: return when every call ended and
        its future is resolved.  ``cancel_futures``: cancel the calls whose job has not started."""
        _loop.refuse_in_loop("SweepExecutor.shutdown()")
        with self._lock:
            self._closed = True
        sweep = self._sweep
        if cancel_futures:
            ids = [f.task_id for f in self.futures.values()
                   if not f.done() and not f._job_running and f._mark_cancelled()]
            if ids and sweep.running:
                sweep.cancel(ids)
        if sweep.running:
            _loop.run_sync(sweep._wake())  # the engine sees it is shut down and may end
        if wait:
            with contextlib.suppress(Exception):  # what stopped the run went to the futures it left
                sweep.wait()
            if threading.current_thread() is not self._thread:  # (shut down from a done-callback)
                self._thread.join()

    # -- submitting ------------------------------------------------------------------------
    def _submit(self, calls: list[tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]]) -> list[CallFuture[Any]]:
        _loop.refuse_in_loop("SweepExecutor.submit()")
        if not calls:
            return []
        packed = [_pack(fn, args, kwargs) for fn, args, kwargs in calls]  # the slow part, outside the lock
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot schedule new futures after shutdown")
            rows, futures = [], []
            for i, (params, detail) in enumerate(packed):
                number = self._next + i
                tid = trial_task_id(number, params)
                rows.append((number, tid, params, f"call {number}: {detail}"))
                futures.append(self._register(CallFuture(self, number, tid)))  # before the engine can end it
            try:
                _loop.run_sync(self._sweep._add_calls(rows))
            except BaseException:
                with self._known:
                    for future in futures:
                        self._futures.pop(future.task_id, None)
                        self._numbers.pop(future.number, None)
                raise
            self._next += len(rows)
        return futures

    def _register(self, future: CallFuture[Any]) -> CallFuture[Any]:
        with self._known:
            self._futures[future.task_id] = future
            self._numbers[future.number] = future
        return future

    def _cancel_tasks(self, task_ids: list[str]) -> None:
        self._sweep.cancel_later(task_ids)

    # -- resolving, in the executor's own thread ---------------------------------------------
    def _on_event(self, event: Event | None) -> None:
        """On the package loop: note which calls run; the run's end goes to the resolving thread."""
        if event is None:
            self._todo.put(("ended", None))
            return
        future = self._futures.get(event.task_id)
        if future is not None:
            future._job_running = event.state == JobState.RUNNING

    def _serve(self) -> None:
        while True:
            kind, value = self._todo.get()
            if kind == "stop":
                return
            if kind == "call":
                self._resolve(value)
            elif kind == "ended":
                self._ended()
                return

    def _resolve(self, number: int) -> None:
        """Resolve call ``number``'s future from the ledger, if its task has ended."""
        future = self._numbers.get(number)
        if future is None or future.done():
            return
        try:
            info = self._sweep.task(future.task_id)
            state = JobState(info["state"])
            if not state.is_terminal:
                return
            if state == JobState.CANCELLED:
                future._mark_cancelled()
                return
            path = JobPaths.local(self._sweep.directory, info["job_name"]).result if info["job_name"] else None
            kept = _load(path) if path is not None and path.exists() else None
            if state == JobState.COMPLETED:
                if path is None or not path.exists():
                    raise CallError(f"call {number} completed but left no {functions.RESULT_FILE} in "
                                    f"{path.parent if path else 'its task folder'}", future.task_id)
                future.set_result(kept)
            else:
                future.set_exception(self._failure(future, info, state, kept))
        except concurrent.futures.InvalidStateError:
            pass  # cancelled meanwhile: it stays so
        except Exception as exc:  # noqa: BLE001 - a future never hangs: it carries why it could not be read
            with contextlib.suppress(concurrent.futures.InvalidStateError):
                future.set_exception(exc)

    def _failure(self, future: CallFuture[Any], info: Mapping[str, Any], state: JobState, kept: Any) -> BaseException:
        """What a call that did not complete raises here: its own exception, else a CallError."""
        tid = future.task_id
        if isinstance(kept, dict) and kept.get(RAISED):
            exc: BaseException | None = None
            note = ""
            if kept.get("exception") is not None:
                try:
                    exc = _loads(kept["exception"])
                except Exception as inner:  # noqa: BLE001 - a class this kernel cannot rebuild
                    note = f" (it cannot be rebuilt here: {type(inner).__name__}: {inner})"
            if not isinstance(exc, Exception):
                exc = CallError(f"call {future.number} raised {kept.get('type')}: {kept.get('message')}{note}", tid)
            exc.__cause__ = RemoteTraceback(str(kept.get("traceback") or ""))
            return exc
        why = info.get("error") or state.value
        stderr = self._sweep.logs(tid, "stderr", lines=10).strip()
        tail = f"; its stderr ends:\n{stderr}" if stderr else ""
        return CallError(f"call {future.number} (task {tid}) ended {state.value}: {why}{tail}", tid)

    def _ended(self) -> None:
        """The run ended: every call it left unresolved is resolved from the ledger, or fails with what
        stopped the run."""
        try:
            self._sweep.wait()
            error: BaseException | None = None
        except BaseException as exc:  # noqa: BLE001 - what stopped the run, given to the calls it left
            error = exc
        for future in self.futures.values():
            self._resolve(future.number)
            if not future.done():
                why = f"{type(error).__name__}: {error}" if error else "it ended first"
                with contextlib.suppress(concurrent.futures.InvalidStateError):
                    future.set_exception(CallError(
                        f"the executor's run stopped before call {future.number} ended ({why}); "
                        f"SweepExecutor.attach({str(self._sweep.directory)!r}) goes on with it", future.task_id))
        self._unsubscribe()


def _pack(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """A call as a task's parameters (``fn``, ``args``: names for ``status()``; ``payload``: the call)
    and its short description; ConfigError when it cannot be sent to a job."""
    if not callable(fn):
        raise ConfigError(f"must be callable, got {type(fn).__name__}", "fn")
    label, shown = _label(fn), _shown(args, kwargs)
    call = functools.partial(fn, *args, **kwargs)
    try:
        with _PACKING:
            data = functions.pack(call)
    except ConfigError as exc:
        why = str(exc).removeprefix("command: ").replace("the partial's argument", "argument")
        why = why.replace("the partial's keyword", "keyword argument")
        with contextlib.suppress(Exception):  # the partial's repr names the arguments again: shorten it
            why = why.replace(repr(call), f"{label}(...)")
        raise ConfigError(f"{label}({shown}) cannot be sent to a job: {why}", "fn") from None
    params = {"fn": label, "args": shown, "payload": base64.b64encode(data).decode("ascii")}
    size = len(json.dumps(params, separators=(",", ":")))
    if size > MAX_CALL_BYTES:
        raise ConfigError(f"{label}({shown}) pickles to {len(data):,} bytes, and a call travels in its job's command "
                          f"line, which carries about {MAX_CALL_BYTES * 3 // 4:,} bytes of pickled call at most: write "
                          f"large data to a file and pass its path, or make the data inside {label}", "args")
    return params, f"{label}({shown})"


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 40
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 4


def _printable(text: str, limit: int) -> str:
    """``text`` as printable ASCII (what any command line carries), at most ``limit`` characters."""
    text = "".join(ch if " " <= ch <= "~" else "?" for ch in text.encode("ascii", "backslashreplace").decode())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _label(fn: Callable[..., Any]) -> str:
    """``fn``'s name as ``status()`` shows it: ``train``, ``Model.fit`` (not ``cell.<locals>.train``)."""
    name = str(getattr(fn, "__qualname__", None) or type(fn).__qualname__)
    return _printable(name.rpartition("<locals>.")[2], 60)


def _shown(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    def one(value: Any) -> str:
        try:
            return _REPR.repr(value)
        except Exception:  # noqa: BLE001 - a user's __repr__ failing: the type names it
            return f"<{type(value).__name__}>"

    return _printable(", ".join([one(a) for a in args] + [f"{k}={one(v)}" for k, v in kwargs.items()]), 80)


def _load(path: Path) -> Any:
    import cloudpickle

    with open(path, "rb") as f:
        return cloudpickle.load(f)


def _loads(data: bytes) -> Any:
    import cloudpickle

    return cloudpickle.loads(data)
