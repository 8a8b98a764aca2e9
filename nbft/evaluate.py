"""Evaluation: batched generation, programmatic task checks, scores, comparisons."""
from __future__ import annotations

import json
import math
import re
import string
from typing import Callable

import torch

from . import data as nbdata


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
            and obj["topic"] in nbdata.DEMO_TOPICS and isinstance(obj["answer"], str) and obj["answer"].strip() != "")


def check_exact(output: str, reference: str) -> bool:
    return normalize_answer(output) == normalize_answer(reference)


def check_contains(output: str, reference: str) -> bool:
    ref = normalize_answer(reference)
    return bool(ref) and ref in normalize_answer(output)


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
    """'auto' -> the data's own check (the demo's json_answer), else 'contains'."""
    if name == "auto":
        names = {r.get("check") for r in records} - {None}
        name = names.pop() if len(names) == 1 else "contains"
    if name not in TASK_CHECKS:
        raise ValueError(f"task_check: unknown check {name!r}; use auto or one of {', '.join(TASK_CHECKS)}")
    return name


def score(outputs: list[str], references: list[str], check: str) -> tuple[float, list[bool]]:
    """Mean pass rate of ``check`` and the per-example verdicts."""
    fn = TASK_CHECKS[check]
    passed = [bool(fn(o, r)) for o, r in zip(outputs, references)]
    return (sum(passed) / len(passed) if passed else float("nan")), passed


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
            loss = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1), reduction="sum", ignore_index=-100)
            nll += loss.item()
            n += int((labels[:, 1:] != -100).sum())
    finally:
        tokenizer.padding_side = side
    return math.exp(nll / max(n, 1))


def comparison_rows(prompts: list[str], before: list[str], after: list[str], ok_before: list[bool],
                    ok_after: list[bool]) -> list[dict]:
    """Rows for a base-vs-tuned table."""
    return [{"prompt": p, "before": b, "pass_before": pb, "after": a, "pass_after": pa}
            for p, b, a, pb, pa in zip(prompts, before, after, ok_before, ok_after)]
