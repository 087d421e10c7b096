"""Slurm job scripts as pure functions: ResourceSpec -> ``#SBATCH`` lines -> array script.

Every field is checked here, before anything is submitted, with a message that names it.
"""

from __future__ import annotations

import re
import shlex
from typing import Sequence

from ..core.errors import ConfigError
from ..core.state import ResourceSpec

_WALLTIME = re.compile(r"^(\d+-)?\d{1,2}(:\d{2}){0,2}$|^\d+$")
_MEM = re.compile(r"^\d+[KMGT]?$")
_WORD = re.compile(r"^[A-Za-z0-9_.,:+=@/-]+$")
_OPTION = re.compile(r"^[a-z][a-z0-9-]*$")


def _word(value: str, field: str) -> str:
    if not isinstance(value, str) or not _WORD.match(value):
        raise ConfigError(f"{value!r} is not a valid Slurm value (letters, digits, _ . , : + = @ / -)", field)
    return value


def _positive(value: int, field: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"must be a whole number >= 1, got {value!r}", field)
    return value


def sbatch_lines(spec: ResourceSpec) -> list[str]:
    """``#SBATCH`` lines for ``spec``; ConfigError names the first bad field."""
    lines = []
    if spec.partition is not None:
        lines.append(f"--partition={_word(spec.partition, 'partition')}")
    if spec.walltime is not None:
        if not isinstance(spec.walltime, str) or not _WALLTIME.match(spec.walltime):
            raise ConfigError(f"{spec.walltime!r} is not a Slurm time: use MM, HH:MM:SS or D-HH:MM:SS", "walltime")
        lines.append(f"--time={spec.walltime}")
    if spec.cpus is not None:
        lines.append(f"--cpus-per-task={_positive(spec.cpus, 'cpus')}")
    if spec.mem is not None:
        if not isinstance(spec.mem, str) or not _MEM.match(spec.mem):
            raise ConfigError(f"{spec.mem!r} is not a Slurm memory size: use e.g. 500M, 4G", "mem")
        lines.append(f"--mem={spec.mem}")
    if spec.gpus is not None:
        n = _positive(spec.gpus, "gpus")
        kind = f"{_word(spec.gpu_type, 'gpu_type')}:" if spec.gpu_type else ""
        lines.append(f"--gres=gpu:{kind}{n}")
    elif spec.gpu_type is not None:
        raise ConfigError("is set but gpus is not; give gpus=N too", "gpu_type")
    for field in ("account", "qos", "constraint"):
        value = getattr(spec, field)
        if value is not None:
            lines.append(f"--{field}={_word(value, field)}")
    for key, value in dict(spec.extra).items():
        if not _OPTION.match(key):
            raise ConfigError(f"{key!r} is not an sbatch option name (like 'exclusive' or 'mail-type')", "extra")
        lines.append(f"--{key}" if value in ("", None) else f"--{key}={_word(str(value), f'extra.{key}')}")
    for module in spec.modules:
        _word(module, "modules")
    return [f"#SBATCH {line}" for line in lines]


def array_script(spec: ResourceSpec, name: str, manifest: str, tasks_dir: str) -> str:
    """The batch script of one array chunk: task ``i`` runs the ``run.sh`` of the job named on
    line ``i + 1`` of ``manifest`` (each job's own argv and environment live there; ``spec``'s
    ``modules`` and ``pre_script`` run inside each job, in the source's environment script)."""
    body = [
        "#!/bin/bash",
        f"#SBATCH --job-name={_word(name, 'name')}",
        "#SBATCH --output=/dev/null",
        "#SBATCH --error=/dev/null",
        *sbatch_lines(spec),
        f'job=$(sed -n "$((SLURM_ARRAY_TASK_ID + 1))p" {shlex.quote(manifest)})',
        # before the wrapper claims the job: a controller re-adopting it finds its id here
        f'echo "${{SLURM_ARRAY_JOB_ID}}_${{SLURM_ARRAY_TASK_ID}}" > {shlex.quote(tasks_dir)}/"$job"/slurm_id',
        f'exec /bin/sh {shlex.quote(tasks_dir)}/"$job"/run.sh',
        "",
    ]
    return "\n".join(body)


def run_script(workdir: str, env: dict[str, str], argv: Sequence[str], job_dir: str, wrapper: str) -> str:
    """One job's launcher: its environment, its folder, the contract's wrapper around its argv."""
    exports = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items())
    return (f"cd {shlex.quote(workdir)} || exit 1\n{exports}"
            f"exec /bin/sh -c {shlex.quote(wrapper)} hsm-job {shlex.quote(job_dir)} {shlex.join(list(argv))}\n")
