"""Adaptive search (issue 21): trial throughput, idle slots, pruning, and the controller's CPU.

    python bench/search.py [--rounds 3] [--quick] [--only throughput,idle,pruning] [--idle-scale 1.0]

1. Throughput.  ``--trials`` (200) trials of a trivial function of two floats, TPE, ``--slots`` (8)
   local slots: ``Sweep(Search(..., sampler="tpe"), trivial, [LocalComputeSource(8)])`` (each
   trial runs ``python -m hsm_notebook.runner``), against Optuna's ``study.optimize(objective,
   n_jobs=8)`` whose objective runs the same function's source in ``subprocess.run([sys.executable,
   "-c", SOURCE, params])`` and reads its value from stdout (in-memory study).  Both use the TPE
   sampler the search makes from "tpe" (multivariate, constant liar, same seed).  Timed: the search
   from ``start()`` to the end of ``wait()`` (study creation included; ``Sweep()`` printed apart),
   the baseline from ``create_study`` to the end of ``optimize``.  Target: trials/s >= 1.0x.  For
   scale, a grid function sweep of as many points (no searcher) is run too, and the jobs' own CPU
   is printed (``RUSAGE_CHILDREN``: both sides reap their jobs).
2. Idle slots.  ``--idle-trials`` (40) trials of uneven length on 4 slots: a trial sleeps for a
   length drawn from its parameters (uniform in ``[1, 10] * --idle-scale`` s through a hash of the
   parameters, so both runs draw from the same distribution), TPE.  Baseline: a batch-barrier loop
   as hydra-optuna-sweeper runs it: ask 4, run the 4 in subprocesses, wait for all, tell them.
   Idle = slot-seconds with no running trial / (4 x makespan, first start to last end); ours from
   the ledger (``status()`` start_time/end_time: the job's wrapper started, its exit code written),
   the loop's from its own timestamps (Popen, exit seen through a pidfd).  Also printed: the idle
   share before the last trial started and the idle slot time per refill (the gaps dispatch leaves,
   without the tail that no scheduler avoids).  Target: ours < 5 % idle (the loop's figure beside
   it).  A smaller ``--idle-scale`` keeps the shape but weighs the fixed per-trial gap more.
3. Pruning.  64 configurations of scikit-learn's SGDClassifier (loss, learning rate, alpha, eta0;
   sampled once with a fixed seed) on load_digits (a fixed 70/30 split), 30 epochs of
   ``partial_fit``, validation accuracy logged each epoch with ``log_metrics(step=epoch,
   val_acc=...)`` (step = epochs done).  Each epoch is padded with a sleep to ``--epoch-pace``
   (0.1) s: the real compute is ~4 ms, far shorter than a poll, so no pruner could stop anything;
   the curves are the real ones, only their pace is set (the controller polls every pace/2).  The
   same 64 points in every run: a define-by-run space picks ``config`` in 0..63 with Optuna's
   GridSampler and returns that configuration's parameters; each round has its own grid order
   (seeded), the same for every run of the round.  Runs: no pruner (the baseline), Hyperband
   (min_resource=1, max_resource=30, reduction_factor=3, as in Optuna's docs) and ASHA (Optuna's
   SuccessiveHalvingPruner, min_resource=1, reduction_factor=3), 4 slots.  Epochs used = steps
   logged, summed over trials (``sweep.metrics()``), those logged after the prune decision
   included; best final accuracy = best ``val_acc`` of the trials that ran all 30 epochs.  Target:
   within 0.5 points of the unpruned best, with <= 40 % of its epochs.

Controller CPU per trial: ``time.process_time()`` of this process (every thread: the package's loop
thread included; the jobs are other processes) around ``start()``..``wait()``, divided by the
trials; the baselines' are measured the same way around their loops.

Rounds alternate the baseline and ours (baseline first); medians are printed with their ratios and
whether each target is met (the script never fails on a miss).  ``--quick``: 1 round, 60 trials,
16 idle trials of 0.1-1 s, ASHA only (about 3 minutes).  Every run is bounded by a deadline;
processes started here are killed by PID and sweeps cancelled in ``finally``.  Linux only
(``os.pidfd_open``).
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import os
import random
import re
import resource
import selectors
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import optuna  # noqa: E402

from hsm_notebook import Float, LocalComputeSource, ParameterSpace, Search, Sweep  # noqa: E402
from hsm_notebook.search.study import make_sampler  # noqa: E402

SEED = 7
IDLE_SLOTS = 4
PRUNE_SLOTS = 4
EPOCHS = 30
N_CONFIGS = 64

# --------------------------------------------------------------------------- the trials' functions
# Defined in __main__, so a function sweep pickles them by value; the baselines' subprocesses run
# their source (inspect.getsource), so both sides run the very same code.


def trivial(x, y):
    """The trivial trial: one number."""
    return (x - 2.0) ** 2 + (y + 1.0) ** 2


def uneven(x, y, low, high):
    """A trial whose length (uniform in [low, high] s) is drawn from its parameters."""
    import random
    import time

    time.sleep(low + (high - low) * random.Random(repr((x, y))).random())
    return (x - 2.0) ** 2 + (y + 1.0) ** 2


def learn(config, loss, learning_rate, alpha, eta0, epochs, pace):
    """SGDClassifier on load_digits, ``epochs`` passes of partial_fit, validation accuracy logged
    after each (step = epochs done); each epoch padded with a sleep to ``pace`` seconds."""
    import time

    import numpy as np
    from sklearn.datasets import load_digits  # type: ignore[import-untyped]
    from sklearn.linear_model import SGDClassifier  # type: ignore[import-untyped]
    from sklearn.model_selection import train_test_split  # type: ignore[import-untyped]

    from hsm_notebook import log_metrics

    X, y = load_digits(return_X_y=True)
    X_train, X_val, y_train, y_val = train_test_split(X / 16.0, y, test_size=0.3, random_state=0, stratify=y)
    classes = np.unique(y)
    clf = SGDClassifier(loss=loss, learning_rate=learning_rate, alpha=alpha, eta0=eta0, random_state=0)
    acc = 0.0
    for epoch in range(1, epochs + 1):
        t0 = time.monotonic()
        clf.partial_fit(X_train, y_train, classes=classes)
        acc = float(clf.score(X_val, y_val))
        time.sleep(max(0.0, pace - (time.monotonic() - t0)))
        log_metrics(step=epoch, val_acc=acc)
    return acc


def _configs() -> list[dict[str, Any]]:
    """The 64 configurations, sampled once (the same in every run and round)."""
    rng = random.Random(SEED)
    return [{"loss": rng.choice(["hinge", "log_loss", "modified_huber", "perceptron"]),
             "learning_rate": rng.choice(["constant", "invscaling", "adaptive"]),
             "alpha": 10 ** rng.uniform(-6, -1), "eta0": 10 ** rng.uniform(-4, 0)} for _ in range(N_CONFIGS)]


CONFIGS = _configs()


def config_space(trial):
    """Define-by-run: one of the 64 configurations, by index (the grid sampler picks the index)."""
    i = trial.suggest_categorical("config", list(range(len(CONFIGS))))
    return {"config": i, **CONFIGS[i]}


class GridOfConfigs(optuna.samplers.GridSampler):
    """Optuna's GridSampler without its ``study.stop()`` once the grid is asked whole: outside
    ``study.optimize`` that call raises RuntimeError from ``tell`` (after the trial is stored).
    The search ends on ``is_exhausted`` anyway."""

    def after_trial(self, study, trial, state, values) -> None:  # noqa: ANN001 - Optuna's signature
        pass


def _child_code(fn: Callable[..., Any]) -> str:
    """What a baseline's subprocess runs: ``fn``'s source, called with the JSON parameters in argv[1]."""
    return (inspect.getsource(fn) + "\nimport json, sys\n"
            f"print(json.dumps({fn.__name__}(**json.loads(sys.argv[1]))))\n")


# --------------------------------------------------------------------------- helpers


def _finish(sweep: Sweep | None) -> None:
    """Cancel a sweep still running (a failed or timed-out round) and wait for it, bounded."""
    if sweep is not None and sweep.running:
        try:
            sweep.cancel()
            sweep.wait(timeout=30)
        except Exception as exc:  # noqa: BLE001 - cleanup: say so, go on
            print(f"   (cleanup of sweep {sweep.id}: {type(exc).__name__}: {exc})", file=sys.stderr)


def _sampler() -> Any:
    """The TPE sampler a search makes from sampler="tpe" (the same settings for the baselines)."""
    return make_sampler({"type": "tpe"}, seed=SEED, space=None)


def _space2() -> dict[str, Float]:
    return {"x": Float(-5.0, 5.0), "y": Float(-5.0, 5.0)}


def _ask2(trial: optuna.Trial) -> dict[str, float]:
    return {"x": trial.suggest_float("x", -5.0, 5.0), "y": trial.suggest_float("y", -5.0, 5.0)}


def run_search(search: Search | ParameterSpace, fn: Callable[..., Any], slots: int, directory: Path,
               workdir: Path, deadline: float, poll_interval: float = 1.0) -> tuple[Sweep, dict[str, float]]:
    """The sweep, run, and its figures: ``seconds`` (start() to the end of wait()), ``cpu`` (this
    process over that span), ``jobs_cpu`` (the jobs' CPU), ``build`` (Sweep() construction)."""
    t0 = time.perf_counter()
    sweep = Sweep(search, fn, [LocalComputeSource(max_parallel_jobs=slots)], objective=_objective(fn),
                  directory=directory, workdir=workdir, poll_interval=poll_interval)
    t1 = time.perf_counter()
    try:
        c1, k1 = time.process_time(), _children_cpu()
        sweep.start().wait(timeout=max(1.0, deadline - time.monotonic()))
        t2, c2, k2 = time.perf_counter(), time.process_time(), _children_cpu()
    except BaseException:
        _finish(sweep)
        raise
    return sweep, {"seconds": t2 - t1, "cpu": c2 - c1, "jobs_cpu": k2 - k1, "build": t1 - t0}


def _children_cpu() -> float:
    """CPU seconds of this process's ended and reaped children (the jobs, and what they waited for)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _objective(fn: Callable[..., Any]) -> dict[str, str]:
    return {"val_acc": "max"} if fn is learn else {"value": "min"}


def _med(values: list[float]) -> float:
    return statistics.median(values)


def _rounds(values: list[float], fmt: str = "{:.2f}") -> str:
    return ", ".join(fmt.format(v) for v in values)


class Table:
    """The printed summary: one row per measured figure."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str, str, str]] = []

    def add(self, case: str, baseline: str, ours: str, ratio: str, target: str) -> None:
        self.rows.append((case, baseline, ours, ratio, target))

    def print(self) -> None:
        head = ("case", "baseline", "ours", "ours/baseline", "target")
        widths = [max(len(r[i]) for r in [head, *self.rows]) for i in range(5)]
        line = "-+-".join("-" * w for w in widths)
        print("\n" + " | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)))
        print(line)
        for r in self.rows:
            print(" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))


def _met(ok: bool) -> str:
    return "MET" if ok else "NOT MET"


# --------------------------------------------------------------------------- 1. throughput


def optuna_n_jobs(n: int, slots: int) -> dict[str, float]:
    """``study.optimize(n_jobs=slots)`` with subprocess trials: seconds, this process's CPU, the jobs' CPU."""
    code = _child_code(trivial)

    def objective(trial: optuna.Trial) -> float:
        out = subprocess.run([sys.executable, "-c", code, json.dumps(_ask2(trial))], capture_output=True, text=True,
                             check=True, timeout=60)
        return float(out.stdout)

    t0, c0, k0 = time.perf_counter(), time.process_time(), _children_cpu()
    study = optuna.create_study(sampler=_sampler(), direction="minimize")
    study.optimize(objective, n_trials=n, n_jobs=slots)
    t1, c1, k1 = time.perf_counter(), time.process_time(), _children_cpu()
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == n, f"optuna: {len(done)} of {n} trials completed"
    return {"seconds": t1 - t0, "cpu": c1 - c0, "jobs_cpu": k1 - k0}


def function_sweep(space: Search | ParameterSpace, n: int, slots: int, directory: Path, workdir: Path
                   ) -> dict[str, float]:
    """A function sweep of ``trivial`` (a search, or a grid of the same number of points), checked."""
    sweep = None
    try:
        sweep, figures = run_search(space, trivial, slots, directory, workdir, time.monotonic() + 120 + 2.0 * n)
        results = sweep.results()
        assert len(results) == n, sweep.counts()
        assert ((results["value"] - trivial(results["x"], results["y"])).abs() < 1e-9).all(), "wrong values"
        return figures
    finally:
        _finish(sweep)
        shutil.rmtree(directory, ignore_errors=True)


def throughput(args, tmp: Path, workdir: Path, table: Table) -> None:
    n, slots = args.trials, args.slots
    rng = random.Random(SEED)
    grid = ParameterSpace(grid={"x": [rng.uniform(-5.0, 5.0) for _ in range(n)]}, fixed={"y": 0.5})
    runs: dict[str, list[dict[str, float]]] = {"optuna": [], "search": [], "grid": []}
    for r in range(args.rounds):
        runs["optuna"].append(optuna_n_jobs(n, slots))
        runs["search"].append(function_sweep(Search(_space2(), n_trials=n, sampler="tpe", seed=SEED), n, slots,
                                             tmp / f"throughput-{r}", workdir))
        runs["grid"].append(function_sweep(grid, n, slots, tmp / f"throughput-grid-{r}", workdir))
    med = {k: {f: _med([run[f] for run in rs]) for f in rs[0]} for k, rs in runs.items()}
    base, ours, grid_ = med["optuna"], med["search"], med["grid"]
    ratio = base["seconds"] / ours["seconds"]
    print(f"\n== 1. throughput: {n} trials of a trivial function, TPE, {slots} local slots, "
          f"{args.rounds} rounds alternated, medians")
    for key, label in (("optuna", f"optuna optimize(n_jobs={slots}) + subprocess.run"),
                       ("search", "hsm_notebook Search (function sweep)"),
                       ("grid", f"for scale: a grid function sweep of {n} points")):
        m = med[key]
        print(f"{label:48}: {m['seconds']:6.2f} s, {n / m['seconds']:6.1f} trials/s, controller CPU "
              f"{m['cpu'] / n * 1e3:5.1f} ms/trial, jobs' CPU {m['jobs_cpu'] / n * 1e3:5.1f} ms/trial   "
              f"(rounds: {_rounds([x['seconds'] for x in runs[key]])} s)")
    if "build" in ours:
        print(f"   + Sweep() construction of the search: {ours['build'] * 1e3:.0f} ms, not timed above")
    table.add(f"1. {n} trials, TPE, {slots} slots: trials/s", f"{n / base['seconds']:.1f}",
              f"{n / ours['seconds']:.1f}", f"{ratio:.2f}x", f">= 1.0x: {_met(ratio >= 1.0)}")
    table.add("   controller CPU per trial", f"{base['cpu'] / n * 1e3:.1f} ms", f"{ours['cpu'] / n * 1e3:.1f} ms",
              f"{ours['cpu'] / base['cpu']:.2f}x", "(reported)")
    table.add("   jobs' CPU per trial (reaped children)", f"{base['jobs_cpu'] / n * 1e3:.1f} ms",
              f"{ours['jobs_cpu'] / n * 1e3:.1f} ms", f"{ours['jobs_cpu'] / base['jobs_cpu']:.2f}x", "(reported)")
    table.add(f"   same {n} points as a grid sweep (no searcher): trials/s", f"{n / base['seconds']:.1f}",
              f"{n / grid_['seconds']:.1f}", f"{base['seconds'] / grid_['seconds']:.2f}x", "(reported)")
    table.add("   grid sweep: controller CPU per trial", f"{base['cpu'] / n * 1e3:.1f} ms",
              f"{grid_['cpu'] / n * 1e3:.1f} ms", f"{grid_['cpu'] / base['cpu']:.2f}x", "(reported)")


# --------------------------------------------------------------------------- 2. idle slots


def idle_figures(spans: list[tuple[float, float]], slots: int) -> dict[str, float]:
    """Idle share over the makespan (first start to last end); idle share and idle slot-seconds per
    refill from the first start to the last start (the gaps dispatch leaves, without the tail)."""
    first = min(s for s, _ in spans)
    last_end = max(e for _, e in spans)
    last_start = max(s for s, _ in spans)
    busy = sum(e - s for s, e in spans)
    busy_early = sum(max(0.0, min(e, last_start) - s) for s, e in spans)
    idle_early = slots * (last_start - first) - busy_early
    return {"idle": 1.0 - busy / (slots * (last_end - first)),
            "early": idle_early / (slots * (last_start - first)) if last_start > first else 0.0,
            "gap": idle_early / max(1, len(spans) - slots), "makespan": last_end - first}


def barrier_loop(n: int, slots: int, low: float, high: float, deadline: float) -> dict[str, float]:
    """hydra-optuna-sweeper's loop: ask ``slots`` trials, run them in subprocesses, wait for all,
    tell them; its idle figures and CPU."""
    code = _child_code(uneven)
    study = optuna.create_study(sampler=_sampler(), direction="minimize")
    spans: list[tuple[float, float]] = []
    c0 = time.process_time()
    sel = selectors.DefaultSelector()
    running: dict[int, tuple[subprocess.Popen, Any, float]] = {}  # pidfd -> (process, trial, start)
    try:
        while len(spans) < n:
            batch = [study.ask() for _ in range(min(slots, n - len(spans)))]
            for trial in batch:
                params = {**_ask2(trial), "low": low, "high": high}
                start = time.time()
                proc = subprocess.Popen([sys.executable, "-c", code, json.dumps(params)], stdin=subprocess.DEVNULL,
                                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
                fd = os.pidfd_open(proc.pid)
                running[fd] = (proc, trial, start)
                sel.register(fd, selectors.EVENT_READ)
            ended = []
            while running:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"barrier loop: {len(spans)} of {n} done at the deadline")
                for key, _ in sel.select(timeout=left):
                    end = time.time()
                    sel.unregister(key.fd)
                    os.close(key.fd)
                    proc, trial, start = running.pop(key.fd)
                    out, _ = proc.communicate()
                    if proc.returncode != 0:
                        raise RuntimeError(f"barrier loop: trial {trial.number} exited {proc.returncode}")
                    spans.append((start, end))
                    ended.append((trial, float(out)))
            for trial, value in ended:  # the barrier: all are told once all ended
                study.tell(trial, value)
        return {**idle_figures(spans, slots), "cpu": time.process_time() - c0}
    finally:
        for fd, (proc, _, _) in running.items():
            proc.kill()
            proc.wait()
            os.close(fd)
        sel.close()


def idle_search(n: int, slots: int, low: float, high: float, directory: Path, workdir: Path,
                deadline: float) -> dict[str, float]:
    """The search's idle figures, from the ledger's start and end times, and its CPU."""
    sweep = None
    try:
        search = Search(_space2(), n_trials=n, sampler="tpe", seed=SEED, fixed={"low": low, "high": high})
        sweep, figures = run_search(search, uneven, slots, directory, workdir, deadline)
        status = sweep.status()
        assert (status["state"] == "COMPLETED").sum() == n, sweep.counts()
        t0 = status["start_time"].min()
        spans = list(zip((status["start_time"] - t0).dt.total_seconds(),
                         (status["end_time"] - t0).dt.total_seconds(), strict=True))
        return {**idle_figures(spans, slots), "cpu": figures["cpu"]}
    finally:
        _finish(sweep)
        shutil.rmtree(directory, ignore_errors=True)


def idle(args, tmp: Path, workdir: Path, table: Table) -> None:
    n, slots = args.idle_trials, IDLE_SLOTS
    low, high = 1.0 * args.idle_scale, 10.0 * args.idle_scale
    runs: dict[str, list[dict[str, float]]] = {"barrier": [], "search": []}
    for r in range(args.rounds):
        deadline = time.monotonic() + 120 + 3.0 * n * high / slots
        runs["barrier"].append(barrier_loop(n, slots, low, high, deadline))
        runs["search"].append(idle_search(n, slots, low, high, tmp / f"idle-{r}", workdir,
                                          time.monotonic() + 120 + 3.0 * n * high / slots))
    med = {k: {f: _med([run[f] for run in rs]) for f in rs[0]} for k, rs in runs.items()}
    base, ours = med["barrier"], med["search"]
    scaled = "the issue's lengths" if args.idle_scale == 1.0 else f"the issue's 1-10 s x {args.idle_scale:g}"
    print(f"\n== 2. idle slots: {n} trials of {low:g}-{high:g} s ({scaled}), TPE, {slots} slots, "
          f"{args.rounds} rounds alternated, medians")
    for key, label in (("barrier", f"batch-barrier loop (ask {slots}, wait all, tell)"),
                       ("search", "hsm_notebook Search")):
        m = med[key]
        print(f"{label:43}: idle {m['idle']:6.1%} of the makespan ({m['makespan']:.1f} s), {m['early']:6.1%} "
              f"before the last start ({m['gap'] * 1e3:.0f} ms idle slot time per refill), CPU "
              f"{m['cpu'] / n * 1e3:.1f} ms/trial   (rounds: {_rounds([x['idle'] for x in runs[key]], '{:.1%}')})")
    table.add(f"2. {n} trials of {low:g}-{high:g} s, {slots} slots: idle slot time", f"{base['idle']:.1%}",
              f"{ours['idle']:.1%}", f"{ours['idle'] / base['idle']:.2f}x", f"< 5 %: {_met(ours['idle'] < 0.05)}")
    table.add("   idle before the last trial start (no tail)", f"{base['early']:.1%}", f"{ours['early']:.1%}",
              f"{ours['early'] / base['early']:.2f}x", "(reported)")
    table.add("   idle slot time per refill, before the last start", f"{base['gap'] * 1e3:.0f} ms",
              f"{ours['gap'] * 1e3:.0f} ms", f"{ours['gap'] / base['gap']:.2f}x", "(reported)")
    table.add("   makespan", f"{base['makespan']:.1f} s", f"{ours['makespan']:.1f} s",
              f"{ours['makespan'] / base['makespan']:.2f}x", "(reported)")
    table.add("   controller CPU per trial", f"{base['cpu'] / n * 1e3:.1f} ms", f"{ours['cpu'] / n * 1e3:.1f} ms",
              f"{ours['cpu'] / base['cpu']:.2f}x", "(reported)")


# --------------------------------------------------------------------------- 3. pruning

PRUNERS: dict[str, Any] = {
    "none": None,
    "hyperband": {"type": "hyperband", "min_resource": 1, "max_resource": EPOCHS, "reduction_factor": 3},
    "asha": {"type": "asha", "min_resource": 1, "reduction_factor": 3},
}
_PRUNED_AT = re.compile(r"pruned at step (\d+)")


def pruning_run(pruner: Any, order: int, args, directory: Path, workdir: Path) -> dict[str, float]:
    """One search of the 64 configurations, the grid in the order seeded by ``order``."""
    search = Search(config_space, n_trials=N_CONFIGS, sampler=GridOfConfigs({"config": list(range(N_CONFIGS))},
                                                                           seed=order),
                    pruner=pruner, fixed={"epochs": EPOCHS, "pace": args.epoch_pace})
    deadline = time.monotonic() + 300 + 4.0 * N_CONFIGS * EPOCHS * args.epoch_pace / PRUNE_SLOTS
    sweep = None
    try:
        sweep, figures = run_search(search, learn, PRUNE_SLOTS, directory, workdir, deadline,
                                    poll_interval=args.epoch_pace / 2)
        counts = sweep.counts()
        assert counts.get("COMPLETED", 0) + counts.get("PRUNED", 0) == N_CONFIGS, counts
        steps = sweep.metrics(metric="val_acc")
        logged = steps.groupby("task_id").size()
        status = sweep.status().set_index("task_id")
        to_first = (steps.groupby("task_id")["time"].min() - status["start_time"]).dt.total_seconds().median()
        late = 0  # epochs logged after the step at which the trial was pruned
        for tid, row in status[status["state"] == "PRUNED"].iterrows():
            match = _PRUNED_AT.search(str(row["error"]))
            late += max(0, int(logged.get(tid, 0)) - int(match.group(1))) if match else 0
        results = sweep.results()
        full = results[results["val_acc"].notna()]
        best = full.loc[full["val_acc"].idxmax()]
        return {"epochs": float(logged.sum()), "late": float(late), "best": float(best["val_acc"]),
                "best_config": float(best["config"]), "best_trial": float(status.loc[best["task_id"], "trial"]),
                "completed": float(counts.get("COMPLETED", 0)), "pruned": float(counts.get("PRUNED", 0)),
                "to_first": float(to_first), **figures}
    finally:
        _finish(sweep)
        shutil.rmtree(directory, ignore_errors=True)


def pruning(args, tmp: Path, workdir: Path, table: Table) -> None:
    names = ["none", *args.pruners]
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    for r in range(args.rounds):  # each round its own grid order, the same for every run in it
        for name in names:
            runs[name].append(pruning_run(PRUNERS[name], SEED + r, args, tmp / f"prune-{name}-{r}", workdir))
    full = N_CONFIGS * EPOCHS
    med = {name: {k: _med([run[k] for run in rs]) for k in rs[0]} for name, rs in runs.items()}
    base = med["none"]
    print(f"\n== 3. pruning: {N_CONFIGS} SGDClassifier configurations on load_digits, {EPOCHS} epochs paced to "
          f"{args.epoch_pace:g} s, {PRUNE_SLOTS} slots, {args.rounds} rounds alternated (grid order seeded "
          f"{SEED}..{SEED + args.rounds - 1}), medians")
    for name in names:
        m, rs = med[name], runs[name]
        print(f"{name:9}: best final val_acc {m['best']:.4f}, epochs {m['epochs']:.0f} of {full} "
              f"({m['epochs'] / full:.1%}; {m['late']:.0f} after a prune decision), {m['completed']:.0f} completed, "
              f"{m['pruned']:.0f} pruned, {m['seconds']:.1f} s, controller CPU {m['cpu'] / N_CONFIGS * 1e3:.1f} "
              f"ms/trial ({m['cpu'] / m['epochs'] * 1e3:.1f} ms/epoch logged); a trial's first epoch came "
              f"{m['to_first']:.1f} s after its start (imports, data)")
        print("           rounds: " + "; ".join(
            f"best {x['best']:.4f} (config {x['best_config']:.0f}, trial {x['best_trial']:.0f}), "
            f"{x['epochs']:.0f} epochs" for x in rs))
    table.add(f"3. {N_CONFIGS} configs x {EPOCHS} epochs, unpruned: best final val_acc", f"{base['best']:.2%}", "",
              "", "")
    for name in args.pruners:
        m = med[name]
        gap = (base["best"] - m["best"]) * 100
        share = m["epochs"] / base["epochs"]
        table.add(f"   {name}: best final val_acc (points below)", f"{base['best']:.2%}", f"{m['best']:.2%}",
                  f"{gap:.2f} pts", f"<= 0.5 pts: {_met(gap <= 0.5)}")
        table.add(f"   {name}: epochs used", f"{base['epochs']:.0f}", f"{m['epochs']:.0f}", f"{share:.1%}",
                  f"<= 40 %: {_met(share <= 0.40)}")
        table.add(f"   {name}: wall time", f"{base['seconds']:.1f} s", f"{m['seconds']:.1f} s",
                  f"{m['seconds'] / base['seconds']:.2f}x", "(reported)")
        table.add(f"   {name}: controller CPU per trial", f"{base['cpu'] / N_CONFIGS * 1e3:.1f} ms",
                  f"{m['cpu'] / N_CONFIGS * 1e3:.1f} ms", f"{m['cpu'] / base['cpu']:.2f}x", "(reported)")


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--trials", type=int, default=200, help="throughput: trials per run")
    parser.add_argument("--slots", type=int, default=8, help="throughput: local slots")
    parser.add_argument("--idle-trials", type=int, default=40, help="idle: trials per run")
    parser.add_argument("--idle-scale", type=float, default=1.0, help="idle: trial lengths are 1-10 s times this")
    parser.add_argument("--epoch-pace", type=float, default=0.1, help="pruning: seconds per epoch (padded)")
    parser.add_argument("--pruners", default="hyperband,asha", help="pruning: of " + ", ".join(list(PRUNERS)[1:]))
    parser.add_argument("--only", default="throughput,idle,pruning", help="the cases to run, comma-separated")
    parser.add_argument("--quick", action="store_true",
                        help="a short run: 1 round, 60 trials, 16 idle trials of 0.1-1 s, ASHA only")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.trials, args.idle_trials, args.idle_scale, args.pruners = 1, 60, 16, 0.1, "asha"
    args.pruners = [p for p in args.pruners.split(",") if p]
    unknown = [p for p in args.pruners if p not in PRUNERS or p == "none"]
    if unknown:
        parser.error(f"--pruners: unknown {unknown}; choose from {', '.join(list(PRUNERS)[1:])}")
    cases = {"throughput": throughput, "idle": idle, "pruning": pruning}
    only = [c for c in args.only.split(",") if c]
    if not only or set(only) - set(cases):
        parser.error(f"--only: choose from {', '.join(cases)}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("hsm_notebook").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    print(f"interpreter: {sys.executable}; Optuna {optuna.__version__}; {os.cpu_count()} CPUs")
    t0 = time.perf_counter()
    table = Table()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        workdir = tmp_path / "project"
        workdir.mkdir()
        for name in only:
            cases[name](args, tmp_path, workdir, table)
    table.print()
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
