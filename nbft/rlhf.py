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
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from . import data, evaluate, files, judge as judging, models, params, rating, scoring, tasks, train
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
    return rating.score_texts(rm, tokenizer, texts, batch_size, precision)


def pair_accuracy(rm, tokenizer, pairs: list[dict], precision: str = "fp32") -> tuple[float, list[float], list[float]]:
    """Share of pairs the reward model ranks like the rule (chosen above rejected); and both score lists."""
    prompts = [q["prompt"] for q in pairs]
    replies = [q["chosen"] for q in pairs] + [q["rejected"] for q in pairs]
    scored = reward_scores(rm, tokenizer, prompts + prompts, replies, precision=precision)  # both in one pass
    chosen, rejected = scored[:len(pairs)], scored[len(pairs):]
    acc = sum(c > r for c, r in zip(chosen, rejected)) / max(1, len(pairs))
    return acc, chosen, rejected


# ---------------------------------------------------------------- the methods: one row each

@dataclass(frozen=True)
class Method:
    """A way to train the policy on the preferences (a row of ``METHODS``)."""

    name: str
    kind: str               # rl (online RL against the reward model) | offline (trains on the fixed pairs) |
                            # online (pairs sampled from the policy as it trains, ranked by reward functions)
    reads: str              # pairs | singles (the pairs split into desirable/undesirable replies) | prompts
    learning_rate: str      # the RLHFParams field with its learning rate
    needs_reference: bool   # a frozen reference policy in the loss (with LoRA: the adapter switched off)
    build: Callable         # (policy, tokenizer, inputs: dict, p, scratch folder, callbacks, peft_config) -> trainer
    note: str
    kl_key: str | None = None      # the trainer's logged KL to the start (None: it logs none)
    reward_key: str | None = None  # the trainer's logged mean reward of its sampled replies
    kl_per: str = "token"          # what the logged KL is a mean of: token (GRPO, RLOO) | reply (online DPO: summed
                                   # over the reply's tokens, so ~reply length times a per-token KL: not comparable)


def _experimental(module: str):
    """A ``trl.experimental`` module, without TRL's warning that it is experimental (the table says so)."""
    import importlib
    import warnings

    from trl.import_utils import TRLExperimentalWarning

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=TRLExperimentalWarning)
        return importlib.import_module(f"trl.experimental.{module}")


def _offline_args(p, tmp, lr: float) -> dict:
    """Every offline row's budget: ``dpo_epochs`` passes over the same pairs, ``dpo_batch_size`` pairs a step."""
    return trainer_args(p, tmp, learning_rate=lr, num_train_epochs=p.dpo_epochs,
                        per_device_train_batch_size=p.dpo_batch_size, max_length=p.max_length)


def _dpo(loss: str):
    def build(policy, tokenizer, inputs, p, tmp, callbacks, peft_config):
        from trl import DPOConfig, DPOTrainer

        args = DPOConfig(**_offline_args(p, tmp, p.dpo_learning_rate), beta=p.dpo_beta, loss_type=[loss])
        return DPOTrainer(model=policy, args=args, train_dataset=to_preference_dataset(inputs["pairs"]),
                          processing_class=tokenizer, callbacks=callbacks, peft_config=peft_config)
    return build


def _kto(policy, tokenizer, inputs, p, tmp, callbacks, peft_config):
    from trl import KTOConfig, KTOTrainer

    args = KTOConfig(**_offline_args(p, tmp, p.dpo_learning_rate), beta=p.dpo_beta)
    return KTOTrainer(model=policy, args=args, train_dataset=to_unpaired_dataset(inputs["pairs"]),
                      processing_class=tokenizer, callbacks=callbacks, peft_config=peft_config)


def _orpo(policy, tokenizer, inputs, p, tmp, callbacks, peft_config):
    orpo = _experimental("orpo")
    args = orpo.ORPOConfig(**_offline_args(p, tmp, p.orpo_learning_rate), beta=p.orpo_beta,
                           remove_unused_columns=False)
    return orpo.ORPOTrainer(model=policy, args=args, train_dataset=to_preference_dataset(inputs["pairs"]),
                            processing_class=tokenizer, callbacks=callbacks, peft_config=peft_config)


