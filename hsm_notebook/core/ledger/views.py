"""What a sweep says, read from its ledger and folder: the tables, one task, logs, intermediate
metrics, return values, the objective's best.  A mixin of ``Sweep`` (which adds creating,
running and controlling): everything here works the same on a sweep that another process drives
(``Sweep.attach(dir, resume=False)``) and never changes the ledger.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import numbers
import os
import tempfile
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ..base import registry
from ..model.errors import ConfigError, HsmWarning
from ..model.state import JobState
from ..spec import functions
from ..spec.job import tail
from ..spec.jobpaths import NAMES, JobPaths
from ..spec.space import ParameterSpace, flatten
from . import notes, steps, trials
from .frames import (
    counts_by_source,
    ledger_version,
    results_frame,
    status_frame,
    status_page,
    task_history,
    time_span,
)
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
    def status(self, state: str | None = None, columns: list[str] | None = None) -> pd.DataFrame:
        """One row per task: state, source, parameters, times, exit code, last error line; only the
        tasks in ``state`` and only ``columns`` (with ``task_id`` and ``state``) when given, read so."""
        if state is not None and state not in {s.value for s in JobState}:
            raise ConfigError(f"must be one of {[s.value for s in JobState]}, got {state!r}", "state")
        return status_frame(self.store, state, columns)

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
        metric, direction = next(iter(declared.items()))  # a multi-objective search: its first metric
        return metric, direction == "min"

    @property
    def objectives(self) -> dict[str, str]:
        """Every objective metric and its direction (``{"val_loss": "min", "latency": "min"}``)."""
        return dict(self._record.get("objective") or {})

    def best(self, n: int = 5, metric: str | None = None, minimize: bool | None = None) -> pd.DataFrame:
        """The ``n`` best completed tasks by the objective (or ``metric``; lower is better unless
        ``minimize=False`` or the objective says max); with several objective metrics (and no
        ``metric``), the Pareto front (:meth:`pareto_front`).
        A metric a task reported only as steps
        counts with its value at the highest step (as in ``results()``).  Tasks left out (no value,
        a value that is not a number, NaN) are named in a :class:`~.errors.HsmWarning` and in the
        frame's ``attrs["left_out"]`` (``{task_id: why}``)."""
        if metric is None and len(self.objectives) > 1:
            return self.pareto_front()
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

    def pareto_front(self) -> pd.DataFrame:
        """The completed tasks no other completed task beats on every objective metric (ties kept),
        sorted by the first metric."""
        objectives = self.objectives
        if len(objectives) < 2:
            raise ConfigError("the Pareto front needs several objective metrics; best() ranks by one", "objective")
        results = self.results()
        missing = [m for m in objectives if m not in results.columns]
        if missing:
            raise ConfigError(f"no completed task reported {missing}", "objective")
        columns = {m: _objective_values(results, m)[0] for m in objectives}
        ranked = results.assign(**columns).dropna(subset=list(objectives))
        signs = [1.0 if d == "min" else -1.0 for d in objectives.values()]
        points = ranked[list(objectives)].to_numpy(dtype=float) * signs
        keep = [not ((points <= p).all(axis=1) & (points < p).any(axis=1)).any() for p in points]
        front = ranked[keep]
        first, direction = next(iter(objectives.items()))
        return front.sort_values(first, ascending=direction == "min", kind="stable")

    def counts(self) -> dict[str, int]:
        """Number of tasks in each state."""
        return self.store.counts()

    @property
    def done(self) -> bool:
        """True when no task is waiting or running (and a search asks for no more trials)."""
        if not all(JobState(s).is_terminal for s in self.counts()):
            return False
        if self._record.get("search"):
            with contextlib.closing(self.store.reader()) as conn:
                return trials.meta(conn, trials.ENDED) is not None
        return True

    def page(self, *, state: str | None = None, source: str | None = None,
             where: Iterable[tuple[str, str, Any]] | Mapping[str, Any] = (), sort: str = "idx",
             ascending: bool = True, offset: int = 0, limit: int = 25,
             metric: str | None = None) -> tuple[pd.DataFrame, int]:
        """One page of the status table, filtered and sorted in the ledger (its cost follows
        ``limit``, not the number of tasks), and how many tasks match.

        ``where``: ``{"lr": 0.01}`` or conditions ``[("lr", "<", 0.01), ("opt", "!=", "sgd")]`` on
        parameters, ``task_id``, ``state``, ``source``, ``attempt``, ``exit_code`` or ``metric``
        (operators ``= != < <= > >=``).  ``sort``: any column of the page (a parameter, ``step``,
        ``metric``, ``duration_s``, ...); empty cells last either way.  With ``metric`` (the objective's
        by default) the page has ``step`` (the highest step each task logged) and the metric's value:
        its final value, or while it runs its latest.  A ``note`` column comes once a task has one."""
        if metric is None and self.objective:
            metric = self.objective[0]
        return grid_page(self.store, state=state, source=source, where=where, sort=sort, ascending=ascending,
                         offset=offset, limit=limit, metric=metric, params=self.param_names)

    def store_version(self) -> tuple[int, int, int]:
        """Changes whenever the ledger changes, intermediate metrics included (cheap: for refresh loops)."""
        return ledger_version(self.store)

    def time_span(self) -> tuple[float | None, float | None]:
        """(first submission, last end) over all tasks, epoch seconds."""
        return time_span(self.store)

    @property
    def param_names(self) -> list[str]:
        """The parameter names, in the space's order (every name any combination has)."""
        if self._param_names is not None:
            return self._param_names
        search = self._record.get("search")
        if not search:
            self._param_names = list(ParameterSpace.from_dict(self._record["space"]).names)
            return self._param_names
        names = [n for n in search["space"] if n != "function"] if "function" not in search["space"] else []
        with contextlib.closing(self.store.reader()) as conn:  # a define-by-run space: the names its trials had
            for (params,) in conn.execute("SELECT params FROM tasks ORDER BY idx LIMIT 1000"):
                names.extend(n for n in json.loads(params) if n not in names)
        names.extend(n for n in search.get("fixed") or {} if n not in names)
        return names  # not kept: a search's trials may bring new names

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
                runs: bool = False, params: bool = True) -> pd.DataFrame:
        """Intermediate metrics (``log_metrics(step=...)``) as a long DataFrame: task_id, attempt,
        run, step, metric, value, time, then each task's parameters (``params=False`` leaves them
        out; a parameter named like one of those columns is ``params.<name>``); of a task (or a list
        of them), of one metric.  ``step`` is an integer column when every step is a whole number.
        It grows while the sweep runs; final metrics are in ``results()``.  A job that Slurm requeued
        while it ran has several runs in one attempt: the last (the run that counts) is shown, every
        run with ``runs=True``.  NaN and infinities are values; lines that could not be read are
        counted in ``task(id)["metrics_note"]``."""
        with contextlib.closing(self.store.reader()) as conn:
            frame = steps.frame(conn, task_id, metric, runs)
            if not params:
                return frame
            ids = list(dict.fromkeys(frame["task_id"]))
            by_task = {tid: json.loads(text) for tid, text in _in(conn, "SELECT task_id, params FROM tasks", ids)}
        names = list(dict.fromkeys([*self.param_names, *(n for p in by_task.values() for n in p)]))
        columns = {(f"params.{n}" if n in frame.columns else n): [by_task.get(t, {}).get(n) for t in frame["task_id"]]
                   for n in names}
        return pd.concat([frame, pd.DataFrame(columns, index=frame.index)], axis=1).infer_objects()

    def metric_names(self, after: int = 0) -> tuple[set[str], int]:
        """Names of the intermediate metrics logged after row ``after``, and the last row (see
        :func:`~hsm_notebook.core.ledger.steps.metric_names`): cheap to call again with what it returned."""
        with contextlib.closing(self.store.reader()) as conn:
            return steps.metric_names(conn, after)

    def task(self, task_id: str) -> dict[str, Any]:
        """One task's row: params, state, source, attempt, exit code, error, metrics,
        ``metrics_note``: the lines of its attempt's ``metrics.jsonl`` that could not be read
        ("3 lines of metrics.jsonl unreadable, first: line 17: ..."), or None, and ``note``: what
        was written about it (:meth:`~hsm_notebook.Sweep.note`), or None."""
        with contextlib.closing(self.store.reader()) as conn:
            row = conn.execute("SELECT * FROM tasks WHERE task_id=?", (task_id,)).fetchone()
            note = steps.note(conn, task_id, row["attempt"]) if row is not None else None
            note_text = notes.read_notes(conn, [task_id]).get(task_id)
        if row is None:
            raise ConfigError(f"no task {task_id!r} in sweep {self.id}; copy an id from status()", "task_id")
        info = dict(row)
        info["params"] = json.loads(info["params"])
        info["metrics_note"] = note  # what of the attempt's metrics.jsonl could not be read, in words
        info["metrics"] = json.loads(info["metrics"]) if info["metrics"] else None
        info["note"] = note_text
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

    # -- notes, tags, the whole table -------------------------------------------------------------
    def notes(self) -> dict[str, str]:
        """``{task_id: note}`` of the tasks that have one (written with :meth:`~hsm_notebook.Sweep.note`)."""
        with contextlib.closing(self.store.reader()) as conn:
            return notes.read_notes(conn)

    @property
    def tags(self) -> list[str]:
        """The sweep's tags (:meth:`~hsm_notebook.Sweep.tag`), shown in ``%hsm``'s list of sweeps."""
        with contextlib.closing(self.store.reader()) as conn:
            return notes.read_tags(conn)

    def table(self) -> pd.DataFrame:
        """Every task in one row, whatever its state: task_id (and trial), state, source, parameters,
        final metrics (as in ``results()``), attempt, submit/start/end times (UTC), ``duration_s``,
        exit code, error, the source's job id and the task's note: what :meth:`export` writes.  A
        metric named like another column is ``metrics.<name>``."""
        status = status_frame(self.store)
        results = results_frame(self.store)
        extra = {c: (f"metrics.{c}" if c in status.columns or c in _TABLE_COLUMNS else c)
                 for c in results.columns if c != "task_id" and c not in self.param_names}
        frame = status.merge(results[["task_id", *extra]].rename(columns=extra), on="task_id", how="left") \
            if extra else status
        frame = frame.assign(duration_s=frame["duration"].dt.total_seconds().round(3))
        with contextlib.closing(self.store.reader()) as conn:
            written = notes.read_notes(conn)
        frame["note"] = [written.get(t) for t in frame["task_id"]]
        head = [c for c in ("task_id", "trial", "state", "source") if c in frame.columns]
        tail = ["attempt", "submit_time", "start_time", "end_time", "duration_s", "exit_code", "error", "job_id",
                "note"]
        middle = [c for c in frame.columns if c not in head and c not in tail and c not in _TABLE_DROPPED]
        return frame[head + middle + tail]

    def export(self, path: str | Path) -> Path:
        """Write :meth:`table` (every task: parameters, final metrics, state, source, times) to
        ``path``, as CSV (``.csv``, or compressed: ``.csv.gz``, ``.csv.bz2``, ``.csv.xz``, ``.csv.zst``)
        or Parquet (``.parquet``, ``.pq``; needs pyarrow), chosen by its suffix.  The file appears
        whole or not at all.  Lists and dicts (a parameter's value) are written as JSON text.  Returns
        the path written."""
        target = Path(path).expanduser().absolute()
        kind = export_format(target)
        if not target.parent.is_dir():
            raise ConfigError(f"the folder {target.parent} does not exist; create it or give another path", "path")
        frame = _plain_columns(self.table())
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix="".join(target.suffixes))
        os.close(fd)
        try:
            if kind == "parquet":
                if importlib.util.find_spec("pyarrow") is None:
                    raise ConfigError("writing Parquet needs pyarrow (pip install pyarrow); or give a .csv path",
                                      "path")
                frame.to_parquet(tmp, index=False)
            else:
                frame.to_csv(tmp, index=False)
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return target


