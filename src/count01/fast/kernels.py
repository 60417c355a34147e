"""A compiled kernel (numba, nopython, no fastmath) for the per-example part of the position
path's gradient (`Model.pos_loss_grad`). In torch ops that part is a dozen passes over
(S, H, B, L) tensors (gathers, scatters, small batched products), each bound by memory traffic
and per-op overhead; here it is one loop over each example's positions with no intermediate
tensors. Each seed's sums are made in a fixed order (example, head, position), so a seed's
result is the same bit for bit whatever seeds are batched beside it. One thread: a `prange`
over seeds measured no faster on 2 shared cores. The tables and their products with the
weights stay in torch. Held to the textbook forward and autograd by tests/test_fast_position.py.

Also the position path's training token batch (`fast/tokens.py`): the hashed uniforms and the
arrangement of `language.uniform` and `language.arrange`, one example at a time, held to them by
tests/test_fast_tokens.py.

And the ranking of the analyses' scores where every weight is 1 (`metrics._ranked`): a row's
positives and negatives, each sorted, walked once side by side (Mann-Whitney's U, the best cut
of a threshold) in whole numbers, instead of an argsort and a dozen numpy passes per row; held
to the general torch path by tests/test_metrics.py. And the intervention grid's answers
(`grid_answers`), the value swap's (`hybrid_answers`) and the position path's attention rows
(`pos_rows`), held to the torch ops by tests/test_interventions.py and
tests/test_fast_position.py. And the alpha refit of one attention-only layer without ln_final
(`newton_fixed`, `aggregation._fit_linear`): torch's damped Newton, every (mask, seed) pair
alone in one loop instead of a few dozen small ops per step; held to torch's `_newton` by
tests/test_aggregation.py.

The kernels read no global of another module: what the data law fixes (the hash's multipliers,
the special tokens' ids) comes in as arguments, so numba's cache, which is invalidated by this
file's own stamp only, can never hold a constant that changed elsewhere."""

from __future__ import annotations

import math

import numpy as np
from numba import njit
from numba.core.caching import FunctionCache


