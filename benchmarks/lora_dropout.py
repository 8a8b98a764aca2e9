"""LoRA dropout: the same LoRA training with ``lora_dropout`` 0.05 and 0 (peft's default), interleaved in one
process, through nbft's own paths: 02's instruction SFT (``train.sft``, bf16 frozen base) and 06's classifier
(``classify.fit_classifier``, the sequence-classification head on an fp32 base under autocast).

    .venv/bin/python benchmarks/lora_dropout.py [--steps 8] [--repeats 2] [--threads 1]

Dropout draws a fresh mask over the input of every wrapped linear layer (7 per block, all-linear) at every step and
keeps it for the backward pass; at one or two CPU threads that is a large share of a LoRA step. Prints, per path and
dropout: seconds, tokens per second and the final training loss (the mean of the last 4 steps), and the ratio of
the medians. Not a test.
"""
from __future__ import annotations

import argparse
import os
import statistics

import torch

from nbft import classify, data, models, params, train


def sft_run(model_spec, tok, records, steps, dropout) -> dict:
    p = params.SFTParams(model=model_spec, lora_dropout=dropout, batch_size=8)
    model, _ = models.load_model(model_spec, "cpu", tokenizer=tok)
    r = train.sft(model, tok, records, [], p, learning_rate=p.learning_rate, peft_config=train.lora_config(p),
                  max_steps=steps)
    out = _row(r)
    r.release()
    models.release(model)
    return out


def classifier_run(model_spec, tok, d, steps, dropout) -> dict:
    p = params.ClassifyParams(model=model_spec, lora_dropout=dropout)
    with classify.trained_classifier(p, tok, d.train, d.labels, "lora", max_steps=steps) as r:
        return _row(r)


def _row(r) -> dict:
    losses = [h["loss"] for h in r.log_history if "loss" in h]
    return {"seconds": r.seconds, "tokens_per_second": r.tokens_per_second, "loss": statistics.mean(losses[-4:])}


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=models.DEFAULT_MODEL)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="1: one lane of nbft run --jobs 2")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    tok = models.load_tokenizer(args.model)
    records = data.prepare(params.DataPrepParams(model=args.model), tok).splits["train"]
    d = classify.load_data(params.ClassifyParams(model=args.model))
    paths = {"02 instruction SFT, batch 8": lambda dropout: sft_run(args.model, tok, records, args.steps, dropout),
             "06 LoRA classifier, batch 16": lambda dropout: classifier_run(args.model, tok, d, args.steps, dropout)}
    print(f"model {args.model}; {args.steps} steps, {args.threads} thread(s); load average {os.getloadavg()[0]:.1f}",
          flush=True)
    rows = []
    for name, fn in paths.items():
        res: dict[float, list[dict]] = {0.05: [], 0.0: []}
        for rep in range(args.repeats):
            for dropout in ((0.05, 0.0) if rep % 2 == 0 else (0.0, 0.05)):  # alternate which goes first
                r = fn(dropout)
                res[dropout].append(r)
                print(f"  {name} repeat {rep + 1} dropout {dropout}: {r['seconds']:.1f} s, "
                      f"{r['tokens_per_second']:.0f} tokens/s, loss {r['loss']:.3f}", flush=True)
        med = {k: {m: statistics.median(x[m] for x in rs) for m in rs[0]} for k, rs in res.items()}
        row = {"path": name, "seconds_0.05": med[0.05]["seconds"], "seconds_0": med[0.0]["seconds"],
               "loss_0.05": med[0.05]["loss"], "loss_0": med[0.0]["loss"],
               "speedup": med[0.05]["seconds"] / med[0.0]["seconds"]}
        rows.append(row)
        print(f"| {name} | dropout 0.05 {row['seconds_0.05']:.1f} s, loss {row['loss_0.05']:.3f} | dropout 0 "
              f"{row['seconds_0']:.1f} s, loss {row['loss_0']:.3f} | x{row['speedup']:.2f} |", flush=True)
    print(f"load average {os.getloadavg()[0]:.1f}")
    return rows


if __name__ == "__main__":
    main()
