"""A bare ``run()``/``wait()`` shows a text progress line (counts, rate, best so far), quiet when asked
and where nobody reads it."""

from __future__ import annotations

import io

from hsm_notebook import LocalComputeSource, ParameterSpace, Sweep
from hsm_notebook.core import progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_line_is_shown_on_a_terminal_and_not_in_a_pipe():
    assert progress.wanted(None, Terminal()) is True
    assert progress.wanted(None, io.StringIO()) is False  # a log file, a pipe: quiet
    assert progress.wanted(False, Terminal()) is False and progress.wanted(True, io.StringIO()) is True


def test_run_shows_counts_and_the_best_value_and_ends_with_the_final_line(workdir, capsys):
    def score(x):
        import time

        time.sleep(0.6)
        if x == 3:
            raise ValueError("no")
        return {"loss": 1.0 / x}

    space = ParameterSpace(grid={"x": [1, 2, 3, 4]})
    sweep = Sweep(space, score, [LocalComputeSource(max_parallel_jobs=2)], workdir=workdir, poll_interval=0.1,
                  objective={"loss": "min"})
    sweep.run(progress=True)
    err = capsys.readouterr().err
    lines = [part for part in err.split("\r") if part.strip()]
    assert len(lines) >= 2  # rewritten in place while it ran, then the final line
    assert lines[-1].rstrip().startswith(f"sweep {sweep.id}: 4/4 ended (3 completed, 1 failed)")
    assert "best loss 0.25" in lines[-1] and err.endswith("\n")
    sweep.wait(progress=True)  # already ended: nothing more to show
    assert capsys.readouterr().err == ""


def test_quiet_when_asked(workdir, capsys):
    Sweep(ParameterSpace(grid={"x": [1]}), lambda x: x, [LocalComputeSource(max_parallel_jobs=1)], workdir=workdir,
          poll_interval=0.1).run(progress=False)
    assert capsys.readouterr().err == ""
