"""The dashboard served for real and opened in headless Chromium (Debian's `chromium`).

Starts `streamlit run` the way `fedadamw dashboard` does, on a free loopback port. Over a
synthetic store: the main figures render with data, the page logs no console error,
auto-refresh picks up what a writer adds, and screenshots are saved (to the test's temporary
folder, or to $FEDADAMW_SCREENSHOTS when set, so a test run never dirties the checkout). Over
an empty folder: the page is open before a real `fedadamw run` starts, and its rounds appear
without a reload. Servers and runs are stopped by their pids, also when a test fails.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fedadamw.config import default_config
from fedadamw.results.lock import WriterLock
from fedadamw.results.writer import ResultStore
from fedadamw.viz.serve import free_port, start_dashboard, stop_process
from tests import needs
from tests.test_figures import write_synthetic_store

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
MAIN_FIGURES = 7  # divergence, accuracy, heatmap, scatter, labels, trajectories, layers


@pytest.fixture
def chromium() -> str:
    """Debian's chromium: the test skips without it, and fails without it under CI."""
    return needs.chromium()


# Waits follow the page's state, not a budget sized for a quiet machine: a wait goes on while
# the server lives and Streamlit is still running the script (its "Running…" widget is up),
# and fails at once on a dead server or a drawn exception. IDLE_S bounds how long an idle
# page may go without the awaited state; CEILING_S only catches a hang.
IDLE_S = 30.0
CEILING_S = 600.0


