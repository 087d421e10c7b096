"""Widgets: a thin view over a ``Sweep`` (``SweepPanel``) and the ``%hsm`` magic."""

from .panel import SweepPanel

__all__ = ["SweepPanel"]
