"""Thin wrappers over TRL trainers: configs built from nbft parameters, a run, a result.

Scopes (what trains) and modes (on what) of supervised fine-tuning:

| scope    | trains                                              | learning rate param     |
|----------|-----------------------------------------------------|-------------------------|
| lora     | low-rank adapters on the linear layers (peft)       | ``learning_rate``       |
| freeze   | only the top ``freeze_top_n`` blocks (+ final norm, + head if ``freeze_train_head``) | ``freeze_learning_rate`` |
| full     | every weight                                        | ``full_learning_rate``  |

| mode                  | data                              | loss on          |
|-----------------------|-----------------------------------|------------------|
| instruction           | prompt/completion pairs           | the completion   |
| continued_pretraining | raw text                          | every token      |
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import models


def lora_config(p, task_type: str = "CAUSAL_LM"):
    """LoraConfig from any parameters with lora_r, lora_alpha, lora_target (and lora_dropout, else 0)."""
    from peft import LoraConfig

    target = p.lora_target if p.lora_target == "all-linear" else [t.strip() for t in p.lora_target.split(",") if t.strip()]
    return LoraConfig(r=p.lora_r, lora_alpha=p.lora_alpha, lora_dropout=getattr(p, "lora_dropout", 0.0),
                      target_modules=target, task_type=task_type)


SCOPES = ("lora", "freeze", "full")
MODES = ("instruction", "continued_pretraining")


def blocks(model):
    """The transformer blocks (the ModuleList with one entry per hidden layer)."""
    import torch.nn as nn

    n = model.config.num_hidden_layers
    for mod in model.modules():
        if isinstance(mod, nn.ModuleList) and len(mod) == n:
            return mod
    raise ValueError(f"cannot find the {n} transformer blocks of {type(model).__name__}")


def _final_norm(model):
    base = getattr(model, "model", None)
    return getattr(base, "norm", None)


def apply_scope(model, scope: str, freeze_top_n: int = 4, freeze_train_head: bool = False):
    """Set ``requires_grad`` for ``full`` or ``freeze``; ``lora`` is left to peft (see ``peft_config_for``).

    ``freeze``: only the top ``freeze_top_n`` blocks (capped at the model's depth) and the final
    norm train, plus the output head if ``freeze_train_head`` (with tied embeddings that is the
    input embedding too).
    """
    if scope not in SCOPES:
        raise ValueError(f"scope: {scope!r} is not one of {', '.join(SCOPES)}")
    if scope == "full":
        model.requires_grad_(True)
    elif scope == "freeze":
        stack = blocks(model)
        if freeze_top_n < 0:
            raise ValueError(f"freeze_top_n: {freeze_top_n} must be 0 or more (the model has {len(stack)} blocks)")
        freeze_top_n = min(freeze_top_n, len(stack))  # a deeper request than the model trains every block
        model.requires_grad_(False)
        for blk in list(stack)[len(stack) - freeze_top_n:]:
            blk.requires_grad_(True)
        norm = _final_norm(model)
        if norm is not None and freeze_top_n > 0:
            norm.requires_grad_(True)
        if freeze_train_head:
            model.get_output_embeddings().requires_grad_(True)
    return model


def steps_for(n_examples: int, p, epochs: float | None = None) -> int:
    """Optimizer steps of a run over ``n_examples`` (what the Trainer will do)."""
    import math

    per_epoch = math.ceil(n_examples / p.batch_size) // p.grad_accum or 1
    return max(1, math.ceil(per_epoch * (p.epochs if epochs is None else epochs)))


def learning_rate_for(p, scope: str) -> float:
    return {"lora": p.learning_rate, "freeze": p.freeze_learning_rate, "full": p.full_learning_rate}[scope]


def trainer_args(p, output_dir: str | Path, **overrides) -> dict[str, Any]:
    """Arguments every nbft trainer config shares (SFT, reward, GRPO/RLOO, DPO/KTO): CPU-aware precision,
    linear schedule, no checkpoints, logs every step, seeded; ``overrides`` win."""
    device = models.pick_device(p.device)
    precision = models.pick_precision(p.precision, device)
    kwargs: dict[str, Any] = dict(
        output_dir=str(output_dir),
        lr_scheduler_type="linear",
        warmup_steps=0.05,
        activation_checkpointing=getattr(p, "gradient_checkpointing", False),  # TRL turns it on by default: slower on CPU
        gradient_checkpointing=None,  # deprecated alias in transformers 5
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=device == "cpu",
        logging_steps=1,
        eval_strategy="no",
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=p.seed,
        data_seed=p.seed,
        dataloader_pin_memory=False,
    )
    kwargs.update(overrides)
    return kwargs


def sft_config(p, output_dir: str | Path, **overrides):
    """SFTConfig from SFTParams (see ``trainer_args``)."""
    from trl import SFTConfig

    return SFTConfig(**trainer_args(p, output_dir, **{
        "num_train_epochs": p.epochs,
        "per_device_train_batch_size": p.batch_size,
        "per_device_eval_batch_size": p.batch_size,
        "gradient_accumulation_steps": p.grad_accum,
        "learning_rate": p.learning_rate,
        "max_length": p.max_length,
        "completion_only_loss": True,  # prompt/completion data: loss on the response only
        **overrides}))


def run_trainer(trainer) -> float:
    """``trainer.train()`` without the raw log dicts on the console (``log_history`` keeps them); seconds taken."""
    from transformers import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    t0 = time.perf_counter()
    trainer.train()
    return time.perf_counter() - t0


def finish(model):
    """After training: take accelerate's autocast wrappers off and switch to eval mode; returns the model."""
    remove_autocast_wrappers(model)
    model.eval()
    return model


def to_dataset(records: list[dict], mode: str = "instruction"):
    """Rendered records -> a datasets.Dataset: TRL's prompt/completion form, or plain text."""
    import datasets

    if mode == "continued_pretraining":
        return datasets.Dataset.from_list([{"text": r["text"]} for r in records])
    return datasets.Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in records])


