"""Issue 22, item 4, in a real JupyterLab: the Status grid has one header row (its cells sort: a
click, again to reverse; no separate "Sort by" control), each row's opener sits in its row, no
button cuts its own words, and the sweep's folder is shown short with the full path on hover."""

from __future__ import annotations

import json
from typing import Any

import pytest

from .conftest import ARTIFACTS, run_all, save_diagnostics, wait_for_kernel_idle

pytestmark = pytest.mark.browser

XS = [3, 1, 4, 2]
CELLS = [
    "from pathlib import Path\nfrom hsm_notebook import LocalComputeSource, ParameterSpace, Sweep\n"
    "Path('grid_job.py').write_text(\n"
    "    'import sys\\nfrom hsm_notebook.metrics import log_metrics\\n'\n"
    "    'x = int(dict(a.split(\"=\", 1) for a in sys.argv[1:])[\"x\"])\\n'\n"
    "    'for i in range(3):\\n    log_metrics(step=i, loss=x / (i + 1))\\n'\n"
    "    'log_metrics(loss=x / 4)\\n')",
    f"sweep = Sweep(ParameterSpace(grid={{'x': {XS}, 'opt': ['sgd', 'adam']}}), ['python', 'grid_job.py'],\n"
    "              [LocalComputeSource(max_parallel_jobs=4)], poll_interval=0.2, objective={'loss': 'min'}).run()\n"
    "panel = sweep.panel()\npanel",
]

#: The grid as a person sees it: header cells (with their row's top), rows (extent, cells' text),
#: openers (centre), what precedes the grid, and the header path.
_GRID_JS = """() => {
  const grid = document.querySelector('.hsm-status-table');
  if (!grid) return null;
  const box = e => e.getBoundingClientRect();
  const headers = Array.from(grid.querySelectorAll(':scope > button.hsm-sort'))
    .map(b => ({text: b.innerText.trim(), top: box(b).top, bottom: box(b).bottom}));
  const byRow = {};
  grid.querySelectorAll('.hsm-cell[data-row]').forEach(c => (byRow[c.dataset.row] ||= []).push(c));
  const rows = Object.keys(byRow).sort((a, b) => a - b).map(k => {
    const boxes = byRow[k].map(box);
    return {top: Math.min(...boxes.map(b => b.top)), bottom: Math.max(...boxes.map(b => b.bottom)),
            cells: byRow[k].map(c => c.textContent.trim())};
  });
  const openers = Array.from(grid.querySelectorAll(':scope > button.hsm-opener'))
    .map(o => ({y: (box(o).top + box(o).bottom) / 2, height: box(o).height}));
  const tab = grid.parentElement;
  const path = document.querySelector('code.hsm-path');
  return {headers, rows, openers, tabText: tab.innerText,
          path: path ? {text: path.textContent, title: path.title} : null};
}"""

#: Buttons and field labels shown whose words do not fit in them (the browser cuts them with an ellipsis).
_CUT_JS = """() => Array.from(document.querySelectorAll('.hsm-panel button, .hsm-panel .widget-label'))
  .filter(b => b.offsetParent !== null && b.scrollWidth > b.clientWidth + 1)
  .map(b => ({text: b.innerText.trim(), scroll: b.scrollWidth, client: b.clientWidth}))"""


