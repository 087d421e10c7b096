"""``RemoteJobManager``: detached jobs on one SSH host, driven through its persistent shell.

Every method is one remote command in the persistent shell whatever the number of jobs: start a
batch (answered at once: a starter subshell launches it), poll all, stop one; ``fetch`` of many is
a listing and one tar stream (one SFTP batch without tar), written to disk as it arrives; jobs the
watcher saw end are fetched ahead (``prefetch``), so the collection that asks for them finds them.
"""

from __future__ import annotations

import asyncio
import logging
import posixpath
import secrets
import shlex
import tarfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path, PurePosixPath

import asyncssh

from ..core.base.shell import join
from ..core.model.errors import ConnectError, SourceError, SubmitError
from ..core.spec.job import WRAPPER
from ..core.spec.jobpaths import (
    NAMES,
    NEVER,
    JobFiles,
    JobPaths,
    check_job_name,
    read_exit_code,
    sh,
    sh_claim,
    sh_read_exit_code,
)
from .collect import (
    BULK,
    Fetched,
    check_patterns,
    extract,
    left_note,
    list_script,
    parse_listing,
    pipe_to_thread,
    selector,
    tar_script,
    tar_why,
    wanted,
)
from .ssh_connection import SSHConnection

__all__ = ["RemoteJobManager", "Fetched", "check_patterns", "wanted"]  # the last three: collect's, used from here

log = logging.getLogger(__name__)

#: Bytes of a small transfer over the persistent shell read ahead of the disk (see ``pipe_to_thread``).
AHEAD = 32 << 20
_WRAPPER = shlex.quote(WRAPPER)  # in every start command
#: Seconds a finished job waits for others to end before their folders are fetched ahead (``prefetch``).
PREFETCH_AFTER = 0.2
_AHEAD_MAX = 10000  # folders fetched ahead and not yet asked for, at most

#: Per job: "<name> <code> [exit code]"; X=exited, R=running (or just started), L=its wrapper is gone
#: without an exit code, Q=not started yet, its launcher still running (a slow start), N=never
#: started: its launcher is gone and the job is claimed (pid file "never"), so it never will,
#: E=its wrapper claimed the job but could not write its pid (a full disk) and ran nothing.
#: The launcher's pid (the wrapper's own: setsid and nohup exec without forking, as the job
#: is not a process group leader) is checked with its start time against pid reuse.  Builtins
#: only, except `mkdir` for a job whose folder was never made.  G=the tasks dir itself is gone (a
#: reboot emptied the remote root); a line "@setup" says what setup made is missing (see ``needs_setup``).
#: A job to start: (name, argv, extra environment[, the text of its params.json]).
Start = tuple[str, Sequence[str], dict[str, str]] | tuple[str, Sequence[str], dict[str, str], str]
# No `exit` in any script: they run inside the persistent shell, which must survive them (and
# `set -C` is always undone).
def poll_script(check: str, tasks: str, jobs: Sequence[str], names: JobFiles = NAMES,
                starters: Mapping[str, str] | None = None) -> str:
    """The poll of ``jobs`` (job names) in the tasks dir ``tasks``, after the shell test ``check``;
    every file name from ``names`` (see the codes above).  A job not started yet has two launch records:
    its batch's starter (``starters``: "PID:STARTTIME" by job, as the start command answered), looked
    at first, then its own launcher (``launch``, which the starter writes before it ends): alive, either
    means a slow start."""
    p = JobPaths.shell("j", names)
    pid, launch, cancelled = sh(p.pid), sh(p.launch), sh(p.cancelled)
    read_rc = sh_read_exit_code(p)
    each = " ".join(shlex.quote(f"{j}:{starters[j]}" if starters and j in starters else j) for j in jobs)
    return rf"""{check}if cd {shlex.quote(tasks)} 2>/dev/null; then for x in {each}; do j=${{x%%:*}}
  c=""; [ -f {cancelled} ] && c=" C"
  {read_rc}
  if [ -n "$rc" ]; then echo "$j X $rc$c"
  elif [ -s {pid} ]; then p=""; read p < {pid}; st=""
    if [ "$p" = {NEVER} ]; then echo "$j N$c"
    else [ -r "/proc/$p/stat" ] && read st < "/proc/$p/stat" 2>/dev/null
    if kill -0 "$p" 2>/dev/null && case "$st" in *") Z "*) false;; *) true;; esac; then echo "$j R$c"
    else {read_rc}
      if [ -n "$rc" ]; then echo "$j X $rc$c"; else echo "$j L$c"; fi; fi; fi
  else a=""; k=${{x#"$j"}}; k=${{k#:}}
    for f in starter {launch}; do l=""; s=""; st=""
      if [ "$f" = starter ]; then l=${{k%%:*}}; [ -z "$k" ] || s=${{k#*:}}; elif [ -f "$f" ]; then read l s < "$f"; fi
      if [ -n "$l" ] && kill -0 "$l" 2>/dev/null; then a=y
        [ -r "/proc/$l/stat" ] && read st < "/proc/$l/stat" 2>/dev/null
        case "$st" in *") Z "*) a="";; *")"*) set -- ${{st##*) }}; [ -z "$s" ] || [ "${{20}}" = "$s" ] || a=""
        esac; fi
      [ -z "$a" ] || break; done
    if [ -n "$a" ]; then if [ -f {pid} ]; then echo "$j R$c"; else echo "$j Q$c"; fi
    elif [ -f {pid} ]; then {read_rc}
      if [ -n "$rc" ]; then echo "$j X $rc$c"; elif [ -s {pid} ]; then echo "$j R$c"; else echo "$j E$c"; fi
    else [ -d "$j" ] || mkdir -p "$j" 2>/dev/null
      if {sh_claim(p)}; then echo "$j N$c"; elif [ -f {pid} ]; then echo "$j R$c"; else echo "$j E$c"; fi; fi
  fi
done; else for x in {each}; do echo "${{x%%:*}} G"; done; fi"""


