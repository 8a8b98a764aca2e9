"""report_to: every trainer logs to the trackers under runs/<run>/tracking/, read back with each tracker's own
reader; the stage's parameters and final metrics follow; a tracker that is not installed fails before anything."""
import copy
import importlib.util
import json

import pytest

from nbft import cli, data, params, runs, settings, tracking, train


@pytest.fixture()
def tracked(tmp_path):
    """A run folder the trainers report into; tracking switched off again afterwards."""
    run_dir = tmp_path / "runs" / "tracked"
    run_dir.mkdir(parents=True)

    def start(report_to):
        settings.use(settings.Settings(stage="02_sft", tracking=tracking.tracking_folder(run_dir, report_to),
                                       report_to=tuple(tracking.trackers(report_to))))
        if settings.current().tracking is not None:
            tracking.environment(settings.current().tracking, run_dir.name)
        return run_dir

    yield start
    settings.use(settings.Settings())


def sft_two_runs(tiny, steps: int = 3):
    """Two short LoRA trainings on tiny-llama (two training calls of one stage)."""
    base, tok = tiny
    prep = data.prepare(params.DataPrepParams(model="tiny-llama", n_examples=24), tok)
    p = params.SFTParams(model="tiny-llama", precision="fp32", device="cpu", max_length=64, batch_size=4,
                         lora_r=4, lora_alpha=8)
    out = []
    for _ in range(2):
        out.append(train.sft(copy.deepcopy(base), tok, prep.splits["train"][:16], [], p, learning_rate=1e-2,
                             peft_config=train.lora_config(p), max_steps=steps))
    return out


STAGE_METRICS = runs.flatten({"task_score_after": 0.75, "scope_comparison": {"lora": {"task_score": 0.5}},
                              "note": "words", "nan": float("nan"), "findings": ["a sentence"]})


def test_tensorboard_event_files_load_in_tensorboards_reader_with_loss_and_final_metrics(tiny, tracked):
    pytest.importorskip("tensorboard", reason="pip install -e '.[tracking]' (make test installs it)")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tracked(["tensorboard"])
    results = sft_two_runs(tiny)
    folders = sorted((run_dir / "tracking" / "tensorboard" / "02_sft").iterdir())
    assert [f.name for f in folders] == ["01-SFTTrainer", "02-SFTTrainer"]
    for folder, res in zip(folders, results):
        events = EventAccumulator(str(folder)).Reload()
        loss = [e.value for e in events.Scalars("train/loss")]
        assert loss == pytest.approx([r["loss"] for r in res.log_history if "loss" in r], rel=1e-5)
        assert len(loss) == 3
    written = tracking.log_stage(run_dir, "02_sft", ["tensorboard"], {"epochs": 1.0, "model": "tiny-llama"},
                                 STAGE_METRICS)
    assert written and "tensorboard" in written[0]
    final = EventAccumulator(str(run_dir / "tracking" / "tensorboard" / "02_sft" / "final")).Reload()
    assert final.Scalars("final/task_score_after")[0].value == pytest.approx(0.75)
    assert final.Scalars("final/scope_comparison.lora.task_score")[0].value == pytest.approx(0.5)
    assert "final/nan" not in final.Tags()["scalars"] and "final/note" not in final.Tags()["scalars"]


def test_mlflow_local_store_reads_back_with_mlflows_client(tiny, tracked):
    pytest.importorskip("mlflow", reason="pip install -e '.[tracking]' (make test installs it)")
    from mlflow.tracking import MlflowClient

    run_dir = tracked(["mlflow"])
    results = sft_two_runs(tiny)
    tracking.log_stage(run_dir, "02_sft", ["mlflow"], {"epochs": 1.0, "model": "tiny-llama"}, STAGE_METRICS)
    client = MlflowClient(tracking_uri=(run_dir / "tracking" / "mlflow").resolve().as_uri())
    experiment = client.get_experiment_by_name("tracked")
    found = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert set(found) == {"02_sft-01-SFTTrainer", "02_sft-02-SFTTrainer", "02_sft"}
    for name, res in zip(["02_sft-01-SFTTrainer", "02_sft-02-SFTTrainer"], results):
        history = client.get_metric_history(found[name].info.run_id, "loss")
        assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx(
            [r["loss"] for r in res.log_history if "loss" in r], rel=1e-5)
    stage = found["02_sft"].data
    assert stage.metrics["task_score_after"] == pytest.approx(0.75)
    assert stage.metrics["scope_comparison.lora.task_score"] == pytest.approx(0.5)
    assert stage.params["model"] == "tiny-llama" and "nan" not in stage.metrics


def test_no_report_to_writes_no_tracking_folder(tiny, tracked):
    run_dir = tracked([])
    assert train.trainer_args(params.SFTParams(model="tiny-llama"), run_dir)["report_to"] == "none"
    sft_two_runs(tiny, steps=1)
    assert not (run_dir / "tracking").exists()
    assert tracking.log_stage(run_dir, "02_sft", [], {}, STAGE_METRICS) == []


def test_a_tracker_that_is_not_installed_exits_2_before_any_folder(runs_dir, capsys, monkeypatch, root):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    rc = cli.main(["run", "--params", str(root / "params" / "smoke.yaml"), "--set", "report_to=[tensorboard, wandb]"])
    err = capsys.readouterr().err
    assert rc == cli.EXIT_BAD_INPUT and "report_to: wandb not installed" in err and "[tracking]" in err
    assert not runs_dir.exists() or not list(runs_dir.iterdir())


def test_a_misspelt_tracker_names_the_closest(runs_dir, capsys, root):
    rc = cli.main(["run", "--params", str(root / "params" / "smoke.yaml"), "--set", "report_to=[tensorbord]"])
    err = capsys.readouterr().err
    assert rc == cli.EXIT_BAD_INPUT and "report_to[0]" in err and "tensorboard" in err


def test_numbers_keeps_finite_numbers_with_their_path():
    assert tracking.numbers(STAGE_METRICS) == {"task_score_after": 0.75, "scope_comparison.lora.task_score": 0.5}
    assert tracking.numbers({"ok": True, "n": 3}) == {"n": 3.0}
    assert json.dumps(tracking.numbers({}))
