import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

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
