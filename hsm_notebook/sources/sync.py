"""Project sync to a remote host, like ``rsync -a``: rsync when both ends have it and the project is
large, else SFTP with a manifest.  Both paths send the same things, read patterns the same way and
delete the same things in mirror mode.

What travels: every file, folder and symbolic link under the project folder that no exclude pattern
matches (with ``include``: only the files and links an include pattern matches, in every folder).
Links travel as links, relative or absolute, to files or folders, dangling ones too; none is
followed.  Only changed files travel: rsync compares size and time with the remote copy; the SFTP
path keeps a manifest (path -> [size, mtime] or ["link", target]) of what it sent, in the remote dir.

Patterns are read like rsync's (and ``.gitignore``'s):

- a pattern holding a ``/`` (a trailing one aside) is anchored at the project root: ``/sweeps``,
  ``data/*.bin``; a leading ``/`` only anchors;
- a bare name or wildcard (``__pycache__``, ``*.pyc``) matches a file or folder at any depth;
- a trailing ``/`` matches folders only (``build/``);
- ``*`` and ``?`` stay inside one path component, ``**`` crosses folders, ``[...]`` is a set,
  ``\\`` escapes.

Mirror mode (``delete=True``, rsync's ``--delete``): whatever is in the remote copy and not in the
project is removed, under the remote project dir only and never through a link; excluded paths (and,
with ``include``, files no include pattern matches) are kept there, with the folders holding them.
"""

from __future__ import annotations

import asyncio
import json
import os
import posixpath
import re
import shlex
from collections.abc import Iterable, Sequence
from pathlib import Path

import asyncssh

from ..core.model.errors import ConfigError, SourceError
from ..core.model.files import default_sweeps_dir
from .ssh_connection import SSHConnection, local_has, ssh_command

#: Anchored where a name is only special at the root ("sweeps" is the sweeps folder there, and
#: ``src/sweeps/`` a package); anywhere for folders tools make wherever they run.
DEFAULT_EXCLUDE = ("/sweeps", "/venv", ".git", ".venv", "__pycache__", "*.pyc", ".ipynb_checkpoints",
                   "node_modules", ".mypy_cache", ".pytest_cache", "*.egg-info")
MANIFEST = ".hsm_manifest.json"
MAX_FILES = 20_000
#: rsync (delta transfer, its own ssh process) is used from this many files or bytes on.
RSYNC_FILES = 200
RSYNC_BYTES = 20_000_000
_LINK = "link"


# -- patterns ---------------------------------------------------------------------------------
def _rule(pattern: str) -> tuple[str, bool, bool] | None:
    """``(pattern without anchor or trailing '/', anchored, folders only)``, or None for an empty one."""
    dir_only = pattern.endswith("/")
    body = pattern.rstrip("/") if dir_only else pattern
    anchored = "/" in body
    body = body[1:] if body.startswith("/") else body
    if not body:
        return None
    return (body if anchored else re.sub(r"\*+", "*", body)), anchored, dir_only


def wildcard_regex(pattern: str) -> str:
    """rsync's wildcards as a regex: ``*``/``?`` within a component, ``**`` across, ``[...]``, ``\\``."""
    if pattern.endswith("/***"):  # rsync: the folder and everything in it
        return wildcard_regex(pattern[:-4]) + "(?:/.*)?"
    out, i, n = [], 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            j = i
            while j < n and pattern[j] == "*":
                j += 1
            out.append(".*" if j - i > 1 else "[^/]*")
            i = j
            continue
        if c == "?":
            out.append("[^/]")
        elif c == "\\" and i + 1 < n:
            i += 1
            out.append(re.escape(pattern[i]))
        elif c == "[":
            j = i + 1 + (pattern[i + 1:i + 2] in ("!", "^"))
            j += pattern[j:j + 1] == "]"
            end = pattern.find("]", j)
            if end < 0:
                out.append(re.escape(c))
            else:
                body = pattern[i + 1:end]
                negate = body[:1] in ("!", "^")
                body = body[1:] if negate else body
                out.append("[" + ("^/" if negate else "") + "".join(ch if ch == "-" else re.escape(ch) for ch in body)
                           + "]")
                i = end
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


