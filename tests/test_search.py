"""Adaptive search (issue 21): declarations refused in words, Optuna's study in the sweep folder,
pruning that ends in PRUNED, budgets kept across restarts, and a searcher of another library."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hsm_notebook import Categorical, ConfigError, Float, HsmError, Int, LocalComputeSource, Search, Sweep
from hsm_notebook.core.model.state import JobState
from tests.helpers import until

# -- declarations (unit) ---------------------------------------------------------------------------


@pytest.mark.parametrize(("make", "words"), [
    (lambda: Float(1.0, 0.5), "low is above high"),
    (lambda: Float(0.0, 1.0, log=True), "a log scale needs low > 0"),
    (lambda: Float(1e-3, 1.0, log=True, step=0.1), "log=True and step= cannot go together"),
    (lambda: Int(1.5, 4), "must be an integer"),
    (lambda: Float(0, float("inf")), "must be finite"),
    (lambda: Categorical([]), "non-empty list of choices"),
    (lambda: Categorical([{"a": 1}]), "Optuna's choices are numbers, strings, booleans or None"),
    (lambda: Search({"lr": Float(1e-4, 1e-1)}), "a search needs a budget: give n_trials="),
    (lambda: Search({"lr": [0.1, 0.2]}, n_trials=3), "must be Float(low, high), Int(low, high) or Categorical"),
    (lambda: Search({"lr": Float(0, 1)}, n_trials=0), "must be a positive integer"),
    (lambda: Search({"lr": Float(0, 1)}, n_trials=3, sampler="bayesian"), "must be one of tpe, random"),
    (lambda: Search({"lr": Float(0, 1)}, n_trials=3, pruner="early"), "must be one of median"),
    (lambda: Search({"lr": Float(0, 1)}, n_trials=3, sampler="grid"), "the grid sampler needs every parameter"),
    (lambda: Search({"lr": Float(0, 1)}, n_trials=3, fixed={"lr": 1}), "both searched and fixed"),
])
def test_a_search_declared_wrongly_is_refused_in_words(make, words):
    with pytest.raises(ConfigError) as info:
        make()
    assert words in str(info.value)


def test_a_search_needs_an_objective_and_pruning_needs_one_metric(tmp_path):
    search = Search({"x": Float(0, 1)}, n_trials=2, pruner="median")
    with pytest.raises(ConfigError, match="a search needs an objective"):
        Sweep(search, ["true"], directory=tmp_path / "a")
    with pytest.raises(ConfigError, match="pruning needs one metric, and the objective has 2"):
        Sweep(search, ["true"], directory=tmp_path / "b", objective={"loss": "min", "time": "min"})
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()  # refused before anything is written


def test_without_optuna_the_message_names_the_install_command(monkeypatch):
    from hsm_notebook.search import study

    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna now raises ImportError
    with pytest.raises(ConfigError, match=r"pip install 'hsm_notebook\[search\]'"):
        study.optuna_module()


def test_a_search_is_recorded_in_words_and_kept_whole(tmp_path):
    import optuna

    sampler = optuna.samplers.RandomSampler(seed=3)
    search = Search({"lr": Float(1e-4, 1e-1, log=True), "layers": Int(1, 4), "act": Categorical(["relu", "tanh"])},
                    n_trials=5, sampler=sampler, pruner={"type": "hyperband", "max_resource": 30}, fixed={"epochs": 3})
    sweep = Sweep(search, ["true"], directory=tmp_path / "s", objective="loss")
    recorded = sweep.record["search"]
    assert recorded["space"]["lr"] == {"type": "float", "low": 1e-4, "high": 1e-1, "log": True}
    assert recorded["sampler"] == {"object": "optuna.samplers._random.RandomSampler"}
    assert recorded["pruner"] == {"type": "hyperband", "max_resource": 30}
    kept = Sweep.attach(tmp_path / "s", resume=False).search
    assert isinstance(kept.sampler, optuna.samplers.RandomSampler) and kept.space == search.space
    assert sweep.param_names == ["lr", "layers", "act", "epochs"]
    assert sweep.status().empty and not sweep.done  # no trial asked yet: the search is still to run


# -- on this machine, with real Optuna ---------------------------------------------------------


def curve(lr, layers=1):
    """A learning curve whose level depends on lr (best near 0.01): differing curves for the pruner."""
    import math
    import time

    from hsm_notebook.metrics import log_metrics

    level = abs(math.log10(lr) + 2) + 0.1 * layers
    for step in range(8):
        log_metrics(step=step, loss=level + 1.0 / (step + 1))
        time.sleep(0.15)
    return {"loss": level}


def test_tpe_and_median_pruning_stop_poor_curves_and_the_study_agrees(workdir):
    import optuna

    search = Search({"lr": Float(1e-4, 1.0, log=True), "layers": Int(1, 3)}, n_trials=14, seed=2,
                    sampler={"type": "tpe", "n_startup_trials": 4},
                    pruner={"type": "median", "n_startup_trials": 3, "n_warmup_steps": 1})
    sweep = Sweep(search, curve, [LocalComputeSource(max_parallel_jobs=3)], workdir=workdir,
                  objective={"loss": "min"}, poll_interval=0.1).run()
    status = sweep.status()
    assert len(status) == 14 and sorted(status["trial"]) == list(range(14))
    pruned = status[status["state"] == "PRUNED"]
    assert len(pruned) >= 1, status[["trial", "lr", "state"]]
    assert pruned["error"].str.match(r"pruned at step \d+: MedianPruner found loss=").all()
    trials = {t.number: t for t in sweep.study.trials}
    assert len(trials) == 14
    assert not [t for t in trials.values() if t.state == optuna.trial.TrialState.RUNNING]
    assert {n for n, t in trials.items() if t.state == optuna.trial.TrialState.PRUNED} == set(pruned["trial"])
    completed = status[status["state"] == "COMPLETED"]
    for _, row in completed.iterrows():  # each completed trial's value is its returned loss
        assert trials[row["trial"]].value == pytest.approx(sweep.results().set_index("task_id").loc[row["task_id"],
                                                                                                     "loss"])
    best = sweep.best(1)
    assert best["loss"].iloc[0] == pytest.approx(sweep.study.best_value)
    assert sweep.done and set(status["state"]) <= {"COMPLETED", "PRUNED"}


def test_a_prune_that_arrives_while_the_job_keeps_logging_ends_it_pruned(workdir):
    finished = workdir / "finished"

    def stubborn(x):
        import time

        from hsm_notebook.metrics import log_metrics

        for step in range(600):  # a minute of steps unless stopped
            log_metrics(step=step, loss=x)
            time.sleep(0.1)
        open(finished, "w").close()

    search = Search({"x": Categorical([5.0])}, n_trials=1, pruner={"type": "threshold", "upper": 1.0})
    sweep = Sweep(search, stubborn, [LocalComputeSource(max_parallel_jobs=1, cancel_grace=2.0)], workdir=workdir,
                  objective={"loss": "min"}, poll_interval=0.1).run()
    row = sweep.status().iloc[0]
    assert row["state"] == JobState.PRUNED and row["error"].startswith("pruned at step 0: ThresholdPruner")
    assert not finished.exists()  # stopped through its source, not left to finish
    (trial,) = sweep.study.trials
    assert trial.state.name == "PRUNED" and trial.intermediate_values[0] == 5.0
    assert len(sweep.metrics(row["task_id"], "loss")) >= 1


def test_a_define_by_run_space_gives_conditional_parameters(workdir):
    def space(trial):
        opt = trial.suggest_categorical("opt", ["adam", "sgd"])
        if opt == "adam":
            return {"opt": opt, "lr": trial.suggest_float("lr", 1e-4, 1e-2, log=True)}
        return {"opt": opt, "momentum": trial.suggest_float("momentum", 0.0, 0.9)}

    def score(opt, opt_group, lr=None, momentum=None):
        return {"loss": lr if opt == "adam" else 1 - momentum}

    sweep = Sweep(Search(space, n_trials=8, sampler="random", seed=0, fixed={"opt_group": "g"}), score,
                  [LocalComputeSource(max_parallel_jobs=4)], workdir=workdir, objective="loss", poll_interval=0.1).run()
    status = sweep.status()
    assert set(status["state"]) == {"COMPLETED"} and len(status) == 8
    for _, row in status.iterrows():
        assert (row["opt"] == "adam") == (row["lr"] == row["lr"]) != (row["momentum"] == row["momentum"])
    assert set(sweep.param_names) >= {"opt", "lr", "momentum", "opt_group"}


def test_several_objectives_give_the_pareto_front(workdir):
    def two(x):
        return {"a": x, "b": 1 - x if x < 0.5 else 2 - x}  # the upper half is dominated by any x < 0.5

    sweep = Sweep(Search({"x": Float(0, 1)}, n_trials=10, sampler="random", seed=1), two,
                  [LocalComputeSource(max_parallel_jobs=4)], workdir=workdir, objective={"a": "min", "b": "min"},
                  poll_interval=0.1).run()
    results = sweep.results()
    assert (results["x"] < 0.5).any() and (results["x"] >= 0.5).any()  # the seed gives both halves
    front = sweep.best()
    assert set(front["task_id"]) == set(results[results["x"] < 0.5]["task_id"])
    assert len(sweep.study.best_trials) == len(front)
    assert list(front["a"]) == sorted(front["a"])


def test_failures_stop_the_search_in_words_at_max_failed(workdir):
    def broken(x):
        raise RuntimeError(f"diverged at x={x}")

    sweep = Sweep(Search({"x": Float(0, 1)}, n_trials=10, max_failed=2, sampler="random"), broken,
                  [LocalComputeSource(max_parallel_jobs=1)], workdir=workdir, objective="loss", poll_interval=0.1)
    with pytest.raises(HsmError, match=r"the search stopped: 2 trials failed \(max_failed=2\)"):
        sweep.run()
    assert len(sweep.study.trials) == 2 and len(sweep.status()) == 2
    assert all(t.state.name == "FAIL" and "diverged at x=" in t.user_attrs["hsm.note"] for t in sweep.study.trials)


def test_a_completed_trial_without_its_objective_is_told_fail_with_the_reason(workdir):
    sweep = Sweep(Search({"x": Float(0, 1)}, n_trials=1, sampler="random"), lambda x: {"other": x},
                  [LocalComputeSource(max_parallel_jobs=1)], workdir=workdir, objective="loss", poll_interval=0.1).run()
    assert sweep.status()["state"].tolist() == ["COMPLETED"]
    (trial,) = sweep.study.trials
    assert trial.state.name == "FAIL"
    assert "the objective 'loss' is never reported" in trial.user_attrs["hsm.note"]


def test_the_time_budget_ends_the_search_and_every_trial_is_told(workdir):
    def slow(x):
        import time

        time.sleep(0.3)
        return x

    sweep = Sweep(Search({"x": Float(0, 1)}, timeout=1.0, sampler="random"), slow,
                  [LocalComputeSource(max_parallel_jobs=2)], workdir=workdir, objective="loss", poll_interval=0.1).run()
    states = [t.state.name for t in sweep.study.trials]
    assert 2 <= len(states) and set(states) == {"COMPLETE"}
    assert sweep.done


def test_a_suggestion_asked_before_a_crash_is_run_after_it(workdir):
    from hsm_notebook.search.study import OptunaSearch

    search = Search({"x": Float(0, 1)}, n_trials=3, sampler="random", seed=4)
    sweep = Sweep(search, lambda x: x, [LocalComputeSource(max_parallel_jobs=1)], workdir=workdir,
                  objective="loss", poll_interval=0.1, directory=workdir / "s")
    asked = OptunaSearch(sweep.search, sweep.directory, sweep.id, sweep.objectives).suggest()  # then "the crash"
    assert asked is not None and asked[0] == 0
    sweep.run()
    status = sweep.status().set_index("trial")
    assert status.loc[0, "x"] == asked[1]["x"] and status.loc[0, "state"] == "COMPLETED"
    assert len(sweep.study.trials) == 3 and len(status) == 3
    history = sweep.history(status.loc[0, "task_id"])
    assert history["detail"].iloc[0] == "trial 0: asked before the controller stopped, queued now"


def test_the_study_opens_with_optuna_in_another_process(workdir):
    import optuna

    sweep = Sweep(Search({"x": Float(0, 1)}, n_trials=3, sampler="random", seed=5), lambda x: x,
                  [LocalComputeSource(max_parallel_jobs=3)], workdir=workdir, objective="loss", poll_interval=0.1).run()
    code = ("import json, sys, optuna; from optuna.storages.journal import JournalFileBackend; "
            "storage = optuna.storages.JournalStorage(JournalFileBackend(sys.argv[2])); "
            "s = optuna.load_study(study_name=sys.argv[1], storage=storage); "
            "print(json.dumps([len(s.trials), s.best_value, s.direction.name]))")
    assert sweep.study_file == sweep.directory / "study.log"  # what optuna-dashboard is given
    out = subprocess.run([sys.executable, "-c", code, sweep.id, str(sweep.study_file)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [3, sweep.study.best_value, "MINIMIZE"]
    again = optuna.load_study(study_name=sweep.id, storage=sweep.study_storage)
    assert len(again.trials) == 3


class CountingSearcher:
    """Another library's searcher: values from a list, in turn (no Optuna)."""

    def __init__(self, search, directory, name, objective):
        self.values, self.asked, self.told = [0.3, 0.1, 0.2], 0, {}

    def running(self):
        return {}

    def suggest(self):
        if self.asked >= len(self.values):
            return None
        self.asked += 1
        return self.asked - 1, {"x": self.values[self.asked - 1]}

    def observe(self, number, step, value):
        return None

    def complete(self, number, state, values, note):
        self.told[number] = (state, values)
        (Path(os.environ["TOLD"]) / f"{number}.json").write_text(json.dumps([state.value, values]))

    def exhausted(self):
        return "the list is done" if self.asked >= len(self.values) else None


