"""Slurm job scripts as pure functions: ResourceSpec -> sbatch options -> array script.

Every field is checked here, before anything is submitted, with a message that names it.  The
checks refuse only what Slurm itself refuses (its documented time, memory and signal syntax) or
what would break the script (control characters, an empty value that makes sbatch swallow the
next argument); anything else Slurm judges at ``sbatch --test-only``.

One list of ``(option, value)`` pairs feeds both renderings: :func:`sbatch_options` (argv for the
sbatch command line, nothing quoted) and :func:`sbatch_lines` (``#SBATCH`` lines, quoted for
Slurm's own parser, which is not a shell: ``'`` and ``"`` group, a backslash escapes the next
character, an unquoted ``#`` ends the line; measured on Slurm 22.05).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence

from ..core.model.errors import ConfigError
from ..core.model.state import ResourceSpec
from ..core.spec.jobpaths import NAMES
from . import batch

#: The file in each task folder that holds Slurm's own output for that task (time-limit kills, OOM).
SLURM_OUT = NAMES.scheduler

# Slurm's documented forms: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S; UNLIMITED/INFINITE; 0 = no limit
_WALLTIME = re.compile(r"^(\d+-)?\d+(:\d+){0,2}$|^(?i:unlimited|infinite)$")
_MEM = re.compile(r"^\d+(?i:[KMGT]B?)?$")  # sbatch takes 4G, 4GB, 4gb; not 4.5G or 4GiB
_SIGNAL = re.compile(r"^(?:(?P<flags>R|B|RB|BR):)?(?P<sig>\d+|(?:SIG)?(?:HUP|INT|QUIT|ABRT|KILL|ALRM|TERM"
                     r"|USR1|USR2|URG|CONT|STOP|TSTP|TTIN|TTOU|XCPU))(?:@(?P<time>\d+))?$", re.I)
_WORD = re.compile(r"^[A-Za-z0-9_.,:+=@/-]+$")
_OPTION = re.compile(r"^[a-z][a-z0-9-]*$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_NEEDS_QUOTES = re.compile(r"[\s\"'\\#]")
_OWN_OUTPUT = ("output", "error")

#: sbatch options whose argument is required (``sbatch --help``, 22.05): given empty, sbatch
#: would take the next word of its command line as the value, or refuse the script.
_NEEDS_VALUE = frozenset("""
    account array bb bbf begin chdir cluster-constraint clusters comment constraint core-spec
    cores-per-socket cpu-freq cpus-per-gpu cpus-per-task deadline delay-boot dependency distribution
    error exclude export-file extra-node-info gid gpu-bind gpu-freq gpus gpus-per-node gpus-per-socket
    gpus-per-task gres gres-flags input job-name licenses mail-type mail-user mcs-label mem mem-per-cpu
    mem-per-gpu mincpus nodefile nodelist nodes ntasks ntasks-per-core ntasks-per-node ntasks-per-socket
    open-mode output partition power priority profile qos reservation signal sockets-per-node switches
    thread-spec threads-per-core time time-min tmp uid wckey
""".split())


def _text(value: object, field: str) -> str:
    """``value`` as one Slurm argument: a non-empty string (or a whole number) on one line."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise ConfigError(f"{value!r} is not text: give a string like '4' or 'END'", field)
    if not value:
        raise ConfigError("needs a value: give one, or leave the field out (None)", field)
    if _CONTROL.search(value):
        raise ConfigError(f"{value!r} holds a control character (a tab, NUL or line break): "
                          "write it on one line without them", field)
    return value


def _name(value: object, field: str) -> str:
    """A Slurm name (partition, account, qos): Slurm's names never hold spaces."""
    text = _text(value, field)
    if re.search(r"\s", text):
        raise ConfigError(f"{text!r} holds a space, and Slurm names never do: give the name "
                          "(several partitions: 'gpu,cpu')", field)
    return text


def _word(value: object, field: str) -> str:
    """A value that other syntax is built around (a gres type, a module): letters, digits, _ . , : + = @ / -."""
    if not isinstance(value, str) or not _WORD.match(value):
        raise ConfigError(f"{value!r} is not a valid value: use letters, digits and _ . , : + = @ / -", field)
    return value