class Patterns:
    """Exclude or include patterns, read as the module doc says; ``match(rel, is_dir)``."""

    def __init__(self, patterns: Iterable[str]):
        self.rules = [r for r in map(_rule, patterns) if r]
        groups: dict[tuple[bool, bool], list[str]] = {}
        for body, anchored, dir_only in self.rules:
            groups.setdefault((anchored, dir_only), []).append(wildcard_regex(body))
        self._rx = {key: re.compile("|".join(f"(?:{r})" for r in rs)) for key, rs in groups.items()}

    def __bool__(self) -> bool:
        return bool(self.rules)

    def match(self, rel: str, is_dir: bool) -> bool:
        name = rel.rpartition("/")[2]
        for (anchored, dir_only), rx in self._rx.items():
            if (is_dir or not dir_only) and rx.fullmatch(rel if anchored else name):
                return True
        return False

    def rsync(self, sign: str) -> list[str]:
        """The same patterns as rsync ``--filter`` rules (``sign``: ``-`` exclude, ``+`` include)."""
        return [f"--filter={sign} {'/' if anchored else ''}{body}{'/' if dir_only else ''}"
                for body, anchored, dir_only in self.rules]


def _anchored(path: str) -> str:
    return "/" + re.sub(r"([*?\[\\])", r"\\\1", path) if path else ""


def _own_folders(local: Path, sweep_dir: Path | None) -> list[str]:
    """This sweep's folder and the default sweeps folder, where inside the project: never sent."""
    root, out = os.path.realpath(local), []
    for folder in (sweep_dir, default_sweeps_dir()):
        if folder is not None:
            rel = os.path.relpath(os.path.realpath(folder), root)
            if rel != "." and not rel.startswith(".." + os.sep) and rel != "..":
                out.append(_anchored(Path(rel).as_posix()))
    return out


# -- the local side ---------------------------------------------------------------------------
def _scan(root: Path, exclude: Patterns, include: Patterns) -> tuple[dict[str, list], list[str]]:
    """``({path: [size, mtime] | ["link", target]}, [folders])`` to send; links are not followed."""
    entries: dict[str, list] = {}
    dirs: list[str] = []
    stack = [""]
    while stack:
        rel_dir = stack.pop()
        try:
            it = os.scandir(os.path.join(root, rel_dir))
        except OSError:  # an unreadable folder is left out, as before
            continue
        with it:
            for e in it:
                rel = f"{rel_dir}/{e.name}" if rel_dir else e.name
                if e.is_symlink():
                    kind = _LINK
                elif e.is_dir(follow_symlinks=False):
                    kind = "dir"
                elif e.is_file(follow_symlinks=False):
                    kind = "file"
                else:  # sockets, fifos, devices: nothing a job reads from a copy
                    continue
                if exclude.match(rel, kind == "dir"):
                    continue
                if kind == "dir":
                    dirs.append(rel)
                    stack.append(rel)
                    continue
                if include and not include.match(rel, False):
                    continue
                if kind == _LINK:
                    entries[rel] = [_LINK, os.readlink(e.path)]
                else:
                    st = e.stat(follow_symlinks=False)
                    entries[rel] = [st.st_size, int(st.st_mtime)]
                if len(entries) > MAX_FILES:
                    raise ConfigError(
                        f"{root} holds more than {MAX_FILES:,} files to send; point workdir at the project "
                        "folder or narrow it with sync_exclude/sync_include", "workdir")
    return entries, sorted(dirs)


def local_manifest(root: Path, exclude: Sequence[str], include: Sequence[str] | None) -> dict[str, list]:
    """``{relative path: [size, mtime] | ["link", target]}`` of the files and links to send."""
    return _scan(root, Patterns(exclude), Patterns(include or ()))[0]


