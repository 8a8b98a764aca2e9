"""Every place nbft patches TRL, transformers or accelerate, or calls a name they keep private: one row each.

nbft trains through TRL on transformers and accelerate. Where it changes what one of them does (a faster layout on
CPU, a wrapper taken off, a cache that stores bf16) or calls a private name (``_x``) because no public one does the
job, the code lives here and ``PATCHES`` has a row for it: the library and version it was written for, the private
names it uses, what it works around and how to tell it is still needed. ``tests/test_trl_patches.py`` checks every
row against the installed libraries: the private names still exist, and the library still behaves the way the patch
assumes — the day it does not, the row's test fails saying the patch can go (or must be looked at again).

The patches and where they apply:

- ``cpu_layouts(trainer)`` — what ``train.fit`` (and ``launch``'s processes) train and evaluate inside:
  ``compact_lm_head``, ``bf16_head_gemms``, ``eager_attention_in_loss`` (which switches with ``attention``);
- ``remove_autocast_wrappers`` — ``train.finish`` after every training, and ``distill`` on its teacher;
- ``load_finished``, ``save_rng_state``, ``restore_token_count`` — ``checkpoints``: resuming a training call;
- ``sampling_in_one_block`` — ``distill``: the student's on-policy sampling under one autocast block;
- ``bf16_cache_layer`` — ``models.kv_cache``: a key/value cache that stores bf16;
- ``reset_accelerate_state`` — ``launch.run``: before and after accelerate's ``notebook_launcher``.

A leaf: it imports nothing of nbft (a caller passes what a patch needs, e.g. the autocast block).
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Callable


@dataclass(frozen=True)
class Patch:
    """One workaround: ``name`` (the function in this module), the ``library`` and ``version`` it was written for,
    the ``private`` names it uses (``module:Attr.attr``, checked to exist), what it ``works_around`` and how to tell
    it is ``still_needed`` (what ``tests/test_trl_patches.py`` checks)."""

    name: str
    library: str
    version: str
    private: tuple[str, ...]
    works_around: str
    still_needed: str


PATCHES = (
    Patch("compact_lm_head", "trl", "1.16.0",
          ("trl.trainer.utils:_use_triton", "trl.trainer.distillation_trainer:_use_triton"),
          "TRL's fused LM head projects every position (prompt tokens too) wherever Triton is missing (CPU)",
          "trl's _use_triton still answers False on CPU, and both fused-head modules still pick their layout with it"),
    Patch("bf16_head_gemms", "trl", "1.16.0", ("trl.kernels.chunked_logprob:_addmm_fp32",),
          "TRL's chunked LM head casts bf16 operands to fp32 before its backward GEMMs on CPU (a fifth of bf16's "
          "speed)",
          "trl's _addmm_fp32 still runs an fp32 GEMM for bf16 operands on CPU"),
    Patch("eager_attention_in_loss", "transformers", "5.23.0", (),
          "transformers loads Llama with sdpa, whose CPU backward (torch 2.13) was a fifth of a LoRA SFT step",
          "transformers still loads a Llama model with sdpa attention by default"),
    Patch("attention", "transformers", "5.23.0", ("transformers:PretrainedConfig._attn_implementation",),
          "transformers has no public getter for a model's attention implementation",
          "the config still has _attn_implementation and no public attn_implementation"),
    Patch("remove_autocast_wrappers", "accelerate", "1.15.0", (),
          "accelerate's mixed precision replaces forward (on the model and peft's inner model) by an autocast copy "
          "that stays after training: later fp32 calls silently run bf16",
          "Accelerator.prepare_model at bf16 still leaves a wrapped forward in the model's __dict__"),
    Patch("load_finished", "transformers", "5.23.0",
          ("transformers:Trainer._load_from_checkpoint", "transformers:Trainer._load_rng_state"),
          "train(resume_from_checkpoint=) from the last step's checkpoint does not give back what the finished call "
          "left: with a fractional number of epochs it trains one step past the end; otherwise it leaves the RNG "
          "state as it finds it (and logs a train_loss of 0)",
          "train() from a finished checkpoint still trains a step or leaves the RNG state unrestored"),
    Patch("save_rng_state", "transformers", "5.23.0", ("transformers:Trainer._save_rng_state",),
          "a checkpoint saved with save_only_model (fit's light last one) has no RNG state",
          "a save_only_model checkpoint still has no rng_state.pth"),
    Patch("restore_token_count", "trl", "1.16.0", (),
          "TRL counts the tokens trained on in the trainer (its private _total_train_tokens, set in __init__), not "
          "in its state: a resumed call's count restarts from 0",
          "a resumed SFTTrainer still logs the tokens of the resumed steps only"),
    Patch("sampling_in_one_block", "trl", "1.16.0", ("trl:DistillationTrainer._generate_single_turn",),
          "under accelerate's bf16 wrapper the student's sampling enters autocast at every sampled token and casts "
          "every weight again each time",
          "DistillationTrainer._generate_single_turn still runs without an autocast block of its own"),
    Patch("bf16_cache_layer", "transformers", "5.23.0", (),
          "under bf16 autocast transformers' cache keeps the keys in fp32 (rotary cos/sin are fp32) and attention "
          "casts the whole cache to bf16 again at every generated token",
          "transformers' own cache still holds fp32 keys after a forward under bf16 autocast"),
    Patch("reset_accelerate_state", "accelerate", "1.15.0", ("accelerate.state:AcceleratorState._reset_state",),
          "notebook_launcher refuses to start processes once this process has an accelerate state (any trainer made "
          "one), and accelerate has no public reset",
          "notebook_launcher still refuses when AcceleratorState._shared_state is set"),
)

#: {patch: (library, version it was written for)}
WRITTEN_FOR = {p.name: (p.library, p.version) for p in PATCHES}


# ---------------------------------------------------------------- the fused LM head (trl)

#: TRL modules whose fused LM head picks its scoring layout with ``_use_triton`` (see ``compact_lm_head``).
FUSED_HEAD_MODULES = ("trl.trainer.utils", "trl.trainer.distillation_trainer")


@contextlib.contextmanager
def compact_lm_head():
    """TRL's fused LM head (SFT, GRPO/RLOO, distillation) projects only the positions that have a label when the
    device has Triton; elsewhere it projects every position, prompt tokens included, so that a compiled graph (Neuron)
    keeps one shape. In eager mode on CPU the compact layout is exact too, and with losses on replies only most
    positions are prompt: measured on 2 cores (issue 16) SFT LoRA steps ran 1.5x faster, identical eval loss. For
    the block, TRL's layout choice (``_use_triton`` as the ``FUSED_HEAD_MODULES`` see it) answers yes on CPU and
    CUDA; the kernel itself still takes its torch path where there is no Triton. Yields how many modules it
    patched."""
    patched = []
    for name in FUSED_HEAD_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        original = getattr(module, "_use_triton", None)
        if original is None:
            continue
        module._use_triton = lambda device, original=original: device.type in ("cpu", "cuda") or original(device)
        patched.append((module, original))
    try:
        yield len(patched)
    finally:
        for module, original in patched:
            module._use_triton = original


#: ``bf16_head_gemms``: the shortest inner dimension of a head GEMM that runs in bf16 (shorter: fp32 is faster on CPU).
BF16_HEAD_MIN_SUM = 256


@contextlib.contextmanager
def bf16_head_gemms():
    """TRL's chunked LM head (``trl.kernels.chunked_logprob``) accumulates its backward GEMMs in fp32: on CUDA a bf16
    GEMM with an fp32 output, elsewhere both operands cast to fp32 first — on CPU a copy of every 32768-row slice of
    the 49152 x 576 head per step and an fp32 GEMM at a fifth of the bf16 one's speed (issue 16). For the block, on
    CPU with bf16 operands and a long inner dimension (the hidden states' gradient sums over a 32768-token vocabulary
    slice: 6x faster; a trained head's weight gradient sums over the batch's tokens, faster from ~256) the product
    runs in bf16 (oneDNN accumulates in fp32 and rounds once) and is added to the fp32 accumulator: one rounding per
    vocabulary slice (two for SmolLM2), as an autocast linear layer's backward rounds its product once. Other devices,
    dtypes and short sums keep TRL's own function (``benchmarks/cpu_training.py``). Yields 1 when it patched TRL."""
    import torch

    try:
        from trl.kernels import chunked_logprob
    except ImportError:
        yield 0
        return
    original = chunked_logprob._addmm_fp32

    def addmm(acc, a, b):
        if acc.device.type == "cpu" and a.dtype == b.dtype == torch.bfloat16 and a.shape[1] >= BF16_HEAD_MIN_SUM:
            acc.add_(torch.mm(a, b))
        else:
            original(acc, a, b)

    chunked_logprob._addmm_fp32 = addmm
    try:
        yield 1
    finally:
        chunked_logprob._addmm_fp32 = original


