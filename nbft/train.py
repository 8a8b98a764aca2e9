"""Thin wrappers over TRL trainers: configs built from nbft parameters, scopes, a run, a result, saving.

- configs: ``trainer_args`` (what every trainer config shares), ``sft_config``, ``lora_config``;
- scopes: ``apply_scope``, ``learning_rate_for``, ``scoped`` (both at once, for ``finetune`` and ``distill``), QLoRA
  (``quantized_4bit``), ``training_precision``;
- training: ``sft``, ``finetune``, ``trained`` (fresh model -> train -> yield -> free) and ``fit``, the one function
  every trainer of every stage reaches (built by a function, so ``launch`` can build it in each process), with its
  ``TrainResult``;
- saving: ``save_tuned`` (adapters kept as adapters), ``saved_model``, ``merged_copy``.

Checkpoints and resuming are ``nbft.checkpoints``' (``fit`` calls ``checkpoints.prepare``); every patch of TRL,
transformers or accelerate and every call of a private name of theirs is ``nbft.trl_patches``' (``fit`` trains inside
``trl_patches.cpu_layouts``, ``finish`` takes accelerate's wrappers off).

Scopes (what trains) and modes (on what) of supervised fine-tuning:

| scope    | trains                                              | learning rate param     |
|----------|-----------------------------------------------------|-------------------------|
| lora     | low-rank adapters on the linear layers (peft)       | ``learning_rate``       |
| freeze   | only the top ``freeze_top_n`` blocks (+ final norm, + head if ``freeze_train_head``) | ``freeze_learning_rate`` |
| full     | every weight                                        | ``full_learning_rate``  |

| mode                  | data                              | loss on                                                   |
|-----------------------|-----------------------------------|-----------------------------------------------------------|
| instruction           | prompt/completion pairs           | the completion (``loss_turns`` all: every assistant reply) |
| continued_pretraining | raw text                          | every token                                               |

Parameters come in groups (``nbft.params``): a function documents the groups it reads — ``Common``
(device, precision, seed), ``TrainArgs`` (the loop), ``ScopeArgs`` (scope and rates), ``LoraArgs`` —
and takes any parameters object that has them (every stage dataclass that composes the group).
"""
from __future__ import annotations

import contextlib
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import checkpoints, data, launch, models, timing, tracking, trl_patches

SCOPES = ("lora", "freeze", "full")
#: What ``finetune`` (02_sft's main run and scope comparison) also trains: LoRA on a 4-bit NF4 base (QLoRA,
#: bitsandbytes, a CUDA GPU: ``qlora_needs``).
SFT_SCOPES = (*SCOPES, "qlora")
MODES = ("instruction", "continued_pretraining")
#: TRL's packing strategies (``TrainArgs.packing_strategy``) and what each does to a row of ``max_length`` tokens;
#: bfd and bfd_split pack padding-free (``PADDING_FREE_PACKING``: no attention mask, position ids restarting at each
#: example, which sdpa and eager attention turn into a block-diagonal mask: exact where ``padding_free_ok``).
PACKING_STRATEGIES = {
    "bfd": "best-fit decreasing: whole examples (one longer than max_length truncated), each attending only to itself",
    "bfd_split": "bfd, an example longer than max_length split over rows instead of truncated",
    "wrapped": "examples back to back, cut every max_length tokens: each attends to the examples before it in its row",
}
PADDING_FREE_PACKING = ("bfd", "bfd_split")


