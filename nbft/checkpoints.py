"""Checkpoints of training calls in the run folder, and resuming from them.

In a stage ``nbft run`` executes (``settings.current().checkpoints`` is ``<run>/checkpoints/<stage>/``) every
trainer saves a checkpoint every ``save_steps`` optimizer steps (``save_args``, in ``train.trainer_args``), only the
last one kept. ``train.fit`` asks :func:`prepare` where its call checkpoints: the call's own folder
``<NN>-<trainer>-<fingerprint>/`` (NN counts the stage's checkpointing calls, the fingerprint is what makes a call
the same one again: ``fingerprint``), and the checkpoint to resume from when that folder already has one (the stage
is running again after a crash: ``last_checkpoint``). Each checkpoint records the training seconds up to it
(``CLOCK_FILE``); the call's last checkpoint is light (model, trainer state and RNG state, no optimizer), and a call
whose last checkpoint is there (its last step, or the step early stopping stopped at: ``stopped_early``) loads it
instead of training (``load_finished``: with early stopping, the best checkpoint's weights). ``nbft run`` deletes a stage's
checkpoints once the stage ends ok. Trainers whose checkpoint cannot restore their training (``resumable``) do not
checkpoint.

The trainer calls transformers and TRL keep private go through ``trl_patches`` (``load_finished``,
``save_rng_state``, ``restore_token_count``).
"""
from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import files, settings, trl_patches

#: In each checkpoint a call makes: {"seconds": training seconds up to that checkpoint, "step": its step}.
CLOCK_FILE = "nbft_clock.json"


def save_args(common) -> dict[str, Any]:
    """The trainer arguments of checkpointing (``Common``'s ``save_steps``): in a run folder
    (``settings.current().checkpoints``) a checkpoint every ``save_steps`` steps, only the last one kept; else
    none."""
    if settings.current().checkpoints is None or common.save_steps <= 0:
        return {"save_strategy": "no"}
    return {"save_strategy": "steps", "save_steps": common.save_steps, "save_total_limit": 1}


def last_checkpoint(folder: str | Path) -> Path | None:
    """The newest complete ``checkpoint-N`` in ``folder`` (transformers writes ``trainer_state.json`` last);
    incomplete ones (a kill while saving) are removed."""
    done = []
    for d in Path(folder).glob("checkpoint-*") if Path(folder).is_dir() else ():
        if not d.name.removeprefix("checkpoint-").isdigit():
            continue
        if (d / "trainer_state.json").is_file():
            done.append((int(d.name.removeprefix("checkpoint-")), d))
        else:
            shutil.rmtree(d, ignore_errors=True)
    return max(done)[1] if done else None


