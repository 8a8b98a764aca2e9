"""Typed parameters: one dataclass per notebook, YAML profiles, validation.

A profile (``params/*.yaml``) has a ``common`` section and one section per
notebook stem::

    common:
      model: smollm2-135m-instruct
    02_sft:
      epochs: 3

The common fields (``Common``) are set in ``common`` only: a stage section that sets one is refused (a run's
params.yaml, which ``nbft run --resume`` reads, keeps one value of each for every stage).
Every notebook's ``parameters`` cell holds exactly the fields of its dataclass
(the common fields first), with the same defaults; ``tests/test_params.py``
checks that.  Validation runs before any notebook does: an unknown key fails
naming the closest valid key, a wrong type names key, expected type and value,
and both name the file and line.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import files


class ParamError(ValueError):
    """A parameter file, override or notebook parameter is invalid."""


def _f(default=dataclasses.MISSING, help: str = "", choices: tuple = (), *, min=None, max=None, gt=None, lt=None,
       min_items: int | None = None):
    """A dataclass field with help text (shown by ``nbft params``) and, optionally, its valid values:
    ``choices`` (for a list: of every item), a range (``min``/``max`` inclusive, ``gt``/``lt`` exclusive; for a
    list: of every item) and ``min_items`` (a list's shortest length). ``nbft params`` shows the range after the
    help text; ``build`` checks all of them, naming the key, the value, the rule and the closest valid name.

    In a stage dataclass that redeclares a field of one of its groups only to change the default,
    ``help``, ``choices`` and the range may be left out: :func:`params_dataclass` takes them from the group.
    """
    meta = {"help": help, "choices": tuple(choices), "min": min, "max": max, "gt": gt, "lt": lt,
            "min_items": min_items}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


def params_dataclass(cls):
    """``@dataclass``, and a redeclared field keeps what it leaves out of its group's help, choices and range
    (the way TRL's configs redeclare a ``TrainingArguments`` field to change its default)."""
    inherited = {}
    for base in reversed(cls.__mro__[1:]):
        inherited.update(getattr(base, "__dataclass_fields__", {}))
    for name in cls.__dict__.get("__annotations__", {}):
        f = cls.__dict__.get(name)
        if isinstance(f, dataclasses.Field) and name in inherited:
            base_meta = inherited[name].metadata
            f.metadata = types.MappingProxyType({**base_meta, **{k: v for k, v in f.metadata.items()
                                                                 if v not in (None, "", ())}})
    return dataclass(cls)


# ---------------------------------------------------------------- the names list parameters choose from
# Every ``choices`` of a field is one of these tables. A table owned elsewhere is a copy (params imports no other
# nbft module but the leaf ``files``): ``NAME_TABLES`` says whose, and one test (tests/test_architecture.py) checks
# every copy against its owner, and that no field's choices are a table missing here.


@dataclass(frozen=True)
class NameTable:
    """Names a parameter may take: ``owner`` ("module.TABLE", or "params" for a table owned here) holds the same
    names in the same order (``part``: some of them), plus ``extra`` names that mean "none" or "auto"."""

    owner: str
    names: tuple[str, ...]
    extra: tuple[str, ...] = ()
    part: bool = False

    @property
    def choices(self) -> tuple[str, ...]:
        return (*self.extra, *self.names)


NAME_TABLES: dict[str, NameTable] = {}


def _names(key: str, owner: str, *names: str, extra: tuple[str, ...] = (), part: bool = False) -> tuple[str, ...]:
    """Register a name table under ``key`` and return its choices (``extra`` first)."""
    NAME_TABLES[key] = NameTable(owner, tuple(names), tuple(extra), part)
    return NAME_TABLES[key].choices


DEMO_TASKS = _names("DEMO_TASKS", "tasks.TASKS", "json_qa", "sort_numbers", "uppercase", "count_items", "reverse_list",
                    "json_followup")
MIX_TASKS = _names("MIX_TASKS", "tasks.TASKS", "json_qa", "sort_numbers", "uppercase", "count_items", "reverse_list",
                   part=True)  # 02's single- vs multi-task mix: the one-turn tasks (json_followup has its own comparison)
SECOND_TASKS = _names("SECOND_TASKS", "tasks.TASKS", "sort_numbers", "uppercase", "count_items", "reverse_list",
                      part=True)
TASK_CHECKS = _names("TASK_CHECKS", "tasks.CHECKS", "json_answer", "exact", "contains", "plain", extra=("auto",))
SCOPES = _names("SCOPES", "train.SCOPES", "lora", "freeze", "full")
SFT_SCOPES = _names("SFT_SCOPES", "train.SFT_SCOPES", "lora", "freeze", "full", "qlora")
ADAPTER_OR_FULL = _names("ADAPTER_OR_FULL", "train.SCOPES", "lora", "full", part=True)
STUDENT_SCOPES = _names("STUDENT_SCOPES", "train.SCOPES", "full", "lora", "freeze", part=True)
MODES = _names("MODES", "train.MODES", "instruction", "continued_pretraining")
LOSS_TURNS = _names("LOSS_TURNS", "data.LOSS_TURNS", "all", "last")
PACKING_STRATEGIES = _names("PACKING_STRATEGIES", "train.PACKING_STRATEGIES", "bfd", "bfd_split", "wrapped")
PADDING_FREE_PACKING = _names("PADDING_FREE_PACKING", "train.PACKING_STRATEGIES", "bfd", "bfd_split", part=True)
PROMPT_LEARNING = _names("PROMPT_LEARNING", "peft.METHODS", "prompt_tuning", "prefix_tuning", "p_tuning", part=True)
FORMATS = _names("FORMATS", "data.FORMATS", "messages", "sharegpt", "alpaca", "prompt_completion", "text",
                 extra=("auto",))
TEMPLATES = _names("TEMPLATES", "data.TEMPLATES", "chat", "chatml", "alpaca", "llama-3", "zephyr", "mistral", "vicuna",
                  "gemma")
INDEXES = _names("INDEXES", "rag.INDEX_KINDS", "flat", "ivf", "hnsw")
PEFT_METHODS = _names("PEFT_METHODS", "peft.METHODS", "full", "freeze", "bitfit", "lora", "dora", "rslora", "loha",
                      "vera", "ia3", "prompt_tuning", "prefix_tuning", "p_tuning", "bottleneck_adapter", "qlora")
RLHF_METHODS = _names("RLHF_METHODS", "rlhf.METHODS", "dpo", "ipo", "kto", "orpo", "simpo", "online_dpo", "grpo",
                      "rloo")
FEEDBACK = _names("FEEDBACK", "feedback.LABELLERS", "rule", "judge", "reward_model")
JUDGE_VERDICTS = _names("JUDGE_VERDICTS", "judge.VERDICTS", "answer", "probability")
FEEDBACK_TRAINS = _names("FEEDBACK_TRAINS", "feedback.TRAINS", "methods", "comparison")
CLASSIFY_APPROACHES = _names("CLASSIFY_APPROACHES", "classify.APPROACHES", "zero_shot", "few_shot", "features_llm",
                             "features_minilm", "head_only", "top_n", "lora", "full")
CLASSIFY_TRAINED = _names("CLASSIFY_TRAINED", "classify.APPROACHES", "head_only", "top_n", "lora", "full", part=True)
DISTILL_METHODS = _names("DISTILL_METHODS", "distill.METHODS", "student_base", "gold_sft", "imitation", "distill")
EVAL_METRICS = _names("EVAL_METRICS", "scoring.METRICS", "task", "json_answer", "exact", "contains", "rouge_l", "chrf",
                      "bleu", "semantic", "length", extra=("auto",))
STAGE_NAMES = _names("STAGE_NAMES", "params.STAGES", "01_data_prep", "02_sft", "03_peft", "04_rlhf", "05_rag_vs_ft",
                     "06_classify", "07_distill", "08_export", "99_report")
EXPORT_FORMATS = _names("EXPORT_FORMATS", "ship.FORMATS", "f16", "bf16", "f32", "q8_0", "q6_k", "q5_k_m", "q4_k_m",
                        "q4_0")
SERVE_FORMATS = _names("SERVE_FORMATS", "ship.FORMATS", "f16", "bf16", "f32", "q8_0", "q6_k", "q5_k_m", "q4_k_m",
                       "q4_0", extra=("",))
TRACKERS = _names("TRACKERS", "tracking.TRACKERS", "tensorboard", "mlflow", "wandb", "trackio", extra=("none",))
# owned here: no other table holds these names
DEVICES = _names("DEVICES", "params", "auto", "cpu", "cuda")
PRECISIONS = _names("PRECISIONS", "params", "auto", "bf16", "fp32", "fp16")
EMBED_PRECISIONS = _names("EMBED_PRECISIONS", "params", "auto", "fp32", "bf16")
FEATURE_LAYER_SELECT = _names("FEATURE_LAYER_SELECT", "params", "cv", "fixed")
STUDENT_BLOCKS = _names("STUDENT_BLOCKS", "params", "influence", "evenly")
SAMPLING = _names("SAMPLING", "params", "greedy", "sample")
QUALITY_FILTERS = _names("QUALITY_FILTERS", "rating.QUALITY_FILTERS", "judge", "reward_model", extra=("none",))
MAX_NAME = 100  # run names, and so grid values: a folder name stays well under the file system's 255 bytes
MAX_INT = 2**32 - 1  # every integer parameter, unless its field says less (seeds: numpy takes up to 2^32 - 1)
MAX_EPOCHS = 1000  # passes over the data: far beyond any budget here, and a mistyped 1e308 is refused


def check_run_name(name: str, key: str = "run name") -> str:
    """A run folder name: letters, digits, '.', '_' and '-', not starting with '.', at most ``MAX_NAME``
    characters. The CLI (``--name``, ``--resume``, sweep points) and every notebook (``run_name``, through
    ``nbft.setup``) check names here, so none can point outside runs/ or hide from ``nbft list``."""
    import re

    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9._-]+", name):
        raise ParamError(f"{key} {show(name)}: use letters, digits, '.', '_' and '-' only")
    if name.startswith("."):
        raise ParamError(f"{key} {show(name)}: must not start with '.' (hidden folders are not listed)")
    if len(name) > MAX_NAME:
        raise ParamError(f"{key} '{name[:40]}...': {len(name)} characters, at most {MAX_NAME}")
    return name


def is_endpoint(spec: str) -> bool:
    """A model spec that is a URL (it has a scheme, ``x://``): an OpenAI-compatible endpoint, not a model to load."""
    return "://" in spec


def endpoint_shown(url: str) -> str:
    """``url`` as messages show it: scheme, host, port and path only (never credentials, a query or a fragment)."""
    from urllib.parse import urlsplit

    try:
        u = urlsplit(url)
        host = f"{u.hostname or ''}{f':{u.port}' if u.port else ''}"
    except ValueError:
        return "(an invalid URL)"
    return show(f"{u.scheme}://{host}{u.path}", 120)[1:-1]  # escaped and bounded, without the quotes


def check_endpoint(url: str, key: str = "judge") -> str:
    """An OpenAI-compatible endpoint URL (``http://127.0.0.1:8000/v1``): http or https, a host, no credentials, no
    query or fragment (both can carry a key: keys come from an environment variable). Returns it without a
    trailing '/'; raises ParamError naming ``key`` (and never echoing what could be a secret)."""
    from urllib.parse import urlsplit

    if any(c.isspace() for c in url):
        raise ParamError(f"{key}: an endpoint URL has no spaces")
    try:
        u = urlsplit(url)
        u.port  # noqa: B018 (raises on a port that is not a number in 0-65535)
    except ValueError as e:
        raise ParamError(f"{key}: {endpoint_shown(url)} is not a valid URL ({e})") from None
    if u.scheme not in ("http", "https"):
        raise ParamError(f"{key}: {show(u.scheme)}: an endpoint URL starts with http:// or https:// "
                         "(e.g. http://127.0.0.1:8000/v1)")
    if "@" in u.netloc:
        raise ParamError(f"{key}: the URL carries credentials (user:password@host): put the API key in an "
                         "environment variable and name it in judge_api_key_env")
    if not u.hostname:
        raise ParamError(f"{key}: {endpoint_shown(url)} has no host (e.g. http://127.0.0.1:8000/v1)")
    if u.query or u.fragment:
        raise ParamError(f"{key}: {endpoint_shown(url)}: no query string or fragment in an endpoint URL (an API key "
                         "goes in the environment variable judge_api_key_env names)")
    return url.rstrip("/")


def check_env_name(name: str, key: str = "judge_api_key_env") -> str:
    """The NAME of an environment variable ('' for none). The value is never echoed: a key pasted here by mistake
    must not reach a log."""
    if name and not (len(name) <= 100 and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name)):
        raise ParamError(f"{key}: not an environment variable name (letters, digits and _, not starting with a "
                         "digit): give the NAME of the variable that holds the key, never the key itself")
    return name


