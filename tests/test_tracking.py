"""Issue 22, item 9: a sweep's tasks logged to MLflow and to W&B offline runs, from its ledger.

Against the real libraries with local storage only: MLflow on a SQLite file or an ``mlruns``
folder (no server), W&B in offline mode (files only, read back with W&B's own reader,
``wandb leet inspect``).  No connection leaves this machine (a guard refuses any that is not
loopback or a local socket).  Expected values come from the ledger (``status``, ``task``, ``metrics``).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hsm_notebook import ConfigError, HsmError, LocalComputeSource, ParameterSpace, Sweep
from hsm_notebook.tracking import MLflowExport, WandbExport, follow, log_to_mlflow, log_to_wandb
from tests.helpers import until


@pytest.fixture(autouse=True)
def _local_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """No telemetry, offline W&B with its files under tmp, and no connection beyond this machine."""
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("DO_NOT_TRACK", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for name in ("WANDB_DIR", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    refused: list[Any] = []
    connect = socket.socket.connect

    def guarded(self: socket.socket, address: Any) -> Any:
        if self.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in ("127.0.0.1", "::1", "localhost"):
            refused.append(address)
            raise OSError(f"test guard: no connection to {address} (local storage only)")
        return connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)
    yield refused
    assert not refused, f"something tried to reach {refused}"


@pytest.fixture(scope="module")
def mlflow_db(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One SQLite tracking store for the module: MLflow makes its tables once (its migrations take
    seconds); each sweep has an experiment of its own in it."""
    from mlflow import MlflowClient  # imported by the tests that use it: collecting stays quick

    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        MlflowClient(uri).search_experiments()
    return uri


@pytest.fixture()
def gated(workdir: Path) -> Iterator[tuple[Sweep, Path]]:
    """A function sweep of three tasks logging steps: lr=0.1 completes, lr=0.5 fails after its steps,
    lr=0.2 completes once ``gate`` exists (so an export can be made while it runs)."""
    gate = workdir / "gate"

    def train(lr: float) -> Any:
        for epoch in range(3):
            yield {"loss": lr / (epoch + 1), "acc@1": lr * epoch}
        while lr == 0.2 and not os.path.exists(gate):
            time.sleep(0.05)
        if lr > 0.4:
            raise ValueError("diverged")
        return {"val_loss": lr / 10, "loss": lr / 100, "note": "ok"}  # a final loss apart from the last step

    sweep = Sweep(ParameterSpace(grid={"lr": [0.1, 0.2, 0.5]}), train, [LocalComputeSource("here", 3)],
                  workdir=workdir, poll_interval=0.1)
    yield sweep, gate
    gate.touch()
    if sweep.running:
        sweep.wait(timeout=120)


def _ended(sweep: Sweep) -> list[str]:
    status = sweep.status()
    return list(status.loc[status["state"].isin(["COMPLETED", "FAILED"]), "task_id"])


def _start_until_two_ended(sweep: Sweep) -> str:
    """Start the sweep, wait until the two ungated tasks ended; the id of the one still running."""
    sweep.start()
    until(lambda: len(_ended(sweep)) == 2, what="two tasks ended")
    status = sweep.status()
    return str(status.loc[status["lr"] == 0.2, "task_id"].iloc[0])


def _steps(sweep: Sweep, task_id: str, metric: str) -> list[tuple[int, float]]:
    rows = sweep.metrics(task_id, metric)
    return [(int(s), float(v)) for s, v in zip(rows["step"], rows["value"], strict=True)]


# -- MLflow --------------------------------------------------------------------------------------
def _mlflow_runs(client: Any, sweep: Sweep) -> dict[str, Any]:
    experiment = client.get_experiment_by_name(sweep.id)
    runs = client.search_runs([experiment.experiment_id], f"tags.`hsm.sweep` = '{sweep.id}'")
    by_task = {r.data.tags["hsm.task_id"]: r for r in runs}
    assert len(by_task) == len(runs), "a task exported twice"
    return by_task


def _check_mlflow_run(client: Any, sweep: Sweep, run: Any) -> None:
    info = sweep.task(run.data.tags["hsm.task_id"])
    assert {k: float(v) for k, v in run.data.params.items()} == info["params"]
    assert run.info.run_name == f"lr={info['params']['lr']}"
    assert run.data.tags["hsm.state"] == info["state"] and run.data.tags["hsm.source"] == info["source"] == "here"
    assert run.data.tags["hsm.attempt"] == str(info["attempt"])
    assert run.info.status == {"COMPLETED": "FINISHED", "FAILED": "FAILED"}[info["state"]]
    assert (run.info.start_time, run.info.end_time) == (int(info["start_time"] * 1000), int(info["end_time"] * 1000))
    final = info["metrics"] or {}
    for metric, name in (("loss", "loss"), ("acc@1", "acc_1")):  # MLflow refuses "@": the name it takes
        history = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, name)]
        steps = _steps(sweep, info["task_id"], metric)
        assert len(steps) == 3 and history == steps + ([(steps[-1][0], final[metric])] if metric in final else [])
    if info["state"] == "COMPLETED":
        assert run.data.metrics["val_loss"] == final["val_loss"] and run.data.metrics["loss"] == final["loss"]
        assert run.data.tags["note"] == info["metrics"]["note"]  # a final value that is not a number: a tag
    else:
        assert "diverged" in run.data.tags["hsm.error"] and "val_loss" not in run.data.metrics


