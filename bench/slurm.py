"""Slurm submission: one sweep of N tasks as arrays vs N individual ``sbatch`` calls.

    python bench/slurm.py [--tasks 1000]

Starts its own single-node Slurm (the test suite's fixture code) on loopback.  Both
variants run the same trivial job (it writes a small metrics JSON); each is timed from
the first submission until every task has finished (for the sweep: until every result
is in ``results()``).  Printed: the scheduler calls each made and the times.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _jobs import JOB  # noqa: E402
from hsm_notebook import ParameterSpace, SlurmComputeSource, Sweep  # noqa: E402
from tests.servers.slurm import start_cluster  # noqa: E402



def individual(cluster, n: int, root: Path) -> tuple[float, int, int]:
    out = root / "individual"
    out.mkdir()
    t0 = time.perf_counter()
    ids = []
    for i in range(n):
        d = out / str(i)
        d.mkdir()
        cmd = f"HSM_TASK_DIR={d} {sys.executable} {root / 'job.py'} i={i}"
        r = subprocess.run(["sbatch", "--parsable", "-p", cluster.partition, "-o", "/dev/null", "--wrap", cmd],
                           env=cluster.env, capture_output=True, text=True, check=True)
        ids.append(r.stdout.strip())
    polls = 0
    while True:
        polls += 1
        r = subprocess.run(["squeue", "-h", "-t", "all", "-o", "%T", "-j", ",".join(ids)], env=cluster.env,
                           capture_output=True, text=True)
        states = r.stdout.split()
        if len(states) == n and all(s in ("COMPLETED", "FAILED", "CANCELLED") for s in states):
            break
        time.sleep(1.0)
    elapsed = time.perf_counter() - t0
    assert sum(1 for i in range(n) if (out / str(i) / "metrics.json").exists()) == n
    return elapsed, n, polls


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=1000)
    args = parser.parse_args()
    cluster = start_cluster()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            (root / "job.py").write_text(JOB)
            source = SlurmComputeSource("slurm", 5000, partition=cluster.partition, slurm_env=dict(cluster.env),
                                        poll_interval=1.0)
            sweep = Sweep(ParameterSpace(grid={"i": list(range(args.tasks))}), [sys.executable, "job.py"], [source],
                          workdir=root, directory=root / "sweep", poll_interval=1.0)
            t0 = time.perf_counter()
            sweep.start().wait()
            results = sweep.results()
            ours = time.perf_counter() - t0
            assert len(results) == args.tasks, sweep.counts()
            c = source.commands
            print(f"hsm_notebook: {args.tasks} tasks in {ours:.1f} s; scheduler calls: sbatch {c['sbatch']} "
                  f"(1 is the --test-only check), squeue {c['squeue']}, scancel {c['scancel']}, other {c['other']}")
            theirs, n_sbatch, polls = individual(cluster, args.tasks, root)
            print(f"individual sbatch: {args.tasks} tasks in {theirs:.1f} s; scheduler calls: sbatch {n_sbatch}, "
                  f"squeue {polls}")
            print(f"end to end: hsm_notebook {theirs / ours:.2f}x faster; sbatch calls {n_sbatch / max(1, c['sbatch'] - 1):.0f}x fewer")
    finally:
        cluster.close()


if __name__ == "__main__":
    main()
