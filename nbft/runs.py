"""Run folders: where a run lives, its metrics, its environment, its status.

::

    runs/<run-name>/
      <stage>.ipynb  <stage>.html   executed notebooks and their HTML
      params.yaml                   resolved parameters
      env.json                      versions, hardware, seed, git commit, model source; kernels.<stage>: what
                                    each notebook's kernel ran with
      metrics.json                  {"<stage>": {"<metric>": value}}
      status.json                   {"state": running|ok|failed|interrupted, "stages": {...}}
      .lock                         pid and host of the ``nbft run`` writing the run (gone when it ends)
      checkpoints/<stage>/          trainer checkpoints while the stage runs (deleted when it ends ok)
      cache/                        evaluation results of loaded models, reused across stages (nbft.evaluate)
      artifacts/<stage>/            datasets, adapters, ...

A run folder is made with one atomic ``os.mkdir`` (``reserve_run_dir``); every file is written atomically
(``files.write_atomic``), metrics.json and status.json under a file lock. ``nbft list`` shows a run whose
``.lock`` holder is gone while status.json says running as ``crashed``; ``nbft run --resume`` continues it.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import files, params, timing

RUNS_ENV = "NBFT_RUNS_DIR"
CHECKPOINTS = "checkpoints"  # <run>/checkpoints/<stage>/: the trainers' checkpoints while a stage runs
EVAL_CACHE = "cache"  # <run>/cache/: evaluation results of loaded models, reused by every stage (nbft.evaluate)
RUNNER_ENV = "NBFT_RUNNER"  # "1" in the kernels `nbft run` starts: their trainers checkpoint (save_steps)


def project_root(start: Path | None = None) -> Path | None:
    """Nearest folder at or above ``start`` (cwd) holding notebooks/ and params/ (``files.project_root``, without
    falling back to where nbft is installed: runs/ and the notebooks are the project's you are in)."""
    return files.project_root(start, installed=False)


def runs_root() -> Path:
    """Where runs live: ``$NBFT_RUNS_DIR``, else runs/ in the project (or the working directory). Something there
    that is not a folder is refused naming it (a ``RunError``)."""
    if os.environ.get(RUNS_ENV):
        try:
            root = Path(os.path.expanduser(os.environ[RUNS_ENV])).resolve()
        except (OSError, RuntimeError) as e:  # ~nosuchuser, a symlink loop
            raise RunError(f"{RUNS_ENV}={params.show(os.environ[RUNS_ENV])}: {e}") from None
    else:
        root = (project_root() or Path.cwd()) / "runs"
    if root.exists() and not root.is_dir():
        raise RunError(f"the runs folder {root}{f' ({RUNS_ENV})' if os.environ.get(RUNS_ENV) else ''} is a file, "
                       "not a folder: point it at a folder")
    return root


def new_run_name(prefix: str = "") -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    prefix = re.sub(r"[^A-Za-z0-9._-]+", "-", prefix).strip(".-")[:60]
    return f"{stamp}-{prefix}" if prefix else stamp


class RunError(ValueError):
    """A run folder cannot be used: it exists, another live run holds it, or it cannot be resumed."""


def run_dir(name: str, root: Path | None = None, key: str = "run name") -> Path:
    """The folder of run ``name``: the one place a run name becomes a path (``--name``, ``--resume``, ``--run``,
    sweep points, a notebook's ``run_name``). The name is checked (``params.check_run_name``) and the folder must
    lie directly under the runs folder, even through a symlink."""
    params.check_run_name(name, key)
    root = root or runs_root()
    path = root / name
    if path.resolve().parent != root.resolve():
        raise params.ParamError(f"{key} {name!r}: the run folder must be directly under {root}")
    return path


def check_free(name: str, root: Path | None = None) -> Path:
    """The path of a new named run; refused early (before preflight) when the name is invalid or taken.
    ``reserve_run_dir`` is what makes it the caller's."""
    path = run_dir(name, root)
    if path.exists():
        raise FileExistsError(f"run '{name}' already exists at {path}; runs are never overwritten — pick another "
                              f"--name (or continue it: nbft run --resume {name})")
    return path


def reserve_run_dir(name: str | None = None, prefix: str = "", root: Path | None = None) -> Path:
    """Create a new run folder and return it: ``os.mkdir`` is the one atomic step that makes it this process's.

    A named run that exists (or is created by another process first) is an error: runs are never overwritten.
    An unnamed run is ``<timestamp>-<prefix>``, with ``-2``, ``-3``, ... when another run took that name
    in the same second.
    """
    root = root or runs_root()
    root.mkdir(parents=True, exist_ok=True)
    if name:
        path = check_free(name, root)
        try:
            os.mkdir(path)
        except FileExistsError:
            raise FileExistsError(f"run '{name}' already exists at {path} (another run took the name just now); "
                                  "runs are never overwritten — pick another --name") from None
        return path
    base = new_run_name(prefix)
    for i in range(1, 10_000):
        path = root / (base if i == 1 else f"{base}-{i}")
        try:
            os.mkdir(path)
            return path
        except FileExistsError:
            continue
    raise RunError(f"cannot find a free run name {base}-N under {root}")


# ---------------------------------------------------------------- the lock a running run holds

LOCK_FILE = ".lock"


def _proc_start(pid: int) -> str | None:
    """The start time of process ``pid`` (Linux /proc, in clock ticks since boot): tells a reused pid apart."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _parse_lock(raw: bytes) -> dict | None:
    try:
        info = json.loads(raw)
    except ValueError:
        return None
    return info if isinstance(info, dict) else None


def lock_info(run_dir: Path) -> dict | None:
    """Who holds the run's lock: {"pid", "host", "started", "proc_start"}, or None (no lock or unreadable)."""
    try:
        return _parse_lock((Path(run_dir) / LOCK_FILE).read_bytes())
    except OSError:
        return None


def holder_alive(info: dict) -> bool | None:
    """Is the process that took the lock still running? None when it ran on another host (cannot tell)."""
    if info.get("host") != platform.node():
        return None
    pid = info.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    start = _proc_start(pid)
    return info.get("proc_start") is None or start is None or start == info.get("proc_start")


def lock_holder(run_dir: Path, info: dict) -> str:
    """Who holds the run's lock and what to do, in words: wait or stop it; for a holder on another host (this
    host cannot check its processes), also how to free the run if that process is gone."""
    path = Path(run_dir) / LOCK_FILE
    out = f"pid {info.get('pid')} on {info.get('host')} (since {info.get('started')}): wait for it, or stop it first"
    if holder_alive(info) is None:
        out += f"; this host cannot check {info.get('host')}'s processes: if that process is gone, delete {path}"
    return out


def _create_lock(path: Path, content: bytes) -> bool:
    """Create ``path`` holding ``content``, never visible half-written (``files.write_new``: a temp file, then
    ``os.link``, refused when ``path`` exists). False when it exists."""
    return files.write_new(path, content)


def acquire(run_dir: Path) -> dict:
    """Take the run's lock (``.lock``: pid, host, start time), held while this process writes the run.

    The lock file appears with its content whole (``_create_lock``). A lock left by a process that no longer runs
    (a crash, ``kill -9``) is taken over: moved aside under ``files.locked``, and only if it still holds the bytes
    judged stale, so two processes taking over one stale lock never both win. One held by a live process is an
    error naming it.
    """
    path = Path(run_dir) / LOCK_FILE
    me = {"pid": os.getpid(), "host": platform.node(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
          "proc_start": _proc_start(os.getpid())}
    for _ in range(5):
        if _create_lock(path, json.dumps(me).encode()):
            return me
        try:
            raw = path.read_bytes()
        except FileNotFoundError:  # released or moved aside just now: try again
            continue
        info = _parse_lock(raw)
        alive = holder_alive(info) if info else False  # unreadable: nbft never writes one (it appears whole)
        if alive or alive is None:
            raise RunError(f"run '{Path(run_dir).name}' is being written by {lock_holder(run_dir, info)}")
        with files.locked(path):  # stale: move it aside, unless another process took it over meanwhile
            try:
                if path.read_bytes() == raw:
                    os.replace(path, path.with_name(f"{LOCK_FILE}.stale-{(info or {}).get('pid')}"))
            except FileNotFoundError:
                pass
    raise RunError(f"run '{Path(run_dir).name}': cannot take its lock {path}")


def release(run_dir: Path) -> None:
    """Drop the run's lock if this process holds it."""
    info = lock_info(run_dir)
    if info and info.get("pid") == os.getpid() and info.get("host") == platform.node():
        with contextlib.suppress(OSError):
            (Path(run_dir) / LOCK_FILE).unlink()


def _clean(x):
    """NaN/inf -> None so metrics.json stays valid JSON; numpy/torch scalars -> python."""
    if hasattr(x, "item") and not isinstance(x, (list, dict, str)):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def read_json(path: Path, default: Any = None) -> Any:
    """A JSON file, or ``default`` when it is missing or not valid JSON (for readers that only show things)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return default


def read_mapping(path: Path) -> dict:
    """A JSON object file nbft keeps (metrics.json, status.json, env.json) for a read-modify-write: {} when
    missing; a file that is not a JSON object is moved aside to ``<name>.corrupt-<time>`` and reported on
    stderr (and in status.json), never silently replaced by an empty one."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    try:
        obj = json.loads(text)
        if isinstance(obj, dict):
            return obj
        why = f"a JSON {type(obj).__name__}, not an object"
    except (ValueError, RecursionError) as e:
        why = f"not valid JSON ({str(e)[:120]})"
    base = f"{path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}"
    aside = next(path.with_name(f"{base}{f'-{i}' if i > 1 else ''}") for i in range(1, 10_000)
                 if not path.with_name(f"{base}{f'-{i}' if i > 1 else ''}").exists())
    os.replace(path, aside)  # callers hold the file's lock: no one else picks the same name
    message = f"{path} was {why}: moved aside to {aside.name}; starting it again (the numbers in it are kept there)"
    print(f"nbft: warning: {message}", file=sys.stderr)
    if path.name != "status.json":
        with contextlib.suppress(Exception):
            write_status(path.parent, append={"warnings": message})
    return {}


@dataclass
class Run:
    """One run folder, seen from one stage (notebook), with the device and precision that stage runs at."""

    path: Path
    stage: str
    device: str = "cpu"
    precision: str = "fp32"

    @property
    def artifacts(self) -> Path:
        """This stage's artifact folder (created)."""
        d = self.path / "artifacts" / self.stage
        d.mkdir(parents=True, exist_ok=True)
        return d

    def upstream(self, stage: str) -> Path | None:
        """Another stage's artifact folder in this run, if that stage saved anything."""
        d = self.path / "artifacts" / stage
        return d if d.is_dir() and any(d.iterdir()) else None

    def record(self, **metrics: Any) -> dict:
        """Merge ``metrics`` into metrics.json under this stage, with ``profile``: where the stage's time went so
        far (``timing.snapshot``: seconds of loading, training, generation, scoring, other); returns the stage's
        metrics."""
        return record_metrics(self.path, self.stage, {**metrics, "profile": timing.snapshot()})

    def metrics(self) -> dict:
        m = read_json(self.path / "metrics.json", {})
        return m.get(self.stage, {}) if isinstance(m, dict) else {}


def record_metrics(run_dir: Path, stage: str, metrics: dict) -> dict:
    """Merge ``metrics`` into ``metrics.json`` under ``stage`` (read-modify-write under the file's lock)."""
    path = Path(run_dir) / "metrics.json"
    with files.locked(path):
        all_metrics = read_mapping(path)
        section = all_metrics.get(stage)
        all_metrics[stage] = {**(section if isinstance(section, dict) else {}), **_clean(metrics)}
        files.write_json(path, all_metrics)
    return all_metrics[stage]


def clear_metrics(run_dir: Path, stage: str) -> None:
    """Drop ``stage``'s section of metrics.json (a resumed stage records it again from the start)."""
    path = Path(run_dir) / "metrics.json"
    with files.locked(path):
        all_metrics = read_mapping(path)
        if all_metrics.pop(stage, None) is not None:
            files.write_json(path, all_metrics)


def stage_ended_ok(run_dir: Path, stage: str) -> bool:
    """Did ``stage`` end ok in this run? status.json says so (a run ``nbft run`` made); in a run made by notebooks
    run by hand (no status.json), the stage recorded its metrics."""
    status = read_json(Path(run_dir) / "status.json", None)
    if isinstance(status, dict):
        stages = status.get("stages")
        return isinstance(stages, dict) and stages.get(stage) == "ok"
    metrics = read_json(Path(run_dir) / "metrics.json", {})
    return isinstance(metrics, dict) and stage in metrics


def _hold(path: Path) -> None:
    """This process (a notebook run by hand) holds the run's lock while it writes, as ``nbft run`` does: taken now
    (a dead holder's lock is taken over, a live one's refused: ``acquire``), given back when the kernel exits."""
    import atexit

    info = lock_info(path)
    if info and (info.get("pid"), info.get("host")) == (os.getpid(), platform.node()):
        return  # already this process's
    acquire(path)
    atexit.register(release, path)


def open_run(p, stage: str) -> Run:
    """The run folder a notebook writes into.

    In a pipeline, ``nbft run`` has made ``runs/<run_name>`` and holds its lock; a notebook run on its own (empty
    ``run_name``) gets a new ``runs/<timestamp>-<stage>``. Records env.json if absent. Runs are append-only: a
    notebook run by hand (not by ``nbft run``: ``NBFT_RUNNER`` unset) into a run where its stage already ended ok is
    refused before anything is written (``stage_ended_ok``), and so is one into a run a live process holds; otherwise
    it takes the run's lock like ``nbft run`` (``_hold``).
    """
    from . import models

    by_hand = os.environ.get(RUNNER_ENV) != "1"
    if p.run_name:
        path = run_dir(p.run_name, key="run_name")
        mine = (lock_info(path) or {}).get("pid") == os.getpid()  # this kernel's own run: its cells may run again
        if by_hand and not mine and path.is_dir() and stage_ended_ok(path, stage):
            raise RunError(f"run_name {p.run_name!r}: {stage} already ended ok in that run, and runs are never "
                           f"rewritten; leave run_name empty (a new run) or pick a new name, or continue its unfinished "
                           f"stages with: nbft run --resume {p.run_name}")
        info = lock_info(path) if by_hand else None
        if info and holder_alive(info) and (info.get("pid"), info.get("host")) != (os.getpid(), platform.node()):
            raise RunError(f"run_name {p.run_name!r}: that run is being written by {lock_holder(path, info)} "
                           "(or pick another run_name)")
        path.mkdir(parents=True, exist_ok=True)
    else:
        path = reserve_run_dir(prefix=stage)
    if by_hand:
        _hold(path)
    if not (path / "env.json").exists():
        write_env(path, p)
    device = models.pick_device(p.device)
    return Run(path, stage, device, models.pick_precision(p.precision, device))


# ---------------------------------------------------------------- environment capture

def _git_commit() -> dict:
    root = project_root(Path(__file__).parent) or Path(__file__).parent
    def git(*args):
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10).stdout.strip()
    try:
        return {"commit": git("rev-parse", "HEAD") or None, "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def _versions() -> dict:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for pkg in ("nbft", "torch", "transformers", "peft", "trl", "datasets", "accelerate", "papermill",
                "ipywidgets", "faiss-cpu", "numpy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def environment(p=None) -> dict:
    import torch

    from . import models

    env = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": _versions(),
        "platform": platform.platform(),
        "cpu": {"model": _cpu_model(), "cores": os.cpu_count(), "bf16": models.cpu_supports_bf16(),
                "torch_threads": torch.get_num_threads()},
        "gpu": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "git": _git_commit(),
        "hub_offline": models.hub_offline(),
    }
    if p is not None:
        env["seed"] = p.seed
        env["device"] = models.pick_device(p.device)
        env["precision"] = models.pick_precision(p.precision, env["device"])
        try:
            env["model"] = models.resolve(p.model).to_dict()
        except Exception as e:  # recorded, not fatal: the notebook fails on load with the full message
            env["model"] = {"spec": p.model, "error": str(e)}
    return env


def write_env(run_dir: Path, p=None) -> dict:
    env = environment(p)
    files.write_json(Path(run_dir) / "env.json", env)
    return env


# ---------------------------------------------------------------- status and listing

#: Bytes of trailing spaces status.json keeps (see ``write_status``).
STATUS_RESERVE = 1024


def write_status(run_dir: Path, append: dict | None = None, **fields: Any) -> dict:
    """Update status.json (under its lock): a dict value merges into a dict field, anything else replaces the
    field; ``append={"field": item}`` adds ``item`` to a list field."""
    path = Path(run_dir) / "status.json"
    with files.locked(path):
        status = read_mapping(path)
        for k, v in fields.items():
            if isinstance(v, dict) and isinstance(status.get(k), dict):
                status[k].update(v)
            else:
                status[k] = v
        for k, v in (append or {}).items():
            status[k] = [*(status[k] if isinstance(status.get(k), list) else []), v]
        text = json.dumps(status, indent=1, default=str)
        # a reserve of trailing spaces: on a full disk the next state ("failed: disk full") is written over the file's
        # own blocks (files.write_atomic's in_place_if_full), so the run can always say why it stopped
        files.write_atomic(path, text + "\n" + " " * STATUS_RESERVE, in_place_if_full=True)
    return status


# ---------------------------------------------------------------- the metrics vocabulary

#: The metric names stages share, what each means and the kind of value it holds. A key of metrics.json at any depth
#: that is one of these means exactly this; ``<name>_before`` / ``<name>_after``: the same measure of the stage's
#: model before / after its main training (a row of a comparison describes one model: no suffix); ``<name>_by_<x>``:
#: a mapping x -> <name>. Each stage builds its record in its own module (``<module>.metrics``);
#: tests/test_metrics.py holds every stage's keys to this table.
VOCABULARY: dict[str, tuple[str, str]] = {
    "seconds": ("seconds", "wall-clock seconds of the training (or the work) the record or row describes"),
    "tokens_per_second": ("rate", "training throughput: tokens trained on per second of training"),
    "gen_tokens_per_second": ("rate", "generation throughput: tokens generated per second"),
    "load_seconds": ("seconds", "wall-clock seconds to load a model (or a file of it) before it can answer"),
    "identical_share": ("share", "share of greedy replies that are word for word another runtime's replies to the same "
                        "prompts (0-1): 08's files against the model as it ran in the notebook"),
    "trainable_params": ("count", "weights that train"),
    "trainable_pct": ("rate", "weights that train, % of all the model's weights"),
    "total_params": ("count", "all the model's weights"),
    "size_mb": ("rate", "what is kept on disk, MB"),
    "peak_mem_mb": ("rate", "peak memory of the training, MB"),
    "steps": ("count", "optimizer steps"),
    "eval_loss": ("number", "loss on the validation split"),
    "eval_curve": ("rows", "the validation loss during training (eval_steps): one row per evaluation, {step, "
                   "eval_loss, train_loss: the mean training loss since the evaluation before, seconds: the "
                   "evaluation's}"),
    "best_step": ("count", "the optimizer step of the lowest validation loss on the eval_curve (the checkpoint early "
                  "stopping restores)"),
    "stopped_at_step": ("count", "the optimizer step early stopping ended the training at (None: it ran to the end)"),
    "accuracy": ("share", "share of held-out items answered or labelled right (0-1)"),
    "task_score": ("share", "share of held-out replies that pass the task's programmatic check (0-1)"),
    "score": ("number", "02's comparison score, the one score_metric names: the task score where the data has a check "
              "of its own, else a reference metric's mean (rouge_l, ...) over the held-out replies"),
    "answer_accuracy": ("share", "share of held-out replies that contain the reference answer (0-1)"),
    "general_qa": ("share", "share of general questions answered right: the forgetting probe (0-1)"),
    "ppl_general": ("ppl", "perplexity on held-out general text: the forgetting probe"),
    "n_train": ("count", "examples (documents, pairs, prompts) the stage's training, or the row's, used"),
    "n_eval": ("count", "held-out items scored"),
    "findings": ("text", "sentences written from the numbers"),
    "thresholds": ("mapping", "what the findings' words (learned, within, ...) meant, as numbers"),
    "benchmarks": ("mapping", "lm-evaluation-harness tasks (nbft.harness): per task its main metric (metric), "
                   "before and after (mean, 95% interval, n_eval, lm-eval's stderr) and the change (diff)"),
    "profile": ("mapping", "where the stage's time went: loading, training, generation, scoring, other (seconds)"),
    "reply_metrics": ("mapping", "held-out replies scored per example (nbft.scoring): metric -> {before, after, diff: "
                      "{mean, lo, hi (bootstrap 95%), n_eval}, higher_is_better}; a stage with several arms (methods, "
                      "policies, students): arm -> that"),
    "model_judge": ("mapping", "a model judge of paired replies (nbft.judge), both orders asked: win_rate of the tuned "
                    "over the base replies (mean, lo, hi, n_eval: a tie counts half), self_agreement, position_bias, "
                    "agreement_with_metrics; recorded only when a judge ran"),
}
#: Names no stage may use, and the vocabulary name they mean.
SYNONYMS = {"train_seconds": "seconds", "elapsed": "seconds", "time_s": "seconds", "secs": "seconds",
            "train_tokens_per_second": "tokens_per_second", "adapter_mb": "size_mb", "model_mb": "size_mb",
            "acc": "accuracy", "acc_by_type": "accuracy_by_type", "params": "total_params",
            "num_params": "total_params", "n_params": "total_params", "n_documents": "n_train",
            "n_examples": "n_train", "texts": "n_train", "n": "n_train", "ppl": "ppl_general"}
#: Keys renamed when the vocabulary came (issue 34): (stage, old dotted path, '*' for any one key; the new path, or
#: None where the value was a second copy of another key's). ``upgrade`` reads an older run's metrics.json through
#: them, so old runs still list and compare under the new names.
RENAMED = (
    ("02_sft", "train_seconds", "seconds"),
    ("02_sft", "train_tokens_per_second", "tokens_per_second"),
    ("02_sft", "scope_comparison.*.ppl_general_after", "scope_comparison.*.ppl_general"),
    ("02_sft", "scope_comparison.*.general_qa_after", "scope_comparison.*.general_qa"),
    ("02_sft", "quality_comparison.n_examples", "quality_comparison.n_train"),
    ("02_sft", "task_score_by_size", "score_by_size"),  # the task score then; score_metric says which score now
    ("03_peft", "methods.*.adapter_mb", "methods.*.size_mb"),
    ("04_rlhf", "seconds", "seconds_by_part"),  # was {reward_model, rl, dpo}: seconds is now their sum
    ("05_rag_vs_ft", "acc", "accuracy"),
    ("05_rag_vs_ft", "acc_by_type", "accuracy_by_type"),
    ("05_rag_vs_ft", "n_documents", None),  # n_train's number
    ("05_rag_vs_ft", "paraphrase_runs.*.texts", "paraphrase_runs.*.n_train"),
    ("06_classify", "n_test", None),  # n_eval's number
    ("07_distill", "teacher.params", "teacher.total_params"),
    ("07_distill", "student_base.params", "student_base.total_params"),
    ("07_distill", "methods.*.params", "methods.*.total_params"),
    ("07_distill", "imitation_data.n", "imitation_data.n_train"),
)


def _rename(node: dict, old: list[str], new: list[str] | None) -> None:
    """Move ``node[old...]`` to ``node[new...]`` in place ('*': every key at that level; None: drop it)."""
    head, rest = old[0], old[1:]
    keys = list(node) if head == "*" else [head] if head in node else []
    for k in keys:
        if rest:
            if isinstance(node[k], dict):
                _rename(node[k], rest, new[1:] if new else None)
        elif new is None:
            node.pop(k)
        else:
            target = k if new[0] == "*" else new[0]
            if target not in node:
                node[target] = node.pop(k)


def upgrade(metrics: dict) -> dict:
    """A run's metrics.json ({stage: section}) with the keys an older nbft wrote under their vocabulary names
    (``RENAMED``); a copy, the file is not touched. 04's ``seconds`` (the sum of its trainings) is filled in from
    ``seconds_by_part`` where an old run lacks it."""
    import copy

    out = copy.deepcopy(metrics)
    for stage, old, new in RENAMED:
        section = out.get(stage)
        if isinstance(section, dict):
            if stage == "04_rlhf" and old == "seconds" and not isinstance(section.get("seconds"), dict):
                continue  # already the new form: a number
            _rename(section, old.split("."), new.split(".") if new else None)
    rl = out.get("04_rlhf")
    if isinstance(rl, dict) and isinstance(rl.get("seconds_by_part"), dict) and "seconds" not in rl:
        rl["seconds"] = sum(v for v in rl["seconds_by_part"].values() if isinstance(v, (int, float)))
    return out


def _kind_ok(kind: str, v: Any, nested: bool = False) -> bool:
    """Does ``v`` hold what a vocabulary word of ``kind`` holds? A mapping of such values only where ``nested``
    (``<word>_by_<x>``) or for shares (05's accuracy: method -> open, multiple choice)."""
    if isinstance(v, dict) and kind != "mapping":
        return (nested or kind == "share") and all(_kind_ok(kind, x, nested) for x in v.values())
    number = isinstance(v, (int, float)) and not isinstance(v, bool)
    return {"seconds": v is None or number and v >= 0, "rate": v is None or number and v >= 0,  # None: not measured
            "count": v is None or isinstance(v, int) and not isinstance(v, bool) and v >= 0,
            "share": v is None or number and 0 <= v <= 1, "ppl": v is None or number and v > 0,
            "number": v is None or number, "text": isinstance(v, list) and all(isinstance(x, str) for x in v),
            "rows": isinstance(v, list) and all(isinstance(x, dict) for x in v),
            "mapping": isinstance(v, dict)}[kind]


def _word(key: str) -> str | None:
    """The vocabulary word ``key`` is a form of: itself, ``<word>_before`` / ``_after``, ``<word>_by_<x>``."""
    for form in (key, key.removesuffix("_before"), key.removesuffix("_after"), key.split("_by_")[0]):
        if form in VOCABULARY:
            return form
    return None


def vocabulary_problems(stage: str, section: dict) -> list[str]:
    """What in one stage's section of metrics.json breaks the vocabulary: a synonym of a vocabulary name, a key
    renamed since (``RENAMED``), a vocabulary name holding another kind of value (``seconds`` as a dict, a share
    above 1), a row of a comparison (a mapping of mappings) with ``_before``/``_after`` keys. Empty: none."""
    out = []
    renamed = [old.split(".") for s, old, _ in RENAMED  # a vocabulary name renamed away (04's seconds as a dict):
               if s == stage and _word(old.split(".")[-1]) is None]  # its kind check finds the old form

    def matches(path: list[str], pattern: list[str]) -> bool:
        return len(path) == len(pattern) and all(q in ("*", k) for k, q in zip(path, pattern))

    def walk(node: dict, path: list[str], in_row: bool) -> None:
        table = bool(node) and all(isinstance(v, dict) for v in node.values())
        for key, value in node.items():
            here = [*path, str(key)]
            name = ".".join(here)
            if key in SYNONYMS:
                out.append(f"{stage}.{name}: say '{SYNONYMS[key]}' (runs.VOCABULARY)")
            if any(matches(here, r) for r in renamed):
                out.append(f"{stage}.{name}: renamed (runs.RENAMED)")
            word = _word(str(key))
            if word and not _kind_ok(VOCABULARY[word][0], value, nested="_by_" in str(key)):
                out.append(f"{stage}.{name}: {str(value)[:60]!r} is not a {VOCABULARY[word][0]} "
                           f"({word}: {VOCABULARY[word][1]})")
            if in_row and str(key).endswith(("_before", "_after")):
                out.append(f"{stage}.{name}: a row describes one model; drop the _before/_after")
            if isinstance(value, dict) and word is None:
                walk(value, here, in_row=table)

    walk(section, [], in_row=False)
    return out


def flatten(metrics: dict, prefix: str = "") -> dict[str, Any]:
    """Nested metrics as dotted keys with scalar values (``{"acc": {"rag": {"open": .8}}}`` ->
    ``{"acc.rag.open": .8}``); lists of scalars are kept whole, lists of rows are left out
    (99_report shows those as their own tables), and so are the findings (sentences)."""
    out: dict[str, Any] = {}
    for k, v in metrics.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        elif isinstance(v, list):
            if all(not isinstance(x, (dict, list)) for x in v) and k != "findings":
                out[key] = v
        else:
            out[key] = v
    return out


def headline(stage: str, metrics: dict) -> dict[str, Any]:
    """The stage's headline metrics that are present (the stage table's ``headline``); else its first scalar ones."""
    flat = flatten(metrics)
    keys = [k for k in (params.STAGES[stage].headline if stage in params.STAGES else ()) if k in flat]
    if not keys:
        keys = [k for k, v in flat.items() if isinstance(v, (int, float, bool, str))][:4]
    return {k: flat[k] for k in keys}


def run_state(run_dir: Path, status: dict) -> str:
    """status.json's state, except that a run marked running whose ``.lock`` holder is gone is ``crashed``
    (a kill -9, a power cut: nothing could write the end state)."""
    state = str(status.get("state", ""))
    if state == "running":
        info = lock_info(run_dir)
        if info is None or holder_alive(info) is False:
            return "crashed"
    return state


def list_runs(root: Path | None = None, per_stage: int = 2) -> list[dict]:
    """One row per run folder: name, state (``run_state``), stages recorded and the first ``per_stage``
    headline metrics of each stage (the stage table's ``headline``, as in the run's index.html). A run whose metrics.json or
    status.json cannot be read, or has the wrong shape, is listed as ``unreadable`` (with why), the others as usual."""
    root = root or runs_root()
    rows = []
    if not root.is_dir():
        return rows
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            status, metrics = _strict_json(d / "status.json"), _strict_json(d / "metrics.json")
            if not all(isinstance(m, dict) for m in metrics.values()):
                raise ValueError("metrics.json: a stage's section is not an object")
            if not isinstance(status.get("stages", {}), dict):
                raise ValueError("status.json: 'stages' is not an object")
            metrics = upgrade(metrics)
            head = {f"{s}.{k}": v for s, m in metrics.items() for k, v in list(headline(s, m).items())[:per_stage]}
            state = run_state(d, status) if status else ("notebook" if metrics else "empty")
            rows.append({"name": d.name, "state": state, "stages": ",".join(metrics), "metrics": head, "path": str(d)})
        except (OSError, ValueError, TypeError, AttributeError, RecursionError) as e:
            rows.append({"name": d.name, "state": "unreadable", "stages": "", "metrics": {}, "path": str(d),
                         "error": f"{type(e).__name__}: {str(e)[:160]}"})
    return rows


def _strict_json(path: Path) -> dict:
    """A JSON object file, {} when missing; raises ValueError when it is not valid JSON or not an object."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    obj = json.loads(text)
    if not isinstance(obj, dict):
        raise ValueError(f"{path.name}: a JSON {type(obj).__name__}, not an object")
    return obj


def write_card(folder: Path, title: str, parameters=None, metrics: dict | None = None, **facts: Any) -> Path:
    """A short model/data card (card.md for people, card.json for programs) beside an artifact."""
    import dataclasses

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    card = {"title": title, **facts,
            "parameters": dataclasses.asdict(parameters) if dataclasses.is_dataclass(parameters) else parameters,
            "metrics": _clean(metrics or {})}
    files.write_json(folder / "card.json", card)
    lines = [f"# {title}", ""] + [f"- **{k}**: {v}" for k, v in facts.items()]
    if metrics:
        lines += ["", "## Metrics", ""] + [f"- {k}: {v:.4g}" if isinstance(v, float) else f"- {k}: {v}"
                                          for k, v in metrics.items()]
    if card["parameters"]:
        lines += ["", "## Parameters", ""] + [f"- {k}: {v!r}" for k, v in card["parameters"].items()]
    files.write_atomic(folder / "card.md", "\n".join(lines) + "\n")
    return folder / "card.md"


# ---------------------------------------------------------------- the models a run saved

@dataclass
class Saved:
    """A model folder a stage of a run saved (``saved_models``)."""

    name: str  # <stage>/<path under the stage's artifacts>
    path: Path
    kind: str  # adapter | model
    method: str  # the adapter's peft type (LORA, ...) or 'full model'
    base: str  # the adapter's base model spec ('' for a whole model)
    exportable: bool  # a generator that loads as one model folder (``models.resolve``: an adapter merged on demand)
    why: str = ""  # why not, when it is not

    def row(self) -> dict:
        return {"name": self.name, "kind": self.kind, "method": self.method, "exportable": self.exportable,
                "why not": self.why}


#: peft types whose adapter cannot be folded into the weights (they add virtual tokens to every prompt)
UNMERGEABLE = ("PROMPT_TUNING", "PREFIX_TUNING", "P_TUNING", "ADAPTION_PROMPT", "MULTITASK_PROMPT_TUNING", "CPT")


def adapter_base(folder: Path, config: dict) -> str:
    """The spec an adapter folder grew from: nbft's own record (``models.adapter_base``), else peft's
    ``base_model_name_or_path`` of its ``config`` ('' when neither says)."""
    from . import models

    if (folder / models.ADAPTER_BASE_FILE).is_file():
        return models.adapter_base(folder)
    return str(config.get("base_model_name_or_path") or "")


def _saved(stage_dir: Path, folder: Path) -> Saved | None:
    from . import models

    name = f"{stage_dir.name}/{folder.relative_to(stage_dir).as_posix()}"
    adapter = folder / "adapter_config.json"
    if adapter.is_file() and (folder / "adapter_model.safetensors").is_file():
        try:
            config = json.loads(adapter.read_text(encoding="utf-8"))
        except ValueError as e:
            return Saved(name, folder, "adapter", "?", "", False, f"adapter_config.json unreadable ({e})")
        method = str(config.get("peft_type", "?"))
        base = adapter_base(folder, config)
        if str(config.get("task_type", "")).endswith("SEQ_CLS"):
            return Saved(name, folder, "adapter", method, base, False, "a classifier (reward model), not a generator")
        if method in UNMERGEABLE:
            return Saved(name, folder, "adapter", method, base, False, "prompt learning: virtual tokens, no weights "
                         "to merge")
        if not base:
            return Saved(name, folder, "adapter", method, base, False, "its base model is not recorded")
        return Saved(name, folder, "adapter", method, base, True)
    if (folder / "config.json").is_file() and not models.folder_problem(folder):
        try:
            arch = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("architectures") or [""]
        except ValueError:
            arch = [""]
        if str(arch[0]).endswith("ForSequenceClassification"):
            return Saved(name, folder, "model", "full model", "", False, "a classifier, not a generator")
        return Saved(name, folder, "model", "full model", "", True)
    return None


def saved_models(run_dir: str | Path) -> list[Saved]:
    """Every model folder the run's stages saved under ``artifacts/`` (08's own exports aside), in stage order:
    02's main run, 03's methods, 04's policies (and its reward model), 07's student, one row each, by name
    (``02_sft/adapter``, ``03_peft/methods/lora``, ``04_rlhf/dpo_policy``, ...)."""
    art = Path(run_dir) / "artifacts"
    out = []
    for stage_dir in sorted(d for d in art.glob("*") if d.is_dir() and d.name != "08_export"):
        for folder in sorted(d for d in stage_dir.rglob("*") if d.is_dir()):
            if any(s.path in folder.parents for s in out):
                continue
            s = _saved(stage_dir, folder)
            if s is not None:
                out.append(s)
    return out


#: A stage name alone picks this model of the stage (its main one). 04: each method row's policy, in the table's order
#: (the offline rows first), then an older run's ``rl_policy``.
MAIN_MODEL = {"02_sft": ("02_sft/merged", "02_sft/adapter", "02_sft/model"), "07_distill": ("07_distill/distilled",),
              "04_rlhf": (*(f"04_rlhf/{n}_policy" for n in params.RLHF_METHODS), "04_rlhf/rl_policy"),
              "03_peft": ("03_peft/methods/lora",)}


def find_model(run_dir: str | Path, name: str, key: str = "model") -> Saved:
    """The saved model called ``name`` (as ``saved_models`` names it, a stage name alone for its main model, or the
    last part of a name when only one model has it), exportable or not. RunError (``key``: the parameter that
    named it) names the run's exportable models and the closest name."""
    import difflib

    run_dir = Path(run_dir)
    saved = saved_models(run_dir)
    by_name = {s.name: s for s in saved}
    hit = by_name.get(name)
    if hit is None and name in MAIN_MODEL:
        hit = next((by_name[n] for n in MAIN_MODEL[name] if n in by_name), None)
    if hit is None:
        tails = [s for s in saved if s.name.endswith("/" + name)]
        hit = tails[0] if len(tails) == 1 else None
    if hit is None:
        names = [s.name for s in saved if s.exportable]
        close = difflib.get_close_matches(name, [s.name for s in saved] + list(MAIN_MODEL), n=1, cutoff=0.4)
        raise RunError(f"{key} {params.show(name)}: run {run_dir.name} has no such saved model"
                       + (f"; did you mean '{close[0]}'?" if close else "")
                       + (f" It holds: {', '.join(names)}" if names else
                          " It holds none (run 02_sft, 03_peft, 04_rlhf or 07_distill first)"))
    return hit
