"""The job side of a function sweep: ``python -m hsm_notebook.runner PARAMS_JSON``.

It runs in the task's folder (``HSM_TASK_DIR``) like any job, loads the sweep's function from
``function.pkl`` in the sweep's folder (the task folder's grandparent, here or on the remote,
where the source put it once for the whole sweep), puts the notebook modules that travelled with
it in ``sys.modules``, calls ``fn(**params)`` (dotted names nested again: ``model.width`` is
``model={"width": ...}``) and keeps what it returns.  An exception prints its traceback to stderr
and exits 1, so the task is FAILED with ``ValueError: ...`` as its error.

What the function is and returns:

- ``async def`` (or anything returning an awaitable): awaited (``asyncio.run``).
- A generator (or async generator): each yielded dict is a step, as ``log_metrics(step=i, **d)``
  (its own ``"step"`` key if it has one, else the yield's ordinal from 0); a yielded number is a
  step of the number's name (below); other yields are not steps.  The result is the generator's
  ``return`` value, else its last yield.
- The result's numbers, strings, bools and None become the task's metrics (``results()``): a dict's
  items, nested dicts as dotted columns exactly as ``log_metrics(val={...})`` gives (``val.loss``);
  a plain number (int, float, numpy number; not a bool) is the value of the sweep's objective
  metric, or of a column named ``value`` when the sweep has no objective.  They are written before
  the result is pickled, so no pickling failure loses them.
- The whole result is pickled to ``result.pkl`` (``sweep.result(task_id)``).  An item that cannot
  be pickled (at any depth of dicts) is replaced by a note string (``"<not kept: cannot be pickled
  (TypeError: ...)>"``), named in a warning line on stderr, and the task still COMPLETES.

Kept light (stdlib, cloudpickle and hsm_notebook.metrics): it starts once per task, or, as the local
source's fork server (``--serve``, below), once per sweep, forking each task from there.
"""

from __future__ import annotations

import inspect
import json
import numbers
import os
import pickle
import sys
import traceback
from pathlib import Path
from typing import Any

FUNCTION_FILE = "function.pkl"
RESULT_FILE = "result.pkl"
VERSION_FILE = "function.python"  # the major.minor of the Python that pickled the function


def main(argv: list[str]) -> int:
    if argv[:1] == ["--serve"] and len(argv) == 2:
        return serve(int(argv[1]))
    if len(argv) != 1:
        print("usage: python -m hsm_notebook.runner PARAMS_JSON", file=sys.stderr)
        return 2
    task_dir = Path(os.environ.get("HSM_TASK_DIR", "."))
    try:
        fn, number = _load(task_dir.parent.parent)
    except _WrongPython as exc:
        print(exc, file=sys.stderr)
        return 1
    return _task(fn, number, argv[0], task_dir)


class _WrongPython(RuntimeError):
    pass


def _load(sweep_dir: Path) -> tuple[Any, str]:
    """The sweep's function (and the name a returned number takes), the notebook's modules that
    travelled with it put in ``sys.modules``; ``_WrongPython`` when this Python did not pickle it."""
    wanted = (sweep_dir / VERSION_FILE).read_text().strip() if (sweep_dir / VERSION_FILE).exists() else None
    here = "{}.{}".format(*sys.version_info[:2])
    if wanted and wanted != here:
        raise _WrongPython(f"RuntimeError: this job's Python is {here} but the function was pickled by Python "
                           f"{wanted}; pickles do not cross Python versions: run the jobs with the notebook's "
                           "Python version")
    sys.path.insert(0, os.getcwd())  # the project's own modules, as a script run there would see them
    import cloudpickle

    with open(sweep_dir / FUNCTION_FILE, "rb") as f:
        fn, modules, number = _unpack(cloudpickle.load(f))
    sys.modules.update(modules)  # the notebook's modules it imports in its body: the kernel's code
    return fn, number


def _task(fn: Any, number: str, params_json: str, task_dir: Path) -> int:
    """One task: ``fn(**params)``, its return kept; the exit code (1 with the traceback on stderr)."""
    try:
        value = call(fn, nest(json.loads(params_json)), number)
    except BaseException:  # noqa: BLE001 - the task's failure, told as it happened where it ran
        traceback.print_exc()
        return 1
    _keep(value, task_dir, number)
    return 0


