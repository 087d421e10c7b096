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

from .space import flatten
from .state import JobState
from .store import SweepStore

_STATES = pd.CategoricalDtype([s.value for s in JobState])


def _times(values: list[Any]) -> pd.Series:
    return pd.to_datetime(pd.Series(values, dtype="float64"), unit="s", utc=True)


def status_frame(store: SweepStore) -> pd.DataFrame:
    """One row per task: ids, source, state, parameters, times, exit code, error."""
    with contextlib.closing(store.reader()) as conn:
        rows = conn.execute(
            "SELECT task_id, job_name, source, state, params, attempt, submit_time, start_time, end_time, "
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
    """Parameters and metrics of every COMPLETED task, with inferred dtypes."""
    with contextlib.closing(store.reader()) as conn:
        rows = conn.execute(
            "SELECT task_id, params, metrics FROM tasks WHERE state=? ORDER BY idx", (JobState.COMPLETED.value,)
        ).fetchall()
        if not rows:
            first = conn.execute("SELECT params FROM tasks ORDER BY idx LIMIT 1").fetchone()
            names = list(json.loads(first["params"])) if first else []
            return pd.DataFrame(columns=["task_id", *names])
    records = []
    for r in rows:
        params = json.loads(r["params"])
        record = {"task_id": r["task_id"], **params}
        metrics = json.loads(r["metrics"]) if r["metrics"] else {}
        for key, value in flatten(metrics, leaf=lambda v: False).items():
            record[f"metrics.{key}" if key in record else key] = value
        records.append(record)
    return pd.DataFrame.from_records(records).infer_objects()
