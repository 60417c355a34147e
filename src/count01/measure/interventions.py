"""Attention interventions and value swaps (SPEC 5): what a head computes if it attends otherwise.

The intervention replaces the EOS query's attention row of a head by weights proportional to
w(token): w(0) = 1, w(1) = w01, w(noise) = w02 for every noise symbol, EOS and BOS at their
measured ratios; values and
everything else stay. Because the new weights depend only on the token kind, a head's output is

    o_h = sum_t w_t V_ht / sum_t w_t N_t,   V_ht = sum over occurrences j of kind t of v_j W_O

with N_t the number of occurrences of kind t. V and N are computed once per set (`KindParts`);
the whole (w01, w02) grid for every head of every seed is then a few einsums over the kinds, with
no forward pass per grid point. `intervened_run` is the slow reference (a real forward pass with
`attn_override`) the tests hold the fast path to.

Heads of every layer (`head` the global index layer * H + h): the intervention replaces the head's
row at its own layer's query. A head's own output is still the sum above (its values do not
depend on its query row), so the head metrics keep the fast path; but with L >= 2 layers or an
MLP (`activations.deep`) the logits are no longer linear in the heads' outputs, so the model's
metrics run the later layers once per grid point and head (and per grid point for intervened =
"all", every head of every layer at once): an override changes a layer's query row alone, so
only the query row runs again (`activations.query_logits`, the other positions' keys and values
kept); under "all" a head of layer >= 1 is measured on its output with the lower layers' query
rows intervened. DEEP_GRID_SIZE points a side by default there. The one-layer attention-only
path is unchanged.

Value swap: head i keeps its attention pattern and takes head j's value/output weights
(W_V, b_V, W_O); its direct score is then sum_k pattern_ik (v_jk W_O^j) . (W_U[1] - W_U[0]).
With L >= 2 layers, v_jk are head j's values as its own layer computes them (j's OV circuit on
the residual it reads), and the hybrid takes head i's place at i's query row (the row whose
pattern it keeps), the later layers run again.
"""

from __future__ import annotations

import numpy as np
import torch

from ..cache import ATTN, Cache
from ..config import Count01Error
from ..fast.position import PosCache
from ..language import EOS, ONE, ZERO, Batch, noise_ids
from ..model import Model
from .activations import (
    KindParts,
    QueryRows,
    Shared,
    Sliced,
    deep,
    head_ids,
    kind_weights,
    query_logits,
    readout_direction,
    slices,
    stacked,
    sums_by_slice,
)
from .aggregation import unembed
from .metrics import (
    answer_metrics,
    fit_threshold,
    fit_thresholds,
    roc_auc_rows,
    score,
    threshold_acc,
)


class InterventionError(Count01Error):
    pass


MODEL_METRICS = ("l_acc", "valid", "auc")
SENTENCE_METRICS = ("end", "sentence")  # the sentence framing's, beside the model's
GRID_RANGE = (1e-3, 1e3)  # w01, w02 from a thousandth to a thousand times a 0's attention
GRID_SIZE = 25  # grid points a side by default
DEEP_GRID_SIZE = 5  # by default with L >= 2 layers or an MLP: a forward per grid point and head
CHUNK_ELEMENTS = 1 << 21  # elements of the largest per-chunk tensor (G_chunk, S, H, B, R): 16 MB
# (64 MB tensors ran 25% slower: out of cache)
SWAP = "value_swap"  # `value_swap`'s computation on a set's shared pass (`ride_value_swap`)


def default_grid(n: int = GRID_SIZE, lo: float = GRID_RANGE[0], hi: float = GRID_RANGE[1]
                 ) -> tuple[np.ndarray, np.ndarray]:
    """w01 on n log-spaced points; w02 on the same points plus 0 (no attention to 2s at all).
    The one rule on a grid's size, for analyze, intervene and the study alike: at least its two
    ends (the summaries read the curve at both)."""
    if n < 2:
        raise InterventionError(f"grid_size must be at least 2, got {n}")
    w = np.logspace(np.log10(lo), np.log10(hi), n)
    return w, np.concatenate([[0.0], w])


