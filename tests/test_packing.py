"""NEFTune and packing (``TrainArgs``' ``neftune_noise_alpha``, ``packing``, ``packing_strategy``) on tiny-llama: they
reach TRL, bfd packing gives the unpacked loss exactly on every dataset form nbft trains, wrapped does not (its
examples see each other), NEFTune noises the embeddings only while training, and the combinations that would train
wrongly are refused."""
import copy
import math

import pytest
import torch

from nbft import data, params, train

from test_turns import CHAT, rendered


def test_neftune_and_packing_reach_the_trainer():
    cfg = train.sft_config(params.SFTParams(precision="fp32"), "/tmp/x", 1e-3)
    assert cfg.neftune_noise_alpha is None and not cfg.packing  # off by default
    p = params.SFTParams(precision="fp32", neftune_noise_alpha=5.0, packing=True, packing_strategy="wrapped")
    cfg = train.sft_config(p, "/tmp/x", 1e-3)
    assert (cfg.neftune_noise_alpha, cfg.packing, cfg.packing_strategy, cfg.eval_packing) == (5.0, True, "wrapped",
                                                                                              False)
    assert list(params.PACKING_STRATEGIES) == list(train.PACKING_STRATEGIES) == ["bfd", "bfd_split", "wrapped"]
    with pytest.raises(params.ParamError, match="packing_strategy"):
        params.build("02_sft", {"packing_strategy": "bfdd"})


def _losses(base, tok, records, p, mode="instruction"):
    """One trainer with ``records`` as its training and its validation set, every record in one batch: the loss and
    labelled tokens of the packed training rows, of the unpacked validation examples (``eval_packing`` off), and the
    number of training rows."""
    from trl import SFTTrainer

    with train.scratch_dir() as tmp:
        trainer = SFTTrainer(model=base, processing_class=tok,
                             args=train.sft_config(p, tmp, 1e-3, completion_only_loss=mode == "instruction"),
                             train_dataset=train.to_dataset(records, mode, tok, p.loss_turns),
                             eval_dataset=train.to_dataset(records, mode, tok, p.loss_turns))
        out = []
        for ds in (trainer.train_dataset, trainer.eval_dataset):
            batch = trainer.data_collator([ds[i] for i in range(len(ds))])
            with torch.no_grad():
                out += [float(trainer.compute_loss(trainer.model, batch)), int((batch["labels"] != -100).sum())]
        return (*out, len(trainer.train_dataset))


def _forms(tok):
    prep = data.prepare(params.DataPrepParams(model="tiny-llama", n_examples=40), tok)
    one_turn = prep.splits["train"][:8]
    chats = []
    for i in range(4):  # 3-turn chats: pre-tokenized input_ids + completion_mask (loss_turns all)
        msgs = copy.deepcopy(CHAT)
        msgs[1]["content"] += f" (question {i})"
        chats.append(rendered(msgs, tok))
    text = [{"text": r["prompt"] + r["completion"]} for r in one_turn]
    return {"instruction": (one_turn, "instruction"), "multi-turn": (chats, "instruction"),
            "continued_pretraining": (text, "continued_pretraining")}


def test_bfd_packing_gives_the_unpacked_loss_on_every_dataset_form_and_wrapped_does_not(tiny):
    """All examples in one batch: bfd packs them into fewer rows, each attending only to itself (the block-diagonal
    mask sdpa builds from the restarting position ids), so the loss over the same trained tokens is the unpacked
    one (the validation set, never packed; padding-free equals padded: test_train); wrapped packs them back to back
    with one causal mask, so an example sees the ones before it."""
    base, tok = tiny
    p = dict(model="tiny-llama", batch_size=64, precision="fp32", max_length=512, packing=True)
    for form, (records, mode) in _forms(tok).items():
        packed, n_packed, plain, n_plain, rows = _losses(base, tok, records, params.SFTParams(**p), mode)
        assert rows < len(records) and n_packed == n_plain and packed == pytest.approx(plain, rel=1e-5), form
        if form == "instruction":
            wrapped, n_wrapped, plain, n_plain, rows = _losses(base, tok, records, params.SFTParams(
                **p, packing_strategy="wrapped"), mode)
            assert rows < len(records) and n_wrapped == n_plain
            assert wrapped != pytest.approx(plain, rel=1e-5)  # random weights: context moves the loss a little


def test_a_packed_neftune_run_trains_in_fewer_steps_and_noises_only_while_training(tiny):
    """A packed run: fewer optimizer steps than examples / batch_size, finite losses, the validation set unpacked.
    NEFTune: during training the embeddings come out noised within alpha/sqrt(L*d); when it ends the hook is gone
    and the trained model gives the same logits in train and eval mode (tiny-llama has no dropout): nothing is
    noised in evaluation or generation."""
    from transformers import TrainerCallback

    base, tok = tiny
    prep = data.prepare(params.DataPrepParams(model="tiny-llama", n_examples=40), tok)
    records, validation = prep.splits["train"][:16], prep.splits["validation"][:4]
    ids = torch.tensor([tok(records[0]["prompt"], add_special_tokens=False)["input_ids"]])
    seen = []

    class Probe(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            emb = model.get_input_embeddings()
            with torch.no_grad():
                seen.append((emb.training, (emb(ids) - emb.weight[ids]).abs().max().item()))

    alpha = 5.0
    p = params.SFTParams(model="tiny-llama", batch_size=4, precision="fp32", packing=True, neftune_noise_alpha=alpha)
    r = train.sft(copy.deepcopy(base), tok, records, validation, p, learning_rate=1e-3, callbacks=[Probe()])
    losses = [h["loss"] for h in r.log_history if "loss" in h]
    assert 0 < r.steps < train.steps_for(len(records), p) and len(losses) == r.steps
    assert all(map(math.isfinite, [*losses, r.eval_loss])) and r.tokens_per_second > 0
    assert r.trainer.eval_dataset.num_rows == len(validation)  # the validation set is not packed
    d = base.config.hidden_size
    assert len(seen) == r.steps and all(training and 0 < diff <= alpha / (ids.shape[1] * d) ** 0.5
                                        for training, diff in seen)
    model = r.model
    emb = model.get_input_embeddings()
    assert not emb._forward_hooks and not hasattr(emb, "neftune_noise_alpha")
    with torch.no_grad():
        evaluated = model(ids).logits
        model.train()
        trained_mode = model(ids).logits
    assert torch.equal(evaluated, trained_mode)
    r.release()


def test_padding_free_packing_is_refused_where_it_would_not_be_exact(tiny):
    from peft import PrefixTuningConfig

    base, tok = tiny
    records = data.prepare(params.DataPrepParams(model="tiny-llama", n_examples=40), tok).splits["train"][:4]
    p = params.SFTParams(model="tiny-llama", packing=True)
    with pytest.raises(ValueError, match="use packing_strategy wrapped"):
        train.sft(copy.deepcopy(base), tok, records, [], p, learning_rate=1e-3, max_steps=1,
                  peft_config=PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    with pytest.raises(params.ParamError, match="prompt learning"):  # 03 refuses it before anything runs
        params.build("03_peft", {"packing": True, "methods": ["lora", "prefix_tuning"]})
    assert params.build("03_peft", {"packing": True, "packing_strategy": "wrapped", "methods": ["prefix_tuning"]})
    from nbft import peft as methods
    assert set(params.PROMPT_LEARNING) == {m.name for m in methods.METHODS.values() if m.family == "prompt"}
