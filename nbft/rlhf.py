"""RLHF: a programmatic judge, preference pairs, a reward model, online RL against it, and DPO.

The InstructGPT recipe at lab scale, thin over TRL:

| step              | here                                                   | TRL                        |
|-------------------|--------------------------------------------------------|----------------------------|
| target behaviour  | ``RULE``: a rubric of checks a program scores (0..1)   | -                          |
| preference pairs  | the policy's own samples ranked by the rule, plus      | -                          |
|                   | rejected variants made by templates; or user JSONL     |                            |
| reward model      | sequence-classification head on the starting policy    | ``RewardTrainer``          |
| online RL         | GRPO or RLOO, reward = the reward model, KL to the     | ``GRPOTrainer`` /          |
|                   | reference (the starting policy)                        | ``RLOOTrainer``            |
| RL-free path      | DPO (or IPO, or KTO on the pairs split into singles)   | ``DPOTrainer``/``KTOTrainer`` |

The rule is the judge. By default training never sees it: the reward model learns it from
ranked pairs, RL optimizes the reward model, and the rule scores held-out prompts at the end.
(``rule_reward_weight > 0`` adds the rule as a second reward in RL; then the rule is no longer
an unseen judge, and the notebook says so.)

The behaviour the rule asks for: **a concise, complete, plain-prose answer on the topic of the
question** — one or two sentences (5 to 30 words) that end properly, start with a capital, are
words rather than numbers or symbols, contain no markdown list or code, do not repeat themselves,
and mention something from the question. When a reply is a JSON object with an ``answer`` field
(the format the SFT stage teaches on the demo data) the rule reads that field (``tasks.answer_of``, the
parser every stage uses): the format stays, the content is judged.
"""
from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Callable

import torch

from . import data, evaluate, files, judge as judging, models, params, scoring, tasks, train
from .tasks import answer_of
from .train import lora_config, trainer_args

#: The lines the written findings draw (recorded as ``thresholds`` in metrics.json).
THRESHOLDS = {
    "rm_accuracy": 0.85,   # held-out pairs ranked like the rule: the reward model's bar
    "win": 0.5,            # win rate above this: a policy "beats" the SFT start
    "longer": 1.5,         # mean answer words above this times the SFT start's: "longer" (a hacking sign)
    "repetitive": 0.9,     # distinct word trigrams below this share: "repetitive" (a hacking sign)
}

# ---------------------------------------------------------------- the rule (the judge)

_STOP = set("""a an the and or but if of to in on at by for with about from into over under is are was were be been
being do does did doing have has had what which who whom whose why how when where this that these those it its i me my
you your we our they them their he she his her can could should would will shall may might must one some any give tell
explain describe name please short sentence word words good best very much many more most use used using get make
thing things""".split())


def _words(s: str) -> list[str]:
    return re.findall(r"\S+", s)


def _content(s: str) -> set[str]:
    return {w[:5] for w in re.findall(r"[a-z]+", s.lower()) if len(w) >= 4 and w not in _STOP}


def distinct_trigrams(text: str) -> float:
    """Share of distinct word trigrams (1.0 for fewer than three words)."""
    w = [x.lower() for x in _words(text)]
    grams = [tuple(w[i:i + 3]) for i in range(len(w) - 2)]
    return len(set(grams)) / len(grams) if grams else 1.0


def _check_complete(prompt: str, reply: str, ans: str) -> float:
    """Ends like a finished sentence (not cut off); a JSON reply must parse."""
    if reply.strip().startswith("{"):
        try:
            json.loads(reply.strip())
        except json.JSONDecodeError:
            return 0.0
    return 1.0 if re.search(r"[.!?][\"')\]]*$", ans) else 0.0


def _check_length(prompt: str, reply: str, ans: str) -> float:
    """5 to 30 words: 1; shorter: words/5; longer: falls to 0 at 60 words."""
    n = len(_words(ans))
    if n < 5:
        return n / 5
    return 1.0 if n <= 30 else max(0.0, 1 - (n - 30) / 30)


def _check_prose(prompt: str, reply: str, ans: str) -> float:
    """Words, not numbers or symbols (>= 80% alphabetic tokens), and starts with a capital letter."""
    toks = _words(ans)
    if not toks:
        return 0.0
    alpha = sum(bool(re.fullmatch(r"[\"'(]*[A-Za-z][A-Za-z'’-]*[.,;:!?\"')]*", t)) for t in toks) / len(toks)
    return min(1.0, alpha / 0.8) * (1.0 if ans[0].isupper() else 0.5)


