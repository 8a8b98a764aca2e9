"""The metrics vocabulary (runs.VOCABULARY): one name for one measure in every stage, old runs read under the new
names (runs.upgrade). The smoke run's metrics are held to it in tests/test_pipeline.py."""
import json

import pytest

from nbft import runs

#: metrics.json sections as nbft wrote them before the vocabulary (issue 34): every drift the issue named.
OLD = {
    "02_sft": {"train_seconds": 41.4, "train_tokens_per_second": 258.5, "task_score_after": 1.0,
               "scope_comparison": {"lora": {"task_score": 1.0, "ppl_general_after": 20.1, "general_qa_after": 0.5,
                                             "seconds": 40.0}},
               "quality_comparison": {"clean": 1.0, "unfiltered": 0.95, "n_examples": 16}},
    "03_peft": {"methods": {"lora": {"status": "ok", "adapter_mb": 2.5, "task_score": 0.69}}},
    "04_rlhf": {"seconds": {"reward_model": 60.0, "rl": 200.0, "dpo": 98.7}, "rm_accuracy": 0.925},
    "05_rag_vs_ft": {"acc": {"rag": {"open": 0.83, "mc": 0.97}}, "acc_by_type": {"rag": {"town.river": 1.0}},
                     "n_train": 40, "n_documents": 40,
                     "paraphrase_runs": {"0": {"open": 0.0, "mc": 0.3, "texts": 40, "seconds": 50.0, "steps": 15}}},
    "06_classify": {"n_train": 128, "n_test": 96, "n_eval": 96, "methods": {"lora": {"accuracy": 0.729}}},
    "07_distill": {"teacher": {"params": 134515008, "size_mb": 513.2}, "student_base": {"params": 50000000},
                   "methods": {"imitation": {"params": 50000000, "style_gap_closed": 1.0}},
                   "imitation_data": {"n": 64, "seconds": 20.0}},
}


@pytest.mark.parametrize("stage", list(OLD))
def test_every_drift_the_issue_named_is_a_vocabulary_problem(stage):
    assert runs.vocabulary_problems(stage, OLD[stage]), stage


@pytest.mark.parametrize("stage", list(OLD))
def test_upgrade_reads_an_old_section_under_the_new_names(stage):
    new = runs.upgrade({stage: json.loads(json.dumps(OLD[stage]))})[stage]
    assert runs.vocabulary_problems(stage, new) == []


def test_upgrade_moves_values_and_leaves_the_file_alone():
    old = json.loads(json.dumps(OLD))
    new = runs.upgrade(old)
    assert old == OLD  # a copy
    assert new["02_sft"]["seconds"] == 41.4 and new["02_sft"]["tokens_per_second"] == 258.5
    assert new["02_sft"]["scope_comparison"]["lora"]["ppl_general"] == 20.1
    assert new["02_sft"]["quality_comparison"]["n_train"] == 16
    assert new["03_peft"]["methods"]["lora"]["size_mb"] == 2.5
    assert new["04_rlhf"]["seconds_by_part"] == OLD["04_rlhf"]["seconds"]
    assert new["04_rlhf"]["seconds"] == pytest.approx(358.7)
    assert new["05_rag_vs_ft"]["accuracy"]["rag"]["open"] == 0.83 and "n_documents" not in new["05_rag_vs_ft"]
    assert new["05_rag_vs_ft"]["paraphrase_runs"]["0"]["n_train"] == 40
    assert "n_test" not in new["06_classify"] and new["06_classify"]["n_eval"] == 96
    assert new["07_distill"]["methods"]["imitation"]["total_params"] == 50000000
    assert new["07_distill"]["imitation_data"]["n_train"] == 64
    assert runs.upgrade(new) == new  # a section in the new form stays as it is


@pytest.mark.parametrize("section, word", [
    ({"seconds": {"a": 1.0}}, "seconds"),  # a number, not a dict
    ({"methods": {"x": {"accuracy": 1.5}}}, "share"),
    ({"n_eval": 2.5}, "count"),
    ({"methods": {"x": {"task_score_after": 0.5}}}, "_before/_after"),
    ({"elapsed": 3.0}, "say 'seconds'"),
])
def test_a_vocabulary_name_means_one_kind_of_value(section, word):
    assert any(word in p for p in runs.vocabulary_problems("02_sft", section))


def test_every_renamed_key_and_synonym_names_a_vocabulary_word():
    assert all(new is None or new.split(".")[-1] in runs.VOCABULARY or "_by_" in new for *_, new in runs.RENAMED)
    assert all(runs._word(v) for v in runs.SYNONYMS.values()), "a synonym points at a vocabulary word"
