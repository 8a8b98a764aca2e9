"""Two CPU training layouts of ``train.fit``, each taken out in turn, interleaved in one process: eager attention in
the loss (``trl_patches.eager_attention_in_loss``; without it transformers' default sdpa) and bf16 GEMMs in the backward
of TRL's chunked LM head (``trl_patches.bf16_head_gemms``; without it TRL's fp32 GEMMs). Paths: 02's LoRA and full SFT
(``train.finetune``) and 06's LoRA classifier (``classify.fit_classifier``, no TRL head: the head row is skipped).

    .venv/bin/python benchmarks/cpu_training.py [--steps 12] [--repeats 2] [--threads 1] [--paths ...]

torch's CPU flash-attention kernel (what sdpa picks on CPU) has a slow backward: at these sequence lengths it was a
fifth of a LoRA step on one core in a profile of 02's SFT path; TRL's fp32 head GEMMs (and the fp32 copies of the
head they need) another tenth. Prints, per path and variant: seconds, tokens per second and the final loss (SFT:
the evaluation loss on 16 held-out examples; classifier: the mean of the last 4 training losses), and each
variant's time over nbft's. Not a test: the numbers depend on the machine.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
from unittest import mock

import torch

from nbft import classify, data, models, params, train, trl_patches


#: variant -> the ``trl_patches`` context it replaces with a no-op (nbft: none).
VARIANTS = {"nbft": None, "sdpa attention": "eager_attention_in_loss", "fp32 head GEMMs": "bf16_head_gemms"}


def without(variant: str):
    name = VARIANTS[variant]
    if name is None:
        return contextlib.nullcontext()
    return mock.patch.object(trl_patches, name, lambda *a: contextlib.nullcontext())


def sft_run(model_spec, tok, records, held_out, steps, scope) -> dict:
    p = params.SFTParams(model=model_spec, batch_size=8)
    model, _ = models.load_model(model_spec, "cpu", tokenizer=tok)
    r = train.finetune(model, tok, records, held_out, p, scope=scope, max_steps=steps)
    out = {"seconds": r.seconds, "tokens_per_second": r.tokens_per_second, "loss": r.eval_loss}
    r.release()
    models.release(model)
    return out


def classifier_run(model_spec, tok, d, steps) -> dict:
    p = params.ClassifyParams(model=model_spec)
    with classify.trained_classifier(p, tok, d.train, d.labels, "lora", max_steps=steps) as r:
        losses = [h["loss"] for h in r.log_history if "loss" in h]
        return {"seconds": r.seconds, "tokens_per_second": r.tokens_per_second, "loss": statistics.mean(losses[-4:])}


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=models.DEFAULT_MODEL)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="1: one lane of nbft run --jobs 2")
    ap.add_argument("--paths", nargs="*", default=[], help="path names (default: all)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    tok = models.load_tokenizer(args.model)
    splits = data.prepare(params.DataPrepParams(model=args.model), tok).splits
    records, held_out = splits["train"], splits["validation"][:16]
    d = classify.load_data(params.ClassifyParams(model=args.model))
    paths = {"02 SFT lora, batch 8": lambda: sft_run(args.model, tok, records, held_out, args.steps, "lora"),
             "02 SFT full, batch 8": lambda: sft_run(args.model, tok, records, held_out, args.steps, "full"),
             "06 LoRA classifier, batch 16": lambda: classifier_run(args.model, tok, d, args.steps)}
    print(f"model {args.model}; {args.steps} steps, {args.threads} thread(s); load average {os.getloadavg()[0]:.1f}",
          flush=True)
    rows = []
    for name in args.paths or paths:
        variants = [v for v in VARIANTS if not (name.startswith("06") and v == "fp32 head GEMMs")]
        res: dict[str, list[dict]] = {v: [] for v in variants}
        for rep in range(args.repeats):
            for variant in variants if rep % 2 == 0 else variants[::-1]:  # alternate the order
                with without(variant):
                    r = paths[name]()
                res[variant].append(r)
                print(f"  {name} repeat {rep + 1} {variant}: {r['seconds']:.1f} s, {r['tokens_per_second']:.0f} "
                      f"tokens/s, loss {r['loss']:.4f}", flush=True)
        med = {k: {m: statistics.median(x[m] for x in rs) for m in rs[0]} for k, rs in res.items()}
        for v in variants:
            rows.append({"path": name, "variant": v, **med[v], "x_nbft": med[v]["seconds"] / med["nbft"]["seconds"]})
            print(f"| {name} | {v} | {med[v]['seconds']:.1f} s | loss {med[v]['loss']:.4f} | "
                  f"{rows[-1]['x_nbft']:.2f}x nbft's time |", flush=True)
    print(f"load average {os.getloadavg()[0]:.1f}")
    return rows


if __name__ == "__main__":
    main()
