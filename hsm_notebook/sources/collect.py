"""Finished jobs' files coming home from a remote host: what is chosen and how it travels.

``collect=`` patterns follow one glob grammar, anchored at the job's folder (:func:`pattern_regex`);
the product's own files (``core.jobpaths.NAMES.product``) always come back.  The remote lists the
folders' files NUL-separated, the controller chooses with that grammar and sends the choice back,
and one tar stream carries the files, written to disk as they arrive.  A chosen file that did not
come back is named (:class:`Fetched`).
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import re
import shlex
import shutil
import tarfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncssh

from ..core.model.errors import ConfigError, shorten
from ..core.spec.jobpaths import NAMES
from .sync import wildcard_regex


def check_patterns(patterns: Sequence[str] | str | None) -> list[str] | None:
    """``collect=``: None (every file) or globs anchored at a job's folder (see :func:`pattern_regex`),
    refused in words."""
    if patterns is None:
        return None
    items = [patterns] if isinstance(patterns, str) else patterns
    if not isinstance(items, (list, tuple)):
        raise ConfigError(f"must be a list of file patterns such as ['*.log', 'eval/*.json', '**/*.csv'], or None "
                          f"for every file; got {patterns!r}", "collect")
    for p in items:
        if (not isinstance(p, str) or not p.strip() or p.startswith("/") or ".." in p.split("/")
                or any(c in p for c in "\n\0")):
            raise ConfigError(f"{p!r} is not a usable pattern: patterns are anchored at the job's folder ('*.log' "
                              "for its own files, 'eval/*.json', '**/*.csv' at any depth), no leading '/', no '..'",
                              "collect")
    return list(items)


def pattern_regex(pattern: str) -> str:
    """One ``collect=`` pattern as a regex over a file's path inside the job's folder.  The grammar:
    anchored at the job's folder (``*.log`` is a file of the folder itself, ``eval/*.json`` one of
    ``eval/``); ``*``, ``?`` and ``[...]`` stay inside one name (``\\`` escapes); a ``**`` component
    stands for any number of folders, none included (``**/*.json`` anywhere, ``eval/**`` everything
    under ``eval/``); a trailing ``/`` means everything under that folder."""
    parts = pattern.rstrip("/").split("/") + (["**"] if pattern.endswith("/") else [])
    out = []
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if part == "**":
            out.append(".+" if last else "(?:[^/]+/)*")
        else:  # the one reading of wildcards (sync's); a "**" inside a name stays inside it
            out.append(wildcard_regex(re.sub(r"\*{2,}", "*", part)) + ("" if last else "/"))
    return "".join(out)


def product_file(path: str) -> bool:
    """A file the product itself reads (``NAMES.product``, also in an earlier run's ``runN/``)."""
    head, _, rest = path.partition("/")
    if not rest:
        return path in NAMES.product
    return NAMES.run_index(head) is not None and "/" not in rest and rest in NAMES.product


def selector(patterns: Sequence[str] | None) -> Callable[[str], bool]:
    """``wanted(path)`` for files of a job's folder: every file without patterns; else the product's
    own files and those a pattern matches."""
    if patterns is None:
        return lambda path: True
    rx = re.compile("|".join(f"(?:{pattern_regex(p)})" for p in patterns) or "(?!)", re.DOTALL)
    return lambda path: product_file(path) or rx.fullmatch(path) is not None


def wanted(name: str, path: str, patterns: Sequence[str] | None) -> bool:
    """Whether the file ``path`` (relative to job ``name``'s folder) is fetched (see :func:`selector`)."""
    return selector(patterns)(path)


def fetch_script(tasks_dir: str, names: Sequence[str], token: str) -> str:
    """The remote side of a fetch (``sh -c``): which folders are missing; then the regular files of the
    others, NUL-separated (newline-separated where tar cannot read NUL-separated names: "list nl"),
    ended by ``TOKEN-end``; then it reads the chosen ones on stdin and sends them as one tar stream."""
    q = shlex.quote
    return (f"t={token}; set --\n"
            f"if cd {q(tasks_dir)} 2>/dev/null; then for j in {' '.join(q(n) for n in names)}; do\n"
            f'  if [ -d "$j" ]; then set -- "$@" "$j"; else echo "$t gone $j"; fi; done\n'
            f'else echo "$t root"; fi\n'
            f'echo "$t data $#"; [ $# -gt 0 ] || exit 0\n'
            # GNU tar's posix format keeps sub-second mtimes (the job's start and end times); others fall back
            f"f=; tar --format=posix -cf /dev/null /dev/null 2>/dev/null && f=--format=posix\n"
            f"if tar --null -cf /dev/null -T /dev/null 2>/dev/null && find /dev/null -print0 >/dev/null 2>&1; then\n"
            f'  echo "$t list nul"; find "$@" -type f -print0; printf "%s-end\\0" "$t"\n'
            f'  exec tar $f --null -cf - -T -\n'
            f'else echo "$t list nl"; find "$@" -type f -print; printf "%s-end\\n" "$t"\n'
            f'  exec tar $f -cf - -T -; fi\n')


@dataclass
class Fetched:
    """What a fetch brought: ``gone``: jobs whose folder is not there (why); ``left``: files a job's
    folder holds that were chosen and did not come back, in words naming them."""

    gone: dict[str, str] = field(default_factory=dict)
    left: dict[str, str] = field(default_factory=dict)


def left_note(files: Sequence[str], why: str) -> str:
    shown = ", ".join(repr(f) for f in files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")
    return (f"{len(files)} file(s) of its remote folder did not come back: {shown}"
            + (f" ({why})" if why else "") + "; they stay on the remote")


class _PipeOut(asyncio.Protocol):
    """Flow control of the pipe to the writer thread: ``ready`` is clear while its buffer is full."""

    def __init__(self) -> None:
        self.ready = asyncio.Event()
        self.ready.set()
        self.lost = False

    def pause_writing(self) -> None:
        self.ready.clear()

    def resume_writing(self) -> None:
        self.ready.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True  # the thread closed its end (it failed): nothing more is read
        self.ready.set()


async def pipe_to_thread(stream: asyncssh.SSHReader, consume: Callable[..., Any], *args: Any) -> Any:
    """Feed ``stream`` to ``consume(read_fd, *args)`` running in a thread, through a pipe, reading the
    stream only as fast as the thread takes it: at most about a channel window (2 MiB) and the
    pipe's buffer are held here, whatever the size.  (asyncssh's own ``redirect_stdout`` to a pipe
    kept reading ahead: a slow disk made it hold the whole stream.)"""
    loop = asyncio.get_running_loop()
    read_fd, write_fd = os.pipe()
    if hasattr(fcntl, "F_SETPIPE_SZ"):
        try:
            fcntl.fcntl(write_fd, fcntl.F_SETPIPE_SZ, 1 << 20)
        except OSError:
            pass  # the default 64 KiB works, with more wake-ups
    consumer = asyncio.ensure_future(asyncio.to_thread(consume, read_fd, *args))
    pipe = os.fdopen(write_fd, "wb", buffering=0)
    try:
        transport, out = await loop.connect_write_pipe(_PipeOut, pipe)
    except BaseException:
        pipe.close()
        raise
    try:
        transport.set_write_buffer_limits(high=1 << 20)
        while not out.lost and (chunk := await stream.read(1 << 20)):
            transport.write(chunk)
            await out.ready.wait()
    finally:
        transport.close()  # after what is buffered: the thread then reads EOF
        consumer.add_done_callback(lambda f: f.cancelled() or f.exception())  # read below, or moot
    return await consumer


def extract(read_fd: int, by_name: dict[str, Path]) -> set[tuple[str, str]]:
    """Read a tar stream from ``read_fd`` and write each regular file of job ``<name>/...`` into that
    job's local folder as it arrives (never a whole file in memory).  Links, devices and paths
    leaving the folder are skipped."""
    with os.fdopen(read_fd, "rb") as stream:
        with tarfile.open(fileobj=stream, mode="r|", bufsize=1 << 16) as archive:
            extracted = _extract_members(archive, by_name)
        while stream.read(1 << 16):  # tar's padding after the archive's end: read, so the writer never blocks
            pass
    return extracted


def _extract_members(archive: tarfile.TarFile, by_name: dict[str, Path]) -> set[tuple[str, str]]:
    """A job's members come one after the other; its ``exit_code`` is written after the rest of its
    folder, so a local exit code always means a folder that came home whole (cleanup relies on it)."""
    made: set[Path] = set()
    extracted: set[tuple[str, str]] = set()  # (job, path in its folder) of every file written
    last: tuple[Path, bytes, float] | None = None  # the exit code of the job being extracted
    for member in archive:
        top, _, rest = member.name.partition("/")
        if last is not None and last[0].parent != by_name.get(top):
            _write(*last)
            last = None
        parts = rest.split("/")
        if not rest or top not in by_name or not member.isfile() or ".." in parts or "" in parts:
            continue
        target = by_name[top].joinpath(*parts)
        extracted.add((top, rest))
        if rest == NAMES.params and target.exists():
            continue  # written here at submission
        if target.parent not in made:
            target.parent.mkdir(parents=True, exist_ok=True)
            made.add(target.parent)
        src = archive.extractfile(member)
        assert src is not None
        if rest == NAMES.exit_code and member.size < 4096:
            last = (target, src.read(), member.mtime)
            continue
        with open(target, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        os.utime(target, (member.mtime, member.mtime))
    if last is not None:
        _write(*last)
    return extracted


def tar_why(said: str) -> str:
    """The first reason tar gave for a file it could not send (``Cannot open: Permission denied``)."""
    for line in said.splitlines():
        if ": " in line and ("Cannot" in line or "Permission" in line or "No such" in line):
            return shorten(line.split(": ", 1)[1].strip(), 200)
    return ""


def _write(target: Path, data: bytes, mtime: float) -> None:
    target.write_bytes(data)
    os.utime(target, (mtime, mtime))
