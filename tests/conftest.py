import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("PYTEST_XDIST_WORKER"):  # make test: workers share the cores (before anything imports torch)
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1)
                                                      // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))))

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def root():
    return ROOT


@pytest.fixture(scope="session")
def tiny():
    """(model, tokenizer) of tiny-llama, loaded once."""
    from nbft import models

    model, tok, _ = models.load("tiny-llama", device="cpu")
    return model, tok


@pytest.fixture(scope="session")
def tokenizer(tiny):
    return tiny[1]


@pytest.fixture()
def runs_dir(tmp_path, monkeypatch):
    d = tmp_path / "runs"
    monkeypatch.setenv("NBFT_RUNS_DIR", str(d))
    return d


@pytest.fixture(scope="session")
def full_sequence_loglik():
    """The plain way to score a continuation: prompt + continuation in one forward pass, no cache; returns the
    continuation's summed log-probability (what evaluate's cached scoring must equal)."""
    import torch

    def loglik(model, tok, prompt: str, continuation: str) -> float:
        p = tok(prompt, add_special_tokens=False)["input_ids"]
        c = tok(continuation, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([p + c])).logits[0].float()
        lp = torch.log_softmax(logits[len(p) - 1:len(p) + len(c) - 1], -1)
        return float(lp[torch.arange(len(c)), torch.tensor(c)].sum())

    return loglik


@pytest.fixture(scope="session")
def nbft_measured():
    """Run ``nbft ARGS`` in its own process: (exit code, stderr, wall seconds, peak resident MB of that process).
    The peak is the child's own (VmHWM from /proc at its exit): getrusage's ru_maxrss would also count this test
    process's peak, which Linux carries over the fork and exec that start the child."""
    import subprocess
    import sys
    import time

    code = ("import re, sys\nfrom nbft import cli\nrc = cli.main(sys.argv[1:])\nstatus = open('/proc/self/status').read()\n"
            "print('peak_kb', re.search(r'VmHWM:\\s*(\\d+)', status).group(1), file=sys.stderr)\nsys.exit(rc)")

    def run(args: list[str], env: dict, timeout: float = 120):
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout,
                             cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1", **env})
        seconds = time.perf_counter() - t0
        peak_mb = int(out.stderr.split("peak_kb")[1].split()[0]) / 1024 if "peak_kb" in out.stderr else float("nan")
        return out.returncode, out.stderr.split("peak_kb")[0], seconds, peak_mb

    return run
