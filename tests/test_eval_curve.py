"""Evaluation during training (issue 30, item 3): the validation-loss curve, early stopping with the best checkpoint
restored, in and out of a run folder, and what the monitor draws."""
import copy

import pytest
import torch

from nbft import checkpoints, data, params, runs, settings, train, trl_patches, widgets


@pytest.fixture(scope="module")
def splits(tiny):
    return data.prepare(params.DataPrepParams(model="tiny-llama", n_examples=40), tiny[1]).splits


def overfitting_run(tiny, splits, **kw):
    """Full fine-tuning of tiny-llama on 4 examples at a learning rate that memorizes them within a few steps: the
    validation loss falls for ~4 steps, then rises while the training loss keeps falling (measured: best step 4,
    stopped at 6 of 16)."""
    base, tok = tiny
    p = params.SFTParams(**{"model": "tiny-llama", "epochs": 16.0, "batch_size": 4, "max_length": 96,
                            "precision": "fp32", "eval_steps": 1, **kw})
    return train.finetune(copy.deepcopy(base), tok, splits["train"][:4], splits["validation"], p, scope="full",
                          learning_rate=3e-2)


def validation_loss(model, tok, validation):
    """The validation loss of ``model`` from a new trainer (nothing of the training's state): TRL's evaluation."""
    from trl import SFTTrainer

    p = params.SFTParams(model="tiny-llama", batch_size=4, max_length=96, precision="fp32")
    with train.scratch_dir() as tmp:
        t = SFTTrainer(model=model, args=train.sft_config(p, tmp, 1e-3), train_dataset=train.to_dataset(validation),
                       eval_dataset=train.to_dataset(validation), processing_class=tok)
        with trl_patches.cpu_layouts(t):
            return t.evaluate()["eval_loss"]


def test_early_stopping_stops_a_long_run_and_returns_the_best_checkpoint(tiny, splits):
    planned = train.steps_for(4, params.SFTParams(epochs=16.0, batch_size=4))
    r = overfitting_run(tiny, splits, early_stopping_patience=2)
    curve = r.eval_curve
    assert r.stopped_early and r.stopped_at_step == r.steps == curve[-1]["step"] < planned
    assert [c["step"] for c in curve] == list(range(1, r.steps + 1))  # every eval_steps
    best = min(curve, key=lambda c: c["eval_loss"])
    assert r.best_step == best["step"] < r.stopped_at_step
    after = [c for c in curve if c["step"] > r.best_step]
    assert len(after) == 2 and all(c["eval_loss"] > best["eval_loss"] for c in after)  # patience 2: two worse
    assert after[-1]["train_loss"] < best["train_loss"]  # the training loss kept falling: overfitting
    # the returned model is the best checkpoint's, not the last step's: its eval loss recomputed is the best logged
    recomputed = validation_loss(r.model, tiny[1], splits["validation"])
    assert recomputed == pytest.approx(best["eval_loss"], rel=1e-5) and r.eval_loss == pytest.approx(recomputed)
    assert recomputed < curve[-1]["eval_loss"] - 1e-3
    assert not r.model.training and r.tokens_per_second > 0


def test_without_early_stopping_the_run_goes_on_and_logs_the_rise(tiny, splits):
    r = overfitting_run(tiny, splits, epochs=8.0)
    assert not r.stopped_early and r.stopped_at_step is None and r.steps == len(r.eval_curve) == 8
    assert r.eval_curve[-1]["eval_loss"] > min(c["eval_loss"] for c in r.eval_curve)  # it turned up
    assert r.eval_loss == r.eval_curve[-1]["eval_loss"]  # the final model is the last step's: no second evaluation
    assert sum(1 for h in r.log_history if "eval_loss" in h) == 8
    assert r.eval_seconds > 0 and r.tokens_per_second == pytest.approx(r.train_tokens / (r.seconds - r.eval_seconds))


