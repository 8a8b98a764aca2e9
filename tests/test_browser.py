"""Browser tests in headless Chromium: (a) a notebook run in JupyterLab renders its widgets;
(b) a stage's HTML report renders its widgets from the embedded state with networking off.
Screenshots go to test-artifacts/ (NBFT_TEST_ARTIFACTS)."""
import dataclasses
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import warnings
from pathlib import Path

import papermill
import pytest

from browser import Browser
from nbft import cli, export, params

pytestmark = [pytest.mark.browser, pytest.mark.notebook]
ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "params" / "smoke.yaml"
STAGE = "01_data_prep"  # its example browser: a dropdown, a slider and an HTML pane
WIDGETS = "document.querySelectorAll('.widget-dropdown select, .widget-slider').length"
NO_NETWORK = ["--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>"]


def smoke_parameters():
    return dataclasses.asdict(params.resolve(SMOKE)[STAGE])


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """The stage executed by Papermill on smoke parameters (widget state stored in its metadata)."""
    d = tmp_path_factory.mktemp("executed")
    cli._kernel_env(d / "runs")
    out = d / f"{STAGE}.ipynb"
    papermill.execute_notebook(str(ROOT / "notebooks" / f"{STAGE}.ipynb"), str(out), parameters=smoke_parameters(),
                               kernel_name="python3", cwd=str(ROOT / "notebooks"), progress_bar=False)
    return out


def offline_page(browser: Browser, page: Path):
    browser.offline()
    browser.navigate(page.as_uri())
    browser.wait_for("document.readyState === 'complete'", timeout=30)


def test_report_renders_widgets_offline_from_embedded_state(executed):
    page = export.export_html(executed)
    text = page.read_text()
    assert export.external_urls(text) == []
    assert 'type="application/vnd.jupyter.widget-state+json"' in text and "nbft-static-fallback" in text
    with Browser(NO_NETWORK) as b:
        offline_page(b, page)
        n = b.wait_for(WIDGETS, timeout=60)
        shown = b.evaluate("[...document.querySelectorAll('.widget-subarea .widget-html')].map(e => e.innerText).join(' ')")
        b.screenshot("report_offline_01_data_prep.png")
        fetched = [u for u in b.requests if not u.startswith(("file:", "data:", "blob:", "about:"))]
    assert n >= 2  # the split dropdown and the example slider
    assert "completion" in shown and "prompt" in shown  # the HTML pane shows the first example
    assert fetched == []


def test_report_without_a_renderer_shows_the_static_copies(executed, tmp_path, monkeypatch):
    """The control: no vendored renderer -> no widget renders, and the static fallback is what shows."""
    def unavailable(fetch=True):
        raise OSError("no registry")

    monkeypatch.setattr(export, "vendor", unavailable)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        page = export.export_html(executed, tmp_path / "static.html")
    assert any("static copies only" in str(w.message) for w in caught)
    assert export.external_urls(page.read_text()) == []
    with Browser(NO_NETWORK) as b:
        offline_page(b, page)
        time.sleep(2)
        n = b.evaluate(WIDGETS)
        fallback = b.evaluate("[...document.querySelectorAll('.nbft-static-fallback')].map(e => e.innerText).join(' ')")
        b.screenshot("report_static_fallback_01_data_prep.png")
    assert n == 0 and "completion" in fallback


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def lab(tmp_path):
    """JupyterLab on localhost serving one notebook with the smoke parameters injected (not executed)."""
    root = tmp_path / "lab"
    root.mkdir()
    papermill.execute_notebook(str(ROOT / "notebooks" / f"{STAGE}.ipynb"), str(root / f"{STAGE}.ipynb"),
                               parameters=smoke_parameters(), prepare_only=True, kernel_name="python3")
    port, token = _free_port(), "nbft-browser-test"
    env = {**os.environ, "NBFT_RUNS_DIR": str(tmp_path / "runs"), "JUPYTER_CONFIG_DIR": str(tmp_path / "jupyter"),
           "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")}
    log = open(tmp_path / "lab.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
                               f"--ServerApp.token={token}", f"--ServerApp.root_dir={root}", "--allow-root",
                               "--LabApp.expose_app_in_browser=True", "--LabApp.news_url=",
                               "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
                              env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    t0 = time.time()
    while True:
        try:
            urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
            break
        except OSError:
            if server.poll() is not None or time.time() - t0 > 90:
                server.kill()
                raise RuntimeError(f"jupyterlab did not start: {(tmp_path / 'lab.log').read_text()[-3000:]}")
            time.sleep(0.5)
    yield url, token, tmp_path / "runs"
    server.terminate()
    try:
        server.wait(15)
    except subprocess.TimeoutExpired:
        server.kill()
    log.close()


PANEL = "Array.from(jupyterapp.shell.widgets('main')).find(w => w.sessionContext)"  # headless: nothing has focus


def test_notebook_runs_in_jupyterlab_and_its_widgets_render(lab):
    url, token, runs_dir = lab
    kernel_idle = (f"(() => {{ const w = window.jupyterapp && {PANEL};"
                   " const k = w && w.sessionContext.session && w.sessionContext.session.kernel;"
                   " return !!k && k.status === 'idle'; })()")
    output_types = (f"(() => {{ const cells = {PANEL}.content.model.cells; const out = [];"
                    " for (let i = 0; i < cells.length; i++) { const o = cells.get(i).outputs;"
                    " for (let j = 0; o && j < o.length; j++) out.push(o.get(j).type); } return out; })()")
    with Browser() as b:
        b.navigate(f"{url}/lab/tree/{STAGE}.ipynb?token={token}")
        b.wait_for(kernel_idle, timeout=120)
        assert b.evaluate(WIDGETS) == 0  # nothing rendered before the notebook runs
        b.evaluate("jupyterapp.commands.execute('notebook:run-all-cells'); true")
        n = b.wait_for(WIDGETS, timeout=180)
        t0 = time.time()
        while not list(runs_dir.glob("*/metrics.json")) and time.time() - t0 < 180:
            time.sleep(1)  # the last cells record metrics and save artifacts after the dashboard
        b.wait_for(kernel_idle, timeout=60)
        types = b.evaluate(output_types)
        shown = b.evaluate("[...document.querySelectorAll('.widget-html')].map(e => e.innerText).join(' ')")
        b.evaluate("document.querySelector('.widget-dropdown').scrollIntoView(); true")
        b.screenshot("jupyterlab_01_data_prep.png")
    assert n >= 2 and "completion" in shown
    assert "error" not in types and types.count("display_data") >= 3, types
    recorded = [json.loads(p.read_text()) for p in runs_dir.glob("*/metrics.json")]
    assert recorded and recorded[0][STAGE]["n_train"] > 0  # the notebook ran to its last cell in the kernel