def grid_points(model: Model, n: int | None = None) -> int:
    """n, or by default GRID_SIZE points a side, DEEP_GRID_SIZE for a `deep` model."""
    return n if n is not None else DEEP_GRID_SIZE if deep(model) else GRID_SIZE


def grid_weights(parts: KindParts, w01: torch.Tensor, w02: torch.Tensor) -> torch.Tensor:
    """Per-kind weights (G, S, H, V) of grid points (w01[g], w02[g] on every noise symbol);
    EOS, BOS as measured."""
    G, V = w01.shape[0], parts.weights.shape[-1]
    e = parts.weights[None].expand(G, -1, -1, -1).clone()
    e[..., 0] = 1.0
    e[..., 1] = w01.to(e.dtype)[:, None, None]
    e[..., list(noise_ids(V - 4))] = w02.to(e.dtype)[:, None, None, None]
    return torch.nan_to_num(e, nan=0.0)  # a kind no example holds (BOS off) gets no weight


def head_outputs(parts: KindParts, e: torch.Tensor, readout: bool = True
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Direct scores (G, S, H, B) and, if `readout`, outputs (G, S, H, B, R) of every head under
    kind weights e (G, S, H, V)."""
    score, sums, den = _head_sums(parts, e, readout)
    return score, None if sums is None else sums / den[..., None]


def _head_sums(parts: KindParts, e: torch.Tensor, readout: bool
               ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """`head_outputs`' direct scores, its outputs before the division by their total weight
    (G, S, H, B, R) if `readout`, and that weight den (G, S, H, B)."""
    den = torch.einsum("gsht,sbt->gshb", e, parts.n)
    score = torch.einsum("gsht,shbt->gshb", e, parts.direct) / den
    sums = torch.einsum("gsht,shtbr->gshbr", e, parts.out) if readout else None
    return score, sums, den


def _model_metrics(model: Model, r: torch.Tensor, batch: Batch, ends: torch.Tensor | None
                   ) -> dict[str, torch.Tensor]:
    """l-acc, valid rate and AUC of readout vectors r (..., S, B, R), each (..., S); in the
    `sentence` framing also end and sentence accuracy, from `ends` (S, B): whether the ending's
    query, which the intervention leaves alone, predicts EOS after the true answer. The greedy
    sentence is right where the intervened answer is y and the model then ends."""
    return _logit_metrics(r if not model.cfg.layernorm else unembed(model, r), batch, ends)


def _logit_metrics(logits: torch.Tensor, batch: Batch, ends: torch.Tensor | None
                   ) -> dict[str, torch.Tensor]:
    """`_model_metrics` of logits (..., S, B, V)."""
    return _answer_metrics(logits.argmax(-1), score(logits), batch, ends)


def _answer_metrics(pred: torch.Tensor, s: torch.Tensor, batch: Batch,
                    ends: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """`_model_metrics` from the logits' argmax pred (..., S, B) and scores s (..., S, B)."""
    got = answer_metrics(pred, s, batch)
    if ends is None:
        return got
    w = batch.weight.to(torch.float64)
    hit = (pred == batch.y) & ends
    end = (ends.to(w.dtype) * w).sum(-1) / w.sum()  # (S,)
    return got | {"end": end.expand_as(got["l_acc"]),
                  "sentence": (hit.to(w.dtype) * w).sum(-1) / w.sum()}


def attention_sweep(model: Model, batch: Batch, fit: Batch, w01_grid=None, w02_grid=None,
                    heads: str = "each") -> list[dict]:
    """The attention intervention of SPEC 5 over the grid w01_grid x w02_grid, every seed.

    heads="each": one head intervened at a time; model metrics are of the model with that head
    intervened. heads="all": every head of a seed intervened at once (model metrics identical
    across the heads of a seed). heads="both": the rows of both (head metrics computed once).
    Rows per (intervened, w01, w02, seed, head): s_acc_fixed (threshold fitted on `fit` before
    the intervention), s_acc_refit (fitted on `fit` under it), head_auc (a head's own numbers
    do not depend on which other heads are intervened), and the model's l_acc, valid, auc on
    `batch`; in the `sentence` framing also end and sentence (`_model_metrics`: the intervention
    is at the answer's query, the ending's is left alone). Grids default to `default_grid()`.
    Computed in float64.
    """
    cols = sweep_columns(model, batch, fit, w01_grid, w02_grid, heads)
    names = list(cols)
    values = [cols[k].tolist() for k in names]
    return [dict(zip(names, row)) for row in zip(*values)]


def sweep_columns(model: Model, batch: Batch, fit: Batch, w01_grid=None, w02_grid=None,
                  heads: str = "each", shared: Shared | None = None) -> dict[str, np.ndarray]:
    """`attention_sweep` as columns (one array per field, rows in the same order): what a data
    frame is built from without a dict per row. shared: the sets' Activations, if other
    analyses read them too."""
    modes = {"each": ("each",), "all": ("all",), "both": ("each", "all")}.get(heads)
    if modes is None:
        raise InterventionError(f"heads must be 'each', 'all' or 'both', got {heads!r}")
    d01, d02 = default_grid()
    w01_grid = _grid(d01 if w01_grid is None else w01_grid, "w01")
    w02_grid = _grid(d02 if w02_grid is None else w02_grid, "w02")
    shared = Shared(model) if shared is None else shared
    m, acts = shared.model, shared.of(batch)
    with torch.no_grad():
        parts, fparts = acts.kind_parts, shared.of(fit).kind_parts
        ends = None  # the sentence framing's ending, after the true answer (not intervened)
        if model.cfg.framing == "sentence":
            ends = acts.end.logits.argmax(-1) == EOS  # (S, B)
        t0 = fit_thresholds(shared, fit)  # (S, H): the readout before
        g01 = w01_grid.repeat_interleave(len(w02_grid))
        g02 = w02_grid.repeat(len(w01_grid))
        S, H, B, _ = parts.direct.shape
        R = m.cfg.d_vocab if parts.out is None else parts.out.shape[-1]
        step = max(1, CHUNK_ELEMENTS // (S * H * max(B, len(fit)) * R))
        out: dict[str, np.ndarray] = {}  # each (G, S, H), filled chunk by chunk: a chunk's
        # results kept as tensors of their own pinned the heap between its temporaries, which
        # then grew by a chunk's worth each chunk (+1.9 GB over the default grid)
        for a in range(0, len(g01), step):
            got = _sweep_chunk(m, parts, fparts, batch, fit, t0, g01[a:a + step],
                               g02[a:a + step], modes, ends)
            for k, v in got.items():
                if k not in out:
                    out[k] = np.empty((len(g01), *v.shape[1:]), dtype=v.numpy().dtype)
                out[k][a:a + step] = v.numpy()
        out = {k: v.ravel() for k, v in out.items()}  # (G * S * H,)
    G = len(g01)
    grid = {"w01": g01.numpy()[:, None, None], "w02": g02.numpy()[:, None, None],
            "seed": np.asarray(model.seeds)[None, :, None], "head": np.arange(H)[None, None, :]}
    grid = {k: np.broadcast_to(v, (G, S, H)).ravel() for k, v in grid.items()}
    cols: dict[str, list[np.ndarray]] = {}
    for mode in modes:
        block = {"intervened": np.full(G * S * H, mode)} | grid
        block |= {k: out.get(f"{mode}.{k}", out[k])  # "all" of a deep model: its own
                  for k in ("s_acc_fixed", "s_acc_refit", "head_auc")}
        block |= {k: out[f"{mode}.{k}"] for k in MODEL_METRICS + SENTENCE_METRICS * (
            ends is not None)}
        for k, v in block.items():
            cols.setdefault(k, []).append(v)
    return {k: np.concatenate(v) for k, v in cols.items()}


def _grid(values, name: str) -> torch.Tensor:
    grid = torch.as_tensor(np.asarray(values, dtype=np.float64)).reshape(-1)
    if len(grid) == 0 or not torch.isfinite(grid).all() or (grid < 0).any():
        raise InterventionError(f"{name} grid must be finite weights >= 0, got {values!r}")
    return grid


def grid_summary(rows: list[dict]) -> list[dict]:
    """Per (intervened, w01, w02): mean and std (the spread SPEC 5 asks for) of every metric
    over seeds and heads."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["intervened"], r["w01"], r["w02"]), []).append(r)
    out = []
    for (mode, w01, w02), g in groups.items():
        row = {"intervened": mode, "w01": w01, "w02": w02}
        for k in ("s_acc_fixed", "s_acc_refit", "head_auc") + MODEL_METRICS + SENTENCE_METRICS:
            if k not in g[0]:
                continue  # end and sentence: the sentence framing only
            x = [r[k] for r in g]
            row[k], row[f"{k}_std"] = float(np.mean(x)), float(np.std(x))
        out.append(row)
    return out


def _sweep_chunk(m: Model, parts: KindParts, fparts: KindParts, batch: Batch, fit: Batch,
                 t0: torch.Tensor, w01: torch.Tensor, w02: torch.Tensor, modes: tuple[str, ...],
                 ends: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Metrics (G, S, H) of one chunk of grid points; model metrics keyed "each.l_acc", ..."""
    e = grid_weights(parts, w01, w02)
    compiled = _compiled(m)
    if compiled:  # the position path: the model's answers in one compiled loop
        score, sums, den = _head_sums(parts, e, readout=True)
    else:
        score, out = head_outputs(parts, e, readout=not deep(m))  # (G,S,H,B), (G,S,H,B,R)
    fscore, _ = head_outputs(fparts, grid_weights(fparts, w01, w02), readout=False)
    t = fit_threshold(fscore, fit.y, fit.weight)  # (G, S, H) refitted readout
    res = {"s_acc_fixed": threshold_acc(score, t0.expand_as(t), batch.y, batch.weight),
           "s_acc_refit": threshold_acc(score, t, batch.y, batch.weight),
           "head_auc": roc_auc_rows(score, batch.y, batch.weight)}
    if deep(m):
        got = _deep_sweep(m, batch, fit, e, grid_weights(fparts, w01, w02), modes, ends)
        if "all" in modes:  # layer 0's heads read what they read unintervened: as "each"
            H = m.cfg.heads
            s_all, f_all = score.clone(), fscore.clone()
            s_all[:, :, H:] = got.pop("all.direct")[:, :, H:]
            f_all[:, :, H:] = got.pop("all.fit_direct")[:, :, H:]
            t_all = fit_threshold(f_all, fit.y, fit.weight)
            got |= {"all.s_acc_fixed": threshold_acc(s_all, t0.expand_as(t_all), batch.y,
                                                     batch.weight),
                    "all.s_acc_refit": threshold_acc(s_all, t_all, batch.y, batch.weight),
                    "all.head_auc": roc_auc_rows(s_all, batch.y, batch.weight)}
        return res | got
    if compiled:
        return res | _compiled_answers(parts, sums, den, batch, modes, ends)
    if "each" in modes:
        full = parts.rest + parts.orig.sum(1)  # (S, B, R) the unintervened model
        r = full[None, :, None] - parts.orig[None] + out  # (G, S, H, B, R)
        got = _model_metrics(m, r.transpose(2, 1), batch, ends)  # (G, H, S)
        res |= {f"each.{k}": v.transpose(2, 1) for k, v in got.items()}
    if "all" in modes:
        got = _model_metrics(m, parts.rest[None] + out.sum(2), batch, ends)  # (G, S)
        res |= {f"all.{k}": v[..., None].expand_as(t) for k, v in got.items()}
    return res


def _compiled(m: Model) -> bool:
    """Whether `_sweep_chunk` reads the model's answers from `_compiled_answers`: on the
    position path, where the readout is the logits (no ln_final, one attention-only layer)."""
    return not (m.cfg.count_path or m.cfg.layernorm or deep(m))


def _compiled_answers(parts: KindParts, sums: torch.Tensor, den: torch.Tensor, batch: Batch,
                      modes: tuple[str, ...], ends: torch.Tensor | None
                      ) -> dict[str, torch.Tensor]:
    """`_sweep_chunk`'s model metrics (`_compiled`) from `_head_sums`, the logits' argmax and
    score made per example in one compiled loop (`fast.kernels.grid_answers`: the torch ops'
    numbers bit for bit, without their five (G, S, H, B, V) temporaries). The count path never
    imports numba."""
    from ..fast.kernels import grid_answers

    G, S, H, B, _ = sums.shape
    each_pred = torch.empty(G, S, H, B, dtype=torch.int64)
    each_score = torch.empty(G, S, H, B, dtype=torch.float64)
    all_pred = torch.empty(G, S, B, dtype=torch.int64)
    all_score = torch.empty(G, S, B, dtype=torch.float64)
    full = parts.rest + parts.orig.sum(1)  # (S, B, R) the unintervened model
    grid_answers(sums.numpy(), den.numpy(), full.numpy(), parts.orig.numpy(), parts.rest.numpy(),
                 ONE, ZERO, each_pred.numpy(), each_score.numpy(), all_pred.numpy(),
                 all_score.numpy())
    res = {}
    if "each" in modes:
        got = _answer_metrics(each_pred.transpose(2, 1), each_score.transpose(2, 1), batch,
                              ends)  # (G, H, S)
        res |= {f"each.{k}": v.transpose(2, 1) for k, v in got.items()}
    if "all" in modes:
        got = _answer_metrics(all_pred, all_score, batch, ends)  # (G, S)
        res |= {f"all.{k}": v[..., None].expand(G, S, H) for k, v in got.items()}
    return res


def _deep_sweep(m: Model, batch: Batch, fit: Batch, e: torch.Tensor, fe: torch.Tensor,
                modes: tuple[str, ...], ends: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """The model metrics (G, S, L * H) of `_sweep_chunk` for a deep model under kind weights e
    (G, S, L * H, V) ("each": one head's query row overridden at its layer, the others
    attending as they do; "all": every head of every layer), and under "all" the direct scores
    of every head on `batch` and on `fit` (under fe, the weights `fit` measured), keyed
    "all.direct" and "all.fit_direct" (G, S, L * H, B). An override changes the query row
    alone, so each variant runs the query row alone (`query_logits`)."""
    out: dict[str, torch.Tensor] = {}
    each, every, direct = [], [], []
    for piece in slices(m, batch):
        rows = QueryRows.of(m, piece)
        if "each" in modes:
            each.append(_each_logits(m, rows, e))  # (G, L * H, S, b, V)
        if "all" in modes:
            logits, scores = _all_logits(m, rows, e)
            every.append(logits)
            direct.append(scores)
    if "each" in modes:
        got = _logit_metrics(torch.cat(each, -2), batch, ends)  # (G, L * H, S)
        out |= {f"each.{k}": v.transpose(2, 1) for k, v in got.items()}
    if "all" in modes:
        G, S, LH = e.shape[:3]
        got = _logit_metrics(torch.cat(every, -2), batch, ends)  # (G, S)
        out |= {f"all.{k}": v[..., None].expand(G, S, LH) for k, v in got.items()}
        out["all.direct"] = torch.cat(direct, -1)
        out["all.fit_direct"] = torch.cat([_all_logits(m, QueryRows.of(m, piece), fe)[1]
                                           for piece in slices(m, fit)], -1)
    return out


def _overrides(m: Model, rows: QueryRows, e: torch.Tensor) -> list[torch.Tensor]:
    """Each layer's override weights (S, G, b|1, H, K) of kind weights e (G, S, L * H, V)."""
    H = m.cfg.heads
    onehot = torch.nn.functional.one_hot(rows.kinds, m.cfg.d_vocab).to(e.dtype)  # (S|1,b,K,V)
    return [torch.einsum("sbkt,gsht->sgbhk", onehot, e[:, :, n * H:(n + 1) * H])
            for n in range(m.cfg.layers)]


def _each_logits(m: Model, rows: QueryRows, e: torch.Tensor) -> torch.Tensor:
    """Logits (G, L * H, S, b, V) with one head at a time attending by e (G, S, L * H, V)."""
    H = m.cfg.heads
    G, S = e.shape[:2]
    b = rows.mult.shape[1]
    which = torch.eye(H, dtype=torch.bool)[None, :, None]  # (1, H, 1, H): variant h, head h
    step = max(1, CHUNK_ELEMENTS // (S * b * H * H * rows.mult.shape[-1]))
    out = []
    for a in range(0, G, step):
        per_layer = []
        for n, weights in enumerate(_overrides(m, rows, e[a:a + step])):
            g = weights.shape[1]
            over = weights[:, :, None].expand(-1, -1, H, -1, -1, -1).flatten(1, 2)
            logits, _ = query_logits(m, rows, {n: (over, which.repeat(1, g, 1, 1))})
            per_layer.append(logits.view(S, g, H, b, -1))
        out.append(torch.cat(per_layer, 2).permute(1, 2, 0, 3, 4))
    return torch.cat(out)


def _all_logits(m: Model, rows: QueryRows, e: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (G, S, b, V) with every head of every layer attending by e (G, S, L * H, V), and
    every head's direct score there (G, S, L * H, b): a head of layer >= 1 reads the
    intervened lower layers' query row."""
    all_heads = torch.ones(1, 1, 1, m.cfg.heads, dtype=torch.bool)
    logits, results = query_logits(m, rows, {n: (w, all_heads) for n, w in
                                             enumerate(_overrides(m, rows, e))})
    dU = readout_direction(m)
    scores = torch.cat([torch.einsum("sgbhd,sd->gshb", r, dU) for r in results], 2)
    return logits.transpose(0, 1), scores


def intervened_run(model: Model, batch: Batch, w01: float, w02: float,
                   head: int | None = None) -> Cache:
    """A real forward pass with head `head` (None: every head; a global index layer * H + h:
    the Cache is of its layer) attending by (w01, w02), EOS and BOS at their measured weights:
    the slow reference for `attention_sweep`. None needs one layer."""
    if head is None and model.cfg.layers > 1:
        raise ValueError("intervened_run(head=None) needs a one-layer model")
    layer = 0 if head is None else head // model.cfg.heads
    head = None if head is None else head % model.cfg.heads
    with torch.no_grad():
        c = model.run(batch, layer=layer)
        e = kind_weights(model, c, batch).clone()  # (S, H, V)
        e[..., 0], e[..., 1] = 1.0, w01
        e[..., list(noise_ids(model.cfg.noise_symbols))] = w02
        e = torch.nan_to_num(e, nan=0.0)
        onehot = torch.nn.functional.one_hot(c.kinds, model.cfg.d_vocab).to(e.dtype)
        override = torch.einsum("sbkt,sht->sbhk", onehot, e)  # (S, B|1, H, K)
        own = torch.exp(c.scores - c.scores.max(-1, keepdim=True).values)  # the head's own row
        chosen = torch.ones(e.shape[1], dtype=torch.bool) if head is None else (
            torch.arange(e.shape[1]) == head)
        override = torch.where(chosen[:, None], override, own)
        return model.run(batch, attn_override=override, layer=layer)


def value_swap(model: Model, batch: Batch, fit: Batch, shared: Shared | None = None
               ) -> list[dict]:
    """Head i's attention with head j's value/output weights, for every ordered pair (i, j).

    Rows per (seed, attn_head i, ov_head j): s_acc of the hybrid's direct score on `batch`,
    with its threshold refitted on `fit`, and l_acc of the whole model with the hybrid in place
    of head i (s-acc refits the readout, so it cannot see a change of scale; l-acc can); in the
    `sentence` framing also end and sentence, with the hybrid in place at the ending's query
    too. i == j is the head itself. shared: the sets' Activations (the thresholds on `fit` are
    kept there).
    """
    shared = Shared(model) if shared is None else shared
    acts = shared.of(batch)
    with torch.no_grad():
        swap, ends = _swap_makers(shared, batch, fit)
        got = acts.rode(SWAP, swap)  # on the set's shared pass (`ride_value_swap`)
        right = {"l_acc": got.right}
        if ends is not None:  # the same slices of the same strings, the true answer fed
            ended, sizes = acts.end.rode(SWAP, ends).per["ended"], got.per.sizes["answered"]
            for k, hit in (("end", ended), ("sentence", got.per["answered"] & ended)):
                right[k] = sums_by_slice(sizes, batch.weight, hit).permute(2, 0, 1)
        s_acc = (got.hits / batch.weight.sum()).numpy()
        rates = {k: (v / batch.weight.sum()).numpy() for k, v in right.items()}  # (S, H, H)
    H = s_acc.shape[1]
    return [{"seed": seed, "attn_head": i, "ov_head": j, "swapped": i != j,
             "s_acc": float(s_acc[s, i, j])} | {k: float(v[s, i, j]) for k, v in rates.items()}
            for s, seed in enumerate(model.seeds) for i in range(H) for j in range(H)]


def _swap_makers(shared: Shared, batch: Batch, fit: Batch):
    """`value_swap`'s computations on a set's slices, the hybrids' thresholds fitted on `fit`
    first: its `_Swap` and, in `sentence`, its `_SwapEnds` on the ending's (else None)."""
    m, fa, n = shared.model, shared.of(fit), len(batch)
    t = fa.once("swap_thresholds", lambda: fit_threshold(
        torch.cat([_hybrid_scores(m, c, _pos_parts(m, c)) for _, c in fa.chunks()], -1),
        fit.y, fit.weight))  # (S, H, H)
    sentence = m.cfg.framing == "sentence"
    return (lambda: _Swap(m, t, sentence, n)), (lambda: _SwapEnds(m, n)) if sentence else None


def ride_value_swap(shared: Shared, batch: Batch, fit: Batch) -> None:
    """Have `value_swap` on `batch` ride the set's next pass (and its ending's)."""
    swap, ends = _swap_makers(shared, batch, fit)
    acts = shared.of(batch)
    acts.ride(SWAP, swap)
    if ends is not None:
        acts.end.ride(SWAP, ends)


class _Swap:
    """`value_swap` fed a set's slices: the weight of right hybrid readouts (thresholds t) and
    of right answers (S, H, H) and, in `sentence`, which answers are right (H, H, S, B)."""

    def __init__(self, model: Model, t: torch.Tensor, sentence: bool, n: int):
        self.model, self.t, self.sentence = model, t, sentence
        self.hits, self.right, self.per = 0.0, 0.0, Sliced(n)

    def add(self, piece: Batch, c: Cache) -> None:
        m = self.model
        parts = _pos_parts(m, c)  # the position path: scores and answers from one product
        self.hits = self.hits + threshold_acc(_hybrid_scores(m, c, parts), self.t, piece.y,
                                              piece.weight) * piece.weight.sum()
        w = piece.weight.to(torch.float64)
        answered = _hybrid_pred(m, c, piece, parts) == piece.y  # (H, H, S, b)
        self.right = self.right + (answered.to(w.dtype) * w).sum(-1).permute(2, 0, 1)
        if self.sentence:
            self.per.put("answered", answered, -1)


class _SwapEnds:
    """Whether each hybrid predicts EOS at the `sentence` ending (H, H, S, B), fed the
    ending's slices."""

    def __init__(self, model: Model, n: int):
        self.model, self.per = model, Sliced(n)

    def add(self, piece: Batch, c: Cache) -> None:
        self.per.put("ended", _hybrid_pred(self.model, c, piece) == EOS, -1)


def _deep_hybrid_pred(model: Model, c: Cache, piece: Batch) -> torch.Tensor:
    """`_hybrid_pred` of a deep model: for each pair, head i's output at the query replaced by
    the hybrid's (the other positions of a lower layer as they were), the later layers run
    again on the query row alone (`query_logits`). c: `merged_run` of piece."""
    W_O = stacked(model, "W_O")
    v = c.v.expand(-1, c.pattern.shape[1], -1, -1, -1)
    hybrid = torch.einsum("sbik,sbjke,sjed->isjbd", c.pattern, v, W_O)  # (H', S, H', b, d)
    rows = QueryRows.of(model, piece)
    out = []
    for i, (n, h) in enumerate(head_ids(model)):
        def edit(layer: int, result: torch.Tensor, i=i, n=n, h=h) -> torch.Tensor:
            if layer != n:
                return result
            result = result.expand(-1, hybrid.shape[2], -1, -1, -1).clone()
            result[:, :, :, h] = hybrid[i]
            return result
        out.append(query_logits(model, rows, edit=edit, start=n)[0].argmax(-1))
    return torch.stack(out).transpose(1, 2)  # (H', H', S, b)


def _pos_parts(model: Model, c: Cache):
    """`_hybrid_pos_parts` of c on the position path (a PosCache), else None."""
    return _hybrid_pos_parts(model, c) if isinstance(c, PosCache) else None


def _hybrid_pred(model: Model, c: Cache, piece: Batch, parts=None) -> torch.Tensor:
    """The model's argmax with head i replaced by the hybrid (attention of i, value/output
    weights of j), at the query of cache c. (H_attn, H_ov, S, B). parts: `_pos_parts` of c,
    when the caller has them."""
    if isinstance(c, PosCache):  # the logits' sum and argmax in one compiled loop
        from ..fast.kernels import hybrid_answers  # numba: the position path only

        own, hyb, bias = _hybrid_pos_parts(model, c) if parts is None else parts
        S, H, B, _, _ = hyb.shape
        pred = torch.empty(H, H, S, B, dtype=torch.int64)
        hybrid_answers(c.logits.numpy(), own.numpy(), hyb.numpy(), bias.numpy(), pred.numpy())
        return pred
    if deep(model):
        return _deep_hybrid_pred(model, c, piece)
    W_O = model.weights[ATTN + "W_O"]
    hybrid = torch.einsum("sbik,sbjke,sjed->ijsbd", c.pattern, c.v.expand(
        -1, c.pattern.shape[1], -1, -1, -1), W_O)  # (H, H, S, B, d)
    resid = c.resid - c.result.permute(2, 0, 1, 3)  # (H, S, B, d): head i taken out
    return unembed(model, resid[:, None] + hybrid).argmax(-1)


def _hybrid_pos_parts(model: Model, c: PosCache
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What `_hybrid_pred`'s logits on the position path are made of, from its tables: without
    ln_final the logits are a sum of the heads' shares, and head i's pattern on head j's values
    reads (mass_i r_E^j + u_i r_P^j) / D_i + b_V^j M^j into them (`Model.pos_tables`: r_E, r_P
    are the token and position values through M = W_O W_U), no per-position value. Returns head
    i's own share own (S, H, B, V), the hybrids' hyb (S, H_attn, B, H_ov, V) before the bias
    and the bias b_V^j M^j (S, H_ov, V): the hybrid logits are (logits - own_i) + (hyb_ij +
    bias_j) (`kernels.hybrid_answers`)."""
    f, t = c._f, c._t
    S, H, B, L = f["u"].shape
    V = t["rE"].shape[-1]
    bias = (model.weights[ATTN + "b_V"][:, :, None] @ t["M"])[:, :, 0]  # (S, H, V) b_V^h M^h
    own = c.zl + bias[:, :, None]  # (S, H, B, V) head i's share of the logits
    read = torch.cat([t["rE"], t["rP"][:, :, :L]], 2)  # (S, H_ov, V + L, V)
    seen = torch.cat([f["mass"], f["u"]], 3) / f["D"]  # (S, H_attn, B, V + L)
    hyb = torch.bmm(seen.reshape(S, H * B, V + L),
                    read.permute(0, 2, 1, 3).reshape(S, V + L, H * V)).view(S, H, B, H, V)
    return own, hyb, bias


def _hybrid_scores(model: Model, c: Cache, parts=None) -> torch.Tensor:
    """Direct score of head i's pattern applied to head j's values. (S, H_attn, H_ov, B).
    With parts (`_pos_parts`: the position path, no ln_final) the hybrid's logit(1) -
    logit(0), which its direct score is: no second pass over the positions."""
    if parts is not None:
        _, hyb, bias = parts  # (S, H_attn, B, H_ov, V), (S, H_ov, V)
        diff = hyb[..., ONE] - hyb[..., ZERO] + (bias[..., ONE] - bias[..., ZERO])[:, None, None]
        return diff.transpose(2, 3)
    # (S, B|1, H_ov, K): direct score of one occurrence of each slot, through head j's OV
    per_slot = c.slot_readout(stacked(model, "W_O"), readout_direction(model))
    return torch.einsum("sbik,sbjk->sijb", c.pattern, per_slot)
