"""nbft.rlhf: the rule, prompts, pairs, and each TRL trainer for a step or two on tiny-llama."""
import json

import pytest
import torch

from nbft import data, models, params, rlhf, scoring

GOOD = "A volcano is a mountain where molten rock from inside the Earth comes out."
Q = "What is a volcano?"


# ---------------------------------------------------------------- the rule

@pytest.mark.parametrize("reply, failing", [
    (GOOD, set()),
    (json.dumps({"topic": "science", "answer": GOOD}), set()),  # JSON wrapper: the answer field is judged
    ('{"topic": "science", "answer": "lava"}', {"complete", "length", "prose", "on_topic"}),
    ('{"topic": "science", "answer": "A volcano is a mountain that', {"complete"}),  # cut-off JSON
    (" ".join([GOOD] * 3), {"length", "no_repeat"}),
    ("Here are the key facts about volcanoes:\n- hot\n- tall.", {"plain"}),
    ("That is a good question, and many people ask it.", {"on_topic"}),
    ("volcano 42 17 99 3 8 12.", {"prose"}),
    ("A volcano " + "is a tall mountain made of many layers of rock and ash " * 5 + "indeed.", {"length", "no_repeat"}),
])
def test_rule_checks_fail_exactly_where_expected(reply, failing):
    checks = rlhf.rule_checks(Q, reply)
    assert set(checks) == set(rlhf.RULE)
    assert {k for k, v in checks.items() if v < 1.0} == failing
    score = rlhf.rule_score(Q, reply)
    assert 0.0 <= score <= 1.0 and (score == 1.0) == (not failing)


def test_rule_reward_reads_the_answer():
    assert rlhf.rule_reward([[{"role": "user", "content": Q}]], [[{"role": "assistant", "content": GOOD}]]) == [1.0]


def test_prompts_hold_out_whole_topics():
    a, b = rlhf.rlhf_prompts(0), rlhf.rlhf_prompts(0)
    assert a == b and len(a["train"]) > 100 and len(a["heldout"]) >= 40
    topics = lambda qs: {t for t in rlhf._THINGS + rlhf._ANIMALS + rlhf._ACTIVITIES for q in qs if t in q}
    assert not topics(a["train"]) & topics(a["heldout"])
    assert rlhf.rlhf_prompts(1)["heldout"] != a["heldout"]


def test_build_pairs_ranks_by_the_rule_with_margin():
    prompts = [Q, "What do owls eat?"]
    samples = [[GOOD, "lava", '{"answer": "hot"}', GOOD],
               ["Owls eat mice, insects and small birds that they catch at night.", "mice", "Owls"]]
    pairs = rlhf.build_pairs(prompts, samples, margin=0.15, pairs_per_prompt=2, templates_per_prompt=2)
    sampled = [q for q in pairs if q["source"] == "samples"]
    assert 0 < len(sampled) <= 4 and any(q["source"].startswith("template:") for q in pairs)
    for q in pairs:
        assert q["chosen_score"] >= q["rejected_score"] + 0.15
        assert q["chosen_score"] == rlhf.rule_score(q["prompt"], q["chosen"])
        assert q["rejected_score"] == rlhf.rule_score(q["prompt"], q["rejected"])
        assert q["chosen"] != q["rejected"]
    assert sampled[0]["chosen"] == GOOD and sampled[0]["rejected_score"] == min(rlhf.rule_score(Q, s) for s in samples[0])
    assert rlhf.build_pairs(prompts, samples, margin=2.0, templates=False) == []


