"""One environment set-up for every source: conda, venv, modules, shell lines and variables
expanded on the target, set up before each job's command on local, SSH and Slurm sources.

Real tools where this machine can have them: venvs made with ``python3 -m venv`` on the test
host (through the SSH connection, as its user), Environment Modules from Debian
(``environment-modules``: a real ``module`` function and a real modulefile).  conda, mamba and
micromamba cannot be installed here (not on Debian; not on PyPI), so conda is a FAKE: a small
``conda`` program that speaks conda's shell protocol (``shell.posix hook`` / ``shell.posix
activate``) with conda's own error for a missing environment, installed where conda usually
lives (``~/miniforge3/bin/conda``) or named by ``conda_exe``.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import textwrap
import time
from pathlib import Path

import asyncssh
import pytest

from hsm_notebook import ConfigError, LocalComputeSource, ParameterSpace, SourceError, Sweep
from hsm_notebook.core._loop import run_sync
from tests.contract.conftest import ssh_source

DATA = Path(__file__).parent / "data"
MODULES_INIT = Path("/usr/share/modules/init/sh")

#: Reports what it ran in, as its metrics (written directly: a venv without this package works too).
ENV_JOB = textwrap.dedent('''
    import json, os, sys
    info = {"prefix": sys.prefix, "conda": os.environ.get("CONDA_PREFIX", ""),
            "venv": os.environ.get("VIRTUAL_ENV", ""), "module": os.environ.get("HSM_TEST_MODULE", ""),
            "path": os.environ["PATH"], "pre": os.environ.get("HSM_PRE", "")}
    with open(os.path.join(os.environ["HSM_TASK_DIR"], "metrics.json"), "w") as f:
        json.dump(info, f)
''')

#: A FAKE conda (see the module docstring): ``shell.posix hook`` defines the ``conda`` function,
#: ``shell.posix activate ENV`` prints the activation, or conda's EnvironmentNameNotFound.
FAKE_CONDA = textwrap.dedent('''\
    #!/bin/sh
    # A FAKE conda for tests: conda's shell protocol over the folders in <its root>/envs.
    root=$(cd "$(dirname "$0")/.." && pwd)
    case "$1 $2" in
    "shell.posix hook")
      printf "export CONDA_EXE='%s/bin/conda'\\n" "$root"
      cat <<'HOOK'
    conda() {
      if [ "$1" = activate ]; then shift; __conda_s=$("$CONDA_EXE" shell.posix activate "$@") || return
        eval "$__conda_s"
      else "$CONDA_EXE" "$@"; fi
    }
    HOOK
      ;;
    "shell.posix activate")
      case "$3" in /*) p=$3 ;; *) p=$root/envs/$3 ;; esac
      if [ ! -d "$p/conda-meta" ]; then
        printf '\\nEnvironmentNameNotFound: Could not find conda environment: %s\\n' "$3" >&2
        printf 'You can list all discoverable environments with `conda info --envs`.\\n\\n' >&2
        exit 1
      fi
      printf "export CONDA_PREFIX='%s'\\nexport PATH='%s/bin':\\"\\$PATH\\"\\n" "$p" "$p" ;;
    *) echo "fake conda: $*" >&2; exit 2 ;;
    esac
''')
MODULEFILE = "#%Module1.0\nsetenv HSM_TEST_MODULE loaded\nprepend-path PATH /opt/hsm-test-module/bin\n"


def install_lines(root: str, modules: str) -> str:
    """Shell lines: the FAKE conda at ``root`` with one env ``myenv`` (a venv, so its python has its
    own prefix, plus conda-meta), and a real modulefile ``hsmtest/1.0`` under ``modules``."""
    return (f"mkdir -p {root}/bin {root}/envs {modules}/hsmtest && "
            f"printf '%s' {shlex.quote(FAKE_CONDA)} > {root}/bin/conda && chmod +x {root}/bin/conda && "
            f"{{ [ -d {root}/envs/myenv ] || /usr/bin/python3 -m venv --without-pip {root}/envs/myenv; }} && "
            f"mkdir -p {root}/envs/myenv/conda-meta && printf '%s' {shlex.quote(MODULEFILE)} > {modules}/hsmtest/1.0")


def _require_modules() -> None:
    if not MODULES_INIT.exists():
        pytest.fail("Environment Modules is not installed: apt-get install -y environment-modules "
                    "(scripts/test.sh installs it)", pytrace=False)


def _remote(h, command: str) -> str:
    async def go():
        async with asyncssh.connect(**h.connect_kwargs()) as conn:
            result = await conn.run(command)
            assert result.exit_status == 0, result.stderr
            return result.stdout
    return run_sync(go())


@pytest.fixture(scope="module")
def remote_tools(ssh_host):
    """The session's ssh host with, in its user's home: a venv ~/venvs/x, the FAKE conda at
    ~/miniforge3 (where conda is looked for) and a modulefile under ~/modulefiles."""
    _require_modules()
    h = ssh_host
    _remote(h, "[ -d ~/venvs/x ] || /usr/bin/python3 -m venv --without-pip ~/venvs/x; "
               + install_lines('"$HOME"/miniforge3', '"$HOME"/modulefiles'))
    return h


@pytest.fixture()
def local_tools(tmp_path):
    """The FAKE conda and a modulefile in a temp folder on this machine (local and Slurm jobs run here)."""
    _require_modules()
    subprocess.run(["sh", "-c", install_lines(shlex.quote(str(tmp_path / "conda")),
                                               shlex.quote(str(tmp_path / "modulefiles")))], check=True)
    return tmp_path


def _env_sweep(workdir, sources, n=1):
    (workdir / "env_job.py").write_text(ENV_JOB)
    return Sweep(ParameterSpace(grid={"x": list(range(n))}), ["python", "env_job.py"], sources, workdir=workdir,
                 poll_interval=0.2)


def _infos(sweep):
    status = sweep.status()
    assert (status["state"] == "COMPLETED").all(), status[["state", "error"]].to_string()
    return [dict(r) for _, r in sweep.results().iterrows()]


# -- rendering (pure) -------------------------------------------------------------------------
def test_the_environment_script_is_the_recorded_text():
    from hsm_notebook.core.spec.environment import Environment, environment_script

    env = Environment(conda_env="myenv", venv="~/venvs/x", modules=("cuda/12.1", "gcc"),
                      pre_script=("export A=1", "if true; then\n  source ~/.profile_extra\nfi"),
                      env={"PATH": "/opt/x/bin:$PATH", "NOTE": 'it\'s "$(not run)" ${HOME}'})
    text = environment_script(env)
    assert text == (DATA / "environment.sh").read_text()
    assert text.rstrip().endswith('exec "$@"') and "$(not run)" not in text.replace("\\$(not run)", "")
    mm = environment_script(Environment(conda_env="~/envs/p", conda_exe="~/bin/micromamba"))
    assert '_hsm_c="$HOME"/bin/micromamba' in mm and 'shell hook -s posix' in mm
    assert '"$_hsm_n" activate "$HOME"/envs/p' in mm
    assert environment_script(Environment(env={"X": "1"})).count("_hsm_w=") == 2  # start, env


def test_environment_fields_are_checked_and_named():
    from hsm_notebook.core.spec.environment import Environment

    for bad, field in [({"modules": ["cuda 12; rm -rf"]}, "environment.modules"),
                       ({"env": {"1X": "a"}}, "environment.env"), ({"venv": "a\nb"}, "environment.venv"),
                       ({"conda_exe": "conda"}, "environment.conda_exe"), ({"condaenv": "x"}, "environment")]:
        with pytest.raises(ConfigError) as err:
            Environment.from_dict(bad)
        assert err.value.field == field
    env = Environment.from_dict({"conda_env": "e", "modules": "cuda/12.1, gcc", "pre_script": "export A=1",
                                 "env": {"N": 3}})
    assert env.modules == ("cuda/12.1", "gcc") and env.pre_script == ("export A=1",) and env.env == {"N": "3"}
    assert Environment.from_dict(env.to_dict()) == env and not Environment() and env


def test_a_self_referencing_env_value_is_refused_with_where_it_belongs(workdir):
    """Before: ``env={"PATH": "<venv>/bin:$PATH"}`` reached the job with a literal ``$PATH``."""
    for make in (lambda: LocalComputeSource(env={"PATH": "/venv/bin:$PATH"}),
                 lambda: Sweep(ParameterSpace(grid={"x": [1]}), ["python", "job.py"], workdir=workdir,
                               env={"LD_LIBRARY_PATH": "/x/lib:${LD_LIBRARY_PATH}"})):
        with pytest.raises(ConfigError, match=r"env: .*literally.*environment=Environment\(env="):
            make()


@pytest.mark.parametrize("shell", ["bash", "dash"])
def test_a_failing_line_stops_the_script_and_names_itself(tmp_path, shell):
    """Every kind of line, failing, under bash and under plain dash (the re-exec line removed)."""
    from hsm_notebook.core.spec.environment import Environment, environment_script

    _require_modules()
    cases = {
        Environment(modules=("cuda/99",)): "environment: module load cuda/99: ERROR: Unable to locate a modulefile",
        Environment(venv=str(tmp_path / "none")): f"environment: venv {tmp_path}/none: no bin/activate in",
        Environment(pre_script=(". /nonexistent/x",)): "environment: pre_script: . /nonexistent/x: ",
        Environment(pre_script=("exit 0",)): "environment: pre_script: exit 0: ended the shell (exit 0)",
        Environment(conda_env="x", conda_exe="/nonexistent/conda"):
            "environment: conda activate x: conda_exe /nonexistent/conda: not found",
    }
    for env, said in cases.items():
        script = tmp_path / "env.sh"
        text = environment_script(env)
        script.write_text(text if shell == "bash" else text.replace(text.splitlines()[2] + "\n", ""))
        run = subprocess.run([shell, str(script), "echo", "RAN"], capture_output=True, text=True,
                             env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "HSM_TASK_DIR": str(tmp_path)})
        assert run.returncode != 0 and "RAN" not in run.stdout
        assert run.stderr.splitlines()[-1].startswith(said), (env, run.stderr)
    assert not list(tmp_path.glob(".hsm-env.*"))  # its scratch file is gone


# -- SSH (a real sshd host) -------------------------------------------------------------------
def test_python_with_a_tilde_runs_a_remote_only_venv(workdir, remote_tools):
    """Before: ``python="~/venvs/x/bin/python"`` was passed with a literal ``~``."""
    h = remote_tools
    sweep = _env_sweep(workdir, [ssh_source(h, "tilde", 1, python="~/venvs/x/bin/python")]).run()
    [info] = _infos(sweep)
    assert info["prefix"] == f"/home/{h.user}/venvs/x"


def test_ssh_environment_venv_conda_modules_and_expanded_env(workdir, remote_tools):
    from hsm_notebook.core.spec.environment import Environment

    h = remote_tools
    home = f"/home/{h.user}"
    venv = ssh_source(h, "venv", 1, environment=Environment(venv="~/venvs/x", env={"PATH": "/opt/x/bin:$PATH"}))
    conda = ssh_source(h, "conda", 1, env={"MODULEPATH": f"{home}/modulefiles"},
                       environment={"conda_env": "myenv", "modules": ["hsmtest/1.0"],
                                    "pre_script": ["export HSM_PRE=yes"]})
    sweep = _env_sweep(workdir, [venv, conda], n=4).run()
    infos = {r["source"]: r for _, r in sweep.status().iterrows()}
    results = {i["task_id"]: i for i in _infos(sweep)}
    v = results[infos["venv"]["task_id"]]
    assert v["prefix"] == v["venv"] == f"{home}/venvs/x"
    assert v["path"].startswith(f"/opt/x/bin:{home}/venvs/x/bin:") and "/usr/bin" in v["path"]
    c = results[infos["conda"]["task_id"]]
    assert c["prefix"] == c["conda"] == f"{home}/miniforge3/envs/myenv"  # found where conda lives
    assert c["module"] == "loaded" and "/opt/hsm-test-module/bin" in c["path"] and c["pre"] == "yes"


def test_a_broken_environment_is_refused_at_setup_naming_the_line(workdir, remote_tools):
    from hsm_notebook.core.spec.environment import Environment

    h = remote_tools
    (workdir / "env_job.py").write_text(ENV_JOB)
    cases = [
        (dict(environment=Environment(conda_env="nope")),
         r"conda activate nope: EnvironmentNameNotFound: Could not find conda environment: nope"),
        (dict(environment=Environment(modules=("cuda/99",))),
         r"module load cuda/99: ERROR: Unable to locate a modulefile for 'cuda/99'"),
        (dict(python="~/venvs/none/bin/python"),
         rf"python '/home/{h.user}/venvs/none/bin/python': not found on "),
        (dict(environment=Environment(venv="~/venvs/x"), python="python2.7"),
         r"python 'python2.7': not found on .* in its environment \(venv ~/venvs/x\)"),
    ]
    for kwargs, said in cases:
        sweep = Sweep(ParameterSpace(grid={"x": [1]}), ["python", "env_job.py"],
                      [ssh_source(h, "broken", 1, **kwargs)], workdir=workdir)
        with pytest.raises(SourceError, match=said):
            sweep.run()


def test_a_python_that_does_not_run_is_said_in_words(workdir, remote_tools):
    """Before: a raw ``CommandError ... exit code 127`` from the setup's facts command."""
    (workdir / "env_job.py").write_text(ENV_JOB)
    sweep = Sweep(ParameterSpace(grid={"x": [1]}), ["python", "env_job.py"],
                  [ssh_source(remote_tools, "nopy", 1, python="/nonexistent/python3")], workdir=workdir)
    with pytest.raises(SourceError, match=r"python '/nonexistent/python3': not found on .*set python="):
        sweep.run()


