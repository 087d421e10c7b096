"""Sweep files: the reference HSM's ``sweep.yaml`` plus this tool's optional keys."""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..model.errors import ConfigError
from .environment import Environment
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
              "environment", "defaults", "script", "resumable", "objective"}
#: Keys of a ``sweep:`` section; a file without one may hold them at the top (the reference reads both).
_SPACE_KEYS = {"grid", "paired", "fixed", "exclude", "sample", "combinations"}
#: The reference's GPU-type planning keys inside ``sweep:``: read, and without effect here.
_PLANNING_KEYS = {"cost_param", "cost_map"}


def _space_section(data: Mapping[str, Any], where: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(space, rest)``: the ``sweep:`` section (or the space keys at the top, or a W&B-style
    ``parameters:`` block with ``values:``/``value:``) and the file's other keys."""
    data = dict(data)
    if "sweep" in data:
        section = data.pop("sweep")
        if not isinstance(section, Mapping):
            raise ConfigError(f"must be a mapping with grid: and/or paired:, got {section!r}", "sweep")
        return {k: v for k, v in section.items() if k not in _PLANNING_KEYS}, data
    if "parameters" in data:  # the W&B-style file the reference's v2 `hsm config init` wrote
        return _wandb_style(data, where)
    space = {k: data.pop(k) for k in list(data) if k in _SPACE_KEYS}
    if not space:
        raise ConfigError("has no 'sweep:' section (with grid: and/or paired:)", where)
    return space, data


def _wandb_style(data: dict[str, Any], where: str) -> tuple[dict[str, Any], dict[str, Any]]:
    params = data.pop("parameters")
    method = data.pop("strategy", None) or data.pop("method", None) or "grid"
    if method != "grid":
        raise ConfigError(f"{method!r} search is not supported; list each parameter's values (strategy: grid)",
                          "strategy")
    if not isinstance(params, Mapping):
        raise ConfigError("must map each parameter to {values: [...]} or {value: x}", "parameters")
    grid, fixed = {}, {}
    for name, spec in params.items():
        if isinstance(spec, Mapping) and "values" in spec:
            grid[name] = spec["values"]
        elif isinstance(spec, Mapping) and "value" in spec:
            fixed[name] = spec["value"]
        else:
            raise ConfigError(f"needs values: [...] or value: x (distributions are not supported), got {spec!r}",
                              f"parameters.{name}")
    return {"grid": grid, "fixed": fixed}, data


def _apply_defaults(space: dict[str, Any], defaults: Any) -> tuple[dict[str, Any], tuple[Any, ...]]:
    """``defaults:`` as a mapping: values every combination gets unless the sweep sets them
    (nested keys flattened with dots).  As a list it is a Hydra defaults list: the reference
    keeps it and passes nothing of it to jobs, and so does this; it is returned to be shown."""
    if defaults is None or defaults == {} or defaults == []:
        return space, ()
    if isinstance(defaults, list):
        return space, tuple(defaults)
    if not isinstance(defaults, Mapping):
        raise ConfigError(f"must be a mapping of name: value (applied to every combination) or a Hydra defaults "
                          f"list, got {defaults!r}", "defaults")
    names = set(ParameterSpace.from_dict(space).names)
    extra = {k: v for k, v in flatten(defaults).items() if k not in names}
    return {**space, "fixed": {**extra, **(space.get("fixed") or {})}}, ()


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
    """What a sweep YAML file says.  Only the space is required.

    Reads every format the reference HSM has shipped: ``sweep:`` with ``grid:`` and ``paired:``
    (or those keys at the top level), ``defaults:`` (a Hydra defaults list: kept, not passed, as
    the reference does; a mapping: values applied to every combination the sweep does not set),
    ``script:`` (the script to run, relative to the project root), ``metadata:`` (kept and shown),
    ``resumable:`` (only disabled), ``sweep.cost_param``/``cost_map`` (without effect), and the
    W&B-style ``parameters: {name: {values: [...]}}`` of its v2 template.  This tool's own keys:
    ``command``, ``name``, ``arg_style``, ``max_parallel_jobs``, ``env``, ``wandb_group``, ``objective``
    (``{val_loss: min}``) and
    ``environment`` (``conda_env``, ``conda_exe``, ``venv``, ``modules``, ``pre_script``, ``env``; see
    :class:`~hsm_notebook.core.spec.environment.Environment`), and in ``sweep:`` ``fixed``, ``exclude``,
    ``sample``, ``combinations``.  Any other key is a :class:`ConfigError` naming it.
    """

    space: ParameterSpace
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
        space, data = _space_section(data, where)
        unknown = set(data) - _FILE_KEYS
        if unknown:
            raise ConfigError(f"unknown keys {sorted(unknown)}; allowed: {sorted(_FILE_KEYS | _SPACE_KEYS)}", where)
        if data.get("command") is not None and data.get("script") is not None:
            raise ConfigError("give command: or script:, not both", "script")
        script = data.get("script")
        if script is not None and not (isinstance(script, str) and script.strip()):
            raise ConfigError(f"must be the path of the script to run, got {script!r}", "script")
        _resumable(data.get("resumable") or {"enabled": False})
        space, hydra_defaults = _apply_defaults(space, data.get("defaults"))
        command = parse_command(data["command"]) if data.get("command") is not None else None
        env = data.get("env") or {}
        if not isinstance(env, Mapping):
            raise ConfigError("must be a mapping of NAME: value", "env")
        metadata = data.get("metadata") or {}
        if not isinstance(metadata, Mapping):
            raise ConfigError(f"must be a mapping (description:, tags:, ...), got {metadata!r}", "metadata")
        return cls(
            space=ParameterSpace.from_dict(space),
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
            objective=objective(data.get("objective")),
        )


_DIRECTIONS = {"min": "min", "minimize": "min", "max": "max", "maximize": "max"}


def objective(value: Any) -> dict[str, str] | None:
    """``{"val_loss": "min"}`` (or ``"minimize"``/``"maximize"``), a bare metric name (min), or None."""
    if value is None:
        return None
    if isinstance(value, str) and value:
        value = {value: "min"}
    if not isinstance(value, Mapping) or len(value) != 1:
        raise ConfigError(f"must name one metric and its direction, e.g. {{'val_loss': 'min'}}, got {value!r}",
                          "objective")
    (metric, direction), = value.items()
    if not isinstance(metric, str) or not metric or str(direction).lower() not in _DIRECTIONS:
        raise ConfigError(f"must be {{metric name: 'min' or 'max'}}, got {value!r}", "objective")
    return {metric: _DIRECTIONS[str(direction).lower()]}
