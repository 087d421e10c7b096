"""``SSHComputeSource``: jobs on a remote machine over one asyncssh connection.

Nothing is installed on the remote: jobs run under the same ``sh`` wrapper as on
the local source, started detached (``setsid``) so they outlive the connection
and the kernel.  All commands of a polling round, a submission or a cancel go to
one persistent remote shell (see ``ssh_connection``): no new channel, no login-shell
start.  A job's end is pushed by a watcher in that shell with its exit code, so a poll right after
needs no command (``_from_pushed``); the host is asked about every job at least every ``FRESH``
seconds of polling.  Finished jobs' folders come back as tar streams through the same shell
(``ssh_jobs.fetch``).  What is made and removed on the remote side lives in ``ssh_remote``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import posixpath
import shlex
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..core.base.batching import Batcher
from ..core.base.gpus import GpuPool
from ..core.base.shell import CommandResult
from ..core.base.source import ComputeSource
from ..core.model.errors import ConfigError, NotConnected, SourceError, is_infrastructure
from ..core.model.state import JobOutcome, JobState
from ..core.spec import jobpaths
from ..core.spec.environment import expand_home, job_argv
from ..core.spec.job import JobTemplate
from ..core.spec.options import JobOptions, with_options
from .ssh_connection import SSHConnection, SSHTarget
from .ssh_jobs import RemoteJobManager, check_patterns
from .ssh_remote import RemoteSideMixin, StartItem
from .sync import DEFAULT_EXCLUDE

log = logging.getLogger(__name__)


#: Seconds a poll may answer from the ends the watcher pushed before it asks the host about every job again.
FRESH = 1.0
#: Codes of jobs that ended without an exit code (see ssh_jobs._POLL), with what is known of why.
_GONE = {"L": "", "N": "the job never started on the remote (its launcher is gone); it was claimed so it never will",
         "E": "the job's folder or its pid file could not be written on the remote (is the disk full?); it ran "
              "nothing",
         "G": "its remote folder is gone (was the host rebooted or the folder removed?)"}
@with_options
class SSHComputeSource(RemoteSideMixin, ComputeSource):
    """A remote machine over SSH.  ``host`` may be an ``~/.ssh/config`` alias.

    Host keys are checked against ``known_hosts`` (default ``~/.ssh/known_hosts``);
    ``trust_new_host=True`` records the key of a host seen for the first time (never a
    changed one).  ``python`` replaces a leading ``python``/``python3`` in the command (a
    leading ``~`` is the remote home).  ``environment`` (an
    :class:`~hsm_notebook.core.spec.environment.Environment` or its dict: conda_env, venv, modules,
    pre_script, env) is set up before each job's command; setup runs the interpreter through it
    once and refuses a broken one, naming the failing line.
    The working directory (the sweep's ``workdir``) is synced to
    ``<remote_root>/projects/<name>-<hash>`` like ``rsync -a`` (see ``sources/sync.py`` for the
    ``sync_exclude``/``sync_include`` patterns) and jobs run there; ``sync_delete=True`` also
    removes there what is gone from the project (rsync's ``--delete``; excluded paths are kept).

    Driven without a ``Sweep`` (the reference's style), it runs ``command``, or
    ``python_path script_path``, in the remote copy of ``project_dir``, with the parameters as
    ``arg_style`` arguments (``key=value`` by default).
    """

    source_type = "ssh"
    job_options = ("python", "gpus", "gpus_per_job", "env", "tags", "environment", "command", "python_path",
                   "script_path", "project_dir", "arg_style")

    def __init__(
        self,
        host: str,
        name: str | None = None,
        max_parallel_jobs: int = 1,
        *,
        port: int | None = None,
        username: str | None = None,
        client_keys: list[str] | None = None,
        known_hosts: str | None = None,
        trust_new_host: bool = False,
        remote_root: str = "~/.hsm_notebook",
        sync: bool = True,
        sync_exclude: Sequence[str] = DEFAULT_EXCLUDE,
        sync_include: Sequence[str] | None = None,
        use_rsync: bool = True,
        sync_delete: bool = False,
        min_free_mb: int = 100,
        keepalive_interval: float = 2.0,
        give_up_after: float = 120.0,
        cancel_grace: float = 5.0,
        collect: Sequence[str] | None = None,
        keep_remote: bool | None = None,
        **options: Any,
    ):
        options.setdefault("python", "python3")
        opts = JobOptions.from_kwargs(type(self), self.job_options, options)
        super().__init__(name or host, "ssh", max_parallel_jobs, options=opts)
        self.target = SSHTarget(host, port, username, list(client_keys) if client_keys else None, known_hosts,
                                trust_new_host, keepalive_interval=keepalive_interval)
        self.remote_root, self.sync = remote_root, sync
        self.sync_exclude, self.sync_include, self.use_rsync = tuple(sync_exclude), sync_include, use_rsync
        self.sync_delete = sync_delete
        self.gpus, self.gpus_per_job, self.min_free_mb = opts.gpus, opts.gpus_per_job, min_free_mb
        self.give_up_after, self.cancel_grace = give_up_after, cancel_grace
        self.conn = SSHConnection(self.target, self.name)
        # the remote side's attributes are declared (typed) on RemoteSideMixin
        self.jobs = None
        self.facts = {}
        self._unreachable_since = None
        self.pool = GpuPool(self.gpus, self.gpus_per_job, self.name)
        self.poll_rounds = 0
        self._lost_reasons: dict[str, tuple[str, bool]] = {}
        self._watcher = None
        #: starts queued this loop turn: one remote command for all (``core.batching``)
        self._starts = Batcher(self._start_batch, size=256, on_error=self._start_failed)
        self.events = None
        self.collect = check_patterns(collect)
        if keep_remote is not None and not isinstance(keep_remote, bool):
            raise ConfigError(f"must be True, False or None, got {keep_remote!r}", "keep_remote")
        self.keep_remote = keep_remote
        #: What the last cleanup() did with the remote sweep folder, in words (removed, or kept and why).
        self.remote_cleanup: str | None = None
        self._gone: dict[str, str] = {}  # job id -> why its folder could not be collected
        self._left: dict[str, str] = {}  # job id -> the chosen files that did not come back, in words
        self._restoring = asyncio.Lock()
        self.ended_pushed = {}
        self._asked_at = -1e9  # when the host was last asked about every live job (monotonic)
        self._last_raw: dict[str, tuple[str, int | None, bool]] = {}  # its answer for jobs not ended then

    def describe(self) -> dict[str, Any]:
        t = self.target
        return {**super().describe(), "host": t.host, "port": t.port, "username": t.username,
                "client_keys": t.client_keys, "known_hosts": t.known_hosts, "remote_root": self.remote_root,
                "sync": self.sync, "sync_exclude": list(self.sync_exclude),
                "sync_include": self.sync_include, "use_rsync": self.use_rsync, "sync_delete": self.sync_delete,
                "keepalive_interval": t.keepalive_interval,
                "give_up_after": self.give_up_after, "cancel_grace": self.cancel_grace,
                "collect": self.collect,
                "keep_remote": self.keep_remote}

    def _command(self, argv: list[str]) -> list[str]:
        """``python`` replaced by the source's interpreter; a leading ``~`` of the program is the remote home."""
        argv = self.substitute(argv)
        return [expand_home(argv[0], self.home), *argv[1:]] if argv else argv

    def _argv(self, argv: list[str]) -> list[str]:
        return job_argv(self._env_script, self._command(argv))

    # -- the RemoteHost protocol (core.remote): what a Slurm login side uses ---------------
    @property
    def home(self) -> str:
        """The remote home (known after setup)."""
        return str(self.facts.get("home", ""))

    def _remote(self) -> RemoteJobManager:
        if self.jobs is None:
            raise SourceError("not set up for a sweep; call setup(sweep_dir, sweep_id) first", self.name)
        return self.jobs

    @property
    def tasks_dir(self) -> str:
        return self._remote().tasks_dir

    @property
    def workdir(self) -> str:
        return self._remote().workdir

    @property
    def pythonpath(self) -> str:
        return self._remote().pythonpath

    async def run(self, script: str, *, check: bool = True, timeout: float | None = 60.0) -> CommandResult:
        """``script`` in the host's persistent shell (see ``SSHConnection.run``)."""
        return await self.conn.run(script, check=check, timeout=timeout)

    async def fetch(self, job_names: Sequence[str], local_dirs: Sequence[Path]) -> None:
        """The named jobs' folders, home (one tar stream per batch)."""
        await self._remote().fetch(job_names, local_dirs)

    async def close(self) -> None:
        """Close the connection and keep the remote folder (its user decides when its jobs are done)."""
        await self.cleanup(remove_remote=False)

    # -- setup -------------------------------------------------------------------------
    async def setup(self, sweep_dir: Path, sweep_id: str) -> bool:
        self.bind_self(sweep_dir, sweep_id)
        await self.conn.connect()
        template = self.template or JobTemplate(("true",))
        root = self.remote_root
        facts = (await self.conn.run(
            "cd; echo \"home=$PWD\"; command -v setsid >/dev/null && echo setsid=yes; "
            "command -v rsync >/dev/null && echo rsync=yes; "
            "command -v tar >/dev/null && { echo tar=yes; tar --format=posix -cf /dev/null /dev/null 2>/dev/null && "
            "echo tarposix=yes; tar --null -cf /dev/null -T /dev/null 2>/dev/null && "
            "find /dev/null -print0 >/dev/null 2>&1 && echo tarnul=yes; }; "
            "command -v nvidia-smi >/dev/null && echo nvidia=yes; true")).stdout
        self.facts = dict(line.split("=", 1) for line in facts.splitlines() if "=" in line)
        home = self.facts.get("home", "")
        self.root = home + root[1:] if root.startswith("~") else root
        await self._prepare(template, posixpath.join(self.root, "sweeps", sweep_id))
        if self.gpus is None and self.facts.get("nvidia") == "yes":
            out = (await self.conn.run("nvidia-smi --query-gpu=index --format=csv,noheader", check=False)).stdout
            self.gpus = [int(x) for x in out.split() if x.isdigit()] or None
        self.pool.reset(self.gpus)
        if self.gpus:
            self.max_parallel_jobs = min(self.max_parallel_jobs, max(1, len(self.gpus) // self.gpus_per_job))
        return True

    # -- jobs --------------------------------------------------------------------------
    async def submit_job(self, params: dict[str, Any], job_name: str, sweep_id: str,
                         wandb_group: str | None = None) -> str:
        await self._ensure()
        assert self.jobs is not None
        remote_dir = posixpath.join(self.jobs.tasks_dir, job_name)
        argv, env = self.job_command(params, job_name, sweep_id, wandb_group, remote_dir)
        local = self.job_dir(job_name)
        if self.pool.enabled:  # the pins are recorded with the attempt, for a controller that attaches
            local.mkdir(parents=True, exist_ok=True)
            env.update(self.pool.env(self.pool.take(job_name, local)))
        # params.json is written by the host, in the job's folder, and comes home with it: no file made
        # here on the dispatch path (a busy disk held the loop for tens of ms)
        item = (job_name, self._argv(argv), env, json.dumps(params, indent=1))  # as write_params writes it
        try:
            answer = await self._starts.submit(item)  # written with this loop turn's other starts
            if answer is not None:
                try:
                    await asyncio.shield(answer)  # the host's answer; the next batch did not wait for it
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - decided as a failed batch is (_start_failed)
                    if self._start_failed(exc, [item]) is None:
                        raise
        except BaseException:
            self.pool.release(job_name)
            raise
        self.track(job_name, job_name, params, local)
        return job_name

    async def _start_batch(self, batch: list[StartItem]) -> list[asyncio.Future[None] | None]:
        """Submissions made in the same loop turn start with one remote command, written at once (the
        persistent shell pipelines it after what it runs); each submission waits for its answer apart,
        so the next batch need not (see ``_start_failed``)."""
        assert self.jobs is not None
        answer = self.jobs.begin(batch)
        return [answer] * len(batch)

    def _start_failed(self, exc: BaseException, batch: list[StartItem]) -> list[None] | None:
        """If the connection fails once the command was sent, some jobs of the batch may have
        started: each is reported submitted, and the next poll (after reconnecting) asks the
        host.  A job that never started is claimed there (it never will) and comes back LOST
        "never started", which the retry policy runs again: a batch is never started twice."""
        if not (is_infrastructure(exc) and not isinstance(exc, NotConnected)):
            return None
        log.warning("the connection to %s failed while %d job(s) were starting (%s); the host is "
                    "asked which started once it answers", self.name, len(batch), exc)
        return [None] * len(batch)

    async def recover_job(self, job_name: str) -> str | None:
        await self._ensure()
        assert self.jobs is not None
        # the same decision as a poll: a job whose launcher is gone before it started is claimed
        # on the remote ("N"), so it can never start; anything else started or may still start
        code = (await self.jobs.states([job_name])).get(job_name, ("Q", None, False))[0]
        return None if code == "N" else job_name

    def adopt(self, job_id: str, job_name: str) -> None:
        self.pool.adopt(job_id, self.job_dir(job_name))

    async def get_job_status(self, job_id: str) -> str:
        return (await self.poll([job_id]))[job_id]

    async def poll(self, job_ids: list[str]) -> dict[str, JobState]:
        try:
            await self._ensure()
            assert self.jobs is not None
            raw = self._from_pushed(job_ids)
            if raw is None:
                raw = await self.jobs.states(job_ids)
                self._asked_at = time.monotonic()
                self._last_raw = {j: answer for j, answer in raw.items() if answer[0] in ("Q", "R")}
                for j in job_ids:  # answered by the host: what the watcher pushed of them is moot
                    if j not in self._last_raw:
                        self.ended_pushed.pop(j, None)
        except SourceError as exc:
            now = time.monotonic()
            self._unreachable_since = self._unreachable_since or now
            if now - self._unreachable_since < self.give_up_after:
                raise
            log.warning("giving up on %s after %.0f s: %s", self.name, now - self._unreachable_since, exc)
            for j in job_ids:
                self.pool.release(j)
            return {j: JobState.LOST for j in job_ids}
        self.poll_rounds += 1
        states = {}
        for job_id in job_ids:  # no clocks: the remote's files and processes decide (see _POLL)
            code, rc, cancelled = raw.get(job_id, ("Q", None, False))
            if code == "X":
                state = JobState.COMPLETED if rc == 0 else (JobState.CANCELLED if cancelled else JobState.FAILED)
            elif code == "R":
                state = JobState.RUNNING
            elif code in _GONE:
                state = JobState.CANCELLED if cancelled else JobState.LOST
                if state == JobState.LOST:  # (note, whether it replaces "vanished without an exit code")
                    self._lost_reasons[job_id] = (await self._disk_note() or _GONE[code], code != "L")
            else:  # Q: its launcher is still starting it
                state = JobState.QUEUED
            if state.is_terminal:
                self.pool.release(job_id)
            states[job_id] = state
        return states

    def _from_pushed(self, job_ids: list[str]) -> dict[str, tuple[str, int | None, bool]] | None:
        """A poll's answers without a remote command, when the watcher pushed the end of some of these
        jobs and the host was asked about all of them less than ``FRESH`` seconds ago: the ended ones
        from what it pushed (the exit code the wrapper wrote), the others as the host last said (a job
        started since: queued).  None: ask the host (so a job that dies without its wrapper, or whose
        event was missed, is found within ``FRESH`` seconds of a poll)."""
        if not self.ended_pushed or time.monotonic() - self._asked_at >= FRESH:
            return None
        ended = {j: self.ended_pushed.pop(j) for j in job_ids if j in self.ended_pushed}
        if not ended:
            return None
        raw = {j: self._last_raw.get(j, ("Q", None, False)) for j in job_ids}
        raw.update({j: ("X", rc, cancelled) for j, (rc, cancelled) in ended.items()})
        return raw

    async def _disk_note(self) -> str:
        """Why a wrapper may have died without writing its exit code: a full disk is the usual one."""
        assert self.jobs is not None
        df = f"df -Pk {shlex.quote(self.jobs.tasks_dir)} | tail -n 1"
        out = (await self.conn.run(df, check=False)).stdout.split()
        if len(out) > 3 and out[3].isdigit() and int(out[3]) < 1024:
            return f"the remote disk is full ({out[3]} KB free under {self.root}); free space, then retry"
        return ""

    async def outcome(self, job_id: str, state: JobState) -> JobOutcome:
        gone = self._gone.pop(job_id, None)
        if gone is not None:  # its folder could not be collected: whatever it did, its result is lost
            self._lost_reasons.pop(job_id, None)
            return JobOutcome(JobState.CANCELLED if state == JobState.CANCELLED else JobState.LOST, error=gone)
        outcome = await super().outcome(job_id, state)
        left = self._left.pop(job_id, None)
        if left:  # named with the task, whatever its state: the user looks for those files
            outcome = dataclasses.replace(outcome, error="; ".join(filter(None, [outcome.error, left])))
        note, replace = self._lost_reasons.pop(job_id, ("", False))
        if note and outcome.state == JobState.LOST:
            error = "; ".join(filter(None, [None if replace else outcome.error, note]))
            return dataclasses.replace(outcome, error=error)
        return outcome

    async def read_steps(self, offsets: dict[str, int]) -> dict[str, bytes]:
        """All running jobs' new intermediate metrics in one remote command."""
        if self.jobs is None:
            return {}
        paths = {j: (posixpath.join(self.jobs.tasks_dir, self.job_names[j]), offset)
                 for j, offset in offsets.items() if j in self.job_names}
        if not paths:
            return {}
        return jobpaths.parse_remote((await self.conn.run(jobpaths.remote_script(paths))).stdout)

    async def cancel_job(self, job_id: str) -> bool:
        await self._ensure()
        assert self.jobs is not None
        return await self.jobs.stop(job_id)

    async def collect_results(self, job_ids: list[str] | None = None) -> bool:
        if not self.conn.alive and self._unreachable_since is not None and \
                time.monotonic() - self._unreachable_since >= self.give_up_after:
            return False  # the host is given up: nothing can be fetched
        await self._ensure()
        assert self.jobs is not None
        ids = job_ids if job_ids is not None else list(self.completed_jobs)
        names = {job_id: self.job_names.get(job_id, job_id) for job_id in ids}
        # a job whose folder is gone fails alone (see outcome); the others of the batch come home
        got = await self.jobs.fetch(list(names.values()), [self.job_dir(n) for n in names.values()], self.collect)
        self._gone.update({job_id: got.gone[name] for job_id, name in names.items() if name in got.gone})
        self._left.update({job_id: got.left[name] for job_id, name in names.items() if name in got.left})
        # jobs that ended while this batch travelled wait for the next look (at once if they were the last)
        self.notify()
        return True

    async def health_check(self) -> dict[str, Any]:
        t0 = time.monotonic()
        try:
            if not self.conn.alive:
                await self.conn.connect()
            root = getattr(self, "root", None) or "."
            out = (await self.conn.run(
                f"cat /proc/loadavg 2>/dev/null; df -Pk {shlex.quote(root)} 2>/dev/null | tail -n 1; "
                "nvidia-smi --query-gpu=index,utilization.gpu,memory.used --format=csv,noheader,nounits 2>/dev/null",
                check=False, timeout=15)).stdout.splitlines()
        except SourceError as exc:
            return {"status": "unhealthy", "reason": str(exc), "slots": self.max_parallel_jobs}
        latency = time.monotonic() - t0
        load = float(out[0].split()[0]) if out and out[0].split() else None
        disk = out[1].split() if len(out) > 1 else []
        free_gb = int(disk[3]) / 1e6 if len(disk) > 3 and disk[3].isdigit() else None
        gpus = [dict(zip(("index", "util", "mem_mb"), map(str.strip, line.split(",")), strict=False))
                for line in out[2:] if "," in line]
        status, reason = "healthy", None
        if free_gb is not None and free_gb * 1000 < self.min_free_mb:
            status, reason = "degraded", f"only {free_gb * 1000:.0f} MB free on the remote"
        elif latency > 2:
            status, reason = "degraded", f"slow: {latency:.1f} s round trip"
        return {"status": status, "reason": reason, "slots": self.max_parallel_jobs,
                "latency_ms": round(latency * 1e3, 1), "load_1m": load, "disk_free_gb": free_gb, "gpus": gpus}

    async def cleanup(self, remove_remote: bool | None = None) -> None:
        """Close the connection, after removing the remote sweep folder (``<remote_root>/sweeps/<sweep
        id>``) if every job there succeeded and came home (the manager calls this at the end of each
        run).  Kept when ``keep_remote`` (default: only when ``collect`` left files there) or
        ``remove_remote=False`` says so, and whenever a job there failed, was not collected or has not
        ended (another run may re-adopt it).  Never raises for a folder it could not remove: what it
        did is in ``remote_cleanup`` and the log."""
        if self.jobs is not None:
            self.jobs.stop_prefetch()
            sweep_root = posixpath.dirname(self.jobs.tasks_dir)
            keep = self.keep_remote if self.keep_remote is not None else self.collect is not None
            if remove_remote is False or (remove_remote is None and keep):
                self.remote_cleanup = f"kept {sweep_root}: " + (
                    "remove_remote=False" if remove_remote is False else "keep_remote=True" if self.keep_remote
                    else "collect= leaves files there (keep_remote=False removes it)")
            else:
                try:
                    self.remote_cleanup = await self._remove_remote()
                except SourceError as exc:
                    self.remote_cleanup = f"kept {sweep_root}: could not remove it ({exc})"
                level = logging.WARNING if "could not remove" in self.remote_cleanup else logging.INFO
                log.log(level, "%s: %s", self.name, self.remote_cleanup)
        if self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None
        await self.conn.close()
