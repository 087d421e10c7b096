"""The Parameters section: a grid (rows of name + values typed the quick way, or YAML) or a
search (rows of name + distribution, and the search's settings: ``search_form.py``), the
command and the objective.

Parsing and checking are pure functions (``parse_values``, ``check_rows``, ``rows_to_space``,
``preview``, ``parse_objective``, ``search_form.build_search``) so they are tested without
widgets; the widget only collects text, marks a bad field (CSS class ``hsm-bad``) with the
problem in words right of its row, previews the values of a good row, and shows the task count
(or what the search will do) or the first problem under the form.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ipywidgets as w
import yaml

from ..core.model.errors import ConfigError, HsmError
from ..core.spec.config import SweepFile, parse_command
from ..core.spec.config import objective as check_objective
from ..core.spec.search import Search
from ..core.spec.space import ParameterSpace
from .html import esc
from .results_view import assumed_minimize
from .search_form import SearchForm, describe
from .search_form import mark_bad as _mark
from .values import KINDS, RowCheck, check_rows, preview, rows_to_space, words

#: What Launch makes: every combination of the rows' values, or an adaptive search.
SWEEP_KINDS = (("grid", "grid"), ("search", "search"))
_OBJECTIVE_HINT = {"grid": "metric to rank by, e.g. val_loss (optional)",
                   "search": "metric to optimize, e.g. val_loss (required)"}


def _first_metric(text: str) -> str:
    """The first metric's name in the objective field (``"val_loss:min, latency"`` -> val_loss)."""
    return text.split(",", 1)[0].partition(":")[0].strip()


def parse_objective(text: str, first_direction: str = "min") -> dict[str, str] | None:
    """The objective field -> ``{metric: "min" | "max"}`` in order, None when empty.

    One metric, or several separated by commas for a multi-objective search; each may say its
    direction after a colon (``latency:min``).  Without one, the first metric takes
    ``first_direction`` (the min/max buttons) and the others the direction their names suggest
    (``assumed_minimize``: ``acc`` higher, ``loss`` lower).  A name with spaces, an empty item, a
    direction other than min or max, or a metric named twice is a ``ConfigError``."""
    text = (text or "").strip()
    if not text:
        return None
    out: dict[str, str] = {}
    for k, item in enumerate(part.strip() for part in text.split(",")):
        if not item:
            raise ConfigError("an empty metric between commas; remove the extra comma", "objective")
        metric, colon, direction = (x.strip() for x in item.partition(":"))
        if not metric or any(ch.isspace() for ch in metric):
            raise ConfigError(f"{item!r} is not one metric name: type the name the job logs, without spaces, e.g. "
                              "val_loss (several for a multi-objective search are separated by commas: "
                              "val_loss, latency:min), or leave it empty for no objective", "objective")
        if colon and direction.lower() not in ("min", "max"):
            raise ConfigError(f"{item!r}: after the colon comes min or max, e.g. {metric}:max", "objective")
        if metric in out:
            raise ConfigError(f"{metric} is named twice; keep it once", "objective")
        out[metric] = (direction.lower() if colon else first_direction if k == 0
                       else "min" if assumed_minimize(metric) else "max")
    return check_objective(out)


