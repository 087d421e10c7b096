"""The reference HSM's sweep files and project config run unchanged.

The example files are written here from the reference's documentation and templates, one per
format it has shipped, each with the number of combinations the reference gives it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hsm_notebook import ConfigError, Sweep
from hsm_notebook.core.launch import launch_options
from hsm_notebook.core.spec.config import SweepFile
from hsm_notebook.core.spec.project import ProjectConfig

FORMATS = {
    # v1 `hsm init` and its tests: a Hydra defaults list, sweep.grid, metadata
    "defaults_list": ("""
        defaults:
          - override hydra/launcher: basic
        sweep:
          grid:
            seed: [1, 2, 3]
            model.hidden_size: [128, 256]
            optimizer.lr: [0.001, 0.01]
        metadata:
          description: "Test sweep for CLI"
          tags: ["test"]
        """, 12),
    # the current `hsm setup init` template (yaml.dump: keys sorted, the defaults entry a string)
    "init_template": ("""
        defaults:
        - 'override hydra/launcher: basic'
        metadata:
          description: Example hyperparameter sweep
          tags: [example, baseline]
          wandb_project: demo
        sweep:
          grid:
            data.batch_size: [32, 64]
            model.lr: [0.001, 0.01, 0.1]
            seed: [1, 2, 3, 4, 5]
        """, 30),
    # an auto-generated file: the defaults entry as a one-key mapping
    "defaults_override_key": ("""
        defaults:
        - override: 'hydra/launcher: basic'
        metadata:
          description: auto-generated
        sweep:
          grid:
            seed: [1, 2, 3, 4, 5]
        """, 5),
    # the newest format: the script to run, next to the sweep
    "script": ("""
        script: scripts/train_v2.py
        sweep:
          grid:
            lr: [0.001, 0.01]
        """, 2),
    # paired groups: zipped inside a group, a product across groups (the current reference)
    "paired": ("""
        sweep:
          grid:
            seed: [1, 2]
          paired:
            - arch:
                model.layers: [2, 4, 8]
                model.width: [256, 128, 64]
            - opt:
                optimizer.name: [adam, sgd]
                optimizer.lr: [0.001, 0.1]
        """, 12),
    # the v2 guide's bare grid with metadata (no sweep: section)
    "bare_grid": ("""
        grid:
          learning_rate: [0.001, 0.01, 0.1]
          batch_size: [32, 64, 128]
        metadata: {description: "bare"}
        """, 9),
    # the v2 `hsm config init` template: W&B-style parameters
    "wandb_style": ("""
        metadata:
          description: Example hyperparameter sweep
          tags: [example, baseline]
        parameters:
          batch_size: {values: [32, 64]}
          learning_rate: {values: [0.001, 0.01, 0.1]}
          seed: {values: [1, 2, 3, 4, 5]}
        strategy: grid
        """, 30),
    # nested grid keys, flattened with dots; GPU-type planning keys without effect
    "nested_and_cost": ("""
        sweep:
          grid:
            model: {width: [64, 128], depth: [2, 4]}
          cost_param: model.width
          cost_map: {64: 1, 128: 2}
        """, 4),
    # the newest format's defaults mapping: applied to every combination the sweep does not set
    "defaults_mapping": ("""
        defaults:
          epochs: 3
          model: {width: 32, depth: 2}
        sweep:
          grid:
            model.width: [64, 128]
        """, 2),
}


@pytest.mark.parametrize("name", list(FORMATS))
def test_every_reference_format_loads_with_its_count(name):
    text, count = FORMATS[name]
    spec = SweepFile.load(textwrap.dedent(text).lstrip())
    assert len(spec.space) == count


def test_what_each_format_carries():
    spec = SweepFile.load(textwrap.dedent(FORMATS["defaults_list"][0]))
    assert spec.hydra_defaults == ({"override hydra/launcher": "basic"},)
    assert spec.metadata == {"description": "Test sweep for CLI", "tags": ["test"]}
    assert spec.space[0] == {"seed": 1, "model.hidden_size": 128, "optimizer.lr": 0.001}  # nothing of defaults
    assert SweepFile.load(textwrap.dedent(FORMATS["script"][0])).script == "scripts/train_v2.py"
    mapping = SweepFile.load(textwrap.dedent(FORMATS["defaults_mapping"][0]))
    assert [p["model.width"] for p in mapping.space] == [64, 128]  # the sweep's values win
    assert all(p["epochs"] == 3 and p["model.depth"] == 2 for p in mapping.space)
    wandb = SweepFile.load(textwrap.dedent(FORMATS["wandb_style"][0]))
    assert wandb.space[0] == {"batch_size": 32, "learning_rate": 0.001, "seed": 1}
    paired = list(SweepFile.load(textwrap.dedent(FORMATS["paired"][0])).space)
    assert {(p["model.layers"], p["model.width"]) for p in paired} == {(2, 256), (4, 128), (8, 64)}


@pytest.mark.parametrize("text, field, words", [
    ("sweep:\n  grid: {a: [1]}\nlaunch: now\n", "sweep file", "unknown keys ['launch']"),
    ("sweep:\n  grid: {a: [1]}\n  costs: 1\n", "sweep", "unknown keys ['costs']"),
    ("command: python t.py\nscript: t.py\nsweep:\n  grid: {a: [1]}\n", "script", "not both"),
    ("parameters:\n  lr: {distribution: log_uniform, min: 0.1, max: 1}\n", "parameters.lr", "distributions"),
    ("parameters:\n  lr: {values: [1]}\nmethod: bayes\n", "run_cap", "needs a budget"),
    ("resumable: {enabled: true}\nsweep:\n  grid: {a: [1]}\n", "resumable", "not supported"),
    ("defaults: 3\nsweep:\n  grid: {a: [1]}\n", "defaults", "Hydra defaults list"),
])
def test_what_cannot_be_read_is_named(text, field, words):
    with pytest.raises(ConfigError) as err:
        SweepFile.load(text)
    assert err.value.field == field and words in str(err.value)


def test_a_disabled_resumable_block_is_accepted():
    assert len(SweepFile.load("resumable: {enabled: false}\nsweep:\n  grid: {a: [1, 2]}\n").space) == 2


# -- project config -----------------------------------------------------------------------------

def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def test_a_project_config_becomes_command_environment_and_sources(tmp_path):
    root = tmp_path / "proj"
    _write(root / "train.py", "")
    config = _write(root / ".hsm" / "config.yaml", """
        project: {name: proj, root: /home/someone/else/proj}
        paths:
          conda_env: ml
          train_script: /home/someone/else/proj/train.py
        wandb: {project: proj-wandb, entity: lab}
        local: {visible_gpus: [1, 2]}
        distributed:
          enabled: true
          local_max_jobs: 2
          rsync_excludes: [data/raw/]
          remotes:
            gpu-box:
              host: 127.0.0.2
              ssh_port: 2222
              ssh_key: ~/.ssh/id_special
              max_parallel_jobs: 4
              gpus: "0,1"
            cpu-box:
              python_path: /opt/py/bin/python3
            old-box:
              enabled: false
            cluster:
              backend: slurm
              host: login.example
              spec: {walltime: "04:00:00", cpus_per_task: 4, mem: 16G, gpus: 1}
        """)
    machine = _write(tmp_path / "home" / ".hsm" / "config.yaml", """
        local:
          sweeps_root: /big/disk/sweeps
          visible_gpus: [0]
        distributed: {enabled: false}
        """)
    project = ProjectConfig.load(config, machine=machine)
    assert project.root == root  # the recorded root is not on this machine: the folder holding .hsm/
    assert project.command() == ("python", "train.py")
    assert project.environment.conda_env == "ml" and project.env == {"WANDB_PROJECT": "proj-wandb",
                                                                       "WANDB_ENTITY": "lab"}
    assert project.sweeps_dir() == Path("/big/disk/sweeps")  # from the machine's local: block
    local, gpu, cpu, cluster = project.source_descriptions()
    assert local["max_parallel_jobs"] == 2 and local["gpus"] == [1, 2]  # the project's local: wins
    assert (gpu["host"], gpu["port"], gpu["client_keys"], gpu["max_parallel_jobs"], gpu["gpus"]) == \
        ("127.0.0.2", 2222, ["~/.ssh/id_special"], 4, [0, 1])
    assert gpu["environment"] == {"conda_env": "ml"} and "data/raw/" in gpu["sync_exclude"]
    assert cpu["host"] == "cpu-box" and cpu["python"] == "/opt/py/bin/python3" and cpu["environment"] == {}
    assert cluster["type"] == "slurm" and cluster["login"]["host"] == "login.example"
    assert cluster["resources"] == {"walltime": "04:00:00", "cpus": 4, "mem": "16G", "gpus": 1}


def test_a_legacy_hsm_config_is_found_and_a_bad_remote_key_is_named(tmp_path):
    _write(tmp_path / "sweeps" / "hsm_config.yaml", """
        paths: {python_interpreter: /usr/bin/python3, train_script: scripts/train.py}
        distributed:
          enabled: true
          remotes:
            box: {host: h, sshport: 22}
        """)
    project = ProjectConfig.find(tmp_path, machine=None)
    assert project.python == "/usr/bin/python3" and project.command() == ("python", "scripts/train.py")
    with pytest.raises(ConfigError) as err:
        project.source_descriptions()
    assert "sshport" in str(err.value) and "remotes.box" in err.value.field


HYDRA_TRAIN = textwrap.dedent('''
    import json, os
    import hydra
    from hsm_notebook.metrics import log_metrics

    @hydra.main(version_base=None, config_path="configs", config_name="config")
    def main(cfg):
        os.makedirs(cfg.output.dir, exist_ok=True)
        with open(os.path.join(cfg.output.dir, "run.json"), "w") as f:
            json.dump({"group": cfg.wandb.group, "lr": cfg.optimizer.lr, "seed": cfg.seed,
                       "wandb_project": os.environ.get("WANDB_PROJECT")}, f)
        log_metrics(loss=cfg.optimizer.lr * cfg.seed)

    main()
''')
HYDRA_CONFIG = """
    seed: 0
    optimizer: {lr: 0.1}
    output: {dir: outputs}
    wandb: {group: null}
    hydra:
      run: {dir: "${output.dir}/hydra"}
      output_subdir: null
    """


def _reference_project(root: Path, distributed: str = "") -> Path:
    _write(root / "train.py", HYDRA_TRAIN)
    _write(root / "configs" / "config.yaml", HYDRA_CONFIG)
    _write(root / ".hsm" / "config.yaml", textwrap.dedent(f"""
        project: {{name: demo, root: {root}}}
        paths: {{train_script: {root / 'train.py'}}}
        wandb: {{project: demo-wandb}}
        """) + textwrap.dedent(distributed))
    return _write(root / "sweeps" / "sweep.yaml", """
        defaults:
          - override hydra/launcher: basic
        sweep:
          grid:
            seed: [1, 2]
            optimizer.lr: [0.001, 0.01]
        metadata:
          description: reference project end to end
        """)


def _check_runs(sweep: Sweep, root: Path) -> None:
    status = sweep.status()
    assert (status["state"] == "COMPLETED").all(), status[["source", "state", "error"]].to_string()
    assert sweep.directory.parent == root / "sweeps" / "outputs"  # where the reference puts sweeps
    results = sweep.results()
    assert sorted(results["loss"].round(6)) == [0.001, 0.002, 0.01, 0.02]
    for job_name in status["job_name"]:
        run = json.loads((sweep.directory / "tasks" / job_name / "run.json").read_text())
        assert run["group"] == sweep.id and run["wandb_project"] == "demo-wandb"


def test_a_reference_project_runs_from_the_command_line_with_no_other_set_up(tmp_path):
    root = tmp_path / "demo"
    _reference_project(root)
    env = {**os.environ, "HOME": str(tmp_path / "home")}
    out = subprocess.run([sys.executable, "-m", "hsm_notebook", "run", "sweeps/sweep.yaml"], cwd=root, env=env,
                         capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"Project config {root / '.hsm' / 'config.yaml'}" in out.stdout
    (sweep_dir,) = (root / "sweeps" / "outputs").iterdir()
    sweep = Sweep.attach(sweep_dir, resume=False)
    _check_runs(sweep, root)
    assert sweep.metadata == {"description": "reference project end to end"}
    assert sweep._record["origin"]["hydra_defaults"] == [{"override hydra/launcher": "basic"}]


@pytest.fixture()
def remote_hydra_python():
    """An interpreter the test host's user can run, with hydra-core: the host's own python3
    with copies of this kernel's hydra-core and what it imports on its path (a ``python_path``)."""
    import shutil
    import tempfile

    import antlr4
    import hydra
    import omegaconf
    import packaging

    folder = Path(tempfile.mkdtemp(prefix="hsmt-remote-python-"))
    try:
        for module in (hydra, omegaconf, antlr4, packaging):
            package = Path(module.__file__).parent
            shutil.copytree(package, folder / "site" / package.name, ignore=shutil.ignore_patterns("__pycache__"))
        python = folder / "python3"
        python.write_text(f'#!/bin/sh\nPYTHONPATH={folder / "site"}${{PYTHONPATH:+:$PYTHONPATH}} '
                          'exec /usr/bin/python3 "$@"\n')
        for path in [folder, *folder.rglob("*")]:
            path.chmod(0o755)
        yield str(python)
    finally:
        shutil.rmtree(folder)


