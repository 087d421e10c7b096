"""Intermediate metrics: what a running job appends to ``metrics.jsonl`` in its folder.

One JSON object per line, from any language::

    {"step": 10, "loss": 0.31, "accuracy": 0.88}
    {"step": 20, "loss": NaN, "val": {"loss": 0.4}, "time": 1764400000.5}

``log_metrics(step=..., **values)`` writes these lines for Python jobs.  The manager reads each
running job's new bytes at every poll (one call per source, see
``ComputeSource.read_steps``) and keeps them in the ledger's ``steps`` table.  How a line is read:

- only complete lines are taken while the job runs (a line being written is read at the next
  poll); once the job has ended, a last line without its newline is read too;
- values are numbers: ``NaN`` and ``Infinity`` are kept as such (a diverging run shows), a bool
  is 1 or 0, a string that reads as a number (``"0.5"``, ``"nan"``) is that number, a nested
  dict is flattened as in ``results()`` (``{"val": {"loss": 1}}`` -> ``val.loss``);
- a line without ``step`` takes its line number in the file (1, 2, ...) as its step;
- a line longer than 1 MiB is skipped (the curve goes on after it);
- what cannot be read (not JSON, not an object, a value that is text or a list, a step that is
  not a number, an over-long line) is counted per attempt and named:
  ``"3 lines of metrics.jsonl unreadable, first: line 17: ..."`` (``sweep.task(id)["metrics_note"]``);
  blank lines are ignored;
- a job that a scheduler started again (Slurm's requeue) gets a marker line ``{"hsm_run": 2}``
  from the wrapper: the steps after it are run 2's, kept apart from run 1's, and ``metrics()``
  shows the run that counts (the last) unless asked for all.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ...metrics import STEPS_FILE  # the one name of the file, with log_metrics
from ..model.errors import ConfigError
from ..spec.jobpaths import MAX_READ
from ..spec.space import flatten

#: A line longer than this is skipped and counted (so one huge line never stalls the curve).
MAX_LINE = MAX_READ
#: The key of the marker line the wrapper writes when a scheduler starts a job's run again.
RUN_KEY = "hsm_run"

Row = tuple[int, float, str, float, float]  # (run, step, metric, value, time)
Latest = tuple[int | float | None, float | None]  # (highest step, a metric's value there): see latest()


@dataclass
class Progress:
    """How far one attempt's ``metrics.jsonl`` has been read (kept in the ledger with its rows)."""

    lines: int = 0  # lines read so far (the next one is line ``lines + 1``)
    run: int = 1  # the run the next lines belong to
    unreadable: int = 0  # lines that could not be read in whole or in part
    first: str | None = None  # the first of them: "line 17: not JSON (...)"
    skipping: bool = False  # inside a line over MAX_LINE: its bytes up to the newline are dropped

    def bad(self, line: int, why: str) -> None:
        self.unreadable += 1
        if self.first is None:
            self.first = f"line {line}: {why}"

    @property
    def note(self) -> str | None:
        """The word for the user, or None when every line was read."""
        if not self.unreadable:
            return None
        n = self.unreadable
        return f"{n} line{'s' if n > 1 else ''} of {STEPS_FILE} unreadable, first: {self.first}"


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def number(value: Any) -> tuple[float | None, str | None]:
    """A metric value as a float (NaN and infinities included; a bool is 1 or 0; a string that
    reads as a number is that number), or None and why not."""
    if isinstance(value, bool):
        return float(value), None
    if isinstance(value, (int, float)):
        try:
            return float(value), None
        except OverflowError:
            return None, f"{_short(value)} is too large for a float"
    if isinstance(value, str):
        try:
            return float(value.strip()), None
        except ValueError:
            return None, f"text {_short(value)}, not a number"
    if value is None:
        return None, "null, not a number"
    return None, f"a {type(value).__name__} ({_short(value)}), not a number"


def _line(raw: bytes, line: int, run: int, stamp: float, progress: Progress, rows: list[Row]) -> None:
    """One line of the file into ``rows`` (or the progress' count of unreadable lines)."""
    if len(raw) > MAX_LINE:
        progress.bad(line, f"longer than {MAX_LINE >> 20} MiB ({len(raw)} bytes), skipped")
        return
    if not raw.strip():
        return
    try:
        record = json.loads(raw)
    except ValueError as exc:
        progress.bad(line, f"not JSON ({exc}): {_short(raw.decode(errors='replace'))}")
        return
    if not isinstance(record, dict):
        progress.bad(line, f"not a JSON object: {_short(record)}")
        return
    if set(record) == {RUN_KEY} and isinstance(record[RUN_KEY], int):
        progress.run = record[RUN_KEY]
        return
    when, _ = number(record.pop("time", None))
    when = when if when is not None and math.isfinite(when) else stamp
    if "step" in record:
        step, why = number(record.pop("step"))
        if step is None or not math.isfinite(step):
            progress.bad(line, f"its step is {why or _short(step)}; a step is a finite number")
            return
    else:
        step = float(line)
    try:
        values = flatten(record)
    except ConfigError as exc:  # an empty name
        progress.bad(line, f"a metric without a name ({exc})")
        return
    problems = []
    for name, value in values.items():
        got, why = number(value)
        if got is None:
            problems.append(f"{name!r} is {why}")
        else:
            rows.append((run, step, name, got, when))
    if problems:
        kept = " (its other values were kept)" if len(problems) < len(values) else ""
        progress.bad(line, "; ".join(problems) + kept)


