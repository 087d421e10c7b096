"""The job environment: what runs before a job's command on any source (conda, venv, modules,
shell lines, variables expanded on the target), rendered as one POSIX shell script.

``Environment`` is plain data; :func:`environment_script` renders it (a pure function, checked
against recorded text).  A source writes the script once per sweep (``env-<hash>.sh``, named by
its content) and runs each job as ``/bin/sh ENV_SCRIPT CMD ARG...`` under the contract's
wrapper: the wrapper, its pid claim and its exit code are unchanged, and the script ends with
``exec "$@"``.  A line that fails stops the script before the job: its stderr is passed on and
the last stderr line names it (``environment: conda activate x: EnvironmentNameNotFound ...``),
so the job ends FAILED with the cause.  At setup a source runs the same script once with a
probe (:func:`probe_command`) and refuses to start when it fails (:func:`probe_problem`).
Names follow the reference HSM (``conda_env``, ``modules``, ``pre_script``).
"""

from __future__ import annotations

import hashlib
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from ..model.errors import ConfigError

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MODULE = re.compile(r"^[A-Za-z0-9_.,:+=@/-]+$")
_REF = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")

#: Where a conda, mamba or micromamba is looked for when ``conda_exe`` is not given: what the
#: installers set (CONDA_EXE, MAMBA_EXE), PATH, then the usual install folders.
_CONDA_PLACES = (
    '"${CONDA_EXE:-}"', '"${MAMBA_EXE:-}"', '"$(command -v conda 2>/dev/null)"',
    '"$(command -v micromamba 2>/dev/null)"', '"$(command -v mamba 2>/dev/null)"',
    '"$HOME"/miniforge3/bin/conda', '"$HOME"/miniconda3/bin/conda', '"$HOME"/anaconda3/bin/conda',
    '"$HOME"/mambaforge/bin/conda', '"$HOME"/.local/bin/micromamba', '"$HOME"/micromamba/bin/micromamba',
    '"$HOME"/bin/micromamba', "/opt/conda/bin/conda", "/opt/miniforge3/bin/conda", "/usr/local/bin/micromamba",
)
#: Init scripts that define the ``module`` shell function (Lmod, Environment Modules), for
#: shells that did not read /etc/profile (a job is never a login shell).
_MODULE_INITS = (
    '"${LMOD_PKG:+$LMOD_PKG/init/$_hsm_s}"', '"${MODULESHOME:+$MODULESHOME/init/$_hsm_s}"',
    '"/usr/share/lmod/lmod/init/$_hsm_s"', '"/usr/share/modules/init/$_hsm_s"', "/etc/profile.d/lmod.sh",
    "/etc/profile.d/z00_lmod.sh", "/etc/profile.d/modules.sh",
)


def _text(value: Any, name: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or "\0" in value or "\n" in value:
        raise ConfigError(f"must be one line of text, got {value!r}", f"environment.{name}")
    return value.strip()


def _lines(value: Any, name: str) -> tuple[str, ...]:
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(i, str) and "\0" not in i for i in items):
        raise ConfigError(f"must be a list of shell lines, got {value!r}", f"environment.{name}")
    return tuple(i for i in items if i.strip())