def lora_config(lora, task_type: str = "CAUSAL_LM", **extra):
    """LoraConfig from a ``LoraArgs`` group (lora_r, lora_alpha, lora_dropout, lora_target); ``extra`` goes to peft
    (``use_dora=True``, ``use_rslora=True``, ...)."""
    from peft import LoraConfig

    target = lora.lora_target if lora.lora_target == "all-linear" else [
        t.strip() for t in lora.lora_target.split(",") if t.strip()]
    return LoraConfig(r=lora.lora_r, lora_alpha=lora.lora_alpha, lora_dropout=lora.lora_dropout,
                      target_modules=target, task_type=task_type, **extra)


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
    """Set ``requires_grad`` for ``full`` or ``freeze``; ``lora`` is left to peft (see ``lora_config``).

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


def steps_for(n_examples: int, loop, epochs: float | None = None) -> int:
    """Optimizer steps of a run over ``n_examples`` with a ``TrainArgs`` group (what the Trainer will do)."""
    per_epoch = math.ceil(n_examples / loop.batch_size) // loop.grad_accum or 1
    return max(1, math.ceil(per_epoch * (loop.epochs if epochs is None else epochs)))


def qlora_needs() -> str:
    """What this machine lacks for QLoRA ("" when nothing): a CUDA GPU, the bitsandbytes package."""
    import importlib.util

    import torch

    missing = []
    if not torch.cuda.is_available():
        missing.append("a CUDA GPU")
    if importlib.util.find_spec("bitsandbytes") is None:
        missing.append("the bitsandbytes package")
    return " and ".join(missing)


def quantized_4bit(model):
    """``model`` reloaded from its folder with 4-bit NF4 weights (bitsandbytes, bf16 compute) on GPU 0, prepared
    for k-bit training (peft's ``prepare_model_for_kbit_training``): the base QLoRA trains adapters on."""
    import torch
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    if qlora_needs():
        raise ValueError(f"qlora needs {qlora_needs()}")
    q = AutoModelForCausalLM.from_pretrained(
        model.config.name_or_path, device_map={"": 0},
        quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                               bnb_4bit_compute_dtype=torch.bfloat16))
    return prepare_model_for_kbit_training(q)


def learning_rate_for(rates, scope: str) -> float:
    """The learning rate of a scope, from a ``ScopeArgs`` group (QLoRA: LoRA's)."""
    scope = "lora" if scope == "qlora" else scope
    return {"lora": rates.learning_rate, "freeze": rates.freeze_learning_rate, "full": rates.full_learning_rate}[scope]


def scoped(model, p, scope: str):
    """``model`` made trainable the way ``scope`` says, with what a trainer needs for it: ``(model, peft_config,
    learning_rate)`` (``p``: ``ScopeArgs`` and ``LoraArgs``). ``lora``: every weight marked trainable and a LoRA
    config (peft freezes the base when it wraps the model); ``freeze`` / ``full``: ``apply_scope``, no config;
    ``qlora``: the model reloaded in 4 bits (``quantized_4bit``, a new object) and a LoRA config. The learning rate
    is the scope's (``learning_rate_for``). Every scoped trainer goes through this (``finetune``, ``distill``)."""
    if scope == "qlora":
        model = quantized_4bit(model)
    else:
        apply_scope(model, scope if scope != "lora" else "full", p.freeze_top_n, p.freeze_train_head)
    return model, lora_config(p) if scope in ("lora", "qlora") else None, learning_rate_for(p, scope)


def training_precision(common) -> str:
    """The precision trainers train at, from the ``Common`` group (``models.pick_precision`` on the device
    ``models.pick_device`` picks): what ``trainer_args`` gives every trainer and what runs beside a trainer
    (``bf16_frozen_base``, ``distill``'s sampling block) reads."""
    return models.pick_precision(common.precision, models.pick_device(common.device))


def trainer_args(common, output_dir: str | Path, gradient_checkpointing: bool = False, **overrides) -> dict[str, Any]:
    """Arguments every nbft trainer config shares (SFT, reward, GRPO/RLOO, DPO/KTO, distillation), from the
    ``Common`` group: CPU-aware precision (``training_precision``), linear schedule, logs every step, seeded; in a run
    folder a checkpoint every ``save_steps`` steps, only the last one kept (``checkpoints.save_args``: ``fit`` puts it
    in the run folder and resumes from it); ``overrides`` win."""
    device = models.pick_device(common.device)
    precision = training_precision(common)
    kwargs: dict[str, Any] = dict(
        output_dir=str(output_dir),
        lr_scheduler_type="linear",
        warmup_steps=0,  # TRL's default; a 0.05 ratio rounded up to one step at learning rate 0 (1/16 of a short run)
        activation_checkpointing=gradient_checkpointing,  # TRL turns it on by default: slower on CPU
        gradient_checkpointing=None,  # deprecated alias in transformers 5
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=device == "cpu",
        logging_steps=1,
        eval_strategy="no",
        report_to=tracking.report_to(),  # kernel.setup: common.report_to, into <run>/tracking/
        disable_tqdm=True,
        seed=common.seed,
        data_seed=common.seed,
        dataloader_pin_memory=False,
    )
    kwargs.update(checkpoints.save_args(common))
    kwargs.update(overrides)
    return kwargs


