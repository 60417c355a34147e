"""Metrics at the EOS position (SPEC 4), weighted by how many strings each example stands for;
in the `sentence` framing also at the answer y (end and sentence accuracy, SPEC 2).

Every metric takes plain tensors and returns plain numbers, so the same code scores a sampled set
(weights 1, duplicates merged) and the exact `exhaustive` set (multinomial weights).

Head-level definitions (ours where SPEC 4 leaves a gap):
- heads: every head of every layer, `head` its global index layer * H + h, `layer` its layer.
- direct score s_h = (o_h W_U)[1] - (o_h W_U)[0] of o_h at the query, read through W_U alone
  (ln_final, if any, is a property of the whole residual and is not applied to one head's
  share: the linearisation is W_U itself); with L >= 2 layers or an MLP it is the head's direct
  path to the logits (what it writes into the residual the unembedding reads), not its effect.
- total_effect: the change in the model's l-acc on the set (ablated minus as trained) when the
  head is mean-ablated: its output replaced at the query by its weighted mean at the query over
  `fit`, and (below the last layer) at every other position by its weighted mean over `fit`'s
  positions before the query; every later computation sees the replacement. With one
  attention-only layer it is leave-one-out's l-acc change (aggregation).
- s-acc: the readout "answer 1 iff s_h > t" with the polarity fixed (like head AUC, a head whose
  score runs against the answer scores low); t is the exact best threshold on the `fit` split
  (every cut between distinct sorted scores is tried), then scored on another set.
- probe s-acc: scikit-learn's logistic regression on the standardised o_h, fitted on `fit`.
- w01, w02, w_eos, w_bos: per-occurrence attention of the EOS query on a 1, a noise symbol, EOS,
  BOS relative to a 0. Count path: exp(score(t) - score(0)), exact. Token path (every layer of
  L >= 2, whose keys differ per position): per example, the mean pattern per token of the kind
  over the mean per 0, averaged (weighted) over examples holding both kinds. With K > 1 noise
  symbols w02 is the mean of the measured symbols' ratios (every law gives each symbol the same
  share of the noise, so it is the occurrence-weighted mean in expectation), and each symbol's
  ratio has a column w02_<id> (ids 2, 5, ...).
- mass_*: the attention mass (fraction of the row) on each kind, weighted mean over examples.
"""

from __future__ import annotations

import os
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from ..config import Count01Error
from ..language import (
    BOS,
    EOS,
    EVAL_SETS,
    ONE,
    ZERO,
    Batch,
    at_end,
    eval_set,
    noise_ids,
    parse,
    vocab,
)
from .activations import (
    OnHeads,
    Shared,
    ablation_value,
    chunked_logits,
    deep,
    direct_scores,
    head_ids,
    position_means,
    slices,
    weighted_mean,
)

PROBE_C, PROBE_ITER = 100.0, 2000  # weak regularisation: the probe is an upper bound
SORT_THREADS = min(4, os.cpu_count() or 1)
HEAD_HITS = "head_hits"  # `head_hits`' computation on a set's shared pass (`ride_head_hits`)