def _simpo(policy, tokenizer, inputs, p, tmp, callbacks, peft_config):
    cpo = _experimental("cpo")
    args = cpo.CPOConfig(**_offline_args(p, tmp, p.simpo_learning_rate), loss_type="simpo", cpo_alpha=0.0,
                         beta=p.simpo_beta, simpo_gamma=p.simpo_gamma, remove_unused_columns=False)
    return cpo.CPOTrainer(model=policy, args=args, train_dataset=to_preference_dataset(inputs["pairs"]),
                          processing_class=tokenizer, callbacks=callbacks, peft_config=peft_config)


def _prompts_dataset(prompts: list):
    import datasets

    return datasets.Dataset.from_list([{"prompt": _messages(q)} for q in prompts])


def _reward_classes(funcs: list, tokenizer, p) -> list:
    """TRL's ``reward_processing_classes`` for ``funcs``: the tokenizer for a reward model, None for a callable.
    Reward models score every sampled reply: at precision bf16 they are held in bf16 (in place; ~4x faster on CPU)."""
    bf16 = models.pick_precision(p.precision, models.pick_device(p.device)) == "bf16"
    for f in funcs:
        if bf16 and isinstance(f, torch.nn.Module):
            f.to(torch.bfloat16)
    return [tokenizer if isinstance(f, torch.nn.Module) else None for f in funcs]


def _rl(trainer: str):
    def build(policy, tokenizer, inputs, p, tmp, callbacks, peft_config):
        import trl

        funcs, weights = [inputs["reward_model"]], [1.0]
        if p.rule_reward_weight > 0:
            funcs.append(rule_reward)
            weights.append(p.rule_reward_weight)
        args = getattr(trl, f"{trainer}Config")(**trainer_args(
            p, tmp, learning_rate=p.rl_learning_rate, max_steps=p.rl_steps,
            per_device_train_batch_size=p.rl_prompts_per_step * p.num_generations,
            num_generations=p.num_generations, max_completion_length=p.max_new_tokens, temperature=p.temperature,
            top_k=0, beta=p.kl_beta, reward_weights=weights, steps_per_generation=1, num_iterations=1,
            log_completions=False, shuffle_dataset=True))
        return getattr(trl, f"{trainer}Trainer")(
            model=policy, reward_funcs=funcs, args=args, train_dataset=_prompts_dataset(inputs["prompts"]),
            processing_class=tokenizer, callbacks=callbacks, peft_config=peft_config,
            reward_processing_classes=_reward_classes(funcs, tokenizer, p))
    return build


def _online_dpo(policy, tokenizer, inputs, p, tmp, callbacks, peft_config):
    online = _experimental("online_dpo")
    funcs = list(inputs["reward_funcs"])
    args = online.OnlineDPOConfig(**trainer_args(
        p, tmp, learning_rate=p.online_dpo_learning_rate, max_steps=p.rl_steps,
        per_device_train_batch_size=p.rl_prompts_per_step, max_new_tokens=p.max_new_tokens,
        max_length=p.max_length, temperature=p.temperature, top_k=0, beta=[p.dpo_beta], use_vllm=False))
    return online.OnlineDPOTrainer(
        model=policy, reward_funcs=funcs, args=args, train_dataset=_prompts_dataset(inputs["prompts"]),
        processing_class=tokenizer, callbacks=callbacks, peft_config=peft_config,
        reward_processing_classes=_reward_classes(funcs, tokenizer, p))


