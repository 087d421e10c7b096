"""Intermediate metrics (``log_metrics(step=...)``) reach the kernel while jobs still run, on
every source, read in the poll (one request per source, not per job)."""

from __future__ import annotations

import textwrap

from hsm_notebook import ParameterSpace, Sweep
from tests.helpers import until

STEPS_JOB = textwrap.dedent('''
    import sys, time
    from hsm_notebook.metrics import log_metrics
    hold = sys.argv[1] == "hold=1"
    for i in range(3 if hold else 5):
        log_metrics(step=i, loss=1.0 / (i + 1), accuracy=0.1 * i)
        time.sleep(0.05)
    if hold:
        time.sleep(120)  # still running when the test looks (then cancelled)
    log_metrics(final_loss=0.2)
''')


def test_intermediate_metrics_arrive_while_the_job_runs(make_source, workdir):
    (workdir / "steps.py").write_text(STEPS_JOB)
    source = make_source("steps", 2)
    calls = []
    read = source.read_steps

    async def counting(offsets):  # a spy: one request per poll for all running jobs
        calls.append(len(offsets))
        return await read(offsets)

    source.read_steps = counting
    sweep = Sweep(ParameterSpace(grid={"hold": [1, 0]}), ["python", "steps.py"], [source], workdir=workdir,
                  poll_interval=0.2).start()
    try:
        ids = sweep.status().set_index("hold")["task_id"]
        held, quick = ids.loc[1], ids.loc[0]

        def live_curve() -> bool:
            frame = sweep.metrics(held, "loss")
            return len(frame) == 3 and sweep.status().set_index("task_id").loc[held, "state"] == "RUNNING"

        until(live_curve, timeout=90, what="the held job's 3 steps while it runs")
        curve = sweep.metrics(held, "loss")
        assert list(curve["step"]) == [0.0, 1.0, 2.0] and list(curve["value"].round(3)) == [1.0, 0.5, 0.333]
        assert set(sweep.metrics(held)["metric"]) == {"loss", "accuracy"}
        until(lambda: sweep.status().set_index("task_id").loc[quick, "state"] == "COMPLETED", timeout=90,
              what="the quick job completed")
        whole = sweep.metrics(quick, "loss")
        assert list(whole["step"]) == [0.0, 1.0, 2.0, 3.0, 4.0]  # all steps, also those logged after the last poll
        assert sweep.results().set_index("task_id").loc[quick, "final_loss"] == 0.2  # final metrics as before
        assert calls and max(calls) <= 2
    finally:
        sweep.cancel()
        sweep.wait(timeout=90)
    assert len(sweep.metrics(held, "loss")) == 3  # nothing counted twice at the end
