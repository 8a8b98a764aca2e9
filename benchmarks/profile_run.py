"""Per-stage time profile of finished runs, as the markdown table docs/measurements.md keeps.

    .venv/bin/python benchmarks/profile_run.py runs/<before> [runs/<after>]

Each stage of a run records ``profile`` in metrics.json (``nbft.timing``: seconds in model loading, training,
generation, scoring and the rest, measured inside the notebook's kernel); status.json has the stage's wall time
(kernel start and report export included). With two runs the table gives both and the ratio per stage.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

KINDS = ("loading", "training", "generation", "scoring", "other")


def stage_rows(run: Path) -> dict[str, dict]:
    """stage -> {"wall": seconds from status.json, **profile}; stages without a profile are left out."""
    metrics = json.loads((run / "metrics.json").read_text())
    wall = json.loads((run / "status.json").read_text()).get("seconds", {})
    return {stage: {"wall": wall.get(stage), **m["profile"]} for stage, m in metrics.items()
            if isinstance(m, dict) and isinstance(m.get("profile"), dict)}


def table(runs: list[Path]) -> str:
    data = [stage_rows(r) for r in runs]
    stages = sorted(set().union(*data))
    head = "| stage | " + " | ".join(f"{k} s" for k in KINDS) + " | stage s |"
    if len(runs) == 2:
        head += " before s | after/before |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    totals = [0.0] * len(runs)
    for stage in stages:
        last = data[-1].get(stage)
        if last is None:
            continue
        cells = [f"{last.get(k, 0):.0f}" for k in KINDS] + [f"{last['wall']:.0f}" if last["wall"] else "-"]
        for i, d in enumerate(data):
            totals[i] += (d.get(stage) or {}).get("wall") or 0
        if len(runs) == 2:
            first = data[0].get(stage)
            ratio = last["wall"] / first["wall"] if first and first.get("wall") and last.get("wall") else None
            cells += [f"{first['wall']:.0f}" if first and first.get("wall") else "-",
                      f"{ratio:.2f}" if ratio else "-"]
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    total = "| all | " + " | ".join("" for _ in KINDS) + f" | {totals[-1]:.0f} |"
    if len(runs) == 2:
        total += f" {totals[0]:.0f} | {totals[1] / totals[0]:.2f} |" if totals[0] else " - | - |"
    lines.append(total)
    return "\n".join(lines)


def main(argv=None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="one run folder, or two: before and after")
    args = ap.parse_args(argv)
    if len(args.runs) > 2:
        ap.error("give one run folder, or two (before, after)")
    out = table(args.runs)
    print(out)
    return out


if __name__ == "__main__":
    main()
