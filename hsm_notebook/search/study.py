"""Optuna as the engine's searcher: the study lives in the sweep folder (``study.log``, Optuna's
journal file), so ``optuna.load_study``, optuna-dashboard (``optuna-dashboard study.log``) and
jupyterlab-optuna open it as they open any study.  The journal, not Optuna's SQLite schema: an
append-only log each write adds a line to (measured here: 4 ms per ask+tell with TPE against
22 ms on SQLite, whose commits and re-reads dominated the controller), replayed on open, so a
controller killed mid-write leaves every finished operation.

:class:`OptunaSearch` implements ``core.engine.trials.Searcher``: each trial is asked for with
``study.ask`` when a slot frees, its intermediate values are ``report``-ed as they are read and
the study's pruner decides, and its end is ``tell``-ed (``skip_if_finished``, so telling again
after a restart changes nothing).  Optuna is imported only here (``pip install
hsm_notebook[search]``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..core.model.errors import ConfigError
from ..core.model.state import JobState
from ..core.spec.search import Categorical, Float, Int, Search
from ..core.spec.space import _jsonable

#: The study's file in the sweep folder; the study's name is the sweep's id.
STUDY_FILE = "study.log"


def optuna_module() -> Any:
    """``optuna``, or a ConfigError saying how to install it."""
    try:
        import optuna
    except ImportError:
        raise ConfigError("a search needs Optuna, which is not installed: pip install 'hsm_notebook[search]' "
                          "(or pip install optuna)", "search") from None
    return optuna


def storage(directory: str | Path) -> Any:
    """The study's storage, as ``optuna.load_study(storage=...)`` takes it (a ``JournalStorage``)."""
    optuna = optuna_module()
    from optuna.storages.journal import JournalFileBackend

    return optuna.storages.JournalStorage(JournalFileBackend(str(Path(directory).absolute() / STUDY_FILE)))


def load_study(directory: str | Path, study_name: str, search: Search | None = None) -> Any:
    """The study of the search in ``directory`` (made by its first run), with the search's sampler
    and pruner (``study.pruner`` is the one the search runs with)."""
    optuna = optuna_module()
    kwargs = {}
    if search is not None:
        space = None if search.define_by_run else dict(search.space)  # type: ignore[arg-type]
        kwargs = {"sampler": make_sampler(search.sampler, search.seed, space),
                  "pruner": make_pruner(search.pruner if search.prunes else None)}
    try:
        return optuna.load_study(study_name=study_name, storage=storage(directory), **kwargs)
    except KeyError:
        raise ConfigError(f"the search in {directory} has not started yet: no study {study_name!r} in "
                          f"{STUDY_FILE}; start() or run() it first", "study") from None


