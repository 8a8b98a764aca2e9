"""02's single- vs multi-task comparison (seed 004): its data, its budget and its record on tiny-llama."""
import pytest

from nbft import data, params, runs, sft, tasks


def test_held_out_prompts_are_never_trained_on_and_both_arms_get_the_same_count(tokenizer):
    sets = sft.task_mix_sets(20, 4, tokenizer, seed=3)
    trained = {data.normalized_prompt(r) for r in sets["single"] + sets["mix"]}
    held = {data.normalized_prompt(r) for r in sets["heldout"]}
    assert not trained & held
    assert len(held) == len(sets["heldout"]) == 4 * len(tasks.TASKS)
    assert len(sets["single"]) == len(sets["mix"]) == 20
    assert {r["task"] for r in sets["single"]} == {sft.TASK_MIX_FOCUS}
    per_task = {t: sum(r["task"] == t for r in sets["mix"]) for t in tasks.TASKS}
    assert per_task == {t: 4 for t in tasks.TASKS}
    # clean only: every training reply passes its own check (no planted junk), and is rendered as 01 renders it
    assert all(tasks.passes(r["messages"][-1]["content"], r) for r in sets["single"] + sets["mix"])
    assert all(r["completion"].endswith(tokenizer.eos_token) for r in sets["mix"])
    # the held-out prompts do not move with the training size
    assert sft.task_mix_sets(10, 4, tokenizer, seed=3)["heldout"] == sets["heldout"]
    with pytest.raises(ValueError, match="one example per task"):
        sft.task_mix_sets(3, 4, tokenizer)
    with pytest.raises(params.ParamError, match="task_mix_examples"):
        params.build("02_sft", {"task_mix_examples": 3})


def test_the_comparison_on_tiny_llama_trains_both_arms_for_the_same_steps(tokenizer):
    p = params.SFTParams(model="tiny-llama", task_mix_examples=10, task_mix_heldout=2, batch_size=5, lora_r=4,
                         lora_alpha=8, max_length=96, max_new_tokens=4)
    assert sft.task_mix(params.SFTParams(model="tiny-llama"), tokenizer, "fp32") is None  # 0: skipped
    m = sft.task_mix(p, tokenizer, "fp32")
    arms = m["models"]
    assert m["steps"] == 2 and arms["single"]["steps"] == arms["mix"]["steps"] == 2 and arms["base"]["steps"] == 0
    assert arms["single"]["train_tasks"] == ["json_qa"] and arms["mix"]["train_tasks"] == list(tasks.TASKS)
    assert m["n_train"] == 10 and m["n_eval"] == 10 and m["n_focus_in_mix"] == 2
    for name, a in arms.items():
        assert set(a["interval_by_task"]) == set(tasks.TASKS), name
        for t, s in a["interval_by_task"].items():
            assert 0 <= s["lo"] <= s["mean"] <= s["hi"] <= 1 and s["n_eval"] == 2, (name, t)
            assert s["mean"] == a["task_score_by_task"][t]
        assert a["ppl_general"] > 1 and 0 <= a["general_qa"] <= 1 and 0 <= a["json_replies_elsewhere"] <= 1
        assert ("diff_by_task" in a) == (name != "base")
    assert -1 <= m["focus_diff"]["lo"] <= m["focus_diff"]["mean"] <= m["focus_diff"]["hi"] <= 1
    assert m["seconds"] >= arms["single"]["seconds"] + arms["mix"]["seconds"]
    assert not runs.vocabulary_problems("02_sft", {"task_mix": m})
    rows = sft.task_mix_rows(m)
    assert [r["model"] for r in rows] == list(sft.TASK_MIX_MODELS.values())
    assert all(set(tasks.TASKS) <= set(r) for r in rows)
    said = sft.task_mix_findings(m)
    assert len(said) == 3 and f"{arms['single']['ppl_general']:.2f}" in said[1]
    assert sft.task_mix_findings(None) == []


def _summary(mean, lo, hi, n=24):
    return {"mean": mean, "lo": lo, "hi": hi, "n_eval": n}


def _arm(scores, ppl, qa, json_share, diffs=None):
    return {"task_score": sum(scores.values()) / len(scores), "task_score_by_task": scores,
            "interval_by_task": {t: _summary(v, max(0, v - 0.1), min(1, v + 0.1)) for t, v in scores.items()},
            "ppl_general": ppl, "general_qa": qa, "json_replies_elsewhere": json_share, "train_tasks": [], "steps": 3,
            "seconds": 1.0, **({"diff_by_task": diffs} if diffs is not None else {})}


def test_findings_say_what_the_numbers_say():
    names = list(tasks.TASKS)
    base = {t: 0.5 for t in names}
    single = {**{t: 0.1 for t in names}, "json_qa": 1.0}
    mix = {**{t: 0.8 for t in names}, "json_qa": 0.9}
    diff = lambda a: {t: _summary(a[t] - 0.5, a[t] - 0.6, a[t] - 0.4) for t in names}  # noqa: E731
    m = {"n_train": 220, "steps": 28, "n_eval": 120, "focus": "json_qa", "n_focus_in_mix": 44, "tasks": names,
         "models": {"base": _arm(base, 20.0, 0.8, 0.0), "single": _arm(single, 25.0, 0.5, 0.9, diff(single)),
                    "mix": _arm(mix, 20.1, 0.8, 0.0, diff(mix))},
         "focus_diff": _summary(-0.1, -0.2, -0.02), "seconds": 100.0}
    first, alone, mixed = sft.task_mix_findings(m)
    assert "json_qa scored 1.00 [0.90, 1.00] trained alone vs 0.90 [0.80, 1.00]" in first
    assert "alone did better" in first
    assert "it lost sort_numbers, uppercase, count_items, reverse_list" in alone and "0.90 of its replies" in alone
    assert "general-text perplexity 20.00 -> 25.00 (rose (worse))" in alone
    assert "sort_numbers, uppercase, count_items, reverse_list rose" in mixed and "stayed about the same" in mixed
    m["focus_diff"] = _summary(0.0, -0.1, 0.1)
    assert "the mix did as well on json_qa" in sft.task_mix_findings(m)[0]
