"""Parameter values typed the quick way (``0.1, 0.01``, ``range(1, 4)``, ``[a, 'b c']``), parsed and
checked as pure functions, tested without widgets: each problem is named with its fix and the
row it belongs to.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import yaml

from ..core.model.errors import ConfigError
from ..core.spec.config import load_yaml
from ..core.spec.space import ParameterSpace
from .ranges import CALL, call_problem, parse_call

KINDS = ("grid", "paired A", "paired B", "paired C", "fixed")
#: More values than this in one field is a typo (``range(10**9)`` would fill the kernel's memory).
MAX_VALUES = 100_000
_PAIRS = {"(": ")", "[": "]", "{": "}"}
_OPENERS = {close: open_ for open_, close in _PAIRS.items()}
_PREVIEW_ITEMS = 5


# -- parsing one field ------------------------------------------------------------------------
def _scalar(text: str) -> Any:
    """``"0.1"`` -> 0.1, ``"true"`` -> True, ``"relu"`` -> "relu" (YAML rules for one item)."""
    try:
        value = load_yaml(text)
    except yaml.YAMLError:
        return text
    keep_text = isinstance(value, (dict, list)) or value is None and text.lower() not in ("null", "none", "~")
    return text if keep_text else value


def _opens_quote(text: str, i: int) -> bool:
    """A quote starts a quoted item only where an item starts (so ``don't`` is a plain word)."""
    before = text[:i].rstrip()
    return not before or before[-1] in ",[{(:"


def _quote_end(text: str, i: int) -> int | None:
    """Where the quote opened at ``i`` closes (YAML rules: ``''`` inside '...', ``\\"`` inside "...")."""
    quote, j = text[i], i + 1
    while j < len(text):
        if quote == '"' and text[j] == "\\":
            j += 2
            continue
        if text[j] == quote:
            if quote == "'" and text[j + 1:j + 2] == "'":
                j += 2
                continue
            return j
        j += 1
    return None


def bracket_problem(text: str) -> str | None:
    """Why the brackets, parentheses or quotes of ``text`` do not pair up, with the fix; or None."""
    stack: list[tuple[str, int]] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch in "'\"" and _opens_quote(text, i):
            end = _quote_end(text, i)
            if end is None:
                return f"the quote {ch} at character {i + 1} is never closed; add a closing {ch}"
            i = end + 1
            continue
        if ch in _PAIRS:
            stack.append((ch, i))
        elif ch in _OPENERS:
            where = f"'{ch}' at character {i + 1}"
            if not stack:
                return f"{where} has no opening '{_OPENERS[ch]}'; remove it or add the '{_OPENERS[ch]}'"
            opener, at = stack.pop()
            if _PAIRS[opener] != ch:
                return f"{where} closes the '{opener}' at character {at + 1}; use '{_PAIRS[opener]}'"
        i += 1
    if stack:
        opener, at = stack[-1]
        return f"'{opener}' at character {at + 1} is never closed; add '{_PAIRS[opener]}'"
    return None


def _split_items(text: str) -> list[str]:
    """``text`` split at the commas outside brackets and quotes (``text`` pairs up)."""
    items, depth, start, i = [], 0, 0, 0
    while i < len(text):
        ch = text[i]
        if ch in "'\"" and _opens_quote(text, i):
            i = (_quote_end(text, i) or len(text)) + 1
            continue
        if ch in _PAIRS:
            depth += 1
        elif ch in _OPENERS:
            depth -= 1
        elif ch == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
        i += 1
    items.append(text[start:])
    return [item.strip() for item in items]


def parse_values(text: str, field: str = "values") -> list[Any]:
    """What a person types for a parameter's values, as a list.

    ``0.1, 0.01`` | ``range(1, 4)`` | ``linspace(0, 1, 5)`` | ``logspace(-5, -1, 5)`` |
    ``arange(0, 1, 0.25)`` (also as ``np.``/``numpy.``; numpy's meaning, Python numbers) |
    ``[a, b]`` (YAML) | ``64`` (one value).  Refused, with the problem and the fix in words: an
    empty field or an empty item (``1,,2``), a range call that is not one whole valid call alone
    in the field, an unquoted call of any other name (quote it to pass the text), brackets or
    quotes that do not pair up.
    """
    text = (text or "").strip()
    if not text:
        raise ConfigError("no values; type them separated by commas, e.g. 0.1, 0.01", field)
    if CALL.match(text):
        problem = call_problem(text, alone=True)
        if problem:
            raise ConfigError(problem, field)
        return parse_call(text, field, bracket_problem(text), MAX_VALUES)
    problem = bracket_problem(text)
    if problem:
        lead = "is not a valid YAML list: " if text.startswith("[") else "brackets or quotes do not pair up: "
        raise ConfigError(lead + problem, field)
    if text.startswith("["):
        try:
            values = load_yaml(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"is not a valid YAML list ({exc.problem}); write e.g. [a, b]", field) from None
        if not isinstance(values, list):
            raise ConfigError("must be a list such as [1, 2]", field)
        if not values:
            raise ConfigError("[] has no values; put them inside, e.g. [1, 2]", field)
        return values
    items = _split_items(text)
    for k, item in enumerate(items, 1):
        if not item:
            raise ConfigError(f"value {k} of {len(items)} is empty (two commas in a row, or a comma at an end); "
                              "remove the extra comma", field)
        problem = call_problem(item, alone=False)
        if problem:
            raise ConfigError(problem, field)
    return [_scalar(item) for item in items]


def preview(values: Sequence[Any], kind: str = "grid") -> str:
    """A short plain-text view of parsed values: ``"3 values: 1, 2, 3"``, ``"fixed: 64"``."""
    if kind == "fixed" and len(values) == 1:
        return f"fixed: {_shown(values[0])}"
    items = [_shown(v) for v in values[:_PREVIEW_ITEMS]]
    if len(values) > _PREVIEW_ITEMS:
        items[-1:] = ["…", _shown(values[-1])]
    n = len(values)
    return f"{n:,} value{'s' if n != 1 else ''}: {', '.join(items)}"


def _shown(value: Any) -> str:
    """A value as the job will see it; a string is quoted where it could be read as something else."""
    if isinstance(value, str):
        plain = value and "," not in value and value[0] not in "'\"[{(" and _scalar(value) == value
        text = value if plain else json.dumps(value)
    else:
        text = json.dumps(value, default=str)
    return text if len(text) <= 24 else text[:23] + "…"


# -- checking the rows ------------------------------------------------------------------------
@dataclass(frozen=True)
class RowCheck:
    """One row's verdict: its values, or the problem in words and the field to mark."""

    values: list | None = None
    error: str | None = None
    bad: str | None = None  # "name" or "values": the field that is wrong
    blank: bool = False


def words(exc: ConfigError) -> str:
    """The message without its ``field:`` prefix (the row already shows which field)."""
    text = str(exc)
    prefix = f"{exc.field}: " if exc.field else ""
    return text[len(prefix):] if prefix and text.startswith(prefix) else text


def _check_row(name: str, text: str, kind: str) -> RowCheck:
    """What a row alone can be checked for: its name, its values, and a fixed row's single value."""
    name, text = (name or "").strip(), (text or "").strip()
    if not name and not text:
        return RowCheck(blank=True)
    if not name:
        return RowCheck(error="has values but no parameter name; type one on the left, e.g. lr", bad="name")
    try:
        ParameterSpace(fixed={name: 0})
    except ConfigError as exc:
        return RowCheck(error=words(exc), bad="name")
    try:
        values = parse_values(text, name)
        ParameterSpace(grid={name: values})
    except ConfigError as exc:
        return RowCheck(error=words(exc), bad="values")
    if kind == "fixed" and len(values) != 1:
        return RowCheck(values, f"a fixed parameter takes one value, got {len(values)}; keep one or make it grid",
                        bad="values")
    return RowCheck(values)


def _given_twice(names: list[str], checks: list[RowCheck]) -> list[RowCheck]:
    first: dict[str, int] = {}
    out = []
    for i, (name, check) in enumerate(zip(names, checks, strict=False)):
        if name and name in first and not check.error:
            check = replace(check, error=f"parameter given twice (also in row {first[name] + 1}); keep one row",
                            bad="name")
        if name:
            first.setdefault(name, i)
        out.append(check)
    return out


def _unequal_pairs(names: list[str], kinds: list[str], checks: list[RowCheck]) -> list[RowCheck]:
    """Rows of one paired group are zipped: each needs the same number of values."""
    out = list(checks)
    for kind in {k for k in kinds if k.startswith("paired")}:
        rows = [i for i, c in enumerate(checks) if kinds[i] == kind and c.values is not None and not c.error]
        lengths = {names[i]: len(checks[i].values or ()) for i in rows}
        if len(set(lengths.values())) > 1:
            sizes = ", ".join(f"{n} has {k}" for n, k in lengths.items())
            for i in rows:
                out[i] = replace(out[i], error=f"{kind} rows are zipped, so each needs the same length ({sizes})",
                                 bad="values")
    return out


def check_rows(rows: Sequence[tuple[str, str, str]]) -> list[RowCheck]:
    """A ``RowCheck`` per ``(name, values text, kind)`` row, problems found across rows
    (a name given twice, a paired group of unequal lengths) included."""
    names = [(name or "").strip() for name, _, _ in rows]
    kinds = [kind for _, _, kind in rows]
    checks = [_check_row(*row) for row in rows]
    return _unequal_pairs(names, kinds, _given_twice(names, checks))


def rows_to_space(rows: Sequence[tuple[str, str, str]]) -> ParameterSpace:
    """``[(name, values text, kind), ...]`` -> a space (blank rows are ignored); the first
    bad row raises ``ConfigError`` naming its parameter (or ``row N`` when it has no name)."""
    grid: dict[str, Any] = {}
    fixed: dict[str, Any] = {}
    groups: dict[str, dict[str, Any]] = {}
    for i, ((name, _, kind), check) in enumerate(zip(rows, check_rows(rows), strict=False)):
        name = (name or "").strip()
        if check.error:
            raise ConfigError(check.error, name or f"row {i + 1}")
        if check.blank:
            continue
        if kind == "fixed":
            fixed[name] = (check.values or [None])[0]
        elif kind == "grid":
            grid[name] = check.values
        else:
            groups.setdefault(kind, {})[name] = check.values
    if not grid and not groups and not fixed:
        raise ConfigError("add at least one parameter (a name and its values)", "parameters")
    return ParameterSpace(grid=grid, paired=list(groups.values()), fixed=fixed)

