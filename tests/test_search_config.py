"""A search written in a sweep file: W&B's sweep configuration (method, parameters with
distributions, metric, early_terminate, run_cap) and this tool's own ``search:`` section, read
into a ``Search`` and run by ``Sweep.from_yaml`` and the command line."""

from __future__ import annotations

import math
import textwrap
import warnings
from pathlib import Path

import pytest

from hsm_notebook import Categorical, ConfigError, Float, Int, JobState, ParameterSpace, Search, Sweep
from hsm_notebook.cli import main
from hsm_notebook.core.launch import launch_options
from hsm_notebook.core.model.errors import HsmWarning
from hsm_notebook.core.spec.config import SweepFile
from hsm_notebook.examples import SEARCH_YAML


def load(text: str) -> SweepFile:
    return SweepFile.load(textwrap.dedent(text).lstrip())


def bayes(parameters: str, extra: str = "") -> SweepFile:
    return load(f"method: bayes\nmetric: {{name: loss}}\nrun_cap: 5\n{extra}parameters:\n"
                + textwrap.indent(textwrap.dedent(parameters).strip(), "  ") + "\n")


# -- W&B's distributions --------------------------------------------------------------------------

@pytest.mark.parametrize("spec, expected", [
    ("{distribution: uniform, min: 0, max: 1}", Float(0, 1)),
    ("{min: 0.1, max: 0.5}", Float(0.1, 0.5)),                            # floats: uniform, as W&B infers
    ("{min: 1, max: 4}", Int(1, 4)),                                       # integers: int_uniform
    ("{distribution: int_uniform, min: 2, max: 8}", Int(2, 8)),
    ("{distribution: q_uniform, min: 0.05, max: 1, q: 0.1}", Float(0.1, 1.0, step=0.1)),  # multiples of q
    ("{distribution: q_uniform, min: 1, max: 17, q: 4}", Int(4, 16, step=4)),  # an integer q: integers
    ("{distribution: log_uniform_values, min: 0.0001, max: 0.1}", Float(1e-4, 0.1, log=True)),
    ("{distribution: log_uniform, min: -4, max: -1}", Float(math.exp(-4), math.exp(-1), log=True)),  # ln bounds
    ("{distribution: inv_log_uniform_values, min: 0.001, max: 0.1}", Float(1e-3, 0.1, log=True)),
    ("{distribution: inv_log_uniform, min: 1, max: 3}", Float(math.exp(-3), math.exp(-1), log=True)),
    ("{distribution: q_log_uniform_values, min: 16, max: 256}", Int(16, 256, log=True)),
    ("{distribution: q_log_uniform, min: 0, max: 3, q: 1}", Int(1, math.floor(math.exp(3)), log=True)),
    ("{distribution: categorical, values: [adam, sgd]}", Categorical(["adam", "sgd"])),
    ("{values: [32, 64, 128]}", Categorical([32, 64, 128])),
])
def test_each_wandb_distribution_becomes_a_search_distribution(spec, expected):
    search = bayes(f"x: {spec}\nseed: {{value: 3}}\nconst: {{distribution: constant, value: a}}").search
    assert isinstance(search, Search)
    assert search.space == {"x": expected}
    assert search.fixed == {"seed": 3, "const": "a"}


def test_a_wandb_search_file_becomes_search_objective_pruner_and_budget():
    spec = load("""
        method: bayes
        metric: {name: val_acc, goal: maximize}
        run_cap: 20
        early_terminate: {type: hyperband, min_iter: 2, max_iter: 18, eta: 3}
        parameters:
          lr: {distribution: log_uniform_values, min: 0.00001, max: 0.1}
          optimizer:
            parameters:
              name: {values: [adam, sgd]}
              momentum: {value: 0.9}
        """)
    search = spec.search
    assert search is not None and spec.objective == {"val_acc": "max"}
    assert search.sampler == {"type": "tpe"} and search.n_trials == 20
    assert search.pruner == {"type": "hyperband", "min_resource": 2, "max_resource": 18, "reduction_factor": 3}
    assert search.space == {"lr": Float(1e-5, 0.1, log=True), "optimizer.name": Categorical(["adam", "sgd"])}
    assert search.fixed == {"optimizer.momentum": 0.9}
    random = load("method: random\nrun_cap: 4\nparameters:\n  a: {values: [1, 2]}\n").search
    assert random is not None and random.sampler == {"type": "random"}