# ---------------------------------------------------------------- field groups
# Small bases the stage dataclasses compose (as TRL composes ModelConfig and SFTConfig). Field names
# stay flat for Papermill and YAML; a function that needs one group takes any parameters object
# that has it (a stage dataclass is-a group) and reads only that group's fields.

@params_dataclass
class Common:
    """Shared by every notebook (the ``common`` section of a profile)."""

    model: str = _f("smollm2-135m-instruct", "model spec: smollm2-135m-instruct, tiny-llama, a local folder or a hub id")
    seed: int = _f(0, "seed for python, numpy, torch and data shuffling", min=0, max=2**32 - 1)
    device: str = _f("auto", "auto | cpu | cuda", DEVICES)
    precision: str = _f("auto", "auto (bf16 where the hardware supports it) | bf16 | fp32 | fp16",
                        PRECISIONS)
    run_name: str = _f("", "run folder name under runs/; empty: a new timestamped run")
    report_to: list[str] = _f([], "experiment trackers every trainer logs to, and the stage's parameters and final "
                              "metrics when it ends, under runs/<run>/tracking/: tensorboard, mlflow (a local file "
                              "store), wandb (offline), trackio ([]: none; pip install -e '.[tracking]')", TRACKERS)
    num_processes: int = _f(1, "processes every training runs in, through accelerate (notebook_launcher: gloo on CPU, "
                            "NCCL on GPUs; each process trains on its share of every batch, rank 0 writes, the "
                            "notebook goes on in one process); under accelerate launch or torchrun their processes "
                            "are used instead", min=1)
    accelerate_config: str = _f("", "an accelerate config file (configs/*.yaml), read by accelerate's own parser: its "
                                "num_processes and main_process_port when num_processes is 1")
    save_steps: int = _f(25, "nbft run: trainers checkpoint into the run folder every this many optimizer steps and "
                         "at their end (the last one kept, deleted when the stage ends ok); nbft run --resume "
                         "continues from it; 0: none", min=0)


@params_dataclass
class TrainArgs:
    """The training loop: passes, batch, sequence length (``train.sft_config``)."""

    epochs: float = _f(1.0, "passes over the training data", gt=0, max=MAX_EPOCHS)
    batch_size: int = _f(8, "examples per optimizer step (per device)", min=1)
    grad_accum: int = _f(1, "gradient accumulation steps", min=1)
    max_length: int = _f(256, "truncate training sequences to this many tokens", min=8)
    loss_turns: str = _f("all", "which replies of a multi-turn record (messages, ShareGPT) the loss covers: all "
                         "(every assistant reply and its end-of-turn token, nothing of the system and user turns) "
                         "or last (only the last reply, as before: for comparison); one-turn records train the same "
                         "either way", LOSS_TURNS)
    gradient_checkpointing: bool = _f(False, "trade compute for memory (slower on CPU)")
    eval_steps: int = _f(0, "evaluate the validation loss every this many optimizer steps and at the end: a curve "
                         "beside the training loss, live in the monitor and recorded (eval_curve); only training "
                         "given a validation set evaluates (02's main run, 03's methods), the others ignore it; "
                         "0: once, at the end", min=0)
    early_stopping_patience: int = _f(0, "stop after this many evaluations (eval_steps) without a lower validation "
                                      "loss and restore the best checkpoint (transformers' EarlyStoppingCallback "
                                      "with load_best_model_at_end); needs eval_steps; 0: off", min=0)
    neftune_noise_alpha: float = _f(0.0, "NEFTune (transformers' neftune_noise_alpha), every SFT training: while "
                                    "training, uniform noise of magnitude alpha/sqrt(L*d) added to the input "
                                    "embeddings (L: the length of the row the model sees, d: the hidden size), off in "
                                    "evaluation and generation; the paper uses 5-15. A packed row is longer, so the "
                                    "same alpha adds less noise (02's default data: about 5x less under bfd, whose "
                                    "batch is one row of ~1700 tokens, than padded batches of ~60; alpha 5 on 02's main run: the same task "
                                    "score, losses and speed). 0: off "
                                    "(docs/measurements.md: NEFTune and packing)", min=0, max=1000)
    packing: bool = _f(False, "every SFT training packs its examples into rows of max_length tokens (TRL's packing, "
                       "packing_strategy); batch_size then counts rows, so an epoch has fewer, larger optimizer steps "
                       "(02's default data: 216 examples of ~54 tokens, 27 steps unpacked, 7 packed at max_length "
                       "256: at the same epochs a packed run takes a quarter of the optimizer updates, and there the "
                       "JSON format was not learned (task score 0.00 vs 1.00), bfd at 0.36x the tokens/s on CPU; 02's "
                       "data-size and clean-vs-unfiltered arms count their step budget unpacked); the validation loss "
                       "stays on whole, unpacked examples (docs/measurements.md: NEFTune and packing)")
    packing_strategy: str = _f("bfd", "with packing: bfd (best-fit decreasing: whole examples, each attending only to "
                               "itself, padding-free: exact where the model's attention keeps packed examples apart, "
                               "refused with prompt learning) | bfd_split (bfd, an example longer than max_length "
                               "split instead of truncated) | wrapped (examples back to back, cut every max_length "
                               "tokens: an example attends to the ones before it in its row and may be cut from its "
                               "prompt)", PACKING_STRATEGIES)


@params_dataclass
class ScopeArgs:
    """What trains and at which rate: one learning rate per scope (``train.apply_scope``, ``train.learning_rate_for``)."""

    learning_rate: float = _f(5e-4, "peak learning rate for lora (linear decay)", gt=0)
    freeze_learning_rate: float = _f(3e-4, "peak learning rate for freeze", gt=0)
    full_learning_rate: float = _f(2e-5, "peak learning rate for full fine-tuning", gt=0)
    freeze_top_n: int = _f(4, "freeze scope: how many top transformer blocks train (the rest stay frozen)", min=0)
    freeze_train_head: bool = _f(False, "freeze scope: also train the output head (tied to the input embedding here)")


@params_dataclass
class LoraArgs:
    """LoRA adapters (``train.lora_config``)."""

    lora_r: int = _f(16, "LoRA rank", min=1)
    lora_alpha: int = _f(32, "LoRA scaling numerator: the update is scaled by alpha over r", min=1)
    lora_dropout: float = _f(0.0, "dropout on the LoRA input (0, peft's default: a LoRA step on CPU is 1.3x faster "
                             "than at 0.05, benchmarks/lora_dropout.py)", min=0, lt=1)
    lora_target: str = _f("all-linear", "modules LoRA wraps: all-linear or a comma-separated list")


@params_dataclass
class EvalArgs:
    """Evaluation by generation on held-out items (``evaluate.generate``)."""

    max_new_tokens: int = _f(48, "generation length for evaluation", min=1)
    eval_batch_size: int = _f(64, "prompts per generation batch (on 2 CPU cores 64 generate 1.6x faster than 16)",
                              min=1)
    n_eval: int = _f(0, "score at most this many held-out items (0: all)", min=0)


@params_dataclass
class ReplyArgs:
    """Held-out replies scored against their references (``nbft.scoring``): every stage that compares replies before
    and after (02, 03, 07; 04's prompts have no references: its own judge's scores instead)."""

    eval_metrics: list[str] = _f(["auto"], "held-out replies scored against their references, each before -> after with "
                                 "a bootstrap 95% interval and a paired interval of the change: auto (the data's own "
                                 "check, else rouge_l, chrf, semantic, contains; and length) or names of "
                                 "nbft.scoring.METRICS", EVAL_METRICS, min_items=1)


