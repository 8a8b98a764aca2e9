"""Past one process: training through accelerate's launchers, and the accelerate configs in configs/."""
import copy
from pathlib import Path

import pytest
import torch

from nbft import data, launch, params, settings, train

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
#: 2 processes x batch 4 vs 1 process x batch 8: the same examples in every step (accelerate hands out the one
#: seeded order's batches to the ranks in turn, and averages the loss over the tokens of all ranks); what differs
#: is the summation order. Measured: 9e-8.
LOSS_TOLERANCE = 1e-4  # largest relative difference of a step's loss


@pytest.fixture()
def two_processes():
    with settings.using(settings.Settings(num_processes=2)):
        yield


def sft(tiny, records, batch_size: int, validation=(), **kw):
    base, tok = tiny
    p = params.SFTParams(model="tiny-llama", precision="fp32", device="cpu", max_length=64, batch_size=batch_size,
                         lora_r=4, lora_alpha=8, lora_dropout=0.0, **kw)
    return train.sft(copy.deepcopy(base), tok, records, list(validation), p, learning_rate=1e-2,
                     peft_config=train.lora_config(p), max_steps=4)


def test_sft_in_two_gloo_processes_splits_the_data_and_follows_the_one_process_loss(tiny, two_processes):
    _, tok = tiny
    splits = data.prepare(params.DataPrepParams(model="tiny-llama", n_examples=48), tok).splits
    records, validation = splits["train"][:32], splits["validation"][:4]
    # with the validation loss every 2 steps and early stopping (patience 5: it does not stop; the best is restored)
    evaluating = dict(validation=validation, eval_steps=2, early_stopping_patience=5)
    two = sft(tiny, records, batch_size=4, **evaluating)
    with settings.using(settings.Settings()):
        one = sft(tiny, records, batch_size=8, **evaluating)
    # both ranks took part, each with its own share of the data
    assert sorted(r["rank"] for r in two.ranks) == [0, 1] and {r["world_size"] for r in two.ranks} == {2}
    shards = [set(r["examples"]) for r in two.ranks]
    assert all(len(r["examples"]) == 4 * 4 for r in two.ranks)  # 4 steps of 4 examples each
    assert shards[0] and shards[1] and not shards[0] & shards[1] and len(shards[0] | shards[1]) == 32
    assert {r["steps"] for r in two.ranks} == {4} and two.steps == 4 and two.model is not None
    # the same loss curve as one process with the same global batch
    loss_1 = [r["loss"] for r in one.log_history if "loss" in r]
    loss_2 = [r["loss"] for r in two.log_history if "loss" in r]
    assert len(loss_1) == len(loss_2) == 4 and loss_2[-1] < loss_2[0]
    worst = max(abs(a - b) / a for a, b in zip(loss_1, loss_2))
    assert worst < LOSS_TOLERANCE, (loss_1, loss_2)
    # the same validation-loss curve, and the best checkpoint (saved by rank 0 in the scratch folder) restored
    # (its losses are not one process's: each rank averages the tokens of its half of the validation set)
    assert [c["step"] for c in two.eval_curve] == [c["step"] for c in one.eval_curve] == [2, 4]
    assert not two.stopped_early and two.best_step in (2, 4)
    assert two.eval_loss == pytest.approx(min(c["eval_loss"] for c in two.eval_curve), rel=1e-4)
    # the model came back to this process, trained: it predicts like the one-process model
    ids = tok("What is the capital of France?", return_tensors="pt")
    with torch.no_grad():
        a, b = one.model(**ids).logits, two.model(**ids).logits
    assert torch.allclose(a, b, atol=0.05 * a.abs().max().item())


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_every_accelerate_config_parses_with_accelerates_own_parser(config):
    from accelerate.utils import DistributedType

    cfg = launch.read_config(config)
    assert cfg.distributed_type in {DistributedType.MULTI_GPU, DistributedType.FSDP, DistributedType.DEEPSPEED}
    assert cfg.num_processes >= 2 and cfg.num_machines >= 1
    if cfg.distributed_type == DistributedType.DEEPSPEED:
        assert cfg.deepspeed_config["zero_stage"] in (2, 3)
    if cfg.distributed_type == DistributedType.FSDP:
        assert cfg.fsdp_config["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert "nbft" in config.read_text()  # each says how to launch nbft with it


def test_configs_cover_ddp_fsdp_and_both_zero_stages():
    parsed = [launch.read_config(c) for c in CONFIGS]
    kinds = {(c.distributed_type.value, (c.deepspeed_config or {}).get("zero_stage")) for c in parsed}
    assert {("MULTI_GPU", None), ("FSDP", None), ("DEEPSPEED", 2), ("DEEPSPEED", 3)} <= kinds


def test_a_config_with_an_unknown_key_is_refused_before_anything_runs(runs_dir, tmp_path, capsys, root):
    from nbft import cli

    bad = tmp_path / "bad.yaml"
    bad.write_text(CONFIGS[0].read_text() + "num_procesess: 2\n")
    rc = cli.main(["run", "--params", str(root / "params" / "smoke.yaml"), "--set", f"accelerate_config={bad}"])
    err = capsys.readouterr().err
    assert rc == cli.EXIT_BAD_INPUT and "accelerate_config" in err and "num_procesess" in err
    missing = tmp_path / "none.yaml"
    rc = cli.main(["run", "--params", str(root / "params" / "smoke.yaml"), "--set", f"accelerate_config={missing}"])
    assert rc == cli.EXIT_BAD_INPUT and "none.yaml" in capsys.readouterr().err
    assert not runs_dir.exists() or not list(runs_dir.iterdir())


def test_processes_come_from_num_processes_or_a_config():
    assert launch.processes(1, str(next(c for c in CONFIGS if c.name == "cpu_2proc.yaml")))[0] == 2
    assert launch.processes(3, str(CONFIGS[0]))[0] == 3
    with settings.using(settings.Settings(num_processes=2)):
        assert launch.wanted()
    assert not launch.wanted()


def test_num_processes_is_a_common_parameter_with_a_range():
    assert params.Common().num_processes == 1 and params.Common().accelerate_config == ""
    with pytest.raises(params.ParamError, match="num_processes"):
        params.build("02_sft", {"num_processes": 0})


def test_nbft_train_under_accelerate_launch_trains_one_stage_over_two_processes(tmp_path, root):
    """`accelerate launch -m nbft.cli train 02_sft` with the 2-process CPU config: both processes execute the
    stage, their trainers form one gloo group, rank 0 writes the run, rank 1 nothing under runs/."""
    import json
    import os
    import subprocess
    import sys

    runs_dir = tmp_path / "runs"
    env = {**os.environ, "NBFT_RUNS_DIR": str(runs_dir), "OMP_NUM_THREADS": "1"}
    bindir = Path(sys.executable).parent
    quick = ["--set", "02_sft.compare_scopes=[]", "--set", "02_sft.sweep_sizes=[]", "--set", "02_sft.quality_size=0",
             "--set", "02_sft.cpt_docs=0"]
    cmd = [str(bindir / "accelerate"), "launch", "--config_file", str(root / "configs" / "cpu_2proc.yaml"),
           "--main_process_port", "29517", "-m", "nbft.cli", "train", "02_sft", "--run", "dist",
           "--params", str(root / "params" / "smoke.yaml"), "--no-progress", *quick]
    proc = subprocess.run(cmd, env=env, cwd=root, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "rank 0 of 2" in proc.stdout and "rank 1 of 2" in proc.stdout
    run = runs_dir / "dist"
    assert sorted(p.name for p in runs_dir.iterdir()) == ["dist"]  # rank 1 wrote nowhere under runs/
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "ok" and status["stages"] == {"02_sft": "ok"}
    kernel = json.loads((run / "env.json").read_text())["kernels"]["02_sft"]["env"]
    assert kernel["WORLD_SIZE"] == "2" and kernel["RANK"] == "0"
    metrics = json.loads((run / "metrics.json").read_text())["02_sft"]
    assert metrics["seconds"] > 0 and metrics["task_score_after"] is not None
    assert (run / "02_sft.html").is_file() and any((run / "artifacts" / "02_sft").iterdir())
    # the same stage again into that run is refused: its results are kept
    again = subprocess.run([sys.executable, "-m", "nbft.cli", "train", "02_sft", "--run", "dist", "--params",
                            str(root / "params" / "smoke.yaml")], env=env, cwd=root, capture_output=True, text=True)
    assert again.returncode == 2 and "already ended ok" in again.stderr


def test_reward_rl_dpo_classifier_and_distillation_trainers_run_in_two_processes(tmp_path, root, monkeypatch):
    """The trainers other than SFT (the test above) through the whole notebooks, num_processes 2: every training
    call of 04 (reward model, GRPO, DPO), 06 (the classifiers) and 07 (SFT rows, distillation) launches 2 gloo
    processes, and the stages end ok."""
    import json
    import os

    from nbft import cli

    monkeypatch.setenv("NBFT_RUNS_DIR", str(tmp_path / "runs"))
    cwd = os.getcwd()
    os.chdir(root)
    try:
        rc = cli.main(["run", "--params", str(root / "params" / "smoke.yaml"), "--name", "mp", "--no-progress",
                       "--only", "04_rlhf", "06_classify", "07_distill", "--set", "num_processes=2"])
    finally:
        os.chdir(cwd)
    run = tmp_path / "runs" / "mp"
    assert rc == 0 and json.loads((run / "status.json").read_text())["state"] == "ok"
    for stage, trainings in {"04_rlhf": 3, "06_classify": 5, "07_distill": 3}.items():
        text = (run / f"{stage}.ipynb").read_text()
        assert text.count("Launching training on 2") >= trainings, stage


# ---------------------------------------------------------------- the GPU profile

def test_gpu_profile_asks_for_qlora_as_02s_main_scope_and_is_refused_where_it_cannot_run(runs_dir, capsys, root,
                                                                                        monkeypatch):
    from nbft import cli

    gpu = params.resolve(root / "params" / "gpu.yaml")
    assert gpu["02_sft"].scope == "qlora" and gpu["02_sft"].device == "cuda" and "qlora" in gpu["03_peft"].methods
    monkeypatch.setattr(train, "qlora_needs", lambda: "a CUDA GPU")  # what a CPU machine says
    rc = cli.main(["run", "--params", str(root / "params" / "smoke.yaml"), "--set", "02_sft.scope=qlora"])
    err = capsys.readouterr().err
    assert rc == cli.EXIT_BAD_INPUT and "02_sft.scope: qlora needs a CUDA GPU" in err
    assert not runs_dir.exists() or not list(runs_dir.iterdir())


def test_qlora_scope_reloads_the_model_in_4_bits_or_says_what_is_missing(tiny, monkeypatch):
    base, tok = tiny
    monkeypatch.setattr(train, "qlora_needs", lambda: "a CUDA GPU and the bitsandbytes package")
    p = params.SFTParams(model="tiny-llama", scope="qlora")
    with pytest.raises(ValueError, match="qlora needs a CUDA GPU and the bitsandbytes package"):
        train.finetune(copy.deepcopy(base), tok, [], [], p, scope="qlora")
    assert train.learning_rate_for(p, "qlora") == p.learning_rate
