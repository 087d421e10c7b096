"""What a sweep file and its project say, as ``Sweep`` arguments: the one place that decides
them, for ``Sweep.from_yaml``, the command line and the notebook panel alike."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .base import registry
from .base.source import ComputeSource
from .model.errors import ConfigError
from .spec.config import SweepFile
from .spec.environment import Environment
from .spec.project import ProjectConfig, find_project
from .spec.search import Search


def resolve_project(spec: SweepFile, project: ProjectConfig | str | Path | bool | None) -> ProjectConfig | None:
    """``project``: a config, a config file, ``False`` (none), or None: found from the current
    folder and the sweep file's folder (see :func:`~hsm_notebook.core.spec.project.find_project`)."""
    if project is False:
        return None
    if isinstance(project, ProjectConfig):
        return project
    if project is None or project is True:
        found = find_project(spec.path)
        if found is None and project is True:
            raise ConfigError("no .hsm/config.yaml (or hsm_config.yaml) here or above the sweep file", "project")
        return found
    return ProjectConfig.load(project)


def launch_options(
    spec: SweepFile, sources: Sequence[ComputeSource] | None = None, *,
    project: ProjectConfig | str | Path | bool | None = None, need_command: bool = True, **kwargs: Any,
) -> dict[str, Any]:
    """Keyword arguments of ``Sweep(...)`` for ``spec``; ``kwargs`` (any ``Sweep`` argument,
    ``command`` included) win over what the file and the project say.  ``need_command=False``
    (a form to fill in) gives ``command=None`` rather than an error when nothing names one.
    ``space`` is the file's grid or its search (``spec.plan``); a search needs an objective
    (the file's ``metric:`` or ``objective:``, or ``objective=``)."""
    config = resolve_project(spec, project)
    command = kwargs.pop("command", None) or spec.command
    if command is None and config is not None:
        command = config.command(spec.script)
    elif command is None and spec.script:
        command = ("python", spec.script)
    if command is None and need_command:
        raise ConfigError("no command: add 'command: [python, train.py]' (or 'script: train.py') to the file, "
                          "or pass command=", "command")
    if sources is None:
        if config is not None:
            sources = [registry.rebuild(d) for d in config.source_descriptions(spec.max_parallel_jobs)]
        elif spec.max_parallel_jobs is not None or spec.environment:
            own = {"max_parallel_jobs": spec.max_parallel_jobs} if spec.max_parallel_jobs is not None else {}
            sources = [registry.default_source(**own)]
    for source in sources or ():
        if spec.environment and getattr(source, "environment", None) == Environment():
            source.environment = spec.environment
    options: dict[str, Any] = {
        "space": spec.plan, "command": command, "sources": sources, "name": spec.name,
        "arg_style": spec.arg_style, "env": {**(config.env if config else {}), **spec.env},
        "wandb_group": spec.wandb_group, "metadata": spec.metadata, "reference_args": config is not None,
        "objective": spec.objective,
        "origin": {"file": str(spec.path) if spec.path else None, "hydra_defaults": list(spec.hydra_defaults),
                   "project": config.describe() if config else None},
    }
    if config is not None:
        options["workdir"], options["sweeps_root"] = config.root, config.sweeps_dir()
    elif spec.path is not None:
        options["workdir"] = spec.path.parent
    options.update(kwargs)
    if isinstance(options["space"], Search) and not options.get("objective"):
        raise ConfigError("a search needs a metric to optimize: add metric: {name: val_loss, goal: minimize} (or "
                          "objective: {val_loss: min}) to the file, or pass objective=", "metric")
    return options
