"""nbft.trl_patches: every patch of TRL, transformers or accelerate, and every private name nbft calls.

Two kinds of test. Per patch, what it does (the same loss and gradients with and without it, ...). And per row of
``trl_patches.PATCHES``, table-driven: its private names still exist, and the installed library still behaves the way
the patch works around — when one of these fails, the library changed: the message says which patch can go (or must
be looked at again), and the version it was written for.
"""
import contextlib
import copy
import importlib
import inspect
import random
import tempfile
from importlib import metadata
from pathlib import Path
from unittest import mock

import pytest
import torch

from nbft import data, models, params, train, trl_patches

ROWS = {p.name: p for p in trl_patches.PATCHES}


@contextlib.contextmanager
def sft_trainer_and_batch(tiny):
    """An fp32 SFTTrainer on a copy of tiny-llama (nbft's config) and one collated batch of 4 demo examples."""
    from trl import SFTTrainer

    base, tok = tiny
    records = data.prepare(params.DataPrepParams(model="tiny-llama", n_examples=40), tok).splits["train"][:4]
    p = params.SFTParams(model="tiny-llama", batch_size=4, precision="fp32")
    with train.scratch_dir() as tmp:
        trainer = SFTTrainer(model=copy.deepcopy(base), args=train.sft_config(p, tmp, 1e-3),
                             train_dataset=train.to_dataset(records), processing_class=tok)
        yield trainer, trainer.data_collator([trainer.train_dataset[i] for i in range(4)])


def test_compact_lm_head_gives_the_same_loss_and_gradients(tiny):
    """trl_patches.compact_lm_head: TRL's fused head scores only labelled positions on CPU too — same loss and gradients.
    Fails loudly if TRL stops choosing the layout with ``_use_triton`` (the patch would silently do nothing)."""
    with sft_trainer_and_batch(tiny) as (trainer, batch):
        results = []
        for compact in (False, True):
            trainer.model.zero_grad()
            with trl_patches.compact_lm_head() if compact else contextlib.nullcontext() as n:
                loss = trainer.compute_loss(trainer.model, dict(batch))
            loss.backward()
            results.append((float(loss.detach()), trainer.model.lm_head.weight.grad.clone(), n))
    (plain, g_plain, _), (compact, g_compact, n) = results
    assert n == len(trl_patches.FUSED_HEAD_MODULES)  # both TRL modules still pick the layout this way
    assert compact == pytest.approx(plain, rel=1e-6) and torch.allclose(g_plain, g_compact, atol=1e-6)


def test_bf16_head_gemms_keep_the_head_gradients_and_replace_trls_fp32_gemms():
    """trl_patches.bf16_head_gemms: TRL's chunked LM head backward on CPU with bf16 operands runs its long GEMMs in bf16 —
    the gradients stay within bf16 rounding of TRL's fp32 ones; short sums and fp32 operands keep TRL's function."""
    from trl.kernels import chunked_logprob

    torch.manual_seed(0)
    vocab, width, n = 40000, 64, 200  # two vocabulary slices of TRL's 32768, as SmolLM2's 49152 has
    weight = (torch.randn(vocab, width) * 0.05).to(torch.bfloat16).requires_grad_()
    hidden = torch.randn(n, width, dtype=torch.bfloat16).requires_grad_()
    targets = torch.randint(0, vocab, (n,))
    calls = []
    original = chunked_logprob._addmm_fp32
    grads = []
    for fast in (False, True):
        hidden.grad = weight.grad = None
        with mock.patch.object(chunked_logprob, "_addmm_fp32",
                               lambda acc, a, b: (calls.append(a.shape[1]), original(acc, a, b))[1]):
            with trl_patches.bf16_head_gemms() if fast else contextlib.nullcontext() as n_patched:
                logp = chunked_logprob.ChunkedLogProbFunction.apply(hidden, weight, None, targets, 1.0, 32768, None,
                                                                    1.0, ())[0]
                (-logp.mean()).backward()
        grads.append((hidden.grad.float(), weight.grad.float()))
    assert n_patched == 1 and chunked_logprob._addmm_fp32 is original  # restored after the block
    (h32, w32), (h16, w16) = grads
    # TRL's function: the hidden states' and the weight's gradient per slice; with the patch only the weight's, whose
    # sum runs over the 200 tokens (< BF16_HEAD_MIN_SUM), reaches it
    assert calls == [32768, n, vocab - 32768, n] + [n, n] and n < trl_patches.BF16_HEAD_MIN_SUM
    assert torch.allclose(h16, h32, rtol=2e-2, atol=1e-3 * h32.abs().max())
    assert not torch.equal(h16, h32)  # the bf16 GEMM ran (TRL's fp32 one rounds differently)
    assert torch.equal(w16, w32)


