"""Parameter values as Hydra overrides that Hydra reads back exactly.

``arg_style="hydra"`` passes ``name=value``.  Hydra's override grammar gives unquoted text
types (``true`` is a bool, ``1e-3`` a float, ``a,b`` a sweep, ``${x}`` an interpolation), so a
value is written in that grammar: a string stays bare only when Hydra would read the bare
text as that same string, and is quoted otherwise; lists and dicts use Hydra's ``[..]`` and
``{k:v}``; ``null`` is None.  A string holding ``${`` is escaped for OmegaConf too, so the
application sees the text, not an interpolation.  What Hydra cannot express at all (a dict key
that Hydra would read as a number, or with characters its keys cannot hold) is a
:class:`ConfigError` before anything runs.

The rules follow Hydra 1.3's ``OverrideLexer.g4``/``OverrideParser.g4`` and OmegaConf 2.3's
escaping of interpolations; ``tests/test_hydra_values.py`` checks them against the real parser.
"""

from __future__ import annotations

import math
import re
from typing import Any

from ..model.errors import ConfigError

#: Characters of text Hydra may read bare (``adam``, ``resnet-50``, ``/data/train.csv``, ``v1.2``):
#: several of its tokens in a row are joined back into the same string; one alone is typed
#: unless it is a word or a lone character (see ``_TYPED``).
_BARE = re.compile(r"[A-Za-z0-9_\-/.+%*@?|:$]+")
#: Characters a dict key may hold as they are, and those it holds escaped with a backslash.
_KEY_PLAIN = re.compile(r"[A-Za-z0-9_\-/+.$%*@?|]")
_KEY_ESCAPED = set("\\()[]{}:=, \t")
#: Text Hydra reads as a number, a bool or None rather than a string (one token of its lexer).
_TYPED = re.compile(
    r"[+-]?(?:0|[1-9](?:_?\d)*)"  # int
    r"|[+-]?(?:(?:(?:0|[1-9](?:_?\d)*)?\.\d(?:_?\d)*|(?:0|[1-9](?:_?\d)*)\.)(?:[eE][+-]?\d(?:_?\d)*)?"
    r"|(?:0|[1-9](?:_?\d)*)[eE][+-]?\d(?:_?\d)*|inf|nan)"  # float
    r"|true|false|null",
    re.IGNORECASE,
)


def hydra_value(value: Any, field: str = "value") -> str:
    """``value`` as the text after ``name=`` in a Hydra override."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigError(f"value {value!r} is not a finite number; Hydra overrides take finite floats", field)
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(hydra_value(v, field) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{_key(k, value, field)}:{hydra_value(v, field)}" for k, v in value.items()) + "}"
    raise ConfigError(f"value {value!r} ({type(value).__name__}) has no Hydra spelling", field)


def _string(text: str) -> str:
    text = _escape_interpolations(text)
    if _BARE.fullmatch(text) and "${" not in text and not _TYPED.fullmatch(text):
        return text
    quote = '"' if "'" in text and '"' not in text else "'"
    # Hydra un-escapes only backslashes that run up to a quote (and to the closing quote).
    text = re.sub(r"(\\*)" + quote, lambda m: m[1] * 2 + "\\" + quote, text)
    text = re.sub(r"(\\+)$", lambda m: m[1] * 2, text)
    return quote + text + quote


def _escape_interpolations(text: str) -> str:
    r"""OmegaConf reads ``${`` as an interpolation and ``\${`` as the text ``${``; backslashes
    right before ``${`` are halved.  So ``k`` backslashes then ``${`` are written as ``2k+1``."""
    return re.sub(r"(\\*)\$\{", lambda m: m[1] * 2 + "\\${", text)


def _key(key: Any, container: dict, field: str) -> str:
    if not isinstance(key, str):
        raise ConfigError(f"dict {container!r} has a key {key!r} that is not a string", field)
    why = None
    if not key:
        why = "is empty"
    elif _TYPED.fullmatch(key):
        why = "would be read by Hydra as a number, a boolean or null"
    else:
        bad = next((ch for ch in key if not _KEY_PLAIN.fullmatch(ch) and ch not in _KEY_ESCAPED), None)
        if bad is not None:
            why = f"holds {bad!r}, which Hydra's dict keys cannot hold"
    if why:
        raise ConfigError(
            f"dict key {key!r} {why}; Hydra cannot pass {container!r} as a value. Rename the key, "
            "or use arg_style='argparse' (the value is then passed as JSON)",
            field,
        )
    return "".join("\\" + ch if ch in _KEY_ESCAPED else ch for ch in key)
