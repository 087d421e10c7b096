"""Issue 20 (sources' clean-up), without servers: the one preparation of interpreter and environment
(``core.base.prepare``: probing without an environment, a wrapped probe, its output returned), health
left to the monitor, and the batch base's recovery claim built from ``JobPaths``."""

from __future__ import annotations

import asyncio
import re
import shlex
import sys
from pathlib import Path

import pytest

from hsm_notebook import LocalComputeSource
from hsm_notebook.core.base.prepare import WRITE, check_version, prepare_environment
from hsm_notebook.core.base.shell import CommandResult, LocalShell
from hsm_notebook.core.model.errors import SourceError
from hsm_notebook.core.model.state import SourceHealth
from hsm_notebook.core.spec.environment import Environment
from hsm_notebook.core.spec.job import JobTemplate
from hsm_notebook.core.spec.jobpaths import NAMES, NEVER, JobPaths, sh_claim
from hsm_notebook.sources import SlurmComputeSource


def _bound(tmp_path: Path, command: tuple[str, ...] = ("python", "job.py")) -> LocalComputeSource:
    source = LocalComputeSource("here", 1)
    source.bind(JobTemplate(command), tmp_path, "s", lambda: None)
    return source


def _runner(seen: list[str]):
    async def run(script: str, *args: str) -> CommandResult:  # ``sh -c script hsm-env args`` on this machine
        seen.append(script)
        return await LocalShell("here").run(shlex.join(["sh", "-c", script, "hsm-env", *args]), check=False,
                                            timeout=60)
    return run


def test_always_probes_without_an_environment_and_returns_what_the_probe_printed(tmp_path):
    source, seen = _bound(tmp_path), []
    prepared = asyncio.run(prepare_environment(
        source, Environment(), _runner(seen), folder=str(tmp_path), workdir=str(tmp_path), where="this machine",
        command=[sys.executable, "job.py"], always=True))
    assert prepared.script is None and len(seen) == 1  # no script to write: the probe alone
    found = check_version(source, prepared.output, "this machine")
    assert found == ".".join(map(str, sys.version_info[:3]))


def test_without_always_and_without_an_environment_nothing_runs(tmp_path):
    seen: list[str] = []
    prepared = asyncio.run(prepare_environment(
        _bound(tmp_path), Environment(), _runner(seen), folder=str(tmp_path), workdir=str(tmp_path),
        where="this machine", command=[sys.executable, "job.py"]))
    assert prepared.script is None and prepared.output == "" and seen == []


def test_the_wrapper_wraps_the_probe_and_never_the_write(tmp_path):
    seen: list[str] = []
    environment = Environment(env={"HSM_PREPARE_TEST": "1"})
    prepared = asyncio.run(prepare_environment(
        _bound(tmp_path), environment, _runner(seen), folder=str(tmp_path), workdir=str(tmp_path),
        where="this machine", command=[sys.executable, "job.py"], wrap=lambda probe: f"echo WRAPPED; {probe}"))
    assert prepared.script is not None and Path(prepared.script).is_file()  # written, under its content's name
    assert prepared.output.splitlines()[0] == "WRAPPED"
    assert seen[0].startswith(f"{WRITE} && echo WRAPPED; ")  # the script written as is, then the wrapped probe


def test_a_missing_program_is_refused_in_words_even_without_an_environment(tmp_path):
    with pytest.raises(SourceError) as err:
        asyncio.run(prepare_environment(
            _bound(tmp_path, ("no-such-program-hsm", "x")), Environment(), _runner([]), folder=str(tmp_path),
            workdir=str(tmp_path), where="this machine", command=["no-such-program-hsm", "x"], always=True))
    assert "no-such-program-hsm" in str(err.value) and "not found" in str(err.value)


# -- health: the monitor writes it, a source only answers ------------------------------------------
def test_a_source_answers_health_checks_and_leaves_its_health_to_the_monitor(tmp_path):
    source = LocalComputeSource("here", 2, command=["python", "-c", "pass"])

    async def main() -> dict:
        await source.setup(tmp_path, "s")
        return await source.health_check()

    report = asyncio.run(main())
    assert report["status"] in ("healthy", "degraded") and report["slots"] == 2
    assert "free_slots" not in report  # slots in use are the run state's fact, not the source's
    assert source.stats.health_status == SourceHealth.UNKNOWN  # not written by setup nor by the check


# -- the batch base's recovery claim: JobPaths' names and its one claim snippet --------------------
def test_recovery_claims_an_unstarted_task_with_the_one_claim_and_reads_a_started_ones_id(tmp_path):
    source = SlurmComputeSource("cluster", 2)
    source.tasks_dir = str(tmp_path / "tasks")
    started = JobPaths(tmp_path / "tasks" / "0123456789ab-2")
    started.folder.mkdir(parents=True)
    started.pid.write_text("4242\n")
    started.scheduler_id.write_text("77_3\n")
    scripts: list[str] = []
    real_run = source._run

    async def spy(kind: str, argv: list[str], check: bool = True) -> CommandResult:
        scripts.append(argv[2])
        return await real_run(kind, argv, check)

    source._run = spy  # type: ignore[method-assign]  # a spy around the real command, which still runs

    async def main() -> tuple[str | None, str | None]:
        return await source.recover_job("0123456789ab-1"), await source.recover_job("0123456789ab-2")

    claimed, adopted = asyncio.run(main())
    assert claimed is None and adopted == "77_3"
    assert (tmp_path / "tasks" / "0123456789ab-1" / NAMES.pid).read_text().strip() == NEVER
    assert sh_claim(JobPaths.shell("1")) in scripts[0]
    assert re.search(rf'"\$1/{NAMES.scheduler_id}"', scripts[0])
