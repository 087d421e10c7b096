"""The sweep panel under Voila: click Launch, watch the sweep finish."""

from __future__ import annotations

import time

from .conftest import save_diagnostics, wait_for_panel_finished


def test_voila_launch_runs_sweep_to_completion(voila_server, page):
    t0 = time.monotonic()
    page.goto(voila_server.url, wait_until="domcontentloaded", timeout=60_000)
    launch = page.locator(".widget-button.hsm-launch")
    try:
        launch.wait_for(state="visible", timeout=60_000)
    except Exception as exc:
        png, html = save_diagnostics(page, "voila-no-launch")
        raise AssertionError(f"Voila did not show .hsm-launch; screenshot {png}, HTML {html}") from exc
    t_visible = time.monotonic() - t0
    launch.click()
    state = wait_for_panel_finished(page, "voila", expected_total="6", timeout=60)
    print(f"\nLaunch visible after {t_visible:.1f} s, finished after "
          f"{time.monotonic() - t0:.1f} s: {state}")
