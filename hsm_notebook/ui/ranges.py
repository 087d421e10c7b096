"""Ranges typed in a parameter's values field: ``range``, ``arange``, ``linspace`` and
``logspace`` (also as ``np.``/``numpy.``) with Python's and numpy's meaning, as Python numbers.

Pure functions (``parse_call``, ``call_problem``), read with ``ast`` (never evaluated): the
arguments are numbers, signs and arithmetic on numbers; anything else is refused in words.
"""

from __future__ import annotations

import ast
import math
import operator
import re
from typing import Any

from ..core.model.errors import ConfigError

#: an unquoted ``name(`` (``np.``/``numpy.`` allowed): a range function, or a typo to refuse
CALL = re.compile(r"^(?:(?:np|numpy)\s*\.\s*)?([A-Za-z_]\w*)\s*\(")
_RANGE_FORMS = "range(stop), range(start, stop) or range(start, stop, step) with whole numbers"


class _NotNumber(ValueError):
    """An argument of a range call that is not a plain number."""


_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
        ast.Pow: operator.pow}


def _number(node: ast.AST) -> int | float:
    """A literal number, a sign, or arithmetic on numbers (``2*3.14``, ``10**-3``); nothing else."""
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _number(node.operand)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        left, right = _number(node.left), _number(node.right)
        if isinstance(node.op, ast.Pow) and (abs(right) > 1024 or abs(left) > 1e6):
            raise _NotNumber(f"{ast.unparse(node)} is too large a power")
        try:
            value = _OPS[type(node.op)](left, right)
        except (ZeroDivisionError, OverflowError) as exc:
            raise _NotNumber(f"{ast.unparse(node)}: {exc}") from None
        if isinstance(value, complex):
            raise _NotNumber(f"{ast.unparse(node)} is not a real number")
        return value
    raise _NotNumber(f"{ast.unparse(node)!r} is not a number")


def _whole(value: Any, what: str, text: str, field: str, least: int | None = None, hint: str = "") -> int:
    if type(value) is not int or (least is not None and value < least):
        more = f" of at least {least}" if least is not None else ""
        raise ConfigError(f"{text}: {what} must be a whole number{more}, got {value!r}{hint}", field)
    return value


def _call_args(node: ast.Call, form: _Form, text: str, field: str) -> dict[str, Any]:
    """The call's arguments by name (positional ones in the form's order), checked as numbers."""
    names, required, defaults = form
    if len(node.args) > len(names):
        raise ConfigError(f"{text} is not a valid {form_name(text)}: it takes at most {len(names)} values "
                          f"({', '.join(names)}); e.g. {_EXAMPLES[form_name(text)]}", field)
    args: dict[str, Any] = dict(defaults)
    for key, arg in zip(names, node.args, strict=False):
        args[key] = _number(arg)
    for kw in node.keywords:
        if form_name(text) == "range" and node.keywords:  # Python's range takes no keywords
            raise ConfigError(f"{text}: range takes no keywords; write {_RANGE_FORMS}", field)
        if kw.arg not in defaults and kw.arg not in names:
            known = ", ".join(k for k in dict.fromkeys([*names, *defaults]) if k not in ("start", "stop"))
            raise ConfigError(f"{text}: the keyword {kw.arg}= is not taken here (keywords: {known}); "
                              "remove it", field)
        if kw.arg == "endpoint":
            if not isinstance(kw.value, ast.Constant) or type(kw.value.value) is not bool:
                raise ConfigError(f"{text}: endpoint must be True or False", field)
            args["endpoint"] = kw.value.value
        else:
            args[kw.arg] = _number(kw.value)
    if len(node.args) < required and not all(k in args for k in names[:required]):
        raise _NotNumber(f"it needs at least {required} number{'s' if required > 1 else ''}")
    return args


def form_name(text: str) -> str:
    match = CALL.match(text)
    return match.group(1) if match else ""


#: per range function: (positional names, how many are required, keywords with numpy's defaults)
_Form = tuple[tuple[str, ...], int, dict[str, Any]]
_FORMS: dict[str, _Form] = {
    "range": (("start", "stop", "step"), 1, {}),
    "arange": (("start", "stop", "step"), 1, {}),
    "linspace": (("start", "stop", "num"), 2, {"num": 50, "endpoint": True}),
    "logspace": (("start", "stop", "num"), 2, {"num": 50, "endpoint": True, "base": 10.0}),
}
_WRITE = {
    "range": _RANGE_FORMS,
    "arange": "arange(stop), arange(start, stop) or arange(start, stop, step)",
    "linspace": "linspace(start, stop, num) (num values from start to stop; endpoint=False leaves stop out)",
    "logspace": "logspace(start, stop, num) (num values from base**start to base**stop; base=10 unless given)",
}
_EXAMPLES = {"range": "range(1, 4)", "arange": "arange(0, 1, 0.25)", "linspace": "linspace(0, 1, 5)",
             "logspace": "logspace(-5, -1, 5)"}
