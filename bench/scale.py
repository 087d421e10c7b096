"""Scale: a sweep of 10^5 and 10^6 tasks: creating it, ``status()``, ``results()`` and one page of
tasks, against the code of another git revision (the baseline, default the last commit before issue
23's ledger work) in the same run.

    python bench/scale.py [--base REV] [--rounds 3] [--sizes 100000,1000000]

Each measurement runs in a fresh Python process (so its peak memory is its own): creation is
timed around ``Sweep(...)``; ``status()``, ``results()`` and ``page()`` read a sweep made once
per size and code, whose tasks are then marked COMPLETED with two metrics straight in the
ledger (no jobs run).  Rounds alternate baseline and ours; medians are printed with the peak
resident memory (ru_maxrss) of the process that read.  Targets (issue 23): creation < 10 s at
10^6; ``status()`` < 5 s and < 500 MB at 10^6, < 0.5 s at 10^5; a page < 50 ms of kernel time.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = textwrap.dedent("""
    import json, resource, sys, time
    sys.path.insert(0, sys.argv[1])
    from hsm_notebook import ParameterSpace, Sweep
    what, size, directory = sys.argv[2], int(sys.argv[3]), sys.argv[4]
    side = round(size ** (1 / 3))
    space = ParameterSpace(grid={"lr": [10 ** (-i / side) for i in range(side)], "width": list(range(side)),
                                 "act": [f"a{i}" for i in range(size // side // side)]}, fixed={"epochs": 3})
    out = {}
    if what == "create":
        t = time.perf_counter()
        Sweep(space, ["python", "train.py"], directory=directory)
        out["s"] = time.perf_counter() - t
    else:
        sweep = Sweep.attach(directory, resume=False)
        call = {"status": sweep.status, "results": sweep.results,
                "page": lambda: sweep.page(offset=size // 2, limit=25)}[what]
        wall, cpu = time.perf_counter(), time.process_time()
        result = call()
        out["s"], out["cpu"] = time.perf_counter() - wall, time.process_time() - cpu
        out["rows"] = len(result[0] if what == "page" else result)
    out["mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(out))
""")


def child(code: Path, what: str, size: int, directory: Path) -> dict:
    (directory.parent / "train.py").touch()  # the command's script (never run here)
    out = subprocess.run([sys.executable, "-c", CHILD, str(code), what, str(size), str(directory)],
                         capture_output=True, text=True, timeout=1800, cwd=directory.parent)
    if out.returncode:
        raise SystemExit(f"{what} failed with {code}:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def complete_all(directory: Path) -> None:
    """Every task COMPLETED with two metrics, as if the sweep had run (straight in the ledger)."""
    with sqlite3.connect(directory / "ledger.sqlite") as db:
        db.execute("UPDATE tasks SET state='COMPLETED', attempt=1, job_name=task_id || '-1', source='local', "
                   "job_id=task_id || '-1', submit_time=1.7e9 + idx, start_time=1.7e9 + idx + 1, "
                   "end_time=1.7e9 + idx + 5, exit_code=0, metrics=json_object('loss', 1.0 / (idx + 1), 'acc', 0.5)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="7104fca", help="the git revision measured as the baseline (default: "
                        "the last one before the column-by-column reads and creation)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sizes", default="100000,1000000")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="hsm-scale-") as tmp:
        base = Path(tmp) / "base"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(base), args.base], check=True,
                       capture_output=True)
        try:
            codes = {"baseline": base, "ours": ROOT}
            rows: dict[tuple[str, int, str], list[dict]] = {}
            for size in sizes:
                rounds = args.rounds if size <= 100_000 else max(1, args.rounds // 2)
                for r in range(rounds):
                    for name, code in (list(codes.items()) if r % 2 == 0 else list(reversed(codes.items()))):
                        d = Path(tmp) / f"{name}-{size}-{r}"
                        rows.setdefault((name, size, "create"), []).append(child(code, "create", size, d))
                for name, code in codes.items():  # one made sweep per code, read in alternated rounds
                    d = Path(tmp) / f"{name}-{size}-read"
                    child(code, "create", size, d)
                    complete_all(d)
                for r in range(rounds):
                    for what in ("status", "results", "page"):
                        for name, code in (list(codes.items()) if r % 2 == 0 else list(reversed(codes.items()))):
                            d = Path(tmp) / f"{name}-{size}-read"
                            rows.setdefault((name, size, what), []).append(child(code, what, size, d))
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)], capture_output=True)
    print(f"\n{'work':<28} {'baseline':>18} {'ours':>18} {'ours/base':>10}")
    for size in sizes:
        for what in ("create", "status", "results", "page"):
            b, o = rows[("baseline", size, what)], rows[("ours", size, what)]
            key = "cpu" if what == "page" else "s"
            bm, om = statistics.median(x[key] for x in b), statistics.median(x[key] for x in o)
            bmb, omb = statistics.median(x["mb"] for x in b), statistics.median(x["mb"] for x in o)
            unit = "ms CPU" if what == "page" else "s"
            scale = 1000 if what == "page" else 1
            print(f"{what + f' 10^{len(str(size)) - 1}':<28} {bm * scale:>8.2f} {unit:<2} {bmb:>5.0f} MB "
                  f"{om * scale:>8.2f} {unit:<2} {omb:>5.0f} MB {om / bm:>9.2f}x")


if __name__ == "__main__":
    main()
