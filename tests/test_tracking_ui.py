"""The MLflow UI shows a run's accuracy series: a real run logs to MLflow, ``mlflow server`` serves
its store on 127.0.0.1, headless Chromium (Debian's, driven by Playwright) opens the run's page, and
the accuracy chart the page draws holds the values of ``metrics.jsonl``.

The screenshot goes to ``$F3OCUS_SCREENSHOT`` when set (docs/tracking-mlflow-ui.png was made with
``F3OCUS_SCREENSHOT=docs/tracking-mlflow-ui.png pytest tests/test_tracking_ui.py``), else under the
test's folder. Without a Chromium binary the test skips and says so (``make test`` installs Debian's
``chromium`` where it runs as root).
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.inprocess_grid import run_server_app

pytest.importorskip("mlflow", reason="the tracking extra is not installed: pip install -e '.[tracking]'")

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


@pytest.fixture(scope="session")
def browser() -> str:
    """The Chromium binary to drive (the test skips, saying why, without one)."""
    for name in BROWSERS:
        if path := shutil.which(name):
            return path
    pytest.skip(
        f"no Chromium to drive ({', '.join(BROWSERS)} not on PATH): "
        "apt-get install chromium, or run `make test` as root"
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_mlflow_server(store: str, port: int, log_path: Path) -> subprocess.Popen:
    """``mlflow server`` in a session of its own (stopped with its process group by its PID)."""
    command = [
        str(Path(sys.executable).parent / "mlflow"),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--backend-store-uri",
        store,
        "--workers",
        "1",
    ]
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    with log_path.open("w") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as reply:
                if reply.status == 200:
                    return server
        except OSError:
            if server.poll() is not None:
                break
            time.sleep(0.5)
    _stop(server)
    raise AssertionError(f"mlflow server did not answer on port {port}:\n{log_path.read_text()[-3000:]}")


def _stop(server: subprocess.Popen) -> None:
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=10)


@pytest.mark.slow
def test_the_mlflow_ui_shows_the_runs_accuracy_series(browser, small_run_config, tmp_path):
    from playwright.sync_api import sync_playwright

    config = {**small_run_config, "tracking.to": "mlflow", "run-name": "f3ocus-easy-vqa"}
    _, rows = run_server_app(config, 2)
    out = Path(config["output-dir"]) / config["run-name"]
    state = json.loads((out / "tracking.json").read_text())["mlflow"]
    accuracy = [(row["round"], row["accuracy"]) for row in rows]
    assert len(accuracy) == 3

    port = _free_port()
    server = _start_mlflow_server(state["uri"], port, tmp_path / "mlflow-server.log")
    shot = Path(os.environ.get("F3OCUS_SCREENSHOT") or tmp_path / "mlflow-ui.png")
    try:
        with sync_playwright() as playwright:
            chromium = playwright.chromium.launch(executable_path=browser, args=["--no-sandbox", "--disable-gpu"])
            try:
                page = chromium.new_page(viewport={"width": 1400, "height": 1150})
                page.goto(
                    f"http://127.0.0.1:{port}/#/experiments/{state['experiment_id']}/runs/"
                    f"{state['run_id']}/model-metrics"
                )
                search = page.get_by_placeholder("Search metric charts")
                search.wait_for(timeout=60_000)
                assistant = page.get_by_role("button", name="Close", exact=True)  # MLflow's chat panel
                if assistant.count():
                    assistant.first.click()
                search.fill("accuracy")
                card = page.get_by_test_id("experiment-view-compare-runs-card").filter(
                    has_text=re.compile(r"\(accuracy\)")
                )
                plot = card.locator(".js-plotly-plot")
                plot.wait_for(timeout=60_000)
                traces = plot.evaluate(
                    "gd => gd.data.map(t => ({name: t.name, x: Array.from(t.x), y: Array.from(t.y)}))"
                )
                page.wait_for_timeout(1000)  # the other charts finish drawing
                shot.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(shot))
            finally:
                chromium.close()
    finally:
        _stop(server)

    assert traces and all(trace["name"] == config["run-name"] for trace in traces)
    for trace in traces:
        assert trace["x"] == [step for step, _ in accuracy]
        assert trace["y"] == pytest.approx([value for _, value in accuracy])
    assert shot.stat().st_size > 20_000
