"""Stage 03_peft: fine-tuning methods as a table — one row per method; adding a method is adding a row.

Each row says how to make a base model trainable with the method (``prepare``), the
learning rate of its family, whether its update can be merged into the base weights,
and what it needs that may be missing (QLoRA: a CUDA GPU and bitsandbytes).

Everything is peft or plain ``requires_grad`` except the bottleneck adapter (Houlsby
et al. 2019), which peft does not have: a small down/up projection added after the
attention and the MLP of every block, in :class:`BottleneckAdapter` below.
"""
from __future__ import annotations

import contextlib
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from . import corpora, data, evaluate, models, params, scoring, train

#: The lines the written findings draw (recorded as ``thresholds`` in metrics.json).
THRESHOLDS = {
    "within": 0.1,            # a method's task score within this of the reference (or above): "within"
    "small_pct": 2.0,         # trainable share under this percent: "a tiny fraction"
    "learned_margin": 0.1,    # task score above the base model's + this: the method learned the task
    "forgot_ratio": 1.5,      # general-text perplexity above this times the base's: "wrecked general text"
    "merge_tolerance": 1e-3,  # max |logit diff| of a merged copy that still counts as the same model
}


@dataclass(frozen=True)
class Method:
    name: str
    family: str  # full | partial | reparam | lycoris | vector | bias | prompt | adapter: one learning rate each
    prepare: Callable  # (model, p) -> model ready to train (peft-wrapped or grads set)
    mergeable: bool  # the update folds into the base weights (merge_and_unload)
    needs: Callable[[], str] = lambda: ""  # what is missing to run it here ("" = nothing)
    note: str = ""


# ---------------------------------------------------------------- row builders

def _peft(config_fn):
    def prepare(model, p):
        from peft import get_peft_model

        model.requires_grad_(True)
        return get_peft_model(model, config_fn(p))
    return prepare


def _lora(**kw):
    def cfg(p):
        return train.lora_config(p, "CAUSAL_LM", **kw)
    return cfg


def _ia3(p):
    from peft import IA3Config

    return IA3Config(task_type="CAUSAL_LM")  # peft's defaults for llama: k, v and down projections


def _prompt(p):
    from peft import PromptTuningConfig

    return PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=p.num_virtual_tokens)


def _prefix(p):
    from peft import PrefixTuningConfig

    return PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=p.num_virtual_tokens)


def _ptuning(p):
    from peft import PromptEncoderConfig

    return PromptEncoderConfig(task_type="CAUSAL_LM", num_virtual_tokens=p.num_virtual_tokens,
                               encoder_hidden_size=128)


