"""Compute sources: one module per backend.

Names are imported lazily, so a local sweep never imports asyncssh (~1.3 s).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "LocalComputeSource": "local",
    "LocalJobManager": "local",
    "SSHComputeSource": "ssh",
    "RemoteJobManager": "ssh_jobs",
    "SlurmComputeSource": "slurm",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
