"""A model judge of paired replies: which of two replies better answers a prompt, given its reference.

For each held-out example (prompt, reference, the tuned model's reply, the base model's reply) the judge is asked
twice, the two replies swapped (``pairwise``), so a judge that favours a position cannot favour a model: a verdict
the two orders agree on counts, one they disagree on is a tie (``combine``). The judge answers A, B or tie
(``parse``: the first of those words in its reply; anything else is counted as unparsed and taken as a tie). With
``judge_verdict: probability`` the judge's next-token probability of A against B is read instead, and the two orders'
probabilities are averaged (``combine_probabilities``): a judge that always answers A (the built-in 135M model) still
ranks the replies by how much less it prefers slot A when the other reply sits there, and every comparison is
decided.
Reported (``compare``): the win rate of the tuned replies over the base ones (a tie counts half) with a bootstrap 95%
interval (``scoring.summary``), the judge's agreement with itself across the two orders (of the examples whose
two answers both parsed), its position bias (of the
answers that picked a reply, the share that picked the first slot: 0.5 is none), and its agreement with each
reference metric of ``scoring.table`` (of the examples where both the judge and the metric pick a side, the share
where they pick the same one). The per-example verdicts ("after", "before", "tie") are kept for an error browser.

The judge is a model spec (``models.resolve``: built-in name, folder, hub id; generated locally in batches with its
chat template, ``evaluate.generate``) or an OpenAI-compatible endpoint (``http://127.0.0.1:PORT/v1``: one
``/chat/completions`` request per question, temperature 0, a few threads). The endpoint client is the standard
library's urllib, not the ``openai`` package: two requests (``GET /models``, ``POST /chat/completions``) need no
dependency; urllib gives the timeout and the error text exactly (the URL named, never the key), and with redirects
refused a bearer key cannot follow a redirect to another host. The API key is read from the environment variable
``judge_api_key_env`` names at each request; it is never stored, shown or written.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import json
import math
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Callable, Sequence

from . import data, evaluate, models, params, scoring, timing

#: tokens the judge may answer with (its verdict is one word)
MAX_TOKENS = 8
#: seconds per endpoint request (a reply of MAX_TOKENS), and for preflight's look at /models
TIMEOUT = 120.0
CHECK_TIMEOUT = 5.0
#: endpoint requests at once
THREADS = 4
#: what each question ends with
QUESTION = "Which reply better answers the prompt, given the reference? Answer with exactly one word: A, B or tie."
#: the first verdict word in a reply: A or B (capitals, as asked), or a word for a tie
_VERDICT = re.compile(r"\b(A|B)\b|\b((?i:tie|tied|equal|equally|same|both|neither))\b")

#: how a verdict is read (``judge_verdict``; ``params.JUDGE_VERDICTS`` copies the names)
VERDICTS = {
    "answer": "the first A / B / tie word of the judge's generated answer (parse); a verdict both orders agree on "
              "counts, the rest are ties",
    "probability": "the judge's next-token probability of A against B in each order, averaged over the two orders "
                   "(A's in one, B's in the other): a position bias cancels and every comparison is decided",
}
#: the endpoint's most likely first tokens asked for (``judge_verdict: probability``)
TOP_LOGPROBS = 10

#: ask(questions) -> one answer per question; a question is a chat (list of {"role", "content"} messages). An answer
#: is the judge's generated text (``judge_verdict: answer``) or its probability of "A" against "B" as the first token
#: (``probability``; None: neither among an endpoint's top tokens)
Ask = Callable[[Sequence[list[dict]]], list]


class JudgeError(RuntimeError):
    """The judge could not be asked (an endpoint that does not answer, or answers an error)."""


# ---------------------------------------------------------------- questions and answers

def prompt_of(rec: dict) -> str:
    """The prompt a held-out record asks: its user turn (a longer conversation: every turn before the reply, with
    its role)."""
    turns = rec.get("messages", [])[:-1]
    if len(turns) == 1:
        return turns[0]["content"]
    if turns:
        return "\n".join(f"{m['role']}: {m['content']}" for m in turns)
    return rec.get("prompt", "")


def question(rubric: str, prompt: str, reference: str, first: str, second: str) -> list[dict]:
    """One question to the judge: the rubric as the system turn; the prompt, reference and both replies (``first``
    in slot A) as the user turn."""
    user = (f"[Prompt]\n{prompt}\n\n[Reference answer]\n{reference}\n\n[Reply A]\n{first}\n\n[Reply B]\n{second}\n\n"
            f"{QUESTION}")
    return [{"role": "system", "content": rubric}, {"role": "user", "content": user}]


def parse(answer: str) -> str | None:
    """"A", "B" or "tie" from a judge's answer (the first such word: "Reply B.", "**A**", "Tie"); None when it has
    none (counted as unparsed, taken as a tie)."""
    m = _VERDICT.search(answer or "")
    return None if m is None else m.group(1) or "tie"


def combine(after_first: Sequence[str], before_first: Sequence[str], reply: dict | None = None, seed: int = 0) -> dict:
    """The judge's raw answers in both orders -> the result ``compare`` returns (see the module's doc).
    ``after_first``: slot A held the tuned reply; ``before_first``: slot A held the base reply. ``reply``:
    ``scoring.table`` on the same examples (for the agreement with each metric)."""
    if len(after_first) != len(before_first):
        raise ValueError(f"{len(after_first)} answers in one order, {len(before_first)} in the other")
    if any(not isinstance(t, str) for t in [*after_first, *before_first]):
        return combine_probabilities(after_first, before_first, reply, seed)
    p1, p2 = [parse(t) for t in after_first], [parse(t) for t in before_first]
    arm1 = [{"A": "after", "B": "before"}.get(v, "tie") for v in p1]
    arm2 = [{"A": "before", "B": "after"}.get(v, "tie") for v in p2]
    verdicts = [a if a == b else "tie" for a, b in zip(arm1, arm2)]
    answers = p1 + p2
    parsed = [(a, b) for a, b, x, y in zip(arm1, arm2, p1, p2) if x is not None and y is not None]
    first, second = answers.count("A"), answers.count("B")
    n = len(verdicts)
    return {
        "win_rate": scoring.summary([{"after": 1.0, "before": 0.0, "tie": 0.5}[v] for v in verdicts], seed),
        "wins": verdicts.count("after"), "losses": verdicts.count("before"), "ties": verdicts.count("tie"),
        "self_agreement": sum(a == b for a, b in parsed) / len(parsed) if parsed else None,
        "position_bias": first / (first + second) if first + second else None,
        "answers": {"first": first, "second": second, "tie": answers.count("tie"),
                    "unparsed": sum(v is None for v in answers)},
        "agreement_with_metrics": agreement(verdicts, reply),
        "n_eval": n, "n_requests": 2 * n,
        "verdicts": verdicts,
        "orders": {"after_first": [v or "?" for v in p1], "before_first": [v or "?" for v in p2]},
        "raw": {"after_first": [t[:200] for t in after_first], "before_first": [t[:200] for t in before_first]},
    }


def combine_probabilities(after_first: Sequence[float | None], before_first: Sequence[float | None],
                          reply: dict | None = None, seed: int = 0) -> dict:
    """``combine`` for ``judge_verdict: probability``: each answer is the judge's probability of "A" against "B"
    (None: unread, taken as 0.5 and counted as unparsed). The tuned reply's preference is the mean of its
    probability in the two orders, (p(A | tuned first) + p(B | base first)) / 2 (the balanced position calibration
    of Wang et al. 2023, "Large Language Models are not Fair Evaluators"): above 0.5 it wins, below it loses, at 0.5
    (the same text twice) a tie. The same keys as ``combine``, the counts read from each answer's more likely slot,
    and "preference" (each example's) and "first_slot_probability" (the mean probability on slot A: 0.5 is no
    position bias) added."""
    q1 = [0.5 if p is None else float(p) for p in after_first]
    q2 = [0.5 if p is None else float(p) for p in before_first]
    pref = [(a + 1.0 - b) / 2 for a, b in zip(q1, q2)]
    verdicts = ["tie" if abs(x - 0.5) < 1e-6 else "after" if x > 0.5 else "before" for x in pref]
    slot = [None if p is None else "A" if p > 0.5 else "B" if p < 0.5 else "tie" for p in [*after_first, *before_first]]
    n = len(verdicts)
    arm1 = [{"A": "after", "B": "before"}.get(v) for v in slot[:n]]
    arm2 = [{"A": "before", "B": "after"}.get(v) for v in slot[n:]]
    both = [(a, b) for a, b in zip(arm1, arm2) if a is not None and b is not None]
    first, second = slot.count("A"), slot.count("B")
    return {
        "win_rate": scoring.summary([{"after": 1.0, "before": 0.0, "tie": 0.5}[v] for v in verdicts], seed),
        "wins": verdicts.count("after"), "losses": verdicts.count("before"), "ties": verdicts.count("tie"),
        "self_agreement": sum(a == b for a, b in both) / len(both) if both else None,
        "position_bias": first / (first + second) if first + second else None,
        "first_slot_probability": sum(q1 + q2) / (2 * n) if n else None,
        "answers": {"first": first, "second": second, "tie": slot.count("tie"),
                    "unparsed": sum(v is None for v in slot)},
        "agreement_with_metrics": agreement(verdicts, reply),
        "n_eval": n, "n_requests": 2 * n, "verdict": "probability",
        "verdicts": verdicts, "preference": pref,
        "orders": {"after_first": [v or "?" for v in slot[:n]], "before_first": [v or "?" for v in slot[n:]]},
        "raw": {"after_first": ["?" if p is None else f"p(A)={p:.3f}" for p in after_first],
                "before_first": ["?" if p is None else f"p(A)={p:.3f}" for p in before_first]},
    }


def agreement(verdicts: Sequence[str], reply: dict | None) -> dict[str, dict]:
    """Per reference metric of ``reply`` (``scoring.table``; a metric with no better direction, such as length, is
    left out): {"agreement": of the examples where the judge picked a winner and the metric differs between the two
    replies, the share where the judge's winner has the better metric (None: no such example), "n_eval": how
    many}."""
    out = {}
    for name, row in (reply or {}).items():
        better = row.get("higher_is_better")
        if better is None:
            continue
        agree = n = 0
        for v, b, a in zip(verdicts, row["scores"]["before"], row["scores"]["after"]):
            if v == "tie" or a == b:
                continue
            n += 1
            agree += v == ("after" if (a > b) == better else "before")
        out[name] = {"agreement": agree / n if n else None, "n_eval": n}
    return out


def pairwise(records: Sequence[dict], after: Sequence[str], before: Sequence[str], ask: Ask,
             rubric: str = params.JUDGE_RUBRIC, reply: dict | None = None, seed: int = 0) -> dict:
    """Ask ``ask`` about every example twice, the tuned reply (``after``) first and then the base reply
    (``before``) first, and ``combine`` the answers."""
    if not len(records) == len(after) == len(before):
        raise ValueError(f"{len(records)} examples, {len(after)} replies after, {len(before)} before")
    firsts = [question(rubric, prompt_of(r), r["reference"], a, b) for r, a, b in zip(records, after, before)]
    seconds = [question(rubric, prompt_of(r), r["reference"], b, a) for r, a, b in zip(records, after, before)]
    answers = list(ask(firsts + seconds)) if records else []
    if len(answers) != 2 * len(records):
        raise JudgeError(f"judge: {len(answers)} answers to {2 * len(records)} questions")
    return combine(answers[:len(records)], answers[len(records):], reply, seed)


# ---------------------------------------------------------------- the endpoint

class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # a bearer key never follows a redirect
        return None


def _opener(url: str):
    host = urllib.parse.urlsplit(url).hostname or ""
    loopback = host in ("localhost", "::1") or host.startswith("127.")
    handlers = [_NoRedirect()] + ([urllib.request.ProxyHandler({})] if loopback else [])  # no proxy for this machine
    return urllib.request.build_opener(*handlers)


def _scrub(text: str, key: str) -> str:
    return text.replace(key, "***") if key else text


@dataclass(frozen=True)
class Endpoint:
    """An OpenAI-compatible endpoint (``url`` ends where ``/models`` and ``/chat/completions`` start). It holds the
    NAME of the variable with the key (``key_env``), never the key."""

    url: str
    model: str = ""
    key_env: str = "OPENAI_API_KEY"
    timeout: float = TIMEOUT

    @property
    def shown(self) -> str:
        return params.endpoint_shown(self.url)

    def call(self, path: str, body: dict | None = None, timeout: float | None = None) -> dict:
        """GET (``body`` None) or POST JSON to ``url/path``; the answer's JSON. Raises JudgeError naming the URL."""
        key = os.environ.get(self.key_env, "") if self.key_env else ""
        headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
        url = f"{self.url.rstrip('/')}/{path}"
        req = urllib.request.Request(url, None if body is None else json.dumps(body).encode(), headers,
                                     method="GET" if body is None else "POST")
        where = params.endpoint_shown(url)
        try:
            with _opener(url).open(req, timeout=timeout or self.timeout) as r:
                text = r.read().decode("utf-8", errors="replace")
        except urllib.error.HTTPError as e:
            detail = " ".join(e.read(300).decode("utf-8", errors="replace").split())
            raise JudgeError(f"judge: {where} answered HTTP {e.code} {e.reason}: {_scrub(detail, key)[:300]}") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", None) or e
            raise JudgeError(f"judge: cannot reach {where} ({_scrub(str(reason), key)[:200]}): is the server "
                             "running at that address?") from None
        try:
            return json.loads(text)
        except ValueError:
            raise JudgeError(f"judge: {where} did not answer JSON (is it an OpenAI-compatible /v1 URL?): "
                             f"{_scrub(' '.join(text.split()), key)[:120]!r}") from None

    def models(self, timeout: float | None = None) -> list[str]:
        """The model names the endpoint lists (``GET /models``)."""
        got = self.call("models", timeout=timeout)
        listed = got.get("data") if isinstance(got, dict) else None
        if not isinstance(listed, list):
            raise JudgeError(f"judge: {self.shown}/models is not an OpenAI-compatible model list")
        return [m["id"] for m in listed if isinstance(m, dict) and isinstance(m.get("id"), str)]

    def model_name(self, timeout: float | None = None) -> str:
        """``model``, or the endpoint's only model when it is ''."""
        if self.model:
            return self.model
        names = self.models(timeout)
        if len(names) != 1:
            raise JudgeError(f"judge_model: {self.shown} serves {len(names)} models "
                             f"({', '.join(names[:5]) or 'none listed'}): name the one to ask in judge_model")
        return names[0]

    def answer(self, model: str, messages: list[dict]) -> str:
        got = self.call("chat/completions", {"model": model, "messages": messages, "temperature": 0,
                                             "max_tokens": MAX_TOKENS})
        try:
            return got["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise JudgeError(f"judge: {self.shown}/chat/completions answered no choices[0].message.content") from None

    def probability(self, model: str, messages: list[dict]) -> float | None:
        """The endpoint's probability of "A" against "B" as its first token (``top_logprobs``; a choice not among
        them is taken at the lowest listed logprob, an upper bound); None when neither is listed."""
        got = self.call("chat/completions", {"model": model, "messages": messages, "temperature": 0, "max_tokens": 1,
                                             "logprobs": True, "top_logprobs": TOP_LOGPROBS})
        try:
            top = got["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
            listed = [(str(t["token"]).strip(), float(t["logprob"])) for t in top]
        except (KeyError, IndexError, TypeError, ValueError):
            raise JudgeError(f"judge: {self.shown}/chat/completions answered no top_logprobs: judge_verdict "
                             "probability needs an endpoint that returns them (llama.cpp's and llama-cpp-python's "
                             "servers do); or set judge_verdict: answer") from None
        lp = {}
        for token, value in listed:
            if token in ("A", "B"):
                lp.setdefault(token, value)
        if not lp:
            return None
        floor = min(v for _, v in listed)
        a, b = lp.get("A", floor), lp.get("B", floor)
        return 1.0 / (1.0 + math.exp(b - a))

    def ask(self, questions: Sequence[list[dict]], verdict: str = "answer") -> list:
        """Every question, ``THREADS`` at a time; answers in order (``verdict`` "probability": ``probability``'s)."""
        model = self.model_name()
        one = self.probability if verdict == "probability" else self.answer
        with timing.section("scoring"), concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
            return list(pool.map(lambda q: one(model, q), questions))


def endpoint(a: params.JudgeArgs) -> Endpoint:
    return Endpoint(params.check_endpoint(a.judge), a.judge_model,
                    params.check_env_name(a.judge_api_key_env))


# ---------------------------------------------------------------- the judge, asked

def describe(a: params.JudgeArgs) -> str:
    """The judge as reports name it: the endpoint URL (scheme, host, port, path) and model, or the model spec."""
    if params.is_endpoint(a.judge):
        return f"{params.endpoint_shown(a.judge)}" + (f" ({a.judge_model})" if a.judge_model else "")
    return a.judge


@contextlib.contextmanager
def asking(a: params.JudgeArgs, device: str = "auto", precision: str = "fp32", batch_size: int = 16,
           verdict: str | None = None):
    """``ask`` for the judge ``a.judge`` names: an endpoint's, or a local model's (loaded for the block, its
    questions rendered with its chat template, in batches of ``batch_size``). ``verdict`` (None:
    ``a.judge_verdict``): "answer" generates each answer (greedy); "probability" reads the next-token probability of
    "A" against "B" after each question (one forward pass, ``evaluate.next_word_probs``) or asks the endpoint for its
    top_logprobs."""
    verdict = verdict or a.judge_verdict
    if params.is_endpoint(a.judge):
        e = endpoint(a)
        yield lambda questions: e.ask(questions, verdict)
        return
    tokenizer = models.load_tokenizer(a.judge)
    with models.loaded(a.judge, device, tokenizer) as model:
        ids = evaluate.word_ids(tokenizer, ["A", "B"]) if verdict == "probability" else None

        def ask(questions):
            prompts = [data.render_prompt(q, tokenizer, "chat") for q in questions]
            if ids is None:
                return evaluate.generate(model, tokenizer, prompts, MAX_TOKENS, batch_size, precision)
            with timing.section("scoring"):
                return [float(p[0]) for p in evaluate.next_word_probs(model, tokenizer, prompts, ids, precision,
                                                                        batch_size)]

        yield ask


def compare(a: params.JudgeArgs, records: Sequence[dict], after: Sequence[str], before: Sequence[str],
            reply: dict | None = None, *, device: str = "auto", precision: str = "fp32", batch_size: int = 16,
            seed: int = 0) -> dict:
    """The judge's verdict on the tuned (``after``) vs the base (``before``) replies to ``records`` (``pairwise``),
    with "judge" (``describe``) and "seconds" added."""
    start = time.perf_counter()
    with asking(a, device, precision, batch_size) as ask:
        out = pairwise(records, after, before, ask, a.judge_rubric, reply, seed)
    return {"judge": describe(a), **out, "seconds": time.perf_counter() - start}


def compare_arms(a: params.JudgeArgs, records: Sequence[dict], before: Sequence[str], arms: dict[str, Sequence[str]],
                 names: Sequence[str] = (), *, device: str = "auto", precision: str = "fp32", batch_size: int = 16,
                 seed: int = 0) -> dict[str, dict]:
    """``compare`` for each compared arm of a stage (02's scopes: ``{arm: replies}``) against the same replies
    ``before``, the judge opened once; its agreement with the reference metrics ``names`` (``scoring.tables``)."""
    tables = scoring.tables(before, arms, records, names) if names else {}
    out = {}
    with asking(a, device, precision, batch_size) as ask:
        for arm, after in arms.items():
            start = time.perf_counter()
            result = pairwise(records, after, before, ask, a.judge_rubric, tables.get(arm), seed)
            out[arm] = {"judge": describe(a), **result, "seconds": time.perf_counter() - start}
    return out


def check(a: params.JudgeArgs, where: str = "") -> None:
    """Preflight: an endpoint must answer ``/models`` (within ``CHECK_TIMEOUT``) and, without ``judge_model``,
    serve one model; a model spec must resolve. Raises ParamError naming ``judge`` and the URL or spec."""
    if not a.judge:
        return
    if params.is_endpoint(a.judge):
        e = endpoint(a)
        try:
            e.model_name(CHECK_TIMEOUT)
        except JudgeError as err:
            raise params.ParamError(f"{where}judge {e.shown}: the endpoint does not answer as an OpenAI-compatible "
                                    f"one: {str(err).removeprefix('judge: ')}") from None
        return
    try:
        models.resolve(a.judge)
    except models.ModelError as err:
        raise params.ParamError(f"{where}judge {params.show(a.judge)}: the model spec does not resolve: {err}") from None


def recorded(result: dict | None) -> dict | None:
    """``compare``'s result as metrics.json keeps it: without the per-example lists (verdicts, orders, raw answers)."""
    if result is None:
        return None
    return {k: v for k, v in result.items() if k not in ("verdicts", "orders", "raw", "preference")}


def rows(result: dict) -> list[dict]:
    """The judge's figures as table rows (what each means beside it)."""
    w = result["win_rate"]
    ci = "" if w["lo"] is None else f"[{w['lo']:.3f}, {w['hi']:.3f}]"
    out = [{"measure": "win rate, tuned over base", "value": w["mean"], "95% CI": ci,
            "meaning": f"{result['wins']} wins, {result['losses']} losses, {result['ties']} ties (a tie counts half)"},
           {"measure": "self-agreement", "value": result["self_agreement"], "95% CI": "",
            "meaning": "share of examples judged the same in both orders, of those with both answers parsed "
                       "(inconsistent ones count as ties)"},
           {"measure": "position bias", "value": result["position_bias"], "95% CI": "",
            "meaning": f"of the answers that picked a reply, the share that picked the first slot (0.5: none); "
                       f"{result['answers']['unparsed']} of {result['n_requests']} answers unparsed (ties)"}]
    if result.get("first_slot_probability") is not None:
        out.append({"measure": "probability on slot A", "value": result["first_slot_probability"], "95% CI": "",
                    "meaning": "the judge's mean probability of A against B over every question (0.5: no position "
                               "bias; judge_verdict probability averages it out over the two orders)"})
    out += [{"measure": f"agreement with {m}", "value": r["agreement"], "95% CI": "",
             "meaning": f"share of the {r['n_eval']} examples where the judge and {m} both pick a side that agree"}
            for m, r in result["agreement_with_metrics"].items()]
    return out


def sentence(result: dict, tuned: str = "the tuned") -> str:
    """One finding: the win rate of ``tuned``'s replies (an arm's name) with its interval, and whether the interval
    excludes 0.5."""
    w = result["win_rate"]
    if w["mean"] is None:
        return f"Judge ({result['judge']}): no examples to judge."
    clear = w["lo"] > 0.5 or w["hi"] < 0.5
    side = f"{tuned} replies" if w["mean"] > 0.5 else "the base replies"
    return (f"Judge ({result['judge']}): win rate of {tuned} over the base replies {w['mean']:.2f} (95% CI "
            f"{w['lo']:.2f} to {w['hi']:.2f}) on {result['n_eval']} held-out examples, both orders asked; "
            + (f"the interval excludes 0.5: the judge prefers {side}." if clear else
               "the interval includes 0.5: no preference shown.")
            + ("" if result["self_agreement"] is None else
               f" Self-agreement across orders {result['self_agreement']:.2f}.")
            + (f" {result['answers']['unparsed']} of {result['n_requests']} answers had no verdict (taken as ties)."
               if result["answers"]["unparsed"] else "")
            + "".join(f" It agrees with {m} on {r['agreement']:.0%} of the {r['n_eval']} examples where both pick a "
                      "side" + (" (below 0.5: it prefers what the metric scores worse)." if r["agreement"] < 0.5
                                else ".")
                      for m, r in result.get("agreement_with_metrics", {}).items() if r["agreement"] is not None))
