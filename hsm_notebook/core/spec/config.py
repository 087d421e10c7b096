"""Sweep files: the reference HSM's ``sweep.yaml``, W&B-style sweep configurations (grid, random
and Bayesian searches with early termination), and this tool's own keys (``search:`` among them)."""

from __future__ import annotations

import math
import re
import shlex
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..model.errors import ConfigError, HsmWarning
from .environment import Environment
from .search import Categorical, Distribution, Float, Int, Search, distribution_from_dict
from .space import ParameterSpace, flatten


class YamlLoader(yaml.SafeLoader):
    """Safe YAML, with YAML 1.2 floats: ``1e-3`` is 0.001, not the string "1e-3"."""


YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                    |[-+]?\.(?:inf|Inf|INF)
                    |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def load_yaml(text: str):
    return yaml.load(text, Loader=YamlLoader)  # noqa: S506 - a SafeLoader subclass


_FILE_KEYS = {"sweep", "metadata", "command", "name", "arg_style", "max_parallel_jobs", "env", "wandb_group",
              "environment", "defaults", "script", "resumable", "objective", "metric"}
#: Keys of a ``sweep:`` section; a file without one may hold them at the top (the reference reads both).
_SPACE_KEYS = {"grid", "paired", "fixed", "exclude", "sample", "combinations"}
#: The reference's GPU-type planning keys inside ``sweep:``: read, and without effect here.
_PLANNING_KEYS = {"cost_param", "cost_map"}
#: W&B's keys read beside ``parameters:`` (``strategy:`` is the reference's name for ``method:``).
_WANDB_KEYS = {"method", "strategy", "run_cap", "early_terminate"}
#: What each W&B ``method:`` runs: ``grid`` every combination (no Optuna), the others an Optuna sampler.
_METHODS: dict[str, str | None] = {"grid": None, "random": "random", "bayes": "tpe"}
#: A search's options in a ``search:`` section, besides ``space:`` and ``fixed:``.
_SEARCH_OPTIONS = ("sampler", "pruner", "n_trials", "timeout", "max_failed", "seed")
#: Keys other tools' sweep files hold, with what to write here instead.
_HINTS = {
    "program": "W&B's program: is script: here (script: train.py); parameters are passed as key=value, or as "
               "--key=value (W&B's ${args}) with arg_style: argparse",
    "count": "the number of runs is run_cap: N (count is an option of the W&B agent, not of the file)",
}

#: W&B's distributions read here, each with the keys it takes besides ``distribution``.
_WANDB_DISTRIBUTIONS = {
    "constant": {"value"}, "categorical": {"values"}, "int_uniform": {"min", "max"}, "uniform": {"min", "max"},
    "q_uniform": {"min", "max", "q"}, "log_uniform": {"min", "max"}, "log_uniform_values": {"min", "max"},
    "q_log_uniform": {"min", "max", "q"}, "q_log_uniform_values": {"min", "max", "q"},
    "inv_log_uniform": {"min", "max"}, "inv_log_uniform_values": {"min", "max"},
}
_UNBOUNDED = ("is not supported: Optuna samples from a bounded range; give min: and max: with uniform (or "
              "log_uniform_values for a log scale)")
#: W&B's distributions without an Optuna counterpart, and why.
_UNSUPPORTED = {**dict.fromkeys(("normal", "q_normal", "log_normal", "q_log_normal", "beta", "q_beta"), _UNBOUNDED),
                "categorical_w_probabilities": "is not supported: Optuna's categorical choices carry no weights; "
                                               "drop probabilities:"}


@dataclass
class _Section:
    """What a file asks to run: a grid (``ParameterSpace.from_dict``'s input) or a search
    (``Search``'s keyword arguments, with the file's key for each of Search's fields)."""

    space: dict[str, Any] | None = None
    search: dict[str, Any] | None = None
    fields: Mapping[str, str] = field(default_factory=dict)


@contextmanager
def _fields(names: str | Mapping[str, str]) -> Iterator[None]:
    """A ``ConfigError`` raised inside names the file's key (``names``, or ``names[its field]``)."""
    try:
        yield
    except ConfigError as exc:
        message = str(exc).removeprefix(f"{exc.field}: ") if exc.field else str(exc)
        where = names if isinstance(names, str) else names.get(exc.field or "", exc.field)
        raise ConfigError(message, where) from None


