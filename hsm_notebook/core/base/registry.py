"""Source classes by type name and by import path, so ``Sweep.attach`` can turn a sweep's
record back into sources (built-in ones and users' own) and core imports no concrete
source and no widget.

Every ``ComputeSource`` subclass registers itself here when its class statement runs
(``__init_subclass__``): under its import path ``"module:qualname"`` (what ``describe()``
records as ``"class"``) and, when it declares one, under its ``source_type``.  Running a
class statement again, as a new kernel does with a notebook's cell, registers the new
class under the same path.  What lives outside core is named by import path string and
imported only when asked for: the built-in sources (the default ``local`` one included)
and the notebook panel.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..._lazy import load  # noqa: F401 - re-exported: sources and tests load by path here
from ..model.errors import ConfigError

if TYPE_CHECKING:
    from .source import ComputeSource

#: Built-in source types, imported on first use (so a local sweep never imports asyncssh).
BUILTIN_SOURCES: dict[str, str] = {
    "local": "hsm_notebook.sources.local:LocalComputeSource",
    "ssh": "hsm_notebook.sources.ssh:SSHComputeSource",
    "slurm": "hsm_notebook.sources.slurm:SlurmComputeSource",
    "sge": "hsm_notebook.sources.sge:SGEComputeSource",
    "pbs": "hsm_notebook.sources.pbs:PBSComputeSource",
}
#: The notebook view of a sweep: ``Sweep.panel()`` calls it with the sweep.
PANEL = "hsm_notebook.ui.panel:SweepPanel"

#: Keys of a ``describe()`` record that are not constructor arguments.
BOOKKEEPING = ("type", "class")

_by_path: dict[str, type] = {}
_by_type: dict[str, type] = {}


def class_path(cls: type) -> str:
    """``"package.module:Outer.Name"``: where to import ``cls`` from."""
    return f"{cls.__module__}:{cls.__qualname__}"


def register(cls: type) -> None:
    """Make ``cls`` findable by its import path and by the ``source_type`` it declares."""
    _by_path[class_path(cls)] = cls
    kind = cls.__dict__.get("source_type")
    if isinstance(kind, str) and kind:
        _by_type[kind] = cls


def source_class(kind: str | None, path: str | None = None) -> type[ComputeSource]:
    """The class to rebuild a source with: the one registered under ``path`` (its class
    statement ran in this process), else imported from ``path``, else the built-in or
    registered one of type ``kind`` (records written before ``"class"`` was recorded).  LookupError
    when none is found.  Every ComputeSource subclass registers itself when its class statement
    runs, so being registered is what makes a class a source here."""
    reasons = []
    cls = _by_path.get(path) if path else None
    if cls is None and path and "<locals>" not in path:
        try:
            cls = load(path)
        except (ImportError, AttributeError, ValueError) as exc:
            reasons.append(f"{path} cannot be imported ({type(exc).__name__}: {exc})")
    if cls is None and kind in BUILTIN_SOURCES:
        cls = load(BUILTIN_SOURCES[kind])
    if cls is None and kind is not None:
        cls = _by_type.get(kind)
    if cls is None:
        raise LookupError("; ".join(reasons) or f"no source class is known for type {kind!r}")
    if not (isinstance(cls, type) and _by_path.get(class_path(cls)) is cls):
        raise LookupError(f"{path or kind} is not a ComputeSource class")
    return cls


def rebuild(description: Mapping[str, Any]) -> ComputeSource:
    """A source from its ``describe()`` record (``Sweep.attach``): its class's
    ``from_description``.  ``ConfigError`` naming the source when that is not possible."""
    kind, path, name = description.get("type"), description.get("class"), description.get("name")
    try:
        cls = source_class(kind, path)
        return cls.from_description(description)
    except (LookupError, TypeError) as exc:
        raise ConfigError(
            f"the sweep used a {kind!r} source named {name!r}, which cannot be rebuilt automatically "
            f"({exc}); define its class first, or pass it again: Sweep.attach(dir, sources=[...])",
            "sources",
        ) from exc


def default_source(**kwargs: Any) -> ComputeSource:
    """This machine: the source of a sweep given none."""
    return load(BUILTIN_SOURCES["local"])(**kwargs)


def panel(sweep: Any) -> Any:
    """The notebook panel of ``sweep`` (imports the widgets only now)."""
    return load(PANEL)(sweep)
