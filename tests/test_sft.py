"""nbft.sft (stage 02's glue): findings, the unfiltered arm, and where its data parameters come from."""
import pytest

from nbft import data, params, runs, sft, train


def test_findings_follow_the_numbers():
    base = {"task_score": 0.0, "answer_accuracy": 0.3, "ppl_general": 10.0, "general_qa": 0.9}
    good = {"task_score": 1.0, "answer_accuracy": 0.3, "ppl_general": 12.0, "general_qa": 0.9}
    text = " ".join(sft.findings(base, good, {}, {16: 0.2, 64: 0.95}, {}, (30.0, 10.0)))
    assert "was learned" in text and "rose (worse)" in text and "64 clean examples were enough" in text
    assert "fell (better)" in text
    bad = {**good, "task_score": 0.05}
    assert "was not learned" in " ".join(sft.findings(base, bad, {}, {}, {}, None))


def test_findings_words_move_with_the_thresholds(monkeypatch):
    base = {"task_score": 0.0, "answer_accuracy": 0.3, "ppl_general": 10.0, "general_qa": 0.9}
    after = {**base, "task_score": 0.85}
    assert "only partly learned" in sft.findings(base, after, {}, {}, {}, None)[0]
    monkeypatch.setitem(sft.THRESHOLDS, "learned", 0.8)
    assert "was learned" in sft.findings(base, after, {}, {}, {}, None)[0]


def test_unfiltered_sample_keeps_junk_but_not_held_out_prompts(tokenizer):
    dp = params.DataPrepParams(model="tiny-llama")
    prep = data.prepare(dp, tokenizer)
    held = {r["prompt"] for r in prep.splits["test"]}
    pool = sft.unfiltered_pool(dp, tokenizer, held)
    assert not held & {r["prompt"] for r in pool}
    assert not {q.lower() for q in held} & {r["prompt"].lower() for r in pool}  # near-duplicates too
    sample, n_bad = sft.sample_unfiltered(dp, tokenizer, held, 200, seed=0)
    assert len(sample) == 200 and n_bad > 0


def test_unfiltered_arm_draws_from_the_data_01_prepared(runs_dir, tokenizer):
    """Bug: 02's clean-vs-unfiltered arm drew "unfiltered" examples from the default demo (json_qa) even when
    01_data_prep ran on other data in the same run, so the two arms compared different data."""
    dp = params.DataPrepParams(model="tiny-llama", n_examples=60, demo_tasks=["uppercase", "sort_numbers"],
                               run_name="r")
    run01 = runs.open_run(dp, "01_data_prep")
    prep = data.prepare(dp, tokenizer)
    data.save_splits(prep.splits, run01.artifacts, data.data_card(dp, prep.splits, prep.n_removed_duplicates,
                                                                 prep.removed_by_filter))
    p = params.SFTParams(model="tiny-llama", run_name="r")
    run02 = runs.open_run(p, "02_sft")
    used = data.data_params_for(run02, p)
    assert used.demo_tasks == ["uppercase", "sort_numbers"] and used.n_examples == 60
    sample, _ = sft.sample_unfiltered(used, tokenizer, {r["prompt"] for r in prep.splits["test"]}, 30)
    assert {r["task"] for r in sample} == {"uppercase", "sort_numbers"}
    # a run without 01_data_prep: its defaults, with this stage's common parameters
    alone = data.data_params_for(runs.open_run(params.SFTParams(model="tiny-llama", seed=3), "02_sft"),
                                 params.SFTParams(model="tiny-llama", seed=3))
    assert alone.demo_tasks == ["json_qa"] and alone.seed == 3


def test_trained_frees_the_model_when_the_block_ends(tokenizer):
    import torch

    prep = data.prepare(params.DataPrepParams(model="tiny-llama", n_examples=24), tokenizer)
    p = params.SFTParams(model="tiny-llama", precision="fp32", max_length=64, lora_r=4)
    with train.trained(p, tokenizer, prep.splits["train"][:8], scope="full", max_steps=1) as r:
        kept = r.model  # a name that outlives the block must not keep the weights alive
        weight = next(kept.parameters())
        assert weight.device.type == "cpu" and r.steps == 1 and r.seconds > 0
    assert r.model is None and r.trainer is None and r.steps == 1
    assert next(kept.parameters()).device == torch.device("meta")
    with pytest.raises((NotImplementedError, RuntimeError)):
        kept(torch.tensor([[1, 2]]))