def _pos_examples_grad(A, Bt, tok, pos, rE, rPT, c0, tokens, eos, y, scale, tiny,
                       loss, dc0, drE, drPT, dtok, dpos):
    """Adds each seed's summed cross-entropy into loss (S,) and the gradients of scale * it
    into the tables' gradients, for examples tokens (S, B, L) with EOS at eos (S, B) and answers
    y (S, B), from the tables of `Model.pos_tables`: A, tok (S, H, L, V), Bt, pos (S, H, L, L),
    r_E (S, H, V, V), r_P^T (S, H, V, L), c0 (S, L, V). Gradients: dc0 (S, L, V), dr_E
    (S, H, V, V), dr_P^T (S, H, V, L), dtok (S, H, L, V), dpos (S, H, L, L).

    Per head, exp(score_j) = A[p, t_j] Bt[p, j] (both shifted by their row's maximum); should an
    example's sum D fall below tiny (only for extreme weights) that head's row is redone from
    the scores shifted by the row's own maximum. Head h's share of the logits is
    zl = (sum_j u_j r_P[j] + sum_k mass_k r_E[k]) / D; with gh = g / D (g = d loss / d logits),
    d/d score_j = u_j (gh . (r_E[t_j] + r_P[j]) - gh . zl)."""
    S, H, L, V = A.shape
    B = tokens.shape[1]
    zero, one = A.dtype.type(0), A.dtype.type(1)  # the tables' float type throughout
    scale, tiny = A.dtype.type(scale), A.dtype.type(tiny)
    for s in range(S):
        u = np.empty((H, L), A.dtype)
        mass = np.empty((H, V), A.dtype)
        D = np.empty(H, A.dtype)
        zl = np.empty((H, V), A.dtype)
        logits = np.empty(V, A.dtype)
        g = np.empty(V, A.dtype)
        gh = np.empty(V, A.dtype)
        per_kind = np.empty(V, A.dtype)
        ds = np.empty(L, A.dtype)
        total = zero
        for b in range(B):
            p = eos[s, b]
            n = p + 1
            for h in range(H):  # forward: exp(score), the mass per kind, the head's logits
                for k in range(V):
                    mass[h, k] = zero
                for j in range(n):
                    uj = A[s, h, p, tokens[s, b, j]] * Bt[s, h, p, j]
                    u[h, j] = uj
                    mass[h, tokens[s, b, j]] += uj
                d = zero
                for k in range(V):
                    d += mass[h, k]
                if d < tiny:  # redone in the log domain: shifted by this row's own maximum
                    m = tok[s, h, p, tokens[s, b, 0]] + pos[s, h, p, 0]
                    for j in range(1, n):
                        m = max(m, tok[s, h, p, tokens[s, b, j]] + pos[s, h, p, j])
                    for k in range(V):
                        mass[h, k] = zero
                    d = zero
                    for j in range(n):
                        uj = math.exp(tok[s, h, p, tokens[s, b, j]] + pos[s, h, p, j] - m)
                        u[h, j] = uj
                        mass[h, tokens[s, b, j]] += uj
                    for k in range(V):
                        d += mass[h, k]
                D[h] = d
                for v in range(V):
                    z = zero
                    for j in range(n):
                        z += u[h, j] * rPT[s, h, v, j]
                    for k in range(V):
                        z += mass[h, k] * rE[s, h, k, v]
                    zl[h, v] = z / d
            top = c0[s, p, 0] + zl[0, 0]  # any logit: the largest is found below
            for v in range(V):
                x = c0[s, p, v]
                for h in range(H):
                    x += zl[h, v]
                logits[v] = x
                top = max(top, x)
            norm = zero
            for v in range(V):
                norm += math.exp(logits[v] - top)
            lse = top + math.log(norm)
            total += lse - logits[y[s, b]]
            for v in range(V):  # d loss / d logits, scaled
                g[v] = (math.exp(logits[v] - lse) - (one if v == y[s, b] else zero)) * scale
                dc0[s, p, v] += g[v]
            for h in range(H):  # backward through head h
                gz = zero
                for v in range(V):
                    gh[v] = g[v] / D[h]
                    gz += gh[v] * zl[h, v]
                for k in range(V):
                    pk = zero
                    for v in range(V):
                        pk += rE[s, h, k, v] * gh[v]
                        drE[s, h, k, v] += mass[h, k] * gh[v]
                    per_kind[k] = pk - gz
                for j in range(n):
                    ds[j] = zero
                for v in range(V):
                    for j in range(n):
                        ds[j] += gh[v] * rPT[s, h, v, j]
                        drPT[s, h, v, j] += u[h, j] * gh[v]
                for j in range(n):
                    dj = u[h, j] * (per_kind[tokens[s, b, j]] + ds[j])
                    dpos[s, h, p, j] += dj
                    dtok[s, h, p, tokens[s, b, j]] += dj
        loss[s] += total


@njit
def _mix(x, law):
    """splitmix64's finaliser (`language._mix`), on one uint64; law[:2] its multipliers."""
    x = x ^ (x >> np.uint64(30))
    x = x * law[0]
    x = x ^ (x >> np.uint64(27))
    x = x * law[1]
    return x ^ (x >> np.uint64(31))


def _uniforms(seeds, stream, step, law, out):
    """out[s, b, i] = `language.uniform(seeds[s], stream, step, b * per + i)`, out (S, B, per);
    law: the hash's constants (`tokens.HASH`: MIX, GOLDEN, STEP_MIX)."""
    S, B, per = out.shape
    golden, step_mix = law[2], law[3]
    for s in range(S):
        key = _mix(seeds[s] * golden + np.uint64(stream), law)
        key = _mix(key ^ (np.uint64(step) * step_mix), law)
        for b in range(B):
            for i in range(per):
                h = _mix(key + np.uint64(b * per + i) * golden, law)
                out[s, b, i] = np.float64(h >> np.uint64(11)) * 2.0**-53


@njit
def _sort_by_key(u, keep, n, order, start):
    """Puts the positions i < n with keep[i] into order[:m] by their key u[i] in [0, 1), ties by
    position (a stable sort: the tie rule of `language._deal`); returns m. A bucket sort (m
    buckets of equal width, positions in order within each), then an insertion sort of what is
    then nearly sorted: O(m) expected for uniform keys. start: scratch, at least n + 1 long."""
    m = 0
    for i in range(n):
        m += keep[i]
    for k in range(m + 1):
        start[k] = 0
    for i in range(n):
        if keep[i]:
            start[min(int(u[i] * m), m - 1) + 1] += 1
    for k in range(m):
        start[k + 1] += start[k]
    for i in range(n):
        if keep[i]:
            k = min(int(u[i] * m), m - 1)
            order[start[k]] = i
            start[k] += 1
    for r in range(1, m):  # stable: an equal key never passes the one before it
        i = order[r]
        x, j = u[i], r
        while j > 0 and u[order[j - 1]] > x:
            order[j] = order[j - 1]
            j -= 1
        order[j] = i
    return m


