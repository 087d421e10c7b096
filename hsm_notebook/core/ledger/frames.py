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
from ..spec.space import ParameterSpace, flatten
from . import steps, trials
from .store import SweepStore

_STATES = pd.CategoricalDtype([s.value for s in JobState])


def _times(values: list[Any]) -> pd.Series:
    return pd.to_datetime(pd.Series(values, dtype="float64"), unit="s", utc=True)


_CHUNK = 100_000  # rows read and turned into columns at a time (peak memory follows the chunk)


def status_frame(store: SweepStore, state: str | None = None, columns: list[str] | None = None) -> pd.DataFrame:
    """One row per task (of ``state``, when given): ids, source, state, the source's job id,
    parameters, times, exit code, error; only ``columns`` when given (``task_id`` always).

    Built column by column, never a Python object per task where it can be helped: SQLite joins
    each fixed-width or numeric column into one string (``group_concat``) that numpy splits, the
    task ids become one Arrow string array, state and source are categorical; text columns
    (errors, details, job ids) are read only for the tasks that have them; the parameters of a
    plain product come from each task's index in the space.  So a million tasks take about a
    second and a few hundred MB."""
    import numpy as np

    where, args = ("WHERE state=?", (state,)) if state else ("", ())
    with contextlib.closing(store.reader()) as conn:
        plain = trials.meta(conn, "product") == "1"
        n = conn.execute(f"SELECT COUNT(*) FROM tasks {where}", args).fetchone()[0]

        def joined(expr: str, sep: str = ",") -> str:
            # rows are appended in idx order, so rowid order is idx order (and needs no sort)
            sql = f"SELECT group_concat(v, '{sep}') FROM (SELECT {expr} AS v FROM tasks {where} ORDER BY rowid)"
            return conn.execute(sql, args).fetchone()[0] or ""

        order = np.arange(n, dtype=np.int64) if plain and not state else _numbers(joined("idx"), np.int64)
        task_ids = _task_ids(joined("task_id", ""), n) if n else np.array([], dtype=object)
        if task_ids is None:  # ids of another width (an older ledger): row by row
            task_ids = _objects(tuple(r[0] for r in conn.execute(f"SELECT task_id FROM tasks {where} ORDER BY rowid",
                                                                  args)))
        letters = "".join(chr(97 + i) for i in range(len(_STATES.categories)))
        cases = " ".join(f"WHEN '{s}' THEN '{letters[i]}'" for i, s in enumerate(_STATES.categories))
        codes = (np.frombuffer(joined(f"CASE state {cases} END", "").encode(), dtype=np.uint8) - 97).astype(np.int8)
        data: dict[str, Any] = {}
        want = (lambda c: columns is None or c in columns)  # noqa: E731
        for c in ("submit_time", "start_time", "end_time", "exit_code"):
            if want(c):
                data[c] = _numbers(joined(_exact(c)), np.float64) if n else np.array([], dtype=np.float64)
        if want("attempt") or want("job_name"):
            data["attempt"] = _numbers(joined("attempt"), np.int64) if n else np.array([], dtype=np.int64)
        if want("source"):
            names = [r[0] for r in conn.execute(f"SELECT DISTINCT source FROM tasks {where}", args) if r[0] is not None]
            pick = " ".join(f"WHEN {_quote(v)} THEN {i}" for i, v in enumerate(names))
            source_codes = _numbers(joined(f"CASE source {pick} ELSE -1 END" if names else "-1"), np.int64) \
                if n else np.array([], dtype=np.int64)
            data["source"] = pd.Categorical.from_codes(source_codes, categories=names)
        same_id = None
        if want("job_id"):  # a job id that is its job's name (this machine's jobs) is not read: it is known
            same_id = _numbers(joined("CASE WHEN job_id IS NULL THEN 0 WHEN job_id = task_id || '-' || attempt "
                                      "THEN 1 ELSE 2 END"), np.int8) if n else np.array([], dtype=np.int8)
            data.setdefault("attempt", _numbers(joined("attempt"), np.int64) if n else np.array([], dtype=np.int64))
        texts = [c for c in ("job_id", "error", "detail") if want(c)]
        for c in texts:
            data[c] = np.full(n, None, dtype=object)
        if texts:  # only the tasks that have one
            has = " OR ".join("(job_id IS NOT NULL AND job_id != task_id || '-' || attempt)" if c == "job_id"
                              else f"{c} IS NOT NULL" for c in texts)
            cursor = conn.execute(f"SELECT idx, {', '.join(texts)} FROM tasks {where}{' AND' if where else ' WHERE'} "
                                  f"({has})", args)
            while chunk := cursor.fetchmany(_CHUNK):
                cols = list(zip(*chunk, strict=True))
                at = np.searchsorted(order, np.array(cols[0], dtype=np.int64))
                for c, values in zip(texts, cols[1:], strict=True):
                    data[c][at] = _objects(values)
        stored = None if plain else [r[0] for r in conn.execute(f"SELECT params FROM tasks {where} ORDER BY rowid",
                                                                   args)]
        numbers = trials.frame_columns(conn)  # a search's trials: their numbers (empty otherwise)
    head: dict[str, Any] = {"task_id": task_ids}
    job_names = _job_names(task_ids, data["attempt"]) if want("job_name") or same_id is not None else None
    if want("job_name"):  # every attempt's job is named <task id>-<attempt>
        head["job_name"] = job_names
    if same_id is not None and job_names is not None:
        data["job_id"][same_id == 1] = job_names[same_id == 1]  # the same str objects: no copy per task
    if "source" in data:
        head["source"] = data["source"]
    head["state"] = pd.Categorical.from_codes(codes, dtype=_STATES)
    if "job_id" in data:
        head["job_id"] = data["job_id"]
    frame = pd.DataFrame(head, index=pd.RangeIndex(n))
    if numbers:  # the trial's number in the study (Optuna's), after the task id
        frame.insert(1, "trial", pd.Series([numbers.get(t, {}).get("trial") for t in frame["task_id"]], dtype="Int64"))
    params = _params(store, order if plain else stored, plain)
    data["state"] = codes == _STATE_CODE[JobState.RUNNING.value]
    tail = _tail(data, n, columns)
    if columns is not None:
        params = params[[c for c in params.columns if c in columns]]
    params = params.drop(columns=[c for c in params.columns if c in frame.columns or c in tail.columns])
    return pd.concat([frame, params, tail], axis=1)


