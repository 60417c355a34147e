"""count01: train tiny attention-only transformers on Count01 and take their heads apart.

    from count01 import Config, train, analyze, reproduce
    model = train(Config(n_seeds=8), "runs/default")
    analyze("runs/default")            # tables and figures in runs/default/analysis/
"""

from importlib import import_module

from .config import Config, Count01Error
from .language import eval_set, exhaustive, training_batch
from .metrics import evaluate, head_table
from .model import Cache, Model
from .runs import load
from .train import train

# Entry points whose modules import pandas or matplotlib: loaded on first use (PEP 562), so
# `import count01` stays as light as torch.
_LAZY = {
    "analyze": "analysis", "attention_sweep": "interventions", "value_swap": "interventions",
    "aggregate": "aggregation", "fit_alpha": "aggregation", "minimal_heads": "aggregation",
    "Sweep": "sweeps", "run_sweep": "sweeps", "load_tables": "sweeps",
    "analyze_paths": "paths", "reproduce": "study", "build_report": "report",
    "to_transformer_lens": "export", "save_transformer_lens": "export",
    "import_transformer_lens": "export",
}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'count01' has no attribute {name!r}")


__all__ = ["Config", "Count01Error", "Model", "Cache", "train", "load", "evaluate", "head_table",
           "eval_set", "exhaustive", "training_batch", *_LAZY]
