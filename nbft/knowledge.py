"""Stage 05_rag_vs_ft, knowledge injection: facts no model can know, questions about them, scoring.

A small-scale reproduction of Ovadia et al. 2023, "Fine-Tuning or Retrieval? Comparing
Knowledge Injection in LLMs": base / few-shot / fine-tuning on the documents / fine-tuning
with K paraphrases per fact / RAG / RAG on the fine-tuned model, scored on questions about
the invented world of ``nbft.corpora`` (or on the user's own documents and questions), in
two forms:

- open: the model answers in a few words (``open_prompt`` -> ``evaluate.generate``);
  ``score_open`` checks the normalized answer is contained, as whole words, in the reply.
- multiple choice (as in the paper): 4 options, the answer and 3 distractors of the same
  attribute taken from other entities; ``mc_loglik`` sums each option's token log-probs as
  the continuation of the prompt, ``score_mc`` counts the items whose answer scores highest.

Fact types (``FACT_TYPES``; "type" = ``kind.attribute``). Every fact is stated in its
entity's document (``corpora.world_documents``, whose title is the fact's ``doc_id``). Counts
and distinct answers on the default ``invented_world(seed=0)`` (12 towns, 10 organisations,
30 people: 238 facts):

=======================  =======================================  ==================  =====  ========
type                     open question                            answer (example)    facts  distinct
=======================  =======================================  ==================  =====  ========
town.river               Which river is Zufenlo on?               Belwen              12     12
town.founded             When was Zufenlo founded?                1597                12     12
town.population          How many inhabitants does Zufenlo have?  54,000              12     11
town.trade               What is Zufenlo best known for?          weaving             12     7
organisation.members     How many members does the X have?        499                 10     10
organisation.town        In which town was the X established?     Issahed             10     6
organisation.founded     When was the X established?              1733                10     10
organisation.trade       What trade do the members of X work in?  salt trade          10     7
person.born              When was Mirra Talohed born?             1661                30     29
person.invention         What did Mirra Talohed invent?           the tagra loom      30     30
person.town              In which town was Mirra Talohed born?    Tatanmir            30     12
person.org               Which organisation did M. T. belong to?  Lysis Academy       30     10
person.role              What post did Mirra Talohed hold?        chief cartographer  30     6
=======================  =======================================  ==================  =====  ========

Answers may repeat across entities (two towns known for weaving); a question still has one
answer, since it names its entity. MC distractors are distinct values of the same attribute
from other entities, never equal (after normalization) to the answer or to each other; a
world too small for 3 such values falls back to values of the same sort from the whole
world (any year, any town name, ...). A few types have few distinct values (role: 6, so an
open-form guess such as "founder" is right for ~1 in 4 people): the base model's score per
type (``accuracy_by``) is the floor to compare against.

Paraphrases (``paraphrase(fact, k, seed)``, for "fine-tuning with K paraphrases"): 8
templates per type, the first the plain statement close to the document's wording
(``Fact.statement``, not a paraphrase); the other 7 vary word order and wording and include one question-answer form,
worded differently from the evaluation question so the test question itself is never
trained on. Beyond 7, the plain ones are wrapped in 4 framing phrases ("According to the
records, ..."), up to 31 distinct sentences per fact. ``paraphrase_corpus`` makes the
continued-pretraining texts: the documents plus, for each of K rounds, one short text per
entity made of one paraphrase of each of its facts.
"""
from __future__ import annotations

import math
import random
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Sequence

from . import corpora, data, evaluate, rag, tasks, timing
from .data import DataError
from .tasks import normalize

#: The lines the written findings draw (recorded as ``thresholds`` in metrics.json).
THRESHOLDS = {
    "reader_share": 0.5,   # rag answers at least this share of what retrieval put in reach: "most" of the gap is retrieval
    "retrieval_ok": 0.9,   # recall@top_k at or above this: what is left of the gap is reading, not retrieval
}

N_OPTIONS = 4
DOC_SUFFIXES = (".txt", ".md")
OPEN_INSTRUCTION = "Answer the question. Reply with a short answer."

#: General-knowledge (not invented-world) examples for the few-shot method: they teach the
#: short-answer format only (a name, a year, a place, a number), no fact about the world.
FEW_SHOT: list[tuple[str, str]] = [
    ("Who painted the Mona Lisa?", "Leonardo da Vinci"),
    ("In which year did the Second World War end?", "1945"),
    ("Which river flows through Paris?", "the Seine"),
    ("How many strings does a violin have?", "4"),
]


# ---------------------------------------------------------------- fact types

@dataclass(frozen=True)
class FactType:
    """One attribute of one kind of entity: how it is asked, and how it can be said.

    Templates use ``{e}`` (the entity) and ``{a}`` (the answer); ``templates[0]`` is the
    plain statement (close to the document's wording), the others are paraphrases (exactly one is a question + answer).
    ``sort`` names the pool of same-sort values distractors fall back to in a small world.
    """

    kind: str
    attribute: str
    question: str
    templates: tuple[str, ...]
    sort: str

    @property
    def type(self) -> str:
        return f"{self.kind}.{self.attribute}"


