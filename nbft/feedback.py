"""Feedback from models: a model as the labeller of 04's preference pairs (RLAIF). (A model as 02's data filter is ``nbft.rating``.)

**The labeller** (``feedback``: ``LABELLERS``). 04 samples several replies per training prompt; ``rule`` (the default)
ranks them by ``rlhf.rule_score`` and ``rlhf.build_pairs`` makes the pairs. ``judge`` asks a model (a model spec or an
OpenAI-compatible endpoint, ``judge.asking``) about every two distinct replies of a prompt, given a written
``constitution`` (a list of rules) as its instructions, in BOTH orders; ``judge.combine`` keeps a verdict the two
orders agree on and makes the rest ties. ``reward_model`` scores every reply with a trained reward model
(``rlhf.reward_scores``). Either way the pairs are built as ``build_pairs`` builds them (``label``): per prompt, up to
``pairs_per_prompt`` decided comparisons, widest gap in the labeller's own scores first (the judge's: each reply's share
of its comparisons won; with ``judge_verdict: probability`` its mean preference over them), and the labeller's best
reply against template-broken copies of it (``rlhf.DEGRADE``), each kept only when the labeller prefers the original.
A tie makes no pair; ties are counted (``tie_share``), and so is the judge's position bias (of its answers that picked
a slot, the share that picked the first: 0.5 is none).
``pair_margin`` is in rule units: it applies to the rule only (a judge's verdict is its margin; for a reward model
any difference decides).

**Agreement with the rule** (``agreement``): of the comparisons the labeller decided where the two replies' rule scores
differ, the share whose winner has the higher rule score, with a bootstrap 95% interval (``scoring.summary``); 0.5 is
a coin. ``examples`` lists where they disagree. ``outcome`` compares what training on each set of pairs gives (the
same trainer, settings and seed; dpo_epochs passes over each set, so a set with more pairs trains more steps), judged by the rule on the held-out prompts with paired intervals (``scoring.compare``).

**As an online reward** (``reward_function``): the judge as a TRL reward function ``f(prompts, completions, **kw)``
for online DPO (``pairing="halves"``: TRL passes 2B prompts, sample i against sample i+B, the higher reward chosen,
ties to the first) or GRPO (``pairing="groups"``: each run of equal prompts, every two replies compared): a reply
scores its share of wins (a tie half), and a tie is broken by the rule score (``TIE_BREAK`` times the difference), so
the rule decides only what the judge leaves tied; ``stats`` counts the ties.
"""
from __future__ import annotations

import contextlib
import random
import time
from typing import Callable, Sequence

from . import files, judge as judging, models, rlhf, scoring, tasks, timing

#: who labels 04's preference pairs (``params.FEEDBACK`` copies the names)
LABELLERS = {
    "rule": "the programmatic rubric (rlhf.RULE): rlhf.build_pairs, as without this module",
    "judge": "a model asked which of two replies better follows the constitution, both orders (judge.asking)",
    "reward_model": "a trained reward model's score of each reply (feedback_reward_model)",
}
#: what a model labeller's pairs train (``feedback_trains``; ``params.FEEDBACK_TRAINS`` copies the names)
TRAINS = {
    "methods": "the reward model, every method row and online_dpo's reward (RLAIF: the labeller replaces the rule)",
    "comparison": "only the labeller-vs-rule comparison (the first offline row on each set of pairs); the rest "
                  "trains on the rule's pairs",
}
#: what each question to the labelling judge ends with
QUESTION = "Which reply better follows the rules? Answer with exactly one word: A, B or tie."
#: a judge's tie broken by the rule in the online reward: this times the rule-score difference (rule scores are 0..1,
#: so a broken tie stays within 0.5 +- 0.01 and never outranks a decided verdict)
TIE_BREAK = 0.01
#: the most disagreement examples kept in metrics.json
N_EXAMPLES = 8

#: ask(questions) -> one raw answer per question (``judge.Ask``)
Ask = judging.Ask


# ---------------------------------------------------------------- the judge's questions

def rubric(preamble: str, constitution: Sequence[str]) -> str:
    """The judge's system turn: ``preamble`` (``judge_rubric``) and the constitution's rules, numbered."""
    rules = "\n".join(f"{i}. {r}" for i, r in enumerate(constitution, 1))
    return f"{preamble}\n\nThe rules:\n{rules}" if rules else preamble


