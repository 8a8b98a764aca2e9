"""Evaluation: task checks, scoring, generation, perplexity."""
import math

import pytest

from nbft import evaluate

GOOD = '{"topic": "math", "answer": "4"}'


@pytest.mark.parametrize("output, ok", [
    (GOOD, True),
    ('  {"answer": "Paris", "topic": "geography"} ', True),
    ('{"topic": "math", "answer": "4"} extra', False),
    ('{"topic": "cooking", "answer": "4"}', False),
    ('{"topic": "math", "answer": ""}', False),
    ('{"topic": "math", "answer": "4", "note": "x"}', False),
    ('{"topic": "math"}', False),
    ("The answer is 4.", False),
    ("[1, 2]", False),
])
def test_json_answer_check(output, ok):
    assert evaluate.check_json_answer(output) is ok


@pytest.mark.parametrize("check, output, ref, ok", [
    ("exact", "The Paris.", "paris", True),
    ("exact", "Paris, France", "Paris", False),
    ("contains", "It is Paris, France", "Paris", True),
    ("contains", "London", "Paris", False),
    ("contains", "anything", "", False),
    ("contains", "about -18.0000001 degrees", "0", False),
    ("contains", "Mount Everest, the tallest", "everest", True),
])
def test_text_checks(check, output, ref, ok):
    assert evaluate.TASK_CHECKS[check](output, ref) is ok


def test_score_and_answer_accuracy():
    s, passed = evaluate.score([GOOD, "nope"], ["4", "4"], "json_answer")
    assert s == 0.5 and passed == [True, False]
    assert evaluate.answer_accuracy([GOOD, '{"topic": "math", "answer": "5"}'], ["4", "4"]) == 0.5


def test_score_records_per_task():
    recs = [{"check": "json_answer", "reference": "4", "task": "json_qa"},
            {"check": "exact", "reference": "1, 2", "task": "sort_numbers"},
            {"check": "exact", "reference": "3, 4", "task": "sort_numbers"}]
    mean, passed, by_task = evaluate.score_records([GOOD, "1, 2", "4, 3"], recs)
    assert passed == [True, True, False] and by_task == {"json_qa": 1.0, "sort_numbers": 0.5}
    assert mean == pytest.approx(2 / 3)


def test_findings_follow_the_numbers():
    base = {"task_score": 0.0, "answer_accuracy": 0.3, "ppl_general": 10.0, "general_qa": 0.9}
    good = {"task_score": 1.0, "answer_accuracy": 0.3, "ppl_general": 12.0, "general_qa": 0.9}
    text = " ".join(evaluate.sft_findings(base, good, {}, {16: 0.2, 64: 0.95}, {}, (30.0, 10.0)))
    assert "was learned" in text and "rose (worse)" in text and "64 clean examples were enough" in text
    assert "fell (better)" in text
    bad = {**good, "task_score": 0.05}
    assert "was not learned" in " ".join(evaluate.sft_findings(base, bad, {}, {}, {}, None))


def test_resolve_check():
    assert evaluate.resolve_check("auto", [{"check": "json_answer"}, {"check": "exact"}]) == "per-record"
    assert evaluate.resolve_check("auto", [{"check": "json_answer"}]) == "json_answer"
    assert evaluate.resolve_check("auto", [{}]) == "contains"
    with pytest.raises(ValueError, match="unknown check"):
        evaluate.resolve_check("bogus", [])


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