#: The judge's instructions unless ``judge_rubric`` says otherwise (``judge.compare`` adds the prompt, the reference,
#: the two replies and the answer format).
JUDGE_RUBRIC = ("You are a strict, fair judge. Given a prompt, a reference answer and two replies, A and B, decide "
                "which reply better answers the prompt: correct and consistent with the reference, complete, and in "
                "the form the prompt asks for. Ignore the order in which the replies are shown and their length "
                "beyond what the prompt needs. If they are equally good or equally bad, say tie.")


@params_dataclass
class JudgeArgs:
    """A model judge of paired replies (``judge.compare``): off unless ``judge`` is set."""

    judge: str = _f("", "pairwise judge of the tuned vs the base replies (both orders asked): '' (off) | a model spec "
                    "(built-in name, local folder, hub id) | an OpenAI-compatible endpoint URL "
                    "(http://127.0.0.1:PORT/v1). Off by default: the built-in 135M model is too small to judge well")
    judge_model: str = _f("", "endpoint judge: the model name sent with each request ('': the endpoint's only model)")
    judge_rubric: str = _f(JUDGE_RUBRIC, "the judge's instructions (the prompt, reference, replies A and B and the "
                           "answer format A | B | tie are added)")
    judge_api_key_env: str = _f("OPENAI_API_KEY", "endpoint judge: the NAME of the environment variable holding the "
                                "API key (sent as a bearer token when set; the key itself is never a parameter and "
                                "never shown)")
    judge_verdict: str = _f("answer", "how a pairwise verdict is read: answer (the first A / B / tie word the judge "
                            "generates; a verdict both orders agree on counts, the rest are ties) | probability (its "
                            "next-token probabilities of A and B, averaged over both orders, which cancels a position "
                            "bias: every comparison decided, for a judge that always answers A. An endpoint must return "
                            "top_logprobs, as llama.cpp's and llama-cpp-python's servers do). 02's quality-filter ratings are "
                            "always read from the answer", JUDGE_VERDICTS)


@params_dataclass
class ChatArgs:
    """The chat playground at the end of a stage that tunes models (``widgets.chat``: 02, 03, 04, 07)."""

    chat_tokens: int = _f(24, "the chat playground's scripted example conversation, played to the two models it shows "
                          "first when the notebook runs (the report's transcript, where the playground starts): at "
                          "most this many tokens a reply, greedy; 0: none (the playground still chats in Jupyter)",
                          min=0)


# ---------------------------------------------------------------- one dataclass per notebook

@params_dataclass
class DataPrepParams(Common):
    """01_data_prep: raw data -> clean, templated, split datasets."""

    dataset: str | list[dict] = _f("demo", "'demo' (built-in), a .jsonl/.json/.csv file, or a Hugging Face dataset "
                                   "name; or a list of sources mixed by weight, e.g. [{path: a.jsonl, weight: 0.7}, "
                                   "{path: demo, weight: 0.3}] (each: path; weight > 0, default 1; format, default "
                                   "data_format; cap: at most this many records, 0: all)")
    data_format: str = _f("auto", "auto | alpaca | messages | sharegpt | prompt_completion | text",
                          FORMATS)
    hf_split: str = _f("train", "split to read when dataset is a Hugging Face dataset name")
    n_examples: int = _f(320, "size of the built-in demo dataset (before its planted duplicates and junk)", min=1)
    demo_tasks: list[str] = _f(["json_qa"], "demo tasks: one (single-task) or several (a multi-task mix): "
                               "json_qa, sort_numbers, uppercase, count_items, reverse_list, json_followup (two turns: the second "
                               "asks about the first reply)", DEMO_TASKS, min_items=1)
    max_records: int = _f(0, "keep at most this many raw records (0: all)", min=0)
    template: str = _f("chat", "chat template: chat (the model's own) | chatml | alpaca | llama-3 | zephyr | mistral | "
                       "vicuna | gemma (rows of nbft.data.TEMPLATES)", TEMPLATES)
    dedup: bool = _f(True, "drop exact duplicates (whitespace/case-insensitive)")
    check_format: bool = _f(True, "drop replies that fail their record's own task check (off-format)")
    min_tokens: int = _f(4, "drop examples whose response has fewer tokens", min=0)
    max_tokens: int = _f(384, "drop examples whose prompt+response has more tokens", min=1)
    validation_fraction: float = _f(0.1, "fraction of examples for validation", min=0, lt=1)
    test_fraction: float = _f(0.15, "fraction of examples held out for testing", gt=0, lt=1)


@params_dataclass
class SFTParams(ChatArgs, JudgeArgs, ReplyArgs, EvalArgs, LoraArgs, ScopeArgs, TrainArgs, Common):
    """02_sft: supervised fine-tuning — modes, scopes, data size and quality, and what it costs."""

    epochs: float = _f(1.0, "passes over the training split (every instruction run of the stage uses the same budget)")
    n_eval: int = _f(0, "score at most this many held-out test prompts (0: all)")
    mode: str = _f("instruction", "main run: instruction (prompt/response, loss on responses) | "
                   "continued_pretraining (raw domain text, loss on every token)", MODES)
    scope: str = _f("lora", "main run trains: lora (adapters) | freeze (top freeze_top_n blocks) | full (every weight) "
                    "| qlora (LoRA on the model in 4 bits: a CUDA GPU and bitsandbytes)", SFT_SCOPES)
    max_train_examples: int = _f(0, "train on at most this many examples (0: all)", min=0)
    compare_scopes: list[str] = _f(["lora", "freeze", "full"], "scopes trained side by side in instruction mode "
                                   "on the same data and budget ([] to skip)", SFT_SCOPES)
    sweep_sizes: list[int] = _f([16], "data-size sweep: LoRA on the first N clean examples, each for as many "
                                "optimizer steps as the main run (small sets repeat); all examples added ([] to skip)", min=1)
    quality_size: int = _f(16, "clean vs unfiltered data, this many examples each, same steps (0 to skip; at a "
                           "sweep size the sweep's clean run is reused)", min=0)
    cpt_docs: int = _f(60, "continued pretraining: documents of the built-in invented-world corpus (0 to skip)", min=0)
    cpt_scope: str = _f("full", "continued pretraining trains this scope", SCOPES)
    cpt_epochs: float = _f(2.0, "continued pretraining: passes over the domain documents", gt=0, max=MAX_EPOCHS)
    task_check: str = _f("auto", "programmatic check for the task score: auto (the data's own), json_answer, exact, contains, "
                         "plain",
                         TASK_CHECKS)
    benchmarks: list[str] = _f(["nbft_general_qa"], "lm-evaluation-harness tasks run zero-shot on the base and the "
                               "tuned model, before -> after with intervals: nbft_general_qa (bundled, offline, ~6 "
                               "CPU-seconds on the default model) or any lm-eval task, group or tag (hellaswag, "
                               "arc_easy, ...; its dataset must be in the local cache while the hub is offline) "
                               "([] to skip)")
    benchmark_limit: int = _f(0, "benchmarks: at most this many examples per task (0: all)", min=0)
    eval_steps: int = _f(7, "evaluate the validation loss every this many optimizer steps of the main run (and at "
                         "its end): its curve beside the training loss (eval_curve; an evaluation of the default "
                         "29 validation examples costs about one training step); 0: once, at the end")
    overfit_examples: int = _f(8, "overfitting and early stopping: LoRA on this many training examples for "
                               "overfit_epochs, the validation loss after every epoch, then the same run with early "
                               "stopping (0 to skip)", min=0)
    overfit_epochs: float = _f(8.0, "overfitting: passes over the overfit_examples", gt=0, max=MAX_EPOCHS)
    overfit_learning_rate: float = _f(2e-3, "overfitting: the LoRA learning rate, held constant (no decay) so the late "
                                      "epochs keep fitting the few examples (at 5e-4 with the usual linear decay the "
                                      "default model's validation loss was still falling after 10 epochs of 8 "
                                      "examples; at 2e-3 constant it was lowest at epoch 3)", gt=0)
    overfit_patience: int = _f(2, "overfitting: the early-stopping run stops after this many evaluations without a "
                               "lower validation loss and restores the best checkpoint", min=1)
    eval_templates: list[str] = _f([], "template mismatch: the base and the main run's model also reply to the held-out "
                                   "prompts rendered with each of these chat templates (rows of nbft.data.TEMPLATES) "
                                   "besides 01_data_prep's template they trained with; each template's score and its "
                                   "drop, with intervals ([] to skip)", TEMPLATES)
    turns_examples: int = _f(0, "every turn vs the last: LoRA on this many chats of the built-in two-turn task "
                             "json_followup (a JSON answer, then a follow-up about it), once with loss_turns all and "
                             "once with last, the same steps and seed; each scored on turn 1, on turn 2 with the "
                             "reference turn 1 and on turn 2 after its own turn 1, beside the base (0 to skip)", min=0)
    turns_epochs: float = _f(3.0, "every turn vs the last: passes over the turns_examples chats (the steps both arms "
                             "take)", gt=0, max=MAX_EPOCHS)
    turns_eval: int = _f(40, "every turn vs the last: held-out chats scored", min=1)
    task_mix_examples: int = _f(0, "single- vs multi-task (seed 004): LoRA on this many clean built-in examples of "
                                "json_qa alone and as many of the five-task mix, the same optimizer steps (one epoch) "
                                "and seed; the base and both tuned models scored on every task's held-out prompts "
                                "and the forgetting probe (0 to skip; else at least 5: one per task)", min=0)
    task_mix_heldout: int = _f(24, "single- vs multi-task: held-out prompts per task (none trained on)", min=1)
    # a model as the data filter (issue 33 item 3; AlpaGasus/LIMA): filtered vs the whole set, same steps
    quality_filter: str = _f("none", "filtered by a model vs the whole set: none (skip) | judge (the judge of "
                             "'judge' rates each example 1-10: a model spec or an endpoint) | reward_model (the reward "
                             "model in quality_reward_model scores each); the top quality_keep of "
                             "quality_filter_examples unfiltered examples trains against all of them",
                             QUALITY_FILTERS)
    quality_filter_examples: int = _f(0, "filtered vs whole: the whole set, this many examples drawn from the raw data "
                                      "(clean vs unfiltered's pool: duplicates, junk and off-format replies left in, "
                                      "held-out prompts out); both arms train for the steps of epochs passes over it (0: skip)",
                                      min=0)
    quality_keep: float = _f(0.5, "filtered vs whole: the share of the whole set the filter keeps (the top-rated; "
                             "ties broken by the seed)", gt=0, lt=1)
    quality_rubric: str = _f("You rate training examples for a chat assistant. Given a prompt and a reply, rate how "
                             "good the reply is as an answer to the prompt: correct, complete, and in the form the "
                             "prompt asks for. An empty, cut-off, repetitive or off-format reply is bad.",
                             "quality_filter judge: the rater's instructions (the prompt, the reply and the 1-10 "
                             "answer format are added)")
    quality_reward_model: str = _f("", "quality_filter reward_model: the reward model's folder (a sequence classifier "
                                   "with one output, such as runs/<run>/artifacts/04_rlhf/reward_model from an "
                                   "earlier run), checked before any notebook runs")


