"""Notes and tags: what a researcher writes about a sweep and its tasks, kept in its ledger.

Two small tables beside the tasks: ``notes`` (one text per task: "diverged after a restart") and
``tags`` (words for the whole sweep: ``baseline``, ``lr-scan``), so they travel with the folder
and read the same from any process.  A brief of a sweep (its tags, its best objective value and
the names of the parameters that vary) tells sweeps apart in ``%hsm``'s list.

**Writes take a connection of their own, one short transaction each** (``BEGIN IMMEDIATE``, one
statement, ``COMMIT``), never the controller's writer connection: a note is written from a
notebook cell or the panel while a controller (in this process or another) records transitions.
SQLite lets one writer at a time, so a note waits, up to the busy timeout, for a transition being
written, and holds the write lock only for its own statement and commit (about a millisecond:
the controller's transactions are delayed by no more than that).  The tables are made by the
first write; a ledger without them reads as no notes and no tags.
"""

from __future__ import annotations

import contextlib
import json
import math
import numbers
import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..model.errors import ConfigError, StoreError
from ..spec.space import flatten
from . import steps
from .sweepdir import LEDGER

SCHEMA = """
CREATE TABLE IF NOT EXISTS notes (task_id TEXT PRIMARY KEY, text TEXT NOT NULL, time REAL NOT NULL);
CREATE TABLE IF NOT EXISTS tags (tag TEXT PRIMARY KEY, time REAL NOT NULL);
"""
#: A note longer than this is refused (a note is a few lines; logs belong in the task's folder).
MAX_NOTE = 20_000
#: A tag is one word of at most this many characters.
MAX_TAG = 40
#: How long a write waits for a transaction in progress (the controller's are milliseconds).
BUSY_TIMEOUT = 30.0


# -- writing -------------------------------------------------------------------------------------
@contextlib.contextmanager
def _writing(directory: Path):
    """One short write transaction on a connection of its own (see the module's doc)."""
    path = Path(directory) / LEDGER
    if not path.is_file():
        raise StoreError(f"{path} is missing; was the sweep directory removed?")
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT, isolation_level=None)
    try:
        conn.execute("PRAGMA synchronous=NORMAL")  # as the controller's: WAL keeps a commit atomic
        conn.execute("BEGIN IMMEDIATE")
        for statement in SCHEMA.strip().split(";\n"):  # made by the first write, in its transaction
            conn.execute(statement)
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        raise StoreError(f"{path} could not be written ({exc}); nothing was changed") from exc
    finally:
        conn.close()


def write_note(directory: Path, task_id: str, text: str) -> None:
    """Keep ``text`` as the note of ``task_id`` (replacing its note); empty text removes it."""
    if not isinstance(text, str):
        raise ConfigError(f"a note is text, got {type(text).__name__}", "text")
    if len(text) > MAX_NOTE:
        raise ConfigError(f"a note of {len(text):,} characters is too long (at most {MAX_NOTE:,}); "
                          "keep long output in a file of the task's folder", "text")
    with _writing(directory) as conn:
        if conn.execute("SELECT 1 FROM tasks WHERE task_id=?", (task_id,)).fetchone() is None:
            raise ConfigError(f"no task {task_id!r} in this sweep; copy an id from status()", "task_id")
        if text.strip():
            conn.execute("INSERT OR REPLACE INTO notes (task_id, text, time) VALUES (?, ?, ?)",
                         (task_id, text, time.time()))
        else:
            conn.execute("DELETE FROM notes WHERE task_id=?", (task_id,))


def check_tags(words: Iterable[Any]) -> list[str]:
    """Tags as given, checked: each one word (no spaces or commas) of 1 to :data:`MAX_TAG` characters."""
    out: list[str] = []
    for word in words:
        if not isinstance(word, str):
            raise ConfigError(f"a tag is a word, got {type(word).__name__} {word!r}", "tags")
        tag = word.strip()
        if not tag or len(tag) > MAX_TAG or any(c.isspace() or c == "," for c in tag):
            raise ConfigError(f"{word!r} is not a tag: a tag is one word of 1 to {MAX_TAG} characters, without "
                              "spaces or commas (e.g. 'baseline', 'lr-scan')", "tags")
        if tag not in out:
            out.append(tag)
    return out


