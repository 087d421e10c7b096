"""The sweep store: one directory per sweep, with an SQLite ledger.

Layout::

    SWEEP_DIR/
      sweep.yaml        what was asked: space, command, sources (written atomically)
      ledger.sqlite     tasks (current view), attempts, events (every transition)
      tasks/<job>/      one folder per attempt: params.json, stdout.log, stderr.log,
                        metrics.json, exit_code, pid

SQLite in WAL mode gives atomic transactions: a controller killed with SIGKILL at
any instant leaves the ledger as it was after the last committed transition.
Every transition updates ``attempts`` and ``tasks`` and appends to ``events`` in
one transaction.  Readers (``status()``) use their own connection and never block
the writer.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import yaml

from .errors import ConfigError, StoreError, SweepLockedError
from .events import Event
from .state import JobOutcome, JobState

LEDGER = "ledger.sqlite"
_ACTIVE = tuple(s.value for s in JobState if s.is_active)
RECORD = "sweep.yaml"
LOCK = ".controller.lock"
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS tasks (
    task_id TEXT PRIMARY KEY, idx INTEGER NOT NULL, params TEXT NOT NULL,
    state TEXT NOT NULL, attempt INTEGER NOT NULL DEFAULT 0,
    source TEXT, job_name TEXT, job_id TEXT,
    submit_time REAL, start_time REAL, end_time REAL,
    exit_code INTEGER, error TEXT, metrics TEXT, detail TEXT, retry_at REAL, requires TEXT);
CREATE INDEX IF NOT EXISTS tasks_state ON tasks (state, idx);
CREATE TABLE IF NOT EXISTS attempts (
    task_id TEXT NOT NULL, attempt INTEGER NOT NULL, source TEXT, job_name TEXT, job_id TEXT,
    state TEXT NOT NULL, submit_time REAL, start_time REAL, end_time REAL,
    exit_code INTEGER, error TEXT, PRIMARY KEY (task_id, attempt));
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, time REAL NOT NULL, task_id TEXT NOT NULL,
    attempt INTEGER, state TEXT NOT NULL, source TEXT, job_id TEXT, detail TEXT);
"""