def question(rubric_text: str, prompt: str, first: str, second: str) -> list[dict]:
    """One labelling question: the rubric as the system turn; the prompt and both replies (``first`` in slot A)."""
    user = f"[Prompt]\n{prompt}\n\n[Reply A]\n{first}\n\n[Reply B]\n{second}\n\n{QUESTION}"
    return [{"role": "system", "content": rubric_text}, {"role": "user", "content": user}]


def judge_pairs(items: Sequence[tuple[str, str, str]], ask: Ask, rubric_text: str) -> dict:
    """Ask about each (prompt, a, b) in both orders (a in slot A, then b in slot A), in one call of ``ask``;
    ``judge.combine``'s result, its verdicts as "a", "b" or "tie"."""
    if not items:
        return {"verdicts": [], "position_bias": None, "self_agreement": None, "first_slot_probability": None,
                "answers": {"first": 0, "second": 0, "tie": 0, "unparsed": 0}, "raw": {}}
    firsts = [question(rubric_text, q, a, b) for q, a, b in items]
    seconds = [question(rubric_text, q, b, a) for q, a, b in items]
    answers = list(ask(firsts + seconds))
    if len(answers) != 2 * len(items):
        raise judging.JudgeError(f"judge: {len(answers)} answers to {2 * len(items)} questions")
    out = judging.combine(answers[:len(items)], answers[len(items):])
    out["verdicts"] = [{"after": "a", "before": "b"}.get(v, "tie") for v in out["verdicts"]]
    out.setdefault("first_slot_probability", None)
    return out


# ---------------------------------------------------------------- labelling sampled replies

def _distinct(replies: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(r for r in replies if r.strip()))


def _comparison(prompt: str, a: str, b: str, verdict: str, source: str) -> dict:
    return {"prompt": prompt, "a": a, "b": b, "verdict": verdict, "source": source,
            "rule_a": rlhf.rule_score(prompt, a), "rule_b": rlhf.rule_score(prompt, b)}


def _verdict(a: float, b: float) -> str:
    return "a" if a > b else "b" if b > a else "tie"


def _pair(c: dict, chosen_score: float | None, rejected_score: float | None) -> dict:
    """A decided comparison as a training pair (``build_pairs``' keys, the scores the labeller's; the rule's beside)."""
    won = c["verdict"] == "a"
    return dict(prompt=c["prompt"], chosen=c["a"] if won else c["b"], rejected=c["b"] if won else c["a"],
                chosen_score=chosen_score, rejected_score=rejected_score,
                chosen_rule=c["rule_a"] if won else c["rule_b"], rejected_rule=c["rule_b"] if won else c["rule_a"],
                source=c["source"])