def _loha(p):
    from peft import LoHaConfig

    return LoHaConfig(r=max(2, p.lora_r // 2), alpha=p.lora_alpha // 2, target_modules="all-linear",
                      task_type="CAUSAL_LM")


def _vera(p):
    from peft import VeraConfig

    return VeraConfig(r=256, target_modules=["q_proj", "v_proj", "up_proj", "down_proj"], task_type="CAUSAL_LM",
                      save_projection=True)


def _beft(p):
    from peft import BeftConfig

    return BeftConfig(target_modules="all-linear", task_type="CAUSAL_LM")


def _full(model, p):
    return train.apply_scope(model, "full")


def _freeze(model, p):
    return train.apply_scope(model, "freeze", p.freeze_top_n, p.freeze_train_head)


def _qlora(model, p):
    """4-bit NF4 base (bitsandbytes) + LoRA (``train.quantized_4bit``). Only runs where train.qlora_needs() is empty."""
    from peft import get_peft_model

    return get_peft_model(train.quantized_4bit(model), _lora()(p))


# ---------------------------------------------------------------- bottleneck adapters (not in peft)

class BottleneckAdapter(nn.Module):
    """h + up(act(down(h))), up initialised at zero so training starts from the base model."""

    def __init__(self, dim: int, bottleneck: int):
        super().__init__()
        self.down = nn.Linear(dim, bottleneck)
        self.up = nn.Linear(bottleneck, dim)
        self.act = nn.GELU()
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.up(self.act(self.down(h.to(self.down.weight.dtype)))).to(h.dtype)


def _adapter_hook(module, inputs, output):
    if isinstance(output, tuple):
        return (module.nbft_adapter(output[0]), *output[1:])
    return module.nbft_adapter(output)


def add_bottleneck_adapters(model, bottleneck: int = 32):
    """Houlsby-style: an adapter after the attention and after the MLP of every block.

    The adapters are submodules (``<block>.self_attn.nbft_adapter``, ``<block>.mlp.nbft_adapter``),
    so they train, move and show in ``named_parameters`` like any weight; a forward hook applies them.
    """
    model.requires_grad_(False)
    dim = model.config.hidden_size
    for blk in train.blocks(model):
        for sub in (blk.self_attn, blk.mlp):
            if not hasattr(sub, "nbft_adapter"):
                sub.nbft_adapter = BottleneckAdapter(dim, bottleneck).to(next(model.parameters()).device)
                sub.register_forward_hook(_adapter_hook)
    return model


def _bottleneck(model, p):
    return add_bottleneck_adapters(model, p.adapter_bottleneck)


# ---------------------------------------------------------------- the table

METHODS: dict[str, Method] = {m.name: m for m in [
    Method("full", "full", _full, True, note="every weight; the reference"),
    Method("freeze", "partial", _freeze, True, note="top-N blocks + final norm"),
    Method("bitfit", "bias", _peft(_beft), False,
           note="added bias vectors only (peft BEFT): SmolLM2's linears have none, so BEFT adds zero biases and "
                "trains those; none to merge into"),
    Method("lora", "reparam", _peft(_lora()), True, note="low-rank update on every linear"),
    Method("dora", "reparam", _peft(_lora(use_dora=True)), True, note="LoRA with a learned magnitude"),
    Method("rslora", "reparam", _peft(_lora(use_rslora=True)), True, note="LoRA scaled by alpha/sqrt(r)"),
    Method("loha", "lycoris", _peft(_loha), True, note="low-rank Hadamard product"),
    Method("vera", "vector", _peft(_vera), True, note="frozen shared random matrices, trained scaling vectors"),
    Method("ia3", "vector", _peft(_ia3), True, note="learned rescaling of keys, values and MLP activations"),
    Method("prompt_tuning", "prompt", _peft(_prompt), False, note="soft prompt of virtual tokens"),
    Method("prefix_tuning", "prompt", _peft(_prefix), False, note="trained key/value prefix in every layer"),
    Method("p_tuning", "prompt", _peft(_ptuning), False, note="virtual tokens from a small MLP encoder"),
    Method("bottleneck_adapter", "adapter", _bottleneck, False,
           note="Houlsby adapters after attention and MLP (nbft, not in peft); nonlinear, so not mergeable"),
    Method("qlora", "reparam", _qlora, True, needs=train.qlora_needs, note="4-bit NF4 base + LoRA"),
]}


def learning_rate(method: Method, p) -> float:
    """The learning-rate rule: one rate per family (parameters of PEFTParams)."""
    return {"full": p.full_learning_rate, "partial": p.freeze_learning_rate, "reparam": p.learning_rate,
            "lycoris": p.lycoris_learning_rate, "vector": p.vector_learning_rate, "bias": p.bias_learning_rate,
            "prompt": p.prompt_learning_rate,
            "adapter": p.adapter_learning_rate}[method.family]


def prepare(name: str, model, p):
    """Make ``model`` trainable with method ``name``; raises if the method cannot run here."""
    if name not in METHODS:
        import difflib

        close = difflib.get_close_matches(name, list(METHODS), n=1)
        raise ValueError(f"unknown method {name!r}" + (f"; did you mean {close[0]!r}?" if close else
                                                        f"; methods: {', '.join(METHODS)}"))
    m = METHODS[name]
    missing = m.needs()
    if missing:
        raise RuntimeError(f"{name} needs {missing}")
    return m.prepare(model, p)


# ---------------------------------------------------------------- saving, reloading, merging

def trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: t.detach().cpu().contiguous() for n, t in model.named_parameters() if t.requires_grad}


