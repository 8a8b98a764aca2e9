"""The notebooks executed through Papermill on the smoke profile, and the runner's bad-input handling.

One smoke run is shared by the tests of this module (module-scoped fixture);
each bad-input test checks that it leaves that earlier run untouched.
"""
import contextlib
import hashlib
import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from html import escape
from html.parser import HTMLParser

from nbft import cli, export, models, params, peft, runs

pytestmark = pytest.mark.notebook
ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "params" / "smoke.yaml")


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def stderr_of(run: Path) -> Path:
    """Where ``smoke_run`` keeps what was written to file descriptor 2 while it ran (the kernels inherit it)."""
    return run.parent.with_name(run.parent.name + "-stderr.txt")


@contextlib.contextmanager
def fd2_into(path: Path):
    """File descriptor 2 (what child processes such as the notebook kernels write their stderr to) goes to ``path``
    for the duration; afterwards the text is also written to the stderr it replaced (pytest shows it on a failure)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "wb") as f:
        os.dup2(f.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
    sys.stderr.write(path.read_text(errors="replace"))


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    runs_dir = tmp_path_factory.mktemp("runs")
    old = os.environ.get("NBFT_RUNS_DIR")
    os.environ["NBFT_RUNS_DIR"] = str(runs_dir)
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        # two stages at once (make run's --jobs auto on 2 cores): every test of this module reads a parallel run
        with fd2_into(stderr_of(runs_dir / "smoke")):
            rc = cli.main(["run", "--params", SMOKE, "--name", "smoke", "--no-progress", "--jobs", "2"])
    finally:
        os.chdir(cwd)
    yield rc, runs_dir / "smoke"
    if old is None:
        os.environ.pop("NBFT_RUNS_DIR", None)
    else:
        os.environ["NBFT_RUNS_DIR"] = old


def test_smoke_run_writes_everything(smoke_run):
    rc, run = smoke_run
    assert rc == 0
    for stage in params.STAGES:
        assert (run / f"{stage}.ipynb").is_file() and (run / f"{stage}.html").is_file()
    for f in ["params.yaml", "env.json", "metrics.json", "status.json"]:
        assert (run / f).is_file(), f
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "ok"
    for stage in params.STAGES:  # --jobs 2: no stage started before the ones it reads had ended
        for need in cli.needs(stage, list(params.STAGES)):
            assert status["clock"][stage][0] >= status["clock"][need][1] - 0.05, (stage, need)
    resolved = params.resolve(run / "params.yaml")
    assert resolved["02_sft"].model == "tiny-llama" and resolved["02_sft"].run_name == "smoke"
    env = json.loads((run / "env.json").read_text())
    assert env["model"]["spec"] == "tiny-llama" and env["seed"] == 0 and "commit" in env["git"]


def test_smoke_export_writes_merged_weights_gguf_a_modelfile_and_a_card_and_checks_them(smoke_run):
    """08_export on 02's adapter (smoke profile): every file, the round trip of every format against the notebook's
    model, the served check through the openai client with the server stopped, findings."""
    _, run = smoke_run
    e = json.loads((run / "metrics.json").read_text())["08_export"]
    smoke = params.resolve(SMOKE)["08_export"]
    assert e["export_model"] == "02_sft/adapter" and e["n_eval"] == smoke.n_eval
    folder = run / "artifacts" / "08_export" / Path(e["export_dir"]).name
    assert {"merged", "gguf", "Modelfile"} <= {f.name for f in folder.iterdir()}
    assert (folder / "merged" / "README.md").read_text().startswith("---\nlicense: apache-2.0\nbase_model: tiny-llama")
    assert sorted(f.name for f in (folder / "gguf").glob("*.gguf")) == sorted(f"model-{f}.gguf" for f in smoke.formats)
    assert set(e["formats"]) == set(smoke.formats)
    for fmt, row in e["formats"].items():
        assert row["size_mb"] > 0 and row["load_seconds"] > 0 and row["gen_tokens_per_second"] >= 0, fmt
        assert 0 <= row["task_score"] <= 1 and 0 <= row["identical_share"] <= 1 and row["ppl_general"] > 1, fmt
        metric = row["reply_metrics"][e["score_metric"]]
        assert metric["after"]["lo"] <= metric["after"]["mean"] <= metric["after"]["hi"], fmt
        assert metric["before"]["mean"] == pytest.approx(e["reference"]["task_score"]), fmt
    assert e["formats"]["f16"]["ppl_general"] == pytest.approx(e["reference"]["ppl_general"], rel=0.01)
    served = e["served"]
    assert served["format"] == smoke.serve_format and served["n_replies"] == served["n_prompts"] == e["n_eval"]
    assert served["stopped"] and served["identical_to_direct"] == 1.0
    assert len(e["findings"]) >= len(smoke.formats) + 1 and all(f.endswith(".") for f in e["findings"])
    assert e["findings"][-1].startswith(f"Served ({smoke.serve_format})")
    assert runs.vocabulary_problems("08_export", e) == []


def test_smoke_metrics(smoke_run):
    _, run = smoke_run
    m = json.loads((run / "metrics.json").read_text())
    d = m["01_data_prep"]
    assert d["n_train"] > d["n_validation"] > 0 and d["n_test"] > 0
    assert d["n_removed_duplicates"] > 0 and d["n_removed_filtered"] > 0  # the demo's planted problems
    s = m["02_sft"]
    assert 0 <= s["task_score_before"] <= 1 and 0 <= s["task_score_after"] <= 1
    assert s["eval_loss"] > 0 and s["tokens_per_second"] > 0
    assert 0 < s["trainable_params"] < s["total_params"]
    # issue 3: forgetting probe, sweeps, scopes, continued pretraining
    for k in ["ppl_general_before", "ppl_general_after", "cpt_ppl_domain_before", "cpt_ppl_domain_after"]:
        assert s[k] > 1, k
    for k in ["general_qa_before", "general_qa_after"]:
        assert 0 <= s[k] <= 1, k
    smoke = params.resolve(SMOKE)["02_sft"]
    n_train = s["n_train"]
    assert set(s["score_by_size"]) == {str(n) for n in smoke.sweep_sizes} | {str(n_train)}
    assert s["score_metric"] == "task_score"  # the smoke data names its own checks
    assert set(s["scope_comparison"]) == set(smoke.compare_scopes)
    for scope, row in s["scope_comparison"].items():
        assert set(row) >= {"task_score", "ppl_general", "general_qa", "trainable_params", "seconds"}
        assert 0 <= row["task_score"] <= 1 and row["seconds"] > 0
    sc = s["scope_comparison"]
    assert sc["lora"]["trainable_params"] < sc["freeze"]["trainable_params"] < sc["full"]["trainable_params"] == s["total_params"]
    assert s["quality_comparison"]["n_train"] == smoke.quality_size
    assert set(s["task_score_by_task"]) == set(params.resolve(SMOKE)["01_data_prep"].demo_tasks)
    # issue 30: the held-out replies against their references, each with intervals (demo data: its own check)
    assert list(s["reply_metrics"]) == ["task", "length"]  # the smoke profile's multi-task mix: each record's check
    for name, row in s["reply_metrics"].items():
        assert row["before"]["lo"] <= row["before"]["mean"] <= row["before"]["hi"], name
        assert row["diff"]["mean"] == pytest.approx(row["after"]["mean"] - row["before"]["mean"]), name
        assert row["diff"]["n_eval"] == s["n_eval"], name
    assert s["reply_metrics"]["task"]["after"]["mean"] == pytest.approx(s["task_score_after"])
    # issue 30: the bundled lm-eval task before and after, offline, each with its interval and the paired change
    bench = s["benchmarks"]["nbft_general_qa"]
    assert bench["metric"] == "acc"
    for side in ("before", "after"):
        assert bench[side]["n_eval"] == smoke.benchmark_limit
        assert 0 <= bench[side]["lo"] <= bench[side]["mean"] <= bench[side]["hi"] <= 1
    assert bench["diff"]["mean"] == pytest.approx(bench["after"]["mean"] - bench["before"]["mean"])
    assert any(f.startswith("Benchmark nbft_general_qa (acc)") for f in s["findings"])
    assert len(s["findings"]) >= 5
    # issue 30: the main run's validation loss every eval_steps and at its end; overfitting with early stopping
    curve = s["eval_curve"]
    assert [r["step"] for r in curve[:-1]] == list(range(smoke.eval_steps, curve[-1]["step"], smoke.eval_steps))
    assert all(r["eval_loss"] > 0 and r["train_loss"] > 0 for r in curve)
    assert s["eval_loss"] == curve[-1]["eval_loss"] and s["best_step"] in [r["step"] for r in curve]
    o = s["overfitting"]
    assert o["n_train"] == smoke.overfit_examples and o["steps"] == len(o["eval_curve"]) == 3  # batch 8: a step an epoch
    es = o["early_stopping"]
    assert es["eval_loss"] == pytest.approx(min(r["eval_loss"] for r in es["eval_curve"]), rel=1e-4)  # the best restored
    assert es["steps"] == (es["stopped_at_step"] or o["steps"])
    # issue 4: one row per method, the table's columns, adapters on one base
    pe = m["03_peft"]
    from nbft import peft

    smoke_peft = params.resolve(SMOKE)["03_peft"]
    assert list(pe["methods"]) == smoke_peft.methods
    runnable = [k for k in smoke_peft.methods if not peft.METHODS[k].needs()]
    assert pe["n_methods_ok"] == len(runnable) >= 13
    for k, row in pe["methods"].items():
        if k not in runnable:
            assert row["status"].startswith("skipped: needs"), row
            continue
        assert row["status"] == "ok"
        assert 0 < row["trainable_pct"] <= 100 and row["seconds"] > 0 and row["peak_mem_mb"] > 0
        assert row["size_mb"] > 0 and 0 <= row["task_score"] <= 1 and row["eval_loss"] > 0
        assert isinstance(row["mergeable"], bool)
        if row["mergeable"] and k not in ("full", "freeze"):
            assert row["merge_max_abs_diff"] < 1e-2, (k, row["merge_max_abs_diff"])
    assert pe["methods"]["full"]["trainable_pct"] == 100
    # issue 30: each method's held-out replies against the base model's, in 02's shape (the data's own checks here)
    assert list(pe["reply_metrics"]) == runnable
    for k, t in pe["reply_metrics"].items():
        check_reply_table(t, ["task", "length"], pe["n_eval"])
        assert t["task"]["after"]["mean"] == pytest.approx(pe["methods"][k]["task_score"]), k
        assert t["task"]["before"]["mean"] == pytest.approx(pe["task_score_before"]), k
    assert pe["methods"]["lora"]["trainable_pct"] < pe["methods"]["freeze"]["trainable_pct"]
    assert isinstance(pe["adapter_switch_ok"], bool) and pe["merged_reload_max_abs_diff"] < 1e-3
    assert len(pe["adapter_scores"]) == 4  # two adapters, adapters off, the weighted combination
    # issue 5: RLHF — every required number, in range; the policy started from this run's SFT model
    r = m["04_rlhf"]
    for k in ["rm_accuracy", "rm_accuracy_train", "winrate_rl_vs_sft", "winrate_dpo_vs_sft",
              "rule_score_sft", "rule_score_rl", "rule_score_dpo"]:
        assert 0 <= r[k] <= 1, k
    for k in ["rl_mean_reward_before", "rl_mean_reward_after", "dpo_mean_reward"]:
        assert math.isfinite(r[k]), k
    assert r["rl_kl"] > -1e-3 and r["n_pairs_train"] > 0 and r["n_pairs_heldout"] > 0
    assert r["n_eval"] >= 40 and r["policy_start"].startswith("this run's SFT model")
    rows = params.resolve(SMOKE)["04_rlhf"].methods
    assert r["methods_trained"] == list(r["methods"]) == [n for n in params.RLHF_METHODS if n in rows]
    assert r["rl_algo"] == "grpo" and r["preference_loss"] == "dpo"  # the rl_* and *_dpo keys: the first of each kind
    assert set(r["mean_words"]) == set(r["pass_rate"]) == {"sft", *rows}
    assert all(v > 0 for v in r["seconds_by_part"].values()) and set(r["seconds_by_part"]) == {"reward_model", *rows}
    assert r["seconds"] == pytest.approx(sum(r["seconds_by_part"].values()))
    # issue 33: one entry per method row, with its interval, win rate, KL where its trainer logs one, time and memory
    for name, row in r["methods"].items():
        assert row["kind"] == {"grpo": "rl", "rloo": "rl", "online_dpo": "online"}.get(name, "offline"), name
        lo, hi = row["rule_ci"]  # (a tiny model's equal scores: the mean and the interval differ in the last digits)
        assert lo - 1e-9 <= row["rule_score"] <= hi + 1e-9 and row["win_ci"][0] - 1e-9 <= row["win_rate_vs_sft"], name
        assert row["win_rate_vs_sft"] <= row["win_ci"][1] + 1e-9 and 0 <= row["tie_share"] <= 1, name
        assert (row["kl"] is None) == (row["kind"] == "offline") and row["seconds"] > 0 and row["peak_mem_mb"] > 100
        assert math.isfinite(row["reward_model"]) and row["learning_rate"] > 0 and row["steps"] > 0
    assert r["methods"]["grpo"]["win_rate_vs_sft"] == r["winrate_rl_vs_sft"] and r["methods"]["grpo"]["kl"] == r["rl_kl"]
    assert r["methods"]["dpo"]["rule_score"] == r["rule_score_dpo"]
    # issue 30: each row's held-out replies against the SFT start's, on the stage's own scores (no references)
    assert list(r["reply_metrics"]) == list(r["methods"])
    for k, t in r["reply_metrics"].items():
        check_reply_table(t, ["rule", "reward", "length"], r["n_eval"])
        assert t["rule"]["before"]["mean"] == pytest.approx(r["rule_score_sft"])
        assert t["rule"]["after"]["mean"] == pytest.approx(r["methods"][k]["rule_score"])
    assert r["reply_metrics"]["grpo"]["reward"]["after"]["mean"] == pytest.approx(r["rl_mean_reward_after"])
    # issue 33: the untrained tiny judge labels the pairs (smoke.yaml): every comparison asked in both orders, every
    # answer counted; read as probabilities (judge_verdict probability) every comparison is decided, so DPO trains on
    # its pairs and on the rule's, both judged by the rule on the held-out prompts
    f = r["feedback"]
    assert f["labeller"] == "judge tiny-llama" and f["n_comparisons"] > 0 and sum(f["answers"].values()) == 2 * f[
        "n_comparisons"]
    assert f["n_ties"] == 0 and f["n_decided"] == f["n_comparisons"] and f["answers"]["unparsed"] == 0
    assert 0 < f["first_slot_probability"] < 1 and f["n_pairs"] > 0
    assert {"rule_labels", "labeller_labels", "labeller_vs_rule"} <= set(f) and f["findings"]
    assert f["labeller_labels"]["n_eval"] == f["rule_labels"]["n_eval"] == r["n_eval"]
    # issue 6: retrieval vs fine-tuning — every method in both forms, recall, latency, the paraphrase curve
    k = m["05_rag_vs_ft"]
    smoke_rag = params.resolve(SMOKE)["05_rag_vs_ft"]
    assert set(k["accuracy"]) == {"base", "few_shot", "ft", "ft_paraphrase", "rag", "rag_ft"}
    for method, a in k["accuracy"].items():
        assert set(a) == {"open", "mc"} and all(0 <= v <= 1 for v in a.values()), method
    assert k["n_eval"] == smoke_rag.n_eval and "n_questions" not in k  # one name for it in every stage
    assert set(k["recall_at_k"]) == {str(x) for x in smoke_rag.recall_ks}
    assert k["indexes"]["flat"]["recall@3"] >= 0.9  # the real MiniLM embedder, even in the smoke run
    assert all(0 <= v <= 1 for v in k["recall_at_k"].values()) and 0 < k["retrieval_ms_p50"] < 1000
    assert set(k["paraphrase_curve"]) == {str(x) for x in [0, smoke_rag.paraphrases, *smoke_rag.paraphrase_sweep]}
    assert len(k["findings"]) >= 4
    # issue 13: the classifier stage — every row, the shift, the adaptation curve, conditional pretraining
    c = m["06_classify"]
    smoke_cls = params.resolve(SMOKE)["06_classify"]
    assert list(c["methods"]) == smoke_cls.approaches and len(c["methods"]) >= 8
    for name, row in c["methods"].items():
        assert 0 <= row["accuracy"] <= 1 and 0 <= row["f1"] <= 1 and 0 <= row["auc"] <= 1, name
        assert 0 <= row["target_accuracy"] <= 1 and row["ms_per_example"] > 0, name
        assert (row["trainable_params"] > 0) == (name not in ("zero_shot", "few_shot")), name
    assert set(c["shift"]) == {"approach", "source_accuracy", "target_accuracy"}
    assert set(c["adapt_curve"]) == {str(n) for n in smoke_cls.adapt_sizes}
    assert all(0 <= v <= 1 for a in c["adapt_curve"].values() for v in (a["from_source"], a["from_base"]))
    cond = c["conditional"]
    assert set(cond["rate_by_tag"]) == {"ham", "spam"} and 0 <= cond["rate_untagged"] <= 1
    assert cond["judge"].startswith("rule") and cond["n_texts"] == smoke_cls.cpt_texts
    assert c["n_train"] == smoke_cls.n_train and c["n_eval"] == smoke_cls.n_test
    # issue 14: distillation — teacher, untrained student, every method with both gaps, the student it built
    check_distill_metrics(m["07_distill"], params.resolve(SMOKE)["07_distill"])
    assert m["07_distill"]["teacher_model"].startswith("this run's SFT model")  # the teacher is 02's model


DISTILL_KEYS = {"task_score", "answer_accuracy", "general_qa", "knowledge_score", "ppl_general", "total_params", "size_mb",
                "gen_tokens_per_second"}


def check_reply_table(t, names, n_eval):
    """One arm's ``reply_metrics`` (``scoring.table`` as recorded): 02's shape, intervals that hold their means."""
    assert list(t) == names
    for name, row in t.items():
        assert set(row) == {"before", "after", "diff", "higher_is_better"}, name
        for side in ("before", "after", "diff"):
            assert row[side]["lo"] <= row[side]["mean"] <= row[side]["hi"] and row[side]["n_eval"] == n_eval, name
        assert row["diff"]["mean"] == pytest.approx(row["after"]["mean"] - row["before"]["mean"]), name


def check_distill_metrics(x, p):
    """07_distill's section of metrics.json: every required number, in range, every method row."""
    for who in ("teacher", "student_base"):
        assert set(x[who]) == DISTILL_KEYS, who
    assert list(x["methods"]) == [k for k in p.methods if k != "student_base"] == ["gold_sft", "imitation", "distill"]
    for name, row in [("teacher", x["teacher"]), ("student_base", x["student_base"]), *x["methods"].items()]:
        for k in ("task_score", "answer_accuracy", "general_qa", "knowledge_score"):
            assert 0 <= row[k] <= 1, (name, k)
        assert row["ppl_general"] > 1 and row["gen_tokens_per_second"] > 0 and row["size_mb"] > 0, name
        assert row["knowledge_score"] == pytest.approx((row["answer_accuracy"] + row["general_qa"]) / 2), name
    for name, row in x["methods"].items():
        assert set(row) == DISTILL_KEYS | {"seconds", "steps", "style_gap_closed", "knowledge_gap_closed"}, name
        assert row["seconds"] > 0 and row["steps"] == p.max_steps and row["total_params"] == x["student_base"]["total_params"]
        for kind, key in (("style", "task_score"), ("knowledge", "knowledge_score")):
            gap = x["teacher"][key] - x["student_base"][key]
            if abs(gap) < 0.05:  # no gap: None, and the reason is recorded
                assert row[f"{kind}_gap_closed"] is None and "no gap to close" in x["gap_notes"][kind]
            else:
                assert row[f"{kind}_gap_closed"] == pytest.approx((row[key] - x["student_base"][key]) / gap)
    assert x["student_layers"] == p.student_layers and x["student_base"]["total_params"] < x["teacher"]["total_params"]
    assert x["speedup"] == pytest.approx(x["student_base"]["gen_tokens_per_second"] / x["teacher"]["gen_tokens_per_second"])
    assert x["n_train"] == p.n_train and x["n_unlabelled"] == p.n_unlabelled and x["n_eval"] == p.n_eval
    assert x["imitation_data"]["n_train"] == p.n_train + p.n_unlabelled
    assert any("Gudibande" in f for f in x["findings"]) and len(x["findings"]) >= 6
    # issue 30: the teacher's and each method's held-out replies against the untrained student's (smoke: chrf named)
    from nbft import scoring

    own = scoring.resolve(["auto"], x["task_check"])[0]  # the data's own check: task (the smoke mix) or json_answer
    assert list(x["reply_metrics"]) == ["teacher", "gold_sft", "imitation", "distill"]
    for name, t in x["reply_metrics"].items():
        check_reply_table(t, [own, "length", "chrf"], p.n_eval)
        who = x["teacher"] if name == "teacher" else x["methods"][name]
        assert t[own]["after"]["mean"] == pytest.approx(who["task_score"]), name
        assert t[own]["before"]["mean"] == pytest.approx(x["student_base"]["task_score"]), name
    assert any(f.startswith("chrf vs student_base on") for f in x["findings"])