def l_acc(logits: torch.Tensor, y: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Language accuracy: argmax over the whole vocabulary equals y. logits (S, B, V) -> (S,)."""
    return rate(logits.argmax(-1) == y, weight)


def rate(hit: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The weighted fraction of hits (..., B) -> (...)."""
    return (hit.to(weight.dtype) * weight).sum(-1) / weight.sum()


def cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each example: logits (S, B, V) against targets (S, B), or (B,) shared by
    every seed. (S, B). Training's loss and the evaluation's `mean_loss` both."""
    ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1),
                                           target.expand(logits.shape[:2]).flatten(),
                                           reduction="none")
    return ce.view(logits.shape[:2])


def mean_loss(logits: torch.Tensor, data: Batch) -> torch.Tensor:
    """Cross-entropy of the answer, in float64, averaged over the set with its weights. (S,)."""
    return (cross_entropy(logits.double(), data.y) * data.weight).sum(1) / data.weight.sum()


def valid_rate(logits: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Fraction whose argmax is a digit 0 or 1 (the syntax alone). (S,)."""
    return rate(logits.argmax(-1) <= ONE, weight)


def score(logits: torch.Tensor) -> torch.Tensor:
    """The semantic score logit(1) - logit(0)."""
    return logits[..., ONE] - logits[..., ZERO]


def end_acc(end: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """End accuracy: argmax at the answer y (fed as the true answer) is EOS. end (..., B, V)."""
    hit = (end.argmax(-1) == EOS).to(weight.dtype)
    return (hit * weight).sum(-1) / weight.sum()


def sentence_acc(logits: torch.Tensor, end: torch.Tensor, y: torch.Tensor,
                 weight: torch.Tensor) -> torch.Tensor:
    """Sentence accuracy (greedy): the predicted answer is y and the model then predicts EOS
    after it. Where the prediction is y, the model's own answer is the true one, so the ending
    read with y fed (`end`) is the greedy one. logits, end (..., B, V) -> (...)."""
    hit = ((logits.argmax(-1) == y) & (end.argmax(-1) == EOS)).to(weight.dtype)
    return (hit * weight).sum(-1) / weight.sum()


def evaluate_logits(logits: torch.Tensor, batch: Batch, end: torch.Tensor | None = None
                    ) -> dict[str, np.ndarray]:
    """`logit_metrics` per seed of logits (S, B, V) on one evaluation set, as arrays; with the
    logits at the answer y (`end`, the `sentence` framing), end and sentence accuracy."""
    out = {k: v.double().numpy() for k, v in logit_metrics(logits, batch).items()}
    if end is not None:
        out["end"] = end_acc(end, batch.weight).double().numpy()
        out["sentence"] = sentence_acc(logits, end, batch.y, batch.weight).double().numpy()
    return out


def set_metrics(model, batch: Batch) -> dict[str, np.ndarray]:
    """`evaluate_logits` of a model on one set, in slices; in the `sentence` framing with the
    ending read at the true answer."""
    end = (chunked_logits(model, at_end(batch)) if model.cfg.framing == "sentence" else None)
    return evaluate_logits(chunked_logits(model, batch), batch, end)


def logit_metrics(logits: torch.Tensor, batch: Batch) -> dict[str, torch.Tensor]:
    """l-acc, valid rate and ROC AUC of logits (..., B, V) with any leading axes, each (...):
    the one definition of the three (SPEC 4) every analysis scores a model with."""
    return answer_metrics(logits.argmax(-1), score(logits), batch)


def answer_metrics(pred: torch.Tensor, s: torch.Tensor, batch: Batch
                   ) -> dict[str, torch.Tensor]:
    """`logit_metrics` from the logits' argmax pred (..., B) and scores s (..., B)."""
    return {"l_acc": rate(pred == batch.y, batch.weight),
            "valid": rate(pred <= ONE, batch.weight),
            "auc": roc_auc_rows(s, batch.y, batch.weight)}


def evaluate(model, sets: tuple[str, ...] = EVAL_SETS) -> list[dict]:
    """Tidy rows (set, seed, l_acc, valid, auc; in `sentence` also end, sentence) of a model on
    the evaluation sets of SPEC 2."""
    rows = []
    with torch.no_grad():
        for name in sets:
            batch = eval_set(model.cfg, name)
            result = set_metrics(model, batch)
            for i, seed in enumerate(model.seeds):
                rows.append({"set": name, "seed": seed} | {k: float(v[i]) for k, v in result.items()})
    return rows


def format_table(rows: list[dict]) -> str:
    """A plain-text table of tidy rows (columns in first-row order)."""
    if not rows:
        return "(no rows)"
    cols = list(rows[0])
    cells = [[f"{r[c]:.4f}" if isinstance(r[c], float) else "nan" if r[c] is None else str(r[c])
              for c in cols] for r in rows]  # None: a number JSON stored as null (NaN)
    width = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(cols, width))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(row, width)) for row in cells]
    return "\n".join(lines)


