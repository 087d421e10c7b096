"""What a search adds to Results: a summary line (trials ended, by how, the best so far) and the
study's trials, read again only when trials ended.

The search's charts are the Results views (``results_view.py`` over ``charts/``): "over time"
draws the history by trial with the best so far and each pruned trial where it stopped,
"importance" ranks the parameters with Optuna's evaluator on the study, and with several objective
metrics "Pareto front" draws the front.  The prune steps read here mark the pruned curves.

Refresh cost: the study's trials are read again only when the number of ended trials in the
ledger changed (Optuna's storage keeps finished trials cached, so a reading costs the trials
still running).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import ipywidgets as w

from ..core.model.errors import HsmError
from ..core.model.state import JobState
from .charts.axes import params_label
from .html import esc

#: A lagging study (the ledger has ended trials it was not told of yet) is read at most this often.
REREAD_EVERY = 1.0
#: Optuna's names of a trial's ends, as this view groups them.
COMPLETE, PRUNED, FAIL = "COMPLETE", "PRUNED", "FAIL"

Point = tuple[float, float]


# -- data: pure functions ---------------------------------------------------------------------
@dataclass(frozen=True)
class Trial:
    """What the view needs of one of the study's trials."""

    number: int
    state: str  # Optuna's TrialState name: COMPLETE, PRUNED, FAIL, RUNNING, WAITING
    values: tuple[float, ...] | None
    params: Mapping[str, Any]
    last_step: int | None  # the last step reported (a pruned trial: where it was pruned)

    @property
    def finished(self) -> bool:
        return self.state in (COMPLETE, PRUNED, FAIL)


def trials_of(frozen: Iterable[Any]) -> list[Trial]:
    """Optuna's ``FrozenTrial`` objects (``study.get_trials()``) as :class:`Trial`, by number."""
    out = []
    for t in frozen:
        values = tuple(float(v) for v in t.values) if t.values is not None else None
        out.append(Trial(int(t.number), t.state.name, values, dict(t.params), t.last_step))
    return sorted(out, key=lambda t: t.number)


def _value(t: Trial, index: int) -> float | None:
    if not t.values or index >= len(t.values) or not math.isfinite(t.values[index]):
        return None
    return t.values[index]


def _params_text(params: Mapping[str, Any]) -> str:
    return params_label(params)


def best_trial(trials: Sequence[Trial], minimize: bool, index: int = 0) -> tuple[Trial, float] | None:
    """The completed trial with the best value of the ``index``-th metric (the first of ties)."""
    scored = [(t, v) for t in trials if t.state == COMPLETE and (v := _value(t, index)) is not None]
    if not scored:
        return None
    return min(scored, key=lambda tv: (tv[1] if minimize else -tv[1], tv[0].number))


def counts(trials: Sequence[Trial]) -> dict[str, int]:
    """Trials per Optuna state name."""
    out: dict[str, int] = {}
    for t in trials:
        out[t.state] = out.get(t.state, 0) + 1
    return out


def varying(trials: Sequence[Trial]) -> list[str]:
    """The parameters that took more than one value among ``trials`` (in first-seen order)."""
    names = list(dict.fromkeys(n for t in trials for n in t.params))
    return [n for n in names if len({repr(t.params.get(n, "<absent>")) for t in trials}) > 1]


def prune_steps(trials: Sequence[Trial]) -> dict[int, float]:
    """``{trial number: step}`` of the pruned trials: the last step reported, where each stopped."""
    return {t.number: float(t.last_step) for t in trials if t.state == PRUNED and t.last_step is not None}


class SearchView:
    """The search part of the Results tab (hidden for a grid): its summary line.  ``show(sweep)`` is
    cheap when no trial ended since the last call."""

    def __init__(self) -> None:
        self.summary = w.HTML()
        self.summary.add_class("hsm-search-summary")
        self.widget = w.VBox([self.summary], layout=w.Layout(display="none"))
        self.widget.add_class("hsm-search-view")
        self.sweep: Any = None
        self.trials: list[Trial] = []
        self._ended = -1  # ended tasks in the ledger at the last reading of the study
        self._read_at = 0.0

    @property
    def prune_steps(self) -> dict[int, float]:
        """``{trial number: step}`` where each pruned trial was stopped (for the curves)."""
        return prune_steps(self.trials)

    @property
    def stale(self) -> bool:
        """The ledger had ended trials that the study had not been told of at the last reading
        (the controller tells it just after): ``show`` should be called again even if the ledger
        does not change."""
        return self.sweep is not None and sum(1 for t in self.trials if t.finished) < self._ended

    def close(self) -> None:
        """Nothing runs in the background (kept for the panel, which closes its views)."""

    def show(self, sweep: Any) -> None:
        """Read the study again if trials ended since the last reading, and redraw the summary."""
        if sweep is not self.sweep:
            self.sweep, self.trials, self._ended, self._read_at = sweep, [], -1, 0.0
        if self.widget.layout.display != "":
            self.widget.layout.display = ""
        ended = sum(n for s, n in sweep.counts().items() if JobState(s).is_terminal)
        told = sum(1 for t in self.trials if t.finished)
        lagging = told < ended and time.monotonic() - self._read_at >= REREAD_EVERY
        if ended == self._ended and not lagging:
            return
        try:
            study = sweep.study
            self.trials = trials_of(study.get_trials(deepcopy=False))
        except HsmError as exc:  # not started yet: no study in the folder
            self.summary.value = f"<i>{esc(str(exc))}</i>"
            return
        self._ended, self._read_at = ended, time.monotonic()
        self._draw(sweep)

    def _draw(self, sweep: Any) -> None:
        objectives = sweep.objectives
        metric, direction = next(iter(objectives.items()))
        minimize = direction == "min"
        n = counts(self.trials)
        ended = sum(n.get(s, 0) for s in (COMPLETE, PRUNED, FAIL))
        budget = sweep.search.n_trials if sweep.search is not None else None
        words = [f"{n[s]:,} {w}" for s, w in ((COMPLETE, "completed"), (PRUNED, "pruned"), (FAIL, "failed"))
                 if n.get(s)]
        text = (f"<b>{ended:,}</b> trial{'s' if ended != 1 else ''} ended" + (f" of {budget:,}" if budget else "")
                + (f" ({esc(', '.join(words))})" if words else "")
                + (f" · {n['RUNNING']:,} running" if n.get("RUNNING") else ""))
        best = best_trial(self.trials, minimize)
        if best is not None:
            t, v = best
            text += (f" · best {esc(metric)} <b>{v:.6g}</b> ({'min' if minimize else 'max'}) at trial {t.number}"
                     f" <span class='hsm-preview'>{esc(_params_text(t.params))}</span>")
        text += (" · <span class='hsm-preview'>the history by trial, the importances"
                 + (" and the Pareto front" if len(objectives) > 1 else "") + " are views below</span>")
        self.summary.value = f"<div class='hsm-lines'>{text}</div>"
