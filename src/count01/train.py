"""Training: AdamW on the answer's cross-entropy at EOS, S seeds at once as one batched model.

The loss is the sum over seeds of each seed's mean loss, and AdamW is elementwise, so seed k's
gradient and update never see another seed: seed k in a batch of 64 trains as seed k alone.
Data at step t is a pure function of (seed, t) and the AdamW state is checkpointed, so a resumed
run reproduces an uninterrupted one bit for bit.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .config import Config
from .language import training_batch
from .metrics import evaluate
from .model import Model
from .runs import CheckpointError, load_config, load_tensors, save_tensors, write_json

OPTIM = "optim."


def make_optimizer(model: Model, cfg: Config) -> torch.optim.AdamW:
    params = model.parameters()
    for p in params:
        p.requires_grad_(True)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)


def loss_per_seed(model: Model, cfg: Config, step: int) -> torch.Tensor:
    batch = training_batch(cfg, model.seeds, step)
    logits = model(batch)  # (S, B, V)
    ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch.y.flatten(),
                                           reduction="none")
    return ce.view(logits.shape[:2]).mean(1)


def optimizer_tensors(model: Model, opt: torch.optim.AdamW) -> dict[str, torch.Tensor]:
    out = {}
    for name, p in model.weights.items():
        state = opt.state.get(p, {})
        for key, value in state.items():
            out[f"{OPTIM}{name}.{key}"] = value.reshape(-1) if key == "step" else value
    return out


def restore_optimizer(model: Model, opt: torch.optim.AdamW, tensors: dict[str, torch.Tensor]
                      ) -> None:
    for name, p in model.weights.items():
        state = {key: tensors[f"{OPTIM}{name}.{key}"] for key in ("step", "exp_avg", "exp_avg_sq")
                 if f"{OPTIM}{name}.{key}" in tensors}
        if state:
            state["step"] = state["step"].reshape(())
            opt.state[p] = state


def train(cfg: Config, out: str | Path | None = None, resume: bool = False,
          progress: bool = True) -> Model:
    """Train cfg.n_seeds seeds for cfg.steps steps; with `out`, checkpoint and write a run dir.

    resume=True continues the run in `out` from its latest checkpoint (cfg must be its config,
    possibly with more steps).
    """
    cfg.validate()
    out = Path(out) if out is not None else None
    model, start = Model.init(cfg), 0
    opt = make_optimizer(model, cfg)
    if resume:
        model, start, state = _resume(cfg, out)
        opt = make_optimizer(model, cfg)
        restore_optimizer(model, opt, state)
    elif out is not None:
        write_json(out / "config.json", cfg.to_dict())
        save_tensors(out / "checkpoints" / f"step_{0:07d}.safetensors", model.weights, cfg,
                     model.seeds, step=0)

    t0 = time.perf_counter()
    bar = tqdm(total=cfg.steps, initial=start, disable=not progress, unit="step",
               desc=f"train {model.n_seeds} seeds", leave=False)
    losses = torch.zeros(model.n_seeds)
    for step in range(start, cfg.steps):
        loss = loss_per_seed(model, cfg, step)
        opt.zero_grad(set_to_none=True)
        loss.sum().backward()
        opt.step()
        losses = loss.detach()
        done = step + 1
        if out is not None and (done % cfg.checkpoint_every == 0 or done == cfg.steps):
            _checkpoint(out, cfg, model, opt, done, losses)
        if done % 50 == 0 or done == cfg.steps:
            bar.update(done - bar.n)
            bar.set_postfix(loss=f"{losses.mean().item():.4f}")
    bar.close()
    for p in model.parameters():
        p.requires_grad_(False)
    if out is not None:
        seconds = time.perf_counter() - t0
        write_json(out / "metrics.json", {"steps": cfg.steps, "train_seconds_this_session": seconds,
                                          "final_loss": losses.tolist(),
                                          "eval": evaluate(model)})
        save_tensors(out / "model.safetensors", model.weights, cfg, model.seeds, step=cfg.steps)
    return model


def _checkpoint(out: Path, cfg: Config, model: Model, opt: torch.optim.AdamW, step: int,
                losses: torch.Tensor) -> None:
    save_tensors(out / "checkpoints" / f"step_{step:07d}.safetensors", model.weights, cfg,
                 model.seeds, step=step, loss=losses.tolist())
    save_tensors(out / "resume.safetensors", model.weights | optimizer_tensors(model, opt), cfg,
                 model.seeds, step=step)


def _resume(cfg: Config, out: Path | None
            ) -> tuple[Model, int, dict[str, torch.Tensor]]:
    """The model, step and AdamW state of the latest checkpoint of `out`."""
    if out is None:
        raise CheckpointError("resume needs a run directory")
    saved = load_config(out)
    if saved.replace(steps=cfg.steps) != cfg:
        raise CheckpointError(f"{out}: config does not match the run's config.json "
                              "(only steps may change on resume)")
    path = out / "resume.safetensors"
    if not path.exists():
        return Model.init(cfg), 0, {}  # killed before the first checkpoint: start over
    tensors, meta = load_tensors(path, cfg)
    if meta["seeds"] != cfg.seeds:
        raise CheckpointError(f"{path}: seeds {meta['seeds']} do not match the config's")
    if meta["step"] > cfg.steps:
        raise CheckpointError(f"{path} is at step {meta['step']}, past steps = {cfg.steps}")
    state = {k: v for k, v in tensors.items() if k.startswith(OPTIM)}
    weights = {k: v for k, v in tensors.items() if not k.startswith(OPTIM)}
    return Model(cfg, weights, meta["seeds"]), meta["step"], state