def _numbers(text: str, dtype: Any) -> Any:
    """Comma-separated numbers (``nan`` for none) as an array, parsed by numpy in C."""
    import numpy as np

    if not text:
        return np.array([], dtype=dtype)
    values = np.fromstring(text, dtype=dtype, sep=",")  # text mode: not the deprecated binary one
    if values.size != text.count(",") + 1:  # something numpy could not read: the careful way
        return np.array(text.split(","), dtype=dtype)
    return values


def _exact(expr: str) -> str:
    """A REAL as text that reads back as the same double ('%!.20g': SQLite's own rendering keeps
    only 15 digits), NULL as 'nan'."""
    return f"CASE WHEN {expr} IS NULL THEN 'nan' ELSE printf('%!.20g', {expr}) END"  # printf(NULL) is '0'"


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _task_ids(joined: str, n: int) -> Any:
    """Task ids of 12 characters, joined, as an Arrow string array (no str object per task); None
    when they are not all 12 characters."""
    import numpy as np

    raw = joined.encode()
    if len(raw) != 12 * n:
        return None
    try:
        import pyarrow as pa  # type: ignore[import-untyped]
    except ImportError:
        return np.frombuffer(raw, dtype="S12").astype("U12").astype(object)
    offsets = np.arange(0, 12 * n + 1, 12, dtype=np.int32)
    array = pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(raw))
    return pd.arrays.ArrowStringArray(array)


def _job_names(task_ids: Any, attempts: Any) -> Any:
    """``<task id>-<attempt>`` where a task has an attempt, else None (joined by Arrow, in C, when
    the ids are an Arrow array)."""
    import numpy as np

    started = attempts > 0
    if isinstance(task_ids, pd.arrays.ArrowStringArray):
        import pyarrow as pa  # type: ignore[import-untyped]
        import pyarrow.compute as pc  # type: ignore[import-untyped]

        ids = pa.array(task_ids).cast(pa.string())  # (__arrow_array__: no copy to Python objects)
        joined = pc.binary_join_element_wise(ids, pa.array(attempts.astype(str), type=pa.string()), "-")
        joined = pc.if_else(pa.array(started), joined, pa.scalar(None, pa.string()))
        return np.asarray(joined.to_numpy(zero_copy_only=False), dtype=object)  # None where no attempt
    out = np.full(len(attempts), None, dtype=object)
    ids = np.asarray(task_ids, dtype=object)
    for i in np.flatnonzero(started):  # only the tasks that ran
        out[i] = f"{ids[i]}-{attempts[i]}"
    return out


