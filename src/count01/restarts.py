"""Restarts (`count01 train --restarts K`): train K seeds as one batched run, keep the best."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .criteria import SUCCESS_L_ACC, SUCCESS_SET
from .files import read_json, write_json
from .language import eval_set
from .measure.metrics import evaluate, evaluate_logits, mean_loss
from .runs import load, save_tensors
from .sweeps.jobs import seed_chunks
from .train import STOP_RULE


def keep_best(run: str | Path) -> dict[str, Any]:
    """Pick the best seed of a trained run: highest hard l-acc, ties by lower hard loss (then seed).

    Writes RUN/restarts.json (every seed's hard l-acc, loss, success and, with early stopping,
    the step where training gave up on it; the best seed; how many succeeded; how many were given
    up and by which rule) and RUN/best/, a one-seed run directory (config.json with seed = the best seed and
    n_seeds = 1, model.safetensors, metrics.json) that every command takes like any run.
    """
    run = Path(run)
    model = load(run)
    cfg, hard = model.cfg, eval_set(model.cfg, SUCCESS_SET)
    acc, loss = [], []
    with torch.no_grad():
        for part in seed_chunks(model):
            logits = part(hard)  # (S, B, V)
            acc += evaluate_logits(logits, hard)["l_acc"].tolist()
            loss += mean_loss(logits, hard).tolist()
    order = sorted(range(model.n_seeds), key=lambda i: (-acc[i], loss[i], model.seeds[i]))
    best = order[0]
    seed = model.seeds[best]
    best_cfg = cfg.replace(seed=seed, n_seeds=1)
    one = model.select(best)
    write_json(run / "best" / "config.json", best_cfg.to_dict())
    write_json(run / "best" / "metrics.json", {"steps": cfg.steps, "eval": evaluate(one)})
    save_tensors(run / "best" / "model.safetensors", one.weights, best_cfg, one.seeds,
                 step=cfg.steps)
    stopped = read_json(run / "metrics.json").get("stopped", {}) if cfg.early_stop else {}
    summary = {"restarts": model.n_seeds, "succeeded": int(sum(a >= SUCCESS_L_ACC for a in acc)),
               "stopped_early": len(stopped),
               "early_stop_rule": STOP_RULE.text() if cfg.early_stop else None,
               "success": f"{SUCCESS_SET} l-acc >= {SUCCESS_L_ACC}", "best_seed": seed,
               "best_dir": str(run / "best"), "best_hard_l_acc": acc[best],
               "best_hard_loss": loss[best],
               "seeds": [{"seed": s, "hard_l_acc": acc[i], "hard_loss": loss[i],
                          "success": acc[i] >= SUCCESS_L_ACC, "stopped_at": stopped.get(str(s))}
                         for i, s in enumerate(model.seeds)]}
    write_json(run / "restarts.json", summary)
    return summary