def test_a_reference_project_with_a_distributed_block_runs_on_its_ssh_remote(tmp_path, ssh_host, monkeypatch,
                                                                              remote_hydra_python):
    h = ssh_host
    home = tmp_path / "home"
    _write(home / ".ssh" / "config", f"""
        Host labbox
          HostName {h.host}
          Port {h.port}
          User {h.user}
          IdentityFile {h.client_key}
          UserKnownHostsFile {h.known_hosts}
        """)
    monkeypatch.setenv("HOME", str(home))
    root = tmp_path / "demo"
    sweep_file = _reference_project(root, """
        distributed:
          enabled: true
          local_max_jobs: 0
          remotes:
            labbox: {max_parallel_jobs: 2, remote_root: ~/hsm-project-test, python_path: PYTHON}
        """.replace("PYTHON", remote_hydra_python))
    monkeypatch.chdir(root)
    options = launch_options(SweepFile.load(sweep_file), poll_interval=0.2)
    assert [s.name for s in options["sources"]] == ["labbox"] and options["reference_args"] is True
    sweep = Sweep(**options).run()
    _check_runs(sweep, root)
    assert set(sweep.status()["source"]) == {"labbox"}
    ran_in = {json.loads((sweep.directory / "tasks" / n / "run.json").read_text())["seed"]
              for n in sweep.status()["job_name"]}
    assert ran_in == {1, 2}
