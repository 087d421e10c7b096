"""Issue 22, items 4 and 6: ``sweep.export(path)`` writes every task (parameters, final metrics,
state, source, times) to CSV or Parquet by the path's suffix, and the Status tab's Export button
does the same; ``metrics()`` carries each task's parameters and keeps whole steps integers."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import pandas as pd
import pytest

from hsm_notebook.core.model.errors import ConfigError
from hsm_notebook.ui.panel import SweepPanel
from tests.test_status_grid import ledger_sweep


def _sweep(tmp_path: Path):
    sweep = ledger_sweep(tmp_path / "w", {"lr": [0.1, 0.001], "layers": [[64, 64], [128]]},
                         {0: ("COMPLETED", {"val_acc": 0.91, "val": {"loss": 0.3}}), 1: ("FAILED", None),
                          2: ("RUNNING", None)},
                         curves={2: [(0, "val_acc", 0.4), (1, "val_acc", 0.6)]}, objective={"val_acc": "max"})
    sweep.note(sweep.status()["task_id"][1], "out of memory")
    return sweep


def test_csv_has_every_task_with_params_final_metrics_state_source_and_times(tmp_path: Path) -> None:
    sweep = _sweep(tmp_path)
    written = sweep.export(tmp_path / "results.csv")
    assert written == tmp_path / "results.csv"
    frame = pd.read_csv(written)
    assert list(frame.columns) == ["task_id", "state", "source", "lr", "layers", "val_acc", "val.loss", "attempt",
                                   "submit_time", "start_time", "end_time", "duration_s", "exit_code", "error",
                                   "job_id", "note"]
    assert list(frame["state"]) == ["COMPLETED", "FAILED", "RUNNING", "PENDING"]  # every task, whatever its state
    assert list(frame["task_id"]) == list(sweep.status()["task_id"])
    first = frame.iloc[0]
    assert first["val_acc"] == 0.91 and first["val.loss"] == 0.3 and first["source"] == "local"
    assert json.loads(frame["layers"][0]) == [64, 64]  # a list is JSON text
    assert frame["note"][1] == "out of memory" and frame["error"][1] == "boom"
    assert pd.to_datetime(frame["end_time"]).notna().tolist() == [True, True, False, False]
    assert list(tmp_path.glob(".results.csv*")) == []  # no temporary file left behind


def test_parquet_keeps_the_types(tmp_path: Path) -> None:
    sweep = _sweep(tmp_path)
    frame = pd.read_parquet(sweep.export(tmp_path / "results.parquet"))
    assert len(frame) == 4 and frame["lr"].dtype == "float64" and frame["val_acc"].dtype == "float64"
    assert str(frame["end_time"].dtype).startswith("datetime64") and str(frame["end_time"].dt.tz) == "UTC"
    assert list(frame["state"].astype(str)) == ["COMPLETED", "FAILED", "RUNNING", "PENDING"]
    assert json.loads(frame["layers"][1]) == [128]
    again = pd.read_parquet(sweep.export(tmp_path / "same.pq"))
    assert list(again.columns) == list(frame.columns)


def test_compressed_csv_and_a_file_replaced_whole(tmp_path: Path) -> None:
    sweep = _sweep(tmp_path)
    target = tmp_path / "r.csv.gz"
    target.write_text("old")
    sweep.export(target)
    assert len(pd.read_csv(target)) == 4


@pytest.mark.parametrize("name, words", [
    ("results.xlsx", "cannot tell the format of 'results.xlsx' from its suffix; end it with .csv"),
    ("results", "cannot tell the format"),
    ("missing/results.csv", "does not exist; create it or give another path"),
])
def test_a_path_that_cannot_be_written_says_why(tmp_path: Path, name: str, words: str) -> None:
    sweep = _sweep(tmp_path)
    with pytest.raises(ConfigError, match=re.escape(words)) as caught:
        sweep.export(tmp_path / name)
    assert caught.value.field == "path" and not (tmp_path / name).exists()


def test_the_export_button_writes_the_file_named_beside_it(tmp_path: Path, panels: list, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    sweep = _sweep(tmp_path)
    panel = SweepPanel(sweep, refresh_interval=3600)
    panels.append(panel)
    view = panel.status_view
    assert view.export_path.value == f"{sweep.id}.csv"
    view.export_button.click()
    assert len(pd.read_csv(tmp_path / f"{sweep.id}.csv")) == 4
    assert f"Wrote every task of the sweep to {tmp_path / sweep.id}.csv" in html.unescape(panel.message.value)
    view.export_path.value = "results.txt"
    view.export_button.click()
    assert "cannot tell the format" in html.unescape(panel.message.value) and "hsm-error" in panel.message.value


# -- metrics(): parameters joined, whole steps as integers ---------------------------------------
def test_metrics_carry_the_parameters_and_whole_steps_stay_integers(tmp_path: Path) -> None:
    sweep = ledger_sweep(tmp_path, {"step": ["a"], "alpha": [1e-5, 1e-2]},
                         {0: ("RUNNING", None), 1: ("RUNNING", None)},
                         curves={0: [(0, "val_acc", 0.5), (1, "val_acc", 0.6)], 1: [(0, "loss", 2.0)]})
    frame = sweep.metrics()
    assert list(frame.columns) == ["task_id", "attempt", "run", "step", "metric", "value", "time", "params.step",
                                   "alpha"]  # a parameter named like a column is params.<name>
    assert frame["step"].dtype == "int64" and list(frame["step"]) == [0, 1, 0]
    assert list(frame["alpha"]) == [1e-5, 1e-5, 1e-2] and list(frame["params.step"]) == ["a", "a", "a"]
    curves = frame[frame["metric"] == "val_acc"].groupby("alpha")["value"].last()
    assert curves.to_dict() == {1e-5: 0.6}
    assert list(sweep.metrics(params=False).columns) == ["task_id", "attempt", "run", "step", "metric", "value",
                                                         "time"]
    empty = sweep.metrics(task_id="nope")
    assert empty.empty and {"alpha", "params.step"} <= set(empty.columns)


def test_a_fractional_step_keeps_the_steps_floats(tmp_path: Path) -> None:
    sweep = ledger_sweep(tmp_path, {"x": [1]}, {0: ("RUNNING", None)},
                         curves={0: [(0, "loss", 1.0), (0.5, "loss", 0.8), (1, "loss", 0.7)]})
    frame = sweep.metrics()
    assert frame["step"].dtype == "float64" and list(frame["step"]) == [0.0, 0.5, 1.0]