#: status() columns :meth:`SweepViews.table` leaves out (the job's folder name, a timedelta, the
#: detail already summed up in state and error); and the names it adds.
_TABLE_DROPPED = ("job_name", "duration", "detail")
_TABLE_COLUMNS = ("duration_s", "note")
#: ``export()`` formats by suffix (the last one, or the one before a compression suffix).
_CSV_COMPRESSION = (".gz", ".bz2", ".xz", ".zst", ".zip")
_FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


def export_format(path: Path) -> str:
    """``"csv"`` or ``"parquet"`` for ``path``'s suffix, or a ConfigError naming the suffixes known."""
    suffixes = [s.lower() for s in path.suffixes]
    if len(suffixes) >= 2 and suffixes[-1] in _CSV_COMPRESSION and suffixes[-2] == ".csv":
        return "csv"
    if suffixes and suffixes[-1] in _FORMATS:
        return _FORMATS[suffixes[-1]]
    raise ConfigError(f"cannot tell the format of {path.name!r} from its suffix; end it with .csv (or .csv.gz) "
                      "for CSV, or .parquet for Parquet", "path")


def _plain_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """Object columns that hold more than text (lists, dicts, mixed types) as JSON text, so CSV and
    Parquet both take them; columns of one type stay as they are."""
    out = frame.copy()
    for column in out.columns:
        if out[column].dtype != object:
            continue
        kinds = {type(v) for v in out[column] if v is not None and not (isinstance(v, float) and math.isnan(v))}
        if len(kinds) > 1 or kinds - {str, bool, int, float}:
            out[column] = [None if v is None or (isinstance(v, float) and math.isnan(v)) else
                           v if isinstance(v, str) else json.dumps(v, default=str) for v in out[column]]
    return out