def _positive(value: object, field: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"must be a whole number >= 1, got {value!r}", field)
    return value


_SYNTAX = {
    "walltime": (_WALLTIME, "a Slurm time: use MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS "
                            "(e.g. '90', '2:00:00', '1-00:00') or UNLIMITED"),
    "mem": (_MEM, "a Slurm memory size: use a whole number with K, M, G or T (e.g. '500M', '4G', '4GB'; "
                  "megabytes without a unit)"),
}


def _syntax(value: object, field: str) -> str:
    """``value`` if it matches the Slurm syntax of ``field`` (walltime, mem)."""
    text = _text(value, field)
    pattern, what = _SYNTAX[field]
    if not pattern.match(text):
        raise ConfigError(f"{text!r} is not {what}", field)
    return text


def _signal(value: str, srun: bool, field: str) -> str:
    """Checks ``[R|B:]SIGNAL[@SECONDS]`` and, unless the program runs under srun, adds ``B:``:
    without it Slurm signals only job steps, and our wrapper in the batch shell (which forwards
    the signal to the program) would never hear it."""
    m = _SIGNAL.match(value)
    number = int(m["sig"]) if m and m["sig"].isdigit() else 1
    if not m or not 1 <= number <= 0xFFFF or int(m["time"] or 0) > 0xFFFF:  # Slurm's limits
        raise ConfigError(f"{value!r} is not a Slurm signal spec: use [R|B:]SIGNAL[@SECONDS] with a signal "
                          "name (USR1, TERM, ...) or number, e.g. 'USR1@120' or 'B:USR1@120'", field)
    flags = (m["flags"] or "").upper()
    if srun or "B" in flags:
        return value
    return f"{flags}B:{value.split(':', 1)[1]}" if flags else f"B:{value}"


def _extra(extra: Mapping[str, object], srun: bool) -> list[tuple[str, str | None]]:
    """The user's own sbatch options: a value of '' or None renders a flag (``--exclusive``)."""
    options: list[tuple[str, str | None]] = []
    for key, value in dict(extra).items():
        if not isinstance(key, str) or not _OPTION.match(key):
            raise ConfigError(f"{key!r} is not an sbatch option name: give the long name without dashes, "
                              "like 'mail-type' or 'exclusive'", "extra")
        field = f"extra.{key}"
        if value in ("", None) and key not in _NEEDS_VALUE:
            options.append((key, None))
            continue
        text = _text(value, field)
        options.append((key, _signal(text, srun, field) if key == "signal" else text))
    return options


def _options(spec: ResourceSpec) -> list[tuple[str, str | None]]:
    """``spec`` as checked ``(option, value)`` pairs, in a fixed order; ConfigError names the first bad field."""
    if not isinstance(spec.srun, bool):
        raise ConfigError(f"must be True or False, got {spec.srun!r}", "srun")
    options: list[tuple[str, str | None]] = []
    if spec.partition is not None:
        options.append(("partition", _name(spec.partition, "partition")))
    if spec.walltime is not None:
        options.append(("time", _syntax(spec.walltime, "walltime")))
    if spec.cpus is not None:
        options.append(("cpus-per-task", str(_positive(spec.cpus, "cpus"))))
    if spec.mem is not None:
        options.append(("mem", _syntax(spec.mem, "mem")))
    if spec.gpus is not None:
        kind = f"{_word(spec.gpu_type, 'gpu_type')}:" if spec.gpu_type else ""
        options.append(("gres", f"gpu:{kind}{_positive(spec.gpus, 'gpus')}"))
    elif spec.gpu_type is not None:
        raise ConfigError("is set but gpus is not; give gpus=N too", "gpu_type")
    for field in ("account", "qos"):
        if getattr(spec, field) is not None:
            options.append((field, _name(getattr(spec, field), field)))
    if spec.constraint is not None:  # a100|h100, intel&ib, [rack1|rack2]: Slurm judges the expression
        options.append(("constraint", _text(spec.constraint, "constraint")))
    options += _extra(spec.extra, spec.srun)
    for module in spec.modules:
        _word(module, "modules")
    return options


