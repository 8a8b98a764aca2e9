"""Training in several processes through accelerate (``num_processes`` > 1, a common parameter).

Every trainer nbft runs is built by a function (``train.fit(build)``); with one process ``fit`` calls it and
trains. With ``num_processes`` > 1 it hands the function to :func:`run`, which starts the processes with
accelerate's ``notebook_launcher`` (from a notebook or any Python process; gloo on CPU, NCCL on GPUs). Each
process builds the trainer itself — transformers and accelerate read the process group from the environment the
launcher sets, shard every batch over the ranks and average the gradients — and trains. Rank 0 then writes the
trained model and the trainer's log to a scratch folder; every rank writes which examples it saw (``rank<N>.json``:
a hash per example, the evidence that the ranks split the data). The calling process loads the model back and
goes on in one process, as after a one-process training. Nothing here distributes anything itself.

Under ``accelerate launch`` / torchrun (the process is already one rank of several: ``WORLD_SIZE`` is set) the
trainer simply trains in this process: the launcher did the launching.

What is not carried into the processes: live training monitors (ipywidgets cannot be updated from a forked
process; the log is complete afterwards) and checkpoints (a multi-process training restarts from its start; with
early stopping rank 0 still saves at every evaluation, into the trainer's scratch folder, for the best one to be
restored at the end).
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

from . import settings, trl_patches


def processes(num_processes: int = 1, accelerate_config: str = "") -> tuple[int, int]:
    """(processes, port) trainers train in: ``num_processes``, or an accelerate config file's ``num_processes`` and
    ``main_process_port`` when ``accelerate_config`` names one and ``num_processes`` is 1 (``kernel.setup`` keeps
    them in ``settings``)."""
    n, port = int(num_processes), 29500
    if accelerate_config:
        cfg = read_config(accelerate_config)
        n = n if n > 1 else max(1, int(cfg.num_processes or 1))
        port = int(cfg.main_process_port or port)
    return n, port


def read_config(path: str | Path):
    """An accelerate config file, through accelerate's own parser (unknown keys refused)."""
    from accelerate.commands.config.config_args import load_config_from_file

    return load_config_from_file(str(path))


def in_launched_process() -> bool:
    """True inside a process an outside launcher started as one rank of several (accelerate launch, torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def wanted() -> bool:
    """Should ``train.fit`` launch processes for the next training?"""
    return settings.current().num_processes > 1 and not in_launched_process()


def _example_hash(feature) -> str:
    """A short hash of one example as the collator gets it (token ids, or a prompt for the RL trainers)."""
    blob = json.dumps(feature, sort_keys=True, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def _record_examples(trainer, seen: list[str]) -> None:
    """Wrap the collator of the trainer's training batches: every training example this rank is given is hashed
    into ``seen`` (not the validation examples of evaluations during training: their batches keep the plain
    collator)."""
    collate, make = trainer.data_collator, trainer.get_train_dataloader

    def recording(features):
        seen.extend(_example_hash(f) for f in features)
        return collate(features)

    def train_dataloader():  # the data loader keeps the collator it was made with
        trainer.data_collator = recording
        try:
            return make()
        finally:
            trainer.data_collator = collate

    trainer.get_train_dataloader = train_dataloader


def _without_widgets(trainer) -> None:
    for cb in list(trainer.callback_handler.callbacks):
        if type(cb).__module__.startswith("nbft.widgets"):
            trainer.remove_callback(cb)


def _worker(build: Callable, out: str, evaluate: bool, finish: Callable, around: Callable) -> None:
    """One rank: build the trainer (accelerate reads the process group from the launcher's environment), train
    (inside ``around(trainer)``), write what this rank saw; rank 0 writes the model (``finish``-ed) and the log."""
    from accelerate import PartialState

    from transformers import PrinterCallback

    trainer = build()
    state = PartialState()
    if state.device.type == "cpu":  # the processes share the cores this one had (fork keeps its thread count)
        torch.set_num_threads(max(1, torch.get_num_threads() // state.num_processes))
    trainer.remove_callback(PrinterCallback)
    _without_widgets(trainer)
    if not trainer.args.load_best_model_at_end:  # early stopping: its best checkpoint, in the trainer's scratch folder
        trainer.args.save_strategy = "no"
    seen: list[str] = []
    _record_examples(trainer, seen)
    t0 = time.perf_counter()
    with around(trainer):
        trainer.train()
    seconds = time.perf_counter() - t0
    logged = len(trainer.state.log_history)  # the log of the training, before the final evaluation
    with around(trainer):
        eval_loss = trainer.evaluate()["eval_loss"] if evaluate else None
    folder = Path(out)
    (folder / f"rank{state.process_index}.json").write_text(json.dumps(
        {"rank": state.process_index, "world_size": state.num_processes, "examples": seen,
         "steps": trainer.state.global_step, "backend": str(getattr(state, "backend", ""))}))
    state.wait_for_everyone()
    if state.is_main_process:
        torch.save(finish(trainer.model), folder / "model.pt")
        (folder / "result.json").write_text(json.dumps(
            {"seconds": seconds, "steps": trainer.state.global_step, "max_steps": trainer.state.max_steps,
             "n_logged": logged, "eval_loss": eval_loss,
             "log_history": trainer.state.log_history, "trainer": type(trainer).__name__}, default=float))
    state.wait_for_everyone()


def run(build: Callable, evaluate: bool, finish: Callable, around: Callable) -> dict[str, Any]:
    """Train what ``build`` makes in ``settings.num_processes`` processes (accelerate's ``notebook_launcher``), as
    ``train.fit`` would: inside ``around(trainer)`` (its CPU layouts), the model ``finish``-ed;
    returns {"model", "seconds", "steps", "max_steps", "n_logged" (log entries of the training, before the final
    evaluation), "eval_loss", "log_history", "trainer", "ranks"} where
    ``ranks`` is each rank's record (``rank``, ``world_size``, ``examples``: hashes of the examples it saw,
    ``steps``)."""
    from accelerate import notebook_launcher

    where = settings.current()
    trl_patches.reset_accelerate_state()  # this process's one-process trainers are done
    with tempfile.TemporaryDirectory(prefix="nbft-launch-") as out:
        t0 = time.perf_counter()
        notebook_launcher(_worker, args=(build, out, evaluate, finish, around), num_processes=where.num_processes,
                          use_port=str(where.port))
        wall = time.perf_counter() - t0
        trl_patches.reset_accelerate_state()
        folder = Path(out)
        if not (folder / "result.json").is_file():
            raise RuntimeError(f"the {where.num_processes} training processes ended without rank 0's result")
        result = json.loads((folder / "result.json").read_text())
        result["model"] = torch.load(folder / "model.pt", weights_only=False)
        result["ranks"] = [json.loads(f.read_text()) for f in sorted(folder.glob("rank*.json"))]
        result["wall_seconds"] = wall
    return result
