"""Grid Engine: 200 trivial tasks as one array (a sweep) against one ``qsub`` per task, in the same run.

    python bench/sge.py [--tasks 200] [--rounds 3]

Starts the machine's single-node Grid Engine with the test suite's code (tests/servers/sge.py: queue
all.q, 8 slots, scheduler every second); every job is deleted and the daemons it started are stopped
on the way out, whatever happens.  Both ways run the same trivial job (bench/_jobs.py: it writes a
small metrics JSON) with this interpreter, paced by the same 8 slots:

- array: a sweep on an SGEComputeSource (``qsub -t 1-N``: one qsub), timed from ``start()`` until
  every result is in ``results()``; the hand-over is until every task has its Grid Engine id;
- one qsub per task (``qsub -b y``, what a sweep tool without arrays does), timed from the first qsub
  until Grid Engine lists none of them and every metrics file exists, polled with ``qstat -xml``
  every second (the sweep polls every second too).

Rounds alternate the two; medians and the ratio are printed, with the scheduler calls each made.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _jobs import JOB  # noqa: E402

from hsm_notebook import ParameterSpace, SGEComputeSource, Sweep  # noqa: E402
from tests.servers.sge import SGECluster, start_cluster  # noqa: E402

TIMEOUT = 600.0


def _ours(cluster: SGECluster, prefix: str) -> int:
    out = cluster.run("qstat", "-xml", check=True).stdout
    return sum(1 for r in ET.fromstring(out).iter("job_list") if (r.findtext("JB_name") or "").startswith(prefix))


def per_task(cluster: SGECluster, n: int, root: Path, tag: str) -> dict[str, float]:
    out = root / tag
    out.mkdir()
    t0 = time.perf_counter()
    for i in range(n):
        d = out / str(i)
        d.mkdir()
        cluster.run("qsub", "-b", "y", "-terse", "-N", f"hsmb-{tag}", "-o", "/dev/null", "-j", "y", "-wd", str(root),
                    "-S", "/bin/sh", "/usr/bin/env", f"HSM_TASK_DIR={d}", sys.executable, "job.py", f"i={i}",
                    check=True)
    handed = time.perf_counter() - t0
    polls, deadline = 0, time.monotonic() + TIMEOUT
    while True:
        polls += 1
        if _ours(cluster, f"hsmb-{tag}") == 0 and all((out / str(i) / "metrics.json").exists() for i in range(n)):
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"per-task jobs not all finished after {TIMEOUT:.0f} s")
        time.sleep(1.0)
    return {"seconds": time.perf_counter() - t0, "handover": handed, "qsub": n, "qstat": polls}


def array(cluster: SGECluster, n: int, root: Path, tag: str) -> dict[str, float]:
    source = SGEComputeSource("sge", n, queue=cluster.queue, sge_env=cluster.sge_env, poll_interval=1.0)
    sweep = Sweep(ParameterSpace(grid={"i": list(range(n))}), [sys.executable, "job.py"], [source], workdir=root,
                  directory=root / tag, poll_interval=1.0)
    t0 = time.perf_counter()
    sweep.start()
    handed = None
    try:
        while sweep.running:
            if handed is None and sweep.status()["job_id"].notna().all():
                handed = time.perf_counter() - t0
            time.sleep(0.02)
        sweep.wait(timeout=TIMEOUT)
        elapsed = time.perf_counter() - t0
    finally:
        if sweep.running:
            sweep.cancel()
            sweep.wait(timeout=60)
    assert len(sweep.results()) == n, sweep.counts()
    c = source.commands
    return {"seconds": elapsed, "handover": handed or elapsed, "qsub": c["qsub"], "qstat": c["qstat"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    t_start = time.perf_counter()
    cluster = start_cluster()
    print(f"Grid Engine up in {cluster.start_seconds:.1f} s (queue {cluster.queue}, {cluster.slots} slots); "
          f"{args.tasks} tasks of `{Path(sys.executable).name} job.py`, {args.rounds} rounds alternated")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            (root / "job.py").write_text(JOB)
            old, new = [], []
            for r in range(args.rounds):
                old.append(per_task(cluster, args.tasks, root, f"each{r}"))
                new.append(array(cluster, args.tasks, root, f"array{r}"))
                print(f"  round {r + 1}: one qsub per task {old[-1]['seconds']:.1f} s (handed over in "
                      f"{old[-1]['handover']:.1f} s) | array {new[-1]['seconds']:.1f} s (handed over in "
                      f"{new[-1]['handover']:.1f} s)")
            print(f"\n{'median of ' + str(args.rounds) + ' rounds':34}{'one qsub per task':>20}{'array':>12}"
                  f"{'ratio':>8}")
            for key, label in (("seconds", "seconds until all finished"), ("handover", "seconds to hand all over"),
                               ("qsub", "qsub calls"), ("qstat", "qstat calls")):
                o, w = statistics.median(x[key] for x in old), statistics.median(x[key] for x in new)
                print(f"{label:34}{o:>20.1f}{w:>12.1f}{o / w if w else float('inf'):>7.1f}x")
    finally:
        cluster.close()
        print(f"\n(total {time.perf_counter() - t_start:.0f} s, cluster start and stop included)")


if __name__ == "__main__":
    main()