def test_a_job_path_never_hides_the_launcher(workdir, remote_tools):
    """Before: with ``PATH`` set for the job, ``setsid`` was looked up in it, not found, and the job
    was LOST with no cause.  Now the launcher uses the host's PATH and the job gets its own."""
    h = remote_tools
    _remote(h, "mkdir -p ~/onlypy && ln -sf /usr/bin/python3 ~/onlypy/python3")
    only = f"/home/{h.user}/onlypy"
    [info] = _infos(_env_sweep(workdir, [ssh_source(h, "path", 1, env={"PATH": only})]).run())
    assert info["path"] == only
    with pytest.raises(SourceError, match=r"python 'python3': not found on "):  # and a PATH without it: at setup
        _env_sweep(workdir, [ssh_source(h, "nopath", 1, env={"PATH": "/nonexistent"})]).run()


def _drive_until_done(source, workdir, sweep_dir, break_env):
    """The reference's driving style: setup (the environment works), then ``break_env()``, then a job."""
    (workdir / "env_job.py").write_text(ENV_JOB)
    assert run_sync(source.setup(sweep_dir, "envfail")) is True
    break_env()
    job = run_sync(source.submit_job({"x": 1}, "task_001", "envfail"))
    deadline = time.monotonic() + 60
    while str(state := run_sync(source.get_job_status(job))).upper() not in ("COMPLETED", "FAILED", "LOST"):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    run_sync(source.collect_results([job]))
    from hsm_notebook import JobState
    outcome = run_sync(source.outcome(job, JobState(str(state).upper())))
    run_sync(source.cleanup())
    return outcome


