"""One sweep over many SSH hosts: connections, controller CPU per task, setup in parallel.

    python bench/ssh_hosts.py [--hosts 50] [--tasks-per-host 100] [--slots 4] [--rounds 2]

Starts ``--hosts`` loopback sshd (the test suite's fixture code, 127.0.1.1, 127.0.1.2, ..., one user
each, clean ``~/.bashrc``) and runs one sweep of ``--hosts`` x ``--tasks-per-host`` tiny shell tasks
(``/bin/sh`` writing a metrics JSON: the hosts' CPU goes to the dispatch machinery, not to the tasks)
over one SSHComputeSource per host, ``--slots`` at a time on each.  The baseline, in the same run and
rounds alternated with it: the plain loop a user would write, one asyncssh connection per host and
one ``conn.run`` per task, ``--slots`` at a time per host.  Printed (medians): controller CPU per
task (this process, all threads: user + system) and wall time for both, from start() to results()
for the sweep (the creation of the sweep is not counted), then for the sweep: connections per host
(target: one), and how long the setup of all hosts took against the sum of their setups (target:
in parallel, so about the longest one, not the sum).  Targets: < 5 ms controller CPU per task.
The issue's row is 50 hosts x 5,000 tasks; on a 2-core machine use fewer tasks per host and say so.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import asyncssh  # noqa: E402

from hsm_notebook import ParameterSpace, SSHComputeSource, Sweep  # noqa: E402
from tests.servers.sshd import SSHServer  # noqa: E402

#: The task: one small file in its folder, no interpreter (``i=N`` is its argument).
TASK = ["/bin/sh", "-c", 'echo "{\\"y\\": ${1#i=}}" > "$HSM_TASK_DIR/metrics.json"', "task"]


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def ours(hosts, per_host: int, slots: int, workdir: Path, tag: str) -> dict[str, float]:
    sources = [SSHComputeSource(h.host, f"h{i}", slots, port=h.port, username=h.user, client_keys=[str(h.client_key)],
                                known_hosts=str(h.known_hosts), sync=False) for i, h in enumerate(hosts)]
    spans: list[tuple[float, float]] = []
    for source in sources:
        setup = source.setup

        async def timed(sweep_dir, sweep_id, _setup=setup):
            t0 = time.perf_counter()
            try:
                return await _setup(sweep_dir, sweep_id)
            finally:
                spans.append((t0, time.perf_counter()))

        source.setup = timed  # type: ignore[method-assign]
    n = per_host * len(hosts)
    sweep = Sweep(ParameterSpace(grid={"i": list(range(n))}), TASK, sources, workdir=workdir,
                  directory=workdir.parent / "sweeps" / f"hosts-{tag}", poll_interval=1.0)
    c0, t0 = cpu(), time.perf_counter()
    sweep.start().wait()
    results = sweep.results()
    wall, used = time.perf_counter() - t0, cpu() - c0
    assert len(results) == n and (results["y"] == results["i"]).all(), sweep.status()["error"].dropna().head()
    first = min(a for a, _ in spans)
    return {"wall": wall, "cpu_per_task": used / n, "connects": max(s.conn.connects for s in sources),
            "setup_all": max(b for _, b in spans) - first, "setup_sum": sum(b - a for a, b in spans),
            "setup_longest": max(b - a for a, b in spans)}


async def plain(hosts, per_host: int, slots: int) -> dict[str, float]:
    conns = await asyncio.gather(*(asyncssh.connect(**h.connect_kwargs()) for h in hosts))
    try:
        base = "plain-bench"
        await asyncio.gather(*(c.run(f"rm -rf {base}; mkdir -p {base}", check=True) for c in conns))
        task = shlex.join(TASK)

        async def host(conn) -> None:
            sem = asyncio.Semaphore(slots)

            async def one(i: int) -> None:
                async with sem:
                    d = f"{base}/{i}"
                    result = await conn.run(f"mkdir -p {d} && HSM_TASK_DIR={d} {task} i={i} > {d}/stdout.log "
                                            f"2> {d}/stderr.log")
                    assert result.exit_status == 0, result.stderr

            await asyncio.gather(*(one(i) for i in range(per_host)))

        c0, t0 = cpu(), time.perf_counter()
        await asyncio.gather(*(host(c) for c in conns))
        return {"wall": time.perf_counter() - t0, "cpu_per_task": (cpu() - c0) / (per_host * len(hosts))}
    finally:
        for c in conns:
            c.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hosts", type=int, default=50)
    parser.add_argument("--tasks-per-host", type=int, default=100)
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with SSHServer() as server, tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp) / "project"
        workdir.mkdir()
        t0 = time.perf_counter()
        hosts = [server.start(f"127.0.1.{i + 1}") for i in range(args.hosts)]
        print(f"{args.hosts} loopback sshd started in {time.perf_counter() - t0:.1f} s; {args.tasks_per_host} tasks "
              f"per host ({args.hosts * args.tasks_per_host} in all), {args.slots} at a time per host; "
              f"{args.rounds} rounds alternated, medians")
        runs: dict[str, list[dict[str, float]]] = {"plain": [], "ours": []}
        for r in range(args.rounds):
            runs["plain"].append(asyncio.run(plain(hosts, args.tasks_per_host, args.slots)))
            runs["ours"].append(ours(hosts, args.tasks_per_host, args.slots, workdir, str(r)))
            print(f"  round {r}: plain {runs['plain'][-1]['wall']:.1f} s, "
                  f"hsm_notebook {runs['ours'][-1]['wall']:.1f} s", flush=True)

        def med(kind: str, key: str) -> float:
            return statistics.median(run[key] for run in runs[kind])

        n = args.hosts * args.tasks_per_host
        for kind, label in (("plain", "plain asyncssh loop"), ("ours", "hsm_notebook sweep")):
            print(f"{label:20} {med(kind, 'wall'):7.1f} s ({n / med(kind, 'wall'):6.1f} tasks/s), controller CPU "
                  f"{med(kind, 'cpu_per_task') * 1e3:5.2f} ms per task")
        cpu_ms = med("ours", "cpu_per_task") * 1e3
        print(f"controller CPU per task: {cpu_ms:.2f} ms (target < 5: {'MET' if cpu_ms < 5 else 'NOT MET'}); "
              f"time ratio (plain / ours) {med('plain', 'wall') / med('ours', 'wall'):.2f}")
        print(f"connections per host: {max(run['connects'] for run in runs['ours']):.0f} (target 1)")
        print(f"setup of all {args.hosts} hosts: {med('ours', 'setup_all'):.2f} s; the longest one "
              f"{med('ours', 'setup_longest'):.2f} s, their sum {med('ours', 'setup_sum'):.2f} s (in parallel when "
              "the first is well under the last)")


if __name__ == "__main__":
    main()
