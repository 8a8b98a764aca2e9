"""Run folders: where a run lives, its metrics, its environment, its status.

::

    runs/<run-name>/
      <stage>.ipynb  <stage>.html   executed notebooks and their HTML
      params.yaml                   resolved parameters
      env.json                      versions, hardware, seed, git commit, model source
      metrics.json                  {"<stage>": {"<metric>": value}}
      status.json                   {"state": running|ok|failed, "stages": {...}}
      artifacts/<stage>/            datasets, adapters, ...
"""
from __future__ import annotations

import json
import math
import os
import platform
import random
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RUNS_ENV = "NBFT_RUNS_DIR"


def project_root(start: Path | None = None) -> Path | None:
    """Nearest folder at or above ``start`` (cwd) holding notebooks/ and params/."""
    here = (start or Path.cwd()).resolve()
    for d in (here, *here.parents):
        if (d / "notebooks").is_dir() and (d / "params").is_dir():
            return d
    return None


def runs_root() -> Path:
    if os.environ.get(RUNS_ENV):
        return Path(os.environ[RUNS_ENV]).expanduser().resolve()
    root = project_root()
    return (root or Path.cwd()) / "runs"


def new_run_name(prefix: str = "") -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{prefix}" if prefix else stamp


def unique_run_dir(name: str | None = None, prefix: str = "", root: Path | None = None) -> Path:
    """A new run folder path that does not exist yet.

    An explicit ``name`` that exists is an error (runs are never overwritten).
    """
    root = root or runs_root()
    if name:
        if not re.fullmatch(r"[A-Za-z0-9._-]+", name):
            raise ValueError(f"run name {name!r}: use letters, digits, '.', '_' and '-' only")
        path = root / name
        if path.exists():
            raise FileExistsError(f"run '{name}' already exists at {path}; runs are never overwritten — pick another --name")
        return path
    base = new_run_name(prefix)
    path, i = root / base, 1
    while path.exists():
        i += 1
        path = root / f"{base}-{i}"
    return path


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def _atomic_write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=False, default=_jsonable))
    tmp.replace(path)


def _jsonable(x):
    if hasattr(x, "item"):
        return x.item()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON serializable: {type(x).__name__}")


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
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return default


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
        """Merge ``metrics`` into metrics.json under this stage; returns the stage's metrics."""
        return record_metrics(self.path, self.stage, metrics)

    def metrics(self) -> dict:
        return read_json(self.path / "metrics.json", {}).get(self.stage, {})


def record_metrics(run_dir: Path, stage: str, metrics: dict) -> dict:
    path = Path(run_dir) / "metrics.json"
    all_metrics = read_json(path, {})
    all_metrics.setdefault(stage, {}).update(_clean(metrics))
    _atomic_write_json(path, all_metrics)
    return all_metrics[stage]


def open_run(p, stage: str) -> Run:
    """The run folder a notebook writes into.

    In a pipeline, ``nbft run`` has made ``runs/<run_name>``; a notebook run on its own
    (empty ``run_name``) gets a new ``runs/<timestamp>-<stage>``. Records env.json if absent.
    """
    from . import models

    if p.run_name:
        path = runs_root() / p.run_name
    else:
        path = unique_run_dir(prefix=stage)
    path.mkdir(parents=True, exist_ok=True)
    if not (path / "env.json").exists():
        write_env(path, p)
    device = models.pick_device(p.device)
    return Run(path, stage, device, models.pick_precision(p.precision, device))


#: Library messages a notebook reader cannot act on: transformers 5 renamed gradient checkpointing; peft
#: ignores position ids of prompt-learning methods by design; peft BEFT on Llama (no biases) — the bitfit
#: row already says it is not mergeable. Silenced by ``setup`` (inside a notebook), never on import.
QUIET_WARNINGS = (
    (r".*is deprecated and will be removed in v6.*", FutureWarning),
    (r"Position ids are not supported for parameter efficient tuning.*", Warning),
    (r"Detected that the base layer has no bias term.*", Warning),
)