def parse_steps(data: bytes, now: float | None = None, progress: Progress | None = None,
                final: bool = False) -> tuple[list[Row], int]:
    """New bytes of a ``metrics.jsonl`` -> rows, and the number of bytes taken.  While the job
    runs (``final`` False) only complete lines are taken; a line longer than :data:`MAX_LINE` is
    skipped up to its newline.  ``progress`` (updated) carries line numbers, the run and the
    unreadable lines from one call to the next."""
    p = progress if progress is not None else Progress()
    rows: list[Row] = []
    stamp = time.time() if now is None else now
    pos = 0
    if p.skipping:
        nl = data.find(b"\n")
        if nl < 0 and not final:
            return rows, len(data)
        pos = len(data) if nl < 0 else nl + 1
        p.lines += 1
        p.skipping = False
        p.bad(p.lines, f"longer than {MAX_LINE >> 20} MiB, skipped")
    while (nl := data.find(b"\n", pos)) >= 0:
        p.lines += 1
        _line(data[pos:nl], p.lines, p.run, stamp, p, rows)
        pos = nl + 1
    rest = len(data) - pos
    if rest and final:
        p.lines += 1
        _line(data[pos:], p.lines, p.run, stamp, p, rows)
        pos = len(data)
    elif rest >= MAX_LINE:
        p.skipping = True
        pos = len(data)
    return rows, pos


def best_so_far(values: Iterable[tuple[float, float]], minimize: bool) -> list[tuple[float, float]]:
    """``(time, value)`` pairs in time order -> the running best (a step line for a plot)."""
    out: list[tuple[float, float]] = []
    best: float | None = None
    for t, v in sorted(values):
        if best is None or (v < best if minimize else v > best):
            best = v
            out.append((t, v))
    return out


# -- in the ledger ------------------------------------------------------------------------------
SCHEMA = """
CREATE TABLE IF NOT EXISTS steps (
    task_id TEXT NOT NULL, attempt INTEGER NOT NULL, step REAL NOT NULL, metric TEXT NOT NULL,
    value REAL NOT NULL, time REAL NOT NULL, run INTEGER NOT NULL DEFAULT 1);
CREATE INDEX IF NOT EXISTS steps_task ON steps (task_id, metric, step);
CREATE TABLE IF NOT EXISTS step_files (
    task_id TEXT NOT NULL, attempt INTEGER NOT NULL, lines INTEGER NOT NULL, run INTEGER NOT NULL,
    unreadable INTEGER NOT NULL, first TEXT, skipping INTEGER NOT NULL, PRIMARY KEY (task_id, attempt));
"""
#: SQLite keeps a NaN as NULL: it is stored as this text (REAL affinity leaves it text) and read back.
_NAN = "NaN"


def migrate(conn) -> None:
    """The tables on the writer's connection; a ledger from before runs gains the ``run`` column."""
    conn.executescript(SCHEMA)
    if "run" not in _columns(conn):
        conn.execute("ALTER TABLE steps ADD COLUMN run INTEGER NOT NULL DEFAULT 1")


def _columns(conn) -> set[str]:
    return {r[1] for r in conn.execute("PRAGMA table_info(steps)").fetchall()}


def _select(conn, sql: str, args: Sequence = ()) -> list:
    """The rows of a query on the steps tables; none from a ledger written before they existed.
    A ledger from before runs (no ``run`` column, ``step_files``) reads as one run per attempt."""
    try:
        return conn.execute(sql, args).fetchall()
    except Exception as exc:  # noqa: BLE001 - sqlite3.OperationalError, from whichever sqlite module
        text = str(exc)
        if "no such table: steps" in text:
            return []
        if "no such table: step_files" in text or "no such column: s.run" in text:
            old = sql.replace(_COUNTING[1], "1").replace(_COUNTING[0], "").replace("s.run", "1")
            if old != sql:
                return _select(conn, old, args)
            if "step_files" in text:  # how far a file was read: never, as far as this ledger knows
                return []
        raise


