"""A model as the labeller of 04's preference pairs (nbft.feedback): both orders asked, ties make no pair and are
counted, agreement with the rule; a reward model as the labeller; the judge as an online-DPO/GRPO reward function;
the parameters' checks."""
import pytest

from nbft import feedback, models, params, rlhf

GOOD = "A volcano is a mountain where hot molten rock comes out of the ground."
LIST = "Here are the key facts:\n- hot\n- tall"
REPEAT = "A volcano is a mountain. A volcano is a mountain. A volcano is a mountain."
PROMPTS = ["What is a volcano?", "Tell me about a volcano."]
SAMPLES = [[GOOD, LIST, REPEAT, GOOD], [GOOD, LIST]]  # a repeated sample counts once


def slots(question: list[dict]) -> tuple[str, str, str]:
    text = question[1]["content"]
    prompt = text.split("[Prompt]\n", 1)[1].split("\n\n[Reply A]", 1)[0]
    return (prompt, text.split("[Reply A]\n", 1)[1].split("\n\n[Reply B]", 1)[0],
            text.split("[Reply B]\n", 1)[1].split("\n\n" + feedback.QUESTION, 1)[0])


def rule_judge(asked: list):
    """Picks the slot the rule scores higher, except that on the second prompt it always says A (position bias)."""
    def ask(questions):
        asked.extend(questions)
        out = []
        for q in questions:
            prompt, a, b = slots(q)
            if prompt == PROMPTS[1]:
                out.append("A")
                continue
            sa, sb = rlhf.rule_score(prompt, a), rlhf.rule_score(prompt, b)
            out.append("A" if sa > sb else "B" if sb > sa else "tie")
        return out
    return ask


def test_a_judge_labels_in_both_orders_a_tie_makes_no_pair_and_ties_bias_and_agreement_are_counted():
    asked = []
    rubric = feedback.rubric(params.LABELLER_RUBRIC, params.CONSTITUTION)
    got = feedback.label(PROMPTS, SAMPLES, ask=rule_judge(asked), rubric_text=rubric, pairs_per_prompt=2,
                         templates_per_prompt=1, name="judge x")
    # 3 distinct replies -> 3 comparisons, 2 -> 1; both orders; then one template question per prompt, both orders
    assert len(asked) == 2 * (3 + 1) + 2 * 2
    assert asked[0][0]["content"] == rubric and params.CONSTITUTION[0] in rubric and "1. " in rubric
    assert slots(asked[0])[1:] == slots(asked[4])[:0:-1]  # the same comparison, the replies swapped
    s = feedback.summary(got)
    # prompt 1: every comparison decided the rule's way; prompt 2: "A" in both orders = a tie (no pair), template too
    assert s["n_comparisons"] == 6 and s["n_ties"] == 2 and s["tie_share"] == pytest.approx(2 / 6)
    assert s["agreement_with_rule"]["mean"] == 1.0 and s["agreement_with_rule"]["n_eval"] == 4
    assert all(p["prompt"] == PROMPTS[0] for p in got["pairs"]) and len(got["pairs"]) == 3  # 2 sampled + 1 template
    assert got["pairs"][0]["chosen"] == GOOD and {p["source"] for p in got["pairs"]} >= {"samples"}
    assert all(p["chosen_rule"] > p["rejected_rule"] for p in got["pairs"])
    # position bias: of the answers that picked a slot, the share that picked A (prompt 2 always A)
    a = s["answers"]
    assert a["first"] + a["second"] + a["tie"] + a["unparsed"] == len(asked)
    assert s["position_bias"] == pytest.approx(a["first"] / (a["first"] + a["second"])) and s["position_bias"] > 0.5
    rows = {r["measure"]: r for r in feedback.rows(s)}
    assert rows["tie share"]["value"] == s["tie_share"] and "position bias" in rows
    # a judge that disagrees with the rule everywhere: agreement 0, and the examples show where
    flipped = feedback.label(PROMPTS[:1], SAMPLES[:1], ask=lambda qs: [
        {"A": "B", "B": "A"}.get(x, x) for x in rule_judge([])(qs)], rubric_text=rubric, templates=False)
    fs = feedback.summary(flipped)
    assert fs["agreement_with_rule"]["mean"] == 0.0 and fs["n_ties"] == 0
    ex = feedback.examples(flipped["comparisons"])
    assert ex and all(e["labeller_chose"] != e["rule_chose"] for e in ex)
    assert "agrees with the rule on 0%" in feedback.findings({**fs, "n_pairs": len(flipped["pairs"])})[0]


