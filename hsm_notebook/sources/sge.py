"""``SGEComputeSource``: a sweep's tasks as Grid Engine array jobs (Son of Grid Engine, Univa/Altair
GE), with real qsub/qstat/qdel.

Grid Engine declared over the batch-scheduler base (``sources/batch.py``): its commands, its state
letters and ``qstat -xml`` records (``sge_tasks``), ``#$`` resource lines, and what setup asks the
cluster (``max_aj_tasks``, ``qsub -w v``) and a health check reads (``qstat -g c``).  Grid Engine
forgets a task as it ends, so a task killed without an exit code is explained by its ``qacct``
record (``sge_tasks.SGETasks``).
"""

from __future__ import annotations

import dataclasses
import re
import shlex
import time
import xml.etree.ElementTree as ET
from typing import Any

from ..core.model.errors import CommandError, ConfigError, SourceError
from ..core.model.state import JobState, ResourceSpec
from ..core.spec.jobpaths import NAMES
from ..core.spec.options import JobOptions, with_options
from .batch import BatchSchedulerSource, array_script, hms, memory_mib, walltime_seconds
from .sge_tasks import SGE_STATES, SGETasks, parse_qacct, parse_qstat, parse_reasons

_WORD = re.compile(r"^[A-Za-z0-9_.,:+=@/*-]+$")
_OPTION = re.compile(r"^[A-Za-z][A-Za-z_]*$")
_OWN_OUTPUT = ("o", "e", "j")


def _word(value: object, field: str) -> str:
    """One qsub argument that a ``#$`` line carries as it is: letters, digits and _ . , : + = @ / * -."""
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(text, str) or not _WORD.match(text):
        raise ConfigError(f"{value!r} is not a valid value here: use letters, digits and _ . , : + = @ / * - "
                          "(no spaces or quotes)", field)
    return text


def _positive(value: object, field: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"must be a whole number >= 1, got {value!r}", field)
    return value


def sge_options(spec: ResourceSpec, pe: str = "smp", gpu_resource: str = "gpu") -> list[list[str]]:
    """``spec`` as qsub options, one list per option (``["-l", "h_rt=2:00:00,h_vmem=4096M"]``,
    ``["-pe", "smp", "4"]``); ConfigError names the first bad field.

    ``walltime`` is ``h_rt``; ``cpus`` slots of the parallel environment ``pe``; ``mem`` the job's
    memory, as ``h_vmem`` per slot (Grid Engine multiplies it by the slots); ``gpus`` the consumable
    ``gpu_resource``; ``partition`` the queue (``-q``); ``account`` ``-A``.  Grid Engine has no QOS,
    node features or GPU types: those are refused with the way to say them (``extra``: ``{"l":
    "arch=lx-amd64"}``, ``{"P": "project"}``; a value of '' or None is a flag)."""
    for field, hint in (("qos", "Grid Engine has no QOS; a project is extra={'P': 'name'}"),
                        ("constraint", "Grid Engine has no node features; ask for a resource: "
                                       "extra={'l': 'name=value'}"),
                        ("gpu_type", "Grid Engine has no GPU types; ask for your site's resource: "
                                     "extra={'l': 'gpu_type=a100'} or gpu_resource=")):
        if getattr(spec, field) is not None:
            raise ConfigError(f"is not used by Grid Engine: {hint}", field)
    if spec.srun:
        raise ConfigError("is Slurm's: Grid Engine starts the program itself (cpus= gives it slots with -pe)", "srun")
    requests: list[str] = []
    options: list[list[str]] = []
    if spec.partition is not None:
        options.append(["-q", _word(spec.partition, "partition")])
    seconds = walltime_seconds(spec.walltime) if spec.walltime is not None else None
    if seconds is not None:
        requests.append(f"h_rt={hms(seconds)}")
    slots = _positive(spec.cpus, "cpus") if spec.cpus is not None else None
    if spec.mem is not None:
        requests.append(f"h_vmem={-(-memory_mib(spec.mem) // (slots or 1))}M")
    if spec.gpus is not None:
        requests.append(f"{_word(gpu_resource, 'gpu_resource')}={_positive(spec.gpus, 'gpus')}")
    if requests:
        options.append(["-l", ",".join(requests)])
    if slots is not None:
        options.append(["-pe", _word(pe, "pe"), str(slots)])
    if spec.account is not None:
        options.append(["-A", _word(spec.account, "account")])
    for key, value in dict(spec.extra).items():
        if not isinstance(key, str) or not _OPTION.match(key):
            raise ConfigError(f"{key!r} is not a qsub option: give its name without the dash, like 'l' or 'P'",
                              "extra")
        words = [] if value in ("", None) else str(value).split()
        options.append([f"-{key}", *(_word(w, f"extra.{key}") for w in words)])
    for module in spec.modules:
        _word(module, "modules")
    return options