def _space_section(data: Mapping[str, Any], where: str) -> tuple[_Section, dict[str, Any]]:
    """``(section, rest)``: the ``sweep:`` section (or the space keys at the top), a W&B-style
    ``parameters:`` block, or a ``search:`` section; and the file's other keys."""
    data = dict(data)
    grid_keys = sorted(k for k in data if k == "sweep" or k in _SPACE_KEYS)
    if "parameters" in data and grid_keys:
        raise ConfigError(f"a file holds W&B's parameters: or a grid ({grid_keys[0]}:), not both", "parameters")
    if "parameters" in data:  # W&B's form; the reference's v2 `hsm config init` wrote its grid
        return _wandb_style(data), data
    if "search" in data:
        return _explicit_search(data), data
    if "sweep" in data:
        section = data.pop("sweep")
        if not isinstance(section, Mapping):
            raise ConfigError(f"must be a mapping with grid: and/or paired:, got {section!r}", "sweep")
        return _Section(space={k: v for k, v in section.items() if k not in _PLANNING_KEYS}), data
    space = {k: data.pop(k) for k in list(data) if k in _SPACE_KEYS}
    if not space:
        raise ConfigError("has no 'sweep:' section (with grid: and/or paired:), nor a search (search:, or "
                          "parameters: with method: bayes or random)", where)
    return _Section(space=space), data


