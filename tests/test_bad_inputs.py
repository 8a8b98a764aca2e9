"""Every kind of bad input, one table row each: what is given, the exit code, the words the message must contain.

Each row runs ``nbft`` in-process (``cli.main``: the preflight exits before any notebook starts) against a runs
folder that already holds earlier runs, and checks that the exit code and message are the expected ones, that no
traceback was printed, and that no earlier run changed and no new folder appeared. A few rows run the installed
``nbft`` command in a subprocess, to show that what reaches a terminal is one message, not a traceback.
Placeholders in a row: ``{tmp}`` (the row's scratch folder), ``{runs}`` (the runs folder).
"""
import hashlib
import json
import os
import platform
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from nbft import cli, params, runs

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "params" / "smoke.yaml")
NBFT = str(Path(sys.executable).parent / "nbft")


@dataclass
class Row:
    id: str
    args: list[str]  # after "nbft"; "run"/"sweep" rows get --params smoke.yaml and --no-progress unless they give them
    words: list[str]  # the message (stderr, or stdout for rc 0) contains every one
    rc: int = 2
    files: dict = field(default_factory=dict)  # name under {tmp} -> str or bytes content (a name ending in / : a folder)
    subprocess: bool = False
    links: dict = field(default_factory=dict)  # name under {tmp} -> what the symbolic link points to (made after files)
    fifos: tuple = ()  # names under {tmp} made FIFOs (named pipes)


def jl(*recs) -> str:
    return "\n".join(r if isinstance(r, str) else json.dumps(r) for r in recs) + "\n"


GOOD = {"instruction": "Say hi", "output": "Hello there, friend."}
MSGS = lambda *turns: {"messages": [{"role": r, "content": c} for r, c in turns]}
PAIR = {"prompt": "Hi?", "chosen": "Hello there.", "rejected": "Go away."}
Q = {"question": "What colour is the sky of Zorbia?", "answer": "green", "doc_id": "a.txt"}
DEEP = "[" * 100_000 + "]" * 100_000
TOKENIZER = {"tokenizer.json": "{}", "tokenizer_config.json": "{}"}
LABELLED = "text,label\nrefund my fee,billing\ncharged twice,billing\nsite is down,outage\ncannot log in,outage\n"
#: "billion laughs": nine levels of nine aliases each, 9^9 strings once expanded
BOMB = "common:\n  report_to: &l0 [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"  l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 10))
BOMB_FLOW = "[&a [x, x, x, x, x, x, x, x, x], &b [*a, *a, *a, *a, *a, *a, *a, *a, *a], [*b, *b, *b, *b, *b, *b, *b, *b, *b]]"


def only(stage, *rest):
    return ["run", "--only", stage, *rest]


#: smoke labels 04's pairs with a judge, which a preferences file (its own labels) refuses: the pairs rows label by rule
RULE_LABELS = ("--set", "04_rlhf.feedback=rule", "--set", "04_rlhf.judge=")


def data(name, content, *rest, fmt=None):
    """A 01_data_prep row's arguments and files: ``content`` saved as ``name``, given as the dataset."""
    extra = ["--set", f"data_format={fmt}"] if fmt else []
    return dict(args=only("01_data_prep", "--set", f"dataset={{tmp}}/{name}", *extra, *rest), files={name: content})


def dataset(path, **row):
    """A 01_data_prep row whose dataset is ``path`` (made by the row's ``files``, ``links`` or ``fifos``)."""
    return dict(args=only("01_data_prep", "--set", f"dataset={path}"), **row)


LONG_NAME = "d" * 300 + ".jsonl"
OFFLINE = ["not in the local Hugging Face cache", "the hub is offline (HF_HUB_OFFLINE=1"]


