"""Data: formats, errors naming file/line/field, cleaning, splitting, the demo dataset."""
import json

import pytest

from nbft import data, params, tasks

REPLY = {"role": "assistant", "content": "Paris"}
USER = {"role": "user", "content": "Capital of France?"}
FORMATS = {
    "alpaca": {"instruction": "Capital of France?", "input": "", "output": "Paris"},
    "messages": {"messages": [USER, REPLY]},
    "sharegpt": {"conversations": [{"from": "human", "value": "Capital of France?"}, {"from": "gpt", "value": "Paris"}]},
    "prompt_completion": {"prompt": "Capital of France?", "completion": "Paris"},
    "prompt_completion_chat": {"prompt": [USER], "completion": [REPLY]},
}


@pytest.mark.parametrize("name", list(FORMATS))
def test_formats_normalize_to_one_form(name):
    rec = data.normalize_record(FORMATS[name], "x")
    assert rec["messages"] == [USER, REPLY]
    assert rec["reference"] == "Paris"


def test_alpaca_input_joins_instruction():
    rec = data.normalize_record({"instruction": "Translate", "input": "chat", "output": "cat"}, "x")
    assert rec["messages"][0]["content"] == "Translate\n\nchat"


def test_text_format():
    assert data.normalize_record({"text": "Once upon a time"}, "x") == {"text": "Once upon a time"}


