"""Metrics at the EOS position (SPEC 4), weighted by how many strings each example stands for.

Every metric takes plain tensors and returns plain numbers, so the same code scores a sampled set
(weights 1, duplicates merged) and the exact `exhaustive` set (multinomial weights).
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from .language import EVAL_SETS, ONE, VOCAB, ZERO, Batch, eval_set, parse


def l_acc(logits: torch.Tensor, y: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Language accuracy: argmax over all five tokens equals y. logits (S, B, V) -> (S,)."""
    hit = (logits.argmax(-1) == y).to(weight.dtype)
    return (hit * weight).sum(-1) / weight.sum()


def valid_rate(logits: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Fraction whose argmax is a digit 0 or 1 (the syntax alone). (S,)."""
    ok = (logits.argmax(-1) <= ONE).to(weight.dtype)
    return (ok * weight).sum(-1) / weight.sum()


def score(logits: torch.Tensor) -> torch.Tensor:
    """The semantic score logit(1) - logit(0)."""
    return logits[..., ONE] - logits[..., ZERO]


def roc_auc(score: torch.Tensor, y: torch.Tensor, weight: torch.Tensor) -> np.ndarray:
    """Weighted ROC AUC of each row of `score` (..., B) against y; nan if one class is absent."""
    s = score.detach().double().reshape(-1, score.shape[-1]).numpy()
    yy, w = y.numpy(), weight.double().numpy()
    if yy.min() == yy.max():
        return np.full(score.shape[:-1], np.nan)
    return np.array([roc_auc_score(yy, row, sample_weight=w) for row in s]).reshape(
        score.shape[:-1])


def evaluate_logits(logits: torch.Tensor, batch: Batch) -> dict[str, np.ndarray]:
    """l-acc, valid rate and ROC AUC per seed of logits (S, B, V) on one evaluation set."""
    return {"l_acc": l_acc(logits, batch.y, batch.weight).double().numpy(),
            "valid": valid_rate(logits, batch.weight).double().numpy(),
            "auc": roc_auc(score(logits), batch.y, batch.weight)}


def evaluate(model, sets: tuple[str, ...] = EVAL_SETS) -> list[dict]:
    """Tidy rows (set, seed, l_acc, valid, auc) of a model on the evaluation sets of SPEC 2."""
    rows = []
    with torch.no_grad():
        for name in sets:
            batch = eval_set(model.cfg, name)
            result = evaluate_logits(model(batch), batch)
            for i, seed in enumerate(model.seeds):
                rows.append({"set": name, "seed": seed} | {k: float(v[i]) for k, v in result.items()})
    return rows


def format_table(rows: list[dict]) -> str:
    """A plain-text table of tidy rows (columns in first-row order)."""
    if not rows:
        return "(no rows)"
    cols = list(rows[0])
    cells = [[f"{r[c]:.4f}" if isinstance(r[c], float) else str(r[c]) for c in cols] for r in rows]
    width = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(cols, width))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(row, width)) for row in cells]
    return "\n".join(lines)


def predict(model, text: str) -> str:
    """The answer of every seed for one string of digits, with the five output probabilities."""
    batch = parse(text, model.cfg.bos)
    with torch.no_grad():
        probs = torch.softmax(model(batch)[:, 0].double(), -1)
    truth = int(batch.y[0])
    rows = []
    for i, seed in enumerate(model.seeds):
        row = {"seed": seed, "answer": VOCAB[int(probs[i].argmax())], "truth": str(truth)}
        rows.append(row | {f"p({t})": float(probs[i, j]) for j, t in enumerate(VOCAB)})
    n = batch.counts[0].tolist()
    return f"{text.strip()}: n0={n[0]} n1={n[1]} n2={n[2]}\n" + format_table(rows)
