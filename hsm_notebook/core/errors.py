"""The typed error tree.

Every error the package raises on purpose is an :class:`HsmError`.  Messages say
what is wrong *and* what to do next, because they end up in front of a person
(in a notebook cell or in the panel), not in a log file.
"""

from __future__ import annotations

from typing import Sequence


class HsmError(Exception):
    """Base of every error raised by hsm_notebook."""


class ConfigError(HsmError, ValueError):
    """Bad input: a parameter space, a command, a source option, a sweep dir.

    Raised before any job starts.  ``field`` names the offending setting.
    """

    def __init__(self, message: str, field: str | None = None):
        self.field = field
        super().__init__(f"{field}: {message}" if field else message)


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


class SubmitError(SourceError):
    """A job could not be submitted."""


class CommandError(SourceError):
    """A command run by a source exited badly.

    Carries everything needed to understand the failure without re-running it.
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
        code = "lost connection (no exit status)" if exit_code is None else f"exit code {exit_code}"
        tail = (stderr or stdout).strip().splitlines()[-5:]
        detail = ("\n  " + "\n  ".join(tail)) if tail else ""
        super().__init__(f"command {self.argv!r} failed with {code}{detail}", source)
