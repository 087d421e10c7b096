"""The Status section: a bar split by state, rate and time left, per-source bars, and the task
grid: one page of tasks, filtered by state, source and parameter values, sorted by a click on a
column's header, each row with its opener, and an export of every task to CSV or Parquet.

Everything is read from the ledger in SQL (``Sweep.page``, ``Sweep.counts_by_source``),
so a refresh costs the same for 100 or 10,000 tasks: one GROUP BY and one page.  The only
thing kept between refreshes is the time-left estimator's memory of completion moments
(``EtaEstimator``): a smoothing of what is shown, not sweep state.
"""

from __future__ import annotations

import math
import re
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import ipywidgets as w
import pandas as pd

from ..core.model.errors import ConfigError
from ..core.model.state import JobState
from .html import BAR_ORDER, duration, esc, grid_rows, legend, state_bar
from .values import parse_values

PAGE_SIZE = 25

#: How ended tasks are named in the summary line, in the bar's order.
_ENDED_WORDS = (("COMPLETED", "completed"), ("PRUNED", "pruned"), ("FAILED", "failed"), ("CANCELLED", "cancelled"),
                ("LOST", "lost"))
#: Not ended and not running: in our queue, being submitted, or in a source's queue.
_WAITING = ("PENDING", "SUBMITTING", "QUEUED")


