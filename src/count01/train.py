"""Training: AdamW on the answer's cross-entropy at EOS, S seeds at once as one batched model.

The loss is the sum over seeds of each seed's mean loss, and AdamW is elementwise, so seed k's
gradient and update never see another seed: seed k in a batch of 64 trains as seed k alone.
Data at step t is a pure function of (seed, t) and the AdamW state is checkpointed, so a resumed
run reproduces an uninterrupted one bit for bit.
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .config import Config
from .language import D_VOCAB, answer, training_batch, training_indices, triples
from .metrics import evaluate
from .model import Model, trainable
from .runs import CheckpointError, load_config, load_tensors, save_tensors, write_json

OPTIM = "optim."


def make_optimizer(model: Model, cfg: Config) -> torch.optim.AdamW:
    """A torch AdamW over the model's weights, for autograd code outside `train` (benchmarks).
    `Trainer` applies the same update to one flat tensor."""
    params = model.parameters()
    for p in params:
        p.requires_grad_(True)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)


def loss_per_seed(model: Model, cfg: Config, step: int) -> torch.Tensor:
    """Mean cross-entropy of each seed on its batch at `step`, through autograd. (S,)."""
    batch = training_batch(cfg, model.seeds, step)
    logits = model(batch)  # (S, B, V)
    ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch.y.flatten(),
                                           reduction="none")
    return ce.view(logits.shape[:2]).mean(1)


class Trainer:
    """The training state of S seeds and one step of AdamW on it.

    The trainable weights are views of one flat tensor, with AdamW's moments beside it, so an
    update is a handful of whole-tensor ops however many weights there are (the arithmetic is
    torch's AdamW, op for op). Without LayerNorm the gradient is written by hand: on the count
    path (`Model.count_loss_grad`) a batch is a row lookup per example in a per-triple table;
    with a positional embedding (`Model.pos_loss_grad`, the position path) it is a token batch.
    With LayerNorm autograd differentiates the model on token batches. `model`'s trainable
    weights become views of the flat tensor, so it sees every update; `weights()` copies them.
    """

    def __init__(self, cfg: Config, model: Model, betas=(0.9, 0.999), eps: float = 1e-8):
        self.cfg, self.model, self.betas, self.eps = cfg, model, betas, eps
        self.names = [k for k in model.weights if trainable(cfg, k)]
        self.flat = torch.cat([model.weights[k].detach().reshape(-1) for k in self.names])
        self._views(self.flat, model.weights)
        self.exp_avg = torch.zeros_like(self.flat)
        self.exp_avg_sq = torch.zeros_like(self.flat)
        self.t = 0  # AdamW steps taken
        self.by_hand = not cfg.layernorm
        if self.by_hand and cfg.count_path:
            self.table = _triple_table(cfg.min_len, cfg.max_len, cfg.bos, self.flat.dtype)
        if self.by_hand:
            _keep_freed_memory()
        self.prefetch = self.by_hand and not cfg.count_path
        self._next: tuple[int, tuple[int, ...], Future] | None = None  # (step, seeds, batch)

    def _views(self, flat: torch.Tensor, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Fill `out` with each trainable weight's view of a flat tensor."""
        i = 0
        for k in self.names:
            shape = self.model.weights[k].shape
            n = shape.numel()
            out[k] = flat[i:i + n].view(shape)
            i += n
        return out

    def loss_grad(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Each seed's loss on its batch at `step` (S,) and the flat gradient of their sum."""
        seeds = self.model.seeds
        if self.by_hand and not self.cfg.count_path:
            batch = self._token_batch(step)
            loss, grads = self.model.pos_loss_grad(batch.tokens, batch.eos_pos, batch.y)
            return loss, torch.cat([grads[k].reshape(-1) for k in self.names])
        if self.by_hand:
            idx = torch.from_numpy(training_indices(self.cfg, seeds, step)).view(-1)
            rows = self.table.index_select(1, idx).view(2, D_VOCAB, len(seeds), -1)
            rows = rows.transpose(1, 2)  # (2, S, 5, B): multiplicities, one-hot answers
            loss, grads = self.model.count_loss_grad(rows[0], rows[1])
            return loss, torch.cat([grads[k].reshape(-1) for k in self.names])
        leaves = {k: self.model.weights[k].detach().requires_grad_() for k in self.names}
        loss = loss_per_seed(Model(self.cfg, self.model.weights | leaves, seeds), self.cfg, step)
        grads = torch.autograd.grad(loss.sum(), [leaves[k] for k in self.names])
        return loss.detach(), torch.cat([g.reshape(-1) for g in grads])

    def _token_batch(self, step: int):
        """The batch of `step`; with `prefetch`, the batch of step + 1 is made meanwhile on a
        second thread (numpy releases the GIL in its array loops), so the position path's
        token arrangement, which alone costs several count-path steps at S = 64, overlaps the
        gradient. A batch is a pure function of (seeds, step): prefetching changes no number."""
        seeds = tuple(self.model.seeds)
        ahead, self._next = self._next, None
        batch = (ahead[2].result() if ahead is not None and ahead[:2] == (step, seeds)
                 else training_batch(self.cfg, list(seeds), step))
        if self.prefetch:
            self._next = (step + 1, seeds, _prefetcher().submit(training_batch, self.cfg,
                                                                list(seeds), step + 1))
        return batch

    def step(self, step: int) -> torch.Tensor:
        """Train on the batch of `step`; returns each seed's loss before the update. (S,)."""
        with torch.inference_mode(self.by_hand):  # no autograd bookkeeping per op: ~20% at S=1
            loss, grad = self.loss_grad(step)
            self.t += 1
            lr, (beta1, beta2) = self.cfg.lr, self.betas
            if self.cfg.weight_decay:
                self.flat.mul_(1 - lr * self.cfg.weight_decay)
            self.exp_avg.lerp_(grad, 1 - beta1)
            self.exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            denom = self.exp_avg_sq.sqrt().div_((1 - beta2 ** self.t) ** 0.5).add_(self.eps)
            self.flat.addcdiv_(self.exp_avg, denom, value=-lr / (1 - beta1 ** self.t))
        return loss

    def weights(self) -> dict[str, torch.Tensor]:
        """A copy of every weight, each with storage of its own (safetensors needs that)."""
        return {k: w.detach().clone() for k, w in self.model.weights.items()}

    def state(self) -> dict[str, torch.Tensor]:
        """AdamW's state as `optim.<weight>.<step|exp_avg|exp_avg_sq>` tensors."""
        out = {}
        for k, m, v in zip(self.names, self._views(self.exp_avg, {}).values(),
                           self._views(self.exp_avg_sq, {}).values()):
            out |= {f"{OPTIM}{k}.step": torch.tensor([float(self.t)]),
                    f"{OPTIM}{k}.exp_avg": m.clone(),
                    f"{OPTIM}{k}.exp_avg_sq": v.clone()}
        return out

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        if not tensors:
            return
        for k, m, v in zip(self.names, self._views(self.exp_avg, {}).values(),
                           self._views(self.exp_avg_sq, {}).values()):
            m.copy_(tensors[f"{OPTIM}{k}.exp_avg"])
            v.copy_(tensors[f"{OPTIM}{k}.exp_avg_sq"])
        self.t = int(tensors[f"{OPTIM}{self.names[0]}.step"].item())


@lru_cache(maxsize=1)
def _prefetcher() -> ThreadPoolExecutor:
    """One worker thread for every Trainer of the process: batches are made one at a time."""
    return ThreadPoolExecutor(1, thread_name_prefix="count01-batches")


@lru_cache(maxsize=8)
def _triple_table(min_len: int, max_len: int, bos: bool, dtype: torch.dtype) -> torch.Tensor:
    """Per count triple of the training law: the multiplicities of 0, 1, 2, EOS and BOS, then
    the one-hot answer. (10, T). A training example is a column of it."""
    t = torch.from_numpy(triples(min_len, max_len))
    ones = torch.ones(1, len(t), dtype=t.dtype)
    target = torch.nn.functional.one_hot(answer(t), D_VOCAB).T
    return torch.cat([t.T, ones, ones * bos, target]).to(dtype)


def _keep_freed_memory() -> None:
    """Let glibc keep 64 MB of freed heap at the top instead of returning it to the OS: a step
    frees a few MB of temporaries, and faulting those pages back in at the next step cost about
    a quarter of the step at S = 64 (~950 page faults per step) on the count path, 6% on the
    position path. A no-op without glibc."""
    try:
        ctypes.CDLL("libc.so.6").mallopt(-2, 64 << 20)  # M_TOP_PAD
    except (OSError, AttributeError):
        pass


@contextmanager
def one_thread():
    """Run torch on one intra-op thread. A step is a hundred small ops: a second thread's
    fork/join costs more than it saves, and when the cores are shared with other jobs an op can
    wait a whole timeslice for a descheduled partner thread (token-path steps measured 40x
    slower with 2 threads on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def train(cfg: Config, out: str | Path | None = None, resume: bool = False,
          progress: bool = True, on_start: Callable[[int], None] | None = None) -> Model:
    """Train cfg.n_seeds seeds for cfg.steps steps; with `out`, checkpoint and write a run dir.

    resume=True continues the run in `out` from its latest checkpoint (cfg must be its config,
    possibly with more steps). on_start(step) is called once the run is checked and set up, just
    before the first step: a caller announces the run only when it will really train.
    """
    cfg.validate()
    out = Path(out) if out is not None else None
    model, start, state = Model.init(cfg), 0, {}
    if resume:
        model, start, state = _resume(cfg, out)
    elif out is not None:
        write_json(out / "config.json", cfg.to_dict())
        save_tensors(out / "checkpoints" / f"step_{0:07d}.safetensors", model.weights, cfg,
                     model.seeds, step=0)
    trainer = Trainer(cfg, model)
    trainer.load_state(state)
    if on_start is not None:
        on_start(start)

    t0 = time.perf_counter()
    bar = tqdm(total=cfg.steps, initial=start, disable=not progress, unit="step",
               desc=f"train {model.n_seeds} seeds", leave=False)
    losses = torch.zeros(model.n_seeds)
    with one_thread():
        for step in range(start, cfg.steps):
            losses = trainer.step(step)
            done = step + 1
            if out is not None and (done % cfg.checkpoint_every == 0 or done == cfg.steps):
                _checkpoint(out, cfg, trainer, done, losses)
            if done % 50 == 0 or done == cfg.steps:
                bar.update(done - bar.n)
                bar.set_postfix(loss=f"{losses.mean().item():.4f}")
    bar.close()
    model = Model(cfg, trainer.weights(), model.seeds)
    if out is not None:
        seconds = time.perf_counter() - t0
        with one_thread():
            rows = evaluate(model)
        write_json(out / "metrics.json", {"steps": cfg.steps, "train_seconds_this_session": seconds,
                                          "final_loss": losses.tolist(), "eval": rows})
        save_tensors(out / "model.safetensors", model.weights, cfg, model.seeds, step=cfg.steps)
    return model


def _checkpoint(out: Path, cfg: Config, trainer: Trainer, step: int, losses: torch.Tensor
                ) -> None:
    weights, seeds = trainer.weights(), trainer.model.seeds
    save_tensors(out / "checkpoints" / f"step_{step:07d}.safetensors", weights, cfg, seeds,
                 step=step, loss=losses.tolist())
    save_tensors(out / "resume.safetensors", weights | trainer.state(), cfg, seeds, step=step)


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
