"""Issue 20 (sources' clean-up), on a loopback sshd: the SSH source prepares its interpreter through
the shared ``core.base.prepare`` (probing without an environment, the Python version read from the
probe) and leaves its health to the monitor."""

from __future__ import annotations

import re
import secrets

import pytest

from hsm_notebook.core._loop import run_sync
from hsm_notebook.core.model.state import SourceHealth
from hsm_notebook.sources import ssh_remote
from tests.contract.conftest import ssh_source

pytestmark = pytest.mark.ssh


def test_ssh_setup_probes_through_the_shared_preparation_and_health_is_left_to_the_monitor(
        tmp_path, ssh_host, monkeypatch):
    (tmp_path / "job.py").write_text("print('hi')\n")
    calls: list[dict] = []
    real = ssh_remote.prepare_environment

    async def spy(*args, **kwargs):
        calls.append(kwargs)
        return await real(*args, **kwargs)

    monkeypatch.setattr(ssh_remote, "prepare_environment", spy)
    source = ssh_source(ssh_host, "prepared", 2, remote_root=f"~/.hsm_prepare_{secrets.token_hex(3)}",
                        python_path="python3", script_path="job.py", project_dir=str(tmp_path))
    try:
        assert run_sync(source.setup(tmp_path / "runs" / "p", "p")) is True
        report = run_sync(source.health_check())
    finally:
        run_sync(source.cleanup())
    assert len(calls) == 1 and calls[0]["always"] is True  # no environment given: probed all the same
    assert re.fullmatch(r"\d+\.\d+\.\d+", source.facts["python"]), source.facts
    assert report["status"] in ("healthy", "degraded") and report["slots"] == 2
    assert "free_slots" not in report  # slots in use are the run state's fact (empty active_jobs under a manager)
    assert source.stats.health_status == SourceHealth.UNKNOWN  # neither setup nor the check wrote it
