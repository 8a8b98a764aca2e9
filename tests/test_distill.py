"""07_distill on the tiny model: the cut-down student, the tokenizer check, each method row, gaps, findings."""
import copy
import contextlib
import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from nbft import data, distill, evaluate, models, params, runs, tasks


def small(**kw):
    base = dict(model="tiny-llama", student_layers=1, n_train=8, n_unlabelled=4, n_eval=4, max_steps=2, batch_size=4,
                max_new_tokens=6, speed_prompts=2, eval_batch_size=8, max_length=96, lora_r=4, lora_alpha=8)
    base.update(kw)
    return params.DistillParams(**base)


def test_the_table_has_the_four_rows_and_params_name_them():
    assert list(distill.METHODS) == ["student_base", "gold_sft", "imitation", "distill"]
    assert params.DistillParams().methods == list(distill.METHODS)
    assert distill.TRAINED == ("gold_sft", "imitation", "distill")
    assert list(params.STAGES).index("07_distill") == list(params.STAGES).index("06_classify") + 1


@pytest.mark.parametrize("n, k, expected", [(30, 10, [0, 3, 6, 10, 13, 16, 19, 23, 26, 29]), (4, 2, [0, 3]),
                                            (4, 4, [0, 1, 2, 3]), (2, 1, [0]), (5, 3, [0, 2, 4])])
def test_evenly_spaced_keeps_first_and_last(n, k, expected):
    assert distill.evenly_spaced(n, k) == expected


@pytest.mark.parametrize("k", [0, 5])
def test_evenly_spaced_refuses_impossible_counts(k):
    with pytest.raises(ValueError, match="student_layers"):
        distill.evenly_spaced(4, k)


@pytest.fixture(scope="module")
def tok():
    return models.load_tokenizer("tiny-llama")


def four_layer_llama(tok):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, pad_token_id=tok.pad_token_id,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=True)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    model.config.layer_types = ["full_attention"] * 4  # per-layer config lists must follow the kept blocks
    model.config.no_rope_layers = [1, 0, 1, 0]
    return model


