"""A search's trials in the ledger: which task is which trial, whether the study was told its end,
and a prune asked for (kept before the job is stopped, so a restart finishes the prune).

The study (Optuna's storage) is the truth about what the sampler knows; the ledger is the truth
about tasks and jobs.  The two are reconciled on every start (``core.engine.trials``): a trial
the study holds as running with no task here becomes a task; a task that ended while no
controller ran is told; ``told`` here is set after the study took the result.
"""

from __future__ import annotations

import sqlite3
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS trials (
    task_id TEXT PRIMARY KEY, number INTEGER NOT NULL UNIQUE, told INTEGER NOT NULL DEFAULT 0,
    pruned TEXT, prune_step REAL);
CREATE INDEX IF NOT EXISTS trials_told ON trials (told);
"""

_TERMINAL = ("COMPLETED", "FAILED", "CANCELLED", "LOST", "PRUNED")
#: ``meta`` keys: when the search first asked for a trial; why it asks for no more (it is over).
STARTED, ENDED = "search_started", "search_ended"


def migrate(conn: sqlite3.Connection) -> None:
    conn.executescript(SCHEMA)


def add(conn: sqlite3.Connection, task_id: str, number: int) -> None:
    conn.execute("INSERT INTO trials (task_id, number) VALUES (?, ?)", (task_id, number))


def numbers(conn: sqlite3.Connection) -> dict[int, tuple[str, str]]:
    """``{trial number: (task id, task state)}`` of every trial the ledger holds."""
    rows = _select(conn, "SELECT tr.number, tr.task_id, t.state FROM trials tr JOIN tasks t USING (task_id)")
    return {r[0]: (r[1], r[2]) for r in rows}


def of_task(conn: sqlite3.Connection, task_id: str) -> int | None:
    rows = _select(conn, "SELECT number FROM trials WHERE task_id=?", (task_id,))
    return rows[0][0] if rows else None


def of_tasks(conn: sqlite3.Connection, task_ids: list[str]) -> dict[str, int]:
    """``{task id: trial number}`` of those tasks that are trials."""
    if not task_ids:
        return {}
    marks = ",".join("?" * len(task_ids))
    return dict(_select(conn, f"SELECT task_id, number FROM trials WHERE task_id IN ({marks})", tuple(task_ids)))


def ended_untold(conn: sqlite3.Connection) -> list[sqlite3.Row]:
    """Trials whose task ended and whose study was not told yet: number, task, state, metrics, error."""
    marks = ",".join("?" * len(_TERMINAL))
    return _select(conn, f"SELECT tr.number, tr.task_id, t.state, t.metrics, t.error, tr.pruned, tr.prune_step "
                         f"FROM trials tr JOIN tasks t USING (task_id) WHERE tr.told=0 AND t.state IN ({marks}) "
                         f"ORDER BY tr.number", _TERMINAL)


def mark_told(conn: sqlite3.Connection, task_id: str) -> None:
    conn.execute("UPDATE trials SET told=1 WHERE task_id=?", (task_id,))


def reopen(conn: sqlite3.Connection) -> int:
    """Trials told already whose task was queued again (``complete()``, ``retry_failed()``): to be
    told again when it ends.  Returns how many."""
    marks = ",".join("?" * len(_TERMINAL))
    try:
        return conn.execute(f"UPDATE trials SET told=0, pruned=NULL, prune_step=NULL WHERE told=1 AND task_id IN "
                            f"(SELECT task_id FROM tasks WHERE state NOT IN ({marks}))", _TERMINAL).rowcount
    except sqlite3.OperationalError as exc:
        if "no such table: trials" in str(exc):
            return 0
        raise


def mark_pruned(conn: sqlite3.Connection, task_id: str, reason: str, step: float) -> None:
    conn.execute("UPDATE trials SET pruned=?, prune_step=? WHERE task_id=? AND pruned IS NULL", (reason, step, task_id))


def pruned(conn: sqlite3.Connection) -> dict[str, tuple[str, float]]:
    """``{task id: (reason, step)}`` of prunes asked for whose task has not ended yet."""
    marks = ",".join("?" * len(_TERMINAL))
    rows = _select(conn, f"SELECT tr.task_id, tr.pruned, tr.prune_step FROM trials tr JOIN tasks t USING (task_id) "
                         f"WHERE tr.pruned IS NOT NULL AND t.state NOT IN ({marks})", _TERMINAL)
    return {r[0]: (r[1], r[2]) for r in rows}


def frame_columns(conn: sqlite3.Connection) -> dict[str, dict[str, Any]]:
    """``{task id: {"trial": number, "pruned_at": step}}`` for ``status()``'s trial columns."""
    rows = _select(conn, "SELECT task_id, number, prune_step FROM trials")
    return {r[0]: {"trial": r[1], "pruned_at": r[2]} for r in rows}


def meta(conn: sqlite3.Connection, key: str) -> str | None:
    rows = _select(conn, "SELECT value FROM meta WHERE key=?", (key,))
    return rows[0][0] if rows else None


def set_meta(conn: sqlite3.Connection, key: str, value: str) -> None:
    conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))


def _select(conn: sqlite3.Connection, sql: str, args: tuple = ()) -> list[Any]:
    """Rows of a query; none from a ledger without the table (a sweep, not a search, or older)."""
    try:
        return conn.execute(sql, args).fetchall()
    except sqlite3.OperationalError as exc:
        if "no such table: trials" in str(exc):
            return []
        raise
