"""Tasks and answers: the built-in demo tasks, the checks that score a reply, and the one reply parser.

A leaf module (it imports no other nbft module), so every stage reads a reply the same way:

- ``answer_of(reply)`` — *the answer inside a reply*: a JSON object's ``"answer"`` field (also inside a
  ```` ``` ```` fence, or from a JSON reply cut off mid-answer), a bare JSON string or number, else the reply.
  ``with_answer`` is its inverse (put another answer into the same wrapper).
- ``normalize(text)`` — how answers are compared: lowercase, thousands separators dropped, other
  punctuation a space, articles dropped.
- ``CHECKS`` — name -> ``check(reply, reference) -> bool``: ``json_answer`` (the demo format), ``exact``,
  ``contains`` (the reference as whole words in the reply's answer) and ``plain`` (the reference as whole
  words in a reply that is not JSON). Records name their check.
- ``TASKS`` — one row per built-in demo task: ``Task(name, generate, check, note)``. Adding a task is adding
  a row (and, if it needs one, a check). ``json_followup`` is a two-turn chat whose second reply can only be
  right after reading the first (``FOLLOWUPS``, ``followup_reference``).

The forgetting probe and task scores (02/03), the RAG-vs-FT scorer (05) and the RLHF judge (04) all
call ``answer_of``/``contains``, so they cannot disagree about the same reply.
"""
from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from typing import Callable

# ---------------------------------------------------------------- answers

_THOUSANDS = re.compile(r"(?<=\d)[,\u00a0\u202f\u2009](?=\d{3}(?!\d))")
_PUNCT = re.compile(r"[^\w\s]|_")
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_FENCE = re.compile(r"```(?:json)?\s*(.*?)\s*```", re.S)
_CUT_ANSWER = re.compile(r'"answer"\s*:\s*"([^"]*)')


def normalize(text) -> str:
    """Lowercase; thousands separators dropped ("45,000" -> "45000"); other punctuation becomes a
    space (so "1597." and "Zufenlo's" keep their words); articles dropped; spaces collapsed."""
    s = _THOUSANDS.sub("", str(text)).lower()
    s = _PUNCT.sub(" ", s)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def answer_of(reply) -> str:
    """The answer in a reply: a JSON object's ``"answer"`` field (also inside a ``` fence; from a JSON
    reply cut off mid-answer, what is there), a bare JSON string or number, else the reply itself
    (stripped)."""
    s = str(reply).strip()
    m = _FENCE.fullmatch(s)
    s = m.group(1) if m else s
    try:
        obj = json.loads(s)
    except ValueError:
        cut = _CUT_ANSWER.search(s) if s.startswith("{") else None
        return cut.group(1).strip() if cut else str(reply).strip()
    if isinstance(obj, dict) and "answer" in obj:
        return str(obj["answer"]).strip()
    if isinstance(obj, (str, int, float)) and not isinstance(obj, bool):
        return str(obj).strip()
    return str(reply).strip()


def with_answer(reply: str, new_answer: str) -> str:
    """``reply`` with its answer replaced, keeping a JSON wrapper when there is one (the inverse of ``answer_of``)."""
    try:
        obj = json.loads(reply.strip())
    except ValueError:
        return new_answer
    if isinstance(obj, dict) and "answer" in obj:
        obj["answer"] = new_answer
        return json.dumps(obj)
    return new_answer


# ---------------------------------------------------------------- checks

DEMO_TOPICS = ("geography", "math", "language", "science", "time")


def check_json_answer(reply: str, reference: str = "") -> bool:
    """The demo format: exactly one JSON object with keys topic (one of ``DEMO_TOPICS``) and a non-empty answer."""
    try:
        obj = json.loads(reply.strip())
    except ValueError:
        return False
    return (isinstance(obj, dict) and set(obj) == {"topic", "answer"} and obj["topic"] in DEMO_TOPICS
            and isinstance(obj["answer"], str) and obj["answer"].strip() != "")