def atomic_write(path: Path, text: str) -> None:
    """Write a file so that a reader (or a crash) sees the old or the new content, never half."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.row_factory = sqlite3.Row
    return conn


class SweepStore:
    """Reads and writes one sweep directory.  The writer is the controller's loop thread."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self._conn: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        self.on_event: Callable[[Event], None] | None = None

    # -- creation and opening ---------------------------------------------------------
    @classmethod
    def create(cls, directory: Path, record: Mapping[str, Any], tasks: Iterable[tuple[str, dict]],
               requires: Callable[[dict], Any] | None = None) -> "SweepStore":
        directory = Path(directory).absolute()
        try:
            directory.mkdir(parents=True, exist_ok=True)
            probe = directory / ".write-test"
            probe.write_text("")
            probe.unlink()
        except OSError as exc:
            raise ConfigError(f"{directory} is not writable ({exc.strerror}); choose another directory", "directory") from None
        if (directory / LEDGER).exists() or (directory / RECORD).exists():
            raise ConfigError(f"{directory} already holds a sweep; use Sweep.attach() to reopen it", "directory")
        store = cls(directory)
        conn = store.conn
        conn.executescript(_SCHEMA)
        conn.execute("BEGIN IMMEDIATE")
        try:
            count = 0
            for count, (tid, params) in enumerate(tasks, start=1):
                try:
                    req = requires(params) if requires is not None else None
                    conn.execute(
                        "INSERT INTO tasks (task_id, idx, params, state, requires) VALUES (?, ?, ?, ?, ?)",
                        (tid, count - 1, json.dumps(params), JobState.PENDING.value, json.dumps(req) if req else None),
                    )
                except sqlite3.IntegrityError:
                    raise ConfigError(f"combination {params} appears twice; each must be unique", "space") from None
            if count == 0:
                raise ConfigError("the parameter space is empty (everything filtered out?)", "space")
            conn.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            store.close()
            for name in (LEDGER, LEDGER + "-wal", LEDGER + "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    (directory / name).unlink()
            raise
        atomic_write(directory / RECORD, yaml.safe_dump(dict(record), sort_keys=False))
        (directory / "tasks").mkdir(exist_ok=True)
        return store

    @classmethod
    def open(cls, directory: Path) -> "SweepStore":
        directory = Path(directory).absolute()
        if not (directory / LEDGER).is_file() or not (directory / RECORD).is_file():
            raise ConfigError(
                f"{directory} is not a sweep directory (no {RECORD} and {LEDGER}); "
                "give the folder a sweep was created in, e.g. sweeps/<sweep id>",
                "directory",
            )
        return cls(directory)

    @property
    def conn(self) -> sqlite3.Connection:
        """The writer connection (the controller's)."""
        if self._conn is None:
            self._conn = _connect(self.directory / LEDGER)
        return self._conn

    def record(self) -> dict[str, Any]:
        """What ``sweep.yaml`` says."""
        return yaml.safe_load((self.directory / RECORD).read_text())

    def update_record(self, **changes: Any) -> None:
        """Change keys of ``sweep.yaml`` (atomically)."""
        record = self.record()
        record.update(changes)
        atomic_write(self.directory / RECORD, yaml.safe_dump(record, sort_keys=False))

    def close(self) -> None:
        """Close the writer connection (reopened on use)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # -- the controller lock -----------------------------------------------------------
    def acquire(self) -> None:
        """Only one live process drives a sweep; the OS drops the lock when it dies."""
        if self._lock_fd is not None:
            return
        fd = os.open(self.directory / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise SweepLockedError(
                f"sweep {self.directory.name} is being driven by {holder}; stop that controller "
                "(or wait for it), or read its progress without driving it: Sweep.attach(dir, resume=False)"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()}".encode())
        self._lock_fd = fd

    def release(self) -> None:
        """Give up the controller lock."""
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- writes (controller only) --------------------------------------------------------
    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` ... ``COMMIT``; nested uses join the outer one."""
        conn = self.conn
        if conn.in_transaction:  # nested: join the outer one
            yield conn
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _event(self, conn, task_id: str, attempt: int | None, state: JobState, source=None, job_id=None, detail=None):
        t = time.time()
        conn.execute(
            "INSERT INTO events (time, task_id, attempt, state, source, job_id, detail) VALUES (?,?,?,?,?,?,?)",
            (t, task_id, attempt, state.value, source, job_id, detail),
        )
        if self.on_event is not None:
            self.on_event(Event(t, task_id, attempt, state, source, job_id, detail))

    def begin_attempt(self, task_id: str, source: str) -> tuple[int, str] | None:
        """Record the intent to start a PENDING task on ``source``; returns (attempt, job_name),
        or None when the task is no longer pending (an earlier attempt turned up, a cancel)."""
        with self.transaction() as conn:
            (state,) = conn.execute("SELECT state FROM tasks WHERE task_id=?", (task_id,)).fetchone()
            if state != JobState.PENDING:
                return None
            (attempt,) = conn.execute("SELECT COALESCE(MAX(attempt), 0) FROM attempts WHERE task_id=?",
                                      (task_id,)).fetchone()
            attempt += 1
            job_name = f"{task_id}-{attempt}"
            t = time.time()
            conn.execute(
                "INSERT INTO attempts (task_id, attempt, source, job_name, state, submit_time) VALUES (?,?,?,?,?,?)",
                (task_id, attempt, source, job_name, JobState.SUBMITTING.value, t),
            )
            conn.execute(
                "UPDATE tasks SET state=?, attempt=?, source=?, job_name=?, job_id=NULL, submit_time=?, "
                "start_time=NULL, end_time=NULL, exit_code=NULL, error=NULL, metrics=NULL, detail=NULL WHERE task_id=?",
                (JobState.SUBMITTING.value, attempt, source, job_name, t, task_id),
            )
            self._event(conn, task_id, attempt, JobState.SUBMITTING, source)
        return attempt, job_name

    def set_state(
        self, task_id: str, attempt: int, state: JobState, *, job_id: str | None = None,
        detail: str | None = None, error: str | None = None,
    ) -> None:
        """A non-final transition of the task's current attempt (QUEUED, RUNNING, ...)."""
        t = time.time()
        with self.transaction() as conn:
            start = t if state == JobState.RUNNING else None
            conn.execute(
                "UPDATE attempts SET state=?, job_id=COALESCE(?, job_id), start_time=COALESCE(start_time, ?), "
                "error=COALESCE(?, error) WHERE task_id=? AND attempt=?",
                (state.value, job_id, start, error, task_id, attempt),
            )
            # only while this attempt is the task's live one: a failed-over attempt (an orphan) that
            # reports in later changes its own row, never the task's
            conn.execute(
                "UPDATE tasks SET state=?, job_id=COALESCE(?, job_id), start_time=COALESCE(start_time, ?), "
                "detail=?, error=COALESCE(?, error) WHERE task_id=? AND attempt=? AND state IN (?, ?, ?)",
                (state.value, job_id, start, detail, error, task_id, attempt, *_ACTIVE),
            )
            source = conn.execute("SELECT source FROM attempts WHERE task_id=? AND attempt=?", (task_id, attempt)).fetchone()
            self._event(conn, task_id, attempt, state, source[0] if source else None, job_id, detail or error)

    def finish(self, task_id: str, attempt: int, outcome: JobOutcome) -> str:
        """Record how an attempt ended.  Returns what it meant for the task:

        ``"current"``  the task's current attempt ended: its outcome is the task's;
        ``"won"``      an earlier attempt (its source came back) completed first: its result
                       becomes the task's, and the caller cancels the newer attempt;
        ``"surplus"``  it completed, but the task already had a result: kept in attempts only;
        ``"stale"``    an earlier attempt ended without success: kept in attempts only.
        """
        t = time.time()
        end = outcome.end_time or t
        metrics = json.dumps(outcome.metrics) if outcome.metrics is not None else None
        with self.transaction() as conn:
            task = conn.execute("SELECT state, attempt FROM tasks WHERE task_id=?", (task_id,)).fetchone()
            row = conn.execute("SELECT source, job_id, job_name FROM attempts WHERE task_id=? AND attempt=?",
                               (task_id, attempt)).fetchone()
            source, job_id, job_name = (row[0], row[1], row[2]) if row else (None, None, None)
            # the task's current attempt, still in flight (not failed over to a newer one)
            current = task["attempt"] == attempt and JobState(task["state"]).is_active
            error = outcome.error
            if outcome.state == JobState.COMPLETED and task["state"] == JobState.COMPLETED:
                meaning = "surplus"
                error = f"surplus run: the task already completed in attempt {task['attempt']}"
            elif outcome.state == JobState.COMPLETED:
                meaning = "current" if current else "won"
            else:
                meaning = "current" if current else "stale"
            conn.execute(
                "UPDATE attempts SET state=?, start_time=COALESCE(?, start_time), end_time=?, exit_code=?, error=? "
                "WHERE task_id=? AND attempt=?",
                (outcome.state.value, outcome.start_time, end, outcome.exit_code, error, task_id, attempt),
            )
            if meaning in ("current", "won"):
                conn.execute(
                    "UPDATE tasks SET state=?, attempt=?, source=?, job_name=?, job_id=?, "
                    "start_time=COALESCE(?, start_time), end_time=?, exit_code=?, error=?, metrics=?, detail=NULL, "
                    "retry_at=NULL WHERE task_id=?",
                    (outcome.state.value, attempt, source, job_name, job_id, outcome.start_time, end,
                     outcome.exit_code, error, metrics, task_id),
                )
            self._event(conn, task_id, attempt, outcome.state, source, job_id, error)
        return meaning

    def finish_unrunnable(self, task_id: str, error: str) -> None:
        """A task no source can ever run (its requirements match none): FAILED without an attempt."""
        with self.transaction() as conn:
            conn.execute("UPDATE tasks SET state=?, error=? WHERE task_id=?", (JobState.FAILED.value, error, task_id))
            self._event(conn, task_id, None, JobState.FAILED, detail=error)

    def requeue(self, task_id: str, detail: str, retry_at: float | None = None) -> None:
        """Put a task back in the queue (after a failure, or its source was disabled)."""
        with self.transaction() as conn:
            conn.execute("UPDATE tasks SET state=?, detail=?, retry_at=? WHERE task_id=?",
                         (JobState.PENDING.value, detail, retry_at, task_id))
            self._event(conn, task_id, None, JobState.PENDING, detail=detail)

    def next_retry(self) -> float | None:
        """When the earliest task waiting out a retry backoff becomes due."""
        return self.conn.execute("SELECT MIN(retry_at) FROM tasks WHERE state=? AND retry_at IS NOT NULL",
                                 (JobState.PENDING.value,)).fetchone()[0]

    def task_state(self, task_id: str) -> JobState:
        """The task's current state."""
        return JobState(self.conn.execute("SELECT state FROM tasks WHERE task_id=?", (task_id,)).fetchone()[0])

    def cancel_pending(self, task_ids: Iterable[str] | None = None) -> int:
        """Mark tasks that never started as CANCELLED."""
        with self.transaction() as conn:
            if task_ids is None:
                ids = [r[0] for r in conn.execute("SELECT task_id FROM tasks WHERE state=?", (JobState.PENDING.value,))]
            else:
                ids = [tid for tid in task_ids if (row := conn.execute(
                    "SELECT state FROM tasks WHERE task_id=?", (tid,)).fetchone()) and row[0] == JobState.PENDING.value]
            for tid in ids:
                conn.execute("UPDATE tasks SET state=?, error=? WHERE task_id=?",
                             (JobState.CANCELLED.value, "cancelled before it started", tid))
                self._event(conn, tid, None, JobState.CANCELLED, detail="cancelled before it started")
        return len(ids)

    def reset(self, states: Iterable[JobState], task_ids: Iterable[str] | None = None) -> int:
        """Put tasks in ``states`` back in the queue (their attempts stay in the ledger)."""
        values = [s.value for s in states]
        marks = ",".join("?" * len(values))
        with self.transaction() as conn:
            rows = conn.execute(f"SELECT task_id FROM tasks WHERE state IN ({marks})", values).fetchall()
            ids = [r[0] for r in rows]
            if task_ids is not None:
                wanted = set(task_ids)
                ids = [i for i in ids if i in wanted]
            for tid in ids:
                conn.execute("UPDATE tasks SET state=?, detail='queued again', retry_at=NULL WHERE task_id=?",
                             (JobState.PENDING.value, tid))
                self._event(conn, tid, None, JobState.PENDING, detail="queued again")
        return len(ids)

    # -- reads ------------------------------------------------------------------------
    def reader(self) -> sqlite3.Connection:
        """A fresh read connection (safe from any thread)."""
        if not (self.directory / LEDGER).exists():
            raise StoreError(f"{self.directory / LEDGER} vanished; was the sweep directory removed?")
        return _connect(self.directory / LEDGER)

    def pending(self, limit: int, after_idx: int = -1) -> list[sqlite3.Row]:
        """Pending tasks that are due (not waiting out a retry backoff), in order."""
        return self.conn.execute(
            "SELECT task_id, idx, params, requires FROM tasks WHERE state=? AND idx>? "
            "AND (retry_at IS NULL OR retry_at <= ?) ORDER BY idx LIMIT ?",
            (JobState.PENDING.value, after_idx, time.time(), limit),
        ).fetchall()

    def in_flight(self) -> list[sqlite3.Row]:
        """Attempts that were started (or about to be) and have not ended: to re-adopt."""
        states = [s.value for s in JobState if s.is_active]
        marks = ",".join("?" * len(states))
        return self.conn.execute(
            f"SELECT task_id, attempt, source, job_name, job_id, state, params FROM tasks WHERE state IN ({marks})",
            states,
        ).fetchall()

    def counts(self) -> dict[str, int]:
        """Number of tasks in each state."""
        with contextlib.closing(self.reader()) as conn:
            return dict(conn.execute("SELECT state, COUNT(*) FROM tasks GROUP BY state").fetchall())
