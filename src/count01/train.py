"""Training: AdamW on the answer's cross-entropy at EOS, S seeds at once as one batched model.

In the `sentence` framing (SPEC 2) a seed's loss is the mean of two parts, each a mean
cross-entropy over its batch: the answer at the first EOS and the ending (EOS) at the answer y;
with `lm_loss` a third part, the next token at every position of the string (mean over the
seed's positions). Each part weighs the same whatever the strings' lengths.

The loss is the sum over seeds of each seed's mean loss, and AdamW is elementwise, so seed k's
gradient and update never see another seed: seed k in a batch of 64 trains as seed k alone.
Data at step t is a pure function of (seed, t) and the AdamW state is checkpointed, so a resumed
run reproduces an uninterrupted one bit for bit.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .cache import ROW_BLOCK
from .config import Config
from .criteria import (
    EARLY_STOP_FROM,
    EARLY_STOP_L_ACC,
    EARLY_STOP_LOSS,
    EARLY_STOP_LOSS_FROM,
    SUCCESS_SET,
)
from .files import CheckpointError, load_config, locked, remove_leftovers, writable, write_json
from .heap import keep_freed_memory
from .language import (
    EOS,
    answer,
    at_end,
    eval_set,
    multiplicities,
    string_rows,
    training_batch,
    training_counts,
    training_indices,
    triples,
)
from .measure.metrics import chunked_logits, cross_entropy, evaluate, l_acc, mean_loss
from .model import Model, trainable
from .runs import OPTIM, load_tensors, save_tensors

SGD_MOMENTUM = 0.9
MOMENTS = {"adamw": ("exp_avg", "exp_avg_sq"), "sgd": ("momentum_buffer",)}  # torch's names


@dataclass(frozen=True)
class StopRule:
    """An early-stopping rule: give up on a seed at the first checkpoint at or after `start` of
    its steps where `quantity` (a column of the sweeps' trajectory table) is at most (`fails_below`)
    or at least `threshold`, or is not finite (the weights blew up: the seed cannot recover).
    Never at the last step, where training is over anyway."""

    version: int
    quantity: str  # "loss" (cross-entropy on iid) or "hard_l_acc"
    threshold: float
    start: float
    fails_below: bool

    def stops(self, value: float, step: int, steps: int) -> bool:
        if not self.start * steps <= step < steps:
            return False
        if not math.isfinite(value):
            return True
        return value <= self.threshold if self.fails_below else value >= self.threshold

    def data(self, cfg: Config):
        """The evaluation set `quantity` is measured on."""
        return eval_set(cfg, "iid" if self.quantity == "loss" else SUCCESS_SET)

    def measure(self, model: Model, data) -> torch.Tensor:
        """`quantity` of every seed of `model` on `data` (the set `data(cfg)` gives). (S,)."""
        with torch.no_grad():
            logits = chunked_logits(model, data)
        return (mean_loss(logits, data) if self.quantity == "loss"
                else l_acc(logits, data.y, data.weight))

    def text(self) -> str:
        what = {"loss": "cross-entropy on iid", "hard_l_acc": f"{SUCCESS_SET} l-acc"}[self.quantity]
        return (f"rule {self.version}: stop a seed at the first checkpoint at or after "
                f"{Fraction(self.start).limit_denominator(12)} of its steps where its {what} is at "
                f"{'most' if self.fails_below else 'least'} {self.threshold:.3g}, or its weights "
                "are no longer finite")


STOP_RULES = {1: StopRule(1, "hard_l_acc", EARLY_STOP_L_ACC, EARLY_STOP_FROM, True),
              2: StopRule(2, "loss", EARLY_STOP_LOSS, EARLY_STOP_LOSS_FROM, False)}
STOP_RULE = STOP_RULES[2]  # the rule `--early-stop` trains with; the report replays them all


def make_optimizer(model: Model, cfg: Config) -> torch.optim.Optimizer:
    """The torch optimiser of `cfg` over the model's weights, for autograd code outside `train`
    (benchmarks, tests); set its lr to `lr_at(cfg, step)` before each step. `Trainer` applies the
    same update to one flat tensor."""
    params = model.parameters()
    for p in params:
        p.requires_grad_(True)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=SGD_MOMENTUM,
                               weight_decay=cfg.weight_decay, foreach=True)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)


def lr_at(cfg: Config, step: int) -> float:
    """The learning rate of the update at `step` (from 0): a linear warm-up over `warmup` steps,
    then `lr` (constant) or a cosine from `lr` down to 0 at `steps` (cosine)."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    if cfg.schedule == "constant":
        return cfg.lr
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * (step - cfg.warmup) / (cfg.steps - cfg.warmup)))