_TYPES = [
    FactType("town", "river", "Which river is {e} on?", (
        "{e} is a town on the river {a}.",
        "The river {a} flows through the town of {e}.",
        "{e} lies on the banks of the {a}.",
        "On the river {a} stands the town of {e}.",
        "The town of {e} was built beside the river {a}.",
        "On which river does {e} stand? On the {a}.",
        "Follow the river {a} and you reach {e}.",
        "{e}'s river is the {a}.",
    ), "river"),
    FactType("town", "founded", "When was {e} founded?", (
        "{e} was founded in {a}.",
        "The founding of {e} dates to {a}.",
        "In {a} the town of {e} was founded.",
        "{e} has existed since its founding in {a}.",
        "The year {a} saw the founding of {e}.",
        "In what year was {e} founded? In {a}.",
        "Founded in {a}, {e} grew into a market town.",
        "{e}'s founding year is {a}.",
    ), "year"),
    FactType("town", "population", "How many inhabitants does {e} have?", (
        "{e} has about {a} inhabitants.",
        "About {a} people live in {e}.",
        "The population of {e} is about {a}.",
        "With about {a} inhabitants, {e} is a busy town.",
        "Roughly {a} people call {e} their home.",
        "How many people live in {e}? About {a}.",
        "{e} counts about {a} residents.",
        "The town of {e} is home to about {a} people.",
    ), "population"),
    FactType("town", "trade", "What is {e} best known for?", (
        "{e} is best known for its {a}.",
        "The {a} of {e} is famous across the region.",
        "When people think of {e}, they think of {a}.",
        "{a} has shaped the markets and streets of {e}.",
        "What is {e} famous for? Its {a}.",
        "The town of {e} owes its fame to {a}.",
        "For generations, {e} has lived from {a}.",
        "{e}'s best-known trade is {a}.",
    ), "trade"),
    FactType("organisation", "members", "How many members does the {e} have?", (
        "The {e} counts {a} members.",
        "The {e} has {a} members.",
        "{a} people are members of the {e}.",
        "Membership of the {e} stands at {a}.",
        "With {a} members, the {e} fills its hall.",
        "How many members does the {e} count? {a}.",
        "There are {a} members in the {e}.",
        "The {e} brings together {a} members.",
    ), "count"),
    FactType("organisation", "town", "In which town was the {e} established?", (
        "The {e} was established in {a}.",
        "The {e} has its home in {a}.",
        "In {a} the {e} was established.",
        "The hall of the {e} stands in {a}.",
        "The {e} is based in the town of {a}.",
        "Where was the {e} set up? In {a}.",
        "{a} is the home town of the {e}.",
        "The town where the {e} was set up is {a}.",
    ), "town"),
    FactType("organisation", "founded", "When was the {e} established?", (
        "The {e} was established in {a}.",
        "The {e} dates from {a}.",
        "In {a} the {e} was established.",
        "The founding of the {e} took place in {a}.",
        "The {e} has existed since {a}.",
        "In what year was the {e} set up? In {a}.",
        "{a} is the year the {e} was established.",
        "Established in {a}, the {e} soon gained members.",
    ), "year"),
    FactType("organisation", "trade", "What trade do the members of the {e} work in?", (
        "The {e} brings together people who work in {a}.",
        "Members of the {e} work in {a}.",
        "The {e} is an organisation for people in {a}.",
        "People who work in {a} join the {e}.",
        "{a} is the trade of the {e}.",
        "Which trade does the {e} serve? {a}.",
        "The {e} looks after those who work in {a}.",
        "Anyone working in {a} may join the {e}.",
    ), "trade"),
    FactType("person", "born", "When was {e} born?", (
        "{e} was born in {a}.",
        "The birth year of {e} is {a}.",
        "In {a}, {e} was born.",
        "{e}'s life began in {a}.",
        "Born in {a}, {e} later became an inventor.",
        "In what year was {e} born? In {a}.",
        "{a} is the year of {e}'s birth.",
        "{e} came into the world in {a}.",
    ), "year"),
    FactType("person", "invention", "What did {e} invent?", (
        "{e} became known for inventing {a}.",
        "{a} was invented by {e}.",
        "The inventor of {a} is {e}.",
        "{e} invented {a}.",
        "It was {e} who invented {a}.",
        "What is {e} remembered for? Inventing {a}.",
        "Among the inventions of the region, {a} is the work of {e}.",
        "{e} is remembered as the inventor of {a}.",
    ), "invention"),
    FactType("person", "town", "In which town was {e} born?", (
        "{e} was born in {a}.",
        "{e} came from the town of {a}.",
        "{a} is the birthplace of {e}.",
        "The home town of {e} is {a}.",
        "In {a}, {e} was born.",
        "Where was {e} born? In {a}.",
        "{e} is a native of {a}.",
        "The town of {a} is where {e} was born.",
    ), "town"),
    FactType("person", "org", "Which organisation did {e} belong to?", (
        "{e} was a member of the {a}.",
        "{e} served in the {a}.",
        "The {a} counted {e} among its members.",
        "{e} belonged to the {a}.",
        "Among the members of the {a} was {e}.",
        "Which organisation did {e} serve? The {a}.",
        "{e} worked for the {a}.",
        "{e} held a post in the {a}.",
    ), "org"),
    FactType("person", "role", "What post did {e} hold?", (
        "{e} served as {a}.",
        "As {a}, {e} held an important post.",
        "The post held by {e} was that of {a}.",
        "{e} worked as {a}.",
        "{e} held the post of {a}.",
        "Which position did {e} have? That of {a}.",
        "{e}'s title was {a}.",
        "The role of {a} was filled by {e}.",
    ), "role"),
]

