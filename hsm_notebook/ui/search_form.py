"""The search half of the Parameters form: one row per parameter with its distribution, and the
search's settings (sampler, pruner, budget).

Reading and checking are pure functions (``check_search_rows``, ``parse_duration``,
``build_search``) so they are tested without widgets; ``SearchForm`` only collects text, marks a
bad field (CSS class ``hsm-bad``) with the problem in words beside its row, and hands the
``Search`` to the Parameters form, which adds the objective a search needs.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import ipywidgets as w

from ..core.model.errors import ConfigError
from ..core.spec.search import PRUNERS, SAMPLERS, Categorical, Float, Int, Search
from ..core.spec.space import ParameterSpace
from .html import esc
from .values import parse_values, preview, words

#: What a row's parameter is: a number from a range (on a log scale for ``log-``), one of a list of
#: choices, or a value every trial gets as it is.
DISTRIBUTIONS = ("float", "log-float", "int", "log-int", "categorical", "fixed")
_RANGED = ("float", "log-float", "int", "log-int")
#: ``"600"``, ``"90s"``, ``"10m"``, ``"1.5h"``: seconds, or a number with a unit.
_DURATION = re.compile(r"(?P<n>\d+(?:\.\d*)?|\.\d+)\s*(?P<unit>s|sec|m|min|h|hr)?")
_UNITS = {None: 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600}

Row = tuple[str, str, str, str, str]  # (name, distribution, low, high, choices)


@dataclass(frozen=True)
class SearchRowCheck:
    """One row's verdict: its distribution (or its fixed value), or the problem in words and the
    field to mark (``"name"``, ``"low"``, ``"high"`` or ``"choices"``)."""

    distribution: Float | Int | Categorical | None = None
    fixed: list[Any] | None = None  # [value] of a fixed row
    error: str | None = None
    bad: str | None = None
    blank: bool = False
    note: str = field(default="")  # a good row's preview: "float in [0.001, 0.1], log scale"


def _one_number(text: str, what: str, name: str, integer: bool) -> float:
    text = (text or "").strip()
    if not text:
        raise ConfigError(f"{what} is empty; type the {'smallest' if what == 'low' else 'largest'} value "
                          f"{name} may take", what)
    try:
        values = parse_values(text, what)
    except ConfigError as exc:
        raise ConfigError(f"{what}: {words(exc)}", what) from None
    value = values[0] if len(values) == 1 else None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{what} must be one number, got {text!r}", what)
    if integer and not float(value).is_integer():
        raise ConfigError(f"an int parameter takes whole numbers; {what} is {value!r}", what)
    return value


def _check_row(name: str, kind: str, low: str, high: str, choices: str) -> SearchRowCheck:
    """What a row alone can be checked for: its name, and its distribution's fields."""
    name = (name or "").strip()
    if not name and not any((t or "").strip() for t in (low, high, choices)):
        return SearchRowCheck(blank=True)
    if not name:
        return SearchRowCheck(error="has values but no parameter name; type one on the left, e.g. lr", bad="name")
    try:
        ParameterSpace(fixed={name: 0})
    except ConfigError as exc:
        return SearchRowCheck(error=words(exc), bad="name")
    if kind not in DISTRIBUTIONS:
        return SearchRowCheck(error=f"must be one of {', '.join(DISTRIBUTIONS)}, got {kind!r}", bad="name")
    if kind in _RANGED:
        integer, log = kind.endswith("int"), kind.startswith("log")
        try:
            lo = _one_number(low, "low", name, integer)
            hi = _one_number(high, "high", name, integer)
        except ConfigError as exc:
            return SearchRowCheck(error=words(exc), bad=exc.field)
        if lo > hi:
            return SearchRowCheck(error=f"low {lo:g} is above high {hi:g}; swap them", bad="low")
        if log and lo <= 0:
            return SearchRowCheck(error=f"a log scale needs low > 0, got {lo:g}; make low positive, or choose "
                                        f"{kind.removeprefix('log-')}", bad="low")
        try:
            dist: Float | Int = Int(int(lo), int(hi), log=log) if integer else Float(float(lo), float(hi), log=log)
        except ConfigError as exc:
            return SearchRowCheck(error=words(exc), bad="low")
        scale = ", log scale" if log else ""
        return SearchRowCheck(dist, note=f"{'int' if integer else 'float'} in [{lo:g}, {hi:g}]{scale}")
    try:
        values = parse_values(choices, name)
    except ConfigError as exc:
        return SearchRowCheck(error=words(exc), bad="choices")
    if kind == "fixed":
        if len(values) != 1:
            return SearchRowCheck(error=f"a fixed parameter takes one value, got {len(values)}; keep one or make "
                                        "it categorical", bad="choices")
        return SearchRowCheck(fixed=values, note=preview(values, "fixed"))
    if len({repr(v) for v in values}) != len(values):
        return SearchRowCheck(error="a choice is given twice; keep each once", bad="choices")
    try:
        return SearchRowCheck(Categorical(values), note=f"one of {preview(values)}")
    except ConfigError as exc:
        return SearchRowCheck(error=words(exc), bad="choices")


