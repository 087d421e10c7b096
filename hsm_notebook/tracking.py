"""Tracking tools: a sweep's tasks as MLflow runs and W&B runs, read from its ledger.

Opt-in and idempotent: each call exports the tasks that ended since the last one, so it can be
called again as a sweep goes on (or left to :func:`follow`, which does it as tasks end)::

    from hsm_notebook.tracking import follow, log_to_mlflow, log_to_wandb, MLflowExport, WandbExport

    log_to_mlflow(sweep, tracking_uri="sqlite:///mlflow.db")      # then: mlflow ui
    log_to_wandb(sweep, project="digits", dir="runs")            # then: wandb sync runs/wandb/offline-run-*
    with follow(sweep, MLflowExport("sqlite:///mlflow.db"), WandbExport("digits")):
        sweep.run()

One run per ended attempt of a task (a task run again, ``retry_failed()``, gets a run for its new
attempt): the parameters, every step the job logged (``log_metrics(step=...)``, a generator's
yields) with its step and time, and the final metrics.  Nothing is exported twice: MLflow's runs
carry the task's id, attempt and the sweep's id as tags and are looked up by them; a W&B run's id is
made from the same three (``<sweep hash>-<task id>-<attempt>``) and its folder is looked up in the
W&B directory.  A run a crash left half-written in MLflow (still RUNNING) is written again.

MLflow: the experiment is named after the sweep (its name, else its id) unless ``experiment=``;
tags ``hsm.sweep``, ``hsm.task_id``, ``hsm.attempt``, ``hsm.state``, ``hsm.source`` (and
``hsm.error``); a final metric that is not a number (a name, a path) is a tag of its own name.
W&B: ``group`` = the sweep's id, ``config`` = the parameters, history = the steps, ``summary`` = the
final metrics, tags = state, source and attempt.  Steps are integers in both: a job's steps are
kept when they are whole numbers >= 0, else numbered 0, 1, ... in order.  Names MLflow refuses
(``acc@1``) have their other characters replaced by ``_``.

Network: none by this module; MLflow reaches whatever ``tracking_uri`` names (and sends its usage
telemetry unless ``MLFLOW_DISABLE_TELEMETRY=true`` or ``DO_NOT_TRACK=true``); W&B in ``mode="offline"``
(the default) writes files only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import numbers
import os
import re
import shutil
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from .core.model.errors import ConfigError, HsmError
from .core.model.state import JobState

if TYPE_CHECKING:
    from .core.sweep import Sweep

log = logging.getLogger(__name__)

#: Tasks read and written per round (one ``metrics()`` query each).
CHUNK = 200
_MLFLOW_STATUS = {JobState.COMPLETED: "FINISHED", JobState.FAILED: "FAILED", JobState.LOST: "FAILED",
                  JobState.CANCELLED: "KILLED", JobState.PRUNED: "KILLED"}
_BAD_NAME = re.compile(r"[^/\w.\- ]")  # what MLflow refuses in a param or metric name (colon: not on Windows)


@dataclass
class TaskRun:
    """One ended attempt of a task, as the trackers are told it."""

    task_id: str
    attempt: int
    state: JobState
    source: str | None
    params: dict[str, Any]
    final: dict[str, Any]  # the job's final metrics (flattened: val.loss)
    start: float | None  # epoch seconds
    end: float | None
    error: str | None
    steps: list[tuple[int, float, dict[str, float]]] = field(default_factory=list)  # (step, time, {metric: value})

    @property
    def label(self) -> str:
        """``alpha=1e-05, eta0=0.1``: the run's name, as a researcher reads it."""
        return ", ".join(f"{k}={_short(v)}" for k, v in self.params.items())[:240] or self.task_id


