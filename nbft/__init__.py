"""nbft: the helper package behind the nbft notebooks.

Core (no stage knowledge): params (with the stage table), settings, tasks, corpora, models, data, train, evaluate,
runs, kernel, export, report, widgets, cli. One module per stage, owning its glue and its findings: sft (02), peft
(03), rlhf (04), knowledge + rag (05), classify (06), distill (07). docs/architecture.md has the map.

Importing nbft changes no global state; a notebook's setup cell calls ``nbft.setup(stage, globals())``.
"""
__version__ = "0.1.0"


def setup(stage: str, namespace: dict):
    """Validate the notebook's parameters, seed, open the run folder, pick device and precision, print a
    header; returns ``(p, run)``. See :func:`nbft.kernel.setup`."""
    from .kernel import setup as _setup

    return _setup(stage, namespace)
