"""Function sweeps, the controller's side: a Python callable serialised once per sweep.

``Sweep(space, fn, sources)`` pickles ``fn`` with cloudpickle (by value when it is defined in the
notebook, with what it closes over) into ``function.pkl`` in the sweep's folder, next to
``function.python`` (the Python major.minor that pickled it: pickles do not cross versions).
Each task runs ``python -m hsm_notebook.runner PARAMS_JSON`` (see ``hsm_notebook.runner``);
sources whose tasks run elsewhere copy the two files to their remote sweep folder once.

The code that runs is the code the kernel ran: modules the function reaches that are neither the
standard library nor installed (``helpers.py`` next to the notebook, a project package on
``sys.path``) are pickled by value with it, and those it imports inside its body travel whole and
are put in the job's ``sys.modules``, so a job never imports another ``helpers.py`` from its
working folder.  Where the jobs' Python is not this kernel's (an environment, ``python=``), the
job-side part of the package (runner, metrics) and cloudpickle travel too (:func:`job_side_files`),
put first on the jobs' ``PYTHONPATH``, and setup checks that Python can import them.
"""

from __future__ import annotations

import dis
import functools
import importlib.metadata
import inspect
import os
import sys
import sysconfig
import types
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from ...runner import FUNCTION_FILE as FUNCTION_FILE  # the job side spells the three names
from ...runner import RESULT_FILE as RESULT_FILE
from ...runner import VERSION_FILE as VERSION_FILE
from ..model.errors import ConfigError

#: The job every task of a function sweep runs; the parameters follow as one JSON argument.
RUNNER = ("python", "-m", "hsm_notebook.runner")


def python_version() -> str:
    return "{}.{}".format(*sys.version_info[:2])


#: The column a plain number returned by the function goes to when the sweep has no objective.
VALUE_COLUMN = "value"


def pack(fn: Callable[..., Any], objective: Mapping[str, str] | None = None) -> bytes:
    """``fn`` as cloudpickle bytes, with the notebook's own modules by value and the name a returned
    number takes (the objective's metric, else ``value``); ConfigError naming the first part that
    cannot be sent."""
    import cloudpickle

    if not callable(fn):
        raise ConfigError(f"must be a command or a callable, got {type(fn).__name__}", "command")
    reached, imported = local_modules(fn)
    registered = [m for m in reached | imported if not _registered(cloudpickle, m)]
    for module in registered:
        cloudpickle.register_pickle_by_value(sys.modules[module])
    modules = {name: sys.modules[name] for name in sorted(imported) if name in sys.modules}
    payload = {"hsm_function": 1, "fn": fn, "number": next(iter(objective)) if objective else VALUE_COLUMN,
               "modules": modules}
    try:
        return cloudpickle.dumps(payload)
    except Exception as exc:  # noqa: BLE001 - any pickling failure: find and name its cause
        for name, mod in modules.items():
            try:
                cloudpickle.dumps(mod)
            except Exception as inner:  # noqa: BLE001
                raise ConfigError(
                    f"{_name(fn)} imports the module {name!r} (from {getattr(mod, '__file__', '?')}) inside its "
                    f"body, and that module cannot be sent to a job ({type(inner).__name__}: {inner}); import what "
                    f"it uses at the top of the notebook (from {name} import ...), outside the function", "command"
                ) from None
        for where, value in _parts(fn):
            try:
                cloudpickle.dumps(value)
            except Exception as inner:  # noqa: BLE001
                home = (getattr(value, "__module__", None) or "").partition(".")[0]
                local = (f" from the notebook's module {home!r}, which travels by value so that jobs run the "
                         "kernel's code; what it uses must be picklable too" if home in reached else "")
                raise ConfigError(
                    f"{_name(fn)} uses {where} = {_short(value)} ({type(value).__module__}.{type(value).__qualname__})"
                    f"{local}, which cannot be sent to a job ({type(inner).__name__}: {inner}); create it inside the "
                    "function, or pass what it is made from as a parameter"
                    + (", or install the module (pip install -e) so jobs import it" if local else ""),
                    "command") from None
        carried = (f" (with the notebook's own modules it uses, sent by value: {', '.join(sorted(reached))})"
                   if reached else "")
        raise ConfigError(f"{_name(fn)} cannot be sent to a job{carried} ({type(exc).__name__}: {exc}); create what "
                          "cannot be pickled inside the function (or lazily in the module), pass what it is made from "
                          "as a parameter, or install the module (pip install -e) so jobs import it",
                          "command") from None
    finally:
        for module in registered:
            cloudpickle.unregister_pickle_by_value(sys.modules[module])