def test_load_pairs_plain_chat_and_errors(tmp_path):
    f = tmp_path / "prefs.jsonl"
    f.write_text(json.dumps({"prompt": Q, "chosen": GOOD, "rejected": "lava"}) + "\n"
                 + json.dumps({"prompt": [{"role": "user", "content": Q}],
                               "chosen": [{"role": "assistant", "content": GOOD}],
                               "rejected": [{"role": "assistant", "content": "lava"}]}) + "\n")
    pairs = rlhf.load_pairs(f)
    assert [q["chosen"] for q in pairs] == [GOOD, GOOD] and pairs[0]["chosen_score"] == 1.0
    ds = rlhf.to_preference_dataset(pairs)
    assert ds[1]["prompt"] == [{"role": "user", "content": Q}] and ds[0]["rejected"][0]["content"] == "lava"
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": Q, "chosen": GOOD, "rejected": "x"}) + "\n" + json.dumps({"prompt": Q, "chosen": GOOD}) + "\n")
    with pytest.raises(data.DataError, match=r"bad.jsonl line 2: missing field 'rejected'"):
        rlhf.load_pairs(bad)
    bad.write_text('{"prompt": "q", "chosen": "a", "rejected": "b"}\n{oops\n')
    with pytest.raises(data.DataError, match=r"bad.jsonl line 2: malformed JSON"):
        rlhf.load_pairs(bad)
    bad.write_text(json.dumps({"prompt": Q, "chosen": "", "rejected": "b"}) + "\n")
    with pytest.raises(data.DataError, match=r"line 1: field 'chosen' must be a non-empty string"):
        rlhf.load_pairs(bad)


def test_judge_win_rate_and_ci():
    j = rlhf.judge([Q, Q], [GOOD, "lava"])
    assert j["scores"][0] == 1.0 and j["pass_rate"] == 0.5 and 0 < j["rule_score"] < 1
    assert rlhf.win_rate([1.0, 0.5, 0.2], [0.5, 0.5, 0.9]) == pytest.approx(0.5)
    ci = scoring.summary([0.0, 1.0] * 20)  # the interval 04's table shows for a rule score (nbft.scoring)
    assert 0.3 < ci["lo"] < 0.5 < ci["hi"] < 0.7


def _row(kind, win, ci, kl=None, words=2.0, tri=1.0, lr=2e-4):
    return dict(kind=kind, win_rate_vs_sft=win, win_ci=ci, kl=kl, mean_words=words, distinct_trigrams=tri,
                learning_rate=lr, rule_score=0.6)


def _metrics():
    return dict(rm_accuracy=0.9, rm_accuracy_train=0.95, n_pairs_heldout=50, n_pairs_train=200, rl_algo="grpo",
                rl_mean_reward_before=-1.0, rl_mean_reward_after=0.5, rl_kl=0.01, rule_score_sft=0.5, n_eval=40,
                mean_words={"sft": 2}, methods={"dpo": _row("offline", 0.3, [0.2, 0.4], tri=0.5),
                                                "orpo": {**_row("offline", 0.55, [0.45, 0.65], lr=8e-6),
                                                         "tie_share": 0.3},
                                                "grpo": _row("rl", 0.8, [0.7, 0.9], kl=0.01, words=12.0)})


def test_findings_follow_the_numbers():
    m = _metrics()
    found = rlhf.findings(m)
    text = " ".join(found)
    assert "at or above the 85% bar" in text and "GRPO raised" in text and "KL of 0.0100" in text
    grpo, dpo, orpo = (next(f for f in found if f.startswith(k)) for k in ("GRPO (rl", "DPO (offline", "ORPO"))
    assert "GRPO (rl, lr 0.0002) beats the SFT start" in grpo and "win rate 0.80 (95% CI 0.70-0.90)" in grpo
    assert "KL to the start 0.0100" in grpo and "longer" in grpo and "noise" not in grpo
    assert "DPO (offline, lr 0.0002) does not beat" in dpo and "repetitive" in dpo and "KL" not in dpo
    assert "ORPO (offline, lr 8e-06) is not shown to beat" in orpo and "within the noise" in orpo  # 0.55, 0.45-0.65
    assert "30% of prompts tied" in orpo and "tied" not in dpo
    assert "by win rate: grpo 0.80, orpo 0.55, dpo 0.30; 2 above 0.5 (grpo, orpo), 1 of them beyond the " \
           "interval (grpo)" in text
    m.update(rm_accuracy=0.6, rl_mean_reward_after=-2.0)
    text = " ".join(rlhf.findings(m))
    assert "below the 85% bar" in text and "GRPO did not raise" in text
    m.update(rl_algo=None, methods={"dpo": m["methods"]["dpo"]})  # no RL row trained: no RL sentence, no comparison
    found = rlhf.findings(m)
    assert not any("GRPO" in f or "Across" in f for f in found) and any(f.startswith("DPO (offline") for f in found)



