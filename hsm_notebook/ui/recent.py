"""Recent sweeps, with an Open button each: how ``%hsm`` with no argument gets back to a sweep.  Each
line carries what tells it from the others: its tags, the parameters that vary, its best value."""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

import ipywidgets as w

from ..core.ledger.notes import brief
from ..core.ledger.records import recent_sweeps
from ..core.model.errors import HsmError
from ..core.model.state import JobState
from ..core.sweep import Sweep
from .html import esc


def open_sweep(folder: Any) -> Sweep:
    """What Open (and ``%hsm <folder>``) does: show the sweep.  One that was launched before is
    resumed (its running jobs re-adopted, the rest finished); one never launched is not started:
    that is the Launch button's."""
    sweep = Sweep.attach(folder, resume=False)
    if not sweep.running and sweep.launched and not sweep.done:
        sweep.start()
    return sweep


def _when(stamp: float | None) -> str:
    if not stamp:
        return ""
    delta = dt.datetime.now() - dt.datetime.fromtimestamp(stamp)
    if delta < dt.timedelta(hours=1):
        return f"{int(delta.total_seconds() // 60)} min ago"
    if delta < dt.timedelta(days=2):
        return f"{int(delta.total_seconds() // 3600)} h ago"
    return dt.datetime.fromtimestamp(stamp).strftime("%Y-%m-%d %H:%M")


def describe(entry: dict[str, Any]) -> str:
    """One line of HTML: id, tags, state in words, counts, when; then what tells it from the others:
    the parameters that vary and the best objective value so far (``entry["brief"]``, when read)."""
    if entry.get("problem"):
        return f"<b>{esc(entry['sweep_id'])}</b> <span style='color:#b00'>{esc(entry['problem'])}</span>"
    counts = entry["counts"]
    total = sum(counts.values())
    ended = sum(n for s, n in counts.items() if JobState(s).is_terminal)
    state = (f"running ({entry['driven_by']})" if entry["driven_by"] else
             "finished" if ended == total else "stopped, not finished")
    parts = ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items()))
    about = f" · {esc(entry['description'])}" if entry.get("description") else ""
    brief = entry.get("brief") or {}
    tags = "".join(f" <span class='hsm-tag' style='background:#e8eef8;border-radius:3px;padding:0 4px'>{esc(t)}</span>"
                   for t in brief.get("tags", []))
    line = (f"<b>{esc(entry['sweep_id'])}</b>{tags}{about} · {esc(state)} · {ended}/{total} ended ({esc(parts)}) · "
            f"changed {esc(_when(entry['changed']))}")
    facts = []
    if brief.get("varying"):
        facts.append("varies " + esc(", ".join(brief["varying"])))
    if brief.get("best"):
        metric, direction, value = brief["best"]
        facts.append(f"best {esc(metric)} ({esc(direction)}) " + (f"<b>{value:.4g}</b>" if value is not None else "–"))
    return line + (f"<br><span class='hsm-brief' style='color:#555'>{' · '.join(facts)}</span>" if facts else "")


def _with_brief(entry: dict[str, Any]) -> dict[str, Any]:
    """``entry`` with its ``brief`` (tags, varying parameters, best value); a sweep whose ledger
    cannot be read for it keeps its line without one."""
    if entry.get("problem"):
        return entry
    try:
        return {**entry, "brief": brief(entry["folder"])}
    except (HsmError, OSError, sqlite3.Error, ValueError):
        return entry


class RecentSweeps:
    """A list of the recent sweep folders; ``on_open(folder)`` is called by a row's Open button."""

    def __init__(self, on_open: Callable[[Any], None], roots: Sequence[Any] | None = None, limit: int = 10):
        self.entries = [_with_brief(e) for e in recent_sweeps(roots, limit)]
        rows = []
        for entry in self.entries:
            button = w.Button(description="Open", icon="folder-open", layout=w.Layout(width="90px"))
            button.add_class("hsm-open")
            button.on_click(lambda _, folder=entry["folder"]: on_open(folder))
            button.disabled = bool(entry.get("problem"))
            rows.append(w.HBox([button, w.HTML(describe(entry))]))
        title = w.HTML("<b>Recent sweeps</b>" if rows else "<i>No sweeps here yet (sweeps/ is empty).</i>")
        self.widget = w.VBox([title, *rows])
        self.widget.add_class("hsm-recent")