def test_early_stopping_in_a_run_folder_checkpoints_every_evaluation_and_a_resume_loads_the_best(tiny, splits,
                                                                                                    tmp_path):
    """Under nbft run (a checkpoints folder, save_steps 25) early stopping saves at every evaluation and keeps the
    last and the best checkpoint; the stage running again loads the stopped call instead of training: the best
    weights, the same curve, the same step."""
    folder = tmp_path / "checkpoints" / "02_sft"
    p = params.SFTParams(eval_steps=2, early_stopping_patience=1, save_steps=25)
    try:
        settings.use(settings.Settings(checkpoints=folder))
        args = train.trainer_args(p, tmp_path, **train.eval_args(p))
        assert (args["save_strategy"], args["save_steps"], args["eval_steps"]) == ("steps", 2, 2)
        assert args["load_best_model_at_end"] and args["metric_for_best_model"] == "eval_loss"
        first = overfitting_run(tiny, splits, early_stopping_patience=2, save_steps=25)
        (slot,) = folder.iterdir()
        kept = sorted(int(d.name.split("-")[1]) for d in slot.glob("checkpoint-*"))
        assert kept == [first.best_step, first.stopped_at_step]
        settings.use(settings.Settings(checkpoints=folder))  # the stage runs again (nbft run --resume)
        again = overfitting_run(tiny, splits, early_stopping_patience=2, save_steps=25)
        assert (again.steps, again.best_step, again.stopped_at_step) == (first.steps, first.best_step,
                                                                          first.stopped_at_step)
        assert again.eval_curve == first.eval_curve and again.eval_loss == pytest.approx(first.eval_loss, rel=1e-5)
        a, b = dict(first.model.named_parameters()), dict(again.model.named_parameters())
        assert all(torch.equal(a[n], b[n]) for n in a)
    finally:
        settings.use(settings.Settings())


def test_early_stopping_needs_eval_steps_and_only_a_validation_set_evaluates(tiny, splits):
    with pytest.raises(params.ParamError, match="eval_steps"):
        params.build("02_sft", {"eval_steps": 0, "early_stopping_patience": 2})
    base, tok = tiny
    p = params.SFTParams(model="tiny-llama", epochs=1.0, batch_size=8, lora_r=4, lora_alpha=8, max_length=96,
                         precision="fp32", eval_steps=1, early_stopping_patience=1)
    r = train.finetune(copy.deepcopy(base), tok, splits["train"][:16], [], p, scope="lora")  # no validation set
    assert r.eval_curve == [] and r.eval_loss is None and r.best_step is None and not r.stopped_early


def test_the_monitor_draws_the_validation_loss_beside_the_training_loss():
    from transformers import TrainerControl, TrainerState

    monitor = widgets.training_monitor("t")
    state = TrainerState()
    for step in (1, 2):
        state.global_step = step
        monitor.on_log(None, state, TrainerControl(), logs={"loss": 3.0 - step, "learning_rate": 1e-3, "num_tokens": 10})
    monitor.on_log(None, state, TrainerControl(), logs={"eval_loss": 2.5, "eval_runtime": 0.1})
    assert [r.get("eval_loss") for r in monitor.rows] == [None, None, 2.5]
    assert "lr" not in monitor.rows[-1] and "tokens_per_s" not in monitor.rows[-1]  # no point in those panels
    fig = widgets.plot_curves(monitor.rows, "t")
    loss_ax = fig.axes[0]
    assert [line.get_label() for line in loss_ax.lines] == ["training", "validation"]
    assert list(loss_ax.lines[1].get_xdata()) == [2] and list(loss_ax.lines[1].get_ydata()) == [2.5]
    assert all(len(ax.lines) == 1 for ax in fig.axes[1:])
    curve = [{"step": 1, "eval_loss": 2.0, "train_loss": 2.5}, {"step": 2, "eval_loss": 2.2, "train_loss": 1.5}]
    ax = widgets.plot_eval_curve(curve, "o", stopped_at=2, best_step=1)
    assert {t.get_text() for t in ax.get_legend().get_texts()} >= {"validation", "best, step 1",
                                                                     "early stopping, step 2"}


def test_the_curve_is_a_vocabulary_word():
    section = {"eval_curve": [{"step": 1, "eval_loss": 2.0}], "best_step": 1,
               "overfitting": {"eval_curve": [{"step": 2, "eval_loss": 1.0}], "early_stopping": {"stopped_at_step": 4}}}
    assert runs.vocabulary_problems("02_sft", section) == []
    assert runs.vocabulary_problems("02_sft", {"eval_curve": 2.0, "best_step": 1.5})
    assert checkpoints.stopped_early({"stateful_callbacks": {"EarlyStoppingCallback": {
        "args": {"early_stopping_patience": 2}, "attributes": {"early_stopping_patience_counter": 2}}}})
    assert not checkpoints.stopped_early({"stateful_callbacks": {}})
