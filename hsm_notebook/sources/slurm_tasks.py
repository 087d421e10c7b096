"""What Slurm says about a sweep's array tasks, read into JobStates: the state table, squeue's
records, and per task what was seen (running, requeued, pending reasons, cancelled from outside).

A task's folder (see ``core.job.WRAPPER``) decides over Slurm's word when its run ended by
itself: a node that fails after the program finished gets the job requeued, and the exit code
already written is the answer.  Otherwise Slurm's word decides; a task that Slurm no longer lists
and that never started was cancelled from outside (``scancel`` of a pending array task removes
it without a record); one Slurm lists as CANCELLED that this controller did not cancel was too
(a user's own ``scancel``, of a running or a pending task): both say so in the outcome's note.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..core.model.state import JobState
from ..core.spec.jobpaths import NAMES
from .slurm_login import TaskFiles

#: Slurm job states -> JobState: the one table.  Failure states keep their Slurm name in the error.
SLURM_STATES: dict[str, JobState] = {
    "PENDING": JobState.QUEUED, "CONFIGURING": JobState.QUEUED, "REQUEUED": JobState.QUEUED,
    "REQUEUE_HOLD": JobState.QUEUED, "REQUEUE_FED": JobState.QUEUED, "RESV_DEL_HOLD": JobState.QUEUED,
    "RUNNING": JobState.RUNNING, "COMPLETING": JobState.RUNNING, "RESIZING": JobState.RUNNING,
    "SUSPENDED": JobState.RUNNING, "STOPPED": JobState.RUNNING, "SIGNALING": JobState.RUNNING,
    "STAGE_OUT": JobState.RUNNING,
    "COMPLETED": JobState.COMPLETED,
    "FAILED": JobState.FAILED, "TIMEOUT": JobState.FAILED, "OUT_OF_MEMORY": JobState.FAILED,
    "DEADLINE": JobState.FAILED, "SPECIAL_EXIT": JobState.FAILED,
    "CANCELLED": JobState.CANCELLED, "REVOKED": JobState.CANCELLED,
    "NODE_FAIL": JobState.LOST, "PREEMPTED": JobState.LOST, "BOOT_FAIL": JobState.LOST,
}
SQUEUE_FORMAT = "%F|%K|%T|%r"  # array job id | task index (or a range of pending ones) | state | reason


def state_of(listed: tuple[str, str]) -> JobState | None:
    """The JobState of a squeue record's state word (None for a word Slurm may add one day)."""
    word = listed[0].split()[0] if listed[0] else ""
    return SLURM_STATES.get(word)


def parse_squeue(out: str) -> dict[str, tuple[str, str]]:
    """``{"12_3": (state, reason)}`` from squeue lines.  A record for several array tasks
    (``12|1-4%2|PENDING|...``, or a bare id once they are cancelled) stands for each of them
    under the key ``"12_*"``, used for tasks not listed on their own."""
    seen: dict[str, tuple[str, str]] = {}
    for line in out.splitlines():
        parts = line.strip().split("|")
        if len(parts) != 4:
            continue
        array, index, state, reason = parts
        if index.isdigit():
            seen[f"{array}_{index}"] = (state, reason)
        else:
            seen.setdefault(f"{array}_*", (state, reason))
            seen.setdefault(array, (state, reason))
    return seen


