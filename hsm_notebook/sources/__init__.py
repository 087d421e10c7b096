"""Compute sources: one module per backend.

Names are imported lazily, so a local sweep never imports asyncssh (~1.3 s).
"""

from __future__ import annotations

from .._lazy import lazy

_EXPORTS = {
    "LocalComputeSource": "local",
    "LocalJobManager": "local",
    "SSHComputeSource": "ssh",
    "RemoteJobManager": "ssh_jobs",
    "SlurmComputeSource": "slurm",
    "SGEComputeSource": "sge",
    "PBSComputeSource": "pbs",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy(__name__, _EXPORTS, globals())
