"""Slurm: submission, cancel and polling of a sweep, each against the way it was done before.

    python bench/slurm.py [--tasks 1000] [--cancel-tasks 200] [--poll-tasks 500] [--rounds 3]

Starts its own single-node Slurm (the test suite's fixture code) on loopback; every job it
starts is cancelled and the cluster stopped on the way out, whatever happens.

1. Submission: one sweep of ``--tasks`` as arrays vs one ``sbatch`` per task.  Both run the
   same trivial job (it writes a small metrics JSON); each is timed from the first submission
   until every task has finished (for the sweep: until every result is in ``results()``).
   Printed: the scheduler calls each made and the times.
2. Cancel: a sweep of ``--cancel-tasks`` tasks sleeping 60 s, 4 at a time (one throttled
   array); once 4 run, it is cancelled either by ``sweep.cancel()`` (one ``scancel`` naming
   the array) or the old way, one ``scancel ARRAY_i`` per task then ``sweep.wait()``.  Timed
   from the cancel request until every task is CANCELLED; also the scancel calls made and
   the tasks Slurm started after the cancel was asked (pid files written since).  Rounds
   alternate the two; medians and ratios are printed.
3. Polling: a sweep of ``--poll-tasks`` tasks sleeping 60 s, 8 at a time (the rest pending),
   polled every 0.3 s for ``--poll-seconds``: task folders read per poll (median) against the
   live tasks per poll (what the old code read: every active task's folder), and squeue calls
   per second.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _jobs import JOB, SLEEP_JOB  # noqa: E402

from hsm_notebook import ParameterSpace, SlurmComputeSource, Sweep  # noqa: E402
from hsm_notebook.core.model.state import JobState  # noqa: E402
from hsm_notebook.core.spec.jobpaths import NEVER, JobPaths  # noqa: E402
from tests.servers.slurm import start_cluster  # noqa: E402

SWEEP_TIMEOUT = 180.0  # every wait below is bounded by this


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
    deadline = time.monotonic() + SWEEP_TIMEOUT + n
    while True:
        if time.monotonic() > deadline:
            raise TimeoutError(f"individual jobs not all finished after {SWEEP_TIMEOUT + n:.0f} s")
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


def until(predicate, timeout: float, what: str, step: float = 0.05, show=None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not {what} after {timeout:.0f} s" + (f": {show()}" if show else ""))
        time.sleep(step)


class Bench:
    """The cluster, a project folder, and every sweep started (all cancelled on the way out)."""

    def __init__(self, cluster, root: Path):
        self.cluster, self.root = cluster, root
        self.sweeps: list[Sweep] = []

    def sleeping_sweep(self, n: int, slots: int, tag: str) -> tuple[SlurmComputeSource, Sweep]:
        source = SlurmComputeSource("slurm", slots, partition=self.cluster.partition,
                                    slurm_env=dict(self.cluster.env), poll_interval=0.3)
        sweep = Sweep(ParameterSpace(grid={"i": list(range(n)), "sleep": [60]}), [sys.executable, "sleep_job.py"],
                      [source], workdir=self.root, directory=self.root / tag, poll_interval=0.3)
        self.sweeps.append(sweep)
        return source, sweep

    def close(self) -> None:
        for sweep in self.sweeps:
            if sweep.running:
                try:
                    sweep.cancel()
                    sweep.wait(timeout=60)
                except Exception as exc:  # noqa: BLE001 - the cluster's close() cancels what is left
                    print(f"(cleanup of sweep {sweep.id}: {exc})", file=sys.stderr)


def started(sweep: Sweep) -> set[str]:
    """Task folders whose wrapper has started (a pid file not claimed as ``never``)."""
    names = set()
    for folder in JobPaths.tasks_dir(sweep.directory).iterdir():
        try:
            if JobPaths(folder).pid.read_text().strip() != NEVER:
                names.add(folder.name)
        except OSError:
            continue
    return names


def ended(sweep: Sweep) -> bool:
    return all(JobState(state).is_terminal for state in sweep.counts())


def cancel_round(bench: Bench, n: int, tag: str, old_way: bool) -> dict[str, float]:
    """A sweep of ``n`` 60-s tasks, 4 at a time, cancelled once 4 run: by ``sweep.cancel()`` or,
    ``old_way``, by one ``scancel ARRAY_i`` per task (as the source did before) then ``wait()``.
    Timed until every task has ended; a task that escaped the cancel would end COMPLETED after 60 s."""
    source, sweep = bench.sleeping_sweep(n, 4, tag)
    sweep.start()
    until(lambda: sweep.counts().get("RUNNING", 0) >= 4 and len(started(sweep)) >= 4, 60,
          "4 running with their pid files written", show=sweep.counts)
    ids = [j for j in sweep.status()["job_id"] if isinstance(j, str) and j]
    assert len(ids) == n, f"{len(ids)} of {n} tasks submitted"
    scancel0, before = source.commands["scancel"], started(sweep)
    t0 = time.perf_counter()
    if old_way:
        for job_id in ids:
            subprocess.run(["scancel", job_id], env=bench.cluster.env, capture_output=True, timeout=30)
    else:
        sweep.cancel()
    until(lambda: ended(sweep), SWEEP_TIMEOUT, f"all {n} ended ({tag})", show=sweep.counts)
    elapsed = time.perf_counter() - t0
    sweep.wait(timeout=SWEEP_TIMEOUT)
    after, counts = started(sweep), sweep.counts()
    return {"scancel": source.commands["scancel"] - scancel0 + (len(ids) if old_way else 0),
            "seconds": elapsed, "started_after": len(after - before), "running_at_cancel": len(before),
            "not_cancelled": n - counts.get("CANCELLED", 0)}


def polling(bench: Bench, n: int, seconds: float) -> dict[str, float]:
    """A sweep of ``n`` 60-s tasks, 8 at a time, polled for ``seconds``: folders read per poll
    (a spy on ``side.read_tasks``, the one call that reads them) and live tasks per poll."""
    source, sweep = bench.sleeping_sweep(n, 8, "poll")
    polls: list[list[int]] = []  # [live tasks asked about, task folders read], one per poll
    poll, read = source.poll, source.side.read_tasks

    async def counting_poll(job_ids):
        polls.append([len(job_ids), 0])
        return await poll(job_ids)

    async def counting_read(job_dirs, claim_ids=()):
        if polls:
            polls[-1][1] += len(job_dirs)
        return await read(job_dirs, claim_ids)

    source.poll, source.side.read_tasks = counting_poll, counting_read
    sweep.start()
    until(lambda: sweep.counts().get("RUNNING", 0) >= 8, 60, "8 running", show=sweep.counts)
    counts = sweep.counts()
    polls.clear()
    squeue0, t0 = source.commands["squeue"], time.perf_counter()
    time.sleep(seconds)
    squeue, elapsed, n_polls = source.commands["squeue"] - squeue0, time.perf_counter() - t0, len(polls)
    window = [list(p) for p in polls[:-1]]  # the last poll may still be reading
    sweep.cancel()
    sweep.wait(timeout=SWEEP_TIMEOUT)
    assert window, "no poll in the window"
    return {"polls": len(window), "read": statistics.median(p[1] for p in window),
            "read_max": max(p[1] for p in window), "live": statistics.median(p[0] for p in window),
            "squeue_per_s": squeue / elapsed, "polls_per_s": n_polls / elapsed,
            "running": counts.get("RUNNING", 0), "queued": counts.get("QUEUED", 0)}


def submission(bench: Bench, n: int) -> None:
    cluster, root = bench.cluster, bench.root
    source = SlurmComputeSource("slurm", 5000, partition=cluster.partition, slurm_env=dict(cluster.env),
                                poll_interval=1.0)
    sweep = Sweep(ParameterSpace(grid={"i": list(range(n))}), [sys.executable, "job.py"], [source],
                  workdir=root, directory=root / "sweep", poll_interval=1.0)
    bench.sweeps.append(sweep)
    t0 = time.perf_counter()
    sweep.start().wait(timeout=SWEEP_TIMEOUT + n)
    results = sweep.results()
    ours = time.perf_counter() - t0
    assert len(results) == n, sweep.counts()
    c = source.commands
    print(f"hsm_notebook: {n} tasks in {ours:.1f} s; scheduler calls: sbatch {c['sbatch']} "
          f"(1 is the --test-only check), squeue {c['squeue']}, scancel {c['scancel']}, other {c['other']}")
    theirs, n_sbatch, polls = individual(cluster, n, root)
    print(f"individual sbatch: {n} tasks in {theirs:.1f} s; scheduler calls: sbatch {n_sbatch}, squeue {polls}")
    print(f"end to end: hsm_notebook {theirs / ours:.2f}x faster; "
          f"sbatch calls {n_sbatch / max(1, c['sbatch'] - 1):.0f}x fewer")


def _ratio(old: float, new: float) -> str:
    return f"{old / new:.1f}x" if new else ("=" if not old else "inf")


def run(bench: Bench, args: argparse.Namespace) -> None:
    print(f"== submission: {args.tasks} tasks")
    submission(bench, args.tasks)

    n = args.cancel_tasks
    print(f"\n== cancel: {n} tasks sleeping 60 s, 4 at a time (one array), cancelled once 4 run; "
          f"{args.rounds} rounds alternated, medians")
    old, new = [], []
    for r in range(args.rounds):
        old.append(cancel_round(bench, n, f"cancel-old-{r}", old_way=True))
        new.append(cancel_round(bench, n, f"cancel-new-{r}", old_way=False))
    med = {k: (statistics.median(o[k] for o in old), statistics.median(o[k] for o in new))
           for k in ("scancel", "seconds", "started_after", "running_at_cancel", "not_cancelled")}
    print(f"{'':38}{'scancel per task (old)':>24}{'sweep.cancel()':>16}{'ratio':>8}")
    for key, label, fmt in (("scancel", "scancel calls", "{:.0f}"),
                            ("seconds", "seconds until all ended", "{:.2f}"),
                            ("started_after", "tasks started after the cancel", "{:.0f}"),
                            ("not_cancelled", "tasks that ended other than CANCELLED", "{:.0f}")):
        o, w = med[key]
        print(f"{label:38}{fmt.format(o):>24}{fmt.format(w):>16}{_ratio(o, w):>8}")
    print("  rounds (old | new): " + "; ".join(
        f"{o['scancel']:.0f} scancel {o['seconds']:.2f} s {o['started_after']} started | "
        f"{w['scancel']:.0f} scancel {w['seconds']:.2f} s {w['started_after']} started"
        for o, w in zip(old, new, strict=True)))
    print(f"  running when the cancel was asked (median): old {med['running_at_cancel'][0]:.0f}, "
          f"new {med['running_at_cancel'][1]:.0f}")

    print(f"\n== polling: {args.poll_tasks} tasks sleeping 60 s, 8 at a time, poll_interval 0.3 s, "
          f"{args.poll_seconds:.0f} s window")
    p = polling(bench, args.poll_tasks, args.poll_seconds)
    print(f"  at the window's start: {p['running']} RUNNING, {p['queued']} QUEUED; "
          f"{p['polls_per_s']:.1f} polls/s ({p['polls']} complete ones in the window)")
    print(f"{'':38}{'every live task (old)':>24}{'hsm_notebook':>16}{'ratio':>8}")
    print(f"{'task folders read per poll':38}{p['live']:>24.0f}{p['read']:>16.0f}{_ratio(p['live'], p['read']):>8}")
    print(f"  folders read per poll: max {p['read_max']}; squeue calls per second {p['squeue_per_s']:.2f} "
          f"(one per poll, whatever the number of tasks)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--cancel-tasks", type=int, default=200)
    parser.add_argument("--poll-tasks", type=int, default=500)
    parser.add_argument("--poll-seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    t_start = time.perf_counter()
    cluster = start_cluster()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            (root / "job.py").write_text(JOB)
            (root / "sleep_job.py").write_text(SLEEP_JOB)
            bench = Bench(cluster, root)
            try:
                run(bench, args)
            finally:
                bench.close()  # before the folders go: every sweep cancelled and ended
    finally:
        cluster.close()  # cancels whatever is left, stops the daemons
        print(f"\n(total {time.perf_counter() - t_start:.0f} s, cluster start included)")


if __name__ == "__main__":
    main()
