"""nbft.knowledge: world facts, paraphrases, user documents and questions, prompts, open and MC scoring."""
import collections
import copy
import dataclasses
import json
import re

import pytest
import torch

from nbft import corpora, evaluate, knowledge, rag, tasks
from nbft.data import DataError
from nbft.knowledge import Fact


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: on two cores shared with other jobs, two threads wait on each other
    (10 tiny-llama training steps: 10 s with 2 threads, 0.5 s with 1); restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def world():
    return corpora.invented_world(seed=0)


@pytest.fixture(scope="module")
def facts(world):
    return knowledge.world_facts(world)


def words(s):
    return f" {tasks.normalize(s)} "


def has(text, part):
    """``part`` appears in ``text`` as whole words, after normalization."""
    return words(part) in words(text)


# ---------------------------------------------------------------- world facts

def test_world_facts_cover_every_type_deterministically(world, facts):
    assert len(facts) == 238 >= 120
    counts = collections.Counter(f.type for f in facts)
    assert counts == {t: {"town": 12, "organisation": 10, "person": 30}[t.split(".")[0]] for t in knowledge.FACT_TYPES}
    assert knowledge.world_facts(world) == facts  # same world, same seed: same facts
    other = knowledge.world_facts(world, seed=1)
    assert [(f.question, f.answer) for f in other] == [(f.question, f.answer) for f in facts]
    assert [f.options for f in other] != [f.options for f in facts]  # the seed draws the options
    assert len({f.question for f in facts}) == len(facts)  # one question per fact
    f = facts[0]
    assert (f.entity, f.type, f.answer, f.question, f.doc_id) == (
        "Zufenlo", "town.river", "Belwen", "Which river is Zufenlo on?", "Zufenlo")


def test_each_fact_is_stated_in_its_document(world, facts):
    docs = {d["id"]: d for d in knowledge.world_docs(world)}
    assert len(docs) == 52 and all(d["title"] == i for i, d in docs.items())
    for f in facts:
        text = docs[f.doc_id]["text"]
        assert has(text, f.answer) and has(f.statement, f.answer) and f.entity in f.statement, f
    entity = {f.entity: f.kind for f in facts}
    assert all(docs[e]["kind"] == k for e, k in entity.items())


def test_mc_options_are_the_answer_and_three_distinct_distractors_of_the_same_attribute(world, facts):
    positions = collections.Counter()
    for f in facts:
        assert len(f.options) == knowledge.N_OPTIONS and f.options[f.gold_index] == f.answer
        normed = [tasks.normalize(o) for o in f.options]
        assert len(set(normed)) == 4, f  # no duplicate option, no distractor equal to the answer
        assert tasks.normalize(f.answer) not in {tasks.normalize(d) for d in f.distractors}
        key = {"town": "towns", "organisation": "orgs", "person": "people"}[f.kind]
        others = {str(e[f.attribute]) if f.attribute != "population" else f"{e['population']:,}"
                  for e in world[key] if e["name"] != f.entity}
        assert set(f.distractors) <= others, f  # taken from other entities, same attribute
        positions[f.gold_index] += 1
    assert all(0.15 * len(facts) < positions[i] < 0.35 * len(facts) for i in range(4)), positions
    # answers shared by two entities (two towns known for the same trade) never appear as a distractor
    shared = [f for f in facts if f.type == "town.trade"]
    assert len({f.answer for f in shared}) < len(shared)