class SchedulerTasks:
    """What one batch-scheduler source has seen of its tasks (Slurm's words by default)."""

    def __init__(self, states: Mapping[str, JobState] = SLURM_STATES, scheduler: str = "Slurm",
                 cancel_command: str = "scancel") -> None:
        self.states, self.scheduler, self.cancel_command = states, scheduler, cancel_command
        self.slurm_state: dict[str, str] = {}  # job id -> Slurm's last word
        self._reasons: dict[str, str] = {}
        self._ran: set[str] = set()  # seen running: pending again means requeued
        self._requeues: dict[str, int] = {}  # job id -> times Slurm requeued it (seen, or runs kept)
        self._notes: dict[str, str] = {}  # job id -> what its outcome adds
        self._arrays: dict[str, list[str]] = {}  # array id -> its task ids
        self._cancelled_here: set[str] = set()  # tasks this controller asked Slurm to cancel
        self.ended: set[str] = set()

    def submitted(self, array_id: str, n: int) -> list[str]:
        self._arrays[array_id] = [f"{array_id}_{i}" for i in range(n)]
        return list(self._arrays[array_id])

    def may_have_ended(self, job_id: str, listed: tuple[str, str] | None) -> bool:
        """Only these tasks' folders are read: a queue of pending tasks costs no file access."""
        return listed is None or self.listed_as(listed) != JobState.QUEUED or job_id in self._ran

    def listed_as(self, listed: tuple[str, str] | None) -> JobState | None:
        """The JobState of a status record's word (None: not listed, or a word not in the table)."""
        if not listed:
            return None
        word = listed[0].split()[0] if listed[0] else ""
        return self.states.get(word)

    def decide(self, job_id: str, listed: tuple[str, str] | None, files: TaskFiles | None) -> JobState:
        """One task's state from Slurm's word and its folder; the folder wins when the run ended by
        itself (its exit code decides even while Slurm still lists a requeued copy)."""
        slurm_state, reason = listed or ("", "")
        self.slurm_state[job_id] = slurm_state
        state = self.listed_as(listed)
        if state == JobState.RUNNING:
            self._ran.add(job_id)
        elif state == JobState.QUEUED and job_id in self._ran:
            self._ran.discard(job_id)
            self._requeues[job_id] = self._requeues.get(job_id, 0) + 1
        if files is not None and files.runs > self._requeues.get(job_id, 0):
            self._requeues[job_id] = files.runs
        if state == JobState.QUEUED and reason and reason != "None":
            self._reasons[job_id] = reason
        else:
            self._reasons.pop(job_id, None)
        code = files.code if files else None
        if files is not None and code is not None and (not files.signalled or state is None):
            return JobState.COMPLETED if code == 0 else JobState.FAILED
        if state is None:  # not listed, no exit code
            if files is not None and files.claimed:
                self._notes[job_id] = (f"cancelled outside hsm_notebook ({self.cancel_command}): {self.scheduler} "
                                       "lists it no more and it never started; not retried")
                return JobState.CANCELLED
            return JobState.LOST
        if state in (JobState.COMPLETED, JobState.FAILED) and code is not None:
            return JobState.COMPLETED if code == 0 and slurm_state == "COMPLETED" else JobState.FAILED
        if state == JobState.CANCELLED and job_id not in self._cancelled_here:
            when = "while it ran" if job_id in self._ran or code is not None else "before it started"
            self._notes[job_id] = f"cancelled outside hsm_notebook ({self.cancel_command}) {when}; not retried"
        return state

    def detail(self, job_id: str) -> str | None:
        """What the status table shows while the task waits: the pending reason, the requeues."""
        reason = self._reasons.get(job_id)
        requeues = self._requeues.get(job_id)
        parts = [f"pending: {reason}" if reason else "",
                 f"requeued by {self.scheduler} {requeues}x" if requeues else ""]
        return "; ".join(p for p in parts if p) or None

    def note(self, job_id: str, state: JobState) -> str:
        """What the task's outcome adds: cancelled from outside, Slurm's failure word, requeues."""
        notes = [self._notes.pop(job_id, "")]
        slurm_state = self.slurm_state.get(job_id, "")
        if slurm_state and slurm_state not in ("COMPLETED", "CANCELLED") and state != JobState.COMPLETED:
            notes.append(f"{self.scheduler}: {slurm_state}")
        requeues = self._requeues.get(job_id)
        if requeues:
            runs = ", ".join(f"{NAMES.run_prefix}{i}/" for i in range(1, requeues + 1))
            notes.append(f"requeued by {self.scheduler} {requeues} time(s) (node failure, preemption or the job's own "
                         f"requeue); earlier runs' logs in {runs}")
        return "; ".join(n for n in notes if n)

    def cancel_names(self, job_ids: list[str]) -> list[str]:
        """What one ``scancel`` names: an array whose unfinished tasks are all cancelled by its id
        (its pending tasks then never start), the other tasks one by one."""
        wanted = set(job_ids)
        self._cancelled_here.update(wanted)
        names: list[str] = []
        for array, tasks in self._arrays.items():
            open_ = [t for t in tasks if t not in self.ended]
            if open_ and wanted.issuperset(open_):
                names.append(array)
                wanted.difference_update(tasks)
        return names + sorted(wanted)


#: The name this class had when it served Slurm alone.
SlurmTasks = SchedulerTasks