def _value(value: Any) -> float:
    return float("nan") if value is None or value == _NAN else float(value)


def insert(conn, task_id: str, attempt: int, rows: Iterable[Row]) -> int:
    """Add one attempt's rows (inside the caller's transaction); returns how many."""
    data = [(task_id, attempt, step, metric, _NAN if math.isnan(value) else value, when, run)
            for run, step, metric, value, when in rows]
    conn.executemany(
        "INSERT INTO steps (task_id, attempt, step, metric, value, time, run) VALUES (?,?,?,?,?,?,?)", data)
    return len(data)


def progress(conn, task_id: str, attempt: int) -> Progress:
    """How far the attempt's file was read (a fresh start if never)."""
    rows = _select(conn, "SELECT lines, run, unreadable, first, skipping FROM step_files WHERE task_id=? AND attempt=?",
                   (task_id, attempt))
    if not rows:
        return Progress()
    lines, run, unreadable, first, skipping = rows[0]
    return Progress(lines, run, unreadable, first, bool(skipping))


def store(conn, task_id: str, attempt: int, data: bytes, final: bool = False,
          seen: list[Row] | None = None) -> tuple[int, int]:
    """New bytes of an attempt's file into the ledger (inside the caller's transaction): its rows
    and how far it was read.  Returns (rows added, bytes taken); the rows are added to ``seen``."""
    p = progress(conn, task_id, attempt)
    rows, used = parse_steps(data, progress=p, final=final)
    if seen is not None:
        seen.extend(rows)
    conn.execute("INSERT OR REPLACE INTO step_files VALUES (?,?,?,?,?,?,?)",
                 (task_id, attempt, p.lines, p.run, p.unreadable, p.first, int(p.skipping)))
    return insert(conn, task_id, attempt, rows), used


def forget(conn, task_id: str, attempt: int) -> None:
    """Drop an attempt's rows: a re-adopted job's file is read again from its start (the file is
    the truth; the offset reached before the restart is not kept)."""
    conn.execute("DELETE FROM steps WHERE task_id=? AND attempt=?", (task_id, attempt))
    _select(conn, "DELETE FROM step_files WHERE task_id=? AND attempt=?", (task_id, attempt))


def note(conn, task_id: str, attempt: int | None) -> str | None:
    """What could not be read of an attempt's file, in words (None: everything was read)."""
    if not attempt:
        return None
    rows = _select(conn, "SELECT unreadable, first FROM step_files WHERE task_id=? AND attempt=?", (task_id, attempt))
    return Progress(unreadable=rows[0][0], first=rows[0][1]).note if rows else None


#: Only the run that counts of each attempt (a requeued job's last run): see :func:`frame`.
_COUNTING = ("LEFT JOIN step_files f ON f.task_id = s.task_id AND f.attempt = s.attempt",
             "s.run = COALESCE(f.run, s.run)")


