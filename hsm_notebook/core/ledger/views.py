"""What a sweep says, read from its ledger and folder: the tables, one task, logs, intermediate
metrics, return values, the objective's best.  A mixin of ``Sweep`` (which adds creating,
running and controlling): everything here works the same on a sweep that another process drives
(``Sweep.attach(dir, resume=False)``) and never changes the ledger.
"""

from __future__ import annotations

import contextlib
import json
import math
import numbers
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ..base import registry
from ..model.errors import ConfigError, HsmWarning
from ..model.state import JobState
from ..spec import functions
from ..spec.job import tail
from ..spec.jobpaths import NAMES, JobPaths
from ..spec.space import ParameterSpace
from . import steps
from .frames import counts_by_source, ledger_version, results_frame, status_frame, status_page, task_history, time_span
from .store import SweepStore


class SweepViews:
    #: Set by ``Sweep``: the ledger, the sweep's id, its record and (read once) its parameters' names.
    store: SweepStore
    id: str
    _record: dict[str, Any]
    _param_names: list[str] | None

    @property
    def directory(self) -> Path:
        """The sweep's folder."""
        return self.store.directory

    # -- reading -----------------------------------------------------------------------------
    def status(self) -> pd.DataFrame:
        """One row per task: state, source, parameters, times, exit code, last error line."""
        return status_frame(self.store)

    def results(self, objects: bool = False) -> pd.DataFrame:
        """Parameters and metrics of the completed tasks; with ``objects`` (a function sweep), also
        each task's return value in a ``result`` column (read from its folder)."""
        frame = results_frame(self.store)
        if objects:
            frame["result"] = [self.result(tid) for tid in frame["task_id"]]
        return frame

    def result(self, task_id: str) -> Any:
        """What the function returned in a completed task of a function sweep (unpickled on demand:
        a large return stays in the task's folder until asked for)."""
        info = self.task(task_id)
        if not self._record.get("function"):
            raise ConfigError("not a function sweep: its tasks ran a command; see results() for their metrics",
                              "task_id")
        if info["state"] != JobState.COMPLETED.value:
            raise ConfigError(f"task {task_id} is {info['state']}, not COMPLETED: it has no return value"
                              + (f" ({info['error']})" if info["error"] else ""), "task_id")
        path = JobPaths.local(self.directory, info["job_name"]).result
        if not path.exists():
            raise ConfigError(f"task {task_id} left no {functions.RESULT_FILE} in {path.parent}", "task_id")
        import cloudpickle

        with open(path, "rb") as f:
            return cloudpickle.load(f)

    @property
    def objective(self) -> tuple[str, bool] | None:
        """``(metric, minimize)`` when the sweep declared one (``objective={"val_loss": "min"}``)."""
        declared = self._record.get("objective")
        if not declared:
            return None
        (metric, direction), = declared.items()
        return metric, direction == "min"

    def best(self, n: int = 5, metric: str | None = None, minimize: bool | None = None) -> pd.DataFrame:
        """The ``n`` best completed tasks by the objective (or ``metric``; lower is better unless
        ``minimize=False`` or the objective says max).  A metric a task reported only as steps
        counts with its value at the highest step (as in ``results()``).  Tasks left out (no value,
        a value that is not a number, NaN) are named in a :class:`~.errors.HsmWarning` and in the
        frame's ``attrs["left_out"]`` (``{task_id: why}``)."""
        declared = self.objective
        metric = metric or (declared[0] if declared else None)
        if metric is None:
            raise ConfigError("no objective: give best(metric='val_loss') or Sweep(..., objective={'val_loss': 'min'})",
                              "metric")
        if minimize is None:
            minimize = declared[1] if declared and declared[0] == metric else True
        results = self.results()
        if metric not in results.columns:
            raise ConfigError(f"no completed task reported {metric!r}; metrics so far: "
                              f"{[c for c in results.columns if c not in self.param_names and c != 'task_id']}",
                              "metric")
        values, left_out = _objective_values(results, metric)
        if left_out:
            shown = "; ".join(f"{tid} ({why})" for tid, why in list(left_out.items())[:5])
            more = f" and {len(left_out) - 5} more" if len(left_out) > 5 else ""
            warnings.warn(f"best(): {len(left_out)} completed task(s) left out, their {metric!r} is not a number "
                          f"that can be ranked: {shown}{more}; see results() for their rows",
                          HsmWarning, stacklevel=2)
        ranked = results.assign(**{metric: values}).dropna(subset=[metric])
        best = ranked.sort_values(metric, ascending=minimize, kind="stable").head(n)
        best.attrs["left_out"] = left_out
        return best

    def counts(self) -> dict[str, int]:
        """Number of tasks in each state."""
        return self.store.counts()

    @property
    def done(self) -> bool:
        """True when no task is waiting or running."""
        return all(JobState(s).is_terminal for s in self.counts())

    def page(self, **query: Any) -> tuple[pd.DataFrame, int]:
        """One page of the status table filtered and sorted in the ledger (see ``frames.status_page``)."""
        return status_page(self.store, **query)

    def store_version(self) -> tuple[int, int, int]:
        """Changes whenever the ledger changes, intermediate metrics included (cheap: for refresh loops)."""
        return ledger_version(self.store)

    def time_span(self) -> tuple[float | None, float | None]:
        """(first submission, last end) over all tasks, epoch seconds."""
        return time_span(self.store)

    @property
    def param_names(self) -> list[str]:
        """The parameter names, in the space's order (every name any combination has)."""
        if self._param_names is None:
            self._param_names = list(ParameterSpace.from_dict(self._record["space"]).names)
        return self._param_names

    def counts_by_source(self) -> dict[str | None, dict[str, int]]:
        """``{source: {state: n}}`` (tasks never submitted under None)."""
        return counts_by_source(self.store)

    def history(self, task_id: str) -> pd.DataFrame:
        """Every state a task went through, with times, attempts and sources."""
        return task_history(self.store, task_id)

    def panel(self) -> Any:
        """The notebook panel of this sweep (an ipywidgets view; displaying it shows it)."""
        return registry.panel(self)

    def metrics(self, task_id: str | Sequence[str] | None = None, metric: str | None = None,
                runs: bool = False) -> pd.DataFrame:
        """Intermediate metrics (``log_metrics(step=...)``) as a long DataFrame: task_id, attempt,
        run, step, metric, value, time; of a task (or a list of them), of one metric.  It grows while
        the sweep runs; final metrics are in ``results()``.  A job that Slurm requeued while it ran
        has several runs in one attempt: the last (the run that counts) is shown, every run with
        ``runs=True``.  NaN and infinities are values; lines that could not be read are counted in
        ``task(id)["metrics_note"]``."""
        with contextlib.closing(self.store.reader()) as conn:
            return steps.frame(conn, task_id, metric, runs)

    def metric_names(self, after: int = 0) -> tuple[set[str], int]:
        """Names of the intermediate metrics logged after row ``after``, and the last row (see
        :func:`~hsm_notebook.core.ledger.steps.metric_names`): cheap to call again with what it returned."""
        with contextlib.closing(self.store.reader()) as conn:
            return steps.metric_names(conn, after)

    def task(self, task_id: str) -> dict[str, Any]:
        """One task's row: params, state, source, attempt, exit code, error, metrics, and
        ``metrics_note``: the lines of its attempt's ``metrics.jsonl`` that could not be read
        ("3 lines of metrics.jsonl unreadable, first: line 17: ..."), or None."""
        with contextlib.closing(self.store.reader()) as conn:
            row = conn.execute("SELECT * FROM tasks WHERE task_id=?", (task_id,)).fetchone()
            note = steps.note(conn, task_id, row["attempt"]) if row is not None else None
        if row is None:
            raise ConfigError(f"no task {task_id!r} in sweep {self.id}; copy an id from status()", "task_id")
        info = dict(row)
        info["params"] = json.loads(info["params"])
        info["metrics_note"] = note  # what of the attempt's metrics.jsonl could not be read, in words
        info["metrics"] = json.loads(info["metrics"]) if info["metrics"] else None
        return info

    def logs(self, task_id: str, stream: str = "stderr", lines: int = 20, attempt: int | None = None) -> str:
        """The last lines of a task's ``stdout``, ``stderr`` or ``slurm`` (the batch system's own
        messages), of its latest attempt or of ``attempt``."""
        path = self.log_path(task_id, stream, attempt)
        return tail(path, lines) if path is not None else ""

    def log_path(self, task_id: str, stream: str = "stderr", attempt: int | None = None) -> Path | None:
        """Where a task's log is (its latest attempt's, or ``attempt``'s); None before it ran."""
        files = {"stdout": NAMES.stdout, "stderr": NAMES.stderr, "slurm": NAMES.scheduler}
        if stream not in files:
            raise ConfigError(f"must be one of {sorted(files)}", "stream")
        info = self.task(task_id)
        if attempt is None:
            job_name = info["job_name"]
        elif isinstance(attempt, int) and 1 <= attempt <= (info["attempt"] or 0):
            job_name = f"{task_id}-{attempt}"
        else:
            raise ConfigError(f"task {task_id} has attempts 1 to {info['attempt'] or 0}, not {attempt!r}", "attempt")
        return JobPaths.local(self.directory, job_name).folder / files[stream] if job_name else None



def _objective_values(results: pd.DataFrame, metric: str) -> tuple[pd.Series, dict[str, str]]:
    """The objective's column as floats (NaN where it cannot be ranked) and ``{task_id: why}`` of
    the tasks left out: no value or NaN, a value that is not a number (text, a list, ...).  A bool
    counts as 1 or 0, as in intermediate metrics."""
    values: list[float] = []
    left_out: dict[str, str] = {}
    for tid, value in zip(results["task_id"], results[metric], strict=False):
        got = float("nan")
        if isinstance(value, numbers.Real):
            got = float(value)
            if math.isnan(got):
                left_out[tid] = "no value, or NaN"
        elif value is None or value is pd.NA:
            left_out[tid] = "no value, or NaN"
        else:
            left_out[tid] = f"{type(value).__name__} {_short(value)}, not a number"
        values.append(got)
    return pd.Series(values, index=results.index, dtype="float64"), left_out


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:40] + "..."
