"""Several datasets mixed by weight (issue 32, item 3): shares, caps, each record's source, the data card's
shares before and after cleaning, bad sources named by index and field, a single dataset unchanged."""
import dataclasses
import json

import pytest

from nbft import data, params, runs


def write_jsonl(path, n, tag):
    path.write_text("".join(json.dumps({"instruction": f"{tag} question number {i}?",
                                        "output": f"The {tag} answer number {i} is here."}) + "\n"
                            for i in range(n)), encoding="utf-8")
    return path


def write_csv_bom(path, n, tag):  # a spreadsheet's export: UTF-8 with a byte-order mark
    rows = "".join(f'"{tag} prompt {i}?","The {tag} completion number {i} is here."\r\n' for i in range(n))
    path.write_text("\ufeffprompt,completion\r\n" + rows, encoding="utf-8")
    return path


def mix_params(dataset, **kw):
    return params.build("01_data_prep", {"dataset": dataset, "model": "tiny-llama", **kw})


def test_two_sources_mixed_0_7_and_0_3_keep_their_shares(tmp_path):
    a, b = write_jsonl(tmp_path / "a.jsonl", 400, "alpha"), write_csv_bom(tmp_path / "b.csv", 400, "beta")
    p = mix_params([{"path": str(a), "weight": 0.7}, {"path": str(b), "weight": 0.3, "format": "prompt_completion"}])
    raw, records = data.load_records(p)
    shares = data.source_shares(records)
    assert abs(shares["a.jsonl"]["share_raw"] - 0.7) <= 0.02 and abs(shares["b.csv"]["share_raw"] - 0.3) <= 0.02
    assert len(records) == len(raw) == 400 + 171  # all of a (0.7 of 571), and 171 of b's 400: the largest exact mix
    assert {r["source"] for r in records} == {"a.jsonl", "b.csv"}
    assert all(r["messages"][0]["content"].startswith("alpha" if r["source"] == "a.jsonl" else "beta")
               for r in records)  # each record names the source it came from
    assert [r["source"] for r in records[:20]] != sorted(r["source"] for r in records[:20])  # shuffled together
    assert data.load_records(p)[1] == records  # seeded


def test_cap_limits_a_source_and_max_records_the_mix(tmp_path):
    a, b = write_jsonl(tmp_path / "a.jsonl", 300, "alpha"), write_jsonl(tmp_path / "b.jsonl", 300, "beta")
    p = mix_params([{"path": str(a), "cap": 50}, {"path": str(b)}])  # equal weights: the capped source sets the size
    shares = data.source_shares(data.load_records(p)[1])
    assert shares["a.jsonl"]["n_raw"] == 50 and shares["b.jsonl"]["n_raw"] == 50
    shares = data.source_shares(data.load_records(dataclasses.replace(p, max_records=40))[1])
    assert shares["a.jsonl"]["n_raw"] == 20 and shares["b.jsonl"]["n_raw"] == 20


def test_apportion_is_exact():
    assert data.apportion(10, [0.7, 0.3]) == [7, 3]
    assert data.apportion(7, [1, 1, 1]) == [3, 2, 2]
    assert data.mix_counts([100, 1000], [0.5, 0.5]) == [100, 100]


