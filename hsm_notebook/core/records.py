"""How a sweep is written down and rebuilt: sources from their ``describe()`` records,
the retry policy from its dict, where new sweep folders go."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from . import registry
from .errors import ConfigError
from .job import JobTemplate
from .retry import RetryPolicy
from .source import ComputeSource


def rebuild_source(description: Mapping[str, Any]) -> ComputeSource:
    """A source from its ``describe()`` record (used by ``attach``): built-in or the user's own."""
    return registry.rebuild(description)


def retry_policy(value: RetryPolicy | Mapping[str, Any] | None) -> RetryPolicy:
    if value is None:
        return RetryPolicy()
    if isinstance(value, RetryPolicy):
        return value
    if isinstance(value, Mapping):
        unknown = set(value) - {"max_attempts", "retry_failed", "backoff", "max_backoff"}
        if unknown:
            raise ConfigError(f"unknown keys {sorted(unknown)}", "retry")
        return RetryPolicy(**value)
    raise ConfigError(f"must be a RetryPolicy or a mapping, got {value!r}", "retry")


def default_sweeps_dir() -> Path:
    return Path(os.environ.get("HSM_SWEEPS_DIR", Path.cwd() / "sweeps"))


def git_state(workdir: str | Path) -> Optional[dict[str, Any]]:
    """``{"commit": sha, "dirty": bool}`` of the git repository holding ``workdir``, or None (no git,
    not a repository, no commit yet).  Dirty means tracked files differ from the commit (staged or
    not); untracked files do not count."""
    try:
        out = subprocess.run(["git", "-C", str(workdir), "status", "--porcelain=v2", "--branch", "--untracked-files=no"],
                             capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL,
                             env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"})  # a status never takes the index lock
    except (OSError, subprocess.SubprocessError):
        return None
    lines = out.stdout.splitlines()
    commit = next((line.split()[2] for line in lines if line.startswith("# branch.oid ")), None)
    if out.returncode != 0 or commit is None or commit == "(initial)":
        return None
    return {"commit": commit, "dirty": any(not line.startswith("#") for line in lines)}


def check_sources(sources: Optional[Sequence[ComputeSource]], template: JobTemplate) -> list[ComputeSource]:
    if sources is None:
        sources = [registry.default_source()]
    if isinstance(sources, ComputeSource):
        sources = [sources]
    sources = list(sources)
    if not sources or not all(isinstance(s, ComputeSource) for s in sources):
        raise ConfigError("must be a list of ComputeSource objects, e.g. [LocalComputeSource()]", "sources")
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise ConfigError(f"each source needs its own name, got {names}", "sources")
    for s in sources:
        s.validate(template)
    return sources


_DIRECTIONS = {"min": "min", "minimize": "min", "max": "max", "maximize": "max"}


def objective(value: Any) -> Optional[dict[str, str]]:
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


def recent_sweeps(roots: Optional[Sequence[Path]] = None, limit: int = 20) -> list[dict[str, Any]]:
    """The sweep folders under ``roots`` (default: the sweeps folder, and a reference project's
    ``sweeps/outputs``), the most recently changed first: id, folder, description, counts, when it
    was created and last changed, and who drives it now (None: nobody)."""
    import contextlib
    import sqlite3

    import yaml

    from .sweepdir import LEDGER, RECORD, lock_holder

    roots = list(roots) if roots is not None else [default_sweeps_dir(), Path.cwd() / "sweeps" / "outputs"]
    folders = {d.absolute() for root in roots if Path(root).is_dir() for d in Path(root).iterdir()
               if (d / RECORD).is_file() and (d / LEDGER).is_file()}
    changed = {d: max((d / LEDGER).stat().st_mtime, (d / (LEDGER + "-wal")).stat().st_mtime
                      if (d / (LEDGER + "-wal")).exists() else 0.0) for d in folders}
    out = []
    for folder in sorted(folders, key=changed.get, reverse=True)[:limit]:
        try:
            record = yaml.safe_load((folder / RECORD).read_text()) or {}
            with contextlib.closing(sqlite3.connect(f"file:{folder / LEDGER}?mode=ro", uri=True)) as conn:
                counts = dict(conn.execute("SELECT state, COUNT(*) FROM tasks GROUP BY state").fetchall())
        except (OSError, sqlite3.Error, yaml.YAMLError) as exc:
            out.append({"folder": folder, "sweep_id": folder.name, "problem": f"cannot be read: {exc}"})
            continue
        out.append({"folder": folder, "sweep_id": record.get("sweep_id", folder.name), "name": record.get("name"),
                    "description": (record.get("metadata") or {}).get("description"),
                    "created": record.get("created"), "changed": changed[folder], "counts": counts,
                    "driven_by": lock_holder(folder)})
    return out
