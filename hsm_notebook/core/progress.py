"""The text progress line a blocking ``run()``/``wait()`` shows, like tqdm's: counts by state,
completions per second, the best value so far; one line rewritten in place (``\\r``) on a
terminal or in a notebook's output, quiet with ``progress=False`` (and by default wherever
nobody reads it: not a terminal, not a Jupyter kernel).

Each line costs one ``GROUP BY`` of the ledger and, when completions changed, one aggregate of
the objective over completed tasks (at most every ``_BEST_EVERY`` s), so it stays cheap at a
million tasks.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from .ledger.store import SweepStore
from .model.state import JobState

_EVERY = 0.5  # seconds between lines
_BEST_EVERY = 5.0  # seconds between reads of the best value (a scan of the completed tasks)


def in_kernel() -> bool:
    """Running in a Jupyter kernel (not a terminal IPython, not a script)?"""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None  # type: ignore[attr-defined]
    return type(shell).__name__ == "ZMQInteractiveShell"


def wanted(progress: bool | None, stream: TextIO) -> bool:
    """Show the line?  ``progress`` as given, else only where someone reads it: a terminal, or a
    Jupyter kernel (where it is one output updated in place, not red stderr)."""
    if progress is not None:
        return bool(progress)
    if in_kernel():
        return True
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


class _Cell:
    """The line as one output of the running cell, updated in place (IPython's display handle)."""

    def __init__(self) -> None:
        self.handle: Any = None

    def show(self, text: str) -> None:
        from IPython.display import display

        class Line:  # plain text: the notebook shows it as the cell's output, no HTML needed
            def __repr__(self) -> str:
                return text

        if self.handle is None:
            self.handle = display(Line(), display_id=True)
        else:
            self.handle.update(Line())


class ProgressLine:
    """``sweep 20261207-x: 34/100 ended (30 completed, 2 failed, 2 pruned) · 4 running · 1.2/s ·
    best val_loss 0.0123``, rewritten in place."""

    def __init__(self, store: SweepStore, name: str, objective: tuple[str, bool] | None,
                 stream: TextIO | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.store, self.name, self.objective = store, name, objective
        self.stream = stream if stream is not None else sys.stderr
        self.cell = _Cell() if stream is None and in_kernel() else None
        self.clock = clock
        self._start = clock()
        self._first_ended: int | None = None
        self._best: float | None = None
        self._best_at = -_BEST_EVERY
        self._best_ended = -1
        self._width = 0

    def text(self, final: bool = False) -> str:
        counts = self.store.counts()
        total = sum(counts.values())
        ended = sum(n for s, n in counts.items() if JobState(s).is_terminal)
        if self._first_ended is None:
            self._first_ended = ended
        running = counts.get(JobState.RUNNING, 0)
        parts = [f"{n} {s.lower()}" for s, n in sorted(counts.items())
                 if JobState(s).is_terminal and n and s != JobState.COMPLETED]
        done = counts.get(JobState.COMPLETED, 0)
        what = f"{ended:,}/{total:,} ended ({done:,} completed{', ' if parts else ''}{', '.join(parts)})"
        line = [f"sweep {self.name}: {what}"]
        if running:
            line.append(f"{running:,} running")
        elapsed = self.clock() - self._start
        if elapsed > 0 and ended > self._first_ended:
            line.append(f"{(ended - self._first_ended) / elapsed:.2g}/s")
        best = self._best_value(done, final)
        if best is not None and self.objective is not None:
            line.append(f"best {self.objective[0]} {best:.4g}")
        return " · ".join(line)

    def _best_value(self, completed: int, now: bool = False) -> float | None:
        if self.objective is None or completed == self._best_ended or (
                not now and self.clock() - self._best_at < _BEST_EVERY):
            return self._best
        self._best_at, self._best_ended = self.clock(), completed
        metric, minimize = self.objective
        path = "$." + json.dumps(metric)  # a quoted key: dots in metric names stay part of the name
        with contextlib.closing(self.store.reader()) as conn:
            row = conn.execute(f"SELECT {'MIN' if minimize else 'MAX'}(CAST(json_extract(metrics, ?) AS REAL)) "
                               "FROM tasks WHERE state='COMPLETED' AND json_valid(metrics)", (path,)).fetchone()
        self._best = row[0] if row and row[0] is not None else self._best
        return self._best

    def show(self, final: bool = False) -> None:
        try:
            text = self.text(final)
        except Exception:  # noqa: BLE001 - a line that cannot be read is skipped: the wait goes on
            return
        if self.cell is not None:
            self.cell.show(text)
            return
        pad = max(0, self._width - len(text))
        self._width = len(text)
        self.stream.write("\r" + text + " " * pad + ("\n" if final else ""))
        self.stream.flush()


def wait_with_line(wait: Callable[[float], Any], line: ProgressLine, timeout: float | None) -> None:
    """``wait(seconds)`` (raising ``TimeoutError`` while not done) in steps of ``_EVERY``, a line after
    each; the last line stays."""
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while True:
            step = _EVERY if deadline is None else max(0.0, min(_EVERY, deadline - time.monotonic()))
            try:
                wait(step)
                return
            except TimeoutError:
                if deadline is not None and time.monotonic() >= deadline:
                    raise
            line.show()
    finally:
        line.show(final=True)


_CREATION_SHOWN = 200_000  # tasks from which making the ledger takes long enough to show


def creation(name: str, total: int, stream: TextIO | None = None) -> Callable[[int], None] | None:
    """``report(rows so far)`` for a sweep being created, shown where someone reads it and only for
    big sweeps; None otherwise.  Its last call (all rows) ends the line."""
    out = stream if stream is not None else sys.stderr
    if total < _CREATION_SHOWN or not wanted(None, out):
        return None
    if stream is None and in_kernel():
        cell = _Cell()
        return lambda done: cell.show(f"creating sweep {name}: {done:,}/{total:,} tasks written")

    def report(done: int) -> None:
        end = "\n" if done >= total else ""
        out.write(f"\rcreating sweep {name}: {done:,}/{total:,} tasks written{end}")
        out.flush()

    return report
