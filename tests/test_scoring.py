"""nbft.scoring: every metric of the table on a realistic free-text set (short dictionary definitions), intervals
that hold what they say, and findings that speak only when the change is larger than its interval."""
import pytest

from nbft import scoring

DEFS = ["A malignant disease of the epithelial tissue.", "A large body of salt water.", "To move quickly on foot.",
        "A building where books are kept for reading or borrowing.", "The season between summer and winter."] * 4
BEFORE = ["A word that has been used to describe a disease that is currently unstoppable.", "Water.",
          "Walking somewhere.", "A big house.", "It is a time of the year."] * 4
AFTER = ["A malignant disease of epithelial tissue.", "A large body of salt water that covers most of the earth.",
         "To run fast on foot.", "A building where books are kept for reading.", "The season after summer."] * 4
REFS = [{"reference": d} for d in DEFS]


@pytest.mark.parametrize("name", list(scoring.METRICS))
def test_every_metric_scores_each_example_and_prefers_the_reference(name):
    m = scoring.METRICS[name]
    same = m.score(DEFS, REFS)
    other = m.score(BEFORE, REFS)
    assert len(same) == len(other) == len(REFS) and all(isinstance(x, float) for x in same + other)
    if m.higher_is_better and name != "json_answer":  # json_answer needs the demo's JSON replies
        assert min(same) >= max(other) - 1e-9 and sum(same) > sum(other), name
    if name != "length":
        assert all(-1e-6 <= x <= 1 + 1e-6 for x in same + other), name


def test_a_closer_reply_scores_higher_on_every_reference_metric():
    t = scoring.table(BEFORE, AFTER, REFS, ["rouge_l", "chrf", "bleu", "semantic", "contains"])
    for name, row in t.items():
        assert row["after"]["mean"] > row["before"]["mean"], name
        assert row["before"]["lo"] <= row["before"]["mean"] <= row["before"]["hi"]
        assert row["diff"]["mean"] == pytest.approx(row["after"]["mean"] - row["before"]["mean"])
        assert row["diff"]["n_eval"] == len(REFS) and len(row["scores"]["after"]) == len(REFS)
    assert all(scoring.clear(t[n]["diff"]) for n in ("rouge_l", "chrf", "semantic"))
    assert "larger than its interval: better" in scoring.sentence("rouge_l", t["rouge_l"])


def test_no_change_is_no_finding_and_the_interval_is_paired():
    same = scoring.paired([0.2, 0.5, 0.9, 0.1], [0.2, 0.5, 0.9, 0.1])
    assert same == {"mean": 0.0, "lo": 0.0, "hi": 0.0, "n_eval": 4} and scoring.clear(same) is False
    # every example up by 0.01, around very different levels: paired, the change is clear; unpaired it would not be
    before = [0.0, 0.9, 0.1, 0.8, 0.2, 0.7] * 5
    shifted = scoring.paired(before, [x + 0.01 for x in before])
    assert shifted["lo"] == pytest.approx(0.01) and scoring.clear(shifted)
    t = scoring.table(BEFORE, BEFORE, REFS, ["rouge_l"])
    assert "within its interval: no change shown" in scoring.sentence("rouge_l", t["rouge_l"])
    assert scoring.summary([]) == {"mean": None, "lo": None, "hi": None, "n_eval": 0}
    assert scoring.summary([1.0, 0.0] * 10, seed=3) == scoring.summary([1.0, 0.0] * 10, seed=3)  # seeded


def test_auto_is_the_datas_own_check_or_the_free_text_metrics():
    assert scoring.resolve(["auto"], "json_answer") == ["json_answer", "length"]
    assert scoring.resolve(["auto"], "contains") == ["rouge_l", "chrf", "semantic", "contains", "length"]
    assert scoring.resolve(["bleu", "auto", "bleu"], "exact") == ["bleu", "exact", "length"]
    assert scoring.resolve(["auto"], "per-record") == ["task", "length"]  # the demo's multi-task mix
    rows = scoring.rows(scoring.table(BEFORE, AFTER, REFS, ["chrf"]))
    assert rows[0]["metric"] == "chrf" and rows[0]["larger than its interval"] is True