# -- reading the ledger --------------------------------------------------------------------------
def task_runs(sweep: Sweep, skip: Callable[[str, int], bool] = lambda tid, attempt: False) -> Iterator[list[TaskRun]]:
    """The sweep's ended attempts (COMPLETED, FAILED, CANCELLED, LOST, PRUNED) that ``skip(task_id,
    attempt)`` does not leave out, in the ledger's order, a chunk at a time (with their steps)."""
    import pandas as pd

    status = sweep.status()
    todo = [(tid, int(attempt)) for tid, state, attempt in zip(status["task_id"], status["state"], status["attempt"],
                                                                  strict=True)
            if JobState(state).is_terminal and not skip(tid, int(attempt))]
    for i in range(0, len(todo), CHUNK):
        chunk = todo[i:i + CHUNK]
        runs = [_task_run(sweep.task(tid)) for tid, _ in chunk]
        runs = [r for r, (_, attempt) in zip(runs, chunk, strict=True) if r.attempt == attempt and r.state.is_terminal]
        steps = sweep.metrics([r.task_id for r in runs])
        steps["seconds"] = (steps["time"] - pd.Timestamp(0, tz="UTC")).dt.total_seconds()
        by_task = {tid: rows for tid, rows in steps.groupby("task_id", sort=False)} if len(steps) else {}
        for run in runs:
            rows = by_task.get(run.task_id)
            if rows is not None:
                run.steps = _steps(rows[rows["attempt"] == run.attempt])
        yield runs


def _task_run(info: Mapping[str, Any]) -> TaskRun:
    return TaskRun(task_id=info["task_id"], attempt=int(info["attempt"] or 0), state=JobState(info["state"]),
                   source=info["source"], params=dict(info["params"]), final=_flatten(info["metrics"] or {}),
                   start=info["start_time"] or info["submit_time"], end=info["end_time"], error=info["error"])


def _steps(rows: Any) -> list[tuple[int, float, dict[str, float]]]:
    """The long rows of ``metrics()`` as ``(step, time, {metric: value})`` by step; steps kept when
    they are whole numbers >= 0 (trackers take integers), else numbered 0, 1, ... in order."""
    grouped: dict[float, tuple[float, dict[str, float]]] = {}
    for step, metric, value, at in zip(rows["step"].tolist(), rows["metric"].tolist(), rows["value"].tolist(),
                                       rows["seconds"].tolist(), strict=True):
        t, values = grouped.setdefault(float(step), (0.0, {}))
        values[metric] = float(value)
        grouped[float(step)] = (max(t, at), values)
    order = sorted(grouped)
    whole = all(s >= 0 and s.is_integer() for s in order)
    return [(int(s) if whole else i, *grouped[s]) for i, s in enumerate(order)]


