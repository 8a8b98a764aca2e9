"""Standard benchmarks through lm-evaluation-harness (``lm-eval``), on the model already in memory.

``benchmark(model, tokenizer, names)`` wraps the model (a plain transformers model or a peft one) in lm-eval's
``HFLM`` and runs lm-eval's ``evaluate`` with a ``TaskManager`` that also knows nbft's own tasks
(``BUNDLED``: YAML in ``nbft/lm_tasks/``); per task it returns the task's main metric (``acc`` where there is one)
with lm-eval's standard error, a bootstrap 95% interval over the per-example scores and the number of examples.
``compare(before, after)`` pairs two such results into ``scoring.table``'s form (before, after, the change with a
paired interval), so ``rows`` and the findings read like the reply metrics.

``nbft_general_qa`` is the project's general questions (``corpora.GENERAL_QA``, the forgetting probe) as a
multiple-choice task: it runs offline, in seconds. Any lm-eval task name works too (``hellaswag``, ``arc_easy``,
...) where its dataset can be loaded: ``check`` (preflight) refuses a name that is no task, with the closest one,
and, while the hub is offline, a task whose dataset is not in the local datasets cache.

lm-eval is imported here only when benchmarks are asked for (it is large: its task index alone is ~14,000 YAML
files, read once per process in ~9 s on 2 CPU cores when a name is not one of nbft's own).
"""
from __future__ import annotations

import contextlib
import difflib
import functools
import io
import logging
import math
import random
import sys
from pathlib import Path
from typing import Sequence

from . import corpora, data, params, scoring, timing

#: nbft's own lm-eval task folder (shipped as package data) and its tasks: name -> what it measures
TASKS_DIR = Path(__file__).parent / "lm_tasks"
BUNDLED = {
    "nbft_general_qa": "nbft's general questions (the forgetting probe) as 4-way multiple choice, by log-likelihood",
}
#: ``datasets`` builders that read files rather than a hub dataset (their ``data_files`` say where from)
_FILE_BUILDERS = {"json", "csv", "parquet", "text", "arrow", "pandas"}


# ---------------------------------------------------------------- the bundled task's data

def _kind(question: str, answers: list[str]) -> str:
    return "capital" if question.startswith("What is the capital of") else "number" if answers[0].isdigit() else "other"


def general_qa_records() -> list[dict]:
    """``corpora.GENERAL_QA`` as multiple choice: {"question", "choices", "answer" (index)}; the right answer is the
    first accepted one, the three distractors the first answers of other questions of the same kind (capitals,
    numbers, the rest), chosen and shuffled by a generator seeded with the question's position (the same every run)."""
    out = []
    for i, (question, answers) in enumerate(corpora.GENERAL_QA):
        rng = random.Random(i)
        pool = [a[0] for q, a in corpora.GENERAL_QA if q != question and _kind(q, a) == _kind(question, answers)
                and a[0] not in answers]
        choices = [answers[0], *rng.sample(pool, 3)]
        rng.shuffle(choices)
        out.append({"question": question, "choices": choices, "answer": choices.index(answers[0])})
    return out


def general_qa_dataset(**_):
    """The ``custom_dataset`` of ``lm_tasks/nbft_general_qa.yaml``: ``general_qa_records`` as a one-split (test)
    ``DatasetDict``, built in memory (nothing read from or written to a cache)."""
    import datasets

    return datasets.DatasetDict({"test": datasets.Dataset.from_list(general_qa_records())})


# ---------------------------------------------------------------- names, checked before a run

