"""Finished jobs' files coming home from a remote host: what is chosen and how it travels.

``collect=`` patterns follow one glob grammar, anchored at the job's folder (:func:`pattern_regex`);
the product's own files (``core.jobpaths.NAMES.product``) always come back.  The remote lists the
folders' files NUL-separated (with the sizes they exceed), the controller chooses with that grammar
and sends the choice back, and one tar stream carries the files, read by a small tar reader and
written to disk as they arrive.  A chosen file that did not come back is named (:class:`Fetched`).
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import re
import shlex
import shutil
import tarfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

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


#: A listed file is repeated once per size it exceeds (bytes): the controller tells small transfers,
#: which go through the persistent shell, from large ones, which get a shell of their own.
SIZES = (1 << 16, 1 << 20, 8 << 20)
#: A transfer of at least this many bytes (as far as :data:`SIZES` tell) goes over the bulk shell.
BULK = 8 << 20


def list_script(tasks_dir: str, names: Sequence[str], token: str, nul: bool) -> str:
    """The first half of a fetch, run in the persistent shell: which folders are missing ("TOKEN gone
    NAME", or "TOKEN root" for the tasks folder), "TOKEN data N", then the regular files of the N
    others, NUL-separated (newline-separated where tar cannot read NUL-separated names), each
    repeated once per size of :data:`SIZES` it exceeds (see :func:`parse_listing`)."""
    q = shlex.quote
    end = "-print0" if nul else "-print"
    sizes = " ".join(f"-size +{size}c {end}" for size in SIZES)
    return (f"t={token}; set --\n"
            f"if cd {q(tasks_dir)} 2>/dev/null; then for j in {' '.join(q(n) for n in names)}; do\n"
            f'  if [ -d "$j" ]; then set -- "$@" "$j"; else echo "$t gone $j"; fi; done\n'
            f'else echo "$t root"; fi\n'
            f'echo "$t data $#"; [ $# -eq 0 ] || find "$@" -type f {end} {sizes}')


@dataclass
class Listing:
    """What :func:`list_script` printed: the missing folders (all of them: ``root``) and each file with
    the size it is known to exceed."""

    missing: set[str] = field(default_factory=set)
    root: bool = False
    files: list[tuple[str, int]] = field(default_factory=list)  # ("job/rel/path", at least this many bytes)


def parse_listing(out: bytes, token: str, nul: bool) -> Listing:
    """:func:`list_script`'s output read (a name holding a newline arrives in pieces where ``nul`` is False)."""
    listing = Listing()
    pos, head = 0, token.encode() + b" "
    while (eol := out.find(b"\n", pos)) >= 0:
        line, pos = out[pos:eol].strip(), eol + 1
        if not line.startswith(head):
            continue
        kind, _, arg = line[len(head):].decode(errors="replace").partition(" ")
        if kind == "gone":
            listing.missing.add(arg)
        elif kind == "root":
            listing.root = True
        elif kind == "data":
            break
    else:
        return listing
    entries = out[pos:].split(b"\0" if nul else b"\n")[:-1]  # each entry ends with its separator
    i = 0
    while i < len(entries):
        repeats = 0
        while i + repeats + 1 < len(entries) and entries[i + repeats + 1] == entries[i] and repeats < len(SIZES):
            repeats += 1
        listing.files.append((entries[i].decode("utf-8", errors="surrogateescape"),
                              SIZES[repeats - 1] if repeats else 0))
        i += repeats + 1
    return listing


def tar_script(tasks_dir: str, paths: Sequence[str], errors: str, *, nul: bool, posix: bool) -> str:
    """The second half: the chosen files (``job/rel``) as one tar stream on stdout, tar's complaints in
    the file ``errors`` (removed when it had none).  GNU tar's posix format keeps sub-second mtimes
    (the job's start and end times); names travel as printf arguments, NUL-separated where tar reads them."""
    q = shlex.quote
    sep = "\\000" if nul else "\\n"
    words = " ".join(q(p) for p in paths)
    options = ("--format=posix " if posix else "") + ("--null " if nul else "")
    return (f"cd {q(tasks_dir)} && printf '%s{sep}' {words} | tar {options}-cf - -T - 2>{q(errors)} && "
            f"rm -f {q(errors)}")


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


class ByteStream(Protocol):
    """What :func:`pipe_to_thread` reads: ``read(n)`` returns ``b""`` at the end (an asyncssh reader, or
    a command's output in a persistent shell)."""

    async def read(self, n: int = -1) -> bytes: ...


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


async def pipe_to_thread(stream: ByteStream, consume: Callable[..., Any], *args: Any, ahead: int = 1 << 20) -> Any:
    """Feed ``stream`` to ``consume(read_fd, *args)`` running in a thread, through a pipe, reading the
    stream only as fast as the thread takes it: at most about a channel window (2 MiB), the pipe's
    buffer and ``ahead`` bytes are held here, whatever the size.  (asyncssh's own ``redirect_stdout``
    to a pipe kept reading ahead: a slow disk made it hold the whole stream.)  A small transfer over
    the persistent shell reads further ahead, so the commands after it wait for the network, not the disk."""
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
        transport.set_write_buffer_limits(high=ahead)
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
    with os.fdopen(read_fd, "rb", buffering=1 << 16) as stream:
        extracted = _extract_members(_members(stream), stream, by_name)
        while stream.read(1 << 16):  # tar's padding after the archive's end: read, so the writer never blocks
            pass
    return extracted


_BLOCK = 512
_SMALL = 1 << 16  # a file up to this size is written from memory in one call
_ZERO = bytes(_BLOCK)


def _exact(stream: Any, n: int) -> bytes:
    data = stream.read(n)
    if len(data) != n:
        raise tarfile.ReadError("unexpected end of the tar stream")
    return data


def _number(field: bytes) -> int:
    if field[:1] and field[0] & 0x80:  # GNU base-256 (sizes over 8 GiB)
        value = int.from_bytes(field[1:], "big")
        return value - (1 << (8 * len(field) - 8)) if field[0] & 0x40 else value
    text = field.split(b"\0", 1)[0].strip()
    try:
        return int(text, 8) if text else 0
    except ValueError:
        raise tarfile.ReadError(f"invalid number in a tar header: {text!r}") from None


def _skip(stream: Any, size: int) -> None:
    left = size + (-size % _BLOCK)
    while left:
        left -= len(_exact(stream, min(left, 1 << 20)))


def _members(stream: Any) -> Iterator[tuple[str, bytes, int, float]]:
    """The members of a tar stream (ustar, GNU and pax headers; what Python's tarfile reads, at a
    fraction of its cost: a collection of many small folders is mostly headers): ``(name, type, size,
    mtime)``; the caller reads or skips each member's data (``size`` bytes, then padding)."""
    pax: dict[bytes, bytes] = {}
    long_name: bytes | None = None
    while True:
        header = stream.read(_BLOCK)
        if len(header) < _BLOCK or header == _ZERO:
            return  # the end (two zero blocks; a stream cut short shows as missing files, or fails in _exact)
        if sum(header[:148]) + 256 + sum(header[156:]) != _number(header[148:156]):
            raise tarfile.ReadError("bad checksum in a tar header")
        kind, size = header[156:157], _number(header[124:136])
        if kind in (b"x", b"g", b"L", b"K"):
            data = _exact(stream, size)
            _exact(stream, -size % _BLOCK)
            if kind == b"x":
                pax.update(_pax_records(data))
            elif kind == b"L":
                long_name = data.split(b"\0", 1)[0]
            continue
        name = header[:100].split(b"\0", 1)[0]
        if header[257:262] == b"ustar" and (prefix := header[345:500].split(b"\0", 1)[0]):
            name = prefix + b"/" + name
        name = pax.get(b"path", long_name or name)
        size = int(pax[b"size"]) if b"size" in pax else size
        mtime = float(pax[b"mtime"]) if b"mtime" in pax else float(_number(header[136:148]))
        pax, long_name = {}, None
        yield name.decode("utf-8", "surrogateescape"), kind, size, mtime


def _pax_records(data: bytes) -> dict[bytes, bytes]:
    records, pos = {}, 0
    while pos < len(data):
        space = data.find(b" ", pos)
        if space < 0 or not data[pos:space].isdigit():
            break
        length = int(data[pos:space])
        key, _, value = data[space + 1:pos + length - 1].partition(b"=")
        records[key] = value
        pos += length
    return records


class _Part:
    """The next ``size`` bytes of a stream, as a file to copy from."""

    def __init__(self, stream: Any, size: int):
        self.stream, self.left = stream, size

    def read(self, n: int = -1) -> bytes:
        data = _exact(self.stream, self.left if n < 0 else min(n, self.left)) if self.left else b""
        self.left -= len(data)
        return data


def _extract_members(members: Iterator[tuple[str, bytes, int, float]], stream: Any,
                     by_name: dict[str, Path]) -> set[tuple[str, str]]:
    """A job's members come one after the other; its ``exit_code`` is written after the rest of its
    folder, so a local exit code always means a folder that came home whole (cleanup relies on it)."""
    made: set[Path] = set()
    extracted: set[tuple[str, str]] = set()  # (job, path in its folder) of every file written
    last: tuple[Path, bytes, float] | None = None  # the exit code of the job being extracted
    for name, kind, size, mtime in members:
        top, _, rest = name.partition("/")
        if last is not None and last[0].parent != by_name.get(top):
            _write(*last)
            last = None
        parts = rest.split("/")
        if not rest or top not in by_name or kind not in (b"0", b"\0", b"7") or ".." in parts or "" in parts:
            _skip(stream, size)
            continue
        target = by_name[top].joinpath(*parts)
        extracted.add((top, rest))
        if rest == NAMES.params and target.exists():
            _skip(stream, size)
            continue  # written here at submission
        if target.parent not in made:
            target.parent.mkdir(parents=True, exist_ok=True)
            made.add(target.parent)
        if rest == NAMES.exit_code and size < 4096:
            last = (target, _exact(stream, size), mtime)
        elif size <= _SMALL:  # most files of most jobs: one write, no buffered file object
            _write(target, _exact(stream, size), mtime)
        else:
            with open(target, "wb") as dst:
                shutil.copyfileobj(_Part(stream, size), dst, 1 << 20)
            os.utime(target, (mtime, mtime))
        _exact(stream, -size % _BLOCK)
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
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    try:
        while data:
            data = data[os.write(fd, data):]
    finally:
        os.close(fd)
    os.utime(target, (mtime, mtime))
