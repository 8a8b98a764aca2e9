"""A model as the filter of training data (02's filtered vs whole set, AlpaGasus/LIMA): rating examples.

Each training example (its prompt and the reply it trains) is rated 1-10 by the judge of ``params.JudgeArgs`` (a
model spec or an OpenAI-compatible endpoint, ``judge.asking``: one question per example, ``rating_question``; the
first number of the answer, ``parse_rating``; an answer without a number from 1 to 10 is counted as unparsed and ranks
below every parsed one, never dropped silently) or scored by a trained reward model (a sequence classifier with one
output, such as 04's ``artifacts/04_rlhf/reward_model``: ``reward_scores``; ``score_texts`` is the scoring 04's
``rlhf.reward_scores`` shares). ``select_top`` keeps the top fraction, ties broken by a seeded shuffle, so the same
seed keeps the same examples. (04's labeller of preference pairs, a model comparing two replies, is
``nbft.feedback``.)
"""
from __future__ import annotations

import json
import math
import random
import re
from pathlib import Path
from typing import Sequence

from . import data, evaluate, judge, models, params, timing


#: the rows of ``SFTParams.quality_filter`` other than none: what rates each training example
QUALITY_FILTERS = ("judge", "reward_model")
#: what each rating question ends with
RATING_QUESTION = "Rate the reply from 1 (useless) to 10 (excellent). Answer with one number only."
#: a reply longer than this is cut in the question (a runaway reply says what it is in its first characters)
RATING_REPLY_CHARS = 1500
#: phrases that name the scale rather than rate ("out of 10", "/10", "1 to 10", "1-10"): removed before parsing
_SCALE = re.compile(r"(?i)\bout\s+of\s+10\b|/\s*10\b|\b1\s*(?:to|-|–)\s*10\b")
_NUMBER = re.compile(r"(?<![\d.\-])\d+(?:\.\d+)?(?!\.?\d)")  # a full stop may follow: "4."
#: an answer that opens a numbered list ("1. The answer is correct."): its number is a list marker, not a rating
_LIST_ITEM = re.compile(r"^\s*\d+[.)]\s+\w")


def rating_question(rubric: str, prompt: str, reply: str) -> list[dict]:
    """One question to the judge: the rubric as the system turn; the example's prompt and reply (cut at
    ``RATING_REPLY_CHARS``) and ``RATING_QUESTION`` as the user turn."""
    shown = reply if len(reply) <= RATING_REPLY_CHARS else reply[:RATING_REPLY_CHARS] + " [...cut]"
    user = f"[Prompt]\n{prompt}\n\n[Reply]\n{shown}\n\n{RATING_QUESTION}"
    return [{"role": "system", "content": rubric}, {"role": "user", "content": user}]


def parse_rating(answer: str) -> float | None:
    """The rating in a judge's answer: its first number once the scale's own numbers ("out of 10", "/10", "1 to
    10") are set aside ("8", "Rating: 7/10", "**9**", "6.5"); None when that number is missing or outside 1..10, or
    when the answer opens a numbered list ("1. The answer is correct.": a small model's usual answer, no rating)."""
    if _LIST_ITEM.match(answer or ""):
        return None
    m = _NUMBER.search(_SCALE.sub(" ", answer or ""))
    if m is None:
        return None
    x = float(m.group())
    return x if 1 <= x <= 10 else None


def rate(records: Sequence[dict], ask: judge.Ask, rubric: str) -> dict:
    """Ask ``ask`` to rate every record (its prompt: ``judge.prompt_of``; its reply: ``data.reply_of``). Returns {"scores": the ratings (None: unparsed), "unparsed": how many, "raw": the answers (200
    characters each)}."""
    questions = [rating_question(rubric, judge.prompt_of(r), data.reply_of(r)) for r in records]
    answers = list(ask(questions)) if questions else []
    if len(answers) != len(questions):
        raise judge.JudgeError(f"judge: {len(answers)} answers to {len(questions)} rating questions")
    scores = [parse_rating(a) for a in answers]
    return {"scores": scores, "unparsed": sum(s is None for s in scores), "raw": [a[:200] for a in answers]}


def judge_ratings(a: params.JudgeArgs, records: Sequence[dict], rubric: str, *, device: str = "auto",
                  precision: str = "fp32", batch_size: int = 16) -> dict:
    """``rate`` with the judge ``a.judge`` names (``judge.asking``), with "rater" (``judge.describe``) added."""
    with judge.asking(a, device, precision, batch_size, verdict="answer") as ask:  # a rating is a number, read from the answer
        out = rate(records, ask, rubric)
    return {"rater": judge.describe(a), **out}


