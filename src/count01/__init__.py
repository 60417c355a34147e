"""count01: train tiny attention-only transformers on Count01 and take their heads apart.

    from count01 import Config, train, load, evaluate
    model = train(Config(n_seeds=8), "runs/default")
"""

from .config import Config, Count01Error
from .language import eval_set, exhaustive, training_batch
from .metrics import evaluate
from .model import Cache, Model
from .runs import load
from .train import train

__all__ = ["Config", "Count01Error", "Model", "Cache", "train", "load", "evaluate", "eval_set",
           "exhaustive", "training_batch"]
