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
import copy
import glob
import itertools
import json
import sqlite3
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from ..model.errors import ConfigError, StoreError
from ..model.files import atomic_write
from ..model.state import JobOutcome, JobState
from ..spec.jobpaths import JobPaths
from . import steps, trials
from .events import Event
from .sweepdir import (
    CREATING,
    LEDGER,
    RECORD,
    build_folder,
    check_new,
    discard,
    drop_lock,
    move_into_place,
    take_lock,
    unfinished,
)

_ACTIVE = tuple(s.value for s in JobState if s.is_active)
_CHUNK = 50_000  # rows per executemany while a sweep is created (a progress report after each)
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


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.row_factory = sqlite3.Row
    return conn


def _reader(path: Path, query: str) -> sqlite3.Connection:
    """A read-only connection, checked by one read (SQLite opens its files on first use)."""
    conn = sqlite3.connect(f"file:{urllib.parse.quote(str(path))}?{query}", uri=True, isolation_level=None,
                           check_same_thread=False, timeout=30)
    try:
        conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
    except sqlite3.Error:
        conn.close()
        raise
    conn.row_factory = sqlite3.Row
    return conn


def _requirements(requires: Callable[[dict], Any], params: dict) -> str | None:
    """``requires(params)`` as JSON for the ledger; a value that is not a JSON mapping is a ConfigError."""
    req = requires(params)
    if req is None:
        return None
    shown = repr(params) if len(repr(params)) <= 200 else repr(params)[:200] + "..."
    hint = "return a dict of JSON values such as {'gpus': 1}, or None"
    if not isinstance(req, Mapping):
        raise ConfigError(f"returned a {type(req).__name__} for the task {shown}; {hint}", "requires")
    try:
        return json.dumps(dict(req), allow_nan=False) if req else None
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"returned a {type(req).__name__} that is not JSON for the task {shown} ({exc}); {hint}",
                          "requires") from None