# ---------------------------------------------------------------- attention (transformers)

def _pretrained(model):
    """The transformers model inside ``model`` (itself, or the one a peft wrapper holds), or None."""
    from transformers import PreTrainedModel

    return next((m for m in model.modules() if isinstance(m, PreTrainedModel)), None)


def attn_implementation(model) -> str | None:
    """The attention implementation ``model`` runs (eager, sdpa, flash_attention_2, ...; transformers keeps it in
    the config's private ``_attn_implementation``), or None for a model without one."""
    return getattr(getattr(model, "config", None), "_attn_implementation", None)


@contextlib.contextmanager
def attention(model, implementation: str):
    """``model`` runs ``implementation`` (transformers' ``set_attn_implementation``: eager, sdpa, ...) for the
    block, its own one again after; nothing changes for a model without the switch."""
    inner = _pretrained(model)
    before = attn_implementation(inner)
    if inner is None or before is None or before == implementation:
        yield
        return
    inner.set_attn_implementation(implementation)
    try:
        yield
    finally:
        inner.set_attn_implementation(before)


@contextlib.contextmanager
def eager_attention_in_loss(trainer):
    """On CPU the trainer's training forward passes (``compute_loss`` with gradients on) run eager attention
    instead of sdpa for the block: torch's CPU flash-attention backward was a fifth of a LoRA SFT step on 2 cores
    and eager's matmul + softmax backward is cheaper at these lengths (``benchmarks/cpu_training.py``: issue 16).
    Generation (GRPO/RLOO and distillation sample inside ``train()``) and no-grad scoring keep sdpa, faster there.
    The backward pass follows the graph its forward recorded, so switching around ``compute_loss`` suffices."""
    import torch

    model = trainer.model
    param = next(model.parameters(), None)
    if param is None or param.device.type != "cpu" or "compute_loss" in vars(trainer):
        yield
        return
    original = trainer.compute_loss

    def compute_loss(*args, **kwargs):
        if not torch.is_grad_enabled():
            return original(*args, **kwargs)
        with attention(model, "eager"):
            return original(*args, **kwargs)

    trainer.compute_loss = compute_loss
    try:
        yield
    finally:
        del trainer.compute_loss