def predict(model, text: str) -> str:
    """The answer of every seed for one string of digits, with every output probability; in
    the `sentence` framing also whether the model, fed its own answer, then ends the sentence
    ("-" when its answer is not a digit 0 or 1)."""
    sentence = model.cfg.framing == "sentence"
    k = model.cfg.noise_symbols
    batch = parse(text, model.cfg.bos, k, sentence)
    if model.cfg.pos_embed != "none" and batch.tokens.shape[-1] > model.cfg.n_ctx:
        raise Count01Error(f"the string has {len(text.strip())} digits; this model's positional "
                           f"embedding covers {model.cfg.n_ctx - 1 - model.cfg.bos - 2 * sentence}"
                           " at most")
    with torch.no_grad():
        probs = torch.softmax(model(batch)[:, 0].double(), -1)
        ends = [model(at_end(batch, torch.tensor([y])))[:, 0].argmax(-1) == EOS
                for y in (ZERO, ONE)] if sentence else []
    truth = int(batch.y[0])
    rows, names = [], vocab(k)
    for i, seed in enumerate(model.seeds):
        pred = int(probs[i].argmax())
        row = {"seed": seed, "answer": names[pred], "truth": str(truth)}
        if sentence:
            row["ends"] = ("yes" if ends[pred][i] else "no") if pred <= ONE else "-"
        rows.append(row | {f"p({t})": float(probs[i, j]) for j, t in enumerate(names)})
    n = batch.counts[0].tolist()
    counts = " ".join(f"n{t}={c}" for t, c in zip((ZERO, ONE) + noise_ids(k), n))
    return f"{text.strip()}: {counts}\n" + format_table(rows)


# --- exact, weighted, batched ranking and thresholds (rows of scores against one labelled set) ---

ROW_CHUNK = 1 << 18  # scores sorted at once: bounds memory, not results (a 2 MB slice
# stays in cache: 3x faster than 32 MB on the grid's 8192-wide rows)
RANK_CHUNK = 1 << 16  # scores a thread ranks at once where every weight is 1 (512 kB: in
# cache; with the counting below 3x faster than the general path's torch passes)


