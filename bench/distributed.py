"""One sweep over this machine and two loopback SSH hosts: throughput, shares, manager CPU.

    python bench/distributed.py [--tasks 2000] [--strategy weighted]

Prints tasks per second end to end, each source's share of the tasks against its
share of the measured capacity (slots / average job duration, measured in this run),
and the manager's own CPU time per task: the CPU time of the package's loop thread,
split by a cProfile run into the manager layer (manager, dispatch, monitor, ledger,
events) and the sources' own work (spawning processes, SSH protocol, collecting).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _jobs import JOB  # noqa: E402

from hsm_notebook import LocalComputeSource, ParameterSpace, SSHComputeSource, Sweep  # noqa: E402
from hsm_notebook.core import _loop  # noqa: E402
from tests.servers.sshd import SSHServer  # noqa: E402

#: The manager layer, as paths under hsm_notebook/: every engine module (manager, run state,
#: submission, polling, supervisor, control, retry, dispatch, gate, monitor), the ledger and its
#: events, the retry policy and the source ABC's shared machinery.
MANAGER_LAYER = (*sorted(f"core/engine/{p.name}" for p in (ROOT / "hsm_notebook/core/engine").glob("*.py")),
                 "core/ledger/store.py", "core/ledger/events.py", "core/spec/policy.py", "core/base/source.py")
_missing = [m for m in MANAGER_LAYER if not (ROOT / "hsm_notebook" / m).is_file()]
if _missing:
    raise SystemExit(f"bench/distributed.py: MANAGER_LAYER names modules that do not exist: {_missing}; "
                     "update it to the package's current layout")


def ssh(h, name, slots):
    return SSHComputeSource(h.host, name, slots, port=h.port, username=h.user, client_keys=[str(h.client_key)],
                            known_hosts=str(h.known_hosts), python="/usr/bin/python3")


def run(n: int, strategy: str, hosts, workdir: Path, profile: bool):
    sources = [LocalComputeSource("local", 4, python="/usr/bin/python3"), ssh(hosts[0], "ssh-a", 4),
               ssh(hosts[1], "ssh-b", 4)]
    sweep = Sweep(ParameterSpace(grid={"i": list(range(n))}), ["python", "job.py"], sources, workdir=workdir,
                  directory=workdir / f"sweep-{strategy}-{profile}-{time.time()}", strategy=strategy)
    box = {}

    def start_profile():
        box["cpu0"] = time.thread_time()
        if profile:
            box["prof"] = cProfile.Profile()
            box["prof"].enable()

    def stop_profile():
        box["cpu"] = time.thread_time() - box["cpu0"]
        if profile:
            box["prof"].disable()

    loop = _loop.get_loop()
    loop.call_soon_threadsafe(start_profile)
    t0 = time.perf_counter()
    sweep.start().wait()
    elapsed = time.perf_counter() - t0
    done = threading.Event()
    loop.call_soon_threadsafe(lambda: (stop_profile(), done.set()))
    done.wait()
    results = sweep.results()
    assert len(results) == n, sweep.counts()
    return sweep, elapsed, box


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--strategy", default="weighted")
    args = parser.parse_args()
    with SSHServer() as server, tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        (workdir / "job.py").write_text(JOB)
        hosts = [server.start("127.0.0.10"), server.start("127.0.0.11")]
        sweep, elapsed, box = run(args.tasks, args.strategy, hosts, workdir, profile=False)
        status = sweep.status()
        stats = sweep.sources_status().set_index("source")
        print(f"{args.tasks} tasks, strategy {args.strategy}: {elapsed:.1f} s, {args.tasks / elapsed:.1f} tasks/s")
        # capacity: slots / mean turnaround (submission to recorded result: everything a slot waits for)
        import sqlite3

        with sqlite3.connect(sweep.directory / "ledger.sqlite") as db:
            rows = db.execute("SELECT a.source, AVG(e.time - a.submit_time) FROM attempts a JOIN events e "
                              "ON e.task_id = a.task_id AND e.attempt = a.attempt AND e.state = 'COMPLETED' "
                              "GROUP BY a.source").fetchall()
        turnaround = dict(rows)
        cap = {name: stats.loc[name, "slots"] / turnaround[name] if turnaround.get(name) else 0.0
               for name in stats.index}
        total_cap = sum(cap.values())
        print(f"{'source':>8} {'tasks':>6} {'share':>6} {'capacity share':>15} {'diff':>6}")
        for name in stats.index:
            share = (status["source"] == name).mean()
            want = cap[name] / total_cap if total_cap else 0
            count = int((status["source"] == name).sum())
            print(f"{name:>8} {count:>6} {share:6.1%} {want:15.1%} {share - want:+6.1%}")
        print(f"loop-thread CPU (manager + sources): {box['cpu'] / args.tasks * 1e3:.2f} ms per task")
        sweep2, elapsed2, box2 = run(min(args.tasks, 500), args.strategy, hosts, workdir, profile=True)
        st = pstats.Stats(box2["prof"])
        total = sum(v[2] for v in st.stats.values())
        ours = sum(v[2] for k, v in st.stats.items() if any(k[0].endswith(m) for m in MANAGER_LAYER))
        n2 = len(sweep2.results())
        print(f"profiled run ({n2} tasks): manager layer {ours / total:.1%} of the loop thread's profiled time; "
              f"manager CPU per task ~ {box['cpu'] / args.tasks * ours / total * 1e3:.2f} ms (target < 1 ms)")


if __name__ == "__main__":
    main()
