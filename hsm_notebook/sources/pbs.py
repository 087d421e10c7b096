"""``PBSComputeSource``: a sweep's tasks as PBS array jobs, on PBS Pro / OpenPBS (``flavor="pro"``:
``qsub -J``, ``qstat -f -F json -x -t``) or Torque (``flavor="torque"``: ``qsub -t``, ``qstat -x -t``
XML), with ``qdel`` for both.

PBS declared over the batch-scheduler base (``sources/batch.py``): its commands per flavor, its state
letters and records (``pbs_tasks``), ``#PBS`` resource lines.  No PBS server can be installed where
this was written: it is tested against golden job scripts and the command outputs the PBS Pro and
Torque documentation records, through stand-in commands (``tests/test_pbs.py``), not a live server.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
from typing import Any

from ..core.model.errors import CommandError, ConfigError, SourceError
from ..core.model.state import ResourceSpec
from ..core.spec.options import JobOptions, with_options
from .batch import BatchSchedulerSource, array_script, hms, memory_mib, walltime_seconds
from .pbs_tasks import PBS_STATES, PBSTasks, parse_pro, parse_torque

FLAVORS = ("pro", "torque")
_WORD = re.compile(r"^[A-Za-z0-9_.,:+=@/-]+$")
_OPTION = re.compile(r"^[A-Za-z]$")


def _word(value: object, field: str) -> str:
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(text, str) or not _WORD.match(text):
        raise ConfigError(f"{value!r} is not a valid value here: use letters, digits and _ . , : + = @ / - "
                          "(no spaces or quotes)", field)
    return text


def _positive(value: object, field: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"must be a whole number >= 1, got {value!r}", field)
    return value


def pbs_options(spec: ResourceSpec, flavor: str = "pro") -> list[list[str]]:
    """``spec`` as qsub options, one list per option; ConfigError names the first bad field.

    PBS Pro asks for one chunk (``-l select=1:ncpus=4:mem=16384mb:ngpus=1``), Torque for one node
    (``-l nodes=1:ppn=4:gpus=1`` and ``-l mem=16384mb``); ``walltime`` is ``-l walltime`` (Slurm's forms,
    as everywhere), ``partition`` the queue (``-q``), ``account`` ``-A``.  QOS, node features and GPU
    types are refused with the way to say them (``extra``: one-letter options, e.g. ``{"W":
    "group_list=lab"}``, ``{"l": "place=excl"}``; a value of '' or None is a flag)."""
    if flavor not in FLAVORS:
        raise ConfigError(f"must be one of {FLAVORS} (PBS Pro / OpenPBS, or Torque), got {flavor!r}", "flavor")
    for field, hint in (("qos", "PBS has no QOS; give the queue (partition=)"),
                        ("constraint", "PBS has no node features here; ask for a resource: extra={'l': 'name=value'}"),
                        ("gpu_type", "PBS has no GPU types here; ask for your site's resource: extra={'l': ...}")):
        if getattr(spec, field) is not None:
            raise ConfigError(f"is not used by PBS: {hint}", field)
    if spec.srun:
        raise ConfigError("is Slurm's: PBS starts the program itself (use pbsdsh or mpiexec in the command)", "srun")
    options: list[list[str]] = []
    if spec.partition is not None:
        options.append(["-q", _word(spec.partition, "partition")])
    seconds = walltime_seconds(spec.walltime) if spec.walltime is not None else None
    if seconds is not None:
        options.append(["-l", f"walltime={hms(seconds)}"])
    cpus = _positive(spec.cpus, "cpus") if spec.cpus is not None else None
    mem = f"{memory_mib(spec.mem)}mb" if spec.mem is not None else None
    gpus = _positive(spec.gpus, "gpus") if spec.gpus is not None else None
    if flavor == "pro" and (cpus or mem or gpus):
        chunk = [f"ncpus={cpus or 1}", *([f"mem={mem}"] if mem else []), *([f"ngpus={gpus}"] if gpus else [])]
        options.append(["-l", "select=1:" + ":".join(chunk)])
    elif flavor == "torque":
        if cpus or gpus:
            options.append(["-l", f"nodes=1:ppn={cpus or 1}" + (f":gpus={gpus}" if gpus else "")])
        if mem:
            options.append(["-l", f"mem={mem}"])
    if spec.account is not None:
        options.append(["-A", _word(spec.account, "account")])
    for key, value in dict(spec.extra).items():
        if not isinstance(key, str) or not _OPTION.match(key):
            raise ConfigError(f"{key!r} is not a qsub option: give its letter without the dash, like 'W' or 'l'",
                              "extra")
        options.append([f"-{key}", *([] if value in ("", None) else [_word(value, f"extra.{key}")])])
    for module in spec.modules:
        _word(module, "modules")
    return options


@with_options
class PBSComputeSource(BatchSchedulerSource):
    """A PBS Pro / OpenPBS (``flavor="pro"``) or Torque (``flavor="torque"``) cluster, driven from its
    login node (this machine, or ``login``: an SSH source).

    Tasks go to PBS as array jobs (PBS Pro ``qsub -J 0-N-1 -W max_run_subjobs=SLOTS``, which needs
    PBS Pro 2021.1 / OpenPBS 20 or later; Torque ``qsub -t 0-N-1%SLOTS``), one per ``max_array_size``
    chunk; a single task is a plain job.  One ``qstat`` per poll (PBS Pro with ``-x``: finished subjobs
    stay listed where the server keeps job history), one ``qdel`` per moment of cancels.  ``resources``
    become ``#PBS`` lines (:func:`pbs_options`); jobs get the submitting environment (``-V``) and are
    rerunnable (``-r y``); a rerun task runs again unless it had ended by itself.  ``pbs_env`` is added
    to the commands' environment.  Other arguments as :class:`SlurmComputeSource`.

    Tested against recorded outputs, not a live server (see the module's docstring)."""

    source_type = "pbs"
    poll_interval = 2.0
    job_options = ("python", "env", "tags", "environment", "command", "python_path", "script_path",
                   "project_dir", "arg_style")
    scheduler = "PBS"
    submit_command, status_command, cancel_command = "qsub", "qstat", "qdel"
    states = PBS_STATES
    purged_words = ("Unknown Job Id",)  # finished and forgotten: the others it printed still count
    default_array_size = 10000  # PBS Pro's max_array_size default
    task_tracker = PBSTasks

    def __init__(self, name: str = "pbs", max_parallel_jobs: int = 500, *, flavor: str = "pro",
                 queue: str | None = None, resources: ResourceSpec | None = None, array: bool = True,
                 array_throttle: int | None = None, pbs_env: dict[str, str] | None = None, poll_interval: float = 2.0,
                 max_queued: int | None = None, login: Any | None = None, **options: Any):
        self.flavor = flavor
        spec = resources or ResourceSpec()
        super().__init__(name, "pbs", max_parallel_jobs,
                         resources=dataclasses.replace(spec, partition=queue) if queue else spec,
                         array=array, array_throttle=array_throttle, max_queued=max_queued, scheduler_env=pbs_env,
                         poll_interval=poll_interval, login=login,
                         options=JobOptions.from_kwargs(type(self), self.job_options, options))

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "flavor": self.flavor, "pbs_env": self.scheduler_env}

    # -- the declarations ---------------------------------------------------------------
    def task_id(self, array: str, index: int | str) -> str:
        return array.replace("[]", f"[{index}]") if "[]" in array else array

    def array_of(self, job_id: str) -> str:
        return re.sub(r"\[[^\]]*\]", "[]", job_id, count=1)

    def directives(self, spec: ResourceSpec) -> list[str]:
        return ["#PBS " + " ".join(option) for option in pbs_options(spec, self.flavor)]

    @property
    def _own_output(self) -> bool:
        return not any(key in self.resources.extra for key in ("o", "e", "j"))

    def render_array(self, name: str, manifest: str) -> str:
        index = "PBS_ARRAY_INDEX" if self.flavor == "pro" else "PBS_ARRAYID"  # unset for a plain job: task 0
        header = [f"#PBS -N {re.sub(r'[^A-Za-z0-9_.-]', '_', name)[:15]}", "#PBS -V", "#PBS -r y",
                  *(["#PBS -j oe"] if self._own_output else [])]
        return array_script([*header, *self.directives(self.resources)], manifest, self.tasks_dir, "${PBS_JOBID}",
                            index, [
                                # a second start of the task's folder is PBS rerunning it (a node lost, qrerun)
                                f'[ ! -s {shlex.quote(self.tasks_dir)}/"$job"/pid ] || export SLURM_RESTART_COUNT=1',
                            ])

    def submit_argv(self, script: str, n: int, throttle: int | None) -> list[str]:
        output = ["-o", f"{self.slurm_dir}/"] if self._own_output else []  # PBS names the files in it
        if n == 1:  # an array of one subjob is refused by some PBS Pro versions: a plain job
            return ["qsub", *output, script]
        if self.flavor == "pro":
            return ["qsub", "-J", f"0-{n - 1}", *(["-W", f"max_run_subjobs={throttle}"] if throttle else []),
                    *output, script]
        return ["qsub", "-t", f"0-{n - 1}{f'%{throttle}' if throttle else ''}", *output, script]

    def parse_submitted(self, stdout: str) -> str:
        return stdout.strip().splitlines()[-1].strip() if stdout.strip() else ""  # "123[].server"

    def status_argv(self, arrays: list[str]) -> list[str]:
        if self.flavor == "pro":
            return ["qstat", "-f", "-F", "json", "-x", "-t", *arrays]
        return ["qstat", "-x", "-t", *arrays]

    def parse_status(self, stdout: str) -> dict[str, tuple[str, str]]:
        return parse_pro(stdout) if self.flavor == "pro" else parse_torque(stdout)

    async def cancel_jobs(self, job_ids: list[str]) -> dict[str, bool]:
        """One qdel; a subjob PBS has finished or forgotten has nothing left to cancel."""
        result = await self._run("qdel", ["qdel", *self.tasks.cancel_names(job_ids)], check=False)
        lines = [line for line in (result.stderr + result.stdout).splitlines() if line.strip()]
        ok = result.exit_code == 0 or all("Unknown Job Id" in line or "finished" in line for line in lines)
        return {job_id: ok for job_id in job_ids}

    async def probe(self) -> None:
        """The server answers (``qstat -B``), and its array limit (``max_array_size``, Torque's
        ``max_job_array_size``).  PBS has no dry run: resources are checked by the first qsub."""
        argv = ["qstat", "-B", "-f", "-F", "json"] if self.flavor == "pro" else ["qstat", "-B", "-f"]
        try:
            result = await self._run("other", argv, check=False)
        except OSError as exc:
            raise SourceError(f"cannot run qstat here ({exc}); is this a login node with qstat on PATH?",
                              self.name) from None
        if result.exit_code != 0:
            message = " ".join((result.stderr or result.stdout).split())
            raise SourceError(f"cannot talk to the PBS server here ({message}); is this a login node of the "
                              "cluster (pbs_env= for PBS_SERVER)?", self.name)
        if self.flavor == "pro":
            try:
                servers = json.loads(result.stdout).get("Server") or {}
            except ValueError:
                servers = {}
            sizes = [int(s["max_array_size"]) for s in servers.values() if str(s.get("max_array_size", "")).isdigit()]
        else:
            sizes = [int(m[1]) for m in re.finditer(r"max_job_array_size = (\d+)", result.stdout)]
        if sizes:
            self.max_array_size = sizes[0]

    async def health_check(self) -> dict[str, Any]:
        """One ``qstat -Q``: the queue (or every queue) enabled and started."""
        try:
            out = (await self._run("other", ["qstat", "-Q", *([self.resources.partition]
                                                               if self.resources.partition else [])])).stdout
        except CommandError as exc:
            return {"status": "unhealthy", "reason": f"PBS does not answer: {exc}", "slots": self.max_parallel_jobs}
        lines = [line.split() for line in out.splitlines() if line.strip() and not line.startswith("-")]
        header = lines[0] if lines else []
        queues = {row[0]: (row[header.index("Ena")], row[header.index("Str")]) for row in lines[1:]
                  if "Ena" in header and "Str" in header and len(row) == len(header)}
        closed = sorted(q for q, (ena, started) in queues.items() if (ena, started) != ("yes", "yes"))
        status, reason = "healthy", None
        if not queues or len(closed) == len(queues):
            status, reason = "unhealthy", f"no queue enabled and started: {closed or out.strip()[:200]}"
        elif closed:
            status, reason = "degraded", f"queues not enabled or not started: {closed}"
        return {"status": status, "reason": reason, "slots": self.max_parallel_jobs, "max_array_size":
                self.max_array_size}


__all__ = ["PBSComputeSource", "pbs_options", "FLAVORS"]
