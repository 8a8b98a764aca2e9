"""Evaluation that runs a model: generation, perplexity, the training monitor's curves."""
import copy
import math

import pytest
import torch

from nbft import evaluate


def test_generate_keeps_order_and_is_deterministic(tiny):
    model, tok = tiny
    prompts = [tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False)
               for q in ["a much longer question about many different things", "hi", "what?"]]
    a = evaluate.generate(model, tok, prompts, max_new_tokens=5, batch_size=2)
    assert a == evaluate.generate(model, tok, prompts, max_new_tokens=5, batch_size=2)
    assert len(a) == 3 and all(isinstance(x, str) for x in a)


def test_perplexity_of_untrained_model_is_near_vocab_size(tiny):
    model, tok = tiny
    ppl = evaluate.perplexity(model, tok, ["The cat sat on the mat.", "A short text."])
    # an untrained model is close to uniform over its vocabulary
    assert math.isfinite(ppl) and len(tok) / 4 < ppl < len(tok) * 4


def test_training_monitor_draws_every_curve():
    from nbft import widgets

    rows = [{"step": i, "loss": 3.0 / i, "lr": 1e-3 * (10 - i), "tokens_per_s": 100.0 + i} for i in range(1, 6)]
    fig = widgets.plot_curves(rows, "t")
    assert [ax.get_ylabel() for ax in fig.axes] == ["train loss", "learning rate", "tokens / s"]
    assert all(len(ax.lines) == 1 for ax in fig.axes)


def test_evaluation_of_a_loaded_model_is_cached_in_the_run_and_a_changed_model_misses(tmp_path):
    """settings.eval_cache (kernel.setup): a loaded model's greedy replies and perplexity are computed once per run;
    the same model loaded again hits; trained, merged or otherwise changed weights miss."""
    from nbft import evaluate, models, settings, train

    tok = models.load_tokenizer("tiny-llama")
    prompts, texts = ["Hello there", "What is two plus two?"], ["Some text to score.", "And more text."]
    where = settings.Settings(eval_cache=tmp_path / "cache")
    settings.use(where)
    try:
        model, _ = models.load_model("tiny-llama", "cpu", tokenizer=tok)
        outs = evaluate.generate(model, tok, prompts, 6)
        ppl = evaluate.perplexity(model, tok, texts)
        assert (where.eval_hits, where.eval_misses) == (0, 2) and len(list((tmp_path / "cache").glob("*.json"))) == 2
        again, _ = models.load_model("tiny-llama", "cpu", tokenizer=tok)
        assert evaluate.generate(again, tok, prompts, 6) == outs and evaluate.perplexity(again, tok, texts) == ppl
        assert where.eval_hits == 2
        evaluate.generate(again, tok, prompts, 7)  # another setting: a miss
        assert where.eval_misses == 3
        assert evaluate.generate(again, tok, prompts, 7, cache=False) and where.eval_hits == 2  # a timing: never cached
        from nbft import distill

        distill.generation_speed(model, tok, prompts, 4, "fp32")  # twice, best of: both really generate
        assert where.eval_hits == 2
        with torch.no_grad():
            next(again.parameters())[0, 0] += 1.0  # changed in place: the fingerprint differs
        assert evaluate.model_key(again) != evaluate.model_key(model)
        evaluate.perplexity(again, tok, texts)
        assert where.eval_misses == 4
        train.finish(again)  # what a trained model goes through: no checksum, never looked up
        assert evaluate.model_key(again) is None
    finally:
        settings.use(settings.Settings())


