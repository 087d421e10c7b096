"""Compute sources: one module per backend."""

from .local import LocalComputeSource, LocalJobManager

__all__ = ["LocalComputeSource", "LocalJobManager"]
