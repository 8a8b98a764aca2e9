"""nbft: the helper package behind the nbft notebooks.

Flat modules, one per concern: params, models, data, corpora, train, peft_methods, rlhf, rag, knowledge,
evaluate, widgets, runs, cli.
"""
__version__ = "0.1.0"

import warnings as _warnings

# Library-internal deprecations a notebook reader cannot act on (transformers 5 renamed
# gradient checkpointing; peft ignores position ids of prompt-learning methods by design).
_warnings.filterwarnings("ignore", message=r".*is deprecated and will be removed in v6.*", category=FutureWarning)
_warnings.filterwarnings("ignore", message=r"Position ids are not supported for parameter efficient tuning.*")
# peft BEFT on Llama (no biases): the bitfit row already says it is not mergeable.
_warnings.filterwarnings("ignore", message=r"Detected that the base layer has no bias term.*")
