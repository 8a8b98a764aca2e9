"""Evaluation: batched generation, programmatic task checks, scores, comparisons."""
from __future__ import annotations

import json
import math
import re
import string
from typing import Callable

import torch

from . import corpora


def _precision_ctx(model, precision: str):
    """bf16 autocast on CPU/GPU when asked for; a no-op otherwise."""
    device_type = next(model.parameters()).device.type
    if precision == "bf16" and next(model.parameters()).dtype == torch.float32:
        return torch.autocast(device_type=device_type, dtype=torch.bfloat16)
    if precision == "fp16" and device_type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.float16)
    return torch.autocast(device_type=device_type, enabled=False)


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], max_new_tokens: int = 48, batch_size: int = 16,
             precision: str = "fp32", do_sample: bool = False, seed: int = 0, **gen_kwargs) -> list[str]:
    """Complete already-rendered prompts, in batches with left padding; greedy by default.

    Prompts are sorted by length so each batch pads little; outputs come back in input order.
    The model is put in eval mode (after ``trainer.train()`` it is left in training mode,
    and dropout then garbles generations).
    """
    model.eval()
    tokenizer.padding_side = "left"
    device = next(model.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[str] = [""] * len(prompts)
    if do_sample:
        torch.manual_seed(seed)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        enc = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        with _precision_ctx(model, precision):
            ids = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=do_sample,
                                 pad_token_id=tokenizer.pad_token_id, **gen_kwargs)
        texts = tokenizer.batch_decode(ids[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        for i, t in zip(idx, texts):
            out[i] = t.strip()
    return out


# ---------------------------------------------------------------- task checks

def normalize_answer(s: str) -> str:
    """Lowercase, drop punctuation and articles, collapse spaces (SQuAD-style)."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def check_json_answer(output: str, reference: str = "") -> bool:
    """The demo behaviour: exactly one JSON object with keys topic (one of the five) and answer."""
    try:
        obj = json.loads(output.strip())
    except (json.JSONDecodeError, ValueError):
        return False
    return (isinstance(obj, dict) and set(obj) == {"topic", "answer"}
            and obj["topic"] in corpora.DEMO_TOPICS and isinstance(obj["answer"], str) and obj["answer"].strip() != "")


def check_exact(output: str, reference: str) -> bool:
    return normalize_answer(output) == normalize_answer(reference)


def check_contains(output: str, reference: str) -> bool:
    """The normalized reference appears in the normalized output as whole words ("0" is not in "10")."""
    ref = normalize_answer(reference)
    return bool(ref) and f" {ref} " in f" {normalize_answer(output)} "


def answer_of(output: str) -> str:
    """The 'answer' field of a JSON reply, or the reply itself."""
    try:
        obj = json.loads(output.strip())
        if isinstance(obj, dict) and "answer" in obj:
            return str(obj["answer"])
    except (json.JSONDecodeError, ValueError):
        pass
    return output


#: name -> check(output, reference) -> bool. Adding a check is adding a row.
TASK_CHECKS: dict[str, Callable[[str, str], bool]] = {
    "json_answer": check_json_answer,
    "exact": check_exact,
    "contains": check_contains,
}


def resolve_check(name: str, records: list[dict]) -> str:
    """'auto' -> the data's own check(s) ('per-record' for a multi-task mix), else 'contains'."""
    if name == "auto":
        names = {r.get("check") for r in records} - {None}
        if len(names) > 1:
            return "per-record"
        name = names.pop() if names else "contains"
    if name not in TASK_CHECKS:
        raise ValueError(f"task_check: unknown check {name!r}; use auto or one of {', '.join(TASK_CHECKS)}")
    return name


def score(outputs: list[str], references: list[str], check: str) -> tuple[float, list[bool]]:
    """Mean pass rate of ``check`` and the per-example verdicts."""
    fn = TASK_CHECKS[check]
    passed = [bool(fn(o, r)) for o, r in zip(outputs, references)]
    return (sum(passed) / len(passed) if passed else float("nan")), passed


def score_records(outputs: list[str], records: list[dict], check: str = "auto") -> tuple[float, list[bool], dict]:
    """Score outputs against records: one check for all, or each record's own ('auto').

    Returns (mean pass rate, per-example verdicts, {task: pass rate}).
    """
    check = resolve_check(check, records) if check == "auto" else check
    passed = []
    for o, r in zip(outputs, records):
        name = r.get("check", "contains") if check == "per-record" else check
        passed.append(bool(TASK_CHECKS[name](o, r["reference"])))
    by_task: dict[str, list[bool]] = {}
    for ok, r in zip(passed, records):
        by_task.setdefault(r.get("task", "task"), []).append(ok)
    mean = sum(passed) / len(passed) if passed else float("nan")
    return mean, passed, {t: sum(v) / len(v) for t, v in by_task.items()}


def answer_accuracy(outputs: list[str], references: list[str]) -> float:
    """Share of outputs whose answer contains the reference (knowledge, not format)."""
    ok = [check_contains(answer_of(o), r) for o, r in zip(outputs, references)]
    return sum(ok) / len(ok) if ok else float("nan")


@torch.no_grad()
def perplexity(model, tokenizer, texts: list[str], batch_size: int = 8, max_length: int = 512,
               precision: str = "fp32") -> float:
    """Token-weighted perplexity of ``texts``."""
    model.eval()
    device = next(model.parameters()).device
    side, tokenizer.padding_side = tokenizer.padding_side, "right"
    nll, n = 0.0, 0
    try:
        for start in range(0, len(texts), batch_size):
            enc = tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True, truncation=True,
                            max_length=max_length).to(device)
            labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
            with _precision_ctx(model, precision):
                logits = model(**enc).logits.float()
            logits = logits[:, -labels.shape[1]:]  # prompt-learning methods prepend virtual tokens
            loss = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1), reduction="sum", ignore_index=-100)
            nll += loss.item()
            n += int((labels[:, 1:] != -100).sum())
    finally:
        tokenizer.padding_side = side
    return math.exp(nll / max(n, 1))


