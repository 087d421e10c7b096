"""An adaptive search on every source (local, the loopback sshd, the single-node Slurm): Optuna's
TPE asks for the trials, the median pruner stops those whose curves are worse, through the source."""

from __future__ import annotations

from hsm_notebook import Float, Search, Sweep


def test_tpe_and_median_pruning_through_every_source(make_source, workdir):
    import optuna

    def train(x):
        import time

        from hsm_notebook.metrics import log_metrics

        for step in range(6):
            log_metrics(step=step, loss=x)
            time.sleep(0.3)
        return x

    # With seed 7 TPE's first (random) draws are 0.076, 0.78, 0.438, 0.723: with one slot the trials run
    # in turn, trial 0 completes, and the median of one completed curve is below every later curve.
    search = Search({"x": Float(0.0, 1.0)}, n_trials=4, sampler="tpe", seed=7,
                    pruner={"type": "median", "n_startup_trials": 1, "n_warmup_steps": 1})
    sweep = Sweep(search, train, [make_source("search", 1)], workdir=workdir, objective={"loss": "min"},
                  poll_interval=0.2).run()
    status = sweep.status().set_index("trial").sort_index()
    assert list(status["state"]) == ["COMPLETED", "PRUNED", "PRUNED", "PRUNED"], status[["state", "error"]]
    assert all(e.startswith("pruned at step ") and "MedianPruner" in e for e in status["error"].iloc[1:])
    study = sweep.study
    states = [t.state for t in sorted(study.trials, key=lambda t: t.number)]
    TS = optuna.trial.TrialState
    assert states == [TS.COMPLETE, TS.PRUNED, TS.PRUNED, TS.PRUNED]
    assert study.best_value == status.loc[0, "x"]
    for t in study.trials[1:]:
        assert t.intermediate_values and max(t.intermediate_values) < 5  # stopped before its last step