@njit
def _deal_sorted(order, m, counts, ids, row, off):
    """`language._deal` given the order: the position of rank r gets ids[c], c the number of
    cumulative counts (all but the last) at or below r."""
    c, cum = 0, counts[0]
    for r in range(m):
        while c < len(counts) - 1 and r >= cum:
            c += 1
            cum += counts[c]
        row[off + order[r]] = ids[c]


def _arrange(counts, u, marks, ids, chain, g, framed, tokens, eos):
    """`language.arrange` (with `noise_positions` where g is the table of `bursts_left`, and the
    `sentence` framing where framed) for counts (S, B, K+2) of the kinds ids (`kind_ids`) and
    uniforms u (S, B, width, or 2 width for bursty noise): fills tokens (S, B, L) and eos
    (S, B). marks: the ids of padding, BOS (-1: none) and EOS (`tokens.marks`)."""
    pad, bos, end = marks[0], marks[1], marks[2]
    S, B, _ = counts.shape
    width = u.shape[2] // 2 if g.shape[1] > 1 else u.shape[2]
    off = 1 if bos >= 0 else 0
    noise_at = np.zeros(width, np.bool_)
    keep = np.empty(width, np.bool_)
    order = np.empty(width, np.int64)
    start = np.empty(width + 1, np.int64)
    for s in range(S):
        for b in range(B):
            c, row = counts[s, b], tokens[s, b]
            n = 0
            for k in range(len(c)):
                n += c[k]
            if g.shape[1] > 1:  # `noise_positions`: the bursty chain, position by position
                left, state = 0, 2
                for k in range(2, len(c)):
                    left += c[k]
                for i in range(width):
                    here = False
                    if i < n and left > 0:
                        r = max(n - i, 1)
                        p = chain[state] * g[1, r - 1, max(left - 1, 0)] / g[state, r, left]
                        here = u[s, b, width + i] < p
                    noise_at[i] = here
                    left -= here
                    if i < n:
                        state = 1 if here else 0
            for j in range(row.shape[0]):
                row[j] = pad
            if off:
                row[0] = bos
            if g.shape[1] > 1:  # the 0s and 1s over the digits' positions, noise over its own
                for i in range(width):
                    keep[i] = not noise_at[i]
                m = _sort_by_key(u[s, b], keep, n, order, start)
                _deal_sorted(order, m, c[:2], ids[:2], row, off)
                m = _sort_by_key(u[s, b], noise_at, n, order, start)
                _deal_sorted(order, m, c[2:], ids[2:], row, off)
            else:
                for i in range(width):
                    keep[i] = True
                m = _sort_by_key(u[s, b], keep, n, order, start)
                _deal_sorted(order, m, c, ids, row, off)
            row[off + n] = end
            eos[s, b] = off + n
            if framed:  # `sentence`: the answer (more 1s than 0s), then the closing EOS
                row[off + n + 1] = ids[1] if c[1] > c[0] else ids[0]
                row[off + n + 2] = end


def _twice_u(sp, sn, out):
    """out[r] = 2 U of row r: for each positive, twice the negatives below it plus the tied
    ones (Mann-Whitney's U, ties counting 1/2), from the row's positive scores sp (R, P) and
    negative scores sn (R, N), each sorted ascending; -1 where a row holds a nan or an
    infinity (sorted to the ends)."""
    R, P = sp.shape
    N = sn.shape[1]
    for r in range(R):
        if not (np.isfinite(sp[r, 0]) and np.isfinite(sp[r, P - 1])
                and np.isfinite(sn[r, 0]) and np.isfinite(sn[r, N - 1])):
            out[r] = -1
            continue
        below, upto, total = 0, 0, 0  # negatives < and <= the current positive
        for i in range(P):
            v = sp[r, i]
            while below < N and sn[r, below] < v:
                below += 1
            upto = max(upto, below)
            while upto < N and sn[r, upto] <= v:
                upto += 1
            total += below + upto
        out[r] = total


