"""The reference's state words: what a source may say about one of its jobs -> ``JobState``, and
the job names the engine gives (``<task id>-<attempt>``)."""

from __future__ import annotations

import re
from typing import Any

from ..model.errors import SourceError
from ..model.state import JobState

_JOB_NAME = re.compile(r"^(?P<task>[0-9a-f]{12})-(?P<attempt>\d+)$")


def split_job_name(job_name: str) -> tuple[str | None, int | None]:
    """``"0123456789ab-2"`` -> ``("0123456789ab", 2)``; other names -> ``(None, None)``."""
    m = _JOB_NAME.match(job_name)
    return (m["task"], int(m["attempt"])) if m else (None, None)


#: What a source may report for a job it was given, in the reference API's words and a few
#: common others (case-insensitive).  "PENDING" from a source means waiting in *its* queue.
#: "UNKNOWN" (or anything not listed) means: no answer for this job this round.
SOURCE_STATES: dict[str, JobState] = {
    "PENDING": JobState.QUEUED, "SUBMITTING": JobState.QUEUED, "SUBMITTED": JobState.QUEUED,
    "QUEUED": JobState.QUEUED, "WAITING": JobState.QUEUED, "STARTING": JobState.QUEUED,
    "RUNNING": JobState.RUNNING, "ACTIVE": JobState.RUNNING,
    "COMPLETED": JobState.COMPLETED, "DONE": JobState.COMPLETED, "SUCCESS": JobState.COMPLETED,
    "SUCCEEDED": JobState.COMPLETED, "FINISHED": JobState.COMPLETED,
    "FAILED": JobState.FAILED, "ERROR": JobState.FAILED, "TIMEOUT": JobState.FAILED,
    "CANCELLED": JobState.CANCELLED, "CANCELED": JobState.CANCELLED, "KILLED": JobState.CANCELLED,
    "LOST": JobState.LOST,
}


def reported_state(value: Any) -> JobState | None:
    """A source's answer about one of its jobs as a state, or None when it does not know
    ("UNKNOWN", or a word nobody defined): the manager asks again next round."""
    key = value.value if isinstance(value, JobState) else str(value).strip().upper()
    return SOURCE_STATES.get(key)


def to_state(value: Any) -> JobState:
    """A ``JobState`` or the reference API's plain strings (case-insensitive); SourceError for
    anything else."""
    state = reported_state(value)
    if state is None:
        raise SourceError(f"unknown job state {value!r}; return a JobState or one of {sorted(SOURCE_STATES)}")
    return state
