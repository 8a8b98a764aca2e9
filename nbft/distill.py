"""Stage 07_distill: a smaller student learns from a teacher, and what it copies (style) and what it cannot (knowledge).

A lab-scale look at Gudibande et al. 2023, "The False Promise of Imitating Proprietary LLMs": models fine-tuned on a
stronger model's outputs (Alpaca, Vicuna, Koala) copy its style convincingly and close little of its knowledge gap.

- **Teacher**: this run's 02_sft merged model by default (the demo task's JSON format plus the base model's
  knowledge), or any model spec.
- **Student**: by default the model with ``student_layers`` of its blocks kept and initialised from those blocks,
  the way DistilBERT was made: the blocks that change their input most (ShortGPT's block influence, first and last
  always kept; ``student_blocks: evenly`` for evenly spaced ones) (:func:`keep_blocks` on a loaded model;
  :func:`build_student` saves it as a normal model folder); or any model spec whose tokenizer is the teacher's (the
  token-level loss compares the two next-token distributions id by id).
- **Methods** (``METHODS``, one row each; same prompts, seed and step budget; each starts from a fresh student):

  | row            | trains on                                                   | how                          |
  |----------------|-------------------------------------------------------------|------------------------------|
  | ``student_base`` | nothing: the reference point of both gaps                 | -                            |
  | ``gold_sft``   | the data's reference replies (the labelled prompts)         | ``train.finetune`` (TRL SFT) |
  | ``imitation``  | the teacher's replies to the labelled and the unlabelled    | ``train.finetune`` (TRL SFT) |
  |                | prompts, greedy or sampled (sequence-level distillation)    |                              |
  | ``distill``    | the teacher's next-token distributions on the student's own | TRL ``DistillationTrainer``  |
  |                | sampled completions of the same prompts (token level)       | (generalized JSD, ``beta``)  |

- **Evaluation** of every row and the teacher on the held-out prompts: *style* is the task score (the data's format
  check, as in 02_sft); *knowledge* is ``knowledge_score`` = the mean of answer accuracy on the held-out questions
  and the general-questions probe of 02_sft (general-text perplexity is reported beside it, not in it: another
  scale); size (parameters, MB) and speed (generated tokens per second, one batch, the same prompts, a fixed length).
- **Gap closed** (:func:`gap_closed`): ``(row - student_base) / (teacher - student_base)``, for style and knowledge
  separately; None, with the reason, where the teacher and the untrained student differ by less than
  ``THRESHOLDS['min_gap']`` (there is no gap to close).

TRL 1.16's ``DistillationTrainer`` is always on-policy: each step the student samples completions of the prompts
(``distill_temperature``), then the loss is the generalized JSD between the student's and the teacher's
distributions on those tokens (``beta`` 0: forward KL, 0.5: JSD, 1: reverse KL). It has no ``lmbda`` (mixing in
fixed completions) and no sequence-level option; imitation is that option here.
"""
from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import corpora, data, evaluate, files, models, params, scoring, tasks, train, trl_patches

#: The lines the written findings draw (recorded as ``thresholds`` in metrics.json).
THRESHOLDS = {
    "min_gap": 0.05,   # teacher minus student_base below this (style or knowledge): no gap to close, gap closed None
    "closes": 0.8,     # gap closed at or above this: "closes (most of) the gap"
    "little": 0.3,     # gap closed below this: "closes little of the gap"
    "faster": 2.0,     # student tokens/s at least this times the teacher's: "generates N x faster"
    "beats": 0.05,     # one row's gap closed above another's by more than this: "transfers more"
}


@dataclass(frozen=True)
class Method:
    name: str
    data: str       # none | gold (reference replies) | teacher_text (teacher's replies) | teacher_logits
    trainer: str    # what trains it
    note: str


METHODS = {m.name: m for m in [
    Method("student_base", "none", "-", "the student as built, no training: both gaps are measured from it"),
    Method("gold_sft", "gold", "SFTTrainer (train.finetune)", "SFT on the data's reference replies"),
    Method("imitation", "teacher_text", "SFTTrainer (train.finetune)",
           "SFT on the teacher's replies to the labelled and the unlabelled prompts (sequence-level, the Alpaca recipe)"),
    Method("distill", "teacher_logits", "DistillationTrainer (TRL)",
           "generalized JSD to the teacher's next-token distributions on the student's own sampled completions"),
]}
TRAINED = tuple(k for k, m in METHODS.items() if m.data != "none")

#: what every evaluated model records (teacher, student_base, each method)
METRIC_KEYS = ("task_score", "answer_accuracy", "general_qa", "knowledge_score", "ppl_general", "total_params", "size_mb",
               "gen_tokens_per_second")