def test_keep_blocks_keeps_the_source_layers_renumbers_them_and_saves_a_normal_folder(tok, tmp_path):
    model = four_layer_llama(tok)
    source = {k: v.clone() for k, v in model.state_dict().items()}
    distill.keep_blocks(model, [0, 2, 3])
    assert model.config.num_hidden_layers == 3 and len(model.model.layers) == 3
    assert model.config.layer_types == ["full_attention"] * 3 and model.config.no_rope_layers == [1, 1, 0]
    assert [blk.self_attn.layer_idx for blk in model.model.layers] == [0, 1, 2]
    for new, old in enumerate([0, 2, 3]):
        for name, value in model.model.layers[new].state_dict().items():
            assert torch.equal(value, source[f"model.layers.{old}.{name}"]), (new, name)
    for name in ("model.embed_tokens.weight", "model.norm.weight"):
        assert torch.equal(model.state_dict()[name], source[name])
    ids = tok(["The cat sat on the", "Hello"], return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = model(**ids).logits
        cached = model.generate(**ids, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
        uncached = model.generate(**ids, max_new_tokens=4, do_sample=False, use_cache=False,
                                  pad_token_id=tok.pad_token_id)
    assert torch.equal(cached, uncached)  # the KV cache has one slot per kept block
    models.save(model, tok, tmp_path / "cut")
    again, _ = models.load_model(str(tmp_path / "cut"), "cpu", tokenizer=tok)
    assert again.config.num_hidden_layers == 3
    with torch.no_grad():
        assert torch.allclose(again(**ids).logits, logits, atol=1e-5)


def test_keep_blocks_refuses_bad_indices(tok):
    for keep in ([], [2, 1], [0, 4], [1, 1]):
        with pytest.raises(ValueError, match="ascending"):
            distill.keep_blocks(four_layer_llama(tok), keep)


def test_block_influence_is_one_minus_the_cosine_of_each_block_in_and_out(tok):
    model = four_layer_llama(tok)
    texts = ["The cat sat on the mat.", "Water boils at one hundred degrees."]
    influence = distill.block_influence(model, tok, texts)
    assert len(influence) == 4 and all(0.0 <= x <= 2.0 for x in influence)
    enc = tok(texts[:1], return_tensors="pt")
    with torch.no_grad():
        hs = model(**enc, output_hidden_states=True).hidden_states
    alone = distill.block_influence(model, tok, texts[:1])
    by_hand = 1 - torch.nn.functional.cosine_similarity(hs[2][0], hs[3][0], -1).mean()
    assert alone[2] == pytest.approx(float(by_hand), abs=1e-5)


@pytest.mark.parametrize("influence, k, expected", [
    ([0.9, 0.1, 0.5, 0.2, 0.8], 3, [0, 2, 4]),     # first and last, then the most influential
    ([0.1, 0.9, 0.8, 0.7, 0.0], 3, [0, 1, 4]),     # the ends stay even when they matter least
    ([0.3, 0.2, 0.1], 1, [0]),
    ([0.3, 0.2, 0.1, 0.4], 4, [0, 1, 2, 3]),
])
def test_most_influential_keeps_the_ends_and_the_blocks_that_turn_their_input_most(influence, k, expected):
    assert distill.most_influential(influence, k) == expected


def test_build_student_records_how_its_blocks_were_chosen(tok, tmp_path):
    by_influence = distill.build_student("tiny-llama", 1, tmp_path / "i", tok)
    evenly = distill.build_student("tiny-llama", 1, tmp_path / "e", tok, how="evenly")
    assert by_influence["how"] == "influence" and len(by_influence["influence"]) == 2
    assert evenly["how"] == "evenly" and evenly["influence"] is None
    assert json.loads((tmp_path / "i" / distill.STUDENT_FILE).read_text())["kept"] == by_influence["kept"]


def test_build_student_from_a_spec_is_a_model_folder_of_the_source_blocks(tok, tmp_path):
    info = distill.build_student("tiny-llama", 1, tmp_path / "s", tok)
    assert info["kept"] == [0] and info["source_layers"] == 2
    assert models.resolve(str(tmp_path / "s")).kind == "folder"
    src, _ = models.load_model("tiny-llama", "cpu", tokenizer=tok)
    student, _ = models.load_model(str(tmp_path / "s"), "cpu", tokenizer=tok)
    assert student.config.num_hidden_layers == 1
    ref = src.state_dict()
    for name, value in student.state_dict().items():
        assert torch.equal(value, ref[name]), name  # block 0 keeps its name and its weights
    assert distill.size(student)["total_params"] < distill.size(src)["total_params"]


def other_tokenizer_model(tmp_path, change):
    """tiny-llama saved with a tokenizer that differs: an added token, or another end-of-sequence token."""
    model, tok, _ = models.load("tiny-llama", device="cpu")
    if change == "vocab":
        tok.add_tokens(["<nbft_extra_token>"])
    else:
        tok.eos_token = "<|endoftext|>"
    folder = tmp_path / f"other_{change}"
    models.save(model, tok, folder)
    return str(folder)


@pytest.mark.parametrize("change, message", [("vocab", "vocabulary of 49152 vs 49153 tokens"),
                                             ("eos", "eos_token '<|im_end|>' vs '<|endoftext|>'")])
def test_a_student_with_another_tokenizer_is_refused_naming_the_difference(tmp_path, change, message):
    folder = other_tokenizer_model(tmp_path, change)
    with pytest.raises(params.ParamError) as e:
        distill.check_inputs(small(student=folder))
    text = str(e.value)
    assert text.startswith("07_distill.student: the tokenizer of") and folder in text and message in text
    assert "token by token" in text
    distill.check_inputs(small(student=folder, teacher=folder))  # the same tokenizer on both sides is fine
    assert distill.tokenizer_differences(models.load_tokenizer("tiny-llama"), models.load_tokenizer("tiny-llama")) == []


def test_a_student_with_another_output_size_is_refused(tmp_path):
    model, tok, _ = models.load("tiny-llama", device="cpu")
    model.resize_token_embeddings(len(tok) + 8)  # the same tokenizer, a padded output layer
    folder = str(models.save(model, tok, tmp_path / "padded"))
    with pytest.raises(params.ParamError, match="has 49160 output tokens, the teacher \\(tiny-llama\\) 49152"):
        distill.check_inputs(small(student=folder))


@pytest.mark.parametrize("kw, message", [
    (dict(methods=["student_base", "imitaton"]), "methods[1]: 'imitaton' is not one of"),
    (dict(methods=["student_base", "imitaton"]), "did you mean 'imitation'?"),
    (dict(beta=1.5), "beta: 1.5 is out of range: must be in [0, 1]"),
    (dict(max_steps=0), "max_steps: 0 is out of range: must be >= 1"),
    (dict(student_layers=3), "07_distill.student_layers: 3 blocks, but tiny-llama has 2"),
    (dict(distill_temperature=0.0), "distill_temperature: 0.0 is out of range: must be > 0"),
    (dict(teacher="no/such-model"), "07_distill.teacher: cannot resolve model 'no/such-model'"),
])
def test_check_inputs_names_the_parameter(kw, message):
    """As ``nbft run`` checks them: the parameters (names, ranges) first, then ``check_inputs`` (models)."""
    with pytest.raises(params.ParamError) as e:
        distill.check_inputs(params.build("07_distill", {**dataclasses.asdict(small()), **kw}))
    assert message in str(e.value)


# ---------------------------------------------------------------- gaps and findings

@pytest.mark.parametrize("value, base, teacher, expected", [
    (0.55, 0.1, 1.0, 0.5), (1.0, 0.1, 1.0, 1.0), (0.1, 0.1, 1.0, 0.0), (0.0, 0.2, 0.6, -0.5),
    (0.4, 0.6, 0.2, 0.5),  # a teacher below the student: the share still says how far toward the teacher
])
def test_gap_closed_arithmetic(value, base, teacher, expected):
    share, why = distill.gap_closed(value, base, teacher)
    assert why is None and share == pytest.approx(expected)


@pytest.mark.parametrize("value, base, teacher, why", [
    (0.5, 0.3, 0.32, "differ by less than 0.05: there is no gap to close"),
    (0.5, 0.3, 0.3, "no gap to close"),
    (float("nan"), 0.3, 0.9, "not measured"), (None, 0.3, 0.9, "not measured"),
])
def test_gap_closed_is_none_with_the_reason_where_there_is_no_gap(value, base, teacher, why):
    share, reason = distill.gap_closed(value, base, teacher)
    assert share is None and why in reason


def model_numbers(task, answer, qa, tps=100.0, params_=1e8, ppl=20.0, **extra):
    r = {"task_score": task, "answer_accuracy": answer, "general_qa": qa, "ppl_general": ppl, "total_params": params_,
         "size_mb": params_ * 4 / 2**20, "gen_tokens_per_second": tps, **extra}
    r["knowledge_score"] = distill.knowledge_score(r)
    return r


def rows_of(**rows):
    return {k: model_numbers(*v, seconds=10.0, steps=16) for k, v in rows.items()}


TEACHER = model_numbers(1.0, 0.4, 0.6, tps=100)
BASE = model_numbers(0.0, 0.0, 0.0, tps=250, params_=5e7)


def test_add_gaps_sets_both_shares_and_the_knowledge_score_is_the_mean():
    rows = rows_of(gold_sft=(0.5, 0.1, 0.1), imitation=(0.95, 0.05, 0.05), distill=(0.6, 0.3, 0.3))
    notes = distill.add_gaps(rows, BASE, TEACHER)
    assert notes == {"style": None, "knowledge": None}
    assert TEACHER["knowledge_score"] == pytest.approx(0.5)
    assert rows["imitation"]["style_gap_closed"] == pytest.approx(0.95)
    assert rows["imitation"]["knowledge_gap_closed"] == pytest.approx(0.1)
    assert rows["distill"]["knowledge_gap_closed"] == pytest.approx(0.6)
    flat = distill.metrics_row(rows["distill"], method=True)
    assert set(flat) == set(distill.METRIC_KEYS) | set(distill.ROW_KEYS)


def findings_for(rows, teacher=TEACHER, base=BASE):
    notes = distill.add_gaps(rows, base, teacher)
    return " ".join(distill.findings(teacher, base, rows, notes, {"kept": [0, 2], "source_layers": 4}))


def test_findings_agree_with_the_paper_when_imitation_copies_style_not_knowledge():
    text = findings_for(rows_of(gold_sft=(0.5, 0.1, 0.1), imitation=(0.95, 0.05, 0.05), distill=(0.6, 0.3, 0.3)))
    assert "2 of 4 blocks, 50.0 M parameters" in text and "250 vs 100 generated tokens/s, 2.5x — at least 2x faster" in text
    assert "this run agrees: imitation closed 0.95 of the style gap and only 0.10 of the knowledge gap" in text
    assert "Token-level distillation transfers more knowledge than imitation" in text and "(0.60 vs 0.10" in text
    assert "imitation: closes 0.95 of the style gap and 0.10 of the knowledge gap" in text
    assert "Token-level distillation transfers less style than imitation" in text


def test_findings_name_the_method_closest_to_the_teachers_perplexity():
    rows = rows_of(gold_sft=(0.5, 0.1, 0.1), imitation=(0.95, 0.05, 0.05), distill=(0.6, 0.3, 0.3))
    for name, ppl in (("gold_sft", 900.0), ("imitation", 700.0), ("distill", 80.0)):
        rows[name]["ppl_general"] = ppl
    text = findings_for(rows, base={**BASE, "ppl_general": 5000.0}, teacher={**TEACHER, "ppl_general": 20.0})
    assert "Closest to the teacher on general text: distill, perplexity 80.0 (untrained student 5000.0, teacher 20.0; " \
           "gold_sft 900.0, imitation 700.0)" in text


def test_findings_say_so_when_the_run_goes_against_the_paper():
    text = findings_for(rows_of(imitation=(0.9, 0.45, 0.45), distill=(0.9, 0.45, 0.45)))
    assert "this run does not fully agree: imitation closed 0.90 of the style gap and 0.90 of the knowledge gap" in text
    assert "transfers about as much knowledge as imitation" in text
    text = findings_for(rows_of(imitation=(0.2, 0.0, 0.0)))
    assert "imitation did not even copy the style (0.20" in text


def test_findings_with_no_gap_say_the_shares_are_not_defined():
    teacher = model_numbers(0.0, 0.4, 0.6, tps=150)  # the base model as teacher: no format to copy
    text = findings_for(rows_of(imitation=(0.0, 0.1, 0.1)), teacher=teacher)
    assert "No style gap: the teacher (0.00) and the untrained student (0.00) differ by less than 0.05" in text
    assert "cannot test that fully: the style gap is not defined" in text and "closes n/a of the style gap" in text
    assert "1.7x — short of 2x" in text


def test_browser_rows_carry_both_verdicts():
    test = [{"messages": [{"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "x"}],
             "prompt": "<p>", "reference": "Paris"}]
    res = {"teacher": {"outputs": ['{"topic": "geography", "answer": "Paris"}'], "passed": [True], "answer_passed": [True]},
           "imitation": {"outputs": ['{"topic": "geography", "answer": "Rome"}'], "passed": [True], "answer_passed": [False]}}
    (row,) = distill.browser_rows(test, res)
    assert row["prompt"] == "Capital of France?\n\nreference answer: Paris"
    assert row["pass_teacher"] and not row["pass_imitation"]
    assert row["imitation"].endswith("— format pass · answer wrong")


# ---------------------------------------------------------------- the rows on the tiny model

@pytest.fixture(scope="module")
def setup(tok, tmp_path_factory):
    recs = [data.render(r, tok) for r in tasks.demo_dataset(40, seed=0) if r["messages"][-1]["content"].strip()]
    d = distill.DistillData(recs[:8], recs[8:12], recs[12:16], tasks.resolve_check("auto", recs), "demo")
    folder = tmp_path_factory.mktemp("student") / "s"
    distill.build_student("tiny-llama", 1, folder, tok)
    teacher, _ = models.load_model("tiny-llama", "cpu", tokenizer=tok)
    p = small()
    imitation = distill.imitation_data(teacher, tok, d, p, "fp32")
    return p, d, str(folder), teacher, imitation


def test_distill_samples_under_one_autocast_block_and_trains_exactly_as_with_autocast_per_token(setup, tok,
                                                                                               monkeypatch):
    """The student's on-policy sampling runs inside one ``models.autocast`` block (each weight cast once per call,
    not at every token); the casts are the same bf16 values, so the samples and the losses do not change."""
    from trl import DistillationTrainer

    assert callable(getattr(DistillationTrainer, "_generate_single_turn", None))  # the TRL method nbft wraps
    p, d, folder, teacher, _ = setup
    p = dataclasses.replace(p, precision="bf16" if models.cpu_supports_bf16() else "fp32")

    def losses():
        student, _ = models.load_model(folder, "cpu", tokenizer=tok)
        r = distill.distill_student(student, teacher, tok, d.prompts, p)
        out = [h["loss"] for h in r.log_history if "loss" in h]
        r.release()
        return out
    calls, real = [], models.autocast
    monkeypatch.setattr(models, "autocast", lambda m, precision: calls.append(precision) or real(m, precision))
    one_block = losses()
    assert calls and set(calls) == {p.precision}  # every sampling call went through the block
    monkeypatch.setattr(models, "autocast", lambda m, precision: contextlib.nullcontext())  # no block at all
    per_token = losses()
    assert len(one_block) == p.max_steps and one_block == per_token


def test_imitation_data_is_the_teachers_replies_to_every_training_prompt(setup, tok):
    p, d, _, teacher, im = setup
    assert len(im.records) == len(d.train) + len(d.unlabelled) == 12
    assert [r["prompt"] for r in im.records] == d.prompts
    assert all(r["completion"] == a + tok.eos_token for r, a in zip(im.records, im.replies))
    assert im.replies == distill.teacher_replies(teacher, tok, d.prompts, p, "fp32")  # greedy: the same again
    assert 0 <= im.task_score <= 1 and 0 <= im.answer_accuracy <= 1 and im.seconds > 0
    sampled = distill.teacher_replies(teacher, tok, d.prompts, dataclasses.replace(p, imitation_sampling="sample"), "fp32")
    assert sampled != im.replies


@pytest.mark.parametrize("name, scope", [("gold_sft", "full"), ("imitation", "full"), ("distill", "full"),
                                         ("distill", "lora")])
def test_each_method_trains_the_student_and_is_scored(setup, tok, name, scope):
    p, d, folder, teacher, im = setup
    p = dataclasses.replace(p, scope=scope)
    before, _ = models.load_model(folder, "cpu", tokenizer=tok)
    row = distill.run_method(name, p, tok, folder, d, "fp32", teacher=teacher, imitation=im, keep=True)
    after = row.pop("model")
    assert not hasattr(after, "peft_config")  # LoRA is merged before it is measured
    changed = [k for k, v in after.state_dict().items() if not torch.equal(v, before.state_dict()[k])]
    assert changed, f"{name}: no weight changed"
    if scope == "lora":  # the merge changes the linear layers, not the embeddings or norms
        assert all("proj" in k for k in changed)
    assert row["steps"] == p.max_steps and row["seconds"] > 0 and row["log_history"]
    assert all(math.isfinite(h["loss"]) for h in row["log_history"])
    for k in ("task_score", "answer_accuracy", "general_qa", "knowledge_score"):
        assert 0 <= row[k] <= 1, k
    assert row["ppl_general"] > 1 and row["gen_tokens_per_second"] > 0
    assert row["total_params"] == distill.size(before)["total_params"] and row["size_mb"] > 0
    assert len(row["outputs"]) == len(row["answer_passed"]) == len(d.test)
    assert (row["data_seconds"] > 0) == (name == "imitation")
    models.release(after)


def test_a_method_without_what_it_learns_from_fails_clearly(setup, tok):
    p, d, folder, _, _ = setup
    with pytest.raises(ValueError, match="pass the loaded teacher"):
        distill.run_method("distill", p, tok, folder, d, "fp32")
    with pytest.raises(ValueError, match="not a trained method"):
        distill.run_method("student_base", p, tok, folder, d, "fp32")


def test_load_data_takes_labelled_then_unlabelled_from_the_train_split(runs_dir, tok):
    p = small(n_train=6, n_unlabelled=5, n_eval=3)
    run = runs.open_run(p, "07_distill")
    d = distill.load_data(run, p, tok)
    assert (len(d.train), len(d.unlabelled), len(d.test)) == (6, 5, 3)
    assert len(set(d.prompts)) == 11 and not set(d.prompts) & {r["prompt"] for r in d.test}
    assert d.check == "json_answer" and "01_data_prep's default parameters" in d.source
    teacher, note = distill.teacher_spec(run, p)
    assert teacher == "tiny-llama" and "this run has no 02_sft model" in note
    student = distill.make_student(run, p, tok)
    assert student["layers"] == 1 and student["kept"] == [0] and (Path(student["spec"]) / "config.json").is_file()
    assert Path(student["spec"]).is_relative_to(models.cache_dir()) and distill.make_student(run, p, tok) == student


def test_speeds_time_the_models_in_turn_round_by_round(tiny, monkeypatch):
    """distill.speeds: a warm-up each, then every round times each model once, so models compared by their speeds
    see the same moments of a shared machine; the best timing of each, in generated tokens per second."""
    model, tok = tiny
    other = copy.deepcopy(model)
    names, calls, real = {id(model): "teacher", id(other): "student"}, [], evaluate.generate

    def spy(m, *a, **k):
        calls.append((names[id(m)], k.get("min_new_tokens")))
        return real(m, *a, **k)

    monkeypatch.setattr(distill.evaluate, "generate", spy)
    got = distill.speeds({"teacher": model, "student": other}, tok, ["hi", "hello there"], 3, "fp32", repeats=2)
    assert set(got) == {"teacher", "student"} and all(v > 0 for v in got.values())
    assert calls == [("teacher", None), ("student", None)] + [("teacher", 3), ("student", 3)] * 2
    assert distill.generation_speed(model, tok, ["hi"], 3, "fp32") > 0
