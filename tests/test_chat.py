"""The chat playground (widgets.chat) without a browser: which models it offers, where the system prompt goes, that
the sampling controls reach generation (a seeded sample repeats), that a reply streams and stops, and that the
static transcript escapes every text. tests/test_browser.py drives it in JupyterLab."""
import copy
import json
import threading
import time
from pathlib import Path


from nbft import params, runs, widgets

USER = [{"role": "user", "content": "What is 2+2?"}]


def _fake_adapter(folder: Path, peft_type="LORA", task="CAUSAL_LM", loadable=True):
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": peft_type, "task_type": task,
                                                            "base_model_name_or_path": "tiny-llama"}))
    (folder / "adapter_model.safetensors").write_bytes(b"")
    if loadable:  # as nbft's save_adapter writes it; 03's bake-off saves peft's files only
        (folder / "nbft_base.json").write_text(json.dumps({"base": "tiny-llama"}))
        (folder / "tokenizer.json").write_text("{}")


def test_the_playground_offers_the_runs_generators_and_picks_a_stage_by_its_main_model(tmp_path):
    art = tmp_path / "run" / "artifacts"
    for name in ("02_sft/adapter", "03_peft/methods/dora", "04_rlhf/dpo_policy", "04_rlhf/rl_policy"):
        _fake_adapter(art / name)
    _fake_adapter(art / "03_peft/methods/prompt_tuning", peft_type="PROMPT_TUNING")
    _fake_adapter(art / "04_rlhf/reward_model", task="SEQ_CLS")
    options, picked, notes = widgets.chat_models(tmp_path / "run", "tiny-llama", ["02_sft", "04_rlhf"])
    assert options == {"base": "tiny-llama", **{n: str(art / n) for n in (
        "02_sft/adapter", "03_peft/methods/dora", "04_rlhf/dpo_policy", "04_rlhf/rl_policy")}}  # no classifier, no
    assert picked == ["02_sft/adapter", "04_rlhf/dpo_policy"] and notes == []  # prompt learning (cannot merge)
    # 03's main model (lora) is missing: its first generator; 07 saved nothing: said, and base fills in
    _, picked, notes = widgets.chat_models(tmp_path / "run", "tiny-llama", ["07_distill", "03_peft"])
    assert picked == ["03_peft/methods/dora", "base"] and notes == ["07_distill: this run saved no model of it"]
    _, picked, notes = widgets.chat_models(tmp_path / "run", None, ["04_rlhf/reward_model", "some/folder"])
    assert picked == ["some/folder", "02_sft/adapter"] and "not a generator" in notes[0]  # a spec of its own joins
    assert widgets.chat_models(None, "tiny-llama", ["base"])[:2] == ({"base": "tiny-llama"}, ["base"])
    # an adapter saved without its tokenizer and base record (03's bake-off) does not load as a spec: said, not offered
    _fake_adapter(art / "03_peft/methods/lora", loadable=False)
    options, picked, notes = widgets.chat_models(tmp_path / "run", "tiny-llama", ["03_peft"])
    assert "03_peft/methods/lora" not in options and picked == ["base", "02_sft/adapter"]
    assert notes[0].startswith("03_peft: 03_peft/methods/lora is not a generator that loads here") and "tokenizer" in notes[0]


def test_the_system_prompt_goes_in_the_system_role_or_before_the_first_message(tokenizer):
    prompt = widgets.chat_prompt(USER, tokenizer, "Answer in French.")
    assert prompt.startswith("<|im_start|>system\nAnswer in French.<|im_end|>\n<|im_start|>user\nWhat is 2+2?")
    assert "SmolLM" in widgets.chat_prompt(USER, tokenizer)  # empty: the template's own default system prompt
    no_system = copy.copy(tokenizer)
    no_system.chat_template = ("{% for m in messages %}{% if m['role'] != 'system' %}<|im_start|>{{ m['role'] }}\n"
                               "{{ m['content'] }}<|im_end|>\n{% endif %}{% endfor %}<|im_start|>assistant\n")
    assert widgets.system_role(tokenizer) and not widgets.system_role(no_system)
    assert "no system role" in widgets.template_note(no_system)
    assert widgets.chat_prompt(USER, no_system, "Be brief.") == (
        "<|im_start|>user\nBe brief.\n\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant")
    assert "Be brief.\n\nWhat is 2+2?" in widgets.chat_prompt(USER, tokenizer, "Be brief.", "alpaca")
    # the template table's rows: gemma writes a system message into the first user turn, llama-3 has its own header
    assert not widgets.system_role(tokenizer, "gemma") and widgets.system_role(tokenizer, "llama-3")