#: what a method row records besides
ROW_KEYS = ("seconds", "steps", "style_gap_closed", "knowledge_gap_closed")

STUDENT_FILE = "student.json"


# ---------------------------------------------------------------- the student: keep K blocks

def evenly_spaced(n: int, k: int) -> list[int]:
    """``k`` of ``n`` block indices, evenly spaced, the first and the last included (``k == 1``: the first)."""
    if not 1 <= k <= n:
        raise ValueError(f"student_layers: {k} is not between 1 and the model's {n} blocks")
    if k == 1:
        return [0]
    return [round(i * (n - 1) / (k - 1)) for i in range(k)]


def keep_blocks(model, keep: list[int]):
    """Cut a loaded causal LM down to the blocks ``keep`` (ascending indices), in place; returns the model.

    The kept blocks keep their weights (embeddings, final norm and head stay as they are), each block's
    ``layer_idx`` (the KV-cache slot) is renumbered, ``config.num_hidden_layers`` and any per-layer config list
    (``layer_types``, ...) follow. Saved with ``save_pretrained`` it is a normal model folder.
    """
    stack = train.blocks(model)
    n = len(stack)
    if not keep or list(keep) != sorted(set(keep)) or keep[0] < 0 or keep[-1] >= n:
        raise ValueError(f"keep: {keep} must be ascending, distinct block indices of the model's {n} blocks")
    owner, attr = next((m, name) for m in model.modules() for name, child in m.named_children() if child is stack)
    kept = torch.nn.ModuleList([stack[i] for i in keep])
    setattr(owner, attr, kept)
    for new, block in enumerate(kept):
        for mod in block.modules():
            if isinstance(getattr(mod, "layer_idx", None), int):
                mod.layer_idx = new
    cfg = model.config.get_text_config()
    for key, value in list(vars(cfg).items()):
        if "layer" in key and isinstance(value, (list, tuple)) and len(value) == n:
            setattr(cfg, key, type(value)(value[i] for i in keep))
    cfg.num_hidden_layers = len(keep)
    return model


@torch.no_grad()
def block_influence(model, tokenizer, texts: list[str], max_length: int = 128) -> list[float]:
    """ShortGPT's block influence (Men et al. 2024): per block, 1 - the mean cosine similarity between the hidden
    state going in and coming out, over every token of ``texts``. A block that barely turns its input (low
    influence) costs the least to drop."""
    model.eval()
    with models.padding_side(tokenizer, "right"):
        enc = tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=max_length)
    hs = model(**enc.to(next(model.parameters()).device), output_hidden_states=True).hidden_states
    mask = enc["attention_mask"].bool()
    return [float(1 - torch.nn.functional.cosine_similarity(hs[i][mask].float(), hs[i + 1][mask].float(), -1).mean())
            for i in range(len(hs) - 1)]


def most_influential(influence: list[float], k: int) -> list[int]:
    """The ``k`` blocks of highest influence, ascending; the first and the last block are always in (``k >= 2``)."""
    n = len(influence)
    if not 1 <= k <= n:
        raise ValueError(f"student_layers: {k} is not between 1 and the model's {n} blocks")
    ends = [0] if k == 1 else [0, n - 1]
    rest = sorted((i for i in range(n) if i not in ends), key=lambda i: -influence[i])[:k - len(ends)]
    return sorted(ends + rest)


def build_student(spec: str, n_keep: int, folder: str | Path, tokenizer, how: str = "influence") -> dict:
    """Load ``spec``, keep ``n_keep`` of its blocks (:func:`keep_blocks`), save it to ``folder``. ``how``:
    ``influence`` keeps the blocks of highest :func:`block_influence` on the general text, ``evenly`` evenly spaced
    ones (first and last included).

    Returns {"path", "source", "source_layers", "kept", "how", "influence"} (also written to
    ``folder/student.json``)."""
    folder = Path(folder)
    model, _ = models.load_model(spec, "cpu", tokenizer=tokenizer)
    n = model.config.get_text_config().num_hidden_layers
    influence = block_influence(model, tokenizer, corpora.GENERAL_TEXT) if how == "influence" else None
    kept = most_influential(influence, n_keep) if influence is not None else evenly_spaced(n, n_keep)
    keep_blocks(model, kept)
    models.save(model, tokenizer, folder)
    models.release(model)
    info = {"path": str(folder), "source": spec, "source_layers": n, "kept": kept, "how": how,
            "influence": influence}
    files.write_json(folder / STUDENT_FILE, info)
    files.write_json(folder / models.SOURCE_FILE, {  # models.resolve reads it (no checksum pass per load)
        "spec": str(folder), "origin": f"{spec} with blocks {kept} of {n} kept (07_distill student)", "sha256": ""})
    return info