def check_search_rows(rows: Sequence[Row]) -> list[SearchRowCheck]:
    """A ``SearchRowCheck`` per ``(name, distribution, low, high, choices)`` row; a name given
    twice is marked on its second row."""
    checks = [_check_row(*row) for row in rows]
    first: dict[str, int] = {}
    for i, (row, check) in enumerate(zip(rows, checks, strict=False)):
        name = (row[0] or "").strip()
        if name in first and not check.error:
            checks[i] = SearchRowCheck(error=f"parameter given twice (also in row {first[name] + 1}); keep one row",
                                       bad="name")
        if name:
            first.setdefault(name, i)
    return checks


def parse_duration(text: str, what: str = "timeout") -> float | None:
    """``"600"`` or ``"600s"`` -> 600.0, ``"10m"`` -> 600.0, ``"1.5h"`` -> 5400.0; empty -> None."""
    text = (text or "").strip().lower()
    if not text:
        return None
    match = _DURATION.fullmatch(text)
    if not match or float(match["n"]) <= 0:
        raise ConfigError(f"must be a positive number of seconds, or a number with s, m or h (e.g. 600, 10m, 2h), "
                          f"got {text!r}; leave it empty for no time limit", what)
    return float(match["n"]) * _UNITS[match["unit"]]


def _whole(text: str, what: str, empty: str, positive: bool = True) -> int | None:
    text = (text or "").strip()
    if not text:
        return None
    try:
        value = int(text.replace("_", "").replace(",", ""))
    except ValueError:
        value = None
    if value is None or (positive and value < 1):
        raise ConfigError(f"must be a whole number{' above 0' if positive else ''}, got {text!r}; {empty}", what)
    return value


@dataclass(frozen=True)
class Settings:
    """The search's settings as typed: sampler and pruner (short names), and the budget's text."""

    sampler: str = "tpe"
    pruner: str = "none"
    n_trials: str = ""
    timeout: str = ""
    max_failed: str = ""
    seed: str = ""

    def arguments(self) -> dict[str, Any]:
        """``Search`` keywords from the settings (each problem a ``ConfigError`` naming its field)."""
        n_trials = _whole(self.n_trials, "n_trials", "type how many trials to run, e.g. 50")
        timeout = parse_duration(self.timeout)
        if n_trials is None and timeout is None:
            raise ConfigError("a search needs a budget: type a number of trials (and/or a time limit)", "n_trials")
        return {"sampler": self.sampler, "pruner": None if self.pruner == "none" else self.pruner,
                "n_trials": n_trials, "timeout": timeout,
                "max_failed": _whole(self.max_failed, "max_failed", "leave it empty to go on whatever fails"),
                "seed": _whole(self.seed, "seed", "leave it empty for a random start", positive=False)}


