"""The one call a Python job makes to report its metrics.

Kept free of heavy imports (no pandas): it runs inside every job.

    from hsm_notebook.metrics import log_metrics
    log_metrics(step=epoch, loss=0.31)          # while it runs: a curve, seen live in sweep.metrics()
    log_metrics(val_loss=0.12, accuracy=0.97)   # final metrics: the row of sweep.results()

A job in any language reports steps by appending a JSON line to ``$HSM_TASK_DIR/metrics.jsonl``:
``{"step": 10, "loss": 0.31}``.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.json"
STEPS_FILE = "metrics.jsonl"


def task_dir() -> Path | None:
    """The job's own directory when run by hsm_notebook (``HSM_TASK_DIR``), else None."""
    value = os.environ.get("HSM_TASK_DIR")
    return Path(value) if value else None


def log_metrics(metrics: Mapping[str, Any] | None = None, *, step: float | None = None,
                **values: Any) -> dict[str, Any]:
    """Report metrics.

    With ``step`` (an epoch, an iteration): intermediate values, appended as one JSON line to
    ``metrics.jsonl``; the sweep reads them while the job runs (``sweep.metrics()``, live curves).
    Without: merge ``metrics`` and ``values`` into the job's final ``metrics.json`` (atomically);
    calling it again adds or overwrites keys.  Outside a sweep (no ``HSM_TASK_DIR``) the metrics
    are printed as one JSON line.
    """
    new = {**(metrics or {}), **values}
    directory = task_dir()
    if step is not None:
        line = json.dumps({"step": step, "time": time.time(), **new}, default=float)
        if directory is None:
            print(line)
        else:
            with open(directory / STEPS_FILE, "a") as f:  # one write of a whole line: readers never see half
                f.write(line + "\n")
        return new
    if directory is None:
        print(json.dumps(new, default=str))
        return new
    path = directory / METRICS_FILE
    merged: dict[str, Any] = {}
    if path.exists():
        try:
            merged = json.loads(path.read_text())
        except ValueError:
            merged = {}
    merged.update(new)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".metrics.")
    with os.fdopen(fd, "w") as f:
        json.dump(merged, f, default=float)
    os.replace(tmp, path)
    return merged
