"""Project sync like ``rsync -a``: links as links, excludes anchored like rsync's, an opt-in mirror
(delete) mode; the same result on both paths (SFTP with a manifest, rsync).  Also: the git commit
recorded with each sweep, and parameter values no argv can carry.

The sync tests drive ``sync_project`` against a real sshd on loopback (the remote user's home is on
this machine, so the remote side is checked with ``os`` directly) and force the rsync path on a small
project by lowering its threshold.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from pathlib import Path

import asyncssh
import pytest
import yaml

from hsm_notebook import ConfigError, LocalComputeSource, ParameterSpace, Sweep
from hsm_notebook.core._loop import run_sync
from hsm_notebook.sources import sync as sync_module
from hsm_notebook.sources.ssh_connection import SSHConnection, SSHTarget
from hsm_notebook.sources.sync import DEFAULT_EXCLUDE, local_manifest, sync_project
from tests.contract.conftest import ssh_source

PATHS = ["sftp", "rsync"]


def _remote(h, command: str) -> str:
    async def go():
        async with asyncssh.connect(**h.connect_kwargs()) as conn:
            return (await conn.run(command, check=True)).stdout
    return run_sync(go())


def _sync(h, local: Path, remote: str, path: str, monkeypatch, **kw) -> dict:
    if path == "rsync":
        monkeypatch.setattr(sync_module, "RSYNC_FILES", 0)  # a small project through rsync too

    async def go():
        conn = SSHConnection(SSHTarget(h.host, h.port, h.user, [str(h.client_key)], str(h.known_hosts)), "t")
        await conn.connect()
        try:
            return await sync_project(conn, local, remote, exclude=kw.pop("exclude", DEFAULT_EXCLUDE),
                                      include=kw.pop("include", None), use_rsync=path == "rsync", **kw)
        finally:
            await conn.close()
    return run_sync(go())


@pytest.fixture()
def remote_dir(ssh_host):
    path = f"{ssh_host.home}/sync-{secrets.token_hex(4)}"
    yield path
    _remote(ssh_host, f"rm -rf {path} {path}-outside")


def _tree(root: Path) -> dict[str, str]:
    """``{relative path: 'd' | 'f:<content>' | 'l:<target>'}`` of everything under ``root`` (links not followed)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = p.relative_to(root).as_posix()
            if rel == sync_module.MANIFEST:
                continue
            out[rel] = ("l:" + os.readlink(p) if p.is_symlink() else "d" if p.is_dir() else "f:" + p.read_text())
    return out


def _project(root: Path) -> None:
    (root / "sub").mkdir()
    (root / "a.txt").write_text("A")
    (root / "sub" / "b.txt").write_text("B")
    (root / "rel_file").symlink_to("a.txt")
    (root / "abs_file").symlink_to("/etc/hostname")
    (root / "rel_dir").symlink_to("sub")
    (root / "abs_dir").symlink_to("/usr/share/doc")
    (root / "data").symlink_to("/mnt/cluster-only/data")  # dangling here, real on the cluster
    (root / "sub" / "up").symlink_to("../a.txt")


# -- links ------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", PATHS)
def test_links_travel_as_links_dangling_included(ssh_host, remote_dir, tmp_path, monkeypatch, path):
    local = tmp_path / "proj"
    local.mkdir()
    _project(local)
    first = _sync(ssh_host, local, remote_dir, path, monkeypatch)
    assert first["method"] == path
    remote = Path(remote_dir)
    assert _tree(remote) == _tree(local)
    assert os.readlink(remote / "data") == "/mnt/cluster-only/data"
    assert os.readlink(remote / "rel_dir") == "sub" and not (remote / "abs_dir").resolve().is_relative_to(remote)
    # only changed files travel: nothing the second time, then just the one link that changed
    assert _sync(ssh_host, local, remote_dir, path, monkeypatch)["sent"] == 0
    (local / "rel_file").unlink()
    (local / "rel_file").symlink_to("sub/b.txt")
    (local / "a.txt").write_text("AA")
    again = _sync(ssh_host, local, remote_dir, path, monkeypatch)
    assert _tree(remote) == _tree(local)
    if path == "sftp":
        assert again["sent"] == 2