def _positive(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 1 or not float(value).is_integer():
        raise ConfigError(f"must be a positive whole number, got {value!r}", where)
    return int(value)


# -- W&B's sweep configuration --------------------------------------------------------------------

def _wandb_style(data: dict[str, Any]) -> _Section:
    """W&B's ``method:`` (grid, random, bayes), ``parameters:``, ``early_terminate:`` and ``run_cap:``
    (``metric:`` is read with the file's other keys).  ``grid`` enumerates the combinations as a
    ``sweep: {grid: ...}`` does; ``random`` and ``bayes`` are searches (Optuna's RandomSampler and
    TPESampler), where ``values:`` is a categorical choice, so a random search over values only
    may draw a combination twice (``sweep: {grid: ..., sample: N}`` draws N distinct ones)."""
    if "method" in data and "strategy" in data:
        raise ConfigError("give method: or strategy: (the same setting), not both", "strategy")
    key = "strategy" if "strategy" in data else "method"
    method = data.pop(key, None) or "grid"
    if not isinstance(method, str) or method.lower() not in _METHODS:
        raise ConfigError(f"must be grid, random or bayes, got {method!r}", key)
    method = method.lower()
    params, run_cap, early = data.pop("parameters"), data.pop("run_cap", None), data.pop("early_terminate", None)
    options = data.pop("search", None)
    if not isinstance(params, Mapping) or not params:
        raise ConfigError("must map each parameter to {values: [...]}, {value: x} or a distribution such as "
                          "{distribution: uniform, min: 0, max: 1}", "parameters")
    parsed = _wandb_parameters(params)
    if _METHODS[method] is None:
        return _Section(space=_wandb_grid(parsed, run_cap, early, options))
    space: dict[str, Distribution] = {}
    fixed: dict[str, Any] = {}
    for name, (kind, spec) in parsed.items():
        if kind == "value":
            fixed[name] = spec
        elif kind == "values":
            with _fields(f"parameters.{name}"):
                space[name] = Categorical(spec)
        else:
            space[name] = _wandb_distribution(spec, f"parameters.{name}")
    if not space:
        raise ConfigError("has nothing to search: every parameter is a value:; give values: [...] or a "
                          "distribution to some, or use method: grid", "parameters")
    search: dict[str, Any] = {"space": space, "fixed": fixed, "sampler": _METHODS[method]}
    if run_cap is not None:
        search["n_trials"] = _positive(run_cap, "run_cap")
    if early is not None:
        search["pruner"] = _hyperband(early)
    if options is not None:
        if not isinstance(options, Mapping) or set(options) - {"timeout", "max_failed", "seed"}:
            raise ConfigError(f"beside parameters: (W&B's form) takes only timeout, max_failed and seed (the rest "
                              f"comes from method:, early_terminate:, run_cap: and parameters:), got {options!r}",
                              "search")
        search.update(options)
    if search.get("n_trials") is None and search.get("timeout") is None:
        raise ConfigError(f"method: {method} is a search, and a search needs a budget: add run_cap: N (the number "
                          "of trials to run; or search: {timeout: seconds})", "run_cap")
    fields = {"n_trials": "run_cap", "pruner": "early_terminate", "sampler": key, "space": "parameters",
              "fixed": "parameters", **{k: f"search.{k}" for k in ("timeout", "max_failed", "seed")}}
    return _Section(search=search, fields=fields)


def _wandb_grid(parsed: Mapping[str, tuple[str, Any]], run_cap: Any, early: Any, options: Any) -> dict[str, Any]:
    if early is not None:
        raise ConfigError("stops runs early only in a search: use method: bayes or random (method: grid runs every "
                          "combination to its end)", "early_terminate")
    if options is not None:
        raise ConfigError("holds a search's options, and method: grid is not a search; use method: bayes or random",
                          "search")
    grid: dict[str, Any] = {}
    fixed: dict[str, Any] = {}
    for name, (kind, spec) in parsed.items():
        if kind == "distribution":
            raise ConfigError("distributions need method: random or bayes; a grid lists values: [...]",
                              f"parameters.{name}")
        (grid if kind == "values" else fixed)[name] = spec
    space = {"grid": grid, "fixed": fixed}
    if run_cap is not None:
        total = len(ParameterSpace.from_dict(space))
        if _positive(run_cap, "run_cap") < total:
            raise ConfigError(f"is {run_cap}, below the {total} combinations of the grid, and a grid runs each of "
                              f"them; drop run_cap:, sample the grid (sweep: {{grid: ..., sample: {run_cap}}}) or "
                              "search it (method: random or bayes)", "run_cap")
    return space


def _wandb_parameters(params: Mapping[str, Any], prefix: str = "") -> dict[str, tuple[str, Any]]:
    """Each parameter as ``("values", [...])``, ``("value", x)`` or ``("distribution", spec)``, its
    keys checked; a nested ``parameters:`` block gives dotted names (``optimizer.lr``)."""
    out: dict[str, tuple[str, Any]] = {}
    for key, spec in params.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        where = f"parameters.{name}"
        if not isinstance(spec, Mapping):
            raise ConfigError(f"must be {{values: [...]}}, {{value: x}} or a distribution such as {{distribution: "
                              f"uniform, min: 0, max: 1}}, got {spec!r}", where)
        if "parameters" in spec:
            if set(spec) != {"parameters"} or not isinstance(spec["parameters"], Mapping) or not spec["parameters"]:
                raise ConfigError("a nested block holds only parameters: {name: {...}, ...}", where)
            out.update(_wandb_parameters(spec["parameters"], name))
            continue
        kind = spec.get("distribution")
        if kind is None:
            kind = ("categorical_w_probabilities" if "probabilities" in spec else "categorical" if "values" in spec
                    else "constant" if "value" in spec else "uniform" if {"min", "max"} & set(spec) else None)
        if kind is None:
            raise ConfigError(f"needs values: [...], value: x, or min: and max: (with a distribution:), got "
                              f"{dict(spec)!r}", where)
        if kind in _UNSUPPORTED:
            raise ConfigError(f"distribution {kind} {_UNSUPPORTED[kind]}", where)
        if kind not in _WANDB_DISTRIBUTIONS:
            raise ConfigError(f"unknown distribution {kind!r}; supported: {', '.join(_WANDB_DISTRIBUTIONS)} (and "
                              "normal, log_normal, beta and their q_ forms are W&B's, not supported here)", where)
        allowed = _WANDB_DISTRIBUTIONS[kind]
        if extra := set(spec) - allowed - {"distribution"}:
            raise ConfigError(f"{kind} takes {', '.join(sorted(allowed))}, not {', '.join(sorted(map(str, extra)))}",
                              where)
        if missing := allowed - {"q"} - set(spec):
            raise ConfigError(f"{kind} needs {' and '.join(sorted(missing))}", where)
        if kind == "constant":
            out[name] = ("value", spec["value"])
        elif kind == "categorical":
            if not isinstance(spec["values"], list) or not spec["values"]:
                raise ConfigError(f"values must be a non-empty list, got {spec['values']!r}", where)
            out[name] = ("values", spec["values"])
        else:
            out[name] = ("distribution", spec)
    return out


def _number(spec: Mapping[str, Any], key: str, where: str) -> float:
    value = spec[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{key} must be a finite number, got {value!r}", where)
    return value


def _is_whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _tidy(x: float) -> float:
    """A multiple of a step without float noise (0.30000000000000004 -> 0.3)."""
    return float(f"{x:.12g}")


def _wandb_distribution(spec: Mapping[str, Any], where: str) -> Distribution:
    """One of W&B's bounded distributions as Float or Int.

    ``uniform``/``int_uniform`` (``min``/``max`` without ``distribution``: ``int_uniform`` when both
    are integers, as W&B infers); ``q_uniform``: the multiples of ``q`` within [min, max] (integers
    when ``q`` is one); ``log_uniform_values``: a log scale over [min, max]; ``log_uniform``: the same
    over [e^min, e^max] (W&B's bounds are natural logarithms); ``inv_log_uniform(_values)``: 1/X
    log-uniform is X log-uniform over the same range, so the same Float; ``q_log_uniform(_values)``
    with ``q: 1``: whole numbers on a log scale (Optuna has no log scale with a larger step)."""
    lo, hi = _number(spec, "min", where), _number(spec, "max", where)
    kind = spec.get("distribution") or ("int_uniform" if _is_whole(lo) and _is_whole(hi) else "uniform")
    q = spec.get("q", 1)
    if isinstance(q, bool) or not isinstance(q, (int, float)) or not math.isfinite(q) or q <= 0:
        raise ConfigError(f"q must be a positive number, got {q!r}", where)
    if kind in ("log_uniform", "q_log_uniform") and lo > 0:
        warnings.warn(f"{where}: {kind} takes natural-log bounds, so this samples between e^{lo:g} = {math.exp(lo):.6g}"
                      f" and e^{hi:g} = {math.exp(hi):.6g}; for values between {lo:g} and {hi:g} write "
                      f"{kind}_values", HsmWarning, stacklevel=2)
    with _fields(where):
        if kind == "int_uniform":
            if not (float(lo).is_integer() and float(hi).is_integer()):
                raise ConfigError(f"int_uniform needs whole numbers for min and max, got {lo} and {hi}", where)
            return Int(int(lo), int(hi))
        if kind == "uniform":
            return Float(lo, hi)
        if kind == "q_uniform":
            k_lo, k_hi = math.ceil(lo / q - 1e-9), math.floor(hi / q + 1e-9)
            if k_lo > k_hi:
                raise ConfigError(f"no multiple of q={q} lies between min={lo} and max={hi}", where)
            if _is_whole(q):
                return Int(k_lo * int(q), k_hi * int(q), step=int(q))
            return Float(_tidy(k_lo * q), _tidy(k_hi * q), step=q)
        bounds = {"log_uniform": (math.exp(lo), math.exp(hi)), "q_log_uniform": (math.exp(lo), math.exp(hi)),
                  "inv_log_uniform": (math.exp(-hi), math.exp(-lo))}.get(kind, (lo, hi))
        if kind.startswith("q_"):
            if q != 1:
                raise ConfigError(f"{kind} with q: {q} is not supported: Optuna has no log scale with a step; use "
                                  f"q: 1 (whole numbers), or {kind.removeprefix('q_')} and round in the job", where)
            return Int(math.ceil(bounds[0] - 1e-9), math.floor(bounds[1] + 1e-9), log=True)
        return Float(*bounds, log=True)


def _hyperband(early: Any) -> dict[str, Any]:
    """W&B's ``early_terminate: {type: hyperband, min_iter, max_iter, s, eta}`` as Optuna's
    HyperbandPruner: ``min_iter`` -> ``min_resource``, ``max_iter`` -> ``max_resource`` ("auto"
    without it: from the first completed trial), ``eta`` -> ``reduction_factor`` (3 without it).
    W&B's ``s`` places its first bracket at ``max_iter / eta**s``; without ``min_iter`` that is the
    ``min_resource`` here, with it ``s`` is ignored (a warning says so), as is ``strict``.  Optuna
    counts the job's ``step=`` values where W&B counts logged lines: log steps 1, 2, 3, ... for the
    same brackets."""
    where = "early_terminate"
    if not isinstance(early, Mapping) or early.get("type") != "hyperband":
        raise ConfigError(f"must be {{type: hyperband, min_iter: N, eta: 3}} (hyperband is W&B's only early "
                          f"termination), got {early!r}", where)
    if extra := set(early) - {"type", "min_iter", "max_iter", "s", "eta", "strict"}:
        raise ConfigError(f"unknown keys {sorted(map(str, extra))}; hyperband takes min_iter, max_iter, s and eta",
                          where)
    eta = early.get("eta", 3)
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or eta < 2 or not float(eta).is_integer():
        raise ConfigError(f"must be a whole number >= 2 (Optuna's reduction_factor), got {eta!r}", f"{where}.eta")
    pruner: dict[str, Any] = {"type": "hyperband", "reduction_factor": int(eta)}
    for key, name in (("min_iter", "min_resource"), ("max_iter", "max_resource")):
        if early.get(key) is not None:
            pruner[name] = _positive(early[key], f"{where}.{key}")
    if early.get("s") is not None:
        s = _positive(early["s"], f"{where}.s")
        if "max_resource" in pruner and "min_resource" not in pruner:
            pruner["min_resource"] = max(1, int(pruner["max_resource"] / int(eta) ** s))
        else:
            warnings.warn(f"{where}.s is ignored: it places the first bracket at max_iter / eta**s, read only with "
                          "max_iter and without min_iter", HsmWarning, stacklevel=3)
    if early.get("strict") is not None:
        warnings.warn(f"{where}.strict is ignored: Optuna's HyperbandPruner has no such setting", HsmWarning,
                      stacklevel=3)
    if pruner.get("min_resource", 1) > pruner.get("max_resource", math.inf):
        raise ConfigError(f"min_iter {pruner['min_resource']} is above max_iter {pruner['max_resource']}", where)
    return pruner


def _metric(value: Any) -> dict[str, str]:
    """W&B's ``metric: {name: val_loss, goal: minimize}`` as an objective."""
    if not isinstance(value, Mapping) or not isinstance(value.get("name"), str) or not value["name"]:
        raise ConfigError(f"must be {{name: val_loss, goal: minimize}} (the metric the job logs), got {value!r}",
                          "metric")
    if extra := set(value) - {"name", "goal", "target", "impute", "impute_while_running"}:
        raise ConfigError(f"unknown keys {sorted(map(str, extra))}; metric takes name and goal", "metric")
    if ignored := sorted(set(value) & {"target", "impute", "impute_while_running"}):
        warnings.warn(f"metric: {', '.join(ignored)} ignored (a search here runs its whole budget, and a failed "
                      "trial is told to Optuna as failed)", HsmWarning, stacklevel=3)
    goal = value.get("goal", "minimize")
    if str(goal).lower() not in ("minimize", "maximize"):
        raise ConfigError(f"goal must be minimize or maximize, got {goal!r}", "metric")
    return objective({value["name"]: goal}) or {}


# -- this tool's search: section ------------------------------------------------------------------

def _explicit_search(data: dict[str, Any]) -> _Section:
    """``search: {space: {...}, sampler:, pruner:, n_trials:, timeout:, max_failed:, seed:, fixed:}``
    (and ``fixed:`` at the top): :class:`~hsm_notebook.core.spec.search.Search`'s arguments, each
    distribution as ``distribution_from_dict`` reads it (a list is a categorical)."""
    section = data.pop("search")
    if not isinstance(section, Mapping):
        raise ConfigError(f"must be a mapping with space: and n_trials: (or timeout:), got {section!r}", "search")
    if grid_keys := sorted(k for k in data if k == "sweep" or k in _SPACE_KEYS - {"fixed"}):
        raise ConfigError(f"a file holds a grid ({grid_keys[0]}:) or a search (search:), not both", "search")
    allowed = {"space", "fixed", *_SEARCH_OPTIONS}
    if unknown := set(section) - allowed:
        raise ConfigError(f"unknown keys {sorted(map(str, unknown))}; allowed: {sorted(allowed)}", "search")
    space = section.get("space")
    if not isinstance(space, Mapping) or not space:
        raise ConfigError("must map each parameter to a distribution: {type: float, low: 1e-5, high: 0.1, log: true},"
                          " {type: int, low: 1, high: 4} or {type: categorical, choices: [a, b]} (or a list)",
                          "search.space")
    dists = {str(name): _search_distribution(d, f"search.space.{name}") for name, d in space.items()}
    fixed: dict[str, Any] = {}
    for where, given in (("search.fixed", section.get("fixed")), ("fixed", data.pop("fixed", None))):
        if given is None:
            continue
        if not isinstance(given, Mapping):
            raise ConfigError(f"must be a mapping of name: value, got {given!r}", where)
        for name, value in flatten(given).items():
            if name in fixed:
                raise ConfigError(f"{name!r} is in both fixed: and search.fixed:; keep one", where)
            fixed[name] = value
    search = {"space": dists, "fixed": fixed, **{k: section[k] for k in _SEARCH_OPTIONS if k in section}}
    if search.get("n_trials") is None and search.get("timeout") is None:
        raise ConfigError("a search needs a budget: add n_trials: N (the number of trials; and/or timeout: "
                          "seconds)", "search.n_trials")
    return _Section(search=search, fields={**{k: f"search.{k}" for k in _SEARCH_OPTIONS}, "space": "search.space",
                                           "fixed": "search.fixed"})


def _search_distribution(spec: Any, where: str) -> Distribution:
    if isinstance(spec, list):
        spec = {"type": "categorical", "choices": spec}
    if not isinstance(spec, Mapping):
        raise ConfigError(f"must be a distribution such as {{type: float, low: 0, high: 1}}, or a list of choices, "
                          f"got {spec!r}", where)
    if extra := set(spec) - {"type", "low", "high", "log", "step", "choices"}:
        raise ConfigError(f"unknown keys {sorted(map(str, extra))}; a distribution takes type and low, high, log, "
                          "step (or choices)", where)
    with _fields(where):
        return distribution_from_dict(spec, where)


def _defaults(defaults: Any, names: set[str]) -> tuple[dict[str, Any], tuple[Any, ...]]:
    """``defaults:`` as a mapping: values every combination (or trial) gets unless the sweep sets
    them (nested keys flattened with dots), returned as fixed values.  As a list it is a Hydra
    defaults list: the reference keeps it and passes nothing of it to jobs, and so does this; it
    is returned to be shown."""
    if defaults is None or defaults == {} or defaults == []:
        return {}, ()
    if isinstance(defaults, list):
        return {}, tuple(defaults)
    if not isinstance(defaults, Mapping):
        raise ConfigError(f"must be a mapping of name: value (applied to every combination) or a Hydra defaults "
                          f"list, got {defaults!r}", "defaults")
    return {k: v for k, v in flatten(defaults).items() if k not in names}, ()


def _resumable(value: Any) -> None:
    enabled = value.get("enabled", True) if isinstance(value, Mapping) else bool(value)
    if enabled:
        raise ConfigError("chunked resumable chains are not supported; remove resumable: (Slurm sources requeue "
                          "and forward --signal to the job; a job resumes from its own checkpoint)", "resumable")


def parse_command(command: Any, field: str = "command") -> tuple[str, ...]:
    """A command is a list of argv items; a string is split like a shell would (no shell runs)."""
    if isinstance(command, str):
        try:
            command = shlex.split(command)
        except ValueError as exc:
            raise ConfigError(f"cannot be split into arguments ({exc})", field) from None
    if not isinstance(command, (list, tuple)) or not command or not all(isinstance(a, str) for a in command):
        raise ConfigError(
            f"must be a non-empty list of strings such as ['python', 'train.py'], got {command!r}", field
        )
    if not command[0]:
        raise ConfigError("the program name (first item) is empty", field)
    return tuple(command)


@dataclass(frozen=True)
class SweepFile:
    """What a sweep YAML file says.  Only what to run (a grid or a search) is required.

    Reads every format the reference HSM has shipped: ``sweep:`` with ``grid:`` and ``paired:``
    (or those keys at the top level), ``defaults:`` (a Hydra defaults list: kept, not passed, as
    the reference does; a mapping: values applied to every combination the sweep does not set),
    ``script:`` (the script to run, relative to the project root), ``metadata:`` (kept and shown),
    ``resumable:`` (only disabled), ``sweep.cost_param``/``cost_map`` (without effect), and the
    W&B-style ``parameters: {name: {values: [...]}}`` of its v2 template.

    W&B's sweep configuration: ``method: grid`` (the default; ``strategy:`` is the same key) runs
    every combination of ``values:`` (``value:`` is fixed); ``method: random`` and ``bayes`` are
    searches (Optuna's RandomSampler and TPESampler) over ``values:`` (a categorical choice) and
    the bounded distributions (``uniform``, ``int_uniform``, ``q_uniform``, ``log_uniform_values``,
    ``log_uniform`` with natural-log bounds, ``inv_log_uniform(_values)``, ``q_log_uniform(_values)``
    with ``q: 1``; ``normal``, ``log_normal``, ``beta``, their ``q_`` forms and ``probabilities:``
    are refused, in words), with ``run_cap:`` trials, ``metric: {name, goal}`` as the objective and
    ``early_terminate: {type: hyperband, min_iter, max_iter, eta}`` as Optuna's HyperbandPruner.

    This tool's own keys: ``command``, ``name``, ``arg_style``, ``max_parallel_jobs``, ``env``,
    ``wandb_group``, ``objective`` (``{val_loss: min}``; ``metric:`` when absent), ``environment``
    (``conda_env``, ``conda_exe``, ``venv``, ``modules``, ``pre_script``, ``env``; see
    :class:`~hsm_notebook.core.spec.environment.Environment`), in ``sweep:`` ``fixed``, ``exclude``,
    ``sample``, ``combinations``, and a search written out: ``search: {space: {lr: {type: float,
    low: 1e-5, high: 0.1, log: true}, ...}, sampler: tpe, pruner: {type: median}, n_trials: 50,
    timeout: 3600, max_failed: 5, seed: 1}`` with ``fixed:`` beside it (see
    :class:`~hsm_notebook.core.spec.search.Search`).  A search without a budget (``run_cap``,
    ``n_trials`` or ``timeout``) and any other key are a :class:`ConfigError` naming the key.
    """

    #: what the file runs: a grid of combinations, or a search
    plan: ParameterSpace | Search
    command: tuple[str, ...] | None = None
    name: str | None = None
    arg_style: str = "hydra"
    max_parallel_jobs: int | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    wandb_group: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    path: Path | None = None
    environment: Environment = field(default_factory=Environment)
    script: str | None = None
    hydra_defaults: tuple[Any, ...] = ()
    objective: Mapping[str, str] | None = None

    @property
    def search(self) -> Search | None:
        """The search the file describes (``method: bayes``/``random``, or ``search:``), else None."""
        return self.plan if isinstance(self.plan, Search) else None

    @property
    def space(self) -> ParameterSpace:
        """The grid of combinations; a ``ConfigError`` for a search, whose trials are proposed as it runs."""
        if isinstance(self.plan, Search):
            raise ConfigError(f"{self.path or 'this file'} describes a search (trials proposed as it runs), not a "
                              "grid of combinations: run it with Sweep.from_yaml(path) or python -m hsm_notebook "
                              "run (SweepFile.search holds it)", "space")
        return self.plan

    @classmethod
    def load(cls, source: str | Path) -> SweepFile:
        """Load from a path, or from YAML text when ``source`` is a string with a newline."""
        path: Path | None = None
        if isinstance(source, Path) or "\n" not in str(source):
            path = Path(source)
            if not path.is_file():
                raise ConfigError(f"no such file: {path}; give the path of a sweep YAML file", "sweep file")
            text = path.read_text()
        else:
            text = str(source)
        try:
            data = load_yaml(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"is not valid YAML: {exc}", str(path or "sweep file")) from None
        return cls.from_dict(data, path)

    @classmethod
    def from_dict(cls, data: Any, path: Path | None = None) -> SweepFile:
        where = str(path or "sweep file")
        if not isinstance(data, Mapping):
            raise ConfigError("must be a YAML mapping with a 'sweep:' section", where)
        section, data = _space_section(data, where)
        unknown = set(data) - _FILE_KEYS
        for key in sorted(map(str, unknown)):
            if key in _HINTS:
                raise ConfigError(_HINTS[key], key)
            if key in _WANDB_KEYS or key == "search":
                raise ConfigError("is read with a W&B-style parameters: block (method: bayes or random for a search),"
                                  " or write the search as search: {space: ..., n_trials: ...}; not beside sweep:",
                                  key)
        if unknown:
            raise ConfigError(f"unknown keys {sorted(unknown)}; allowed: {sorted(_FILE_KEYS | _SPACE_KEYS)}", where)
        if data.get("command") is not None and data.get("script") is not None:
            raise ConfigError("give command: or script:, not both", "script")
        script = data.get("script")
        if script is not None and not (isinstance(script, str) and script.strip()):
            raise ConfigError(f"must be the path of the script to run, got {script!r}", "script")
        _resumable(data.get("resumable") or {"enabled": False})
        command = parse_command(data["command"]) if data.get("command") is not None else None
        if command is not None and (macro := next((a for a in command if "${" in a), None)):
            raise ConfigError(f"{macro!r} is a W&B command macro, which is not expanded here: write the command "
                              "itself (command: [python, train.py]); parameters follow as key=value, or as "
                              "--key=value with arg_style: argparse", "command")
        env = data.get("env") or {}
        if not isinstance(env, Mapping):
            raise ConfigError("must be a mapping of NAME: value", "env")
        metadata = data.get("metadata") or {}
        if not isinstance(metadata, Mapping):
            raise ConfigError(f"must be a mapping (description:, tags:, ...), got {metadata!r}", "metadata")
        goal = objective(data.get("objective"))
        if data.get("metric") is not None:
            metric = _metric(data["metric"])
            if goal is not None and goal != metric:
                raise ConfigError(f"names {metric} and objective: names {goal}; keep one", "metric")
            goal = metric
        plan, hydra_defaults = _plan(section, data.get("defaults"))
        return cls(
            plan=plan,
            command=command,
            name=data.get("name"),
            arg_style=data.get("arg_style", "hydra"),
            max_parallel_jobs=data.get("max_parallel_jobs"),
            env={str(k): str(v) for k, v in env.items()},
            wandb_group=data.get("wandb_group"),
            metadata=dict(metadata),
            path=path,
            environment=Environment.from_dict(data.get("environment")),
            script=script,
            hydra_defaults=hydra_defaults,
            objective=goal,
        )


def _plan(section: _Section, defaults: Any) -> tuple[ParameterSpace | Search, tuple[Any, ...]]:
    """The grid or the search of ``section``, with ``defaults:`` applied."""
    if section.search is None:
        space = section.space or {}
        extra, hydra_defaults = _defaults(defaults, set(ParameterSpace.from_dict(space).names))
        if extra:
            space = {**space, "fixed": {**extra, **(space.get("fixed") or {})}}
        return ParameterSpace.from_dict(space), hydra_defaults
    kwargs = section.search
    extra, hydra_defaults = _defaults(defaults, set(kwargs["space"]) | set(kwargs["fixed"]))
    with _fields(section.fields):
        return Search(**{**kwargs, "fixed": {**extra, **kwargs["fixed"]}}), hydra_defaults


_DIRECTIONS = {"min": "min", "minimize": "min", "max": "max", "maximize": "max"}


def objective(value: Any) -> dict[str, str] | None:
    """``{"val_loss": "min"}`` (or ``"minimize"``/``"maximize"``; several metrics for a
    multi-objective search, in order), a bare metric name (min), or None."""
    if value is None:
        return None
    if isinstance(value, str) and value:
        value = {value: "min"}
    if not isinstance(value, Mapping) or not value:
        raise ConfigError(f"must name a metric and its direction, e.g. {{'val_loss': 'min'}}, got {value!r}",
                          "objective")
    out = {}
    for metric, direction in value.items():
        if not isinstance(metric, str) or not metric or str(direction).lower() not in _DIRECTIONS:
            raise ConfigError(f"must be {{metric name: 'min' or 'max'}}, got {value!r}", "objective")
        out[metric] = _DIRECTIONS[str(direction).lower()]
    return out