# ---------------------------------------------------------------- teacher and student specs

def teacher_spec(run, p: params.DistillParams) -> tuple[str, str]:
    """(model spec or folder, in words): ``auto`` takes this run's 02_sft model (its adapter, or the whole model) when there is one."""
    if p.teacher == "auto":
        up = run.upstream("02_sft") if run is not None else None
        saved = train.saved_model(up) if up is not None else None
        if saved is not None:
            return str(saved), f"this run's SFT model (02_sft, {saved.name})"
        return p.model, (f"the model itself ({files.relative(p.model, run.path if run else None)}): this run has no "
                         "02_sft model, so the teacher has not been "
                         "taught the task's format and the style gap may be zero")
    if p.teacher == "base":
        return p.model, f"the model itself ({files.relative(p.model, run.path if run else None)})"
    return p.teacher, f"the model {files.relative(p.teacher, run.path if run else None)}"


def make_student(run, p: params.DistillParams, tokenizer) -> dict:
    """The student: ``auto`` builds it from the model (:func:`build_student`) once into the model cache
    (``models.cached_build``: a run folder keeps no copy of it; the card records the blocks kept); else ``p.student`` as it is. Returns {"spec", "note", "layers", "kept", "source_layers"} (``kept`` and
    ``source_layers``: None for a given spec)."""
    if p.student != "auto":
        from transformers import AutoConfig

        n = AutoConfig.from_pretrained(models.resolve(p.student).path).get_text_config().num_hidden_layers
        return {"spec": p.student, "note": f"the model {files.relative(p.student, run.path if run else None)}",
                "layers": n, "kept": None, "source_layers": None}
    source = models.resolve(p.model)
    folder = models.cached_build(
        "students", f"{source.sha256 or source.path}:{p.student_layers}:{p.student_blocks}",
        lambda tmp: build_student(p.model, p.student_layers, tmp, tokenizer, p.student_blocks))
    info = {**json.loads((folder / STUDENT_FILE).read_text()), "path": str(folder)}
    chosen = "highest block influence" if p.student_blocks == "influence" else "evenly spaced"
    return {"spec": info["path"], "layers": len(info["kept"]), "kept": info["kept"],
            "source_layers": info["source_layers"], "influence": info["influence"],
            "note": f"{files.relative(p.model, run.path if run else None)} with {len(info['kept'])} of its "
                    f"{info['source_layers']} blocks kept "
                    f"({', '.join(map(str, info['kept']))}: {chosen}), initialised from them"}


def tokenizer_differences(a, b) -> list[str]:
    """How two tokenizers differ in what token-level distillation needs equal: the vocabulary (tokens and ids)
    and the special tokens. Empty when they match."""
    out = []
    va, vb = a.get_vocab(), b.get_vocab()
    if len(va) != len(vb):
        out.append(f"vocabulary of {len(va)} vs {len(vb)} tokens")
    elif va != vb:
        out.append(f"vocabulary: {sum(va.get(t) != i for t, i in vb.items())} tokens have other ids")
    for name in ("bos_token", "eos_token", "unk_token", "pad_token"):
        ta, tb = getattr(a, name, None), getattr(b, name, None)
        if ta != tb:
            out.append(f"{name} {ta!r} vs {tb!r}")
    sa, sb = set(a.all_special_tokens), set(b.all_special_tokens)
    if sa != sb:
        out.append("special tokens " + ", ".join(sorted(sa ^ sb)[:5]) + " in one only")
    return out


def check_tokenizers(teacher: str, student: str, teacher_tok=None, student_tok=None) -> None:
    """Raise ``ParamError`` naming the differences when ``student``'s tokenizer is not ``teacher``'s."""
    if teacher == student:
        return
    diffs = tokenizer_differences(teacher_tok or models.load_tokenizer(teacher),
                                  student_tok or models.load_tokenizer(student))
    if diffs:
        raise params.ParamError(
            f"07_distill.student: the tokenizer of {student} differs from the teacher's ({teacher}): "
            + "; ".join(diffs) + ". Distillation compares the two models' next-token distributions token by token, "
            "so the student must use the teacher's tokenizer (student: auto builds one from the model)")


