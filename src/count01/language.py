"""The Count01 task (SPEC 2): strings of 0/1/2, the answer rule, and the evaluation sets.

Randomness is counter-based (a splitmix64 hash of seed, stream and index), so a seed's training
batch at step t is the same whether that seed trains alone or inside a batch of 64 seeds, and an
interrupted run resumes on exactly the data it would have seen. A string is drawn as its count
triple (n0, n1, n2) from the exact distribution, then, where order matters, arranged into tokens
by a random permutation: the same law as i.i.d. digits, and the count path never pays for tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from math import lgamma, log

import numpy as np
import torch

from .config import D_VOCAB as D_VOCAB  # the vocabulary's size lives beside the config's
from .config import Config, Count01Error

ZERO, ONE, TWO, EOS, BOS = 0, 1, 2, 3, 4
VOCAB = ("0", "1", "2", "EOS", "BOS")
PAD = ZERO  # padding after EOS; it is never attended to (causal mask at the EOS query)

# stream ids: the training stream and every evaluation set draw from disjoint hash streams
TRAIN_STREAM = 1
EVAL_STREAMS = {"iid": 11, "hard": 12, "long": 13, "noisy": 14, "fit": 15}
EVAL_SETS = ("iid", "hard", "exhaustive", "long", "noisy")

_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def answer(counts: torch.Tensor) -> torch.Tensor:
    """y = 1 iff there are more 1s than 0s (ties answer 0; 2s never count). counts (..., 3)."""
    return (counts[..., ONE] > counts[..., ZERO]).long()


# --- counter-based randomness ---------------------------------------------------------------

def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: a bijective avalanche on uint64 (wrapping arithmetic)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def uniform(seed: np.ndarray | int, stream: int, step: int, index: np.ndarray) -> np.ndarray:
    """Uniforms in [0, 1) as a pure function of (seed, stream, step, index); broadcasts."""
    golden = np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):
        key = _mix(np.asarray(seed, dtype=np.uint64) * golden + np.uint64(stream))
        key = _mix(key ^ (np.uint64(step) * np.uint64(0xD1B54A32D192ED03)))
        h = _mix(key + np.asarray(index, dtype=np.uint64) * golden)
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


def log_multinomial(t: np.ndarray) -> np.ndarray:
    """log of n! / (n0! n1! n2!): how many strings share a count triple (finite for any n)."""
    n = t.sum(1)
    lf = np.array([lgamma(k + 1.0) for k in range(int(n.max(initial=0)) + 1)])  # log k!
    return lf[n] - lf[t[:, 0]] - lf[t[:, 1]] - lf[t[:, 2]]


def _log(p: float, k: np.ndarray) -> np.ndarray:
    """k * log(p), with 0 * log(0) = 0 (a kind of probability 0 that does not occur)."""
    return np.where(k > 0, k * log(p) if p > 0 else -np.inf, 0.0)


def burst_chain(noise: float, burst_len: float) -> tuple[float, float]:
    """The two-state chain of bursty noise: (P(noise -> noise), P(digit -> noise)). Noise runs
    last burst_len on average, and the chain's stationary noise rate is `noise`."""
    stay = 1.0 - 1.0 / burst_len
    return stay, noise / (1.0 - noise) * (1.0 - stay)


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
def _bursts_left(width: int, noise: float, burst_len: float) -> np.ndarray:
    """P(the next r symbols hold exactly k noise | the state before them), by `burst_chain`.
    (3, width + 1, width + 1), [state, r, k]; state 0 digit, 1 noise, 2 the start (stationary)."""
    stay, enter = burst_chain(noise, burst_len)
    to_noise = np.array([enter, stay, noise])
    g = np.zeros((3, width + 1, width + 1))
    g[:, 0, 0] = 1.0
    for r in range(1, width + 1):
        g[:, r, 1:] = to_noise[:, None] * g[1, r - 1, :-1]
        g[:, r] += (1.0 - to_noise)[:, None] * g[0, r - 1]
    return g