def loss_per_seed(model: Model, cfg: Config, step: int) -> torch.Tensor:
    """Mean cross-entropy of each seed on its batch at `step`, through autograd. (S,)."""
    batch = training_batch(cfg, model.seeds, step)
    if cfg.framing == "classify":
        return cross_entropy(model(batch), batch.y).mean(1)
    if cfg.lm_loss:  # every query row at once (the position path; the count path is by hand)
        every = model.causal_logits(batch.tokens)  # (S, B, L, V)
        eos = batch.eos_pos[..., None, None].expand(-1, -1, 1, every.shape[-1])
        parts = [cross_entropy(every.gather(2, eos)[:, :, 0], batch.y).mean(1),
                 cross_entropy(every.gather(2, eos + 1)[:, :, 0], torch.full_like(batch.y, EOS)).mean(1)]
        _, _, target, ok = string_rows(batch.tokens, batch.eos_pos, cfg.d_vocab)
        ce = cross_entropy(every[:, :, :target.shape[-1]].flatten(1, 2), target.flatten(1))
        ok = ok.flatten(1).to(ce.dtype)
        return torch.stack(parts + [(ce * ok).sum(1) / ok.sum(1)]).mean(0)
    end = at_end(batch)
    return torch.stack([cross_entropy(model(batch), batch.y).mean(1),
                        cross_entropy(model(end), end.y).mean(1)]).mean(0)


def sentence_rows(cfg: Config, seeds: list[int], step: int, dtype: torch.dtype,
                  table: torch.Tensor | None = None):
    """The rows of `Model.count_rows_loss_grad` for the `sentence` framing at `step`: mult,
    query, target (S, V, R) and weight (S, R), weighted as the module says. Without lm_loss the
    rows come from `table` (`_sentence_table`), a column per example, no tokens; with it, from
    the token batch: its string rows after the answers and endings."""
    S, B, V = len(seeds), cfg.batch_size, cfg.d_vocab
    eos = torch.nn.functional.one_hot(torch.tensor(EOS), V).to(dtype).view(1, V, 1)
    if not cfg.lm_loss:
        if table is not None:
            idx = torch.from_numpy(training_indices(cfg, seeds, step)).view(-1)
            cols = table.index_select(1, idx).view(3, V, S, B).transpose(1, 2)  # (3, S, V, B)
            mult, y = torch.cat([cols[0], cols[1]], -1), cols[2]
        else:  # several noise symbols: a count tuple per example, no table
            counts = torch.from_numpy(training_counts(cfg, seeds, step)).to(dtype)
            m = multiplicities(counts, cfg.bos).transpose(1, 2)  # (S, V, B)
            y = torch.nn.functional.one_hot(answer(counts), V).to(dtype).transpose(1, 2)
            mult = torch.cat([m, m + y], -1)
        query = torch.cat([eos.expand(S, -1, B), y], -1)
        target = torch.cat([y, eos.expand(S, -1, B)], -1)
        return _in_blocks(mult, query, target, torch.full((S, 2 * B), 0.5 / B, dtype=dtype))
    batch = training_batch(cfg, seeds, step, tokens=True)
    end = at_end(batch)
    smult, sq, starget, ok = string_rows(batch.tokens, batch.eos_pos, V)
    y = torch.nn.functional.one_hot(batch.y, V).to(dtype).transpose(1, 2)

    def columns(x: torch.Tensor) -> torch.Tensor:  # (S, B, L', V) -> (S, V, B * L')
        return x.flatten(1, 2).transpose(1, 2).to(dtype)

    def onehot(t: torch.Tensor) -> torch.Tensor:
        return columns(torch.nn.functional.one_hot(t, V))

    # the string rows that exist first (positions before EOS), then copies of the first row up
    # to the most a batch can hold, B (max_len + bos), and on to a multiple of ROW_BLOCK rows, in
    # the same gather (a concatenation after measured 2-5% slower). Not cut where the seed with
    # the most rows ends: the gradient sums over the rows, MKL sums a product in an order that
    # depends on its length, and a seed's sums must not depend on its companions' rows
    ok = ok.flatten(1)
    have = ok.sum(1, keepdim=True)  # (S, 1) each seed's string rows
    n = B * (cfg.max_len + cfg.bos)
    n += -(2 * B + n) % ROW_BLOCK
    keep = torch.argsort((~ok).to(torch.int8), dim=1, stable=True)  # (S, B * L')
    keep = torch.cat([keep, keep[:, :1].expand(-1, n - keep.shape[1])], 1)

    def rows(x: torch.Tensor) -> torch.Tensor:  # (S, V, B * L') -> (S, V, n)
        return x.gather(2, keep[:, None].expand(-1, V, -1))

    mult = torch.cat([batch.mult(cfg.bos, dtype).transpose(1, 2),
                      end.mult(cfg.bos, dtype).transpose(1, 2), rows(columns(smult))], -1)
    query = torch.cat([eos.expand(S, -1, B), y, rows(onehot(sq))], -1)
    target = torch.cat([y, eos.expand(S, -1, B), rows(onehot(starget))], -1)
    ok = (torch.arange(n) < have).to(dtype)  # the seed's own rows come first
    weight = torch.cat([torch.full((S, 2 * B), 1.0 / (3 * B), dtype=dtype),
                        ok / (3 * have.to(dtype))], -1)
    return mult, query, target, weight