def test_every_stage_speaks_the_metrics_vocabulary(smoke_run):
    """Issue 34: one name for one measure in every stage (runs.VOCABULARY): no synonym, no key renamed since, every
    vocabulary name holding its kind of value, comparison rows without _before/_after."""
    _, run = smoke_run
    m = json.loads((run / "metrics.json").read_text())
    assert set(m) == set(params.STAGES)
    problems = [p for stage, section in m.items() for p in runs.vocabulary_problems(stage, section)]
    assert problems == []


def test_every_stage_records_findings_and_what_they_mean(smoke_run):
    """Bug: only 02 and 05 recorded findings (04 printed them, 03 had a sentence), so 99_report's "findings the
    stages wrote" was incomplete. Every stage records them, with the thresholds they were worded by, and the
    same names for how much it trained on and scored."""
    _, run = smoke_run
    m = json.loads((run / "metrics.json").read_text())
    for stage in params.STAGES:
        findings = m[stage].get("findings")
        assert findings and all(isinstance(f, str) and len(f) > 20 for f in findings), stage
    for stage in ("02_sft", "03_peft", "04_rlhf", "05_rag_vs_ft", "06_classify", "07_distill"):
        assert m[stage]["thresholds"] and all(isinstance(v, (int, float)) for v in m[stage]["thresholds"].values())
        assert m[stage]["n_train"] > 0 and m[stage]["n_eval"] > 0, stage
    status = json.loads((run / "status.json").read_text())
    for stage in ("02_sft", "03_peft", "04_rlhf", "05_rag_vs_ft", "06_classify", "07_distill"):
        prof = m[stage]["profile"]  # where the stage's time went, measured where the work happens
        assert prof["loading"] > 0 and prof["training"] > 0 and prof["generation"] + prof["scoring"] > 0, stage
        assert min(prof.values()) >= 0 and prof["total"] <= status["seconds"][stage] + 1, stage
    report_text = (run / "99_report.ipynb").read_text()
    for stage in params.STAGES:
        if stage != "99_report":
            assert f"[smoke · {stage}]" in report_text, stage


