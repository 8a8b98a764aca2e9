"""Training wrappers on tiny-llama: LoRA SFT trains only the adapters and learns."""
import copy
import json
import time
from pathlib import Path

import pytest
import torch

from nbft import checkpoints, data, evaluate, files, models, params, settings, train


def test_lora_sft_trains_only_adapters(tiny, tmp_path):
    base, tok = tiny
    model = copy.deepcopy(base)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    p = params.SFTParams(model="tiny-llama", epochs=2.0, batch_size=4, lora_r=4, lora_alpha=8, max_length=96,
                         learning_rate=1e-2, precision="fp32")
    prep = data.prepare(params.DataPrepParams(model="tiny-llama", n_examples=40), tok)
    res = train.sft(model, tok, prep.splits["train"], prep.splits["validation"], p, learning_rate=p.learning_rate,
                    peft_config=train.lora_config(p))
    tuned = res.model
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
    cfg = train.sft_config(params.SFTParams(precision="fp32", device="cpu"), "/tmp/x", 1e-3)
    assert not cfg.bf16 and cfg.use_cpu and not cfg.activation_checkpointing and not cfg.gradient_checkpointing
    assert train.sft_config(params.SFTParams(precision="bf16", device="cpu"), "/tmp/x", 1e-3).bf16


def test_padding_free_batches_give_the_padded_loss(tiny):
    """TRL's padding-free batches (examples back to back in one row, position ids restarting) give the padded
    batch's loss exactly with sdpa on CPU: transformers masks across examples from the position ids."""
    from trl import SFTTrainer

    base, tok = tiny
    prep = data.prepare(params.DataPrepParams(model="tiny-llama", n_examples=40), tok)
    records = prep.splits["train"][:6]
    assert len({len(r["prompt"] + r["completion"]) for r in records}) > 1  # lengths differ: the padded batch pads
    losses, shapes = {}, {}
    for padding_free in (False, True):
        p = params.SFTParams(model="tiny-llama", batch_size=6, precision="fp32")
        with train.scratch_dir() as tmp:
            trainer = SFTTrainer(model=copy.deepcopy(base), args=train.sft_config(
                p, tmp, 1e-3, padding_free=padding_free, max_length=None if padding_free else p.max_length),
                                 train_dataset=train.to_dataset(records), processing_class=tok)
            batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(records))])
            shapes[padding_free] = tuple(batch["input_ids"].shape)
            with torch.no_grad():
                losses[padding_free] = float(trainer.compute_loss(trainer.model, batch))
    assert shapes[True][0] == 1 and shapes[False][0] == 6 and shapes[True][1] < 6 * shapes[False][1]
    assert losses[True] == pytest.approx(losses[False], rel=1e-5)
    assert train.padding_free_ok(base)
    texts = [r["prompt"] + r["completion"] for r in records]
    longest = max(len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts)
    assert train.fits(tok, texts, longest + 1) and not train.fits(tok, texts, longest)
    # opt-in, and refused where it would not be exact
    with pytest.raises(ValueError, match="longer than max_length"):
        train.sft(copy.deepcopy(base), tok, records, [], params.SFTParams(model="tiny-llama", max_length=longest),
                  learning_rate=1e-3, padding_free=True, max_steps=1)


def test_lora_at_bf16_holds_the_frozen_base_in_bf16_and_the_adapters_in_fp32(tiny):
    base, tok = tiny
    records = data.prepare(params.DataPrepParams(model="tiny-llama", n_examples=40), tok).splits["train"][:8]
    p = params.SFTParams(model="tiny-llama", batch_size=4, precision="bf16", lora_r=4)
    res = train.sft(copy.deepcopy(base), tok, records, [], p, learning_rate=1e-3, peft_config=train.lora_config(p),
                    max_steps=2)
    dtypes = {("lora_" in n, w.requires_grad, w.dtype) for n, w in res.model.named_parameters()}
    assert dtypes == {(True, True, torch.float32), (False, False, torch.bfloat16)}
    assert evaluate.generate(res.model, tok, [records[0]["prompt"]], 4, precision="bf16")  # runs as it is
    # fp32 precision, or no adapter (full, freeze): the weights stay fp32
    fp32 = params.SFTParams(model="tiny-llama", precision="fp32")
    assert next(train.bf16_frozen_base(copy.deepcopy(base), fp32, train.lora_config(fp32)).parameters()).dtype == torch.float32
    assert next(train.bf16_frozen_base(copy.deepcopy(base), p, None).parameters()).dtype == torch.float32