def check_exact(reply: str, reference: str) -> bool:
    """The reply's answer equals the reference after ``normalize``."""
    ref = normalize(reference)
    return bool(ref) and normalize(answer_of(reply)) == ref


def check_contains(reply: str, reference: str) -> bool:
    """The reference appears as whole words in the reply's answer, both normalized ("0" is not in "10")."""
    ref = normalize(reference)
    return bool(ref) and f" {ref} " in f" {normalize(answer_of(reply))} "


def check_plain(reply: str, reference: str) -> bool:
    """A plain-text reply (not JSON: it does not open with ``{``, ``[`` or a fence) with the reference in it as whole
    words, both normalized: json_followup's second reply ("The topic was geography."), where repeating the JSON
    object that holds the answer is the wrong reply."""
    ref, s = normalize(reference), str(reply).strip()
    return bool(ref) and not s.startswith(("{", "[", "```")) and f" {ref} " in f" {normalize(s)} "


#: name -> check(reply, reference) -> bool. Adding a check is adding a row.
CHECKS: dict[str, Callable[[str, str], bool]] = {
    "json_answer": check_json_answer,
    "exact": check_exact,
    "contains": check_contains,
    "plain": check_plain,
}


def resolve_check(name: str, records: list[dict]) -> str:
    """'auto' -> the records' own check ('per-record' when they name several), else 'contains'."""
    if name == "auto":
        names = {r.get("check") for r in records} - {None}
        if len(names) > 1:
            return "per-record"
        name = names.pop() if names else "contains"
    if name not in CHECKS:
        raise ValueError(f"task_check: unknown check {name!r}; use auto or one of {', '.join(CHECKS)}")
    return name


def passes(reply: str, record: dict, check: str = "per-record") -> bool:
    """Does ``reply`` pass ``check`` against the record's reference (``per-record``: the record's own check,
    else ``contains``)?"""
    name = record.get("check", "contains") if check == "per-record" else check
    return bool(CHECKS[name](reply, record["reference"]))


def score_records(outputs: list[str], records: list[dict], check: str = "auto") -> tuple[float, list[bool], dict]:
    """Score outputs against records: one check for all, or each record's own ('auto').

    Returns (mean pass rate, per-example verdicts, {task: pass rate}).
    """
    check = resolve_check(check, records) if check == "auto" else check
    passed = [passes(o, r, check) for o, r in zip(outputs, records)]
    by_task: dict[str, list[bool]] = {}
    for ok, r in zip(passed, records):
        by_task.setdefault(r.get("task", "task"), []).append(ok)
    return mean(passed), passed, {t: mean(v) for t, v in by_task.items()}


def answer_accuracy(outputs: list[str], references: list[str]) -> float:
    """Share of outputs whose answer contains the reference (knowledge, not format)."""
    return mean([check_contains(o, r) for o, r in zip(outputs, references)])


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else float("nan")


# ---------------------------------------------------------------- the built-in demo tasks

DEMO_NOTE = (
    "json_qa, the default task, teaches one behaviour the base model does not show: reply with exactly one JSON "
    'object {"topic": <geography|math|language|science|time>, "answer": <short answer>} and nothing else.'
)