def label(prompts: Sequence[str], samples: Sequence[Sequence[str]], *, ask: Ask | None = None,
          rubric_text: str = "", scores: Callable[[list[str], list[str]], list[float]] | None = None,
          templates: bool = True, pairs_per_prompt: int = 2, templates_per_prompt: int = 1, seed: int = 0,
          name: str = "") -> dict:
    """Preference pairs from ``samples`` (replies per prompt) labelled by a judge (``ask`` and its ``rubric_text``)
    or a reward model (``scores(prompts, replies)``), built as ``rlhf.build_pairs`` builds them from rule scores (see
    the module's doc). Returns {"labeller": ``name``, "pairs", "comparisons" (each: prompt, a, b, verdict a|b|tie,
    source, both rule scores), "judge" (``judge.combine``'s answer counts and position bias over every question; None
    for a reward model), "seconds"}: ``summary`` turns it into the figures."""
    if (ask is None) == (scores is None):
        raise ValueError("label: give either ask (a judge) or scores (a reward model)")
    start = time.perf_counter()
    rng = random.Random(seed)
    prompts = list(prompts)
    distinct = [_distinct(r) for r in samples]
    where = [(k, i, j) for k, rs in enumerate(distinct) for i in range(len(rs)) for j in range(i + 1, len(rs))]
    items = [(prompts[k], distinct[k][i], distinct[k][j]) for k, i, j in where]
    # the labeller's own score of every reply: a judge's share of its comparisons won (a tie half), a reward
    own = [[0.0] * len(rs) for rs in distinct]
    if ask is not None:
        asked = judge_pairs(items, ask, rubric_text)
        verdicts = asked["verdicts"]
        got = [[[] for _ in rs] for rs in distinct]
        # judge_verdict probability: each comparison's preference for a (both orders averaged), not only who won
        won = asked.get("preference") or [{"a": 1.0, "b": 0.0}.get(v, 0.5) for v in verdicts]
        for (k, i, j), x in zip(where, won):
            got[k][i].append(x)
            got[k][j].append(1.0 - x)
        own = [[sum(w) / len(w) if w else 0.5 for w in g] for g in got]
    else:
        flat = [(k, i) for k, rs in enumerate(distinct) for i in range(len(rs))]
        values = scores([prompts[k] for k, _ in flat], [distinct[k][i] for k, i in flat]) if flat else []
        for (k, i), v in zip(flat, values):
            own[k][i] = float(v)
        verdicts = [_verdict(own[k][i], own[k][j]) for k, i, j in where]
        asked = None
    comparisons = [_comparison(q, a, b, v, "samples") for (q, a, b), v in zip(items, verdicts)]
    pairs = []
    for k in range(len(prompts)):  # per prompt: the decided comparisons, the widest gap in the labeller's scores first
        mine = [(c, own[k][i], own[k][j]) for c, (kk, i, j) in zip(comparisons, where) if kk == k and c["verdict"] != "tie"]
        mine.sort(key=lambda x: -abs(x[1] - x[2]))  # stable: equal gaps keep the order asked
        pairs += [_pair(c, max(si, sj), min(si, sj)) for c, si, sj in mine[:pairs_per_prompt]]
    broken = []  # (prompt index, the labeller's best reply, its score, a broken copy, the template's name)
    if templates:
        for k, rs in enumerate(distinct):
            if not rs:
                continue
            b = max(range(len(rs)), key=lambda i: own[k][i])  # the first of the best on a tie
            for t in rng.sample(list(rlhf.DEGRADE), min(templates_per_prompt, len(rlhf.DEGRADE))):
                bad = tasks.with_answer(rs[b], rlhf.DEGRADE[t](tasks.answer_of(rs[b])))
                if bad.strip() and bad != rs[b]:
                    broken.append((k, rs[b], own[k][b], bad, t))
    if broken and ask is not None:
        more = judge_pairs([(prompts[k], good, bad) for k, good, _, bad, _ in broken], ask, rubric_text)
        tverdicts, bad_scores = more["verdicts"], [None] * len(broken)
        asked = _merge_counts(asked, more)
    elif broken:
        bad_scores = [float(s) for s in scores([prompts[k] for k, *_ in broken], [bad for *_, bad, _ in broken])]
        tverdicts = [_verdict(s_good, s_bad) for (_, _, s_good, _, _), s_bad in zip(broken, bad_scores)]
    else:
        tverdicts, bad_scores = [], []
    for (k, good, s_good, bad, t), v, s_bad in zip(broken, tverdicts, bad_scores):
        c = _comparison(prompts[k], good, bad, v, f"template:{t}")
        comparisons.append(c)
        if v == "a":
            pairs.append(_pair(c, s_good, s_bad))
    return {"labeller": name, "pairs": pairs, "comparisons": comparisons,
            "judge": None if asked is None else {k: asked[k] for k in ("position_bias", "answers",
                                                                        "first_slot_probability")},
            "seconds": time.perf_counter() - start}


def _merge_counts(a: dict, b: dict) -> dict:
    """Two ``judge_pairs`` results' answer counts together (the position bias recomputed from them)."""
    answers = {k: a["answers"][k] + b["answers"][k] for k in a["answers"]}
    picked = answers["first"] + answers["second"]
    na, nb = len(a["verdicts"]), len(b["verdicts"])
    pa, pb = a.get("first_slot_probability"), b.get("first_slot_probability")
    mean = (None if pa is None and pb is None else pa if pb is None else pb if pa is None else
            (pa * na + pb * nb) / (na + nb))
    return {"verdicts": a["verdicts"] + b["verdicts"], "answers": answers, "first_slot_probability": mean,
            "position_bias": answers["first"] / picked if picked else None}


# ---------------------------------------------------------------- the labeller, opened from the parameters

