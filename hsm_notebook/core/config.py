"""Sweep files: the reference HSM's ``sweep.yaml`` plus this tool's optional keys."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from .environment import Environment
from .errors import ConfigError
from .space import ParameterSpace

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
              "environment"}


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
    """What a sweep YAML file says.  Only ``sweep:`` is required.

    ``sweep:`` holds the space (``grid``, ``paired`` as in the reference tool, and
    ``fixed``, ``exclude``, ``sample``, ``combinations``); ``command``, ``name``,
    ``arg_style``, ``max_parallel_jobs``, ``env``, ``wandb_group`` and ``environment`` (what jobs
    run in: ``conda_env``, ``conda_exe``, ``venv``, ``modules``, ``pre_script``, ``env``; see
    :class:`~hsm_notebook.core.environment.Environment`) are optional; ``metadata`` is kept as given.
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

    @classmethod
    def load(cls, source: str | Path) -> "SweepFile":
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
    def from_dict(cls, data: Any, path: Path | None = None) -> "SweepFile":
        if not isinstance(data, Mapping):
            raise ConfigError("must be a YAML mapping with a 'sweep:' section", str(path or "sweep file"))
        if "sweep" not in data:
            if set(data) & {"grid", "paired"}:  # a bare space is accepted too
                data = {"sweep": data}
            else:
                raise ConfigError("has no 'sweep:' section (with grid: and/or paired:)", str(path or "sweep file"))
        unknown = set(data) - _FILE_KEYS
        if unknown:
            raise ConfigError(f"unknown keys {sorted(unknown)}; allowed: {sorted(_FILE_KEYS)}", str(path or "sweep file"))
        command = parse_command(data["command"]) if data.get("command") is not None else None
        env = data.get("env") or {}
        if not isinstance(env, Mapping):
            raise ConfigError("must be a mapping of NAME: value", "env")
        return cls(
            space=ParameterSpace.from_dict(data["sweep"]),
            command=command,
            name=data.get("name"),
            arg_style=data.get("arg_style", "hydra"),
            max_parallel_jobs=data.get("max_parallel_jobs"),
            env={str(k): str(v) for k, v in env.items()},
            wandb_group=data.get("wandb_group"),
            metadata=data.get("metadata") or {},
            path=path,
            environment=Environment.from_dict(data.get("environment")),
        )
