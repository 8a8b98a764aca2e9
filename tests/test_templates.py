"""The template table (``data.TEMPLATES``): every row renders a chat with its replies exactly where it says, a
mistyped name gets the closest one, generation stops at a template's end of turn, and 02's template mismatch
comparison (``sft.template_comparison``) has its shape and its findings follow the numbers."""
import copy
import dataclasses

import pytest
import torch

from nbft import data, evaluate, models, params, sft

CHAT = [{"role": "system", "content": "Answer in JSON."},
        {"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": '{"city": "Paris"}'},
        {"role": "user", "content": "And Italy?"}, {"role": "assistant", "content": "Rome"}]


@pytest.fixture(scope="module")
def smol():
    return models.load_tokenizer(params.SFTParams().model)


@pytest.mark.parametrize("template", list(data.TEMPLATES))
def test_every_row_renders_a_two_turn_chat_with_exact_reply_spans(smol, template):
    """Each row renders the whole chat (every message in it, in order); its prompt ends where the reply starts and
    the completion is the reply and the row's end of turn; each reply span is exactly the row's lead, the reply and
    its end (the last with EOS)."""
    rec = data.render(data.normalize_record({"messages": CHAT}, "test"), smol, template)
    whole = data.render_text(CHAT, smol, template, add_generation_prompt=False)
    row, end = data.TEMPLATES[template], data.end_of_turn(template, smol)
    assert whole.startswith(rec["prompt"] + rec["completion"])
    assert rec["completion"] == row.lead + "Rome" + end
    positions = [whole.index(m["content"]) for m in CHAT]
    assert positions == sorted(positions)  # every message, in order
    text = rec["prompt"] + rec["completion"] + ("" if end == smol.eos_token else smol.eos_token)
    assert [text[a:b] for a, b in data.reply_spans(CHAT, smol, template)] == [
        row.lead + '{"city": "Paris"}' + end, text[len(rec["prompt"]):]]
    assert data.template_of(rec, smol) in {template, "chat"}  # chat renders like chatml when a system turn is given


def test_the_table_rows_differ_and_their_ends_are_as_named(smol):
    prompts = {t: data.render_prompt(CHAT[1:2], smol, t) for t in data.TEMPLATES}
    assert len(set(prompts.values())) == len(prompts)  # the model's own (with its default system prompt) included
    assert prompts["alpaca"] == data.ALPACA_TEMPLATE.format(instruction="Capital of France?")
    assert prompts["llama-3"].endswith("<|start_header_id|>assistant<|end_header_id|>\n")  # the 2nd newline: the lead
    assert {t: data.stops(t, smol) for t in data.TEMPLATES} == {
        "chat": [], "chatml": [], "alpaca": [], "llama-3": ["<|eot_id|>"], "zephyr": [], "mistral": [],
        "vicuna": [], "gemma": ["<end_of_turn>"]}  # ChatML's <|im_end|> is SmolLM2's EOS; the others are EOS
    recs = [data.render(data.normalize_record({"messages": CHAT}, "test"), smol, t) for t in ("chat", "llama-3")]
    assert data.stops_of(recs[:1], smol) == [] and data.stops_of(recs, smol) == ["<|eot_id|>"]


def test_a_mistyped_template_gets_the_closest_name():
    with pytest.raises(params.ParamError, match="llama-3"):
        params.build("01_data_prep", {"template": "llama3"})
    with pytest.raises(params.ParamError, match="zephyr"):
        params.build("02_sft", {"eval_templates": ["alpaca", "zephir"]})
    with pytest.raises(data.DataError, match="did you mean 'chatml'"):
        data.render_prompt(CHAT[1:2], None, "chatlm")
    assert params.build("02_sft", {"eval_templates": list(data.TEMPLATES)}).eval_templates == list(data.TEMPLATES)


def test_generation_stops_at_a_stop_text_and_cuts_it_off(tiny, monkeypatch):
    """A stop text the greedy reply would write: generation ends there (fewer tokens than max_new_tokens) and the
    reply is cut before it (the untrained tiny model repeats a word: 'sorts sorts ...')."""
    model, tok = tiny
    prompt = ["Once upon a time"]
    free = evaluate.generate(model, tok, prompt, 12, cache=False)[0]
    stop = free[3:7]
    assert len(free) > 7
    lengths, generate = [], model.generate

    def spy(**kw):
        out = generate(**kw)
        lengths.append(out.shape[1] - kw["input_ids"].shape[1])
        return out

    monkeypatch.setattr(model, "generate", spy)
    assert evaluate.generate(model, tok, prompt, 12, cache=False, stop=[stop]) == [free[:free.index(stop)].strip()]
    assert lengths[0] < 12
    assert evaluate.cut_at("a<|eot_id|>b<end_of_turn>", ["<end_of_turn>", "<|eot_id|>"]) == "a"


