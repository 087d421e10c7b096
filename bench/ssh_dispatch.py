"""SSH dispatch: SSHComputeSource vs plain asyncssh ``conn.run`` vs a fresh ``ssh`` per job.

    python bench/ssh_dispatch.py [--sizes 200 1000] [--rounds 3] [--fresh-jobs 100] [--clean-only]

Starts its own loopback sshd (the test suite's fixture code, 127.0.0.6/7) with two
users: one with a clean ``~/.bashrc`` and one whose ``~/.bashrc`` burns ~200 ms of
CPU (as ``pyenv init`` / ``conda init`` do on real hosts) and counts its runs.  Every job is
the same trivial ``/usr/bin/python3`` script writing a small metrics JSON into its own dir;
8 at a time in every variant.  Rounds alternate the plain loop and hsm_notebook; the
median of each is printed with their ratio (hsm_notebook is timed from ``start()`` to all
results collected, set-up, project sync and the remote clean-up included; the plain loop from
its first job, its connection made), then CPU per job (this machine is busy: CPU time is steadier
than wall time): the controller's (this process, all threads) and the hosts' (sshd, shells and
jobs, from a cgroup holding the test sshd, where this machine has cgroups), then SSH channels
and remote commands per job for SSHComputeSource, and how many times the login shell's rc file
ran per sweep.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import asyncssh  # noqa: E402
from _jobs import JOB  # noqa: E402

from hsm_notebook import ParameterSpace, SSHComputeSource, Sweep  # noqa: E402
from tests.servers.sshd import HEAVY_BASHRC, SSHServer  # noqa: E402

PY = "/usr/bin/python3"
SLOTS = 8
#: The slow rc file, counting its runs in ~/rc_runs (read from this machine's disk).
COUNTED_HEAVY_BASHRC = HEAVY_BASHRC + "echo run >> ~/rc_runs\n"


class HostCPU:
    """CPU time of everything the test sshd runs (its connections, shells and jobs): a cgroup holding
    the listeners (v1 cpuacct or v2), or nothing where this machine does not allow one."""

    def __init__(self) -> None:
        self.path: Path | None = None
        self.v2 = False
        for base, v2 in ((Path("/sys/fs/cgroup/cpuacct"), False), (Path("/sys/fs/cgroup"), True)):
            if (base / ("cpuacct.usage" if not v2 else "cgroup.procs")).exists() and os.access(base, os.W_OK):
                try:
                    path = base / f"hsm-bench-{os.getpid()}"
                    path.mkdir()
                except OSError:
                    continue
                self.path, self.v2 = path, v2
                return

    def add(self, pid: int) -> None:
        if self.path is not None:
            try:
                (self.path / "cgroup.procs").write_text(str(pid))
            except OSError:
                self.close()

    def seconds(self) -> float | None:
        if self.path is None:
            return None
        if self.v2:
            stat = dict(line.split() for line in (self.path / "cpu.stat").read_text().splitlines())
            return int(stat["usage_usec"]) / 1e6
        return int((self.path / "cpuacct.usage").read_text()) / 1e9

    def close(self) -> None:
        if self.path is None:
            return
        path, self.path = self.path, None
        with contextlib.suppress(OSError):
            for pid in (path / "cgroup.procs").read_text().split():
                (path.parent / "cgroup.procs").write_text(pid)
            path.rmdir()


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


@contextlib.contextmanager
def measured(host: HostCPU, into: dict[str, list[float]], n: int) -> Iterator[None]:
    """Controller and host CPU seconds per job of the block, appended to ``into``."""
    c0, h0 = cpu(), host.seconds()
    yield
    into["controller"].append((cpu() - c0) / n)
    h1 = host.seconds()
    if h0 is not None and h1 is not None:
        into["host"].append((h1 - h0) / n)


def ours(h, n: int, workdir: Path, tag: str) -> tuple[float, SSHComputeSource]:
    source = SSHComputeSource(h.host, "bench", SLOTS, port=h.port, username=h.user, client_keys=[str(h.client_key)],
                              known_hosts=str(h.known_hosts), python=PY)
    sweep = Sweep(ParameterSpace(grid={"i": list(range(n))}), ["python", "job.py"], [source], workdir=workdir,
                  directory=workdir.parent / "sweeps" / f"{h.user}-{n}-{tag}", poll_interval=1.0)
    t0 = time.perf_counter()
    sweep.start().wait()
    results = sweep.results()
    elapsed = time.perf_counter() - t0
    assert len(results) == n and (results["y"] == results["i"] * 2).all(), sweep.status()["error"].dropna().head()
    return elapsed, source


def _job_command(i: int, base: str) -> str:
    d = f"{base}/plain/{i}"
    return (f"mkdir -p {d} && cd {base}/project && HSM_TASK_DIR={d} {PY} job.py i={i} "
            f"> {d}/stdout.log 2> {d}/stderr.log")


async def plain(h, n: int, host: HostCPU, into: dict[str, list[float]]) -> float:
    async with asyncssh.connect(**h.connect_kwargs()) as conn:
        base = f"/home/{h.user}/plain-bench"
        await conn.run(f"rm -rf {base}; mkdir -p {base}/project && "
                       f"printf '%s' {shlex.quote(JOB)} > {base}/project/job.py", check=True)
        sem = asyncio.Semaphore(SLOTS)

        async def one(i: int) -> None:
            async with sem:
                result = await conn.run(_job_command(i, base))
                assert result.exit_status == 0, result.stderr

        with measured(host, into, n):
            t0 = time.perf_counter()
            await asyncio.gather(*(one(i) for i in range(n)))
            return time.perf_counter() - t0


async def fresh(h, n: int) -> float:
    base = f"/home/{h.user}/plain-bench"
    sem = asyncio.Semaphore(SLOTS)

    async def one(i: int) -> None:
        async with sem:
            proc = await asyncio.create_subprocess_exec(*h.ssh_command(), h.destination, _job_command(i, base),
                                                        stdin=asyncio.subprocess.DEVNULL)
            assert await proc.wait() == 0

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    return time.perf_counter() - t0


def rc_runs(h) -> int:
    path = h.home / "rc_runs"
    return len(path.read_text().split()) if path.exists() else 0


def _ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1e3:5.1f}" if values else "  n/a"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[200, 1000])
    parser.add_argument("--fresh-jobs", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clean-only", action="store_true", help="skip the user with the slow ~/.bashrc")
    args = parser.parse_args()
    host_cpu = HostCPU()
    try:
        with SSHServer() as server, tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp) / "project"  # the synced project; sweep folders go beside it
            workdir.mkdir()
            (workdir / "job.py").write_text(JOB)
            hosts = {"clean ~/.bashrc": server.start("127.0.0.6")}
            if not args.clean_only:
                hosts["~/.bashrc costing ~200 ms"] = server.start("127.0.0.7", bashrc=COUNTED_HEAVY_BASHRC)
            for h in hosts.values():
                host_cpu.add(h.sshd_pid)
            print(f"interpreter on the remote: {PY}; {SLOTS} jobs at a time; loopback sshd; "
                  f"{args.rounds} rounds alternated, medians; host CPU "
                  f"{'from a cgroup' if host_cpu.path else 'not measured (no writable cgroup here)'}")
            for label, h in hosts.items():
                print(f"\n== remote user with a {label}")
                for n in args.sizes:
                    t_plain, t_ours, rcs = [], [], []
                    c_plain: dict[str, list[float]] = {"controller": [], "host": []}
                    c_ours: dict[str, list[float]] = {"controller": [], "host": []}
                    for r in range(args.rounds):
                        t_plain.append(asyncio.run(plain(h, n, host_cpu, c_plain)))
                        before = rc_runs(h)
                        with measured(host_cpu, c_ours, n):
                            t, source = ours(h, n, workdir, str(r))
                        rcs.append(rc_runs(h) - before)
                        t_ours.append(t)
                    p, o = statistics.median(t_plain), statistics.median(t_ours)
                    print(f"{n:>5} jobs: plain asyncssh {n / p:6.1f} jobs/s | hsm_notebook {n / o:6.1f} jobs/s"
                          f" | ratio {p / o:5.2f}   (rounds: plain {', '.join(f'{t:.2f}' for t in t_plain)} s;"
                          f" ours {', '.join(f'{t:.2f}' for t in t_ours)} s)")
                    print(f"       CPU ms per job: plain controller {_ms(c_plain['controller'])} + hosts "
                          f"{_ms(c_plain['host'])} | hsm_notebook controller {_ms(c_ours['controller'])} + hosts "
                          f"{_ms(c_ours['host'])}")
                    print(f"       channels opened by hsm_notebook: {source.conn.channels_opened} in all "
                          f"({source.conn.channels_opened / n:.4f} per job); polling rounds {source.poll_rounds}; "
                          f"remote commands in all {source.conn.commands_run} ({source.conn.commands_run / n:.2f} "
                          "per job)")
                    if "costing" in label:
                        print(f"       the rc file ran {statistics.median(rcs):.0f} time(s) per sweep of {n} jobs "
                              f"(the plain loop: once per job)")
                t_fresh = asyncio.run(fresh(h, args.fresh_jobs))
                print(f"fresh `ssh` per job ({args.fresh_jobs} jobs): {args.fresh_jobs / t_fresh:6.1f} jobs/s; "
                      f"hsm_notebook at {args.sizes[-1]} jobs is "
                      f"{(args.sizes[-1] / o) / (args.fresh_jobs / t_fresh):.1f}x that")
    finally:
        host_cpu.close()


if __name__ == "__main__":
    main()