def test_each_policy_against_the_start_on_the_stages_own_scores_with_intervals():
    """Issue 30: 04's held-out prompts have no references; its reply metrics are the rule's and the reward model's
    scores and the length, each policy against the SFT start with a paired interval, in 02's shape."""
    prompts = [Q] * 20
    replies = {"sft": ["lava"] * 20, "rl": [GOOD] * 20, "dpo": ["lava"] * 19 + [GOOD]}
    judged = {k: {**rlhf.judge(prompts, v), "reward": [0.1 * i for i in range(20)]} for k, v in replies.items()}
    t = rlhf.reply_tables(prompts, replies, judged)
    assert list(t) == ["rl", "dpo"] and list(t["rl"]) == ["rule", "reward", "length"]
    assert t["rl"]["rule"]["after"]["mean"] == pytest.approx(judged["rl"]["rule_score"])
    assert scoring.clear(t["rl"]["rule"]["diff"]) and not scoring.clear(t["dpo"]["rule"]["diff"])
    assert t["rl"]["reward"]["diff"]["mean"] == 0 and t["rl"]["length"]["higher_is_better"] is None
    m = {**_metrics(), "methods": {}, "reply_metrics": {k: scoring.recorded(v) for k, v in t.items()}}
    rule = next(f for f in rlhf.findings(m) if f.startswith("rule vs sft"))
    assert "better for rl" in rule and "no change larger than its interval for dpo" in rule


# ---------------------------------------------------------------- trainers on tiny-llama

def _p(**kw):
    base = dict(model="tiny-llama", lora_r=4, lora_alpha=8, max_length=64, max_new_tokens=8, rm_batch_size=4,
                rl_steps=2, rl_prompts_per_step=2, num_generations=2, dpo_batch_size=4, precision="fp32")
    return params.RLHFParams(**{**base, **kw})


def _pairs(n=8):
    return [dict(prompt=f"What is item {i}?", chosen=f"Item {i} is a small thing that people use every day.",
                 rejected="x", chosen_score=1.0, rejected_score=0.2, source="test") for i in range(n)]


@pytest.fixture(scope="module")
def tiny_folder():
    return rlhf.model_folder("tiny-llama")


def test_reward_model_learns_a_separable_preference(tiny_folder):
    tok = models.load_tokenizer(tiny_folder)
    rm = rlhf.load_reward_base(tiny_folder, tok)
    pairs = _pairs(16)
    before = rlhf.pair_accuracy(rm, tok, pairs)[0]
    run = rlhf.train_reward_model(rm, tok, pairs, _p(rm_epochs=4.0, rm_learning_rate=5e-3, rm_scope="full"))
    acc, chosen, rejected = rlhf.pair_accuracy(run.model, tok, pairs)
    assert acc == 1.0 and min(chosen) > max(rejected), (before, acc)
    assert any("loss" in r for r in run.log_history)