def save(model, folder: str | Path, name: str, tokenizer=None, base: str | None = None) -> Path:
    """Save what the method trained: peft adapters and the full model with save_pretrained, others
    (freeze, bottleneck adapters) as one safetensors file of the tensors that trained. Given the ``tokenizer`` and
    the ``base`` spec, a peft adapter is saved with both (``models.save_adapter``): the folder is then a model spec
    of its own, which the chat playground, 08 and ``models.load`` open like 02's adapter."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if hasattr(model, "peft_config") and tokenizer is not None and base is not None:
        models.save_adapter(model, tokenizer, folder, base)
    elif hasattr(model, "peft_config") or name == "full":
        model.save_pretrained(folder)
    else:  # freeze, bottleneck adapters: just the tensors that trained
        save_file(trainable_state(model), str(folder / "trainable.safetensors"))
    return folder


def reload(name: str, base_loader: Callable, folder: str | Path, p):
    """A fresh base from ``base_loader()`` with the saved method applied, ready for inference."""
    from safetensors.torch import load_file

    folder = Path(folder)
    if (folder / "adapter_config.json").is_file():
        from peft import PeftModel

        return PeftModel.from_pretrained(base_loader(), folder).eval()
    if name == "full":
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(folder).eval()
    model = prepare(name, base_loader(), p)
    missing, unexpected = model.load_state_dict(load_file(str(folder / "trainable.safetensors")), strict=False)
    if unexpected:
        raise ValueError(f"{folder}: unexpected tensors {unexpected[:3]}")
    return model.eval()


def method_mb(folder: str | Path) -> float:
    """The size of what a method saved: its weights and config, not the tokenizer or nbft's base record that make
    an adapter folder loadable on its own (the same for every method, so not the method's cost)."""
    tokenizer_files = {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                       "merges.txt", "chat_template.jinja", "added_tokens.json", models.ADAPTER_BASE_FILE}
    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file() and f.name not in tokenizer_files
               ) / 2**20


@torch.no_grad()
def merge_check(model, tokenizer, texts: list[str]) -> tuple[object, float]:
    """Merge a peft model into its base; return (merged model, max |logit difference|) on ``texts``.

    Both sides run in fp32 on a copy: TRL keeps adapter weights in bf16 when training with bf16, and the
    unmerged bf16 side path alone differs from fp32 by ~1 logit; what is measured here is the merge itself.
    """
    import copy

    work = copy.deepcopy(model).float().eval()
    enc = tokenizer(texts, return_tensors="pt", padding=True).to(next(work.parameters()).device)
    before = work(**enc).logits
    merged = work.merge_and_unload().eval()
    after = merged(**enc).logits
    mask = enc["attention_mask"].bool()
    return merged, float((before - after).abs()[mask].max())


# ---------------------------------------------------------------- one row of the bake-off

#: A method that trains this share of the model's weights or more (full; freeze, ~10% for the default) is saved,
#: measured (``size_mb``) and removed: a run keeps adapters (issue 16: a default run folder under 300 MB).
KEEP_MAX_PCT = 5.0


