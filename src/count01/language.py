"""The Count01 task (SPEC 2): strings of 0, 1 and noise, the answer rule, the evaluation sets.

Randomness is counter-based (a splitmix64 hash of seed, stream and index), so a seed's training
batch at step t is the same whether that seed trains alone or inside a batch of 64 seeds, and an
interrupted run resumes on exactly the data it would have seen. A string is drawn as its count
triple (n0, n1, n2) from the exact distribution, then, where order matters, arranged into tokens
by a random permutation: the same law as i.i.d. digits, and the count path never pays for tokens.
With K noise symbols (ids 2, 5, ..., K + 3) a string's count tuple is (n0, n1, then one count per
noise symbol), K + 2 columns: the triple's noise count m is split over the symbols by a
multinomial(m, 1/K each) (`split_noise`), whether the noise is i.i.d. or bursty, since every noise
symbol picks its symbol uniformly and independently (a burst mixes symbols).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from math import lgamma, log

import numpy as np
import torch

from .config import BOS, EOS, ONE, TWO, ZERO, Config, Count01Error, noise_ids

PAD = ZERO  # padding after EOS; it is never attended to (causal mask at the EOS query)

# stream ids: the training stream and every evaluation set draw from disjoint hash streams
TRAIN_STREAM = 1
EVAL_STREAMS = {"iid": 11, "hard": 12, "long": 13, "noisy": 14, "fit": 15}
EVAL_SETS = ("iid", "hard", "exhaustive", "long", "noisy")
NOISE_SPLIT = 100  # added to a stream id: the uniforms that split noise over the noise symbols

_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)
# the hash of `uniform` (also compiled in fast/kernels.py, given these by fast/tokens.py)
MIX = (np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB))  # splitmix64's multipliers
GOLDEN = np.uint64(0x9E3779B97F4A7C15)
STEP_MIX = np.uint64(0xD1B54A32D192ED03)


def kind_ids(k: int) -> tuple[int, ...]:
    """Token id of each column of a count tuple: 0, 1, then the k noise symbols."""
    return (ZERO, ONE) + noise_ids(k)


def vocab(k: int) -> tuple[str, ...]:
    """Token names in id order: 0, 1, 2, EOS, BOS, then noise symbols 5..k+3 by their digit."""
    return ("0", "1", "2", "EOS", "BOS") + tuple(str(i) for i in range(5, k + 4))


def answer(counts: torch.Tensor) -> torch.Tensor:
    """y = 1 iff there are more 1s than 0s (ties answer 0; noise never counts). counts (..., K+2)."""
    return (counts[..., ONE] > counts[..., ZERO]).long()


# --- counter-based randomness ---------------------------------------------------------------

def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: a bijective avalanche on uint64 (wrapping arithmetic)."""
    x = x ^ (x >> np.uint64(30))
    x = x * MIX[0]
    x = x ^ (x >> np.uint64(27))
    x = x * MIX[1]
    return x ^ (x >> np.uint64(31))


def uniform(seed: np.ndarray | int, stream: int, step: int, index: np.ndarray) -> np.ndarray:
    """Uniforms in [0, 1) as a pure function of (seed, stream, step, index); broadcasts."""
    with np.errstate(over="ignore"):
        key = _mix(np.asarray(seed, dtype=np.uint64) * GOLDEN + np.uint64(stream))
        key = _mix(key ^ (np.uint64(step) * STEP_MIX))
        h = _mix(key + np.asarray(index, dtype=np.uint64) * GOLDEN)
    return (h >> np.uint64(11)).astype(np.float64) * 2.0**-53


# --- the exact distribution over count triples -------------------------------------------------

@lru_cache(maxsize=64)
def triples(min_len: int, max_len: int) -> np.ndarray:
    """Every count triple (n0, n1, n2) with min_len <= n0 + n1 + n2 <= max_len. (T, 3) int64."""
    out = []
    for n in range(min_len, max_len + 1):
        n0, n1 = np.meshgrid(np.arange(n + 1), np.arange(n + 1), indexing="ij")
        keep = n0 + n1 <= n
        n0, n1 = n0[keep], n1[keep]
        out.append(np.stack([n0, n1, n - n0 - n1], axis=1))
    return np.concatenate(out).astype(np.int64)