def describe(p) -> str:
    """The labeller as reports name it."""
    if p.feedback == "judge":
        return f"judge {judging.describe(p)}"
    if p.feedback == "reward_model":
        return f"reward model {files.relative(p.feedback_reward_model)}"
    return "rule"


def label_with(p, prompts: Sequence[str], samples: Sequence[Sequence[str]], *, device: str = "auto",
               precision: str = "fp32", batch_size: int = 16) -> dict:
    """``label`` with the labeller ``p.feedback`` names (04's parameters: the judge of ``JudgeArgs`` and the
    ``constitution``, or ``feedback_reward_model``), opened for the call and closed after it."""
    kw = dict(templates=p.template_pairs > 0, pairs_per_prompt=p.pairs_per_prompt,
              templates_per_prompt=p.template_pairs, seed=p.seed, name=describe(p))
    if p.feedback == "judge":
        with judging.asking(p, device, precision, batch_size) as ask:
            return label(prompts, samples, ask=ask, rubric_text=rubric(p.judge_rubric, p.constitution), **kw)
    if p.feedback == "reward_model":
        tokenizer = models.load_tokenizer(p.feedback_reward_model)
        rm = rlhf.load_reward_base(p.feedback_reward_model, tokenizer, device).eval()
        try:
            return label(prompts, samples, scores=lambda qs, rs: rlhf.reward_scores(rm, tokenizer, qs, rs,
                                                                                    precision=precision), **kw)
        finally:
            models.release(rm)
    raise ValueError(f"feedback: {p.feedback!r} labels with rlhf.build_pairs, not this module")


# ---------------------------------------------------------------- what the labels say

def agreement(comparisons: Sequence[dict], seed: int = 0) -> dict:
    """Of the decided comparisons whose rule scores differ, the share whose winner has the higher rule score:
    ``scoring.summary`` (mean, lo, hi, n_eval)."""
    hits = [float((c["rule_a"] > c["rule_b"]) == (c["verdict"] == "a")) for c in comparisons
            if c["verdict"] != "tie" and c["rule_a"] != c["rule_b"]]
    return scoring.summary(hits, seed)


def examples(comparisons: Sequence[dict], n: int = N_EXAMPLES) -> list[dict]:
    """Comparisons where the labeller and the rule pick different replies, the widest rule gap first."""
    out = [{"prompt": c["prompt"], "source": c["source"],
            "labeller_chose": c["a"] if c["verdict"] == "a" else c["b"],
            "rule_chose": c["a"] if c["rule_a"] > c["rule_b"] else c["b"],
            "rule_gap": abs(c["rule_a"] - c["rule_b"])}
           for c in comparisons if c["verdict"] != "tie" and c["rule_a"] != c["rule_b"]
           and (c["rule_a"] > c["rule_b"]) != (c["verdict"] == "a")]
    return sorted(out, key=lambda e: -e["rule_gap"])[:n]


def summary(labelled: dict, seed: int = 0) -> dict:
    """``label``'s result -> the figures 04 records under ``feedback`` (without the training outcome): labeller,
    n_pairs, comparisons decided and tied, tie_share, position_bias (a judge's; None for a reward model), the
    judge's answers, agreement_with_rule (with its interval, overall and by source), seconds."""
    comps = labelled["comparisons"]
    ties = sum(c["verdict"] == "tie" for c in comps)
    judged = labelled["judge"] or {}
    by_source = {}
    for kind in ("samples", "template"):
        mine = [c for c in comps if c["source"].startswith(kind)]
        if mine:
            by_source[kind] = agreement(mine, seed)
    return {"labeller": labelled["labeller"], "n_pairs": len(labelled["pairs"]),
            "n_comparisons": len(comps), "n_decided": len(comps) - ties, "n_ties": ties,
            "tie_share": ties / len(comps) if comps else None,
            "position_bias": judged.get("position_bias"), "answers": judged.get("answers"),
            "first_slot_probability": judged.get("first_slot_probability"),
            "agreement_with_rule": agreement(comps, seed), "agreement_by_source": by_source,
            "seconds": labelled["seconds"]}