def _check_plain(prompt: str, reply: str, ans: str) -> float:
    """No markdown: no list or heading lines, no bold, no code fences."""
    if re.search(r"(^|\n)\s*([-*#>]|\d+[.)])\s", ans) or "**" in ans or "```" in ans:
        return 0.0
    return 1.0


def _check_no_repeat(prompt: str, reply: str, ans: str) -> float:
    """Distinct word trigrams: 1 at >= 90%, else that share."""
    ratio = distinct_trigrams(ans)
    return 1.0 if ratio >= 0.9 else ratio


def _check_on_topic(prompt: str, reply: str, ans: str) -> float:
    """Mentions a content word of the question (first five letters match)."""
    return 1.0 if _content(prompt) & _content(ans) else 0.0


#: the rubric: name -> check(prompt, reply, answer_text) -> 0..1. The rule score is their mean.
RULE: dict[str, Callable[[str, str, str], float]] = {
    "complete": _check_complete,
    "length": _check_length,
    "prose": _check_prose,
    "plain": _check_plain,
    "no_repeat": _check_no_repeat,
    "on_topic": _check_on_topic,
}


def rule_checks(prompt: str, reply: str) -> dict[str, float]:
    ans = answer_of(reply)
    return {name: float(check(prompt, reply, ans)) for name, check in RULE.items()}


def rule_score(prompt: str, reply: str) -> float:
    """The judge: mean of the rubric's checks, 0..1 (1: every check passes)."""
    checks = rule_checks(prompt, reply)
    return sum(checks.values()) / len(checks)


def rule_reward(prompts, completions, **_) -> list[float]:
    """The rule as a TRL reward function (conversational or plain prompts)."""
    def text(x):
        return x[-1]["content"] if isinstance(x, list) else x
    return [rule_score(text(p), text(c)) for p, c in zip(prompts, completions)]


def describe_rule() -> list[dict]:
    return [{"check": name, "asks for": (fn.__doc__ or "").strip()} for name, fn in RULE.items()]


# ---------------------------------------------------------------- prompts

_THINGS = ["a volcano", "a rainbow", "a bicycle", "a compass", "photosynthesis", "a thermometer", "the moon",
           "a library", "a bridge", "a battery", "a telescope", "a glacier", "a desert", "bread", "cheese", "a piano",
           "an umbrella", "a lighthouse", "a microscope", "a windmill", "a calendar", "a museum", "an orchestra",
           "a passport", "a vaccine", "a magnet", "a satellite", "a recipe", "a forest", "an island", "a river",
           "a hospital", "a newspaper", "a camera", "a clock", "a map", "a harbour", "a castle", "a farm", "a pencil",
           "a kettle", "a tent", "a helmet", "a ladder", "a candle", "a mirror", "a tunnel", "a dictionary",
           "an airport", "a garden", "a fountain", "a violin", "a printer", "a thunderstorm", "an earthquake",
           "a comet", "a coral reef", "a beehive", "a train", "a submarine"]
_ANIMALS = ["cats", "dogs", "bees", "whales", "owls", "penguins", "horses", "frogs", "ants", "dolphins", "eagles",
            "elephants", "rabbits", "bats", "turtles", "wolves"]
_ACTIVITIES = ["sleeping better", "learning a language", "saving money", "running", "cooking rice", "studying",
               "public speaking", "gardening", "writing an email", "reading more books", "drinking enough water",
               "learning to swim", "keeping a plant alive", "packing for a trip", "taking notes", "staying focused"]
_TEMPLATES = {
    "thing": ["What is {x}?", "Explain what {x} is.", "What is {x} used for?", "How does {x} work?",
              "Why do people need {x}?", "Tell me about {x}."],
    "animal": ["Why do {x} live in groups?", "What do {x} eat?", "Where do {x} live?", "Tell me something about {x}."],
    "activity": ["Give me one tip for {x}.", "How can I get better at {x}?", "Why is {x} worth the effort?",
                 "What is the first step in {x}?"],
}