#: The methods, in table order. Every offline row trains on the same pairs for ``dpo_epochs`` passes of
#: ``dpo_batch_size`` pairs; the RL and online rows take ``rl_steps`` steps of ``rl_prompts_per_step`` prompts. TRL 1.16
#: has no value-network PPO (``PPOTrainer`` was removed upstream): GRPO and RLOO stand in for it — the same clipped
#: policy gradient and KL penalty, with the group's mean reward as the baseline instead of a value network.
METHODS: dict[str, Method] = {m.name: m for m in [
    Method("dpo", "offline", "pairs", "dpo_learning_rate", True, _dpo("sigmoid"),
           "DPO (Rafailov et al. 2023): the chosen reply's log-probability ratio to the reference above the rejected "
           "one's (sigmoid loss, dpo_beta)"),
    Method("ipo", "offline", "pairs", "dpo_learning_rate", True, _dpo("ipo"),
           "IPO (Azar et al. 2023): DPO's ratios with a squared loss toward a fixed margin (less overfit on "
           "deterministic preferences)"),
    Method("kto", "offline", "singles", "dpo_learning_rate", True, _kto,
           "KTO (Ethayarajh et al. 2024): needs only good/bad labels: each pair split into a desirable and an "
           "undesirable reply"),
    Method("orpo", "offline", "pairs", "orpo_learning_rate", False, _orpo,
           "ORPO (Hong et al. 2024): SFT loss on the chosen reply plus an odds-ratio penalty on the rejected; no "
           "reference model (trl.experimental)"),
    Method("simpo", "offline", "pairs", "simpo_learning_rate", False, _simpo,
           "SimPO (Meng et al. 2024): the length-normalized log-probability margin above simpo_gamma; no reference "
           "model (TRL's CPO with loss simpo, cpo_alpha 0; trl.experimental)"),
    Method("online_dpo", "online", "prompts", "online_dpo_learning_rate", True, _online_dpo,
           "online DPO (Guo et al. 2024): two replies sampled per prompt as it trains, ranked by the reward "
           "functions the notebook passes, DPO's loss on the pair (trl.experimental)",
           kl_key="objective/kl", reward_key="objective/scores", kl_per="reply"),
    Method("grpo", "rl", "prompts", "rl_learning_rate", True, _rl("GRPO"),
           "GRPO (Shao et al. 2024): a group of replies per prompt scored by the reward model, each against the "
           "group's mean; PPO's clip and a KL penalty (kl_beta). Stands in for PPO: TRL 1.16 has none",
           kl_key="kl", reward_key="reward"),
    Method("rloo", "rl", "prompts", "rl_learning_rate", True, _rl("RLOO"),
           "RLOO (Ahmadian et al. 2024): GRPO's setup with the mean of the other replies as the baseline. Stands in "
           "for PPO: TRL 1.16 has none", kl_key="kl", reward_key="reward"),
]}


def learning_rate(method: Method, p) -> float:
    """The learning rate the row trains with (its ``learning_rate`` field of ``p``)."""
    return getattr(p, method.learning_rate)


def describe_methods(names=None) -> list[dict]:
    """The table as rows for the notebook (``names``: those rows, in table order)."""
    return [{"method": m.name, "kind": m.kind, "reads": m.reads, "learning rate": m.learning_rate,
             "reference model": "yes" if m.needs_reference else "no", "note": m.note}
            for m in METHODS.values() if names is None or m.name in names]


def ordered(names: list[str]) -> list[str]:
    """``names`` in table order (each once); an unknown name raises ValueError."""
    for n in names:
        method_row(n)
    return [n for n in METHODS if n in names]


def method_row(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"methods: {name!r} is not one of {', '.join(METHODS)}"
                         + (" (TRL 1.16 has no value-network PPO: grpo and rloo stand in for it)" if name == "ppo" else ""))
    return METHODS[name]


def train_method(name: str, policy, tokenizer, p, *, pairs: list[dict] | None = None, prompts: list | None = None,
                 reward_model=None, reward_funcs: list | None = None, callbacks=()) -> train.TrainResult:
    """Train ``policy`` by the row ``name`` of ``METHODS`` (``train.fit``). What a row reads: pairs (``pairs``), the
    pairs split into singles (``pairs``), prompts with the reward model (``rl``: ``reward_model``; plus the rule when
    ``rule_reward_weight > 0``) or with ``reward_funcs`` (online: TRL reward functions — callables
    ``f(prompts, completions, **kw) -> list[float]`` or sequence-classification reward models).

    With ``policy_scope`` lora the policy trains LoRA adapters on a bf16 frozen base (``train.bf16_frozen_base``)
    and a row that needs a reference uses the policy with its adapter switched off; with ``full`` TRL keeps a copy.
    ``policy`` is changed in place (peft wraps it): load a fresh one for each row."""
    import datasets

    m = method_row(name)
    needed = {"pairs": pairs, "singles": pairs, "prompts": prompts}[m.reads]
    if not needed:
        raise ValueError(f"{name} reads {m.reads}: give {'pairs' if m.reads != 'prompts' else 'prompts'} "
                         "(none given)" + ("; lower pair_margin, sample more replies per prompt, or give a "
                                           "preferences file" if m.reads != "prompts" else ""))
    if m.kind == "rl" and reward_model is None:
        raise ValueError(f"{name} trains against a reward model: give reward_model")
    if m.kind == "online" and not reward_funcs:
        raise ValueError(f"{name} ranks its own samples: give reward_funcs (callables or reward models)")
    datasets.disable_progress_bars()
    inputs = {"pairs": pairs, "prompts": prompts, "reward_model": reward_model, "reward_funcs": reward_funcs}
    peft_config = lora_config(p) if p.policy_scope == "lora" else None
    with train.scratch_dir() as tmp:
        def build():
            return m.build(train.bf16_frozen_base(policy, p, peft_config), tokenizer, inputs, p, tmp,
                           list(callbacks), peft_config)
        return train.fit(build)


