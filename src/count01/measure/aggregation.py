"""Aggregation of heads (SPEC 5): the model with each head's output reweighted by alpha_h.

    resid = e(EOS) + p + b_O + sum over kept heads of alpha_h o_h + sum over the others of mean(o_h)

Schemes: learned (alpha = 1); uniform (alpha_h = mean_k n_k / n_h with n_h the mean norm of o_h
on `fit` and the mean over heads with output: every head rescaled to the same mean contribution
norm, the total kept); single (only
head h kept, alpha 1, the others mean-ablated); leave_one_out (head h mean-ablated); fitted
(alpha fitted to the answer by cross-entropy on `fit`, everything else frozen). Means and norms
are weighted means over `fit`, so every scheme is fixed before it is scored on another set.

In the `sentence` framing the same alpha reweights the heads at both queries, the answer's (the
first EOS) and the ending's (the answer y fed after it, `at_end`), each with the heads' means at
its own query; schemes are scored on answer l-acc, valid rate and AUC and on end and sentence
accuracy; fitted alpha minimises the mean of the answer's and the ending's cross-entropies on
`fit` (rows of both queries, half the weight each); uniform alpha equalises the heads' norms
at the answer, where the study's aggregation acts.

The fitted objective is the weighted mean cross-entropy of the answer plus a tiny ridge
(RIDGE / 2) |alpha - 1|^2: where the heads separate the fit set perfectly, cross-entropy alone
falls forever as alpha grows, and the ridge makes the optimum finite and unique; it is zero at
the start alpha = 1, so the fitted cross-entropy is never above the learned one. The fit is damped
Newton (Levenberg-Marquardt on the Gauss-Newton Hessian of the softmax cross-entropy, exact
without ln_final), batched over seeds and masks: each (mask, seed) takes its own steps and
accepts a step only if its objective drops, so it never depends on its batch companions.
Without ln_final (logits linear in alpha) a compiled kernel runs it (`kernels.newton_fixed`),
through ln_final and in deep models torch (`_newton`). Deterministic, float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from itertools import combinations

import numpy as np
import torch

from ..cache import attn
from ..criteria import SUCCESS_L_ACC
from ..language import EOS, Batch, at_end
from ..model import LN_EPS, Model
from .activations import (
    Activations,
    OnHeads,
    QueryRows,
    Shared,
    Sliced,
    ablation_value,
    deep,
    head_ids,
    layered_logits,
    position_means,
    query_logits,
    query_rows,
    slices,
    sums_by_slice,
    weighted_mean,
)
from .metrics import as_batches, roc_auc_rows

MAX_STEPS = 50  # damped Newton steps (without ln_final, ten suffice)
DECREMENT_TOL = 1e-13  # stop when no (mask, seed) expects to gain more than this
RIDGE = 1e-6  # (RIDGE / 2) |alpha - 1|^2 keeps the optimum finite on separable data
DAMPING = 1e-3  # Levenberg-Marquardt's damping at the first step
DAMPING_FACTOR = 4.0  # the damping / this on an accepted step, * this on a rejected one
SCALE_FLOOR = 1e-12  # the damping scales the Hessian's mean diagonal, never below this
CHUNK_ELEMENTS = 1 << 22  # bounds (masks, S, B, V, H) per batched fit
SCHEMES = "schemes"  # `aggregate`'s computation on a set's shared pass (`ride_aggregate`)


def scheme_metrics(acts: Activations, means, alpha: torch.Tensor, keep: torch.Tensor,
                   auc: bool = True, end_means=None, key: str | None = None
                   ) -> dict[str, torch.Tensor]:
    """l-acc, valid rate (and AUC) on `batch` of the model with heads reweighted by alpha
    (M, S, H), the heads not kept (M, S, H) mean-ablated. Each (M, S); run in slices. With
    `end_means` (the heads' means at the `sentence` ending) also end and sentence accuracy,
    the same alpha and mask at the ending. acts: the set's Activations (float64). means: of
    `head_means`, or for a `deep` model a `Means` (`ablation_means`). key: names this
    computation on the set's shared pass (`ride_schemes`; None: a pass of its own)."""
    tally, ends = _makers(acts, means, alpha, keep, auc, end_means)
    with torch.no_grad():
        if deep(acts.model):
            got, ended = tally(), None if ends is None else ends()
            for piece, logits, end in _deep_rows(acts, means, alpha, keep, end_means):
                got.logits(piece, logits)
                if ended is not None:
                    ended.put(end)
        else:
            key = f"schemes.{id(alpha)}" if key is None else key
            got = acts.over_heads(key, tally)
            ended = None if ends is None else acts.end.over_heads(key, ends)
        return got.value(acts.batch, ended)


def _makers(acts: Activations, means, alpha: torch.Tensor, keep: torch.Tensor, auc: bool,
            end_means):
    """`scheme_metrics`' computations on a set's slices: its `_Tally` and, in `sentence`,
    its `_Ends` on the ending's (else None)."""
    m, n, ending = acts.model, len(acts.batch), end_means is not None
    return (lambda: _Tally(m, means, alpha, keep, auc, ending, n),
            (lambda: _Ends(m, end_means, alpha, keep, n)) if ending else None)


def ride_schemes(acts: Activations, means, alpha: torch.Tensor, keep: torch.Tensor,
                 end_means, key: str) -> None:
    """Have `scheme_metrics(acts, ..., key=key)` ride the set's next pass (and its ending's)."""
    if not deep(acts.model):
        tally, ends = _makers(acts, means, alpha, keep, True, end_means)
        acts.ride_heads(key, tally)
        if ends is not None:
            acts.end.ride_heads(key, ends)


class _Tally(OnHeads):
    """`scheme_metrics` fed slice by slice: the weight answered right and validly (M, S), the
    scores logit(1) - logit(0) (M, S, B) for the AUC and, in `sentence`, which answers are
    right (M, S, B)."""

    def __init__(self, model: Model, means, alpha, keep, auc: bool, ending: bool, n: int):
        self.model, self.means, self.alpha, self.keep = model, means, alpha, keep
        self.auc, self.ending = auc, ending
        self.hits, self.valid, self.per = 0.0, 0.0, Sliced(n)

    def heads(self, piece: Batch, base: torch.Tensor, o: torch.Tensor) -> None:
        self.logits(piece, scheme_logits(self.model, base, o, self.means, self.alpha,
                                         self.keep))

    def logits(self, piece: Batch, logits: torch.Tensor) -> None:
        """One slice's logits (M, S, b, V)."""
        pred = logits.argmax(-1)
        pw = piece.weight.to(torch.float64)
        right = pred == piece.y
        self.hits = self.hits + (right.to(pw.dtype) * pw).sum(-1)
        self.valid = self.valid + ((pred <= 1).to(pw.dtype) * pw).sum(-1)
        if self.auc:
            self.per.put("score", logits[..., 1] - logits[..., 0], -1)
        if self.ending:
            self.per.put("right", right, -1)

    def value(self, batch: Batch, ended: _Ends | None) -> dict[str, torch.Tensor]:
        """Weighted l-acc, valid rate (AUC; with `ended`, end and sentence accuracy)."""
        w = batch.weight.to(torch.float64)
        out = {"l_acc": self.hits / w.sum(), "valid": self.valid / w.sum()}
        if self.auc:
            out["auc"] = roc_auc_rows(self.per["score"], batch.y, batch.weight)
        if ended is not None:  # summed slice by slice, as the hits
            end, sizes = ended.per["end"], self.per.sizes["right"]
            out |= {"end": sums_by_slice(sizes, w, end) / w.sum(),
                    "sentence": sums_by_slice(sizes, w, end & self.per["right"]) / w.sum()}
        return out


class _Ends(OnHeads):
    """Whether the `sentence` ending's query predicts EOS under each mask (M, S, B), fed
    slice by slice (the ending's slices: the same strings, the true answer fed)."""

    def __init__(self, model: Model, end_means, alpha, keep, n: int):
        self.model, self.means, self.alpha, self.keep = model, end_means, alpha, keep
        self.per = Sliced(n)

    def heads(self, piece: Batch, base: torch.Tensor, o: torch.Tensor) -> None:
        logits = scheme_logits(self.model, base, o, self.means, self.alpha, self.keep)
        self.put(logits.argmax(-1) == EOS)

    def put(self, end: torch.Tensor) -> None:
        self.per.put("end", end, -1)


def scheme_logits(model: Model, base: torch.Tensor, o: torch.Tensor, means: torch.Tensor,
                  alpha: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """The logits (..., S, B, V) of `combine`'s residual. Without ln_final base, o and means are
    read out first (`Model.read_out`) and recombined as logits."""
    if model.cfg.layernorm:
        return unembed(model, combine(base, o, means, alpha, keep))
    return combine(model.unembed(base), model.read_out(o), model.read_out(means), alpha, keep)


def _deep_rows(acts: Activations, means: Means, alpha: torch.Tensor, keep: torch.Tensor,
               end_means: Means | None):
    """`scheme_metrics`' slices of a deep model: each mask's logits through the later layers
    (`layered_logits`), the unedited forward of each slice shared by the masks."""
    model = acts.model
    for piece in slices(model, acts.batch):
        caches = model.run_layers(piece, positions=True)
        logits = _deep_logits(model, piece, alpha, keep, means, caches)  # (M, S, b, V)
        end = None
        if end_means is not None:
            end = _deep_logits(model, at_end(piece), alpha, keep, end_means).argmax(-1) == EOS
        yield piece, logits, end


def unembed(model: Model, resid: torch.Tensor) -> torch.Tensor:
    """model.unembed for residuals with any leading axes: (..., S, B, d) -> (..., S, B, V)."""
    lead, (S, B, d) = resid.shape[:-3], resid.shape[-3:]
    flat = resid.reshape(-1, S, B, d).transpose(0, 1).reshape(S, -1, d)
    out = model.unembed(flat)
    return out.reshape(S, -1, B, out.shape[-1]).transpose(0, 1).reshape(*lead, S, B, -1)


def combine(base: torch.Tensor, o: torch.Tensor, means: torch.Tensor, alpha: torch.Tensor,
            keep: torch.Tensor) -> torch.Tensor:
    """Residual (..., S, B, d) with kept heads scaled by alpha (..., S, H) and the others
    replaced by their mean (S, H, d), or by a mean per example (S, B, H, d: rows of two queries
    with means of their own); keep (..., S|1, H) bool."""
    kept = torch.einsum("...sh,sbhd->...sbd", alpha * keep, o)
    off = (~keep).to(o.dtype).expand_as(alpha)
    if means.dim() == 4:
        return base + kept + torch.einsum("...sh,sbhd->...sbd", off, means)
    return base + kept + torch.einsum("...sh,shd->...sd", off, means)[..., None, :]


def logit_jacobian(model: Model, resid: torch.Tensor, tangents: torch.Tensor) -> torch.Tensor:
    """Derivative of the logits at resid (M, S, B, d) along tangents (M, S, B, d, H), through
    ln_final: (M, S, B, V, H). Written out (the derivative of x -> w (x - mean) / sigma + b)
    because forward-mode autograd compiles decompositions on first use, seconds per process."""
    W_U = model.weights["unembed.W_U"]
    if not model.cfg.layernorm:
        return torch.einsum("msbdh,sdv->msbvh", tangents, W_U)
    xc = (resid - resid.mean(-1, keepdim=True))[..., None]  # (M, S, B, d, 1)
    sigma = (xc.pow(2).mean(-2, keepdim=True) + LN_EPS).sqrt()
    tc = tangents - tangents.mean(-2, keepdim=True)
    dn = tc / sigma - xc * (xc * tc).mean(-2, keepdim=True) / sigma**3
    gain = model.weights["ln_final.w"][:, None, :, None]  # (S, 1, d, 1)
    return torch.einsum("msbdh,sdv->msbvh", dn * gain, W_U)


def fit_rows(model: Model, fit: Batch, ending: bool = True, shared: Shared | None = None):
    """What alpha is fitted on: base (S, R, d), head outputs o (S, R, H, d), the heads' means
    (S, H, d) or per row (S, R, H, d), the targets (R,) and row weights (R,). In `classify`, or
    without `ending`, the rows are the answers of `fit`; in `sentence` the answers and then the
    endings, each query with its own means and half the weight."""
    shared = Shared(model) if shared is None else shared
    fa = shared.of(fit)
    base, o = fa.heads
    means, emeans = head_means(model, fit, shared)
    if model.cfg.framing == "classify" or not ending:
        return base, o, means, fit.y, fit.weight
    end = fa.end.batch
    ebase, eo = fa.end.heads
    B = len(fit)
    rows = torch.cat([means[:, None].expand(-1, B, -1, -1), emeans[:, None].expand(-1, B, -1, -1)],
                     1)
    return (torch.cat([base, ebase], 1), torch.cat([o, eo], 1), rows,
            torch.cat([fit.y, end.y]), torch.cat([fit.weight, fit.weight]))


def head_means(model: Model, fit: Batch, shared: Shared | None = None
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The heads' weighted means on `fit` (S, H, d) at the answer and, in `sentence`, at the
    ending (else None): what mean ablation puts in a head's place at each query."""
    fa = (Shared(model) if shared is None else shared).of(fit)

    def means():
        at = weighted_mean(fa.heads[1], fit.weight, 1)
        if model.cfg.framing == "classify":
            return at, None
        return at, weighted_mean(fa.end.heads[1], fit.weight, 1)
    return fa.once("means", means)


def ablation_means(model: Model, fit: Batch, shared: Shared):
    """What `scheme_metrics` mean-ablates with, at the answer and (`sentence`) the ending:
    `head_means`, or for a `deep` model `Means` (positions before the query included)."""
    if not deep(model):
        return head_means(model, fit, shared)
    fa = shared.of(fit)
    return Means.of(fa), Means.of(fa.end) if model.cfg.framing == "sentence" else None


def _refit(model: Model, base, o, means, y: torch.Tensor, weight: torch.Tensor):
    """refit(keep) -> fitted alpha (M, S, H) for masks keep (M, S, H) on the rows of `fit_rows`
    (alpha 0 where a head is not kept), for one attention-only layer. Without ln_final the
    logits are linear in alpha, L = L0 + sum_h alpha_h C_h: their pieces are read out once
    (`_readout`) and the compiled kernel fits every mask (`_fit_linear`)."""
    if not model.cfg.layernorm:
        readout = _readout(model, base, o, means)
        return lambda keep: _fit_linear(readout, keep, y, weight)
    return lambda keep: _fit_layernorm(model, base, o, means, keep, y, weight)


def _readout(model: Model, base, o, means) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The logits' pieces without ln_final, float64: base's (S, R, V, b_U included), each
    head's output's (S, R, H, V: the fixed Jacobian) and each head's mean's (S, R|1, H, V)."""
    if means.dim() == 3:  # one mean per head: the same for every row
        means = means[:, None]
    pieces = (unembed(model, base), model.read_out(o), model.read_out(means))
    return tuple(np.ascontiguousarray(x.to(torch.float64).numpy()) for x in pieces)


def _fit_linear(readout: tuple[np.ndarray, np.ndarray, np.ndarray], keep: torch.Tensor,
                y: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Fitted alpha (M, S, H) of `_newton`'s damped Newton on the fixed Jacobian, every (mask,
    seed) pair in one compiled loop (`kernels.newton_fixed`): torch's op by op steps cost more
    in overhead than in arithmetic."""
    from ..fast import kernels  # numba: imported where a compiled loop runs

    M, S, H = keep.shape
    alpha = np.empty((M, S, H))
    w = (weight / weight.sum()).to(torch.float64)
    kernels.newton_fixed(*readout, y.numpy().astype(np.int64), w.numpy(),
                         keep.contiguous().numpy(), RIDGE, DAMPING, DAMPING_FACTOR,
                         SCALE_FLOOR, DECREMENT_TOL, MAX_STEPS, alpha)
    return torch.from_numpy(alpha)


def _fit_layernorm(model: Model, base, o, means, keep: torch.Tensor, y: torch.Tensor,
                   weight: torch.Tensor) -> torch.Tensor:
    """Fitted alpha (M, S, H) for masks keep (M, S, H) through ln_final: `_newton`, the
    Jacobian taken again wherever alpha moved."""
    free = keep.to(o.dtype)

    def jacobian(alpha, _):
        tangents = o.transpose(2, 3) * free[:, :, None, None, :]  # (M, S, B, d, H)
        return logit_jacobian(model, combine(base, o, means, alpha, keep), tangents)
    return _newton(model, keep, y, weight,
                   lambda alpha, _: unembed(model, combine(base, o, means, alpha, keep)),
                   jacobian)


def _newton(model: Model, keep: torch.Tensor, y: torch.Tensor, weight: torch.Tensor,
            logits_of, jacobian) -> torch.Tensor:
    """alpha (M, S, H) minimising the objective of the module docstring from alpha = keep, by
    damped Newton on the Gauss-Newton Hessian: logits_of(alpha, asked) (M, S, R, V) are the
    rows' logits, jacobian(alpha, asked) (M, S, R, V, H) their derivative along each head's
    alpha, both read only at the (mask, seed) pairs asked (M, S) bool (elsewhere they may hold
    anything): the logits of the pairs still moving, the derivative of those whose alpha moved
    (a rejected step leaves alpha and so its derivative as they were). Every pair's numbers are
    its own (`_fit_deep` runs the pairs asked alone), so asking fewer changes no result. Used
    through ln_final and by deep models; the fixed Jacobian's fit is `_fit_linear`'s kernel.

    A step is computed for the pairs still moving only, taken out of the whole (most pairs stop
    within a few steps, a few go on to MAX_STEPS): each of its products is a sum along a
    contiguous row of one pair's numbers, which does not depend on how many pairs are in the
    batch (on one thread, as sweep jobs and `analyze` run it: tests/test_aggregation.py::
    test_the_newton_fit_steps_only_the_moving_pairs_and_gets_the_full_batch_alpha_bit_for_bit);
    MKL's batched products did, on an AMD EPYC, by where a pair's operands lay."""
    dtype = torch.float64
    w = (weight / weight.sum()).to(dtype)  # (R,)
    target = torch.nn.functional.one_hot(y, model.cfg.d_vocab).to(dtype)  # (R, V)
    M, S, H = keep.shape
    B, V = target.shape
    P = M * S  # the (mask, seed) pairs, flattened
    eye = torch.eye(H, dtype=dtype)
    free = keep.to(dtype).reshape(P, H)
    start = free.clone()

    def objective(logits, alpha, pairs):
        """The objective (A,) of some pairs (A,) and the log-probabilities it read (A, R, V),
        from every pair's logits (M, S, R, V) and these pairs' alpha (A, H)."""
        logp = torch.log_softmax(logits.reshape(P, B, V)[pairs], -1)
        ce = -((logp * target).sum(-1) * w).sum(-1)  # a sum per row, not MKL's matvec
        return ce + RIDGE / 2 * ((alpha - start[pairs]) ** 2).sum(-1), logp

    def jacobian_of(pairs):  # (A, R, V, H) of these pairs
        return J.reshape(P, B, V, H)[pairs]

    alpha = start.clone()
    every = torch.ones(M, S, dtype=torch.bool)
    pairs = torch.arange(P)
    current, logp = objective(logits_of(alpha.view(M, S, H), every), alpha, pairs)
    J = jacobian(alpha.view(M, S, H), every)
    moved = torch.zeros(P, dtype=torch.bool)  # alpha new since J was taken
    damping = torch.full((P,), DAMPING, dtype=dtype)
    done = torch.zeros(P, dtype=torch.bool)
    for _ in range(MAX_STEPS):
        if bool(moved.any()):
            J = torch.where(moved.view(M, S, 1, 1, 1), jacobian(alpha.view(M, S, H),
                                                                moved.view(M, S)), J)
        act = torch.nonzero(~done).flatten()  # the pairs still moving
        # the products as sums along contiguous rows, each pair's alone: MKL's batched products
        # round by where a pair's operands lie in the batch (seen on an AMD EPYC)
        Jt = jacobian_of(act).permute(0, 3, 1, 2).contiguous()  # (A, H, R, V)
        fa, alpha_a = free[act], alpha[act]
        p = logp[act].exp()  # (A, R, V)
        grad = (((p - target) * w[:, None])[:, None] * Jt).sum((-2, -1))  # (A, H)
        grad = (grad + RIDGE * (alpha_a - start[act])) * fa
        # Gauss-Newton: sum_b w_b J_b^T (diag p_b - p_b p_b^T) J_b
        a = (Jt * (p * w[:, None]).sqrt()[:, None]).flatten(2)  # (A, H, R * V)
        pJ = (p[:, None] * Jt).sum(-1) * w.sqrt()  # (A, H, R)
        hess = torch.stack([(a[:, i, None] * a).sum(-1) - (pJ[:, i, None] * pJ).sum(-1)
                            for i in range(H)], 1)  # a row at a time: (A, H, R * V) at most
        scale = hess.diagonal(dim1=-2, dim2=-1).mean(-1).clamp(min=SCALE_FLOOR)  # (A,)
        # heads outside the mask: identity rows and zero gradient, so they stay at 0
        hess = hess * fa[..., :, None] * fa[..., None, :] + eye * (1 - fa[..., None])
        system = hess + (RIDGE + damping[act] * scale)[..., None, None] * eye
        step = torch.linalg.solve(system, -grad[..., None])[..., 0]
        # Newton decrement: a (mask, seed) at its optimum stops for good, so its result never
        # depends on how long its companions go on
        going = ~(-(grad * step).sum(-1) < DECREMENT_TOL)
        done[act[~going]] = True
        if done.all():
            break
        act, trial = act[going], alpha_a[going] + step[going]
        ask = torch.zeros(P, dtype=torch.bool)
        ask[act] = True
        whole = alpha.clone()
        whole[act] = trial
        new, trial_logp = objective(logits_of(whole.view(M, S, H), ask.view(M, S)), trial, act)
        better = new < current[act]
        won = act[better]
        alpha[won], logp[won], current[won] = trial[better], trial_logp[better], new[better]
        damping[act] = torch.where(better, damping[act] / DAMPING_FACTOR,
                                   damping[act] * DAMPING_FACTOR)
        moved = torch.zeros(P, dtype=torch.bool)
        moved[won] = True
    return alpha.view(M, S, H)


# --- L >= 2 layers or an MLP: alpha and mean ablation through the later layers ---------------

def _edit(model: Model, piece: Batch, alpha: torch.Tensor, keep: torch.Tensor,
          at_query: torch.Tensor, before: torch.Tensor):
    """`layered_logits`' edit of one mask: head i's output scaled by alpha[:, i] (S, L * H) where
    keep[:, i] (S|1, L * H), else mean-ablated (`ablation_value`: at_query, before (S, L * H, d)
    the means on `fit`)."""
    H = model.cfg.heads

    def edit(n: int, o: torch.Tensor) -> torch.Tensor:
        out = []
        for h in range(H):
            i, shape = n * H + h, (-1,) + (1,) * (o.dim() - 2)
            mean = ablation_value(model, piece, n, at_query[:, i], before[:, i])
            out.append(torch.where(keep[:, i].view(shape), alpha[:, i].view(shape) * o[:, :, h],
                                   mean))
        return torch.stack(out, 2)
    return edit


def _deep_logits(model: Model, piece: Batch, alpha: torch.Tensor, keep: torch.Tensor,
                 means: tuple[torch.Tensor, torch.Tensor], caches=None) -> torch.Tensor:
    """Logits (M, S, b, V) of a deep model on `piece` under each mask's alpha (M, S, L * H)
    and keep (M, S|1, L * H); means: (at the query, before it) on `fit` (`Means`). One layer
    with an MLP, or two without positional embedding: `Prefixes` (every mask at once);
    otherwise a forward per mask and layer (`layered_logits`)."""
    if prefix_path(model):
        return Prefixes.of(model, piece, caches).logits(alpha, keep, means)
    return torch.stack([layered_logits(model, piece, _edit(model, piece, alpha[j], keep[j],
                                                           *means), caches)
                        for j in range(alpha.shape[0])])


def prefix_path(model: Model) -> bool:
    """Where `Prefixes` computes alpha's logits: one layer (the heads read at the query alone)
    or two without positional embedding (layer 0's outputs at a position depend only on its
    token and its prefix's counts of each kind)."""
    return model.cfg.layers == 1 or (model.cfg.layers == 2 and model.cfg.pos_embed == "none")


MASK_ELEMENTS = 1 << 23  # bounds (S, masks, b, P, H, e) per `Prefixes.logits` chunk


@dataclass
class Prefixes:
    """One slice, for alpha and mean ablation through the later layers of a model on the
    `prefix_path`, every mask at once. Layer 0's head outputs at a position depend only on
    its token and its prefix's counts of each kind (no positional embedding): they are kept
    once per distinct (token, counts) (`unique`, a few times fewer than the positions), and a
    mask's residual after layer 0 (and its MLP), keys and values of layer 1 are computed per
    distinct position, then read at each example's positions for the query's attention. With
    one layer the heads are read at the query alone (`QueryRows`)."""

    model: Model
    rows: QueryRows | None  # one layer
    index: torch.Tensor | None = None  # (b, P) each position's distinct row (0 after the query)
    valid: torch.Tensor | None = None  # (b, P) positions up to the query
    query: torch.Tensor | None = None  # (b,) the query's distinct row
    is_query: torch.Tensor | None = None  # (U,) a query's row (mean ablation puts its own mean)
    x0: torch.Tensor | None = None  # (S, U, d) each distinct row's input, W_E[token]
    o0: torch.Tensor | None = None  # (S, U, H, d) layer 0's head outputs there
    seeds: dict[int, Prefixes] = field(default_factory=dict, repr=False)  # `seeded`

    @classmethod
    def of(cls, model: Model, piece: Batch, caches=None) -> Prefixes:
        if model.cfg.layers == 1:
            return cls(model, QueryRows.of(model, piece))
        caches = model.run_layers(piece, positions=True) if caches is None else caches
        tokens = piece.tokens  # (b, P)
        b, P = tokens.shape
        V = model.cfg.d_vocab
        counts = torch.nn.functional.one_hot(tokens, V).cumsum(1)  # (b, P, V) prefix counts
        valid = torch.arange(P) <= query_rows(piece)[0][:, None]
        key = torch.cat([tokens[..., None], counts], -1).view(b * P, V + 1)
        flat = torch.nonzero(valid.view(-1)).flatten()
        keys, inverse = torch.unique(key[flat], dim=0, return_inverse=True)
        first = torch.full((len(keys),), b * P).scatter_reduce(0, inverse, flat, "amin")
        index = torch.zeros(b * P, dtype=torch.long).index_copy(0, flat, inverse).view(b, P)
        S = model.n_seeds
        o0 = caches[0].positions.permute(0, 1, 3, 2, 4).reshape(S, b * P, model.cfg.heads, -1)
        query = index.gather(1, query_rows(piece)[0][:, None])[:, 0]
        is_query = torch.zeros(len(keys), dtype=torch.bool).index_fill(0, query, True)
        return cls(model, None, index, valid, query, is_query,
                   model.weights["embed.W_E"][:, keys[:, 0]], o0[:, first])

    def logits(self, alpha: torch.Tensor, keep: torch.Tensor, means) -> torch.Tensor:
        """(M, S, b, V) under alpha (M, S, L * H), keep (M, S|1, L * H) and `Means`."""
        cfg = self.model.cfg
        b, P = (self.rows.mult.shape[1], 1) if self.index is None else self.index.shape
        per_mask = alpha.shape[1] * b * max(P * cfg.heads * cfg.d_head_,
                                            cfg.d_model + cfg.d_mlp)
        step = max(1, MASK_ELEMENTS // per_mask)
        return torch.cat([self._logits(alpha[a:a + step], keep[a:a + step], means)[0]
                          for a in range(0, len(alpha), step)])

    def alone(self, seed: int, alpha: torch.Tensor, keep: torch.Tensor, means: Means
              ) -> torch.Tensor:
        """(G, b, V) under G variants alpha and keep (G, L * H) of seed `seed`, run as a model
        of that seed alone (`seeded`): a (mask, seed) pair's numbers then depend on nothing
        else, whichever pairs a fit still runs beside it (an elementwise kernel such as GELU's
        rounds the last elements of a tensor whose size is not a multiple of its vector width
        differently, so a tensor's size may not depend on the batch)."""
        view = self.seeded(seed)
        return view.logits(alpha[:, None], keep[:, None], means.take(seed))[:, 0]

    def tangent(self, seed: int, alpha: torch.Tensor, keep: torch.Tensor, means: Means,
                directions: torch.Tensor) -> torch.Tensor:
        """The derivatives (T, b, V) of `alone`'s logits under alpha and keep (L * H) along T
        directions of alpha (T, L * H), by dual numbers (`_logits`)."""
        view = self.seeded(seed)
        return view._logits(alpha[None, None], keep[None, None], means.take(seed),
                            directions[:, None])[1][:, 0]

    def seeded(self, seed: int) -> Prefixes:
        """This slice for a model of seed `seed` alone (made once)."""
        if seed not in self.seeds:
            pick = slice(seed, seed + 1)
            model = self.model.select(seed)
            self.seeds[seed] = (replace(self, model=model, rows=self.rows.take(pick), seeds={})
                                if self.rows is not None else
                                replace(self, model=model, x0=self.x0[pick], o0=self.o0[pick],
                                        seeds={}))
        return self.seeds[seed]

    def _logits(self, alpha: torch.Tensor, keep: torch.Tensor, means,
                tangent: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`logits` of a chunk of masks and, given T directions of alpha tangent (T, S, L * H)
        (then one mask), their derivatives along them (T, S, b, V), else None: each quantity
        carried with its tangent (a dual number, the tangents' T on the masks' axis), every
        derivative written out, since forward-mode autograd's cost per operation is many times
        the arithmetic on tensors this small."""
        m, (at_query, before) = self.model, means
        H, L = m.cfg.heads, m.cfg.layers
        w = m.weights
        a, k = alpha.transpose(0, 1), keep.transpose(0, 1)  # (S, M, L * H), (S|1, M, L * H)
        ta = None if tangent is None else tangent.transpose(0, 1)  # (S, T, L * H)
        raw = {}  # each layer's head outputs at the query before `last`

        def last(n: int, result: torch.Tensor) -> torch.Tensor:  # (S, M, b, H, d) at the query
            raw[n] = result
            i = slice(n * H, (n + 1) * H)
            return torch.where(k[:, :, None, i, None], a[:, :, None, i, None] * result,
                               at_query[:, None, None, i])

        def scaled(n: int, result: torch.Tensor, t_result: torch.Tensor | None = None
                   ) -> torch.Tensor:  # the tangent of `last` (and of o0): 0 where ablated
            i = slice(n * H, (n + 1) * H)
            t = ta[:, :, None, i, None] * result
            if t_result is not None:
                t = t + a[:, :, None, i, None] * t_result
            return torch.where(k[:, :, None, i, None], t, 0.0)

        def mlp(n: int, x: torch.Tensor, tx: torch.Tensor | None):  # after layer n's MLP
            if not m.cfg.d_mlp:
                return x, tx
            if tx is None:
                return x + m._mlp(x, n), None
            out, t_out = m.mlp_dual(x, n, tx)
            return x + out, tx + t_out

        def readout(x: torch.Tensor, tx: torch.Tensor | None):  # (S, M, b, d) -> (M, S, b, V)
            S, M, b, d = x.shape
            logits = m.unembed(x.reshape(S, M * b, d)).view(S, M, b, -1).transpose(0, 1)
            return logits, None if tx is None else m.unembed_tangent(x, tx).transpose(0, 1)
        if L == 1:
            logits, results = query_logits(m, self.rows, edit=last)
            if ta is None:
                return logits.transpose(0, 1), None
            x = self.rows.x[0][:, None] + results[0].sum(-2) + w[attn(0) + "b_O"][:, None, None]
            x, tx = mlp(0, x, scaled(0, raw[0]).sum(-2))
            return logits.transpose(0, 1), m.unembed_tangent(x, tx).transpose(0, 1)
        mean0 = torch.where(self.is_query[None, :, None, None], at_query[:, None, :H],
                            before[:, None, :H])  # (S, U, H, d)
        o0 = torch.where(k[:, :, None, :H, None], a[:, :, None, :H, None] * self.o0[:, None],
                         mean0[:, None])  # (S, M, U, H, d)
        x = self.x0[:, None] + o0.sum(3) + w[attn(0) + "b_O"][:, None, None]  # (S, M, U, d)
        x, tx = mlp(0, x, None if ta is None else scaled(0, self.o0[:, None]).sum(3))
        a1 = attn(1)

        # (S, M, N, d) -> (S, M, N, H, e) and its tangent, one product per seed
        # (`Model._heads`: a seed's numbers do not depend on its companions)
        def heads(which: str, h: torch.Tensor, th: torch.Tensor | None):
            W = w[a1 + "W_" + which]

            def product(h: torch.Tensor) -> torch.Tensor:
                S, M, N, d = h.shape
                out = h.reshape(S, M * N, d) @ W.permute(0, 2, 1, 3).reshape(S, d, -1)
                return out.view(S, M, N, H, -1)
            return (product(h) + w[a1 + "b_" + which][:, None, None],
                    None if th is None else product(th))

        def ln1(x: torch.Tensor, tx: torch.Tensor | None):
            return (m._ln(x, "blocks.1.ln1"),
                    None if tx is None else m._ln_tangent(x, tx, "blocks.1.ln1"))
        h, th = ln1(x, tx)
        (keys, t_keys), (values, t_values) = heads("K", h, th), heads("V", h, th)
        x_q = x[:, :, self.query]  # (S, M, b, d)
        tx_q = None if tx is None else tx[:, :, self.query]
        q, tq = heads("Q", *ln1(x_q, tx_q))
        keys, values = keys[:, :, self.index], values[:, :, self.index]  # (S, M, b, P, H, e)
        # products and sums per element (einsum's batched products over the examples' small
        # matrices would depend on how many seeds are batched)
        c = 1.0 / math.sqrt(m.cfg.d_head_)
        scores = (q[:, :, :, None] * keys).sum(-1) * c
        scores = scores.masked_fill(~self.valid[..., None], -math.inf)
        pattern = torch.softmax(scores, 3)
        z = (pattern[..., None] * values).sum(3)  # (S, M, b, H, e)
        W_O = w[a1 + "W_O"][:, None, None]  # (S, 1, 1, H, e, d)
        out1 = (z[..., None] * W_O).sum(-2)
        x = x_q + last(1, out1).sum(3) + w[a1 + "b_O"][:, None, None]
        if ta is not None:
            t_keys, t_values = t_keys[:, :, self.index], t_values[:, :, self.index]
            t_scores = (tq[:, :, :, None] * keys + q[:, :, :, None] * t_keys).sum(-1) * c
            # softmax's derivative p (t - sum p t), sum p t taken as autograd takes it (with
            # the weights exp(s - max s)), so J is autograd's (`Model._ln_tangent` says how far)
            t_scores = t_scores.masked_fill(~self.valid[..., None], 0.0)
            e = (scores - scores.amax(3, keepdim=True)).exp()
            mean_t = (e * t_scores).sum(3, keepdim=True) / e.sum(3, keepdim=True)
            tp = pattern * (t_scores - mean_t)
            tz = (tp[..., None] * values + pattern[..., None] * t_values).sum(3)
            tx = tx_q + scaled(1, out1, (tz[..., None] * W_O).sum(-2)).sum(3)
        return readout(*mlp(1, x, tx))


def _fit_deep(shared: Shared, fit: Batch, keep: torch.Tensor, ending: bool = True
              ) -> torch.Tensor:
    """`_refit` of a deep model: alpha (M, S, L * H) by the same damped Newton, the logits of
    every row computed through the later layers. On the `prefix_path` only the (mask, seed)
    pairs `_newton` asks for are run (late in a fit most have converged), each alone
    (`Prefixes.alone`), the derivatives along its kept heads by dual numbers in one pass per
    slice (`Prefixes.tangent`); otherwise by forward-mode autograd, one forward per mask with
    a pair asked for, kept head and step (`layered_logits`)."""
    import torch.autograd.forward_ad as fwad

    m, fa = shared.model, shared.of(fit)
    queries = [(fit, Means.of(fa))]
    if m.cfg.framing == "sentence" and ending:
        queries.append((fa.end.batch, Means.of(fa.end)))
    fast = prefix_path(m)
    # each slice's unedited forward, kept: the first layer's outputs do not depend on alpha
    rows = []
    for batch, means in queries:
        for piece in slices(m, batch):
            caches = m.run_layers(piece, positions=True)
            state = Prefixes.of(m, piece, caches) if fast else None
            rows.append((piece, means, None if fast else caches, state))
    y = torch.cat([piece.y for piece, *_ in rows])
    weight = torch.cat([piece.weight for piece, *_ in rows])
    M, S, LH = keep.shape[0], m.n_seeds, keep.shape[-1]
    keep = keep.expand(M, S, LH)
    shape = (M, S, len(y), m.cfg.d_vocab)

    def logits_of(alpha, asked):
        if not fast:
            return torch.cat([_deep_logits(m, piece, alpha, keep, means, caches)
                              for piece, means, caches, _ in rows], 2)
        out = torch.zeros(shape, dtype=torch.float64)
        for j, s in torch.nonzero(asked).tolist():
            out[j, s] = torch.cat([state.alone(s, alpha[j, s][None], keep[j, s][None], means)[0]
                                   for _, means, _, state in rows])
        return out

    def jacobian(alpha, asked):
        J = torch.zeros(*shape, LH, dtype=torch.float64)
        if fast:  # each asked pair alone, its kept heads' variants side by side
            for j, s in torch.nonzero(asked).tolist():
                heads = torch.nonzero(keep[j, s]).flatten()
                if len(heads):
                    directions = torch.zeros(len(heads), LH, dtype=torch.float64)
                    directions[torch.arange(len(heads)), heads] = 1.0
                    J[j, s, ..., heads] = torch.cat(
                        [state.tangent(s, alpha[j, s], keep[j, s], means, directions)
                         for _, means, _, state in rows], 1).permute(1, 2, 0)
            return J
        for j in torch.nonzero(asked.any(1)).flatten().tolist():
            for i in torch.nonzero(keep[j].any(0)).flatten().tolist():
                with fwad.dual_level():
                    tangent = torch.zeros_like(alpha[j:j + 1])
                    tangent[..., i] = keep[j:j + 1, :, i].to(tangent.dtype)
                    dual = fwad.make_dual(alpha[j:j + 1], tangent)
                    J[j, ..., i] = torch.cat([fwad.unpack_dual(_deep_logits(
                        m, piece, dual, keep[j:j + 1], means, caches)).tangent[0]
                        for piece, means, caches, _ in rows], 1)
        return J

    return _newton(m, keep, y, weight, logits_of, jacobian)


@dataclass
class Means:
    """What mean ablation puts in a head's place, fitted on a set's queries: the heads' weighted
    means at the query (S, L * H, d) and, below the last layer, over the positions before it."""

    at_query: torch.Tensor
    before: torch.Tensor

    def __iter__(self):
        return iter((self.at_query, self.before))

    def take(self, seed: int) -> Means:
        """The means of seed `seed` alone (its position among the model's seeds)."""
        return Means(self.at_query[seed:seed + 1], self.before[seed:seed + 1])

    @classmethod
    def of(cls, acts: Activations) -> Means:
        return acts.once("deep_means", lambda: cls(
            weighted_mean(acts.heads[1], acts.batch.weight, 1), position_means(acts)))


def fit_alpha(model: Model, fit: Batch, mask: torch.Tensor | None = None,
              shared: Shared | None = None) -> torch.Tensor:
    """alpha (S, H) minimising the answer's cross-entropy on `fit` (in `sentence`, the mean of
    the answer's and the ending's), everything else frozen.

    mask (H,) or (S, H) bool: the heads that keep their output (the others are mean-ablated
    and get alpha 0). Starts at the learned alpha = 1, so it never ends worse than learned.
    Without a mask it is fitted once per `shared` (the aggregation's fitted scheme).
    """
    shared = Shared(model) if shared is None else shared

    def fitted():
        S, H = model.n_seeds, len(head_ids(model))
        keep = torch.ones(S, H, dtype=torch.bool) if mask is None else mask.expand(S, H).bool()
        if deep(model):
            return _fit_deep(shared, fit, keep[None])[0]
        return _refit(shared.model, *fit_rows(model, fit, shared=shared))(keep[None])[0]
    return fitted() if mask is not None else shared.of(fit).once("alpha_fitted", fitted)


def schemes(model: Model, fit: Batch, fitted: torch.Tensor | None = None,
            shared: Shared | None = None) -> list[tuple[str, int, torch.Tensor, torch.Tensor]]:
    """(scheme, head, alpha (S, H), keep (S, H)) of every aggregation scheme; head -1 when the
    scheme concerns the whole model."""
    S, H = model.n_seeds, len(head_ids(model))
    ones, all_ = torch.ones(S, H, dtype=torch.float64), torch.ones(S, H, dtype=torch.bool)
    shared = Shared(model) if shared is None else shared
    fitted = fit_alpha(model, fit, shared=shared) if fitted is None else fitted
    out = [("learned", -1, ones, all_), ("uniform", -1, uniform_alpha(model, fit, shared), all_)]
    for h in range(H):
        only = torch.zeros(S, H, dtype=torch.bool)
        only[:, h] = True
        out += [("single", h, ones, only), ("leave_one_out", h, ones, ~only)]
    return out + [("fitted", -1, fitted.to(torch.float64), all_)]


def mean_norms(model: Model, fit: Batch, shared: Shared | None = None) -> torch.Tensor:
    """Weighted mean norm of each head's output o_h on `fit`. (S, H)."""
    fa = (Shared(model) if shared is None else shared).of(fit)
    return fa.once("mean_norms", lambda: weighted_mean(fa.heads[1].norm(dim=-1), fit.weight, 1))


def uniform_alpha(model: Model, fit: Batch, shared: Shared | None = None) -> torch.Tensor:
    """alpha_h = (sum_k n_k / m) / n_h over the m heads with output: each at the same mean
    contribution norm, the sum of the norms unchanged. A head with zero output has nothing to
    scale and stays at 0; averaging over it too would shrink the total. (S, H)."""
    n = mean_norms(model, fit, shared)
    alive = n > 0
    target = n.sum(-1, keepdim=True) / alive.sum(-1, keepdim=True).clamp(min=1)
    return torch.where(alive, target / n.clamp(min=1e-300), 0.0)


def _plan(model: Model, fit: Batch, fitted: torch.Tensor | None, shared: Shared) -> tuple:
    """`aggregate`'s schemes, their alpha and keep (M, S, H) stacked, and the means."""
    plan = schemes(shared.model, fit, fitted, shared)
    alpha = torch.stack([a for _, _, a, _ in plan])  # (M, S, H)
    keep = torch.stack([k for _, _, _, k in plan])
    return plan, alpha, keep, *ablation_means(model, fit, shared)


def ride_aggregate(model: Model, sets: dict[str, Batch], fit: Batch,
                   fitted: torch.Tensor | None, shared: Shared) -> None:
    """Have `aggregate` ride each set's next pass (`ride_schemes`)."""
    _, alpha, keep, means, end_means = _plan(model, fit, fitted, shared)
    for batch in sets.values():
        ride_schemes(shared.of(batch), means, alpha, keep, end_means, SCHEMES)


def aggregate(model: Model, sets, fit: Batch, fitted: torch.Tensor | None = None,
              shared: Shared | None = None) -> list[dict]:
    """Tidy rows (scheme, head, seed, set, l_acc, valid, auc; in `sentence` also end and
    sentence) for every scheme and set.

    sets: names or name -> Batch. fitted: a precomputed fit_alpha(model, fit), to reuse.
    shared: the sets' Activations, if other analyses read them too.
    """
    shared = Shared(model) if shared is None else shared
    plan, alpha, keep, means, end_means = _plan(model, fit, fitted, shared)
    rows = []
    for name, batch in as_batches(model.cfg, sets).items():
        got = {k: v.numpy() for k, v in scheme_metrics(
            shared.of(batch), means, alpha, keep, end_means=end_means, key=SCHEMES).items()}
        for j, (scheme, head, _, _) in enumerate(plan):
            for i, seed in enumerate(model.seeds):
                rows.append({"scheme": scheme, "head": head, "seed": seed, "set": name}
                            | {k: float(v[j, i]) for k, v in got.items()})
    return rows


def _subset_l_acc(m: Model, acts: Activations, subsets: list[tuple[int, ...]], parts
                  ) -> torch.Tensor:
    """l-acc on `batch` of each head subset (the others mean-ablated, alpha refitted on `fit`),
    every seed at once, in slices that bound memory. (M, S)."""
    refit, means, rows = parts
    batch = acts.batch
    S, H = m.n_seeds, len(head_ids(m))
    step = max(1, CHUNK_ELEMENTS // (S * max(rows, len(batch)) * m.cfg.d_vocab * max(H, 1)))
    out = []
    for a in range(0, len(subsets), step):
        chunk = subsets[a:a + step]
        keep = torch.zeros(len(chunk), S, H, dtype=torch.bool)
        for j, heads in enumerate(chunk):
            keep[j, :, list(heads)] = True
        out.append(scheme_metrics(acts, means, refit(keep), keep, auc=False)["l_acc"])
    return torch.cat(out)


def _parts(model: Model, fit: Batch, shared: Shared | None = None):
    """What a head set's alpha is refitted on: the answers alone, whatever the framing, since
    the minimal head set and the division of labour (SPEC 4) are judged on answer l-acc.
    (refit(keep) -> alpha, the means mean ablation puts in, the number of rows fitted on)."""
    shared = Shared(model) if shared is None else shared
    if deep(model):
        return (lambda keep: _fit_deep(shared, fit, keep, ending=False),
                Means.of(shared.of(fit)), len(fit))
    base, o, rows, y, weight = fit_rows(model, fit, ending=False, shared=shared)
    return (_refit(shared.model, base, o, rows, y, weight), head_means(model, fit, shared)[0],
            o.shape[1])


def minimal_heads(model: Model, fit: Batch, batch: Batch, threshold: float = SUCCESS_L_ACC,
                  shared: Shared | None = None) -> list[list[int] | None]:
    """Per seed, the smallest set of heads that keeps l-acc >= threshold on `batch` once alpha
    is refitted on `fit` (the other heads mean-ablated). Exhaustive by size, 0 heads first, all
    subsets of one size and all seeds fitted in one batched pass; among passing sets of the
    smallest size, the one with the highest l-acc (then the first in lexicographic order).
    None for a seed where not even all heads refitted reach the threshold.
    """
    return head_sets(model, fit, batch, threshold, shared)[0]


def head_sets(model: Model, fit: Batch, batch: Batch, threshold: float = SUCCESS_L_ACC,
              shared: Shared | None = None) -> tuple[list[list[int] | None], list[str]]:
    """Per seed, the minimal head set (`minimal_heads`) and the division of labour (SPEC 4):
    "pseudo-ensemble" if every head alone (others mean-ablated, alpha refitted) keeps l-acc >=
    threshold on `batch`; "divided" if the minimal head set has two or more heads; "mixed"
    otherwise; "unsolved" if no head set reaches it. One search serves both: the single heads are
    always fitted."""
    shared = Shared(model) if shared is None else shared
    m, acts, parts = shared.model, shared.of(batch), _parts(model, fit, shared)
    S, H = m.n_seeds, len(head_ids(m))
    found: list[list[int] | None] = [None] * S
    alone = torch.zeros(max(H, 1), S, dtype=torch.bool)
    for k in range(H + 1):
        subsets = list(combinations(range(H), k))
        acc = _subset_l_acc(m, acts, subsets, parts)  # (M, S)
        if k == 1:
            alone = acc >= threshold
        for i in range(S):
            j = int(acc[:, i].argmax())
            if found[i] is None and acc[j, i] >= threshold:
                found[i] = list(subsets[j])
        if k >= 1 and all(f is not None for f in found):
            break
    labour = ["unsolved" if best is None else "pseudo-ensemble" if bool(alone[:, i].all())
              else "divided" if len(best) >= 2 else "mixed" for i, best in enumerate(found)]
    return found, labour