def _sbatch_quoted(value: str) -> str:
    """``value`` as Slurm's ``#SBATCH`` parser reads it back: bare when it can, else in double
    quotes with ``\\`` and ``"`` escaped (``$``, ``'`` and ``#`` inside quotes are kept as they are)."""
    if not _NEEDS_QUOTES.search(value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _argv(options: list[tuple[str, str | None]]) -> list[str]:
    return [f"--{key}" if value is None else f"--{key}={value}" for key, value in options]


def _lines(options: list[tuple[str, str | None]]) -> list[str]:
    return [f"#SBATCH --{key}" if value is None else f"#SBATCH --{key}={_sbatch_quoted(value)}"
            for key, value in options]


def sbatch_options(spec: ResourceSpec) -> list[str]:
    """``spec`` as sbatch command-line arguments (``--comment=lr sweep``: one argv word each, no
    quoting), e.g. for ``sbatch --test-only``; ConfigError names the first bad field."""
    return _argv(_options(spec))


def sbatch_lines(spec: ResourceSpec) -> list[str]:
    """``spec`` as ``#SBATCH`` lines (``#SBATCH --comment="lr sweep"``) that Slurm reads back as
    exactly :func:`sbatch_options`; ConfigError names the first bad field."""
    return _lines(_options(spec))


def _slurm_dir(value: str) -> str:
    """The folder of Slurm's output files as an ``--output`` pattern: ``%`` doubled (Slurm's
    literal ``%``); a backslash is refused, since Slurm then expands no ``%A``/``%a`` at all."""
    text = _text(value, "slurm_dir")
    if "\\" in text:
        raise ConfigError(f"{text!r} holds a backslash, which turns off Slurm's file name patterns: "
                          "use a folder without one", "slurm_dir")
    return text.replace("%", "%%")


def output_lines(spec: ResourceSpec, name: str, tasks_dir: str, slurm_dir: str) -> tuple[list[str], list[str]]:
    """The chunk's own ``#SBATCH`` lines (job name; Slurm's output file unless the user chose one) and
    the line that hard-links that file into the task folder (none when the user chose one)."""
    own = not any(key in spec.extra for key in _OWN_OUTPUT)
    header: list[tuple[str, str | None]] = [("job-name", _text(name, "name"))]
    if own:
        header += [("output", f"{_slurm_dir(slurm_dir)}/%A_%a.out"), ("open-mode", "append")]
    link = (f'ln -f {shlex.quote(slurm_dir)}/"${{SLURM_ARRAY_JOB_ID}}_${{SLURM_ARRAY_TASK_ID}}".out '
            f'{shlex.quote(tasks_dir)}/"$job"/{SLURM_OUT} 2>/dev/null || true')
    return _lines(header), [link] if own else []


def array_script(spec: ResourceSpec, name: str, manifest: str, tasks_dir: str, slurm_dir: str) -> str:
    """The batch script of one array chunk: task ``i`` runs the ``run.sh`` of the job named on
    line ``i + 1`` of ``manifest`` (each job's own argv and environment live there; ``spec``'s
    ``modules`` and ``pre_script`` run inside each job, in the source's environment script).

    Slurm's own messages for a task (time limit, out of memory, cancelled) go to
    ``slurm_dir/ARRAYID_TASK.out``, appended to so that a requeued task keeps both runs, and
    the file is hard-linked into the task folder as :data:`SLURM_OUT` (a hard link: the folder
    may be fetched with tar, which would copy a symlink as a dangling one).  A user's own
    ``output`` or ``error`` in ``spec.extra`` replaces all of that."""
    header, link = output_lines(spec, name, tasks_dir, slurm_dir)
    return batch.array_script([*header, *sbatch_lines(spec)], manifest, tasks_dir,
                  "${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}", "SLURM_ARRAY_TASK_ID", link)


def run_script(workdir: str, env: dict[str, str], argv: Sequence[str], job_dir: str, wrapper: str) -> str:
    """One job's launcher (see ``sources.batch.run_script``)."""
    return batch.run_script(workdir, env, argv, job_dir, wrapper)