def _registered(cloudpickle: Any, name: str) -> bool:
    try:
        return bool(cloudpickle.cloudpickle._is_registered_pickle_by_value(sys.modules[name]))
    except (AttributeError, KeyError):
        return False


# -- the notebook's own modules ---------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _installed_tops() -> frozenset[str]:
    """Top-level import names that belong to an installed distribution (editable installs too)."""
    return frozenset(importlib.metadata.packages_distributions())


@functools.lru_cache(maxsize=1)
def _library_roots() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    roots = {paths.get(k) for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    return tuple(os.path.realpath(r) + os.sep for r in roots if r)


def is_local_module(module: Any) -> bool:
    """A module the kernel imported from its own folders (a ``helpers.py`` next to the notebook, a
    project package on ``sys.path``): neither the standard library, nor installed, nor this package,
    nor ``__main__`` (pickled by value anyway), nor compiled."""
    name = getattr(module, "__name__", None)
    if not isinstance(module, types.ModuleType) or not name or name == "__main__":
        return False
    top = name.partition(".")[0]
    if top in sys.stdlib_module_names or top in sys.builtin_module_names or top == "hsm_notebook":
        return False
    file = getattr(sys.modules.get(top, module), "__file__", None)
    if not file or not file.endswith(".py") or top in _installed_tops():
        return False
    return not os.path.realpath(file).startswith(_library_roots())


def local_modules(fn: Any) -> tuple[set[str], set[str]]:
    """The notebook's own modules ``fn`` reaches, as top-level names: those its code (and the code it
    calls, recursively) reads as globals, closes over or is defined in, and those it imports inside a
    function body (which a job would import again from its own folder)."""
    reached: set[str] = set()
    imported: set[str] = set()
    seen: set[int] = set()
    todo: list[Any] = [fn]

    def module_of(obj: Any) -> None:
        module = obj if isinstance(obj, types.ModuleType) else sys.modules.get(getattr(obj, "__module__", None) or "")
        if module is not None and is_local_module(module):
            top = module.__name__.partition(".")[0]
            if top not in reached:
                reached.add(top)
                if isinstance(obj, types.ModuleType):  # pickled whole: what it holds travels too
                    todo.extend(v for v in vars(obj).values() if callable(v) or isinstance(v, types.ModuleType))

    while todo:
        obj = todo.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, functools.partial):
            todo.extend([obj.func, *obj.args, *obj.keywords.values()])
        elif isinstance(obj, types.MethodType):
            todo.extend([obj.__func__, obj.__self__])
        elif isinstance(obj, types.FunctionType):
            module_of(obj)
            todo.extend(_code_refs(obj, imported))
        elif isinstance(obj, type):
            module_of(obj)
            for value in vars(obj).values():
                wrapped = isinstance(value, (classmethod, staticmethod))
                todo.append(getattr(value, "__func__", value) if wrapped else value)
        elif isinstance(obj, types.ModuleType):
            module_of(obj)
        elif isinstance(obj, (list, tuple, set, frozenset)) and len(obj) <= 100:
            todo.extend(obj)
        elif isinstance(obj, dict) and len(obj) <= 100:
            todo.extend(obj.values())
        elif not isinstance(obj, (str, bytes, int, float, complex, bool, type(None))):
            todo.append(type(obj))
    return reached, {m for m in imported if m in sys.modules and is_local_module(sys.modules[m])}


def _code_refs(fn: types.FunctionType, imported: set[str]) -> list[Any]:
    """What a function's code refers to: the globals it reads, its closure, defaults; the modules
    it imports inside its body are added to ``imported`` (as the top-level and the full name)."""
    refs: list[Any] = []
    names: set[str] = set()
    codes = [fn.__code__]
    while codes:
        code = codes.pop()
        names.update(code.co_names)
        codes.extend(c for c in code.co_consts if isinstance(c, types.CodeType))
        for ins in dis.get_instructions(code):
            if ins.opname == "IMPORT_NAME" and isinstance(ins.argval, str):
                imported.update({ins.argval.partition(".")[0], ins.argval})
    module_globals = getattr(fn, "__globals__", {})
    refs.extend(module_globals[n] for n in names if n in module_globals)
    for cell in fn.__closure__ or ():
        try:
            refs.append(cell.cell_contents)
        except ValueError:  # an empty cell
            continue
    refs.extend(fn.__defaults__ or ())
    refs.extend((fn.__kwdefaults__ or {}).values())
    return refs


