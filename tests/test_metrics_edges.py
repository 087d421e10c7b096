"""Lines of metrics.jsonl a user writes, read on this machine (issue 19, items 5, 6, 12, 13):
NaN and infinities are values, nested dicts flatten, bools and numeric strings are numbers, a
line without a step takes its line number, the last line is read once the job ended, a line over
1 MiB is skipped while the curve goes on, and whatever cannot be read is counted and named.
``best()`` ranks a metric logged only as steps and leaves out text with a word."""

from __future__ import annotations

import json
import math
import sqlite3
import warnings
from pathlib import Path

from hsm_notebook import ParameterSpace, Sweep
from hsm_notebook.core.ledger import steps
from hsm_notebook.core.model.errors import HsmWarning
from tests.helpers import until

#: A job writing the lines of LINES.json (in its working folder) to its metrics.jsonl as they are.
RAW = ("import json, os, pathlib\n"
       "lines = json.loads(pathlib.Path('LINES.json').read_text())\n"
       "pathlib.Path(os.environ['HSM_TASK_DIR'], 'metrics.jsonl').write_text(''.join(lines))\n")


def _raw_sweep(workdir: Path, lines: list[str]) -> tuple[Sweep, str]:
    (workdir / "LINES.json").write_text(json.dumps(lines))
    (workdir / "raw.py").write_text(RAW)
    sweep = Sweep(ParameterSpace(grid={"x": [1]}), ["python", "raw.py"], workdir=workdir, poll_interval=0.1,
                  arg_style="none").run()
    [tid] = list(sweep.status()["task_id"])
    assert sweep.task(tid)["state"] == "COMPLETED", sweep.task(tid)
    return sweep, tid


def _values(sweep: Sweep, tid: str) -> dict[tuple[float, str], float]:
    frame = sweep.metrics(tid)
    return {(row.step, row.metric): row.value for row in frame.itertuples()}


def test_nan_and_infinity_from_log_metrics_are_values(workdir: Path) -> None:
    (workdir / "diverge.py").write_text(
        "from hsm_notebook.metrics import log_metrics\n"
        "log_metrics(step=0, loss=0.5)\n"
        "log_metrics(step=1, loss=float('nan'))\n"
        "log_metrics(step=2, loss=float('inf'), grad=float('-inf'))\n")
    sweep = Sweep(ParameterSpace(grid={"x": [1]}), ["python", "diverge.py"], workdir=workdir, poll_interval=0.1,
                  arg_style="none").run()
    [tid] = list(sweep.status()["task_id"])
    got = _values(sweep, tid)
    assert got[(0.0, "loss")] == 0.5
    assert math.isnan(got[(1.0, "loss")])  # a diverging run shows as one
    assert got[(2.0, "loss")] == math.inf and got[(2.0, "grad")] == -math.inf
    assert sweep.task(tid)["metrics_note"] is None  # every line was read


def test_every_kind_of_line_is_read_or_named(workdir: Path) -> None:
    lines = [
        '{"step": 1, "val": {"loss": 0.4, "acc": 0.9}}\n',  # line 1: nested, flattened as in results()
        '{"step": 2, "ok": true, "lr": "0.5"}\n',  # line 2: a bool is 1, a numeric string its number
        '{"loss": 0.3}\n',  # line 3: no step: its line number
        'not json at all\n',  # line 4: unreadable
        '\n',  # line 5: blank, ignored
        '{"step": 5, "phase": "train", "loss": 0.2}\n',  # line 6: text value named, the rest kept
        '[1, 2]\n',  # line 7: not an object
        '{"step": 7, "loss": 0.1}',  # line 8: the last line, without its newline
    ]
    sweep, tid = _raw_sweep(workdir, lines)
    got = _values(sweep, tid)
    assert got[(1.0, "val.loss")] == 0.4 and got[(1.0, "val.acc")] == 0.9
    assert got[(2.0, "ok")] == 1.0 and got[(2.0, "lr")] == 0.5
    assert got[(3.0, "loss")] == 0.3
    assert got[(5.0, "loss")] == 0.2 and (5.0, "phase") not in got
    assert got[(7.0, "loss")] == 0.1  # read once the job ended
    note = sweep.task(tid)["metrics_note"]
    assert note is not None and note.startswith("3 lines of metrics.jsonl unreadable, first: line 4: not JSON"), note


