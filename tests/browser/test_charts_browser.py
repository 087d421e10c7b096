"""Issue 22 in a real JupyterLab (and Voila): the Results charts drawn by Plotly for a sweep of real
learning curves (scikit-learn's SGDClassifier on load_digits, 12 configurations over alpha
1e-5 ... 1e-2 and eta0, an epoch per step).  Each view is screenshotted into tests/artifacts/, and
the page is read for what a user sees: alpha on a log axis, the hover naming task, parameters and
value, a click opening Job detail, a brush on the parallel coordinates filtering the grid, every
varying parameter in the importance chart."""

from __future__ import annotations

import json
import re

from tests.helpers import until

from .conftest import ARTIFACTS, run_all, save_diagnostics, start_voila

CONFIGS = 12
CELLS = [
    "from hsm_notebook import LocalComputeSource, ParameterSpace, Sweep\n\n"
    "def train(alpha, eta0, epochs=5):\n"
    "    import warnings\n"
    "    from sklearn.datasets import load_digits\n"
    "    from sklearn.linear_model import SGDClassifier\n"
    "    from sklearn.model_selection import train_test_split\n"
    "    from hsm_notebook import log_metrics\n"
    "    x, y = load_digits(return_X_y=True)\n"
    "    x_train, x_val, y_train, y_val = train_test_split(x / 16, y, test_size=0.3, random_state=0)\n"
    "    model = SGDClassifier(alpha=alpha, eta0=eta0, learning_rate='constant', random_state=0)\n"
    "    for epoch in range(epochs):\n"
    "        with warnings.catch_warnings():\n"
    "            warnings.simplefilter('ignore')\n"
    "            model.partial_fit(x_train, y_train, classes=list(range(10)))\n"
    "        log_metrics(step=epoch, val_acc=model.score(x_val, y_val))\n"
    "    return {'val_acc': model.score(x_val, y_val)}",
    "space = ParameterSpace(grid={'alpha': [1e-5, 1e-4, 1e-3, 1e-2], 'eta0': [0.001, 0.01, 0.1]})\n"
    "sweep = Sweep(space, train, [LocalComputeSource(max_parallel_jobs=4)], poll_interval=0.2,\n"
    "              directory='digits_sweep', objective={'val_acc': 'max'}).run(progress=False)\n"
    "panel = sweep.panel()\npanel.tabs.selected_index = 4\npanel",
]

#: The view figure's layout and data as Plotly drew them (read from the graph div).
_CHART_JS = """() => {
  const gd = document.querySelector('.hsm-chart .js-plotly-plot');
  if (!gd || !gd._fullLayout) return null;
  const axes = Object.keys(gd._fullLayout).filter(k => /^[xy]axis\\d*$/.test(k))
    .map(k => [k, gd._fullLayout[k].type, (gd._fullLayout[k].title || {}).text || '']);
  return {title: (gd._fullLayout.title || {}).text || '', axes,
          traces: gd.data.map(t => ({type: t.type, uid: t.uid, y: t.type === 'bar' ? Array.from(t.y) : null}))};
}"""
_ROWS_JS = """() => new Set(Array.from(document.querySelectorAll('.hsm-results-table .hsm-cell[data-row]'))
  .map(c => c.dataset.row)).size"""