def padding_free_ok(model, peft_config=None) -> bool:
    """Can SFT batches go padding-free here (TRL's ``padding_free``: the batch's examples back to back in one row,
    position ids restarting at 0 for each, no attention mask)? With sdpa or eager attention transformers builds
    the block-diagonal causal mask from the position ids (``masking_utils.find_packed_sequence_indices``) when
    there is no cache, which TRL's ``compute_loss`` ensures; flash attention reads them as sequence starts. Not
    for peft's prompt learning (virtual tokens prepended, prefix tuning's past key values: no packed mask)."""
    configs = [peft_config] if peft_config is not None else list((getattr(model, "peft_config", {}) or {}).values())
    if any(getattr(c, "is_prompt_learning", False) for c in configs):
        return False
    return trl_patches.attn_implementation(model) in ("sdpa", "eager", "flash_attention_2", "flash_attention_3")


def bf16_frozen_base(model, common, peft_config=None):
    """LoRA-style training at bf16 precision: the frozen base weights held in bf16 instead of fp32 weights cast
    to bf16 by autocast at every forward (in RL, at every sampled token: autocast caches no cast of a frozen
    weight); the adapters peft adds stay fp32 (its ``autocast_adapter_dtype``), so do the optimizer states.
    Only with a ``peft_config`` that is not prompt learning, at precision bf16 (``Common``), on fp32 weights;
    returns the model (moved in place)."""
    import torch

    if (training_precision(common) == "bf16" and peft_config is not None
            and not getattr(peft_config, "is_prompt_learning", False)
            and next(model.parameters()).dtype == torch.float32):
        model.to(torch.bfloat16)
    return model


def fits(tokenizer, texts: list[str], max_length: int | None) -> bool:
    """Does every text fit in ``max_length`` tokens with the EOS TRL appends (so nothing would be truncated)?"""
    if max_length is None:
        return True
    return all(len(ids) + 1 <= max_length for ids in tokenizer(texts, add_special_tokens=False)["input_ids"])


def eval_args(p) -> dict[str, Any]:
    """Trainer arguments of evaluation during training, from the ``TrainArgs`` group, for a trainer that has a
    validation set: the validation loss every ``eval_steps`` optimizer steps (and at the end: transformers evaluates
    the last step too); with ``early_stopping_patience`` the best of them restored at the end
    (``load_best_model_at_end`` on ``eval_loss``), which transformers 5.23 allows only when checkpoints are saved
    on the same steps: a checkpoint at every evaluation (``save_steps`` = ``eval_steps``, in the run folder under
    ``nbft run``, else in the trainer's scratch folder), the last and the best kept (``save_total_limit`` 2: the
    last one for ``--resume``), the early-stopping count restored on a resume. Empty when ``eval_steps`` is 0."""
    if p.eval_steps <= 0:
        return {}
    args: dict[str, Any] = {"eval_strategy": "steps", "eval_steps": p.eval_steps}
    if p.early_stopping_patience > 0:
        args.update(load_best_model_at_end=True, metric_for_best_model="eval_loss", greater_is_better=False,
                    save_strategy="steps", save_steps=p.eval_steps, save_total_limit=2,
                    restore_callback_states_from_checkpoint=True)
    return args


def early_stopping(p) -> list:
    """transformers' ``EarlyStoppingCallback`` for ``TrainArgs``' ``early_stopping_patience`` (none when 0)."""
    from transformers import EarlyStoppingCallback

    return [EarlyStoppingCallback(p.early_stopping_patience)] if p.early_stopping_patience > 0 and p.eval_steps > 0 else []


def sft_config(p, output_dir: str | Path, learning_rate: float, **overrides):
    """SFTConfig from the ``Common`` and ``TrainArgs`` groups of ``p`` (see ``trainer_args``; evaluation during
    training: pass ``eval_args(p)`` in ``overrides``, as ``sft`` does when it has a validation set). NEFTune and
    packing (``neftune_noise_alpha``, ``packing``, ``packing_strategy``) go to TRL as they are; the validation set is
    never packed (``eval_packing`` False), so its loss compares across packing strategies."""
    from trl import SFTConfig

    return SFTConfig(**trainer_args(p, output_dir, p.gradient_checkpointing, **{
        "num_train_epochs": p.epochs,
        "per_device_train_batch_size": p.batch_size,
        "per_device_eval_batch_size": p.batch_size,
        "gradient_accumulation_steps": p.grad_accum,
        "learning_rate": learning_rate,
        "max_length": p.max_length,
        "completion_only_loss": True,  # prompt/completion data: loss on the response only
        "neftune_noise_alpha": p.neftune_noise_alpha or None,  # transformers: None is off
        "packing": p.packing,
        "packing_strategy": p.packing_strategy,
        "eval_packing": False,  # the validation loss on whole, separate examples: the same with and without packing
        **overrides}))


