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
    """Two fresh caches build tiny-llama with the same weights (the SmolLM2 folder its tokenizer comes from is the
    shared one: converting the GGUF twice would only test the conversion, at ~15 s each)."""
    smollm2 = models.ensure_builtin(models.DEFAULT_MODEL)
    for cache in (tmp_path / "one", tmp_path / "other"):
        cache.mkdir()
        (cache / models.DEFAULT_MODEL).symlink_to(smollm2, target_is_directory=True)
    monkeypatch.setenv("NBFT_CACHE", str(tmp_path / "one"))
    a = models.resolve("tiny-llama")
    assert a.sha256 == json.loads((models.cache_dir() / "tiny-llama" / models.SOURCE_FILE).read_text())["sha256"]
    monkeypatch.setenv("NBFT_CACHE", str(tmp_path / "other"))
    assert models.resolve("tiny-llama").sha256 == a.sha256
    assert not (tmp_path / "one" / "tiny-llama").samefile(tmp_path / "other" / "tiny-llama")  # built twice


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


# ---------------------------------------------------------------- review fixes: model folders, offline mode

@pytest.mark.parametrize("files, problem", [
    ({"tokenizer.json": "{}"}, ""),
    ({"tokenizer_config.json": "{}", "tokenizer.model": "x"}, ""),
    ({"tokenizer_config.json": "{}", "vocab.json": "{}", "merges.txt": ""}, ""),
    ({"tokenizer_config.json": "{}"}, "no tokenizer"),  # a config names a tokenizer; it is not one
    ({"special_tokens_map.json": "{}", "vocab.json": "{}"}, "no tokenizer"),
])
def test_a_folder_has_a_tokenizer_only_with_one_that_loads(tmp_path, files, problem):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"")
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    got = models.folder_problem(tmp_path)
    assert (problem in got) if problem else got == "", got


@pytest.mark.parametrize("weights, ok", [
    (["model.safetensors"], True), (["model-00001-of-00002.safetensors", "model.safetensors.index.json"], True),
    (["pytorch_model.bin"], True), (["pytorch_model-00001-of-00002.bin"], True),
    (["model.safetensors.index.json"], False),  # an index without its shards is no weights
])
def test_a_folder_has_weights_only_with_files_load_model_loads(tmp_path, weights, ok):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "tokenizer.json").write_text("{}")
    for name in weights:
        (tmp_path / name).write_bytes(b"")
    assert (models.folder_problem(tmp_path) == "") is ok


def test_a_pytorch_bin_folder_loads(tiny, tmp_path):
    """pytorch_model.bin is accepted as weights because load_model loads it."""
    model, tok = tiny
    model.config.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    assert models.folder_problem(tmp_path) == ""
    again, _ = models.load_model(str(tmp_path), "cpu", tokenizer=tok)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


def test_one_offline_test_shared_by_models_and_runs(monkeypatch):
    from huggingface_hub import constants

    from nbft import runs

    assert not hasattr(runs, "hub_offline") and not hasattr(models, "_hub_offline")
    assert models.hub_offline() is bool(constants.HF_HUB_OFFLINE)
    monkeypatch.setitem(__import__("sys").modules, "huggingface_hub", None)  # no package: the variable decides
    for value, offline in (("on", True), ("1", True), ("TRUE", True), ("yes", True), ("0", False), ("off", False)):
        monkeypatch.setenv("HF_HUB_OFFLINE", value)
        assert models.hub_offline() is offline, value


def test_cached_build_keeps_the_newest_and_every_entry_used_lately(tmp_path, monkeypatch):
    """Eviction never takes a folder another process may be about to load: the `keep` newest stay, and so does
    every entry used within the grace period; only older ones beyond `keep` go."""
    import os
    import time

    monkeypatch.setenv("NBFT_CACHE", str(tmp_path))

    def build(folder):
        (folder / models.SOURCE_FILE).write_text("{}")

    made = [models.cached_build("merged", f"k{i}", build, keep=2, grace_s=3600) for i in range(4)]
    assert all(d.is_dir() for d in made)  # all four used just now: none evicted although keep is 2
    old = time.time() - 7200
    for d in made[:3]:
        os.utime(d, (old, old))
    newest = models.cached_build("merged", "k4", build, keep=2, grace_s=3600)
    # the two newest (k4, k3) stay; k0-k2, unused for two hours, go
    assert sorted(d.name for d in newest.parent.iterdir()) == sorted([newest.name, made[3].name])
