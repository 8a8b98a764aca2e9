"""Experiment trackers: ``report_to`` (a common parameter) goes to every trainer nbft builds, and the run's
parameters and final metrics go to the same trackers when a stage ends, all under ``runs/<run>/tracking/``.

One row per tracker (``TRACKERS``): the module it needs (``pip install -e .[tracking]`` installs all four) and
how it is pointed at the run folder. transformers' own callbacks do the per-step logging (``report_to`` in the
trainer arguments); this module only says where they write (``kernel.setup`` puts the stage's trackers and folder in
``settings``) and adds the end-of-stage record:

- tensorboard: event files in ``tracking/tensorboard/<stage>/<NN>-<trainer>/`` (one folder per training call) and
  ``tracking/tensorboard/<stage>/final/`` (the stage's metrics as scalars at step 0, its parameters as text);
- mlflow: a local file store ``tracking/mlflow/`` (experiment = the run's name, one mlflow run per training call
  and one ``<stage>`` run with the parameters and final metrics);
- wandb: offline files under ``tracking/wandb/`` (``wandb sync`` uploads them later);
- trackio: its local database under ``tracking/trackio/``.
"""
from __future__ import annotations

import importlib.util
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import settings
from .params import ParamError


class TrackingError(ParamError):
    """``report_to`` names a tracker that is not installed (a bad input: ``nbft run`` exits 2)."""


def trackers(report_to) -> list[str]:
    """The trackers ``report_to`` asks for (``[]`` or ``["none"]``: none)."""
    return [t for t in (report_to or []) if t != "none"]


def check(report_to) -> None:
    """Every tracker ``report_to`` names is installed; else one message naming the missing ones and the install."""
    missing = [t for t in trackers(report_to) if importlib.util.find_spec(TRACKERS[t].module) is None]
    if missing:
        raise TrackingError(f"report_to: {', '.join(missing)} not installed; pip install -e '.[tracking]' "
                            f"(or pip install {' '.join(TRACKERS[t].module for t in missing)})")


def tracking_folder(run_dir: str | Path, report_to) -> Path | None:
    """``<run_dir>/tracking/`` when ``report_to`` names a tracker, else None (``kernel.setup`` keeps it in
    ``settings.tracking``)."""
    return Path(run_dir) / "tracking" if trackers(report_to) else None


def environment(folder: Path, run_name: str) -> None:
    """Point each tracker's own settings at the run's tracking folder (transformers' callbacks read them):
    ``kernel.setup`` calls it when the stage reports to a tracker, ``log_stage`` before its final record."""
    os.environ["MLFLOW_TRACKING_URI"] = (folder / "mlflow").resolve().as_uri()
    os.environ["MLFLOW_EXPERIMENT_NAME"] = run_name
    # mlflow 3.17 keeps its file store "in maintenance mode" behind this switch; a folder of plain files is what a
    # run folder holds (a sqlite database would need mlflow's server extras)
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    os.environ["WANDB_MODE"] = "offline"
    os.environ["WANDB_DIR"] = str(folder / "wandb")
    os.environ.setdefault("WANDB_PROJECT", "nbft")
    os.environ["TRACKIO_DIR"] = str(folder / "trackio")
    os.environ["HF_MLFLOW_LOG_ARTIFACTS"] = "0"  # metrics and parameters, not copies of the checkpoints
    os.environ.setdefault("TRACKIO_PROJECT", "nbft")
    (folder / "wandb").mkdir(parents=True, exist_ok=True)


def report_to() -> list[str] | str:
    """``report_to`` for the trainer arguments: the stage's trackers (``settings.report_to``), or ``"none"``."""
    where = settings.current()
    return list(where.report_to) if where.tracking is not None else "none"