def _parts(fn: Any) -> Iterator[tuple[str, Any]]:
    """What a callable carries: partial arguments, closure cells, the globals it reads, defaults."""
    if isinstance(fn, functools.partial):
        yield from ((f"the partial's argument {i}", a) for i, a in enumerate(fn.args))
        yield from ((f"the partial's keyword {k!r}", v) for k, v in fn.keywords.items())
        yield from _parts(fn.func)
        return
    code = getattr(fn, "__code__", None)
    if code is None:
        return
    for name, cell in zip(code.co_freevars, getattr(fn, "__closure__", None) or (), strict=True):
        try:
            yield f"the variable {name!r} it closes over", cell.cell_contents
        except ValueError:  # an empty cell
            continue
    module_globals = getattr(fn, "__globals__", {})
    for name in code.co_names:
        if name in module_globals and not inspect.ismodule(module_globals[name]):
            yield f"the global {name!r}", module_globals[name]
    for i, default in enumerate(getattr(fn, "__defaults__", None) or ()):
        yield f"default argument {i}", default


def _name(fn: Any) -> str:
    return f"the function {getattr(fn, '__qualname__', None) or repr(fn)!s}"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


#: Prints the interpreter's version: how a source learns it at setup.
VERSION_CODE = "import sys; print('%d.%d.%d' % sys.version_info[:3])"


def version_problem(found: str | None, wanted: str | None, where: str) -> str | None:
    """Why the Python ``found`` (``3.10.12``) on ``where`` cannot run a function pickled by ``wanted``
    (``3.11``), or None."""
    if not wanted or not found:
        return None
    if ".".join(found.split(".")[:2]) == wanted:
        return None
    return (f"the Python on {where} is {found} but the function was pickled by Python {wanted} in this kernel; "
            f"pickles do not cross Python versions: give the source a {wanted} interpreter (python=...) or an "
            "environment that has one")


# -- the job-side part, for interpreters that do not have it ------------------------------------------
#: The folder (in the sweep's folder, or a remote root) holding the job-side files; first on PYTHONPATH.
LIB_DIR = "lib"
_JOB_INIT = '"""Job-side helpers of hsm_notebook (metrics, runner), put here by the controller."""\n'


def job_side_files(function: bool) -> dict[str, str]:
    """What a job needs of this package when its Python has none of it: ``hsm_notebook.metrics``
    (stdlib only), and for a function sweep the runner and cloudpickle (pure Python), as
    ``{relative path: text}``."""
    from ... import metrics, runner

    files = {"hsm_notebook/__init__.py": _JOB_INIT, "hsm_notebook/metrics.py": Path(metrics.__file__).read_text()}
    if function:
        import cloudpickle

        files["hsm_notebook/runner.py"] = Path(runner.__file__).read_text()
        package = Path(cloudpickle.__file__).parent
        files.update({f"cloudpickle/{f.name}": f.read_text() for f in sorted(package.glob("*.py"))})
    return files


def write_job_side(folder: Path, function: bool) -> str:
    """:func:`job_side_files` written under ``folder`` (each file replaced whole); returns the folder."""
    for name, text in job_side_files(function).items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_text() != text:
            tmp = path.with_name(f".{path.name}.{os.getpid()}")
            tmp.write_text(text)
            os.replace(tmp, path)
    return str(folder)


def pythonpath(lib: str, existing: str | None) -> str:
    """``lib`` first, then what was there."""
    return f"{lib}:{existing}" if existing else lib


_OK = "hsm-runner=ok"
_MISSING = "hsm-runner-missing="
#: Prints the interpreter's version, then whether it can import what a function sweep's job runs.
RUNNER_CHECK_CODE = (
    "import sys; print('%d.%d.%d' % sys.version_info[:3])\n"
    "try:\n    import cloudpickle, hsm_notebook.runner, hsm_notebook.metrics\n"
    f"except Exception as e:\n    print('{_MISSING}%s: %s' % (type(e).__name__, e))\n"
    f"else:\n    print('{_OK}')\n")


def runner_problem(output: str, wanted: str | None, where: str, lib: str | None) -> str | None:
    """What :data:`RUNNER_CHECK_CODE` said, as the reason a function sweep cannot run on ``where``
    (a Python of another version, or one that cannot import the runner), or None."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    found = next((line for line in lines if line.count(".") == 2 and line.replace(".", "").isdigit()), None)
    problem = version_problem(found or f"unknown (it did not start: {' '.join(lines)[-200:] or 'no output'})",
                              wanted, where)
    if problem or _OK in lines:
        return problem
    said = next((line[len(_MISSING):] for line in lines if line.startswith(_MISSING)), " ".join(lines)[-300:])
    shipped = f" (with {lib} first on PYTHONPATH, where the runner and cloudpickle were put)" if lib else ""
    return (f"the jobs' Python on {where} cannot import what runs a function{shipped}: {said}; "
            "so every task would fail. Fix the environment (a PYTHONPATH it sets must keep $PYTHONPATH), "
            "or install cloudpickle there (pip install cloudpickle)")
