"""The Job detail section: one task's parameters, state history, log tails and error."""

from __future__ import annotations

import json

import ipywidgets as w

from ..core.errors import ConfigError
from .html import esc, kv, table


class DetailView:
    def __init__(self) -> None:
        self.task = w.Combobox(placeholder="task id (or pick from the status page)", description="Task",
                               ensure_option=False, layout=w.Layout(width="420px"))
        self.lines = w.BoundedIntText(value=30, min=1, max=2000, description="Lines", layout=w.Layout(width="160px"))
        self.body = w.HTML()
        self.body.add_class("hsm-detail")
        self.widget = w.VBox([w.HBox([self.task, self.lines]), self.body])

    def set_choices(self, task_ids: list[str]) -> None:
        if list(self.task.options) != task_ids:
            self.task.options = task_ids

    def show(self, sweep) -> None:
        tid = self.task.value.strip()
        if not tid:
            self.body.value = "<i>Pick a task to see its parameters, history and logs.</i>"
            return
        try:
            info = sweep.task(tid)
        except ConfigError as exc:
            self.body.value = f"<span class='hsm-error' style='color:#b00'>{esc(str(exc))}</span>"
            return
        history = sweep.history(tid)
        lines = int(self.lines.value)
        out = sweep.logs(tid, "stdout", lines)
        err = sweep.logs(tid, "stderr", lines)
        scheduler = sweep.logs(tid, "slurm", lines)
        folder = sweep.directory / "tasks" / info["job_name"] if info["job_name"] else None
        history = history.assign(time=history["time"].dt.strftime("%H:%M:%S"))
        self.body.value = (
            kv([("task", tid), ("state", info["state"]), ("source", info["source"]), ("job id", info["job_id"]),
                ("attempt", info["attempt"]), ("exit code", info["exit_code"]), ("error", info["error"]),
                ("folder", str(folder) if folder else None)])
            + f"<b>parameters</b><pre>{esc(json.dumps(info['params'], indent=1))}</pre>"
            + "<b>history</b>" + table(history, "hsm-history")
            + f"<b>stdout</b> (last {lines} lines)<pre class='hsm-stdout'>{esc(out) or '(empty)'}</pre>"
            + f"<b>stderr</b><pre class='hsm-stderr'>{esc(err) or '(empty)'}</pre>"
            + (f"<b>Slurm's messages</b> (slurm.out)<pre class='hsm-scheduler'>{esc(scheduler)}</pre>" if scheduler else "")
        )