def test_bf16_kv_cache_stores_bf16_and_leaves_the_replies_as_they_were(tiny, monkeypatch):
    """models.kv_cache: under bf16 autocast keys and values are kept in bf16 (what attention casts them to anyway), so
    greedy replies are those of transformers' own cache; other precisions and prompt learning get None."""
    from peft import PromptTuningConfig, get_peft_model

    from nbft import models

    model, tok = tiny
    assert models.kv_cache(model, "fp32") is None
    prompts = [tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False)
               for q in ["a much longer question about many different things", "hi", "what is it?"]]
    enc = tok(prompts[:1], return_tensors="pt", add_special_tokens=False)
    cache = models.kv_cache(model, "bf16")
    with torch.no_grad(), models.autocast(model, "bf16"):
        model(**enc, past_key_values=cache, use_cache=True)
    assert len(cache.layers) == model.config.num_hidden_layers
    assert {(layer.keys.dtype, layer.values.dtype) for layer in cache.layers} == {(torch.bfloat16, torch.bfloat16)}
    assert cache.get_seq_length() == enc["input_ids"].shape[1]
    ours = evaluate.generate(model, tok, prompts, max_new_tokens=8, batch_size=3, precision="bf16", cache=False)
    monkeypatch.setattr(models, "kv_cache", lambda m, p: None)
    assert evaluate.generate(model, tok, prompts, max_new_tokens=8, batch_size=3, precision="bf16", cache=False) == ours
    monkeypatch.undo()
    import copy

    prompted = get_peft_model(copy.deepcopy(model), PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    assert models.kv_cache(prompted, "bf16") is None


def test_continuation_logprobs_from_the_prompts_cache_equal_a_full_sequence_pass(tiny, full_sequence_loglik):
    """evaluate.continuation_logprobs (05's multiple choice, through knowledge.read_prompts): each batch's prompts
    prefilled once, every continuation read from a copy of their cache, equals the full-sequence log-likelihood of
    prompt + continuation, at every batch size (left padding and the cache's rows copied per continuation included);
    prefilled sees every prompt once, those without continuations too."""
    model, tok = tiny
    model = copy.deepcopy(model)
    torch.manual_seed(0)
    with torch.no_grad():  # an untrained tiny model is near uniform: noise makes the scores differ
        for w in model.parameters():
            w.add_(torch.randn_like(w) * 0.1)
    prompts = ["Q: what colour is the sky?\nA:", "Hi", "A much longer prompt, with several clauses, to pad the rest:",
               "x"]
    continuations = [[" blue", " green and yellow"], [], [" yes", " no", " a much longer reply here"], [" z"]]
    expected = [[full_sequence_loglik(model, tok, p, c) for c in cs] for p, cs in zip(prompts, continuations)]
    assert len({round(e, 3) for es in expected for e in es}) > 4
    for bs in (1, 2, 16):
        seen = []
        got = evaluate.continuation_logprobs(model, tok, prompts, continuations, batch_size=bs,
                                             prefilled=lambda batch, ids, mask, cache: seen.extend(batch))
        assert sorted(seen) == [0, 1, 2, 3] and [len(g) for g in got] == [2, 0, 3, 1]
        for g, e in zip(got, expected):
            assert g == pytest.approx(e, abs=1e-4)
    # prefill + continue_from with the rest of each prompt left-padded after a shared prefix (evaluate.next_word_probs):
    # the next-token logits equal a full pass's
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in ["Label: spam", "Label: ham and eggs"]]
    n = 2
    cache = evaluate.prefill(model, torch.tensor([ids[0][:n]]), torch.ones(1, n, dtype=torch.long))
    cache.batch_repeat_interleave(2)
    rest, mask = evaluate.padded([x[n:] for x in ids], tok.pad_token_id, "cpu", left=True)
    last = evaluate.continue_from(model, cache, torch.ones(2, n, dtype=torch.long), rest, mask, logits_to_keep=1)
    with torch.no_grad():
        for row, x in enumerate(ids):
            assert torch.allclose(last[row, -1], model(torch.tensor([x])).logits[0, -1], atol=1e-4)
    with pytest.raises(ValueError, match="continuation 0 of prompt 0 is empty"):
        evaluate.continuation_logprobs(model, tok, ["a"], [[""]])