def test_mlflow_gets_one_run_per_task_with_params_steps_and_final_metrics_and_never_twice(gated, mlflow_db):
    sweep, gate = gated
    uri = mlflow_db
    running = _start_until_two_ended(sweep)

    first = log_to_mlflow(sweep, tracking_uri=uri)
    assert sorted(first) == sorted(_ended(sweep)) and running not in first
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    runs = _mlflow_runs(client, sweep)
    assert sorted(runs) == sorted(first)
    for run in runs.values():
        _check_mlflow_run(client, sweep, run)
    assert log_to_mlflow(sweep, tracking_uri=uri) == []  # called again: nothing twice

    # an export that stopped half-way leaves a RUNNING run: it is written again, whole
    experiment = client.get_experiment_by_name(sweep.id).experiment_id
    half = client.create_run(experiment, tags={"hsm.sweep": sweep.id, "hsm.task_id": running, "hsm.attempt": "1"})
    gate.touch()
    sweep.wait(timeout=120)
    assert log_to_mlflow(sweep, tracking_uri=uri) == [running]  # the task that ended since, alone
    assert client.get_run(half.info.run_id).info.lifecycle_stage == "deleted"
    runs = _mlflow_runs(client, sweep)
    assert sorted(runs) == sorted(sweep.status()["task_id"])
    _check_mlflow_run(client, sweep, runs[running])
    assert log_to_mlflow(sweep, tracking_uri=uri) == []


# -- W&B offline ---------------------------------------------------------------------------------
def _wandb_folders(root: Path) -> list[str]:
    """The task ids of the offline run folders under ``root`` (``offline-run-<time>-<run id>``, the run
    id ending in ``-<task id>-<attempt>``), one per run written."""
    return [folder.name.rsplit("-", 2)[1] for folder in (root / "wandb").glob("offline-run-*")]


def _wandb_runs(root: Path) -> dict[str, dict[str, Any]]:
    """Every offline run under ``root``, read by W&B's own reader: ``{task id: run}`` with its config,
    group, name, tags, summary, history and exit code."""
    found: dict[str, dict[str, Any]] = {}
    for folder in sorted((root / "wandb").glob("offline-run-*")):
        out = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(folder)],
                             capture_output=True, text=True, timeout=60, check=True).stdout
        run: dict[str, Any] = {"summary": {}, "history": []}
        for record in map(json.loads, out.splitlines()):
            kind = record["type"]
            if kind == "run":
                run.update(record["run"])
                run["config"] = {k: v for k, v in record["run"]["config"]["update"].items() if k != "_wandb"}
            elif kind == "summary":
                run["summary"].update(record["summary"].get("update", {}))
            elif kind == "history":
                run["history"].append((record["history"].get("step", {}).get("num", 0), record["history"]["item"]))
            elif kind == "exit":
                run["exit_code"] = record["exit"].get("exit_code", 0)
        task_id = run["run_id"].rsplit("-", 2)[1]
        assert task_id not in found, f"task {task_id} exported twice"
        found[task_id] = run
    return found


def _check_wandb_run(sweep: Sweep, task_id: str, run: dict[str, Any]) -> None:
    info = sweep.task(task_id)
    assert run["config"] == info["params"] and run["run_group"] == sweep.id and run["project"] == "digits"
    assert run["display_name"] == f"lr={info['params']['lr']}" and info["state"] in run["tags"]
    for metric in ("loss", "acc@1"):
        assert [(step, item[metric]) for step, item in run["history"]] == _steps(sweep, task_id, metric)
    times = sweep.metrics(task_id).groupby("step")["time"].max()
    assert [item["_timestamp"] for _, item in run["history"]] == pytest.approx([t.timestamp() for t in times])
    if info["state"] == "COMPLETED":
        assert run["exit_code"] == 0
        assert {k: run["summary"][k] for k in info["metrics"]} == info["metrics"]  # final metrics, text included
    else:
        assert run["exit_code"] == 1 and "val_loss" not in run["summary"]