def values(tuned_a, tuned_b, base_a, base_b):
    return {("tuned", "chat"): tuned_a, ("tuned", "alpaca"): tuned_b, ("base", "chat"): base_a,
            ("base", "alpaca"): base_b}


def test_the_findings_tell_a_mismatch_from_a_template_bad_anyway():
    n = 20
    ones, zeros, half = [1.0] * n, [0.0] * n, [1.0, 0.0] * (n // 2)
    cases = {"mismatch with training costs": values(ones, half, zeros, zeros),  # the base: no drop
             "bad for this model anyway": values(ones, zeros, ones, zeros),  # the base drops as much
             "no drop shown": values(half, half, zeros, zeros),
             "does better under alpaca": values(zeros, ones, zeros, zeros)}
    for words, v in cases.items():
        rows = sft.template_rows(v, ["chat", "alpaca"])
        r = rows["alpaca"]
        assert r["mismatch"]["mean"] == pytest.approx(r["drop"]["mean"] - r["base_drop"]["mean"])
        assert rows["chat"]["drop"]["mean"] == 0
        t = {"trained": "chat", "score_metric": "task_score", "n_eval": n, "seconds": 1.0, "rows": rows}
        found = sft.templates_findings(t)
        assert len(found) == 2 and words in found[1], (words, found[1])
    v = {**values(ones, half, zeros, zeros), ("tuned", "gemma"): zeros, ("base", "gemma"): zeros}
    v["base", "chat"] = v["base", "alpaca"] = ones
    v["tuned", "alpaca"], v["base", "gemma"] = ones, zeros  # alpaca: no drop; gemma: both drop by 1
    rows = sft.template_rows(v, ["chat", "alpaca", "gemma"])
    found = sft.templates_findings({"trained": "chat", "score_metric": "rouge_l", "n_eval": n, "rows": rows})
    assert found[0].startswith("Templates (rouge_l, 20 held-out prompts): trained with chat")
    assert found[-1] == ("Templates in sum (trained with chat): no drop shown: alpaca; bad for this model anyway: "
                         "gemma.")
    assert sft.templates_findings(None) == []


def test_template_comparison_on_the_tiny_model(tiny, tmp_path, monkeypatch):
    """The base model and a saved adapter, the held-out prompts under the template trained with and two others: one
    row each, scores and intervals in range, no drop against itself, a table row and a finding per template."""
    from peft import get_peft_model

    from nbft import tasks, train

    folder = str(models.resolve("tiny-llama").path)  # a folder spec: the cache below holds only the merged adapter
    monkeypatch.setenv("NBFT_CACHE", str(tmp_path / "cache"))
    base, tok = tiny
    p = params.SFTParams(model=folder, device="cpu", lora_r=4, max_new_tokens=6,
                         eval_templates=["llama-3", "chat"])
    adapter = get_peft_model(copy.deepcopy(base), train.lora_config(p))
    for n, q in adapter.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(q, std=0.05)
    saved = train.save_tuned(adapter, tok, tmp_path / "run", folder)
    test = [data.render(r, tok, "chat") for r in data.normalize([("demo", r) for r in tasks.demo_dataset(4)][:4])]
    t = sft.template_comparison(p, "chat", tok, test, saved["adapter"], "json_answer")
    assert t["trained"] == "chat" and t["n_eval"] == 4 and t["seconds"] > 0
    assert list(t["rows"]) == ["chat", "llama-3"]  # the trained one first, once
    for r in t["rows"].values():
        for s in r.values():
            assert s["n_eval"] == 4
        for k in ("base", "tuned"):
            assert 0 <= r[k]["lo"] <= r[k]["mean"] <= r[k]["hi"] <= 1
        assert -1 <= r["drop"]["lo"] <= r["drop"]["mean"] <= r["drop"]["hi"] <= 1
    assert t["rows"]["chat"]["drop"] == {"mean": 0.0, "lo": 0.0, "hi": 0.0, "n_eval": 4}
    assert len(sft.templates_table(t)) == 2 and len(sft.templates_findings(t)) == 2
    assert sft.template_comparison(dataclasses.replace(p, eval_templates=[]), "chat", tok, test, saved["adapter"],
                                   "json_answer") is None
