"""The one call a Python job makes to report its metrics.

Kept free of heavy imports (no pandas): it runs inside every job.

    from hsm_notebook.metrics import log_metrics
    log_metrics(val_loss=0.12, accuracy=0.97)
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping, Optional

METRICS_FILE = "metrics.json"


def task_dir() -> Optional[Path]:
    """The job's own directory when run by hsm_notebook (``HSM_TASK_DIR``), else None."""
    value = os.environ.get("HSM_TASK_DIR")
    return Path(value) if value else None


def log_metrics(metrics: Optional[Mapping[str, Any]] = None, **values: Any) -> dict[str, Any]:
    """Merge ``metrics`` and ``values`` into the job's ``metrics.json`` (atomically).

    Calling it again adds or overwrites keys, so a script may report as it goes.
    Outside a sweep (no ``HSM_TASK_DIR``) the metrics are printed as one JSON line.
    """
    new = {**(metrics or {}), **values}
    directory = task_dir()
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
