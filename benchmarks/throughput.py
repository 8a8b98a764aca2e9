"""Throughput benchmark: training tokens/s per scope and precision, generation batched vs one by one.

    .venv/bin/python benchmarks/throughput.py [--model smollm2-135m-instruct] [--examples 64]

Prints one line per measurement; docs/measurements.md records the figures measured on the
project's 2-core CPU machines. Not a test: numbers depend on the machine.
"""
from __future__ import annotations

import argparse
import time

from nbft import data, evaluate, models, params, train


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=models.DEFAULT_MODEL)
    ap.add_argument("--examples", type=int, default=64)
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    ap.add_argument("--scopes", nargs="+", default=list(train.SCOPES))
    args = ap.parse_args()

    tok = models.load_tokenizer(args.model)
    prep = data.prepare(params.DataPrepParams(model=args.model), tok)
    examples = prep.splits["train"][: args.examples]
    print(f"model {args.model}; {len(examples)} examples, median {data.token_stats(examples)['median']} tokens; "
          f"cpu bf16: {models.cpu_supports_bf16()}")
    for precision in args.precisions:
        for scope in args.scopes:
            p = params.SFTParams(model=args.model, precision=precision, device="cpu", epochs=1.0)
            with train.trained(p, tok, examples, scope=scope) as res:
                trainable, total = models.count_params(res.model)
            print(f"train  {scope:<6} {precision}: {res.tokens_per_second:7.1f} tokens/s "
                  f"({res.seconds:.1f} s, {100 * trainable / total:.2f}% trainable)", flush=True)
    model, _ = models.load_model(args.model, "cpu", tokenizer=tok)
    prompts = [r["prompt"] for r in prep.splits["test"][:32]]
    for precision in args.precisions:
        for batch in (1, 16):
            t0 = time.perf_counter()
            outs = evaluate.generate(model, tok, prompts, 32, batch_size=batch, precision=precision)
            secs = time.perf_counter() - t0
            n_tok = sum(len(tok(o)["input_ids"]) for o in outs)
            print(f"generate batch {batch:>2} {precision}: {len(prompts) / secs:6.2f} prompts/s, "
                  f"{n_tok / secs:7.1f} new tokens/s", flush=True)


if __name__ == "__main__":
    main()