_STATE_CODE = {s: i for i, s in enumerate(_STATES.categories)}


def _objects(values: tuple[Any, ...]) -> Any:
    import numpy as np

    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def _tail(data: dict[str, Any], n: int, columns: list[str] | None) -> pd.DataFrame:
    """attempt, the times, duration, exit code, error, detail (those asked for)."""
    import numpy as np

    def want(c: str) -> bool:
        return columns is None or c in columns

    tail: dict[str, Any] = {}
    if want("attempt"):
        tail["attempt"] = pd.Series(data["attempt"], dtype="int64")
    for c in ("submit_time", "start_time", "end_time"):
        if c in data:
            tail[c] = pd.to_datetime(pd.Series(data[c], dtype="float64"), unit="s", utc=True)
    if want("duration") and "start_time" in data and "end_time" in data:
        start, end = data["start_time"], data["end_time"]
        end_or_now = np.where(data["state"] & np.isnan(end), time.time(), end)  # state: running or not
        tail["duration"] = pd.to_timedelta(end_or_now - start, unit="s")
    if "exit_code" in data:
        tail["exit_code"] = pd.Series(data["exit_code"], dtype="float64").astype("Int64")
    for c in ("error", "detail"):
        if c in data:
            tail[c] = data[c]
    return pd.DataFrame(tail, index=pd.RangeIndex(n))


def _params(store: SweepStore, stored: Any, plain: bool) -> pd.DataFrame:
    """The parameter columns: from each task's index in the space (a plain product), else its JSON."""
    if plain:
        space = ParameterSpace.from_dict(store.record()["space"])
        return pd.DataFrame(space.columns(stored), index=pd.RangeIndex(len(stored)))
    return pd.DataFrame.from_records([json.loads(p) for p in stored], index=range(len(stored)))


def results_frame(store: SweepStore) -> pd.DataFrame:
    """Parameters and metrics of every COMPLETED task, with inferred dtypes.  A metric a task
    logged only as steps (``log_metrics(step=...)``) has its value at the highest step.

    Metrics that are all numbers at the top level (the usual case) are read column by column in
    SQLite (``json_extract``, joined and split by numpy), not one dict per task; anything else
    (nested or text values) is read row by row."""
    import numpy as np

    done = JobState.COMPLETED.value
    with contextlib.closing(store.reader()) as conn:
        n = conn.execute("SELECT COUNT(*) FROM tasks WHERE state=?", (done,)).fetchone()[0]
        if not n:
            first = conn.execute("SELECT params FROM tasks ORDER BY rowid LIMIT 1").fetchone()
            names = list(json.loads(first["params"])) if first else []
            return pd.DataFrame(columns=["task_id", *names])
        plain = trials.meta(conn, "product") == "1"
        kinds = dict(conn.execute("SELECT j.key, group_concat(DISTINCT j.type) FROM tasks t, json_each(t.metrics) j "
                                  "WHERE t.state=? AND json_valid(t.metrics) GROUP BY j.key", (done,)).fetchall())
        numeric = all(set(k.split(",")) <= {"integer", "real"} for k in kinds.values())
        from_steps = steps.last_values(conn)
        if not numeric:
            rows = conn.execute("SELECT task_id, params, metrics FROM tasks WHERE state=? ORDER BY rowid",
                                (done,)).fetchall()
            return _results_by_row(rows, from_steps)

        def joined(expr: str, sep: str = ",") -> str:
            return conn.execute(f"SELECT group_concat(v, '{sep}') FROM (SELECT {expr} AS v FROM tasks WHERE state=? "
                                "ORDER BY rowid)", (done,)).fetchone()[0] or ""

        ids = _task_ids(joined("task_id", ""), n)
        if ids is None:
            ids = [r[0] for r in conn.execute("SELECT task_id FROM tasks WHERE state=? ORDER BY rowid", (done,))]
        if plain:
            params = pd.DataFrame(ParameterSpace.from_dict(store.record()["space"]).columns(
                _numbers(joined("idx"), np.int64)))
        else:
            params = pd.DataFrame.from_records(
                [json.loads(r[0]) for r in conn.execute("SELECT params FROM tasks WHERE state=? ORDER BY rowid",
                                                        (done,))], index=range(n)).infer_objects()
        metrics: dict[str, Any] = {}
        for key, kind in kinds.items():
            extract = f"json_extract(metrics, {_quote('$.' + json.dumps(key))})"
            whole = kind == "integer" and not conn.execute(
                f"SELECT 1 FROM tasks WHERE state=? AND {extract} IS NULL LIMIT 1", (done,)).fetchone()
            metrics[key] = (_numbers(joined(extract), np.int64) if whole
                            else _numbers(joined(_exact(extract)), np.float64))
    frame = pd.concat([pd.DataFrame({"task_id": ids}), params], axis=1)
    for key, values in metrics.items():
        frame[f"metrics.{key}" if key in frame.columns else key] = values
    if from_steps:  # a metric reported only as steps: its value at the highest step (of the run that counts)
        position = {tid: i for i, tid in enumerate(frame["task_id"]) if tid in from_steps}
        for tid, values in from_steps.items():
            for key, value in values.items():
                column = f"metrics.{key}" if key in params.columns else key
                if column not in frame.columns:
                    frame[column] = np.nan
                if tid in position and pd.isna(frame.at[position[tid], column]):
                    frame.at[position[tid], column] = value
    return frame