@params_dataclass
class PEFTParams(ChatArgs, ReplyArgs, EvalArgs, LoraArgs, ScopeArgs, TrainArgs, Common):
    """03_peft: every method on the same task, data, seed and budget; many adapters on one base."""

    epochs: float = _f(1.0, "upper bound on passes over the data (max_steps decides)")
    batch_size: int = _f(4)
    learning_rate: float = _f(5e-4, "learning rate, family reparam (lora, dora, rslora, qlora)")
    freeze_learning_rate: float = _f(3e-4, "learning rate, family partial (freeze)")
    full_learning_rate: float = _f(2e-5, "learning rate, family full")
    lora_r: int = _f(8, "rank for lora, dora, rslora (loha uses half)")
    lora_alpha: int = _f(16)
    max_new_tokens: int = _f(32)
    n_eval: int = _f(32, "score at most this many held-out test prompts (0: all)")
    methods: list[str] = _f(["full", "freeze", "bitfit", "lora", "dora", "rslora", "loha", "vera", "ia3",
                             "prompt_tuning", "prefix_tuning", "p_tuning", "bottleneck_adapter", "qlora"],
                            "rows of nbft.peft.METHODS to train, in table order", PEFT_METHODS, min_items=1)
    max_steps: int = _f(24, "optimizer steps per method (the shared budget)", min=1)
    max_train_examples: int = _f(0, "train on at most this many examples (0: all)", min=0)
    num_virtual_tokens: int = _f(16, "prompt, prefix and p-tuning: virtual tokens", min=1)
    adapter_bottleneck: int = _f(32, "bottleneck adapter width", min=1)
    lycoris_learning_rate: float = _f(2e-3, "learning rate, family lycoris (loha)", gt=0)
    vector_learning_rate: float = _f(1e-2, "learning rate, family vector (vera, ia3)", gt=0)
    bias_learning_rate: float = _f(5e-3, "learning rate, family bias (bitfit)", gt=0)
    prompt_learning_rate: float = _f(2e-2, "learning rate, family prompt (prompt, prefix, p-tuning)", gt=0)
    adapter_learning_rate: float = _f(1e-3, "learning rate, family adapter (bottleneck)", gt=0)
    second_task: str = _f("uppercase", "task of the second adapter for the trunk-and-branches demo",
                          SECOND_TASKS)
    n_second_task: int = _f(96, "examples of the second task (built-in demo)", min=1)
    combine_weights: list[float] = _f([0.5, 0.5], "weights of the two adapters in the weighted combination ([] to skip)")
    task_check: str = _f("auto", "programmatic check for the task score", TASK_CHECKS)


#: 04's labelling judge (``feedback: judge``): its instructions and the written rules it is given (the constitution:
#: rlhf.RULE's checks in words); ``feedback.rubric`` numbers the rules after the instructions.
LABELLER_RUBRIC = ("You are a strict, fair judge. Given a prompt and two replies, A and B, decide which reply better "
                   "follows the rules below. Ignore the order in which the replies are shown. If they are equally good "
                   "or equally bad, say tie.")
CONSTITUTION = ["Answer the question in one or two complete sentences, about 5 to 30 words, that end properly.",
                "Write plain prose: words rather than numbers or symbols, starting with a capital letter; no lists, "
                "headings, bold text or code.",
                "Do not repeat yourself.",
                "Stay on the topic of the question and mention what it asks about.",
                "When a reply is a JSON object with an \"answer\" field, judge what that field says."]


@params_dataclass
class RLHFParams(ChatArgs, JudgeArgs, EvalArgs, LoraArgs, Common):
    """04_rlhf: preferences -> reward model -> the methods (preference losses, online DPO, online RL), one row each."""

    lora_target: str = _f("q_proj,k_proj,v_proj,o_proj", "modules LoRA wraps: all-linear or a comma-separated list "
                          "(attention only: fewer adapters, faster sampling)")
    max_new_tokens: int = _f(48, "reply length for sampling, RL and evaluation")
    n_eval: int = _f(0, "judge at most this many held-out prompts (0: all)")
    policy: str = _f("auto", "starting policy: auto (this run's 02_sft merged model if there is one, else the model) "
                     "| base (the model) | a folder")
    preferences: str = _f("builtin", "'builtin' (the policy's own samples ranked by the rule, plus template pairs) "
                          "or a JSONL file of prompt/chosen/rejected")
    heldout_fraction: float = _f(0.25, "built-in prompts: share of topics held out for evaluation", gt=0, lt=1)
    max_train_examples: int = _f(0, "use at most this many training prompts for pairs and RL (0: all)", min=0)
    samples_per_prompt: int = _f(4, "sampled replies per prompt when building pairs", min=2)
    pair_margin: float = _f(0.15, "keep a pair only if the rule scores chosen this much above rejected", min=0)
    pairs_per_prompt: int = _f(2, "at most this many sampled pairs per prompt (widest score gaps first)", min=1)
    template_pairs: int = _f(1, "per prompt, pair the best sample against this many template-broken copies (0: none)", min=0)
    temperature: float = _f(1.0, "sampling temperature (pair building and RL)", gt=0)
    max_length: int = _f(192, "truncate prompt+reply to this many tokens in reward-model and DPO training", min=8)
    rm_scope: str = _f("lora", "reward model trains: lora (adapters + head) | full", ADAPTER_OR_FULL)
    rm_learning_rate: float = _f(5e-4, "reward model learning rate", gt=0)
    rm_epochs: float = _f(1.0, "reward model passes over the training pairs", gt=0, max=MAX_EPOCHS)
    rm_batch_size: int = _f(8, "pairs per reward-model step", min=1)
    policy_scope: str = _f("lora", "every method trains: lora (reference: the adapter switched off) | full (reference: "
                           "a reloaded copy)", ADAPTER_OR_FULL)
    methods: list[str] = _f(["grpo", "dpo"], "rows of nbft.rlhf.METHODS to train, each from the starting policy, run "
                            "in table order: " + ", ".join(RLHF_METHODS) + " (offline: the pairs; online_dpo: its own "
                            "samples; grpo/rloo: RL against the reward model, standing in for PPO: TRL 1.16 has none)",
                            RLHF_METHODS, min_items=1)
    rl_steps: int = _f(12, "optimizer steps of every RL and online row (grpo, rloo, online_dpo)", min=1)
    rl_prompts_per_step: int = _f(4, "prompts per step of every RL and online row", min=1)
    num_generations: int = _f(4, "sampled replies per prompt per RL step (the group)", min=2)
    rl_learning_rate: float = _f(2e-4, "RL learning rate", gt=0)
    kl_beta: float = _f(0.05, "KL penalty weight to the reference policy", min=0)
    rule_reward_weight: float = _f(0.0, "add the rule as a second RL reward with this weight (0: the judge stays unseen)", min=0)
    dpo_learning_rate: float = _f(2e-4, "learning rate of dpo, ipo and kto", gt=0)
    dpo_beta: float = _f(0.1, "beta of dpo, ipo, kto and online_dpo (strength of the implicit KL to the reference)", gt=0)
    dpo_epochs: float = _f(1.0, "passes over the training pairs, every offline row (dpo, ipo, kto, orpo, simpo): one "
                           "budget", gt=0, max=MAX_EPOCHS)
    dpo_batch_size: int = _f(8, "pairs per step, every offline row", min=1)
    orpo_learning_rate: float = _f(2e-4, "orpo's learning rate (the ORPO paper: 8e-6 for full fine-tuning; LoRA "
                                   "adapters take more)", gt=0)
    orpo_beta: float = _f(0.1, "orpo's lambda: weight of the odds-ratio term beside the SFT loss on the chosen reply",
                          gt=0)
    simpo_learning_rate: float = _f(2e-4, "simpo's learning rate", gt=0)
    simpo_beta: float = _f(2.0, "simpo's beta: scale of the length-normalized log-probability margin", gt=0)
    simpo_gamma: float = _f(0.5, "simpo's target reward margin gamma (the loss uses gamma / beta)", min=0)
    online_dpo_learning_rate: float = _f(2e-4, "online_dpo's learning rate (beta: dpo_beta; budget: rl_steps x "
                                         "rl_prompts_per_step prompts, two sampled replies each)", gt=0)
    # ---- a model as the labeller of the preference pairs (RLAIF: nbft.feedback)
    feedback: str = _f("rule", "who labels the preference pairs every method trains on: rule (the programmatic rubric) "
                       "| judge (the model or endpoint `judge` names, asked which of two sampled replies better follows "
                       "the constitution, both orders) | reward_model (feedback_reward_model scores each reply). The "
                       "built-in 135M model is too small to be a good judge: 04 measures its agreement with the rule",
                       FEEDBACK)
    feedback_trains: str = _f("methods", "what a model labeller's pairs train: methods (the reward model, every row and "
                              "online_dpo's reward: RLAIF) | comparison (only 'What training on each gives', the first "
                              "offline row on the labeller's pairs vs the rule's; the rest trains on the rule's, so a "
                              "weak labeller does not blur the method table)", FEEDBACK_TRAINS)
    constitution: list[str] = _f(CONSTITUTION, "feedback: judge: the written rules the labelling judge is given, "
                                 "numbered after judge_rubric (default: rlhf.RULE's checks in words)")
    feedback_reward_model: str = _f("", "feedback: reward_model: a trained reward-model folder (e.g. a previous run's "
                                    "runs/<run>/artifacts/04_rlhf/reward_model)")
    judge: str = _f("", "feedback: judge: the labeller, a model spec (built-in name, local folder, hub id) or an "
                    "OpenAI-compatible endpoint URL (http://127.0.0.1:PORT/v1); '' with any other feedback")
    judge_rubric: str = _f(LABELLER_RUBRIC, "feedback: judge: the labelling judge's instructions (the constitution's "
                           "rules, the prompt, replies A and B and the answer format A | B | tie are added)")


