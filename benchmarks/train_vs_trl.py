"""Side-by-side training benchmark: TRL's SFTTrainer with its own defaults (fp32, and bf16=True where the CPU has
bf16) against nbft's training path (``nbft.train.sft``), on the same model, data, LoRA adapter, batch, steps,
learning rate and seed.

    .venv/bin/python benchmarks/train_vs_trl.py [--model smollm2-135m-instruct] [--examples 128] [--steps 16]
                                                [--repeats 3] [--ablations]

Runs are interleaved (A B C, A B C, ...) so a busy machine slows every variant alike; the table gives the median
tokens/s of each variant, its final loss and the ratio to each TRL variant: the number issue 16 is judged by. The
final loss is the evaluation loss (TRL's own ``evaluate``, loss on the replies) on the same held-out validation
examples for every variant: the last training losses would compare different batches (each trainer shuffles the
data its own way). Tokens are TRL's own count of the non-padding tokens trained
on (``num_tokens`` in the log), the same for every variant. Not a test: numbers depend on the machine and on what else
runs on it (the load average is printed).

"TRL defaults" means: ``SFTConfig`` with only what makes the runs comparable set (output folder, batch size, steps,
learning rate, seed, no saving, no reporting, CPU); everything else — activation checkpointing, scheduler, warmup,
padding, precision — is TRL's default. The adapter is the same LoRA (r 16, alpha 32, all linear layers) everywhere.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile
import time
from unittest import mock

from nbft import data, models, params, train, trl_patches


def trl_defaults(model, tok, records, held_out, lora, steps: int, batch: int, lr: float, seed: int,
                 bf16: bool) -> dict:
    """TRL's SFTTrainer with its defaults (see the module docstring)."""
    from transformers import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    with tempfile.TemporaryDirectory() as tmp:
        args = SFTConfig(output_dir=tmp, per_device_train_batch_size=batch, max_steps=steps, learning_rate=lr,
                         seed=seed, save_strategy="no", report_to="none", use_cpu=True, bf16=bf16, logging_steps=1,
                         disable_tqdm=True)
        trainer = SFTTrainer(model=model, args=args, train_dataset=train.to_dataset(records), processing_class=tok,
                             eval_dataset=train.to_dataset(held_out), peft_config=train.lora_config(lora))
        trainer.remove_callback(PrinterCallback)  # it prints every log line once tqdm is off: output only
        t0 = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - t0
        return summary(trainer.state.log_history, seconds, trainer.evaluate()["eval_loss"])


#: ``--ablations``: nbft's path with one of its speed-ups taken out (what each contributes, and that none moves the
#: loss): the frozen base in fp32 under autocast, TRL's full-vocabulary LM head on CPU; and with padding-free batches
#: (opt-in: measured no faster here).
ABLATIONS = {"padding-free": "nbft padding-free", "fp32 base": "nbft fp32 base", "full head": "nbft full-vocab head"}


def nbft_path(model, tok, records, held_out, lora, steps: int, batch: int, lr: float, seed: int,
              without: str | None = None) -> dict:
    """nbft's path: ``train.sft`` with the stage defaults of ``SFTParams`` (its precision, scheduler,
    bf16 frozen base, compact LM head, ...); ``without``: one ``ABLATIONS`` key changed."""
    p = params.SFTParams(model=lora.model, batch_size=batch, seed=seed, lora_r=lora.lora_r, lora_alpha=lora.lora_alpha,
                         lora_dropout=lora.lora_dropout, lora_target=lora.lora_target)
    overrides = {"padding_free": True} if without == "padding-free" else {}
    with contextlib.ExitStack() as stack:
        if without == "fp32 base":
            stack.enter_context(mock.patch.object(train, "bf16_frozen_base", lambda model, *a, **k: model))
        if without == "full head":
            stack.enter_context(mock.patch.object(trl_patches, "compact_lm_head", contextlib.nullcontext))
        result = train.sft(model, tok, records, held_out, p, learning_rate=lr, peft_config=train.lora_config(lora),
                           max_steps=steps, **overrides)
    out = summary(result.log_history, result.seconds, result.eval_loss)
    result.release()
    return out