@functools.cache
def _manager(everything: bool):
    """lm-eval's ``TaskManager`` with nbft's task folder: only that folder (fast), or with lm-eval's own ~14,000
    task files too (``everything``; read once per process)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(TASKS_DIR), include_defaults=everything)


def _manager_for(names: Sequence[str]):
    return _manager(any(n not in BUNDLED for n in names))


def _hub_datasets(manager, name: str, seen: set | None = None) -> list[tuple[str, str | None]]:
    """The (hub dataset, config) pairs task, group or tag ``name`` loads, from lm-eval's task index (no task is
    built, nothing downloaded); a file builder reading URLs is ("<url>", None); a task with a loader of its own
    (``custom_dataset``) the dataset it names, any config. Python-class tasks, and loaders that name none, are not
    known until they run: none listed."""
    from lm_eval.tasks._index import Kind

    seen = set() if seen is None else seen
    if name in seen or name not in manager.task_index:
        return []
    seen.add(name)
    entry = manager.task_index[name]
    if entry.kind == Kind.TAG:
        return [d for t in sorted(entry.tags) for d in _hub_datasets(manager, t, seen)]
    if entry.kind == Kind.GROUP:
        out = []
        for t in (entry.cfg or {}).get("task", []):
            if isinstance(t, str):
                out += _hub_datasets(manager, t, seen)
            elif isinstance(t, dict) and isinstance(t.get("task"), str):
                out += _config_datasets(t) if "dataset_path" in t else _hub_datasets(manager, t["task"], seen)
        return out
    return _config_datasets(entry.cfg or {}) if entry.kind == Kind.TASK else []


def _config_datasets(cfg: dict) -> list[tuple[str, str | None]]:
    path = cfg.get("dataset_path")
    if not isinstance(path, str) or not path:
        return []
    if cfg.get("custom_dataset"):  # a loader of its own: the hub dataset it names, in whatever config it asks for
        return [] if path in _FILE_BUILDERS else [(path, None)]
    if path in _FILE_BUILDERS:
        files = ((cfg.get("dataset_kwargs") or {}).get("data_files")) or []
        files = files.values() if isinstance(files, dict) else [files] if isinstance(files, str) else files
        flat = [f for x in files for f in ([x] if isinstance(x, str) else x)]
        return [(f, None) for f in flat if f.startswith(("http://", "https://", "hf://"))]
    return [(path, cfg.get("dataset_name"))]


def _cached(dataset: str, config: str | None) -> bool:
    if dataset.startswith(("http://", "https://", "hf://")):
        return False
    _, found = data.hub_cache(dataset)
    return any(config is None or f.parent.parent.name == config for f in found)


def check(names: Sequence[str], key: str = "benchmarks") -> None:
    """Before a run: every name is one of nbft's tasks or an lm-eval task, group or tag (else ``params.ParamError``
    with the closest name); while the hub is offline (``data.hub_offline``), every hub dataset a task loads is in the
    local datasets cache (else ``data.DataError`` naming the task and the dataset). nbft's own names need no
    lm-eval index; any other name reads it (~9 s, once per process)."""
    others = [n for n in names if n not in BUNDLED]
    if not others:
        return
    manager = _manager(True)
    for name in others:
        if name not in manager.task_index:
            close = (difflib.get_close_matches(name, list(BUNDLED), n=1, cutoff=0.5)
                     or difflib.get_close_matches(name, manager.all_tasks, n=1, cutoff=0.5))
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise params.ParamError(f"{key}: {params.show(name)} is neither one of nbft's tasks "
                                    f"({', '.join(BUNDLED)}) nor an lm-eval task, group or tag{hint}")
    offline = data.hub_offline()
    if offline is None:
        return
    for name in others:
        missing = [(d, c) for d, c in dict.fromkeys(_hub_datasets(manager, name)) if not _cached(d, c)]
        if missing:
            d, c = missing[0]
            what = f"the Hugging Face dataset '{d}'" + (f" (config '{c}')" if c else "")
            raise data.DataError(f"{key}: task '{name}' needs {what}, which is not in the local datasets cache "
                                 f"({data.hub_cache(d)[0].parent}), and the hub is offline ({offline}=1, nbft's "
                                 f"default); run it once with {offline}=0 (network), or leave '{name}' out")


# ---------------------------------------------------------------- running

@contextlib.contextmanager
def _quiet():
    """lm-eval's info and warning lines (a model object passed as ``pretrained``, ...) and its three progress bars a
    task kept out of the notebook during the call; its errors still log, and on an exception what it wrote to
    stderr is written there after all."""
    logger = logging.getLogger("lm_eval")
    level = logger.level
    logger.setLevel(logging.ERROR)
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            yield
    except BaseException:
        sys.stderr.write(err.getvalue())
        raise
    finally:
        logger.setLevel(level)


_PRECISION = {"bf16": "bfloat16", "fp16": "float16"}


def _main_metric(result: dict) -> tuple[str, str]:
    """(metric, filter) of a task's result: ``acc`` where there is one, else its first metric."""
    keys = [k for k in result if "," in k and "_stderr," not in k]
    pick = next((k for k in keys if k.startswith("acc,")), keys[0] if keys else None)
    if pick is None:
        raise ValueError(f"lm-eval returned no metric: {sorted(result)}")
    metric, _, filt = pick.partition(",")
    return metric, filt


def _leaves(out: dict, name: str) -> list[str]:
    children = out.get("group_subtasks", {}).get(name)
    return [x for c in children for x in _leaves(out, c)] if children else [name]


