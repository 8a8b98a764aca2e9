"""Generation benchmark: nbft's batched evaluation generation (``evaluate.generate``: batches of prompts sorted by
length, left padding, greedy, stop when every sequence ended) against the one-prompt-at-a-time loop, at equal
outputs.

    .venv/bin/python benchmarks/generation.py [--model smollm2-135m-instruct] [--prompts 64] [--new-tokens 48]
                                              [--batch 16] [--precisions fp32 bf16] [--static-cache] [--frozen]

For each precision: seconds for the loop (batch 1) and for batches, the speed-up, and how many outputs are the same
(fp32: all of them — left padding with a correct attention mask does not change a greedy reply; bf16: a padded
batch can round differently). Under bf16 a row ``batched, own cache`` generates with transformers' own key/value
cache instead of ``models.kv_cache``'s bf16 one (the keys then stay fp32). ``--static-cache`` adds a batched row
with transformers' static KV cache, in fp32 only (under bf16 autocast transformers allocates the cache in the
weights' fp32 and the bf16 states do not fit it). ``--frozen`` freezes the weights first, as they are under a LoRA
adapter after training (bf16 autocast then casts each weight once per batch: ``models.cast_once``). The issue 16
bar: batched >= 5x the loop. Not a test: the numbers depend on the machine (the load average is printed).
"""
from __future__ import annotations

import argparse
import os
import time

from nbft import data, evaluate, models, params


def timed(fn) -> tuple[list[str], float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=models.DEFAULT_MODEL)
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    ap.add_argument("--static-cache", action="store_true", help="also batches with a static KV cache")
    ap.add_argument("--frozen", action="store_true", help="freeze the weights first (as under a LoRA adapter)")
    args = ap.parse_args(argv)

    tok = models.load_tokenizer(args.model)
    splits = data.prepare(params.DataPrepParams(model=args.model), tok).splits
    prompts = [r["prompt"] for r in (splits["test"] + splits["validation"] + splits["train"])][: args.prompts]
    model, _ = models.load_model(args.model, "cpu", tokenizer=tok)
    if args.frozen:
        model.requires_grad_(False)
    precisions = [p for p in args.precisions if p != "bf16" or models.cpu_supports_bf16()]
    print(f"model {args.model}; {len(prompts)} prompts, {args.new_tokens} new tokens, batch {args.batch}; "
          f"precisions {', '.join(precisions)}{' (weights frozen)' if args.frozen else ''}; "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    rows = []
    for precision in precisions:
        gen = lambda batch, **kw: evaluate.generate(model, tok, prompts, args.new_tokens, batch, precision, **kw)
        loop, loop_s = timed(lambda: gen(1))
        variants = {"batched": {}}
        if precision == "bf16":  # transformers' own cache (fp32 keys), as before models.kv_cache
            variants["batched, own cache"] = {"past_key_values": None}
        if args.static_cache and precision == "fp32":  # under bf16 autocast the static cache (allocated in the
            variants["batched, static cache"] = {"cache_implementation": "static"}  # fp32 weights' dtype) fails
        for name, kw in variants.items():
            outs, secs = timed(lambda: gen(args.batch, **kw))
            same = sum(a == b for a, b in zip(outs, loop))
            rows.append({"precision": precision, "variant": name, "loop_seconds": loop_s, "seconds": secs,
                         "speedup": loop_s / secs, "same_outputs": same, "n": len(prompts)})
            print(f"  {precision} {name:<22} loop {loop_s:6.1f} s, batched {secs:6.1f} s: {loop_s / secs:5.2f}x; "
                  f"same outputs {same}/{len(prompts)}", flush=True)
    print(f"load average {os.getloadavg()[0]:.1f}")
    return rows


if __name__ == "__main__":
    main()