def test_the_job_detail_shows_what_could_not_be_read(workdir: Path, panels: list) -> None:
    sweep, tid = _raw_sweep(workdir, ['{"step": 1, "loss": 1}\n', 'oops\n'])
    panel = sweep.panel()
    panels.append(panel)
    panel.tabs.selected_index = 3  # Job detail
    panel.detail_view.task.value = tid
    until(lambda: "1 line of metrics.jsonl unreadable, first: line 2" in panel.detail_view.body.value,
          timeout=10, what="the note in the Job detail")


def test_a_line_over_one_mib_is_skipped_and_the_curve_goes_on(workdir: Path, sweeps: list) -> None:
    release = workdir / "release"
    (workdir / "long.py").write_text(
        "import json, os, pathlib, time\n"
        "from hsm_notebook.metrics import log_metrics\n"
        "log_metrics(step=0, loss=1.0)\n"
        "with open(pathlib.Path(os.environ['HSM_TASK_DIR'], 'metrics.jsonl'), 'a') as f:\n"
        "    f.write(json.dumps({'step': 1, 'blob': 'x' * (3 << 19)}) + '\\n')\n"  # 1.5 MiB
        "for i in range(2, 5):\n"
        "    log_metrics(step=i, loss=1.0 / i)\n"
        f"while not pathlib.Path({str(release)!r}).exists():\n"
        "    time.sleep(0.05)\n")
    sweep = Sweep(ParameterSpace(grid={"x": [1]}), ["python", "long.py"], workdir=workdir, poll_interval=0.1,
                  arg_style="none")
    sweeps.append(sweep)
    sweep.start()
    [tid] = list(sweep.status()["task_id"])
    until(lambda: 4.0 in set(sweep.metrics(tid, "loss")["step"]), timeout=30,
          what="the steps after a 1.5 MiB line, while the job runs")
    assert sweep.task(tid)["state"] == "RUNNING"  # live, not read at the end
    note = sweep.task(tid)["metrics_note"]
    assert note is not None and "line 2: longer than 1 MiB" in note, note
    release.write_text("")
    sweep.wait(timeout=60)
    assert list(sweep.metrics(tid, "loss")["step"]) == [0.0, 2.0, 3.0, 4.0]  # nothing twice at the end
    assert sweep.task(tid)["metrics_note"].startswith("1 line of metrics.jsonl unreadable")


def test_long_line_split_over_reads_and_nan_round_trip() -> None:
    """The parser alone: a long line met in pieces (as the per-poll limit cuts it), and NaN
    through the ledger (SQLite would keep a bare NaN as NULL)."""
    conn = sqlite3.connect(":memory:")
    conn.executescript(steps.SCHEMA)
    conn.execute("CREATE TABLE tasks (task_id TEXT, attempt INTEGER, state TEXT)")
    head = b'{"step": 1, "loss": NaN}\n{"step": 2, "blob": "' + b"y" * steps.MAX_LINE
    added, used = steps.store(conn, "t", 1, head[:steps.MAX_READ])
    assert added == 1
    added2, used2 = steps.store(conn, "t", 1, head[used:used + steps.MAX_READ])
    assert added2 == 0 and used2 > 0  # the long line's bytes are passed over
    tail = b'"}\n{"step": 3, "loss": Infinity}\n{"step": 4, "loss": -0.5}'
    added3, used3 = steps.store(conn, "t", 1, tail)
    assert (added3, used3) == (1, tail.rindex(b"\n") + 1)  # the last line waits for its newline ...
    assert steps.store(conn, "t", 1, tail[used3:], final=True)[0] == 1  # ... until the job ended
    frame = steps.frame(conn, "t")
    assert list(frame["step"]) == [1.0, 3.0, 4.0]
    assert math.isnan(frame["value"].iloc[0]) and frame["value"].iloc[1] == math.inf
    assert steps.note(conn, "t", 1) == "1 line of metrics.jsonl unreadable, first: line 2: longer than 1 MiB, skipped"