def _flatten(value: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, item in value.items():
        if isinstance(item, Mapping):
            out.update(_flatten(item, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = item
    return out


def _short(value: Any) -> str:
    """A parameter's value in a run's name: floats to 4 digits (``1e-05``, ``0.1235``)."""
    return f"{value:.4g}" if isinstance(value, float) else _text(value)


def _text(value: Any) -> str:
    """A parameter's value as MLflow keeps it (text): exact, containers as JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value, default=str) if isinstance(value, (dict, list, tuple)) else str(value)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, numbers.Real) else None


# -- the exports ---------------------------------------------------------------------------------
class Export:
    """What every tracker's export does: find what it already holds, write the rest, remember it."""

    name = "tracker"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._known: dict[str, set[tuple[str, int]]] = {}  # sweep id -> (task id, attempt) written

    def export(self, sweep: Sweep) -> list[str]:
        """Write every ended task of ``sweep`` not written before; return their task ids.  Called
        again, it writes only what ended since (and what a crash left half-written)."""
        with self._lock:
            known = self._known.get(sweep.id)
            if known is None:
                known = self._known[sweep.id] = self.existing(sweep)
            written: list[str] = []
            for runs in task_runs(sweep, lambda tid, attempt: (tid, attempt) in known):
                for run in runs:
                    try:
                        self.write(sweep, run)
                    except Exception as exc:
                        self._known.pop(sweep.id, None)  # read again next time: what the failed write left behind
                        if isinstance(exc, HsmError):
                            raise
                        raise HsmError(f"{self.name}: task {run.task_id} (attempt {run.attempt}) of sweep {sweep.id} "
                                       f"could not be written ({type(exc).__name__}: {exc}); the {len(written)} "
                                       f"before it were; call again to go on") from exc
                    known.add((run.task_id, run.attempt))
                    written.append(run.task_id)
            return written

    def existing(self, sweep: Sweep) -> set[tuple[str, int]]:
        """``(task id, attempt)`` of the runs this tracker already holds for ``sweep``."""
        raise NotImplementedError

    def write(self, sweep: Sweep, run: TaskRun) -> None:
        """One ended attempt as one run of this tracker."""
        raise NotImplementedError


class MLflowExport(Export):
    """A sweep's tasks as MLflow runs, in the experiment ``experiment`` (default: named after the sweep)
    of the tracking store ``tracking_uri`` (default: MLflow's own choice, ``MLFLOW_TRACKING_URI``)."""

    name = "MLflow"

    def __init__(self, tracking_uri: str | None = None, experiment: str | None = None) -> None:
        super().__init__()
        _need("mlflow")
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        try:
            self.client = MlflowClient(tracking_uri)
        except MlflowException as exc:  # a file store refused by MLflow 3, a scheme it does not know
            raise ConfigError(f"MLflow cannot use {tracking_uri!r}: {exc.message}", "tracking_uri") from exc
        self.tracking_uri = self.client.tracking_uri
        self.experiment = experiment
        self._experiment_ids: dict[str, str] = {}

    def experiment_id(self, sweep: Sweep) -> str:
        """The id of the sweep's experiment, made when it does not exist."""
        name = self.experiment or sweep.record.get("name") or sweep.id
        if name not in self._experiment_ids:
            found = self.client.get_experiment_by_name(name)
            if found is not None and found.lifecycle_stage == "deleted":
                raise ConfigError(f"MLflow's experiment {name!r} is deleted: restore it (mlflow experiments restore "
                                  f"--experiment-id {found.experiment_id}) or give another name", "experiment")
            self._experiment_ids[name] = found.experiment_id if found else self.client.create_experiment(name)
        return self._experiment_ids[name]

    def runs(self, sweep: Sweep) -> list[Any]:
        """The MLflow runs of ``sweep`` (every page of ``search_runs``)."""
        found: list[Any] = []
        token = None
        while True:
            page = self.client.search_runs([self.experiment_id(sweep)], f"tags.`hsm.sweep` = '{sweep.id}'",
                                           max_results=1000, page_token=token)
            found.extend(page)
            token = page.token
            if not token:
                return found

    def existing(self, sweep: Sweep) -> set[tuple[str, int]]:
        known = set()
        for run in self.runs(sweep):
            tags = run.data.tags
            if run.info.status == "RUNNING":  # written in part by an export that stopped: written again
                self.client.delete_run(run.info.run_id)
            elif "hsm.task_id" in tags:
                known.add((tags["hsm.task_id"], int(tags.get("hsm.attempt", 0))))
        return known

    def write(self, sweep: Sweep, run: TaskRun) -> None:
        from mlflow.entities import Metric, Param

        tags = {"hsm.sweep": sweep.id, "hsm.task_id": run.task_id, "hsm.attempt": str(run.attempt),
                "hsm.state": run.state.value, "hsm.source": run.source or ""}
        if run.error:
            tags["hsm.error"] = run.error[:8000]
        tags.update({_name(k): str(v)[:8000] for k, v in run.final.items() if _number(v) is None})
        created = self.client.create_run(self.experiment_id(sweep), start_time=_ms(run.start), tags=tags,
                                         run_name=run.label)
        run_id = created.info.run_id
        params = [Param(_name(k), _text(v)[:6000]) for k, v in run.params.items()]
        metrics = [Metric(_name(k), v, _ms(t), step) for step, t, values in run.steps for k, v in values.items()]
        last = {m.key: m for m in metrics}  # each metric's value at its highest step
        for key, value in run.final.items():
            number = _number(value)
            key = _name(key)
            if number is not None and (key not in last or last[key].value != number):  # not already the last point
                step = last[key].step if key in last else 0
                metrics.append(Metric(key, number, max(_ms(run.end), last[key].timestamp if key in last else 0), step))
        for i in range(0, len(params), 100):
            self.client.log_batch(run_id, params=params[i:i + 100])
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(run_id, metrics=metrics[i:i + 1000])
        # last, so a run still RUNNING in the store is one an export did not finish
        self.client.set_terminated(run_id, _MLFLOW_STATUS[run.state], end_time=_ms(run.end))


class WandbExport(Export):
    """A sweep's tasks as W&B runs of ``project`` (default: W&B's own, ``WANDB_PROJECT``), one per task
    in ``group=<sweep id>``, written under ``dir`` (default ``WANDB_DIR``, else the working folder).
    ``mode="offline"`` (the default) writes files only: ``wandb sync <dir>/wandb/offline-run-*``
    uploads them when you want."""

    name = "W&B"

    def __init__(self, project: str | None = None, dir: str | os.PathLike[str] | None = None,
                 mode: str = "offline", entity: str | None = None) -> None:
        super().__init__()
        if mode not in ("offline", "online"):
            raise ConfigError(f"must be 'offline' (files only, uploaded by `wandb sync`) or 'online', not {mode!r}",
                              "mode")
        _need("wandb")
        import wandb

        self.project, self.entity = project, entity
        self.mode: Literal["offline", "online"] = "online" if mode == "online" else "offline"
        self.root = Path(dir or os.environ.get("WANDB_DIR") or ".").expanduser().resolve()
        self.wandb_dir = Path(wandb.Settings(root_dir=str(self.root)).wandb_dir)
        # the run is an import after the fact: no system metrics, code, git state or pip freeze of this process
        wanted: dict[str, Any] = {"silent": True, "console": "off", "save_code": False, "disable_git": True,
                                  "x_disable_stats": True, "x_disable_meta": True, "x_save_requirements": False,
                                  "disable_job_creation": True}
        fields = getattr(wandb.Settings, "model_fields", wanted)
        self._settings: dict[str, Any] = {k: v for k, v in wanted.items() if k in fields}

    @staticmethod
    def run_id(sweep: Sweep, task_id: str, attempt: int) -> str:
        """The W&B run id of a task's attempt: the same in every process (a second upload is the same run)."""
        return f"{_sweep_hash(sweep)}-{task_id}-{attempt}"

    def existing(self, sweep: Sweep) -> set[tuple[str, int]]:
        known = set()
        for folder in self.wandb_dir.glob(f"*run-*-{_sweep_hash(sweep)}-*"):
            *_, task_id, attempt = folder.name.rsplit("-", 2)
            if attempt.isdigit() and any(folder.glob("*.wandb")):
                known.add((task_id, int(attempt)))
        return known

    def write(self, sweep: Sweep, run: TaskRun) -> None:
        import wandb

        self.root.mkdir(parents=True, exist_ok=True)
        tags = [run.state.value, f"source={run.source}", f"attempt={run.attempt}"]
        notes = f"hsm_notebook task {run.task_id} of sweep {sweep.id}" + (f": {run.error}" if run.error else "")
        live = wandb.init(project=self.project, entity=self.entity, group=sweep.id, name=run.label,
                          id=self.run_id(sweep, run.task_id, run.attempt), config=run.params, tags=tags, notes=notes,
                          dir=str(self.root), mode=self.mode, job_type="task", reinit="create_new",
                          settings=wandb.Settings(**self._settings))
        try:
            for step, t, values in run.steps:
                live.log({**values, "_timestamp": t}, step=step, commit=True)
            if run.final:
                live.summary.update(run.final)
        except BaseException:
            live.finish(exit_code=1)
            shutil.rmtree(live.settings.sync_dir, ignore_errors=True)  # a run in part is no run: written again
            raise
        live.finish(exit_code=0 if run.state == JobState.COMPLETED else 1)


def log_to_mlflow(sweep: Sweep, tracking_uri: str | None = None, experiment: str | None = None) -> list[str]:
    """Export every ended task of ``sweep`` not exported before as an MLflow run (see the module's
    doc); returns the task ids written.  ``tracking_uri``: ``sqlite:///mlflow.db``, ``http://host:5000``,
    a ``./mlruns`` folder (MLflow 3 asks for ``MLFLOW_ALLOW_FILE_STORE=true`` then) or None (MLflow's default)."""
    return MLflowExport(tracking_uri, experiment).export(sweep)


def log_to_wandb(sweep: Sweep, project: str | None = None, dir: str | os.PathLike[str] | None = None,
                 mode: str = "offline", entity: str | None = None) -> list[str]:
    """Export every ended task of ``sweep`` not exported before as a W&B run (offline by default: files
    under ``dir``/wandb, uploaded by ``wandb sync``); returns the task ids written."""
    return WandbExport(project, dir, mode, entity).export(sweep)


# -- as tasks end --------------------------------------------------------------------------------
class Follower:
    """Exports a sweep's tasks while it runs, in a thread of its own: woken when a task ends (and
    every ``poll`` seconds, for a sweep another process drives), at most one round each ``every``
    seconds.  A round that fails is logged (a warning, once per new message), kept in ``errors``
    and raised by :meth:`flush` and :meth:`stop`; the next round tries again."""

    def __init__(self, sweep: Sweep, exports: Iterable[Export], every: float = 1.0, poll: float = 10.0) -> None:
        self.sweep = sweep
        self.exports = list(exports)
        if not self.exports:
            raise ConfigError("give at least one export: follow(sweep, MLflowExport(...), WandbExport(...))",
                              "exports")
        self.every, self.poll = every, poll
        #: task ids written so far, by tracker name; the error of each tracker's last round (None: it went well)
        self.exported: dict[str, list[str]] = {e.name: [] for e in self.exports}
        self.errors: dict[str, BaseException | None] = {e.name: None for e in self.exports}
        self._wake, self._hurry = threading.Event(), threading.Event()
        self._cond = threading.Condition()
        self._asked = self._served = 0
        self._stopping = False
        self._seen: dict[str, int] | None = None
        self._unsubscribe = sweep.on_event(self._on_event)
        self._thread = threading.Thread(target=self._loop, name=f"hsm-tracking-{sweep.id}", daemon=True)
        self._wake.set()  # the tasks that ended before
        self._thread.start()

    def _on_event(self, event: Any) -> None:  # on the manager's thread: only a wake-up
        if event is None or event.state.is_terminal:
            self._wake.set()

    def _loop(self) -> None:
        while True:
            if not self._wake.wait(self.poll) and not self._changed():
                continue
            self._wake.clear()
            with self._cond:
                target, stopping = self._asked, self._stopping
            self._round()
            with self._cond:
                self._served = target
                self._cond.notify_all()
            if stopping:
                return
            self._hurry.wait(self.every)
            self._hurry.clear()

    def _changed(self) -> bool:
        """True when the sweep's counts moved since the last round (a sweep another process drives)."""
        try:
            return self.sweep.counts() != self._seen
        except Exception:  # noqa: BLE001 - the round that follows says it
            return True

    def _round(self) -> None:
        try:
            self._seen = self.sweep.counts()
        except Exception as exc:  # noqa: BLE001 - a background thread: kept and raised by flush/stop
            self._seen = None
            log.warning("hsm_notebook tracking: sweep %s cannot be read: %s", self.sweep.id, exc)
        for export in self.exports:
            try:
                self.exported[export.name] += export.export(self.sweep)
            except Exception as exc:  # noqa: BLE001 - a background thread: logged, kept, raised by flush/stop
                before = self.errors[export.name]
                if before is None or str(before) != str(exc):
                    log.warning("hsm_notebook tracking: export to %s failed: %s", export.name, exc)
                self.errors[export.name] = exc
            else:
                self.errors[export.name] = None

    def _ask(self, timeout: float) -> None:
        with self._cond:
            self._asked += 1
            asked = self._asked
            self._wake.set()
            self._hurry.set()
            if not self._cond.wait_for(lambda: self._served >= asked or not self._thread.is_alive(), timeout):
                raise TimeoutError(f"tracking of sweep {self.sweep.id}: no round ended within {timeout} s")
        failed = {name: exc for name, exc in self.errors.items() if exc is not None}
        if failed:
            name, exc = next(iter(failed.items()))
            raise HsmError(f"tracking of sweep {self.sweep.id}: export to {', '.join(failed)} failed: {exc}") from exc

    def flush(self, timeout: float = 300) -> Follower:
        """Export what has ended by now (one round, waited for); raises what that round failed with."""
        self._ask(timeout)
        return self

    def stop(self, timeout: float = 300) -> None:
        """Stop following, after a last round (so a task that just ended is exported); raises what it failed with."""
        self._unsubscribe()
        if not self._thread.is_alive():
            return
        with self._cond:
            self._stopping = True
        self._ask(timeout)
        self._thread.join(timeout)

    def __enter__(self) -> Follower:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def follow(sweep: Sweep, *exports: Export, every: float = 1.0, poll: float = 10.0) -> Follower:
    """Export ``sweep``'s tasks as they end (``follow(sweep, MLflowExport(uri), WandbExport("proj"))``),
    until :meth:`Follower.stop` (or the end of a ``with`` block)."""
    return Follower(sweep, exports, every, poll)


# -- small helpers -------------------------------------------------------------------------------
def _need(module: str) -> None:
    import importlib

    try:
        importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(f"{module} is not installed: pip install 'hsm_notebook[tracking]' (or pip install {module})",
                          module) from exc


def _name(key: str) -> str:
    return _BAD_NAME.sub("_", key)[:250] or "_"


def _ms(seconds: float | None) -> int:
    import time

    return int((seconds if seconds is not None and math.isfinite(seconds) else time.time()) * 1000)


def _sweep_hash(sweep: Sweep) -> str:
    return hashlib.sha256(sweep.id.encode()).hexdigest()[:8]