def training_record(name: str, result: train.TrainResult, peak_mem_mb: float | None, p) -> dict:
    """What a row's training leaves for the table (``metrics``), so the trainer and its model can be freed: the
    seconds, steps, peak memory, learning rate, the logged KL to the start (last quarter of the steps; None where the
    trainer logs none) and the logged reward of the sampled replies (first and last quarter; None likewise)."""
    m = METHODS[name]
    hist = result.log_history
    return {"kind": m.kind, "seconds": result.seconds, "steps": result.steps, "peak_mem_mb": peak_mem_mb,
            "learning_rate": learning_rate(m, p), "needs_reference": m.needs_reference,
            "kl": log_mean(hist, m.kl_key) if m.kl_key else None, "kl_per": m.kl_per if m.kl_key else None,
            "train_reward_first": log_mean(hist, m.reward_key, first=True) if m.reward_key else None,
            "train_reward_last": log_mean(hist, m.reward_key) if m.reward_key else None}


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


def wins(scores: list[float], baseline: list[float]) -> list[float]:
    """Per prompt: 1 where a policy's reply scores above the baseline's, 0.5 on a tie, else 0."""
    return [1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(scores, baseline)]


def win_rate(scores: list[float], baseline: list[float]) -> float:
    """Share of prompts where a policy's reply scores above the baseline's (ties count half)."""
    return sum(wins(scores, baseline)) / max(1, len(scores))


def summary_rows(judged: dict[str, dict], table: dict[str, dict] | None = None, baseline: str = "sft") -> list[dict]:
    """One row per policy: rule score with CI, pass rate, reward-model mean, win rate vs ``baseline`` (with its
    interval), hacking signals; with ``table`` (``method_metrics``) also each method's kind, KL to the start (where
    its trainer logs one), training seconds, peak memory and learning rate.

    ``judged[name]``: ``judge`` output plus ``"reward"`` (the reward model's score per reply).
    """
    rows = []
    fmt = lambda x, f: "-" if x is None else format(x, f)
    for name, j in judged.items():
        ci = scoring.summary(j["scores"])
        w = scoring.summary(wins(j["scores"], judged[baseline]["scores"]))
        r = (table or {}).get(name, {})
        rows.append({"policy": name, **({"kind": r.get("kind", "start")} if table is not None else {}),
                     "rule score": j["rule_score"], "95% CI": f"{ci['lo']:.2f}-{ci['hi']:.2f}",
                     "passes every check": j["pass_rate"], "reward model": sum(j["reward"]) / len(j["reward"]),
                     "win rate vs " + baseline: w["mean"],
                     "win 95% CI": "-" if name == baseline else f"{w['lo']:.2f}-{w['hi']:.2f}",
                     "mean words": j["mean_words"], "distinct trigrams": j["distinct_trigrams"],
                     **({"KL to start": fmt(r.get("kl"), ".4f"), "seconds": fmt(r.get("seconds"), ".0f"),
                         "peak MB": fmt(r.get("peak_mem_mb"), ".0f"), "learning rate": fmt(r.get("learning_rate"), "g")}
                        if table is not None else {})})
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