# -- sending ----------------------------------------------------------------------------------
async def sync_project(conn: SSHConnection, local: Path, remote: str, *, exclude: Sequence[str],
                       include: Sequence[str] | None, use_rsync: bool, delete: bool = False,
                       sweep_dir: Path | None = None) -> dict:
    """Send ``local`` to the remote dir ``remote`` (absolute); returns what was done.

    ``delete``: mirror mode (see the module doc).  ``sweep_dir``: this sweep's folder, never sent.
    """
    ex, inc = Patterns([*exclude, *_own_folders(local, sweep_dir)]), Patterns(include or ())
    files, dirs = _scan(local, ex, inc)
    size = sum(meta[0] for meta in files.values() if meta[0] != _LINK)
    big = len(files) > RSYNC_FILES or size > RSYNC_BYTES
    # rsync pays ~0.3 s to start its own ssh; for a small project the manifest over SFTP is faster
    # conn.clean_channels: rc-file output would corrupt rsync's stream (SFTP skips it: conn.sftp())
    if use_rsync and big and conn.clean_channels and local_has("rsync") and local_has("ssh"):
        # the SFTP manifest would be stale after rsync: without it the SFTP path compares nothing
        q = shlex.quote
        await conn.run(f"umask 077; mkdir -p {q(remote)} && rm -f {q(posixpath.join(remote, MANIFEST))}")
        return await _rsync(conn, local, remote, ex, inc, len(files), delete)
    return await _sftp(conn, local, remote, files, dirs, ex, inc, delete)


async def _rsync(conn: SSHConnection, local: Path, remote: str, ex: Patterns, inc: Patterns, n: int,
                 delete: bool) -> dict:
    t = conn.target
    dest = f"{t.username + '@' if t.username else ''}{t.host}:{remote}/"
    # --force: a folder that became a file or link locally is replaced, as on the SFTP path
    argv = ["rsync", "-rlptz", "--force", "--stats", "-e", shlex.join(ssh_command(t))]
    if delete:
        argv.append("--delete")
    argv += ex.rsync("-")  # excludes first: an excluded folder is never entered, whatever include says
    if inc:
        argv += [*inc.rsync("+"), "--filter=+ */", "--filter=- *"]
    argv += [f"{local}/", dest]
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                                                stdin=asyncio.subprocess.DEVNULL)
    out, err = await proc.communicate()
    if proc.returncode != 0:
        said = err.decode(errors="replace").strip()[-500:]
        raise SourceError(f"rsync to {t.label} failed ({proc.returncode}): {said}", conn.source)
    sent = 0
    for line in out.decode(errors="replace").splitlines():
        if line.startswith("Number of regular files transferred:"):
            sent = int(line.split(":")[1].strip().replace(",", ""))
    return {"method": "rsync", "files": n, "sent": sent}


#: Shell functions run in the remote project dir on paths sorted parents first, so no check looks
#: through a link: a folder to be is made a real folder (every parent of a folder is in the list, so
#: ``mkdir -p`` meets no link); a file to be written is no link or folder (an SFTP write would follow
#: a link); a link to be made has nothing in its place.
_PREPARE = (
    '_hsm_dir() { for p do if [ -L "$p" ] || { [ -e "$p" ] && [ ! -d "$p" ]; }; then rm -f -- "$p" || return; fi; '
    'done; mkdir -p -- "$@"; }; '
    '_hsm_file() { for p do if [ -L "$p" ]; then rm -f -- "$p" || return; elif [ -d "$p" ]; then rm -rf -- "$p" || '
    'return; fi; done; }; '
    '_hsm_link() { for p do if [ -L "$p" ] || [ -e "$p" ]; then rm -rf -- "$p" || return; fi; done; }'
)