_CAPITALS = [
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Japan", "Tokyo"),
    ("Egypt", "Cairo"), ("Canada", "Ottawa"), ("Australia", "Canberra"), ("Brazil", "Brasilia"),
    ("Argentina", "Buenos Aires"), ("Russia", "Moscow"), ("China", "Beijing"), ("India", "New Delhi"),
    ("Mexico", "Mexico City"), ("Kenya", "Nairobi"), ("Norway", "Oslo"), ("Sweden", "Stockholm"),
    ("Finland", "Helsinki"), ("Poland", "Warsaw"), ("Greece", "Athens"), ("Portugal", "Lisbon"),
    ("Ireland", "Dublin"), ("Austria", "Vienna"), ("Hungary", "Budapest"), ("Peru", "Lima"),
    ("Chile", "Santiago"), ("Thailand", "Bangkok"), ("Vietnam", "Hanoi"), ("Turkey", "Ankara"),
    ("Iran", "Tehran"), ("Cuba", "Havana"), ("Denmark", "Copenhagen"), ("Belgium", "Brussels"),
    ("Netherlands", "Amsterdam"), ("Switzerland", "Bern"), ("South Korea", "Seoul"), ("Nigeria", "Abuja"),
    ("Morocco", "Rabat"), ("Colombia", "Bogota"), ("Indonesia", "Jakarta"),
]
_CONTINENTS = [
    ("France", "Europe"), ("Kenya", "Africa"), ("Peru", "South America"), ("Japan", "Asia"),
    ("Canada", "North America"), ("Egypt", "Africa"), ("Chile", "South America"), ("India", "Asia"),
    ("Norway", "Europe"), ("Mexico", "North America"), ("Nigeria", "Africa"), ("Thailand", "Asia"),
    ("Brazil", "South America"), ("Poland", "Europe"), ("Vietnam", "Asia"), ("Ghana", "Africa"),
    ("Italy", "Europe"), ("Argentina", "South America"), ("Cuba", "North America"), ("Morocco", "Africa"),
]
_OPPOSITES = [
    ("hot", "cold"), ("big", "small"), ("fast", "slow"), ("happy", "sad"), ("light", "dark"),
    ("early", "late"), ("open", "closed"), ("full", "empty"), ("strong", "weak"), ("high", "low"),
    ("young", "old"), ("rich", "poor"), ("hard", "soft"), ("wet", "dry"), ("loud", "quiet"),
    ("thick", "thin"), ("up", "down"), ("win", "lose"), ("buy", "sell"), ("push", "pull"),
    ("begin", "end"), ("true", "false"), ("heavy", "light"), ("inside", "outside"), ("love", "hate"),
]
_PLURALS = [
    ("child", "children"), ("mouse", "mice"), ("tooth", "teeth"), ("foot", "feet"), ("goose", "geese"),
    ("man", "men"), ("woman", "women"), ("leaf", "leaves"), ("knife", "knives"), ("wolf", "wolves"),
    ("city", "cities"), ("box", "boxes"), ("bus", "buses"), ("baby", "babies"), ("person", "people"),
    ("cactus", "cacti"), ("fish", "fish"), ("sheep", "sheep"), ("ox", "oxen"), ("half", "halves"),
]
_WORDS = ["apple", "river", "mountain", "garden", "pencil", "window", "guitar", "planet", "bridge", "candle",
          "forest", "rocket", "castle", "dragon", "island", "jacket", "ladder", "marble", "needle", "orange",
          "pepper", "rabbit", "silver", "tunnel", "violin", "wallet", "yellow", "zebra", "anchor", "basket"]
_SCIENCE = [
    ("What gas do plants take in from the air to make food?", "carbon dioxide"),
    ("What is the chemical symbol for water?", "H2O"),
    ("What is the chemical symbol for gold?", "Au"),
    ("How many legs does a spider have?", "8"),
    ("How many legs does an insect have?", "6"),
    ("What planet is known as the Red Planet?", "Mars"),
    ("What is the largest planet in the solar system?", "Jupiter"),
    ("What is the closest star to Earth?", "the Sun"),
    ("At what temperature in Celsius does water freeze?", "0"),
    ("At what temperature in Celsius does water boil at sea level?", "100"),
    ("What force pulls objects toward the Earth?", "gravity"),
    ("What organ pumps blood through the body?", "the heart"),
    ("What gas do humans need to breathe?", "oxygen"),
    ("How many planets are in the solar system?", "8"),
    ("What is the hardest natural substance?", "diamond"),
    ("What part of the plant makes food using sunlight?", "the leaf"),
    ("What is the boiling point of water in Fahrenheit?", "212"),
    ("Which planet is closest to the Sun?", "Mercury"),
    ("What do bees make?", "honey"),
    ("What is the largest ocean on Earth?", "the Pacific Ocean"),
    ("What is frozen water called?", "ice"),
    ("How many bones are in the adult human body?", "206"),
    ("What is the chemical symbol for sodium?", "Na"),
    ("What kind of animal is a whale?", "a mammal"),
]
_MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
           "October", "November", "December"]
_DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]


def _demo_facts(rng: random.Random) -> dict[str, list[tuple[str, str]]]:
    """topic -> unique (question, answer) pairs, each phrased one of several ways."""
    pick = lambda forms, **kw: rng.choice(forms).format(**kw)
    geo = [(pick(["What is the capital of {c}?", "Name the capital city of {c}.", "Which city is the capital of {c}?"], c=c), a)
           for c, a in _CAPITALS]
    geo += [(pick(["Which continent is {c} in?", "On what continent is {c}?"], c=c), a) for c, a in _CONTINENTS]
    math, seen = [], set()
    while len(math) < 150:
        a, b, op = rng.randint(2, 60), rng.randint(2, 40), rng.choice("+-*")
        if (a, b, op) in seen or (op == "*" and a * b > 400) or (op == "-" and b > a):
            continue
        seen.add((a, b, op))
        val = {"+": a + b, "-": a - b, "*": a * b}[op]
        word = {"+": "plus", "-": "minus", "*": "times"}[op]
        math.append((pick(["What is {a} {w} {b}?", "Compute {a} {o} {b}.", "Calculate {a} {o} {b}."], a=a, b=b, w=word, o=op), str(val)))
    lang = [(pick(["What is the opposite of '{w}'?", "Give the antonym of '{w}'."], w=w), a) for w, a in _OPPOSITES]
    lang += [(pick(["What is the plural of '{w}'?", "Write the plural form of '{w}'."], w=w), a) for w, a in _PLURALS]
    lang += [(pick(["How many letters are in the word '{w}'?", "Count the letters in '{w}'."], w=w), str(len(w))) for w in _WORDS]
    sci = list(_SCIENCE)
    time_ = [(pick(["How many minutes are in {n} hours?", "Convert {n} hours to minutes."], n=n), str(60 * n)) for n in range(2, 25)]
    time_ += [(pick(["How many days are in {n} weeks?", "Convert {n} weeks to days."], n=n), str(7 * n)) for n in range(2, 20)]
    time_ += [(f"Which month comes after {m}?", _MONTHS[(i + 1) % 12]) for i, m in enumerate(_MONTHS)]
    time_ += [(f"Which day comes after {d}?", _DAYS[(i + 1) % 7]) for i, d in enumerate(_DAYS)]
    return {"geography": geo, "math": math, "language": lang, "science": sci, "time": time_}


def demo_answer(topic: str, answer: str) -> str:
    return json.dumps({"topic": topic, "answer": answer})


def _task_json_qa(rng: random.Random, n: int) -> list[tuple[str, str, str]]:
    facts = _demo_facts(rng)
    pool = [(q, demo_answer(t, a), a) for t in DEMO_TOPICS for q, a in facts[t]]
    rng.shuffle(pool)
    return pool[:n]


_NUM_TEMPLATES = ["Sort these numbers from smallest to largest: {x}", "Put these numbers in ascending order: {x}",
                  "Arrange in increasing order: {x}", "Order the following numbers, lowest first: {x}"]
_UPPER_TEMPLATES = ["Rewrite this in capital letters: {x}", "Convert to upper case: {x}",
                    "Write the following text in all caps: {x}", "Change every letter to uppercase: {x}"]
_COUNT_TEMPLATES = ["How many items are in this list: {x}?", "Count the items: {x}.",
                    "Here is a list: {x}. How many entries does it have?", "Number of words in the list {x}?"]
