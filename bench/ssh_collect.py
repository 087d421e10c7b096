"""SSH collection: bringing finished jobs' folders home, against ``ssh host cat file > file``.

    python bench/ssh_collect.py [--mb 200] [--rounds 5] [--small 500]

Starts its own loopback sshd (the test suite's fixture code, 127.0.0.8) and an
SSHComputeSource set up on it.  A job folder holding a ``--mb`` MB stdout.log (random
bytes) is collected by ``collect_results`` (a tar stream over the source's second shell, the one
for large transfers, written to disk as it arrives) and, as the baseline, its stdout.log is
copied by a fresh ``ssh HOST cat FILE > FILE``; rounds alternate between the two and medians are
printed, with the controller's peak RSS growth while collecting (VmHWM reset before each round);
first, once, onto a simulated slow disk (the stream must then wait, not pile up in memory).
Then ``--small`` small job folders (6 files each) in one ``collect_results`` call, by the
tar stream (through the persistent shell: no channel, no login shell) and by the SFTP fallback
(hosts without tar), with the channels each opened.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hsm_notebook import SSHComputeSource  # noqa: E402
from hsm_notebook.core._loop import run_sync  # noqa: E402
from hsm_notebook.sources import collect as collecting  # noqa: E402
from tests.servers.sshd import SSHServer  # noqa: E402


def _status(key: str) -> int:
    """A VmRSS / VmHWM line of /proc/self/status, in KiB."""
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def collect(source: SSHComputeSource, names: list[str]) -> tuple[float, float]:
    """Seconds to collect ``names`` (their local folders removed first), and the peak RSS growth in MB."""
    for name in names:
        shutil.rmtree(source.job_dir(name), ignore_errors=True)
    rss = _status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM (the peak) to the current RSS
    t0 = time.perf_counter()
    assert run_sync(source.collect_results(names)) is True
    elapsed = time.perf_counter() - t0
    return elapsed, (_status("VmHWM") - rss) / 1024


def slow_copy(src, dst, length: int = 0) -> None:
    """shutil.copyfileobj onto a slow disk: 64 KiB at a time, 1 ms per write."""
    while chunk := src.read(1 << 16):
        dst.write(chunk)
        time.sleep(0.001)


def baseline(h, remote: str, local: Path) -> float:
    t0 = time.perf_counter()
    with open(local, "wb") as out:
        subprocess.run([*h.ssh_command(), h.destination, f"cat {remote}"], stdout=out, check=True)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--small", type=int, default=500)
    args = parser.parse_args()
    with SSHServer() as server, tempfile.TemporaryDirectory() as tmp:
        h = server.start("127.0.0.8")
        source = SSHComputeSource(h.host, "bench", 1, port=h.port, username=h.user, client_keys=[str(h.client_key)],
                                  known_hosts=str(h.known_hosts), python="/usr/bin/python3", command=["true"],
                                  keep_remote=True)
        sweep_dir = Path(tmp) / "sweep"
        run_sync(source.setup(sweep_dir, "bench-collect"))
        tasks = source.jobs.tasks_dir
        big = f"{tasks}/big"
        run_sync(source.conn.run(f"mkdir -p {big} && head -c {args.mb << 20} /dev/urandom > {big}/stdout.log && "
                                 f"echo 0 > {big}/exit_code && echo 1 > {big}/pid && : > {big}/stderr.log && "
                                 f"echo '{{\"y\": 1}}' > {big}/metrics.json", timeout=300))
        # first, in a fresh process (so no earlier round's memory hides it): a disk slower than the network
        real_copy = collecting.shutil.copyfileobj
        collecting.shutil = SimpleNamespace(copyfileobj=slow_copy)
        try:
            seconds, mb = collect(source, ["big"])
        finally:
            collecting.shutil = shutil
        assert real_copy is shutil.copyfileobj
        print(f"{args.mb} MB job folder onto a slow disk (64 KiB writes, 1 ms each: ~{0.0625 / 0.001:.0f} MB/s): "
              f"{seconds:.2f} s, controller peak RSS growth {mb:.1f} MB (target < 50)\n")
        print(f"{args.mb} MB job folder over loopback sshd; {args.rounds} rounds, alternated; medians")
        ours, theirs, growth = [], [], []
        for _ in range(args.rounds):
            theirs.append(baseline(h, f"{big}/stdout.log", Path(tmp) / "cat.bin"))
            seconds, mb = collect(source, ["big"])
            ours.append(seconds)
            growth.append(mb)
            print(f"    round: cat {theirs[-1]:.2f} s, collect {seconds:.2f} s, RSS +{mb:.1f} MB", flush=True)
        collected = source.job_dir("big") / "stdout.log"
        assert collected.stat().st_size == args.mb << 20 and _digest(collected) == _digest(Path(tmp) / "cat.bin")
        t_ours, t_cat = statistics.median(ours), statistics.median(theirs)
        print(f"  ssh cat > file       {t_cat:6.2f} s  ({args.mb / t_cat:6.0f} MB/s)")
        print(f"  collect_results      {t_ours:6.2f} s  ({args.mb / t_ours:6.0f} MB/s)  ratio to ssh cat "
              f"{t_ours / t_cat:4.2f} (target < 1.5)")
        print(f"  controller peak RSS growth while collecting: median {statistics.median(growth):.1f} MB, "
              f"max {max(growth):.1f} MB (target < 50)")

        n = args.small
        names = [f"s{i:05d}" for i in range(n)]
        script = " && ".join(f"mkdir -p {tasks}/{j} && cd {tasks}/{j} && echo 0 > exit_code && echo 1 > pid && "
                             f"echo hello > stdout.log && : > stderr.log && echo '{{\"y\": 1}}' > metrics.json && "
                             f"echo '{{\"x\": 1}}' > params.json" for j in names[:1])
        run_sync(source.conn.run(script))
        run_sync(source.conn.run(f"cd {tasks} && for j in {' '.join(names[1:])}; do cp -r {names[0]} $j; done",
                                 timeout=300))
        print(f"\n{n} small job folders (6 files each) in one collect_results call; medians of {args.rounds}")
        for label, tar in (("tar stream", True), ("SFTP fallback", False)):
            source.jobs.tar = tar
            before = source.conn.channels_opened
            times = [collect(source, names)[0] for _ in range(args.rounds)]
            assert all((source.job_dir(j) / "metrics.json").exists() for j in names)
            channels = (source.conn.channels_opened - before) / args.rounds
            print(f"  {label:14s} {statistics.median(times):6.2f} s ({n / statistics.median(times):6.0f} folders/s),"
                  f" {channels:.0f} new channel(s) per call")
        run_sync(source.cleanup())


if __name__ == "__main__":
    main()
