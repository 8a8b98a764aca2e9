"""Length-grouped batches: the same training with random batches and with transformers' length-grouped sampler
(``train_sampling_strategy="group_by_length"``), interleaved in one process, on the training sets whose lengths
vary most: 05's documents with K paraphrases of every fact (continued pretraining, every weight trains) and 02's
instruction data (LoRA).

    .venv/bin/python benchmarks/length_grouping.py [--steps 24] [--repeats 2] [--threads 2]

Prints, per data set and sampler: padding efficiency (real tokens / padded tokens over the batches the sampler
made), seconds, real tokens per second and the final training loss (the mean of the last 4 steps' losses). Not a
test.
"""
from __future__ import annotations

import argparse
import os
import statistics

import torch

from nbft import corpora, data, knowledge, models, params, train


def datasets(tok, model_spec: str) -> dict:
    world = corpora.invented_world(seed=0)
    docs = knowledge.world_docs(world)
    facts = knowledge.select(knowledge.world_facts(world, seed=0), 100, 0)
    splits = data.prepare(params.DataPrepParams(model=model_spec), tok).splits
    return {"05 documents + 4 paraphrases (full, CPT)": ("continued_pretraining", "full",
                                                      knowledge.training_texts(docs, facts, 4, seed=0)),
            "02 instruction data (LoRA)": ("instruction", "lora", splits["train"])}


def efficiency(tok, mode, records, steps, grouped, seed=0) -> float:
    """Real / padded tokens over the batches of ``steps`` steps, the sampler simulated with transformers' own
    grouping function (random: a permutation)."""
    from transformers.trainer_pt_utils import get_length_grouped_indices

    texts = [r["text"] if mode == "continued_pretraining" else r["prompt"] + r["completion"] for r in records]
    lengths = [min(len(x) + 1, 256) for x in tok(texts, add_special_tokens=False)["input_ids"]]
    g = torch.Generator().manual_seed(seed)
    order: list[int] = []
    while len(order) < steps * 8:
        order += (get_length_grouped_indices(lengths, 8, generator=g) if grouped
                  else torch.randperm(len(lengths), generator=g).tolist())
    batches = [order[i:i + 8] for i in range(0, steps * 8, 8)]
    return sum(lengths[i] for b in batches for i in b) / sum(max(lengths[i] for i in b) * len(b) for b in batches)


def run(model_spec, tok, mode, scope, records, steps, grouped) -> dict:
    p = params.RAGParams(model=model_spec, scope=scope, batch_size=8)
    model, _ = models.load_model(model_spec, "cpu", tokenizer=tok)
    if scope == "full":
        train.apply_scope(model, "full")
    lr = p.learning_rate if scope == "lora" else p.full_learning_rate
    overrides = {"train_sampling_strategy": "group_by_length"} if grouped else {}
    r = train.sft(model, tok, records, [], p, learning_rate=lr, peft_config=train.lora_config(p) if scope == "lora"
                  else None, mode=mode, max_steps=steps, **overrides)
    losses = [h["loss"] for h in r.log_history if "loss" in h]
    out = {"seconds": r.seconds, "tokens_per_second": r.tokens_per_second, "loss": statistics.mean(losses[-4:]),
           "efficiency": efficiency(tok, mode, records, steps, grouped)}
    r.release()
    models.release(model)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=models.DEFAULT_MODEL)
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    tok = models.load_tokenizer(args.model)
    print(f"model {args.model}; {args.steps} steps, batch 8, {args.threads} threads; "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    for name, (mode, scope, records) in datasets(tok, args.model).items():
        res = {False: [], True: []}
        for rep in range(args.repeats):
            for grouped in (False, True):
                r = run(args.model, tok, mode, scope, records, args.steps, grouped)
                res[grouped].append(r)
                print(f"  {name} repeat {rep + 1} {'grouped' if grouped else 'random '}: padding efficiency "
                      f"{r['efficiency']:.2f}, {r['seconds']:.1f} s, {r['tokens_per_second']:.0f} tokens/s, "
                      f"loss {r['loss']:.3f}", flush=True)
        med = {g: {k: statistics.median(x[k] for x in rs) for k in rs[0]} for g, rs in res.items()}
        print(f"| {name} | {len(records)} | random {med[False]['seconds']:.1f} s, eff {med[False]['efficiency']:.2f}, "
              f"loss {med[False]['loss']:.3f} | grouped {med[True]['seconds']:.1f} s, eff {med[True]['efficiency']:.2f}, "
              f"loss {med[True]['loss']:.3f} | x{med[False]['seconds'] / med[True]['seconds']:.2f} |", flush=True)
    print(f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