def check_inputs(p: params.DistillParams) -> None:
    """Before any notebook runs: the teacher and student specs resolve, the auto student fits in the model, and
    the student's tokenizer and output size are the teacher's. (Method names and ranges are the parameters'
    own: ``params`` checks them first.)"""
    for key, names in (("teacher", ("auto", "base")), ("student", ("auto",))):
        value = getattr(p, key)
        if value not in names:
            try:
                models.resolve(value)
            except models.ModelError as e:
                raise params.ParamError(f"07_distill.{key}: {e}") from None
    teacher = p.model if p.teacher in ("auto", "base") else p.teacher
    student = p.model if p.student == "auto" else p.student
    from transformers import AutoConfig

    def config(spec):
        return AutoConfig.from_pretrained(models.resolve(spec).path).get_text_config()

    if p.student == "auto":
        depth = config(p.model).num_hidden_layers
        if p.student_layers > depth:
            raise params.ParamError(f"07_distill.student_layers: {p.student_layers} blocks, but {p.model} has {depth}")
    try:
        check_tokenizers(teacher, student)
    except models.ModelError as e:
        raise params.ParamError(f"07_distill: {e}") from None
    if teacher != student:
        teacher_vocab, student_vocab = config(teacher).vocab_size, config(student).vocab_size
        if teacher_vocab != student_vocab:
            raise params.ParamError(f"07_distill.student: {student} has {student_vocab} output tokens, the teacher "
                                    f"({teacher}) {teacher_vocab}; the distillation loss needs the same")


# ---------------------------------------------------------------- data

@dataclass
class DistillData:
    """Rendered records: ``train`` (labelled: prompt and reference reply), ``unlabelled`` (only their prompts are
    used), ``test`` (held out); the task check and where the data came from."""

    train: list[dict]
    unlabelled: list[dict] = field(default_factory=list)
    test: list[dict] = field(default_factory=list)
    check: str = "contains"
    source: str = ""

    @property
    def prompts(self) -> list[str]:
        """What imitation and distill train on: the labelled prompts, then the unlabelled ones."""
        return [r["prompt"] for r in self.train + self.unlabelled]


def load_data(run, p: params.DistillParams, tokenizer) -> DistillData:
    """01_data_prep's splits of this run (or the same chain with its defaults): the first ``n_train`` training
    records labelled, the next ``n_unlabelled`` as prompts, up to ``n_eval`` test records."""
    splits, source = data.for_stage(run, p, tokenizer)
    pool = splits["train"]
    labelled = pool[: p.n_train or None]
    test = splits["test"][: p.n_eval or None]
    if not labelled or not test:
        raise data.DataError(f"07_distill: {len(labelled)} training and {len(test)} test records; need both")
    return DistillData(labelled, pool[len(labelled): len(labelled) + p.n_unlabelled], test,
                       tasks.resolve_check(p.task_check, test), source)


def question_of(rec: dict) -> str:
    """The user's turn of a rendered record (the rendered prompt where there are no messages)."""
    return rec["messages"][-2]["content"] if rec.get("messages") else rec["prompt"]


def teacher_replies(teacher, tokenizer, prompts: list[str], p: params.DistillParams, precision: str) -> list[str]:
    """The teacher's replies for imitation: batched generation, greedy or sampled (``imitation_sampling``)."""
    kw = (dict(do_sample=True, seed=p.seed, temperature=p.imitation_temperature, top_p=1.0)
          if p.imitation_sampling == "sample" else {})
    return evaluate.generate(teacher, tokenizer, prompts, p.max_new_tokens, p.eval_batch_size, precision,
                             cache=False, **kw)  # timed: their cost is part of the imitation row


def imitation_records(prompts: list[str], replies: list[str], tokenizer) -> list[dict]:
    """Prompt/completion records of the teacher's replies (ending with EOS, like 01's rendered records)."""
    eos = tokenizer.eos_token or ""
    return [{"prompt": q, "completion": a + eos} for q, a in zip(prompts, replies)]


@dataclass
class ImitationData:
    """The teacher's replies to ``DistillData.prompts`` as SFT records, and what they cost and score."""

    records: list[dict]
    replies: list[str]
    seconds: float
    task_score: float       # share of replies that pass the task check (the labelled and unlabelled records')
    answer_accuracy: float  # share that contain the record's reference answer
    sampling: str


def imitation_data(teacher, tokenizer, d: DistillData, p: params.DistillParams, precision: str) -> ImitationData:
    """The teacher answers every training prompt, labelled and unlabelled (:func:`teacher_replies`); the replies
    are scored against the records' own references (what a reader of the data would see)."""
    t0 = time.perf_counter()
    replies = teacher_replies(teacher, tokenizer, d.prompts, p, precision)
    seconds = time.perf_counter() - t0
    recs = d.train + d.unlabelled
    return ImitationData(imitation_records(d.prompts, replies, tokenizer), replies, seconds,
                         tasks.score_records(replies, recs, d.check)[0],
                         tasks.answer_accuracy(replies, [r["reference"] for r in recs]), p.imitation_sampling)


def imitation_preview(d: DistillData, im: ImitationData, n: int = 6) -> list[dict]:
    """The first ``n`` training prompts with the reference reply and the teacher's reply."""
    return [{"prompt": question_of(r), "reference": r.get("reference", ""), "teacher's reply": a}
            for r, a in zip((d.train + d.unlabelled)[:n], im.replies)]