def method_metrics(judged: dict[str, dict], trained: dict[str, dict], start: str = "sft") -> dict[str, dict]:
    """metrics.json's ``methods``: per trained row, its ``training_record`` and its held-out verdict — the rule score
    with its bootstrap 95% interval (``rule_ci``), the win rate against ``start`` with its interval (``win_ci``: the
    per-prompt wins resampled) and the share of prompts the rule scores the same (``tie_share``: a tie counts half),
    the reward model's mean score, the pass rate, and the hacking signals (mean words,
    distinct trigrams)."""
    out = {}
    for name, rec in trained.items():
        j = judged[name]
        per = wins(j["scores"], judged[start]["scores"])
        ci, w = scoring.summary(j["scores"]), scoring.summary(per)
        out[name] = {**rec, "rule_score": j["rule_score"], "rule_ci": [ci["lo"], ci["hi"]],
                     "win_rate_vs_sft": w["mean"], "win_ci": [w["lo"], w["hi"]],
                     "tie_share": sum(x == 0.5 for x in per) / max(1, len(per)),
                     "reward_model": sum(j["reward"]) / max(1, len(j["reward"])) if j.get("reward") else None,
                     "pass_rate": j["pass_rate"], "mean_words": j["mean_words"],
                     "distinct_trigrams": j["distinct_trigrams"]}
    return out


def metrics(p, judged: dict[str, dict], trained: dict[str, dict], *, start: str, n_pairs_train: int,
            n_pairs_heldout: int, n_train: int, rm_accuracy: float, rm_accuracy_train: float, rm_seconds: float,
            reply: dict | None = None) -> dict:
    """04_rlhf's section of metrics.json (``findings`` reads it; the notebook adds them and ``thresholds``):
    ``judged`` is ``judge``'s verdict on the held-out prompts for each policy (sft and each trained row, with the
    reward model's scores under ``reward``); ``trained`` each row's ``training_record``, in table order. ``methods``:
    ``method_metrics``. The ``rl_*``/``*_rl`` keys describe the first RL row (``rl_algo`` names it), the ``*_dpo``
    keys the first offline row (``preference_loss`` names it); None where the run trained none. ``seconds``: the
    reward model and every row together (``seconds_by_part``: each). ``reply``: ``reply_tables``."""
    n = len(judged["sft"]["reward"])
    rl = next((k for k, r in trained.items() if r["kind"] == "rl"), None)
    off = next((k for k, r in trained.items() if r["kind"] == "offline"), None)
    parts = {"reward_model": rm_seconds, **{k: r["seconds"] for k, r in trained.items()}}
    mean = lambda xs: sum(xs) / max(1, len(xs))
    table = method_metrics(judged, trained)
    return {
        "policy_start": start, "methods_trained": list(trained), "rl_algo": rl, "preference_loss": off,
        "n_pairs_train": n_pairs_train, "n_pairs_heldout": n_pairs_heldout, "n_train": n_train, "n_eval": n,
        "rm_accuracy": rm_accuracy, "rm_accuracy_train": rm_accuracy_train,
        "rl_mean_reward_before": mean(judged["sft"]["reward"]),
        "rl_mean_reward_after": mean(judged[rl]["reward"]) if rl else None,
        "dpo_mean_reward": mean(judged[off]["reward"]) if off else None,
        "rl_kl": trained[rl]["kl"] if rl else None,
        "rl_train_reward_first": trained[rl]["train_reward_first"] if rl else None,
        "rl_train_reward_last": trained[rl]["train_reward_last"] if rl else None,
        "winrate_rl_vs_sft": table[rl]["win_rate_vs_sft"] if rl else None,
        "winrate_dpo_vs_sft": table[off]["win_rate_vs_sft"] if off else None,
        "rule_score_sft": judged["sft"]["rule_score"], "rule_score_rl": judged[rl]["rule_score"] if rl else None,
        "rule_score_dpo": judged[off]["rule_score"] if off else None,
        "methods": table,
        "pass_rate": {k: v["pass_rate"] for k, v in judged.items()},
        "mean_words": {k: v["mean_words"] for k, v in judged.items()},
        "distinct_trigrams": {k: v["distinct_trigrams"] for k, v in judged.items()},
        "seconds": sum(parts.values()), "seconds_by_part": parts,
        "reply_metrics": {name: scoring.recorded(t) for name, t in (reply or {}).items()},
    }