@pytest.mark.parametrize("path", PATHS)
def test_a_path_that_changes_kind_is_replaced(ssh_host, remote_dir, tmp_path, monkeypatch, path):
    local = tmp_path / "proj"
    local.mkdir()
    (local / "x").mkdir()
    (local / "x" / "f").write_text("1")
    (local / "y").write_text("2")
    (local / "z").symlink_to("y")
    _sync(ssh_host, local, remote_dir, path, monkeypatch)
    shutil.rmtree(local / "x")
    (local / "x").symlink_to("/mnt/cluster-only/x")  # a folder becomes a link
    (local / "y").unlink()
    (local / "y").mkdir()  # a file becomes a folder
    (local / "y" / "g").write_text("3")
    (local / "z").unlink()
    (local / "z").write_text("4")  # a link becomes a file: written here, never through the old link
    _sync(ssh_host, local, remote_dir, path, monkeypatch)  # not only in mirror mode
    assert _tree(Path(remote_dir)) == _tree(local)


def test_a_project_with_links_runs_on_the_sftp_path(workdir, ssh_host):
    """The symptom: ``setup failed: Failure`` for a link to a file, a link to a folder dropped."""
    (workdir / "conf").mkdir()
    (workdir / "conf" / "base.txt").write_text("base")
    (workdir / "current.txt").symlink_to("conf/base.txt")
    (workdir / "confs").symlink_to("conf")
    (workdir / "data").symlink_to("/mnt/cluster-only/data")
    (workdir / "job.py").write_text(
        "from hsm_notebook.metrics import log_metrics\n"
        "log_metrics(a=open('current.txt').read(), b=open('confs/base.txt').read())\n")
    source = ssh_source(ssh_host, "links", 1)
    sweep = Sweep(ParameterSpace(grid={"x": [1]}), ["python", "job.py"], [source], workdir=workdir,
                  poll_interval=0.2).run()
    row = sweep.results().iloc[0]
    assert (row["a"], row["b"]) == ("base", "base")
    assert source.facts["sync"]["method"] == "sftp"


# -- excludes ---------------------------------------------------------------------------------
def _exclude_project(root: Path) -> None:
    for rel in ["src/sweeps/__init__.py", "src/pkg/__pycache__/m.cpython-311.pyc", "src/pkg/m.py", "src/pkg/m.pyc",
                "sweeps/s1/ledger.sqlite", ".git/HEAD", "lib/vendored/.git/HEAD", "venv/bin/python",
                "src/venv/helpers.py", ".venv/x", "notes/.ipynb_checkpoints/n.ipynb", "data/a.bin",
                "data/sub/b.bin", "data/keep.txt", "build/out.o", "src/build", "x.egg-info/PKG-INFO"]:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(rel)


def test_excludes_anchor_like_rsync_locally(tmp_path):
    _exclude_project(tmp_path)
    sent = set(local_manifest(tmp_path, [*DEFAULT_EXCLUDE, "/data/*.bin", "build/"], None))
    assert "src/sweeps/__init__.py" in sent  # "sweeps" is only excluded at the project root
    assert "src/venv/helpers.py" in sent  # so is "venv"
    assert "src/build" in sent  # "build/" matches folders only
    assert "data/sub/b.bin" in sent and "data/keep.txt" in sent  # "*" stays inside one folder
    for gone in ["sweeps/s1/ledger.sqlite", ".git/HEAD", "lib/vendored/.git/HEAD", "venv/bin/python", ".venv/x",
                 "src/pkg/m.pyc", "src/pkg/__pycache__/m.cpython-311.pyc", "notes/.ipynb_checkpoints/n.ipynb",
                 "data/a.bin", "build/out.o", "x.egg-info/PKG-INFO"]:
        assert gone not in sent, gone


@pytest.mark.parametrize("pattern", ["/a/**/f", "/a/**", "/a/*", "a/f", "**/f", "[fg]", "[!f]", "?", "/d*/", "*.b?n",
                                     "/a/***", "a/", "d\\*x", "*"])
