"""pandas views of the ledger: ``status()`` and ``results()``.

Built from the ``tasks`` table in one query; the ledger stays the truth and a
frame is always a fresh snapshot (never the other way round).
"""

from __future__ import annotations

import contextlib
import json
import time
from typing import Any

import pandas as pd

from ..model.state import JobState
from ..spec.space import flatten
from . import steps
from .store import SweepStore

_STATES = pd.CategoricalDtype([s.value for s in JobState])


def _times(values: list[Any]) -> pd.Series:
    return pd.to_datetime(pd.Series(values, dtype="float64"), unit="s", utc=True)


def status_frame(store: SweepStore) -> pd.DataFrame:
    """One row per task: ids, source, state, the source's job id, parameters, times, exit code, error."""
    with contextlib.closing(store.reader()) as conn:
        rows = conn.execute(
            "SELECT task_id, job_name, source, job_id, state, params, attempt, submit_time, start_time, end_time, "
            "exit_code, error, detail FROM tasks ORDER BY idx"
        ).fetchall()
    params = pd.DataFrame.from_records([json.loads(r["params"]) for r in rows], index=range(len(rows)))
    start = pd.Series([r["start_time"] for r in rows], dtype="float64")
    end = pd.Series([r["end_time"] for r in rows], dtype="float64")
    running = pd.Series([r["state"] == JobState.RUNNING for r in rows], dtype=bool)
    end_or_now = end.where(~running | end.notna(), time.time())
    head = pd.DataFrame({
        "task_id": [r["task_id"] for r in rows],
        "job_name": [r["job_name"] for r in rows],
        "source": [r["source"] for r in rows],
        "state": pd.Series([r["state"] for r in rows], dtype=_STATES),
        # the source's own id: a Slurm "123_17" as squeue shows it, a pid on this machine or a host
        "job_id": [r["job_id"] for r in rows],
    })
    tail = pd.DataFrame({
        "attempt": pd.Series([r["attempt"] for r in rows], dtype="int64"),
        "submit_time": _times([r["submit_time"] for r in rows]),
        "start_time": _times(start.tolist()),
        "end_time": _times(end.tolist()),
        "duration": pd.to_timedelta(end_or_now - start, unit="s"),
        "exit_code": pd.Series([r["exit_code"] for r in rows], dtype="Int64"),
        "error": [r["error"] for r in rows],
        "detail": [r["detail"] for r in rows],
    })
    params = params.drop(columns=[c for c in params.columns if c in head.columns or c in tail.columns])
    return pd.concat([head, params, tail], axis=1)


def results_frame(store: SweepStore) -> pd.DataFrame:
    """Parameters and metrics of every COMPLETED task, with inferred dtypes.  A metric a task
    logged only as steps (``log_metrics(step=...)``) has its value at the highest step."""
    with contextlib.closing(store.reader()) as conn:
        rows = conn.execute(
            "SELECT task_id, params, metrics FROM tasks WHERE state=? ORDER BY idx", (JobState.COMPLETED.value,)
        ).fetchall()
        if not rows:
            first = conn.execute("SELECT params FROM tasks ORDER BY idx LIMIT 1").fetchone()
            names = list(json.loads(first["params"])) if first else []
            return pd.DataFrame(columns=["task_id", *names])
        from_steps = steps.last_values(conn)
    records = []
    for r in rows:
        params = json.loads(r["params"])
        record = {"task_id": r["task_id"], **params}
        metrics = flatten(json.loads(r["metrics"]) if r["metrics"] else {}, leaf=lambda v: False)
        # a metric reported only as steps: its value at the highest step (of the run that counts)
        metrics.update({k: v for k, v in from_steps.get(r["task_id"], {}).items() if k not in metrics})
        for key, value in metrics.items():
            record[f"metrics.{key}" if key in record else key] = value
        records.append(record)
    return pd.DataFrame.from_records(records).infer_objects()


#: Columns the status page can be sorted by, besides any parameter name.
_SORTABLE = {"idx", "task_id", "source", "state", "attempt", "submit_time", "start_time", "end_time", "exit_code"}


def ledger_version(store: SweepStore) -> tuple[int, int, int]:
    """Changes whenever any task changes or steps are added: (last event number, number of
    tasks, last steps row), read on one connection."""
    with contextlib.closing(store.reader()) as conn:
        seq = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0]
        n = conn.execute("SELECT COUNT(*) FROM tasks").fetchone()[0]
        return seq, n, steps.version(conn)


def counts_by_source(store: SweepStore) -> dict[str | None, dict[str, int]]:
    """``{source: {state: n}}``; tasks never submitted count under ``None``."""
    out: dict[str | None, dict[str, int]] = {}
    with contextlib.closing(store.reader()) as conn:
        for source, state, n in conn.execute("SELECT source, state, COUNT(*) FROM tasks GROUP BY source, state"):
            out.setdefault(source, {})[state] = n
    return out


def status_page(
    store: SweepStore,
    *,
    state: str | None = None,
    source: str | None = None,
    sort: str = "idx",
    ascending: bool = True,
    offset: int = 0,
    limit: int = 25,
) -> tuple[pd.DataFrame, int]:
    """One page of the status table, filtered and sorted in SQL: its cost grows with
    ``limit``, not with the number of tasks.  Returns (page, rows matching the filter)."""
    where, args = [], []
    if state:
        where.append("state = ?")
        args.append(state)
    if source:
        where.append("source = ?")
        args.append(source)
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    if sort in _SORTABLE:
        order = sort
    else:
        order = "json_extract(params, ?)"
        args_order = [f'$."{sort}"']
    direction = "ASC" if ascending else "DESC"
    with contextlib.closing(store.reader()) as conn:
        total = conn.execute(f"SELECT COUNT(*) FROM tasks {clause}", args).fetchone()[0]
        query = (f"SELECT task_id, job_name, source, state, params, attempt, start_time, end_time, exit_code, "
                 f"error, detail FROM tasks {clause} ORDER BY {order} {direction}, idx LIMIT ? OFFSET ?")
        params = args + (args_order if sort not in _SORTABLE else []) + [limit, offset]
        rows = conn.execute(query, params).fetchall()
    now = time.time()
    records = []
    for r in rows:
        start, end = r["start_time"], r["end_time"]
        duration = (end or now) - start if start and (end or r["state"] == JobState.RUNNING) else None
        records.append({"task_id": r["task_id"], "source": r["source"], "state": r["state"],
                        **json.loads(r["params"]), "attempt": r["attempt"],
                        "duration_s": round(duration, 1) if duration is not None else None,
                        "exit_code": r["exit_code"], "error": r["error"] or r["detail"]})
    return pd.DataFrame.from_records(records), total


def task_history(store: SweepStore, task_id: str) -> pd.DataFrame:
    """Every recorded transition of one task, oldest first."""
    with contextlib.closing(store.reader()) as conn:
        rows = conn.execute(
            "SELECT time, attempt, state, source, job_id, detail FROM events WHERE task_id=? ORDER BY seq", (task_id,)
        ).fetchall()
    columns = ["time", "attempt", "state", "source", "job_id", "detail"]
    df = pd.DataFrame.from_records([dict(r) for r in rows], columns=columns)
    df["time"] = _times(df["time"].tolist())
    return df


def time_span(store: SweepStore) -> tuple[float | None, float | None]:
    """(first submission, last end) over all tasks, epoch seconds."""
    with contextlib.closing(store.reader()) as conn:
        return tuple(conn.execute("SELECT MIN(submit_time), MAX(end_time) FROM tasks").fetchone())