def test_another_search_library_plugs_in_through_the_searcher_protocol(workdir, monkeypatch):
    monkeypatch.setenv("TOLD", str(workdir))
    search = Search({"x": Float(0, 1)}, n_trials=10, searcher=CountingSearcher)
    sweep = Sweep(search, lambda x: x * 10, [LocalComputeSource(max_parallel_jobs=2)], workdir=workdir,
                  objective="loss", poll_interval=0.1).run()
    told = {int(p.stem): json.loads(p.read_text()) for p in workdir.glob("[0-9].json")}
    assert told == {0: ["COMPLETED", [3.0]], 1: ["COMPLETED", [1.0]], 2: ["COMPLETED", [2.0]]}
    assert sweep.done and len(sweep.status()) == 3


# -- a controller killed mid-search ---------------------------------------------------------------

CONTROLLER = textwrap.dedent("""
    import sys
    from hsm_notebook import Float, LocalComputeSource, Search, Sweep
    workdir, shared, directory = sys.argv[1:4]

    def train(x):
        import os, time
        from hsm_notebook.metrics import log_metrics
        with open(shared, "a") as f:
            f.write(os.path.basename(os.environ["HSM_TASK_DIR"]) + "\\n")
        for step in range(4):
            log_metrics(step=step, loss=x + 1 / (step + 1))
            time.sleep(0.15)
        return {"loss": x}

    search = Search({"x": Float(0, 1)}, n_trials=12, seed=0, pruner={"type": "median", "n_startup_trials": 2})
    sweep = Sweep(search, train, [LocalComputeSource(max_parallel_jobs=3)], workdir=workdir, directory=directory,
                  objective="loss", poll_interval=0.1)
    print("started", flush=True)
    sweep.run()
""")


