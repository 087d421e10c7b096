"""Issue 20, item 5: the public seams the panel and the CLI use instead of private attributes.

``Sweep.record``, ``Sweep.check_health()``, one mechanism (``_loop.twins``) making the blocking
and the awaitable twin of every control call, a ``run_sync`` that cancels its coroutine on
timeout, and no private attribute of core read from ``ui/`` or ``cli.py``.  Local processes only.
"""

from __future__ import annotations

import ast
import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest

from hsm_notebook import HsmError, LocalComputeSource, ParameterSpace, Sweep
from hsm_notebook.core import _loop
from hsm_notebook.core.sweep import sources_health, sources_health_async
from tests.helpers import job_sweep, until
from tests.sources import StubSource

ROOT = Path(__file__).resolve().parents[1]
CONTROL = ("complete", "retry_failed", "add_source", "drain", "disable", "enable", "cancel", "check_health")


class FakeBrokenHealthSource(StubSource):
    """A fake: its health check raises (a user's source with a bug in it)."""

    async def health_check(self) -> dict:
        raise RuntimeError("the probe script is missing")


class FakeSilentHealthSource(StubSource):
    """A fake: its health check never answers (a hung host, without one to hang)."""

    async def health_check(self) -> dict:
        await asyncio.Event().wait()
        return {}


class FakeWordHealthSource(StubSource):
    """A fake: answers a bare word, as the reference's users' sources do."""

    async def health_check(self) -> Any:
        return "ok"


def _here_sweep(workdir: Path, xs: list[int], sleep: float = 0) -> Sweep:
    return job_sweep(workdir, [LocalComputeSource("here", max_parallel_jobs=2)], {"x": xs, "sleep": [sleep]},
                     poll_interval=0.1)


def test_record_is_public_and_a_copy(workdir):
    sweep = _here_sweep(workdir, [1, 2])
    record = sweep.record
    assert record["space"] == ParameterSpace(grid={"x": [1, 2], "sleep": [0]}).to_dict()
    assert [s["name"] for s in record["sources"]] == ["here"] and record["sweep_id"] == sweep.id
    record["space"]["grid"]["x"].append(3)
    record["metadata"]["who"] = "me"
    assert sweep.record["space"]["grid"]["x"] == [1, 2] and "who" not in sweep.record["metadata"]
    assert Sweep.attach(sweep.directory, resume=False).record == sweep.record


@pytest.mark.parametrize("name", CONTROL)
def test_every_control_call_has_both_twins_from_one_body(name):
    blocking, awaitable = getattr(Sweep, name), getattr(Sweep, f"{name}_async")
    assert not asyncio.iscoroutinefunction(blocking) and asyncio.iscoroutinefunction(awaitable)
    assert blocking.__wrapped__ is awaitable.__wrapped__  # one body, written once
    assert blocking.__name__ == name and awaitable.__name__ == f"{name}_async"
    assert blocking.__doc__ and blocking.__doc__ in awaitable.__doc__


def test_run_sync_cancels_its_coroutine_on_timeout():
    started, cancelled = threading.Event(), threading.Event()

    async def slow() -> None:
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    with pytest.raises(_loop.LoopTimeout, match=r"did not finish in 0.2 s and was cancelled; call it again") as info:
        _loop.run_sync(slow(), timeout=0.2)
    assert isinstance(info.value, TimeoutError) and isinstance(info.value, HsmError)
    assert started.is_set()
    until(cancelled.is_set, 10, "the timed-out coroutine cancelled on the loop")


def test_run_sync_keeps_a_coroutines_own_timeout_error():
    async def own() -> None:
        raise TimeoutError("the host did not answer")

    with pytest.raises(TimeoutError, match="the host did not answer") as info:
        _loop.run_sync(own(), timeout=30)
    assert not isinstance(info.value, _loop.LoopTimeout)


def test_check_health_answers_for_every_source_in_words(workdir):
    sources = [LocalComputeSource("here"), FakeBrokenHealthSource("broken"), FakeSilentHealthSource("silent"),
               FakeWordHealthSource("worded")]
    health = sources_health(sources, timeout=0.5)
    assert health["here"]["status"] == "healthy"
    assert health["broken"] == {"status": "unhealthy", "reason": "RuntimeError: the probe script is missing"}
    assert health["silent"] == {"status": "unhealthy", "reason": "no answer to the health check in 0.5 s"}
    assert health["worded"] == {"status": "ok"}
    assert asyncio.run(sources_health_async(sources[:1]))["here"]["status"] == "healthy"  # from another loop
    sweep = _here_sweep(workdir, [1])
    assert list(sweep.check_health()) == ["here"] and sweep.check_health()["here"]["status"] == "healthy"
    assert asyncio.run(sweep.check_health_async())["here"]["status"] == "healthy"