def _best_cut(sp, sn, out):
    """out[r] = the threshold of `metrics.fit_threshold` of row r from its positive scores sp
    (R, P) and negative scores sn (R, N), each sorted ascending (nan last): over the cuts between
    runs of tied scores (and below / above all), the first with the most right answers (the c
    lowest predicted 0: c - cpos negatives and P - cpos positives right); t the cut's midpoint,
    -inf / +inf at the ends. A cut next to a nan is not one (a nan compares false)."""
    R, P = sp.shape
    N = sn.shape[1]
    for r in range(R):
        pf, nf = P, N  # the positives and negatives before the nans
        while pf > 0 and np.isnan(sp[r, pf - 1]):
            pf -= 1
        while nf > 0 and np.isnan(sn[r, nf - 1]):
            nf -= 1
        best, cut, lo, hi = P, 0, 0.0, 0.0  # cut c = 0: every score predicted 1
        i, j = 0, 0
        while i < pf or j < nf:
            v = sp[r, i] if j == nf or (i < pf and sp[r, i] < sn[r, j]) else sn[r, j]
            while i < pf and sp[r, i] == v:
                i += 1
            while j < nf and sn[r, j] == v:
                j += 1
            last = i == pf and j == nf
            if last and (pf < P or nf < N):
                break  # the cut before the nans is not one
            right = i + j + P - 2 * i
            if right > best:
                best, cut, lo = right, i + j, v
                if not last:
                    hi = sp[r, i] if j == nf or (i < pf and sp[r, i] < sn[r, j]) else sn[r, j]
        if pf < P or nf < N:  # the cut above all, nans included
            right = N
            if right > best:
                best, cut = right, P + N
        if cut == 0:
            out[r] = -np.inf
        elif cut == P + N:
            out[r] = np.inf
        else:
            mid = lo + (hi - lo) / 2
            out[r] = mid if mid < hi else lo  # rounding must not put t on the upper score


@njit
def _argmax(x):
    """torch's argmax of a short row: the first maximum, a nan counting as the largest."""
    best = 0
    for r in range(1, len(x)):
        if (x[r] > x[best] or np.isnan(x[r])) and not np.isnan(x[best]):
            best = r
    return best


def _grid_answers(out, den, full, orig, rest, one, zero, each_pred, each_score, all_pred,
                  all_score):
    """The attention intervention's model answers (`interventions._sweep_chunk`, readout =
    logits), per grid point g, seed s, example b: head h's output o = out / den (S, H, B, V
    sums by kind over their weights: out (G, S, H, B, V), den (G, S, H, B)); with head h alone
    intervened the logits are (full - orig[h]) + o, with every head rest + sum_h o (summed in
    head order). Writes each one's argmax and logit(one) - logit(zero) (the digits' ids):
    each_* (G, S, H, B), all_* (G, S, B); the same operations, in the same order, as the torch
    code, so the same bits."""
    G, S, H, B, V = out.shape
    x = np.empty(V, out.dtype)
    acc = np.empty((G, B, V), out.dtype)
    for s in range(S):  # in out's memory order (einsum's: seed, head, grid point, example)
        for h in range(H):
            for g in range(G):
                for b in range(B):
                    d = den[g, s, h, b]
                    for r in range(V):
                        o = out[g, s, h, b, r] / d
                        x[r] = (full[s, b, r] - orig[s, h, b, r]) + o
                        acc[g, b, r] = o if h == 0 else acc[g, b, r] + o
                    each_pred[g, s, h, b] = _argmax(x)
                    each_score[g, s, h, b] = x[one] - x[zero]
        for g in range(G):
            for b in range(B):
                for r in range(V):
                    x[r] = rest[s, b, r] + acc[g, b, r]
                all_pred[g, s, b] = _argmax(x)
                all_score[g, s, b] = x[one] - x[zero]