def _unpack(loaded: Any) -> tuple[Any, dict, str]:
    """As ``hsm_notebook.core.spec.functions.unpack`` (not imported: core is not sent to remote jobs)."""
    if isinstance(loaded, dict) and loaded.get("hsm_function") == 1:
        return loaded["fn"], dict(loaded.get("modules") or {}), str(loaded.get("number") or "value")
    return loaded, {}, "value"


def call(fn: Any, params: dict, number: str = "value") -> Any:
    """``fn(**params)``, awaited if it is async, its steps logged if it is a generator."""
    value = fn(**params)
    if inspect.isawaitable(value) or inspect.isasyncgen(value):
        import asyncio  # only here: ~25 ms of every job's start otherwise

        return asyncio.run(_wait(value) if inspect.isawaitable(value) else _adrain(value, number))
    if inspect.isgenerator(value):
        return _drain(value, number)
    return value


async def _wait(awaitable: Any) -> Any:
    return await awaitable


def _drain(gen: Any, number: str) -> Any:
    last, i = None, 0
    while True:
        try:
            item = next(gen)
        except StopIteration as stop:
            return stop.value if stop.value is not None else last
        _step(item, i, number)
        last, i = item, i + 1


async def _adrain(gen: Any, number: str) -> Any:
    last, i = None, 0
    async for item in gen:
        _step(item, i, number)
        last, i = item, i + 1
    return last


def _step(item: Any, i: int, number: str) -> None:
    """One yield as one step of ``metrics.jsonl``."""
    from hsm_notebook.metrics import log_metrics

    if isinstance(item, dict):
        values = _metrics({k: v for k, v in item.items() if k != "step"})
        step = item.get("step", i)
        if values:
            log_metrics(values, step=step if _is_number(step) else i)
    elif _is_number(item):
        log_metrics({number: _plain(item)}, step=i)


def nest(params: dict) -> dict:
    """Dotted names back into the nested dicts they came from: a space's ``{"cfg": {"a": 1}}`` is
    stored as ``cfg.a``; the function gets ``cfg={"a": 1}``."""
    out: dict = {}
    for name, value in params.items():
        *parents, leaf = name.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def _keep(value: object, task_dir: Path, number: str = "value") -> None:
    """The return value: its numbers as the task's metrics first, then pickled whole (what cannot
    be pickled replaced by a note and named on stderr)."""
    from hsm_notebook.metrics import log_metrics

    metrics = {number: _plain(value)} if _is_number(value) else _metrics(value) if isinstance(value, dict) else {}
    if metrics:
        log_metrics(metrics)
    import cloudpickle

    tmp = task_dir / (RESULT_FILE + ".tmp")
    try:
        data = cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:  # noqa: BLE001 - any pickling failure: keep what can be kept, name the rest
        dropped: list[tuple[str, str]] = []
        value = _picklable(value, "", dropped)
        data = cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        for where, why in dropped:
            print(f"hsm_notebook: the return value{f' item {where!r}' if where else ''} cannot be pickled ({why}): "
                  "result.pkl holds a note in its place; its numbers are kept as metrics", file=sys.stderr)
    tmp.write_bytes(data)
    os.replace(tmp, task_dir / RESULT_FILE)


def _picklable(value: Any, where: str, dropped: list[tuple[str, str]]) -> Any:
    """``value`` with what cannot be pickled (at any depth of dicts) replaced by a note string."""
    import cloudpickle

    try:
        cloudpickle.dumps(value)
        return value
    except Exception as exc:  # noqa: BLE001
        if isinstance(value, dict):
            return {k: _picklable(v, f"{where}.{k}" if where else str(k), dropped) for k, v in value.items()}
        why = f"{type(exc).__name__}: {exc}"
        dropped.append((where, why))
        return f"<not kept: {type(value).__module__}.{type(value).__qualname__} cannot be pickled ({why})>"


def _metrics(value: dict) -> dict:
    """A dict's numbers, strings, bools and None, nested dicts kept nested (read back as dotted columns,
    as ``log_metrics`` values are); everything else left to ``result.pkl``."""
    out: dict = {}
    for key, item in value.items():
        if isinstance(item, dict):
            inner = _metrics(item)
            if inner:
                out[str(key)] = inner
        elif isinstance(item, (int, float, str, bool)) or item is None or _is_scalar(item):
            out[str(key)] = _plain(item)
    return out


