"""The parameter space: grid, paired groups, fixed values, filters, sampling.

A space is a product of *factors*.  Each grid key is a factor with one column;
each paired group is a factor whose columns advance together (zipped); an
explicit list of combinations is one factor too.  Combination ``i`` is found by
mixed-radix decomposition of ``i`` over the factor lengths (the last factor
varies fastest, as in ``itertools.product``), so counting is a product of
lengths and any combination can be reached without materialising the others.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import random
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..model.errors import ConfigError

Params = dict[str, Any]

_SPACE_KEYS = {"grid", "paired", "fixed", "exclude", "sample", "combinations"}

#: A row of the explicit-combinations factor that does not set this name.
_ABSENT = object()

_NAME_RULE = (
    "use printable characters other than '=' and whitespace, not starting with '-' "
    "(e.g. lr, model.width, data_split, +trainer.devices)"
)


def task_id(params: Mapping[str, Any]) -> str:
    """A stable id for one combination: the same in every process, run and machine."""
    canonical = json.dumps(params, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def flatten(d: Mapping[str, Any], prefix: str = "", *, leaf: Callable[[Any], bool] | None = None) -> Params:
    """``{"model": {"width": 1}}`` -> ``{"model.width": 1}``.

    ``leaf`` decides whether a dict is a value rather than a level (never, by default).
    """
    out: Params = {}
    for key, value in d.items():
        if not isinstance(key, str) or not key:
            raise ConfigError(f"parameter names must be non-empty strings, got {key!r}", prefix or None)
        name = f"{prefix}.{key}" if prefix else key
        if isinstance(value, Mapping) and not (leaf and leaf(value)):
            out.update(flatten(value, name, leaf=leaf))
        else:
            out[name] = value
    return out


def _uncarriable(value: Any) -> str | None:
    """What in ``value`` (its strings, dict keys and nested values included) no argv can carry, or None."""
    if isinstance(value, str):
        if "\0" in value:
            return "a NUL character"
        if not value.isascii():
            lone = next((ch for ch in value if 0xD800 <= ord(ch) <= 0xDFFF), None)
            if lone is not None:
                return f"a lone surrogate (U+{ord(lone):04X})"
        return None
    if isinstance(value, list):
        return next(filter(None, map(_uncarriable, value)), None)
    if isinstance(value, dict):
        return next(filter(None, (_uncarriable(x) for kv in value.items() for x in kv)), None)
    return None


def _jsonable(value: Any, field: str, *, argv: bool = True) -> Any:
    """Normalise a value to plain JSON types, or say why it cannot be.

    ``argv``: the value goes to a job's command line, so it must be text an argv can carry.
    """
    if hasattr(value, "item") and callable(value.item) and not isinstance(value, (list, dict)):
        value = value.item()  # numpy scalars
    if isinstance(value, tuple):
        value = list(value)
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"value {value!r} ({type(value).__name__}) cannot be stored as JSON ({exc}); "
            "use numbers, strings, booleans, None, or lists/dicts of them",
            field,
        ) from None
    problem = _uncarriable(value) if argv else None
    if problem:
        raise ConfigError(
            f"value {value!r} holds {problem}, which no command line can carry to a job "
            "(it would arrive altered or not at all); remove it from the value",
            field,
        )
    return value


def _name_problem(name: str) -> str | None:
    """Why ``name=value`` could not be split back into this name, or None."""
    if not name:
        return "is empty"
    if "=" in name:
        return "contains '='"
    if any(ch.isspace() or not ch.isprintable() for ch in name):
        return "contains whitespace or a control character"
    if name.startswith("-"):
        return "starts with '-', so it would be read as an option"
    return None


def _same_value(a: Any, b: Any) -> bool:
    """Equality as a person means it: True is not 1, 1 is 1.0, "1" is not 1 (also inside lists/dicts)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(map(_same_value, a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_value(a[k], b[k]) for k in a)
    return a == b


@dataclass(frozen=True)
class _Factor:
    """Columns that advance together; ``rows`` is a list of value tuples.

    In the explicit-combinations factor a row holds ``_ABSENT`` for the names it does not set.
    """

    names: tuple[str, ...]
    rows: tuple[tuple[Any, ...], ...]

    def __len__(self) -> int:
        return len(self.rows)


class ParameterSpace:
    """What to sweep over.

    >>> space = ParameterSpace(grid={"lr": [1e-3, 1e-2], "model": {"width": [128, 256]}},
    ...                        paired=[{"seed": [1, 2], "split": ["a", "b"]}],
    ...                        fixed={"epochs": 3})
    >>> len(space)
    8
    >>> space[0]
    {'lr': 0.001, 'model.width': 128, 'seed': 1, 'split': 'a', 'epochs': 3}

    ``exclude`` is a list of partial combinations to drop (``{"lr": 0.01, "model.width": 256}``;
    values match by type as well: ``True`` is not ``1``, but ``1`` is ``1.0``);
    ``filter`` is a predicate ``params -> bool`` that keeps a combination; ``sample``
    draws that many combinations at random with ``seed`` (the same ones every time).
    ``combinations`` is an explicit list; each keeps exactly its own keys.
    """

    def __init__(
        self,
        grid: Mapping[str, Any] | None = None,
        paired: Sequence[Mapping[str, Any]] | None = None,
        fixed: Mapping[str, Any] | None = None,
        *,
        combinations: Sequence[Mapping[str, Any]] | None = None,
        exclude: Sequence[Mapping[str, Any]] | None = None,
        filter: Callable[[Params], bool] | None = None,  # noqa: A002 - the natural name
        sample: int | None = None,
        seed: int = 0,
    ):
        grid_d: dict[str, Any] = dict(grid or {})
        paired_l: list[dict[str, Any]] = [dict(g) for g in (paired or [])]
        fixed_d: dict[str, Any] = dict(fixed or {})
        combinations_l: list[dict[str, Any]] = [dict(c) for c in (combinations or [])]
        exclude_l: list[dict[str, Any]] = [dict(e) for e in (exclude or [])]
        self._spec: dict[str, Any] = {
            "grid": grid_d,
            "paired": paired_l,
            "fixed": fixed_d,
            "combinations": combinations_l,
            "exclude": exclude_l,
        }
        self._factors: list[_Factor] = []
        seen: dict[str, str] = {}
        self._add_grid(grid_d, seen)
        for i, group in enumerate(paired_l):
            self._add_paired(i, group, seen)
        self._add_combinations(combinations_l, seen)
        self._fixed = {k: _jsonable(v, f"fixed.{k}") for k, v in flatten(fixed_d).items()}
        for key in self._fixed:
            self._claim(key, "fixed", seen)
        self._exclude = [self._pattern(i, e, seen) for i, e in enumerate(exclude_l)]
        self._filter = filter
        self._check_sample(sample)
        self._sample, self._seed = sample, seed
        self._sample_idx: list[int] | None = None
        self._count: int | None = None
        self.names: tuple[str, ...] = tuple(seen)

    # -- construction ---------------------------------------------------------------
    @staticmethod
    def _claim(key: str, where: str, seen: dict[str, str]) -> None:
        problem = _name_problem(key)
        if problem:
            raise ConfigError(f"parameter name {key!r} {problem}; a job gets it as name=value, so {_NAME_RULE}", where)
        if key in seen:
            raise ConfigError(f"parameter given twice (in {seen[key]} and in {where}); keep one", key)
        seen[key] = where

    def _add_grid(self, grid: Mapping[str, Any], seen: dict[str, str]) -> None:
        for key, values in flatten(grid).items():
            field = f"grid.{key}"
            values = self._values(values, field, hint="for a single value use fixed:")
            self._claim(key, "grid", seen)
            self._factors.append(_Factor((key,), tuple((v,) for v in values)))

    def _add_paired(self, i: int, group: Mapping[str, Any], seen: dict[str, str]) -> None:
        if group and all(isinstance(v, Mapping) for v in group.values()):
            # The reference tool's form: ``- group_name: {a: [...], b: [...]}``.
            merged: dict[str, Any] = {}
            for sub in group.values():
                merged.update(flatten(sub))
        else:
            merged = flatten(group)
        if not merged:
            raise ConfigError("is an empty group; give at least one parameter with a list of values", f"paired[{i}]")
        cols = {k: self._values(v, f"paired[{i}].{k}") for k, v in merged.items()}
        lengths = {k: len(v) for k, v in cols.items()}
        if len(set(lengths.values())) > 1:
            raise ConfigError(
                f"values of a paired group are zipped, so every list needs the same length; got {lengths}",
                f"paired[{i}]",
            )
        for key in cols:
            self._claim(key, f"paired[{i}]", seen)
        names = tuple(cols)
        self._factors.append(_Factor(names, tuple(zip(*(cols[n] for n in names), strict=True))))

    def _add_combinations(self, combos: Sequence[Mapping[str, Any]], seen: dict[str, str]) -> None:
        if not combos:
            return
        flat = [flatten(c) for c in combos]
        names = tuple(dict.fromkeys(k for c in flat for k in c))
        for key in names:
            self._claim(key, "combinations", seen)
        rows = []
        for j, c in enumerate(flat):
            rows.append(tuple(_jsonable(c[n], f"combinations[{j}].{n}") if n in c else _ABSENT for n in names))
        self._factors.append(_Factor(names, tuple(rows)))

    @staticmethod
    def _pattern(i: int, exclude: Mapping[str, Any], seen: Mapping[str, str]) -> Params:
        pattern = flatten(exclude)
        unknown = set(pattern) - set(seen)
        if unknown:
            raise ConfigError(f"names unknown parameters {sorted(unknown)}; known: {sorted(seen)}", "exclude")
        return {k: _jsonable(v, f"exclude[{i}].{k}", argv=False) for k, v in pattern.items()}

    def _check_sample(self, sample: Any) -> None:
        if sample is None:
            return
        if not isinstance(sample, int) or isinstance(sample, bool) or sample < 1:
            raise ConfigError(f"must be a whole number >= 1, got {sample!r}", "sample")
        if sample > self.total:
            raise ConfigError(
                f"sample={sample} but the space has only {self.total} combinations; lower sample or drop it",
                "sample",
            )

    @staticmethod
    def _values(values: Any, field: str, hint: str = "") -> list[Any]:
        if isinstance(values, range):
            values = list(values)
        if isinstance(values, tuple):
            values = list(values)
        if not isinstance(values, list):
            raise ConfigError(
                f"must be a list of values such as [0.1, 0.01], got {values!r}" + (f" ({hint})" if hint else ""),
                field,
            )
        if not values:
            raise ConfigError("is an empty list; give at least one value", field)
        return [_jsonable(v, field) for v in values]

    # -- size and access --------------------------------------------------------------
    @property
    def total(self) -> int:
        """Combinations before exclude/filter/sample: an instant product of lengths."""
        return math.prod(len(f) for f in self._factors) if (self._factors or self._fixed) else 0

    def _filtered(self) -> bool:
        return bool(self._exclude) or self._filter is not None

    def __len__(self) -> int:
        if self._count is None:
            if self._sample is not None:
                self._count = len(self._sample_indices(self._sample))
            elif self._filtered():
                self._count = sum(1 for _ in self._iter_indices())
            else:
                self._count = self.total
        return self._count

    def _combo(self, index: int) -> Params:
        params: Params = {}
        for factor in reversed(self._factors):
            index, r = divmod(index, len(factor))
            params.update((n, v) for n, v in zip(factor.names, factor.rows[r], strict=True) if v is not _ABSENT)
        ordered = {n: params[n] for n in self.names if n in params}
        ordered.update(self._fixed)
        return ordered

    def _keep(self, params: Params) -> bool:
        for pattern in self._exclude:
            if all(k in params and _same_value(params[k], v) for k, v in pattern.items()):
                return False
        return self._filter is None or bool(self._filter(params))

    def _iter_indices(self) -> Iterator[int]:
        if self._sample is not None:
            yield from self._sample_indices(self._sample)
            return
        for i in range(self.total):
            if not self._filtered() or self._keep(self._combo(i)):
                yield i

    def _sample_indices(self, wanted: int) -> list[int]:
        if self._sample_idx is None:
            rng, total = random.Random(self._seed), self.total
            chosen: set[int] = set()
            tried: set[int] = set()
            while len(chosen) < wanted and len(tried) < total:
                i = rng.randrange(total)
                if i in tried:
                    continue
                tried.add(i)
                if self._keep(self._combo(i)):
                    chosen.add(i)
            if len(chosen) < wanted:
                raise ConfigError(
                    f"sample={wanted} but only {len(chosen)} of the {total} combinations pass "
                    "exclude/filter; lower sample or loosen exclude/filter",
                    "sample",
                )
            self._sample_idx = sorted(chosen)
        return self._sample_idx

    def __iter__(self) -> Iterator[Params]:
        for i in self._iter_indices():
            yield self._combo(i)

    def __getitem__(self, n: int) -> Params:
        if self._sample is not None:
            return self._combo(self._sample_indices(self._sample)[n])
        if self._filtered():
            if n < 0:
                n += len(self)
            for k, params in enumerate(self):
                if k == n:
                    return params
            raise IndexError(n)
        if not -self.total <= n < self.total:
            raise IndexError(n)
        return self._combo(n % self.total)

    def take(self, n: int) -> list[Params]:
        """The first ``n`` combinations (lazy: a huge space is not expanded)."""
        return list(itertools.islice(self, n))

    def preview(self, n: int = 5) -> Any:
        """The first ``n`` combinations as a small DataFrame, with their task ids."""
        import pandas as pd

        rows = self.take(n)
        columns = [name for name in self.names if any(name in p for p in rows)]
        ragged = len({tuple(p) for p in rows}) > 1  # explicit combinations with their own keys
        index = pd.Index([task_id(p) for p in rows], name="task_id")
        # object dtype keeps 32 as 32 (not 32.0) in a column that some rows do not set
        return pd.DataFrame(rows, columns=columns, index=index, dtype=object if ragged else None)

    def values(self) -> Iterator[tuple[str, Any]]:
        """Every ``(name, value)`` a job may be given (per row of each factor, not per combination)."""
        for factor in self._factors:
            for row in factor.rows:
                yield from ((n, v) for n, v in zip(factor.names, row, strict=True) if v is not _ABSENT)
        yield from self._fixed.items()

    def with_ids(self) -> Iterator[tuple[str, Params]]:
        """``(task_id, params)`` for every combination, lazily."""
        for params in self:
            yield task_id(params), params

    @property
    def plain(self) -> bool:
        """A product of its factors with nothing left out (no exclude, filter, sample or ragged
        combinations): combination *i* is the *i*-th of the product, as :meth:`columns` reads it."""
        return self._sample is None and not self._filtered() and not any(
            v is _ABSENT for f in self._factors for row in f.rows for v in row)

    def columns(self, indices: Any) -> dict[str, Any]:
        """Each parameter's values at the combinations ``indices`` of a plain product, as numpy
        arrays (int64 for integers, float64 for numbers, bool, else objects), in the space's order."""
        import numpy as np

        idx = np.asarray(indices, dtype=np.int64)
        out: dict[str, Any] = {}
        stride = 1
        for factor in reversed(self._factors):
            rows = (idx // stride) % len(factor)
            stride *= len(factor)
            for ci, name in enumerate(factor.names):
                out[name] = _array([row[ci] for row in factor.rows])[rows]
        for name, value in self._fixed.items():
            out[name] = _array([value])[np.zeros(len(idx), dtype=np.int64)]
        return {n: out[n] for n in self.names if n in out}

    def json_rows(self) -> Iterator[tuple[str, str]]:
        """``(task_id, json.dumps(params))`` for every combination, lazily: what the ledger stores.

        A plain product (no exclude, filter, sample or ragged combinations) is built from each
        value's JSON text made once (the stored form in the space's order, and the canonical form,
        sorted, that the task id hashes), so a million combinations cost string joins, not a
        million dicts and ``json.dumps`` calls; the result is the same, byte for byte."""
        if not self.plain or not self.total:
            for params in self:
                yield task_id(params), json.dumps(params)
            return
        where: dict[str, tuple[int, int]] = {}
        for fi, factor in enumerate(self._factors):
            for ci, name in enumerate(factor.names):
                where[name] = (fi, ci)
        constant = len(self._factors)  # the fixed values: one "row" each, index 0

        def pieces(names: Iterable[str], text: Callable[[str, Any], str]) -> list[tuple[int, list[str]]]:
            out = []
            for name in names:
                if name in self._fixed:
                    out.append((constant, [text(name, self._fixed[name])]))
                else:
                    fi, ci = where[name]
                    out.append((fi, [text(name, row[ci]) for row in self._factors[fi].rows]))
            return out

        names = [n for n in self.names if n in where or n in self._fixed]
        stored = pieces(names, lambda n, v: f"{json.dumps(n)}: {json.dumps(v)}")
        canon = pieces(sorted(names), lambda n, v: json.dumps(n) + ":" + json.dumps(
            v, sort_keys=True, separators=(",", ":"), ensure_ascii=True))
        sha = hashlib.sha256
        for rows in itertools.product(*(range(len(f)) for f in self._factors), (0,)):
            key = "{" + ",".join([frags[rows[fi]] for fi, frags in canon]) + "}"
            yield sha(key.encode()).hexdigest()[:12], "{" + ", ".join([frags[rows[fi]] for fi, frags in stored]) + "}"

    def __repr__(self) -> str:
        return f"ParameterSpace({len(self)} combinations of {list(self.names)})"

    # -- files ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The space as plain data (``filter`` callables cannot be saved and are left out)."""
        out = {k: v for k, v in self._spec.items() if v}
        if self._sample is not None:
            out["sample"] = {"n": self._sample, "seed": self._seed}
        return out

    def to_yaml(self, path: str | Path | None = None) -> str:
        """The space as YAML (the reference ``sweep:`` form); written atomically to ``path`` when given."""
        text = yaml.safe_dump({"sweep": self.to_dict()}, sort_keys=False)
        if path is not None:
            from ..model.files import atomic_write

            atomic_write(Path(path), text)
        return text

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], filter: Callable[[Params], bool] | None = None) -> ParameterSpace:  # noqa: A002
        """Build from ``{grid:, paired:, fixed:, exclude:, sample:, combinations:}``."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"must be a mapping with keys {sorted(_SPACE_KEYS)}, got {type(data).__name__}", "sweep")
        unknown = set(data) - _SPACE_KEYS
        if unknown:
            raise ConfigError(f"unknown keys {sorted(unknown)}; allowed: {sorted(_SPACE_KEYS)}", "sweep")
        sample = data.get("sample")
        n, seed = (sample.get("n"), sample.get("seed", 0)) if isinstance(sample, Mapping) else (sample, 0)
        paired = data.get("paired") or []
        if not isinstance(paired, list) or not all(isinstance(g, Mapping) for g in paired):
            raise ConfigError("must be a list of groups, each a mapping of name -> list of values", "paired")
        for key in ("grid", "fixed"):
            if data.get(key) is not None and not isinstance(data[key], Mapping):
                raise ConfigError(f"must be a mapping of name -> values, got {data[key]!r}", key)
        return cls(
            grid=data.get("grid"),
            paired=paired,
            fixed=data.get("fixed"),
            combinations=data.get("combinations"),
            exclude=data.get("exclude"),
            filter=filter,
            sample=n,
            seed=seed,
        )

    @classmethod
    def from_yaml(cls, source: str | Path) -> ParameterSpace:
        """Read a space from a YAML file (or YAML text), in this tool's or the reference HSM's format."""
        from .config import SweepFile

        return SweepFile.load(source).space


def _array(values: list[Any]) -> Any:
    """Values as a numpy array of the type pandas would infer for them."""
    import numpy as np

    kinds = {type(v) for v in values}
    try:
        if kinds == {bool}:
            return np.array(values, dtype=bool)
        if kinds == {int}:
            return np.array(values, dtype=np.int64)
        if kinds and kinds <= {int, float}:
            return np.array(values, dtype=np.float64)
    except OverflowError:  # an integer beyond 64 bits: kept as it is
        pass
    out = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):  # one by one: a list value stays one element
        out[i] = v
    return out


def space_from_rows(rows: Iterable[Mapping[str, Any]]) -> ParameterSpace:
    """An explicit list of combinations as a space."""
    return ParameterSpace(combinations=list(rows))
