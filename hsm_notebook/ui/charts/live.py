"""A Plotly ``FigureWidget`` kept up to date in place.

``LiveFigure.show(spec)`` takes a whole figure (a builder's dictionary, see ``figures.py``) and
sends only what differs from the figure on screen: the properties of the traces that changed (one
``Plotly.update`` for all of them), traces added at the end, traces removed, layout keys that
changed.  Traces are matched by ``uid``; a new set or order of traces (another view chosen) is the
only case that sends the figure whole.  FigureWidget has no message that appends points to a
trace, so a growing curve is resent whole, thinned to ``axes.MAX_POINTS`` float32 points (under
1 KB); curves that did not change are not sent.

Plotly 6 and later build ``FigureWidget`` on anywidget: its JavaScript (about 5 MB, plotly.js
included) travels with each widget's state, so a panel makes two of them, lazily, and re-uses them
for every view.  A click on a point (or a curve) calls ``on_click`` with the task's id; brushing an
axis of parallel coordinates calls ``on_brush`` with ``{axis label: range}``.

Saved notebooks: JupyterLab's saved widget state is the front end's (which holds every update),
and :meth:`LiveFigure.settle` copies the current figure into the kernel's copy of the state, so a
notebook saved from the kernel side (nbconvert, Voila) shows the last state too.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

#: Plotly's template every chart uses (set once: a view switch does not resend it).
TEMPLATE = "plotly_white"


def same(a: Any, b: Any) -> bool:
    """Deep equality of figure values, numpy arrays included (NaN equal to NaN)."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape or a.dtype.kind != b.dtype.kind:
            return False
        return bool(np.array_equal(a, b, equal_nan=a.dtype.kind == "f"))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    try:
        return bool(a == b)
    except (TypeError, ValueError):
        return False


def changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """What turns ``old`` into ``new``, by top-level key (None for a key ``new`` drops)."""
    out = {k: v for k, v in new.items() if k not in old or not same(old[k], v)}
    out.update({k: None for k in old if k not in new})
    return out


def plan(old: Sequence[str], new: Sequence[str]) -> tuple[list[int], int] | None:
    """How to go from the traces ``old`` to ``new`` (uids) in place: the indexes of ``old`` to drop
    and how many of ``new`` to keep (the rest are added at the end); None when the order changed
    (the traces are then sent again)."""
    wanted = set(new)
    drop = [i for i, uid in enumerate(old) if uid not in wanted]
    kept = [uid for uid in old if uid in wanted]
    if list(new[:len(kept)]) != kept:
        return None
    return drop, len(kept)


class LiveFigure:
    """One ``FigureWidget`` (the ``widget`` to put in a layout) and the figure it shows."""

    def __init__(self, css: str = "", *, on_click: Callable[[str], None] | None = None,
                 on_brush: Callable[[dict[str, Any]], None] | None = None) -> None:
        import plotly.graph_objects as go  # type: ignore[import-untyped]

        self.widget = go.FigureWidget(layout={"template": TEMPLATE, "autosize": True, "height": 200})
        if css:
            self.widget.add_class(css)
        self.on_click = on_click
        self.on_brush = on_brush
        self.traces: list[dict[str, Any]] = []  # the trace specs on screen
        self.layout: dict[str, Any] = {}
        self.rebuilds = 0  # figures sent whole because their traces changed order (for tests and the bench)
        self.updates = 0  # traces updated in place
        self.changes = 0  # calls of show() that changed the figure
        self._lock = threading.RLock()
        self._settled: Any = None

    @property
    def uids(self) -> list[str]:
        return [t.get("uid", "") for t in self.traces]

    def show(self, spec: Mapping[str, Any]) -> None:
        """Make the widget show ``spec``, sending only the differences (see the module's doc)."""
        with self._lock:
            data = [dict(t) for t in spec.get("data", [])]
            layout = dict(spec.get("layout", {}))
            fig = self.widget
            steps = plan(self.uids, [t.get("uid", "") for t in data])
            if steps is not None:
                survivors = [t for i, t in enumerate(self.traces) if i not in steps[0]]
                if any(old.get("type") != new.get("type") for old, new in zip(survivors, data, strict=False)):
                    steps = None  # a uid now names another kind of trace
            sent = steps is None
            if steps is None:
                fig.data = ()
                fig.add_traces(data)
                self.rebuilds += 1
                self._watch(range(len(data)))
            else:
                drop, kept = steps
                if drop:
                    fig.data = tuple(t for i, t in enumerate(fig.data) if i not in drop)
                with fig.batch_update():
                    for i, (old, new) in enumerate(zip(survivors, data[:kept], strict=True)):
                        delta = changes(old, new)
                        if delta:
                            fig.data[i].update(delta, overwrite=True)
                            self.updates += 1
                            sent = True
                if len(data) > kept:
                    fig.add_traces(data[kept:])
                    self._watch(range(kept, len(data)))
                sent = sent or bool(drop) or len(data) > kept
            delta = changes(self.layout, layout)
            delta.pop("template", None)
            if delta:
                fig.update_layout(delta, overwrite=True)
            if sent or delta:
                self.changes += 1
            self.traces, self.layout = data, layout

    def settle(self) -> None:
        """Copy the figure on screen into the widget's synchronised state (what a notebook saved
        from the kernel side keeps); once per figure: call it when the sweep has ended."""
        with self._lock:
            if self.changes != self._settled:
                self._settled = self.changes
                self.widget._repr_mimebundle_()  # the display protocol: copies layout and data to the state

    # -- events from the page --------------------------------------------------------------------
    def _watch(self, indexes: range) -> None:
        for i in indexes:
            trace = self.widget.data[i]
            if trace.type == "parcoords":
                trace.on_change(self._brushed, "dimensions")
            else:
                trace.on_click(self._clicked)

    def _clicked(self, trace: Any, points: Any, _state: Any) -> None:
        if self.on_click is None or not points.point_inds:
            return
        task = task_of(trace, points.point_inds[0])
        if task:
            self.on_click(task)

    def _brushed(self, trace: Any, dimensions: Any) -> None:
        if self.on_brush is not None:
            self.on_brush({d.label: d.constraintrange for d in dimensions})


def task_of(trace: Any, index: int) -> str | None:
    """The task a point of ``trace`` shows: ``customdata[index][0]`` (points of many tasks), or the
    trace's ``meta["task"]`` (a task's curve)."""
    custom = trace.customdata
    if custom is not None and index < len(custom):
        item = custom[index]
        return str(item[0] if isinstance(item, (list, tuple, np.ndarray)) else item)
    meta = trace.meta
    if isinstance(meta, Mapping) and meta.get("task"):
        return str(meta["task"])
    return None