def test_data_card_and_metrics_show_shares_before_and_after_cleaning(tmp_path, tokenizer):
    a = write_jsonl(tmp_path / "a.jsonl", 60, "alpha")
    lines = a.read_text().splitlines()
    a.write_text("\n".join(lines + lines[:30]) + "\n")  # 30 duplicates in a: cleaning removes them
    p = mix_params([{"path": str(a), "weight": 0.5}, {"path": "demo", "weight": 0.5}], n_examples=120)
    raw, records = data.load_records(p)
    prepared = data.prepare(p, tokenizer)
    shares = data.source_shares(records, prepared.splits)
    assert shares["a.jsonl"]["n_raw"] == shares["demo"]["n_raw"] == len(raw) // 2
    assert shares["a.jsonl"]["n_clean"] < shares["a.jsonl"]["n_raw"]  # a's duplicates went
    assert shares["a.jsonl"]["share_clean"] + shares["demo"]["share_clean"] == pytest.approx(1, abs=1e-3)
    assert shares["a.jsonl"]["n_train"] == sum(r["source"] == "a.jsonl" for r in prepared.splits["train"])
    card = data.data_card(p, prepared.splits, prepared.n_removed_duplicates, prepared.removed_by_filter, shares)
    assert card["sources"]["demo"]["share_raw"] == 0.5 and "share_clean" in card["sources"]["demo"]
    section = data.metrics(len(raw), prepared.n_removed_duplicates, prepared.removed_by_filter, prepared.splits,
                           {}, shares)
    assert section["sources"] == shares and runs.vocabulary_problems("01_data_prep", section) == []
    assert any(line.startswith("Sources, share of the mix before -> after cleaning: a.jsonl 50% -> ")
               for line in data.findings(len(raw), 0, {}, prepared.splits, {}, shares))
    json.dumps(card)


def test_a_reader_error_in_a_source_names_its_file_and_line(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", 5, "alpha")
    a.write_text(a.read_text() + '{"instruction": "no output"}\n')
    p = mix_params([{"path": "demo"}, {"path": str(a)}])
    with pytest.raises(data.DataError, match=r"a\.jsonl line 6"):
        data.load_records(p)
    with pytest.raises(data.DataError, match=r"dataset\[1\].*a\.jsonl line 6"):
        data.check_inputs(p)


@pytest.mark.parametrize("dataset, match", [
    ([], r"dataset: an empty list"),
    ([{"path": "demo", "wieght": 0.5}], r"dataset\[0\]: unknown key 'wieght'; did you mean 'weight'"),
    ([{"path": "demo"}, {"path": "demo", "weight": 0}], r"dataset\[1\]\.weight: 0 must be a number > 0"),
    ([{"path": "demo"}, {"weight": 1}], r"dataset\[1\]\.path: missing"),
    ([{"path": "demo", "format": "alpacca"}], r"dataset\[0\]\.format: .*did you mean 'alpaca'"),
    ([{"path": "demo", "cap": -1}], r"dataset\[0\]\.cap"),
    (["demo"], r"dataset\[0\]: expected a mapping"),
])
def test_bad_sources_are_refused_naming_index_and_field(tmp_path, dataset, match):
    with pytest.raises(params.ParamError, match=match):
        mix_params(dataset)
    profile = tmp_path / "p.yaml"
    profile.write_text("01_data_prep:\n  dataset: " + json.dumps(dataset) + "\n")
    with pytest.raises(params.ParamError, match=match):  # nbft run resolves the profile before any notebook runs
        params.resolve(profile)


def test_run_makes_each_sources_file_path_absolute(tmp_path, monkeypatch):
    from nbft import cli

    monkeypatch.chdir(tmp_path)
    resolved = {"01_data_prep": mix_params([{"path": "a.jsonl", "weight": 0.7}, {"path": "demo", "weight": 0.3}])}
    cli._absolutize_paths(resolved)
    assert resolved["01_data_prep"].dataset == [{"path": str(tmp_path / "a.jsonl"), "weight": 0.7},
                                                {"path": "demo", "weight": 0.3}]


def test_a_single_dataset_reads_as_before(tmp_path, tokenizer):
    p = mix_params("demo", n_examples=40, max_records=30)
    raw, records = data.load_records(p)
    assert raw == data.load_raw("demo", 0, 40, "train", ["json_qa"])[:30]
    assert records == data.normalize(raw) and not any("source" in r for r in records)
    prepared = data.prepare(p, tokenizer)
    card = data.data_card(p, prepared.splits, prepared.n_removed_duplicates, prepared.removed_by_filter,
                          data.source_shares(records, prepared.splits))
    assert "sources" not in card and card["dataset"] == "demo"
    assert "sources" not in data.metrics(len(raw), 0, {}, prepared.splits, {}, data.source_shares(records))
