"""A finished job's outcome read from its folder, as the job contract lays it out: exit code, the
error line, metrics, start and end times, a cancel marker."""

from __future__ import annotations

import json
from pathlib import Path

from ..model.state import JobOutcome, JobState
from ..spec.job import tail
from ..spec.jobpaths import NAMES, JobPaths, exit_code_of


def read_outcome(job_dir: Path, state: JobState) -> JobOutcome:
    """Exit code, error line and metrics from a job dir laid out by the job contract."""
    exit_code = exit_code_of(JobPaths(job_dir))  # None: absent, or empty while being written
    errors: list[str] = []
    if state in (JobState.FAILED, JobState.LOST):
        last = tail(job_dir / NAMES.stderr, 5).strip()
        if exit_code is not None:
            errors.append(f"exit code {exit_code}" + (f": {last.splitlines()[-1]}" if last else ""))
        elif state == JobState.LOST:
            errors.append("the job's process vanished without an exit code")
    metrics = None
    path = job_dir / NAMES.metrics
    if path.exists():
        try:
            metrics = json.loads(path.read_text() or "null")
            if not isinstance(metrics, dict):
                errors.append(f"{NAMES.metrics} must hold a JSON object, found {type(metrics).__name__}")
                metrics = None
        except (ValueError, UnicodeDecodeError) as exc:
            errors.append(f"{NAMES.metrics} is not valid JSON ({exc})")
    timing = {}
    for key, name in (("start_time", NAMES.pid), ("end_time", NAMES.exit_code)):
        try:
            timing[key] = (job_dir / name).stat().st_mtime
        except FileNotFoundError:
            pass
    if (job_dir / NAMES.cancelled).exists() and state != JobState.COMPLETED:
        state = JobState.CANCELLED
    return JobOutcome(state, exit_code, "; ".join(errors) or None, metrics, **timing)
