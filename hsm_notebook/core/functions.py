"""Function sweeps, the controller's side: a Python callable serialised once per sweep.

``Sweep(space, fn, sources)`` pickles ``fn`` with cloudpickle (by value when it is defined in the
notebook, with what it closes over) into ``function.pkl`` in the sweep's folder, next to
``function.python`` (the Python major.minor that pickled it: pickles do not cross versions).
Each task runs ``python -m hsm_notebook.runner PARAMS_JSON`` (see ``hsm_notebook.runner``);
sources whose tasks run elsewhere copy the two files to their remote sweep folder once.
"""

from __future__ import annotations

import functools
import inspect
import sys
from typing import Any, Callable, Iterator, Optional

from .errors import ConfigError

FUNCTION_FILE = "function.pkl"
VERSION_FILE = "function.python"
RESULT_FILE = "result.pkl"
#: The job every task of a function sweep runs; the parameters follow as one JSON argument.
RUNNER = ("python", "-m", "hsm_notebook.runner")


def python_version() -> str:
    return "%d.%d" % sys.version_info[:2]


def pack(fn: Callable[..., Any]) -> bytes:
    """``fn`` as cloudpickle bytes; ConfigError naming the first part that cannot be sent."""
    import cloudpickle

    if not callable(fn):
        raise ConfigError(f"must be a command or a callable, got {type(fn).__name__}", "command")
    try:
        return cloudpickle.dumps(fn)
    except Exception as exc:  # noqa: BLE001 - any pickling failure: find and name its cause
        for where, value in _parts(fn):
            try:
                cloudpickle.dumps(value)
            except Exception as inner:  # noqa: BLE001
                raise ConfigError(
                    f"{_name(fn)} uses {where} = {_short(value)} ({type(value).__module__}.{type(value).__qualname__}),"
                    f" which cannot be sent to a job ({type(inner).__name__}: {inner}); create it inside the "
                    "function, or pass what it is made from as a parameter", "command") from None
        raise ConfigError(f"{_name(fn)} cannot be sent to a job ({type(exc).__name__}: {exc})", "command") from None


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
    for name, cell in zip(code.co_freevars, getattr(fn, "__closure__", None) or ()):
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


def version_problem(found: Optional[str], wanted: Optional[str], where: str) -> Optional[str]:
    """Why the Python ``found`` (``3.10.12``) on ``where`` cannot run a function pickled by ``wanted``
    (``3.11``), or None."""
    if not wanted or not found:
        return None
    if ".".join(found.split(".")[:2]) == wanted:
        return None
    return (f"the Python on {where} is {found} but the function was pickled by Python {wanted} in this kernel; "
            f"pickles do not cross Python versions: give the source a {wanted} interpreter (python=...) or an "
            "environment that has one")
