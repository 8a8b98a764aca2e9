"""Where a stage's time goes: seconds per kind of work, measured where the work happens (a leaf module).

``section(kind)`` times a block and adds its wall time to ``kind``; sections nest, and an inner section's time
counts for the inner kind only (a generation inside a training step is generation, not also training). The kinds
nbft uses: ``loading`` (``models.load_model``), ``training`` (``train.fit``: every trainer, rollouts of online RL
included), ``generation`` (``evaluate.generate``), ``scoring`` (``evaluate.perplexity`` and the classifier's
batched forward passes). ``Run.record`` writes the totals so far as the stage's ``profile`` in metrics.json, with
``other``: the rest of the stage's time since ``reset`` (the stage's setup calls it).
"""
from __future__ import annotations

import contextlib
import functools
import time

KINDS = ("loading", "training", "generation", "scoring")

_totals: dict[str, float] = {}
_stack: list[str] = []
_started = [time.perf_counter()]


def reset() -> None:
    """Start a new profile (a stage's setup)."""
    _totals.clear()
    _stack.clear()
    _started[0] = time.perf_counter()


@contextlib.contextmanager
def section(kind: str):
    """Add the block's wall time to ``kind``, minus the time of sections nested in it."""
    _stack.append(kind)
    t0 = time.perf_counter()
    try:
        yield
    finally:
        elapsed = time.perf_counter() - t0
        _stack.pop()
        _totals[kind] = _totals.get(kind, 0.0) + elapsed
        if _stack:  # the enclosing section did not spend this time on its own kind
            _totals[_stack[-1]] = _totals.get(_stack[-1], 0.0) - elapsed


def timed(kind: str):
    """Decorator: every call of the function is a ``section(kind)``."""
    def wrap(fn):
        @functools.wraps(fn)
        def inner(*args, **kwargs):
            with section(kind):
                return fn(*args, **kwargs)
        return inner
    return wrap


def snapshot() -> dict[str, float]:
    """Seconds per kind so far (every kind of ``KINDS``, 0 where none ran), ``other`` (the rest since ``reset``) and
    ``total``."""
    total = time.perf_counter() - _started[0]
    out = {k: round(_totals.get(k, 0.0), 3) for k in (*KINDS, *sorted(set(_totals) - set(KINDS)))}
    out["other"] = round(max(0.0, total - sum(_totals.values())), 3)
    out["total"] = round(total, 3)
    return out

