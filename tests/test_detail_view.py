"""The Job detail tab on real sweeps run on this machine: each attempt's own logs, the log files'
paths to copy, a tail that follows (or holds still), and the last value of each intermediate metric."""

from __future__ import annotations

import html
import re

from hsm_notebook import ParameterSpace, Sweep
from hsm_notebook.ui.detail_view import DetailView
from tests.helpers import until

FLAKY = ("import os, sys\n"
         "where = os.path.basename(os.environ['HSM_TASK_DIR'])\n"
         "print('stdout of', where)\n"
         "print('stderr of', where, file=sys.stderr)\n"
         "sys.exit(2)\n")
TICKS = "import time\nfor i in range(2000):\n    print('tick', i, flush=True)\n    time.sleep(0.03)\n"
STEPS = ("import time\nfrom hsm_notebook.metrics import log_metrics\n"
         "for i in range(5):\n    log_metrics(step=i, loss=1 / (i + 1), acc=i / 10)\n"
         "time.sleep(0.5)\nlog_metrics(loss=0.2)\n")


def _text(markup: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", markup))


def _tail(markup: str, css: str) -> str:
    """The text of one log tail (``hsm-stdout``, ``hsm-stderr``) as shown."""
    found = re.search(rf"<pre class='{css}'[^>]*>(.*?)</pre>", markup, re.S)
    assert found, f"no {css} tail in {markup}"
    return html.unescape(found.group(1))


def _no_empty_words(markup: str) -> None:
    for word in ("nan", "NaT", "<NA>", "None"):
        assert f">{word}<" not in markup and f">{html.escape(word)}<" not in markup, f"{word!r} in {markup}"


def _two_attempts(workdir) -> tuple[Sweep, str]:
    """A task that fails twice (retry_failed gives it a second attempt), each attempt printing its folder."""
    (workdir / "flaky.py").write_text(FLAKY)
    sweep = Sweep(ParameterSpace(grid={"x": [1]}), ["python", "flaky.py"], workdir=workdir, poll_interval=0.1,
                  retry={"max_attempts": 2, "retry_failed": True, "backoff": 0}).run()
    [tid] = list(sweep.status()["task_id"])
    assert sweep.task(tid)["attempt"] == 2 and sweep.task(tid)["state"] == "FAILED"
    return sweep, tid


def test_the_attempt_selector_shows_each_attempts_own_logs(workdir, panels):
    sweep, tid = _two_attempts(workdir)
    panel = sweep.panel()
    panels.append(panel)
    panel.tabs.selected_index = 3
    view = panel.detail_view
    view.task.value = tid
    assert [label for label, _ in view.attempt.options] == ["latest (2)", "1", "2"]
    assert view.attempt.label == "latest (2)"  # the default
    assert _tail(view.body.value, "hsm-stderr") == f"stderr of {tid}-2"
    view.attempt.value = 1  # the panel does not watch Attempt: the view redraws itself
    body = view.body.value
    assert _tail(body, "hsm-stderr") == f"stderr of {tid}-1" and _tail(body, "hsm-stdout") == f"stdout of {tid}-1"
    files = _text(body.split("class='hsm-log-paths'>")[1].split("</table>")[0])
    assert str(sweep.log_path(tid, "stderr", 1)) in files and f"{tid}-2" not in files
    assert "1 of 2" in _text(body) and "exit code 2" in _text(body)  # how this attempt ended, from the history
    view.attempt.value = 2
    assert _tail(view.body.value, "hsm-stderr") == f"stderr of {tid}-2"
    view.attempt.label = "latest (2)"
    assert _tail(view.body.value, "hsm-stderr") == f"stderr of {tid}-2" and "hsm-error" not in panel.message.value
    _no_empty_words(view.body.value)
    view.task.value = ""  # another task (none) starts again from "latest"
    assert view.attempt.label == "latest" and "Pick a task" in view.body.value


def test_the_log_files_are_listed_to_copy_and_slurm_out_only_when_present(workdir):
    sweep = Sweep(ParameterSpace(grid={"x": [4]}), ["python", "job.py"], workdir=workdir, poll_interval=0.1).run()
    [tid] = list(sweep.status()["task_id"])
    view = DetailView()
    view.task.value = tid
    view.show(sweep)
    shown = html.unescape(view.body.value)
    for stream in ("stdout", "stderr"):
        path = sweep.log_path(tid, stream)
        assert path.exists() and f"<code class='hsm-path' style='user-select:all'>{path}</code>" in shown
    assert "slurm.out" not in shown  # a local job has no batch system's file
    (sweep.log_path(tid, "slurm")).write_text("slurmstepd: error: *** JOB 17 CANCELLED DUE TO TIME LIMIT ***\n")
    view.show(sweep)
    shown = html.unescape(view.body.value)
    assert f">{sweep.log_path(tid, 'slurm')}</code>" in shown and "DUE TO TIME LIMIT" in _tail(shown, "hsm-scheduler")
    assert str(sweep.directory / "tasks" / f"{tid}-1") in shown  # the folder, as before
    _no_empty_words(view.body.value)


def test_follow_keeps_the_newest_lines_and_off_holds_the_text_still(workdir, sweeps):
    (workdir / "ticks.py").write_text(TICKS)
    sweep = Sweep(ParameterSpace(grid={"x": [1]}), ["python", "ticks.py"], workdir=workdir, poll_interval=0.1)
    sweeps.append(sweep)
    sweep.start()
    [tid] = list(sweep.status()["task_id"])
    view = DetailView()
    view.task.value = tid
    view.lines.value = 5
    assert view.follow.value is True

    def ticks_shown() -> list[int]:
        view.show(sweep)  # what each panel refresh does
        return [int(line.split()[1]) for line in _tail(view.body.value, "hsm-stdout").splitlines()
                if line.startswith("tick")]  # "(empty)" before the first line

    until(lambda: len(ticks_shown()) == 5, timeout=60, what="five ticks in the tail")
    newest = ticks_shown()[-1]
    until(lambda: ticks_shown()[0] > newest, what="the tail moving on")  # following: all five lines are newer
    assert "hsm-tail" in view.body.value and "frozen" not in view.body.value
    view.follow.value = False
    held = _tail(view.body.value, "hsm-stdout")
    last = int(held.split()[-1])
    until(lambda: int(sweep.logs(tid, "stdout", 1).split()[1]) >= last + 20, what="the job printing on")
    view.show(sweep)
    assert _tail(view.body.value, "hsm-stdout") == held and "frozen (follow is off)" in view.body.value
    view.follow.value = True  # the view redraws itself with the newest lines
    assert ticks_shown()[-1] >= last + 20 and "frozen" not in view.body.value


def test_a_task_with_steps_shows_the_last_value_of_each_metric(workdir):
    (workdir / "steps.py").write_text(STEPS)
    sweep = Sweep(ParameterSpace(combinations=[{"x": 1}]), ["python", "steps.py"], workdir=workdir,
                  poll_interval=0.1).run()
    [tid] = list(sweep.status()["task_id"])
    until(lambda: len(sweep.metrics(task_id=tid)) == 10, timeout=10, what="ten steps in the ledger")
    view = DetailView()
    view.task.value = tid
    view.show(sweep)
    body = view.body.value
    table = body.split("class='hsm-task-metrics'")[1].split("</table>")[0]
    rows = [re.findall(r"<td>(.*?)</td>", row) for row in table.split("<tr>")[2:]]
    assert [row[:3] for row in rows] == [["acc", "4", "0.4"], ["loss", "4", "0.2"]]
    assert all(re.fullmatch(r"\d\d:\d\d:\d\d", row[3]) for row in rows)
    _no_empty_words(body)
    plain = Sweep(ParameterSpace(grid={"x": [2]}), ["python", "job.py"], workdir=workdir, poll_interval=0.1).run()
    view.task.value = plain.status()["task_id"][0]
    view.show(plain)
    assert "hsm-task-metrics" not in view.body.value and "intermediate metrics" not in view.body.value