def _is_number(value: object) -> bool:
    """A plain number (numpy's too), not a bool."""
    if isinstance(value, bool) or (_is_scalar(value) and type(value).__name__ == "bool_"):
        return False
    return isinstance(value, numbers.Real) or (_is_scalar(value) and isinstance(_plain(value), (int, float)))


def _plain(value: Any) -> Any:
    return value.item() if _is_scalar(value) else value


def _is_scalar(value: object) -> bool:
    """A numpy scalar (without importing numpy)."""
    return type(value).__module__ == "numpy" and hasattr(value, "item") and getattr(value, "shape", None) == ()


# -- the fork server: one warm interpreter per source and sweep --------------------------------------
#
# ``python -m hsm_notebook.runner --serve FD`` (started by ``hsm_notebook.sources.warm``): FD is a
# socket to the controller.  The controller's first line is ``{"sweep_dir": ..., "signals": [...]}``;
# the server loads the function once (with the modules its body imports: what every task would import
# again), answers ``{"ready": {...}}`` (or ``{"refused": why}``), then for each job line
# ``{"files": {...}, "env": {...}, "params": PARAMS_JSON, "cwd": ...}`` forks one job and answers
# ``{"pid": N}``.  Each job is what the ``sh`` wrapper makes of a command (``core.spec.job``): the
# forked child starts its own session, writes ``launch`` ("PID STARTTIME": how a controller tells it
# from a reused pid, its command line being the server's), claims the job by creating ``pid``
# exclusively (if that fails it runs nothing), sends stdout/stderr to the job's files, forks the task
# (so an ``os._exit`` or a signal ending the task still leaves an exit code, with the reason in
# words as stderr's last line), passes on the signals a cancel sends, and writes ``exit_code``
# atomically.  The server reaps its children and exits when the controller's socket closes; the jobs
# are their own sessions and outlive it, as wrapper-started jobs outlive the controller.


def serve(fd: int) -> int:
    import signal
    import socket
    import time

    sock = socket.socket(fileno=fd)
    lines = sock.makefile("rb")

    def say(answer: dict) -> None:
        sock.sendall(json.dumps(answer).encode() + b"\n")

    config = json.loads(lines.readline() or b"null")
    if not isinstance(config, dict):
        return 0
    started = time.monotonic()
    try:
        fn, number = _load(Path(config["sweep_dir"]))
        imported, skipped = _preload(fn)
        import hsm_notebook.metrics  # noqa: F401 - what every task's return goes through
    except BaseException as exc:  # noqa: BLE001 - told to the controller, which starts tasks the usual way
        say({"refused": f"the function could not be loaded: {type(exc).__name__}: {exc}"})
        return 1
    threading = sys.modules.get("threading")
    others = [t.name for t in threading.enumerate() if t is not threading.current_thread()] if threading else []
    if others:  # a fork copies only the calling thread: what the others hold stays held in every job
        say({"refused": f"loading the function started Python threads ({', '.join(others[:5])}), and a process "
                        "with threads cannot be forked safely"})
        return 1
    import gc
    import warnings

    # Python 3.12+ warns of fork() in a process with threads; the native ones libraries start at import
    # (OpenBLAS's pool, jemalloc's) are fork-aware (pthread_atfork), and Python threads were refused above
    warnings.filterwarnings("ignore", message=r".*use of fork\(\) may lead to deadlocks", category=DeprecationWarning)
    gc.freeze()  # the loaded objects out of the collector's reach: children do not copy their pages
    signals = [getattr(signal, "SIG" + name) for name in config.get("signals", [])]
    signal.signal(signal.SIGCHLD, _reap)
    say({"ready": {"pid": os.getpid(), "imported": imported, "skipped": skipped,
                   "native_threads": len(os.listdir("/proc/self/task")) - 1,
                   "seconds": round(time.monotonic() - started, 3)}})
    for line in lines:  # until the controller's end closes
        try:
            job = json.loads(line)
            say({"pid": _fork_job(job, fn, number, signals, (lines, sock))})
        except Exception as exc:  # noqa: BLE001 - this job starts the usual way; the server goes on
            say({"error": f"{type(exc).__name__}: {exc}"})
    os._exit(0)  # nothing to tear down (the jobs are on their own): no time spent unloading libraries