def make_sampler(spec: Any, seed: int | None, space: Mapping[str, Any] | None) -> Any:
    """A sampler from its short name and arguments (``{"type": "tpe", ...}``), or the object given."""
    optuna = optuna_module()
    if not isinstance(spec, Mapping):
        if not isinstance(spec, optuna.samplers.BaseSampler):
            raise ConfigError(f"must be a short name or an Optuna sampler, got {type(spec).__name__}", "sampler")
        return spec
    kind, kwargs = spec["type"], {k: v for k, v in spec.items() if k != "type"}
    kwargs.setdefault("seed", seed)
    s = optuna.samplers
    try:
        if kind == "tpe":  # several trials run at once: the liar keeps them apart
            return s.TPESampler(**{"constant_liar": True, "multivariate": True, **kwargs})
        if kind == "grid":
            return s.GridSampler({k: list(d.choices) for k, d in (space or {}).items()}, **kwargs)
        classes = {"random": s.RandomSampler, "cmaes": s.CmaEsSampler, "gp": s.GPSampler, "qmc": s.QMCSampler,
                   "nsga2": s.NSGAIISampler}
        return classes[kind](**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{kind}: {exc}", "sampler") from None


def make_pruner(spec: Any) -> Any:
    optuna = optuna_module()
    if spec is None:
        return optuna.pruners.NopPruner()
    if not isinstance(spec, Mapping):
        if not isinstance(spec, optuna.pruners.BasePruner):
            raise ConfigError(f"must be a short name or an Optuna pruner, got {type(spec).__name__}", "pruner")
        return spec
    kind, kwargs = spec["type"], {k: v for k, v in spec.items() if k != "type"}
    p = optuna.pruners
    classes = {"median": p.MedianPruner, "percentile": p.PercentilePruner, "hyperband": p.HyperbandPruner,
               "asha": p.SuccessiveHalvingPruner, "threshold": p.ThresholdPruner, "wilcoxon": p.WilcoxonPruner,
               "none": p.NopPruner}
    if kind == "percentile":
        kwargs.setdefault("percentile", 25.0)
    try:
        return classes[kind](**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{kind}: {exc}", "pruner") from None


def _distribution(d: Float | Int | Categorical) -> Any:
    dist = optuna_module().distributions
    if isinstance(d, Categorical):
        return dist.CategoricalDistribution(d.choices)
    if isinstance(d, Int):
        return dist.IntDistribution(d.low, d.high, log=d.log, step=d.step)
    return dist.FloatDistribution(d.low, d.high, log=d.log, step=d.step)


class OptunaSearch:
    """The built-in searcher (see the module's docstring)."""

    def __init__(self, spec: Search, directory: str | Path, study_name: str, objective: Mapping[str, str]) -> None:
        optuna = optuna_module()
        self.spec, self.objective = spec, dict(objective)
        self.directions = ["minimize" if d == "min" else "maximize" for d in self.objective.values()]
        self.space = None if spec.define_by_run else dict(spec.space)  # type: ignore[arg-type]
        self.sampler = make_sampler(spec.sampler, spec.seed, self.space)
        self.pruner = make_pruner(spec.pruner if spec.prunes else None)
        self.study = optuna.create_study(storage=storage(directory), study_name=study_name, sampler=self.sampler,
                                         pruner=self.pruner, directions=self.directions, load_if_exists=True)
        self._distributions = ({k: _distribution(d) for k, d in self.space.items()}
                               if self.space is not None else None)
        self._reported: dict[int, set[int]] = {}  # steps already reported, per trial (a re-read repeats them)
        self._ids: dict[int, int] = {}

    # -- the Searcher protocol ------------------------------------------------------------
    def running(self) -> dict[int, dict[str, Any]]:
        """Trials asked for and not told, with their parameters; one whose parameters cannot be
        made whole again (the controller stopped while a define-by-run function ran) is told FAIL."""
        optuna = optuna_module()
        out = {}
        for t in self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            try:
                out[t.number] = self._params_of(t)
            except Exception as exc:  # noqa: BLE001 - said in the trial's note, never dropped silently
                self._note(t.number, f"asked, but its parameters could not be made whole again after a restart "
                                     f"({type(exc).__name__}: {exc})")
                self.study.tell(t.number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
        return out

    def suggest(self) -> tuple[int, dict[str, Any]] | None:
        optuna = optuna_module()
        trial = self.study.ask(self._distributions)
        try:
            params = self._params(trial)
        except BaseException:
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
            raise
        return trial.number, params

    def observe(self, number: int, step: int, value: float) -> str | None:
        if not self.spec.prunes:
            return None  # nothing decides on it: the curve stays in the ledger, no write to the study
        optuna = optuna_module()
        trial = optuna.trial.Trial(self.study, self._trial_id(number))
        seen = self._reported.get(number)
        if seen is None:
            seen = self._reported[number] = set(self.study._storage.get_trial(self._trial_id(number))
                                                .intermediate_values)
        if step in seen or not math.isfinite(value):
            return None
        seen.add(step)
        trial.report(value, step)
        if trial.should_prune():
            metric = next(iter(self.objective))
            return f"{type(self.pruner).__name__} found {metric}={value:.4g} at step {step} not promising"
        return None

    def complete(self, number: int, state: JobState, values: Sequence[float] | None, note: str | None) -> None:
        optuna = optuna_module()
        done = {JobState.COMPLETED: optuna.trial.TrialState.COMPLETE, JobState.PRUNED: optuna.trial.TrialState.PRUNED}
        self._reported.pop(number, None)
        frozen = self.study._storage.get_trial(self._trial_id(number))
        if frozen.state.is_finished():  # run again by complete()/retry_failed(): Optuna never reopens a trial
            if state == JobState.COMPLETED and values:
                self.study.add_trial(optuna.trial.create_trial(
                    params=frozen.params, distributions=frozen.distributions, values=list(values),
                    user_attrs={"hsm.retry_of": number}))
            return
        if note:
            self._note(number, note)
        try:
            self.study.tell(number, list(values) if state == JobState.COMPLETED and values else None,
                            state=done.get(state, optuna.trial.TrialState.FAIL), skip_if_finished=True)
        except RuntimeError as exc:  # GridSampler calls study.stop() after its last point, outside optimize()
            if "stop" not in str(exc):
                raise  # (the trial's end was stored before: only the stop is refused)

    def exhausted(self) -> str | None:
        is_exhausted = getattr(self.sampler, "is_exhausted", None)
        if callable(is_exhausted) and is_exhausted(self.study):
            return "every point of the grid was asked for"
        return None

    # -- helpers --------------------------------------------------------------------------
    def _params(self, trial: Any) -> dict[str, Any]:
        if self.space is not None:
            return {**self.spec.fixed, **trial.params}
        made = self.spec.space(trial)  # type: ignore[operator]
        if not isinstance(made, Mapping):
            raise ConfigError(f"the search space function must return a dict of parameters, got "
                              f"{type(made).__name__}", "space")
        return {**self.spec.fixed, **{str(k): _jsonable(v, f"space.{k}") for k, v in made.items()}}

    def _params_of(self, frozen: Any) -> dict[str, Any]:
        if self.space is not None:
            return {**self.spec.fixed, **frozen.params}
        return self._params(optuna_module().trial.FixedTrial(frozen.params, frozen.number))

    def _trial_id(self, number: int) -> int:
        if number not in self._ids:
            storage = self.study._storage
            self._ids[number] = storage.get_trial_id_from_study_id_trial_number(self.study._study_id, number)
        return self._ids[number]

    def _note(self, number: int, note: str) -> None:
        """Why a trial ended as it did, kept with it in the study (``user_attrs["hsm.note"]``)."""
        try:
            self.study._storage.set_trial_user_attr(self._trial_id(number), "hsm.note", note[:2000])
        except Exception:  # noqa: BLE001,S110 - a finished trial takes no attribute: its end was told already
            pass
