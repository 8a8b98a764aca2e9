"""Training wrappers on tiny-llama: LoRA SFT trains only the adapters and learns."""
import copy

import torch

from nbft import data, models, params, train


def test_lora_sft_trains_only_adapters(tiny, tmp_path):
    base, tok = tiny
    model = copy.deepcopy(base)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    p = params.SFTParams(model="tiny-llama", epochs=2.0, batch_size=4, lora_r=4, lora_alpha=8, max_length=96,
                         learning_rate=1e-2)
    prep = data.prepare(params.DataPrepParams(model="tiny-llama", n_examples=40), tok)
    res = train.sft(model, tok, prep.splits["train"], prep.splits["validation"], p, tmp_path,
                    peft_config=train.lora_config(p))
    tuned = res.trainer.model
    trainable, total = models.count_params(tuned)
    names = [n for n, p in tuned.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)
    assert 0 < trainable < total / 10
    # base weights untouched, adapters moved
    for n, p in tuned.named_parameters():
        key = n.replace("base_model.model.", "").replace(".base_layer", "")
        if "lora_" not in n and key in before:
            assert torch.equal(p, before[key]), n
    assert any(p.abs().sum() > 0 for n, p in tuned.named_parameters() if "lora_B" in n)
    losses = [r["loss"] for r in res.log_history if "loss" in r]
    assert len(losses) >= 4 and losses[-1] < losses[0]
    assert res.eval_loss is not None and res.eval_loss > 0 and res.tokens_per_second > 0
    assert not tuned.training


def test_lora_config_targets():
    p = params.SFTParams(lora_target="q_proj, v_proj")
    assert set(train.lora_config(p).target_modules) == {"q_proj", "v_proj"}
    assert train.lora_config(params.SFTParams()).target_modules == "all-linear"


def test_sft_config_follows_precision():
    cfg = train.sft_config(params.SFTParams(precision="fp32", device="cpu"), "/tmp/x")
    assert not cfg.bf16 and cfg.use_cpu and not cfg.activation_checkpointing and not cfg.gradient_checkpointing
    assert train.sft_config(params.SFTParams(precision="bf16", device="cpu"), "/tmp/x").bf16