@contextlib.contextmanager
def cpu_layouts(trainer):
    """What ``train.fit`` trains and evaluates inside: ``compact_lm_head``, ``bf16_head_gemms`` and
    ``eager_attention_in_loss``."""
    with compact_lm_head(), bf16_head_gemms(), eager_attention_in_loss(trainer):
        yield


# ---------------------------------------------------------------- mixed precision (accelerate)

def remove_autocast_wrappers(model) -> int:
    """Undo accelerate's mixed-precision forward wrappers, on the model and any submodule.

    For bf16 training accelerate replaces ``forward`` on the prepared model (with peft: on the inner
    transformers model too) by an autocast-wrapped copy. Left in place, every later call runs in bf16
    whatever the caller asks for: evaluation at fp32 is silently bf16, and a merged model compared with
    its adapter differs by nothing at all. Returns how many wrappers were removed.
    """
    n = 0
    for module in model.modules():
        fwd = module.__dict__.get("forward")
        if fwd is not None and hasattr(fwd, "__wrapped__"):
            if inspect.unwrap(getattr(fwd, "__func__", fwd)) is inspect.unwrap(type(module).forward):
                del module.__dict__["forward"]
                module.__dict__.pop("_original_forward", None)
                n += 1
    return n


def sampling_in_one_block(trainer_class: type, block: Callable) -> type:
    """A subclass of TRL's ``trainer_class`` (``DistillationTrainer``) whose on-policy sampling
    (``_generate_single_turn``) runs inside ``block(model)`` (``models.autocast`` at the training precision):
    accelerate's bf16 wrapper enters autocast at every forward, i.e. at every sampled token, and casts every
    weight again each time; inside one outer block each weight is cast once per call (the same bf16 values: the
    samples do not change; ``benchmarks/distill_sampling.py``). The subclass keeps the trainer's name."""

    class OneBlock(trainer_class):
        def _generate_single_turn(self, *args, **kwargs):
            with block(self.model):
                return super()._generate_single_turn(*args, **kwargs)

    OneBlock.__name__ = OneBlock.__qualname__ = trainer_class.__name__
    return OneBlock


