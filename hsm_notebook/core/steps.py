"""Intermediate metrics: what a running job appends to ``metrics.jsonl`` in its folder.

One JSON object per line, from any language::

    {"step": 10, "loss": 0.31, "accuracy": 0.88}
    {"step": 20, "loss": 0.25, "time": 1764400000.5}

``log_metrics(step=..., **values)`` writes these lines for Python jobs.  The manager reads each
running job's new bytes at every poll (one call per source, see
``ComputeSource.read_steps``) and keeps them in the ledger's ``steps`` table; only complete
lines are taken, so a line being written is read at the next poll.
"""

from __future__ import annotations

import json
import math
import posixpath
import shlex
import time
from pathlib import Path
from typing import Iterable, Optional, Sequence

from ..metrics import STEPS_FILE  # noqa: E402,F401 - the one name of the file, with log_metrics
#: At most this many new bytes of one job are read per poll (a chatty job catches up over polls).
MAX_READ = 1 << 20

Row = tuple[float, str, float, float]  # (step, metric, value, time)


def parse_steps(data: bytes, now: Optional[float] = None) -> tuple[list[Row], int]:
    """The complete lines of ``data`` as rows, and the number of bytes they took.  A line that is
    not a JSON object with a numeric ``step`` is skipped; so are values that are not numbers."""
    end = data.rfind(b"\n") + 1
    rows: list[Row] = []
    stamp = time.time() if now is None else now
    for line in data[:end].splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if not isinstance(record, dict):
            continue
        step, when = record.pop("step", None), record.pop("time", stamp)
        if not _number(step):
            continue
        when = float(when) if _number(when) else stamp
        rows.extend((float(step), str(name), float(value), when) for name, value in record.items() if _number(value))
    return rows, end


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def read_local(paths: dict[str, tuple[Path | str, int]], limit: int = MAX_READ) -> dict[str, bytes]:
    """``{job_id: (folder, offset)}`` -> the new bytes of each folder's ``metrics.jsonl``."""
    out: dict[str, bytes] = {}
    for job_id, (folder, offset) in paths.items():
        try:
            with open(Path(folder) / STEPS_FILE, "rb") as f:
                f.seek(offset)
                data = f.read(limit)
        except FileNotFoundError:
            continue
        if data:
            out[job_id] = data
    return out


def remote_script(paths: dict[str, tuple[str, int]]) -> str:
    """One shell command printing the new bytes of each folder's ``metrics.jsonl`` (framed for
    :func:`parse_remote`): how SSH hosts and login nodes answer for all their running jobs at once."""
    parts = []
    for job_id, (folder, offset) in paths.items():
        f = shlex.quote(posixpath.join(folder, STEPS_FILE))
        parts.append(f"[ -f {f} ] && {{ printf '@@hsm %s\\n' {shlex.quote(job_id)}; "
                     f"tail -c +{int(offset) + 1} {f} | head -c {MAX_READ}; printf '\\n@@end\\n'; }}")
    return "\n".join([*parts, "true"])


def parse_remote(out: str) -> dict[str, bytes]:
    """What :func:`remote_script` printed -> ``{job_id: bytes}``."""
    found: dict[str, bytes] = {}
    pos = 0
    while (start := out.find("@@hsm ", pos)) >= 0:
        eol = out.find("\n", start)
        end = out.find("\n@@end\n", eol)
        if eol < 0 or end < 0:
            break
        found[out[start + 6:eol]] = out[eol + 1:end].encode()
        pos = end + 7
    return {job_id: data for job_id, data in found.items() if data}


def best_so_far(values: Iterable[tuple[float, float]], minimize: bool) -> list[tuple[float, float]]:
    """``(time, value)`` pairs in time order -> the running best (a step line for a plot)."""
    out: list[tuple[float, float]] = []
    best: Optional[float] = None
    for t, v in sorted(values):
        if best is None or (v < best if minimize else v > best):
            best = v
            out.append((t, v))
    return out


