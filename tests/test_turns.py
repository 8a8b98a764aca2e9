"""loss_turns: every assistant reply of a multi-turn record trains (``all``), or only the last (``last``); the mask
comes from the rendered template, so it is exact for the model's chat template and for alpaca."""
import copy

import pytest

from nbft import data, models, params, train

SYSTEM = "You answer in JSON when asked."
CHAT = [  # three exchanges; the second and third depend on the first
    {"role": "system", "content": SYSTEM},
    {"role": "user", "content": "Give the capital of France as JSON with key city."},
    {"role": "assistant", "content": '{"city": "Paris"}'},
    {"role": "user", "content": "Now the same for Italy."},
    {"role": "assistant", "content": '{"city": "Rome"}'},
    {"role": "user", "content": "Which of the two is further south?"},
    {"role": "assistant", "content": "Rome"},
]
REPLIES = [m["content"] for m in CHAT if m["role"] == "assistant"]
USERS = [m["content"] for m in CHAT if m["role"] == "user"]


@pytest.fixture(scope="module")
def smol():
    """The default model's tokenizer (its chat template: ChatML, no generation markers)."""
    return models.load_tokenizer(params.SFTParams().model)


def runs(example: dict) -> list[list[int]]:
    """The trained tokens of a pre-tokenized example, as runs of consecutive tokens."""
    out, cur = [], []
    for token, bit in zip(example["input_ids"], example["completion_mask"]):
        if bit:
            cur.append(token)
        elif cur:
            out.append(cur)
            cur = []
    return out + [cur] * bool(cur)


def rendered(messages, tok, template="chat"):
    return data.render(data.normalize_record({"messages": messages}, "test"), tok, template)


def written(template, tok) -> list[str]:
    """What each reply of CHAT trains under ``template``: the row's lead, the reply, its end of turn; the last one
    also EOS (TRL appends it where the end is other text)."""
    out = [data.TEMPLATES[template].lead + r + data.end_of_turn(template, tok) for r in REPLIES]
    return out[:-1] + [out[-1] if out[-1].endswith(tok.eos_token) else out[-1] + tok.eos_token]


@pytest.mark.parametrize("template", list(data.TEMPLATES))
def test_every_reply_and_its_end_of_turn_trains_nothing_else(smol, template):
    """A 3-turn chat under every row of the template table: the mask covers exactly each reply's tokens and the
    end-of-turn after it (ChatML's <|im_end|>, which is SmolLM2's EOS; alpaca, zephyr, mistral, vicuna: EOS; llama-3's
    <|eot_id|> and gemma's <end_of_turn>, plain text to this tokenizer). The whitespace the template writes after an
    end of turn is not trained: generation stops at the end of turn, so the model never produces it (and the last
    reply, trained on as before, has none)."""
    rec = rendered(CHAT, smol, template)
    ex = data.tokenize_turns(rec, smol, "all")
    assert smol.eos_token == "<|im_end|>"
    replies = written(template, smol)
    text = rec["prompt"] + rec["completion"] + ("" if rec["completion"].endswith(smol.eos_token) else smol.eos_token)
    ids, mask = ex["input_ids"], ex["completion_mask"]
    assert ids == smol(text)["input_ids"]  # the text trained on is the rendered one
    # llama-3's markers are plain text here, and BPE merges '>' '<' across an end of turn and the next header: the
    # token that finishes an earlier reply's <|eot_id|> carries the next turn's '<' (generation stops inside it)
    overhang = "<" if template == "llama-3" else ""
    expected = [w + overhang for w in replies[:-1]] + replies[-1:]
    assert [smol.decode(r) for r in runs(ex)] == expected  # exactly the three replies + end of turn
    if not overhang:
        assert runs(ex) == [smol(w, add_special_tokens=False)["input_ids"] for w in replies]  # token for token
    untrained = smol.decode([t for t, b in zip(ids, mask) if not b])
    assert all(u in untrained for u in [SYSTEM, *USERS])  # the system and user turns are all there, untrained
    after = [i + 1 for i in range(len(ids) - 1) if mask[i] and not mask[i + 1]]
    ends = [text.index(w) + len(w) for w in expected[:-1]]
    assert len(after) == 2 and all(smol.decode(ids[i:]) == text[e:] for i, e in zip(after, ends))  # the rest: untrained