def test_hyperband_s_places_the_first_bracket_and_is_otherwise_ignored_in_words():
    with_s = bayes("a: {min: 0.0, max: 1.0}", "early_terminate: {type: hyperband, max_iter: 27, s: 2}\n").search
    assert with_s is not None and with_s.pruner == {"type": "hyperband", "reduction_factor": 3, "max_resource": 27,
                                                     "min_resource": 3}  # W&B's brackets: 27/3/3 = 3, 27/3 = 9
    with pytest.warns(HsmWarning, match="early_terminate.s is ignored"):
        bayes("a: {min: 0.0, max: 1.0}", "early_terminate: {type: hyperband, min_iter: 1, s: 2}\n")
    with pytest.warns(HsmWarning, match="strict is ignored"):
        bayes("a: {min: 0.0, max: 1.0}", "early_terminate: {type: hyperband, min_iter: 1, strict: true}\n")
    with pytest.warns(HsmWarning, match="metric: target ignored"):
        load("method: random\nrun_cap: 2\nmetric: {name: acc, goal: maximize, target: 0.9}\n"
             "parameters:\n  a: {values: [1, 2]}\n")


def test_log_uniform_with_value_like_bounds_warns_that_its_bounds_are_logarithms():
    with pytest.warns(HsmWarning, match="natural-log bounds.*write log_uniform_values"):
        spec = bayes("lr: {distribution: log_uniform, min: 0.0001, max: 0.1}")
    assert spec.search is not None and spec.search.space["lr"] == Float(math.exp(1e-4), math.exp(0.1), log=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bayes("lr: {distribution: log_uniform, min: -9, max: -2}")  # logarithms: no warning


def test_a_wandb_grid_stays_a_grid_of_combinations():
    spec = load("""
        method: grid
        metric: {name: loss}
        run_cap: 6
        parameters:
          a: {values: [1, 2, 3]}
          b: {values: [x, y]}
          c: {value: 0}
        """)
    assert spec.search is None and isinstance(spec.space, ParameterSpace) and len(spec.space) == 6
    assert spec.space[0] == {"a": 1, "b": "x", "c": 0} and spec.objective == {"loss": "min"}


def test_the_explicit_search_section():
    spec = load("""
        name: explicit
        objective: {loss: min}
        search:
          sampler: tpe
          pruner: {type: median, n_warmup_steps: 5}
          n_trials: 50
          timeout: 3600
          max_failed: 5
          seed: 1
          space:
            lr: {type: float, low: 0.00001, high: 0.1, log: true}
            layers: {type: int, low: 1, high: 4}
            width: {type: int, low: 32, high: 256, step: 32}
            opt: {type: categorical, choices: [adam, sgd]}
            act: [relu, gelu]
          fixed: {epochs: 3}
        fixed: {model: {depth: 2}}
        defaults: {data: {split: a}, epochs: 9}
        """)
    expected = Search({"lr": Float(1e-5, 0.1, log=True), "layers": Int(1, 4), "width": Int(32, 256, step=32),
                       "opt": Categorical(["adam", "sgd"]), "act": Categorical(["relu", "gelu"])},
                      n_trials=50, sampler="tpe", pruner={"type": "median", "n_warmup_steps": 5}, timeout=3600,
                      max_failed=5, seed=1, fixed={"epochs": 3, "model.depth": 2, "data.split": "a"})
    assert spec.search is not None and spec.search.to_dict() == expected.to_dict()
    assert spec.name == "explicit" and spec.objective == {"loss": "min"}


def test_launch_options_give_the_search_as_the_space():
    spec = bayes("a: {min: 0.0, max: 1.0}")
    options = launch_options(spec, project=False, command=["python", "job.py"])
    assert options["space"] is spec.search and options["objective"] == {"loss": "min"}
    grid = load("sweep:\n  grid: {a: [1, 2]}\n")
    assert launch_options(grid, project=False, command=["python", "job.py"])["space"] is grid.space


def test_the_bundled_search_example_reads():
    spec = SweepFile.load(SEARCH_YAML)
    assert spec.search is not None and spec.search.n_trials == 16 and spec.search.pruner["type"] == "hyperband"
    assert spec.objective == {"val_loss": "min"} and spec.command == ("python", "train.py")


# -- errors in words --------------------------------------------------------------------------------

@pytest.mark.parametrize("text, field, words", [
    ("method: bayes\nmetric: {name: l}\nparameters:\n  a: {values: [1, 2]}\n", "run_cap",
     "needs a budget: add run_cap"),
    ("method: random\nparameters:\n  a: {min: 0.0, max: 1.0}\n", "run_cap", "needs a budget"),
    ("search:\n  space: {a: [1, 2]}\n", "search.n_trials", "needs a budget: add n_trials"),
    ("method: hyperopt\nparameters:\n  a: {values: [1]}\n", "method", "grid, random or bayes"),
    ("method: bayes\nrun_cap: 3\nparameters:\n  a: {distribution: normal, mu: 0, sigma: 1}\n", "parameters.a",
     "normal is not supported: Optuna samples from a bounded range"),
    ("method: bayes\nrun_cap: 3\nparameters:\n  a: {distribution: log_normal}\n", "parameters.a", "not supported"),
    ("method: bayes\nrun_cap: 3\nparameters:\n  a: {distribution: beta, a: 1, b: 2}\n", "parameters.a",
     "not supported"),
    ("method: bayes\nrun_cap: 3\nparameters:\n  a: {values: [1, 2], probabilities: [0.5, 0.5]}\n", "parameters.a",
     "carry no weights"),
    ("method: bayes\nrun_cap: 3\nparameters:\n  a: {distribution: q_log_uniform_values, min: 8, max: 64, q: 8}\n",
     "parameters.a", "no log scale with a step"),
    ("method: bayes\nrun_cap: 3\nparameters:\n  a: {distribution: uniform, min: 0, max: 1, q: 2}\n",
     "parameters.a", "uniform takes max, min, not q"),
    ("method: bayes\nrun_cap: 3\nparameters:\n  a: {distribution: uniform, min: 0}\n", "parameters.a", "needs max"),
    ("method: bayes\nrun_cap: 3\nparameters:\n  a: {distribution: uniform, min: 2, max: 1}\n", "parameters.a",
     "low is above high"),
    ("method: bayes\nrun_cap: 3\nparameters:\n  a: {distribution: int_uniform, min: 0.5, max: 3}\n", "parameters.a",
     "whole numbers"),
    ("method: bayes\nrun_cap: 3\nparameters:\n  a: {distribution: wild, min: 0, max: 1}\n", "parameters.a",
     "unknown distribution 'wild'"),
    ("method: bayes\nrun_cap: 3\nparameters:\n  a: {value: 1}\n", "parameters", "nothing to search"),
    ("method: bayes\nrun_cap: 0\nparameters:\n  a: {values: [1]}\n", "run_cap", "positive whole number"),
    ("method: bayes\nrun_cap: 3\nearly_terminate: {type: median}\nparameters:\n  a: {values: [1]}\n",
     "early_terminate", "type: hyperband"),
    ("method: bayes\nrun_cap: 3\nearly_terminate: {type: hyperband, min_iter: 1, eta: 2.5}\nparameters:\n"
     "  a: {values: [1]}\n", "early_terminate.eta", "whole number >= 2"),
    ("method: bayes\nrun_cap: 3\nearly_terminate: {type: hyperband, min_iter: 9, max_iter: 3}\nparameters:\n"
     "  a: {values: [1]}\n", "early_terminate", "min_iter 9 is above max_iter 3"),
    ("method: bayes\nrun_cap: 3\nsearch: {pruner: median}\nparameters:\n  a: {values: [1]}\n", "search",
     "takes only timeout, max_failed and seed"),
    ("method: bayes\nrun_cap: 3\nsearch: {timeout: -1}\nparameters:\n  a: {values: [1]}\n", "search.timeout",
     "positive number of seconds"),
    ("method: grid\nearly_terminate: {type: hyperband, min_iter: 1}\nparameters:\n  a: {values: [1]}\n",
     "early_terminate", "only in a search"),
    ("parameters:\n  lr: {distribution: uniform, min: 0, max: 1}\n", "parameters.lr",
     "distributions need method: random or bayes"),
    ("run_cap: 2\nparameters:\n  a: {values: [1, 2, 3]}\n", "run_cap", "below the 3 combinations"),
    ("method: bayes\nrun_cap: 3\nmetric: {goal: minimize}\nparameters:\n  a: {values: [1]}\n", "metric",
     "name: val_loss"),
    ("method: bayes\nrun_cap: 3\nmetric: {name: l, goal: lower}\nparameters:\n  a: {values: [1]}\n", "metric",
     "minimize or maximize"),
    ("method: bayes\nrun_cap: 3\nmetric: {name: l}\nobjective: {m: max}\nparameters:\n  a: {values: [1]}\n",
     "metric", "keep one"),
    ("method: bayes\nrun_cap: 3\ncommand: ['${env}', python, t.py, '${args}']\nparameters:\n  a: {values: [1]}\n",
     "command", "W&B command macro"),
    ("program: train.py\nmethod: bayes\nrun_cap: 3\nparameters:\n  a: {values: [1]}\n", "program", "script:"),
    ("count: 20\nmethod: bayes\nparameters:\n  a: {values: [1]}\nrun_cap: 3\n", "count", "run_cap: N"),
    ("method: bayes\nsweep:\n  grid: {a: [1]}\n", "method", "W&B-style parameters"),
    ("search:\n  n_trials: 3\n  space: {a: [1]}\nsweep:\n  grid: {a: [1]}\n", "search", "not both"),
    ("search:\n  n_trials: 3\n", "search.space", "map each parameter to a distribution"),
    ("parameters:\n  a: {values: [1]}\nsweep:\n  grid: {b: [1]}\n", "parameters", "not both"),
    ("parameters:\n  a: {values: [1]}\nfixed: {b: 1}\n", "parameters", "or a grid (fixed:), not both"),
    ("search:\n  n_trials: 3\n  space: {lr: {type: normal, low: 0, high: 1}}\n", "search.space.lr",
     "type must be float, int or categorical"),
    ("search:\n  n_trials: 3\n  space: {lr: {type: float, low: 1, high: 0}}\n", "search.space.lr",
     "low is above high"),
    ("search:\n  n_trials: 3\n  space: {lr: {type: float, low: 0, high: 1, scale: log}}\n", "search.space.lr",
     "unknown keys ['scale']"),
    ("search:\n  n_trials: 3\n  sampler: annealing\n  space: {a: [1, 2]}\n", "search.sampler", "must be one of"),
    ("search:\n  n_trials: 3\n  space: {a: [1, 2]}\n  fixed: {b: 1}\nfixed: {b: 2}\n", "fixed", "keep one"),
    ("search:\n  n_trials: 3\n  space: {a: [1, 2]}\n  fixed: {a: 1}\n", "search.fixed", "both searched and fixed"),
    ("search:\n  n_trials: 3\n  budget: 4\n  space: {a: [1, 2]}\n", "search", "unknown keys ['budget']"),
])
def test_what_cannot_be_read_is_named_in_words(text, field, words):
    with pytest.raises(ConfigError) as err:
        SweepFile.load(text)
    assert err.value.field == field and words in str(err.value)


def test_a_search_has_no_grid_and_needs_a_metric_to_run():
    spec = load("method: bayes\nrun_cap: 3\nparameters:\n  a: {values: [1, 2]}\n")
    with pytest.raises(ConfigError, match="describes a search") as err:
        spec.space  # noqa: B018 - the property raises
    assert err.value.field == "space"
    with pytest.raises(ConfigError, match="a search needs a metric to optimize: add metric:") as err:
        launch_options(spec, project=False, command=["python", "job.py"])
    assert err.value.field == "metric"
    assert launch_options(spec, project=False, command=["python", "job.py"], objective={"m": "max"})["space"] is \
        spec.search


# -- run ----------------------------------------------------------------------------------------------

#: A job that "trains" for some steps: its loss curve depends on x and width, and it logs each step,
#: slowly enough that the pruner sees the curves while the jobs run (so some trials may be pruned).
CURVE_JOB = textwrap.dedent("""
    import sys, time
    from hsm_notebook.metrics import log_metrics
    args = dict(a.split("=", 1) for a in sys.argv[1:])
    x, width = float(args["x"]), int(args["width"])
    for step in range(1, 10):
        loss = (x - 0.3) ** 2 + 8.0 / width + 1.0 / step
        log_metrics(step=step, loss=loss)
        time.sleep(0.1)
    log_metrics(loss=loss)
    """)


def _search_file(workdir: Path, run_cap: int, extra: str = "") -> Path:
    (workdir / "curve.py").write_text(CURVE_JOB)
    path = workdir / "search.yaml"
    path.write_text(textwrap.dedent(f"""
        command: [python, curve.py]
        max_parallel_jobs: 3
        method: bayes
        metric: {{name: loss, goal: minimize}}
        run_cap: {run_cap}
        {extra}
        parameters:
          x: {{distribution: uniform, min: 0, max: 1}}
          width: {{values: [8, 16, 32]}}
        """).lstrip())
    return path


def test_a_bayes_file_with_hyperband_runs_its_trials(workdir, sweeps):
    import optuna

    from hsm_notebook.search.study import OptunaSearch

    path = _search_file(workdir, 8, "early_terminate: {type: hyperband, min_iter: 1, max_iter: 9, eta: 3}")
    sweep = Sweep.from_yaml(path, project=False, poll_interval=0.2, reattach=False)
    sweeps.append(sweep)
    sweep.run()
    search = sweep.search
    assert search is not None and search.sampler == {"type": "tpe"} and search.n_trials == 8
    assert search.pruner == {"type": "hyperband", "min_resource": 1, "max_resource": 9, "reduction_factor": 3}
    # the study as the engine drives it (made from the recorded search, as Sweep does)
    driven = OptunaSearch(search, sweep.directory, sweep.id, {"loss": "min"}).study
    assert isinstance(driven.pruner, optuna.pruners.HyperbandPruner)
    assert isinstance(sweep.study.pruner, optuna.pruners.HyperbandPruner)  # the live study has it too
    assert isinstance(driven.sampler, optuna.samplers.TPESampler)
    trials = sweep.study.trials
    assert len(trials) == 8
    done = {optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED}
    assert all(t.state in done for t in trials), [t.state for t in trials]
    assert all(0 <= t.params["x"] <= 1 and t.params["width"] in (8, 16, 32) for t in trials)
    status = sweep.status()
    assert set(status["state"]) <= {JobState.COMPLETED, JobState.PRUNED} and len(status) == 8
    assert (status["state"] == JobState.PRUNED).sum() == sum(t.state == optuna.trial.TrialState.PRUNED for t in trials)


def test_the_command_line_runs_a_search_file(workdir):
    import optuna

    path = _search_file(workdir, 3)
    assert main(["run", str(path), "--dir", str(workdir / "cli-sweep"), "--no-project"]) == 0
    sweep = Sweep.attach(workdir / "cli-sweep", resume=False)
    trials = sweep.study.trials
    assert len(trials) == 3 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)


def test_the_panel_opened_on_a_search_file_launches_the_search(workdir, sweeps):
    from hsm_notebook.ui.magic import open_panel

    path = _search_file(workdir, 3)
    panel = open_panel(str(path))
    assert panel.editor.task_count() == 3  # the file's run_cap, read from its YAML
    panel.launch()
    sweep = panel.sweep
    sweeps.append(sweep)
    sweep.wait(timeout=180)
    assert sweep.search is not None and len(sweep.study.trials) == 3
    assert set(sweep.status()["state"]) <= {"COMPLETED", "PRUNED"}
