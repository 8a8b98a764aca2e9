"""What a stage's kernel sets up once for every training and evaluation in it: one object, in one place.

``kernel.setup`` (every notebook's setup cell) builds a :class:`Settings` from the stage's parameters and its run
folder and makes it this process's (``use``); the code that trains and evaluates reads it here (``current()``):

- ``checkpoints.save_args`` / ``checkpoints.prepare`` (through ``train.trainer_args`` / ``train.fit``): trainers
  checkpoint into ``checkpoints`` (only in a stage ``nbft run`` executes), each checkpointing call numbered
  (``training_calls``); ``tracking.report_to``: they report to ``report_to`` under ``tracking``;
- ``evaluate.memo``: evaluation results of loaded models are kept in ``eval_cache``;
- ``tracking.attach``: each training call's tracker run is named after ``stage`` and ``tracked_calls``;
- ``launch.wanted`` / ``launch.run``: ``num_processes`` processes on ``port``.

Outside a stage (a test, a script) the defaults hold: nothing is written, one process. A test that needs a setting
uses ``using(Settings(...))``. A leaf: it imports nothing of nbft.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Settings:
    """The process-wide settings of a stage's kernel, and the counts they keep while it runs."""

    stage: str = ""
    checkpoints: Path | None = None  # <run>/checkpoints/<stage>/: trainers checkpoint and resume here (None: never)
    save_steps: int = 0  # a checkpoint every this many optimizer steps (with ``checkpoints``)
    eval_cache: Path | None = None  # <run>/cache/: evaluation results of loaded (untrained) models (None: not kept)
    tracking: Path | None = None  # <run>/tracking/ when ``report_to`` names a tracker (None: no tracker)
    report_to: tuple[str, ...] = ()  # the trackers every trainer reports to
    num_processes: int = 1  # processes every training runs in (``launch``)
    port: int = 29500  # the processes' rendezvous port
    training_calls: int = 0  # checkpointing training calls so far (``checkpoints.prepare``: each call's folder)
    tracked_calls: int = 0  # training calls reported to the trackers so far (``tracking.attach``)
    eval_hits: int = 0  # ``evaluate.memo``: results found in ``eval_cache``
    eval_misses: int = 0  # ... and computed


_CURRENT = [Settings()]


def current() -> Settings:
    """This process's settings (``kernel.setup`` made them; the defaults outside a stage)."""
    return _CURRENT[0]


def use(settings: Settings) -> Settings:
    """Make ``settings`` this process's; returns the ones they replace."""
    old, _CURRENT[0] = _CURRENT[0], settings
    return old


@contextlib.contextmanager
def using(settings: Settings):
    """``settings`` for the block, the earlier ones after it."""
    old = use(settings)
    try:
        yield settings
    finally:
        use(old)
