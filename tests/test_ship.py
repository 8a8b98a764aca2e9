"""nbft.ship (08_export) on the tiny model: a run's saved models by name, the merged folder, GGUF by llama.cpp's own
converter and quantizer, the round trip through llama.cpp, the served check through the openai client (the server
gone afterwards), the Modelfile and the card; ``nbft export`` / ``nbft serve``'s bad inputs, each exit 2 before
anything is written."""
import json
import socket
from pathlib import Path

import psutil
import pytest
import torch

from nbft import cli, corpora, data, evaluate, models, params, runs, ship

#: held-out records in 01_data_prep's form (the served check sends their messages before the reply)
QUESTIONS = ["What is the capital of France?", "Name a colour of the sky.", "Sort: 3, 1, 2", "Say hi."]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A run folder as the stages leave it: 02's LoRA adapter (random, non-zero: merging changes the weights), 03's
    prompt-tuning adapter (not mergeable), 04's reward model (a classifier), 07's student (a whole model), 01's test
    split."""
    from peft import LoraConfig, PromptTuningConfig, get_peft_model

    assert not ship.tools_problem(), ship.tools_problem()
    root = tmp_path_factory.mktemp("runs")
    run = root / "tiny"
    art = run / "artifacts"
    tok = models.load_tokenizer("tiny-llama")
    torch.manual_seed(0)
    base, _ = models.load_model("tiny-llama", "cpu", tokenizer=tok)
    lora = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM",
                                           init_lora_weights=False))
    models.save_adapter(lora, tok, art / "02_sft" / "adapter", "tiny-llama")
    base = lora.unload()
    pt = get_peft_model(base, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=2))
    pt.save_pretrained(art / "03_peft" / "methods" / "prompt_tuning")
    base = pt.base_model
    rm = art / "04_rlhf" / "reward_model"
    rm.mkdir(parents=True)
    (rm / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "task_type": "SEQ_CLS",
                                                        "base_model_name_or_path": "tiny-llama"}))
    (rm / "adapter_model.safetensors").write_bytes(b"")
    models.save(models.load_model("tiny-llama", "cpu", tokenizer=tok)[0], tok, art / "07_distill" / "distilled")
    records = [data.render({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": "x"}],
                            "reference": "x", "check": "contains"}, tok) for q in QUESTIONS]
    (art / "01_data_prep").mkdir(parents=True)
    (art / "01_data_prep" / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return run, records


@pytest.fixture(scope="module")
def exported(tiny_run):
    """02's adapter merged and converted to f16, q8_0 and q4_k_m."""
    run, _ = tiny_run
    source = ship.find_model(run, "02_sft")
    out = ship.new_export_dir(run / "artifacts" / "08_export", source.name)
    merged = ship.merge(source, out / "merged")
    ggufs = ship.to_gguf(merged["path"], out / "gguf", ["f16", "q8_0", "q4_k_m"], "model")
    return source, out, merged, ggufs


def test_the_runs_models_are_listed_by_name_with_what_cannot_be_exported_and_why(tiny_run):
    run, _ = tiny_run
    rows = {s.name: s for s in runs.saved_models(run)}
    assert set(rows) == {"02_sft/adapter", "03_peft/methods/prompt_tuning", "04_rlhf/reward_model",
                         "07_distill/distilled"}
    assert rows["02_sft/adapter"].exportable and rows["02_sft/adapter"].base == "tiny-llama"
    assert rows["07_distill/distilled"].exportable and rows["07_distill/distilled"].kind == "model"
    assert "prompt learning" in rows["03_peft/methods/prompt_tuning"].why
    assert "classifier" in rows["04_rlhf/reward_model"].why
    assert ship.find_model(run, "02_sft").name == "02_sft/adapter"  # a stage name: its main model
    assert ship.find_model(run, "distilled").name == "07_distill/distilled"  # the last part, when only one has it
    with pytest.raises(ship.ExportError, match="did you mean '02_sft/adapter'.*It holds: 02_sft/adapter, "
                                               "07_distill/distilled$"):
        ship.find_model(run, "02_sft/adaptr")
    with pytest.raises(ship.ExportError, match="cannot be exported: a classifier"):
        ship.find_model(run, "04_rlhf/reward_model")