def test_training_forward_runs_eager_attention_with_the_same_loss_and_gradients(tiny):
    """trl_patches.eager_attention_in_loss: on CPU the loss with gradients runs eager attention (sdpa's CPU backward is
    slow), no-grad passes keep sdpa, and the model leaves the block with its own implementation; in fp32 eager and
    sdpa give the same loss and gradients."""
    assert tiny[0].config._attn_implementation == "sdpa"  # what transformers loads: the switch has work to do
    with sft_trainer_and_batch(tiny) as (trainer, batch):
        seen: list[str] = []
        hook = trainer.model.model.layers[0].self_attn.register_forward_pre_hook(
            lambda module, args: seen.append(module.config._attn_implementation))
        results = []
        for eager in (False, True):
            trainer.model.zero_grad()
            with trl_patches.eager_attention_in_loss(trainer) if eager else contextlib.nullcontext():
                loss = trainer.compute_loss(trainer.model, dict(batch))
                with torch.no_grad():
                    trainer.compute_loss(trainer.model, dict(batch))
            loss.backward()
            results.append((float(loss.detach()), trainer.model.lm_head.weight.grad.clone()))
        hook.remove()
    assert seen == ["sdpa", "sdpa", "eager", "sdpa"]
    assert trainer.model.config._attn_implementation == "sdpa" and "compute_loss" not in vars(trainer)
    (plain, g_plain), (eager, g_eager) = results
    assert eager == pytest.approx(plain, rel=1e-5) and torch.allclose(g_plain, g_eager, atol=1e-5)



# ---------------------------------------------------------------- the table: is every patch still needed?

def resolve(private: str):
    """The object a ``Patch.private`` entry names (``module:Attr.attr``)."""
    module, _, path = private.partition(":")
    obj = importlib.import_module(module)
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


@pytest.fixture(scope="module")
def resumed(tiny):
    """SFTTrainer runs on tiny-llama for the resume rows: a call of 1.5 epochs (10 examples, batch 4: 5 steps, a
    checkpoint at each), the same call again from its finished last checkpoint and from its first, and a one-step
    call saving a ``save_only_model`` checkpoint. Returns what each row looks at."""
    from transformers import TrainerCallback
    from trl import SFTTrainer

    base, tok = tiny
    records = data.prepare(params.DataPrepParams(model="tiny-llama", n_examples=40), tok).splits["train"][:10]
    p = params.SFTParams(model="tiny-llama", batch_size=4, epochs=1.5, precision="fp32")

    class Steps(TrainerCallback):
        n = 0

        def on_step_end(self, *args, **kwargs):
            self.n += 1

    def trainer(folder, **kw):
        args = train.sft_config(p, folder, 1e-3, save_strategy="steps", save_steps=1, **kw)
        return SFTTrainer(model=copy.deepcopy(base), args=args, train_dataset=train.to_dataset(records),
                          processing_class=tok)

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        first = trainer(tmp)
        first.train()
        rng = torch.get_rng_state()
        tokens = [r["num_tokens"] for r in first.state.log_history if "num_tokens" in r]
        last = Path(tmp) / f"checkpoint-{first.state.global_step}"
        torch.manual_seed(1234)
        random.seed(1234)
        again, steps = trainer(tmp), Steps()
        again.add_callback(steps)
        again.train(resume_from_checkpoint=str(last))
        out["finished"] = {"steps": steps.n, "rng_restored": torch.equal(torch.get_rng_state(), rng)}
        mid = trainer(tmp)
        mid.train(resume_from_checkpoint=str(Path(tmp) / "checkpoint-1"))
        resumed = [r["num_tokens"] for r in mid.state.log_history if "num_tokens" in r]
        out["tokens"] = {"uninterrupted": tokens[-1], "resumed": resumed[-1],
                         "attribute": hasattr(mid, "_total_train_tokens")}
    with tempfile.TemporaryDirectory() as tmp:
        light = trainer(tmp, save_only_model=True, max_steps=1)
        light.train()
        out["light_files"] = sorted(f.name for f in (Path(tmp) / "checkpoint-1").iterdir())
    return out


def check_compact_lm_head(request):
    for name in trl_patches.FUSED_HEAD_MODULES:
        module = importlib.import_module(name)
        if module._use_triton(torch.device("cpu")):
            return f"{name}._use_triton answers True on CPU: TRL picks the compact layout itself"
        if "_use_triton(" not in inspect.getsource(module):
            return f"{name} no longer picks its layout with _use_triton: the patch does nothing"


def check_bf16_head_gemms(request):
    from torch.overrides import TorchFunctionMode
    from trl.kernels import chunked_logprob

    class Gemms(TorchFunctionMode):
        def __init__(self):
            super().__init__()
            self.dtypes = []

        def __torch_function__(self, func, types, args=(), kwargs=None):
            if getattr(func, "__name__", "") in ("addmm", "addmm_", "mm", "matmul"):
                self.dtypes.append({a.dtype for a in args if isinstance(a, torch.Tensor)})
            return func(*args, **(kwargs or {}))

    acc = torch.zeros(8, 4)
    a, b = torch.randn(8, 300, dtype=torch.bfloat16), torch.randn(300, 4, dtype=torch.bfloat16)
    with Gemms() as gemms:
        chunked_logprob._addmm_fp32(acc, a, b)
    if not gemms.dtypes or any(torch.bfloat16 in d for d in gemms.dtypes):
        return f"_addmm_fp32 no longer casts bf16 operands to fp32 on CPU (GEMM operand dtypes {gemms.dtypes})"


