"""One SSH connection per source, with one persistent remote ``sh`` for commands.

Every command of a source goes to the same long-lived ``/bin/sh`` over one SSH
channel, so the user's login shell and its rc files (``~/.bashrc`` with
``conda init`` costs ~200 ms) start once per connection, not once per job or poll.
Files travel over one SFTP channel.  Keepalive detects a hung host; the owner
decides when to reconnect.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import secrets
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import asyncssh

from ..core.errors import CommandError, CommandTimeout, ConnectError
from ..core.shell import CommandResult


@dataclass(frozen=True)
class SSHTarget:
    """Where to connect.  ``host`` may be an alias from ``~/.ssh/config``."""

    host: str
    port: Optional[int] = None
    username: Optional[str] = None
    client_keys: Optional[Sequence[str]] = None
    known_hosts: Optional[str] = None  # None: ~/.ssh/known_hosts (asyncssh's default)
    trust_new_host: bool = False
    connect_timeout: float = 15.0
    keepalive_interval: float = 2.0
    keepalive_count_max: int = 3
    options: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        user = f"{self.username}@" if self.username else ""
        port = f":{self.port}" if self.port else ""
        return f"{user}{self.host}{port}"


class SSHConnection:
    def __init__(self, target: SSHTarget, source: str):
        self.target, self.source = target, source
        self._conn: Optional[asyncssh.SSHClientConnection] = None
        self._proc: Optional[asyncssh.SSHClientProcess] = None
        self._sftp: Optional[asyncssh.SFTPClient] = None
        self._lock = asyncio.Lock()
        self._token = secrets.token_hex(4)
        self._counter = itertools.count()
        self._extra: list = []
        self.channels_opened = 0
        self.commands_run = 0

    @property
    def alive(self) -> bool:
        return (self._conn is not None and not self._conn.is_closed() and self._proc is not None
                and not self._proc.stdout.at_eof() and not self._proc.is_closing())

    # -- connecting ----------------------------------------------------------------------
    def _options(self) -> dict[str, Any]:
        t = self.target
        opts: dict[str, Any] = dict(t.options)
        if t.port:
            opts["port"] = t.port
        if t.username:
            opts["username"] = t.username
        if t.client_keys:
            opts["client_keys"] = [str(Path(k).expanduser()) for k in t.client_keys]
        if t.known_hosts is not None:
            opts["known_hosts"] = str(Path(t.known_hosts).expanduser())
        opts.update(connect_timeout=t.connect_timeout, keepalive_interval=t.keepalive_interval,
                    keepalive_count_max=t.keepalive_count_max)
        return opts

    async def connect(self) -> None:
        """Open the connection and the persistent shell; errors say what to do."""
        await self.close()
        t = self.target
        try:
            if t.trust_new_host:
                await self._trust_host()
            self._conn = await asyncssh.connect(t.host, **self._options())
            self._proc = await self._conn.create_process("exec /bin/sh", encoding="utf-8", errors="replace")
            self.channels_opened += 1
            await self._exchange("true", timeout=t.connect_timeout)  # skip anything rc files printed
        except asyncssh.HostKeyNotVerifiable as exc:
            kh = t.known_hosts or "~/.ssh/known_hosts"
            port = f"-p {t.port} " if t.port else ""
            raise ConnectError(
                f"the host key of {t.label} is unknown or has changed ({exc.reason}); if you trust this host, "
                f"add its key: `ssh-keyscan {port}{t.host} >> {kh}` (check the fingerprint), or pass "
                "trust_new_host=True once; a changed key may mean the host was reinstalled or an attack",
                self.source,
            ) from None
        except asyncssh.PermissionDenied:
            raise ConnectError(
                f"authentication failed for {t.label}: check the user name and the key "
                "(client_keys=[...]) or that your ssh-agent holds it", self.source) from None
        except ConnectionRefusedError:
            raise ConnectError(f"connection refused by {t.label}: is sshd running and the port right?", self.source) from None
        except socket.gaierror as exc:
            raise ConnectError(f"cannot resolve host name {t.host!r} ({exc.strerror}): check the name "
                               "or your ~/.ssh/config alias", self.source) from None
        except (asyncio.TimeoutError, TimeoutError):
            raise ConnectError(f"timed out connecting to {t.label} after {t.connect_timeout} s: "
                               "is the host up and reachable?", self.source) from None
        except (OSError, asyncssh.Error) as exc:
            raise ConnectError(f"cannot connect to {t.label}: {exc}", self.source) from None

    async def _trust_host(self) -> None:
        """Explicit opt-in: record the host's current key in known_hosts, then verify against it."""
        t = self.target
        key = await asyncssh.get_server_host_key(t.host, t.port or 22)
        if key is None:
            raise ConnectError(f"{t.label} offered no host key", self.source)
        path = Path(t.known_hosts or "~/.ssh/known_hosts").expanduser()
        name = f"[{t.host}]:{t.port}" if t.port and t.port != 22 else t.host
        line = f"{name} {key.export_public_key().decode().strip()}\n"
        existing = path.read_text() if path.exists() else ""
        if any(l.split(" ", 1)[0] == name for l in existing.splitlines() if l.strip()):
            return  # a key is already recorded: verification decides, we never overwrite it
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            f.write(line)

    async def close(self) -> None:
        for closer in (self._sftp, self._proc, *self._extra):
            if closer is not None:
                try:
                    closer.close() if not hasattr(closer, "exit") else closer.exit()
                except Exception:  # noqa: BLE001 - closing a dead channel
                    pass
        self._sftp = self._proc = None
        self._extra = []
        if self._conn is not None:
            self._conn.close()
            try:
                await asyncio.wait_for(self._conn.wait_closed(), 2)
            except Exception:  # noqa: BLE001 - a hung host never confirms the close
                pass
            self._conn = None

    # -- commands ------------------------------------------------------------------------
    async def run(self, script: str, *, check: bool = True, timeout: Optional[float] = 60.0) -> CommandResult:
        """Run ``script`` in the persistent remote shell (stderr merged into stdout)."""
        if not self.alive:
            raise ConnectError(f"not connected to {self.target.label}", self.source)
        async with self._lock:
            try:
                rc, out = await self._exchange(script, timeout)
            except (asyncio.TimeoutError, TimeoutError):
                await self.close()  # the shell's state is unknown now
                raise CommandTimeout([script], timeout, self.target.label, self.source) from None
        self.commands_run += 1
        result = CommandResult(script, rc, out)
        if check and rc != 0:
            raise CommandError([script], rc, out, "", self.source)
        return result

    async def _exchange(self, script: str, timeout: Optional[float]) -> tuple[Optional[int], str]:
        assert self._proc is not None
        marker = f"__HSM_{self._token}_{next(self._counter)}__"
        # stdin from /dev/null: a command must never read the protocol's own input
        try:
            self._proc.stdin.write(f"{{\n{script}\n}} </dev/null 2>&1\nprintf '\\n%s %d\\n' {marker} \"$?\"\n")
        except (asyncssh.Error, OSError) as exc:  # BrokenPipeError: the channel closed under us
            await self.close()
            raise ConnectError(f"connection to {self.target.label} lost: {exc}", self.source) from None
        try:
            data = await asyncio.wait_for(self._proc.stdout.readuntil(f"{marker} "), timeout)
            rc = await asyncio.wait_for(self._proc.stdout.readline(), timeout)
        except (asyncio.IncompleteReadError, asyncssh.Error, OSError) as exc:
            await self.close()
            raise ConnectError(f"connection to {self.target.label} lost: {exc}", self.source) from None
        if not rc.strip().lstrip("-").isdigit():
            await self.close()
            raise ConnectError(f"connection to {self.target.label} lost (no exit status)", self.source)
        out = data[: -len(marker) - 1]
        return int(rc), out[:-1] if out.endswith("\n") else out

    async def start_process(self, command: str) -> asyncssh.SSHClientProcess:
        """A long-lived remote process on its own channel (closed with the connection)."""
        if self._conn is None:
            raise ConnectError(f"not connected to {self.target.label}", self.source)
        proc = await self._conn.create_process(command, encoding="utf-8", errors="replace")
        self.channels_opened += 1
        self._extra.append(proc)
        return proc

    async def sftp(self) -> asyncssh.SFTPClient:
        if self._conn is None:
            raise ConnectError(f"not connected to {self.target.label}", self.source)
        if self._sftp is None:
            self._sftp = await self._conn.start_sftp_client()
            self.channels_opened += 1
        return self._sftp


def ssh_command(target: SSHTarget) -> list[str]:
    """An OpenSSH client command with the same credentials (for rsync ``-e``)."""
    cmd = ["ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes"]
    if target.port:
        cmd += ["-p", str(target.port)]
    if target.username:
        cmd += ["-l", target.username]
    for key in target.client_keys or ():
        cmd += ["-i", str(Path(key).expanduser()), "-o", "IdentitiesOnly=yes"]
    if target.known_hosts:
        cmd += ["-o", f"UserKnownHostsFile={Path(target.known_hosts).expanduser()}"]
    return cmd


def local_has(program: str) -> bool:
    return any(os.access(os.path.join(p, program), os.X_OK) for p in os.environ.get("PATH", "").split(os.pathsep))
