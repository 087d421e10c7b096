"""Real-browser fixtures: a JupyterLab server, a Voila server and Debian's chromium
driven by Playwright (sync API).

Facts these rely on are in /work/shared/RECIPES.md ("JupyterLab in a real browser").
Nothing here may touch the network: the servers listen on 127.0.0.1 only and every
browser request to another host is aborted.  A missing chromium, Playwright or
Jupyter fails the tests loudly; nothing is skipped.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).parent
PANEL_NOTEBOOK = HERE / "panel_notebook.ipynb"
ARTIFACTS = HERE.parent / "artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # Belt and braces next to the request router (which does not see chromium's own
    # traffic): resolve no host name except the loopback address.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
]
ALLOWED_HOST = "127.0.0.1"

SERVER_START_TIMEOUT = 60.0
KERNEL_READY_TIMEOUT = 60.0
RUN_ALL_TIMEOUT = 90.0


# --------------------------------------------------------------------------- helpers


def free_port() -> int:
    """A port that was free a moment ago (bind port 0 on the loopback address)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((ALLOWED_HOST, 0))
        return s.getsockname()[1]


def _tail(path: Path, n: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError as exc:
        return f"<no log: {exc}>"


def _http_status(url: str, timeout: float = 2.0) -> int | None:
    """HTTP status code of a GET (without following redirects), None if no answer."""

    class _NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):  # noqa: D401
            return None

    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(url, timeout=timeout) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return None


def _wait_http(url: str, proc: subprocess.Popen, log: Path, ok: Callable[[int], bool],
               what: str, timeout: float = SERVER_START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{what} exited with code {proc.returncode} before answering.\n"
                        f"--- log tail ---\n{_tail(log)}", pytrace=False)
        status = _http_status(url)
        if status is not None and ok(status):
            return
        time.sleep(0.2)
    pytest.fail(f"{what} did not answer {url} within {timeout:.0f} s.\n"
                f"--- log tail ---\n{_tail(log)}", pytrace=False)