@lru_cache(maxsize=64)
def tuples(min_len: int, max_len: int, kinds: int) -> np.ndarray:
    """Every count tuple of `kinds` kinds summing to min_len..max_len, each once, n0 outermost
    (for kinds = 3 the rows of `triples`, in its order). (T, kinds) int64."""
    if kinds == 3:
        return triples(min_len, max_len)
    out = []
    for n in range(min_len, max_len + 1):
        rows = np.zeros((1, 0), dtype=np.int64)
        for _ in range(kinds - 1):  # append every value the next kind can take
            reps = n - rows.sum(1) + 1
            rows = np.concatenate([np.repeat(rows, reps, 0),
                                   np.concatenate([np.arange(r) for r in reps])[:, None]], 1)
        out.append(np.concatenate([rows, n - rows.sum(1, keepdims=True)], 1))
    return np.concatenate(out).astype(np.int64)


def log_multinomial(t: np.ndarray) -> np.ndarray:
    """log of n! / (n0! n1! ...): how many strings share a count tuple (finite for any n)."""
    n = t.sum(1)
    lf = np.array([lgamma(k + 1.0) for k in range(int(n.max(initial=0)) + 1)])  # log k!
    out = lf[n]
    for c in range(t.shape[1]):  # one kind at a time: the same rounding for any number of kinds
        out = out - lf[t[:, c]]
    return out


def _log(p: float, k: np.ndarray) -> np.ndarray:
    """k * log(p), with 0 * log(0) = 0 (a kind of probability 0 that does not occur)."""
    return np.where(k > 0, k * log(p) if p > 0 else -np.inf, 0.0)


def burst_chain(noise: float, burst_len: float) -> tuple[float, float]:
    """The two-state chain of bursty noise: (P(noise -> noise), P(digit -> noise)). Noise runs
    last burst_len on average, and the chain's stationary noise rate is `noise`."""
    stay = 1.0 - 1.0 / burst_len
    return stay, noise / (1.0 - noise) * (1.0 - stay)


def to_noise(noise: float, burst_len: float) -> np.ndarray:
    """P(the next symbol is noise | the state before it): digit, noise, the start (stationary)."""
    stay, enter = burst_chain(noise, burst_len)
    return np.array([enter, stay, noise])


@lru_cache(maxsize=64)
def bursty_noise_counts(n_max: int, noise: float, burst_len: float) -> np.ndarray:
    """log P(k noise symbols among n) when noise follows `burst_chain` from its stationary
    state. (n_max + 1, n_max + 1), [n, k]; -inf where impossible."""
    stay, enter = burst_chain(noise, burst_len)
    out = np.full((n_max + 1, n_max + 1), -np.inf)
    out[0, 0] = 0.0
    # f[s, k]: P(the first i symbols hold k noise and symbol i is noise (s = 1) or not (s = 0))
    f = np.zeros((2, n_max + 1))
    f[1, 1], f[0, 0] = noise, 1.0 - noise
    with np.errstate(divide="ignore"):
        for i in range(1, n_max + 1):
            out[i] = np.log(f[0] + f[1])
            nxt = np.zeros_like(f)
            nxt[1, 1:] = f[1, :-1] * stay + f[0, :-1] * enter
            nxt[0] = f[1] * (1.0 - stay) + f[0] * (1.0 - enter)
            f = nxt
    return out