def setup(stage: str, namespace: dict) -> tuple[Any, Run]:
    """Every notebook's setup cell: validate the parameters the ``parameters`` cell (or Papermill) put in
    ``namespace``, seed everything, open the run folder, pick device and precision, print a header.

    Returns ``(p, run)``: the stage's parameter dataclass and its :class:`Run` (``run.device``, ``run.precision``)::

        p, run = nbft.setup("02_sft", globals())
    """
    import warnings

    from . import params

    for message, category in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    p = params.from_namespace(stage, namespace)
    seed_everything(p.seed)
    run = open_run(p, stage)
    print(f"{stage}: run folder {run.path}\nmodel: {p.model}   device: {run.device}   precision: {run.precision}"
          f"   seed: {p.seed}")
    return p, run


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
        "hub_offline": os.environ.get("HF_HUB_OFFLINE"),
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
    _atomic_write_json(Path(run_dir) / "env.json", env)
    return env


# ---------------------------------------------------------------- status and listing

def write_status(run_dir: Path, **fields: Any) -> dict:
    path = Path(run_dir) / "status.json"
    status = read_json(path, {})
    for k, v in fields.items():
        if isinstance(v, dict) and isinstance(status.get(k), dict):
            status[k].update(v)
        else:
            status[k] = v
    _atomic_write_json(path, status)
    return status


#: stage -> its headline metrics, in order: the run's index.html, 99_report's key figures and ``nbft list``
#: (the first two) show these.
HEADLINE = {
    "01_data_prep": ["n_raw", "n_train", "n_validation", "n_test"],
    "02_sft": ["task_score_before", "task_score_after", "ppl_general_before", "ppl_general_after", "train_seconds"],
    "03_peft": ["n_methods_ok", "adapter_switch_ok", "lora_vs_full.lora_task_score", "lora_vs_full.full_task_score"],
    "04_rlhf": ["rm_accuracy", "winrate_rl_vs_sft", "winrate_dpo_vs_sft", "rl_kl"],
    "05_rag_vs_ft": ["acc.rag.open", "acc.ft.open", "acc.ft_paraphrase.open", "retrieval_ms_p50", "n_eval"],
    "06_classify": ["methods.features_llm.accuracy", "methods.lora.accuracy", "shift.target_accuracy",
                    "conditional.control"],
    "07_distill": ["methods.imitation.style_gap_closed", "methods.imitation.knowledge_gap_closed",
                   "methods.distill.knowledge_gap_closed", "speedup"],
    "99_report": ["compare_runs", "n_tables"],
}


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
    """The stage's headline metrics that are present (``HEADLINE``); else its first scalar ones."""
    flat = flatten(metrics)
    keys = [k for k in HEADLINE.get(stage, []) if k in flat]
    if not keys:
        keys = [k for k, v in flat.items() if isinstance(v, (int, float, bool, str))][:4]
    return {k: flat[k] for k in keys}


def list_runs(root: Path | None = None, per_stage: int = 2) -> list[dict]:
    """One row per run folder: name, state, stages recorded and the first ``per_stage`` headline
    metrics of each stage (``HEADLINE``, as in the run's index.html)."""
    root = root or runs_root()
    rows = []
    if not root.is_dir():
        return rows
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        status = read_json(d / "status.json", {})
        metrics = read_json(d / "metrics.json", {})
        head = {f"{s}.{k}": v for s, m in metrics.items() for k, v in list(headline(s, m).items())[:per_stage]}
        rows.append({"name": d.name, "state": status.get("state", "notebook" if metrics else "empty"),
                     "stages": ",".join(metrics), "metrics": head, "path": str(d)})
    return rows


def write_card(folder: Path, title: str, parameters=None, metrics: dict | None = None, **facts: Any) -> Path:
    """A short model/data card (card.md for people, card.json for programs) beside an artifact."""
    import dataclasses

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    card = {"title": title, **facts,
            "parameters": dataclasses.asdict(parameters) if dataclasses.is_dataclass(parameters) else parameters,
            "metrics": _clean(metrics or {})}
    _atomic_write_json(folder / "card.json", card)
    lines = [f"# {title}", ""] + [f"- **{k}**: {v}" for k, v in facts.items()]
    if metrics:
        lines += ["", "## Metrics", ""] + [f"- {k}: {v:.4g}" if isinstance(v, float) else f"- {k}: {v}"
                                          for k, v in metrics.items()]
    if card["parameters"]:
        lines += ["", "## Parameters", ""] + [f"- {k}: {v!r}" for k, v in card["parameters"].items()]
    (folder / "card.md").write_text("\n".join(lines) + "\n")
    return folder / "card.md"
