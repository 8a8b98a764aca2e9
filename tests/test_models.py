"""Models: built-in specs resolve offline, unknown specs say what was tried."""
import json

import pytest
import torch

from nbft import models


def test_tiny_llama_loads_ready_for_chat(tiny):
    model, tok = tiny
    assert model.config.num_hidden_layers == 2
    assert tok.pad_token is not None and tok.padding_side == "left"
    assert "<|im_start|>assistant" in tok.apply_chat_template([{"role": "user", "content": "hi"}],
                                                             add_generation_prompt=True, tokenize=False)
    assert not model.training


def test_tiny_llama_is_deterministic(tmp_path, monkeypatch):
    monkeypatch.setenv("NBFT_CACHE", str(tmp_path))
    a = models.resolve("tiny-llama")
    assert a.sha256 == json.loads((models.cache_dir() / "tiny-llama" / models.SOURCE_FILE).read_text())["sha256"]
    monkeypatch.setenv("NBFT_CACHE", str(tmp_path / "other"))
    assert models.resolve("tiny-llama").sha256 == a.sha256


def test_unknown_spec_lists_what_was_tried():
    with pytest.raises(models.ModelError) as e:
        models.resolve("no-such-model")
    msg = str(e.value)
    assert "cannot resolve model 'no-such-model'" in msg
    assert "built-in names (smollm2-135m-instruct, tiny-llama)" in msg
    assert "local folder" in msg and "not found" in msg and "hub id" in msg


def test_unknown_hub_id_offline_is_explained(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(models.ModelError, match="hub id 'nobody/nothing'"):
        models.resolve("nobody/nothing")


def test_folder_without_config(tmp_path):
    with pytest.raises(models.ModelError, match="has no config.json"):
        models.resolve(str(tmp_path))


def test_local_folder_round_trip(tiny, tmp_path):
    model, tok = tiny
    models.save(model, tok, tmp_path / "m")
    assert (tmp_path / "m" / "model.safetensors").is_file()
    src = models.resolve(str(tmp_path / "m"))
    assert src.kind == "folder" and len(src.sha256) == 64
    m2, tok2, _ = models.load(str(tmp_path / "m"), device="cpu")
    ids = tok("hello world", return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(model(**ids).logits, m2(**ids).logits)


def test_count_params(tiny):
    model, _ = tiny
    trainable, total = models.count_params(model)
    assert trainable == total == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("asked, device, expected", [("fp32", "cpu", "fp32"), ("bf16", "cpu", "bf16")])
def test_precision_choice(asked, device, expected):
    assert models.pick_precision(asked, device) == expected


def test_auto_precision_follows_cpu():
    assert models.pick_precision("auto", "cpu") == ("bf16" if models.cpu_supports_bf16() else "fp32")