@contextlib.contextmanager
def scratch_dir():
    """A temporary folder for a trainer's own files (nothing of it is kept: save what you keep)."""
    with tempfile.TemporaryDirectory(prefix="nbft-trainer-") as tmp:
        yield Path(tmp)


def finish(model):
    """After training: take accelerate's autocast wrappers off (``trl_patches.remove_autocast_wrappers``), switch to
    eval mode and drop the loaded checksum (``models.CHECKSUM_ATTR``: the weights are not the loaded ones any more);
    returns the model."""
    trl_patches.remove_autocast_wrappers(model)
    for module in model.modules():
        module.__dict__.pop(models.CHECKSUM_ATTR, None)
    model.eval()
    return model


class PeakRSS:
    """Peak resident memory (MB) of this process while the block runs (sampled every 50 ms);
    on a GPU, torch's max allocated memory instead."""

    def __enter__(self):
        import threading

        import psutil
        import torch

        self.cuda = torch.cuda.is_available()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        self.proc = psutil.Process()
        self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()

        def sample():
            while not self._stop.wait(0.05):
                self.peak = max(self.peak, self.proc.memory_info().rss)
        self._t = threading.Thread(target=sample, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc):
        import torch

        self._stop.set()
        self._t.join()
        self.mb = (torch.cuda.max_memory_allocated() if self.cuda else self.peak) / 2**20
        return False


@dataclass
class TrainResult:
    """A finished training run: the trained ``model`` (eval mode), its ``trainer``, the time it took (a resumed
    call: the training time before the resume, as its checkpoint recorded it, plus the time after), the tokens it
    trained on, the eval loss (if it had validation data) and the log history. ``resumed_from_step``: set when the
    call resumed from a checkpoint that did not record its training time; ``seconds`` then counts only the part
    after it, and ``tokens_per_second`` is None."""

    model: Any
    trainer: Any
    seconds: float
    steps: int = 0
    train_tokens: int = 0
    eval_loss: float | None = None
    log_history: list[dict] = field(default_factory=list)
    resumed_from_step: int | None = None
    ranks: list[dict] = field(default_factory=list)  # num_processes > 1: each rank's record (launch.run)
    eval_curve: list[dict] = field(default_factory=list)  # evaluations during training (``eval_curve``)
    best_step: int | None = None  # the step of the lowest validation loss on the curve
    stopped_early: bool = False  # the training ended before its planned steps (early stopping, or a callback)
    stopped_at_step: int | None = None  # where it did (None: it ran to the end)

    @property
    def eval_seconds(self) -> float:
        """Seconds of ``seconds`` spent evaluating during training (transformers' ``eval_runtime``)."""
        return sum(r.get("seconds") or 0.0 for r in self.eval_curve)

    @property
    def tokens_per_second(self) -> float | None:
        """Training throughput: the tokens trained on per second of training, evaluations left out."""
        if self.resumed_from_step is not None:
            return None
        seconds = self.seconds - self.eval_seconds
        return self.train_tokens / seconds if seconds > 0 else float("nan")

    def release(self) -> None:
        """Free the trained model (``models.release``: also through any other name that points to it) and the
        trainer with its optimizer state; the numbers stay."""
        model, self.model, self.trainer = self.model, None, None
        models.release(model)


