"""A reference HSM project's settings: ``.hsm/config.yaml`` (and the per-machine
``~/.hsm/config.yaml`` under it), read so that such a project runs here with no other set-up.

What is read, by the reference's key names:

- ``project.root``: the project folder (jobs run there).  A root that does not exist on this
  machine (the file came from a colleague's) is taken to be the folder holding ``.hsm/``.
- ``paths.train_script``: the script a sweep file without ``command:``/``script:`` runs;
  ``paths.python_interpreter`` (deprecated there too) the interpreter on this machine;
  ``paths.conda_env``: the conda environment every job runs in.
- ``wandb.project``/``wandb.entity``: ``WANDB_PROJECT``/``WANDB_ENTITY`` of every job.
- ``local:`` (the only block the per-machine file may set): ``sweeps_root`` (where sweep folders
  go), ``visible_gpus`` (the GPUs local jobs may use), ``pre_script``.
- ``distributed:``: with ``enabled: true``, this machine (``local_max_jobs`` slots, 0 for none)
  and every enabled entry of ``remotes`` (``host``, ``ssh_port``, ``ssh_key``,
  ``max_parallel_jobs``, ``conda_env`` or ``python_path``, ``remote_root``, ``gpus``; ``backend:
  slurm|sge|pbs`` with ``spec`` (and ``flavor: pro|torque`` for pbs) for a cluster reached over
  SSH) become the sweep's sources.

Search order as in the reference: ``.hsm/config.yaml``, ``sweeps/hsm_config.yaml``,
``hsm_config.yaml`` of the folder.  The per-machine file's ``local:`` block lies under the
project's (the project wins key by key).  Sources are returned as ``describe()`` records, so core
builds them through the registry without importing a backend.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..._lazy import load
from ..model.errors import ConfigError
from .environment import Environment

log = logging.getLogger(__name__)

PROJECT_FILES = (".hsm/config.yaml", "sweeps/hsm_config.yaml", "hsm_config.yaml")
MACHINE_FILE = "~/.hsm/config.yaml"
#: Batch schedulers a remote may be reached through (``backend:``), each with its ``spec:`` of resources
#: (``partition`` is the queue for sge and pbs; ``flavor: pro|torque`` for pbs).
BATCH_BACKENDS = ("slurm", "sge", "pbs")
_RESOURCE_KEYS = {"walltime": "walltime", "cpus_per_task": "cpus", "mem": "mem", "gpus": "gpus",
                  "gpu_type": "gpu_type", "partition": "partition", "qos": "qos", "account": "account",
                  "modules": "modules", "constraint": "constraint"}


def _read(path: Path) -> dict[str, Any]:
    from .config import load_yaml

    try:
        data = load_yaml(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot be read ({exc}); fix or remove it", str(path)) from None
    if not isinstance(data, Mapping):
        raise ConfigError("must be a YAML mapping (project:, paths:, distributed:, ...)", str(path))
    return dict(data)


def _block(data: Mapping[str, Any], key: str, where: Path) -> dict[str, Any]:
    value = data.get(key) or {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"must be a mapping, got {value!r}", f"{where}: {key}")
    return dict(value)


def _lines(value: Any) -> tuple[str, ...]:
    if not value:
        return ()
    return (value,) if isinstance(value, str) else tuple(str(v) for v in value)


def _gpus(value: Any, field: str) -> list[int] | None:
    """The reference's GPU allowlist: ``all``/absent (None: every GPU), ``cpu`` (none), ``N``
    (the first N), ``[i, j]`` or ``"i,j"``."""
    if value is None or value == "all":
        return None
    if value == "cpu":
        return []
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return list(range(value))
    items = value.split(",") if isinstance(value, str) else value
    try:
        return [int(i) for i in items]
    except (TypeError, ValueError):
        raise ConfigError(f"must be all, cpu, a count, or a list of GPU indices, got {value!r}", field) from None


@dataclass(frozen=True)
class ProjectConfig:
    """What a reference project's config says (see the module docstring)."""

    path: Path
    root: Path
    train_script: str | None = None
    python: str | None = None
    environment: Environment = field(default_factory=Environment)
    sweeps_root: Path | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    local: Mapping[str, Any] = field(default_factory=dict)
    distributed: Mapping[str, Any] = field(default_factory=dict)

    # -- finding and reading ---------------------------------------------------------------
    @classmethod
    def find(cls, *folders: Path | str, machine: Path | str | None = MACHINE_FILE) -> ProjectConfig | None:
        """The config of the first folder that has one (none: None)."""
        for folder in folders:
            for name in PROJECT_FILES:
                path = Path(folder).absolute() / name
                if path.is_file():
                    return cls.load(path, machine=machine)
        return None

    @classmethod
    def load(cls, path: Path | str, *, machine: Path | str | None = MACHINE_FILE) -> ProjectConfig:
        path = Path(path).absolute()
        data = _read(path)
        local = _block(data, "local", path)
        machine_path = Path(machine).expanduser() if machine else None
        if machine_path is not None and machine_path.is_file():
            mine = _read(machine_path)
            ignored = sorted(set(mine) - {"local"})
            if ignored:
                log.warning("%s: only its local: block applies to projects; %s ignored", machine_path, ignored)
            local = {**_block(mine, "local", machine_path), **local}
        home = path.parent.parent if path.parent.name in (".hsm", "sweeps") else path.parent
        project, paths = _block(data, "project", path), _block(data, "paths", path)
        root = Path(str(project.get("root") or home)).expanduser()
        if not root.is_absolute():
            root = home / root
        script = paths.get("train_script") or paths.get("training_script")
        if not root.is_dir():
            log.info("%s: project.root %s does not exist here; using %s", path, root, home)
            if script and Path(str(script)).is_absolute() and Path(str(script)).is_relative_to(root):
                script = str(Path(str(script)).relative_to(root))
            root = home
        elif script and Path(str(script)).is_absolute() and Path(str(script)).is_relative_to(root):
            script = str(Path(str(script)).relative_to(root))
        wandb = _block(data, "wandb", path)
        env = {name: str(wandb[key]) for key, name in (("project", "WANDB_PROJECT"), ("entity", "WANDB_ENTITY"))
               if wandb.get(key)}
        sweeps_root = local.get("sweeps_root")
        return cls(
            path=path, root=root.absolute(), train_script=str(script) if script else None,
            python=str(paths["python_interpreter"]) if paths.get("python_interpreter") else None,
            environment=Environment(conda_env=paths.get("conda_env") or None,
                                    pre_script=_lines(local.get("pre_script"))),
            sweeps_root=Path(str(sweeps_root)).expanduser() if sweeps_root else None,
            env=env, local=local, distributed=_block(data, "distributed", path),
        )

    # -- what a sweep takes from it -----------------------------------------------------------
    def command(self, script: str | None = None) -> tuple[str, ...]:
        """``python <script>``: a sweep file's ``script:`` (relative to the root) or
        ``paths.train_script``.  ``python`` is each source's own interpreter."""
        script = script or self.train_script
        if not script:
            raise ConfigError(f"no script to run: add 'script: train.py' to the sweep file, paths.train_script "
                              f"to {self.path}, or pass command=", "command")
        return ("python", str(script))

    def sweeps_dir(self) -> Path:
        """Where the sweep folders go: ``local.sweeps_root``, else ``<root>/sweeps/outputs`` (the reference's)."""
        return self.sweeps_root or self.root / "sweeps" / "outputs"

    def source_descriptions(self, max_parallel_jobs: int | None = None) -> list[dict[str, Any]]:
        """``describe()`` records of the project's sources: this machine, plus the enabled
        remotes of an enabled ``distributed:`` block."""
        gpus = _gpus(self.local.get("visible_gpus"), "local.visible_gpus") or None
        local: dict[str, Any] = {"type": "local", "name": "local", "python": self.python,
                                 "environment": self.environment.to_dict(), "gpus": gpus}
        dist = self.distributed
        if not dist.get("enabled"):
            return [{**local, "max_parallel_jobs": max_parallel_jobs}]
        remotes = dist.get("remotes") or {}
        if not isinstance(remotes, Mapping):
            raise ConfigError("must map each remote's alias to its settings (host:, ssh_key:, ...)",
                              f"{self.path}: distributed.remotes")
        slots = dist.get("local_max_jobs", 1) if max_parallel_jobs is None else max_parallel_jobs
        out = [{**local, "max_parallel_jobs": slots}] if slots else []
        for alias, remote in remotes.items():
            remote = dict(remote or {})
            if remote.get("enabled", True):
                out.append(self._remote(str(alias), remote))
        if not out:
            raise ConfigError("enables no source: set local_max_jobs above 0 or enable a remote",
                              f"{self.path}: distributed")
        return out

    def _remote(self, alias: str, remote: Mapping[str, Any]) -> dict[str, Any]:
        where = f"{self.path}: distributed.remotes.{alias}"
        unknown = set(remote) - {"host", "ssh_key", "ssh_port", "enabled", "backend", "max_parallel_jobs", "gpus",
                                 "conda_env", "python_path", "remote_root", "rsync_excludes", "keep_remote_on_success",
                                 "spec", "workdir", "archive_dir", "archive_on", "qos_whitelist", "resumable",
                                 "flavor"}
        if unknown:
            raise ConfigError(f"unknown keys {sorted(unknown)}", where)
        dist = self.distributed
        level = remote if ("conda_env" in remote or "python_path" in remote) else dist
        conda = level.get("conda_env") or (None if "python_path" in level else self.environment.conda_env)
        environment = Environment(conda_env=conda or None).to_dict()
        ssh: dict[str, Any] = {
            "type": "ssh", "name": alias, "host": str(remote.get("host") or alias), "port": remote.get("ssh_port"),
            "client_keys": [str(remote["ssh_key"])] if remote.get("ssh_key") else None,
            "max_parallel_jobs": int(remote.get("max_parallel_jobs", 1)), "environment": environment,
            "python": str(level.get("python_path") or "python3"),
        }
        root = remote.get("remote_root") or dist.get("remote_root")
        if root:
            ssh["remote_root"] = str(root)
        excludes = [*(dist.get("rsync_excludes") or ()), *(remote.get("rsync_excludes") or ())]
        if excludes:
            default = load("hsm_notebook.sources.sync:DEFAULT_EXCLUDE")  # extended, as the reference does
            ssh["sync_exclude"] = [*default, *map(str, excludes)]
        keep = remote.get("keep_remote_on_success", dist.get("keep_remote_on_success"))
        if keep is not None:
            ssh["keep_remote"] = bool(keep)
        backend = remote.get("backend", "ssh")
        if backend == "ssh":
            ssh["gpus"] = _gpus(remote.get("gpus"), f"{where}.gpus") or None
            return ssh
        if backend not in BATCH_BACKENDS:
            raise ConfigError(f"backend must be ssh, {', '.join(BATCH_BACKENDS)}, got {backend!r}", where)
        if "flavor" in remote and backend != "pbs":
            raise ConfigError(f"flavor is for backend: pbs (pro or torque), not {backend}", where)
        spec = dict(remote.get("spec") or {})
        resources = {_RESOURCE_KEYS[k]: v for k, v in spec.items() if k in _RESOURCE_KEYS}
        if set(spec) - set(_RESOURCE_KEYS):
            raise ConfigError(f"spec keys {sorted(set(spec) - set(_RESOURCE_KEYS))} are not known; "
                              f"known: {sorted(_RESOURCE_KEYS)}", where)
        login = {**ssh, "name": f"{alias}-login", "max_parallel_jobs": 1}
        flavor = {"flavor": str(remote.get("flavor", "pro"))} if backend == "pbs" else {}
        return {"type": backend, "name": alias, "max_parallel_jobs": int(remote.get("max_parallel_jobs", 100)),
                "resources": resources, "login": login, "environment": environment, **flavor}

    def describe(self) -> dict[str, Any]:
        """For the sweep record."""
        return {"path": str(self.path), "root": str(self.root)}


def find_project(sweep_file: Path | None = None, *, cwd: Path | None = None) -> ProjectConfig | None:
    """The project config for a run started in ``cwd`` (default: the current folder) on
    ``sweep_file``: that of ``cwd``, else of the sweep file's folder or its parent (``sweeps/sweep.yaml``)."""
    folders: list[Path] = [Path(cwd or Path.cwd())]
    if sweep_file is not None:
        here = Path(sweep_file).absolute().parent
        folders += [here, here.parent]
    return ProjectConfig.find(*dict.fromkeys(p.absolute() for p in folders))