def rows(s: dict) -> list[dict]:
    """``summary``'s figures as table rows, what each means beside it."""
    a = s["agreement_with_rule"]
    ci = "" if a["lo"] is None else f"[{a['lo']:.3f}, {a['hi']:.3f}]"
    out = [{"measure": "agreement with the rule", "value": a["mean"], "95% CI": ci,
            "meaning": f"of {a['n_eval']} decided comparisons whose rule scores differ, the share where the labeller "
                       "picked the reply the rule scores higher (0.5: a coin)"}]
    out += [{"measure": f"  on {k} comparisons", "value": v["mean"],
             "95% CI": "" if v["lo"] is None else f"[{v['lo']:.3f}, {v['hi']:.3f}]",
             "meaning": f"{v['n_eval']} comparisons" + (" (the best sample against a copy broken on purpose)"
                                                         if k == "template" else " (two sampled replies)")}
            for k, v in s["agreement_by_source"].items()]
    out.append({"measure": "tie share", "value": s["tie_share"], "95% CI": "",
                "meaning": f"{s['n_ties']} of {s['n_comparisons']} comparisons undecided: no pair made (a judge: the "
                           "two orders disagreed, or it said tie)"})
    if s["position_bias"] is not None or s["answers"]:
        ans = s["answers"] or {}
        out.append({"measure": "position bias", "value": s["position_bias"], "95% CI": "",
                    "meaning": f"of the answers that picked a reply, the share that picked slot A (0.5: none); "
                               f"{ans.get('unparsed', 0)} answers unparsed, {ans.get('tie', 0)} said tie"})
    if s.get("first_slot_probability") is not None:
        out.append({"measure": "probability on slot A", "value": s["first_slot_probability"], "95% CI": "",
                    "meaning": "the judge's mean probability of A against B (0.5: no position bias); judge_verdict "
                               "probability averages each comparison over the two orders, so every one is decided"})
    out.append({"measure": "pairs", "value": s["n_pairs"], "95% CI": "",
                "meaning": "training pairs the labeller made (decided comparisons, at most pairs_per_prompt a "
                           "prompt, plus template pairs)"})
    return out


# ---------------------------------------------------------------- what training on each gives

def outcome(heldout_prompts: Sequence[str], sft_scores: Sequence[float], arms: dict[str, Sequence[str]],
            seed: int = 0) -> dict:
    """The rule's verdict on each arm's held-out replies (``arms``: {"rule_labels": replies, "labeller_labels":
    replies}, one policy each, trained the same way on each set of pairs): per arm its rule score, win rate vs the
    SFT start, and the rule score against the start with a paired interval (``reply_metrics``); and
    ``labeller_vs_rule``: the labeller's arm against the rule's on the same prompts (paired interval)."""
    judged = {k: rlhf.judge(list(heldout_prompts), list(r)) for k, r in arms.items()}
    out = {}
    for k, j in judged.items():
        t = scoring.compare({"rule": list(sft_scores)}, {"rule": j["scores"]}, {"rule": True}, seed)
        out[k] = {"rule_score": j["rule_score"], "win_rate_vs_sft": rlhf.win_rate(j["scores"], list(sft_scores)),
                  "pass_rate": j["pass_rate"], "mean_words": j["mean_words"], "n_eval": len(j["scores"]),
                  "reply_metrics": scoring.recorded(t), "scores": j["scores"]}
    if {"rule_labels", "labeller_labels"} <= set(judged):
        out["labeller_vs_rule"] = scoring.recorded(scoring.compare(
            {"rule": judged["rule_labels"]["scores"]}, {"rule": judged["labeller_labels"]["scores"]},
            {"rule": True}, seed))
    return out


def outcome_rows(out: dict) -> list[dict]:
    """``outcome`` as table rows: each arm's rule score and win rate vs the SFT start, its change in rule score vs the
    start with the paired interval; then the labeller's arm against the rule's."""
    def ci(d: dict) -> str:
        return "" if d["lo"] is None else f"{d['mean']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]"

    rows = [{"trained on": {"rule_labels": "the rule's pairs", "labeller_labels": "the labeller's pairs"}[k],
             "rule score": v["rule_score"], "win rate vs SFT": v["win_rate_vs_sft"], "passes every check": v["pass_rate"],
             "change vs SFT [95% CI]": ci(v["reply_metrics"]["rule"]["diff"]), "mean words": v["mean_words"]}
            for k, v in out.items() if k in ("rule_labels", "labeller_labels")]
    if "labeller_vs_rule" in out:
        rows.append({"trained on": "labeller's minus rule's", "change vs SFT [95% CI]": "",
                     "rule score": out["labeller_vs_rule"]["rule"]["diff"]["mean"],
                     "win rate vs SFT": None, "passes every check": None, "mean words": None})
        rows[-1]["change vs SFT [95% CI]"] = "paired: " + ci(out["labeller_vs_rule"]["rule"]["diff"])
    return rows


