"""The multi-turn demo task (json_followup: a second turn that asks about the first reply) and 02's comparison of
training every assistant turn vs only the last on it."""
from nbft import data, params, runs, scoring, sft, tasks


def test_json_followup_chats_and_their_check_need_the_first_reply():
    recs = tasks.demo_dataset(60, 0, ["json_followup"])
    clean = [r for r in recs if r["messages"][-1]["content"].startswith("The ")]
    assert len(clean) >= 50 and {r["check"] for r in recs} == {"plain"}
    kinds = set()
    for r in clean:
        m = r["messages"]
        assert [x["role"] for x in m] == ["user", "assistant", "user", "assistant"]
        assert tasks.check_json_answer(m[1]["content"])  # turn 1 is the demo's JSON answer
        assert r["reference"] == tasks.followup_reference(m[2]["content"], m[1]["content"])
        assert tasks.passes(m[3]["content"], r)
        assert not tasks.check_plain(m[1]["content"], r["reference"])  # repeating the JSON is not the follow-up's reply
        kinds.add(tasks.FOLLOWUPS[m[2]["content"]])
        # the reply of a chat whose first reply said something else fails: the second turn depends on the first
        other = next(o for o in clean if tasks.normalize(o["reference"]) != tasks.normalize(r["reference"])
                     and tasks.FOLLOWUPS[o["messages"][2]["content"]] == tasks.FOLLOWUPS[m[2]["content"]])
        assert not tasks.passes(other["messages"][3]["content"], r)
    assert kinds == {"topic", "answer"}
    assert tasks.followup_reference("Which topic was that?", '{"topic": "math", "answer": "4"}') == "math"
    assert tasks.followup_reference("Which topic was that?", "The answer is 4.") is None  # no JSON: no right answer
    assert tasks.followup_reference("What is 2 plus 2?", '{"topic": "math", "answer": "4"}') is None


def test_json_followup_goes_through_data_prep(tokenizer):
    prep = data.prepare(params.DataPrepParams(model="tiny-llama", n_examples=60, demo_tasks=["json_followup"]),
                        tokenizer)
    assert prep.removed_by_filter == {"empty": 3, "too_short": 3, "too_long": 3, "off_format": 0}
    kept = [r for s in data.SPLITS for r in prep.splits[s]]
    assert len(kept) == 60 and all(data.n_replies(r) == 2 and tasks.passes(data.reply_of(r), r) for r in kept)
    assert tasks.resolve_check("auto", kept) == "plain" and scoring.resolve(["auto"], "plain") == ["task", "length"]


def fake(scores: dict) -> dict:
    """A turns_comparison result from per-example scores {arm: {turn: [0/1, ...]}}."""
    arms = {a: {**{t: scoring.summary(s[t]) for t in sft.TURNS}, "seconds": None if a == "base" else 1.0,
                "scores": s, "replies": {t: [""] * len(s[t]) for t in sft.TURNS}} for a, s in scores.items()}
    return {"n_train": 8, "n_eval": 20, "steps": 3, "arms": arms, "questions": ["q"] * 20,
            "diff": {t: scoring.paired(scores["last"][t], scores["all"][t]) for t in sft.TURNS}}


def test_turns_findings_follow_the_numbers():
    zero, one = [0.0] * 20, [1.0] * 20
    half = [1.0, 0.0] * 10
    t = fake({"base": {"turn1": zero, "turn2": zero, "chained": zero},
              "all": {"turn1": one, "turn2": half, "chained": half},
              "last": {"turn1": zero, "turn2": one, "chained": zero}})
    out = sft.turns_findings(t)
    assert "all 0.50, last 1.00" in out[0]
    assert out[1].startswith("Turn 2 with the reference turn 1 in context: last-turn training wins, -0.50")
    assert "turn 1 (the JSON answer) all-turns training wins, +1.00" in out[2]
    assert "own turn 1 all-turns training wins, +0.50" in out[2]
    flat = fake({a: {"turn1": zero, "turn2": zero, "chained": zero} for a in sft.TURN_ARMS})
    assert "not learned on this budget" in sft.turns_findings(flat)[1]
    assert "no difference larger than its interval" in sft.turns_findings(flat)[1]
    assert sft.turns_findings(None) == []


def test_turns_comparison_on_the_tiny_model(tokenizer):
    p = params.SFTParams(model="tiny-llama", precision="fp32", max_length=128, lora_r=4, lora_alpha=8, batch_size=4,
                         max_new_tokens=4, eval_batch_size=8, turns_examples=8, turns_epochs=1.0, turns_eval=4)
    assert sft.turns_comparison(params.SFTParams(model="tiny-llama"), tokenizer) is None  # off by default
    t = sft.turns_comparison(p, tokenizer)
    assert (t["n_train"], t["n_eval"], t["steps"]) == (8, 4, 2) and list(t["arms"]) == ["base", "all", "last"]
    for arm, row in t["arms"].items():
        for turn in sft.TURNS:
            s = row[turn]
            assert s["n_eval"] == 4 and 0 <= s["lo"] <= s["mean"] <= s["hi"] <= 1 and len(row["replies"][turn]) == 4
        assert (row["seconds"] is None) == (arm == "base") and (row["seconds"] is None or row["seconds"] > 0)
    rec = sft.turns_recorded(t)
    assert "questions" not in rec and all(set(r) == {*sft.TURNS, "seconds"} for r in rec["arms"].values())
    assert runs.vocabulary_problems("02_sft", {"turns": rec}) == []
    assert len(sft.turns_rows(t)) == 3 and len(sft.turns_replies(t, 2)) == 2 and len(sft.turns_findings(t)) == 3


def test_turns_data_holds_out_distinct_first_questions(tokenizer):
    train_set, held = sft.turns_data(tokenizer, 30, 10, seed=1)
    firsts = [r["messages"][0]["content"] for r in train_set + held]
    assert len(train_set) == 30 and len(held) == 10 and len(set(firsts)) == 40
    assert all(data.n_replies(r) == 2 and r["completion"].startswith("The ") for r in held)
    assert sft.turns_data(tokenizer, 30, 10, seed=1) == (train_set, held)
