"""The Parameters section: rows of name + values typed the quick way, or YAML.

Parsing is pure functions (``parse_values``, ``rows_to_space``) so it is tested
without widgets; the widget only collects text and shows the count or the error.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Sequence

import ipywidgets as w
import yaml

from ..core.config import SweepFile, load_yaml, parse_command
from ..core.errors import ConfigError
from ..core.space import ParameterSpace

KINDS = ("grid", "paired A", "paired B", "paired C", "fixed")
_RANGE = re.compile(r"^range\(\s*(-?\d+)\s*(?:,\s*(-?\d+)\s*)?(?:,\s*(-?\d+)\s*)?\)$")


def _scalar(text: str) -> Any:
    """``"0.1"`` -> 0.1, ``"true"`` -> True, ``"relu"`` -> "relu" (YAML rules for one item)."""
    try:
        value = load_yaml(text)
    except yaml.YAMLError:
        return text
    return text if isinstance(value, (dict, list)) or value is None and text.lower() not in ("null", "none", "~") else value


def parse_values(text: str, field: str = "values") -> list[Any]:
    """What a person types for a parameter's values, as a list.

    ``0.1, 0.01`` | ``range(1, 4)`` | ``[a, b]`` (YAML) | ``64`` (one value).
    """
    text = (text or "").strip()
    if not text:
        raise ConfigError("no values; type them separated by commas, e.g. 0.1, 0.01", field)
    m = _RANGE.match(text)
    if m:
        a, b, step = (int(g) if g is not None else None for g in m.groups())
        values = list(range(a) if b is None else range(a, b, step or 1))
        if not values:
            raise ConfigError(f"{text} is empty", field)
        return values
    if text.startswith("["):
        try:
            values = load_yaml(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"is not a valid YAML list ({exc.problem})", field) from None
        if not isinstance(values, list):
            raise ConfigError("must be a list such as [1, 2]", field)
        return values
    return [_scalar(part.strip()) for part in text.split(",") if part.strip()]


def rows_to_space(rows: Sequence[tuple[str, str, str]]) -> ParameterSpace:
    """``[(name, values text, kind), ...]`` -> a space (blank rows are ignored)."""
    grid: dict[str, Any] = {}
    fixed: dict[str, Any] = {}
    groups: dict[str, dict[str, Any]] = {}
    for i, (name, text, kind) in enumerate(rows):
        name = (name or "").strip()
        if not name and not (text or "").strip():
            continue
        if not name:
            raise ConfigError("has values but no parameter name", f"row {i + 1}")
        if name in grid or name in fixed or any(name in g for g in groups.values()):
            raise ConfigError("parameter given twice; keep one row", name)
        values = parse_values(text, name)
        if kind == "fixed":
            if len(values) != 1:
                raise ConfigError(f"a fixed parameter takes one value, got {len(values)}", name)
            fixed[name] = values[0]
        elif kind == "grid":
            grid[name] = values
        else:
            groups.setdefault(kind, {})[name] = values
    if not grid and not groups and not fixed:
        raise ConfigError("add at least one parameter (a name and its values)", "parameters")
    return ParameterSpace(grid=grid, paired=list(groups.values()), fixed=fixed)


class ParamsEditor:
    """Widgets for the space and the command, with a live count or an error in words."""

    def __init__(self, on_change: Callable[[], None] | None = None, rows: int = 4):
        self._on_change: Callable[[], None] = lambda: None  # quiet while the widgets are built
        self.command = w.Text(value="python train.py", description="Command", layout=w.Layout(width="60%"))
        self.workdir = w.Text(value="", placeholder="(the notebook's folder)", description="Workdir",
                              layout=w.Layout(width="60%"))
        self.rows: list[tuple[w.Text, w.Text, w.Dropdown]] = []
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
        self.body = w.VBox()
        self._show_mode()
        self.widget = w.VBox([self.command, self.workdir, self.mode, self.body, self.count])
        self._on_change = on_change or (lambda: None)

    def add_row(self, name: str = "", values: str = "", kind: str = "grid") -> None:
        row = (w.Text(value=name, placeholder="name, e.g. lr", layout=w.Layout(width="180px")),
               w.Text(value=values, placeholder="0.1, 0.01 | range(1, 4) | [a, b]", layout=w.Layout(width="320px")),
               w.Dropdown(options=KINDS, value=kind, layout=w.Layout(width="110px")))
        for widget in row:
            widget.observe(lambda _: self.changed(), "value")
        self.rows.append(row)
        self.rows_box.children = [w.HBox(list(r)) for r in self.rows]
        self.changed()

    def _show_mode(self) -> None:
        self.body.children = [self.rows_box, self.add_button] if self.mode.value == "rows" else [self.yaml]
        self.changed()

    def space(self) -> ParameterSpace:
        if self.mode.value == "YAML":
            return SweepFile.load(self.yaml.value + "\n").space if self.yaml.value.strip() else rows_to_space([])
        return rows_to_space([(n.value, v.value, k.value) for n, v, k in self.rows])

    def command_argv(self) -> tuple[str, ...]:
        return parse_command(self.command.value)

    def changed(self) -> None:
        """Recount, or show what is wrong next to the fields."""
        try:
            space = self.space()
            self.command_argv()
            self.count.value = f"<b>{len(space):,}</b> combinations of {', '.join(space.names)}"
        except ConfigError as exc:
            self.count.value = f"<span class='hsm-error' style='color:#b00'>{_esc(str(exc))}</span>"
        self._on_change()

    def show_space(self, space_dict: dict, command: Sequence[str]) -> None:
        """Show an existing sweep's space and command, read-only."""
        self.mode.value = "YAML"
        self.yaml.value = yaml.safe_dump(space_dict, sort_keys=False)
        self.command.value = " ".join(command)
        for widget in (self.yaml, self.command, self.workdir, self.mode, self.add_button):
            widget.disabled = True


def _esc(text: str) -> str:
    import html

    return html.escape(text)
