"""Adaptive search over every source: Optuna's samplers and pruners drive a sweep.

``Search`` (what is searched, by what, for how long) is declared in ``core.spec.search``;
``OptunaSearch`` here is the built-in searcher the engine asks for trials (``study.py``).
"""

from __future__ import annotations

from ..core.spec.search import PRUNERS, SAMPLERS, Categorical, Float, Int, Search

__all__ = ["Categorical", "Float", "Int", "PRUNERS", "SAMPLERS", "Search"]
