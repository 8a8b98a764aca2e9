"""Evaluation that runs a model: generation, perplexity, the training monitor's curves."""
import math

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
