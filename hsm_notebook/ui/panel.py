"""``SweepPanel``: the notebook view of a sweep.  A thin view: it owns no sweep state.

Every button is one call in the Python API (``Sweep(...).start()``, ``cancel()``,
``retry_failed()``, ``complete()``); every number shown is read from the ledger.
A refresh thread (not a task on the kernel's loop, which freezes while a cell runs
blocking code) updates the widgets at most ``1 / refresh_interval`` times a second,
and only when the ledger changed, so a 10,000-task sweep does not flood the front end.
"""

from __future__ import annotations

import html
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ipywidgets as w

from ..core.base.source import ComputeSource
from ..core.model.errors import HsmError
from ..core.model.state import RERUNNABLE, JobState
from ..core.spec.search import Search
from ..core.sweep import Sweep, sources_health
from ..sources import LocalComputeSource
from .detail_view import DetailView
from .html import CSS, path_html
from .params_editor import ParamsEditor
from .results_view import ResultsView
from .search_form import describe
from .search_view import SearchView
from .sources_view import SourcesView
from .status_view import StatusView

TABS = ("Sources", "Parameters", "Status", "Job detail", "Results")


class SweepPanel:
    """Launch, watch and collect a sweep from widgets.

    ``SweepPanel()`` starts from an empty form; ``SweepPanel(sweep)`` (or ``sweep.panel()``)
    shows an existing sweep; ``SweepPanel.attach(dir)`` reopens one after a kernel restart.
    """

    def __init__(
        self,
        sweep: Sweep | None = None,
        *,
        sources: Sequence[ComputeSource] | None = None,
        refresh_interval: float = 0.5,
        directory: str | Path | None = None,
        options: Mapping[str, Any] | None = None,
    ):
        self.sweep = sweep
        self.directory = directory
        #: ``Sweep`` arguments the form does not show (a sweep file's and its project's:
        #: ``arg_style``, ``env``, ``name``, ``metadata``, ...), used by Launch.
        self.options = dict(options or {})
        self.refresh_interval = refresh_interval
        self._lock = threading.RLock()
        self._version: Any = None
        self._results_version: Any = None
        self._stop = threading.Event()
        self.refreshes = 0
        self._shown_error: BaseException | None = None
        self._search = False  # the sweep shown is a search (its record says so; read once when bound)

        self.header = w.HTML()
        self.message = w.HTML()
        self.message.add_class("hsm-message")
        self.launch_button = self._button("Launch", "play", "success", "hsm-launch", self.launch)
        self.cancel_button = self._button("Cancel", "stop", "danger", "hsm-cancel", self.cancel)
        self.retry_button = self._button("Retry failed", "redo", "warning", "hsm-retry", self.retry_failed)
        self.complete_button = self._button("Complete missing", "forward", "", "hsm-complete", self.complete)

        self.editor = ParamsEditor(on_change=self._update_buttons)
        if sweep is None and self.options.get("objective"):
            self.editor.set_objective(self.options["objective"])  # a sweep file's, shown and editable
        chosen = list(sweep.sources) if sweep else (list(sources) if sources is not None else [LocalComputeSource()])
        self.sources_view = SourcesView(chosen, report=self.show_error)
        self.health_button = self._button("Check health", "heartbeat", "", "hsm-health", self.check_health)
        sv = self.sources_view
        sv.drain_button.on_click(lambda _: self._guarded(lambda: self._need_sweep().drain(sv.control.value)))
        sv.disable_button.on_click(lambda _: self._guarded(lambda: self._need_sweep().disable(sv.control.value)))
        sv.enable_button.on_click(lambda _: self._guarded(lambda: self._need_sweep().enable(sv.control.value)))
        self.status_view = StatusView(on_query_change=lambda: self._guarded(self.refresh, True),
                                      on_open=lambda task_id: self._guarded(self.open_task, task_id),
                                      report=self.show_error)
        self.status_view.export_button.on_click(lambda _: self._guarded(self.export))
        self.detail_view = DetailView()
        self.detail_view.task.observe(lambda _: self._guarded(self._show_detail), "value")
        self.detail_view.lines.observe(lambda _: self._guarded(self._show_detail), "value")
        self.results_view = ResultsView()
        self.results_view.on_open = lambda task_id: self._guarded(self.open_task, task_id)
        self.search_view = SearchView()  # a search's history, importances, Pareto front (hidden for a grid)

        self.tabs = w.Tab(children=[
            w.VBox([self.sources_view.widget, self.health_button]), self.editor.widget,
            self.status_view.widget, self.detail_view.widget,
            w.VBox([self.search_view.widget, self.results_view.widget]),
        ])
        for i, title in enumerate(TABS):
            self.tabs.set_title(i, title)
        self.tabs.observe(lambda _: self._guarded(self.refresh, True), "selected_index")
        buttons = w.HBox([self.launch_button, self.cancel_button, self.retry_button, self.complete_button])
        #: the sweep's tags (``sweep.tag``), shown and edited beside its name once a sweep is bound
        self.tags = w.TagsInput(value=[], allow_duplicates=False, placeholder="add a tag",
                                tooltip="the sweep's tags (sweep.tag): shown in %hsm's list of sweeps",
                                layout=w.Layout(display="none"))
        self.tags.add_class("hsm-tags")
        self.tags.observe(lambda change: self._guarded(self._tags_changed, change), "value")
        self._showing_tags = False  # True while the panel itself sets the tags shown
        self.widget = w.VBox([w.HTML(CSS), w.HBox([self.header, self.tags], layout=w.Layout(align_items="center")),
                              buttons, self.message, self.tabs])
        self.widget.add_class("hsm-panel")
        if sweep is not None:
            self._bind(sweep)
        else:
            self.tabs.selected_index = 1
            about = self.options.get("metadata", {}).get("description")
            self.header.value = f"<b>New sweep</b> · {html.escape(str(about))}" if about else ""
        self._guarded(self.refresh, True)
        self._thread = threading.Thread(target=self._refresh_loop, name="hsm-panel-refresh", daemon=True)
        self._thread.start()

    @classmethod
    def attach(cls, directory: str | Path, sources: Sequence[ComputeSource] | None = None, **kwargs: Any) -> SweepPanel:
        """The panel of an existing sweep directory, resumed (after a kernel restart)."""
        return cls(Sweep.attach(directory, sources), **kwargs)

    # -- display ----------------------------------------------------------------------
    def _repr_mimebundle_(self, **kwargs: Any):
        """The live widget; a saved notebook without widget state shows the text summary instead of
        the widgets' raw repr."""
        bundle = self.widget._repr_mimebundle_(**kwargs)
        if isinstance(bundle, dict):
            bundle["text/plain"] = self.summary()
        return bundle

    def summary(self) -> str:
        """The sweep in a few plain lines: what a saved notebook shows where the panel was."""
        sweep = self.sweep
        if sweep is None:
            return "hsm_notebook panel (no sweep launched)"
        counts = sweep.counts()
        total = sum(counts.values())
        tags = sweep.tags
        lines = [f"hsm_notebook sweep {sweep.id}: {total} tasks in {sweep.directory}"
                 + (f" (tags: {', '.join(tags)})" if tags else ""),
                 "  " + ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items()))]
        if sweep.objective:
            metric, minimize = sweep.objective
            try:
                best = sweep.best(1)
            except HsmError:
                best = None
            if best is not None and len(best):
                lines.append(f"  best {metric} ({'min' if minimize else 'max'}): {best.iloc[0][metric]:.6g} "
                             f"(task {best.iloc[0]['task_id']})")
        lines.append(f"  after a kernel restart: %load_ext hsm_notebook, then %hsm {sweep.directory} reopens it "
                     "(%hsm alone lists recent sweeps)")
        return "\n".join(lines)

    def show_recent(self, roots: Sequence[Any] | None = None) -> None:
        """List recent sweeps above the tabs; Open binds this panel to the chosen one (resumed)."""
        from .recent import RecentSweeps, open_sweep

        def open_(folder: Any) -> None:
            def bind() -> None:
                sweep = open_sweep(folder)  # shown; resumed only if it was launched before
                self.sources_view.sources = list(sweep.sources)
                self._bind(sweep)
                self.recent.close()
                self.widget.children = tuple(c for c in self.widget.children if c is not self.recent)
                self.say(f"Opened {folder}.")
            self._guarded(bind)

        self.recent = RecentSweeps(open_, roots).widget
        children = list(self.widget.children)
        children.insert(children.index(self.tabs), self.recent)
        self.widget.children = tuple(children)

    def close(self) -> None:
        """Stop refreshing and close the widgets (the sweep itself goes on)."""
        self._stop.set()
        self.search_view.close()
        self.widget.close()

    # -- actions (each one call in the Python API) ----------------------------------------
    def launch(self) -> None:
        if self.sweep is not None and self.sweep.running:
            self.say("Already running: the tasks are on their way (Status shows them).")
            return
        made: Any = None
        if self.sweep is None:
            made = self.editor.check()  # a ParameterSpace, or a Search (with its objective checked)
            options = {**self.options, "space": made, "command": self._command(),
                       "sources": self.sources_view.sources, "objective": self.editor.objective()}
            options["workdir"] = self.editor.workdir.value.strip() or options.get("workdir")
            if self.directory is not None:
                options["directory"] = self.directory
            self._bind(Sweep(**options))
        sweep = self._need_sweep()
        pending = sweep.counts().get(JobState.PENDING, 0)
        sweep.start()
        self.tabs.selected_index = 2
        if self._search:
            what = describe(made) if isinstance(made, Search) else "the search"
            self.say(f"Launched {what}: a trial starts whenever a slot frees; Results shows them as they end.")
        else:
            self.say(f"Launched {pending} tasks.")

    def cancel(self) -> None:
        n = self._need_sweep().cancel()
        self.say(f"Cancelled {n} task(s).")

    def retry_failed(self) -> None:
        self._need_sweep().retry_failed()
        self.say("Failed and lost tasks are queued again.")

    def complete(self) -> None:
        self._need_sweep().complete()
        self.say("Missing, failed, cancelled and lost tasks are queued again.")

    def check_health(self) -> None:
        """Ask each source in the form for its health, each in its own thread (a slow host holds up
        neither the panel nor the others); each answer is shown as it arrives."""
        def ask(source: ComputeSource) -> None:
            def show() -> None:
                self.sources_view.health.update(sources_health([source]))
                self.sources_view.render()
            self._guarded(show)

        for source in self.sources_view.sources:
            threading.Thread(target=ask, args=(source,), name=f"hsm-health-{source.name}", daemon=True).start()

    # -- plumbing -------------------------------------------------------------------------
    def _need_sweep(self) -> Sweep:
        if self.sweep is None:
            raise HsmError("nothing launched yet: fill in Parameters and press Launch")
        return self.sweep

    def _bind(self, sweep: Sweep) -> None:
        self.sweep = sweep
        record = sweep.record
        self._search = bool(record.get("search"))
        self.editor.show_space(record.get("space", {}), sweep.template.command, sweep.objectives or None,
                               search=record.get("search"))
        self.sources_view.lock()
        about = sweep.metadata.get("description")
        self.header.value = (f"<b>Sweep {html.escape(sweep.id)}</b> · {path_html(sweep.directory)}"
                             + (f" · {html.escape(str(about))}" if about else "") + " · tags:")
        self._show_tags(sweep.tags)
        self.tabs.selected_index = 2

    def _button(self, label: str, icon: str, style: str, css: str, action) -> w.Button:
        button = w.Button(description=label, icon=icon, button_style=style)
        button.add_class(css)
        button.on_click(lambda _: self._guarded(action))
        return button

    def _guarded(self, action, *args: Any) -> None:
        """The UI boundary: whatever goes wrong is shown in the panel, in words."""
        try:
            action(*args)
        except Exception as exc:  # noqa: BLE001 - never let an error kill the panel
            self.show_error(exc)
        finally:
            try:
                self._update_buttons()
            except Exception as exc:  # noqa: BLE001
                self.show_error(exc)

    def say(self, text: str) -> None:
        self.message.value = f"<span style='color:#264'>{html.escape(text)}</span>"

    def show_error(self, exc: BaseException) -> None:
        text = str(exc) if isinstance(exc, HsmError) else f"{type(exc).__name__}: {exc}"
        self.message.value = f"<span class='hsm-error' style='color:#b00'>⚠ {html.escape(text)}</span>"

    def _update_buttons(self) -> None:
        if self.sweep is None:
            try:
                self.editor.check()
                ok = bool(self.sources_view.sources)
            except HsmError:
                ok = False
            self.launch_button.disabled = not ok
            self.launch_button.description = self.editor.launch_label()
            for b in (self.cancel_button, self.retry_button, self.complete_button):
                b.disabled = True
            return
        counts = self.sweep.counts()
        running = self.sweep.running
        if self._search:  # its trials are asked for as it runs: Launch resumes a search not over yet
            self.launch_button.disabled = running or self.sweep.done
            self.launch_button.description = ("Launch" if running or self.sweep.done else
                                              "Resume search" if self.sweep.launched else "Launch search")
        else:
            self.launch_button.disabled = running or not counts.get(JobState.PENDING, 0)
            self.launch_button.description = self.editor.launch_label(counts.get(JobState.PENDING, 0))
        self.cancel_button.disabled = not running
        self.retry_button.disabled = not (counts.get(JobState.FAILED, 0) + counts.get(JobState.LOST, 0))
        self.complete_button.disabled = running or not sum(counts.get(s, 0) for s in RERUNNABLE)

    def refresh(self, force: bool = False) -> None:
        """Bring every section up to date with the ledger (cheap when nothing changed)."""
        with self._lock:
            if self.sweep is None:
                return
            error = self.sweep.error
            if error is not None and error is not self._shown_error:
                self._shown_error = error
                self.show_error(error)
                self._update_buttons()
            version = (self.sweep.store_version(), self.sweep.running)
            if not force and version == self._version:
                if self._search and self.tabs.selected_index == 4 and self.search_view.stale and self._show_search():
                    self.results_view.redraw()  # trials the study was told of after the ledger's last change
                return
            self._version = version
            sweep = self.sweep
            names = list(sweep.param_names)
            self.status_view.set_choices([s.name for s in sweep.sources], names)
            self.status_view.show(sweep, search=self._search)
            if self.status_view.rows is not None and not self.status_view.rows.empty:
                self.detail_view.set_choices(list(self.status_view.rows["task_id"]))
            if self.tabs.selected_index == 4 and (force or version[0] != self._results_version):
                self._results_version = version[0]
                if self._search:
                    self._show_search()
                self.results_view.show(sweep)
            if self.tabs.selected_index == 3:
                self._show_detail()
            if self.tabs.selected_index == 0 and sweep.started:
                self.sources_view.render_stats(sweep.sources_status())
            self.refreshes += 1
            self._update_buttons()

    def _show_search(self) -> bool:
        """The search's part of Results (cheap unless trials ended since the last call); the prune
        steps it read go to the curves.  True when those changed (the curves are to be redrawn)."""
        self.search_view.show(self.sweep)
        steps = self.search_view.prune_steps
        if steps == self.results_view.prune_steps:
            return False
        self.results_view.prune_steps = steps
        return True

    def _command(self) -> Any:
        """The form's command: a function of the notebook when its name is one (``train``), else a
        command line (``python train.py``)."""
        text = self.editor.command.value.strip()
        if text.isidentifier():
            fn = _user_namespace().get(text)
            if callable(fn):
                return fn
            if fn is None and " " not in text and not _on_path(text):
                raise HsmError(f"{text!r} is neither a function defined in this notebook nor a program on PATH; "
                               "define the function first (run its cell), or type a command such as 'python train.py'")
        return self.editor.command_argv()

    def export(self) -> None:
        """The Status tab's Export: ``sweep.export(path)`` to the path in its field."""
        path = self._need_sweep().export(self.status_view.export_path.value.strip())
        self.say(f"Wrote every task of the sweep to {path}.")

    def _show_tags(self, tags: list[str]) -> None:
        self._showing_tags = True
        try:
            self.tags.value = list(tags)
            self.tags.layout.display = ""
        finally:
            self._showing_tags = False

    def _tags_changed(self, change: Any) -> None:
        """Tags typed or removed in the header: ``sweep.tag`` / ``sweep.untag`` (a word that is no tag
        is refused in the message line and taken off again)."""
        if self._showing_tags or self.sweep is None:
            return
        old, new = list(change["old"]), list(change["new"])
        try:
            self.sweep.untag(*[t for t in old if t not in new])
            self.sweep.tag(*[t for t in new if t not in old])
        finally:
            self._show_tags(self.sweep.tags)

    def open_task(self, task_id: str) -> None:
        """Show ``task_id`` in Job detail (a row opened in Status or Results)."""
        self.detail_view.task.value = task_id
        self.tabs.selected_index = 3

    def _show_detail(self) -> None:
        if self.sweep is not None:
            self.detail_view.show(self.sweep)

    def _refresh_loop(self) -> None:
        last_forced = 0.0
        while not self._stop.wait(self.refresh_interval):
            try:
                now = time.monotonic()
                force = self.sweep is not None and self.sweep.running and now - last_forced > 1.0
                if force:
                    last_forced = now  # once a second while running, for the elapsed time
                self.refresh(force)
            except Exception as exc:  # noqa: BLE001 - the refresher must outlive any one error
                self.show_error(exc)


def _user_namespace() -> dict:
    """The notebook's variables (IPython's user namespace), or {} outside IPython."""
    try:
        from IPython import get_ipython
    except ImportError:
        return {}
    shell = get_ipython()
    return dict(shell.user_ns) if shell is not None else {}


def _on_path(program: str) -> bool:
    import shutil

    return shutil.which(program) is not None
