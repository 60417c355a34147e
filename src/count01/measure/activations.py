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

Heads: the H axis of every tensor is the model's heads of every layer, in `head_ids` order
((layer, head) pairs, layer by layer: index layer * H + h, the global head index of the tables),
so a model of several layers adds rows, not axes. With L >= 2 layers or an MLP (`deep`) the
logits are no longer a linear function of the heads' outputs at the query: the analyses that
change a head's output then run the later layers again (`layered_logits`), exactly.

Slices: a set is run in slices (`run_chunks`) that bound memory; the per-example tensors kept
here are a few numbers per (seed, head, example), never a per-position cache. One pass serves
every analysis of a set: an analysis registers what it computes per slice (`ride`) before the
first pass (`analyze` registers them all once what they fit on `fit` is fitted), and that pass
feeds each of them every slice (`rode`), so the position path's `exhaustive` (341 slices) is run
once, not once per analysis.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from threadpoolctl import threadpool_limits

from ..cache import ATTN, Cache, attn
from ..fast.position import PosCache
from ..language import ONE, ZERO, Batch, at_end
from ..model import Model

CACHE_ELEMENTS = 1 << 24  # per forward slice: bounds memory (a cache tensor <= 128 MB)
SLICE_SEEDS = 8  # slices are sized for this many seeds (the default n_seeds), whatever the
# model's: a seed alone and in a batch then sums the same slices in the same order, bit for bit
# (a model of more seeds holds proportionally more per slice)
KEEP_ELEMENTS = 1 << 23  # a set's head outputs (S, B, H, d) are kept whole up to this size


def sub_batch(batch: Batch, a: int, b: int) -> Batch:
    """Examples a..b-1 of an evaluation set (no seed axis)."""
    cut = (None, None) if batch.tokens is None else (batch.tokens[a:b], batch.eos_pos[a:b])
    query = None if batch.query is None else batch.query[a:b]
    return Batch(batch.counts[a:b], batch.y[a:b], batch.weight[a:b], *cut, query)


def run_chunks(model, batch: Batch):
    """(slice, cache) over consecutive slices of `batch`, each small enough that no cache tensor
    exceeds CACHE_ELEMENTS: every number over a whole set is then a sum or a concatenation over
    slices (the token path's `exhaustive` set holds 797,161 strings). On the position path the
    slices share one set of tables (`Model.batch_tables`: they have the set's width)."""
    if model.pos_path(batch):
        t = model.batch_tables(batch)
        for piece in slices(model, batch):
            yield piece, model._pos_run(piece, t)
        return
    for piece in slices(model, batch):
        yield piece, merged_run(model, piece)