def test_findings_of_free_text_come_from_the_reference_metrics_not_the_task_score():
    """Issue 30's report: on a user's definitions 02 said "the behaviour was not learned" from a 0.00 -> 0.00
    'contains' score while the replies had taken the references' form."""
    from nbft import sft

    reply = scoring.table(BEFORE, AFTER, REFS, scoring.resolve(["auto"], "contains"))
    r = {"task_score": 0.0, "answer_accuracy": 0.0, "ppl_general": 20.0, "general_qa": 0.5}
    text = " ".join(sft.findings(r, dict(r), {}, {}, {}, None, reply, "contains"))
    assert "not learned" not in text and "rose by more than their intervals" in text
    assert "rouge_l" in text and "95% CI" in text
    flat = scoring.table(BEFORE, BEFORE, REFS, scoring.resolve(["auto"], "contains"))
    assert "no learning shown" in " ".join(sft.findings(r, dict(r), {}, {}, {}, None, flat, "contains"))


def test_free_text_comparisons_use_a_reference_metric_and_claim_no_task_score_bar():
    """On the definitions data (issue 30, measured), the scopes, the data-size sweep and clean vs unfiltered said
    "task score 0.00 vs 0.00 ... LoRA comes within 0.1 of full", "no size reached 0.9": a 'contains' score that
    sees no change of free text. They now use the first reference metric, say which, and draw no task-score bar."""
    from nbft import sft

    names = scoring.resolve(["auto"], "contains")
    assert sft.score_name("contains", names) == "rouge_l"
    assert sft.score_name("json_answer", names) == sft.score_name("per-record", ["task"]) == "task_score"
    assert sft.score_name("contains", ["chrf", "length"]) == "chrf"
    recs = [{"reference": d} for d in DEFS]
    res = {"task_score": 0.0, "passed": [False] * len(DEFS), "outputs": AFTER, "ppl_general": 20.0,
           "general_qa": 0.5, "trainable_params": 10, "seconds": 1.0}
    row = sft.scope_row(res, 1000, recs, "rouge_l")
    assert row["task_score"] == 0.0 and 0 < row["score"] == scoring.summary(scoring.score(AFTER, recs, ["rouge_l"])["rouge_l"])["mean"]
    assert sft.scope_row(res, 1000)["score"] == 0.0  # the task score itself where that is the score
    worse = sft.scope_row({**res, "outputs": BEFORE}, 1000, recs, "rouge_l")
    r = {"task_score": 0.0, "answer_accuracy": 0.0, "ppl_general": 20.0, "general_qa": 0.5}
    reply = scoring.table(BEFORE, AFTER, REFS, names)
    text = " ".join(sft.findings(r, dict(r), {"lora": worse, "full": row}, {8: 0.21, 16: 0.3},
                                 {"n_train": 8, "clean": 0.3, "unfiltered": 0.2}, None, reply, "contains",
                                 score="rouge_l"))
    assert f"rouge_l {worse['score']:.2f} vs {row['score']:.2f}" in text  # LoRA vs full, on the reference metric
    assert "Scope lora" in text and "task score 0.00" not in text
    assert "no size reached" not in text and "the highest came with 16 examples" in text
    assert "Clean vs unfiltered at 8 examples (rouge_l): 0.30 vs 0.20 (clean data wins)" in text
    assert "Answer accuracy" not in text  # the same blind 'contains' check on free text
    flat = " ".join(sft.findings(r, dict(r), {}, {8: 0.0, 16: 0.0}, {}, None, reply, "contains", score="rouge_l"))
    assert "every size scored the same" in flat and "highest" not in flat


def test_data_with_its_own_checks_keeps_the_task_score_verdict():
    from nbft import sft

    reply = scoring.table(BEFORE, BEFORE, REFS, ["task", "length"])
    r = {"task_score": 0.0, "answer_accuracy": 0.0, "ppl_general": 20.0, "general_qa": 0.5}
    for check in ("json_answer", "per-record"):
        first = sft.findings(r, dict(r), {}, {}, {}, None, reply, check)[0]
        assert first.startswith("Task score 0.00 -> 0.00 on held-out prompts: the behaviour was not learned"), check