def _pos_rows(A, Bt, tokens, row, u, mass):
    """The position path's exp(score) of the EOS query (`PositionPath.pos_pattern`), one
    example at a time: u[s, h, b, j] = A[s, h, p, t_j] Bt[s, h, p, j] with p = row[s, b] the
    example's table row and t_j its tokens (S, B, L), and mass (S, H, B, V) its sums per token
    kind in position order: the torch ops' (a gather, a product, scatter_add_), so the same
    bits."""
    S, H, B, L = u.shape
    V = mass.shape[-1]
    zero = A.dtype.type(0)
    for s in range(S):
        for h in range(H):
            for b in range(B):
                p = row[s, b]
                for k in range(V):
                    mass[s, h, b, k] = zero
                for j in range(L):
                    x = A[s, h, p, tokens[s, b, j]] * Bt[s, h, p, j]
                    u[s, h, b, j] = x
                    mass[s, h, b, tokens[s, b, j]] += x


def _hybrid_answers(logits, own, hyb, bias, pred):
    """The value swap's answers on the position path (`interventions._hybrid_pred`): pred[i, j,
    s, b] the argmax of (logits[s, b] - own[s, i, b]) + (hyb[s, i, b, j] + bias[s, j]), the
    model's logits with head i's share replaced by its pattern on head j's values; the torch
    ops' sums in their order, so the same bits."""
    S, H, B, _, V = hyb.shape
    x = np.empty(V, logits.dtype)
    for s in range(S):
        for i in range(H):
            for b in range(B):
                for j in range(H):
                    for r in range(V):
                        x[r] = (logits[s, b, r] - own[s, i, b, r]) + (hyb[s, i, b, j, r]
                                                                      + bias[s, j, r])
                    pred[i, j, s, b] = _argmax(x)


def _newton_fixed(base, heads, means, y, w, keep, ridge, damping, factor, floor, tol,
                  max_steps, alpha):
    """`aggregation._newton` where the logits are linear in alpha (one attention-only layer,
    no ln_final), every (mask, seed) pair fitted alone, one after the other: row r's logits under
    mask m of seed s are base[s, r] + sum over kept heads h of alpha_h heads[s, r, h] + sum over
    the others of means[s, r or 0, h], from base (S, R, V), heads (S, R, H, V) (each head's
    o_h W_U, the fixed Jacobian) and means (S, R|1, H, V). Minimises the weighted cross-entropy
    (y (R,), weights w (R,) summing to 1) plus (ridge / 2) |alpha - keep|^2 from alpha = keep
    (M, S, H) by Levenberg-Marquardt on the Gauss-Newton Hessian, damping starting at `damping`
    (/ factor on an accepted step, * factor on a rejected one; times the Hessian's mean
    diagonal, at least floor), until the Newton decrement falls below tol
    or max_steps; writes alpha (M, S, H), 0 where a head is not kept. The system is solved on
    the kept heads alone: the torch fit's identity rows elsewhere give a zero step there."""
    M, S, H = keep.shape
    R, V = base.shape[1], base.shape[2]
    shared = means.shape[1] == 1
    fixed = np.empty((R, V))  # the logits without the kept heads, this pair's
    logp = np.empty((R, V))
    trial_logp = np.empty((R, V))
    kept = np.empty(H, np.int64)
    for m in range(M):
        for s in range(S):
            k = 0
            for h in range(H):
                alpha[m, s, h] = 0.0
                if keep[m, s, h]:
                    kept[k] = h
                    k += 1
            for r in range(R):
                rm = 0 if shared else r
                for v in range(V):
                    x = base[s, r, v]
                    for h in range(H):
                        if not keep[m, s, h]:
                            x += means[s, rm, h, v]
                    fixed[r, v] = x
            a = np.ones(k)
            current = _objective(fixed, heads[s], kept[:k], a, y, w, ridge, logp)
            lm = damping
            trial = np.empty(k)
            grad = np.empty(k)
            hess = np.empty((k, k))
            q = np.empty(k)
            for _ in range(max_steps):
                for i in range(k):
                    grad[i] = 0.0
                    for j in range(k):
                        hess[i, j] = 0.0
                for r in range(R):
                    for i in range(k):
                        q[i] = 0.0
                    for v in range(V):
                        p = math.exp(logp[r, v])
                        g = p - (1.0 if v == y[r] else 0.0)
                        for i in range(k):
                            c = heads[s, r, kept[i], v]
                            grad[i] += w[r] * g * c
                            q[i] += p * c
                            for j in range(i + 1):
                                hess[i, j] += w[r] * p * c * heads[s, r, kept[j], v]
                    for i in range(k):  # sum_v p_v c_v c_v^T - q q^T: diag(p) - p p^T
                        for j in range(i + 1):
                            hess[i, j] -= w[r] * q[i] * q[j]
                scale = 0.0
                for i in range(k):
                    grad[i] += ridge * (a[i] - 1.0)
                    scale += hess[i, i]
                scale = max(scale / H, floor)  # the mean of the diagonal over every head
                for i in range(k):
                    hess[i, i] += ridge + lm * scale
                    for j in range(i):
                        hess[j, i] = hess[i, j]
                step = _solve(hess, grad)
                decrement = 0.0
                for i in range(k):
                    step[i] = -step[i]
                    decrement -= grad[i] * step[i]
                if decrement < tol:
                    break
                for i in range(k):
                    trial[i] = a[i] + step[i]
                new = _objective(fixed, heads[s], kept[:k], trial, y, w, ridge, trial_logp)
                if new < current:
                    a[:] = trial
                    logp[:, :] = trial_logp
                    current = new
                    lm /= factor
                else:
                    lm *= factor
            for i in range(k):
                alpha[m, s, kept[i]] = a[i]


