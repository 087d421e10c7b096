"""A search: what is searched (distributions, or a define-by-run function), by what (a sampler
and a pruner), for how long (trials, time, failures allowed).

Pure declarations, checked when made (a ``ConfigError`` names the field and the fix); Optuna is
not imported here.  ``hsm_notebook.search`` turns them into an Optuna study; the engine asks
that study for trials as slots free (``core.engine.trials``).

>>> Search({"lr": Float(1e-5, 1e-1, log=True), "layers": Int(1, 4), "opt": Categorical(["adam", "sgd"])},
...        n_trials=50, sampler="tpe", pruner="median")                        # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..model.errors import ConfigError
from .space import _jsonable, _name_problem, task_id

#: Short names of Optuna's samplers (any sampler object is accepted too).
SAMPLERS = ("tpe", "random", "cmaes", "gp", "nsga2", "qmc", "grid")
#: Short names of Optuna's pruners (any pruner object is accepted too); "asha" is successive halving.
PRUNERS = ("median", "percentile", "hyperband", "asha", "threshold", "wilcoxon", "none")


@dataclass(frozen=True)
class Float:
    """A real parameter in ``[low, high]``; ``log`` samples its logarithm uniformly (a learning
    rate); ``step`` makes it discrete."""

    low: float
    high: float
    log: bool = False
    step: float | None = None

    def __post_init__(self) -> None:
        _bounds(self, float)
        if self.log and self.step is not None:
            raise ConfigError("log=True and step= cannot go together (Optuna's rule); drop one", "space")


@dataclass(frozen=True)
class Int:
    """An integer parameter in ``[low, high]`` (both included), every ``step``; ``log`` for sizes
    that span decades (a batch size)."""

    low: int
    high: int
    log: bool = False
    step: int = 1

    def __post_init__(self) -> None:
        _bounds(self, int)
        if self.log and self.step != 1:
            raise ConfigError("log=True needs step=1 (Optuna's rule)", "space")


@dataclass(frozen=True)
class Categorical:
    """One of ``choices`` (numbers, strings, booleans or None)."""

    choices: tuple[Any, ...]

    def __init__(self, choices: Sequence[Any]) -> None:
        if isinstance(choices, (str, bytes)) or not isinstance(choices, Sequence) or not choices:
            raise ConfigError(f"needs a non-empty list of choices, got {choices!r}", "space")
        for c in choices:
            if c is not None and not isinstance(c, (bool, int, float, str)):
                raise ConfigError(f"choice {c!r} is a {type(c).__name__}; Optuna's choices are numbers, strings, "
                                  "booleans or None (give an index or a name and map it in the job)", "space")
        object.__setattr__(self, "choices", tuple(choices))


Distribution = Float | Int | Categorical


def _bounds(d: Float | Int, kind: type) -> None:
    name = type(d).__name__
    for what in ("low", "high"):
        v = getattr(d, what)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and not float(v).is_integer()):
            raise ConfigError(f"{name}({what}=...) must be {'an integer' if kind is int else 'a number'}, got {v!r}",
                              "space")
        if not math.isfinite(v):
            raise ConfigError(f"{name}({what}=...) must be finite, got {v!r}", "space")
    if d.low > d.high:
        raise ConfigError(f"{name}({d.low}, {d.high}): low is above high", "space")
    if d.log and d.low <= 0:
        raise ConfigError(f"{name}({d.low}, {d.high}, log=True): a log scale needs low > 0", "space")
    for what in ("low", "high"):
        object.__setattr__(d, what, kind(getattr(d, what)))
    step = d.step
    if step is not None and (isinstance(step, bool) or not isinstance(step, (int, float)) or step <= 0):
        raise ConfigError(f"{name}(step=...) must be a positive number, got {step!r}", "space")


def distribution_to_dict(d: Distribution) -> dict[str, Any]:
    if isinstance(d, Categorical):
        return {"type": "categorical", "choices": list(d.choices)}
    out: dict[str, Any] = {"type": "int" if isinstance(d, Int) else "float", "low": d.low, "high": d.high}
    if d.log:
        out["log"] = True
    if d.step is not None and not (isinstance(d, Int) and d.step == 1):
        out["step"] = d.step
    return out


def distribution_from_dict(data: Mapping[str, Any], name: str = "space") -> Distribution:
    kind = data.get("type")
    try:
        if kind == "categorical":
            return Categorical(data["choices"])
        if kind in ("float", "int"):
            cls = Float if kind == "float" else Int
            extra = {k: data[k] for k in ("log", "step") if k in data}
            return cls(data["low"], data["high"], **extra)
    except KeyError as exc:
        raise ConfigError(f"a {kind} distribution needs {exc.args[0]!r}, got {dict(data)!r}", name) from None
    raise ConfigError(f"type must be float, int or categorical, got {kind!r}", name)


def _named(value: Any, names: Sequence[str], field_: str) -> Any:
    """A sampler or pruner as given: a short name, ``{"type": name, **kwargs}``, or an object."""
    if value is None:
        return None
    if isinstance(value, str):
        value = {"type": value}
    if isinstance(value, Mapping):
        kind = str(value.get("type", "")).lower().replace("-", "_")
        kind = {"successive_halving": "asha", "nsgaii": "nsga2", "cma_es": "cmaes", "nop": "none"}.get(kind, kind)
        if kind not in names:
            raise ConfigError(f"must be one of {', '.join(names)} (or an Optuna object), got {value.get('type')!r}",
                              field_)
        return {**value, "type": kind}
    return value  # an Optuna sampler or pruner object (checked when the study is made)


def describe_object(value: Any) -> Any:
    """How a sampler or pruner is recorded in ``sweep.yaml``: its name and arguments, or its class."""
    if value is None or isinstance(value, Mapping):
        return None if value is None else dict(value)
    return {"object": f"{type(value).__module__}.{type(value).__qualname__}"}


@dataclass
class Search:
    """An adaptive search: the sampler proposes each trial's parameters when a slot frees, the
    pruner stops trials whose intermediate values (``log_metrics(step=...)``) are not promising.

    ``space``: ``{name: Float | Int | Categorical}`` (``fixed`` values go to every trial as they
    are), or a define-by-run function ``space(trial) -> dict`` calling ``trial.suggest_*`` for
    conditional spaces.  ``sampler``/``pruner``: a short name (:data:`SAMPLERS`, :data:`PRUNERS`),
    ``{"type": name, **arguments}``, or any Optuna sampler/pruner object.  Budget: ``n_trials``
    (never exceeded across restarts), ``timeout`` (seconds since the search first started; no new
    trial is asked after it) and ``max_failed`` (the search stops, in words, once that many trials
    failed); at least one of ``n_trials`` and ``timeout``.  ``seed`` seeds a named sampler.
    """

    space: Mapping[str, Distribution] | Callable[[Any], Mapping[str, Any]]
    n_trials: int | None = None
    sampler: Any = "tpe"
    pruner: Any = None
    fixed: Mapping[str, Any] = field(default_factory=dict)
    timeout: float | None = None
    max_failed: int | None = None
    seed: int | None = None
    #: another search library: ``searcher(search, sweep_folder, study_name, objective)`` returns an
    #: object with the engine's ``Searcher`` methods (``core.engine.trials``); None: Optuna.
    searcher: Callable[..., Any] | None = None

    def __post_init__(self) -> None:
        if callable(self.space) and not isinstance(self.space, Mapping):
            pass
        elif isinstance(self.space, Mapping) and self.space:
            for name, dist in self.space.items():
                problem = _name_problem(name) if isinstance(name, str) else "is not a string"
                if problem:
                    raise ConfigError(f"parameter name {name!r} {problem}", "space")
                if not isinstance(dist, (Float, Int, Categorical)):
                    raise ConfigError(f"{name!r} must be Float(low, high), Int(low, high) or Categorical([...]), "
                                      f"got {dist!r}; a constant goes in fixed=", "space")
        else:
            raise ConfigError("must map parameter names to Float/Int/Categorical, or be a function of an Optuna "
                              f"trial returning the parameters, got {self.space!r}", "space")
        if not isinstance(self.fixed, Mapping):
            raise ConfigError(f"must be a mapping of name: value, got {self.fixed!r}", "fixed")
        self.fixed = {k: _jsonable(v, f"fixed.{k}") for k, v in self.fixed.items()}
        if isinstance(self.space, Mapping) and (both := set(self.fixed) & set(self.space)):
            raise ConfigError(f"{sorted(both)} are both searched and fixed; keep each in one place", "fixed")
        for what in ("n_trials", "max_failed"):
            v = getattr(self, what)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ConfigError(f"must be a positive integer, got {v!r}", what)
        if self.timeout is not None and (isinstance(self.timeout, bool) or not isinstance(self.timeout, (int, float))
                                         or self.timeout <= 0):
            raise ConfigError(f"must be a positive number of seconds, got {self.timeout!r}", "timeout")
        if self.n_trials is None and self.timeout is None:
            raise ConfigError("a search needs a budget: give n_trials= (and/or timeout= in seconds)", "n_trials")
        self.sampler = _named(self.sampler, SAMPLERS, "sampler") or {"type": "tpe"}
        self.pruner = _named(self.pruner, PRUNERS, "pruner")
        if isinstance(self.sampler, Mapping) and self.sampler["type"] == "grid" and not (
                isinstance(self.space, Mapping) and all(isinstance(d, Categorical) for d in self.space.values())):
            raise ConfigError("the grid sampler needs every parameter as Categorical([...]) (a grid of values)",
                              "sampler")

    @property
    def define_by_run(self) -> bool:
        return not isinstance(self.space, Mapping)

    @property
    def prunes(self) -> bool:
        return self.pruner is not None and not (isinstance(self.pruner, Mapping) and self.pruner["type"] == "none")

    @property
    def names(self) -> list[str]:
        """The searched parameters (of a define-by-run space: not known before it runs)."""
        return [] if self.define_by_run else list(self.space)  # type: ignore[arg-type]

    def check_objective(self, objective: Mapping[str, str] | None) -> None:
        """A search needs an objective; a pruner needs exactly one metric."""
        if not objective:
            raise ConfigError("a search needs an objective: Sweep(..., objective={'val_loss': 'min'}) (several "
                              "metrics for a multi-objective search)", "objective")
        if len(objective) > 1 and isinstance(self.sampler, Mapping) and self.sampler["type"] == "cmaes":
            raise ConfigError("CMA-ES takes one objective metric; use nsga2 or tpe for several", "sampler")
        if len(objective) > 1 and self.prunes:
            raise ConfigError(f"pruning needs one metric, and the objective has {len(objective)} "
                              f"({', '.join(objective)}); drop the pruner or keep one metric", "pruner")

    def to_dict(self) -> dict[str, Any]:
        """What ``sweep.yaml`` records (objects by class name; they are kept pickled beside it)."""
        space: Any = ({"function": getattr(self.space, "__qualname__", repr(self.space))} if self.define_by_run
                      else {k: distribution_to_dict(d) for k, d in self.space.items()})  # type: ignore[union-attr]
        out = {"space": space, "fixed": dict(self.fixed), "sampler": describe_object(self.sampler),
               "pruner": describe_object(self.pruner), "n_trials": self.n_trials, "timeout": self.timeout,
               "max_failed": self.max_failed, "seed": self.seed}
        if self.searcher is not None:
            out["searcher"] = getattr(self.searcher, "__qualname__", repr(self.searcher))
        return out

    def dumps(self) -> bytes:
        """The search whole (objects and space function included), for :data:`SEARCH_FILE`."""
        import cloudpickle

        try:
            return cloudpickle.dumps(self)
        except Exception as exc:  # noqa: BLE001 - pickling runs user objects' code
            raise ConfigError(f"the search cannot be kept in the sweep folder ({type(exc).__name__}: {exc}); a "
                              "sampler, pruner or space function must be picklable", "search") from None

    @staticmethod
    def loads(data: bytes) -> Search:
        import cloudpickle

        search = cloudpickle.loads(data)
        if not isinstance(search, Search):
            raise ConfigError(f"{SEARCH_FILE} holds a {type(search).__name__}, not a Search", "search")
        return search


#: The search, pickled whole, in the sweep folder (what ``sweep.yaml`` records only in words).
SEARCH_FILE = "search.pkl"


def trial_task_id(number: int, params: Mapping[str, Any]) -> str:
    """A trial's task id: its number and parameters (two trials may propose the same values)."""
    return task_id({"hsm.trial": number, "params": dict(params)})
