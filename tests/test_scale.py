"""Creation and reads that do not grow with Python objects per task (issue 23): the fast paths give
exactly what the row-by-row ones gave, creation reports progress, and an interrupted creation
leaves nothing."""

from __future__ import annotations

import io
import json
import sqlite3

import pandas as pd
import pytest

from hsm_notebook import ConfigError, ParameterSpace, Sweep
from hsm_notebook.core import progress
from hsm_notebook.core.spec.space import task_id

SPACES = [
    ParameterSpace(grid={"lr": [1e-3, 0.1, 1], "model": {"width": [128, 256], "act": ["relu", "tänh", None]}},
                   paired=[{"seed": [1, 2], "split": ["a", {"b": [1, {"z": 2, "a": 1}]}]}],
                   fixed={"epochs": 3, "flag": True}),
    ParameterSpace(grid={"b": [1.5, -2], "a": [[1, 2], {"y": 1, "x": [True, False]}], "big": [2**70, 1]}),
    ParameterSpace(fixed={"only": 1}),
    ParameterSpace(grid={"x": [1, 2, 3]}, exclude=[{"x": 2}]),
    ParameterSpace(combinations=[{"a": 1}, {"a": 2, "b": 3}]),
    ParameterSpace(grid={}),  # nothing at all: no row (an executor's or a search's sweep)
]


@pytest.mark.parametrize("space", SPACES, ids=["nested", "lists-and-big-ints", "fixed-only", "exclude", "ragged",
                                                "empty"])
def test_json_rows_are_the_task_ids_and_json_of_every_combination(space):
    assert list(space.json_rows()) == [(task_id(p), json.dumps(p)) for p in space]


def _as_json_ledger(directory) -> None:
    """The same ledger without the mark that its tasks are the space's product: read row by row."""
    with sqlite3.connect(directory / "ledger.sqlite") as db:
        db.execute("DELETE FROM meta WHERE key='product'")


def _finish_some(directory) -> None:
    with sqlite3.connect(directory / "ledger.sqlite") as db:
        db.execute("UPDATE tasks SET state='COMPLETED', attempt=1, source='here', job_name=task_id || '-1', "
                   "job_id=task_id || '-1', start_time=1.7e9 + idx / 7.0, end_time=1.7e9 + idx + 2, exit_code=0, "
                   "metrics=json_object('loss', 1.0 / (idx + 1), 'n', idx) WHERE idx % 3 = 0")
        db.execute("UPDATE tasks SET state='FAILED', attempt=2, source='far', job_name=task_id || '-2', "
                   "job_id='12345_' || idx, exit_code=3, error='it broke', detail='x' WHERE idx % 3 = 1")


@pytest.mark.parametrize("space", SPACES[:2], ids=["nested", "lists-and-big-ints"])
def test_the_index_path_reads_what_the_json_path_reads(tmp_path, space):
    sweep = Sweep(space, ["true"], directory=tmp_path / "s")
    _finish_some(sweep.directory)
    fast_status, fast_results = sweep.status(), sweep.results()
    _as_json_ledger(sweep.directory)
    slow_status, slow_results = sweep.status(), sweep.results()
    pd.testing.assert_frame_equal(fast_status.drop(columns=["duration"]), slow_status.drop(columns=["duration"]),
                                  check_exact=True)
    pd.testing.assert_frame_equal(fast_results, slow_results, check_exact=True)  # every float, to the last bit
    row = fast_status.iloc[1]
    assert (row["state"], row["job_id"], row["error"], row["attempt"]) == ("FAILED", "12345_1", "it broke", 2)
    first = fast_status.iloc[0]  # a job id that is its job's name is known without reading it
    assert first["job_id"] == first["job_name"] == first["task_id"] + "-1"
    never = fast_status.iloc[2]  # a task that never ran has no times, no duration, no exit code
    assert never["state"] == "PENDING" and pd.isna(never["end_time"]) and pd.isna(never["submit_time"])
    assert pd.isna(never["job_name"]) and pd.isna(never["job_id"])  # NaN as before (not NA: `x or y` works)
    assert pd.isna(never["duration"]) and pd.isna(never["exit_code"]) and never["attempt"] == 0


def test_status_reads_only_the_asked_state_and_columns(tmp_path):
    sweep = Sweep(ParameterSpace(grid={"x": list(range(9))}), ["true"], directory=tmp_path / "s")
    _finish_some(sweep.directory)
    failed = sweep.status(state="FAILED", columns=["x", "error"])
    assert list(failed.columns) == ["task_id", "state", "x", "error"]
    assert list(failed["x"]) == [1, 4, 7] and set(failed["error"]) == {"it broke"}
    with pytest.raises(ConfigError, match="must be one of"):
        sweep.status(state="DONE")


def test_a_big_creation_reports_progress_where_someone_reads_it(tmp_path):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Terminal()
    report = progress.creation("big", 300_000, out)
    assert report is not None and progress.creation("small", 10, out) is None
    assert progress.creation("big", 300_000, io.StringIO()) is None  # a pipe: quiet
    report(150_000)
    report(300_000)
    assert out.getvalue() == ("\rcreating sweep big: 150,000/300,000 tasks written"
                              "\rcreating sweep big: 300,000/300,000 tasks written\n")


def test_an_interrupted_creation_leaves_nothing(tmp_path):
    seen = []

    def requires(params):
        seen.append(params)
        if len(seen) == 60_000:  # past the first chunk written: Ctrl-C / a kernel interrupt here
            raise KeyboardInterrupt
        return None

    with pytest.raises(KeyboardInterrupt):
        Sweep(ParameterSpace(grid={"x": list(range(100_000))}), ["true"], directory=tmp_path / "s",
              requires=requires)
    assert not (tmp_path / "s").exists() and not list(tmp_path.iterdir())  # not the folder, not its build
