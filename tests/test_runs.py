"""Run folders: metrics merge, never overwrite, environment capture, listing."""
import json

import pytest

from nbft import params, runs


def test_record_merges_and_cleans(tmp_path):
    runs.record_metrics(tmp_path, "02_sft", {"a": 1, "b": float("nan")})
    runs.record_metrics(tmp_path, "02_sft", {"c": 2.5})
    runs.record_metrics(tmp_path, "01_data_prep", {"n": 3})
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m == {"02_sft": {"a": 1, "b": None, "c": 2.5}, "01_data_prep": {"n": 3}}


def test_unique_run_dir_never_reuses(runs_dir):
    a = runs.unique_run_dir(prefix="x")
    a.mkdir(parents=True)
    b = runs.unique_run_dir(prefix="x")
    assert a != b and not b.exists()


def test_explicit_existing_name_is_refused(runs_dir):
    (runs_dir / "mine").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="never overwritten"):
        runs.unique_run_dir("mine")
    with pytest.raises(ValueError, match="letters, digits"):
        runs.unique_run_dir("../escape")


def test_open_run_standalone_and_in_pipeline(runs_dir):
    p = params.SFTParams(model="tiny-llama")
    run = runs.open_run(p, "02_sft")
    assert run.path.parent == runs_dir and run.path.name.endswith("-02_sft")
    env = json.loads((run.path / "env.json").read_text())
    assert {"versions", "cpu", "git", "seed", "model"} <= set(env)
    assert env["model"]["spec"] == "tiny-llama" and len(env["model"]["sha256"]) == 64
    assert env["versions"]["torch"] and env["versions"]["trl"]
    run.record(x=1)
    p2 = params.DataPrepParams(model="tiny-llama", run_name=run.path.name)
    run2 = runs.open_run(p2, "01_data_prep")
    assert run2.path == run.path and run.upstream("01_data_prep") is None
    (run2.artifacts / "f").write_text("x")
    assert run.upstream("01_data_prep") == run2.artifacts


def test_list_runs(runs_dir):
    d = runs_dir / "r1"
    d.mkdir(parents=True)
    runs.write_status(d, state="ok")
    runs.record_metrics(d, "02_sft", {"task_score_after": 0.9, "eval_loss": 1.2})
    runs.record_metrics(d, "05_rag_vs_ft", {"n_eval": 120, "retrieval_ms_p50": 4.5,
                                            "acc": {"rag": {"open": 0.8}, "ft": {"open": 0.1}}})
    rows = runs.list_runs()
    assert rows[0]["name"] == "r1" and rows[0]["state"] == "ok"
    # the first two headline metrics of each stage, in the headline order
    assert rows[0]["metrics"] == {"02_sft.task_score_after": 0.9, "05_rag_vs_ft.acc.rag.open": 0.8,
                                  "05_rag_vs_ft.acc.ft.open": 0.1}


def test_card(tmp_path):
    runs.write_card(tmp_path, "t", parameters=params.SFTParams(), metrics={"m": 0.5}, base_model="x")
    card = json.loads((tmp_path / "card.json").read_text())
    assert card["parameters"]["lora_r"] == 16 and card["metrics"] == {"m": 0.5}
    assert "- m: 0.5" in (tmp_path / "card.md").read_text()