def save_imitation(im: ImitationData, path: str | Path) -> Path:
    """The imitation data as JSONL (prompt, completion), the way SFT read it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return files.write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in im.records))


# ---------------------------------------------------------------- training

def sft_student(model, tokenizer, records: list[dict], p: params.DistillParams, callbacks=()) -> train.TrainResult:
    """gold_sft and imitation: nbft's SFT path (``train.finetune``: TRL SFTTrainer, loss on the reply) with the
    stage's scope, for ``max_steps`` steps."""
    return train.finetune(model, tokenizer, records, [], p, scope=p.scope, callbacks=callbacks, max_steps=p.max_steps)


def distill_student(model, teacher, tokenizer, prompts: list[str], p: params.DistillParams,
                    callbacks=()) -> train.TrainResult:
    """distill: TRL ``DistillationTrainer`` for ``max_steps`` steps on ``prompts`` (on-policy: the student samples
    completions of up to ``max_new_tokens``, the loss is the generalized JSD with ``beta`` to the teacher)."""
    import datasets
    from trl import DistillationConfig, DistillationTrainer

    datasets.disable_progress_bars()
    model, peft_config, learning_rate = train.scoped(model, p, p.scope)
    precision = train.training_precision(p)
    # the student's sampling under one autocast block, not one per sampled token (trl_patches.sampling_in_one_block)
    Trainer = trl_patches.sampling_in_one_block(DistillationTrainer, lambda m: models.autocast(m, precision))

    with train.scratch_dir() as tmp, models.padding_side(tokenizer, "left"):
        def build():
            args = DistillationConfig(**train.trainer_args(
                p, tmp, p.gradient_checkpointing, learning_rate=learning_rate,
                max_steps=p.max_steps, per_device_train_batch_size=p.batch_size, gradient_accumulation_steps=p.grad_accum,
                beta=p.beta, temperature=p.distill_temperature, max_completion_length=p.max_new_tokens))
            return Trainer(model=model, teacher_model=teacher, args=args, processing_class=tokenizer,
                           train_dataset=datasets.Dataset.from_list([{"prompt": q} for q in prompts]),
                           peft_config=peft_config, callbacks=list(callbacks))
        result = train.fit(build)
    trl_patches.remove_autocast_wrappers(teacher)  # the trainer prepared it too; the notebook may use it after
    return result


# ---------------------------------------------------------------- evaluation

def knowledge_score(res: dict) -> float:
    """The knowledge score: the mean of answer accuracy (held-out questions) and general questions (02's probe)."""
    return (res["answer_accuracy"] + res["general_qa"]) / 2


def size(model) -> dict:
    """{"total_params": parameters (tied weights once), "size_mb": their bytes in memory, MiB}."""
    ps = list(model.parameters())
    return {"total_params": sum(x.numel() for x in ps), "size_mb": sum(x.numel() * x.element_size() for x in ps) / 2**20}


def generation_speed(model, tokenizer, prompts: list[str], max_new_tokens: int, precision: str,
                     repeats: int = 2) -> float:
    """Generated tokens per second: ``prompts`` as one batch, exactly ``max_new_tokens`` each (EOS held off), after a
    short warm-up; the best of ``repeats`` timings (a shared CPU only ever makes a run slower). The same prompts and
    length for every model, so the numbers compare."""
    return speeds({"model": model}, tokenizer, prompts, max_new_tokens, precision, repeats)["model"]


def speeds(named: dict, tokenizer, prompts: list[str], max_new_tokens: int, precision: str,
           repeats: int = 2) -> dict[str, float]:
    """``generation_speed`` of several models timed in turn, round by round (``repeats`` rounds, the best of each
    model's timings): models compared by their speeds see the same moments of a shared machine. Timed one after the
    other in separate steps, an untrained student once measured 253 generated tokens/s beside trained copies of
    itself at 313-430 (the other lane of ``nbft run --jobs 2`` was busy then), and the speed-up over the teacher
    fell to 1.9x from 2.1-3.1x (docs/measurements.md)."""
    for model in named.values():
        evaluate.generate(model, tokenizer, prompts[:1], 2, 1, precision, cache=False)
    best = {name: math.inf for name in named}
    for _ in range(repeats):  # never from the run's cache (settings.eval_cache): this is a timing
        for name, model in named.items():
            t0 = time.perf_counter()
            evaluate.generate(model, tokenizer, prompts, max_new_tokens, len(prompts), precision, cache=False,
                              min_new_tokens=max_new_tokens)
            best[name] = min(best[name], time.perf_counter() - t0)
    return {name: len(prompts) * max_new_tokens / b for name, b in best.items()}