def test_reward_model_lora_trains_head_and_adapters_then_merges(tiny_folder):
    tok = models.load_tokenizer(tiny_folder)
    fresh = dict(rlhf.load_reward_base(tiny_folder, tok).named_parameters())
    rm = rlhf.load_reward_base(tiny_folder, tok)
    run = rlhf.train_reward_model(rm, tok, _pairs(4), _p(rm_learning_rate=1e-2))
    assert not hasattr(run.model, "peft_config")  # merged: a plain scorer
    after = dict(run.model.named_parameters())
    assert set(after) == set(fresh)
    changed = {n for n in fresh if not torch.equal(fresh[n], after[n])}
    assert "score.weight" in changed and any("q_proj" in n for n in changed)
    assert not any("embed_tokens" in n or "mlp" in n for n in changed)  # LoRA on attention only (lora_target)
    with pytest.raises(ValueError, match="no training pairs"):
        rlhf.train_reward_model(rm, tok, [], _p())


@pytest.mark.parametrize("name", list(rlhf.METHODS))
def test_every_method_row_trains_a_lora_policy_from_the_same_start(tiny_folder, name, tmp_path):
    """Issue 33: each row of the table, 2 steps on tiny-llama through ``train_method``; the base stays, the adapter
    moves; a row's record has its KL and sampled reward where its trainer logs them. The RL rows add the rule as a
    second reward; the first row's saved adapter loads as the same model."""
    tok = models.load_tokenizer(tiny_folder)
    policy, _ = models.load_model(tiny_folder, "cpu", tokenizer=tok)
    before = {n: q.detach().clone() for n, q in policy.named_parameters()}
    m = rlhf.METHODS[name]
    p = _p(dpo_epochs=1.0, rule_reward_weight=1.0, **{m.learning_rate: 1e-2})  # 8 pairs, 4 a step: 2 steps
    rm = rlhf.load_reward_base(tiny_folder, tok) if m.kind == "rl" else None
    run = rlhf.train_method(name, policy, tok, p, pairs=_pairs(8), prompts=[q["prompt"] for q in _pairs(4)],
                            reward_model=rm, reward_funcs=[rlhf.rule_reward])
    assert run.steps == (4 if m.reads == "singles" else 2) and any("loss" in r for r in run.log_history)  # kto: 16 singles
    rec = rlhf.training_record(name, run, 123.0, p)
    assert rec["kind"] == m.kind and rec["learning_rate"] == 1e-2 and rec["steps"] == run.steps
    assert (rec["kl"] is not None) == (m.kl_key is not None) and (rec["train_reward_last"] is None) == (m.reward_key is None)
    assert (m.kind == "rl") == any("rewards/rule_reward/mean" in r for r in run.log_history)  # rule_reward_weight
    assert hasattr(run.model, "peft_config") and not run.model.training
    for n, q in run.model.get_base_model().named_parameters():  # the base weights stay; adapters moved
        if "lora_" not in n:
            assert torch.equal(q, before[n.replace("base_layer.", "")]), n
    assert any(not torch.all(q == 0) for n, q in run.model.named_parameters() if "lora_B" in n)
    if name == next(iter(rlhf.METHODS)):
        saved = rlhf.save_policy(run.model, tok, tmp_path / f"{name}_policy", tiny_folder)  # its adapter, merged on load
        plain = models.load_model(str(saved), "cpu", tokenizer=tok)[0]
        ids = tok(["What is item 1?"], return_tensors="pt")
        with torch.no_grad():
            assert (plain(**ids).logits - run.model(**ids).logits.float()).abs().max().item() < 1e-3