def _notebook(tmp_path) -> str:
    nb = {"cells": [{"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [], "source": c}
                    for c in CELLS],
          "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
          "nbformat": 4, "nbformat_minor": 5}
    path = tmp_path / "status_grid.ipynb"
    path.write_text(json.dumps(nb))
    return str(path)


def _column(geometry: dict[str, Any], name: str) -> list[str]:
    index = [h["text"].split(" ")[0] for h in geometry["headers"]].index(name)
    return [row["cells"][index] for row in geometry["rows"]]


def _wait_column(page, name: str, expected: list[str]) -> dict[str, Any]:
    page.wait_for_function(
        """([name, expected]) => {
          const grid = document.querySelector('.hsm-status-table');
          const heads = Array.from(grid.querySelectorAll(':scope > button.hsm-sort'))
            .map(b => b.innerText.split(' ')[0]);
          const i = heads.indexOf(name);
          const byRow = {};
          grid.querySelectorAll('.hsm-cell[data-row]').forEach(c => (byRow[c.dataset.row] ||= []).push(c));
          const got = Object.keys(byRow).sort((a, b) => a - b).map(k => byRow[k][i].textContent.trim());
          return JSON.stringify(got) === JSON.stringify(expected);
        }""", arg=[name, expected], timeout=15_000)
    return page.evaluate(_GRID_JS)


def test_the_status_grid_sorts_by_its_header_and_keeps_openers_in_their_rows(jupyter_server, page, tmp_path):
    run_all(page, jupyter_server.notebook_url(_notebook(tmp_path)))
    rows = 2 * len(XS)
    try:
        page.wait_for_function(f"() => document.querySelectorAll('.hsm-status-table > button.hsm-opener').length "
                               f"=== {rows}", timeout=30_000)
        geometry = page.evaluate(_GRID_JS)
        # one header row: the header cells side by side, above the first row, and nothing else names a column
        headers = geometry["headers"]
        assert [h["text"] for h in headers][:5] == ["task_id", "source", "state", "x", "opt"], headers
        assert len({round(h["top"]) for h in headers}) == 1 and headers[0]["bottom"] <= geometry["rows"][0]["top"] + 1
        assert "Sort by" not in geometry["tabText"] and "\ndesc\n" not in geometry["tabText"]
        assert geometry["tabText"].count("task_id") == 1, geometry["tabText"]
        # sort: a click on x's header, then again for the other way
        page.locator(".hsm-status-table > button.hsm-sort", has_text="x").first.click()
        expected = [str(x) for x in sorted(XS) for _ in range(2)]
        geometry = _wait_column(page, "x", expected)
        assert "x ▲" in [h["text"] for h in geometry["headers"]]
        page.locator(".hsm-status-table > button.hsm-sort", has_text="x").first.click()
        geometry = _wait_column(page, "x", expected[::-1])
        assert "x ▼" in [h["text"] for h in geometry["headers"]]
        # each row's opener inside its row (its centre within the row's height), one opener per row
        for i, row in enumerate(geometry["rows"]):
            beside = [o for o in geometry["openers"] if row["top"] <= o["y"] <= row["bottom"]]
            assert len(beside) == 1, f"row {i + 1} has {len(beside)} openers beside it: {geometry}"
        # the running objective's columns: step as a whole number, the value
        assert set(_column(geometry, "step")) == {"2"}
        assert _column(geometry, "loss")[0] == f"{max(XS) / 4:.6g}"
        # the folder: short, the full path on hover
        assert geometry["path"]["title"].endswith(geometry["path"]["text"].lstrip("…~."))
        assert geometry["path"]["title"].startswith("/") and len(geometry["path"]["text"]) < len(
            geometry["path"]["title"])
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.locator(".hsm-panel").first.screenshot(path=str(ARTIFACTS / "status_grid.png"))
        # the opener of row 3 opens row 3's task in Job detail
        task = geometry["rows"][2]["cells"][0]
        page.locator(".hsm-status-table > button.hsm-opener").nth(2).click()
        page.wait_for_function("task => { const d = document.querySelector('.hsm-detail');"
                               " return d && d.offsetParent !== null && d.innerText.includes(task); }",
                               arg=task, timeout=10_000)
        # no button cuts its words, on any tab
        cut = page.evaluate(_CUT_JS)
        for tab in ("Sources", "Results"):  # Results last: its charts keep the kernel busy a moment
            page.locator(".lm-TabBar-tab", has_text=tab).first.click()
            page.wait_for_function("tab => Array.from(document.querySelectorAll('.lm-TabBar-tab.lm-mod-current'))"
                                   ".some(t => t.innerText.trim() === tab)", arg=tab, timeout=20_000)
            wait_for_kernel_idle(page)  # the tab drawn
            page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")  # laid out
            cut += page.evaluate(_CUT_JS)
        assert not cut, f"buttons or labels cut their words: {cut}"
    except Exception as exc:
        png, html_path = save_diagnostics(page, "lab-status-grid")
        raise AssertionError(f"{exc}; see the screenshot {png} and HTML {html_path}") from exc