def _stop_process(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """TERM, wait, KILL, by PID only (never by name)."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
        return
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def _require_jupyter(module: str) -> None:
    probe = subprocess.run([sys.executable, "-m", module, "--version"],
                           capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        pytest.fail(f"`{sys.executable} -m {module}` is not usable "
                    f"(rc={probe.returncode}): {probe.stderr.strip()[-1000:]}", pytrace=False)


def _isolated_env(base: Path) -> dict[str, str]:
    """Jupyter config, runtime, settings and workspace dirs under ``base``, with the
    news/update check switched off (or its dialog covers the page)."""
    dirs = {
        "JUPYTER_CONFIG_DIR": base / "config",
        "JUPYTER_RUNTIME_DIR": base / "runtime",
        "JUPYTERLAB_SETTINGS_DIR": base / "settings",
        "JUPYTERLAB_WORKSPACES_DIR": base / "workspaces",
    }
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    notification = dirs["JUPYTERLAB_SETTINGS_DIR"] / "@jupyterlab" / "apputils-extension"
    notification.mkdir(parents=True, exist_ok=True)
    (notification / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False})
    )
    env = dict(os.environ)
    env.update({k: str(v) for k, v in dirs.items()})
    env.pop("JUPYTER_TOKEN", None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


# ------------------------------------------------------------------- JupyterLab server


@dataclass
class JupyterServer:
    url: str  #: base url, no trailing slash, e.g. http://127.0.0.1:41234
    token: str
    root_dir: Path
    pid: int
    log: Path
    _copies: int = field(default=0, repr=False)

    def api(self, method: str, path: str, timeout: float = 10.0) -> Any:
        req = urllib.request.Request(f"{self.url}{path}", method=method,
                                     headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            body = resp.read()
        return json.loads(body) if body else None

    def add_notebook(self, source: Path | str, name: str | None = None) -> str:
        """Copy a notebook into root_dir under a fresh name (so every page gets its own
        kernel session) and return that name."""
        source = Path(source)
        self._copies += 1
        name = name or f"{source.stem}-{self._copies}-{secrets.token_hex(3)}.ipynb"
        shutil.copyfile(source, self.root_dir / name)
        return name

    def lab_url(self, name: str) -> str:
        return f"{self.url}/lab/tree/{urllib.parse.quote(name)}?reset&token={self.token}"

    def notebook_url(self, source: Path | str) -> str:
        """A fresh copy of ``source`` in root_dir, as a /lab/tree/...?reset&token= url."""
        return self.lab_url(self.add_notebook(source))

    def shutdown_kernels(self) -> None:
        with contextlib.suppress(Exception):
            for kernel in self.api("GET", "/api/kernels"):
                with contextlib.suppress(Exception):
                    self.api("DELETE", f"/api/kernels/{kernel['id']}", timeout=15)


@pytest.fixture(scope="package")
def jupyter_server() -> Iterator[JupyterServer]:
    _require_jupyter("jupyter")
    _require_jupyter("jupyterlab")
    base = Path(tempfile.mkdtemp(prefix="hsm-jlab-"))
    root = base / "root"
    root.mkdir()
    env = _isolated_env(base)
    token = secrets.token_hex(16)
    port = free_port()
    log = base / "jupyterlab.log"
    cmd = [
        sys.executable, "-m", "jupyter", "lab", "--no-browser",
        f"--ip={ALLOWED_HOST}", f"--port={port}", "--ServerApp.port_retries=0",
        "--allow-root", f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root}", "--expose-app-in-browser",
    ]
    with open(log, "wb") as log_file:
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=log_file,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    server = JupyterServer(url=f"http://{ALLOWED_HOST}:{port}", token=token,
                           root_dir=root, pid=proc.pid, log=log)
    try:
        _wait_http(f"{server.url}/api/status?token={token}", proc, log,
                   lambda s: s == 200, "JupyterLab")
        yield server
    finally:
        if proc.poll() is None:
            server.shutdown_kernels()
        _stop_process(proc)
        shutil.rmtree(base, ignore_errors=True)


# ------------------------------------------------------------------------ Voila server


@dataclass
class VoilaServer:
    url: str  #: the rendered notebook, e.g. http://127.0.0.1:41235/
    pid: int
    log: Path
    notebook: Path


@contextlib.contextmanager
def start_voila(notebook: Path | str) -> Iterator[VoilaServer]:
    """Serve a copy of ``notebook`` with Voila (0.5 flags) from a temp dir."""
    _require_jupyter("voila")
    notebook = Path(notebook)
    base = Path(tempfile.mkdtemp(prefix="hsm-voila-"))
    work = base / "nb"
    work.mkdir()
    copy = work / notebook.name
    shutil.copyfile(notebook, copy)
    env = _isolated_env(base)
    port = free_port()
    log = base / "voila.log"
    cmd = [sys.executable, "-m", "voila", copy.name, "--no-browser", f"--port={port}",
           f"--Voila.ip={ALLOWED_HOST}", "--Voila.port_retries=0"]
    with open(log, "wb") as log_file:
        proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=log_file,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    server = VoilaServer(url=f"http://{ALLOWED_HOST}:{port}/", pid=proc.pid, log=log,
                         notebook=copy)
    try:
        # A static file: GET / would already execute the notebook in a kernel.
        _wait_http(f"http://{ALLOWED_HOST}:{port}/voila/static/extension.js", proc, log,
                   lambda s: s < 500, "Voila")
        yield server
    finally:
        _stop_process(proc)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture()
def voila_server() -> Iterator[VoilaServer]:
    """Voila serving tests/browser/panel_notebook.ipynb (function scoped: one kernel
    per test)."""
    with start_voila(PANEL_NOTEBOOK) as server:
        yield server


# ----------------------------------------------------------------------------- browser


@pytest.fixture(scope="package")
def browser() -> Iterator[Any]:
    """Package-scoped: Playwright's sync API keeps an event loop running in the main thread while it
    is open, which would break every later test that calls ``asyncio.run``."""
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium "
                    "(apt-get install chromium); never `playwright install`.", pytrace=False)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:  # pragma: no cover - environment problem
        pytest.fail(f"playwright (python package) is not importable: {exc}", pytrace=False)
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=60_000)
        try:
            yield b
        finally:
            b.close()


@dataclass
class BlockedRequests:
    urls: list[str] = field(default_factory=list)


@pytest.fixture()
def blocked_requests() -> BlockedRequests:
    """Requests the page tried to send to hosts other than 127.0.0.1 (all aborted)."""
    return BlockedRequests()


@pytest.fixture()
def page(browser, blocked_requests: BlockedRequests) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(30_000)

    def guard(route, request) -> None:
        host = urllib.parse.urlsplit(request.url).hostname
        if host == ALLOWED_HOST:
            route.continue_()
        else:
            blocked_requests.urls.append(request.url)
            route.abort()

    context.route("**/*", guard)
    p = context.new_page()
    try:
        yield p
    finally:
        with contextlib.suppress(Exception):
            context.close()


# -------------------------------------------------------------- JupyterLab page helpers

_KERNEL_STATE_JS = """() => {
  const app = window.jupyterapp;
  const w = app && app.shell && app.shell.currentWidget;
  const ctx = w && w.sessionContext;
  const k = ctx && ctx.session && ctx.session.kernel;
  if (!k) return {kernel: false};
  return {kernel: true, status: k.status, connection: k.connectionStatus,
          ready: !!(w.context && w.context.isReady), cells: w.content ? w.content.widgets.length : 0};
}"""

# The input prompt of every code cell, e.g. ["[1]:", "[*]:", "[ ]:"]; falls back to
# the model's execution count for a cell whose DOM is not rendered (windowing).
_PROMPTS_JS = """() => {
  const w = window.jupyterapp.shell.currentWidget;
  return w.content.widgets.filter(c => c.model.type === 'code').map(c => {
    const p = c.node.querySelector('.jp-InputPrompt');
    if (p && p.textContent.trim()) return p.textContent.trim();
    const n = c.model.executionCount;
    return n == null ? '[ ]:' : `[${n}]:`;
  });
}"""


def _kernel_state(page) -> dict:
    return page.evaluate(_KERNEL_STATE_JS)


def wait_for_kernel_idle(page, timeout: float = KERNEL_READY_TIMEOUT) -> None:
    """Wait for the kernel itself (not the toolbar indicator) to be connected and idle."""
    deadline = time.monotonic() + timeout
    state: dict = {}
    while time.monotonic() < deadline:
        state = _kernel_state(page)
        if (state.get("kernel") and state.get("status") == "idle"
                and state.get("connection") == "connected" and state.get("ready")
                and state.get("cells", 0) > 0):
            return
        page.wait_for_timeout(200)
    raise AssertionError(f"kernel not connected and idle within {timeout:.0f} s: {state}")


def cell_prompts(page) -> list[str]:
    return page.evaluate(_PROMPTS_JS)


def prompt_number(prompt: str) -> int | None:
    inner = prompt.strip().removesuffix(":").strip().removeprefix("[").removesuffix("]")
    return int(inner) if inner.strip().isdigit() else None


def run_all_cells(page, timeout: float = RUN_ALL_TIMEOUT) -> list[str]:
    """Run All on the notebook already open in ``page`` (without awaiting the command),
    then wait until every code cell shows a *new* ``[n]:`` and the kernel is idle.
    Returns the prompts."""
    wait_for_kernel_idle(page)
    before = [prompt_number(p) for p in cell_prompts(page)]
    floor = max([n for n in before if n is not None], default=0)
    page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")
    deadline = time.monotonic() + timeout
    prompts: list[str] = []
    state: dict = {}
    while time.monotonic() < deadline:
        prompts = cell_prompts(page)
        numbers = [prompt_number(p) for p in prompts]
        if prompts and all(n is not None and n > floor for n in numbers):
            state = _kernel_state(page)
            if state.get("status") == "idle":
                return prompts
        page.wait_for_timeout(200)
    raise AssertionError(f"Run All did not finish within {timeout:.0f} s: prompts={prompts} "
                         f"(before: {before}), kernel={state or _kernel_state(page)}, "
                         f"outputs={output_texts(page)!r}"[:4000])


def run_all(page, url: str, timeout: float = RUN_ALL_TIMEOUT) -> list[str]:
    """Open ``url`` (a /lab/tree/NB.ipynb?reset&token=T url on a copy of the notebook,
    see ``JupyterServer.notebook_url``), wait for the kernel, Run All, wait for every
    prompt to show ``[n]:`` and the kernel to be idle.  Returns the prompts."""
    page.goto(url, wait_until="domcontentloaded", timeout=60_000)
    wait_for_kernel_idle(page)
    return run_all_cells(page, timeout=timeout)


def output_texts(page) -> list[str]:
    """The visible text of every cell's output area in the current notebook."""
    return page.evaluate("""() => {
      const w = window.jupyterapp.shell.currentWidget;
      return w.content.widgets.filter(c => c.model.type === 'code').map(c => {
        const o = c.node.querySelector('.jp-OutputArea');
        return o ? o.innerText : '';
      });
    }""")


def output_json(page) -> list[list[dict]]:
    """The outputs of every code cell as saved in the model (nbformat dicts)."""
    return page.evaluate("""() => {
      const w = window.jupyterapp.shell.currentWidget;
      return w.content.widgets.filter(c => c.model.type === 'code')
        .map(c => c.model.outputs.toJSON());
    }""")


# ------------------------------------------------------------------ panel DOM helpers

#: The panel's observable state, read from the DOM.
PANEL_STATE_JS = """() => {
  const text = sel => { const e = document.querySelector(sel); return e ? e.textContent.trim() : null; };
  const bar = document.querySelector('.hsm-progress .progress-bar');
  let width = null, pct = null;
  if (bar) {
    width = bar.style.width || null;
    if (width && width.endsWith('%')) pct = parseFloat(width);
    else if (bar.parentElement && bar.parentElement.getBoundingClientRect().width > 0)
      pct = 100 * bar.getBoundingClientRect().width / bar.parentElement.getBoundingClientRect().width;
  }
  // the Status grid's rows: each row's first cell carries the row's state
  const rows = Array.from(document.querySelectorAll('.hsm-status-table .hsm-cell[data-row]:first-child'))
    .map(c => c.getAttribute('data-state'));
  return {done: text('.hsm-summary .hsm-done'), total: text('.hsm-summary .hsm-total'),
          width, pct, rows, launch: !!document.querySelector('.hsm-launch')};
}"""


def panel_state(page) -> dict:
    return page.evaluate(PANEL_STATE_JS)


def panel_finished(state: dict, expected_total: str | None = None) -> bool:
    return (state["done"] is not None and state["done"] == state["total"]
            and (expected_total is None or state["total"] == expected_total)
            and state["pct"] is not None and state["pct"] >= 99.9
            and len(state["rows"]) > 0
            and all(s == "COMPLETED" for s in state["rows"]))


def save_diagnostics(page, name: str) -> tuple[Path, Path]:
    """Screenshot and the panel's HTML (or the page's, if no panel) under /tmp."""
    png = Path(f"/tmp/hsm-browser-{name}.png")
    html = Path(f"/tmp/hsm-browser-{name}.html")
    with contextlib.suppress(Exception):
        page.screenshot(path=str(png), full_page=True)
    with contextlib.suppress(Exception):
        snippet = page.evaluate("""() => {
          const b = document.querySelector('.hsm-launch');
          let n = b;
          for (let i = 0; n && i < 6 && !(n.classList && n.classList.contains('jp-OutputArea-output')); i++)
            n = n.parentElement;
          return (n || b || document.body).outerHTML;
        }""")
        html.write_text(snippet)
    return png, html


def wait_for_panel_finished(page, name: str, expected_total: str | None = None,
                            timeout: float = 60.0) -> dict:
    """Poll the panel's DOM (bounded) until done == total, the bar is at 100 % and
    every table row is COMPLETED; on timeout save diagnostics and fail with the state."""
    deadline = time.monotonic() + timeout
    state: dict = {}
    while time.monotonic() < deadline:
        state = panel_state(page)
        if panel_finished(state, expected_total):
            return state
        page.wait_for_timeout(250)
    png, html = save_diagnostics(page, name)
    raise AssertionError(f"panel did not finish within {timeout:.0f} s; last DOM state {state}; "
                         f"screenshot {png}, HTML {html}")