@pytest.mark.parametrize("kill_after", [1, 5])
def test_sigkill_mid_search_then_attach_keeps_the_count_and_runs_each_trial_once(workdir, kill_after):
    shared, directory = workdir / "started.txt", workdir / "search"
    (workdir / "controller.py").write_text(CONTROLLER)
    proc = subprocess.Popen([sys.executable, "controller.py", str(workdir), str(shared), str(directory)],
                            cwd=workdir, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "started"
        until(lambda: len(shared.read_text().splitlines()) >= kill_after if shared.exists() else False, timeout=120,
              what=f"{kill_after} trials started")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    before = len(shared.read_text().splitlines())
    assert before < 12, "the search finished before the kill: nothing was tested"
    sweep = Sweep.attach(directory)
    sweep.wait(timeout=300)
    study = sweep.study
    assert len(study.trials) == 12  # n_trials, never more
    assert not [t.number for t in study.trials if t.state.name == "RUNNING"]
    status = sweep.status()
    assert len(status) == 12 and status["state"].isin(["COMPLETED", "PRUNED"]).all(), status[["trial", "state"]]
    runs = [line.rsplit("-", 1)[0] for line in shared.read_text().splitlines()]  # task id of each job that started
    assert sorted(runs) == sorted(set(runs)) == sorted(status["task_id"])  # each trial's job ran exactly once
    assert {t.number for t in study.trials if t.state.name == "PRUNED"} == set(status[status["state"] == "PRUNED"]
                                                                              ["trial"])


def test_an_ended_search_is_not_started_again_by_attach(workdir):
    sweep = Sweep(Search({"x": Float(0, 1)}, timeout=0.5, sampler="random"), lambda x: x,
                  [LocalComputeSource(max_parallel_jobs=1)], workdir=workdir, objective="loss", poll_interval=0.1,
                  directory=workdir / "t").run()
    n = len(sweep.study.trials)
    again = Sweep.attach(workdir / "t")
    assert again.done and not again.running  # its budget was spent: attaching starts no new one
    assert len(again.study.trials) == n


def test_errored_trials_are_told_fail_and_retry_failed_adds_their_reruns_to_the_study(workdir):
    flag = workdir / "fail"
    flag.touch()

    def fragile(x):
        import os

        if os.path.exists(flag):
            raise MemoryError("out of memory")
        return x

    sweep = Sweep(Search({"x": Float(0, 1)}, n_trials=2, sampler="random", seed=3), fragile,
                  [LocalComputeSource(max_parallel_jobs=2)], workdir=workdir, objective="loss", poll_interval=0.1).run()
    assert [t.state.name for t in sweep.study.trials] == ["FAIL", "FAIL"]
    flag.unlink()  # the cause is fixed: the errored trials are resumed
    sweep.retry_failed().wait(timeout=120)
    assert set(sweep.status()["state"]) == {"COMPLETED"}
    reruns = [t for t in sweep.study.trials if t.state.name == "COMPLETE"]
    assert sorted(t.user_attrs["hsm.retry_of"] for t in reruns) == [0, 1]
    assert sorted(t.params["x"] for t in reruns) == sorted(t.params["x"] for t in sweep.study.trials[:2])


def test_a_trial_the_user_cancels_is_told_fail_with_the_reason(workdir):
    def long(x):
        import time

        time.sleep(120)

    sweep = Sweep(Search({"x": Float(0, 1)}, n_trials=1, sampler="random"), long,
                  [LocalComputeSource(max_parallel_jobs=1, cancel_grace=1.0)], workdir=workdir, objective="loss",
                  poll_interval=0.1).start()
    until(lambda: "RUNNING" in set(sweep.status()["state"]), timeout=60, what="the trial running")
    sweep.cancel()
    sweep.wait(timeout=60)
    (trial,) = sweep.study.trials
    assert sweep.status()["state"].tolist() == ["CANCELLED"]
    assert trial.state.name == "FAIL" and trial.user_attrs["hsm.note"].startswith("CANCELLED")

