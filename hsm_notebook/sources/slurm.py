"""``SlurmComputeSource``: a sweep's tasks as Slurm array jobs, with real sbatch/squeue/scancel.

Slurm declared over the batch-scheduler base (``sources/batch.py``, which owns batching,
chunking, polling, cancels, the task folders and the login side): its commands, its state words
(``slurm_tasks.SLURM_STATES``), squeue's records, ``#SBATCH`` lines (``slurm_script``), and what
setup asks the cluster (``MaxArraySize``, ``sbatch --test-only``) and a health check reads
(``sinfo``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from ..core.base import registry
from ..core.model.errors import CommandError, SourceError
from ..core.model.state import ResourceSpec
from ..core.spec.options import JobOptions, with_options
from .batch import BatchSchedulerSource, array_script
from .slurm_script import SLURM_OUT, output_lines, sbatch_lines, sbatch_options
from .slurm_tasks import SLURM_STATES, SQUEUE_FORMAT, SlurmTasks, parse_squeue, state_of  # noqa: F401 - re-exported


@with_options
class SlurmComputeSource(BatchSchedulerSource):
    """A Slurm cluster, driven from its login node (this machine, or ``login``: an SSH source).

    ``resources`` is rendered to ``#SBATCH`` lines (checked before any submission).  Tasks
    go to Slurm as array jobs, one per ``MaxArraySize`` chunk, each throttled to
    ``max_parallel_jobs`` running at once (``--array=0-199%50``): Slurm paces them, not the
    controller.  ``max_queued`` caps how many tasks are handed to Slurm at once (default: one
    ``MaxArraySize`` chunk; lower it to leave tasks for the other sources of a sweep);
    ``array_throttle`` lowers the throttle further; ``array=False`` submits one job per task
    (then ``max_parallel_jobs`` is also the number submitted).  ``poll_interval`` is how often
    ``squeue`` runs for this cluster, whatever the sweep's interval (busy clusters ask for 30-60 s).
    ``slurm_env`` is added to the environment of the Slurm commands (e.g. ``SLURM_CONF``).
    ``resources.srun`` starts the program with ``srun`` (one copy per task of ``--ntasks``).

    The job options (``core.options.JobOptions``: ``environment``, ``python``, ``env``, ``tags``,
    ``command``...) are those of every source; ``environment`` is set up in each task after the
    ``modules`` and ``pre_script`` of ``resources``, and checked once at setup on the login node.
    """

    source_type = "slurm"
    poll_interval = 2.0
    job_options = ("python", "env", "tags", "environment", "command", "python_path", "script_path",
                   "project_dir", "arg_style")
    scheduler = "Slurm"
    submit_command, status_command, cancel_command = "sbatch", "squeue", "scancel"
    states = SLURM_STATES
    purged_words = ("Invalid job id",)  # ids purged after MinJobAge: none listed
    default_array_size = 1001

    def __init__(self, name: str = "slurm", max_parallel_jobs: int = 500, *, partition: str | None = None,
                 resources: ResourceSpec | None = None, array: bool = True, array_throttle: int | None = None,
                 slurm_env: dict[str, str] | None = None, poll_interval: float = 2.0,
                 max_queued: int | None = None, login: Any | None = None, **options: Any):
        spec = resources or ResourceSpec()
        super().__init__(name, "slurm", max_parallel_jobs,
                         resources=dataclasses.replace(spec, partition=partition) if partition else spec,
                         array=array, array_throttle=array_throttle, max_queued=max_queued, scheduler_env=slurm_env,
                         poll_interval=poll_interval, login=login,
                         options=JobOptions.from_kwargs(type(self), self.job_options, options))

    @property
    def slurm_env(self) -> dict[str, str]:
        return self.scheduler_env

    def describe(self) -> dict[str, Any]:
        r = dataclasses.asdict(self.resources)
        r["modules"] = list(r["modules"])
        r["extra"] = dict(r["extra"])
        return {**super().describe(), "resources": r, "array": self.array, "array_throttle": self.array_throttle,
                "slurm_env": self.slurm_env, "poll_interval": self.poll_interval, "max_queued": self.max_queued,
                "login": self.login.describe() if self.login else None}

    @classmethod
    def from_description(cls, description: Mapping[str, Any]) -> SlurmComputeSource:
        """Rebuild from ``describe()`` (used by ``Sweep.attach``): the resources and the login
        node's SSH source are records of their own."""
        d = {k: v for k, v in description.items() if k not in registry.BOOKKEEPING}
        r = dict(d.pop("resources", None) or {})
        if d.get("login"):
            d["login"] = registry.rebuild(d["login"])
        r["modules"] = tuple(r.get("modules") or ())
        r["extra"] = dict(r.get("extra") or {})
        return cls(resources=ResourceSpec(**r), **d)

    # -- the declarations ---------------------------------------------------------------
    def directives(self, spec: ResourceSpec) -> list[str]:
        return sbatch_lines(spec)

    def render_array(self, name: str, manifest: str) -> str:
        header, link = output_lines(self.resources, name, self.tasks_dir, self.slurm_dir)
        return array_script([*header, *sbatch_lines(self.resources)], manifest, self.tasks_dir,
                            "${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}", "SLURM_ARRAY_TASK_ID", link)

    def submit_argv(self, script: str, n: int, throttle: int | None) -> list[str]:
        return ["sbatch", "--parsable", f"--array=0-{n - 1}{f'%{throttle}' if throttle else ''}", script]

    def status_argv(self, arrays: list[str]) -> list[str]:
        return ["squeue", "-h", "-r", "-t", "all", "-o", SQUEUE_FORMAT, "-j", ",".join(arrays)]

    def parse_status(self, stdout: str) -> dict[str, tuple[str, str]]:
        return parse_squeue(stdout)

    async def probe(self) -> None:
        """``MaxArraySize`` from ``scontrol show config``; every resource option checked by Slurm itself
        (``sbatch --test-only`` queues nothing)."""
        try:
            config = (await self._run("other", ["scontrol", "show", "config"])).stdout
        except (CommandError, OSError) as exc:
            raise SourceError(f"cannot talk to Slurm here ({exc}); is this a login node with sbatch on PATH?",
                              self.name) from None
        for line in config.splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "MaxArraySize" and value.strip().isdigit():
                self.max_array_size = int(value.strip())
        test = await self._run("other", ["sbatch", "--test-only", *sbatch_options(self.resources), "--wrap", "true"],
                               check=False)
        if test.exit_code != 0:
            message = " ".join((test.stderr or test.stdout).split())
            raise SourceError(f"Slurm refuses these resources: {message}", self.name)

    async def health_check(self) -> dict[str, Any]:
        part = ["-p", self.resources.partition] if self.resources.partition else []
        try:
            nodes = (await self._run("other", ["sinfo", "-h", *part, "-o", "%a|%D|%t"])).stdout.splitlines()
            queue = (await self._run("squeue", ["squeue", "-h", *part, "-o", "%i"])).stdout.split()
        except CommandError as exc:
            return {"status": "unhealthy", "reason": f"Slurm does not answer: {exc}", "slots": self.max_parallel_jobs}
        counts: dict[str, int] = {}
        up = True
        for line in nodes:
            avail, n, state = (line.split("|") + ["", "", ""])[:3]
            counts[state] = counts.get(state, 0) + int(n or 0)
            up = up and avail == "up"
        down = sum(n for s, n in counts.items() if s.startswith(("down", "drain", "fail")) or s.endswith("*"))
        usable = sum(counts.values()) - down
        status, reason = "healthy", None
        if not up or usable == 0:
            status, reason = "unhealthy", f"partition {'down' if not up else 'has no usable node'}: {counts}"
        elif down:
            status, reason = "degraded", f"{down} node(s) down: {counts}"
        return {"status": status, "reason": reason, "slots": self.max_parallel_jobs, "nodes": counts,
                "queue_length": len(queue), "max_array_size": self.max_array_size}


__all__ = ["SlurmComputeSource", "SLURM_OUT", "SLURM_STATES", "SlurmTasks"]