def build_search(rows: Sequence[Row], settings: Settings) -> Search:
    """The ``Search`` the rows and settings describe (blank rows are ignored); the first problem
    raises ``ConfigError`` naming its parameter (``row N`` when it has no name) or setting."""
    space: dict[str, Float | Int | Categorical] = {}
    fixed: dict[str, Any] = {}
    for i, (row, check) in enumerate(zip(rows, check_search_rows(rows), strict=False)):
        name = (row[0] or "").strip()
        if check.error:
            raise ConfigError(check.error, name or f"row {i + 1}")
        if check.fixed is not None:
            fixed[name] = check.fixed[0]
        elif check.distribution is not None:
            space[name] = check.distribution
    if not space:
        raise ConfigError("add at least one parameter to search: a name, a distribution and its range or choices",
                          "parameters")
    return Search(space, fixed=fixed, **settings.arguments())


def describe(search: Search) -> str:
    """``"a search of lr, layers: 20 trials, sampler tpe, pruner median"`` (plain text)."""
    budget = []
    if search.n_trials is not None:
        budget.append(f"{search.n_trials:,} trial{'s' if search.n_trials != 1 else ''}")
    if search.timeout is not None:
        budget.append(f"at most {_duration(search.timeout)}")
    sampler = search.sampler["type"] if isinstance(search.sampler, dict) else type(search.sampler).__name__
    pruner = (search.pruner["type"] if isinstance(search.pruner, dict) else type(search.pruner).__name__) \
        if search.prunes else "none"
    return (f"a search of {', '.join(search.names)}: {' and '.join(budget)}, sampler {sampler}, pruner {pruner}"
            + (f", stops after {search.max_failed} failed" if search.max_failed else ""))