ROWS = [
    # ---------------------------------------------------------------- parameters: ranges, NaN/inf, fractions, lists
    Row("epochs=0", ["run", "--set", "epochs=0"], ["epochs", "out of range", "in (0, 1000]"]),
    Row("02_sft.epochs=0", ["run", "--set", "02_sft.epochs=0"], ["02_sft.epochs", "out of range"]),
    Row("batch_size=0", ["run", "--set", "batch_size=0"], ["batch_size", ">= 1"]),
    Row("learning_rate=-1", ["run", "--set", "learning_rate=-1"], ["learning_rate", "-1.0", "> 0"]),
    Row("epochs=nan", ["run", "--set", "epochs=.nan"], ["epochs", "finite", "nan"]),
    Row("epochs=inf", ["run", "--set", "epochs=.inf"], ["epochs", "finite", "inf"]),
    Row("lora_r=0", ["run", "--set", "lora_r=0"], ["lora_r", ">= 1"]),
    Row("grad_accum=-1", ["run", "--set", "grad_accum=-1"], ["grad_accum", ">= 1"]),
    Row("top_k=-3", ["run", "--set", "top_k=-3"], ["top_k", "-3", ">= 1"]),
    Row("temperature=0", ["run", "--set", "temperature=0"], ["temperature", "> 0"]),
    Row("heldout_fraction=2", ["run", "--set", "heldout_fraction=2"], ["heldout_fraction", "(0, 1)"]),
    Row("methods bogus", ["run", "--set", "methods=[lora, bogus]"], ["methods[1]", "'bogus'", "not one of"]),
    Row("methods typo", ["run", "--set", "03_peft.methods=[lora, dorra]"], ["did you mean 'dora'"]),
    Row("validation_fraction=1.5", ["run", "--set", "validation_fraction=1.5"], ["validation_fraction", "[0, 1)"]),
    Row("n_examples=0", ["run", "--set", "n_examples=0"], ["n_examples", ">= 1"]),
    Row("n_examples=-5", ["run", "--set", "n_examples=-5"], ["n_examples", "-5"]),
    Row("max_records=-90", ["run", "--set", "max_records=-90"], ["max_records", ">= 0"]),
    Row("seed=-1", ["run", "--set", "seed=-1"], ["seed", "in [0, 4294967295]"]),
    Row("demo_tasks=[]", ["run", "--set", "demo_tasks=[]"], ["demo_tasks", "at least 1"]),
    Row("demo_tasks typo", ["run", "--set", "demo_tasks=[json_qa, sort_numbrs]"], ["did you mean 'sort_numbers'"]),
    Row("max_tokens=0", ["run", "--set", "max_tokens=0"], ["max_tokens", ">= 1"]),
    Row("fractions sum to 1", ["run", "--set", "validation_fraction=0.5", "--set", "01_data_prep.test_fraction=0.5"],
        ["validation_fraction=0.5 and test_fraction=0.5", "sum to less than 1"]),
    Row("min_tokens >= max_tokens", ["run", "--set", "min_tokens=400", "--set", "max_tokens=300"],
        ["min_tokens must be below max_tokens"]),
    Row("overlap_words >= chunk_words", ["run", "--set", "overlap_words=48", "--set", "chunk_words=48"],
        ["overlap_words must be below chunk_words"]),
    Row("compare_scopes typo", ["run", "--set", "compare_scopes=[lora, ful]"], ["did you mean 'full'"]),
    Row("compare_indexes typo", ["run", "--set", "compare_indexes=[flat, hnws]"], ["did you mean 'hnsw'"]),
    Row("approaches typo", ["run", "--set", "approaches=[lora, fulll]"], ["'fulll'", "did you mean 'full'"]),
    Row("distill methods typo", ["run", "--set", "07_distill.methods=[imitaton]"], ["did you mean 'imitation'"]),
    Row("report stages typo", ["run", "--set", "99_report.stages=[02_stf]"], ["did you mean '02_sft'"]),
    Row("beta=1.5", ["run", "--set", "beta=1.5"], ["beta", "[0, 1]"]),
    Row("num_generations=1", ["run", "--set", "num_generations=1"], ["num_generations", ">= 2"]),
    Row("samples_per_prompt=1", ["run", "--set", "samples_per_prompt=1"], ["samples_per_prompt", ">= 2"]),
    Row("lora_dropout=1", ["run", "--set", "lora_dropout=1"], ["lora_dropout", "[0, 1)"]),
    Row("max_new_tokens=0", ["run", "--set", "max_new_tokens=0"], ["max_new_tokens", ">= 1"]),
    Row("eval_batch_size=0", ["run", "--set", "eval_batch_size=0"], ["eval_batch_size"]),
    Row("n_eval=-1", ["run", "--set", "n_eval=-1"], ["n_eval", ">= 0"]),
    Row("dpo_beta=0", ["run", "--set", "dpo_beta=0"], ["dpo_beta", "> 0"]),
    Row("kl_beta=-0.1", ["run", "--set", "kl_beta=-0.1"], ["kl_beta", ">= 0"]),
    Row("save_steps=-1", ["run", "--set", "save_steps=-1"], ["save_steps", ">= 0"]),
    Row("sweep_sizes=[0]", ["run", "--set", "sweep_sizes=[16, 0]"], ["sweep_sizes[1]", ">= 1"]),
    Row("recall_ks=[0]", ["run", "--set", "recall_ks=[0]"], ["recall_ks[0]"]),
    Row("adapt_sizes=[-1]", ["run", "--set", "adapt_sizes=[-1]"], ["adapt_sizes[0]", ">= 0"]),
    Row("combine_weights nan", ["run", "--set", "combine_weights=[.nan, 0.5]"], ["combine_weights[0]", "finite"]),
    Row("01 test_fraction=0", ["run", "--set", "01_data_prep.test_fraction=0"], ["test_fraction", "(0, 1)"]),
    Row("06 test_fraction=1", ["run", "--set", "06_classify.test_fraction=1"], ["06_classify.test_fraction"]),
    Row("student_layers=0", ["run", "--set", "student_layers=0"], ["student_layers", ">= 1"]),
    Row("imitation_temperature=0", ["run", "--set", "imitation_temperature=0"], ["imitation_temperature"]),
    Row("max_steps=0", ["run", "--set", "03_peft.max_steps=0"], ["max_steps", ">= 1"]),
    Row("rl_steps=0", ["run", "--set", "rl_steps=0"], ["rl_steps"]),
    Row("chunk_words=0", ["run", "--set", "chunk_words=0"], ["chunk_words", ">= 1"]),
    Row("freeze_top_n=-1", ["run", "--set", "freeze_top_n=-1"], ["freeze_top_n"]),
    Row("cpt_epochs=0", ["run", "--set", "02_sft.cpt_epochs=0"], ["cpt_epochs", "in (0, 1000]"]),
    Row("rm_epochs=-1", ["run", "--set", "rm_epochs=-1"], ["rm_epochs"]),
    Row("batch_size=two", ["run", "--set", "batch_size=two"], ["batch_size", "expected int", "'two'"]),
    Row("epochs=[1]", ["run", "--set", "epochs=[1]"], ["epochs", "expected float"]),
    Row("lora_r=true", ["run", "--set", "lora_r=true"], ["lora_r", "expected int"]),
    Row("device=gpu", ["run", "--set", "device=gpu"], ["device", "'gpu' is not one of"]),
    Row("precision=fp8", ["run", "--set", "precision=fp8"], ["precision", "not one of"]),
    Row("unknown key", ["run", "--set", "02_sft.lerning_rate=1"], ["did you mean 'learning_rate'"]),
    Row("unknown bare key", ["run", "--set", "epoch=3"], ["did you mean 'epochs'"]),
    Row("set without =", ["run", "--set", "epochs"], ["expected key=value"]),
    Row("set nested deep", ["run", "--set", f"sweep_sizes={DEEP}"], ["sweep_sizes", "nested too deeply"]),
    Row("params cmd range", ["params", "--set", "epochs=0"], ["epochs", "out of range"]),
    # ---------------------------------------------------------------- names: --name, run_name, --only
    Row("name ../x", ["run", "--name", "../x"], ["'../x'", "letters, digits"]),
    Row("name with /", ["run", "--name", "a/b"], ["letters, digits"]),
    Row("name .hidden", ["run", "--name", ".hidden"], ["must not start with '.'"]),
    Row("name 300 chars", ["run", "--name", "n" * 300], ["300 characters", "at most 100"]),
    Row("name with space", ["run", "--name", "my run"], ["letters, digits"]),
    Row("name exists", ["run", "--name", "earlier"], ["already exists", "never overwritten"]),
    Row("run_name ../x", ["run", "--set", "run_name=../x"], ["run_name", "letters, digits"]),
    Row("run_name 300 chars", ["run", "--set", "run_name=" + "r" * 300], ["at most 100"]),
    Row("only unknown", ["run", "--only", "08_nothing"], ["--only 08_nothing", "unknown stage"]),
    Row("only typo", ["run", "--only", "02_stf"], ["did you mean '02_sft'"]),
    # ---------------------------------------------------------------- model and device
    Row("model unknown", ["run", "--set", "model=no-such-model"], ["cannot resolve model 'no-such-model'", "Tried"]),
    Row("model 300 chars", ["run", "--set", "model=" + "m" * 300], ["cannot resolve model", "File name too long"]),
    Row("model folder config only", ["run", "--set", "model={tmp}/m"], ["no weights", "no tokenizer"],
        files={"m/config.json": "{}"}),
    Row("model folder no tokenizer", ["run", "--set", "model={tmp}/m"], ["no tokenizer", "not a model folder"],
        files={"m/config.json": "{}", "m/model.safetensors": b"x"}),
    Row("model folder empty", ["run", "--set", "model={tmp}/m"], ["no config.json", "no weights"],
        files={"m/": None}),
    # ---------------------------------------------------------------- parameter files
    Row("params missing", ["run", "--params", "{tmp}/nope.yaml"], ["parameter file not found", "nope.yaml"]),
    Row("params tab", ["run", "--params", "{tmp}/p.yaml"], ["p.yaml line 3", "not valid YAML"],
        files={"p.yaml": "common:\n  seed: 1\n\tmodel: x\n"}),
    Row("params duplicate key", ["run", "--params", "{tmp}/p.yaml"], ["p.yaml line 4", "duplicate key 'seed'"],
        files={"p.yaml": "common:\n  seed: 1\n  model: tiny-llama\n  seed: 2\n"}),
    Row("params duplicate section", ["run", "--params", "{tmp}/p.yaml"], ["duplicate key '02_sft'"],
        files={"p.yaml": "02_sft:\n  epochs: 1\n02_sft:\n  epochs: 2\n"}),
    Row("params not UTF-8", ["run", "--params", "{tmp}/p.yaml"], ["p.yaml line 2", "not UTF-8"],
        files={"p.yaml": "common:\n  model: caf\xe9\n".encode("latin-1")}),
    Row("params nested deep", ["run", "--params", "{tmp}/p.yaml"], ["p.yaml", "nested too deeply"],
        files={"p.yaml": "common:\n  seed: " + DEEP + "\n"}),
    Row("params a list", ["run", "--params", "{tmp}/p.yaml"], ["expected a mapping of sections"],
        files={"p.yaml": "- common\n- 02_sft\n"}),
    Row("params unknown section", ["run", "--params", "{tmp}/p.yaml"], ["unknown section '02_stf'", "did you mean '02_sft'"],
        files={"p.yaml": "02_stf:\n  epochs: 1\n"}),
    Row("params section not mapping", ["run", "--params", "{tmp}/p.yaml"], ["section '02_sft' must be a mapping"],
        files={"p.yaml": "02_sft: 3\n"}),
    Row("params unknown key", ["run", "--params", "{tmp}/p.yaml"], ["p.yaml line 3", "learnig_rate", "did you mean"],
        files={"p.yaml": "02_sft:\n  epochs: 1\n  learnig_rate: 0.1\n"}),
    Row("params range with line", ["run", "--params", "{tmp}/p.yaml"], ["p.yaml line 3", "02_sft.epochs", "out of range"],
        files={"p.yaml": "02_sft:\n  batch_size: 2\n  epochs: 0\n"}),
    Row("params nan", ["run", "--params", "{tmp}/p.yaml"], ["p.yaml line 2", "finite"],
        files={"p.yaml": "02_sft:\n  learning_rate: .nan\n"}),
    Row("params BOM read, error after it", ["run", "--params", "{tmp}/p.yaml"], ["p.yaml line 2", "common.seed"],
        files={"p.yaml": "\ufeffcommon:\n  seed: -1\n".encode("utf-8")}),
    Row("params python tag", ["run", "--params", "{tmp}/p.yaml"], ["not valid YAML", "python/object"],
        files={"p.yaml": "common:\n  model: !!python/object/apply:os.system ['true']\n"}),
    # ---------------------------------------------------------------- 01_data_prep: the data readers
    Row("data missing", only("01_data_prep", "--set", "dataset={tmp}/nope.jsonl"), ["data file not found", "nope.jsonl"]),
    Row("jsonl malformed", **data("d.jsonl", jl(GOOD, GOOD, '{"instruction": ')), words=["d.jsonl line 3", "malformed JSON"]),
    Row("jsonl missing field", **data("d.jsonl", jl(GOOD, {"instruction": "x"})), words=["d.jsonl line 2", "'output'"]),
    Row("jsonl not UTF-8", **data("d.jsonl", jl(GOOD).encode() + b'{"instruction": "caf\xe9", "output": "x"}\n'),
        words=["d.jsonl line 2", "not UTF-8", "0xe9"]),
    Row("csv not UTF-8", **data("d.csv", b"instruction,output\nSay hi,Hello there\ncaf\xe9,x\n"),
        words=["d.csv line 3", "not UTF-8"]),
    Row("json not UTF-8", **data("d.json", b'[{"instruction": "caf\xe9", "output": "x"}]'), words=["d.json line 1", "not UTF-8"]),
    Row("jsonl duplicate key", **data("d.jsonl", '{"instruction": "a", "output": "b", "output": "c"}\n'),
        words=["d.jsonl line 1", "duplicate key 'output'"]),
    Row("json duplicate key", **data("d.json", '[{"instruction": "a", "instruction": "b", "output": "c"}]'),
        words=["d.json", "duplicate key 'instruction'"]),
    Row("jsonl nested 100k deep", **data("d.jsonl", jl(GOOD) + '{"instruction": ' + DEEP + "}\n"),
        words=["d.jsonl line 2", "nested too deeply"]),
    Row("jsonl nested 40 deep", **data("d.jsonl", jl({"instruction": "x", "output": "y", "meta": json.loads("[" * 40 + "]" * 40)})),
        words=["d.jsonl line 1", "nested too deeply"]),
    Row("json nested deep", **data("d.json", "[" + DEEP + "]"), words=["d.json", "nested too deeply"]),
    Row("csv extra field", **data("d.csv", "instruction,output\nSay hi,Hello there\nSay bye,Bye now,extra\n"),
        words=["d.csv line 3", "3 fields, the header has 2"]),
    Row("csv missing field", **data("d.csv", "instruction,output\nSay hi,Hello there\nSay bye\n"),
        words=["d.csv line 3", "1 fields, the header has 2"]),
    Row("csv duplicate column", **data("d.csv", "instruction,output,output\nSay hi,Hello,x\n"),
        words=["d.csv line 1", "column 'output' twice"]),
    Row("csv BOM read, error after it", **data("d.csv", b"\xef\xbb\xbfinstruction,output\nSay hi,Hello there,x\n"),
        words=["d.csv line 2", "the header has 2 (instruction, output)"]),
    Row("content int", **data("d.jsonl", jl(MSGS(("user", "hi"), ("assistant", 5)))),
        words=["d.jsonl line 1", "messages[1].content must be a string, got int"]),
    Row("content dict", **data("d.jsonl", jl(MSGS(("user", {"text": "hi"}), ("assistant", "hello")))),
        words=["messages[0].content must be a string, got dict"]),
    Row("content list", **data("d.jsonl", jl(MSGS(("user", "hi"), ("assistant", ["a", "b"])))),
        words=["messages[1].content must be a string, got list"]),
    Row("unknown role", **data("d.jsonl", jl(MSGS(("user", "hi"), ("bot", "hello")))), words=["unknown role 'bot'"]),
    Row("role typo", **data("d.jsonl", jl(MSGS(("user", "hi"), ("assistent", "hello")))),
        words=["unknown role 'assistent'", "did you mean 'assistant'"]),
    Row("last turn not assistant", **data("d.jsonl", jl(MSGS(("user", "hi"), ("assistant", "yo"), ("user", "and?")))),
        words=["the last message must be the assistant's reply"]),
    Row("no user turn", **data("d.jsonl", jl(MSGS(("system", "be nice"), ("assistant", "hello")))),
        words=["no user message before the reply"]),
    Row("sharegpt unknown speaker", **data("d.jsonl", jl({"conversations": [{"from": "human", "value": "hi"},
                                                                            {"from": "robot", "value": "yo"}]})),
        words=["conversations[1].from", "unknown speaker 'robot'"]),
    Row("alpaca output a dict", **data("d.jsonl", jl({"instruction": "hi", "output": {"a": 1}})),
        words=["field 'output' must be text, got dict"]),
    Row("text a list", **data("d.jsonl", jl({"text": ["a", "b"]})), words=["field 'text' must be text, got list"]),
    Row("json not a list", **data("d.json", '{"a": 1, "b": 2}'), words=["expected a JSON list of records"]),
    Row("jsonl line a list", **data("d.jsonl", jl(GOOD, "[1, 2]")), words=["d.jsonl line 2", "expected a JSON object"]),
    Row("jsonl empty", **data("d.jsonl", ""), words=["no records"]),
    Row("suffix txt", **data("d.txt", "hello"), words=["unsupported file type '.txt'"]),
    Row("format unknown", **data("d.jsonl", jl({"question": "q", "reply": "r"})), words=["cannot tell the format"]),
    Row("forced format wrong", **data("d.jsonl", jl(GOOD), fmt="messages"), words=["missing required field(s) 'messages'"]),
    Row("two records: empty test split", **data("d.jsonl", jl(GOOD, {"instruction": "Say bye", "output": "Bye bye now."})),
        words=["2 examples after cleaning", "empty test split"]),
    Row("filters remove everything", **data("d.jsonl", jl(GOOD), "--set", "min_tokens=300", "--set", "max_tokens=400"),
        words=["the quality filters removed all"]),
    Row("demo too small to split", only("01_data_prep", "--set", "n_examples=3", "--set", "demo_tasks=[json_qa]"),
        words=["empty test split"]),
    # ---------------------------------------------------------------- 04_rlhf: preference pairs and the policy
    Row("pairs chosen == rejected", only("04_rlhf", *RULE_LABELS, "--set", "preferences={tmp}/p.jsonl"),
        ["p.jsonl line 2", "'chosen' and 'rejected' are the same"], files={"p.jsonl": jl(PAIR, {**PAIR, "rejected": "Hello there."})}),
    Row("pairs user turn as answer", only("04_rlhf", *RULE_LABELS, "--set", "preferences={tmp}/p.jsonl"),
        ["field 'chosen'", "the last message must be the assistant's"],
        files={"p.jsonl": jl({**PAIR, "chosen": [{"role": "user", "content": "Hello"}]})}),
    Row("pairs missing rejected", only("04_rlhf", *RULE_LABELS, "--set", "preferences={tmp}/p.jsonl"),
        ["p.jsonl line 1", "missing field 'rejected'"], files={"p.jsonl": jl({"prompt": "Hi?", "chosen": "Hello."})}),
    Row("pairs empty prompt", only("04_rlhf", *RULE_LABELS, "--set", "preferences={tmp}/p.jsonl"),
        ["field 'prompt' must be a non-empty string"], files={"p.jsonl": jl({**PAIR, "prompt": "  "})}),
    Row("pairs not UTF-8", only("04_rlhf", *RULE_LABELS, "--set", "preferences={tmp}/p.jsonl"), ["p.jsonl line 1", "not UTF-8"],
        files={"p.jsonl": b'{"prompt": "caf\xe9", "chosen": "a", "rejected": "b"}\n'}),
    Row("pairs duplicate key", only("04_rlhf", *RULE_LABELS, "--set", "preferences={tmp}/p.jsonl"), ["duplicate key 'chosen'"],
        files={"p.jsonl": '{"prompt": "q", "chosen": "a", "chosen": "c", "rejected": "b"}\n'}),
    Row("pairs unknown role", only("04_rlhf", *RULE_LABELS, "--set", "preferences={tmp}/p.jsonl"), ["unknown role 'human'"],
        files={"p.jsonl": jl({**PAIR, "prompt": [{"role": "human", "content": "Hi?"}]})}),
    Row("pairs content int", only("04_rlhf", *RULE_LABELS, "--set", "preferences={tmp}/p.jsonl"), ["chosen[0].content must be a string"],
        files={"p.jsonl": jl({**PAIR, "chosen": [{"role": "assistant", "content": 3}]})}),
    Row("pairs empty file", only("04_rlhf", *RULE_LABELS, "--set", "preferences={tmp}/p.jsonl"), ["no preference pairs"],
        files={"p.jsonl": "\n"}),
    Row("pairs missing file", only("04_rlhf", *RULE_LABELS, "--set", "preferences={tmp}/none.jsonl"), ["data file not found"]),
    Row("policy config only", only("04_rlhf", "--set", "policy={tmp}/m"), ["04_rlhf.policy", "no weights"],
        files={"m/config.json": "{}"}),
    Row("policy missing", only("04_rlhf", "--set", "policy={tmp}/no-model"), ["04_rlhf.policy", "no-model", "not found"]),
    # ---------------------------------------------------------------- 05_rag_vs_ft: documents and questions
    Row("questions with builtin", only("05_rag_vs_ft", "--set", "questions={tmp}/q.jsonl"),
        ["05_rag_vs_ft.questions", "only read with your documents"], files={"q.jsonl": jl(Q)}),
    Row("documents without questions", only("05_rag_vs_ft", "--set", "knowledge_base={tmp}/docs"),
        ["05_rag_vs_ft.questions", "need a questions file"], files={"docs/a.txt": "The sky of Zorbia is green."}),
    Row("documents folder empty", only("05_rag_vs_ft", "--set", "knowledge_base={tmp}/docs", "--set", "questions={tmp}/q.jsonl"),
        ["no .txt or .md files"], files={"docs/x.csv": "a,b", "q.jsonl": jl(Q)}),
    Row("document not UTF-8", only("05_rag_vs_ft", "--set", "knowledge_base={tmp}/docs", "--set", "questions={tmp}/q.jsonl"),
        ["a.txt line 2", "not UTF-8"], files={"docs/a.txt": b"Zorbia.\nThe sky is gr\xfcn.\n", "q.jsonl": jl(Q)}),
    Row("documents jsonl without text", only("05_rag_vs_ft", "--set", "knowledge_base={tmp}/d.jsonl", "--set", "questions={tmp}/q.jsonl"),
        ["d.jsonl line 1", "missing required field 'text'"], files={"d.jsonl": jl({"title": "x"}), "q.jsonl": jl(Q)}),
    Row("documents duplicate id", only("05_rag_vs_ft", "--set", "knowledge_base={tmp}/d.jsonl", "--set", "questions={tmp}/q.jsonl"),
        ["d.jsonl line 2", "duplicate document id"], files={"d.jsonl": jl({"id": "a", "text": "x"}, {"id": "a", "text": "y"}),
                                                           "q.jsonl": jl({**Q, "doc_id": "a"})}),
    Row("questions missing answer", only("05_rag_vs_ft", "--set", "knowledge_base={tmp}/docs", "--set", "questions={tmp}/q.jsonl"),
        ["q.jsonl line 1", "missing required field 'answer'"], files={"docs/a.txt": "Green.", "q.jsonl": jl({"question": "q"})}),
    Row("questions options without answer", only("05_rag_vs_ft", "--set", "knowledge_base={tmp}/docs", "--set", "questions={tmp}/q.jsonl"),
        ["'options' does not contain the answer"], files={"docs/a.txt": "Green.", "q.jsonl": jl({**Q, "options": ["red", "blue"]})}),
    Row("questions unknown doc_id", only("05_rag_vs_ft", "--set", "knowledge_base={tmp}/docs", "--set", "questions={tmp}/q.jsonl"),
        ["field 'doc_id'", "no document with id 'b.txt'"], files={"docs/a.txt": "Green.", "q.jsonl": jl({**Q, "doc_id": "b.txt"})}),
    Row("questions not jsonl", only("05_rag_vs_ft", "--set", "knowledge_base={tmp}/docs", "--set", "questions={tmp}/q.csv"),
        ["questions must be a .jsonl file"], files={"docs/a.txt": "Green.", "q.csv": "question,answer\n"}),
    Row("questions duplicate key", only("05_rag_vs_ft", "--set", "knowledge_base={tmp}/docs", "--set", "questions={tmp}/q.jsonl"),
        ["duplicate key 'answer'"], files={"docs/a.txt": "Green.", "q.jsonl": '{"question": "q", "answer": "a", "answer": "b"}\n'}),
    Row("questions not UTF-8", only("05_rag_vs_ft", "--set", "knowledge_base={tmp}/docs", "--set", "questions={tmp}/q.jsonl"),
        ["q.jsonl line 1", "not UTF-8"], files={"docs/a.txt": "Green.", "q.jsonl": b'{"question": "gr\xfcn?", "answer": "a"}\n'}),
    # ---------------------------------------------------------------- 06_classify: labelled files
    Row("classify no label column", only("06_classify", "--set", "source_data={tmp}/s.csv", "--set", "target_data="),
        ["s.csv line 2", "no column 'label'", "did you mean 'labels'"], files={"s.csv": "text,labels\na b,x\n"}),
    Row("classify one class", only("06_classify", "--set", "source_data={tmp}/s.csv", "--set", "target_data="),
        ["s.csv", "one label only"], files={"s.csv": "text,label\na b,x\nc d,x\n"}),
    Row("classify unseen target label", only("06_classify", "--set", "source_data={tmp}/s.csv", "--set", "target_data={tmp}/t.csv"),
        ["t.csv line 6", "label 'praise' is not among the labels"], files={"s.csv": LABELLED, "t.csv": LABELLED + "love it,praise\n"}),
    Row("classify empty text", only("06_classify", "--set", "source_data={tmp}/s.csv", "--set", "target_data="),
        ["s.csv line 6", "column 'text' is empty"], files={"s.csv": LABELLED + "  ,outage\n"}),
    Row("classify csv extra field", only("06_classify", "--set", "source_data={tmp}/s.csv", "--set", "target_data="),
        ["s.csv line 3", "3 fields, the header has 2"], files={"s.csv": "text,label\na,x\nb, c,y\n"}),
    Row("classify not UTF-8", only("06_classify", "--set", "source_data={tmp}/s.csv", "--set", "target_data="),
        ["s.csv line 3", "not UTF-8"], files={"s.csv": b"text,label\na b,x\nc\xe9,y\n"}),
    Row("classify label_words count", only("06_classify", "--set", "source_data={tmp}/s.csv", "--set", "target_data=",
                                           "--set", "label_words=[a, b, c]"),
        ["label_words: 3 words for 2 labels"], files={"s.csv": LABELLED}),
    Row("classify builtin target with own source", only("06_classify", "--set", "source_data={tmp}/s.csv"),
        ["06_classify.target_data"], files={"s.csv": LABELLED}),
    # ---------------------------------------------------------------- 07_distill and 99_report
    Row("distill teacher unknown", only("07_distill", "--set", "teacher=no-such-teacher"),
        ["07_distill.teacher", "cannot resolve model 'no-such-teacher'"]),
    Row("distill too many student layers", only("07_distill", "--set", "student_layers=5"),
        ["07_distill.student_layers", "5 blocks"]),
    Row("report compare unknown run", only("99_report", "--set", "compare_runs=[nosuch]"),
        ["compare_runs", "'nosuch' is not a run folder"]),
    Row("report compare typo", only("99_report", "--set", "compare_runs=[earlierr]"), ["did you mean 'earlier'"]),
    # ---------------------------------------------------------------- issue 29: bounded inputs, numbers as written
    Row("params file alias bomb", ["run", "--params", "{tmp}/bomb.yaml"], ["bomb.yaml line 2", "anchors and aliases"],
        files={"bomb.yaml": BOMB}),
    Row("set alias bomb", ["run", "--set", "02_sft.compare_scopes=" + BOMB_FLOW],
        ["--set 02_sft.compare_scopes", "anchors and aliases"]),
    Row("resume a params.yaml alias bomb", ["run", "--resume", "bombed"], ["params.yaml line 2", "anchors and aliases"]),
    Row("seed 5000 digits", ["run", "--set", "seed=" + "9" * 5000], ["--set seed", "cannot read"]),
    Row("seed 5000 digits in a file", ["run", "--params", "{tmp}/p.yaml"], ["p.yaml", "cannot read"],
        files={"p.yaml": "common:\n  seed: " + "9" * 5000 + "\n"}),
    Row("epochs 400 digits", ["run", "--set", "epochs=" + "9" * 400], ["epochs", "expected a finite number", "..."]),
    Row("seed 2^32", ["run", "--set", "seed=4294967296"], ["seed", "at most 4294967295"]),
    Row("epochs 1e308", ["run", "--set", "epochs=1e308"], ["epochs", "in (0, 1000]"]),
    Row("batch_size 1e12", ["run", "--set", "batch_size=1e12"], ["batch_size", "too large"]),
    Row("num_processes 512", only("01_data_prep", "--set", "num_processes=512"), ["num_processes 512", "at most"]),
    Row("100 kB value echoed cut", ["run", "--set", "02_sft.scope=" + "x" * 100_000], ["02_sft.scope", "..."]),
    Row("100 kB key", ["run", "--set", "k" * 100_000 + "=1"], ["--set", "characters", "no parameter"]),
    Row("model ~nosuchuser", ["run", "--set", "model=~nosuchuser/m"], ["cannot resolve model '~nosuchuser/m'"]),
    Row("teacher ~nosuchuser", ["run", "--set", "07_distill.teacher=~nosuchuser/t"],
        ["07_distill.teacher", "cannot resolve model '~nosuchuser/t'"]),
    Row("compare_runs ~nosuchuser", only("99_report", "--set", "compare_runs=[~nosuchuser/r]"),
        ["99_report.compare_runs: '~nosuchuser/r' is not a run folder"]),
    Row("sweep of 10000 points", ["sweep", "--grid", "seed=" + ",".join(map(str, range(100))),
                                  "--grid", "01_data_prep.n_examples=" + ",".join(map(str, range(100, 200)))],
        ["10000 points (100 x 100)", "--max-points 64"]),
    Row("sweep point that fails the data check", ["sweep", "--grid", "01_data_prep.max_tokens=384,5",
                                                  "--only", "01_data_prep"],
        ["--grid point 2 of 2 (01_data_prep.max_tokens=5)", "max_tokens"]),
    Row("report stage no compared run recorded", only("99_report", "--set", "compare_runs=[earlier]", "--set",
                                                      "99_report.stages=[05_rag_vs_ft]"),
        ["99_report.stages: 05_rag_vs_ft not recorded by these runs"]),
    # ---------------------------------------------------------------- issue 29: data readers stream, cap and name
    Row("jsonl line over the cap", **data("d.jsonl", jl(GOOD, {"instruction": "x" * 1_000_001, "output": "y"})),
        words=["d.jsonl line 2", "1,000,03", "characters; a record holds at most 1,000,000"]),
    Row("jsonl 5 MB line", **data("d.jsonl", jl(GOOD, {"instruction": "x " * 2_500_000, "output": "y"})),
        words=["d.jsonl line 2", "longer than 1,000,000 characters"]),
    Row("json record over the cap", **data("d.json", json.dumps([GOOD, {"instruction": "x" * 1_000_001, "output": "y"}])),
        words=["d.json record 1", "1,000,00", "characters of text; a record holds at most 1,000,000"]),
    Row("csv field over the cap", **data("d.csv", 'instruction,output\na,"' + ("y" * 600_000 + "\n") * 2 + '"\n'),
        words=["d.csv line 3", "a field of more than 1,000,000 characters"]),
    Row("csv row over the cap", **data("d.csv", 'instruction,output,input\na,"' + "y" * 600_000 + '\n","' + "z" * 600_000 + '"\n'),
        words=["d.csv line 3", "characters of text; a record holds at most 1,000,000"]),
    Row("jsonl lone surrogate", **data("d.jsonl", jl(GOOD, '{"instruction": "caf\\ud800", "output": "x"}')),
        words=["d.jsonl line 2", "field 'instruction'", "unpaired surrogate '\\ud800'"]),
    Row("messages lone surrogate", **data("d.jsonl", jl(MSGS(("user", "hi"), ("assistant", "\udfff")))),
        words=["d.jsonl line 1", "field 'messages[1].content'", "unpaired surrogate"]),
    Row("jsonl NaN instruction", **data("d.jsonl", jl(GOOD, '{"instruction": NaN, "output": "x"}')),
        words=["d.jsonl line 2", "field 'instruction'", "is NaN", "not JSON"]),
    Row("jsonl Infinity output", **data("d.jsonl", jl(GOOD, '{"instruction": "x", "output": Infinity}')),
        words=["d.jsonl line 2", "field 'output'", "is Infinity"]),
    Row("json -Infinity in a message", **data("d.json", '[{"messages": [{"role": "user", "content": -Infinity}]}]'),
        words=["d.json record 0", "field 'messages[0].content'", "-Infinity"]),
    Row("dataset symlink loop", **dataset("{tmp}/loop.jsonl", links={"loop.jsonl": "loop.jsonl"}),
        words=["loop.jsonl", "symbolic link loop"]),
    Row("dataset link to nothing", **dataset("{tmp}/d.jsonl", links={"d.jsonl": "gone.jsonl"}),
        words=["d.jsonl", "a symbolic link to gone.jsonl, which does not exist"]),
    Row("dataset ~nosuchuser", **dataset("~nbft-no-such-user/d.jsonl"),
        words=["~nbft-no-such-user/d.jsonl", "no user 'nbft-no-such-user'"]),
    Row("dataset 300-character name", **dataset("{tmp}/" + LONG_NAME), words=["the path is too long", "File name too long"]),
    Row("dataset under a file", **dataset("{tmp}/f.jsonl/d.jsonl", files={"f.jsonl": jl(GOOD)}),
        words=["f.jsonl/d.jsonl", "a part of the path is a file, not a folder"]),
    Row("dataset a folder", **dataset("{tmp}/data", files={"data/train.jsonl": jl(GOOD), "data/test.csv": "a,b\n"}),
        words=["data: a folder, not a data file", "data files in it: test.csv, train.jsonl"]),
    Row("dataset a FIFO", **dataset("{tmp}/d.jsonl", fifos=("d.jsonl",)), words=["d.jsonl", "a FIFO (named pipe)"]),
    Row("dataset a device", **dataset("/dev/null"), words=["/dev/null", "a device, not a data file"]),
    Row("dataset hub name offline", **dataset("nbft-test/no-such-data"), words=["dataset 'nbft-test/no-such-data'", *OFFLINE]),
    Row("dataset not a hub name", **dataset("no/such/file"), words=["'no/such/file'", "not a Hugging Face dataset name"]),
    Row("pairs NaN prompt", only("04_rlhf", *RULE_LABELS, "--set", "preferences={tmp}/p.jsonl"), ["p.jsonl line 1", "field 'prompt'", "NaN"],
        files={"p.jsonl": '{"prompt": NaN, "chosen": "a", "rejected": "b"}\n'}),
    Row("pairs lone surrogate", only("04_rlhf", *RULE_LABELS, "--set", "preferences={tmp}/p.jsonl"),
        ["p.jsonl line 1", "field 'chosen'", "unpaired surrogate"],
        files={"p.jsonl": '{"prompt": "q", "chosen": "\\udc80", "rejected": "b"}\n'}),
    Row("pairs a FIFO", only("04_rlhf", *RULE_LABELS, "--set", "preferences={tmp}/p.jsonl"), ["p.jsonl", "a FIFO"], fifos=("p.jsonl",)),
    Row("pairs symlink loop", only("04_rlhf", *RULE_LABELS, "--set", "preferences={tmp}/p.jsonl"), ["symbolic link loop"],
        links={"p.jsonl": "p.jsonl"}),
    Row("documents symlink loop", only("05_rag_vs_ft", "--set", "knowledge_base={tmp}/kb", "--set", "questions={tmp}/q.jsonl"),
        ["kb", "symbolic link loop"], files={"q.jsonl": jl(Q)}, links={"kb": "kb"}),
    Row("questions a FIFO", only("05_rag_vs_ft", "--set", "knowledge_base={tmp}/docs", "--set", "questions={tmp}/q.jsonl"),
        ["q.jsonl", "a FIFO (named pipe), not a questions file"], files={"docs/a.txt": "Green."}, fifos=("q.jsonl",)),
    Row("questions a folder", only("05_rag_vs_ft", "--set", "knowledge_base={tmp}/docs", "--set", "questions={tmp}/docs"),
        ["docs: a folder, not a questions file"], files={"docs/a.txt": "Green."}),
    Row("questions Infinity answer", only("05_rag_vs_ft", "--set", "knowledge_base={tmp}/docs", "--set", "questions={tmp}/q.jsonl"),
        ["q.jsonl line 1", "field 'answer'", "Infinity"], files={"docs/a.txt": "Green.", "q.jsonl": '{"question": "q", "answer": Infinity}\n'}),
    Row("classify NaN label", only("06_classify", "--set", "source_data={tmp}/s.jsonl", "--set", "target_data="),
        ["s.jsonl line 2", "field 'label'", "NaN"], files={"s.jsonl": jl({"text": "a b", "label": "x"}, '{"text": "c", "label": NaN}')}),
    Row("classify a folder", only("06_classify", "--set", "source_data={tmp}/s", "--set", "target_data="),
        ["s: a folder, not a data file", "data files in it: a.csv"], files={"s/a.csv": LABELLED}),
    Row("classify hub name offline", only("06_classify", "--set", "source_data=nbft-test/no-such-data", "--set", "target_data="),
        ["dataset 'nbft-test/no-such-data'", *OFFLINE]),
    Row("cli dataset symlink loop", **dataset("{tmp}/loop.jsonl", links={"loop.jsonl": "loop.jsonl"}),
        words=["symbolic link loop"], subprocess=True),
    Row("cli dataset 300-character name", **dataset("{tmp}/" + LONG_NAME), words=["File name too long"], subprocess=True),
    Row("cli dataset ~nosuchuser", **dataset("~nbft-no-such-user/d.jsonl"), words=["no user"], subprocess=True),
    Row("cli lone surrogate", **data("d.jsonl", jl(GOOD, '{"instruction": "\\ud800", "output": "x"}')),
        words=["d.jsonl line 2", "field 'instruction'", "unpaired surrogate"], subprocess=True),
    # ---------------------------------------------------------------- resume
    Row("resume unknown", ["run", "--resume", "crashd"], ["--resume crashd", "no run folder", "did you mean 'crashed'"]),
    Row("resume ok run", ["run", "--resume", "earlier"], ["finished ok", "nothing to resume"]),
    Row("resume ../x", ["run", "--resume", "../x"], ["--resume '../x'", "letters, digits"]),
    Row("resume with --only", ["run", "--resume", "crashed", "--only", "02_sft"], ["leave out --only"]),
    Row("resume other params", ["run", "--resume", "crashed", "--params", "{tmp}/p.yaml"],
        ["differs from the run's own", "02_sft.epochs: 1.0 -> 2.0", "--set"],
        files={"p.yaml": open(SMOKE).read().replace("02_sft:\n  epochs: 1.0", "02_sft:\n  epochs: 2.0")}),
    Row("resume set on a finished stage", ["run", "--resume", "crashed", "--set", "01_data_prep.n_examples=50"],
        ["01_data_prep.n_examples: 80 -> 50", "already finished ok"]),
    Row("resume set out of range", ["run", "--resume", "crashed", "--set", "02_sft.epochs=0"], ["epochs", "out of range"]),
    Row("resume unreadable status", ["run", "--resume", "garbled"], ["status.json is missing or unreadable"]),
    Row("resume a live run", ["run", "--resume", "busy"], ["still running", f"pid {os.getpid()}"]),
    # ---------------------------------------------------------------- sweep
    Row("sweep no grid", ["sweep"], ["--grid: give at least one"]),
    Row("sweep grid no values", ["sweep", "--grid", "epochs"], ["expected key=value1,value2"]),
    Row("sweep grid twice", ["sweep", "--grid", "epochs=1,2", "--grid", "epochs=3"], ["--grid epochs: given twice"]),
    Row("sweep grid typo", ["sweep", "--grid", "01_data_prep.n_exampels=48,64"], ["did you mean 'n_examples'"]),
    Row("sweep grid out of range", ["sweep", "--grid", "n_examples=48,0", "--only", "01_data_prep"], ["n_examples", ">= 1"]),
    Row("sweep grid value 300 chars", ["sweep", "--grid", "01_data_prep.hf_split=a," + "v" * 300, "--only", "01_data_prep"],
        ["the point's run name", "at most 100"]),
    Row("sweep same point names", ["sweep", "--name", "sw", "--grid", "01_data_prep.hf_split=a b,a-b", "--only", "01_data_prep"],
        ["two points give the same run name"]),
    Row("sweep name exists", ["sweep", "--name", "earlier", "--grid", "n_examples=48,64"], ["already exists"]),
    Row("sweep name .hidden", ["sweep", "--name", ".sw", "--grid", "n_examples=48,64"], ["must not start with '.'"]),
    # ---------------------------------------------------------------- list: one bad run never breaks the listing
    Row("list shows unreadable and crashed runs", ["list"], ["garbled", "unreadable", "crashed", "earlier", "ok"], rc=0),
    # ---------------------------------------------------------------- in a subprocess: nothing but the message
    Row("cli name 300 chars", ["run", "--name", "n" * 300], ["at most 100"], subprocess=True),
    Row("cli nested jsonl", **data("d.jsonl", '{"instruction": ' + DEEP + "}\n"), words=["nested too deeply"], subprocess=True),
    Row("cli csv extra field", **data("d.csv", "instruction,output\na,b,c\n"), words=["d.csv line 2", "3 fields"],
        subprocess=True),
    Row("cli content int", **data("d.jsonl", jl(MSGS(("user", "hi"), ("assistant", 5)))), words=["got int"], subprocess=True),
    Row("cli yaml duplicate key", ["run", "--params", "{tmp}/p.yaml"], ["duplicate key"],
        files={"p.yaml": "common:\n  seed: 1\n  seed: 2\n"}, subprocess=True),
]


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))}


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    """Earlier runs every row must leave alone: a finished one, a crashed one (01 ok, 02 running, its lock's
    process gone), one whose status and metrics are garbage, and a live one (its lock held by this process)."""
    root = tmp_path_factory.mktemp("runs")
    resolved = params.resolve(SMOKE)
    for name, state, stages in (("earlier", "ok", {"01_data_prep": "ok", "02_sft": "ok"}),
                                ("crashed", "running", {"01_data_prep": "ok", "02_sft": "running"}),
                                ("busy", "running", {"01_data_prep": "running"})):
        d = root / name
        (d / "artifacts" / "01_data_prep").mkdir(parents=True)
        (d / "artifacts" / "01_data_prep" / "train.jsonl").write_text(jl(GOOD))
        for p in resolved.values():
            p.run_name = name
        (d / "params.yaml").write_text(params.to_yaml(resolved))
        (d / "status.json").write_text(json.dumps({"state": state, "stages": stages}))
        (d / "metrics.json").write_text(json.dumps({"01_data_prep": {"n_train": 1, "findings": ["x"]}}))
    (root / "crashed" / ".lock").write_text(json.dumps({"pid": 2 ** 22 + 7, "host": platform.node(), "started": "-"}))
    (root / "busy" / ".lock").write_text(json.dumps({"pid": os.getpid(), "host": platform.node(), "started": "-",
                                                     "proc_start": runs._proc_start(os.getpid())}))
    bombed = root / "bombed"  # crashed, with a crafted params.yaml
    (bombed / "artifacts").mkdir(parents=True)
    (bombed / "params.yaml").write_text(BOMB)
    (bombed / "status.json").write_text(json.dumps({"state": "running", "stages": {"01_data_prep": "running"}}))
    (root / "garbled").mkdir()
    (root / "garbled" / "status.json").write_text('{"state": "ok", "stages": ["01_data_prep"]}')
    (root / "garbled" / "metrics.json").write_text('["not", "a", "mapping"]')
    return root