def _in_blocks(mult: torch.Tensor, query: torch.Tensor, target: torch.Tensor,
               weight: torch.Tensor):
    """The rows padded to a multiple of ROW_BLOCK with copies of the first at weight 0."""
    pad = -weight.shape[1] % ROW_BLOCK
    if not pad:
        return mult, query, target, weight

    def more(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, x[..., :1].expand(*x.shape[:-1], pad)], -1)

    return more(mult), more(query), more(target), torch.nn.functional.pad(weight, (0, pad))


class Trainer:
    """The training state of S seeds and one optimiser step on it (AdamW, or SGD with momentum).

    The trainable weights are views of one flat tensor, with the optimiser's moments beside it,
    so an update is a handful of whole-tensor ops however many weights there are (the arithmetic
    is torch's AdamW or SGD, op for op: test_trainer_is_the_torch_optimiser_bit_for_bit). Without
    LayerNorm the gradient is written by hand: on the count path (`Model.count_loss_grad`) a batch
    is a row lookup per example in a per-triple table (one noise symbol; with more, a column
    per drawn count tuple); with a positional embedding (`Model.pos_loss_grad`, the position
    path) it is a token batch. In the `sentence` framing the count path's gradient is
    `Model.count_rows_loss_grad` (rows of `sentence_rows`). With LayerNorm, and with positions
    in `sentence`, and with L > 1 layers or an MLP, autograd differentiates the model on token
    batches (`Model.__call__`: with L > 1 and no positional embedding the prefix path). `model`'s trainable
    weights become views of the
    flat tensor, so it sees every update; `weights()` copies them.
    """

    def __init__(self, cfg: Config, model: Model, betas=(0.9, 0.999), eps: float = 1e-8):
        self.cfg, self.model, self.betas, self.eps = cfg, model, betas, eps
        self.names = [k for k in model.weights if trainable(cfg, k)]
        self.flat = torch.cat([model.weights[k].detach().reshape(-1) for k in self.names])
        self._views(self.flat, model.weights)
        self.moments = {m: torch.zeros_like(self.flat) for m in MOMENTS[cfg.optimizer]}
        self.t = 0  # optimiser steps taken
        # by hand: the count path, and the position path in `classify`; else autograd
        self.by_hand = (not cfg.layernorm and cfg.layers == 1 and not cfg.d_mlp
                        and (cfg.count_path or cfg.framing == "classify"))
        self.sentence = cfg.framing == "sentence"
        self.table = None  # per count triple, for one noise symbol (more: tuples drawn per step)
        if self.by_hand and cfg.count_path and cfg.noise_symbols == 1:
            make = _sentence_table if self.sentence else _triple_table
            self.table = make(cfg.min_len, cfg.max_len, cfg.bos, self.flat.dtype)
        keep_freed_memory()  # every path: tensors of the same sizes each step
        if self.by_hand and not cfg.count_path:
            from .fast.tokens import training_token_batch  # numba, as the gradient's loop
            self._tokens = training_token_batch
        self.prefetch = self.by_hand and (not cfg.count_path or self.sentence)
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
        if self.by_hand and self.sentence:
            rows = self._ahead(step, lambda s, t: sentence_rows(self.cfg, s, t, self.flat.dtype,
                                                                self.table))
            loss, grads = self.model.count_rows_loss_grad(*rows)
            return loss, torch.cat([grads[k].reshape(-1) for k in self.names])
        if self.by_hand and not self.cfg.count_path:
            loss, grads = self.model.pos_loss_grad(*self._ahead(step, self._token_batch))
            return loss, torch.cat([grads[k].reshape(-1) for k in self.names])
        if self.by_hand and self.cfg.noise_symbols > 1:  # a count tuple per example, no table
            counts = torch.from_numpy(training_counts(self.cfg, seeds, step)).to(self.flat.dtype)
            mult = multiplicities(counts, self.cfg.bos)  # (S, B, V)
            target = torch.nn.functional.one_hot(answer(counts), self.cfg.d_vocab).to(counts.dtype)
            loss, grads = self.model.count_loss_grad(mult.transpose(1, 2), target.transpose(1, 2))
            return loss, torch.cat([grads[k].reshape(-1) for k in self.names])
        if self.by_hand:
            idx = torch.from_numpy(training_indices(self.cfg, seeds, step)).view(-1)
            rows = self.table.index_select(1, idx).view(2, self.cfg.d_vocab, len(seeds), -1)
            rows = rows.transpose(1, 2)  # (2, S, 5, B): multiplicities, one-hot answers
            loss, grads = self.model.count_loss_grad(rows[0], rows[1])
            return loss, torch.cat([grads[k].reshape(-1) for k in self.names])
        leaves = {k: self.model.weights[k].detach().requires_grad_() for k in self.names}
        loss = loss_per_seed(Model(self.cfg, self.model.weights | leaves, seeds), self.cfg, step)
        grads = torch.autograd.grad(loss.sum(), [leaves[k] for k in self.names])
        return loss.detach(), torch.cat([g.reshape(-1) for g in grads])

    def _token_batch(self, seeds: list[int], step: int) -> tuple[torch.Tensor, ...]:
        """The position path's batch of `step`: tokens, EOS positions, answers."""
        batch = self._tokens(self.cfg, seeds, step)
        return batch.tokens, batch.eos_pos, batch.y

    def _ahead(self, step: int, make: Callable[[list[int], int], object]):
        """make(seeds, step), the batch of `step`; with `prefetch`, the batch of step + 1 is
        made meanwhile on a second thread (numpy and torch release the GIL in their loops), so
        the token arrangement (the position path's, and the string rows of `lm_loss`), which
        alone costs several count-path steps at S = 64, and the sentence framing's rows overlap
        the gradient. A batch is a pure function of (seeds, step): prefetching changes no
        number."""
        seeds = tuple(self.model.seeds)
        ahead, self._next = self._next, None
        batch = (ahead[2].result() if ahead is not None and ahead[:2] == (step, seeds)
                 else make(list(seeds), step))
        if self.prefetch:
            self._next = (step + 1, seeds, _prefetcher().submit(make, list(seeds), step + 1))
        return batch

    def step(self, step: int) -> torch.Tensor:
        """Train on the batch of `step`; returns each seed's loss before the update. (S,)."""
        with torch.inference_mode(self.by_hand):  # no autograd bookkeeping per op: ~20% at S=1
            loss, grad = self.loss_grad(step)
            self.t += 1
            lr, decay = lr_at(self.cfg, step), self.cfg.weight_decay
            if self.cfg.optimizer == "sgd":  # torch's SGD: coupled decay, buffer = first grad
                if decay:
                    grad = grad.add(self.flat, alpha=decay)
                buf = self.moments["momentum_buffer"]
                if self.t == 1:
                    buf.copy_(grad)
                else:
                    buf.mul_(SGD_MOMENTUM).add_(grad)
                self.flat.add_(buf, alpha=-lr)
                return loss
            (beta1, beta2), m, v = self.betas, self.moments["exp_avg"], self.moments["exp_avg_sq"]
            if decay:
                self.flat.mul_(1 - lr * decay)
            m.lerp_(grad, 1 - beta1)
            v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            denom = v.sqrt().div_((1 - beta2 ** self.t) ** 0.5).add_(self.eps)
            self.flat.addcdiv_(m, denom, value=-lr / (1 - beta1 ** self.t))
        return loss

    def keep(self, index: list[int]) -> Trainer:
        """The trainer of the seeds at these positions only, optimiser state and all."""
        new = Trainer(self.cfg, self.model.select(index), self.betas, self.eps)
        for moment, flat in self.moments.items():
            mine = new._views(new.moments[moment], {})
            for k, v in self._views(flat, {}).items():
                mine[k].copy_(v[index])
        new.t = self.t
        return new

    def weights(self) -> dict[str, torch.Tensor]:
        """A copy of every weight, each with storage of its own (safetensors needs that)."""
        return {k: w.detach().clone() for k, w in self.model.weights.items()}

    def state(self) -> dict[str, torch.Tensor]:
        """The optimiser's state as `optim.<weight>.<step|moment>` tensors (torch's names)."""
        out = {f"{OPTIM}{k}.step": torch.tensor([float(self.t)]) for k in self.names}
        for moment, flat in self.moments.items():
            out |= {f"{OPTIM}{k}.{moment}": v.clone() for k, v in self._views(flat, {}).items()}
        return out

    def load_state(self, tensors: dict[str, torch.Tensor], step: int, path: Path) -> None:
        """Restore the optimiser's state saved at training step `step`; all of it must be there,
        with every weight's shapes and a step count equal to `step`, or the resumed run would no
        longer be the uninterrupted one."""
        parts = ("step",) + MOMENTS[self.cfg.optimizer]
        expected = {f"{OPTIM}{k}.{part}": (1,) if part == "step" else self.model.weights[k].shape
                    for k in self.names for part in parts}
        if set(tensors) != set(expected):
            diff = sorted(set(tensors) ^ set(expected))
            raise CheckpointError(f"{path}: optimiser state incomplete or foreign (differs in "
                                  f"{', '.join(diff[:3])}{' ...' if len(diff) > 3 else ''})")
        for k, shape in expected.items():
            if tensors[k].shape != shape:
                raise CheckpointError(f"{path}: {k} has shape {tuple(tensors[k].shape)}, "
                                      f"expected {tuple(shape)}")
            if k.endswith(".step") and tensors[k].item() != step:
                raise CheckpointError(f"{path}: {k} is {tensors[k].item()}, but the checkpoint "
                                      f"is at step {step}")
        for moment, flat in self.moments.items():
            for k, v in self._views(flat, {}).items():
                v.copy_(tensors[f"{OPTIM}{k}.{moment}"])
        self.t = step


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
    target = torch.nn.functional.one_hot(answer(t), 5).T  # the vocabulary of one noise symbol
    return torch.cat([t.T, ones, ones * bos, target]).to(dtype)


