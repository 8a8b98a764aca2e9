"""A model as the data filter (issue 33 item 3): the rating question and its parser, the top-fraction selection, the
parameters and the reward-model preflight, and 02's filtered-vs-whole comparison on tiny-llama."""
import json

import pytest

from nbft import data, judge, models, params, rating, runs, sft


@pytest.mark.parametrize("answer, expected", [
    ("8", 8.0), ("Rating: 7/10", 7.0), ("**9**", 9.0), ("6.5", 6.5), ("10", 10.0), ("1", 1.0),
    ("On a scale of 1 to 10, I'd say 4.", 4.0), ("8 out of 10", 8.0), ("1-10: 3", 3.0),
    ("4.", 4.0), ("1. The answer is correct.", None), ("2) Good reply", None), ("0", None), ("11", None), ("42", None), ("-3", None), ("great reply!", None), ("", None), (None, None)])
def test_a_rating_is_the_first_number_from_1_to_10_else_unparsed(answer, expected):
    assert rating.parse_rating(answer) == expected


def test_the_rating_question_carries_rubric_prompt_and_reply_and_cuts_a_runaway_reply():
    q = rating.rating_question("Be strict.", "What is 2+2?", "4")
    assert q[0] == {"role": "system", "content": "Be strict."} and q[1]["role"] == "user"
    assert "What is 2+2?" in q[1]["content"] and "[Reply]\n4" in q[1]["content"]
    assert q[1]["content"].endswith(rating.RATING_QUESTION)
    long = rating.rating_question("r", "p", "ok " * 2000)[1]["content"]
    assert "[...cut]" in long and len(long) < rating.RATING_REPLY_CHARS + 200


def test_rate_asks_once_per_example_and_counts_the_unparsed():
    recs = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
            for i in range(3)]
    asked = []

    def ask(questions):
        asked.extend(questions)
        return ["9", "no idea", "Rating: 2/10"]

    out = rating.rate(recs, ask, "rubric")
    assert out["scores"] == [9.0, None, 2.0] and out["unparsed"] == 1 and out["raw"][1] == "no idea"
    assert [judge.prompt_of(r) for r in recs] == ["q0", "q1", "q2"] and "a1" in asked[1][1]["content"]
    with pytest.raises(judge.JudgeError, match="2 answers to 3"):
        rating.rate(recs, lambda qs: ["1", "2"], "rubric")


def test_the_top_fraction_keeps_the_best_breaks_ties_by_the_seed_and_ranks_unparsed_last():
    scores = [5, 5, 5, 5, 9, None, 1]
    kept = rating.select_top(scores, 0.5, seed=0)  # 3.5 -> 4 of 7 (round half up)
    assert len(kept) == 4 and 4 in kept and 5 not in kept and 6 not in kept and kept == sorted(kept)
    assert rating.select_top(scores, 0.5, seed=0) == kept  # the same seed keeps the same examples
    picks = {tuple(rating.select_top([5] * 8, 0.5, seed=s)) for s in range(6)}
    assert len(picks) > 1  # ties: the seed decides, not the position
    kept = rating.select_top([None, None, 3.0], 0.6, seed=1)  # 1.8 -> 2: the rated one, then an unparsed one
    assert len(kept) == 2 and 2 in kept
    assert rating.select_top([2.0, 1.0], 0.01) == [0] and rating.select_top([], 0.5) == []


def test_separation_is_the_chance_a_clean_example_scores_above_a_noisy_one():
    assert rating.separation([9, 8, 1, 2], [True, True, False, False]) == 1.0
    assert rating.separation([1, 2, 9, 8], [True, True, False, False]) == 0.0
    assert rating.separation([5, 5, 5], [True, False, True]) == 0.5
    assert rating.separation([None, 3], [True, False]) == 0.0  # unparsed is below every number
    assert rating.separation([4, 5], [True, True]) is None