def test_the_awaitable_twins_drive_a_running_sweep_from_another_loop(workdir):
    sweep = _here_sweep(workdir, [1, 2, 3], sleep=60).start()
    try:
        until(lambda: sweep.counts().get("RUNNING", 0) == 2, 60, "two tasks running")

        async def control() -> int:
            await sweep.drain_async("here")
            assert sweep.sources_status().iloc[0]["state"] == "draining"
            await sweep.enable_async("here")
            assert sweep.sources_status().iloc[0]["state"] == "enabled"
            with pytest.raises(HsmError, match="no source named 'elsewhere'"):
                await sweep.disable_async("elsewhere")
            return await sweep.cancel_async()

        assert asyncio.run(control()) == 3
        until(lambda: sweep.counts() == {"CANCELLED": 3}, 60, "every task cancelled")
    finally:
        if sweep.running:
            sweep.cancel()
    sweep.wait(timeout=60)
    assert sweep.started and not sweep.running


def test_the_awaitable_reruns_start_the_sweep_from_another_loop(workdir):
    sweep = Sweep(ParameterSpace(grid={"x": [1]}, paired=[{"exit": [3]}]), ["python", "job.py"],
                  [LocalComputeSource("here")], workdir=workdir, poll_interval=0.1)
    assert not sweep.started
    assert asyncio.run(sweep.complete_async()) is sweep and sweep.started  # never run: complete() runs it
    assert sweep.wait(timeout=60).counts() == {"FAILED": 1}
    asyncio.run(sweep.retry_failed_async())
    until(lambda: sweep.status()["attempt"].iloc[0] == 2 and not sweep.running, 60, "the second attempt ended")
    assert sweep.counts() == {"FAILED": 1}


def test_a_blocking_twin_on_the_loop_thread_is_refused_in_words(workdir):
    sweep = _here_sweep(workdir, [1])
    seen: list[BaseException] = []

    async def on_loop() -> None:
        try:
            sweep.check_health()
        except HsmError as exc:
            seen.append(exc)

    _loop.run_sync(on_loop())
    assert seen and "check_health() blocks" in str(seen[0]) and "await the *_async twin" in str(seen[0])


def _private_core_names() -> set[str]:
    """Private attributes and methods the package's core classes define (``self._x = ...``, ``def _x``)."""
    names: set[str] = set()
    for path in (ROOT / "hsm_notebook" / "core").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("_"):
                names.add(node.name)
            elif (isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)
                  and isinstance(node.value, ast.Name) and node.value.id == "self" and node.attr.startswith("_")):
                names.add(node.attr)
    return {n for n in names if not (n.startswith("__") and n.endswith("__"))}


def private_reads(path: Path, private: set[str]) -> list[str]:
    """Where ``path`` reads a private attribute of core (``sweep._record``) or imports a private
    module or name of core (``from ..core import _loop``)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if (isinstance(node, ast.Attribute) and node.attr in private
                and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))):
            found.append(f"{path.name}:{node.lineno} reads .{node.attr}")
        elif isinstance(node, ast.ImportFrom) and "core" in (node.module or "").split("."):
            module_private = any(part.startswith("_") for part in (node.module or "").split("."))
            bad = [a.name for a in node.names if a.name.startswith("_")]
            if module_private or bad:
                found.append(f"{path.name}:{node.lineno} imports {node.module}: {bad or 'a private module'}")
    return found


def test_ui_and_cli_read_no_private_attribute_of_core():
    private = _private_core_names()
    assert {"_record", "_manager", "_future"} <= private
    files = [*sorted((ROOT / "hsm_notebook" / "ui").glob("*.py")), ROOT / "hsm_notebook" / "cli.py"]
    offenders = [hit for path in files for hit in private_reads(path, private)]
    assert not offenders, "ui/ and cli.py use only core's public names:\n" + "\n".join(offenders)


def test_the_private_read_check_sees_what_it_looks_for(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from ..core import _loop\nfrom ..core._loop import spawn\n"
                   "def f(sweep):\n    return sweep._record, self._record\n")
    hits = private_reads(bad, {"_record"})
    assert hits == ["bad.py:1 imports core: ['_loop']", "bad.py:2 imports core._loop: a private module",
                    "bad.py:4 reads ._record"], hits
