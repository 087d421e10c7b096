"""The Status section: a bar split by state, rate and time left, per-source bars, and a
paged, filterable table.

Everything is read from the ledger in SQL (``Sweep.page``, ``Sweep.counts_by_source``),
so a refresh costs the same for 100 or 10,000 tasks: one GROUP BY and one page.  The only
thing kept between refreshes is the time-left estimator's memory of completion moments
(``EtaEstimator``): a smoothing of what is shown, not sweep state.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping

import ipywidgets as w

from ..core.model.state import JobState
from .html import BAR_ORDER, duration, esc, legend, state_bar, table

PAGE_SIZE = 25

#: How ended tasks are named in the summary line, in the bar's order.
_ENDED_WORDS = (("COMPLETED", "completed"), ("FAILED", "failed"), ("CANCELLED", "cancelled"), ("LOST", "lost"))
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


class StatusView:
    """The Status tab.  ``show(sweep)`` redraws it from the ledger; widgets change only when
    their value does, so an unchanged refresh sends nothing to the front end."""

    def __init__(self, on_query_change: Callable[[], None]):
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
        self.state_filter = w.Dropdown(options=[("all states", "")] + [(s.value, s.value) for s in JobState],
                                       description="State", layout=w.Layout(width="200px"))
        self.source_filter = w.Dropdown(options=[("all sources", "")], description="Source",
                                        layout=w.Layout(width="220px"))
        self.sort = w.Dropdown(options=["idx"], value="idx", description="Sort by", layout=w.Layout(width="220px"))
        self.descending = w.ToggleButton(value=False, description="desc", layout=w.Layout(width="60px"))
        self.prev = w.Button(description="◀", layout=w.Layout(width="40px"))
        self.next = w.Button(description="▶", layout=w.Layout(width="40px"))
        self.page_label = w.HTML()
        self.table = w.HTML()
        self.table.add_class("hsm-table-box")
        self.page = 0
        self.page_size = PAGE_SIZE
        self.rows = None  # the DataFrame on screen
        self._on_query_change = on_query_change
        for widget in (self.state_filter, self.source_filter, self.sort, self.descending):
            widget.observe(lambda _: self._query_changed(reset=True), "value")
        self.prev.on_click(lambda _: self._turn(-1))
        self.next.on_click(lambda _: self._turn(+1))
        self.widget = w.VBox([
            self.bar, self.progress, self.summary, self.per_source,
            w.HBox([self.state_filter, self.source_filter, self.sort, self.descending]),
            self.table, w.HBox([self.prev, self.page_label, self.next]),
        ])

    def _turn(self, step: int) -> None:
        self.page = max(0, self.page + step)
        self._query_changed(reset=False)

    def _query_changed(self, reset: bool) -> None:
        if reset:
            self.page = 0
        self._on_query_change()

    def query(self) -> dict:
        return {"state": self.state_filter.value or None, "source": self.source_filter.value or None,
                "sort": self.sort.value, "ascending": not self.descending.value,
                "offset": self.page * self.page_size, "limit": self.page_size}

    def set_choices(self, sources: list[str], params: list[str]) -> None:
        options = [("all sources", "")] + [(s, s) for s in sources]
        if list(self.source_filter.options) != options:
            self.source_filter.options = options
        sorts = ["idx", "state", "source", "start_time", "end_time", "exit_code", *params]
        if list(self.sort.options) != sorts:
            self.sort.options = sorts

    def show(self, sweep) -> None:
        """Redraw progress, per-source bars and the current page from the ledger."""
        by_source = sweep.counts_by_source()
        totals = total_counts(by_source.values())
        total = sum(totals.values())
        self.show_progress(sweep, totals)
        _set(self.per_source, "value", source_rows(by_source, [s.name for s in sweep.sources], total))
        self.show_page(sweep)

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

    def show_page(self, sweep) -> None:
        """The table page the filters, sort and page buttons ask for."""
        page, matching = sweep.page(**self.query())
        pages = max(1, -(-matching // self.page_size))
        if self.page >= pages:
            self.page = pages - 1
            page, matching = sweep.page(**self.query())
        self.rows = page
        _set(self.table, "value", table(page, "hsm-table"))
        _set(self.page_label, "value", f"page {self.page + 1}/{pages} · {matching:,} tasks")
        self.prev.disabled = self.page == 0
        self.next.disabled = self.page >= pages - 1


def _set(widget: w.Widget, name: str, value) -> None:
    """Assign only on change: an unchanged value costs no message to the front end."""
    if getattr(widget, name) != value:
        setattr(widget, name, value)