def metrics(s: dict, trained: dict | None, labelled: dict | None = None) -> dict:
    """04's ``feedback`` record: ``summary``'s figures, the disagreement examples, and ``outcome``'s (its per-example
    scores left out), with ``findings``."""
    m = {**s, **({"examples": examples(labelled["comparisons"])} if labelled else {})}
    for k, v in (trained or {}).items():
        m[k] = {kk: vv for kk, vv in v.items() if kk != "scores"}
    m["findings"] = findings(m)
    return m


def findings(m: dict) -> list[str]:
    """Sentences from the feedback record's numbers, whichever way they go."""
    a = m["agreement_with_rule"]
    out = []
    if a["mean"] is None:
        out.append(f"The labeller ({m['labeller']}) decided no comparison whose rule scores differ "
                   f"({m['n_ties']} of {m['n_comparisons']} were ties): its agreement with the rule is unmeasured.")
    else:
        side = (("above a coin (0.5): it mostly prefers what the rule prefers" if a["mean"] >= 0.7 else
                 f"above a coin (0.5) but only just: {1 - a['mean']:.0%} of its decisions go against the rule")
                if a["lo"] > 0.5 else
                "below a coin (0.5): it mostly prefers what the rule rejects" if a["hi"] < 0.5 else
                "not distinguishable from a coin (0.5) on this many comparisons")
        out.append(f"The labeller ({m['labeller']}) agrees with the rule on {a['mean']:.0%} of {a['n_eval']} decided "
                   f"comparisons where the rule scores differ (95% CI {a['lo']:.0%} to {a['hi']:.0%}): {side}.")
    ties = m["tie_share"]
    out.append(f"{m['n_ties']} of {m['n_comparisons']} comparisons were ties and made no pair"
               + ("" if ties is None else f" (tie share {ties:.0%})") + f"; {m['n_pairs']} training pairs remain."
               + ("" if m.get("position_bias") is None else
                  f" Position bias {m['position_bias']:.2f} (the share of its picks that took slot A; 0.5: none).")
               + ("" if m.get("first_slot_probability") is None else
                  f" Its verdicts are its probabilities of A against B averaged over the two orders (judge_verdict "
                  f"probability; mean probability on slot A {m['first_slot_probability']:.2f}): a position bias "
                  f"cancels instead of turning every comparison into a tie."))
    vs = (m.get("labeller_vs_rule") or {}).get("rule")
    if vs and "rule_labels" in m and "labeller_labels" in m:
        r, j, d = m["rule_labels"], m["labeller_labels"], vs["diff"]
        clear = scoring.clear(d)
        out.append(f"DPO with the same settings trained on the labeller's {m['n_pairs']} pairs vs on the rule's "
                   f"(dpo_epochs passes over each set: more pairs, more steps), judged by the rule on "
                   f"{r['n_eval']} held-out prompts: rule score {j['rule_score']:.2f} vs {r['rule_score']:.2f} "
                   f"(win rate vs the SFT start {j['win_rate_vs_sft']:.2f} vs {r['win_rate_vs_sft']:.2f}); the change "
                   f"{d['mean']:+.3f} (95% CI {d['lo']:+.3f} to {d['hi']:+.3f}) "
                   + ("is larger than its interval: " + ("the labeller's pairs trained better by the rule." if
                                                         d["mean"] > 0 else "the rule's pairs trained better.")
                      if clear else "is within its interval: no difference shown."))
    return out


# ---------------------------------------------------------------- the judge as an online reward

def _prompt_text(prompt: str | list) -> str:
    """A TRL prompt (text, or chat messages) as the judge reads it: its last user turn."""
    if isinstance(prompt, str):
        return prompt
    return next((m["content"] for m in reversed(prompt) if m.get("role") == "user"), "")


