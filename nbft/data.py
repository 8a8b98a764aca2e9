"""Datasets: load, normalize formats, render templates, clean, split, save.

Canonical record (what every format is normalized to)::

    {"messages": [{"role": "user", "content": ...}, {"role": "assistant", "content": ...}],
     "reference": "...",   # the expected answer, for scoring (defaults to the reply)
     "check": "..."}        # name of the programmatic task check, if the data has one
    {"text": "..."}        # raw text (continued pretraining)

Rendered record (exactly what the model sees; ``prompt`` + ``completion``)::

    {"prompt": "<|im_start|>user\\n...", "completion": "...<|im_end|>", ...canonical fields}
"""
from __future__ import annotations

import csv
import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

FILE_SUFFIXES = (".jsonl", ".json", ".csv")
FORMATS = ("alpaca", "messages", "sharegpt", "prompt_completion", "text")
TEMPLATES = ("chat", "alpaca")
SPLITS = ("train", "validation", "test")

ALPACA_TEMPLATE = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)


class DataError(ValueError):
    """Bad input data; the message names the file and line or record, and the field."""


# ---------------------------------------------------------------- loading

def _read_jsonl(path: Path) -> list[tuple[str, dict]]:
    out = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path} line {i}: malformed JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(rec, dict):
                raise DataError(f"{path} line {i}: expected a JSON object, got {type(rec).__name__}")
            out.append((f"{path} line {i}", rec))
    return out


def _read_json(path: Path) -> list[tuple[str, dict]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path} line {e.lineno}: malformed JSON ({e.msg})") from None
    if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
        data = next(iter(data.values()))  # {"data": [...]}
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of records")
    out = []
    for i, rec in enumerate(data):
        if not isinstance(rec, dict):
            raise DataError(f"{path} record {i}: expected a JSON object, got {type(rec).__name__}")
        out.append((f"{path} record {i}", rec))
    return out


def _read_csv(path: Path) -> list[tuple[str, dict]]:
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        return [(f"{path} line {reader.line_num}", dict(row)) for row in reader]


