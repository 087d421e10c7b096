"""Host keys as OpenSSH keeps them: why asyncssh refused one, in words, and trust on first use.

known_hosts is read with asyncssh's own parser (hashed names, ``host,ip`` lists, ``[host]:port``,
patterns, markers, the port-less fallback), never matched by hand; the host name, port and files
are the ones ``asyncssh.connect`` resolved through ``~/.ssh/config`` (HostName, Port,
HostKeyAlias, UserKnownHostsFile).  A host with any entry is never trusted anew.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import shlex
import socket
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any

import asyncssh

DEFAULT_KNOWN_HOSTS = "~/.ssh/known_hosts"


@dataclass
class HostKeyCheck:
    """What known_hosts says of a host whose key asyncssh refused, and the key it offers now."""

    name: str  # the host's known_hosts name: "[host]:port", or the host on port 22
    hostname: str  # the resolved HostName (ssh-keyscan reads no ssh_config)
    port: int
    files: list[Path]  # the known_hosts files asyncssh read, the user's first
    recorded: Path | None  # the file holding entries for the host: its key CHANGED
    revoked: bool  # the offered key is marked @revoked
    key: asyncssh.SSHKey | None  # what the host offers now (None: it could not be asked)

    @property
    def can_trust(self) -> bool:
        """Only a host that no file knows, whose key we read, may be trusted on first use."""
        return self.recorded is None and self.key is not None and bool(self.files)

    def message(self, label: str) -> str:
        offered = (f"{self.key.get_algorithm()} key {self.key.get_fingerprint('sha256')}" if self.key
                   else "a key that could not be read")
        if not self.files:
            return f"the host key of {label} was refused (the host offers {offered})"
        if self.revoked:
            return (f"the host key of {label} ({offered}) is marked @revoked in {self.recorded}: "
                    "refusing to connect; ask the host's admin")
        if self.recorded is not None:
            remove = f"ssh-keygen -R {shlex.quote(self.name)} -f {shlex.quote(str(self.recorded))}"
            return (f"the host key of {label} has CHANGED: {self.recorded} holds another key for {self.name}, "
                    f"and the host now offers {offered}. If the host was reinstalled (confirm this fingerprint "
                    f"with its admin), remove the old key with `{remove}` and connect again; otherwise someone "
                    "may be intercepting the connection. trust_new_host=True never replaces a recorded key")
        user = self.files[0]
        scan = (f"ssh-keyscan {'-H ' if _hashed(user) else ''}-p {self.port} {shlex.quote(self.hostname)} "
                f">> {shlex.quote(str(user))}")
        return (f"the host key of {label} is unknown: no entry for {self.name} in {user}; the host offers "
                f"{offered}. If that is its key (on the host: `ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub`), "
                f"add it with `{scan}`, or connect once with trust_new_host=True")

    def record(self) -> None:
        """Append the offered key to the user's known_hosts, hashed if that file hashes names."""
        assert self.can_trust and self.key is not None
        path = self.files[0]
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        before = path.read_bytes() if path.exists() else b""
        name = _hash_name(self.name) if _hashed(path) else self.name
        kind, data = self.key.export_public_key().decode().split()[:2]  # without the comment
        line = f"{name} {kind} {data}\n"
        with open(path, "a") as f:
            f.write(("\n" if before and not before.endswith(b"\n") else "") + line)


async def check_host_key(host: str, options: dict[str, Any]) -> HostKeyCheck:
    """Explain a refused host key: ``host`` and ``options`` as given to ``asyncssh.connect``."""
    # config=(): ~/.ssh/config, as asyncssh.connect reads it (the options' own default reads none)
    opts = await asyncssh.SSHClientConnectionOptions.construct(host=host, **{"config": (), **options})
    hostname, port = opts.host, opts.port
    named = opts.host_key_alias or hostname
    kport = port if port != 22 else None
    files = _files(opts.known_hosts)
    addr = await _address(hostname, port)
    recorded: Path | None = None
    keys: list[Any] = []
    revoked_keys: list[Any] = []
    for path in files:
        found = _entries(path, named, addr, kport)
        if any(found):
            recorded, (keys, revoked_keys) = path, found
            break
    key = await _offered_key(host, options, keys)
    return HostKeyCheck(f"[{named}]:{port}" if kport else named, hostname, port, files, recorded,
                        key is not None and key in revoked_keys, key)


def _files(known_hosts: Any) -> list[Path]:
    if isinstance(known_hosts, (str, PurePath)):
        known_hosts = [known_hosts]
    if isinstance(known_hosts, (list, tuple)) and all(isinstance(k, (str, PurePath)) for k in known_hosts):
        return [Path(k).expanduser() for k in known_hosts] or [Path(DEFAULT_KNOWN_HOSTS).expanduser()]
    return []  # keys or a callable given by the caller: no file to point at


def _entries(path: Path, host: str, addr: str, port: int | None) -> tuple[list[Any], list[Any]]:
    """(trusted keys and CAs, revoked keys) recorded for the host in one file, as asyncssh matches them."""
    try:
        found = asyncssh.read_known_hosts(str(path)).match(host, addr, port)
    except (OSError, ValueError):
        return [], []
    host_keys, ca_keys, revoked, x509_certs, _, x509_subjects, _ = found
    return [*host_keys, *ca_keys, *x509_certs, *x509_subjects], list(revoked)


async def _address(hostname: str, port: int) -> str:
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(hostname, port, type=socket.SOCK_STREAM)
        return str(infos[0][4][0])
    except (OSError, IndexError):
        return ""


async def _offered_key(host: str, options: dict[str, Any], recorded: list) -> asyncssh.SSHKey | None:
    """The host's key, of a recorded key's type when there is one (as OpenSSH shows it)."""
    algs = [a.decode() for k in recorded if isinstance(k, asyncssh.SSHKey) for a in k.sig_algorithms]
    route = {k: options[k] for k in ("config", "tunnel", "proxy_command", "family", "local_addr") if k in options}
    extras: list[dict[str, Any]] = [{"server_host_key_algs": algs}] if algs else []
    for extra in [*extras, {}]:
        try:
            return await asyncio.wait_for(
                asyncssh.get_server_host_key(host, options.get("port", ()), **route, **extra), 15)
        except (TimeoutError, OSError, asyncssh.Error, ValueError):
            continue
    return None


def _hashed(path: Path) -> bool:
    try:
        with open(path) as f:
            return any(line.startswith("|1|") for line in f)
    except OSError:
        return False


def _hash_name(name: str) -> str:
    """OpenSSH's HashKnownHosts form: |1|salt|HMAC-SHA1(salt, name), both base64."""
    salt = os.urandom(20)
    digest = hmac.new(salt, name.encode(), hashlib.sha1).digest()
    return f"|1|{base64.b64encode(salt).decode()}|{base64.b64encode(digest).decode()}"
