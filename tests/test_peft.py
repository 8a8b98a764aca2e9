"""Every row of the method table on tiny-llama: forward, backward, one optimizer step changes only the
trainable parameters, save, reload gives identical outputs, merge (where mergeable) gives the same logits."""
import copy

import pytest
import torch

from nbft import models, params, peft

P = params.PEFTParams(model="tiny-llama", lora_r=4, lora_alpha=8, num_virtual_tokens=4, adapter_bottleneck=8,
                      freeze_top_n=1)
TEXTS = ["The capital of France is Paris.", "Two plus two is four, said the teacher."]


def base_loader():
    return models.load_model("tiny-llama", "cpu")[0]


@pytest.fixture(scope="module")
def batch(tiny):
    _, tok = tiny
    tok.padding_side = "right"
    enc = tok(TEXTS, return_tensors="pt", padding=True)
    tok.padding_side = "left"
    enc["labels"] = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    return enc


RUNNABLE = [n for n, m in peft.METHODS.items() if not m.needs()]
MISSING = [n for n, m in peft.METHODS.items() if m.needs()]


@pytest.mark.parametrize("name", RUNNABLE)
def test_method_trains_saves_reloads_merges(name, tiny, batch, tmp_path):
    base, tok = tiny
    model = peft.prepare(name, copy.deepcopy(base), P)
    model.train()
    trainable = {n for n, t in model.named_parameters() if t.requires_grad}
    assert trainable, "nothing to train"
    n_train, n_total = models.count_params(model)
    assert 0 < n_train <= n_total
    before = {n: t.detach().clone() for n, t in model.named_parameters()}
    loss = model(**batch).loss
    assert torch.isfinite(loss)
    loss.backward()
    torch.optim.AdamW([t for t in model.parameters() if t.requires_grad], lr=1e-2).step()
    changed = {n for n, t in model.named_parameters() if not torch.equal(t, before[n])}
    assert changed and changed <= trainable, f"frozen tensors changed: {sorted(changed - trainable)[:3]}"

    model.eval()
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        logits = model(**inputs).logits
    folder = peft.save(model, tmp_path / name, name, tok, "tiny-llama")
    assert 0 < peft.method_mb(folder) < sum(f.stat().st_size for f in folder.iterdir()) / 2**20 or not hasattr(
        model, "peft_config")
    if hasattr(model, "peft_config"):  # an adapter folder is a model spec of its own (tokenizer, base record)
        assert models.folder_problem(folder) == "" and models.adapter_base(folder) == "tiny-llama"
    reloaded = peft.reload(name, base_loader, folder, P)
    with torch.no_grad():
        assert torch.allclose(reloaded(**inputs).logits, logits, atol=1e-5), "reload changed the outputs"

    if peft.METHODS[name].mergeable and hasattr(model, "peft_config"):
        merged, diff = peft.merge_check(model, tok, TEXTS)
        assert not hasattr(merged, "peft_config") and diff < 1e-3, diff


@pytest.mark.parametrize("name", MISSING or ["(none)"])
def test_methods_that_cannot_run_here_say_why(name, tiny):
    if name == "(none)":
        return  # everything runs on this machine (a GPU with bitsandbytes)
    with pytest.raises(RuntimeError, match=f"{name} needs .*(CUDA GPU|bitsandbytes)"):
        peft.prepare(name, copy.deepcopy(tiny[0]), P)


def test_at_least_twelve_methods_and_unknown_name():
    assert len(peft.METHODS) >= 13
    with pytest.raises(ValueError, match="did you mean 'lora'"):
        peft.prepare("lorra", None, P)


def test_learning_rate_rule_covers_every_family():
    for m in peft.METHODS.values():
        assert peft.learning_rate(m, P) > 0


def test_trunk_and_branches_scores_every_adapter_and_shows_each_ones_first_reply(tiny, tmp_path):
    """Two LoRA adapters on one base: a score per adapter (and none, and a mix) per task, and per task the reply of
    each to its first prompt — taken from the scoring pass, the same as generating it alone (fp32)."""
    from peft import LoraConfig, get_peft_model

    from nbft import data, evaluate

    model, tok = tiny
    folders = {}
    for i, name in enumerate(["A", "B"]):
        torch.manual_seed(i)  # random B matrices: each adapter changes the replies its own way
        m = get_peft_model(copy.deepcopy(model), LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
        m.save_pretrained(tmp_path / name)
        folders[name] = tmp_path / name
    splits = data.prepare(params.DataPrepParams(model="tiny-llama", n_examples=24), tok).splits
    tests = {"json_qa": splits["test"][:3], "other": splits["validation"][:3]}
    r = peft.trunk_and_branches(base_loader, tok, folders, tests, "fp32", 5, 4, [0.5, 0.5])
    assert list(r["scores"]) == ["A", "B", "base (adapters off)", "combined [0.5, 0.5]"]
    assert all(set(s) == set(tests) and all(0 <= v <= 1 for v in s.values()) for s in r["scores"].values())
    assert [row["task"] for row in r["samples"]] == list(tests)
    for row, recs in zip(r["samples"], tests.values()):
        assert list(row) == ["task", "prompt", "A", "B", "combined", "base"]
        for name in ("A", "B", "combined"):
            r["model"].set_adapter(name)
            assert row[name] == evaluate.generate(r["model"], tok, [recs[0]["prompt"]], 5, cache=False)[0]
        with r["model"].disable_adapter():
            assert row["base"] == evaluate.generate(r["model"], tok, [recs[0]["prompt"]], 5, cache=False)[0]
    assert len({row["A"] for row in r["samples"]} | {row["B"] for row in r["samples"]}) > 1


def test_max_logit_diff_runs_both_models_on_the_first_ones_device(tokenizer):
    """03's merged-copy check with ``device: cuda``: the copy reloaded from disk is on the CPU while the model is on
    the GPU. The copy and the inputs must follow the model. No GPU here: a model whose weights sit on the ``meta``
    device stands for "another device", and each side records where its inputs were."""
    import types

    seen = {}

    class Side(torch.nn.Module):
        def __init__(self, name, device, offset):
            super().__init__()
            self.name, self.offset = name, offset
            self.w = torch.nn.Parameter(torch.zeros(1, device=device))

        def forward(self, input_ids, attention_mask):
            seen[self.name] = (input_ids.device.type, self.w.device.type)
            return types.SimpleNamespace(logits=torch.full((*input_ids.shape, 3), self.offset))

    model, reloaded = Side("model", "meta", 0.0), Side("reloaded", "cpu", 0.25)
    diff = peft.max_logit_diff(model, reloaded, tokenizer, ["a short prompt", "a longer prompt than the first one"])
    assert seen == {"model": ("meta", "meta"), "reloaded": ("meta", "meta")}  # inputs and copy on the model's device
    assert diff == 0.25
