"""hsm_notebook: parameter sweeps from a Jupyter notebook, on this machine, SSH hosts and Slurm.

Names are imported lazily, so ``from hsm_notebook.metrics import log_metrics`` inside a
job stays cheap (no pandas import).
"""

from __future__ import annotations

from typing import Any

from ._lazy import lazy

__version__ = "0.1.0"

_EXPORTS = {
    "ParameterSpace": "core.space",
    "task_id": "core.space",
    "Sweep": "core.sweep",
    "SweepFile": "core.config",
    "JobState": "core.state",
    "JobInfo": "core.state",
    "ResourceSpec": "core.state",
    "ComputeSourceStats": "core.state",
    "JobOutcome": "core.state",
    "JobTemplate": "core.job",
    "Environment": "core.environment",
    "ComputeSource": "core.source",
    "DistributedJobManager": "core.manager",
    "SweepStore": "core.store",
    "RetryPolicy": "core.retry",
    "Event": "core.events",
    "LocalComputeSource": "sources.local",
    "LocalJobManager": "sources.local",
    "SSHComputeSource": "sources.ssh",
    "RemoteJobManager": "sources.ssh_jobs",
    "SlurmComputeSource": "sources.slurm",
    "ConnectError": "core.errors",
    "log_metrics": "metrics",
    "HsmError": "core.errors",
    "ConfigError": "core.errors",
    "StoreError": "core.errors",
    "SweepLockedError": "core.errors",
    "SourceError": "core.errors",
    "SubmitError": "core.errors",
    "CommandError": "core.errors",
    "SweepPanel": "ui.panel",  # ipywidgets is imported only when the panel is asked for
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy(__name__, _EXPORTS, globals())


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext hsm_notebook``: registers the ``%hsm`` magic."""
    from .ui.magic import register

    register(ipython)