def test_patterns_read_as_rsync_reads_them(tmp_path, pattern):
    """The SFTP path's reading of a pattern against rsync's own (rsync -a here, into a local folder)."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    for rel in ["f", "g", "h.bin", "a/f", "a/b/f", "a/x/g", "d1/f", "dx", "d*x", "q/a/f", "q/x.bin", "q/x.bxn"]:
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text(rel)
    rules = sync_module.Patterns([pattern])
    subprocess.run(["rsync", "-a", *rules.rsync("-"), f"{src}/", f"{dst}/"], check=True)
    by_rsync = {p.relative_to(dst).as_posix() for p in dst.rglob("*") if not p.is_dir()}
    assert set(local_manifest(src, [pattern], None)) == by_rsync


@pytest.mark.parametrize("path", PATHS)
def test_both_paths_send_what_the_manifest_lists(ssh_host, remote_dir, tmp_path, monkeypatch, path):
    local = tmp_path / "proj"
    _exclude_project(local)
    exclude = [*DEFAULT_EXCLUDE, "/data/*.bin", "build/"]
    _sync(ssh_host, local, remote_dir, path, monkeypatch, exclude=exclude)
    files = {rel for rel, kind in _tree(Path(remote_dir)).items() if kind != "d"}
    assert files == set(local_manifest(local, exclude, None))


@pytest.mark.parametrize("path", PATHS)
def test_include_keeps_the_same_rule(ssh_host, remote_dir, tmp_path, monkeypatch, path):
    local = tmp_path / "proj"
    _exclude_project(local)
    include = ["*.py", "/data/**"]
    _sync(ssh_host, local, remote_dir, path, monkeypatch, include=include)
    files = {rel for rel, kind in _tree(Path(remote_dir)).items() if kind != "d"}
    assert files == set(local_manifest(local, DEFAULT_EXCLUDE, include))
    assert files == {"src/sweeps/__init__.py", "src/pkg/m.py", "src/venv/helpers.py", "data/a.bin", "data/sub/b.bin",
                     "data/keep.txt"}


# -- mirror mode ------------------------------------------------------------------------------
@pytest.mark.parametrize("path", PATHS)
def test_mirror_mode_deletes_only_what_is_gone_inside_the_project(ssh_host, remote_dir, tmp_path, monkeypatch, path):
    local = tmp_path / "proj"
    local.mkdir()
    for rel in ["keep.py", "gone.py", "old/a.py", "old/deep/b.py", "stays/c.py"]:
        (local / rel).parent.mkdir(parents=True, exist_ok=True)
        (local / rel).write_text(rel)
    _sync(ssh_host, local, remote_dir, path, monkeypatch)
    outside = f"{remote_dir}-outside"
    # on the remote: files written there (by jobs, by hand), excluded ones, a link out of the project
    _remote(ssh_host, f"mkdir -p {outside} && echo precious > {outside}/file && ln -s {outside} {remote_dir}/out && "
                      f"ln -s {outside}/file {remote_dir}/old/deep/to_file && echo r > {remote_dir}/remote_only.txt && "
                      f"echo c > {remote_dir}/old/deep/cached.pyc && mkdir -p {remote_dir}/sweeps && "
                      f"echo s > {remote_dir}/sweeps/s && mkdir {remote_dir}/stays/__pycache__ && "
                      f"echo p > {remote_dir}/stays/__pycache__/c.pyc")
    (local / "gone.py").unlink()
    shutil.rmtree(local / "old")
    # the default keeps everything
    _sync(ssh_host, local, remote_dir, path, monkeypatch)
    remote = Path(remote_dir)
    assert (remote / "gone.py").exists() and (remote / "old" / "a.py").exists()
    _sync(ssh_host, local, remote_dir, path, monkeypatch, delete=True)
    tree = _tree(remote)
    assert set(tree) == {"keep.py", "stays", "stays/c.py", "stays/__pycache__", "stays/__pycache__/c.pyc",
                         "sweeps", "sweeps/s", "old", "old/deep", "old/deep/cached.pyc"}, tree
    assert (Path(outside) / "file").read_text() == "precious\n"  # never outside the project dir


def test_sync_delete_is_an_option_that_round_trips(ssh_host):
    from tests.contract.test_describe import round_trip

    source = ssh_source(ssh_host, "m", 1, sync_delete=True)
    assert source.describe()["sync_delete"] is True
    assert round_trip(source).sync_delete is True
    assert ssh_source(ssh_host, "m", 1).sync_delete is False


def test_the_sweeps_folder_is_never_synced_wherever_it_is(workdir, ssh_host, monkeypatch):
    """With "sweeps" anchored at the root, a sweeps folder deeper in the project is still left out."""
    monkeypatch.setenv("HSM_SWEEPS_DIR", str(workdir / "notebooks" / "sweeps"))
    (workdir / "src" / "sweeps").mkdir(parents=True)
    (workdir / "src" / "sweeps" / "__init__.py").write_text("")
    source = ssh_source(ssh_host, "nb", 1, use_rsync=False)
    sweep = Sweep(ParameterSpace(grid={"x": [1]}), ["python", "job.py"], [source], workdir=workdir,
                  poll_interval=0.2).run()
    assert sweep.counts() == {"COMPLETED": 1}
    listing = _remote(ssh_host, f"cd {source.jobs.workdir} && find . | sort")
    assert "./src/sweeps/__init__.py" in listing and "./notebooks/sweeps" not in listing


# -- the git commit of each sweep -------------------------------------------------------------
def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True,
                          capture_output=True, text=True).stdout.strip()


def _record(sweep: Sweep) -> dict:
    return yaml.safe_load((sweep.directory / "sweep.yaml").read_text())


def _local_sweep(workdir: Path) -> Sweep:
    return Sweep(ParameterSpace(grid={"x": [1]}), ["python", "job.py"], [LocalComputeSource()], workdir=workdir)


def test_the_sweep_records_the_git_commit(workdir):
    _git(workdir, "init", "-q")
    (workdir / ".gitignore").write_text("sweeps/\n")
    _git(workdir, "add", "job.py", ".gitignore")
    _git(workdir, "commit", "-q", "-m", "one")
    head = _git(workdir, "rev-parse", "HEAD")
    assert _record(_local_sweep(workdir))["git"] == {"commit": head, "dirty": False}
    (workdir / "new_untracked.txt").write_text("x")  # untracked files do not make the tree dirty
    assert _record(_local_sweep(workdir))["git"] == {"commit": head, "dirty": False}
    (workdir / "job.py").write_text("# changed\n")
    assert _record(_local_sweep(workdir))["git"] == {"commit": head, "dirty": True}
    sub = workdir / "pkg"  # a workdir below the repository's top
    sub.mkdir()
    (sub / "job.py").write_text("")
    assert _record(_local_sweep(sub))["git"] == {"commit": head, "dirty": True}


def test_no_git_no_repository_no_error(workdir, monkeypatch):
    assert _record(_local_sweep(workdir))["git"] is None  # not a repository
    (workdir / ".git").mkdir()  # not a usable one either
    assert _record(_local_sweep(workdir))["git"] is None
    monkeypatch.setenv("PATH", str(workdir / "nothing-here"))  # no git at all
    assert _record(_local_sweep(workdir))["git"] is None


# -- values no argv can carry -----------------------------------------------------------------
BAD = ["a\0b", "\ud800", ["ok", "x\0"], {"k\0": 1}, {"k": ["\udcff"]}, [{"\ud83d": 2}]]


@pytest.mark.parametrize("value", BAD, ids=repr)
@pytest.mark.parametrize("where", ["grid", "paired", "fixed", "combinations"])
def test_values_no_argv_can_carry_are_refused_when_the_space_is_built(where, value):
    build = {"grid": lambda: ParameterSpace(grid={"lr": [0.1, value]}),
             "paired": lambda: ParameterSpace(paired=[{"lr": [0.1, value], "seed": [1, 2]}]),
             "fixed": lambda: ParameterSpace(grid={"x": [1]}, fixed={"lr": value}),
             "combinations": lambda: ParameterSpace(combinations=[{"lr": 0.1}, {"lr": value}])}[where]
    with pytest.raises(ConfigError) as info:
        build()
    message = str(info.value)
    if isinstance(value, dict) and where in ("fixed", "combinations"):  # its keys become parameter names there
        assert "lr.k" in message, message
    else:
        assert "lr" in message and repr(value) in message, message
    assert "\0" not in message and not any(0xD800 <= ord(c) <= 0xDFFF for c in message)


def test_ordinary_unicode_and_escapes_still_pass():
    space = ParameterSpace(grid={"s": ["naïve", "日本", "tab\there", "emoji 😀", "back\\slash"]})
    assert len(space) == 5
