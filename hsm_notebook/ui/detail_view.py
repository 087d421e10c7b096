"""The Job detail section: one task's parameters, state history, log files and their tails, and
its intermediate metrics, for the latest attempt or any earlier one.

The panel calls :meth:`DetailView.show` on every refresh while the tab is visible and when the
task or the number of lines changes.  The view's own controls (Attempt, follow) redraw it from
the sweep of the last ``show``, so the panel needs to know nothing about them.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import ipywidgets as w
import pandas as pd

from ..core.model.errors import ConfigError, HsmError
from ..core.spec.job import tail
from .html import esc, kv, table

#: The Attempt dropdown's value for "whatever attempt is the task's latest" (it follows retries).
LATEST = 0
#: The log streams of an attempt, as ``Sweep.log_path`` names them, and their file names.
STREAMS = {"stdout": "stdout", "stderr": "stderr", "slurm": "slurm.out"}
#: A tail that keeps its newest line in view: a reversed flex column starts scrolled to its end.
_FOLLOWING = ("<div class='hsm-tail' style='display:flex;flex-direction:column-reverse;max-height:240px;"
              "overflow:auto'><pre class='{css}' style='max-height:none;overflow:visible;margin:0'>{text}</pre></div>")


class DetailView:
    """One task at a time: pick it in ``task`` (or from the status page), then an attempt."""

    def __init__(self) -> None:
        self.task = w.Combobox(placeholder="task id (or pick from the status page)", description="Task",
                               ensure_option=False, layout=w.Layout(width="420px"))
        self.attempt = w.Dropdown(options=[("latest", LATEST)], value=LATEST, description="Attempt",
                                  layout=w.Layout(width="200px"))
        self.lines = w.BoundedIntText(value=30, min=1, max=2000, description="Lines", layout=w.Layout(width="160px"))
        self.follow = w.Checkbox(value=True, description="follow", indent=False, layout=w.Layout(width="90px"),
                                 tooltip="keep showing the newest log lines; off: the shown lines stay as they are")
        self.body = w.HTML()
        self.body.add_class("hsm-detail")
        #: the task's note, kept in the sweep's ledger (``sweep.note``): loaded when another task is
        #: shown, written by Save (a refresh never overwrites what is being typed)
        self.note = w.Textarea(placeholder="a note about this task, kept with the sweep (e.g. 'diverged: lr too high')",
                               rows=2, layout=w.Layout(width="640px"))
        self.note.add_class("hsm-note-text")
        self.save_note = w.Button(description="Save note", icon="save")
        self.save_note.add_class("hsm-save-note")
        self.note_state = w.HTML()
        self.note_box = w.HBox([self.note, self.save_note, self.note_state], layout=w.Layout(display="none"))
        self.save_note.on_click(lambda _: self._save_note())
        self.widget = w.VBox([w.HBox([self.task, self.attempt, self.lines, self.follow]), self.note_box, self.body])
        self._note_task: str | None = None  # the task whose note the box holds
        self.sweep: Any = None
        self._lock = threading.RLock()  # the refresh thread and the front end both draw
        self._adjusting = False  # True while this view sets the Attempt choices itself
        self._task_shown: str | None = None
        self._frozen: tuple[tuple, dict[str, str]] | None = None  # (what was read, its tails)
        self.attempt.observe(self._control_changed, "value")
        self.follow.observe(self._control_changed, "value")

    def set_choices(self, task_ids: list[str]) -> None:
        """The ids offered by the Task box (the status page's rows); sent only when they change."""
        if list(self.task.options) != task_ids:
            self.task.options = task_ids

    def show(self, sweep: Any) -> None:
        """Read ``sweep`` and redraw (errors that are the user's, like an unknown id, are shown here)."""
        with self._lock:
            self.sweep = sweep
            self._draw()

    # -- inputs ---------------------------------------------------------------------------------
    def _control_changed(self, change: Any) -> None:
        """Attempt or follow changed: redraw from the last sweep shown.  This is a UI boundary (the
        panel does not watch these controls), so an error is shown in the body, in words."""
        if self._adjusting or self.sweep is None:
            return
        with self._lock:
            try:
                self._draw()
            except Exception as exc:  # noqa: BLE001 - never a traceback in the panel
                text = str(exc) if isinstance(exc, HsmError) else f"{type(exc).__name__}: {exc}"
                self.body.value = _error(text)

    def _save_note(self) -> None:
        """Save: the box's text becomes the task's note in the ledger (empty: no note)."""
        if self.sweep is None or self._note_task is None:
            return
        try:
            self.sweep.note(self._note_task, self.note.value)
        except Exception as exc:  # noqa: BLE001 - a UI boundary: said next to the button
            text = str(exc) if isinstance(exc, HsmError) else f"{type(exc).__name__}: {exc}"
            self.note_state.value = _error(text)
            return
        self.note_state.value = f"<span class='hsm-note-saved'>saved {time.strftime('%H:%M:%S')}</span>"

    def _load_note(self, task_id: str | None, note: str | None) -> None:
        """The box shows a task's note when another task is shown (not on each refresh)."""
        if task_id == self._note_task:
            return
        self._note_task = task_id
        self.note.value = note or ""
        self.note_state.value = ""
        self.note_box.layout.display = "" if task_id else "none"

    def _sync_attempts(self, task_id: str | None, count: int) -> None:
        """Offer "latest" then attempts 1..count; another task starts again at "latest", while the
        same task keeps the user's pick (as long as that attempt exists)."""
        latest = f"latest ({count})" if count > 1 else "latest"
        options = [(latest, LATEST), *((str(i), i) for i in range(1, count + 1))]
        keep = self.attempt.value if task_id == self._task_shown and (self.attempt.value or 0) <= count else LATEST
        if task_id != self._task_shown:
            self._frozen = None  # a frozen tail belongs to the task it was read from
        self._task_shown = task_id
        if list(self.attempt.options) == options and self.attempt.value == keep:
            return
        self._adjusting = True
        try:
            self.attempt.options = options
            self.attempt.value = keep
        finally:
            self._adjusting = False

    # -- drawing --------------------------------------------------------------------------------
    def _draw(self) -> None:
        """Read the task, its chosen attempt's files and its steps, and set ``body`` (only a changed
        value is sent to the front end, so an idle task costs no bytes)."""
        sweep = self.sweep
        tid = self.task.value.strip()
        if not tid:
            self._sync_attempts(None, 0)
            self._load_note(None, None)
            self.body.value = "<i>Pick a task to see its parameters, history and logs.</i>"
            return
        try:
            info = sweep.task(tid)
        except ConfigError as exc:
            self._sync_attempts(None, 0)
            self._load_note(None, None)
            self.body.value = _error(str(exc))
            return
        self._load_note(tid, info.get("note"))
        self._sync_attempts(tid, info["attempt"] or 0)
        chosen = self.attempt.value or None  # None: the latest
        shown = chosen or info["attempt"] or None  # the attempt whose files are shown
        history = sweep.history(tid)
        paths = {stream: sweep.log_path(tid, stream, chosen) for stream in STREAMS}
        lines = int(self.lines.value)
        tails = self._tails((tid, shown, lines, tuple(paths.values())), paths, lines)
        self.body.value = (
            kv(_facts(tid, info, history, shown, paths["stdout"]))
            + f"<b>parameters</b><pre>{esc(json.dumps(info['params'], indent=1))}</pre>"
            + "<b>history</b>" + table(history.assign(time=history["time"].dt.strftime("%H:%M:%S")), "hsm-history")
            + _metrics_table(sweep.metrics(task_id=tid, params=False), shown)
            + _log_files(paths)
            + self._tail_html(tails, lines)
        )

    def _tails(self, key: tuple, paths: dict[str, Path | None], lines: int) -> dict[str, str]:
        """The last ``lines`` of each log; with follow off, what was read last for the same task,
        attempt and length stays (frozen), so the text does not move while it is being read."""
        if self.follow.value or self._frozen is None or self._frozen[0] != key:
            self._frozen = (key, {s: tail(p, lines) if p is not None else "" for s, p in paths.items()})
        return self._frozen[1]

    def _tail_html(self, tails: dict[str, str], lines: int) -> str:
        """The tails; while following, each sits in a box that stays scrolled to its newest line."""
        follow = bool(self.follow.value)
        note = "" if follow else " · <i>frozen (follow is off)</i>"

        def block(text: str, css: str) -> str:
            body = esc(text) or "(empty)"
            return _FOLLOWING.format(css=css, text=body) if follow else f"<pre class='{css}'>{body}</pre>"

        return (f"<b>stdout</b> (last {lines} lines){note}" + block(tails["stdout"], "hsm-stdout")
                + f"<b>stderr</b>{note}" + block(tails["stderr"], "hsm-stderr")
                + (f"<b>Slurm's messages</b> (slurm.out){note}" + block(tails["slurm"], "hsm-scheduler")
                   if tails["slurm"] else ""))


# -- pure pieces (tested through the view) -------------------------------------------------------
def _error(text: str) -> str:
    return f"<span class='hsm-error' style='color:#b00'>{esc(text)}</span>"


def _facts(tid: str, info: dict, history: pd.DataFrame, shown: int | None,
           stdout: Path | None) -> list[tuple[str, Any]]:
    """The key/value rows at the top.  For an earlier attempt, its own job id, source and how it
    ended come from the history (the task's row only knows the latest attempt)."""
    latest = info["attempt"] or 0
    folder = str(stdout.parent) if stdout is not None else None
    if not shown or shown == latest:
        return [("task", tid), ("state", info["state"]), ("source", info["source"]), ("job id", info["job_id"]),
                ("attempt", f"{latest} of {latest}" if latest > 1 else latest or None),
                ("exit code", info["exit_code"]), ("error", info["error"]), ("folder", folder),
                *([("metrics.jsonl", info["metrics_note"])] if info.get("metrics_note") else [])]
    mine = history[history["attempt"] == shown]
    last = mine.iloc[-1] if len(mine) else None
    job_ids = mine["job_id"].dropna()
    ended = None if last is None else " · ".join(str(v) for v in (last["state"], last["detail"]) if not pd.isna(v))
    return [("task", tid), ("state", info["state"]), ("attempt", f"{shown} of {latest}"),
            ("source", None if last is None else last["source"]),
            ("job id", job_ids.iloc[-1] if len(job_ids) else None), ("this attempt", ended), ("folder", folder)]


def _log_files(paths: dict[str, Path | None]) -> str:
    """Where the attempt's logs are, as text to copy (one click selects a whole path).  Slurm's
    own file is listed only when it exists (it does only for Slurm jobs)."""
    rows = [(STREAMS[s], p) for s, p in paths.items() if p is not None and (s != "slurm" or p.exists())]
    if not rows:
        return ""
    cells = "".join(f"<tr><th>{esc(name)}</th><td><code class='hsm-path' style='user-select:all'>{esc(str(p))}"
                    f"</code></td></tr>" for name, p in rows)
    return f"<b>log files</b><table class='hsm-log-paths'>{cells}</table>"


def _metrics_table(steps: pd.DataFrame, shown: int | None) -> str:
    """The last value each metric was logged with (``log_metrics(step=...)``) in the shown attempt,
    and its step; nothing when the attempt logged none."""
    if shown:
        steps = steps[steps["attempt"] == shown]
    if steps.empty:
        return ""
    last = steps.drop_duplicates("metric", keep="last").sort_values("metric")
    last = last.assign(time=last["time"].dt.strftime("%H:%M:%S"))[["metric", "step", "value", "time"]]
    return ("<b>intermediate metrics</b> (last logged value of each)"
            + table(last.rename(columns={"time": "logged at"}), "hsm-task-metrics", state_column=None))
