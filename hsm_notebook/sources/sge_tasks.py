"""What Grid Engine says about a sweep's array tasks, read into JobStates: its state letters,
``qstat -xml`` records, ``qstat -j`` reasons and ``qacct`` records (measured on Son of Grid Engine
8.1.9).

Grid Engine forgets a task the moment it ends: ``qstat`` lists it no more, with no word of how it
ended.  The task's folder decides when it wrote an exit code.  A task that started and left none was
killed, and ``qacct`` (the accounting file, written ~1 s later here, up to ``flush_time`` on a real
cluster) tells how: ``failed 100 : assumedly after job`` is a ``qdel`` (this controller's, or a
user's own), ``failed 37`` a limit the master enforced (``h_rt``, ``h_vmem``).
"""

from __future__ import annotations

import re
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator

from ..core.model.errors import SourceError
from ..core.model.state import JobState
from .slurm_login import TaskFiles
from .slurm_tasks import SchedulerTasks

#: Words this source gives a task ``qstat`` lists no more, from its ``qacct`` record.
DELETED, LIMIT, ENDED, KILLED, ACCOUNTING = "deleted", "limit", "ended", "killed", "accounting"


class SGEStates(dict[str, JobState]):
    """SGE state letters -> JobState: the one table.  ``qstat`` prints combinations of letters
    (``qw``, ``hqw``, ``hRwq``, ``r``, ``t``, ``Rr``, ``Rq``, ``dr``, ``Eqw``...); the common ones are
    listed, any other is read letter by letter: ``E`` (an error: it will not run until someone clears
    it) FAILED, ``z`` finished, ``r``/``t``/``s``/``S``/``T`` (running, starting, suspended) RUNNING,
    ``q``/``w``/``h`` (waiting, held) QUEUED.  ``d`` (being deleted) changes nothing until it is gone."""

    def get(self, word: str, default: JobState | None = None) -> JobState | None:  # type: ignore[override]
        if word in self:
            return self[word]
        if not word or not word.isalpha():
            return default
        if "E" in word:
            return JobState.FAILED
        if "z" in word:
            return JobState.COMPLETED
        if any(c in word for c in "rtsST"):
            return JobState.RUNNING
        if any(c in word for c in "qwh"):
            return JobState.QUEUED
        return default


SGE_STATES = SGEStates({
    "qw": JobState.QUEUED, "hqw": JobState.QUEUED, "hRwq": JobState.QUEUED, "Rq": JobState.QUEUED,
    "dqw": JobState.QUEUED, "t": JobState.RUNNING, "r": JobState.RUNNING, "Rr": JobState.RUNNING,
    "Rt": JobState.RUNNING, "dr": JobState.RUNNING, "dt": JobState.RUNNING, "s": JobState.RUNNING,
    "S": JobState.RUNNING, "T": JobState.RUNNING, "Eqw": JobState.FAILED,
    # what qacct says of a task qstat lists no more (see SGETasks.accounted)
    DELETED: JobState.CANCELLED, LIMIT: JobState.FAILED, ENDED: JobState.LOST, KILLED: JobState.LOST,
    ACCOUNTING: JobState.RUNNING,
})


def task_range(text: str) -> Iterator[int]:
    """The indexes of a ``<tasks>`` field: ``3``, ``3-5:1``, ``5,6``, ``1-9:2,12``."""
    for part in text.split(","):
        first, _, rest = part.strip().partition("-")
        if not first.isdigit():
            continue
        last, _, step = rest.partition(":")
        yield from range(int(first), int(last or first) + 1, int(step or 1))


#: What Grid Engine's XML printer leaves unescaped in values (a job's environment, its arguments):
#: a bare ``&``, a ``<`` that opens no tag, and control characters XML 1.0 forbids.
_BARE = re.compile(r"&(?!(?:amp|lt|gt|quot|apos|#\d+|#x[0-9a-fA-F]+);)|<(?![A-Za-z_/?!])|[\x00-\x08\x0b\x0c\x0e-\x1f]")


def _xml(text: str, command: str) -> ET.Element:
    try:
        return ET.fromstring(text)
    except ET.ParseError:
        pass
    try:  # escaped as the printer should have: the records are read, not skipped
        return ET.fromstring(_BARE.sub(lambda m: {"&": "&amp;", "<": "&lt;"}.get(m.group(), ""), text))
    except ET.ParseError as exc:
        raise SourceError(f"{command} printed what is not XML ({exc}): {text[:200]!r}") from None


def parse_qstat(text: str, arrays: set[str]) -> dict[str, tuple[str, str]]:
    """``{"12.3": (state letters, "")}`` from ``qstat -xml`` for the given arrays: a running task is a
    record of its own, pending ones share one record (``<tasks>3-5:1</tasks>``)."""
    seen: dict[str, tuple[str, str]] = {}
    if not text.strip():
        return seen
    for record in _xml(text, "qstat -xml").iter("job_list"):
        number = (record.findtext("JB_job_number") or "").strip()
        if number not in arrays:
            continue
        state = (record.findtext("state") or "").strip()
        tasks = record.findtext("tasks")
        if tasks is None:  # not an array job: the record stands for its one task
            seen.setdefault(f"{number}.*", (state, ""))
            continue
        for index in task_range(tasks):
            seen[f"{number}.{index}"] = (state, "")
    return seen


