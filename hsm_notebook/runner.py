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

Kept light (stdlib, cloudpickle and hsm_notebook.metrics): it starts once per task.
"""

from __future__ import annotations

import asyncio
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
    if len(argv) != 1:
        print("usage: python -m hsm_notebook.runner PARAMS_JSON", file=sys.stderr)
        return 2
    params = nest(json.loads(argv[0]))
    task_dir = Path(os.environ.get("HSM_TASK_DIR", "."))
    sweep_dir = task_dir.parent.parent
    wanted = (sweep_dir / VERSION_FILE).read_text().strip() if (sweep_dir / VERSION_FILE).exists() else None
    here = "{}.{}".format(*sys.version_info[:2])
    if wanted and wanted != here:
        print(f"RuntimeError: this job's Python is {here} but the function was pickled by Python {wanted}; "
              "pickles do not cross Python versions: run the jobs with the notebook's Python version",
              file=sys.stderr)
        return 1
    sys.path.insert(0, os.getcwd())  # the project's own modules, as a script run there would see them
    import cloudpickle

    with open(sweep_dir / FUNCTION_FILE, "rb") as f:
        fn, modules, number = _unpack(cloudpickle.load(f))
    sys.modules.update(modules)  # the notebook's modules it imports in its body: the kernel's code
    try:
        value = call(fn, params, number)
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
    if inspect.isawaitable(value):
        return asyncio.run(_wait(value))
    if inspect.isgenerator(value):
        return _drain(value, number)
    if inspect.isasyncgen(value):
        return asyncio.run(_adrain(value, number))
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


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