def test_an_activation_failing_at_run_time_fails_the_job_with_its_words(workdir, remote_tools, tmp_path):
    from hsm_notebook import JobState

    h = remote_tools
    _remote(h, install_lines('"$HOME"/gone', '"$HOME"/modulefiles'))
    source = ssh_source(h, "late", 1, command=["python", "env_job.py"], project_dir=str(workdir),
                        environment={"conda_env": "~/gone/envs/myenv", "conda_exe": "~/gone/bin/conda"})
    outcome = _drive_until_done(source, workdir, tmp_path / "ssh-run",
                                lambda: _remote(h, "rm -rf ~/gone/envs/myenv/conda-meta"))
    assert outcome.state == JobState.FAILED
    assert "conda activate ~/gone/envs/myenv: EnvironmentNameNotFound" in outcome.error


def test_local_activation_failing_at_run_time_fails_the_job_with_its_words(workdir, local_tools, tmp_path):
    from hsm_notebook import JobState

    conda = local_tools / "conda"
    source = LocalComputeSource("late", 1, command=["python", "env_job.py"], project_dir=str(workdir),
                                environment={"conda_env": "myenv", "conda_exe": str(conda / "bin" / "conda")})
    outcome = _drive_until_done(source, workdir, tmp_path / "local-run",
                                lambda: (conda / "envs" / "myenv" / "conda-meta").rmdir())
    assert outcome.state == JobState.FAILED
    assert "environment: conda activate myenv: EnvironmentNameNotFound" in outcome.error


