"""The Parameters section: rows of name + values typed the quick way, or YAML.

Parsing and checking are pure functions (``parse_values``, ``check_rows``, ``rows_to_space``,
``preview``) so they are tested without widgets; the widget only collects text, marks a
bad field (CSS class ``hsm-bad``) with the problem in words right of its row, previews the
values of a good row, and shows the task count or the first problem under the form.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ipywidgets as w
import yaml

from ..core.model.errors import ConfigError, HsmError
from ..core.spec.config import SweepFile, parse_command
from ..core.spec.config import objective as check_objective
from ..core.spec.space import ParameterSpace
from .html import esc
from .results_view import assumed_minimize
from .values import KINDS, RowCheck, check_rows, preview, rows_to_space, words


def _mark(widget: w.Widget, bad: bool) -> None:
    """Add or remove the ``hsm-bad`` class (a red field) only when it changes."""
    if bad and "hsm-bad" not in widget._dom_classes:
        widget.add_class("hsm-bad")
    elif not bad and "hsm-bad" in widget._dom_classes:
        widget.remove_class("hsm-bad")


def _note(check: RowCheck, kind: str) -> str:
    """The small HTML right of a row: the problem, or a preview of the values."""
    if check.error:
        return f"<span class='hsm-error hsm-row-error' style='color:#b00'>⚠ {esc(check.error)}</span>"
    if check.values is not None:
        return f"<span class='hsm-preview'>{esc(preview(check.values, kind))}</span>"
    return ""


class ParamsEditor:
    """Widgets for the space and the command: a bad field is marked and explained beside
    it, a good row previews its values, and the count (or the first problem) sits below."""

    def __init__(self, on_change: Callable[[], None] | None = None, rows: int = 4):
        self._on_change: Callable[[], None] = lambda: None  # quiet while the widgets are built
        self.command = w.Text(value="python train.py", description="Command",
                              layout=w.Layout(width="60%", flex="0 0 auto"))
        self.command_note = w.HTML(layout=w.Layout(flex="1 1 0", min_width="160px"))
        self.command_note.add_class("hsm-row-note")
        self.workdir = w.Text(value="", placeholder="(the notebook's folder)", description="Workdir",
                              layout=w.Layout(width="60%"))
        #: the objective: the metric that ranks tasks (``best()``, Results) and its direction
        self.objective_metric = w.Text(value="", placeholder="metric to rank by, e.g. val_loss (optional)",
                                       description="Objective", layout=w.Layout(width="360px", flex="0 0 auto"))
        self.objective_direction = w.ToggleButtons(options=[("min", "min"), ("max", "max")], value="min",
                                                   tooltips=["lower is better", "higher is better"],
                                                   style={"button_width": "50px"})
        self.objective_note = w.HTML(layout=w.Layout(flex="1 1 0", min_width="160px"))
        self.objective_note.add_class("hsm-row-note")
        self._direction_chosen = False  # the user clicked min/max: a new metric name keeps it
        self._adjusting = False
        self.rows: list[tuple[w.Text, w.Text, w.Dropdown]] = []
        self.notes: list[w.HTML] = []
        self.rows_box = w.VBox()
        self.add_button = w.Button(description="+ parameter", layout=w.Layout(width="120px"))
        self.add_button.on_click(lambda _: self.add_row())
        self.yaml = w.Textarea(placeholder="grid:\n  lr: [0.1, 0.01]\npaired:\n  - {seed: [1, 2], split: [a, b]}",
                               layout=w.Layout(width="95%", height="140px"))
        self.mode = w.ToggleButtons(options=["rows", "YAML"], value="rows", style={"button_width": "70px"})
        self.count = w.HTML()
        self.count.add_class("hsm-count")
        for _ in range(rows):
            self.add_row()
        self.mode.observe(lambda _: self._show_mode(), "value")
        for widget in (self.yaml, self.command, self.workdir):
            widget.observe(lambda _: self.changed(), "value")
        self.objective_metric.observe(lambda _: self._objective_metric_changed(), "value")
        self.objective_direction.observe(lambda _: self._objective_direction_changed(), "value")
        self.body = w.VBox()
        self._show_mode()
        self.widget = w.VBox([w.HBox([self.command, self.command_note]), self.workdir,
                              w.HBox([self.objective_metric, self.objective_direction, self.objective_note]),
                              self.mode, self.body, self.count])
        self._on_change = on_change or (lambda: None)

    def add_row(self, name: str = "", values: str = "", kind: str = "grid") -> None:
        # fixed widths that never shrink, so a long message beside a row does not squeeze its fields
        row = (w.Text(value=name, placeholder="name, e.g. lr", layout=w.Layout(width="180px", flex="0 0 auto")),
               w.Text(value=values, placeholder="0.1, 0.01 | linspace(0, 1, 5) | range(1, 4) | [a, b]",
                      layout=w.Layout(width="320px", flex="0 0 auto")),
               w.Dropdown(options=KINDS, value=kind, layout=w.Layout(width="110px", flex="0 0 auto")))
        note = w.HTML(layout=w.Layout(flex="1 1 0", min_width="160px"))
        note.add_class("hsm-row-note")
        for widget in row:
            widget.observe(lambda _: self.changed(), "value")
        self.rows.append(row)
        self.notes.append(note)
        self.rows_box.children = [w.HBox([*r, n]) for r, n in zip(self.rows, self.notes, strict=False)]
        self.changed()

    def _show_mode(self) -> None:
        self.body.children = [self.rows_box, self.add_button] if self.mode.value == "rows" else [self.yaml]
        self.changed()

    def _row_texts(self) -> list[tuple[str, str, str]]:
        return [(n.value, v.value, k.value) for n, v, k in self.rows]

    def space(self) -> ParameterSpace:
        if self.mode.value == "YAML":
            return SweepFile.load(self.yaml.value + "\n").space if self.yaml.value.strip() else rows_to_space([])
        return rows_to_space(self._row_texts())

    def command_argv(self) -> tuple[str, ...]:
        return parse_command(self.command.value)

    def objective(self) -> dict[str, str] | None:
        """``{metric: "min" | "max"}`` for ``Sweep(objective=...)``, None when no metric is typed;
        a name that cannot be one metric (spaces, commas) is a ``ConfigError``."""
        metric = self.objective_metric.value.strip()
        if not metric:
            return None
        if any(ch.isspace() or ch == "," for ch in metric):
            raise ConfigError(f"{metric!r} is not one metric name: type the name the job logs, without spaces "
                              "or commas, e.g. val_loss (or leave it empty for no objective)", "objective")
        return check_objective({metric: self.objective_direction.value})

    def set_objective(self, objective: Mapping[str, str] | str | None) -> None:
        """Fill the objective fields (from a sweep file's options, or a sweep shown)."""
        checked = check_objective(objective) if objective else None
        (metric, direction), = checked.items() if checked else [("", self.objective_direction.value)]
        self._adjusting = True
        try:
            self.objective_metric.value, self.objective_direction.value = metric, direction
        finally:
            self._adjusting = False
        self._direction_chosen = bool(checked)
        self.changed()

    def _objective_metric_changed(self) -> None:
        """Until the user picks min or max, a metric's name sets the direction (accuracy: max)."""
        metric = self.objective_metric.value.strip()
        if metric and not self._direction_chosen and not self._adjusting:
            self._adjusting = True
            try:
                self.objective_direction.value = "min" if assumed_minimize(metric) else "max"
            finally:
                self._adjusting = False
        self.changed()

    def _objective_direction_changed(self) -> None:
        if not self._adjusting:
            self._direction_chosen = True
        self.changed()

    def check(self) -> ParameterSpace:
        """Everything Launch needs from the form, checked: the space (returned), the command and
        the objective; the first problem raises ``ConfigError``."""
        space = self.space()
        self.command_argv()
        self.objective()
        return space

    def task_count(self) -> int | None:
        """How many tasks Launch would start, or None while the form has a problem."""
        try:
            return len(self.check())
        except HsmError:
            return None

    def launch_label(self, count: int | None = None) -> str:
        """``"Launch 6 tasks"`` (``count``, or ``task_count()`` when not given); ``"Launch"`` when
        the count is unknown (the form has a problem) or 0 (nothing left to start)."""
        n = self.task_count() if count is None else count
        return f"Launch {n:,} task{'s' if n != 1 else ''}" if n else "Launch"

    def changed(self) -> None:
        """Re-check every field: mark a bad one and explain it beside it, preview good rows,
        and recount (or repeat the first problem) under the form."""
        self._show_row_checks()
        self._show_command_check()
        self._show_objective_check()
        try:
            space = self.check()
            self.count.value = f"<b>{len(space):,}</b> combinations of {esc(', '.join(space.names))}"
            _mark(self.yaml, False)
        except ConfigError as exc:
            self.count.value = f"<span class='hsm-error' style='color:#b00'>{esc(str(exc))}</span>"
            _mark(self.yaml, self.mode.value == "YAML" and exc.field != "command")
        self._on_change()

    def _show_row_checks(self) -> None:
        checks = check_rows(self._row_texts())
        for (name, values, kind), note, check in zip(self.rows, self.notes, checks, strict=False):
            _mark(name, check.bad == "name")
            _mark(values, check.bad == "values")
            note.value = _note(check, kind.value)

    def _show_command_check(self) -> None:
        try:
            self.command_argv()
            problem = None
        except ConfigError as exc:
            problem = words(exc)
        _mark(self.command, problem is not None)
        self.command_note.value = (f"<span class='hsm-error hsm-row-error' style='color:#b00'>⚠ {esc(problem)}</span>"
                                   if problem else "")

    def _show_objective_check(self) -> None:
        try:
            objective = self.objective()
            problem = None
        except ConfigError as exc:
            objective, problem = None, words(exc)
        _mark(self.objective_metric, problem is not None)
        if problem:
            self.objective_note.value = (f"<span class='hsm-error hsm-row-error' style='color:#b00'>"
                                         f"⚠ {esc(problem)}</span>")
        elif objective:
            (metric, direction), = objective.items()
            better = "lower" if direction == "min" else "higher"
            self.objective_note.value = f"<span class='hsm-preview'>{esc(metric)}: {better} is better</span>"
        else:
            self.objective_note.value = ("<span class='hsm-preview'>none: Results will say which direction "
                                         "it assumes</span>")

    def show_space(self, space_dict: dict, command: Sequence[str], objective: Any = None) -> None:
        """Show an existing sweep's space, command and objective (``(metric, minimize)``), read-only."""
        self.mode.value = "YAML"
        self.yaml.value = yaml.safe_dump(space_dict, sort_keys=False)
        self.command.value = " ".join(command)
        if objective:
            self.set_objective({objective[0]: "min" if objective[1] else "max"})
        for widget in (self.yaml, self.command, self.workdir, self.mode, self.add_button,
                       self.objective_metric, self.objective_direction):
            widget.disabled = True