RANGE_FUNCTIONS = tuple(_FORMS)


def _count(name: str, a: dict[str, Any], text: str, field: str) -> int:
    """How many values the call gives, found before any is made (so ``range(10**12)`` is cheap)."""
    if name in ("range", "arange"):
        start, stop = (0, a["start"]) if "stop" not in a else (a["start"], a["stop"])
        step = a.get("step", 1)
        if name == "range":
            for what, value in (("start", start), ("stop", stop), ("step", step)):
                _whole(value, f"the {what}", text, field,
                       hint="; for fractional steps write arange(...) or linspace(...)")
        if step == 0:
            raise ConfigError(f"{text}: the step cannot be 0; e.g. {_EXAMPLES[name]}", field)
        a.update(start=start, stop=stop, step=step)
        return max(0, math.ceil((stop - start) / step))
    return _whole(a["num"], "num", text, field, least=1)


def parse_call(text: str, field: str, problem: str | None, max_values: int) -> list[Any]:
    """``range(...)``, ``arange(...)``, ``linspace(...)``, ``logspace(...)`` (also as ``np.``/
    ``numpy.``) as Python and numpy read them, as Python numbers; anything less than one whole
    valid call, alone in the field, is refused with the reason (``problem``: why its brackets or
    quotes do not pair up, if they do not).  More than ``max_values`` values are refused."""
    name = form_name(text)
    if problem:
        raise ConfigError(f"{text} is not a complete {name}: {problem}; e.g. {_EXAMPLES[name]}", field)
    try:
        node = ast.parse(text, mode="eval").body
        if not isinstance(node, ast.Call):  # e.g. a tuple: the call and more values
            raise SyntaxError("more than the call")  # noqa: TRY004 - read as the text's grammar
        args = _call_args(node, _FORMS[name], text, field)
        n = _count(name, args, text, field)
    except SyntaxError:
        raise ConfigError(f"{text} is not a valid {name}: write {_WRITE[name]}, alone in the field, "
                          f"e.g. {_EXAMPLES[name]}", field) from None
    except _NotNumber as exc:
        raise ConfigError(f"{text} is not a valid {name}: write {_WRITE[name]}, e.g. {_EXAMPLES[name]} "
                          f"({exc})", field) from None
    if n == 0:
        raise ConfigError(f"{text} is empty: it gives no values (the stop must lie past the start in the step's "
                          f"direction), e.g. {_EXAMPLES[name]} or {name}(4, 1, -1)", field)
    if n > max_values:
        raise ConfigError(f"{text} gives {n:,} values; the form takes at most {max_values:,} per parameter: "
                          "use a smaller range, a larger step or a smaller num", field)
    if name == "range":
        return list(range(args["start"], args["stop"], args["step"]))
    import numpy as np  # a pandas dependency, so always there with the panel

    with np.errstate(over="ignore", invalid="ignore"):
        if name == "arange":
            values = np.arange(args["start"], args["stop"], args["step"])
        elif name == "linspace":
            values = np.linspace(args["start"], args["stop"], n, endpoint=args["endpoint"])
        else:
            values = np.logspace(args["start"], args["stop"], n, endpoint=args["endpoint"], base=args["base"])
    out = values.tolist()
    if len(set(out)) < len(out):
        twice = next(v for i, v in enumerate(out) if v in out[:i])
        raise ConfigError(f"{text} gives {twice!r} more than once, so tasks would repeat; make start and stop "
                          f"differ, e.g. {_EXAMPLES[name]}", field)
    bad = [v for v in out if isinstance(v, float) and not math.isfinite(v)]
    if bad:
        raise ConfigError(f"{text} gives {bad[0]}: a value too large (or undefined) for a float; "
                          f"narrow the range, e.g. {_EXAMPLES[name]}", field)
    return out


def call_problem(item: str, alone: bool) -> str | None:
    """Why an unquoted ``name(...)`` item cannot be a value: an unknown function, or a range among
    other values; None when it is a range function alone in the field."""
    match = CALL.match(item)
    if not match:
        return None
    known = ", ".join(RANGE_FUNCTIONS)
    if match.group(1) not in _FORMS:
        return (f"{item} looks like a call, but the functions this field knows are {known}; fix the name, "
                f"or quote it to pass the text itself: '{item}'")
    if not alone:
        return f"{item} must be alone in the field (it makes all the values); write it without other values"
    return None