def fingerprint(trainer, scratch: str) -> str:
    """What makes a training call the same one again: trainer type, arguments (not the folder), the training
    data (size, columns, a sample of rows) and the trainable parameters (names and shapes)."""
    args = {k: v for k, v in trainer.args.to_dict().items()
            if k not in ("output_dir", "logging_dir", "run_name") and not (isinstance(v, str) and scratch and scratch in v)}
    ds = trainer.train_dataset
    rows = []
    if ds is not None and hasattr(ds, "__len__") and len(ds):
        step = max(1, len(ds) // 16)
        rows = [ds[i] for i in range(0, len(ds), step)][:17]
    shapes = [(n, tuple(w.shape)) for n, w in trainer.model.named_parameters() if w.requires_grad]
    blob = json.dumps([type(trainer).__name__, args, len(ds) if ds is not None and hasattr(ds, "__len__") else None,
                       getattr(ds, "column_names", None), rows, shapes], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def resumable(model) -> bool:
    """Can a checkpoint restore everything this model trains? Not for peft's prompt encoders (P-tuning, prefix
    tuning with a projection): their checkpoint holds the virtual-token embeddings the encoder produced, not the
    encoder, so a resumed run would continue from an untrained encoder. Those train again from the start."""
    configs = getattr(model, "peft_config", {}) or {}
    return not any(str(getattr(c, "peft_type", "")).endswith("P_TUNING") or getattr(c, "prefix_projection", False)
                   for c in configs.values())


def checkpoint_seconds(checkpoint: Path) -> float | None:
    """The training seconds up to ``checkpoint`` (its ``CLOCK_FILE``), or None when it has no readable record."""
    try:
        seconds = json.loads((Path(checkpoint) / CLOCK_FILE).read_text()).get("seconds")
    except (OSError, ValueError, AttributeError):
        return None
    return float(seconds) if isinstance(seconds, (int, float)) and seconds >= 0 else None


@dataclass
class Slot:
    """Where one training call checkpoints and what it resumes from (``prepare``)."""

    folder: Path | None = None  # <run>/checkpoints/<stage>/<NN>-<trainer>-<fingerprint>/; None: no checkpoints
    resume: Path | None = None  # the checkpoint the call resumes from (None: it starts from the start)
    finished: bool = False  # ``resume`` is the call's last step: load it (``load_finished``), do not train
    earlier: float = 0.0  # training seconds before the resume (the checkpoint's ``CLOCK_FILE``; 0 without one)
    resumed_from: int | None = None  # the step resumed from, when its checkpoint did not record its seconds
    started: list[float] = field(default_factory=lambda: [time.perf_counter()])  # the clock's start (``start``)

    def start(self) -> None:
        """Training starts now: the clock each checkpoint records counts from here (plus ``earlier``)."""
        self.started[0] = time.perf_counter()

    def seconds(self) -> float:
        """The call's training seconds so far: ``earlier`` plus those since ``start``."""
        return self.earlier + time.perf_counter() - self.started[0]


def prepare(trainer) -> Slot:
    """Set ``trainer`` up to checkpoint into its slot of the run folder and to resume from the slot's last checkpoint;
    returns the :class:`Slot` (an empty one when the call does not checkpoint: outside a run folder, no
    ``save_steps``, or a model whose checkpoint could not bring its training back, ``resumable``).

    A trainer saving every ``save_steps`` gets its slot (``settings.current().training_calls`` counts the stage's
    checkpointing calls), the clock callback (``CLOCK_FILE`` in every checkpoint) and the light last checkpoint
    (no optimizer state). With a checkpoint to resume from, the training seconds it recorded and TRL's count of
    tokens trained on (from its log) carry over."""
    slot = Slot()
    if trainer.args.save_strategy == "steps" and not resumable(trainer.model):
        from transformers.trainer_utils import SaveStrategy

        trainer.args.save_strategy = SaveStrategy.NO  # its checkpoint could not bring the training back
    where = settings.current()
    if where.checkpoints is None or trainer.args.save_strategy != "steps":
        return slot
    where.training_calls += 1
    slot.folder = where.checkpoints / (f"{where.training_calls:02d}-{type(trainer).__name__}-"
                                       f"{fingerprint(trainer, trainer.args.output_dir)}")
    trainer.args.output_dir = str(slot.folder)
    slot.resume = last_checkpoint(slot.folder)
    if slot.resume is not None:
        recorded = checkpoint_seconds(slot.resume)
        slot.earlier = recorded or 0.0
        if recorded is None:
            slot.resumed_from = int(slot.resume.name.removeprefix("checkpoint-"))
    trainer.add_callback(_final_checkpoint_light(trainer))
    trainer.add_callback(_clock(slot))
    if slot.resume is not None:
        state = json.loads((slot.resume / "trainer_state.json").read_text())
        slot.finished = state.get("global_step", 0) >= state.get("max_steps", 0) > 0 or stopped_early(state)
        logged = [r["num_tokens"] for r in state.get("log_history", []) if "num_tokens" in r]
        if logged:
            trl_patches.restore_token_count(trainer, logged[-1])
        print(f"{'loading the finished' if slot.finished else 'resuming'} {type(trainer).__name__} from "
              f"{slot.resume} (step {state.get('global_step')} of {state.get('max_steps')})")
    return slot


def stopped_early(state: dict) -> bool:
    """Did early stopping end the training at this checkpoint (its trainer state, as a dict: transformers'
    ``EarlyStoppingCallback`` recorded a count of evaluations without improvement that reached its patience)?"""
    es = (state.get("stateful_callbacks") or {}).get("EarlyStoppingCallback")
    es = es[-1] if isinstance(es, list) and es else es
    if not isinstance(es, dict):
        return False
    patience = (es.get("args") or {}).get("early_stopping_patience") or 0
    return patience > 0 and (es.get("attributes") or {}).get("early_stopping_patience_counter", 0) >= patience


def load_finished(trainer, slot: Slot) -> None:
    """The call's last checkpoint loaded into ``trainer`` instead of training: weights, trainer state, RNG state
    (``trl_patches.load_finished``: ``train()`` from it would not give them back); with ``load_best_model_at_end``
    (early stopping) the weights of the best checkpoint the state names, as the training ended with them."""
    state = json.loads((slot.resume / "trainer_state.json").read_text())
    best = state.get("best_model_checkpoint") if trainer.args.load_best_model_at_end else None
    trl_patches.load_finished(trainer, slot.resume, weights=best if best and Path(best).is_dir() else None)


def _final_checkpoint_light(trainer):
    """A callback: the checkpoint at the last step holds the model, the trainer state and the RNG state, not the
    optimizer (nothing trains from it again; for a full fine-tune of a 135M model that is 1.1 of its 1.6 GB)."""
    from transformers import TrainerCallback

    class FinalCheckpointLight(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.max_steps and state.global_step >= state.max_steps:
                args.save_only_model = True

        def on_save(self, args, state, control, **kwargs):
            if args.save_only_model:
                trl_patches.save_rng_state(trainer, Path(args.output_dir) / f"checkpoint-{state.global_step}")

    return FinalCheckpointLight()


def _clock(slot: Slot):
    """A callback: each checkpoint records the training seconds up to it (``slot.seconds()``) in its
    ``CLOCK_FILE``."""
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if folder.is_dir():
                files.write_json(folder / CLOCK_FILE, {"seconds": slot.seconds(), "step": state.global_step})

    return Clock()