@params_dataclass
class RAGParams(EvalArgs, LoraArgs, ScopeArgs, TrainArgs, Common):
    """05_rag_vs_ft: injecting facts no model can know — retrieval vs fine-tuning vs both."""

    epochs: float = _f(3.0, "passes over the documents (and paraphrases) when fine-tuning")
    batch_size: int = _f(8, "sequences per optimizer step")
    full_learning_rate: float = _f(5e-5)
    max_new_tokens: int = _f(32, "answer length for open questions (the reader often restates the passage first)")
    n_eval: int = _f(100, "ask at most this many questions, spread over fact types (0: all)")
    knowledge_base: str = _f("builtin", "'builtin' (a generated invented world) or your documents: a folder of .txt/.md "
                        "files or a .jsonl of {title, text}")
    questions: str = _f("", "with your documents: a .jsonl of {question, answer, options, doc_id} (builtin: generated)")
    chunk_words: int = _f(48, "retrieval: words per chunk (chunks end at sentence boundaries where they can)", min=1)
    overlap_words: int = _f(8, "retrieval: words shared by neighbouring chunks", min=0)
    embed_precision: str = _f("auto", "query embedder precision: auto (bf16 where the CPU supports it: ~5 instead of "
                              "~9 ms per query) | fp32 | bf16; documents are always embedded in fp32",
                              EMBED_PRECISIONS)
    index: str = _f("hnsw", "faiss index the RAG methods use: flat (exact) | ivf | hnsw", INDEXES)
    compare_indexes: list[str] = _f(["flat", "ivf", "hnsw"], "index types measured side by side (recall, latency)", INDEXES)
    top_k: int = _f(1, "passages put in the prompt", min=1)
    recall_ks: list[int] = _f([1, 3, 5], "k values for recall@k of the gold chunk", min=1)
    few_shot: int = _f(4, "in-context examples for few_shot (general knowledge: they teach the answer format only)", min=0)
    scope: str = _f("full", "fine-tuning on the documents trains: lora | freeze | full", SCOPES)
    paraphrases: int = _f(4, "ft_paraphrase: K paraphrases of every fact added to the documents", min=1)
    paraphrase_sweep: list[int] = _f([], "more K values for the paraphrase curve (0 and paraphrases are always in it)", min=0)


@params_dataclass
class ClassifyParams(EvalArgs, LoraArgs, ScopeArgs, TrainArgs, Common):
    """06_classify: the language model as a classifier — in-context, feature-based, head only, partial, LoRA and
    full fine-tuning — across a domain shift; then conditional pretraining steered by the classifier's tags."""

    epochs: float = _f(2.0, "passes over the source training set (every trained approach: same data and budget)")
    batch_size: int = _f(16)
    max_length: int = _f(96, "truncate messages to this many tokens")
    learning_rate: float = _f(5e-4, "learning rate of the lora approach (adapters and head)")
    freeze_learning_rate: float = _f(2e-4, "learning rate of the top_n approach (top freeze_top_n blocks and head)")
    full_learning_rate: float = _f(3e-5, "learning rate of the full approach")
    freeze_top_n: int = _f(2, "top_n approach: how many top transformer blocks train with the head")
    freeze_train_head: bool = _f(False, "not used here: every trained approach trains its classification head")
    head_learning_rate: float = _f(2e-3, "learning rate of the head_only approach (the head alone)", gt=0)
    max_new_tokens: int = _f(48, "conditional pretraining: tokens generated per sample")
    n_eval: int = _f(0, "score at most this many test messages per domain (0: all)")
    source_data: str = _f("builtin", "'builtin' (generated e-mails, spam vs ham) or your labelled data: a .csv/.jsonl/.json "
                      "file or a Hugging Face dataset name, with text and label columns")
    target_data: str = _f("builtin", "the shifted domain: 'builtin' (generated social posts; with builtin source_data), "
                          "a labelled file or dataset name like source_data, or '' (no domain shift)")
    text_column: str = _f("text", "column (field) with the text, in source_data and target_data")
    label_column: str = _f("label", "column (field) with the label, in source_data and target_data")
    hf_split: str = _f("train", "split to read when source_data or target_data is a Hugging Face dataset name")
    n_train: int = _f(128, "builtin: source-domain training messages", min=2)
    n_test: int = _f(96, "builtin: test messages per domain", min=2)
    test_fraction: float = _f(0.25, "your data: share of each file held out for testing (stratified by label)", gt=0, lt=1)
    approaches: list[str] = _f(list(CLASSIFY_APPROACHES), "rows of nbft.classify.APPROACHES to run, in table order: "
                               + ", ".join(CLASSIFY_APPROACHES), CLASSIFY_APPROACHES, min_items=1)
    label_words: list[str] = _f([], "words the prompting rows score, one per label in sorted label order "
                                "([]: the labels; builtin: normal, spam)")
    few_shot_k: int = _f(4, "few_shot: examples in the prompt, balanced over labels", min=1)
    feature_layer_select: str = _f("cv", "features_llm: cv (the hidden layer and the logistic regression's strength "
                                   "chosen by 5-fold cross-validation on the training set; one forward pass gives "
                                   "every layer) | fixed (feature_layer)", FEATURE_LAYER_SELECT)
    feature_layer: int = _f(-6, "features_llm with feature_layer_select fixed: hidden layer to mean-pool (negative: "
                            "from the top; 0: embeddings)")
    adapt_approach: str = _f("lora", "domain adaptation reuses this trained approach", CLASSIFY_TRAINED)
    adapt_sizes: list[int] = _f([0, 32], "domain adaptation: target examples N (from the source-trained model vs "
                                "from the base, same N and steps)", min=0)
    adapt_steps: int = _f(6, "domain adaptation: optimizer steps per arm (small N repeats)", min=1)
    cpt_texts: int = _f(96, "conditional pretraining: unlabelled target texts tagged by the most accurate classifier on the target domain (0 to skip)", min=0)
    cpt_epochs: float = _f(4.0, "conditional pretraining: passes over the tagged texts (every weight trains)", gt=0, max=MAX_EPOCHS)
    cpt_learning_rate: float = _f(3e-4, "conditional pretraining: learning rate", gt=0)
    n_generate: int = _f(32, "conditional pretraining: samples generated per tag (and untagged)", min=1)
    positive_label: str = _f("spam", "conditional pretraining and ROC-AUC: the label whose rate is measured "
                             "(not among the labels: the last label in sorted order)")


@params_dataclass
class DistillParams(ChatArgs, ReplyArgs, EvalArgs, LoraArgs, ScopeArgs, TrainArgs, Common):
    """07_distill: a smaller student learns from a teacher — by SFT on references, by imitating the teacher's
    replies, by matching its token distributions — and what each copies (style) and what it cannot (knowledge)."""

    epochs: float = _f(1.0, "not used here: max_steps is every trained row's budget")
    batch_size: int = _f(8, "prompts per optimizer step (every trained row)")
    learning_rate: float = _f(5e-4, "student learning rate with scope lora")
    full_learning_rate: float = _f(1e-4, "student learning rate with scope full (a student cut from a deeper model "
                                   "needs more than a light fine-tune's 2e-5 to heal)")
    freeze_top_n: int = _f(2, "scope freeze: how many top blocks of the student train")
    max_new_tokens: int = _f(48, "tokens per reply: evaluation, the teacher's imitation replies, the student's "
                             "on-policy completions (distill) and the speed measurement")
    n_eval: int = _f(32, "score at most this many held-out test prompts (0: all)")
    teacher: str = _f("auto", "auto (this run's 02_sft merged model if there is one, else the model) | base (the "
                      "model) | a model spec: a folder, a built-in name or a hub id")
    student: str = _f("auto", "auto (the model with student_layers of its blocks kept, chosen by student_blocks and "
                      "initialised from them, DistilBERT style) | a model spec whose tokenizer is the teacher's")
    student_layers: int = _f(10, "auto student: blocks kept (SmolLM2-135M has 30)", min=1)
    student_blocks: str = _f("influence", "auto student: which blocks: influence (those that change their input "
                             "most on general text, ShortGPT's block influence; first and last always) | evenly "
                             "(evenly spaced, first and last included)", STUDENT_BLOCKS)
    scope: str = _f("full", "what trains in the student: full (every weight) | lora (adapters) | freeze (top "
                    "freeze_top_n blocks)", STUDENT_SCOPES)
    methods: list[str] = _f(list(DISTILL_METHODS), "rows of nbft.distill.METHODS, in table order: "
                            + ", ".join(DISTILL_METHODS) + " (student_base always runs: both gaps are measured from it)", DISTILL_METHODS, min_items=1)
    n_train: int = _f(32, "labelled training prompts (with their reference replies) from the train split (0: all)", min=0)
    n_unlabelled: int = _f(32, "imitation and distill: extra training prompts without replies (the next ones of the "
                           "train split)", min=0)
    max_steps: int = _f(16, "optimizer steps of every trained row (the shared budget)", min=1)
    imitation_sampling: str = _f("greedy", "imitation: the teacher's replies are greedy | sample",
                                 SAMPLING)
    imitation_temperature: float = _f(0.7, "imitation with imitation_sampling sample: sampling temperature", gt=0)
    beta: float = _f(0.5, "distill: generalized JSD between student and teacher, 0 forward KL(teacher||student), "
                     "0.5 JSD, 1 reverse KL", min=0, max=1)
    distill_temperature: float = _f(1.0, "distill: temperature of the student's sampled completions and of both "
                                    "distributions in the loss (TRL uses one value for both)", gt=0)
    speed_prompts: int = _f(16, "speed: held-out prompts generated as one batch, max_new_tokens each (forced), best of "
                              "two timings", min=1)
    task_check: str = _f("auto", "programmatic check for the task (style) score: auto (the data's own), json_answer, "
                         "exact, contains, plain", TASK_CHECKS)


