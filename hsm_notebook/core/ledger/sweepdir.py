"""The sweep folder as files: its names, atomic writes, the controller lock, and how it is built
whole or not at all.

``Sweep(...)`` builds a sweep folder in a hidden sibling ``.<name>.creating-<hex>`` (its
controller lock held, so a build in progress is told from a crashed one) and renames it into
place.  What an interrupted creation left behind is named here, with what to do about it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import glob
import os
import re
import secrets
import shutil
import socket
import stat
import time
from pathlib import Path

from ..model.errors import ConfigError, SweepLockedError

LEDGER = "ledger.sqlite"
RECORD = "sweep.yaml"
LOCK = ".controller.lock"


# -- sweep ids and the folders named after them -------------------------------------------
#: A sweep's id (its folder's name): ``[<name>-]<YYYYmmdd-HHMMSS>-<4 hex>``.
_STAMPED = re.compile(r"-?\d{8}-\d{6}-[0-9a-f]{4}")


def new_sweep_id(name: str | None) -> str:
    """A new sweep id: the name (if any), the time, and a few random hex digits."""
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{name + '-' if name else ''}{stamp}-{secrets.token_hex(2)}"


def named(roots: list[Path], name: str) -> list[Path]:
    """The whole sweep folders under ``roots`` whose id was made for ``name``, newest first."""
    found = [folder for root in roots if root.is_dir() for folder in root.glob(f"{glob.escape(name)}-*")
             if _STAMPED.fullmatch(folder.name[len(name):]) and (folder / LEDGER).is_file()
             and (folder / RECORD).is_file()]
    return sorted(found, key=lambda folder: folder.name[len(name):], reverse=True)


# -- folders left by an interrupted Sweep(...) ------------------------------------------
#: A sweep folder is built in a hidden sibling ``.<name>.creating-<hex>`` and renamed into place.
CREATING = ".creating-"
#: Files a sweep folder holds; any of them without both LEDGER and RECORD marks an unfinished one.
_SWEEP_FILES = (LEDGER, LEDGER + "-wal", LEDGER + "-shm", LEDGER + "-journal", RECORD, LOCK)


def building_for(directory: Path) -> str | None:
    """The folder name a hidden build folder ``.<name>.creating-<hex>`` was made for, else None."""
    name = directory.name
    if not name.startswith(".") or CREATING not in name:
        return None
    target, _, suffix = name[1:].rpartition(CREATING)
    return target if target and suffix and all(c in "0123456789abcdef" for c in suffix) else None


def lock_holder(directory: Path) -> str | None:
    """Who holds the controller lock in ``directory`` ("pid N on HOST"); None when no live process does."""
    try:
        fd = os.open(directory / LOCK, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _holder(fd)
    finally:
        os.close(fd)
    return None


def take_lock(directory: Path) -> int:
    """Take the controller lock of ``directory`` (one live process drives a sweep; the OS drops the
    lock when it dies) and write who holds it; the open descriptor, for :func:`drop_lock`."""
    fd = os.open(directory / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(fd)
        os.close(fd)
        raise SweepLockedError(
            f"sweep {directory.name} is being driven by {holder}; nothing was changed. To change it, stop that "
            "controller (or wait for it to end) and try again, or do it in the process that drives it; to watch "
            "its progress without driving it: Sweep.attach(dir, resume=False)"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode())
    return fd


def drop_lock(fd: int) -> None:
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


def _holder(fd: int) -> str:
    """What the lock file says ("pid N on HOST"): a controller writes it just after it takes the lock,
    so an empty file is read again for a moment before saying "another process"."""
    for _ in range(20):
        text = os.pread(fd, 256, 0).decode(errors="replace").strip()
        if text:
            return text
        time.sleep(0.025)
    return "another process"


def unfinished(directory: Path) -> str | None:
    """What a folder left by an interrupted ``Sweep(...)`` is and what to do about it; None for a
    whole sweep folder, an empty folder, a missing one or one that holds no sweep files at all."""
    redo = "delete it and create the sweep again"
    target = building_for(directory)
    if target is not None and directory.is_dir():
        holder = lock_holder(directory)
        if holder is not None:
            return (f"{directory} is the folder of sweep {target} being created right now by {holder}; "
                    f"wait for that Sweep(...) to return, then use {directory.parent / target}")
        return (f"{directory} is an unfinished sweep folder left by an interrupted Sweep(...) "
                f"(it was being built for {directory.parent / target}); {redo}")
    if not directory.is_dir() or ((directory / LEDGER).is_file() and (directory / RECORD).is_file()):
        return None
    if not any((directory / name).exists() for name in _SWEEP_FILES):
        return None
    missing = " and ".join(name for name in (RECORD, LEDGER) if not (directory / name).is_file())
    return f"{directory} is an unfinished sweep folder left by an interrupted Sweep(...) (no {missing}); {redo}"


def check_new(directory: Path) -> None:
    """Refuse, with what to do instead, a ``directory`` a new sweep cannot be created in."""
    problem = unfinished(directory)
    if problem is not None:
        raise ConfigError(problem, "directory")
    if (directory / LEDGER).exists() and (directory / RECORD).exists():
        raise ConfigError(f"{directory} already holds a sweep; use Sweep.attach() to reopen it", "directory")
    try:
        if directory.is_dir() and any(directory.iterdir()):
            raise ConfigError(f"{directory} holds other files; give a new or an empty folder for the sweep",
                              "directory")
    except OSError as exc:
        raise ConfigError(f"{directory} is not readable ({exc.strerror}); choose another directory",
                          "directory") from None
    if directory.exists() and not directory.is_dir():
        raise ConfigError(f"{directory} is a file; give a new or an empty folder for the sweep", "directory")


#: The folders above a build folder that its creation made (deepest first): a build that is
#: discarded takes them with it, so a refused sweep leaves no empty ``sweeps/`` behind.
_MADE_FOR: dict[Path, list[Path]] = {}


def build_folder(directory: Path) -> Path:
    """A new hidden sibling of ``directory`` to build the sweep in (made with the usual mode).
    Folders above it that do not exist yet are made too, and removed again by :func:`discard`."""
    made = [p for p in (directory.parent, *directory.parent.parents) if not p.exists()]
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
        while True:
            build = directory.parent / f".{directory.name}{CREATING}{secrets.token_hex(4)}"
            with contextlib.suppress(FileExistsError):
                build.mkdir()
                _MADE_FOR[build] = made
                return build
    except OSError as exc:
        _remove_empty(made)
        raise ConfigError(f"{directory} is not writable ({exc.strerror}); choose another directory",
                          "directory") from None


def discard(build: Path) -> None:
    """Remove an unfinished ``build`` folder and the folders above it that its creation made (if
    they are still empty: another sweep may have been created there meanwhile)."""
    shutil.rmtree(build, ignore_errors=True)
    _remove_empty(_MADE_FOR.pop(build, []))


def _remove_empty(folders: list[Path]) -> None:
    for folder in folders:  # deepest first
        try:
            folder.rmdir()
        except OSError:
            return


def move_into_place(build: Path, directory: Path) -> None:
    """Rename the finished ``build`` folder to ``directory``: one atomic step, also onto an existing
    empty folder (which keeps its mode).  Where the OS refuses that rename (an empty mount point),
    the files are moved in one by one with ``sweep.yaml`` last: a crash in between leaves a folder
    that ``unfinished`` names."""
    _MADE_FOR.pop(build, None)
    existing = directory.is_dir()
    if existing:
        os.chmod(build, stat.S_IMODE(directory.stat().st_mode))
    try:
        os.rename(build, directory)
        return
    except OSError as exc:
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST) or not existing:
            raise ConfigError(f"{directory} is not writable or was filled by another process meanwhile "
                              f"({exc.strerror}); choose another directory", "directory") from None
    for entry in sorted(build.iterdir(), key=lambda p: (p.name == RECORD, p.name != LOCK)):
        shutil.move(str(entry), str(directory / entry.name))
    build.rmdir()