def test_probability_verdicts_turn_a_judge_that_always_answers_a_into_decided_pairs_ranked_by_its_preference():
    """judge_verdict probability: p(A) 0.95 when the rule's better reply is in slot A, 0.75 when it is in B (its
    answer would be A every time: all ties). Averaged over the orders every comparison is decided the rule's way."""
    def ask(questions):
        out = []
        for q in questions:
            prompt, a, b = slots(q)
            out.append(0.95 if rlhf.rule_score(prompt, a) >= rlhf.rule_score(prompt, b) else 0.75)
        return out

    got = feedback.label(PROMPTS, SAMPLES, ask=ask, rubric_text="r", pairs_per_prompt=1, name="judge p")
    s = feedback.summary(got)
    assert s["n_ties"] == 0 and s["agreement_with_rule"]["mean"] == 1.0 and s["position_bias"] == 1.0
    assert s["first_slot_probability"] == pytest.approx(0.85)
    assert all(p["chosen_rule"] > p["rejected_rule"] for p in got["pairs"])
    assert {p["prompt"] for p in got["pairs"] if p["source"] == "samples"} == set(PROMPTS)  # both prompts now pair
    assert got["pairs"][0]["chosen"] == GOOD  # the best reply by preference: it wins both its comparisons
    found = " ".join(feedback.findings({**s, "n_pairs": len(got["pairs"])}))
    assert "averaged over the two orders" in found and "0.85" in found
    assert "probability on slot A" in {r["measure"] for r in feedback.rows(s)}


@pytest.mark.timeout(120)
def test_the_built_in_tiny_model_labels_end_to_end_and_its_unparsed_answers_are_ties(tmp_path, tiny):
    p = params.build("04_rlhf", {"feedback": "judge", "judge": "tiny-llama", "template_pairs": 1})
    got = feedback.label_with(p, PROMPTS, SAMPLES, device="cpu", batch_size=8)
    s = feedback.summary(got)
    assert got["labeller"] == "judge tiny-llama" and s["n_comparisons"] == 6 and s["seconds"] > 0
    a = s["answers"]
    assert a["first"] + a["second"] + a["tie"] + a["unparsed"] == 2 * 6  # every question, both orders, counted
    assert s["n_decided"] + s["n_ties"] == 6 and len(got["pairs"]) <= s["n_decided"]
    assert s["agreement_with_rule"]["n_eval"] <= s["n_decided"]
    # judge_verdict probability: one forward pass a question, every comparison decided (the replies all differ)
    pp = params.build("04_rlhf", {"feedback": "judge", "judge": "tiny-llama", "template_pairs": 1,
                                  "judge_verdict": "probability"})
    sp = feedback.summary(feedback.label_with(pp, PROMPTS, SAMPLES, device="cpu", batch_size=8))
    assert sp["n_comparisons"] == 6 and sp["n_ties"] == 0 and sp["answers"]["unparsed"] == 0
    assert 0 < sp["first_slot_probability"] < 1
    # the same judge as online DPO's reward, called as TRL calls it: 2B prompts, sample i against sample i + B
    with feedback.judge_reward(p, device="cpu", batch_size=8) as reward:
        r = reward(prompts=[[{"role": "user", "content": q}] for q in 2 * PROMPTS],
                   completions=[[{"role": "assistant", "content": c}] for c in (LIST, GOOD, GOOD, GOOD)])
    assert len(r) == 4 and reward.stats["comparisons"] == 2 and sum(reward.stats["answers"].values()) == 4
    for i in range(2):  # a win (1/0), or a tie (0.5 each, the rule breaking it by at most TIE_BREAK)
        assert r[i] + r[i + 2] == pytest.approx(1.0) and (r[i] in (0.0, 1.0) or abs(r[i] - 0.5) <= feedback.TIE_BREAK)
    if reward.stats["ties"] == 2:  # the untrained judge: no verdict, so the rule decides (LIST < GOOD; GOOD = GOOD)
        assert r[0] < 0.5 < r[2] and r[1] == r[3] == 0.5
    # a reward model as the labeller: every reply scored once, no position, a pair per decided comparison
    model, tok = tiny
    folder = tmp_path / "rm"
    rm = rlhf.load_reward_base(rlhf.model_folder("tiny-llama"), tok, "cpu")
    rm.save_pretrained(folder)
    tok.save_pretrained(folder)
    assert rlhf.reward_model_problem(folder) == ""
    p = params.build("04_rlhf", {"feedback": "reward_model", "feedback_reward_model": str(folder),
                                 "pairs_per_prompt": 5, "template_pairs": 0})
    got = feedback.label_with(p, PROMPTS, SAMPLES, device="cpu")
    s = feedback.summary(got)
    assert s["position_bias"] is None and s["n_comparisons"] == 4 and len(got["pairs"]) == s["n_decided"]
    assert all(q["chosen_score"] > q["rejected_score"] for q in got["pairs"])