def _in(conn: Any, sql: str, ids: Sequence[str]) -> list:
    """``sql`` (a SELECT from tasks) for the rows of ``ids`` only."""
    if not ids:
        return []
    return conn.execute(f"{sql} WHERE task_id IN ({','.join('?' * len(ids))})", list(ids)).fetchall()


# -- the status page --------------------------------------------------------------------------------
#: ``page()``'s columns that are columns of the tasks table (or made of them), for sorting and filtering.
_COLUMNS = {"idx": "idx", "task_id": "task_id", "source": "source", "state": "state",
            "attempt": "attempt", "submit_time": "submit_time", "start_time": "start_time", "end_time": "end_time",
            "exit_code": "exit_code", "error": "COALESCE(error, detail)"}
_OPERATORS = ("=", "!=", "<", "<=", ">", ">=")
#: The highest step of a task's current attempt (of any metric), and a metric's value: its final
#: one (when the metrics are valid JSON; NaN is not), else its latest step's.
_STEP_SQL = "(SELECT MAX(s.step) FROM steps s WHERE s.task_id = tasks.task_id AND s.attempt = tasks.attempt)"
_METRIC_STEP_SQL = ("(SELECT s.step FROM steps s WHERE s.task_id = tasks.task_id AND s.metric = ? "
                    "AND s.attempt = tasks.attempt ORDER BY s.step DESC LIMIT 1)")
