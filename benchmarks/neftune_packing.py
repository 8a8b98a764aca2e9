"""NEFTune and packing on 02's main run: the LoRA recipe of 02_sft (its default parameters: same examples, epochs,
learning rate and seed; 01's default demo data) trained as arms, interleaved in one process:

- ``plain``: 02's main run as it is;
- ``neftune``: with ``neftune_noise_alpha`` (default 5);
- ``packing <strategy>``: with ``packing`` and each of ``packing_strategy`` (bfd, bfd_split, wrapped; a strategy
  whose packed rows are the same as an earlier one's is reported as that one, not trained again).

    .venv/bin/python benchmarks/neftune_packing.py [--repeats 2] [--alpha 5] [--n-eval 0]

Per arm: the task score on the held-out test prompts (01's test split) with its bootstrap 95% interval and the
paired change from ``plain``, the answer accuracy, the final training loss (the mean of the last 3 logged steps), the
validation loss at the end (never packed: it compares across arms), tokens per second, seconds and optimizer steps.
Packing puts ``batch_size`` rows of ``max_length`` tokens in a step instead of ``batch_size`` examples, so a packed
epoch has fewer optimizer steps: the arms compare at an equal number of epochs (the same examples seen once), not at
an equal number of steps. Repeats retrain every arm (seeded: the same model) for the timings, in alternating order;
the scores are taken once, on the first. Not a test.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import time

from nbft import data, evaluate, models, params, scoring, tasks, train


def arms(alpha: float) -> dict[str, dict]:
    """The arms: parameter changes to 02's defaults."""
    return {"plain": {}, f"neftune {alpha:g}": {"neftune_noise_alpha": alpha},
            **{f"packing {s}": {"packing": True, "packing_strategy": s} for s in train.PACKING_STRATEGIES}}


def packed_rows(p, tok, records) -> list:
    """The training rows TRL makes of ``records`` under ``p`` (to tell two strategies that pack alike)."""
    from trl import SFTTrainer

    model, _ = models.load_model(p.model, "cpu", tokenizer=tok)
    with train.scratch_dir() as tmp:
        ds = SFTTrainer(model=model, args=train.sft_config(p, tmp, p.learning_rate), processing_class=tok,
                        train_dataset=train.to_dataset(records, "instruction", tok, p.loss_turns)).train_dataset
        rows = [tuple(r["input_ids"]) for r in ds]
    models.release(model)
    return rows