def _modules(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    items = value.replace(",", " ").split() if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        raise ConfigError(f"must be a list of module names such as ['cuda/12.1'], got {value!r}", "environment.modules")
    for m in items:
        if not isinstance(m, str) or not _MODULE.match(m):
            raise ConfigError(f"{m!r} is not a module name (letters, digits, _ . , : + = @ / -)", "environment.modules")
    return tuple(items)


@dataclass(frozen=True)
class Environment:
    """What a job's command runs in, on whichever source runs it.

    ``conda_env``: a conda environment's name, or its folder (``~/envs/x``, ``/opt/envs/x``),
    activated with ``conda_exe`` (conda, mamba or micromamba; found automatically when not given).
    ``venv``: a virtualenv's folder (its ``bin/activate`` is sourced).  ``modules``: ``module
    load`` each (the ``module`` function is set up from the usual Lmod / Environment Modules
    init script when missing).  ``pre_script``: shell lines (each a line or a block).  ``env``:
    variables set last; ``$VAR`` and ``${VAR}`` in a value (and a leading ``~/``) are expanded on
    the target, nothing else is.  A ``~`` in a path is the target user's home.  Order: modules,
    pre_script, conda, venv, env (so a module may provide conda, and ``env`` has the last word).
    """

    conda_env: str | None = None
    conda_exe: str | None = None
    venv: str | None = None
    modules: tuple[str, ...] = ()
    pre_script: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        for name in ("conda_env", "conda_exe", "venv"):
            set_(self, name, _text(getattr(self, name), name))
        set_(self, "modules", _modules(self.modules))
        set_(self, "pre_script", _lines(self.pre_script, "pre_script"))
        if self.env is None:
            set_(self, "env", {})
        if not isinstance(self.env, Mapping):
            raise ConfigError(f"must be a mapping of NAME: value, got {self.env!r}", "environment.env")
        env = {}
        for key, value in self.env.items():
            if not isinstance(key, str) or not _ENV_NAME.match(key):
                raise ConfigError(f"{key!r} is not a valid environment variable name (letters, digits, _)",
                                  "environment.env")
            if isinstance(value, bool) or not isinstance(value, (str, int, float)):
                raise ConfigError(f"{key}: must be text, got {value!r}", "environment.env")
            env[key] = str(value)
        set_(self, "env", env)
        if self.conda_exe and not self.conda_env:
            raise ConfigError("is set but conda_env is not; give the environment to activate", "environment.conda_exe")

    def __hash__(self) -> int:
        return hash((self.conda_env, self.conda_exe, self.venv, self.modules, self.pre_script,
                     tuple(sorted(self.env.items()))))

    def __bool__(self) -> bool:
        return any(getattr(self, f.name) for f in fields(self))

    @property
    def provides_python(self) -> bool:
        """Does it activate an interpreter of its own (conda or venv)?  Then ``python`` means that one."""
        return bool(self.conda_env or self.venv)

    def summary(self) -> str:
        """``conda myenv, modules cuda/12.1, 2 pre_script lines``: for messages."""
        parts = [f"conda {self.conda_env}" if self.conda_env else "", f"venv {self.venv}" if self.venv else "",
                 f"modules {' '.join(self.modules)}" if self.modules else "",
                 f"{len(self.pre_script)} pre_script line(s)" if self.pre_script else "",
                 f"env {', '.join(self.env)}" if self.env else ""]
        return ", ".join(p for p in parts if p) or "none"

    def to_dict(self) -> dict[str, Any]:
        """Its fields that are set, as plain data (``describe()``, sweep files)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value:
                out[f.name] = list(value) if isinstance(value, tuple) else dict(value) if f.name == "env" else value
        return out

    @classmethod
    def from_dict(cls, data: Any) -> Environment:
        """From an ``Environment``, a mapping of its fields, or None (empty)."""
        if data is None:
            return cls()
        if isinstance(data, Environment):
            return data
        if not isinstance(data, Mapping):
            raise ConfigError(f"must be a mapping with keys such as conda_env, venv, modules, pre_script, env; "
                              f"got {data!r}", "environment")
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown keys {sorted(unknown)}; allowed: {sorted(known)}", "environment")
        return cls(**dict(data))

    def with_resources(self, modules: Sequence[str] = (), pre_script: str | None = None) -> Environment:
        """This environment after a Slurm ``ResourceSpec``'s ``modules`` and ``pre_script`` (those first)."""
        return Environment(self.conda_env, self.conda_exe, self.venv, (*modules, *self.modules),
                           ((pre_script,) if pre_script else ()) + self.pre_script, self.env)


def check_literal_env(env: Mapping[str, str], field_name: str = "env") -> None:
    """``env`` values reach jobs as written: a value naming its own variable (``PATH=/x/bin:$PATH``)
    would arrive with a literal ``$PATH``.  Refuse it and say where such a value belongs."""
    for key, value in env.items():
        if isinstance(value, str) and any((m.group(1) or m.group(2)) == key for m in _REF.finditer(value)):
            raise ConfigError(
                f"{key}={value!r} would reach the job literally ({field_name} values are not expanded); "
                f"use environment=Environment(env={{{key!r}: {value!r}}}), where $VAR is expanded on the target",
                field_name)


# -- rendering ---------------------------------------------------------------------------------
def shell_path(path: str) -> str:
    """A path as a shell word, with a leading ``~`` meaning the target user's home."""
    if path == "~":
        return '"$HOME"'
    if path.startswith("~/"):
        return '"$HOME"/' + shlex.quote(path[2:]) if path[2:] else '"$HOME"/'
    return shlex.quote(path)


def expand_home(path: str, home: str) -> str:
    """``~/x`` -> ``<home>/x`` (where the target's home is known, e.g. a program in argv)."""
    if home and (path == "~" or path.startswith("~/")):
        return home.rstrip("/") + path[1:]
    return path


def expand_value(value: str) -> str:
    """A value in double quotes where only ``$VAR``, ``${VAR}`` and a leading ``~/`` expand."""
    out, i = [], 0
    if value == "~" or value.startswith("~/"):
        out.append("$HOME")
        i = 1
    while i < len(value):
        m = _REF.match(value, i)
        if m:
            out.append(m.group(0))
            i = m.end()
            continue
        c = value[i]
        out.append("\\" + c if c in '"\\`$' else c)
        i += 1
    return '"' + "".join(out) + '"'


def _label(text: str) -> str:
    first = text.strip().splitlines()[0] if text.strip() else ""
    return first if len(first) <= 60 and "\n" not in text.strip() else first[:60] + " ..."


def _step(label: str, code: str) -> list[str]:
    return [f"_hsm_w={shlex.quote(label)}", "{ " + code, "} 2>&8; _hsm_end $?"]


_HEAD = r'''# hsm_notebook job environment: the set-up lines, then the job's command ("$@").
# A failing line stops it: that line's stderr is passed on and the last line names it.
[ -n "${BASH_VERSION:-}" ] || ! command -v bash >/dev/null 2>&1 || exec bash "$0" "$@"
_hsm_f=${HSM_TASK_DIR:-${TMPDIR:-/tmp}}/.hsm-env.$$
exec 7>&2 8>"$_hsm_f" 9<"$_hsm_f" && rm -f "$_hsm_f" || exit 1
_hsm_w=start
_hsm_end() {
  _hsm_a=; _hsm_z=; _hsm_l=
  while IFS= read -r _hsm_l <&9 || [ -n "$_hsm_l" ]; do
    printf '%s\n' "$_hsm_l" >&7
    [ -z "$_hsm_l" ] || { _hsm_a=${_hsm_a:-$_hsm_l}; _hsm_z=$_hsm_l; }
    _hsm_l=
  done
  [ "$1" = 0 ] && return 0
  trap - EXIT
  [ "$_hsm_a" = "$_hsm_z" ] || _hsm_a="$_hsm_a ... $_hsm_z"
  printf 'environment: %s: %s\n' "$_hsm_w" "${_hsm_a:-${2:-exit code $1}}" >&7
  exit "$1"
}
trap '_hsm_x=$?; _hsm_end "$((_hsm_x ? _hsm_x : 1))" "ended the shell (exit $_hsm_x)"' EXIT'''
_TAIL = ['trap - EXIT; exec 7>&- 8>&- 9<&-', 'exec "$@"']


def _conda_code(env: Environment, conda_env: str) -> str:
    if env.conda_exe and "/" in env.conda_exe:
        find = f"_hsm_c={shell_path(env.conda_exe)}"
    elif env.conda_exe:
        find = f'_hsm_c=$(command -v {shlex.quote(env.conda_exe)} 2>/dev/null)'
    else:
        places = " \\\n    ".join(" ".join(_CONDA_PLACES[i:i + 3]) for i in range(0, len(_CONDA_PLACES), 3))
        find = (f"_hsm_c=; for _hsm_x in {places}; do\n"
                '    case $_hsm_x in /*) [ -x "$_hsm_x" ] && { _hsm_c=$_hsm_x; break; } ;; esac; done')
    target = shell_path(conda_env) if conda_env.startswith(("~", "/", ".")) else shlex.quote(conda_env)
    missing = (f"conda_exe {env.conda_exe}: not found" if env.conda_exe else "conda: not found (no conda, mamba or "
               "micromamba on PATH, in CONDA_EXE/MAMBA_EXE or the usual folders); set conda_exe")
    return (f"{find}\n"
            f'  [ -n "$_hsm_c" ] && [ -x "$_hsm_c" ] || {{ echo {shlex.quote(missing)} >&2; false; }} &&\n'
            '  case ${_hsm_c##*/} in\n'
            '    micromamba*|mamba*) _hsm_n=${_hsm_c##*/}; _hsm_n=${_hsm_n%%[!a-z]*}; '
            '_hsm_h=$("$_hsm_c" shell hook -s posix) ;;\n'
            '    *) _hsm_n=conda; _hsm_h=$("$_hsm_c" shell.posix hook) ;;\n'
            f'  esac && eval "$_hsm_h" && "$_hsm_n" activate {target}')


def environment_script(env: Environment) -> str:
    """The job environment as a POSIX shell script run as ``sh SCRIPT CMD ARG...``: ``env``'s
    set-up lines, each stopping the script with a named error if it fails, then ``exec "$@"``.
    It re-runs itself under bash where the target has it (lines written for the reference's bash
    job scripts, such as ``source x``, work)."""
    lines = [_HEAD]
    if env.modules:
        inits = " \\\n      ".join(" ".join(_MODULE_INITS[i:i + 2]) for i in range(0, len(_MODULE_INITS), 2))
        lines += _step("module", (
            'command -v module >/dev/null 2>&1 || { _hsm_s=sh; [ -z "${BASH_VERSION:-}" ] || _hsm_s=bash\n'
            f"    for _hsm_i in {inits}; do\n"
            '      [ -n "$_hsm_i" ] && [ -f "$_hsm_i" ] && { . "$_hsm_i"; break; }; done; }\n'
            "  command -v module >/dev/null 2>&1 || { echo 'not found (no Lmod or Environment Modules init "
            "script in the usual places)' >&2; false; }"))
        for m in env.modules:
            lines += _step(f"module load {m}", f"module load {shlex.quote(m)}")
    for block in env.pre_script:
        lines += _step(f"pre_script: {_label(block)}", block.strip("\n"))
    if env.conda_env:
        lines += _step(f"conda activate {env.conda_env}", _conda_code(env, env.conda_env))
    if env.venv:
        activate = f"{shell_path(env.venv.rstrip('/') or '/')}/bin/activate"
        lines += _step(f"venv {env.venv}", (
            f"[ -f {activate} ] || {{ echo {shlex.quote(f'no bin/activate in {env.venv}')} >&2; false; }} &&\n"
            f"  . {activate}"))
    if env.env:
        lines += _step("env", "\n  ".join(f"export {k}={expand_value(v)}" for k, v in env.env.items()))
    return "\n".join([*lines, *_TAIL]) + "\n"


def script_name(text: str) -> str:
    """The file an environment script is written to: named by its content, so sources and
    controllers that render the same environment share one file and never rewrite another's."""
    return f"env-{hashlib.sha256(text.encode()).hexdigest()[:12]}.sh"


def job_argv(script: str | None, argv: Sequence[str]) -> list[str]:
    """A job's argv run through the environment script at ``script`` (unchanged without one)."""
    return ["/bin/sh", script, *argv] if script else list(argv)


# -- the setup probe -----------------------------------------------------------------------------
_MARK = "hsm-probe:"


def probe_command(script: str | None, workdir: str, task_dir: str, program: str,
                  python: str | None, env: Mapping[str, str] | None = None) -> str:
    """One shell command: in ``workdir``, with the jobs' variables ``env``, through the environment
    ``script`` (if any), is ``program`` there and does ``python`` (when the command runs it) start?
    All output on stdout."""
    tail = [f"echo {_MARK}env=ok",
            f"command -v {shlex.quote(program)} >/dev/null 2>&1 && echo {_MARK}program=yes"]
    if python:
        check = f"import sys; print('{_MARK}python=%d.%d.%d' % sys.version_info[:3])"
        tail.append(f"{shlex.quote(python)} -c {shlex.quote(check)} 2>&1; echo \"{_MARK}python-rc=$?\"")
    run = job_argv(script, ["/bin/sh", "-c", "\n".join(tail), "hsm-probe"])
    assigns = "".join(f"{k}={shlex.quote(v)} " for k, v in {**(env or {}), "HSM_TASK_DIR": task_dir}.items())
    return f"(cd {shlex.quote(workdir)} && {assigns}{shlex.join(run)}) </dev/null 2>&1"


def probe_problem(output: str, *, program: str, python: str | None, where: str,
                  environment: Environment) -> str | None:
    """What is wrong, in words naming the failing line, or None: read from :func:`probe_command`'s output."""
    lines = [line.rstrip() for line in output.splitlines()]
    within = f" in its environment ({environment.summary()})" if environment else ""
    if f"{_MARK}env=ok" not in lines:
        failed = [line[len("environment: "):] for line in lines if line.startswith("environment: ")]
        said = failed[-1] if failed else " ".join(line for line in lines if line.strip())[-300:] or "no output"
        return (f"the environment does not work on {where}: {said}; so {python or program!r} cannot start there. "
                "Fix environment=... (conda_env, venv, modules, pre_script)")
    if f"{_MARK}program=yes" not in lines and program != python:
        return (f"program {program!r} not found on {where} (PATH of a non-interactive shell{within}); "
                "install it there or give its full path")
    if python:
        rc = next((line.split("=", 1)[1] for line in lines if line.startswith(f"{_MARK}python-rc=")), "")
        if rc != "0":
            shown = [line for line in lines if line.strip() and not line.startswith(_MARK)]
            text = " ".join(shown)[-300:]
            if rc == "127" or f"{_MARK}program=yes" not in lines:
                return (f"python {python!r}: not found on {where}{within}; set python=... to an interpreter "
                        f"there{' or fix the environment' if environment else ''}")
            return (f"python {python!r} does not run on {where}{within}: version check said "
                    f"{text or 'nothing'} (exit code {rc}); set python=... to a working interpreter")
    return None


def probe_version(output: str) -> str | None:
    """The python version the probe saw (``3.11.2``), or None."""
    for line in output.splitlines():
        if line.startswith(f"{_MARK}python="):
            return line.split("=", 1)[1].strip()
    return None
