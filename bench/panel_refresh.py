"""Panel refresh cost: kernel CPU time and bytes to the front end, for 100 / 1,000 / 10,000 tasks,
and for the Results tab with live curves (100 running tasks of 1,000 steps each).

    python bench/panel_refresh.py

Each sweep's ledger is filled with a realistic mix of states (60 % completed with
metrics, 10 % failed, 10 % running, the rest pending) through the store's own
transition calls; no jobs run.  Measured per size:

- one refresh after one task changed state (what the refresh thread does while a
  sweep runs), in process CPU time, median of 30 rounds;
- bytes of widget messages that refresh sends (``Widget._send`` is counted: only the
  widget values that changed are sent);
- the naive baseline measured in the same rounds, alternated with ours: rebuild
  ``status()`` and render the whole table as HTML, as a view that re-draws everything would.

The live-curves case (the issue's target) is a sweep of 1,000 or 10,000 finished tasks plus
100 RUNNING ones, each with 1,000 steps of ``loss`` in the ledger's ``steps`` table, shown on
the Results tab.  A round appends one step to every running task (what one poll brings) and
times the refresh that follows; the two sizes alternate round by round, each with its naive
baseline (the whole status and results grid as HTML).  Bytes per refresh must not grow with
the number of finished tasks.  The charts are Plotly FigureWidgets (issue 22): the bytes are the
widget messages, binary buffers (float32 curve points) included; the tab's first draw (the two
figures, each with Plotly's JavaScript in its state) and the refresh after a task ended (the view
under the curves drawn again) are printed too, outside the targets.  Targets: < 50 ms kernel CPU
and < 50 KB per refresh at 10,000 tasks with 100 live curves; the figures are printed with whether
they are met (never a failure).
"""

from __future__ import annotations

import collections
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ipywidgets  # noqa: E402

from hsm_notebook import JobOutcome, JobState, ParameterSpace, Sweep  # noqa: E402
from hsm_notebook.core.ledger import steps  # noqa: E402
from hsm_notebook.ui import SweepPanel  # noqa: E402

SENT = {"bytes": 0, "messages": 0}
#: Bytes per "WidgetClass.trait" (the values that changed), for telling where a refresh's bytes go.
SENT_BY: collections.Counter = collections.Counter()
_original_send = ipywidgets.Widget._send

ROUNDS = 30
LIVE_RUNNING, LIVE_STEPS, LIVE_ROUNDS = 100, 1000, 15
TARGET_MS, TARGET_BYTES = 50, 50_000
RESULTS_TAB = 4


def _counting_send(self, msg, buffers=None):
    size = len(json.dumps(msg, default=str)) + sum(memoryview(b).nbytes for b in (buffers or []))
    SENT["bytes"] += size
    SENT["messages"] += 1
    for key in (msg.get("state") or {}) if isinstance(msg, dict) else ():
        SENT_BY[f"{type(self).__name__}.{key}"] += len(json.dumps(msg["state"][key], default=str))
    return _original_send(self, msg, buffers)


ipywidgets.Widget._send = _counting_send


def _reset_sent() -> None:
    SENT["bytes"] = SENT["messages"] = 0
    SENT_BY.clear()