def _notebook(tmp_path, cells, name) -> str:
    nb = {"cells": [{"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [], "source": c}
                    for c in cells],
          "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
          "nbformat": 4, "nbformat_minor": 5}
    path = tmp_path / name
    path.write_text(json.dumps(nb))
    return str(path)


def _view(page, name: str, title_has: str) -> dict:
    page.locator(".hsm-views button", has_text=name).first.click()
    page.wait_for_function(f"() => {{ const c = ({_CHART_JS})(); return c && c.title.includes({title_has!r}); }}",
                           timeout=30_000)
    chart = page.evaluate(_CHART_JS)
    page.locator(".hsm-chart").first.scroll_into_view_if_needed()
    page.wait_for_timeout(300)  # the traces' transition ends: for the screenshot only
    page.locator(".hsm-chart").first.screenshot(path=str(ARTIFACTS / f"charts_{name.replace(' ', '_')}.png"))
    return chart


def _centre(box: dict) -> tuple[float, float]:
    return box["x"] + box["width"] / 2, box["y"] + box["height"] / 2


def _save_widget_state(jupyter_server, on: bool) -> None:
    """JupyterLab's "save widget state in notebooks" setting (read when a page loads)."""
    folder = jupyter_server.root_dir.parent / "settings" / "@jupyter-widgets" / "jupyterlab-manager"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "plugin.jupyterlab-settings").write_text(json.dumps({"saveState": on}))


def test_every_view_of_a_real_sweep_in_jupyterlab(jupyter_server, page, tmp_path):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    _save_widget_state(jupyter_server, True)
    name = jupyter_server.add_notebook(_notebook(tmp_path, CELLS, "charts.ipynb"))
    try:
        run_all(page, jupyter_server.lab_url(name), timeout=180)
    finally:
        _save_widget_state(jupyter_server, False)  # the next pages load without it
    try:
        # learning curves: the legend names parameters, never task hashes
        page.locator(".hsm-curves .legendtext").first.wait_for(state="visible", timeout=30_000)
        legend = page.evaluate("() => Array.from(document.querySelectorAll('.hsm-curves .legendtext'))"
                               ".map(t => t.textContent)")
        entries = [t for t in legend if t not in ("best finished", "running", "picked")]  # less the group titles
        assert len(entries) == 3 and all(re.fullmatch(r"alpha=[\d.e-]+, eta0=[\d.e-]+", t) for t in entries), legend
        width = page.evaluate("() => document.querySelector('.hsm-curves .js-plotly-plot').getBoundingClientRect()"
                              ".width / document.querySelector('.hsm-panel').getBoundingClientRect().width")
        assert width > 0.9, width  # the panel's width, not half of it
        page.locator(".hsm-curves").first.screenshot(path=str(ARTIFACTS / "charts_curves.png"))

        chart = _view(page, "slice", "against each parameter")
        assert ["xaxis", "log", "alpha"] in chart["axes"] and ["xaxis2", "log", "eta0"] in chart["axes"], chart
        # hover: the task, its parameters and its value
        point = page.locator(".hsm-chart .scatterlayer .trace").first.locator(".point").first
        page.mouse.move(*_centre(point.bounding_box()))
        hover = page.locator(".hsm-chart .hoverlayer .hovertext").first
        hover.wait_for(state="visible", timeout=10_000)
        text = hover.evaluate("e => e.textContent")
        found = re.search(r"task ([0-9a-f]{12})", text)
        assert found and "alpha=" in text and "eta0=" in text and "val_acc =" in text, text
        # a click opens that task in Job detail
        page.mouse.click(*_centre(point.bounding_box()))
        page.locator(".hsm-detail", has_text=found.group(1)).first.wait_for(state="visible", timeout=15_000)
        page.locator(".lm-TabBar-tab, .p-TabBar-tab", has_text="Results").first.click()

        _view(page, "over time", "best so far")
        _view(page, "contour", "best val_acc by")
        chart = _view(page, "parallel", "one line per finished task")
        assert chart["traces"][0]["type"] == "parcoords"
        assert page.evaluate(_ROWS_JS) == CONFIGS
        # brush the alpha axis (the first) over its lower part: the grid keeps the tasks inside
        axis = page.locator(".hsm-chart .parcoords .axis-brush rect.background").first.bounding_box()
        x, top, bottom = axis["x"] + axis["width"] / 2, axis["y"], axis["y"] + axis["height"]
        page.mouse.move(x, bottom - 3)
        page.mouse.down()
        page.mouse.move(x, (top + bottom) / 2, steps=10)
        page.mouse.up()
        page.wait_for_function(f"() => ({_ROWS_JS})() < {CONFIGS}", timeout=15_000)
        shown = page.evaluate(_ROWS_JS)
        assert 0 < shown < CONFIGS and f"Showing {shown} of {CONFIGS} tasks" in \
            page.locator(".hsm-filter-note").first.inner_text()
        page.locator(".hsm-chart").first.screenshot(path=str(ARTIFACTS / "charts_parallel_brushed.png"))

        page.locator(".hsm-views button", has_text="importance").first.click()
        page.wait_for_function(f"() => {{ const c = ({_CHART_JS})(); return c && c.traces.length"
                               " && c.traces[0].type === 'bar'; }", timeout=60_000)
        chart = _view(page, "importance", "importance")
        assert set(chart["traces"][0]["y"]) == {"alpha", "eta0"}, chart
        _view(page, "timeline", "tasks by source")
        page.screenshot(path=str(ARTIFACTS / "charts_panel.png"), full_page=True)
        # saved with its widget state, the notebook keeps each figure as last drawn (here: the timeline)
        page.evaluate("() => window.jupyterapp.commands.execute('docmanager:save')")
        saved = _saved_figures(jupyter_server.root_dir / name)
        assert [t["type"] for t in saved["tasks by source"]] == ["bar"], list(saved)
        assert any(t["name"] == "alpha=0.0001, eta0=0.1" for t in saved["val_acc by step"]), saved["val_acc by step"]
    except Exception as exc:
        png, html_path = save_diagnostics(page, "lab-charts")
        raise AssertionError(f"{exc}; see the screenshot {png} and HTML {html_path}") from exc


