"""count01: train tiny attention-only transformers on Count01 and take their heads apart.

    from count01 import Config, train, analyze, reproduce
    model = train(Config(n_seeds=8), "runs/default")
    analyze("runs/default")            # tables and figures in runs/default/analysis/
"""

import sys
from importlib import import_module
from types import ModuleType

from .config import Config, Count01Error

# Every other entry point is loaded on first use (PEP 562), so `import count01` imports neither
# torch nor pandas nor matplotlib (and the report, which reads saved tables, imports no torch).
_LAZY = {
    "Model": "model", "Cache": "model", "train": "train", "load": "runs",
    "eval_set": "language", "exhaustive": "language", "training_batch": "language",
    "evaluate": "measure.metrics", "head_table": "measure.metrics", "analyze": "measure.analysis",
    "attention_sweep": "measure.interventions", "value_swap": "measure.interventions",
    "aggregate": "measure.aggregation", "fit_alpha": "measure.aggregation",
    "minimal_heads": "measure.aggregation", "analyze_paths": "measure.paths",
    "Sweep": "sweeps", "run_sweep": "sweeps", "load_tables": "sweeps",
    "reproduce": "study", "build_report": "study",
    "to_transformer_lens": "export", "save_transformer_lens": "export",
    "import_transformer_lens": "export",
}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'count01' has no attribute {name!r}")


class _Package(ModuleType):
    """`count01.train` is the function: importing the submodule count01.train (the import system
    then sets the package's attribute of that name) must not replace it by the module."""

    def __setattr__(self, name: str, value) -> None:
        if not (name in _LAZY and isinstance(value, ModuleType)):
            super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

__all__ = ["Config", "Count01Error", *_LAZY]