def speed_prompts(d: DistillData, p: params.DistillParams) -> list[str]:
    """The held-out prompts every speed is measured on (``p.speed_prompts`` of them)."""
    return [r["prompt"] for r in d.test[: p.speed_prompts]]


def evaluate_student(model, tokenizer, d: DistillData, p: params.DistillParams, precision: str,
                     speed: bool = True) -> dict:
    """Everything the stage measures about one model (teacher or student): 02's ``evaluate_model`` (task score,
    answer accuracy, general questions, general-text perplexity, replies, format verdicts), the per-reply answer
    verdicts (``answer_passed``), ``knowledge_score``, size and generation speed (``speed=False``: not timed here;
    the teacher and the untrained student are timed side by side, ``speeds``)."""
    res = evaluate.evaluate_model(model, tokenizer, d.test, d.check, precision, p.max_new_tokens, p.eval_batch_size)
    res["answer_passed"] = [tasks.check_contains(o, r["reference"]) for o, r in zip(res["outputs"], d.test)]
    res["knowledge_score"] = knowledge_score(res)
    res.update(size(model))
    if speed:
        res["gen_tokens_per_second"] = generation_speed(model, tokenizer, speed_prompts(d, p), p.max_new_tokens,
                                                        precision)
    return res


def run_method(name: str, p: params.DistillParams, tokenizer, student: str, d: DistillData, precision: str,
               teacher=None, imitation: ImitationData | None = None, callbacks=(), keep: bool = False,
               save_to: str | Path | None = None) -> dict:
    """One trained row: a fresh copy of ``student`` trained by method ``name`` for ``max_steps`` steps, then
    evaluated (:func:`evaluate_student`; a LoRA student is merged first, so it is measured at its deployed speed).

    ``teacher`` (a loaded model) is what ``distill`` learns from; ``imitation``: the teacher's replies
    (:func:`imitation_data`). The row adds ``seconds`` (training; imitation also the teacher's writing of its
    data, ``data_seconds``), ``steps``, ``log_history``; ``save_to``: the trained student is saved there; with
    ``keep`` the trained model is returned too (``model``; free it with ``models.release``).
    """
    m = METHODS[name]
    model, _ = models.load_model(student, p.device, tokenizer=tokenizer)
    if m.data == "gold":
        result = sft_student(model, tokenizer, d.train, p, callbacks)
    elif m.data == "teacher_text":
        if imitation is None:
            raise ValueError("imitation: pass the teacher's replies (distill.imitation_data)")
        result = sft_student(model, tokenizer, imitation.records, p, callbacks)
    elif m.data == "teacher_logits":
        if teacher is None:
            raise ValueError("distill: pass the loaded teacher")
        result = distill_student(model, teacher, tokenizer, d.prompts, p, callbacks)
    else:
        raise ValueError(f"{name}: not a trained method ({', '.join(TRAINED)})")
    del model
    with contextlib.ExitStack() as stack:
        stack.callback(result.release)
        trained = result.model.merge_and_unload() if hasattr(result.model, "peft_config") else result.model
        data_seconds = imitation.seconds if m.data == "teacher_text" else 0.0
        row = {"method": name, "seconds": result.seconds + data_seconds, "data_seconds": data_seconds,
               "steps": result.steps,
               "log_history": [{"step": h["step"], "loss": h["loss"]} for h in result.log_history if "loss" in h],
               **evaluate_student(trained, tokenizer, d, p, precision)}
        if save_to is not None:
            models.save(trained, tokenizer, save_to, dtype=torch.bfloat16)  # bf16: half the size of fp32
        if keep:
            row["model"], result.model = trained, None
    return row


# ---------------------------------------------------------------- gaps

def gap_closed(value: float | None, base: float | None, teacher: float | None,
               min_gap: float = THRESHOLDS["min_gap"]) -> tuple[float | None, str | None]:
    """(share of the teacher-minus-student_base gap a row closed, None) or (None, why it is not defined): a gap
    smaller than ``min_gap`` (there is nothing to close), or a value missing."""
    if any(v is None or (isinstance(v, float) and math.isnan(v)) for v in (value, base, teacher)):
        return None, "not measured"
    gap = teacher - base
    if abs(gap) < min_gap:
        return None, (f"the teacher ({teacher:.2f}) and the untrained student ({base:.2f}) differ by less than "
                      f"{min_gap}: there is no gap to close")
    return (value - base) / gap, None