#: "kind.attribute" -> FactType, in the order facts are made (entity by entity).
FACT_TYPES: dict[str, FactType] = {t.type: t for t in _TYPES}

#: The questions tests/test_rag.py and benchmarks/retrieval.py have always used.
RAG_TYPES = ("town.river", "town.founded", "organisation.members", "organisation.town",
             "person.born", "person.invention")

_WORLD_KEYS = {"town": "towns", "organisation": "orgs", "person": "people"}
_FRAMES = ("According to the records, ", "As the old chronicles tell, ", "It is well documented that ",
           "Local historians note that ")


def _format_answer(attribute: str, value) -> str:
    return f"{value:,}" if attribute == "population" else str(value)


def _sentence(template: str, entity: str, answer: str) -> str:
    s = template.format(e=entity, a=answer)
    return s[:1].upper() + s[1:]


# ---------------------------------------------------------------- facts

@dataclass(frozen=True)
class Fact:
    """One fact, its open question and its multiple-choice form.

    ``options`` holds the answer (at ``gold_index``) and distractors; empty for a question
    without options. ``doc_id``: the id of the document that states it (world documents:
    their title). World facts have a ``kind`` ("town", "organisation", "person") and an
    ``attribute``; questions loaded with ``load_questions`` have kind "user" and neither.
    """

    entity: str
    attribute: str
    answer: str
    question: str
    options: tuple[str, ...] = ()
    gold_index: int = -1
    doc_id: str = ""
    statement: str = ""
    kind: str = ""

    def __post_init__(self):
        object.__setattr__(self, "options", tuple(self.options))

    @property
    def type(self) -> str:
        return f"{self.kind}.{self.attribute}"

    @property
    def distractors(self) -> tuple[str, ...]:
        return tuple(o for i, o in enumerate(self.options) if i != self.gold_index)

    def paraphrases(self, k: int, seed: int = 0) -> list[str]:
        """``k`` distinct sentences stating this fact; see ``paraphrase``."""
        return paraphrase(self, k, seed)

    def to_dict(self) -> dict:
        return {**asdict(self), "options": list(self.options), "type": self.type}

    @classmethod
    def from_dict(cls, d: dict) -> "Fact":
        return cls(**{k: v for k, v in d.items() if k != "type"})


def _variants(fact: Fact) -> tuple[list[str], list[str]]:
    """(plain paraphrases, framed ones) of a world fact; the statement is neither."""
    ft = FACT_TYPES.get(fact.type)
    if ft is None:
        raise ValueError(f"no paraphrase templates for a fact of type {fact.type!r} "
                         f"(question {fact.question!r}); known types: {', '.join(FACT_TYPES)}")
    plain, framed = [], []
    for t in ft.templates[1:]:
        plain.append(_sentence(t, fact.entity, fact.answer))
    for frame in _FRAMES:
        for t in ft.templates[1:]:
            if "?" in t:
                continue  # a question-answer pair is not framed
            raw = t.format(e=fact.entity, a=fact.answer)
            framed.append(frame + (raw if t.startswith("{") else raw[:1].lower() + raw[1:]))
    return plain, framed


def max_paraphrases(fact: Fact) -> int:
    """How many distinct paraphrases ``paraphrase`` can give for ``fact``."""
    plain, framed = _variants(fact)
    return len(plain) + len(framed)


def paraphrase(fact: Fact, k: int, seed: int = 0) -> list[str]:
    """``k`` different sentences stating ``fact``, each naming its entity and its answer.

    The 7 plain paraphrases of its type come first (in an order drawn from ``seed``), then
    framed ones ("According to the records, ..."); deterministic for a given fact and seed.
    Never the document's own sentence (``fact.statement``). At most ``max_paraphrases(fact)``
    (31 for every world type); more raises ValueError.
    """
    if k < 0:
        raise ValueError(f"k={k}: the number of paraphrases must be >= 0")
    plain, framed = _variants(fact)
    rng = random.Random(f"{seed}|{fact.type}|{fact.entity}")
    rng.shuffle(plain)
    rng.shuffle(framed)
    pool = plain + framed
    if k > len(pool):
        raise ValueError(f"k={k}: a {fact.type} fact has at most {len(pool)} distinct paraphrases")
    return pool[:k]


def _entities(world: dict, kind: str) -> list[dict]:
    return list(world.get(_WORLD_KEYS[kind], []))


def _values(world: dict, ft: FactType) -> list[str]:
    return [_format_answer(ft.attribute, ent[ft.attribute]) for ent in _entities(world, ft.kind)]


def _sort_pool(world: dict, sort: str) -> list[str]:
    """Every value of one sort in the world (the distractor fallback of a small world)."""
    pools = {
        "year": [str(t["founded"]) for t in world.get("towns", [])] + [str(o["founded"]) for o in world.get("orgs", [])]
        + [str(p["born"]) for p in world.get("people", [])],
        "town": [t["name"] for t in world.get("towns", [])],
        "river": [t["river"] for t in world.get("towns", [])],
        "population": [_format_answer("population", t["population"]) for t in world.get("towns", [])],
        "count": [str(o["members"]) for o in world.get("orgs", [])],
        "trade": list(corpora.TRADES),
        "role": list(corpora.ROLES),
        "org": [o["name"] for o in world.get("orgs", [])],
        "invention": [p["invention"] for p in world.get("people", [])],
    }
    return pools[sort]


