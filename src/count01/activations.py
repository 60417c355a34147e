"""What the analyses of SPEC 4 and 5 read of one model on one evaluation set, computed once.

TransformerLens shares one ActivationCache among the analyses of a forward pass; here an
`Activations` holds, per (model, set), what every analysis fits and scores on: the logits, the
head outputs o_h, the direct scores s_h along the readout direction W_U[:, 1] - W_U[:, 0]
(`readout_direction`, written once), the attention mass and per-kind weights, the kind
decomposition the intervention sweeps (`KindParts`), and the same at the `sentence` ending
(`end`). Each is computed on first use and kept; `once` keeps what a higher module fits on the
set (thresholds, probes, means, fitted alpha on `fit`), so the analyses share those too.
`analysis._compute` builds one per set and passes them to every analysis; an analysis called
alone builds its own.

Heads: the H axis of every tensor is the model's heads, in `head_ids` order ((layer, head)
pairs; one layer today), so a model of several layers adds rows, not axes.

Slices: a set is run in slices (`run_chunks`) that bound memory; the per-example tensors kept
here are a few numbers per (seed, head, example), never a per-position cache.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .language import ONE, ZERO, Batch, at_end
from .model import ATTN, Model, PosCache

CACHE_ELEMENTS = 1 << 24  # per forward slice: bounds memory (a cache tensor <= 128 MB)
KEEP_ELEMENTS = 1 << 23  # a set's head outputs (S, B, H, d) are kept whole up to this size


def sub_batch(batch: Batch, a: int, b: int) -> Batch:
    """Examples a..b-1 of an evaluation set (no seed axis)."""
    cut = (None, None) if batch.tokens is None else (batch.tokens[a:b], batch.eos_pos[a:b])
    query = None if batch.query is None else batch.query[a:b]
    return Batch(batch.counts[a:b], batch.y[a:b], batch.weight[a:b], *cut, query)


def run_chunks(model, batch: Batch):
    """(slice, cache) over consecutive slices of `batch`, each small enough that no cache tensor
    exceeds CACHE_ELEMENTS: every number over a whole set is then a sum or a concatenation over
    slices (the token path's `exhaustive` set holds 797,161 strings)."""
    slots = model.cfg.d_vocab if model.cfg.count_path or batch.tokens is None else batch.tokens.shape[-1]
    per_example = model.n_seeds * model.cfg.heads * slots * max(model.cfg.d_head_,
                                                                 model.cfg.d_model)
    size = max(1, CACHE_ELEMENTS // per_example)
    for a in range(0, len(batch), size):
        piece = batch if size >= len(batch) else sub_batch(batch, a, a + size)
        yield piece, model.run(piece)


def chunked_logits(model, batch: Batch) -> torch.Tensor:
    """model(batch) in slices: logits (S, B, V) without a whole-set cache in memory."""
    if model.cfg.count_path and batch.query is None:
        return model(batch)  # the count path never builds a per-token cache
    return torch.cat([c.logits for _, c in run_chunks(model, batch)], 1)


def readout_direction(model) -> torch.Tensor:
    """W_U[:, 1] - W_U[:, 0] (S, d_model): the direction a head's direct score is read along."""
    W_U = model.weights["unembed.W_U"]
    return W_U[..., ONE] - W_U[..., ZERO]


def head_ids(model) -> list[tuple[int, int]]:
    """(layer, head) of each index of the H axis: one layer today."""
    return [(0, h) for h in range(model.cfg.heads)]


def direct_scores(model, result: torch.Tensor) -> torch.Tensor:
    """s_h = (o_h W_U)[1] - (o_h W_U)[0] of head outputs result (S, B, H, d). -> (S, H, B)."""
    return torch.einsum("sbhd,sd->shb", result, readout_direction(model).to(result.dtype))


def kind_onehot(kinds: torch.Tensor, mult: torch.Tensor, V: int) -> torch.Tensor:
    """Each slot's kind one-hot times its multiplicity: (S|1, B, K, V)."""
    onehot = torch.nn.functional.one_hot(kinds, V).to(mult.dtype)
    return onehot * mult[..., None]


def kind_counts(cache) -> torch.Tensor:
    """Occurrences of each token kind, in id order, that the EOS query sees. (S|1, B, V)."""
    return kind_onehot(cache.kinds, cache.mult, cache.logits.shape[-1]).sum(-2)


def kind_weights(model, cache, batch: Batch) -> torch.Tensor:
    """Per-occurrence attention on each kind relative to a 0 (w(0) = 1). (S, H, V), id order.

    Count path: exp(score(t) - score(0)), exact. Token path: per example, the mean attention per
    token of kind t over the mean per 0, averaged (weighted) over examples holding both kinds;
    nan for a kind no example holds (BOS when bos is off).
    """
    if model.cfg.count_path and cache.scores.shape[1] == 1:
        sc = cache.scores[:, 0]  # (S, H, V)
        return torch.exp(sc - sc[..., ZERO:ZERO + 1])
    num, den = _ratio_sums(cache, batch)
    return num / den  # nan where no example holds the kind


def _ratio_sums(cache, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Token path: the weighted sum over examples of each kind's ratio (S, H, V) and the weight
    of the examples that hold the kind and a 0 (S|1, 1, V): sums, so slices add up."""
    n = kind_counts(cache)[:, :, None, :]  # (S|1, B, 1, V)
    per = cache.mass() / n.clamp(min=1)  # (S, B, H, V) attention per occurrence
    ok = (n > 0) & (n[..., ZERO:ZERO + 1] > 0)
    ratio = torch.where(ok, per / per[..., ZERO:ZERO + 1], 0.0)
    w = batch.weight.to(per.dtype)[None, :, None, None] * ok
    return (ratio * w).sum(1), w.sum(1)


class RatioSums:
    """`kind_weights` of a whole set accumulated over its slices: add(slice, cache), value()."""

    def __init__(self, model):
        self.model, self.exact, self.num, self.den = model, None, 0.0, 0.0

    def add(self, piece: Batch, cache) -> None:
        if self.model.cfg.count_path:
            self.exact = kind_weights(self.model, cache, piece)  # the same for every slice
        else:
            num, den = _ratio_sums(cache, piece)
            self.num, self.den = self.num + num, self.den + den

    def value(self) -> torch.Tensor:
        """(S, H, V) per-occurrence weights relative to a 0."""
        return self.exact if self.exact is not None else self.num / self.den


def weighted_mean(x: torch.Tensor, weight: torch.Tensor, dim: int) -> torch.Tensor:
    """Mean of x along `dim` (the example axis) weighted by weight (B,)."""
    shape = [1] * x.dim()
    shape[dim] = -1
    w = weight.to(x.dtype).view(shape)
    return (x * w).sum(dim) / w.sum()


@dataclass
class KindParts:
    """One set's heads decomposed by token kind, in the readout space R (vocab, or d_model when
    ln_final makes the readout non-linear): what the attention intervention (SPEC 5) sweeps."""

    n: torch.Tensor  # (S|1, B, V) occurrences of each kind (V = d_vocab, id order)
    direct: torch.Tensor  # (S, H, B, V) sum over occurrences of kind t of the direct score
    out: torch.Tensor  # (S, H, B, V, R) sum over occurrences of kind t of v W_O, read out
    orig: torch.Tensor  # (S, H, B, R) each head's unintervened output, read out
    rest: torch.Tensor  # (S, B, R) everything but the heads: e(EOS) + p + b_O (+ b_U), read out
    weights: torch.Tensor  # (S, H, V) measured per-occurrence weights relative to a 0


def readout_map(model: Model) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The linear map into the space logits are computed from: W_U (and b_U) without ln_final;
    the identity with it (the non-linear unembed then runs on the recombined residual)."""
    w = model.weights
    if model.cfg.layernorm:
        d = w["unembed.W_U"].shape[1]
        eye = torch.eye(d, dtype=w["unembed.W_U"].dtype).expand(model.n_seeds, d, d)
        return eye, None
    return w["unembed.W_U"], w["unembed.b_U"]


def _kind_values(model: Model, c) -> torch.Tensor:
    """sum over the occurrences of kind t of the value vector v: (S, b, H, V, d_head). On the
    position path from its tables, v_j = vE[t_j] + vP[j] + b_V: n_t (vE[t] + b_V) plus the
    position part summed per kind, with no per-position value vector."""
    V = model.cfg.d_vocab
    occ = kind_onehot(c.kinds, c.mult, V)  # (S|1, b, K, V)
    if isinstance(c, PosCache):
        t, b_V = c._t, model.weights[ATTN + "b_V"][:, :, None]  # (S, H, 1, e)
        n = occ.sum(-2)  # (S|1, b, V)
        per_kind = torch.einsum("sbt,shte->sbhte", n, t["vE"] + b_V)
        return per_kind + torch.einsum("sbkt,shke->sbhte", occ, t["vP"][:, :, :occ.shape[2]])
    return torch.einsum("sbkt,sbhke->sbhte", occ, c.v)


class Activations:
    """What the analyses read of one model on one evaluation set (see the module docstring).
    model: float64, as every analysis computes; batch: the set (no seed axis)."""

    def __init__(self, model: Model, batch: Batch):
        self.model, self.batch = model, batch
        self._kept: dict[str, Any] = {}

    def once(self, key: str, compute: Callable[[], Any]) -> Any:
        """compute() the first time `key` is asked of this set, the kept value after."""
        if key not in self._kept:
            self._kept[key] = compute()
        return self._kept[key]

    def chunks(self):
        """(slice, cache) of the set (`run_chunks`): kept for a set of one slice, else run
        again for the analyses that read per-position caches."""
        return run_chunks(self.model, self.batch)

    def _pass(self) -> dict[str, Any]:
        """One run over the set's slices: the per-example quantities every analysis reads."""
        def run():
            m = self.model
            fields: dict[str, list[torch.Tensor]] = {"direct": [], "logits": []}
            mass, ratios = 0.0, RatioSums(m)
            for piece, c in self.chunks():
                fields["direct"].append(direct_scores(m, c.result))  # (S, H, b)
                fields["logits"].append(c.logits)
                mass = mass + (c.mass() * piece.weight[None, :, None, None]).sum(1)  # (S, H, V)
                ratios.add(piece, c)
            return {"direct": torch.cat(fields["direct"], -1),
                    "logits": torch.cat(fields["logits"], 1),
                    "mass": mass / float(self.batch.weight.sum()), "weights": ratios.value()}
        return self.once("pass", run)

    @property
    def direct(self) -> torch.Tensor:
        """Direct scores s_h (S, H, B)."""
        return self._pass()["direct"]

    @property
    def mass(self) -> torch.Tensor:
        """Weighted mean attention mass of the EOS query on each kind (S, H, V)."""
        return self._pass()["mass"]

    @property
    def weights(self) -> torch.Tensor:
        """Per-occurrence attention weights relative to a 0 (S, H, V) (`kind_weights`)."""
        return self._pass()["weights"]

    @property
    def logits(self) -> torch.Tensor:
        """Logits at the query (S, B, V), as `chunked_logits` gives them."""
        if self.model.cfg.count_path and self.batch.query is None:
            return self.once("logits", lambda: self.model(self.batch))
        return self._pass()["logits"]

    @property
    def heads(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The residual without the heads, base (S, B, d), and the head outputs o (S, B, H, d)."""
        def run():
            parts = [(c.resid - c.result.sum(2), c.result) for _, c in self.chunks()]
            return torch.cat([b for b, _ in parts], 1), torch.cat([o for _, o in parts], 1)
        return self.once("heads", run)

    def head_slices(self):
        """(slice, base, o) over the set: the residual without the heads (S, b, d) and the head
        outputs (S, b, H, d), from `heads` kept whole where they fit in KEEP_ELEMENTS (one
        slice), else run slice by slice."""
        m = self.model
        if len(self.batch) * m.n_seeds * m.cfg.heads * m.cfg.d_model <= KEEP_ELEMENTS:
            yield (self.batch, *self.heads)
            return
        for piece, c in self.chunks():
            yield piece, c.resid - c.result.sum(2), c.result

    @property
    def end(self) -> Activations:
        """The same at the `sentence` ending's query (`at_end`: the true answer fed)."""
        return self.once("end", lambda: Activations(self.model, at_end(self.batch)))

    @property
    def kind_parts(self) -> KindParts:
        """Every head's output decomposed by token kind (`KindParts`)."""
        return self.once("kind_parts", self._kind_parts)

    def _kind_parts(self) -> KindParts:
        m = self.model
        W_O = m.weights[ATTN + "W_O"]
        R, bias = readout_map(m)
        dU = readout_direction(m)  # (S, d)
        fields: dict[str, list[torch.Tensor]] = {}
        ratios = RatioSums(m)
        for piece, c in self.chunks():
            vk = _kind_values(m, c)  # (S, b, H, V, d_head)
            got = {"n": kind_counts(c),
                   "direct": torch.einsum("sbhte,shed,sd->shbt", vk, W_O, dU),
                   "out": torch.einsum("sbhte,shed,sdr->shbtr", vk, W_O, R),
                   "orig": torch.einsum("sbhd,sdr->shbr", c.result, R),
                   "rest": torch.einsum("sbd,sdr->sbr", c.resid - c.result.sum(2), R)}
            for k, v in got.items():
                fields.setdefault(k, []).append(v)
            ratios.add(piece, c)
        axis = {"n": 1, "direct": 2, "out": 2, "orig": 2, "rest": 1}  # the example axis
        parts = {k: torch.cat(v, axis[k]) for k, v in fields.items()}
        if bias is not None:
            parts["rest"] = parts["rest"] + bias[:, None]
        return KindParts(**parts, weights=ratios.value())


class Shared:
    """One `Activations` per evaluation set of one model, made on first ask: what
    `analysis._compute` passes to every analysis, so each set is run and each quantity fitted
    on `fit` is computed once. The model is held in float64, as every analysis computes."""

    def __init__(self, model: Model):
        self.model = model.to(torch.float64)
        self._sets: dict[int, Activations] = {}

    def of(self, batch: Batch) -> Activations:
        """The Activations of `batch` (the same object each time for the same batch)."""
        got = self._sets.get(id(batch))
        if got is None or got.batch is not batch:
            got = self._sets[id(batch)] = Activations(self.model, batch)
        return got