def _duration(seconds: float) -> str:
    for unit, size in (("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g} {unit}"
    return f"{seconds:g} s"


def mark_bad(widget: w.Widget, bad: bool) -> None:
    """Add or remove the ``hsm-bad`` class (a red field) only when it changes."""
    if bad and "hsm-bad" not in widget._dom_classes:
        widget.add_class("hsm-bad")
    elif not bad and "hsm-bad" in widget._dom_classes:
        widget.remove_class("hsm-bad")


def _problem(text: str) -> str:
    return f"<span class='hsm-error hsm-row-error' style='color:#b00'>⚠ {esc(text)}</span>"


class SearchForm:
    """Widgets for a search: rows of name, distribution, low, high (or choices), and the
    settings.  ``search()`` is the ``Search`` they describe; ``changed()`` re-checks them."""

    def __init__(self, on_change: Callable[[], None] | None = None, rows: int = 3):
        self._on_change: Callable[[], None] = lambda: None  # quiet while the widgets are built
        self.rows: list[tuple[w.Text, w.Dropdown, w.Text, w.Text, w.Text]] = []
        self.notes: list[w.HTML] = []
        self.rows_box = w.VBox()
        self.add_button = w.Button(description="+ parameter", layout=w.Layout(width="120px"))
        self.add_button.on_click(lambda _: self.add_row())
        small = {"style": {"description_width": "70px"}, "layout": w.Layout(width="190px", flex="0 0 auto")}
        self.sampler = w.Dropdown(options=SAMPLERS, value="tpe", description="Sampler", **small)
        self.pruner = w.Dropdown(options=("none", *(p for p in PRUNERS if p != "none")), value="none",
                                 description="Pruner", **small)
        self.n_trials = w.Text(value="20", placeholder="e.g. 50", description="Trials", **small)
        self.timeout = w.Text(value="", placeholder="none; 600, 10m, 2h", description="Time limit", **small)
        self.max_failed = w.Text(value="", placeholder="no limit", description="Max failed", **small)
        self.seed = w.Text(value="", placeholder="random", description="Seed", **small)
        self.settings_note = w.HTML(layout=w.Layout(flex="1 1 0", min_width="160px"))
        self.settings_note.add_class("hsm-row-note")
        for widget in (self.sampler, self.pruner, self.n_trials, self.timeout, self.max_failed, self.seed):
            widget.observe(lambda _: self.changed(), "value")
        self.n_trials.add_class("hsm-n-trials")
        self.pruner.add_class("hsm-pruner")
        for _ in range(rows):
            self.add_row()
        head = w.HTML("<span class='hsm-preview'>Each trial's parameters are proposed by the sampler as a slot "
                      "frees; the pruner stops trials whose curve (log_metrics(step=...)) is not promising.</span>")
        self.widget = w.VBox([head, self.rows_box, self.add_button,
                              w.HBox([self.sampler, self.pruner, self.n_trials], layout=w.Layout(flex_flow="row wrap")),
                              w.HBox([self.timeout, self.max_failed, self.seed, self.settings_note],
                                     layout=w.Layout(flex_flow="row wrap"))])
        self.widget.add_class("hsm-search-form")
        self._on_change = on_change or (lambda: None)

    def add_row(self, name: str = "", kind: str = "float", low: str = "", high: str = "", choices: str = "") -> None:
        fixed = {"flex": "0 0 auto"}
        row = (w.Text(value=name, placeholder="name, e.g. lr", layout=w.Layout(width="160px", **fixed)),
               w.Dropdown(options=DISTRIBUTIONS, value=kind, layout=w.Layout(width="110px", **fixed)),
               w.Text(value=low, placeholder="low", layout=w.Layout(width="100px", **fixed)),
               w.Text(value=high, placeholder="high", layout=w.Layout(width="100px", **fixed)),
               w.Text(value=choices, placeholder="choices: a, b, c", layout=w.Layout(width="210px", **fixed)))
        for widget, css in zip(row, ("hsm-search-name", "hsm-search-kind", "hsm-search-low", "hsm-search-high",
                                     "hsm-search-choices"), strict=True):
            widget.add_class(css)
            widget.observe(lambda _: self.changed(), "value")
        note = w.HTML(layout=w.Layout(flex="1 1 0", min_width="160px"))
        note.add_class("hsm-row-note")
        self.rows.append(row)
        self.notes.append(note)
        box = [w.HBox([*r, n]) for r, n in zip(self.rows, self.notes, strict=False)]
        for b in box:
            b.add_class("hsm-search-row")
        self.rows_box.children = box
        self.changed()

    def row_texts(self) -> list[Row]:
        return [(n.value, k.value, lo.value, hi.value, c.value) for n, k, lo, hi, c in self.rows]

    def settings(self) -> Settings:
        return Settings(self.sampler.value, self.pruner.value, self.n_trials.value, self.timeout.value,
                        self.max_failed.value, self.seed.value)

    def search(self) -> Search:
        """The ``Search`` the form describes; the first problem raises ``ConfigError``."""
        return build_search(self.row_texts(), self.settings())

    def changed(self) -> None:
        """Show or hide each row's fields for its distribution, mark a bad field and explain it
        beside it, preview good rows, and say what is wrong with the settings."""
        for (name, kind, low, high, choices), note, check in zip(self.rows, self.notes,
                                                                 check_search_rows(self.row_texts()), strict=False):
            ranged = kind.value in _RANGED
            for widget, shown in ((low, ranged), (high, ranged), (choices, not ranged)):
                display = "" if shown else "none"
                if widget.layout.display != display:
                    widget.layout.display = display
            choices.placeholder = "one value" if kind.value == "fixed" else "choices: a, b, c"
            for widget, what in ((name, "name"), (low, "low"), (high, "high"), (choices, "choices")):
                mark_bad(widget, check.bad == what)
            note.value = (_problem(check.error) if check.error else
                          f"<span class='hsm-preview'>{esc(check.note)}</span>" if check.note else "")
        try:
            self.settings().arguments()
            problem: ConfigError | None = None
        except ConfigError as exc:
            problem = exc
        for widget, what in ((self.n_trials, "n_trials"), (self.timeout, "timeout"),
                             (self.max_failed, "max_failed"), (self.seed, "seed")):
            mark_bad(widget, problem is not None and problem.field == what)
        self.settings_note.value = _problem(words(problem)) if problem else ""
        self._on_change()

    def disable(self) -> None:
        for widget in (*(x for row in self.rows for x in row), self.add_button, self.sampler, self.pruner,
                       self.n_trials, self.timeout, self.max_failed, self.seed):
            widget.disabled = True