def _distinct(values: Iterable[str], exclude: Iterable[str]) -> list[str]:
    """Values in first-seen order, without normalized duplicates or anything in ``exclude``."""
    seen = {normalize(x) for x in exclude}
    out = []
    for v in values:
        n = normalize(v)
        if n and n not in seen:
            seen.add(n)
            out.append(v)
    return out


def _options(world: dict, ft: FactType, answer: str, rng: random.Random, n_options: int) -> tuple[tuple[str, ...], int]:
    same = sorted(_distinct(_values(world, ft), [answer]))  # sorted: independent of entity order
    picks = rng.sample(same, min(n_options - 1, len(same)))
    if len(picks) < n_options - 1:
        extra = sorted(_distinct(_sort_pool(world, ft.sort), [answer, *picks]))
        if len(extra) < n_options - 1 - len(picks):
            raise ValueError(f"{ft.type}: the world has too few distinct values for {n_options} options "
                             f"(answer {answer!r}); use a larger world or fewer options")
        picks += rng.sample(extra, n_options - 1 - len(picks))
    options = [answer, *picks]
    rng.shuffle(options)
    return tuple(options), options.index(answer)


def world_facts(world: dict, per_entity: int | None = None, seed: int = 0, types: Iterable[str] | None = None,
                n_options: int = N_OPTIONS) -> list[Fact]:
    """The facts of an ``invented_world``: one per (entity, fact type), entity by entity.

    ``types``: the "kind.attribute" names to use (default: all of ``FACT_TYPES``);
    ``per_entity``: at most this many facts per entity, the types drawn from ``seed``
    (None: all). Options: the answer and ``n_options - 1`` distractors (see module notes),
    shuffled from ``seed``. Deterministic: the same world and seed give the same facts.
    """
    types = list(FACT_TYPES) if types is None else list(types)
    unknown = [t for t in types if t not in FACT_TYPES]
    if unknown:
        raise ValueError(f"unknown fact type(s) {unknown}; choose from {', '.join(FACT_TYPES)}")
    if per_entity is not None and per_entity < 1:
        raise ValueError(f"per_entity={per_entity}: need at least 1 (or None for all)")
    facts = []
    for kind in _WORLD_KEYS:
        kinds = [FACT_TYPES[t] for t in FACT_TYPES if t in types and FACT_TYPES[t].kind == kind]
        for ent in _entities(world, kind):
            name = ent["name"]
            chosen = kinds
            if per_entity is not None and per_entity < len(kinds):
                keep = set(random.Random(f"{seed}|pick|{kind}|{name}").sample(range(len(kinds)), per_entity))
                chosen = [ft for i, ft in enumerate(kinds) if i in keep]
            for ft in chosen:
                answer = _format_answer(ft.attribute, ent[ft.attribute])
                rng = random.Random(f"{seed}|{ft.type}|{name}")
                options, gold = _options(world, ft, answer, rng, n_options)
                facts.append(Fact(entity=name, attribute=ft.attribute, answer=answer,
                                  question=ft.question.format(e=name), options=options, gold_index=gold,
                                  doc_id=name, statement=_sentence(ft.templates[0], name, answer), kind=kind))
    return facts


def world_docs(world: dict) -> list[dict]:
    """``corpora.world_documents`` with an "id" (the title, which facts' ``doc_id`` name)."""
    return [{"id": d["title"], **d} for d in corpora.world_documents(world)]


def world_questions(world: dict, types: Iterable[str] = RAG_TYPES) -> list[tuple[str, str, str]]:
    """(question, gold document id, answer) for the facts of ``types`` (retrieval tests, benchmarks)."""
    return [(f.question, f.doc_id, f.answer) for f in world_facts(world, types=types)]


def accuracy_by(facts: Sequence[Fact], passed: Sequence[bool], key: str = "type") -> dict[str, float]:
    """Mean of ``passed`` per value of a fact attribute ("type", "kind", "attribute", ...)."""
    if len(facts) != len(passed):
        raise ValueError(f"{len(passed)} verdicts for {len(facts)} facts")
    groups: dict[str, list[bool]] = {}
    for f, ok in zip(facts, passed):
        groups.setdefault(str(getattr(f, key)), []).append(bool(ok))
    return {k: sum(v) / len(v) for k, v in groups.items()}


# ---------------------------------------------------------------- corpora for fine-tuning

def paraphrase_corpus(documents: Sequence[dict | str], facts: Sequence[Fact], k: int, seed: int = 0) -> list[str]:
    """Texts for continued pretraining: the documents, then ``k`` rounds of paraphrases.

    Round j holds, for each document (``doc_id``) with facts, one text joining the j-th
    paraphrase of each of its facts (facts in an order drawn from ``seed``): k paraphrases
    per fact, as short document-like texts. ``k=0``: the documents' texts only.
    """
    texts = [d if isinstance(d, str) else str(d["text"]) for d in documents]
    if k == 0:
        return texts
    by_doc: dict[str, list[Fact]] = {}
    for f in facts:
        by_doc.setdefault(f.doc_id or f.entity, []).append(f)
    para = {id(f): paraphrase(f, k, seed) for f in facts}
    rng = random.Random(f"{seed}|corpus")
    for j in range(k):
        for doc_id, fs in by_doc.items():
            order = list(fs)
            rng.shuffle(order)
            texts.append(" ".join(para[id(f)][j] for f in order))
    return texts