def parse_reasons(text: str) -> tuple[dict[str, str], dict[str, str]]:
    """From ``qstat -j IDS -xml``: the scheduler's messages per array (``{"12": "not all array tasks
    may be started due to 'max_aj_instances'"}``) and each task's error reason (``{"13.1": "can't
    chdir to /x: No such file or directory"}``: why it is in state E)."""
    root = _xml(text, "qstat -j -xml")
    arrays: dict[str, list[str]] = {}
    for group in root.iter("SME_message_list"):
        for element in group:
            words = (element.findtext("MES_message") or "").strip()
            for value in element.iter("ULNG_value"):
                if words and value.text:
                    arrays.setdefault(value.text.strip(), []).append(words)
    errors: dict[str, str] = {}
    for job in root.iter("djob_info"):
        for element in job:
            number = (element.findtext("JB_job_number") or "").strip()
            for task in element.iterfind("JB_ja_tasks/ulong_sublist"):
                index = task.findtext("JAT_task_number")
                why = task.findtext("JAT_message_list/ulong_sublist/QIM_message")
                if index and why:  # "12/08/2026 00:20:12 [0:24828]: error: can't chdir to ..."
                    errors[f"{number}.{index.strip()}"] = why.split("]: ", 1)[-1].removeprefix("error: ").strip()
    return {n: "; ".join(dict.fromkeys(m)) for n, m in arrays.items()}, errors


def parse_qacct(text: str) -> dict[str, dict[str, str]]:
    """``qacct -j ID`` records by task index (``"undefined"`` outside arrays), the latest of each
    (a requeued task has an earlier ``failed 25 : rescheduling`` record)."""
    records: dict[str, dict[str, str]] = {}
    for block in text.split("=" * 62):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            key, _, value = line.partition(" ")
            if key:
                fields[key] = value.strip()
        if "jobnumber" in fields:
            records[fields.get("taskid", "undefined")] = fields
    return records


class SGETasks(SchedulerTasks):
    """What an SGE source has seen of its tasks: SGE's ids (``ARRAY.INDEX``, from 1), the reasons of
    tasks in error, and what ``qacct`` said of those that vanished."""

    #: How long a task that vanished without an exit code waits for its ``qacct`` record.
    accounting_wait = 120.0

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._errors: dict[str, str] = {}  # job id -> why SGE holds it in state E
        self._accounted: dict[str, str] = {}  # job id -> its qacct record in words
        self._vanished_at: dict[str, float] = {}

    def submitted(self, array_id: str, n: int) -> list[str]:
        self._arrays[array_id] = [f"{array_id}.{i}" for i in range(1, n + 1)]
        return list(self._arrays[array_id])

    def cancelled_here(self, job_id: str) -> bool:
        return job_id in self._cancelled_here

    def accounted(self, job_id: str, record: dict[str, str] | None, problem: str = "") -> tuple[str, str] | None:
        """A status record for a task that vanished without an exit code, from its ``qacct`` record
        (None: no record in ``accounting_wait`` seconds, so LOST)."""
        if record is None:
            since = self._vanished_at.setdefault(job_id, time.monotonic())
            if time.monotonic() - since < self.accounting_wait:
                return (ACCOUNTING, "")
            self._accounted[job_id] = (f"it left no exit code and qacct has no record after "
                                       f"{self.accounting_wait:.0f} s{f' ({problem})' if problem else ''}")
            return None
        failed, status = record.get("failed", ""), record.get("exit_status", "").split()[0:1]
        code = failed.split()[0] if failed else ""
        self._accounted[job_id] = f"qacct: failed {' '.join(failed.split())}, exit_status {''.join(status)}"
        if code == "100":
            return (DELETED, "")
        if code == "37":
            return (LIMIT, "")
        return (ENDED, "") if code == "0" else (KILLED, "")

    def decide(self, job_id: str, listed: tuple[str, str] | None, files: TaskFiles | None) -> JobState:
        word, reason = listed or ("", "")
        if "E" in word and word.isalpha():
            self._errors[job_id] = reason or self._errors.get(job_id, "")
        if word == DELETED:
            self._ran.add(job_id)  # it started: "while it ran"
        if listed is None and files is not None and files.code is None and job_id in self._cancelled_here:
            return JobState.CANCELLED  # our own qdel: gone without a record, whether it had started or not
        return super().decide(job_id, listed, files)

    def detail(self, job_id: str) -> str | None:
        if self.slurm_state.get(job_id) == ACCOUNTING:
            return "ended; waiting for its qacct record"
        return super().detail(job_id)

    def note(self, job_id: str, state: JobState) -> str:
        word = self.slurm_state.get(job_id, "")
        if word in (DELETED, LIMIT, ENDED, KILLED, ACCOUNTING):  # not SGE's word: said below in words
            self.slurm_state[job_id] = ""
        notes = [super().note(job_id, state)]
        if word == LIMIT:
            notes.append("killed at its h_rt/h_cpu/h_vmem limit")
        if job_id in self._errors and state == JobState.FAILED:
            notes.append(f"SGE held it in error state ({self._errors[job_id] or 'no reason given'}); removed")
        if job_id in self._accounted and state != JobState.COMPLETED:
            notes.append(self._accounted[job_id])
        return "; ".join(n for n in notes if n)
