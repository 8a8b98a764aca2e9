"""Question-answering benchmark (05's ``knowledge.ask``): each prompt read once for the open reply and the
multiple-choice options (``knowledge.read_prompts``) against two passes (``evaluate.generate``, then
``knowledge.mc_loglik``: every prompt prefilled twice, as ``ask`` did before 2026-12-02), same questions.

    .venv/bin/python benchmarks/ask.py [--model smollm2-135m-instruct] [--facts 100] [--new-tokens 32]
                                       [--batch 64] [--precision bf16] [--repeats 2]

Two prompt forms, as 05 asks them: the question alone (``plain``) and after a passage (``context``: the fact's own
statement, twice, about as long as 05's retrieved chunk). Interleaved repeats; prints seconds, the speed-up and how
many replies and multiple-choice picks are the same (the one-pass batches are sorted by token length and feed the
last prompt token with the options, so under bf16 a padded batch can round differently). Not a test: the numbers
depend on the machine (the load average is printed).
"""
from __future__ import annotations

import argparse
import os
import time

from nbft import corpora, evaluate, knowledge, models


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=models.DEFAULT_MODEL)
    ap.add_argument("--facts", type=int, default=100)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args(argv)

    tok = models.load_tokenizer(args.model)
    facts = knowledge.select(knowledge.world_facts(corpora.invented_world(seed=0), seed=0), args.facts, seed=0)
    model, _ = models.load_model(args.model, "cpu", tokenizer=tok)
    print(f"model {args.model}; {len(facts)} questions, {args.new_tokens} new tokens, batch {args.batch}, "
          f"{args.precision}; load average {os.getloadavg()[0]:.1f}", flush=True)
    options = [list(f.options) for f in facts]
    rows = []
    for form in ("plain", "context"):
        prompts = [knowledge.open_prompt(f, tok, context=[f"{f.statement} {f.statement}"] if form == "context" else None)
                   for f in facts]

        def two_passes():
            replies = evaluate.generate(model, tok, prompts, args.new_tokens, args.batch, args.precision, cache=False)
            return knowledge.mc_loglik(model, tok, prompts, options, args.batch, args.precision), replies

        def one_pass():
            return knowledge.read_prompts(model, tok, prompts, options, args.new_tokens, args.batch, args.precision)

        secs: dict[str, list[float]] = {"two": [], "one": []}
        got: dict[str, tuple] = {}
        for _ in range(args.repeats):
            for name, fn in (("two", two_passes), ("one", one_pass)):
                t0 = time.perf_counter()
                got[name] = fn()
                secs[name].append(time.perf_counter() - t0)
        two, one = got["two"], got["one"]
        pick = [[max(range(len(s)), key=s.__getitem__) for s in ll] for ll in (two[0], one[0])]
        row = {"form": form, "seconds_two_passes": min(secs["two"]), "seconds_one_pass": min(secs["one"]),
               "same_replies": sum(a == b for a, b in zip(two[1], one[1])),
               "same_mc": sum(a == b for a, b in zip(*pick)), "n": len(facts),
               "open_two": knowledge.score_open(two[1], facts)[0], "open_one": knowledge.score_open(one[1], facts)[0],
               "mc_two": knowledge.score_mc(two[0], facts)[0], "mc_one": knowledge.score_mc(one[0], facts)[0]}
        row["speedup"] = row["seconds_two_passes"] / row["seconds_one_pass"]
        rows.append(row)
        print(f"  {form:8s} two passes {' / '.join(f'{s:.1f}' for s in secs['two'])} s, one pass "
              f"{' / '.join(f'{s:.1f}' for s in secs['one'])} s: {row['speedup']:.2f}x (best of each); same replies "
              f"{row['same_replies']}/{row['n']}, same multiple-choice picks {row['same_mc']}/{row['n']}; open "
              f"{row['open_two']:.2f} / {row['open_one']:.2f}, multiple choice {row['mc_two']:.2f} / {row['mc_one']:.2f}",
              flush=True)
    print(f"load average {os.getloadavg()[0]:.1f}")
    return rows


if __name__ == "__main__":
    main()