def test_per_example_puts_each_prompt_reference_replies_scores_and_verdict_in_one_row():
    recs = [{"messages": [{"role": "user", "content": f"Define word {i}"}, {"role": "assistant", "content": d}],
             "prompt": "<|im_start|>user ...", "reference": d} for i, d in enumerate(DEFS)]
    t = scoring.table(BEFORE, AFTER, recs, ["rouge_l", "length"])
    verdicts = ["after", "tie", "before", "after", "after"] * 4
    rows = scoring.per_example(BEFORE, AFTER, recs, t, verdicts)
    assert len(rows) == len(DEFS)
    r = rows[0]
    assert (r["example"], r["prompt"], r["reference"], r["before"], r["after"], r["verdict"]) == (
        0, "Define word 0", DEFS[0], BEFORE[0], AFTER[0], "after")  # the user's turn, not the rendered prompt
    for name in ("rouge_l", "length"):  # nothing scored again: the table's own per-example scores
        m = r["metrics"][name]
        assert m["before"] == t[name]["scores"]["before"][0] and m["after"] == t[name]["scores"]["after"][0]
        assert m["change"] == pytest.approx(m["after"] - m["before"])
    assert "verdict" not in scoring.per_example(BEFORE, AFTER, recs, t)[0]
    with pytest.raises(ValueError, match="verdicts"):
        scoring.per_example(BEFORE, AFTER, recs, t, verdicts[:3])
    assert scoring.per_example(BEFORE, AFTER, [{"prompt": "Why?"}] * len(DEFS),
                               scoring.table(BEFORE, AFTER, REFS, ["length"]))[0]["reference"] == ""


def test_ranked_puts_the_largest_gain_or_loss_first():
    before, after = ["a b c d", "a b", "a b c", "x"], ["a b", "a b c d e f", "a b c", "x y"]
    recs = [{"reference": "a b c d e f"}] * 4
    rows = scoring.per_example(before, after, recs, scoring.table(before, after, recs, ["rouge_l", "length"]))
    gains = [scoring.gain(r, "rouge_l") for r in scoring.ranked(rows, "rouge_l", "gain")]
    assert gains == sorted(gains, reverse=True) and gains[0] > 0 > gains[-1]
    assert [r["example"] for r in scoring.ranked(rows, "rouge_l", "gain")][0] == 1  # two words -> the whole reference
    assert [r["example"] for r in scoring.ranked(rows, "rouge_l", "loss")][0] == 0  # four words -> two
    assert [r["example"] for r in scoring.ranked(rows, "length", "gain")] == [1, 3, 2, 0]  # ties keep their order
    flipped = [{**r, "metrics": {"x": {**r["metrics"]["length"], "higher_is_better": False}}} for r in rows]
    assert [r["example"] for r in scoring.ranked(flipped, "x", "gain")] == [0, 2, 3, 1]  # lower is better: fell most
    with pytest.raises(ValueError):
        scoring.ranked(rows, "rouge_l", "best")


def test_several_arms_share_the_scores_before_and_each_clear_change_is_a_finding():
    t = scoring.tables(BEFORE, {"lora": AFTER, "ia3": BEFORE}, REFS, ["rouge_l", "length"])
    assert t["lora"]["rouge_l"] == scoring.table(BEFORE, AFTER, REFS, ["rouge_l"])["rouge_l"]
    assert t["ia3"]["rouge_l"]["diff"]["mean"] == 0
    rec = {arm: scoring.recorded(x) for arm, x in t.items()}
    assert "scores" not in rec["lora"]["rouge_l"] and rec["lora"]["rouge_l"]["diff"] == t["lora"]["rouge_l"]["diff"]
    text = scoring.sentences(rec, "base")
    first = next(s for s in text if s.startswith("rouge_l"))
    d = t["lora"]["rouge_l"]["diff"]
    assert f"better for lora {d['mean']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]" in first
    assert "no change larger than its interval for ia3" in first  # never more than the metric shows
    series = scoring.by_metric(t, "base")
    assert list(series["rouge_l"]) == ["base", "lora", "ia3"] and series["rouge_l"]["ia3"] == series["rouge_l"]["base"]


def test_compare_takes_scores_a_stage_already_has():
    t = scoring.compare({"rule": [0.5, 0.5, 1.0, 0.0] * 5}, {"rule": [1.0, 0.5, 1.0, 0.5] * 5}, {"rule": True})
    assert t["rule"]["diff"]["mean"] == pytest.approx(0.25) and scoring.clear(t["rule"]["diff"])
    assert "larger than its interval: better" in scoring.sentence("rule", t["rule"])