def read_file(path: str | Path) -> list[tuple[str, dict]]:
    """Records of a local file as (location, record) pairs; location names file and line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    readers = {".jsonl": _read_jsonl, ".json": _read_json, ".csv": _read_csv}
    if path.suffix not in readers:
        raise DataError(f"{path}: unsupported file type {path.suffix!r} (use {', '.join(FILE_SUFFIXES)})")
    return readers[path.suffix](path)


def is_file_spec(dataset: str) -> bool:
    return dataset.endswith(FILE_SUFFIXES) or "/" in dataset and Path(dataset).exists() or dataset.startswith((".", "/", "~"))


def load_raw(dataset: str, seed: int = 0, n_examples: int = 320, hf_split: str = "train") -> list[tuple[str, dict]]:
    """Raw records from 'demo', a local file or a Hugging Face dataset name."""
    if dataset == "demo":
        return [(f"demo record {i}", r) for i, r in enumerate(demo_dataset(n_examples, seed))]
    if is_file_spec(dataset):
        return read_file(Path(dataset).expanduser())
    try:
        import datasets

        ds = datasets.load_dataset(dataset, split=hf_split)
    except Exception as e:
        raise DataError(
            f"dataset '{dataset}' is not 'demo', not a {'/'.join(FILE_SUFFIXES)} file, and could not be "
            f"loaded from the Hugging Face hub ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
        ) from None
    return [(f"{dataset}[{hf_split}] row {i}", dict(r)) for i, r in enumerate(ds)]


# ---------------------------------------------------------------- formats

# format -> (fields that identify it, fields it requires)
_FORMAT_KEYS = {
    "messages": ({"messages"}, ["messages"]),
    "sharegpt": ({"conversations"}, ["conversations"]),
    "alpaca": ({"instruction"}, ["instruction", "output"]),
    "prompt_completion": ({"prompt", "completion"}, ["prompt", "completion"]),
    "text": ({"text"}, ["text"]),
}
_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                   "system": "system", "model": "assistant", "bot": "assistant"}


def detect_format(rec: dict, where: str = "") -> str:
    for fmt, (marks, _) in _FORMAT_KEYS.items():
        if marks & rec.keys() == marks:
            return fmt
    raise DataError(
        f"{where}: cannot tell the format from fields {sorted(rec)}; expected one of: "
        "messages (role/content), conversations (from/value), instruction/input/output (Alpaca), "
        "prompt/completion, text"
    )


def _require(rec: dict, fields: Iterable[str], fmt: str, where: str) -> None:
    missing = [f for f in fields if f not in rec or rec[f] is None]
    if missing:
        raise DataError(f"{where}: missing required field(s) {', '.join(repr(m) for m in missing)} "
                        f"for {fmt} format (record has: {', '.join(sorted(rec)) or 'nothing'})")


def _check_messages(msgs: Any, where: str, key: str) -> list[dict]:
    if not isinstance(msgs, list) or not msgs:
        raise DataError(f"{where}: field '{key}' must be a non-empty list of messages")
    for j, m in enumerate(msgs):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise DataError(f"{where}: {key}[{j}] needs fields 'role' and 'content'")
    return [{"role": str(m["role"]), "content": str(m["content"])} for m in msgs]


def normalize_record(rec: dict, where: str, fmt: str = "auto") -> dict:
    """One raw record -> canonical form (see module docstring)."""
    fmt = detect_format(rec, where) if fmt == "auto" else fmt
    if fmt not in _FORMAT_KEYS:
        raise DataError(f"data_format: unknown format {fmt!r}; use auto or one of {', '.join(FORMATS)}")
    _require(rec, _FORMAT_KEYS[fmt][1], fmt, where)
    if fmt == "text":
        return {"text": str(rec["text"])}
    if fmt == "messages":
        msgs = _check_messages(rec["messages"], where, "messages")
    elif fmt == "sharegpt":
        conv = rec["conversations"]
        if not isinstance(conv, list) or not conv:
            raise DataError(f"{where}: field 'conversations' must be a non-empty list")
        msgs = []
        for j, m in enumerate(conv):
            if not isinstance(m, dict) or "from" not in m or "value" not in m:
                raise DataError(f"{where}: conversations[{j}] needs fields 'from' and 'value'")
            role = _SHAREGPT_ROLES.get(str(m["from"]).lower())
            if role is None:
                raise DataError(f"{where}: conversations[{j}].from: unknown speaker {m['from']!r}")
            msgs.append({"role": role, "content": str(m["value"])})
    elif fmt == "alpaca":
        user = str(rec["instruction"])
        if rec.get("input"):
            user += "\n\n" + str(rec["input"])
        msgs = [{"role": "user", "content": user}, {"role": "assistant", "content": str(rec["output"])}]
    else:  # prompt_completion, plain strings or message lists
        p, c = rec["prompt"], rec["completion"]
        msgs = (_check_messages(p, where, "prompt") if isinstance(p, list) else [{"role": "user", "content": str(p)}])
        msgs += (_check_messages(c, where, "completion") if isinstance(c, list) else [{"role": "assistant", "content": str(c)}])
    if msgs[-1]["role"] != "assistant":
        raise DataError(f"{where}: the last message must be the assistant's reply (got role {msgs[-1]['role']!r})")
    out = {"messages": msgs, "reference": str(rec.get("reference", msgs[-1]["content"]))}
    if rec.get("check"):
        out["check"] = str(rec["check"])
    return out


def normalize(raw: list[tuple[str, dict]], fmt: str = "auto") -> list[dict]:
    return [normalize_record(rec, where, fmt) for where, rec in raw]


# ---------------------------------------------------------------- templates

def render_prompt(messages: list[dict], tokenizer, template: str = "chat") -> str:
    """The prompt text for ``messages`` (without the reply), ending where the reply starts."""
    if template == "chat":
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    if template == "alpaca":
        instruction = "\n\n".join(m["content"] for m in messages if m["role"] != "assistant")
        return ALPACA_TEMPLATE.format(instruction=instruction)
    raise DataError(f"template: unknown template {template!r}; use one of {', '.join(TEMPLATES)}")


def render(rec: dict, tokenizer, template: str = "chat") -> dict:
    """Canonical -> {'prompt', 'completion'} exactly as trained on (completion ends with EOS)."""
    eos = tokenizer.eos_token or ""
    if "text" in rec:
        return {**rec, "prompt": "", "completion": rec["text"] + eos}
    prompt = render_prompt(rec["messages"][:-1], tokenizer, template)
    return {**rec, "prompt": prompt, "completion": rec["messages"][-1]["content"] + eos}


# ---------------------------------------------------------------- cleaning and splitting

def _key(rec: dict) -> str:
    parts = [rec["text"]] if "text" in rec else [f"{m['role']}: {m['content']}" for m in rec["messages"]]
    return "\n".join(re.sub(r"\s+", " ", t).strip().lower() for t in parts)


def dedup(records: list[dict]) -> tuple[list[dict], int]:
    """Drop exact duplicates (case- and whitespace-insensitive); keep the first."""
    seen, out = set(), []
    for r in records:
        k = _key(r)
        if k not in seen:
            seen.add(k)
            out.append(r)
    return out, len(records) - len(out)


def _reply(rec: dict) -> str:
    return rec.get("text") or rec["messages"][-1]["content"]


def quality_filter(rendered: list[dict], tokenizer, min_tokens: int, max_tokens: int) -> tuple[list[dict], dict[str, int]]:
    """Drop empty, too-short (reply tokens) and too-long (prompt+reply tokens) examples.

    Returns kept records (with ``n_tokens``) and {filter: number removed}, each record
    counted under the first filter that removes it.
    """
    removed = {"empty": 0, "too_short": 0, "too_long": 0}
    kept = []
    for r in rendered:
        reply = _reply(r).strip()
        if not reply or ("messages" in r and not any(m["content"].strip() for m in r["messages"][:-1])):
            removed["empty"] += 1
            continue
        if len(tokenizer(reply, add_special_tokens=False)["input_ids"]) < min_tokens:
            removed["too_short"] += 1
            continue
        n = len(tokenizer(r["prompt"] + r["completion"], add_special_tokens=False)["input_ids"])
        if n > max_tokens:
            removed["too_long"] += 1
            continue
        kept.append({**r, "n_tokens": n})
    if rendered and not kept:
        raise DataError(f"the quality filters removed all {len(rendered)} examples ({removed}); "
                        f"check min_tokens={min_tokens} and max_tokens={max_tokens}")
    return kept, removed


def split(records: list[dict], validation_fraction: float, test_fraction: float, seed: int) -> dict[str, list[dict]]:
    if not 0 <= validation_fraction < 1 or not 0 <= test_fraction < 1 or validation_fraction + test_fraction >= 1:
        raise DataError("validation_fraction and test_fraction must be in [0, 1) and sum to less than 1")
    idx = list(range(len(records)))
    random.Random(seed).shuffle(idx)
    n_test = round(len(idx) * test_fraction)
    n_val = round(len(idx) * validation_fraction)
    parts = {"test": idx[:n_test], "validation": idx[n_test:n_test + n_val], "train": idx[n_test + n_val:]}
    return {name: [records[i] for i in sorted(parts[name])] for name in SPLITS}


def token_stats(records: list[dict]) -> dict[str, float]:
    lens = sorted(r["n_tokens"] for r in records)
    if not lens:
        return {"n": 0}
    q = lambda f: lens[min(len(lens) - 1, int(f * len(lens)))]
    return {"n": len(lens), "min": lens[0], "median": q(0.5), "p95": q(0.95), "max": lens[-1],
            "mean": round(sum(lens) / len(lens), 1)}


# ---------------------------------------------------------------- the whole chain

@dataclass
class Prepared:
    splits: dict[str, list[dict]]
    n_raw: int
    n_removed_duplicates: int
    removed_by_filter: dict[str, int] = field(default_factory=dict)

    @property
    def n_removed_filtered(self) -> int:
        return sum(self.removed_by_filter.values())

    def counts(self) -> dict[str, int]:
        return {f"n_{s}": len(self.splits[s]) for s in SPLITS}


def prepare(p, tokenizer) -> Prepared:
    """Every step of 01_data_prep in order, for notebooks that run without it.

    ``p`` is a :class:`nbft.params.DataPrepParams`.
    """
    raw = load_raw(p.dataset, p.seed, p.n_examples, p.hf_split)
    if p.max_records:
        raw = raw[: p.max_records]
    records = normalize(raw, p.data_format)
    n_dup = 0
    if p.dedup:
        records, n_dup = dedup(records)
    rendered = [render(r, tokenizer, p.template) for r in records]
    kept, removed = quality_filter(rendered, tokenizer, p.min_tokens, p.max_tokens)
    return Prepared(split(kept, p.validation_fraction, p.test_fraction, p.seed), len(raw), n_dup, removed)


def for_stage(run, p, tokenizer) -> tuple[dict[str, list[dict]], str]:
    """The prepared splits a downstream notebook trains on, and where they came from.

    In a pipeline run, 01_data_prep's saved splits; on its own, the same chain run
    here with 01_data_prep's defaults (and this notebook's common parameters).
    """
    from . import params

    up = run.upstream("01_data_prep")
    if up is not None and (up / "train.jsonl").is_file():
        return load_splits(up), f"01_data_prep artifacts in this run ({up})"
    common = {k: getattr(p, k) for k in params.common_names()}
    prepared = prepare(params.DataPrepParams(**common), tokenizer)
    return prepared.splits, "built here with 01_data_prep's default parameters (no 01_data_prep in this run)"


def save_splits(splits: dict[str, list[dict]], folder: str | Path, card: dict | None = None) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, recs in splits.items():
        tmp = folder / f".{name}.jsonl.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            for r in recs:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        tmp.replace(folder / f"{name}.jsonl")
    if card is not None:
        (folder / "data_card.json").write_text(json.dumps(card, indent=1, ensure_ascii=False))
    return folder


def load_splits(folder: str | Path) -> dict[str, list[dict]]:
    folder = Path(folder)
    return {name: [rec for _, rec in _read_jsonl(folder / f"{name}.jsonl")] for name in SPLITS}


# ---------------------------------------------------------------- built-in demo dataset

DEMO_CHECK = "json_answer"
DEMO_TOPICS = ("geography", "math", "language", "science", "time")
DEMO_INSTRUCTION_NOTE = (
    "The demo teaches one behaviour the base model does not show: reply with exactly one JSON object "
    '{"topic": <one of geography|math|language|science|time>, "answer": <short answer>} and nothing else.'
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


def demo_dataset(n: int = 320, seed: int = 0) -> list[dict]:
    """A deterministic instruction dataset in chat ``messages`` form.

    ``n`` clean examples spread over five topics, every reply one JSON object
    (see DEMO_INSTRUCTION_NOTE), plus planted problems a cleaning step must catch:
    about 4% near-duplicates (case/whitespace changes), and a few empty, too-short
    and over-long replies.
    """
    rng = random.Random(seed)
    facts = _demo_facts(rng)
    pool = [(t, q, a) for t in DEMO_TOPICS for q, a in facts[t]]
    if n > len(pool):
        raise DataError(f"n_examples: the demo dataset has at most {len(pool)} distinct examples, asked for {n}")
    rng.shuffle(pool)
    chosen = pool[:n]
    recs = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": demo_answer(t, a)}],
             "reference": a, "check": DEMO_CHECK} for t, q, a in chosen]
    # planted problems (clearly junk; the cleaning step must remove every one of them)
    n_dup = max(1, n // 25)
    for r in rng.sample(recs, n_dup):
        q = r["messages"][0]["content"]
        recs.append({**r, "messages": [{"role": "user", "content": "  " + q.upper() + " "}, r["messages"][1]]})
    junk_q = [q for _, q, _ in pool[n:n + 9]] or [q for _, q, _ in chosen[:9]]
    for i, q in enumerate(junk_q[:9]):
        reply = ["", "{", "ok " * 400][i % 3]  # empty, too short, too long
        recs.append({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": reply}],
                     "reference": "", "check": DEMO_CHECK})
    rng.shuffle(recs)
    return recs