def _preload(fn: Any) -> tuple[list[str], str | None]:
    """Import the modules ``fn``'s body imports (and the bodies of the functions it reaches that
    travelled by value): what each task would otherwise import again.  Not when that code may set
    environment variables (one set before an import must be seen by that import).  Returns
    (imported, why none were)."""
    import dis
    import functools
    import importlib
    import types

    names: list[str] = []
    seen: set[int] = set()
    todo: list[Any] = [fn]
    while todo:
        obj = todo.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, functools.partial):
            todo.extend([obj.func, *obj.args, *obj.keywords.values()])
            continue
        obj = getattr(obj, "__func__", obj)
        if not isinstance(obj, types.FunctionType) or (obj is not fn and _installed(obj)):
            continue  # an installed library's function: its own lazy imports are its business
        codes = [obj.__code__]
        while codes:
            code = codes.pop()
            instructions = list(dis.get_instructions(code))
            if _sets_environment(code, instructions):
                return [], "the function may set environment variables, which an import may depend on"
            codes.extend(c for c in code.co_consts if isinstance(c, types.CodeType))
            level: Any = None
            for ins in instructions:
                if ins.opname == "IMPORT_NAME" and level == 0 and ins.argval not in names:
                    names.append(ins.argval)
                if ins.opname != "LOAD_CONST":
                    level = None
                elif isinstance(ins.argval, int):  # `import x` is LOAD_CONST level, LOAD_CONST names, IMPORT_NAME
                    level = ins.argval
            todo.extend(obj.__globals__[n] for n in code.co_names if n in obj.__globals__)
    imported = []
    for name in names:
        try:
            importlib.import_module(name)
            imported.append(name)
        except Exception:  # noqa: BLE001,S112 - the task meets it again and fails with it, in words
            continue
    return imported, None


def _sets_environment(code: Any, instructions: list) -> bool:
    """May this code set environment variables (``os.environ[...] = ``, ``update``, ``putenv``, ...)?
    Reading them (``os.environ["HSM_TASK_DIR"]``) is not setting them."""
    names = set(code.co_names)
    if names & {"putenv", "unsetenv", "setenv"}:
        return True
    if "environ" not in names:
        return False
    return bool(names & {"update", "setdefault", "pop", "popitem", "clear", "__setitem__", "__delitem__"}) or any(
        ins.opname in ("STORE_SUBSCR", "DELETE_SUBSCR") for ins in instructions)


def _installed(fn: Any) -> bool:
    """Is ``fn`` a function of a module installed here (the standard library, site-packages), not one
    that travelled with the sweep's function?"""
    import sysconfig

    home = sys.modules.get(getattr(fn, "__module__", None) or "")
    if home is None or vars(home) is not fn.__globals__:
        return False  # sent by value: its globals are its own
    roots = tuple(os.path.realpath(p) + os.sep for k, p in sysconfig.get_paths().items() if k.endswith("lib"))
    return os.path.realpath(getattr(home, "__file__", None) or os.sep).startswith(roots)


def _reap(*_: Any) -> None:
    while True:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _fork_job(job: dict, fn: Any, number: str, signals: list, server: tuple) -> int:
    """Fork one job (see above); returns its pid once it has claimed the job (or refused to run)."""
    import select

    r, w = os.pipe()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    pid = os.fork()
    if pid == 0:  # the job: never returns
        code = 1
        try:
            os.close(r)
            for end in server:
                end.close()
            code = _job(job, w, fn, number, signals)
        finally:
            os._exit(code)
    os.close(w)
    try:
        select.select([r], [], [], 30)  # until it claimed the job (or gave up): then a poll finds its pid
    finally:
        os.close(r)
    return pid


