"""``describe()`` and ``from_description()`` are inverses for every source, users' own included:
``Sweep.attach`` rebuilds each source from the record the sweep wrote."""

from __future__ import annotations

import json

import pytest

from hsm_notebook import ComputeSource, ConfigError
from hsm_notebook.core.base import registry
from tests.sources import UserSource


def round_trip(source: ComputeSource) -> ComputeSource:
    record = json.loads(json.dumps(source.describe()))  # as stored in sweep.yaml: plain data
    rebuilt = registry.rebuild(record)
    assert type(rebuilt) is type(source)
    assert rebuilt.describe() == source.describe()
    assert type(source).from_description(record).describe() == record
    return rebuilt


def test_every_builtin_source_round_trips(make_source, workdir):
    round_trip(make_source("plain", 3))
    rebuilt = round_trip(make_source("driven", 2, python_path="python", script_path="job.py",
                                     project_dir=str(workdir), arg_style="argparse"))
    assert rebuilt.own_template.argv({"x": 1})[-2:] == ["job.py", "--x=1"]
    assert rebuilt.own_template.workdir == str(workdir)
    round_trip(make_source("cmd", 1, command=["python", "job.py", "--fast"]))


def test_a_records_class_path_names_the_class():
    record = UserSource("u", flavour="spicy").describe()
    assert record["type"] == "user"
    assert record["class"] == f"{UserSource.__module__}:UserSource"
    rebuilt = round_trip(UserSource("u", 3, flavour="spicy"))
    assert (rebuilt.name, rebuilt.max_parallel_jobs, rebuilt.flavour) == ("u", 3, "spicy")


def test_a_class_defined_again_is_found_by_its_path():
    """A new kernel runs the notebook cell that defines the class again: the new class rebuilds it."""
    namespace = {"ComputeSource": ComputeSource, "__name__": "kernel_cell_module"}
    cell = "\n".join(["class CellSource(ComputeSource):",
                      "    def __init__(self, name='cell', max_parallel_jobs=1):",
                      "        super().__init__(name, 'cell', max_parallel_jobs)",
                      *(f"    async def {m}(self, *a, **k): return True" for m in
                        ("setup", "submit_job", "get_job_status", "cancel_job", "collect_results",
                         "health_check", "cleanup"))])
    exec(cell, namespace)
    record = namespace["CellSource"]("c", 4).describe()
    assert record["class"] == "kernel_cell_module:CellSource"  # not importable: only the registry knows it
    exec(cell, namespace)  # the new kernel
    rebuilt = registry.rebuild(record)
    assert type(rebuilt) is namespace["CellSource"] and rebuilt.describe() == record


def test_a_builtin_record_without_a_class_path_is_rebuilt_by_type():
    """Sweeps recorded before class paths were written name only the type."""
    from hsm_notebook import LocalComputeSource

    record = {"type": "local", "name": "old", "max_parallel_jobs": 2, "gpus": None, "gpus_per_job": 1,
              "python": "python3", "cancel_grace": 5.0, "env": {}, "tags": []}
    rebuilt = registry.rebuild(record)
    assert type(rebuilt) is LocalComputeSource and rebuilt.name == "old"


@pytest.mark.parametrize("record, why", [
    ({"type": "gone", "class": "no_such_module_hsm:Gone", "name": "g", "max_parallel_jobs": 1}, "cannot be imported"),
    ({"type": "user", "class": f"{UserSource.__module__}:UserSource", "name": "u", "max_parallel_jobs": 1,
      "colour": "red"},
     "unexpected keyword argument 'colour'"),
    ({"type": "gone", "class": "json:dumps", "name": "j", "max_parallel_jobs": 1}, "not a ComputeSource"),
])
def test_a_source_that_cannot_be_rebuilt_says_to_pass_it_again(record, why):
    with pytest.raises(ConfigError, match=f"source named '{record['name']}'.*{why}.*sources=\\[") as info:
        registry.rebuild(record)
    assert info.value.field == "sources"


def test_a_slurm_source_with_an_ssh_login_node_round_trips(slurm_cluster, ssh_host, workdir):
    from hsm_notebook import SlurmComputeSource, SSHComputeSource
    from tests.contract.conftest import ssh_source

    source = SlurmComputeSource("hpc", 10, partition=slurm_cluster.partition, login=ssh_source(ssh_host, "login", 1),
                                script_path="job.py", project_dir=str(workdir))
    rebuilt = round_trip(source)
    assert type(rebuilt.login) is SSHComputeSource and rebuilt.login.target.port == ssh_host.port