def run_arm(p, tok, train_set, validation, test, check, precision, score: bool) -> dict:
    """02's main run under ``p``: trained, its losses and speed, and (``score``) its replies scored."""
    with train.trained(p, tok, train_set, validation, scope="lora") as r:
        losses = [h["loss"] for h in r.log_history if "loss" in h and "eval_loss" not in h]
        row = {"seconds": r.seconds, "tokens_per_second": r.tokens_per_second, "steps": r.steps,
               "train_tokens": r.train_tokens, "final_loss": statistics.mean(losses[-3:]), "eval_loss": r.eval_loss}
        if score:
            ev = evaluate.evaluate_model(r.model, tok, test, check, precision, p.max_new_tokens, p.eval_batch_size,
                                         probe=False)
            row.update(passed=[float(x) for x in ev["passed"]], answer_accuracy=ev["answer_accuracy"])
    return row


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=models.DEFAULT_MODEL)
    ap.add_argument("--repeats", type=int, default=2, help="trainings per arm (timings); scored once")
    ap.add_argument("--alpha", type=float, default=5.0, help="the NEFTune arm's neftune_noise_alpha")
    ap.add_argument("--n-eval", type=int, default=0, help="score at most this many test prompts (0: all)")
    ap.add_argument("--max-train", type=int, default=0, help="train on at most this many examples (0: all)")
    args = ap.parse_args(argv)
    tok = models.load_tokenizer(args.model)
    prep = data.prepare(params.DataPrepParams(model=args.model), tok)
    train_set = prep.splits["train"][: args.max_train or None]
    validation, test = prep.splits["validation"], prep.splits["test"][: args.n_eval or None]
    check = tasks.resolve_check("auto", test)
    base_p = params.build("02_sft", {"model": args.model, "eval_steps": 0})  # 02's defaults; one evaluation, at the end
    precision = train.training_precision(base_p)
    ps = {name: dataclasses.replace(base_p, **change) for name, change in arms(args.alpha).items()}
    same_as: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    for name, p in ps.items():  # a strategy that packs exactly as an earlier one is that one
        if p.packing:
            key = tuple(packed_rows(p, tok, train_set))
            same_as[name] = seen.setdefault(key, name)
    trained = [n for n in ps if same_as.get(n, n) == n]
    print(f"model {args.model}; {len(train_set)} training examples, {len(validation)} validation, {len(test)} test "
          f"prompts (check {check}); 02's LoRA recipe: {base_p.epochs:g} epoch, batch {base_p.batch_size}, "
          f"max_length {base_p.max_length}, learning rate {base_p.learning_rate:g}, precision {precision}, seed "
          f"{base_p.seed}; {torch_threads()} torch threads; load average {os.getloadavg()[0]:.1f}", flush=True)
    base_model, _ = models.load_model(args.model, "cpu", tokenizer=tok)
    base = evaluate.evaluate_model(base_model, tok, test, check, precision, base_p.max_new_tokens,
                                   base_p.eval_batch_size, probe=False)
    models.release(base_model)
    print(f"  base model: task score {base['task_score']:.3f}", flush=True)
    results: dict[str, list[dict]] = {n: [] for n in trained}
    t0 = time.time()
    for rep in range(args.repeats):
        for name in (trained if rep % 2 == 0 else trained[::-1]):  # alternate the order
            r = run_arm(ps[name], tok, train_set, validation, test, check, precision, score=rep == 0)
            results[name].append(r)
            print(f"  repeat {rep + 1} {name}: {r['steps']} steps, {r['seconds']:.1f} s, {r['tokens_per_second']:.0f} "
                  f"tokens/s, final loss {r['final_loss']:.3f}, validation loss {r['eval_loss']:.3f}"
                  + (f", task score {statistics.mean(r['passed']):.3f}" if "passed" in r else ""), flush=True)
    plain = results["plain"][0]
    rows = []
    print("\n| arm | task score [95% CI] | change vs plain [95% CI] | answer accuracy | final training loss | "
          "validation loss | optimizer steps | tokens/s (x plain) | seconds (x plain) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in ps:
        rs = results[same_as.get(name, name)]
        first = rs[0]
        s, d = scoring.summary(first["passed"]), scoring.paired(plain["passed"], first["passed"])
        tps = statistics.median(r["tokens_per_second"] for r in rs)
        sec = statistics.median(r["seconds"] for r in rs)
        tps_plain = statistics.median(r["tokens_per_second"] for r in results["plain"])
        sec_plain = statistics.median(r["seconds"] for r in results["plain"])
        row = {"arm": name, "same_as": same_as.get(name, name), "task_score": s, "change": d,
               "answer_accuracy": first["answer_accuracy"], "final_loss": first["final_loss"],
               "eval_loss": first["eval_loss"], "steps": first["steps"], "tokens_per_second": tps, "seconds": sec,
               "tokens_per_second_ratio": tps / tps_plain, "seconds_ratio": sec / sec_plain}
        rows.append(row)
        label = name + (f" (= {row['same_as']})" if row["same_as"] != name else "")
        print(f"| {label} | {s['mean']:.3f} [{s['lo']:.3f}, {s['hi']:.3f}] | {d['mean']:+.3f} [{d['lo']:+.3f}, "
              f"{d['hi']:+.3f}] | {row['answer_accuracy']:.3f} | {row['final_loss']:.3f} | {row['eval_loss']:.3f} | "
              f"{row['steps']} | {tps:.0f} (x{row['tokens_per_second_ratio']:.2f}) | {sec:.1f} "
              f"(x{row['seconds_ratio']:.2f}) |")
    print(f"\nbase task score {base['task_score']:.3f}; {len(test)} test prompts; {time.time() - t0:.0f} s of arms; "
          f"load average {os.getloadavg()[0]:.1f}")
    return rows


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":
    main()
