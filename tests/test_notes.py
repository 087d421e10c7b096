"""Issue 22, item 7: notes and tags.  Per-task notes, editable in Job detail and kept in the ledger;
per-sweep tags, shown in ``%hsm``'s list with the best value and the parameters that vary, so
sweeps are told apart.  Notes are written on a connection of their own while a controller runs."""

from __future__ import annotations

import html
import re
import sqlite3
import threading
from pathlib import Path

import pytest

from hsm_notebook import ParameterSpace, Sweep
from hsm_notebook.core.ledger import notes
from hsm_notebook.core.model.errors import ConfigError, StoreError
from hsm_notebook.ui.panel import SweepPanel
from hsm_notebook.ui.recent import RecentSweeps
from tests.test_status_grid import ledger_sweep


def _text(markup: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", markup))


def test_a_note_is_kept_in_the_ledger_and_read_by_any_reader(tmp_path: Path) -> None:
    sweep = ledger_sweep(tmp_path, {"x": [1, 2]}, {0: ("COMPLETED", {"loss": 1.0})})
    a, b = list(sweep.status()["task_id"])
    assert sweep.notes() == {} and sweep.task(a)["note"] is None  # a ledger without the table: no notes
    sweep.note(a, "diverged after epoch 3\nlr too high?")
    assert sweep.task(a)["note"] == "diverged after epoch 3\nlr too high?" and sweep.task(b)["note"] is None
    other = Sweep.attach(sweep.directory, resume=False)  # another reader (as another process would)
    assert other.notes() == {a: "diverged after epoch 3\nlr too high?"}
    sweep.note(a, "replaced")
    assert other.notes() == {a: "replaced"}
    sweep.note(a, "  ")  # empty: the note is gone
    assert other.notes() == {} and other.task(a)["note"] is None


@pytest.mark.parametrize("task, text, field, words", [
    ("nope", "hello", "task_id", "no task 'nope' in this sweep"),
    (None, 3, "text", "a note is text, got int"),
    (None, "x" * (notes.MAX_NOTE + 1), "text", "too long"),
])
def test_a_note_that_cannot_be_kept_says_why(tmp_path: Path, task, text, field, words) -> None:
    sweep = ledger_sweep(tmp_path, {"x": [1]}, {})
    with pytest.raises(ConfigError, match=re.escape(words)) as caught:
        sweep.note(task or sweep.status()["task_id"][0], text)
    assert caught.value.field == field and sweep.notes() == {}


def test_tags_are_words_given_once_in_order(tmp_path: Path) -> None:
    sweep = ledger_sweep(tmp_path, {"x": [1]}, {})
    assert sweep.tags == []
    sweep.tag("baseline", "lr-scan").tag("baseline", "sgd")
    assert sweep.tags == ["baseline", "lr-scan", "sgd"]
    sweep.untag("lr-scan", "never-there")
    assert sweep.tags == ["baseline", "sgd"]
    for bad in ("two words", "", "a,b", "x" * 41):
        with pytest.raises(ConfigError, match="is not a tag: a tag is one word") as caught:
            sweep.tag(bad)
        assert caught.value.field == "tags"
    with pytest.raises(ConfigError, match="a tag is a word, got int"):
        sweep.tag(3)  # type: ignore[arg-type]
    assert Sweep.attach(sweep.directory, resume=False).tags == ["baseline", "sgd"]


def test_a_note_waits_for_a_write_in_progress_and_says_so_when_it_cannot(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLite lets one writer at a time: a note written while another connection holds the write lock
    (the controller's transaction) waits for it; held past the busy timeout, the note is refused in
    words and nothing is changed."""
    sweep = ledger_sweep(tmp_path, {"x": [1]}, {})
    tid = sweep.status()["task_id"][0]
    holder = sqlite3.connect(sweep.directory / "ledger.sqlite", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    monkeypatch.setattr(notes, "BUSY_TIMEOUT", 0.2)
    with pytest.raises(StoreError, match="could not be written .*database is locked.*nothing was changed"):
        sweep.note(tid, "while locked")
    monkeypatch.setattr(notes, "BUSY_TIMEOUT", 30.0)
    done: list[BaseException | None] = []

    def write() -> None:
        try:
            sweep.note(tid, "after the holder's commit")
            done.append(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            done.append(exc)

    writer = threading.Thread(target=write)
    writer.start()
    holder.execute("COMMIT")  # the writer, waiting or not yet started, gets the lock now
    writer.join(timeout=30)
    holder.close()
    assert done == [None] and sweep.notes() == {tid: "after the holder's commit"}


def test_notes_and_tags_are_written_while_the_sweep_runs(workdir: Path, sweeps: list) -> None:
    """The controller writes transitions in this process while notes go in on their own connection:
    every task completes, and every note is kept."""
    sweep = Sweep(ParameterSpace(grid={"x": list(range(12))}), ["python", "job.py"], workdir=workdir,
                  poll_interval=0.05)
    sweeps.append(sweep)
    ids = list(sweep.status()["task_id"])
    sweep.start()
    for k, tid in enumerate(ids):
        sweep.note(tid, f"note {k}")
        sweep.tag(f"t{k}")
    sweep.wait(timeout=120)
    assert sweep.counts() == {"COMPLETED": 12}
    assert sweep.notes() == {tid: f"note {k}" for k, tid in enumerate(ids)}
    assert sweep.tags == [f"t{k}" for k in range(12)]


def test_a_note_is_edited_in_job_detail(tmp_path: Path, panels: list) -> None:
    sweep = ledger_sweep(tmp_path, {"x": [1, 2]}, {0: ("COMPLETED", {"loss": 1.0}), 1: ("FAILED", None)})
    a, b = list(sweep.status()["task_id"])
    sweep.note(b, "crashed: out of memory")
    panel = SweepPanel(sweep, refresh_interval=3600)
    panels.append(panel)
    panel.open_task(a)
    view = panel.detail_view
    assert view.note_box.layout.display == "" and view.note.value == ""
    view.note.value = "the good one"
    panel.refresh(True)  # a refresh while typing: the text stays
    assert view.note.value == "the good one"
    view.save_note.click()
    assert sweep.task(a)["note"] == "the good one" and "saved" in view.note_state.value
    panel.open_task(b)
    assert view.note.value == "crashed: out of memory" and view.note_state.value == ""
    view.note.value = "x" * (notes.MAX_NOTE + 1)
    view.save_note.click()
    assert "too long" in _text(view.note_state.value) and sweep.task(b)["note"] == "crashed: out of memory"
    # the status grid shows a note column once a task has one, its full text on hover
    panel.refresh(True)
    grid = panel.status_view.grid
    assert grid.columns[-1] == "note" and "title='crashed: out of memory'" in grid.rows[1].value


def test_tags_are_edited_in_the_panels_header(tmp_path: Path, panels: list) -> None:
    sweep = ledger_sweep(tmp_path, {"x": [1]}, {})
    sweep.tag("first")
    panel = SweepPanel(sweep, refresh_interval=3600)
    panels.append(panel)
    assert panel.tags.value == ["first"] and panel.tags.layout.display == ""
    panel.tags.value = ["first", "baseline"]
    assert sweep.tags == ["first", "baseline"]
    panel.tags.value = ["baseline"]
    assert sweep.tags == ["baseline"]
    panel.tags.value = ["baseline", "two words"]  # refused in words, and taken off again
    assert "is not a tag" in _text(panel.message.value) and panel.tags.value == ["baseline"]
    assert sweep.tags == ["baseline"]
    assert "(tags: baseline)" in panel.summary()  # what a saved notebook shows


def test_the_hsm_list_tells_sweeps_apart_by_tags_best_value_and_varying_parameters(tmp_path: Path) -> None:
    first = ledger_sweep(tmp_path / "a", {"lr": [0.1, 0.01], "opt": ["sgd"]},
                         {0: ("COMPLETED", {"val_acc": 0.8}), 1: ("COMPLETED", {"val_acc": 0.9})},
                         objective={"val_acc": "max"})
    first.tag("baseline")
    second = ledger_sweep(tmp_path / "b", {"lr": [0.1], "opt": ["sgd", "adam"]}, {0: ("RUNNING", None)},
                          curves={0: [(0, "val_acc", 0.5), (1, "val_acc", 0.7)]}, objective={"val_acc": "max"})
    third = ledger_sweep(tmp_path / "c", {"lr": [0.1]}, {})
    listing = RecentSweeps(lambda folder: None, roots=[tmp_path / "a", tmp_path / "b", tmp_path / "c"])
    lines = {entry["sweep_id"]: _text(row.children[1].value)
             for entry, row in zip(listing.entries, listing.widget.children[1:], strict=True)}
    assert "baseline" in lines[first.id] and "varies lr" in lines[first.id] and "best val_acc (max) 0.9" in \
        lines[first.id]
    assert "varies opt" in lines[second.id] and "best val_acc (max) –" in lines[second.id]  # none completed yet
    assert "varies" not in lines[third.id] and "best" not in lines[third.id]
    assert notes.brief(first.directory)["best"] == ("val_acc", "max", 0.9)