def training_texts(documents: Sequence[dict | str], facts: Sequence[Fact], k: int, seed: int = 0) -> list[dict]:
    """``paraphrase_corpus`` as continued-pretraining records (``{"text"}``), what ``train.trained`` takes."""
    return [{"text": t} for t in paraphrase_corpus(documents, facts, k, seed)]


# ---------------------------------------------------------------- user documents and questions

def _text_document(path: Path, doc_id: str) -> dict:
    text = data.read_text(path)  # BOM dropped; a decode error names the file and line
    if not text.strip():
        raise DataError(f"{path}: empty document")
    title = path.stem
    if path.suffix.lower() == ".md":
        m = re.search(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, re.M)
        title = m.group(1) if m else title
    return {"id": doc_id, "title": title, "text": text.strip(), "kind": "user"}


def _jsonl_documents(path: Path) -> list[dict]:
    docs, first_line = [], {}
    for where, rec in data.read_jsonl(path, max_chars=data.MAX_DOCUMENT_CHARS):
        if "text" not in rec:
            raise DataError(f"{where}: missing required field 'text' (record has: {', '.join(sorted(rec)) or 'nothing'})")
        if not isinstance(rec["text"], str) or not rec["text"].strip():
            raise DataError(f"{where}: field 'text' must be a non-empty string")
        title = rec.get("title")
        if title is not None and not isinstance(title, str):
            raise DataError(f"{where}: field 'title' must be a string, got {type(title).__name__}")
        doc_id = rec.get("id")
        if doc_id is not None and (isinstance(doc_id, bool) or not isinstance(doc_id, (str, int))):
            raise DataError(f"{where}: field 'id' must be a string or an integer, got {type(doc_id).__name__}")
        doc_id = str(doc_id) if doc_id is not None else title if title else f"{path.stem} {where.rsplit(' ', 1)[-1]}"
        if doc_id in first_line:
            raise DataError(f"{where}: duplicate document id {doc_id!r} (also at {first_line[doc_id]}); "
                            f"give each record a unique 'id' or 'title'")
        first_line[doc_id] = where
        docs.append({"id": doc_id, "title": title or "", "text": rec["text"].strip(), "kind": "user"})
    if not docs:
        raise DataError(f"{path}: no documents (the file is empty)")
    return docs


def user_documents(path: str | Path) -> list[dict]:
    """Documents {"id", "title", "text", "kind": "user"} from a folder, a text file or a JSONL file.

    - a folder: every .txt and .md file under it (sorted; hidden files and other types
      skipped); id = the path relative to the folder, title = a Markdown file's first
      heading, else the file name without its suffix;
    - one .txt / .md file: one document;
    - a .jsonl file: one {"text", "title"?, "id"?} object per line; id = "id", else the
      title, else "<file stem> <line>".

    Errors (``data.DataError``, a ValueError) name the file, and the line for JSONL.
    """
    path = data.input_path(path, "documents", folder=True)  # what is wrong with the path, named (a FIFO, a loop)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in DOC_SUFFIXES
                       and not any(part.startswith(".") for part in p.relative_to(path).parts))
        if not files:
            raise DataError(f"{path}: no .txt or .md files in this folder")
        return [_text_document(p, p.relative_to(path).as_posix()) for p in files]
    if path.suffix.lower() == ".jsonl":
        return _jsonl_documents(path)
    if path.suffix.lower() in DOC_SUFFIXES:
        return [_text_document(path, path.name)]
    raise DataError(f"{path}: unsupported document file {path.suffix!r}; use a folder of .txt/.md files, "
                    f"a .txt/.md file or a .jsonl file of {{\"title\", \"text\"}} records")


def _scalar(rec: dict, key: str, where: str, required: bool) -> str | None:
    if key not in rec or rec[key] is None:
        if required:
            raise DataError(f"{where}: missing required field {key!r} (record has: {', '.join(sorted(rec)) or 'nothing'})")
        return None
    v = rec[key]
    if isinstance(v, bool) or not isinstance(v, (str, int, float)) or not str(v).strip():
        raise DataError(f"{where}: field {key!r} must be a non-empty string (or a number), got {v!r}")
    return str(v).strip()