def sge_lines(spec: ResourceSpec, pe: str = "smp", gpu_resource: str = "gpu") -> list[str]:
    """``spec`` as ``#$`` lines of a job script (see :func:`sge_options`)."""
    return ["#$ " + " ".join(option) for option in sge_options(spec, pe, gpu_resource)]


@with_options
class SGEComputeSource(BatchSchedulerSource):
    """A Grid Engine cluster, driven from its login node (this machine, or ``login``: an SSH source).

    Tasks go to Grid Engine as array jobs (``qsub -t 1-N -tc SLOTS``), one per ``max_aj_tasks``
    chunk, throttled to ``max_parallel_jobs`` running at once: Grid Engine paces them.  One ``qstat
    -xml`` per poll for every task; one ``qdel`` per moment of cancels (a whole array by its id).
    ``resources`` become ``#$`` lines (:func:`sge_options`: ``queue``, ``pe`` and ``gpu_resource``
    name your site's queue, parallel environment and GPU resource); checked by ``qsub -w v`` at setup.
    ``sge_env`` is added to the commands' environment (``SGE_ROOT``, ``SGE_CELL``).  Jobs get the
    submitting environment (``-V``) and are rerunnable (``-r y``): a task Grid Engine reruns
    (``qmod -rj``, a node lost) runs again unless it had ended by itself, its earlier run's logs kept in
    ``run1/``.  Pending reasons (``qstat -j``) are read when tasks start waiting and every
    ``reason_interval`` seconds while they wait.  Other arguments as :class:`SlurmComputeSource`.
    """

    source_type = "sge"
    poll_interval = 2.0
    job_options = ("python", "env", "tags", "environment", "command", "python_path", "script_path",
                   "project_dir", "arg_style")
    scheduler = "SGE"
    submit_command, status_command, cancel_command = "qsub", "qstat", "qdel"
    states = SGE_STATES
    default_array_size = 75000  # max_aj_tasks' default
    task_separator, first_task, task_tracker = ".", 1, SGETasks

    def __init__(self, name: str = "sge", max_parallel_jobs: int = 500, *, queue: str | None = None,
                 resources: ResourceSpec | None = None, pe: str = "smp", gpu_resource: str = "gpu",
                 array: bool = True, array_throttle: int | None = None, sge_env: dict[str, str] | None = None,
                 poll_interval: float = 2.0, max_queued: int | None = None, reason_interval: float = 30.0,
                 login: Any | None = None, **options: Any):
        spec = resources or ResourceSpec()
        self.pe, self.gpu_resource, self.reason_interval = pe, gpu_resource, reason_interval
        super().__init__(name, "sge", max_parallel_jobs,
                         resources=dataclasses.replace(spec, partition=queue) if queue else spec,
                         array=array, array_throttle=array_throttle, max_queued=max_queued,
                         scheduler_env=sge_env, poll_interval=poll_interval, login=login,
                         options=JobOptions.from_kwargs(type(self), self.job_options, options))
        self._asked: set[str] = set()
        self._reasons: tuple[set[str], float, dict[str, str], dict[str, str]] = (set(), 0.0, {}, {})

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "sge_env": self.scheduler_env, "pe": self.pe,
                "gpu_resource": self.gpu_resource, "reason_interval": self.reason_interval}

    # -- the declarations ---------------------------------------------------------------
    def directives(self, spec: ResourceSpec) -> list[str]:
        return sge_lines(spec, self.pe, self.gpu_resource)

    def render_array(self, name: str, manifest: str) -> str:
        # Grid Engine's own output for the task (-o below) is hard-linked into the task folder
        link = [f'ln -f {shlex.quote(self.slurm_dir)}/"$JOB_ID.$SGE_TASK_ID".out {shlex.quote(self.tasks_dir)}/"$job"/'
                f'{NAMES.scheduler} 2>/dev/null || true'] if self._own_output else []
        # a rerun (qmod -rj, a lost node: RESTARTED=1) is a requeue: the wrapper runs it again unless it ended
        rerun = '[ "${RESTARTED:-0}" = 0 ] || export SLURM_RESTART_COUNT="$RESTARTED"'
        return array_script([f"#$ -N {re.sub(r'[^A-Za-z0-9_.-]', '_', name)}", *self.directives(self.resources)],
                            manifest, self.tasks_dir, "${JOB_ID}.${SGE_TASK_ID}", "SGE_TASK_ID", [*link, rerun],
                            first=1)

    @property
    def _own_output(self) -> bool:
        return not any(key in self.resources.extra for key in _OWN_OUTPUT)

    def submit_argv(self, script: str, n: int, throttle: int | None) -> list[str]:
        output = ["-o", f"{self.slurm_dir}/$JOB_ID.$TASK_ID.out", "-j", "y"] if self._own_output else []
        return ["qsub", "-terse", "-t", f"1-{n}", *(["-tc", str(throttle)] if throttle else []), "-S", "/bin/sh",
                "-V", "-r", "y", *output, script]

    def parse_submitted(self, stdout: str) -> str:
        return stdout.strip().split(".")[0]  # "12.1-200:1"

    def status_argv(self, arrays: list[str]) -> list[str]:
        self._asked = set(arrays)
        return ["qstat", "-xml"]  # every job of the user: qstat lists no job ids

    def parse_status(self, stdout: str) -> dict[str, tuple[str, str]]:
        return parse_qstat(stdout, self._asked)

    async def _status(self, job_ids: list[str]) -> dict[str, tuple[str, str]]:
        """qstat's records, with the reason each waiting array waits and each held task's error."""
        seen = await super()._status(job_ids)
        waiting = {key.split(".")[0] for key, (word, _) in seen.items()
                   if SGE_STATES.get(word) in (JobState.QUEUED, JobState.FAILED)}
        asked, at, reasons, errors = self._reasons
        held = any(SGE_STATES.get(word) == JobState.FAILED for word, _ in seen.values())
        if waiting and (held or waiting - asked or time.monotonic() - at >= self.reason_interval):
            result = await self._run("other", ["qstat", "-j", ",".join(sorted(waiting)), "-xml"], check=False)
            reasons, errors = parse_reasons(result.stdout) if result.exit_code == 0 else ({}, {})
            self._reasons = (waiting, time.monotonic(), reasons, errors)
        return {key: (word, errors.get(key) or reasons.get(key.split(".")[0], "")) for key, (word, _) in seen.items()}

    async def poll(self, job_ids: list[str]) -> dict[str, JobState]:
        states = await super().poll(job_ids)
        held = [j for j, state in states.items() if state == JobState.FAILED
                and SGE_STATES.get(self.tasks.slurm_state.get(j, "")) == JobState.FAILED]
        if held:  # in state E until someone clears it: failed, in words, and removed
            await self.cancel_jobs(held)
        return states

    async def vanished(self, job_ids: list[str]) -> dict[str, tuple[str, str]]:
        """Tasks gone without an exit code that this controller did not cancel: their ``qacct``
        records (one call per array) say how they ended."""
        assert isinstance(self.tasks, SGETasks)
        out: dict[str, tuple[str, str]] = {}
        ask = [j for j in job_ids if not self.tasks.cancelled_here(j)]
        for array in sorted({self.array_of(j) for j in ask}):
            result = await self._run("other", ["qacct", "-j", array], check=False)
            message = " ".join((result.stderr or result.stdout).split())
            records = parse_qacct(result.stdout) if result.exit_code == 0 else {}
            problem = "" if result.exit_code == 0 or "not found" in message else message
            for job_id in (j for j in ask if self.array_of(j) == array):
                record = self.tasks.accounted(job_id, records.get(job_id.split(".")[1]), problem)
                if record is not None:
                    out[job_id] = record
        return out

    async def cancel_jobs(self, job_ids: list[str]) -> dict[str, bool]:
        """One qdel; a task Grid Engine no longer knows ("does not exist") has nothing left to cancel."""
        result = await self._run("qdel", ["qdel", *self.tasks.cancel_names(job_ids)], check=False)
        lines = [line for line in (result.stdout + result.stderr).splitlines() if "denied" in line]
        ok = result.exit_code == 0 or all("does not exist" in line for line in lines)
        return {job_id: ok for job_id in job_ids}

    async def probe(self) -> None:
        """Every resource option checked by Grid Engine itself (``qsub -w v`` queues nothing), then
        ``max_aj_tasks`` from the global configuration."""
        argv = [arg for option in sge_options(self.resources, self.pe, self.gpu_resource) for arg in option]
        try:
            test = await self._run("other", ["qsub", "-w", "v", "-b", "y", *argv, "true"], check=False)
        except OSError as exc:
            raise SourceError(f"cannot run qsub here ({exc}); is this a login node with qsub on PATH?",
                              self.name) from None
        message = " ".join((test.stderr + " " + test.stdout).split())
        if test.exit_code != 0 or "no suitable queue" in message:
            if test.exit_code == 127 or "commlib error" in message or "unable to contact" in message:
                raise SourceError(f"cannot talk to Grid Engine here ({message}); is this a login node of the "
                                  "cluster, with SGE_ROOT set (sge_env=)?", self.name)
            raise SourceError(f"Grid Engine refuses these resources: {message}", self.name)
        config = await self._run("other", ["qconf", "-sconf"], check=False)
        for line in config.stdout.splitlines():
            key, _, value = line.partition(" ")
            if key == "max_aj_tasks" and value.strip().isdigit() and int(value) > 0:
                self.max_array_size = int(value)

    async def health_check(self) -> dict[str, Any]:
        """One ``qstat -g c``: slots of the queue (every queue without one) in use, free, and in a state
        that runs nothing (disabled, unknown: its execution host down, alarm)."""
        try:
            out = (await self._run("other", ["qstat", "-g", "c", "-xml"])).stdout
            queues = {q.findtext("name"): {k: int(q.findtext(k) or 0) for k in
                                           ("used", "available", "total", "temp_disabled", "manual_intervention")}
                      for q in ET.fromstring(out).iter("cluster_queue_summary")}
        except (CommandError, ET.ParseError) as exc:
            return {"status": "unhealthy", "reason": f"Grid Engine does not answer: {exc}",
                    "slots": self.max_parallel_jobs}
        if self.resources.partition:
            queues = {k: v for k, v in queues.items() if k == self.resources.partition}
        total = {k: sum(q[k] for q in queues.values()) for k in
                 ("used", "available", "total", "temp_disabled", "manual_intervention")}
        status, reason = "healthy", None
        if total["used"] + total["available"] == 0:
            status, reason = "unhealthy", f"no usable slot in {sorted(map(str, queues)) or 'any queue'}: {total}"
        elif total["temp_disabled"] or total["manual_intervention"]:
            status, reason = "degraded", f"slots out of service: {total}"
        return {"status": status, "reason": reason, "slots": self.max_parallel_jobs, "queues": total,
                "max_array_size": self.max_array_size}


__all__ = ["SGEComputeSource", "sge_options", "sge_lines"]
