"""Project sync to a remote host: rsync when both ends have it, else SFTP with a manifest.

Only changed files travel.  The SFTP path keeps a manifest (path -> size, mtime) of
what it uploaded in the remote dir and compares it with the local tree.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import os
import posixpath
import shlex
from pathlib import Path
from typing import Iterable, Optional, Sequence

from ..core.errors import ConfigError, SourceError
from .ssh_connection import SSHConnection, local_has, ssh_command

DEFAULT_EXCLUDE = (".git", "__pycache__", "*.pyc", ".ipynb_checkpoints", "sweeps", ".venv", "venv",
                   "node_modules", ".mypy_cache", ".pytest_cache", "*.egg-info")
MANIFEST = ".hsm_manifest.json"
MAX_FILES = 20_000
#: rsync (delta transfer, its own ssh process) is used from this many files or bytes on.
RSYNC_FILES = 200
RSYNC_BYTES = 20_000_000


def _excluded(rel: str, patterns: Iterable[str]) -> bool:
    parts = rel.split("/")
    return any(fnmatch.fnmatch(part, p) for p in patterns for part in parts) or any(
        fnmatch.fnmatch(rel, p) for p in patterns)


def local_manifest(root: Path, exclude: Sequence[str], include: Optional[Sequence[str]]) -> dict[str, list]:
    """``{relative path: [size, mtime]}`` of the files to send."""
    files: dict[str, list] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        rel_dir = "" if rel_dir == "." else rel_dir
        dirnames[:] = [d for d in dirnames if not _excluded(posixpath.join(rel_dir, d) if rel_dir else d, exclude)]
        for name in filenames:
            rel = posixpath.join(rel_dir, name) if rel_dir else name
            if _excluded(rel, exclude) or (include and not any(fnmatch.fnmatch(rel, p) for p in include)):
                continue
            st = os.stat(os.path.join(dirpath, name))
            files[rel] = [st.st_size, int(st.st_mtime)]
            if len(files) > MAX_FILES:
                raise ConfigError(
                    f"{root} holds more than {MAX_FILES:,} files to send; point workdir at the project "
                    "folder or narrow it with sync_exclude/sync_include", "workdir")
    return files


async def sync_project(conn: SSHConnection, local: Path, remote: str, *, exclude: Sequence[str],
                       include: Optional[Sequence[str]], use_rsync: bool) -> dict:
    """Send ``local`` to the remote dir ``remote`` (absolute); returns what was done."""
    files = local_manifest(local, exclude, include)
    await conn.run(f"umask 077; mkdir -p {shlex.quote(remote)}")
    big = len(files) > RSYNC_FILES or sum(size for size, _ in files.values()) > RSYNC_BYTES
    # rsync pays ~0.3 s to start its own ssh; for a small project the manifest over SFTP is faster
    if use_rsync and big and local_has("rsync") and local_has("ssh"):
        return await _rsync(conn, local, remote, exclude, include, len(files))
    return await _sftp(conn, local, remote, files)


async def _rsync(conn, local, remote, exclude, include, n) -> dict:
    t = conn.target
    dest = f"{t.username + '@' if t.username else ''}{t.host}:{remote}/"
    argv = ["rsync", "-rlptz", "--stats", "-e", shlex.join(ssh_command(t))]
    for p in include or ():
        argv += ["--include", p]
    if include:
        argv += ["--include", "*/", "--exclude", "*"]
    for p in exclude:
        argv += ["--exclude", p]
    argv += [f"{local}/", dest]
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                                                stdin=asyncio.subprocess.DEVNULL)
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise SourceError(f"rsync to {t.label} failed ({proc.returncode}): {err.decode(errors='replace').strip()[-500:]}",
                          conn.source)
    sent = 0
    for line in out.decode(errors="replace").splitlines():
        if line.startswith("Number of regular files transferred:"):
            sent = int(line.split(":")[1].strip().replace(",", ""))
    return {"method": "rsync", "files": n, "sent": sent}


async def _sftp(conn, local, remote, files) -> dict:
    sftp = await conn.sftp()
    try:
        async with sftp.open(posixpath.join(remote, MANIFEST)) as f:
            before = json.loads(await f.read())
    except Exception:  # noqa: BLE001 - no or unreadable manifest: send everything
        before = {}
    changed = [rel for rel, meta in files.items() if before.get(rel) != meta]
    for d in sorted({posixpath.dirname(rel) for rel in changed} - {""}):
        await sftp.makedirs(posixpath.join(remote, d), exist_ok=True)
    sem = asyncio.Semaphore(8)

    async def put(rel: str) -> None:
        async with sem:
            await sftp.put(str(local / rel), posixpath.join(remote, rel), preserve=True)

    await asyncio.gather(*(put(rel) for rel in changed))
    async with sftp.open(posixpath.join(remote, MANIFEST), "w") as f:
        await f.write(json.dumps(files))
    return {"method": "sftp", "files": len(files), "sent": len(changed)}
