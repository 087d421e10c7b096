"""Compute sources: one module per backend."""

from .local import LocalComputeSource, LocalJobManager
from .ssh import RemoteJobManager, SSHComputeSource

__all__ = ["LocalComputeSource", "LocalJobManager", "RemoteJobManager", "SSHComputeSource"]