@timing.timed("training")
def fit(trainer, evaluate: bool = False) -> TrainResult:
    """``trainer.train()`` for any TRL/transformers trainer — or for the trainer a function builds, which is what
    every nbft stage passes: with ``num_processes`` > 1 (``launch``) each of the processes builds its own and
    trains its share of every batch, and the trained model comes back here — without the raw log dicts on the console
    (``log_history`` keeps them), inside TRL's faster CPU layouts (``trl_patches.cpu_layouts``); then the model
    cleaned up for inference (``finish``) and, with ``evaluate``, the eval loss.

    In a run folder (``settings.current().checkpoints``, trainer saving every ``save_steps``) the call checkpoints
    into its own slot and, when the slot already has a checkpoint (the stage is running again after a crash),
    resumes from it: model, optimizer, scheduler, RNG state, data position and log history, so the model, the log
    and the tokens trained on equal an uninterrupted run's (``checkpoints.prepare``). A resumed call's seconds add
    the training seconds its checkpoint recorded; a checkpoint without that record gives ``resumed_from_step`` and
    no ``tokens_per_second`` (``TrainResult``). A call whose last checkpoint is there loads it instead of training
    (``checkpoints.load_finished``)."""
    from transformers import PrinterCallback

    if not hasattr(trainer, "train"):  # a function that builds the trainer
        if launch.wanted():  # num_processes > 1: each process builds its own (no checkpoints, no live monitors)
            r = launch.run(trainer, evaluate, finish, trl_patches.cpu_layouts)
            return TrainResult(r["model"], None, r["seconds"], r["steps"], trained_tokens(r["log_history"]),
                               r["eval_loss"], r["log_history"], ranks=r["ranks"],
                               **curve_fields(r["log_history"][:r["n_logged"]], r["steps"], r["max_steps"]))
        trainer = trainer()
    trainer.remove_callback(PrinterCallback)
    slot = checkpoints.prepare(trainer)
    tracking.attach(trainer)
    slot.start()
    if slot.finished:
        checkpoints.load_finished(trainer, slot)
        seconds = slot.earlier  # loading is not training
    else:
        with trl_patches.cpu_layouts(trainer):
            trainer.train(resume_from_checkpoint=str(slot.resume) if slot.resume is not None else None)
        seconds = slot.seconds()
    state = trainer.state
    curve = curve_fields(state.log_history, state.global_step, state.max_steps)
    last = curve["eval_curve"][-1] if curve["eval_curve"] else None
    eval_loss = None
    if evaluate and last and last["step"] == state.global_step and not trainer.args.load_best_model_at_end:
        eval_loss = last["eval_loss"]  # the model as it is now, evaluated at its last step
    elif evaluate:
        with trl_patches.cpu_layouts(trainer):
            eval_loss = trainer.evaluate()["eval_loss"]
    return TrainResult(finish(trainer.model), trainer, seconds, state.global_step,
                       trained_tokens(state.log_history), eval_loss, list(state.log_history),
                       slot.resumed_from, **curve)


def eval_curve(log_history: list[dict]) -> list[dict]:
    """The evaluations a training logged (``TrainArgs``' ``eval_steps``): one row per evaluation, {"step",
    "eval_loss", "train_loss": the mean of the training losses logged since the evaluation before (None: none),
    "seconds": how long the evaluation took}."""
    curve, losses = [], []
    for r in log_history:
        if "eval_loss" in r:
            curve.append({"step": int(r["step"]), "eval_loss": float(r["eval_loss"]),
                          "train_loss": sum(losses) / len(losses) if losses else None,
                          "seconds": float(r.get("eval_runtime", 0.0))})
            losses = []
        elif "loss" in r:
            losses.append(float(r["loss"]))
    return curve


def curve_fields(log_history: list[dict], steps: int, max_steps: int) -> dict[str, Any]:
    """``TrainResult``'s fields of evaluation during training from a log: ``eval_curve``, ``best_step`` (the first
    step of the lowest validation loss: the one ``load_best_model_at_end`` restores), ``stopped_early`` and
    ``stopped_at_step`` (the training ended before its ``max_steps``: early stopping, or a callback that stopped
    it)."""
    curve = eval_curve(log_history)
    best = min(curve, key=lambda r: r["eval_loss"])["step"] if curve else None
    stopped = bool(max_steps) and steps < max_steps
    return {"eval_curve": curve, "best_step": best, "stopped_early": stopped,
            "stopped_at_step": steps if stopped else None}


def trained_tokens(log_history: list[dict]) -> int:
    """The non-padding tokens a training call trained on, as TRL counts them in its log (0 when it does not)."""
    logs = [r for r in log_history if "num_tokens" in r and "eval_loss" not in r]
    return int(logs[-1]["num_tokens"]) if logs else 0