def test_the_method_table_and_what_each_row_needs():
    assert list(rlhf.METHODS) == list(params.RLHF_METHODS)
    assert {m.kind for m in rlhf.METHODS.values()} == {"offline", "online", "rl"}
    fields = set(params.field_names(params.RLHFParams))
    assert all(m.learning_rate in fields for m in rlhf.METHODS.values())
    assert [k for k, m in rlhf.METHODS.items() if not m.needs_reference] == ["orpo", "simpo"]
    assert rlhf.ordered(["grpo", "dpo", "grpo"]) == ["dpo", "grpo"]  # table order, once each
    with pytest.raises(ValueError, match="methods: 'ppo' is not one of dpo, .*no value-network PPO"):
        rlhf.ordered(["ppo"])
    with pytest.raises(ValueError, match="dpo reads pairs"):
        rlhf.train_method("dpo", None, None, _p(), pairs=[])
    with pytest.raises(ValueError, match="grpo trains against a reward model"):
        rlhf.train_method("grpo", None, None, _p(), prompts=["q"])
    with pytest.raises(ValueError, match="online_dpo ranks its own samples: give reward_funcs"):
        rlhf.train_method("online_dpo", None, None, _p(), prompts=["q"])
    with pytest.raises(ValueError, match="did you mean 'simpo'"):
        params.check_field(params.RLHFParams, "methods", ["simpoo"])


def test_method_metrics_per_row():
    prompts = [Q] * 20
    judged = {"sft": rlhf.judge(prompts, ["lava"] * 20), "dpo": rlhf.judge(prompts, [GOOD] * 10 + ["lava"] * 10)}
    for j in judged.values():
        j["reward"] = [0.5] * 20
    rec = dict(kind="offline", seconds=3.0, steps=2, peak_mem_mb=100.0, learning_rate=2e-4, needs_reference=True,
               kl=None, train_reward_first=None, train_reward_last=None)
    row = rlhf.method_metrics(judged, {"dpo": rec})["dpo"]
    assert row["win_rate_vs_sft"] == pytest.approx(0.75) and row["win_ci"][0] < 0.75 < row["win_ci"][1]
    assert row["rule_ci"][0] < row["rule_score"] < row["rule_ci"][1] and row["reward_model"] == 0.5
    assert row["kl"] is None and row["seconds"] == 3.0 and row["mean_words"] > 0
    assert row["tie_share"] == 0.5  # the 10 "lava" replies score as the start's


def test_starting_policy(runs_dir, tmp_path):
    from nbft import runs

    p = _p(run_name="r1")
    run = runs.open_run(p, "04_rlhf")
    spec, words = rlhf.starting_policy(run, p)
    assert spec == "tiny-llama" and "no 02_sft model" in words
    adapter = run.path / "artifacts" / "02_sft" / "adapter"
    adapter.mkdir(parents=True)
    for f in ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "nbft_base.json"):
        (adapter / f).write_text("{}")
    assert rlhf.starting_policy(run, p)[0] == str(adapter)
    assert rlhf.starting_policy(run, _p(run_name="r1", policy="base"))[0] == "tiny-llama"
    with pytest.raises(ValueError, match="not auto, base, or a model folder"):
        rlhf.starting_policy(run, _p(policy=str(tmp_path / "nowhere")))


def test_log_mean_and_summary_rows():
    log = [{"kl": 0.0}, {"loss": 1.0}, {"kl": 0.2}, {"kl": 0.4}, {"kl": 0.6}]
    assert rlhf.log_mean(log, "kl", 0.5) == pytest.approx(0.5) and rlhf.log_mean(log, "kl", 0.5, first=True) == pytest.approx(0.1)
    assert rlhf.log_mean(log, "reward") is None
    judged = {"sft": {**rlhf.judge([Q, Q], ["lava", "lava"]), "reward": [0.0, 0.0]},
              "rl": {**rlhf.judge([Q, Q], [GOOD, "lava"]), "reward": [1.0, 0.0]}}
    rows = {r["policy"]: r for r in rlhf.summary_rows(judged)}
    assert rows["sft"]["win rate vs sft"] == 0.5 and rows["rl"]["win rate vs sft"] == 0.75
    assert rows["rl"]["reward model"] == 0.5 and rows["rl"]["passes every check"] == 0.5
    browse = rlhf.browse_rows([Q, Q], {"sft": ["lava", "lava"], "rl": [GOOD, "lava"]}, judged)
    assert browse[0]["rl"]["rule"] == 1.0 and browse[0]["sft"]["checks"]["complete"] == 0.0