class EtaEstimator:
    """Tasks ended per minute, and a time-left estimate that reads steadily between refreshes.

    Why not ``elapsed / ended * remaining`` (what the panel showed before): between two
    completions ``elapsed`` grows while ``ended`` stands still, so that estimate climbs on
    every refresh (18 -> 23 -> 28 s) and falls at the next completion.  The choice here:

    1. **A rate anchored at completion moments.**  A sample ``(time, ended)`` is kept only
       when the number of ended tasks changes.  The rate is the tasks ended between an
       anchor sample and the latest one over the time between them; the anchor is the most
       recent sample at least ``window`` seconds *and* ``min_events`` tasks back (else the
       oldest kept): a sliding window that widens when tasks are slow.  Between two
       completions the rate stands still.  The moment observing began is never an anchor
       (the tasks running then started earlier, which would overstate the rate), and no
       rate is given before ``min_events`` tasks (a quarter of a small sweep, at least 2)
       ended after the first completion seen: two tasks of a batch ending half a second
       apart say nothing about the rate.
    2. **Time left, exponentially smoothed.**  The target is ``remaining / rate`` minus the
       time since the last completion (at least 0), so it counts down between completions.
       The shown value first counts down by the time passed, then moves toward the target
       by ``alpha = 1 - exp(-dt / smoothing)``: with a refresh a second and ``smoothing``
       20 s, a completion that moves the target by 20 % moves the shown value by 1 %.

    ``observe`` is fed ``time.monotonic()`` by the view; tests feed a made-up clock.
    Fewer ended tasks than before (tasks queued again) starts over.
    """

    def __init__(self, window: float = 120.0, min_events: int = 10, smoothing: float = 20.0):
        self.window, self.min_events, self.smoothing = window, min_events, smoothing
        self.reset()

    def reset(self) -> None:
        """Forget everything (the sweep stopped, or tasks were queued again)."""
        self._changes: deque[tuple[float, int]] = deque()
        self._last: tuple[float, int] | None = None
        self._rate: float | None = None
        self._eta: float | None = None
        self._eta_time = 0.0
        self._now = 0.0

    def observe(self, now: float, ended: int, remaining: int) -> None:
        """One refresh: ``ended`` tasks have ended and ``remaining`` have not, at time ``now`` (s)."""
        if self._last is not None and ended < self._last[1]:
            self.reset()
        if self._last is not None and ended != self._last[1]:
            self._changes.append((now, ended))
        self._last, self._now = (now, ended), now
        self._rate = self._anchored_rate(needed=min(self.min_events, max(2, (ended + remaining) // 4)))
        self._smooth(now, self._target(now, remaining))

    def _anchored_rate(self, needed: int) -> float | None:
        """Tasks per second between the anchor and the latest completion moment (see class
        doc), or None before ``needed`` tasks ended after the first completion moment."""
        if len(self._changes) < 2 or self._changes[-1][1] - self._changes[0][1] < needed:
            return None
        t_last, e_last = self._changes[-1]
        anchor = 0
        for i in range(len(self._changes) - 2, -1, -1):
            anchor = i
            t, e = self._changes[i]
            if t_last - t >= self.window and e_last - e >= self.min_events:
                break
        for _ in range(anchor):  # older samples can never be an anchor again
            self._changes.popleft()
        t0, e0 = self._changes[0]
        return (e_last - e0) / (t_last - t0) if t_last > t0 else None

    def _target(self, now: float, remaining: int) -> float | None:
        if remaining <= 0:
            return 0.0
        if not self._rate:
            return None
        return max(0.0, remaining / self._rate - (now - self._changes[-1][0]))

    def _smooth(self, now: float, target: float | None) -> None:
        if target is None or self._eta is None:
            self._eta = target
        else:
            dt = max(0.0, now - self._eta_time)
            predicted = max(0.0, self._eta - dt)
            self._eta = predicted + (1 - math.exp(-dt / self.smoothing)) * (target - predicted)
        self._eta_time = now

    @property
    def eta(self) -> float | None:
        """Seconds left (smoothed), or None while there is no rate yet."""
        return self._eta

    @property
    def per_minute(self) -> float | None:
        """Tasks ended per minute over the anchored window, or None while too few have ended."""
        return None if self._rate is None else 60 * self._rate

    @property
    def idle(self) -> float | None:
        """Seconds since the number of ended tasks last changed (None before any change)."""
        return self._now - self._changes[-1][0] if self._changes else None


def total_counts(by_source: Iterable[Mapping[str, int]]) -> dict[str, int]:
    """``counts_by_source().values()`` summed per state."""
    totals: dict[str, int] = {}
    for counts in by_source:
        for state, n in counts.items():
            totals[state] = totals.get(state, 0) + n
    return totals


def progress_sentence(counts: Mapping[str, int]) -> str:
    """``"12 of 20 ended: 10 completed, 1 failed, 1 cancelled · 4 running · 4 waiting"`` as
    HTML (the two numbers in ``hsm-done`` / ``hsm-total`` spans).  Says what ended how, so
    cancelled or failed work never reads as done."""
    total = sum(counts.values())
    ended = sum(counts.get(s, 0) for s, _ in _ENDED_WORDS)
    text = f"<span class='hsm-done'>{ended:,}</span> of <span class='hsm-total'>{total:,}</span> ended"
    how = [f"{counts[s]:,} {word}" for s, word in _ENDED_WORDS if counts.get(s)]
    if how:
        text += ": " + ", ".join(how)
    running = counts.get("RUNNING", 0)
    waiting = sum(counts.get(s, 0) for s in _WAITING)
    return text + (f" · {running:,} running" if running else "") + (f" · {waiting:,} waiting" if waiting else "")


def timing_sentence(elapsed: float | None, estimator: EtaEstimator | None, unended: int) -> str:
    """``"elapsed 1m20s · 9.5 ended/min · about 45s left"``; ``estimator`` is None when the
    sweep is not running (then no rate or time left is claimed)."""
    if elapsed is None and estimator is None:
        return "not started yet"
    parts = [f"elapsed {duration(elapsed)}"]
    if estimator is None:
        if unended:
            parts.append(f"not running ({unended:,} not ended)")
        return " · ".join(parts)
    rate, eta = estimator.per_minute, estimator.eta
    parts.append(f"{rate:.3g} ended/min" if rate is not None else "rate and time left: once a few tasks have ended")
    if eta is not None and eta < 1 and unended:
        parts.append(f"overdue: no task ended for {duration(estimator.idle)}")
    elif eta is not None and unended:
        parts.append(f"about {duration(eta)} left")
    return " · ".join(parts)


def source_rows(by_source: Mapping[str | None, Mapping[str, int]], names: Iterable[str], total: int) -> str:
    """One row per source: its tasks as a state bar drawn against the *whole* sweep's
    ``total`` (5 of 20 tasks fill a quarter), every source listed even before it has any."""
    order: list[str | None] = list(dict.fromkeys([*names, *sorted(k for k in by_source if k is not None)]))
    if None in by_source:
        order.append(None)
    rows = []
    for source in order:
        counts = by_source.get(source, {})
        n = sum(counts.values())
        label = source if source is not None else "(no source yet)"
        detail = ": " + ", ".join(f"{counts[s]:,} {s.lower()}" for s in BAR_ORDER if counts.get(s)) if n else ""
        rows.append(f"<tr class='hsm-source-row' data-source='{esc(label)}'><td>{esc(label)}</td>"
                    f"<td>{state_bar(counts, total, 'hsm-bar hsm-source-bar', width='160px')}</td>"
                    f"<td>{n:,} of {total:,} tasks{esc(detail)}</td></tr>")
    return "<table>" + "".join(rows) + "</table>"


#: ``name op value`` in a filter: the operator is the first of these found after the name.
_CONDITION = re.compile(r"^\s*([^<>=!]+?)\s*(==|<=|>=|!=|=|<|>)\s*(.*?)\s*$", re.S)


def parse_filter(text: str, names: Iterable[str] = ()) -> list[tuple[str, str, Any]]:
    """What is typed in the grid's filter: conditions separated by commas, ``lr<1e-3, opt=adam``,
    as ``[("lr", "<", 0.001), ("opt", "=", "adam")]`` (a value is read as in the Parameters form:
    ``1e-3`` is a number, ``adam`` text, ``'1'`` the text 1).  ``names``, when given, are the columns
    one may name; any other is refused in words with the names there are."""
    known = list(names)
    out: list[tuple[str, str, Any]] = []
    for part in _split(text):
        if not part:
            continue
        match = _CONDITION.match(part)
        if not match or not match.group(3):
            raise ConfigError(f"{part!r} is not a condition; write name, an operator (= != < <= > >=) and a value, "
                              "e.g. lr<1e-3, opt=adam", "filter")
        name, op, value_text = match.groups()
        if known and name not in known:
            raise ConfigError(f"no column {name!r}; filter on one of {', '.join(known)}", "filter")
        values = parse_values(value_text, "filter")
        if len(values) != 1:
            raise ConfigError(f"{part!r} compares with {len(values)} values; give one (quote text with a comma)",
                              "filter")
        out.append((name, "=" if op == "==" else op, values[0]))
    return out


def _split(text: str) -> list[str]:
    """``text`` cut at the commas outside brackets and quotes."""
    parts, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(text):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
    parts.append(text[start:].strip())
    return parts


class TaskGrid:
    """A page of tasks as one CSS grid: a header row whose cells are buttons (a click sorts by that
    column, a second click turns the order round), then per row its opener (›, a click calls
    ``on_open(task_id)``) followed by the row's cells, all items of the same grid.  A row's cells
    are one HTML widget shown ``display: contents``, so they join the grid beside their opener:
    an opener cannot drift from its row whatever the rows hold, and columns line up across rows.

    Data-agnostic: ``show(page)`` draws a page a caller read and sorted (``Sweep.page`` sorts in
    SQL; a frame sorted in pandas works the same); ``on_sort(column, ascending)`` asks the caller
    for the page again.  Only changed values reach the front end.
    """

    def __init__(self, on_sort: Callable[[str, bool], None], on_open: Callable[[str], None],
                 sort: str = "idx", ascending: bool = True, css: str = "hsm-task-grid"):
        self.sort, self.ascending = sort, ascending
        self.on_sort, self.on_open = on_sort, on_open
        self.corner = w.HTML("<div class='hsm-cell hsm-th hsm-corner'></div>")
        self.corner.add_class("hsm-grid-row")
        self.headers: list[w.Button] = []
        self.openers: list[w.Button] = []
        self.rows: list[w.HTML] = []
        self.columns: list[str] = []
        self.task_ids: list[str] = []
        self.widget = w.GridBox([self.corner], layout=w.Layout(grid_template_columns="28px"))
        for name in ("hsm-grid", css):
            self.widget.add_class(name)

    # -- what a person does ----------------------------------------------------------------------
    def click_header(self, column: str) -> None:
        """Sort by ``column``; the sorted column clicked again turns the order round."""
        if column == self.sort:
            self.ascending = not self.ascending
        else:
            self.sort, self.ascending = column, True
        self._label_headers()
        self.on_sort(self.sort, self.ascending)

    def open_row(self, row: int) -> None:
        """Open the task of the page's ``row``-th row."""
        self.on_open(self.task_ids[row])

    # -- drawing --------------------------------------------------------------------------------
    @property
    def value(self) -> str:
        """The grid's markup as the front end gets it (header labels, then the rows' cells)."""
        return "".join(f"<div class='hsm-th'>{esc(b.description)}</div>" for b in self.headers) + "".join(
            r.value for r in self.rows)

    def show(self, page: pd.DataFrame) -> None:
        """Draw ``page`` (one row per task, a ``task_id`` column for the openers)."""
        columns = list(page.columns)
        if columns != self.columns:
            self.columns = columns
            self._make_headers()
        _, rows = grid_rows(page)
        self.task_ids = list(page["task_id"]) if "task_id" in page.columns else [""] * len(rows)
        while len(self.rows) < len(rows):
            i = len(self.rows)
            opener = w.Button(description="›", tooltip="open in Job detail")
            opener.add_class("hsm-opener")
            opener.on_click(lambda _, i=i: self.open_row(i))
            row = w.HTML()
            row.add_class("hsm-grid-row")
            self.openers.append(opener)
            self.rows.append(row)
        del self.openers[len(rows):], self.rows[len(rows):]
        for opener, row, markup, tid in zip(self.openers, self.rows, rows, self.task_ids, strict=False):
            _set(row, "value", markup)
            _set(opener, "tooltip", f"open {tid} in Job detail")
        _set(self.widget.layout, "grid_template_columns", f"28px repeat({len(columns)}, auto)")
        children = (self.corner, *self.headers, *(x for pair in zip(self.openers, self.rows, strict=False)
                                                  for x in pair))
        if self.widget.children != children:
            self.widget.children = children

    def _make_headers(self) -> None:
        while len(self.headers) < len(self.columns):
            button = w.Button(tooltip="")
            button.add_class("hsm-sort")
            i = len(self.headers)
            button.on_click(lambda _, i=i: self.click_header(self.columns[i]))
            self.headers.append(button)
        del self.headers[len(self.columns):]
        self._label_headers()

    def _label_headers(self) -> None:
        for button, column in zip(self.headers, self.columns, strict=False):
            sorted_here = column == self.sort
            label = column + ((" ▲" if self.ascending else " ▼") if sorted_here else "")
            _set(button, "description", label)
            _set(button, "tooltip", f"sorted by {column}, {'ascending' if self.ascending else 'descending'}: "
                                    "click to turn round" if sorted_here else f"sort by {column}")


class StatusView:
    """The Status tab.  ``show(sweep)`` redraws it from the ledger; widgets change only when
    their value does, so an unchanged refresh sends nothing to the front end."""

    def __init__(self, on_query_change: Callable[[], None], on_open: Callable[[str], None] = lambda task_id: None,
                 report: Callable[[Exception], None] | None = None):
        self.bar = w.HTML()
        self.bar.add_class("hsm-state-bar")
        # Ended / total as numbers, for code and tests reading ``progress.value``; not shown
        # (one coloured bar cannot tell completed from cancelled: ``bar`` does that).
        self.progress = w.IntProgress(value=0, min=0, max=1, layout=w.Layout(display="none"))
        self.progress.add_class("hsm-progress")
        self.summary = w.HTML()
        self.summary.add_class("hsm-summary")
        self.per_source = w.HTML()
        self.per_source.add_class("hsm-per-source")
        self.estimator = EtaEstimator()
        fit = {"description_width": "initial"}
        self.state_filter = w.Dropdown(options=[("all states", "")] + [(s.value, s.value) for s in JobState],
                                       description="State", style=fit, layout=w.Layout(width="auto"))
        self.source_filter = w.Dropdown(options=[("all sources", "")], description="Source", style=fit,
                                        layout=w.Layout(width="auto"))
        self.where = w.Text(placeholder="e.g. lr<1e-3, opt=adam", description="Where", style=fit,
                            continuous_update=False, layout=w.Layout(width="320px"))
        self.where.add_class("hsm-where")
        self.export_path = w.Text(placeholder="results.csv or results.parquet", style=fit,
                                  layout=w.Layout(width="240px"))
        self.export_button = w.Button(description="Export", icon="download",
                                      tooltip="write every task (parameters, final metrics, state, source, times) "
                                              "to this file: CSV or Parquet, by its suffix")
        self.export_button.add_class("hsm-export")
        self.prev = w.Button(description="◀", layout=w.Layout(width="40px"))
        self.next = w.Button(description="▶", layout=w.Layout(width="40px"))
        self.page_label = w.HTML()
        self.grid = TaskGrid(on_sort=lambda column, ascending: self._query_changed(reset=True), on_open=on_open,
                             css="hsm-status-table")
        self.table = self.grid  # the grid's markup as ``table.value``, as before it was a grid
        self.page = 0
        self.page_size = PAGE_SIZE
        self.rows = None  # the DataFrame on screen
        self.metric: str | None = None  # the metric whose latest value the grid shows
        self._metric_names: set[str] = set()
        self._metrics_read = 0  # the last steps row whose metric name was read
        self._columns: list[str] = []  # what the filter may name
        self._params: list[str] = []
        self._report = report
        self._filter_problem: str | None = None  # the filter's problem last reported (said once)
        self._trials: dict[str, int] = {}  # a search's task id -> trial number, read when tasks were added
        self._trials_read = -1  # how many tasks the sweep had when they were read
        self._total = 0
        self._on_query_change = on_query_change
        for widget in (self.state_filter, self.source_filter, self.where):
            widget.observe(lambda _: self._query_changed(reset=True), "value")
        self.prev.on_click(lambda _: self._turn(-1))
        self.next.on_click(lambda _: self._turn(+1))
        self.widget = w.VBox([
            self.bar, self.progress, self.summary, self.per_source,
            w.HBox([self.state_filter, self.source_filter, self.where, self.export_path, self.export_button],
                   layout=w.Layout(flex_flow="row wrap")),
            self.grid.widget, w.HBox([self.prev, self.page_label, self.next]),
        ])

    def _turn(self, step: int) -> None:
        self.page = max(0, self.page + step)
        self._query_changed(reset=False)

    def _query_changed(self, reset: bool) -> None:
        if reset:
            self.page = 0
        self._on_query_change()

    def query(self) -> dict:
        """``Sweep.page``'s arguments for what the controls ask (a filter that cannot be read is a
        ConfigError naming the ``filter`` field)."""
        where = self._filter()
        return {"state": self.state_filter.value or None, "source": self.source_filter.value or None,
                "where": where, "sort": self.grid.sort, "ascending": self.grid.ascending,
                "offset": self.page * self.page_size, "limit": self.page_size, "metric": self.metric}

    def _filter(self) -> list[tuple[str, str, Any]]:
        """The filter's conditions; one that cannot be read is said once (or raised, without a
        ``report``), its field marked, and the grid shown unfiltered meanwhile."""
        try:
            where = parse_filter(self.where.value, self._columns)
        except ConfigError as exc:
            self.where.add_class("hsm-bad")
            if self._report is None:
                raise
            if str(exc) != self._filter_problem:
                self._filter_problem = str(exc)
                self._report(exc)
            return []
        self.where.remove_class("hsm-bad")
        self._filter_problem = None
        return where

    def set_choices(self, sources: list[str], params: list[str]) -> None:
        options = [("all sources", "")] + [(s, s) for s in sources]
        if list(self.source_filter.options) != options:
            self.source_filter.options = options
        self._params = params

    def show(self, sweep, search: bool = False) -> None:
        """Redraw progress, per-source bars and the current page from the ledger (of a search:
        with each task's trial number)."""
        by_source = sweep.counts_by_source()
        totals = total_counts(by_source.values())
        total = self._total = sum(totals.values())
        self.show_progress(sweep, totals)
        _set(self.per_source, "value", source_rows(by_source, [s.name for s in sweep.sources], total))
        if not self.export_path.value:
            self.export_path.value = f"{sweep.id}.csv"
        self.show_page(sweep, search)

    def show_progress(self, sweep, totals: Mapping[str, int]) -> None:
        """The state bar, the summary sentence, elapsed time, rate and time left, the legend."""
        total = sum(totals.values())
        ended = sum(n for s, n in totals.items() if JobState(s).is_terminal)
        _set(self.progress, "max", max(total, 1))
        _set(self.progress, "value", ended)
        _set(self.bar, "value", state_bar(totals, total))
        running = sweep.running
        if running:
            self.estimator.observe(time.monotonic(), ended, total - ended)
        else:
            self.estimator.reset()
        started, last_end = sweep.time_span()
        finished = ended == total and not running
        elapsed = ((last_end if finished and last_end else time.time()) - started) if started else None
        timing = timing_sentence(elapsed, self.estimator if running else None, total - ended)
        _set(self.summary, "value",
             f"<div class='hsm-lines'>{progress_sentence(totals)}<br><span class='hsm-timing'>{esc(timing)}</span>"
             f"<br>{legend(totals)}</div>")

    def _choose_metric(self, sweep) -> None:
        """The metric shown beside each task's latest step: the objective's, else the first name (in
        order) of those the tasks log as steps (read incrementally: new names only)."""
        if sweep.objective:
            self.metric = sweep.objective[0]
            return
        names, self._metrics_read = sweep.metric_names(self._metrics_read)
        self._metric_names |= names
        self.metric = min(self._metric_names) if self._metric_names else None

    def show_page(self, sweep, search: bool = False) -> None:
        """The grid page the filters, the sorted column and the page buttons ask for."""
        self._choose_metric(sweep)
        self._columns = ["task_id", *(["trial"] if search else []), "state", "source", "attempt", "exit_code",
                         "duration_s", *(["step", self.metric] if self.metric else []), *self._params]
        page, matching = sweep.page(**self.query())
        pages = max(1, -(-matching // self.page_size))
        if self.page >= pages:
            self.page = pages - 1
            page, matching = sweep.page(**self.query())
        if search or "trial" in page.columns:
            page = self._with_trials(sweep, page)
        if self.grid.sort not in page.columns and self.grid.sort != "idx":
            self.grid.sort, self.grid.ascending = "idx", True  # its column is gone (a metric no longer shown)
        self.rows = page
        self.grid.show(page)
        _set(self.page_label, "value", f"page {self.page + 1}/{pages} · {matching:,} tasks")
        self.prev.disabled = self.page == 0
        self.next.disabled = self.page >= pages - 1

    def _with_trials(self, sweep, page: pd.DataFrame) -> pd.DataFrame:
        """A search's page with each task's trial number (Optuna's) right after its task id.  The
        numbers come with the page when the ledger's page has them; else from ``status()``, read
        again only when the sweep has more tasks than at the last reading (a trial's number never
        changes), so the cost stays off the refreshes where nothing was added."""
        if page.empty or "task_id" not in page.columns:
            return page
        if "trial" not in page.columns:
            if any(t not in self._trials for t in page["task_id"]) and self._trials_read != self._total:
                self._trials_read = self._total
                status = sweep.status()
                if "trial" in status.columns:
                    self._trials = {tid: int(n) for tid, n in zip(status["task_id"], status["trial"], strict=False)
                                    if not pd.isna(n)}
            page = page.assign(trial=pd.array([self._trials.get(t) for t in page["task_id"]], dtype="Int64"))
        first = ["task_id", "trial"]
        return page[first + [c for c in page.columns if c not in first]]


def _set(widget: Any, name: str, value: Any) -> None:
    """Assign only on change: an unchanged value costs no message to the front end."""
    if getattr(widget, name) != value:
        setattr(widget, name, value)