_FINAL_SQL = "CASE WHEN json_valid(metrics) THEN COALESCE(json_extract(metrics, ?), json_extract(metrics, ?)) END"
_VALUE_SQL = (f"COALESCE({_FINAL_SQL}, (SELECT s.value FROM steps s WHERE s.task_id = tasks.task_id "
              "AND s.attempt = tasks.attempt AND s.metric = ? ORDER BY s.step DESC LIMIT 1))")


def _json_path(name: str, nested: bool) -> str:
    parts = name.split(".") if nested else [name]
    return "$." + ".".join('"' + p.replace('"', '\\"') + '"' for p in parts)


def _expression(name: str, params: Sequence[str], metric: str | None, tables: set[str], has_notes: bool,
                field: str) -> tuple[str, list[Any]]:
    """The SQL of a page column (for ORDER BY or WHERE) and its arguments (``tables``: those of the
    optional tables the ledger has)."""
    has_steps = "steps" in tables
    if name in _COLUMNS:
        return _COLUMNS[name], []
    if name == "trial":  # a search's trial number (a ledger from before searches has none: its order)
        return ("(SELECT tr.number FROM trials tr WHERE tr.task_id = tasks.task_id)" if "trials" in tables
                else "idx"), []
    if name == "note" and has_notes:
        return "(SELECT n.text FROM notes n WHERE n.task_id = tasks.task_id)", []
    if name == "duration_s":
        return "(COALESCE(end_time, CAST(strftime('%s', 'now') AS REAL)) - start_time)", []
    if name == "step" and has_steps:  # the shown metric's highest step first: one index seek per task
        return (f"COALESCE({_METRIC_STEP_SQL}, {_STEP_SQL})", [metric]) if metric is not None else (_STEP_SQL, [])
    if metric is not None and name == metric:
        paths = [_json_path(metric, True), _json_path(metric, False)]
        return (_VALUE_SQL, [*paths, metric]) if has_steps else (_FINAL_SQL, paths)
    if name in params:
        return "json_extract(params, ?)", [_json_path(name, False)]
    choices = [*_COLUMNS, "trial", "duration_s", *(["step"] if has_steps else []), *([metric] if metric else []),
               *(["note"] if has_notes else []), *params]
    raise ConfigError(f"no column {name!r} to {'sort by' if field == 'sort' else 'filter on'}; "
                      f"one of {', '.join(dict.fromkeys(c for c in choices if c != 'idx'))}", field)


