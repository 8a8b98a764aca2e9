"""Evaluation that runs a model: batched generation, perplexity, the forgetting probe, one call for all of it.

Scoring a reply (the checks, the answer parser) is model-free and lives in ``nbft.tasks``.

In a run (``kernel.setup`` sets ``settings.eval_cache`` to ``<run>/cache``) greedy generations and perplexities of a model as it was
loaded (``models.load_model`` marks it with its checksum) are kept in the run folder and reused: the base model's
scores are computed once per run, whichever stages ask for them, and a resumed stage does not compute them again.
The key is the model's checksum and a fingerprint of its weights (a trained or pruned copy misses), the texts and
every setting; a trained model is never looked up.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
from typing import Callable, Sequence

import numpy as np
import torch

from . import corpora, data, files, models, settings, tasks, timing


def model_key(model) -> str | None:
    """The cache identity of a model as ``models.load_model`` gave it: its checksum (``models.CHECKSUM_ATTR``, on the
    object itself: a peft wrapper does not inherit it; ``train.finish`` takes it off a trained model) and a
    fingerprint of its weights (count, dtype, the float64 sum of every tensor: an in-place change such as a merged
    adapter or pruned blocks changes it; ~40 ms for 135 M weights). None for anything else."""
    source = model.__dict__.get(models.CHECKSUM_ATTR)
    if not source:
        return None
    with torch.no_grad():
        params = list(model.parameters())
        total = sum(float(torch.sum(w, dtype=torch.float64)) for w in params)
    return json.dumps([source, sum(w.numel() for w in params), str(params[0].dtype), f"{total:.12e}"])


def memo(kind: str, model, payload: dict, compute: Callable):
    """``compute()``, or its earlier result for the same model and ``payload`` from the run's cache."""
    where = settings.current()
    key = model_key(model) if where.eval_cache is not None else None
    if key is None:
        return compute()
    digest = hashlib.sha256(json.dumps([kind, key, payload], sort_keys=True, default=str).encode()).hexdigest()
    path = where.eval_cache / f"{kind}-{digest[:20]}.json"
    try:
        value = json.loads(path.read_text())["value"]
        where.eval_hits += 1
        return value
    except (OSError, ValueError, KeyError):
        pass
    value = compute()
    where.eval_misses += 1
    where.eval_cache.mkdir(parents=True, exist_ok=True)
    files.write_json(path, {"kind": kind, "model": key, "value": value})
    return value


def generate(model, tokenizer, prompts: list[str], max_new_tokens: int = 48, batch_size: int = 16,
             precision: str = "fp32", do_sample: bool = False, seed: int = 0, cache: bool = True,
             stop: Sequence[str] = (), **gen_kwargs) -> list[str]:
    """Complete already-rendered prompts, in batches with left padding; greedy by default.

    Prompts are sorted by length so each batch pads little; outputs come back in input order.
    The model is put in eval mode (after ``trainer.train()`` it is left in training mode,
    and dropout then garbles generations). Greedy replies of a loaded model come from the run's cache
    when it has them (``settings.eval_cache``); ``cache=False`` always generates (what a timing measures). Under bf16
    autocast the key/value cache is ``models.kv_cache``'s (``past_key_values=None``: transformers' own).
    ``stop``: texts a reply also ends at besides EOS (a template's end of turn that is not a token of this
    tokenizer, ``data.stops``): generation stops there (transformers' ``StopStringCriteria``) and the reply is cut before
    it.
    """
    model.eval()
    stop = sorted(set(stop))
    if do_sample or not cache:
        return _generate(model, tokenizer, prompts, max_new_tokens, batch_size, precision, do_sample, seed, stop,
                         **gen_kwargs)
    return memo("generate", model, {"prompts": list(prompts), "max_new_tokens": max_new_tokens, "batch_size": batch_size,
                                    "precision": precision, "kwargs": gen_kwargs, **({"stop": stop} if stop else {})},
                lambda: _generate(model, tokenizer, prompts, max_new_tokens, batch_size, precision, False, seed, stop,
                                  **gen_kwargs))


def cut_at(text: str, stop: Sequence[str]) -> str:
    """``text`` up to the first of ``stop`` in it (all of it when none is)."""
    return text[:min([i for i in (text.find(s) for s in stop) if i >= 0], default=len(text))]


