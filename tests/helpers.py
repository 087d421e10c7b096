"""Small helpers shared by the tests."""

from __future__ import annotations

import time
from typing import Callable


def until(cond: Callable[[], object], timeout: float = 60, what: str = "condition", every: float = 0.05) -> None:
    """Wait for ``cond()`` to be true; fail the test, naming ``what``, after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"{what} not reached in {timeout} s"
        time.sleep(every)
