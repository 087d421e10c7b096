"""One SSH connection per source, with one persistent remote ``sh`` for commands.

Every command of a source goes to the same long-lived ``/bin/sh`` over one SSH
channel, so the user's login shell and its rc files (``~/.bashrc`` with
``conda init`` costs ~200 ms) start once per connection, not once per job or poll.
Files travel over one SFTP channel.  Keepalive detects a hung host; the owner
decides when to reconnect.

rc files: what the login shell prints before the first command is skipped by the
persistent shell and noted (``clean_channels``, ``rc_note``): it would corrupt SFTP
with the external ``sftp-server`` (started on a channel that skips it instead) and
rsync (which must not be used then).  An rc file that ends the shell is named with the fix.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
import os
import secrets
import shlex
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import asyncssh

from ..core.base.shell import CommandResult
from ..core.model.errors import CommandError, CommandTimeout, ConnectError, NotConnected, SourceError, shorten
from .ssh_hostkeys import check_host_key

log = logging.getLogger(__name__)

#: sshd runs every channel's command under the login shell, which reads its rc file even when not
#: interactive; this is how an rc file skips everything (printing, `exit`, `set -e`) for those.
RC_FIX = 'put `[ -z "$PS1" ] && return` (or `case $- in *i*) ;; *) return;; esac`) at the top of {rc}'
_RC_FILES = {"bash": "~/.bashrc", "zsh": "~/.zshenv", "ksh": "~/.kshrc", "mksh": "~/.mkshrc",
             "fish": "~/.config/fish/config.fish", "tcsh": "~/.tcshrc", "csh": "~/.cshrc"}
_SFTP_SERVERS = ("/usr/lib/openssh/sftp-server", "/usr/libexec/openssh/sftp-server", "/usr/lib/ssh/sftp-server",
                 "/usr/libexec/sftp-server", "/usr/lib/sftp-server")


@dataclass(frozen=True)
class SSHTarget:
    """Where to connect.  ``host`` may be an alias from ``~/.ssh/config`` (HostName, Port, User, ...).

    ``trust_new_host`` records the key of a host that no known_hosts file knows, never a changed one."""

    host: str
    port: int | None = None
    username: str | None = None
    client_keys: Sequence[str] | None = None
    known_hosts: str | None = None  # None: ~/.ssh/known_hosts (asyncssh's default)
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
        self._conn: asyncssh.SSHClientConnection | None = None
        self._proc: asyncssh.SSHClientProcess | None = None
        self._sftp: asyncssh.SFTPClient | None = None
        self._lock = asyncio.Lock()
        self._token = secrets.token_hex(4)
        self._counter = itertools.count()
        self.channels_opened = 0
        self.streams_opened = 0  # of channels_opened: one per bulk transfer (a collection batch)
        self.commands_run = 0
        #: False when the login shell's rc file prints to stdout: a channel that does not skip that
        #: output (rsync's ssh, Debian's external sftp-server) reads it as protocol.  rc_note says so.
        self.clean_channels = True
        self.rc_note: str | None = None

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
            self._conn = await self._open()
            self._proc = await self._conn.create_process("exec /bin/sh", encoding="utf-8", errors="replace")
            self.channels_opened += 1
            await self._start_shell()
        except asyncssh.PermissionDenied:
            raise ConnectError(
                f"authentication failed for {t.label}: check the user name and the key "
                "(client_keys=[...]) or that your ssh-agent holds it", self.source) from None
        except ConnectionRefusedError:
            raise ConnectError(f"connection refused by {t.label}: is sshd running and the port right?",
                               self.source) from None
        except socket.gaierror as exc:
            raise ConnectError(f"cannot resolve host name {t.host!r} ({exc.strerror}): check the name "
                               "or your ~/.ssh/config alias", self.source) from None
        except TimeoutError:
            raise ConnectError(f"timed out connecting to {t.label} after {t.connect_timeout} s: "
                               "is the host up and reachable?", self.source) from None
        except (OSError, asyncssh.Error) as exc:
            raise ConnectError(f"cannot connect to {t.label}: {exc}", self.source) from None

    async def _open(self) -> asyncssh.SSHClientConnection:
        """``asyncssh.connect``; a refused host key is explained (unknown or CHANGED, its fingerprint, the
        command that fixes it), and with ``trust_new_host`` a key no known_hosts file knows is recorded
        first.  The probe for the offered key runs only then, not on every connect."""
        t = self.target
        for attempt in (1, 2):
            try:
                return await asyncssh.connect(t.host, **self._options())
            except asyncssh.HostKeyNotVerifiable:
                check = await check_host_key(t.host, self._options())
            if attempt == 2 or not (t.trust_new_host and check.can_trust):
                raise ConnectError(check.message(t.label), self.source)
            check.record()
            log.warning("%s: recorded the new host key of %s (%s) in %s", self.source, t.label,
                        check.key.get_fingerprint("sha256") if check.key else "?", check.files[0])
        raise AssertionError("unreachable")

    async def _start_shell(self) -> None:
        """The first exchange with the new shell: skip what the login shell's rc file printed (on stdout
        it is noted, as it would corrupt SFTP and rsync; on stderr, which start_process uses, dropped)."""
        assert self._proc is not None
        t = self.target
        mark = f"__HSM_{self._token}_err__"
        _, printed = await self._exchange(f"printf '%s\\n' {mark} >&2", t.connect_timeout, raw=True, first=True)
        try:
            await asyncio.wait_for(self._proc.stderr.readuntil(f"{mark}\n"), t.connect_timeout)
        except (TimeoutError, asyncio.IncompleteReadError, asyncssh.Error):
            pass  # start_process's reader may see a stray line: a spurious wake-up at worst
        noted = self.rc_note
        self.clean_channels, self.rc_note = not printed, None
        if printed:
            shell = (await self._exchange('printf %s "${SHELL##*/}"', t.connect_timeout))[1].strip()
            rc = _RC_FILES.get(shell, f"the rc file of your login shell ({shell or 'unknown'})")
            self.rc_note = (f"{rc} on {t.label} prints {shorten(printed.strip(), 80)!r} for non-interactive "
                            "shells; that would corrupt SFTP and rsync, so files go over a channel that skips "
                            "it and rsync is not used. To fix it, " + RC_FIX.format(rc=rc))
            if self.rc_note != noted:
                log.warning("%s: %s", self.source, self.rc_note)

    async def _shell_ended(self, printed: str) -> ConnectError:
        """The shell's channel closed before its first command: the login shell's rc file ended it
        (`exit`, or a failing command under `set -e`), unless the connection itself dropped."""
        proc, t = self._proc, self.target
        said = printed
        if proc is not None:
            try:
                await asyncio.wait_for(proc.wait_closed(), 2)
                said += await asyncio.wait_for(proc.stderr.read(), 1)
            except Exception:  # noqa: BLE001 - what it printed only adds detail to the message
                pass
        status = proc.exit_status if proc is not None else None
        await self.close()
        if status is None:
            return ConnectError(f"connection to {t.label} lost while starting the remote shell", self.source)
        said = f"; it printed: {shorten(said.strip(), 200)!r}" if said.strip() else ""
        return ConnectError(
            f"the login shell on {t.label} ended (exit status {status}) before running any command{said}. "
            "sshd starts it for every command, and its rc file ends it: usually ~/.bashrc calls `exit`, or a "
            "command in it fails under `set -e`. Make the rc file return early for non-interactive shells: "
            + RC_FIX.format(rc="~/.bashrc (or your login shell's rc file)"), self.source)

    async def close(self) -> None:
        for closer in (self._sftp, self._proc):
            if closer is not None:
                try:
                    closer.close() if not hasattr(closer, "exit") else closer.exit()
                except Exception:  # noqa: BLE001 - closing a dead channel
                    pass
        self._sftp = self._proc = None
        if self._conn is not None:
            self._conn.close()
            try:
                await asyncio.wait_for(self._conn.wait_closed(), 2)
            except Exception:  # noqa: BLE001 - a hung host never confirms the close
                pass
            self._conn = None

    # -- commands ------------------------------------------------------------------------
    async def run(self, script: str, *, check: bool = True, timeout: float | None = 60.0) -> CommandResult:
        """Run ``script`` in the persistent remote shell (stderr merged into stdout)."""
        if not self.alive:
            raise NotConnected(f"not connected to {self.target.label}", self.source)
        async with self._lock:
            if not self.alive:  # dropped while this command waited for the shell
                raise NotConnected(f"not connected to {self.target.label}", self.source)
            try:
                rc, out = await self._exchange(script, timeout)
            except TimeoutError:
                await self.close()  # the shell's state is unknown now
                raise CommandTimeout([script], timeout, self.target.label, self.source) from None
        self.commands_run += 1
        result = CommandResult(script, rc, out)
        if check and rc != 0:
            raise CommandError([script], rc, out, "", self.source)
        return result

    async def _exchange(self, script: str, timeout: float | None, *, raw: bool = False,
                        first: bool = False) -> tuple[int | None, str]:
        """Send ``script`` and read its output up to the marker.  ``raw``: as is, with the shell's own
        stdin and stderr (else stdin from /dev/null, stderr into stdout); ``first``: the shell's first
        command, whose channel closing means the login shell's rc file ended it."""
        assert self._proc is not None
        marker = f"__HSM_{self._token}_{next(self._counter)}__"
        # stdin from /dev/null: a command must never read the protocol's own input
        body = script if raw else f"{{\n{script}\n}} </dev/null 2>&1"
        try:
            self._proc.stdin.write(f"{body}\nprintf '\\n%s %d\\n' {marker} \"$?\"\n")
        except (asyncssh.Error, OSError) as exc:  # BrokenPipeError: the channel closed under us
            if first:
                raise await self._shell_ended("") from None
            await self.close()
            raise ConnectError(f"connection to {self.target.label} lost: {exc}", self.source) from None
        try:
            data = await asyncio.wait_for(self._proc.stdout.readuntil(f"{marker} "), timeout)
            rc = await asyncio.wait_for(self._proc.stdout.readline(), timeout)
        except TimeoutError:
            raise  # before OSError: since Python 3.11 a timeout IS an OSError, and no connection was lost
        except (asyncio.IncompleteReadError, asyncssh.Error, OSError) as exc:
            if first and isinstance(exc, asyncio.IncompleteReadError):
                partial = exc.partial  # text: the shell's channel is opened with an encoding (typeshed says bytes)
                raise await self._shell_ended(partial.decode(errors="replace") if isinstance(partial, bytes)
                                              else str(partial)) from None
            await self.close()
            raise ConnectError(f"connection to {self.target.label} lost: {exc}", self.source) from None
        if not rc.strip().lstrip("-").isdigit():
            await self.close()
            raise ConnectError(f"connection to {self.target.label} lost (no exit status)", self.source)
        out = data[: -len(marker) - 1]
        return int(rc), out[:-1] if out.endswith("\n") else out

    async def start_process(self, command: str) -> SimpleNamespace:
        """A long-lived remote command, started in the background of the persistent shell: no channel
        and no login shell of its own.  Its output is read from the result's ``stdout`` (the shell
        channel's stderr stream, which carries nothing else but shell errors); the shell ends it when
        the connection closes.  The command must not read stdin; every such command shares that stream."""
        if not self.alive:
            raise NotConnected(f"not connected to {self.target.label}", self.source)
        async with self._lock:
            assert self._proc is not None
            reader = self._proc.stderr
            try:
                # the shell ends them when it ends (EOF: the connection closed), or they would linger
                await self._exchange(f"{{ {command}\n}} >&2 2>/dev/null </dev/null &\n_hsm_bg=\"$_hsm_bg $!\"; "
                                     "trap 'kill $_hsm_bg 2>/dev/null' EXIT", self.target.connect_timeout, raw=True)
            except TimeoutError:
                await self.close()
                raise CommandTimeout([command], self.target.connect_timeout, self.target.label, self.source) from None
        return SimpleNamespace(stdout=reader)

    async def sftp(self) -> asyncssh.SFTPClient:
        """The connection's SFTP channel, whatever the login shell's rc file prints (see ``rc_note``)."""
        if self._conn is None:
            raise ConnectError(f"not connected to {self.target.label}", self.source)
        if self._sftp is None:
            self._sftp = await (self._conn.start_sftp_client() if self.clean_channels else self._sftp_past_rc())
            self.channels_opened += 1
        return self._sftp

    async def _sftp_past_rc(self) -> asyncssh.SFTPClient:
        """An external sftp-server runs under the login shell, and what its rc file prints would be read
        as SFTP packets ("Max packet size exceeded"): start the server on a command channel after a
        marker instead, skip everything up to it, and speak SFTP from there."""
        assert self._conn is not None
        found = (await self.run(f"for p in {' '.join(_SFTP_SERVERS)}; do if [ -x \"$p\" ]; then echo \"$p\"; "
                                "break; fi; done", check=False)).stdout.strip()
        if not found:
            raise SourceError(f"{self.rc_note} (no sftp-server found to start past it: looked for "
                              f"{', '.join(_SFTP_SERVERS)})", self.source)
        mark = f"__HSM_{self._token}_sftp__"
        writer, reader, _ = await self._conn.open_session(f"printf %s {mark}; exec {shlex.quote(found)}",
                                                          encoding=None)
        await asyncio.wait_for(reader.readuntil(mark.encode()), self.target.connect_timeout)
        start = asyncssh.sftp.start_sftp_client  # what SSHClientConnection.start_sftp_client does on its channel
        args: list[Any] = [self._conn, asyncio.get_running_loop(), "strict", reader, writer, "utf-8", "strict",
                           asyncssh.sftp.MIN_SFTP_VERSION]
        if "utf8_decode_errors" not in inspect.signature(start).parameters:  # older asyncssh
            del args[2]
        return await start(*args)

    async def open_stream(self, script: str) -> asyncssh.SSHClientProcess:
        """``script`` (run by ``/bin/sh``) on a channel of its own, for one bulk transfer that must not
        hold up the persistent shell: binary output, read incrementally, closed by the caller.  What
        the login shell's rc file prints comes before a marker and is skipped."""
        if self._conn is None or self._conn.is_closed():
            raise NotConnected(f"not connected to {self.target.label}", self.source)
        mark = f"__HSM_{self._token}_stream__"
        try:
            proc = await self._conn.create_process(f"printf %s {mark}; exec /bin/sh -c {shlex.quote(script)}",
                                                   encoding=None)
            self.channels_opened += 1
            self.streams_opened += 1
            await asyncio.wait_for(proc.stdout.readuntil(mark.encode()), self.target.connect_timeout)
        except (TimeoutError, asyncio.IncompleteReadError, asyncssh.Error, OSError) as exc:
            raise ConnectError(f"could not open a transfer channel to {self.target.label}: "
                               f"{type(exc).__name__} {exc}".strip(), self.source) from None
        return proc


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
