"""06_classify on the tiny model: data readers and their errors, the approach table, scores, adaptation."""
import csv
import dataclasses
from collections import Counter

import numpy as np
import pytest

from nbft import classify, data, evaluate, models, params

LABELS = ["billing", "outage", "praise"]
TEXTS = {
    "billing": ["I was charged twice for my plan this month", "Please refund the extra fee on my invoice",
                "Why is my bill higher than last month", "The payment went through but the invoice says unpaid"],
    "outage": ["The site is down again since this morning", "I cannot log in, the server returns an error",
               "Nothing loads on the app today", "Your service has been offline for an hour"],
    "praise": ["Thanks, the new feature is wonderful", "Great support, you fixed it in minutes",
               "I love the redesign, well done team", "Best update so far, keep it up"],
}


def write_csv(path, rows, header=("text", "label"), bom=False):
    with open(path, "w", newline="", encoding="utf-8-sig" if bom else "utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return str(path)


def three_class_csv(path, repeat=3, bom=False):
    rows = [(f"{t} ({i})", label) for i in range(repeat) for label, texts in TEXTS.items() for t in texts]
    return write_csv(path, rows, bom=bom)


def user_params(path, **kw):
    base = dict(model="tiny-llama", source_data=path, target_data="", epochs=1.0, batch_size=8, max_length=32,
                lora_r=4, lora_alpha=8, freeze_top_n=1, few_shot_k=3, feature_layer=-1, adapt_sizes=[0],
                cpt_texts=0, eval_batch_size=8)
    base.update(kw)
    return params.ClassifyParams(**base)


def test_the_table_has_the_eight_rows_and_params_name_them():
    assert list(classify.APPROACHES) == ["zero_shot", "few_shot", "features_llm", "features_minilm", "head_only",
                                         "top_n", "lora", "full"]
    assert params.ClassifyParams().approaches == list(classify.APPROACHES)
    assert {a.scope for a in classify.APPROACHES.values() if a.kind == "trained"} == set(classify.LEARNING_RATE)


def test_user_csv_is_read_split_stratified_and_excel_bom_accepted(tmp_path):
    path = three_class_csv(tmp_path / "msgs.csv", bom=True)
    d = classify.load_data(user_params(path))
    assert d.labels == sorted(LABELS)
    assert {r["label"] for r in d.train} == {r["label"] for r in d.test} == set(LABELS)
    assert len(d.train) + len(d.test) == 36 and 6 <= len(d.test) <= 12
    assert not {r["text"] for r in d.train} & {r["text"] for r in d.test}
    assert d.target_test == [] and d.unlabelled == []  # cpt_texts: 0
    d = classify.load_data(user_params(path, cpt_texts=5))
    assert d.unlabelled == [r["text"] for r in d.train[:5]]  # no shift: conditional pretraining tags source texts


@pytest.mark.parametrize("rows, header, message", [
    ([("a text", "x"), ("b text", "y")], ("text", "category"), "no column 'label'"),
    ([("a text", "x"), ("b text", "x"), ("c text", "x")], ("text", "label"), "one label only"),
    ([("a text", "x"), ("", "y"), ("c", "y")], ("text", "label"), "line 3: column 'text' is empty"),
    ([("a text", "x"), ("b text", ""), ("c", "y")], ("text", "label"), "line 3: column 'label' is empty"),
    ([("a", "x"), ("b", "x"), ("c", "y")], ("text", "label"), "label 'y' has one example only"),
])
def test_bad_labelled_files_name_file_line_and_column(tmp_path, rows, header, message):
    path = write_csv(tmp_path / "bad.csv", rows, header)
    with pytest.raises(data.DataError, match=message) as e:
        classify.check_inputs(user_params(path))
    assert "bad.csv" in str(e.value)


def test_a_target_label_unseen_in_the_source_is_refused_naming_its_line(tmp_path):
    src = three_class_csv(tmp_path / "src.csv")
    tgt = write_csv(tmp_path / "tgt.csv", [("x", "billing"), ("y", "billing"), ("z", "refund"), ("w", "praise")])
    with pytest.raises(data.DataError, match=r"tgt.csv line 4: label 'refund' is not among the labels"):
        classify.check_inputs(user_params(src, target_data=tgt))


def test_unknown_approach_and_builtin_target_with_user_data_fail_with_the_closest_name(tmp_path):
    path = three_class_csv(tmp_path / "m.csv")
    with pytest.raises(params.ParamError, match="did you mean 'few_shot'"):
        classify.check_inputs(user_params(path, approaches=["few_shots"]))
    with pytest.raises(params.ParamError, match="target_data"):
        classify.check_inputs(user_params(path, target_data="builtin"))
    with pytest.raises(params.ParamError, match="label_words: 2 words for 3 labels"):
        classify.check_inputs(user_params(path, label_words=["a", "b"]))


def test_scores_against_hand_counts():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    s = classify.scores(["ham", "spam"], ["ham", "spam", "spam", "spam"], probs, "spam")
    assert s["accuracy"] == 0.75
    assert s["auc"] == 1.0  # every spam scores above the ham
    assert 0.7 < s["f1"] < 0.75  # macro over ham (2/3) and spam (4/5)
    assert classify.confusion(["ham", "spam"], ["ham", "spam", "spam"], ["ham", "ham", "spam"]) == [[1, 0], [1, 1]]
    three = classify.scores(LABELS, LABELS, np.eye(3))
    assert three["accuracy"] == 1.0 and three["auc"] is None


def test_few_shot_examples_are_balanced():
    train_set = [{"text": f"{l} {i}", "label": l} for l in LABELS for i in range(5)]
    shots = classify.few_shot_examples(train_set, LABELS, 6, seed=1)
    assert sorted(s["label"] for s in shots) == sorted(LABELS * 2)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = three_class_csv(tmp_path_factory.mktemp("cls") / "msgs.csv")
    p = user_params(path)
    return p, models.load_tokenizer(p.model), classify.load_data(p)


@pytest.mark.parametrize("name", list(classify.APPROACHES))
def test_every_approach_runs_and_reports_the_row(tiny, name):
    p, tok, d = tiny
    row = classify.run_approach(name, p, tok, d, "fp32")
    assert 0.0 <= row["accuracy"] <= 1.0 and 0.0 <= row["f1"] <= 1.0
    assert row["auc"] is None  # three labels
    assert row["ms_per_example"] > 0 and len(row["pred"]) == len(d.test)
    assert set(row["pred"]) <= set(d.labels)
    kind = classify.APPROACHES[name].kind
    assert (row["trainable_params"] > 0) == (kind != "prompt")
    assert (row["seconds"] > 0) == (kind != "prompt")


def test_layer_selection_finds_the_layer_that_carries_the_label_by_cross_validation_on_train_alone():
    rng = np.random.default_rng(0)
    y = ["a", "b"] * 30
    x = rng.standard_normal((60, 5, 8)).astype(np.float32)
    x[:, 3, 0] += np.where(np.array(y) == "a", 3.0, -3.0)  # only layer 3 separates the labels
    pick = classify.select_layer(x, y, ["a", "b"])
    assert pick["layer"] == 3 and pick["C"] in classify.CV_C and pick["folds"] == classify.CV_FOLDS
    assert len(pick["by_layer"]) == 5 and pick["cv_accuracy"] == max(pick["by_layer"]) > 0.95
    assert max(pick["by_layer"][:3] + pick["by_layer"][4:]) < 0.8


@pytest.mark.parametrize("select", ["cv", "fixed"])
def test_features_llm_records_the_layer_it_read(tiny, select):
    p, tok, d = tiny
    p = dataclasses.replace(p, feature_layer_select=select)
    row = classify.run_approach("features_llm", p, tok, d, "fp32")
    flat = classify.metrics_row(row)
    config = models.load_model(p.model, "cpu", tokenizer=tok)[0].config
    n_layers = config.num_hidden_layers + 1
    if select == "cv":
        assert 0 <= flat["feature_layer"] < n_layers and len(flat["layer_cv_accuracy"]) == n_layers
        assert flat["cv_accuracy"] == max(flat["layer_cv_accuracy"]) and flat["feature_C"] in classify.CV_C
    else:
        assert flat["feature_layer"] == p.feature_layer and flat["layer_cv_accuracy"] is None
    assert row["vectors"]["test"].shape == (len(d.test), config.hidden_size)


@pytest.mark.parametrize("k", [0, 3])
def test_prompt_scoring_with_the_shared_prefix_cache_equals_one_prompt_at_a_time(tiny, k):
    import torch

    p, tok, d = tiny
    words, shots = d.labels, classify.few_shot_examples(d.train, d.labels, k, 0)
    prompts = [classify.prompt_for(r["text"], words, d.labels, shots, tok) for r in d.test]
    ids = evaluate.word_ids(tok, words)
    with models.loaded(p.model, p.device, tok) as lm:
        cached = evaluate.next_word_probs(lm, tok, prompts, ids, "fp32", batch_size=4)
        with torch.no_grad():
            one = [torch.softmax(lm(**tok(t, return_tensors="pt", add_special_tokens=False)).logits[0, -1, ids], -1)
                   for t in prompts]
    assert evaluate.shared_prefix([tok(t, add_special_tokens=False)["input_ids"] for t in prompts]) > 10
    np.testing.assert_allclose(cached, torch.stack(one).numpy(), atol=1e-5)


def test_calibration_removes_a_constant_bias_towards_one_label():
    free = np.array([[0.9, 0.1]])
    probs = np.array([[0.95, 0.05], [0.6, 0.4], [0.85, 0.15]])  # every raw argmax is label 0
    cal = classify.calibrate(probs, free)
    np.testing.assert_allclose(cal.sum(1), 1.0)
    assert list(cal.argmax(1)) == [0, 1, 1]


def test_trained_scopes_train_what_they_say(tiny):
    p, tok, d = tiny
    counts = {}
    for scope in classify.LEARNING_RATE:
        model = classify.prepare(models.load_classifier(p.model, tok, 3, "cpu", d.labels), scope, p)
        counts[scope] = models.count_params(model)
        head = sum(x.numel() for x in (model.base_model.model.score if scope == "lora" else model.score).parameters())
        assert counts[scope][0] >= head
        models.release(model)
    total = counts["full"][1]
    assert counts["full"][0] == total
    assert counts["head"][0] < counts["lora"][0] < counts["top_n"][0] < total


def test_adaptation_curve_and_conditional_pretraining_on_a_target_file(tmp_path):
    src = three_class_csv(tmp_path / "src.csv")
    tgt = three_class_csv(tmp_path / "tgt.csv", repeat=2)
    p = user_params(src, target_data=tgt, adapt_sizes=[0, 4], adapt_steps=1, cpt_texts=6, n_generate=2,
                    max_new_tokens=6, cpt_epochs=1.0)
    tok = models.load_tokenizer(p.model)
    d = classify.load_data(p)
    row = classify.run_approach("lora", p, tok, d, "fp32", keep=True)
    assert 0 <= row["target_accuracy"] <= 1
    curve = classify.adapt_curve(p, tok, d, row["model"], "fp32")
    assert set(curve) == {0, 4} and all(0 <= v <= 1 for c in curve.values() for v in c.values())
    assert curve[0]["from_source"] == pytest.approx(row["target_accuracy"])
    # the row's own measurement is the same computation: passed in, it is not measured again
    again = classify.adapt_curve(dataclasses.replace(p, adapt_sizes=[0]), tok, d, row["model"], "fp32", 0.125)
    assert set(again) == {0} and again[0]["from_source"] == 0.125 and 0 <= again[0]["from_base"] <= 1
    models.release(row.pop("model"))
    assert len(row["unlabelled_pred"]) == len(d.unlabelled) == 6 and set(row["unlabelled_pred"]) <= set(d.labels)
    feats = classify.run_approach("features_minilm", p, tok, d, "fp32")
    rows = {"features_minilm": feats, "lora": row}
    best = "lora" if row["target_accuracy"] > feats["target_accuracy"] else "features_minilm"
    assert classify.tagger_of(rows) == best  # the most accurate on the target domain; ties: the earlier row
    corpus = classify.tagged_corpus(d.unlabelled, rows[best]["unlabelled_pred"])
    assert len(corpus) == 6 and all(r["text"] == f"{classify.tag(r['label'])} {t}" for r, t in zip(corpus, d.unlabelled))
    cond = classify.conditional(p, tok, d, corpus, "fp32", tagger=best)
    assert cond["tagger"] == best and cond["tag_counts"] == dict(Counter(rows[best]["unlabelled_pred"]))
    assert set(cond["rate_by_tag"]) == set(d.labels) and 0 <= cond["rate_untagged"] <= 1
    assert cond["positive"] == "praise"  # no 'spam' label: the last label
    assert len(cond["samples"]["untagged"]) == 2 and cond["ppl_general_after"] > 1
    lines = classify.findings({"lora": {**row, "kind": "trained"}}, None, curve, cond)
    assert any("Conditional pretraining" in l for l in lines) and any("N=4" in l for l in lines)


def test_the_tagger_is_the_row_most_accurate_on_the_target_domain():
    rows = {"zero_shot": {"accuracy": 0.9, "target_accuracy": 0.9},  # prompting rows do not tag
            "features_minilm": {"accuracy": 0.8, "target_accuracy": 0.72, "unlabelled_pred": ["a"]},
            "lora": {"accuracy": 0.85, "target_accuracy": 0.56, "unlabelled_pred": ["b"]}}
    assert classify.tagger_of(rows) == "features_minilm"
    for r in rows.values():
        r.pop("target_accuracy")  # no target domain: the source accuracy decides
    assert classify.tagger_of(rows) == "lora"
    assert classify.tagger_of({"zero_shot": rows["zero_shot"]}) is None


def test_tag_bar_is_what_a_new_row_must_beat_and_rows_below_it_skip_the_unlabelled_pass(tmp_path):
    assert classify.tag_bar({}) is None and classify.tag_bar({"zero_shot": {"accuracy": 0.9}}) is None
    rows = {"features_minilm": {"accuracy": 0.8, "target_accuracy": 0.72, "unlabelled_pred": ["a"]},
            "lora": {"accuracy": 0.85, "target_accuracy": 0.56, "unlabelled_pred": ["b"]}}
    assert classify.tag_bar(rows) == 0.72
    src = three_class_csv(tmp_path / "src.csv")
    p = user_params(src, target_data=three_class_csv(tmp_path / "tgt.csv", repeat=2), cpt_texts=6)
    tok = models.load_tokenizer(p.model)
    d = classify.load_data(p)
    always = classify.run_approach("features_minilm", p, tok, d, "fp32")
    assert len(always["unlabelled_pred"]) == len(d.unlabelled) == 6
    acc = classify.tag_accuracy(always)
    below = classify.run_approach("features_minilm", p, tok, d, "fp32", tag_above=acc)  # a tie cannot win
    above = classify.run_approach("features_minilm", p, tok, d, "fp32", tag_above=acc - 0.01)
    assert "unlabelled_pred" not in below and above["unlabelled_pred"] == always["unlabelled_pred"]
    assert below["target_accuracy"] == always["target_accuracy"]  # only the unlabelled pass is skipped


def test_findings_name_the_tagger_and_its_accuracy_when_the_tags_do_not_steer():
    cond = {"positive": "spam", "rate_by_tag": {"ham": 0.1, "spam": 0.2}, "rate_untagged": 0.15, "control": 0.1,
            "ppl_general_before": 22.5, "ppl_general_after": 30.0, "tagger": "lora"}
    rows = {"lora": {"kind": "trained", "accuracy": 0.72, "target_accuracy": 0.56, "trainable_params": 10,
                     "seconds": 1.0}}
    text = " ".join(classify.findings(rows, None, {}, cond))
    assert "moves it only 0.10 (below 0.3)" in text and "tags by lora" in text
    assert "lora is right on 0.56 of target-domain test messages" in text
    cond["control"] = cond["rate_by_tag"]["spam"] = 0.5
    assert "right on" not in " ".join(classify.findings(rows, None, {}, cond))


def test_findings_say_when_fine_tuning_does_not_beat_frozen_features():
    rows = {"features_llm": {"kind": "features", "accuracy": 0.9, "trainable_params": 10, "seconds": 5.0},
            "full": {"kind": "trained", "accuracy": 0.88, "trainable_params": 10 ** 8, "seconds": 90.0}}
    lines = classify.findings(rows, {"approach": "full", "source_accuracy": 0.88, "target_accuracy": 0.6}, {}, None)
    text = " ".join(lines)
    assert "does not beat frozen features" in text and "the shift costs accuracy" in text
    rows["full"]["accuracy"] = 0.97
    assert "beats frozen features by +0.07" in " ".join(classify.findings(rows, None, {}, None))


def test_the_misclassification_browser_lists_only_messages_some_approach_gets_wrong():
    d = classify.ClassData(["ham", "spam"], [], [{"text": "x", "label": "ham"}, {"text": "y", "label": "spam"}],
                           [], [{"text": "z", "label": "spam"}])
    rows = {"a": {"pred": ["ham", "ham"], "confidence": [0.9, 0.6], "target_pred": ["ham"]},
            "b": {"pred": ["ham", "spam"], "confidence": [0.8, 0.7]}}
    out = classify.misclassified(d, rows)
    assert out["source test"] == [{"text": "y", "true": "spam", "a": "ham (0.60)", "b": "spam (0.70)"}]
    assert out["target test"] == [{"text": "z", "true": "spam", "a": "ham"}]