def run_method(name: str, p, tokenizer, train_set: list[dict], validation: list[dict], test_set: list[dict],
               out_dir: str | Path, check: str = "auto", precision: str = "fp32", callbacks=()) -> dict:
    """Train one method under the shared budget and measure everything the results table shows.

    Returns a row: trainable_params, trainable_pct, seconds, tokens_per_second, peak_mem_mb, eval_loss,
    task_score, size_mb, mergeable, merge_max_abs_diff, ppl_general, log_history, outputs, status.
    A method that cannot run here returns status "skipped: needs ..." and no numbers.
    """
    method = METHODS[name]
    missing = method.needs()
    if missing:
        return {"status": f"skipped: needs {missing}", "mergeable": method.mergeable, "note": method.note}
    with contextlib.ExitStack() as stack:  # the trained model is freed when the row is measured
        with train.PeakRSS() as mem:
            res = stack.enter_context(train.trained(
                p, tokenizer, train_set, validation, prepare=lambda m: prepare(name, m, p), callbacks=callbacks,
                learning_rate=learning_rate(method, p), max_steps=p.max_steps))
        model = res.model
        trainable, total = models.count_params(model)
        folder = save(model, Path(out_dir) / name, name, tokenizer, p.model)
        saved_mb = method_mb(folder)
        kept = 100 * trainable / total < KEEP_MAX_PCT
        if not kept:  # a (partial) copy of the model: measured, not kept
            shutil.rmtree(folder)
        row = {"status": "ok", "note": method.note, "trainable_params": trainable,
               "trainable_pct": 100 * trainable / total, "seconds": res.seconds,
               "tokens_per_second": res.tokens_per_second, "peak_mem_mb": mem.mb, "eval_loss": res.eval_loss,
               "size_mb": saved_mb, "kept": kept, "mergeable": method.mergeable, "merge_max_abs_diff": None,
               "learning_rate": learning_rate(method, p), "log_history": [r for r in res.log_history if "loss" in r]}
        ev = evaluate.evaluate_model(model, tokenizer, test_set, check, precision, p.max_new_tokens,
                                     p.eval_batch_size, probe=False)
        row.update(task_score=ev["task_score"], outputs=ev["outputs"], passed=ev["passed"],
                   ppl_general=evaluate.perplexity(model, tokenizer, corpora.GENERAL_TEXT, precision=precision))
        if method.mergeable and hasattr(model, "peft_config"):
            _, row["merge_max_abs_diff"] = merge_check(model, tokenizer,
                                                       [r["prompt"] + r["completion"] for r in test_set[:4]])
        del model
    return row


def compare(a: str, b: str, rows: dict) -> dict:
    """Method ``a`` against reference ``b`` (task score gap, trainable share) with a sentence saying it
    (``THRESHOLDS``: ``within``, ``small_pct``)."""
    if a not in rows or b not in rows:
        return {"sentence": f"cannot compare {a} with {b}: {', '.join(m for m in (a, b) if m not in rows)} did not run"}
    ra, rb = rows[a], rows[b]
    within, small_pct = THRESHOLDS["within"], THRESHOLDS["small_pct"]
    gap = ra["task_score"] - rb["task_score"]
    close = abs(gap) <= within or gap > 0
    small = ra["trainable_pct"] < small_pct
    sentence = (f"{a}: task score {ra['task_score']:.2f} with {ra['trainable_pct']:.2f}% of the weights trained; "
                f"{b}: {rb['task_score']:.2f} with {rb['trainable_pct']:.2f}%. Gap {gap:+.2f}: " +
                (f"within {within} (or better)" if close else f"more than {within} behind") +
                (f", at under {small_pct:g}% trainable parameters." if small else
                 f", but at {ra['trainable_pct']:.2f}% trainable parameters, not under {small_pct:g}%."))
    return {f"{a}_task_score": ra["task_score"], f"{b}_task_score": rb["task_score"],
            f"{a}_trainable_pct": ra["trainable_pct"], "gap": gap, "within": close, "small_share": small,
            "sentence": sentence}


def second_task_data(p, tokenizer) -> dict[str, list[dict]]:
    """The splits of the second adapter's task: the built-in demo of ``p.second_task``, ``p.n_second_task`` examples,
    prepared by 01_data_prep's chain with its defaults."""
    common = {k: getattr(p, k) for k in params.common_names()}
    dp = params.DataPrepParams(**common, n_examples=p.n_second_task, demo_tasks=[p.second_task])
    return data.prepare(dp, tokenizer).splits


#: The numbers each method's row of the results table holds (``run_method``), in the table's order.
COLUMNS = ("status", "trainable_params", "trainable_pct", "seconds", "tokens_per_second", "peak_mem_mb", "eval_loss",
           "task_score", "size_mb", "mergeable", "merge_max_abs_diff", "ppl_general")