# -- the same Environment on this machine and on Slurm ----------------------------------------------
@pytest.mark.parametrize("kind", ["local", "slurm"])
def test_the_same_environment_on_local_and_slurm(workdir, local_tools, kind, request):
    from hsm_notebook.core.spec.environment import Environment

    prefix = str(local_tools / "conda" / "envs" / "myenv")
    env = Environment(conda_env=prefix, conda_exe=str(local_tools / "conda" / "bin" / "conda"),
                      modules=("hsmtest/1.0",), pre_script=("export HSM_PRE=yes",),
                      env={"PATH": "/opt/x/bin:$PATH"})
    extra = {"env": {"MODULEPATH": str(local_tools / "modulefiles")}, "environment": env}
    if kind == "local":
        source = LocalComputeSource("here", 2, **extra)
    else:
        from hsm_notebook import SlurmComputeSource

        cluster = request.getfixturevalue("slurm_cluster")
        source = SlurmComputeSource("cluster", 2, partition=cluster.partition, slurm_env=dict(cluster.env),
                                    poll_interval=0.3, **extra)
    for info in _infos(_env_sweep(workdir, [source], n=2).run()):
        assert info["prefix"] == info["conda"] == prefix  # "python" is the environment's
        assert info["module"] == "loaded" and info["pre"] == "yes"
        assert info["path"].startswith("/opt/x/bin:") and f"{prefix}/bin" in info["path"]


