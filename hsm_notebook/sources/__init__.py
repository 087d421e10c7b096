"""Compute sources: one module per backend."""

from .local import LocalComputeSource, LocalJobManager
from .slurm import SlurmComputeSource
from .ssh import SSHComputeSource
from .ssh_jobs import RemoteJobManager

__all__ = ["LocalComputeSource", "LocalJobManager", "RemoteJobManager", "SSHComputeSource", "SlurmComputeSource"]