def _conditions(where: Iterable[tuple[str, str, Any]] | Mapping[str, Any]) -> list[tuple[str, str, Any]]:
    if isinstance(where, Mapping):
        return [(name, "=", value) for name, value in where.items()]
    out = []
    for condition in where:
        if not (isinstance(condition, (tuple, list)) and len(condition) == 3 and condition[1] in _OPERATORS):
            raise ConfigError(f"{condition!r} is not a condition; give (name, operator, value) with one of "
                              f"{' '.join(_OPERATORS)}, e.g. ('lr', '<', 0.01)", "where")
        out.append((str(condition[0]), condition[1], condition[2]))
    return out


#: Sorts ``frames.status_page`` does itself (with its fast paths); any other goes through ``_filtered``.
_PLAIN_SORTS = ("idx", "task_id", "source", "state", "attempt", "start_time", "end_time", "exit_code")


def grid_page(store: SweepStore, *, state: str | None = None, source: str | None = None,
              where: Iterable[tuple[str, str, Any]] | Mapping[str, Any] = (), sort: str = "idx",
              ascending: bool = True, offset: int = 0, limit: int = 25, metric: str | None = None,
              params: Sequence[str] = ()) -> tuple[pd.DataFrame, int]:
    """``SweepViews.page`` on a ledger (see there); ``params``: the parameter names.  The page's rows
    come from ``frames.status_page`` when it can sort and filter them (no conditions, a column of
    the tasks table or a parameter), else from one query here; either way the page's own tasks
    then get their step, metric and note (queries on the page's ids only)."""
    conditions = _conditions(where)
    with contextlib.closing(store.reader()) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE name IN ('steps', 'notes', "
                                             "'trials')")}
        has_steps = "steps" in tables
        has_notes = "notes" in tables and bool(conn.execute("SELECT 1 FROM notes LIMIT 1").fetchone())
        order, order_args = _expression(sort, params, metric, tables, has_notes, "sort")  # checks the name
        if not conditions and (sort in _PLAIN_SORTS or (sort in params and sort != metric)):
            page, total = status_page(store, state=state, source=source, sort=sort, ascending=ascending,
                                      offset=offset, limit=limit)
        else:
            page, total = _filtered(conn, state, source, conditions, (order, order_args), ascending, offset, limit,
                                    (params, metric, tables, has_notes))
        if page.empty:
            return page, total
        ids = list(page["task_id"])
        if metric is not None:
            latest = steps.latest(conn, ids, metric) if has_steps else {}
            finals = {tid: _final(text, metric) for tid, text in _in(conn, "SELECT task_id, metrics FROM tasks", ids)}
            at = list(page.columns).index("attempt") if "attempt" in page.columns else len(page.columns)
            name = metric if metric not in page.columns else f"metrics.{metric}"
            values = [finals.get(t) if finals.get(t) is not None else latest.get(t, (None, None))[1] for t in ids]
            page.insert(at, name, pd.array(values, dtype="Float64"))
            step = [latest.get(t, (None, None))[0] for t in ids]
            page.insert(at, "step", pd.array(step, dtype="Int64" if steps.step_dtype(
                [v for v in step if v is not None]) == "int64" else "Float64"))
        if has_notes:
            written = notes.read_notes(conn, ids)
            page["note"] = [written.get(t) for t in ids]
    return page, total


