"""The sweep panel in a real JupyterLab: Run All, click Launch, watch it finish
without running another cell; and Run All twice on one kernel (ipykernel 7)."""

from __future__ import annotations

import time

from .conftest import (
    ARTIFACTS,
    PANEL_NOTEBOOK,
    cell_prompts,
    output_json,
    output_texts,
    panel_state,
    prompt_number,
    run_all,
    run_all_cells,
    save_diagnostics,
    wait_for_kernel_idle,
    wait_for_panel_finished,
)


def test_launch_button_runs_sweep_to_completion(jupyter_server, page, blocked_requests):
    t0 = time.monotonic()
    prompts = run_all(page, jupyter_server.notebook_url(PANEL_NOTEBOOK))
    assert [prompt_number(p) for p in prompts] == [1, 2, 3, 4], prompts
    t_run_all = time.monotonic() - t0

    launch = page.locator(".widget-button.hsm-launch")
    try:
        launch.wait_for(state="visible", timeout=20_000)
    except Exception as exc:
        png, html = save_diagnostics(page, "lab-no-launch")
        raise AssertionError(f"no visible .widget-button.hsm-launch after Run All; outputs="
                             f"{output_texts(page)!r}; screenshot {png}, HTML {html}") from exc
    before_click = panel_state(page)
    launch.click()

    state = wait_for_panel_finished(page, "lab", expected_total="6", timeout=60)
    t_done = time.monotonic() - t0

    # No cell was run by the click: same prompts, kernel idle.
    assert cell_prompts(page) == prompts
    wait_for_kernel_idle(page, timeout=10)
    assert cell_prompts(page) == prompts

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.locator(".hsm-launch").scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / "panel.png"), full_page=True)
    print(f"\nRun All {t_run_all:.1f} s, finished {t_done:.1f} s after page open; "
          f"before click {before_click}; final {state}; blocked {blocked_requests.urls}")


def test_run_all_twice_on_one_kernel(jupyter_server, page):
    first = run_all(page, jupyter_server.notebook_url(PANEL_NOTEBOOK))
    second = run_all_cells(page)
    numbers = [prompt_number(p) for p in second]
    assert all(n is not None for n in numbers), second
    assert min(numbers) > max(prompt_number(p) for p in first), (first, second)

    texts = output_texts(page)
    saved = output_json(page)
    assert not any("RuntimeError" in t for t in texts), texts
    assert "RuntimeError" not in repr(saved), saved
    assert not any(o.get("output_type") == "error" for cell in saved for o in cell), saved
    # The panel of the second run is there.
    assert page.locator(".widget-button.hsm-launch").count() >= 1


def test_the_quickstart_runs_with_run_all(jupyter_server, page, tmp_path):
    import json
    from pathlib import Path

    notebook = json.loads((Path(__file__).resolve().parents[2] / "notebooks" / "01_quickstart.ipynb").read_text())
    for cell in notebook["cells"]:  # as a newcomer opens it: nothing run yet
        if cell["cell_type"] == "code":
            cell["outputs"], cell["execution_count"] = [], None
    quickstart = tmp_path / "01_quickstart.ipynb"
    quickstart.write_text(json.dumps(notebook))
    prompts = run_all(page, jupyter_server.notebook_url(quickstart))
    assert all(prompt_number(p) is not None for p in prompts), prompts
    saved = output_json(page)
    assert not any(o.get("output_type") == "error" for cell in saved for o in cell), saved
    texts = " ".join(output_texts(page))
    assert "{'COMPLETED': 12}" in texts and "diverged at lr=0.01" in texts
    assert page.locator(".widget-button.hsm-launch").count() == 1  # the panel is shown
