"""The job options every source takes, declared once: ``JobOptions``.

One frozen dataclass lists what a job runs and with what (the reference's ``command`` /
``python_path`` + ``script_path`` in ``project_dir``, ``arg_style``; ``python``, ``environment``,
``env``, ``tags``; ``gpus`` / ``gpus_per_job`` where a source pins GPUs itself).  It feeds:

- the constructors: a source takes its own arguments and ``**options``, read by
  :meth:`JobOptions.from_kwargs` (an unknown keyword is a TypeError naming it, as Python's own);
  :func:`with_options` gives the constructor a signature that lists them, so ``help()`` and
  Jupyter's completion show every keyword;
- ``describe()`` / ``from_description()``: :meth:`ComputeSource.describe` records the options a
  class takes (its ``job_options``) under the same names;
- the panel's forms (``ui/sources_view.py``): each field's ``metadata`` holds its label and hint.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, TypeVar

from ..model.errors import ConfigError
from .environment import Environment, check_literal_env

#: Command words that mean "the source's interpreter" (replaced by ``python``).
PYTHON_NAMES = ("python", "python3")


def _form(label: str, hint: str = "", kind: str = "text") -> dict[str, str]:
    return {"label": label, "hint": hint, "kind": kind}


@dataclass(frozen=True)
class JobOptions:
    """What a source's jobs run and with what; the same names on every source."""

    env: Mapping[str, str] = field(default_factory=dict, metadata=_form(
        "Env", "NAME=value, one per line: extra environment of every job", "env"))
    tags: tuple[str, ...] = field(default=(), metadata=_form("Tags", "e.g. gpu, fast (dispatch requirements)",
                                                             "words"))
    command: Sequence[str] | str | None = field(default=None, metadata=_form("Command", "", "hidden"))
    python_path: str | None = field(default=None, metadata=_form("Python path", "", "hidden"))
    script_path: str | None = field(default=None, metadata=_form("Script", "", "hidden"))
    project_dir: str | None = field(default=None, metadata=_form("Project", "", "hidden"))
    arg_style: str = field(default="hydra", metadata=_form("Arguments", "", "hidden"))
    environment: Environment = field(default_factory=Environment, metadata=_form("Environment", "", "environment"))
    python: str | None = field(default=None, metadata=_form("Python", "interpreter for a python command"))
    gpus: list[int] | None = field(default=None, metadata=_form("GPUs", "e.g. 0, 1 (optional)", "ints"))
    gpus_per_job: int = field(default=1, metadata=_form("GPUs per job", "", "hidden"))

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "env", dict(self.env or {}))
        check_literal_env(self.env)
        set_(self, "tags", tuple(self.tags or ()))
        set_(self, "environment", Environment.from_dict(self.environment))
        if self.gpus is not None:
            set_(self, "gpus", list(self.gpus))
            if not isinstance(self.gpus_per_job, int) or isinstance(self.gpus_per_job, bool) or self.gpus_per_job < 1:
                raise ConfigError(f"must be a whole number >= 1, got {self.gpus_per_job!r}", "gpus_per_job")
            if len(self.gpus) < self.gpus_per_job:
                raise ConfigError(f"{len(self.gpus)} GPU(s) listed but {self.gpus_per_job} needed per job", "gpus")

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def from_kwargs(cls, owner: type, accepted: Sequence[str], kwargs: Mapping[str, Any]) -> JobOptions:
        """The options among a constructor's ``**options``; any other keyword is refused as Python would."""
        unknown = [k for k in kwargs if k not in accepted]
        if unknown:
            raise TypeError(f"{owner.__name__}() got an unexpected keyword argument {unknown[0]!r}; "
                            f"its job options are {', '.join(accepted)}")
        return cls(**dict(kwargs))

    def record(self) -> dict[str, Any]:
        """The reference's job arguments that were given (``command``, ``python_path``, ...), as plain data."""
        command = list(self.command) if isinstance(self.command, (list, tuple)) else self.command
        args = {"command": command, "python_path": self.python_path, "script_path": self.script_path,
                "project_dir": self.project_dir}
        return {k: v for k, v in args.items() if v is not None}


C = TypeVar("C", bound=type)


def with_options(cls: C) -> C:
    """Give ``cls.__init__`` (own arguments + ``**options``) a signature that lists its job options
    (``cls.job_options``) as keyword-only parameters with their defaults."""
    init: Callable[..., None] = cls.__init__  # type: ignore[misc]
    sig = inspect.signature(init)
    params = [p for p in sig.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    taken = {p.name for p in params}
    by_name = {f.name: f for f in fields(JobOptions)}
    for name in getattr(cls, "job_options", ()):
        f = by_name[name]
        if name in taken:
            continue
        default = f.default if f.default is not MISSING else None
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=f.type))
    init.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
    return cls
