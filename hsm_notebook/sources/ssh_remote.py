"""The remote side of ``SSHComputeSource``: what setup makes under the remote root (tasks dir,
project copy, environment script, helper lib, events watcher), made again after a reboot emptied
it, and the per-sweep folder removed once every job there succeeded and came home.  A mixin: it
uses the source's connection, facts and options, declared (typed) on the class.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import posixpath
import shlex
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from ..core.base.batching import Batcher
from ..core.base.prepare import check_version, prepare_environment
from ..core.base.shell import CommandResult
from ..core.model.errors import CommandTimeout, ConfigError, SourceError
from ..core.spec.functions import FUNCTION_FILE, LIB_DIR, VERSION_FILE, job_side_files
from ..core.spec.job import JobTemplate
from ..core.spec.jobpaths import NAMES, JobFiles, JobPaths, read_exit_code, sh, sh_read_exit_code
from .ssh_connection import SSHConnection, SSHTarget
from .ssh_jobs import RemoteJobManager
from .sync import sync_project

if TYPE_CHECKING:  # the mixin is only ever mixed into a ComputeSource: typed as one, a plain class at run time
    from ..core.base.source import ComputeSource as _SourceBase
else:
    _SourceBase = object

log = logging.getLogger("hsm_notebook.sources.ssh")

#: One job start for ``RemoteJobManager.start``: (job name, argv, extra environment, params.json's text).
StartItem = tuple[str, list[str], dict[str, str], str]

#: SIGKILL the processes $q and all their descendants (found by their parent in /proc, shell builtins only).
_KILL_TREE = ('a=; while [ -n "$q" ]; do n=; for f in /proc/[0-9]*/stat; do s=; read s < "$f" 2>/dev/null || continue; '
              'set -- ${s##*) }; for x in $q; do [ "$2" = "$x" ] && { i=${f#/proc/}; n="$n ${i%/stat}"; }; done; done; '
              'a="$a $q"; q=$n; done; [ -z "$a" ] || kill -KILL $a 2>/dev/null; true')
#: Seconds the setup check (the interpreter started through the jobs' environment) may take.
PROBE_TIMEOUT = 120.0


def exit_codes_script(tasks_dir: str, names: JobFiles = NAMES) -> str:
    """One line per job folder under ``tasks_dir``: ``NAME CODE``, ``-`` for a job without an exit code."""
    return (f"( if cd {shlex.quote(tasks_dir)} 2>/dev/null; then for j in *; do "
            f'[ -d "$j" ] || continue; {sh_read_exit_code(JobPaths.shell("j", names))}; '
            'echo "$j ${rc:--}"; done; fi )')


def _remove_script(folder: str, setsid: str) -> str:
    """Remove ``folder``: moved aside at once and deleted in the background (deleting thousands of job
    folders takes seconds of disk time that nobody should wait for), unless something in it may
    resist (not the user's, or a folder the user may not write), which is removed now so that a
    failure can be reported.  Prints "@later" when deleted in the background."""
    q = shlex.quote
    aside = q(posixpath.join(posixpath.dirname(folder), f".removing-{posixpath.basename(folder)}")) + '."$$"'
    return (f'u=$(id -u); if [ -n "$(find {q(folder)} \\( ! -user "$u" -o -type d ! -perm -300 \\) -print 2>&1 '
            f'| head -n 1)" ]; then rm -rf {q(folder)}\n'
            f"elif mv {q(folder)} {aside}; then echo @later; ({setsid} rm -rf {aside} >/dev/null 2>&1 </dev/null &)\n"
            f"else rm -rf {q(folder)}; fi")


class RemoteSideMixin(_SourceBase):
    """What the SSH source makes and removes on its host.  The source's attributes it uses are
    declared here (set by ``SSHComputeSource.__init__`` and ``setup``), so nothing is read untyped."""

    conn: SSHConnection
    target: SSHTarget
    #: What setup found on the host: home, setsid, rsync, tar, nvidia (yes), python (its version), sync.
    facts: dict[str, Any]
    root: str  # the remote root, ``~`` expanded (set by setup)
    min_free_mb: int
    sync: bool
    sync_exclude: tuple[str, ...]
    sync_include: Sequence[str] | None
    use_rsync: bool
    sync_delete: bool
    cancel_grace: float
    jobs: RemoteJobManager | None
    collect: list[str] | None
    events: str | None
    remote_cleanup: str | None
    _watcher: asyncio.Task[None] | None
    #: Jobs (by name) whose end the watcher saw: (exit code, cancelled), until a poll reports them.
    ended_pushed: dict[str, tuple[int, bool]]
    _restoring: asyncio.Lock
    _unreachable_since: float | None
    _starts: Batcher[StartItem, asyncio.Future[None] | None]

    def _command(self, argv: list[str]) -> list[str]:
        """The job's argv with the source's interpreter (see ``SSHComputeSource._command``)."""
        return self.substitute(argv)

    async def _prepare(self, template: JobTemplate, sweep_root: str) -> None:
        """What the sweep needs under the remote root: the tasks dir, the project copy, the environment
        script, the helper lib, the events file and its watcher.  Run by setup, and again by
        ``_ensure`` when they are gone (a reboot that emptied the remote root)."""
        tasks_dir = str(JobPaths.tasks_dir(PurePosixPath(sweep_root)))
        await self.conn.run(f"umask 077; mkdir -p {shlex.quote(tasks_dir)}")
        avail = (await self.conn.run(f"df -Pk {shlex.quote(sweep_root)} | tail -n 1")).stdout.split()
        free_mb = int(avail[3]) // 1024 if len(avail) > 3 and avail[3].isdigit() else None
        if free_mb is not None and free_mb < self.min_free_mb:
            raise SourceError(f"only {free_mb} MB free under {self.root} on {self.target.label} "
                              f"(min_free_mb={self.min_free_mb}); free some space or set remote_root", self.name)
        workdir = sweep_root
        if self.sync and template.workdir:
            local = Path(template.workdir)
            tag = hashlib.sha1(f"{local.absolute()}".encode()).hexdigest()[:8]
            workdir = posixpath.join(self.root, "projects", f"{local.name or 'project'}-{tag}")
            self.facts["sync"] = await sync_project(
                self.conn, local, workdir, exclude=self.sync_exclude, include=self.sync_include,
                use_rsync=self.use_rsync and self.facts.get("rsync") == "yes", delete=self.sync_delete,
                sweep_dir=self.sweep_dir)
        await self._setup_environment(template, sweep_root, workdir)
        setsid = "setsid" if self.facts.get("setsid") == "yes" else "nohup"
        lib = await self._upload_helpers(template)
        if template.python_version:
            await self._upload_function(sweep_root)
        self.jobs = RemoteJobManager(self.conn, tasks_dir, workdir, setsid,
                                     self.cancel_grace, lib)
        self.jobs.tar = self.facts.get("tar") == "yes"
        self.jobs.tar_posix, self.jobs.tar_nul = self.facts.get("tarposix") == "yes", self.facts.get("tarnul") == "yes"
        self.events = posixpath.join(sweep_root, "events")
        await self._watch()

    async def _setup_environment(self, template: JobTemplate, sweep_root: str, workdir: str) -> None:
        """One remote command (``core.base.prepare``): write the environment script (named by its
        content, replaced whole) and run the command's program, the interpreter for a python command,
        through it where the jobs run; probed even without an environment, as the host's Python
        version is read from it.  A broken environment, a missing interpreter or one that hangs is
        refused now, in words."""
        command = self._command(list(template.command))
        trace, pid = posixpath.join(sweep_root, ".hsm-probe-trace"), posixpath.join(sweep_root, ".hsm-probe-pid")
        q = shlex.quote

        def traced(probe: str) -> str:
            # traced by bash (SHELLOPTS from the environment) into a file: a line that hangs can be named;
            # its pid recorded, so what hangs can be ended (no setsid: that may be a shim on the host)
            return (f"/bin/sh -c 'echo $$ > \"$1\"; exec env SHELLOPTS=xtrace BASH_XTRACEFD=5 /bin/sh -c \"$2\"' "
                    f"hsm-probe {q(pid)} {q(probe)} 5>{q(trace)} & wait $!")

        async def run(script: str, *args: str) -> CommandResult:
            try:
                return await self.conn.run(shlex.join(["sh", "-c", script, "hsm-env", *args]), check=False,
                                           timeout=PROBE_TIMEOUT)
            except CommandTimeout as exc:
                program = command[0]
                raise SourceError(await self._hung(exc, trace, pid, program), self.name) from None

        prepared = await prepare_environment(self, self.environment, run, folder=sweep_root, workdir=workdir,
                                             where=self.target.label, command=command, always=True, wrap=traced)
        self._env_script = prepared.script
        self.facts["python"] = check_version(self, prepared.output, self.target.label)

    async def _hung(self, exc: CommandTimeout, trace: str, pid: str, program: str) -> str:
        """The setup probe got no answer in time: end it (its process group) and name the environment
        line it hung at, read from its trace (bash hosts), in words with the fix."""
        line = ""
        try:
            await self.conn.connect()  # the timeout closed the connection: the shell's state was unknown
            q = shlex.quote
            line = (await self.conn.run(
                f"q=; read q < {q(pid)} 2>/dev/null; {_KILL_TREE}; sed -n 's/^+* _hsm_w=//p' {q(trace)} "
                f"2>/dev/null | tail -n 1; rm -f {q(trace)} {q(pid)}", check=False, timeout=30)).stdout.strip()
        except SourceError:
            pass  # the message below still names the command and the environment
        if len(line) > 1 and line[0] == line[-1] == "'":
            line = line[1:-1].replace("'\\''", "'")
        where = (f"at the environment line {line!r}" if line and line != "start"
                 else f"in its environment ({self.environment.summary()})" if self.environment else "")
        return (f"timed out: the setup check (running {program!r} through the jobs' environment on "
                f"{self.target.label}) got no answer in {exc.timeout:.0f} s; it hung {where}. A line that waits "
                "for input (a prompt, `read`, a password, a licence question) or for something that never comes "
                "would hang every job: make it non-interactive or remove it from environment=... "
                "(pre_script, conda_env, modules)").replace("; it hung .", ".")

    async def _watch(self) -> None:
        """No channel of its own: in the background of the persistent shell, ``tail -F`` of the events
        file the job wrappers append to, read by a loop that adds each job's exit code (and whether it
        was cancelled), so a finished job wakes the manager at once and its poll needs no command
        (``_pushed``).  By name: an events file made again after a reboot emptied the remote root is
        followed too.  Without ``mkfifo`` the bare wake-ups remain."""
        assert self.events is not None and self.jobs is not None, "set by _prepare"
        events, q = shlex.quote(self.events), shlex.quote
        await self.conn.run(f"touch {events}")
        p = JobPaths.shell("d")
        loop = (f't={q(self.jobs.tasks_dir)}; [ -n "$_hsm_q" ] || exit 0; {{ rm -f "$_hsm_q"\n'
                "  while IFS= read -r j; do case $j in ''|.*|*/*) continue;; esac; d=\"$t/$j\"\n"
                f'    {sh_read_exit_code(p)}; c=""; [ -f {sh(p.cancelled)} ] && c=" C"\n'
                '    printf \'@hsm-end %s %s%s\\n\' "$j" "${rc:--}" "$c"; done; } <"$_hsm_q"')
        proc = await self.conn.start_process(
            f'if [ -n "$_hsm_q" ]; then exec tail -n 0 -F {events} >"$_hsm_q"; else exec tail -n 0 -F {events}; fi',
            loop, prelude=f'_hsm_q={q(self.events + ".fifo")}.$$; rm -f "$_hsm_q"; mkfifo "$_hsm_q" 2>/dev/null '
                          '|| _hsm_q=')
        if self._watcher is not None:
            self._watcher.cancel()

        async def read() -> None:
            try:
                while line := await proc.stdout.readline():
                    if line.startswith(b"@hsm-end "):
                        self._pushed(line[9:].decode(errors="replace").split())
                    self.notify()
            except Exception:  # noqa: BLE001 - a dropped watcher only costs latency; polling goes on
                pass

        self._watcher = asyncio.get_running_loop().create_task(read())

    def _pushed(self, words: list[str]) -> None:
        """A job's end as the watcher saw it: its exit code (the wrapper wrote it before the event) and
        whether it was cancelled; kept for the next poll (bounded: a poll that misses it asks the host)."""
        if len(words) >= 2 and (rc := read_exit_code(words[1])) is not None:
            self.ended_pushed[words[0]] = (rc, words[2:3] == ["C"])
            while len(self.ended_pushed) > 10000:
                del self.ended_pushed[next(iter(self.ended_pushed))]
            if self.jobs is not None and self.sweep_dir is not None:
                try:
                    self.jobs.prefetch(words[0], self.job_dir(words[0]), self.collect)
                except ConfigError:  # not a job's name
                    pass

    async def _upload_helpers(self, template: JobTemplate) -> str:
        """Put ``hsm_notebook.metrics`` (stdlib only) on the remote, so jobs can ``log_metrics``
        without installing anything there; for a function sweep also the runner and cloudpickle
        (pure Python).  Returns the folder to add to PYTHONPATH."""
        lib = posixpath.join(self.root, LIB_DIR)
        files = job_side_files(bool(template.python_version))
        script = " && ".join(f"mkdir -p {shlex.quote(posixpath.dirname(posixpath.join(lib, name)))} && printf '%s' "
                             f"{shlex.quote(text)} > {shlex.quote(posixpath.join(lib, name))}"
                             for name, text in files.items())
        await self.conn.run(script)
        return lib

    async def _upload_function(self, sweep_root: str) -> None:
        """A function sweep's pickled function (and its Python version), once per sweep, next to
        the remote tasks folder where the runner looks for it."""
        assert self.sweep_dir is not None
        sftp = await self.conn.sftp()
        for name in (FUNCTION_FILE, VERSION_FILE):
            await sftp.put(str(self.sweep_dir / name), posixpath.join(sweep_root, name))

    async def _ensure(self) -> None:
        """Reconnect after a drop, with backoff inside the caller's polling rhythm; set the remote up
        again when what setup made there is gone (a reboot that emptied the remote root)."""
        if self.conn.alive and (self.jobs is None or not self.jobs.needs_setup):
            return
        if self.jobs is None:
            raise SourceError("not set up", self.name)
        async with self._restoring:  # a poll and a submission may both find it gone: one sets it up
            if not self.conn.alive:
                await self.conn.connect()
                self._unreachable_since = None
                await self._restore()
            elif self.jobs.needs_setup:
                await self._restore()

    async def _restore(self) -> None:
        """After a reconnect (one command checks) or a poll or fetch that found them gone: make the
        tasks dir, project copy, environment script, helper lib and events watcher again if missing."""
        assert self.jobs is not None
        jobs, q = self.jobs, shlex.quote
        if not jobs.needs_setup:
            out = (await self.conn.run(f"[ -d {q(jobs.tasks_dir)} ] && [ -d {q(jobs.workdir)} ] && "
                                       f"[ -f {q(jobs.pythonpath)}/hsm_notebook/metrics.py ] && echo ok",
                                       check=False)).stdout
            if out.strip() == "ok":
                await self._watch()  # the watcher ended with the old connection
                return
        log.warning("%s: this sweep's files under %s are gone from %s (was the host rebooted?); setting the "
                    "remote up again", self.name, self.root, self.target.label)
        await self._prepare(self.template or JobTemplate(("true",)), posixpath.dirname(jobs.tasks_dir))

    async def _remove_remote(self) -> str:
        """Remove the remote sweep folder if nothing there is unfinished, failed or not collected."""
        assert self.jobs is not None
        sweep_root = posixpath.dirname(self.jobs.tasks_dir)
        if posixpath.basename(posixpath.dirname(sweep_root)) != "sweeps":
            return f"kept {sweep_root}: not a sweep folder"
        if self._starts:
            return f"kept {sweep_root}: jobs were still being started there"
        if not self.conn.alive:
            return self.remote_cleanup or f"kept {sweep_root}: {self.target.label} is not connected"
        out = (await self.conn.run(exit_codes_script(self.jobs.tasks_dir))).stdout
        unfinished, failed, uncollected = [], [], []
        for line in out.splitlines():
            name, _, text = line.rpartition(" ")
            if not name:
                continue
            rc = read_exit_code(text)
            if rc is None:
                unfinished.append(name)
            elif rc != 0:
                failed.append(name)
            elif not self._collected(name):
                uncollected.append(name)
        why = [f"{len(names)} job(s) {what} ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})"
               for what, names in (("not ended", unfinished), ("failed", failed), ("not collected", uncollected))
               if names]
        if why:
            return f"kept {sweep_root}: " + "; ".join(why)
        result = await self.conn.run(_remove_script(sweep_root, self.jobs.setsid), check=False, timeout=600)
        if result.exit_code != 0:
            return f"kept {sweep_root}: could not remove it: {result.stdout.strip()[-300:]}"
        later = "; its files are deleted in the background" if "@later" in result.stdout else ""
        return f"removed {sweep_root} (every job there succeeded and was collected{later})"

    def _collected(self, job_name: str) -> bool:
        try:
            return JobPaths(self.job_dir(job_name)).exit_code.exists()
        except ConfigError:  # not a job's folder
            return False
