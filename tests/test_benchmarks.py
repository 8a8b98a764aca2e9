"""The benchmarks run (tiny model, a few steps): they are how issue 16's figures are measured, so they must not rot."""
import importlib.util
import math
from pathlib import Path

from nbft import models

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_vs_trl_reports_every_variant_with_tokens_per_second_and_a_held_out_loss(capsys):
    rows = load("train_vs_trl").main(["--model", "tiny-llama", "--examples", "16", "--steps", "2", "--repeats", "1",
                                      "--held-out", "4", "--ablations"])
    bf16 = models.cpu_supports_bf16()
    expected = (["trl fp32"] + (["trl bf16"] if bf16 else []) + ["nbft", "nbft padding-free"]
                + (["nbft fp32 base"] if bf16 else []) + ["nbft full-vocab head"])
    assert [r["variant"] for r in rows] == expected
    assert all(r["tokens_per_second"] > 0 and math.isfinite(r["final_loss"]) for r in rows)
    # the same data and seed: the losses of a 2-step run on a random tiny model agree closely
    losses = [r["final_loss"] for r in rows]
    assert max(losses) - min(losses) < 0.05 * min(losses)
    out = capsys.readouterr().out
    assert "| nbft |" in out and "x trl fp32" in out and "final losses within" in out


def test_generation_benchmark_compares_batches_with_the_loop_at_equal_outputs(capsys):
    rows = load("generation").main(["--model", "tiny-llama", "--prompts", "6", "--new-tokens", "4", "--batch", "4",
                                    "--precisions", "fp32", "--frozen"])
    assert [(r["precision"], r["variant"]) for r in rows] == [("fp32", "batched")]
    # fp32: left-padded batches reproduce the one-by-one greedy replies exactly
    assert rows[0]["same_outputs"] == rows[0]["n"] == 6 and rows[0]["speedup"] > 0
    assert "same outputs 6/6" in capsys.readouterr().out


def test_ask_benchmark_times_one_prompt_pass_against_two_at_equal_answers(capsys):
    rows = load("ask").main(["--model", "tiny-llama", "--facts", "5", "--new-tokens", "3", "--batch", "4",
                             "--precision", "fp32", "--repeats", "1"])
    assert [r["form"] for r in rows] == ["plain", "context"]
    # fp32: one prompt pass gives the replies and picks of two
    assert all(r["same_replies"] == r["same_mc"] == r["n"] == 5 and r["speedup"] > 0 for r in rows)
    assert "same multiple-choice picks 5/5" in capsys.readouterr().out


def test_profile_table_gives_each_stage_its_split_and_the_ratio_between_two_runs(tmp_path):
    import json

    def run(name, sft_train, sft_wall):
        d = tmp_path / name
        d.mkdir()
        prof = {"loading": 1.0, "training": sft_train, "generation": 5.0, "scoring": 1.0, "other": 2.0}
        (d / "metrics.json").write_text(json.dumps({"02_sft": {"profile": {**prof, "total": sum(prof.values())}},
                                                    "01_data_prep": {"n_train": 3}}))
        (d / "status.json").write_text(json.dumps({"seconds": {"02_sft": sft_wall, "01_data_prep": 5}}))
        return d

    out = load("profile_run").main([str(run("a", 100.0, 120.0)), str(run("b", 40.0, 60.0))])
    row = next(line for line in out.splitlines() if line.startswith("| 02_sft"))
    assert row.split("|")[1:-1] == [" 02_sft ", " 1 ", " 40 ", " 5 ", " 1 ", " 2 ", " 60 ", " 120 ", " 0.50 "]
    assert "01_data_prep" not in out  # no profile recorded: not a row


def test_lora_dropout_benchmark_times_both_paths_at_both_settings(capsys):
    rows = load("lora_dropout").main(["--model", "tiny-llama", "--steps", "2", "--repeats", "1"])
    assert [r["path"] for r in rows] == ["02 instruction SFT, batch 8", "06 LoRA classifier, batch 16"]
    assert all(r["seconds_0.05"] > 0 and r["seconds_0"] > 0 and r["speedup"] > 0 for r in rows)
    assert all(math.isfinite(r["loss_0.05"]) and math.isfinite(r["loss_0"]) for r in rows)
    assert "dropout 0.05" in capsys.readouterr().out


def test_distill_sampling_benchmark_compares_one_autocast_block_with_per_token_at_equal_losses(capsys):
    out = load("distill_sampling").main(["--model", "tiny-llama", "--steps", "2", "--repeats", "1", "--layers", "1"])
    assert out["seconds_one_block"] > 0 and out["seconds_per_token"] > 0 and out["speedup"] > 0
    assert out["same_losses"]  # the same bf16 casts either way
    assert "one block" in capsys.readouterr().out


def test_cpu_training_benchmark_takes_each_layout_out_in_turn(capsys):
    rows = load("cpu_training").main(["--model", "tiny-llama", "--steps", "2", "--repeats", "1",
                                      "--paths", "02 SFT lora, batch 8", "06 LoRA classifier, batch 16"])
    assert [(r["path"][:2], r["variant"]) for r in rows] == [
        ("02", "nbft"), ("02", "sdpa attention"), ("02", "fp32 head GEMMs"), ("06", "nbft"), ("06", "sdpa attention")]
    assert all(r["seconds"] > 0 and math.isfinite(r["loss"]) and r["x_nbft"] > 0 for r in rows)
    assert "nbft's time" in capsys.readouterr().out