def test_per_entity_types_and_small_worlds(world, facts):
    two = knowledge.world_facts(world, per_entity=2, seed=3)
    by_entity = collections.Counter(f.entity for f in two)
    assert set(by_entity.values()) == {2} and len(by_entity) == 52
    assert set(two) <= set(knowledge.world_facts(world, seed=3))
    assert knowledge.world_facts(world, per_entity=2, seed=3) == two
    assert knowledge.world_facts(world, per_entity=2, seed=4) != two
    only = knowledge.world_facts(world, types=["person.born"])
    assert len(only) == 30 and {f.type for f in only} == {"person.born"}
    with pytest.raises(ValueError, match="unknown fact type"):
        knowledge.world_facts(world, types=["town.mayor"])
    small = corpora.invented_world(n_towns=3, n_people=3, n_orgs=2, seed=1)
    few = knowledge.world_facts(small, types=["town.trade", "person.born", "person.role"])  # small-world fallbacks
    assert len(few) == 9 and all(len(set(f.options)) == 4 and f.options[f.gold_index] == f.answer for f in few)
    born = {str(p["born"]) for p in small["people"]}
    assert any(set(f.distractors) - born for f in few if f.type == "person.born")  # other years of the world
    assert all(set(f.distractors) <= {str(x["founded"]) for x in small["towns"] + small["orgs"]} | born
               for f in few if f.type == "person.born")
    with pytest.raises(ValueError, match="town.river: the world has too few distinct values"):
        knowledge.world_facts(small, types=["town.river"])


def test_world_questions_are_the_retrieval_questions(world, facts):
    qs = knowledge.world_questions(world)
    assert len(qs) == 104
    assert qs[:3] == [("Which river is Zufenlo on?", "Zufenlo", "Belwen"), ("When was Zufenlo founded?", "Zufenlo", "1597"),
                      (f"Which river is {world['towns'][1]['name']} on?", world["towns"][1]["name"], world["towns"][1]["river"])]
    assert set(qs) == {(f.question, f.doc_id, f.answer) for f in facts if f.type in knowledge.RAG_TYPES}


def test_fact_round_trips_through_json(facts):
    f = facts[7]
    back = Fact.from_dict(json.loads(json.dumps(f.to_dict())))
    assert back == f and isinstance(back.options, tuple) and f.to_dict()["type"] == f.type


# ---------------------------------------------------------------- paraphrases

def skeleton(sentence, f):
    return re.sub(re.escape(f.answer), "<A>", sentence.replace(f.entity, "<E>"), flags=re.I)


def test_paraphrases_state_the_fact_in_distinct_ways(facts):
    for f in facts:
        ps = f.paraphrases(8)
        assert len(set(ps)) == 8 and f.statement not in ps, f
        for p in ps:
            assert f.entity in p and has(p, f.answer), (f, p)
            assert f.question not in p  # the evaluation question is never a training sentence
        assert knowledge.paraphrase(f, 8, seed=0) == ps  # deterministic
        assert set(knowledge.paraphrase(f, 7, seed=1)) == set(ps[:7]) == set(knowledge.paraphrase(f, 7, seed=0))
        assert knowledge.paraphrase(f, 0) == []
    f = facts[0]
    assert knowledge.paraphrase(f, 7, seed=1) != knowledge.paraphrase(f, 7, seed=0)  # seed: another order
    everything = knowledge.paraphrase(f, knowledge.max_paraphrases(f))
    assert len(set(everything)) == len(everything) == 31
    with pytest.raises(ValueError, match="at most 31"):
        knowledge.paraphrase(f, 32)
    with pytest.raises(ValueError, match="no paraphrase templates"):
        knowledge.paraphrase(Fact("", "", "1", "Q?", kind="user"), 1)


@pytest.mark.parametrize("ftype", list(knowledge.FACT_TYPES))
def test_each_type_has_varied_templates(facts, ftype):
    f = next(f for f in facts if f.type == ftype)
    shapes = [skeleton(p, f) for p in f.paraphrases(7)]
    assert len(set(shapes)) == 7 >= 6
    assert sum("?" in s for s in shapes) == 1  # one question-answer form ...
    qa = next(s for s in shapes if "?" in s)
    assert qa.split("?")[0] + "?" != skeleton(f.question, f)  # ... not the evaluation question
    answer_first = sum(s.index("<A>") < s.index("<E>") for s in shapes)
    assert 2 <= answer_first <= 5  # word order varies: answer before the entity in some, after in others
    assert len({s.split()[0] for s in shapes}) >= 4  # and so do the openings


