"""Local dispatch overhead: hsm_notebook's Sweep vs a raw asyncio subprocess loop.

    python bench/local_dispatch.py [--jobs 1000] [--slots 8]

Both run the same trivial Python job (it writes a small metrics JSON) with the
same parallelism, started with this interpreter's own path (``sys.executable``;
a pyenv shim would add ~140 ms per start and hide the overhead).  The sweep is
timed from ``start()`` to all results in ``results()``.  Also measured: counting
and taking the first 1,000 combinations of a 10^6-combination space.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _jobs import JOB  # noqa: E402

from hsm_notebook import LocalComputeSource, ParameterSpace, Sweep  # noqa: E402


async def raw_loop(job: Path, root: Path, n: int, slots: int) -> float:
    sem = asyncio.Semaphore(slots)

    async def one(i: int) -> None:
        async with sem:
            d = root / f"raw-{i}"
            d.mkdir()
            proc = await asyncio.create_subprocess_exec(
                sys.executable, str(job), f"i={i}", env={**os.environ, "HSM_TASK_DIR": str(d)},
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
            await proc.wait()

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    return time.perf_counter() - t0


def sweep_run(job: Path, root: Path, n: int, slots: int) -> float:
    space = ParameterSpace(grid={"i": list(range(n))})
    sweep = Sweep(space, [sys.executable, str(job)], [LocalComputeSource(max_parallel_jobs=slots)],
                  workdir=root, directory=root / "sweep")
    t0 = time.perf_counter()
    sweep.start().wait()
    results = sweep.results()
    elapsed = time.perf_counter() - t0
    assert len(results) == n and (results["y"] == results["i"] * 2).all(), "wrong results"
    return elapsed


def space_costs() -> tuple[float, float, int]:
    tracemalloc.start()
    t0 = time.perf_counter()
    space = ParameterSpace(grid={f"p{k}": list(range(10)) for k in range(6)})
    n = len(space)
    t_count = time.perf_counter() - t0
    first = space.take(1000)
    t_take = time.perf_counter() - t0 - t_count
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert n == 10**6 and len(first) == 1000
    return t_count, t_take, peak


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--slots", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        job = root / "job.py"
        job.write_text(JOB)
        raw = asyncio.run(raw_loop(job, root, args.jobs, args.slots))
        ours = sweep_run(job, root, args.jobs, args.slots)
    raw_tp, our_tp = args.jobs / raw, args.jobs / ours
    print(f"interpreter: {sys.executable}")
    print(f"raw asyncio loop : {args.jobs} jobs, {args.slots} slots, {raw:6.2f} s, {raw_tp:6.1f} jobs/s")
    print(f"hsm_notebook     : {args.jobs} jobs, {args.slots} slots, {ours:6.2f} s, {our_tp:6.1f} jobs/s")
    print(f"ratio (hsm / raw): {our_tp / raw_tp:.2f}   (target >= 0.85)")
    t_count, t_take, peak = space_costs()
    print(f"10^6-combination space: count {t_count * 1e3:.2f} ms, first 1,000 {t_take * 1e3:.1f} ms, "
          f"peak memory {peak / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
