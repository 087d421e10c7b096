"""How a sweep is written down and rebuilt: sources from their ``describe()`` records,
the retry policy from its dict, where new sweep folders go, how a sweep is found by its name
and what a re-run ``Sweep(..., name=)`` changes of the recorded one."""

from __future__ import annotations

import hashlib
import inspect
import os
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from ..base import registry
from ..base.source import ComputeSource
from ..model.errors import ConfigError
from ..model.files import default_sweeps_dir
from ..spec.job import JobTemplate
from ..spec.policy import RetryPolicy
from . import sweepdir


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


def git_state(workdir: str | Path) -> dict[str, Any] | None:
    """``{"commit": sha, "dirty": bool}`` of the git repository holding ``workdir``, or None (no git,
    not a repository, no commit yet).  Dirty means tracked files differ from the commit (staged or
    not); untracked files do not count."""
    try:
        out = subprocess.run(["git", "-C", str(workdir), "status", "--porcelain=v2", "--branch",
                              "--untracked-files=no"],
                             capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL,
                             env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"})  # a status never takes the index lock
    except (OSError, subprocess.SubprocessError):
        return None
    lines = out.stdout.splitlines()
    commit = next((line.split()[2] for line in lines if line.startswith("# branch.oid ")), None)
    if out.returncode != 0 or commit is None or commit == "(initial)":
        return None
    return {"commit": commit, "dirty": any(not line.startswith("#") for line in lines)}


def check_sources(sources: Sequence[ComputeSource] | None, template: JobTemplate) -> list[ComputeSource]:
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


def recent_sweeps(roots: Sequence[Path] | None = None, limit: int = 20) -> list[dict[str, Any]]:
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
    for folder in sorted(folders, key=changed.__getitem__, reverse=True)[:limit]:
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


# -- a sweep found again by its name ---------------------------------------------------------
#: What a re-run ``Sweep(..., name=)`` must ask the same as the sweep it finds, and how to say it.
_SAME = {"space": "its space", "job": "its command", "sources": "its sources", "function": "its function",
         "objective": "its objective", "retry": "its retry policy", "strategy": "its strategy",
         "wandb_group": "its wandb_group", "metadata": "its metadata", "search": "its search"}


def differences(stored: Mapping[str, Any], asked: Mapping[str, Any]) -> list[str]:
    """What ``asked`` (a new sweep's record) changes of ``stored`` (the record of a sweep of the same
    name), in words; settings of the run itself (poll interval, timeouts, health) are not compared."""
    out = []
    for key, words in _SAME.items():
        old, new = stored.get(key), yaml.safe_load(yaml.safe_dump(asked.get(key)))  # as sweep.yaml holds it
        if key == "function" and old and new and "code" not in old:  # recorded before code digests
            new = {k: v for k, v in new.items() if k != "code"}
        if (old or None) != (new or None):
            out.append(words)
    return out


#: What ``differences`` says when only the space differs (a sweep that may be extended).
SPACE_DIFFERS = _SAME["space"]


def sweep_folder(directory: str | Path) -> Path:
    """``directory`` itself, or, for a bare name that is no folder here, the newest sweep of that name
    in the sweeps folder (or a reference project's ``sweeps/outputs``)."""
    path, text = Path(directory), str(directory)
    if path.exists() or not text or "/" in text or text.startswith("."):
        return path
    roots = [default_sweeps_dir(), Path.cwd() / "sweeps" / "outputs"]
    found = sweepdir.named(roots, text)
    if not found:
        raise ConfigError(f"no sweep named {text!r} in {' or '.join(str(r) for r in roots)}, and no folder {text!r} "
                          "here; give the sweep's folder (sweeps/<sweep id>: %hsm lists them) or its name", "directory")
    return found[0]


def code_digest(fn: Callable[..., Any]) -> str | None:
    """A digest of a function's source (else its bytecode): how a re-run cell tells the same function
    from an edited one (the pickle itself differs between kernels: it names the cell)."""
    try:
        text = inspect.getsource(fn).encode()
    except (OSError, TypeError):
        code = getattr(fn, "__code__", None)
        if code is None:
            return None
        text = code.co_code + repr(code.co_consts).encode()
    return hashlib.sha256(text).hexdigest()[:16]