def metrics(results: dict[str, dict], base: dict, lora_vs_full: dict, branches: dict, p, *, n_train: int,
            n_eval: int, reply: dict | None = None) -> dict:
    """03_peft's section of metrics.json (with ``findings`` and ``thresholds`` added by the notebook): one row per
    method (``COLUMNS``), the trunk-and-branches demo, LoRA vs full, the base model's task score and forgetting
    probe; ``reply``: {method: ``scoring.table`` of its held-out replies against the base model's}
    (``reply_metrics``)."""
    return {"methods": {k: {c: v.get(c) for c in COLUMNS} for k, v in results.items()},
            "n_methods_ok": sum(v["status"] == "ok" for v in results.values()),
            "adapter_switch_ok": branches["ok"], "adapter_scores": branches["scores"],
            "merged_reload_max_abs_diff": branches["merged_reload_max_abs_diff"], "lora_vs_full": lora_vs_full,
            "task_score_before": base["task_score"], "ppl_general_before": base["ppl_general"],
            "max_steps": p.max_steps, "n_train": n_train, "n_eval": n_eval,
            "reply_metrics": {m: scoring.recorded(t) for m, t in (reply or {}).items()}}


def findings(rows: dict[str, dict], base: dict, lora_vs_full: dict, branches: dict | None,
             reply: dict | None = None) -> list[str]:
    """One sentence per result of the bake-off, worded by the numbers and ``THRESHOLDS``.

    ``rows``: the methods that ran (``run_method`` rows); ``base``: the base model's task_score and ppl_general;
    ``reply``: {method: ``scoring.table``} (a sentence for each change larger than its interval).
    """
    t = THRESHOLDS
    out = [lora_vs_full["sentence"]]
    if not rows:
        return out + ["No method ran."]
    learned = [m for m, r in rows.items() if r["task_score"] > base["task_score"] + t["learned_margin"]]
    missed = [m for m in rows if m not in learned]
    out.append(f"{len(learned)} of {len(rows)} methods learned the task on this budget (task score above the base "
               f"model's {base['task_score']:.2f} by more than {t['learned_margin']})"
               + (f"; these did not: {', '.join(missed)}." if missed else "."))
    best = max(rows, key=lambda m: (rows[m]["task_score"], -rows[m]["trainable_pct"]))
    out.append(f"Best task score: {best} ({rows[best]['task_score']:.2f}) with {rows[best]['trainable_pct']:.3g}% of the "
               f"weights trained; fastest: {min(rows, key=lambda m: rows[m]['seconds'])}.")
    forgot = [m for m, r in rows.items() if r.get("ppl_general") and r["ppl_general"] > t["forgot_ratio"] * base["ppl_general"]]
    out.append(f"General-text perplexity (base {base['ppl_general']:.2f}) rose above {t['forgot_ratio']}x for "
               + (", ".join(f"{m} ({rows[m]['ppl_general']:.4g})" for m in forgot) if forgot else "no method") + ".")
    unmerged = [m for m, r in rows.items() if r["merge_max_abs_diff"] is not None
                and r["merge_max_abs_diff"] > t["merge_tolerance"]]
    merged = [m for m, r in rows.items() if r["merge_max_abs_diff"] is not None]
    if merged:
        out.append(f"Merging into the base weights reproduced the adapter's logits within {t['merge_tolerance']:g} for "
                   f"{len(merged) - len(unmerged)} of {len(merged)} mergeable adapters"
                   + (f"; not for {', '.join(unmerged)}." if unmerged else "."))
    if reply:
        out += scoring.sentences(reply, "base")
    if branches is not None:
        out.append(branches["sentence"])
    return out


def max_logit_diff(model, other, tokenizer, texts: list[str]) -> float:
    """The largest |logit difference| between ``model`` and ``other`` on ``texts`` (padding left out), both run on
    ``model``'s device: ``other`` (a copy reloaded from disk lands on the CPU) is moved there, and so are the
    inputs; the difference is taken on the CPU in fp32."""
    device = next(model.parameters()).device
    other.to(device)
    with models.padding_side(tokenizer, "right"):
        enc = tokenizer(texts, return_tensors="pt", padding=True)
    mask = enc["attention_mask"].bool()
    inputs = {k: v.to(device) for k, v in enc.items()}
    with torch.no_grad():
        a, b = (m(**inputs).logits.float().cpu() for m in (model, other))
    return float((a - b).abs()[mask].max())