def noise_positions(counts: np.ndarray, u: np.ndarray, noise: float, burst_len: float
                    ) -> np.ndarray:
    """Where the noise of each example sits, drawn from the bursty chain (`burst_chain`) given
    its counts: position by position, noise with its probability given the state and the noise
    still to place. counts (..., 3), u (..., width) -> bool (..., width)."""
    width = u.shape[-1]
    g = _bursts_left(width, noise, burst_len)
    stay, enter = burst_chain(noise, burst_len)
    to_noise = np.array([enter, stay, noise])  # P(noise next | digit, noise, the start)
    n, left = counts.sum(-1), counts[..., 2].copy()
    state = np.full(n.shape, 2)
    out = np.zeros(u.shape, dtype=bool)
    with np.errstate(invalid="ignore", divide="ignore"):
        for i in range(width):  # a loop over positions, each over the whole batch at once
            r = np.maximum(n - i, 1)
            p = to_noise[state] * g[1, r - 1, np.maximum(left - 1, 0)] / g[state, r, left]
            here = (i < n) & (left > 0) & (u[..., i] < p)
            out[..., i] = here
            left -= here
            state = np.where(i < n, here.astype(np.int64), state)
    return out


def arrange(counts: np.ndarray, u: np.ndarray, bos: bool, noise_at: np.ndarray | None = None
            ) -> tuple[np.ndarray, np.ndarray]:
    """Tokens `[BOS] x1..xn EOS` (right-padded) for count triples, in the order the uniforms give.

    counts (..., 3), u (..., max_n): a uniformly random permutation of the multiset of digits;
    with `noise_at` (bool, like u), the noise sits there and the 0s and 1s are permuted over the
    other positions. Returns tokens (..., L) and the EOS position (...,).
    """
    n = counts.sum(-1)
    width = u.shape[-1]
    pos = np.arange(width)
    slots = pos < n[..., None] if noise_at is None else (pos < n[..., None]) & ~noise_at
    keys = np.where(slots, u, np.inf)
    # the digit of rank r is 0, 1 or 2 by r against the counts; position order[r] gets it
    # (ties are only among the padding, which is overwritten)
    order = np.argsort(keys, axis=-1)
    c0 = counts[..., :1]
    by_rank = (pos >= c0).astype(np.int64) + (pos >= c0 + counts[..., 1:2])  # ZERO, ONE, TWO
    rows = np.arange(order.size // width).reshape(order.shape[:-1] + (1,)) * width
    digits = np.empty_like(by_rank)
    digits.reshape(-1)[(order + rows).reshape(-1)] = by_rank.reshape(-1)
    digits = np.where(pos < n[..., None], digits, PAD)
    if noise_at is not None:
        digits = np.where(noise_at, TWO, digits)
    off = int(bos)
    tokens = np.full(n.shape + (width + 1 + off,), PAD, dtype=np.int64)
    if bos:
        tokens[..., 0] = BOS
    tokens[..., off:off + width] = digits
    eos_pos = n + off
    np.put_along_axis(tokens, eos_pos[..., None], EOS, axis=-1)
    return tokens, eos_pos


def tokens_to_counts(tokens: torch.Tensor, eos_pos: torch.Tensor) -> torch.Tensor:
    """Count triples of token strings (digits before EOS). (..., 3)."""
    before = torch.arange(tokens.shape[-1]) < eos_pos[..., None]
    return torch.stack([((tokens == d) & before).sum(-1) for d in (ZERO, ONE, TWO)], dim=-1)


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

    counts: torch.Tensor  # (..., B, 3) int64
    y: torch.Tensor  # (..., B) int64: the token the query must predict
    weight: torch.Tensor  # (..., B) float64, sums to the number of examples represented
    tokens: torch.Tensor | None = None  # (..., B, L) int64
    eos_pos: torch.Tensor | None = None  # (..., B) int64: the first EOS
    query: torch.Tensor | None = None  # (..., B) int64: the fed answer; None: the query is EOS

    def __len__(self) -> int:
        return self.counts.shape[-2]

    def mult(self, bos: bool, dtype: torch.dtype) -> torch.Tensor:
        """Multiplicities of the kinds 0, 1, 2, EOS, BOS the query sees (the ending's query
        also sees itself). (..., B, 5)."""
        counts = self.counts.to(dtype)
        if self.query is not None:
            counts = counts + torch.nn.functional.one_hot(self.query, counts.shape[-1]).to(dtype)
        ones = torch.ones(counts.shape[:-1] + (1,), dtype=dtype)
        return torch.cat([counts, ones, ones * float(bos)], -1)


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


def string_rows(tokens: torch.Tensor, eos_pos: torch.Tensor):
    """The queries of `lm_loss`: every position i before the first EOS predicts token i + 1 (the
    next digit, or the first EOS after xn); its query token is token i and it sees tokens 0..i.

    tokens (..., B, L). Returns the multiplicities of the kinds 0, 1, 2, EOS, BOS each row's
    query sees (..., B, L', 5), the query kinds and the targets (..., B, L') and whether the row
    is one (..., B, L'), with L' = max(eos_pos) (rows at or after EOS are not)."""
    width = int(eos_pos.max())
    q = tokens[..., :width]
    mult = torch.nn.functional.one_hot(q, D_VOCAB).cumsum(-2)  # no EOS before the first
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


def training_batch(cfg: Config, seeds: list[int], step: int, tokens: bool | None = None) -> Batch:
    """Seed k's batch at `step`, for every seed at once. (S, B, ...)."""
    tokens = (not cfg.count_path) if tokens is None else tokens
    s = np.asarray(seeds, dtype=np.uint64)[:, None]
    counts = triples(cfg.min_len, cfg.max_len)[training_indices(cfg, seeds, step)]
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
    noisy: P(2) = noisy_noise. These four are class-balanced (half answer 1), except iid, which
    keeps the training law, and are `eval_size` draws. exhaustive: every string of length
    1..exhaustive_len once (exact, through count triples, on the count path). `fit`: an iid draw
    of its own, where thresholds, probes and alphas are fitted before scoring elsewhere.
    """
    tokens = (not cfg.count_path) if tokens is None else tokens
    if name == "exhaustive":
        return exhaustive(cfg, tokens)
    if name not in EVAL_STREAMS:
        raise Count01Error(f"unknown evaluation set {name!r}; choose from {', '.join(EVAL_SETS)}")
    key, stream = law(cfg, name), EVAL_STREAMS[name]
    u = uniform(cfg.eval_seed, stream, 0, np.arange(cfg.eval_size))
    counts = triples(*key[:2])[draw_index(key, u)]
    return _batch(counts, cfg, cfg.eval_seed, stream, 1, tokens, key[1], merge=True,
                  burst=(key[2], key[6]))


def exhaustive(cfg: Config, tokens: bool = False, max_len: int | None = None) -> Batch:
    """Every string of length 1..max_len, each once: as count triples weighted by how many strings
    share them (exact for any length), or enumerated as tokens (3^n strings per length).

    The weights are the string counts (3^64 ~ 3e30 fits a float64) up to max_len ~ 600; beyond,
    all are scaled down by one factor so the largest is e^600: metrics only use ratios."""
    max_len = cfg.exhaustive_len if max_len is None else max_len
    if not tokens:
        t = triples(1, max_len)
        ct = torch.from_numpy(t)
        log_w = log_multinomial(t)
        weight = np.exp(log_w - max(0.0, log_w.max() - 600.0))
        return Batch(ct, answer(ct), torch.from_numpy(weight))
    rows = []
    for n in range(1, max_len + 1):  # one vectorised block per length
        codes = np.arange(3**n)
        digits = (codes[:, None] // 3 ** np.arange(n)[::-1]) % 3
        rows.append(np.pad(digits, ((0, 0), (0, max_len - n)), constant_values=-1))
    digits = np.concatenate(rows)
    return from_digits(digits, cfg.bos, cfg.framing == "sentence")


def from_digits(digits: np.ndarray, bos: bool, as_sentence: bool = False) -> Batch:
    """Token batch from digit rows (-1 pads the end of shorter rows); with `as_sentence`, the
    `sentence` framing's tokens (the true answer and the closing EOS after the first EOS)."""
    n = (digits >= 0).sum(1)
    off = int(bos)
    tokens = np.full((len(digits), digits.shape[1] + 1 + off), PAD, dtype=np.int64)
    if bos:
        tokens[:, 0] = BOS
    tokens[:, off:off + digits.shape[1]] = np.where(digits >= 0, digits, PAD)
    np.put_along_axis(tokens, (n + off)[:, None], EOS, axis=1)
    tok, eos = torch.from_numpy(tokens), torch.from_numpy(n + off)
    counts = tokens_to_counts(tok, eos)
    if as_sentence:
        tok = torch.from_numpy(sentence(tokens, n + off, answer(counts).numpy()))
    return Batch(counts, answer(counts), torch.ones(len(digits), dtype=torch.float64), tok, eos)


def parse(text: str, bos: bool, as_sentence: bool = False) -> Batch:
    """A user's string of digits 0/1/2, e.g. "0112021", as a one-example token batch."""
    text = text.strip()
    if not text:
        raise Count01Error("empty string: give digits 0, 1 and 2, e.g. 0112021")
    bad = sorted(set(text) - set("012"))
    if bad:
        raise Count01Error(f"invalid token(s) {''.join(bad)!r} in {text!r}: only digits 0, 1, 2")
    return from_digits(np.array([[int(c) for c in text]]), bos, as_sentence)