def _saved_figures(path) -> dict[str, list[dict]]:
    """{title prefix: traces} of the FigureWidgets in a notebook's saved widget state (once saved)."""
    def figures() -> dict[str, list[dict]]:
        meta = json.loads(path.read_text()).get("metadata", {})
        state = meta.get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {}).get("state", {})
        return {m["state"]["_widget_layout"].get("title", {}).get("text", "")[:15]: m["state"]["_widget_data"]
                for m in state.values() if "_widget_data" in m.get("state", {})}

    until(lambda: len(figures()) == 2, 30, "the notebook saved with the two figures' state")
    return figures()


VOILA_CELLS = [
    "from hsm_notebook import ParameterSpace, Sweep\n\n"
    "def f(alpha, k):\n"
    "    from hsm_notebook import log_metrics\n"
    "    for step in range(3):\n"
    "        log_metrics(step=step, loss=alpha * k / (step + 1))\n\n"
    "sweep = Sweep(ParameterSpace(grid={'alpha': [1e-4, 1e-2], 'k': [1, 2]}), f,\n"
    "              poll_interval=0.2).run(progress=False)\n"
    "panel = sweep.panel()\npanel.tabs.selected_index = 4\npanel",
]


def test_the_charts_render_in_voila(page, tmp_path):
    with start_voila(_notebook(tmp_path, VOILA_CELLS, "voila_charts.ipynb")) as voila:
        page.goto(voila.url, wait_until="domcontentloaded", timeout=60_000)
        try:
            page.locator(".hsm-curves .legendtext").first.wait_for(state="visible", timeout=90_000)
            legend = page.evaluate("() => Array.from(document.querySelectorAll('.hsm-curves .legendtext'))"
                                   ".map(t => t.textContent)")
            assert sorted(legend) == sorted(["best finished", "alpha=0.0001, k=1", "alpha=0.0001, k=2",
                                             "alpha=0.01, k=1"]), legend  # the 3 best (lowest loss)
            page.locator(".hsm-chart .js-plotly-plot .scatterlayer .point").first.wait_for(timeout=30_000)
            page.screenshot(path=str(ARTIFACTS / "charts_voila.png"), full_page=True)
        except Exception as exc:
            png, html_path = save_diagnostics(page, "voila-charts")
            raise AssertionError(f"{exc}; see the screenshot {png} and HTML {html_path}") from exc