def test_unfiltered_arm_comes_from_the_data_01_cleaned(smoke_run):
    """Bug: 02's clean-vs-unfiltered arm drew from the default json_qa demo even when 01 ran another mix."""
    _, run = smoke_run
    m = json.loads((run / "metrics.json").read_text())
    tasks_01 = set(params.resolve(SMOKE)["01_data_prep"].demo_tasks)
    drawn = set(m["02_sft"]["quality_comparison"]["unfiltered_tasks"])
    assert drawn <= tasks_01 and len(drawn) > 1, (drawn, tasks_01)


def test_smoke_artifacts(smoke_run):
    _, run = smoke_run
    prep = run / "artifacts" / "01_data_prep"
    assert all((prep / f"{s}.jsonl").is_file() for s in ("train", "validation", "test"))
    n_train = sum(1 for _ in open(prep / "train.jsonl"))
    assert n_train == json.loads((run / "metrics.json").read_text())["01_data_prep"]["n_train"]
    pe = run / "artifacts" / "03_peft"
    assert (pe / "methods" / "lora" / "adapter_model.safetensors").is_file()
    assert (pe / "methods" / "bottleneck_adapter" / "trainable.safetensors").is_file()
    assert not (pe / "merged_A").exists() and not (pe / "methods" / "full").exists()  # whole copies: not kept
    rows = json.loads((run / "metrics.json").read_text())["03_peft"]["methods"]
    ok = {m: r for m, r in rows.items() if r.get("trainable_pct") is not None}
    assert ok and all((pe / "methods" / m).is_dir() == (r["trainable_pct"] < peft.KEEP_MAX_PCT) for m, r in ok.items())
    sft = run / "artifacts" / "02_sft"
    assert (sft / "adapter" / "adapter_model.safetensors").is_file() and (sft / "card.md").is_file()
    assert not (sft / "merged").exists()  # later stages merge the adapter on demand
    rl = run / "artifacts" / "04_rlhf"
    rows = params.resolve(SMOKE)["04_rlhf"].methods
    for folder in ("reward_model", *(f"{n}_policy" for n in rows)):  # smoke: LoRA policies, saved as adapters on 02's
        assert not models.folder_problem(rl / folder), folder
        assert models.adapter_base(rl / folder) == str((sft / "adapter").resolve()), folder
    # each is a model spec: merged on demand onto 02's adapter merged onto the model (the reward model as a classifier)
    reward = json.loads((Path(models.resolve(str(rl / "reward_model")).path) / "config.json").read_text())
    policy = json.loads((Path(models.resolve(str(rl / "grpo_policy")).path) / "config.json").read_text())
    assert reward["architectures"] == ["LlamaForSequenceClassification"] and len(reward["id2label"]) == 1
    assert policy["architectures"] == ["LlamaForCausalLM"]
    n_pairs = sum(1 for _ in open(rl / "pairs" / "pairs_train.jsonl"))
    assert n_pairs == json.loads((run / "metrics.json").read_text())["04_rlhf"]["n_pairs_train"]
    assert (rl / "card.md").is_file()
    idx = run / "artifacts" / "05_rag_vs_ft" / "index"
    assert all((idx / f).is_file() for f in ("index.faiss", "chunks.jsonl", "meta.json"))
    card = json.loads((sft / "card.json").read_text())
    assert card["parameters"]["scope"] == "lora" and "task_score_after" in card["metrics"]
    ds = run / "artifacts" / "07_distill"
    assert not (ds / "student_init").exists()  # in the model cache
    assert (ds / "distilled" / "model.safetensors").is_file()
    distilled = json.loads((ds / "distilled" / "config.json").read_text())
    assert distilled["num_hidden_layers"] == 1 and distilled["dtype"] == "bfloat16"
    assert (ds / "imitation.jsonl").is_file() and (ds / "card.md").is_file()


