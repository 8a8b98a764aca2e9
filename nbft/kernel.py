"""A stage's kernel: what every notebook's setup cell does, once, before the stage's first step.

``setup(stage, globals())`` (``nbft.setup``) validates the parameters the ``parameters`` cell (or Papermill) put in
the notebook's namespace, seeds everything, opens the run folder (``runs.open_run``), records what this kernel runs
with in env.json (``kernel_env``), makes the stage's process-wide settings this process's (``stage_settings`` ->
``nbft.settings``: checkpoints, the evaluation cache, trackers, processes; read by checkpoints, evaluate, tracking and
launch from there), starts the stage's time profile, shows the parameters that differ from the defaults (the
report's first output: ``report.parameters_html``) and prints a header with paths relative to the run folder.
"""
from __future__ import annotations

import os
import random
import sys
import warnings
from typing import Any

from IPython.display import HTML, display

from . import files, launch, models, params, report, runs, settings, timing, tracking

#: Library messages a notebook reader cannot act on: transformers 5 renamed gradient checkpointing; peft
#: ignores position ids of prompt-learning methods by design; peft BEFT on Llama (no biases) — the bitfit
#: row already says it is not mergeable. Silenced by ``setup`` (inside a notebook), never on import.
QUIET_WARNINGS = (
    (r".*is deprecated and will be removed in v6.*", FutureWarning),
    (r"Position ids are not supported for parameter efficient tuning.*", Warning),
    (r"Detected that the base layer has no bias term.*", Warning),
)


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def stage_settings(p, run: runs.Run) -> settings.Settings:
    """The process-wide settings of stage ``run.stage`` with parameters ``p`` (``Common``): trainers checkpoint into
    ``<run>/checkpoints/<stage>/`` every ``save_steps`` (only in a stage ``nbft run`` executes: it deletes them when
    the stage ends ok and resumes from them with ``--resume``), evaluation results of loaded models are kept in
    ``<run>/cache/``, trainers report to ``report_to`` under ``<run>/tracking/``, and train in ``num_processes``
    processes (or an accelerate config's)."""
    runner = os.environ.get(runs.RUNNER_ENV) == "1"
    n, port = launch.processes(p.num_processes, p.accelerate_config)
    return settings.Settings(
        stage=run.stage,
        checkpoints=run.path / runs.CHECKPOINTS / run.stage if p.save_steps and runner else None,
        save_steps=p.save_steps, eval_cache=run.path / runs.EVAL_CACHE,
        tracking=tracking.tracking_folder(run.path, p.report_to), report_to=tuple(tracking.trackers(p.report_to)),
        num_processes=n, port=port)


def setup(stage: str, namespace: dict) -> tuple[Any, runs.Run]:
    """Every notebook's setup cell: validate the parameters (``run_name`` included: a name that would leave runs/
    fails here), seed everything, open the run folder, record this kernel's environment, make the stage's settings
    this process's (``stage_settings``), start the stage's time profile (``timing``), print a header.

    Returns ``(p, run)``: the stage's parameter dataclass and its :class:`runs.Run` (``run.device``,
    ``run.precision``)::

        p, run = nbft.setup("02_sft", globals())
    """
    for message, category in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    p = params.from_namespace(stage, namespace)
    timing.reset()  # the stage's profile (Run.record writes it) starts here
    seed_everything(p.seed)
    run = runs.open_run(p, stage)
    record_kernel_env(run)
    where = stage_settings(p, run)
    settings.use(where)
    if where.tracking is not None:
        tracking.environment(where.tracking, run.path.name)
    display(HTML(report.parameters_html(stage, p, run.path)))  # the report's first output: what differs from the defaults
    print(f"{stage}: run folder {files.relative(run.path, run.path)}\nmodel: {files.relative(p.model, run.path)}"
          f"   device: {run.device}   precision: {run.precision}   seed: {p.seed}")
    return p, run


def kernel_env(run: runs.Run) -> dict:
    """What this process (a notebook's kernel) actually runs with: python, pid, threads, hub offline mode as
    huggingface_hub sees it, device and precision. ``setup`` records it in env.json under kernels.<stage>."""
    import torch

    return {"python": sys.executable, "pid": os.getpid(), "torch_threads": torch.get_num_threads(),
            "hub_offline": models.hub_offline(), "device": run.device, "precision": run.precision,
            "env": {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "HF_HUB_DISABLE_TELEMETRY", "OMP_NUM_THREADS",
                                                    "TOKENIZERS_PARALLELISM", runs.RUNS_ENV, "WORLD_SIZE", "RANK",
                                                    "LOCAL_RANK", "MASTER_ADDR", "MALLOC_MMAP_THRESHOLD_",
                                                    "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")}}


def record_kernel_env(run: runs.Run) -> None:
    """``kernel_env`` into the run's env.json under kernels.<stage> (read-modify-write under the file's lock)."""
    path = run.path / "env.json"
    with files.locked(path):
        env = runs.read_mapping(path)
        kernels = env.get("kernels") if isinstance(env.get("kernels"), dict) else {}
        env["kernels"] = {**kernels, run.stage: kernel_env(run)}
        files.write_json(path, env)