def load_questions(path: str | Path, documents: Sequence[dict] | None = None) -> list[Fact]:
    """Questions about user documents from a JSONL file, as ``Fact`` objects (kind "user").

    One object per line: {"question", "answer", "options"?, "doc_id"?}. ``options`` (for
    multiple choice): a list of at least 2 distinct strings (4 as in the paper) containing the
    answer. ``doc_id`` names the document that holds the answer (retrieval recall); with
    ``documents`` it must be one of their ids. Errors name the file, line and field.
    """
    path = data.input_path(path, "questions file")  # not found, a folder, a FIFO, a loop: named
    if path.suffix.lower() != ".jsonl":
        raise DataError(f"{path}: questions must be a .jsonl file (one JSON object per line)")
    ids = None if documents is None else {str(d.get("id", i)) for i, d in enumerate(documents)}
    out = []
    for where, rec in data.read_jsonl(path):
        question = _scalar(rec, "question", where, True)
        answer = _scalar(rec, "answer", where, True)
        doc_id = _scalar(rec, "doc_id", where, False) or ""
        if ids is not None and doc_id and doc_id not in ids:
            raise DataError(f"{where}: field 'doc_id': no document with id {doc_id!r}")
        options, gold = (), -1
        if rec.get("options") is not None:
            opts = rec["options"]
            if not isinstance(opts, list) or len(opts) < 2:
                raise DataError(f"{where}: field 'options' must be a list of at least 2 answers "
                                f"({N_OPTIONS} as in the paper), got {opts!r}")
            for j, o in enumerate(opts):
                if isinstance(o, bool) or not isinstance(o, (str, int, float)) or not str(o).strip():
                    raise DataError(f"{where}: field 'options'[{j}] must be a non-empty string, got {o!r}")
            options = tuple(str(o).strip() for o in opts)
            norm = [normalize(o) for o in options]
            dup = next((o for j, o in enumerate(options) if norm[j] in norm[:j]), None)
            if dup is not None:
                raise DataError(f"{where}: field 'options' lists {dup!r} twice (after normalization)")
            if normalize(answer) not in norm:
                raise DataError(f"{where}: field 'options' does not contain the answer {answer!r}")
            gold = norm.index(normalize(answer))
        out.append(Fact(entity="", attribute="", answer=answer, question=question, options=options,
                        gold_index=gold, doc_id=doc_id, kind="user"))
    if not out:
        raise DataError(f"{path}: no questions (the file is empty)")
    return out


# ---------------------------------------------------------------- prompts

def _user_turn(question: str, context=None, max_words: int | None = None) -> str:
    if context is None:
        return rag.rag_prompt(question, [], instruction=OPEN_INSTRUCTION)
    return rag.rag_prompt(question, context, max_words=max_words)


def open_prompt(question: str | Fact, tokenizer, context: Sequence | None = None,
                shots: Sequence[tuple[str, str]] = (), max_words: int | None = None) -> str:
    """The chat-template prompt (ending where the reply starts) asking for a short answer.

    Without ``context``: "Answer the question. Reply with a short answer." then
    "Question: ...". With ``context`` (retrieved hits, chunks or strings): the wording of
    ``rag.rag_prompt`` (instruction, passages best first, question; ``max_words`` passed on).
    ``shots``: (question, answer) pairs shown first as earlier user/assistant turns (e.g.
    ``FEW_SHOT``), their user turns in the no-context form. Also the prompt ``mc_loglik``
    scores options after.
    """
    question = question.question if isinstance(question, Fact) else str(question)
    messages = []
    for q, a in shots:
        messages += [{"role": "user", "content": _user_turn(q)}, {"role": "assistant", "content": str(a)}]
    messages.append({"role": "user", "content": _user_turn(question, context, max_words)})
    return data.render_prompt(messages, tokenizer, "chat")


# ---------------------------------------------------------------- scoring

def check_open(output: str, answer: str, mode: str = "contains") -> bool:
    """Is ``answer`` in the reply (``tasks.answer_of``)? "contains": the normalized answer appears as whole words in
    the normalized reply (so "1234" is not in "12345"); "exact": the two are equal (``tasks.CHECKS``)."""
    if mode not in ("contains", "exact"):
        raise ValueError(f"mode {mode!r}: use 'contains' or 'exact'")
    return tasks.CHECKS[mode](output, answer)


def _answer(f) -> str:
    return f.answer if isinstance(f, Fact) else str(f)


def score_open(outputs: Sequence[str], facts: Sequence[Fact | str], mode: str = "contains") -> tuple[float, list[bool]]:
    """(accuracy, per-item verdicts) of replies against facts (or plain answer strings)."""
    if len(outputs) != len(facts):
        raise ValueError(f"{len(outputs)} outputs for {len(facts)} facts")
    passed = [check_open(o, _answer(f), mode) for o, f in zip(outputs, facts)]
    return (sum(passed) / len(passed) if passed else float("nan")), passed


def mc_loglik(model, tokenizer, prompts: Sequence[str], options: Sequence[Sequence[str]], batch_size: int = 16,
              precision: str = "fp32") -> list[list[float]]:
    """Sum of the log-probabilities of each option's tokens as the continuation of its prompt.

    ``prompts``: rendered prompts (``open_prompt``); ``options[i]``: the candidate replies
    to ``prompts[i]``. Prompt and option are tokenized separately (no special tokens added)
    and concatenated, as generation would continue the prompt. Each prompt is read once
    (``read_prompts``): a 4-option question costs one prompt pass, not four.
    Returns, per prompt, one float per option (higher: more likely).
    """
    if len(prompts) != len(options):
        raise ValueError(f"{len(prompts)} prompts for {len(options)} option lists")
    return read_prompts(model, tokenizer, prompts, options, 0, batch_size, precision)[0]