def _grid(n: int) -> ParameterSpace:
    return ParameterSpace(grid={"lr": [1e-4, 3e-4, 1e-3, 3e-3, 1e-2], "i": list(range(n // 5))})


def make_sweep(n: int, root: Path) -> Sweep:
    space = _grid(n)
    sweep = Sweep(space, [sys.executable, "-c", "pass"], directory=root / f"s{n}", workdir=root)
    store = sweep.store
    ids = [tid for tid, _ in space.with_ids()]
    with store.transaction():
        for k, tid in enumerate(ids):
            r = k % 10
            if r >= 8:
                continue  # pending
            attempt, _ = store.begin_attempt(tid, "local")
            store.set_state(tid, attempt, JobState.RUNNING, job_id=f"j{k}")
            if r < 6:
                store.finish(tid, attempt, JobOutcome(JobState.COMPLETED, 0, None, {"loss": k / n, "acc": 1 - k / n}))
            elif r == 6:
                store.finish(tid, attempt, JobOutcome(JobState.FAILED, 1, "exit code 1: boom"))
    store.close()
    return sweep, ids


def _advance(sweep: Sweep, tid: str) -> None:
    """One task changes state: a pending one is submitted, a submitted one starts running (so a
    sweep with fewer pending tasks than rounds still changes once per round)."""
    store = sweep.store
    begun = store.begin_attempt(tid, "local")
    if begun is None:
        store.set_state(tid, sweep.task(tid)["attempt"], JobState.RUNNING, job_id=f"r-{tid}")
    store.close()


def _naive(sweep: Sweep) -> tuple[float, int]:
    """CPU seconds and bytes of re-rendering the whole status table."""
    t0 = time.process_time()
    naive = sweep.status().to_html()
    return time.process_time() - t0, len(naive)


def measure(n: int, root: Path) -> dict:
    sweep, ids = make_sweep(n, root)
    panel = SweepPanel(sweep, refresh_interval=3600)  # the refresh thread stays idle; we drive it
    pending = [t for k, t in enumerate(ids) if k % 10 >= 8]
    cpu, sent, naive_cpu, naive_bytes = [], [], [], []
    for k in range(ROUNDS):
        _advance(sweep, pending[k % len(pending)])
        _reset_sent()
        t0 = time.process_time()
        panel.refresh()
        cpu.append(time.process_time() - t0)
        sent.append(SENT["bytes"])
        seconds, size = _naive(sweep)  # the baseline, in the same round
        naive_cpu.append(seconds)
        naive_bytes.append(size)
    panel.close()
    return {"n": n, "refresh_ms": statistics.median(cpu) * 1e3, "bytes": statistics.median(sent),
            "naive_ms": statistics.median(naive_cpu) * 1e3, "naive_bytes": int(statistics.median(naive_bytes))}


# -- the target: live curves on the Results tab ------------------------------------------
def _loss(k: int, step: float) -> float:
    """A plausible training curve, different for each task."""
    return 0.2 + (1 + (k % 13) / 10) / (1 + step / 100) + ((k * 7919 + int(step) * 31) % 100) / 5000


def make_live_sweep(finished: int, root: Path) -> tuple[Sweep, list[tuple[str, int, int]]]:
    """``finished`` completed tasks with final metrics plus ``LIVE_RUNNING`` RUNNING tasks, each with
    ``LIVE_STEPS`` steps of ``loss`` written straight into the ledger's ``steps`` table."""
    space = _grid(finished + LIVE_RUNNING)
    sweep = Sweep(space, [sys.executable, "-c", "pass"], directory=root / f"live{finished}", workdir=root,
                  objective={"loss": "min"})
    store = sweep.store
    running = []
    t0 = time.time() - LIVE_STEPS
    with store.transaction() as conn:
        for k, (tid, _) in enumerate(space.with_ids()):
            attempt, _ = store.begin_attempt(tid, "local")
            store.set_state(tid, attempt, JobState.RUNNING, job_id=f"j{k}")
            if k < finished:
                final = _loss(k, LIVE_STEPS)
                store.finish(tid, attempt, JobOutcome(JobState.COMPLETED, 0, None, {"loss": final, "acc": 1 - final}))
            else:
                steps.insert(conn, tid, attempt, [(1, s, "loss", _loss(k, s), t0 + s) for s in range(LIVE_STEPS)])
                running.append((tid, attempt, k))
    store.close()
    return sweep, running


def _poll(sweep: Sweep, running: list[tuple[str, int, int]], step: int) -> None:
    """What one poll brings while the sweep runs: one new step of every running task."""
    with sweep.store.transaction() as conn:
        for tid, attempt, k in running:
            steps.insert(conn, tid, attempt, [(1, step, "loss", _loss(k, step), time.time())])
    sweep.store.close()


def _naive_live(sweep: Sweep) -> tuple[float, int]:
    """CPU seconds and bytes of re-rendering every task's row with its metrics (status + results)."""
    t0 = time.process_time()
    status, results = sweep.status(), sweep.results()
    naive = status.merge(results[["task_id", "loss", "acc"]], on="task_id", how="left").to_html()
    return time.process_time() - t0, len(naive)


def measure_live(sizes: tuple[int, ...], root: Path) -> list[dict]:
    """Alternated rounds over the sizes (the order flips each round), one new step per running task
    then one timed refresh of the Results tab, and the naive baseline in the same round."""
    cases = []
    for finished in sizes:
        sweep, running = make_live_sweep(finished, root)
        panel = SweepPanel(sweep, refresh_interval=3600)
        _reset_sent()
        t0 = time.process_time()
        panel.tabs.selected_index = RESULTS_TAB  # draws once (warm-up, not counted in the rounds)
        first = {"ms": (time.process_time() - t0) * 1e3, "bytes": SENT["bytes"]}
        cases.append({"finished": finished, "sweep": sweep, "running": running, "panel": panel, "first": first,
                      "cpu": [], "bytes": [], "naive_cpu": [], "naive_bytes": [], "by": collections.Counter()})
    for r in range(LIVE_ROUNDS):
        for case in (cases if r % 2 == 0 else cases[::-1]):
            _poll(case["sweep"], case["running"], LIVE_STEPS + r)
            _reset_sent()
            t0 = time.process_time()
            case["panel"].refresh()
            case["cpu"].append(time.process_time() - t0)
            case["bytes"].append(SENT["bytes"])
            case["by"].update(SENT_BY)
            seconds, size = _naive_live(case["sweep"])
            case["naive_cpu"].append(seconds)
            case["naive_bytes"].append(size)
    for case in cases:  # then a task ends: the view under the curves is drawn again (not a target)
        tid, attempt, _ = case["running"].pop()
        case["sweep"].store.finish(tid, attempt, JobOutcome(JobState.COMPLETED, 0, None, {"loss": 0.5, "acc": 0.5}))
        case["sweep"].store.close()
        _reset_sent()
        t0 = time.process_time()
        case["panel"].refresh()
        case["ended"] = {"ms": (time.process_time() - t0) * 1e3, "bytes": SENT["bytes"]}
    rows = []
    for case in cases:
        view = case["panel"].results_view
        rows.append({"finished": case["finished"], "tasks": case["finished"] + LIVE_RUNNING,
                     "refresh_ms": statistics.median(case["cpu"]) * 1e3, "bytes": statistics.median(case["bytes"]),
                     "naive_ms": statistics.median(case["naive_cpu"]) * 1e3,
                     "naive_bytes": int(statistics.median(case["naive_bytes"])),
                     "curves": sum(1 for t in view.curves.traces if t["uid"].startswith("curve-")),
                     "top": [(k, v / LIVE_ROUNDS) for k, v in case["by"].most_common(3)],
                     "first": case["first"], "ended": case["ended"]})
        case["panel"].close()
    return rows


def _report_live(rows: list[dict]) -> None:
    print()
    print(f"Results tab, live curves: {LIVE_RUNNING} RUNNING tasks x {LIVE_STEPS:,} steps, +1 step each per refresh "
          f"(median of {LIVE_ROUNDS} alternated rounds)")
    print(f"{'finished':>9} {'tasks':>7} {'refresh ms':>11} {'bytes/refresh':>14} {'curves':>7} "
          f"{'naive ms':>9} {'naive bytes':>12} {'naive/ours':>11}")
    for r in rows:
        print(f"{r['finished']:>9,} {r['tasks']:>7,} {r['refresh_ms']:>11.2f} {r['bytes']:>14,.0f} {r['curves']:>7} "
              f"{r['naive_ms']:>9.1f} {r['naive_bytes']:>12,} {r['naive_ms'] / r['refresh_ms']:>10.1f}x")
    small, big = rows[0], rows[-1]
    grew = big["finished"] / small["finished"]
    print(f"bytes per refresh {big['finished']:,} vs {small['finished']:,} finished tasks: "
          f"{big['bytes'] / max(small['bytes'], 1):.2f}x (finished tasks grew {grew:.0f}x); "
          f"CPU {big['refresh_ms'] / small['refresh_ms']:.2f}x")
    print("largest changed values per refresh at {:,} tasks: {}".format(
        big["tasks"], ", ".join(f"{k} {v:,.0f} B" for k, v in big["top"]) or "none"))
    for r in rows:
        print(f"{r['tasks']:,} tasks: the tab's first draw {r['first']['ms']:.0f} ms, "
              f"{r['first']['bytes'] / 1e6:.1f} MB "
              f"(two FigureWidgets, Plotly's JavaScript included, sent once); a task ending (the 'over time' view "
              f"drawn again, at most every 2 s while a sweep runs) {r['ended']['ms']:.0f} ms, "
              f"{r['ended']['bytes'] / 1000:.0f} KB")
    cpu_ok, bytes_ok = big["refresh_ms"] < TARGET_MS, big["bytes"] < TARGET_BYTES
    print(f"target at {big['tasks']:,} tasks with {LIVE_RUNNING} live curves: kernel CPU < {TARGET_MS} ms -> "
          f"{'met' if cpu_ok else 'NOT met'} ({big['refresh_ms']:.1f} ms); bytes < {TARGET_BYTES // 1000} KB -> "
          f"{'met' if bytes_ok else 'NOT met'} ({big['bytes'] / 1000:.1f} KB)")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        rows = [measure(n, Path(tmp)) for n in (100, 1000, 10000)]
        live = measure_live((1000, 10000), Path(tmp))
    print(f"{'tasks':>7} {'refresh ms':>11} {'bytes/refresh':>14} {'naive ms':>9} {'naive bytes':>12} "
          f"{'naive/ours':>11}")
    for r in rows:
        print(f"{r['n']:>7} {r['refresh_ms']:>11.2f} {r['bytes']:>14,.0f} {r['naive_ms']:>9.1f} "
              f"{r['naive_bytes']:>12,} {r['naive_ms'] / r['refresh_ms']:>10.1f}x")
    growth = rows[-1]["refresh_ms"] / rows[0]["refresh_ms"]
    print(f"refresh cost 10,000 vs 100 tasks: {growth:.2f}x (tasks grew 100x); "
          f"target: 10,000-task refresh < 50 ms -> {'met' if rows[-1]['refresh_ms'] < 50 else 'NOT met'}")
    _report_live(live)


if __name__ == "__main__":
    main()