def _wait_healthy(url: str, proc: Any) -> None:
    deadline = time.monotonic() + CEILING_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the dashboard server exited with status {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as resp:
                if resp.read().strip() == b"ok":
                    return
        except OSError:
            time.sleep(0.25)
    raise TimeoutError(f"the dashboard did not answer at {url} within {CEILING_S:.0f} s")


def _wait_for_page(page: Any, condition: str, what: str, server: Any) -> None:
    """Until the JS `condition` holds on the page (see IDLE_S and CEILING_S above)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    started = idle_since = time.monotonic()
    while True:
        try:
            page.wait_for_function(condition, timeout=2_000)
            return
        except PlaywrightTimeout:
            pass
        now = time.monotonic()
        assert server.poll() is None, f"the dashboard server exited while waiting for {what}"
        errors = page.locator("[data-testid='stException']")
        assert errors.count() == 0, errors.first.inner_text()
        busy = page.locator("[data-testid='stStatusWidget']").count() > 0
        if busy:
            idle_since = now
        assert now - idle_since < IDLE_S, f"the page is idle without {what} for {IDLE_S:.0f} s"
        assert now - started < CEILING_S, f"no {what} within {CEILING_S:.0f} s"


def _settle(page: Any) -> None:
    """Wait until the script run is over (no "Running…" badge) and Plotly has drawn."""
    page.mouse.move(900, 5)  # no hover effects in the picture
    page.wait_for_selector("[data-testid='stStatusWidget']", state="detached", timeout=30_000)
    page.wait_for_timeout(800)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path, Any]]:
    """A dashboard server over a synthetic store: three seeds, and one run still writing."""
    out = tmp_path / "run"
    write_synthetic_store(out, seeds=(0, 1, 2), num_rounds=8, num_clients=10, real_labels=True)
    # A second experiment with a run that is still going: the page must follow it.
    live = default_config().replace(experiment="live", arms="decoupled")
    with ResultStore(out / "results.db") as store:
        store.start_run("live:decoupled:1", "live", "decoupled", "decoupled", 0.01, live.to_json())
    port = free_port()
    writer = WriterLock(out)  # a live process holds the folder: its runs are running
    proc = start_dashboard(out, port, quiet=True)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_healthy(url, proc)
        yield url, out, proc
    finally:
        stop_process(proc)  # by pid: terminate, then kill if it lingers
        writer.release()
        assert proc.poll() is not None


def test_dashboard_renders_in_chromium(
    chromium: str, served: tuple[str, Path, Any], tmp_path: Path
) -> None:
    shots = Path(os.environ.get("FEDADAMW_SCREENSHOTS") or tmp_path)
    from playwright.sync_api import sync_playwright

    url, out, _ = served
    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 1500})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(url, wait_until="domcontentloaded")
            _wait_for_page(
                page,
                f"document.querySelectorAll('.js-plotly-plot').length >= {MAIN_FIGURES}",
                f"{MAIN_FIGURES} figures",
                served[2],
            )
            # Every figure drew traces with data points into its SVG.
            drawn = page.evaluate(
                """() => Array.from(document.querySelectorAll('.js-plotly-plot')).map(gd => ({
                    traces: (gd._fullData || []).length,
                    points: (gd._fullData || []).reduce((n, t) => {
                        const a = t.z || t.y || t.x; return n + (a && a.length ? a.length : 0);
                    }, 0),
                    svg: gd.querySelectorAll('.main-svg').length}))"""
            )
            assert len(drawn) >= MAIN_FIGURES
            assert all(d["traces"] > 0 and d["points"] > 0 and d["svg"] > 0 for d in drawn), drawn
            # Bands take their arm's colour: coupled's and decoupled's differ, neither is grey.
            fills = page.evaluate(
                """() => Array.from(document.querySelectorAll('.js-plotly-plot')).flatMap(
                    gd => (gd._fullData || []).filter(t => t.fill === 'toself')
                        .map(t => t.fillcolor))"""
            )
            rgb = {tuple(int(v) for v in re.findall(r"\d+", f)[:3]) for f in fills}
            assert len(rgb) >= 2 and all(len(set(c)) > 1 for c in rgb), fills
            lines = page.locator(".js-plotly-plot .scatterlayer .js-line").count()
            heatmaps = page.locator(".js-plotly-plot .hm image").count()
            assert lines >= 4 and heatmaps == 2
            body = page.inner_text("body")
            assert "Traceback" not in body and "could not be drawn" not in body
            assert page.locator("[data-testid='stException']").count() == 0
            assert "1 running" in body

            # Auto-refresh (on: a run is writing): a run that starts now appears by itself.
            with ResultStore(out / "results.db") as store:
                live = default_config().replace(experiment="live", arms="coupled")
                store.start_run(
                    "live:coupled:1", "live", "coupled", "coupled", 0.01, live.to_json()
                )
            page.get_by_text("2 running").wait_for(timeout=20_000)

            # Screenshots of a page at rest: auto-refresh off, no script run in flight.
            toggle = page.get_by_role("switch", name="Auto-refresh")
            assert toggle.is_checked()
            page.get_by_text("Auto-refresh", exact=True).click()
            page.wait_for_function(
                "!document.querySelector('input[aria-label=\"Auto-refresh\"]')?.checked"
            )
            shots.mkdir(parents=True, exist_ok=True)
            _settle(page)
            page.screenshot(path=str(shots / "dashboard.png"))
            height = page.evaluate(
                "document.querySelector('[data-testid=\"stMainBlockContainer\"]').scrollHeight"
            )
            page.set_viewport_size({"width": 1440, "height": int(height) + 120})
            _settle(page)
            page.screenshot(path=str(shots / "dashboard-full.png"))
        finally:
            browser.close()
    assert errors == []


# Long enough that a page re-reading every 5 s sees it mid-way: since the lean start-up a
# round of this run takes 0.3–1 s, and 12 rounds were over in ~5 s (measured).
LIVE_ROUNDS = 30


def test_dashboard_follows_a_run_that_starts_after_it_opened(chromium: str, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    out = tmp_path / "live"
    out.mkdir()  # what `fedadamw dashboard` gets before the run: a folder without a store
    port = free_port()
    server = start_dashboard(out, port, quiet=True)
    run: subprocess.Popen[str] | None = None
    errors: list[str] = []
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_healthy(url, server)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 1400})
                page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                page.goto(url, wait_until="domcontentloaded")
                _wait_for_page(
                    page,
                    "document.body.innerText.includes('no results store at')",
                    "the waiting note",
                    server,
                )
                # A small real run, through the command researchers type, with both trackers.
                run = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "fedadamw.cli",
                        "run",
                        "--out",
                        str(out),
                        "--set",
                        "num-clients=2",
                        "--set",
                        f"num-server-rounds={LIVE_ROUNDS}",
                        "--set",
                        "local-epochs=2",
                        "--set",
                        "arms=decoupled",
                        "--set",
                        "experiment=live",
                        "--log",
                        "tensorboard,mlflow",
                    ],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
                # No reload: the watcher notices the store and the live writer, the body
                # re-reads it while the run writes, round by round.
                page.get_by_text("1 running").wait_for(timeout=180_000)
                # Some round after the first, out of all of them, while the run is live.
                live_round = re.compile(rf"round ([2-9]|[1-9][0-9])/{LIVE_ROUNDS}")
                page.get_by_text(live_round).first.wait_for(timeout=180_000)
                page.wait_for_function(
                    "Array.from(document.querySelectorAll('.js-plotly-plot')).some("
                    "gd => (gd._fullData || []).some(t => t.mode === 'lines+markers'"
                    " && t.y && t.y.length >= 2))",
                    timeout=60_000,
                )
                # When the run ends the page says so and stops re-reading.
                page.get_by_text("no run is live").wait_for(timeout=240_000)
                body = page.inner_text("body")
                assert "Traceback" not in body and "could not be drawn" not in body
            finally:
                browser.close()
        output, _ = run.communicate(timeout=240)
        assert run.returncode == 0, output[-3000:]
    finally:
        if run is not None and run.poll() is None:
            run.terminate()
            run.wait(30)
        stop_process(server)
    assert errors == []
    # What the run printed: Ray's start, the arm, each round's time and the ETA, the trackers.
    assert "starting Ray" in output and "Ray is up after" in output
    assert "arm decoupled (1/1)" in output
    assert f"round {LIVE_ROUNDS}/{LIVE_ROUNDS}" in output and "/round  ETA" in output
    assert "tensorboard: 1 runs in" in output and "mlflow: 1 runs in" in output
    assert list((out / "tensorboard").rglob("events.out.tfevents.*"))