def attach(trainer) -> None:
    """Before ``trainer.train()``: name this training call (``<stage>-<NN>-<Trainer>``, the mlflow/wandb/trackio
    run name) and give its tensorboard events their own folder under the run's ``tracking/``."""
    where = settings.current()
    if where.tracking is None:
        return
    where.tracked_calls += 1
    name = f"{where.tracked_calls:02d}-{type(trainer).__name__}"
    trainer.args.run_name = f"{where.stage}-{name}"
    if hasattr(trainer.args, "project"):  # trackio's project (transformers' default: "huggingface")
        trainer.args.project = os.environ.get("TRACKIO_PROJECT", "nbft")
    from transformers.integrations import TensorBoardCallback

    for cb in trainer.callback_handler.callbacks:
        if isinstance(cb, TensorBoardCallback):
            cb.logging_dir = str(where.tracking / "tensorboard" / where.stage / name)


def numbers(flat: dict) -> dict[str, float]:
    """The finite numbers of flattened metrics (``runs.flatten``: dotted keys): what a tracker can plot."""
    return {k: float(v) for k, v in flat.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def _flat_params(parameters: dict) -> dict[str, str]:
    return {k: str(v)[:500] for k, v in parameters.items()}


def _final_tensorboard(folder: Path, run_name: str, stage: str, params: dict, values: dict) -> Path:
    from torch.utils.tensorboard import SummaryWriter

    out = folder / "tensorboard" / stage / "final"
    with SummaryWriter(log_dir=str(out)) as w:
        w.add_text("parameters", "\n".join(f"    {k}: {v}" for k, v in params.items()), 0)
        for k, v in values.items():
            w.add_scalar(f"final/{k}", v, 0)
    return out


def _final_mlflow(folder: Path, run_name: str, stage: str, params: dict, values: dict) -> Path:
    import mlflow

    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    mlflow.set_experiment(run_name)
    with mlflow.start_run(run_name=stage):
        mlflow.log_params(params)
        mlflow.log_metrics({_mlflow_key(k): v for k, v in values.items()})
    return folder / "mlflow"


def _final_wandb(folder: Path, run_name: str, stage: str, params: dict, values: dict) -> Path:
    import wandb

    r = wandb.init(project=os.environ["WANDB_PROJECT"], name=f"{run_name}-{stage}", mode="offline",
                   dir=os.environ["WANDB_DIR"], config=params, reinit="finish_previous")
    r.summary.update(values)
    r.finish()
    return folder / "wandb"


def _final_trackio(folder: Path, run_name: str, stage: str, params: dict, values: dict) -> Path:
    import trackio

    trackio.init(project=os.environ["TRACKIO_PROJECT"], name=f"{run_name}-{stage}", config=params)
    trackio.log(values)
    trackio.finish()
    return folder / "trackio"


@dataclass(frozen=True)
class Tracker:
    """One row of ``TRACKERS``: the module a tracker needs, and how the stage's parameters and final metrics reach
    it (``final(tracking folder, run name, stage, parameters, numbers) -> where it wrote``). Its per-step logging is
    transformers' own callback, pointed at the run folder by ``environment``."""

    name: str
    module: str
    final: Callable[[Path, str, str, dict, dict], Path]


#: tracker -> its row. Adding a tracker is adding a row (and its name to ``params.TRACKERS``).
TRACKERS: dict[str, Tracker] = {t.name: t for t in [
    Tracker("tensorboard", "tensorboard", _final_tensorboard),
    Tracker("mlflow", "mlflow", _final_mlflow),
    Tracker("wandb", "wandb", _final_wandb),
    Tracker("trackio", "trackio", _final_trackio),
]}


def log_stage(run_dir: str | Path, stage: str, report_to, parameters: dict, flat_metrics: dict) -> list[str]:
    """The stage's parameters and final metrics (flattened: ``runs.flatten``) to every tracker of ``report_to``
    (``nbft run`` calls it when a stage ends ok). Returns what was written, one line per tracker."""
    names = trackers(report_to)
    if not names:
        return []
    folder = Path(run_dir) / "tracking"
    environment(folder, Path(run_dir).name)
    values, params = numbers(flat_metrics), _flat_params(parameters)
    return [f"{name}: {TRACKERS[name].final(folder, Path(run_dir).name, stage, params, values)}" for name in names]


def _mlflow_key(key: str) -> str:
    """mlflow metric names: letters, digits, '_', '-', '.', ' ', ':' and '/' only."""
    import re

    return re.sub(r"[^A-Za-z0-9_\-. :/]", "_", key)[:250]
