"""The job of one configuration: train it (or resume it, or reload it), then read every
checkpoint and the final weights into one record of rows (see `tables` for the columns). Every
job computes with one torch thread, whichever executor runs it."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from ..config import Config
from ..criteria import IDEAL_SETS, SUCCESS_L_ACC, SUCCESS_SET
from ..files import checkpoints, load_config, read_json, remove_leftovers
from ..language import EVAL_SETS, eval_set
from ..measure.activations import Shared, head_ids, kind_weights, merged_run
from ..measure.aggregation import head_sets
from ..measure.metrics import (
    direct_scores,
    evaluate,
    head_table,
    head_thresholds,
    logit_metrics,
    mean_loss,
    ratio_columns,
    readout_columns,
)
from ..model import Model
from ..runs import load
from ..train import torch_threads, train
from .grid import SweepError

HEAD_SETS = ("iid", "hard", "long", "noisy")
TOKEN_PATH_SEEDS = 1  # seeds evaluated at once on the token path: bounds memory (B x L x S)
STAT_COLUMNS = ("loss", "hard_l_acc", "hard_valid", "hard_auc")  # trajectory, per checkpoint
HEAD_STAT_COLUMNS = ("s_acc", "head_auc", "w01", "w02")  # head_trajectory, per checkpoint


def run_point(cfg_dict: dict[str, Any], run_dir: str) -> dict[str, Any]:
    """The job of one configuration (runs in a worker): its record of runs, heads, trajectories.

    Finished weights are reloaded, a run with a checkpoint resumes from it, anything else (never
    started, or killed before its first checkpoint) starts afresh.
    """
    cfg = Config.from_dict(cfg_dict, source="sweep job")
    run = Path(run_dir)
    t0 = time.perf_counter()
    with torch_threads(1):  # the same arithmetic whichever executor runs the job
        for d in (run, run / "checkpoints"):  # a killed job's temporary files
            remove_leftovers(d)
        if (run / "model.safetensors").exists():
            if load_config(run) != cfg:
                raise SweepError(f"{run} holds a different configuration")
            model = load(run)
        elif (run / "resume.safetensors").exists():
            model = train(cfg, run, resume=True, progress=False)
        else:
            if run.exists():
                shutil.rmtree(run)
            model = train(cfg, run, progress=False)
        record = record_run(model, run)
    return record | {"config": cfg.to_dict(), "seconds": time.perf_counter() - t0}


def record_run(model: Model, run: Path) -> dict[str, list[dict]]:
    """Final metrics, head table, minimal head sets and checkpoint trajectories of a run.

    A seed whose weights are not finite (training blew up) is a failure with empty metrics: the
    analyses run on the other seeds, which are independent of it.
    """
    cfg = model.cfg
    sets = {name: eval_set(cfg, name) for name in ("fit", "iid", "hard")}
    trajectory, head_trajectory = [], []
    for step, path in checkpoints(run):
        rows, head_rows = checkpoint_stats(load(run, path), sets)
        trajectory += [{"seed": r.pop("seed"), "step": step} | r for r in rows]
        head_trajectory += [{"seed": r.pop("seed"), "step": step} | r for r in head_rows]
    finite = finite_seeds(model)
    healthy = model.select([i for i, ok in enumerate(finite) if ok])
    final = {name: sets[name] if name in sets else eval_set(cfg, name) for name in HEAD_SETS}
    evals, heads, minimal, labour = [], [], {}, {}
    if healthy.n_seeds:
        for part in seed_chunks(healthy):
            evals += evaluate(part)
            shared = Shared(part)  # the head table and the head sets read the same sets
            heads += head_table(part, final, fit=sets["fit"], shared=shared)
            found, kinds = head_sets(part, sets["fit"], sets["hard"], threshold=SUCCESS_L_ACC,
                                     shared=shared)
            minimal |= dict(zip(part.seeds, found))
            labour |= dict(zip(part.seeds, kinds))
    empty = {f"{name}_{k}": None for name in EVAL_SETS for k in ("l_acc", "valid", "auc")}
    stopped = read_json(run / "metrics.json").get("stopped", {}) if cfg.early_stop else {}
    runs = []
    for seed, ok in zip(model.seeds, finite):
        mine = [r for r in trajectory if r["seed"] == seed]
        reached = [r["step"] for r in mine
                   if r["hard_l_acc"] is not None and r["hard_l_acc"] >= SUCCESS_L_ACC]
        final_sets = empty | {f"{r['set']}_{k}": r[k] for r in evals if r["seed"] == seed
                              for k in ("l_acc", "valid", "auc")}
        best = minimal.get(seed)
        runs.append({"seed": seed,
                     "success": ok and final_sets[f"{SUCCESS_SET}_l_acc"] >= SUCCESS_L_ACC,
                     "ideal": ok and all(final_sets[f"{name}_l_acc"] >= SUCCESS_L_ACC
                                         for name in IDEAL_SETS),
                     "diverged": not ok, "steps_to_success": min(reached, default=None),
                     "loss": max(mine, key=lambda r: r["step"])["loss"]} | final_sets
                    | {"min_heads": None if best is None else len(best),
                       "min_head_set": None if best is None else json.dumps(best),
                       "labour": labour.get(seed), "stopped_at": stopped.get(str(seed))})
    return {"runs": runs, "heads": heads, "trajectory": trajectory,
            "head_trajectory": head_trajectory}


def finite_seeds(model: Model) -> list[bool]:
    """Per seed: are all its weights finite?"""
    ok = torch.ones(model.n_seeds, dtype=torch.bool)
    for w in model.weights.values():
        ok &= torch.isfinite(w).flatten(1).all(1)
    return ok.tolist()


def seed_chunks(model: Model) -> list[Model]:
    """The model in seed chunks small enough to evaluate: all seeds on the count path (a few
    thousand count triples), TOKEN_PATH_SEEDS at a time on the token path (B x L tokens each)."""
    if model.cfg.count_path:
        return [model]
    n = model.n_seeds
    return [model.select(list(range(i, min(i + TOKEN_PATH_SEEDS, n))))
            for i in range(0, n, TOKEN_PATH_SEEDS)]


def checkpoint_stats(model: Model, sets: dict) -> tuple[list[dict], list[dict]]:
    """Per seed: iid loss, hard l-acc/valid/AUC; per seed and head: s-acc, head AUC, w01, w02 on
    hard (threshold fitted on `fit` at this checkpoint; no probes, which cost seconds each)."""
    fit, iid, hard = sets["fit"], sets["iid"], sets["hard"]
    rows, head_rows = [], []
    with torch.no_grad():
        for part in seed_chunks(model):
            loss = mean_loss(part(iid), iid)  # (S,)
            hard_stats = logit_metrics(part(hard), hard)  # exact AUC, no sklearn per seed
            stats = {"loss": loss} | {f"hard_{k}": hard_stats[k] for k in ("l_acc", "valid", "auc")}
            m = part.to(torch.float64)
            t = head_thresholds(m, merged_run(m, fit).result, fit)  # (S, L * H)
            hc = merged_run(m, hard)  # one run of the whole set (`head_table` slices would
            # reorder sums); every layer's heads side by side
            head_stats = (readout_columns(direct_scores(m, hc.result), t, hard)
                          | ratio_columns(kind_weights(m, hc, hard).numpy(), m.cfg.noise_symbols))
            for i, (seed, ok) in enumerate(zip(part.seeds, finite_seeds(part))):
                if not ok:  # blown up: its numbers would be artefacts of NaN arithmetic
                    rows.append({"seed": seed} | dict.fromkeys(STAT_COLUMNS, None))
                    head_rows += [{"seed": seed, "layer": n, "head": h}
                                  | dict.fromkeys(HEAD_STAT_COLUMNS)
                                  for h, (n, _) in enumerate(head_ids(m))]
                    continue
                rows.append({"seed": seed} | {k: float(stats[k][i]) for k in STAT_COLUMNS})
                head_rows += [{"seed": seed, "layer": n, "head": h}
                              | {k: float(head_stats[k][i, h]) for k in HEAD_STAT_COLUMNS}
                              for h, (n, _) in enumerate(head_ids(m))]
    return rows, head_rows