def test_paraphrase_corpus(world, facts):
    docs = knowledge.world_docs(world)
    assert knowledge.paraphrase_corpus(docs, facts, 0) == [d["text"] for d in docs]
    texts = knowledge.paraphrase_corpus(docs, facts, 3, seed=0)
    assert texts[:len(docs)] == [d["text"] for d in docs] and len(texts) == len(docs) + 3 * 52
    extra = texts[len(docs):]
    for f in facts:
        for p in f.paraphrases(3):
            assert sum(p in t for t in extra) == 1, p  # each paraphrase once
    assert knowledge.paraphrase_corpus(docs, facts, 3, seed=0) == texts
    one = knowledge.paraphrase_corpus(["plain text"], facts[:2], 1)  # plain strings; two facts of one entity
    assert one[0] == "plain text" and len(one) == 2
    parts = [f.paraphrases(1)[0] for f in facts[:2]]
    assert all(p in one[1] for p in parts) and len(one[1]) == len(" ".join(parts))


# ---------------------------------------------------------------- open scoring

@pytest.mark.parametrize("output, answer, ok", [
    ("It was founded in 1597.", "1597", True),
    ("1597", "1597", True),
    ("In 1598.", "1597", False),
    ("15970", "1597", False),  # a number matches only whole
    ("1597", "15970", False),
    ("It was founded in 11597.", "1597", False),
    ("about 54,000 inhabitants", "54000", True),  # thousands separators
    ("54000", "54,000", True),
    ("1,234,567 people", "1234567", True),
    ("5,400", "54,000", False),
    ("It lies on the Belwen.", "Belwen", True),
    ("belwen river", "the Belwen", True),
    ("Belwenn", "Belwen", False),
    ("Belw", "Belwen", False),
    ("It was the tagra lamp.", "the tagra loom", False),
    ("the Tagra Loom!", "the tagra loom", True),
    ("Zufenlo's river", "Zufenlo", True),
    ('{"answer": "1597"}', "1597", True),
    ('{"answer": 1597}', "1597", True),
    ('{"topic": "history", "answer": "1598"}', "1597", False),
    ('```json\n{"answer": "the tagra loom"}\n```', "the tagra loom", True),
    ('```json\n{"guess": "the tagra loom", "answer": "the venlo press"}\n```', "the tagra loom", False),  # the answer field counts
    ('"Belwen"', "Belwen", True),
    ("", "1597", False),
    ("anything", "", False),
])
def test_open_answers(output, answer, ok):
    assert knowledge.check_open(output, answer) is ok


def test_exact_mode_and_score_open(facts):
    assert knowledge.check_open("The Belwen.", "belwen", mode="exact")
    assert not knowledge.check_open("On the Belwen.", "belwen", mode="exact")
    with pytest.raises(ValueError, match="mode"):
        knowledge.check_open("x", "x", mode="fuzzy")
    outs = [facts[0].answer, "no idea", f'{{"answer": "{facts[2].answer}"}}', facts[0].answer]
    acc, ok = knowledge.score_open(outs, facts[:4])
    assert ok == [True, False, True, facts[3].answer == facts[0].answer] and acc == sum(ok) / 4
    assert knowledge.score_open(["1597"], ["1597"]) == (1.0, [True])
    with pytest.raises(ValueError, match="2 outputs for 1 facts"):
        knowledge.score_open(["a", "b"], facts[:1])


