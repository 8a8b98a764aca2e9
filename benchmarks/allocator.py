"""Memory-allocator benchmark: the same training and generation work in a fresh process per setting of the
allocator's environment (glibc malloc tunables, torch's transparent-huge-page allocations), one thread each.

    .venv/bin/python benchmarks/allocator.py [--model smollm2-135m-instruct] [--steps 8] [--repeats 2]
                                             [--settings default glibc thp both] [--lanes 1]

Why: during a pipeline run each notebook kernel spent 10-25% of its time in the kernel (``stime``), with ~100k
minor page faults a second: glibc hands every allocation above its mmap threshold (at most 32 MiB, adjusted at
run time) a fresh mapping and unmaps it on free, so each training step and each generated token touches new,
zero-filled pages again. The settings:

- ``default``: nothing set.
- ``glibc``: ``MALLOC_MMAP_THRESHOLD_`` at glibc's maximum (32 MiB: smaller blocks come from the heap and stay
  there) and a high ``MALLOC_TRIM_THRESHOLD_`` / ``MALLOC_TOP_PAD_`` (freed heap memory is kept for the next step).
- ``thp``: ``THP_MEM_ALLOC_ENABLE=1``: torch's CPU allocator asks for transparent huge pages (``madvise``) for
  tensors of 2 MiB and more (one fault per 2 MiB instead of per 4 KiB).
- ``both``.
- ``heap``: ``glibc`` and no mmap at all (``MALLOC_MMAP_MAX_=0``): every block, the largest too, from the heap.

Each child loads the model, runs LoRA SFT (``train.sft``: the stages' path) and full fine-tuning for ``--steps``
steps each, then greedy batched generation (``evaluate.generate``, 32 prompts, 48 tokens), and reports seconds,
minor page faults and system time of each part (``resource.getrusage``) and its peak memory. Settings run
interleaved (A B C D, A B C D, ...): a busy machine slows each alike; the table gives medians. ``--lanes 2``: two
children of the same setting at once, as ``nbft run --jobs 2`` runs two stages (each child's parts are counted).
Not a test.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

from nbft.cli import KERNEL_ENV

SETTINGS = {
    "default": {},
    "glibc": dict(KERNEL_ENV),  # what nbft run gives its kernels
    "thp": {"THP_MEM_ALLOC_ENABLE": "1"},
}
SETTINGS["both"] = {**SETTINGS["glibc"], **SETTINGS["thp"]}
#: no mmap at all (``MALLOC_MMAP_MAX_=0``): tensors above 32 MiB too (logits, the embedding's gradient and its bf16
#: copy) come from the heap and stay there once freed.
SETTINGS["heap"] = {**SETTINGS["glibc"], "MALLOC_MMAP_MAX_": "0"}
CLEARED = sorted({k for env in SETTINGS.values() for k in env})


def child(model_spec: str, steps: int) -> dict:
    """The work, in this process; returns seconds / minor faults / system seconds per part and peak RSS (MiB)."""
    import resource
    import time

    import torch

    from nbft import data, evaluate, models, params, train

    torch.set_num_threads(1)

    def usage():
        r = resource.getrusage(resource.RUSAGE_SELF)
        return time.perf_counter(), r.ru_minflt, r.ru_stime

    def part(fn):
        t0, f0, s0 = usage()
        fn()
        t1, f1, s1 = usage()
        return {"seconds": round(t1 - t0, 2), "minflt": f1 - f0, "stime": round(s1 - s0, 2)}

    tok = models.load_tokenizer(model_spec)
    splits = data.prepare(params.DataPrepParams(model=model_spec), tok).splits
    records, held_out = splits["train"][:64], splits["validation"][:16]
    precision = models.pick_precision("auto", "cpu")
    out = {}
    for scope in ("lora", "full"):
        p = params.SFTParams(model=model_spec, batch_size=8, scope=scope)
        model, _ = models.load_model(model_spec, "cpu", tokenizer=tok)
        if scope == "full":
            train.apply_scope(model, "full")
        peft_config = train.lora_config(p) if scope == "lora" else None
        lr = p.learning_rate if scope == "lora" else p.full_learning_rate
        holder = {}

        def run():
            holder["r"] = train.sft(model, tok, records, held_out, p, learning_rate=lr, peft_config=peft_config,
                                    max_steps=steps)
        out[f"train_{scope}"] = part(run)
        if scope == "lora":
            trained = holder["r"].model
            prompts = [r["prompt"] for r in splits["test"][:32]]
            out["generate"] = part(lambda: evaluate.generate(trained, tok, prompts, 48, 16, precision, cache=False))
        holder["r"].release()
        models.release(model)
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--lanes", type=int, default=1, help="children of a setting at once (nbft run --jobs)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(child(args.model, args.steps)), flush=True)
        return {}
    print(f"model {args.model}; LoRA and full fine-tuning {args.steps} steps each (batch 8), generation 32 x 48 "
          f"tokens; one thread, {args.lanes} at once; load average {os.getloadavg()[0]:.1f}", flush=True)
    runs: dict[str, list[dict]] = {s: [] for s in args.settings}
    for rep in range(args.repeats):
        for name in args.settings:
            env = {k: v for k, v in os.environ.items() if k not in CLEARED}
            env.update(SETTINGS[name], OMP_NUM_THREADS="1")
            procs = [subprocess.Popen([sys.executable, __file__, "--child", "--model", args.model, "--steps",
                                       str(args.steps)], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                      text=True) for _ in range(args.lanes)]
            for proc in procs:
                out, _ = proc.communicate()
                if proc.returncode:
                    raise SystemExit(f"{name}: the child exited {proc.returncode}")
                r = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])
                runs[name].append(r)
                print(f"  repeat {rep + 1} {name:<8} " + "  ".join(
                    f"{k} {v['seconds']:.1f} s ({v['minflt'] / 1e3:.0f}k faults, sys {v['stime']:.1f} s)"
                    for k, v in r.items() if isinstance(v, dict)) + f"  peak {r['peak_rss_mb']} MiB", flush=True)
    parts = [k for k, v in runs[args.settings[0]][0].items() if isinstance(v, dict)]
    print("\n| setting | " + " | ".join(f"{k} s" for k in parts) + " | sum s | x default | minor faults | peak MiB |")
    print("|---|" + "---|" * (len(parts) + 4))
    table = {}
    for name, rs in runs.items():
        secs = {k: statistics.median(r[k]["seconds"] for r in rs) for k in parts}
        faults = statistics.median(sum(r[k]["minflt"] for k in parts) for r in rs)
        table[name] = {"seconds": secs, "sum": sum(secs.values()), "faults": faults,
                       "peak": max(r["peak_rss_mb"] for r in rs)}
    base = table.get("default", next(iter(table.values())))["sum"]
    for name, t in table.items():
        print(f"| {name} | " + " | ".join(f"{t['seconds'][k]:.1f}" for k in parts)
              + f" | {t['sum']:.1f} | {base / t['sum']:.2f} | {t['faults'] / 1e3:.0f}k | {t['peak']} |")
    print(f"\nload average {os.getloadavg()[0]:.1f}")
    return table


if __name__ == "__main__":
    main()
