"""Files every layer writes or finds: a write a reader (or a crash) sees whole or not at all, and
where sweeps go by default."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def default_sweeps_dir() -> Path:
    return Path(os.environ.get("HSM_SWEEPS_DIR", Path.cwd() / "sweeps"))


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