def test_smoke_reports_read_as_reports(smoke_run):
    _, run = smoke_run
    for stage in params.STAGES:
        nb = json.loads((run / f"{stage}.ipynb").read_text())
        errors = [o for c in nb["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
        assert not errors
        assert sum(c["cell_type"] == "markdown" for c in nb["cells"]) >= 5
        html = (run / f"{stage}.html").read_text()
        assert "data:image/png;base64" in html, f"{stage}: figures must be embedded in the HTML"
        assert export.external_urls(html) == [], f"{stage}: the report must load nothing from a network"
        if any("application/vnd.jupyter.widget-view+json" in o.get("data", {})
               for c in nb["cells"] for o in c.get("outputs", [])):
            assert 'type="application/vnd.jupyter.widget-state+json"' in html, f"{stage}: widget state embedded"
            assert "nbft-static-fallback" in html, f"{stage}: static copies of its widgets"
    index = (run / "index.html").read_text()
    for stage in params.STAGES:
        assert f"href='{stage}.html'" in index
    assert "accuracy.rag.open = <b>" in index and export.external_urls(index) == []
    # 02_sft used 01's splits from the same run
    sft = (run / "02_sft.ipynb").read_text()
    assert "01_data_prep artifacts in this run" in sft
    # the report leaves out the source of the defaults cell and of Papermill's injected cell (the executed notebook
    # keeps both): a help comment of the defaults cell, Papermill's "# Parameters" comment
    html = (run / "02_sft.html").read_text()
    assert "celltag_parameters" in html and "celltag_injected-parameters" in html
    assert escape(f"# {params.SFTParams.__dataclass_fields__['batch_size'].metadata['help']}") not in html
    assert '<span class="c1"># Parameters</span>' not in html
    # the chat playground's scripted conversation (smoke: 02 and 03), played to the base model and 02's: in the report
    static = html[html.index("Example conversation (scripted"):]
    assert "Which river runs through it?" in static and "02_sft/adapter" in static and "nbft-chat-reply" in static
    # 03's: its LoRA adapter loads as a model spec (saved with its tokenizer and base record)
    html3 = (run / "03_peft.html").read_text()
    static = html3[html3.index("Example conversation (scripted"):]
    assert "03_peft/methods/lora" in static and "nbft-chat-reply" in static
    nb = json.loads(sft)
    assert [c["source"] for c in nb["cells"] if "injected-parameters" in c["metadata"].get("tags", [])]
    # the kernels talk to the runner over unix sockets: no warning of an unencrypted TCP transport in the run's log
    assert "[IPKernelApp] WARNING" not in stderr_of(run).read_text()


def test_smoke_reports_open_with_their_parameters_and_show_no_machine_paths(smoke_run):
    """A stage report's first output is its parameters table (what differs from the defaults, all of them one click
    away); no report holds an absolute path of the machine (the run folder, the project, the home folder, /tmp/).
    The setup cell makes both true: its first output is ``report.parameters_html(stage, p, run.path)``, and its header
    prints the run folder and the model as ``files.relative`` writes them."""
    _, run = smoke_run
    for stage in params.STAGES:
        html = (run / f"{stage}.html").read_text()
        body = html[html.index("<body"):]  # (the head's style sheet names the output classes too)
        first = body.index("jp-OutputArea-output")  # the report's first output ...
        second = body.find("jp-OutputArea-output", first + 1)
        assert first < body.index('class="nbft-parameters"') < (second if second > 0 else len(body)), stage  # ... is it
        assert "differ from the defaults" in body and "parameters</summary>" in body, stage
        for machine in (str(run.resolve()), str(run), str(ROOT), str(Path.home()) + "/", "/tmp/"):
            assert machine not in html, (stage, machine, html[max(0, html.index(machine) - 200):][:300])
    assert "runs/smoke/artifacts/01_data_prep" in (run / "02_sft.html").read_text()


class Tables(HTMLParser):
    """Every <table> in an HTML fragment: caption -> rows (dicts keyed by the header cells)."""

    def __init__(self):
        super().__init__()
        self.tables, self.cell, self.row, self.caption, self.head, self.rows = {}, None, None, "", [], []

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.caption, self.head, self.rows = "", [], []
        elif tag in ("td", "th", "caption"):
            self.cell = ""
        elif tag == "tr":
            self.row = []

    def handle_data(self, data):
        if self.cell is not None:
            self.cell += data

    def handle_endtag(self, tag):
        if tag == "caption":
            self.caption, self.cell = self.cell, None
        elif tag == "th":
            self.head.append(self.cell)
            self.cell = None
        elif tag == "td":
            self.row.append(self.cell)
            self.cell = None
        elif tag == "tr" and self.row:
            self.rows.append(dict(zip(self.head, self.row)))
            self.row = None
        elif tag == "table":
            self.tables[self.caption] = self.rows


def notebook_tables(path) -> dict:
    """caption -> rows of every HTML table in an executed notebook's outputs (static copies included)."""
    parser = Tables()
    for c in json.loads(Path(path).read_text())["cells"]:
        for o in c.get("outputs", []):
            if o.get("data", {}).get("text/html"):
                parser.feed("".join(o["data"]["text/html"]))
    return parser.tables


def flat_metrics(d, prefix=""):
    """metrics.json flattened the way a reader would: nested keys dotted, rows and findings left out.
    Written here on purpose, not taken from nbft.report.flatten, so the test does not check the report
    against itself."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flat_metrics(v, f"{prefix}{k}."))
        elif isinstance(v, list):
            if k != "findings" and not any(isinstance(x, (dict, list)) for x in v):
                out[prefix + k] = v
        else:
            out[prefix + k] = v
    return out


def same(cell: str, value) -> bool:
    if isinstance(value, bool) or value is None:
        return cell == str(value)
    if isinstance(value, (int, float)):
        if math.isnan(value):
            return cell == "nan"
        return abs(float(cell) - value) <= 5e-4 * abs(value) + 1e-12  # written to 4 significant digits
    if isinstance(value, list):
        if not value:
            return cell == ""  # an empty list is an empty cell
        return len(cell.split(", ")) == len(value) and all(same(c, v) for c, v in zip(cell.split(", "), value))
    return cell == str(value)


def test_report_tables_equal_metrics_json(smoke_run):
    _, run = smoke_run
    metrics = json.loads((run / "metrics.json").read_text())
    tables = notebook_tables(run / "99_report.ipynb")
    stages = [s for s in params.STAGES if s != "99_report"]
    assert metrics["99_report"]["stages"] == stages and metrics["99_report"]["compare_runs"] == ["smoke"]
    for s in stages:
        rows, expected = tables[s], flat_metrics(metrics[s])
        assert [r["metric"] for r in rows] == list(expected), s
        for r in rows:
            assert same(r["smoke"], expected[r["metric"]]), (s, r, expected[r["metric"]])
    key = tables["key figures"]
    assert {r["stage"] for r in key} == set(stages)
    for r in key:
        assert same(r["value"], flat_metrics(metrics[r["stage"]])[r["metric"]]), r


def test_sweep_two_values_two_runs_one_comparison_report(smoke_run, capsys):
    _, run = smoke_run
    root = run.parent
    before = snapshot(root)
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        bad = cli.main(["sweep", "--params", SMOKE, "--grid", "01_data_prep.n_exampels=48,64", "--no-progress"])
        assert bad == cli.EXIT_BAD_INPUT and "did you mean 'n_examples'" in capsys.readouterr().err
        assert snapshot(root) == before  # nothing ran, nothing written
        rc = cli.main(["sweep", "--params", SMOKE, "--grid", "01_data_prep.n_examples=48,64", "--only", "01_data_prep",
                       "--name", "sw", "--no-progress"])
    finally:
        os.chdir(cwd)
    assert rc == 0
    points = sorted(d.name for d in root.glob("sw__*"))
    assert points == ["sw__n_examples-48", "sw__n_examples-64"]
    assert [params.resolve(root / p / "params.yaml")["01_data_prep"].n_examples for p in points] == [48, 64]
    raw = [json.loads((root / p / "metrics.json").read_text())["01_data_prep"]["n_raw"] for p in points]
    assert raw[0] < raw[1]  # the parameter took effect
    sweep = root / "sw"
    assert json.loads((sweep / "sweep.json").read_text())["grid"] == {"01_data_prep.n_examples": ["48", "64"]}
    for f in ("99_report.ipynb", "99_report.html", "index.html"):
        assert (sweep / f).is_file(), f
    tables = notebook_tables(sweep / "99_report.ipynb")
    assert tables["parameters that differ"] == [
        {"parameter": "01_data_prep.n_examples", points[0]: "48", points[1]: "64"}]
    rows = {r["metric"]: r for r in tables["01_data_prep"]}
    assert [rows["n_raw"][p] for p in points] == [str(r) for r in raw]
    assert export.external_urls((sweep / "99_report.html").read_text()) == []
    index = (sweep / "index.html").read_text()
    assert all(f"href='../{p}/index.html'" in index for p in points) and "href='99_report.html'" in index


def test_list_shows_the_run(smoke_run, capsys):
    _, run = smoke_run
    os.environ["NBFT_RUNS_DIR"] = str(run.parent)
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    assert "smoke" in out and "ok" in out and "task_score_after" in out


def jsonl(path, recs):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in recs) + "\n")
    return str(path)


GOOD = {"instruction": "Say hi", "output": "Hello there, friend."}
THREE = [("refund my fee", "billing"), ("charged twice", "billing"), ("site is down", "outage"),
         ("cannot log in", "outage"), ("great update", "praise"), ("love it", "praise")]


def csv_file(path, header, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return str(path)


@pytest.mark.parametrize("case", ["unknown_key", "wrong_type", "missing_file", "malformed_jsonl",
                                  "missing_field", "unknown_model", "existing_name", "bad_preferences",
                                  "bad_policy", "documents_without_questions", "classify_no_label_column",
                                  "classify_one_class", "classify_unseen_label", "classify_empty_text",
                                  "classify_unknown_approach"])
def test_bad_input_fails_before_running_and_touches_nothing(case, smoke_run, tmp_path, capsys):
    _, run = smoke_run
    before = snapshot(run.parent)
    args = ["run", "--params", SMOKE, "--no-progress"]
    expect = {
        "unknown_key": (["--set", "02_sft.lora_rank=4"], ["lora_rank", "did you mean 'lora_r'"]),
        "wrong_type": (["--set", "epochs=two"], ["epochs", "expected float", "'two'"]),
        "missing_file": (["--set", f"dataset={tmp_path}/nope.jsonl"], ["data file not found", "nope.jsonl"]),
        "malformed_jsonl": (["--set", "dataset=" + jsonl(tmp_path / "bad.jsonl", [GOOD, GOOD, '{"instruction": '])],
                            ["bad.jsonl line 3", "malformed JSON"]),
        "missing_field": (["--set", "dataset=" + jsonl(tmp_path / "mf.jsonl", [GOOD, {"instruction": "x"}])],
                          ["mf.jsonl line 2", "'output'"]),
        "unknown_model": (["--set", "model=no-such-model"], ["cannot resolve model 'no-such-model'", "Tried"]),
        "existing_name": (["--name", "smoke"], ["already exists", "never overwritten"]),
        "bad_preferences": (["--set", "04_rlhf.feedback=rule", "--set", "04_rlhf.judge=",  # smoke labels with a judge
                             "--set", "preferences=" + jsonl(tmp_path / "prefs.jsonl", [
            {"prompt": "Hi?", "chosen": "Hello there.", "rejected": "x"}, {"prompt": "Hi?", "chosen": "Hello."}])],
            ["prefs.jsonl line 2", "missing field 'rejected'"]),
        "bad_policy": (["--set", f"policy={tmp_path}/no-model"], ["04_rlhf.policy", "no-model"]),
        "documents_without_questions": (["--set", f"knowledge_base={tmp_path}"], ["05_rag_vs_ft.questions", "need a questions file"]),
        "classify_no_label_column": (["--set", "source_data=" + csv_file(tmp_path / "nl.csv", ("text", "labels"), [("a b", "x")]),
                                      "--set", "target_data="], ["nl.csv line 2", "no column 'label'", "did you mean 'labels'"]),
        "classify_one_class": (["--set", "source_data=" + csv_file(tmp_path / "one.csv", ("text", "label"),
                                                                  [("a b", "x"), ("c d", "x")]), "--set", "target_data="],
                               ["one.csv", "one label only"]),
        "classify_unseen_label": (["--set", "source_data=" + csv_file(tmp_path / "s.csv", ("text", "label"), THREE),
                                   "--set", "target_data=" + csv_file(tmp_path / "t.csv", ("text", "label"),
                                                                      THREE + [("e f", "other")])],
                                  ["t.csv line 8", "label 'other' is not among the labels"]),
        "classify_empty_text": (["--set", "source_data=" + csv_file(tmp_path / "e.csv", ("text", "label"),
                                                                   THREE[:3] + [("  ", "y")]), "--set", "target_data="],
                                ["e.csv line 5", "column 'text' is empty"]),
        "classify_unknown_approach": (["--set", "approaches=[lora, fulll]"], ["'fulll' is not one of", "did you mean 'full'"]),
    }[case]
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        rc = cli.main(args + expect[0])
    finally:
        os.chdir(cwd)
    err = capsys.readouterr().err
    assert rc == cli.EXIT_BAD_INPUT
    for frag in expect[1]:
        assert frag in err, (frag, err)
    assert snapshot(run.parent) == before  # no new run folder, earlier run untouched


def test_classify_runs_end_to_end_on_a_user_csv_with_three_classes(smoke_run, tmp_path):
    """06_classify on your own file: an Excel CSV (BOM) with three labels, no target domain."""
    _, run = smoke_run
    rows = [(f"{t} number {i}", label) for i in range(6) for t, label in THREE]
    path = tmp_path / "tickets.csv"
    csv_file(path, ("text", "label"), rows)
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        rc = cli.main(["run", "--params", SMOKE, "--only", "06_classify", "--name", "tickets", "--no-progress",
                       "--set", f"source_data={path}", "--set", "target_data="])
    finally:
        os.chdir(cwd)
    assert rc == 0
    c = json.loads((run.parent / "tickets" / "metrics.json").read_text())["06_classify"]
    assert c["labels"] == ["billing", "outage", "praise"] and len(c["methods"]) == 8
    assert all(r["auc"] is None and 0 <= r["accuracy"] <= 1 for r in c["methods"].values())
    assert c["shift"] is None and c["adapt_curve"] == {}
    assert set(c["conditional"]["rate_by_tag"]) == {"billing", "outage", "praise"}
    assert c["conditional"]["judge"].startswith("MiniLM") and c["findings"]
    assert (run.parent / "tickets" / "06_classify.html").is_file()


def run_in(runs_dir: Path, args: list[str]) -> int:
    """``nbft`` with its runs under ``runs_dir``, from the project root (no shared smoke run needed)."""
    old, cwd = os.environ.get("NBFT_RUNS_DIR"), os.getcwd()
    os.environ["NBFT_RUNS_DIR"] = str(runs_dir)
    os.chdir(ROOT)
    try:
        return cli.main(args)
    finally:
        os.chdir(cwd)
        if old is None:
            os.environ.pop("NBFT_RUNS_DIR", None)
        else:
            os.environ["NBFT_RUNS_DIR"] = old


def test_distill_student_with_another_tokenizer_exits_2_before_anything_runs(tmp_path, capsys):
    """Issue 14: a student whose tokenizer is not the teacher's fails preflight, naming the difference."""
    from nbft import models

    model, tok, _ = models.load("tiny-llama", device="cpu")
    tok.add_tokens(["<nbft_extra_token>"])
    folder = models.save(model, tok, tmp_path / "other_tokenizer")
    runs_dir = tmp_path / "runs"
    rc = run_in(runs_dir, ["run", "--params", SMOKE, "--no-progress", "--set", f"07_distill.student={folder}"])
    err = capsys.readouterr().err
    assert rc == cli.EXIT_BAD_INPUT
    for frag in ("07_distill.student: the tokenizer of", str(folder), "vocabulary of 49152 vs 49153 tokens"):
        assert frag in err, (frag, err)
    assert not runs_dir.exists() or not any(runs_dir.iterdir())  # nothing ran, no run folder
    rc = run_in(runs_dir, ["run", "--params", SMOKE, "--no-progress", "--set", "07_distill.methods=[imitaton]"])
    assert rc == cli.EXIT_BAD_INPUT and "did you mean 'imitation'" in capsys.readouterr().err


def test_distill_runs_alone_on_smoke_params(tmp_path):
    """07_distill without 02_sft in its run: the teacher falls back to the model (and says so), no style gap."""
    runs_dir = tmp_path / "runs"
    assert run_in(runs_dir, ["run", "--params", SMOKE, "--only", "07_distill", "--name", "alone", "--no-progress"]) == 0
    x = json.loads((runs_dir / "alone" / "metrics.json").read_text())["07_distill"]
    check_distill_metrics(x, params.resolve(SMOKE)["07_distill"])
    assert x["teacher_model"].startswith("the model itself (tiny-llama): this run has no 02_sft model")
    nb = json.loads((runs_dir / "alone" / "07_distill.ipynb").read_text())
    assert not [o for c in nb["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
    html = (runs_dir / "alone" / "07_distill.html").read_text()
    assert "data:image/png;base64" in html and export.external_urls(html) == []


def test_failure_inside_a_notebook_names_it_and_keeps_the_partial_notebook(smoke_run, tmp_path, capsys, monkeypatch):
    _, run = smoke_run
    before = snapshot(run)
    # what preflight cannot foresee: the disk fills while 01_data_prep saves its splits (tests/hooks: the kernels'
    # writes under 01's artifacts fail with ENOSPC)
    monkeypatch.setenv("PYTHONPATH", str(ROOT / "tests" / "hooks"))
    monkeypatch.setenv("NBFT_TEST_DISK_FULL", "artifacts/01_data_prep")
    monkeypatch.chdir(ROOT)
    rc = cli.main(["run", "--params", SMOKE, "--no-progress", "--name", "broken"])
    err = capsys.readouterr().err
    assert rc == cli.EXIT_FAILED
    assert "FAILED in notebook 01_data_prep.ipynb, cell" in err and "No space left on device" in err
    broken = run.parent / "broken"
    assert (broken / "01_data_prep.ipynb").is_file() and not (broken / "02_sft.ipynb").exists()
    status = json.loads((broken / "status.json").read_text())
    assert status["state"] == "failed" and status["failed_stage"] == "01_data_prep"
    assert snapshot(run) == before


def test_papermill_into_a_finished_run_fails_and_changes_no_byte_of_it(smoke_run, tmp_path):
    """Issue 29's reproduction: 01_data_prep run with plain papermill into a run whose 01 ended ok used to replace
    its artifacts and metrics while params.yaml, the executed notebook and status still described the old run."""
    _, run = smoke_run
    before = snapshot(run)
    bindir = Path(sys.executable).parent
    out = tmp_path / "out.ipynb"
    proc = subprocess.run([str(bindir / "papermill"), str(ROOT / "notebooks" / "01_data_prep.ipynb"), str(out),
                           "-p", "run_name", run.name, "-p", "model", "tiny-llama", "-p", "n_examples", "60",
                           "-k", "python3", "--cwd", str(ROOT / "notebooks")], capture_output=True, text=True,
                          timeout=300, env={**{k: v for k, v in os.environ.items() if k != "NBFT_RUNNER"},  # by hand
                                            "NBFT_RUNS_DIR": str(run.parent), "PATH": f"{bindir}:{os.environ['PATH']}"})
    assert proc.returncode != 0
    assert "01_data_prep already ended ok in that run" in proc.stderr + out.read_text()
    assert snapshot(run) == before


def test_plain_papermill_works(tmp_path):
    out = tmp_path / "out.ipynb"
    env = {**os.environ, "NBFT_RUNS_DIR": str(tmp_path / "runs")}
    bindir = str(Path(sys.executable).parent)
    proc = subprocess.run(
        [str(Path(bindir) / "papermill"), str(ROOT / "notebooks" / "02_sft.ipynb"), str(out),
         "-p", "model", "tiny-llama", "-p", "epochs", "0.5", "-p", "n_eval", "4", "-p", "max_new_tokens", "8",
         "-p", "cpt_docs", "8", "-p", "quality_size", "0", "-y", "sweep_sizes: [8]\ncompare_scopes: [lora, full]",
         "-k", "python3", "--cwd", str(ROOT / "notebooks")],
        capture_output=True, text=True, env={**env, "PATH": bindir + os.pathsep + env["PATH"]}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = (tmp_path / "runs").iterdir()
    m = json.loads((run / "metrics.json").read_text())["02_sft"]
    assert m["n_eval"] == 4 and "task_score_after" in m
    assert set(m["scope_comparison"]) == {"lora", "full"} and m["quality_comparison"] == {}
    assert "built here with 01_data_prep's default parameters" in out.read_text()