# ---------------------------------------------------------------- forgetting probes

def general_qa(model, tokenizer, precision: str = "fp32", max_new_tokens: int = 32, batch_size: int = 16,
               template: str = "chat") -> tuple[float, list[str]]:
    """Share of ``corpora.GENERAL_QA`` answered correctly (any accepted answer contained in the reply)."""
    from . import data

    prompts = [data.render_prompt([{"role": "user", "content": q}], tokenizer, template) for q, _ in corpora.GENERAL_QA]
    outs = generate(model, tokenizer, prompts, max_new_tokens, batch_size, precision)
    ok = [any(check_contains(answer_of(o), a) for a in accepted) for o, (_, accepted) in zip(outs, corpora.GENERAL_QA)]
    return sum(ok) / len(ok), outs


def forgetting_probe(model, tokenizer, precision: str = "fp32", template: str = "chat") -> dict:
    """Perplexity on held-out general text and accuracy on general questions."""
    qa, _ = general_qa(model, tokenizer, precision, template=template)
    return {"ppl_general": perplexity(model, tokenizer, corpora.GENERAL_TEXT, precision=precision), "general_qa": qa}


def evaluate_model(model, tokenizer, test: list[dict], check: str = "auto", precision: str = "fp32",
                   max_new_tokens: int = 48, batch_size: int = 16, probe: bool = True,
                   domain_texts: list[str] | None = None) -> dict:
    """Everything 02_sft measures about one model, in one call.

    Keys: task_score, answer_accuracy, by_task, outputs, passed; with ``probe`` also
    ppl_general and general_qa; with ``domain_texts`` also ppl_domain.
    """
    outs = generate(model, tokenizer, [r["prompt"] for r in test], max_new_tokens, batch_size, precision)
    task_score, passed, by_task = score_records(outs, test, check)
    res = {"task_score": task_score, "answer_accuracy": answer_accuracy(outs, [r["reference"] for r in test]),
           "by_task": by_task, "outputs": outs, "passed": passed}
    if probe:
        res.update(forgetting_probe(model, tokenizer, precision))
    if domain_texts:
        res["ppl_domain"] = perplexity(model, tokenizer, domain_texts, precision=precision)
    return res