def to_dataset(records: list[dict], mode: str = "instruction", tokenizer=None, loss_turns: str = "last"):
    """Rendered records -> a datasets.Dataset: TRL's prompt/completion form, or plain text. With ``loss_turns``
    ``all`` (``TrainArgs``; needs the ``tokenizer``) and a record of several assistant turns, every record
    pre-tokenized instead (``data.tokenize_turns``: ``input_ids`` and ``completion_mask``, which TRL folds into the
    labels under ``completion_only_loss``), so the loss covers every reply; one-turn records give the same tokens
    and mask as the prompt/completion form, so data without multi-turn records goes in that form, as before."""
    import datasets

    if mode == "continued_pretraining":
        return datasets.Dataset.from_list([{"text": r["text"]} for r in records])
    if loss_turns not in data.LOSS_TURNS:
        raise ValueError(f"loss_turns: {loss_turns!r} is not one of {', '.join(data.LOSS_TURNS)}")
    if loss_turns == "all" and any(data.n_replies(r) > 1 for r in records):
        if tokenizer is None:
            raise ValueError("loss_turns all: multi-turn records need the tokenizer to mark every reply")
        return datasets.Dataset.from_list([data.tokenize_turns(r, tokenizer, loss_turns) for r in records])
    return datasets.Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in records])


def sft(model, tokenizer, train: list[dict], validation: list[dict], p, learning_rate: float, peft_config=None,
        callbacks=(), mode: str = "instruction", **overrides) -> TrainResult:
    """Supervised fine-tuning with TRL's SFTTrainer (``p``: the ``Common`` and ``TrainArgs`` groups).

    ``instruction`` mode: rendered prompt/completion records, loss on the completion — and, with ``TrainArgs``'
    ``loss_turns`` ``all``, on every earlier assistant reply of a multi-turn record too (``to_dataset``).
    ``continued_pretraining``: ``{"text"}`` records, loss on every token.
    With ``TrainArgs``' ``packing`` the examples go into rows of ``max_length`` tokens (``PACKING_STRATEGIES``; the
    padding-free ones refused where they would not be exact) and ``batch_size`` counts rows; with
    ``neftune_noise_alpha`` the input embeddings are noised while training (transformers' NEFTune hook, removed when
    training ends).
    Batches are padded to their longest example; ``padding_free=True`` packs each batch into one row instead, where
    that is exact (``padding_free_ok``) and no example is longer than ``max_length`` (``fits``) — measured no faster
    on 2 CPU cores with ~50-token examples (the packed row's masked attention costs what the padding saved), so not
    the default. With a ``peft_config`` at bf16 the frozen base is held in bf16 (``bf16_frozen_base``).
    ``model`` is trained in place (wrapped by peft when ``peft_config`` is given: use
    ``result.model``), left in eval mode. Nothing is written to disk (the trainer's folder is
    temporary); save what you keep with :func:`save_tuned`.
    """
    import datasets
    from trl import SFTTrainer

    if mode not in MODES:
        raise ValueError(f"mode: {mode!r} is not one of {', '.join(MODES)}")
    datasets.disable_progress_bars()  # per-map bars drown the notebook; the monitor shows progress
    if mode == "continued_pretraining":
        overrides.setdefault("completion_only_loss", False)
    if p.packing and p.packing_strategy in PADDING_FREE_PACKING and not padding_free_ok(model, peft_config):
        raise ValueError(f"packing_strategy {p.packing_strategy}: packs examples padding-free, which is not exact for "
                         "this model (its attention implementation, or peft's prompt learning, does not keep examples "
                         "packed in one row apart); use packing_strategy wrapped or leave packing off")
    if p.packing and overrides.get("padding_free"):
        raise ValueError("padding_free and packing: packing sets its own batches (bfd and bfd_split are padding-free "
                         "already); ask for one of them")
    if overrides.get("padding_free"):  # opt-in: on 2 CPU cores no faster than padding (benchmarks/train_vs_trl.py)
        texts = [r["text"] if mode == "continued_pretraining" else r["prompt"] + r["completion"]
                 for r in [*train, *validation]]
        max_length = overrides.get("max_length", p.max_length)
        if not padding_free_ok(model, peft_config):
            raise ValueError("padding_free: not exact for this model (its attention implementation, or peft's prompt "
                             "learning, does not separate examples packed in one row); leave it off")
        if not fits(tokenizer, texts, max_length):
            raise ValueError(f"padding_free: some examples are longer than max_length {max_length}, and TRL does not "
                             "truncate padding-free batches; raise max_length or leave padding_free off")
        overrides["max_length"] = None
    bf16_frozen_base(model, p, peft_config)
    with scratch_dir() as tmp, models.padding_side(tokenizer, tokenizer.padding_side):
        def build():
            evaluating = eval_args(p) if validation else {}  # only a trainer with a validation set evaluates
            return SFTTrainer(model=model, args=sft_config(p, tmp, learning_rate, **{**evaluating, **overrides}),
                              train_dataset=to_dataset(train, mode, tokenizer, p.loss_turns),
                              eval_dataset=to_dataset(validation, mode, tokenizer, p.loss_turns) if validation
                              else None,
                              processing_class=tokenizer, peft_config=peft_config,
                              callbacks=[*callbacks, *(early_stopping(p) if evaluating else [])])
        return fit(build, evaluate=bool(validation))