def test_wilson_interval():
    assert knowledge.wilson_ci(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert knowledge.wilson_ci(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert knowledge.wilson_ci(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert knowledge.wilson_ci(81, 100) == pytest.approx((0.7222, 0.8749), abs=1e-4)
    assert knowledge.wilson_ci(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        knowledge.wilson_ci(11, 10)


def test_accuracy_by(facts):
    sub = facts[:6]  # Zufenlo: river, founded, population, trade; the next town: river, founded
    by = knowledge.accuracy_by(sub, [True, False, True, True, False, False])
    assert by == {"town.river": 0.5, "town.founded": 0.0, "town.population": 1.0, "town.trade": 1.0}
    assert knowledge.accuracy_by(sub, [True] * 6, key="kind") == {"town": 1.0}


# ---------------------------------------------------------------- prompts

def test_open_prompt_forms(tokenizer, facts):
    f = facts[0]
    plain = knowledge.open_prompt(f, tokenizer)
    assert plain == knowledge.open_prompt(f.question, tokenizer)
    assert plain.endswith("<|im_start|>assistant\n")
    assert f"{knowledge.OPEN_INSTRUCTION}\n\nQuestion: {f.question}<|im_end|>" in plain
    passages = ["Zufenlo is a town on the river Belwen.", rag.Chunk("Sawen", 0, "Another passage.")]
    with_context = knowledge.open_prompt(f, tokenizer, context=passages)
    assert rag.rag_prompt(f.question, passages) + "<|im_end|>" in with_context
    assert knowledge.OPEN_INSTRUCTION not in with_context
    shots = knowledge.open_prompt(f, tokenizer, shots=knowledge.FEW_SHOT)
    pos = [shots.index(f"Question: {q}<|im_end|>\n<|im_start|>assistant\n{a}<|im_end|>") for q, a in knowledge.FEW_SHOT]
    assert pos == sorted(pos) and shots.index(f"Question: {f.question}") > pos[-1] and shots.endswith(plain[-40:])
    assert shots.count("<|im_start|>user") == len(knowledge.FEW_SHOT) + 1


def test_few_shot_examples_teach_format_not_world_facts(facts):
    assert 3 <= len(knowledge.FEW_SHOT) <= 6
    names = {w for f in facts for w in [f.entity, f.answer]}
    text = " ".join(q + " " + a for q, a in knowledge.FEW_SHOT)
    assert not [n for n in names if has(text, n)]
    assert not {q for q, _ in knowledge.FEW_SHOT} & {q for q, _ in corpora.GENERAL_QA}  # not the forgetting probe


# ---------------------------------------------------------------- multiple choice

def test_mc_loglik_matches_one_by_one_computation(tiny, facts, full_sequence_loglik):
    model, tok = tiny
    picked = [facts[i] for i in (0, 13, 60, 101, 150, 237)]
    prompts = [knowledge.open_prompt(picked[0], tok),
               knowledge.open_prompt(picked[1], tok, shots=knowledge.FEW_SHOT[:2]),
               knowledge.open_prompt(picked[2], tok, context=[picked[2].statement]),
               knowledge.open_prompt(picked[3], tok),
               knowledge.open_prompt(picked[4], tok, shots=knowledge.FEW_SHOT),
               knowledge.open_prompt(picked[5], tok)]
    options = [list(f.options) for f in picked]
    options[3] = options[3][:2]  # a prompt may have any number of options
    expected = [[full_sequence_loglik(model, tok, p, o) for o in opts] for p, opts in zip(prompts, options)]
    for bs in (1, 5, 64):
        got = knowledge.mc_loglik(model, tok, prompts, options, batch_size=bs)
        assert [len(g) for g in got] == [4, 4, 4, 2, 4, 4]
        for g, e in zip(got, expected):
            assert g == pytest.approx(e, abs=1e-4)
    assert all(v < 0 for row in expected for v in row)
    assert len({round(v, 3) for row in expected for v in row}) > 15  # options do score differently
    bf16 = knowledge.mc_loglik(model, tok, prompts[:2], options[:2], precision="bf16")
    assert all(abs(a - b) < 1.0 for ra, rb in zip(bf16, expected) for a, b in zip(ra, rb))
    assert knowledge.mc_loglik(model, tok, [], []) == []
    with pytest.raises(ValueError, match="option 1 of prompt 0 is empty"):
        knowledge.mc_loglik(model, tok, prompts[:1], [["a", ""]])
    with pytest.raises(ValueError, match="1 prompts for 2 option lists"):
        knowledge.mc_loglik(model, tok, prompts[:1], options[:2])


def test_mc_prefers_what_the_model_was_taught(tiny, facts, full_sequence_loglik):
    model, tok = tiny
    model = copy.deepcopy(model)
    taught = [facts[i] for i in (1, 40, 90, 170)]
    prompts = [knowledge.open_prompt(f, tok) for f in taught]
    options = [f.options for f in taught]
    before = knowledge.mc_loglik(model, tok, prompts, options)
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(25):
        for p, f in zip(prompts, taught):
            p_ids = tok(p, add_special_tokens=False)["input_ids"]
            ids = torch.tensor([p_ids + tok(f.answer, add_special_tokens=False)["input_ids"]])
            labels = ids.clone()
            labels[0, :len(p_ids)] = -100  # loss on the answer only
            model(input_ids=ids, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad()
    after = knowledge.mc_loglik(model, tok, prompts, options)
    assert knowledge.score_mc(after, taught) == (1.0, [True] * 4)
    for f, b, a in zip(taught, before, after):
        assert a[f.gold_index] > b[f.gold_index] + 2
        assert a[f.gold_index] == pytest.approx(full_sequence_loglik(model, tok, knowledge.open_prompt(f, tok), f.answer), abs=1e-4)
    wrong = [dataclasses.replace(f, gold_index=(f.gold_index + 1) % 4) for f in taught]
    assert knowledge.score_mc(after, wrong) == (0.0, [False] * 4)


def test_score_mc_on_hand_made_scores(facts):
    f = facts[0]
    g = f.gold_index
    row = lambda gold, other: [gold if j == g else other for j in range(4)]  # noqa: E731
    assert knowledge.score_mc([row(-1.0, -2.0), row(-3.0, -2.0), row(-2.0, -2.0)], [f, f, f]) == (1 / 3, [True, False, False])
    with pytest.raises(ValueError, match="no multiple-choice options"):
        knowledge.score_mc([[0.0]], [Fact("", "", "x", "Q?", kind="user")])
    with pytest.raises(ValueError, match="3 scores for 4 options"):
        knowledge.score_mc([[0.0, 1.0, 2.0]], [f])


# ---------------------------------------------------------------- user documents and questions

def test_user_documents_from_a_folder(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.txt").write_text("Alpha text.\nSecond line.\n")
    (tmp_path / "sub" / "b.md").write_text("Intro line.\n\n# The Beta Notes\n\nBeta text.\n")
    (tmp_path / "c.md").write_text("No heading here.")
    (tmp_path / ".hidden.txt").write_text("skip me")
    (tmp_path / "table.csv").write_text("x,y\n")
    docs = knowledge.user_documents(tmp_path)
    assert [(d["id"], d["title"]) for d in docs] == [("a.txt", "a"), ("c.md", "c"), ("sub/b.md", "The Beta Notes")]
    assert docs[0]["text"] == "Alpha text.\nSecond line." and docs[0]["kind"] == "user"
    assert [c.doc_id for c in rag.chunk(docs)] == ["a.txt", "c.md", "sub/b.md"]  # ready for retrieval
    assert knowledge.user_documents(tmp_path / "a.txt") == [docs[0]]
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(DataError, match=r"empty\.txt: empty document"):
        knowledge.user_documents(tmp_path)
    (tmp_path / "empty.txt").write_bytes(b"caf\xe9")
    with pytest.raises(DataError, match=r"empty\.txt line 1: not UTF-8"):
        knowledge.user_documents(tmp_path)
    (tmp_path / "none").mkdir()
    with pytest.raises(DataError, match=r"none: no \.txt or \.md files"):
        knowledge.user_documents(tmp_path / "none")
    with pytest.raises(DataError, match="documents not found"):
        knowledge.user_documents(tmp_path / "missing")
    with pytest.raises(DataError, match="unsupported document file '.csv'"):
        knowledge.user_documents(tmp_path / "table.csv")


def write_lines(path, lines):
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return path


def test_user_documents_from_jsonl(tmp_path):
    p = write_lines(tmp_path / "docs.jsonl", [{"title": "Guide", "text": "Some text."}, "",
                                              {"text": "Untitled text."}, {"id": 7, "title": "Guide", "text": "Again."}])
    docs = knowledge.user_documents(p)
    assert [(d["id"], d["title"], d["text"]) for d in docs] == [
        ("Guide", "Guide", "Some text."), ("docs 3", "", "Untitled text."), ("7", "Guide", "Again.")]
    cases = [
        ([{"text": "ok"}, {"title": "x"}], r"docs\.jsonl line 2: missing required field 'text'"),
        ([{"text": "ok"}, "{not json"], r"docs\.jsonl line 2: malformed JSON"),
        ([{"text": "   "}], r"line 1: field 'text' must be a non-empty string"),
        ([{"text": "a", "title": 3}], r"line 1: field 'title' must be a string"),
        ([{"title": "T", "text": "a"}, {"title": "T", "text": "b"}], r"line 2: duplicate document id 'T' \(also at .*line 1\)"),
        ([[1, 2]], r"line 1: expected a JSON object"),
    ]
    for lines, message in cases:
        with pytest.raises(DataError, match=message):
            knowledge.user_documents(write_lines(tmp_path / "docs.jsonl", lines))
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError, match="no documents"):
        knowledge.user_documents(tmp_path / "empty.jsonl")


def test_load_questions(tmp_path):
    docs = [{"id": "guide", "text": "The lamp was made in 1801."}]
    p = write_lines(tmp_path / "q.jsonl", [
        {"question": "When was the lamp made?", "answer": 1801, "options": ["1799", "1801", "1802", "1900"], "doc_id": "guide"},
        {"question": "Who made it?", "answer": "Ada"}])
    qs = knowledge.load_questions(p, docs)
    assert qs[0] == Fact("", "", "1801", "When was the lamp made?", ("1799", "1801", "1802", "1900"), 1, "guide", "", "user")
    assert qs[1].options == () and qs[1].gold_index == -1 and qs[1].doc_id == ""
    assert knowledge.score_open(["It was 1801.", "Bob"], qs) == (0.5, [True, False])
    cases = [
        ({"answer": "x"}, "q.jsonl line 2: missing required field 'question'"),
        ({"question": "Q?"}, "line 2: missing required field 'answer'"),
        ({"question": "Q?", "answer": ""}, "line 2: field 'answer' must be a non-empty string"),
        ({"question": ["Q?"], "answer": "a"}, "line 2: field 'question' must be a non-empty string"),
        ({"question": "Q?", "answer": "a", "options": ["a"]}, "line 2: field 'options' must be a list of at least 2"),
        ({"question": "Q?", "answer": "a", "options": "a, b"}, "line 2: field 'options' must be a list"),
        ({"question": "Q?", "answer": "a", "options": ["b", "c", "d", "e"]}, "line 2: field 'options' does not contain the answer 'a'"),
        ({"question": "Q?", "answer": "a", "options": ["a", "b", "The b", "c"]}, "line 2: field 'options' lists 'The b' twice"),
        ({"question": "Q?", "answer": "a", "options": ["a", None]}, r"line 2: field 'options'\[1\] must be"),
        ({"question": "Q?", "answer": "a", "doc_id": "nope"}, "line 2: field 'doc_id': no document with id 'nope'"),
    ]
    for bad, message in cases:
        with pytest.raises(DataError, match=message):
            knowledge.load_questions(write_lines(tmp_path / "q.jsonl", [{"question": "Q?", "answer": "a"}, bad]), docs)
    with pytest.raises(DataError, match="questions must be a .jsonl file"):
        knowledge.load_questions(write_lines(tmp_path / "q.json", ["{}"]))
    with pytest.raises(DataError, match="questions file not found"):
        knowledge.load_questions(tmp_path / "missing.jsonl")


# ---------------------------------------------------------------- the notebook's helpers

def test_select_spreads_over_types_and_is_deterministic():
    facts = knowledge.world_facts(corpora.invented_world(seed=0), seed=0)
    a, b = knowledge.select(facts, 26, seed=0), knowledge.select(facts, 26, seed=0)
    assert a == b and len(a) == 26 and len(set(a)) == 26
    types = {f.type for f in facts}
    assert {f.type for f in a} == types  # 13 types, two each
    assert knowledge.select(facts, 0) == list(facts)


def test_ask_scores_both_forms(tiny):
    model, tok = tiny
    facts = knowledge.world_facts(corpora.invented_world(seed=0), seed=0)[:6]
    r = knowledge.ask(model, tok, facts, max_new_tokens=4, batch_size=4)
    assert r["n_open"] == r["n_mc"] == 6 and len(r["outputs"]) == len(r["open_ok"]) == len(r["mc_ok"]) == 6
    assert r["mc"] == sum(r["mc_ok"]) / 6 and r["open"] == sum(r["open_ok"]) / 6
    assert all(0 <= c < 4 for c in r["mc_choice"])
    assert [c == f.gold_index for c, f in zip(r["mc_choice"], facts)] == r["mc_ok"]
    ctx = [[f.statement] for f in facts]
    with_ctx = knowledge.ask(model, tok, facts, contexts=ctx, max_new_tokens=4, batch_size=4)
    assert len(with_ctx["outputs"]) == 6


def test_findings_follow_the_numbers():
    acc = {"base": {"open": 0.0, "mc": 0.3}, "ft": {"open": 0.05, "mc": 0.35}, "ft_paraphrase": {"open": 0.1, "mc": 0.4},
           "rag": {"open": 0.8, "mc": 0.9}, "rag_ft": {"open": 0.7, "mc": 0.85}}
    text = " ".join(knowledge.findings(acc, {0: 0.05, 2: 0.1}, {3: 0.95}, 3))
    assert "Retrieval wins" in text and "Paraphrases help" in text and "is not better than RAG alone" in text
    acc["ft_paraphrase"]["open"], acc["rag"]["open"] = 0.01, 0.05
    text = " ".join(knowledge.findings(acc, {0: 0.05, 2: 0.01}, {3: 0.95}, 3))
    assert "Retrieval does not win" in text and "Paraphrases do not help" in text and "is better than RAG alone" in text


def test_one_prompt_pass_serves_open_replies_and_multiple_choice(tiny, facts, full_sequence_loglik):
    """read_prompts (ask): the prompt's prefill is shared by greedy generation and the options' scores; in fp32 the
    replies are evaluate.generate's and the scores the one-by-one log-likelihoods, whatever the batch size."""
    model, tok = tiny
    model = copy.deepcopy(model)
    torch.manual_seed(0)
    with torch.no_grad():  # the untrained tiny model replies with newlines only: noise makes replies that differ
        for w in model.parameters():
            w.add_(torch.randn_like(w) * 0.1)
    picked = [facts[i] for i in (0, 13, 60, 101)]
    prompts = [knowledge.open_prompt(f, tok, shots=knowledge.FEW_SHOT[:i]) for i, f in enumerate(picked)]
    options = [list(f.options) for f in picked]
    options[1] = []  # a question without options still gets its reply
    expected = [[full_sequence_loglik(model, tok, p, o) for o in opts] for p, opts in zip(prompts, options)]
    replies = evaluate.generate(model, tok, prompts, max_new_tokens=6, batch_size=1, cache=False)
    assert len(set(replies)) > 1
    for bs in (1, 3, 64):
        scores, got = knowledge.read_prompts(model, tok, prompts, options, 6, bs)
        assert got == replies
        assert scores[1] == [] and [len(s) for s in scores] == [4, 0, 4, 4]
        for g, e in zip(scores, expected):
            assert g == pytest.approx(e, abs=1e-4)
    assert knowledge.read_prompts(model, tok, prompts, options, 0)[1] == [""] * 4  # scores only
