"""nbft.tasks: the checks, the task table, and the one reply parser every stage uses."""
import json

import pytest

from nbft import knowledge, rlhf, tasks

GOOD = '{"topic": "math", "answer": "4"}'


@pytest.mark.parametrize("output, ok", [
    (GOOD, True),
    ('  {"answer": "Paris", "topic": "geography"} ', True),
    ('{"topic": "math", "answer": "4"} extra', False),
    ('{"topic": "cooking", "answer": "4"}', False),
    ('{"topic": "math", "answer": ""}', False),
    ('{"topic": "math", "answer": "4", "note": "x"}', False),
    ('{"topic": "math"}', False),
    ("The answer is 4.", False),
    ("[1, 2]", False),
])
def test_json_answer_check(output, ok):
    assert tasks.check_json_answer(output) is ok


@pytest.mark.parametrize("check, output, ref, ok", [
    ("exact", "The Paris.", "paris", True),
    ("exact", "Paris, France", "Paris", False),
    ("exact", "1,2,3", "1, 2, 3", True),
    ("contains", "It is Paris, France", "Paris", True),
    ("contains", "London", "Paris", False),
    ("contains", "anything", "", False),
    ("contains", "about -18.0000001 degrees", "0", False),
    ("contains", "Mount Everest, the tallest", "everest", True),
    ("contains", "It boils at 100°C.", "100", True),
    ("contains", '{"topic": "geography", "answer": "Paris"}', "Paris", True),
    ("contains", '{"topic": "geography", "answer": "Rome"}', "geography", False),  # the answer field counts
])
def test_text_checks(check, output, ref, ok):
    assert tasks.CHECKS[check](output, ref) is ok


@pytest.mark.parametrize("reply, answer", [
    ('{"topic": "x", "answer": "Yes it is."}', "Yes it is."),
    ('{"topic": "x", "answer": "Cut of', "Cut of"),  # a JSON reply cut off mid-answer
    ('```json\n{"answer": "the tagra loom"}\n```', "the tagra loom"),
    ('{"answer": 1597}', "1597"),
    ('"Belwen"', "Belwen"),
    ("  plain reply  ", "plain reply"),
    ('{"topic": "x"}', '{"topic": "x"}'),
    ("", ""),
])
def test_answer_of(reply, answer):
    assert tasks.answer_of(reply) == answer


def test_with_answer_keeps_the_wrapper():
    assert json.loads(tasks.with_answer('{"topic": "t", "answer": "a"}', "b")) == {"topic": "t", "answer": "b"}
    assert tasks.with_answer("plain", "other") == "other"
    assert tasks.answer_of(tasks.with_answer(GOOD, "five")) == "five"


REPLIES = [GOOD, '{"topic": "math", "answer": "The answer is Paris."}', '```json\n{"answer": "Paris"}\n```',
           '{"topic": "geography", "answer": "Par', "Paris, of course.", '"Paris"', "It is in Paris's center."]


@pytest.mark.parametrize("reply", REPLIES)
def test_every_stage_reads_the_same_answer(reply):
    """The forgetting probe and task scores (02/03), the RAG-vs-FT scorer (05) and the RLHF judge (04) agree."""
    assert knowledge.check_open(reply, "Paris") is tasks.check_contains(reply, "Paris")
    assert tasks.answer_accuracy([reply], ["Paris"]) == float(tasks.check_contains(reply, "Paris"))
    # the RLHF rule judges the same text: its on-topic check sees the answer the others see
    assert rlhf.rule_checks("Where is Paris?", reply)["on_topic"] == (1.0 if "paris" in tasks.answer_of(reply).lower() else 0.0)


def test_score_records_per_task_and_answer_accuracy():
    recs = [{"check": "json_answer", "reference": "4", "task": "json_qa"},
            {"check": "exact", "reference": "1, 2", "task": "sort_numbers"},
            {"check": "exact", "reference": "3, 4", "task": "sort_numbers"}]
    mean, passed, by_task = tasks.score_records([GOOD, "1, 2", "4, 3"], recs)
    assert passed == [True, True, False] and by_task == {"json_qa": 1.0, "sort_numbers": 0.5}
    assert mean == pytest.approx(2 / 3)
    assert tasks.answer_accuracy([GOOD, '{"topic": "math", "answer": "5"}'], ["4", "4"]) == 0.5
    assert tasks.score_records([GOOD, "x"], recs[:2], "json_answer")[1] == [True, False]


def test_resolve_check():
    assert tasks.resolve_check("auto", [{"check": "json_answer"}, {"check": "exact"}]) == "per-record"
    assert tasks.resolve_check("auto", [{"check": "json_answer"}]) == "json_answer"
    assert tasks.resolve_check("auto", [{}]) == "contains"
    with pytest.raises(ValueError, match="unknown check"):
        tasks.resolve_check("bogus", [])


@pytest.mark.parametrize("name", list(tasks.TASKS))
def test_every_task_row_generates_examples_its_check_accepts(name):
    import random

    row = tasks.TASKS[name]
    assert row.check in tasks.CHECKS and row.note
    examples = row.generate(random.Random(0), 20)
    assert len(examples) == 20 and len({q for q, _, _ in examples}) == 20
    assert all(tasks.CHECKS[row.check](reply, ref) for _, reply, ref in examples)