def test_the_filter_parameters_are_checked_before_anything_runs(tmp_path, tokenizer):
    with pytest.raises(params.ParamError, match="judge"):
        params.build("02_sft", {"quality_filter": "judge", "quality_filter_examples": 8})
    with pytest.raises(params.ParamError, match="quality_filter_examples"):
        params.build("02_sft", {"quality_filter": "judge", "judge": "tiny-llama"})
    with pytest.raises(params.ParamError, match="quality_filter_examples"):
        params.build("02_sft", {"quality_filter_examples": 8})
    with pytest.raises(params.ParamError, match="quality_keep"):
        params.build("02_sft", {"quality_keep": 1.0})
    with pytest.raises(params.ParamError, match="quality_filter"):
        params.build("02_sft", {"quality_filter": "rm"})
    on = {"quality_filter": "reward_model", "quality_filter_examples": 8, "model": "tiny-llama", "benchmarks": []}
    with pytest.raises(params.ParamError, match="02_sft.quality_reward_model: empty"):
        sft.check_inputs(params.build("02_sft", on))
    with pytest.raises(params.ParamError, match="quality_reward_model: .*not found"):
        sft.check_inputs(params.build("02_sft", {**on, "quality_reward_model": str(tmp_path / "nothing")}))
    generator = models.resolve("tiny-llama").path
    with pytest.raises(params.ParamError, match="LlamaForCausalLM, not a reward model"):
        sft.check_inputs(params.build("02_sft", {**on, "quality_reward_model": generator}))
    rm = models.load_classifier("tiny-llama", tokenizer, 1, "cpu")
    rm.save_pretrained(tmp_path / "rm")
    tokenizer.save_pretrained(tmp_path / "rm")
    sft.check_inputs(params.build("02_sft", {**on, "quality_reward_model": str(tmp_path / "rm")}))  # passes
    recs = [{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": r}]}
            for r in ("Hello!", "")]
    got = rating.reward_ratings(str(tmp_path / "rm"), recs, device="cpu")
    assert len(got["scores"]) == 2 and all(isinstance(s, float) for s in got["scores"]) and got["unparsed"] == 0
    assert got["scores"][0] != got["scores"][1]


def test_filtered_vs_whole_on_tiny_llama_labels_rates_keeps_and_trains_both_arms_alike(tokenizer):
    dp = params.DataPrepParams(model="tiny-llama", n_examples=40)
    prep = data.prepare(dp, tokenizer)
    held = {r["prompt"] for r in prep.splits["test"] + prep.splits["validation"]}
    p = params.build("02_sft", {"model": "tiny-llama", "judge": "tiny-llama", "quality_filter": "judge",
                                "quality_filter_examples": 8, "quality_keep": 0.5, "lora_r": 4, "lora_alpha": 8,
                                "max_length": 96, "max_new_tokens": 2, "batch_size": 8})
    assert sft.filter_comparison(params.SFTParams(model="tiny-llama"), dp, tokenizer, [], held, "auto") is None
    q = sft.filter_comparison(p, dp, tokenizer, prep.splits["test"][:2], held, "auto")
    whole, _ = sft.sample_unfiltered(dp, tokenizer, held, 8, p.seed)  # the clean-vs-unfiltered pool, same draw
    assert [e["reply"] for e in q["examples"]] == [data.reply_of(r) for r in whole]
    assert q["n_pool"] == 8 and q["n_kept"] == 4 and q["n_noisy"] == sum(map(sft.noisy, whole)) > 0
    assert q["clean_share"] == pytest.approx(1 - q["n_noisy"] / 8) and q["rater"] == "tiny-llama"
    assert q["unparsed"] == sum(e["rating"] is None for e in q["examples"])
    kept = [e for e in q["examples"] if e["kept"]]
    assert q["precision"]["mean"] == sum(e["clean"] for e in kept) / 4
    arms = q["arms"]
    assert arms["whole"]["steps"] == arms["filtered"]["steps"] == q["steps"] == 1
    assert (arms["whole"]["n_train"], arms["filtered"]["n_train"]) == (8, 4)
    assert arms["filtered"]["clean_share"] == q["precision"]["mean"]
    assert q["diff"]["n_eval"] == 2 and -1 <= q["diff"]["lo"] <= q["diff"]["mean"] <= q["diff"]["hi"] <= 1
    rec = sft.filter_recorded(q)
    assert not runs.vocabulary_problems("02_sft", {"quality_filter": rec})
    assert "examples" not in rec and all("scores" not in a for a in rec["arms"].values()) and json.dumps(rec)
    assert [r["arm"] for r in sft.filter_rows(q)] == list(sft.FILTER_ARMS.values())
    assert {r["measure"] for r in sft.filter_rating_rows(q)} >= {"precision", "chance", "unparsed"}
    assert len(sft.filter_findings(q)) >= 2 and sft.filter_findings(None) == []


def _q(precision, chance, diff, separation=0.9):
    s = {"mean": 0.8, "lo": 0.7, "hi": 0.9, "n_eval": 40}
    arm = {"clean_share": chance, "interval": s, "ppl_general": 20.0, "general_qa": 0.5}
    return {"filter": "judge", "rater": "big", "n_pool": 100, "n_noisy": 20, "keep": 0.5, "n_kept": 50,
            "precision": precision, "clean_share": chance, "noisy_dropped": 0.9, "separation": separation,
            "unparsed": 3, "steps": 13, "n_eval": 40, "score_metric": "task_score",
            "arms": {"whole": arm, "filtered": {**arm, "clean_share": precision["mean"]}}, "diff": diff}


def test_the_findings_follow_the_numbers():
    good = {"mean": 0.98, "lo": 0.94, "hi": 1.0, "n_eval": 50}
    chance = {"mean": 0.8, "lo": 0.7, "hi": 0.9, "n_eval": 50}
    up, down, none = ({"mean": m, "lo": lo, "hi": hi, "n_eval": 40} for m, lo, hi in
                      ((0.2, 0.1, 0.3), (-0.2, -0.3, -0.1), (0.02, -0.05, 0.1)))
    said = sft.filter_findings(_q(good, 0.8, up))
    assert "beat chance" in said[0] and "fewer, better examples won" in said[1] and len(said) == 2
    assert "the seeds' claim fails here" in sft.filter_findings(_q(good, 0.8, down))[1]
    said = sft.filter_findings(_q(chance, 0.8, none, 0.5))
    assert "no better than chance" in said[0] and "not shown better" in said[1] and "not tested" in said[2]
