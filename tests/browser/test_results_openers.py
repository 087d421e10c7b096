"""Issue 19 item 19, in a real JupyterLab: each row of the Results grid has its opener (›) beside
it, and the opener beside row 9 opens row 9's task in Job detail, whatever the rows hold (failed
tasks with long errors, empty metric cells)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from .conftest import run_all, save_diagnostics

pytestmark = pytest.mark.browser

ROWS = 25  # a full page of the grid (results_view.PAGE_SIZE)

CELLS = [
    ("from pathlib import Path\nfrom hsm_notebook import LocalComputeSource, ParameterSpace, Sweep\n"
    "Path('opener_job.py').write_text(\n"
    "    'import sys\\nfrom hsm_notebook.metrics import log_metrics\\n'\n"
    "    'x = int(sys.argv[1].split(\"=\")[1])\\n'\n"
    "    'if x % 4 == 0:\\n'\n"
    "    '    sys.exit(\"a long error line that the grid cuts short, \" * 6 + str(x))\\n'\n"
    "    'log_metrics(loss=1 / x, **({\"extra_metric_with_a_long_name\": x} if x % 3 == 0 else {}))\\n')"),
    (f"sweep = Sweep(ParameterSpace(grid={{'x': list(range(1, {ROWS + 1}))}}), ['python', 'opener_job.py'],\n"
    "              [LocalComputeSource(max_parallel_jobs=4)], poll_interval=0.2).run()\n"
    "panel = sweep.panel()\npanel.tabs.selected_index = 4\npanel"),
]

#: Per data row of the grid: its vertical extent and task id, and per opener button its centre.
OPENERS = ".hsm-results-table button.hsm-opener"  # the Results grid's › buttons (the Status grid has its own)
_GEOMETRY_JS = """() => {
  // rows as a person sees them: a table's <tr>s, or a grid's rows (the cells carrying data-row)
  const grid = document.querySelector('.hsm-results-table');
  const extent = cells => {
    const boxes = cells.map(c => c.getBoundingClientRect());
    return {top: Math.min(...boxes.map(b => b.top)), bottom: Math.max(...boxes.map(b => b.bottom))};
  };
  let header, rows;
  if (grid.tagName === 'TABLE') {
    header = Array.from(grid.querySelectorAll('th'));
    rows = Array.from(grid.querySelectorAll('tr[data-state]')).map(r => Array.from(r.querySelectorAll('td')));
  } else {
    header = Array.from(grid.querySelectorAll('.hsm-th:not(.hsm-corner)'));
    const byRow = {};
    grid.querySelectorAll('.hsm-cell[data-row]').forEach(c => (byRow[c.dataset.row] ||= []).push(c));
    rows = Object.keys(byRow).sort((a, b) => a - b).map(k => byRow[k]);
  }
  const col = header.findIndex(th => th.textContent.trim() === 'task_id');
  const out = rows.map(cells => ({...extent(cells), task: cells[col].textContent.trim()}));
  const openers = Array.from(document.querySelectorAll(OPENERS)).map(o => {
    const b = o.getBoundingClientRect();
    return {y: (b.top + b.bottom) / 2, x: b.left, visible: b.height > 0};
  });
  return {rows: out, openers};
}""".replace("OPENERS", repr(OPENERS))


def _opener_beside(row: dict[str, Any], openers: list[dict[str, Any]]) -> int | None:
    """The index of the opener whose centre lies within ``row``'s height, as a person sees it."""
    found = [i for i, o in enumerate(openers) if o["visible"] and row["top"] <= o["y"] <= row["bottom"]]
    return found[0] if len(found) == 1 else None


def _notebook(tmp_path) -> str:
    nb = {"cells": [{"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [], "source": c}
                    for c in CELLS],
          "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
          "nbformat": 4, "nbformat_minor": 5}
    path = tmp_path / "results_openers.ipynb"
    path.write_text(json.dumps(nb))
    return str(path)


def test_each_row_of_the_results_grid_has_its_own_opener(jupyter_server, page, tmp_path):
    run_all(page, jupyter_server.notebook_url(_notebook(tmp_path)))
    try:
        page.locator(".hsm-results-table [data-state]").last.wait_for(state="visible", timeout=30_000)
        page.wait_for_function(f"() => document.querySelectorAll('{OPENERS}').length === {ROWS}", timeout=30_000)
        geometry = page.evaluate(_GEOMETRY_JS)
        rows, openers = geometry["rows"], geometry["openers"]
        assert len(rows) == ROWS, geometry
        beside = [_opener_beside(row, openers) for row in rows]
        missing = [i + 1 for i, b in enumerate(beside) if b is None]
        assert not missing, f"rows {missing} have no opener beside them: {geometry}"
        ninth = rows[8]
        page.locator(OPENERS).nth(beside[8]).click()  # the › beside row 9
        detail = page.locator(".hsm-detail").first
        detail.wait_for(state="visible", timeout=10_000)
        page.wait_for_function("task => document.querySelector('.hsm-detail').innerText.includes(task)",
                               arg=ninth["task"], timeout=10_000)
        shown = page.locator("input[placeholder^='task id']").first.input_value()
        assert shown == ninth["task"], f"row 9 is {ninth['task']}, Job detail shows {shown}"
    except Exception as exc:
        png, html_path = save_diagnostics(page, "lab-openers")
        raise AssertionError(f"{exc}; see the screenshot {png} and HTML {html_path}") from exc
