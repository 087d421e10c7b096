"""Short scikit-learn function tasks on 2 local slots: forked from a warm interpreter vs new interpreters
vs Optuna's in-process threads.

    python bench/warm.py [--rounds 5] [--slots 2]

The work: 12 configurations of ``fit(loss, alpha)`` (loss in hinge, log_loss, modified_huber; alpha in
1e-5..1e-2), each a 5-fold ``cross_val_score`` of scikit-learn's ``SGDClassifier(max_iter=100,
tol=None, random_state=0)`` on ``load_digits`` (shipped with scikit-learn; 0.3 to 0.9 s of CPU here),
scikit-learn imported inside the function, as a notebook cell would (defined in ``__main__``, so a sweep
pickles it by value).  Three ways, each in a new Python process per run (``optuna`` and
``hsm_notebook`` imported before the clock starts; scikit-learn after, so every way imports it at
least once):

1. ``optuna``: Optuna's ``study.optimize(objective, n_trials=12, n_jobs=2)`` (threads, in-memory
   study), the 12 configurations enqueued (``enqueue_trial``), the objective calling ``fit``.  Timed
   from ``create_study`` to the end of ``optimize``.
2. ``new``: today's path before this change, ``LocalComputeSource(2, warm=False)``: each task is a new
   interpreter (``python -m hsm_notebook.runner``) that unpickles the function and imports
   scikit-learn again.
3. ``warm``: ``LocalComputeSource(2)``: the tasks fork from one warm interpreter that loaded the
   function and imported scikit-learn once (``hsm_notebook/sources/warm.py``); each is still its own
   process and job.
Sweeps are timed from ``start()`` to every row in ``results()`` (``Sweep()`` printed apart, as in
bench/functions.py), ``poll_interval=0.05``.  CPU: ``RUSAGE_SELF`` + ``RUSAGE_CHILDREN`` of the run's
process at its end (the jobs, and the fork server with the jobs it reaped, are its children), so it
holds every process the way used.  Every run checks that it got the 12 accuracies, equal across ways.

Rounds alternate the order of the ways (optuna, new, warm; then warm, new, optuna); medians are
printed with their ratio to Optuna and whether the target is met (warm within 1.2x Optuna's time);
the script never fails on a miss.  Runs are bounded (a timeout per run); processes are this script's
children, waited for.  Linux only.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOSSES = ["hinge", "log_loss", "modified_huber"]
ALPHAS = [1e-5, 1e-4, 1e-3, 1e-2]
WAYS = ("optuna", "new", "warm")
TARGET = 1.2  # warm's time / Optuna's in-process time


def fit(loss: str, alpha: float) -> dict:
    """One task: a 5-fold cross-validated SGDClassifier on the digits."""
    from sklearn.datasets import load_digits  # type: ignore[import-untyped]
    from sklearn.linear_model import SGDClassifier  # type: ignore[import-untyped]
    from sklearn.model_selection import cross_val_score  # type: ignore[import-untyped]

    X, y = load_digits(return_X_y=True)
    model = SGDClassifier(loss=loss, alpha=alpha, max_iter=100, tol=None, random_state=0)
    return {"acc": float(cross_val_score(model, X, y, cv=5).mean())}


def _cpu() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def run_optuna(slots: int) -> dict:
    import logging

    import optuna

    optuna.logging.set_verbosity(logging.WARNING)
    t0, c0 = time.perf_counter(), _cpu()
    study = optuna.create_study(direction="maximize")
    for loss in LOSSES:
        for alpha in ALPHAS:
            study.enqueue_trial({"loss": loss, "alpha": alpha})

    def objective(trial: optuna.Trial) -> float:
        return fit(trial.suggest_categorical("loss", LOSSES), trial.suggest_categorical("alpha", ALPHAS))["acc"]

    study.optimize(objective, n_trials=len(LOSSES) * len(ALPHAS), n_jobs=slots)
    wall, cpu = time.perf_counter() - t0, _cpu() - c0
    accs = {f"{t.params['loss']}/{t.params['alpha']}": round(float(t.value or 0.0), 6) for t in study.trials}
    return {"wall": wall, "cpu": cpu, "accs": accs}


def run_sweep(slots: int, warm: bool, folder: Path) -> dict:
    from hsm_notebook import LocalComputeSource, ParameterSpace, Sweep

    t0 = time.perf_counter()
    source = LocalComputeSource(max_parallel_jobs=slots, warm=warm)
    sweep = Sweep(ParameterSpace(grid={"loss": LOSSES, "alpha": ALPHAS}), fit, [source], directory=folder,
                  poll_interval=0.05)
    t1, c1 = time.perf_counter(), _cpu()
    try:
        sweep.start().wait(timeout=600)
        results = sweep.results()
    finally:
        if sweep.running:
            sweep.cancel()
            sweep.wait(timeout=60)
    wall, cpu = time.perf_counter() - t1, _cpu() - c1
    if len(results) != len(LOSSES) * len(ALPHAS):
        raise RuntimeError(f"{len(results)} results: {sweep.status()[['state', 'error']].to_dict('records')}")
    accs = {f"{r.loss}/{r.alpha}": round(r.acc, 6) for r in results.itertuples()}
    return {"wall": wall, "cpu": cpu, "create": t1 - t0, "accs": accs, "how": source.warm_state}


def one(way: str, slots: int, folder: Path) -> None:
    """A child process: one run of one way, its figures as a JSON line."""
    import optuna  # noqa: F401 - imported before the clock, as a kernel would have it

    import hsm_notebook.core.sweep  # noqa: F401

    out = run_optuna(slots) if way == "optuna" else run_sweep(slots, way == "warm", folder)
    print(json.dumps(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--one", choices=WAYS, help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        one(args.one, args.slots, Path(args.folder))
        return
    root = Path(tempfile.mkdtemp(prefix="hsm-bench-warm-"))
    runs: dict[str, list[dict]] = {way: [] for way in WAYS}
    print(f"12 scikit-learn tasks, {args.slots} slots, {args.rounds} rounds, {sys.executable}, "
          f"load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    try:
        for r in range(args.rounds):
            for way in WAYS if r % 2 == 0 else WAYS[::-1]:
                folder = root / f"{way}-{r}"
                out = subprocess.run([sys.executable, __file__, "--one", way, "--slots", str(args.slots),
                                      "--folder", str(folder)], capture_output=True, text=True, timeout=900,
                                     env={**os.environ, "PYTHONPATH": str(ROOT)})
                if out.returncode != 0:
                    print(f"  round {r + 1} {way}: failed\n{out.stderr[-3000:]}")
                    continue
                result = json.loads(out.stdout.strip().splitlines()[-1])
                runs[way].append(result)
                print(f"  round {r + 1} {way:6s} {result['wall']:6.2f} s wall, {result['cpu']:6.2f} s CPU"
                      + (f"  ({result['how']})" if "how" in result else "") + f"  load {os.getloadavg()[0]:.1f}",
                      flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    accs = {json.dumps(run["accs"], sort_keys=True) for way in WAYS for run in runs[way]}
    print(f"accuracies equal across ways and rounds: {len(accs) == 1}")
    if not all(runs[way] for way in WAYS):
        print("a way has no run: no ratio")
        return
    wall = {way: statistics.median(x["wall"] for x in runs[way]) for way in WAYS}
    cpu = {way: statistics.median(x["cpu"] for x in runs[way]) for way in WAYS}
    print(f"\n{'way':8s} {'wall s':>8s} {'x optuna':>9s} {'CPU s':>8s} {'x optuna':>9s}")
    for way in WAYS:
        print(f"{way:8s} {wall[way]:8.2f} {wall[way] / wall['optuna']:9.2f} {cpu[way]:8.2f} "
              f"{cpu[way] / cpu['optuna']:9.2f}")
    ratio = wall["warm"] / wall["optuna"]
    print(f"\nwarm / optuna wall: {ratio:.2f} (target <= {TARGET}: {'met' if ratio <= TARGET else 'MISSED'}); "
          f"new / warm: {wall['new'] / wall['warm']:.2f}x")


if __name__ == "__main__":
    main()