def _row_chunks(score: torch.Tensor):
    """Rows of score (..., B) as (R, B) float64 slices of at most ROW_CHUNK elements, or of
    SORT_THREADS rows where rows are wider (`_argsort` splits a slice's rows over threads)."""
    flat = score.reshape(-1, score.shape[-1]).to(torch.float64)
    step = max(SORT_THREADS, ROW_CHUNK // max(1, flat.shape[-1]))
    return [flat[i:i + step] for i in range(0, flat.shape[0], step)]


def _argsort(rows: torch.Tensor) -> torch.Tensor:
    """argsort along the last axis: numpy's (2x faster than torch's on CPU), split over the CPUs
    in threads (numpy releases the GIL while sorting; blocked threads do not spin, so a busy
    machine only slows it down, unlike torch's OpenMP threads)."""
    x = rows.numpy()
    n = min(SORT_THREADS, max(1, x.size // (1 << 16)))
    if n == 1:
        return torch.from_numpy(np.argsort(x, -1))
    return torch.from_numpy(np.concatenate(list(_pool().map(
        lambda a: np.argsort(a, -1), np.array_split(x, n)))))


_POOL: list[ThreadPoolExecutor] = []
_POOL_LOCK = threading.Lock()
os.register_at_fork(after_in_child=_POOL.clear)  # a forked child (the analysis' figure process,
# forked after training or an earlier analysis ranked) has none of its parent's threads: it
# would start its own


def _pool() -> ThreadPoolExecutor:
    """SORT_THREADS threads, started once per process (starting them per call cost more than
    the sorts of a small set)."""
    with _POOL_LOCK:
        if not _POOL:
            _POOL.append(ThreadPoolExecutor(SORT_THREADS))
        return _POOL[0]


def _sorted(rows: torch.Tensor, y: torch.Tensor, weight: torch.Tensor):
    """Each row sorted ascending, with the weight of positives / negatives in the same order."""
    order = _argsort(rows)
    signed = (weight.to(torch.float64) * torch.where(y == 1, 1.0, -1.0))[order]  # one gather
    return rows.gather(-1, order), signed.clamp(min=0), (-signed).clamp(min=0)


def _ranked(score: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, kernel: str, dtype
            ) -> np.ndarray | None:
    """`fast.kernels`' kernel(sp, sn, out), filling out (R,) of dtype, over every row of score
    (..., B): sp (R, P) the row's positives' scores and sn (R, N) its negatives', each sorted
    ascending (two numpy sorts of halves: 3x less than the argsort and passes they replace),
    where every weight is 1 (every set of the position path): a row's weights below a cut are
    then counts, whole numbers, and the general path's float sums are exact in any order, so
    counting gives its numbers bit for bit. In RANK_CHUNK pieces over SORT_THREADS threads
    (numpy's sort and the compiled walk release the GIL). None where a weight is not 1."""
    if not bool((weight == 1).all()):
        return None
    from ..fast import kernels  # numba: imported only here (the count path's sets never are)

    walk = getattr(kernels, kernel)
    pos = (y == 1).numpy()
    at_pos, at_neg = np.flatnonzero(pos), np.flatnonzero(~pos)  # np.take: 3x faster than a mask
    x = score.reshape(-1, score.shape[-1]).to(torch.float64).numpy()
    out = np.empty(len(x), dtype=dtype)
    step = max(1, RANK_CHUNK // max(1, x.shape[-1]))

    def chunk(a: int) -> None:
        sp, sn = np.take(x[a:a + step], at_pos, 1), np.take(x[a:a + step], at_neg, 1)
        sp.sort(-1)
        sn.sort(-1)
        walk(sp, sn, out[a:a + step])
    list(_pool().map(chunk, range(0, len(x), step)))
    return out.reshape(score.shape[:-1])


def _in_rows(score: torch.Tensor, general) -> torch.Tensor:
    """general(rows (r, B)) -> (r,) over the rows of score (..., B) in ROW_CHUNK slices."""
    flat = score.reshape(-1, score.shape[-1])
    return torch.cat([general(rows) for rows in _row_chunks(flat)]).reshape(score.shape[:-1])


def roc_auc_rows(score: torch.Tensor, y: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Weighted ROC AUC of every row of score (..., B) against y (B,), ties counting 1/2. (...).

    The same number as scikit-learn's roc_auc_score(y, row, sample_weight=weight), for thousands
    of rows at once: sort, sum the weights of each run of tied scores, then each run's positives
    count the negative weight below the run plus half of the run's own. nan if a class is absent
    or a row holds a non-finite score (a diverged seed), so one bad row never stops the others.
    Where every weight is 1 this is Mann-Whitney's U (`_ranked`): each positive counts the
    negatives below it and half the tied ones, the same whole number (or half) as the general
    path's sums.
    """
    w = weight.to(torch.float64)
    P, N = float((w * (y == 1)).sum()), float((w * (y != 1)).sum())
    if P == 0 or N == 0:
        return torch.full(score.shape[:-1], float("nan"), dtype=torch.float64)

    def general(rows: torch.Tensor) -> torch.Tensor:
        bad = ~torch.isfinite(rows).all(-1)
        rows = torch.where(bad[:, None], 0.0, rows)
        s, pos, neg = _sorted(rows, y, weight)
        new = torch.ones_like(s, dtype=torch.bool)
        new[:, 1:] = s[:, 1:] != s[:, :-1]
        group = new.cumsum(-1) - 1  # (R, B) index of each score's run of ties
        pos_g = torch.zeros_like(pos).scatter_add_(-1, group, pos)  # weight per run of ties
        neg_g = torch.zeros_like(neg).scatter_add_(-1, group, neg)
        below = neg_g.cumsum(-1) - neg_g
        auc = ((pos_g * (below + 0.5 * neg_g)).sum(-1) / (P * N)).clamp(0.0, 1.0)
        return torch.where(bad, float("nan"), auc)
    u2 = _ranked(score, y, weight, "twice_u", np.int64)
    if u2 is None:
        return _in_rows(score, general)
    return torch.from_numpy(np.where(u2 < 0, np.nan, np.clip(u2 / 2 / (P * N), 0.0, 1.0)))


def fit_threshold(score: torch.Tensor, y: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The threshold t of the readout "1 iff s > t" with the best weighted accuracy. (...).

    Exact: every cut between two distinct sorted scores (and below / above all) is tried; t is
    the midpoint of the cut (-inf / +inf at the ends); ties of accuracy take the lowest cut.
    Where every weight is 1 it counts (`_ranked`): cut c (0 predicted for the c lowest scores)
    is right on the c - cpos negatives below it and the P - cpos positives above.
    """

    def general(rows: torch.Tensor) -> torch.Tensor:
        s, pos, neg = _sorted(rows, y, weight)
        zero = torch.zeros_like(pos[:, :1])
        cpos = torch.cat([zero, pos.cumsum(-1)], -1)  # (R, B + 1): cut c predicts 0 for s[:c]
        cneg = torch.cat([zero, neg.cumsum(-1)], -1)
        correct = cneg + (cpos[:, -1:] - cpos)
        gap = s[:, 1:] > s[:, :-1]  # a cut inside a run of tied scores is not a threshold
        ok = torch.cat([torch.ones_like(gap[:, :1]), gap, torch.ones_like(gap[:, :1])], -1)
        c = torch.where(ok, correct, -torch.inf).argmax(-1)  # (R,)
        lo = s.gather(-1, (c - 1).clamp(min=0)[:, None])[:, 0]
        hi = s.gather(-1, c.clamp(max=s.shape[-1] - 1)[:, None])[:, 0]
        mid = lo + (hi - lo) / 2
        t = torch.where(mid < hi, mid, lo)  # rounding must not put t on the upper score
        return torch.where(c == 0, -torch.inf, torch.where(c == s.shape[-1], torch.inf, t))
    t = _ranked(score, y, weight, "best_cut", np.float64)
    return _in_rows(score, general) if t is None else torch.from_numpy(t)


def threshold_acc(score: torch.Tensor, t: torch.Tensor, y: torch.Tensor, weight: torch.Tensor
                  ) -> torch.Tensor:
    """Weighted accuracy of "1 iff score > t": score (..., B), t (...) -> (...)."""
    w = weight.to(torch.float64)
    hit = ((score > t[..., None]) == (y == 1)).to(torch.float64)
    return (hit * w).sum(-1) / w.sum()


# --- heads -------------------------------------------------------------------------------------

def kind_names(k: int) -> tuple[str, ...]:
    """Column suffixes of the token kinds, in token-id order (k noise symbols)."""
    return ("0", "1", "2", "eos", "bos") + tuple(str(i) for i in range(5, k + 4))


def w02(w: np.ndarray, k: int) -> np.ndarray:
    """w02 from per-kind weights (..., d_vocab): the mean over the k noise symbols (SPEC 4; see
    the module's docstring), over those measured: on the token path a symbol no example of the
    set holds has no ratio (nan), and the others still say how noise is attended."""
    noise = w[..., list(noise_ids(k))]
    measured = ~np.isnan(noise)
    with np.errstate(invalid="ignore"):  # nan only where no symbol was measured at all
        return np.where(measured, noise, 0.0).sum(-1) / measured.sum(-1)


def ratio_columns(w, k: int) -> dict:
    """The named attention ratios of per-kind weights w (..., d_vocab), k noise symbols."""
    out = {"w01": w[..., ONE], "w02": w02(w, k), "w_eos": w[..., EOS], "w_bos": w[..., BOS]}
    return out | ({f"w02_{i}": w[..., i] for i in noise_ids(k)} if k > 1 else {})


def fit_probes(result: torch.Tensor, fit: Batch) -> list[list]:
    """One logistic-regression probe per seed and head on o_h (S, B, H, d), fitted on `fit`.

    Features are standardised (weighted) so the regularisation does not depend on a head's scale;
    lbfgs is deterministic. A one-class fit set gives a probe that always answers that class.
    BLAS runs single-threaded: on problems this small its threads only wait for each other
    (5x slower on two busy cores).
    """
    from sklearn.exceptions import ConvergenceWarning  # here: importing sklearn takes seconds
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    x = result.detach().double().numpy()
    y, w = fit.y.numpy(), fit.weight.double().numpy()
    probes = []
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore", ConvergenceWarning)
        for s in range(x.shape[0]):
            row = []
            for h in range(x.shape[2]):
                if y.min() == y.max():
                    row.append(int(y[0]))
                    continue
                scaler = StandardScaler().fit(x[s, :, h], sample_weight=w)
                clf = LogisticRegression(C=PROBE_C, max_iter=PROBE_ITER)
                row.append((scaler, clf.fit(scaler.transform(x[s, :, h]), y, sample_weight=w)))
            probes.append(row)
    return probes


def probe_hits(probes: list[list], result: torch.Tensor, batch: Batch) -> np.ndarray:
    """Weight of the examples of `batch` each probe classifies right, from o_h (S, B, H, d).
    (S, H); divided by the total weight it is the probe s-acc. Run it under
    threadpool_limits(1), as `head_hits` does once per set (entering the limit inspects the
    loaded libraries: 4 ms, 1.4 s over the slices of the position path's `exhaustive` set)."""
    x = result.detach().double().numpy()
    y, w = batch.y.numpy(), batch.weight.double().numpy()
    hits = np.zeros((x.shape[0], x.shape[2]))
    for s, row in enumerate(probes):
        for h, probe in enumerate(row):
            pred = np.full(len(y), probe) if isinstance(probe, int) else probe_predict(
                probe, x[s, :, h])
            hits[s, h] = float(((pred == y) * w).sum())
    return hits


def probe_predict(probe: tuple, x: np.ndarray) -> np.ndarray:
    """clf.predict(scaler.transform(x)) of a probe (scaler, clf) on x (B, d), bit for bit: the
    same operations on an array of the same layout, without sklearn's checks of its input
    (called 5,456 times over the 341 slices of the position path's `exhaustive`)."""
    scaler, clf = probe
    z = np.array(x, dtype=np.float64, order="C")  # the copy transform validates x into
    if not np.isfinite(z).all():  # the one check of sklearn's that can refuse an array
        raise ValueError("a probe's input contains NaN or infinity")
    z -= scaler.mean_
    z /= scaler.scale_
    scores = (z @ clf.coef_.T + clf.intercept_).reshape(-1)
    return clf.classes_[(scores > 0).astype(np.intp)]


def as_batches(cfg, sets) -> dict[str, Batch]:
    """Evaluation sets given by name (tuple of names) or already built (name -> Batch)."""
    if isinstance(sets, dict):
        return sets
    return {name: eval_set(cfg, name) for name in sets}


def head_thresholds(model, result: torch.Tensor, fit: Batch) -> torch.Tensor:
    """Each head's s-acc threshold t (S, H), fitted on `fit` from its outputs result (S, B, H, d)."""
    return fit_threshold(direct_scores(model, result), fit.y, fit.weight)


def fit_thresholds(shared: Shared, fit: Batch) -> torch.Tensor:
    """`head_thresholds` of the head outputs `fit`'s Activations keep, fitted once per (model,
    fit set) and shared by every analysis. From the whole set's o_h in one product, not the
    slices' scores: slices depend on the number of seeds, and a seed's threshold must not."""
    a = shared.of(fit)
    return a.once("thresholds", lambda: head_thresholds(shared.model, a.heads[1], fit))


def readout_columns(s: torch.Tensor, t: torch.Tensor, batch: Batch) -> dict[str, np.ndarray]:
    """head_auc and s_acc (S, H) of the heads' direct scores s (S, H, B) on `batch`, s-acc read
    with the thresholds t (S, H) of `head_thresholds`."""
    return {"head_auc": roc_auc_rows(s, batch.y, batch.weight).numpy(),
            "s_acc": threshold_acc(s, t, batch.y, batch.weight).numpy()}


def head_hits(shared: Shared, batch: Batch, fit: Batch, probes: list[list]
              ) -> tuple[np.ndarray, np.ndarray]:
    """The probe s-acc and the total effect (each (S, L * H)) of every head on `batch`, in one
    pass over its head outputs. Total effect: the model's l-acc with the head mean-ablated
    (module docstring; means on `fit`) minus its l-acc as trained; with one attention-only layer
    from the heads' outputs (`ablated_hits`), else one forward per head (`deep_ablated_hits`)."""
    m, a = shared.model, shared.of(batch)
    at_query = weighted_mean(shared.of(fit).heads[1], fit.weight, 1)  # (S, L * H, d)
    hits, ablated = 0.0, 0.0
    with threadpool_limits(1):  # BLAS threads only wait for each other on problems this small
        if deep(m):
            for piece, _, o in a.head_slices():  # o_h, kept whole where it is small
                hits = hits + probe_hits(probes, o, piece)
        else:  # on the set's shared pass where it has one (`ride_head_hits`)
            got = a.over_heads(HEAD_HITS, lambda: _HeadHits(m, probes, at_query))
            hits, ablated = got.hits, got.ablated
    if deep(m):
        ablated = deep_ablated_hits(shared, batch, fit, at_query)
    total = float(batch.weight.sum())
    trained = l_acc(a.logits, batch.y, batch.weight).to(torch.float64)
    return hits / total, (ablated / total - trained[:, None]).numpy()


class _HeadHits(OnHeads):
    """`head_hits`' sums for one attention-only layer, fed slice by slice: the weight each
    probe classifies right and the weight answered right with each head mean-ablated."""

    def __init__(self, model, probes: list[list], at_query: torch.Tensor):
        self.model, self.probes, self.at_query = model, probes, at_query
        self.hits, self.ablated = 0.0, 0.0

    def heads(self, piece: Batch, base: torch.Tensor, o: torch.Tensor) -> None:
        self.hits = self.hits + probe_hits(self.probes, o, piece)
        self.ablated = self.ablated + ablated_hits(self.model, piece, base, o, self.at_query)


def ride_head_hits(shared: Shared, batch: Batch, fit: Batch) -> None:
    """Have `head_hits` on `batch` ride the set's next pass (`Activations.ride_heads`), with
    its probes and means fitted on `fit` now. Nothing rides for a `deep` model: its probes read
    `head_slices`, its total effect runs forwards of its own."""
    m = shared.model
    if not deep(m):
        probes = head_probes(shared, fit)
        at_query = weighted_mean(shared.of(fit).heads[1], fit.weight, 1)
        shared.of(batch).ride_heads(HEAD_HITS, lambda: _HeadHits(m, probes, at_query))


def head_probes(shared: Shared, fit: Batch) -> list[list]:
    """`fit_probes` on `fit`'s head outputs, fitted once per (model, fit set)."""
    fa = shared.of(fit)
    return fa.once("probes", lambda: fit_probes(fa.heads[1], fit))


def deep_ablated_hits(shared: Shared, batch: Batch, fit: Batch, at_query: torch.Tensor
                      ) -> torch.Tensor:
    """`ablated_hits` of a `deep` model: one forward per head, in slices, the head's output
    replaced (`ablation_value`) and every later computation seeing it. (S, L * H)."""
    m = shared.model
    before = position_means(shared.of(fit))
    ids = head_ids(m)
    hits = torch.zeros(m.n_seeds, len(ids), dtype=torch.float64)
    for piece in slices(m, batch):
        w = piece.weight.to(torch.float64)
        for i, (n, h) in enumerate(ids):
            value = ablation_value(m, piece, n, at_query[:, i], before[:, i])
            pred = m.run(piece, replace={(n, h): value}).logits.argmax(-1)
            hits[:, i] += ((pred == piece.y).to(w.dtype) * w).sum(-1)
    return hits


def ablated_hits(model, piece: Batch, base: torch.Tensor, o: torch.Tensor,
                 at_query: torch.Tensor) -> torch.Tensor:
    """One attention-only layer: the weight of the examples of `piece` the model answers right
    with each head in turn mean-ablated (S, H), from the residual without the heads base
    (S, b, d), the head outputs o (S, b, H, d) and their means at_query (S, H, d): the logits
    read the residual alone, so no forward is run again."""
    H = o.shape[2]
    w = piece.weight.to(torch.float64)
    hits = torch.zeros(o.shape[0], H, dtype=torch.float64)
    linear = not model.cfg.layernorm  # then recombined as logits (`Model.read_out`)
    if linear:
        base, o, at_query = model.unembed(base), model.read_out(o), model.read_out(at_query)
    for i in range(H):
        ablated = torch.arange(H) == i
        resid = base + torch.where(ablated[:, None], at_query[:, None], o).sum(2)
        pred = (resid if linear else model.unembed(resid)).argmax(-1)
        hits[:, i] = ((pred == piece.y).to(w.dtype) * w).sum(-1)
    return hits


def head_table(model, sets=EVAL_SETS, fit: Batch | None = None, shared: Shared | None = None
               ) -> list[dict]:
    """Tidy rows, one per (set, seed, head): head_auc, s_acc, probe_s_acc, attention statistics,
    total_effect; heads of every layer (`layer`; `head` the global index layer * H + h).

    Thresholds and probes are fitted on `fit` (default: the `fit` split), then scored on each
    set; every number is weighted by the set's example weights; computed in float64 from the
    sets' `Activations` (`shared`: those other analyses read too).
    """
    shared = Shared(model) if shared is None else shared
    fit = eval_set(model.cfg, "fit") if fit is None else fit
    with torch.no_grad():
        t = fit_thresholds(shared, fit)  # (S, H)
        probes = head_probes(shared, fit)
        rows = []
        for name, batch in as_batches(model.cfg, sets).items():
            a = shared.of(batch)
            pacc, effect = head_hits(shared, batch, fit, probes)
            readout = readout_columns(a.direct, t, batch)
            ratio = ratio_columns(a.weights.numpy(), model.cfg.noise_symbols)  # each (S, H)
            mass = a.mass.numpy()
            names = kind_names(model.cfg.noise_symbols)
            for i, seed in enumerate(model.seeds):
                for h, (layer, _) in enumerate(head_ids(model)):
                    row = {"set": name, "seed": seed, "layer": layer, "head": h}
                    row |= {k: float(v[i, h]) for k, v in readout.items()}
                    row |= {"s_threshold": float(t[i, h]), "probe_s_acc": float(pacc[i, h])}
                    row |= {k: float(v[i, h]) for k, v in ratio.items()}
                    row |= {f"mass_{k}": float(mass[i, h, j]) for j, k in enumerate(names)}
                    rows.append(row | {"total_effect": float(effect[i, h])})
    return rows