def reward_function(ask: Ask, rubric_text: str, pairing: str = "halves") -> Callable[..., list[float]]:
    """The judge as a TRL reward function ``f(prompts, completions, **kw) -> list[float]`` (see the module's doc).
    ``pairing``: ``halves`` (online DPO: sample i against sample i + len/2) or ``groups`` (GRPO: every two replies of
    each run of equal prompts). ``f.stats``: comparisons, decided, ties, ties broken by the rule, the judge's answers."""
    if pairing not in ("halves", "groups"):
        raise ValueError(f"pairing: {pairing!r} is not halves or groups")
    stats = {"comparisons": 0, "decided": 0, "ties": 0, "ties_broken_by_rule": 0,
             "answers": {"first": 0, "second": 0, "tie": 0, "unparsed": 0}}

    def text(x) -> str:
        return x[-1]["content"] if isinstance(x, list) else x

    def judge(prompts, completions, **_) -> list[float]:
        qs, cs = [_prompt_text(q) for q in prompts], [text(c) for c in completions]
        if pairing == "halves":
            if len(qs) % 2:
                raise ValueError(f"judge reward: {len(qs)} completions; online DPO passes an even number (2 per prompt)")
            half = len(qs) // 2
            index = [(i, i + half) for i in range(half)]
        else:
            runs, start = [], 0
            for i in range(1, len(qs) + 1):
                if i == len(qs) or qs[i] != qs[start]:
                    runs.append(range(start, i))
                    start = i
            index = [(i, j) for r in runs for k, i in enumerate(r) for j in r[k + 1:]]
        with timing.section("scoring"):
            got = judge_pairs([(qs[i], cs[i], cs[j]) for i, j in index], ask, rubric_text) if index else None
        wins = [[] for _ in qs]
        for (i, j), v in zip(index, got["verdicts"] if got else []):
            if v == "tie":
                d = TIE_BREAK * (rlhf.rule_score(qs[i], cs[i]) - rlhf.rule_score(qs[j], cs[j]))
                stats["ties_broken_by_rule"] += d != 0
                wins[i].append(0.5 + d)
                wins[j].append(0.5 - d)
            else:
                wins[i].append(1.0 if v == "a" else 0.0)
                wins[j].append(0.0 if v == "a" else 1.0)
        stats["comparisons"] += len(index)
        ties = sum(v == "tie" for v in (got["verdicts"] if got else []))
        stats["ties"] += ties
        stats["decided"] += len(index) - ties
        for k in stats["answers"]:
            stats["answers"][k] += got["answers"][k] if got else 0
        return [sum(w) / len(w) if w else 0.5 for w in wins]

    judge.stats = stats
    return judge


@contextlib.contextmanager
def judge_reward(p, pairing: str = "halves", *, device: str = "auto", precision: str = "fp32", batch_size: int = 16):
    """``reward_function`` for the judge 04's parameters name (``judge`` with ``judge_rubric`` and the
    ``constitution``), the judge opened for the block (a local model loaded, an endpoint asked)::

        with feedback.judge_reward(p, device=run.device) as reward:
            trainer = OnlineDPOTrainer(..., reward_funcs=[reward], reward_processing_classes=[None])
    """
    with judging.asking(p, device, precision, batch_size) as ask:
        yield reward_function(ask, rubric(p.judge_rubric, p.constitution), pairing)


@contextlib.contextmanager
def online_rewards(p, *, device: str = "auto", precision: str = "fp32", batch_size: int = 16):
    """online_dpo's reward functions from the labeller ``p.feedback`` names, opened for the block: the rule
    (``rlhf.rule_reward``), the judge (``judge_reward``: both replies of a prompt compared, ties broken by the rule)
    or the reward model ``feedback_reward_model`` (a sequence classifier: TRL scores each reply with it). Nothing is
    opened when ``methods`` has no online_dpo row, or when ``feedback_trains`` is comparison (the rule then)."""
    if "online_dpo" not in p.methods or p.feedback == "rule" or p.feedback_trains == "comparison":
        yield [rlhf.rule_reward]
    elif p.feedback == "judge":
        with judge_reward(p, device=device, precision=precision, batch_size=batch_size) as reward:
            yield [reward]
    else:
        tokenizer = models.load_tokenizer(p.feedback_reward_model)
        rm = rlhf.load_reward_base(p.feedback_reward_model, tokenizer, device).eval()
        try:
            yield [rm]
        finally:
            models.release(rm)
