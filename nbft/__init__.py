"""nbft: the helper package behind the nbft notebooks.

Flat modules, one per concern: params, models, data, train, evaluate, widgets, runs, cli.
"""
__version__ = "0.1.0"