@params_dataclass
class ExportParams(ReplyArgs, EvalArgs, Common):
    """08_export: a model the run saved, taken out — merged weights, GGUF, an Ollama Modelfile, a model card — and
    checked where it will run (llama.cpp in the notebook and behind its OpenAI-compatible server)."""

    export_model: str = _f("02_sft", "the saved model to export: a stage name for its main model (02_sft: the main "
                           "run; 03_peft: lora; 04_rlhf: the first offline method's policy; 07_distill: the student) or a name the "
                           "notebook lists (03_peft/methods/dora, 04_rlhf/grpo_policy, ...)")
    formats: list[str] = _f(["f16", "q8_0", "q4_k_m"], "GGUF files to write with llama.cpp's converter (f16, bf16, "
                            "f32) and quantizer (the rest, from the f16 file); []: the merged weights only",
                            EXPORT_FORMATS)
    serve_format: str = _f("q8_0", "the format served over llama.cpp's OpenAI-compatible server on 127.0.0.1 and "
                           "asked the held-out prompts with the openai client ('': not served); one of formats",
                           SERVE_FORMATS)
    port: int = _f(0, "the server's port on 127.0.0.1 (0: a free one)", min=0, max=65535)
    server_timeout: float = _f(120.0, "seconds the server may take to load and answer before the stage fails, "
                               "showing its log's tail", gt=0)
    n_eval: int = _f(0, "score at most this many held-out test prompts (0: all)")
    speed_prompts: int = _f(8, "speed: the first this many held-out prompts also generated one at a time by "
                            "transformers, beside llama.cpp's one-at-a-time replies to the same prompts", min=1)
    task_check: str = _f("auto", "programmatic check for the task score: auto (the data's own), json_answer, exact, "
                         "contains, plain", TASK_CHECKS)


@params_dataclass
class ReportParams(Common):
    """99_report: the story of one run, or a comparison of several (two profiles, the points of a sweep)."""

    compare_runs: list[str] = _f([], "runs to report: names under runs/ or run folders; empty: this run (in a "
                                     "pipeline) or else the newest run with metrics")
    stages: list[str] = _f([], "stages to show (empty: every stage the runs recorded)", STAGE_NAMES)


# ---------------------------------------------------------------- the stage table

#: Kinds of path-like parameter (``PathParam``): how ``nbft run`` tells a path (made absolute where it is started:
#: the notebooks run elsewhere) from a name.
PATH_KINDS = ("path", "dataset", "model", "runs")


@dataclass(frozen=True)
class PathParam:
    """A parameter that may name a file or folder: ``path`` (a path unless it is one of ``names``), ``dataset`` (a
    local file when ``data.is_file_spec`` says so, else a built-in or hub name), ``model`` (a folder when it is one,
    else a built-in name or hub id), ``runs`` (a list: each item a run folder when it is one, else a run name)."""

    key: str
    kind: str
    names: tuple[str, ...] = ()


@dataclass(frozen=True)
class Stage:
    """One row of the stage table: everything the runner, the report, the install and the tests know of a stage.
    Adding a stage is adding a row here, its parameter dataclass above, its module, its notebook, its sections in
    params/*.yaml and its tests (docs/architecture.md, "Where new things go")."""

    name: str  # the notebook's stem: notebooks/<name>.ipynb, runs/<run>/<name>.ipynb and .html, metrics.json's section
    params: type  # its parameter dataclass
    module: str  # the nbft module that owns the stage's glue: THRESHOLDS, findings, check_inputs (if it reads files)
    also: tuple[str, ...] = ()  # other nbft modules only this stage's notebook imports
    needs: tuple[str, ...] = ()  # the stages whose artifacts it reads in a run ("*": every other stage of the run)
    headline: tuple[str, ...] = ()  # its headline metrics (dotted keys): index.html, 99_report, ``nbft list``
    paths: tuple[PathParam, ...] = ()  # its path-like parameters
    needs_from: str = ""  # a parameter whose value starts with the name of a stage it reads ('04_rlhf/dpo_policy')
    lane: int = 0  # with --jobs > 1, a free lane takes the ready stage of the lowest lane first

    @property
    def notebook(self) -> str:
        return f"notebooks/{self.name}.ipynb"


#: The stage table, in pipeline order. Lanes (``--jobs 2``): the chain the others wait for first, then the longest,
#: the report last; with the default profile's stage times (docs/measurements.md, 2026-12-02: 01 8, 02 352, 06 610,
#: 03 578, 04 512, 05 ~500, 07 288 s) two lanes run 01-02-03-05 and 06-04-07, ~1410 and ~1390 s.
STAGE_TABLE = (
    Stage("01_data_prep", DataPrepParams, "data", lane=0,
          headline=("n_raw", "n_train", "n_validation", "n_test"),
          paths=(PathParam("dataset", "dataset"),)),
    Stage("02_sft", SFTParams, "sft", needs=("01_data_prep",), lane=1,
          headline=("task_score_before", "task_score_after", "ppl_general_before", "ppl_general_after",
                    "seconds"),
          paths=(PathParam("quality_reward_model", "path", ("",)),)),
    Stage("03_peft", PEFTParams, "peft", needs=("01_data_prep",), lane=3,
          headline=("n_methods_ok", "adapter_switch_ok", "lora_vs_full.lora_task_score",
                    "lora_vs_full.full_task_score")),
    Stage("04_rlhf", RLHFParams, "rlhf", needs=("02_sft",), lane=4,
          headline=("rm_accuracy", "winrate_rl_vs_sft", "winrate_dpo_vs_sft", "rl_kl"),
          paths=(PathParam("policy", "path", ("auto", "base")), PathParam("preferences", "path", ("builtin",)),
                 PathParam("judge", "model", ("",)), PathParam("feedback_reward_model", "path", ("",))),
          also=("feedback",)),
    Stage("05_rag_vs_ft", RAGParams, "knowledge", also=("rag",), lane=5,
          headline=("accuracy.rag.open", "accuracy.ft.open", "accuracy.ft_paraphrase.open", "retrieval_ms_p50",
                    "n_eval"),
          paths=(PathParam("knowledge_base", "path", ("builtin",)), PathParam("questions", "path", ("",)))),
    Stage("06_classify", ClassifyParams, "classify", lane=2,
          headline=("methods.features_llm.accuracy", "methods.lora.accuracy", "shift.target_accuracy",
                    "conditional.control"),
          paths=(PathParam("source_data", "dataset"), PathParam("target_data", "dataset"))),
    Stage("07_distill", DistillParams, "distill", needs=("01_data_prep", "02_sft"), lane=6,
          headline=("methods.imitation.style_gap_closed", "methods.imitation.knowledge_gap_closed",
                    "methods.distill.knowledge_gap_closed", "speedup"),
          paths=(PathParam("teacher", "model", ("auto", "base")), PathParam("student", "model", ("auto",)))),
    Stage("08_export", ExportParams, "ship", needs=("02_sft",), needs_from="export_model", lane=7,
          headline=("formats.q8_0.task_score", "reference.task_score", "formats.q8_0.gen_tokens_per_second",
                    "reference.gen_tokens_per_second", "formats.q4_k_m.task_score")),
    Stage("99_report", ReportParams, "report", needs=("*",), lane=8,
          headline=("compare_runs", "n_tables"),
          paths=(PathParam("compare_runs", "runs"),)),
)
#: notebook stem -> its row of the stage table, in pipeline order.
STAGES: dict[str, Stage] = {s.name: s for s in STAGE_TABLE}
#: Common parameters that name a file (one value for every stage).
COMMON_PATHS = (PathParam("accelerate_config", "path", ("",)),)
COMMON = "common"


def field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def common_names() -> list[str]:
    return field_names(Common)


def defaults(stage: str) -> dict[str, Any]:
    return dataclasses.asdict(STAGES[stage].params())


def help_text(cls: type) -> dict[str, str]:
    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}


def described(cls: type) -> dict[str, str]:
    """Help text with the field's range (``[>= 1]``, ``[in [0, 1)]``) and shortest list length, as
    ``nbft params`` and params/default.yaml show them."""
    out = {}
    for f in dataclasses.fields(cls):
        rule = range_text(f.metadata)
        rules = ([f"{'in ' if rule[:1] in '[(' else ''}{rule}"] if rule else []) + (
            [f"at least {f.metadata['min_items']} item(s)"] if f.metadata.get("min_items") else [])
        out[f.name] = f.metadata.get("help", "") + (f" [{'; '.join(rules)}]" if rules else "")
    return out


def parameters_cell(stage: str) -> str:
    """The source of a notebook's ``parameters`` cell: one ``name = default  # help`` line per field,
    in dataclass order (``nbft params --sync-notebooks`` writes it into notebooks/)."""
    cls = STAGES[stage].params
    return "\n".join(f"{f.name} = {getattr(cls(), f.name)!r}  # {f.metadata.get('help', '')}"
                     for f in dataclasses.fields(cls))


# ---------------------------------------------------------------- type checks