JOB_RESULT = ("import json, os, pathlib\n"
              "from hsm_notebook.metrics import log_metrics\n"
              "x = json.loads(pathlib.Path(os.environ['HSM_TASK_DIR'], 'params.json').read_text())['x']\n"
              "{body}\n")


def test_best_ranks_an_objective_logged_only_as_steps(workdir: Path) -> None:
    (workdir / "job.py").write_text(JOB_RESULT.format(body=(
        "if x == 3:\n"
        "    for i, v in enumerate([0.9, 0.5, 0.05]):\n"
        "        log_metrics(step=i, loss=v)\n"
        "else:\n"
        "    log_metrics(loss=x / 10)")))
    sweep = Sweep(ParameterSpace(grid={"x": [1, 2, 3]}), ["python", "job.py"], workdir=workdir, poll_interval=0.1,
                  arg_style="none", objective={"loss": "min"}).run()
    top = sweep.best(1)
    assert list(top["x"]) == [3] and list(top["loss"]) == [0.05]  # its last step, the best of all
    assert sorted(sweep.results()["loss"]) == [0.05, 0.1, 0.2]


def test_best_leaves_out_text_values_naming_the_tasks(workdir: Path) -> None:
    (workdir / "job.py").write_text(JOB_RESULT.format(body=(
        "log_metrics(loss='diverged' if x == 2 else x / 10)")))
    sweep = Sweep(ParameterSpace(grid={"x": [1, 2, 3]}), ["python", "job.py"], workdir=workdir, poll_interval=0.1,
                  arg_style="none", objective={"loss": "min"}).run()
    results = sweep.results()
    [bad] = list(results.loc[results["x"] == 2, "task_id"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        top = sweep.best(3)
    assert list(top["x"]) == [1, 3]
    words = [str(w.message) for w in caught if issubclass(w.category, HsmWarning)]
    assert len(words) == 1 and bad in words[0] and "'diverged'" in words[0], words
    assert top.attrs["left_out"] == {bad: "str 'diverged', not a number"}


def test_a_ledger_from_before_runs_reads_as_one_run() -> None:
    """A ledger written before runs were kept (no ``run`` column, no ``step_files``) still reads,
    and a writer's connection adds the column."""
    conn = sqlite3.connect(":memory:")
    conn.executescript(
        "CREATE TABLE steps (task_id TEXT NOT NULL, attempt INTEGER NOT NULL, step REAL NOT NULL, "
        "metric TEXT NOT NULL, value REAL NOT NULL, time REAL NOT NULL);"
        "CREATE TABLE tasks (task_id TEXT, attempt INTEGER, state TEXT);"
        "INSERT INTO steps VALUES ('t', 1, 0, 'loss', 0.5, 1.0), ('t', 1, 1, 'loss', 0.25, 2.0);"
        "INSERT INTO tasks VALUES ('t', 1, 'COMPLETED');")
    assert list(steps.frame(conn, "t")["run"]) == [1, 1]
    assert [r[3] for r in steps.rows_after(conn, ["t"], "loss")] == [0.5, 0.25]
    assert steps.last_values(conn) == {"t": {"loss": 0.25}} and steps.note(conn, "t", 1) is None
    steps.migrate(conn)
    assert steps.store(conn, "t", 1, b'{"step": 2, "loss": 0.125}\n') == (1, 27)
    assert list(steps.frame(conn, "t")["value"]) == [0.5, 0.25, 0.125]