@timing.timed("generation")
@torch.no_grad()
def _generate(model, tokenizer, prompts, max_new_tokens, batch_size, precision, do_sample, seed, stop=(),
              **gen_kwargs):
    device = next(model.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[str] = [""] * len(prompts)
    if stop:  # built once for every batch (it reads the whole vocabulary: ~0.3 s)
        from transformers import StoppingCriteriaList, StopStringCriteria

        gen_kwargs["stopping_criteria"] = StoppingCriteriaList([StopStringCriteria(tokenizer, list(stop))])
    if do_sample:
        torch.manual_seed(seed)
    with models.padding_side(tokenizer, "left"):
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            enc = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True,
                            add_special_tokens=False).to(device)
            cache = models.kv_cache(model, precision) if "past_key_values" not in gen_kwargs else None
            with models.autocast(model, precision):
                ids = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=do_sample,
                                     pad_token_id=tokenizer.pad_token_id,
                                     **({"past_key_values": cache} if cache is not None else {}), **gen_kwargs)
            texts = tokenizer.batch_decode(ids[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
            for i, t in zip(idx, texts):
                out[i] = cut_at(t, stop).strip()
    return out


@timing.timed("scoring")
@torch.no_grad()
def batched(model, tokenizer, texts: list[str], fn, precision: str, batch_size: int = 16, side: str = "right",
            **tokenize) -> np.ndarray:
    """``fn(model, encoded_batch) -> (batch x d) tensor`` over ``texts`` in length-sorted batches (little padding),
    under the precision's autocast; rows come back in input order as float32 (n x d)."""
    model.eval()
    device = next(model.parameters()).device
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = None
    with models.padding_side(tokenizer, side):
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            enc = tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True, **tokenize).to(device)
            with models.autocast(model, precision):
                rows = fn(model, enc).float().cpu().numpy()
            out = np.zeros((len(texts), rows.shape[1]), dtype=np.float32) if out is None else out
            out[idx] = rows
    return out if out is not None else np.zeros((0, 0), dtype=np.float32)


def perplexity(model, tokenizer, texts: list[str], batch_size: int = 8, max_length: int = 512,
               precision: str = "fp32") -> float:
    """Token-weighted perplexity of ``texts`` (of a loaded model: from the run's cache when it has it)."""
    model.eval()
    return memo("perplexity", model, {"texts": list(texts), "batch_size": batch_size, "max_length": max_length,
                                      "precision": precision},
                lambda: _perplexity(model, tokenizer, texts, batch_size, max_length, precision))


@timing.timed("scoring")
@torch.no_grad()
def _perplexity(model, tokenizer, texts, batch_size, max_length, precision) -> float:
    device = next(model.parameters()).device
    nll, n = 0.0, 0
    with models.padding_side(tokenizer, "right"):
        for start in range(0, len(texts), batch_size):
            enc = tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True, truncation=True,
                            max_length=max_length).to(device)
            labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
            with models.autocast(model, precision):
                logits = model(**enc).logits.float()
            logits = logits[:, -labels.shape[1]:]  # prompt-learning methods prepend virtual tokens
            loss = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1), reduction="sum", ignore_index=-100)
            nll += loss.item()
            n += int((labels[:, 1:] != -100).sum())
    return math.exp(nll / max(n, 1))


# ---------------------------------------------------------------- scoring continuations from a key/value cache