def test_wandb_offline_runs_hold_config_history_and_summary_and_are_never_written_twice(gated, tmp_path):
    sweep, gate = gated
    root = tmp_path / "wb"
    running = _start_until_two_ended(sweep)

    first = log_to_wandb(sweep, project="digits", dir=root)
    assert sorted(first) == sorted(_ended(sweep)) and running not in first
    assert sorted(_wandb_folders(root)) == sorted(first)
    assert log_to_wandb(sweep, project="digits", dir=root) == []  # called again: nothing twice
    assert sorted(_wandb_folders(root)) == sorted(first)

    gate.touch()
    sweep.wait(timeout=120)
    assert log_to_wandb(sweep, project="digits", dir=root) == [running]  # the task that ended since, alone
    runs = _wandb_runs(root)
    assert sorted(runs) == sorted(sweep.status()["task_id"])
    for task_id, run in runs.items():
        _check_wandb_run(sweep, task_id, run)
    assert log_to_wandb(sweep, project="digits", dir=root) == []


def test_a_run_that_could_not_be_written_whole_is_removed_and_written_again(gated, tmp_path, monkeypatch):
    sweep, gate = gated
    gate.touch()
    sweep.run()
    import wandb

    root = tmp_path / "wb"
    log = wandb.Run.log

    def full_disk(self: Any, *args: Any, **kwargs: Any) -> None:
        raise OSError("No space left on device")

    monkeypatch.setattr(wandb.Run, "log", full_disk)
    with pytest.raises(HsmError, match=r"W&B: task \w+ \(attempt 1\) .* could not be written .*No space left"):
        log_to_wandb(sweep, project="digits", dir=root)
    assert _wandb_folders(root) == []  # the run begun is not left half-written
    monkeypatch.setattr(wandb.Run, "log", log)
    assert sorted(log_to_wandb(sweep, project="digits", dir=root)) == sorted(sweep.status()["task_id"])
    assert sorted(_wandb_folders(root)) == sorted(sweep.status()["task_id"])


# -- as tasks end --------------------------------------------------------------------------------
def test_follow_exports_tasks_as_they_end_to_an_mlruns_folder_and_wandb(gated, tmp_path, monkeypatch):
    sweep, gate = gated
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 asks for it to keep a ./mlruns folder
    uri = (tmp_path / "mlruns").as_uri()
    follower = follow(sweep, MLflowExport(uri), WandbExport("digits", dir=tmp_path / "wb"), every=0.1)
    try:
        running = _start_until_two_ended(sweep)
        until(lambda: all(len(ids) == 2 for ids in follower.exported.values()), what="the two ended tasks exported")
        assert all(running not in ids for ids in follower.exported.values())
        gate.touch()
        sweep.wait(timeout=120)
    finally:
        follower.stop()
    from mlflow import MlflowClient

    everything = sorted(sweep.status()["task_id"])
    assert {name: sorted(ids) for name, ids in follower.exported.items()} == {"MLflow": everything,
                                                                             "W&B": everything}
    assert sorted(_mlflow_runs(MlflowClient(uri), sweep)) == everything
    assert sorted(_wandb_folders(tmp_path / "wb")) == everything
    assert follower.errors == {"MLflow": None, "W&B": None}


def test_a_failing_export_in_follow_is_logged_kept_raised_and_tried_again(workdir, mlflow_db, caplog):
    from mlflow import MlflowClient

    uri = mlflow_db
    sweep = Sweep(ParameterSpace(grid={"lr": [0.1, 0.2]}), lambda lr: {"val_loss": lr}, [LocalComputeSource("here", 2)],
                  workdir=workdir, poll_interval=0.1).run()
    client = MlflowClient(uri)
    client.delete_experiment(client.create_experiment("gone"))
    follower = follow(sweep, MLflowExport(uri, experiment="gone"), every=0.1)
    with caplog.at_level(logging.WARNING, logger="hsm_notebook.tracking"), pytest.raises(HsmError) as failed:
        follower.flush()
    assert "MLflow" in str(failed.value) and "'gone' is deleted" in str(failed.value)
    assert isinstance(follower.errors["MLflow"], ConfigError) and "'gone' is deleted" in caplog.text

    client.restore_experiment(client.get_experiment_by_name("gone").experiment_id)
    follower.flush()  # the next round goes on where it stopped
    follower.stop()
    assert sorted(follower.exported["MLflow"]) == sorted(sweep.status()["task_id"])
    assert follower.errors["MLflow"] is None


# -- bad input, in words -------------------------------------------------------------------------
def test_bad_input_is_named_with_the_fix(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="mode: must be 'offline'"):
        WandbExport("p", dir=tmp_path, mode="cloud")
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    with pytest.raises(ConfigError, match="tracking_uri: MLflow cannot use .*MLFLOW_ALLOW_FILE_STORE"):
        MLflowExport((tmp_path / "mlruns").as_uri())
    monkeypatch.setitem(sys.modules, "wandb", None)  # importing wandb now fails, as when it is not installed
    with pytest.raises(ConfigError, match=r"wandb: wandb is not installed: pip install 'hsm_notebook\[tracking\]'"):
        WandbExport("p", dir=tmp_path)