def frame(conn, task_id: str | Sequence[str] | None = None, metric: str | None = None, runs: bool = False):
    """The steps as a long DataFrame: task_id, attempt, run, step, metric, value, time (UTC); of one
    task or a list of tasks, of one metric or all; of the run that counts in each attempt (the
    last run of a job a scheduler started again), or of every run with ``runs``."""
    import pandas as pd

    where, args = [], []
    if isinstance(task_id, str):
        where.append("s.task_id=?")
        args.append(task_id)
    elif task_id is not None:
        ids = list(task_id)
        where.append(f"s.task_id IN ({','.join('?' * len(ids))})" if ids else "0")
        args.extend(ids)
    if metric is not None:
        where.append("s.metric=?")
        args.append(metric)
    join = ""
    if not runs:
        join = _COUNTING[0]
        where.append(_COUNTING[1])
    sql = f"SELECT s.task_id, s.attempt, s.run, s.step, s.metric, s.value, s.time FROM steps s {join}"
    sql += (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY s.rowid"
    rows = [(*r[:5], _value(r[5]), r[6]) for r in _select(conn, sql, args)]
    df = pd.DataFrame.from_records(rows, columns=["task_id", "attempt", "run", "step", "metric", "value", "time"])
    df["time"] = pd.to_datetime(df["time"].astype("float64"), unit="s", utc=True)
    return df.astype({"attempt": "int64", "run": "int64", "step": step_dtype(df["step"]), "value": "float64"})


def step_dtype(steps: Any) -> str:
    """``int64`` when every step is a whole number (``log_metrics(step=epoch)``, or a line's number
    when it has no step), else ``float64``.  The ledger keeps steps as REAL (a step may be 0.5), so
    a whole number read back is taken as the integer it was logged as."""
    import numpy as np

    values = np.asarray(steps, dtype="float64")
    whole = values.size == 0 or bool(np.all(np.isfinite(values) & (values == np.floor(values))
                                            & (np.abs(values) < 2.0 ** 53)))
    return "int64" if whole else "float64"


def step_value(step: float | None) -> int | float | None:
    """One step as read back: an int when it is a whole number (see :func:`step_dtype`)."""
    if step is None:
        return None
    return int(step) if math.isfinite(step) and step == int(step) and abs(step) < 2.0 ** 53 else step


def latest(conn, task_ids: Sequence[str], metric: str | None = None) -> dict[str, Latest]:
    """``{task_id: (step, value)}`` of ``task_ids`` in their current attempt (the run that counts):
    the highest step logged (of any metric), and ``metric``'s value at its own highest step (None
    when the task never logged it, or no ``metric`` is asked for).  What the status table shows
    of a running task; a page's worth of ids costs two indexed queries."""
    ids = list(task_ids)
    if not ids:
        return {}
    marks = ",".join("?" * len(ids))
    joined = (f"FROM steps s JOIN tasks t ON t.task_id = s.task_id AND t.attempt = s.attempt {_COUNTING[0]} "
              f"WHERE s.task_id IN ({marks}) AND {_COUNTING[1]}")
    out: dict[str, Latest] = {}
    for tid, step in _select(conn, f"SELECT s.task_id, MAX(s.step) {joined} GROUP BY s.task_id", ids):
        out[tid] = (step_value(step), None)
    if metric is not None and out:
        rows = _select(conn, f"SELECT s.task_id, s.value, MAX(s.step) {joined} AND s.metric=? GROUP BY s.task_id",
                       (*ids, metric))
        for tid, value, _ in rows:  # SQLite: the bare column comes from the row holding the MAX
            out[tid] = (out[tid][0], _value(value))
    return out


def last_values(conn) -> dict[str, dict[str, float]]:
    """``{task_id: {metric: value}}``: each COMPLETED task's metrics at their highest step, in its
    final attempt and the run that counts (``results()`` takes those a task reported only as steps)."""
    rows = _select(conn, f"SELECT s.task_id, s.metric, s.value, MAX(s.step) FROM steps s "
                         f"JOIN tasks t ON t.task_id = s.task_id AND t.attempt = s.attempt {_COUNTING[0]} "
                         f"WHERE t.state = 'COMPLETED' AND {_COUNTING[1]} GROUP BY s.task_id, s.metric")
    out: dict[str, dict[str, float]] = {}
    for task_id, metric, value, _ in rows:
        out.setdefault(task_id, {})[metric] = _value(value)
    return out


def last_value(conn, task_id: str, metric: str) -> float | None:
    """The task's ``metric`` at its highest step, in its current attempt and the run that counts."""
    rows = _select(conn, f"SELECT s.value FROM steps s JOIN tasks t ON t.task_id = s.task_id AND t.attempt = s.attempt "
                         f"{_COUNTING[0]} WHERE s.task_id=? AND s.metric=? AND {_COUNTING[1]} "
                         f"ORDER BY s.step DESC LIMIT 1", (task_id, metric))
    return _value(rows[0][0]) if rows else None


def rows_after(conn, task_ids: Sequence[str], metric: str, after: int = 0) -> list[tuple[int, str, float, float]]:
    """``(row, task_id, step, value)`` of ``metric`` for ``task_ids`` after row ``after`` (the run
    that counts of each attempt): what a chart already drawn needs to grow (its last row is the
    new ``after``)."""
    ids = list(task_ids)
    if not ids:
        return []
    rows = _select(conn, f"SELECT s.rowid, s.task_id, s.step, s.value FROM steps s {_COUNTING[0]} "
                         f"WHERE s.metric=? AND s.rowid > ? AND {_COUNTING[1]} "
                         f"AND s.task_id IN ({','.join('?' * len(ids))}) ORDER BY s.rowid", (metric, after, *ids))
    return [(r[0], r[1], r[2], _value(r[3])) for r in rows]


def metric_names(conn, after: int = 0) -> tuple[set[str], int]:
    """The metric names of the rows after row ``after``, and the last row: a caller keeping the
    names it has seen reads only what is new."""
    rows = _select(conn, "SELECT DISTINCT metric FROM steps WHERE rowid > ?", (after,))
    return {r[0] for r in rows}, version(conn)


def version(conn) -> int:
    """Changes whenever steps are added (the last row number): for refresh loops."""
    rows = _select(conn, "SELECT COALESCE(MAX(rowid), 0) FROM steps")
    return rows[0][0] if rows else 0