def stop_script(job_dir: str, cancel_grace: float, names: JobFiles = NAMES) -> str:
    """TERM a job's process group and KILL it after ``cancel_grace`` seconds (a detached timer); a job
    that has not started is claimed instead.  Prints "stopping", or "finished" for an ended job."""
    p = JobPaths.shell("d", names)
    pid = sh(p.pid)
    return (f"d={shlex.quote(job_dir)}; if [ -s {sh(p.exit_code)} ]; then echo finished\n"
            f"else [ -d \"$d\" ] || mkdir -p \"$d\"; touch {sh(p.cancelled)}; p=\"\"\n"
            f"  if [ ! -f {pid} ]; then {sh_claim(p)}; fi\n"
            f"  [ -s {pid} ] && read p < {pid}\n"
            f"  if [ -n \"$p\" ] && [ \"$p\" != {NEVER} ]; then\n"
            f"    kill -TERM -\"$p\" 2>/dev/null || kill -TERM \"$p\" 2>/dev/null\n"
            f"    ( (sleep {cancel_grace}; kill -KILL -\"$p\" 2>/dev/null) >/dev/null 2>&1 </dev/null & ); fi\n"
            f"  echo stopping; fi")


class RemoteJobManager:
    """Starts, inspects, stops and fetches detached jobs on one host; knows nothing of sweeps."""

    def __init__(self, conn: SSHConnection, tasks_dir: str, workdir: str, setsid: str, cancel_grace: float,
                 pythonpath: str):
        self.conn, self.tasks_dir, self.workdir = conn, tasks_dir, workdir
        self.setsid, self.cancel_grace, self.pythonpath = setsid, cancel_grace, pythonpath
        self.tar = False  # set when the host has tar
        self.tar_posix = False  # ... that writes the posix format (sub-second mtimes: GNU tar)
        self.tar_nul = False  # ... that reads NUL-separated names (and find prints them)
        #: Set when a poll or a fetch found that what setup made is gone (the tasks dir, the project
        #: copy, the helper lib: a reboot emptied the remote root); the source sets it up again.
        self.needs_setup = False
        self.events = posixpath.join(posixpath.dirname(tasks_dir), "events")
        #: "PID:STARTTIME" of the starter of each job whose start it answered (see ``start_script``)
        self.starters: dict[str, str] = {}
        # fetching ahead (``prefetch``): ended jobs waiting, being fetched, fetched (gone, left)
        self._waiting: dict[str, Path] = {}
        self._inflight: dict[str, asyncio.Future[None]] = {}
        self._ahead: dict[str, tuple[str | None, str | None]] = {}
        self._prefetcher: asyncio.Task[None] | None = None

    def paths(self, job_name: str) -> JobPaths[PurePosixPath]:
        """A job's folder and files on the host."""
        return JobPaths(PurePosixPath(self.tasks_dir) / check_job_name(job_name))

    def start_script(self, jobs: Sequence[Start]) -> str:
        """One script that starts every job in ``jobs`` ((name, argv, env[, params.json text]), ...)
        detached.  The shell only forks the batch's *starter* and answers with its pid and start time
        ("starter PID STARTTIME", kept in ``starters`` for the polls), so the next command need not wait
        for the launches; the starter makes the jobs' folders (with params.json), launches each job and
        writes its ``launch`` record, then ends (its jobs outlive it).  A poll tells a slow start (either
        alive) from a job that never started (both gone: claimed, see ``poll_script``); a folder that
        cannot be made is "E" there."""
        paths = [self.paths(job[0]) for job in jobs]
        dirs = [str(p.folder) for p in paths]
        q = shlex.quote
        tasks = q(self.tasks_dir)
        lines = [f"umask 077; [ -d {tasks} ] || mkdir -p {tasks}; if [ -d {tasks} ]; then (",
                 f"PYTHONPATH={q(self.pythonpath)}${{PYTHONPATH:+:$PYTHONPATH}}; export PYTHONPATH",
                 f"mkdir -p {' '.join(q(d) for d in dirs)} && cd {q(self.workdir)} || exit 1"]
        for d, p, job in zip(dirs, paths, jobs, strict=True):
            argv, env = job[1], job[2]
            if len(job) > 3:
                lines.append(f"printf %s {q(job[3])} > {q(str(p.params))}")
            assigns = " ".join(f"{k}={q(v)}" for k, v in {**env, "HSM_EVENTS": self.events}.items())
            # the launcher's pid and start time go to `launch`, so a poll can tell a slow start from a job
            # that never started.  The job's variables are set by `env` after setsid: a job's PATH never
            # hides the launcher (setsid and env exec without forking, so the pid stays the wrapper's)
            lines.append(f"{self.setsid} env {assigns} /bin/sh -c {_WRAPPER} hsm-job {q(d)} {join(argv)} "
                         f">/dev/null 2>&1 </dev/null & p=$!; st=''; read st 2>/dev/null < /proc/$p/stat; "
                         f"set -- ${{st##*) }}; echo \"$p ${{20:-}}\" 2>/dev/null > {q(str(p.launch))}")
        lines.append(") >/dev/null 2>&1 </dev/null & p=$!; st=''; read st 2>/dev/null < /proc/$p/stat; "
                     "set -- ${st##*) }; echo \"starter $p ${20:-}\"")
        lines.append("echo started; fi")
        return "\n".join(lines)

    async def start(self, jobs: Sequence[Start]) -> None:
        """Start every job of the batch with one remote command; SubmitError if the host refuses."""
        await self.begin(jobs)

    def begin(self, jobs: Sequence[Start]) -> asyncio.Future[None]:
        """Write the start of the batch now (NotConnected if it cannot be: nothing ran); the returned
        future holds the host's answer (SubmitError if it refused, ConnectError if it never came)."""
        answer = self.conn.begin(self.start_script(jobs))

        async def check() -> None:
            result = await answer
            if result.exit_code != 0 or "started" not in result.stdout:
                names = ", ".join(job[0] for job in jobs)
                raise SubmitError(f"could not start {names} on {self.conn.target.label}: "
                                  f"{result.stdout.strip()[-300:] or f'exit code {result.exit_code}'}",
                                  self.conn.source)
            words = next((line.split()[1:] for line in result.stdout.splitlines() if line.startswith("starter ")), [])
            if len(words) == 2 and all(w.isdigit() for w in words):
                self.starters.update((job[0], ":".join(words)) for job in jobs)

        checked = asyncio.ensure_future(check())
        checked.add_done_callback(lambda f: f.cancelled() or f.exception())  # told to the submissions
        return checked

    async def states(self, job_names: Sequence[str]) -> dict[str, tuple[str, int | None, bool]]:
        """One remote command for all jobs: ``{name: (code, exit code, cancelled)}``."""
        check = (f"[ -d {shlex.quote(self.workdir)} ] && [ -f {shlex.quote(self.pythonpath)}/hsm_notebook/metrics.py ]"
                 " || echo @setup; ")
        script = poll_script(check, self.tasks_dir, job_names, starters=self.starters)
        out = (await self.conn.run(script)).stdout
        lines = out.splitlines()
        if "@setup" in lines or any(line.endswith(" G") for line in lines):
            self.needs_setup = True
        states = {}
        for line in lines:
            parts = line.split()
            if len(parts) >= 2 and parts[0] in job_names:
                cancelled = parts[-1] == "C"
                rc = read_exit_code(parts[2]) if parts[1] == "X" and len(parts) > 2 else None
                states[parts[0]] = (parts[1], rc, cancelled)
                if parts[1] not in ("Q",):  # its wrapper claimed it, it ended or it never will start
                    self.starters.pop(parts[0], None)
        return states

    async def stop(self, job_name: str) -> bool:
        """TERM the job's process group, KILL it after the grace period (a detached timer).  A job
        that has not started is claimed instead (its pid file made "never"), so it never does."""
        out = (await self.conn.run(stop_script(str(self.paths(job_name).folder), self.cancel_grace),
                                   check=False)).stdout
        return "stopping" in out

    async def fetch(self, job_names: Sequence[str], local_dirs: Sequence[Path],
                    patterns: Sequence[str] | None = None) -> Fetched:
        """Bring the given job dirs home, file by file straight to disk: one ``tar`` stream per batch
        through the persistent shell (a large one over a second shell, so polls and starts need not
        wait for it), extracted as it arrives; SFTP where the host has no tar.  ``patterns`` (None:
        every file; see :func:`pattern_regex`) choose what comes back besides the product's own files.
        Returns the jobs whose folder is not there and the chosen files that did not come back (both
        in words; the others are fetched all the same); raises only when the transfer itself fails (a
        lost connection), so the batch is tried again.  Folders fetched ahead (``prefetch``) are not
        fetched again."""
        by_name = dict(zip(job_names, local_dirs, strict=True))
        if self._inflight and self._inflight.keys() & by_name.keys():
            await asyncio.shield(asyncio.gather(*{self._inflight[n] for n in by_name if n in self._inflight},
                                                return_exceptions=True))
        got = Fetched()
        for name in list(by_name):
            self._waiting.pop(name, None)
            if name in self._ahead:
                gone, left = self._ahead.pop(name)
                got.gone.update({name: gone} if gone else {})
                got.left.update({name: left} if left else {})
                del by_name[name]
        if by_name:
            now = await self._fetch(by_name, patterns)
            got.gone.update(now.gone)
            got.left.update(now.left)
        return got

    async def _fetch(self, by_name: dict[str, Path], patterns: Sequence[str] | None) -> Fetched:
        if not by_name:
            return Fetched()
        if self.tar:
            return await self._fetch_tar(by_name, selector(patterns))
        return await self._fetch_sftp(by_name, selector(patterns))

    def prefetch(self, job_name: str, local_dir: Path, patterns: Sequence[str] | None) -> None:
        """A job ended (the watcher said so): its folder comes home ahead of the collection that will
        ask for it, with the others that end within ``PREFETCH_AFTER`` seconds, so that collection (the
        sweep's last above all) finds it here.  A failure only leaves it to that collection."""
        if job_name in self._ahead or job_name in self._inflight or len(self._ahead) >= _AHEAD_MAX:
            return
        self._waiting[job_name] = local_dir
        if self._prefetcher is None or self._prefetcher.done():
            self._prefetcher = asyncio.get_running_loop().create_task(self._prefetch(patterns))

    async def _prefetch(self, patterns: Sequence[str] | None) -> None:
        loop = asyncio.get_running_loop()
        while self._waiting:
            await asyncio.sleep(PREFETCH_AFTER)
            batch, self._waiting = self._waiting, {}
            done: asyncio.Future[None] = loop.create_future()
            self._inflight.update(dict.fromkeys(batch, done))
            try:
                got = await self._fetch(batch, patterns)
                self._ahead.update({name: (got.gone.get(name), got.left.get(name)) for name in batch})
            except Exception as exc:  # noqa: BLE001 - the collection fetches them, and says what failed
                log.debug("%s: fetching %d finished job(s) ahead failed: %s", self.conn.source, len(batch), exc)
            finally:
                for name in batch:
                    self._inflight.pop(name, None)
                done.set_result(None)

    def stop_prefetch(self) -> None:
        if self._prefetcher is not None:
            self._prefetcher.cancel()
            self._prefetcher = None

    async def _fetch_tar(self, by_name: dict[str, Path], want: Callable[[str], bool]) -> Fetched:
        """Two commands in the persistent shell (no channel, no login shell): the listing, then the chosen
        files as one tar stream, extracted as it arrives; a large one goes over the bulk shell."""
        token = secrets.token_hex(4)
        rc, out = await self.conn.run_bytes(list_script(self.tasks_dir, list(by_name), token, self.tar_nul),
                                            timeout=300)
        if rc is None:
            raise ConnectError(f"connection to {self.conn.target.label} lost while fetching", self.conn.source)
        listing = parse_listing(out, token, self.tar_nul)
        missing = set(by_name) if listing.root else listing.missing & set(by_name)
        self.needs_setup = self.needs_setup or listing.root
        chosen: dict[str, list[str]] = {}
        unlisted: dict[str, list[str]] = {}  # names the newline-separated listing cannot carry
        size, prev = 0, ""
        for path, at_least in listing.files:
            top, _, rel = path.partition("/")
            if top in by_name and rel:
                prev = top
                if rel != NAMES.launch and want(rel):  # the launcher's pid on the host: nothing to keep here
                    chosen.setdefault(top, []).append(rel)
                    size += at_least
            elif prev:  # newline-separated: the rest of a name that holds a newline
                unlisted.setdefault(prev, []).append(path)
        extracted: set[tuple[str, str]] = set()
        why = ""
        if chosen:
            errors = posixpath.join(posixpath.dirname(self.tasks_dir), f".hsm-tar-{token}.err")
            script = tar_script(self.tasks_dir, [f"{top}/{rel}" for top, rels in chosen.items() for rel in rels],
                                errors, nul=self.tar_nul, posix=self.tar_posix)
            try:
                async with self.conn.stream(script, bulk=size >= BULK) as stream:
                    extracted = await pipe_to_thread(stream, extract, by_name, ahead=1 << 20 if size >= BULK else AHEAD)
            except tarfile.TarError as exc:
                raise SourceError(f"the files of {', '.join(by_name)} came back damaged from "
                                  f"{self.conn.target.label} ({exc}); they are fetched again",
                                  self.conn.source) from None
            if stream.exit_code != 0:  # e.g. a file that could not be read: the rest came; named below
                said = (await self.conn.run(f"cat {shlex.quote(errors)}; rm -f {shlex.quote(errors)}",
                                            check=False)).stdout
                log.debug("tar on %s: exit status %s: %s", self.conn.target.label, stream.exit_code, said.strip())
                why = tar_why(said)
        left = {}
        for name in by_name:
            files = [rel for rel in chosen.get(name, []) if (name, rel) not in extracted]
            if files:
                left[name] = left_note(files, why)
            if unlisted.get(name):
                note = left_note(unlisted[name], "this host's tar cannot read NUL-separated names, so a name "
                                                  "holding a newline cannot be asked for")
                left[name] = f"{left[name]}; {note}" if name in left else note
        for name, note in left.items():
            log.warning("%s: job %s: %s", self.conn.source, name, note)
        return Fetched({name: self._gone(name) for name in missing}, left)

    def _gone(self, name: str) -> str:
        return (f"its remote folder {self.paths(name).folder} is gone (was the host rebooted or "
                "the folder removed?)")

    async def _fetch_sftp(self, by_name: dict[str, Path], want: Callable[[str], bool]) -> Fetched:
        """The same over SFTP, for hosts without tar: each wanted file written to disk as it comes."""
        sftp = await self.conn.sftp()
        sem = asyncio.Semaphore(32)
        missing: set[str] = set()
        failed: dict[str, list[tuple[str, str]]] = {}

        async def walk(name: str, rel: str = "") -> list[str]:
            async with sem:
                entries = await sftp.readdir(posixpath.join(self.tasks_dir, name, rel))
            files: list[str] = []
            subdirs: list[str] = []
            for e in entries:
                filename = e.filename if isinstance(e.filename, str) else e.filename.decode(errors="surrogateescape")
                if filename in (".", ".."):
                    continue
                path = posixpath.join(rel, filename) if rel else filename
                if e.attrs.type == asyncssh.FILEXFER_TYPE_REGULAR and want(path):
                    files.append(path)
                elif e.attrs.type == asyncssh.FILEXFER_TYPE_DIRECTORY:
                    subdirs.append(path)
            for sub in subdirs:
                files += await walk(name, sub)
            return files

        async def listing(name: str) -> list[str]:
            try:
                return await walk(name)
            except asyncssh.SFTPNoSuchFile:
                missing.add(name)
                return []

        async def get(name: str, rel: str) -> None:
            target = by_name[name] / rel
            if rel == NAMES.params and target.exists():
                return  # written here at submission
            target.parent.mkdir(parents=True, exist_ok=True)
            async with sem:
                try:
                    await sftp.get(posixpath.join(self.tasks_dir, name, rel), str(target), preserve=True)
                except (asyncssh.SFTPPermissionDenied, asyncssh.SFTPNoSuchFile) as exc:  # that file alone
                    failed.setdefault(name, []).append((rel, exc.reason))

        listings = await asyncio.gather(*(listing(n) for n in by_name))
        for last in (False, True):  # exit codes after the rest: a local one means a folder home whole
            await asyncio.gather(*(get(n, rel) for n, files in zip(by_name, listings, strict=True) for rel in files
                                   if (rel == NAMES.exit_code) == last))
        left = {name: left_note([rel for rel, _ in files], files[0][1]) for name, files in failed.items()}
        for name, note in left.items():
            log.warning("%s: job %s: %s", self.conn.source, name, note)
        return Fetched({name: self._gone(name) for name in missing}, left)
