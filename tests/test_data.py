"""Data: formats, errors naming file/line/field, cleaning, splitting, the demo dataset."""
import json
import os
import re

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


# ---------------------------------------------------------------- issue 29: readers that stream and cap, valid forms

RECS = [{"instruction": f"Say hello to friend {i}", "output": f"Hello there, friend number {i}."} for i in range(40)]
CSV = "instruction,output\n" + "".join(f'{r["instruction"]},"{r["output"]}"\n' for r in RECS)


def test_a_symlink_to_an_extensionless_blob_is_read_by_the_links_name(tmp_path, tokenizer):
    """How the Hugging Face cache and git-annex store files: the data is a blob named by its hash, the name with
    the suffix is a symlink to it. nbft run keeps the link's name when it makes the path absolute, and the reader
    takes the format from it; the whole chain of 01 runs on it."""
    from nbft import cli

    (tmp_path / "blobs").mkdir()
    (tmp_path / "blobs" / "3f9a2c41").write_text("".join(json.dumps(r) + "\n" for r in RECS))
    (tmp_path / "blobs" / "77e0b1").write_text(CSV)
    (tmp_path / "snapshot").mkdir()
    (tmp_path / "snapshot" / "train.jsonl").symlink_to("../blobs/3f9a2c41")
    (tmp_path / "snapshot" / "train.csv").symlink_to("../blobs/77e0b1")
    for name in ("train.jsonl", "train.csv"):
        link = tmp_path / "snapshot" / name
        assert [rec for _, rec in data.load_raw(str(link))] == RECS
    resolved = params.resolve(None, ["01_data_prep.dataset=snapshot/train.jsonl", "model=tiny-llama"])
    cwd = os.getcwd()
    try:
        os.chdir(tmp_path)
        cli._absolutize_paths(resolved)
    finally:
        os.chdir(cwd)
    p = resolved["01_data_prep"]
    assert p.dataset == str(tmp_path / "snapshot" / "train.jsonl")  # the link, not the blob it points to
    prepared = data.prepare(p, tokenizer)
    assert prepared.n_raw == len(RECS) and sum(prepared.counts().values()) == len(RECS)
    data.check_prepared(p, tokenizer)


@pytest.mark.parametrize("content, fmt", [
    ("".join(json.dumps(r) + "\n" for r in RECS), "JSONL"),
    (json.dumps(RECS, indent=1), "JSON"),
    (json.dumps({"data": RECS}), "JSON"),
    (CSV, "CSV"),
    ("\n" + json.dumps({"messages": [USER, REPLY]}) + "\n", "JSONL"),
], ids=["jsonl", "json list", "json object holding a list", "csv", "one jsonl messages record"])
def test_an_extensionless_file_is_sniffed_and_says_what_it_read(tmp_path, capsys, content, fmt):
    blob = tmp_path / "blob"
    blob.write_text(content)
    recs = [rec for _, rec in data.read_file(blob)]
    assert recs == ([FORMATS["messages"]] if "messages" in content else RECS)
    assert f"read as {fmt} (" in capsys.readouterr().out
    p = params.DataPrepParams(dataset=str(blob))
    assert data.data_card(p, {s: [] for s in data.SPLITS}, 0, {})["read_as"].startswith(fmt)


def test_long_but_acceptable_lines_are_read(tmp_path):
    """The cap is on one record (1,000,000 characters): a file of many ordinary records, and records of up to the
    cap, are read; one character more is refused naming the line."""
    long = {"instruction": "Summarize this.", "output": "word " * 199_990}  # ~1,000,000 characters on its line
    f = tmp_path / "d.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in [*RECS, long] * 3))
    recs = data.read_jsonl(f)
    assert len(recs) == 3 * (len(RECS) + 1) and recs[len(RECS)][1] == long
    over = {"instruction": "x", "output": "y" * data.MAX_RECORD_CHARS}
    f.write_text(json.dumps(RECS[0]) + "\n" + json.dumps(over) + "\n")
    with pytest.raises(data.DataError, match=r"d\.jsonl line 2: 1,000,03\d characters; a record holds at most 1,000,000"):
        data.read_jsonl(f)


class CountingTokenizer:
    """The real tokenizer, recording the length of every text it is asked to tokenize."""

    def __init__(self, tok, vocab=True):
        self.tok, self.lengths, self.vocab = tok, [], vocab

    def __call__(self, text, **kw):
        self.lengths.append(len(text))
        return self.tok(text, **kw)

    def get_vocab(self):
        if not self.vocab:
            raise NotImplementedError
        return self.tok.get_vocab()

    def __getattr__(self, name):
        return getattr(self.tok, name)


def test_a_record_longer_than_max_tokens_by_characters_is_dropped_untokenized(tokenizer):
    per_token = data.chars_per_token(tokenizer)
    assert per_token == max(map(len, tokenizer.get_vocab())) and data.chars_per_token(tokenizer) is per_token
    rec = lambda reply: data.render({"messages": [USER, {"role": "assistant", "content": reply}], "reference": ""},
                                    tokenizer)
    huge = rec("many words " * 90_000)  # 990,000 characters
    counting = CountingTokenizer(tokenizer)
    kept, removed = data.quality_filter([rec("Paris is the capital."), huge], counting, min_tokens=3, max_tokens=384)
    assert removed["too_long"] == 1 and len(kept) == 1
    assert max(counting.lengths) <= 384 * per_token  # the long one was never tokenized