# -- in the ledger ------------------------------------------------------------------------------
SCHEMA = """
CREATE TABLE IF NOT EXISTS steps (
    task_id TEXT NOT NULL, attempt INTEGER NOT NULL, step REAL NOT NULL, metric TEXT NOT NULL,
    value REAL NOT NULL, time REAL NOT NULL);
CREATE INDEX IF NOT EXISTS steps_task ON steps (task_id, metric, step);
"""


def _select(conn, sql: str, args: Sequence = ()) -> list:
    """The rows of a query on the steps table; none from a ledger written before steps existed."""
    try:
        return conn.execute(sql, args).fetchall()
    except Exception as exc:  # noqa: BLE001 - sqlite3.OperationalError, from whichever sqlite module
        if "no such table" not in str(exc):
            raise
        return []


def insert(conn, task_id: str, attempt: int, rows: Iterable[Row]) -> int:
    """Add one attempt's rows (inside the caller's transaction); returns how many."""
    data = [(task_id, attempt, step, metric, value, when) for step, metric, value, when in rows]
    conn.executemany("INSERT INTO steps VALUES (?,?,?,?,?,?)", data)
    return len(data)


def forget(conn, task_id: str, attempt: int) -> None:
    """Drop an attempt's rows: a re-adopted job's file is read again from its start (the file is
    the truth; the offset reached before the restart is not kept)."""
    conn.execute("DELETE FROM steps WHERE task_id=? AND attempt=?", (task_id, attempt))


def frame(conn, task_id: Optional[str | Sequence[str]] = None, metric: Optional[str] = None):
    """The steps as a long DataFrame: task_id, attempt, step, metric, value, time (UTC); of one
    task or a list of tasks, of one metric or all."""
    import pandas as pd

    where, args = [], []
    if isinstance(task_id, str):
        where.append("task_id=?")
        args.append(task_id)
    elif task_id is not None:
        ids = list(task_id)
        where.append(f"task_id IN ({','.join('?' * len(ids))})" if ids else "0")
        args.extend(ids)
    if metric is not None:
        where.append("metric=?")
        args.append(metric)
    sql = "SELECT task_id, attempt, step, metric, value, time FROM steps"
    sql += (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY rowid"
    rows = _select(conn, sql, args)
    df = pd.DataFrame.from_records([tuple(r) for r in rows],
                                   columns=["task_id", "attempt", "step", "metric", "value", "time"])
    df["time"] = pd.to_datetime(df["time"].astype("float64"), unit="s", utc=True)
    return df.astype({"attempt": "int64", "step": "float64", "value": "float64"})


def rows_after(conn, task_ids: Sequence[str], metric: str, after: int = 0) -> list[tuple[int, str, float, float]]:
    """``(row, task_id, step, value)`` of ``metric`` for ``task_ids`` after row ``after``: what a
    chart already drawn needs to grow (its last row is the new ``after``)."""
    ids = list(task_ids)
    if not ids:
        return []
    return [tuple(r) for r in _select(
        conn, f"SELECT rowid, task_id, step, value FROM steps WHERE metric=? AND rowid > ? "
              f"AND task_id IN ({','.join('?' * len(ids))}) ORDER BY rowid", (metric, after, *ids))]


def metric_names(conn, after: int = 0) -> tuple[set[str], int]:
    """The metric names of the rows after row ``after``, and the last row: a caller keeping the
    names it has seen reads only what is new."""
    rows = _select(conn, "SELECT DISTINCT metric FROM steps WHERE rowid > ?", (after,))
    return {r[0] for r in rows}, version(conn)


def version(conn) -> int:
    """Changes whenever steps are added (the last row number): for refresh loops."""
    rows = _select(conn, "SELECT COALESCE(MAX(rowid), 0) FROM steps")
    return rows[0][0] if rows else 0