@njit(error_model="numpy")
def _objective(fixed, heads, kept, a, y, w, ridge, logp):
    """The objective of `_newton_fixed` at alpha a on the kept heads; fills logp (R, V), the
    rows' log-probabilities, from the logits fixed (R, V) + sum_i a_i heads[:, kept[i]]."""
    R, V = fixed.shape
    ce = 0.0
    for r in range(R):
        top = -np.inf
        for v in range(V):
            x = fixed[r, v]
            for i in range(len(kept)):
                x += a[i] * heads[r, kept[i], v]
            logp[r, v] = x
            top = max(top, x)
        norm = 0.0
        for v in range(V):
            norm += math.exp(logp[r, v] - top)
        lse = top + math.log(norm)
        for v in range(V):
            logp[r, v] -= lse
        ce -= w[r] * logp[r, y[r]]
    penalty = 0.0
    for i in range(len(kept)):
        penalty += (a[i] - 1.0) ** 2
    return ce + ridge / 2 * penalty


@njit(error_model="numpy")
def _solve(A, b):
    """x with A x = b, A (k, k) symmetric positive definite, by Cholesky (A is overwritten by its
    factor)."""
    k = len(b)
    for j in range(k):
        d = A[j, j]
        for t in range(j):
            d -= A[j, t] * A[j, t]
        d = math.sqrt(d)
        A[j, j] = d
        for i in range(j + 1, k):
            x = A[i, j]
            for t in range(j):
                x -= A[i, t] * A[j, t]
            A[i, j] = x / d
    x = np.empty(k)
    for i in range(k):  # L z = b
        z = b[i]
        for t in range(i):
            z -= A[i, t] * x[t]
        x[i] = z / A[i, i]
    for i in range(k - 1, -1, -1):  # L^T x = z
        z = x[i]
        for t in range(i + 1, k):
            z -= A[t, i] * x[t]
        x[i] = z / A[i, i]
    return x


class _Cache(FunctionCache):
    """numba's cache of a kernel, whose failed write (a full disk, a directory that turned
    read-only after numba's check) costs the cache only: the kernel compiled in this process
    runs, as where no cache directory is writable at all."""

    def save_overload(self, sig, data) -> None:
        try:
            super().save_overload(sig, data)
        except OSError:
            pass


def _compile(f, **options):
    """Compiled once per machine, then loaded: beside the package, else in ~/.cache; where
    neither is writable, compiled in each process."""
    kernel = njit(**options)(f)
    try:
        kernel._cache = _Cache(f)  # what njit(cache=True) sets, with a write that may fail
    except RuntimeError:  # no cache directory is writable
        pass
    return kernel


# nogil: the Trainer's prefetch thread makes the next token batch while the step runs
pos_examples_grad = _compile(_pos_examples_grad, nogil=True)
uniforms = _compile(_uniforms, nogil=True)
arrange = _compile(_arrange, nogil=True, error_model="numpy")
# nogil: `metrics._ranked` runs them on its threads
twice_u = _compile(_twice_u, nogil=True)
best_cut = _compile(_best_cut, nogil=True, error_model="numpy")
grid_answers = _compile(_grid_answers, error_model="numpy")
pos_rows = _compile(_pos_rows, nogil=True)
hybrid_answers = _compile(_hybrid_answers)
newton_fixed = _compile(_newton_fixed, error_model="numpy")