def _results_by_row(rows: list[Any], from_steps: dict[str, dict[str, float]]) -> pd.DataFrame:
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
    where: list[str] = []
    args: list[Any] = []
    if state:
        where.append("state = ?")
        args.append(state)
    if source:
        where.append("source = ?")
        args.append(source)
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    if sort == "idx":
        order = "rowid"  # rows are appended in idx order: the table's own order, no sort
    elif sort in _SORTABLE:
        order = sort
    else:
        order = "json_extract(params, ?)"
        args_order = [f'$."{sort}"']
    direction = "ASC" if ascending else "DESC"
    columns = "task_id, job_name, source, state, params, attempt, start_time, end_time, exit_code, error, detail"
    with contextlib.closing(store.reader()) as conn:
        if not where:  # no task is ever deleted: the rowids are 1..n, and the last is the count
            total = conn.execute("SELECT COALESCE(MAX(rowid), 0) FROM tasks").fetchone()[0]
        else:
            total = conn.execute(f"SELECT COUNT(*) FROM tasks {clause}", args).fetchone()[0]
        if not where and sort == "idx":  # the page is a range of rowids: a seek, whatever the offset
            first = offset + 1 if ascending else total - offset - limit + 1
            rows = conn.execute(f"SELECT {columns} FROM tasks WHERE rowid BETWEEN ? AND ? ORDER BY rowid {direction}",
                                (max(1, first), first + limit - 1 if ascending else total - offset)).fetchall()
        else:  # the rows of the page found first (an index walk when one fits), then read
            inner = f"SELECT rowid FROM tasks {clause} ORDER BY {order} {direction}, rowid LIMIT ? OFFSET ?"
            params = args + (args_order if sort not in _SORTABLE else []) + [limit, offset]
            rows = conn.execute(f"SELECT {columns} FROM tasks WHERE rowid IN ({inner}) ORDER BY {order} {direction}, "
                                f"rowid", params + (args_order if sort not in _SORTABLE else [])).fetchall()
        numbers = trials.of_tasks(conn, [r["task_id"] for r in rows])  # a search's trial numbers (else empty)
    now = time.time()
    records = []
    for r in rows:
        start, end = r["start_time"], r["end_time"]
        duration = (end or now) - start if start and (end or r["state"] == JobState.RUNNING) else None
        trial = {"trial": numbers.get(r["task_id"])} if numbers else {}
        records.append({"task_id": r["task_id"], **trial, "source": r["source"], "state": r["state"],
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