def _summary(out: dict, name: str) -> dict:
    """One task's (or group's) main metric: {"metric", "mean", "lo", "hi", "n_eval", "stderr", "higher_is_better",
    "scores"}: the interval a bootstrap over the per-example scores where they average to the task's number, else
    lm-eval's standard error times 1.96; ``scores`` (per example, by document) None where there are none."""
    result = out["results"][name]
    metric, filt = _main_metric(result)
    value = float(result[f"{metric},{filt}"])
    stderr = result.get(f"{metric}_stderr,{filt}")
    stderr = float(stderr) if isinstance(stderr, (int, float)) and math.isfinite(stderr) else None
    scores = []
    for leaf in _leaves(out, name):
        rows = sorted((s for s in out.get("samples", {}).get(leaf, []) if s.get("filter") == filt),
                      key=lambda s: s["doc_id"])
        scores += [s.get(metric) for s in rows]
    numeric = bool(scores) and all(isinstance(s, (int, float)) for s in scores)
    scores = [float(s) for s in scores] if numeric else None
    n = sum(out.get("n-samples", {}).get(leaf, {}).get("effective", 0) for leaf in _leaves(out, name))
    if scores and math.isclose(sum(scores) / len(scores), value, abs_tol=1e-9):
        s = scoring.summary(scores)
        lo, hi = s["lo"], s["hi"]
    else:
        scores = None
        lo, hi = (value - 1.96 * stderr, value + 1.96 * stderr) if stderr is not None else (None, None)
    higher = out.get("higher_is_better", {}).get(name, {}).get(metric)
    return {"metric": metric, "mean": value, "lo": lo, "hi": hi, "n_eval": int(n or len(scores or [])),
            "stderr": stderr, "higher_is_better": higher, "scores": scores}


@timing.timed("scoring")
def benchmark(model, tokenizer, names: Sequence[str], limit: int = 0, batch_size: int = 16,
              precision: str = "fp32") -> dict[str, dict]:
    """Run lm-eval tasks ``names`` (checked first: ``check``) on ``model`` as it is in memory: zero-shot, at most
    ``limit`` examples per task (0: all), ``batch_size`` sequences a forward pass, under autocast at ``precision``
    (bf16, fp16; fp32: none). Returns {task: ``_summary``} for every task or group asked (a tag: each of its tasks).
    Zero-shot unless a task's config says otherwise; the global seeds are left alone (``simple_evaluate`` would reseed
    python, numpy and torch in the notebook's process), few-shot examples drawn with lm-eval's default seed."""
    check(names)
    from lm_eval.defaults import DEFAULT_OTHER_SEED
    from lm_eval.evaluator import evaluate
    from lm_eval.models.huggingface import HFLM

    with _quiet():
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size,
                  mixed_precision_dtype=_PRECISION.get(precision))
        loaded = _manager_for(names).load(list(names))
        for task in loaded["tasks"].values():  # what simple_evaluate does, less its seeding and environment report
            if task.get_config("num_fewshot") is None:  # (pip list, git, nvidia-smi: ~1.5 s a call)
                task.set_config(key="num_fewshot", value=0)
            task.set_fewshot_seed(seed=DEFAULT_OTHER_SEED)
        out = evaluate(lm=lm, task_dict=loaded, limit=limit or None, bootstrap_iters=1000, log_samples=True)
    children = {c for cs in out.get("group_subtasks", {}).values() for c in cs}
    return {name: _summary(out, name) for name in out["results"] if name not in children}


def compare(before: dict[str, dict], after: dict[str, dict]) -> dict[str, dict]:
    """Two ``benchmark`` results of the same tasks in ``scoring.table``'s form: per task {"metric", "before",
    "after" ({"mean", "lo", "hi", "n_eval", "stderr"}), "diff" (after - before: a paired bootstrap over the same
    examples, else lm-eval's two standard errors combined), "higher_is_better", "scores"}."""
    out = {}
    for name, b in before.items():
        a = after[name]
        if b["scores"] is not None and a["scores"] is not None and len(b["scores"]) == len(a["scores"]):
            diff = scoring.paired(b["scores"], a["scores"])
        else:
            se = math.hypot(b["stderr"], a["stderr"]) if None not in (b["stderr"], a["stderr"]) else None
            d = a["mean"] - b["mean"]
            diff = {"mean": d, "lo": None if se is None else d - 1.96 * se, "hi": None if se is None else d + 1.96 * se,
                    "n_eval": a["n_eval"]}
        keep = ("mean", "lo", "hi", "n_eval", "stderr")
        out[name] = {"metric": b["metric"], "before": {k: b[k] for k in keep}, "after": {k: a[k] for k in keep},
                     "diff": diff, "higher_is_better": b["higher_is_better"],
                     "scores": {"before": b["scores"], "after": a["scores"]}}
    return out


def record(table: dict[str, dict]) -> dict[str, dict]:
    """``compare``'s table as metrics.json keeps it (``benchmarks``): without the per-example scores."""
    return {name: {k: v for k, v in row.items() if k != "scores"} for name, row in table.items()}


def rows(table: dict[str, dict]) -> list[dict]:
    """``compare``'s table as rows a notebook shows: task, metric, n, before and after with their intervals, the
    change with its interval and whether it is larger than the interval (``scoring.rows``)."""
    return [{"task": name, "metric": row["metric"], "n": row["after"]["n_eval"],
             **{k: v for k, v in r.items() if k != "metric"}}
            for (name, row), r in zip(table.items(), scoring.rows(table))]


def sentences(table: dict[str, dict]) -> list[str]:
    """One finding per task (``scoring.sentence``)."""
    return [scoring.sentence(f"Benchmark {name} ({row['metric']})", row) for name, row in table.items()]
