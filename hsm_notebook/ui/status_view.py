"""The Status section: progress, per-source counts, and a paged, filterable table.

Everything is read from the ledger in SQL (``Sweep.page``, ``Sweep.counts_by_source``),
so a refresh costs the same for 100 or 10,000 tasks: one GROUP BY and one page.
"""

from __future__ import annotations

import time
from typing import Callable

import ipywidgets as w

from ..core.state import JobState
from .html import duration, esc, table

PAGE_SIZE = 25


class StatusView:
    def __init__(self, on_query_change: Callable[[], None]):
        self.progress = w.IntProgress(value=0, min=0, max=1, description="Progress", bar_style="info",
                                      layout=w.Layout(width="60%"))
        self.progress.add_class("hsm-progress")
        self.summary = w.HTML()
        self.summary.add_class("hsm-summary")
        self.per_source = w.HTML()
        self.per_source.add_class("hsm-per-source")
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
            w.HBox([self.progress, self.summary]), self.per_source,
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
        by_source = sweep.counts_by_source()
        totals: dict[str, int] = {}
        for counts in by_source.values():
            for state, n in counts.items():
                totals[state] = totals.get(state, 0) + n
        total = sum(totals.values())
        done = sum(n for s, n in totals.items() if JobState(s).is_terminal)
        failed = sum(totals.get(s, 0) for s in ("FAILED", "LOST"))
        _set(self.progress, "max", max(total, 1))
        _set(self.progress, "value", done)
        _set(self.progress, "bar_style", "danger" if failed else ("success" if done == total else "info"))
        started, ended = sweep.time_span()
        finished = done == total and not sweep.running
        elapsed = ((ended if finished and ended else time.time()) - started) if started else None
        eta = None
        if elapsed and done and done < total:
            eta = elapsed / done * (total - done)
        pct = 100 * done / total if total else 0
        counts_text = " · ".join(f"{s} {n}" for s, n in sorted(totals.items()))
        _set(self.summary, "value",
             f"<span class='hsm-done'>{done}</span>/<span class='hsm-total'>{total}</span> done "
             f"({pct:.0f}%) · elapsed {duration(elapsed)} · left {duration(eta) if eta else '–'}<br>{esc(counts_text)}")
        rows = []
        for source, counts in sorted(by_source.items(), key=lambda kv: (kv[0] is None, kv[0] or "")):
            n = sum(counts.values())
            d = sum(v for s, v in counts.items() if JobState(s).is_terminal)
            bar = f"<progress value='{d}' max='{n}' style='width:120px'></progress>"
            rows.append(f"<tr><td>{esc(source or '(not started)')}</td><td>{bar} {d}/{n}</td>"
                        f"<td>{esc(' · '.join(f'{s} {v}' for s, v in sorted(counts.items())))}</td></tr>")
        _set(self.per_source, "value", "<table>" + "".join(rows) + "</table>")
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