def slices(model, batch: Batch):
    """Consecutive slices of `batch` small enough for one forward (`run_chunks`) of
    SLICE_SEEDS seeds: their sizes do not depend on the model's number of seeds."""
    cfg = model.cfg
    slots = cfg.d_vocab if cfg.count_path or batch.tokens is None else batch.tokens.shape[-1]
    per_example = SLICE_SEEDS * cfg.heads * slots * max(cfg.d_head_, cfg.d_model)
    if cfg.layers > 1:  # every position of every layer: scores, q, k, v and outputs
        per_example = (SLICE_SEEDS * cfg.heads * slots * cfg.layers
                       * (slots + 3 * cfg.d_head_ + cfg.d_model))
    size = max(1, CACHE_ELEMENTS // per_example)
    for a in range(0, len(batch), size):
        yield batch if size >= len(batch) else sub_batch(batch, a, a + size)


def deep(model) -> bool:
    """L >= 2 layers or an MLP: the logits are not linear in the heads' outputs at the query."""
    return model.cfg.layers > 1 or bool(model.cfg.d_mlp)


def merged_run(model, batch: Batch) -> Cache:
    """model.run, with every layer's heads side by side on the H axis (`head_ids` order): the
    query row's pattern, scores, values, z and outputs of every head; resid and logits the
    model's. One layer: model.run itself."""
    if model.cfg.layers == 1:
        return model.run(batch)
    caches = model.run_layers(batch)
    last = caches[-1]

    def cat(field):
        return torch.cat([getattr(c, field) for c in caches], 2)
    return Cache(cat("pattern"), last.kinds, last.mult, cat("scores"), cat("v"), cat("z"),
                 cat("result"), last.resid, last.logits)


def stacked(model, name: str) -> torch.Tensor:
    """A per-head attention weight of every layer side by side on the head axis (S, L * H, ...),
    in `head_ids` order: e.g. stacked(model, "W_O")."""
    return torch.cat([model.weights[attn(n) + name] for n in range(model.cfg.layers)], 1)


def chunked_logits(model, batch: Batch) -> torch.Tensor:
    """model(batch) in slices: logits (S, B, V) without a whole-set cache in memory."""
    if model.cfg.count_path and batch.query is None:
        return model(batch)  # the count path never builds a per-token cache
    out = Sliced(len(batch))
    for _, c in run_chunks(model, batch):
        out.put("logits", c.logits, 1)
    return out["logits"]


class Sliced(dict):
    """A set's per-example results written slice by slice into one tensor each (allocated at
    the first slice), not kept as a tensor per slice and concatenated: those small tensors,
    made after each slice's temporaries and kept, pinned the heap between them, and glibc grew
    it by a slice's worth at every slice (+1.9 GB over the intervention grid; 3 GB peak for a
    4-seed learned-position analysis before)."""

    def __init__(self, n: int):
        super().__init__()
        self.n, self.sizes = n, {}  # key -> the slices' sizes, in order

    def put(self, key: str, value: torch.Tensor, axis: int) -> None:
        """The next slice's value of key (its examples on `axis`) after the previous one's."""
        if key not in self:
            shape = list(value.shape)
            shape[axis] = self.n
            self[key], self.sizes[key] = value.new_empty(shape), []
        b = value.shape[axis]
        self[key].narrow(axis, sum(self.sizes[key]), b).copy_(value)
        self.sizes[key].append(b)


def sums_by_slice(sizes: list[int], weight: torch.Tensor, hit: torch.Tensor) -> torch.Tensor:
    """The weight (B,) of the examples where hit (..., B) holds, summed slice by slice in the
    order of sizes: the order the other sums over the same slices were made in, so the same
    bits as summing each slice as it came."""
    total, a = 0.0, 0
    for b in sizes:
        pw = weight[a:a + b].to(torch.float64)
        total = total + (hit[..., a:a + b].to(pw.dtype) * pw).sum(-1)
        a += b
    return total


def head_parts(cache) -> tuple[torch.Tensor, torch.Tensor]:
    """The residual without the heads (S, b, d) and the head outputs o (S, b, H, d) of a
    cache whose heads are side by side (`merged_run`)."""
    return cache.resid - cache.result.sum(2), cache.result


class OnHeads:
    """A computation over a set's slices of head outputs: heads(slice, base, o) for each in
    order (`Activations.over_heads`); add(slice, cache) feeds it a shared pass's cache."""

    def heads(self, piece: Batch, base: torch.Tensor, o: torch.Tensor) -> None:
        raise NotImplementedError

    def add(self, piece: Batch, cache) -> None:
        self.heads(piece, *head_parts(cache))


def readout_direction(model) -> torch.Tensor:
    """W_U[:, 1] - W_U[:, 0] (S, d_model): the direction a head's direct score is read along."""
    W_U = model.weights["unembed.W_U"]
    return W_U[..., ONE] - W_U[..., ZERO]


def head_ids(model) -> list[tuple[int, int]]:
    """(layer, head) of each index of the H axis: index layer * H + head."""
    return [(n, h) for n in range(model.cfg.layers) for h in range(model.cfg.heads)]


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
    token of kind t over the mean per 0, averaged (weighted) over examples holding both kinds
    and where the head's attention on the 0s has not underflowed (so w(0) = 1 exactly);
    nan for a kind no such example holds (BOS when bos is off; every kind of a head whose
    attention on the 0s underflows in every example: `grid_weights` then gives 0 to all but
    the intervened kinds).
    """
    if model.cfg.count_path and cache.scores.shape[1] == 1:
        sc = cache.scores[:, 0]  # (S, H, V)
        return torch.exp(sc - sc[..., ZERO:ZERO + 1])
    num, den = _ratio_sums(cache, batch)
    return num / den  # nan where no example holds the kind


def _ratio_sums(cache, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Token path: the weighted sum over examples of each kind's ratio (S, H, V) and the weight
    of the examples that hold the kind and a 0 the head attends to (S, H, V): sums, so slices
    add up. An example whose attention on the 0s underflows (to 0, or so near that a ratio
    overflows) would add inf or nan: it is left out for that head."""
    n = kind_counts(cache)[:, :, None, :]  # (S|1, B, 1, V)
    per = cache.mass() / n.clamp(min=1)  # (S, B, H, V) attention per occurrence
    zero = per[..., ZERO:ZERO + 1]
    ratio = per / torch.where(zero > 0, zero, 1.0)
    held = (n > 0) & (n[..., ZERO:ZERO + 1] > 0)
    usable = (zero > 0) & (torch.isfinite(ratio) | ~held).all(-1, keepdim=True)
    ok = held & usable
    ratio = torch.where(ok, ratio, 0.0)
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
    ln_final makes the readout non-linear): what the attention intervention (SPEC 5) sweeps.
    Of a `deep` model only n, direct and weights (its logits are not a sum of readouts: the
    intervention runs the model instead); a head's own output under the intervention is still
    this sum, since its values do not depend on its own query row."""

    n: torch.Tensor  # (S|1, B, V) occurrences of each kind (V = d_vocab, id order)
    direct: torch.Tensor  # (S, H, B, V) sum over occurrences of kind t of the direct score
    out: torch.Tensor | None  # (S, H, V, B, R) sum over occurrences of kind t of v W_O, read
    # out; kinds before examples: the grid's product over the kinds is then one bmm per (s, h)
    # on it as it lies (5x faster than einsum copying it into that layout at every chunk; the
    # same bmm, so the same numbers)
    orig: torch.Tensor | None  # (S, H, B, R) each head's unintervened output, read out
    rest: torch.Tensor | None  # (S, B, R) all but the heads: e(EOS) + p + b_O (+ b_U), read out
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
        self._riders: dict[str, Any] = {}  # computations waiting for the set's next pass
        self._rode: dict[str, Any] = {}  # and those a pass has fed, until read

    def once(self, key: str, compute: Callable[[], Any]) -> Any:
        """compute() the first time `key` is asked of this set, the kept value after."""
        if key not in self._kept:
            self._kept[key] = compute()
        return self._kept[key]

    def chunks(self):
        """(slice, cache) of the set (`run_chunks`): kept for a set of one slice, else run
        again for the analyses that read per-position caches."""
        return run_chunks(self.model, self.batch)

    def ride(self, key: str, make: Callable[[], Any]) -> None:
        """Have the set's next pass feed make() (an object with add(slice, cache)) every slice,
        for `rode(key)`: the analyses registered before a pass share its forward (the position
        path's `exhaustive` is 341 slices a pass). A key stands for one computation: asked
        again before the first is read, it is not registered twice."""
        if key not in self._riders and key not in self._rode:
            self._riders[key] = make()

    def rode(self, key: str, make: Callable[[], Any]) -> Any:
        """The computation of key (`ride`) once a pass fed it every slice in order: the pass
        that carried it, else one run now, carrying every computation registered by then.
        Given up once read."""
        self.ride(key, make)
        if key not in self._rode:
            riders, self._riders = self._riders, {}
            with threadpool_limits(1):  # BLAS threads only wait for each other on these sizes
                for piece, c in self.chunks():
                    for got in riders.values():
                        got.add(piece, c)
            self._rode |= riders
        return self._rode.pop(key)

    def over_heads(self, key: str, make: Callable[[], OnHeads]) -> OnHeads:
        """make() fed every slice's head outputs (`head_slices`): from those kept whole where
        they are, else on the set's shared pass under key (`ride_heads`)."""
        if not self.keeps_heads():
            return self.rode(key, make)
        got = make()
        for piece, base, o in self.head_slices():
            got.heads(piece, base, o)
        return got

    def ride_heads(self, key: str, make: Callable[[], OnHeads]) -> None:
        """`over_heads` of key on the set's next pass, where the heads are not kept whole."""
        if not self.keeps_heads():
            self.ride(key, make)

    def ride_pass(self) -> None:
        """Have the set's next pass also make `_pass`'s quantities (on the count path the
        logits take no pass, so the first analysis that needs one may run it)."""
        if "pass" not in self._kept:
            self.ride("pass", lambda: _Pass(self))

    def _pass(self) -> dict[str, Any]:
        """One run over the set's slices: the per-example quantities every analysis reads."""
        return self.once("pass", lambda: self.rode("pass", lambda: _Pass(self)).value())

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
        """The residual without the heads, base (S, B, d), and the head outputs o (S, B, H, d).
        base is what the heads add to at one attention-only layer only: a `deep` model's logits
        are not read from base + sum o (its analyses run the later layers instead)."""
        def run():
            out = Sliced(len(self.batch))
            for _, c in self.chunks():
                base, o = head_parts(c)
                out.put("base", base, 1)
                out.put("o", o, 1)
            return out["base"], out["o"]
        return self.once("heads", run)

    def keeps_heads(self) -> bool:
        """Whether `heads` keeps the set's head outputs whole (within KEEP_ELEMENTS)."""
        m = self.model
        return len(self.batch) * m.n_seeds * m.cfg.heads * m.cfg.d_model <= KEEP_ELEMENTS

    def head_slices(self):
        """(slice, base, o) over the set: the residual without the heads (S, b, d) and the head
        outputs (S, b, H, d), from `heads` kept whole where they fit in KEEP_ELEMENTS (one
        slice), else run slice by slice."""
        if self.keeps_heads():
            yield (self.batch, *self.heads)
            return
        for piece, c in self.chunks():
            yield piece, *head_parts(c)

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
        W_O = stacked(m, "W_O")
        R, bias = readout_map(m)
        dU = readout_direction(m)  # (S, d)
        fields = Sliced(len(self.batch))
        ratios = RatioSums(m)
        axis = {"n": 1, "direct": 2, "out": 2, "orig": 2, "rest": 1}  # the example axis
        for piece, c in self.chunks():
            vk = _kind_values(m, c)  # (S, b, H, V, d_head)
            got = {"n": kind_counts(c),
                   "direct": torch.einsum("sbhte,shed,sd->shbt", vk, W_O, dU)}
            if not deep(m):
                got |= {"out": torch.einsum("sbhte,shed,sdr->shbtr", vk, W_O, R),
                        "orig": torch.einsum("sbhd,sdr->shbr", c.result, R),
                        "rest": torch.einsum("sbd,sdr->sbr", head_parts(c)[0], R)}
            for k, v in got.items():
                fields.put(k, v, axis[k])
            ratios.add(piece, c)
        parts = dict.fromkeys(("out", "orig", "rest")) | fields
        if parts["out"] is not None:
            parts["out"] = parts["out"].transpose(2, 3).contiguous()  # (S, H, V, B, R)
        if bias is not None and parts["rest"] is not None:
            parts["rest"] = parts["rest"] + bias[:, None]
        return KindParts(**parts, weights=ratios.value())


class _Pass:
    """`Activations._pass` fed slice by slice (`Activations.rode`)."""

    def __init__(self, acts: Activations):
        self.model, self.batch = acts.model, acts.batch
        self.out, self.mass, self.ratios = Sliced(len(acts.batch)), 0.0, RatioSums(acts.model)

    def add(self, piece: Batch, c) -> None:
        self.out.put("direct", direct_scores(self.model, c.result), -1)  # (S, H, b)
        self.out.put("logits", c.logits, 1)
        self.mass = self.mass + (c.mass() * piece.weight[None, :, None, None]).sum(1)
        self.ratios.add(piece, c)

    def value(self) -> dict[str, Any]:
        return {"direct": self.out["direct"], "logits": self.out["logits"],
                "mass": self.mass / float(self.batch.weight.sum()),
                "weights": self.ratios.value()}


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


# --- changing heads' outputs in the forward (mean ablation, alpha; SPEC 4's total effect) -----

def query_rows(batch: Batch) -> torch.Tensor:
    """Each example's query position (S|1, B): the first EOS, or the fed answer (batch.query)."""
    eos = batch.eos_pos if batch.eos_pos.dim() == 2 else batch.eos_pos[None]
    return eos + (batch.query is not None)


def position_means(acts: Activations) -> torch.Tensor:
    """Each head's weighted mean output over the positions before the query (S, L * H, d), on
    the set of `acts` (`fit`): what mean ablation puts at a lower layer's other positions (the
    query row gets the mean at the query, `Activations.heads`). Last-layer heads compute only
    the query row: their entries are their means at the query."""
    m, batch = acts.model, acts.batch

    def run():
        L, H = m.cfg.layers, m.cfg.heads
        out = weighted_mean(acts.heads[1], batch.weight, 1).clone()  # (S, L * H, d)
        if L == 1:
            return out
        total, count = 0.0, 0.0
        for piece in slices(m, batch):
            caches = m.run_layers(piece, positions=True)
            o = torch.cat([c.positions for c in caches[:-1]], 2)  # (S, b, (L-1) H, P, d)
            P = o.shape[3]
            before = (torch.arange(P) < query_rows(piece)[..., None]).to(o.dtype)  # (S|1, b, P)
            w = before * piece.weight.to(o.dtype)[:, None]
            total = total + torch.einsum("sbhpd,sbp->shd", o, w.expand(o.shape[0], -1, -1))
            count = count + w.sum((1, 2))  # (S|1,)
        out[:, :(L - 1) * H] = total / count.reshape(-1, 1, 1)
        return out
    return acts.once("position_means", run)


def ablation_value(model, batch: Batch, layer: int, at_query: torch.Tensor,
                   before: torch.Tensor) -> torch.Tensor:
    """What mean ablation puts in a head's place on `batch`, for run_layers' replace: its mean
    at the query at_query (S, d), and below the last layer at every other position its mean
    over the positions before the query before (S, d): (S, 1, d) or (S, B, P, d)."""
    if layer == model.cfg.layers - 1:
        return at_query[:, None]
    P = batch.tokens.shape[-1]
    row = (torch.arange(P) == query_rows(batch)[..., None])[..., None]  # (S|1, B, P, 1)
    return torch.where(row, at_query[:, None, None], before[:, None, None])


def layered_logits(model, batch: Batch, edit: Callable[[int, torch.Tensor], torch.Tensor],
                   caches: list[Cache] | None = None) -> torch.Tensor:
    """The logits (S, B, V) of `model` on `batch` with each layer's head outputs o replaced by
    edit(layer, o): o is (S, B, H, P, d) at every position below the last layer, (S, B, H, d) at
    the query in the last one, and every later computation sees the edited outputs (alpha
    scaling with L >= 2 or an MLP: exact, no linearisation). A layer's outputs depend on the
    edits below it, so this is one forward per layer. caches: run_layers(batch, positions=True)
    of the unedited model, when the caller shares it."""
    L, H = model.cfg.layers, model.cfg.heads
    caches = model.run_layers(batch, positions=True) if caches is None else caches
    replace: dict[tuple[int, int], torch.Tensor] = {}
    for n in range(L):
        last = n == L - 1
        new = edit(n, caches[n].result if last else caches[n].positions)
        replace |= {(n, h): new[:, :, h] for h in range(H)}
        if not last:
            caches = model.run_layers(batch, replace=replace, positions=True)
    return model.run_layers(batch, replace=replace)[-1].logits


# --- the query row alone: edits that change no other position --------------------------------

@dataclass
class QueryRows:
    """One slice's unedited forward, kept to run the query row alone again (`query_logits`).
    An edit at a layer's query row (an attention row overridden, a head's output there
    replaced, scaled or mean-ablated) changes no other position: a later layer's query then
    reads the other positions' keys and values as they were, and only its own key, value and
    output are new. Per layer n: x[n] the residual entering it at the query (S, b, d); keys[n],
    values[n] at every slot (S, b|1, H, K, e) (layer 0: keys None, its pattern kept instead,
    since its inputs never change); mult (S|1, b, K) the slots' multiplicities (positions up
    to the query with L >= 2, token kinds with one layer); row (S|1, b, K) the query's own
    position (None with one layer: there no slot is the query's own residual)."""

    x: list[torch.Tensor]
    keys: list[torch.Tensor | None]
    values: list[torch.Tensor]
    pattern0: torch.Tensor  # (S, b, H, K) layer 0's query row
    mult: torch.Tensor
    row: torch.Tensor | None
    kinds: torch.Tensor  # (S|1, b|1, K) each slot's token id

    @classmethod
    def of(cls, model: Model, piece: Batch) -> QueryRows:
        cfg, w = model.cfg, model.weights
        caches = model.run_layers(piece, positions=True)
        c0 = caches[0]
        if cfg.layers == 1:
            x_q = model.slots(piece)[0]
            return cls([x_q], [None], [c0.v], c0.pattern, c0.mult, None, c0.kinds)
        S = w["embed.W_E"].shape[0]
        tokens = c0.kinds
        x = w["embed.W_E"][torch.arange(S).view(S, 1, 1), tokens]  # (S, b, P, d)
        if cfg.pos_embed != "none":
            x = x + w["pos_embed.W_pos"][:, None, :tokens.shape[-1]]
        query = query_rows(piece)
        at = query.expand(S, -1)[..., None, None].expand(-1, -1, 1, x.shape[-1])
        xs, keys, values = [torch.gather(x, 2, at)[:, :, 0]], [None], [c0.v]
        for n in range(cfg.layers - 1):
            x = x + caches[n].positions.sum(2) + w[attn(n) + "b_O"][:, None, None]
            if cfg.d_mlp:
                x = x + model._mlp(x, n)
            h = model._ln(x, f"blocks.{n + 1}.ln1")
            keys.append(model._heads(h, attn(n + 1), "K"))  # (S, b, H, P, e)
            values.append(model._heads(h, attn(n + 1), "V"))
            xs.append(torch.gather(x, 2, at)[:, :, 0])
        row = torch.arange(tokens.shape[-1]) == query[..., None]
        return cls(xs, keys, values, c0.pattern, c0.mult, row, tokens)

    def take(self, seeds: slice) -> QueryRows:
        """These rows for a model of some of the seeds (by position): each tensor with a seed
        axis sliced, those shared by the seeds (S|1) kept."""
        S = self.pattern0.shape[0]

        def pick(t: torch.Tensor | None) -> torch.Tensor | None:
            return t if t is None or t.shape[0] != S else t[seeds]
        return QueryRows([pick(t) for t in self.x], [pick(t) for t in self.keys],
                         [pick(t) for t in self.values], pick(self.pattern0), pick(self.mult),
                         pick(self.row), pick(self.kinds))


def query_logits(model: Model, rows: QueryRows, override=None, edit=None,
                 start: int = 0) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The logits (S, G, b, V) at the query with layers start.. run on the query row alone
    (`QueryRows`), under G variants of an edit, and each layer's head outputs there
    (S, G, b, H, d). override: layer -> (weights (S|1, G, b, H, K) per occurrence, which
    (S|1, G, 1|b, H) bool): those heads' rows attend by the weights (as run_layers'
    attn_override), the others as trained. edit(layer, result) -> result: the head outputs at
    the query replaced (mean ablation, alpha, a hybrid). Each tensor is (S, G, b, ...): seeds
    first, as the model's weights."""
    cfg, w = model.cfg, model.weights
    e = cfg.d_head_
    mult = rows.mult[:, None]  # (S|1, 1, b, K)
    x = rows.x[start][:, None]
    results = []
    for n in range(start, cfg.layers):
        a = attn(n)
        if n == 0:
            pattern = rows.pattern0[:, None]  # (S, 1, b, H, K)
            v = rows.values[0][:, None]
        else:
            h = model._ln(x, f"blocks.{n}.ln1")  # (S, G, b, d)
            S, G, b, d = h.shape  # one product per seed (`Model._heads`), the rest per
            # element: a seed's numbers do not depend on its companions
            q, k, v_q = ((h.reshape(S, G * b, d) @ w[a + "W_" + t].permute(0, 2, 1, 3)
                          .reshape(S, d, -1)).view(S, G, b, cfg.heads, e)
                         + w[a + "b_" + t][:, None, None] for t in "QKV")
            keys, v = rows.keys[n][:, None], rows.values[n][:, None]  # (S, 1, b, H, P, e)
            row = rows.row[:, None, :, None]  # (S|1, 1, b, 1, P)
            scores = (q[..., None, :] * keys).sum(-1)  # (S, G, b, H, P)
            scores = torch.where(row, (q * k).sum(-1)[..., None], scores) * (1.0 / math.sqrt(e))
            pattern = torch.softmax(scores.masked_fill(mult[..., None, :] == 0, -math.inf), -1)
        if override is not None and n in override:
            weights, which = override[n]
            weighted = weights * mult[..., None, :]
            pattern = torch.where(which[..., None], weighted / weighted.sum(-1, keepdim=True),
                                  pattern)
        z = (pattern[..., None] * v).sum(-2)  # (S, G, b, H, e)
        if n > 0:  # the query's own value is new: swap it in for the kept one
            p_row = (pattern * row).sum(-1, keepdim=True)
            v_row = (v * row[..., None]).sum(-2)
            z = z + p_row * (v_q - v_row)
        result = (z[..., None] * w[a + "W_O"][:, None, None]).sum(-2)  # (S, G, b, H, d)
        if edit is not None:
            result = edit(n, result)
        results.append(result)
        x = x + result.sum(-2) + w[a + "b_O"][:, None, None]
        if cfg.d_mlp:
            x = x + model._mlp(x, n)
    S, G, b, d = x.shape
    return model.unembed(x.reshape(S, G * b, d)).view(S, G, b, -1), results
