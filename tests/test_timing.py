"""Where a stage's time goes: nested sections count once, for the innermost kind; the stage records it."""
import time

import pytest

from nbft import evaluate, models, runs, timing


def test_nested_sections_count_their_time_for_the_inner_kind_only():
    timing.reset()
    with timing.section("training"):
        time.sleep(0.05)
        with timing.section("generation"):
            time.sleep(0.1)
    time.sleep(0.02)
    snap = timing.snapshot()
    assert snap["generation"] == pytest.approx(0.1, abs=0.03)
    assert snap["training"] == pytest.approx(0.05, abs=0.03)  # not 0.15: the inner 0.1 s is generation
    assert snap["loading"] == snap["scoring"] == 0.0
    assert snap["other"] == pytest.approx(0.02, abs=0.03)
    assert snap["total"] == pytest.approx(sum(v for k, v in snap.items() if k != "total"), abs=0.005)
    timing.reset()
    assert timing.snapshot()["generation"] == 0.0


def test_loading_and_generation_are_profiled_and_a_stage_records_its_profile(tmp_path):
    timing.reset()
    tok = models.load_tokenizer("tiny-llama")
    model, _ = models.load_model("tiny-llama", "cpu", tokenizer=tok)
    evaluate.generate(model, tok, ["Hello"], max_new_tokens=2)
    snap = timing.snapshot()
    assert snap["loading"] > 0 and snap["generation"] > 0
    run = runs.Run(tmp_path, "02_sft")
    recorded = run.record(task_score_after=1.0)
    assert recorded["task_score_after"] == 1.0
    assert set(recorded["profile"]) >= {*timing.KINDS, "other", "total"}
    assert recorded["profile"]["loading"] >= snap["loading"]