@pytest.mark.parametrize("template", list(data.TEMPLATES))
def test_last_trains_only_the_last_reply(smol, template):
    ex = data.tokenize_turns(rendered(CHAT, smol, template), smol, "last")
    assert runs(ex) == [smol(written(template, smol)[-1], add_special_tokens=False)["input_ids"]]


def test_one_turn_record_trains_the_same_under_both_and_as_trl_tokenizes_it(tiny):
    """A record with one reply gives the same tokens and mask under all and last, and the same training example TRL
    builds from its prompt/completion form (the one-turn data of the rest of the project does not change)."""
    from trl import SFTTrainer

    base, tok = tiny
    one = [rendered([{"role": "user", "content": f"Say {w}."}, {"role": "assistant", "content": w}], tok, t)
           for w in ("yes", "no") for t in data.TEMPLATES]
    one.append(data.render(data.normalize_record({"messages": [
        {"role": "system", "content": "Be short."}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"}]}, "test"), tok, "alpaca"))
    assert one[-1]["prompt"] == data.ALPACA_TEMPLATE.format(instruction="Be short.\n\nHi")  # alpaca as before
    for r in one:
        assert data.tokenize_turns(r, tok, "all") == data.tokenize_turns(r, tok, "last")
    multi = rendered(CHAT, tok)
    assert isinstance(train.to_dataset(one, tokenizer=tok, loss_turns="all")[0]["prompt"], str)  # unchanged form
    examples = {}
    for name, ds in [("trl", train.to_dataset(one)),
                     ("nbft", train.to_dataset([*one, multi], tokenizer=tok, loss_turns="all"))]:
        assert ("input_ids" in ds.column_names) == (name == "nbft")
        with train.scratch_dir() as tmp:
            t = SFTTrainer(model=copy.deepcopy(base), args=train.sft_config(params.SFTParams(precision="fp32"), tmp,
                                                                            1e-3), train_dataset=ds,
                           processing_class=tok)
        examples[name] = [(r["input_ids"], r["labels"]) for r in t.train_dataset]
    assert examples["nbft"][:len(one)] == examples["trl"]
    ids, labels = examples["nbft"][-1]
    assert sum(x != -100 for x in labels) == sum(data.tokenize_turns(multi, tok, "all")["completion_mask"])


def test_a_prompt_no_template_renders_is_refused_under_all(tokenizer):
    rec = {**rendered(CHAT, tokenizer), "prompt": "User: hand-written prompt\nAssistant: "}
    with pytest.raises(data.DataError, match="loss_turns: last"):
        data.tokenize_turns(rec, tokenizer, "all")
    assert sum(data.tokenize_turns(rec, tokenizer, "last")["completion_mask"]) > 0


def test_training_on_multi_turn_chats_reaches_every_reply_only_under_all(tiny):
    """A tiny run on 3-turn chats under both settings: the labels the collator builds cover the earlier replies
    only under all (padded and padding-free batches alike), and the loss differs."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    base, tok = tiny
    recs = []
    for i in range(4):
        msgs = copy.deepcopy(CHAT)
        msgs[1]["content"] += f" (question {i})"
        msgs[4]["content"] = f'{{"city": "Rome", "n": {i}}}'
        recs.append(rendered(msgs, tok))
    earlier = sum(len(tok(m["content"], add_special_tokens=False)["input_ids"]) + 1
                  for r in recs for m in r["messages"][:-1] if m["role"] == "assistant")
    labelled, losses = {}, {}
    for turns in data.LOSS_TURNS:
        p = params.SFTParams(model="tiny-llama", batch_size=4, precision="fp32", loss_turns=turns)
        r = train.sft(copy.deepcopy(base), tok, recs, [], p, learning_rate=1e-3, max_steps=2)
        rows = [r.trainer.train_dataset[i] for i in range(len(recs))]
        counts = {free: int((DataCollatorForLanguageModeling(tok.pad_token_id, padding_free=free)(rows)["labels"]
                             != -100).sum()) for free in (False, True)}
        assert counts[False] == counts[True]
        labelled[turns], losses[turns] = counts[False], [h["loss"] for h in r.log_history if "loss" in h]
        r.release()
    assert labelled["all"] - labelled["last"] == earlier > 0
    assert len(losses["all"]) == 2 and losses["all"][0] != losses["last"][0]  # same model and batch: other tokens