class SweepStore:
    """Reads and writes one sweep directory.  The writer is the controller's loop thread."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self._conn: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        self.on_event: Callable[[Event], None] | None = None
        self._unpublished: list[Event] = []  # events of the open transaction, sent after its commit
        self._record_cache: tuple[tuple[int, int, int], dict[str, Any]] | None = None

    # -- creation and opening ---------------------------------------------------------
    @classmethod
    def create(cls, directory: Path, record: Mapping[str, Any], tasks: Iterable[tuple[str, dict | str]],
               requires: Callable[[dict], Any] | None = None, files: Mapping[str, bytes] | None = None,
               progress: Callable[[int], None] | None = None, product: bool = False) -> SweepStore:
        """A new sweep folder, whole or not at all.

        The ledger, ``sweep.yaml`` and ``tasks/`` are built in a hidden sibling
        ``.<name>.creating-<hex>`` (its controller lock held meanwhile, so others can tell a build
        in progress from a crashed one) and renamed to ``directory`` at the end.  An error removes
        the sibling; a crash leaves only it, which ``open`` and ``create`` name as unfinished.
        ``directory`` may exist if it is empty.  ``files`` (name -> bytes) are written into it too
        (a function sweep's pickled function).  ``product``: the tasks are the recorded space's
        combinations in order (task *i* is combination *i*), so ``status()`` reads parameters from
        the index; any task added later ends that."""
        directory = Path(directory).absolute()
        check_new(directory)
        build = build_folder(directory)
        store = cls(build)
        try:
            store.acquire()
            store._fill(record, tasks, requires, progress, product)
            for name, data in (files or {}).items():
                (build / name).write_bytes(data)
            store.close()
            move_into_place(build, directory)
        except BaseException:
            store.close()
            store.release()
            discard(build)
            raise
        store.directory = directory
        store.release()
        return store

    def _fill(self, record: Mapping[str, Any], tasks: Iterable[tuple[str, dict | str]],
              requires: Callable[[dict], Any] | None, progress: Callable[[int], None] | None = None,
              product: bool = False) -> None:
        """Write the ledger (one PENDING row per task), ``sweep.yaml`` and ``tasks/`` of a new folder.
        ``tasks`` gives each task's parameters as a dict or as their JSON text already made
        (``ParameterSpace.json_rows``); rows go in by the chunk (``progress(rows so far)`` after
        each), in one transaction."""
        conn = self.conn
        conn.executescript(_SCHEMA)
        conn.execute("PRAGMA cache_size=-65536")  # 64 MiB while the rows go in (this connection only)
        conn.execute("BEGIN IMMEDIATE")
        pending = JobState.PENDING.value
        count = 0

        def rows() -> Iterator[tuple[str, int, str, str, str | None]]:
            nonlocal count
            for tid, params in tasks:
                req = None
                if requires is not None:
                    req = _requirements(requires, params if isinstance(params, dict) else json.loads(params))
                yield tid, count, params if isinstance(params, str) else json.dumps(params), pending, req
                count += 1

        source = rows()
        insert = "INSERT INTO tasks (task_id, idx, params, state, requires) VALUES (?, ?, ?, ?, ?)"
        while True:
            chunk = list(itertools.islice(source, _CHUNK))
            if not chunk:
                break
            try:
                conn.executemany(insert, chunk)
            except sqlite3.IntegrityError:
                seen = {r[0] for r in conn.execute("SELECT task_id FROM tasks")}
                twice = next(r[2] for i, r in enumerate(chunk) if r[0] in seen or r[0] in {c[0] for c in chunk[:i]})
                raise ConfigError(f"combination {twice} appears twice; each must be unique", "space") from None
            if progress is not None:
                progress(count)
        if count == 0 and not (record.get("search") or (record.get("origin") or {}).get("executor")):
            # a search's trials are asked for as it runs, an executor's calls submitted as it runs
            raise ConfigError("the parameter space is empty (everything filtered out?)", "space")
        conn.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        if product and count:
            trials.set_meta(conn, "product", "1")
        conn.execute("COMMIT")
        atomic_write(self.directory / RECORD, yaml.safe_dump(dict(record), sort_keys=False))
        JobPaths.tasks_dir(self.directory).mkdir()

    @classmethod
    def open(cls, directory: Path) -> SweepStore:
        """An existing sweep folder; a folder left by an interrupted creation is named as such."""
        directory = Path(directory).absolute()
        problem = unfinished(directory)
        if problem is None and (directory / LEDGER).is_file() and (directory / RECORD).is_file():
            return cls(directory)
        if problem is None and not directory.exists():
            builds = sorted(directory.parent.glob(f".{glob.escape(directory.name)}{CREATING}*"))
            if builds and (problem := unfinished(builds[0])) is not None:
                problem = f"{directory} does not exist: {problem}"
        if problem is None and directory.is_dir() and not any(directory.iterdir()):
            problem = (f"{directory} is an empty folder, not a sweep (an interrupted Sweep(...) can leave one); "
                       "delete it, or give the folder a sweep was created in, e.g. sweeps/<sweep id>")
        raise ConfigError(problem or (
            f"{directory} is not a sweep directory (no {RECORD} and {LEDGER}); "
            "give the folder a sweep was created in, e.g. sweeps/<sweep id>"), "directory")

    @property
    def conn(self) -> sqlite3.Connection:
        """The writer connection (the controller's); a ledger from before ``steps`` gains the table."""
        if self._conn is None:
            self._conn = _connect(self.directory / LEDGER)
            steps.migrate(self._conn)
            trials.migrate(self._conn)
        return self._conn

    def record(self) -> dict[str, Any]:
        """What ``sweep.yaml`` says (parsed again only when the file changed: a copy each time)."""
        path = self.directory / RECORD
        stat = path.stat()
        key = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        if self._record_cache is None or self._record_cache[0] != key:
            self._record_cache = (key, yaml.safe_load(path.read_text()))
        return copy.deepcopy(self._record_cache[1])

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
        """Only one live process drives a sweep (see :func:`~hsm_notebook.core.ledger.sweepdir.take_lock`)."""
        if self._lock_fd is None:
            self._lock_fd = take_lock(self.directory)

    def release(self) -> None:
        """Give up the controller lock."""
        if self._lock_fd is not None:
            drop_lock(self._lock_fd)
            self._lock_fd = None

    # -- writes (controller only) --------------------------------------------------------
    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` ... ``COMMIT``; nested uses join the outer one.

        Events recorded inside are published only after the commit (a listener never sees a
        transition that rolls back, and never holds the write lock).  A failed write of the
        ledger (a full disk, a removed folder) is a :class:`StoreError` that says what to do."""
        conn = self.conn
        if conn.in_transaction:  # nested: join the outer one
            yield conn
            return
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                self._unpublished.clear()
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._unpublished.clear()
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise self.ledger_error(exc) from exc
        events, self._unpublished = self._unpublished, []
        if self.on_event is not None:
            for event in events:
                self.on_event(event)

    def ledger_error(self, exc: sqlite3.Error) -> StoreError:
        """What a failed ledger read or write means for the user, in words."""
        where = self.directory / LEDGER
        text = str(exc)
        if "full" in text or "disk I/O" in text:
            hint = ("free space on that disk, then Sweep.attach(dir) to carry on: jobs still running are "
                    "re-adopted and nothing that started runs again")
        elif "locked" in text:
            hint = "another process holds the ledger's write lock too long; stop it, then Sweep.attach(dir)"
        else:
            hint = "check the sweep folder (was it moved or removed?), then Sweep.attach(dir)"
        return StoreError(f"the ledger {where} cannot be used ({text}); {hint}")

    def _query(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        """A read on the writer connection, with ledger errors in words."""
        try:
            return self.conn.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise self.ledger_error(exc) from exc

    def _event(self, conn, task_id: str, attempt: int | None, state: JobState, source=None, job_id=None, detail=None):
        t = time.time()
        conn.execute(
            "INSERT INTO events (time, task_id, attempt, state, source, job_id, detail) VALUES (?,?,?,?,?,?,?)",
            (t, task_id, attempt, state.value, source, job_id, detail),
        )
        self._unpublished.append(Event(t, task_id, attempt, state, source, job_id, detail))

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
            source = conn.execute("SELECT source FROM attempts WHERE task_id=? AND attempt=?",
                                  (task_id, attempt)).fetchone()
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

    def add_task(self, task_id: str, params: Mapping[str, Any], detail: str, trial: int | None = None) -> bool:
        """A new PENDING task at the end of the queue while the sweep runs (a search's trial: ``trial``
        is its number).  False when the task is there already (nothing is written)."""
        with self.transaction() as conn:
            if conn.execute("SELECT 1 FROM tasks WHERE task_id=?", (task_id,)).fetchone():
                return False
            (idx,) = conn.execute("SELECT COALESCE(MAX(idx), -1) + 1 FROM tasks").fetchone()
            conn.execute("DELETE FROM meta WHERE key='product'")  # the tasks are no longer the space's product
            conn.execute("INSERT INTO tasks (task_id, idx, params, state, detail) VALUES (?, ?, ?, ?, ?)",
                         (task_id, idx, json.dumps(dict(params)),
                          JobState.PENDING.value, detail))
            if trial is not None:
                trials.add(conn, task_id, trial)
            self._event(conn, task_id, None, JobState.PENDING, detail=detail)
        return True

    def add_tasks(self, tasks: Iterable[tuple[str, Mapping[str, Any]]], detail: str) -> int:
        """New PENDING tasks at the end of the queue, in one transaction; a task id already there is
        skipped (it is the same combination, with its own result).  Returns how many were added."""
        added = 0
        with self.transaction() as conn:
            (idx,) = conn.execute("SELECT COALESCE(MAX(idx), -1) + 1 FROM tasks").fetchone()
            conn.execute("DELETE FROM meta WHERE key='product'")  # the tasks are no longer the space's product
            for tid, params in tasks:
                if conn.execute("INSERT OR IGNORE INTO tasks (task_id, idx, params, state, detail) VALUES "
                                "(?, ?, ?, ?, ?)", (tid, idx + added, json.dumps(dict(params)),
                                                    JobState.PENDING.value, detail)).rowcount:
                    self._event(conn, tid, None, JobState.PENDING, detail=detail)
                    added += 1
        return added

    def requeue(self, task_id: str, detail: str, retry_at: float | None = None) -> None:
        """Put a task back in the queue (after a failure, or its source was disabled)."""
        with self.transaction() as conn:
            conn.execute("UPDATE tasks SET state=?, detail=?, retry_at=? WHERE task_id=?",
                         (JobState.PENDING.value, detail, retry_at, task_id))
            self._event(conn, task_id, None, JobState.PENDING, detail=detail)

    def withdraw(self, task_id: str, attempt: int, detail: str) -> bool:
        """Take back the task's current attempt when nothing reached its source (it could not be
        contacted): the task is PENDING again with ``detail`` and no attempt is spent (the next one
        gets the same number); its SUBMITTING event stays in the history.  False if it moved on."""
        with self.transaction() as conn:
            if not conn.execute("DELETE FROM attempts WHERE task_id=? AND attempt=? AND state=? AND job_id IS NULL",
                                (task_id, attempt, JobState.SUBMITTING.value)).rowcount:
                return False
            conn.execute("UPDATE tasks SET state=?, attempt=?, source=NULL, job_name=NULL, submit_time=NULL, detail=? "
                         "WHERE task_id=? AND attempt=?",
                         (JobState.PENDING.value, attempt - 1, detail, task_id, attempt))
            self._event(conn, task_id, attempt, JobState.PENDING, detail=detail)
        return True

    def next_retry(self) -> float | None:
        """When the earliest task waiting out a retry backoff becomes due."""
        return self._query("SELECT MIN(retry_at) FROM tasks WHERE state=? AND retry_at IS NOT NULL",
                           (JobState.PENDING.value,))[0][0]

    def task_state(self, task_id: str) -> JobState:
        """The task's current state."""
        return JobState(self._query("SELECT state FROM tasks WHERE task_id=?", (task_id,))[0][0])

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
        """A fresh read connection (safe from any thread), opened read-only: reading a sweep writes
        nothing, so it works on a full disk or a folder the reader may not write.  Where SQLite
        cannot set up its shared index (the ``-shm`` file cannot grow: a full disk), the index is
        kept in this connection's memory instead (``readonly_shm``: slower, still exact)."""
        path = self.directory / LEDGER
        if not path.exists():
            raise StoreError(f"{path} vanished; was the sweep directory removed?")
        try:
            return _reader(path, "mode=ro")
        except sqlite3.OperationalError:
            pass
        try:
            return _reader(path, "mode=ro&readonly_shm=1")
        except sqlite3.Error as exc:
            raise StoreError(f"the ledger {path} cannot be read ({exc}); free space on that disk (or make the "
                             f"folder readable), then read the sweep again: nothing was changed") from exc

    def pending(self, limit: int, after_idx: int = -1) -> list[sqlite3.Row]:
        """Pending tasks that are due (not waiting out a retry backoff), in order."""
        return self._query(
            "SELECT task_id, idx, params, requires FROM tasks WHERE state=? AND idx>? "
            "AND (retry_at IS NULL OR retry_at <= ?) ORDER BY idx LIMIT ?",
            (JobState.PENDING.value, after_idx, time.time(), limit),
        )

    def in_flight(self) -> list[sqlite3.Row]:
        """Attempts that were started (or about to be) and have not ended: to re-adopt."""
        states = [s.value for s in JobState if s.is_active]
        marks = ",".join("?" * len(states))
        return self._query(
            f"SELECT task_id, attempt, source, job_name, job_id, state, params FROM tasks WHERE state IN ({marks})",
            tuple(states),
        )

    def counts(self) -> dict[str, int]:
        """Number of tasks in each state."""
        with contextlib.closing(self.reader()) as conn:
            return dict(conn.execute("SELECT state, COUNT(*) FROM tasks GROUP BY state").fetchall())