def test_padding_free_is_off_for_prompt_learning(tiny):
    from peft import PrefixTuningConfig, get_peft_model

    base, _ = tiny
    cfg = PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4)
    assert not train.padding_free_ok(base, cfg)
    assert not train.padding_free_ok(get_peft_model(copy.deepcopy(base), cfg))
    assert train.padding_free_ok(base, train.lora_config(params.SFTParams()))


def _block_params(model, i):
    return sum(p.numel() for p in train.blocks(model)[i].parameters())


@pytest.mark.parametrize("scope", train.SCOPES)
def test_scope_trains_exactly_what_it_says(tiny, scope):
    """Trainable parameter counts per scope, and which tensors they are."""
    base, _ = tiny
    model = copy.deepcopy(base)
    p = params.SFTParams(model="tiny-llama", freeze_top_n=1, lora_r=4)
    if scope == "lora":
        from peft import get_peft_model

        model = get_peft_model(train.apply_scope(model, "full"), train.lora_config(p))
        names = [n for n, q in model.named_parameters() if q.requires_grad]
        assert names and all("lora_A" in n or "lora_B" in n for n in names)
        # all-linear: 7 projections per block, A (r x in) + B (out x r)
        cfg = base.config
        per_block = 0
        for fin, fout in [(cfg.hidden_size, cfg.num_attention_heads * 16), (cfg.hidden_size, cfg.num_key_value_heads * 16),
                          (cfg.hidden_size, cfg.num_key_value_heads * 16), (cfg.num_attention_heads * 16, cfg.hidden_size),
                          (cfg.hidden_size, cfg.intermediate_size), (cfg.hidden_size, cfg.intermediate_size),
                          (cfg.intermediate_size, cfg.hidden_size)]:
            per_block += 4 * (fin + fout)
        assert models.count_params(model)[0] == per_block * cfg.num_hidden_layers
        return
    train.apply_scope(model, scope, freeze_top_n=p.freeze_top_n)
    trainable, total = models.count_params(model)
    if scope == "full":
        assert trainable == total
    else:  # top block + final norm, nothing else
        expected = _block_params(model, -1) + model.model.norm.weight.numel()
        assert trainable == expected
        assert not any(q.requires_grad for q in train.blocks(model)[0].parameters())
        assert not model.model.embed_tokens.weight.requires_grad


def test_freeze_with_head_and_bad_n(tiny):
    model = copy.deepcopy(tiny[0])
    train.apply_scope(model, "freeze", freeze_top_n=0, freeze_train_head=True)
    assert models.count_params(model)[0] == model.get_output_embeddings().weight.numel()
    with pytest.raises(ValueError, match="must be 0 or more"):
        train.apply_scope(model, "freeze", freeze_top_n=-1)
    train.apply_scope(model, "freeze", freeze_top_n=5)  # deeper than the model: every block trains
    assert all(q.requires_grad for q in train.blocks(model).parameters())
    assert not model.model.embed_tokens.weight.requires_grad
    with pytest.raises(ValueError, match="scope"):
        train.apply_scope(model, "half")