def add_gaps(rows: dict[str, dict], base: dict, teacher: dict) -> dict[str, str | None]:
    """Set ``style_gap_closed`` (task score) and ``knowledge_gap_closed`` (knowledge score) on every row; returns
    {"style": why undefined or None, "knowledge": ...}."""
    notes: dict[str, str | None] = {"style": None, "knowledge": None}
    for kind, key in (("style", "task_score"), ("knowledge", "knowledge_score")):
        for row in rows.values():
            row[f"{kind}_gap_closed"], why = gap_closed(row.get(key), base.get(key), teacher.get(key))
            notes[kind] = notes[kind] or why
        if not rows:
            notes[kind] = gap_closed(base.get(key), base.get(key), teacher.get(key))[1]
    return notes


def metrics_row(res: dict, method: bool = False) -> dict:
    """The recorded numbers of one model (``METRIC_KEYS``; a method row also ``ROW_KEYS``)."""
    return {k: res.get(k) for k in METRIC_KEYS + (ROW_KEYS if method else ())}


def summary_rows(teacher: dict, base: dict, rows: dict[str, dict]) -> list[dict]:
    """One table row per model, teacher first: the recorded numbers."""
    named = [("teacher", teacher), ("student_base", base), *rows.items()]
    return [{"model": name, **metrics_row(r, method=name in rows)} for name, r in named]


def reply_tables(teacher: dict, base: dict, rows: dict[str, dict], d: DistillData,
                 p: params.DistillParams) -> dict[str, dict]:
    """{model: ``scoring.table``}: the held-out replies of the teacher (the reference point) and of every trained
    row against the untrained student's, scored by ``p.eval_metrics`` (the replies ``evaluate_student`` made)."""
    arms = {"teacher": teacher["outputs"], **{name: r["outputs"] for name, r in rows.items()}}
    return scoring.tables(base["outputs"], arms, d.test, scoring.resolve(p.eval_metrics, d.check))


def metrics(teacher: dict, base: dict, rows: dict[str, dict], notes: dict, student: dict, d: DistillData,
            imitation: ImitationData | None, p: params.DistillParams, reply: dict | None = None) -> dict:
    """The stage's section of metrics.json (without ``findings`` and ``thresholds``); ``reply``: ``reply_tables``
    (``reply_metrics``)."""
    speed = teacher["gen_tokens_per_second"]
    return {"teacher": metrics_row(teacher), "student_base": metrics_row(base),
            "methods": {k: metrics_row(r, method=True) for k, r in rows.items()},
            "speedup": base["gen_tokens_per_second"] / speed if speed else None,
            "gap_notes": notes, "student_layers": student["layers"], "student_kept": student["kept"],
            "student_block_influence": student.get("influence"),
            "imitation_data": None if imitation is None else {
                "n_train": len(imitation.replies), "sampling": imitation.sampling, "seconds": imitation.seconds,
                "task_score": imitation.task_score, "answer_accuracy": imitation.answer_accuracy},
            "n_train": len(d.train), "n_unlabelled": len(d.unlabelled), "n_eval": len(d.test), "task_check": d.check,
            "scope": p.scope, "max_steps": p.max_steps, "beta": p.beta,
            "reply_metrics": {name: scoring.recorded(t) for name, t in (reply or {}).items()}}


def browser_rows(test: list[dict], results: dict[str, dict]) -> list[dict]:
    """Rows for ``widgets.compare_browser``: each held-out prompt (its question and reference answer) and, per
    model, the reply with its format verdict and answer verdict; ``pass_<model>``: both checks pass."""
    out = []
    for i, rec in enumerate(test):
        row = {"prompt": f"{question_of(rec)}\n\nreference answer: {rec['reference']}"}
        for name, res in results.items():
            fmt, ans = res["passed"][i], res["answer_passed"][i]
            row[name] = (f"{res['outputs'][i]}\n\n— format {'pass' if fmt else 'fail'} · "
                         f"answer {'right' if ans else 'wrong'}")
            row[f"pass_{name}"] = bool(fmt and ans)
        out.append(row)
    return out


# ---------------------------------------------------------------- findings