@lru_cache(maxsize=64)
def triple_law(min_len: int, max_len: int, noise: float, balanced: bool, hard: bool,
               p_one: float = 0.5, burst_len: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """(triples, probabilities) of one draw: n ~ U(min..max); each symbol is noise with
    probability `noise`, independently (burst_len = 0) or in runs of mean burst_len
    (`burst_chain`); a counted digit is 1 with probability p_one.

    `hard` keeps |n1 - n0| <= 1; `balanced` rescales so each answer has probability 1/2.
    """
    t = triples(min_len, max_len)
    n, digits = t.sum(1), t[:, 0] + t[:, 1]
    logp = -np.log(max_len - min_len + 1.0) + _log(p_one, t[:, 1]) + _log(1.0 - p_one, t[:, 0])
    if burst_len:  # which positions are noise, then a binomial split of the digits
        lf = np.array([lgamma(k + 1.0) for k in range(max_len + 1)])
        logp += bursty_noise_counts(max_len, noise, burst_len)[n, t[:, 2]]
        logp += lf[digits] - lf[t[:, 0]] - lf[t[:, 1]]
    else:
        logp += log_multinomial(t) + _log(noise, t[:, 2]) + _log(1.0 - noise, digits)
    p = np.exp(logp)
    if hard:
        p = np.where(np.abs(t[:, 1] - t[:, 0]) <= 1, p, 0.0)
    if balanced:
        y = t[:, 1] > t[:, 0]
        p = np.where(y, 0.5 * p / p[y].sum(), 0.5 * p / p[~y].sum())
    p = p / p.sum()
    return t, p


def count_law(key: tuple, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(count tuples, probabilities) of one draw from `triple_law(*key)` with its noise split
    over k symbols: each noise symbol is one of them uniformly and independently, so a triple's
    noise m splits as multinomial(m, 1/k each). The law `split_noise` draws from (tests hold
    both to enumerated strings)."""
    t, p = triple_law(*key)
    if k == 1:
        return t, p
    rows, probs = [], []
    for m in range(int(t[:, 2].max()) + 1):
        sel = t[:, 2] == m
        parts = tuples(m, m, k)
        w = np.exp(log_multinomial(parts) - m * log(k))
        rows.append(np.concatenate([np.repeat(t[sel, :2], len(parts), 0),
                                    np.tile(parts, (int(sel.sum()), 1))], 1))
        probs.append((p[sel][:, None] * w).reshape(-1))
    return np.concatenate(rows), np.concatenate(probs)


@lru_cache(maxsize=16)
def _binomial_cdf(n_max: int, q: float) -> np.ndarray:
    """CDF of Binomial(r, q) at x, for r, x in 0..n_max. (n_max + 1, n_max + 1), [r, x]."""
    r, x = np.arange(n_max + 1)[:, None], np.arange(n_max + 1)[None]
    lf = np.array([lgamma(i + 1.0) for i in range(n_max + 1)])
    with np.errstate(divide="ignore", invalid="ignore"):
        logp = (lf[r] - lf[x] - lf[np.maximum(r - x, 0)] + _log(q, x)
                + _log(1.0 - q, np.maximum(r - x, 0)))
    return np.cumsum(np.where(x <= r, np.exp(logp), 0.0), 1)


def split_noise(triple: np.ndarray, u: np.ndarray, k: int) -> np.ndarray:
    """Count tuples (..., k + 2) from count triples (..., 3): the noise count m split over k
    symbols as multinomial(m, 1/k each), by conditional binomials, symbol j drawing
    Binomial(left, 1/(k - j)) by inverse CDF from uniform u[..., j]. u (..., k - 1)."""
    if k == 1:
        return triple
    left = triple[..., 2].copy()
    parts = []
    for j in range(k - 1):
        cdf = _binomial_cdf(int(left.max(initial=0)), 1.0 / (k - j))
        got = np.minimum((cdf[left] <= u[..., j:j + 1]).sum(-1), left)
        parts.append(got)
        left = left - got
    return np.concatenate([triple[..., :2], np.stack(parts + [left], -1)], -1)


def draw_triples(law: tuple[np.ndarray, np.ndarray], u: np.ndarray) -> np.ndarray:
    """Inverse-CDF draw: a uniform per example gives its triple. (..., 3).

    The reference definition; `draw_index` computes the same indices several times faster."""
    t, p = law
    cdf = np.cumsum(p)
    idx = np.searchsorted(cdf, u * cdf[-1], side="right").clip(max=len(t) - 1)
    return t[idx]


@lru_cache(maxsize=64)
def _guide(*law_key) -> tuple[np.ndarray, np.ndarray, float]:
    """A guide table for the inverse CDF of `triple_law(*law_key)`: bucket g of G equal slices
    of [0, total) starts at index lo[g], so most draws need one lookup instead of a binary search.
    Returns (cdf with -inf prepended, lo, total)."""
    _, p = triple_law(*law_key)
    cdf = np.cumsum(p)
    buckets = min(16 * len(p), 1 << 20)
    lo = np.searchsorted(cdf, np.arange(buckets) * (cdf[-1] / buckets), side="right")
    return np.concatenate([[-np.inf], cdf]), lo.clip(max=len(p) - 1), float(cdf[-1])


def draw_index(law_key: tuple, u: np.ndarray) -> np.ndarray:
    """Indices into `triples` of inverse-CDF draws from `triple_law(*law_key)`: exactly the
    indices of `draw_triples`. Each guess is checked (cdf[i-1] <= x < cdf[i]); the few that fail
    (a CDF step inside their bucket, or rounding at a bucket edge) take the binary search."""
    cdf, lo, total = _guide(*law_key)
    x = u * total
    idx = lo[np.minimum(u * len(lo), len(lo) - 1).astype(np.int64)]  # u * G rounds to G
    bad = (cdf[idx + 1] <= x) | (cdf[idx] > x)
    if bad.any():
        idx[bad] = np.searchsorted(cdf[1:], x[bad], side="right").clip(max=len(cdf) - 2)
    return idx


@lru_cache(maxsize=16)
def bursts_left(width: int, noise: float, burst_len: float) -> np.ndarray:
    """P(the next r symbols hold exactly k noise | the state before them), by `burst_chain`.
    (3, width + 1, width + 1), [state, r, k]; state 0 digit, 1 noise, 2 the start (stationary)."""
    p = to_noise(noise, burst_len)
    g = np.zeros((3, width + 1, width + 1))
    g[:, 0, 0] = 1.0
    for r in range(1, width + 1):
        g[:, r, 1:] = p[:, None] * g[1, r - 1, :-1]
        g[:, r] += (1.0 - p)[:, None] * g[0, r - 1]
    return g


def noise_positions(counts: np.ndarray, u: np.ndarray, noise: float, burst_len: float
                    ) -> np.ndarray:
    """Where the noise of each example sits, drawn from the bursty chain (`burst_chain`) given
    its counts: position by position, noise with its probability given the state and the noise
    still to place. counts (..., K+2), u (..., width) -> bool (..., width)."""
    width = u.shape[-1]
    g = bursts_left(width, noise, burst_len)
    chain = to_noise(noise, burst_len)
    n, left = counts.sum(-1), counts[..., 2:].sum(-1)
    state = np.full(n.shape, 2)
    out = np.zeros(u.shape, dtype=bool)
    with np.errstate(invalid="ignore", divide="ignore"):
        for i in range(width):  # a loop over positions, each over the whole batch at once
            r = np.maximum(n - i, 1)
            p = chain[state] * g[1, r - 1, np.maximum(left - 1, 0)] / g[state, r, left]
            here = (i < n) & (left > 0) & (u[..., i] < p)
            out[..., i] = here
            left -= here
            state = np.where(i < n, here.astype(np.int64), state)
    return out


def _deal(keys: np.ndarray, counts: np.ndarray, ids: tuple[int, ...]) -> np.ndarray:
    """Symbols `ids` in the multiplicities `counts` (..., c), dealt in the order of `keys`
    (..., width): the position of rank r gets the symbol whose cumulative count r falls in
    (the padding, keys inf, gets the last symbol; the caller overwrites it).

    Rank r >= cum_c iff the key exceeds the cum_c-th smallest key, so one sort of the values
    and c - 1 comparisons give what an argsort and a scatter did (3x faster), with the same
    symbols at every position. Should two finite keys of a row tie (53-bit uniforms: ~1e-13 per
    string), that row's keys become their stable ranks first, so the counts stay exact."""
    ranked = np.sort(keys, axis=-1)
    tied = (ranked[..., 1:] == ranked[..., :-1]) & (ranked[..., 1:] < np.inf)
    if tied.any():
        rows = tied.any(-1)
        rank = np.argsort(np.argsort(keys[rows], -1, kind="stable"), -1, kind="stable")
        keys = keys.copy()
        keys[rows] = np.where(keys[rows] < np.inf, rank, np.inf)
        ranked = np.sort(keys, axis=-1)
    cum = np.cumsum(counts[..., :-1], -1)
    kth = np.take_along_axis(ranked, np.maximum(cum - 1, 0), -1)  # the cum_c-th smallest key
    kth[cum == 0] = -np.inf
    by_rank = (keys > kth[..., :1]).view(np.int8)
    for c in range(1, counts.shape[-1] - 1):
        by_rank = by_rank + (keys > kth[..., c:c + 1])
    if ids != tuple(range(len(ids))):
        return np.asarray(ids, dtype=np.int8)[by_rank]
    return by_rank


def arrange(counts: np.ndarray, u: np.ndarray, bos: bool, noise_at: np.ndarray | None = None
            ) -> tuple[np.ndarray, np.ndarray]:
    """Tokens `[BOS] x1..xn EOS` (right-padded) for count tuples, in the order the uniforms give.

    counts (..., K+2), u (..., max_n): a uniformly random permutation of the multiset of digits;
    with `noise_at` (bool, like u), the noise sits there, the 0s and 1s are permuted over the
    other positions and the noise symbols over the noise positions (by the same uniforms: the
    two sets of positions are disjoint). Returns tokens (..., L) and the EOS position (...,).
    """
    n = counts.sum(-1)
    width = u.shape[-1]
    pos = np.arange(width)
    k = counts.shape[-1] - 2
    within = pos < n[..., None]
    if noise_at is None:
        digits = _deal(np.where(within, u, np.inf), counts, kind_ids(k))
    else:
        digits = _deal(np.where(within & ~noise_at, u, np.inf), counts[..., :2], (ZERO, ONE))
        noise = (TWO if k == 1 else
                 _deal(np.where(noise_at, u, np.inf), counts[..., 2:], noise_ids(k)))
        digits = np.where(noise_at, noise, digits)
    digits = np.where(within, digits, PAD)
    off = int(bos)
    tokens = np.full(n.shape + (width + 1 + off,), PAD, dtype=np.int64)
    if bos:
        tokens[..., 0] = BOS
    tokens[..., off:off + width] = digits
    eos_pos = n + off
    np.put_along_axis(tokens, eos_pos[..., None], EOS, axis=-1)
    return tokens, eos_pos


def tokens_to_counts(tokens: torch.Tensor, eos_pos: torch.Tensor, k: int = 1) -> torch.Tensor:
    """Count tuples of token strings (digits before EOS) with k noise symbols. (..., k + 2)."""
    before = torch.arange(tokens.shape[-1]) < eos_pos[..., None]
    return torch.stack([((tokens == d) & before).sum(-1) for d in kind_ids(k)], dim=-1)


# --- batches -------------------------------------------------------------------------------

@dataclass
class Batch:
    """Examples at one query: the answer's (the first EOS), or with `query` set the ending's.
    `counts` always; `tokens` only where order matters.

    A batch with a leading seed axis (S, B, ...) is a training batch (each seed its own data);
    evaluation sets have no seed axis and carry a weight per example (duplicates merged, or the
    number of strings sharing a count triple for the exact `exhaustive` set).

    `query` (the `sentence` framing's ending, `at_end`): the query is the answer token fed after
    the first EOS, one position after it in `tokens`, and also sees itself; `y` is then the
    token it must predict, EOS.
    """

    counts: torch.Tensor  # (..., B, K+2) int64: n0, n1, then each noise symbol's (kind_ids)
    y: torch.Tensor  # (..., B) int64: the token the query must predict
    weight: torch.Tensor  # (..., B) float64, sums to the number of examples represented
    tokens: torch.Tensor | None = None  # (..., B, L) int64
    eos_pos: torch.Tensor | None = None  # (..., B) int64: the first EOS
    query: torch.Tensor | None = None  # (..., B) int64: the fed answer; None: the query is EOS

    def __len__(self) -> int:
        return self.counts.shape[-2]

    def mult(self, bos: bool, dtype: torch.dtype) -> torch.Tensor:
        """Multiplicities of every token id the query sees (the ending's query, an answer 0 or
        1, also sees itself). (..., B, d_vocab)."""
        counts = self.counts.to(dtype)
        if self.query is not None:
            counts = counts + torch.nn.functional.one_hot(self.query, counts.shape[-1]).to(dtype)
        return multiplicities(counts, bos)


def multiplicities(counts: torch.Tensor, bos: bool) -> torch.Tensor:
    """What the EOS query sees of a string, per token id (0, 1, 2, EOS, BOS, then the noise
    symbols 5, ...), from its count tuple (..., K + 2): (..., d_vocab), EOS once, BOS 0 or 1."""
    ones = torch.ones(counts.shape[:-1] + (1,), dtype=counts.dtype)
    return torch.cat([counts[..., :3], ones, ones * float(bos), counts[..., 3:]], -1)


def sentence(tokens: np.ndarray, eos_pos: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The `sentence` framing's tokens `[BOS] x1..xn EOS y EOS` from `[BOS] x1..xn EOS`: two
    positions wider, the answer y and the closing EOS after the first EOS. (..., L + 2)."""
    out = np.concatenate([tokens, np.full(tokens.shape[:-1] + (2,), PAD, dtype=tokens.dtype)], -1)
    np.put_along_axis(out, eos_pos[..., None] + 1, y[..., None], axis=-1)
    np.put_along_axis(out, eos_pos[..., None] + 2, EOS, axis=-1)
    return out


def at_end(batch: Batch, fed: torch.Tensor | None = None) -> Batch:
    """The ending's query of a `sentence` batch: the answer `fed` (default the true y, each
    (..., B) in 0..2) sits one position after the first EOS and must be followed by EOS. Token
    batches must hold sentences (`sentence`); the fed answer replaces the one there."""
    fed = batch.y if fed is None else fed
    tokens = batch.tokens
    if tokens is not None:
        tokens = tokens.clone().scatter_(-1, batch.eos_pos[..., None] + 1, fed[..., None])
    return Batch(batch.counts, torch.full_like(fed, EOS), batch.weight, tokens, batch.eos_pos,
                 fed)


def string_rows(tokens: torch.Tensor, eos_pos: torch.Tensor, d_vocab: int):
    """The queries of `lm_loss`: every position i before the first EOS predicts token i + 1 (the
    next digit, or the first EOS after xn); its query token is token i and it sees tokens 0..i.

    tokens (..., B, L). Returns the multiplicities of every token id each row's query sees
    (..., B, L', d_vocab), the query kinds and the targets (..., B, L') and whether the row
    is one (..., B, L'), with L' = max(eos_pos) (rows at or after EOS are not)."""
    width = int(eos_pos.max())
    q = tokens[..., :width]
    mult = torch.nn.functional.one_hot(q, d_vocab).cumsum(-2)  # no EOS before the first
    return mult, q, tokens[..., 1:width + 1], torch.arange(width) < eos_pos[..., None]


def law(cfg: Config, name: str = "train") -> tuple:
    """The key, for `triple_law` and `draw_index`, of the training law (name "train") or of an
    evaluation set's law; every one follows the configured noise pattern and p_one."""
    burst = cfg.burst_len if cfg.noise_pattern == "bursty" else 0.0
    lengths, noise, balanced, hard = {
        "train": ((cfg.min_len, cfg.max_len), cfg.noise, cfg.class_balanced, False),
        "iid": ((cfg.min_len, cfg.max_len), cfg.noise, cfg.class_balanced, False),
        "fit": ((cfg.min_len, cfg.max_len), cfg.noise, cfg.class_balanced, False),
        "hard": ((cfg.min_len, cfg.max_len), cfg.noise, True, True),
        "long": ((cfg.max_len + 1, cfg.long_max_len), cfg.noise, True, False),
        "noisy": ((cfg.min_len, cfg.max_len), cfg.noisy_noise, True, False),
    }[name]
    return (*lengths, noise, balanced, hard, cfg.p_one, burst)


def training_law(cfg: Config) -> tuple:
    """The key of the training law for `triple_law`, `draw_index` and `training_indices`."""
    return law(cfg)


def training_indices(cfg: Config, seeds: list[int], step: int) -> np.ndarray:
    """Seed k's examples at `step` as indices into `triples(cfg.min_len, cfg.max_len)`. (S, B).

    What the count path trains on: a row of a per-triple table is all it needs."""
    s = np.asarray(seeds, dtype=np.uint64)[:, None]
    u = uniform(s, TRAIN_STREAM, 2 * step, np.arange(cfg.batch_size))
    return draw_index(training_law(cfg), u)


def _split(triple: np.ndarray, cfg: Config, seed, stream: int, step: int) -> np.ndarray:
    """Count tuples of a draw's triples (..., B, 3), the noise split by uniforms of a stream of
    their own, K - 1 per example (none with one noise symbol)."""
    k = cfg.noise_symbols
    if k == 1:
        return triple
    idx = np.arange(triple.shape[-2])[:, None] * (k - 1) + np.arange(k - 1)
    return split_noise(triple, uniform(seed, stream + NOISE_SPLIT, step, idx), k)


def training_counts(cfg: Config, seeds: list[int], step: int) -> np.ndarray:
    """Seed k's count tuples at `step`, for every seed at once. (S, B, K + 2)."""
    s = np.asarray(seeds, dtype=np.uint64)[:, None, None]
    triple = triples(cfg.min_len, cfg.max_len)[training_indices(cfg, seeds, step)]
    return _split(triple, cfg, s, TRAIN_STREAM, 2 * step)


def training_batch(cfg: Config, seeds: list[int], step: int, tokens: bool | None = None) -> Batch:
    """Seed k's batch at `step`, for every seed at once. (S, B, ...)."""
    tokens = (not cfg.count_path) if tokens is None else tokens
    s = np.asarray(seeds, dtype=np.uint64)[:, None]
    counts = training_counts(cfg, seeds, step)
    key = training_law(cfg)
    return _batch(counts, cfg, s[..., None], TRAIN_STREAM, 2 * step + 1, tokens, cfg.max_len,
                  merge=False, burst=(key[2], key[6]))


def _batch(counts: np.ndarray, cfg: Config, seed, stream: int, step: int, tokens: bool,
           width: int, merge: bool, burst: tuple[float, float] = (0.0, 0.0)) -> Batch:
    """Tokens arranged with a fixed `width` of uniforms per example (twice that for bursty noise,
    `burst` = (noise, burst_len), burst_len 0 for i.i.d. noise), so the arrangement of example b
    never depends on what else is in the batch."""
    if tokens:
        per = 2 * width if burst[1] else width
        idx = np.arange(counts.shape[-2])[:, None] * per + np.arange(per)
        u = uniform(seed, stream, step, idx)
        noise_at = noise_positions(counts, u[..., width:], *burst) if burst[1] else None
        tok, eos = arrange(counts, u[..., :width], cfg.bos, noise_at)
        if cfg.framing == "sentence":
            tok = sentence(tok, eos, answer(torch.from_numpy(counts)).numpy())
        ct = torch.from_numpy(counts)
        return Batch(ct, answer(ct), torch.ones(ct.shape[:-1], dtype=torch.float64),
                     torch.from_numpy(tok), torch.from_numpy(eos))
    if merge:
        counts, weight = np.unique(counts, axis=0, return_counts=True)
    else:
        weight = np.ones(counts.shape[:-1])
    ct = torch.from_numpy(counts)
    return Batch(ct, answer(ct), torch.from_numpy(weight.astype(np.float64)))


def eval_set(cfg: Config, name: str, tokens: bool | None = None) -> Batch:
    """One evaluation set (SPEC 2), reproducible from `eval_seed`, disjoint from training draws.

    iid: the training law. hard: |#1 - #0| <= 1. long: lengths max_len+1..long_max_len.
    noisy: noise rate noisy_noise (the same symbols). These four are class-balanced (half answer
    1), except iid, which keeps the training law, and are `eval_size` draws. exhaustive: every
    string over the whole vocabulary of length 1..exhaustive_len once (exact, through count
    tuples, on the count path). `fit`: an iid draw
    of its own, where thresholds, probes and alphas are fitted before scoring elsewhere.
    """
    tokens = (not cfg.count_path) if tokens is None else tokens
    if name == "exhaustive":
        return exhaustive(cfg, tokens)
    if name not in EVAL_STREAMS:
        raise Count01Error(f"unknown evaluation set {name!r}; choose from {', '.join(EVAL_SETS)}")
    key, stream = law(cfg, name), EVAL_STREAMS[name]
    u = uniform(cfg.eval_seed, stream, 0, np.arange(cfg.eval_size))
    counts = _split(triples(*key[:2])[draw_index(key, u)], cfg, cfg.eval_seed, stream, 0)
    return _batch(counts, cfg, cfg.eval_seed, stream, 1, tokens, key[1], merge=True,
                  burst=(key[2], key[6]))


def exhaustive(cfg: Config, tokens: bool = False, max_len: int | None = None) -> Batch:
    """Every string over the whole vocabulary (0, 1 and the K noise symbols) of length
    1..max_len, each once: as count tuples weighted by how many strings share them (exact for any
    length), or enumerated as tokens ((K + 2)^n strings per length).

    The weights are the string counts (3^64 ~ 3e30 fits a float64) up to max_len ~ 600; beyond,
    all are scaled down by one factor so the largest is e^600: metrics only use ratios."""
    max_len = cfg.exhaustive_len if max_len is None else max_len
    k = cfg.noise_symbols
    if not tokens:
        t = tuples(1, max_len, k + 2)
        ct = torch.from_numpy(t)
        log_w = log_multinomial(t)
        weight = np.exp(log_w - max(0.0, log_w.max() - 600.0))
        return Batch(ct, answer(ct), torch.from_numpy(weight))
    rows, base, ids = [], k + 2, np.asarray(kind_ids(k))
    for n in range(1, max_len + 1):  # one vectorised block per length
        codes = np.arange(base**n)
        digits = ids[(codes[:, None] // base ** np.arange(n)[::-1]) % base]
        rows.append(np.pad(digits, ((0, 0), (0, max_len - n)), constant_values=-1))
    digits = np.concatenate(rows)
    return from_digits(digits, cfg.bos, k, cfg.framing == "sentence")


def from_digits(digits: np.ndarray, bos: bool, k: int = 1, as_sentence: bool = False) -> Batch:
    """Token batch from rows of token ids (-1 pads the end of shorter rows), k noise symbols;
    with `as_sentence`, the `sentence` framing's tokens (the true answer and the closing EOS
    after the first EOS)."""
    n = (digits >= 0).sum(1)
    off = int(bos)
    tokens = np.full((len(digits), digits.shape[1] + 1 + off), PAD, dtype=np.int64)
    if bos:
        tokens[:, 0] = BOS
    tokens[:, off:off + digits.shape[1]] = np.where(digits >= 0, digits, PAD)
    np.put_along_axis(tokens, (n + off)[:, None], EOS, axis=1)
    tok, eos = torch.from_numpy(tokens), torch.from_numpy(n + off)
    counts = tokens_to_counts(tok, eos, k)
    if as_sentence:
        tok = torch.from_numpy(sentence(tokens, n + off, answer(counts).numpy()))
    return Batch(counts, answer(counts), torch.ones(len(digits), dtype=torch.float64), tok, eos)


def parse(text: str, bos: bool, k: int = 1, as_sentence: bool = False) -> Batch:
    """A user's string of digits, e.g. "0112021" (noise symbols 2 and 5..k+3 by their digit),
    as a one-example token batch."""
    text = text.strip()
    allowed = "".join(str(i) for i in kind_ids(k))
    if not text:
        raise Count01Error(f"empty string: give digits {', '.join(allowed)}, e.g. 0112021")
    bad = sorted(set(text) - set(allowed))
    if bad:
        raise Count01Error(f"invalid token(s) {''.join(bad)!r} in {text!r}: only digits "
                           f"{', '.join(allowed)}")
    return from_digits(np.array([[int(c) for c in text]]), bos, k, as_sentence)
