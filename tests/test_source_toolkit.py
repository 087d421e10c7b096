"""The source toolkit (issue 20, item 3) and the typed remote-host protocol (item 5), without servers:
the batching helper, the shared job options, the batch-scheduler base, RemoteHost."""

from __future__ import annotations

import asyncio
import inspect
import typing

import pytest

from hsm_notebook import ConfigError, LocalComputeSource, SSHComputeSource
from hsm_notebook.core.base.batching import Batcher
from hsm_notebook.core.base.remote import RemoteHost
from hsm_notebook.core.model.state import JobState, ResourceSpec
from hsm_notebook.core.spec.options import JobOptions
from hsm_notebook.sources import SlurmComputeSource
from hsm_notebook.sources.batch import BatchSchedulerSource, array_script
from hsm_notebook.sources.slurm_login import TaskFiles


# -- batching ----------------------------------------------------------------------------------
def test_items_of_one_loop_turn_are_flushed_together_in_chunks():
    calls: list[list[int]] = []

    async def flush(items: list[int]) -> list[int]:
        calls.append(list(items))
        return [i * 10 for i in items]

    async def main() -> list[int]:
        batcher: Batcher[int, int] = Batcher(flush, size=3)
        return list(await asyncio.gather(*(batcher.submit(i) for i in range(7))))

    assert asyncio.run(main()) == [0, 10, 20, 30, 40, 50, 60]
    assert calls == [[0, 1, 2], [3, 4, 5], [6]]


def test_a_failed_chunk_reaches_every_caller_unless_on_error_answers():
    async def flush(items: list[str]) -> list[str]:
        raise OSError("link down")

    async def main(on_error):
        batcher: Batcher[str, typing.Any] = Batcher(flush, size=None, on_error=on_error)
        return await asyncio.gather(*(batcher.submit(x) for x in "ab"), return_exceptions=True)

    failed = asyncio.run(main(None))
    assert [type(r) for r in failed] == [OSError, OSError]
    assert asyncio.run(main(lambda exc, items: [f"maybe {i}" for i in items])) == ["maybe a", "maybe b"]


def test_a_cancelled_caller_leaves_the_others_answered():
    async def flush(items: list[int]) -> list[int]:
        await asyncio.sleep(0.01)
        return items

    async def main():
        batcher: Batcher[int, int] = Batcher(flush, size=None, delay=0.01)
        first = asyncio.ensure_future(batcher.submit(1))
        second = asyncio.ensure_future(batcher.submit(2))
        await asyncio.sleep(0)
        first.cancel()
        return await second, first.cancelled()

    assert asyncio.run(main()) == (2, True)


# -- the shared job options --------------------------------------------------------------------
@pytest.mark.parametrize("cls", [LocalComputeSource, SSHComputeSource, SlurmComputeSource])
def test_every_source_takes_its_job_options_by_keyword_and_lists_them_in_its_signature(cls):
    params = inspect.signature(cls).parameters
    for name in cls.job_options:
        assert name in JobOptions.names()
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY, name
    args = ("host",) if cls is SSHComputeSource else ()
    with pytest.raises(TypeError, match="unexpected keyword argument 'colour'"):
        cls(*args, colour="red")


@pytest.mark.parametrize("cls", [LocalComputeSource, SSHComputeSource, SlurmComputeSource])
def test_the_options_given_are_the_options_recorded(cls):
    args = ("host",) if cls is SSHComputeSource else ()
    source = cls(*args, env={"A": "1"}, tags=["fast"], python="/opt/py/bin/python",
                 environment={"venv": "~/v"}, command=["python", "job.py"])
    record = source.describe()
    assert (record["env"], record["tags"], record["python"]) == ({"A": "1"}, ["fast"], "/opt/py/bin/python")
    assert record["environment"] == {"venv": "~/v"} and record["command"] == ["python", "job.py"]
    assert source.substitute(["python", "-c", "1"]) == ["/opt/py/bin/python", "-c", "1"]
    assert type(source).from_description(record).describe() == record


def test_an_environment_with_its_own_python_is_used_unless_one_is_given():
    assert LocalComputeSource(environment={"conda_env": "x"}).python == "python"
    assert SlurmComputeSource(environment={"venv": "~/v"}).substitute(["python3", "a.py"]) == ["python", "a.py"]
    assert SSHComputeSource("h").python == "python3"


def test_bad_options_are_refused_in_words_naming_the_field():
    with pytest.raises(ConfigError) as err:
        LocalComputeSource(gpus=[0], gpus_per_job=2)
    assert err.value.field == "gpus"
    with pytest.raises(ConfigError, match="would reach the job literally"):
        SSHComputeSource("h", env={"PATH": "/x/bin:$PATH"})


