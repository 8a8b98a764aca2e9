"""nbft.harness: lm-evaluation-harness on the model in memory, nbft's bundled task, and the preflight checks."""
import copy

import pytest
import torch

from nbft import corpora, data, harness, params


def test_bundled_task_is_the_general_questions_as_multiple_choice():
    recs = harness.general_qa_records()
    assert [r["question"] for r in recs] == [q for q, _ in corpora.GENERAL_QA]
    for r, (_, accepted) in zip(recs, corpora.GENERAL_QA):
        assert len(set(r["choices"])) == 4 and r["choices"][r["answer"]] == accepted[0]
        assert not set(r["choices"]) - {r["choices"][r["answer"]]} & set(accepted)  # no distractor is also right
    assert harness.general_qa_records() == recs  # the same choices, in the same order, every run
    assert {r["answer"] for r in recs} == {0, 1, 2, 3}  # the right answer is not always in one place
    capitals = [r for r in recs if r["question"].startswith("What is the capital of")]
    capital_answers = {a[0] for q, a in corpora.GENERAL_QA if q.startswith("What is the capital of")}
    assert capitals and all(set(r["choices"]) <= capital_answers for r in capitals)  # distractors of the same kind


def test_bundled_task_runs_offline_on_the_model_in_memory_plain_and_peft(tiny, capsys):
    from peft import LoraConfig, get_peft_model

    model, tok = tiny
    n = len(corpora.GENERAL_QA)
    full = harness.benchmark(model, tok, ["nbft_general_qa"])["nbft_general_qa"]
    assert capsys.readouterr().err == ""  # no progress bars or warnings in the notebook
    assert full["metric"] == "acc" and full["n_eval"] == n == len(full["scores"])
    assert 0 <= full["lo"] <= full["mean"] <= full["hi"] <= 1 and full["stderr"] > 0
    assert full["mean"] == pytest.approx(sum(full["scores"]) / n)

    base = harness.benchmark(model, tok, ["nbft_general_qa"], limit=6)["nbft_general_qa"]
    assert base["n_eval"] == 6 and base["scores"] == full["scores"][:6]  # the first 6 questions, scored the same
    tuned = get_peft_model(copy.deepcopy(model), LoraConfig(r=4, target_modules=["q_proj", "v_proj", "o_proj"]))
    torch.manual_seed(0)
    for name, w in tuned.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(w, std=1.0)  # an adapter that changes the model a lot
    tuned.eval()
    after = harness.benchmark(tuned, tok, ["nbft_general_qa"], limit=6)["nbft_general_qa"]
    with tuned.disable_adapter():
        assert harness.benchmark(tuned, tok, ["nbft_general_qa"], limit=6)["nbft_general_qa"]["scores"] == base["scores"]
    table = harness.compare({"nbft_general_qa": base}, {"nbft_general_qa": after})
    row = table["nbft_general_qa"]
    assert row["diff"]["mean"] == pytest.approx(after["mean"] - base["mean"]) and row["diff"]["n_eval"] == 6
    assert row["diff"]["lo"] <= row["diff"]["mean"] <= row["diff"]["hi"]
    shown = harness.rows(table)[0]
    assert shown["task"] == "nbft_general_qa" and shown["metric"] == "acc" and shown["n"] == 6
    assert "scores" not in harness.record(table)["nbft_general_qa"]
    assert harness.sentences(table)[0].startswith("Benchmark nbft_general_qa (acc)")


def test_a_name_that_is_no_task_is_refused_with_the_closest_one():
    harness.check(["nbft_general_qa"])  # nbft's own: no lm-eval index needed
    with pytest.raises(params.ParamError, match="'nbft_general_q' is neither .* did you mean 'nbft_general_qa'"):
        harness.check(["nbft_general_q"])
    with pytest.raises(params.ParamError, match="'hellaswg' is neither .* did you mean 'hellaswag'"):
        harness.check(["hellaswg"])


@pytest.fixture()
def empty_cache(tmp_path, monkeypatch):
    import datasets

    cache = tmp_path / "datasets"
    cache.mkdir()
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    return cache


def test_a_hub_task_offline_is_checked_against_the_local_cache(empty_cache, monkeypatch):
    with pytest.raises(data.DataError, match="task 'arc_easy' needs the Hugging Face dataset 'allenai/ai2_arc' "
                                             "\\(config 'ARC-Easy'\\), which is not in the local datasets cache"):
        harness.check(["nbft_general_qa", "arc_easy"])
    (empty_cache / "allenai___ai2_arc" / "ARC-Easy" / "0.0.0" / "abc").mkdir(parents=True)
    harness.check(["arc_easy"])  # cached: datasets loads it offline
    with pytest.raises(data.DataError, match="task 'ai2_arc' needs .*'allenai/ai2_arc' \\(config 'ARC-Challenge'\\)"):
        harness.check(["ai2_arc"])  # a tag: each of its tasks is checked, and another config is not this one
    (empty_cache / "allenai___ai2_arc" / "ARC-Challenge" / "0.0.0" / "abc").mkdir(parents=True)
    harness.check(["ai2_arc"])
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "0")  # online: the hub answers when the notebook runs
    harness.check(["hellaswag"])


def test_nbft_run_exits_2_naming_the_task(runs_dir, capsys, root, empty_cache):
    from nbft import cli

    smoke = str(root / "params" / "smoke.yaml")
    rc = cli.main(["run", "--params", smoke, "--set", "02_sft.benchmarks=[hellaswag]"])
    err = capsys.readouterr().err
    assert rc == cli.EXIT_BAD_INPUT and "02_sft.benchmarks: task 'hellaswag' needs the Hugging Face dataset " \
                                      "'Rowan/hellaswag'" in err and "HF_HUB_OFFLINE=1" in err
    rc = cli.main(["run", "--params", smoke, "--set", "02_sft.benchmarks=[nbft_general_qa, arc_eazy]"])
    err = capsys.readouterr().err
    assert rc == cli.EXIT_BAD_INPUT and "02_sft.benchmarks: 'arc_eazy' is neither" in err and "'arc_easy'" in err
    assert not runs_dir.exists() or not list(runs_dir.iterdir())
