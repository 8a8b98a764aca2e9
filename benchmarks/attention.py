"""Attention in training on CPU: nbft's training path with eager attention in the loss (``train.eager_attention_in_loss``,
the default) against the same path with transformers' default sdpa, interleaved in one process:
02's LoRA and full SFT (``train.sft``) and 06's LoRA classifier (``classify.fit_classifier``).

    .venv/bin/python benchmarks/attention.py [--steps 12] [--repeats 2] [--threads 1]

torch's CPU flash-attention kernel (what sdpa picks on CPU) has a slow backward: at these sequence lengths it was a
fifth of a LoRA step on one core, in a profile of 02's SFT path. Prints, per path and attention: seconds, tokens per
second and the final loss (SFT: the evaluation loss on 16 held-out examples; classifier: the mean of the last 4
training losses), and the ratio of the medians. Not a test: the numbers depend on the machine.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
from unittest import mock

import torch

from nbft import classify, data, models, params, train


def sdpa_everywhere():
    """nbft's path without the eager switch: the trainers' forward passes keep transformers' default (sdpa)."""
    return mock.patch.object(train, "eager_attention_in_loss", lambda trainer: contextlib.nullcontext())


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
    for name, fn in paths.items():
        res: dict[str, list[dict]] = {"sdpa": [], "eager": []}
        for rep in range(args.repeats):
            for variant in (("sdpa", "eager") if rep % 2 == 0 else ("eager", "sdpa")):  # alternate which goes first
                with sdpa_everywhere() if variant == "sdpa" else contextlib.nullcontext():
                    r = fn()
                res[variant].append(r)
                print(f"  {name} repeat {rep + 1} {variant}: {r['seconds']:.1f} s, {r['tokens_per_second']:.0f} "
                      f"tokens/s, loss {r['loss']:.4f}", flush=True)
        med = {k: {m: statistics.median(x[m] for x in rs) for m in rs[0]} for k, rs in res.items()}
        row = {"path": name, **{f"{m}_{k}": med[k][m] for k in med for m in ("seconds", "loss")},
               "speedup": med["sdpa"]["seconds"] / med["eager"]["seconds"]}
        rows.append(row)
        print(f"| {name} | sdpa {row['seconds_sdpa']:.1f} s, loss {row['loss_sdpa']:.4f} | eager "
              f"{row['seconds_eager']:.1f} s, loss {row['loss_eager']:.4f} | x{row['speedup']:.2f} |", flush=True)
    print(f"load average {os.getloadavg()[0]:.1f}")
    return rows


if __name__ == "__main__":
    main()
