"""One way to run a command, here or on a remote host: ``Shell.run(script)``.

Sources (SSH, Slurm) build a POSIX shell script with every variable part quoted by
``shlex.quote`` and hand it to a shell: ``LocalShell`` runs ``/bin/sh -c`` here,
``sources.ssh_connection.RemoteShell`` feeds a persistent remote ``sh`` over SSH.
Both return a :class:`CommandResult` and raise :class:`CommandError` on failure.
"""

from __future__ import annotations

import asyncio
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from ..model.errors import CommandError, CommandTimeout


@dataclass(frozen=True)
class CommandResult:
    script: str
    exit_code: int | None
    stdout: str
    stderr: str = ""


class Shell(Protocol):
    async def run(self, script: str, *, check: bool = True, timeout: float | None = None) -> CommandResult: ...


def join(argv: Sequence[str]) -> str:
    """argv as one shell word list: every item arrives literally."""
    return shlex.join([str(a) for a in argv])


class LocalShell:
    """``/bin/sh -c script`` on this machine."""

    def __init__(self, source: str | None = None, env: dict | None = None):
        self.source, self.env = source, env

    async def run(self, script: str, *, check: bool = True, timeout: float | None = None) -> CommandResult:
        proc = await asyncio.create_subprocess_exec(
            "/bin/sh", "-c", script, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=self.env,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise CommandTimeout([script], timeout, "this machine", self.source) from None
        result = CommandResult(script, proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"))
        if check and result.exit_code != 0:
            raise CommandError([script], result.exit_code, result.stdout, result.stderr, self.source)
        return result