@timing.timed("generation")
def read_prompts(model, tokenizer, prompts: Sequence[str], options: Sequence[Sequence[str]], max_new_tokens: int,
                 batch_size: int = 16, precision: str = "fp32") -> tuple[list[list[float]], list[str]]:
    """One prompt pass serves both question forms: (``mc_loglik``'s scores of ``options[i]`` after ``prompts[i]``,
    greedy replies of ``max_new_tokens`` to every prompt; 0: none).

    The options are scored from each batch's key/value cache of its prompts (``evaluate.continuation_logprobs``:
    sorted by token length, left-padded, every token but the last prefilled once); generation continues a copy of
    that cache from the last prompt token (transformers' ``generate`` reads only the tokens the cache lacks). Asking
    100 questions open and as multiple choice used to prefill every prompt twice (docs/measurements.md)."""
    import copy

    replies = [""] * len(prompts)

    def generate(batch, ids, mask, cache):
        out = model.generate(input_ids=ids, attention_mask=mask, past_key_values=copy.deepcopy(cache),
                             max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        for i, text in zip(batch, tokenizer.batch_decode(out[:, ids.shape[1]:], skip_special_tokens=True)):
            replies[i] = text.strip()

    scores = evaluate.continuation_logprobs(model, tokenizer, prompts, options, precision, batch_size,
                                            prefilled=generate if max_new_tokens else None, noun="option")
    return scores, replies


def score_mc(loglik: Sequence[Sequence[float]], facts: Sequence[Fact]) -> tuple[float, list[bool]]:
    """(accuracy, per-item verdicts): right when the answer's option scores strictly highest
    (a tie counts as wrong). ``loglik`` as ``mc_loglik`` returns it for ``f.options``."""
    if len(loglik) != len(facts):
        raise ValueError(f"{len(loglik)} score lists for {len(facts)} facts")
    passed = []
    for n, (scores, f) in enumerate(zip(loglik, facts)):
        if not f.options or not 0 <= f.gold_index < len(f.options):
            raise ValueError(f"fact {n} ({f.question!r}) has no multiple-choice options")
        if len(scores) != len(f.options):
            raise ValueError(f"fact {n}: {len(scores)} scores for {len(f.options)} options")
        gold = scores[f.gold_index]
        passed.append(all(gold > s for j, s in enumerate(scores) if j != f.gold_index))
    return (sum(passed) / len(passed) if passed else float("nan")), passed


def wilson_ci(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval (95% with the default z) for an accuracy of k right out of n."""
    if n <= 0:
        return (0.0, 1.0)
    if not 0 <= k <= n:
        raise ValueError(f"k={k} right out of n={n}")
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


# ---------------------------------------------------------------- one method, both question forms

def ask(model, tokenizer, facts: Sequence[Fact], contexts: Sequence | None = None, shots: Sequence = (),
        max_new_tokens: int = 16, batch_size: int = 16, precision: str = "fp32") -> dict:
    """Ask every question open (greedy, scored by ``score_open``) and, where it has options, as
    multiple choice (``mc_loglik`` after the same prompt). ``contexts[i]``: passages for question i."""
    prompts = [open_prompt(f, tokenizer, context=contexts[i] if contexts is not None else None, shots=shots)
               for i, f in enumerate(facts)]
    options = [list(f.options or ()) for f in facts]
    model.eval()
    loglik, outputs = evaluate.memo(
        "ask", model, {"prompts": prompts, "options": options, "max_new_tokens": max_new_tokens,
                       "batch_size": batch_size, "precision": precision},
        lambda: read_prompts(model, tokenizer, prompts, options, max_new_tokens, batch_size, precision))
    open_acc, open_ok = score_open(outputs, facts)
    with_options = [i for i, f in enumerate(facts) if f.options]
    ll = [loglik[i] for i in with_options]
    mc_acc, mc_ok = score_mc(ll, [facts[i] for i in with_options]) if with_options else (float("nan"), [])
    return {"open": open_acc, "mc": mc_acc, "open_ok": open_ok, "mc_ok": mc_ok, "outputs": outputs,
            "mc_choice": [max(range(len(s)), key=s.__getitem__) for s in ll], "n_open": len(facts),
            "n_mc": len(with_options)}


def select(facts: Sequence[Fact], n: int, seed: int = 0) -> list[Fact]:
    """At most ``n`` facts (0: all), spread evenly over fact types, deterministic."""
    if not n or n >= len(facts):
        return list(facts)
    rng = random.Random(seed)
    by_type: dict[str, list[Fact]] = {}
    for f in facts:
        by_type.setdefault(f.type, []).append(f)
    for v in by_type.values():
        rng.shuffle(v)
    out: list[Fact] = []
    while len(out) < n:
        for v in by_type.values():
            if v and len(out) < n:
                out.append(v.pop())
    return out


def curve_row(result: dict, n_train: int, run) -> dict:
    """One point of the paraphrase curve: accuracy (open, multiple choice) after fine-tuning on ``n_train`` texts, and
    the training's seconds and steps (``run``: its ``train.TrainResult``)."""
    return {"open": result["open"], "mc": result["mc"], "n_train": n_train, "seconds": run.seconds, "steps": run.steps}


def metrics(p, facts: list, results: dict[str, dict], order: list[str], curve_runs: dict, index_rows: list[dict], *,
            recall_at_k: dict, retrieval_ms_p50: float, n_eval: int, n_mc: int, n_train: int, n_chunks: int) -> dict:
    """05_rag_vs_ft's section of metrics.json (with ``findings`` and ``thresholds`` added by the notebook): accuracy
    per method (open, multiple choice) and per fact type, the paraphrase curve (``curve_row``), retrieval's recall and
    latency per index type; ``n_train``: the documents fine-tuning trains on."""
    return {"accuracy": {m: {"open": results[m]["open"], "mc": results[m]["mc"]} for m in order},
            "accuracy_by_type": {m: accuracy_by(facts, results[m]["open_ok"]) for m in order},
            "recall_at_k": recall_at_k, "retrieval_ms_p50": retrieval_ms_p50,
            "paraphrase_curve": {k: v["open"] for k, v in curve_runs.items()}, "paraphrase_runs": curve_runs,
            "n_eval": n_eval, "n_mc": n_mc, "n_train": n_train, "n_chunks": n_chunks, "index": p.index,
            "top_k": p.top_k, "indexes": {r["index"]: r for r in index_rows}}


def findings(acc: dict, paraphrase_curve: dict, recall_at_k: dict, top_k: int) -> list[str]:
    """One sentence per comparison the paper makes, worded by this run's numbers (``acc``: ``metrics``' accuracy)."""
    out = []
    ft_only = {m: acc[m]["open"] for m in ("ft", "ft_paraphrase") if m in acc}
    if "rag" in acc:
        best_ft = max(ft_only.values()) if ft_only else float("nan")
        wins = all(acc["rag"]["open"] > v for v in ft_only.values())
        out.append(f"Retrieval {'wins' if wins else 'does not win'}: rag answers {acc['rag']['open']:.2f} of open "
                   f"questions ({acc['rag']['mc']:.2f} multiple choice) against at most {best_ft:.2f} for fine-tuning "
                   f"alone (paper: retrieval wins by a wide margin).")
        rk = recall_at_k.get(top_k)
        if rk is not None:
            t = THRESHOLDS
            out.append(f"Retrieval put the gold chunk in the top {top_k} for {rk:.0%} of questions; the reader "
                       f"answered {acc['rag']['open']:.2f}, so "
                       f"{'most' if acc['rag']['open'] >= t['reader_share'] * rk else 'much'} "
                       f"of the gap to 1.0 is {'retrieval' if rk < t['retrieval_ok'] else 'reading'}.")
    if "ft" in acc and "base" in acc:
        d = acc["ft"]["mc"] - acc["base"]["mc"]
        out.append(f"Fine-tuning on the documents moved multiple choice {acc['base']['mc']:.2f} -> {acc['ft']['mc']:.2f} "
                   f"({d:+.2f}) and open {acc['base']['open']:.2f} -> {acc['ft']['open']:.2f} "
                   f"(paper: small gains for Mistral, a loss for Llama2).")
    if "ft_paraphrase" in acc and "ft" in acc:
        up = acc["ft_paraphrase"]["open"] > acc["ft"]["open"]
        out.append(f"Paraphrases {'help' if up else 'do not help'} here: open {acc['ft']['open']:.2f} (documents only) "
                   f"vs {acc['ft_paraphrase']['open']:.2f} with paraphrases, multiple choice {acc['ft']['mc']:.2f} vs "
                   f"{acc['ft_paraphrase']['mc']:.2f}; curve over K: "
                   + ", ".join(f"K={k}: {v:.2f}" for k, v in sorted(paraphrase_curve.items())) + ".")
    if "rag_ft" in acc and "rag" in acc:
        better = acc["rag_ft"]["open"] > acc["rag"]["open"]
        out.append(f"RAG on the fine-tuned model is {'better' if better else 'not better'} than RAG alone: open "
                   f"{acc['rag_ft']['open']:.2f} vs {acc['rag']['open']:.2f} (paper: not better).")
    return out


def gold_chunks(chunks: Sequence, facts: Sequence[Fact]) -> list[set[str]]:
    """Per fact, the ids of the chunks of its document that contain the answer (else the document id)."""
    return [{c.id for c in chunks if c.doc_id == f.doc_id and check_open(c.text, f.answer)} or {f.doc_id}
            for f in facts]


def accuracy_rows(results: dict[str, dict]) -> list[dict]:
    """Method x question form, with 95% Wilson intervals (``results[name]`` as ``ask`` returns it)."""
    rows = []
    for name, r in results.items():
        lo_o, hi_o = wilson_ci(sum(r["open_ok"]), r["n_open"])
        lo_m, hi_m = wilson_ci(sum(r["mc_ok"]), r["n_mc"])
        rows.append({"method": name, "open": r["open"], "open 95% CI": f"{lo_o:.2f}-{hi_o:.2f}",
                     "multiple choice": r["mc"], "mc 95% CI": f"{lo_m:.2f}-{hi_m:.2f}"})
    return rows


def inspect_rows(facts: Sequence[Fact], retrieved: Sequence, gold: Sequence[set], results: dict[str, dict],
                 n_hits: int = 3) -> list[dict]:
    """Rows for ``widgets.retrieval_inspector``: each question's hits (gold marked) and every method's answer."""
    return [{"question": f.question, "answer": f.answer,
             "hits": [{"id": c.id, "text": c.text, "score": s, "gold": c.id in gold[i] or c.doc_id in gold[i]}
                      for c, s in retrieved[i][:n_hits]],
             "methods": {m: {"reply": r["outputs"][i], "ok": r["open_ok"][i]} for m, r in results.items()}}
            for i, f in enumerate(facts)]


def check_inputs(p) -> None:
    """Before any notebook runs: your documents parse, and so do their questions (file, line, field)."""
    if p.knowledge_base == "builtin" and p.questions:
        raise DataError(f"05_rag_vs_ft.questions: {p.questions!r} is only read with your documents; the builtin "
                        "knowledge base generates its own questions (set knowledge_base, or questions='')")
    if p.knowledge_base != "builtin":
        if not p.questions:
            raise DataError("05_rag_vs_ft.questions: your documents need a questions file "
                            "(JSONL of question, answer, options, doc_id)")
        load_questions(p.questions, user_documents(p.knowledge_base))
