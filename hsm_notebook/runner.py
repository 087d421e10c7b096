"""The job side of a function sweep: ``python -m hsm_notebook.runner PARAMS_JSON``.

It runs in the task's folder (``HSM_TASK_DIR``) like any job, loads the sweep's function from
``function.pkl`` in the sweep's folder (the task folder's grandparent, here or on the remote,
where the source put it once for the whole sweep), calls ``fn(**params)`` (dotted names nested again: ``model.width`` is ``model={"width": ...}``) and keeps what it
returns: a dict's numbers and strings become the task's metrics (``results()``), and the whole
return value is pickled to ``result.pkl`` (``sweep.result(task_id)``).  An exception prints its
traceback to stderr and exits 1, so the task is FAILED with ``ValueError: ...`` as its error.

Kept light (stdlib, cloudpickle and hsm_notebook.metrics): it starts once per task.
"""

from __future__ import annotations

import json
import os
import pickle
import sys
import traceback
from pathlib import Path

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
    here = "%d.%d" % sys.version_info[:2]
    if wanted and wanted != here:
        print(f"RuntimeError: this job's Python is {here} but the function was pickled by Python {wanted}; "
              "pickles do not cross Python versions: run the jobs with the notebook's Python version",
              file=sys.stderr)
        return 1
    sys.path.insert(0, os.getcwd())  # the project's own modules, as a script run there would see them
    import cloudpickle

    with open(sweep_dir / FUNCTION_FILE, "rb") as f:
        fn = cloudpickle.load(f)
    try:
        value = fn(**params)
    except BaseException:  # noqa: BLE001 - the task's failure, told as it happened where it ran
        traceback.print_exc()
        return 1
    _keep(value, task_dir)
    return 0


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


def _keep(value: object, task_dir: Path) -> None:
    """The return value: pickled whole; a dict's JSON-able scalars also as the task's metrics."""
    import cloudpickle

    tmp = task_dir / (RESULT_FILE + ".tmp")
    with open(tmp, "wb") as f:
        cloudpickle.dump(value, f, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(tmp, task_dir / RESULT_FILE)
    if isinstance(value, dict):
        from hsm_notebook.metrics import log_metrics

        plain = {str(k): v for k, v in value.items()
                 if isinstance(v, (int, float, str, bool)) or v is None or _is_scalar(v)}
        if plain:
            log_metrics({k: (v.item() if _is_scalar(v) else v) for k, v in plain.items()})


def _is_scalar(value: object) -> bool:
    """A numpy scalar (without importing numpy)."""
    return type(value).__module__ == "numpy" and hasattr(value, "item") and getattr(value, "shape", None) == ()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
