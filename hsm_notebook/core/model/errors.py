"""The typed error tree.

Every error the package raises on purpose is an :class:`HsmError`.  Messages say
what is wrong *and* what to do next, because they end up in front of a person
(in a notebook cell or in the panel), not in a log file.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence


class HsmError(Exception):
    """Base of every error raised by hsm_notebook."""


class ConfigError(HsmError, ValueError):
    """Bad input: a parameter space, a command, a source option, a sweep dir.

    Raised before any job starts.  ``field`` names the offending setting.
    """

    def __init__(self, message: str, field: str | None = None):
        self.field = field
        super().__init__(f"{field}: {message}" if field else message)


class HsmWarning(UserWarning):
    """Something was left out or assumed, said without stopping (``best()`` naming tasks it left out)."""


class StoreError(HsmError):
    """The sweep directory or its ledger cannot be used as asked."""


class SweepLockedError(StoreError):
    """Another live process is already driving this sweep."""


class SourceError(HsmError):
    """A compute source failed to do what was asked (setup, submit, poll, ...)."""

    def __init__(self, message: str, source: str | None = None):
        self.source = source
        super().__init__(f"[{source}] {message}" if source else message)


class ConnectError(SourceError):
    """The source cannot be reached right now (host down, connection lost, refused)."""


class NotConnected(ConnectError):
    """A command was not sent at all: the connection was already down (nothing can have run)."""


class SubmitError(SourceError):
    """A job could not be submitted."""


class CommandError(SourceError):
    """A command run by a source exited badly.

    Carries everything needed to understand the failure without re-running it.  The
    message names the command by its first line only (a start script may hold hundreds
    of jobs): ``argv`` keeps the whole of it.
    """

    def __init__(
        self,
        argv: Sequence[str],
        exit_code: int | None,
        stdout: str = "",
        stderr: str = "",
        source: str | None = None,
    ):
        self.argv = list(argv)
        self.exit_code = exit_code
        self.stdout = stdout
        self.stderr = stderr
        code = ("a timeout" if isinstance(self, asyncio.TimeoutError)  # not a lost connection
                else "lost connection (no exit status)" if exit_code is None else f"exit code {exit_code}")
        tail = [shorten(line, 200) for line in (stderr or stdout).strip().splitlines()[-5:]]
        detail = ("\n  " + "\n  ".join(tail)) if tail else ""
        super().__init__(f"command {command_label(self.argv)} failed with {code}{detail}", source)


class CommandTimeout(CommandError, asyncio.TimeoutError):
    """A command got no answer in time (the host may be overloaded or hung)."""

    def __init__(self, argv: Sequence[str], timeout: float | None, where: str, source: str | None = None):
        self.timeout = timeout
        super().__init__(argv, None, "", f"no answer from {where} in {timeout} s", source)


#: Failures of the infrastructure rather than of the job: worth another try later.
INFRASTRUCTURE = (ConnectError, CommandTimeout, asyncio.TimeoutError, ConnectionError, OSError)


def is_infrastructure(exc: BaseException) -> bool:
    """True for faults of the machine or the network (retried), False for the job's own."""
    return isinstance(exc, INFRASTRUCTURE) or (isinstance(exc, CommandError) and exc.exit_code is None)


def shorten(text: str, limit: int = 300) -> str:
    """``text`` cut to ``limit`` characters, saying how much was left out."""
    text = str(text)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text) - limit} more characters)"


def command_label(argv: Sequence[str]) -> str:
    """A command as a person wants to see it in an error: its first line, bounded."""
    words = " ".join(str(a) for a in argv)
    first, _, rest = words.strip().partition("\n")
    return repr(shorten(first, 120) + (" ..." if rest else ""))


def describe_error(exc: BaseException, limit: int = 300) -> str:
    """``Type: message`` in one bounded line (never a whole script)."""
    text = str(exc) or "(no message)"
    name = type(exc).__name__
    return shorten(text if isinstance(exc, HsmError) else f"{name}: {text}", limit)
