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


def _chat_notebook(tmp: Path, root: Path) -> None:
    """chat.ipynb in ``root``: the chat playground on a run whose 02 saved an adapter (tiny-llama's, random and
    non-zero: a second model that answers differently), sampling on, no scripted conversation."""
    import nbformat
    from peft import LoraConfig, get_peft_model

    from nbft import models

    tok = models.load_tokenizer("tiny-llama")
    base, _ = models.load_model("tiny-llama", "cpu", tokenizer=tok)
    lora = get_peft_model(base, LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM",
                                           init_lora_weights=False))
    run = tmp / "chat-run"
    models.save_adapter(lora, tok, run / "artifacts" / "02_sft" / "adapter", "tiny-llama")
    kernel = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}
    nbformat.write(nbformat.v4.new_notebook(metadata=kernel, cells=[nbformat.v4.new_code_cell(
        "from pathlib import Path\nfrom nbft import params, runs, widgets\n"
        f"run = runs.Run(Path({str(run)!r}), '02_sft')\n"
        "widgets.chat(run, params.SFTParams(model='tiny-llama', chat_tokens=0), ['base', '02_sft'],\n"
        "             sampling=widgets.Sampling(temperature=1.0, max_new_tokens=12))")]), root / "chat.ipynb")


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """JupyterLab on localhost serving two notebooks: the stage with the smoke parameters injected (not executed),
    and chat.ipynb (``_chat_notebook``)."""
    tmp = tmp_path_factory.mktemp("lab")
    root = tmp / "lab"
    root.mkdir()
    papermill.execute_notebook(str(ROOT / "notebooks" / f"{STAGE}.ipynb"), str(root / f"{STAGE}.ipynb"),
                               parameters=smoke_parameters(), prepare_only=True, kernel_name="python3")
    _chat_notebook(tmp, root)
    port, token = _free_port(), "nbft-browser-test"
    env = {**os.environ, "NBFT_RUNS_DIR": str(tmp / "runs"), "JUPYTER_CONFIG_DIR": str(tmp / "jupyter"),
           "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")}
    log = open(tmp / "lab.log", "w")
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
                raise RuntimeError(f"jupyterlab did not start: {(tmp / 'lab.log').read_text()[-3000:]}")
            time.sleep(0.5)
    yield url, token, tmp / "runs"
    server.terminate()
    try:
        server.wait(15)
    except subprocess.TimeoutExpired:
        server.kill()
    log.close()


PANEL = "Array.from(jupyterapp.shell.widgets('main')).find(w => w.sessionContext)"  # headless: nothing has focus
KERNEL_IDLE = (f"(() => {{ const w = window.jupyterapp && {PANEL};"
               " const k = w && w.sessionContext.session && w.sessionContext.session.kernel;"
               " return !!k && k.status === 'idle'; })()")


def test_notebook_runs_in_jupyterlab_and_its_widgets_render(lab):
    url, token, runs_dir = lab
    output_types = (f"(() => {{ const cells = {PANEL}.content.model.cells; const out = [];"
                    " for (let i = 0; i < cells.length; i++) { const o = cells.get(i).outputs;"
                    " for (let j = 0; o && j < o.length; j++) out.push(o.get(j).type); } return out; })()")
    with Browser() as b:
        b.navigate(f"{url}/lab/tree/{STAGE}.ipynb?reset&token={token}")  # reset: no tab of another test
        b.wait_for(KERNEL_IDLE, timeout=120)
        assert b.evaluate(WIDGETS) == 0  # nothing rendered before the notebook runs
        b.evaluate("jupyterapp.commands.execute('notebook:run-all-cells'); true")
        n = b.wait_for(WIDGETS, timeout=180)
        t0 = time.time()
        while not list(runs_dir.glob("*/metrics.json")) and time.time() - t0 < 180:
            time.sleep(1)  # the last cells record metrics and save artifacts after the dashboard
        b.wait_for(KERNEL_IDLE, timeout=60)
        types = b.evaluate(output_types)
        shown = b.evaluate("[...document.querySelectorAll('.widget-html')].map(e => e.innerText).join(' ')")
        b.evaluate("document.querySelector('.widget-dropdown').scrollIntoView(); true")
        b.screenshot("jupyterlab_01_data_prep.png")
    assert n >= 2 and "completion" in shown
    assert "error" not in types and types.count("display_data") >= 3, types
    recorded = [json.loads(p.read_text()) for p in runs_dir.glob("*/metrics.json")]
    assert recorded and recorded[0][STAGE]["n_train"] > 0  # the notebook ran to its last cell in the kernel


#: In the page: every length the last reply of each column takes, in order (a MutationObserver sees each redraw).
RECORD_REPLIES = """(() => { const box = document.querySelector('.nbft-chat'); window.nbftLengths = {left: [], right: []};
  const last = side => { const r = box.querySelectorAll('.nbft-chat-' + side + ' .nbft-chat-reply');
    return r.length ? r[r.length - 1].innerText.length : 0; };
  new MutationObserver(() => { for (const side of ['left', 'right']) { const seen = window.nbftLengths[side], n = last(side);
    if (seen[seen.length - 1] !== n) seen.push(n); } }).observe(box, {subtree: true, childList: true, characterData: true});
  return true; })()"""
SEND = """(() => { const input = document.querySelector('.nbft-chat-message input');
  input.value = 'Tell me <b>three</b> things.'; input.dispatchEvent(new Event('input', {bubbles: true}));
  input.dispatchEvent(new Event('change', {bubbles: true}));
  [...document.querySelectorAll('.nbft-chat button')].find(b => b.textContent.trim() === 'send').click(); return true; })()"""
ANSWERED = ("(() => { const s = document.querySelector('.nbft-chat-status'); const r = document.querySelectorAll("
            "'.nbft-chat-right .nbft-chat-reply'); return !!s && s.innerText.startsWith('02_sft/adapter:') && r.length"
            " === 1 && !r[0].innerText.includes('writing'); })()")


def test_the_chat_playground_streams_a_reply_and_a_second_model_answers_beside_it(lab):
    """A message typed and sent in JupyterLab: the first model's reply appears piece by piece (its length seen
    growing through many redraws, not once at the end), then the second model's, in the column beside it."""
    url, token, _ = lab
    with Browser() as b:
        b.navigate(f"{url}/lab/tree/chat.ipynb?reset&token={token}")
        b.wait_for(KERNEL_IDLE, timeout=120)
        b.evaluate("jupyterapp.commands.execute('notebook:run-all-cells'); true")
        b.wait_for("document.querySelectorAll('.nbft-chat button').length === 3", timeout=120)
        b.evaluate(RECORD_REPLIES)
        b.evaluate(SEND)
        b.wait_for(ANSWERED, timeout=120, every=0.2)
        lengths = b.evaluate("window.nbftLengths")
        panes = b.evaluate("['left', 'right'].map(s => { const e = document.querySelector('.nbft-chat-' + s);"
                           " const r = e.getBoundingClientRect(); return {text: e.innerText, x: r.left, y: r.top,"
                           " right: r.right}; })")
        b.screenshot("jupyterlab_chat.png")
    left, right = panes
    for side in ("left", "right"):  # each reply grew through many lengths while it was written
        assert len({n for n in lengths[side] if n > 0}) >= 5, lengths
    assert "Tell me <b>three</b> things." in left["text"] and "Tell me <b>three</b> things." in right["text"]
    assert left["text"].startswith("base") and right["text"].startswith("02_sft/adapter")
    assert right["x"] >= left["right"] - 1 and abs(right["y"] - left["y"]) < 2  # beside it, not below
