"""Thin wrappers over TRL trainers: configs built from nbft parameters, a run, a result."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import models


def lora_config(p, task_type: str = "CAUSAL_LM"):
    from peft import LoraConfig

    target = p.lora_target if p.lora_target == "all-linear" else [t.strip() for t in p.lora_target.split(",") if t.strip()]
    return LoraConfig(r=p.lora_r, lora_alpha=p.lora_alpha, lora_dropout=p.lora_dropout, target_modules=target,
                      task_type=task_type)


def sft_config(p, output_dir: str | Path, **overrides):
    """SFTConfig from SFTParams: CPU-aware precision, no checkpoints, logs every step."""
    from trl import SFTConfig

    device = models.pick_device(p.device)
    precision = models.pick_precision(p.precision, device)
    kwargs: dict[str, Any] = dict(
        output_dir=str(output_dir),
        num_train_epochs=p.epochs,
        per_device_train_batch_size=p.batch_size,
        per_device_eval_batch_size=p.batch_size,
        gradient_accumulation_steps=p.grad_accum,
        learning_rate=p.learning_rate,
        lr_scheduler_type="linear",
        warmup_steps=0.05,
        max_length=p.max_length,
        completion_only_loss=True,  # prompt/completion data: loss on the response only
        activation_checkpointing=p.gradient_checkpointing,  # TRL turns it on by default: slower on CPU
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
    return SFTConfig(**kwargs)


def to_dataset(records: list[dict]):
    """Rendered records -> a datasets.Dataset in TRL's prompt/completion form."""
    import datasets

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


def count_tokens(records: list[dict], max_length: int) -> int:
    return sum(min(r["n_tokens"], max_length) for r in records)


def sft(model, tokenizer, train: list[dict], validation: list[dict], p, output_dir: str | Path,
        peft_config=None, callbacks=(), **overrides) -> TrainResult:
    """Supervised fine-tuning with TRL's SFTTrainer (loss on completions only).

    ``model`` is trained in place (wrapped by peft when ``peft_config`` is given:
    use ``result.trainer.model``). Leaves the model in eval mode.
    """
    import datasets
    from trl import SFTTrainer

    datasets.disable_progress_bars()  # per-map bars drown the notebook; the monitor shows progress
    args = sft_config(p, output_dir, **overrides)
    trainer = SFTTrainer(model=model, args=args, train_dataset=to_dataset(train),
                         eval_dataset=to_dataset(validation) if validation else None,
                         processing_class=tokenizer, peft_config=peft_config, callbacks=list(callbacks))
    if callbacks:  # a live monitor replaces the printed log dicts
        from transformers import PrinterCallback

        trainer.remove_callback(PrinterCallback)
    t0 = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t0
    eval_loss = trainer.evaluate()["eval_loss"] if validation else None
    trainer.model.eval()
    tokenizer.padding_side = "left"
    tokens = int(count_tokens(train, p.max_length) * p.epochs)
    return TrainResult(trainer, seconds, tokens, eval_loss, list(trainer.state.log_history))