def _job(job: dict, report: int, fn: Any, number: str, signals: list) -> int:
    """The wrapper's part, in the forked child: session, launch record, the claim, the task, exit code."""
    import signal

    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    os.setsid()
    files = job["files"]
    me = os.getpid()
    with open(f"/proc/{me}/stat", "rb") as f:
        start = f.read().rsplit(b")", 1)[1].split()[19].decode()
    _replace(files["launch"], f"{me} {start}\n")
    try:
        fd = os.open(files["pid"], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:  # claimed by a controller (it never starts now), or started already
        return 0
    try:
        os.write(fd, f"{me}\n".encode())
    except OSError:  # as the wrapper: a job whose pid cannot be written runs nothing
        return 1
    finally:
        os.close(fd)
    try:
        os.write(report, b"ok")
        os.close(report)
    except OSError:  # the server is gone: the job is claimed, so it runs all the same
        pass
    try:
        code = _start(job, fn, number, signals)
    except Exception as exc:  # noqa: BLE001 - as the wrapper when it cannot start the command: FAILED, in words
        code = 1
        with open(files["stderr"], "a") as f:
            f.write(f"hsm_notebook: the task could not start: {type(exc).__name__}: {exc}\n")
    _replace(files["exit_code"], f"{code}\n")
    return 0


def _start(job: dict, fn: Any, number: str, signals: list) -> int:
    """Working folder, streams and environment as the wrapper gives them; run the task in its own
    child (which inherits them), pass signals on; its exit code as ``sh`` gives it (128 + N for
    signal N), the reason in words as stderr's last line when the function did not return."""
    import signal

    files = job["files"]
    if job.get("cwd"):
        os.chdir(job["cwd"])
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    for target, name in ((1, "stdout"), (2, "stderr")):
        out = os.open(files[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(out, target)
        os.close(out)
    os.environ.update(job["env"])
    done_r, done_w = os.pipe()
    old = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    child = os.fork()
    if child == 0:  # the task: never returns
        code = 1
        try:
            os.close(done_r)
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
            code = _task_here(fn, number, job["params"])
            _finish(done_w)
        finally:
            os._exit(code)
    os.close(done_w)

    def forward(signum: int, _frame: Any) -> None:
        with open(files["signalled"], "a") as f:
            f.write(_signal_name(signum).removeprefix("SIG") + "\n")
        try:
            os.kill(child, signum)
        except ProcessLookupError:
            pass

    for signum in signals:
        signal.signal(signum, forward)
    signal.pthread_sigmask(signal.SIG_SETMASK, old)
    _, status = os.waitpid(child, 0)
    code = os.waitstatus_to_exitcode(status)
    os.set_blocking(done_r, False)
    try:
        returned = os.read(done_r, 1) == b"1"
    except BlockingIOError:  # a process the task started holds the pipe: the task itself did not say
        returned = False
    if code < 0:
        why = f"the task's process was killed by {_signal_name(-code)} (signal {-code})"
        code = 128 - code
    elif code and not returned:
        why = (f"the task's process exited with code {code} before the function returned (os._exit, or a crash "
               "in compiled code)")
    else:
        return code
    os.write(2, f"hsm_notebook: {why}\n".encode())
    return code


def _signal_name(signum: int) -> str:
    import signal

    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _task_here(fn: Any, number: str, params_json: str) -> int:
    """The task in a forked child: what a new interpreter running ``main`` would see and do."""
    sys.argv = [__file__, params_json]
    for name, reseed in (("numpy.random", "seed"), ("torch", "seed")):  # seeded apart, as new processes are
        module = sys.modules.get(name)
        if module is not None:
            try:
                getattr(module, reseed)()
            except Exception:  # noqa: BLE001,S110 - a library without it keeps its state
                pass
    try:
        return _task(fn, number, params_json, Path(os.environ.get("HSM_TASK_DIR", ".")))
    except BaseException:  # noqa: BLE001 - keeping the return value failed: told as an interpreter tells it
        traceback.print_exc()
        return 1


def _finish(done: int) -> None:
    """End a forked task as an interpreter ends (wait for its threads, run atexit, flush), then say
    that it returned (``done``)."""
    try:
        threading = sys.modules.get("threading")
        if threading is not None:
            threading._shutdown()  # type: ignore[attr-defined]  # non-daemon threads, as at interpreter exit
        import atexit

        atexit._run_exitfuncs()
    except BaseException:  # noqa: BLE001 - told on stderr, as an interpreter tells an atexit failure
        traceback.print_exc()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001,S110 - a closed stream: nothing more to say
            pass
    os.write(done, b"1")


def _replace(path: str, text: str) -> None:
    """Write a small file whole: a reader sees the old one or the new one."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
