"""Issue 21 in a real JupyterLab: the Parameters form's search is filled in and launched with the
mouse and keyboard, and Results draw the optimization history (a Plotly chart: the view "over time",
by trial), one point per ended trial."""

from __future__ import annotations

import json

from .conftest import ARTIFACTS, run_all, save_diagnostics

TRIALS = 6

CELLS = [
    "from hsm_notebook import LocalComputeSource\nfrom hsm_notebook.ui import SweepPanel\n\n"
    "def train(x, k):\n"
    "    import time\n"
    "    from hsm_notebook import log_metrics\n"
    "    for step in range(4):\n"
    "        log_metrics(step=step, loss=10 * x + k + 1 / (step + 1))\n"
    "        time.sleep(0.1)",
    "panel = SweepPanel(sources=[LocalComputeSource(max_parallel_jobs=2)], refresh_interval=0.2,\n"
    "                   directory='search_sweep')\npanel",
]

#: The points of the history chart (the Results view "over time", by trial), by what they mark.
_POINTS_JS = """() => {
  const gd = document.querySelector('.hsm-chart .js-plotly-plot');
  if (!gd || !gd.data) return null;
  const n = role => gd.data.filter(t => t.meta && t.meta.role === role).reduce((k, t) => k + t.x.length, 0);
  return {completed: n('completed'), pruned: n('pruned'), failed: n('failed'),
          best: gd.data.filter(t => t.meta && t.meta.role === 'best').length};
}"""


def _notebook(tmp_path) -> str:
    nb = {"cells": [{"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [], "source": c}
                    for c in CELLS],
          "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
          "nbformat": 4, "nbformat_minor": 5}
    path = tmp_path / "search_panel.ipynb"
    path.write_text(json.dumps(nb))
    return str(path)


def _row(page, i: int, name: str, kind: str, low: str, high: str) -> None:
    row = page.locator(".hsm-search-row").nth(i)
    row.locator(".hsm-search-name input").fill(name)
    row.locator(".hsm-search-kind select").select_option(kind)
    row.locator(".hsm-search-low input").fill(low)
    row.locator(".hsm-search-high input").fill(high)


def test_a_search_filled_in_the_form_and_launched_draws_its_history(jupyter_server, page, tmp_path):
    run_all(page, jupyter_server.notebook_url(_notebook(tmp_path)))
    try:
        page.locator(".hsm-kind button", has_text="search").first.click()
        page.locator(".hsm-search-form").first.wait_for(state="visible", timeout=20_000)
        page.locator(".hsm-command input").first.fill("train")
        page.locator(".hsm-objective input").first.fill("loss")
        _row(page, 0, "x", "float", "0", "1")
        _row(page, 1, "k", "int", "1", "3")
        page.locator(".hsm-n-trials input").first.fill(str(TRIALS))
        page.wait_for_function(
            "label => { const b = document.querySelector('.widget-button.hsm-launch');"
            " return b && !b.disabled && b.textContent.includes(label); }",
            arg=f"Launch search of {TRIALS} trials", timeout=20_000)
        page.locator(".widget-button.hsm-launch").first.click()
        # Launch turns to Status when it is done: Results is chosen after that
        page.locator(".hsm-message", has_text="Launched a search").first.wait_for(state="visible", timeout=30_000)
        page.locator(".lm-TabBar-tab, .p-TabBar-tab", has_text="Results").first.click()
        page.wait_for_function(f"() => {{ const p = ({_POINTS_JS})();"
                               f" return p && p.completed + p.pruned + p.failed === {TRIALS}; }}", timeout=90_000)
        points = page.evaluate(_POINTS_JS)
        assert points["completed"] >= 1 and points["best"] == 1, points
        assert f"{TRIALS}</b> trials ended" in page.locator(".hsm-search-view .hsm-search-summary").first.inner_html()
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.locator(".hsm-chart").first.scroll_into_view_if_needed()
        page.screenshot(path=str(ARTIFACTS / "search_panel.png"), full_page=True)
    except Exception as exc:
        png, html_path = save_diagnostics(page, "lab-search")
        raise AssertionError(f"{exc}; see the screenshot {png} and HTML {html_path}") from exc
