"""``Sweep``: the one object users touch.

Create one from a space, a command and sources; ``start()`` returns at once and
the sweep runs on the package's background loop; ``wait()``/``run()`` block;
``status()`` and ``results()`` are DataFrames read from the ledger at any time,
from any thread; ``Sweep.attach(dir)`` picks a sweep up after a restart.
Every method that does I/O on the loop has an ``*_async`` twin for ``await``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import copy
import datetime as dt
import re
import sys
import weakref
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from .._lazy import load
from . import _loop
from . import progress as progress_line
from .base.source import ComputeSource
from .engine.dispatch import STRATEGIES
from .engine.manager import DistributedJobManager
from .engine.monitor import HEALTH_TIMEOUT, ask_health
from .launch import launch_options
from .ledger import notes, sweepdir
from .ledger.events import Event, EventBus
from .ledger.records import (
    SPACE_DIFFERS,
    check_sources,
    code_digest,
    differences,
    git_state,
    rebuild_source,
    retry_policy,
    sweep_folder,
)
from .ledger.store import SweepStore
from .ledger.views import SweepViews
from .model.errors import ConfigError, HsmError
from .model.files import default_sweeps_dir
from .model.state import RERUNNABLE, JobState
from .spec import functions
from .spec.config import SweepFile, parse_command
from .spec.config import objective as check_objective
from .spec.job import JobTemplate
from .spec.policy import RetryPolicy
from .spec.project import ProjectConfig
from .spec.search import SEARCH_FILE, Search
from .spec.space import ParameterSpace

#: A sweep's name becomes part of its folder's name: no path separators, no hidden folder, no "..".
_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}")


#: Sweeps this process drives, by folder: a second panel or ``attach`` in the same kernel gets the
#: live object instead of a lock error naming its own pid.
_RUNNING_HERE: weakref.WeakValueDictionary[str, Sweep] = weakref.WeakValueDictionary()

#: ``sources_health(sources)`` blocks; ``await sources_health_async(sources)`` does not: the health
#: of sources that may not be in a sweep yet (the panel's form).
sources_health, sources_health_async = _loop.twins(ask_health)


class Sweep(SweepViews):
    """A parameter sweep stored in a directory, run on one or more compute sources.

    >>> sweep = Sweep(ParameterSpace(grid={"lr": [0.1, 0.01]}), ["python", "train.py"])  # doctest: +SKIP
    >>> sweep.run().results()                                                          # doctest: +SKIP

    With ``name=`` (and no ``directory=``), a sweep of that name already in the sweeps folder is
    found again (the cell runs again after a kernel restart): made from the same space, command,
    sources, function, objective, retry policy, strategy, W&B group and metadata, this object *is*
    that sweep (not started: ``start()`` resumes it); otherwise a ``ConfigError`` names what
    differs.  ``reattach=False`` always makes a new sweep (as ``python -m hsm_notebook run`` does).
    """

    def __init__(
        self,
        space: ParameterSpace | Search,
        command: Sequence[str] | str | Callable[..., Any],
        sources: Sequence[ComputeSource] | None = None,
        *,
        directory: str | Path | None = None,
        name: str | None = None,
        arg_style: str = "hydra",
        workdir: str | Path | None = None,
        env: Mapping[str, str] | None = None,
        wandb_group: str | None = None,
        poll_interval: float = 1.0,
        strategy: str = "least_loaded",
        retry: RetryPolicy | Mapping[str, Any] | None = None,
        requires: Callable[[dict], Mapping[str, Any] | None] | None = None,
        health_interval: float = 30.0,
        max_failures: int = 3,
        unknown_timeout: float = 120.0,
        stall_timeout: float = 600.0,
        reference_args: bool = False,
        metadata: Mapping[str, Any] | None = None,
        sweeps_root: str | Path | None = None,
        origin: Mapping[str, Any] | None = None,
        objective: Mapping[str, str] | str | None = None,
        reattach: bool = True,
        extend: bool = False,
    ):
        search = space if isinstance(space, Search) else None
        if search is not None:
            search.check_objective(check_objective(objective))
            space = ParameterSpace(fixed=search.fixed) if search.fixed else ParameterSpace(grid={})
            if retry is None:  # a trial is one attempt: its job gone, it is told FAIL and the sampler goes on
                retry = RetryPolicy(max_attempts=1)
        if not isinstance(space, ParameterSpace):
            raise ConfigError(f"must be a ParameterSpace or a Search, got {type(space).__name__}", "space")
        if name is not None and not (isinstance(name, str) and _NAME.fullmatch(name) and ".." not in name):
            raise ConfigError(f"must be 1 to 100 letters, digits, '.', '_' or '-' (no '/', no '..', not starting "
                              f"with '.'), got {name!r}: it names the sweep's folder under the sweeps directory",
                              "name")
        workdir = Path(workdir or Path.cwd()).absolute()
        if not workdir.is_dir():
            raise ConfigError(f"{workdir} is not a directory", "workdir")
        files, function = {}, None
        if callable(command):  # a function sweep: pickled once, run by hsm_notebook.runner in every task
            python = functions.python_version()
            function = {"name": getattr(command, "__qualname__", None) or repr(command), "python": python,
                        "code": code_digest(command)}
            files = {functions.FUNCTION_FILE: functions.pack(command, check_objective(objective)),
                     functions.VERSION_FILE: python.encode()}
            command, arg_style = functions.RUNNER, "json"
        template = JobTemplate(parse_command(command), arg_style, str(workdir), dict(env or {}), bool(reference_args),
                               function["python"] if function else None)
        template.check(space.values())
        sources = check_sources(sources, template)
        sweep_id = sweepdir.new_sweep_id(name)
        root = Path(sweeps_root or default_sweeps_dir())
        earlier = sweepdir.named([root], name) if name is not None and directory is None and reattach else []
        directory = Path(directory) if directory else root / sweep_id
        record = {
            "sweep_id": sweep_id, "name": name, "created": dt.datetime.now().isoformat(timespec="seconds"),
            "space": space.to_dict(), "job": template.to_dict(), "wandb_group": wandb_group,
            "sources": [s.describe() for s in sources], "poll_interval": poll_interval, "strategy": strategy,
            "retry": retry_policy(retry).to_dict(), "health_interval": health_interval, "max_failures": max_failures,
            "unknown_timeout": unknown_timeout, "stall_timeout": stall_timeout, "git": git_state(workdir),
            "metadata": dict(metadata or {}), "origin": dict(origin or {}), "objective": check_objective(objective),
            "function": function, "search": search.to_dict() if search is not None else None,
        }
        if search is not None:
            files[SEARCH_FILE] = search.dumps()
        if strategy not in STRATEGIES:
            raise ConfigError(f"must be one of {STRATEGIES}, got {strategy!r}", "strategy")
        if earlier:  # the cell that made this named sweep runs again (Run All after a restart)
            self._reattach(earlier[0], record, sources, space if extend and search is None else None)
            return
        tasks = [] if search is not None else space.json_rows()  # a search's tasks are its trials, asked as it runs
        report = progress_line.creation(name or sweep_id, len(space)) if search is None else None
        store = SweepStore.create(directory, record, tasks, requires, files, report,
                                  product=search is None and space.plain)
        self._init(store, sources, record)

    def _reattach(self, folder: Path, record: Mapping[str, Any], sources: list[ComputeSource],
                  extend: ParameterSpace | None = None) -> None:
        """Become the existing sweep in ``folder`` when it was made from the same arguments; refuse,
        naming what differs, when it was not.  Not started: ``start()``/``run()`` resume it.  With
        ``extend`` (a space) only the space may differ: its new combinations join the sweep."""
        store = SweepStore.open(folder)
        stored = store.record()
        differs = differences(stored, record)
        if extend is not None and differs == [SPACE_DIFFERS]:
            self._init(store, sources, stored)
            self.extend(extend)
            return
        if differs == [SPACE_DIFFERS] and not stored.get("search"):
            raise ConfigError(
                f"a sweep named {record['name']!r} already exists in {folder}, and its space differs from what is "
                f"asked now; to add the new "
                f"combinations to it (the earlier results stay, only new tasks run): Sweep(..., extend=True) or "
                f"sweep.extend(space); to run this as a new sweep give it a new name= (or directory=); to go on "
                f"with the existing one as it is: Sweep.attach({str(folder)!r})", "name")
        if differs:
            raise ConfigError(
                f"a sweep named {record['name']!r} already exists in {folder}, and {' and '.join(differs)} "
                f"{'differs' if len(differs) == 1 else 'differ'} from what is asked now; to run this as a new "
                f"sweep give it a new name= (or directory=), or to go on with the existing one as it is: "
                f"Sweep.attach({str(folder)!r})", "name")
        live = _RUNNING_HERE.get(str(folder))
        if live is not None and live.running:  # this kernel drives it: this object is that one
            self.__dict__ = live.__dict__
            return
        self._init(store, sources, stored)

    def _init(self, store: SweepStore, sources: list[ComputeSource], record: Mapping[str, Any]) -> None:
        self.store = store
        self.sources = sources
        self.id: str = record["sweep_id"]
        self.template = JobTemplate.from_dict(record["job"])
        self._record = dict(record)
        self._manager: DistributedJobManager | None = None
        self._future: concurrent.futures.Future | None = None
        self._param_names: list[str] | None = None
        self._study: Any = None
        self.bus = EventBus()

    # -- other ways in ---------------------------------------------------------------------
    @classmethod
    def from_yaml(
        cls, path: str | Path, sources: Sequence[ComputeSource] | None = None, *,
        project: ProjectConfig | str | Path | bool | None = None, **kwargs: Any,
    ) -> Sweep:
        """A sweep from a YAML file, in this tool's format or any the reference HSM shipped.

        What to run: ``command=``, else the file's ``command:``, else its ``script:`` or the
        project's ``paths.train_script`` run with ``python``.  A reference project's
        ``.hsm/config.yaml`` (found in the current folder or above the file; ``project=`` names one,
        ``project=False`` ignores it) gives the interpreter, conda env, W&B project, sweeps folder and,
        with ``distributed.enabled``, the sources; it also turns on ``reference_args``.  The file's
        ``environment:`` is that of every source given without one (and of the default one)."""
        options = launch_options(SweepFile.load(path), sources, project=project, **kwargs)
        return cls(**options)

    @classmethod
    def attach(
        cls, directory: str | Path, sources: Sequence[ComputeSource] | None = None, *, resume: bool = True
    ) -> Sweep:
        """Reopen a sweep after a restart: from its folder (``sweeps/<sweep id>``) or its name (the
        newest sweep of that name in the sweeps folder).  With ``resume`` (the default) it re-adopts
        the jobs still running and finishes the sweep in the background; ``resume=False`` only reads."""
        directory = sweep_folder(directory)
        live = _RUNNING_HERE.get(str(Path(directory).absolute()))
        if live is not None and live.running:  # this process drives it: the same, live object
            return live
        store = SweepStore.open(Path(directory))
        record = store.record()
        if sources is None:
            sources = [rebuild_source(d) for d in record.get("sources", [])]
        self = cls.__new__(cls)
        self._init(store, check_sources(sources, JobTemplate.from_dict(record["job"])), record)
        if resume and not self.done:
            self.start()
        return self

    # -- running ---------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        """True while this process drives the sweep."""
        return self._future is not None and not self._future.done()

    @property
    def error(self) -> BaseException | None:
        """What stopped the last run of the manager, if it failed (None while running or after success)."""
        if self._future is None or not self._future.done() or self._future.cancelled():
            return None
        return self._future.exception()

    @property
    def launched(self) -> bool:
        """True once a task of the sweep was handed to a source (it has an attempt)."""
        with contextlib.closing(self.store.reader()) as conn:
            return conn.execute("SELECT 1 FROM attempts LIMIT 1").fetchone() is not None

    @property
    def metadata(self) -> dict[str, Any]:
        """The sweep file's ``metadata:`` (description, tags, ...), as recorded."""
        return dict(self._record.get("metadata") or {})

    @property
    def record(self) -> dict[str, Any]:
        """What the sweep was made from, as its folder records it (``sweep.yaml``): space, job, sources'
        descriptions, retry policy, origin, objective, ...  A copy: changing it changes nothing."""
        return copy.deepcopy(self._record)

    @property
    def started(self) -> bool:
        """True once this object started a run in this process (running or ended):
        ``sources_status()`` then has the run's numbers, not only the sources' names."""
        return self._manager is not None

    def start(self) -> Sweep:
        """Run the sweep in the background and return at once (also inside a Jupyter cell)."""
        if self.running:
            return self
        self.store.acquire()
        self._manager = DistributedJobManager(
            self.sources, self.store, self.template, self.id,
            wandb_group=self._record.get("wandb_group"),
            poll_interval=self._record.get("poll_interval", 1.0),
            strategy=self._record.get("strategy", "least_loaded"),
            retry=retry_policy(self._record.get("retry")),
            health_interval=self._record.get("health_interval", 30.0),
            max_failures=self._record.get("max_failures", 3),
            unknown_timeout=self._record.get("unknown_timeout", 120.0),
            stall_timeout=self._record.get("stall_timeout", 600.0),
            events=self.bus,
            searcher=self._searcher(),
            search=self._record.get("search"),
            objective=self._record.get("objective"),
        )
        self._future = _loop.spawn(self._drive(self._manager))
        _RUNNING_HERE[str(self.directory)] = self
        return self

    # -- more combinations ------------------------------------------------------------------
    async def _extend(self, space: ParameterSpace) -> int:
        """Add the combinations of ``space`` this sweep does not hold yet (the same task id is the same
        combination: it keeps its result); returns how many were added.  They run with this sweep's
        command, environment and sources, so the earlier results stand beside them: a running sweep
        takes them at once, an ended one with ``start()``/``run()``.  The sweep's recorded space
        becomes ``space`` (the earlier ones are kept under ``extended``)."""
        if not isinstance(space, ParameterSpace):
            raise ConfigError(f"must be a ParameterSpace, got {type(space).__name__}", "space")
        if self._record.get("search"):
            raise ConfigError("a search asks for its own trials: extend its budget with a new search instead",
                              "space")
        self.template.check(space.values())
        running = self.running and self._manager is not None
        if not running:
            self.store.acquire()  # before any write: refused (another live controller), it changes nothing
        try:
            added = self.store.add_tasks(space.with_ids(), "added by extend()")
            earlier = [*self._record.get("extended", []), self._record["space"]]
            self._record.update(space=space.to_dict(), extended=earlier)
            self.store.update_record(space=self._record["space"], extended=earlier)
            self._param_names = None
        finally:
            if not running:
                self.store.close()
                self.store.release()
        if running and added:
            self._manager.requeue()  # type: ignore[union-attr]
        return added

    extend, extend_async = _loop.twins(_extend)

    # -- a search ------------------------------------------------------------------------
    @property
    def search(self) -> Search | None:
        """The search this sweep runs (None for a grid or sample sweep)."""
        if not self._record.get("search"):
            return None
        return Search.loads((self.directory / SEARCH_FILE).read_bytes())

    def _searcher(self) -> Any:
        search = self.search
        if search is None:
            return None
        make = search.searcher or load("hsm_notebook.search.study:OptunaSearch")
        return make(search, self.directory, self.id, self._record.get("objective") or {})

    @property
    def study(self) -> Any:
        """The search's live ``optuna.Study`` (read from the sweep folder's ``study.log``, which
        ``optuna.load_study(study_name=sweep.id, storage=sweep.study_storage)`` opens too)."""
        if not self._record.get("search"):
            raise ConfigError("not a search: Sweep(Search(...), ...) makes one; a grid sweep's results are "
                              "results()", "study")
        if self._study is None:
            self._study = load("hsm_notebook.search.study:load_study")(self.directory, self.id, self.search)
        return self._study

    @property
    def study_storage(self) -> Any:
        """The study's storage (an ``optuna.storages.JournalStorage`` over :attr:`study_file`), for
        ``optuna.load_study(study_name=sweep.id, storage=sweep.study_storage)``."""
        return load("hsm_notebook.search.study:storage")(self.directory)

    @property
    def study_file(self) -> Path:
        """The study's journal file: ``optuna-dashboard <file>`` shows it, live."""
        return self.directory / load("hsm_notebook.search.study:STUDY_FILE")

    async def _drive(self, manager: DistributedJobManager) -> None:
        try:
            await manager.run()
        finally:
            self.store.close()
            self.store.release()

    def wait(self, timeout: float | None = None, *, progress: bool | None = None) -> Sweep:
        """Block until the sweep's tasks have all ended; re-raises what stopped the manager.

        ``progress``: a text line (counts, rate, best so far) rewritten in place while it waits; by
        default shown in a terminal or a notebook, not when output goes elsewhere; False: quiet."""
        _loop.refuse_in_loop("sweep.wait()")
        future = self._future
        if future is None:
            return self

        def wait(seconds: float | None) -> None:
            try:
                future.result(seconds)
            except concurrent.futures.TimeoutError:
                raise TimeoutError(f"sweep {self.id} still running after {timeout} s; "
                                   "it goes on in the background") from None

        if future.done() or not progress_line.wanted(progress, sys.stderr):
            wait(timeout)
        else:
            line = progress_line.ProgressLine(self.store, self._record.get("name") or self.id, self.objective)
            progress_line.wait_with_line(wait, line, timeout)
        return self

    async def wait_async(self) -> Sweep:
        """``await sweep.wait_async()``: the awaitable twin of ``wait()`` (cancelling the wait leaves
        the sweep running)."""
        if self._future is not None:
            await asyncio.shield(asyncio.wrap_future(self._future))
        return self

    def run(self, *, progress: bool | None = None) -> Sweep:
        """``start()`` then ``wait()`` (with its progress line unless ``progress=False``)."""
        return self.start().wait(progress=progress)

    async def run_async(self) -> Sweep:
        """``await sweep.run_async()``: start, then wait."""
        return await self.start().wait_async()

    # -- control: each call written once, as a coroutine on the package loop; twins() makes its
    # blocking form (``drain(...)``) and its awaitable one (``await drain_async(...)``)
    async def _complete(self, sources: Sequence[ComputeSource] | None = None) -> Sweep:
        """Run again only the tasks that are missing, failed, cancelled or lost; returns at once.

        ``sources`` replaces the sources for this run (start on a laptop, finish elsewhere)."""
        return await self._rerun(RERUNNABLE, sources)

    complete, complete_async = _loop.twins(_complete)

    async def _retry_failed(self) -> Sweep:
        """Run again the FAILED and LOST tasks; returns at once."""
        return await self._rerun((JobState.FAILED, JobState.LOST), None)

    retry_failed, retry_failed_async = _loop.twins(_retry_failed)

    async def _rerun(self, states: Iterable[JobState], sources: Sequence[ComputeSource] | None) -> Sweep:
        states = tuple(states)
        if self.running:
            if sources is not None:
                raise HsmError("the sweep is running; wait() for it or cancel() it before changing sources")
            if await self._requeue(states):
                return self
            await self._ended()  # the manager ended just now: start a new one below
        new_sources = check_sources(sources, self.template) if sources is not None else None
        self.store.acquire()  # before any write: refused (another live controller), it changes nothing
        try:
            if new_sources is not None:
                self.sources = new_sources
                self._record["sources"] = [s.describe() for s in self.sources]
                self.store.update_record(sources=self._record["sources"])
            self.store.reset(states)
            self.store.close()
        except BaseException:
            self.store.release()
            raise
        return self.start()

    async def _ended(self) -> None:
        """Wait for the last run to end (re-raising what stopped it); never cancels it."""
        if self._future is not None:
            await asyncio.shield(asyncio.wrap_future(self._future))

    async def _requeue(self, states: tuple[JobState, ...]) -> bool:
        """Put tasks back in the running manager's queue; False if it has already ended."""
        if self._manager is None or not self._manager.running:
            return False
        if JobState.CANCELLED in states:  # a cancel asked for just now is rerun too, once it has landed
            await self._manager.cancels_recorded()
            if not self._manager.running:
                return False
        self.store.reset(states)
        self._manager.requeue()
        return True

    async def _cancel(self, task_id: str | Iterable[str] | None = None, *, source: str | None = None) -> int:
        """Cancel one task, several, every task running on ``source``, or (no argument) the whole
        sweep; returns how many."""
        ids = [task_id] if isinstance(task_id, str) else (list(task_id) if task_id is not None else None)
        if source is not None:
            if not self.running or self._manager is None:
                return 0
            return await self._manager.cancel(ids, source=source)
        if not self.running:
            self.store.acquire()  # before any write: refused (another live controller), it changes nothing
            try:
                idle = not self.store.in_flight()
                if idle:
                    n = self.store.cancel_pending(ids)
                    self.store.close()
            except BaseException:
                self.store.release()
                raise
            if idle:
                self.store.release()
                return n
            self.start()  # jobs from an earlier controller are still out there: adopt them first
        return await self._manager.cancel(ids) if self._manager is not None else 0

    cancel, cancel_async = _loop.twins(_cancel)

    # -- sources while it runs ---------------------------------------------------------
    def _need_manager(self) -> DistributedJobManager:
        if not self.running or self._manager is None:
            raise HsmError("the sweep is not running here; start() or attach() it first")
        return self._manager

    async def _add_source(self, source: ComputeSource) -> None:
        """A new source joins the running sweep (it is set up, then gets work)."""
        await self._need_manager().add_source(source)
        self.sources.append(source)
        self._record["sources"] = [s.describe() for s in self.sources]
        self.store.update_record(sources=self._record["sources"])

    add_source, add_source_async = _loop.twins(_add_source)

    async def _drain(self, name: str) -> None:
        """No new tasks go to source ``name``; its running tasks finish."""
        manager = self._need_manager()
        manager.require_source(name)
        manager.drain(name)

    drain, drain_async = _loop.twins(_drain)

    async def _disable(self, name: str) -> int:
        """No new tasks go to source ``name``; its running tasks are stopped and run elsewhere."""
        return await self._need_manager().disable(name)

    disable, disable_async = _loop.twins(_disable)

    async def _enable(self, name: str) -> None:
        """Undo ``drain``/``disable``."""
        manager = self._need_manager()
        manager.require_source(name)
        manager.enable(name)

    enable, enable_async = _loop.twins(_enable)

    async def _check_health(self, timeout: float = HEALTH_TIMEOUT) -> dict[str, dict[str, Any]]:
        """Ask every source of the sweep for its health now, all at once:
        ``{source name: {"status": ..., "reason": ...}}`` (see :func:`sources_health`).  Only asks:
        a running sweep's monitor keeps its own checks and decisions."""
        return await ask_health(self.sources, timeout)

    check_health, check_health_async = _loop.twins(_check_health)

    def sources_status(self) -> pd.DataFrame:
        """One row per source: enabled/draining/disabled, health and reason, slots, active,
        completed, failed, completions in the last minute, average duration."""
        if self._manager is not None:
            return pd.DataFrame(self._manager.source_stats())
        return pd.DataFrame([{"source": s.name, "type": s.source_type, "state": "idle", "slots": s.max_parallel_jobs}
                             for s in self.sources])

    def on_event(self, callback: Callable[[Event | None], None]) -> Callable[[], None]:
        """Call ``callback(event)`` on every state change (from the manager's thread; None when a
        run ends).  Returns a function that unsubscribes."""
        return self.bus.subscribe(callback)

    def events(self) -> AsyncIterator[Event]:
        """``async for event in sweep.events()``: state changes as they happen, until the run ends."""
        return self.bus.stream()

    def __repr__(self) -> str:
        counts = self.counts()
        total = sum(counts.values())
        parts = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        return f"<Sweep {self.id}: {total} tasks ({parts}) in {self.directory}>"

    # -- notes and tags (read with task(id)["note"], notes(), tags) ----------------------------------
    def note(self, task_id: str, text: str) -> Sweep:
        """Keep ``text`` as the note of task ``task_id`` in the ledger (shown in Job detail and the
        status table, exported with the results); empty text removes it.  Works while the sweep
        runs, here or in another process: a note is its own short write."""
        notes.write_note(self.directory, task_id, text)
        return self

    def tag(self, *words: str) -> Sweep:
        """Tag the sweep (``sweep.tag("baseline", "lr-scan")``): tags are shown in ``%hsm``'s list of
        sweeps, with the best value and the parameters that vary, to tell sweeps apart."""
        notes.add_tags(self.directory, words)
        return self

    def untag(self, *words: str) -> Sweep:
        """Take tags off the sweep."""
        notes.remove_tags(self.directory, words)
        return self