def show(value: Any, limit: int = 60) -> str:
    """``value`` as an error message echoes it: a bounded repr (reprlib: long strings, numbers and lists cut, nesting
    capped), so no value a user types — a 50 MB string, a 5000-digit number — is ever formatted whole."""
    import reprlib

    r = reprlib.Repr()
    r.maxlevel, r.maxdict, r.maxlist, r.maxtuple, r.maxset = 2, 4, 6, 6, 4
    r.maxstring, r.maxlong, r.maxother = limit, 40, limit
    return r.repr(value)


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def check_value(key: str, value: Any, tp, where: str = "") -> Any:
    """Return ``value`` (ints widened to float) or raise naming key, type and value."""
    origin = typing.get_origin(tp)
    ok = False
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        if isinstance(value, float) and math.isfinite(value) and value.is_integer() and abs(value) < 2**53:
            value = int(value)  # 1e3, as people write a count
        ok = isinstance(value, int) and not isinstance(value, bool)
        if ok and abs(value) > MAX_INT:
            raise ParamError(f"{where}{key}: {show(value)} is too large (at most {MAX_INT})")
    elif tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok:
            try:
                value = float(value)
            except OverflowError:
                raise ParamError(f"{where}{key}: expected a finite number, got {show(value)}") from None
            if not math.isfinite(value):
                raise ParamError(f"{where}{key}: expected a finite number, got {show(value)}")
    elif tp is str:
        ok = isinstance(value, str)
    elif origin is list:
        (item,) = typing.get_args(tp) or (Any,)
        ok = isinstance(value, list)
        if ok and item is not Any:
            value = [check_value(f"{key}[{i}]", v, item, where) for i, v in enumerate(value)]
    elif origin is dict:
        ok = isinstance(value, dict)
    elif origin in (typing.Union, types.UnionType):  # the arm of the value's own kind (``str | list[dict]``)
        for arm in typing.get_args(tp):
            if isinstance(value, typing.get_origin(arm) or arm):
                return check_value(key, value, arm, where)
    else:
        ok = True
    if not ok:
        raise ParamError(
            f"{where}{key}: expected {_type_name(tp)}, got {type(value).__name__} {show(value)}"
        )
    return value


def _text_type(tp) -> bool:
    """A text parameter (``str``, or a union with ``str``: ``dataset``): a number as written is the text typed."""
    return tp is str or (typing.get_origin(tp) in (typing.Union, types.UnionType) and str in typing.get_args(tp))


def _meta(cls: type, key: str) -> dict:
    return next((dict(f.metadata) for f in dataclasses.fields(cls) if f.name == key), {})


def check_choice(cls: type, key: str, value: Any, where: str = "") -> None:
    """``value`` (each item, for a list) is one of the field's ``choices``; else name the closest valid one."""
    meta = _meta(cls, key)
    choices = meta.get("choices", ())
    items = value if isinstance(value, list) else [value]
    for i, item in enumerate(items):
        if choices and item not in choices:
            name = f"{key}[{i}]" if isinstance(value, list) else key
            hint = _closest(str(item), list(choices))
            raise ParamError(f"{where}{name}: {show(item)} is not one of {', '.join(map(str, choices))}"
                             + (hint if "did you mean" in hint else ""))
    if isinstance(value, list) and meta.get("min_items") and len(value) < meta["min_items"]:
        raise ParamError(f"{where}{key}: give at least {meta['min_items']} item(s)"
                         + (f" of {', '.join(map(str, choices))}" if choices else "") + f", got {show(value)}")


def range_text(meta) -> str:
    """A field's range in words (``nbft params`` shows it after the help text): ``>= 1``, ``> 0``, ``[0, 1)``."""
    lo = ("[", meta["min"]) if meta.get("min") is not None else ("(", meta["gt"]) if meta.get("gt") is not None else None
    hi = ("]", meta["max"]) if meta.get("max") is not None else (")", meta["lt"]) if meta.get("lt") is not None else None
    if lo and hi:
        return f"{lo[0]}{lo[1]}, {hi[1]}{hi[0]}"
    if lo:
        return f"{'>=' if lo[0] == '[' else '>'} {lo[1]}"
    if hi:
        return f"{'<=' if hi[0] == ']' else '<'} {hi[1]}"
    return ""


def check_range(cls: type, key: str, value: Any, where: str = "") -> None:
    """``value`` (each item, for a list of numbers) is within the field's range (``_f(min=, max=, gt=, lt=)``)."""
    meta = _meta(cls, key)
    rule = range_text(meta)
    if not rule:
        return
    for i, v in enumerate(value if isinstance(value, list) else [value]):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        bad = ((meta.get("min") is not None and v < meta["min"]) or (meta.get("gt") is not None and v <= meta["gt"])
               or (meta.get("max") is not None and v > meta["max"]) or (meta.get("lt") is not None and v >= meta["lt"]))
        if bad:
            name = f"{key}[{i}]" if isinstance(value, list) else key
            raise ParamError(f"{where}{name}: {show(v)} is out of range: must be {'in ' if rule[0] in '[(' else ''}{rule}"
                             f" ({meta.get('help', '')[:80]})")


def check_field(cls: type, key: str, value: Any, where: str = "") -> None:
    check_choice(cls, key, value, where)
    check_range(cls, key, value, where)


#: Rules that tie two or more parameters of one stage (``build`` checks them after the fields):
#: (the fields, the check on the dataclass, what must hold).
RULES = (
    (("validation_fraction", "test_fraction"), lambda p: p.validation_fraction + p.test_fraction < 1,
     "must sum to less than 1 (the rest is the training split)"),
    (("min_tokens", "max_tokens"), lambda p: p.min_tokens < p.max_tokens, "min_tokens must be below max_tokens"),
    (("overlap_words", "chunk_words"), lambda p: p.overlap_words < p.chunk_words,
     "overlap_words must be below chunk_words"),
    (("serve_format", "formats"), lambda p: not p.serve_format or p.serve_format in p.formats,
     "the served format must be one of formats (it is served from the file written)"),
    (("early_stopping_patience", "eval_steps"), lambda p: not p.early_stopping_patience or p.eval_steps > 0,
     "early stopping counts evaluations: set eval_steps too"),
    (("task_mix_examples",), lambda p: p.task_mix_examples == 0 or p.task_mix_examples >= len(MIX_TASKS),
     "0 (skip) or at least one example per task of the five-task mix (5)"),
    (("quality_filter", "quality_filter_examples"),
     lambda p: (p.quality_filter == "none") == (p.quality_filter_examples == 0),
     "filtered vs whole needs both: a filter (judge or reward_model) and the whole set's size (> 0), or neither"),
    (("quality_filter", "judge"), lambda p: p.quality_filter != "judge" or bool(p.judge),
     "quality_filter judge rates with the judge: set judge (a model spec or an OpenAI-compatible endpoint)"),
    (("packing", "packing_strategy", "methods"), lambda p: not (
        p.packing and p.packing_strategy in PADDING_FREE_PACKING and set(p.methods) & set(PROMPT_LEARNING)),
     f"{' and '.join(PADDING_FREE_PACKING)} packing puts several examples in one row without an attention mask, and "
     f"prompt learning ({', '.join(PROMPT_LEARNING)}) prepends to a row, not to each example: use "
     "packing_strategy wrapped, or leave those methods out"),
    (("feedback", "judge"), lambda p: (p.feedback == "judge") == bool(p.judge),
     "feedback: judge asks the model or endpoint judge names: set both, or neither"),
    (("feedback", "feedback_reward_model"), lambda p: (p.feedback == "reward_model") == bool(p.feedback_reward_model),
     "feedback: reward_model scores with the folder feedback_reward_model names: set both, or neither"),
    (("feedback", "preferences"), lambda p: p.feedback == "rule" or p.preferences == "builtin",
     "a labeller labels the policy's own samples (preferences: builtin); a preferences file brings its own labels"),
)


def check_rules(p, where: str = "") -> None:
    names = set(field_names(type(p)))
    for keys, ok, rule in RULES:
        if set(keys) <= names and not ok(p):
            raise ParamError(f"{where}{' and '.join(f'{k}={show(getattr(p, k))}' for k in keys)}: {rule}")


#: The keys of one source of a mixed ``dataset`` (a list): what it is (as ``dataset`` alone), its share of the mix,
#: its format, and the most records taken from it (0: all).
SOURCE_KEYS = ("path", "weight", "format", "cap")


def check_sources(sources: list, key: str = "dataset") -> None:
    """A list ``dataset``: at least one source, each a mapping of ``SOURCE_KEYS`` with a non-empty ``path``, a
    ``weight`` > 0, a ``format`` of ``FORMATS`` and a ``cap`` >= 0; an error names the item's index and field."""
    if not sources:
        raise ParamError(f"{key}: an empty list; give at least one source ({{path: ..., weight: ...}}) or a name")
    for i, src in enumerate(sources):
        at = f"{key}[{i}]"
        if not isinstance(src, dict):
            raise ParamError(f"{at}: expected a mapping {{path, weight, format, cap}}, got {type(src).__name__} "
                             f"{show(src)}")
        for k in src:
            if k not in SOURCE_KEYS:
                raise ParamError(f"{at}: unknown key {show(k)}{_closest(str(k), list(SOURCE_KEYS))}")
        if not isinstance(src.get("path"), str) or not src["path"].strip():
            raise ParamError(f"{at}.path: missing or empty: name a file, 'demo' or a Hugging Face dataset "
                             f"(got {show(src.get('path'))})")
        weight = src.get("weight", 1)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) \
                or weight <= 0:
            raise ParamError(f"{at}.weight: {show(weight)} must be a number > 0 (its share of the mix)")
        fmt = src.get("format", "auto")
        if fmt not in FORMATS:
            hint = _closest(str(fmt), list(FORMATS))
            raise ParamError(f"{at}.format: {show(fmt)} is not one of {', '.join(FORMATS)}"
                             + (hint if "did you mean" in hint else ""))
        cap = src.get("cap", 0)
        if isinstance(cap, bool) or not isinstance(cap, int) or not 0 <= cap <= MAX_INT:
            raise ParamError(f"{at}.cap: {show(cap)} must be a whole number >= 0 (0: no cap)")


def _closest(key: str, valid: list[str]) -> str:
    match = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    return f"; did you mean '{match[0]}'?" if match else f"; valid keys: {', '.join(valid)}"


def build(stage: str, values: dict[str, Any], where: str = "") -> Any:
    """Validate ``values`` (a flat mapping) into the stage's dataclass."""
    cls = STAGES[stage].params
    hints = typing.get_type_hints(cls)
    valid = field_names(cls)
    for key in values:
        if key not in hints:
            raise ParamError(f"{where}unknown parameter '{key}' for {stage}{_closest(key, valid)}")
    checked = {k: check_value(k, v, hints[k], where) for k, v in values.items()}
    for k, v in checked.items():
        check_field(cls, k, v, where)
    if checked.get("run_name"):
        check_run_name(checked["run_name"], f"{where}run_name")
    if checked.get("judge") and is_endpoint(checked["judge"]):
        check_endpoint(checked["judge"], f"{where}judge")
    if isinstance(checked.get("dataset"), list):
        check_sources(checked["dataset"], f"{where}dataset")
    if checked.get("judge_api_key_env"):
        check_env_name(checked["judge_api_key_env"], f"{where}judge_api_key_env")
    p = cls(**checked)
    check_rules(p, f"{where}{stage}: ")
    return p