def test_the_merged_folder_loads_with_plain_transformers_and_answers_as_the_adapter_does(tiny_run, exported):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run, records = tiny_run
    source, _, merged, _ = exported
    folder = merged["path"]
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
            "chat_template.jinja"} <= {f.name for f in folder.iterdir()}
    assert json.loads((folder / "config.json").read_text())["dtype"] == "bfloat16"
    plain = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(folder)
    assert tok.chat_template == models.load_tokenizer("tiny-llama").chat_template
    adapter = PeftModel.from_pretrained(models.load_model("tiny-llama", "cpu")[0], str(source.path))
    ids = tok([records[0]["prompt"]], return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        a, b = plain(**ids).logits, adapter(**ids).logits
        base = models.load_model("tiny-llama", "cpu")[0](**ids).logits
    assert (a - b).abs().max() < 0.05 < (b - base).abs().max()  # the adapter's answers (bf16 rounding), not the base's


def test_every_format_is_written_by_llamas_tools_with_the_chat_template_and_the_fallbacks_counted(exported):
    _, out, merged, ggufs = exported
    assert list(ggufs) == ["f16", "q8_0", "q4_k_m"]
    assert ggufs["q4_k_m"]["size_mb"] <= ggufs["q8_0"]["size_mb"] < ggufs["f16"]["size_mb"]
    for fmt, g in ggufs.items():
        assert g["path"] == out / "gguf" / f"model-{fmt}.gguf" and g["path"].is_file()
        meta = ship.gguf_metadata(g["path"])
        assert meta["general.architecture"] == "llama"
        assert meta["tokenizer.chat_template"] == models.load_tokenizer(str(merged["path"])).chat_template
    # the tiny model's rows are 64 wide: no tensor fits a k-quant's 256-wide blocks, llama.cpp says what it used
    assert sum(ggufs["q4_k_m"]["fallbacks"].values()) > 0 and not ggufs["q8_0"]["fallbacks"]


def test_llamas_perplexity_and_replies_match_the_merged_model_in_transformers(tiny_run, exported):
    run, records = tiny_run
    _, _, merged, ggufs = exported
    tok = models.load_tokenizer(str(merged["path"]))
    model, _ = models.load_model(str(merged["path"]), "cpu", tokenizer=tok)
    want = evaluate.perplexity(model, tok, corpora.GENERAL_TEXT, precision="fp32")
    got = ship.llama_perplexity(ggufs["f16"]["path"], tok, corpora.GENERAL_TEXT)
    assert got == pytest.approx(want, rel=0.01)
    gen = ship.llama_generate(ggufs["f16"]["path"], tok, [r["prompt"] for r in records], 8)
    ref = evaluate.generate(model, tok, [r["prompt"] for r in records], 8, 4, "fp32", cache=False)
    assert ship.identical_share(gen["outputs"], ref) >= 0.75 and gen["load_seconds"] > 0


@pytest.mark.timeout(120)
def test_the_served_gguf_answers_through_the_openai_client_and_the_server_is_gone(tiny_run, exported):
    run, records = tiny_run
    _, out, merged, ggufs = exported
    tok = models.load_tokenizer(str(merged["path"]))
    p = params.ExportParams(max_new_tokens=8)
    direct = ship.llama_generate(ggufs["q8_0"]["path"], tok, [r["prompt"] for r in records], 8)["outputs"]
    ref = {"outputs": direct}
    served = ship.served(ggufs["q8_0"], "q8_0", tok, records, ref, direct, "contains", ["contains"], p,
                         out / "server.log")
    assert served["n_replies"] == served["n_prompts"] == len(records) and all(served["outputs"])  # words, not ''
    assert served["identical_to_direct"] == 1.0  # the server applied the same chat template to the same file
    assert served["stopped"] and served["url"].startswith("http://127.0.0.1:")
    assert not [c for c in psutil.process_iter(["cmdline"]) if str(ggufs["q8_0"]["path"]) in " ".join(
        c.info["cmdline"] or [])]
    assert "POST /v1/chat/completions" in (out / "server.log").read_text()
    assert set(ship.recorded(served)) >= {"format", "n_prompts", "n_replies", "seconds", "task_score",
                                          "identical_share", "reply_metrics"}


def test_the_modelfile_writes_chatml_with_its_default_system_prompt_and_leaves_other_templates_to_ollama():
    tok = models.load_tokenizer("tiny-llama")
    text = ship.modelfile("gguf/model-q4_k_m.gguf", tok, {"eos_token_id": tok.eos_token_id}, 1024)
    assert "FROM ./gguf/model-q4_k_m.gguf" in text and 'PARAMETER stop "<|im_end|>"' in text
    assert "TEMPLATE \"\"\"{{- range .Messages }}<|im_start|>{{ .Role }}" in text
    assert 'SYSTEM """You are a helpful AI assistant named SmolLM, trained by Hugging Face"""' in text
    assert "PARAMETER temperature 0" in text and "PARAMETER num_ctx 1024" in text
    other = models.load_tokenizer("tiny-llama")
    other.chat_template = "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}"
    text = ship.modelfile("gguf/model-f16.gguf", other, {"do_sample": True, "temperature": 0.7}, 2048)
    assert "TEMPLATE" not in text.replace("# TEMPLATE", "") and "SYSTEM" not in text
    assert "PARAMETER temperature 0.7" in text


def test_the_card_says_licence_base_data_and_the_stages_figures_with_their_intervals(tiny_run, exported):
    run, _ = tiny_run
    source, out, _, _ = exported
    runs.record_metrics(run, "02_sft", {"task_score_before": 0.1, "task_score_after": 0.8, "reply_metrics": {
        "task": {"before": {"mean": 0.1, "lo": 0.0, "hi": 0.2, "n_eval": 10},
                 "after": {"mean": 0.8, "lo": 0.6, "hi": 0.9, "n_eval": 10},
                 "diff": {"mean": 0.7, "lo": 0.5, "hi": 0.9, "n_eval": 10}, "higher_is_better": True}}})
    made = ship.write_card_and_modelfile(source, out, models.load_tokenizer("tiny-llama"), run,
                                         ["q8_0: kept the task."], ["f16", "q8_0"])
    card = made["card"].read_text()
    assert card.startswith("---\nlicense: apache-2.0\nbase_model: tiny-llama\n")
    assert "- task_score_after: 0.8" in card and "task: 0.800 (95% CI 0.600-0.900)" in card
    assert "- q8_0: kept the task." in card and "## Intended use and limits" in card
    assert made["modelfile"].read_text().startswith("# Ollama") and "FROM ./gguf/model-q4_k_m.gguf" in \
        made["modelfile"].read_text()  # the smallest file


def test_an_export_never_overwrites_an_earlier_one(tmp_path):
    a, b = ship.new_export_dir(tmp_path, "02_sft/adapter"), ship.new_export_dir(tmp_path, "02_sft/adapter")
    assert a != b and a.is_dir() and b.is_dir() and a.name.startswith("02_sft-adapter-")


def test_a_failing_conversion_names_the_folder_and_shows_the_converters_log(tmp_path):
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{}")
    with pytest.raises(ship.ExportError, match=r"(?s)converter failed on .*broken.*exit [1-9]"):
        ship.convert(tmp_path / "broken", tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()


@pytest.fixture
def run_with_export(tiny_run, exported, runs_dir):
    """tiny_run under the runs folder the CLI reads (NBFT_RUNS_DIR), with its export."""
    import shutil

    run, _ = tiny_run
    shutil.copytree(run, runs_dir / "tiny", symlinks=True)
    return runs_dir / "tiny"


def _folders(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "artifacts" / "08_export").glob("*"))


@pytest.mark.parametrize("argv, said", [
    (["export", "nosuch"], "RUN nosuch: no run folder"),
    (["export", "tiny", "--stage", "05_rag_vs_ft"], "has no such saved model"),
    (["export", "tiny", "--stage", "04_rlhf", "--model", "reward_model"], "cannot be exported: a classifier"),
    (["export", "tiny", "--formats", "q9_9"], "'q9_9' is not one of f16"),
    (["export", "tiny", "--formats", "f16", "--serve-format", "q8_0"], "the served format must be one of formats"),
    (["serve", "tiny", "--format", "q6_k"], "has no such file; it has f16, q4_k_m, q8_0"),
    (["serve", "nosuch"], "RUN nosuch: no run folder"),
])
def test_bad_export_and_serve_inputs_exit_2_naming_the_problem_before_anything_is_written(run_with_export, capsys,
                                                                                          argv, said):
    before = _folders(run_with_export)
    assert cli.main(argv) == 2
    assert said in capsys.readouterr().err
    assert _folders(run_with_export) == before


def test_a_port_in_use_exits_2_for_export_and_serve(run_with_export, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        before = _folders(run_with_export)
        assert cli.main(["export", "tiny", "--port", str(port)]) == 2
        assert f"port {port} on 127.0.0.1 is in use" in capsys.readouterr().err
        assert cli.main(["serve", "tiny", "--port", str(port)]) == 2
        assert f"port {port} on 127.0.0.1 is in use" in capsys.readouterr().err
    assert _folders(run_with_export) == before


@pytest.mark.timeout(60)
def test_a_server_that_does_not_come_up_exits_2_with_its_logs_tail(run_with_export, capsys):
    junk = run_with_export / "artifacts" / "08_export" / "zz-broken" / "gguf"
    junk.mkdir(parents=True)
    (junk / "model-q8_0.gguf").write_bytes(b"not a gguf file" * 10)
    assert cli.main(["serve", "tiny", "--export", "zz-broken", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "nbft serve: error:" in err and "gguf" in err.lower()
    assert not [c for c in psutil.process_iter(["cmdline"]) if "zz-broken" in " ".join(c.info["cmdline"] or [])]


def test_a_file_is_judged_by_the_datas_own_check_or_for_free_text_by_a_reference_metric_not_contains():
    assert ship.score_metric(["json_answer", "length"], "json_answer") == "json_answer"
    assert ship.score_metric(["task", "length"], "per-record") == "task"
    assert ship.score_metric(["rouge_l", "chrf", "semantic", "contains", "length"], "contains") == "rouge_l"
    assert ship.score_metric(["chrf", "contains"], "contains") == "chrf"


def test_missing_export_tools_are_named_with_how_to_install_them_before_anything_runs(monkeypatch, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llama_cpp" else real(name, *a))
    assert "llama-cpp-python not installed: pip install -e '.[export]'" in ship.tools_problem()
    with pytest.raises(ship.ExportError, match=r"08_export: llama-cpp-python not installed.*cmake and a C\+\+ compiler"):
        ship.check_inputs(params.ExportParams())
    monkeypatch.setattr(importlib.util, "find_spec", real)
    monkeypatch.setenv("NBFT_CACHE", str(tmp_path))  # no converter unpacked in this cache
    assert "run `nbft vendor`" in ship.tools_problem()
    with pytest.raises(ship.ExportError, match="run `nbft vendor`"):
        ship.converter()
