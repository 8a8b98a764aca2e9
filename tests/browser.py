"""Headless Chromium for the browser tests, driven over the DevTools protocol (no extra driver).

``chromium()`` finds Debian's ``chromium`` or installs it (apt-get, as root or with sudo);
``Browser`` starts it with the flags CI needs and a fresh profile, opens one page and gives
``navigate``, ``evaluate``, ``wait_for``, ``offline`` and ``screenshot``. Every request the page
makes is kept in ``requests`` (so a test can assert that nothing went to the network).
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", "--window-size=1280,1600"]
ARTIFACTS = Path(os.environ.get("NBFT_TEST_ARTIFACTS", Path(__file__).resolve().parents[1] / "test-artifacts"))


def chromium() -> str:
    """Path of a Chromium binary; installs Debian's ``chromium`` package when there is none."""
    for name in ("chromium", "chromium-browser"):
        if shutil.which(name):
            return shutil.which(name)
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = sudo + ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]
    if subprocess.run(install, env=env, capture_output=True).returncode != 0:
        subprocess.run(sudo + ["apt-get", "update"], env=env, capture_output=True, check=True)
        r = subprocess.run(install, env=env, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"could not install chromium with apt-get: {r.stderr[-2000:]}")
    path = shutil.which("chromium")
    if not path:
        raise RuntimeError("apt-get installed chromium but no `chromium` binary is on PATH")
    return path


class Browser:
    def __init__(self, extra_flags=()):
        import websocket  # websocket-client, a Jupyter dependency

        self.profile = tempfile.mkdtemp(prefix="nbft-chromium-")
        self.proc = subprocess.Popen([chromium(), *FLAGS, *extra_flags, f"--user-data-dir={self.profile}",
                                      "--remote-debugging-port=0", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        port = self._devtools_port()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            page = next(t for t in json.load(r) if t["type"] == "page")
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=60, suppress_origin=True)
        self.next_id = 0
        self.requests: list[str] = []
        self.console: list[str] = []
        for domain in ("Page", "Runtime", "Network"):
            self.send(f"{domain}.enable")

    def _devtools_port(self, timeout=30) -> int:
        port_file = Path(self.profile) / "DevToolsActivePort"
        t0 = time.time()
        while time.time() - t0 < timeout:
            if port_file.exists() and port_file.read_text().strip():
                return int(port_file.read_text().split()[0])
            if self.proc.poll() is not None:
                raise RuntimeError(f"chromium exited: {self.proc.stderr.read()[-2000:]}")
            time.sleep(0.1)
        raise TimeoutError("chromium did not open its DevTools port")

    def _event(self, msg):
        method = msg.get("method", "")
        if method == "Network.requestWillBeSent":
            self.requests.append(msg["params"]["request"]["url"])
        elif method == "Runtime.consoleAPICalled":
            self.console.append(" ".join(str(a.get("value", a.get("description", ""))) for a in msg["params"]["args"]))
        elif method == "Runtime.exceptionThrown":
            self.console.append("exception: " + json.dumps(msg["params"]["exceptionDetails"])[:500])

    def send(self, method, **params):
        self.next_id += 1
        my_id = self.next_id
        self.ws.send(json.dumps({"id": my_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == my_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self._event(msg)

    def evaluate(self, expression: str):
        r = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expression[:80]}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def navigate(self, url: str):
        self.send("Page.navigate", url=url)

    def offline(self):
        """Cut the page off the network (DevTools network emulation), on top of any flags."""
        self.send("Network.emulateNetworkConditions", offline=True, latency=0, downloadThroughput=-1,
                  uploadThroughput=-1)

    def wait_for(self, expression: str, timeout: float = 60, every: float = 0.5):
        """Poll a JavaScript expression until it is truthy; returns its value (TimeoutError otherwise)."""
        t0 = time.time()
        while time.time() - t0 < timeout:
            try:
                v = self.evaluate(expression)
            except RuntimeError:
                v = None
            if v:
                return v
            time.sleep(every)
        raise TimeoutError(f"waited {timeout:.0f} s for {expression!r}; console: {self.console[-10:]}")

    def screenshot(self, name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / name
        data = self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self):
        try:
            self.ws.close()
        finally:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