def test_finetune_full_and_freeze_change_only_trainable(tiny, tmp_path):
    base, tok = tiny
    prep = data.prepare(params.DataPrepParams(model="tiny-llama", n_examples=24), tok)
    p = params.SFTParams(model="tiny-llama", epochs=1.0, batch_size=8, freeze_top_n=1, max_length=96, precision="fp32",
                         freeze_learning_rate=1e-2)
    model = copy.deepcopy(base)
    before = {n: q.detach().clone() for n, q in model.named_parameters()}
    res = train.finetune(model, tok, prep.splits["train"], [], p, scope="freeze")
    changed = {n for n, q in res.model.named_parameters() if not torch.equal(q, before[n])}
    assert changed and all(n.startswith("model.layers.1.") or n == "model.norm.weight" for n in changed)


def test_continued_pretraining_lowers_domain_loss(tiny, tmp_path):
    from nbft import corpora, evaluate

    base, tok = tiny
    model = copy.deepcopy(base)
    docs = [{"text": t} for t in corpora.domain_corpus(12, 0)]
    p = params.SFTParams(model="tiny-llama", epochs=3.0, batch_size=4, max_length=128, precision="fp32",
                         full_learning_rate=3e-3)
    before = evaluate.perplexity(model, tok, [d["text"] for d in docs])
    res = train.finetune(model, tok, docs, [], p, scope="full", mode="continued_pretraining")
    assert evaluate.perplexity(res.model, tok, [d["text"] for d in docs]) < before