def summary(log_history: list[dict], seconds: float, eval_loss: float) -> dict:
    tokens = train.trained_tokens(log_history)
    return {"tokens_per_second": tokens / seconds, "seconds": seconds, "tokens": tokens, "final_loss": eval_loss}


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=models.DEFAULT_MODEL)
    ap.add_argument("--examples", type=int, default=128)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--held-out", type=int, default=32, help="validation examples the final loss is measured on")
    ap.add_argument("--ablations", action="store_true",
                    help="also nbft's path with each of its speed-ups taken out, one at a time (ABLATIONS)")
    args = ap.parse_args(argv)

    tok = models.load_tokenizer(args.model)
    splits = data.prepare(params.DataPrepParams(model=args.model), tok).splits
    records, held_out = splits["train"][: args.examples], (splits["validation"] + splits["test"])[: args.held_out]
    lora = params.SFTParams(model=args.model, lora_r=16, lora_alpha=32, lora_dropout=0.05, lora_target="all-linear")
    bf16 = models.cpu_supports_bf16()
    common = (tok, records, held_out, lora, args.steps, args.batch, args.lr, args.seed)
    variants = {"trl fp32": lambda m: trl_defaults(m, *common, bf16=False)}
    if bf16:
        variants["trl bf16"] = lambda m: trl_defaults(m, *common, bf16=True)
    variants["nbft"] = lambda m: nbft_path(m, *common)
    for key, name in ABLATIONS.items() if args.ablations else ():
        if key != "fp32 base" or bf16:  # without bf16 the base stays fp32 anyway
            variants[name] = lambda m, key=key: nbft_path(m, *common, without=key)
    print(f"model {args.model}; {len(records)} examples ({len(held_out)} held out for the final loss), median {data.token_stats(records)['median']} tokens; "
          f"LoRA r16 all-linear, batch {args.batch}, {args.steps} steps, lr {args.lr}; cpu bf16: {bf16}"
          + ("" if bf16 else " (no bf16 row: TRL's bf16=True needs a CPU with bf16)")
          + f"; load average {os.getloadavg()[0]:.1f}", flush=True)
    runs: dict[str, list[dict]] = {k: [] for k in variants}
    for rep in range(args.repeats):
        for name, fn in variants.items():
            model, _ = models.load_model(args.model, "cpu", tokenizer=tok)
            r = fn(model)
            models.release(model)
            runs[name].append(r)
            print(f"  repeat {rep + 1} {name:<17} {r['tokens_per_second']:7.1f} tokens/s  loss {r['final_loss']:.4f}  "
                  f"({r['seconds']:.1f} s, {r['tokens']} tokens)", flush=True)
    rows = []
    for name, rs in runs.items():
        rows.append({"variant": name, "tokens_per_second": statistics.median(r["tokens_per_second"] for r in rs),
                     "final_loss": statistics.median(r["final_loss"] for r in rs)})
    trl = {r["variant"]: r for r in rows if r["variant"].startswith("trl")}
    print("\n| variant | tokens/s (median) | final loss | " + " | ".join(f"x {k}" for k in trl) + " |")
    print("|---|---|---|" + "---|" * len(trl))
    for r in rows:
        ratios = [f"{r['tokens_per_second'] / b['tokens_per_second']:.2f}" for b in trl.values()]
        print(f"| {r['variant']} | {r['tokens_per_second']:.1f} | {r['final_loss']:.4f} | " + " | ".join(ratios) + " |")
    losses = [r["final_loss"] for r in rows]
    print(f"\nfinal losses within {100 * (max(losses) - min(losses)) / min(losses):.1f}% of each other; "
          f"load average {os.getloadavg()[0]:.1f}")
    return rows


if __name__ == "__main__":
    main()
