"""Python functions as jobs, on every source (local, the loopback sshd, the single-node Slurm):
return values into the kernel, exceptions in words, exact parameter types, log_metrics inside."""

from __future__ import annotations

from hsm_notebook import ParameterSpace, Sweep


def test_a_function_runs_on_every_source_with_its_return_values_in_the_kernel(make_source, workdir):
    table = list(range(50_000))  # closed over: sent once per sweep with the function

    class Point:  # a notebook-defined class, returned by value
        def __init__(self, x, y):
            self.x, self.y = x, y

    def train(lr, flag, cfg, name="n"):
        from hsm_notebook.metrics import log_metrics

        for step in range(3):
            log_metrics(step=step, loss=lr / (step + 1))
        if lr > 1:
            raise ValueError(f"diverged at lr={lr}")
        return {"score": lr * len(table), "flag_is_bool": flag is True, "cfg": cfg, "where": Point(lr, name),
                "name": name}

    source = make_source("fn", 3)
    space = ParameterSpace(grid={"lr": [0.1, 0.2, 5.0]}, fixed={"flag": True, "cfg": {"layers": [64, {"act": None}]}})
    sweep = Sweep(space, train, [source], workdir=workdir, poll_interval=0.2).run()
    status = sweep.status().set_index("lr")
    assert status.loc[5.0, "state"] == "FAILED"
    assert "ValueError: diverged at lr=5.0" in status.loc[5.0, "error"]
    assert "Traceback" in sweep.logs(status.loc[5.0, "task_id"], "stderr", 30)  # as it happened where it ran
    results = sweep.results(objects=True).set_index("lr")
    assert list(results["score"]) == [5000.0, 10000.0]  # the dict's numbers are metric columns
    assert results["flag_is_bool"].all()  # True stayed True
    value = sweep.result(status.loc[0.2, "task_id"])
    assert value["cfg"] == {"layers": [64, {"act": None}]}  # nested dicts and lists as given
    assert (value["where"].x, value["where"].y) == (0.2, "n") and type(value["where"]).__name__ == "Point"
    assert results.loc[0.1, "result"]["score"] == 5000.0
    steps = sweep.metrics(status.loc[0.1, "task_id"], "loss")
    assert list(steps["step"]) == [0.0, 1.0, 2.0]
