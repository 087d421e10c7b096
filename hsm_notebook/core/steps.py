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
import time
from pathlib import Path
from typing import Iterable, Optional

STEPS_FILE = "metrics.jsonl"
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


def read_local(paths: dict[str, tuple[Path, int]]) -> dict[str, bytes]:
    """``{job_id: (folder, offset)}`` -> the new bytes of each folder's ``metrics.jsonl``."""
    out: dict[str, bytes] = {}
    for job_id, (folder, offset) in paths.items():
        try:
            with open(folder / STEPS_FILE, "rb") as f:
                f.seek(offset)
                data = f.read(MAX_READ)
        except FileNotFoundError:
            continue
        if data:
            out[job_id] = data
    return out


def best_so_far(values: Iterable[tuple[float, float]], minimize: bool) -> list[tuple[float, float]]:
    """``(time, value)`` pairs in time order -> the running best (a step line for a plot)."""
    out: list[tuple[float, float]] = []
    best: Optional[float] = None
    for t, v in sorted(values):
        if best is None or (v < best if minimize else v > best):
            best = v
            out.append((t, v))
    return out