def rlhf_prompts(seed: int = 0, heldout_fraction: float = 0.25) -> dict[str, list[str]]:
    """Built-in prompts, split by topic: held-out prompts ask about topics no training prompt mentions."""
    rng = random.Random(seed)
    out = {"train": [], "heldout": []}
    for kind, topics in (("thing", _THINGS), ("animal", _ANIMALS), ("activity", _ACTIVITIES)):
        topics = list(topics)
        rng.shuffle(topics)
        n_held = max(1, round(len(topics) * heldout_fraction))
        for i, x in enumerate(topics):
            part = "heldout" if i < n_held else "train"
            for t in rng.sample(_TEMPLATES[kind], 2):  # two phrasings per topic
                out[part].append(t.format(x=x))
    for part in out:
        rng.shuffle(out[part])
    return out


# ---------------------------------------------------------------- preference pairs

def _messages(prompt: str | list) -> list[dict]:
    return prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]


def _user_text(prompt: str | list) -> str:
    return next((m["content"] for m in reversed(_messages(prompt)) if m["role"] == "user"), "")


def sample_replies(model, tokenizer, prompts: list[str], n: int, max_new_tokens: int = 48, temperature: float = 1.0,
                   precision: str = "fp32", batch_size: int = 32, seed: int = 0) -> list[list[str]]:
    """``n`` sampled replies per prompt (chat template), in batches."""
    rendered = [data.render_prompt(_messages(p), tokenizer) for p in prompts]
    flat = evaluate.generate(model, tokenizer, [r for r in rendered for _ in range(n)], max_new_tokens=max_new_tokens,
                             batch_size=batch_size, precision=precision, do_sample=True, temperature=temperature,
                             top_k=0, seed=seed)
    return [flat[i * n:(i + 1) * n] for i in range(len(prompts))]