# ---------------------------------------------------------------- resuming a training call (transformers, trl)

def load_finished(trainer, checkpoint: str | Path, weights: str | Path | None = None) -> None:
    """Bring ``trainer`` to where its finished ``checkpoint`` (the call's last step) left it — the model's weights
    (or those of ``weights``, another checkpoint: early stopping's best), the trainer state (log history, step), the
    RNG state — without training. ``train(resume_from_checkpoint=)`` does not (transformers 5.23): with a fractional
    number of epochs it trains one step past the end, otherwise it leaves the RNG state as it finds it and logs a
    train_loss of 0; and transformers has no public load."""
    from transformers import TrainerState

    trainer._load_from_checkpoint(str(weights or checkpoint))
    trainer.state = TrainerState.load_from_json(str(Path(checkpoint) / "trainer_state.json"))
    trainer._load_rng_state(str(checkpoint))  # the RNG as the finished call left it


def save_rng_state(trainer, checkpoint: str | Path) -> None:
    """Write the RNG state into ``checkpoint``: transformers skips it in a ``save_only_model`` checkpoint (``fit``'s
    light last one), which ``load_finished`` restores it from."""
    trainer._save_rng_state(str(checkpoint))


def restore_token_count(trainer, tokens: int) -> bool:
    """Set the count of tokens trained on that a resumed TRL trainer goes on from (TRL keeps it in the trainer, not
    in its state, so a resume would start it from 0); False for a trainer without one."""
    if not hasattr(trainer, "_total_train_tokens"):
        return False
    trainer._total_train_tokens = int(tokens)
    return True


# ---------------------------------------------------------------- the key/value cache (transformers)

@functools.cache
def bf16_cache_layer():
    """transformers' ``DynamicLayer`` that stores what it is given in bf16 (``models.kv_cache``): under bf16 autocast
    of fp32 weights the keys leave rotary embedding in fp32 while the values come out of their projection in bf16,
    and transformers' layer stores each as it comes."""
    import torch
    from transformers.cache_utils import DynamicLayer

    class Bf16Layer(DynamicLayer):
        def update(self, key_states, value_states, *args, **kwargs):
            return super().update(key_states.to(torch.bfloat16), value_states.to(torch.bfloat16), *args, **kwargs)

    return Bf16Layer


# ---------------------------------------------------------------- accelerate's process state

def reset_accelerate_state() -> None:
    """Forget this process's accelerate state (``AcceleratorState`` and ``PartialState``): ``notebook_launcher``
    refuses to start processes while one exists, and every trainer made in this process made one."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