def check_eager_attention_in_loss(request):
    implementation = trl_patches.attn_implementation(request.getfixturevalue("tiny")[0])
    if implementation != "sdpa":
        return f"transformers loads Llama with {implementation!r} attention, not sdpa"


def check_attention(request):
    from transformers import PretrainedConfig

    if hasattr(PretrainedConfig, "attn_implementation"):
        return "PretrainedConfig has a public attn_implementation: use it instead of _attn_implementation"


def check_remove_autocast_wrappers(request):
    from trl import SFTTrainer

    if not models.cpu_supports_bf16():
        pytest.skip("this CPU has no bf16: accelerate prepares no bf16 autocast")
    base, tok = request.getfixturevalue("tiny")
    p = params.SFTParams(model="tiny-llama", precision="bf16")
    with train.scratch_dir() as tmp:
        trainer = SFTTrainer(model=copy.deepcopy(base), args=train.sft_config(p, tmp, 1e-3),
                             train_dataset=train.to_dataset([{"prompt": "a", "completion": "b"}]),
                             processing_class=tok)
        model = trainer.accelerator.prepare_model(trainer.model)
        wrapped = "forward" in model.__dict__
        removed = trl_patches.remove_autocast_wrappers(model)
    if not wrapped or not removed or "forward" in model.__dict__:
        return f"accelerate's bf16 prepare_model left no forward wrapper to remove ({wrapped=}, {removed=})"


def check_load_finished(request):
    finished = request.getfixturevalue("resumed")["finished"]
    if finished["steps"] == 0 and finished["rng_restored"]:
        return "train() from a finished checkpoint trains no step and restores the RNG state"


def check_save_rng_state(request):
    found = [f for f in request.getfixturevalue("resumed")["light_files"] if f.startswith("rng_state")]
    if found:
        return f"a save_only_model checkpoint has its RNG state ({found})"


def check_restore_token_count(request):
    tokens = request.getfixturevalue("resumed")["tokens"]
    if not tokens["attribute"]:
        return "SFTTrainer no longer keeps _total_train_tokens"
    if tokens["resumed"] == tokens["uninterrupted"]:
        return "a resumed SFTTrainer counts the tokens before the resume too"


def check_sampling_in_one_block(request):
    from trl import DistillationTrainer

    if "autocast" in inspect.getsource(DistillationTrainer._generate_single_turn):
        return "DistillationTrainer._generate_single_turn enters an autocast block of its own"


def check_bf16_cache_layer(request):
    from transformers.cache_utils import DynamicCache

    model, tok = request.getfixturevalue("tiny")
    cache = DynamicCache(config=model.config)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        model(**tok("a few words of prompt", return_tensors="pt"), past_key_values=cache, use_cache=True)
    if cache.layers[0].keys.dtype != torch.float32:
        return f"transformers' cache holds {cache.layers[0].keys.dtype} keys under bf16 autocast"


def check_reset_accelerate_state(request):
    from accelerate import notebook_launcher

    if "AcceleratorState._shared_state" not in inspect.getsource(notebook_launcher):
        return "notebook_launcher no longer refuses to start while an accelerate state exists"


#: patch -> its check: None while the library still does what the patch works around, else what changed
STILL_NEEDED = {name[len("check_"):]: fn for name, fn in dict(globals()).items() if name.startswith("check_")}


def test_every_row_is_a_patch_of_this_module_with_a_check():
    assert len(ROWS) == len(trl_patches.PATCHES), "one row per patch"
    assert set(STILL_NEEDED) == set(ROWS), "one still-needed check per row"
    for row in trl_patches.PATCHES:
        assert callable(getattr(trl_patches, row.name, None)), f"{row.name}: not a function of nbft.trl_patches"
        assert row.library in ("trl", "transformers", "accelerate", "peft") and row.version.count(".") == 2, row
        assert row.works_around and row.still_needed, row
        assert trl_patches.WRITTEN_FOR[row.name] == (row.library, row.version)


def gone_message(row, what: str, verdict: str = "the library no longer needs this patch: remove it (and its row), "
                                                  "or rewrite it for what the library does now") -> str:
    return (f"trl_patches.{row.name} (written for {row.library} {row.version}; installed: "
            f"{metadata.version(row.library)}): {what} — {verdict}")


@pytest.mark.parametrize("row", trl_patches.PATCHES, ids=lambda r: r.name)
def test_the_private_names_a_patch_uses_still_exist(row):
    for private in row.private:
        try:
            resolve(private)
        except (ImportError, AttributeError) as e:
            pytest.fail(gone_message(row, f"{private} is gone ({type(e).__name__}: {e})",
                                     "the patch uses a name the library no longer has: remove it if the library no "
                                     "longer needs it, else rewrite it for what the library does now"))


@pytest.mark.parametrize("row", trl_patches.PATCHES, ids=lambda r: r.name)
def test_the_library_still_does_what_the_patch_works_around(row, request):
    """``row.still_needed``: checked on the installed library."""
    changed = STILL_NEEDED[row.name](request)
    if changed:
        pytest.fail(gone_message(row, changed))