def test_the_panel_forms_ask_for_the_options_from_the_dataclass():
    pytest.importorskip("ipywidgets")
    from hsm_notebook.ui.sources_view import LocalForm, OptionFields, SSHForm

    form = LocalForm()
    assert form.gpus.description == JobOptions.__dataclass_fields__["gpus"].metadata["label"]
    form.gpus.value = "0, 1"
    assert form.build().gpus == [0, 1]
    assert SSHForm().python.value == "python3"
    fields = OptionFields(("env", "tags"))
    fields["env"].value, fields["tags"].value = "A=1\nB=x=y", "fast, gpu"
    assert fields.values() == {"env": {"A": "1", "B": "x=y"}, "tags": ["fast", "gpu"]}


# -- the batch-scheduler base: a second scheduler is a few declarations -------------------------
class FakePBS(BatchSchedulerSource):
    """A fake PBS-like scheduler, declared over the base (no server: rendering and reading only)."""

    source_type = "fakepbs"
    scheduler, submit_command, status_command, cancel_command = "PBS", "qsub", "qstat", "qdel"
    states = {"Q": JobState.QUEUED, "R": JobState.RUNNING, "F": JobState.COMPLETED}

    def __init__(self, name: str = "pbs", max_parallel_jobs: int = 4, **options: typing.Any):
        super().__init__(name, "fakepbs", max_parallel_jobs, options=JobOptions(**options))

    def directives(self, spec: ResourceSpec) -> list[str]:
        return [f"#PBS -l walltime={spec.walltime}"] if spec.walltime else []

    def render_array(self, name: str, manifest: str) -> str:
        return array_script([f"#PBS -N {name}", *self.directives(self.resources)], manifest, self.tasks_dir,
                            "$PBS_JOBID", "PBS_ARRAY_INDEX")

    def submit_argv(self, script: str, n: int, throttle: int | None) -> list[str]:
        return ["qsub", "-J", f"0-{n - 1}" + (f"%{throttle}" if throttle else ""), script]

    def status_argv(self, arrays: list[str]) -> list[str]:
        return ["qstat", "-t", *arrays]

    def parse_status(self, stdout: str) -> dict[str, tuple[str, str]]:
        return {job: (state, "") for job, state in (line.split() for line in stdout.splitlines())}

    async def health_check(self) -> dict[str, typing.Any]:
        return {"status": "healthy"}


def test_a_second_scheduler_over_the_base_renders_and_reads_its_own_words():
    source = FakePBS()
    source.tasks_dir = "/scratch/tasks"
    script = source.render_array("hsm-x", "/scratch/slurm/c.jobs")
    assert script.startswith("#!/bin/bash\n#PBS -N hsm-x\n")
    assert 'job=$(sed -n "$((PBS_ARRAY_INDEX + 1))p" /scratch/slurm/c.jobs)' in script
    assert script.rstrip().endswith('exec /bin/sh /scratch/tasks/"$job"/run.sh')
    assert source.commands == {"qsub": 0, "qstat": 0, "qdel": 0, "other": 0}
    tasks = source.tasks
    ids = tasks.submitted("7", 2)
    assert tasks.decide(ids[0], ("R", ""), None) == JobState.RUNNING
    assert tasks.decide(ids[1], None, TaskFiles(None, False, 0, True)) == JobState.CANCELLED
    assert "cancelled outside hsm_notebook (qdel): PBS lists it no more" in tasks.note(ids[1], JobState.CANCELLED)
    assert tasks.decide(ids[0], ("F", ""), TaskFiles(0, False, 0, False)) == JobState.COMPLETED


def test_slurm_is_declared_over_the_batch_base():
    source = SlurmComputeSource(partition="debug", array_throttle=2)
    assert isinstance(source, BatchSchedulerSource)
    assert source.submit_argv("c.sh", 10, 2) == ["sbatch", "--parsable", "--array=0-9%2", "c.sh"]
    assert source.commands == {"sbatch": 0, "squeue": 0, "scancel": 0, "other": 0}
    with pytest.raises(ConfigError):
        SlurmComputeSource(max_queued=0)


# -- the remote-host protocol ------------------------------------------------------------------
def test_the_ssh_source_offers_every_member_of_the_remote_host_protocol():
    members = [m for m in vars(RemoteHost) if not m.startswith("_")] + list(typing.get_type_hints(RemoteHost))
    assert {"run", "fetch", "close", "home", "tasks_dir", "workdir", "pythonpath", "python", "name"} <= set(members)
    source = SSHComputeSource("h", "n")
    for member in members:
        assert hasattr(type(source), member) or member in vars(source), member
    signature = inspect.signature(SSHComputeSource.run)
    assert list(signature.parameters)[1:] == ["script", "check", "timeout"]