def test_save_tuned_keeps_the_adapter_which_loads_merged_on_demand(tiny, tmp_path, monkeypatch):
    """A run keeps adapters, not merged copies (issue 16); the adapter folder is a model spec: models.resolve merges
    it into its base once, into the cache (not the run folder), and a chain (an adapter on an adapter) resolves."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    monkeypatch.setenv("NBFT_CACHE", str(tmp_path / "cache"))
    base, tok = tiny
    p = params.SFTParams(lora_r=4)
    model = get_peft_model(copy.deepcopy(base), train.lora_config(p))
    for n, q in model.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(q, std=0.02)
    saved = train.save_tuned(model, tok, tmp_path / "run", base=str(models.resolve("tiny-llama").path))
    assert set(saved) == {"adapter"} and not (tmp_path / "run" / "merged").exists()
    assert train.saved_model(tmp_path / "run") == saved["adapter"]
    src = models.resolve(str(saved["adapter"]))
    assert src.kind == "adapter" and Path(src.path).is_relative_to(tmp_path / "cache")
    merged = AutoModelForCausalLM.from_pretrained(src.path)
    loaded, _ = models.load_model(str(saved["adapter"]), "cpu", tokenizer=tok)
    ids = tok("hello there", return_tensors="pt")
    model.eval()
    with torch.no_grad():
        want = model(**ids).logits
        assert torch.allclose(want, merged(**ids).logits, atol=1e-4)
        assert torch.allclose(want, loaded(**ids).logits, atol=1e-4)
    assert models.resolve(str(saved["adapter"])).path == src.path  # built once
    # an adapter trained on the merged adapter: its base is the first adapter folder, written relative to it
    second = get_peft_model(loaded, train.lora_config(p))
    for n, q in second.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(q, std=0.02)
    folder = models.save_adapter(second, tok, tmp_path / "run" / "second", str(saved["adapter"]))
    assert not Path(json.loads((folder / models.ADAPTER_BASE_FILE).read_text())["base"]).is_absolute()
    chained, _ = models.load_model(str(folder), "cpu", tokenizer=tok)
    second.eval()
    with torch.no_grad():
        assert torch.allclose(second(**ids).logits, chained(**ids).logits, atol=1e-4)
    # with merged=True a standalone copy too
    assert (train.save_tuned(model, tok, tmp_path / "run2", base="tiny-llama", merged=True)["merged"]
            / "model.safetensors").is_file()


def test_an_adapter_folder_without_its_base_record_is_named(tiny, tmp_path):
    from peft import get_peft_model

    base, tok = tiny
    model = get_peft_model(copy.deepcopy(base), train.lora_config(params.SFTParams(lora_r=4)))
    model.save_pretrained(tmp_path / "a")
    tok.save_pretrained(tmp_path / "a")
    assert "nbft_base.json" in models.folder_problem(tmp_path / "a")
    with pytest.raises(models.ModelError, match="nbft_base.json"):
        models.resolve(str(tmp_path / "a"))


def test_trained_model_is_not_left_under_autocast(tiny):
    """accelerate wraps forward in bf16 autocast for mixed precision; sft() must take that off."""
    base, tok = tiny
    model = copy.deepcopy(base)
    prep = data.prepare(params.DataPrepParams(model="tiny-llama", n_examples=24), tok)
    p = params.SFTParams(model="tiny-llama", precision="bf16", device="cpu", max_length=64)
    res = train.sft(model, tok, prep.splits["train"][:8], [], p, learning_rate=1e-3, max_steps=1)
    assert "_original_forward" not in res.model.__dict__
    ids = tok("hello world", return_tensors="pt")
    with torch.no_grad():
        out = res.model(**ids).logits
        ref = torch.nn.functional.linear(res.model.model(**ids).last_hidden_state, res.model.lm_head.weight)
    assert out.dtype == torch.float32 and torch.allclose(out, ref, atol=1e-5)


def test_lora_trained_in_bf16_merges_exactly_in_fp32(tiny):
    """After bf16 training no submodule keeps an autocast forward: merged == adapter in fp32."""
    from nbft import peft

    base, tok = tiny
    prep = data.prepare(params.DataPrepParams(model="tiny-llama", n_examples=24), tok)
    p = params.PEFTParams(model="tiny-llama", lora_r=4, lora_alpha=8, precision="bf16", device="cpu")
    model = peft.prepare("lora", copy.deepcopy(base), p)
    res = train.sft(model, tok, prep.splits["train"][:16], [], p, max_steps=3, learning_rate=1e-2)
    assert not any("forward" in m.__dict__ for m in res.model.modules())
    _, diff = peft.merge_check(res.model, tok, ["hello there friend", "the capital of France"])
    assert 0 < diff < 1e-4  # the adapter changed the model, and the merge reproduces it


# ---------------------------------------------------------------- issue 15: checkpoints in the run folder

def test_checkpoints_resume_a_finished_call_and_skip_what_cannot_resume(tiny, tmp_path):
    """In a run folder a trainer checkpoints every save_steps (the last one light: no optimizer state); the same
    call made again (a resumed stage) loads its finished checkpoint instead of training, with the same weights,
    log and RNG state afterwards. An incomplete checkpoint (no trainer_state.json: killed while saving) is removed."""
    base, tok = tiny
    p = params.SFTParams(model="tiny-llama", epochs=1.0, batch_size=8, lora_r=4, lora_alpha=8, max_length=96,
                         precision="fp32", save_steps=2)
    prep = data.prepare(params.DataPrepParams(model="tiny-llama", n_examples=40), tok)
    assert train.trainer_args(p, tmp_path)["save_strategy"] == "no"  # no run folder: no checkpoints
    folder = tmp_path / "checkpoints" / "02_sft"
    try:
        settings.use(settings.Settings(checkpoints=folder))
        assert train.trainer_args(p, tmp_path)["save_total_limit"] == 1
        first = train.sft(copy.deepcopy(base), tok, prep.splits["train"], [], p, learning_rate=1e-2,
                          peft_config=train.lora_config(p))
        (slot,) = folder.iterdir()
        final = checkpoints.last_checkpoint(slot)
        assert final.name == f"checkpoint-{first.steps}" and not (final / "optimizer.pt").exists()
        assert (final / "rng_state.pth").is_file()
        (slot / "checkpoint-99").mkdir()  # a save cut short
        rng_after_first = torch.get_rng_state()
        torch.manual_seed(123)  # whatever happened in between
        settings.use(settings.Settings(checkpoints=folder))  # the stage runs again
        again = train.sft(copy.deepcopy(base), tok, prep.splits["train"], [], p, learning_rate=1e-2,
                          peft_config=train.lora_config(p))
        assert not (slot / "checkpoint-99").exists() and again.steps == first.steps
        assert torch.equal(torch.get_rng_state(), rng_after_first)
        a, b = dict(first.model.named_parameters()), dict(again.model.named_parameters())
        assert all(torch.equal(a[n], b[n]) for n in a if "lora_" in n)
        assert [r["loss"] for r in again.log_history if "loss" in r] == [r["loss"] for r in first.log_history if "loss" in r]
    finally:
        settings.use(settings.Settings())


def test_prompt_encoders_are_not_resumable():
    from peft import LoraConfig, PrefixTuningConfig, PromptEncoderConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    def peft_model(cfg):
        m = LlamaForCausalLM(LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, vocab_size=64))
        return get_peft_model(m, cfg)

    assert checkpoints.resumable(peft_model(LoraConfig(r=2, task_type="CAUSAL_LM")))
    assert not checkpoints.resumable(peft_model(PromptEncoderConfig(task_type="CAUSAL_LM", num_virtual_tokens=2)))
    assert not checkpoints.resumable(peft_model(PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=2,
                                                             prefix_projection=True)))
    assert checkpoints.resumable(torch.nn.Linear(2, 2))


def test_a_resumed_call_counts_the_training_seconds_before_the_resume(tiny, tmp_path):
    """Each checkpoint records the training seconds up to it; a call that resumes from it (or loads it finished)
    adds them, so tokens per second covers all the tokens and all the time. A checkpoint without the record: the
    result says where it resumed and gives no tokens per second."""
    from transformers import TrainerCallback

    class StopAt2(TrainerCallback):  # a crash right after the checkpoint at step 2
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 2:
                control.should_training_stop = True

    base, tok = tiny
    p = params.SFTParams(model="tiny-llama", epochs=1.0, batch_size=8, lora_r=4, lora_alpha=8, max_length=96,
                         precision="fp32", save_steps=2)
    prep = data.prepare(params.DataPrepParams(model="tiny-llama", n_examples=40), tok)
    folder = tmp_path / "checkpoints" / "02_sft"

    def call(callbacks=()):
        settings.use(settings.Settings(checkpoints=folder))  # the stage runs (again)
        return train.sft(copy.deepcopy(base), tok, prep.splits["train"], [], p, learning_rate=1e-2,
                         peft_config=train.lora_config(p), callbacks=callbacks)

    try:
        cut = call([StopAt2()])
        (slot,) = folder.iterdir()
        at2 = checkpoints.last_checkpoint(slot)
        assert at2.name == "checkpoint-2" and 0 < checkpoints.checkpoint_seconds(at2) <= cut.seconds
        files.write_json(at2 / checkpoints.CLOCK_FILE, {"seconds": 1000.0, "step": 2})  # a long first part
        t0 = time.perf_counter()
        resumed = call()
        wall = time.perf_counter() - t0
        assert resumed.steps > 2 and resumed.resumed_from_step is None
        assert 1000 < resumed.seconds < 1000 + wall
        assert resumed.tokens_per_second == pytest.approx(resumed.train_tokens / resumed.seconds)
        final = checkpoints.last_checkpoint(slot)
        assert final.name == f"checkpoint-{resumed.steps}" and checkpoints.checkpoint_seconds(final) >= 1000
        loaded = call()  # finished: loaded, not trained; its time is the training's
        assert loaded.seconds == pytest.approx(checkpoints.checkpoint_seconds(final)) and loaded.train_tokens == resumed.train_tokens
        (final / checkpoints.CLOCK_FILE).unlink()  # a checkpoint that did not record its time
        blind = call()
        assert blind.resumed_from_step == resumed.steps and blind.tokens_per_second is None
    finally:
        settings.use(settings.Settings())
