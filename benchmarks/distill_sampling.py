"""07's distill row: TRL's DistillationTrainer with the student's on-policy sampling inside one autocast block
(nbft's ``distill_student``) against autocast entered at every forward, i.e. at every sampled token (accelerate's
bf16 wrapper alone: every weight cast again per token), interleaved in one process. Teacher: the default model;
student: the default model cut to ``--layers`` blocks (``distill.build_student``, as 07 builds it).

    .venv/bin/python benchmarks/distill_sampling.py [--steps 4] [--repeats 2] [--threads 1]

Prints seconds and the last step's loss per run (the same casts, so the losses agree exactly) and the ratio of the
medians. Not a test.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile

import torch

from nbft import data, distill, models, params


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=models.DEFAULT_MODEL)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--layers", type=int, default=10, help="blocks the student keeps")
    ap.add_argument("--threads", type=int, default=1, help="1: one lane of nbft run --jobs 2")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    tok = models.load_tokenizer(args.model)
    prompts = [r["prompt"] for r in data.prepare(params.DataPrepParams(model=args.model), tok).splits["train"][:64]]
    p = params.DistillParams(model=args.model, max_steps=args.steps)
    real = models.autocast
    res: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
    print(f"model {args.model}, student {args.layers} blocks; {args.steps} steps, batch {p.batch_size}, "
          f"{p.max_new_tokens} sampled tokens; {args.threads} thread(s); load average {os.getloadavg()[0]:.1f}",
          flush=True)
    with tempfile.TemporaryDirectory() as folder:
        distill.build_student(args.model, args.layers, folder, tok)
        teacher, _ = models.load_model(args.model, "cpu", tokenizer=tok)
        for rep in range(args.repeats):
            for one_block in ((False, True) if rep % 2 == 0 else (True, False)):  # alternate which goes first
                models.autocast = real if one_block else (lambda m, precision: contextlib.nullcontext())
                try:
                    student, _ = models.load_model(folder, "cpu", tokenizer=tok)
                    r = distill.distill_student(student, teacher, tok, prompts, p)
                finally:
                    models.autocast = real
                loss = [h["loss"] for h in r.log_history if "loss" in h][-1]
                res[one_block].append((r.seconds, loss))
                r.release()
                models.release(student)
                print(f"  repeat {rep + 1} {'one block' if one_block else 'per token'}: {r.seconds:.1f} s, "
                      f"last loss {loss:.4f}", flush=True)
    med = {k: statistics.median(s for s, _ in v) for k, v in res.items()}
    out = {"seconds_per_token": med[False], "seconds_one_block": med[True], "speedup": med[False] / med[True],
           "same_losses": sorted(l for _, l in res[True]) == sorted(l for _, l in res[False])}
    print(f"| per token {med[False]:.1f} s | one block {med[True]:.1f} s | x{out['speedup']:.2f} | "
          f"losses {'identical' if out['same_losses'] else 'DIFFER'} |")
    return out


if __name__ == "__main__":
    main()