def finetune(model, tokenizer, train: list[dict], validation: list[dict], p, scope: str = "lora",
             mode: str = "instruction", callbacks=(), **overrides) -> TrainResult:
    """``sft`` with a scope (``p``: ``Common``, ``TrainArgs``, ``ScopeArgs``, ``LoraArgs``): LoRA adapters,
    top-N blocks, every weight, or LoRA on the model reloaded in 4 bits (``qlora``), at the scope's learning
    rate."""
    model, peft_config, learning_rate = scoped(model, p, scope)
    overrides.setdefault("learning_rate", learning_rate)
    return sft(model, tokenizer, train, validation, p, peft_config=peft_config, callbacks=callbacks, mode=mode,
               **overrides)


@contextlib.contextmanager
def trained(p, tokenizer, train: list[dict], validation: list[dict] = (), scope: str = "lora",
            mode: str = "instruction", model=None, prepare: Callable | None = None, callbacks=(), **overrides):
    """Fresh model -> train -> (use it in the block) -> free it.

    Loads a fresh copy of ``p.model`` (or trains ``model`` if one is given), trains it with ``scope``
    (``finetune``), or, with ``prepare``, makes it trainable with ``prepare(model)`` and trains that
    (``sft``; pass ``learning_rate``). Yields the ``TrainResult``; when the block ends the model is
    released (``TrainResult.release``), so a loop of runs holds one model at a time::

        with train.trained(p, tokenizer, examples, scope="full") as r:
            score = evaluate.evaluate_model(r.model, tokenizer, test)["task_score"]
    """
    if model is None:
        model, _ = models.load_model(p.model, p.device, tokenizer=tokenizer)
    if prepare is not None:
        result = sft(prepare(model), tokenizer, train, list(validation), p, callbacks=callbacks, mode=mode, **overrides)
    else:
        result = finetune(model, tokenizer, train, list(validation), p, scope=scope, mode=mode, callbacks=callbacks,
                          **overrides)
    del model
    try:
        yield result
    finally:
        result.release()


def merged_copy(model):
    """A standalone copy of a peft model with its adapter folded in (the model itself if it has none)."""
    import copy

    return copy.deepcopy(model).merge_and_unload() if hasattr(model, "peft_config") else model


def save_tuned(model, tokenizer, folder: str | Path, base: str, merged: bool = False) -> dict[str, Path]:
    """Save a tuned model for later stages: a peft model as its adapter (``models.save_adapter``: a model spec of
    its own, merged on demand by ``models.resolve``), any other model whole; with ``merged`` also a merged
    standalone copy (fp32, the size of the model) that loads with plain ``AutoModelForCausalLM.from_pretrained``.

    ``base``: the spec the model was trained from (recorded with the adapter). Returns {"adapter": path} or
    {"model": path}, plus "merged" when asked.
    """
    folder = Path(folder)
    out = {}
    if hasattr(model, "peft_config"):
        out["adapter"] = models.save_adapter(model, tokenizer, folder / "adapter", base)
    else:
        out["model"] = models.save(model, tokenizer, folder / "model")
    if merged and "adapter" in out:
        copy = merged_copy(model)
        out["merged"] = models.save(copy, tokenizer, folder / "merged")
        del copy
    return out


def saved_model(folder: str | Path) -> Path | None:
    """The model a stage saved with ``save_tuned`` into ``folder`` (merged copy, adapter or whole model), as a
    spec later stages load; None when it saved none."""
    folder = Path(folder)
    for name in ("merged", "adapter", "model"):
        if not models.folder_problem(folder / name):
            return folder / name
    return None