def write_jsonl(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def test_malformed_jsonl_names_file_and_line(tmp_path):
    f = write_jsonl(tmp_path / "d.jsonl", [json.dumps(FORMATS["alpaca"]), json.dumps(FORMATS["alpaca"]), '{"instruction": "x", "output": '])
    with pytest.raises(data.DataError) as e:
        data.read_file(f)
    assert f"{f} line 3" in str(e.value) and "malformed JSON" in str(e.value)


def test_missing_field_is_named(tmp_path):
    f = write_jsonl(tmp_path / "d.jsonl", [json.dumps(FORMATS["alpaca"]), json.dumps({"instruction": "x", "input": "y"})])
    with pytest.raises(data.DataError) as e:
        data.normalize(data.read_file(f))
    msg = str(e.value)
    assert f"{f} line 2" in msg and "'output'" in msg and "alpaca" in msg


def test_bad_message_list_is_named(tmp_path):
    f = write_jsonl(tmp_path / "d.jsonl", [json.dumps({"messages": [{"role": "user"}]})])
    with pytest.raises(data.DataError, match=r"line 1: messages\[0\] needs fields 'role' and 'content'"):
        data.normalize(data.read_file(f))


def test_unknown_format_lists_the_known_ones():
    with pytest.raises(data.DataError, match="cannot tell the format.*instruction/input/output"):
        data.normalize_record({"question": "q", "answer": "a"}, "f line 1")


def test_missing_file():
    with pytest.raises(data.DataError, match="data file not found: nope.jsonl"):
        data.load_raw("nope.jsonl")


def test_csv_and_json(tmp_path):
    c = tmp_path / "d.csv"
    c.write_text("instruction,input,output\nCapital of France?,,Paris\n")
    assert data.normalize(data.read_file(c))[0]["messages"] == [USER, REPLY]
    j = tmp_path / "d.json"
    j.write_text(json.dumps([FORMATS["messages"]]))
    assert data.normalize(data.read_file(j))[0]["reference"] == "Paris"


def test_render_chat_and_alpaca(tokenizer):
    rec = data.normalize_record(FORMATS["messages"], "x")
    chat = data.render(rec, tokenizer, "chat")
    assert chat["prompt"].endswith("<|im_start|>assistant\n") and "Capital of France?" in chat["prompt"]
    assert chat["completion"] == "Paris" + tokenizer.eos_token
    alp = data.render(rec, tokenizer, "alpaca")
    assert alp["prompt"].startswith("Below is an instruction") and alp["prompt"].endswith("### Response:\n")


def test_dedup_ignores_case_and_whitespace():
    a = data.normalize_record(FORMATS["messages"], "x")
    b = {"messages": [{"role": "user", "content": "  CAPITAL of   france? "}, REPLY], "reference": "Paris"}
    kept, n = data.dedup([a, b, a])
    assert n == 2 and kept == [a]


def test_quality_filter_counts_each_rule(tokenizer):
    recs = [data.render({"messages": [USER, {"role": "assistant", "content": c}], "reference": ""}, tokenizer)
            for c in ["", "ok", "a fine answer of several words", "word " * 300]]
    recs.append(data.render({"messages": [USER, {"role": "assistant", "content": "Paris is the answer here"}],
                             "reference": "", "check": "json_answer"}, tokenizer))
    kept, removed = data.quality_filter(recs, tokenizer, min_tokens=3, max_tokens=100)
    assert removed == {"empty": 1, "too_short": 1, "too_long": 1, "off_format": 1}
    assert len(kept) == 1 and kept[0]["n_tokens"] > 3
    _, removed = data.quality_filter(recs, tokenizer, min_tokens=3, max_tokens=100, check_format=False)
    assert removed["off_format"] == 0


def test_quality_filter_that_removes_everything_says_so(tokenizer):
    recs = [data.render(data.normalize_record(FORMATS["messages"], "x"), tokenizer)]
    with pytest.raises(data.DataError, match="removed all 1 examples"):
        data.quality_filter(recs, tokenizer, min_tokens=50, max_tokens=100)


def test_split_is_deterministic_and_disjoint():
    recs = [{"i": i} for i in range(100)]
    a = data.split(recs, 0.1, 0.2, seed=1)
    assert a == data.split(recs, 0.1, 0.2, seed=1)
    assert a != data.split(recs, 0.1, 0.2, seed=2)
    assert [len(a[s]) for s in data.SPLITS] == [70, 10, 20]
    ids = [r["i"] for s in data.SPLITS for r in a[s]]
    assert sorted(ids) == list(range(100))


def test_split_rejects_bad_fractions():
    with pytest.raises(data.DataError):
        data.split([{}], 0.6, 0.5, 0)


ALL_TASKS = list(tasks.TASKS)


def test_demo_is_deterministic_and_seeded():
    assert tasks.demo_dataset(100, seed=0) == tasks.demo_dataset(100, seed=0)
    assert tasks.demo_dataset(100, seed=0) != tasks.demo_dataset(100, seed=1)


def test_demo_too_large_or_unknown_task_is_an_error():
    with pytest.raises(data.DataError, match="at most"):
        data.load_raw("demo", n_examples=100000)
    with pytest.raises(data.DataError, match="unknown task"):
        data.load_raw("demo", demo_tasks=["json_qa", "poetry"])


@pytest.mark.parametrize("names", [["json_qa"], ALL_TASKS], ids=["single-task", "multi-task"])
def test_prepare_removes_every_planted_problem(tokenizer, names):
    n = 150
    prep = data.prepare(params.DataPrepParams(model="tiny-llama", n_examples=n, demo_tasks=names), tokenizer)
    assert prep.n_removed_duplicates == n // 25
    n_json = n // len(names) + (n % len(names) > 0)
    assert prep.removed_by_filter == {"empty": 3, "too_short": 3, "too_long": 3, "off_format": n_json // 10}
    assert sum(prep.counts().values()) == n - n_json // 10
    allrecs = [r for s in data.SPLITS for r in prep.splits[s]]
    # every kept reply passes its own task's check, and every task is represented
    assert all(tasks.passes(r["messages"][-1]["content"], r) for r in allrecs)
    assert {r["task"] for r in allrecs} == set(names)
    train_prompts = {r["prompt"] for r in prep.splits["train"]}
    assert not train_prompts & {r["prompt"] for r in prep.splits["test"]}


def test_multi_task_uses_several_phrasings_per_task():
    recs = tasks.demo_dataset(200, 0, ["sort_numbers", "uppercase"])
    for task in ("sort_numbers", "uppercase"):
        firsts = {r["messages"][0]["content"].split(":")[0] for r in recs if r.get("task") == task}
        assert len(firsts) >= 3, (task, firsts)


def test_save_and_load_splits(tmp_path):
    splits = {"train": [{"a": 1}], "validation": [], "test": [{"a": 2}]}
    data.save_splits(splits, tmp_path, {"n": 1})
    assert data.load_splits(tmp_path) == splits
    assert json.loads((tmp_path / "data_card.json").read_text()) == {"n": 1}