def fill(text: str, tmp: Path, runs_root: Path) -> str:
    return text.replace("{tmp}", str(tmp)).replace("{runs}", str(runs_root))


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_bad_input(row, runs_dir, tmp_path, monkeypatch, capsys):
    for name, content in row.files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if name.endswith("/"):
            path.mkdir(exist_ok=True)
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8", errors="surrogatepass")
    for name, target in row.links.items():
        (tmp_path / name).symlink_to(target)
    for name in row.fifos:
        os.mkfifo(tmp_path / name)
    args = [fill(a, tmp_path, runs_dir) for a in row.args]
    if args[0] in ("run", "sweep") and "--params" not in args and "--resume" not in args:
        args[1:1] = ["--params", SMOKE]
    if args[0] in ("run", "sweep"):
        args.append("--no-progress")
    before = snapshot(runs_dir)
    monkeypatch.setenv("NBFT_RUNS_DIR", str(runs_dir))
    monkeypatch.chdir(ROOT)
    if row.subprocess:
        proc = subprocess.run([NBFT, *args], capture_output=True, text=True, timeout=120,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
        rc, out, err = proc.returncode, proc.stdout, proc.stderr
        assert len(err.strip().splitlines()) == 1, err  # one line: the message
    else:
        rc = cli.main(args)
        out, err = capsys.readouterr()
    message = err if row.rc else out
    assert rc == row.rc, (rc, out[-2000:], err[-2000:])
    for w in row.words:
        assert w in message, (w, message[-3000:])
    assert "Traceback" not in out + err
    assert snapshot(runs_dir) == before  # no earlier run changed, no new folder


def test_the_table_is_big_enough():
    assert len(ROWS) >= 100 and len({r.id for r in ROWS}) == len(ROWS)
    stages = {a for r in ROWS for a in r.args if a in params.STAGES}
    assert stages >= {"01_data_prep", "04_rlhf", "05_rag_vs_ft", "06_classify", "07_distill", "99_report"}


@pytest.mark.parametrize("bug", [ValueError("a bug in nbft"), OSError("a bug in nbft"), KeyError("a bug in nbft")],
                         ids=lambda e: type(e).__name__)
def test_a_bug_in_preflight_is_shown_in_full_not_as_bad_input(bug, tmp_path, monkeypatch, capsys):
    """Only nbft's own input errors (and a taken name, a missing file) are one line and exit 2: anything else raised
    while checking is a bug in nbft, and its traceback shows."""
    monkeypatch.setenv("NBFT_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.chdir(ROOT)

    def preflight(resolved, stages):
        raise bug

    monkeypatch.setattr(cli, "preflight", preflight)
    with pytest.raises(type(bug), match="a bug in nbft"):
        cli.main(["run", "--params", SMOKE, "--only", "01_data_prep", "--no-progress"])
    assert "error" not in capsys.readouterr().err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_bad_input_is_nbft_own_errors():
    from nbft import data, files, models

    caught = cli.bad_input()
    for own in (params.ParamError, data.DataError, models.ModelError, runs.RunError, files.DecodeError,
                FileExistsError, FileNotFoundError):
        assert issubclass(own, caught), own
    for other in (ValueError, OSError, TypeError, KeyError, RecursionError):
        assert not issubclass(other, caught), other


def test_a_runs_folder_that_is_a_file_is_named(tmp_path, monkeypatch, capsys):
    """Issue 29: NBFT_RUNS_DIR pointing at a file gave "[Errno 17] File exists"."""
    f = tmp_path / "not-a-folder"
    f.write_text("x")
    monkeypatch.setenv("NBFT_RUNS_DIR", str(f))
    monkeypatch.chdir(ROOT)
    for args in (["run", "--params", SMOKE, "--only", "01_data_prep", "--no-progress"], ["list"]):
        assert cli.main(args) == 2
        err = capsys.readouterr().err
        assert f"the runs folder {f} (NBFT_RUNS_DIR) is a file, not a folder" in err and "Traceback" not in err
    assert f.read_text() == "x"


def test_a_50_mb_line_is_refused_at_once_in_little_memory(tmp_path, nbft_measured):
    """Issue 29: a JSONL file with one 50 MB line was tokenized whole before ``max_tokens`` dropped it (116 s and
    8.4 GB of memory in preflight, and again in the notebook). The reader refuses a line over the record cap before
    reading it whole: exit 2 naming file and line, in under 5 s and 500 MB (the nbft command in its own process, its
    peak resident memory measured by the OS)."""
    import random

    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefghij") for _ in range(rng.randint(2, 9))) for _ in range(2000)]
    big = tmp_path / "big.jsonl"
    with open(big, "w") as f:
        f.write(jl(*({"instruction": f"Say hi {i}", "output": f"Hello there, friend number {i}."} for i in range(30))))
        f.write(json.dumps({"instruction": "Write a lot", "output": " ".join(rng.choices(words, k=9_000_000))[:50_000_000]}))
        f.write("\n")
    assert big.stat().st_size > 50_000_000
    rc, err, seconds, peak_mb = nbft_measured(["run", "--params", SMOKE, "--only", "01_data_prep", "--set",
                                               f"dataset={big}", "--no-progress"], {"NBFT_RUNS_DIR": str(tmp_path / "runs")})
    assert rc == 2 and "big.jsonl line 31: longer than 1,000,000 characters" in err, err[-500:]
    assert seconds < 5 and peak_mb < 500, (seconds, peak_mb)
    assert not (tmp_path / "runs").exists()