@dataclass
class TrainResult:
    trainer: Any
    seconds: float
    train_tokens: int
    eval_loss: float | None
    log_history: list[dict] = field(default_factory=list)

    @property
    def tokens_per_second(self) -> float:
        return self.train_tokens / self.seconds if self.seconds else float("nan")


def sft(model, tokenizer, train: list[dict], validation: list[dict], p, peft_config=None, callbacks=(),
        mode: str = "instruction", output_dir: str | Path | None = None, **overrides) -> TrainResult:
    """Supervised fine-tuning with TRL's SFTTrainer.

    ``instruction`` mode: rendered prompt/completion records, loss on completions only.
    ``continued_pretraining``: ``{"text"}`` records, loss on every token.
    ``model`` is trained in place (wrapped by peft when ``peft_config`` is given:
    use ``result.trainer.model``). Leaves the model in eval mode. Nothing is written to
    disk unless ``output_dir`` is given (the trainer's scratch folder is temporary);
    save what you keep with :func:`save_tuned`.
    """
    import tempfile

    if output_dir is None:
        with tempfile.TemporaryDirectory(prefix="nbft-trainer-") as tmp:
            return sft(model, tokenizer, train, validation, p, peft_config, callbacks, mode, tmp, **overrides)

    import datasets
    from trl import SFTTrainer

    if mode not in MODES:
        raise ValueError(f"mode: {mode!r} is not one of {', '.join(MODES)}")
    datasets.disable_progress_bars()  # per-map bars drown the notebook; the monitor shows progress
    if mode == "continued_pretraining":
        overrides.setdefault("completion_only_loss", False)
    args = sft_config(p, output_dir, **overrides)
    trainer = SFTTrainer(model=model, args=args, train_dataset=to_dataset(train, mode),
                         eval_dataset=to_dataset(validation, mode) if validation else None,
                         processing_class=tokenizer, peft_config=peft_config, callbacks=list(callbacks))
    seconds = run_trainer(trainer)
    eval_loss = trainer.evaluate()["eval_loss"] if validation else None
    finish(trainer.model)
    tokenizer.padding_side = "left"
    logs = [r for r in trainer.state.log_history if "num_tokens" in r and "eval_loss" not in r]
    tokens = int(logs[-1]["num_tokens"]) if logs else 0  # TRL counts the non-padding tokens trained on
    return TrainResult(trainer, seconds, tokens, eval_loss, list(trainer.state.log_history))


def remove_autocast_wrappers(model) -> int:
    """Undo accelerate's mixed-precision forward wrappers, on the model and any submodule.

    For bf16 training accelerate replaces ``forward`` on the prepared model (with peft: on the inner
    transformers model too) by an autocast-wrapped copy. Left in place, every later call runs in bf16
    whatever the caller asks for: evaluation at fp32 is silently bf16, and a merged model compared with
    its adapter differs by nothing at all. Returns how many wrappers were removed.
    """
    import inspect

    n = 0
    for module in model.modules():
        fwd = module.__dict__.get("forward")
        if fwd is not None and hasattr(fwd, "__wrapped__"):
            if inspect.unwrap(getattr(fwd, "__func__", fwd)) is inspect.unwrap(type(module).forward):
                del module.__dict__["forward"]
                module.__dict__.pop("_original_forward", None)
                n += 1
    return n


def finetune(model, tokenizer, train: list[dict], validation: list[dict], p, scope: str = "lora",
             mode: str = "instruction", callbacks=(), **overrides) -> TrainResult:
    """``sft`` with a scope: LoRA adapters, top-N blocks, or every weight; the scope's learning rate."""
    apply_scope(model, scope if scope != "lora" else "full", p.freeze_top_n, p.freeze_train_head)
    peft_config = lora_config(p) if scope == "lora" else None
    overrides.setdefault("learning_rate", learning_rate_for(p, scope))
    return sft(model, tokenizer, train, validation, p, peft_config=peft_config, callbacks=callbacks, mode=mode,
               **overrides)


def save_tuned(model, tokenizer, folder: str | Path, scope: str) -> dict[str, Path]:
    """Save a tuned model for later stages: the adapter (lora) or the model, plus a merged standalone copy.

    Returns {"adapter"|"model": path, "merged": path}. The merged folder loads with plain
    ``AutoModelForCausalLM.from_pretrained``.
    """
    folder = Path(folder)
    out = {}
    if hasattr(model, "peft_config"):
        adapter = folder / "adapter"
        model.save_pretrained(adapter)
        tokenizer.save_pretrained(adapter)
        out["adapter"] = adapter
        import copy

        merged_model = copy.deepcopy(model).merge_and_unload()
    else:
        merged_model = model
    merged = models.save(merged_model, tokenizer, folder / "merged")
    out["merged"] = merged
    if merged_model is not model:
        del merged_model
    return out