def from_namespace(stage: str, namespace: dict[str, Any]) -> Any:
    """Collect a notebook's parameters from its globals and validate them.

    Used by every notebook's setup cell, so a plain ``papermill -p`` run is
    type-checked the same way as ``nbft run``.
    """
    missing = [k for k in field_names(STAGES[stage].params) if k not in namespace]
    if missing:
        raise ParamError(f"{stage}: the parameters cell does not define {', '.join(missing)}")
    return build(stage, {k: namespace[k] for k in field_names(STAGES[stage].params)}, where=f"{stage}: ")


# ---------------------------------------------------------------- YAML profiles

def _key_lines(text: str) -> dict[tuple[str, ...], int]:
    """(section,) and (section, key) -> 1-based line number in the YAML text."""
    lines: dict[tuple[str, ...], int] = {}
    try:
        root = yaml.compose(text, Loader=_StrictLoader)
    except (yaml.YAMLError, RecursionError):
        return lines
    if not isinstance(root, yaml.MappingNode):
        return lines
    for knode, vnode in root.value:
        sec = str(knode.value)
        lines[(sec,)] = knode.start_mark.line + 1
        if isinstance(vnode, yaml.MappingNode):
            for k2, _ in vnode.value:
                lines[(sec, str(k2.value))] = k2.start_mark.line + 1
    return lines


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader for parameter files: duplicate keys refused (YAML calls them an error; PyYAML keeps the
    last); anchors and aliases refused (a parameter file needs none, and nested aliases — "billion laughs" — expand
    a few lines into an exponentially large value); numbers as people write them (``1e-5``, ``3E-4``: YAML 1.2 floats,
    which YAML 1.1 reads as strings; ``.5`` and ``1_000`` already were); no dates (``2024-01-01`` stays text: no
    parameter is a date)."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent) or getattr(self.peek_event(), "anchor", None) is not None:
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, "anchors and aliases (&name, *name) are not allowed in parameter files", event.start_mark)
        return super().compose_node(parent, index)


_StrictLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_StrictLoader.add_implicit_resolver(  # YAML 1.2's exponent floats: 1e-5, 3E-4, 2.5e3 (1.1 wants a dot and a sign)
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def _mapping_without_duplicates(loader, node, deep=False):
    seen: dict = {}
    for knode, _ in node.value:
        key = loader.construct_object(knode, deep=True)
        try:
            hash(key)
        except TypeError:
            continue  # the safe loader's own error names it
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first on line {seen[key]})", knode.start_mark)
        seen[key] = knode.start_mark.line + 1
    return yaml.SafeLoader.construct_mapping(loader, node, deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)


def load_yaml(text: str) -> Any:
    """``yaml.safe_load`` for parameters (``_StrictLoader``: no duplicate keys, no aliases, YAML 1.2 numbers, no
    dates); raises ``yaml.YAMLError`` naming the line, or ParamError for a value Python cannot hold (a number of
    more than 4300 digits)."""
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except ValueError as e:  # int() of a huge literal: Python's limit on integer digits
        if isinstance(e, yaml.YAMLError):
            raise
        raise ParamError(f"a value Python cannot read: {str(e)[:120]}") from None


def _raw_scalars(text: str) -> dict[tuple[str, str], str]:
    """(section, key) -> the value exactly as written, for scalar values (a text parameter keeps what was typed:
    ``run_name: 007`` is "007", not 7)."""
    try:
        root = yaml.compose(text, Loader=_StrictLoader)
    except (yaml.YAMLError, RecursionError):
        return {}
    out = {}
    if isinstance(root, yaml.MappingNode):
        for knode, vnode in root.value:
            if isinstance(vnode, yaml.MappingNode):
                for k2, v2 in vnode.value:
                    if isinstance(v2, yaml.ScalarNode):
                        out[(str(knode.value), str(k2.value))] = v2.value
    return out


def parse_profile(path: str | Path) -> dict[str, dict[str, Any]]:
    """Read a profile and validate its shape and every key/type (not yet merged)."""
    path = Path(path)
    if not path.is_file():
        raise ParamError(f"parameter file not found: {path}")
    try:
        text = files.read_text(path)
    except files.DecodeError as e:
        raise ParamError(str(e)) from None
    try:
        data = load_yaml(text) or {}
    except ParamError as e:
        raise ParamError(f"{path}: {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise ParamError(f"{path}{line}: not valid YAML: {getattr(e, 'problem', e)}") from None
    except RecursionError:
        raise ParamError(f"{path}: nested too deeply to be a parameter file") from None
    if not isinstance(data, dict):
        raise ParamError(f"{path}: expected a mapping of sections ({COMMON}, {', '.join(STAGES)})")
    lines, raw = _key_lines(text), _raw_scalars(text)
    sections = [COMMON, *STAGES]
    for sec, body in data.items():
        where = f"{path} line {lines.get((str(sec),), '?')}: "
        if sec not in sections:
            raise ParamError(f"{where}unknown section '{sec}'{_closest(str(sec), sections)}")
        if body is None:
            data[sec] = body = {}
        if not isinstance(body, dict):
            raise ParamError(f"{where}section '{sec}' must be a mapping of key: value")
        cls = Common if sec == COMMON else STAGES[sec].params
        hints = typing.get_type_hints(cls)
        valid = field_names(cls) if sec == COMMON else [k for k in field_names(cls) if k not in common_names()]
        for key, value in body.items():
            where = f"{path} line {lines.get((str(sec), str(key)), '?')}: {sec}."
            if sec != COMMON and key in common_names():  # to_yaml (a run's params.yaml) keeps one value for all
                raise ParamError(f"{where}{key}: a common parameter (one value for every stage): put it under "
                                 f"'{COMMON}:'")
            if key not in hints:
                raise ParamError(f"{where}{key}: unknown parameter{_closest(str(key), valid)}")
            if _text_type(hints[key]) and not isinstance(value, (str, list)) and value is not None \
                    and (sec, key) in raw:
                value = raw[(sec, key)]  # a name that looks like a number: the text as written
            body[key] = check_value("", value, hints[key], where=f"{where}{key}")
            check_field(cls, key, body[key], where)
    return data


def _parse_set(item: str, profile: dict[str, dict[str, Any]]) -> None:
    """Apply one ``--set [section.]key=value`` override in place.

    A bare key goes to the common section if it is common, else to every stage that has it.
    """
    if "=" not in item:
        raise ParamError(f"--set {show(item)}: expected key=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if len(key) > 200:
        raise ParamError(f"--set: a key of {len(key)} characters ({show(key, 40)}) is no parameter")
    try:
        value = load_yaml(raw) if raw.strip() else ""
    except yaml.composer.ComposerError as e:
        raise ParamError(f"--set {key}: {e.problem}") from None
    except yaml.YAMLError:
        value = raw
    except ParamError as e:
        raise ParamError(f"--set {key}: {e}") from None
    except RecursionError:
        raise ParamError(f"--set {key}: the value is nested too deeply") from None
    if "." in key and key.split(".", 1)[0] in [COMMON, *STAGES]:
        sec, name = key.split(".", 1)
        owners = [sec]
    else:  # a bare key: the common section, else every stage that has it
        name = key
        owners = [COMMON] if name in common_names() else [s for s in STAGES if name in field_names(STAGES[s].params)]
        if not owners:
            every = sorted({n for s in STAGES.values() for n in field_names(s.params)})
            raise ParamError(f"--set {key}: unknown parameter{_closest(name, every)}")
    for sec in owners:
        cls = Common if sec == COMMON else STAGES[sec].params
        hints = typing.get_type_hints(cls)
        if name not in hints or (sec != COMMON and name in common_names()):
            valid = field_names(cls) if sec == COMMON else [k for k in field_names(cls) if k not in common_names()]
            raise ParamError(f"--set {key}: unknown parameter for {sec}{_closest(name, valid)}")
        v = raw.strip() if _text_type(hints[name]) and not isinstance(value, (str, list)) else value  # run_name=2024
        profile.setdefault(sec, {})[name] = check_value("", v, hints[name], where=f"--set {key}")
        check_field(cls, name, profile[sec][name], where=f"--set {key[:len(key) - len(name)]}")


def resolve(path: str | Path | None = None, sets: list[str] | None = None) -> dict[str, Any]:
    """Profile + overrides -> {stage: validated dataclass}. Raises ParamError."""
    profile = parse_profile(path) if path else {}
    for item in sets or []:
        _parse_set(item, profile)
    common = profile.get(COMMON, {})
    out = {}
    for stage in STAGES:
        values = {**common, **profile.get(stage, {})}
        out[stage] = build(stage, values, where=f"{path or 'parameters'}: ")
    return out


def to_yaml(resolved: dict[str, Any], comments: bool = False) -> str:
    """The resolved parameters as a profile (common section + per-stage fields).

    ``comments``: each line ends with its help text, looked up by (section, key) — a key that
    several stages share (``epochs``, ``max_new_tokens``) is described the way its own stage means it.
    """
    first = next(iter(resolved.values()))
    doc: dict[str, Any] = {COMMON: {k: getattr(first, k) for k in common_names()}}
    for stage, p in resolved.items():
        doc[stage] = {k: v for k, v in dataclasses.asdict(p).items() if k not in common_names()}
    if not comments:
        return yaml.dump(doc, Dumper=_Dumper, sort_keys=False, width=200)
    out = []
    for section, body in doc.items():
        helps = described(Common if section == COMMON else type(resolved[section]))
        if out:
            out.append("")
        out.append(f"{section}:")
        for key, value in body.items():
            line = yaml.dump({key: value}, Dumper=_Dumper, sort_keys=False,  # one line, a long string too
                             width=float("inf")).rstrip("\n")
            out.append(f"  {line}  # {helps[key]}")
    return "\n".join(out) + "\n"


class _Dumper(yaml.SafeDumper):
    """Block mappings, flow lists: one parameter per line."""


_Dumper.add_representer(list, lambda d, v: d.represent_sequence("tag:yaml.org,2002:seq", v, flow_style=True))