def _truncate(ans: str) -> str:
    w = _words(ans)
    return " ".join(w[: max(1, (2 * len(w)) // 3)]).rstrip(".!?") if len(w) > 2 else ans.rstrip(".!?")


#: template variants that break one check each: name -> answer -> worse answer.
DEGRADE: dict[str, Callable[[str], str]] = {
    "truncated": _truncate,
    "repeated": lambda a: " ".join([a] * 3),
    "markdown_list": lambda a: "Here are the key points:\n- " + "\n- ".join(s.strip() for s in re.split(r"(?<=[.!?])\s+", a) if s.strip()),
    "rambling": lambda a: a + " " + "It is also worth saying that there is a lot more to it, and many people have "
                         "different opinions about it, so it depends on many things and on who you ask, really.",
    "bare": lambda a: (_words(a) or ["ok"])[-1].strip(".!?").lower(),
}


def build_pairs(prompts: list[str], samples: list[list[str]], margin: float = 0.15, templates: bool = True,
                seed: int = 0, pairs_per_prompt: int = 3, templates_per_prompt: int = 2) -> list[dict]:
    """Preference pairs from sampled replies ranked by the rule, plus template-degraded rejections.

    From samples: per prompt, up to ``pairs_per_prompt`` pairs of distinct replies whose rule scores
    differ by at least ``margin``, widest gaps first (the best against the worst comes first). From
    templates: the best reply against up to ``templates_per_prompt`` copies of it broken in one way each
    (cut off, repeated, turned into a markdown list, padded with filler, reduced to one word), when the
    copy scores at least ``margin`` lower. Each pair: prompt, chosen, rejected, both scores, source.
    """
    rng = random.Random(seed)
    pairs = []
    for prompt, replies in zip(prompts, samples):
        uniq = list(dict.fromkeys(r for r in replies if r.strip()))
        scored = sorted(((rule_score(prompt, r), r) for r in uniq), key=lambda x: -x[0])
        if not scored:
            continue
        cands = [(hi, lo) for i, hi in enumerate(scored) for lo in scored[i + 1:] if hi[0] - lo[0] >= margin]
        cands.sort(key=lambda c: -(c[0][0] - c[1][0]))
        for (s_hi, good), (s_lo, bad) in cands[:pairs_per_prompt]:
            pairs.append(dict(prompt=prompt, chosen=good, rejected=bad, chosen_score=s_hi, rejected_score=s_lo,
                              source="samples"))
        if templates:
            s_hi, best = scored[0]
            for name in rng.sample(list(DEGRADE), min(templates_per_prompt, len(DEGRADE))):
                bad = tasks.with_answer(best, DEGRADE[name](answer_of(best)))
                s_bad = rule_score(prompt, bad)
                if s_hi - s_bad >= margin:
                    pairs.append(dict(prompt=prompt, chosen=best, rejected=bad, chosen_score=s_hi,
                                      rejected_score=s_bad, source=f"template:{name}"))
    return pairs


def load_pairs(path: str | Path) -> list[dict]:
    """User preference pairs: JSONL with ``prompt``, ``chosen``, ``rejected``.

    Each field is a string, or chat messages (a list of {role, content}); a conversational
    ``chosen``/``rejected`` is the assistant turn(s). Errors name the file, line and field.
    """
    pairs = []
    for where, rec in data.read_file(path):
        for key in ("prompt", "chosen", "rejected"):
            if key not in rec:
                raise data.DataError(f"{where}: missing field '{key}' (preference pairs need prompt, chosen, rejected)")
            v = rec[key]
            if isinstance(v, list):
                msgs = data.check_messages(v, where, key)
                want = "user" if key == "prompt" else "assistant"
                if msgs[-1]["role"] != want:
                    raise data.DataError(f"{where}: field '{key}': the last message must be the {want}'s "
                                         f"(got role {msgs[-1]['role']!r})")
            elif not isinstance(v, str) or not v.strip():
                raise data.DataError(f"{where}: field '{key}' must be a non-empty string or a list of messages")
        prompt = rec["prompt"] if isinstance(rec["prompt"], str) else rec["prompt"]
        text = lambda v: v if isinstance(v, str) else v[-1]["content"]
        if text(rec["chosen"]).strip() == text(rec["rejected"]).strip():
            raise data.DataError(f"{where}: 'chosen' and 'rejected' are the same reply; a pair needs two different ones")
        pairs.append(dict(prompt=prompt, chosen=text(rec["chosen"]), rejected=text(rec["rejected"]),
                          chosen_score=rule_score(_user_text(prompt), text(rec["chosen"])),
                          rejected_score=rule_score(_user_text(prompt), text(rec["rejected"])),
                          source=where.replace(str(Path(path)), files.relative(path), 1)))
    if not pairs:
        raise data.DataError(f"{path}: no preference pairs")
    return pairs


def to_preference_dataset(pairs: list[dict]):
    """Pairs -> TRL's conversational preference form (prompt messages, chosen/rejected assistant turns)."""
    import datasets

    return datasets.Dataset.from_list([
        {"prompt": _messages(p["prompt"]), "chosen": [{"role": "assistant", "content": p["chosen"]}],
         "rejected": [{"role": "assistant", "content": p["rejected"]}]} for p in pairs])


def to_unpaired_dataset(pairs: list[dict]):
    """Pairs -> KTO's unpaired form: each chosen reply labelled desirable, each rejected undesirable."""
    import datasets

    rows = []
    for p in pairs:
        rows.append({"prompt": _messages(p["prompt"]), "completion": [{"role": "assistant", "content": p["chosen"]}],
                     "label": True})
        rows.append({"prompt": _messages(p["prompt"]), "completion": [{"role": "assistant", "content": p["rejected"]}],
                     "label": False})
    return datasets.Dataset.from_list(rows)


# ---------------------------------------------------------------- reward model

def load_reward_base(folder: str | Path, tokenizer, device: str = "cpu"):
    """A sequence-classification model (one output: the reward) on top of a causal LM folder."""
    return models.load_classifier(folder, tokenizer, 1, device)


def reward_model_problem(folder: str | Path) -> str:
    """What keeps ``folder`` from being a trained reward model (a sequence classifier with one output: 04's
    ``reward_model`` adapter, or a whole saved one), in words; "" when nothing does."""
    path = Path(folder)
    problem = models.folder_problem(path)
    if problem:
        return problem
    if (path / "adapter_config.json").is_file():
        task = str(json.loads(files.read_text(path / "adapter_config.json")).get("task_type"))
        return "" if task.endswith("SEQ_CLS") else (f"is an adapter for {task}, not a reward model (a SEQ_CLS adapter "
                                                    "with its head, as 04 saves reward_model)")
    config = json.loads(files.read_text(path / "config.json"))
    if not any(str(a).endswith("ForSequenceClassification") for a in config.get("architectures") or []) \
            or len(config.get("id2label") or {0: ""}) != 1:
        return "is a model folder but not a reward model (a sequence classifier with one output, as 04 saves)"
    return ""


def train_reward_model(model, tokenizer, pairs: list[dict], p, callbacks=(), save_to: str | Path | None = None,
                       base: str | None = None) -> train.TrainResult:
    """TRL RewardTrainer (Bradley-Terry loss on chosen vs rejected), LoRA + head or every weight; the result's model
    is a plain scorer (a LoRA adapter merged in). ``save_to``: the trained reward model is saved there first
    (``save_policy``: with LoRA the adapter and head on ``base``, the spec ``model`` was loaded from)."""
    import datasets
    from trl import RewardConfig, RewardTrainer

    if not pairs:
        raise ValueError("no training pairs for the reward model: lower pair_margin, sample more replies per prompt, "
                         "or give a preferences file")
    datasets.disable_progress_bars()
    with train.scratch_dir() as tmp:
        def build():
            args = RewardConfig(**trainer_args(
                p, tmp, learning_rate=p.rm_learning_rate, num_train_epochs=p.rm_epochs,
                per_device_train_batch_size=p.rm_batch_size, max_length=p.max_length, center_rewards_coefficient=0.01))
            return RewardTrainer(model=model, args=args, train_dataset=to_preference_dataset(pairs),
                                 processing_class=tokenizer, callbacks=list(callbacks),
                                 peft_config=lora_config(p, "SEQ_CLS") if p.rm_scope == "lora" else None)
        out = train.fit(build)
    if save_to is not None:
        save_policy(out.model, tokenizer, save_to, base)
    if hasattr(out.model, "merge_and_unload"):  # a scorer from here on: fold the adapter in (no per-call LoRA cost)
        out.model = out.model.merge_and_unload().eval()
    return out


def reward_scores(rm, tokenizer, prompts: list, replies: list[str], batch_size: int = 64,
                  precision: str = "fp32") -> list[float]:
    """The reward model's score of each (prompt, reply), with the chat template as in training (length-sorted
    batches, ``evaluate.batched``)."""
    texts = [tokenizer.apply_chat_template(_messages(pr) + [{"role": "assistant", "content": r}], tokenize=False)
             for pr, r in zip(prompts, replies)]
    if not texts:
        return []
    out = evaluate.batched(rm, tokenizer, texts, lambda m, enc: m(**enc).logits[:, :1], precision, batch_size,
                           add_special_tokens=False, truncation=True, max_length=512)
    return out[:, 0].tolist()


def pair_accuracy(rm, tokenizer, pairs: list[dict], precision: str = "fp32") -> tuple[float, list[float], list[float]]:
    """Share of pairs the reward model ranks like the rule (chosen above rejected); and both score lists."""
    prompts = [q["prompt"] for q in pairs]
    replies = [q["chosen"] for q in pairs] + [q["rejected"] for q in pairs]
    scored = reward_scores(rm, tokenizer, prompts + prompts, replies, precision=precision)  # both in one pass
    chosen, rejected = scored[:len(pairs)], scored[len(pairs):]
    acc = sum(c > r for c, r in zip(chosen, rejected)) / max(1, len(pairs))
    return acc, chosen, rejected


# ---------------------------------------------------------------- online RL (GRPO / RLOO)

RL_ALGOS = ("grpo", "rloo")


def train_rl(policy, tokenizer, prompts: list[str], reward_model, p, callbacks=()) -> train.TrainResult:
    """GRPO or RLOO against the reward model, KL penalty ``beta`` to the reference.

    With LoRA (``policy_scope='lora'``) the reference is the same model with the adapter switched
    off; with ``full`` TRL reloads it from the policy's folder (``config._name_or_path``).
    """
    import datasets

    if p.rl_algo not in RL_ALGOS:
        raise ValueError(f"rl_algo: {p.rl_algo!r} is not one of {', '.join(RL_ALGOS)}")
    if p.rl_algo == "grpo":
        from trl import GRPOConfig as Config, GRPOTrainer as Trainer
    else:
        from trl import RLOOConfig as Config, RLOOTrainer as Trainer
    datasets.disable_progress_bars()
    if models.pick_precision(p.precision, models.pick_device(p.device)) == "bf16":
        reward_model.to(torch.bfloat16)  # in place: it scores every sampled reply; bf16 matmuls are ~4x faster on CPU
    reward_funcs: list = [reward_model]
    processing = [tokenizer]
    weights = [1.0]
    if p.rule_reward_weight > 0:
        reward_funcs.append(rule_reward)
        processing.append(None)
        weights.append(p.rule_reward_weight)
    with train.scratch_dir() as tmp:
        dataset = datasets.Dataset.from_list([{"prompt": _messages(q)} for q in prompts])
        peft_config = lora_config(p) if p.policy_scope == "lora" else None

        def build():
            args = Config(**trainer_args(
                p, tmp, learning_rate=p.rl_learning_rate, max_steps=p.rl_steps,
                per_device_train_batch_size=p.rl_prompts_per_step * p.num_generations,
                num_generations=p.num_generations, max_completion_length=p.max_new_tokens, temperature=p.temperature,
                top_k=0, beta=p.kl_beta, reward_weights=weights, steps_per_generation=1, num_iterations=1,
                log_completions=False, shuffle_dataset=True))
            return Trainer(model=train.bf16_frozen_base(policy, p, peft_config), reward_funcs=reward_funcs, args=args,
                           train_dataset=dataset, processing_class=tokenizer, reward_processing_classes=processing,
                           callbacks=list(callbacks), peft_config=peft_config)
        return train.fit(build)


# ---------------------------------------------------------------- DPO and friends

PREFERENCE_LOSSES = ("dpo", "ipo", "kto")


def train_preference(policy, tokenizer, pairs: list[dict], p, callbacks=()) -> train.TrainResult:
    """The RL-free path: DPO (sigmoid loss), IPO, or KTO (pairs split into desirable/undesirable singles)."""
    import datasets

    if p.preference_loss not in PREFERENCE_LOSSES:
        raise ValueError(f"preference_loss: {p.preference_loss!r} is not one of {', '.join(PREFERENCE_LOSSES)}")
    datasets.disable_progress_bars()
    peft_config = lora_config(p) if p.policy_scope == "lora" else None
    train.bf16_frozen_base(policy, p, peft_config)
    with train.scratch_dir() as tmp:
        common = trainer_args(p, tmp, learning_rate=p.dpo_learning_rate, num_train_epochs=p.dpo_epochs,
                              per_device_train_batch_size=p.dpo_batch_size, max_length=p.max_length, beta=p.dpo_beta)

        def build():
            if p.preference_loss == "kto":
                from trl import KTOConfig, KTOTrainer

                return KTOTrainer(model=policy, args=KTOConfig(**common), train_dataset=to_unpaired_dataset(pairs),
                                  processing_class=tokenizer, callbacks=list(callbacks), peft_config=peft_config)
            from trl import DPOConfig, DPOTrainer

            loss = {"dpo": "sigmoid", "ipo": "ipo"}[p.preference_loss]
            return DPOTrainer(model=policy, args=DPOConfig(**common, loss_type=[loss]),
                              train_dataset=to_preference_dataset(pairs), processing_class=tokenizer,
                              callbacks=list(callbacks), peft_config=peft_config)
        return train.fit(build)


# ---------------------------------------------------------------- evaluation by the judge

def judge(prompts: list[str], replies: list[str]) -> dict:
    """Rule scores, per-check pass rates, and reward-hacking signals (length, repetition)."""
    checks = [rule_checks(q, r) for q, r in zip(prompts, replies)]
    scores = [sum(c.values()) / len(c) for c in checks]
    n = max(1, len(replies))
    return {
        "rule_score": sum(scores) / n,
        "scores": scores,
        "pass_rate": sum(s == 1.0 for s in scores) / n,
        "checks": {k: sum(c[k] for c in checks) / n for k in RULE},
        "mean_words": sum(len(_words(answer_of(r))) for r in replies) / n,
        "distinct_trigrams": sum(distinct_trigrams(r) for r in replies) / n,
    }


def win_rate(scores: list[float], baseline: list[float]) -> float:
    """Share of prompts where a policy's reply scores above the baseline's (ties count half)."""
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(scores, baseline))
    return wins / max(1, len(scores))


def summary_rows(judged: dict[str, dict], baseline: str = "sft") -> list[dict]:
    """One row per policy: rule score with CI, pass rate, reward-model mean, win rate vs ``baseline``, hacking signals.

    ``judged[name]``: ``judge`` output plus ``"reward"`` (the reward model's score per reply).
    """
    rows = []
    for name, j in judged.items():
        ci = scoring.summary(j["scores"])
        rows.append({"policy": name, "rule score": j["rule_score"], "95% CI": f"{ci['lo']:.2f}-{ci['hi']:.2f}",
                     "passes every check": j["pass_rate"], "reward model": sum(j["reward"]) / len(j["reward"]),
                     "win rate vs " + baseline: win_rate(j["scores"], judged[baseline]["scores"]),
                     "mean words": j["mean_words"], "distinct trigrams": j["distinct_trigrams"]})
    return rows


def reply_tables(prompts: list[str], replies: dict[str, list[str]], judged: dict[str, dict],
                 start: str = "sft") -> dict[str, dict]:
    """{policy: ``scoring.compare`` table} of every other policy's held-out replies against ``start``'s, on the
    scores the stage already has: the rule's, the reward model's (``judged[name]["reward"]``) and the reply length.
    The built-in held-out prompts have no reference replies, so no reference metric applies here."""
    records = [{"prompt": q} for q in prompts]

    def scores(name: str) -> dict[str, list[float]]:
        return {"rule": judged[name]["scores"], "reward": judged[name]["reward"],
                "length": scoring.score(replies[name], records, ["length"])["length"]}

    higher = {"rule": True, "reward": True, "length": scoring.METRICS["length"].higher_is_better}
    return {name: scoring.compare(scores(start), scores(name), higher) for name in replies if name != start}


def browse_rows(prompts: list[str], replies: dict[str, list[str]], judged: dict[str, dict]) -> list[dict]:
    """Per prompt, each policy's reply with its rule score, failed checks and reward (for ``widgets.sample_browser``)."""
    return [{"prompt": q, **{n: {"reply": replies[n][i], "rule": judged[n]["scores"][i], "reward": judged[n]["reward"][i],
                               "checks": rule_checks(q, replies[n][i])} for n in replies}}
            for i, q in enumerate(prompts)]


def log_mean(log_history: list[dict], key: str, frac: float = 0.25, first: bool = False) -> float | None:
    """Mean of ``key`` over the last (or ``first``) ``frac`` of the logged steps; None if never logged."""
    vals = [r[key] for r in log_history if key in r]
    if not vals:
        return None
    k = max(1, int(len(vals) * frac))
    window = vals[:k] if first else vals[-k:]
    return sum(window) / k


# ---------------------------------------------------------------- where the policy starts

def starting_policy(run, p) -> tuple[str, str]:
    """(model spec or folder, in words): ``auto`` takes this run's 02_sft model (its adapter, or the whole model) when there is one."""
    if p.policy == "auto":
        up = run.upstream("02_sft")
        saved = train.saved_model(up) if up is not None else None
        if saved is not None:
            return str(saved), f"this run's SFT model (02_sft, {saved.name})"
        return p.model, f"the model itself ({files.relative(p.model, run.path)}): this run has no 02_sft model"
    if p.policy == "base":
        return p.model, f"the model itself ({files.relative(p.model, run.path)})"
    check_policy(p.policy)
    return p.policy, f"the folder {files.relative(p.policy, run.path)}"


def check_policy(policy: str) -> None:
    """``policy`` is auto, base, or a model folder; raises ModelError naming the parameter otherwise."""
    if policy not in ("auto", "base"):
        problem = models.folder_problem(Path(policy))
        if problem:
            raise models.ModelError(f"04_rlhf.policy: {policy!r} is not auto, base, or a model folder ({problem})")


def model_folder(spec: str) -> str:
    """A folder loadable with from_pretrained (built-in names are resolved and built once)."""
    return models.resolve(spec).path


def save_policy(model, tokenizer, folder: str | Path, base: str) -> Path:
    """Save a policy or reward model trained from ``base``: a LoRA one as its adapter (a model spec of its own,
    ``models.save_adapter``; the reward model's head goes with it), any other whole."""
    if hasattr(model, "peft_config"):
        return models.save_adapter(model, tokenizer, folder, base)
    return models.save(model, tokenizer, folder)


def check_inputs(p) -> None:
    """Before any notebook runs: the starting policy exists and a preferences file parses (file, line, field); the
    labeller (``feedback``): a judge answers (an endpoint) or resolves (a model spec), a reward model is one."""
    check_policy(p.policy)
    if p.preferences != "builtin":
        load_pairs(p.preferences)
    if p.feedback == "judge":
        judging.check(p, "04_rlhf.")
    if p.feedback == "reward_model":
        problem = reward_model_problem(p.feedback_reward_model)
        if problem:
            raise params.ParamError(f"04_rlhf.feedback_reward_model: {params.show(p.feedback_reward_model)} {problem}")


def metrics(p, judged: dict[str, dict], *, start: str, n_pairs_train: int, n_pairs_heldout: int, n_train: int,
            rm_accuracy: float, rm_accuracy_train: float, rl_run, dpo_run, rm_run, reply: dict | None = None) -> dict:
    """04_rlhf's section of metrics.json (``findings`` reads it; the notebook adds them and ``thresholds``):
    ``judged`` is ``judge``'s verdict on the held-out prompts for each policy (sft, rl, dpo); ``*_run`` the three
    trainings' ``train.TrainResult``. ``seconds``: the three trainings together (``seconds_by_part``: each).
    ``reply``: ``reply_tables`` (``reply_metrics``: rule, reward and length of rl and dpo against sft, with
    intervals)."""
    n = len(judged["sft"]["reward"])
    parts = {"reward_model": rm_run.seconds, "rl": rl_run.seconds, "dpo": dpo_run.seconds}
    return {
        "policy_start": start, "rl_algo": p.rl_algo, "preference_loss": p.preference_loss,
        "n_pairs_train": n_pairs_train, "n_pairs_heldout": n_pairs_heldout, "n_train": n_train, "n_eval": n,
        "rm_accuracy": rm_accuracy, "rm_accuracy_train": rm_accuracy_train,
        "rl_mean_reward_before": sum(judged["sft"]["reward"]) / n, "rl_mean_reward_after": sum(judged["rl"]["reward"]) / n,
        "dpo_mean_reward": sum(judged["dpo"]["reward"]) / n, "rl_kl": log_mean(rl_run.log_history, "kl"),
        "rl_train_reward_first": log_mean(rl_run.log_history, "reward", first=True),
        "rl_train_reward_last": log_mean(rl_run.log_history, "reward"),
        "winrate_rl_vs_sft": win_rate(judged["rl"]["scores"], judged["sft"]["scores"]),
        "winrate_dpo_vs_sft": win_rate(judged["dpo"]["scores"], judged["sft"]["scores"]),
        "rule_score_sft": judged["sft"]["rule_score"], "rule_score_rl": judged["rl"]["rule_score"],
        "rule_score_dpo": judged["dpo"]["rule_score"],
        "pass_rate": {k: v["pass_rate"] for k, v in judged.items()},
        "mean_words": {k: v["mean_words"] for k, v in judged.items()},
        "distinct_trigrams": {k: v["distinct_trigrams"] for k, v in judged.items()},
        "seconds": sum(parts.values()), "seconds_by_part": parts,
        "reply_metrics": {name: scoring.recorded(t) for name, t in (reply or {}).items()},
    }


def findings(m: dict) -> list[str]:
    """One sentence per result, worded by the numbers (whichever way they go) and ``THRESHOLDS``."""
    t = THRESHOLDS
    out = []
    acc = m["rm_accuracy"]
    out.append(f"The reward model ranks {acc:.0%} of {m['n_pairs_heldout']} held-out pairs the way the rule does "
               f"({'at or above' if acc >= t['rm_accuracy'] else 'below'} the {t['rm_accuracy']:.0%} bar; "
               f"{m['rm_accuracy_train']:.0%} on its {m['n_pairs_train']} training pairs).")
    before, after = m["rl_mean_reward_before"], m["rl_mean_reward_after"]
    out.append(f"{m['rl_algo'].upper()} {'raised' if after > before else 'did not raise'} the reward model's mean score "
               f"on held-out prompts: {before:+.2f} -> {after:+.2f}, at a final KL of {m['rl_kl']:.4f} to the start.")
    for name, key in (("RL", "rl"), (m["preference_loss"].upper(), "dpo")):
        score, base, win = m[f"rule_score_{key}"], m["rule_score_sft"], m[f"winrate_{key}_vs_sft"]
        verdict = "beats" if win > t["win"] else "ties" if win == t["win"] else "does not beat"
        out.append(f"Judged by the rule on {m['n_eval']} held-out prompts, {name} {verdict} the SFT start: "
                   f"rule score {base:.2f} -> {score:.2f}, win rate {win:.2f}.")
    words, tri = m["mean_words"], m["distinct_trigrams"]
    for key, name in (("rl", "RL"), ("dpo", m["preference_loss"].upper())):
        grew = words[key] > t["longer"] * max(words["sft"], 1)
        rep = tri[key] < t["repetitive"]
        if grew or rep:
            out.append(f"Hacking check, {name}: replies average {words[key]:.1f} words (SFT {words['sft']:.1f}) and "
                       f"{tri[key]:.0%} distinct trigrams" + (" — longer" if grew else "") +
                       (" — repetitive" if rep else "") + "; read the side-by-side samples.")
        else:
            out.append(f"Hacking check, {name}: no sign of length or repetition hacking ({words[key]:.1f} words vs SFT "
                       f"{words['sft']:.1f}; {tri[key]:.0%} distinct trigrams).")
    return out + scoring.sentences(m.get("reply_metrics") or {}, "sft")