@lru_cache(maxsize=8)
def _sentence_table(min_len: int, max_len: int, bos: bool, dtype: torch.dtype) -> torch.Tensor:
    """Per count triple of the training law, in the `sentence` framing: the multiplicities the
    answer's query sees, those the ending's query sees (the answer y too), then the one-hot y.
    (15, T)."""
    t = _triple_table(min_len, max_len, bos, dtype)
    m, y = t.chunk(2)  # (5, T) each: one noise symbol
    return torch.cat([m, m + y, y])


@contextmanager
def torch_threads(n: int | None):
    """torch's intra-op threads set to n inside the block, restored after (None: unchanged).

    Training, its evaluation and every sweep job run on one: a step is a hundred small ops, a
    second thread's fork/join costs more than it saves, and when the cores are shared with other
    jobs an op can wait a whole timeslice for a descheduled partner thread (token-path steps
    measured 40x slower with 2 threads on a busy 2-core machine)."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train(cfg: Config, out: str | Path | None = None, resume: bool = False,
          progress: bool = True, on_start: Callable[[int], None] | None = None) -> Model:
    """Train cfg.n_seeds seeds for cfg.steps steps; with `out`, checkpoint and write a run dir.

    resume=True continues the run in `out` from its latest checkpoint (cfg must be its config,
    possibly with more steps). on_start(step) is called once the run is checked and set up, just
    before the first step: a caller announces the run only when it will really train.
    """
    cfg.validate()
    if out is None:
        return _train(cfg, None, Model.init(cfg), 0, None, progress)
    out = writable(out)
    if resume:
        load_config(out)  # a directory without a run is refused before the lock touches it
    elif (out / "config.json").exists():
        raise CheckpointError(f"{out} already holds a run; continue it with --resume {out}, "
                              "or choose another --out")
    with locked(out, "training run"):
        if resume:
            for d in (out, out / "checkpoints"):  # what a killed run's writes left
                remove_leftovers(d)
            model, start, resumed = _resume(cfg, out)
        else:  # checked again under the lock: another run may have started meanwhile
            if (out / "config.json").exists():
                raise CheckpointError(f"{out} already holds a run")
            model, start, resumed = Model.init(cfg), 0, None
            write_json(out / "config.json", cfg.to_dict())
            save_tensors(out / "checkpoints" / f"step_{0:07d}.safetensors", model.weights, cfg,
                         model.seeds, step=0)
        if on_start is not None:
            on_start(start)
        return _train(cfg, out, model, start, resumed, progress)


Resumed = tuple[dict[str, torch.Tensor], torch.Tensor, Path, dict[int, int]]


def _train(cfg: Config, out: Path | None, model: Model, start: int, resumed: Resumed | None,
           progress: bool) -> Model:
    """The training loop from step `start`; `resumed` holds the optimiser state, the last losses,
    the file they came from and the seeds early stopping gave up on (seed -> step).

    With `early_stop`, each checkpoint first asks STOP_RULE of every training seed; a seed it
    gives up on leaves the batch (its weights stay as they were), so the others train on alone."""
    losses, stopped = torch.zeros(model.n_seeds), {}
    if resumed is not None:
        state, losses, path, stopped = resumed
    weights = {k: w.detach().clone() for k, w in model.weights.items()}  # every seed's
    active = [i for i, s in enumerate(model.seeds) if s not in stopped]
    trainer = Trainer(cfg, model.select(active)) if active else None
    if resumed is not None and trainer is not None:
        trainer.load_state(state, start, path)
    if resumed is not None and load_config(out).steps != cfg.steps:  # checked: now this long
        write_json(out / "config.json", cfg.to_dict())
    watched = STOP_RULE.data(cfg) if cfg.early_stop else None

    t0 = time.perf_counter()
    bar = tqdm(total=cfg.steps, initial=start, disable=not progress, unit="step",
               desc=f"train {model.n_seeds} seeds", leave=False)
    with torch_threads(1):
        for step in range(start, cfg.steps):
            if trainer is None:  # early stopping gave up on every seed
                break
            losses[active] = trainer.step(step)
            done = step + 1
            if done % 50 == 0 or done == cfg.steps:
                bar.update(done - bar.n)
                bar.set_postfix(loss=f"{losses.mean().item():.4f}")
            if done % cfg.checkpoint_every and done != cfg.steps:
                continue
            for k, w in trainer.model.weights.items():
                weights[k][active] = w.detach()
            if watched is not None and done < cfg.steps:
                values = STOP_RULE.measure(trainer.model, watched)
                keep = [j for j, x in enumerate(values.tolist())
                        if not STOP_RULE.stops(x, done, cfg.steps)]
                stopped |= {model.seeds[active[j]]: done for j in range(len(active))
                            if j not in keep}
                if len(keep) < len(active):
                    active = [active[j] for j in keep]
                    trainer = trainer.keep(keep) if keep else None
            if out is not None:
                _checkpoint(out, cfg, model.seeds, weights, trainer, done, losses, stopped)
    bar.close()
    model = Model(cfg, weights, model.seeds)  # gathered at the last step, a checkpoint step
    if out is not None:
        seconds = time.perf_counter() - t0
        with torch_threads(1):
            rows = evaluate(model)
        summary = {"steps": cfg.steps, "train_seconds_this_session": seconds,
                   "final_loss": losses.tolist(), "eval": rows}
        if cfg.early_stop:
            summary["stopped"] = {str(seed): at for seed, at in sorted(stopped.items())}
        write_json(out / "metrics.json", summary)
        save_tensors(out / "model.safetensors", model.weights, cfg, model.seeds, step=cfg.steps)
    return model


def _checkpoint(out: Path, cfg: Config, seeds: list[int], weights: dict[str, torch.Tensor],
                trainer: Trainer | None, step: int, losses: torch.Tensor,
                stopped: dict[int, int]) -> None:
    """Every seed's weights at `step`, and for --resume also the optimiser state of the seeds
    still training and the seeds early stopping gave up on."""
    meta = {"step": step, "loss": losses.tolist()}
    if cfg.early_stop:
        meta["stopped"] = sorted([seed, at] for seed, at in stopped.items())
    state = trainer.state() if trainer is not None else {}
    save_tensors(out / "checkpoints" / f"step_{step:07d}.safetensors", weights, cfg, seeds, **meta)
    save_tensors(out / "resume.safetensors", weights | state, cfg, seeds, **meta)


def _resume(cfg: Config, out: Path) -> tuple[Model, int, Resumed | None]:
    """The model, step, and (optimiser state, last losses, file, stopped seeds) of the latest
    checkpoint of `out`."""
    saved = load_config(out)
    if saved.replace(steps=cfg.steps) != cfg:
        raise CheckpointError(f"{out}: config does not match the run's config.json "
                              "(only steps may change on resume)")
    if saved.steps != cfg.steps and cfg.schedule != "constant":
        raise CheckpointError(f"{out}: steps cannot change on resume with schedule = "
                              f"{cfg.schedule} (steps sets the schedule)")
    path = out / "resume.safetensors"
    if not path.exists():
        return Model.init(cfg), 0, None  # killed before the first checkpoint: start over
    tensors, meta = load_tensors(path, cfg)
    if meta["seeds"] != cfg.seeds:
        raise CheckpointError(f"{path}: seeds {meta['seeds']} do not match the config's")
    if not 0 < meta["step"] <= cfg.steps:
        raise CheckpointError(f"{path} is at step {meta['step']}, outside 1..steps = {cfg.steps}")
    loss = meta.get("loss")
    if loss is None:  # written before resume files kept it: the checkpoint of the same step has it
        step_file = out / "checkpoints" / f"step_{meta['step']:07d}.safetensors"
        loss = load_tensors(step_file, cfg)[1].get("loss") if step_file.exists() else None
    if not (isinstance(loss, list) and len(loss) == cfg.n_seeds
            and all(isinstance(x, int | float) for x in loss)):
        raise CheckpointError(f"{path}: corrupted metadata (no loss per seed)")
    stopped = meta.get("stopped", [])
    if not (isinstance(stopped, list) and all(
            isinstance(x, list) and len(x) == 2 and x[0] in cfg.seeds and isinstance(x[1], int)
            for x in stopped)):
        raise CheckpointError(f"{path}: corrupted metadata (stopped must list [seed, step] pairs)")
    state = {k: v for k, v in tensors.items() if k.startswith(OPTIM)}
    weights = {k: v for k, v in tensors.items() if not k.startswith(OPTIM)}
    return (Model(cfg, weights, meta["seeds"]), meta["step"],
            (state, torch.tensor(loss, dtype=torch.float32), path, dict(map(tuple, stopped))))