def add_tags(directory: Path, words: Iterable[Any]) -> None:
    """Tag the sweep with ``words`` (a tag it has already stays as it was)."""
    tags = check_tags(words)
    now = time.time()
    with _writing(directory) as conn:
        conn.executemany("INSERT OR IGNORE INTO tags (tag, time) VALUES (?, ?)", [(t, now) for t in tags])


def remove_tags(directory: Path, words: Iterable[Any]) -> None:
    """Take ``words`` off the sweep's tags (a word it does not have is no error)."""
    tags = check_tags(words)
    with _writing(directory) as conn:
        conn.executemany("DELETE FROM tags WHERE tag=?", [(t,) for t in tags])


# -- reading (on the caller's read connection) ---------------------------------------------------
def _select(conn: Any, sql: str, args: Sequence[Any] = ()) -> list:
    try:
        return conn.execute(sql, args).fetchall()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):  # nothing written yet
            return []
        raise


def read_notes(conn: Any, task_ids: Sequence[str] | None = None) -> dict[str, str]:
    """``{task_id: note}`` of every task with a note, or of ``task_ids``."""
    if task_ids is None:
        return dict((r[0], r[1]) for r in _select(conn, "SELECT task_id, text FROM notes"))
    ids = list(task_ids)
    if not ids:
        return {}
    marks = ",".join("?" * len(ids))
    return dict((r[0], r[1]) for r in _select(conn, f"SELECT task_id, text FROM notes WHERE task_id IN ({marks})",
                                              ids))


def read_tags(conn: Any) -> list[str]:
    """The sweep's tags, in the order they were given."""
    return [r[0] for r in _select(conn, "SELECT tag FROM tags ORDER BY time, rowid")]


# -- a sweep in one line ------------------------------------------------------------------------
def varying_names(params: Iterable[Mapping[str, Any]]) -> list[str]:
    """The names whose value is not the same in every one of ``params`` (missing from some counts as
    varying), in first-seen order."""
    values: dict[str, set[str]] = {}
    present: dict[str, int] = {}
    total = 0
    for p in params:
        total += 1
        for name, value in p.items():
            values.setdefault(name, set()).add(json.dumps(value, sort_keys=True, default=str))
            present[name] = present.get(name, 0) + 1
    return [n for n in values if len(values[n]) > 1 or present[n] < total]


def best_value(conn: Any, metric: str, minimize: bool) -> float | None:
    """The best ``metric`` of the completed tasks (as ``results()`` has it: the final metrics, else
    the value at the highest step), or None when no completed task has a number for it."""
    values: list[float] = []
    final_ids = set()
    for task_id, text in _select(conn, "SELECT task_id, metrics FROM tasks WHERE state='COMPLETED'"):
        got = flatten(json.loads(text), leaf=lambda v: False).get(metric) if text else None
        if isinstance(got, numbers.Real) and not isinstance(got, bool):
            final_ids.add(task_id)
            values.append(float(got))
    for task_id, last in steps.last_values(conn).items():
        if task_id not in final_ids and metric in last:
            values.append(last[metric])
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return None
    return min(values) if minimize else max(values)


def brief(directory: Path, record: Mapping[str, Any] | None = None, limit: int = 5000) -> dict[str, Any]:
    """What tells a sweep apart in a list: ``tags``, ``varying`` (the names of the parameters whose
    values differ, read from its first ``limit`` tasks) and ``best`` (``(metric, "min"|"max", value)``
    of its objective, value None before any completed task has it; None without an objective).
    ``record``: its ``sweep.yaml`` when already read."""
    from .store import SweepStore

    store = SweepStore(Path(directory))
    record = store.record() if record is None else record
    with contextlib.closing(store.reader()) as conn:
        tags = read_tags(conn)
        params = [json.loads(r[0]) for r in _select(conn, "SELECT params FROM tasks ORDER BY idx LIMIT ?", (limit,))]
        objective = dict(record.get("objective") or {})
        best = None
        if objective:
            metric, direction = next(iter(objective.items()))
            best = (metric, direction, best_value(conn, metric, direction == "min"))
    return {"tags": tags, "varying": varying_names(params), "best": best}
