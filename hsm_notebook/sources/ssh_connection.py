"""One SSH connection per source, with one persistent remote ``sh`` for commands.

sshd starts every channel's command through the user's login shell, and Debian's bash reads
``~/.bashrc`` for commands sent over SSH (``SSH_CLIENT`` set, not nested): a channel per command
pays the rc file (``conda init``: hundreds of ms) each time.  So every command of a source goes to
the same long-lived ``/bin/sh`` over one channel, binary and pipelined (each command is written at
once; its output, up to a marker line with its exit status, is read after those written before
it): starts, polls, step reads and collection's tar streams alike, so the rc file runs once per
connection.  A transfer too large to hold up the others goes over a second shell, opened on first
use and kept.  Files are uploaded over one SFTP channel (OpenSSH's ``internal-sftp`` starts no
shell).  Keepalive detects a hung host; the owner decides when to reconnect.

rc files: what the login shell prints before the first command is skipped by the
persistent shell and noted (``clean_channels``, ``rc_note``): it would corrupt SFTP
with the external ``sftp-server`` (started on a channel that skips it instead) and
rsync (which must not be used then).  An rc file that ends the shell is named with the fix.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import logging
import os
import secrets
import shlex
import socket
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal, overload

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


class ShellOutput:
    """What one command of a persistent shell prints, read as it comes (binary: a tar stream may
    travel this way): ``read(n)`` returns ``b""`` at the command's end, ``exit_code`` is then set.
    Commands are pipelined: each is written at once and its output read after the outputs of those
    written before it (each of which has its own time limit).  ``idle``: seconds without a byte before
    it is a timeout; ``timeout``: seconds for the whole output, counted once the earlier ones are read
    (as if the command had waited for the shell, then run)."""

    def __init__(self, conn: SSHConnection, shell: _Shell, end: bytes, prev: asyncio.Future[None] | None,
                 mine: asyncio.Future[None], idle: float | None, timeout: float | None, script: str):
        self.conn, self.shell, self.end, self.prev, self.mine = conn, shell, end, prev, mine
        self.idle, self.timeout, self.script = idle, timeout, script
        self.deadline: float | None = None  # loop time, set when its turn comes
        self.exit_code: int | None = None
        self.done = False

    def _wait(self) -> float | None:
        if self.deadline is None:
            return self.idle
        left = max(0.0, self.deadline - asyncio.get_running_loop().time())
        return left if self.idle is None else min(left, self.idle)

    async def read(self, n: int = -1) -> bytes:
        """At most ``n`` bytes (all there are with -1), ``b""`` once the command ended.  A lost
        connection is a ConnectError, no byte for ``idle`` seconds a CommandTimeout (the shell is
        closed then: its state is unknown)."""
        try:
            return await self._read(n)
        except TimeoutError:  # before OSError: since Python 3.11 a timeout IS an OSError
            await self.fail()
            raise CommandTimeout([self.script], self.timeout or self.idle, self.conn.target.label,
                                 self.conn.source) from None
        except (_Ended, asyncssh.Error, OSError) as exc:
            await self.fail()
            why = "no exit status" if isinstance(exc, _Ended) and exc.status_missing else str(exc) or type(exc).__name__
            raise ConnectError(f"connection to {self.conn.target.label} lost ({why})", self.conn.source) from None
        except asyncio.CancelledError:
            self.abandon()
            raise

    async def _read(self, n: int) -> bytes:
        if self.prev is not None:  # the outputs written before this command's come first
            if not self.prev.done():
                await asyncio.shield(self.prev)  # each has its own limit; a failed one closes the shell
            self.prev = None
        if self.deadline is None and self.timeout is not None:
            self.deadline = asyncio.get_running_loop().time() + self.timeout
        buf, end = self.shell.buf, self.end
        while not self.done:
            i = buf.find(end)
            if i == 0:  # the end marker: its line holds the exit status
                j = buf.find(b"\n", len(end))
                if j < 0:
                    await self.shell.fill(self._wait())
                    continue
                word = bytes(buf[len(end):j]).strip()
                del buf[:j + 1]
                self._finish()
                if not word.lstrip(b"-").isdigit():
                    raise _Ended(b"", status_missing=True)
                self.exit_code = int(word)
                return b""
            # everything before the marker, or before what may be its beginning
            ready = i if i > 0 else len(buf) - len(end) + 1
            if ready > 0:
                k = ready if n < 0 else min(n, ready)
                data = bytes(buf[:k])
                del buf[:k]
                return data
            await self.shell.fill(self._wait())
        return b""

    def _finish(self) -> None:
        self.done = True
        if not self.mine.done():
            self.mine.set_result(None)  # the next command's output may be read

    async def fail(self) -> None:
        """Reading failed: the shell's state is unknown, so it is closed (the commands after this one
        then fail as a lost connection)."""
        await self.conn._drop(self.shell)
        self._finish()

    def abandon(self) -> None:
        """Its reader is gone (cancelled): the output is read past in the background, so the commands
        after it get theirs."""
        if self.done:
            return

        async def skip() -> None:
            self.timeout, self.deadline = _SKIP_TIMEOUT, None
            try:
                while await self._read(1 << 20):
                    pass
            except Exception:  # noqa: BLE001 - the shell is closed: those after it fail as a lost connection
                await self.fail()

        task = asyncio.get_running_loop().create_task(skip())
        self.shell.skipping.add(task)
        task.add_done_callback(self.shell.skipping.discard)

    async def readall(self) -> bytes:
        chunks = []
        while chunk := await self.read():
            chunks.append(chunk)
        return b"".join(chunks)

    async def _read_all_raw(self) -> bytes:
        """As :meth:`readall`, with the raw errors (TimeoutError, _Ended, asyncssh's) for the caller."""
        chunks = []
        try:
            while chunk := await self._read(-1):
                chunks.append(chunk)
        except asyncio.CancelledError:
            self.abandon()
            raise
        return b"".join(chunks)


#: asyncssh's default channel window: what one read of a shell's output takes at most.
_WINDOW = 2 << 20
#: Seconds the output of a command whose reader was cancelled may take to be read past.
_SKIP_TIMEOUT = 600.0


class _Ended(Exception):
    """The shell's channel closed (EOF) before the command's end: what the shell printed until then."""

    def __init__(self, partial: bytes, *, status_missing: bool = False):
        super().__init__("the remote shell ended")
        self.partial, self.status_missing = partial, status_missing


class _Shell:
    """One persistent ``/bin/sh`` on a channel of its own.  A command is written to its stdin and its
    output read up to a marker line that carries its exit status (see :class:`ShellOutput`)."""

    def __init__(self, proc: asyncssh.SSHClientProcess, token: str, name: str):
        self.proc, self.token, self.name = proc, token, name
        self.buf = bytearray()  # read from stdout, not yet consumed
        self.counter = itertools.count()
        self.tail: asyncio.Future[None] | None = None  # done once every output written so far is read
        self.skipping: set[asyncio.Task[None]] = set()  # outputs read past (their readers were cancelled)

    @property
    def alive(self) -> bool:
        return not self.proc.stdout.at_eof() and not self.proc.is_closing()

    def send(self, conn: SSHConnection, script: str, *, raw: bool = False, stderr: str = "2>&1",
             idle: float | None = None, timeout: float | None = None) -> ShellOutput:
        """Write ``script`` (in braces, stdin from /dev/null, stderr as ``stderr`` says, unless ``raw``)
        and the printf of its end marker; its output is read from the result."""
        marker = f"__HSM_{self.token}{self.name}_{next(self.counter)}__"
        # stdin from /dev/null: a command must never read the protocol's own input
        body = script if raw else f"{{\n{script}\n}} </dev/null {stderr}"
        self.proc.stdin.write(f"{body}\nprintf '\\n%s %d\\n' {marker} \"$?\"\n".encode("utf-8", "surrogateescape"))
        prev, self.tail = self.tail, asyncio.get_running_loop().create_future()
        return ShellOutput(conn, self, f"\n{marker} ".encode(), prev, self.tail, idle, timeout, script)

    async def fill(self, timeout: float | None) -> None:
        # what asyncssh holds, up to a channel window at once: reading it in small pieces makes it pause
        # and resume the channel at each, granting the sender a window each time, and a slow reader
        # then piles up the whole stream in memory (measured: 110 MB of 100 MB with 64 KiB reads)
        chunk = await asyncio.wait_for(self.proc.stdout.read(_WINDOW), timeout)
        if not chunk:
            raise _Ended(bytes(self.buf))
        self.buf += chunk

    def close(self) -> None:
        try:
            self.proc.close()
        except Exception:  # noqa: BLE001 - closing a dead channel
            pass


class SSHConnection:
    def __init__(self, target: SSHTarget, source: str):
        self.target, self.source = target, source
        self._conn: asyncssh.SSHClientConnection | None = None
        self._shell: _Shell | None = None  # the persistent shell: every command
        self._bulk: _Shell | None = None  # opened on first use, for transfers too big to hold up the first
        self._sftp: asyncssh.SFTPClient | None = None
        self._token = secrets.token_hex(8)
        self.connects = 0  # connections made (one per source unless one dropped)
        self.channels_opened = 0
        self.streams_opened = 0  # of channels_opened: the shell for bulk transfers (at most one per connection)
        self.commands_run = 0
        #: False when the login shell's rc file prints to stdout: a channel that does not skip that
        #: output (rsync's ssh, Debian's external sftp-server) reads it as protocol.  rc_note says so.
        self.clean_channels = True
        self.rc_note: str | None = None

    @property
    def _proc(self) -> asyncssh.SSHClientProcess | None:
        """The persistent shell's channel (None when not connected)."""
        return self._shell.proc if self._shell is not None else None

    @property
    def alive(self) -> bool:
        return self._conn is not None and not self._conn.is_closed() and self._shell is not None and self._shell.alive

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
            self.connects += 1
            self._shell = await self._open_shell("m")
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

    async def _open_shell(self, name: str) -> _Shell:
        """A channel running ``/bin/sh``: sshd starts it through the login shell, which reads its rc file
        (Debian's bash reads ~/.bashrc for every command sshd runs): once per channel, so a source opens few."""
        assert self._conn is not None
        proc = await self._conn.create_process("exec /bin/sh", encoding=None)
        self.channels_opened += 1
        return _Shell(proc, self._token, name)

    async def _start_shell(self) -> None:
        """The first exchange with the new shell: skip what the login shell's rc file printed (on stdout
        it is noted, as it would corrupt SFTP and rsync; on stderr, which start_process uses, dropped)."""
        assert self._shell is not None
        t = self.target
        printed = await self._skip_rc(self._shell)
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

    async def _skip_rc(self, shell: _Shell) -> str:
        """What the login shell printed on stdout before the shell's first command ran, read past; what
        it printed on stderr is read past too."""
        t = self.target
        mark = f"__HSM_{self._token}_err__"
        _, printed = await self._exchange(f"printf '%s\\n' {mark} >&2", t.connect_timeout, raw=True, first=True,
                                          shell=shell)
        try:
            await asyncio.wait_for(shell.proc.stderr.readuntil(f"{mark}\n".encode()), t.connect_timeout)
        except (TimeoutError, asyncio.IncompleteReadError, asyncssh.Error):
            pass  # start_process's reader may see a stray line: a spurious wake-up at worst
        return printed

    async def _shell_ended(self, printed: str, shell: _Shell) -> ConnectError:
        """The shell's channel closed before its first command: the login shell's rc file ended it
        (`exit`, or a failing command under `set -e`), unless the connection itself dropped."""
        proc, t = shell.proc, self.target
        said = printed
        try:
            await asyncio.wait_for(proc.wait_closed(), 2)
            said += (await asyncio.wait_for(proc.stderr.read(), 1)).decode(errors="replace")
        except Exception:  # noqa: BLE001 - what it printed only adds detail to the message
            pass
        status = proc.exit_status
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
        for shell in (self._bulk, self._shell):
            if shell is not None:
                shell.close()
        if self._sftp is not None:
            try:
                self._sftp.exit()
            except Exception:  # noqa: BLE001 - closing a dead channel
                pass
        self._sftp = self._shell = self._bulk = None
        if self._conn is not None:
            self._conn.close()
            try:
                await asyncio.wait_for(self._conn.wait_closed(), 2)
            except Exception:  # noqa: BLE001 - a hung host never confirms the close
                pass
            self._conn = None

    async def _drop(self, shell: _Shell) -> None:
        """A shell whose state is unknown now (a timeout, a lost channel): the bulk shell is closed
        alone (the next transfer opens another), the persistent one with the connection."""
        if shell is self._bulk:
            shell.close()
            self._bulk = None
        elif shell is self._shell:
            await self.close()

    # -- commands ------------------------------------------------------------------------
    async def run(self, script: str, *, check: bool = True, timeout: float | None = 60.0) -> CommandResult:
        """Run ``script`` in the persistent remote shell (stderr merged into stdout)."""
        rc, out = await self.run_bytes(script, timeout=timeout)
        result = CommandResult(script, rc, out.decode("utf-8", errors="replace"))
        if check and rc != 0:
            raise CommandError([script], rc, result.stdout, "", self.source)
        return result

    async def run_bytes(self, script: str, *, timeout: float | None = 60.0) -> tuple[int | None, bytes]:
        """``script`` in the persistent shell: its exit status and output as bytes (stderr merged)."""
        if not self.alive:
            raise NotConnected(f"not connected to {self.target.label}", self.source)
        try:
            rc, out = await self._exchange(script, timeout, text=False)
        except TimeoutError:
            await self.close()  # the shell's state is unknown now
            raise CommandTimeout([script], timeout, self.target.label, self.source) from None
        self.commands_run += 1
        return rc, out

    def begin(self, script: str, *, timeout: float | None = 60.0) -> asyncio.Task[CommandResult]:
        """Write ``script`` to the persistent shell now (commands are pipelined: it need not wait for the
        answers to those before it) and read its result in the returned task.  NotConnected if it could
        not be written (nothing ran); the task raises ConnectError / CommandTimeout as ``run`` does."""
        if not self.alive or self._shell is None:
            raise NotConnected(f"not connected to {self.target.label}", self.source)
        loop = asyncio.get_running_loop()
        try:
            out = self._shell.send(self, script, timeout=timeout)
        except (asyncssh.Error, OSError) as exc:
            raise NotConnected(f"not connected to {self.target.label}: {exc}", self.source) from None

        async def result() -> CommandResult:
            data = await out.readall()
            self.commands_run += 1
            return CommandResult(script, out.exit_code, data.decode("utf-8", errors="replace"))

        return loop.create_task(result())

    @overload
    async def _exchange(self, script: str, timeout: float | None, *, raw: bool = ..., first: bool = ...,
                        shell: _Shell | None = ..., text: Literal[True] = ...) -> tuple[int | None, str]: ...

    @overload
    async def _exchange(self, script: str, timeout: float | None, *, raw: bool = ..., first: bool = ...,
                        shell: _Shell | None = ..., text: Literal[False]) -> tuple[int | None, bytes]: ...

    async def _exchange(self, script: str, timeout: float | None, *, raw: bool = False, first: bool = False,
                        shell: _Shell | None = None, text: bool = True) -> tuple[int | None, str | bytes]:
        """Send ``script`` and read its output up to the marker (``timeout`` for the whole).  ``raw``: as
        is, with the shell's own stdin and stderr (else stdin from /dev/null, stderr into stdout);
        ``first``: the shell's first command, whose channel closing means the login shell's rc file
        ended it.  A TimeoutError is left to the caller."""
        shell = shell or self._shell
        assert shell is not None
        try:
            out = shell.send(self, script, raw=raw, timeout=timeout)
        except (asyncssh.Error, OSError) as exc:  # BrokenPipeError: the channel closed under us
            if first:
                raise await self._shell_ended("", shell) from None
            await self._drop(shell)
            raise ConnectError(f"connection to {self.target.label} lost: {exc}", self.source) from None
        try:
            data = await out._read_all_raw()
        except TimeoutError:
            out._finish()  # the caller closes the shell: those after it fail as a lost connection
            raise  # before OSError: since Python 3.11 a timeout IS an OSError, and no connection was lost
        except _Ended as exc:
            if first and not exc.status_missing:
                out._finish()
                raise await self._shell_ended(exc.partial.decode(errors="replace"), shell) from None
            await out.fail()
            why = "no exit status" if exc.status_missing else "the remote shell ended"
            raise ConnectError(f"connection to {self.target.label} lost ({why})", self.source) from None
        except (asyncssh.Error, OSError) as exc:
            await out.fail()
            raise ConnectError(f"connection to {self.target.label} lost: {exc}", self.source) from None
        return out.exit_code, data.decode("utf-8", errors="replace") if text else data

    @contextlib.asynccontextmanager
    async def stream(self, script: str, *, bulk: bool = False, idle: float = 120.0) -> AsyncIterator[ShellOutput]:
        """``script``'s output as it comes, for a transfer (a tar stream): on the persistent shell, or with
        ``bulk`` on a second shell opened for it on first use (and kept: its login shell's rc file runs
        once), so a large transfer does not hold up polls and starts.  The script's stderr is discarded
        unless it redirects it; it must not read stdin.  What the caller leaves unread is read past."""
        if not self.alive:
            raise NotConnected(f"not connected to {self.target.label}", self.source)
        shell = await self._bulk_shell() if bulk else self._shell
        assert shell is not None
        try:
            out = shell.send(self, script, stderr="2>/dev/null", idle=idle)
        except (asyncssh.Error, OSError) as exc:
            await self._drop(shell)
            raise ConnectError(f"connection to {self.target.label} lost: {exc}", self.source) from None
        self.commands_run += 1
        try:
            yield out
            while await out.read(1 << 20):  # what the caller did not read: the next command starts after it
                pass
        except BaseException:
            out.abandon()
            raise

    async def _bulk_shell(self) -> _Shell:
        if self._bulk is None or not self._bulk.alive:
            if self._conn is None or self._conn.is_closed():
                raise NotConnected(f"not connected to {self.target.label}", self.source)
            try:
                shell = await self._open_shell("b")
                await self._skip_rc(shell)
            except (TimeoutError, asyncssh.Error, OSError) as exc:
                raise ConnectError(f"could not open a transfer channel to {self.target.label}: "
                                   f"{type(exc).__name__} {exc}".strip(), self.source) from None
            self.streams_opened += 1
            self._bulk = shell
        return self._bulk

    async def start_process(self, *commands: str, prelude: str = "") -> SimpleNamespace:
        """Long-lived remote commands, started in the background of the persistent shell (after the
        shell code ``prelude``): no channel and no login shell of their own.  Their output is read from
        the result's ``stdout`` (the shell channel's stderr stream, which carries nothing else but shell
        errors); the shell ends them when the connection closes.  They must not read stdin; every such
        command shares that stream."""
        if not self.alive:
            raise NotConnected(f"not connected to {self.target.label}", self.source)
        assert self._shell is not None
        reader = self._shell.proc.stderr
        # the shell ends them when it ends (EOF: the connection closed), or they would linger
        script = prelude + "".join(f"\n{{ {command}\n}} >&2 2>/dev/null </dev/null &\n_hsm_bg=\"$_hsm_bg $!\""
                                   for command in commands) + "\ntrap 'kill $_hsm_bg 2>/dev/null' EXIT"
        try:
            await self._exchange(script, self.target.connect_timeout, raw=True)
        except TimeoutError:
            await self.close()
            raise CommandTimeout(list(commands), self.target.connect_timeout, self.target.label,
                                 self.source) from None
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