def padded(seqs: Sequence[Sequence[int]], pad: int, device, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id lists as one (rows x longest) tensor padded with ``pad`` on the left or the right, and its mask
    (1 on real tokens), on ``device``."""
    width = max(len(x) for x in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, x in enumerate(seqs):
        cols = slice(width - len(x), width) if left else slice(0, len(x))
        ids[r, cols], mask[r, cols] = torch.tensor(x, dtype=torch.long), 1
    return ids.to(device), mask.to(device)


@torch.no_grad()
def prefill(model, ids: torch.Tensor, mask: torch.Tensor, precision: str = "fp32"):
    """The key/value cache of ``ids`` (rows x width, padded on the left; ``mask``: 1 on real tokens, each row's
    positions counted from its first real token), kept the way ``models.kv_cache`` keeps it, under the precision's
    autocast; None for no tokens. Continue it with :func:`continue_from`."""
    if ids.shape[1] == 0:
        return None
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with models.autocast(model, precision):
        return model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1,
                     past_key_values=models.kv_cache(model, precision)).past_key_values


@torch.no_grad()
def continue_from(model, cache, cache_mask: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor,
                  precision: str = "fp32", logits_to_keep: int = 0) -> torch.Tensor:
    """The logits of ``ids`` (rows x width, padded on either side; ``mask``: 1 on real tokens) read after ``cache``
    (:func:`prefill`'s, one row per row of ``ids``; ``cache_mask``: its mask, rows x cached width; ``cache`` None:
    nothing before them), under the precision's autocast. Each row's positions go on from its cached tokens; padding
    on the left takes the first position (masked). The cache grows by ``ids``: copy it first to keep it."""
    start = cache_mask.sum(-1, keepdim=True)
    lead = (mask.cumsum(-1) == 0).sum(-1, keepdim=True)  # padding on the left of each row
    pos = start + (torch.arange(ids.shape[1], device=ids.device) - lead).clamp(min=0)
    with models.autocast(model, precision):
        return model(input_ids=ids, attention_mask=torch.cat([cache_mask, mask], 1), position_ids=pos,
                     past_key_values=cache, use_cache=cache is not None, logits_to_keep=logits_to_keep).logits


def continuation_logprobs(model, tokenizer, prompts: Sequence[str], continuations: Sequence[Sequence[str]],
                          precision: str = "fp32", batch_size: int = 16, prefilled: Callable | None = None,
                          noun: str = "continuation") -> list[list[float]]:
    """Sum of the log-probabilities of each continuation's tokens after its prompt: one float per
    ``continuations[i]`` after ``prompts[i]`` (higher: more likely). Prompt and continuation are tokenized separately
    (no special tokens added) and concatenated, as generation would continue the prompt.

    ``batch_size`` prompts at a time (sorted by token length, left-padded) fill a key/value cache with all their
    tokens but the last (:func:`prefill`); the continuations (right-padded, each row its true positions) continue the
    cache after the last prompt token (:func:`continue_from`), the cache's rows copied once per continuation: a
    prompt with four candidates is read once, not four times. ``prefilled(batch, ids, mask, cache)``: called for
    every batch of prompts (indices into ``prompts``, left-padded ids and mask) with their cache before the
    continuations extend it (copy it to keep it), prompts without continuations included — ``knowledge.read_prompts``
    generates its replies from it. ``noun`` names a continuation in errors."""
    if len(prompts) != len(continuations):
        raise ValueError(f"{len(prompts)} prompts for {len(continuations)} {noun} lists")
    p_ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    c_ids: list[list[list[int]]] = []
    for i, conts in enumerate(continuations):
        if not p_ids[i]:
            raise ValueError(f"prompt {i} is empty: its {noun}s need a prompt to continue")
        c_ids.append([])
        for j, c in enumerate(conts):
            ids = tokenizer(str(c), add_special_tokens=False)["input_ids"]
            if not ids:
                raise ValueError(f"{noun} {j} of prompt {i} is empty")
            c_ids[i].append(ids)
    scores = [[0.0] * len(conts) for conts in continuations]
    todo = sorted((i for i in range(len(prompts)) if c_ids[i] or prefilled is not None), key=lambda i: len(p_ids[i]))
    if not todo:
        return scores
    model.eval()
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    with torch.no_grad(), models.autocast(model, precision):
        for s in range(0, len(todo), batch_size):
            batch = todo[s:s + batch_size]
            ids, mask = padded([p_ids[i] for i in batch], pad, device, left=True)
            cache = prefill(model, ids[:, :-1], mask[:, :-1], precision)  # every token but the last
            if prefilled is not None:
                prefilled(batch, ids, mask, cache)
            rows = [(b, j) for b, i in enumerate(batch) for j in range(len(c_ids[i]))]
            if not rows:
                continue
            pick = torch.tensor([b for b, _ in rows], device=device)
            if cache is not None:
                cache.batch_select_indices(pick)
            # the last prompt token, then the continuation: position t predicts continuation token t
            c_tok, c_mask = padded([ids[b, -1:].tolist() + c_ids[batch[b]][j] for b, j in rows], pad, device, left=False)
            logits = continue_from(model, cache, mask[pick][:, :-1], c_tok, c_mask, precision).float()
            pred = torch.log_softmax(logits[:, :-1], dim=-1)
            lp = pred.gather(2, c_tok[:, 1:, None])[:, :, 0] * c_mask[:, 1:]
            for r, (b, j) in enumerate(rows):
                scores[batch[b]][j] = float(lp[r].sum())
    return scores


# ---------------------------------------------------------------- forgetting probes

def general_qa(model, tokenizer, precision: str = "fp32", max_new_tokens: int = 32, batch_size: int = 16,
               template: str = "chat") -> tuple[float, list[str]]:
    """Share of ``corpora.GENERAL_QA`` answered correctly (any accepted answer contained in the reply)."""
    prompts = [data.render_prompt([{"role": "user", "content": q}], tokenizer, template) for q, _ in corpora.GENERAL_QA]
    outs = generate(model, tokenizer, prompts, max_new_tokens, batch_size, precision, stop=data.stops(template, tokenizer))
    ok = [any(tasks.check_contains(o, a) for a in accepted) for o, (_, accepted) in zip(outs, corpora.GENERAL_QA)]
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
    ppl_general and general_qa; with ``domain_texts`` also ppl_domain. Replies end where the template that rendered
    ``test`` ends a turn (``data.stops_of``).
    """
    outs = generate(model, tokenizer, [r["prompt"] for r in test], max_new_tokens, batch_size, precision,
                    stop=data.stops_of(test, tokenizer))
    task_score, passed, by_task = tasks.score_records(outs, test, check)
    res = {"task_score": task_score, "answer_accuracy": tasks.answer_accuracy(outs, [r["reference"] for r in test]),
           "by_task": by_task, "outputs": outs, "passed": passed}
    if probe:
        res.update(forgetting_probe(model, tokenizer, precision))
    if domain_texts:
        res["ppl_domain"] = perplexity(model, tokenizer, domain_texts, precision=precision)
    return res


# ---------------------------------------------------------------- the next word

def word_ids(tokenizer, words: list[str]) -> list[int]:
    """The first token of each word (they must differ: their probabilities are compared; 06's label words, the judge's A and B)."""
    ids = [tokenizer(w, add_special_tokens=False)["input_ids"][0] for w in words]
    if len(set(ids)) < len(ids):
        raise ValueError(f"label words {words} start with the same token; set label_words to words that start "
                         "differently")
    return ids


def shared_prefix(seqs: list[list[int]]) -> int:
    """Length of the token prefix every sequence shares, leaving each at least one token of its own."""
    if not seqs:
        return 0
    n = min(len(s) for s in seqs) - 1
    first = seqs[0]
    for s in seqs[1:]:
        k = 0
        while k < n and s[k] == first[k]:
            k += 1
        n = k
    return max(n, 0)


@torch.no_grad()
def next_word_probs(model, tokenizer, prompts: list[str], ids: list[int], precision: str, batch_size: int = 16) -> np.ndarray:
    """Softmax over the words' first tokens (``word_ids``) of the next-token distribution after each prompt (06's
    zero- and few-shot rows, the judge's ``judge_verdict: probability``).

    The prompts' shared token prefix (the chat template's system turn, the few-shot examples) runs once and its
    key/value cache (``evaluate.prefill``) serves every batch, so ``few_shot`` costs about what ``zero_shot`` does;
    the rest of each prompt is left-padded after the prefix and continues a copy of it (``evaluate.continue_from``:
    masked, positions counted from the prefix)."""
    model.eval()
    device = next(model.parameters()).device
    seqs = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in prompts]
    out = np.zeros((len(seqs), len(ids)), dtype=np.float32)
    n = shared_prefix(seqs)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    prefix = None
    if n and seqs:
        prefix = prefill(model, torch.tensor([seqs[0][:n]], device=device),
                                  torch.ones((1, n), dtype=torch.long, device=device), precision)
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        input_ids, mask = padded([seqs[i][n:] for i in idx], pad, device, left=True)
        cache = None
        if prefix is not None:
            cache = copy.deepcopy(prefix)
            cache.batch_repeat_interleave(len(idx))
        with _head_input(model) as seen:
            continue_from(model, cache, torch.ones(len(idx), n, dtype=mask.dtype, device=device), input_ids, mask,
                          precision, logits_to_keep=1)
        out[idx] = torch.softmax(_word_logits(model, seen[-1][:, -1], ids), -1).cpu().numpy()
    return out


@contextlib.contextmanager
def _head_input(model):
    """The output head's inputs (the last position's final hidden state) while the block runs, in a list."""
    seen = []
    hook = model.get_output_embeddings().register_forward_hook(lambda _m, args, _out: seen.append(args[0]))
    try:
        yield seen
    finally:
        hook.remove()


def _word_logits(model, hidden: torch.Tensor, ids: list[int]) -> torch.Tensor:
    """The logits of the words ``ids`` from the final hidden states, in fp32: under bf16 autocast the head's logits
    are rounded to about 0.1 at their usual size (two prompts' probabilities of the same word came out equal when
    they differed); only these rows of the head are computed again."""
    head = model.get_output_embeddings()
    bias = None if getattr(head, "bias", None) is None else head.bias[ids].float()
    return torch.nn.functional.linear(hidden.float(), head.weight[ids].float(), bias)
