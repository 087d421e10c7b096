"""What PBS says about a sweep's array subjobs, read into JobStates: the state letters, PBS Pro's
``qstat -f -F json`` and Torque's ``qstat -x`` (XML) records, as their documentation describes them.

A subjob's id is ``123[4].server`` (its array ``123[].server``; a sweep of one task is a plain job,
``124.server``).  A finished record (``F``/``X`` in PBS Pro, ``C`` in Torque) is read with its exit
status: a negative one is the server's own (PBS Pro's ``JOB_EXEC_KILL_*`` -24 to -29: killed at a
limit such as walltime -29; others: it could not be run), otherwise the task's folder decides.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

from ..core.model.errors import SourceError
from ..core.model.state import JobState
from .slurm_login import TaskFiles
from .slurm_tasks import SchedulerTasks

#: Words this source gives a finished record, from its exit status.
DONE, LIMIT, ABORTED = "DONE", "LIMIT", "ABORTED"
FINISHED = ("F", "X", "C")

#: PBS state letters (both flavors) -> JobState: the one table.
PBS_STATES: dict[str, JobState] = {
    "Q": JobState.QUEUED, "H": JobState.QUEUED, "W": JobState.QUEUED, "T": JobState.QUEUED, "M": JobState.QUEUED,
    "R": JobState.RUNNING, "E": JobState.RUNNING, "B": JobState.RUNNING, "S": JobState.RUNNING,
    "U": JobState.RUNNING,
    DONE: JobState.LOST,  # decided by the task's folder; without an exit code it is lost
    LIMIT: JobState.FAILED, ABORTED: JobState.LOST,
}
#: PBS Pro's exit statuses for a job the server killed at a limit (JOB_EXEC_KILL_*).
KILLED_AT_LIMIT = {-24: "ncpus burst", -25: "ncpus sum", -26: "vmem", -27: "mem", -28: "cput", -29: "walltime"}


def _record(state: str, exit_status: object, comment: str, flavor: str) -> tuple[str, str] | None:
    """One subjob's status record: a finished one becomes DONE / LIMIT / ABORTED with its exit status
    as the second field; a waiting one keeps the server's comment (its pending reason).  A finished
    one without an exit status never ran (deleted while it waited): None, as if PBS listed it no more
    (the task's folder is then claimed: it can never start)."""
    if state not in FINISHED:
        return state, comment
    try:
        code = int(str(exit_status))
    except ValueError:
        return None
    if code < 0:
        return (LIMIT if flavor == "pro" and code in KILLED_AT_LIMIT else ABORTED), f"Exit_status {code}"
    return DONE, f"Exit_status {code}"


def parse_pro(text: str) -> dict[str, tuple[str, str]]:
    """``qstat -f -F json -x -t`` (PBS Pro / OpenPBS): ``{"123[4].server": (state, reason)}``; array
    parents (``123[].server``) are left out, their subjobs are listed."""
    if not text.strip():
        return {}
    try:
        jobs = json.loads(text).get("Jobs") or {}
    except (ValueError, AttributeError) as exc:
        raise SourceError(f"qstat -F json printed what is not JSON ({exc}): {text[:200]!r}") from None
    out = {}
    for job_id, a in jobs.items():
        record = _record(str(a.get("job_state", "")), a.get("Exit_status"), str(a.get("comment", "")), "pro")
        if record is not None and "[]" not in job_id:
            out[job_id] = record
    return out


def parse_torque(text: str) -> dict[str, tuple[str, str]]:
    """``qstat -x -t`` (Torque's XML): ``{"123[4].server": (state, reason)}``, array parents left out."""
    if not text.strip():
        return {}
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise SourceError(f"qstat -x printed what is not XML ({exc}): {text[:200]!r}") from None
    out: dict[str, tuple[str, str]] = {}
    for job in root.iter("Job"):
        job_id = (job.findtext("Job_Id") or "").strip()
        record = _record((job.findtext("job_state") or "").strip(), job.findtext("exit_status"),
                         (job.findtext("comment") or "").strip(), "torque")
        if job_id and record is not None and "[]" not in job_id:
            out[job_id] = record
    return out


class PBSTasks(SchedulerTasks):
    """What a PBS source has seen of its subjobs: PBS's ids, and the finished records' exit statuses."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._exits: dict[str, str] = {}

    def submitted(self, array_id: str, n: int) -> list[str]:
        self._arrays[array_id] = [array_id.replace("[]", f"[{i}]") for i in range(n)] if "[]" in array_id \
            else [array_id]
        return list(self._arrays[array_id])

    def decide(self, job_id: str, listed: tuple[str, str] | None, files: TaskFiles | None) -> JobState:
        word, reason = listed or ("", "")
        if word in (DONE, LIMIT, ABORTED):
            self._exits[job_id] = reason
        gone = listed is None or word in (DONE, ABORTED)
        ended_by_signal = files is not None and files.code is not None and files.signalled
        if gone and files is not None and (files.code is None or ended_by_signal):
            if job_id in self._cancelled_here:
                return JobState.CANCELLED  # our own qdel
            if ended_by_signal and word == DONE:  # PBS sends SIGTERM on qdel; the wrapper noted it
                self.slurm_state[job_id] = ""
                self._ran.add(job_id)
                self._notes[job_id] = (f"cancelled outside hsm_notebook ({self.cancel_command}) while it ran (or "
                                       "killed at a limit the server does not name); not retried")
                return JobState.CANCELLED
        return super().decide(job_id, listed, files)

    def note(self, job_id: str, state: JobState) -> str:
        word, status = self.slurm_state.get(job_id, ""), self._exits.get(job_id, "")
        if word in (DONE, LIMIT, ABORTED):
            self.slurm_state[job_id] = ""  # not PBS's word: said below
        notes = [super().note(job_id, state)]
        if word == LIMIT:
            code = int(status.split()[-1])
            notes.append(f"PBS killed it at its {KILLED_AT_LIMIT[code]} limit ({status})")
        elif word == ABORTED:
            notes.append(f"PBS could not run it ({status}: the server's own code)")
        elif word == DONE and status and state != JobState.COMPLETED:
            notes.append(f"PBS: {status}")
        return "; ".join(n for n in notes if n)