def test_sampling_controls_reach_generation_and_a_seeded_sample_repeats(tiny):
    model, tok = tiny
    prompt = widgets.chat_prompt([{"role": "user", "content": "Hello"}], tok, "Be brief.")  # a greedy reply not blank

    def reply(**kw):
        return widgets.chat_reply(model, tok, prompt, widgets.Sampling(**{"max_new_tokens": 4, **kw}))

    greedy = reply()  # temperature 0
    sample = reply(temperature=1.0, seed=3)
    assert greedy and sample == reply(temperature=1.0, seed=3) != greedy  # the same seed: the same reply
    assert reply(temperature=1.0, seed=4) != sample
    assert reply(temperature=1.0, top_p=1e-6, seed=4) == greedy  # a nucleus of one token: the greedy reply


def test_a_reply_streams_piece_by_piece_and_stop_ends_it(tiny):
    model, tok = tiny
    prompt = widgets.chat_prompt(USER, tok)
    seen, stats = [], {}
    text = widgets.chat_reply(model, tok, prompt, widgets.Sampling(1.0, max_new_tokens=16), on_text=seen.append,
                              stats=stats)
    assert len(seen) >= 3 and all(b.startswith(a) and len(b) > len(a) for a, b in zip(seen, seen[1:]))
    assert seen[-1].strip() == text and len(text.split()) >= 3 and stats["tokens"] == 16
    stop, stats = threading.Event(), {}
    widgets.chat_reply(model, tok, prompt, widgets.Sampling(max_new_tokens=40), on_text=lambda _: stop.set(),
                       stop=stop, stats=stats)
    assert stats["tokens"] < 40


def test_the_static_transcript_escapes_every_text():
    page = widgets.chat_transcript_html(
        {"<b>model</b>": [{"role": "user", "content": "<script>alert(1)</script>"},
                          {"role": "assistant", "content": "<img src=x onerror=alert(2)>"}]},
        system="be <i>brief</i>", notes=["a & b"], caption="<u>example</u>")
    assert "<script>" not in page and "<img" not in page and "<b>model" not in page and "<i>brief" not in page
    for escaped in ("&lt;script&gt;alert(1)&lt;/script&gt;", "&lt;img src=x onerror=alert(2)&gt;",
                    "&lt;b&gt;model&lt;/b&gt;", "be &lt;i&gt;brief&lt;/i&gt;", "a &amp; b", "&lt;u&gt;example"):
        assert escaped in page


def test_the_playground_plays_its_script_then_chats_with_both_models(tmp_path, monkeypatch, tiny):
    """One display (the widget with the scripted conversation as its static copy); a message sent reaches both
    models, each answering in its own column."""
    import ipywidgets as W
    from ipywidgets.widgets.widget import _instances

    shown = []
    monkeypatch.setattr(widgets, "_display", lambda obj, **kw: shown.append(obj))
    run = runs.Run(tmp_path / "run", "02_sft")
    p = params.SFTParams(model="tiny-llama", chat_tokens=3)
    script = ("Say <b>hi</b>", "Again?")
    assert widgets.chat(run, p, ["base", "tiny-llama"], script=script, system="Be brief.",
                        sampling=widgets.Sampling(max_new_tokens=4)) is None
    (bundle,) = shown
    static = bundle["text/html"]
    assert "Say &lt;b&gt;hi&lt;/b&gt;" in static and "Again?" in static and "<b>hi</b>" not in static
    assert static.count("nbft-chat-reply") == 4 and "at most 3 tokens" in static  # two replies from each model
    box = _instances[bundle["application/vnd.jupyter.widget-view+json"]["model_id"]]
    left, right = box.children[4].children
    assert isinstance(left, W.HTML) and left.value.count("nbft-chat-reply") == 2  # the playground opens with it
    message, send, _, clear = box.children[5].children
    message.value = "<i>next</i>"
    send.click()
    t0 = time.time()
    while send.disabled and time.time() - t0 < 60:
        time.sleep(0.05)
    for pane in (left, right):
        assert pane.value.count("nbft-chat-reply") == 3 and "&lt;i&gt;next&lt;/i&gt;" in pane.value
    assert "4 tokens" in box.children[-1].value
    clear.click()
    assert "no messages yet" in left.value and "no messages yet" in right.value