def test_slurm_resource_modules_and_pre_script_run_in_each_job(workdir, local_tools, slurm_cluster):
    """Before: ``module load`` ran in the batch script, where no ``module`` function exists."""
    from hsm_notebook import ResourceSpec, SlurmComputeSource

    spec = ResourceSpec(modules=("hsmtest/1.0",), pre_script="export HSM_PRE=from-resources")
    source = SlurmComputeSource("res", 2, partition=slurm_cluster.partition, slurm_env=dict(slurm_cluster.env),
                                poll_interval=0.3, resources=spec,
                                env={"MODULEPATH": str(local_tools / "modulefiles")})
    [info] = _infos(_env_sweep(workdir, [source]).run())
    assert info["module"] == "loaded" and info["pre"] == "from-resources"


# -- records: describe(), sweep files, the panel ----------------------------------------------
def test_environment_round_trips_through_every_source_record(tmp_path):
    from hsm_notebook import SlurmComputeSource, SSHComputeSource
    from hsm_notebook.core.base import registry
    from hsm_notebook.core.spec.environment import Environment

    env = Environment(conda_env="e", venv="~/v", modules=("m/1",), pre_script=("export A=1",), env={"P": "$HOME/x"})
    for source in (LocalComputeSource("l", 1, environment=env), SSHComputeSource("h", "s", environment=env),
                   SlurmComputeSource("c", 1, environment=env.to_dict())):
        record = json.loads(json.dumps(source.describe()))
        assert record["environment"] == env.to_dict()
        rebuilt = registry.rebuild(record)
        assert rebuilt.environment == env and rebuilt.describe() == source.describe()


def test_a_sweep_file_sets_the_environment_of_its_sources(workdir):
    (workdir / "sweep.yaml").write_text(textwrap.dedent("""\
        command: [python, job.py]
        sweep:
          grid: {x: [1]}
        environment:
          venv: ~/venvs/x
          modules: [cuda/12.1]
          pre_script:
            - export A=1
          env: {PATH: "/opt/x/bin:$PATH"}
    """))
    mine = LocalComputeSource("mine", 1, environment={"conda_env": "other"})
    sweep = Sweep.from_yaml(workdir / "sweep.yaml", [LocalComputeSource("plain", 1), mine])
    recorded = {s["name"]: s["environment"] for s in sweep._record["sources"]}
    assert recorded["plain"] == {"venv": "~/venvs/x", "modules": ["cuda/12.1"], "pre_script": ["export A=1"],
                                 "env": {"PATH": "/opt/x/bin:$PATH"}}
    assert recorded["mine"] == {"conda_env": "other"}  # a source's own environment is kept
    (workdir / "bad.yaml").write_text("sweep:\n  grid: {x: [1]}\nenvironment:\n  modules: 'a;b'\n")
    with pytest.raises(ConfigError, match="environment.modules"):
        Sweep.from_yaml(workdir / "bad.yaml", command=["python", "job.py"])


def test_the_panel_forms_set_the_environment_and_name_bad_fields():
    from hsm_notebook.ui.sources_view import FORMS, SourcesView

    errors: list = []
    view = SourcesView([], errors.append)
    for kind in FORMS:
        view.kind.value = kind
        form = view.form
        if hasattr(form, "host"):
            form.host.value = "example.invalid"
        form.name.value = f"n{len(view.sources)}"
        env = form.environment
        env.conda.value, env.venv.value, env.modules.value = "myenv", "~/venvs/x", "cuda/12.1, gcc"
        env.pre.value = "export A=1\nexport B=2\n"
        view.add_button.click()
        assert not errors, errors
        source = view.sources[-1]
        assert source.environment.to_dict() == {"conda_env": "myenv", "venv": "~/venvs/x",
                                                "modules": ["cuda/12.1", "gcc"],
                                                "pre_script": ["export A=1\nexport B=2"]}
        form = view.form  # after an add the form is a fresh one (a free name), ready for another
        if hasattr(form, "host"):
            form.host.value = "example.invalid"
        form.environment.modules.value = "cuda 12; rm"
        form.name.value = "another"
        view.add_button.click()
        assert isinstance(errors[-1], ConfigError) and errors[-1].field == "environment.modules"
        errors.clear()