async def _sftp(conn: SSHConnection, local: Path, remote: str, files: dict[str, list], dirs: list[str],
                ex: Patterns, inc: Patterns, delete: bool) -> dict:
    sftp = await conn.sftp()

    async def manifest() -> dict:
        try:
            async with sftp.open(posixpath.join(remote, MANIFEST)) as f:
                return json.loads(await f.read())
        except Exception:  # noqa: BLE001 - no or unreadable manifest: send everything
            return {}

    async def nothing() -> list[str]:
        return []

    before, gone = await asyncio.gather(manifest(), _gone(sftp, remote, files, set(dirs), ex, inc) if delete
                                        else nothing())
    if not isinstance(before, dict):
        before = {}
    changed = [rel for rel, meta in files.items() if before.get(rel) != meta]
    links = [rel for rel in changed if files[rel][0] == _LINK]
    puts = [rel for rel in changed if files[rel][0] != _LINK]
    q = shlex.quote
    steps = [f"cd {q(remote)}"]
    for fn, paths in (("rm -rf --", gone), ("_hsm_dir", dirs), ("_hsm_file", puts), ("_hsm_link", links)):
        for i in range(0, len(paths), 500):  # 500 paths a command: far below any ARG_MAX
            steps.append(f"{fn} " + " ".join(q(p) for p in paths[i:i + 500]))
    script = f"umask 077; mkdir -p {q(remote)}"
    if len(steps) > 1:  # a subshell: the persistent shell keeps its own folder
        script += f" && ( {_PREPARE}; {' && '.join(steps)} )"
    await conn.run(script)
    sem = asyncio.Semaphore(8)

    async def send(rel: str) -> None:
        async with sem:
            if files[rel][0] == _LINK:
                await sftp.symlink(files[rel][1], posixpath.join(remote, rel))
            else:
                await sftp.put(str(local / rel), posixpath.join(remote, rel), preserve=True)

    await asyncio.gather(*(send(rel) for rel in changed))
    if changed or before != files:
        async with sftp.open(posixpath.join(remote, MANIFEST), "w") as f:
            await f.write(json.dumps(files))
    return {"method": "sftp", "files": len(files), "sent": len(changed)}


async def _gone(sftp: asyncssh.SFTPClient, remote: str, files: dict[str, list], dirs: set[str], ex: Patterns,
                inc: Patterns) -> list[str]:
    """Mirror mode: the remote paths to remove, as rsync ``--delete`` would (see the module doc)."""
    found: dict[str, bool] = {}  # remote path -> is a real folder (links are never entered)
    kept: set[str] = set()
    sem = asyncio.Semaphore(8)

    async def walk(rel: str) -> None:
        async with sem:
            try:
                names = [n async for n in sftp.scandir(posixpath.join(remote, rel) if rel else remote)]
            except asyncssh.SFTPNoSuchFile:
                return
        below = []
        for n in names:
            name = n.filename if isinstance(n.filename, str) else os.fsdecode(n.filename)
            if name in (".", ".."):
                continue
            path = f"{rel}/{name}" if rel else name
            is_dir = n.attrs.type == asyncssh.FILEXFER_TYPE_DIRECTORY
            if path == MANIFEST or ex.match(path, is_dir) or (inc and not is_dir and not inc.match(path, False)):
                kept.add(path)
                continue
            found[path] = is_dir
            if is_dir:
                below.append(path)
        await asyncio.gather(*(walk(p) for p in below))

    await walk("")
    holding = {path.rsplit("/", i)[0] for path in kept for i in range(1, path.count("/") + 1)}
    out: list[str] = []
    removed: set[str] = set()
    for path in sorted(found):
        parent = path.rpartition("/")[0]
        if parent in removed:  # it goes with its folder
            removed.add(path)
            continue
        if path in files or path in dirs or (found[path] and path in holding):
            continue  # still there (a changed kind is replaced), or a folder holding kept paths
        out.append(path)
        removed.add(path)
    return out