def test_the_judge_as_an_online_reward_compares_halves_or_groups_and_the_rule_breaks_its_ties():
    asked = []

    def ask(questions):  # A on the first prompt's questions (a bias: both orders -> tie), the rule's pick otherwise
        asked.extend(questions)
        out = []
        for q in questions:
            prompt, a, b = slots(q)
            sa, sb = rlhf.rule_score(prompt, a), rlhf.rule_score(prompt, b)
            out.append("A" if prompt == PROMPTS[0] else "A" if sa > sb else "B")
        return out

    f = feedback.reward_function(ask, "rules")
    conv = [[{"role": "user", "content": q}] for q in PROMPTS]
    done = [[{"role": "assistant", "content": c}] for c in (LIST, GOOD, GOOD, LIST)]
    r = f(prompts=2 * conv, completions=done, completion_ids=[[1]] * 4, trainer_state=None)
    # online DPO: sample i against i + 2; prompt 1 a judge tie broken by the rule (GOOD scores higher), prompt 2 decided
    assert len(r) == 4 and len(asked) == 4
    assert r[0] < 0.5 < r[2] and r[0] + r[2] == pytest.approx(1.0) and abs(r[2] - 0.5) <= feedback.TIE_BREAK
    assert r[1] == 1.0 and r[3] == 0.0
    assert f.stats == {"comparisons": 2, "decided": 1, "ties": 1, "ties_broken_by_rule": 1,
                       "answers": {"first": 3, "second": 1, "tie": 0, "unparsed": 0}}
    # equal replies stay tied: TRL then keeps the first as chosen (>=)
    same = f(prompts=[PROMPTS[0]] * 2, completions=[GOOD, GOOD])
    assert same == [0.5, 0.5]
    # GRPO: each run of equal prompts, every two replies
    g = feedback.reward_function(ask, "rules", pairing="groups")
    r = g(prompts=[PROMPTS[1]] * 3 + [PROMPTS[0]], completions=[GOOD, LIST, REPEAT, GOOD])
    assert len(r) == 4 and r[0] == 1.0 and r[3] == 0.5 and g.stats["comparisons"] == 3
    with pytest.raises(ValueError, match="even"):
        f(prompts=PROMPTS[:1] * 3, completions=[GOOD] * 3)


def test_the_labeller_parameters_are_checked_naming_the_field(tmp_path):
    with pytest.raises(params.ParamError, match="feedback=.judge. and judge=''"):
        params.build("04_rlhf", {"feedback": "judge"})
    with pytest.raises(params.ParamError, match="set both, or neither"):
        params.build("04_rlhf", {"judge": "tiny-llama"})
    with pytest.raises(params.ParamError, match="feedback_reward_model"):
        params.build("04_rlhf", {"feedback": "reward_model"})
    with pytest.raises(params.ParamError, match="preferences file brings its own labels"):
        params.build("04_rlhf", {"feedback": "judge", "judge": "tiny-llama", "preferences": "x.jsonl"})
    with pytest.raises(params.ParamError, match="feedback: 'rubric' is not one of rule, judge, reward_model"):
        params.build("04_rlhf", {"feedback": "rubric"})
    # preflight (rlhf.check_inputs): a judge that does not resolve; a folder that is no reward model
    with pytest.raises(params.ParamError, match=r"04_rlhf\.judge 'no-such/judge-x': the model spec does not resolve"):
        rlhf.check_inputs(params.build("04_rlhf", {"feedback": "judge", "judge": "no-such/judge-x"}))
    for folder, said in ((tmp_path / "none", "not found"),
                         (models.resolve("tiny-llama").path, "not a reward model")):
        p = params.build("04_rlhf", {"feedback": "reward_model", "feedback_reward_model": str(folder)})
        with pytest.raises(params.ParamError, match=f"04_rlhf.feedback_reward_model: .*{said}"):
            rlhf.check_inputs(p)
    rlhf.check_inputs(params.build("04_rlhf", {"feedback": "judge", "judge": "tiny-llama"}))
    with pytest.raises(params.ParamError, match="judge_verdict: 'logprob' is not one of answer, probability"):
        params.build("04_rlhf", {"judge_verdict": "logprob"})
    with pytest.raises(params.ParamError, match="feedback_trains: 'rows' is not one of methods, comparison"):
        params.build("04_rlhf", {"feedback_trains": "rows"})