def trunk_and_branches(base_loader: Callable, tokenizer, adapters: dict[str, Path], tests: dict[str, list[dict]],
                       precision: str, max_new_tokens: int, batch_size: int, weights: list[float],
                       merged_dir: str | Path | None = None) -> dict:
    """Load several saved LoRA adapters on one base, score each (and none, and a weighted mix) on every task,
    merge the first into a standalone model and check that it reloads with plain transformers (saved into
    ``merged_dir``, or a temporary folder: the copy is the size of the model).

    ``adapters`` and ``tests`` are in the same order: adapter i is meant for task i.
    """
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    names, tasks = list(adapters), list(tests)
    model = PeftModel.from_pretrained(base_loader(), adapters[names[0]], adapter_name=names[0])
    for n in names[1:]:
        model.load_adapter(adapters[n], adapter_name=n)
    model.eval()

    first = {t: {} for t in tasks}  # the reply to each task's first prompt, per adapter: the samples below

    def score_all(name: str) -> dict[str, float]:
        out = {}
        for t, recs in tests.items():
            ev = evaluate.evaluate_model(model, tokenizer, recs, "auto", precision, max_new_tokens, batch_size,
                                         probe=False)
            out[t], first[t][name] = ev["task_score"], ev["outputs"][0]
        return out

    scores = {}
    for n in names:
        model.set_adapter(n)
        scores[n] = score_all(n)
    with model.disable_adapter():
        scores["base (adapters off)"] = score_all("base")
    if weights:
        model.add_weighted_adapter(names, weights, adapter_name="combined", combination_type="linear")
        model.set_adapter("combined")
        scores[f"combined {weights}"] = score_all("combined")

    # one prompt per task, every adapter's reply (from the scoring above: the same greedy reply, not generated again)
    columns = [*names, *(["combined"] if weights else []), "base"]
    samples = [{"task": t, "prompt": tests[t][0]["messages"][-2]["content"], **{c: first[t][c] for c in columns}}
               for t in tasks]

    # merge adapter 0 into a standalone model; it must reload with plain transformers and give the same logits
    model.set_adapter(names[0])
    import copy

    merged = copy.deepcopy(model).merge_and_unload(adapter_names=[names[0]])
    with contextlib.ExitStack() as stack:  # no merged_dir: a temporary folder (the copy is the model's size)
        folder = merged_dir if merged_dir is not None else stack.enter_context(tempfile.TemporaryDirectory())
        models.save(merged, tokenizer, folder)
        reloaded = AutoModelForCausalLM.from_pretrained(folder).eval()
    diff = max_logit_diff(model, reloaded, tokenizer, [tests[t][0]["prompt"] for t in tasks])
    del merged, reloaded

    off = "base (adapters off)"
    beats = all(scores[n][t] > max([scores[m][t] for m in names if m != n] + [scores[off][t]])
                for n, t in zip(names, tasks))
    ok = beats and diff < THRESHOLDS["merge_tolerance"]
    sentence = (" ".join(f"Adapter {n} scores {scores[n][t]:.2f} on its task {t} (adapters off: {scores[off][t]:.2f})."
                         for n, t in zip(names, tasks)) +
                f" Switching {'works' if beats else 'does not work'}: each adapter "
                f"{'beats' if beats else 'does not beat'} both the other adapter and no adapter on its own task. "
                f"The merged copy of {names[0]} reloads with plain transformers, max |logit diff| {diff:.2e}. "
                f"adapter_switch_ok = {ok} (switching works and the merged copy matches).")
    model.set_adapter(names[0])
    return {"scores": scores, "samples": samples, "merged_reload_max_abs_diff": diff, "ok": ok,
            "sentence": sentence, "model": model}