_REVERSE_TEMPLATES = ["Write these words in reverse order: {x}", "Reverse the order of this list: {x}",
                      "List these from last to first: {x}", "Give the items backwards: {x}"]
_NOUNS = ["apple", "river", "stone", "cloud", "lamp", "horse", "bread", "chair", "tiger", "piano", "ship", "rose",
          "coin", "bottle", "garden", "candle", "mirror", "ladder", "violin", "wheel", "forest", "kettle", "lemon"]


def _unique(rng, n, make):
    out, seen, tries = [], set(), 0
    while len(out) < n and tries < 50 * n:
        tries += 1
        item = make()
        if item[0] not in seen:
            seen.add(item[0])
            out.append(item)
    return out


def _task_sort_numbers(rng, n):
    def make():
        xs = rng.sample(range(1, 100), rng.randint(3, 6))
        ans = ", ".join(map(str, sorted(xs)))
        return rng.choice(_NUM_TEMPLATES).format(x=", ".join(map(str, xs))), ans, ans
    return _unique(rng, n, make)


def _task_uppercase(rng, n):
    def make():
        text = " ".join(rng.sample(_NOUNS, rng.randint(2, 4)))
        return rng.choice(_UPPER_TEMPLATES).format(x=text), text.upper(), text.upper()
    return _unique(rng, n, make)


def _task_count_items(rng, n):
    def make():
        items = rng.sample(_NOUNS, rng.randint(2, 9))
        ans = f"There are {len(items)} items."
        return rng.choice(_COUNT_TEMPLATES).format(x=", ".join(items)), ans, ans
    return _unique(rng, n, make)


def _task_reverse_list(rng, n):
    def make():
        items = rng.sample(_NOUNS, rng.randint(3, 5))
        ans = ", ".join(reversed(items))
        return rng.choice(_REVERSE_TEMPLATES).format(x=", ".join(items)), ans, ans
    return _unique(rng, n, make)


#: json_followup's follow-up questions, phrasing -> the field of the JSON reply just given that it asks for: its
#: topic, or its answer in words. Either way the second reply is right only if it reads the first.
FOLLOWUPS: dict[str, str] = {
    "Which topic was that?": "topic",
    "What topic did that question belong to?": "topic",
    "Name the topic of your last answer.": "topic",
    "Say the answer again, without JSON.": "answer",
    "What was the answer, in plain words?": "answer",
    "Repeat your answer as a sentence, no JSON.": "answer",
}
#: field -> json_followup's second reply (plain text; a sentence, so the reply clears data prep's ``min_tokens``)
FOLLOWUP_REPLIES = {"topic": "The topic was {}.", "answer": "The answer was {}."}


def followup_reference(question: str, reply: str) -> str | None:
    """What a follow-up ``question`` (a key of ``FOLLOWUPS``) asks of the ``reply`` before it: the field it names of
    that reply's JSON object. None where the question is no follow-up or the reply is not one JSON object with that
    field (a follow-up to a reply that gave none has no right answer)."""
    field = FOLLOWUPS.get(str(question).strip())
    try:
        obj = json.loads(str(reply).strip())
    except ValueError:
        return None
    value = obj.get(field) if field and isinstance(obj, dict) else None
    return value.strip() if isinstance(value, str) and value.strip() else None


def _task_json_followup(rng: random.Random, n: int) -> list[tuple[tuple[str, str, str], str, str]]:
    """A json_qa question and its JSON reply, then a follow-up about that reply (``FOLLOWUPS``): the instruction is
    the chat so far (user, assistant, user), the reply a sentence naming the field asked for, the reference that
    field's value."""
    out = []
    for q, reply, _ in _task_json_qa(rng, n):
        followup = rng.choice(list(FOLLOWUPS))
        ref = followup_reference(followup, reply)
        out.append(((q, reply, followup), FOLLOWUP_REPLIES[FOLLOWUPS[followup]].format(ref), ref))
    return out