def test_with_feedback_trains_comparison_online_dpo_is_rewarded_by_the_rule_not_the_labeller():
    kw = {"feedback": "judge", "judge": "tiny-llama", "methods": ["dpo", "online_dpo"]}
    with feedback.online_rewards(params.build("04_rlhf", {**kw, "feedback_trains": "comparison"}),
                                 device="cpu") as funcs:
        assert funcs == [rlhf.rule_reward]
    with feedback.online_rewards(params.build("04_rlhf", kw), device="cpu") as funcs:
        assert funcs != [rlhf.rule_reward] and hasattr(funcs[0], "stats")  # the judge


def test_what_training_on_each_gives_is_judged_by_the_rule_with_paired_intervals_and_said_in_findings():
    prompts = ["What is a volcano?"] * 6
    sft = [LIST] * 6
    arms = {"rule_labels": [LIST, GOOD, LIST, GOOD, LIST, LIST], "labeller_labels": [GOOD] * 6}
    out = feedback.outcome(prompts, [rlhf.rule_score(q, r) for q, r in zip(prompts, sft)], arms)
    # 2 wins and 4 ties (half each) of 6
    assert out["labeller_labels"]["win_rate_vs_sft"] == 1.0 and out["rule_labels"]["win_rate_vs_sft"] == 4 / 6
    d = out["labeller_vs_rule"]["rule"]["diff"]
    assert d["mean"] > 0 and d["n_eval"] == 6 and d["lo"] <= d["mean"] <= d["hi"]
    s = {"labeller": "judge x", "n_pairs": 3, "n_comparisons": 4, "n_decided": 4, "n_ties": 0, "tie_share": 0.0,
         "position_bias": 0.5, "answers": None, "agreement_with_rule": {"mean": 0.75, "lo": 0.25, "hi": 1.0,
                                                                        "n_eval": 4}, "agreement_by_source": {},
         "seconds": 1.0}
    m = feedback.metrics(s, out)
    assert "scores" not in m["rule_labels"] and m["rule_labels"]["reply_metrics"]["rule"]["diff"]["n_eval"] == 6
    f = m["findings"]
    assert "not distinguishable from a coin" in f[0] and "0 of 4 comparisons were ties" in f[1]
    assert "the labeller's pairs trained better by the rule" in f[2]
    from nbft import runs
    assert runs.vocabulary_problems("04_rlhf", {"feedback": m}) == []


def test_the_agreement_finding_says_how_far_above_a_coin_the_labeller_is():
    base = {"labeller": "judge j", "n_ties": 0, "n_comparisons": 10, "tie_share": 0.0, "n_pairs": 5}
    weak = feedback.findings({**base, "agreement_with_rule": {"mean": 0.55, "lo": 0.51, "hi": 0.58, "n_eval": 771}})[0]
    assert "above a coin (0.5) but only just: 45% of its decisions go against the rule" in weak
    strong = feedback.findings({**base, "agreement_with_rule": {"mean": 0.83, "lo": 0.80, "hi": 0.85, "n_eval": 792}})[0]
    assert "it mostly prefers what the rule prefers" in strong
    coin = feedback.findings({**base, "agreement_with_rule": {"mean": 0.52, "lo": 0.45, "hi": 0.58, "n_eval": 90}})[0]
    assert "not distinguishable from a coin" in coin
