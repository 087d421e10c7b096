"""The panel as a results tool in a real JupyterLab: a live curve appears while its job still
runs (highlighted, its legend naming its parameters), a column header sorts the grid, a row opens
its Job detail, ``%hsm`` lists recent sweeps."""

from __future__ import annotations

import json

from .conftest import run_all, save_diagnostics

CELLS = [
    "from pathlib import Path\nfrom hsm_notebook import LocalComputeSource, ParameterSpace, Sweep\n"
    "Path('curve_job.py').write_text(\n"
    "    'import sys, time\\nfrom hsm_notebook.metrics import log_metrics\\n'\n"
    "    'x = int(sys.argv[1].split(\"=\")[1])\\n'\n"
    "    'for i in range(5):\\n    log_metrics(step=i, loss=1 / (x + i))\\n    time.sleep(0.1)\\n'\n"
    "    'if x == 9:\\n    time.sleep(40)\\n'\n"
    "    'log_metrics(loss=1 / x)\\n')",
    "sweep = Sweep(ParameterSpace(grid={'x': [1, 2, 3, 9]}), ['python', 'curve_job.py'],\n"
    "              [LocalComputeSource(max_parallel_jobs=4)], poll_interval=0.2, objective={'loss': 'min'}).start()\n"
    "panel = sweep.panel()\npanel.tabs.selected_index = 4\npanel",
    "%load_ext hsm_notebook",
    "%hsm",
]


#: The running curve as Plotly drew it: the trace named x=9 in the legend group "running".
_RUNNING_JS = """() => {
  const gd = document.querySelector('.hsm-curves .js-plotly-plot');
  const t = gd && gd.data && gd.data.find(t => t.name === 'x=9' && t.legendgroup === 'running');
  return t ? {points: t.x.length, width: t.line.width} : null;
}"""


def _notebook(tmp_path) -> str:
    nb = {"cells": [{"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [], "source": c}
                    for c in CELLS],
          "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
          "nbformat": 4, "nbformat_minor": 5}
    path = tmp_path / "results_panel.ipynb"
    path.write_text(json.dumps(nb))
    return str(path)


def test_live_curves_sorting_row_detail_and_recent_sweeps(jupyter_server, page, tmp_path):
    run_all(page, jupyter_server.notebook_url(_notebook(tmp_path)))
    try:
        # the x=9 task still runs (it sleeps 40 s after its 5 steps): its curve is drawn, highlighted
        page.wait_for_function(_RUNNING_JS, timeout=30_000)
        curve = page.evaluate(_RUNNING_JS)
        assert curve["points"] == 5 and curve["width"] > 2, curve
        header = page.locator(".hsm-results-header button", has_text="loss").first
        header.wait_for(state="visible", timeout=30_000)
        header.click()  # sorted by loss already (the objective): a click turns the order round
        page.locator(".hsm-results-header button", has_text="loss ▼").first.wait_for(state="visible", timeout=10_000)
        page.locator(".hsm-openers button").first.click()  # the first row's ›
        detail = page.locator(".hsm-detail").first
        detail.wait_for(state="visible", timeout=10_000)
        assert "task" in detail.inner_text()
        recent = page.locator(".hsm-recent").first
        recent.wait_for(state="visible", timeout=30_000)
        assert "Recent sweeps" in recent.inner_text() and page.locator(".hsm-recent .hsm-open").count() >= 1
    except Exception as exc:
        png, html_path = save_diagnostics(page, "lab-results")
        raise AssertionError(f"{exc}; see the screenshot {png} and HTML {html_path}") from exc
    finally:
        page.locator(".widget-button.hsm-cancel").first.click()  # the held job ends now, not in 40 s