def _filtered(conn: Any, state: str | None, source: str | None, conditions: list[tuple[str, str, Any]],
              order: tuple[str, list[Any]], ascending: bool, offset: int, limit: int,
              columns: tuple[Sequence[str], str | None, set[str], bool]) -> tuple[pd.DataFrame, int]:
    """A page filtered on any column and sorted by any (empty cells last either way), with the
    columns ``frames.status_page`` gives: one COUNT and one page query."""
    params, metric, tables, has_notes = columns
    clauses, args = [], []
    if state:
        clauses.append("state = ?")
        args.append(state)
    if source:
        clauses.append("source = ?")
        args.append(source)
    for name, op, value in conditions:
        sql, sql_args = _expression(name, params, metric, tables, has_notes, "where")
        if value is None and op in ("=", "!="):
            clauses.append(f"{sql} IS {'NOT ' if op == '!=' else ''}NULL")
            args += sql_args
        else:
            clauses.append(f"{sql} {op} ?")
            args += [*sql_args, json.dumps(value, separators=(",", ":")) if isinstance(value, (list, dict)) else value]
    clause = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    by, by_args = order
    total = conn.execute(f"SELECT COUNT(*) FROM tasks {clause}", args).fetchone()[0]
    rows = conn.execute(
        f"SELECT task_id, source, state, params, attempt, start_time, end_time, exit_code, error, detail "
        f"FROM tasks {clause} ORDER BY {by} {'ASC' if ascending else 'DESC'} NULLS LAST, idx LIMIT ? OFFSET ?",
        [*args, *by_args, limit, offset]).fetchall()
    numbers_ = trials.of_tasks(conn, [r["task_id"] for r in rows])  # a search's trial numbers (else empty)
    now = time.time()
    records = []
    for r in rows:
        start, end = r["start_time"], r["end_time"]
        duration = (end or now) - start if start and (end or r["state"] == JobState.RUNNING) else None
        trial = {"trial": numbers_.get(r["task_id"])} if numbers_ else {}
        records.append({"task_id": r["task_id"], **trial, "source": r["source"], "state": r["state"],
                        **json.loads(r["params"]), "attempt": r["attempt"],
                        "duration_s": round(duration, 1) if duration is not None else None,
                        "exit_code": r["exit_code"], "error": r["error"] or r["detail"]})
    return pd.DataFrame.from_records(records), total


def _final(text: str | None, metric: str) -> float | None:
    """``metric``'s final value in a task's metrics JSON (nested names flattened), if a number."""
    if not text:
        return None
    value = flatten(json.loads(text), leaf=lambda v: False).get(metric)
    return float(value) if isinstance(value, numbers.Real) and not isinstance(value, bool) else None


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
