"""Panel refresh cost: kernel CPU time and bytes to the front end, for 100 / 1,000 / 10,000 tasks.

    python bench/panel_refresh.py

Each sweep's ledger is filled with a realistic mix of states (60 % completed with
metrics, 10 % failed, 10 % running, the rest pending) through the store's own
transition calls; no jobs run.  Measured per size:

- one refresh after one task changed state (what the refresh thread does while a
  sweep runs), in process CPU time, mean of 30;
- bytes of widget messages that refresh sends (``Widget._send`` is counted);
- the naive baseline measured in the same run: rebuild ``status()`` and render the
  whole table as HTML, as a view that re-draws everything would.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ipywidgets  # noqa: E402

from hsm_notebook import JobOutcome, JobState, ParameterSpace, Sweep  # noqa: E402
from hsm_notebook.ui import SweepPanel  # noqa: E402

SENT = {"bytes": 0, "messages": 0}
_original_send = ipywidgets.Widget._send


def _counting_send(self, msg, buffers=None):
    SENT["bytes"] += len(json.dumps(msg, default=str)) + sum(len(b) for b in (buffers or []))
    SENT["messages"] += 1
    return _original_send(self, msg, buffers)


ipywidgets.Widget._send = _counting_send


def make_sweep(n: int, root: Path) -> Sweep:
    space = ParameterSpace(grid={"lr": [1e-4, 3e-4, 1e-3, 3e-3, 1e-2], "i": list(range(n // 5))})
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


def measure(n: int, root: Path) -> dict:
    sweep, ids = make_sweep(n, root)
    panel = SweepPanel(sweep, refresh_interval=3600)  # the refresh thread stays idle; we drive it
    pending = [t for k, t in enumerate(ids) if k % 10 >= 8]
    cpu, sent = [], []
    for k in range(30):
        tid = pending[k % len(pending)]
        attempt, _ = sweep.store.begin_attempt(tid, "local")  # one task changes state
        sweep.store.close()
        SENT["bytes"] = 0
        t0 = time.process_time()
        panel.refresh()
        cpu.append(time.process_time() - t0)
        sent.append(SENT["bytes"])
    t0 = time.process_time()
    for _ in range(5):
        naive = sweep.status().to_html()
    naive_cpu = (time.process_time() - t0) / 5
    panel.close()
    return {"n": n, "refresh_ms": statistics.mean(cpu) * 1e3, "bytes": statistics.mean(sent),
            "naive_ms": naive_cpu * 1e3, "naive_bytes": len(naive)}


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        rows = [measure(n, Path(tmp)) for n in (100, 1000, 10000)]
    print(f"{'tasks':>7} {'refresh ms':>11} {'bytes/refresh':>14} {'naive ms':>9} {'naive bytes':>12} {'naive/ours':>11}")
    for r in rows:
        print(f"{r['n']:>7} {r['refresh_ms']:>11.2f} {r['bytes']:>14,.0f} {r['naive_ms']:>9.1f} "
              f"{r['naive_bytes']:>12,} {r['naive_ms'] / r['refresh_ms']:>10.1f}x")
    growth = rows[-1]["refresh_ms"] / rows[0]["refresh_ms"]
    print(f"refresh cost 10,000 vs 100 tasks: {growth:.2f}x (tasks grew 100x); "
          f"target: 10,000-task refresh < 50 ms -> {'met' if rows[-1]['refresh_ms'] < 50 else 'NOT met'}")


if __name__ == "__main__":
    main()
