"""Process checks through /proc, shared by the test servers (zombies linger here: a process
counts as alive only if /proc says it is neither a zombie nor dead)."""

from __future__ import annotations

import contextlib
import os
import time


def _state(pid: int) -> str | None:
    """The process state letter from /proc/PID/stat; None if the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        return data.rsplit(b")", 1)[1].split()[0].decode()
    except (OSError, IndexError):
        return None


def _alive(pid: int) -> bool:
    """True unless the process is gone, a zombie or dead (state Z/X)."""
    st = _state(pid)
    return st is not None and st not in ("Z", "X")


def _signal(pid: int, sig: int) -> None:
    if pid > 1:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _wait_gone(pids, timeout: float) -> list[int]:
    """Wait until no pid in ``pids`` is alive; return those still alive at the end."""
    deadline = time.monotonic() + timeout
    left = [p for p in pids if _alive(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.02)
        left = [p for p in left if _alive(p)]
    return left