def _share(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def findings(teacher: dict, base: dict, rows: dict[str, dict], notes: dict, student: dict | None = None,
             reply: dict | None = None) -> list[str]:
    """Sentences from the numbers, set against Gudibande et al. 2023 whichever way they go (``THRESHOLDS`` say
    what "closes", "little", "faster" and "more" meant); ``reply``: ``reply_tables`` (a sentence per metric: the
    changes larger than their interval)."""
    t, out = THRESHOLDS, []
    built = (f"{len(student['kept'])} of {student['source_layers']} blocks, " if student and student.get("kept") else "")
    speedup = base["gen_tokens_per_second"] / teacher["gen_tokens_per_second"] if teacher["gen_tokens_per_second"] else 0
    out.append(f"Student ({built}{base['total_params'] / 1e6:.1f} M parameters, {base['size_mb']:.0f} MB) vs teacher "
               f"({teacher['total_params'] / 1e6:.1f} M, {teacher['size_mb']:.0f} MB): {base['gen_tokens_per_second']:.0f} vs "
               f"{teacher['gen_tokens_per_second']:.0f} generated tokens/s, {speedup:.1f}x — "
               + (f"at least {t['faster']:g}x faster." if speedup >= t["faster"] else f"short of {t['faster']:g}x."))
    out.append(f"The gaps to close: style (task score) teacher {teacher['task_score']:.2f} vs untrained student "
               f"{base['task_score']:.2f}; knowledge score teacher {teacher['knowledge_score']:.2f} vs "
               f"{base['knowledge_score']:.2f} (answer accuracy {teacher['answer_accuracy']:.2f} vs "
               f"{base['answer_accuracy']:.2f}, general questions {teacher['general_qa']:.2f} vs {base['general_qa']:.2f}); "
               f"general-text perplexity {teacher['ppl_general']:.1f} vs {base['ppl_general']:.1f}.")
    for kind in ("style", "knowledge"):
        if notes.get(kind):
            out.append(f"No {kind} gap: {notes[kind]}; its gap-closed shares are not defined in this run.")
    for name, r in rows.items():
        out.append(f"{name}: closes {_share(r['style_gap_closed'])} of the style gap and "
                   f"{_share(r['knowledge_gap_closed'])} of the knowledge gap (task score {r['task_score']:.2f}, "
                   f"knowledge score {r['knowledge_score']:.2f}, general-text perplexity {r['ppl_general']:.1f}) "
                   f"after {r['steps']} steps, {r['seconds']:.0f} s.")
    im = rows.get("imitation")
    if im:
        s, k = im["style_gap_closed"], im["knowledge_gap_closed"]
        claim = ("Gudibande et al. 2023 found that imitation copies a teacher's style but closes little of its "
                 "knowledge gap")
        if s is None or k is None:
            missing = [x for x, v in (("style", s), ("knowledge", k)) if v is None]
            out.append(f"{claim}; this run cannot test that fully: the {' and the '.join(missing)} "
                       f"gap{' is' if len(missing) == 1 else 's are'} not defined here (see above).")
        elif s >= t["closes"] and k < t["little"]:
            out.append(f"{claim}; this run agrees: imitation closed {s:.2f} of the style gap and only {k:.2f} of the "
                       "knowledge gap.")
        elif s >= t["closes"]:
            out.append(f"{claim}; this run does not fully agree: imitation closed {s:.2f} of the style gap and "
                       f"{k:.2f} of the knowledge gap (at or above {t['little']}).")
        elif k < t["little"]:
            out.append(f"{claim}; here imitation did not even copy the style ({s:.2f} of the style gap, below "
                       f"{t['closes']}) and closed {k:.2f} of the knowledge gap: too small a budget or student to "
                       "test the claim on style.")
        else:
            out.append(f"{claim}; this run goes the other way: imitation closed {k:.2f} of the knowledge gap but only "
                       f"{s:.2f} of the style gap.")
    ds = rows.get("distill")
    if im and ds:
        for kind in ("knowledge", "style"):
            a, b = ds[f"{kind}_gap_closed"], im[f"{kind}_gap_closed"]
            if a is None or b is None:
                continue
            said = (f"more {kind} than" if a - b > t["beats"] else f"less {kind} than" if b - a > t["beats"]
                    else f"about as much {kind} as")
            out.append(f"Token-level distillation transfers {said} imitation on the same prompts and budget "
                       f"({a:.2f} vs {b:.2f} of the {kind} gap).")
    if rows:
        name = min(rows, key=lambda n: rows[n]["ppl_general"])
        out.append(f"Closest to the teacher on general text: {name}, perplexity {rows[name]['ppl_general']:.1f} "
                   f"(untrained student {base['ppl_general']:.1f}, teacher {teacher['ppl_general']:.1f}; "
                   + ", ".join(f"{n} {r['ppl_general']:.1f}" for n, r in rows.items() if n != name)
                   + "). Perplexity is measured on text none of the methods trained on: it shows how much of the "
                   "teacher's whole next-token distribution a method carried over, beyond the task's replies.")
    gold = rows.get("gold_sft")
    if gold and im and gold["style_gap_closed"] is not None and im["style_gap_closed"] is not None:
        a, b = im["style_gap_closed"], gold["style_gap_closed"]
        out.append(f"The teacher's replies vs the data's references as SFT targets: style gap closed {a:.2f} vs "
                   f"{b:.2f}" + (" — imitation needs no labels and did as well or better." if a >= b - t["beats"]
                                 else " — the references taught the format better."))
    return out + scoring.sentences(reply or {}, "student_base")
