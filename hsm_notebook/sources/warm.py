"""A warm interpreter per local source and sweep: function tasks forked from it, not started cold.

Measured (bench/warm.py): a short scikit-learn task spends most of its CPU importing scikit-learn
again in its new interpreter (~1.2 s of ~1.7 s here).  So, for a function sweep, the local source
starts one *fork server* (``python -m hsm_notebook.runner --serve FD``, see ``hsm_notebook.runner``)
that loads ``function.pkl`` once with the modules its body imports, and asks it to fork each job.
A forked job is a job as the ``sh`` wrapper makes it: its own session, the pid-file claim before
anything runs, stdout/stderr to the job's files, ``exit_code`` written when it ends; it also writes
``launch`` ("PID STARTTIME"), which is how ``LocalJobManager`` tells it alive after a restart (its
command line is the server's, not the job's folder).  Cancel, re-adoption by another controller and
the server's own death are then those of any job.

The server is used only where that changes nothing a task sees but its start: a function sweep, run
by an interpreter with no environment script before each task (``pre_script`` lines may be per
task) and no GPUs pinned per task (``CUDA_VISIBLE_DEVICES`` must be set before a library reads it);
otherwise, or when it cannot load the function, starts Python threads while loading (a fork copies
only the calling thread), does not answer, or dies more than :data:`MAX_STARTS` times, tasks start
as new interpreters, with the reason logged.  ``LocalComputeSource(warm=False)`` turns it off.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..core.spec.job import FORWARDED_SIGNALS
from ..core.spec.jobpaths import JobPaths

log = logging.getLogger(__name__)

#: Seconds a fork server may take to load the function and its imports (a slow disk, a busy machine,
#: a large library) before the tasks start as new interpreters.
READY_TIMEOUT = 180.0
#: Seconds a started server may take to fork one job and see it claim its folder.
JOB_TIMEOUT = 60.0
#: Fork servers started for one run of a source (one dies: the next job starts a new one).
MAX_STARTS = 3


def unsuitable(*, function: bool, env_script: str | None, gpus: bool) -> str | None:
    """Why the tasks of this source cannot be forked from a warm interpreter, or None."""
    if not function:
        return "not a function sweep"
    if env_script:
        return "an environment script runs before each task"
    if gpus:
        return "GPUs are pinned per task before its interpreter starts"
    if not hasattr(os, "fork") or not os.path.exists("/proc/self/stat"):
        return "this system has no fork() or no /proc"
    return None


class ForkServer:
    """The controller's side of one fork server: started at setup, asked for one job at a time."""

    def __init__(self, source: str, argv: list[str], env: Mapping[str, str], cwd: str | None, sweep_dir: Path):
        self.source, self.argv, self.env, self.cwd, self.sweep_dir = source, argv, dict(env), cwd, sweep_dir
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        #: What the serving server said when it got ready (its pid, what it imported, how long it took).
        self.ready: dict[str, Any] | None = None
        #: The pids of the servers that served in this run, in order.
        self.pids: list[int] = []
        #: Why tasks start as new interpreters now, or None while the server serves.
        self.off: str | None = None
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._stderr: Any = None
        self._lock = asyncio.Lock()
        self._started: asyncio.Task | None = None

    def start(self) -> None:
        """Start the server (it loads the function in the background; the first job waits for it)."""
        if self._started is None and self.off is None:
            self._started = asyncio.get_running_loop().create_task(self._start())

    async def job(self, job_dir: Path, params_json: str, env: Mapping[str, str], cwd: str | None) -> int | None:
        """Fork the job in ``job_dir``: its pid, or None when it must start the usual way (why is logged)."""
        async with self._lock:
            if self.off is not None:
                return None
            if self._started is None or (self._started.done() and self._streams is None):
                self._started = asyncio.get_running_loop().create_task(self._start())
            await self._started
            if self._streams is None:
                return None
            reader, writer = self._streams
            paths = JobPaths(job_dir)
            files = {name: str(getattr(paths, name)) for name in
                     ("pid", "launch", "stdout", "stderr", "exit_code", "signalled")}
            request = {"files": files, "env": dict(env), "params": params_json, "cwd": cwd}
            try:
                writer.write(json.dumps(request).encode() + b"\n")
                await writer.drain()
                line = await asyncio.wait_for(reader.readline(), JOB_TIMEOUT)
            except (OSError, TimeoutError) as exc:
                await self._lost(f"it did not answer ({type(exc).__name__}: {exc})")
                return None
            if not line:
                await self._lost("it ended")
                return None
            try:
                answer = json.loads(line)
            except ValueError:
                answer = {"error": f"an answer that is not JSON: {line[:200]!r}"}
            if "pid" not in answer:
                log.warning("source %s: the fork server could not fork a job (%s); it starts the usual way",
                            self.source, answer.get("error"))
                return None
            return int(answer["pid"])

    async def close(self) -> None:
        """End the server (its jobs go on): its end of the socket closed, it exits and is reaped."""
        if self._started is not None and not self._started.done():
            self._started.cancel()
            with contextlib.suppress(BaseException):
                await self._started
        await self._stop(grace=5.0)

    # -- inside ---------------------------------------------------------------------------------
    async def _start(self) -> None:
        try:
            await self._spawn()
        except (OSError, ValueError, KeyError, TypeError) as exc:  # a fault of the server is never a task's
            await self._stop(grace=0.0)
            self._give_up(f"failed to start ({type(exc).__name__}: {exc})")

    async def _spawn(self) -> None:
        if self.starts >= MAX_STARTS:
            self._give_up(f"it was started {self.starts} times in this run")
            return
        self.starts += 1
        ours, theirs = socket.socketpair()
        self._stderr = tempfile.TemporaryFile()
        try:
            self.proc = subprocess.Popen(
                [*self.argv, "-m", "hsm_notebook.runner", "--serve", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),), cwd=self.cwd, env={**os.environ, **self.env}, start_new_session=True,
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._stderr)
        except OSError as exc:
            ours.close()
            self._give_up(f"it could not start ({exc})")
            return
        finally:
            theirs.close()
        reader, writer = await asyncio.open_unix_connection(sock=ours)
        self._streams = (reader, writer)
        try:
            writer.write(json.dumps({"sweep_dir": str(self.sweep_dir), "signals": list(FORWARDED_SIGNALS)}).encode()
                         + b"\n")
            await writer.drain()
            line = await asyncio.wait_for(reader.readline(), READY_TIMEOUT)
            answer: dict[str, Any] = json.loads(line) if line else {"refused": "it ended while loading the function"}
        except (OSError, TimeoutError) as exc:
            answer = {"refused": f"did not get ready in {READY_TIMEOUT:.0f} s" if isinstance(exc, TimeoutError)
                      else f"could not be reached ({type(exc).__name__}: {exc})"}
        if "ready" not in answer:  # not started again: it would fail or hang the same way
            said = self._said()
            await self._stop(grace=5.0)
            self._give_up(f"{answer.get('refused')}{said}")
            return
        ready: dict[str, Any] = answer["ready"]
        self.ready = ready
        self.pids.append(int(ready["pid"]))
        log.info("source %s: fork server pid %s ready in %s s, imported %s%s", self.source, ready["pid"],
                 ready["seconds"], ", ".join(ready["imported"]) or "nothing more",
                 f" ({ready['skipped']})" if ready.get("skipped") else "")

    async def _lost(self, why: str) -> None:
        """A server that served failed a request or ended: stop it; the next job starts another (up to
        MAX_STARTS)."""
        said = self._said()
        await self._stop(grace=0.0)
        log.warning("source %s: the fork server %s%s; its jobs go on, the next job starts a new server "
                    "(or a new interpreter)", self.source, why, said)

    def _give_up(self, why: str) -> None:
        self.off = f"tasks start as new interpreters: the fork server {why}"
        log.warning("source %s: %s", self.source, self.off)

    def _said(self) -> str:
        """The last lines the server wrote on stderr, for the log."""
        if self._stderr is None:
            return ""
        with contextlib.suppress(OSError, ValueError):
            self._stderr.seek(max(0, self._stderr.seek(0, os.SEEK_END) - 2000))
            text = self._stderr.read().decode(errors="replace").strip()
            return f"; it said: {text.splitlines()[-1]}" if text else ""
        return ""

    async def _stop(self, grace: float) -> None:
        self.ready = None
        if self._streams is not None:
            self._streams[1].close()
            self._streams = None
        proc, self.proc = self.proc, None
        if proc is not None:
            deadline = asyncio.get_running_loop().time() + grace
            while proc.poll() is None and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.02)
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)  # the server only: its jobs are sessions of their own
                proc.wait()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