def score_texts(rm, tokenizer, texts: Sequence[str], batch_size: int = 32, precision: str = "fp32") -> list[float]:
    """A reward model's (one-output sequence classifier's) score of each text, already templated (length-sorted
    batches, ``evaluate.batched``; at most 512 tokens)."""
    if not texts:
        return []
    out = evaluate.batched(rm, tokenizer, list(texts), lambda m, enc: m(**enc).logits[:, :1], precision, batch_size,
                           add_special_tokens=False, truncation=True, max_length=512)
    return out[:, 0].tolist()


def reward_scores(rm, tokenizer, records: Sequence[dict], batch_size: int = 32, precision: str = "fp32") -> list[float]:
    """A reward model's score of each record's whole conversation (its prompt turns and the reply it trains), the
    chat template applied as 04's reward model was trained (``rlhf.reward_scores``' reading; a record without
    messages: its prompt + completion text)."""
    texts = [tokenizer.apply_chat_template(r["messages"], tokenize=False) if r.get("messages")
             else r.get("prompt", "") + r.get("completion", "") for r in records]
    return score_texts(rm, tokenizer, texts, batch_size, precision)


def reward_ratings(folder: str, records: Sequence[dict], *, device: str = "auto", precision: str = "fp32",
                   batch_size: int = 32) -> dict:
    """``reward_scores`` of the reward model saved in ``folder`` (loaded for the call, with its own tokenizer), in
    ``rate``'s form (a reward model always answers: unparsed 0)."""
    tokenizer = models.load_tokenizer(folder)
    rm = models.load_classifier(folder, tokenizer, 1, device)
    try:
        with timing.section("scoring"):
            scores = reward_scores(rm, tokenizer, records, batch_size, precision)
    finally:
        models.release(rm)
    return {"rater": f"reward model {folder}", "scores": scores, "unparsed": 0, "raw": []}


def select_top(scores: Sequence[float | None], keep: float, seed: int = 0) -> list[int]:
    """Indices (in their original order) of the top ``keep`` fraction of ``scores`` (at least one, round half up):
    highest first, an unparsed rating (None) below every number, ties broken by a shuffle seeded with ``seed``."""
    n = len(scores)
    if not n:
        return []
    k = min(n, max(1, math.floor(keep * n + 0.5)))
    order = list(range(n))
    random.Random(seed).shuffle(order)
    order.sort(key=lambda i: math.inf if scores[i] is None else -scores[i])  # stable: ties keep the shuffled order
    return sorted(order[:k])


def separation(scores: Sequence[float | None], clean: Sequence[bool]) -> float | None:
    """How well the scores tell clean examples from noisy ones: the chance that a clean example drawn at random
    scores above a noisy one (a tie counts half; an unparsed rating is below every number), the ROC AUC. 0.5:
    no better than chance; None without both kinds."""
    key = [-math.inf if s is None else s for s in scores]
    good = [k for k, c in zip(key, clean) if c]
    bad = [k for k, c in zip(key, clean) if not c]
    if not good or not bad:
        return None
    wins = sum((g > b) + 0.5 * (g == b) for g in good for b in bad)
    return wins / (len(good) * len(bad))


def check_reward_model(folder: str, where: str = "quality_reward_model") -> None:
    """Preflight: ``folder`` is a reward model, a sequence classifier saved with ``save_pretrained`` or as nbft's
    adapter (04's ``artifacts/04_rlhf/reward_model``). Raises ParamError naming ``where``."""
    hint = "(a reward model folder, such as runs/<run>/artifacts/04_rlhf/reward_model)"
    if not folder:
        raise params.ParamError(f"{where}: empty; quality_filter reward_model needs a folder {hint}")
    path = Path(folder).expanduser()
    problem = models.folder_problem(path)
    if problem:
        raise params.ParamError(f"{where}: {params.show(folder)} {problem} {hint}")
    try:
        if (path / "adapter_config.json").is_file():
            kind = str(json.loads((path / "adapter_config.json").read_text()).get("task_type", ""))
            ok = kind.endswith("SEQ_CLS")
        else:
            config = json.loads((path / "config.json").read_text())
            kind = str((config.get("architectures") or [""])[0])
            ok = kind.endswith("ForSequenceClassification") and len(config.get("id2label") or {0: ""}) == 1
    except (OSError, ValueError, AttributeError) as e:
        raise params.ParamError(f"{where}: {params.show(folder)}: its config cannot be read ({e})") from None
    if not ok:
        raise params.ParamError(f"{where}: {params.show(folder)} is {kind or 'no classifier'}, not a reward model "
                                f"(a sequence classifier with one output) {hint}")
