"""``RemoteJobManager``: detached jobs on one SSH host, driven through its persistent shell.

Every method is one remote command (or, for ``fetch`` without tar, one SFTP batch),
whatever the number of jobs: start a batch, poll all, stop one, fetch many.
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
import posixpath
import shlex
import tarfile
from pathlib import Path
from typing import Dict, Optional, Sequence

from ..core.errors import SubmitError
from ..core.job import PARAMS_FILE, WRAPPER
from ..core.shell import join
from .ssh_connection import SSHConnection

#: Per job: "<name> <code> [exit code]"; X=exited, R=running (or just started), L=its wrapper is gone
#: without an exit code, Q=not started yet, its launcher still running (a slow start), N=never
#: started: its launcher is gone and the job is claimed (pid file "never"), so it never will,
#: E=its wrapper claimed the job but could not write its pid (a full disk) and ran nothing.
#: The launcher's pid (the wrapper's own: setsid and nohup exec without forking, as the job
#: is not a process group leader) is checked with its start time against pid reuse.  Builtins
#: only, except `mkdir` for a job whose folder was never made.
# No `exit` in any script: they run inside the persistent shell, which must survive them (and
# `set -C` is always undone).
_POLL = r"""if cd {tasks} 2>/dev/null; then for j in {jobs}; do
  c=""; [ -f "$j/cancelled" ] && c=" C"
  rc=""; [ -f "$j/exit_code" ] && read rc < "$j/exit_code"
  if [ -n "$rc" ]; then echo "$j X $rc$c"
  elif [ -s "$j/pid" ]; then p=""; read p < "$j/pid"; st=""
    if [ "$p" = never ]; then echo "$j N$c"
    else [ -r "/proc/$p/stat" ] && read st < "/proc/$p/stat" 2>/dev/null
    if kill -0 "$p" 2>/dev/null && case "$st" in *") Z "*) false;; *) true;; esac; then echo "$j R$c"
    else rc=""; [ -f "$j/exit_code" ] && read rc < "$j/exit_code"
      if [ -n "$rc" ]; then echo "$j X $rc$c"; else echo "$j L$c"; fi; fi; fi
  else l=""; s=""; st=""; a=""; [ -f "$j/launch" ] && read l s < "$j/launch"
    if [ -n "$l" ] && kill -0 "$l" 2>/dev/null; then a=y
      [ -r "/proc/$l/stat" ] && read st < "/proc/$l/stat" 2>/dev/null
      case "$st" in *") Z "*) a="";; *")"*) set -- ${{st##*) }}; [ -z "$s" ] || [ "${{20}}" = "$s" ] || a="";; esac; fi
    if [ -n "$a" ]; then if [ -f "$j/pid" ]; then echo "$j R$c"; else echo "$j Q$c"; fi
    elif [ -f "$j/pid" ]; then rc=""; [ -f "$j/exit_code" ] && read rc < "$j/exit_code"
      if [ -n "$rc" ]; then echo "$j X $rc$c"; elif [ -s "$j/pid" ]; then echo "$j R$c"; else echo "$j E$c"; fi
    else [ -d "$j" ] || mkdir -p "$j" 2>/dev/null; set -C
      if {{ echo never > "$j/pid"; }} 2>/dev/null; then set +C; echo "$j N$c"; else set +C; echo "$j R$c"; fi; fi
  fi
done; fi"""


class RemoteJobManager:
    """Starts, inspects, stops and fetches detached jobs on one host; knows nothing of sweeps."""

    def __init__(self, conn: SSHConnection, tasks_dir: str, workdir: str, setsid: str, cancel_grace: float,
                 pythonpath: str):
        self.conn, self.tasks_dir, self.workdir = conn, tasks_dir, workdir
        self.setsid, self.cancel_grace, self.pythonpath = setsid, cancel_grace, pythonpath
        self.tar = False  # set when the host has tar and base64
        self.events = posixpath.join(posixpath.dirname(tasks_dir), "events")

    def start_script(self, jobs: Sequence[tuple[str, Sequence[str], Dict[str, str]]]) -> str:
        """One script that starts every job in ``jobs`` ((name, argv, env), ...) detached."""
        dirs = [posixpath.join(self.tasks_dir, name) for name, _, _ in jobs]
        lines = [f"umask 077; if mkdir -p {' '.join(shlex.quote(d) for d in dirs)}; then "
                 f"PYTHONPATH={shlex.quote(self.pythonpath)}${{PYTHONPATH:+:$PYTHONPATH}}; export PYTHONPATH"]
        for d, (_, argv, env) in zip(dirs, jobs):
            assigns = " ".join(f"{k}={shlex.quote(v)}" for k, v in {**env, "HSM_EVENTS": self.events}.items())
            # the launcher's pid and start time go to `launch`, so a poll can tell a slow start from
            # a job that never started; the subshell exits at once (no zombie for the persistent shell)
            lines.append(f"(if cd {shlex.quote(self.workdir)}; then {assigns} {self.setsid} /bin/sh -c "
                         f"{shlex.quote(WRAPPER)} hsm-job {shlex.quote(d)} {join(argv)} >/dev/null 2>&1 </dev/null & "
                         f"p=$!; st=''; read st 2>/dev/null < /proc/$p/stat; set -- ${{st##*) }}; "
                         f"echo \"$p ${{20:-}}\" 2>/dev/null > {shlex.quote(d)}/launch; fi)")
        lines.append("echo started; fi")
        return "\n".join(lines)

    async def start(self, jobs: Sequence[tuple[str, Sequence[str], Dict[str, str]]]) -> None:
        """Start every job of the batch with one remote command; SubmitError if the host refuses."""
        result = await self.conn.run(self.start_script(jobs), check=False)
        if result.exit_code != 0 or "started" not in result.stdout:
            names = ", ".join(name for name, _, _ in jobs)
            raise SubmitError(f"could not start {names} on {self.conn.target.label}: "
                              f"{result.stdout.strip()[-300:] or f'exit code {result.exit_code}'}", self.conn.source)

    async def states(self, job_names: Sequence[str]) -> Dict[str, tuple[str, Optional[int], bool]]:
        """One remote command for all jobs: ``{name: (code, exit code, cancelled)}``."""
        script = _POLL.format(tasks=shlex.quote(self.tasks_dir), jobs=" ".join(shlex.quote(j) for j in job_names))
        out = (await self.conn.run(script)).stdout
        states = {}
        for line in out.splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] in job_names:
                cancelled = parts[-1] == "C"
                rc = int(parts[2]) if parts[1] == "X" and len(parts) > 2 and parts[2].lstrip("-").isdigit() else None
                states[parts[0]] = (parts[1], rc, cancelled)
        return states

    async def stop(self, job_name: str) -> bool:
        """TERM the job's process group, KILL it after the grace period (a detached timer).  A job
        that has not started is claimed instead (its pid file made "never"), so it never does."""
        d = shlex.quote(posixpath.join(self.tasks_dir, job_name))
        out = (await self.conn.run(
            f"d={d}; if [ -s \"$d/exit_code\" ]; then echo finished\n"
            f"else [ -d \"$d\" ] || mkdir -p \"$d\"; touch \"$d/cancelled\"; p=\"\"\n"
            f"  if [ ! -f \"$d/pid\" ]; then set -C; {{ echo never > \"$d/pid\"; }} 2>/dev/null; set +C; fi\n"
            f"  [ -s \"$d/pid\" ] && read p < \"$d/pid\"\n"
            f"  if [ -n \"$p\" ] && [ \"$p\" != never ]; then kill -TERM -\"$p\" 2>/dev/null || kill -TERM \"$p\" 2>/dev/null\n"
            f"    ( (sleep {self.cancel_grace}; kill -KILL -\"$p\" 2>/dev/null) >/dev/null 2>&1 </dev/null & ); fi\n"
            f"  echo stopping; fi", check=False)).stdout
        return "stopping" in out

    async def fetch(self, job_names: Sequence[str], local_dirs: Sequence[Path]) -> None:
        """Every file of the given job dirs: one ``tar | base64`` through the remote shell when the
        host has both (two processes per batch, no per-file round trips), else SFTP."""
        if self.tar:
            names = " ".join(shlex.quote(n) for n in job_names)
            # GNU tar's posix format keeps sub-second mtimes (job start/end times); others fall back
            out = (await self.conn.run(f"cd {shlex.quote(self.tasks_dir)} && {{ tar --format=posix -cf - {names} "
                                       f"2>/dev/null || tar cf - {names}; }} | base64", timeout=600)).stdout
            with tarfile.open(fileobj=io.BytesIO(base64.b64decode(out)), mode="r:") as archive:
                by_name = dict(zip(job_names, local_dirs))
                made: set[Path] = set()
                for member in archive.getmembers():
                    top, _, rest = member.name.partition("/")
                    if not rest or top not in by_name or not member.isfile() or ".." in rest.split("/"):
                        continue
                    target = by_name[top] / rest
                    if rest == PARAMS_FILE and target.exists():
                        continue  # written here at submission
                    if target.parent not in made:
                        target.parent.mkdir(parents=True, exist_ok=True)
                        made.add(target.parent)
                    with archive.extractfile(member) as src, open(target, "wb") as dst:
                        dst.write(src.read())
                    os.utime(target, (member.mtime, member.mtime))
            return
        sftp = await self.conn.sftp()
        sem = asyncio.Semaphore(32)

        async def listing(name: str) -> list[str]:
            async with sem:
                return [e.filename for e in await sftp.readdir(posixpath.join(self.tasks_dir, name))
                        if e.filename not in (".", "..") and e.attrs.type == 1]  # regular files

        async def get(remote: str, local: Path) -> None:
            async with sem:
                await sftp.get(remote, str(local))

        names = await asyncio.gather(*(listing(n) for n in job_names))
        transfers = []
        for name, local, files in zip(job_names, local_dirs, names):
            local.mkdir(parents=True, exist_ok=True)
            transfers += [get(posixpath.join(self.tasks_dir, name, f), local / f) for f in files]
        await asyncio.gather(*transfers)