def comparison_rows(prompts: list[str], before: list[str], after: list[str], ok_before: list[bool],
                    ok_after: list[bool]) -> list[dict]:
    """Rows for a base-vs-tuned table."""
    return [{"prompt": p, "before": b, "pass_before": pb, "after": a, "pass_after": pa}
            for p, b, a, pb, pa in zip(prompts, before, after, ok_before, ok_after)]


def _change(before: float, after: float, lower_is_better: bool = False, tol: float = 0.02) -> str:
    rel = (after - before) / before if before else after - before
    if abs(rel) <= tol:
        return "stayed about the same"
    up = after > before
    return ("rose" if up else "fell") + (" (worse)" if up == lower_is_better else " (better)")


def sft_findings(base: dict, after: dict, scopes: dict, by_size: dict, quality: dict,
                 cpt_domain: tuple[float, float] | None) -> list[str]:
    """Plain sentences, each with its numbers, about what 02_sft measured."""
    out = [f"Task score {base['task_score']:.2f} -> {after['task_score']:.2f} on held-out prompts: the behaviour "
           + ("was learned." if after["task_score"] >= 0.9 else "was only partly learned." if after["task_score"] > base["task_score"] + 0.1
              else "was not learned.")]
    out.append(f"Answer accuracy {base['answer_accuracy']:.2f} -> {after['answer_accuracy']:.2f} while the task score moved "
               f"{after['task_score'] - base['task_score']:+.2f}: " + (
                   "fine-tuning changed the form far more than the knowledge." if abs(after["answer_accuracy"] - base["answer_accuracy"])
                   < abs(after["task_score"] - base["task_score"]) / 2 else "knowledge moved as much as form here."))
    out.append(f"Forgetting, main run: general-text perplexity {base['ppl_general']:.2f} -> {after['ppl_general']:.2f} "
               f"({_change(base['ppl_general'], after['ppl_general'], True)}); general questions "
               f"{base['general_qa']:.2f} -> {after['general_qa']:.2f} ({_change(base['general_qa'], after['general_qa'])}).")
    for s, r in scopes.items():
        out.append(f"Scope {s}: {r['trainable_pct']:.2f}% of weights, {r['seconds']:.0f} s, task score {r['task_score']:.2f}, "
                   f"general-text perplexity {r['ppl_general_after']:.2f} "
                   f"({_change(base['ppl_general'], r['ppl_general_after'], True)} vs base {base['ppl_general']:.2f}), "
                   f"general questions {r['general_qa_after']:.2f}.")
    if "lora" in scopes and "full" in scopes:
        gap = scopes["full"]["task_score"] - scopes["lora"]["task_score"]
        out.append(f"LoRA vs full fine-tuning: task score {scopes['lora']['task_score']:.2f} vs {scopes['full']['task_score']:.2f} "
                   f"with {scopes['lora']['trainable_pct']:.2f}% vs 100% of the weights trained; " + (
                       "LoRA comes within 0.1 of full fine-tuning." if abs(gap) <= 0.1 else
                       "LoRA does better than full fine-tuning on this budget." if gap < 0 else
                       "LoRA falls more than 0.1 short of full fine-tuning here."))
        worse = max(scopes, key=lambda k: scopes[k]["ppl_general_after"])
        out.append(f"The most forgetting (highest general-text perplexity after) came with scope '{worse}'.")
    if by_size:
        sizes = sorted(by_size)
        first90 = next((n for n in sizes if by_size[n] >= 0.9), None)
        out.append("Data size: " + ", ".join(f"{n} examples -> {by_size[n]:.2f}" for n in sizes) + "; " + (
            f"{first90} clean examples were enough for a score of 0.9." if first90 else "no size reached 0.9."))
    if quality:
        out.append(f"Clean vs unfiltered at {quality['n_examples']} examples: {quality['clean']:.2f} vs {quality['unfiltered']:.2f} "
                   + ("(clean data wins)." if quality["clean"] > quality["unfiltered"] + 0.02 else
                      "(unfiltered did as well or better here)."))
    if cpt_domain:
        b, a = cpt_domain
        out.append(f"Continued pretraining: perplexity on held-out domain documents {b:.2f} -> {a:.2f} ({_change(b, a, True)}).")
    return out