def objective_text(objective: dict[str, str]) -> str:
    """What the objective field shows for ``objective`` (the first metric's direction is on the
    min/max buttons; the others carry theirs)."""
    return ", ".join(m if k == 0 else f"{m}:{d}" for k, (m, d) in enumerate(objective.items()))


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
        self.command.add_class("hsm-command")
        self.command_note = w.HTML(layout=w.Layout(flex="1 1 0", min_width="160px"))
        self.command_note.add_class("hsm-row-note")
        self.workdir = w.Text(value="", placeholder="(the notebook's folder)", description="Workdir",
                              layout=w.Layout(width="60%"))
        #: the objective: the metric that ranks tasks (``best()``, Results) and its direction; several
        #: separated by commas (``val_loss, latency:min``) for a multi-objective search
        self.objective_metric = w.Text(value="", placeholder=_OBJECTIVE_HINT["grid"],
                                       description="Objective", layout=w.Layout(width="360px", flex="0 0 auto"))
        self.objective_metric.add_class("hsm-objective")
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
        #: grid (every combination) or search (a sampler proposes each trial: ``search_form``)
        self.kind = w.ToggleButtons(options=SWEEP_KINDS, value="grid", description="Sweep",
                                    tooltips=["every combination of the values typed below",
                                              "an adaptive search: a sampler proposes each trial's parameters"],
                                    style={"button_width": "70px"})
        self.kind.add_class("hsm-kind")
        self.search_form = SearchForm(on_change=self.changed)
        self._read_only = False  # an existing sweep is shown: its space as YAML, nothing editable
        self.count = w.HTML()
        self.count.add_class("hsm-count")
        for _ in range(rows):
            self.add_row()
        self.mode.observe(lambda _: self._show_mode(), "value")
        self.kind.observe(lambda _: self._show_mode(), "value")
        for widget in (self.yaml, self.command, self.workdir):
            widget.observe(lambda _: self.changed(), "value")
        self.objective_metric.observe(lambda _: self._objective_metric_changed(), "value")
        self.objective_direction.observe(lambda _: self._objective_direction_changed(), "value")
        self.body = w.VBox()
        self._show_mode()
        self.widget = w.VBox([w.HBox([self.command, self.command_note]), self.workdir,
                              w.HBox([self.objective_metric, self.objective_direction, self.objective_note]),
                              self.kind, self.mode, self.body, self.count])
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
        search = self.kind.value == "search"
        if self._read_only or (not search and self.mode.value == "YAML"):
            self.body.children = [self.yaml]
        else:
            self.body.children = [self.search_form.widget] if search else [self.rows_box, self.add_button]
        self.mode.layout.display = "none" if search else ""
        self.objective_metric.placeholder = _OBJECTIVE_HINT[self.kind.value]
        self.changed()

    @property
    def searching(self) -> bool:
        """True when Launch makes a search (the form's Sweep choice is "search")."""
        return self.kind.value == "search"

    def _row_texts(self) -> list[tuple[str, str, str]]:
        return [(n.value, v.value, k.value) for n, v, k in self.rows]

    def space(self) -> ParameterSpace | Search:
        """The grid the rows make, or what the YAML text holds (a space, or a search: a sweep file's
        ``method: bayes``, ``search:``)."""
        if self.mode.value == "YAML":
            return SweepFile.load(self.yaml.value + "\n").plan if self.yaml.value.strip() else rows_to_space([])
        return rows_to_space(self._row_texts())

    def command_argv(self) -> tuple[str, ...]:
        return parse_command(self.command.value)

    def objective(self) -> dict[str, str] | None:
        """``{metric: "min" | "max"}`` for ``Sweep(objective=...)`` (several metrics in order), None
        when no metric is typed; see :func:`parse_objective`."""
        return parse_objective(self.objective_metric.value, self.objective_direction.value)

    def set_objective(self, objective: Mapping[str, str] | str | None) -> None:
        """Fill the objective fields (from a sweep file's options, or a sweep shown): the first
        metric's direction on the min/max buttons, the others' after their names."""
        checked = check_objective(objective) if objective else None
        text = objective_text(checked) if checked else ""
        direction = next(iter(checked.values())) if checked else self.objective_direction.value
        self._adjusting = True
        try:
            self.objective_metric.value, self.objective_direction.value = text, direction
        finally:
            self._adjusting = False
        self._direction_chosen = bool(checked)
        self.changed()

    def _objective_metric_changed(self) -> None:
        """Until the user picks min or max, the first metric's name sets the direction (accuracy: max)."""
        metric = _first_metric(self.objective_metric.value)
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

    def check(self) -> ParameterSpace | Search:
        """Everything Launch needs from the form, checked: the space or the search (returned),
        the command and the objective (which a search needs, with one metric if it prunes); the
        first problem raises ``ConfigError``."""
        if not self.searching:
            space = self.space()
            self.command_argv()
            objective = self.objective()
            if isinstance(space, Search):  # a sweep file's search, in the YAML view
                if not objective:
                    raise ConfigError("the search needs an objective: give metric: (or objective:) in the file, "
                                      "or type the metric in Objective above", "objective")
                space.check_objective(objective)
            return space
        search = self.search_form.search()
        self.command_argv()
        objective = self.objective()
        if not objective:
            raise ConfigError("a search needs an objective: type the metric the job reports (log_metrics) in "
                              "Objective above, e.g. val_loss, and choose min or max", "objective")
        search.check_objective(objective)
        return search

    def task_count(self) -> int | None:
        """How many tasks Launch would start (a search: its number of trials, at most), or None
        while the form has a problem (or a search has only a time limit)."""
        try:
            made = self.check()
        except HsmError:
            return None
        return made.n_trials if isinstance(made, Search) else len(made)

    def launch_label(self, count: int | None = None) -> str:
        """``"Launch 6 tasks"`` (``count``, or ``task_count()`` when not given), ``"Launch search of
        20 trials"``; ``"Launch"`` when the count is unknown (the form has a problem) or 0 (nothing
        left to start)."""
        if count is None and self.searching:
            n = self.task_count()
            if n is None:
                return "Launch search" if self._search_ok() else "Launch"
            return f"Launch search of {n:,} trial{'s' if n != 1 else ''}"
        n = self.task_count() if count is None else count
        return f"Launch {n:,} task{'s' if n != 1 else ''}" if n else "Launch"

    def _search_ok(self) -> bool:
        try:
            self.check()
            return True
        except HsmError:
            return False

    def changed(self) -> None:
        """Re-check every field: mark a bad one and explain it beside it, preview good rows,
        and recount (or repeat the first problem) under the form."""
        self._show_row_checks()
        self._show_command_check()
        self._show_objective_check()
        if self._read_only and self.searching:  # a search shown: its settings are the YAML above
            self.count.value = "<span class='hsm-search-plan'>The search this sweep runs, as sweep.yaml has it</span>"
            self._on_change()
            return
        try:
            made = self.check()
            if isinstance(made, Search):
                self.count.value = f"<span class='hsm-search-plan'>Launch starts {esc(describe(made))}</span>"
            else:
                self.count.value = f"<b>{len(made):,}</b> combinations of {esc(', '.join(made.names))}"
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
            said = self.objective_metric.value.split(",")
            parts = []
            for k, (metric, direction) in enumerate(objective.items()):
                assumed = k > 0 and ":" not in said[k]
                parts.append(f"{metric}: {'lower' if direction == 'min' else 'higher'} is better"
                             + (f" (assumed from its name; write {metric}:min or :max)" if assumed else ""))
            self.objective_note.value = f"<span class='hsm-preview'>{esc(' · '.join(parts))}</span>"
        elif self.searching:
            self.objective_note.value = ("<span class='hsm-error hsm-row-error' style='color:#b00'>⚠ a search "
                                         "needs one: the metric the job reports, e.g. val_loss</span>")
        else:
            self.objective_note.value = ("<span class='hsm-preview'>none: Results will say which direction "
                                         "it assumes</span>")

    def show_space(self, space_dict: dict, command: Sequence[str], objective: Any = None,
                   search: Mapping[str, Any] | None = None) -> None:
        """Show an existing sweep's space (or its search, as ``sweep.yaml`` records it), command and
        objective (``{metric: direction}``, or ``(metric, minimize)``), read-only."""
        self._read_only = True
        self.yaml.value = yaml.safe_dump({"search": dict(search)} if search else space_dict, sort_keys=False)
        self.kind.value = "search" if search else "grid"
        self.mode.value = "YAML"
        self._show_mode()
        self.command.value = " ".join(command)
        if isinstance(objective, tuple):
            objective = {objective[0]: "min" if objective[1] else "max"}
        if objective:
            self.set_objective(objective)
        for widget in (self.yaml, self.command, self.workdir, self.mode, self.kind, self.add_button,
                       self.objective_metric, self.objective_direction):
            widget.disabled = True
        self.search_form.disable()