@dataclass(frozen=True)
class Task:
    """A built-in demo task: ``generate(rng, n)`` makes up to ``n`` distinct (instruction, reply, reference)
    triples; ``check`` names the row of ``CHECKS`` that scores a reply to it. An instruction is the user's message,
    or for a multi-turn task the chat before the reply (a tuple of turns: user, assistant, ..., user)."""

    name: str
    generate: Callable[[random.Random, int], list[tuple[str, str, str]]]
    check: str
    note: str = ""


TASKS: dict[str, Task] = {t.name: t for t in [
    Task("json_qa", _task_json_qa, "json_answer", "a short-answer question; reply with one JSON object {topic, answer}"),
    Task("sort_numbers", _task_sort_numbers, "exact", "sort 3-6 numbers ascending"),
    Task("uppercase", _task_uppercase, "exact", "rewrite 2-4 words in capital letters"),
    Task("count_items", _task_count_items, "exact", "count the items of a list: 'There are N items.'"),
    Task("reverse_list", _task_reverse_list, "exact", "list 3-5 words from last to first"),
    Task("json_followup", _task_json_followup, "plain", "two turns: a json_qa question answered in JSON, then a "
         "follow-up about that reply (its topic, or its answer without JSON), answered in a plain sentence"),
]}


def chat(instruction: str | tuple, reply: str) -> list[dict]:
    """A task row's (instruction, reply) as chat messages: the instruction's turns (one user message, or user and
    assistant alternating) and the reply."""
    turns = (instruction,) if isinstance(instruction, str) else tuple(instruction)
    return [{"role": ("user", "assistant")[i % 2], "content": c} for i, c in enumerate(turns)] + [
        {"role": "assistant", "content": reply}]


def demo_dataset(n: int = 320, seed: int = 0, tasks: list[str] | tuple = ("json_qa",)) -> list[dict]:
    """A deterministic instruction dataset in chat ``messages`` form.

    ``n`` clean examples split evenly over ``tasks`` (one task: single-task; several:
    a FLAN-style mix, each task with several phrasings of its instruction), plus planted
    problems a cleaning step must catch: about 4% near-duplicates (case/whitespace
    changes), a few empty, too-short and over-long replies, and, in json_qa, about 10%
    replies off the target format (plain prose).
    """
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks:
        raise ValueError(f"demo_tasks: unknown task(s) {unknown}; choose from {', '.join(TASKS)}")
    rng = random.Random(seed)
    per_task = [n // len(tasks) + (i < n % len(tasks)) for i in range(len(tasks))]
    recs = []
    for task, k in zip(tasks, per_task):
        row = TASKS[task]
        rows = row.generate(rng, k + 9)  # 9 spare instructions for the planted junk below
        if len(rows) < k + 9:
            raise ValueError(f"n_examples: the demo task {task} has at most {len(rows) - 9} distinct examples, asked for {k}")
        clean = [{"messages": chat(q, r), "reference": ref, "check": row.check, "task": task} for q, r, ref in rows[:k]]
        for q, _, ref in rows[k:k + 9:3] if task == tasks[0] else []:  # junk: empty, too short, too long
            for reply in ["", "{", "ok " * 400]:
                clean.append({"messages": chat(q, reply), "reference": ref, "check": row.check, "task": task})
        if task == "json_qa":
            for r in rng.sample(clean[:k], max(1, k // 10)):  # off-format: right answer, wrong form
                r["messages"] = [r["messages"][0], {"role": "assistant", "content": f"The answer is {r['reference']}."}]
        recs += clean
    for r in rng.sample(recs[: n], max(1, n // 25)):  # near-duplicates
        q = r["messages"][0]["content"]
        recs.append({**r, "messages": [{"role": "user", "content": "  " + q.upper() + " "}, *r["messages"][1:]]})
    rng.shuffle(recs)
    return recs
