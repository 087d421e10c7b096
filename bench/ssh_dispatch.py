"""SSH dispatch: SSHComputeSource vs plain asyncssh ``conn.run`` vs a fresh ``ssh`` per job.

    python bench/ssh_dispatch.py [--sizes 200 1000] [--rounds 3] [--fresh-jobs 100]

Starts its own loopback sshd (the test suite's fixture code, 127.0.0.6/7) with two
users: one with a clean ``~/.bashrc`` and one whose ``~/.bashrc`` burns ~200 ms of
CPU (as ``pyenv init`` / ``conda init`` do on real hosts).  Every job is the same
trivial ``/usr/bin/python3`` script writing a small metrics JSON into its own dir;
8 at a time in every variant.  Rounds alternate the plain loop and hsm_notebook; the
median of each is printed with their ratio (hsm_notebook is timed from ``start()`` to all
results collected, set-up and project sync included), then SSH channels opened per job and
remote commands per polling round for SSHComputeSource.
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import asyncssh  # noqa: E402
from _jobs import JOB  # noqa: E402

from hsm_notebook import ParameterSpace, SSHComputeSource, Sweep  # noqa: E402
from tests.servers.sshd import HEAVY_BASHRC, SSHServer  # noqa: E402

PY = "/usr/bin/python3"
SLOTS = 8


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


async def plain(h, n: int) -> float:
    async with asyncssh.connect(**h.connect_kwargs()) as conn:
        base = f"/home/{h.user}/plain-bench"
        await conn.run(f"rm -rf {base}; mkdir -p {base}/project && "
                       f"printf '%s' {shlex.quote(JOB)} > {base}/project/job.py", check=True)
        sem = asyncio.Semaphore(SLOTS)

        async def one(i: int) -> None:
            async with sem:
                result = await conn.run(_job_command(i, base))
                assert result.exit_status == 0, result.stderr

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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[200, 1000])
    parser.add_argument("--fresh-jobs", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clean-only", action="store_true", help="skip the user with the slow ~/.bashrc")
    args = parser.parse_args()
    with SSHServer() as server, tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp) / "project"  # the synced project; sweep folders go beside it
        workdir.mkdir()
        (workdir / "job.py").write_text(JOB)
        hosts = {"clean ~/.bashrc": server.start("127.0.0.6"),
                 "~/.bashrc costing ~200 ms": server.start("127.0.0.7", bashrc=HEAVY_BASHRC)}
        print(f"interpreter on the remote: {PY}; {SLOTS} jobs at a time; loopback sshd; "
              f"{args.rounds} rounds alternated, medians")
        for label, h in hosts.items():
            if args.clean_only and "costing" in label:
                continue
            print(f"\n== remote user with a {label}")
            for n in args.sizes:
                t_plain, t_ours = [], []
                for r in range(args.rounds):
                    t_plain.append(asyncio.run(plain(h, n)))
                    t, source = ours(h, n, workdir, str(r))
                    t_ours.append(t)
                p, o = statistics.median(t_plain), statistics.median(t_ours)
                per_round = source.conn.commands_run  # every command, including submissions
                print(f"{n:>5} jobs: plain asyncssh {n / p:6.1f} jobs/s | hsm_notebook {n / o:6.1f} jobs/s"
                      f" | ratio {p / o:5.2f}   (rounds: plain {', '.join(f'{t:.2f}' for t in t_plain)} s;"
                      f" ours {', '.join(f'{t:.2f}' for t in t_ours)} s)")
                print(f"       channels opened by hsm_notebook: {source.conn.channels_opened} in all "
                      f"({source.conn.channels_opened / n:.4f} per job); polling rounds {source.poll_rounds}, "
                      f"1 remote command each; remote commands in all {per_round} ({per_round / n:.2f} per job)")
            t_fresh = asyncio.run(fresh(h, args.fresh_jobs))
            print(f"fresh `ssh` per job ({args.fresh_jobs} jobs): {args.fresh_jobs / t_fresh:6.1f} jobs/s; "
                  f"hsm_notebook at {args.sizes[-1]} jobs is "
                  f"{(args.sizes[-1] / o) / (args.fresh_jobs / t_fresh):.1f}x that")


if __name__ == "__main__":
    main()
