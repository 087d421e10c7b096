"""Parameter importances for any sweep: Optuna's evaluators over the finished tasks.

A search has a study; a grid does not, so its completed tasks are copied into an in-memory study
(``optuna.create_study()`` + ``add_trials``) with distributions read from the values: a log float
(or int) for positive values spanning decades, a float or int range otherwise, a categorical for
text and booleans.  Then ``optuna.importance.get_param_importances`` (PED-ANOVA by default) ranks
them.  Every parameter that varied among the completed tasks gets a row, even one Optuna left out.
"""

from __future__ import annotations

import logging
import math
import numbers
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from ...core.model.errors import ConfigError
from . import axes


def finished(frame: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The completed tasks with a finite value of ``metric``."""
    if metric not in frame.columns or frame.empty:
        return frame.iloc[:0]
    done = frame[frame["state"].astype(str) == "COMPLETED"] if "state" in frame.columns else frame
    values = pd.to_numeric(done[metric], errors="coerce")
    return done[values.notna() & values.abs().ne(math.inf)]


def varying(frame: pd.DataFrame, params: Sequence[str]) -> list[str]:
    """The parameters that took more than one value in ``frame``."""
    return [p for p in params if p in frame.columns and frame[p].map(repr).nunique() > 1]


def problem(frame: pd.DataFrame, params: Sequence[str], metric: str) -> str | None:
    """Why importances of ``metric`` cannot be computed from ``frame`` yet, in words; None when they can."""
    done = finished(frame, metric)
    if len(done) < 2:
        return (f"Parameter importances need at least 2 completed tasks with {metric}; {len(done)} so far "
                "(pruned and failed tasks do not count).")
    if not varying(done, params):
        return (f"No parameter took more than one value across the {len(done)} completed tasks, so none can be "
                "said to matter more than another.")
    return None


def distribution(values: Sequence[Any]) -> Any:
    """The Optuna distribution a parameter's values were drawn from, as far as they tell: log when
    they span decades (see ``axes.auto_scale``), int when all are whole, categorical for text."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    scale = axes.auto_scale(values)
    if scale == axes.CATEGORY:
        return CategoricalDistribution(sorted({_choice(v) for v in values}, key=repr))
    numbers_ = [float(v) for v in values]
    low, high = min(numbers_), max(numbers_)
    if all(isinstance(v, numbers.Integral) for v in values):
        return IntDistribution(int(low), int(high), log=scale == axes.LOG)
    return FloatDistribution(low, high, log=scale == axes.LOG)


def _choice(value: Any) -> Any:
    """A value Optuna takes as a categorical choice (None, bool, int, float, str)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return axes.fmt(value)


def study_of(frame: pd.DataFrame, params: Sequence[str], metric: str, minimize: bool) -> Any:
    """An in-memory Optuna study holding each completed task of ``frame`` as a trial (its varying
    ``params`` and its ``metric``)."""
    optuna = _optuna()
    done = finished(frame, metric)
    moving = varying(done, params)
    columns = {p: [_choice(axes.plain(v)) for v in done[p].tolist()] for p in moving}
    dists = {p: distribution(columns[p]) for p in moving}
    values = pd.to_numeric(done[metric], errors="coerce").tolist()
    trials = []
    for i, value in enumerate(values):
        row = {p: columns[p][i] for p in moving}
        if any(v is None or (isinstance(v, float) and math.isnan(v)) for v in row.values()):
            continue  # a task without this parameter (a define-by-run branch): not a trial of the copy
        row = {p: (int(v) if isinstance(dists[p], optuna.distributions.IntDistribution) else v)
               for p, v in row.items()}
        trials.append(optuna.trial.create_trial(params=row, distributions=dists, value=float(value)))
    quiet = logging.getLogger("optuna.storages._in_memory")  # "A new study created in memory": not the user's
    hush = _Hush()
    quiet.addFilter(hush)
    try:
        study = optuna.create_study(direction="minimize" if minimize else "maximize")
    finally:
        quiet.removeFilter(hush)
    study.add_trials(trials)
    return study


def _optuna() -> Any:
    """``optuna``, or a ConfigError saying that the importances need it and how to install it."""
    try:
        import optuna
    except ImportError:
        raise ConfigError("parameter importances use Optuna's evaluators, and Optuna is not installed: "
                          "pip install optuna (or pip install 'hsm_notebook[search]')", "importance") from None
    return optuna


class _Hush(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("A new study created in memory")


def importances(frame: pd.DataFrame, params: Sequence[str], metric: str, minimize: bool,
                study: Any = None, evaluator: Any = None) -> list[tuple[str, float]]:
    """``(parameter, share)`` rows, the most important first, for every parameter that varied
    among the completed tasks.  ``study``: the search's own (its declared distributions), else an
    in-memory copy of ``frame`` (:func:`study_of`)."""
    optuna = _optuna()
    study = study if study is not None else study_of(frame, params, metric, minimize)
    with warnings.catch_warnings():  # "too few trials" and the like: the chart's title says how many
        warnings.simplefilter("ignore")
        found = optuna.importance.get_param_importances(study, evaluator=evaluator)
    return rows(found, varying(finished(frame, metric), params))


def rows(found: Mapping[str, float], moving: Sequence[str]) -> list[tuple[str, float]]:
    """Optuna's importances as rows: every parameter in ``moving`` (0 when Optuna left it out), and
    any other it ranked marked as such, the most important first."""
    out = {name: float(found.get(name, 0.0)) for name in moving}
    for name, value in found.items():
        if name not in out:
            out[f"{name} (did not vary)"] = float(value)
    return sorted(out.items(), key=lambda r: -r[1])
