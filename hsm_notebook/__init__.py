"""hsm_notebook: parameter sweeps from a Jupyter notebook, on this machine, SSH hosts and Slurm.

Names are imported lazily, so ``from hsm_notebook.metrics import log_metrics`` inside a
job stays cheap (no pandas import).
"""

from __future__ import annotations

from typing import Any

from ._lazy import lazy

__version__ = "0.1.0"

_EXPORTS = {
    "ParameterSpace": "core.spec.space",
    "task_id": "core.spec.space",
    "Sweep": "core.sweep",
    "SweepExecutor": "core.executor",
    "Search": "core.spec.search",
    "Float": "core.spec.search",
    "Int": "core.spec.search",
    "Categorical": "core.spec.search",
    "SweepFile": "core.spec.config",
    "JobState": "core.model.state",
    "JobInfo": "core.model.state",
    "ResourceSpec": "core.model.state",
    "ComputeSourceStats": "core.model.state",
    "JobOutcome": "core.model.state",
    "JobTemplate": "core.spec.job",
    "Environment": "core.spec.environment",
    "ComputeSource": "core.base.source",
    "DistributedJobManager": "core.engine.manager",
    "SweepStore": "core.ledger.store",
    "RetryPolicy": "core.engine.retry",
    "Event": "core.ledger.events",
    "LocalComputeSource": "sources.local",
    "LocalJobManager": "sources.local",
    "SSHComputeSource": "sources.ssh",
    "RemoteJobManager": "sources.ssh_jobs",
    "SlurmComputeSource": "sources.slurm",
    "SGEComputeSource": "sources.sge",
    "PBSComputeSource": "sources.pbs",
    "ConnectError": "core.model.errors",
    "log_metrics": "metrics",
    "HsmError": "core.model.errors",
    "ConfigError": "core.model.errors",
    "StoreError": "core.model.errors",
    "SweepLockedError": "core.model.errors",
    "SourceError": "core.model.errors",
    "SubmitError": "core.model.errors",
    "CommandError": "core.model.errors",
    "SweepPanel": "ui.panel",  # ipywidgets is imported only when the panel is asked for
    "compare": "ui.compare",  # sweeps' results in one frame with a ``sweep`` column (CompareView draws them)
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy(__name__, _EXPORTS, globals())


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext hsm_notebook``: registers the ``%hsm`` magic."""
    from .ui.magic import register

    register(ipython)