def _interval(ci) -> str:
    return f" (95% CI {ci[0]:.2f}-{ci[1]:.2f})" if ci and None not in ci else ""


def findings(m: dict) -> list[str]:
    """One sentence per result, worded by the numbers (whichever way they go) and ``THRESHOLDS``: the reward model,
    the first RL row's reward, one sentence per method row (win rate with its interval, KL where logged, hacking
    signals), one comparing the rows, then the per-example tables'."""
    t = THRESHOLDS
    out = []
    acc = m["rm_accuracy"]
    out.append(f"The reward model ranks {acc:.0%} of {m['n_pairs_heldout']} held-out pairs the way the rule does "
               f"({'at or above' if acc >= t['rm_accuracy'] else 'below'} the {t['rm_accuracy']:.0%} bar; "
               f"{m['rm_accuracy_train']:.0%} on its {m['n_pairs_train']} training pairs).")
    if m.get("rl_algo"):
        before, after = m["rl_mean_reward_before"], m["rl_mean_reward_after"]
        kl = f", at a final KL of {m['rl_kl']:.4f} to the start" if m.get("rl_kl") is not None else ""
        out.append(f"{m['rl_algo'].upper()} {'raised' if after > before else 'did not raise'} the reward model's mean "
                   f"score on held-out prompts: {before:+.2f} -> {after:+.2f}{kl}.")
    rows = m.get("methods") or {}
    words0, base = m["mean_words"]["sft"], m["rule_score_sft"]
    for name, r in rows.items():
        win, ci = r["win_rate_vs_sft"], r.get("win_ci")
        within = bool(ci and None not in ci and ci[0] <= t["win"] <= ci[1])
        verdict = ("is not shown to beat" if within and win > t["win"] else "beats" if win > t["win"] else "ties"
                   if win == t["win"] else "does not beat")
        noise = " — within the noise of this many prompts (the interval includes 0.5)" if within else ""
        kl = (f"; KL to the start {r['kl']:.4f} per {r.get('kl_per') or 'token'}" if r.get("kl") is not None
              else "")
        grew = r["mean_words"] > t["longer"] * max(words0, 1)
        rep = r["distinct_trigrams"] < t["repetitive"]
        hack = (f"; hacking signs: {r['mean_words']:.1f} words (SFT {words0:.1f})" + (", longer" if grew else "")
                + (f", {r['distinct_trigrams']:.0%} distinct trigrams, repetitive" if rep else "")
                if grew or rep else f"; no length or repetition hacking ({r['mean_words']:.1f} words vs SFT {words0:.1f})")
        ties = f", {r['tie_share']:.0%} of prompts tied" if r.get("tie_share") else ""
        out.append(f"{name.upper()} ({r['kind']}, lr {r['learning_rate']:g}) {verdict} the SFT start on "
                   f"{m['n_eval']} held-out prompts: win rate {win:.2f}{_interval(ci)}{ties}{noise}, rule score "
                   f"{base:.2f} -> {r['rule_score']:.2f}{kl}{hack}.")
    if len(rows) > 1:
        ranked = sorted(rows, key=lambda k: -rows[k]["win_rate_vs_sft"])
        beat = [k for k in ranked if rows[k]["win_rate_vs_sft"] > t["win"]]
        clear = [k for k in beat if (rows[k].get("win_ci") or [None])[0] is not None and rows[k]["win_ci"][0] > t["win"]]
        out.append(f"Across the {len(rows)} rows (same pairs, seed and budget), by win rate: "
                   + ", ".join(f"{k} {rows[k]['win_rate_vs_sft']:.2f}" for k in ranked) + "; "
                   + (f"{len(beat)} above 0.5 ({', '.join(beat)})" if beat else "none above 0.5")
                   + (f", {len(clear)} of them beyond the interval ({', '.join(clear) or 'none'})." if beat else "."))
    return out + scoring.sentences(m.get("reply_metrics") or {}, "sft")


def first_offline(methods) -> str:
    """The first offline row of ``methods`` in table order (the one the top-level ``*_dpo`` keys and 04's labeller
    comparison use); dpo when ``methods`` has none."""
    return next((m for m in ordered(methods) if METHODS[m].kind == "offline"), "dpo")