def test_the_character_bound_counts_what_tokenizing_counts(tokenizer):
    """Texts at the bound (SmolLM2's longest token, a newline and 80 spaces, n times: n tokens in 81 n characters)
    and around it: the filter with the bound keeps and removes exactly what it does tokenizing every record, and
    it does skip tokenizing the long ones."""
    per_token = data.chars_per_token(tokenizer)
    unit = "\n" + " " * 80
    assert len(unit) == per_token and len(tokenizer(unit * 7, add_special_tokens=False)["input_ids"]) == 7
    recs = [data.render({"text": "Q" + unit * n + tail}, tokenizer)
            for n in range(1, 11) for tail in ("", "x", " Paris", "#" * 80)]
    for min_tokens, max_tokens in ((4, 8), (5, 9), (3, 6), (6, 10)):
        bounded, unbounded = CountingTokenizer(tokenizer), CountingTokenizer(tokenizer, vocab=False)
        result = data.quality_filter(recs, bounded, min_tokens, max_tokens)
        assert result == data.quality_filter(recs, unbounded, min_tokens, max_tokens)
        assert result[1]["too_short"] and result[1]["too_long"], result[1]
        assert max(bounded.lengths) <= max_tokens * per_token < max(unbounded.lengths)


def test_nan_infinity_and_lone_surrogates_are_refused_naming_the_field(tmp_path):
    cases = {'{"instruction": NaN, "output": "x"}': ("field 'instruction'", "NaN"),
             '{"instruction": "a", "output": -Infinity}': ("field 'output'", "-Infinity"),
             '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "a\\udc00"}]}':
                 ("field 'messages[1].content'", "unpaired surrogate '\\udc00'"),
             '{"instruction": "a \\ud83d\\ude00", "output": "x"}': None}  # a whole pair is one character: fine
    for line, words in cases.items():
        f = tmp_path / "d.jsonl"
        f.write_text(json.dumps(RECS[0]) + "\n" + line + "\n")
        if words is None:
            assert data.read_jsonl(f)[1][1]["instruction"] == "a \U0001F600"
            continue
        with pytest.raises(data.DataError) as e:
            data.read_jsonl(f)
        assert "d.jsonl line 2" in str(e.value) and all(w in str(e.value) for w in words), str(e.value)


def test_a_hub_name_while_offline_is_looked_up_in_the_local_cache(tmp_path, monkeypatch):
    """The lookup ``datasets``' offline fallback does, without the network: a dataset cached once loads (here a
    cache made by datasets itself and moved under a hub name), one that is not is refused naming the variable."""
    import shutil

    import datasets

    f = tmp_path / "d.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in RECS))
    cache = tmp_path / "cache"
    datasets.load_dataset("json", data_files={"train": str(f)}, cache_dir=str(cache))
    built = next((cache / "json").glob("*/*/*[0-9a-f]"))
    target = cache / "someuser___some_data" / "default" / built.parent.name / built.name
    target.parent.mkdir(parents=True)
    shutil.move(str(built), str(target))
    (target / "json-train.arrow").rename(target / "some_data-train.arrow")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    data.check_hub("someuser/SomeData")
    assert [rec for _, rec in data.load_raw("someuser/SomeData")] == RECS
    with pytest.raises(data.DataError, match="no split 'test' \\(it has train\\)"):
        data.check_hub("someuser/SomeData", "test")
    with pytest.raises(data.DataError, match="dataset 'someuser/other': not in the local Hugging Face cache .* "
                                             "offline \\(HF_HUB_OFFLINE=1"):
        data.load_raw("someuser/other")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "0")  # datasets reads this one first: online, the notebook asks the hub
    data.check_hub("someuser/other")
    with pytest.raises(data.DataError, match="not a Hugging Face dataset name"):
        data.check_hub("a/b/c")


def test_input_path_names_what_a_path_is(tmp_path):
    (tmp_path / "loop").symlink_to("loop")
    (tmp_path / "dangling.jsonl").symlink_to("gone.jsonl")
    os.mkfifo(tmp_path / "fifo.jsonl")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "a.csv").write_text("x")
    (tmp_path / "file").write_text("x")
    for path, words in {tmp_path / "loop": "symbolic link loop", tmp_path / "dangling.jsonl": "which does not exist",
                        tmp_path / "fifo.jsonl": "a FIFO (named pipe)", tmp_path / "folder": "data files in it: a.csv",
                        "/dev/null": "a device", tmp_path / ("n" * 300): "File name too long",
                        tmp_path / "file" / "x.jsonl": "a part of the path is a file",
                        "~nbft-no-such-user/d.jsonl": "no user 'nbft-no-such-user'",
                        tmp_path / "nope.jsonl": "data file not found", "a\0b.jsonl": "not a usable path"}.items():
        with pytest.raises(data.DataError, match=re.escape(words)):
            data.input_path(path)
    assert data.input_path(tmp_path / "folder", folder=True) == tmp_path / "folder"
