"""``python -m hsm_notebook``: run, resume or inspect a sweep without a notebook."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from .core.model.errors import HsmError
from .core.model.state import JobState
from .core.sweep import Sweep
from .examples import SWEEP_YAML


def _follow(sweep: Sweep, out=sys.stdout) -> None:
    """Print a progress line whenever the counts change, until the sweep ends."""
    last = None
    while True:
        finished = not sweep.running
        counts = sweep.counts()
        total = sum(counts.values())
        done = sum(n for s, n in counts.items() if JobState(s).is_terminal)
        line = f"{done}/{total} done  " + "  ".join(f"{s}={n}" for s, n in sorted(counts.items()))
        if line != last:
            print(line, file=out, flush=True)
            last = line
        if finished:
            sweep.wait()
            return
        time.sleep(0.5)


def _report(sweep: Sweep, out=sys.stdout) -> int:
    import pandas as pd

    with pd.option_context("display.width", 160, "display.max_columns", 20, "display.max_rows", 200):
        results = sweep.results()
        print(f"\nResults ({len(results)} completed) in {sweep.directory}:", file=out)
        print(results.drop(columns=["task_id"]).to_string(index=False) if len(results) else "(none)", file=out)
        failed = sweep.status().query("state not in ('COMPLETED', 'PRUNED')")  # a pruned trial ended as meant
        if len(failed):
            print(f"\n{len(failed)} task(s) did not complete:", file=out)
            print(failed[["task_id", "state", "exit_code", "error"]].to_string(index=False), file=out)
    return 0 if not len(failed) else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hsm_notebook", description=__doc__)
    sub = parser.add_subparsers(dest="cmd")
    run = sub.add_parser("run", help="run a sweep file on this machine (default: the bundled example)")
    run.add_argument("sweep_file", nargs="?", default=str(SWEEP_YAML))
    run.add_argument("--dir", help="sweep directory (default: ./sweeps/<sweep id>)")
    run.add_argument("--parallel", type=int, help="run on this machine only, this many jobs at once")
    run.add_argument("--command", help="command to run, e.g. 'python train.py' (overrides the file)")
    run.add_argument("--no-project", action="store_true",
                     help="ignore the reference HSM project config (.hsm/config.yaml) of this folder")
    attach = sub.add_parser("attach", help="resume a sweep directory and wait for it")
    attach.add_argument("directory")
    status = sub.add_parser("status", help="print a sweep's status table")
    status.add_argument("directory")
    args = parser.parse_args(argv)
    try:
        if args.cmd in (None, "run"):
            from .sources import LocalComputeSource

            sweep_file = getattr(args, "sweep_file", str(SWEEP_YAML))
            sources = [LocalComputeSource(max_parallel_jobs=args.parallel)] if getattr(args, "parallel", None) else None
            sweep = Sweep.from_yaml(sweep_file, sources, directory=getattr(args, "dir", None), reattach=False,
                                    project=False if getattr(args, "no_project", False) else None,
                                    **({"command": args.command} if getattr(args, "command", None) else {}))
            search = sweep.search
            what = (f"a search of {search.n_trials or 'up to ' + format(search.timeout, 'g') + ' s of'} trials"
                    if search is not None else f"{sweep.counts().get('PENDING', 0)} tasks")
            print(f"Sweep {sweep.id}: {what} from {sweep_file}")
            project = (sweep.record.get("origin") or {}).get("project")
            if project:
                print(f"Project config {project['path']}: runs `{' '.join(sweep.template.command)}` in "
                      f"{project['root']} on {', '.join(s.name for s in sweep.sources)}")
            sweep.start()
            _follow(sweep)
            return _report(sweep)
        if args.cmd == "attach":
            sweep = Sweep.attach(Path(args.directory))
            _follow(sweep)
            return _report(sweep)
        sweep = Sweep.attach(Path(args.directory), resume=False)
        print(sweep.status().to_string(index=False))
        return 0
    except HsmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
